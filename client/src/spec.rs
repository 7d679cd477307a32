//! Typed builders for a job and a batch.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use switchyard_proto::v1::{SubmitBatchRequest, SubmitRequest};

/// One job to submit: `JobSpec::new(queue, kind)` and then what else it needs.
#[derive(Debug, Clone, Default)]
pub struct JobSpec {
    request: SubmitRequest,
}

impl JobSpec {
    pub fn new(queue: impl Into<String>, kind: impl Into<String>) -> JobSpec {
        JobSpec {
            request: SubmitRequest {
                queue: queue.into(),
                kind: kind.into(),
                ..Default::default()
            },
        }
    }

    /// The payload as it will be sent.
    pub fn payload_bytes(&self) -> &[u8] {
        &self.request.payload
    }

    /// The handler's input (at most 1 MiB).
    pub fn payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.request.payload = payload.into();
        self
    }

    /// Higher runs first (-1000..=1000).
    pub fn priority(mut self, priority: i32) -> Self {
        self.request.priority = priority;
        self
    }

    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.request.max_attempts = Some(attempts);
        self
    }

    /// Per-attempt timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.request.timeout = prost_types::Duration::try_from(timeout).ok();
        self
    }

    pub fn deadline(mut self, deadline: SystemTime) -> Self {
        self.request.deadline = Some(deadline.into());
        self
    }

    /// Do not run before this time.
    pub fn run_at(mut self, at: SystemTime) -> Self {
        self.request.run_at = Some(at.into());
        self
    }

    /// Submitting the same key to the same queue again returns the first job.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.request.idempotency_key = key.into();
        self
    }

    /// With an idempotency key: the key binds only this long after the first submit; a repeat
    /// later makes a new job.
    pub fn unique_for(mut self, window: std::time::Duration) -> Self {
        self.request.unique_for = window.try_into().ok();
        self
    }

    /// With an idempotency key: how long the coordinator remembers it after the first submit
    /// (unset: the coordinator's `--idempotency-ttl`); a repeat later makes a new job.
    pub fn idempotency_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.request.idempotency_ttl = ttl.try_into().ok();
        self
    }

    /// With an idempotency key: the key binds only while its job is queued or running.
    pub fn unique_while_active(mut self) -> Self {
        self.request.unique_while_active = true;
        self
    }

    /// With an idempotency key: a repeat that finds its job still queued gives it this
    /// payload (the last submit's payload runs).
    pub fn debounce(mut self) -> Self {
        self.request.debounce = true;
        self
    }

    pub fn concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.request.concurrency_key = key.into();
        self
    }

    pub fn weight(mut self, weight: u32) -> Self {
        self.request.weight = Some(weight);
        self
    }

    /// Run only after this job (an id, or the `reference` of a job in the same batch) succeeds.
    pub fn depends_on(mut self, job: impl Into<String>) -> Self {
        self.request.depends_on.push(job.into());
        self
    }

    /// Names this job inside a batch, for `depends_on`.
    pub fn reference(mut self, name: impl Into<String>) -> Self {
        self.request.r#ref = name.into();
        self
    }

    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.labels.insert(key.into(), value.into());
        self
    }

    pub fn labels(mut self, labels: HashMap<String, String>) -> Self {
        self.request.labels.extend(labels);
        self
    }

    /// The wire message, for callers that use the generated client directly.
    pub fn into_request(self) -> SubmitRequest {
        self.request
    }
}

/// Many jobs stored in one transaction, optionally as a group.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    request: SubmitBatchRequest,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn job(mut self, job: JobSpec) -> Self {
        self.request.jobs.push(job.into_request());
        self
    }

    pub fn jobs(mut self, jobs: impl IntoIterator<Item = JobSpec>) -> Self {
        self.request
            .jobs
            .extend(jobs.into_iter().map(JobSpec::into_request));
        self
    }

    /// Makes the batch a group with this id.
    pub fn group(mut self, group_id: impl Into<String>) -> Self {
        self.request.group_id = group_id.into();
        self
    }

    /// The group id, when the batch is a group.
    pub fn group_id(&self) -> Option<&str> {
        Some(self.request.group_id.as_str()).filter(|id| !id.is_empty())
    }

    /// errgroup: the first job that ends badly cancels the rest of the group.
    pub fn cancel_on_failure(mut self, yes: bool) -> Self {
        self.request.cancel_on_failure = yes;
        self
    }

    pub fn len(&self) -> usize {
        self.request.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.request.jobs.is_empty()
    }

    pub fn into_request(self) -> SubmitBatchRequest {
        self.request
    }
}
