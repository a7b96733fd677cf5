//! Loading and attaching the eBPF programs, with a compatibility table per probe.
//!
//! Attach is *loose* by default (as in ebpf_exporter): a probe whose function is absent is
//! reported — which one, and why — and the others keep running. `--strict` makes any missing
//! requested probe fatal.

mod attach;
mod bpf_sys;
pub mod deep;
pub mod expiry;
mod kallsyms;
pub mod kernel_log;
pub mod loader;
pub mod misses;
pub mod others;
pub mod pin;
pub mod ring;
pub mod streams;
pub mod unpin;

use std::collections::BTreeMap;

pub use attach::{Links, attach_all, attach_missing, detach_gone, detach_module, plan_all};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{KProbe, ProgramError, RawTracePoint},
};
pub use kallsyms::{AttachPoint, Kallsyms, SymbolMatch};
use serde::Serialize;
use tsm_trace_common::{
    InflightKey, KernelCounter, MODULE_FREE_PROGRAM, Offsets, RawEvent,
    aggregates::{self, AggConfig},
    maps as names,
};

use crate::aggregates::{Aggregates, Counts, DURATION_BUCKETS};

use crate::events::{Layer, ProbeId};

/// The eBPF object built by `tsm-trace-ebpf` (see build.rs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tsm-trace"));

/// How a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Kprobe,
    Kretprobe,
    RawTracepoint,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Kprobe => "kprobe",
            Kind::Kretprobe => "kretprobe",
            Kind::RawTracepoint => "raw_tracepoint",
        }
    }
}

pub use crate::targets::{Candidate, KNOWN_DRIVERS, KnownDriver, TARGETS, Target, target};

/// What the user asked to attach.
#[derive(Clone, Debug, Default)]
pub struct AttachConfig {
    /// Any requested probe that cannot attach is fatal.
    pub strict: bool,
    /// TSM driver ops to probe (layer `tsm_driver`), by probe: `--driver-bind FUNCTION` etc.
    /// Ops not named here are looked up in [`KNOWN_DRIVERS`].
    pub driver_ops: Vec<(ProbeId, String)>,
    /// Probes not to attach at all.
    pub disabled: Vec<ProbeId>,
    /// Attach a probe to another function of the same prototype (`--symbol PROBE=FUNCTION`),
    /// for kernels that renamed it (the patch series renames across versions).
    pub symbols: Vec<(ProbeId, String)>,
    /// The kernel cannot load modules (no `/proc/modules`: built without CONFIG_MODULES):
    /// a function absent now never comes, so no probe waits for one.
    pub no_modules: bool,
}

/// Can this kernel load modules? `/proc/modules` exists exactly when it was built with
/// CONFIG_MODULES (`proc` is `/proc`, or a fake tree in tests).
pub fn modules_supported(proc: &std::path::Path) -> bool {
    proc.join("modules").exists()
}

impl AttachConfig {
    /// The functions to try for `t`, in order: an override, else the table's candidates; for
    /// driver ops, the function named on the command line, else the known drivers' ops.
    pub fn candidates<'a>(&'a self, t: &'a Target) -> Vec<Candidate<'a>> {
        if let Some((_, f)) = self.symbols.iter().find(|(p, _)| *p == t.probe) {
            return vec![Candidate::any(f)];
        }
        if Layer::of(t.probe) == crate::events::Layer::TsmDriver {
            if let Some((_, f)) = self.driver_ops.iter().find(|(p, _)| *p == t.probe) {
                return vec![Candidate::any(f)];
            }
            return crate::targets::driver_candidates(t.probe);
        }
        t.symbols.iter().map(|s| Candidate::any(s)).collect()
    }

    /// Names to keep from kallsyms: every candidate and every anchor.
    pub fn wanted(&self) -> Vec<&str> {
        TARGETS
            .iter()
            .flat_map(|t| {
                self.candidates(t)
                    .into_iter()
                    .map(|c| c.name)
                    .chain(t.anchors.iter().copied())
            })
            .chain([kallsyms::TEXT_START])
            .collect()
    }

    /// Must this probe attach (for `--strict` and the NOT ATTACHED report)? Driver ops only
    /// when named on the command line.
    fn requested(&self, t: &Target) -> bool {
        Layer::of(t.probe) != crate::events::Layer::TsmDriver
            || self.driver_ops.iter().any(|(p, _)| *p == t.probe)
    }
}

/// The outcome for one program.
#[derive(Clone, Debug, Serialize)]
pub struct AttachReport {
    pub probe: ProbeId,
    pub kind: Kind,
    /// The program in the eBPF object (`tsm_bind_return`: `ProbeId::return_program`).
    #[serde(skip)]
    pub program: &'static str,
    /// The kernel function (or tracepoint) it was, or would have been, attached to.
    pub function: String,
    pub attached: bool,
    /// Why not attached (or a note, such as a suffixed symbol being used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Requested: a probe the user asked for (driver ops) or a default one.
    pub requested: bool,
    /// Not attached, but a module loaded later may bring the function (see
    /// [`Target::vmlinux_only`]).
    #[serde(skip)]
    pub may_load_later: bool,
    /// The module the function is in (`None`: vmlinux, or not found). Its unload detaches
    /// the probe until it loads again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Its function (or tracepoint) is in this kernel, attached or not: what the kernel
    /// carries, for readiness (`doctor::coverage`).
    #[serde(skip)]
    pub found: bool,
}

impl AttachReport {
    /// `kprobe tsm_bind (tsm_bind [tsm_standin])`: the program, for log lines.
    pub fn line(&self) -> String {
        format!(
            "{} {} ({})",
            self.kind.as_str(),
            self.probe.as_str(),
            self.function
        )
    }

    /// Requested, not attached, and a module loaded later may still bring its function.
    pub fn waiting(&self) -> bool {
        self.requested && !self.attached && self.may_load_later
    }
}

/// One line per program for `check` and the startup report, its columns as wide as their
/// longest entry (`pci_tsm_unbind_any`, `raw_tracepoint`):
/// `probe attached     tsm_bind  kretprobe tsm_bind  (note)`.
pub fn report_lines(reports: &[AttachReport]) -> Vec<String> {
    let probe_w = reports
        .iter()
        .map(|r| r.probe.as_str().len())
        .max()
        .unwrap_or(0);
    let kind_w = reports
        .iter()
        .map(|r| r.kind.as_str().len())
        .max()
        .unwrap_or(0);
    reports
        .iter()
        .map(|r| {
            let status = match (r.requested, r.attached) {
                (_, true) => "attached    ",
                (true, false) => "NOT ATTACHED",
                (false, false) => "skipped     ",
            };
            let function = if r.function.is_empty() {
                "-"
            } else {
                &r.function
            };
            let mut l = format!(
                "probe {status} {:<probe_w$} {:<kind_w$} {function}",
                r.probe.as_str(),
                r.kind.as_str(),
            );
            if let Some(reason) = &r.reason {
                l.push_str(&format!("  ({reason})"));
            }
            l
        })
        .collect()
}

/// Errors of this module. A load error carries the verifier log.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "the embedded eBPF object is empty: tsm-trace was built with AYA_BUILD_SKIP; rebuild without it"
    )]
    EmptyObject,
    #[error("loading the eBPF object")]
    Object(#[source] aya::EbpfError),
    #[error(
        "eBPF program {program} is missing from the object (tsm-trace and tsm-trace-ebpf disagree)"
    )]
    MissingProgram { program: &'static str },
    /// The log comes first, the kernel's errno (`io_error`) follows it as the cause.
    #[error("the kernel verifier rejected {program}\nverifier log:\n{verifier_log}")]
    Verifier {
        program: &'static str,
        #[source]
        io_error: std::io::Error,
        verifier_log: String,
    },
    #[error("loading eBPF program {program}")]
    Load {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(
        "map {0} of the eBPF object is not a ring buffer (tsm-trace and its eBPF object disagree)"
    )]
    NotRingBuffer(&'static str),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("eBPF map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("--strict: {count} requested probe(s) did not attach:\n{details}")]
    Strict { count: usize, details: String },
}

/// Parses the object, creates its maps and writes `offsets` into `OFFSETS` (programs read
/// them from there, so a module's BTF later updates them without a reload).
pub fn open(
    offsets: &Offsets,
    ringbuf_bytes: Option<u32>,
    pinned: Option<&pin::Pinned>,
) -> Result<Ebpf, ProbeError> {
    if EBPF_OBJECT.is_empty() {
        return Err(ProbeError::EmptyObject);
    }
    let mut loader = loader::loader_for(EBPF_OBJECT);
    kernel_log::configure(&mut loader);
    if let Some(b) = ringbuf_bytes {
        loader.map_max_entries(names::EVENTS, b);
    }
    if let Some(p) = pinned {
        let wanted: Vec<(&str, u32)> = ringbuf_bytes
            .map(|b| (names::EVENTS, b))
            .into_iter()
            .collect();
        for (map, size) in p.configure(&mut loader, &wanted) {
            log::warn!(
                "{map} is pinned with {size} entries (bytes for the ring buffer) from an earlier run and keeps that size; `tsm-trace unpin` (while no daemon runs) lets the next start create it as asked"
            );
        }
    }
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(ProbeError::Object)?;
    let map = ebpf
        .map_mut(names::OFFSETS)
        .ok_or(ProbeError::MissingMap(names::OFFSETS))?;
    let mut arr: Array<&mut MapData, Offsets> =
        Array::try_from(map).map_err(|source| ProbeError::Map {
            name: names::OFFSETS,
            source,
        })?;
    write_offsets(&mut arr, offsets)?;
    let map = ebpf
        .map_mut(names::AGG_CONFIG)
        .ok_or(ProbeError::MissingMap(names::AGG_CONFIG))?;
    let mut cfg: Array<&mut MapData, AggConfig> =
        Array::try_from(map).map_err(|source| ProbeError::Map {
            name: names::AGG_CONFIG,
            source,
        })?;
    let mut bounds_ns = [u64::MAX; aggregates::BOUNDS];
    for (b, s) in bounds_ns.iter_mut().zip(DURATION_BUCKETS) {
        *b = (s * 1e9).round() as u64;
    }
    cfg.set(0, AggConfig { bounds_ns }, 0)
        .map_err(|source| ProbeError::Map {
            name: names::AGG_CONFIG,
            source,
        })?;
    Ok(ebpf)
}

/// Replaces the offsets the programs read.
pub fn write_offsets<M: std::borrow::BorrowMut<MapData>>(
    arr: &mut Array<M, Offsets>,
    offsets: &Offsets,
) -> Result<(), ProbeError> {
    arr.set(0, offsets, 0).map_err(|source| ProbeError::Map {
        name: names::OFFSETS,
        source,
    })
}

/// The programs of `t`, named after its probe: its entry (a kprobe, or a raw tracepoint
/// program) and its return program. `module_load` brings `module_free` (both control, not
/// events).
pub fn program_names(t: &Target) -> impl Iterator<Item = (&'static str, Kind)> {
    let entry = t.probe.entry_program();
    let (entry_kind, second) = match t.probe {
        ProbeId::VmmExit => (Kind::RawTracepoint, None),
        ProbeId::ModuleLoad => (
            Kind::RawTracepoint,
            Some((MODULE_FREE_PROGRAM, Kind::RawTracepoint)),
        ),
        p => (
            Kind::Kprobe,
            p.return_program().map(|r| (r, Kind::Kretprobe)),
        ),
    };
    std::iter::once((entry, entry_kind)).chain(second)
}

pub(crate) fn load_error(program: &'static str, e: ProgramError) -> ProbeError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => ProbeError::Verifier {
            program,
            io_error,
            verifier_log: verifier_log.to_string(),
        },
        source => ProbeError::Load { program, source },
    }
}

/// Loads every program through the verifier without attaching (the host test, and `check`).
pub fn load_all(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    for t in TARGETS {
        for (name, kind) in program_names(t) {
            load_program(ebpf, name, kind)?;
        }
    }
    Ok(())
}

pub(crate) fn load_program(
    ebpf: &mut Ebpf,
    name: &'static str,
    kind: Kind,
) -> Result<(), ProbeError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or(ProbeError::MissingProgram { program: name })?;
    let r = match kind {
        Kind::RawTracepoint => {
            let p: &mut RawTracePoint = prog.try_into().map_err(|e| load_error(name, e))?;
            if p.fd().is_ok() {
                return Ok(());
            }
            p.load()
        }
        Kind::Kprobe | Kind::Kretprobe => {
            let p: &mut KProbe = prog.try_into().map_err(|e| load_error(name, e))?;
            if p.fd().is_ok() {
                return Ok(());
            }
            p.load()
        }
    };
    r.map_err(|e| load_error(name, e))
}

/// An error and its sources on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The kernel-side self-counters ([`KernelCounter`]), summed over CPUs: absolute values
/// read from `STATS`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounts([u64; KernelCounter::COUNT as usize]);

impl KernelCounts {
    /// Counts with `values` set (tests, and the readers that build them).
    pub fn from_values(values: &[(KernelCounter, u64)]) -> KernelCounts {
        let mut k = KernelCounts::default();
        for &(c, v) in values {
            k[c] = v;
        }
        k
    }
}

impl std::ops::Index<KernelCounter> for KernelCounts {
    type Output = u64;

    fn index(&self, c: KernelCounter) -> &u64 {
        &self.0[c as usize]
    }
}

impl std::ops::IndexMut<KernelCounter> for KernelCounts {
    fn index_mut(&mut self, c: KernelCounter) -> &mut u64 {
        &mut self.0[c as usize]
    }
}

/// Handles to the maps userspace reads (and `OFFSETS`, which it rewrites).
pub struct Maps {
    /// The event ring buffer, read through [`ring::Ring`] (reading and committing apart).
    pub events: MapData,
    pub control: RingBuf<MapData>,
    pub stats: PerCpuArray<MapData, u64>,
    pub offsets: Array<MapData, Offsets>,
    /// Entry records waiting for their return (binds still running; stale ones expire).
    pub inflight: aya::maps::HashMap<MapData, InflightKey, RawEvent>,
    /// The operation each thread is in (the exact counts' per-thread state).
    pub thread_ops: aya::maps::HashMap<MapData, u64, aggregates::ThreadOp>,
    /// The exact aggregates: operations by key, frame durations by histogram slot.
    pub op_counts: aya::maps::PerCpuHashMap<MapData, u32, u64>,
    pub op_hist: PerCpuArray<MapData, u64>,
    /// The epoch gate (written by a pinning daemon once its programs are attached).
    pub gate: Array<MapData, u32>,
}

impl Maps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Maps, ProbeError> {
        Ok(Maps {
            events: match ebpf.take_map(names::EVENTS) {
                Some(aya::maps::Map::RingBuf(m)) => m,
                Some(_) => return Err(ProbeError::NotRingBuffer(names::EVENTS)),
                None => return Err(ProbeError::MissingMap(names::EVENTS)),
            },
            control: take(ebpf, names::CONTROL)?,
            stats: take(ebpf, names::STATS)?,
            offsets: take(ebpf, names::OFFSETS)?,
            inflight: take(ebpf, names::INFLIGHT)?,
            thread_ops: take(ebpf, names::THREAD_OPS)?,
            op_counts: take(ebpf, names::OP_COUNTS)?,
            op_hist: take(ebpf, names::OP_HIST)?,
            gate: take(ebpf, names::GATE)?,
        })
    }
}

/// Takes map `name` out of the object as the typed map `T`.
fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
    T::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

/// Reads the per-CPU counters.
pub fn kernel_counts(stats: &PerCpuArray<MapData, u64>) -> Result<KernelCounts, ProbeError> {
    let mut k = KernelCounts::default();
    for c in KernelCounter::ALL {
        k[c] = stats
            .get(&(c as u32), 0)
            .map_err(|source| ProbeError::Map {
                name: names::STATS,
                source,
            })?
            .iter()
            .sum();
    }
    Ok(k)
}

/// Reads the exact aggregates, summed over CPUs.
pub fn read_aggregates(
    counts: &aya::maps::PerCpuHashMap<MapData, u32, u64>,
    hist: &PerCpuArray<MapData, u64>,
) -> Result<Aggregates, ProbeError> {
    let map_err = |name| move |source| ProbeError::Map { name, source };
    let mut out = Aggregates::default();
    for r in counts.iter() {
        let (key, per_cpu) = r.map_err(map_err(names::OP_COUNTS))?;
        let (op, layer, errno) = aggregates::split_key(key);
        let (Some(op), Some(layer)) = (
            crate::correlate::OpKind::ALL.get(op as usize),
            Layer::BY_INDEX.get(layer as usize),
        ) else {
            continue;
        };
        *out.counts.entry((*op, *layer, errno)).or_default() += per_cpu.iter().sum::<u64>();
    }
    for (oi, op) in crate::correlate::OpKind::ALL.iter().enumerate() {
        for (li, layer) in Layer::BY_INDEX.iter().enumerate() {
            for ok in [false, true] {
                let mut c = Counts {
                    buckets: vec![0; aggregates::BOUNDS + 1],
                    sum_ns: 0,
                };
                for slot in 0..aggregates::HIST_SLOTS {
                    let i = aggregates::hist_index(oi as u32, li as u32, ok, slot);
                    let v: u64 = hist
                        .get(&i, 0)
                        .map_err(map_err(names::OP_HIST))?
                        .iter()
                        .sum();
                    if slot == aggregates::HIST_SUM {
                        c.sum_ns = v;
                    } else {
                        c.buckets[slot as usize] = v;
                    }
                }
                if c.buckets.iter().any(|&n| n > 0) {
                    out.durations.insert((*op, *layer, ok), c);
                }
            }
        }
    }
    Ok(out)
}

/// Attached/total per probe, for summaries.
pub fn summarize(reports: &[AttachReport]) -> BTreeMap<&'static str, (usize, usize)> {
    let mut m = BTreeMap::new();
    for r in reports.iter().filter(|r| r.requested) {
        let e = m.entry(r.probe.as_str()).or_insert((0, 0));
        e.1 += 1;
        if r.attached {
            e.0 += 1;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every program the table derives from a probe's name, and every map named in common, is
    /// in the object; no current program takes an old name.
    #[test]
    fn the_object_has_every_derived_program_and_named_map() {
        if EBPF_OBJECT.is_empty() {
            return; // AYA_BUILD_SKIP
        }
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("the object parses");
        for t in TARGETS {
            for (name, _) in program_names(t) {
                assert!(obj.programs.contains_key(name), "{name} ({:?})", t.probe);
            }
            let p = t.probe;
            match p.return_program() {
                Some(r) => {
                    assert_eq!(p.entry_program(), format!("{}_entry", p.as_str()));
                    assert_eq!(r, format!("{}_return", p.as_str()));
                }
                None if p == ProbeId::KvmDestroyVm => {
                    assert_eq!(p.entry_program(), format!("{}_entry", p.as_str()))
                }
                None => assert_eq!(p.entry_program(), p.as_str()),
            }
        }
        for old in crate::targets::LEGACY_PROGRAMS {
            assert!(!obj.programs.contains_key(*old), "{old} is a current name");
        }
        for m in [
            names::EVENTS,
            names::CONTROL,
            names::INFLIGHT,
            names::SCRATCH,
            names::VMM_TGIDS,
            names::STATS,
            names::OFFSETS,
            names::THREAD_OPS,
            names::OP_COUNTS,
            names::OP_HIST,
            names::AGG_CONFIG,
            names::GATE,
            names::LAST_RETURN,
        ] {
            assert!(obj.maps.contains_key(m), "map {m}");
        }
    }

    fn report(probe: ProbeId, kind: Kind, function: &str, attached: bool) -> AttachReport {
        AttachReport {
            probe,
            kind,
            program: "",
            function: function.into(),
            attached,
            reason: (!attached).then(|| "not found".into()),
            requested: true,
            may_load_later: false,
            module: None,
            found: attached,
        }
    }

    #[test]
    fn report_columns_line_up_for_the_longest_names() {
        let reports = [
            report(ProbeId::TsmBind, Kind::Kprobe, "tsm_bind", true),
            report(
                ProbeId::PciTsmUnbindAny,
                Kind::Kretprobe,
                "__pci_tsm_unbind",
                true,
            ),
            report(
                ProbeId::PciTsmDisconnect,
                Kind::Kprobe,
                "__pci_tsm_disconnect",
                false,
            ),
            report(ProbeId::DriverGuestReq, Kind::Kprobe, "", false),
            report(
                ProbeId::ModuleLoad,
                Kind::RawTracepoint,
                "module_load",
                true,
            ),
        ];
        let lines = report_lines(&reports);
        // Each line's kind and function start in the same column as every other line's.
        let col = |l: &str, word: &str| l.find(&format!(" {word} ")).map(|i| i + 1);
        let kinds: Vec<usize> = lines
            .iter()
            .zip(&reports)
            .map(|(l, r)| col(l, r.kind.as_str()).unwrap())
            .collect();
        let functions: Vec<usize> = lines
            .iter()
            .zip(&reports)
            .map(|(l, r)| {
                let f = if r.function.is_empty() {
                    "-"
                } else {
                    &r.function
                };
                kinds[0] + l[kinds[0]..].find(&format!(" {f}")).unwrap() + 1
            })
            .collect();
        assert!(kinds.iter().all(|&k| k == kinds[0]), "{lines:#?}");
        assert!(functions.iter().all(|&f| f == functions[0]), "{lines:#?}");
        assert!(
            lines[0].starts_with("probe attached     tsm_bind "),
            "{}",
            lines[0]
        );
    }
}
