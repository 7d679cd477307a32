//! Records of jobs, groups and quotas as the store keeps them and the scheduler uses them.
//! Times are Unix milliseconds (what is stored); durations are milliseconds.

use std::collections::BTreeMap;

use super::{AttemptOutcome, JobId, JobState};

/// Adds `n` to the field named after `state`, in a record with one count per state.
macro_rules! count_in {
    ($record:ident, $state:expr, $n:expr) => {
        match $state {
            JobState::Queued => $record.queued += $n,
            JobState::Running => $record.running += $n,
            JobState::Succeeded => $record.succeeded += $n,
            JobState::Failed => $record.failed += $n,
            JobState::Cancelled => $record.cancelled += $n,
            JobState::DeadlineExceeded => $record.deadline_exceeded += $n,
        }
    };
}

/// What the scheduler needs of a queued job: where it goes and in what order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyJob {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub priority: i32,
    /// Not before this time; 0 for "now".
    pub run_at_ms: i64,
    /// Submission order.
    pub seq: i64,
    /// When the whole job must be done.
    pub deadline_ms: Option<i64>,
    /// Permits it takes of each quota scope that applies to it.
    pub weight: u32,
    pub tenant_id: Option<String>,
    pub concurrency_key: Option<String>,
    /// Attempts started so far: its next attempt is number `attempt + 1`.
    pub attempt: u32,
}

impl ReadyJob {
    /// The quota scopes that apply to it.
    pub fn scopes(&self) -> Vec<String> {
        super::scopes(
            &self.queue,
            self.concurrency_key.as_deref(),
            self.tenant_id.as_deref(),
        )
    }
}

/// An attempt found running when the coordinator started: its worker may still hold it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningAttempt {
    /// The job as it was queued before this attempt (`job.attempt + 1 == attempt`).
    pub job: ReadyJob,
    pub attempt: u32,
    pub worker_id: String,
    /// The coordinator run that started it: with `attempt`, its fencing token.
    pub epoch: u64,
    /// When the attempt must end: the sooner of the job's deadline and its timeout.
    pub ends_ms: Option<i64>,
}

/// An attempt handed to a worker: everything its handler is told.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispatch {
    pub job_id: JobId,
    /// The fencing token: the attempt's number and the run that started it.
    pub attempt: u32,
    pub epoch: u64,
    pub queue: String,
    pub kind: String,
    pub payload: Vec<u8>,
    /// When the attempt must end: the sooner of the job's deadline and its timeout (its own,
    /// or else its queue's default attempt timeout).
    pub ends_ms: Option<i64>,
    pub traceparent: String,
    pub tracestate: String,
    /// Outputs of the jobs this one depended on.
    pub dependency_outputs: Vec<(JobId, Vec<u8>)>,
    pub labels: BTreeMap<String, String>,
    pub group_id: Option<String>,
    pub tenant_id: Option<String>,
    pub max_attempts: u32,
    /// The last checkpoint an earlier attempt stored, to resume from.
    pub checkpoint: Option<Vec<u8>>,
}

/// The longest progress message a report may carry, in bytes.
pub const MAX_PROGRESS_MESSAGE_BYTES: usize = 1024;
/// The largest checkpoint a report may carry, in bytes.
pub const MAX_CHECKPOINT_BYTES: usize = 1024 * 1024;

/// What a job's running attempts last reported (workers.proto point 8). Each field keeps its
/// last value until a report sets it again.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobProgress {
    /// The attempt that reported last.
    pub attempt: u32,
    /// 0.0 to 1.0.
    pub fraction: Option<f64>,
    pub message: Option<String>,
    pub updated_at_ms: i64,
    /// The last checkpoint stored (by this attempt or an earlier one). Filled by `get`, not
    /// by `list`: a page of jobs is bounded in bytes, and a checkpoint may be 1 MiB.
    pub checkpoint: Option<Vec<u8>>,
}

/// One attempt in a job's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub number: u32,
    pub worker_id: String,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
}

/// A job as the store records it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    /// Submission order (the page cursor of `List`).
    pub seq: i64,
    pub queue: String,
    pub kind: String,
    pub payload: Vec<u8>,
    pub priority: i32,
    pub max_attempts: u32,
    pub timeout_ms: Option<i64>,
    pub deadline_ms: Option<i64>,
    pub run_at_ms: Option<i64>,
    pub idempotency_key: Option<String>,
    pub concurrency_key: Option<String>,
    pub weight: u32,
    pub depends_on: Vec<JobId>,
    pub group_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub tenant_id: Option<String>,
    pub parent_job_id: Option<JobId>,
    pub trace_id: Option<String>,
    pub state: JobState,
    /// How many attempts have started (the current one's fencing number).
    pub attempt: u32,
    pub output: Vec<u8>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub worker_id: Option<String>,
    /// Filled by `get` (not by `list`).
    pub attempts: Vec<AttemptRecord>,
    /// For a queued job: its dependencies that have not succeeded yet, in submission order.
    pub waiting_for: Vec<JobId>,
    /// The latest progress its attempts reported, if any.
    pub progress: Option<JobProgress>,
}

/// Why a queued job is not running.
#[derive(Debug, Clone, PartialEq)]
pub enum Blocked {
    /// Ready; waiting for a free worker slot.
    Ready,
    /// Waiting for its `run_at` time or a retry backoff.
    Scheduled {
        until_ms: i64,
    },
    /// Waiting for `weight` permits of `scope`, of which `held` of `limit` are out.
    Permit {
        scope: String,
        held: u32,
        limit: u32,
        weight: u32,
    },
    /// Waiting for a token of `scope`'s rate limit, due at `until_ms`.
    RateLimit {
        scope: String,
        until_ms: i64,
    },
    /// Waiting for `waiting_for` (of its `of` dependencies) to succeed.
    Dependencies {
        waiting_for: Vec<JobId>,
        of: usize,
    },
    /// No connected worker serves its queue and kind.
    NoWorker {
        queue: String,
        kind: String,
    },
    QueuePaused {
        queue: String,
    },
}

/// A group with its jobs counted by state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupRecord {
    pub id: String,
    pub size: u32,
    pub cancel_on_failure: bool,
    pub created_at_ms: i64,
    pub tenant_id: Option<String>,
    /// errgroup: the first job that ended badly, and its error.
    pub failed_job_id: Option<JobId>,
    pub error: Option<String>,
    pub queued: u32,
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub cancelled: u32,
    pub deadline_exceeded: u32,
}

impl GroupRecord {
    /// RUNNING until every job has ended; then FAILED if one failed or ran out of time (or the
    /// errgroup recorded a failure), CANCELLED if any was cancelled, SUCCEEDED if all succeeded.
    pub fn state(&self) -> JobState {
        if self.queued + self.running > 0 {
            JobState::Running
        } else if self.failed + self.deadline_exceeded > 0 || self.error.is_some() {
            JobState::Failed
        } else if self.cancelled > 0 {
            JobState::Cancelled
        } else {
            JobState::Succeeded
        }
    }

    /// Counts one job in `state`.
    pub fn count(&mut self, state: JobState, n: u32) {
        count_in!(self, state, n);
    }
}

/// One job of a group that reached a terminal state; `cursor` orders them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEvent {
    pub cursor: i64,
    pub job_id: JobId,
    pub state: JobState,
    pub output: Vec<u8>,
    pub error: Option<String>,
}

/// Jobs of one queue counted by state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueCounts {
    pub queue: String,
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub deadline_exceeded: u64,
}

impl QueueCounts {
    pub fn count(&mut self, state: JobState, n: u64) {
        count_in!(self, state, n);
    }

    /// Rows of (queue, state, count), ordered by queue, as one `QueueCounts` per queue.
    pub fn fold(rows: impl IntoIterator<Item = (String, JobState, u64)>) -> Vec<QueueCounts> {
        let mut out: Vec<QueueCounts> = Vec::new();
        for (queue, state, n) in rows {
            match out.last_mut() {
                Some(last) if last.queue == queue => last.count(state, n),
                _ => {
                    let mut counts = QueueCounts {
                        queue,
                        ..Default::default()
                    };
                    counts.count(state, n);
                    out.push(counts);
                }
            }
        }
        out
    }
}

/// Limits of one scope (and a queue's default attempt timeout). A quota with nothing set
/// means none.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Quota {
    pub scope: String,
    pub max_in_flight: Option<u32>,
    pub max_queued: Option<u32>,
    pub rate_per_second: Option<f64>,
    pub burst: Option<u32>,
    /// For a `queue:` scope: how long an attempt of a job with no `timeout` of its own may
    /// run (ms).
    pub attempt_timeout_ms: Option<i64>,
}

impl Quota {
    pub fn is_empty(&self) -> bool {
        self.max_in_flight.is_none()
            && self.max_queued.is_none()
            && self.rate_per_second.is_none()
            && self.attempt_timeout_ms.is_none()
    }
}

/// A connected worker session, as `ListWorkers` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerView {
    pub worker_id: String,
    pub queues: Vec<String>,
    pub kinds: Vec<String>,
    pub slots: u32,
    /// Slots not given back: running handlers, including ones told to stop.
    pub running: u32,
    pub connected_at_ms: i64,
    pub peer: String,
    /// When its last heartbeat came (its connect, before the first).
    pub last_heartbeat_ms: i64,
}
