//! Correlator outputs → OpenTelemetry spans (`docs/traces.md` lists every name and attribute).
//!
//! - An operation is a trace of its own: a root span named by its kind (`bind`, `connect`,
//!   ...) from its start to its end, and a child span per frame (each layer's call), parented
//!   to the innermost frame whose time contains it (else the root).
//! - A device's lifecycle is tied by span links, not by one long trace: a bind links the
//!   device's connect; unbind, teardown, guest requests and disconnect link the binding's
//!   bind (a disconnect its connect too). When a binding ends, a `binding` span covers its
//!   lifetime (bind to unbind, any cause) linking the bind and the operation that ended it; a
//!   leak (and its clearing) is a zero-length `leak` (`leak_cleared`) span linking the bind.
//! - Times are the events' CLOCK_MONOTONIC ns plus one CLOCK_REALTIME − CLOCK_MONOTONIC offset.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData, SpanLinks};

use crate::correlate::{Binding, BindingClosed, Frame, Leak, OpKind, OpResult, Operation, Output};
use crate::errno;
use crate::events::Vm;

/// Devices whose lifecycle spans are remembered for links (a host has far fewer PCI
/// functions); past it the oldest-seen entry goes, counted in [`Spans::forgotten`].
pub const MAX_DEVICES: usize = 4096;

/// The spans a device's later spans link to.
#[derive(Clone, Debug, Default)]
struct DeviceSpans {
    connect: Option<SpanContext>,
    bind: Option<SpanContext>,
    last_op: Option<SpanContext>,
    seen: u64,
}

/// Builds spans from outputs, remembering what the links need.
#[derive(Debug)]
pub struct Spans {
    offset_ns: i64,
    ids: RandomIdGenerator,
    scope: InstrumentationScope,
    devices: HashMap<String, DeviceSpans>,
    seq: u64,
    /// Device entries dropped from the full table (their later spans lack those links).
    pub forgotten: u64,
}

fn kv(k: &'static str, v: impl Into<Value>) -> KeyValue {
    KeyValue::new(k, v)
}

/// A u64 as an OTel int when it fits, else its decimal string (never a wrapped value).
fn int(v: u64) -> Value {
    i64::try_from(v).map_or_else(|_| Value::from(v.to_string()), Value::I64)
}

fn vm_attrs(vm: Option<&Vm>, out: &mut Vec<KeyValue>) {
    if let Some(vm) = vm {
        out.push(kv("tsm.vm.name", vm.name()));
        out.push(kv("tsm.vm.id", vm.id.to_string()));
        // `tsm.vm.name` is the VMM's name for the VM when its command line gave one.
        if let Some(n) = &vm.vmm {
            out.push(kv("tsm.vm.vmm", n.vmm.clone()));
        }
        if let Some(s) = &vm.stats_id {
            out.push(kv("tsm.vm.stats_id", s.clone()));
        }
        if let Some(p) = vm.pid {
            out.push(kv("tsm.vmm.pid", i64::from(p)));
        }
    }
}

impl Spans {
    pub fn new(offset_ns: i64) -> Spans {
        Spans {
            offset_ns,
            ids: RandomIdGenerator::default(),
            scope: InstrumentationScope::builder("tsm-trace")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            devices: HashMap::new(),
            seq: 0,
            forgotten: 0,
        }
    }

    /// CLOCK_MONOTONIC ns → wall clock.
    pub fn time(&self, mono_ns: u64) -> SystemTime {
        let unix =
            (i128::from(mono_ns) + i128::from(self.offset_ns)).clamp(0, i128::from(u64::MAX));
        UNIX_EPOCH + Duration::from_nanos(unix as u64)
    }

    fn device(&mut self, d: &str) -> &mut DeviceSpans {
        self.seq += 1;
        if !self.devices.contains_key(d)
            && self.devices.len() >= MAX_DEVICES
            && let Some(oldest) = self
                .devices
                .iter()
                .min_by_key(|(_, s)| s.seen)
                .map(|(k, _)| k.clone())
        {
            self.devices.remove(&oldest);
            self.forgotten += 1;
        }
        let e = self.devices.entry(d.to_string()).or_default();
        e.seen = self.seq;
        e
    }

    fn context(&self, trace: TraceId) -> SpanContext {
        SpanContext::new(
            trace,
            self.ids.new_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn span(
        &self,
        ctx: SpanContext,
        parent: SpanId,
        name: impl Into<Cow<'static, str>>,
        start_ns: u64,
        end_ns: u64,
        attributes: Vec<KeyValue>,
        links: Vec<Link>,
        status: Status,
    ) -> SpanData {
        let mut l = SpanLinks::default();
        l.links = links;
        SpanData {
            span_context: ctx,
            parent_span_id: parent,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: name.into(),
            start_time: self.time(start_ns),
            end_time: self.time(end_ns.max(start_ns)),
            attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: l,
            status,
            instrumentation_scope: self.scope.clone(),
        }
    }

    /// The spans of one output (none for anomalies, sysfs mismatches and VM events). An
    /// operation's are its root, then one per frame in the frames' order (the exemplars rely on
    /// it: `Otlp::write`).
    pub fn of(&mut self, o: &Output) -> Vec<SpanData> {
        match o {
            Output::Operation(op) => self.operation(op),
            Output::LeakDetected(l) => vec![self.leak("leak", l.detected_ns, l)],
            Output::LeakCleared(l) => {
                vec![self.leak("leak_cleared", l.cleared_ns.unwrap_or(l.detected_ns), l)]
            }
            Output::BindingClosed(c) => vec![self.binding_closed(c)],
            Output::IdeStreamLeaked(l) => vec![self.ide_leak("ide_stream_leak", l)],
            Output::IdeStreamLeakCleared(l) => vec![self.ide_leak("ide_stream_leak_cleared", l)],
            Output::Anomaly(_) | Output::Mismatch(_) | Output::VmEvent(_) => Vec::new(),
        }
    }

    fn link(ctx: &Option<SpanContext>, what: &'static str, links: &mut Vec<Link>) {
        if let Some(c) = ctx {
            links.push(Link::new(c.clone(), vec![kv("tsm.link", what)], 0));
        }
    }

    fn operation(&mut self, op: &Operation) -> Vec<SpanData> {
        let trace = self.ids.new_trace_id();
        let root = self.context(trace);
        let mut links = Vec::new();
        if let Some(d) = &op.device {
            let known = self.device(d).clone();
            match op.kind {
                OpKind::Bind => Self::link(&known.connect, "connect", &mut links),
                OpKind::Unbind | OpKind::Teardown | OpKind::GuestRequest => {
                    Self::link(&known.bind, "bind", &mut links)
                }
                OpKind::Disconnect => {
                    Self::link(&known.bind, "bind", &mut links);
                    Self::link(&known.connect, "connect", &mut links);
                }
                OpKind::Connect | OpKind::Invalid => {}
            }
            let e = self.device(d);
            e.last_op = Some(root.clone());
            match op.kind {
                OpKind::Connect if op.ok() => e.connect = Some(root.clone()),
                OpKind::Bind if op.ok() => e.bind = Some(root.clone()),
                OpKind::Disconnect if op.ok() => e.connect = None,
                _ => {}
            }
        }
        let status = match &op.result {
            OpResult::Ok => Status::Unset,
            OpResult::Err { errno: e, .. } => Status::error(errno::name(*e)),
        };
        let mut spans = Vec::with_capacity(op.frames.len() + 1);
        spans.push(self.span(
            root.clone(),
            SpanId::INVALID,
            op.kind.as_str(),
            op.start_ns,
            op.end_ns,
            op_attributes(op),
            links,
            status,
        ));
        // Frame i's parent: the innermost earlier frame whose time contains it, else the root.
        let ids: Vec<SpanContext> = op.frames.iter().map(|_| self.context(trace)).collect();
        for (i, f) in op.frames.iter().enumerate() {
            let (s, e) = interval(f);
            let parent = (0..i)
                .filter(|&j| !op.frames[j].entry_missing)
                .filter(|&j| {
                    let (ps, pe) = interval(&op.frames[j]);
                    ps <= s && e <= pe
                })
                .min_by_key(|&j| {
                    let (ps, pe) = interval(&op.frames[j]);
                    pe - ps
                })
                .map_or(root.span_id(), |j| ids[j].span_id());
            let status = if f.ok() {
                Status::Unset
            } else {
                Status::error(f.errno.map_or_else(|| "NULL".to_string(), errno::name))
            };
            spans.push(self.span(
                ids[i].clone(),
                parent,
                f.probe.as_str(),
                s,
                e,
                frame_attributes(f),
                Vec::new(),
                status,
            ));
        }
        self.deep_calls(op, trace, &root, &ids, &mut spans);
        spans
    }

    /// `trace --deep`: one span per deep call, after the frames' spans, under the innermost
    /// frame or deep call whose time contains it; the origin carries the kernel stack.
    fn deep_calls(
        &mut self,
        op: &Operation,
        trace: TraceId,
        root: &SpanContext,
        frame_ids: &[SpanContext],
        spans: &mut Vec<SpanData>,
    ) {
        let calls = op.calls();
        let ids: Vec<SpanContext> = calls.iter().map(|_| self.context(trace)).collect();
        for (k, c) in calls.iter().enumerate() {
            let inside = |s: u64, e: u64| s <= c.start_ns && c.end_ns <= e;
            let frame = op
                .frames
                .iter()
                .enumerate()
                .filter(|(_, f)| !f.entry_missing && inside(f.start_ns, f.end_ns))
                .map(|(j, f)| (f.end_ns - f.start_ns, frame_ids[j].span_id()));
            let call = calls[..k]
                .iter()
                .enumerate()
                .filter(|(_, p)| p.depth < c.depth && inside(p.start_ns, p.end_ns))
                .map(|(j, p)| (p.end_ns - p.start_ns, ids[j].span_id()));
            let parent = frame
                .chain(call)
                .min_by_key(|(len, _)| *len)
                .map_or(root.span_id(), |(_, id)| id);
            let mut a = vec![
                kv("code.function", c.function.clone()),
                kv("tsm.deep.depth", i64::from(c.depth)),
            ];
            if let Some(m) = &c.module {
                a.push(kv("tsm.deep.module", m.clone()));
            }
            if let Some(r) = c.ret {
                a.push(kv("tsm.deep.return", r));
            }
            if let Some(o) = op.origin().filter(|o| o.call == k) {
                a.push(kv("tsm.deep.origin", true));
                if !o.stack.is_empty() {
                    a.push(kv("code.stacktrace", o.stack.join("\n")));
                }
            }
            let status = match c.errno {
                Some(e) => Status::error(errno::name(e)),
                None => Status::Unset,
            };
            spans.push(self.span(
                ids[k].clone(),
                parent,
                c.function.clone(),
                c.start_ns,
                c.end_ns,
                a,
                Vec::new(),
                status,
            ));
        }
    }

    fn leak(&mut self, name: &'static str, at_ns: u64, l: &Leak) -> SpanData {
        let mut links = Vec::new();
        let bind = self.devices.get(&*l.device).and_then(|d| d.bind.clone());
        Self::link(&bind, "bind", &mut links);
        let mut a = vec![
            kv("tsm.device", l.device.clone()),
            kv("tsm.leak.reason", l.reason.as_str()),
        ];
        vm_attrs(l.vm.as_ref(), &mut a);
        if let Some(t) = l.vmm_tgid {
            a.retain(|k| k.key.as_str() != "tsm.vmm.pid");
            a.push(kv("tsm.vmm.pid", i64::from(t)));
        }
        if let Some(c) = &l.vmm_comm {
            a.push(kv("tsm.vmm.comm", c.clone()));
        }
        if let Some(v) = l.vdevice_id {
            a.push(kv("tsm.vdevice", i64::from(v)));
        }
        if let Some(t) = l.tdi_id {
            a.push(kv("tsm.tdi", int(t)));
        }
        if let Some(t) = &l.tsm {
            a.push(kv("tsm.name", t.clone()));
        }
        if let Some(c) = l.cleared_by {
            a.push(kv("tsm.leak.cleared_by", c.as_str()));
        }
        let status = if name == "leak" {
            Status::error(l.reason.as_str())
        } else {
            Status::Unset
        };
        let ctx = self.context(self.ids.new_trace_id());
        self.span(ctx, SpanId::INVALID, name, at_ns, at_ns, a, links, status)
    }

    /// A leaked IDE stream (or its end), linked to the connect of its endpoint.
    fn ide_leak(&mut self, name: &'static str, l: &crate::correlate::IdeLeakChange) -> SpanData {
        let mut links = Vec::new();
        let connect = self
            .devices
            .get(&l.stream.endpoint)
            .and_then(|d| d.connect.clone());
        Self::link(&connect, "connect", &mut links);
        let mut a = vec![
            kv("tsm.device", l.stream.endpoint.clone()),
            kv("tsm.ide.stream", l.stream.label().to_string()),
            kv("tsm.leak.reason", l.reason.as_str()),
            kv("tsm.ide.registered", l.stream.registered),
        ];
        if let Some(id) = l.stream.stream_id {
            a.push(kv("tsm.ide.stream_id", i64::from(id)));
        }
        if let Some(hb) = &l.stream.host_bridge {
            a.push(kv("tsm.ide.host_bridge", hb.clone()));
        }
        if let Some(t) = &l.stream.tsm {
            a.push(kv("tsm.name", t.clone()));
        }
        if let Some(c) = l.cleared_by {
            a.push(kv("tsm.leak.cleared_by", c));
        }
        let status = if l.cleared_by.is_none() {
            Status::error(l.reason.as_str())
        } else {
            Status::Unset
        };
        let ctx = self.context(self.ids.new_trace_id());
        self.span(
            ctx,
            SpanId::INVALID,
            name,
            l.time_ns,
            l.time_ns,
            a,
            links,
            status,
        )
    }

    fn binding_closed(&mut self, c: &BindingClosed) -> SpanData {
        let b: &Binding = &c.binding;
        let mut links = Vec::new();
        let known = self.devices.get(&*b.device).cloned().unwrap_or_default();
        Self::link(&known.bind, "bind", &mut links);
        Self::link(&known.last_op, "closed_by", &mut links);
        if let Some(e) = self.devices.get_mut(&*b.device) {
            e.bind = None;
        }
        let mut a = vec![
            kv("tsm.device", b.device.clone()),
            kv("tsm.unbind.cause", c.cause.as_str()),
            kv("tsm.bind.path", bind_path(b)),
        ];
        vm_attrs(b.vm.as_ref(), &mut a);
        a.retain(|k| k.key.as_str() != "tsm.vmm.pid");
        a.push(kv("tsm.vmm.pid", i64::from(b.vmm_tgid)));
        a.push(kv("tsm.vmm.comm", b.vmm_comm.clone()));
        if let Some(v) = b.vdevice_id {
            a.push(kv("tsm.vdevice", i64::from(v)));
        }
        if let Some(t) = b.tdi_id {
            a.push(kv("tsm.tdi", int(t)));
        }
        if let Some(t) = &b.tsm {
            a.push(kv("tsm.name", t.clone()));
        }
        let ctx = self.context(self.ids.new_trace_id());
        self.span(
            ctx,
            SpanId::INVALID,
            "binding",
            b.since_ns,
            c.closed_ns,
            a,
            links,
            Status::Unset,
        )
    }
}

/// The binding's path as the JSON output spells it (`ioctl`, `tsm_bind`, ...).
fn bind_path(b: &Binding) -> String {
    serde_json::to_value(b.path)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A frame's span times: a frame whose entry was missed is a zero-length span at its return.
fn interval(f: &Frame) -> (u64, u64) {
    if f.entry_missing {
        (f.end_ns, f.end_ns)
    } else {
        (f.start_ns, f.end_ns.max(f.start_ns))
    }
}

fn op_attributes(op: &Operation) -> Vec<KeyValue> {
    let mut a = vec![
        kv("tsm.op", op.kind.as_str()),
        kv("tsm.result", if op.ok() { "ok" } else { "error" }),
    ];
    if let OpResult::Err {
        errno: e,
        layer,
        function,
    } = &op.result
    {
        a.push(kv("tsm.errno", errno::name(*e)));
        a.push(kv("tsm.origin.layer", layer.as_str()));
        a.push(kv("tsm.origin.function", function.as_str()));
    }
    if let Some(d) = &op.device {
        a.push(kv("tsm.device", d.clone()));
    }
    if let Some(v) = op.vdevice_id {
        a.push(kv("tsm.vdevice", i64::from(v)));
    }
    if let Some(t) = op.tdi_id {
        a.push(kv("tsm.tdi", int(t)));
    }
    vm_attrs(op.vm.as_ref(), &mut a);
    // The caller is the VMM when it is the process that created the VM.
    if op.vm.as_ref().and_then(|v| v.pid) == i32::try_from(op.tgid).ok() {
        a.push(kv("tsm.vmm.comm", op.comm.clone()));
    }
    a.push(kv("tsm.caller.pid", i64::from(op.tgid)));
    a.push(kv("tsm.caller.tid", i64::from(op.tid)));
    a.push(kv("tsm.caller.comm", op.comm.clone()));
    if let Some(t) = &op.tsm {
        a.push(kv("tsm.name", t.clone()));
    }
    if let Some(c) = op.cause {
        a.push(kv("tsm.cause", c.as_str()));
    }
    if let Some(u) = op.uapi_op {
        a.push(kv("tsm.uapi.op", i64::from(u)));
    }
    if let Some(f) = op.flags {
        a.push(kv("tsm.uapi.flags", i64::from(f)));
    }
    if let Some(g) = &op.guest_request {
        a.push(kv("tsm.guest_request.scope", g.scope_label()));
        for (k, v) in [
            ("tsm.tsm_code", g.tsm_code),
            ("tsm.guest_request.in_len", g.in_len),
            ("tsm.guest_request.out_len", g.out_len),
            ("tsm.guest_request.residue", g.residue),
        ] {
            if let Some(v) = v {
                a.push(kv(k, int(v)));
            }
        }
    }
    a
}

fn frame_attributes(f: &Frame) -> Vec<KeyValue> {
    let mut a = vec![
        kv("tsm.layer", f.layer.as_str()),
        kv("tsm.function", f.probe.as_str()),
    ];
    if let Some(r) = f.ret {
        a.push(kv("tsm.ret", r));
    }
    if let Some(e) = f.errno {
        a.push(kv("tsm.errno", errno::name(e)));
    }
    if f.entry_missing {
        a.push(kv("tsm.entry_missing", true));
    }
    if f.null_return {
        a.push(kv("tsm.null_return", true));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `trace --deep`: a span per deep call, after the frames', under the innermost frame or
    /// call containing it; the origin marked, with its stack.
    #[test]
    fn deep_calls_nest_under_their_frame_and_caller() {
        use crate::correlate::{Correlator, Output};
        use crate::events::{Event, ProbeId, deep::DeepCall};
        let mut d = Event::new(ProbeId::DriverConnect, 100, 900, 7, 7, "sh".into());
        d.ret = Some(-71);
        d.device = Some("0000:00:04.0".into());
        d.calls = vec![
            DeepCall::test("inner", 2, (300, 400), Some(71), &["inner", "outer+0x10"]),
            DeepCall::test("outer", 1, (200, 500), Some(71), &[]),
        ];
        let mut c = Event::new(ProbeId::Connect, 0, 1_000, 7, 7, "sh".into());
        c.ret = Some(-71);
        c.device = Some("0000:00:04.0".into());
        let mut corr = Correlator::default();
        let mut out = corr.handle(d, 900);
        out.extend(corr.handle(c, 1_000));
        out.extend(corr.tick(u64::MAX / 2));
        let op = out
            .iter()
            .find(|o| matches!(o, Output::Operation(_)))
            .expect("an operation");
        let spans = Spans::new(0).of(op);
        // Root, two frames, two deep calls.
        assert_eq!(spans.len(), 5);
        let by_name = |n: &str| spans.iter().find(|s| s.name == n).unwrap();
        let (frame, outer, inner) = (
            by_name("driver_connect"),
            by_name("outer"),
            by_name("inner"),
        );
        assert_eq!(outer.parent_span_id, frame.span_context.span_id());
        assert_eq!(inner.parent_span_id, outer.span_context.span_id());
        let attr = |s: &SpanData, k: &str| {
            s.attributes
                .iter()
                .find(|a| a.key.as_str() == k)
                .map(|a| a.value.as_str().into_owned())
        };
        assert_eq!(attr(inner, "tsm.deep.origin").as_deref(), Some("true"));
        assert_eq!(
            attr(inner, "code.stacktrace").as_deref(),
            Some("inner\nouter+0x10")
        );
        assert_eq!(attr(outer, "tsm.deep.origin"), None);
    }

    /// `tsm.vm.name` is the VMM's name for the VM where its command line gave one (and
    /// `tsm.vm.vmm` says which VMM), else the stats id.
    #[test]
    fn vm_attributes_name_the_vm_as_its_vmm_does() {
        let mut vm = Vm {
            id: crate::events::VmId::from_bits(1),
            pid: Some(7),
            stats_id: Some("kvm-7".into()),
            vmm: None,
        };
        let get = |vm: &Vm| {
            let mut a = Vec::new();
            vm_attrs(Some(vm), &mut a);
            a.into_iter()
                .map(|k| (k.key.as_str().to_string(), k.value.as_str().into_owned()))
                .collect::<HashMap<_, _>>()
        };
        let a = get(&vm);
        assert_eq!(a["tsm.vm.name"], "kvm-7");
        assert!(!a.contains_key("tsm.vm.vmm"));
        vm.vmm = Some(crate::events::VmmName {
            vmm: "qemu".into(),
            name: "web-1".into(),
        });
        let a = get(&vm);
        assert_eq!(a["tsm.vm.name"], "web-1");
        assert_eq!(a["tsm.vm.vmm"], "qemu");
        assert_eq!(a["tsm.vm.stats_id"], "kvm-7");
    }
}
