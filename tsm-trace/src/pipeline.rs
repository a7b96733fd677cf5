//! The pipeline: events → [`Correlator`] → [`Metrics`] and an optional trace sink.
//!
//! The live daemon calls [`Pipeline::handle`] for every decoded event, [`Pipeline::tick`]
//! after each batch (it also brings the table gauges up to date) and periodically, and
//! [`Pipeline::reconcile`] with each sysfs snapshot; `tsm-trace replay FILE` runs a capture
//! through [`replay`], the same code.

use std::io::Write;
use std::sync::Arc;

use crate::aggregates::Aggregates;
use crate::correlate::{self, Correlator, Leak, Output};
use crate::events::Event;
use crate::exporters::json;
use crate::exporters::loss::{LossTracker, Lost};
use crate::exporters::metrics::Metrics;
use crate::exporters::otlp::Otlp;
use crate::exporters::timeline::Timeline;
use crate::exporters::trace::{Clock, Counted, Filters, Summary, TraceFormatter};
use crate::probes::KernelCounts;
use crate::sysfs::Snapshot;

/// Trace line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TraceFormat {
    #[default]
    Text,
    Json,
}

/// Where and how trace lines go.
pub struct TraceSink {
    pub format: TraceFormat,
    pub filters: Filters,
    pub formatter: TraceFormatter,
    /// Also print anomalies (JSON only; text never prints them).
    pub anomalies: bool,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, when known: JSON lines then carry `"time"`.
    pub realtime_offset_ns: Option<i64>,
    out: Box<dyn Write + Send>,
    /// The first write error (e.g. a closed pipe); writing stops after it.
    pub write_error: Option<std::io::Error>,
    /// Lines held to be written in event-time order at [`TraceSink::flush`]: (time, arrival,
    /// line). `None` writes each line at once (live).
    held: Option<Vec<(u64, usize, String)>>,
    /// The time of the last line held (for lines without a time of their own).
    last_ns: u64,
}

impl TraceSink {
    pub fn new(
        out: Box<dyn Write + Send>,
        format: TraceFormat,
        filters: Filters,
        clock: Clock,
    ) -> Self {
        TraceSink {
            format,
            filters,
            formatter: TraceFormatter::new(clock),
            anomalies: false,
            realtime_offset_ns: match clock {
                Clock::Wall { offset_ns, .. } => Some(offset_ns),
                _ => None,
            },
            out,
            write_error: None,
            held: None,
            last_ns: 0,
        }
    }

    /// The wall clock stepped (`offset_ns`: CLOCK_REALTIME − CLOCK_MONOTONIC now): wall-clock
    /// times from now on follow it. Event times (CLOCK_MONOTONIC) never step.
    pub fn follow_wall_clock(&mut self, offset_ns: i64) {
        if self.realtime_offset_ns.is_some() {
            self.realtime_offset_ns = Some(offset_ns);
        }
        if matches!(self.formatter.clock, Clock::Wall { .. }) {
            self.formatter.clock = Clock::wall(offset_ns);
        }
    }

    /// Holds the lines until [`TraceSink::flush`], then writes them ordered by the event
    /// time each shows (stable: lines of one time keep their order; a line without a time
    /// stays after the line before it). For a replay, whose operations close in the order
    /// the correlator could close them, not the order they happened.
    pub fn order_by_time(&mut self) {
        self.held.get_or_insert_with(Vec::new);
    }

    pub fn write(&mut self, o: &Output) {
        if self.write_error.is_some() || !self.filters.matches(o) {
            return;
        }
        let line = match self.format {
            TraceFormat::Text => self.formatter.format(o),
            TraceFormat::Json => json::line_at(o, self.anomalies, self.realtime_offset_ns),
        };
        let Some(line) = line else { return };
        if let Some(held) = self.held.as_mut() {
            let t = o.time_ns().unwrap_or(self.last_ns);
            self.last_ns = t;
            let n = held.len();
            held.push((t, n, line));
        } else if let Err(e) = writeln!(self.out, "{line}") {
            self.write_error = Some(e);
        }
    }

    /// A loss record (`exporters/loss.rs`): every filter lets it through.
    pub fn write_lost(&mut self, l: &Lost) {
        if self.write_error.is_some() {
            return;
        }
        let line = match self.format {
            TraceFormat::Text => l.text(&self.formatter.clock),
            TraceFormat::Json => l.json(self.realtime_offset_ns),
        };
        if let Some(held) = self.held.as_mut() {
            let t = l.time_ns.unwrap_or(self.last_ns);
            self.last_ns = t;
            let n = held.len();
            held.push((t, n, line));
        } else if let Err(e) = writeln!(self.out, "{line}") {
            self.write_error = Some(e);
        }
    }

    pub fn flush(&mut self) {
        if let Some(held) = self.held.as_mut() {
            let mut lines = std::mem::take(held);
            lines.sort_unstable_by_key(|(t, n, _)| (*t, *n));
            for (_, _, line) in lines {
                if self.write_error.is_none()
                    && let Err(e) = writeln!(self.out, "{line}")
                {
                    self.write_error = Some(e);
                }
            }
        }
        if self.write_error.is_none()
            && let Err(e) = self.out.flush()
        {
            self.write_error = Some(e);
        }
    }
}

impl std::fmt::Debug for TraceSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceSink")
            .field("format", &self.format)
            .field("filters", &self.filters)
            .finish_non_exhaustive()
    }
}

/// The exporters fed every output besides the metrics and the trace lines, whatever the
/// trace filters: the timeline file (`--timeline`), the OTLP span export (`--otlp-endpoint`).
#[derive(Debug, Default)]
pub struct Extra {
    pub timeline: Option<Timeline>,
    pub otlp: Option<Otlp>,
}

impl Extra {
    fn observe(&mut self, o: &Output) {
        if let Some(t) = self.timeline.as_mut() {
            t.write(o);
        }
        if let Some(x) = self.otlp.as_mut() {
            x.write(o);
        }
    }
}

/// Correlator + metrics + optional trace sink + summary.
#[derive(Debug)]
pub struct Pipeline {
    correlator: Correlator,
    metrics: Arc<Metrics>,
    sink: Option<TraceSink>,
    summary: Summary,
    summary_fmt: TraceFormatter,
    /// The last [`Pipeline::handle`]'s outputs (reused: no allocation per event).
    outs: Vec<Output>,
    /// The loss already reported in the stream.
    loss: LossTracker,
    /// The latest event time handled (return times; an entry-only record's entry time):
    /// what a loss record is timed with.
    last_event_ns: Option<u64>,
    extra: Extra,
}

impl Pipeline {
    pub fn new(cfg: correlate::Config, metrics: Arc<Metrics>, sink: Option<TraceSink>) -> Self {
        let summary_fmt = sink
            .as_ref()
            .map(|s| s.formatter)
            .unwrap_or(TraceFormatter::new(Clock::Relative { base_ns: 0 }));
        Pipeline {
            correlator: Correlator::new(cfg),
            metrics,
            sink,
            summary: Summary::default(),
            summary_fmt,
            outs: Vec::new(),
            loss: LossTracker::default(),
            last_event_ns: None,
            extra: Extra::default(),
        }
    }

    /// Feeds every output to these exporters too (see [`Extra`]).
    pub fn with_extra(mut self, extra: Extra) -> Self {
        self.extra = extra;
        self
    }

    /// The extra exporters, handed back (to finish them: [`Timeline::finish`]).
    pub fn take_extra(&mut self) -> Extra {
        std::mem::take(&mut self.extra)
    }

    pub fn correlator(&self) -> &Correlator {
        &self.correlator
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    pub fn summary_mut(&mut self) -> &mut Summary {
        &mut self.summary
    }

    pub fn sink_mut(&mut self) -> Option<&mut TraceSink> {
        self.sink.as_mut()
    }

    /// One decoded event. Counts it in `tsm_trace_events_processed_total{probe}` (the caller
    /// must not count it again). What it produces depends on the events only, not on `now_ns`
    /// or on how the events were batched (see [`Correlator::handle`]). Returns what it produced; the slice is valid until the next
    /// call (its buffer is reused).
    pub fn handle(&mut self, ev: Event, now_ns: u64) -> &[Output] {
        let b = self.correlator.boxed(ev);
        self.handle_boxed(b, now_ns)
    }

    /// [`Pipeline::handle`] for an event already boxed (the correlator keeps it in that box:
    /// never copied again).
    pub fn handle_boxed(&mut self, ev: Box<Event>, now_ns: u64) -> &[Output] {
        self.metrics.event_processed(ev.probe);
        let t = ev.end_ns.max(ev.start_ns);
        self.last_event_ns = Some(self.last_event_ns.map_or(t, |l| l.max(t)));
        let mut outs = std::mem::take(&mut self.outs);
        // The previous event's outputs have been seen: hand their buffers back (taken in
        // place: an output is too big to move out just to look at it).
        for o in outs.iter_mut() {
            if let Output::Operation(op) = o {
                self.correlator
                    .recycle_frames(std::mem::take(&mut op.frames));
            }
        }
        outs.clear();
        self.correlator.handle_boxed(ev, now_ns, &mut outs);
        self.emit(&outs);
        self.outs = outs;
        &self.outs
    }

    /// Puts saved tables back (at start): see [`Correlator::restore`].
    pub fn restore(&mut self, saved: crate::correlate::state::SavedState) -> (usize, usize) {
        let r = self.correlator.restore(saved);
        // Every series derived from the restored tables is back before the first scrape.
        for leak in self.correlator.leaks() {
            self.metrics.show_leak(leak);
        }
        self.metrics.sync(&self.correlator);
        r
    }

    /// Timers (pending frames, leak grace periods). Call periodically, after draining events:
    /// it also brings the table gauges (bindings, device states, leaks, pending frames) up to
    /// date, which [`Pipeline::handle`] leaves to it (once per batch, not once per event).
    pub fn tick(&mut self, now_ns: u64) -> Vec<Output> {
        let outs = self.correlator.tick(now_ns);
        self.emit(&outs);
        self.metrics.sync(&self.correlator);
        outs
    }

    /// A sysfs snapshot: reconciles and updates the sysfs metrics.
    /// See [`Correlator::reconcile`]: drain the event stream first.
    pub fn reconcile(
        &mut self,
        snapshot: &Snapshot,
        in_flight: &std::collections::BTreeSet<String>,
        now_ns: u64,
    ) -> Vec<Output> {
        self.metrics.observe_snapshot(snapshot);
        let outs = self.correlator.reconcile(snapshot, in_flight, now_ns);
        self.emit(&outs);
        self.metrics.sync(&self.correlator);
        outs
    }

    /// A module was unloaded: bindings made through its functions (`probes`) end
    /// ([`Correlator::module_unloaded`]); drain the event stream first.
    pub fn module_unloaded(
        &mut self,
        probes: &[crate::events::ProbeId],
        now_ns: u64,
    ) -> Vec<Output> {
        let outs = self.correlator.module_unloaded(probes, now_ns);
        self.emit(&outs);
        self.metrics.sync(&self.correlator);
        outs
    }

    /// End of input: flushes pending frames and runs every grace check.
    pub fn finish(&mut self, now_ns: u64) -> Vec<Output> {
        let outs = self.correlator.finish(now_ns);
        self.emit(&outs);
        self.metrics.sync(&self.correlator);
        if let Some(s) = self.sink.as_mut() {
            s.flush();
        }
        outs
    }

    /// The summary text, with the leaks still open.
    pub fn render_summary(&self) -> String {
        self.render_summary_counted(None)
    }

    /// The summary text, its totals from the kernel's exact counts where there are some
    /// (`trace`): how many of the operations the kernel counted the lines showed.
    pub fn render_summary_counted(&self, kernel: Option<&Aggregates>) -> String {
        let open: Vec<&Leak> = self.correlator.leaks().collect();
        let filtered = self
            .sink
            .as_ref()
            .is_some_and(|s| s.filters != Filters::default());
        let counted = kernel.map(|k| Counted::from_kernel(k, filtered));
        self.summary
            .render_counted(&open, &self.summary_fmt, counted.as_ref())
    }

    /// Counts up to `k` are not reported as loss (maps taken over from an earlier process).
    pub fn loss_since(&mut self, k: KernelCounts) {
        self.loss = LossTracker::since(k);
    }

    /// An undecodable ring-buffer record: reported with the next [`Pipeline::report_loss`].
    pub fn decode_error(&mut self) {
        self.loss.decode_error();
    }

    /// After a batch, with the kernel's counters read after it: a loss record for each
    /// reason that grew since the last one, into the stream and the summary, timed with the
    /// last event handled (`exporters/loss.rs`).
    pub fn report_loss(&mut self, k: &KernelCounts) -> Vec<Lost> {
        let lost = self.loss.records(k, self.last_event_ns);
        for l in &lost {
            self.summary.add_lost(l);
            if let Some(s) = self.sink.as_mut() {
                s.write_lost(l);
            }
        }
        if !lost.is_empty()
            && let Some(s) = self.sink.as_mut()
        {
            s.flush();
        }
        lost
    }

    fn emit(&mut self, outs: &[Output]) {
        for o in outs {
            self.metrics.observe(o);
            self.extra.observe(o);
            // The summary tells what the lines showed: the sink's filters apply to it too.
            match self.sink.as_mut() {
                Some(s) if !s.filters.matches(o) => {}
                Some(s) => {
                    self.summary.add(o, &self.summary_fmt);
                    s.write(o);
                }
                None => self.summary.add(o, &self.summary_fmt),
            }
        }
    }
}

/// How to replay a capture.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    pub config: correlate::Config,
    pub format: TraceFormat,
    pub filters: Filters,
    /// Times relative to the first event (default) or wall clock through an offset.
    pub clock: Option<Clock>,
    /// The capture's CLOCK_REALTIME − CLOCK_MONOTONIC, if it recorded one: JSON lines then
    /// carry `"time"` whatever `clock` prints.
    pub realtime_offset_ns: Option<i64>,
    /// Print the summary after the trace lines (text format only: a JSON stream holds only
    /// JSON lines).
    pub summary: bool,
    /// Print only the metrics exposition the daemon would serve after the capture (no trace
    /// lines, no summary: the output is a valid exposition).
    pub metrics: bool,
    /// With `metrics`: the OpenMetrics exposition, with the latency histograms' exemplars of
    /// the OTLP export (`extra.otlp`), instead of the classic text.
    pub openmetrics: bool,
}

/// What a replay found.
#[derive(Clone, Debug)]
pub struct ReplayReport {
    pub events: usize,
    pub operations: u64,
    pub failures: u64,
    pub leaks_detected: u64,
    /// Leaks still open at the end of the capture.
    pub leaks: Vec<Leak>,
    pub anomalies: u64,
    pub summary: String,
    /// The exposition, if asked for.
    pub metrics: Option<String>,
}

/// Runs a recorded capture through the correlator, as a live session would see it: "now" is
/// each event's return time; the end of the capture flushes pending frames and runs every
/// grace check. Writes to `out`, once each: the trace lines and then the summary (text) or
/// the trace lines alone (JSON), or with `metrics` the exposition alone.
pub fn replay(
    events: Vec<Event>,
    opts: &ReplayOptions,
    out: Box<dyn Write + Send>,
) -> std::io::Result<ReplayReport> {
    replay_with(events, opts, out, &mut Extra::default())
}

/// [`replay`], feeding `extra` too; on return (error or not) `extra` holds its exporters
/// again, for the caller to finish.
pub fn replay_with(
    events: Vec<Event>,
    opts: &ReplayOptions,
    mut out: Box<dyn Write + Send>,
    extra: &mut Extra,
) -> std::io::Result<ReplayReport> {
    let base = events
        .iter()
        // A return without entry has no meaningful start.
        .map(|e| {
            if e.entry_missing {
                e.end_ns
            } else {
                e.start_ns.min(e.end_ns)
            }
        })
        .min()
        .unwrap_or(0);
    let clock = opts.clock.unwrap_or(Clock::Relative { base_ns: base });
    let metrics = Arc::new(Metrics::new());
    // With `metrics` the exposition is the whole output; `out` stays here for it.
    let sink = (!opts.metrics).then(|| {
        let mut s = TraceSink::new(
            std::mem::replace(&mut out, Box::new(std::io::sink())),
            opts.format,
            opts.filters.clone(),
            clock,
        );
        s.realtime_offset_ns = opts.realtime_offset_ns.or(s.realtime_offset_ns);
        s.order_by_time();
        s
    });
    let mut p =
        Pipeline::new(opts.config.clone(), metrics.clone(), sink).with_extra(std::mem::take(extra));
    let n = events.len();
    let mut now = 0u64;
    for ev in events {
        now = now.max(ev.end_ns);
        p.handle(ev, now);
    }
    p.finish(now);
    *extra = p.take_extra();
    let summary = p.render_summary();
    let exposition = match (opts.metrics, opts.openmetrics) {
        (false, _) => None,
        (true, false) => Some(metrics.render()),
        (true, true) => {
            let none = crate::exporters::metrics::exemplars::Exemplars::default();
            let ex = extra.otlp.as_ref().map(|o| o.exemplars());
            Some(
                metrics
                    .render_openmetrics_with(ex.as_deref().unwrap_or(&none))
                    .map_err(std::io::Error::other)?,
            )
        }
    };
    if let Some(s) = p.sink.as_mut() {
        if let Some(e) = s.write_error.take() {
            return Err(e);
        }
        if opts.summary && opts.format == TraceFormat::Text {
            writeln!(s.out, "{summary}")?;
        }
        s.out.flush()?;
    }
    if let Some(m) = &exposition {
        write!(out, "{m}")?;
        out.flush()?;
    }
    let stats = p.correlator.stats();
    Ok(ReplayReport {
        events: n,
        operations: p.summary.operations(),
        failures: p.summary.failures(),
        leaks_detected: stats.leaks_detected.values().sum(),
        leaks: p.correlator.leaks().cloned().collect(),
        anomalies: stats.anomalies.values().sum(),
        summary,
        metrics: exposition,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::correlate::tests::{EBUSY, bind_stack, bind_via_ioctl, kvm_destroy, teardown};
    use crate::events::record;

    /// A `Write` the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// A small capture as `tsm-trace record` writes it: a failed bind, a bind, a teardown
    /// without unbind, the VM destroyed.
    fn capture() -> String {
        let mut evs = Vec::new();
        evs.extend(bind_stack(
            11,
            1_000_000_000,
            "0000:02:00.0",
            Some(EBUSY),
            Some(EBUSY),
            Some(EBUSY),
            None,
        ));
        evs.extend(bind_via_ioctl(10, 2_000_000_000, "0000:01:00.0", 0));
        evs.extend(teardown(12, 3_000_000_000, "0000:01:00.0", false));
        evs.push(kvm_destroy(4_000_000_000));
        let mut buf = Vec::new();
        let mut w = record::Writer::new(&mut buf, "7.3.0-test").unwrap();
        for e in &evs {
            w.write(e).unwrap();
        }
        w.flush().unwrap();
        String::from_utf8(buf).unwrap()
    }

    fn replay_text(opts: &ReplayOptions) -> (ReplayReport, String) {
        let (_h, events) = record::read_all(capture().as_bytes(), "cap.jsonl").unwrap();
        let out = Shared::default();
        let report = replay(events, opts, Box::new(out.clone())).unwrap();
        (report, out.text())
    }

    /// A live pipeline (`trace`): the loss the kernel counted after a batch is a record in
    /// the stream right after that batch's lines, timed by its last event; the summary
    /// takes its totals from the kernel's counts.
    #[test]
    fn loss_after_a_batch_is_a_record_at_that_point_and_the_summary_counts_from_the_kernel() {
        for format in [TraceFormat::Text, TraceFormat::Json] {
            let out = Shared::default();
            let sink = TraceSink::new(
                Box::new(out.clone()),
                format,
                Filters::default(),
                Clock::Relative { base_ns: 0 },
            );
            let mut p = Pipeline::new(
                correlate::Config::default(),
                Arc::new(Metrics::new()),
                Some(sink),
            );
            let evs = bind_via_ioctl(10, 2_000_000_000, "0000:01:00.0", 0);
            let last = evs.iter().map(|e| e.end_ns).max().unwrap();
            for e in evs {
                p.handle(e, 0);
            }
            p.tick(last);
            let k =
                KernelCounts::from_values(&[(tsm_trace_common::KernelCounter::RingbufFull, 40)]);
            assert_eq!(p.report_loss(&k).len(), 1);
            // Read again with no growth: no second record.
            assert!(p.report_loss(&k).is_empty());
            let text = out.text();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2, "{text}");
            match format {
                TraceFormat::Text => {
                    assert!(lines[0].contains(" bind "), "{text}");
                    assert_eq!(
                        lines[1],
                        format!(
                            "{} LOST     40 events (ring buffer full; raise --ringbuf-size)",
                            Clock::Relative { base_ns: 0 }.format(last)
                        )
                    );
                }
                TraceFormat::Json => {
                    let j: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
                    assert_eq!(j["type"], "lost", "{text}");
                    assert_eq!(j["count"], 40);
                    assert_eq!(j["reason"], "ringbuf_full");
                    assert_eq!(j["time_ns"], last);
                }
            }
            let mut kernel = Aggregates::default();
            kernel.counts.insert(
                (
                    crate::correlate::OpKind::Bind,
                    crate::events::Layer::Iommufd,
                    0,
                ),
                9,
            );
            let summary = p.render_summary_counted(Some(&kernel));
            assert!(
                summary.contains(
                    "=== tsm-trace summary: 1 of 9 operations shown (8 not shown: their events were lost, see the LOST lines); 0 of 0 failed shown ==="
                ),
                "{summary}"
            );
            assert!(summary.contains("        40  ringbuf_full"), "{summary}");
        }
    }

    /// A restart restores the binding and leak tables from the state file: each open leak's
    /// own series (`tsm_trace_leaked_binding_info`) is back before the first scrape, and the
    /// leak is not counted as detected a second time.
    #[test]
    fn restored_leaks_have_their_series_before_the_first_scrape() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/standin-6.1.jsonl"
        );
        let f = std::fs::File::open(path).unwrap();
        let (_h, events) = record::read_all(std::io::BufReader::new(f), path).unwrap();
        let cfg = correlate::Config {
            leak_grace_ns: 0,
            ..correlate::Config::default()
        };
        let mut before = Pipeline::new(cfg.clone(), Arc::new(Metrics::new()), None);
        let last = events.iter().map(|e| e.end_ns).max().unwrap();
        for e in events {
            before.handle(e, last);
        }
        before.tick(last);
        let open = before.correlator().leaks().count();
        assert!(open >= 2, "the capture leaves leaks open: {open}");
        let saved = before.correlator().saved_state("boot");

        let metrics = Arc::new(Metrics::new());
        let mut after = Pipeline::new(cfg, metrics.clone(), None);
        after.restore(saved);
        let text = metrics.render();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tsm_trace_leaked_binding_info{"))
            .collect();
        assert_eq!(series.len(), open, "{text}");
        for l in &series {
            assert!(l.ends_with(" 1"), "{l}");
        }
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("tsm_trace_leaks_detected_total{") && !l.ends_with(" 0")),
            "a restored leak is not detected again:\n{text}"
        );
    }

    #[test]
    fn replay_a_jsonl_capture() {
        let opts = ReplayOptions {
            summary: true,
            ..Default::default()
        };
        let (report, text) = replay_text(&opts);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "    0.000000 bind     0000:02:00.0 vdev=3 vm=kvm-4242 tdi=7  EBUSY from pci_tsm (pci_tsm_bind)  \
             iommufd 1.0ms > tsm_core 800.0us > pci_tsm 600.0us EBUSY  comm=qemu tgid=4242 tid=11"
        );
        assert_eq!(
            lines[1],
            "    1.000000 bind     0000:01:00.0 vdev=3 vm=kvm-4242 tdi=7  ok  \
             iommufd 1.0ms > tsm_core 800.0us > pci_tsm 600.0us > tsm_driver 400.0us  comm=qemu tgid=4242 tid=10"
        );
        assert!(
            lines[2].starts_with(
                "    2.000000 teardown 0000:01:00.0 vdev=3 vm=kvm-4242 tdi=7  ok  iommufd 1.0ms"
            ),
            "{}",
            lines[2]
        );
        assert_eq!(
            lines[3],
            "    2.001000 LEAK     0000:01:00.0 vdevice_teardown_without_unbind  vm=kvm-4242 vmm=qemu/4242 vdev=3 tdi=7 bound 1.00s"
        );
        assert!(
            lines[4].starts_with("    3.000000 VM-GONE  vm=kvm-4242"),
            "{}",
            lines[4]
        );
        // End of capture 5 s before the grace period's: the VM's device still bound is not
        // a leak (yet), only counted.
        assert_eq!(lines[5], "", "{text}");
        assert!(lines[6].starts_with("=== tsm-trace summary"), "{text}");

        assert_eq!(report.events, 9);
        assert_eq!(report.operations, 3);
        assert_eq!(report.failures, 1);
        assert_eq!(report.leaks_detected, 1);
        assert_eq!(report.leaks.len(), 1);
        assert_eq!(report.anomalies, 1);

        assert!(
            text.contains("=== tsm-trace summary: 3 operations, 1 failed ==="),
            "{text}"
        );
        assert!(text.contains("@bind_us: (1 ok, 1 failed)"));
        assert!(
            text.contains("[512, 1K)"),
            "1 ms binds land in the 512..1K µs bucket:\n{text}"
        );
        assert!(
            text.contains("  EBUSY pci_tsm pci_tsm_bind (bind)\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "leaks (one per device and reason): 1 detected, 0 cleared, 1 still leaked, on 1 device\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "         1 binding not judged: the input ended before their grace period (leak_unconfirmed)"
        ));
        assert!(text.contains("         1  leak_unconfirmed"));
        assert_eq!(
            text.matches("=== tsm-trace summary").count(),
            1,
            "the summary is printed once:\n{text}"
        );
        assert!(report.metrics.is_none());
    }

    /// `--metrics`: the exposition alone, once (it must be a valid exposition).
    #[test]
    fn replay_metrics_is_the_exposition_alone() {
        for format in [TraceFormat::Text, TraceFormat::Json] {
            let opts = ReplayOptions {
                summary: true,
                metrics: true,
                format,
                ..Default::default()
            };
            let (report, text) = replay_text(&opts);
            let m = report.metrics.as_deref().unwrap();
            assert!(m.contains(
                "tsm_trace_operations_total{errno=\"EBUSY\",layer=\"pci_tsm\",op=\"bind\",result=\"error\"} 1"
            ));
            assert!(
                m.contains("tsm_trace_correlation_anomalies_total{kind=\"leak_unconfirmed\"} 1"),
                "{m}"
            );
            assert_eq!(text, m, "nothing but the exposition");
            assert_eq!(
                text.matches("# HELP tsm_trace_operations_total ").count(),
                1
            );
        }
    }

    /// `--json`: JSON lines only, even with the summary asked for.
    #[test]
    fn replay_json_is_json_lines_only() {
        let opts = ReplayOptions {
            summary: true,
            format: TraceFormat::Json,
            ..Default::default()
        };
        let (_, text) = replay_text(&opts);
        assert!(!text.is_empty());
        for l in text.lines() {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        }
    }

    /// The summary counts what the filters let through, as the lines do.
    #[test]
    fn replay_summary_follows_the_filters() {
        let opts = ReplayOptions {
            summary: true,
            filters: Filters {
                device: Some("0000:02:00.0".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let (_, text) = replay_text(&opts);
        assert!(
            text.contains("=== tsm-trace summary: 1 operations, 1 failed ==="),
            "{text}"
        );
    }

    #[test]
    fn replay_with_filters_and_json() {
        let opts = ReplayOptions {
            filters: Filters {
                failures_only: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let (_, text) = replay_text(&opts);
        let lines: Vec<&str> = text.lines().collect();
        // The bind that failed, the teardown leak (the VM's grace period outlasts the capture).
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("EBUSY from pci_tsm"));
        assert!(lines[1].contains("LEAK "));

        let opts = ReplayOptions {
            filters: Filters {
                device: Some("0000:02:00.0".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let (_, text) = replay_text(&opts);
        assert_eq!(text.lines().count(), 1, "{text}");

        let opts = ReplayOptions {
            filters: Filters {
                vm: Some(crate::events::VmSelector::Pid(9)),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(replay_text(&opts).1, "");

        let opts = ReplayOptions {
            format: TraceFormat::Json,
            ..Default::default()
        };
        let (_, text) = replay_text(&opts);
        let v: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(v[0]["type"], "operation");
        assert_eq!(v[0]["kind"], "bind");
        assert_eq!(v[0]["result"], "error");
        assert_eq!(v[0]["errno"], "EBUSY");
        assert_eq!(v[0]["layer"], "pci_tsm");
        assert_eq!(v[0]["function"], "pci_tsm_bind");
        assert_eq!(v[0]["frames"][2]["errno"], "EBUSY");
        assert_eq!(v[0]["vm"]["id"], "vm#888012340000");
        assert!(v[0]["vm"].get("kvm").is_none());
        assert_eq!(v[1]["result"], "ok");
        assert_eq!(v[3]["type"], "leak");
        assert_eq!(v[3]["event"], "detected");
        assert_eq!(v[3]["reason"], "vdevice_teardown_without_unbind");
        assert_eq!(v[4]["type"], "vm_event");
        assert_eq!(v[4]["event"], "vm_destroyed");
    }

    #[test]
    fn replay_of_nothing() {
        let (report, text) = {
            let out = Shared::default();
            let r = replay(Vec::new(), &ReplayOptions::default(), Box::new(out.clone())).unwrap();
            (r, out.text())
        };
        assert_eq!(report.events, 0);
        assert_eq!(report.operations, 0);
        assert_eq!(text, "");
    }
}
