//! How a handler's progress reports and checkpoints (`JobContext::progress`,
//! `JobContext::checkpoint`) reach the stream (workers.proto point 8) without ever blocking
//! the handler or growing without bound.
//!
//! Each attempt has one [`Slot`]: the report waiting to be sent, into which a newer one folds
//! (the later fields win), so an attempt holds at most one report however often it reports.
//! When a slot gets a report and is not queued yet, the context puts the slot on the worker's
//! bounded channel ([`Queue`]); the session loop takes reports out of the slots it receives and
//! sends them on the current stream. Between streams the slots keep the latest report of each
//! attempt, sent once a stream is up again (the coordinator ignores those of attempts that are
//! no longer current).

use std::sync::{Arc, Mutex, PoisonError};

use switchyard_proto::v1::Progress;
use tokio::sync::mpsc;

use crate::job::AttemptId;

/// The longest progress message, in bytes (the coordinator's limit as well).
pub const MAX_PROGRESS_MESSAGE_BYTES: usize = 1024;
/// The largest checkpoint, in bytes (the coordinator's limit as well).
pub const MAX_CHECKPOINT_BYTES: usize = 1024 * 1024;

/// A report the SDK refuses to send: it breaks a limit of the protocol.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ProgressError {
    #[error("progress fraction must be from 0 to 1, got {0}")]
    Fraction(f64),
    #[error("progress message of {len} bytes is over the limit of {MAX_PROGRESS_MESSAGE_BYTES}")]
    MessageTooLong { len: usize },
    #[error("checkpoint of {len} bytes is over the limit of {MAX_CHECKPOINT_BYTES}")]
    CheckpointTooLarge { len: usize },
}

/// A handler that sends a report it should not is a bug that a retry would repeat.
impl From<ProgressError> for crate::JobError {
    fn from(err: ProgressError) -> Self {
        crate::JobError::fatal(err)
    }
}

/// The worker's channel of slots with a report to send. Bounded: a slot is on it at most once
/// at a time, so it holds about one entry per running attempt.
pub(crate) type Queue = mpsc::Sender<Arc<Slot>>;

/// The report of one attempt waiting to be sent.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The attempt the reports are about: each carries its whole fencing token.
    id: AttemptId,
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    waiting: Option<Progress>,
    /// On the queue: the session loop will take `waiting`.
    queued: bool,
}

impl Slot {
    pub(crate) fn new(id: AttemptId) -> Slot {
        Slot {
            id,
            state: Mutex::new(SlotState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // A report is whole after any panic: a poisoned lock is still good.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Folds a report in and, if the slot is not queued yet, queues it. A full queue leaves
    /// the report in the slot, to go with the attempt's next one.
    pub(crate) fn put(
        self: &Arc<Self>,
        fraction: Option<f64>,
        message: Option<String>,
        checkpoint: Option<Vec<u8>>,
        queue: Option<&Queue>,
    ) {
        let mut state = self.lock();
        let waiting = state.waiting.get_or_insert_with(|| Progress {
            job_id: self.id.job_id.clone(),
            attempt: self.id.attempt,
            epoch: self.id.epoch,
            ..Default::default()
        });
        if fraction.is_some() {
            waiting.fraction = fraction;
        }
        if message.is_some() {
            waiting.message = message;
        }
        if checkpoint.is_some() {
            waiting.checkpoint = checkpoint;
        }
        if !state.queued
            && let Some(queue) = queue
        {
            state.queued = queue.try_send(self.clone()).is_ok();
        }
    }

    /// Takes the waiting report, for the stream.
    pub(crate) fn take(&self) -> Option<Progress> {
        let mut state = self.lock();
        state.queued = false;
        state.waiting.take()
    }

    /// The report waiting to be sent, left in place.
    pub(crate) fn waiting(&self) -> Option<Progress> {
        self.lock().waiting.clone()
    }

    /// Puts a slot taken off the queue (and not emptied) back on it; if there is no room, it
    /// is queued again by its attempt's next report.
    pub(crate) fn requeue(self: &Arc<Self>, queue: &Queue) {
        let mut state = self.lock();
        state.queued = queue.try_send(self.clone()).is_ok();
    }
}

/// Checks a report against the protocol's limits.
pub(crate) fn check(
    fraction: Option<f64>,
    message: Option<&str>,
    checkpoint: Option<&[u8]>,
) -> Result<(), ProgressError> {
    if let Some(fraction) = fraction
        && !(0.0..=1.0).contains(&fraction)
    {
        return Err(ProgressError::Fraction(fraction));
    }
    if let Some(message) = message
        && message.len() > MAX_PROGRESS_MESSAGE_BYTES
    {
        return Err(ProgressError::MessageTooLong { len: message.len() });
    }
    if let Some(checkpoint) = checkpoint
        && checkpoint.len() > MAX_CHECKPOINT_BYTES
    {
        return Err(ProgressError::CheckpointTooLarge {
            len: checkpoint.len(),
        });
    }
    Ok(())
}
