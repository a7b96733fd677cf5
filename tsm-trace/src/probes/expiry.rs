//! Kernel-side entries whose return will never come, found and removed with a counted reason.
//!
//! An entry program parks its record in `INFLIGHT` (and opens an operation in `THREAD_OPS`)
//! until the return program takes it. When the return is never seen — its kretprobe missed
//! (`maxactive` exhausted), the thread died in between, or the programs were replaced — the
//! entry would stay for good (the maps are plain hashes: nothing evicts them), and with it
//! the claim that a bind is still running (reconciliation leaves such devices alone). Every
//! sweep removes:
//! - entries of a thread that no longer exists (`thread_exited`): its return cannot come;
//! - entries older than the in-flight timeout (`timeout`): a return after that, should one
//!   still come, is then counted as an orphan return too.
//!
//! Threads are looked up in `/proc/<tgid>/task/<tid>`, which holds the kernel's (host) ids
//! only in the initial pid namespace: in a container without `hostPID` every thread would
//! look gone, so there only the timeout applies ([`sees_host_threads`]).

use std::path::Path;

use tsm_trace_common::{InflightKey, ProbeId, aggregates::ThreadOp};

/// What one expiry sweep (`Session::expire_stale`) removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// In-flight entries, by probe (`None`: an id this build does not know) and reason.
    pub inflight: Vec<(Option<ProbeId>, ExpiryReason)>,
    /// Operations of exited threads that never returned: left out of the exact counts.
    pub unfinished_operations: u64,
    /// In-flight entries the sweep left in place (their thread runs, their timeout has not
    /// passed): calls still running, or returns that may never come.
    pub still_in_flight: usize,
}

/// Why an entry was removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExpiryReason {
    ThreadExited,
    Timeout,
}

impl ExpiryReason {
    pub const ALL: [ExpiryReason; 2] = [ExpiryReason::ThreadExited, ExpiryReason::Timeout];

    pub const fn as_str(self) -> &'static str {
        match self {
            ExpiryReason::ThreadExited => "thread_exited",
            ExpiryReason::Timeout => "timeout",
        }
    }
}

/// Whether the thread of `pid_tgid` (tgid in the high half, tid in the low) still runs.
pub fn thread_alive(proc_root: &Path, pid_tgid: u64) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    proc_root
        .join(tgid.to_string())
        .join("task")
        .join(tid.to_string())
        .exists()
}

/// The entries to remove from `INFLIGHT`, with the probe and reason of each. `entries` are
/// (key, entry time in `CLOCK_MONOTONIC` ns); `now_ns` on the same clock. A slot whose entry
/// time is 0 is free (its call returned; the thread's next call of that function reuses it)
/// or being written this instant: no call is lost with it, so it is not listed here (a gone
/// thread's free slots: [`free_slots_of_gone_threads`]).
pub fn stale_inflight(
    entries: impl IntoIterator<Item = (InflightKey, u64)>,
    now_ns: u64,
    timeout_ns: u64,
    alive: impl Fn(u64) -> bool,
) -> Vec<(InflightKey, Option<ProbeId>, ExpiryReason)> {
    entries
        .into_iter()
        .filter(|(_, start_ns)| *start_ns != 0)
        .filter_map(|(key, start_ns)| {
            let reason = if !alive(key.pid_tgid) {
                ExpiryReason::ThreadExited
            } else if now_ns.saturating_sub(start_ns) > timeout_ns {
                ExpiryReason::Timeout
            } else {
                return None;
            };
            Some((key, ProbeId::from_u32(key.probe), reason))
        })
        .collect()
}

/// The free `INFLIGHT` slots (entry time 0) of threads that no longer exist: removed without
/// a count, as a thread's slots live until the thread is gone (`probes::stash` in the eBPF
/// crate). Only a gone thread's: a live thread's program may be writing its slot this instant.
pub fn free_slots_of_gone_threads(
    entries: impl IntoIterator<Item = (InflightKey, u64)>,
    alive: impl Fn(u64) -> bool,
) -> Vec<InflightKey> {
    entries
        .into_iter()
        .filter(|(key, start_ns)| *start_ns == 0 && !alive(key.pid_tgid))
        .map(|(key, _)| key)
        .collect()
}

/// The `THREAD_OPS` entries to remove (threads that no longer exist: a thread's entry stays
/// between its operations), each with whether it had an operation open: an operation the
/// exact counts will never see.
pub fn stale_thread_ops(
    entries: impl IntoIterator<Item = (u64, ThreadOp)>,
    alive: impl Fn(u64) -> bool,
) -> Vec<(u64, bool)> {
    entries
        .into_iter()
        .filter(|(pid_tgid, _)| !alive(*pid_tgid))
        .map(|(pid_tgid, op)| (pid_tgid, op.depth > 0))
        .collect()
}

/// Whether `/proc` shows the host's thread ids: this process is in the initial pid namespace
/// (`NSpid` of `/proc/self/status` has one id; several mean a nested namespace).
pub fn sees_host_threads(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .is_some_and(|ids| ids.split_whitespace().count() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tid: u32, probe: ProbeId) -> InflightKey {
        InflightKey {
            pid_tgid: (100u64 << 32) | u64::from(tid),
            probe: probe as u32,
            _pad: 0,
        }
    }

    #[test]
    fn exited_threads_and_old_entries_expire_the_rest_stay() {
        let alive = |pt: u64| pt as u32 != 7;
        let s = stale_inflight(
            [
                (key(7, ProbeId::DriverBind), 990),     // thread gone
                (key(8, ProbeId::TsmBind), 100),        // too old
                (key(9, ProbeId::PciTsmBind), 950),     // running
                (key(9, ProbeId::TsmBind), 1000 - 100), // exactly at the timeout: stays
                (key(9, ProbeId::DriverBind), 0),       // a free slot (or being written)
                (key(7, ProbeId::PciTsmBind), 0),       // a free slot of a gone thread
            ],
            1000,
            100,
            alive,
        );
        assert_eq!(
            s.iter()
                .map(|(k, p, r)| (k.pid_tgid as u32, *p, *r))
                .collect::<Vec<_>>(),
            vec![
                (7, Some(ProbeId::DriverBind), ExpiryReason::ThreadExited),
                (8, Some(ProbeId::TsmBind), ExpiryReason::Timeout),
            ]
        );
    }

    #[test]
    fn a_gone_threads_free_slots_go_without_a_count_a_live_threads_stay() {
        let alive = |pt: u64| pt as u32 != 7;
        let free = free_slots_of_gone_threads(
            [
                (key(7, ProbeId::PciTsmBind), 0),   // free, thread gone
                (key(7, ProbeId::DriverBind), 990), // in flight, thread gone: expired, counted
                (key(9, ProbeId::TsmBind), 0),      // free, thread runs: may be written now
            ],
            alive,
        );
        assert_eq!(free, vec![key(7, ProbeId::PciTsmBind)]);
    }

    #[test]
    fn an_unknown_probe_id_still_expires() {
        let mut k = key(7, ProbeId::TsmBind);
        k.probe = 999;
        let s = stale_inflight([(k, 1)], 1, 100, |_| false);
        assert_eq!(s[0].1, None);
    }

    #[test]
    fn only_gone_threads_with_an_open_operation_count_as_unfinished() {
        let open = ThreadOp {
            depth: 2,
            ..ThreadOp::default()
        };
        let gone = stale_thread_ops([(1, open), (2, ThreadOp::default()), (3, open)], |pt| {
            pt == 3
        });
        assert_eq!(gone.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(gone.iter().filter(|(_, open)| *open).count(), 1);
    }

    #[test]
    fn a_nested_pid_namespace_hides_host_threads() {
        assert!(sees_host_threads("Name:\tx\nNSpid:\t4242\n"));
        assert!(!sees_host_threads("NSpid:\t4242\t7\n"));
        // No NSpid line (kernels before 4.1): cannot tell, so not trusted.
        assert!(!sees_host_threads("Name:\tx\n"));
    }

    #[test]
    fn this_thread_is_alive_and_a_bogus_one_is_not() {
        let me =
            (u64::from(std::process::id()) << 32) | u64::from(unsafe { libc::gettid() } as u32);
        assert!(thread_alive(Path::new("/proc"), me));
        assert!(!thread_alive(
            Path::new("/proc"),
            u64::from(u32::MAX) << 32 | 1
        ));
    }
}
