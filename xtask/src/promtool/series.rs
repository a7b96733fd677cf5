//! A sequence of scrapes (expositions, or failed scrapes) as promtool `input_series`: what
//! Prometheus stores when it scrapes the exporter once per interval.
//!
//! - a series is absent (`_`) until the first scrape that has it: a label set the exporter
//!   creates on first use (an errno it could not list beforehand) appears at its first value
//!   (1), never at 0;
//! - a series a scrape no longer has, or every series when a scrape fails, gets a staleness
//!   marker (`stale`), then stays absent until it is exported again;
//! - `up` (added by Prometheus, not exported) is 1 for each scrape that answered, 0 otherwise.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};

/// One exposition: series (`name{labels}` as exported) → value (as exported).
pub type Exposition = BTreeMap<String, String>;

/// The metric name of a series key.
pub fn name(key: &str) -> &str {
    key.split('{').next().unwrap_or(key)
}

/// Parses a text exposition, keeping the series whose metric name `keep` accepts.
pub fn parse(text: &str, keep: &dyn Fn(&str) -> bool) -> Result<Exposition> {
    let mut out = Exposition::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let split = match line.rfind('}') {
            Some(b) => b + 1,
            None => line.find(' ').unwrap_or(line.len()),
        };
        let (key, rest) = line.split_at(split);
        let value = rest
            .split_whitespace()
            .next()
            .with_context(|| format!("exposition line {}: no value: {line}", i + 1))?;
        value
            .parse::<f64>()
            .with_context(|| format!("exposition line {}: value {value:?}", i + 1))?;
        if keep(name(key)) && out.insert(key.to_string(), value.to_string()).is_some() {
            bail!("exposition line {}: {key} twice", i + 1);
        }
    }
    Ok(out)
}

/// `key` with the target labels Prometheus attaches to every scraped series put first.
pub fn with_target(key: &str, target: &[(&str, &str)]) -> String {
    let labels: Vec<String> = target.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let (name, own) = match key.split_once('{') {
        Some((n, rest)) => (n, rest.trim_end_matches('}')),
        None => (key, ""),
    };
    let own = if own.is_empty() {
        String::new()
    } else {
        format!(",{own}")
    };
    format!("{name}{{{}{own}}}", labels.join(","))
}

/// One promtool input series.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InputSeries {
    pub series: String,
    pub values: String,
}

/// The input series of consecutive scrapes (`None`: the scrape failed), one value per
/// scrape interval, every series labelled with `target`.
pub fn input_series(scrapes: &[Option<Exposition>], target: &[(&str, &str)]) -> Vec<InputSeries> {
    let keys: BTreeSet<&String> = scrapes.iter().flatten().flat_map(|e| e.keys()).collect();
    let up = scrapes
        .iter()
        .map(|s| if s.is_some() { "1" } else { "0" }.to_string())
        .collect();
    let mut out = vec![InputSeries {
        series: with_target("up", target),
        values: compress(up),
    }];
    for key in keys {
        let mut seen = false;
        let mut tokens = Vec::with_capacity(scrapes.len());
        for s in scrapes {
            match s.as_ref().and_then(|e| e.get(key)) {
                Some(v) => {
                    seen = true;
                    tokens.push(v.clone());
                }
                None if seen => {
                    seen = false;
                    tokens.push("stale".into());
                }
                None => tokens.push("_".into()),
            }
        }
        out.push(InputSeries {
            series: with_target(key, target),
            values: compress(tokens),
        });
    }
    out
}

/// promtool's expanding notation for runs of one value: `v v v` is `vx2` (`_` and `stale`
/// are written out).
fn compress(tokens: Vec<String>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        let run = tokens[i..].iter().take_while(|x| *x == t).count();
        if run > 1 && t != "_" && t != "stale" {
            out.push(format!("{t}x{}", run - 1));
        } else {
            out.extend(std::iter::repeat_n(t.clone(), run));
        }
        i += run;
    }
    out.join(" ")
}

/// Counters (`_total`, histogram `_bucket`/`_count`/`_sum`) that went down from `before`
/// to `after` (one process: a replay of a longer prefix must never count less).
pub fn decreases(before: &Exposition, after: &Exposition) -> Vec<String> {
    let counter = |k: &str| {
        let n = name(k);
        ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .any(|s| n.ends_with(s))
    };
    before
        .iter()
        .filter(|(k, _)| counter(k))
        .filter_map(|(k, v)| {
            let old: f64 = v.parse().ok()?;
            match after.get(k).map(|n| n.parse::<f64>()) {
                Some(Ok(new)) if new >= old => None,
                Some(_) => Some(format!("{k}: {v} -> {}", after[k])),
                None => Some(format!("{k}: {v} -> gone")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: [(&str, &str); 2] = [("job", "tsm-trace"), ("instance", "h")];

    fn expo(text: &str) -> Exposition {
        parse(text, &|n| n != "skip").unwrap()
    }

    #[test]
    fn parses_an_exposition() {
        let e =
            expo("# HELP a x\n# TYPE a counter\na{x=\"1 2\",y=\"}\"} 3\nb 0.5\nskip 1\n\nc{} 4\n");
        let keys: Vec<_> = e.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(keys, vec!["a{x=\"1 2\",y=\"}\"}=3", "b=0.5", "c{}=4"]);
        assert!(parse("a nope\n", &|_| true).is_err());
    }

    #[test]
    fn series_appear_absent_then_at_their_value_and_go_stale() {
        let scrapes = vec![
            Some(expo("a{e=\"x\"} 0\n")),
            Some(expo("a{e=\"x\"} 0\na{e=\"new\"} 1\n")),
            Some(expo("a{e=\"x\"} 0\na{e=\"new\"} 1\n")),
            None,
            Some(expo("a{e=\"x\"} 0\n")),
        ];
        let s = input_series(&scrapes, &T);
        let got: Vec<_> = s
            .iter()
            .map(|s| (s.series.as_str(), s.values.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("up{job=\"tsm-trace\",instance=\"h\"}", "1x2 0 1"),
                (
                    "a{job=\"tsm-trace\",instance=\"h\",e=\"new\"}",
                    "_ 1x1 stale _"
                ),
                ("a{job=\"tsm-trace\",instance=\"h\",e=\"x\"}", "0x2 stale 0"),
            ]
        );
    }

    #[test]
    fn counters_must_not_go_down() {
        let a = expo("x_total 2\ny_bucket{le=\"1\"} 1\ng 5\n");
        let b = expo("x_total 1\ng 1\n");
        assert_eq!(
            decreases(&a, &b),
            vec!["x_total: 2 -> 1", "y_bucket{le=\"1\"}: 1 -> gone"]
        );
        assert!(decreases(&b, &a).is_empty());
    }
}
