//! VMs by the names users know: the VMM conventions, in one table.
//!
//! A bind runs in its VMM's context, so the kernel reads the VMM's argv then
//! ([`tsm_trace_common::VmmRecord`], at most 256 bytes, once per bind). Here the argv becomes a
//! [`VmmName`] at once, by [`VMMS`]; the argv itself (it may hold secrets: passwords in
//! `-object secret,data=…`, tokens) goes no further than this module. [`Identities`] gives the
//! name to the bind records of the thread that read it (the record precedes them on the
//! ring buffer). A VM whose argv was unreadable or matched no convention keeps its
//! `stats_id` name (`kvm-<pid>`).
//!
//! | VMM | its argv | the name |
//! |---|---|---|
//! | QEMU, libvirt (`qemu-system-*`, `qemu-kvm`, `kvm`) | `-name web-1`, `-name guest=web-1,debug-threads=on` | `web-1` |
//! | Kata Containers (its QEMU) | `-name sandbox-<id>,debug-threads=on` | `<id>`, the pod sandbox id (vmm `kata`) |
//! | cloud-hypervisor | `--api-socket path=/run/x/web-1.sock` (or a bare path) | the socket's file stem; Kata's `…/<id>/clh-api.sock`: `<id>` |
//! | Firecracker | `--id web-1` | `web-1` |
//! | crosvm | `crosvm run --socket /run/crosvm/web-1.sock` (`-s`) | the socket's file stem |

use std::collections::{HashMap, VecDeque};

use rustc_hash::FxBuildHasher as FxBuild;
use serde::{Deserialize, Serialize};
use tsm_trace_common::{VMM_RECORD_KIND, VmmRecord, missing};

use super::{Event, ProbeId};

/// Longest name kept (characters): the name is a label value of the leak series.
pub const MAX_NAME: usize = 64;

/// The name a VMM's command line gives its VM, and which VMM convention gave it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VmmName {
    /// `qemu`, `kata`, `cloud-hypervisor`, `firecracker` or `crosvm`.
    pub vmm: super::Name,
    /// The VM's name, sanitized (see [`sanitize`]).
    pub name: super::Name,
}

/// How a VMM names its VM: its program names (argv[0]'s file name, or a prefix of it) and
/// the rule that reads the name.
struct Convention {
    vmm: &'static str,
    programs: &'static [&'static str],
    /// Program names matched as prefixes (`qemu-system-x86_64`).
    prefixes: &'static [&'static str],
    rule: Rule,
}

enum Rule {
    /// QEMU's `-name [guest=]NAME[,process=…][,debug-threads=…]`.
    QemuName,
    /// The value of one of these options (`--id ID` or `--id=ID`).
    Value(&'static [&'static str]),
    /// The file stem of a socket path in one of these options (`path=` form allowed).
    Socket(&'static [&'static str]),
}

/// The table: every VMM convention tsm-trace knows.
const VMMS: &[Convention] = &[
    Convention {
        vmm: "qemu",
        programs: &["qemu-kvm", "kvm", "qemu"],
        prefixes: &["qemu-system-"],
        rule: Rule::QemuName,
    },
    Convention {
        vmm: "cloud-hypervisor",
        programs: &["cloud-hypervisor"],
        prefixes: &[],
        rule: Rule::Socket(&["--api-socket"]),
    },
    Convention {
        vmm: "firecracker",
        programs: &["firecracker"],
        prefixes: &[],
        rule: Rule::Value(&["--id"]),
    },
    Convention {
        vmm: "crosvm",
        programs: &["crosvm"],
        prefixes: &[],
        rule: Rule::Socket(&["--socket", "-s"]),
    },
];

/// Kata's QEMU names its VM `sandbox-<id>` (`<id>`: the pod sandbox id, 64 hex digits, which
/// the name keeps whole: `sandbox-` would push it past [`MAX_NAME`]).
const KATA_PREFIX: &str = "sandbox-";
/// Socket names that say nothing (Kata's cloud-hypervisor: `/run/vc/vm/<id>/clh-api.sock`):
/// the folder names the VM instead.
const GENERIC_SOCKETS: &[&str] = &["clh-api", "api", "cloud-hypervisor", "crosvm", "control"];

/// The arguments in `argv` (NUL-separated, as in `mm->arg_start..arg_end`), lossily decoded.
/// `truncated`: the kernel cut the argv at its bound, so an unterminated last piece is
/// partial and dropped.
fn split_args(argv: &[u8], truncated: bool) -> Vec<String> {
    let mut parts: Vec<&[u8]> = argv.split(|&b| b == 0).collect();
    // The piece after the last NUL: empty for a whole argv, partial for a cut one.
    let last = parts.pop().unwrap_or_default();
    if !truncated && !last.is_empty() {
        parts.push(last);
    }
    parts
        .into_iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// The value of option `opt` in `args`: `opt VALUE` or `opt=VALUE`; the first occurrence.
fn value<'a>(args: &'a [String], opts: &[&str]) -> Option<&'a str> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        for o in opts {
            if a == o {
                return it.next().map(String::as_str);
            }
            if let Some(v) = a.strip_prefix(o).and_then(|r| r.strip_prefix('=')) {
                return Some(v);
            }
        }
    }
    None
}

/// QEMU's `-name` (also `--name`): `[guest=]NAME[,key=value…]`, where `,,` is a literal comma.
fn qemu_name(args: &[String]) -> Option<String> {
    let v = value(args, &["-name", "--name"])?;
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                fields.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    fields.push(cur);
    let mut name = None;
    for (i, f) in fields.iter().enumerate() {
        match f.split_once('=') {
            Some(("guest", n)) => name = Some(n.to_string()),
            None if i == 0 => name = Some(f.clone()),
            _ => {}
        }
    }
    name
}

/// The VM name in a socket path: its file stem, or its folder's name for a generic stem.
fn socket_name(v: &str) -> Option<String> {
    // cloud-hypervisor's `path=/x/y.sock` (also among other `key=value`s); `fd=3` names nothing.
    let path = if v.contains('=') {
        v.split(',').find_map(|kv| kv.strip_prefix("path="))?
    } else {
        v
    };
    let p = std::path::Path::new(path);
    let stem = p.file_stem()?.to_str()?;
    if GENERIC_SOCKETS.contains(&stem) {
        return p
            .parent()?
            .file_name()?
            .to_str()
            .map(str::to_string)
            .filter(|s| !s.is_empty());
    }
    Some(stem.to_string())
}

/// Makes `raw` fit as a label value and a trace word: characters other than ASCII letters,
/// digits and `-_.:@+` become `_`, at most [`MAX_NAME`] of them; `None` when nothing is left.
pub fn sanitize(raw: &str) -> Option<String> {
    let s: String = raw
        .chars()
        .take(MAX_NAME)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:@+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    (!s.is_empty() && s.chars().any(|c| c != '_')).then_some(s)
}

/// The VM's name from its VMM's argv, by the table; `None` when no convention applies.
pub fn name_from_argv(argv: &[u8], truncated: bool) -> Option<VmmName> {
    let args = split_args(argv, truncated);
    let prog = args.first()?;
    let prog = prog.rsplit('/').next().unwrap_or(prog);
    let conv = VMMS
        .iter()
        .find(|c| c.programs.contains(&prog) || c.prefixes.iter().any(|p| prog.starts_with(p)))?;
    let (vmm, raw) = match conv.rule {
        Rule::QemuName => {
            let n = qemu_name(&args)?;
            match n.strip_prefix(KATA_PREFIX) {
                Some(id) => ("kata", id.to_string()),
                None => (conv.vmm, n),
            }
        }
        Rule::Value(opts) => (conv.vmm, value(&args, opts)?.to_string()),
        Rule::Socket(opts) => (conv.vmm, socket_name(value(&args, opts)?)?),
    };
    Some(VmmName {
        vmm: vmm.into(),
        name: sanitize(&raw)?.into(),
    })
}

/// A [`VmmRecord`] decoded: the thread that bound and its VMM's name (`None`: unreadable, or
/// no convention named it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmmSeen {
    pub tid: u32,
    pub name: Option<VmmName>,
    /// The kernel could not read the argv ([`missing::VMM_ARGV`]).
    pub unreadable: bool,
}

impl VmmSeen {
    /// Decodes a ring-buffer record of [`VmmRecord::SIZE`] bytes; `None` for anything else.
    pub fn from_bytes(b: &[u8]) -> Option<VmmSeen> {
        if b.len() != VmmRecord::SIZE {
            return None;
        }
        // SAFETY: size checked; VmmRecord is plain data valid for any bit pattern.
        let r: VmmRecord = unsafe { std::ptr::read_unaligned(b.as_ptr().cast()) };
        if r.kind != VMM_RECORD_KIND {
            return None;
        }
        let unreadable = r.missing & missing::VMM_ARGV != 0;
        let len = (r.len as usize).min(r.argv.len());
        let name = if unreadable {
            None
        } else {
            name_from_argv(&r.argv[..len], r.truncated != 0)
        };
        Some(VmmSeen {
            tid: r.pid_tgid as u32,
            name,
            unreadable,
        })
    }
}

/// Threads kept at once (oldest forgotten first).
const MAX_THREADS: usize = 4_096;

/// The VMM name each binding thread's last [`VmmRecord`] gave, handed to its bind records.
#[derive(Debug, Default)]
pub struct Identities {
    by_tid: HashMap<u32, Option<VmmName>, FxBuild>,
    order: VecDeque<u32>,
}

impl Identities {
    pub fn note(&mut self, seen: VmmSeen) {
        if self.by_tid.len() >= MAX_THREADS
            && !self.by_tid.contains_key(&seen.tid)
            && let Some(old) = self.order.pop_front()
        {
            self.by_tid.remove(&old);
        }
        if self.by_tid.insert(seen.tid, seen.name).is_none() {
            self.order.push_back(seen.tid);
        }
    }

    /// Names the VM of a bind record from its thread's last [`VmmRecord`].
    pub fn apply(&self, ev: &mut Event) {
        if !matches!(
            ev.probe,
            ProbeId::TsmBind | ProbeId::PciTsmBind | ProbeId::DriverBind
        ) {
            return;
        }
        if let (Some(vm), Some(Some(n))) = (ev.vm.as_mut(), self.by_tid.get(&ev.tid)) {
            vm.vmm = Some(n.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<u8> {
        let mut v = Vec::new();
        for a in args {
            v.extend_from_slice(a.as_bytes());
            v.push(0);
        }
        v
    }

    fn name(args: &[&str]) -> Option<(String, String)> {
        name_from_argv(&argv(args), false).map(|n| (n.vmm.to_string(), n.name.to_string()))
    }

    fn some(vmm: &str, n: &str) -> Option<(String, String)> {
        Some((vmm.into(), n.into()))
    }

    #[test]
    fn qemu_shapes() {
        assert_eq!(
            name(&["qemu-system-x86_64", "-m", "1G", "-name", "web-1"]),
            some("qemu", "web-1")
        );
        assert_eq!(
            name(&[
                "/usr/bin/qemu-system-x86_64",
                "-name",
                "guest=db-2,debug-threads=on",
                "-S"
            ]),
            some("qemu", "db-2")
        );
        assert_eq!(
            name(&[
                "qemu-kvm",
                "-name",
                "web-3,process=qemu:web,debug-threads=on"
            ]),
            some("qemu", "web-3")
        );
        assert_eq!(
            name(&["qemu-system-aarch64", "--name", "debug-threads=on,guest=x"]),
            some("qemu", "x")
        );
        assert_eq!(
            name(&["qemu-system-x86_64", "-name", "a,,b"]),
            some("qemu", "a_b")
        );
        assert_eq!(
            name(&["qemu-system-x86_64", "-name", "sandbox-4f2a9c"]),
            some("kata", "4f2a9c")
        );
        // Kata's sandbox ids are 64 hex digits: kept whole.
        let id = "41cb92475d2d2b8b93befe133d6df302c08482e3f4bd1eae219b46e580b673e9";
        assert_eq!(
            name(&[
                "/opt/kata/bin/qemu-system-x86_64",
                "-name",
                &format!("sandbox-{id},debug-threads=on"),
                "-uuid",
                "e62392aa"
            ]),
            some("kata", id)
        );
        // No -name: nothing (the stats id names it).
        assert_eq!(name(&["qemu-system-x86_64", "-m", "1G"]), None);
    }

    #[test]
    fn other_vmms() {
        assert_eq!(
            name(&[
                "cloud-hypervisor",
                "--api-socket",
                "path=/run/ch/web-4.sock",
                "--kernel",
                "k"
            ]),
            some("cloud-hypervisor", "web-4")
        );
        assert_eq!(
            name(&[
                "/usr/bin/cloud-hypervisor",
                "--api-socket=/run/ch/web-5.sock"
            ]),
            some("cloud-hypervisor", "web-5")
        );
        assert_eq!(
            name(&[
                "cloud-hypervisor",
                "--api-socket",
                "/run/vc/vm/3b1e77/clh-api.sock"
            ]),
            some("cloud-hypervisor", "3b1e77")
        );
        assert_eq!(name(&["cloud-hypervisor", "--api-socket", "fd=3"]), None);
        assert_eq!(
            name(&["firecracker", "--api-sock", "/tmp/fc.sock", "--id", "fc-6"]),
            some("firecracker", "fc-6")
        );
        assert_eq!(
            name(&["firecracker", "--id=fc-7"]),
            some("firecracker", "fc-7")
        );
        assert_eq!(
            name(&[
                "crosvm",
                "run",
                "--socket",
                "/run/crosvm/cv-8.sock",
                "vmlinux"
            ]),
            some("crosvm", "cv-8")
        );
        assert_eq!(
            name(&["crosvm", "run", "-s", "/run/crosvm/cv-9.sock"]),
            some("crosvm", "cv-9")
        );
        assert_eq!(name(&["bash", "-name", "x"]), None);
    }

    #[test]
    fn bad_input_never_panics() {
        assert_eq!(name_from_argv(b"", false), None);
        assert_eq!(name_from_argv(b"", true), None);
        assert_eq!(name_from_argv(b"\0\0\0", false), None);
        // No NUL at all: one argument (the program), nothing else.
        assert_eq!(name_from_argv(b"qemu-system-x86_64", false), None);
        assert_eq!(name_from_argv(b"qemu-system-x86_64", true), None);
        // -name as the last argument.
        assert_eq!(name(&["qemu-system-x86_64", "-name"]), None);
        assert_eq!(name(&["firecracker", "--id"]), None);
        assert_eq!(name(&["crosvm", "run", "--socket"]), None);
        // Cut at the bound inside the name: the partial last piece is dropped.
        let mut cut = argv(&["qemu-system-x86_64", "-name"]);
        cut.extend_from_slice(b"web-lo");
        assert_eq!(name_from_argv(&cut, true), None);
        // Not cut: an unterminated last piece is whole.
        assert_eq!(
            name_from_argv(&cut, false).map(|n| n.name),
            Some("web-lo".into())
        );
        // Non-UTF-8 and odd characters become `_`; long names are cut.
        let mut odd = argv(&["qemu-system-x86_64", "-name"]);
        odd.extend_from_slice(b"w\xffb \"x\"\n\0");
        assert_eq!(
            name_from_argv(&odd, false).map(|n| n.name),
            Some("w_b__x__".into())
        );
        let long = "n".repeat(300);
        assert_eq!(
            name(&["firecracker", "--id", &long]).map(|n| n.1.len()),
            Some(MAX_NAME)
        );
        assert_eq!(name(&["firecracker", "--id", ""]), None);
        assert_eq!(name(&["firecracker", "--id", "\"\""]), None);
        // Every prefix of every shape, cut or not, never panics.
        let shapes = [
            argv(&["qemu-system-x86_64", "-name", "guest=a,debug-threads=on"]),
            argv(&["cloud-hypervisor", "--api-socket", "path=/a/b.sock"]),
            argv(&["crosvm", "run", "-s", "/a/.sock"]),
        ];
        for s in shapes {
            for n in 0..=s.len() {
                let _ = name_from_argv(&s[..n], true);
                let _ = name_from_argv(&s[..n], false);
            }
        }
    }

    #[test]
    fn records_decode_and_name_their_thread_binds() {
        let mut r = VmmRecord {
            kind: VMM_RECORD_KIND,
            missing: 0,
            pid_tgid: (7u64 << 32) | 9,
            ktime_ns: 1,
            len: 0,
            truncated: 0,
            argv: [0; tsm_trace_common::ARGV_LEN],
        };
        let a = argv(&["firecracker", "--id", "fc-1"]);
        r.argv[..a.len()].copy_from_slice(&a);
        r.len = a.len() as u32;
        // SAFETY: plain data.
        let bytes = unsafe {
            std::slice::from_raw_parts((&r as *const VmmRecord).cast::<u8>(), VmmRecord::SIZE)
        };
        let seen = VmmSeen::from_bytes(bytes).unwrap();
        assert_eq!(seen.tid, 9);
        assert_eq!(&*seen.name.as_ref().unwrap().name, "fc-1");
        assert_eq!(VmmSeen::from_bytes(&bytes[1..]), None);
        // A length past the buffer is clamped, never a panic.
        r.len = u32::MAX;
        let bytes = unsafe {
            std::slice::from_raw_parts((&r as *const VmmRecord).cast::<u8>(), VmmRecord::SIZE)
        };
        assert!(VmmSeen::from_bytes(bytes).is_some());
        r.missing = missing::VMM_ARGV;
        let bytes = unsafe {
            std::slice::from_raw_parts((&r as *const VmmRecord).cast::<u8>(), VmmRecord::SIZE)
        };
        let s = VmmSeen::from_bytes(bytes).unwrap();
        assert!(s.unreadable && s.name.is_none());

        let mut ids = Identities::default();
        ids.note(seen);
        let mut ev = Event::new(ProbeId::PciTsmBind, 1, 2, 7, 9, "fc".into());
        ev.vm = Some(super::super::Vm {
            id: super::super::VmId::from_bits(1),
            pid: Some(7),
            stats_id: Some("kvm-7".into()),
            vmm: None,
        });
        ids.apply(&mut ev);
        assert_eq!(&*ev.vm.as_ref().unwrap().name(), "fc-1");
        let mut other = ev.clone();
        other.tid = 10;
        other.vm.as_mut().unwrap().vmm = None;
        ids.apply(&mut other);
        assert_eq!(&*other.vm.unwrap().name(), "kvm-7");
    }
}
