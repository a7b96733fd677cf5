//! The fixtures' record format: one line of space-separated `key=value` pairs.

use std::collections::BTreeMap;

/// Parse `key=value key=value ...` (values without spaces). Later keys win.
pub fn parse_kv(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
