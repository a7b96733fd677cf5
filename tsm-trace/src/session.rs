//! A live tracing session: resolve BTF offsets, load and attach the probes, stream events.
//! Shared by `tsm-trace run`, `trace` and `check`.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::{
    Ebpf,
    maps::{Array, MapData, RingBuf},
};
use tsm_trace_common::{InflightKey, Offsets, RawEvent, aggregates::ThreadOp};

use crate::{
    aggregates::Aggregates,
    btf::{self, BtfSources, Resolution},
    events::{Control, DecodeError, Event, ProbeId, VmKey, VmNames},
    generation::{self, KernelGeneration},
    privileges::PrivilegeError,
    probes::{
        self, AttachConfig, AttachReport, Kallsyms, KernelCounts, Kind, Links, ProbeError,
        SymbolMatch,
        expiry::{self, Expired},
        misses::{self, ProgramMisses},
        pin::PinError,
        ring::Position as RingPosition,
        streams::{ControlStream, EventStream, StreamError},
    },
};

/// Why a session could not start or a step of it failed. The errors of the modules it drives
/// (privileges, pins, loading and attaching) pass through with their own messages.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("reading {path}")]
    Kallsyms {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("resolving struct offsets from BTF")]
    Btf(#[source] btf::BtfError),
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("handing over from the pinned programs")]
    Handover(#[source] PinError),
    #[error("updating the offsets the programs read")]
    Offsets(#[source] ProbeError),
    #[error("listing this process's BPF links")]
    Links(#[source] std::io::Error),
    #[error("the {0} was already taken")]
    Taken(&'static str),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("--deep: {0}")]
    Deep(String),
}

type Result<T, E = SessionError> = std::result::Result<T, E>;

#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub attach: AttachConfig,
    pub btf: BtfSources,
    pub kallsyms: PathBuf,
    pub ringbuf_bytes: Option<u32>,
    /// Pin the state maps and the links here (`run`): see `probes/pin.rs`.
    pub pin_root: Option<PathBuf>,
}

/// One loaded eBPF object for the session's whole life: module loads attach more of its
/// programs, module unloads detach some; its maps (in-flight calls, VMMs, counters) are never
/// replaced.
pub struct Session {
    opts: SessionOptions,
    /// Owns the programs and their links: dropping it detaches everything.
    ebpf: Ebpf,
    links: Links,
    /// Which descriptors are our links, for reading their miss counts (`probes/misses.rs`).
    link_fds: std::cell::RefCell<misses::LinkFds>,
    stats: aya::maps::PerCpuArray<MapData, u64>,
    offsets: Array<MapData, Offsets>,
    inflight: aya::maps::HashMap<MapData, InflightKey, RawEvent>,
    thread_ops: aya::maps::HashMap<MapData, u64, ThreadOp>,
    /// `/proc` shows the kernel's thread ids (see `probes/expiry.rs`).
    sees_host_threads: bool,
    aggregates: Option<AggregateMaps>,
    events: Option<MapData>,
    control: Option<RingBuf<MapData>>,
    /// The epoch gate, held open for the session's life although only a pinning start
    /// writes it: programs loaded later (a module load's rescan) were relocated against its
    /// fd when the object was loaded. Dropped, the fd closes and the verifier rejects them
    /// ("fd N is not pointing to valid bpf_map", seen on 6.12), or a reused fd number binds
    /// them to another object.
    _gate: Array<MapData, u32>,
    pub attach: Vec<AttachReport>,
    pub btf: Resolution,
    /// Which generation of the patch series and whether upstream PCI TSM (re-detected on
    /// every module load and unload).
    pub generation: KernelGeneration,
    /// Where the state is pinned and what the start took over, for `run`.
    pub pinned: Option<PinnedState>,
}

/// Whether `/proc` shows the kernel's thread ids; says what it costs if not.
fn host_threads() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let host = expiry::sees_host_threads(&status);
    if !host {
        log::warn!(
            "/proc shows another pid namespace's ids (a container without hostPID): in-flight calls of exited threads expire only after --inflight-timeout; run with the host's pid namespace (hostPID: true)"
        );
    }
    host
}

/// What a pinning start found and did.
#[derive(Debug)]
pub struct PinnedState {
    pub dir: PathBuf,
    /// This daemon's epoch in the pinned handover.
    pub epoch: u32,
    /// The epoch that was live before (its programs kept running while no daemon ran).
    pub previous: Option<u32>,
    pub handover: probes::pin::Handover,
    /// Holds the lock on the pin directory for the daemon's life.
    _pins: probes::pin::Pinned,
}

fn load_kallsyms(opts: &SessionOptions) -> Result<Kallsyms> {
    // Only the names we may attach to (overrides and driver ops included).
    let wanted = opts.attach.wanted();
    Kallsyms::load(&opts.kallsyms, &wanted).map_err(|source| SessionError::Kallsyms {
        path: opts.kallsyms.clone(),
        source,
    })
}

/// Resolves every offset from BTF, through the prototypes of the functions kallsyms has.
fn resolve_btf(syms: &Kallsyms, opts: &SessionOptions) -> Result<Resolution> {
    // The functions whose prototypes name the structs (each the compatibility table's
    // function kallsyms has, else its first candidate, so that BTF reports name it).
    let tsm_op_ioctl = btf_name(syms, ProbeId::TsmOpIoctl, &opts.attach);
    let tsm_bind = btf_name(syms, ProbeId::TsmBind, &opts.attach);
    let vdevice_abort = btf_name(syms, ProbeId::VdeviceAbort, &opts.attach);
    let pci_tsm_bind = btf_name(syms, ProbeId::PciTsmBind, &opts.attach);
    let kvm_destroy_vm = btf_name(syms, ProbeId::KvmDestroyVm, &opts.attach);
    // PCI TSM context fields and guest request arguments only where those probes exist
    // (a kernel without PCI TSM must not report them unresolved).
    let pci_context = [
        ProbeId::PciTsmUnbindAny,
        ProbeId::PciTsmDisconnect,
        ProbeId::PciTsmDestroy,
    ]
    .iter()
    .any(|p| found_name(syms, *p, &opts.attach).is_some())
    .then(|| btf_name(syms, ProbeId::PciTsmUnbindAny, &opts.attach));
    let guest_req = found_name(syms, ProbeId::PciTsmGuestReq, &opts.attach);
    let guest_req_ioctl = found_name(syms, ProbeId::GuestReqIoctl, &opts.attach);
    let tsm_guest_req = found_name(syms, ProbeId::TsmGuestReq, &opts.attach);
    // `struct pci_ide` only where an IDE probe will attach (6.19+).
    let ide = ProbeId::ALL
        .iter()
        .filter(|p| p.is_ide())
        .any(|p| found_name(syms, *p, &opts.attach).is_some());
    // Driver ops that will be probed: named ones, else those of a known driver present.
    let driver_ops: Vec<(ProbeId, String)> = probes::TARGETS
        .iter()
        .filter(|t| crate::events::Layer::of(t.probe) == crate::events::Layer::TsmDriver)
        .filter_map(|t| found_name(syms, t.probe, &opts.attach).map(|f| (t.probe, f)))
        .collect();
    let driver_ops_ref: Vec<(ProbeId, &str)> =
        driver_ops.iter().map(|(p, f)| (*p, f.as_str())).collect();
    let driver_bind = driver_ops_ref
        .iter()
        .find(|(p, _)| *p == ProbeId::DriverBind)
        .map(|(_, f)| *f);
    // Every kprobe with a return program: its return type comes from its own prototype.
    let probed: Vec<(ProbeId, String)> = probes::TARGETS
        .iter()
        .filter(|t| t.probe.return_program().is_some())
        .filter_map(|t| found_name(syms, t.probe, &opts.attach).map(|f| (t.probe, f)))
        .collect();
    let probed_ref: Vec<(ProbeId, &str)> = probed.iter().map(|(p, f)| (*p, f.as_str())).collect();
    // `--symbol` overrides, each checked against the prototype of the probe's own function.
    let overrides: Vec<(ProbeId, &str, &'static [&'static str])> = opts
        .attach
        .symbols
        .iter()
        .map(|(p, f)| (*p, f.as_str(), probes::target(*p).symbols))
        .collect();
    btf::resolve(
        &opts.btf,
        &btf::Functions {
            tsm_op_ioctl: &tsm_op_ioctl,
            tsm_bind: &tsm_bind,
            vdevice_abort: &vdevice_abort,
            pci_tsm_bind: &pci_tsm_bind,
            driver_bind,
            kvm_destroy_vm: &kvm_destroy_vm,
            pci_tsm_unbind_any: pci_context.as_deref(),
            pci_tsm_guest_req: guest_req.as_deref(),
            guest_req_ioctl: guest_req_ioctl.as_deref(),
            tsm_guest_req: tsm_guest_req.as_deref(),
            ide,
            driver_ops: &driver_ops_ref,
            probed: &probed_ref,
            overrides: &overrides,
        },
    )
    .map_err(SessionError::Btf)
}

/// The function a probe will use, for BTF lookups, or `None` if kallsyms has none of its
/// candidates (compiler clones are never used: see `probes::kallsyms::CLONE_REASON`).
fn found_name(syms: &Kallsyms, probe: ProbeId, config: &AttachConfig) -> Option<String> {
    let t = probes::target(probe);
    match syms.find_in(&config.candidates(t), t.anchors) {
        SymbolMatch::Found { name, .. } => {
            Some(name.split('.').next().unwrap_or(&name).to_string())
        }
        SymbolMatch::Missing { .. } => None,
    }
}

/// [`found_name`], else the first of the probe's candidates in the compatibility table (so
/// that BTF reports name the function looked for); the probe's own name if it has none.
fn btf_name(syms: &Kallsyms, probe: ProbeId, config: &AttachConfig) -> String {
    found_name(syms, probe, config).unwrap_or_else(|| {
        config
            .candidates(probes::target(probe))
            .first()
            .map_or(probe.as_str(), |c| c.name)
            .to_string()
    })
}

/// What a session would attach, found without loading anything (no privilege needed):
/// `tsm-trace doctor` where the probes cannot be loaded.
pub struct Plan {
    /// Every program's report (never `attached`) and whether it would be attached.
    pub probes: Vec<(AttachReport, bool)>,
    pub btf: Resolution,
    /// As [`Session::generation`]: the same detection, from the same kallsyms and BTF.
    pub generation: KernelGeneration,
}

impl Plan {
    /// kallsyms and BTF as [`Session::start`] reads them, and the same walk over the
    /// programs, stopping short of the verifier and `perf_event_open`.
    pub fn make(opts: &SessionOptions) -> Result<Plan> {
        let syms = load_kallsyms(opts)?;
        let btf = resolve_btf(&syms, opts)?;
        let probes = probes::plan_all(&syms, &opts.attach, &btf.prototypes);
        let generation = generation::detect(&btf.patch, &syms);
        Ok(Plan {
            probes,
            btf,
            generation,
        })
    }
}

impl Session {
    pub fn start(opts: &SessionOptions) -> Result<Session> {
        crate::privileges::check_privileges()?;
        // Old kernels (< 5.11) charge BPF maps to RLIMIT_MEMLOCK.
        let rlim = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
            log::debug!(
                "could not raise RLIMIT_MEMLOCK (fine on kernels 5.11+ with memcg accounting)"
            );
        }
        crate::memory::log_phase("start");
        let syms = load_kallsyms(opts)?;
        crate::memory::log_phase("reading kallsyms");
        let resolution = resolve_btf(&syms, opts)?;
        crate::memory::log_phase("resolving offsets from BTF");
        let generation = generation::detect(&resolution.patch, &syms);
        let pinned = match opts.pin_root.as_deref().map(probes::pin::Pinned::prepare) {
            Some(Ok(p)) => Some(p),
            // Another daemon is live on these pins: two would starve each other silently.
            Some(Err(e @ probes::pin::PinError::Busy { .. })) => return Err(e.into()),
            Some(Err(e)) => {
                log::warn!(
                    "not pinning: {}; the probes go when the daemon exits and a restart loses what happens meanwhile (the binding table is still kept in the state file)",
                    probes::chain(&e)
                );
                None
            }
            None => None,
        };
        let mut ebpf = probes::open(&resolution.offsets, opts.ringbuf_bytes, pinned.as_ref())?;
        crate::memory::log_phase("loading the eBPF object");
        let mut links = match &pinned {
            Some(p) => Links::pinned(p.link_pins()),
            None => Links::default(),
        };
        let attach = probes::attach_all(
            &mut ebpf,
            &mut links,
            &syms,
            &opts.attach,
            &resolution.prototypes,
        )?;
        crate::memory::log_phase("attaching the probes");
        let mut maps = probes::Maps::take(&mut ebpf)?;
        // Attached next to the earlier epoch's programs: now they stand aside.
        let pinned = match pinned {
            Some(p) => {
                let handover = p.go_live(&mut maps.gate).map_err(SessionError::Handover)?;
                Some(PinnedState {
                    dir: p.dir().to_path_buf(),
                    epoch: p.epoch,
                    previous: p.previous,
                    handover,
                    _pins: p,
                })
            }
            None => None,
        };
        Ok(Session {
            pinned,
            opts: opts.clone(),
            ebpf,
            links,
            link_fds: Default::default(),
            stats: maps.stats,
            offsets: maps.offsets,
            inflight: maps.inflight,
            thread_ops: maps.thread_ops,
            sees_host_threads: host_threads(),
            aggregates: Some(AggregateMaps {
                counts: maps.op_counts,
                hist: maps.op_hist,
            }),
            events: Some(maps.events),
            control: Some(maps.control),
            _gate: maps.gate,
            attach,
            btf: resolution,
            generation,
        })
    }

    /// After a module load (or an unload whose module name was unreadable): reads kallsyms
    /// and BTF again, updates the offsets the programs read, detaches probes whose function
    /// went away and attaches, to this same object, those whose function is there now.
    /// Returns (attached, detached) as report lines.
    pub fn rescan(&mut self) -> Result<(Vec<String>, Vec<String>)> {
        let syms = load_kallsyms(&self.opts)?;
        let gone = probes::detach_gone(&mut self.links, &mut self.attach, &syms, &self.opts.attach);
        let resolution = resolve_btf(&syms, &self.opts)?;
        if resolution.offsets != self.btf.offsets {
            probes::write_offsets(&mut self.offsets, &resolution.offsets)
                .map_err(SessionError::Offsets)?;
        }
        let gained = probes::attach_missing(
            &mut self.ebpf,
            &mut self.links,
            &syms,
            &self.opts.attach,
            &resolution.prototypes,
            &mut self.attach,
        )?;
        self.generation = generation::detect(&resolution.patch, &syms);
        self.btf = resolution;
        Ok((gained, gone))
    }

    /// Where the programs are pinned and their epoch (`None`: not pinned).
    pub fn pinned_at(&self) -> Option<(&std::path::Path, u32)> {
        self.pinned.as_ref().map(|p| (p.dir.as_path(), p.epoch))
    }

    /// The pins of this daemon that are gone (`None`: it pins nothing).
    pub fn pins_missing(&self) -> Option<Vec<PathBuf>> {
        self.pinned.as_ref().map(|p| p._pins.missing())
    }

    /// Detects the generation again from kallsyms and BTF (after a module unload), without
    /// touching probes or offsets. True when it changed.
    pub fn redetect(&mut self) -> Result<bool> {
        let syms = load_kallsyms(&self.opts)?;
        let resolution = resolve_btf(&syms, &self.opts)?;
        let g = generation::detect(&resolution.patch, &syms);
        let changed = g != self.generation;
        self.generation = g;
        Ok(changed)
    }

    /// A module is being freed: detaches its probes (they would never fire again) and
    /// returns them as report lines.
    pub fn module_unloaded(&mut self, module: &str) -> Vec<String> {
        probes::detach_module(&mut self.links, &mut self.attach, module)
    }

    /// Devices with a bind or unbind still running (entry seen, return not yet): the
    /// kernel may already show their new state in sysfs, so reconciliation leaves them be.
    pub fn devices_in_flight(&self) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        for (_, ev) in self.inflight.iter().flatten() {
            // A free slot (start 0): its call returned.
            if ev.start_ns == 0 || ev.missing & tsm_trace_common::missing::DEV_NAME != 0 {
                continue;
            }
            let end = ev.dev_name.iter().position(|&b| b == 0).unwrap_or(0);
            if end > 0 {
                out.insert(String::from_utf8_lossy(&ev.dev_name[..end]).into_owned());
            }
        }
        out
    }

    /// Operations in flight now, from the kernel-side entries (`in_flight.rs`).
    pub fn in_flight(&self) -> crate::in_flight::InFlight {
        crate::in_flight::InFlight::from_entries(self.inflight.iter().filter_map(Result::ok))
    }

    /// Requested probes that are not attached but that a module loaded later may bring
    /// (functions only vmlinux can have are not waited for).
    pub fn missing(&self) -> usize {
        self.attach.iter().filter(|r| r.waiting()).count()
    }

    /// Those programs, as `kind probe` (e.g. `kprobe driver_connect`).
    pub fn waiting(&self) -> Vec<String> {
        self.attach
            .iter()
            .filter(|r| r.waiting())
            .map(|r| format!("{} {}", r.kind.as_str(), r.probe.as_str()))
            .collect()
    }

    /// Lines for the startup report: probes attached or not (and why), BTF fields.
    pub fn report_lines(&self) -> Vec<String> {
        let mut lines = vec![format!("kernel {}", self.generation.summary())];
        lines.extend(
            self.generation
                .evidence
                .iter()
                .map(|e| format!("kernel   {e}")),
        );
        lines.extend(probes::report_lines(&self.attach));
        match self.kernel_misses().ok().as_deref().and_then(misses::kprobe_reporting) {
            Some(true) => lines.push("misses kprobe miss counts reported by this kernel (tsm_trace_kernel_misses_total)".into()),
            Some(false) => lines.push("misses kprobe miss counts NOT reported by this kernel (needs 6.7+): a missed return shows only as an expired in-flight entry (tsm_trace_inflight_expired_total)".into()),
            None => {}
        }
        lines.extend(
            self.btf
                .summary_lines()
                .into_iter()
                .map(|l| format!("btf   {l}")),
        );
        lines
    }

    pub fn attached_count(&self) -> usize {
        self.attach.iter().filter(|r| r.attached).count()
    }

    pub fn kernel_counts(&self) -> Result<KernelCounts, ProbeError> {
        probes::kernel_counts(&self.stats)
    }

    /// Removes kernel-side entries whose return will never come (`probes/expiry.rs`):
    /// in-flight entries of exited threads or older than `timeout`, and the operations of
    /// exited threads; and the free slots of exited threads (not counted: nothing was lost). Only entries this call removed are counted (one whose return came
    /// meanwhile is gone already).
    /// Also returns the operations still in flight, from the same walk of the map (each
    /// walk of it costs: a kprobe program that fires on a CPU while a bpf(2) map operation
    /// holds it is skipped, as a BPF recursion miss).
    pub fn expire_stale(
        &mut self,
        timeout: Duration,
    ) -> Result<(Expired, crate::in_flight::InFlight)> {
        let now = crate::clock::monotonic_ns();
        let host = self.sees_host_threads;
        // Where /proc shows other ids, no thread can be found gone: only the timeout applies.
        let alive = |pt| !host || expiry::thread_alive(Path::new("/proc"), pt);
        let mut raw: Vec<(InflightKey, tsm_trace_common::RawEvent)> =
            self.inflight.iter().filter_map(Result::ok).collect();
        let entries: Vec<(InflightKey, u64)> =
            raw.iter().map(|(k, ev)| (*k, ev.start_ns)).collect();
        let mut out = Expired::default();
        let timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let free = expiry::free_slots_of_gone_threads(entries.iter().copied(), alive);
        let in_flight = entries.iter().filter(|(_, start)| *start != 0).count();
        let stale = expiry::stale_inflight(entries, now, timeout_ns, alive);
        out.still_in_flight = in_flight - stale.len();
        for key in free {
            raw.retain(|(k, _)| *k != key);
            let _ = self.inflight.remove(&key);
        }
        for (key, probe, reason) in stale {
            raw.retain(|(k, _)| *k != key);
            if self.inflight.remove(&key).is_ok() {
                out.inflight.push((probe, reason));
            }
        }
        let in_flight = crate::in_flight::InFlight::from_entries(raw);
        let ops: Vec<(u64, ThreadOp)> = self.thread_ops.iter().filter_map(Result::ok).collect();
        for (pid_tgid, open) in expiry::stale_thread_ops(ops, alive) {
            if self.thread_ops.remove(&pid_tgid).is_ok() && open {
                out.unfinished_operations += 1;
            }
        }
        Ok((out, in_flight))
    }

    /// What the kernel counted as missed for each attached program (`probes/misses.rs`).
    pub fn kernel_misses(&self) -> Result<Vec<ProgramMisses>> {
        let want: Vec<u32> = self
            .attach
            .iter()
            .filter(|r| r.attached && r.kind != Kind::RawTracepoint)
            .filter_map(|r| self.links.link_id(r.program))
            .collect();
        let by_link = self
            .link_fds
            .borrow_mut()
            .kprobe_missed(&want)
            .map_err(SessionError::Links)?;
        let mut out = Vec::new();
        for r in self.attach.iter().filter(|r| r.attached) {
            let link_id = self.links.link_id(r.program);
            let kprobe = match r.kind {
                Kind::RawTracepoint => None,
                _ => link_id.and_then(|id| by_link.get(&id).copied()),
            };
            let recursion = self
                .ebpf
                .program(r.program)
                .and_then(|p| p.fd().ok())
                .and_then(|fd| misses::recursion_misses(fd.as_fd()).ok());
            out.push(ProgramMisses {
                probe: r.probe,
                kind: r.kind,
                link_id,
                kprobe,
                recursion,
            });
        }
        Ok(out)
    }

    /// The kernel's exact counts of operations and frame durations, to be read where the
    /// metrics are rendered (on scrape). `None` once taken.
    pub fn take_aggregates(&mut self) -> Option<AggregateMaps> {
        self.aggregates.take()
    }

    /// Takes the ring buffers for async reading; VMs are named with `key`.
    pub fn streams(&mut self, key: VmKey) -> Result<(EventStream, ControlStream)> {
        let ring = self
            .events
            .take()
            .ok_or(SessionError::Taken("event stream"))?;
        let control = self
            .control
            .take()
            .ok_or(SessionError::Taken("control stream"))?;
        Ok((
            EventStream::new(ring, VmNames::new(key))?,
            ControlStream::new(control)?,
        ))
    }
}

/// What the deep programs cost (`BPF_ENABLE_STATS`): (runs, ns in them) of the entry
/// program (every call of an attached function, inside TSM work or not) and of the return
/// program.
#[derive(Debug, Clone, Copy)]
pub struct DeepCost {
    pub entry: (u64, u64),
    pub ret: (u64, u64),
}

/// What `trace --deep` attached, and what not with the reason.
#[derive(Debug, Default)]
pub struct DeepReport {
    pub attached: Vec<(String, Option<String>)>,
    pub skipped: Vec<probes::deep::Skipped>,
    pub unmatched: Vec<(probes::deep::DeepSpec, String)>,
    pub over_cap: usize,
    pub notes: Vec<String>,
}

/// The maps of the kernel's exact aggregation (operations, frame durations).
pub struct AggregateMaps {
    counts: aya::maps::PerCpuHashMap<MapData, u32, u64>,
    hist: aya::maps::PerCpuArray<MapData, u64>,
}

impl AggregateMaps {
    /// Reads them (about 1,500 map lookups: on scrape, not per event).
    pub fn read(&self) -> Result<Aggregates, ProbeError> {
        probes::read_aggregates(&self.counts, &self.hist)
    }
}

/// Names the guest-request values of freshly decoded events from BTF's enums (the
/// session's current resolution: a module load re-resolves them).
fn name_values(names: &btf::ReqNames, events: &mut [Result<Event, DecodeError>]) {
    for ev in events.iter_mut().flatten() {
        names.fill(ev);
    }
}

/// A ring buffer's error with tokio: `what` ("registering the ring buffer") failed.
/// A session with its event and control streams: what `run` and `trace` drive.
pub struct LiveSession {
    session: Session,
    stream: EventStream,
    control: ControlStream,
    /// The programs' diagnostics, read into the log at `--log-level debug` only.
    _kernel_log: Option<probes::kernel_log::KernelLog>,
    /// `trace --deep`: the kernel counts run time and runs of every BPF program while this is
    /// held (`BPF_ENABLE_STATS`), so the session can say what each deep call cost.
    deep_stats: Option<std::os::fd::OwnedFd>,
}

impl LiveSession {
    /// Starts a session whose events name VMs with `key`.
    pub fn start(opts: &SessionOptions, key: VmKey) -> Result<LiveSession> {
        let mut session = Session::start(opts)?;
        let (stream, control) = session.streams(key)?;
        let _kernel_log = probes::kernel_log::start(&mut session.ebpf);
        Ok(LiveSession {
            session,
            stream,
            control,
            _kernel_log,
            deep_stats: None,
        })
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Waits until events or control records (module loads and unloads) are readable and
    /// appends them to `events` and `controls`.
    pub async fn next(
        &mut self,
        events: &mut Vec<Result<Event, DecodeError>>,
        controls: &mut Vec<Option<Control>>,
    ) -> Result<()> {
        let LiveSession {
            stream,
            control,
            session,
            ..
        } = self;
        let from = events.len();
        tokio::select! {
            r = stream.next_batch(events) => r?,
            r = control.next_batch(controls) => r?,
        }
        name_values(&session.btf.names, &mut events[from..]);
        Ok(())
    }

    /// Appends whatever is in the ring buffer now, without waiting.
    pub fn drain_now(&mut self, out: &mut Vec<Result<Event, DecodeError>>) {
        let from = out.len();
        self.stream.drain_now(out);
        name_values(&self.session.btf.names, &mut out[from..]);
    }

    /// `trace --deep`: plans what `specs` name, attaches the deep programs to it for this
    /// session and names the deep records the stream reads from now on.
    pub fn attach_deep(
        &mut self,
        specs: &[probes::deep::DeepSpec],
        max: usize,
    ) -> Result<DeepReport> {
        let probed: Vec<(String, String)> = self
            .session
            .attach
            .iter()
            .filter(|r| r.attached)
            .map(|r| (r.function.clone(), r.probe.as_str().to_string()))
            .collect();
        let (kernel, plan) = probes::deep::plan_here(specs, &self.session.opts.btf, &probed, max)
            .map_err(SessionError::Deep)?;
        // Records are named from the first one on: the decoder is in place before any
        // program is attached.
        self.stream.set_deep(probes::deep::symbols(&kernel, &plan));
        let failed = probes::deep::attach(&mut self.session.ebpf, &plan)?;
        let mut report = DeepReport {
            attached: plan
                .attach
                .iter()
                .filter(|f| !failed.iter().any(|x| x.name == f.name))
                .map(|f| (f.name.clone(), f.module.clone()))
                .collect(),
            skipped: plan.skipped,
            unmatched: plan.unmatched,
            over_cap: plan.over_cap,
            notes: kernel.notes.clone(),
        };
        report.skipped.extend(failed);
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => self.deep_stats = Some(fd),
            Err(e) => report.notes.push(format!(
                "the kernel's BPF run-time statistics could not be enabled ({e}): the summary will not say what each deep call cost"
            )),
        }
        Ok(report)
    }

    /// `trace --deep`: runs and run time of the deep entry and return programs since they
    /// were attached (`None` without `--deep` or without run-time statistics).
    pub fn deep_cost(&self) -> Option<DeepCost> {
        self.deep_stats.as_ref()?;
        let info = |name: &str| {
            let p: &aya::programs::KProbe = self.session.ebpf.program(name)?.try_into().ok()?;
            let i = p.info().ok()?;
            Some((i.run_count(), i.run_time().as_nanos() as u64))
        };
        Some(DeepCost {
            entry: info(probes::deep::ENTRY_PROGRAM)?,
            ret: info(probes::deep::RETURN_PROGRAM)?,
        })
    }

    /// See [`EventStream::deep_counts`].
    pub fn deep_counts(&mut self, finish: bool) -> Option<(u64, u64)> {
        self.stream.deep_counts(finish)
    }

    /// Release records only through [`LiveSession::commit`], once what they changed is
    /// saved (by default they are released as they are read).
    pub fn commit_when_saved(&mut self) {
        self.stream.commit_when_saved();
    }

    /// Where the next record to read starts (what a state saved now covers).
    pub fn ring_position(&self) -> RingPosition {
        self.stream.position()
    }

    /// The records before `pos` may be overwritten: their effect is saved.
    pub fn commit(&mut self, pos: RingPosition) {
        self.stream.commit(pos);
    }

    /// Skips the records a previous daemon had applied and saved (see
    /// [`probes::ring::Ring::resume_at`]).
    pub fn resume_at(&mut self, pos: RingPosition) -> Option<u64> {
        self.stream.resume_at(pos)
    }

    /// Bytes read and not committed.
    pub fn uncommitted(&self) -> u64 {
        self.stream.uncommitted()
    }

    pub fn missing(&self) -> usize {
        self.session.missing()
    }

    pub fn kernel_counts(&self) -> Result<KernelCounts, ProbeError> {
        self.session.kernel_counts()
    }
}
