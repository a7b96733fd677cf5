//! Dropping capabilities once the probes are attached (as ebpf_exporter's
//! `--capabilities.keep`).
//!
//! Reading the maps needs only CAP_BPF (bpf(2) is refused without it where
//! `unprivileged_bpf_disabled` is set). Attaching a kprobe later — when a module with probe
//! targets loads — also needs CAP_PERFMON, and CAP_SYS_ADMIN where
//! `kernel.perf_event_paranoid` is 3 (Debian's kernels refuse `perf_event_open` without it).

use super::privileges::{
    CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYSLOG, perf_paranoid_needs_sys_admin,
};

/// `_LINUX_CAPABILITY_VERSION_3`.
const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The capabilities to keep: CAP_BPF, plus what attaching later needs if `attach_later`
/// (CAP_PERFMON, CAP_SYSLOG for symbol addresses, CAP_SYS_ADMIN where perf_event_paranoid=3).
pub fn to_keep(attach_later: bool) -> Vec<u32> {
    let mut keep = vec![CAP_BPF];
    if attach_later {
        keep.push(CAP_PERFMON);
        keep.push(CAP_SYSLOG);
        if perf_paranoid_needs_sys_admin() {
            keep.push(CAP_SYS_ADMIN);
        }
    }
    keep
}

/// Becomes `uid:gid` (no supplementary groups), keeping the permitted capabilities across
/// the switch; the caller then reduces them with [`drop_all_but`] (which also makes them
/// effective again). Needs CAP_SETUID and CAP_SETGID, which are dropped with the rest.
pub fn switch_user(uid: u32, gid: u32) -> std::io::Result<()> {
    let err = std::io::Error::last_os_error;
    // SAFETY: plain syscalls with integer arguments (setgroups with an empty list).
    unsafe {
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
            return Err(err());
        }
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(err());
        }
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(err());
        }
        if libc::setresuid(uid, uid, uid) != 0 {
            return Err(err());
        }
        if libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0 {
            return Err(err());
        }
    }
    Ok(())
}

pub fn name(cap: u32) -> &'static str {
    match cap {
        CAP_BPF => "CAP_BPF",
        CAP_PERFMON => "CAP_PERFMON",
        CAP_SYS_ADMIN => "CAP_SYS_ADMIN",
        CAP_SYSLOG => "CAP_SYSLOG",
        _ => "?",
    }
}

/// Reduces the effective and permitted sets to `keep` (those the process has); the rest is gone
/// for good.
pub fn drop_all_but(keep: &[u32]) -> std::io::Result<()> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: valid header and a two-element data array, as capget(2) requires for v3.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut new = [Data::default(); 2];
    for &cap in keep {
        let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        let have = data[word].permitted & bit;
        new[word].effective |= have;
        new[word].permitted |= have;
    }
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, new.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
