//! Between the wire and the domain: the only place (with the worker stream) where protobuf
//! messages are built from the coordinator's own types.

use switchyard_proto::v1;

use crate::{
    domain::{
        AttemptOutcome, AttemptRecord, Blocked, GroupEvent, GroupRecord, JobProgress, JobRecord,
        JobState, Misfire, Overlap, QueueCounts, Quota, ScheduleRecord, Timetable, WorkerView,
    },
    store::WriterStats,
};

pub(crate) fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub(crate) fn duration(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

pub(crate) fn state(state: JobState) -> v1::JobState {
    match state {
        JobState::Queued => v1::JobState::Queued,
        JobState::Running => v1::JobState::Running,
        JobState::Succeeded => v1::JobState::Succeeded,
        JobState::Failed => v1::JobState::Failed,
        JobState::Cancelled => v1::JobState::Cancelled,
        JobState::DeadlineExceeded => v1::JobState::DeadlineExceeded,
    }
}

/// A state a request names; `None` for `JOB_STATE_UNSPECIFIED` (any state).
pub(crate) fn state_from_wire(state: v1::JobState) -> Option<JobState> {
    match state {
        v1::JobState::Unspecified => None,
        v1::JobState::Queued => Some(JobState::Queued),
        v1::JobState::Running => Some(JobState::Running),
        v1::JobState::Succeeded => Some(JobState::Succeeded),
        v1::JobState::Failed => Some(JobState::Failed),
        v1::JobState::Cancelled => Some(JobState::Cancelled),
        v1::JobState::DeadlineExceeded => Some(JobState::DeadlineExceeded),
    }
}

fn outcome(outcome: AttemptOutcome) -> v1::AttemptOutcome {
    match outcome {
        AttemptOutcome::Running => v1::AttemptOutcome::Running,
        AttemptOutcome::Succeeded => v1::AttemptOutcome::Succeeded,
        AttemptOutcome::Failed => v1::AttemptOutcome::Failed,
        AttemptOutcome::Cancelled => v1::AttemptOutcome::Cancelled,
        AttemptOutcome::DeadlineExceeded => v1::AttemptOutcome::DeadlineExceeded,
        AttemptOutcome::Lost => v1::AttemptOutcome::Lost,
        AttemptOutcome::Released => v1::AttemptOutcome::Released,
        AttemptOutcome::Interrupted => v1::AttemptOutcome::Interrupted,
    }
}

fn attempt(a: AttemptRecord) -> v1::Attempt {
    v1::Attempt {
        number: a.number,
        worker_id: a.worker_id,
        started_at: Some(timestamp(a.started_at_ms)),
        finished_at: a.finished_at_ms.map(timestamp),
        outcome: outcome(a.outcome) as i32,
        error: a.error.unwrap_or_default(),
    }
}

pub(crate) fn job(job: JobRecord, blocked: Option<Blocked>) -> v1::Job {
    v1::Job {
        job_id: job.id.to_string(),
        queue: job.queue,
        kind: job.kind,
        payload: job.payload,
        priority: job.priority,
        max_attempts: job.max_attempts,
        timeout: job.timeout_ms.map(duration),
        deadline: job.deadline_ms.map(timestamp),
        run_at: job.run_at_ms.map(timestamp),
        idempotency_key: job.idempotency_key.unwrap_or_default(),
        concurrency_key: job.concurrency_key.unwrap_or_default(),
        weight: job.weight,
        depends_on: job.depends_on.iter().map(ToString::to_string).collect(),
        group_id: job.group_id.unwrap_or_default(),
        labels: job.labels.into_iter().collect(),
        state: state(job.state) as i32,
        attempt: job.attempt,
        output: job.output,
        error: job.error.unwrap_or_default(),
        created_at: Some(timestamp(job.created_at_ms)),
        started_at: job.started_at_ms.map(timestamp),
        finished_at: job.finished_at_ms.map(timestamp),
        worker_id: job.worker_id.unwrap_or_default(),
        trace_id: job.trace_id.unwrap_or_default(),
        blocked_on: blocked.map(blocked_on),
        attempts: job.attempts.into_iter().map(attempt).collect(),
        tenant_id: job.tenant_id.unwrap_or_default(),
        parent_job_id: job
            .parent_job_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        progress: job.progress.map(progress),
    }
}

fn progress(p: JobProgress) -> v1::JobProgress {
    v1::JobProgress {
        attempt: p.attempt,
        fraction: p.fraction,
        message: p.message.unwrap_or_default(),
        updated_at: Some(timestamp(p.updated_at_ms)),
        checkpoint: p.checkpoint.unwrap_or_default(),
    }
}

pub(crate) fn blocked_on(blocked: Blocked) -> v1::BlockedOn {
    use v1::BlockedReason as R;
    match blocked {
        Blocked::Ready => v1::BlockedOn {
            reason: R::Ready as i32,
            detail: "ready; waiting for a free worker slot".into(),
            ..Default::default()
        },
        Blocked::Scheduled { until_ms } => v1::BlockedOn {
            reason: R::Scheduled as i32,
            detail: "waiting for its run_at time".into(),
            until: Some(timestamp(until_ms)),
            ..Default::default()
        },
        Blocked::Permit {
            scope,
            held,
            limit,
            weight,
        } => v1::BlockedOn {
            reason: R::Permit as i32,
            detail: if weight > limit {
                format!(
                    "needs {weight} permits of {scope}, more than its limit of {limit}: it runs only if the limit is raised"
                )
            } else {
                format!("waiting for {weight} permits of {scope}: {held} of {limit} held")
            },
            scope,
            held,
            limit,
            ..Default::default()
        },
        Blocked::RateLimit { scope, until_ms } => v1::BlockedOn {
            reason: R::RateLimit as i32,
            detail: format!("waiting for a token of {scope}'s rate limit"),
            scope,
            until: Some(timestamp(until_ms)),
            ..Default::default()
        },
        Blocked::Dependencies { waiting_for, of } => v1::BlockedOn {
            reason: R::Dependencies as i32,
            detail: format!(
                "waiting for {} of its {of} dependencies to succeed",
                waiting_for.len()
            ),
            waiting_for: waiting_for.iter().map(ToString::to_string).collect(),
            ..Default::default()
        },
        Blocked::NoWorker { queue, kind } => v1::BlockedOn {
            reason: R::NoWorker as i32,
            detail: format!("no connected worker serves queue {queue:?} and kind {kind:?}"),
            ..Default::default()
        },
        Blocked::QueuePaused { queue } => v1::BlockedOn {
            reason: R::QueuePaused as i32,
            detail: format!("queue {queue:?} is paused"),
            ..Default::default()
        },
    }
}

pub(crate) fn group(g: GroupRecord) -> v1::Group {
    v1::Group {
        state: state(g.state()) as i32,
        group_id: g.id,
        size: g.size,
        cancel_on_failure: g.cancel_on_failure,
        queued: g.queued,
        running: g.running,
        succeeded: g.succeeded,
        failed: g.failed,
        cancelled: g.cancelled,
        deadline_exceeded: g.deadline_exceeded,
        error: g.error.unwrap_or_default(),
        failed_job_id: g.failed_job_id.map(|id| id.to_string()).unwrap_or_default(),
        created_at: Some(timestamp(g.created_at_ms)),
        tenant_id: g.tenant_id.unwrap_or_default(),
    }
}

pub(crate) fn job_result(e: GroupEvent) -> v1::JobResult {
    v1::JobResult {
        job_id: e.job_id.to_string(),
        state: state(e.state) as i32,
        output: e.output,
        error: e.error.unwrap_or_default(),
    }
}

pub(crate) fn quota(q: Quota, held: u32, queued: u64) -> v1::Quota {
    v1::Quota {
        scope: q.scope,
        max_in_flight: q.max_in_flight,
        max_queued: q.max_queued,
        rate_per_second: q.rate_per_second,
        burst: q.burst,
        held,
        queued,
        attempt_timeout: q.attempt_timeout_ms.map(duration),
    }
}

pub(crate) fn worker(w: WorkerView) -> v1::WorkerInfo {
    v1::WorkerInfo {
        worker_id: w.worker_id,
        queues: w.queues,
        kinds: w.kinds,
        slots: w.slots,
        running: w.running,
        connected_at: Some(timestamp(w.connected_at_ms)),
        peer: w.peer,
        last_heartbeat: Some(timestamp(w.last_heartbeat_ms)),
    }
}

pub(crate) fn queue_stats(q: QueueCounts) -> v1::QueueStats {
    v1::QueueStats {
        queue: q.queue,
        queued: q.queued,
        running: q.running,
        succeeded: q.succeeded,
        failed: q.failed,
        cancelled: q.cancelled,
        deadline_exceeded: q.deadline_exceeded,
        paused: false,
    }
}

pub(crate) fn store_stats(s: WriterStats) -> v1::StoreStats {
    v1::StoreStats {
        commits: s.commits,
        commands: s.commands,
        rows_written: s.rows_written,
        max_batch: s.max_batch,
        syncs: s.syncs,
    }
}

/// How many upcoming fire times `ListSchedules` shows.
const NEXT_RUNS: usize = 3;

pub(crate) fn schedule(record: ScheduleRecord, now_ms: i64) -> v1::Schedule {
    let s = record.schedule;
    let next_runs = match Timetable::parse("", &s.cron, &s.time_zone) {
        Ok(t) if !s.paused => t.upcoming(now_ms, NEXT_RUNS),
        _ => vec![],
    };
    let job = s.job;
    v1::Schedule {
        schedule_id: s.key.id,
        cron: s.cron,
        time_zone: s.time_zone,
        job: Some(v1::SubmitRequest {
            queue: job.queue,
            kind: job.kind,
            payload: job.payload,
            priority: job.priority,
            max_attempts: Some(job.max_attempts),
            timeout: job.timeout_ms.map(duration),
            concurrency_key: job.concurrency_key.unwrap_or_default(),
            weight: Some(job.weight),
            labels: job.labels.into_iter().collect(),
            ..Default::default()
        }),
        misfire: match s.misfire {
            Misfire::Skip => v1::MisfirePolicy::Skip,
            Misfire::RunOnce => v1::MisfirePolicy::RunOnce,
        } as i32,
        overlap: match s.overlap {
            Overlap::Skip => v1::OverlapPolicy::Skip,
            Overlap::Allow => v1::OverlapPolicy::Allow,
        } as i32,
        paused: s.paused,
        tenant_id: s.key.tenant,
        next_runs: next_runs.into_iter().map(timestamp).collect(),
        last_fired: record.last_fired_ms.map(timestamp),
        last_job_id: record
            .last_job_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        last_error: record.last_error.unwrap_or_default(),
        created_at: Some(timestamp(s.created_at_ms)),
    }
}
