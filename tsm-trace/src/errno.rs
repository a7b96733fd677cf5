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
    if let Ok(n) = t.parse::<i32>() {
        let n = n.abs();
        return (1..=4095).contains(&n).then_some(n);
    }
    NAMES
        .iter()
        .find(|(_, name)| name.eq_ignore_ascii_case(t))
        .map(|(n, _)| *n)
        .or_else(|| {
            t.strip_prefix('E')
                .or_else(|| t.strip_prefix('e'))
                .and_then(|d| d.parse().ok())
        })
}

/// The errno encoded in a kernel return value: an `int` or an `ERR_PTR` in `-4095..=-1`.
pub fn from_ret(ret: i64) -> Option<i32> {
    (-4095..=-1).contains(&ret).then(|| (-ret) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
