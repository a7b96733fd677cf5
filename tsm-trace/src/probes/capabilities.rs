//! Dropping capabilities once the probes are attached (as ebpf_exporter's
//! `--capabilities.keep`).
//!
//! Reading the maps needs only CAP_BPF (bpf(2) is refused without it where
//! `unprivileged_bpf_disabled` is set). Attaching a kprobe later — when a module with probe
//! targets loads — also needs CAP_PERFMON, and CAP_SYS_ADMIN where
//! `kernel.perf_event_paranoid` is 3 (Debian's kernels refuse `perf_event_open` without it).

use super::privileges::{CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, perf_paranoid_needs_sys_admin};

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

/// The capabilities to keep: CAP_BPF, plus what attaching later needs if `attach_later`.
pub fn to_keep(attach_later: bool) -> Vec<u32> {
    let mut keep = vec![CAP_BPF];
    if attach_later {
        keep.push(CAP_PERFMON);
        if perf_paranoid_needs_sys_admin() {
            keep.push(CAP_SYS_ADMIN);
        }
    }
    keep
}

pub fn name(cap: u32) -> &'static str {
    match cap {
        CAP_BPF => "CAP_BPF",
        CAP_PERFMON => "CAP_PERFMON",
        CAP_SYS_ADMIN => "CAP_SYS_ADMIN",
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
