//! `--timeline FILE`: the operations as a Chrome/Perfetto trace-event JSON file, for a kernel
//! engineer to zoom in ui.perfetto.dev or chrome://tracing.
//!
//! ```text
//! {"displayTimeUnit":"ns","traceEvents":[
//! {"ph":"M","name":"process_name","pid":1,"tid":0,"args":{"name":"0000:01:00.0"}},
//! {"ph":"M","name":"thread_name","pid":1,"tid":10,"args":{"name":"qemu 4242/10"}},
//! {"ph":"X","name":"iommufd_vdevice_tsm_op_ioctl","cat":"bind,iommufd","pid":1,"tid":10,"ts":2000000.000,"dur":1000.000,"args":{…}},
//! {"ph":"i","s":"p","name":"leak: vdevice_teardown_without_unbind","pid":1,"tid":0,"ts":…,"args":{…}},
//! ]}
//! ```
//! - One process track per device (`pid` numbered in order of first appearance, named by its
//!   PCI BDF; pid 0 holds what has no device: VM events, operations without a device), one
//!   thread track per kernel thread that called (`comm tgid/tid`), and `tid` 0 of a device
//!   for its instant events (leaks, leaks cleared, bindings closed by cause).
//! - One complete (`X`) slice per frame of an operation, the outermost first: they nest by
//!   time. `ts` and `dur` are the frame's CLOCK_MONOTONIC times in µs with three decimals,
//!   exactly the event's ns (written as text, never rounded through a float). A frame whose
//!   entry was missed has no start: a zero-length slice at its return, `entry_missing` in its
//!   args.
//! - The outermost slice's args describe the operation (op, result, errno, origin layer and
//!   function, VM, vdevice, TDI, TSM, cause); every slice's args its own call (layer, ret,
//!   errno).
//!
//! The timeline holds every output, whatever the trace filters (`--device`, `--failed`) show.
//! It is written as it goes (bounded memory); the closing `]}` at the end.

use std::collections::{HashMap, HashSet};
use std::io::Write;

use serde_json::{Map, Value, json};

use crate::correlate::{Binding, Frame, Leak, OpResult, Operation, Output};
use crate::errno;

/// A timeline file could not be created or written.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    #[error("creating the timeline {path}")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the timeline {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The streaming trace-event writer.
pub struct Timeline {
    out: Box<dyn Write + Send>,
    /// What to name the output in errors (its path, or `stdout`).
    path: String,
    /// Device → pid.
    devices: HashMap<String, u32>,
    /// (pid, tid) named already.
    threads: HashSet<(u32, u32)>,
    started: bool,
    /// The first write error; writing stops after it.
    error: Option<std::io::Error>,
    slices: u64,
    instants: u64,
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline")
            .field("path", &self.path)
            .field("slices", &self.slices)
            .finish_non_exhaustive()
    }
}

/// CLOCK_MONOTONIC ns as trace-event µs with the ns as three decimals.
fn us(ns: u64) -> String {
    format!("{}.{:03}", ns / 1000, ns % 1000)
}

fn errno_name(e: i32) -> Value {
    Value::String(errno::name(e))
}

impl Timeline {
    /// A timeline written to `out`; `path` names it in errors.
    pub fn new(out: Box<dyn Write + Send>, path: impl Into<String>) -> Timeline {
        Timeline {
            out,
            path: path.into(),
            devices: HashMap::new(),
            threads: HashSet::new(),
            started: false,
            error: None,
            slices: 0,
            instants: 0,
        }
    }

    /// Creates `path` (0600, never through a symlink; an existing regular file is replaced).
    pub fn create(path: &std::path::Path) -> Result<Timeline, TimelineError> {
        let f =
            crate::files::create_private(path, true).map_err(|source| TimelineError::Create {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Timeline::new(
            Box::new(std::io::BufWriter::new(f)),
            path.display().to_string(),
        ))
    }

    /// Slices (one per frame) and instant events written so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.slices, self.instants)
    }

    fn raw(&mut self, line: &str) {
        if self.error.is_some() {
            return;
        }
        let r = if self.started {
            self.out.write_all(b",\n")
        } else {
            self.started = true;
            self.out
                .write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n")
        };
        if let Err(e) = r.and_then(|()| self.out.write_all(line.as_bytes())) {
            self.error = Some(e);
        }
    }

    fn meta(&mut self, what: &str, pid: u32, tid: u32, name: &str) {
        let line = json!({"ph": "M", "name": what, "pid": pid, "tid": tid, "args": {"name": name}})
            .to_string();
        self.raw(&line);
    }

    /// The pid of a device's track (pid 0: no device), named on first use.
    fn pid(&mut self, device: Option<&str>) -> u32 {
        let Some(d) = device else {
            if self.threads.insert((0, 0)) {
                self.meta("process_name", 0, 0, "no device");
                self.meta("thread_name", 0, 0, "events");
            }
            return 0;
        };
        if let Some(&p) = self.devices.get(d) {
            return p;
        }
        let p = self.devices.len() as u32 + 1;
        self.devices.insert(d.to_string(), p);
        self.meta("process_name", p, 0, d);
        self.meta("thread_name", p, 0, "leaks and unbinds");
        self.threads.insert((p, 0));
        p
    }

    fn thread(&mut self, pid: u32, tid: u32, comm: &str, tgid: u32) {
        if !self.threads.insert((pid, tid)) {
            return;
        }
        self.meta("thread_name", pid, tid, &format!("{comm} {tgid}/{tid}"));
    }

    /// One correlator output.
    pub fn write(&mut self, o: &Output) {
        match o {
            Output::Operation(op) => self.operation(op),
            Output::LeakDetected(l) => {
                self.leak(&format!("leak: {}", l.reason.as_str()), l.detected_ns, l)
            }
            Output::LeakCleared(l) => {
                let by = l.cleared_by.map_or("unknown", |c| c.as_str());
                self.leak(
                    &format!("leak cleared: {by}"),
                    l.cleared_ns.unwrap_or(l.detected_ns),
                    l,
                )
            }
            Output::IdeStreamLeaked(l) | Output::IdeStreamLeakCleared(l) => {
                let mut args = Map::new();
                args.insert("stream".into(), l.stream.label().into());
                args.insert("reason".into(), l.reason.as_str().into());
                args.insert("registered".into(), l.stream.registered.into());
                if let Some(id) = l.stream.stream_id {
                    args.insert("stream_id".into(), id.into());
                }
                let name = match l.cleared_by {
                    None => format!("IDE stream leak: {}", l.reason.as_str()),
                    Some(by) => format!("IDE stream leak cleared: {by}"),
                };
                let pid = self.pid(Some(&l.stream.endpoint));
                self.instant(&name, pid, l.time_ns, args);
            }
            Output::BindingClosed(c) => {
                let mut args = binding_args(&c.binding);
                args.insert("cause".into(), c.cause.as_str().into());
                args.insert("bound_since_ns".into(), c.binding.since_ns.into());
                let pid = self.pid(Some(&c.binding.device));
                self.instant(
                    &format!("unbound: {}", c.cause.as_str()),
                    pid,
                    c.closed_ns,
                    args,
                );
            }
            Output::VmEvent(v) => {
                let mut args = Map::new();
                if let Some(vm) = &v.vm {
                    args.insert("vm".into(), (*vm.name()).into());
                }
                args.insert("tgid".into(), v.tgid.into());
                args.insert("comm".into(), (*v.comm).into());
                args.insert("bound_devices".into(), v.bound_devices.into());
                let pid = self.pid(None);
                self.instant(v.event.as_str(), pid, v.time_ns, args);
            }
            Output::Anomaly(_) | Output::Mismatch(_) => {}
        }
    }

    fn leak(&mut self, name: &str, ns: u64, l: &Leak) {
        let mut args = Map::new();
        args.insert("reason".into(), l.reason.as_str().into());
        if let Some(vm) = &l.vm {
            args.insert("vm".into(), (*vm.name()).into());
        }
        if let Some(t) = l.vmm_tgid {
            args.insert("vmm_pid".into(), t.into());
        }
        if let Some(c) = &l.vmm_comm {
            args.insert("vmm_comm".into(), (**c).into());
        }
        if let Some(v) = l.vdevice_id {
            args.insert("vdevice".into(), v.into());
        }
        if let Some(t) = l.tdi_id {
            args.insert("tdi".into(), t.into());
        }
        if let Some(t) = l.bound_since_ns {
            args.insert("bound_since_ns".into(), t.into());
        }
        let pid = self.pid(Some(&l.device));
        self.instant(name, pid, ns, args);
    }

    fn instant(&mut self, name: &str, pid: u32, ns: u64, args: Map<String, Value>) {
        let line = format!(
            "{{\"ph\":\"i\",\"s\":\"p\",\"name\":{},\"pid\":{pid},\"tid\":0,\"ts\":{},\"args\":{}}}",
            Value::from(name),
            us(ns),
            Value::Object(args)
        );
        self.raw(&line);
        self.instants += 1;
    }

    fn operation(&mut self, op: &Operation) {
        let pid = self.pid(op.device.as_deref());
        self.thread(pid, op.tid, &op.comm, op.tgid);
        for (i, f) in op.frames.iter().enumerate() {
            let mut args = frame_args(f);
            if i == 0 {
                op_args(op, &mut args);
            }
            let (start, dur) = if f.entry_missing {
                (f.end_ns, 0)
            } else {
                (f.start_ns, f.end_ns.saturating_sub(f.start_ns))
            };
            let line = format!(
                "{{\"ph\":\"X\",\"name\":{},\"cat\":{},\"pid\":{pid},\"tid\":{},\"ts\":{},\"dur\":{},\"args\":{}}}",
                Value::from(f.probe.as_str()),
                Value::from(format!("{},{}", op.kind.as_str(), f.layer.as_str())),
                op.tid,
                us(start),
                us(dur),
                Value::Object(args)
            );
            self.raw(&line);
            self.slices += 1;
        }
    }

    /// Closes the JSON and flushes. Returns the first write error, naming the file.
    pub fn finish(&mut self) -> Result<(), TimelineError> {
        if !self.started {
            self.raw_start_empty();
        } else if self.error.is_none()
            && let Err(e) = self.out.write_all(b"\n]}\n")
        {
            self.error = Some(e);
        }
        if self.error.is_none()
            && let Err(e) = self.out.flush()
        {
            self.error = Some(e);
        }
        match self.error.take() {
            None => Ok(()),
            Some(source) => Err(TimelineError::Write {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn raw_start_empty(&mut self) {
        self.started = true;
        if let Err(e) = self
            .out
            .write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[]}\n")
        {
            self.error = Some(e);
        }
    }
}

fn frame_args(f: &Frame) -> Map<String, Value> {
    let mut a = Map::new();
    a.insert("layer".into(), f.layer.as_str().into());
    if let Some(r) = f.ret {
        a.insert("ret".into(), r.into());
    }
    if let Some(e) = f.errno {
        a.insert("errno".into(), errno_name(e));
    }
    if f.null_return {
        a.insert("null_return".into(), true.into());
    }
    if f.entry_missing {
        a.insert("entry_missing".into(), true.into());
    }
    a.insert("start_ns".into(), f.start_ns.into());
    a.insert("end_ns".into(), f.end_ns.into());
    a
}

fn op_args(op: &Operation, a: &mut Map<String, Value>) {
    a.insert("op".into(), op.kind.as_str().into());
    match &op.result {
        OpResult::Ok => {
            a.insert("result".into(), "ok".into());
        }
        OpResult::Err {
            errno,
            layer,
            function,
        } => {
            a.insert("result".into(), "error".into());
            a.insert("op_errno".into(), errno_name(*errno));
            a.insert("origin_layer".into(), layer.as_str().into());
            a.insert("origin_function".into(), function.as_str().into());
        }
    }
    if let Some(d) = &op.device {
        a.insert("device".into(), (**d).into());
    }
    if let Some(vm) = &op.vm {
        a.insert("vm".into(), (*vm.name()).into());
    }
    if let Some(v) = op.vdevice_id {
        a.insert("vdevice".into(), v.into());
    }
    if let Some(t) = op.tdi_id {
        a.insert("tdi".into(), t.into());
    }
    if let Some(t) = &op.tsm {
        a.insert("tsm".into(), (**t).into());
    }
    if let Some(c) = op.cause {
        a.insert("cause".into(), c.as_str().into());
    }
    if let Some(g) = &op.guest_request {
        a.insert("scope".into(), g.scope_label().into());
        if let Some(c) = g.tsm_code {
            a.insert("tsm_code".into(), c.into());
        }
    }
    a.insert("comm".into(), (*op.comm).into());
    a.insert("tgid".into(), op.tgid.into());
}

fn binding_args(b: &Binding) -> Map<String, Value> {
    let mut a = Map::new();
    if let Some(vm) = &b.vm {
        a.insert("vm".into(), (*vm.name()).into());
    }
    a.insert("vmm_pid".into(), b.vmm_tgid.into());
    a.insert("vmm_comm".into(), (*b.vmm_comm).into());
    if let Some(v) = b.vdevice_id {
        a.insert("vdevice".into(), v.into());
    }
    if let Some(t) = b.tdi_id {
        a.insert("tdi".into(), t.into());
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_the_events_ns_as_exact_decimal_us() {
        assert_eq!(us(0), "0.000");
        assert_eq!(us(1_234_567_890_123_456_789), "1234567890123456.789");
        assert_eq!(us(1_005), "1.005");
    }

    #[test]
    fn an_empty_timeline_is_valid_json() {
        let mut t = Timeline::new(Box::new(Vec::new()), "x");
        t.finish().unwrap();
    }

    /// A write error is reported once, at the end, naming the file.
    #[test]
    fn a_write_error_names_the_file() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut t = Timeline::new(Box::new(Broken), "/x/t.json");
        let e = t.finish().unwrap_err();
        assert_eq!(e.to_string(), "writing the timeline /x/t.json");
        let TimelineError::Write { source, .. } = e else {
            panic!("{e:?}")
        };
        assert_eq!(
            source.kind(),
            std::io::ErrorKind::BrokenPipe,
            "the cause is kept"
        );
    }
}
