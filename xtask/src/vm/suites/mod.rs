//! One checker per suite: each reads what its guest script (`tests/vm/scenarios/<suite>.sh`)
//! printed, tsm-trace's output and the fixtures' ground truth, and counts its checks
//! ([`crate::vm::checks::Checks`]).
//!
//! - [`probes`]: the stand-in's bind path (`probes.sh`), with session F's kernel-side
//!   diagnostics in [`probes::diagnostics`];
//! - [`generations`]: the stand-in built as each generation of the patch series;
//! - [`lifecycle`]: the real PCI TSM core (truth, trace session, daemons);
//! - [`ide`]: PCIe IDE streams set up by the real kernel's `pci_ide_*` (7.x), and its deep
//!   trace of the fixture's own helpers in [`ide_deep`];
//! - [`modules`], [`storm`], [`restart`], [`crash`] (killed at any instant), [`doctor`];
//! - [`smoke`]: the fixture smokes (no tsm-trace);
//! - [`leaks`]: every suite's output searched for kernel addresses.

pub mod crash;
pub mod crash_faults;
pub mod doctor;
pub mod generations;
pub mod ide;
pub mod ide_deep;
pub mod leaks;
pub mod lifecycle;
pub mod modules;
pub mod probes;
pub mod restart;
pub mod smoke;
pub mod storm;
