//! Operation building: a closed chain of frames becomes one [`Operation`] (kind, result and
//! errno attribution, identifiers), which is then applied to the binding table.

use super::nesting::Chain;
use super::types::{Frame, GuestRequest, OpKind, OpResult, Operation, Output};
use super::{Correlator, FRAME_POOL_MAX};
use crate::events::{Event, ProbeId, UnbindCause};
use tsm_trace_common::aggregates;

impl Correlator {
    /// Turns a chain into an operation and applies it to the binding table. Every time the
    /// operation changes the tables at comes from its frames, never from `now_ns`.
    pub(super) fn close(&mut self, chain: Chain, _now_ns: u64, out: &mut Vec<Output>) {
        let mut frames = chain.frames;
        for v in frames.iter().filter_map(|f| f.vm.as_ref()) {
            self.vm_names.learn(v);
        }
        let op_frames = self.frame_vecs.pop().unwrap_or_default();
        let mut op = build_operation(&mut frames, op_frames);
        if let (Some(d), Some(v)) = (&op.device, op.vdevice_id) {
            self.vm_names.learn_vdevice(op.tgid, v, d);
        }
        self.name_vm(&mut op);
        self.stats.operations += 1;
        // The operation first, then what it caused (bindings, leaks).
        let mut effects = std::mem::take(&mut self.scratch.effects);
        self.apply(&op, &frames, &mut effects);
        if op.kind == OpKind::Teardown
            && let Some(v) = op.vdevice_id
        {
            self.vm_names.forget_vdevice(op.tgid, v);
        }
        out.push(Output::Operation(op));
        out.append(&mut effects);
        self.scratch.effects = effects;
        while let Some(b) = frames.pop() {
            if self.scratch.event_boxes.len() < FRAME_POOL_MAX {
                self.scratch.event_boxes.push(b);
            }
        }
        if self.scratch.frame_pool.len() < FRAME_POOL_MAX {
            self.scratch.frame_pool.push(frames);
        }
    }
}

impl Correlator {
    /// Names what the frames left unnamed, from what earlier operations taught: the VM's
    /// first full name (see `vm_names.rs`); the device behind the vdevice id of an operation
    /// that could not read it; for an unbind or teardown whose frames carry no VM, and for a
    /// disconnect or guest request (whose frames know the VM only by its `struct kvm *`),
    /// the VM of the binding the operation acts on. Runs before the operation changes the
    /// table.
    fn name_vm(&self, op: &mut Operation) {
        if let Some(v) = op.vm.as_mut() {
            self.vm_names.fill(v);
        }
        if op.device.is_none()
            && let Some(v) = op.vdevice_id
        {
            op.device = self.vm_names.vdevice(op.tgid, v).cloned();
        }
        if !matches!(
            op.kind,
            OpKind::Disconnect | OpKind::GuestRequest | OpKind::Unbind | OpKind::Teardown
        ) {
            return;
        }
        let named = op.vm.as_ref().is_some_and(super::vm_names::is_full);
        if named {
            return;
        }
        let Some(b) = op.device.as_deref().and_then(|d| self.binding(d)) else {
            return;
        };
        match (&op.vm, &b.vm) {
            (Some(v), Some(bv)) if v.id == bv.id => op.vm = Some(bv.clone()),
            (None, Some(bv)) => op.vm = Some(bv.clone()),
            _ => {}
        }
        if op.tdi_id.is_none() {
            op.tdi_id = b.tdi_id;
        }
    }
}

// Which probes bind, unbind, and decide their operation's kind: one table with the programs,
// which count operations in the kernel (`tsm_trace_common::aggregates`).

fn is_bind_probe(p: ProbeId) -> bool {
    aggregates::inferred_kind(p) == aggregates::OP_BIND
}

pub(super) fn is_unbind_probe(p: ProbeId) -> bool {
    aggregates::inferred_kind(p) == aggregates::OP_UNBIND
}

/// The kind an outermost frame gives its operation, when it decides alone.
fn kind_of_outer(outer: &Event) -> Option<OpKind> {
    let op = if outer.probe == ProbeId::TsmOpIoctl {
        outer.op
    } else {
        None
    };
    match aggregates::outer_kind(outer.probe, op) {
        aggregates::OP_UNDECIDED => None,
        k => OpKind::ALL.get(k as usize).copied(),
    }
}

/// Why a disconnect or an unbind happened, from its outermost frame.
fn cause_of(kind: OpKind, outer: &Event) -> Option<UnbindCause> {
    match (kind, outer.probe) {
        (OpKind::Disconnect, ProbeId::PciTsmDestroy) if outer.tsm_unregister => {
            Some(UnbindCause::TsmUnregister)
        }
        (OpKind::Disconnect, ProbeId::PciTsmDestroy) => Some(UnbindCause::DeviceRemoval),
        (OpKind::Disconnect, _) => Some(UnbindCause::Disconnect),
        (OpKind::Unbind | OpKind::Teardown, _) => Some(UnbindCause::Unbind),
        _ => None,
    }
}

/// Builds an operation from frames sorted outermost first (non-empty). Moves the device and
/// VM out of the frames (the comm, a shared [`crate::events::Name`], is shared: taking it would
/// leave an empty one made for nothing); `frame_vec` is an empty vector to reuse for
/// [`Operation::frames`].
fn build_operation(frames: &mut [Box<Event>], mut frame_vec: Vec<Frame>) -> Operation {
    let comm = frames[0].comm.clone();
    let device = frames.iter_mut().find_map(|f| f.device.take());
    // A disconnect unbinds every function of the device: the VM and tdi of the operation are
    // those of its own device's frames (device taken above, so `None` there), else the first.
    let own = |f: &Event| f.device.is_none() || f.device == device;
    let vm = match frames.iter().position(|f| own(f) && f.vm.is_some()) {
        Some(i) => frames[i].vm.take(),
        None => frames.iter_mut().find_map(|f| f.vm.take()),
    };
    let tdi_id = frames
        .iter()
        .filter(|f| own(f))
        .find_map(|f| f.tdi_id)
        .or_else(|| frames.iter().find_map(|f| f.tdi_id));
    let frames: &[Box<Event>] = frames;
    let outer = &frames[0];
    // When the outermost frame does not decide the kind, the first bind or unbind call does.
    let inferred = || {
        frames.iter().find_map(|f| {
            if is_bind_probe(f.probe) {
                Some(OpKind::Bind)
            } else if is_unbind_probe(f.probe) {
                Some(OpKind::Unbind)
            } else {
                None
            }
        })
    };
    let kind = kind_of_outer(outer)
        .or_else(inferred)
        .unwrap_or(OpKind::Invalid);
    let result = match outer.errno() {
        None => OpResult::Ok,
        Some(e) => {
            // The deepest frame that returned the same errno; if only the outer frame did,
            // a deeper frame that failed without an errno (a driver probe's NULL) explains it.
            let src = frames
                .iter()
                .skip(1)
                .rev()
                .find(|f| f.errno() == Some(e))
                .or_else(|| {
                    frames
                        .iter()
                        .skip(1)
                        .rev()
                        .find(|f| f.errno().is_none() && !f.ok())
                })
                .unwrap_or(outer);
            OpResult::Err {
                errno: e,
                layer: crate::events::Layer::of(src.probe),
                function: src.probe,
            }
        }
    };
    let guest_request = guest_request(frames);
    let deep = frames.iter().any(|f| !f.calls.is_empty()).then(|| {
        let mut calls: Vec<_> = frames
            .iter()
            .flat_map(|f| f.calls.iter().cloned())
            .collect();
        calls.sort_by_key(|c| (c.start_ns, c.depth));
        let origin = super::types::Origin::find(&mut calls, result.errno());
        Box::new(super::types::Deep { calls, origin })
    });
    let start_ns = if outer.entry_missing {
        frames
            .iter()
            .map(|f| f.known_start_ns())
            .min()
            .unwrap_or(outer.end_ns)
    } else {
        outer.start_ns
    };
    Operation {
        kind,
        start_ns,
        end_ns: frames
            .iter()
            .map(|f| f.end_ns)
            .max()
            .unwrap_or(outer.end_ns),
        tgid: outer.tgid,
        tid: outer.tid,
        comm,
        device,
        vdevice_id: frames.iter().find_map(|f| f.vdevice_id.or(f.obj_id)),
        vm,
        tdi_id,
        virt_id: frames.iter().find_map(|f| f.virt_id),
        uapi_op: (outer.probe == ProbeId::TsmOpIoctl)
            .then_some(outer.op)
            .flatten(),
        flags: (outer.probe == ProbeId::TsmOpIoctl)
            .then_some(outer.flags)
            .flatten(),
        tsm: frames.iter().find_map(|f| f.tsm.clone()),
        cause: cause_of(kind, outer),
        guest_request,
        frames: {
            frame_vec.clear();
            frame_vec.extend(frames.iter().map(|f| Frame::from_event(f)));
            frame_vec
        },
        result,
        deep,
    }
}

/// What a guest request's frames (outermost first) carry: each value from the deepest frame
/// that has it (the scope together with its name); `None` for other operations.
fn guest_request(frames: &[Box<Event>]) -> Option<Box<GuestRequest>> {
    let is_req = |f: &Event| aggregates::outer_kind(f.probe, None) == aggregates::OP_GUEST_REQUEST;
    if !frames.iter().any(|f| is_req(f)) {
        return None;
    }
    let req: Vec<&Box<Event>> = frames.iter().filter(|f| is_req(f)).rev().collect();
    let scope = req.iter().find(|f| f.scope.is_some());
    let op = req.iter().find(|f| f.req_op.is_some());
    let lens = req
        .iter()
        .find(|f| f.in_len.is_some() && f.out_len.is_some());
    Some(Box::new(GuestRequest {
        scope: scope.and_then(|f| f.scope),
        scope_name: scope.and_then(|f| f.scope_name.clone()),
        req_op: op.and_then(|f| f.req_op),
        req_op_name: op.and_then(|f| f.req_op_name.clone()),
        tvm_arch: op.and_then(|f| f.tvm_arch),
        tvm_arch_name: op.and_then(|f| f.tvm_arch_name.clone()),
        in_len: lens.and_then(|f| f.in_len),
        out_len: lens.and_then(|f| f.out_len),
        tsm_code: req.iter().find_map(|f| f.tsm_code),
        residue: req
            .iter()
            .find_map(|f| f.ret.filter(|r| *r > 0).map(|r| r as u64)),
    }))
}

/// The kind indices of the shared table are `OpKind::ALL`'s, and its UAPI values the ones
/// the correlator decodes.
#[cfg(test)]
mod kernel_rules_agree {
    use tsm_trace_common::aggregates;

    use crate::correlate::types::OpKind;

    #[test]
    fn kind_indices() {
        assert_eq!(aggregates::OPS as usize, OpKind::ALL.len());
        for (i, k) in [
            (aggregates::OP_BIND, OpKind::Bind),
            (aggregates::OP_UNBIND, OpKind::Unbind),
            (aggregates::OP_TEARDOWN, OpKind::Teardown),
            (aggregates::OP_INVALID, OpKind::Invalid),
            (aggregates::OP_CONNECT, OpKind::Connect),
            (aggregates::OP_DISCONNECT, OpKind::Disconnect),
            (aggregates::OP_GUEST_REQUEST, OpKind::GuestRequest),
        ] {
            assert_eq!(OpKind::ALL[i as usize], k);
        }
    }
}
