//! Deep calls (`trace --deep`): [`DeepRecord`]s from the ring buffer, named and decoded, and
//! hung on the probed call that encloses them.
//!
//! Kernel addresses stop here: a record's function address becomes the function's name (the
//! functions `probes::deep` attached, by address), its stack `name+0xoff` lines. A return is
//! decoded as the function's own BTF prototype says (an `int` errno, an `ERR_PTR`, a value).
//! A deep call returns before the probed call that encloses it, so its record comes first in
//! the ring; [`DeepCalls::claim`] gives each event the calls of its thread that lie inside it.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tsm_trace_common::{DEEP_ORIGIN, DEEP_RECORD_KIND, DeepRecord, IntKind, ret};

use crate::errno;

/// One completed call of a deep-traced function, inside a TSM operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeepCall {
    pub function: String,
    /// The module that defines it (`None`: vmlinux).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// 1: called by the probed function (or by code between it and the first deep-traced
    /// function); 2: by a depth-1 call; ...
    pub depth: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub duration_ns: u64,
    /// The return value, as its BTF prototype says: an integer, or for a pointer `0` (NULL),
    /// `1` (valid: never the address) or the `ERR_PTR` errno (negative). `None`: `void`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<i64>,
    /// The errno it returned (a signed integer or pointer return in `-4095..=-1`).
    #[serde(
        default,
        serialize_with = "ser_errno",
        deserialize_with = "de_errno",
        skip_serializing_if = "Option::is_none"
    )]
    pub errno: Option<i32>,
    /// The kernel stack where it returned an error none of its deep callees returned before
    /// it (innermost first, `name+0xoff`, the function itself first); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<String>,
}

fn ser_errno<S: Serializer>(e: &Option<i32>, s: S) -> Result<S::Ok, S::Error> {
    match e {
        Some(e) => s.serialize_str(&errno::name(*e)),
        None => s.serialize_none(),
    }
}

fn de_errno<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| {
        errno::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not an errno name")))
    })
    .transpose()
}

#[cfg(test)]
impl DeepCall {
    /// A call of `function` (module `m`) at `depth` over `start..end`, returning `-errno` (or
    /// 0), with `stack`: for tests.
    pub(crate) fn test(
        function: &str,
        depth: u32,
        (start_ns, end_ns): (u64, u64),
        errno: Option<i32>,
        stack: &[&str],
    ) -> DeepCall {
        DeepCall {
            function: function.into(),
            module: Some("m".into()),
            depth,
            start_ns,
            end_ns,
            duration_ns: end_ns - start_ns,
            ret: Some(errno.map_or(0, |e| -i64::from(e))),
            errno,
            stack: stack.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// A function `trace --deep` attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeepFn {
    pub name: String,
    pub module: Option<String>,
    /// Its BTF return type ([`ret`] / [`IntKind`]).
    pub ret: u32,
}

/// Names for the kernel addresses of deep records: the attached functions by entry address,
/// and every text symbol (for stacks).
#[derive(Debug, Default)]
pub struct DeepSymbols {
    functions: HashMap<u64, DeepFn>,
    /// Text symbols by address: name and module.
    text: BTreeMap<u64, (String, Option<String>)>,
}

/// Frames of the probe machinery at the top of a stack taken in a return probe.
fn is_trampoline(name: &str) -> bool {
    name.contains("rethook") || name.contains("kretprobe_trampoline")
}

impl DeepSymbols {
    pub fn new(
        functions: HashMap<u64, DeepFn>,
        text: BTreeMap<u64, (String, Option<String>)>,
    ) -> Self {
        DeepSymbols { functions, text }
    }

    /// `name+0xoff` of a kernel address (`None`: below every symbol).
    fn symbolize(&self, addr: u64) -> Option<String> {
        let (base, (name, _)) = self.text.range(..=addr).next_back()?;
        let off = addr - base;
        Some(if off == 0 {
            name.clone()
        } else {
            format!("{name}+{off:#x}")
        })
    }

    /// The function a record's address names: an attached function (by its entry address),
    /// else the symbol containing the address.
    fn function(&self, ip: u64) -> DeepFn {
        if let Some(f) = self.functions.get(&ip) {
            return f.clone();
        }
        match self.text.range(..=ip).next_back() {
            Some((_, (name, module))) => {
                let f = self.functions.values().find(|f| &f.name == name);
                DeepFn {
                    name: name.clone(),
                    module: module.clone(),
                    ret: f.map_or(ret::UNKNOWN, |f| f.ret),
                }
            }
            None => DeepFn {
                name: "unknown".into(),
                module: None,
                ret: ret::UNKNOWN,
            },
        }
    }

    /// Decodes a ring-buffer record of [`DeepRecord::SIZE`] bytes: the thread and the call
    /// (`None` for anything else).
    pub fn decode(&self, b: &[u8]) -> Option<(u32, DeepCall)> {
        if b.len() != DeepRecord::SIZE {
            return None;
        }
        // SAFETY: size checked; DeepRecord is plain data valid for any bit pattern.
        let r = unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<DeepRecord>()) };
        if r.kind != DEEP_RECORD_KIND {
            return None;
        }
        let f = self.function(r.ip);
        let (value, err) = decode_ret(f.ret, r.ret);
        let mut stack = Vec::new();
        if r.flags & DEEP_ORIGIN != 0 && err.is_some() {
            stack.push(f.name.clone());
            let n = (r.nstack as usize).min(r.stack.len());
            stack.extend(
                r.stack[..n]
                    .iter()
                    .filter_map(|&a| self.symbolize(a))
                    .filter(|s| !is_trampoline(s)),
            );
        }
        let call = DeepCall {
            function: f.name,
            module: f.module,
            depth: r.depth,
            start_ns: r.start_ns,
            end_ns: r.end_ns.max(r.start_ns),
            duration_ns: r.end_ns.saturating_sub(r.start_ns),
            ret: value,
            errno: err,
            stack,
        };
        Some(((r.pid_tgid & 0xffff_ffff) as u32, call))
    }
}

/// A raw return register decoded as the function's BTF return type says: the value and the
/// errno it carries.
pub fn decode_ret(kind: u32, raw: u64) -> (Option<i64>, Option<i32>) {
    match kind {
        ret::VOID | ret::UNKNOWN => (None, None),
        ret::PTR => {
            let v = raw as i64;
            match errno::from_ret(v) {
                Some(e) => (Some(v), Some(e)),
                None => (Some((raw != 0) as i64), None),
            }
        }
        k => {
            let size = (k & IntKind::SIZE_MASK).clamp(1, 8);
            let bits = size * 8;
            let masked = if bits == 64 {
                raw
            } else {
                raw & ((1u64 << bits) - 1)
            };
            if k & IntKind::SIGNED != 0 {
                let v = if bits == 64 {
                    masked as i64
                } else {
                    ((masked << (64 - bits)) as i64) >> (64 - bits)
                };
                (Some(v), errno::from_ret(v))
            } else {
                (Some(masked as i64), None)
            }
        }
    }
}

/// Deep calls waiting for the probed call that encloses them, per thread.
#[derive(Debug, Default)]
pub struct DeepCalls {
    pending: HashMap<u32, Vec<DeepCall>>,
    held: usize,
    /// Calls decoded.
    pub recorded: u64,
    /// Calls given up: more than [`DeepCalls::MAX_HELD`] waiting (their enclosing record was
    /// lost), or still waiting at the end.
    pub unclaimed: u64,
}

impl DeepCalls {
    /// At most this many calls wait for their enclosing record.
    pub const MAX_HELD: usize = 65_536;

    pub fn hold(&mut self, tid: u32, call: DeepCall) {
        self.recorded += 1;
        if self.held >= Self::MAX_HELD {
            self.unclaimed += 1;
            return;
        }
        self.held += 1;
        self.pending.entry(tid).or_default().push(call);
    }

    /// The calls of `tid` inside `[start_ns, end_ns]` (any that ended by `end_ns` when the
    /// start is unknown), in the order they returned.
    pub fn claim(&mut self, tid: u32, start_ns: Option<u64>, end_ns: u64) -> Vec<DeepCall> {
        let Some(v) = self.pending.get_mut(&tid) else {
            return Vec::new();
        };
        let inside = |c: &DeepCall| c.end_ns <= end_ns && start_ns.is_none_or(|s| c.start_ns >= s);
        let (mine, rest): (Vec<DeepCall>, Vec<DeepCall>) = v.drain(..).partition(inside);
        self.held -= mine.len();
        if rest.is_empty() {
            self.pending.remove(&tid);
        } else {
            *v = rest;
        }
        mine
    }

    /// Gives up what still waits (the session ends): counted in [`DeepCalls::unclaimed`].
    pub fn finish(&mut self) {
        self.unclaimed += self.held as u64;
        self.held = 0;
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_decode_by_prototype() {
        let int = IntKind::of(4, true);
        assert_eq!(
            decode_ret(int, (-71i32) as u32 as u64),
            (Some(-71), Some(71))
        );
        assert_eq!(decode_ret(int, 3), (Some(3), None));
        assert_eq!(
            decode_ret(IntKind::of(4, false), 0xffff_ffb9),
            (Some(0xffff_ffb9), None)
        );
        assert_eq!(
            decode_ret(IntKind::of(8, true), -5i64 as u64),
            (Some(-5), Some(5))
        );
        assert_eq!(decode_ret(ret::PTR, -12i64 as u64), (Some(-12), Some(12)));
        assert_eq!(decode_ret(ret::PTR, 0xffff_8880_1234_0000), (Some(1), None));
        assert_eq!(decode_ret(ret::PTR, 0), (Some(0), None));
        assert_eq!(decode_ret(ret::VOID, 7), (None, None));
        assert_eq!(decode_ret(IntKind::of(1, false), 0x101), (Some(1), None));
    }

    fn syms() -> DeepSymbols {
        let mut f = HashMap::new();
        f.insert(
            0x1000,
            DeepFn {
                name: "lt_verify".into(),
                module: Some("m".into()),
                ret: IntKind::of(4, true),
            },
        );
        let mut t = BTreeMap::new();
        t.insert(0x1000, ("lt_verify".to_string(), Some("m".to_string())));
        t.insert(0x2000, ("lt_recv".to_string(), Some("m".to_string())));
        t.insert(0x3000, ("arch_rethook_trampoline".to_string(), None));
        DeepSymbols::new(f, t)
    }

    fn record(ip: u64, ret: u64, flags: u32, stack: &[u64]) -> Vec<u8> {
        let mut r = DeepRecord {
            kind: DEEP_RECORD_KIND,
            depth: 2,
            pid_tgid: (7u64 << 32) | 9,
            ip,
            start_ns: 100,
            end_ns: 150,
            ret,
            flags,
            nstack: stack.len() as u32,
            stack: [0; tsm_trace_common::DEEP_STACK],
        };
        r.stack[..stack.len()].copy_from_slice(stack);
        // SAFETY: plain data.
        unsafe {
            std::slice::from_raw_parts((&r as *const DeepRecord).cast::<u8>(), DeepRecord::SIZE)
        }
        .to_vec()
    }

    #[test]
    fn a_record_becomes_a_named_call_with_its_stack() {
        let s = syms();
        let (tid, c) = s
            .decode(&record(
                0x1000,
                (-71i32) as u32 as u64,
                DEEP_ORIGIN,
                &[0x3010, 0x2024],
            ))
            .unwrap();
        assert_eq!(tid, 9);
        assert_eq!(c.function, "lt_verify");
        assert_eq!(c.errno, Some(71));
        assert_eq!(c.duration_ns, 50);
        assert_eq!(c.stack, vec!["lt_verify", "lt_recv+0x24"]);
        // No address anywhere in what leaves the decoder.
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("4096") && !json.contains("0x1000"), "{json}");
        let back: DeepCall = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        // A success carries no stack even if the kernel took one.
        let (_, ok) = s
            .decode(&record(0x1000, 0, DEEP_ORIGIN, &[0x2024]))
            .unwrap();
        assert!(ok.stack.is_empty() && ok.errno.is_none());
        assert!(s.decode(&record(0x1000, 0, 0, &[])[1..]).is_none());
    }

    fn call(start: u64, end: u64) -> DeepCall {
        DeepCall {
            function: "f".into(),
            module: None,
            depth: 1,
            start_ns: start,
            end_ns: end,
            duration_ns: end - start,
            ret: None,
            errno: None,
            stack: vec![],
        }
    }

    #[test]
    fn calls_go_to_the_record_that_encloses_them() {
        let mut d = DeepCalls::default();
        d.hold(1, call(10, 20));
        d.hold(1, call(30, 40));
        d.hold(2, call(10, 20));
        // An IDE step at 25..28 of thread 1 encloses neither.
        assert!(d.claim(1, Some(25), 28).is_empty());
        assert_eq!(d.claim(1, Some(5), 50).len(), 2);
        assert_eq!(d.claim(2, None, 20).len(), 1);
        d.hold(3, call(1, 2));
        d.finish();
        assert_eq!(d.unclaimed, 1);
    }
}
