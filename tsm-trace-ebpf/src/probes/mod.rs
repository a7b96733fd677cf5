//! Probe programs, one file per kernel subsystem. Each `#[kprobe]`/`#[kretprobe]` is a thin
//! wrapper over a `try_*` function returning `Result<(), ProgError>` (the program returns 0,
//! or the error's discriminant: [`exit_code`]); an error is counted where it happens
//! ([`crate::maps::fail`]). Entry and return are paired through [`maps::INFLIGHT`]. Each
//! program is named after its probe: `<probe>_entry`, `<probe>_return`
//! (`ProbeId::entry_program`, `ProbeId::return_program`).
//!
//! | file         | functions                                               |
//! |--------------|---------------------------------------------------------|
//! | `iommufd.rs` | `iommufd_vdevice_tsm_op_ioctl`, `iommufd_vdevice_abort` |
//! | `tsm.rs`     | `tsm_bind`, `tsm_unbind` (tsm-core, from the patch)     |
//! | `guest_req.rs` | the series' guest-request ioctl and `tsm_guest_req` (tsm-core) |
//! | `pci_tsm.rs` | `pci_tsm_bind`, `pci_tsm_unbind`                        |
//! | `pci_tsm_link.rs` | sysfs `tsm/connect` and `tsm/disconnect`, `__pci_tsm_disconnect`, `__pci_tsm_unbind`, `__pci_tsm_destroy`, `pci_tsm_guest_req` |
//! | `pci_ide.rs` | PCIe IDE streams: `pci_ide_stream_{alloc,register,setup,enable,disable,teardown,unregister,release,free}` |
//! | `tsm_driver.rs` | the TSM driver's link ops (probe, connect, disconnect, bind, unbind, guest_req) |
//! | `kvm.rs`     | `kvm_destroy_vm`, exit of a VMM holding a binding       |
//! | `deep.rs`    | `trace --deep`: any function a glob names, inside TSM operations only |
//! | `args.rs`    | arguments at locations userspace computed from BTF (registers or stack) |

pub mod args;
pub mod bench;
pub mod deep;
pub mod guest_req;
pub mod iommufd;
pub mod kvm;
pub mod pci_ide;
pub mod pci_tsm;
pub mod pci_tsm_link;
pub mod tsm;
pub mod tsm_driver;

use aya_ebpf::{Argument, programs::ProbeContext};
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated};
use tsm_trace_common::{
    ARGV_LEN, COMM_LEN, KernelCounter, KvmOffsets, ProbeId, ProgError, RawEvent, VMM_RECORD_KIND,
    VmmRecord, flags, maps as names, missing,
};

pub use crate::maps::exit_code;
use crate::{
    maps::{EVENTS, INFLIGHT, InflightKey, LAST_RETURN, SCRATCH, VMM_TGIDS, count, fail, full},
    read,
};

/// The program's timestamp. A return program takes it as the first thing it does, before any
/// map lookup or gate; an entry program as late as it can, into the record it has parked
/// ([`stash`]). So the program's own work (its reads; under TCG the translation of freshly
/// JITed code on its first run) happens before the frame starts or after it ends.
#[inline(always)]
pub fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// Argument `n` of the probed function.
#[inline(always)]
pub fn arg<T: Argument>(ctx: &ProbeContext, n: usize) -> Result<T, ProgError> {
    ctx.arg(n).ok_or(ProgError::NoArgument)
}

/// An entry record being built: in the thread's own [`INFLIGHT`] slot for the probe where it
/// has one (it is written in place, never copied: a copy of a whole record by the program
/// costs more than the rest of the entry), else in per-CPU scratch space, which [`stash`]
/// inserts (the kernel copies it).
pub struct Entry {
    ev: &'static mut RawEvent,
    in_slot: bool,
}

impl core::ops::Deref for Entry {
    type Target = RawEvent;
    fn deref(&self) -> &RawEvent {
        self.ev
    }
}

impl core::ops::DerefMut for Entry {
    fn deref_mut(&mut self) -> &mut RawEvent {
        self.ev
    }
}

/// Starts an entry record with the fields every event carries; its start time is set by
/// [`stash`], once the record is read. [`ProgError::AlreadyParked`] when the other epoch's
/// entry program parked this very call a moment ago (a handover: see [`stash`]).
#[inline(always)]
pub fn begin(probe: ProbeId) -> Result<Entry, ProgError> {
    // Every entry and point event starts here: an earlier epoch stands aside.
    crate::maps::ensure_live()?;
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = InflightKey {
        pid_tgid,
        probe: probe as u32,
        _pad: 0,
    };
    let (ev, in_slot) = match INFLIGHT.get_ptr_mut(key) {
        Some(p) => {
            // SAFETY (every dereference of `p`): this thread's slot; only this thread's
            // programs write it, and they do not nest on one CPU. Userspace removes a slot only
            // when its thread is gone, or when its call has been in flight past the in-flight
            // timeout.
            if unsafe { (*p).start_ns } != 0 {
                // A handover: the other epoch's entry program parked this very call just
                // before us on this CPU, and the gate flipped in between. It is parked and
                // counted once already.
                let mark = entry_mark();
                if LAST_RETURN.get(0).is_some_and(|l| {
                    l.pid_tgid == key.pid_tgid
                        && l.probe == key.probe
                        && l._pad & crate::maps::ENTRY_MARK != 0
                        && l._pad != mark
                }) {
                    return Err(ProgError::AlreadyParked);
                }
                // These functions do not recurse: an entry still parked for this thread and
                // function is a call whose return never came (its kretprobe missed).
                count(KernelCounter::ReturnMissed);
            }
            (p, true)
        }
        None => match SCRATCH.get_ptr_mut(0) {
            Some(p) => (p, false),
            None => return Err(fail(ProgError::ScratchMissing)),
        },
    };
    // SAFETY: this thread's slot (above) or per-CPU scratch (programs do not nest on one CPU:
    // the kernel's recursion guard). `init` writes the start time 0 first: the slot is free
    // until `stash` stamps it.
    unsafe { init(ev, probe, 0) };
    Ok(Entry {
        ev: unsafe { &mut *ev },
        in_slot,
    })
}

/// What an entry program writes into [`LAST_RETURN`]'s `_pad`: [`crate::maps::ENTRY_MARK`]
/// and its epoch.
#[inline(always)]
fn entry_mark() -> u32 {
    crate::maps::ENTRY_MARK | (crate::maps::epoch() & !crate::maps::ENTRY_MARK)
}

// `init` writes every field by name: a field added to `RawEvent` changes its size and stops
// the build here until `init` writes it too.
const _: () = assert!(
    RawEvent::SIZE == 312,
    "RawEvent changed: write the new field in probes::init"
);

/// Writes each field of a record once, without zeroing the whole record first: the scalars
/// their value or 0, `comm` in place by the helper (NUL-padded, zeroed on failure), the other
/// strings an empty string (a read overwrites it with its NUL-terminated result; the bytes past
/// the NUL are never decoded: userspace reads a string up to its NUL, and only when its
/// `missing` bit is clear, which a failed read sets).
///
/// # Safety
/// `ev` points to a record this program owns exclusively (per-CPU scratch or a reserved
/// ring-buffer slot).
#[inline(always)]
unsafe fn init(ev: *mut RawEvent, probe: ProbeId, start_ns: u64) {
    // One store per field, kept apart (volatile): LLVM merges neighbouring zero stores into
    // a call of `memset`, which on BPF is a loop of one-byte stores (a few hundred
    // instructions per record, more than the rest of `init`).
    macro_rules! set {
        ($place:expr, $v:expr) => {
            core::ptr::write_volatile(core::ptr::addr_of_mut!($place), $v)
        };
    }
    unsafe {
        set!((*ev).probe, probe as u32);
        set!((*ev).flags, 0);
        set!((*ev).start_ns, start_ns);
        set!((*ev).end_ns, start_ns);
        set!((*ev).pid_tgid, bpf_get_current_pid_tgid());
        set!((*ev).ret, 0);
        set!((*ev).kvm, 0);
        set!((*ev).tdi_id, 0);
        set!((*ev).virt_id, 0);
        set!((*ev).missing, 0);
        set!((*ev).kvm_pid, 0);
        set!((*ev).op, 0);
        set!((*ev).cmd_flags, 0);
        set!((*ev).vdevice_id, 0);
        set!((*ev).obj_id, 0);
        set!((*ev).in_len, 0);
        set!((*ev).out_len, 0);
        set!((*ev).tsm_code, 0);
        set!((*ev).scope, 0);
        set!((*ev).tvm_arch, 0);
        let comm = core::ptr::addr_of_mut!((*ev).comm);
        generated::bpf_get_current_comm(comm.cast(), COMM_LEN as u32);
        set!((*ev).dev_name[0], 0);
        set!((*ev).kvm_stats_id[0], 0);
        set!((*ev).tsm_name[0], 0);
        set!((*ev).ide_ptr, 0);
        set!((*ev).ide_stream_id, 0);
        set!((*ev).ide_hb_stream, 0);
        set!((*ev).ide_ep_index, 0);
        set!((*ev).ide_rp_index, 0);
        set!((*ev).ide_name[0], 0);
        set!((*ev).ide_endpoint[0], 0);
    }
}

/// A point event built in place in a reserved ring-buffer slot (no scratch, no copy): `fill`
/// writes what the event carries beyond [`init`]'s fields. A full ring buffer is counted as a
/// drop.
#[inline(always)]
pub fn point(probe: ProbeId, start_ns: u64, fill: impl FnOnce(&mut RawEvent)) {
    if !crate::maps::live() {
        return;
    }
    let Some(mut slot) = EVENTS.reserve::<RawEvent>(0) else {
        full(KernelCounter::RingbufFull, names::EVENTS);
        return;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: a reserved ring-buffer record, exclusively ours until submitted; `init` writes
    // every field before `fill` sees it.
    unsafe {
        init(ev, probe, start_ns);
        (*ev).flags = flags::POINT;
        fill(&mut *ev);
    }
    slot.submit(0);
}

/// Parks an entry record until the function returns, in this thread's slot for its probe in
/// [`INFLIGHT`]. A slot lives as long as its thread: the return frees it (start time 0) and
/// the thread's next call of that function builds its record in it in place ([`begin`]), so
/// a call pays one lookup, not an insert and a delete (a hash insert and delete cost more
/// than all the reads of a record). The thread's exit removes its slots
/// ([`free_thread_slots`]). A thread's first call of a function inserts.
///
/// The call's start time is taken last where it can be: after the reads, after the
/// operation's in-kernel count has noted the frame; in a slot it is written in place
/// (publishing the record: a slot with start time 0 is free). A first call stamps its record
/// just before the insert. What the entry program did before (its reads, their first run's
/// translation under emulation) is not part of the frame.
#[inline(always)]
pub fn stash(entry: Entry) {
    let Entry { ev, in_slot } = entry;
    let key = InflightKey {
        pid_tgid: ev.pid_tgid,
        probe: ev.probe,
        _pad: 0,
    };
    crate::aggregates::enter(ev);
    let t = now();
    if in_slot {
        ev.end_ns = t;
        ev.start_ns = t;
    } else {
        ev.start_ns = t;
        ev.end_ns = t;
        // By reference: a copy of the record would not fit the BPF stack.
        let parked: &RawEvent = ev;
        if INFLIGHT.insert(key, parked, 0).is_err() {
            full(KernelCounter::InflightFull, names::INFLIGHT);
            // No return will find this frame: the operation's count must not wait for it.
            crate::aggregates::unenter(ev);
            return;
        }
    }
    if let Some(last) = LAST_RETURN.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, this program is its only writer while it runs.
        unsafe {
            *last = InflightKey {
                _pad: entry_mark(),
                ..key
            }
        };
    }
}

/// A thread is exiting: its free [`INFLIGHT`] slots and its closed operation in
/// [`crate::maps::THREAD_OPS`] go with it, so the maps hold the threads that live (a burst of
/// short-lived threads does not fill them). What is still open stays: a call in flight or an
/// operation unfinished when its thread died is what userspace's sweep finds and counts
/// (`probes/expiry.rs`), which also removes what this misses (programs replaced meanwhile).
/// A thread that never did TSM work costs one lookup.
#[inline(always)]
pub fn free_thread_slots(pid_tgid: u64) {
    let Some(st) = crate::maps::THREAD_OPS.get_ptr(pid_tgid) else {
        return;
    };
    // SAFETY: the exiting thread's entry; its programs no longer run.
    let open = unsafe { (*st).depth } != 0;
    for p in 0..ProbeId::ALL.len() as u32 {
        let key = InflightKey {
            pid_tgid,
            probe: p,
            _pad: 0,
        };
        // SAFETY: a read of the exiting thread's slot.
        if INFLIGHT.get_ptr(key).is_some_and(|s| unsafe { (*s).start_ns } == 0) {
            let _ = INFLIGHT.remove(key);
        }
    }
    if !open {
        let _ = crate::maps::THREAD_OPS.remove(pid_tgid);
    }
}

/// Sends a record to userspace, counting a full ring buffer as a drop.
#[inline(always)]
pub fn emit(ev: &RawEvent) {
    if EVENTS.output::<RawEvent>(ev, 0).is_err() {
        full(KernelCounter::RingbufFull, names::EVENTS);
    }
}

/// Completes the in-flight record of `probe` for this task with the return value and sends it.
/// A return without an entry is still reported, marked [`missing::ENTRY`].
#[inline(always)]
pub fn finish(probe: ProbeId, ret: i64, ret_flags: u32, now: u64) {
    finish_with(probe, ret, ret_flags, now, |_| true)
}

/// Like [`finish`], with `complete` filling in what only the return knows (e.g. `*tsm_code`);
/// it returns false to drop the record (an entry that turned out not to concern the TSM path,
/// such as `__pci_tsm_destroy` of a device without TSM context: not a loss, not an orphan).
/// An orphan return is passed a fresh record marked [`missing::ENTRY`]. `now` is the return
/// program's [`now`], taken before anything else.
#[inline(always)]
pub fn finish_with(
    probe: ProbeId,
    ret: i64,
    ret_flags: u32,
    now: u64,
    complete: impl FnOnce(&mut RawEvent) -> bool,
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = InflightKey {
        pid_tgid,
        probe: probe as u32,
        _pad: 0,
    };
    // SAFETY: this thread's slot (see `stash`).
    match INFLIGHT.get_ptr_mut(key).filter(|p| unsafe { (**p).start_ns } != 0) {
        Some(p) => {
            let ev = unsafe { &mut *p };
            ev.end_ns = now;
            ev.ret = ret;
            ev.flags |= ret_flags;
            let kept = complete(ev);
            if kept {
                emit(ev);
            }
            crate::aggregates::exit(probe, pid_tgid, ret, ret_flags, now - ev.start_ns, kept);
            // Free for this thread's next call of `probe`.
            ev.start_ns = 0;
            if let Some(last) = LAST_RETURN.get_ptr_mut(0) {
                // SAFETY: per-CPU slot, this program is its only writer while it runs.
                unsafe { *last = key };
            }
        }
        None => {
            // The other epoch's return probe completed this very call just before us
            // (a handover), or these programs are not the live ones: not an orphan.
            if !crate::maps::live() || LAST_RETURN.get(0).is_some_and(|l| *l == key) {
                return;
            }
            count(KernelCounter::OrphanReturn);
            // Without the entry there is nothing for `complete` to use or to filter on.
            if let Some(mut slot) = EVENTS.reserve::<RawEvent>(0) {
                let ev = slot.as_mut_ptr();
                // SAFETY: a reserved ring-buffer record, exclusively ours until submitted.
                unsafe {
                    init(ev, probe, now);
                    (*ev).ret = ret;
                    (*ev).flags = ret_flags;
                    (*ev).missing = missing::ENTRY;
                }
                slot.submit(0);
            } else {
                full(KernelCounter::RingbufFull, names::EVENTS);
            }
        }
    }
}

/// Fills `dev_name` from a `struct device *`.
#[inline(always)]
pub fn read_dev_name(ev: &mut RawEvent, dev: u64) {
    let o = read::offsets();
    if read::str_ptr_at("device.kobj.name", dev, o.dev_name, &mut ev.dev_name).is_err() {
        ev.missing |= missing::DEV_NAME;
    }
}

/// Fills `tsm_name` from a `struct tsm_dev *`.
#[inline(always)]
pub fn read_tsm_name(ev: &mut RawEvent, tsm_dev: u64) {
    let o = read::offsets();
    if read::str_ptr_at(
        "tsm_dev.dev.kobj.name",
        tsm_dev,
        o.tsm_dev_name,
        &mut ev.tsm_name,
    )
    .is_err()
    {
        ev.missing |= missing::TSM_NAME;
    }
}

/// `&pdev->dev`, or 0 when the offset is unknown.
#[inline(always)]
pub fn pci_dev_to_dev(pdev: u64) -> u64 {
    let off = read::offsets().pci_dev_dev;
    if off == tsm_trace_common::OFFSET_UNKNOWN || pdev == 0 {
        0
    } else {
        pdev + off as u64
    }
}

/// `pdev->tsm`: `Ok(0)` when the device has no TSM context.
#[inline(always)]
pub fn pci_tsm_of(pdev: u64) -> Result<u64, ProgError> {
    read::at::<u64>("pci_dev.tsm", pdev, read::offsets().pci_dev_tsm)
}

/// Fills the binding a `struct pci_tdi *` describes: the VM (as an opaque identity: the
/// pointer's `struct kvm` layout is whatever the binder passed) and the tdi id.
#[inline(always)]
pub fn read_tdi(ev: &mut RawEvent, tdi: u64) {
    let o = read::offsets();
    match (
        read::at::<u64>("pci_tdi.kvm", tdi, o.tdi_kvm),
        read::int_at("pci_tdi.tdi_id", tdi, o.tdi_tdi_id, o.kinds.tdi_tdi_id),
    ) {
        (Ok(kvm), Ok(id)) => {
            ev.kvm = kvm;
            ev.tdi_id = id as u64;
        }
        _ => ev.missing |= missing::TDI,
    }
}

/// Fills the VM identity from a `struct kvm *`, with the offsets that this function's own BTF
/// prototype gave.
#[inline(always)]
pub fn read_kvm(ev: &mut RawEvent, kvm: u64, o: KvmOffsets) {
    ev.kvm = kvm;
    match read::int_at(
        "kvm.userspace_pid",
        kvm,
        o.userspace_pid,
        o.userspace_pid_kind,
    ) {
        Ok(pid) => ev.kvm_pid = pid as i32,
        Err(_) => ev.missing |= missing::KVM_PID,
    }
    if read::char_array_at(
        "kvm.stats_id",
        kvm,
        o.stats_id,
        o.stats_id_len,
        &mut ev.kvm_stats_id,
    )
    .is_err()
    {
        ev.missing |= missing::KVM_STATS_ID;
    }
}

/// Whether this thread is inside a bind frame of `probe` (its entry parked in [`INFLIGHT`]).
#[inline(always)]
fn in_frame(pid_tgid: u64, probe: ProbeId) -> bool {
    let key = InflightKey {
        pid_tgid,
        probe: probe as u32,
        _pad: 0,
    };
    // SAFETY: a lookup; the value is not kept.
    unsafe { INFLIGHT.get(key) }.is_some()
}

/// At the entry of bind `probe`: emits the binding task's argv ([`VmmRecord`], see its module
/// for why it is a record of its own) unless an outer bind of this thread already did, so a
/// bind reads it once (`tsm_bind` → `pci_tsm_bind` → the driver's op is one bind). A bind
/// runs in its VMM's context: `current->mm` is the VMM's. Never on a hot path: only bind
/// entries call it. Failures set [`missing::VMM_ARGV`]; a full ring buffer is counted as
/// [`KernelCounter::VmmNameFull`].
#[inline(always)]
pub fn emit_vmm_argv(probe: ProbeId) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if probe != ProbeId::TsmBind && in_frame(pid_tgid, ProbeId::TsmBind) {
        return;
    }
    if probe == ProbeId::DriverBind && in_frame(pid_tgid, ProbeId::PciTsmBind) {
        return;
    }
    let Some(mut slot) = EVENTS.reserve::<VmmRecord>(0) else {
        // Its own count: a name lost, not an event (`ringbuf_full` counts events only).
        full(KernelCounter::VmmNameFull, names::EVENTS);
        return;
    };
    let r = slot.as_mut_ptr();
    // SAFETY: a reserved ring-buffer record, exclusively ours until submitted; every field
    // but the argv bytes past `len` (never decoded) is written.
    unsafe {
        (*r).kind = VMM_RECORD_KIND;
        (*r).missing = 0;
        (*r).pid_tgid = pid_tgid;
        (*r).ktime_ns = now();
        (*r).len = 0;
        (*r).truncated = 0;
        if read_argv(&mut *r).is_err() {
            (*r).missing = missing::VMM_ARGV;
            (*r).len = 0;
        }
    }
    slot.submit(0);
}

/// `current->mm->arg_start..arg_end`, at most [`ARGV_LEN`] bytes, with the offsets BTF gave.
#[inline(always)]
fn read_argv(r: &mut VmmRecord) -> Result<(), ProgError> {
    let o = read::offsets();
    // SAFETY: the helper only returns the current task's address.
    let task = unsafe { generated::bpf_get_current_task() };
    let mm: u64 = read::at("task_struct.mm", task, o.task_mm)?;
    let start: u64 = read::at("mm_struct.arg_start", mm, o.mm_arg_start)?;
    let end: u64 = read::at("mm_struct.arg_end", mm, o.mm_arg_end)?;
    if end <= start || start == 0 {
        return Err(ProgError::Unresolved);
    }
    let mut n = end - start;
    if n > ARGV_LEN as u64 {
        n = ARGV_LEN as u64;
        r.truncated = 1;
    }
    let Some(dst) = r.argv.get_mut(..n as usize) else {
        return Err(ProgError::Unresolved);
    };
    // SAFETY: a user address of the current task, read with the faulting-safe helper.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user_buf(start as *const u8, dst) }
        .map_err(|_| read::fault("mm_struct.arg_start", o.mm_arg_start))?;
    r.len = n as u32;
    Ok(())
}

/// Remembers the calling process as a VMM holding a binding (its exit is then reported).
#[inline(always)]
pub fn note_vmm() {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if VMM_TGIDS.insert(tgid, 1, 0).is_err() {
        full(KernelCounter::VmmTableFull, names::VMM_TGIDS);
    }
}

/// Completes `probe`'s in-flight record with its raw return register, decoded as the probed
/// function's own BTF prototype says ([`tsm_trace_common::ret`]): an integer of its width and
/// signedness, a pointer, or nothing (void). Returns the decoded value (0 for void).
#[inline(always)]
pub fn finish_ret(probe: ProbeId, raw: u64, now: u64) -> i64 {
    finish_ret_with(probe, raw, 0, now, |_| true)
}

/// [`finish_ret`] with extra return flags (`RET_NULL_IS_ERR`) and a `complete` as in
/// [`finish_with`].
#[inline(always)]
pub fn finish_ret_with(
    probe: ProbeId,
    raw: u64,
    extra_flags: u32,
    now: u64,
    complete: impl FnOnce(&mut RawEvent) -> bool,
) -> i64 {
    let (v, f) = decode_ret(probe, raw);
    finish_with(probe, v, f | extra_flags, now, complete);
    v
}

/// (value, flags) of a raw return register for `probe`.
#[inline(always)]
pub fn decode_ret(probe: ProbeId, raw: u64) -> (i64, u32) {
    let kind = match read::offsets().ret.get(probe as usize) {
        Some(k) => *k,
        None => tsm_trace_common::ret::UNKNOWN,
    };
    if kind == tsm_trace_common::ret::VOID {
        return (0, flags::RET_VOID);
    }
    if kind == tsm_trace_common::ret::PTR {
        return (raw as i64, flags::RET_IS_PTR);
    }
    match read::int_reg(raw, kind) {
        Some(v) if kind & tsm_trace_common::IntKind::SIZE_MASK == 8 => (v, flags::RET_IS_LONG),
        Some(v) => (v, 0),
        // Unresolved: userspace does not attach such a probe; never guess.
        None => (0, flags::RET_VOID),
    }
}
