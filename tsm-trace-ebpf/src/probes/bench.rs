//! Benchmark baselines, never attached by tsm-trace itself: empty programs that `cargo xtask
//! bench` attaches next to the real ones, on the same functions and in the same run, so the
//! in-kernel cost of each real program can be reported as a ratio to the bare minimum.

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};

/// An empty kprobe: the cost floor of a kprobe program on this kernel.
#[kprobe]
pub fn bench_empty(_ctx: ProbeContext) -> u32 {
    0
}

/// An empty kretprobe: the cost floor of a kretprobe program on this kernel.
#[kretprobe]
pub fn bench_empty_ret(_ctx: RetProbeContext) -> u32 {
    0
}
