//! A live tracing session: resolve BTF offsets, load and attach the probes, stream events.
//! Shared by `tsm-trace run`, `trace` and `check`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use tokio::io::unix::AsyncFd;

use crate::{
    btf::{self, BtfSources, Resolution},
    events::{DecodeError, Event, Probe, VmKey},
    probes::{self, AttachConfig, AttachReport, Kallsyms, KernelStats, SymbolMatch},
};

#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub attach: AttachConfig,
    pub btf: BtfSources,
    pub kallsyms: PathBuf,
    pub ringbuf_bytes: Option<u32>,
}

pub struct Session {
    /// Owns the programs and their links: dropping it detaches everything.
    pub ebpf: Ebpf,
    pub stats: aya::maps::PerCpuArray<MapData, u64>,
    pub events: Option<RingBuf<MapData>>,
    pub attach: Vec<AttachReport>,
    pub btf: Resolution,
}

/// The function a probe will use, for BTF lookups (compiler suffixes such as `.isra.0`
/// dropped), or `None` if kallsyms has none of its candidates.
fn found_name(syms: &Kallsyms, probe: Probe, config: &AttachConfig) -> Option<String> {
    let t = probes::target(probe);
    match syms.find_in(&config.candidates(t), t.anchors) {
        SymbolMatch::Found { name, .. } => {
            Some(name.split('.').next().unwrap_or(&name).to_string())
        }
        SymbolMatch::Missing { .. } => None,
    }
}

/// [`found_name`], else the first candidate (so BTF reports name the function looked for).
fn btf_name(
    syms: &Kallsyms,
    probe: Probe,
    fallback: &'static str,
    config: &AttachConfig,
) -> String {
    found_name(syms, probe, config).unwrap_or_else(|| {
        config
            .candidates(probes::target(probe))
            .first()
            .map_or(fallback, |c| c.name)
            .to_string()
    })
}

impl Session {
    pub fn start(opts: &SessionOptions) -> Result<Session> {
        probes::check_privileges()?;
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

        // Only the names we may attach to (overrides and driver ops included).
        let wanted = opts.attach.wanted();
        let syms = Kallsyms::load(&opts.kallsyms, &wanted)
            .with_context(|| format!("reading {}", opts.kallsyms.display()))?;

        let names = [
            btf_name(
                &syms,
                Probe::TsmOpIoctl,
                "iommufd_vdevice_tsm_op_ioctl",
                &opts.attach,
            ),
            btf_name(&syms, Probe::TsmBind, "tsm_bind", &opts.attach),
            btf_name(
                &syms,
                Probe::VdeviceAbort,
                "iommufd_vdevice_abort",
                &opts.attach,
            ),
            btf_name(&syms, Probe::PciTsmBind, "pci_tsm_bind", &opts.attach),
            btf_name(&syms, Probe::KvmDestroyVm, "kvm_destroy_vm", &opts.attach),
        ];
        // PCI TSM context fields and guest request arguments only where those probes exist
        // (a kernel without PCI TSM must not report them unresolved).
        let pci_context = [
            Probe::PciTsmUnbindAny,
            Probe::PciTsmDisconnect,
            Probe::PciTsmDestroy,
        ]
        .iter()
        .any(|p| found_name(&syms, *p, &opts.attach).is_some())
        .then(|| {
            btf_name(
                &syms,
                Probe::PciTsmUnbindAny,
                "__pci_tsm_unbind",
                &opts.attach,
            )
        });
        let guest_req = found_name(&syms, Probe::PciTsmGuestReq, &opts.attach);
        // Driver ops that will be probed: named ones, else those of a known driver present.
        let driver_ops: Vec<(Probe, String)> = probes::TARGETS
            .iter()
            .filter(|t| t.probe.layer() == crate::events::Layer::TsmDriver)
            .filter_map(|t| found_name(&syms, t.probe, &opts.attach).map(|f| (t.probe, f)))
            .collect();
        let driver_ops_ref: Vec<(Probe, &str)> =
            driver_ops.iter().map(|(p, f)| (*p, f.as_str())).collect();
        let driver_bind = driver_ops_ref
            .iter()
            .find(|(p, _)| *p == Probe::DriverBind)
            .map(|(_, f)| *f);
        let resolution = btf::resolve(
            &opts.btf,
            &btf::Functions {
                tsm_op_ioctl: &names[0],
                tsm_bind: &names[1],
                vdevice_abort: &names[2],
                pci_tsm_bind: &names[3],
                driver_bind,
                kvm_destroy_vm: &names[4],
                pci_tsm_unbind_any: pci_context.as_deref(),
                pci_tsm_guest_req: guest_req.as_deref(),
                driver_ops: &driver_ops_ref,
            },
        )
        .context("resolving struct offsets from BTF")?;

        let mut ebpf = probes::open(&resolution.offsets, opts.ringbuf_bytes)?;
        let attach = probes::attach_all(&mut ebpf, &syms, &opts.attach, &resolution.prototypes)?;
        let maps = probes::Maps::take(&mut ebpf)?;
        Ok(Session {
            ebpf,
            stats: maps.stats,
            events: Some(maps.events),
            attach,
            btf: resolution,
        })
    }

    /// Lines for the startup report: probes attached or not (and why), BTF fields.
    pub fn report_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for r in &self.attach {
            let status = match (r.requested, r.attached) {
                (_, true) => "attached    ",
                (true, false) => "NOT ATTACHED",
                (false, false) => "skipped     ",
            };
            let mut l = format!(
                "probe {status} {:<15} {:<14} {}",
                r.probe.as_str(),
                r.kind.as_str(),
                if r.function.is_empty() {
                    "-"
                } else {
                    &r.function
                }
            );
            if let Some(reason) = &r.reason {
                l.push_str(&format!("  ({reason})"));
            }
            lines.push(l);
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

    pub fn kernel_stats(&self) -> Result<KernelStats> {
        Ok(probes::kernel_stats(&self.stats)?)
    }

    /// Takes the ring buffer for async reading; VMs are named with `key`.
    pub fn event_stream(&mut self, key: VmKey) -> Result<EventStream> {
        let ring = self
            .events
            .take()
            .context("the event stream was already taken")?;
        // SAFETY: the ring buffer fd stays valid while `ring` lives inside the AsyncFd.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .context("registering the ring buffer with tokio")?;
        Ok(EventStream { fd, key })
    }
}

/// Decoded events from the ring buffer, in batches, woken by epoll (no polling loop).
pub struct EventStream {
    fd: AsyncFd<RingBuf<MapData>>,
    key: VmKey,
}

impl EventStream {
    /// Waits until events are available and appends everything readable to `out`.
    pub async fn next_batch(&mut self, out: &mut Vec<Result<Event, DecodeError>>) -> Result<()> {
        let mut guard = self.fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let item: &[u8] = &item;
            out.push(Event::from_bytes(item, &self.key));
        }
        guard.clear_ready();
        Ok(())
    }
}

impl EventStream {
    /// Appends whatever is in the ring buffer now, without waiting.
    pub fn drain_now(&mut self, out: &mut Vec<Result<Event, DecodeError>>) {
        let ring = self.fd.get_mut();
        while let Some(item) = ring.next() {
            let item: &[u8] = &item;
            out.push(Event::from_bytes(item, &self.key));
        }
    }
}

impl std::ops::Add for KernelStats {
    type Output = KernelStats;

    fn add(self, o: KernelStats) -> KernelStats {
        KernelStats {
            ringbuf_drops: self.ringbuf_drops + o.ringbuf_drops,
            inflight_full: self.inflight_full + o.inflight_full,
            read_faults: self.read_faults + o.read_faults,
            orphan_returns: self.orphan_returns + o.orphan_returns,
        }
    }
}

/// A session that follows module loads: when a module is loaded (iommufd.ko and kvm.ko often
/// load after boot) and some requested probe is still unattached, [`LiveSession::rescan`]
/// starts a fresh session (new BTF resolution, new object) and, if it attaches more, swaps it
/// in: the old ring buffer is drained first and its counters carry over.
pub struct LiveSession {
    opts: SessionOptions,
    key: VmKey,
    session: Session,
    stream: EventStream,
    /// Kernel counters of sessions already replaced.
    retired: KernelStats,
    module_loaded: bool,
}

impl LiveSession {
    /// Starts a session whose events name VMs with `key`.
    pub fn start(opts: &SessionOptions, key: VmKey) -> Result<LiveSession> {
        let mut session = Session::start(opts)?;
        let stream = session.event_stream(key.clone())?;
        Ok(LiveSession {
            opts: opts.clone(),
            key,
            session,
            stream,
            retired: KernelStats::default(),
            module_loaded: false,
        })
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub async fn next_batch(&mut self, out: &mut Vec<Result<Event, DecodeError>>) -> Result<()> {
        let from = out.len();
        self.stream.next_batch(out).await?;
        if out[from..]
            .iter()
            .any(|e| matches!(e, Ok(ev) if ev.probe == Probe::ModuleLoad))
        {
            self.module_loaded = true;
        }
        Ok(())
    }

    /// Appends whatever is in the ring buffer now, without waiting.
    pub fn drain_now(&mut self, out: &mut Vec<Result<Event, DecodeError>>) {
        self.stream.drain_now(out);
    }

    /// Requested probes that are not attached but that a module loaded later may bring
    /// (functions only vmlinux can have are not waited for).
    pub fn missing(&self) -> usize {
        self.session
            .attach
            .iter()
            .filter(|r| r.requested && !r.attached && r.may_load_later)
            .count()
    }

    /// True once after a module load while probes are missing.
    pub fn take_rescan_request(&mut self) -> bool {
        std::mem::take(&mut self.module_loaded) && self.missing() > 0
    }

    /// Looks for probe targets again. Returns the newly attached probes (empty if nothing
    /// changed); events still in the old ring buffer are appended to `out`.
    pub fn rescan(&mut self, out: &mut Vec<Result<Event, DecodeError>>) -> Result<Vec<String>> {
        let mut fresh = Session::start(&self.opts)?;
        if fresh.attached_count() <= self.session.attached_count() {
            for r in fresh.attach.iter().filter(|r| r.requested && !r.attached) {
                log::debug!(
                    "after the module load, {} {} still not attached: {}",
                    r.kind.as_str(),
                    r.probe.as_str(),
                    r.reason.as_deref().unwrap_or("unknown")
                );
            }
            return Ok(Vec::new());
        }
        let stream = fresh.event_stream(self.key.clone())?;
        let gained: Vec<String> = fresh
            .attach
            .iter()
            .filter(|r| r.attached)
            .filter(|r| {
                !self
                    .session
                    .attach
                    .iter()
                    .any(|o| o.attached && o.probe == r.probe && o.kind == r.kind)
            })
            .map(|r| format!("{} {} ({})", r.kind.as_str(), r.probe.as_str(), r.function))
            .collect();
        // Both are attached now; drain the old one, then let it go (detaching it).
        self.stream.drain_now(out);
        self.retired = self.retired + self.session.kernel_stats().unwrap_or_default();
        self.session = fresh;
        self.stream = stream;
        Ok(gained)
    }

    /// Kernel counters of this and every replaced session.
    pub fn kernel_stats(&self) -> Result<KernelStats> {
        Ok(self.retired + self.session.kernel_stats()?)
    }
}
