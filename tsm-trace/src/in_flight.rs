//! Operations in flight: the kernel-side entries the probes park until their return
//! (`INFLIGHT`), one operation per thread (its outermost call; the deepest one says where it
//! is now). A bind stuck in firmware shows here while it runs: in `/bindings`, in
//! `tsm_trace_operations_in_flight` and `tsm_trace_operation_in_flight_oldest_seconds`, in
//! `trace`'s summary and in a periodic log line.
//!
//! Ages come from the kernel's entry timestamp (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) against
//! CLOCK_MONOTONIC at the moment they are shown: never from when tsm-trace read the map.
//! Memory is bounded: the map holds at most its own capacity, and at most [`MAX_SHOWN`]
//! operations (the oldest) are kept; the count covers them all.

use std::time::Duration;

use serde::Serialize;
use tsm_trace_common::{InflightKey, ProbeId, RawEvent, aggregates, missing};

use crate::correlate::OpKind;

/// At most this many operations are kept and shown (the oldest first).
pub const MAX_SHOWN: usize = 32;

/// One operation still running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InFlightOp {
    /// bind, unbind, connect, ... as the outermost call (and the ioctl's op) tells;
    /// `unknown` when it cannot yet (an ioctl whose op was unreadable).
    pub op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The VM, by its `kvm->stats_id` (`kvm-<pid>`), where a frame read one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// The deepest call in flight (where the operation is now) and the outermost one.
    pub function: ProbeId,
    pub outer: ProbeId,
    pub tgid: u32,
    pub tid: u32,
    pub comm: String,
    /// CLOCK_MONOTONIC ns at the outermost call's entry, as the kernel stamped it.
    pub start_ns: u64,
}

impl InFlightOp {
    /// Seconds since the kernel entered the operation, at `now_ns` (CLOCK_MONOTONIC).
    pub fn age_seconds(&self, now_ns: u64) -> f64 {
        now_ns.saturating_sub(self.start_ns) as f64 / 1e9
    }

    /// `bind 0000:00:02.0 vm=kvm-134 in driver_bind for 8.2s (comm=qemu tid=134)`.
    pub fn describe(&self, now_ns: u64) -> String {
        let mut s = format!("{} {}", self.op, self.device.as_deref().unwrap_or("?"));
        if let Some(vm) = &self.vm {
            s.push_str(&format!(" vm={vm}"));
        }
        s.push_str(&format!(
            " in {} for {:.1}s (comm={} tid={})",
            self.function.as_str(),
            self.age_seconds(now_ns),
            self.comm,
            self.tid
        ));
        s
    }
}

impl InFlightOp {
    /// [`InFlightOp::describe`], with the thread's kernel stack if `stack`.
    pub fn describe_with(&self, now_ns: u64, stack: bool) -> String {
        let mut d = self.describe(now_ns);
        if stack {
            match kernel_stack(self.tgid, self.tid) {
                Ok(st) => d.push_str(&format!(", kernel stack: {}", st.join(" < "))),
                Err(e) => d.push_str(&format!(", no kernel stack ({e})")),
            }
        }
        d
    }
}

/// What is in flight, from one read of the kernel's entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    /// Operations (threads) in flight, all of them.
    pub total: usize,
    /// The oldest [`MAX_SHOWN`], oldest first.
    pub ops: Vec<InFlightOp>,
}

fn cstr(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    (end > 0).then(|| String::from_utf8_lossy(&b[..end]).into_owned())
}

impl InFlight {
    /// Groups parked entries by thread. A slot whose start time is 0 is free (its call
    /// returned; the thread's next call of that function reuses it) or being written this
    /// instant (the entry program stamps it last): not in flight.
    pub fn from_entries(entries: impl IntoIterator<Item = (InflightKey, RawEvent)>) -> InFlight {
        let mut by_thread: std::collections::BTreeMap<u64, Vec<RawEvent>> = Default::default();
        for (key, ev) in entries {
            if ev.start_ns == 0 || ProbeId::from_u32(key.probe).is_none() {
                continue;
            }
            by_thread.entry(key.pid_tgid).or_default().push(ev);
        }
        let total = by_thread.len();
        let mut ops: Vec<InFlightOp> = by_thread
            .into_iter()
            .filter_map(|(pid_tgid, mut frames)| {
                frames
                    .sort_by_key(|e| (ProbeId::from_u32(e.probe).map(ProbeId::depth), e.start_ns));
                let outer = frames.first()?;
                let deepest = frames.last()?;
                let outer_probe = ProbeId::from_u32(outer.probe)?;
                let device = frames
                    .iter()
                    .filter(|e| e.missing & missing::DEV_NAME == 0)
                    .find_map(|e| cstr(&e.dev_name));
                let vm = frames
                    .iter()
                    .filter(|e| e.kvm != 0 && e.missing & missing::KVM_STATS_ID == 0)
                    .find_map(|e| cstr(&e.kvm_stats_id));
                let op = (outer_probe == ProbeId::TsmOpIoctl && outer.missing & missing::OP == 0)
                    .then_some(outer.op);
                let mut kind = aggregates::outer_kind(outer_probe, op);
                if kind == aggregates::OP_UNDECIDED {
                    kind = frames
                        .iter()
                        .filter_map(|e| ProbeId::from_u32(e.probe))
                        .map(aggregates::inferred_kind)
                        .find(|k| *k != aggregates::OP_UNDECIDED)
                        .unwrap_or(aggregates::OP_UNDECIDED);
                }
                Some(InFlightOp {
                    op: OpKind::ALL
                        .get(kind as usize)
                        .map_or("unknown", |k| k.as_str()),
                    device,
                    vm,
                    function: ProbeId::from_u32(deepest.probe)?,
                    outer: outer_probe,
                    tgid: (pid_tgid >> 32) as u32,
                    tid: pid_tgid as u32,
                    comm: cstr(&outer.comm).unwrap_or_default(),
                    start_ns: outer.start_ns,
                })
            })
            .collect();
        ops.sort_by_key(|o| o.start_ns);
        ops.truncate(MAX_SHOWN);
        InFlight { total, ops }
    }

    /// The oldest operation's age at `now_ns`, 0 when nothing is in flight.
    pub fn oldest_seconds(&self, now_ns: u64) -> f64 {
        self.ops.first().map_or(0.0, |o| o.age_seconds(now_ns))
    }

    /// A call returned (an event of thread `tid`, probe `probe`, entered at `start_ns`): the
    /// operation it was the outermost call of is over, before the next read shows it.
    pub fn returned(&mut self, tid: u32, probe: ProbeId, start_ns: u64) {
        let before = self.ops.len();
        self.ops
            .retain(|o| !(o.tid == tid && o.outer == probe && o.start_ns == start_ns));
        self.total = self.total.saturating_sub(before - self.ops.len());
    }

    /// `N operations in flight: a; b; …` for the summary and the log.
    pub fn describe(&self, now_ns: u64) -> String {
        self.describe_with(now_ns, false)
    }

    /// [`InFlight::describe`], with each thread's kernel stack if `stacks`.
    pub fn describe_with(&self, now_ns: u64, stacks: bool) -> String {
        let mut parts: Vec<String> = self
            .ops
            .iter()
            .map(|o| o.describe_with(now_ns, stacks))
            .collect();
        if self.total > self.ops.len() {
            parts.push(format!("and {} more", self.total - self.ops.len()));
        }
        parts.join("; ")
    }
}

/// One operation for `/bindings`: with its age and its start as wall-clock time.
#[derive(Clone, Debug, Serialize)]
pub struct InFlightView {
    #[serde(flatten)]
    pub op: InFlightOp,
    pub age_seconds: f64,
    pub start_time: String,
}

impl InFlight {
    pub fn view(&self, now_ns: u64) -> Vec<InFlightView> {
        let off = crate::clock::realtime_offset_ns();
        self.ops
            .iter()
            .map(|o| InFlightView {
                age_seconds: o.age_seconds(now_ns),
                start_time: crate::clock::rfc3339(o.start_ns, off),
                op: o.clone(),
            })
            .collect()
    }
}

/// When to say that something is stuck: once an operation is older than `after`, then
/// again every `after` while one still is.
#[derive(Debug)]
pub struct StuckLog {
    pub after: Duration,
    last_ns: Option<u64>,
    /// Add each stuck thread's kernel stack (`trace --deep`, `--stuck-stacks`).
    stacks: bool,
}

/// The kernel stack of a thread where it is now, innermost first (`/proc/<tgid>/task/<tid>/stack`:
/// root only, kernels with CONFIG_STACKTRACE), or why not. The kernel prints no addresses
/// there (`[<0>]`); only the `function+0xoff/0xsize` parts are kept.
pub fn kernel_stack(tgid: u32, tid: u32) -> Result<Vec<String>, String> {
    let path = format!("/proc/{tgid}/task/{tid}/stack");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    Ok(parse_stack(&text))
}

fn parse_stack(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let f = l.trim();
            let f = match f.split_once("] ") {
                Some((_, rest)) if f.starts_with("[<") => rest,
                _ => f,
            };
            (!f.is_empty()).then(|| f.to_string())
        })
        .collect()
}

impl StuckLog {
    pub fn new(after: Duration) -> StuckLog {
        StuckLog {
            after,
            last_ns: None,
            stacks: false,
        }
    }

    /// Each stuck thread's kernel stack with it.
    pub fn with_stacks(mut self, on: bool) -> StuckLog {
        self.stacks = on;
        self
    }

    /// The line to log now, if any.
    pub fn line(&mut self, f: &InFlight, now_ns: u64) -> Option<String> {
        let after_ns = u64::try_from(self.after.as_nanos()).unwrap_or(u64::MAX);
        let stuck: Vec<&InFlightOp> = f
            .ops
            .iter()
            .filter(|o| now_ns.saturating_sub(o.start_ns) >= after_ns)
            .collect();
        if after_ns == 0 || stuck.is_empty() {
            self.last_ns = None;
            return None;
        }
        if self
            .last_ns
            .is_some_and(|t| now_ns.saturating_sub(t) < after_ns)
        {
            return None;
        }
        self.last_ns = Some(now_ns);
        Some(format!(
            "{} operation(s) in flight longer than {:?}: {}",
            stuck.len(),
            self.after,
            stuck
                .iter()
                .map(|o| o.describe_with(now_ns, self.stacks))
                .collect::<Vec<_>>()
                .join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stacks_keep_the_functions_only() {
        let t = "[<0>] msleep+0x2b/0x40\n[<0>] linktsm_bind+0x61/0x1a0 [tsm_linktsm]\n\n";
        assert_eq!(
            parse_stack(t),
            ["msleep+0x2b/0x40", "linktsm_bind+0x61/0x1a0 [tsm_linktsm]"]
        );
    }

    fn entry(tid: u32, probe: ProbeId, start_ns: u64, dev: &str) -> (InflightKey, RawEvent) {
        let mut ev = RawEvent::zeroed();
        ev.probe = probe as u32;
        ev.pid_tgid = (100u64 << 32) | u64::from(tid);
        ev.start_ns = start_ns;
        ev.dev_name[..dev.len()].copy_from_slice(dev.as_bytes());
        if dev.is_empty() {
            ev.missing |= missing::DEV_NAME;
        }
        ev.comm[..4].copy_from_slice(b"qemu");
        let key = InflightKey {
            pid_tgid: ev.pid_tgid,
            probe: probe as u32,
            _pad: 0,
        };
        (key, ev)
    }

    #[test]
    fn one_operation_per_thread_named_by_its_frames() {
        let mut ioctl = entry(7, ProbeId::TsmOpIoctl, 1_000, "");
        ioctl.1.op = aggregates::UAPI_OP_BIND;
        let mut bind = entry(7, ProbeId::TsmBind, 1_100, "0000:00:02.0");
        bind.1.kvm = 0xffff_8880_0000_1000;
        bind.1.kvm_stats_id[..7].copy_from_slice(b"kvm-134");
        let drv = entry(7, ProbeId::DriverBind, 1_300, "0000:00:02.0");
        // Another thread, a connect entered later; and one being parked (start 0).
        let conn = entry(9, ProbeId::Connect, 5_000, "0000:00:04.0");
        let parking = entry(11, ProbeId::Connect, 0, "0000:00:05.0");
        let f = InFlight::from_entries([drv, conn, ioctl, bind, parking]);
        assert_eq!(f.total, 2);
        let o = &f.ops[0];
        assert_eq!(
            (
                o.op,
                o.device.as_deref(),
                o.vm.as_deref(),
                o.function,
                o.outer
            ),
            (
                "bind",
                Some("0000:00:02.0"),
                Some("kvm-134"),
                ProbeId::DriverBind,
                ProbeId::TsmOpIoctl
            )
        );
        assert_eq!(
            (o.tid, o.tgid, o.comm.as_str(), o.start_ns),
            (7, 100, "qemu", 1_000)
        );
        assert_eq!(f.ops[1].op, "connect");
        // Ages from the kernel's entry stamp.
        assert_eq!(f.oldest_seconds(8_000_001_000), 8.0);
        assert!(f.describe(8_000_001_000).starts_with(
            "bind 0000:00:02.0 vm=kvm-134 in driver_bind for 8.0s (comm=qemu tid=7); connect"
        ));
        // The outermost call's return ends it.
        let mut f = f;
        f.returned(7, ProbeId::TsmBind, 1_100);
        assert_eq!(f.total, 2, "an inner return does not end the operation");
        f.returned(7, ProbeId::TsmOpIoctl, 1_000);
        assert_eq!((f.total, f.ops.len()), (1, 1));
        assert_eq!(InFlight::default().oldest_seconds(5), 0.0);
    }

    #[test]
    fn memory_is_bounded_and_the_count_is_not() {
        let entries = (0..100u32).map(|t| entry(t, ProbeId::Connect, 1_000 + u64::from(t), "d"));
        let f = InFlight::from_entries(entries);
        assert_eq!((f.total, f.ops.len()), (100, MAX_SHOWN));
        assert_eq!(f.ops[0].tid, 0, "the oldest are kept");
        assert!(
            f.describe(2_000)
                .ends_with(&format!("and {} more", 100 - MAX_SHOWN))
        );
    }

    #[test]
    fn the_stuck_line_repeats_every_threshold() {
        let f = InFlight::from_entries([entry(7, ProbeId::Connect, 1_000_000_000, "d")]);
        let mut log = StuckLog::new(Duration::from_secs(2));
        assert_eq!(log.line(&f, 2_000_000_000), None, "1 s old: not yet");
        let l = log.line(&f, 3_000_000_000).expect("2 s old");
        assert!(l.contains("connect d in connect for 2.0s"), "{l}");
        assert_eq!(log.line(&f, 4_000_000_000), None, "said a second ago");
        assert!(log.line(&f, 5_000_000_000).is_some());
        assert_eq!(log.line(&InFlight::default(), 6_000_000_000), None);
        // Disabled with 0.
        assert_eq!(StuckLog::new(Duration::ZERO).line(&f, 9_000_000_000), None);
    }
}
