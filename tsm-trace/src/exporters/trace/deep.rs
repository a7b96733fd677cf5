//! `trace --deep`: the lines under an operation line — its deep call tree and the origin of
//! its error with the kernel stack there.
//!
//! ```text
//! 22:31:05.123456 connect  0000:01:00.0 tsm=tsm0  EPROTO from tsm_driver (driver_connect) origin=lt_spdm_verify  connect 2.1ms > driver_connect 2.0ms  comm=bash tgid=311
//!     lt_spdm_session [tsm_linktsm] 1.9ms EPROTO
//!       lt_spdm_exchange 1.8ms EPROTO
//!         lt_spdm_recv 1.2ms EPROTO
//!           lt_spdm_verify 310us EPROTO  <- origin
//!     origin lt_spdm_verify [tsm_linktsm] EPROTO, kernel stack:
//!       lt_spdm_verify
//!       lt_spdm_recv+0x2c
//! ```
//!
//! Calls are indented by their depth among the deep calls, in the order they started; a
//! module is named on the first call from it. Every call shows what it returned as an errno;
//! the origin is the first to return the operation's errno.

use std::fmt::Write as _;

use super::fmt_duration;
use crate::correlate::Operation;
use crate::errno;

/// ` origin=<function>`, for the operation line (so a grep for the origin finds the line).
pub fn origin_field(op: &Operation) -> String {
    op.origin()
        .map(|o| format!(" origin={}", o.function))
        .unwrap_or_default()
}

/// The lines after the operation line (each starting with a newline); empty without deep
/// calls.
pub fn lines(op: &Operation) -> String {
    let mut s = String::new();
    let mut module: Option<&str> = None;
    let origin = op.origin();
    for (i, c) in op.calls().iter().enumerate() {
        let _ = write!(
            s,
            "\n    {}{}",
            "  ".repeat(c.depth.saturating_sub(1) as usize),
            c.function
        );
        let m = c.module.as_deref().unwrap_or("vmlinux");
        if module != Some(m) {
            let _ = write!(s, " [{m}]");
            module = Some(m);
        }
        let _ = write!(s, " {}", fmt_duration(c.duration_ns));
        if let Some(e) = c.errno {
            let _ = write!(s, " {}", errno::name(e));
        }
        if origin.is_some_and(|o| o.call == i) {
            s.push_str("  <- origin");
        }
    }
    if let Some(o) = origin {
        let _ = write!(
            s,
            "\n    origin {} [{}] {}",
            o.function,
            o.module.as_deref().unwrap_or("vmlinux"),
            errno::name(o.errno)
        );
        if o.stack.is_empty() {
            s.push_str(" (no kernel stack: the kernel took none)");
        } else {
            s.push_str(", kernel stack:");
            for f in &o.stack {
                let _ = write!(s, "\n      {f}");
            }
        }
    }
    s
}
