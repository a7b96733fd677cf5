//! VM teardown: `kvm_destroy_vm` and the exit of a VMM process that holds a binding.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{kprobe, raw_tracepoint},
    programs::{ProbeContext, RawTracePointContext},
};
use tsm_trace_common::{ProbeId, flags};

use super::{begin, emit, read_kvm};
use crate::{maps::VMM_TGIDS, read::offsets};

/// `void kvm_destroy_vm(struct kvm *kvm)`: a point event with the VM's identity.
#[kprobe]
pub fn kvm_destroy_entry(ctx: ProbeContext) -> u32 {
    try_kvm_destroy_entry(&ctx).unwrap_or(1)
}

fn try_kvm_destroy_entry(ctx: &ProbeContext) -> Option<u32> {
    let kvm: u64 = ctx.arg(0)?;
    let ev = begin(ProbeId::KvmDestroyVm)?;
    ev.flags |= flags::POINT;
    read_kvm(ev, kvm, offsets().kvm_destroy_vm);
    emit(ev);
    Some(0)
}

/// `sched_process_exit`: only processes in `VMM_TGIDS` (those that bound a device) produce an
/// event, and only when the thread-group leader exits. Costs one hash lookup per process exit;
/// nothing per ioctl or per VM exit.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn vmm_exit(_ctx: RawTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid != pid_tgid as u32 {
        return 0;
    }
    if unsafe { VMM_TGIDS.get(tgid) }.is_none() {
        return 0;
    }
    let _ = VMM_TGIDS.remove(tgid);
    if let Some(ev) = begin(ProbeId::VmmExit) {
        ev.flags |= flags::POINT;
        emit(ev);
    }
    0
}

/// `module_load`: one point event per module load (rare), so userspace can attach probes
/// whose functions live in a module loaded after it started.
#[raw_tracepoint(tracepoint = "module_load")]
pub fn module_load(_ctx: RawTracePointContext) -> u32 {
    if let Some(ev) = begin(ProbeId::ModuleLoad) {
        ev.flags |= flags::POINT;
        emit(ev);
    }
    0
}
