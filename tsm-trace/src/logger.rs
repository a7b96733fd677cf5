//! A small stderr logger: text for people, JSON lines for log shippers.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

struct Logger {
    format: Format,
    level: LevelFilter,
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= self.level && (m.target().starts_with("tsm_trace") || m.level() <= Level::Warn)
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = match self.format {
            Format::Text => writeln!(err, "tsm-trace: {}: {}", level(r.level()), r.args()),
            Format::Json => writeln!(
                err,
                "{}",
                serde_json::json!({
                    "ts": std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or_default(),
                    "level": level(r.level()),
                    "target": r.target(),
                    "msg": r.args().to_string(),
                })
            ),
        };
    }

    fn flush(&self) {}
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
