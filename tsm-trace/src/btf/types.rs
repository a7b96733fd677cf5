//! The types of what the programs read, from BTF: an integer's width and signedness, a
//! pointer, a char array and its length, a probed function's return type, and enum values.
//! What does not fit what a program can read is an error (the field is reported unresolved),
//! never read with another width.

use btf_rs::{BtfType, Type};
use tsm_trace_common::{IntKind, ret};

use super::{Objects, TypeRef};

impl Objects {
    /// The [`IntKind`] of an integer or enum type of at most `max` bytes.
    pub(super) fn int_kind(&self, r: TypeRef, max: u32) -> Result<u32, String> {
        let (r, t) = self.strip(r)?;
        let (size, signed) = match &t {
            Type::Int(i) if !i.is_bool() => (i.size() as u32, i.is_signed()),
            Type::Enum(e) => (e.size() as u32, e.is_signed()),
            Type::Enum64(e) => (e.size() as u32, e.is_signed()),
            other => return Err(format!("{} is not an integer", self.describe(r, other))),
        };
        if !matches!(size, 1 | 2 | 4 | 8) {
            return Err(format!("a {size}-byte integer cannot be read"));
        }
        if size > max {
            return Err(format!(
                "a {size}-byte integer does not fit the {max}-byte event field"
            ));
        }
        Ok(IntKind::of(size, signed))
    }

    /// `r` must be a pointer.
    pub(super) fn expect_ptr(&self, r: TypeRef) -> Result<(), String> {
        let (r, t) = self.strip(r)?;
        match t {
            Type::Ptr(_) => Ok(()),
            other => Err(format!("{} is not a pointer", self.describe(r, &other))),
        }
    }

    /// `r` must be a pointer to a 1-byte integer (`const char *`).
    pub(super) fn expect_str_ptr(&self, r: TypeRef) -> Result<(), String> {
        let (r, t) = self.strip(r)?;
        let Type::Ptr(p) = &t else {
            return Err(format!(
                "{} is not a pointer to chars",
                self.describe(r, &t)
            ));
        };
        let id = p.get_type_id().ok_or("a pointer to void, not to chars")?;
        match self.strip(TypeRef { obj: r.obj, id })? {
            (_, Type::Int(i)) if i.size() == 1 => Ok(()),
            (pr, other) => Err(format!(
                "a pointer to {}, not to chars",
                self.describe(pr, &other)
            )),
        }
    }

    /// The length of a char array (`char stats_id[48]`).
    pub(super) fn char_array_len(&self, r: TypeRef) -> Result<u32, String> {
        let (r, t) = self.strip(r)?;
        let Type::Array(a) = &t else {
            return Err(format!("{} is not a char array", self.describe(r, &t)));
        };
        let id = a.get_type_id().ok_or("an array without element type")?;
        match self.strip(TypeRef { obj: r.obj, id })? {
            (_, Type::Int(i)) if i.size() == 1 && a.len() > 0 => Ok(a.len() as u32),
            (_, Type::Int(i)) if i.size() == 1 => Err("a char array of length 0".into()),
            (er, other) => Err(format!(
                "an array of {}, not of chars",
                self.describe(er, &other)
            )),
        }
    }

    /// `r` must be a struct or union (embedded, for `container_of` or `&x->member`).
    pub(super) fn expect_embedded(&self, r: TypeRef) -> Result<(), String> {
        self.as_struct(r).map(|_| ())
    }

    /// How `func`'s return value is decoded ([`ret`]), from its own BTF prototype
    /// (`Ok(None)`: not in BTF).
    pub(super) fn ret_kind(&self, func: &str) -> Result<Option<u32>, String> {
        let Some((obj, proto)) = self.func_proto(func)? else {
            return Ok(None);
        };
        let rid = proto.return_type_id();
        if rid == 0 {
            return Ok(Some(ret::VOID));
        }
        let r = TypeRef { obj, id: rid };
        let (sr, t) = self.strip(r)?;
        match t {
            Type::Ptr(_) => Ok(Some(ret::PTR)),
            Type::Int(_) | Type::Enum(_) | Type::Enum64(_) => self
                .int_kind(r, 8)
                .map(Some)
                .map_err(|e| format!("{func} returns {e}")),
            other => Err(format!(
                "{func} returns {}, which cannot be decoded",
                self.describe(sr, &other)
            )),
        }
    }

    /// The value of enumerator `name` of `enum enum_name`, searching `order` (`None`: no
    /// such enum in BTF; an enum without that enumerator is an error).
    pub(super) fn enum_value(
        &self,
        enum_name: &str,
        name: &str,
        order: &[usize],
    ) -> Option<Result<(u32, String), String>> {
        for &obj in order {
            for id in self.own_ids(obj, enum_name) {
                let r = TypeRef { obj, id };
                let Ok(Type::Enum(e)) = self.btf(r).resolve_type_by_id(id) else {
                    continue;
                };
                let found = e
                    .members
                    .iter()
                    .find(|m| self.btf(r).resolve_name(*m).is_ok_and(|n| n == name));
                return Some(match found {
                    Some(m) => Ok((m.val(), self.owner(r).to_string())),
                    None => Err(format!("enum {enum_name} has no enumerator {name}")),
                });
            }
        }
        None
    }

    /// Number of parameters of `func`'s prototype (`None`: not in BTF or unreadable).
    pub(super) fn param_count(&self, func: &str) -> Option<usize> {
        self.prototype(func).ok().flatten().map(|(_, p)| p.len())
    }
}

/// What a program reads at a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Want {
    /// An integer of at most this many bytes (the event field's width).
    Int(u32),
    /// A pointer it follows or reports as an identity.
    Ptr,
    /// A `const char *` it reads a string from.
    StrPtr,
    /// An inline char array it reads a string from (its length is the result).
    CharArray,
    /// An embedded struct (`container_of`, `&x->member`).
    Embedded,
}

impl Objects {
    /// Offset of member `name` of `agg` and, for [`Want::Int`], its [`IntKind`] (for
    /// [`Want::CharArray`], its length; else 0), if its BTF type is what the program reads.
    pub(super) fn member_typed(
        &self,
        agg: &super::Agg,
        name: &str,
        want: Want,
    ) -> Result<(u32, u32, TypeRef), String> {
        let (off, t) = self.member(agg, name)?;
        let why = |e: String| format!("{}.{name}: {e}", agg.name);
        let extra = match want {
            Want::Int(max) => self.int_kind(t, max).map_err(why)?,
            Want::Ptr => self.expect_ptr(t).map(|_| 0).map_err(why)?,
            Want::StrPtr => self.expect_str_ptr(t).map(|_| 0).map_err(why)?,
            Want::CharArray => self.char_array_len(t).map_err(why)?,
            Want::Embedded => self.expect_embedded(t).map(|_| 0).map_err(why)?,
        };
        Ok((off, extra, t))
    }
}
