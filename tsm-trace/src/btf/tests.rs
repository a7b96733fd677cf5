//! Tests: the host's real vmlinux BTF (checked against an independent raw BTF parser) and a
//! synthetic vmlinux + module split BTF set written by a small BTF encoder.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use tsm_trace_common::{IntKind, OFFSET_UNKNOWN, ret};

use super::*;

// ---------------------------------------------------------------------------------------------
// A minimal BTF encoder (base and split), independent of btf-rs.

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;

struct Enc {
    /// Global offset of this section's first string (split: the base's string length).
    str_base: u32,
    strs: Vec<u8>,
    types: Vec<u8>,
    next_id: u32,
}

/// A struct member: name, type, bit offset, bitfield size (0: none).
type M<'a> = (&'a str, u32, u32, u32);

impl Enc {
    fn base() -> Enc {
        Enc {
            str_base: 0,
            strs: vec![0],
            types: Vec::new(),
            next_id: 1,
        }
    }

    fn split(base: &Enc) -> Enc {
        Enc {
            str_base: base.strs.len() as u32,
            strs: vec![0],
            types: Vec::new(),
            next_id: base.next_id,
        }
    }

    fn s(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.str_base + self.strs.len() as u32;
        self.strs.extend_from_slice(s.as_bytes());
        self.strs.push(0);
        off
    }

    fn u32(&mut self, v: u32) {
        self.types.extend_from_slice(&v.to_le_bytes());
    }

    fn head(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, size_type: u32) -> u32 {
        let n = self.s(name);
        self.u32(n);
        self.u32((kind << 24) | vlen | if kflag { 1 << 31 } else { 0 });
        self.u32(size_type);
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn int(&mut self, name: &str, bytes: u32) -> u32 {
        let id = self.head(name, KIND_INT, 0, false, bytes);
        self.u32(bytes * 8);
        id
    }

    fn int_signed(&mut self, name: &str, bytes: u32) -> u32 {
        let id = self.head(name, KIND_INT, 0, false, bytes);
        self.u32((1 << 24) | (bytes * 8));
        id
    }

    fn array(&mut self, elem: u32, index: u32, len: u32) -> u32 {
        let id = self.head("", KIND_ARRAY, 0, false, 0);
        self.u32(elem);
        self.u32(index);
        self.u32(len);
        id
    }

    fn enumeration(&mut self, name: &str, values: &[(&str, u32)]) -> u32 {
        let id = self.head(name, KIND_ENUM, values.len() as u32, false, 4);
        for &(n, v) in values {
            let n = self.s(n);
            self.u32(n);
            self.u32(v);
        }
        id
    }

    fn ptr(&mut self, t: u32) -> u32 {
        self.head("", KIND_PTR, 0, false, t)
    }

    fn konst(&mut self, t: u32) -> u32 {
        self.head("", KIND_CONST, 0, false, t)
    }

    fn volatile(&mut self, t: u32) -> u32 {
        self.head("", KIND_VOLATILE, 0, false, t)
    }

    fn typedef(&mut self, name: &str, t: u32) -> u32 {
        self.head(name, KIND_TYPEDEF, 0, false, t)
    }

    fn fwd(&mut self, name: &str) -> u32 {
        self.head(name, KIND_FWD, 0, false, 0)
    }

    fn agg(&mut self, kind: u32, name: &str, size: u32, members: &[M]) -> u32 {
        let kflag = members.iter().any(|m| m.3 != 0);
        let id = self.head(name, kind, members.len() as u32, kflag, size);
        for &(n, t, bits, bitfield) in members {
            let n = self.s(n);
            self.u32(n);
            self.u32(t);
            self.u32(if kflag { (bitfield << 24) | bits } else { bits });
        }
        id
    }

    fn strukt(&mut self, name: &str, size: u32, members: &[M]) -> u32 {
        self.agg(KIND_STRUCT, name, size, members)
    }

    fn union(&mut self, name: &str, size: u32, members: &[M]) -> u32 {
        self.agg(KIND_UNION, name, size, members)
    }

    /// A global function `ret name(params...)`.
    fn func(&mut self, name: &str, ret: u32, params: &[u32]) -> u32 {
        let proto = self.head("", KIND_FUNC_PROTO, params.len() as u32, false, ret);
        for &p in params {
            self.u32(0);
            self.u32(p);
        }
        self.head(name, KIND_FUNC, 1, false, proto)
    }

    fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&0xEB9F_u16.to_le_bytes());
        v.push(1); // version
        v.push(0); // flags
        for x in [
            24u32,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strs.len() as u32,
        ] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.extend_from_slice(&self.types);
        v.extend_from_slice(&self.strs);
        v
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal BTF reader (independent of btf-rs and of the code under test).

/// (kind, name, members as (name, bit offset)).
type RawType = (u32, String, Vec<(String, u32)>);

struct RawBtf {
    /// Per type id (index 0 = void).
    types: Vec<RawType>,
}

impl RawBtf {
    fn parse(b: &[u8]) -> RawBtf {
        let rd = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), 0xEB9F, "BTF magic");
        let hdr = rd(4) as usize;
        let (toff, tlen, soff) = (rd(8) as usize, rd(12) as usize, rd(16) as usize);
        let strs = &b[hdr + soff..];
        let name = |off: u32| {
            let s = &strs[off as usize..];
            String::from_utf8_lossy(&s[..s.iter().position(|&c| c == 0).unwrap()]).into_owned()
        };
        let mut types = vec![(0, String::new(), Vec::new())];
        let (mut p, end) = (hdr + toff, hdr + toff + tlen);
        while p < end {
            let (name_off, info) = (rd(p), rd(p + 4));
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kflag = info >> 31 == 1;
            p += 12;
            let mut members = Vec::new();
            let extra = match kind {
                1 | 14 | 17 => 4, // int, var, decl tag
                3 => 12,          // array
                4 | 5 => {
                    for i in 0..vlen {
                        let m = p + 12 * i;
                        let off = rd(m + 8);
                        let bits = if kflag { off & 0xff_ffff } else { off };
                        members.push((name(rd(m)), bits));
                    }
                    12 * vlen
                }
                6 | 13 => 8 * vlen,        // enum, func proto
                15 | 19 => 12 * vlen,      // datasec, enum64
                2 | 7..=12 | 16 | 18 => 0, // ptr, fwd, typedef, cv, func, float, type tag
                k => panic!("unknown BTF kind {k}"),
            };
            p += extra;
            types.push((kind, name(name_off), members));
        }
        RawBtf { types }
    }

    /// Byte offset of direct member `member` of the first complete struct named `st`.
    fn offset(&self, st: &str, member: &str) -> u32 {
        let (_, _, members) = self
            .types
            .iter()
            .find(|(k, n, m)| *k == KIND_STRUCT && n == st && !m.is_empty())
            .unwrap_or_else(|| panic!("no struct {st}"));
        let (_, bits) = members
            .iter()
            .find(|(n, _)| n == member)
            .unwrap_or_else(|| panic!("struct {st} has no direct member {member}"));
        assert_eq!(bits % 8, 0);
        bits / 8
    }

    fn has_func(&self, name: &str) -> bool {
        self.types
            .iter()
            .any(|(k, n, _)| *k == KIND_FUNC && n == name)
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn tempdir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "tsm-trace-btf-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

const HOST_VMLINUX: &str = "/sys/kernel/btf/vmlinux";

fn host_has_btf() -> bool {
    if Path::new(HOST_VMLINUX).exists() {
        true
    } else {
        crate::test_support::skip_unless_ci(&format!(
            "{HOST_VMLINUX} missing on this host (a kernel without CONFIG_DEBUG_INFO_BTF)"
        ));
        false
    }
}

fn field<'a>(r: &'a Resolution, name: &str) -> &'a FieldReport {
    r.field(name)
        .unwrap_or_else(|| panic!("no field report {name}: {:#?}", r.fields))
}

fn assert_resolved(r: &Resolution, name: &str, offset: u32, obj: &str) {
    let f = field(r, name);
    assert_eq!(f.offset, Some(offset), "{name}: {f:?}");
    assert_eq!(f.btf_object.as_deref(), Some(obj), "{name}: {f:?}");
    assert_eq!(f.reason, None, "{name}: {f:?}");
}

fn assert_unresolved(r: &Resolution, name: &str, needles: &[&str]) {
    let f = field(r, name);
    assert_eq!(f.offset, None, "{name}: {f:?}");
    let reason = f.reason.as_deref().expect("unresolved field has a reason");
    for n in needles {
        assert!(reason.contains(n), "{name}: reason {reason:?} lacks {n:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The host's vmlinux BTF

/// Host vmlinux only (an empty modules directory).
fn resolve_host(fns: &Functions) -> Option<Resolution> {
    if !host_has_btf() {
        return None;
    }
    let dir = tempdir("host");
    let sources = BtfSources {
        vmlinux: HOST_VMLINUX.into(),
        modules_dir: dir.clone(),
    };
    let r = resolve(&sources, fns).expect("host vmlinux BTF resolves");
    fs::remove_dir_all(dir).unwrap();
    Some(r)
}

#[test]
fn host_device_offsets_match_independent_parse() {
    let Some(r) = resolve_host(&Functions::DEFAULT) else {
        return;
    };
    let raw = RawBtf::parse(&fs::read(HOST_VMLINUX).unwrap());
    let kobj = raw.offset("device", "kobj");
    let name = raw.offset("kobject", "name");
    let pci_dev = raw.offset("pci_dev", "dev");
    // Known layout facts: struct device starts with its kobject, whose first member is the name.
    assert_eq!(kobj, 0);
    assert_eq!(name, 0);
    assert!(pci_dev > 0);

    // No patch functions on the host: both come from vmlinux by name.
    assert_resolved(&r, "device.kobj.name", kobj + name, "vmlinux");
    assert_resolved(&r, "pci_dev.dev", pci_dev, "vmlinux");
    assert_eq!(r.offsets.dev_name, kobj + name);
    assert_eq!(r.offsets.pci_dev_dev, pci_dev);
    assert_eq!(r.objects.len(), 1);
    assert_eq!(r.objects[0].name, "vmlinux");
    assert!(r.objects[0].types > 10_000, "{:?}", r.objects[0]);
}

/// Names no kernel defines, so the test holds on any host, with or without the patch.
const ABSENT_IOCTL: &str = "tsm_trace_test_absent_tsm_op_ioctl";
const ABSENT_ABORT: &str = "tsm_trace_test_absent_vdevice_abort";

#[test]
fn host_patch_fields_unresolved_naming_the_function() {
    let fns = Functions {
        tsm_op_ioctl: ABSENT_IOCTL,
        vdevice_abort: ABSENT_ABORT,
        ..Functions::DEFAULT
    };
    let Some(r) = resolve_host(&fns) else {
        return;
    };
    let raw = RawBtf::parse(&fs::read(HOST_VMLINUX).unwrap());
    assert!(!raw.has_func(ABSENT_IOCTL) && !raw.has_func(ABSENT_ABORT));
    let why = "not in vmlinux or any of 0 module BTFs";
    assert_unresolved(
        &r,
        "iommufd_ucmd.cmd",
        &[&format!("function {ABSENT_IOCTL}"), why],
    );
    assert_unresolved(
        &r,
        "iommufd_object.id",
        &[&format!("function {ABSENT_ABORT}"), why],
    );
    assert_eq!(r.offsets.ucmd_cmd, OFFSET_UNKNOWN);
    assert_eq!(r.offsets.obj_id, OFFSET_UNKNOWN);
    // Every field is reported exactly once (17 of the bind path, 8 of the PCI TSM
    // lifecycle, module.name, the VMM's argv (3), the UAPI op values); driver ops (none
    // given) are left out.
    assert_eq!(r.fields.len(), 30, "{:#?}", r.fields);
    assert_resolved(&r, "module.name", raw.offset("module", "name"), "vmlinux");
    // The VMM's argv: current->mm->arg_start..arg_end, from vmlinux (arg_start/arg_end sit
    // in an anonymous struct of mm_struct on recent kernels).
    assert_resolved(
        &r,
        "task_struct.mm",
        raw.offset("task_struct", "mm"),
        "vmlinux",
    );
    assert!(r.offsets.mm_arg_start != OFFSET_UNKNOWN && r.offsets.mm_arg_end != OFFSET_UNKNOWN);
    assert_eq!(r.offsets.mm_arg_end, r.offsets.mm_arg_start + 8);
    assert!(r.field("driver unbind argument").is_none());
    assert!(r.field("kvm.userspace_pid (driver_bind)").is_none());
    // kvm fields: resolved by name with a note naming the function, or unresolved naming it.
    if !raw.has_func("tsm_bind") {
        for name in ["kvm.userspace_pid (tsm_bind)", "kvm.stats_id (tsm_bind)"] {
            let f = field(&r, name);
            let text = f.note.as_deref().or(f.reason.as_deref()).unwrap();
            assert!(text.contains("function tsm_bind not in"), "{f:?}");
        }
    }
    // The summary has one line per field, in the documented shape.
    let lines = r.summary_lines();
    assert_eq!(lines.len(), r.fields.len());
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "UNRESOLVED iommufd_ucmd.cmd: function {ABSENT_IOCTL}"
        ))),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "resolved pci_dev.dev = {} (vmlinux)",
            r.offsets.pci_dev_dev
        ))),
        "{lines:#?}"
    );
}

#[test]
fn host_alternate_function_names_are_used() {
    let fns = Functions {
        tsm_op_ioctl: "iommufd_vdevice_tsm_req_ioctl",
        ..Functions::DEFAULT
    };
    let Some(r) = resolve_host(&fns) else {
        return;
    };
    assert_unresolved(
        &r,
        "iommufd_ucmd.cmd",
        &["function iommufd_vdevice_tsm_req_ioctl"],
    );
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn missing_vmlinux_is_a_clear_error() {
    let dir = tempdir("missing");
    let sources = BtfSources::in_dir(dir.join("nonexistent"));
    let err = resolve(&sources, &Functions::DEFAULT).unwrap_err();
    match &err {
        BtfError::VmlinuxMissing { path } => assert_eq!(path, &dir.join("nonexistent/vmlinux")),
        other => panic!("expected VmlinuxMissing, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("nonexistent/vmlinux") && msg.contains("does not exist"),
        "{msg}"
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn garbage_vmlinux_is_a_parse_error_and_missing_module_dir_an_error() {
    let dir = tempdir("garbage");
    fs::write(dir.join("vmlinux"), b"not BTF at all").unwrap();
    let err = resolve(&BtfSources::in_dir(&dir), &Functions::DEFAULT).unwrap_err();
    assert!(matches!(err, BtfError::VmlinuxParse { .. }), "{err:?}");
    assert!(
        err.to_string().contains("cannot parse vmlinux BTF"),
        "{err}"
    );

    fs::write(dir.join("vmlinux"), Enc::base().bytes()).unwrap();
    let sources = BtfSources {
        vmlinux: dir.join("vmlinux"),
        modules_dir: dir.join("no-such-dir"),
    };
    let err = resolve(&sources, &Functions::DEFAULT).unwrap_err();
    assert!(matches!(err, BtfError::ModulesDir { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-dir"), "{err}");
    fs::remove_dir_all(dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Synthetic vmlinux + modules: the stand-in module case.

/// Writes vmlinux, module `tsm_standin` (v5 names, its own `struct kvm`), module `tsm_drv` (a
/// `struct kvm` with a bitfield), and an unreadable module `broken`.
fn synthetic() -> PathBuf {
    let mut v = Enc::base();
    let u32_ = v.int("unsigned int", 4);
    let u64_ = v.int("long long unsigned int", 8);
    let char_ = v.int("char", 1);
    let cchar = v.konst(char_);
    let name_ptr = v.ptr(cchar);
    let void_ptr = v.ptr(0);
    let int_ = v.int_signed("int", 4);
    let stats_arr = v.array(char_, u32_, 48);
    // struct kobject { u64 pad; const char *name; }: name at 8.
    let kobject = v.strukt(
        "kobject",
        16,
        &[("pad", u64_, 0, 0), ("name", name_ptr, 64, 0)],
    );
    // struct device { u64 x; u64 y; struct kobject kobj; }: kobj at 16 (so dev_name = 24).
    let device = v.strukt(
        "device",
        32,
        &[
            ("x", u64_, 0, 0),
            ("y", u64_, 64, 0),
            ("kobj", kobject, 128, 0),
        ],
    );
    let device_ptr = v.ptr(device);
    // struct pci_dev { u64 a; union { u64 u1; struct { u32 b; struct device dev; }; }; }:
    // dev at 8 + 0 + 8 = 16, through an anonymous union and an anonymous struct.
    let inner = v.strukt("", 40, &[("b", u32_, 0, 0), ("dev", device, 64, 0)]);
    let un = v.union("", 40, &[("u1", u64_, 0, 0), ("", inner, 0, 0)]);
    // pci_dev.tsm at 48: a pointer to a forward-declared struct pci_tsm (completed by name).
    let pci_tsm_fwd = v.fwd("pci_tsm");
    let pci_tsm_fwd_ptr = v.ptr(pci_tsm_fwd);
    let pci_dev = v.strukt(
        "pci_dev",
        56,
        &[
            ("a", u64_, 0, 0),
            ("", un, 64, 0),
            ("tsm", pci_tsm_fwd_ptr, 384, 0),
        ],
    );
    let pci_dev_ptr = v.ptr(pci_dev);
    // The real struct kvm: userspace_pid (int) at 100, stats_id (char[48]) at 200.
    let kvm = v.strukt(
        "kvm",
        256,
        &[
            ("mm", void_ptr, 0, 0),
            ("userspace_pid", int_, 800, 0),
            ("stats_id", stats_arr, 1600, 0),
        ],
    );
    let kvm_ptr = v.ptr(kvm);
    // struct iommufd_object { u32 wait_cnt, users, type, id; }: id at 12.
    let object = v.strukt(
        "iommufd_object",
        16,
        &[
            ("wait_cnt", u32_, 0, 0),
            ("users", u32_, 32, 0),
            ("type", u32_, 64, 0),
            ("id", u32_, 96, 0),
        ],
    );
    // struct iommufd_device is only forward-declared in vmlinux (defined in tsm_standin).
    let idev_fwd = v.fwd("iommufd_device");
    let idev_ptr = v.ptr(idev_fwd);
    // struct iommufd_vdevice { obj @0; viommu @16; idev @24; virt_id @32 }.
    let vdevice = v.strukt(
        "iommufd_vdevice",
        40,
        &[
            ("obj", object, 0, 0),
            ("viommu", void_ptr, 128, 0),
            ("idev", idev_ptr, 192, 0),
            ("virt_id", u64_, 256, 0),
        ],
    );
    let _ = vdevice;
    v.func("pci_tsm_bind", u32_, &[pci_dev_ptr, kvm_ptr, u32_]);
    // struct tsm_dev { int id @0; struct device dev @8; }: the TSM's name at 8 + 24 = 32.
    let tsm_dev = v.strukt("tsm_dev", 48, &[("id", u32_, 0, 0), ("dev", device, 64, 0)]);
    let tsm_dev_ptr = v.ptr(tsm_dev);
    // struct pci_tdi { pdev @0; kvm @8; u32 tdi_id @16; }.
    let pci_tdi = v.strukt(
        "pci_tdi",
        24,
        &[
            ("pdev", pci_dev_ptr, 0, 0),
            ("kvm", kvm_ptr, 64, 0),
            ("tdi_id", u32_, 128, 0),
        ],
    );
    let pci_tdi_ptr = v.ptr(pci_tdi);
    // struct pci_tsm { pdev @0; dsm_dev @8; tsm_dev @16; tdi @24; }.
    v.strukt(
        "pci_tsm",
        32,
        &[
            ("pdev", pci_dev_ptr, 0, 0),
            ("dsm_dev", pci_dev_ptr, 64, 0),
            ("tsm_dev", tsm_dev_ptr, 128, 0),
            ("tdi", pci_tdi_ptr, 192, 0),
        ],
    );
    v.func("__pci_tsm_unbind", u32_, &[pci_dev_ptr, void_ptr]);
    // typedef struct { union { void *kernel; void *user; }; bool is_kernel:1; } sockptr_t;
    let bool_ = v.int("_Bool", 1);
    let sp_union = v.union(
        "",
        8,
        &[("kernel", void_ptr, 0, 0), ("user", void_ptr, 0, 0)],
    );
    let sp = v.strukt("", 16, &[("", sp_union, 0, 0), ("is_kernel", bool_, 64, 1)]);
    let sockptr = v.typedef("sockptr_t", sp);
    let u64_ptr = v.ptr(u64_);
    let long_ = v.int("long int", 8);
    v.func(
        "pci_tsm_guest_req",
        long_,
        &[pci_dev_ptr, u32_, sockptr, u64_, sockptr, u64_, u64_ptr],
    );

    // Module tsm_standin: v5 names, a stand-in struct kvm, types shared with vmlinux by id.
    let mut m = Enc::split(&v);
    let skvm = m.strukt(
        "kvm",
        64,
        &[
            ("pad", u64_, 0, 0),
            ("userspace_pid", int_, 64, 0),
            ("stats_id", stats_arr, 96, 0),
        ],
    );
    m.enumeration(
        "iommu_vdevice_tsm_op_type",
        &[
            ("IOMMU_VDEVICE_TSM_BIND", 1),
            ("IOMMU_VDEVICE_TSM_UNBIND", 2),
        ],
    );
    let skvm_ptr = m.ptr(skvm);
    let ucmd = m.strukt(
        "iommufd_ucmd",
        40,
        &[
            ("ictx", void_ptr, 0, 0),
            ("ubuffer", void_ptr, 64, 0),
            ("user_size", u32_, 128, 0),
            ("cmd", void_ptr, 192, 0),
            ("new_obj", void_ptr, 256, 0),
        ],
    );
    // Parameter type: typedef ucmd_ptr_t = const (volatile struct iommufd_ucmd *).
    let vucmd = m.volatile(ucmd);
    let ucmd_ptr = m.ptr(vucmd);
    let cptr = m.konst(ucmd_ptr);
    let ucmd_t = m.typedef("ucmd_ptr_t", cptr);
    m.strukt(
        "iommu_vdevice_tsm_op",
        16,
        &[
            ("size", u32_, 0, 0),
            ("type", u32_, 32, 0),
            ("flags", u32_, 64, 0),
            ("vdevice_id", u32_, 96, 0),
        ],
    );
    m.strukt(
        "iommufd_device",
        48,
        &[("ictx", void_ptr, 0, 0), ("dev", device_ptr, 320, 0)],
    );
    let object_ptr = m.ptr(object);
    m.func("iommufd_vdevice_tsm_op_ioctl", int_, &[ucmd_t]);
    m.func("tsm_bind", u32_, &[device_ptr, skvm_ptr, u64_]);
    m.func("iommufd_vdevice_abort", 0, &[object_ptr]);
    // A renamed tsm_bind of the same prototype (what `--symbol tsm_bind=` is for).
    m.func("tsm_bind_renamed", u32_, &[device_ptr, skvm_ptr, u64_]);

    // Module tsm_drv: a driver bind op whose struct kvm has a bitfield userspace_pid and a
    // stats_id that is no char array.
    let mut d = Enc::split(&v);
    let bkvm = d.strukt(
        "kvm",
        64,
        &[("userspace_pid", u32_, 0, 16), ("stats_id", u64_, 32, 0)],
    );
    let bkvm_ptr = d.ptr(bkvm);
    d.func("tsm_drv_bind", void_ptr, &[pci_dev_ptr, bkvm_ptr, u32_]);
    // Link ops: upstream-shaped unbind and guest_req, and a connect of the wrong shape.
    d.func("tsm_drv_unbind", 0, &[pci_tdi_ptr]);
    d.func(
        "tsm_drv_guest_req",
        long_,
        &[pci_tdi_ptr, u32_, sockptr, u64_, sockptr, u64_, u64_ptr],
    );
    d.func("tsm_drv_connect", u32_, &[u32_]);
    d.func("tsm_drv_probe", pci_dev_ptr, &[tsm_dev_ptr, pci_dev_ptr]);

    let dir = tempdir("synthetic");
    fs::write(dir.join("vmlinux"), v.bytes()).unwrap();
    fs::write(dir.join("tsm_standin"), m.bytes()).unwrap();
    fs::write(dir.join("tsm_drv"), d.bytes()).unwrap();
    fs::write(dir.join("broken"), b"\x9f\xeb\x01\x00garbage").unwrap();
    dir
}

const SYNTH_FNS: Functions<'static> = Functions {
    tsm_op_ioctl: "iommufd_vdevice_tsm_op_ioctl",
    probed: &[
        (ProbeId::TsmOpIoctl, "iommufd_vdevice_tsm_op_ioctl"),
        (ProbeId::TsmBind, "tsm_bind"),
        (ProbeId::TsmUnbind, "tsm_unbind"),
        (ProbeId::VdeviceAbort, "iommufd_vdevice_abort"),
        (ProbeId::PciTsmGuestReq, "pci_tsm_guest_req"),
        (ProbeId::DriverBind, "tsm_drv_bind"),
        (ProbeId::DriverConnect, "tsm_drv_connect"),
    ],
    driver_bind: Some("tsm_drv_bind"),
    driver_ops: &[
        (ProbeId::DriverBind, "tsm_drv_bind"),
        (ProbeId::DriverUnbind, "tsm_drv_unbind"),
        (ProbeId::DriverGuestReq, "tsm_drv_guest_req"),
        (ProbeId::DriverConnect, "tsm_drv_connect"),
        (ProbeId::DriverProbe, "tsm_drv_probe"),
    ],
    ..Functions::DEFAULT
};

#[test]
fn synthetic_lifecycle_fields_and_argument_locations() {
    use tsm_trace_common::{ARG_PCI_TDI, ArgLoc, GuestReqArgs};
    let dir = synthetic();
    let r = resolve(&BtfSources::in_dir(&dir), &SYNTH_FNS).unwrap();
    fs::remove_dir_all(&dir).unwrap();
    let o = &r.offsets;
    assert_resolved(&r, "pci_dev.tsm", 48, "vmlinux");
    assert_resolved(&r, "pci_tsm.tsm_dev", 16, "vmlinux");
    assert_resolved(&r, "pci_tsm.tdi", 24, "vmlinux");
    assert_resolved(&r, "tsm_dev.dev.kobj.name", 32, "vmlinux");
    assert_resolved(&r, "pci_tdi.pdev", 0, "vmlinux");
    assert_resolved(&r, "pci_tdi.kvm", 8, "vmlinux");
    assert_resolved(&r, "pci_tdi.tdi_id", 16, "vmlinux");
    // SysV: two 16-byte sockptr_t by value; the second no longer fits the registers.
    let want = GuestReqArgs {
        scope: 1,
        in_len: 4,
        out_len: 5,
        tsm_code: ArgLoc::STACK + 24,
    };
    assert_eq!(o.guest_req, want);
    assert_eq!(o.drv_guest_req, want);
    assert_eq!(o.drv_unbind_arg, ARG_PCI_TDI);
    let note = field(&r, "pci_tsm_guest_req arguments")
        .note
        .clone()
        .unwrap();
    assert_eq!(
        note,
        "scope, in_len, out_len, tsm_code at rsi, r8, r9, stack+24"
    );
    // Prototype checks: the right shapes pass, the wrong one is named.
    let check = |p: ProbeId| &r.prototypes.iter().find(|c| c.probe == p).unwrap().result;
    assert_eq!(check(ProbeId::DriverBind), &Ok(()));
    assert_eq!(check(ProbeId::DriverUnbind), &Ok(()));
    assert_eq!(check(ProbeId::DriverGuestReq), &Ok(()));
    assert_eq!(check(ProbeId::DriverProbe), &Ok(()));
    let Err(why) = check(ProbeId::DriverConnect) else {
        panic!("wrong shape must be refused")
    };
    assert_eq!(
        why,
        "tsm_drv_connect(scalar) is not the shape of the driver_connect op (struct pci_dev *)"
    );
}

#[test]
fn symbol_overrides_must_have_the_default_functions_prototype() {
    let dir = synthetic();
    let check = |func: &'static str| {
        let overrides = [(ProbeId::TsmBind, func, &["tsm_bind"][..])];
        let fns = Functions {
            tsm_bind: func,
            overrides: &overrides,
            ..SYNTH_FNS
        };
        let r = resolve(&BtfSources::in_dir(&dir), &fns).unwrap();
        r.prototypes
            .iter()
            .find(|c| c.probe == ProbeId::TsmBind)
            .map(|c| c.result.clone())
    };
    let same = check("tsm_bind_renamed");
    let other = check("pci_tsm_bind");
    let absent = check("no_such_function");
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(same, Some(Ok(())));
    assert_eq!(
        other,
        Some(Err("--symbol tsm_bind=pci_tsm_bind: pci_tsm_bind(struct pci_dev *, struct kvm *, scalar) is not the prototype of tsm_bind(struct device *, struct kvm *, scalar), the function tsm_bind probes".into()))
    );
    let Some(Err(why)) = absent else {
        panic!("an override BTF does not have cannot be checked: {absent:?}")
    };
    assert!(why.contains("no_such_function is not in BTF"), "{why}");
}

#[test]
fn synthetic_split_btf_resolves_through_function_prototypes() {
    let dir = synthetic();
    let r = resolve(&BtfSources::in_dir(&dir), &SYNTH_FNS).unwrap();
    fs::remove_dir_all(&dir).unwrap();
    let o = &r.offsets;

    // Through a typedef/const/volatile chain in the module.
    assert_resolved(&r, "iommufd_ucmd.cmd", 24, "tsm_standin");
    assert!(
        field(&r, "iommufd_ucmd.cmd")
            .note
            .as_deref()
            .unwrap()
            .contains("iommufd_vdevice_tsm_op_ioctl")
    );
    // v5's member `type`.
    assert_resolved(&r, "iommu_vdevice_tsm_op.op", 4, "tsm_standin");
    assert_resolved(&r, "iommu_vdevice_tsm_op.flags", 8, "tsm_standin");
    assert_resolved(&r, "iommu_vdevice_tsm_op.vdevice_id", 12, "tsm_standin");
    // The module's function refers to vmlinux's (deduplicated) struct iommufd_object.
    assert_resolved(&r, "iommufd_object.id", 12, "vmlinux");
    assert_resolved(&r, "iommufd_vdevice.obj", 0, "vmlinux");
    assert_resolved(&r, "iommufd_vdevice.virt_id", 32, "vmlinux");
    assert_resolved(&r, "iommufd_vdevice.idev", 24, "vmlinux");
    // Forward declaration in vmlinux completed from the module.
    assert_resolved(&r, "iommufd_device.dev", 40, "tsm_standin");
    // device.kobj (16) + kobject.name (8), the device type taken from tsm_bind's prototype.
    assert_resolved(&r, "device.kobj.name", 24, "vmlinux");
    assert!(
        field(&r, "device.kobj.name")
            .note
            .as_deref()
            .unwrap()
            .contains("tsm_bind() parameter 0 in tsm_standin")
    );
    // Through an anonymous union and an anonymous struct.
    assert_resolved(&r, "pci_dev.dev", 16, "vmlinux");
    // Each function's own struct kvm.
    assert_resolved(&r, "kvm.userspace_pid (tsm_bind)", 8, "tsm_standin");
    assert_resolved(&r, "kvm.stats_id (tsm_bind)", 12, "tsm_standin");
    assert_resolved(&r, "kvm.userspace_pid (pci_tsm_bind)", 100, "vmlinux");
    assert_resolved(&r, "kvm.stats_id (pci_tsm_bind)", 200, "vmlinux");
    assert_unresolved(
        &r,
        "kvm.userspace_pid (driver_bind)",
        &["userspace_pid", "bitfield"],
    );
    assert_unresolved(
        &r,
        "kvm.stats_id (driver_bind)",
        &["kvm.stats_id", "long long unsigned int is not a char array"],
    );
    // kvm_destroy_vm is nowhere: struct kvm by name, vmlinux's (no `kvm` module), and said so.
    assert_resolved(&r, "kvm.userspace_pid (kvm_destroy_vm)", 100, "vmlinux");
    let note = field(&r, "kvm.stats_id (kvm_destroy_vm)")
        .note
        .clone()
        .unwrap();
    assert!(
        note.contains("function kvm_destroy_vm not in BTF")
            && note.contains("by name from vmlinux"),
        "{note}"
    );

    assert_eq!(
        (
            o.ucmd_cmd,
            o.tsm_op_op,
            o.tsm_op_flags,
            o.tsm_op_vdevice_id,
            o.obj_id
        ),
        (24, 4, 8, 12, 12)
    );
    assert_eq!(
        (o.vdev_obj, o.vdev_virt_id, o.vdev_idev, o.idev_dev),
        (0, 32, 24, 40)
    );
    assert_eq!((o.dev_name, o.pci_dev_dev), (24, 16));
    assert_eq!(
        o.kvm_tsm_bind,
        KvmOffsets {
            userspace_pid: 8,
            stats_id: 12,
            userspace_pid_kind: IntKind::of(4, true),
            stats_id_len: 48,
        }
    );
    assert_eq!(
        o.kvm_pci_tsm_bind,
        KvmOffsets {
            userspace_pid: 100,
            stats_id: 200,
            userspace_pid_kind: IntKind::of(4, true),
            stats_id_len: 48,
        }
    );
    assert_eq!(o.kvm_driver_bind, KvmOffsets::UNKNOWN);
    assert_eq!(
        o.kvm_destroy_vm,
        KvmOffsets {
            userspace_pid: 100,
            stats_id: 200,
            userspace_pid_kind: IntKind::of(4, true),
            stats_id_len: 48,
        }
    );
    assert_eq!(
        r.unresolved().map(|f| f.field).collect::<Vec<_>>(),
        // The synthetic vmlinux has no struct module, task_struct or mm_struct.
        [
            "kvm.userspace_pid (driver_bind)",
            "kvm.stats_id (driver_bind)",
            "module.name",
            "task_struct.mm",
            "mm_struct.arg_start",
            "mm_struct.arg_end",
            // tsm_unbind is probed but not in the synthetic BTF.
            "return tsm_unbind"
        ]
    );

    // Objects: vmlinux, then modules by name; the broken one reported, not fatal.
    let names: Vec<&str> = r.objects.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["vmlinux", "broken", "tsm_drv", "tsm_standin"]);
    assert!(r.objects[1].error.is_some());
    assert!(
        r.objects
            .iter()
            .filter(|o| o.name != "broken")
            .all(|o| o.error.is_none() && o.types > 0)
    );
    let lines = r.summary_lines();
    assert!(lines.contains(&"resolved iommufd_ucmd.cmd = 24 (tsm_standin) [via iommufd_vdevice_tsm_op_ioctl() parameter 0 in tsm_standin]".to_string()), "{lines:#?}");
    assert!(lines.iter().any(|l| l.starts_with("UNRESOLVED kvm.userspace_pid (driver_bind): member userspace_pid of struct kvm is a bitfield")), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.starts_with("unreadable BTF broken")),
        "{lines:#?}"
    );
}

#[test]
fn synthetic_missing_functions_name_the_function_and_module_count() {
    let dir = synthetic();
    let fns = Functions {
        tsm_op_ioctl: "no_such_ioctl",
        vdevice_abort: "no_such_abort",
        ..SYNTH_FNS
    };
    let r = resolve(&BtfSources::in_dir(&dir), &fns).unwrap();
    fs::remove_dir_all(&dir).unwrap();
    assert_unresolved(
        &r,
        "iommufd_ucmd.cmd",
        &["function no_such_ioctl not in vmlinux or any of 2 module BTFs (1 unreadable)"],
    );
    assert_unresolved(&r, "iommufd_object.id", &["function no_such_abort not in"]);
    // The UAPI struct and iommufd_vdevice are still found by name in any object.
    assert_resolved(&r, "iommu_vdevice_tsm_op.op", 4, "tsm_standin");
    assert_resolved(&r, "iommufd_vdevice.virt_id", 32, "vmlinux");
}

#[test]
fn synthetic_wrong_prototype_is_reported() {
    let dir = synthetic();
    // tsm_bind's parameter 2 is a u64, not a pointer; kvm_destroy_vm -> a function with 1 param.
    let fns = Functions {
        tsm_op_ioctl: "tsm_bind",
        kvm_destroy_vm: "iommufd_vdevice_tsm_op_ioctl",
        ..SYNTH_FNS
    };
    let r = resolve(&BtfSources::in_dir(&dir), &fns).unwrap();
    fs::remove_dir_all(&dir).unwrap();
    // tsm_bind's parameter 0 is struct device, which has no member cmd.
    assert_unresolved(&r, "iommufd_ucmd.cmd", &["struct device has no member cmd"]);
    // Parameter 0 of the ioctl is iommufd_ucmd: no userspace_pid (no fallback by name).
    assert_unresolved(
        &r,
        "kvm.userspace_pid (kvm_destroy_vm)",
        &["struct iommufd_ucmd has no member userspace_pid"],
    );
}

/// A kernel without PCI TSM (6.1): no probe reads the PCI TSM context, so its fields are not
/// reported at all (rather than "unresolved"), and nothing else changes.
#[test]
fn synthetic_without_pci_tsm_leaves_lifecycle_fields_out() {
    let dir = synthetic();
    // A driver bind op alone (as on 6.1 with --driver-bind) needs no PCI TSM context either.
    let fns = Functions {
        pci_tsm_unbind_any: None,
        pci_tsm_guest_req: None,
        driver_bind: Some("tsm_drv_bind"),
        driver_ops: &[(ProbeId::DriverBind, "tsm_drv_bind")],
        ..Functions::DEFAULT
    };
    let r = resolve(&BtfSources::in_dir(&dir), &fns).unwrap();
    fs::remove_dir_all(&dir).unwrap();
    for f in [
        "pci_dev.tsm",
        "pci_tsm.tdi",
        "tsm_dev.dev.kobj.name",
        "pci_tdi.kvm",
        "pci_tsm_guest_req arguments",
    ] {
        assert!(
            r.field(f).is_none(),
            "{f} must be left out: {:?}",
            r.field(f)
        );
    }
    assert_eq!(r.offsets.pci_dev_tsm, OFFSET_UNKNOWN);
    assert_eq!(r.offsets.guest_req, tsm_trace_common::GuestReqArgs::UNKNOWN);
}

mod types;
