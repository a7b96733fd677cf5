//! Walking BTF types across objects: a type id's owner by id range, structs and unions by
//! name, members through anonymous members and qualifier chains.

use super::*;

/// A type id within one object's BTF (a module's BTF also resolves vmlinux ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TypeRef {
    pub(super) obj: usize,
    pub(super) id: u32,
}

/// A struct or union found in BTF.
pub(super) struct Agg {
    pub(super) at: TypeRef,
    pub(super) name: String,
    pub(super) st: Struct,
}

pub(super) const MAX_CHAIN: usize = 64;

impl Objects {
    pub(super) fn btf(&self, r: TypeRef) -> &Btf {
        &self.list[r.obj].btf
    }

    /// Name of the object that defines type `r` (module ids start after vmlinux's).
    pub(super) fn owner(&self, r: TypeRef) -> &str {
        let o = &self.list[r.obj];
        match o.split_start {
            Some(start) if r.id >= start => &o.name,
            _ => "vmlinux",
        }
    }

    pub(super) fn obj_index(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|o| o.name == name)
    }

    /// Objects to search: `prefer` first, then vmlinux, then every other module.
    pub(super) fn order(&self, prefer: &[usize]) -> Vec<usize> {
        let mut v: Vec<usize> = Vec::with_capacity(self.list.len());
        for i in prefer.iter().copied().chain(0..self.list.len()) {
            if !v.contains(&i) {
                v.push(i);
            }
        }
        v
    }

    /// "vmlinux or any of N module BTFs" (for reasons).
    pub(super) fn searched(&self) -> String {
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
    pub(super) fn own_ids(&self, obj: usize, name: &str) -> Vec<u32> {
        let o = &self.list[obj];
        let r = match o.btf.split() {
            Some(split) => split.resolve_ids_by_name(name),
            None => o.btf.resolve_ids_by_name(name),
        };
        r.unwrap_or_default()
    }

    pub(super) fn find_func(&self, name: &str) -> Option<TypeRef> {
        (0..self.list.len()).find_map(|obj| {
            self.own_ids(obj, name)
                .into_iter()
                .map(|id| TypeRef { obj, id })
                .find(|&r| matches!(self.btf(r).resolve_type_by_id(r.id), Ok(Type::Func(_))))
        })
    }

    /// Complete structs (or unions) named `name`, searching objects in `order`.
    pub(super) fn find_structs(&self, name: &str, order: &[usize]) -> Vec<TypeRef> {
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

    pub(super) fn ty(&self, r: TypeRef) -> Result<Type, String> {
        self.btf(r)
            .resolve_type_by_id(r.id)
            .map_err(|e| format!("bad type id {} in {}: {e}", r.id, self.list[r.obj].name))
    }

    pub(super) fn name_of(&self, r: TypeRef, t: &dyn BtfType) -> String {
        self.btf(r).resolve_name(t).unwrap_or_default()
    }

    pub(super) fn describe(&self, r: TypeRef, t: &Type) -> String {
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
    pub(super) fn strip(&self, mut r: TypeRef) -> Result<(TypeRef, Type), String> {
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
    pub(super) fn as_struct(&self, r: TypeRef) -> Result<Agg, String> {
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
    pub(super) fn deref_struct(&self, r: TypeRef) -> Result<Agg, String> {
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
    pub(super) fn param_struct(
        &self,
        func: &str,
        idx: usize,
    ) -> Result<Option<(Agg, String)>, String> {
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
    pub(super) fn member(&self, agg: &Agg, name: &str) -> Result<(u32, TypeRef), String> {
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

    pub(super) fn member_in(
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
    pub(super) fn member_any(
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
