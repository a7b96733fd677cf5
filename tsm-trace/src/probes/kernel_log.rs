//! Kernel-side diagnostics through aya-log. The programs log only on rare paths (a faulted
//! read, naming the field and its offset, never the address; a full map or ring buffer), never
//! on the success path, and only what `--log-level debug` shows:
//!
//! - at debug, the programs' log level (`AYA_LOG_LEVEL`) is debug and [`start`] reads their
//!   `AYA_LOGS` ring buffer into the daemon's own log (target `tsm_trace_ebpf::…`);
//! - at any other level the programs' log level is 0 (each statement is one untaken branch),
//!   `AYA_LOGS` is created with one page instead of 128 KiB, and nothing reads it.
//!
//! The counters (`tsm_trace_kernel_read_faults_total`, `tsm_trace_events_lost_total`) count
//! the same events at every level; the log says which field or map.

use std::os::fd::AsRawFd;

use aya::{Ebpf, EbpfLoader};
use tokio::io::{Interest, unix::AsyncFd};

/// The programs' log level while debug logging is on, and while it is off.
static LEVEL_DEBUG: u8 = aya_log::Level::Debug as u8;
static LEVEL_OFF: u8 = 0;

/// The ring buffer aya-log-ebpf writes to.
const MAP: &str = "AYA_LOGS";

/// Whether the daemon shows debug logs (set by `logger::init` from `--log-level`).
fn enabled() -> bool {
    log::max_level() >= log::LevelFilter::Debug
}

/// Sets the programs' log level, and shrinks their log ring buffer when nothing will read it.
pub fn configure(loader: &mut EbpfLoader<'_>) {
    if enabled() {
        loader.override_global(aya_log::LEVEL, &LEVEL_DEBUG, true);
    } else {
        loader.override_global(aya_log::LEVEL, &LEVEL_OFF, true);
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        loader.map_max_entries(MAP, u32::try_from(page).unwrap_or(4096));
    }
}

/// Reads the programs' log records into the daemon's log while it lives (dropped: aborted).
pub struct KernelLog(tokio::task::JoinHandle<()>);

impl Drop for KernelLog {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// At `--log-level debug`, starts reading the programs' diagnostics (needs a tokio runtime);
/// otherwise `None`. A logger that cannot start is a warning, not a failure: the counters
/// still count what it would have named.
pub fn start(ebpf: &mut Ebpf) -> Option<KernelLog> {
    if !enabled() {
        return None;
    }
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            log::warn!(
                "kernel-side diagnostics are off ({e}): faulted reads and full maps are still counted in /metrics, but not named in the log"
            );
            return None;
        }
    };
    // SAFETY: the logger's ring buffer fd stays valid while the logger lives inside the AsyncFd.
    let mut fd = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            log::warn!(
                "kernel-side diagnostics are off (polling their ring buffer: {e}): faulted reads and full maps are still counted in /metrics, but not named in the log"
            );
            return None;
        }
    };
    log::debug!(
        "kernel-side diagnostics on: reading {MAP} (fd {})",
        fd.get_ref().as_raw_fd()
    );
    Some(KernelLog(tokio::spawn(async move {
        loop {
            let Ok(mut ready) = fd.readable_mut().await else {
                return;
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    })))
}
