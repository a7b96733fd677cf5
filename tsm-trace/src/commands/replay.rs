//! `tsm-trace replay`: a capture through the correlator, the same report.

use std::{fs::File, io::BufReader};

use anyhow::{Context, Result, bail};
use tsm_trace::{
    cli::{ReplayArgs, TimeFormat},
    events::record,
    exporters::timeline::Timeline,
    exporters::trace::Clock,
    pipeline::{self, Extra, ReplayOptions},
};

use super::LOG;

pub fn replay(args: ReplayArgs) -> Result<()> {
    let path = args.file.display().to_string();
    let f = File::open(&args.file).with_context(|| format!("opening {path}"))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    if size > tsm_trace::files::cap::RECORD {
        bail!(tsm_trace::files::too_large(
            &args.file,
            tsm_trace::files::cap::RECORD
        ));
    }
    // Every output file is opened before the work starts: a wrong path fails at once.
    let mut extra = Extra {
        timeline: args
            .export
            .timeline
            .as_deref()
            .map(Timeline::create)
            .transpose()
            .context("--timeline")?,
        otlp: None,
    };
    let capture = record::read_capture(BufReader::new(f), &path)?;
    if let Some(t) = &capture.torn {
        log::warn!(target: LOG, "{}", t.warning(&path));
    }
    // Span times: the capture's wall clock if it recorded one, else the Unix epoch plus its
    // CLOCK_MONOTONIC times (docs/traces.md).
    let metrics = tsm_trace::exporters::metrics::Metrics::new();
    extra.otlp = super::start_otlp(
        &args.otlp,
        &metrics,
        capture.header.realtime_offset_ns.unwrap_or(0),
        tsm_trace::exporters::otlp::WhenFull::Wait(std::time::Duration::from_secs(30)),
    )?;
    if extra.otlp.is_some() && capture.header.realtime_offset_ns.is_none() {
        log::warn!(target: LOG,
            "{path} does not record the wall clock: span times are its CLOCK_MONOTONIC times after the Unix epoch (1970-01-01 plus uptime)"
        );
    }
    // `replay` writes everything once: trace lines and summary, or the exposition alone.
    let offset = capture.header.realtime_offset_ns;
    let clock = match (args.filter.time, offset) {
        (None | Some(TimeFormat::Wall), Some(off)) => Some(Clock::wall(off)),
        (Some(TimeFormat::Wall), None) => {
            log::warn!(target: LOG,
                "{path} does not record the wall clock (written by an older tsm-trace): times are seconds since its first event"
            );
            None
        }
        (Some(TimeFormat::Boot), _) => Some(Clock::Boot),
        (None | Some(TimeFormat::Relative), _) => None,
    };
    let replayed = pipeline::replay_with(
        capture.events,
        &ReplayOptions {
            config: args.correlate.config(),
            format: args.filter.format(),
            filters: args.filter.filters(),
            clock,
            realtime_offset_ns: offset,
            summary: !args.no_summary,
            metrics: args.metrics,
            openmetrics: args.openmetrics,
        },
        Box::new(std::io::stdout()),
        &mut extra,
    );
    // The timeline is complete whatever became of stdout.
    super::finish_otlp(extra.otlp.take());
    if let Some(mut t) = extra.timeline.take() {
        t.finish()?;
    }
    replayed?;
    Ok(())
}
