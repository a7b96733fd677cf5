//! The soak's synthetic host: VMs created and destroyed, devices connected, bound, torn down,
//! leaked, cleaned up and disconnected, a module unloaded and loaded again; every step as the
//! kernel events the probes would deliver (the frame shapes of the 7.3 captures in
//! `fuzz/corpus/record/`), in return order, on an event clock that only moves forward.
//!
//! The generator also keeps the truth (what `tsm/bound` and `tsm/connect` would say) for the
//! synthetic sysfs snapshots.

use std::collections::BTreeMap;

use tsm_trace::correlate::{UAPI_OP_BIND, UAPI_OP_UNBIND};
use tsm_trace::events::{Event, ProbeId, Vm, VmId};
use tsm_trace::sysfs::{DeviceState, Snapshot};

/// The probes of the module the soak unloads: it provides the bare `tsm_bind` path (an
/// in-kernel caller, as the 6.1 stand-in), so bindings made through it end with it.
pub const MODULE_PROBES: [ProbeId; 2] = [ProbeId::TsmBind, ProbeId::TsmUnbind];

const EBUSY: i64 = -16;
const TSM: &str = "tsm0";

/// splitmix64: deterministic, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// How a VM ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Unbinds (ioctl, or vdevice teardown with unbind), VM destroyed, VMM exits.
    Clean,
    /// vdevice teardown without unbind, VM destroyed, VMM exits: leaked.
    TeardownLeak,
    /// The VMM dies: VMM exit, then the VM destroyed, nothing unbound: leaked.
    Crash,
    /// One device disconnected while bound, the rest clean.
    Disconnect,
    /// Bound through the bare `tsm_bind` path; unbound the same way, or left to the module.
    Bare,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Bind(usize),
    GuestReq(usize),
    Finish(usize),
    Gone,
}

struct LiveVm {
    vm: Vm,
    addr: u64,
    pid: u32,
    end: End,
    devices: Vec<usize>,
    step: Step,
}

#[derive(Clone, Copy, Debug, Default)]
struct Truth {
    connected: bool,
    bound: bool,
    /// Bound to a live VM (slot index + 1); 0: none (free, or leaked by a VM gone).
    owner: usize,
    bare: bool,
    ever: bool,
}

/// The host.
pub struct Host {
    pub rng: Rng,
    /// Event clock (ns): the next operation starts here.
    pub t: u64,
    devices: Vec<Truth>,
    cursor: usize,
    slots: Vec<Option<LiveVm>>,
    next_pid: u32,
    free_addrs: Vec<u64>,
    next_addr: u64,
    pub vms_created: u64,
    pub devices_used: usize,
    shell_pid: u32,
}

pub fn bdf(d: usize) -> String {
    format!(
        "{:04x}:{:02x}:{:02x}.{}",
        d >> 16,
        (d >> 8) & 0xff,
        (d >> 3) & 0x1f,
        d & 7
    )
}

fn ev(probe: ProbeId, start: u64, end: u64, tgid: u32, tid: u32, comm: &str) -> Event {
    Event::new(probe, start, end, tgid, tid, comm.into())
}

impl Host {
    pub fn new(devices: usize, live_vms: usize, seed: u64) -> Host {
        Host {
            rng: Rng::new(seed),
            t: 1_000_000_000,
            devices: vec![Truth::default(); devices],
            cursor: 0,
            slots: (0..live_vms).map(|_| None).collect(),
            next_pid: 1_000,
            free_addrs: Vec::new(),
            next_addr: 0xffff_8880_0100_0000,
            vms_created: 0,
            devices_used: 0,
            shell_pid: 100,
        }
    }

    /// Advances the clock by one operation's length plus a gap; returns its start.
    fn span(&mut self, len_us: u64) -> (u64, u64) {
        let t0 = self.t;
        let len = len_us * 1_000 + self.rng.below(len_us * 500);
        self.t = t0 + len + 200_000 + self.rng.below(3_000_000);
        (t0, t0 + len)
    }

    /// One step of the host: appends its events (return order) to `out`.
    pub fn step(&mut self, out: &mut Vec<Event>) {
        let s = self.rng.below(self.slots.len() as u64) as usize;
        if self.slots[s].is_none() {
            self.create_vm(s, out);
            return;
        }
        let vm = self.slots[s].as_mut().expect("live");
        match vm.step {
            Step::Bind(i) => {
                vm.step = if i + 1 < vm.devices.len() {
                    Step::Bind(i + 1)
                } else {
                    Step::GuestReq(1 + self.rng.below(3) as usize)
                };
                self.bind(s, i, out);
            }
            Step::GuestReq(n) => {
                vm.step = if n > 1 {
                    Step::GuestReq(n - 1)
                } else {
                    Step::Finish(0)
                };
                let i = self.rng.below(vm.devices.len() as u64) as usize;
                self.guest_req(s, i, out);
            }
            Step::Finish(i) => {
                vm.step = if i + 1 < vm.devices.len() {
                    Step::Finish(i + 1)
                } else {
                    Step::Gone
                };
                self.finish_device(s, i, out);
            }
            Step::Gone => self.destroy_vm(s, out),
        }
    }

    fn create_vm(&mut self, s: usize, out: &mut Vec<Event>) {
        self.next_pid = if self.next_pid > 4_000_000 {
            1_000
        } else {
            self.next_pid + 4
        };
        let pid = self.next_pid;
        // The kernel reuses `struct kvm` memory: so do the VM ids (a keyed hash of it).
        let addr = self.free_addrs.pop().unwrap_or_else(|| {
            self.next_addr += 0x1_0000;
            self.next_addr
        });
        let end = match self.rng.below(16) {
            0..=7 => End::Clean,
            8..=10 => End::TeardownLeak,
            11..=12 => End::Crash,
            13..=14 => End::Disconnect,
            _ => End::Bare,
        };
        let n = 1 + self.rng.below(4) as usize;
        let mut devices = Vec::with_capacity(n);
        for _ in 0..n {
            devices.push(self.take_device(s, out));
        }
        self.vms_created += 1;
        self.slots[s] = Some(LiveVm {
            vm: Vm {
                id: VmId::from_bits(addr >> 4),
                pid: Some(pid as i32),
                stats_id: Some(format!("kvm-{pid}").into()),
                vmm: None,
            },
            addr,
            pid,
            end,
            devices,
            step: Step::Bind(0),
        });
    }

    /// The next device no live VM holds; an operator first cleans up one a dead VM leaked
    /// (disconnect, which unbinds) and connects one not connected.
    fn take_device(&mut self, s: usize, out: &mut Vec<Event>) -> usize {
        let n = self.devices.len();
        let mut d = self.cursor;
        for _ in 0..n {
            if self.devices[d].owner == 0 {
                break;
            }
            d = (d + 1) % n;
        }
        self.cursor = (d + 1) % n;
        if !self.devices[d].ever {
            self.devices[d].ever = true;
            self.devices_used += 1;
        }
        if self.devices[d].bound {
            self.disconnect(d, out);
        }
        if !self.devices[d].connected {
            self.connect(d, out);
        }
        self.devices[d].owner = s + 1;
        d
    }

    fn shell(&mut self) -> u32 {
        self.shell_pid = if self.shell_pid > 900 {
            100
        } else {
            self.shell_pid + 1
        };
        self.shell_pid
    }

    fn connect(&mut self, d: usize, out: &mut Vec<Event>) {
        let pid = self.shell();
        let (t0, t1) = self.span(400);
        let dev = bdf(d);
        let mut e = ev(
            ProbeId::DriverProbe,
            t0 + 50_000,
            t0 + 100_000,
            pid,
            pid,
            "sh",
        );
        e.ret = Some(1);
        e.ret_is_ptr = true;
        e.ret_null_is_err = true;
        e.device = Some(dev.clone().into());
        e.tsm = Some(TSM.into());
        out.push(e);
        let mut e = ev(
            ProbeId::DriverConnect,
            t0 + 120_000,
            t1 - 50_000,
            pid,
            pid,
            "sh",
        );
        e.ret = Some(0);
        e.device = Some(dev.clone().into());
        out.push(e);
        let mut e = ev(ProbeId::Connect, t0, t1, pid, pid, "sh");
        e.ret = Some(5);
        e.device = Some(dev.into());
        e.tsm = Some(TSM.into());
        out.push(e);
        self.devices[d].connected = true;
    }

    /// `tsm/disconnect`: the core unbinds the device first if it is bound.
    fn disconnect(&mut self, d: usize, out: &mut Vec<Event>) {
        let pid = self.shell();
        let (t0, t1) = self.span(600);
        let dev = bdf(d);
        if self.devices[d].bound {
            out.push(self.unbind_any(d, pid, pid, "sh", t0 + 100_000));
        }
        let mut e = ev(
            ProbeId::DriverDisconnect,
            t0 + 300_000,
            t0 + 400_000,
            pid,
            pid,
            "sh",
        );
        e.device = Some(dev.clone().into());
        out.push(e);
        let mut e = ev(
            ProbeId::PciTsmDisconnect,
            t0 + 50_000,
            t0 + 450_000,
            pid,
            pid,
            "sh",
        );
        e.device = Some(dev.clone().into());
        e.tsm = Some(TSM.into());
        out.push(e);
        let mut e = ev(ProbeId::Disconnect, t0, t1, pid, pid, "sh");
        e.ret = Some(5);
        e.device = Some(dev.into());
        e.tsm = Some(TSM.into());
        out.push(e);
        self.devices[d] = Truth {
            ever: true,
            owner: self.devices[d].owner,
            ..Truth::default()
        };
    }

    /// `driver_unbind` and `__pci_tsm_unbind` (which names the VM and TDI) at `t`: 100 µs.
    fn unbind_any(&self, d: usize, tgid: u32, tid: u32, comm: &str, t: u64) -> Event {
        let mut e = ev(ProbeId::PciTsmUnbindAny, t, t + 100_000, tgid, tid, comm);
        e.ret = Some(0);
        e.device = Some(bdf(d).into());
        e.tsm = Some(TSM.into());
        e.tdi_id = Some(d as u64);
        e
    }

    fn vm_ref(&self, s: usize) -> (u32, u32, Vm, End) {
        let v = self.slots[s].as_ref().expect("live");
        // Two VMM threads take turns.
        let tid = v.pid + (self.t / 1_000 % 2) as u32;
        (v.pid, tid, v.vm.clone(), v.end)
    }

    fn bind(&mut self, s: usize, i: usize, out: &mut Vec<Event>) {
        let (pid, tid, vm, end) = self.vm_ref(s);
        let d = self.slots[s].as_ref().expect("live").devices[i];
        let busy = self.rng.below(12) == 0;
        let (t0, t1) = self.span(800);
        let dev = bdf(d);
        let inner = Vm {
            id: vm.id,
            pid: None,
            stats_id: None,
            vmm: None,
        };
        let comm = "qemu-system-x86";
        let frame = |p: ProbeId, lvl: u64, vm: Vm| {
            let mut e = ev(p, t0 + lvl * 50_000, t1 - lvl * 50_000, pid, tid, comm);
            e.ret = Some(0);
            e.device = Some(dev.clone().into());
            e.vm = Some(vm);
            e.tdi_id = Some(d as u64);
            e
        };
        if !busy {
            let mut e = frame(ProbeId::DriverBind, 3, inner.clone());
            e.ret = Some(1);
            e.ret_is_ptr = true;
            out.push(e);
        }
        let mut e = frame(ProbeId::PciTsmBind, 2, inner);
        if busy {
            e.ret = Some(EBUSY);
        }
        out.push(e);
        let mut e = frame(ProbeId::TsmBind, 1, vm);
        if busy {
            e.ret = Some(EBUSY);
        }
        out.push(e);
        if end != End::Bare {
            let mut e = ev(ProbeId::TsmOpIoctl, t0, t1, pid, tid, comm);
            e.ret = Some(if busy { EBUSY } else { 0 });
            e.op = Some(UAPI_OP_BIND);
            e.flags = Some(0);
            e.vdevice_id = Some(i as u32 + 1);
            out.push(e);
        }
        if !busy {
            self.devices[d].bound = true;
            self.devices[d].bare = end == End::Bare;
        }
    }

    fn guest_req(&mut self, s: usize, i: usize, out: &mut Vec<Event>) {
        let (pid, tid, _, _) = self.vm_ref(s);
        let d = self.slots[s].as_ref().expect("live").devices[i];
        if !self.devices[d].bound {
            return;
        }
        let (t0, t1) = self.span(300);
        let dev = bdf(d);
        let fail = self.rng.below(10) == 0;
        for (p, lvl) in [(ProbeId::DriverGuestReq, 1), (ProbeId::PciTsmGuestReq, 0)] {
            let mut e = ev(
                p,
                t0 + lvl * 50_000,
                t1 - lvl * 50_000,
                pid,
                tid,
                "qemu-system-x86",
            );
            e.ret = Some(if fail { -5 } else { 64 });
            e.device = Some(dev.clone().into());
            e.tsm = Some(TSM.into());
            e.scope = Some(1);
            e.in_len = Some(16);
            e.out_len = Some(64);
            e.tsm_code = Some(0);
            if p == ProbeId::DriverGuestReq {
                e.tdi_id = Some(d as u64);
            }
            out.push(e);
        }
    }

    /// A device's end in its VM's way.
    fn finish_device(&mut self, s: usize, i: usize, out: &mut Vec<Event>) {
        let (pid, tid, _, end) = self.vm_ref(s);
        let d = self.slots[s].as_ref().expect("live").devices[i];
        let comm = "qemu-system-x86";
        let bound = self.devices[d].bound;
        let (t0, t1) = self.span(700);
        let dev = bdf(d);
        let unbind_frames = |h: &Host, out: &mut Vec<Event>| {
            let mut e = ev(
                ProbeId::DriverUnbind,
                t0 + 200_000,
                t0 + 250_000,
                pid,
                tid,
                comm,
            );
            e.device = Some(dev.clone().into());
            out.push(e);
            out.push(h.unbind_any(d, pid, tid, comm, t0 + 180_000));
            let mut e = ev(
                ProbeId::PciTsmUnbind,
                t0 + 100_000,
                t1 - 100_000,
                pid,
                tid,
                comm,
            );
            e.device = Some(dev.clone().into());
            out.push(e);
            let mut e = ev(ProbeId::TsmUnbind, t0 + 50_000, t1 - 50_000, pid, tid, comm);
            e.ret = Some(0);
            e.device = Some(dev.clone().into());
            out.push(e);
        };
        let abort = |out: &mut Vec<Event>| {
            let mut e = ev(ProbeId::VdeviceAbort, t0, t1, pid, tid, comm);
            e.device = Some(dev.clone().into());
            e.obj_id = Some(i as u32 + 1);
            e.virt_id = Some(d as u64);
            out.push(e);
        };
        match end {
            End::Clean | End::Disconnect if bound => {
                if end == End::Disconnect && i == 0 {
                    self.t = t0;
                    self.disconnect(d, out);
                    self.devices[d].owner = 0;
                    return;
                }
                if self.rng.below(2) == 0 {
                    unbind_frames(self, out);
                    let mut e = ev(ProbeId::TsmOpIoctl, t0, t1, pid, tid, comm);
                    e.ret = Some(0);
                    e.op = Some(UAPI_OP_UNBIND);
                    e.flags = Some(0);
                    e.vdevice_id = Some(i as u32 + 1);
                    out.push(e);
                } else {
                    unbind_frames(self, out);
                    abort(out);
                }
                self.devices[d].bound = false;
            }
            End::Bare if bound && self.rng.below(2) == 0 => {
                unbind_frames(self, out);
                self.devices[d].bound = false;
            }
            End::TeardownLeak => abort(out),
            End::Clean | End::Disconnect | End::Crash | End::Bare => {}
        }
        self.devices[d].owner = 0;
    }

    fn destroy_vm(&mut self, s: usize, out: &mut Vec<Event>) {
        let v = self.slots[s].take().expect("live");
        let (t0, _) = self.span(10);
        let mut destroy = ev(
            ProbeId::KvmDestroyVm,
            t0,
            t0,
            v.pid,
            v.pid,
            "qemu-system-x86",
        );
        destroy.vm = Some(v.vm.clone());
        let exit = ev(
            ProbeId::VmmExit,
            t0 + 500_000,
            t0 + 500_000,
            v.pid,
            v.pid,
            "qemu-system-x86",
        );
        if v.end == End::Crash {
            let mut exit = exit;
            exit.start_ns = t0;
            exit.end_ns = t0;
            destroy.start_ns = t0 + 500_000;
            destroy.end_ns = t0 + 500_000;
            out.push(exit);
            out.push(destroy);
        } else {
            out.push(destroy);
            out.push(exit);
        }
        self.t = self.t.max(t0 + 600_000);
        self.free_addrs.push(v.addr);
        for d in v.devices {
            if self.devices[d].owner == s + 1 {
                self.devices[d].owner = 0;
            }
        }
    }

    /// A module load event (the module comes back after its unload).
    pub fn module_load(&mut self, out: &mut Vec<Event>) {
        let (t0, _) = self.span(10);
        out.push(ev(ProbeId::ModuleLoad, t0, t0, 77, 77, "insmod"));
    }

    /// The module went: the bindings made through it went with its memory.
    pub fn module_unloaded(&mut self) {
        for d in &mut self.devices {
            if d.bound && d.bare {
                d.bound = false;
                d.bare = false;
            }
        }
    }

    /// What sysfs would say now (`tsm/bound`, `tsm/connect`) of every device ever used.
    pub fn snapshot(&self) -> Snapshot {
        let mut devices = BTreeMap::new();
        let mut links = BTreeMap::new();
        for (d, t) in self.devices.iter().enumerate().filter(|(_, t)| t.ever) {
            let name = bdf(d);
            devices.insert(
                name.clone(),
                if t.bound {
                    DeviceState::Bound(TSM.into())
                } else {
                    DeviceState::Unbound
                },
            );
            links.insert(name, t.connected.then(|| TSM.to_string()));
        }
        Snapshot {
            root: "/sys".into(),
            devices,
            links,
            errors: Vec::new(),
            listing_error: None,
            ide_streams: Some(Vec::new()),
        }
    }

    /// Devices bound now (truth).
    pub fn bound_now(&self) -> usize {
        self.devices.iter().filter(|t| t.bound).count()
    }
}
