//! Where a function's arguments are at entry, from its BTF prototype and the x86-64 System V
//! calling convention: integer-class arguments take rdi, rsi, rdx, rcx, r8, r9 in turn; an
//! aggregate of up to 16 bytes takes one or two registers if that many are left, else it goes
//! to the stack whole (and later scalars still take the registers that are left); larger
//! aggregates go to the stack. `pci_tsm_guest_req` passes two 16-byte `sockptr_t`s by value,
//! so its `out_len` is in r9 and `tsm_code` on the stack.

use btf_rs::{BtfType, Type};
use tsm_trace_common::ArgLoc;

use super::{MAX_CHAIN, Objects, TypeRef};

/// How one parameter is passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Fits one or two integer registers (`eightbytes`), or the stack if they are taken.
    Integer { eightbytes: u32 },
    /// Always on the stack, taking this many bytes (rounded up to 8).
    Memory { bytes: u32 },
}

const ARG_REGS: u32 = 6;

impl Objects {
    /// Size in bytes and whether the type holds a float (SSE class) anywhere.
    fn size_and_float(&self, r: TypeRef, depth: usize) -> Result<(u32, bool), String> {
        if depth > MAX_CHAIN {
            return Err("type nested too deeply".into());
        }
        let (r, t) = self.strip(r)?;
        Ok(match &t {
            Type::Int(i) => (i.size() as u32, false),
            Type::Enum(e) => (e.size() as u32, false),
            Type::Enum64(e) => (e.size() as u32, false),
            Type::Ptr(_) => (8, false),
            Type::Float(f) => (f.size() as u32, true),
            Type::Struct(st) | Type::Union(st) => {
                let mut float = false;
                for m in &st.members {
                    if let Some(id) = m.get_type_id() {
                        float |= self
                            .size_and_float(TypeRef { obj: r.obj, id }, depth + 1)?
                            .1;
                    }
                }
                (st.size() as u32, float)
            }
            Type::Array(a) => {
                let id = a.get_type_id().ok_or("array without element type")?;
                let (size, float) = self.size_and_float(TypeRef { obj: r.obj, id }, depth + 1)?;
                (size * a.len() as u32, float)
            }
            other => return Err(format!("cannot size {}", self.describe(r, other))),
        })
    }

    fn class(&self, r: TypeRef) -> Result<Class, String> {
        let (size, float) = self.size_and_float(r, 0)?;
        let (_, t) = self.strip(r)?;
        let aggregate = matches!(t, Type::Struct(_) | Type::Union(_) | Type::Array(_));
        if float && !aggregate {
            return Err("a floating-point argument (SSE register)".into());
        }
        if aggregate && (size > 16 || float) {
            return Ok(Class::Memory {
                bytes: size.div_ceil(8) * 8,
            });
        }
        Ok(Class::Integer {
            eightbytes: size.div_ceil(8).max(1),
        })
    }

    /// [`ArgLoc`] of every parameter of `func`'s prototype (`Ok(None)`: not in BTF). Only
    /// valid at the function's entry (a kprobe at offset 0).
    pub(super) fn arg_locations(&self, func: &str) -> Result<Option<Vec<u32>>, String> {
        let Some(proto) = self.prototype(func)? else {
            return Ok(None);
        };
        let (obj, params) = proto;
        let mut reg = 0u32;
        let mut stack = 8u32; // the return address is at 0
        let mut locs = Vec::with_capacity(params.len());
        for (i, id) in params.into_iter().enumerate() {
            let class = self
                .class(TypeRef { obj, id })
                .map_err(|e| format!("parameter {i} of {func}: {e}"))?;
            match class {
                Class::Integer { eightbytes } if reg + eightbytes <= ARG_REGS => {
                    locs.push(reg);
                    reg += eightbytes;
                }
                Class::Integer { eightbytes } => {
                    locs.push(ArgLoc::STACK + stack);
                    stack += eightbytes * 8;
                }
                Class::Memory { bytes } => {
                    locs.push(ArgLoc::STACK + stack);
                    stack += bytes;
                }
            }
        }
        Ok(Some(locs))
    }
}

impl Objects {
    /// The BTF object defining `func` and its prototype (`Ok(None)`: not in BTF).
    pub(super) fn func_proto(
        &self,
        func: &str,
    ) -> Result<Option<(usize, btf_rs::FuncProto)>, String> {
        let Some(f) = self.find_func(func) else {
            return Ok(None);
        };
        let Type::Func(fty) = self.ty(f)? else {
            return Err(format!("{func} is not a function"));
        };
        let proto_id = fty
            .get_type_id()
            .ok_or_else(|| format!("function {func} has no prototype"))?;
        let Type::FuncProto(proto) = self.ty(TypeRef {
            obj: f.obj,
            id: proto_id,
        })?
        else {
            return Err(format!("function {func}'s type is not a prototype"));
        };
        Ok(Some((f.obj, proto)))
    }

    /// The BTF object defining `func` and its parameter type ids (`Ok(None)`: not in BTF).
    pub(super) fn prototype(&self, func: &str) -> Result<Option<(usize, Vec<u32>)>, String> {
        let Some((obj, proto)) = self.func_proto(func)? else {
            return Ok(None);
        };
        let mut ids = Vec::with_capacity(proto.parameters.len());
        for (i, p) in proto.parameters.iter().enumerate() {
            if p.is_variadic() {
                return Err(format!("{func} is variadic"));
            }
            ids.push(
                p.get_type_id()
                    .ok_or_else(|| format!("parameter {i} of {func} has no type"))?,
            );
        }
        Ok(Some((obj, ids)))
    }

    /// The struct name a parameter points to (`"pci_dev"`), `""` for a scalar, `"?"` for
    /// anything else: for comparing a function against the op it stands for.
    pub(super) fn param_shape(&self, obj: usize, id: u32) -> String {
        let Ok((r, t)) = self.strip(TypeRef { obj, id }) else {
            return "?".into();
        };
        match t {
            Type::Ptr(p) => match p
                .get_type_id()
                .map(|id| self.strip(TypeRef { obj: r.obj, id }))
            {
                Some(Ok((pr, Type::Struct(st) | Type::Union(st)))) => self.name_of(pr, &st),
                Some(Ok((pr, Type::Fwd(f)))) => self.name_of(pr, &f),
                Some(Ok(_)) | None => "*".into(),
                Some(Err(_)) => "?".into(),
            },
            Type::Int(_) | Type::Enum(_) | Type::Enum64(_) => String::new(),
            Type::Struct(st) | Type::Union(st) => format!("struct {}", self.name_of(r, &st)),
            _ => "?".into(),
        }
    }
}
