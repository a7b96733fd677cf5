//! A small stderr logger: text for people, JSON lines for log shippers.
//!
//! In JSON, a record's key-values (`log::info!(probe = "tsm_bind"; "...")`) are fields of
//! the object, and the message loses the column padding that aligns text lines (the fields
//! carry that structure). Fatal errors go through [`fatal`], in the same format.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};
use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

struct Logger {
    format: Format,
    level: LevelFilter,
}

/// Collects a record's key-values as JSON fields.
struct Fields<'a>(&'a mut Map<String, Value>);

impl<'kvs> log::kv::VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        let v = if let Some(n) = value.to_u64() {
            Value::from(n)
        } else if let Some(n) = value.to_i64() {
            Value::from(n)
        } else if let Some(b) = value.to_bool() {
            Value::from(b)
        } else {
            Value::from(value.to_string())
        };
        self.0.insert(key.as_str().to_string(), v);
        Ok(())
    }
}

/// Runs of spaces (text alignment) become one.
fn unpad(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c == ' ' {
            if !space {
                out.push(' ');
            }
            space = true;
        } else {
            out.push(c);
            space = false;
        }
    }
    out
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// One JSON log line: `ts`, `level`, `target`, `msg`, then the fields.
fn json_line(level: &str, target: &str, msg: &str, fields: Map<String, Value>) -> String {
    let mut o = Map::new();
    o.insert("ts".into(), Value::from(now()));
    o.insert("level".into(), Value::from(level));
    o.insert("target".into(), Value::from(target));
    o.insert("msg".into(), Value::from(unpad(msg)));
    for (k, v) in fields {
        o.entry(k).or_insert(v);
    }
    Value::Object(o).to_string()
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= self.level && (m.target().starts_with("tsm_trace") || m.level() <= Level::Warn)
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let _ = writeln!(std::io::stderr().lock(), "{}", render(self.format, r));
    }

    fn flush(&self) {}
}

/// One log line for `r`.
fn render(format: Format, r: &Record) -> String {
    match format {
        Format::Text => format!("tsm-trace: {}: {}", level(r.level()), r.args()),
        Format::Json => {
            let mut fields = Map::new();
            let _ = r.key_values().visit(&mut Fields(&mut fields));
            json_line(level(r.level()), r.target(), &r.args().to_string(), fields)
        }
    }
}

fn level(l: Level) -> &'static str {
    match l {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

pub fn init(level: LevelFilter, format: Format) {
    let _ = log::set_boxed_logger(Box::new(Logger { format, level }));
    log::set_max_level(level);
}

/// The error that ends the process, in the log format: text, the error and each cause on a
/// line of its own; JSON, one object with `msg`, `causes` and `exit_code`.
pub fn fatal_lines(format: Format, e: &anyhow::Error, exit_code: i32) -> Vec<String> {
    let causes: Vec<String> = e.chain().skip(1).map(|c| c.to_string()).collect();
    match format {
        Format::Text => std::iter::once(format!("tsm-trace: error: {e}"))
            .chain(causes.iter().map(|c| format!("  caused by: {c}")))
            .collect(),
        Format::Json => {
            let mut fields = Map::new();
            if !causes.is_empty() {
                fields.insert("causes".into(), Value::from(causes));
            }
            fields.insert("exit_code".into(), Value::from(exit_code));
            vec![json_line("error", "tsm_trace", &e.to_string(), fields)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fatal_is_one_object_with_its_causes() {
        let e = anyhow::anyhow!("reading /x").context("the VM-name key (--vm-key)");
        let lines = fatal_lines(Format::Json, &e, 2);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let v: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "the VM-name key (--vm-key)");
        assert_eq!(v["causes"][0], "reading /x");
        assert_eq!(v["exit_code"], 2);
        let text = fatal_lines(Format::Text, &e, 2);
        assert_eq!(text[0], "tsm-trace: error: the VM-name key (--vm-key)");
        assert_eq!(text[1], "  caused by: reading /x");
    }

    /// A record's key-values become fields of its JSON line, typed.
    #[test]
    fn record_key_values_are_fields() {
        let kvs: [(&str, log::kv::Value); 3] = [
            ("probe", log::kv::Value::from("tsm_bind")),
            ("attached", log::kv::Value::from(false)),
            ("count", log::kv::Value::from(3u64)),
        ];
        let r = Record::builder()
            .level(Level::Info)
            .target("tsm_trace")
            .args(format_args!("probe NOT ATTACHED   tsm_bind"))
            .key_values(&kvs)
            .build();
        let v: Value = serde_json::from_str(&render(Format::Json, &r)).unwrap();
        assert_eq!(v["msg"], "probe NOT ATTACHED tsm_bind");
        assert_eq!(v["probe"], "tsm_bind");
        assert_eq!(v["attached"], false);
        assert_eq!(v["count"], 3);
        assert_eq!(
            render(Format::Text, &r),
            "tsm-trace: info: probe NOT ATTACHED   tsm_bind"
        );
    }

    #[test]
    fn json_message_loses_padding_and_keeps_fields() {
        let mut f = Map::new();
        f.insert("probe".into(), Value::from("tsm_bind"));
        let l = json_line(
            "info",
            "tsm_trace",
            "probe attached     tsm_bind   kprobe",
            f,
        );
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["msg"], "probe attached tsm_bind kprobe");
        assert_eq!(v["probe"], "tsm_bind");
    }
}
