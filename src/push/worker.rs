//! The worker threads that make push's blocking HTTP calls, so the loop
//! never does: a small fixed pool fed by a bounded queue, handing each
//! outcome back through a channel and a `mio::Waker`.
//!
//! The loop only ever calls `try_send` on the queue, which never waits: a
//! full queue refuses the wake. The queue holds as many jobs as the
//! in-flight cap allows, so with the gate in front of it a refusal here
//! means something is off, not that the loop should wait. A worker that
//! finishes a job sends its outcome, then wakes the loop's poll; the loop
//! drains outcomes when the waker's token is readable.
//!
//! Shutdown: dropping the pool closes the queue; each worker ends after
//! its current call (each bounded by the HTTP timeout). Nothing joins the
//! workers, so dropping never blocks the loop.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::Instant;

use mio::{Registry, Token, Waker};

use super::admission::Refusal;
use super::courier::{Courier, Job};
use super::http::Cause;
use super::outcome::{Outcome, WakeResult};

/// The worker threads' end of things, owned by the loop.
pub(crate) struct Pool {
    jobs: SyncSender<Job>,
    outcomes: Receiver<Outcome>,
    waker: Arc<OnceLock<Arc<Waker>>>,
}

/// What each worker thread holds.
struct Worker {
    jobs: Arc<Mutex<Receiver<Job>>>,
    courier: Arc<Courier>,
    outcomes: Sender<Outcome>,
    waker: Arc<OnceLock<Arc<Waker>>>,
}

impl Pool {
    /// Starts `workers` threads (at least one) behind a queue of `capacity`.
    pub(crate) fn start(courier: Courier, workers: usize, capacity: usize) -> io::Result<Pool> {
        let (jobs, queue) = mpsc::sync_channel(capacity.max(1));
        let (outcome_sender, outcomes) = mpsc::channel();
        let queue = Arc::new(Mutex::new(queue));
        let courier = Arc::new(courier);
        let waker = Arc::new(OnceLock::new());
        for index in 0..workers.max(1) {
            let worker = Worker {
                jobs: Arc::clone(&queue),
                courier: Arc::clone(&courier),
                outcomes: outcome_sender.clone(),
                waker: Arc::clone(&waker),
            };
            thread::Builder::new()
                .name(format!("push-wake-{index}"))
                .spawn(move || worker.run())?;
        }
        Ok(Pool {
            jobs,
            outcomes,
            waker,
        })
    }

    /// Hands `job` to a worker without waiting.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Refusal> {
        self.jobs.try_send(job).map_err(|error| match error {
            TrySendError::Full(_) => Refusal::InFlightCap,
            TrySendError::Disconnected(_) => Refusal::WorkersGone,
        })
    }

    /// Makes finished outcomes wake `registry`'s poll with `token`.
    pub(crate) fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        self.use_waker(Arc::new(Waker::new(registry, token)?))
    }

    /// Makes finished outcomes wake the loop through `waker`, one the
    /// loop may share with other helpers (mio allows one per poll).
    pub(crate) fn use_waker(&self, waker: Arc<Waker>) -> io::Result<()> {
        let already = || io::Error::new(io::ErrorKind::AlreadyExists, "push waker already set");
        self.waker.set(waker).map_err(|_| already())?;
        // Outcomes that finished before this would wait for the next one.
        self.waker.get().map_or(Ok(()), |waker| waker.wake())
    }

    /// The next finished outcome, if any, without waiting.
    pub(crate) fn try_outcome(&self) -> Option<Outcome> {
        // Disconnected means every worker is gone: nothing to take either.
        self.outcomes.try_recv().ok()
    }
}

impl Worker {
    fn run(self) {
        while let Some(job) = self.next_job() {
            let started = Instant::now();
            let outcome = catch_unwind(AssertUnwindSafe(|| self.courier.deliver(&job)))
                .unwrap_or_else(|_| job.outcome(panicked(), started));
            drop(job);
            if self.outcomes.send(outcome).is_err() {
                return; // the loop dropped its Push
            }
            if let Some(waker) = self.waker.get() {
                let _ = waker.wake();
            }
        }
    }

    /// The next job, or `None` once the loop dropped its `Push`.
    fn next_job(&self) -> Option<Job> {
        let queue = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        queue.recv().ok()
    }
}

/// The outcome of a delivery that panicked, so the loop still gets one
/// outcome per admitted wake and its in-flight count stays right.
fn panicked() -> WakeResult {
    WakeResult::SendFailed {
        status: None,
        cause: Cause::Other,
        fcm_status: None,
        fcm_error: None,
    }
}
