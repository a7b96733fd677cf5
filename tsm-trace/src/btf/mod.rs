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

use crate::events::ProbeId;

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
    /// The guest-request ioctl handler found (a [`crate::targets::GUEST_REQ_IOCTLS`] name);
    /// `None`: not probed, its UAPI command is left out.
    pub guest_req_ioctl: Option<&'a str>,
    /// `tsm_guest_req`; `None`: not probed, its request info is left out.
    pub tsm_guest_req: Option<&'a str>,
    /// Whether an IDE probe (`pci_ide_stream_*`) will be attached: `struct pci_ide` is
    /// resolved only then (its fields are left out of the report otherwise).
    pub ide: bool,
    /// The TSM driver ops that will be probed: each prototype is checked against its op.
    pub driver_ops: &'a [(ProbeId, &'a str)],
    /// Every function a kprobe will be attached to, by probe (compiler suffixes dropped): its
    /// return type is taken from its own prototype.
    pub probed: &'a [(ProbeId, &'a str)],
    /// `--symbol PROBE=FUNCTION` overrides, with the compatibility table's functions for the
    /// probe: the override must have the prototype of the first of those BTF has.
    pub overrides: &'a [(ProbeId, &'a str, &'static [&'static str])],
}

impl Functions<'_> {
    /// The function probed for driver op `probe`, if any.
    pub fn driver_op(&self, probe: ProbeId) -> Option<&str> {
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
        guest_req_ioctl: None,
        tsm_guest_req: None,
        ide: false,
        driver_ops: &[],
        probed: &[],
        overrides: &[],
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
    #[error("cannot read vmlinux BTF {path}")]
    VmlinuxRead {
        path: PathBuf,
        #[source]
        cause: io::Error,
    },
    #[error("cannot parse vmlinux BTF {path}")]
    VmlinuxParse {
        path: PathBuf,
        #[source]
        cause: btf_rs::Error,
    },
    #[error("cannot list module BTF directory {path}")]
    ModulesDir {
        path: PathBuf,
        #[source]
        cause: io::Error,
    },
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
    /// What BTF shows of the patch series and of PCI TSM (see the `generation` module).
    pub patch: PatchFacts,
    /// Names of guest-request values, from BTF's enums.
    pub names: ReqNames,
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
/// How each of `funcs` returns (`tsm_trace_common::ret`), from its own BTF prototype:
/// `Ok(None)` when BTF has no such function, `Err` when its return type cannot be decoded.
/// A name defined in several objects is taken from the first that has it (vmlinux first).
pub fn return_kinds(
    sources: &BtfSources,
    funcs: &[&str],
) -> Result<std::collections::HashMap<String, Result<Option<u32>, String>>, BtfError> {
    let (objs, _) = load::load(sources)?;
    Ok(funcs
        .iter()
        .map(|f| (f.to_string(), objs.ret_kind(f)))
        .collect())
}

pub fn resolve(sources: &BtfSources, fns: &Functions) -> Result<Resolution, BtfError> {
    let (objs, objects) = load(sources)?;
    let (offsets, fields, prototypes, names) = resolve_fields(&objs, fns);
    Ok(Resolution {
        offsets,
        fields,
        prototypes,
        objects,
        names,
        patch: generation::facts(&objs, fns),
    })
}

mod abi;
mod fields;
mod generation;
mod guest_req;
mod ide;
mod lifecycle;
mod load;
mod returns;
#[cfg(test)]
mod tests;
mod types;
mod walk;

use fields::*;
use load::*;
use walk::*;

pub use generation::PatchFacts;
pub use guest_req::{EnumNames, KindNames, ReqNames};
pub use lifecycle::{PrototypeCheck, describe_loc};
