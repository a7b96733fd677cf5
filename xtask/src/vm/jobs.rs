//! A bounded pool for `vm-test`'s VM boots (`--jobs N`): one producer thread prepares work
//! in order (kernels one after another, so no two fixture builds or apt runs share a cache
//! folder at once) and feeds jobs to `jobs` workers; the calling thread receives the
//! producer's notes and the workers' results, in the order they happen, and is the only one
//! that handles them (so it alone prints: a run's output is printed whole, never interleaved
//! with another's).
//!
//! std threads only ([`std::thread::scope`]): a worker is a thread that mostly waits for qemu.

use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, Sender};

/// What [`run_pool`]'s handler receives.
pub enum Event<N, R> {
    /// Something the producer reported ([`Feed::note`]), in the order it was sent relative to
    /// its jobs: a note sent before a job is received before that job's result.
    Note(N),
    /// A worker's result.
    Done(R),
}

/// The producer's side of [`run_pool`].
pub struct Feed<N, J, R> {
    jobs: Sender<J>,
    events: Sender<Event<N, R>>,
}

impl<N, J, R> Feed<N, J, R> {
    /// Tell the handler something (e.g. "kernel prepared").
    pub fn note(&self, n: N) {
        // The handler only stops receiving once the pool ends (or it panicked): nothing to do.
        let _ = self.events.send(Event::Note(n));
    }

    /// Queue a job for the next free worker.
    pub fn job(&self, j: J) {
        let _ = self.jobs.send(j);
    }
}

/// Runs `produce` on its own thread and every job it queues through `work` on at most `jobs`
/// threads at a time (at least one); `handle` runs on the calling thread for every note and
/// result as it arrives. Returns once the producer has finished and every job has been
/// handled.
pub fn run_pool<N, J, R>(
    jobs: usize,
    produce: impl FnOnce(&Feed<N, J, R>) + Send,
    work: impl Fn(J) -> R + Sync,
    mut handle: impl FnMut(Event<N, R>),
) where
    N: Send,
    J: Send,
    R: Send,
{
    let (job_tx, job_rx) = mpsc::channel::<J>();
    let (ev_tx, ev_rx) = mpsc::channel::<Event<N, R>>();
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|s| {
        let feed = Feed {
            jobs: job_tx,
            events: ev_tx.clone(),
        };
        s.spawn(move || produce(&feed));
        for _ in 0..jobs.max(1) {
            let (ev_tx, job_rx, work) = (ev_tx.clone(), &job_rx, &work);
            s.spawn(move || {
                while let Some(j) = next_job(job_rx) {
                    if ev_tx.send(Event::Done(work(j))).is_err() {
                        // The handler is gone (it panicked): start no more work.
                        break;
                    }
                }
            });
        }
        // Only the producer and the workers hold senders now: the loop ends with them.
        drop(ev_tx);
        for ev in ev_rx {
            handle(ev);
        }
    });
}

/// The next queued job; None once the producer is done and the queue is empty.
fn next_job<J>(rx: &Mutex<Receiver<J>>) -> Option<J> {
    // A worker that panicked poisoned the lock while holding no job: the queue is still whole.
    let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
    rx.recv().ok()
}

/// `--jobs` when given, else `TSM_VM_JOBS`, else min(2, the host's available parallelism):
/// each qemu under single-threaded TCG keeps about one host core busy. Fails on 0 or a value
/// that is not a number.
pub fn resolve_jobs(flag: Option<usize>) -> anyhow::Result<usize> {
    let n = match flag {
        Some(n) => n,
        None => match std::env::var("TSM_VM_JOBS") {
            Ok(s) if !s.trim().is_empty() => s
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("TSM_VM_JOBS={s:?}: {e}"))?,
            _ => std::thread::available_parallelism().map_or(1, |n| n.get().min(2)),
        },
    };
    anyhow::ensure!(n >= 1, "--jobs (TSM_VM_JOBS) must be at least 1, not {n}");
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn bounded_every_job_once_notes_first() {
        for jobs in [1, 2, 3] {
            let running = AtomicUsize::new(0);
            let peak = AtomicUsize::new(0);
            let mut seen = Vec::new();
            let mut notes = Vec::new();
            run_pool(
                jobs,
                |f: &Feed<usize, (usize, usize), (usize, usize)>| {
                    for k in 0..3 {
                        f.note(k);
                        for r in 0..4 {
                            f.job((k, r));
                        }
                    }
                },
                |j| {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    running.fetch_sub(1, Ordering::SeqCst);
                    j
                },
                |ev| match ev {
                    Event::Note(k) => notes.push(k),
                    Event::Done((k, r)) => {
                        assert!(notes.contains(&k), "result of {k} before its note");
                        seen.push((k, r));
                    }
                },
            );
            seen.sort();
            let want: Vec<_> = (0..3).flat_map(|k| (0..4).map(move |r| (k, r))).collect();
            assert_eq!(seen, want);
            assert_eq!(notes, [0, 1, 2]);
            let peak = peak.load(Ordering::SeqCst);
            assert!(peak <= jobs, "{peak} jobs ran at once with --jobs {jobs}");
            if jobs > 1 {
                assert!(peak > 1, "--jobs {jobs} never ran two at once");
            }
        }
    }

    #[test]
    fn jobs_flag_wins_and_zero_fails() {
        assert_eq!(resolve_jobs(Some(3)).unwrap(), 3);
        assert!(resolve_jobs(Some(0)).is_err());
    }
}
