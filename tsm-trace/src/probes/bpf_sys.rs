//! The bpf(2) commands aya 0.14 does not give us, in one place: object info (kprobe and
//! recursion misses, map and program names), opening a pin (`unpin` checks what it removes),
//! and walking the kernel's programs (other sessions). Each `union bpf_attr` member is a
//! `#[repr(C)]` struct with no padding (the kernel refuses non-zero bytes past the last field
//! it knows), built here and passed through [`bpf`].

use std::{
    ffi::c_char,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

use aya_obj::generated::bpf_cmd;

/// The kernel keeps object names to `BPF_OBJ_NAME_LEN - 1` bytes.
const OBJ_NAME_MAX: usize = 15;

/// bpf(2) with `attr` as its `union bpf_attr` member; the kernel's return value.
///
/// # Safety
/// `A` must be the `#[repr(C)]` member `cmd` reads, without padding, and every pointer in it
/// must be valid for what the kernel reads or writes through it during the call.
unsafe fn bpf<A>(cmd: bpf_cmd, attr: &mut A) -> io::Result<i64> {
    // SAFETY: the caller's promise; `attr` outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut A,
            std::mem::size_of::<A>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// A descriptor bpf(2) returned.
fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// `BPF_OBJ_GET_INFO_BY_FD`: fills `info` (a UAPI `bpf_*_info` struct, zeroed by the caller)
/// for object `fd`.
pub(crate) fn obj_info<T>(fd: BorrowedFd<'_>, info: &mut T) -> io::Result<()> {
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<T>() as u32,
        info: info as *mut T as u64,
    };
    // SAFETY: `attr` describes a writable buffer of `info_len` bytes that outlives the call;
    // the kernel writes at most that many.
    unsafe { bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr) }.map(drop)
}

/// `BPF_OBJ_GET`: opens the object pinned at `path` read-only.
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        /// Explicit: padding would be uninitialised, and the kernel refuses an attribute
        /// whose bytes past its last field are not zero (EINVAL).
        _pad: u32,
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: libc::O_RDONLY as u32,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: `attr` points at a NUL-terminated path that outlives the call.
    unsafe { bpf(bpf_cmd::BPF_OBJ_GET, &mut attr) }.map(owned)
}

#[repr(C)]
struct ById {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `BPF_PROG_GET_FD_BY_ID`.
pub(crate) fn prog_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = ById {
        id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: a plain attribute struct without pointers.
    unsafe { bpf(bpf_cmd::BPF_PROG_GET_FD_BY_ID, &mut attr) }.map(owned)
}

/// `BPF_PROG_GET_NEXT_ID` after `start`; `None` at the end.
pub(crate) fn next_prog_id(start: u32) -> io::Result<Option<u32>> {
    let mut attr = ById {
        id: start,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: as in prog_by_id; the kernel writes next_id.
    match unsafe { bpf(bpf_cmd::BPF_PROG_GET_NEXT_ID, &mut attr) } {
        Ok(_) => Ok(Some(attr.next_id)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What kind of BPF object `fd` is, as the kernel names its file (`bpf-map`, `bpf-prog`,
/// `bpf_link`), or `None` for anything else.
pub(crate) fn object_kind(fd: BorrowedFd<'_>) -> Option<&'static str> {
    let t = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    match t.as_os_str().as_encoded_bytes() {
        b"anon_inode:bpf-map" => Some("map"),
        b"anon_inode:bpf-prog" => Some("program"),
        b"anon_inode:bpf_link" | b"anon_inode:bpf-link" => Some("link"),
        _ => None,
    }
}

/// The kernel's name of an object: `want` cut to what the kernel keeps.
pub(crate) fn kernel_name(want: &str) -> &str {
    &want[..want.len().min(OBJ_NAME_MAX)]
}

/// A NUL-terminated name of a `bpf_*_info`.
pub(crate) fn c_name(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_are_cut_to_fifteen_bytes() {
        assert_eq!(kernel_name("EVENTS"), "EVENTS");
        assert_eq!(kernel_name("pci_tsm_guest_req_entry"), "pci_tsm_guest_r");
    }

    #[test]
    fn attributes_have_no_padding() {
        assert_eq!(std::mem::size_of::<ById>(), 12);
    }
}
