//! What a handler sees (`JobContext`), what it answers (`JobError`), and how an answer — or
//! a panic — becomes the `AttemptResult` sent to the coordinator.

use std::{
    any::Any,
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use switchyard_proto::v1::{
    Assignment, AttemptResult, HeldAttempt, JobFailure, Release, attempt_result::Outcome,
};
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;

use crate::progress::{self, ProgressError, Slot};

/// Which attempt of which job a message is about: its fencing token (workers.proto point 3).
/// The same attempt number may be handed out again, with a higher epoch, by a coordinator that
/// crashed and forgot it, so two attempts of one job with one number can run side by side on
/// one worker: they are told apart by the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct AttemptId {
    pub job_id: String,
    pub attempt: u32,
    /// The coordinator run that handed the attempt out; 0 from one that predates epochs.
    pub epoch: u64,
}

impl AttemptId {
    pub fn of(assignment: &Assignment) -> AttemptId {
        AttemptId {
            job_id: assignment.job_id.clone(),
            attempt: assignment.attempt,
            epoch: assignment.epoch,
        }
    }

    /// Whether the coordinator means this attempt when it names `job_id`'s `attempt` of
    /// `epoch` (in a cancel or an adoption). One from before epochs sends 0: it names the
    /// attempt by its number alone.
    pub fn is_named_by(&self, job_id: &str, attempt: u32, epoch: u64) -> bool {
        self.job_id == job_id && self.attempt == attempt && (epoch == 0 || epoch == self.epoch)
    }

    /// This attempt as a reconnecting hello presents it.
    pub fn held(self, finished: bool) -> HeldAttempt {
        HeldAttempt {
            job_id: self.job_id,
            attempt: self.attempt,
            finished,
            epoch: self.epoch,
        }
    }

    /// Gives this attempt back (drain).
    pub fn release(self) -> Release {
        Release {
            job_id: self.job_id,
            attempt: self.attempt,
            epoch: self.epoch,
        }
    }
}

impl From<&HeldAttempt> for AttemptId {
    fn from(held: &HeldAttempt) -> Self {
        AttemptId {
            job_id: held.job_id.clone(),
            attempt: held.attempt,
            epoch: held.epoch,
        }
    }
}

impl From<&AttemptResult> for AttemptId {
    fn from(result: &AttemptResult) -> Self {
        AttemptId {
            job_id: result.job_id.clone(),
            attempt: result.attempt,
            epoch: result.epoch,
        }
    }
}

/// One attempt of one job, as its handler sees it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobContext {
    pub job_id: String,
    /// The fencing number of this attempt (1 for the first).
    pub attempt: u32,
    pub max_attempts: u32,
    pub queue: String,
    pub kind: String,
    /// The job's payload; for a job submitted with no payload and exactly one dependency, that
    /// dependency's output.
    pub payload: Vec<u8>,
    /// When the job must be done by; the cancellation token fires then.
    pub deadline: Option<SystemTime>,
    pub labels: HashMap<String, String>,
    /// Outputs of the jobs this one depended on, by job id.
    pub dependency_outputs: HashMap<String, Vec<u8>>,
    /// The group the job belongs to (empty: none).
    pub group_id: String,
    /// The tenant whose quotas apply (empty: none).
    pub tenant_id: String,
    /// W3C trace context of the submitter (empty: none).
    pub traceparent: String,
    pub tracestate: String,
    /// Fires when the handler should stop: the job was cancelled, its deadline passed, the
    /// stream to the coordinator was lost, or the worker's drain grace ran out.
    pub cancellation: CancellationToken,
    /// The worker's connection to the coordinator, for calls made on this job's behalf.
    coordinator: Option<switchyard_client::Client>,
    /// The checkpoint an earlier attempt stored (see [`JobContext::last_checkpoint`]).
    checkpoint: Option<Vec<u8>>,
    /// This attempt's report waiting to be sent, and the worker's queue of such (none for a
    /// context made with [`JobContext::new`]: reports stay in the slot).
    progress: Arc<Slot>,
    reports: Option<progress::Queue>,
}

impl JobContext {
    /// A context for calling a handler directly (tests, tools): attempt 1 of 1 on queue
    /// `default`, no deadline, nothing else set.
    pub fn new(
        job_id: impl Into<String>,
        kind: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> JobContext {
        let job_id = job_id.into();
        JobContext {
            progress: Arc::new(Slot::new(AttemptId {
                job_id: job_id.clone(),
                attempt: 1,
                epoch: 0,
            })),
            job_id,
            attempt: 1,
            max_attempts: 1,
            queue: "default".to_owned(),
            kind: kind.into(),
            payload: payload.into(),
            deadline: None,
            labels: HashMap::new(),
            dependency_outputs: HashMap::new(),
            group_id: String::new(),
            tenant_id: String::new(),
            traceparent: String::new(),
            tracestate: String::new(),
            cancellation: CancellationToken::new(),
            coordinator: None,
            checkpoint: None,
            reports: None,
        }
    }

    /// The context of an assignment, with its own cancellation token.
    pub(crate) fn from_assignment(
        assignment: Assignment,
        cancellation: CancellationToken,
        coordinator: Option<switchyard_client::Client>,
    ) -> Self {
        // Reports carry the whole fencing token; the handler needs no epoch of its own.
        let progress = Arc::new(Slot::new(AttemptId::of(&assignment)));
        let deadline = assignment
            .deadline
            .and_then(|ts| SystemTime::try_from(ts).ok());
        let mut payload = assignment.payload;
        // A pipeline stage with no payload of its own takes its single dependency's output
        // (the coordinator may have done so already; doing it again changes nothing).
        if payload.is_empty()
            && assignment.dependency_outputs.len() == 1
            && let Some(output) = assignment.dependency_outputs.values().next()
        {
            payload = output.clone();
        }
        JobContext {
            progress,
            reports: None,
            // On the wire, an empty checkpoint is none.
            checkpoint: (!assignment.checkpoint.is_empty()).then_some(assignment.checkpoint),
            job_id: assignment.job_id,
            attempt: assignment.attempt,
            max_attempts: assignment.max_attempts,
            queue: assignment.queue,
            kind: assignment.kind,
            payload,
            deadline,
            labels: assignment.labels,
            dependency_outputs: assignment.dependency_outputs,
            group_id: assignment.group_id,
            tenant_id: assignment.tenant_id,
            traceparent: assignment.traceparent,
            tracestate: assignment.tracestate,
            cancellation,
            coordinator,
        }
    }

    /// Sends this attempt's reports to the worker's stream.
    pub(crate) fn reporting_to(mut self, reports: progress::Queue) -> Self {
        self.reports = Some(reports);
        self
    }

    /// Reports how far the attempt has got: `fraction` from 0.0 to 1.0 and a short note (at
    /// most 1 KiB). Stored with the job (the latest report wins) and shown by `Get`. Never
    /// waits: a report goes out on the stream soon after, and one made while the worker is
    /// between streams is kept (the latest per attempt) until it reconnects. Out-of-range
    /// values are an error and send nothing.
    pub fn progress(&self, fraction: f64, message: impl Into<String>) -> Result<(), ProgressError> {
        let message = message.into();
        progress::check(Some(fraction), Some(&message), None)?;
        self.progress
            .put(Some(fraction), Some(message), None, self.reports.as_ref());
        Ok(())
    }

    /// Stores state to resume from (at most 1 MiB) with the job: if this attempt fails or is
    /// lost, the job's next attempt receives the last checkpoint stored in
    /// [`JobContext::last_checkpoint`]. Empty bytes remove the stored checkpoint. Sent as
    /// [`JobContext::progress`] is.
    pub fn checkpoint(&self, state: impl Into<Vec<u8>>) -> Result<(), ProgressError> {
        let state = state.into();
        progress::check(None, None, Some(&state))?;
        self.progress
            .put(None, None, Some(state), self.reports.as_ref());
        Ok(())
    }

    /// The checkpoint an earlier attempt of this job stored last, to resume from; `None` for
    /// a fresh start.
    pub fn last_checkpoint(&self) -> Option<&[u8]> {
        self.checkpoint.as_deref()
    }

    /// A client whose calls are made on this job's behalf: jobs it submits are this job's
    /// children (they get at most its deadline, join its trace, and are cancelled with it).
    pub fn client(&self) -> Result<switchyard_client::Client, JobError> {
        let coordinator = self
            .coordinator
            .as_ref()
            .ok_or_else(|| JobError::fatal("this context has no connection to a coordinator"))?;
        Ok(coordinator.child_of(switchyard_client::Parent {
            job_id: self.job_id.clone(),
            attempt: self.attempt,
            deadline: self.deadline,
            traceparent: self.traceparent.clone(),
            tracestate: self.tracestate.clone(),
            tenant_id: self.tenant_id.clone(),
        }))
    }

    /// Completes when the handler should stop (see [`JobContext::cancellation`]).
    pub async fn cancelled(&self) {
        self.cancellation.cancelled().await
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled()
    }

    /// Time left before the deadline (zero once it has passed), if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|deadline| {
            deadline
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        })
    }

    /// A request for a call made from inside the handler (say, submitting a child job): it
    /// carries this job as `x-switchyard-parent-job` and this attempt as
    /// `x-switchyard-parent-attempt` (the child is cancelled when this attempt ends other than
    /// in success, and refused once it has ended),
    /// the time left before the deadline as `grpc-timeout`, the submitter's trace context and
    /// the tenant.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(remaining) = self.remaining() {
            request.set_timeout(remaining);
        }
        let metadata = request.metadata_mut();
        let attempt = self.attempt.to_string();
        let pairs = [
            ("x-switchyard-parent-job", &self.job_id),
            ("x-switchyard-parent-attempt", &attempt),
            ("traceparent", &self.traceparent),
            ("tracestate", &self.tracestate),
            ("x-tenant-id", &self.tenant_id),
        ];
        for (key, value) in pairs {
            // A value that is not valid ASCII metadata is left out rather than failing the call.
            if let (false, Ok(value)) = (value.is_empty(), value.parse()) {
                metadata.insert(key, value);
            }
        }
        request
    }
}

/// Why a handler did not produce an output, and what should happen next. The coordinator
/// decides from it (and from the job's attempts left) whether the job runs again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Something that may work next time; `after` asks for at least that long before the next
    /// attempt (otherwise the job's backoff applies).
    #[error("{message}")]
    Retry {
        message: String,
        after: Option<Duration>,
    },
    /// It will never work: do not try again.
    #[error("{message}")]
    Fatal { message: String },
    /// The handler stopped because it was told to (cancel, deadline, shutdown).
    #[error("{message}")]
    Cancelled { message: String },
}

impl JobError {
    /// A retryable failure. Works with `map_err`: `.map_err(JobError::retry)`.
    pub fn retry(message: impl fmt::Display) -> JobError {
        JobError::Retry {
            message: message.to_string(),
            after: None,
        }
    }

    /// A retryable failure that should not be retried sooner than `after`.
    pub fn retry_after(message: impl fmt::Display, after: Duration) -> JobError {
        JobError::Retry {
            message: message.to_string(),
            after: Some(after),
        }
    }

    /// A failure not worth retrying.
    pub fn fatal(message: impl fmt::Display) -> JobError {
        JobError::Fatal {
            message: message.to_string(),
        }
    }

    /// The handler stopped because its cancellation token fired.
    pub fn cancelled(message: impl fmt::Display) -> JobError {
        JobError::Cancelled {
            message: message.to_string(),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            JobError::Retry { message, .. }
            | JobError::Fatal { message }
            | JobError::Cancelled { message } => message,
        }
    }

    fn into_failure(self) -> JobFailure {
        match self {
            JobError::Retry { message, after } => JobFailure {
                message,
                retryable: true,
                // A delay too large for the wire is sent as no delay: the backoff applies.
                retry_after: after.and_then(|after| after.try_into().ok()),
                cancelled: false,
            },
            JobError::Fatal { message } => JobFailure {
                message,
                retryable: false,
                retry_after: None,
                cancelled: false,
            },
            JobError::Cancelled { message } => JobFailure {
                message,
                retryable: false,
                retry_after: None,
                cancelled: true,
            },
        }
    }
}

/// What a handler returns.
pub type JobResult = Result<Vec<u8>, JobError>;

/// A handler's future, boxed.
pub type BoxJobFuture = Pin<Box<dyn Future<Output = JobResult> + Send + 'static>>;

/// A registered handler, type-erased.
pub(crate) type Handler = Arc<dyn Fn(JobContext) -> BoxJobFuture + Send + Sync + 'static>;

pub(crate) fn boxed<F, Fut>(handler: F) -> Handler
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = JobResult> + Send + 'static,
{
    Arc::new(move |ctx| Box::pin(handler(ctx)))
}

/// The result message for an attempt: the handler's answer, or its panic as a retryable
/// failure (the process lives on; the retry policy decides).
pub(crate) fn attempt_result(
    id: AttemptId,
    outcome: Result<JobResult, JoinError>,
) -> AttemptResult {
    let outcome = match outcome {
        Ok(Ok(output)) => Outcome::Output(output),
        Ok(Err(error)) => Outcome::Failure(error.into_failure()),
        Err(join) => Outcome::Failure(JobFailure {
            message: if join.is_panic() {
                format!("handler panicked: {}", panic_message(join.into_panic()))
            } else {
                "handler was aborted".to_owned()
            },
            retryable: true,
            retry_after: None,
            cancelled: false,
        }),
    };
    AttemptResult {
        job_id: id.job_id,
        attempt: id.attempt,
        epoch: id.epoch,
        outcome: Some(outcome),
    }
}

/// A result whose output is over `limit` bytes becomes a failure (not retried: the same
/// handler would make the same output), so that one large output cannot break the stream
/// that carries every other job's results.
pub(crate) fn fit(result: AttemptResult, limit: usize) -> AttemptResult {
    match &result.outcome {
        Some(Outcome::Output(output)) if output.len() > limit => {
            let message = format!(
                "its output of {} bytes is over the limit of {limit} bytes a result may carry",
                output.len()
            );
            AttemptResult {
                outcome: Some(Outcome::Failure(JobFailure {
                    message,
                    retryable: false,
                    retry_after: None,
                    cancelled: false,
                })),
                ..result
            }
        }
        _ => result,
    }
}

/// The failure sent for an assignment of a kind this worker has no handler for.
pub(crate) fn no_handler(id: AttemptId, kind: &str) -> AttemptResult {
    let error = JobError::fatal(format!("no handler for kind {kind}"));
    attempt_result(id, Ok(Err(error)))
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "(a panic without a message)".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(job_id: &str, attempt: u32, epoch: u64) -> AttemptId {
        AttemptId {
            job_id: job_id.into(),
            attempt,
            epoch,
        }
    }

    #[test]
    fn an_output_over_the_limit_fails_its_attempt_for_good() {
        let small = attempt_result(id("j", 1, 1), Ok(Ok(vec![0; 10])));
        assert_eq!(fit(small.clone(), 10), small);
        let large = fit(attempt_result(id("j", 1, 6), Ok(Ok(vec![0; 11]))), 10);
        assert_eq!(
            (large.attempt, large.epoch),
            (1, 6),
            "the failure keeps the token"
        );
        match large.outcome {
            Some(Outcome::Failure(f)) => {
                assert!(!f.retryable);
                assert!(f.message.contains("11 bytes"), "{}", f.message);
            }
            other => panic!("{other:?}"),
        }
    }

    fn failure(result: AttemptResult) -> JobFailure {
        match result.outcome {
            Some(Outcome::Failure(failure)) => failure,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn output_becomes_output() {
        let result = attempt_result(id("j", 3, 9), Ok(Ok(b"out".to_vec())));
        assert_eq!(result.job_id, "j");
        assert_eq!(result.attempt, 3);
        assert_eq!(result.epoch, 9, "the assignment's epoch goes back");
        assert_eq!(result.outcome, Some(Outcome::Output(b"out".to_vec())));
    }

    #[test]
    fn errors_say_what_happens_next() {
        let retry = failure(attempt_result(
            id("j", 1, 1),
            Ok(Err(JobError::retry_after("busy", Duration::from_secs(2)))),
        ));
        assert!(retry.retryable && !retry.cancelled);
        assert_eq!(retry.message, "busy");
        assert_eq!(
            retry.retry_after,
            Some(switchyard_proto::Duration {
                seconds: 2,
                nanos: 0
            })
        );

        let plain = failure(attempt_result(id("j", 1, 1), Ok(Err(JobError::retry("x")))));
        assert!(plain.retryable && plain.retry_after.is_none());

        let fatal = failure(attempt_result(
            id("j", 1, 1),
            Ok(Err(JobError::fatal("no"))),
        ));
        assert!(!fatal.retryable && !fatal.cancelled);

        let cancelled = failure(attempt_result(
            id("j", 1, 1),
            Ok(Err(JobError::cancelled("stop"))),
        ));
        assert!(!cancelled.retryable && cancelled.cancelled);
        assert_eq!(cancelled.message, "stop");
    }

    #[test]
    fn an_attempt_is_named_by_its_whole_token_or_by_number_without_an_epoch() {
        let running = id("j", 2, 5);
        assert!(running.is_named_by("j", 2, 5));
        assert!(!running.is_named_by("j", 2, 4), "another run's attempt 2");
        assert!(!running.is_named_by("j", 1, 5), "another attempt");
        assert!(!running.is_named_by("k", 2, 5), "another job");
        assert!(
            running.is_named_by("j", 2, 0),
            "a coordinator from before epochs"
        );
        assert!(!running.is_named_by("j", 3, 0));

        let held = running.clone().held(true);
        assert_eq!((held.attempt, held.epoch, held.finished), (2, 5, true));
        assert_eq!(AttemptId::from(&held), running);
        let release = running.clone().release();
        assert_eq!(
            (release.job_id.as_str(), release.attempt, release.epoch),
            ("j", 2, 5)
        );
        let result = attempt_result(running.clone(), Ok(Ok(vec![])));
        assert_eq!(AttemptId::from(&result), running);
    }

    #[test]
    fn unknown_kind_is_not_retried() {
        let result = no_handler(id("j", 1, 4), "nope");
        assert_eq!((result.attempt, result.epoch), (1, 4));
        let failure = failure(result);
        assert_eq!(failure.message, "no handler for kind nope");
        assert!(!failure.retryable);
    }

    #[tokio::test]
    async fn a_panic_is_a_retryable_failure() {
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async { panic!("boom {}", 42) });
        tasks.spawn(async { std::panic::panic_any(7_u8) });
        let mut messages = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let failure = failure(attempt_result(id("j", 1, 1), joined.map(|()| Ok(vec![]))));
            assert!(failure.retryable && !failure.cancelled);
            messages.push(failure.message);
        }
        messages.sort();
        assert_eq!(
            messages,
            [
                "handler panicked: (a panic without a message)",
                "handler panicked: boom 42"
            ]
        );
    }

    #[tokio::test]
    async fn context_cancellation() {
        let ctx = JobContext::new("j", "k", "p");
        assert!(!ctx.is_cancelled());
        let waiter = {
            let ctx = ctx.clone();
            tokio::spawn(async move { ctx.cancelled().await })
        };
        ctx.cancellation.cancel();
        assert!(ctx.is_cancelled());
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("cancelled() completes once the token fires")
            .expect("the waiter does not panic");
    }

    #[test]
    fn assignment_becomes_context() {
        let deadline = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let assignment = Assignment {
            job_id: "j".into(),
            attempt: 2,
            queue: "q".into(),
            kind: "echo".into(),
            payload: vec![],
            deadline: Some(deadline.into()),
            dependency_outputs: HashMap::from([("d".to_owned(), b"upstream".to_vec())]),
            labels: HashMap::from([("a".to_owned(), "b".to_owned())]),
            group_id: "g".into(),
            tenant_id: "t".into(),
            max_attempts: 5,
            ..Default::default()
        };
        let ctx = JobContext::from_assignment(assignment, CancellationToken::new(), None);
        assert_eq!(
            ctx.payload, b"upstream",
            "single dependency feeds an empty payload"
        );
        assert_eq!(ctx.deadline, Some(deadline));
        assert_eq!((ctx.attempt, ctx.max_attempts), (2, 5));
        assert_eq!((ctx.queue.as_str(), ctx.kind.as_str()), ("q", "echo"));
        assert_eq!(ctx.labels["a"], "b");
        assert_eq!((ctx.group_id.as_str(), ctx.tenant_id.as_str()), ("g", "t"));

        let own_payload = Assignment {
            payload: b"mine".to_vec(),
            dependency_outputs: HashMap::from([("d".to_owned(), b"upstream".to_vec())]),
            ..Default::default()
        };
        let ctx = JobContext::from_assignment(own_payload, CancellationToken::new(), None);
        assert_eq!(ctx.payload, b"mine");
    }

    #[test]
    fn progress_over_the_limits_is_refused_and_not_sent() {
        let ctx = JobContext::new("j", "k", "");
        for fraction in [-0.01, 1.01, f64::NAN, f64::INFINITY] {
            assert!(
                matches!(ctx.progress(fraction, "x"), Err(ProgressError::Fraction(_))),
                "{fraction}"
            );
        }
        assert_eq!(
            ctx.progress(0.5, "x".repeat(progress::MAX_PROGRESS_MESSAGE_BYTES + 1)),
            Err(ProgressError::MessageTooLong {
                len: progress::MAX_PROGRESS_MESSAGE_BYTES + 1
            })
        );
        assert_eq!(
            ctx.checkpoint(vec![0; progress::MAX_CHECKPOINT_BYTES + 1]),
            Err(ProgressError::CheckpointTooLarge {
                len: progress::MAX_CHECKPOINT_BYTES + 1
            })
        );
        assert_eq!(ctx.progress.waiting(), None, "nothing refused is kept");
        // At the limits, it goes.
        ctx.progress(1.0, "x".repeat(progress::MAX_PROGRESS_MESSAGE_BYTES))
            .expect("a fraction of 1 and a message of 1 KiB");
        ctx.checkpoint(vec![7; progress::MAX_CHECKPOINT_BYTES])
            .expect("a checkpoint of 1 MiB");
        let waiting = ctx.progress.waiting().expect("a report waits");
        assert_eq!(waiting.fraction, Some(1.0));
        assert_eq!(
            waiting.checkpoint.map(|c| c.len()),
            Some(progress::MAX_CHECKPOINT_BYTES)
        );
        // A refused report is an error a handler can `?` into a failure not retried.
        let error: JobError = ProgressError::Fraction(2.0).into();
        assert!(matches!(error, JobError::Fatal { .. }), "{error:?}");
    }

    #[test]
    fn an_attempt_queues_one_report_however_often_it_reports() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let assignment = Assignment {
            job_id: "j".into(),
            attempt: 3,
            epoch: 12,
            ..Default::default()
        };
        let ctx = JobContext::from_assignment(assignment, CancellationToken::new(), None)
            .reporting_to(tx);
        ctx.checkpoint(b"c1".to_vec()).expect("checkpoint");
        for i in 1..=100 {
            ctx.progress(f64::from(i) / 100.0, format!("{i}"))
                .expect("progress");
        }
        let slot = rx.try_recv().expect("the attempt's slot is queued");
        assert!(rx.try_recv().is_err(), "queued once");
        let sent = slot.take().expect("a report");
        assert_eq!(
            (sent.job_id.as_str(), sent.attempt, sent.epoch),
            ("j", 3, 12),
            "a report carries the assignment's whole token"
        );
        assert_eq!(sent.fraction, Some(1.0));
        assert_eq!(sent.message.as_deref(), Some("100"));
        assert_eq!(
            sent.checkpoint.as_deref(),
            Some(&b"c1"[..]),
            "kept under later reports"
        );
        // Taken: the next report queues the slot again.
        ctx.progress(0.5, "again").expect("progress");
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn an_assignment_brings_its_checkpoint() {
        let resumed = Assignment {
            checkpoint: b"step 4".to_vec(),
            ..Default::default()
        };
        let ctx = JobContext::from_assignment(resumed, CancellationToken::new(), None);
        assert_eq!(ctx.last_checkpoint(), Some(&b"step 4"[..]));
        let fresh =
            JobContext::from_assignment(Assignment::default(), CancellationToken::new(), None);
        assert_eq!(fresh.last_checkpoint(), None);
    }

    #[test]
    fn child_requests_carry_the_parent() {
        let mut ctx = JobContext::new("job-1", "k", "");
        ctx.tenant_id = "acme".into();
        ctx.deadline = Some(SystemTime::now() + Duration::from_secs(60));
        let request = ctx.request(());
        let metadata = request.metadata();
        assert_eq!(
            metadata
                .get("x-switchyard-parent-job")
                .and_then(|v| v.to_str().ok()),
            Some("job-1")
        );
        assert_eq!(
            metadata
                .get("x-switchyard-parent-attempt")
                .and_then(|v| v.to_str().ok()),
            Some("1"),
            "late children of an ended attempt can be refused"
        );
        assert_eq!(
            metadata.get("x-tenant-id").and_then(|v| v.to_str().ok()),
            Some("acme")
        );
        assert!(metadata.get("grpc-timeout").is_some());
        assert!(metadata.get("traceparent").is_none());
    }
}
