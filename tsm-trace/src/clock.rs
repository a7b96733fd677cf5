//! Times: every event carries CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`); people and
//! tracing backends want wall-clock time, kernel engineers dmesg's seconds since boot.
//!
//! The CLOCK_MONOTONIC → CLOCK_REALTIME offset is taken once (at start, or from a capture's
//! header), so one event has one wall-clock time wherever it is printed, and a replay prints
//! the times the live session printed.

use std::time::{Duration, UNIX_EPOCH};

/// The current boot's id (empty if unreadable): the boot CLOCK_MONOTONIC times belong to.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` uses.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC).max(0) as u64
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC now, in ns: add it to an event time for Unix time.
pub fn realtime_offset_ns() -> i64 {
    let mono = clock_ns(libc::CLOCK_MONOTONIC);
    let real = clock_ns(libc::CLOCK_REALTIME);
    real.saturating_sub(mono)
}

/// `mono_ns` as RFC 3339 UTC with microseconds (`2026-12-06T23:31:05.123456Z`), given the
/// CLOCK_REALTIME − CLOCK_MONOTONIC offset.
pub fn rfc3339(mono_ns: u64, offset_ns: i64) -> String {
    let unix = (i128::from(mono_ns) + i128::from(offset_ns)).max(0) as u128;
    let t = UNIX_EPOCH + Duration::from_nanos(unix.min(u128::from(u64::MAX)) as u64);
    humantime::format_rfc3339_micros(t).to_string()
}

/// How monotonic event times are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// Seconds since `base_ns` (e.g. the first event of a replay): `   12.345678`.
    Relative { base_ns: u64 },
    /// Local wall-clock time: `realtime = monotonic + offset_ns`, shifted by the local time
    /// zone's UTC offset: `22:31:05.123456`.
    Wall { offset_ns: i64, utc_offset_s: i64 },
    /// Seconds since boot, as dmesg prints them: `[   12.345678]`.
    Boot,
}

impl Clock {
    /// Wall-clock time from the current CLOCK_MONOTONIC→CLOCK_REALTIME offset and local zone.
    pub fn wall_now() -> Clock {
        Clock::wall(realtime_offset_ns())
    }

    /// Wall-clock time through a known offset (a capture's), in the local zone.
    pub fn wall(offset_ns: i64) -> Clock {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        Clock::Wall {
            offset_ns,
            utc_offset_s: local_utc_offset_s(mono.saturating_add(offset_ns) / 1_000_000_000),
        }
    }

    /// Formats a CLOCK_MONOTONIC time.
    pub fn format(&self, mono_ns: u64) -> String {
        let secs = |d: u64| {
            format!(
                "{:>5}.{:06}",
                d / 1_000_000_000,
                (d % 1_000_000_000) / 1_000
            )
        };
        match *self {
            Clock::Relative { base_ns } => secs(mono_ns.saturating_sub(base_ns)),
            Clock::Boot => format!("[{}]", secs(mono_ns)),
            Clock::Wall {
                offset_ns,
                utc_offset_s,
            } => {
                let real = i128::from(mono_ns)
                    + i128::from(offset_ns)
                    + i128::from(utc_offset_s) * 1_000_000_000;
                let real = real.max(0);
                let secs = real / 1_000_000_000;
                let micros = (real % 1_000_000_000) / 1_000;
                let day = secs % 86_400;
                format!(
                    "{:02}:{:02}:{:02}.{:06}",
                    day / 3600,
                    (day % 3600) / 60,
                    day % 60,
                    micros
                )
            }
        }
    }
}

// time_t/c_long are i64 here but not on every target.
#[allow(clippy::useless_conversion)]
fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the pointer we own.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    i64::from(ts.tv_sec)
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(ts.tv_nsec))
}

#[allow(clippy::useless_conversion)]
fn local_utc_offset_s(unix_s: i64) -> i64 {
    // `time_t` is i64 on x86-64 glibc and musl alike; let inference name the type.
    let t = unix_s as _;
    // SAFETY: an all-zero `tm` is valid; localtime_r writes it and returns NULL on failure.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::localtime_r(&t, &mut tm) };
    if r.is_null() {
        0
    } else {
        i64::from(tm.tm_gmtoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_from_the_offset() {
        // 2026-12-06T23:31:05.123456Z is 1_796_599_865.123456 s after the epoch.
        let unix_ns: i64 = 1_796_599_865_123_456_789;
        let mono = 12_345_000_000_000u64;
        let off = unix_ns - mono as i64;
        assert_eq!(rfc3339(mono, off), "2026-12-06T23:31:05.123456Z");
        assert_eq!(rfc3339(0, -5), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn boot_relative_like_dmesg() {
        assert_eq!(Clock::Boot.format(12_345_678_901), "[   12.345678]");
        assert_eq!(
            Clock::Relative { base_ns: 1_000 }.format(1_000_001_000),
            "    1.000000"
        );
    }

    #[test]
    fn now_is_consistent() {
        let off = realtime_offset_ns();
        let now = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        let mono = monotonic_ns() as i64;
        assert!((mono + off - now).abs() < 1_000_000_000);
    }
}
