//! An [`EbpfLoader`] that does not parse the kernel's BTF when the object does not need it.
//!
//! `EbpfLoader::new()` always reads `/sys/kernel/btf/vmlinux` and parses it with aya's own
//! BTF parser (aya 0.14; aya-rs/aya#1172 "EbpfLoader should not load BTF from sys by
//! default", open): on a 7.x kernel that is ~5.5 MiB read plus ~13.5 MiB parsed, the whole
//! of the daemon's start-up peak RSS (measured with `--log-level debug`: VmHWM 4.6 MiB after
//! our own BTF resolution, 22.2 MiB after loading the object; `crate::memory`). aya uses that
//! parsed BTF for one thing only, CO-RE relocations (`relocate_btf`), and the kprobe and raw
//! tracepoint programs here have none: every offset they read comes from our own BTF
//! resolution, through the `OFFSETS` map. aya offers no constructor without the parse, so
//! the loader is built on a short-lived thread whose `open` system calls fail (a seccomp
//! filter on that thread only, returning ENOENT): aya's `Btf::from_sys_fs().ok()` then
//! gives `None`, exactly what `.btf(None)` would leave, without the 19 MiB detour.
//!
//! If the object ever has CO-RE relocations, or seccomp is unavailable (no
//! CONFIG_SECCOMP_FILTER, or a system-call filter refusing it), the plain `EbpfLoader::new()`
//! is used: the same behaviour, with the higher peak, said at debug level.

use aya::EbpfLoader;

/// A loader for `object`; see the module docs.
pub fn loader_for(object: &[u8]) -> EbpfLoader<'static> {
    match needs_kernel_btf(object) {
        Ok(false) => {}
        Ok(true) => {
            log::debug!(
                "the eBPF object has CO-RE relocations: aya parses the kernel's BTF for them (~19 MiB of peak RSS on a 7.x kernel)"
            );
            return EbpfLoader::new();
        }
        // aya's load will report the same parse error, with its context.
        Err(e) => {
            log::debug!("parsing the eBPF object for CO-RE relocations: {e}");
            return EbpfLoader::new();
        }
    }
    match without_kernel_btf() {
        Ok(loader) => loader,
        Err(e) => {
            log::debug!(
                "building the eBPF loader without parsing the kernel's BTF failed ({e}); aya parses it (~19 MiB more peak RSS on a 7.x kernel, freed again), nothing else changes"
            );
            EbpfLoader::new()
        }
    }
}

/// Whether aya would use the kernel's BTF for `object` (CO-RE relocations).
pub fn needs_kernel_btf(object: &[u8]) -> Result<bool, aya_obj::ParseError> {
    Ok(aya_obj::Object::parse(object)?.has_btf_relocations())
}

/// `EbpfLoader::new()` on a thread where every `open` fails with ENOENT.
fn without_kernel_btf() -> std::io::Result<EbpfLoader<'static>> {
    std::thread::scope(|s| {
        s.spawn(|| {
            deny_open_on_this_thread()?;
            Ok(EbpfLoader::new())
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the loader thread panicked")))
    })
}

// Classic BPF (uapi linux/filter.h and linux/seccomp.h; an ABI, not a kernel layout).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JMP_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
/// `struct seccomp_data.nr`.
const SECCOMP_DATA_NR: u32 = 0;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// The filter: `open`, `openat` and `openat2` return ENOENT, everything else is allowed.
/// Not a security boundary (the thread runs our code only): the architecture is not
/// checked, as the thread makes native system calls only.
fn filter() -> Vec<libc::sock_filter> {
    let mut nrs: Vec<u32> = vec![libc::SYS_openat as u32, libc::SYS_openat2 as u32];
    #[cfg(target_arch = "x86_64")]
    nrs.push(libc::SYS_open as u32);
    let mut f = vec![stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR)];
    let n = nrs.len();
    for (i, nr) in nrs.into_iter().enumerate() {
        // Equal: jump over the remaining tests and the ALLOW to the ERRNO return.
        f.push(libc::sock_filter {
            code: BPF_JMP_JEQ_K,
            jt: (n - i) as u8,
            jf: 0,
            k: nr,
        });
    }
    f.push(stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW));
    f.push(stmt(
        BPF_RET_K,
        libc::SECCOMP_RET_ERRNO | libc::ENOENT as u32,
    ));
    f
}

/// Installs [`filter`] on the calling thread only (no TSYNC): it goes when the thread ends.
/// `no_new_privs` is per thread too (it only affects `execve`, which this thread never
/// calls).
fn deny_open_on_this_thread() -> std::io::Result<()> {
    let f = filter();
    let prog = libc::sock_fprog {
        len: f.len() as u16,
        filter: f.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: plain prctl calls; `prog` points at `f`, alive across the call, and the kernel
    // copies the program.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_needs_no_kernel_btf() {
        // If this fails, the programs gained CO-RE relocations: the loader falls back to
        // aya's parse of the kernel BTF (correct, ~19 MiB more peak RSS); update the module
        // docs and the memory figures in BENCHMARKS.md.
        if super::super::EBPF_OBJECT.is_empty() {
            return;
        }
        assert!(!needs_kernel_btf(super::super::EBPF_OBJECT).unwrap());
    }

    #[test]
    fn the_filter_fails_opens_on_its_thread_only() {
        let r = std::thread::spawn(|| {
            deny_open_on_this_thread()?;
            Ok::<_, std::io::Error>(std::fs::File::open("/proc/self/status").map(|_| ()))
        })
        .join()
        .unwrap();
        match r {
            // Where seccomp is unavailable the loader falls back; nothing to test here.
            Err(e) => eprintln!("seccomp unavailable here: {e}"),
            Ok(open) => {
                let e = open.expect_err("open succeeded under the filter");
                assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
            }
        }
        // This thread is unaffected.
        std::fs::File::open("/proc/self/status").unwrap();
    }

    #[test]
    fn the_loader_is_built() {
        let _ = loader_for(super::super::EBPF_OBJECT);
    }
}
