//! The OpenMetrics 1.0 text exposition of what the `prometheus` crate gathers, with exemplars.
//!
//! The `prometheus` crate (tikv/rust-prometheus 0.14) has neither: its `proto::Bucket` has no
//! exemplar field and its encoders write only the classic text format (0.0.4) and protobuf. So
//! the registry still gathers the `MetricFamily` values, and this module writes them as
//! OpenMetrics text, asking a lookup for each histogram bucket's exemplar (the latency
//! histograms': `exemplars.rs`). `/metrics` serves it when the scraper's `Accept` asks for it
//! ([`negotiate`]; Prometheus does); otherwise the classic text, unchanged.
//!
//! What the specification asks and this does: `# TYPE`, `# HELP` per family (no `# UNIT`: the
//! names carry their units, and a UNIT line is optional); a counter's family named without
//! `_total` and its sample with it; a gauge named `*_info` whose samples are all 1 as an `info`
//! family (`foo` of type info, sample `foo_info`: the sample name is the same as before);
//! histogram buckets cumulative, ending with `le="+Inf"`, then `_count` and `_sum`; `le` and
//! `quantile` values in the canonical form (Go's `%g`, `.0` added to an integral value:
//! `1e-05`, `0.001`, `1.0`, `+Inf`); exemplars only on buckets, at most 128 code points of
//! label names and values, their value within the bucket; integers without a decimal point;
//! `# EOF` last.

use std::fmt::Write as _;

use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType};

/// The OpenMetrics exposition's content type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The most code points an exemplar's label names and values may have together.
pub const MAX_EXEMPLAR_LABEL_CHARS: usize = 128;

/// An exemplar: a label set (e.g. `trace_id`, `span_id`), the value observed and when.
#[derive(Clone, Debug, PartialEq)]
pub struct Exemplar {
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: Option<u64>,
}

/// Which exposition a scrape gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The classic text format, `text/plain; version=0.0.4`.
    Text,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

/// Chooses the format from the request's `Accept` header values (all of them, in order):
/// OpenMetrics when `application/openmetrics-text` (version 1.0.0 or none) is acceptable
/// (q > 0) and preferred at least as much as the classic text (`text/plain`, `text/*`,
/// `*/*`); the classic text otherwise, also for a missing or malformed header.
pub fn negotiate<'a>(accept: impl IntoIterator<Item = &'a [u8]>) -> Format {
    let mut om_q: f32 = 0.0;
    let mut text_q: f32 = 0.0;
    for value in accept {
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        for range in value.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let mut q: f32 = 1.0;
            let mut version: Option<String> = None;
            let mut bad = false;
            for p in parts {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => match v.parse::<f32>() {
                        Ok(x) if (0.0..=1.0).contains(&x) => q = x,
                        _ => bad = true,
                    },
                    "version" => version = Some(v.to_owned()),
                    _ => {}
                }
            }
            if bad {
                continue;
            }
            match media.as_str() {
                "application/openmetrics-text"
                    if version.as_deref().is_none_or(|v| v == "1.0.0") =>
                {
                    om_q = om_q.max(q)
                }
                "text/plain" if version.as_deref().is_none_or(|v| v == "0.0.4") => {
                    text_q = text_q.max(q)
                }
                "text/*" | "*/*" => text_q = text_q.max(q),
                _ => {}
            }
        }
    }
    if om_q > 0.0 && om_q >= text_q {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

/// A gathered family that cannot be written as valid OpenMetrics (the whole exposition would
/// be invalid: the specification makes a partial exposition erroneous in its entirety).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("metric family {0:?}: not a valid OpenMetrics metric name")]
    BadName(String),
    #[error("metric family {family}: label name {label:?} is not valid in OpenMetrics")]
    BadLabel { family: String, label: String },
    #[error("metric family {0}: exposed twice (sample names would clash)")]
    Duplicate(String),
}

fn valid_metric_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(x) if x.is_ascii_alphabetic() || x == '_' || x == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(x) if x.is_ascii_alphabetic() || x == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// `\` → `\\`, `"` → `\"`, line feed → `\n` (label values and HELP text alike).
fn escape(s: &str, out: &mut String) {
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A sample value or an exemplar value: integral values without a decimal point, others as
/// Rust's shortest round-trip decimal; `+Inf`, `-Inf`, `NaN`.
fn number(v: f64, out: &mut String) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v == v.trunc() && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

/// The canonical rendering of an `le` or `quantile` value: Go's `%g` (shortest digits;
/// exponent form below 1e-4 and from 1e+06 on, with at least two exponent digits), `.0`
/// appended when there is neither a point nor an exponent; `+Inf`.
pub fn canonical(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if v == 0.0 {
        return "0.0".into();
    }
    // Rust's `{:e}`: shortest round-trip digits, `d.ddde<exp>`.
    let e = format!("{v:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let s = format!("{v}");
    if s.contains('.') { s } else { s + ".0" }
}

/// Unix ns as seconds with nine decimals (no exponent: the precision is kept).
fn timestamp(ns: u64, out: &mut String) {
    let _ = write!(out, "{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000);
}

fn labels(pairs: &[LabelPair], extra: Option<(&str, &str)>, out: &mut String) {
    if pairs.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for l in pairs {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(l.name());
        out.push_str("=\"");
        escape(l.value(), out);
        out.push('"');
    }
    if let Some((k, v)) = extra {
        if !first {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape(v, out);
        out.push('"');
    }
    out.push('}');
}

/// ` # {labels} value [timestamp]`, or nothing if the exemplar is not valid here (its label
/// set too long or a bad label name, its value not within the bucket).
fn exemplar(e: &Exemplar, upper_bound: f64, out: &mut String) {
    let chars: usize = e
        .labels
        .iter()
        .map(|(k, v)| k.chars().count() + v.chars().count())
        .sum();
    if chars > MAX_EXEMPLAR_LABEL_CHARS
        || e.labels.iter().any(|(k, _)| !valid_label_name(k))
        || e.value.is_nan()
        || e.value > upper_bound
    {
        return;
    }
    out.push_str(" # {");
    for (i, (k, v)) in e.labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape(v, out);
        out.push('"');
    }
    out.push_str("} ");
    number(e.value, out);
    if let Some(ts) = e.timestamp_ns {
        out.push(' ');
        timestamp(ts, out);
    }
}

fn sample(
    name: &str,
    suffix: &str,
    m: &Metric,
    extra: Option<(&str, &str)>,
    value: f64,
    out: &mut String,
) {
    out.push_str(name);
    out.push_str(suffix);
    labels(m.get_label(), extra, out);
    out.push(' ');
    number(value, out);
    if m.timestamp_ms() != 0 {
        let ms = m.timestamp_ms();
        let _ = write!(
            out,
            " {}{}.{:03}",
            if ms < 0 { "-" } else { "" },
            ms.unsigned_abs() / 1000,
            ms.unsigned_abs() % 1000
        );
    }
}

/// Looks up the exemplar of a histogram bucket: (family, metric, bucket's upper bound).
pub type Lookup<'a> = &'a dyn Fn(&MetricFamily, &Metric, f64) -> Option<Exemplar>;

/// Writes `families` as one OpenMetrics exposition, ending with `# EOF`.
pub fn encode(families: &[MetricFamily], exemplars: Lookup<'_>) -> Result<String, EncodeError> {
    let mut out = String::with_capacity(16 * 1024);
    let mut seen = std::collections::HashSet::new();
    for mf in families {
        let name = mf.name();
        if !valid_metric_name(name) {
            return Err(EncodeError::BadName(name.to_owned()));
        }
        for m in mf.get_metric() {
            for l in m.get_label() {
                if !valid_label_name(l.name()) || l.name() == "le" && is_hist(mf) {
                    return Err(EncodeError::BadLabel {
                        family: name.to_owned(),
                        label: l.name().to_owned(),
                    });
                }
            }
        }
        let ty = mf.get_field_type();
        let info = ty == MetricType::GAUGE
            && name.strip_suffix("_info").is_some_and(|b| !b.is_empty())
            && mf
                .get_metric()
                .iter()
                .all(|m| m.get_gauge().get_value() == 1.0);
        // The family's name in the metadata, and its type.
        let (family, om_type) = match ty {
            MetricType::COUNTER => (name.strip_suffix("_total").unwrap_or(name), "counter"),
            MetricType::GAUGE if info => (name.strip_suffix("_info").unwrap_or(name), "info"),
            MetricType::GAUGE => (name, "gauge"),
            MetricType::HISTOGRAM => (name, "histogram"),
            MetricType::SUMMARY => (name, "summary"),
            MetricType::UNTYPED => (name, "unknown"),
        };
        if !seen.insert(family.to_owned()) {
            return Err(EncodeError::Duplicate(family.to_owned()));
        }
        let _ = writeln!(out, "# TYPE {family} {om_type}");
        if !mf.help().is_empty() {
            let _ = write!(out, "# HELP {family} ");
            escape(mf.help(), &mut out);
            out.push('\n');
        }
        for m in mf.get_metric() {
            match ty {
                MetricType::COUNTER => {
                    sample(
                        family,
                        "_total",
                        m,
                        None,
                        m.get_counter().get_value(),
                        &mut out,
                    );
                    out.push('\n');
                }
                MetricType::GAUGE => {
                    sample(name, "", m, None, m.get_gauge().get_value(), &mut out);
                    out.push('\n');
                }
                MetricType::UNTYPED => {
                    #[allow(deprecated)] // the crate's proto; the value is still there
                    let v = m.get_untyped().get_value();
                    sample(name, "", m, None, v, &mut out);
                    out.push('\n');
                }
                MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    let mut last = f64::NEG_INFINITY;
                    for b in h.get_bucket() {
                        let le = b.upper_bound();
                        if le.is_nan() || le <= last {
                            continue; // unsorted or NaN: not a valid bucket
                        }
                        last = le;
                        let c = b.cumulative_count();
                        sample(
                            name,
                            "_bucket",
                            m,
                            Some(("le", &canonical(le))),
                            c as f64,
                            &mut out,
                        );
                        if let Some(e) = exemplars(mf, m, le) {
                            exemplar(&e, le, &mut out);
                        }
                        out.push('\n');
                    }
                    if last != f64::INFINITY {
                        sample(
                            name,
                            "_bucket",
                            m,
                            Some(("le", "+Inf")),
                            h.get_sample_count() as f64,
                            &mut out,
                        );
                        if let Some(e) = exemplars(mf, m, f64::INFINITY) {
                            exemplar(&e, f64::INFINITY, &mut out);
                        }
                        out.push('\n');
                    }
                    sample(
                        name,
                        "_count",
                        m,
                        None,
                        h.get_sample_count() as f64,
                        &mut out,
                    );
                    out.push('\n');
                    sample(name, "_sum", m, None, h.get_sample_sum(), &mut out);
                    out.push('\n');
                }
                MetricType::SUMMARY => {
                    let s = m.get_summary();
                    for q in s.get_quantile() {
                        sample(
                            name,
                            "",
                            m,
                            Some(("quantile", &canonical(q.quantile()))),
                            q.value(),
                            &mut out,
                        );
                        out.push('\n');
                    }
                    sample(name, "_count", m, None, s.sample_count() as f64, &mut out);
                    out.push('\n');
                    sample(name, "_sum", m, None, s.sample_sum(), &mut out);
                    out.push('\n');
                }
            }
        }
    }
    out.push_str("# EOF\n");
    Ok(out)
}

fn is_hist(mf: &MetricFamily) -> bool {
    mf.get_field_type() == MetricType::HISTOGRAM
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::proto::{Bucket, Counter, Gauge, Histogram};

    fn pair(k: &str, v: &str) -> LabelPair {
        let mut l = LabelPair::default();
        l.set_name(k.into());
        l.set_value(v.into());
        l
    }

    fn family(name: &str, help: &str, ty: MetricType, metrics: Vec<Metric>) -> MetricFamily {
        let mut f = MetricFamily::default();
        f.set_name(name.into());
        f.set_help(help.into());
        f.set_field_type(ty);
        f.set_metric(metrics);
        f
    }

    fn counter(labels: Vec<LabelPair>, v: f64) -> Metric {
        let mut c = Counter::default();
        c.set_value(v);
        let mut m = Metric::from_label(labels);
        m.set_counter(c);
        m
    }

    fn gauge(labels: Vec<LabelPair>, v: f64) -> Metric {
        let mut g = Gauge::default();
        g.set_value(v);
        let mut m = Metric::from_label(labels);
        m.set_gauge(g);
        m
    }

    fn histogram(labels: Vec<LabelPair>, bounds: &[(f64, u64)], count: u64, sum: f64) -> Metric {
        let mut h = Histogram::default();
        h.set_bucket(
            bounds
                .iter()
                .map(|&(le, c)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(le);
                    b.set_cumulative_count(c);
                    b
                })
                .collect(),
        );
        h.set_sample_count(count);
        h.set_sample_sum(sum);
        let mut m = Metric::from_label(labels);
        m.set_histogram(h);
        m
    }

    fn none(_: &MetricFamily, _: &Metric, _: f64) -> Option<Exemplar> {
        None
    }

    fn sample_set() -> Vec<MetricFamily> {
        vec![
            family(
                "app_requests_total",
                "Requests \"handled\", by path\\kind.\nSecond line.",
                MetricType::COUNTER,
                vec![
                    counter(vec![pair("path", "/a\"b\\c\nd")], 3.0),
                    counter(vec![pair("path", "")], 0.0),
                ],
            ),
            family(
                "app_build_info",
                "Build.",
                MetricType::GAUGE,
                vec![gauge(vec![pair("version", "1.2")], 1.0)],
            ),
            family(
                "app_temperature_celsius",
                "",
                MetricType::GAUGE,
                vec![gauge(vec![], -1.5), gauge(vec![pair("x", "y")], f64::NAN)],
            ),
            family(
                "app_latency_seconds",
                "Latency.",
                MetricType::HISTOGRAM,
                vec![histogram(
                    vec![pair("op", "bind")],
                    &[(10e-6, 1), (1e-3, 2), (0.5, 2), (1.0, 3), (30.0, 3)],
                    4,
                    40.25,
                )],
            ),
        ]
    }

    fn lookup(_: &MetricFamily, _: &Metric, le: f64) -> Option<Exemplar> {
        let trace = "0af7651916cd43dd8448eb211c80319c".to_owned();
        let span = "b7ad6b7169203331".to_owned();
        let e = |value: f64| Exemplar {
            labels: vec![("trace_id", trace.clone()), ("span_id", span.clone())],
            value,
            timestamp_ns: Some(1_765_100_000_123_456_789),
        };
        if le == 1e-3 {
            Some(e(0.000_512))
        } else if le == 1.0 {
            Some(e(2.0)) // not within the bucket: left out
        } else if le.is_infinite() {
            Some(e(40.0))
        } else {
            None
        }
    }

    #[test]
    fn exposition_follows_the_specification() {
        let text = encode(&sample_set(), &lookup).unwrap();
        let want = "\
# TYPE app_requests counter
# HELP app_requests Requests \\\"handled\\\", by path\\\\kind.\\nSecond line.
app_requests_total{path=\"/a\\\"b\\\\c\\nd\"} 3
app_requests_total{path=\"\"} 0
# TYPE app_build info
# HELP app_build Build.
app_build_info{version=\"1.2\"} 1
# TYPE app_temperature_celsius gauge
app_temperature_celsius -1.5
app_temperature_celsius{x=\"y\"} NaN
# TYPE app_latency_seconds histogram
# HELP app_latency_seconds Latency.
app_latency_seconds_bucket{op=\"bind\",le=\"1e-05\"} 1
app_latency_seconds_bucket{op=\"bind\",le=\"0.001\"} 2 # {trace_id=\"0af7651916cd43dd8448eb211c80319c\",span_id=\"b7ad6b7169203331\"} 0.000512 1765100000.123456789
app_latency_seconds_bucket{op=\"bind\",le=\"0.5\"} 2
app_latency_seconds_bucket{op=\"bind\",le=\"1.0\"} 3
app_latency_seconds_bucket{op=\"bind\",le=\"30.0\"} 3
app_latency_seconds_bucket{op=\"bind\",le=\"+Inf\"} 4 # {trace_id=\"0af7651916cd43dd8448eb211c80319c\",span_id=\"b7ad6b7169203331\"} 40 1765100000.123456789
app_latency_seconds_count{op=\"bind\"} 4
app_latency_seconds_sum{op=\"bind\"} 40.25
# EOF
";
        assert_eq!(text, want);
    }

    #[test]
    fn a_real_parser_accepts_it() {
        let text = encode(&sample_set(), &lookup).unwrap();
        let Some(r) = crate::test_support::openmetrics_parse(&text) else {
            return;
        };
        let parsed = r.unwrap_or_else(|e| panic!("the OpenMetrics parser refused:\n{e}\n{text}"));
        assert!(parsed.contains("app_requests counter"), "{parsed}");
        assert!(parsed.contains("app_build info"), "{parsed}");
        assert!(
            parsed.contains(
                "span_id': 'b7ad6b7169203331'}, value=0.000512, timestamp=Timestamp(1765100000, 123456789))"
            ),
            "{parsed}"
        );
    }

    #[test]
    fn canonical_numbers_are_gos() {
        // The specification's examples.
        for (v, s) in [
            (0.0, "0.0"),
            (0.001, "0.001"),
            (0.002, "0.002"),
            (0.01, "0.01"),
            (0.1, "0.1"),
            (0.9, "0.9"),
            (0.95, "0.95"),
            (0.99, "0.99"),
            (0.999, "0.999"),
            (1.0, "1.0"),
            (1.7, "1.7"),
            (10.0, "10.0"),
            (1e-10, "1e-10"),
            (1e-9, "1e-09"),
            (1e-5, "1e-05"),
            (1e-4, "0.0001"),
            (100000.0, "100000.0"),
            (1e6, "1e+06"),
            (1e10, "1e+10"),
            (25e-6, "2.5e-05"),
            (2.5e-3, "0.0025"),
            (f64::INFINITY, "+Inf"),
        ] {
            assert_eq!(canonical(v), s, "{v}");
        }
    }

    #[test]
    fn an_info_gauge_with_another_value_stays_a_gauge() {
        let f = family(
            "x_info",
            "h",
            MetricType::GAUGE,
            vec![gauge(vec![pair("a", "b")], 2.0)],
        );
        let text = encode(&[f], &none).unwrap();
        assert!(text.starts_with("# TYPE x_info gauge\n"), "{text}");
    }

    #[test]
    fn an_exemplar_over_128_code_points_is_left_out() {
        let f = family(
            "h_seconds",
            "h",
            MetricType::HISTOGRAM,
            vec![histogram(vec![], &[(1.0, 1)], 1, 0.5)],
        );
        let long = |_: &MetricFamily, _: &Metric, _: f64| {
            Some(Exemplar {
                labels: vec![("trace_id", "é".repeat(120))], // 8 + 120 = 128 code points: kept
                value: 0.5,
                timestamp_ns: None,
            })
        };
        let text = encode(std::slice::from_ref(&f), &long).unwrap();
        assert_eq!(text.matches(" # {").count(), 2, "{text}");
        let longer = |_: &MetricFamily, _: &Metric, _: f64| {
            Some(Exemplar {
                labels: vec![("trace_id", "é".repeat(121))],
                value: 0.5,
                timestamp_ns: None,
            })
        };
        let text = encode(&[f], &longer).unwrap();
        assert!(!text.contains(" # {"), "{text}");
    }

    #[test]
    fn invalid_families_are_errors_not_panics() {
        let bad = family("1x", "h", MetricType::GAUGE, vec![]);
        assert_eq!(
            encode(&[bad], &none),
            Err(EncodeError::BadName("1x".into()))
        );
        let le = family(
            "h",
            "h",
            MetricType::HISTOGRAM,
            vec![histogram(vec![pair("le", "1")], &[], 0, 0.0)],
        );
        assert!(matches!(
            encode(&[le], &none),
            Err(EncodeError::BadLabel { .. })
        ));
        let a = family("c_total", "h", MetricType::COUNTER, vec![]);
        let b = family("c", "h", MetricType::GAUGE, vec![]);
        assert_eq!(
            encode(&[a, b], &none),
            Err(EncodeError::Duplicate("c".into()))
        );
    }

    #[test]
    fn negotiation() {
        let n = |h: &str| negotiate([h.as_bytes()]);
        // Prometheus 2.x.
        assert_eq!(
            n(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            ),
            Format::OpenMetrics
        );
        // Prometheus 3.x.
        assert_eq!(
            n(
                "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
            ),
            Format::OpenMetrics
        );
        assert_eq!(
            n("application/openmetrics-text; version=1.0.0"),
            Format::OpenMetrics
        );
        assert_eq!(n("application/openmetrics-text"), Format::OpenMetrics);
        assert_eq!(negotiate(std::iter::empty()), Format::Text);
        assert_eq!(n("*/*"), Format::Text);
        assert_eq!(n("text/plain"), Format::Text);
        assert_eq!(
            n("application/openmetrics-text;version=0.0.1"),
            Format::Text
        );
        assert_eq!(n("application/openmetrics-text;q=0"), Format::Text);
        assert_eq!(
            n("application/openmetrics-text;q=0.5,text/plain;q=0.9"),
            Format::Text
        );
        // Malformed: never a panic, the classic text.
        for h in [
            "",
            ";",
            ",,,",
            "application/openmetrics-text;q=abc",
            "application/openmetrics-text;q=2",
            ";;==;q",
            "\u{1F600}/\u{1F600};q=\"\"",
        ] {
            let _ = n(h);
        }
        assert_eq!(n("application/openmetrics-text;q=abc"), Format::Text);
        assert_eq!(negotiate([&b"\xff\xfe"[..]]), Format::Text);
    }
}
