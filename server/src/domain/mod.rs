//! The coordinator's own model of jobs, attempts and their ends. The store and the scheduler
//! speak these types; protobuf messages exist only at the edges (`api/` and the worker
//! stream), which convert. The database keeps each state by its code here
//! ([`JobState::code`]), not by a protobuf number, so the wire contract and the schema can
//! change apart.

mod job;
pub mod schedule;

use std::{fmt, str::FromStr};

pub use job::{
    AttemptRecord, Blocked, Dispatch, GroupEvent, GroupRecord, JobProgress, JobRecord,
    MAX_CHECKPOINT_BYTES, MAX_PROGRESS_MESSAGE_BYTES, QueueCounts, Quota, ReadyJob, RunningAttempt,
    WorkerView,
};
pub use schedule::{
    JobTemplate, Misfire, NewSchedule, Overlap, ScheduleKey, ScheduleRecord, Timetable,
};

/// A job's id: a UUID (v7, so ids sort by creation time). Copy, 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(uuid::Uuid);

impl JobId {
    /// A fresh id.
    pub fn new() -> JobId {
        JobId(uuid::Uuid::now_v7())
    }
}

impl Default for JobId {
    fn default() -> Self {
        JobId::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Text that is not a job id this coordinator could have issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAJobId;

impl FromStr for JobId {
    type Err = NotAJobId;

    fn from_str(text: &str) -> Result<JobId, NotAJobId> {
        // Only the hyphenated form is issued; anything else names no job.
        if text.len() != 36 {
            return Err(NotAJobId);
        }
        uuid::Uuid::try_parse(text)
            .map(JobId)
            .map_err(|_| NotAJobId)
    }
}

/// Where a job is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Ready, or waiting for its time, a backoff, a permit or its dependencies.
    Queued,
    /// Leased to one worker.
    Running,
    Succeeded,
    /// Non-retryable, or out of attempts: the dead-letter set.
    Failed,
    Cancelled,
    DeadlineExceeded,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::DeadlineExceeded,
    ];

    /// How the database stores it: this mapping is the schema's, and never changes.
    pub const fn code(self) -> i64 {
        match self {
            JobState::Queued => 10,
            JobState::Running => 20,
            JobState::Succeeded => 30,
            JobState::Failed => 40,
            JobState::Cancelled => 50,
            JobState::DeadlineExceeded => 60,
        }
    }

    pub fn from_code(code: i64) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The name (the metrics label and the CLI's word).
    pub const fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::DeadlineExceeded => "deadline_exceeded",
        }
    }

    pub fn parse(text: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub const fn is_terminal(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }

    /// A bad end: its dependents can no longer run.
    pub const fn is_bad_end(self) -> bool {
        matches!(
            self,
            JobState::Failed | JobState::Cancelled | JobState::DeadlineExceeded
        )
    }

    /// The name as the wire spells it (`JOB_STATE_FAILED`), for messages people read.
    pub const fn wire_name(self) -> &'static str {
        match self {
            JobState::Queued => "JOB_STATE_QUEUED",
            JobState::Running => "JOB_STATE_RUNNING",
            JobState::Succeeded => "JOB_STATE_SUCCEEDED",
            JobState::Failed => "JOB_STATE_FAILED",
            JobState::Cancelled => "JOB_STATE_CANCELLED",
            JobState::DeadlineExceeded => "JOB_STATE_DEADLINE_EXCEEDED",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one attempt ended (or that it is still running).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    DeadlineExceeded,
    /// Its worker's stream or lease was lost; counts against `max_attempts`.
    Lost,
    /// Handed back by a draining worker; does not count.
    Released,
    /// The coordinator restarted while it ran; does not count.
    Interrupted,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 8] = [
        AttemptOutcome::Running,
        AttemptOutcome::Succeeded,
        AttemptOutcome::Failed,
        AttemptOutcome::Cancelled,
        AttemptOutcome::DeadlineExceeded,
        AttemptOutcome::Lost,
        AttemptOutcome::Released,
        AttemptOutcome::Interrupted,
    ];

    /// How the database stores it: this mapping is the schema's, and never changes.
    pub const fn code(self) -> i64 {
        match self {
            AttemptOutcome::Running => 10,
            AttemptOutcome::Succeeded => 20,
            AttemptOutcome::Failed => 30,
            AttemptOutcome::Cancelled => 40,
            AttemptOutcome::DeadlineExceeded => 50,
            AttemptOutcome::Lost => 60,
            AttemptOutcome::Released => 70,
            AttemptOutcome::Interrupted => 80,
        }
    }

    pub fn from_code(code: i64) -> Option<AttemptOutcome> {
        AttemptOutcome::ALL.into_iter().find(|o| o.code() == code)
    }

    /// The name (the metrics label).
    pub const fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Running => "running",
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::DeadlineExceeded => "deadline_exceeded",
            AttemptOutcome::Lost => "lost",
            AttemptOutcome::Released => "released",
            AttemptOutcome::Interrupted => "interrupted",
        }
    }

    pub fn parse(text: &str) -> Option<AttemptOutcome> {
        AttemptOutcome::ALL.into_iter().find(|o| o.as_str() == text)
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a worker (or the coordinator) says of an attempt that ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded(Vec<u8>),
    Failed {
        message: String,
        retryable: bool,
        retry_after_ms: Option<i64>,
        /// The handler stopped because it was told to.
        cancelled: bool,
    },
    /// Its worker's stream died or its lease ran out: counts as a failed attempt.
    Lost(String),
    /// Handed back by a draining worker: does not count.
    Released(String),
    /// Running when the coordinator restarted, and not reclaimed by its worker within the
    /// reclaim window: does not count.
    Interrupted(String),
    /// The job's deadline passed while it ran: the job ends `DEADLINE_EXCEEDED`.
    Expired,
    /// The attempt ran past its `timeout`: a retryable failure.
    TimedOut,
}

/// A quota scope: `queue:<name>`, `key:<concurrency_key>`, `tenant:<id>`. Scopes are kept as
/// their text, which is what quotas are keyed by on the wire and in the database.
pub fn scopes(queue: &str, concurrency_key: Option<&str>, tenant: Option<&str>) -> Vec<String> {
    let mut scopes = vec![format!("queue:{queue}")];
    if let Some(key) = concurrency_key {
        scopes.push(format!("key:{key}"));
    }
    if let Some(tenant) = tenant {
        scopes.push(format!("tenant:{tenant}"));
    }
    scopes
}

/// Milliseconds since the Unix epoch, now: for what is stored or shown. Timers use
/// `tokio::time` instead (see the scheduler's `timers`).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_outcomes_round_trip_through_their_codes_and_names() {
        for state in JobState::ALL {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
            assert_eq!(JobState::from_code(state.code()), Some(state));
            // The triggers in the schema count on it.
            assert_eq!(state.is_terminal(), state.code() >= 30);
        }
        for outcome in AttemptOutcome::ALL {
            assert_eq!(AttemptOutcome::parse(outcome.as_str()), Some(outcome));
            assert_eq!(AttemptOutcome::from_code(outcome.code()), Some(outcome));
        }
        assert_eq!(JobState::parse("1"), None);
    }

    #[test]
    fn job_ids_parse_only_in_the_form_they_are_issued() {
        let id = JobId::new();
        assert_eq!(id.to_string().parse::<JobId>(), Ok(id));
        assert!("nope".parse::<JobId>().is_err());
        assert!(id.to_string().replace('-', "").parse::<JobId>().is_err());
        assert!("".parse::<JobId>().is_err());
    }
}
