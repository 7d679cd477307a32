//! Progress reports of a worker stream (workers.proto point 8) on their way to the store:
//! best effort, the latest value wins, and never in the way of the stream.
//!
//! Each session has one [`Reports`] and one writer task ([`Reports::start`]). The session hands
//! a report over without waiting; reports of one attempt that arrive while a write is under
//! way fold into one (the later fields win), and the writer stores whatever has gathered as
//! one store command. A write refused for a full write queue is kept (under anything newer)
//! and tried again a moment later; the session loop never waits on it. Before the session
//! forwards an attempt's result it waits, briefly, for that attempt's reports to be written:
//! the store fences progress by the attempt still RUNNING, so a report written after its
//! result would be ignored.

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use switchyard_proto::v1;
use tokio::sync::{Notify, watch};

use crate::{
    domain::{JobId, MAX_CHECKPOINT_BYTES, MAX_PROGRESS_MESSAGE_BYTES},
    error::Error,
    store::{ProgressReport, Store},
};

/// Attempts with reports not yet written, per session. Honest workers report for the attempts
/// they run (at most their slots); beyond this, reports for further attempts are dropped.
const MAX_PENDING: usize = 1024;
/// Checkpoint bytes not yet written, per session: a report that would pass it is dropped.
const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
/// After a write refused for a full write queue, how long before the next try.
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// How long a result waits at most for its attempt's reports to be written (a commit takes
/// milliseconds; longer means a store under load, and progress is best effort).
const RESULT_PATIENCE: Duration = Duration::from_secs(2);
/// How long a closing session waits for all of its reports to be written.
const CLOSE_PATIENCE: Duration = Duration::from_secs(2);

/// An attempt's fencing token: its job, number and epoch.
type Key = (JobId, u32, u64);

/// A session's reports on their way to the store. Dropping it closes them (the writer stores
/// what it holds and ends), so that a session that ends in any way lets its writer go.
pub(crate) struct Reports {
    shared: Arc<Shared>,
    /// How long a result waits for its attempt's reports (see [`Reports::written`]).
    result_patience: Duration,
}

impl Drop for Reports {
    fn drop(&mut self) {
        self.shared.close();
    }
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer: new reports, or closing.
    wake: Notify,
    /// Moves after every write (stored, ignored or dropped), for those waiting on one.
    written: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// Reports not yet handed to the store, one per attempt.
    waiting: HashMap<Key, ProgressReport>,
    /// Attempts whose reports the store is writing now.
    writing: HashSet<Key>,
    closed: bool,
}

impl State {
    fn holds(&self, key: &Key) -> bool {
        self.waiting.contains_key(key) || self.writing.contains(key)
    }

    fn idle(&self) -> bool {
        self.waiting.is_empty() && self.writing.is_empty()
    }

    /// Adds a report under those already waiting for its attempt: the later fields win. False
    /// (and nothing added) past the bounds.
    fn add(&mut self, report: ProgressReport) -> bool {
        let key = report.token();
        if let Some(checkpoint) = &report.checkpoint {
            let others: usize = self
                .waiting
                .iter()
                .filter(|(k, _)| **k != key)
                .filter_map(|(_, r)| r.checkpoint.as_ref().map(Vec::len))
                .sum();
            if others + checkpoint.len() > MAX_PENDING_BYTES {
                return false;
            }
        }
        let full = self.waiting.len() >= MAX_PENDING;
        match self.waiting.entry(key) {
            Entry::Occupied(mut waiting) => waiting.get_mut().merge(report),
            Entry::Vacant(_) if full => return false,
            Entry::Vacant(slot) => {
                slot.insert(report);
            }
        }
        true
    }

    /// Puts back a report whose write was refused, under whatever came for its attempt since.
    fn put_back(&mut self, mut report: ProgressReport) {
        let key = report.token();
        if let Some(newer) = self.waiting.remove(&key) {
            report.merge(newer);
        }
        self.waiting.insert(key, report);
    }
}

impl Reports {
    /// A session's reports, and the writer task that stores them (it ends once the session
    /// has closed its reports and they are written). `heartbeat` is the coordinator's own
    /// interval, which bounds how long a result may wait for its reports: the session loop
    /// sends no heartbeat meanwhile, and the worker gives up after three silent intervals.
    pub(crate) fn start(
        store: Arc<dyn Store>,
        session: u64,
        heartbeat: Duration,
    ) -> (Reports, impl Future<Output = ()> + Send + 'static) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            written: watch::Sender::new(0),
        });
        let reports = Reports {
            shared: shared.clone(),
            result_patience: RESULT_PATIENCE.min(heartbeat.saturating_mul(2)),
        };
        (reports, write(shared, store, session))
    }

    /// Hands over what the worker sent: checked (a report over the limits is dropped and
    /// logged, never an error of the stream) and queued for the writer.
    pub(crate) fn add(&self, session: u64, progress: v1::Progress) {
        let report = match checked(progress) {
            Ok(report) => report,
            Err((job, rule)) => {
                tracing::warn!(session, job.id = %job, rule, "ignoring a progress report");
                return;
            }
        };
        let key = report.token();
        if self.shared.lock().add(report) {
            self.shared.wake.notify_one();
        } else {
            tracing::warn!(
                session,
                job.id = %key.0,
                job.attempt = key.1,
                job.epoch = key.2,
                "ignoring a progress report: too many reports are waiting for the store"
            );
        }
    }

    /// Waits (at most two heartbeat intervals, and 2 s) until what was handed over for this
    /// attempt is written.
    pub(crate) async fn written(&self, key: Key) {
        self.wait(|state| !state.holds(&key), self.result_patience)
            .await;
    }

    /// No more reports: waits (at most a moment) for the writer to store what it holds.
    pub(crate) async fn close(&self) {
        self.shared.close();
        self.wait(State::idle, CLOSE_PATIENCE).await;
    }

    async fn wait(&self, done: impl Fn(&State) -> bool, patience: Duration) {
        // Subscribed before looking, so that a write in between is not missed.
        let mut written = self.shared.written.subscribe();
        let until = async {
            while !done(&self.shared.lock()) {
                if written.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(patience, until).await.is_err() {
            tracing::debug!(
                ?patience,
                "progress not written in time; going on without it"
            );
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is whole after any panic: a poisoned lock is still good.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// What the writer does next: write what has gathered (now marked as being written),
    /// wait for more, or end.
    fn next(&self) -> Next {
        let mut state = self.lock();
        if state.waiting.is_empty() {
            return if state.closed { Next::End } else { Next::Wait };
        }
        let batch: Vec<ProgressReport> = state.waiting.drain().map(|(_, r)| r).collect();
        state
            .writing
            .extend(batch.iter().map(ProgressReport::token));
        Next::Write(batch)
    }

    /// The writer is done with `keys`: tell whoever waits.
    fn done(&self, keys: &[Key]) {
        let mut state = self.lock();
        for key in keys {
            state.writing.remove(key);
        }
        drop(state);
        self.written.send_modify(|n| *n = n.wrapping_add(1));
    }
}

enum Next {
    Write(Vec<ProgressReport>),
    Wait,
    End,
}

/// The writer task: stores what has gathered, one command at a time, until closed and idle.
async fn write(shared: Arc<Shared>, store: Arc<dyn Store>, session: u64) {
    loop {
        let batch = match shared.next() {
            Next::Write(batch) => batch,
            Next::Wait => {
                shared.wake.notified().await;
                continue;
            }
            Next::End => {
                shared.done(&[]);
                return;
            }
        };
        let keys: Vec<Key> = batch.iter().map(ProgressReport::token).collect();
        // Kept for a retry if the write queue is full: the latest value must not be lost to a
        // busy moment.
        let written = store.progress(batch.clone()).await;
        let closed = shared.lock().closed;
        match written {
            Ok(done) => {
                if !done.ignored.is_empty() {
                    tracing::debug!(
                        session,
                        ignored = ?done.ignored,
                        "progress of attempts that are no longer current was ignored"
                    );
                }
            }
            Err(Error::Overloaded(_)) if !closed => {
                {
                    let mut state = shared.lock();
                    for report in batch {
                        state.put_back(report);
                    }
                }
                shared.done(&keys);
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
            Err(Error::ShuttingDown) => {
                shared.done(&keys);
                return;
            }
            Err(err) => {
                tracing::warn!(session, cause = %err, "progress reports not stored");
            }
        }
        shared.done(&keys);
    }
}

/// A report as the store takes it, or the job it named and the rule it broke.
fn checked(p: v1::Progress) -> Result<ProgressReport, (String, String)> {
    let Ok(job_id) = p.job_id.parse::<JobId>() else {
        return Err((p.job_id, "job_id is not a job id".into()));
    };
    let broke = |rule: String| Err((job_id.to_string(), rule));
    if let Some(fraction) = p.fraction
        && !(0.0..=1.0).contains(&fraction)
    {
        return broke(format!("fraction must be from 0 to 1, got {fraction}"));
    }
    if let Some(message) = &p.message
        && message.len() > MAX_PROGRESS_MESSAGE_BYTES
    {
        return broke(format!(
            "message of {} bytes is over the limit of {MAX_PROGRESS_MESSAGE_BYTES}",
            message.len()
        ));
    }
    if let Some(checkpoint) = &p.checkpoint
        && checkpoint.len() > MAX_CHECKPOINT_BYTES
    {
        return broke(format!(
            "checkpoint of {} bytes is over the limit of {MAX_CHECKPOINT_BYTES}",
            checkpoint.len()
        ));
    }
    Ok(ProgressReport {
        job_id,
        attempt: p.attempt,
        epoch: p.epoch,
        fraction: p.fraction,
        message: p.message,
        checkpoint: p.checkpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(job: JobId) -> v1::Progress {
        v1::Progress {
            job_id: job.to_string(),
            attempt: 1,
            ..Default::default()
        }
    }

    #[test]
    fn reports_over_the_limits_are_refused() {
        let job = JobId::new();
        assert!(checked(wire(job)).is_ok());
        for fraction in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let p = v1::Progress {
                fraction: Some(fraction),
                ..wire(job)
            };
            assert!(checked(p).is_err(), "{fraction}");
        }
        let edge = v1::Progress {
            fraction: Some(1.0),
            message: Some("x".repeat(MAX_PROGRESS_MESSAGE_BYTES)),
            checkpoint: Some(vec![0; MAX_CHECKPOINT_BYTES]),
            ..wire(job)
        };
        assert!(checked(edge).is_ok());
        let long = v1::Progress {
            message: Some("x".repeat(MAX_PROGRESS_MESSAGE_BYTES + 1)),
            ..wire(job)
        };
        assert!(checked(long).is_err());
        let large = v1::Progress {
            checkpoint: Some(vec![0; MAX_CHECKPOINT_BYTES + 1]),
            ..wire(job)
        };
        assert!(checked(large).is_err());
        let nobody = v1::Progress {
            job_id: "nobody".into(),
            ..wire(job)
        };
        assert!(checked(nobody).is_err());
    }

    /// Through a real store: a report handed over is written before `written` returns, and
    /// the writer ends when its session's reports are closed, or dropped.
    #[tokio::test]
    async fn the_writer_stores_what_it_is_handed_and_ends_with_its_session() {
        use crate::store::conformance::{new_job, sqlite, start, submit, transitions};

        let backend = sqlite().await;
        let store = backend.store.clone();
        let submitted = submit(&*store, vec![new_job("q")], None).await;
        let job = submitted[0].ready.clone().expect("ready");
        let id = job.id;
        store
            .transition(transitions(vec![], vec![start(&job)]))
            .await
            .expect("start");

        let (reports, writer) = Reports::start(store.clone(), 1, Duration::from_secs(30));
        let writer = tokio::spawn(writer);
        for i in 1..=10 {
            reports.add(
                1,
                v1::Progress {
                    fraction: Some(f64::from(i) / 10.0),
                    checkpoint: (i == 3).then(|| b"three".to_vec()),
                    ..wire(id)
                },
            );
        }
        reports.written((id, 1, 0)).await;
        let progress = store
            .get(id)
            .await
            .expect("get")
            .and_then(|job| job.progress)
            .expect("stored before `written` returned");
        assert_eq!(progress.fraction, Some(1.0));
        assert_eq!(progress.checkpoint.as_deref(), Some(&b"three"[..]));
        reports.close().await;
        tokio::time::timeout(Duration::from_secs(30), writer)
            .await
            .expect("the writer ends once closed")
            .expect("the writer does not panic");

        let (reports, writer) = Reports::start(store.clone(), 2, Duration::from_secs(30));
        let writer = tokio::spawn(writer);
        drop(reports);
        tokio::time::timeout(Duration::from_secs(30), writer)
            .await
            .expect("the writer ends once its reports are dropped")
            .expect("the writer does not panic");
        store.close().await.expect("close");
    }

    #[test]
    fn reports_of_one_attempt_fold_into_one_and_the_later_fields_win() {
        let job = JobId::new();
        let report = |fraction, message: Option<&str>, checkpoint: Option<&[u8]>| ProgressReport {
            job_id: job,
            attempt: 1,
            epoch: 0,
            fraction,
            message: message.map(str::to_owned),
            checkpoint: checkpoint.map(<[u8]>::to_vec),
        };
        let mut state = State::default();
        assert!(state.add(report(Some(0.1), Some("one"), Some(b"c1"))));
        assert!(state.add(report(Some(0.2), None, None)));
        assert_eq!(state.waiting.len(), 1);
        assert_eq!(
            state.waiting[&(job, 1, 0)],
            report(Some(0.2), Some("one"), Some(b"c1"))
        );
        // Checkpoints waiting are bounded in bytes, across attempts.
        let big = |attempt| ProgressReport {
            job_id: job,
            attempt,
            epoch: 0,
            fraction: None,
            message: None,
            checkpoint: Some(vec![0; MAX_PENDING_BYTES / 2]),
        };
        let mut bounded = State::default();
        assert!(bounded.add(big(1)) && bounded.add(big(2)));
        assert!(!bounded.add(big(3)), "past the bound");
        assert!(
            bounded.add(big(2)),
            "a newer one of an attempt replaces its own"
        );
        // A refused write goes back under what came since.
        let written = state.waiting.remove(&(job, 1, 0)).expect("waiting");
        assert!(state.add(report(None, Some("three"), None)));
        state.put_back(written);
        assert_eq!(
            state.waiting[&(job, 1, 0)],
            report(Some(0.2), Some("three"), Some(b"c1"))
        );
    }
}
