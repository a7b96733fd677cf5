//! Captures (`tsm-trace trace --record`) as the alert tests use them: cut after whole
//! operations, and derived ones (errnos or timing rewritten) for what no capture contains.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// A capture: its header line and its records (one call each, in return order).
#[derive(Clone, Debug)]
pub struct Capture {
    /// Where it came from, and how it was derived (for messages).
    pub name: String,
    header: Value,
    records: Vec<Value>,
}

fn field(r: &Value, key: &str) -> u64 {
    r.get(key).and_then(Value::as_u64).unwrap_or(0)
}

impl Capture {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Value = serde_json::from_str(lines.next().unwrap_or(""))
            .with_context(|| format!("{}: header line", path.display()))?;
        let records = lines
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .with_context(|| format!("{}: line {}", path.display(), i + 2))
            })
            .collect::<Result<Vec<Value>>>()?;
        Ok(Self {
            name: path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into(),
            ),
            header,
            records,
        })
    }

    /// The record counts after which no call is open: cutting there never splits an
    /// operation (its nested frames return before it, so a cut after an inner frame would
    /// count the operation once without its outer layers and again with them). A record is
    /// still open at cut `n` if a later record of the same thread started before it returned
    /// (it encloses it). Always holds 0 and `len()`.
    pub fn cuts(&self) -> Vec<usize> {
        let mut out = vec![0];
        for n in 1..=self.records.len() {
            let inner = &self.records[n - 1];
            let (tid, end) = (field(inner, "tid"), field(inner, "end_ns"));
            let enclosed = self.records[n..]
                .iter()
                .any(|r| field(r, "tid") == tid && field(r, "start_ns") < end);
            if !enclosed {
                out.push(n);
            }
        }
        out
    }

    /// The first `n` records.
    pub fn take(&self, n: usize) -> Self {
        Self {
            name: format!("{} (first {n} records)", self.name),
            header: self.header.clone(),
            records: self.records[..n.min(self.records.len())].to_vec(),
        }
    }

    /// Records `from..`: what a daemon started at that point sees.
    pub fn skip(&self, from: usize) -> Self {
        Self {
            name: format!("{} (from record {})", self.name, from + 1),
            header: self.header.clone(),
            records: self.records[from.min(self.records.len())..].to_vec(),
        }
    }

    /// Rewrites every failing return (`ret` < 0) of operation `i` (counted between
    /// [`Capture::cuts`]) to `-errno(i, old errno)`: the same calls failing differently.
    pub fn rewrite_errnos(&self, what: &str, errno: impl Fn(usize, i64) -> i64) -> Self {
        let cuts = self.cuts();
        let mut out = self.clone();
        out.name = format!("{} ({what})", self.name);
        for (i, r) in out.records.iter_mut().enumerate() {
            let op = cuts.iter().filter(|&&c| c <= i).count() - 1;
            if let Some(ret) = r.get("ret").and_then(Value::as_i64)
                && ret < 0
            {
                r["ret"] = Value::from(-errno(op, -ret));
            }
        }
        out
    }

    /// Every time stretched `factor` times around the first one: the same calls, in the same
    /// order and nesting, on a TSM that takes `factor` times as long.
    pub fn stretch(&self, factor: u64) -> Self {
        let base = self
            .records
            .iter()
            .flat_map(|r| [field(r, "start_ns"), field(r, "end_ns")])
            .filter(|&t| t > 0)
            .min()
            .unwrap_or(0);
        let mut out = self.clone();
        out.name = format!("{} (times x{factor})", self.name);
        for r in &mut out.records {
            for key in ["start_ns", "end_ns"] {
                let t = field(r, key);
                if t >= base {
                    r[key] = Value::from(base + (t - base) * factor);
                }
            }
        }
        out
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string(&self.header)?;
        text.push('\n');
        for r in &self.records {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(records: &[&str]) -> Capture {
        Capture {
            name: "t".into(),
            header: serde_json::json!({"tsm_trace_record": 2}),
            records: records
                .iter()
                .map(|r| serde_json::from_str(r).unwrap())
                .collect(),
        }
    }

    const NESTED: [&str; 4] = [
        r#"{"probe":"tsm_bind","start_ns":20,"end_ns":30,"tid":1,"ret":-5}"#,
        r#"{"probe":"tsm_op_ioctl","start_ns":10,"end_ns":40,"tid":1,"ret":-5}"#,
        r#"{"probe":"vmm_exit","start_ns":50,"end_ns":50,"tid":2}"#,
        r#"{"probe":"tsm_op_ioctl","start_ns":60,"end_ns":70,"tid":1,"ret":-2}"#,
    ];

    #[test]
    fn cuts_do_not_split_nested_calls() {
        assert_eq!(capture(&NESTED).cuts(), vec![0, 2, 3, 4]);
    }

    #[test]
    fn errnos_are_rewritten_per_operation() {
        let c = capture(&NESTED).rewrite_errnos("test", |op, _| [1, 11, 12][op]);
        let rets: Vec<_> = c.records.iter().map(|r| r.get("ret").cloned()).collect();
        assert_eq!(
            rets,
            vec![
                Some(Value::from(-1)),
                Some(Value::from(-1)),
                None,
                Some(Value::from(-12))
            ]
        );
    }

    #[test]
    fn stretching_keeps_order_and_scales_durations() {
        let c = capture(&NESTED).stretch(10);
        let t: Vec<_> = c
            .records
            .iter()
            .map(|r| (field(r, "start_ns"), field(r, "end_ns")))
            .collect();
        assert_eq!(t, vec![(110, 210), (10, 310), (410, 410), (510, 610)]);
        assert_eq!(c.cuts(), capture(&NESTED).cuts());
    }
}
