//! Calls the kernel saw but our programs did not: the kernel's own miss counters.
//!
//! - **kprobe misses** (`bpf_link_info.perf_event.kprobe.missed`, Linux 6.7+; the perf link
//!   info itself is 6.6+): for an entry probe, hits skipped because another kprobe was
//!   running on that CPU; for a return probe, also the calls whose return could not be
//!   hooked because every `maxactive` instance was in use (by default
//!   `max(10, 2 × CPUs)` calls in flight at once). Older kernels do not report them: a
//!   missed return then shows up only as an in-flight entry that expires (`expiry.rs`).
//! - **BPF recursion misses** (`bpf_prog_info.recursion_misses`, Linux 5.12+): the program
//!   was not run because another BPF program was already running on that CPU.
//!
//! aya 0.14 reads neither field, so this module asks the kernel directly
//! (`BPF_OBJ_GET_INFO_BY_FD`, the UAPI structs from `aya-obj`). It needs no privilege beyond
//! the file descriptors the process already holds: link descriptors are found in
//! `/proc/self/fd` and matched by link id, so reading works after privileges are dropped.
//! No address is kept: the info's `addr` field is ignored.

use std::collections::HashMap;
use std::io;
use std::os::fd::BorrowedFd;

use aya_obj::generated::{bpf_link_info, bpf_link_type, bpf_perf_event_type, bpf_prog_info};

use super::bpf_sys::obj_info;

/// What the kernel counted for one of our links, or why it cannot say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KprobeMissed {
    Count(u64),
    /// The kernel fills no perf-event link info (before Linux 6.6).
    NotReported,
}

/// The kernel's miss counts for one attached program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramMisses {
    pub probe: crate::events::ProbeId,
    pub kind: super::Kind,
    /// The link the kprobe count belongs to (a re-attached program has a new link, whose
    /// count starts again at 0).
    pub link_id: Option<u32>,
    /// `None` for raw tracepoints, or a link whose id is unknown.
    pub kprobe: Option<KprobeMissed>,
    /// `None` if the program's info could not be read.
    pub recursion: Option<u64>,
}

/// Whether the kernel reports kprobe misses for these programs: `Some(true)` if any link has
/// a count, `Some(false)` if there are kprobe links but none has one (before 6.7), `None`
/// without kprobe links.
pub fn kprobe_reporting(programs: &[ProgramMisses]) -> Option<bool> {
    programs
        .iter()
        .filter_map(|p| p.kprobe)
        .fold(None, |acc, k| {
            Some(acc == Some(true) || matches!(k, KprobeMissed::Count(_)))
        })
}

/// What to say after the kprobe miss total, given [`kprobe_reporting`] and the running
/// kernel's `(major, minor)`: nothing where the kernel reports them; else why not, true to
/// this kernel (links report misses since Linux 6.7).
pub fn kprobe_remark(reporting: Option<bool>, kernel: Option<(u32, u32)>) -> &'static str {
    match (reporting, kernel) {
        (Some(true), _) => "",
        (None, _) => ": no kprobe attached, so none counted",
        (Some(false), Some(v)) if v < (6, 7) => ": not reported by this kernel, needs 6.7+",
        (Some(false), _) => ": not reported for these links by this kernel",
    }
}

/// The kernel's kprobe and BPF recursion misses, summed over `programs`.
pub fn totals(programs: &[ProgramMisses]) -> (u64, u64) {
    programs.iter().fold((0, 0), |(k, r), p| {
        let kp = match p.kprobe {
            Some(KprobeMissed::Count(n)) => n,
            _ => 0,
        };
        (k + kp, r + p.recursion.unwrap_or(0))
    })
}

/// The programs that missed calls, one `probe kind: N kprobe, M BPF recursion` entry each
/// (`None` when none did): which probe's events a reader should not trust to be complete.
pub fn by_program(programs: &[ProgramMisses]) -> Option<String> {
    let parts: Vec<String> = programs
        .iter()
        .filter_map(|p| {
            let k = match p.kprobe {
                Some(KprobeMissed::Count(n)) => n,
                _ => 0,
            };
            let r = p.recursion.unwrap_or(0);
            (k + r > 0).then(|| {
                format!(
                    "{} {}: {k} kprobe, {r} BPF recursion",
                    p.probe.as_str(),
                    p.kind.as_str()
                )
            })
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// `recursion_misses` of the program behind `fd`.
pub fn recursion_misses(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: a plain-data UAPI struct; all zeroes is its empty value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    obj_info(fd, &mut info)?;
    Ok(info.recursion_misses)
}

/// The id and kprobe miss count of the link behind `fd`; `None` if it is not a perf-event
/// link to a kprobe.
fn link_kprobe_missed(fd: BorrowedFd<'_>) -> io::Result<Option<(u32, KprobeMissed)>> {
    // SAFETY: as above. `func_name` stays 0 with `name_len` 0: the kernel copies no name.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    obj_info(fd, &mut info)?;
    if info.type_ != bpf_link_type::BPF_LINK_TYPE_PERF_EVENT as u32 {
        return Ok(None);
    }
    // SAFETY: the kernel set `type_` to a perf-event link, whose member this union holds.
    let pe = unsafe { info.__bindgen_anon_1.perf_event };
    let missed = match pe.type_ {
        t if t == bpf_perf_event_type::BPF_PERF_EVENT_KPROBE as u32
            || t == bpf_perf_event_type::BPF_PERF_EVENT_KRETPROBE as u32 =>
        {
            // SAFETY: the kernel says this is a kprobe.
            KprobeMissed::Count(unsafe { pe.__bindgen_anon_1.kprobe.missed })
        }
        t if t == bpf_perf_event_type::BPF_PERF_EVENT_UNSPEC as u32 => KprobeMissed::NotReported,
        _ => return Ok(None),
    };
    Ok(Some((info.id, missed)))
}

/// The descriptors the last scan found to be BPF links, so that the next reading asks only
/// them instead of reading every entry of `/proc/self/fd` again (a `readlink` each: most of a
/// sweep's cost). A stale cache (a link detached or attached since) is found out by
/// [`LinkFds::kprobe_missed`]'s caller through the link ids it expects, and rescanned.
#[derive(Debug, Default)]
pub struct LinkFds(Vec<i32>);

impl LinkFds {
    /// The miss counts of the links behind the cached descriptors; `want` are the link ids the
    /// caller expects: if any is not found, the descriptors are scanned afresh.
    pub fn kprobe_missed(&mut self, want: &[u32]) -> io::Result<HashMap<u32, KprobeMissed>> {
        let mut out = HashMap::new();
        for &n in &self.0 {
            // SAFETY: as in `scan_links`; a descriptor closed (or reused by something else)
            // since the scan answers with an error, and its link is then missing below.
            let fd = unsafe { BorrowedFd::borrow_raw(n) };
            if let Ok(Some((id, m))) = link_kprobe_missed(fd) {
                out.insert(id, m);
            }
        }
        if want.iter().all(|id| out.contains_key(id)) && !self.0.is_empty() {
            return Ok(out);
        }
        let (out, fds) = scan_links()?;
        self.0 = fds;
        Ok(out)
    }
}

/// The kprobe miss counts of every perf-event link this process holds, by link id, and the
/// descriptors that are those links.
///
/// Descriptors are borrowed from `/proc/self/fd` for the duration of one call; the links
/// belong to the session, which only the event loop (this thread) detaches.
fn scan_links() -> io::Result<(HashMap<u32, KprobeMissed>, Vec<i32>)> {
    let mut out = HashMap::new();
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // The kernel names link files `bpf_link` (maps and programs use a dash).
        let is_link = std::fs::read_link(entry.path()).is_ok_and(|t| {
            matches!(
                t.as_os_str().as_encoded_bytes(),
                b"anon_inode:bpf_link" | b"anon_inode:bpf-link"
            )
        });
        if !is_link {
            continue;
        }
        // SAFETY: `n` is open (just listed as a bpf link) and stays open during this call:
        // see above.
        let fd = unsafe { BorrowedFd::borrow_raw(n) };
        match link_kprobe_missed(fd) {
            Ok(Some((id, m))) => {
                out.insert(id, m);
                fds.push(n);
            }
            Ok(None) => {}
            // Closed between the listing and the call: not one of ours any more.
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((out, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On 6.18 "needs 6.7+" is wrong: the remark follows the running kernel.
    #[test]
    fn kprobe_remark_is_true_to_the_kernel() {
        assert_eq!(kprobe_remark(Some(true), Some((6, 1))), "");
        assert!(kprobe_remark(Some(false), Some((6, 1))).contains("needs 6.7+"));
        let r = kprobe_remark(Some(false), Some((6, 18)));
        assert!(!r.contains("6.7"), "{r}");
        let r = kprobe_remark(None, Some((6, 18)));
        assert!(
            r.contains("no kprobe attached") && !r.contains("6.7"),
            "{r}"
        );
    }

    #[test]
    fn a_non_bpf_descriptor_is_refused_with_the_kernels_error() {
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let fd = unsafe { BorrowedFd::borrow_raw(std::os::fd::AsRawFd::as_raw_fd(&f)) };
        // EINVAL for a non-BPF file, EPERM where bpf(2) needs privileges: an error either way.
        assert!(recursion_misses(fd).is_err());
    }

    fn prog(kprobe: Option<KprobeMissed>, recursion: Option<u64>) -> ProgramMisses {
        ProgramMisses {
            probe: crate::events::ProbeId::DriverBind,
            kind: super::super::Kind::Kretprobe,
            link_id: Some(1),
            kprobe,
            recursion,
        }
    }

    #[test]
    fn reporting_is_known_only_from_kprobe_links_and_any_count_means_reported() {
        use KprobeMissed::*;
        assert_eq!(kprobe_reporting(&[prog(None, Some(1))]), None);
        assert_eq!(
            kprobe_reporting(&[prog(Some(NotReported), None)]),
            Some(false)
        );
        assert_eq!(
            kprobe_reporting(&[prog(Some(NotReported), None), prog(Some(Count(0)), None)]),
            Some(true)
        );
        assert_eq!(
            totals(&[
                prog(Some(Count(54)), Some(1)),
                prog(Some(NotReported), None)
            ]),
            (54, 1)
        );
    }

    #[test]
    fn by_program_names_only_the_programs_that_missed() {
        use KprobeMissed::*;
        assert_eq!(by_program(&[prog(Some(Count(0)), Some(0))]), None);
        assert_eq!(
            by_program(&[
                prog(Some(Count(0)), Some(0)),
                prog(Some(Count(2)), Some(1)),
                prog(Some(NotReported), Some(3)),
            ])
            .as_deref(),
            Some(
                "driver_bind kretprobe: 2 kprobe, 1 BPF recursion; driver_bind kretprobe: 0 kprobe, 3 BPF recursion"
            )
        );
    }

    #[test]
    fn a_process_without_links_reports_none() {
        assert!(scan_links().unwrap().0.is_empty());
        let mut cache = LinkFds::default();
        assert!(cache.kprobe_missed(&[]).unwrap().is_empty());
        // A link it cannot find: scanned again, still nothing (and no error).
        assert!(cache.kprobe_missed(&[7]).unwrap().is_empty());
        assert!(cache.0.is_empty());
    }
}
