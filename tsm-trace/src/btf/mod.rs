//! BTF: resolve struct offsets at run time (vmlinux + module split BTF).
//!
//! Field names and offsets differ between kernels and between versions of the patch series, so
//! nothing here is hard-coded. [`resolve`] loads vmlinux BTF and every module's split BTF
//! (`/sys/kernel/btf/<module>`, stacked on vmlinux) and fills an [`Offsets`] for the eBPF
//! programs, together with a per-field report of where each offset came from or why it could not
//! be resolved.
//!
//! Rules that matter on real kernels:
//! - A probed function's argument types are taken from that function's own BTF prototype, in the
//!   BTF object that defines the function. A stand-in module may define its own `struct kvm` that
//!   coexists with the real one; a name lookup in vmlinux would give the wrong layout.
//! - Types a module shares with vmlinux are deduplicated into vmlinux BTF, so a module's split
//!   BTF refers to vmlinux type ids; the owner of a type is decided by its id range.
//! - Member lookup descends into anonymous structs/unions and through typedef/const/volatile/
//!   restrict/type-tag chains; a forward declaration is completed by name, preferring the object
//!   it was found in.
//!
//! Why this resolver is ours and the parsing is not: btf-rs parses vmlinux and split BTF (the
//! format work a crate does better); what is left here is policy no crate offers — which BTF
//! object a probed function lives in, its own prototype as the source of argument types, id
//! ranges deciding a type's owner, and a report per field saying where its offset came from or
//! why there is none. aya's own BTF code relocates CO-RE accesses at load time; it does not
//! answer "is `kvm.stats_id` reachable through `tsm_bind`'s prototype in module X".

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use btf_rs::{Btf, BtfType, Struct, Type};
use tsm_trace_common::{KvmOffsets, OFFSET_UNKNOWN, Offsets};
use types::Want;

use crate::events::Probe;

/// Where BTF comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BtfSources {
    /// Base (vmlinux) BTF.
    pub vmlinux: PathBuf,
    /// Directory of module split BTF: every file in it except `vmlinux` is one module's BTF.
    pub modules_dir: PathBuf,
}

impl BtfSources {
    /// `<dir>/vmlinux` plus the modules in `<dir>` (the layout of `/sys/kernel/btf`).
    pub fn in_dir(dir: impl AsRef<Path>) -> BtfSources {
        let dir = dir.as_ref();
        BtfSources {
            vmlinux: dir.join("vmlinux"),
            modules_dir: dir.to_path_buf(),
        }
    }
}

impl Default for BtfSources {
    fn default() -> Self {
        BtfSources::in_dir("/sys/kernel/btf")
    }
}

/// The kernel symbol names actually probed (callers may pass alternates named with
/// `--symbol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Functions<'a> {
    /// `int (struct iommufd_ucmd *)`: the vdevice TSM ioctl handler.
    pub tsm_op_ioctl: &'a str,
    /// `int (struct device *, struct kvm *, u64)`.
    pub tsm_bind: &'a str,
    /// `void (struct iommufd_object *)`: vdevice teardown.
    pub vdevice_abort: &'a str,
    /// `int (struct pci_dev *, struct kvm *, u32)`.
    pub pci_tsm_bind: &'a str,
    /// A TSM driver's bind op `(struct pci_dev *, struct kvm *, u32)`; `None`: not probed, its
    /// fields are left out of the report.
    pub driver_bind: Option<&'a str>,
    /// `void (struct kvm *)`.
    pub kvm_destroy_vm: &'a str,
    /// `int __pci_tsm_unbind(struct pci_dev *, void *)`: its prototype gives `struct pci_dev`
    /// for the PCI TSM context fields (`pci_dev.tsm`, `pci_tsm.*`, `pci_tdi.*`). `None`: no
    /// probe reads that context (a kernel without PCI TSM), so those fields are left out.
    pub pci_tsm_unbind_any: Option<&'a str>,
    /// `ssize_t pci_tsm_guest_req(struct pci_dev *, scope, sockptr_t, size_t, sockptr_t,
    /// size_t, u64 *)`; `None`: not probed, its argument locations are left out.
    pub pci_tsm_guest_req: Option<&'a str>,
    /// The TSM driver ops that will be probed: each prototype is checked against its op.
    pub driver_ops: &'a [(Probe, &'a str)],
    /// Every function a kprobe will be attached to, by probe (compiler suffixes dropped): its
    /// return type is taken from its own prototype.
    pub probed: &'a [(Probe, &'a str)],
}

impl Functions<'_> {
    /// The function probed for driver op `probe`, if any.
    pub fn driver_op(&self, probe: Probe) -> Option<&str> {
        self.driver_ops
            .iter()
            .find(|(p, _)| *p == probe)
            .map(|(_, f)| *f)
    }
}

impl Functions<'static> {
    /// The names in the v2 patch and upstream.
    pub const DEFAULT: Functions<'static> = Functions {
        tsm_op_ioctl: "iommufd_vdevice_tsm_op_ioctl",
        tsm_bind: "tsm_bind",
        vdevice_abort: "iommufd_vdevice_abort",
        pci_tsm_bind: "pci_tsm_bind",
        driver_bind: None,
        kvm_destroy_vm: "kvm_destroy_vm",
        pci_tsm_unbind_any: Some("__pci_tsm_unbind"),
        pci_tsm_guest_req: Some("pci_tsm_guest_req"),
        driver_ops: &[],
        probed: &[],
    };
}

impl Default for Functions<'static> {
    fn default() -> Self {
        Functions::DEFAULT
    }
}

/// Fatal BTF problems. A module whose BTF cannot be read is not fatal (see [`ObjectReport`]).
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "vmlinux BTF {path} does not exist (kernel built without CONFIG_DEBUG_INFO_BTF, or wrong path)"
    )]
    VmlinuxMissing { path: PathBuf },
    #[error("cannot read vmlinux BTF {path}: {cause}")]
    VmlinuxRead { path: PathBuf, cause: io::Error },
    #[error("cannot parse vmlinux BTF {path}: {cause}")]
    VmlinuxParse { path: PathBuf, cause: btf_rs::Error },
    #[error("cannot list module BTF directory {path}: {cause}")]
    ModulesDir { path: PathBuf, cause: io::Error },
}

/// How one [`Offsets`] field was resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldReport {
    /// e.g. `"iommufd_ucmd.cmd"`, `"kvm.userspace_pid (tsm_bind)"`.
    pub field: &'static str,
    /// Byte offset, `None` if unresolved.
    pub offset: Option<u32>,
    /// BTF object holding the struct the offset is in: `"vmlinux"` or a module name.
    pub btf_object: Option<String>,
    /// Why the field is unresolved (`None` when resolved).
    pub reason: Option<String>,
    /// For a resolved field: where the struct was taken from (a function's prototype, or a
    /// fallback by name).
    pub note: Option<String>,
}

impl FieldReport {
    pub fn is_resolved(&self) -> bool {
        self.offset.is_some()
    }
}

/// One BTF object that was (or could not be) loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectReport {
    /// `"vmlinux"` or the module name.
    pub name: String,
    pub path: PathBuf,
    /// Number of types the object itself defines (0 if it could not be loaded).
    pub types: u32,
    /// Why the object could not be loaded.
    pub error: Option<String>,
}

/// Result of [`resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub offsets: Offsets,
    pub fields: Vec<FieldReport>,
    /// Driver ops whose prototype was checked (a mismatch keeps the probe detached).
    pub prototypes: Vec<PrototypeCheck>,
    /// vmlinux first, then modules in name order.
    pub objects: Vec<ObjectReport>,
    /// What BTF shows of the patch series and of PCI TSM (see [`crate::generation`]).
    pub patch: PatchFacts,
}

impl Resolution {
    pub fn unresolved(&self) -> impl Iterator<Item = &FieldReport> {
        self.fields.iter().filter(|f| f.offset.is_none())
    }

    /// The report of one field by its name, e.g. `"pci_dev.dev"`.
    pub fn field(&self, name: &str) -> Option<&FieldReport> {
        self.fields.iter().find(|f| f.field == name)
    }

    /// One line per field (and one per unreadable module BTF), for the startup report:
    /// `resolved iommufd_ucmd.cmd = 24 (tsm_standin)` /
    /// `UNRESOLVED kvm.stats_id (tsm_bind): <reason>`.
    pub fn summary_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .fields
            .iter()
            .map(|f| match f.offset {
                Some(off) => {
                    // Return types and UAPI values are described by their note, not a number.
                    let value = if f.field.starts_with("return ") || f.field.ends_with(" values") {
                        String::new()
                    } else {
                        format!(" = {off}")
                    };
                    let mut s = format!(
                        "resolved {}{value} ({})",
                        f.field,
                        f.btf_object.as_deref().unwrap_or("?")
                    );
                    if let Some(note) = &f.note {
                        s.push_str(&format!(" [{note}]"));
                    }
                    s
                }
                None => format!(
                    "UNRESOLVED {}: {}",
                    f.field,
                    f.reason.as_deref().unwrap_or("unknown reason")
                ),
            })
            .collect();
        for o in &self.objects {
            if let Some(e) = &o.error {
                lines.push(format!(
                    "unreadable BTF {} ({}): {e}",
                    o.name,
                    o.path.display()
                ));
            }
        }
        lines
    }
}

/// Loads vmlinux and module BTF from `sources` and resolves every offset the probes need.
pub fn resolve(sources: &BtfSources, fns: &Functions) -> Result<Resolution, BtfError> {
    let (objs, objects) = load(sources)?;
    let (offsets, fields, prototypes) = resolve_fields(&objs, fns);
    Ok(Resolution {
        offsets,
        fields,
        prototypes,
        objects,
        patch: generation::facts(&objs, fns),
    })
}

// ---------------------------------------------------------------------------------------------
// Loading

struct Obj {
    name: String,
    btf: Btf,
    /// First type id defined by this object (`None` for vmlinux).
    split_start: Option<u32>,
}

struct Objects {
    /// `[0]` is vmlinux, then modules by name.
    list: Vec<Obj>,
    unreadable: usize,
}

fn load(sources: &BtfSources) -> Result<(Objects, Vec<ObjectReport>), BtfError> {
    let path = &sources.vmlinux;
    // Prefer the mmap backend (parses lazily: a few MiB instead of ~45 MiB of peak RSS for a
    // 7.x vmlinux); sysfs supports mmap of vmlinux BTF only on newer kernels, so fall back to
    // reading and parsing the whole file.
    let vmlinux = match Btf::from_file_with_backend(path, btf_rs::Backend::Mmap) {
        Ok(b) => b,
        Err(_) if let Ok(b) = mapped_copy(path) => b,
        Err(_) => {
            let bytes = crate::files::read_capped(path, crate::files::cap::VMLINUX_BTF).map_err(
                |cause| {
                    if cause.kind() == io::ErrorKind::NotFound {
                        BtfError::VmlinuxMissing { path: path.clone() }
                    } else {
                        BtfError::VmlinuxRead {
                            path: path.clone(),
                            cause,
                        }
                    }
                },
            )?;
            Btf::from_bytes(&bytes).map_err(|cause| BtfError::VmlinuxParse {
                path: path.clone(),
                cause,
            })?
        }
    };
    let (_, end) = vmlinux.base().type_id_range();
    let mut reports = vec![ObjectReport {
        name: "vmlinux".into(),
        path: path.clone(),
        types: end,
        error: None,
    }];

    let dir = &sources.modules_dir;
    let entries = fs::read_dir(dir).map_err(|cause| BtfError::ModulesDir {
        path: dir.clone(),
        cause,
    })?;
    let mut modules: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|cause| BtfError::ModulesDir {
            path: dir.clone(),
            cause,
        })?;
        let p = entry.path();
        // Skip vmlinux itself, whatever the base path is.
        if entry.file_name() == "vmlinux" || same_file(&p, path) {
            continue;
        }
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        modules.push((entry.file_name().to_string_lossy().into_owned(), p));
    }
    modules.sort();

    let mut list = vec![Obj {
        name: "vmlinux".into(),
        btf: vmlinux,
        split_start: None,
    }];
    let mut unreadable = 0;
    for (name, p) in modules {
        let loaded = crate::files::read_capped(&p, crate::files::cap::MODULE_BTF)
            .map_err(|e| format!("read failed: {e}"))
            .and_then(|b| {
                Btf::from_split_bytes(&b, &list[0].btf)
                    .map_err(|e| format!("not split BTF on top of vmlinux: {e}"))
            });
        match loaded {
            Ok(btf) => {
                let (start, end) = btf.split().map(|s| s.type_id_range()).unwrap_or((1, 0));
                reports.push(ObjectReport {
                    name: name.clone(),
                    path: p,
                    types: (end + 1).saturating_sub(start),
                    error: None,
                });
                list.push(Obj {
                    name,
                    btf,
                    split_start: Some(start),
                });
            }
            Err(e) => {
                unreadable += 1;
                reports.push(ObjectReport {
                    name,
                    path: p,
                    types: 0,
                    error: Some(e),
                });
            }
        }
    }
    Ok((Objects { list, unreadable }, reports))
}

/// vmlinux BTF copied into an anonymous memory file and parsed lazily from a mapping of it:
/// where sysfs cannot map vmlinux BTF (6.1), reading and parsing it whole peaks at ~45 MiB
/// of RSS (measured by the storm suite on 6.1); the copy only costs the pages the lazy
/// parse touches. Any failure (no memfd_create, no /proc) falls back to the whole read.
fn mapped_copy(path: &Path) -> io::Result<Btf> {
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, FromRawFd};
    let src = fs::File::open(path)?;
    // SAFETY: memfd_create takes a NUL-terminated name; the fd returned is ours alone.
    let fd = unsafe { libc::memfd_create(c"tsm-trace-vmlinux-btf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor owned by nothing else.
    let mut mem = unsafe { fs::File::from_raw_fd(fd) };
    let cap = crate::files::cap::VMLINUX_BTF;
    let mut buf = vec![0u8; 64 << 10];
    let mut src = src.take(cap + 1);
    let mut total = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > cap {
            return Err(crate::files::too_large(path, cap));
        }
        mem.write_all(&buf[..n])?;
    }
    drop(buf);
    Btf::from_file_with_backend(
        format!("/proc/self/fd/{}", mem.as_raw_fd()),
        btf_rs::Backend::Mmap,
    )
    .map_err(|e| io::Error::other(e.to_string()))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Type walking

/// A type id within one object's BTF (a module's BTF also resolves vmlinux ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TypeRef {
    obj: usize,
    id: u32,
}

/// A struct or union found in BTF.
struct Agg {
    at: TypeRef,
    name: String,
    st: Struct,
}

const MAX_CHAIN: usize = 64;

impl Objects {
    fn btf(&self, r: TypeRef) -> &Btf {
        &self.list[r.obj].btf
    }

    /// Name of the object that defines type `r` (module ids start after vmlinux's).
    fn owner(&self, r: TypeRef) -> &str {
        let o = &self.list[r.obj];
        match o.split_start {
            Some(start) if r.id >= start => &o.name,
            _ => "vmlinux",
        }
    }

    fn obj_index(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|o| o.name == name)
    }

    /// Objects to search: `prefer` first, then vmlinux, then every other module.
    fn order(&self, prefer: &[usize]) -> Vec<usize> {
        let mut v: Vec<usize> = Vec::with_capacity(self.list.len());
        for i in prefer.iter().copied().chain(0..self.list.len()) {
            if !v.contains(&i) {
                v.push(i);
            }
        }
        v
    }

    /// "vmlinux or any of N module BTFs" (for reasons).
    fn searched(&self) -> String {
        let n = self.list.len() - 1;
        let mut s = format!(
            "vmlinux or any of {n} module BTF{}",
            if n == 1 { "" } else { "s" }
        );
        if self.unreadable > 0 {
            s.push_str(&format!(" ({} unreadable)", self.unreadable));
        }
        s
    }

    /// Ids of the types named `name` that object `obj` itself defines (for a module: its split
    /// section only, not vmlinux).
    fn own_ids(&self, obj: usize, name: &str) -> Vec<u32> {
        let o = &self.list[obj];
        let r = match o.btf.split() {
            Some(split) => split.resolve_ids_by_name(name),
            None => o.btf.resolve_ids_by_name(name),
        };
        r.unwrap_or_default()
    }

    fn find_func(&self, name: &str) -> Option<TypeRef> {
        (0..self.list.len()).find_map(|obj| {
            self.own_ids(obj, name)
                .into_iter()
                .map(|id| TypeRef { obj, id })
                .find(|&r| matches!(self.btf(r).resolve_type_by_id(r.id), Ok(Type::Func(_))))
        })
    }

    /// Complete structs (or unions) named `name`, searching objects in `order`.
    fn find_structs(&self, name: &str, order: &[usize]) -> Vec<TypeRef> {
        let mut v = Vec::new();
        for &obj in order {
            for id in self.own_ids(obj, name) {
                let r = TypeRef { obj, id };
                if matches!(
                    self.btf(r).resolve_type_by_id(id),
                    Ok(Type::Struct(_) | Type::Union(_))
                ) {
                    v.push(r);
                }
            }
        }
        v
    }

    fn ty(&self, r: TypeRef) -> Result<Type, String> {
        self.btf(r)
            .resolve_type_by_id(r.id)
            .map_err(|e| format!("bad type id {} in {}: {e}", r.id, self.list[r.obj].name))
    }

    fn name_of(&self, r: TypeRef, t: &dyn BtfType) -> String {
        self.btf(r).resolve_name(t).unwrap_or_default()
    }

    fn describe(&self, r: TypeRef, t: &Type) -> String {
        let named = |kind: &str, t: &dyn BtfType| {
            let n = self.name_of(r, t);
            if n.is_empty() {
                format!("anonymous {kind}")
            } else {
                format!("{kind} {n}")
            }
        };
        match t {
            Type::Struct(s) => named("struct", s),
            Type::Union(u) => named("union", u),
            Type::Fwd(f) => named("forward declaration", f),
            Type::Int(i) => named("int", i),
            Type::Enum(e) => named("enum", e),
            Type::Ptr(_) => "a pointer".into(),
            other => other.name().into(),
        }
    }

    /// Skips typedef/const/volatile/restrict/type-tag.
    fn strip(&self, mut r: TypeRef) -> Result<(TypeRef, Type), String> {
        for _ in 0..MAX_CHAIN {
            let t = self.ty(r)?;
            let next = match &t {
                Type::Typedef(x) => x.get_type_id(),
                Type::Const(x) | Type::Volatile(x) | Type::Restrict(x) => x.get_type_id(),
                Type::TypeTag(x) => x.get_type_id(),
                _ => return Ok((r, t)),
            };
            match next {
                Some(id) => r.id = id,
                None => return Ok((r, t)),
            }
        }
        Err(format!(
            "type chain from id {} in {} is too long",
            r.id, self.list[r.obj].name
        ))
    }

    /// `r` (after modifiers) as a complete struct/union; a forward declaration is completed by
    /// name, preferring the object it was seen in.
    fn as_struct(&self, r: TypeRef) -> Result<Agg, String> {
        let (r, t) = self.strip(r)?;
        match t {
            Type::Struct(st) | Type::Union(st) => Ok(Agg {
                at: r,
                name: self.name_of(r, &st),
                st,
            }),
            Type::Fwd(f) => {
                let name = self.name_of(r, &f);
                let found = self.find_structs(&name, &self.order(&[r.obj]));
                match found.first() {
                    Some(&at) => self.as_struct(at),
                    None => Err(format!(
                        "struct {name} is only declared (forward), and not defined in {}",
                        self.searched()
                    )),
                }
            }
            other => Err(format!("{} is not a struct", self.describe(r, &other))),
        }
    }

    /// `r` must be a pointer to a struct.
    fn deref_struct(&self, r: TypeRef) -> Result<Agg, String> {
        let (r, t) = self.strip(r)?;
        match t {
            Type::Ptr(p) => match p.get_type_id() {
                Some(id) => self.as_struct(TypeRef { obj: r.obj, id }),
                None => Err("pointer without a target type".into()),
            },
            other => Err(format!(
                "{} is not a pointer to a struct",
                self.describe(r, &other)
            )),
        }
    }

    /// The struct that parameter `idx` of function `func` points to, from the function's own
    /// prototype. `Ok(None)` if no BTF object defines `func`.
    fn param_struct(&self, func: &str, idx: usize) -> Result<Option<(Agg, String)>, String> {
        let Some((obj, params)) = self.prototype(func)? else {
            return Ok(None);
        };
        let fobj = &self.list[obj].name;
        let pid = *params.get(idx).ok_or_else(|| {
            format!(
                "function {func} ({fobj}) has {} parameter(s), no parameter {idx}",
                params.len()
            )
        })?;
        let agg = self
            .deref_struct(TypeRef { obj, id: pid })
            .map_err(|e| format!("parameter {idx} of {func} ({fobj}): {e}"))?;
        Ok(Some((agg, format!("{func}() parameter {idx} in {fobj}"))))
    }

    /// Byte offset and type of member `name` of `agg`, looking through anonymous
    /// structs/unions. Bitfields are refused.
    fn member(&self, agg: &Agg, name: &str) -> Result<(u32, TypeRef), String> {
        match self.member_in(agg.at, &agg.st, name, 0)? {
            Some((bits, r)) => {
                if bits % 8 != 0 {
                    return Err(format!(
                        "member {name} of struct {} is not byte-aligned (bit offset {bits})",
                        agg.name
                    ));
                }
                Ok((bits / 8, r))
            }
            None => Err(format!("struct {} has no member {name}", agg.name)),
        }
    }

    fn member_in(
        &self,
        at: TypeRef,
        st: &Struct,
        name: &str,
        depth: usize,
    ) -> Result<Option<(u32, TypeRef)>, String> {
        if depth > MAX_CHAIN {
            return Err("anonymous members nested too deeply".into());
        }
        let btf = self.btf(at);
        for m in &st.members {
            let mname = btf.resolve_name(m).unwrap_or_default();
            let Some(tid) = m.get_type_id() else { continue };
            let mt = TypeRef {
                obj: at.obj,
                id: tid,
            };
            if mname == name {
                if m.bitfield_size().is_some_and(|s| s != 0) {
                    return Err(format!(
                        "member {name} of struct {} is a bitfield",
                        self.name_of(at, st)
                    ));
                }
                return Ok(Some((m.bit_offset(), mt)));
            }
            if mname.is_empty() {
                let (inner_at, t) = self.strip(mt)?;
                if let Type::Struct(inner) | Type::Union(inner) = t
                    && let Some((off, r)) = self.member_in(inner_at, &inner, name, depth + 1)?
                {
                    return Ok(Some((m.bit_offset() + off, r)));
                }
            }
        }
        Ok(None)
    }

    /// Like [`Objects::member_typed`] with the member names of every generation (`op`, `type`):
    /// (offset, kind, the name found).
    fn member_any(
        &self,
        agg: &Agg,
        names: &[&'static str],
        want: Want,
    ) -> Result<(u32, u32, &'static str), String> {
        let mut first_err = None;
        for n in names {
            match self.member_typed(agg, n, want) {
                Ok((off, kind, _)) => return Ok((off, kind, n)),
                Err(e) if e.contains("has no member") => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err
            .unwrap_or_else(|| format!("struct {} has no member {}", agg.name, names.join(" or "))))
    }
}

// ---------------------------------------------------------------------------------------------
// Field resolution

#[derive(Clone)]
struct Found {
    offset: u32,
    obj: String,
    note: Option<String>,
}

#[derive(Default)]
struct Out {
    fields: Vec<FieldReport>,
}

impl Out {
    /// Records the outcome of `field` and returns its offset (or [`OFFSET_UNKNOWN`]).
    fn put(&mut self, field: &'static str, r: Result<Found, String>) -> u32 {
        match r {
            Ok(f) => {
                self.fields.push(FieldReport {
                    field,
                    offset: Some(f.offset),
                    btf_object: Some(f.obj),
                    reason: None,
                    note: f.note,
                });
                f.offset
            }
            Err(reason) => {
                self.fields.push(FieldReport {
                    field,
                    offset: None,
                    btf_object: None,
                    reason: Some(reason),
                    note: None,
                });
                OFFSET_UNKNOWN
            }
        }
    }
}

fn found(objs: &Objects, agg: &Agg, offset: u32, note: &Option<String>) -> Found {
    Found {
        offset,
        obj: objs.owner(agg.at).to_string(),
        note: note.clone(),
    }
}

fn missing_fn(objs: &Objects, func: &str) -> String {
    format!("function {func} not in {}", objs.searched())
}

/// Struct pointed to by parameter `idx` of `func`; unresolved if the function is not in BTF.
fn from_param(objs: &Objects, func: &str, idx: usize) -> Result<(Agg, Option<String>), String> {
    match objs.param_struct(func, idx)? {
        Some((agg, via)) => Ok((agg, Some(format!("via {via}")))),
        None => Err(missing_fn(objs, func)),
    }
}

/// Struct pointed to by parameter `idx` of `func`, or (only when `func` is not in BTF) the
/// first struct `name` in `order`.
fn from_param_or_name(
    objs: &Objects,
    func: &str,
    idx: usize,
    name: &str,
    order: &[usize],
) -> Result<(Agg, Option<String>), String> {
    match objs.param_struct(func, idx)? {
        Some((agg, via)) => Ok((agg, Some(format!("via {via}")))),
        None => match objs.find_structs(name, order).first() {
            Some(&r) => {
                let agg = objs.as_struct(r)?;
                let note = format!(
                    "function {func} not in BTF; struct {name} taken by name from {}",
                    objs.owner(agg.at)
                );
                Ok((agg, Some(note)))
            }
            None => {
                let places: Vec<&str> = order.iter().map(|&i| objs.list[i].name.as_str()).collect();
                Err(format!(
                    "{}, and no struct {name} in {}",
                    missing_fn(objs, func),
                    places.join(", ")
                ))
            }
        },
    }
}

/// A member's offset and what [`Objects::member_typed`] found (kind or length).
fn typed(
    objs: &Objects,
    agg: &Agg,
    m: &str,
    want: Want,
    note: &Option<String>,
) -> Result<(Found, u32), String> {
    let (off, extra, _) = objs.member_typed(agg, m, want)?;
    Ok((found(objs, agg, off, note), extra))
}

/// Splits a typed result into the offset report and the kind (unknown on error).
fn split(r: Result<(Found, u32), String>) -> (Result<Found, String>, u32) {
    match r {
        Ok((f, k)) => (Ok(f), k),
        Err(e) => (Err(e), tsm_trace_common::IntKind::UNKNOWN),
    }
}

const KVM_FIELDS: [(&str, &str); 4] = [
    ("kvm.userspace_pid (tsm_bind)", "kvm.stats_id (tsm_bind)"),
    (
        "kvm.userspace_pid (pci_tsm_bind)",
        "kvm.stats_id (pci_tsm_bind)",
    ),
    (
        "kvm.userspace_pid (driver_bind)",
        "kvm.stats_id (driver_bind)",
    ),
    (
        "kvm.userspace_pid (kvm_destroy_vm)",
        "kvm.stats_id (kvm_destroy_vm)",
    ),
];

fn resolve_fields(
    objs: &Objects,
    fns: &Functions,
) -> (Offsets, Vec<FieldReport>, Vec<PrototypeCheck>) {
    let mut o = Offsets::UNKNOWN;
    let mut out = Out::default();

    // iommufd_ucmd.cmd, from the ioctl handler's prototype.
    let ucmd = from_param(objs, fns.tsm_op_ioctl, 0);
    o.ucmd_cmd = out.put(
        "iommufd_ucmd.cmd",
        ucmd.and_then(|(a, note)| Ok(typed(objs, &a, "cmd", Want::Ptr, &note)?.0)),
    );

    // The UAPI command struct, preferring the object that defines the ioctl handler.
    let ioctl_obj = objs.find_func(fns.tsm_op_ioctl).map(|r| r.obj);
    let order = objs.order(ioctl_obj.as_slice());
    let uapi = crate::probes::compat::UAPI_OP_STRUCT;
    let tsm_op = objs
        .find_structs(uapi, &order)
        .first()
        .copied()
        .ok_or_else(|| format!("no struct {uapi} in {}", objs.searched()))
        .and_then(|r| objs.as_struct(r));
    let op_field = |names: &[&'static str]| {
        tsm_op.as_ref().map_err(Clone::clone).and_then(|a| {
            let (off, kind, name) = objs.member_any(a, names, Want::Int(4))?;
            Ok((found(objs, a, off, &None), kind, name))
        })
    };
    let op = op_field(&generation::op_member_names());
    let op_member = op.as_ref().ok().map(|(_, _, n)| *n);
    let (r, k) = split(op.map(|(f, k, _)| (f, k)));
    o.tsm_op_op = out.put("iommu_vdevice_tsm_op.op", r);
    o.kinds.tsm_op_op = k;
    let (r, k) = split(op_field(&["flags"]).map(|(f, k, _)| (f, k)));
    o.tsm_op_flags = out.put("iommu_vdevice_tsm_op.flags", r);
    o.kinds.tsm_op_flags = k;
    let (r, k) = split(op_field(&["vdevice_id"]).map(|(f, k, _)| (f, k)));
    o.tsm_op_vdevice_id = out.put("iommu_vdevice_tsm_op.vdevice_id", r);
    o.kinds.tsm_op_vdevice_id = k;
    (o.uapi_op_bind, o.uapi_op_unbind) =
        generation::put_op_values(&mut out, generation::op_values(objs, &order, op_member));

    // iommufd_object.id, from the teardown function's prototype.
    let obj = from_param(objs, fns.vdevice_abort, 0);
    let (r, k) = split(obj.and_then(|(a, note)| typed(objs, &a, "id", Want::Int(4), &note)));
    o.obj_id = out.put("iommufd_object.id", r);
    o.kinds.obj_id = k;

    // struct iommufd_vdevice: the teardown function's object, then vmlinux, then the rest.
    let abort_obj = objs.find_func(fns.vdevice_abort).map(|r| r.obj);
    let vdev = objs
        .find_structs("iommufd_vdevice", &objs.order(abort_obj.as_slice()))
        .first()
        .copied()
        .ok_or_else(|| format!("no struct iommufd_vdevice in {}", objs.searched()))
        .and_then(|r| objs.as_struct(r));
    let vfield = |m: &str, want: Want| {
        vdev.as_ref()
            .map_err(Clone::clone)
            .and_then(|a| typed(objs, a, m, want, &None))
    };
    o.vdev_obj = out.put(
        "iommufd_vdevice.obj",
        split(vfield("obj", Want::Embedded)).0,
    );
    let (r, k) = split(vfield("virt_id", Want::Int(8)));
    o.vdev_virt_id = out.put("iommufd_vdevice.virt_id", r);
    o.kinds.vdev_virt_id = k;
    o.vdev_idev = out.put("iommufd_vdevice.idev", split(vfield("idev", Want::Ptr)).0);
    let idev_dev = vdev
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|a| {
            let (_, t) = objs.member(a, "idev")?;
            objs.deref_struct(t)
                .map_err(|e| format!("iommufd_vdevice.idev: {e}"))
        })
        .and_then(|idev| Ok(typed(objs, &idev, "dev", Want::Ptr, &None)?.0));
    o.idev_dev = out.put("iommufd_device.dev", idev_dev);

    // dev_name(): device.kobj + kobject.name.
    let dev_name =
        from_param_or_name(objs, fns.tsm_bind, 0, "device", &[0]).and_then(|(dev, note)| {
            let (kobj_off, kt) = objs.member(&dev, "kobj")?;
            let kobj = objs
                .as_struct(kt)
                .map_err(|e| format!("device.kobj: {e}"))?;
            let (name_off, _, _) = objs.member_typed(&kobj, "name", Want::StrPtr)?;
            Ok(found(objs, &dev, kobj_off + name_off, &note))
        });
    o.dev_name = out.put("device.kobj.name", dev_name);

    // pci_dev.dev.
    let pdev = from_param_or_name(objs, fns.pci_tsm_bind, 0, "pci_dev", &[0])
        .and_then(|(pdev, note)| Ok(typed(objs, &pdev, "dev", Want::Embedded, &note)?.0));
    o.pci_dev_dev = out.put("pci_dev.dev", pdev);

    // struct kvm per function, from that function's own prototype.
    let kvm_order: Vec<usize> = objs.obj_index("kvm").into_iter().chain([0]).collect();
    let kvm_fns: [(Option<&str>, usize); 4] = [
        (Some(fns.tsm_bind), 1),
        (Some(fns.pci_tsm_bind), 1),
        (fns.driver_bind, 1),
        (Some(fns.kvm_destroy_vm), 0),
    ];
    let mut kvm_offsets = [KvmOffsets::UNKNOWN; 4];
    for (i, (func, idx)) in kvm_fns.into_iter().enumerate() {
        let Some(func) = func else { continue };
        let kvm = from_param_or_name(objs, func, idx, "kvm", &kvm_order);
        let field = |m: &str, want: Want| {
            kvm.as_ref()
                .map_err(Clone::clone)
                .and_then(|(a, note)| typed(objs, a, m, want, note))
        };
        let (pid_name, stats_name) = KVM_FIELDS[i];
        let (pid, pid_kind) = split(field("userspace_pid", Want::Int(4)));
        let (stats, stats_len) = split(field("stats_id", Want::CharArray));
        kvm_offsets[i] = KvmOffsets {
            userspace_pid: out.put(pid_name, pid),
            stats_id: out.put(stats_name, stats),
            userspace_pid_kind: pid_kind,
            stats_id_len: stats_len,
        };
    }
    [
        o.kvm_tsm_bind,
        o.kvm_pci_tsm_bind,
        o.kvm_driver_bind,
        o.kvm_destroy_vm,
    ] = kvm_offsets;

    // struct module::name, from vmlinux: the module tracepoints name the module.
    let module = objs
        .find_structs("module", &[0])
        .first()
        .copied()
        .ok_or_else(|| "no struct module in vmlinux BTF".to_string())
        .and_then(|r| objs.as_struct(r))
        .and_then(|a| {
            let (off, _) = objs.member(&a, "name")?;
            Ok(found(objs, &a, off, &None))
        });
    o.module_name = out.put("module.name", module);

    let mut prototypes = lifecycle::resolve(objs, fns, &mut o, &mut out);
    returns::resolve(objs, fns, &mut o, &mut out, &mut prototypes);
    (o, out.fields, prototypes)
}

mod abi;
mod generation;
mod lifecycle;
mod returns;
#[cfg(test)]
mod tests;
mod types;

pub use generation::PatchFacts;
pub use lifecycle::{PrototypeCheck, describe_loc};
