//! Dropping capabilities once the probes are attached (as ebpf_exporter's
//! `--capabilities.keep`): the daemon then keeps only what reading its maps and attaching
//! probes for late-loaded modules need.

/// `_LINUX_CAPABILITY_VERSION_3`.
const VERSION_3: u32 = 0x2008_0522;
const CAP_PERFMON: u32 = 38;
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
/// `unprivileged_bpf_disabled` refuse without it) and CAP_PERFMON (attaching kprobes when a
/// module with probe targets loads later) in the effective and permitted sets; everything
/// else, including CAP_SYS_ADMIN, CAP_DAC_OVERRIDE and CAP_NET_ADMIN, is gone for good.
pub fn drop_all_but_bpf_perfmon() -> std::io::Result<()> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: valid header and a two-element data array, as capget(2) requires for v3.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let keep_hi = ((1u32 << (CAP_BPF - 32)) | (1u32 << (CAP_PERFMON - 32))) & data[1].permitted;
    let mut new = [Data::default(); 2];
    new[1].effective = keep_hi;
    new[1].permitted = keep_hi;
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, new.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
