//! Dropping capabilities once the probes are attached (as ebpf_exporter's
//! `--capabilities.keep`): the daemon then keeps only what reading its maps needs.

/// `_LINUX_CAPABILITY_VERSION_3`.
const VERSION_3: u32 = 0x2008_0522;
const CAP_BPF: u32 = 39;

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

/// Keeps only CAP_BPF (map reads go through bpf(2), which kernels with
/// `unprivileged_bpf_disabled` refuse without it) in the effective and permitted sets;
/// everything else, including CAP_SYS_ADMIN and CAP_PERFMON, is gone for good.
pub fn drop_all_but_bpf() -> std::io::Result<()> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: valid header and a two-element data array, as capget(2) requires for v3.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let keep_hi = 1u32 << (CAP_BPF - 32);
    let had_bpf = data[1].permitted & keep_hi != 0;
    let mut new = [Data::default(); 2];
    if had_bpf {
        new[1].effective = keep_hi;
        new[1].permitted = keep_hi;
    }
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, new.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
