//! Human output: one line per operation, leak and VM event, and a [`Summary`] printed on exit.
//!
//! ```text
//! 22:31:05.123456 bind     0000:01:00.0 vdev=3 vm=kvm-4242 tdi=7  EBUSY from pci_tsm (pci_tsm_bind)  iommufd 1.2ms > tsm_core 1.1ms > pci_tsm 1.0ms EBUSY  comm=qemu tgid=4242
//! 22:31:09.000001 LEAK     0000:01:00.0 vm_destroyed  vm=kvm-4242 vmm=qemu/4242 vdev=3 tdi=7 bound 4.1s
//! 22:31:12.500000 LEAK-END 0000:01:00.0 vm_destroyed  cleared by unbound after 3.5s
//! 22:31:12.600000 LOST     2875 events (ring buffer full; raise --ringbuf-size)
//! ```
//!
//! `LOST` lines (where the kernel dropped events, timed by the last event handled before
//! them) come from `exporters/loss.rs`.
//!
//! **Call trees.** An operation line ends with the calls it made, each with its layer (its
//! function, for connect, disconnect and guest requests) and duration: `a > b` means `a`
//! called `b` (`b` ran inside `a`); calls made one after the other by the same caller are
//! listed in parentheses, separated by commas: `a > (b, c)` means `a` called `b`, then `c`;
//! `a > (b > d, c)` means `d` ran inside `b`. Parentheses appear only where a caller made
//! more than one call, so a chain `a > b > c` is always strict nesting. Calls with no caller
//! among the frames are listed the same way at the top: `(b, c)`. An errno is shown on the
//! deepest call that returned it (not on the callers that passed it up).
//!
//! **Bindings.** Every binding that ends gets an `UNBOUND` line after the operation that ended
//! it (an unbind, a teardown, a disconnect, a removal): the device, the cause, the VM the
//! binding belonged to (also when another VMM's vdevice ended it) and how long it lasted. An
//! unbind with no `UNBOUND` line after it found nothing bound. Unbind and teardown lines name
//! the VM of the binding they act on when their frames do not.
//!
//! **Times** are the events' own: an operation at its start, a leak when the event that
//! showed it returned (a VM check: the VM event's time plus the grace period), a leak's end
//! and an `UNBOUND` line when the unbind returned.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::correlate::{
    AnomalyKind, Frame, Leak, LeakReason, MismatchKind, OpKind, OpResult, Operation, Output,
};
use crate::errno;
use crate::events::{IdeStream, Layer, ProbeId, Vm, VmSelector};

pub use crate::clock::Clock;

/// `850ns`, `12.3us`, `1.2ms`, `3.40s`.
pub fn fmt_duration(ns: u64) -> String {
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.1}us", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.1}ms", ns as f64 / 1e6)
    } else {
        format!("{:.2}s", ns as f64 / 1e9)
    }
}

/// Which lines to print.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// Only this device (BDF).
    pub device: Option<String>,
    /// Only this VM: by VMM pid (`kvm-4242`, `4242`) or name hash (`vm#…`).
    pub vm: Option<VmSelector>,
    /// Only failed operations (leaks are always failures worth seeing).
    pub failures_only: bool,
}

fn vm_matches(filter: &VmSelector, vm: Option<&Vm>) -> bool {
    vm.is_some_and(|vm| filter.matches(vm))
}

impl Filters {
    pub fn matches(&self, out: &Output) -> bool {
        let (device, vm, failure) = match out {
            Output::Operation(op) => (op.device.as_deref(), op.vm.as_ref(), !op.ok()),
            Output::LeakDetected(l) | Output::LeakCleared(l) => {
                (Some(l.device.as_str()), l.vm.as_ref(), true)
            }
            Output::VmEvent(v) => (None, v.vm.as_ref(), false),
            Output::Mismatch(m) => (
                Some(m.device.as_str()),
                m.binding.as_ref().and_then(|b| b.vm.as_ref()),
                true,
            ),
            Output::Anomaly(a) => (a.device.as_deref(), None, true),
            Output::BindingClosed(c) => (
                Some(c.binding.device.as_str()),
                c.binding.vm.as_ref(),
                false,
            ),
            Output::IdeStreamLeaked(l) | Output::IdeStreamLeakCleared(l) => {
                (Some(l.stream.endpoint.as_str()), None, true)
            }
        };
        if let Some(d) = &self.device
            && device != Some(d.as_str())
        {
            return false;
        }
        if let Some(v) = &self.vm
            && !vm_matches(v, vm)
        {
            return false;
        }
        !self.failures_only || failure
    }
}

/// Formats correlator outputs as trace lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceFormatter {
    pub clock: Clock,
}

impl TraceFormatter {
    pub fn new(clock: Clock) -> Self {
        TraceFormatter { clock }
    }

    /// The line for an output, if it has one (anomalies are counted, not printed).
    pub fn format(&self, out: &Output) -> Option<String> {
        match out {
            Output::Operation(op) => Some(self.operation(op)),
            Output::LeakDetected(l) => {
                let mut s = format!(
                    "{} LEAK     {} {}  vm={}",
                    self.clock.format(l.detected_ns),
                    l.device,
                    l.reason.as_str(),
                    opt_vm(l.vm.as_ref())
                );
                if let (Some(c), Some(t)) = (&l.vmm_comm, l.vmm_tgid) {
                    let _ = write!(s, " vmm={c}/{t}");
                }
                if let Some(v) = l.vdevice_id {
                    let _ = write!(s, " vdev={v}");
                }
                if let Some(t) = l.tdi_id {
                    let _ = write!(s, " tdi={t}");
                }
                if let Some(tsm) = &l.tsm {
                    let _ = write!(s, " tsm={tsm}");
                }
                if let Some(since) = l.bound_since_ns {
                    let _ = write!(
                        s,
                        " bound {}",
                        fmt_duration(l.detected_ns.saturating_sub(since))
                    );
                }
                Some(s)
            }
            Output::LeakCleared(l) => {
                let at = l.cleared_ns.unwrap_or(l.detected_ns);
                Some(format!(
                    "{} LEAK-END {} {}  cleared by {} after {}",
                    self.clock.format(at),
                    l.device,
                    l.reason.as_str(),
                    l.cleared_by.map_or("?", |c| c.as_str()),
                    fmt_duration(at.saturating_sub(l.detected_ns))
                ))
            }
            Output::IdeStreamLeaked(l) => Some(format!(
                "{} IDE-LEAK {} {} {}  {}{}{} since {}",
                self.clock.format(l.time_ns),
                l.stream.endpoint,
                l.stream.label(),
                l.reason.as_str(),
                if l.stream.registered {
                    "registered"
                } else {
                    "unregistered"
                },
                if l.stream.ep.enabled || l.stream.rp.enabled {
                    ", enabled"
                } else {
                    ""
                },
                l.stream
                    .stream_id
                    .map_or(String::new(), |id| format!(", stream id {id}")),
                fmt_duration(l.time_ns.saturating_sub(l.stream.since_ns))
            )),
            Output::IdeStreamLeakCleared(l) => Some(format!(
                "{} IDE-LEAK-END {} {} {}  cleared by {}",
                self.clock.format(l.time_ns),
                l.stream.endpoint,
                l.stream.label(),
                l.reason.as_str(),
                l.cleared_by.unwrap_or("?")
            )),
            Output::VmEvent(v) => Some(format!(
                "{} {:<8} vm={} comm={} tgid={} bound_devices={}",
                self.clock.format(v.time_ns),
                match v.event {
                    crate::correlate::VmEventKind::VmDestroyed => "VM-GONE",
                    crate::correlate::VmEventKind::VmmExited => "VMM-EXIT",
                },
                opt_vm(v.vm.as_ref()),
                v.comm,
                v.tgid,
                v.bound_devices
            )),
            Output::Mismatch(m) => Some(format!(
                "{:>15} SYSFS    {} {}",
                "",
                m.device,
                match m.kind {
                    MismatchKind::BoundWithoutOwner => "bound in sysfs, no bind seen",
                    MismatchKind::DeniesBinding =>
                        "unbound in sysfs: missed unbind, binding dropped",
                }
            )),
            Output::Anomaly(_) => None,
            // Every binding that ended gets a line, after the operation that ended it: which
            // device, whose binding (its VM, also when another VM's vdevice ended it), how
            // long it lasted. An unbind followed by no such line found nothing bound.
            Output::BindingClosed(c) => {
                let b = &c.binding;
                let mut s = format!(
                    "{} UNBOUND  {} by {}  vm={}",
                    self.clock.format(c.closed_ns),
                    b.device,
                    c.cause.as_str(),
                    opt_vm(b.vm.as_ref())
                );
                if let Some(t) = b.tdi_id {
                    let _ = write!(s, " tdi={t}");
                }
                if let Some(tsm) = &b.tsm {
                    let _ = write!(s, " tsm={tsm}");
                }
                let _ = write!(
                    s,
                    " bound {}",
                    fmt_duration(c.closed_ns.saturating_sub(b.since_ns))
                );
                Some(s)
            }
        }
    }

    pub fn operation(&self, op: &Operation) -> String {
        let mut s = format!(
            "{} {:<8} {}",
            self.clock.format(op.start_ns),
            op.kind.as_str(),
            op.device.as_deref().unwrap_or("?")
        );
        if let Some(tsm) = &op.tsm {
            let _ = write!(s, " tsm={tsm}");
        }
        if let Some(c) = op.cause
            && op.kind == crate::correlate::OpKind::Disconnect
        {
            let _ = write!(s, " by={}", c.as_str());
        }
        if let Some(g) = &op.guest_request {
            if g.scope.is_some() || g.req_op.is_none() {
                let _ = write!(s, " scope={}", g.scope_label());
            }
            if g.req_op.is_some() {
                let _ = write!(
                    s,
                    " req_op={} tvm_arch={}",
                    crate::correlate::label(g.req_op_name.as_deref(), g.req_op),
                    crate::correlate::label(g.tvm_arch_name.as_deref(), g.tvm_arch)
                );
            }
            if let (Some(i), Some(o)) = (g.in_len, g.out_len) {
                let _ = write!(s, " in={i} out={o}");
            }
            if let Some(r) = g.residue {
                let _ = write!(s, " residue={r}");
            }
            if let Some(c) = g.tsm_code {
                let _ = write!(s, " tsm_code={c:#x}");
            }
        }
        if let Some(v) = op.vdevice_id {
            let _ = write!(s, " vdev={v}");
        }
        // What the caller asked, where it explains a refusal: an `op` that is neither bind
        // nor unbind, non-zero flags.
        if let Some(o) = op.uapi_op
            && o != crate::correlate::UAPI_OP_BIND
            && o != crate::correlate::UAPI_OP_UNBIND
        {
            let _ = write!(s, " op={o}");
        }
        if let Some(f) = op.flags.filter(|f| *f != 0) {
            let _ = write!(s, " flags={f:#x}");
        }
        if let Some(vm) = &op.vm {
            let _ = write!(s, " vm={}", vm.name());
        }
        if let Some(t) = op.tdi_id.or(op.virt_id) {
            let _ = write!(s, " tdi={t}");
        }
        match &op.result {
            OpResult::Ok => s.push_str("  ok"),
            OpResult::Err {
                errno: e,
                layer,
                function,
            } => {
                let _ = write!(
                    s,
                    "  {} from {} ({})",
                    errno::name(*e),
                    layer.as_str(),
                    function.as_str()
                );
            }
        }
        s.push_str("  ");
        // Bind paths cross layers; lifecycle operations stay in PCI TSM and the driver, so
        // name the functions there.
        let lifecycle = matches!(
            op.kind,
            crate::correlate::OpKind::Connect
                | crate::correlate::OpKind::Disconnect
                | crate::correlate::OpKind::GuestRequest
        );
        let tree = CallTree::new(&op.frames);
        tree.render_list(&tree.roots, op, lifecycle, &mut s);
        let _ = write!(s, "  comm={} tgid={}", op.comm, op.tgid);
        if op.tid != op.tgid {
            let _ = write!(s, " tid={}", op.tid);
        }
        s
    }
}

/// Who called whom among an operation's frames (sorted by depth, then start): a frame's
/// caller is the deepest shallower frame whose run contains it.
struct CallTree {
    roots: Vec<usize>,
    children: Vec<Vec<usize>>,
}

impl CallTree {
    fn new(frames: &[Frame]) -> CallTree {
        let depth = |f: &Frame| f.probe.depth();
        let inside = |outer: &Frame, inner: &Frame| {
            let start = if inner.entry_missing {
                inner.end_ns
            } else {
                inner.start_ns
            };
            inner.end_ns <= outer.end_ns && (outer.entry_missing || outer.start_ns <= start)
        };
        let mut roots = Vec::new();
        let mut children = vec![Vec::new(); frames.len()];
        for (i, f) in frames.iter().enumerate() {
            let parent = (0..i)
                .filter(|&j| depth(&frames[j]) < depth(f) && inside(&frames[j], f))
                .max_by_key(|&j| (depth(&frames[j]), frames[j].start_ns));
            match parent {
                Some(j) => children[j].push(i),
                None => roots.push(i),
            }
        }
        CallTree { roots, children }
    }

    /// Does a frame below `i` return `errno`?
    fn below_returns(&self, i: usize, frames: &[Frame], errno: i32) -> bool {
        self.children[i]
            .iter()
            .any(|&c| frames[c].errno == Some(errno) || self.below_returns(c, frames, errno))
    }

    fn render_list(&self, list: &[usize], op: &Operation, lifecycle: bool, s: &mut String) {
        if list.len() > 1 {
            s.push('(');
        }
        for (n, &i) in list.iter().enumerate() {
            if n > 0 {
                s.push_str(", ");
            }
            self.render(i, op, lifecycle, s);
        }
        if list.len() > 1 {
            s.push(')');
        }
    }

    fn render(&self, i: usize, op: &Operation, lifecycle: bool, s: &mut String) {
        let f = &op.frames[i];
        s.push_str(if lifecycle {
            f.probe.as_str()
        } else {
            f.layer.as_str()
        });
        if let Some(ide) = &f.ide {
            s.push_str(&ide_label(f.device.as_deref(), ide));
        }
        s.push(' ');
        if f.entry_missing {
            s.push('?');
        } else {
            s.push_str(&fmt_duration(f.duration_ns));
        }
        // The errno where it appears: on the deepest call returning it, not repeated on
        // the callers that passed it up.
        if let Some(e) = f.errno
            && !self.below_returns(i, &op.frames, e)
        {
            s.push(' ');
            s.push_str(&errno::name(e));
        }
        if f.null_return {
            s.push_str(" NULL");
        }
        if !self.children[i].is_empty() {
            s.push_str(" > ");
            self.render_list(&self.children[i], op, lifecycle, s);
        }
    }
}

/// An IDE step's port and stream: `[stream0.0.0 id=0]` on the endpoint, `[rp
/// 0000:00:06.0 stream0.0.0 id=0]` on its root port; `0.0.0` (`<H>.<R>.<E>`) before the
/// stream has its sysfs name; `?` what could not be read.
fn ide_label(device: Option<&str>, ide: &IdeStream) -> String {
    let port = match (device, ide.endpoint.as_deref()) {
        (Some(d), Some(ep)) if d == ep => String::new(),
        (Some(d), Some(_)) => format!("rp {d} "),
        (Some(d), None) => format!("{d} "),
        (None, _) => "? ".into(),
    };
    let id = match ide.stream_id {
        Some(id) if id >= 0 => format!(" id={id}"),
        Some(_) => String::new(),
        None => " id=?".into(),
    };
    format!("[{port}{}{id}]", ide.label())
}

fn opt_vm(vm: Option<&Vm>) -> String {
    vm.map(Vm::name).unwrap_or_else(|| "?".into())
}

/// A log2 histogram of microseconds, printed like bpftrace's `hist()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log2Hist {
    /// Bucket i holds values in `[2^(i-1), 2^i)`; bucket 0 holds 0.
    buckets: [u64; 65],
    count: u64,
    sum: u128,
    max: u64,
}

impl Default for Log2Hist {
    fn default() -> Self {
        Log2Hist {
            buckets: [0; 65],
            count: 0,
            sum: 0,
            max: 0,
        }
    }
}

impl Log2Hist {
    pub fn add(&mut self, v: u64) {
        let i = if v == 0 {
            0
        } else {
            64 - v.leading_zeros() as usize
        };
        self.buckets[i] += 1;
        self.count += 1;
        self.sum += u128::from(v);
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn render(&self, out: &mut String) {
        let Some(lo) = self.buckets.iter().position(|&c| c > 0) else {
            return;
        };
        let hi = self.buckets.iter().rposition(|&c| c > 0).unwrap_or(lo);
        let peak = self.buckets[lo..=hi]
            .iter()
            .copied()
            .max()
            .unwrap_or(1)
            .max(1);
        for i in lo..=hi {
            let c = self.buckets[i];
            let range = if i == 0 {
                "[0]".to_string()
            } else if i == 1 {
                "[1]".to_string()
            } else {
                format!("[{}, {})", si(1u64 << (i - 1)), si_upper(i))
            };
            let bar = c.saturating_mul(52).div_ceil(peak) as usize;
            let _ = writeln!(out, "{range:<20}{c:>8} |{:<52}|", "@".repeat(bar));
        }
    }
}

fn si_upper(i: usize) -> String {
    if i >= 64 { "inf".into() } else { si(1u64 << i) }
}

/// 1024 → `1K`, as bpftrace prints bucket bounds.
fn si(v: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    for (n, u) in UNITS {
        if v >= n && v.is_multiple_of(n) {
            return format!("{}{u}", v / n);
        }
    }
    v.to_string()
}

const SUMMARY_LEAKS: usize = 100;

/// Accumulates outputs and prints a summary at exit.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    latency_us: BTreeMap<OpKind, Log2Hist>,
    ops: BTreeMap<(OpKind, bool), u64>,
    errors: BTreeMap<(String, Layer, ProbeId, OpKind), u64>,
    leaks_detected: BTreeMap<LeakReason, u64>,
    leaks_cleared: u64,
    /// The first leaks detected (bounded), as trace lines.
    leak_lines: Vec<String>,
    anomalies: BTreeMap<AnomalyKind, u64>,
    mismatches: BTreeMap<MismatchKind, u64>,
    /// Bindings ended, by cause.
    closed: BTreeMap<&'static str, u64>,
    /// IDE stream leaks detected and cleared, and the first leak lines (bounded).
    ide_leaks: (u64, u64),
    ide_leak_lines: Vec<String>,
    /// Events lost, by reason, as the loss records said.
    lost: BTreeMap<&'static str, u64>,
    /// Operations still running at the end: how many, and each (bounded).
    in_flight: Option<(usize, String)>,
}

/// The kernel's exact operation counts (`OP_COUNTS`, what `run` serves as
/// `tsm_trace_operations_total`): the summary's totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    /// By kind and ok.
    pub ops: BTreeMap<(OpKind, bool), u64>,
    /// The lines were filtered (`--device`, `--vm`, `--failed`): the counts are not.
    pub filtered: bool,
}

impl Counted {
    pub fn from_kernel(k: &crate::aggregates::Aggregates, filtered: bool) -> Self {
        let mut ops = BTreeMap::new();
        for (&(kind, _layer, errno), &n) in &k.counts {
            *ops.entry((kind, errno == 0)).or_default() += n;
        }
        Counted { ops, filtered }
    }

    fn get(&self, kind: OpKind, ok: bool) -> u64 {
        self.ops.get(&(kind, ok)).copied().unwrap_or(0)
    }
}

/// `a of b <what> shown`, or, should the lines show more than the kernel counted (its counts
/// leave out operations whose outer return it never saw), both numbers as they are.
fn of(a: u64, b: u64, what: &str) -> String {
    if a <= b {
        format!("{a} of {b} {what} shown")
    } else {
        format!("{a} {what} shown, the kernel counted {b}")
    }
}

impl Summary {
    pub fn add(&mut self, out: &Output, fmt: &TraceFormatter) {
        match out {
            Output::Operation(op) => {
                if op.frames.first().is_some_and(|f| !f.entry_missing) {
                    self.latency_us
                        .entry(op.kind)
                        .or_default()
                        .add(op.end_ns.saturating_sub(op.start_ns) / 1_000);
                }
                *self.ops.entry((op.kind, op.ok())).or_default() += 1;
                if let OpResult::Err {
                    errno: e,
                    layer,
                    function,
                } = &op.result
                {
                    *self
                        .errors
                        .entry((errno::name(*e), *layer, *function, op.kind))
                        .or_default() += 1;
                }
            }
            Output::LeakDetected(l) => {
                *self.leaks_detected.entry(l.reason).or_default() += 1;
                if self.leak_lines.len() < SUMMARY_LEAKS
                    && let Some(line) = fmt.format(out)
                {
                    self.leak_lines.push(line);
                }
            }
            Output::LeakCleared(_) => self.leaks_cleared += 1,
            Output::Anomaly(a) => *self.anomalies.entry(a.kind).or_default() += 1,
            Output::Mismatch(m) => *self.mismatches.entry(m.kind).or_default() += 1,
            Output::VmEvent(_) => {}
            Output::BindingClosed(c) => *self.closed.entry(c.cause.as_str()).or_default() += 1,
            Output::IdeStreamLeaked(_) => {
                self.ide_leaks.0 += 1;
                if self.ide_leak_lines.len() < SUMMARY_LEAKS
                    && let Some(line) = fmt.format(out)
                {
                    self.ide_leak_lines.push(line);
                }
            }
            Output::IdeStreamLeakCleared(_) => self.ide_leaks.1 += 1,
        }
    }

    /// Operations still running when the summary is made (`in_flight.rs`).
    pub fn set_in_flight(&mut self, total: usize, what: String) {
        self.in_flight = Some((total, what));
    }

    /// A loss record written to the stream.
    pub fn add_lost(&mut self, l: &super::loss::Lost) {
        *self.lost.entry(l.reason).or_default() += l.count;
    }

    /// The first line's totals: what the lines showed, and with the kernel's counts how many
    /// of the operations it counted that is.
    pub fn headline(&self, counted: Option<&Counted>) -> String {
        let (shown, failed) = (self.operations(), self.failures());
        let Some(c) = counted else {
            return format!("{shown} operations, {failed} failed");
        };
        let total: u64 = c.ops.values().sum();
        let kfailed: u64 = OpKind::ALL.iter().map(|&k| c.get(k, false)).sum();
        if c.filtered {
            return format!(
                "{shown} operations shown, {failed} failed (filtered; the kernel counted {total}, {kfailed} failed, in all)"
            );
        }
        let mut s = of(shown, total, "operations");
        if total > shown {
            let _ = write!(
                s,
                " ({} not shown: their events were lost, see the LOST lines)",
                total - shown
            );
        }
        let _ = write!(s, "; {}", of(failed, kfailed, "failed"));
        s
    }

    pub fn operations(&self) -> u64 {
        self.ops.values().sum()
    }

    pub fn failures(&self) -> u64 {
        self.ops
            .iter()
            .filter(|((_, ok), _)| !ok)
            .map(|(_, n)| n)
            .sum()
    }

    /// The summary text. `still_leaked` lists leaks open at the end (one per device and
    /// reason); `fmt` prints them.
    pub fn render(&self, still_leaked: &[&Leak], fmt: &TraceFormatter) -> String {
        self.render_counted(still_leaked, fmt, None)
    }

    /// [`Summary::render`], its totals from the kernel's exact counts where there are some.
    pub fn render_counted(
        &self,
        still_leaked: &[&Leak],
        fmt: &TraceFormatter,
        counted: Option<&Counted>,
    ) -> String {
        let mut s = String::new();
        let _ = write!(s, "\n=== tsm-trace summary: {}", self.headline(counted));
        match &self.in_flight {
            Some((n, what)) if *n > 0 => {
                let _ = writeln!(s, ", {n} still in flight ===\nstill in flight: {what}");
            }
            _ => {
                let _ = writeln!(s, " ===");
            }
        }
        for kind in OpKind::ALL {
            let ok = self.ops.get(&(kind, true)).copied().unwrap_or(0);
            let err = self.ops.get(&(kind, false)).copied().unwrap_or(0);
            let (kok, kerr) =
                counted.map_or((ok, err), |c| (c.get(kind, true), c.get(kind, false)));
            if ok + err + kok + kerr == 0 {
                continue;
            }
            if (ok, err) == (kok, kerr) {
                let _ = writeln!(s, "\n@{}_us: ({ok} ok, {err} failed)", kind.as_str());
            } else {
                let _ = writeln!(
                    s,
                    "\n@{}_us: ({ok} ok, {err} failed shown; the kernel counted {kok} ok, {kerr} failed)",
                    kind.as_str()
                );
            }
            if let Some(h) = self.latency_us.get(&kind) {
                h.render(&mut s);
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(s, "\nerrors by errno and layer:");
            let mut rows: Vec<_> = self.errors.iter().collect();
            rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            // Columns as wide as their longest entry (`pci_tsm_unbind_any`, `EOPNOTSUPP`).
            let (mut ew, mut lw, mut fw) = (0, 0, 0);
            for ((e, layer, function, _), _) in &rows {
                ew = ew.max(e.len());
                lw = lw.max(layer.as_str().len());
                fw = fw.max(function.as_str().len());
            }
            for ((e, layer, function, kind), n) in rows {
                let _ = writeln!(
                    s,
                    "  {n:>8}  {e:<ew$} {:<lw$} {:<fw$} ({})",
                    layer.as_str(),
                    function.as_str(),
                    kind.as_str()
                );
            }
        }
        let detected: u64 = self.leaks_detected.values().sum();
        let unconfirmed = self
            .anomalies
            .get(&AnomalyKind::LeakUnconfirmed)
            .copied()
            .unwrap_or(0);
        if detected > 0 || !still_leaked.is_empty() || unconfirmed > 0 {
            // A leak is one device for one reason: a device can leak for two reasons.
            let devices: std::collections::BTreeSet<&str> =
                still_leaked.iter().map(|l| l.device.as_str()).collect();
            let _ = writeln!(
                s,
                "\nleaks (one per device and reason): {detected} detected, {} cleared, \
                 {} still leaked, on {} device{}",
                self.leaks_cleared,
                still_leaked.len(),
                devices.len(),
                if devices.len() == 1 { "" } else { "s" }
            );
            for (r, n) in &self.leaks_detected {
                let _ = writeln!(s, "  {n:>8}  {}", r.as_str());
            }
            for l in still_leaked {
                if let Some(line) = fmt.format(&Output::LeakDetected((*l).clone())) {
                    let _ = writeln!(s, "  {line}");
                }
            }
            if unconfirmed > 0 {
                let _ = writeln!(
                    s,
                    "  {unconfirmed:>8} binding{} not judged: the input ended before their grace \
                     period ({})",
                    if unconfirmed == 1 { "" } else { "s" },
                    AnomalyKind::LeakUnconfirmed.as_str()
                );
            }
        }
        if self.ide_leaks.0 > 0 {
            let _ = writeln!(
                s,
                "\nIDE streams leaked (left registered or enabled after their endpoint's \
                 disconnect): {} detected, {} cleared",
                self.ide_leaks.0, self.ide_leaks.1
            );
            for line in &self.ide_leak_lines {
                let _ = writeln!(s, "  {line}");
            }
        }
        if !self.closed.is_empty() {
            let _ = writeln!(s, "\nbindings ended, by cause:");
            for (c, n) in &self.closed {
                let _ = writeln!(s, "  {n:>8}  {c}");
            }
        }
        if !self.mismatches.is_empty() {
            let _ = writeln!(s, "\nsysfs mismatches:");
            for (k, n) in &self.mismatches {
                let _ = writeln!(s, "  {n:>8}  {}", k.as_str());
            }
        }
        if !self.lost.is_empty() {
            let _ = writeln!(s, "\nevents lost (the LOST lines), by reason:");
            for (r, n) in &self.lost {
                let _ = writeln!(s, "  {n:>8}  {r}");
            }
        }
        if !self.anomalies.is_empty() {
            let _ = writeln!(s, "\ncorrelation anomalies:");
            for (k, n) in &self.anomalies {
                let _ = writeln!(s, "  {n:>8}  {}", k.as_str());
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ide_steps_name_their_port_and_stream() {
        let mut ide = IdeStream {
            endpoint: Some("0000:01:00.0".into()),
            stream_id: Some(0),
            host_bridge_stream: Some(0),
            rp_index: Some(1),
            ep_index: Some(2),
            name: None,
            unnamed: true,
        };
        assert_eq!(
            ide_label(Some("0000:00:06.0"), &ide),
            "[rp 0000:00:06.0 0.1.2 id=0]"
        );
        ide.name = Some("stream0.1.2".into());
        assert_eq!(ide_label(Some("0000:01:00.0"), &ide), "[stream0.1.2 id=0]");
        // Not assigned yet (alloc), and unreadable.
        ide.stream_id = Some(-1);
        assert_eq!(ide_label(Some("0000:01:00.0"), &ide), "[stream0.1.2]");
        ide.stream_id = None;
        ide.rp_index = None;
        ide.name = None;
        assert_eq!(ide_label(None, &ide), "[? 0.?.2 id=?]");
    }

    #[test]
    fn clocks() {
        let c = Clock::Relative { base_ns: 1_000 };
        assert_eq!(c.format(1_500_001_000), "    1.500000");
        let w = Clock::Wall {
            offset_ns: 0,
            utc_offset_s: 3600,
        };
        // 22:31:05.123456 UTC-1h → 23:31:05 local.
        let t = (22 * 3600 + 31 * 60 + 5) * 1_000_000_000 + 123_456_789;
        assert_eq!(w.format(t), "23:31:05.123456");
        // wall_now must not panic and must give HH:MM:SS.ffffff.
        let s = Clock::wall_now().format(0);
        assert_eq!(s.len(), 15, "{s}");
    }

    #[test]
    fn summary_totals_come_from_the_kernel_counts_when_there_are_some() {
        let mut s = Summary::default();
        s.ops.insert((OpKind::Bind, true), 5_605);
        s.ops.insert((OpKind::Unbind, true), 5_605);
        let kernel = |bind_ok, bind_err, unbind_ok, filtered| Counted {
            ops: [
                ((OpKind::Bind, true), bind_ok),
                ((OpKind::Bind, false), bind_err),
                ((OpKind::Unbind, true), unbind_ok),
            ]
            .into(),
            filtered,
        };
        // Without the kernel's counts (replay): what the lines showed, as before.
        assert_eq!(s.headline(None), "11210 operations, 0 failed");
        // The issue's storm: never "11210 operations" when the kernel counted 40000.
        let k = kernel(20_000, 0, 20_000, false);
        assert_eq!(
            s.headline(Some(&k)),
            "11210 of 40000 operations shown (28790 not shown: their events were lost, see the LOST lines); 0 of 0 failed shown"
        );
        let fmt = TraceFormatter::new(Clock::Relative { base_ns: 0 });
        let text = s.render_counted(&[], &fmt, Some(&k));
        assert!(
            text.contains(
                "@bind_us: (5605 ok, 0 failed shown; the kernel counted 20000 ok, 0 failed)"
            ),
            "{text}"
        );
        // Nothing lost: both agree, no gap claimed.
        let all = kernel(5_605, 0, 5_605, false);
        assert_eq!(
            s.headline(Some(&all)),
            "11210 of 11210 operations shown; 0 of 0 failed shown"
        );
        assert!(
            s.render_counted(&[], &fmt, Some(&all))
                .contains("@bind_us: (5605 ok, 0 failed)\n")
        );
        // More shown than counted (operations whose outer return the kernel never saw are
        // left out of its counts): both numbers, no negative gap.
        let fewer = kernel(5_000, 2, 5_605, false);
        assert_eq!(
            s.headline(Some(&fewer)),
            "11210 operations shown, the kernel counted 10607; 0 of 2 failed shown"
        );
        // Filtered lines are not compared with unfiltered counts.
        assert_eq!(
            s.headline(Some(&kernel(20_000, 3, 20_000, true))),
            "11210 operations shown, 0 failed (filtered; the kernel counted 40003, 3 failed, in all)"
        );
        // Loss records are summed by reason.
        s.add_lost(&super::super::loss::Lost {
            count: 7,
            reason: "ringbuf_full",
            time_ns: None,
        });
        s.add_lost(&super::super::loss::Lost {
            count: 3,
            reason: "ringbuf_full",
            time_ns: Some(1),
        });
        let text = s.render(&[], &fmt);
        assert!(
            text.contains("events lost (the LOST lines), by reason:\n        10  ringbuf_full\n"),
            "{text}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(fmt_duration(850), "850ns");
        assert_eq!(fmt_duration(12_300), "12.3us");
        assert_eq!(fmt_duration(1_200_000), "1.2ms");
        assert_eq!(fmt_duration(3_400_000_000), "3.40s");
    }

    #[test]
    fn errors_table_columns_line_up_for_the_longest_names() {
        let mut sum = Summary::default();
        for (e, layer, probe, kind, n) in [
            ("EBUSY", Layer::TsmCore, ProbeId::TsmBind, OpKind::Bind, 3),
            (
                "EOPNOTSUPP",
                Layer::TsmDriver,
                ProbeId::DriverGuestReq,
                OpKind::Bind,
                2,
            ),
            (
                "EIO",
                Layer::PciTsm,
                ProbeId::PciTsmDisconnect,
                OpKind::Disconnect,
                1,
            ),
        ] {
            sum.errors.insert((e.to_string(), layer, probe, kind), n);
        }
        let text = sum.render(&[], &TraceFormatter::new(Clock::Relative { base_ns: 0 }));
        let table: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("errors by errno"))
            .skip(1)
            .take(3)
            .collect();
        assert_eq!(table.len(), 3, "{text}");
        // The layer, function and operation columns each start at one offset.
        let starts = |l: &str| -> Vec<usize> {
            let b = l.as_bytes();
            (1..b.len())
                .filter(|&i| b[i] != b' ' && b[i - 1] == b' ')
                .collect()
        };
        let first = starts(table[0]);
        assert_eq!(first.len(), 5, "{table:#?}");
        for l in &table {
            assert_eq!(starts(l), first, "{table:#?}");
        }
    }

    #[test]
    fn log2_hist_like_bpftrace() {
        let mut h = Log2Hist::default();
        for v in [0, 1, 3, 700, 900, 1500] {
            h.add(v);
        }
        let mut s = String::new();
        h.render(&mut s);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().take(2).collect::<Vec<_>>(),
            ["[0]", "1"]
        );
        assert!(s.contains("[512, 1K)"), "{s}");
        assert!(s.contains("[1K, 2K)"), "{s}");
        // The fullest bucket gets the full 52-character bar.
        let full = lines.iter().find(|l| l.starts_with("[512, 1K)")).unwrap();
        assert!(full.contains(&format!("|{}|", "@".repeat(52))), "{full}");
        // Empty buckets in between are printed (continuous scale), none beyond the last.
        assert!(lines.last().unwrap().starts_with("[1K, 2K)"));
        assert_eq!(h.count(), 6);
    }
}
