//! errno numbers ↔ names (Linux, x86-64/generic), for labels and trace lines (`EBUSY`, not -16).

use tsm_trace_common::errno::NAMES;

/// The name of a positive errno, or `E<number>` for one not in the table (so a label is never
/// empty and never unbounded: the kernel's errno space is 1..=4095).
pub fn name(errno: i32) -> String {
    tsm_trace_common::errno::name(errno)
        .map(str::to_string)
        .unwrap_or_else(|| format!("E{errno}"))
}

/// Parses `EBUSY`, `ebusy`, `16` or `-16` into a positive errno.
pub fn parse(s: &str) -> Option<i32> {
    let t = s.trim();
    let in_range = |n: i64| (1..=4095).contains(&n).then_some(n as i32);
    if let Ok(n) = t.parse::<i64>() {
        return in_range(n.checked_abs()?);
    }
    NAMES
        .iter()
        .find(|(_, name)| name.eq_ignore_ascii_case(t))
        .map(|(n, _)| *n)
        .or_else(|| {
            t.strip_prefix('E')
                .or_else(|| t.strip_prefix('e'))
                .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<i64>().ok())
                .and_then(in_range)
        })
}

/// The errno encoded in a kernel return value: an `int` or an `ERR_PTR` in `-4095..=-1`.
pub fn from_ret(ret: i64) -> Option<i32> {
    (-4095..=-1).contains(&ret).then(|| (-ret) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Out-of-range and hostile inputs are `None`, never a panic.
    #[test]
    fn parse_table() {
        for (input, want) in [
            ("EBUSY", Some(16)),
            ("ebusy", Some(16)),
            ("16", Some(16)),
            ("-16", Some(16)),
            (" ENOENT ", Some(2)),
            ("E4095", Some(4095)),
            ("0", None),
            ("4096", None),
            ("-2147483648", None),
            ("-9223372036854775808", None),
            ("99999999999999999999", None),
            ("E99999", None),
            ("E+5", None),
            ("E", None),
            ("", None),
            ("EWHAT", None),
        ] {
            assert_eq!(parse(input), want, "{input:?}");
        }
    }

    #[test]
    fn names_round_trip() {
        for (n, s) in NAMES {
            assert_eq!(name(*n), *s);
            assert_eq!(parse(s), Some(*n));
        }
        assert_eq!(name(4000), "E4000");
        assert_eq!(parse("E4000"), Some(4000));
        assert_eq!(parse("-16"), Some(16));
        assert_eq!(parse("0"), None);
        assert_eq!(parse("EWHAT"), None);
    }

    #[test]
    fn err_ptr_decoding() {
        assert_eq!(from_ret(-16), Some(16));
        assert_eq!(from_ret(0), None);
        assert_eq!(from_ret(-4096), None);
        assert_eq!(from_ret(0xffff_8880_0000_1000_u64 as i64), None);
    }

    /// The table against the C library's own constants (an independent source), and the
    /// kernel-internal names drivers return that the table once lacked (`E517`).
    #[test]
    fn names_match_the_c_library() {
        for (n, want) in [
            (libc::EPERM, "EPERM"),
            (libc::ENOEXEC, "ENOEXEC"),
            (libc::EAGAIN, "EAGAIN"),
            (libc::EDEADLK, "EDEADLK"),
            (libc::ENOLINK, "ENOLINK"),
            (libc::EOPNOTSUPP, "EOPNOTSUPP"),
            (libc::EREMOTEIO, "EREMOTEIO"),
            (libc::EKEYREJECTED, "EKEYREJECTED"),
            (libc::EHWPOISON, "EHWPOISON"),
        ] {
            assert_eq!(name(n), want);
        }
        for (i, (n, s)) in NAMES.iter().enumerate() {
            assert_eq!(parse(s), Some(*n), "{s}");
            assert!(
                NAMES[..i].iter().all(|(m, t)| m != n && t != s),
                "{s} twice"
            );
        }
        assert_eq!(name(517), "EPROBE_DEFER");
        assert_eq!(name(515), "ENOIOCTLCMD");
        assert_eq!(name(520), "E520");
        assert_eq!(name(4095), "E4095");
    }
}
