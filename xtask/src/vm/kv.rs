//! The fixtures' record format: one line of space-separated `key=value` pairs.

use std::collections::BTreeMap;

/// Parse `key=value key=value ...` (values without spaces). Later keys win.
pub fn parse_kv(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The errno name in a fixture's `%pe` output (`-EIO` → `EIO`; `0` or empty → ""), the
/// kernel's own name (CONFIG_SYMBOLIC_ERRNAME), never one looked up in a table of ours. A
/// kernel without symbolic names prints the number (`-5`): the result then names the problem
/// in words no errno name can equal, so every comparison with it fails and says why.
pub fn pe_name(err: &str) -> String {
    let name = err.trim().trim_start_matches('-');
    if name.is_empty() || name == "0" {
        String::new()
    } else if name.starts_with('E') && name.chars().all(|c| c.is_ascii_alphanumeric()) {
        name.to_string()
    } else {
        format!("<%pe printed {err:?}: the kernel lacks CONFIG_SYMBOLIC_ERRNAME>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pe_names() {
        assert_eq!(pe_name("-EIO"), "EIO");
        assert_eq!(pe_name("-EOPNOTSUPP"), "EOPNOTSUPP");
        assert_eq!(pe_name("0"), "");
        assert_eq!(pe_name(""), "");
        assert!(pe_name("-5").contains("CONFIG_SYMBOLIC_ERRNAME"));
        assert_ne!(pe_name("-5"), "EIO");
    }
}
