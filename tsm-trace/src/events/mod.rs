//! Decoded events: what one kernel record says, in userspace types.
//!
//! [`Event::decode`] turns a [`RawEvent`] from the ring buffer into an [`Event`]; unreadable
//! fields become `None` ("unknown"), never zero. [`record`] writes and reads the event stream as
//! JSON lines, so a capture replays through the same correlator as a live session.

mod control;
pub mod deep;
pub mod name;
pub mod record;
pub mod vm_id;
pub mod vm_key;
pub mod vmm;

pub use control::Control;
pub use name::Name;
pub use vm_id::{NameVm, VmId, VmKey, VmNames, VmSelector};
pub use vmm::{Identities, VmmName, VmmSeen};

use serde::{Deserialize, Serialize};
pub use tsm_trace_common::ProbeId;
use tsm_trace_common::{RawEvent, flags, missing};

use crate::errno;

/// The layer of the TSM stack a function belongs to; a failure is attributed to the deepest
/// layer that produced its errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// iommufd: the ioctl's argument checks, vdevice/KVM lookup, response copy; vdevice teardown.
    Iommufd,
    /// tsm-core: `tsm_bind` / `tsm_unbind` (device-type dispatch).
    TsmCore,
    /// PCI TSM: `pci_tsm_bind` / `pci_tsm_unbind` (TSM context, ownership checks).
    PciTsm,
    /// The TSM driver's own bind/unbind op (firmware, TDISP).
    TsmDriver,
    /// KVM and process lifetime (VM destroyed, VMM exited).
    Vm,
}

/// Why a binding ended, as the PCI TSM core's own call chain shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnbindCause {
    /// `pci_tsm_unbind()`: an explicit unbind (the iommufd ioctl, vdevice teardown, a VMM).
    Unbind,
    /// `tsm/disconnect`: the core unbinds every function before it disconnects.
    Disconnect,
    /// The device was removed (`__pci_tsm_destroy` without a TSM).
    DeviceRemoval,
    /// The TSM driver unregistered its TSM (`tsm_unregister` → `__pci_tsm_destroy`).
    TsmUnregister,
    /// The module whose function made the binding (its bind path) was unloaded without an
    /// unbind being seen: the binding's state went with the module's memory (the stand-in
    /// frees its TDIs on exit; a real TSM driver unregisters first, seen as
    /// [`UnbindCause::TsmUnregister`]). Not a kernel call chain: tsm-trace's conclusion.
    ModuleUnloaded,
}

impl UnbindCause {
    pub const fn as_str(self) -> &'static str {
        match self {
            UnbindCause::Unbind => "unbind",
            UnbindCause::Disconnect => "disconnect",
            UnbindCause::DeviceRemoval => "device_removal",
            UnbindCause::TsmUnregister => "tsm_unregister",
            UnbindCause::ModuleUnloaded => "module_unloaded",
        }
    }

    pub const ALL: [UnbindCause; 5] = [
        UnbindCause::Unbind,
        UnbindCause::Disconnect,
        UnbindCause::DeviceRemoval,
        UnbindCause::TsmUnregister,
        UnbindCause::ModuleUnloaded,
    ];
}

impl Layer {
    pub const fn as_str(self) -> &'static str {
        match self {
            Layer::Iommufd => "iommufd",
            Layer::TsmCore => "tsm_core",
            Layer::PciTsm => "pci_tsm",
            Layer::TsmDriver => "tsm_driver",
            Layer::Vm => "vm",
        }
    }

    /// Depth in the call chain: larger is deeper.
    /// By the index the programs use (`tsm_trace_common::aggregates::LAYER_*`).
    pub const BY_INDEX: [Layer; 5] = [
        Layer::Iommufd,
        Layer::TsmCore,
        Layer::PciTsm,
        Layer::TsmDriver,
        Layer::Vm,
    ];

    /// The layer of a probe's frames. One table for both sides: the programs count operations
    /// with it too ([`tsm_trace_common::aggregates::layer`]).
    pub const fn of(p: ProbeId) -> Layer {
        Layer::BY_INDEX[tsm_trace_common::aggregates::layer(p) as usize]
    }

    pub const fn depth(self) -> u8 {
        match self {
            Layer::Vm => 0,
            Layer::Iommufd => 1,
            Layer::TsmCore => 2,
            Layer::PciTsm => 3,
            Layer::TsmDriver => 4,
        }
    }
}

/// A PCIe IDE stream as `struct pci_ide` described it at the call (drivers/pci/ide.c). Each
/// part is `None` when it could not be read (reported as unknown, never as 0).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdeStream {
    /// The endpoint (`ide->pdev`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `stream_id` (-1: not assigned yet, as `pci_ide_stream_alloc` leaves it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<i32>,
    /// `host_bridge_stream`, the root port's and the endpoint's register block indices:
    /// `<H>.<R>.<E>` of the sysfs name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_bridge_stream: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rp_index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ep_index: Option<u32>,
    /// The sysfs name (`stream0.0.0`); `None` before registration or when unreadable
    /// ([`IdeStream::unnamed`] tells which).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Not registered (yet, or any more): the kernel has no name for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unnamed: bool,
}

impl IdeStream {
    /// `stream0.0.0` when registered, else `<H>.<R>.<E>` from the numbers (`?` unknown).
    pub fn label(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let n = |v: Option<u32>| v.map_or("?".to_string(), |v| v.to_string());
        format!(
            "{}.{}.{}",
            n(self.host_bridge_stream),
            n(self.rp_index),
            n(self.ep_index)
        )
    }
}

/// A KVM VM's identity as the kernel showed it, without its kernel address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Vm {
    /// The keyed hash of its `struct kvm *` ([`vm_id`]): unique while the VM lives (the
    /// kernel may reuse the pointer, hence the name, after the VM is freed).
    pub id: VmId,
    /// `kvm->userspace_pid`: the VMM process that created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// `kvm->stats_id`, e.g. `kvm-4242`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_id: Option<Name>,
    /// The name its VMM's command line gives it ([`vmm`]), read at bind time; absent when
    /// unknown (argv unreadable, no convention matched, `--vm-name stats-id`, or a capture or
    /// state file from before tsm-trace read it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<VmmName>,
}

impl Vm {
    /// The name used in labels and trace lines: the VMM's name for it ([`Vm::vmm`]), else the
    /// stats id, else `kvm-<pid>`, else the hash (`vm#…`). Never the pointer.
    pub fn name(&self) -> Name {
        if let Some(n) = &self.vmm {
            return n.name.clone();
        }
        match (&self.stats_id, self.pid) {
            (Some(s), _) if !s.is_empty() => s.clone(),
            (_, Some(pid)) if pid > 0 => format!("kvm-{pid}").into(),
            _ => self.id.to_string().into(),
        }
    }
}

/// One completed call of a probed function (or a point event), decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub probe: ProbeId,
    /// CLOCK_MONOTONIC nanoseconds at entry and return.
    pub start_ns: u64,
    pub end_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub comm: Name,
    /// The return value (`None` for void functions and point events). A pointer return
    /// ([`Event::ret_is_ptr`]) is reduced to what it means, never its address: `0` (NULL),
    /// the `ERR_PTR` errno (negative), or `1` (a valid pointer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<i64>,
    /// The return value is a pointer (`ERR_PTR` convention).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ret_is_ptr: bool,
    /// The return probe fired without its entry: arguments and start time are unknown.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub entry_missing: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<Vm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tdi_id: Option<u64>,
    /// UAPI fields of the ioctl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vdevice_id: Option<u32>,
    /// vdevice teardown: `iommufd_object::id` and `iommufd_vdevice::virt_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obj_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virt_id: Option<u64>,
    /// The TSM (`tsmN`) the call concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsm: Option<Name>,
    /// Guest requests: `enum pci_tsm_req_scope`, request and response sizes, and the TSM's
    /// result code (`*tsm_code` after the call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_len: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_len: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsm_code: Option<u64>,
    /// Guest requests post-v5 (the ioctl, `tsm_guest_req`): the request's `op` and
    /// `tvm_arch`, which replace `scope`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_op: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tvm_arch: Option<u32>,
    /// Names of `scope`, `req_op` and `tvm_arch` from the enum BTF gives their member or
    /// parameter (the enumerator without the enum's common prefix, lowercase); absent where
    /// BTF has no enum for it (a plain `u32`): then only the number is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_name: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_op_name: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tvm_arch_name: Option<Name>,
    /// A NULL pointer return is a failure (driver `probe`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ret_null_is_err: bool,
    /// `__pci_tsm_unbind` found no binding: nothing was unbound.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nothing_bound: bool,
    /// `__pci_tsm_destroy` ran for a TSM's unregistration (else: device removal).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tsm_unregister: bool,
    /// PCIe IDE probes: the stream the call is about (`device` is the port it acts on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ide: Option<Box<IdeStream>>,
    /// `trace --deep`: the deep-traced calls made inside this call and not inside a probed
    /// call nested in it, in the order they returned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<deep::DeepCall>,
}

/// Why a ring-buffer record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record is {got} bytes, expected {expected}: the eBPF object and tsm-trace disagree")]
    Size { got: usize, expected: usize },
    #[error("unknown probe id {0}: the eBPF object is newer than this tsm-trace")]
    UnknownProbe(u32),
    #[error("return time {end_ns} precedes entry time {start_ns}")]
    TimeReversed { start_ns: u64, end_ns: u64 },
}

impl Event {
    /// An event with only its identity set: every decoded field unknown, no return value.
    pub fn new(
        probe: ProbeId,
        start_ns: u64,
        end_ns: u64,
        tgid: u32,
        tid: u32,
        comm: Name,
    ) -> Event {
        Event {
            probe,
            start_ns,
            end_ns,
            tgid,
            tid,
            comm,
            ret: None,
            ret_is_ptr: false,
            entry_missing: false,
            device: None,
            vm: None,
            tdi_id: None,
            op: None,
            flags: None,
            vdevice_id: None,
            obj_id: None,
            virt_id: None,
            tsm: None,
            scope: None,
            in_len: None,
            out_len: None,
            tsm_code: None,
            req_op: None,
            tvm_arch: None,
            scope_name: None,
            req_op_name: None,
            tvm_arch_name: None,
            ret_null_is_err: false,
            nothing_bound: false,
            tsm_unregister: false,
            ide: None,
            calls: Vec::new(),
        }
    }

    /// Decodes one ring-buffer record; VMs are named with `key`.
    pub fn from_bytes(bytes: &[u8], key: &impl NameVm) -> Result<Event, DecodeError> {
        if bytes.len() != RawEvent::SIZE {
            return Err(DecodeError::Size {
                got: bytes.len(),
                expected: RawEvent::SIZE,
            });
        }
        // SAFETY: size checked; RawEvent is plain data valid for any bit pattern.
        let raw = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawEvent>()) };
        Event::decode(&raw, key)
    }

    /// Decodes a record. Kernel addresses stop here: the `struct kvm *` becomes its keyed
    /// hash under `key`, a returned pointer its meaning (see [`Event::ret`]).
    pub fn decode(raw: &RawEvent, key: &impl NameVm) -> Result<Event, DecodeError> {
        let id = ProbeId::from_u32(raw.probe).ok_or(DecodeError::UnknownProbe(raw.probe))?;
        let probe = id;
        if raw.end_ns < raw.start_ns {
            return Err(DecodeError::TimeReversed {
                start_ns: raw.start_ns,
                end_ns: raw.end_ns,
            });
        }
        let m = raw.missing;
        let has = |bit: u32| m & bit == 0;
        let entry_missing = m & missing::ENTRY != 0;
        let void = raw.flags & (flags::RET_VOID | flags::POINT) != 0;
        let mut ev = Event::new(
            probe,
            raw.start_ns,
            raw.end_ns,
            (raw.pid_tgid >> 32) as u32,
            raw.pid_tgid as u32,
            cstr(&raw.comm),
        );
        ev.ret_is_ptr = raw.flags & flags::RET_IS_PTR != 0;
        ev.ret = (!void).then_some(if ev.ret_is_ptr {
            pointer_meaning(raw.ret)
        } else {
            raw.ret
        });
        ev.ret_null_is_err = raw.flags & flags::RET_NULL_IS_ERR != 0;
        ev.entry_missing = entry_missing;
        if entry_missing {
            return Ok(ev);
        }
        let device = has(missing::DEV_NAME).then(|| cstr(&raw.dev_name));
        // sysfs writes carry a trailing newline (`echo tsm0 > connect`).
        let tsm = has(missing::TSM_NAME)
            .then(|| cstr_trimmed(&raw.tsm_name))
            .filter(|s| !s.is_empty());
        let vm = || {
            (raw.kvm != 0).then(|| Vm {
                id: key.name(raw.kvm),
                // `userspace_pid` 0 (read through `pci_tdi.kvm` before it is set, or from
                // a kernel-made VM) names no VMM: unknown, not `kvm-0`.
                pid: has(missing::KVM_PID)
                    .then_some(raw.kvm_pid)
                    .filter(|p| *p > 0),
                stats_id: has(missing::KVM_STATS_ID)
                    .then(|| cstr(&raw.kvm_stats_id))
                    .filter(|s| !s.is_empty()),
                vmm: None,
            })
        };
        match probe {
            ProbeId::TsmOpIoctl => {
                ev.op = has(missing::OP).then_some(raw.op);
                ev.flags = has(missing::FLAGS).then_some(raw.cmd_flags);
                ev.vdevice_id = has(missing::VDEVICE_ID).then_some(raw.vdevice_id);
            }
            ProbeId::TsmBind | ProbeId::PciTsmBind | ProbeId::DriverBind => {
                ev.device = device;
                ev.vm = vm();
                ev.tdi_id = Some(raw.tdi_id);
            }
            ProbeId::TsmUnbind | ProbeId::PciTsmUnbind | ProbeId::DriverUnbind => {
                ev.device = device
            }
            ProbeId::VdeviceAbort => {
                ev.device = device;
                ev.obj_id = has(missing::OBJ_ID).then_some(raw.obj_id);
                ev.virt_id = has(missing::VIRT_ID).then_some(raw.virt_id);
            }
            ProbeId::KvmDestroyVm => ev.vm = vm(),
            ProbeId::VmmExit | ProbeId::ModuleLoad => {}
            ProbeId::Connect
            | ProbeId::Disconnect
            | ProbeId::PciTsmDisconnect
            | ProbeId::DriverProbe
            | ProbeId::PciTsmDestroy => {
                ev.device = device;
                ev.tsm = tsm;
                ev.tsm_unregister = raw.flags & flags::TSM_UNREGISTER != 0;
            }
            ProbeId::DriverConnect | ProbeId::DriverDisconnect => ev.device = device,
            ProbeId::PciTsmUnbindAny => {
                ev.device = device;
                ev.tsm = tsm;
                ev.nothing_bound = raw.flags & flags::NOTHING_BOUND != 0;
                if !ev.nothing_bound && has(missing::TDI) {
                    ev.vm = (raw.kvm != 0).then(|| Vm {
                        id: key.name(raw.kvm),
                        pid: None,
                        stats_id: None,
                        vmm: None,
                    });
                    ev.tdi_id = Some(raw.tdi_id);
                }
            }
            ProbeId::PciTsmGuestReq | ProbeId::DriverGuestReq => {
                ev.device = device;
                ev.tsm = tsm;
                if has(missing::GUEST_REQ_ARGS) {
                    ev.scope = Some(raw.scope);
                    ev.in_len = Some(raw.in_len);
                    ev.out_len = Some(raw.out_len);
                }
                ev.tsm_code = has(missing::TSM_CODE).then_some(raw.tsm_code);
                if probe == ProbeId::DriverGuestReq && has(missing::TDI) {
                    ev.tdi_id = Some(raw.tdi_id);
                }
            }
            ProbeId::GuestReqIoctl | ProbeId::TsmGuestReq => {
                if probe == ProbeId::GuestReqIoctl {
                    ev.vdevice_id = has(missing::VDEVICE_ID).then_some(raw.vdevice_id);
                } else {
                    ev.device = device;
                    ev.tsm_code = has(missing::TSM_CODE).then_some(raw.tsm_code);
                }
                if has(missing::REQ_KIND) {
                    if raw.flags & flags::REQ_SCOPE != 0 {
                        ev.scope = Some(raw.scope);
                    }
                    if raw.flags & flags::REQ_OP != 0 {
                        ev.req_op = Some(raw.op);
                        ev.tvm_arch = Some(raw.tvm_arch);
                    }
                }
                if has(missing::GUEST_REQ_ARGS) {
                    ev.in_len = Some(raw.in_len);
                    ev.out_len = Some(raw.out_len);
                }
            }
            ProbeId::IdeStreamAlloc
            | ProbeId::IdeStreamRegister
            | ProbeId::IdeStreamSetup
            | ProbeId::IdeStreamEnable
            | ProbeId::IdeStreamDisable
            | ProbeId::IdeStreamTeardown
            | ProbeId::IdeStreamUnregister
            | ProbeId::IdeStreamRelease
            | ProbeId::IdeStreamFree => {
                ev.device = device;
                let nums = has(missing::IDE_STREAM);
                let unnamed = raw.flags & flags::IDE_UNNAMED != 0;
                ev.ide = Some(Box::new(IdeStream {
                    endpoint: has(missing::IDE_ENDPOINT)
                        .then(|| cstr(&raw.ide_endpoint).to_string())
                        .filter(|s| !s.is_empty()),
                    stream_id: nums.then_some(raw.ide_stream_id),
                    host_bridge_stream: nums.then_some(raw.ide_hb_stream),
                    rp_index: nums.then_some(raw.ide_rp_index),
                    ep_index: nums.then_some(raw.ide_ep_index),
                    name: (has(missing::IDE_NAME) && !unnamed)
                        .then(|| cstr(&raw.ide_name).to_string())
                        .filter(|s| !s.is_empty()),
                    unnamed,
                }));
            }
        }
        Ok(ev)
    }

    /// The errno this call returned, if it failed.
    pub fn errno(&self) -> Option<i32> {
        self.ret.and_then(errno::from_ret)
    }

    /// The entry time, or the return time when the entry was missed (the earliest time the
    /// call is known to have been running).
    pub fn known_start_ns(&self) -> u64 {
        if self.entry_missing {
            self.end_ns
        } else {
            self.start_ns
        }
    }

    /// Entry-to-return time (0 for point events and returns without entry).
    pub fn duration_ns(&self) -> u64 {
        if self.entry_missing {
            0
        } else {
            self.end_ns - self.start_ns
        }
    }

    /// Did this call succeed? Void calls succeed; `ERR_PTR`/negative ints fail, and so does a
    /// NULL from a function whose NULL means failure (a driver's `probe`).
    pub fn ok(&self) -> bool {
        self.errno().is_none() && !(self.ret_null_is_err && self.ret == Some(0))
    }
}

/// What a returned pointer means, without its address: NULL (0), an `ERR_PTR` errno (kept
/// as is), or a valid pointer (1).
pub fn pointer_meaning(ret: i64) -> i64 {
    if ret == 0 || errno::from_ret(ret).is_some() {
        ret
    } else {
        1
    }
}

/// A NUL-terminated byte array as text (lossy: kernel names are ASCII in practice), interned.
fn cstr(bytes: &[u8]) -> Name {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    name::intern(&bytes[..end])
}

/// [`cstr`] without trailing whitespace (a sysfs write's newline).
fn cstr_trimmed(bytes: &[u8]) -> Name {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    name::intern(bytes[..end].trim_ascii_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> VmKey {
        VmKey::from_bytes([3; 32])
    }

    fn raw(probe: ProbeId) -> RawEvent {
        let mut r = RawEvent::zeroed();
        r.probe = probe as u32;
        r.start_ns = 1_000;
        r.end_ns = 21_000;
        r.pid_tgid = (42u64 << 32) | 43;
        r.comm[..4].copy_from_slice(b"qemu");
        r
    }

    #[test]
    fn decodes_an_ide_step_and_what_it_could_not_read() {
        let mut r = raw(ProbeId::IdeStreamEnable);
        r.ret = -6;
        r.dev_name[..12].copy_from_slice(b"0000:00:06.0");
        r.ide_endpoint[..12].copy_from_slice(b"0000:01:00.0");
        r.ide_stream_id = 3;
        r.ide_hb_stream = 1;
        r.ide_rp_index = 2;
        r.ide_ep_index = 0;
        r.flags = flags::IDE_UNNAMED;
        let ev = Event::decode(&r, &key()).unwrap();
        assert_eq!(ev.errno(), Some(6));
        assert_eq!(ev.device.as_deref(), Some("0000:00:06.0"));
        let ide = ev.ide.clone().unwrap();
        assert_eq!(ide.endpoint.as_deref(), Some("0000:01:00.0"));
        assert_eq!(
            (
                ide.stream_id,
                ide.host_bridge_stream,
                ide.rp_index,
                ide.ep_index
            ),
            (Some(3), Some(1), Some(2), Some(0))
        );
        // Not registered yet: no name, and that is what the kernel has.
        assert!(ide.unnamed && ide.name.is_none());
        assert_eq!(ide.label(), "1.2.0");

        // Registered; the numbers unreadable: unknown, never 0.
        r.flags = 0;
        r.ide_name[..11].copy_from_slice(b"stream1.2.0");
        r.missing = missing::IDE_STREAM;
        let ide = Event::decode(&r, &key()).unwrap().ide.unwrap();
        assert_eq!(ide.name.as_deref(), Some("stream1.2.0"));
        assert_eq!((ide.stream_id, ide.rp_index), (None, None));
        assert_eq!(ide.label(), "stream1.2.0");

        // The name resolved but unreadable: unknown, not "unnamed".
        r.missing = missing::IDE_NAME;
        let ide = Event::decode(&r, &key()).unwrap().ide.unwrap();
        assert!(ide.name.is_none() && !ide.unnamed);
    }

    #[test]
    fn decodes_bind_with_vm() {
        let mut r = raw(ProbeId::TsmBind);
        r.ret = -16;
        r.dev_name[..12].copy_from_slice(b"0000:01:00.0");
        r.kvm = 0xffff_8880_1234_0000;
        r.kvm_pid = 4242;
        r.kvm_stats_id[..9].copy_from_slice(b"kvm-4242\0");
        r.tdi_id = 7;
        let ev = Event::decode(&r, &key()).unwrap();
        assert_eq!(ev.probe, ProbeId::TsmBind);
        assert_eq!((ev.tgid, ev.tid), (42, 43));
        assert_eq!(&*ev.comm, "qemu");
        assert_eq!(ev.errno(), Some(16));
        assert_eq!(ev.duration_ns(), 20_000);
        assert_eq!(ev.device.as_deref(), Some("0000:01:00.0"));
        let vm = ev.vm.unwrap();
        assert_eq!(vm.pid, Some(4242));
        assert_eq!(&*vm.name(), "kvm-4242");
        assert_eq!(ev.tdi_id, Some(7));
    }

    #[test]
    fn names_of_successive_records_are_shared_not_copied() {
        let mut r = raw(ProbeId::TsmBind);
        r.dev_name[..12].copy_from_slice(b"0000:01:00.0");
        let a = Event::decode(&r, &key()).unwrap();
        let b = Event::decode(&r, &key()).unwrap();
        assert!(std::sync::Arc::ptr_eq(&a.comm, &b.comm));
        let (da, db) = (a.device.unwrap(), b.device.unwrap());
        assert!(std::sync::Arc::ptr_eq(&da, &db));
        assert_eq!(&*da, "0000:01:00.0");
    }

    #[test]
    fn missing_fields_are_unknown_not_zero() {
        let mut r = raw(ProbeId::TsmOpIoctl);
        r.missing = missing::OP | missing::VDEVICE_ID;
        let ev = Event::decode(&r, &key()).unwrap();
        assert_eq!(ev.op, None);
        assert_eq!(ev.vdevice_id, None);
        assert_eq!(ev.flags, Some(0));

        let mut r = raw(ProbeId::TsmBind);
        r.missing = missing::DEV_NAME | missing::KVM_PID;
        r.kvm = 0x1000;
        let ev = Event::decode(&r, &key()).unwrap();
        assert_eq!(ev.device, None);
        assert_eq!(ev.vm.as_ref().unwrap().pid, None);
        let vm = ev.vm.unwrap();
        assert_eq!(vm.id, key().id(0x1000));
        assert_eq!(&*vm.name(), key().id(0x1000).to_string());
    }

    #[test]
    fn rejects_bad_records() {
        assert!(matches!(
            Event::from_bytes(&[0u8; 10], &key()),
            Err(DecodeError::Size { got: 10, .. })
        ));
        let mut r = raw(ProbeId::TsmBind);
        r.probe = 99;
        assert_eq!(
            Event::decode(&r, &key()),
            Err(DecodeError::UnknownProbe(99))
        );
        let mut r = raw(ProbeId::TsmBind);
        r.end_ns = 0;
        assert!(matches!(
            Event::decode(&r, &key()),
            Err(DecodeError::TimeReversed { .. })
        ));
    }

    #[test]
    fn void_and_err_ptr_returns() {
        let mut r = raw(ProbeId::PciTsmUnbind);
        r.flags = flags::RET_VOID;
        r.ret = 12345;
        let ev = Event::decode(&r, &key()).unwrap();
        assert_eq!(ev.ret, None);
        assert!(ev.ok());
        let mut r = raw(ProbeId::DriverBind);
        r.flags = flags::RET_IS_PTR;
        r.ret = -5;
        assert_eq!(Event::decode(&r, &key()).unwrap().errno(), Some(5));
        r.ret = 0xffff_8880_0000_1000_u64 as i64;
        let ev = Event::decode(&r, &key()).unwrap();
        assert!(ev.ok());
        // The address itself is gone: a valid pointer is 1, NULL 0, an ERR_PTR its errno.
        assert_eq!(ev.ret, Some(1));
        r.ret = 0;
        assert_eq!(Event::decode(&r, &key()).unwrap().ret, Some(0));
        r.ret = -4095;
        assert_eq!(Event::decode(&r, &key()).unwrap().ret, Some(-4095));
        r.ret = -4096;
        assert_eq!(Event::decode(&r, &key()).unwrap().ret, Some(1));
    }

    #[test]
    fn probe_tables_agree() {
        for (i, p) in ProbeId::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i);
            assert_eq!(ProbeId::from_u32(i as u32), Some(*p));
            assert_eq!(ProbeId::parse(p.as_str()), Some(*p));
        }
    }
}
