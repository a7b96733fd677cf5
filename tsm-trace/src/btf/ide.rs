//! Offsets for the PCIe IDE probes (drivers/pci/ide.c): `struct pci_ide` from
//! `pci_ide_stream_register`'s own prototype: `pdev`, `stream_id`, `host_bridge_stream`,
//! `name`, and each partner's `stream_index` inside `partner[]`, the array indexed by
//! `enum pci_ide_partner_select` (`PCI_IDE_EP`, `PCI_IDE_RP`: their values from BTF too).

use btf_rs::{BtfType, Type};
use tsm_trace_common::{IdeOffsets, IntField, Offsets};

use super::{Agg, Objects, Out, found, from_param, types::Want, walk::TypeRef};

/// The function whose parameter 0 is the `struct pci_ide *` every IDE probe reads.
pub const IDE_FUNCTION: &str = "pci_ide_stream_register";
/// The enum indexing `pci_ide::partner`.
pub const PARTNER_ENUM: &str = "pci_ide_partner_select";

/// Element type and size of array member `name` of `agg`, and its offset.
fn array_member(objs: &Objects, agg: &Agg, name: &str) -> Result<(u32, Agg, u32, u32), String> {
    let (off, t) = objs.member(agg, name)?;
    let (r, ty) = objs.strip(t)?;
    let Type::Array(a) = &ty else {
        return Err(format!("{}.{name} is not an array", agg.name));
    };
    let id = a
        .get_type_id()
        .ok_or_else(|| format!("{}.{name}: an array without element type", agg.name))?;
    let elem = objs
        .as_struct(TypeRef { obj: r.obj, id })
        .map_err(|e| format!("{}.{name}: {e}", agg.name))?;
    let size = elem.st.size() as u32;
    Ok((off, elem, size, a.len() as u32))
}

pub(super) fn resolve(objs: &Objects, o: &mut Offsets, out: &mut Out) {
    let ide = from_param(objs, IDE_FUNCTION, 0);
    let int = |m: &str, max: u32| {
        ide.as_ref().map_err(Clone::clone).and_then(|(a, note)| {
            let (off, kind, _) = objs.member_typed(a, m, Want::Int(max))?;
            Ok((found(objs, a, off, note), kind))
        })
    };
    let field = |out: &mut Out, name: &'static str, r: Result<(super::Found, u32), String>| match r
    {
        Ok((f, kind)) => IntField {
            off: out.put(name, Ok(f)),
            kind,
        },
        Err(e) => {
            out.put(name, Err(e));
            IntField::UNKNOWN
        }
    };
    let mut io = IdeOffsets::UNKNOWN;
    io.stream_id = field(out, "pci_ide.stream_id", int("stream_id", 4));
    io.host_bridge_stream = field(
        out,
        "pci_ide.host_bridge_stream",
        int("host_bridge_stream", 4),
    );
    let ptr = |m: &str, want: Want| {
        ide.as_ref().map_err(Clone::clone).and_then(|(a, note)| {
            let (off, _, _) = objs.member_typed(a, m, want)?;
            Ok(found(objs, a, off, note))
        })
    };
    io.pdev = out.put("pci_ide.pdev", ptr("pdev", Want::Ptr));
    io.name = out.put("pci_ide.name", ptr("name", Want::StrPtr));

    // partner[PCI_IDE_EP].stream_index, partner[PCI_IDE_RP].stream_index.
    let order = objs.order(&[0]);
    let slot = |enumerator: &str| {
        objs.enum_value(PARTNER_ENUM, enumerator, &order)
            .unwrap_or_else(|| Err(format!("no enum {PARTNER_ENUM} in {}", objs.searched())))
            .map(|(v, _)| v)
    };
    let partners = ide.as_ref().map_err(Clone::clone).and_then(|(a, note)| {
        let (off, elem, size, len) = array_member(objs, a, "partner")?;
        let (idx_off, kind, _) = objs.member_typed(&elem, "stream_index", Want::Int(4))?;
        let at = |enumerator: &str| -> Result<(super::Found, u32), String> {
            let v = slot(enumerator)?;
            if v >= len {
                return Err(format!(
                    "{enumerator} = {v} is outside pci_ide.partner[{len}]"
                ));
            }
            Ok((found(objs, a, off + v * size + idx_off, note), kind))
        };
        Ok((at("PCI_IDE_EP"), at("PCI_IDE_RP")))
    });
    let (ep, rp) = match partners {
        Ok((ep, rp)) => (ep, rp),
        Err(e) => (Err(e.clone()), Err(e)),
    };
    io.ep_index = field(out, "pci_ide.partner[PCI_IDE_EP].stream_index", ep);
    io.rp_index = field(out, "pci_ide.partner[PCI_IDE_RP].stream_index", rp);
    o.ide = io;
}
