//! `tsm-trace trace`: each operation as it completes, and a summary.

use std::{
    io::{BufWriter, Write},
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use tsm_trace::{
    cli::{TimeFormat, TraceArgs},
    event_loop::{self, Batch, LoopOptions, publish_session},
    events::record,
    exporters::{metrics::Metrics, trace::Clock},
    pipeline::{Pipeline, TraceSink},
};

use super::{LOG, start_session};
use crate::verdict;
use tsm_trace_common::KernelCounter;

pub async fn trace(args: TraceArgs) -> Result<()> {
    let mut facts = verdict::preflight(
        &args.probes.session_options(),
        std::path::Path::new(tsm_trace::probes::pin::DEFAULT_ROOT),
    )?;
    // The capture file next: a wrong path is reported before anything is attached.
    let mut recorder = match &args.record {
        Some(path) => {
            let f = tsm_trace::files::create_private(path, args.force)
                .with_context(|| format!("--record {}", path.display()))?;
            Some(record::Writer::new(BufWriter::new(f), &kernel_release())?)
        }
        None => None,
    };
    let timeline = args
        .export
        .timeline
        .as_deref()
        .map(tsm_trace::exporters::timeline::Timeline::create)
        .transpose()
        .context("--timeline")?;
    let metrics = Arc::new(Metrics::new());
    let offset = tsm_trace::clock::realtime_offset_ns();
    let otlp = super::start_otlp(
        &args.otlp,
        &metrics,
        offset,
        tsm_trace::exporters::otlp::WhenFull::Drop,
    )?;
    let mut live = start_session(&args.probes, None)?;
    if let Some(why) = verdict::bind_path_gap(&mut facts, live.session()) {
        let later = if live.missing() > 0 {
            " (until a module brings one)"
        } else {
            ""
        };
        log::warn!(target: LOG, "{why}; nothing to trace{later}");
    }
    publish_session(&metrics, live.session());
    let deep_specs = args.deep.all();
    if !deep_specs.is_empty() {
        let report = live.attach_deep(&deep_specs, args.deep.deep_max)?;
        for line in deep_report_lines(&report, args.deep.deep_max) {
            eprintln!("tsm-trace: {line}");
        }
    }
    let cfg = args.correlate.config();
    let clock = match args.filter.time {
        None | Some(TimeFormat::Wall) => Clock::wall(offset),
        Some(TimeFormat::Boot) => Clock::Boot,
        Some(TimeFormat::Relative) => Clock::Relative {
            base_ns: tsm_trace::clock::monotonic_ns(),
        },
    };
    let mut sink = TraceSink::new(
        Box::new(std::io::stdout()),
        args.filter.format(),
        args.filter.filters(),
        clock,
    );
    sink.realtime_offset_ns = Some(offset);
    let pipeline = Mutex::new(
        Pipeline::new(cfg.clone(), metrics.clone(), Some(sink))
            .with_extra(tsm_trace::pipeline::Extra { timeline, otlp }),
    );
    eprintln!(
        "tsm-trace: tracing with {} programs attached{}; Ctrl-C stops",
        live.session().attached_count(),
        args.duration
            .map(|d| format!(
                " for {}",
                tsm_trace::exporters::trace::fmt_duration(d.as_nanos() as u64)
            ))
            .unwrap_or_default()
    );
    let mut record = |batch: &Batch| -> Result<()> {
        if let Some(w) = recorder.as_mut() {
            for ev in batch.iter().flatten() {
                w.write(ev).context("writing the record file")?;
            }
            w.flush().context("writing the record file")?;
        }
        Ok(())
    };
    let opts = LoopOptions {
        reconcile: None,
        end: args.duration.map(|d| tokio::time::Instant::now() + d),
        // An interactive trace keeps its privileges and attaches whenever a module loads.
        late_attach: None,
        state: None,
        inflight_timeout: args.probes.inflight_timeout,
        stuck_after: args.probes.stuck_after,
        stuck_stacks: args.deep.stuck_stacks || !deep_specs.is_empty(),
        readiness: None,
    };
    event_loop::run(
        &mut live,
        &pipeline,
        &metrics,
        &cfg,
        &opts,
        Some(&mut record),
    )
    .await?;
    // Take what is already in the ring buffer, then close open frames.
    event_loop::drain(&mut live, &pipeline, &metrics, Some(&mut record))?;
    // What is still running (read after the drain: every call that returned is out).
    let in_flight = live.session().in_flight();
    let mut p = pipeline.into_inner().expect("pipeline lock");
    p.summary_mut().set_in_flight(
        in_flight.total,
        in_flight.describe_with(event_loop::monotonic_ns(), opts.stuck_stacks),
    );
    p.finish(event_loop::monotonic_ns());
    if let Some(s) = p.sink_mut() {
        s.flush();
    }
    let extra = p.take_extra();
    super::finish_otlp(extra.otlp);
    if let Some(mut t) = extra.timeline {
        t.finish()?;
    }
    event_loop::housekeeping(&mut live, &metrics, args.probes.inflight_timeout, None);
    let k = live.kernel_counts().unwrap_or_default();
    if !args.no_summary {
        let mut err = std::io::stderr().lock();
        let counted = event_loop::read_aggregates(&mut live);
        writeln!(err, "{}", p.render_summary_counted(counted.as_ref()))?;
        writeln!(
            err,
            "lost events: {} (ring buffer full), {} (in-flight table full), {} returns without entry, {} returns never seen; {} kernel read faults; {} VMM names not recorded",
            k[KernelCounter::RingbufFull],
            k[KernelCounter::InflightFull],
            k[KernelCounter::OrphanReturn],
            k[KernelCounter::ReturnMissed],
            k[KernelCounter::ReadFault],
            k[KernelCounter::VmmNameFull]
        )?;
        use tsm_trace::probes::misses;
        let programs = live.session().kernel_misses().unwrap_or_default();
        let (kprobe, recursion) = misses::totals(&programs);
        writeln!(
            err,
            "kernel misses: {} (kprobe{}), {} (BPF recursion)",
            kprobe,
            misses::kprobe_remark(
                misses::kprobe_reporting(&programs),
                tsm_trace::doctor::kernel_version(&facts)
            ),
            recursion
        )?;
        if let Some(which) = misses::by_program(&programs) {
            writeln!(err, "kernel misses by program: {which}")?;
        }
        if let Some(c) = live.deep_cost() {
            let each = |(runs, ns): (u64, u64)| match ns.checked_div(runs) {
                None => "never ran".to_string(),
                Some(per) => format!(
                    "ran {runs} times, {} each",
                    tsm_trace::exporters::trace::fmt_duration(per)
                ),
            };
            writeln!(
                err,
                "deep: what each call of an attached function cost (the kernel's BPF run-time statistics): entry program {} (every call, inside TSM work or not), return program {}",
                each(c.entry),
                each(c.ret)
            )?;
        }
        if let Some((recorded, unclaimed)) = live.deep_counts(true) {
            writeln!(
                err,
                "deep: {recorded} calls recorded, {unclaimed} never claimed by an operation (its record was lost, or it was still open); not recorded: {} (ring buffer full), {} (nested deeper than {} or thread table full), {} (returns without their entry)",
                k[KernelCounter::DeepRingFull],
                k[KernelCounter::DeepFull],
                tsm_trace_common::DEEP_NESTING,
                k[KernelCounter::DeepUnmatched]
            )?;
        }
    }
    Ok(())
}

/// What `--deep` attached and what not, with the reasons: one line each.
fn deep_report_lines(r: &tsm_trace::session::DeepReport, max: usize) -> Vec<String> {
    let mut out: Vec<String> = r.notes.iter().map(|n| format!("deep: {n}")).collect();
    for (spec, why) in &r.unmatched {
        out.push(format!("deep: no function matches {spec} ({why})"));
    }
    let over = format!("over --deep-max {max}");
    for s in r.skipped.iter().filter(|s| s.reason != over) {
        out.push(format!("deep: NOT ATTACHED {s}"));
    }
    if r.over_cap > 0 {
        let left: Vec<&str> = r
            .skipped
            .iter()
            .filter(|s| s.reason == over)
            .map(|s| s.name.as_str())
            .collect();
        let more = if left.len() > 10 { ", ..." } else { "" };
        out.push(format!(
            "deep: --deep-max {max} reached: {} more functions not attached ({}{more}); {}: narrow the glob or raise --deep-max",
            r.over_cap,
            left[..left.len().min(10)].join(", "),
            tsm_trace::probes::deep::COST
        ));
    }
    let names: Vec<String> = r
        .attached
        .iter()
        .map(|(n, m)| format!("{n} [{}]", m.as_deref().unwrap_or("vmlinux")))
        .collect();
    out.push(format!(
        "deep: attached {} functions{}{}",
        names.len(),
        if names.is_empty() { "" } else { ": " },
        names.join(", ")
    ));
    if names.is_empty() {
        out.push("deep: nothing to trace deeply; operations are traced as without --deep".into());
    }
    out
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
