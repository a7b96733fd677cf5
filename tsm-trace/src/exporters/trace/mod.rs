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
//! **Deep calls** (`trace --deep`) follow the operation line, indented, with the origin of a
//! failed operation's errno and the kernel stack there (`deep.rs`).
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

use std::fmt::Write as _;

use crate::correlate::{Frame, MismatchKind, OpResult, Operation, Output};
use crate::errno;
use crate::events::{IdeStream, Vm, VmSelector};

pub use crate::clock::Clock;

mod deep;
mod summary;
pub use summary::{Counted, Log2Hist, Summary};

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
                (Some(&*l.device), l.vm.as_ref(), true)
            }
            Output::VmEvent(v) => (None, v.vm.as_ref(), false),
            Output::Mismatch(m) => (
                Some(&*m.device),
                m.binding.as_ref().and_then(|b| b.vm.as_ref()),
                true,
            ),
            Output::Anomaly(a) => (a.device.as_deref(), None, true),
            Output::BindingClosed(c) => (Some(&*c.binding.device), c.binding.vm.as_ref(), false),
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
                    "  {} from {} ({}){}",
                    errno::name(*e),
                    layer.as_str(),
                    function.as_str(),
                    deep::origin_field(op)
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
        s.push_str(&deep::lines(op));
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
    vm.map_or_else(|| "?".to_string(), |v| v.name().to_string())
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
    fn durations() {
        assert_eq!(fmt_duration(850), "850ns");
        assert_eq!(fmt_duration(12_300), "12.3us");
        assert_eq!(fmt_duration(1_200_000), "1.2ms");
        assert_eq!(fmt_duration(3_400_000_000), "3.40s");
    }
}
