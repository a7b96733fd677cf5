//! Dropping capabilities once the probes are attached (as ebpf_exporter's
//! `--capabilities.keep`), through the `caps` crate (capget/capset, keepcaps).
//!
//! Reading the maps needs only CAP_BPF (bpf(2) is refused without it where
//! `unprivileged_bpf_disabled` is set). Attaching a kprobe later — when a module with probe
//! targets loads — also needs CAP_PERFMON, and CAP_SYS_ADMIN where
//! `kernel.perf_event_paranoid` is 3 (Debian's kernels refuse `perf_event_open` without it).

pub use caps::Capability;
use caps::{CapSet, CapsHashSet, errors::CapsError};

use super::perf_paranoid_needs_sys_admin;

/// The capabilities to keep: CAP_BPF, plus what attaching later needs if `attach_later`
/// (CAP_PERFMON, CAP_SYSLOG for symbol addresses, CAP_SYS_ADMIN where perf_event_paranoid=3).
pub fn to_keep(attach_later: bool) -> Vec<Capability> {
    let mut keep = vec![Capability::CAP_BPF];
    if attach_later {
        keep.push(Capability::CAP_PERFMON);
        keep.push(Capability::CAP_SYSLOG);
        if perf_paranoid_needs_sys_admin() {
            keep.push(Capability::CAP_SYS_ADMIN);
        }
    }
    keep
}

/// `CAP_BPF, CAP_PERFMON`: for log lines.
pub fn names(caps: &[Capability]) -> Vec<String> {
    caps.iter().map(Capability::to_string).collect()
}

fn io(e: CapsError) -> std::io::Error {
    std::io::Error::other(e)
}

/// Becomes `uid:gid` (no supplementary groups), keeping the permitted capabilities across
/// the switch; the caller then reduces them with [`drop_all_but`] (which also makes them
/// effective again). Needs CAP_SETUID and CAP_SETGID, which are dropped with the rest.
pub fn switch_user(uid: u32, gid: u32) -> std::io::Result<()> {
    caps::securebits::set_keepcaps(true).map_err(io)?;
    let err = std::io::Error::last_os_error;
    // SAFETY: plain syscalls with integer arguments (setgroups with an empty list).
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(err());
        }
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(err());
        }
        if libc::setresuid(uid, uid, uid) != 0 {
            return Err(err());
        }
    }
    caps::securebits::set_keepcaps(false).map_err(io)
}

/// Reduces the effective and permitted sets to `keep` (those the process has) and clears the
/// inheritable set; the rest is gone for good.
pub fn drop_all_but(keep: &[Capability]) -> std::io::Result<()> {
    let permitted = caps::read(None, CapSet::Permitted).map_err(io)?;
    let new: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    caps::clear(None, CapSet::Inheritable).map_err(io)?;
    // Effective first: it must stay a subset of permitted at every step.
    caps::set(None, CapSet::Effective, &new).map_err(io)?;
    caps::set(None, CapSet::Permitted, &new).map_err(io)
}

/// Makes every permitted capability effective again (after a user switch cleared them).
pub fn raise_permitted() -> std::io::Result<()> {
    let permitted = caps::read(None, CapSet::Permitted).map_err(io)?;
    caps::set(None, CapSet::Effective, &permitted).map_err(io)
}
