//! What a finished attempt means for its job, decided the same way by every backend: the
//! backends read the job's current row into a [`Current`], ask these rules, and write what
//! they say in their own SQL.

use crate::domain::{JobId, JobState, Outcome, ReadyJob, RunningAttempt};

/// How close to a deadline a handler's own "I was cancelled" counts as that deadline (the
/// worker's timer may fire a little before ours).
pub(super) const DEADLINE_SLACK_MS: i64 = 1000;

/// The error of a queued job whose deadline passed before it could run.
pub(super) const EXPIRED_BEFORE_RUNNING: &str = "its deadline passed before it could run";

/// A running job's row, as a finish reads it.
#[derive(Debug, Clone)]
pub(super) struct Current {
    pub seq: i64,
    pub state: JobState,
    pub attempt: u32,
    pub failures: u32,
    pub max_attempts: u32,
    pub queue: String,
    pub kind: String,
    pub priority: i32,
    pub deadline_ms: Option<i64>,
    pub timeout_ms: Option<i64>,
    /// The timeout is the queue's default, not the job's own.
    pub queue_timeout: bool,
    pub started_at_ms: Option<i64>,
    pub weight: u32,
    pub tenant_id: Option<String>,
    pub concurrency_key: Option<String>,
}

impl Current {
    /// The job back in its queue, not before `run_at_ms`.
    pub(super) fn ready(&self, id: JobId, run_at_ms: i64) -> ReadyJob {
        ReadyJob {
            id,
            queue: self.queue.clone(),
            kind: self.kind.clone(),
            priority: self.priority,
            run_at_ms,
            seq: self.seq,
            deadline_ms: self.deadline_ms,
            weight: self.weight,
            tenant_id: self.tenant_id.clone(),
            concurrency_key: self.concurrency_key.clone(),
            attempt: self.attempt,
        }
    }

    /// What the worker reported, as it counts: a handler that stopped because its own timer
    /// fired is the job's deadline or the attempt's timeout, whichever it was; any other stop
    /// it chose is a cancellation.
    pub(super) fn outcome_of(&self, reported: &Outcome, now: i64) -> Outcome {
        let near = |at: Option<i64>| at.is_some_and(|at| now >= at - DEADLINE_SLACK_MS);
        match reported {
            Outcome::Failed {
                cancelled: true, ..
            } if near(self.deadline_ms) => Outcome::Expired,
            Outcome::Failed {
                cancelled: true, ..
            } if near(self.timeout_ms.zip(self.started_at_ms).map(|(t, s)| s + t)) => {
                Outcome::TimedOut
            }
            other => other.clone(),
        }
    }

    /// The error of an attempt that ran past its timeout.
    pub(super) fn timed_out(&self) -> String {
        format!(
            "attempt {} ran past {} of {} ms",
            self.attempt,
            if self.queue_timeout {
                "its queue's attempt timeout"
            } else {
                "its timeout"
            },
            self.timeout_ms.unwrap_or_default()
        )
    }
}

/// Children belong to the attempt that submitted them: one that ends other than in success
/// takes its unfinished children with it, whether or not the job runs again. Returns how the
/// parent's attempt ended, for the children's error, or `None` on success.
pub(super) fn ends_children(outcome: &Outcome) -> Option<&'static str> {
    match outcome {
        Outcome::Succeeded(_) => None,
        Outcome::Failed {
            cancelled: true, ..
        } => Some("CANCELLED"),
        Outcome::Failed { .. } => Some("FAILED"),
        Outcome::Lost(_) => Some("LOST"),
        Outcome::Released(_) => Some("RELEASED"),
        Outcome::Interrupted(_) => Some("INTERRUPTED"),
        Outcome::Expired => Some("DEADLINE_EXCEEDED"),
        Outcome::TimedOut => Some("TIMED_OUT"),
    }
}

/// The final error of a job that ran out of attempts: `boom (after 3 attempts)`.
pub(super) fn out_of_attempts(message: &str, failures: u32) -> String {
    let count = if failures == 1 {
        "1 attempt".to_owned()
    } else {
        format!("{failures} attempts")
    };
    format!("{message} (after {count})")
}

/// When an attempt must end: the sooner of the job's deadline and the attempt's timeout
/// (from its start), or neither.
pub(super) fn attempt_ends(
    deadline_ms: Option<i64>,
    started_at_ms: Option<i64>,
    timeout_ms: Option<i64>,
) -> Option<i64> {
    let timeout_ends = started_at_ms.zip(timeout_ms).map(|(s, t)| s + t);
    match (deadline_ms, timeout_ends) {
        (Some(d), Some(t)) => Some(d.min(t)),
        (d, t) => d.or(t),
    }
}

/// An attempt found running at start, from its job's row (read with the ready columns, so
/// `job.attempt` is the running attempt's number).
pub(super) fn recovered(
    job: ReadyJob,
    worker_id: Option<String>,
    epoch: u64,
    started_at_ms: Option<i64>,
    timeout_ms: Option<i64>,
) -> RunningAttempt {
    RunningAttempt {
        attempt: job.attempt,
        epoch,
        ends_ms: attempt_ends(job.deadline_ms, started_at_ms, timeout_ms),
        // As it was queued: its next attempt was this one.
        job: ReadyJob {
            attempt: job.attempt.saturating_sub(1),
            ..job
        },
        worker_id: worker_id.unwrap_or_default(),
    }
}
