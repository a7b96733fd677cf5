//! Naming a VM without publishing its kernel address.
//!
//! The kernel identifies a VM by its `struct kvm *`. That pointer is a kernel address: it
//! must not leave the process (it defeats KASLR for whoever scrapes `/metrics`, reads a trace
//! or receives a recording). It never even leaves [`Event::decode`](super::Event::decode): the
//! decoder turns it into a [`VmId`], a keyed hash that is stable for the key's lifetime (the
//! boot, see [`super::vm_key`]) and that nobody without the key can invert. Everything after
//! decoding — correlation, metrics, trace lines, JSON, `/bindings`, recordings — sees only the
//! [`VmId`]; names prefer the VM's `stats_id` or VMM pid where they are known
//! ([`super::Vm::name`]).
//!
//! **Why BLAKE3 in keyed mode.** A name must be a pseudo-random function of the pointer under
//! a secret key: without the key, the name says nothing about the pointer, and the pointer
//! space is small enough (slab addresses in the direct map) that an unkeyed hash could be
//! inverted by trying every candidate. BLAKE3's keyed mode is a PRF with a 256-bit key, built
//! in (no HMAC construction to get wrong), from a crate maintained by the algorithm's authors
//! and used widely; with its `pure` feature it compiles no C or assembly (the input is 8 bytes,
//! so SIMD buys nothing). SipHash would also do, but its key is 128 bits and the crates that
//! expose it as a PRF are less kept.
//!
//! **Why 48 bits.** `vm#` and 12 hex digits: short enough for a label and a trace line; with a
//! few thousand VMs per boot the chance of two sharing a name is below 10⁻⁷. A kernel address
//! is 16 hex digits, so a name can never be mistaken for one (the leak tests look for those).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};

/// The prefix of every VM hash name.
pub const PREFIX: &str = "vm#";
/// Hex digits after [`PREFIX`].
pub const DIGITS: usize = 12;
const MASK: u64 = (1 << (4 * DIGITS)) - 1;

/// A VM's identity for the boot: a keyed hash of its `struct kvm *`, shown as `vm#<12 hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VmId(u64);

impl VmId {
    /// The identity with these 48 bits (the bits a name shows; higher bits are dropped).
    /// For tests and parsing: live identities come from [`VmKey::id`].
    pub const fn from_bits(bits: u64) -> VmId {
        VmId(bits & MASK)
    }

    pub const fn bits(self) -> u64 {
        self.0
    }

    /// `vm#` and exactly 12 hex digits (either case).
    pub fn parse(s: &str) -> Option<VmId> {
        let hex = s.strip_prefix(PREFIX)?;
        if hex.len() != DIGITS || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(hex, 16).ok().map(VmId)
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{:0width$x}", self.0, width = DIGITS)
    }
}

impl fmt::Debug for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for VmId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VmId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<VmId, D::Error> {
        let s = String::deserialize(d)?;
        VmId::parse(&s).ok_or_else(|| {
            D::Error::custom(format!(
                "bad VM id {s:?}: expected {PREFIX} and {DIGITS} hex digits"
            ))
        })
    }
}

/// Which VM `--vm` selects: by VMM pid (`kvm-<pid>`, its KVM `stats_id`, or the bare pid) or
/// by its name hash (`vm#…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmSelector {
    Pid(u32),
    Id(VmId),
}

impl VmSelector {
    pub fn matches(&self, vm: &super::Vm) -> bool {
        match *self {
            VmSelector::Pid(pid) => {
                vm.pid.is_some_and(|p| i64::from(p) == i64::from(pid))
                    || vm.stats_id.as_deref() == Some(format!("kvm-{pid}").as_str())
            }
            VmSelector::Id(id) => vm.id == id,
        }
    }
}

/// The secret key of the VM names: 32 random bytes. Never printed (its `Debug` is redacted).
#[derive(Clone)]
pub struct VmKey([u8; blake3::KEY_LEN]);

impl VmKey {
    pub const LEN: usize = blake3::KEY_LEN;

    pub const fn from_bytes(bytes: [u8; blake3::KEY_LEN]) -> VmKey {
        VmKey(bytes)
    }

    /// A fresh key from the operating system's random source.
    pub fn random() -> std::io::Result<VmKey> {
        let mut k = [0u8; blake3::KEY_LEN];
        getrandom::fill(&mut k).map_err(std::io::Error::other)?;
        Ok(VmKey(k))
    }

    /// The key's bytes, for storing it.
    pub fn bytes(&self) -> &[u8; blake3::KEY_LEN] {
        &self.0
    }

    /// The identity of the VM whose `struct kvm *` is `kvm`.
    pub fn id(&self, kvm: u64) -> VmId {
        let h = blake3::keyed_hash(&self.0, &kvm.to_le_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.as_bytes()[..8]);
        VmId::from_bits(u64::from_le_bytes(b))
    }
}

/// What names VMs while decoding: the key itself, or [`VmNames`] (the same names, remembered).
pub trait NameVm {
    fn name(&self, kvm: u64) -> VmId;
}

impl NameVm for VmKey {
    fn name(&self, kvm: u64) -> VmId {
        self.id(kvm)
    }
}

/// [`VmKey::id`] that remembers the last VM it named: a bind's three frames and the calls of
/// one VM in a row name the same `struct kvm *`, and the keyed hash is the dearest step of
/// decoding a record. Keeps one kernel address in this process's memory, like the record
/// being decoded; it never leaves the process.
pub struct VmNames {
    key: VmKey,
    last: std::cell::Cell<Option<(u64, VmId)>>,
}

impl VmNames {
    pub fn new(key: VmKey) -> VmNames {
        VmNames {
            key,
            last: std::cell::Cell::new(None),
        }
    }
}

impl NameVm for VmNames {
    fn name(&self, kvm: u64) -> VmId {
        if let Some((k, id)) = self.last.get()
            && k == kvm
        {
            return id;
        }
        let id = self.key.id(kvm);
        self.last.set(Some((kvm, id)));
        id
    }
}

impl fmt::Debug for VmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VmKey(<secret>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_names_are_the_keys_names() {
        let k = VmKey::from_bytes([7; 32]);
        let names = VmNames::new(k.clone());
        for p in [0x1000u64, 0x1000, 0x2000, 0x1000, 0x2000, 0x2000] {
            assert_eq!(names.name(p), k.id(p));
        }
    }

    #[test]
    fn names_are_stable_distinct_and_keyed() {
        let k = VmKey::from_bytes([7; 32]);
        let p = 0xff3a_bd96_4419_4400;
        assert_eq!(k.id(p), k.id(p));
        assert_ne!(k.id(p), k.id(p + 0x1000));
        assert_ne!(k.id(p), VmKey::from_bytes([8; 32]).id(p));
        let name = k.id(p).to_string();
        assert_eq!(name.len(), PREFIX.len() + DIGITS);
        assert!(!name.contains("ff3abd96"), "{name}");
        assert_eq!(VmId::parse(&name), Some(k.id(p)));
        assert!(!format!("{k:?}").contains("7"));
    }

    #[test]
    fn parsing_is_strict() {
        assert_eq!(
            VmId::parse("vm#00000000abcd"),
            Some(VmId::from_bits(0xabcd))
        );
        assert_eq!(
            VmId::parse("vm#00000000ABCD"),
            Some(VmId::from_bits(0xabcd))
        );
        for bad in [
            "",
            "vm#",
            "vm#abc",
            "vm#0000000000000",
            "vm#00000000abcg",
            "vm#+0000000abcd",
            "0xffff888012340000",
            "vm 00000000abcd",
        ] {
            assert_eq!(VmId::parse(bad), None, "{bad:?}");
        }
        let e = serde_json::from_str::<VmId>("\"0xffff888012340000\"").unwrap_err();
        assert!(e.to_string().contains("expected vm#"), "{e}");
        assert_eq!(
            serde_json::to_string(&VmId::from_bits(0xabcd)).unwrap(),
            "\"vm#00000000abcd\""
        );
    }
}
