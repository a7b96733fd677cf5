//! Kernel side of tsm-trace: kprobes/kretprobes on the TSM bind path and VM-teardown points.
//!
//! Data flow: an entry probe stashes the decoded arguments in [`maps::INFLIGHT`] keyed by
//! (task, probe); the matching return probe completes the record (return value, duration) and
//! sends one [`RawEvent`] through the [`maps::EVENTS`] ring buffer. Point events (VM destroyed,
//! VMM exited) are sent directly. Struct offsets come from userspace (resolved from BTF) in the
//! one-entry array [`maps::OFFSETS`], which userspace rewrites when a module brings new BTF;
//! nothing about kernel layouts is compiled in. Module loads and unloads go to userspace on
//! their own ring buffer, [`maps::CONTROL`].
//!
//! Diagnostics: a faulted read (`read::fault`, naming the field and offset) and a full map
//! (`maps::full`) are counted and logged through aya-log at debug level; nothing logs on the
//! success path, and userspace sets the log level to 0 unless it runs at `--log-level debug`.
#![no_std]
#![no_main]

mod aggregates;
mod maps;
mod probes;
mod read;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
