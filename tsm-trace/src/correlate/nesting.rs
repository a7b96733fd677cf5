//! Call nesting: per thread, the completed frames that no outer frame has claimed yet
//! ([`Chain`]s), how a new frame absorbs them or joins one, and the timers that close chains
//! nobody can claim any more (see the [module documentation](super)).

use std::collections::VecDeque;

use super::types::AnomalyKind;
use super::{Correlator, FRAME_POOL_MAX, Output};
use crate::events::{Event, ProbeId};

pub(super) const RECENT_KEYS: usize = 16;
const RECENT_OPS: usize = 4;
/// More frames than any real operation has; protects against floods of overlaps. A connect
/// with IDE has connect_store, the driver's probe and connect and 7 `pci_ide_stream_*` calls
/// per stream (SEV-TIO: one stream; the disconnect: 6 IDE calls and the core's frames).
pub(super) const MAX_CHAIN_FRAMES: usize = 32;

/// Identity of an event for duplicate detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Key {
    // The most distinctive fields first: the derived `eq` stops at the first difference.
    end_ns: u64,
    start_ns: u64,
    probe: ProbeId,
    tgid: u32,
    tid: u32,
    ret: Option<i64>,
}

impl Key {
    pub(super) fn of(ev: &Event) -> Key {
        Key {
            probe: ev.probe,
            start_ns: ev.start_ns,
            end_ns: ev.end_ns,
            tgid: ev.tgid,
            tid: ev.tid,
            ret: ev.ret,
        }
    }
}

/// Completed frames of one (partial) operation, outermost first. Each frame is boxed once
/// when it arrives: chains absorb chains as the outer calls return, and moving a pointer
/// costs less than moving a whole [`Event`] at every level.
#[derive(Debug)]
pub(super) struct Chain {
    /// Frames join through [`Chain::new`], [`Chain::push`] and [`Chain::push_outer`], which
    /// keep the bounds below.
    #[allow(clippy::vec_box)] // boxed to be moved cheaply, as said above
    pub(super) frames: Vec<Box<Event>>,
    pub(super) deadline_ns: u64,
    /// Earliest known start and latest end over the frames (0 without frames): asked for
    /// at every event of the thread, kept rather than recomputed.
    start_ns: u64,
    end_ns: u64,
}

impl Chain {
    #[allow(clippy::vec_box)] // see `frames`
    pub(super) fn new(frames: Vec<Box<Event>>, deadline_ns: u64) -> Chain {
        let start_ns = frames.iter().map(|f| f.known_start_ns()).min().unwrap_or(0);
        let end_ns = frames.iter().map(|f| f.end_ns).max().unwrap_or(0);
        Chain {
            frames,
            deadline_ns,
            start_ns,
            end_ns,
        }
    }

    fn widen(&mut self, f: &Event) {
        if self.frames.is_empty() {
            self.start_ns = f.known_start_ns();
            self.end_ns = f.end_ns;
        } else {
            self.start_ns = self.start_ns.min(f.known_start_ns());
            self.end_ns = self.end_ns.max(f.end_ns);
        }
    }

    /// Adds a frame at the end (sort afterwards).
    fn push(&mut self, f: Box<Event>) {
        self.widen(&f);
        self.frames.push(f);
    }

    /// Adds a frame that is outside every frame already there (a lower depth): first, so the
    /// frames stay sorted.
    fn push_outer(&mut self, f: Box<Event>) {
        self.widen(&f);
        self.frames.insert(0, f);
    }

    pub(super) fn outer(&self) -> &Event {
        &self.frames[0]
    }

    fn outer_depth(&self) -> u8 {
        self.outer().probe.depth()
    }

    /// Start of the outermost frame, if its entry was seen.
    fn outer_start(&self) -> Option<u64> {
        let o = self.outer();
        (!o.entry_missing).then_some(o.start_ns)
    }

    /// Earliest known start (for containment tests of the whole chain).
    fn start(&self) -> u64 {
        self.start_ns
    }

    pub(super) fn end(&self) -> u64 {
        self.end_ns
    }

    fn sort(&mut self) {
        let key = |f: &Event| (f.probe.depth(), f.start_ns, f.end_ns);
        // Usually already in order (outer frames arrive last and are put first); a stable
        // sort of sorted input is the identity, so skip the moves.
        if !self.frames.is_sorted_by_key(|f| key(f)) {
            self.frames.sort_by_key(|f| key(f));
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct ThreadState {
    lru_seq: u64,
    last_seen_ns: u64,
    pub(super) pending: Vec<Chain>,
    recent: VecDeque<Key>,
    /// The latest return time among `recent`: an event that returned after it is not among
    /// them (a thread's calls return one after the other, so this is the common case).
    recent_max_end_ns: u64,
    /// Recently closed operations: (start, end, outer depth), to recognise late frames.
    closed: VecDeque<(u64, u64, u8)>,
}

/// Is `[s, e]` inside `[outer_start, outer_end]`? An unknown outer start contains anything
/// that ends before the outer end.
fn contains(outer_start: Option<u64>, outer_end: u64, s: u64, e: u64) -> bool {
    e <= outer_end && outer_start.is_none_or(|os| os <= s)
}

/// Do two calls of one thread overlap in time (neither ended before the other started)?
fn overlap(a: &Event, b: &Event) -> bool {
    a.known_start_ns() < b.end_ns && b.known_start_ns() < a.end_ns
}

/// Hands every element of `v` to `f`, in order, leaving `v` empty with its capacity: what
/// `drain(..)` does, without its cost for the one element these vectors usually hold.
fn take_each<T>(v: &mut Vec<T>, mut f: impl FnMut(T)) {
    if v.len() == 1 {
        if let Some(x) = v.pop() {
            f(x);
        }
    } else {
        v.drain(..).for_each(f);
    }
}

fn push_closed(ts: &mut ThreadState, c: &Chain) {
    if ts.closed.len() >= RECENT_OPS {
        ts.closed.pop_front();
    }
    ts.closed.push_back((c.start(), c.end(), c.outer_depth()));
}

impl Correlator {
    pub(super) fn frame_event(&mut self, ev: Box<Event>, now_ns: u64, out: &mut Vec<Output>) {
        let tid = ev.tid;
        if ev.entry_missing {
            self.anomaly(AnomalyKind::EntryMissing, Some(tid), None, out);
        }
        let mut to_close = std::mem::take(&mut self.scratch.to_close);
        self.touch_thread(tid, now_ns, &mut to_close, out);
        let window = self.cfg.reorder_window_ns;
        let pending_timeout = self.cfg.pending_timeout_ns.max(window);
        let max_pending = self.cfg.max_pending_per_thread;
        let Some(ts) = self.threads.get_mut(&tid) else {
            self.close_all(to_close, now_ns, out);
            return;
        };

        // Duplicates.
        let key = Key::of(&ev);
        if ev.end_ns <= ts.recent_max_end_ns && ts.recent.contains(&key) {
            self.close_all(to_close, now_ns, out);
            self.anomaly(
                AnomalyKind::DuplicateEvent,
                Some(tid),
                ev.device.clone(),
                out,
            );
            return;
        }
        if ts.recent.len() >= RECENT_KEYS {
            ts.recent.pop_front();
        }
        ts.recent.push_back(key);
        // Only grows: after a key leaves `recent`, a bound above the true maximum costs a
        // scan, never a missed duplicate.
        ts.recent_max_end_ns = ts.recent_max_end_ns.max(ev.end_ns);

        let depth = ev.probe.depth();
        let ev_start = (!ev.entry_missing).then_some(ev.start_ns);
        let ev_s = ev_start.unwrap_or(ev.end_ns);
        let ev_end = ev.end_ns;

        // A frame of an operation already closed: too late.
        if ts
            .closed
            .iter()
            .any(|&(s, e, d)| d < depth && contains(Some(s), e, ev_s, ev_end))
        {
            self.close_all(to_close, now_ns, out);
            self.anomaly(AnomalyKind::LateFrame, Some(tid), ev.device.clone(), out);
            return;
        }

        // The thread's pending chains, split three ways; `pending` keeps its allocation and
        // receives what remains pending.
        let mut pending = std::mem::take(&mut ts.pending);
        self.pending_count -= pending.iter().map(|c| c.frames.len()).sum::<usize>();
        let mut absorbed = std::mem::take(&mut self.scratch.absorbed);
        let mut keep = std::mem::take(&mut self.scratch.keep);
        take_each(&mut pending, |chain| {
            if chain.outer_depth() > depth && contains(ev_start, ev_end, chain.start(), chain.end())
            {
                absorbed.push(chain);
            } else if window == 0
                && ev_start.is_some_and(|s| s > chain.end())
                && !(ev.probe.has_siblings() && chain.outer().probe.has_siblings())
            {
                // The thread moved on: nothing can contain that chain any more (unless both
                // are calls an unseen parent makes one after the other).
                to_close.push(chain);
            } else {
                keep.push(chain);
            }
        });
        if ev_start.is_none() && absorbed.len() > 1 {
            // Unknown start: only the latest deeper chain can be ours.
            absorbed.sort_by_key(Chain::end);
            let last = absorbed.pop();
            to_close.append(&mut absorbed);
            absorbed.extend(last);
        }

        let mut overlapping = false;
        // Out of order: an outer frame that arrived before this inner one.
        let host = if absorbed.is_empty() {
            keep.iter().position(|c| {
                c.outer_depth() < depth
                    && contains(c.outer_start(), c.outer().end_ns, ev_s, ev_end)
                    && c.frames.len() < MAX_CHAIN_FRAMES
            })
        } else {
            None
        };
        if let Some(i) = host {
            let host = &mut keep[i];
            overlapping = host
                .frames
                .iter()
                .any(|f| f.probe.depth() == depth && overlap(f, &ev));
            host.push(ev);
            host.sort();
        } else {
            let mut chain = match absorbed.pop() {
                // The common case: the call that contains the one chain pending. Every frame
                // there is deeper than it (absorbed above): first, the chain stays sorted.
                Some(mut c) if absorbed.is_empty() && c.frames.len() < MAX_CHAIN_FRAMES => {
                    c.push_outer(ev);
                    c
                }
                last => {
                    absorbed.extend(last);
                    let mut frames = self.scratch.frame_pool.pop().unwrap_or_default();
                    frames.push(ev);
                    let mut extra = Vec::new();
                    for c in absorbed.drain(..) {
                        let mut cf = c.frames;
                        for f in cf.drain(..) {
                            if frames.len() < MAX_CHAIN_FRAMES {
                                frames.push(f);
                            } else {
                                extra.push(f);
                            }
                        }
                        if self.scratch.frame_pool.len() < FRAME_POOL_MAX {
                            self.scratch.frame_pool.push(cf);
                        }
                    }
                    if !extra.is_empty() {
                        to_close.push(Chain::new(extra, 0));
                    }
                    let mut chain = Chain::new(frames, 0);
                    chain.sort();
                    chain
                }
            };
            // Sorted by depth, then start: two frames at one depth that overlap in time are
            // neighbours. (Siblings one after the other are normal: a disconnect unbinds every
            // function, connect runs the driver's probe, then its connect.)
            overlapping |= chain
                .frames
                .windows(2)
                .any(|w| w[0].probe.depth() == w[1].probe.depth() && overlap(&w[0], &w[1]));
            // Event time: how long after the chain's last return (not after its handling).
            chain.deadline_ns = if chain.outer().probe.is_root() {
                chain.end().saturating_add(window)
            } else {
                chain.end().saturating_add(pending_timeout)
            };
            keep.push(chain);
        }

        // Close outermost chains now unless a reorder window holds them.
        take_each(&mut keep, |c| {
            if window == 0 && c.outer().probe.is_root() {
                to_close.push(c);
            } else {
                pending.push(c);
            }
        });
        let mut overflow = 0;
        while pending.len() > max_pending {
            to_close.push(pending.remove(0));
            overflow += 1;
        }
        let next_due = pending.iter().map(|c| c.deadline_ns).min();
        self.pending_count += pending.iter().map(|c| c.frames.len()).sum::<usize>();
        ts.pending = pending;
        self.scratch.absorbed = absorbed;
        self.scratch.keep = keep;
        if let Some(d) = next_due {
            self.next_due_ns = self.next_due_ns.min(d);
        }
        for _ in 0..overflow {
            self.anomaly(AnomalyKind::PendingOverflow, Some(tid), None, out);
        }
        if overlapping {
            self.anomaly(AnomalyKind::OverlappingFrames, Some(tid), None, out);
        }
        self.close_all(to_close, now_ns, out);
    }

    /// Drops stale entries from the thread LRU queue once they outnumber the live ones
    /// (amortised constant time per event).
    fn compact_lru(&mut self) {
        if self.thread_lru.len() > 2 * self.threads.len() + 64 {
            let threads = &self.threads;
            self.thread_lru
                .retain(|(s, t)| threads.get(t).is_some_and(|ts| ts.lru_seq == *s));
        }
    }

    /// Creates or refreshes a thread's state; evicts the least recently seen thread if full.
    fn touch_thread(
        &mut self,
        tid: u32,
        now_ns: u64,
        to_close: &mut Vec<Chain>,
        out: &mut Vec<Output>,
    ) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(ts) = self.threads.get_mut(&tid) {
            let grew = match self.thread_lru.back_mut() {
                // Already the most recently seen (the frames of one operation come one after
                // the other): its entry stays last, renewed, rather than leaving a stale one.
                Some(last) if *last == (ts.lru_seq, tid) => {
                    *last = (seq, tid);
                    false
                }
                _ => {
                    self.thread_lru.push_back((seq, tid));
                    true
                }
            };
            ts.lru_seq = seq;
            ts.last_seen_ns = ts.last_seen_ns.max(now_ns);
            if grew {
                self.compact_lru();
            }
            return;
        }
        while self.threads.len() >= self.cfg.max_threads {
            let Some((s, old)) = self.thread_lru.pop_front() else {
                break;
            };
            if self.threads.get(&old).is_none_or(|t| t.lru_seq != s) {
                continue; // stale entry
            }
            if let Some(ots) = self.threads.remove(&old)
                && !ots.pending.is_empty()
            {
                self.pending_count -= ots.pending.iter().map(|c| c.frames.len()).sum::<usize>();
                to_close.extend(ots.pending);
                self.anomaly(AnomalyKind::ThreadEvicted, Some(old), None, out);
            }
        }
        self.threads.insert(
            tid,
            ThreadState {
                lru_seq: seq,
                last_seen_ns: now_ns,
                ..Default::default()
            },
        );
        self.thread_lru.push_back((seq, tid));
        self.compact_lru();
        self.next_due_ns = self
            .next_due_ns
            .min(now_ns.saturating_add(self.cfg.idle_thread_ns));
    }

    pub(super) fn expire(&mut self, now_ns: u64, all: bool, out: &mut Vec<Output>) {
        let mut to_close = std::mem::take(&mut self.scratch.to_close);
        let mut idle = Vec::new();
        let mut next_due = u64::MAX;
        let idle_ns = self.cfg.idle_thread_ns;
        let mut closed_frames = 0;
        for (tid, ts) in self.threads.iter_mut() {
            let first = to_close.len();
            let mut i = 0;
            while i < ts.pending.len() {
                if all || ts.pending[i].deadline_ns <= now_ns {
                    to_close.push(ts.pending.remove(i));
                } else {
                    i += 1;
                }
            }
            for c in &ts.pending {
                next_due = next_due.min(c.deadline_ns);
            }
            for c in &to_close[first..] {
                closed_frames += c.frames.len();
                push_closed(ts, c);
            }
            if ts.pending.is_empty() {
                let idle_at = ts.last_seen_ns.saturating_add(idle_ns);
                if all || idle_at <= now_ns {
                    idle.push(*tid);
                } else {
                    next_due = next_due.min(idle_at);
                }
            }
        }
        self.pending_count -= closed_frames;
        for tid in idle {
            // Its LRU entry goes stale and is skipped.
            self.threads.remove(&tid);
        }
        self.compact_lru();
        self.next_due_ns = next_due;
        self.close_in_time_order(to_close, now_ns, out);
        if all {
            // End of input: a check due by `now_ns` runs; one whose grace period has not
            // expired is not a leak (yet): counted, not reported.
            while let Some(c) = self.vm_checks.pop_front() {
                if c.deadline_ns <= now_ns {
                    let at = c.deadline_ns;
                    self.run_vm_check(&c, at, out);
                } else {
                    self.unconfirmed_vm_check(&c, out);
                }
            }
        }
    }

    /// Every thread's pending chains, for the state file (oldest thread activity first is
    /// not needed: chains are independent).
    pub(super) fn pending_chains(&self) -> Vec<super::state::PendingChain> {
        let mut v: Vec<_> = self
            .threads
            .iter()
            .flat_map(|(tid, t)| {
                t.pending.iter().map(|c| super::state::PendingChain {
                    tid: *tid,
                    deadline_ns: c.deadline_ns,
                    frames: c.frames.iter().map(|f| Event::clone(f)).collect(),
                })
            })
            .collect();
        v.sort_by_key(|p| (p.deadline_ns, p.tid));
        v
    }

    /// Puts a saved pending chain back (at start, before any event), within the limits.
    pub(super) fn restore_pending(&mut self, p: super::state::PendingChain) {
        if p.frames.is_empty() {
            return;
        }
        let mut to_close = Vec::new();
        let mut out = Vec::new();
        self.touch_thread(p.tid, p.deadline_ns, &mut to_close, &mut out);
        let max = self.cfg.max_pending_per_thread;
        if let Some(ts) = self.threads.get_mut(&p.tid)
            && ts.pending.len() < max
        {
            let mut frames: Vec<_> = p.frames.into_iter().map(Box::new).collect();
            frames.truncate(MAX_CHAIN_FRAMES);
            let mut chain = Chain::new(frames, p.deadline_ns);
            chain.sort();
            self.pending_count += chain.frames.len();
            self.next_due_ns = self.next_due_ns.min(chain.deadline_ns);
            ts.pending.push(chain);
        }
        // Restored in a fresh correlator: nothing was evicted to make room.
        debug_assert!(to_close.is_empty());
    }

    /// The end of the earliest chain still pending (on any thread).
    pub(super) fn earliest_pending_end(&self) -> u64 {
        self.threads
            .values()
            .flat_map(|t| t.pending.iter())
            .map(Chain::end)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Closes `chains`, reports the VM events that waited and runs the VM checks due by
    /// `now_ns`, in event-time order: a VM event or a check comes before a chain that ended
    /// after its time (it sees the bindings as they were then), and waits for every chain that
    /// ended before its time, pending or not. Gives the emptied vector back to the scratch
    /// buffers.
    fn close_in_time_order(&mut self, mut chains: Vec<Chain>, now_ns: u64, out: &mut Vec<Output>) {
        // Latest first: pop() takes the earliest.
        chains.sort_by_key(|c| std::cmp::Reverse((c.end(), c.outer().tid)));
        // Only worth a walk over the threads when a check is due or a VM event waits.
        let pending_end = if !self.deferred_points.is_empty()
            || self
                .vm_checks
                .front()
                .is_some_and(|c| c.deadline_ns <= now_ns)
        {
            self.earliest_pending_end()
        } else {
            u64::MAX
        };
        loop {
            if let Some(t) = self.deferred_points.front().map(|e| e.end_ns) {
                let next_chain = chains.last().map(Chain::end);
                // Free once no chain that ended before it is pending or about to close; and
                // always before a chain that ended after it closes (which is final).
                let free = t < pending_end && next_chain.is_none_or(|e| t <= e);
                let before_chain = next_chain.is_some_and(|e| t <= e);
                let check_first = self
                    .vm_checks
                    .front()
                    .is_some_and(|c| c.deadline_ns <= now_ns && c.deadline_ns < t.min(pending_end));
                if (free || before_chain) && !check_first {
                    if let Some(ev) = self.deferred_points.pop_front() {
                        self.apply_point(ev, now_ns, out);
                    }
                    continue;
                }
            }
            let check = self
                .vm_checks
                .front()
                .map(|c| c.deadline_ns)
                .filter(|&d| d <= now_ns && d < pending_end);
            let chain_end = chains.last().map(Chain::end);
            match (check, chain_end) {
                (Some(d), e) if e.is_none_or(|e| d < e) => {
                    if let Some(c) = self.vm_checks.pop_front() {
                        self.run_vm_check(&c, d, out);
                    }
                }
                (_, Some(_)) => {
                    if let Some(c) = chains.pop() {
                        self.close(c, now_ns, out);
                    }
                }
                _ => break,
            }
        }
        self.scratch.to_close = chains;
    }

    /// Closes `chains` (and gives the emptied vector back to the scratch buffers).
    fn close_all(&mut self, chains: Vec<Chain>, now_ns: u64, out: &mut Vec<Output>) {
        for c in &chains {
            if let Some(ts) = self.threads.get_mut(&c.outer().tid) {
                push_closed(ts, c);
            }
        }
        self.close_in_time_order(chains, now_ns, out);
    }

    /// Closes the pending chains of `tid` that ended before `t`: the thread has moved on (a
    /// point event of its own at `t`), nothing can contain them any more.
    pub(super) fn close_moved_on(&mut self, tid: u32, t: u64, now_ns: u64, out: &mut Vec<Output>) {
        let Some(ts) = self.threads.get_mut(&tid) else {
            return;
        };
        let mut to_close = std::mem::take(&mut self.scratch.to_close);
        let mut i = 0;
        while i < ts.pending.len() {
            if ts.pending[i].end() < t {
                let c = ts.pending.remove(i);
                self.pending_count -= c.frames.len();
                to_close.push(c);
            } else {
                i += 1;
            }
        }
        self.close_all(to_close, now_ns, out);
    }

    pub(super) fn pending_mentions(&self, device: &str) -> bool {
        self.threads.values().any(|t| {
            t.pending
                .iter()
                .any(|c| c.frames.iter().any(|f| f.device.as_deref() == Some(device)))
        })
    }
}
