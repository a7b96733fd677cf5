//! Types shared by the eBPF programs (`tsm-trace-ebpf`) and userspace (`tsm-trace`).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel writes [`RawEvent`]s into the ring
//! buffer and userspace reads them back byte for byte; userspace writes [`Offsets`] into a
//! read-only global before the programs load.
#![no_std]

/// Sentinel for an offset that BTF could not resolve. Programs skip the read and set the
/// field's bit in [`RawEvent::missing`].
pub const OFFSET_UNKNOWN: u32 = u32::MAX;

/// Length of a device name (`dev->kobj.name`, a PCI BDF such as `0000:01:00.0`).
pub const DEV_NAME_LEN: usize = 32;
/// `KVM_STATS_NAME_SIZE` in the kernel.
pub const STATS_ID_LEN: usize = 48;
/// `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;
/// Length of a TSM device name (`dev_name(&tsm_dev->dev)`, `tsmN`).
pub const TSM_NAME_LEN: usize = 16;
/// Length of an IDE stream's sysfs name (`stream<H>.<R>.<E>`, at most 17 bytes and a NUL).
pub const IDE_NAME_LEN: usize = 24;

mod control_record;
mod counters;
mod deep_record;
mod event;
mod offsets;
mod probe_id;
mod vmm_record;

pub mod aggregates;
pub mod errno;
pub mod maps;

pub use control_record::*;
pub use counters::*;
pub use deep_record::*;
pub use event::*;
pub use offsets::*;
pub use probe_id::*;
pub use vmm_record::*;

/// The global the programs compare with the [`maps::GATE`]: their epoch, set by userspace at
/// load time.
pub const EPOCH_GLOBAL: &str = "EPOCH";

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data with no padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::RawEvent {}
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::KvmOffsets {}
    unsafe impl aya::Pod for super::FieldKinds {}
    unsafe impl aya::Pod for super::GuestReqArgs {}
    unsafe impl aya::Pod for super::ControlEvent {}
    unsafe impl aya::Pod for super::VmmRecord {}
    unsafe impl aya::Pod for super::DeepRecord {}
    unsafe impl aya::Pod for super::DeepThread {}
    unsafe impl aya::Pod for super::InflightKey {}
    unsafe impl aya::Pod for super::aggregates::AggConfig {}
    unsafe impl aya::Pod for super::aggregates::ThreadOp {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_indexed_by_their_discriminants() {
        for (i, p) in ProbeId::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i);
            assert_eq!(ProbeId::parse(p.as_str()), Some(*p));
        }
        for (i, c) in KernelCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn loss_labels_are_distinct_and_errors_count_where_they_map() {
        for a in KernelCounter::ALL.iter().filter(|c| c.is_loss()) {
            for b in KernelCounter::ALL.iter().filter(|c| c.is_loss()) {
                assert!(a == b || a.label() != b.label(), "{a:?} {b:?}");
            }
        }
        assert_eq!(
            ProgError::ReadFault.counter(),
            Some(KernelCounter::ReadFault)
        );
        assert_eq!(
            ProgError::ScratchMissing.counter(),
            Some(KernelCounter::ScratchMissing)
        );
        assert_eq!(ProgError::StandAside.counter(), None);
    }
}
