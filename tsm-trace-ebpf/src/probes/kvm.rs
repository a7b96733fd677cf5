//! VM teardown: `kvm_destroy_vm` and the exit of a VMM process that holds a binding.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{kprobe, raw_tracepoint},
    programs::{ProbeContext, RawTracePointContext},
};
use tsm_trace_common::{
    ControlEvent, KernelCounter, MODULE_NAME_LEN, ProbeId, ProgError, control, maps as names,
};

use super::{arg, exit_code, point, read_kvm};
use crate::{
    maps::{CONTROL, VMM_TGIDS},
    read::{self, offsets},
};

/// `void kvm_destroy_vm(struct kvm *kvm)`: a point event with the VM's identity.
#[kprobe]
pub fn kvm_destroy_vm_entry(ctx: ProbeContext) -> u32 {
    let t = super::now();
    exit_code(try_kvm_destroy_vm_entry(&ctx, t))
}

fn try_kvm_destroy_vm_entry(ctx: &ProbeContext, t: u64) -> Result<(), ProgError> {
    let kvm: u64 = arg(ctx, 0)?;
    point(ProbeId::KvmDestroyVm, t, |ev| {
        read_kvm(ev, kvm, offsets().kvm_destroy_vm)
    });
    Ok(())
}

/// `sched_process_exit` (every exiting thread): frees the thread's slots
/// ([`super::free_thread_slots`]); only processes in `VMM_TGIDS` (those that bound a device)
/// produce an event, and only when the thread-group leader exits. Costs two hash lookups per
/// thread exit; nothing per ioctl or per VM exit.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn vmm_exit(_ctx: RawTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    super::free_thread_slots(pid_tgid);
    let tgid = (pid_tgid >> 32) as u32;
    if tgid != pid_tgid as u32 || !crate::maps::live() {
        return 0;
    }
    if unsafe { VMM_TGIDS.get(tgid) }.is_none() {
        return 0;
    }
    let _ = VMM_TGIDS.remove(tgid);
    // A point event (no duration): its time is taken past the filter, so the exit of every
    // other process does not pay for it.
    point(ProbeId::VmmExit, super::now(), |_| {});
    0
}

/// `module_load(struct module *)`: one control record per module load (rare), so userspace
/// can attach probes whose functions live in a module loaded after it started.
#[raw_tracepoint(tracepoint = "module_load")]
pub fn module_load(ctx: RawTracePointContext) -> u32 {
    module_event(&ctx, control::MODULE_LOAD);
    0
}

/// `module_free(struct module *)`: the module's probes stop firing; userspace marks them
/// detached until it loads again.
#[raw_tracepoint(tracepoint = "module_free")]
pub fn module_free(ctx: RawTracePointContext) -> u32 {
    module_event(&ctx, control::MODULE_FREE);
    0
}

#[inline(always)]
fn module_event(ctx: &RawTracePointContext, kind: u32) {
    if !crate::maps::live() {
        return;
    }
    let Some(mut slot) = CONTROL.reserve::<ControlEvent>(0) else {
        crate::maps::full(KernelCounter::ControlFull, names::CONTROL);
        return;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: `ev` points to a reserved, exclusively owned ring-buffer record.
    unsafe {
        (*ev).kind = kind;
        (*ev).has_name = 0;
        (*ev).ktime_ns = bpf_ktime_get_ns();
        (*ev).name = [0; MODULE_NAME_LEN];
        let module: u64 = ctx.arg(0);
        if read::str_at(
            "module.name",
            module,
            offsets().module_name,
            &mut (*ev).name,
        )
        .is_ok()
        {
            (*ev).has_name = 1;
        }
    }
    slot.submit(0);
}
