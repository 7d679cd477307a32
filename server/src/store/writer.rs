//! The writer thread: the only code that writes to the database.
//!
//! It blocks for one command, takes every other command already waiting (up to
//! [`MAX_BATCH`]), applies each inside its own savepoint (one bad command does not spoil the
//! others) and commits them all in one `BEGIN IMMEDIATE` transaction. Replies go out only after
//! the commit: an acknowledged write is durable.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Instant,
};

use rusqlite::{Connection, OptionalExtension, params};
use switchyard_proto::v1::{self, JobState};
use tokio::sync::{mpsc, oneshot};

use super::{
    CancelTarget, Cancelled, NewGroup, NewJob, ReadyJob, Submitted, TransitionOutcome, Transitions,
    WriterCounters, lifecycle, now_ms,
};
use crate::{
    domain,
    error::{Error, Result},
    telemetry::{Metrics, Tally},
};

/// The most commands one transaction carries.
const MAX_BATCH: usize = 2048;

pub(crate) enum Command {
    Submit {
        origin: Origin,
        jobs: Vec<NewJob>,
        group: Option<NewGroup>,
        reply: oneshot::Sender<Result<Vec<Submitted>>>,
    },
    Cancel {
        target: CancelTarget,
        reason: String,
        reply: oneshot::Sender<Result<Cancelled>>,
    },
    Transition {
        ops: Transitions,
        reply: oneshot::Sender<Result<TransitionOutcome>>,
    },
    Requeue {
        job_id: String,
        max_attempts: Option<u32>,
        reply: oneshot::Sender<Result<Option<ReadyJob>>>,
    },
    Admin {
        op: AdminOp,
        reply: oneshot::Sender<Result<()>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// Run-time control, persisted.
#[derive(Debug, Clone)]
pub enum AdminOp {
    SetQuota(v1::Quota),
    Pause { queue: String, paused: bool },
}

/// A command's result, held until its transaction commits.
enum Pending {
    Submit(
        oneshot::Sender<Result<Vec<Submitted>>>,
        Result<Vec<Submitted>>,
    ),
    Cancel(oneshot::Sender<Result<Cancelled>>, Result<Cancelled>),
    Transition(
        oneshot::Sender<Result<TransitionOutcome>>,
        Result<TransitionOutcome>,
    ),
    Requeue(
        oneshot::Sender<Result<Option<ReadyJob>>>,
        Result<Option<ReadyJob>>,
    ),
    Admin(oneshot::Sender<Result<()>>, Result<()>),
    Close(oneshot::Sender<()>),
}

impl Pending {
    /// Sends the result; if the commit failed, every command of the batch fails with it.
    fn send(self, commit: &Result<(), String>) {
        let fail = |err: &String| Error::CommitFailed(err.clone());
        // A caller that hung up no longer wants the answer: a failed send is fine.
        match (self, commit) {
            (Pending::Submit(tx, result), Ok(())) => drop(tx.send(result)),
            (Pending::Submit(tx, _), Err(e)) => drop(tx.send(Err(fail(e)))),
            (Pending::Cancel(tx, result), Ok(())) => drop(tx.send(result)),
            (Pending::Cancel(tx, _), Err(e)) => drop(tx.send(Err(fail(e)))),
            (Pending::Transition(tx, result), Ok(())) => drop(tx.send(result)),
            (Pending::Transition(tx, _), Err(e)) => drop(tx.send(Err(fail(e)))),
            (Pending::Requeue(tx, result), Ok(())) => drop(tx.send(result)),
            (Pending::Requeue(tx, _), Err(e)) => drop(tx.send(Err(fail(e)))),
            (Pending::Admin(tx, result), Ok(())) => drop(tx.send(result)),
            (Pending::Admin(tx, _), Err(e)) => drop(tx.send(Err(fail(e)))),
            (Pending::Close(tx), _) => drop(tx.send(())),
        }
    }
}

/// The writer loop. Returns when the channel closes or a `Close` command is committed.
pub(crate) fn run(
    mut conn: Connection,
    mut commands: mpsc::Receiver<Command>,
    counters: Arc<WriterCounters>,
    metrics: Metrics,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut closing = false;
    while !closing {
        let Some(first) = commands.blocking_recv() else {
            break;
        };
        batch.push(first);
        while batch.len() < MAX_BATCH && !matches!(batch.last(), Some(Command::Close { .. })) {
            match commands.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        closing = matches!(batch.last(), Some(Command::Close { .. }));
        commit_batch(&mut conn, &mut batch, &counters, &metrics);
    }
    // Fold the WAL back into the main file so the database is whole on its own.
    if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::warn!(cause = %err, "final WAL checkpoint failed");
    }
    if let Err((_, err)) = conn.close() {
        tracing::warn!(cause = %err, "closing the database failed");
    }
    tracing::info!("store closed");
}

/// Counts the jobs a submit stored: each new one, and those that ended at once (`CANCELLED`,
/// a dependency having already ended badly).
fn tally_submitted(tally: &mut Tally, jobs: &[NewJob], done: &[Submitted]) {
    // `submit` answers each job in order, a repeated idempotency key included.
    for (job, submitted) in jobs.iter().zip(done).filter(|(_, s)| !s.duplicate) {
        tally.submitted(&job.queue);
        tally.finished(&job.queue, lifecycle::domain_state(submitted.state));
    }
}

fn commit_batch(
    conn: &mut Connection,
    batch: &mut Vec<Command>,
    counters: &WriterCounters,
    metrics: &Metrics,
) {
    let commands = batch.len() as u64;
    let mut rows = 0u64;
    // Held until the commit: a command that rolls back, or a failed commit, counts nothing.
    let mut tally = Tally::default();
    let mut pending = Vec::with_capacity(batch.len());
    let began = Instant::now();
    let begin = conn.execute_batch("BEGIN IMMEDIATE");
    for command in batch.drain(..) {
        if let Err(err) = &begin {
            let err = Err(err.to_string());
            match command {
                Command::Submit { reply, .. } => Pending::Submit(reply, Ok(vec![])).send(&err),
                Command::Cancel { reply, .. } => {
                    Pending::Cancel(reply, Ok(Cancelled::empty())).send(&err)
                }
                Command::Transition { reply, .. } => {
                    Pending::Transition(reply, Ok(TransitionOutcome::default())).send(&err)
                }
                Command::Requeue { reply, .. } => Pending::Requeue(reply, Ok(None)).send(&err),
                Command::Admin { reply, .. } => Pending::Admin(reply, Ok(())).send(&err),
                Command::Close { reply } => Pending::Close(reply).send(&err),
            }
            continue;
        }
        pending.push(match command {
            Command::Submit {
                origin,
                jobs,
                group,
                reply,
            } => {
                let result = savepoint(conn, |c| submit(c, origin, &jobs, group.as_ref()));
                if let Ok(done) = &result {
                    rows += done.iter().filter(|s| !s.duplicate).count() as u64;
                    tally_submitted(&mut tally, &jobs, done);
                }
                Pending::Submit(reply, result)
            }
            Command::Cancel {
                target,
                reason,
                reply,
            } => {
                let mut result = savepoint(conn, |c| cancel(c, &target, &reason));
                if let Ok(done) = &mut result {
                    rows += (done.ids.len() + done.dependents.len()) as u64;
                    tally.append(&mut done.metrics);
                }
                Pending::Cancel(reply, result)
            }
            Command::Transition { ops, reply } => {
                let mut result = savepoint(conn, |c| lifecycle::transition(c, &ops));
                if let Ok(done) = &mut result {
                    rows += (ops.finishes.len()
                        + done.started.len()
                        + done.cancelled_dependents.len()) as u64;
                    tally.append(&mut done.metrics);
                }
                Pending::Transition(reply, result)
            }
            Command::Requeue {
                job_id,
                max_attempts,
                reply,
            } => {
                let result = savepoint(conn, |c| lifecycle::requeue(c, &job_id, max_attempts));
                rows += u64::from(result.is_ok());
                Pending::Requeue(reply, result)
            }
            Command::Admin { op, reply } => {
                let result = savepoint(conn, |c| admin(c, &op));
                rows += u64::from(result.is_ok());
                Pending::Admin(reply, result)
            }
            Command::Close { reply } => Pending::Close(reply),
        });
    }
    if begin.is_err() {
        return;
    }
    let commit = conn.execute_batch("COMMIT").map_err(|err| {
        tracing::error!(cause = %err, "commit failed; rolling back");
        // The transaction may still be open after a failed COMMIT; end it.
        let _ = conn.execute_batch("ROLLBACK");
        err.to_string()
    });
    if commit.is_ok() {
        counters.record(commands, rows);
        // Before the replies: whoever hears of a write can already see it counted.
        metrics.store_committed(began.elapsed(), commands);
        metrics.record(tally);
    }
    for reply in pending {
        reply.send(&commit);
    }
}

/// Runs `f` in a savepoint: its writes are kept if it succeeds and undone if it fails.
fn savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    conn.prepare_cached("SAVEPOINT command")?.execute([])?;
    match f(conn) {
        Ok(value) => {
            conn.prepare_cached("RELEASE command")?.execute([])?;
            Ok(value)
        }
        Err(err) => {
            conn.prepare_cached("ROLLBACK TO command")?.execute([])?;
            conn.prepare_cached("RELEASE command")?.execute([])?;
            Err(err)
        }
    }
}

fn admin(conn: &Connection, op: &AdminOp) -> Result<()> {
    match op {
        AdminOp::SetQuota(q) => {
            if q.max_in_flight.is_none() && q.max_queued.is_none() && q.rate_per_second.is_none() {
                conn.prepare_cached("DELETE FROM quotas WHERE scope = ?1")?
                    .execute(params![q.scope])?;
            } else {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO quotas (scope, max_in_flight, max_queued,
                        rate_per_second, burst) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    q.scope,
                    q.max_in_flight,
                    q.max_queued,
                    q.rate_per_second,
                    q.burst
                ])?;
            }
        }
        AdminOp::Pause {
            queue,
            paused: true,
        } => {
            conn.prepare_cached("INSERT OR IGNORE INTO paused_queues (queue) VALUES (?1)")?
                .execute(params![queue])?;
        }
        AdminOp::Pause {
            queue,
            paused: false,
        } => {
            conn.prepare_cached("DELETE FROM paused_queues WHERE queue = ?1")?
                .execute(params![queue])?;
        }
    }
    Ok(())
}

/// The `max_queued` limits that apply to these jobs, with how many are queued now: refuses
/// the whole submit if any scope would go past its limit.
const QUEUED_LIMITS: &str = "SELECT q.scope, q.max_queued, coalesce(c.queued, 0)
    FROM quotas q LEFT JOIN queued_counts c ON c.scope = q.scope
    WHERE q.max_queued IS NOT NULL AND q.scope IN (SELECT value FROM json_each(?1))";

fn admit(conn: &Connection, jobs: &[&NewJob]) -> Result<()> {
    let mut adding: HashMap<String, u64> = HashMap::new();
    for job in jobs {
        let scopes = crate::quota::scopes(
            &job.queue,
            job.concurrency_key.as_deref(),
            job.tenant_id.as_deref(),
        );
        for scope in scopes {
            *adding.entry(scope).or_default() += 1;
        }
    }
    let scopes: Vec<&String> = adding.keys().collect();
    let scopes = serde_json::to_string(&scopes).unwrap_or_else(|_| "[]".into());
    let limits = conn
        .prepare_cached(QUEUED_LIMITS)?
        .query_map(params![scopes], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (scope, max, queued) in limits {
        let more = adding.get(&scope).copied().unwrap_or(0) as i64;
        if queued + more > max {
            return Err(Error::QueueFull {
                scope,
                queued: queued.max(0) as u64,
                max: max.max(0) as u64,
            });
        }
    }
    Ok(())
}

const FIND_IDEMPOTENT: &str = "SELECT id, state FROM jobs
    WHERE queue = ?1 AND coalesce(tenant_id, '') = ?2 AND idempotency_key = ?3";
const JOB_STATE: &str = "SELECT state FROM jobs WHERE id = ?1";
const GROUP_EXISTS: &str = "SELECT 1 FROM groups WHERE id = ?1";
const INSERT_GROUP: &str =
    "INSERT INTO groups (id, size, cancel_on_failure, created_at_ms, tenant_id)
        VALUES (?1, ?2, ?3, ?4, ?5)";
const INSERT_JOB: &str = "INSERT INTO jobs (
        id, queue, kind, payload, priority, max_attempts, timeout_ms, deadline_ms, run_at_ms,
        idempotency_key, concurrency_key, weight, depends_on, group_id, labels, tenant_id,
        parent_job_id, traceparent, tracestate, trace_id, state, error, created_at_ms,
        finished_at_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
        ?19, ?20, ?21, ?22, ?23, ?24)";
const INSERT_DEPENDENCY: &str =
    "INSERT OR IGNORE INTO dependencies (depends_on, job_id) VALUES (?1, ?2)";

/// How a submit names its jobs' fields in errors: `depends_on[0]` or `jobs[3].depends_on[0]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Submit,
    Batch,
}

fn submit(
    conn: &Connection,
    origin: Origin,
    jobs: &[NewJob],
    group: Option<&NewGroup>,
) -> Result<Vec<Submitted>> {
    let now = now_ms();
    if let Some(group) = group {
        if conn
            .prepare_cached(GROUP_EXISTS)?
            .exists(params![group.id])?
        {
            return Err(Error::GroupExists(group.id.clone()));
        }
        conn.prepare_cached(INSERT_GROUP)?.execute(params![
            group.id,
            jobs.len() as i64,
            group.cancel_on_failure,
            now,
            jobs.first().and_then(|j| j.tenant_id.as_deref())
        ])?;
    }

    // First pass: which jobs repeat an idempotency key, of an earlier job or of an earlier
    // entry of this batch. Their dependents then point at that job instead.
    let mut results = Vec::with_capacity(jobs.len());
    let mut replaced: HashMap<&str, String> = HashMap::new();
    let mut keys: HashMap<(&str, &str, &str), &str> = HashMap::new();
    {
        let mut find = conn.prepare_cached(FIND_IDEMPOTENT)?;
        for job in jobs {
            let existing = match &job.idempotency_key {
                Some(key) => {
                    let tenant = job.tenant_id.as_deref().unwrap_or("");
                    match keys.get(&(job.queue.as_str(), tenant, key.as_str())) {
                        Some(id) => Some((id.to_string(), JobState::Queued as i32)),
                        None => {
                            keys.insert((&job.queue, tenant, key), &job.id);
                            find.query_row(params![job.queue, tenant, key], |row| {
                                Ok((row.get::<_, String>(0)?, row.get::<_, i32>(1)?))
                            })
                            .optional()?
                        }
                    }
                }
                None => None,
            };
            results.push(match existing {
                Some((id, state)) => {
                    replaced.insert(job.id.as_str(), id.clone());
                    Submitted {
                        id,
                        duplicate: true,
                        state: JobState::try_from(state).unwrap_or(JobState::Unspecified),
                        ready: None,
                    }
                }
                None => Submitted {
                    id: job.id.clone(),
                    duplicate: false,
                    state: JobState::Queued,
                    ready: None,
                },
            });
        }
    }

    // Admission counts only the jobs that will be stored: a repeat of an idempotency key
    // returns the first job even when its queue is full.
    let new_jobs: Vec<&NewJob> = jobs
        .iter()
        .zip(&results)
        .filter(|(_, r)| !r.duplicate)
        .map(|(j, _)| j)
        .collect();
    admit(conn, &new_jobs)?;
    let in_batch: HashSet<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    let mut state_of = conn.prepare_cached(JOB_STATE)?;
    let mut insert = conn.prepare_cached(INSERT_JOB)?;
    let mut insert_dependency = conn.prepare_cached(INSERT_DEPENDENCY)?;
    for (index, (job, result)) in jobs.iter().zip(results.iter_mut()).enumerate() {
        if result.duplicate {
            continue;
        }
        let mut depends_on = Vec::with_capacity(job.depends_on.len());
        // A dependency that already ended other than SUCCEEDED dooms this job at once.
        let mut doomed = None;
        let mut waits = false;
        for (d, dep) in job.depends_on.iter().enumerate() {
            let dep = replaced.get(dep.as_str()).unwrap_or(dep);
            let state = if in_batch.contains(dep.as_str()) {
                JobState::Queued as i32
            } else {
                match state_of
                    .query_row(params![dep], |row| row.get::<_, i32>(0))
                    .optional()?
                {
                    Some(state) => state,
                    None => {
                        let field = match origin {
                            Origin::Submit => format!("depends_on[{d}]"),
                            Origin::Batch => format!("jobs[{index}].depends_on[{d}]"),
                        };
                        return Err(Error::invalid(field, format!("no job {dep}")));
                    }
                }
            };
            match JobState::try_from(state) {
                Ok(end @ (JobState::Failed | JobState::Cancelled | JobState::DeadlineExceeded)) => {
                    doomed.get_or_insert_with(|| dependency_failed(dep, end));
                }
                Ok(JobState::Succeeded) => {}
                _ => waits = true,
            }
            depends_on.push(dep.clone());
        }
        let depends_json = (!depends_on.is_empty()).then(|| json_array(&depends_on));
        let labels = (!job.labels.is_empty()).then(|| json_object(&job.labels));
        let state = if doomed.is_some() {
            JobState::Cancelled
        } else {
            JobState::Queued
        };
        insert.execute(params![
            job.id,
            job.queue,
            job.kind,
            job.payload,
            job.priority,
            job.max_attempts,
            job.timeout_ms,
            job.deadline_ms,
            job.run_at_ms,
            job.idempotency_key,
            job.concurrency_key,
            job.weight,
            depends_json,
            group.map(|g| g.id.as_str()),
            labels,
            job.tenant_id,
            job.parent_job_id,
            job.traceparent,
            job.tracestate,
            job.trace_id,
            state as i32,
            doomed,
            now,
            doomed.as_ref().map(|_| now),
        ])?;
        let seq = conn.last_insert_rowid();
        for dep in &depends_on {
            insert_dependency.execute(params![dep, job.id])?;
        }
        result.state = state;
        if state == JobState::Queued && !waits {
            result.ready = Some(ReadyJob {
                id: job.id.clone(),
                queue: job.queue.clone(),
                kind: job.kind.clone(),
                priority: job.priority,
                run_at_ms: job.run_at_ms.unwrap_or(0),
                seq,
                deadline_ms: job.deadline_ms,
                weight: job.weight,
                tenant_id: job.tenant_id.clone(),
                concurrency_key: job.concurrency_key.clone(),
            });
        }
    }
    Ok(results)
}

fn dependency_failed(dep: &str, end: JobState) -> String {
    format!("dependency {dep} ended {}", end.as_str_name())
}

const CANCEL_JOB: &str = "UPDATE jobs SET state = ?1, error = ?2, finished_at_ms = ?3
    WHERE id = ?4 AND state = ?5";
const CANCEL_GROUP: &str = "UPDATE jobs SET state = ?1, error = ?2, finished_at_ms = ?3
    WHERE group_id = ?4 AND state = ?5 RETURNING id, queue";
/// Queued dependents of one job: they can no longer run.
const CANCEL_DEPENDENTS: &str = "UPDATE jobs SET state = ?1, error = ?2, finished_at_ms = ?3
    WHERE state = ?4 AND id IN (SELECT job_id FROM dependencies WHERE depends_on = ?5)
    RETURNING id, queue";

const CANCEL_RUNNING: &str = "UPDATE jobs SET state = ?1, error = ?2, finished_at_ms = ?3
    WHERE seq = ?4";
const RUNNING_OF_GROUP: &str = "SELECT id, seq, attempt, queue, started_at_ms FROM jobs
    WHERE group_id = ?1 AND state = ?2";
/// What cancelling one job needs to know of it.
const JOB_TO_CANCEL: &str = "SELECT state, seq, attempt, queue, started_at_ms FROM jobs
    WHERE id = ?1";

/// Cancels every unfinished job of a group: queued ones, and running ones (their attempts are
/// fenced out here). Returns the ids, and the running ones with their attempt.
pub(crate) fn cancel_group_jobs(
    conn: &Connection,
    group: &str,
    reason: &str,
    now: i64,
    tally: &mut Tally,
) -> Result<Descendants> {
    let cancelled = JobState::Cancelled as i32;
    let queued = conn
        .prepare_cached(CANCEL_GROUP)?
        .query_map(
            params![cancelled, reason, now, group, JobState::Queued as i32],
            |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut ids = Vec::with_capacity(queued.len());
    for (id, queue) in queued {
        tally.finished(&queue, domain::JobState::Cancelled);
        ids.push(id);
    }
    let running = conn
        .prepare_cached(RUNNING_OF_GROUP)?
        .query_map(params![group, JobState::Running as i32], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, u32>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, Option<i64>>(4)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut running_now = Vec::with_capacity(running.len());
    for (id, seq, attempt, queue, started_at_ms) in running {
        tally.ended(
            &queue,
            domain::AttemptOutcome::Cancelled,
            started_at_ms,
            now,
        );
        tally.finished(&queue, domain::JobState::Cancelled);
        cancel_running(conn, seq, attempt, reason, now)?;
        running_now.push((id.clone(), attempt));
        ids.push(id);
    }
    Ok((ids, running_now))
}

/// Ends a running job `CANCELLED` and its current attempt with it: the attempt is fenced
/// out, so whatever its worker reports later is refused.
fn cancel_running(conn: &Connection, seq: i64, attempt: u32, reason: &str, now: i64) -> Result<()> {
    conn.prepare_cached(CANCEL_RUNNING)?.execute(params![
        JobState::Cancelled as i32,
        reason,
        now,
        seq
    ])?;
    conn.prepare_cached(END_CHILD_ATTEMPT)?.execute(params![
        now,
        v1::AttemptOutcome::Cancelled as i32,
        reason,
        seq,
        attempt
    ])?;
    Ok(())
}

fn cancel(conn: &Connection, target: &CancelTarget, reason: &str) -> Result<Cancelled> {
    let now = now_ms();
    let mut tally = Tally::default();
    let mut running_now: Vec<(String, u32)> = Vec::new();
    let cancelled = JobState::Cancelled as i32;
    let queued = JobState::Queued as i32;
    let (ids, state) = match target {
        CancelTarget::Job(id) => {
            let (state, seq, attempt, queue, started_at_ms): (i32, i64, u32, String, Option<i64>) =
                conn.prepare_cached(JOB_TO_CANCEL)?
                    .query_row(params![id], |row| {
                        Ok((
                            row.get(0)?,
                            row.get(1)?,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                        ))
                    })
                    .optional()?
                    .ok_or_else(|| Error::JobNotFound(id.clone()))?;
            let state = JobState::try_from(state)
                .map_err(|_| Error::Corrupt(format!("job {id}: state {state}")))?;
            match state {
                JobState::Queued => {
                    let changed = conn
                        .prepare_cached(CANCEL_JOB)?
                        .execute(params![cancelled, reason, now, id, queued])?;
                    if changed != 1 {
                        return Err(Error::Corrupt(format!(
                            "job {id}: vanished while cancelled"
                        )));
                    }
                    tally.finished(&queue, domain::JobState::Cancelled);
                    (vec![id.clone()], JobState::Cancelled)
                }
                // Cancelling twice is not an error: the caller's wish already holds.
                JobState::Cancelled => (vec![], state),
                JobState::Running => {
                    // The attempt is fenced out here: whatever its worker reports later is
                    // refused. The scheduler tells the worker to stop.
                    cancel_running(conn, seq, attempt, reason, now)?;
                    running_now.push((id.clone(), attempt));
                    tally.ended(
                        &queue,
                        domain::AttemptOutcome::Cancelled,
                        started_at_ms,
                        now,
                    );
                    tally.finished(&queue, domain::JobState::Cancelled);
                    (vec![id.clone()], JobState::Cancelled)
                }
                other => {
                    return Err(Error::FailedPrecondition {
                        id: id.clone(),
                        reason: format!("already ended {}", other.as_str_name()),
                    });
                }
            }
        }
        CancelTarget::Group(group) => {
            if !conn.prepare_cached(GROUP_EXISTS)?.exists(params![group])? {
                return Err(Error::GroupNotFound(group.clone()));
            }
            let (ids, running) = cancel_group_jobs(conn, group, reason, now, &mut tally)?;
            running_now.extend(running);
            (ids, JobState::Unspecified)
        }
    };
    let mut dependents = Vec::new();
    for id in &ids {
        let (ended, running) = end_descendants(conn, id, JobState::Cancelled, now, &mut tally)?;
        dependents.extend(ended);
        running_now.extend(running);
    }
    Ok(Cancelled {
        ids,
        dependents,
        running: running_now,
        state,
        metrics: tally,
    })
}

/// The jobs `end_descendants` ended, and of those the running ones with their attempt.
pub(crate) type Descendants = (Vec<String>, Vec<(String, u32)>);

const CHILDREN: &str = "SELECT id, seq, state, attempt, queue, started_at_ms FROM jobs
    WHERE parent_job_id = ?1 AND state IN (?2, ?3)";
const END_CHILD: &str =
    "UPDATE jobs SET state = ?1, error = ?2, finished_at_ms = ?3 WHERE seq = ?4";
const END_CHILD_ATTEMPT: &str = "UPDATE attempts SET finished_at_ms = ?1, outcome = ?2, error = ?3
    WHERE job_seq = ?4 AND number = ?5";

/// Ends what can no longer happen after `root` ended in `state`: its queued dependents (they
/// needed it to succeed) and, when it was cancelled or ran out of time, its children, running
/// or not (the done channel). All the way down. Returns the jobs it ended and, of those, the
/// running ones with their attempt, for their workers to stop.
pub(crate) fn end_descendants(
    conn: &Connection,
    root: &str,
    state: JobState,
    now: i64,
    tally: &mut Tally,
) -> Result<Descendants> {
    let mut dependents = conn.prepare_cached(CANCEL_DEPENDENTS)?;
    let mut children = conn.prepare_cached(CHILDREN)?;
    let mut end_child = conn.prepare_cached(END_CHILD)?;
    let mut end_attempt = conn.prepare_cached(END_CHILD_ATTEMPT)?;
    let mut frontier: Vec<(String, JobState)> = vec![(root.to_owned(), state)];
    let mut ended = Vec::new();
    let mut running = Vec::new();
    while let Some((job, job_state)) = frontier.pop() {
        let reason = dependency_failed(&job, job_state);
        let next = dependents
            .query_map(
                params![
                    JobState::Cancelled as i32,
                    reason,
                    now,
                    JobState::Queued as i32,
                    job
                ],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let next: Vec<String> = next
            .into_iter()
            .map(|(id, queue)| {
                tally.finished(&queue, domain::JobState::Cancelled);
                id
            })
            .collect();
        if matches!(job_state, JobState::Cancelled | JobState::DeadlineExceeded) {
            let reason = format!("its parent {job} ended {}", job_state.as_str_name());
            let kids = children
                .query_map(
                    params![job, JobState::Queued as i32, JobState::Running as i32],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, i32>(2)?,
                            row.get::<_, u32>(3)?,
                            row.get::<_, String>(4)?,
                            row.get::<_, Option<i64>>(5)?,
                        ))
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (id, seq, kid_state, attempt, queue, started_at_ms) in kids {
                end_child.execute(params![JobState::Cancelled as i32, reason, now, seq])?;
                tally.finished(&queue, domain::JobState::Cancelled);
                if kid_state == JobState::Running as i32 {
                    tally.ended(
                        &queue,
                        domain::AttemptOutcome::Cancelled,
                        started_at_ms,
                        now,
                    );
                    end_attempt.execute(params![
                        now,
                        v1::AttemptOutcome::Cancelled as i32,
                        reason,
                        seq,
                        attempt
                    ])?;
                    running.push((id.clone(), attempt));
                }
                ended.push(id.clone());
                frontier.push((id, JobState::Cancelled));
            }
        }
        ended.extend(next.iter().cloned());
        frontier.extend(next.into_iter().map(|id| (id, JobState::Cancelled)));
    }
    Ok((ended, running))
}

impl Cancelled {
    fn empty() -> Self {
        Cancelled {
            ids: vec![],
            dependents: vec![],
            running: vec![],
            state: JobState::Unspecified,
            metrics: Tally::default(),
        }
    }
}

fn json_array(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

fn json_object(map: &std::collections::BTreeMap<String, String>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".into())
}
