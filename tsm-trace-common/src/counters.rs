//! The kernel side's self-counters and the errors its programs count.

/// The kernel-side self-counters (per-CPU array [`maps::STATS`], indexed by the
/// discriminant). One enum, one label each: userspace exports each counter under its
/// [`KernelCounter::label`] (labels are part of `/metrics`: add, never rename).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelCounter {
    /// The event ring buffer was full (`bpf_ringbuf_output`/`reserve` failed): an event was
    /// lost.
    RingbufFull = 0,
    /// The in-flight map refused an entry (a return will then lack its entry).
    InflightFull = 1,
    /// A kernel read (`bpf_probe_read_kernel*`) faulted: the field is reported missing.
    ReadFault = 2,
    /// A return probe fired with no matching entry.
    OrphanReturn = 3,
    /// The control ring buffer was full: a module load or unload was not reported.
    ControlFull = 4,
    /// An in-kernel aggregates table was full (a thread's operation state, a counter key, or
    /// the errno slots of one operation): an operation may be missing from the exact counts.
    AggregationFull = 5,
    /// An entry record was replaced by a new call of the same function on the same thread:
    /// the earlier call's return was never seen (its kretprobe missed, e.g. `maxactive`
    /// exhausted). That frame's detail is lost.
    ReturnMissed = 6,
    /// An operation whose outer return was never seen was left out of the exact counts when
    /// its thread began the next one (without this, that thread's later operations would be
    /// taken for calls nested in it and never counted).
    OperationUnfinished = 7,
    /// The table of processes holding a binding was full: that VMM's exit will not be seen.
    VmmTableFull = 8,
    /// An entry program found no per-CPU scratch record (cannot happen with a loaded object;
    /// counted so that no exit path of a live program is silent).
    ScratchMissing = 9,
    /// The event ring buffer was full when a bind's VMM name record (its argv) was to be
    /// written: that bind's VM is named by its stats_id. Not an event: the bind's own event
    /// is counted apart.
    VmmNameFull = 10,
    /// `trace --deep`: the event ring buffer was full when a deep call's record was to be
    /// written. Apart from [`KernelCounter::RingbufFull`]: the operations' own records are
    /// not affected by it.
    DeepRingFull = 11,
    /// `trace --deep`: a deep call was not recorded because its thread's table of open deep
    /// calls was full (`DEEP_THREADS`) or it was nested deeper than
    /// [`crate::DEEP_NESTING`].
    DeepFull = 12,
    /// `trace --deep`: a deep return did not match the thread's innermost open deep call (a
    /// missed return probe): the thread's open deep calls were given up.
    DeepUnmatched = 13,
}

impl KernelCounter {
    /// Number of counters (the length of the `STATS` array).
    pub const COUNT: u32 = 14;

    pub const ALL: [KernelCounter; KernelCounter::COUNT as usize] = [
        KernelCounter::RingbufFull,
        KernelCounter::InflightFull,
        KernelCounter::ReadFault,
        KernelCounter::OrphanReturn,
        KernelCounter::ControlFull,
        KernelCounter::AggregationFull,
        KernelCounter::ReturnMissed,
        KernelCounter::OperationUnfinished,
        KernelCounter::VmmTableFull,
        KernelCounter::ScratchMissing,
        KernelCounter::VmmNameFull,
        KernelCounter::DeepRingFull,
        KernelCounter::DeepFull,
        KernelCounter::DeepUnmatched,
    ];

    /// The counter's label: the `reason` of `tsm_trace_events_lost_total` for the losses
    /// ([`KernelCounter::is_loss`]), of `tsm_trace_operations_uncounted_total` for
    /// [`KernelCounter::OperationUnfinished`]; [`KernelCounter::ReadFault`] is exported alone
    /// (`tsm_trace_kernel_read_faults_total`).
    pub const fn label(self) -> &'static str {
        match self {
            KernelCounter::RingbufFull => "ringbuf_full",
            KernelCounter::InflightFull => "inflight_full",
            KernelCounter::ReadFault => "read_fault",
            KernelCounter::OrphanReturn => "orphan_return",
            KernelCounter::ControlFull => "control_full",
            KernelCounter::AggregationFull => "aggregation_full",
            KernelCounter::ReturnMissed => "return_missed",
            KernelCounter::OperationUnfinished => "return_missed",
            KernelCounter::VmmTableFull => "vmm_table_full",
            KernelCounter::ScratchMissing => "scratch_missing",
            KernelCounter::VmmNameFull => "vmm_name_full",
            KernelCounter::DeepRingFull => "deep_ringbuf_full",
            KernelCounter::DeepFull => "deep_full",
            KernelCounter::DeepUnmatched => "deep_unmatched",
        }
    }

    /// It counts records or events lost (`tsm_trace_events_lost_total{reason}`).
    pub const fn is_loss(self) -> bool {
        !matches!(
            self,
            KernelCounter::ReadFault | KernelCounter::OperationUnfinished
        )
    }
}

/// Why a program ended early: the `Err` of the programs' `try_*` functions and of their
/// kernel reads. Each kind that has a [`KernelCounter`] is counted there where it happens
/// ([`ProgError::counter`]); a program returns the discriminant (never 0, the success return).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgError {
    /// Not a failure: these programs are not the live epoch (a pinned handover) and stand
    /// aside. Not counted.
    StandAside = 1,
    /// The probe context has no such argument (cannot happen for the register arguments the
    /// programs take). Not counted.
    NoArgument = 2,
    /// An entry program found no per-CPU scratch record.
    ScratchMissing = 3,
    /// A kernel read faulted.
    ReadFault = 4,
    /// BTF gave no offset (or the base pointer is NULL): the field is not read, and is
    /// reported missing. Not counted (not a failure of the program).
    Unresolved = 5,
    /// Not a failure: the other epoch's entry program parked this very call a moment ago
    /// (a pinned handover on this CPU). Not counted.
    AlreadyParked = 6,
}

impl ProgError {
    /// The counter this kind is counted in, if any.
    pub const fn counter(self) -> Option<KernelCounter> {
        match self {
            ProgError::ScratchMissing => Some(KernelCounter::ScratchMissing),
            ProgError::ReadFault => Some(KernelCounter::ReadFault),
            ProgError::StandAside
            | ProgError::NoArgument
            | ProgError::Unresolved
            | ProgError::AlreadyParked => None,
        }
    }
}
