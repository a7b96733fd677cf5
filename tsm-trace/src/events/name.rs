//! [`Name`]: the text the kernel names things by — a device (`0000:01:00.0`), a TSM
//! (`tsm0`), a task's comm, a VM's stats id, an enumerator. Shared, never copied: an event's
//! device name becomes its operation's, its binding's and its leak's by a reference count,
//! not an allocation. [`intern`] makes the decoder hand out the same `Name` for the same bytes,
//! so a steady stream of events about a few devices allocates no text at all.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// Shared immutable text (see the module documentation). Compares, orders and hashes as
/// its `str`; serializes as a plain string.
pub type Name = Arc<str>;

/// How many distinct names a thread's interner keeps before it starts over. Far more than a
/// host has devices, TSMs and VMM comms; bounded so that a stream of ever-new names (a fuzzer,
/// a fork bomb's comms) costs memory no longer than the next reset.
const INTERNED_MAX: usize = 4096;

thread_local! {
    static INTERNED: RefCell<HashMap<Box<[u8]>, Name>> = RefCell::new(HashMap::new());
}

/// The [`Name`] for `bytes` (lossy UTF-8: kernel names are ASCII in practice): the one handed
/// out before for the same bytes on this thread, else a new one, remembered.
pub fn intern(bytes: &[u8]) -> Name {
    INTERNED.with(|m| {
        let mut m = m.borrow_mut();
        if let Some(n) = m.get(bytes) {
            return n.clone();
        }
        let n: Name = String::from_utf8_lossy(bytes).into();
        if m.len() >= INTERNED_MAX {
            m.clear();
        }
        m.insert(bytes.into(), n.clone());
        n
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_bytes_give_the_same_allocation() {
        let a = intern(b"0000:01:00.0");
        let b = intern(b"0000:01:00.0");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "0000:01:00.0");
        assert_ne!(&*intern(b"tsm0"), &*a);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_refused() {
        assert_eq!(&*intern(b"q\xffemu"), "q\u{fffd}emu");
    }

    #[test]
    fn stays_bounded() {
        for i in 0..INTERNED_MAX + 10 {
            intern(format!("comm-{i}").as_bytes());
        }
        INTERNED.with(|m| assert!(m.borrow().len() <= INTERNED_MAX));
        // Still answers after a reset.
        assert_eq!(&*intern(b"comm-1"), "comm-1");
    }
}
