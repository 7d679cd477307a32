//! A job's life after submit: starting attempts, finishing them, putting jobs back, and
//! finding what became ready. Inside the caller's transaction; `sqlite/lifecycle.rs`'s rules.

use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use super::{Columns, READY_COLUMNS, READY_COLUMNS_J, cancel, ready_from_row};
use crate::store::rules::{self, Current, EXPIRED_BEFORE_RUNNING};
use crate::{
    domain::{AttemptOutcome, Dispatch, JobId, JobState, Outcome, ReadyJob, RunningAttempt},
    error::{Error, Result},
    store::{
        Durability, Finish, GroupKey, RetryPolicy, Start, Started, TransitionOutcome, Transitions,
    },
};

/// Its timeout is the attempt's: the job's own, or else its queue's default. Locked: what
/// the finish decides from it holds until it commits.
const RUNNING_JOB: &str = "SELECT seq, state, attempt, failures, max_attempts, queue, kind,
    priority, deadline_ms,
    coalesce(timeout_ms, (SELECT attempt_timeout_ms FROM quotas WHERE scope = 'queue:' || queue)),
    started_at_ms, weight, tenant_id, concurrency_key, timeout_ms IS NULL
    FROM jobs WHERE id = $1 FOR UPDATE";
const FAIL: &str = "UPDATE jobs SET state = $1, error = $2, failures = $3, finished_at_ms = $4
    WHERE seq = $5";
const RETRY: &str =
    "UPDATE jobs SET state = 10 /* queued */, error = $1, failures = $2, run_at_ms = $3,
    worker_id = NULL WHERE seq = $4";
const END_ATTEMPT: &str = "UPDATE attempts SET finished_at_ms = $1, outcome = $2, error = $3
    WHERE job_seq = $4 AND number = $5";
const DEPENDENCY_OUTPUTS: &str =
    "SELECT id, output FROM jobs WHERE id = ANY($1) ORDER BY id COLLATE \"C\"";

/// Applies finishes first (they free things), then expiries, then starts.
/// `now` stamps every finish and start of it (the store's [`super::PostgresStore::stamp`]).
pub(super) async fn transition(
    conn: &mut PgConnection,
    ops: &Transitions,
    now: i64,
) -> Result<TransitionOutcome> {
    let mut out = TransitionOutcome::default();
    // In order; each run of successes in one statement (the order among them changes
    // nothing: a success takes no children and touches no other job).
    let mut rest = ops.finishes.as_slice();
    while let Some(first) = rest.first() {
        let run = rest
            .iter()
            .take_while(|f| matches!(f.outcome, Outcome::Succeeded(_)))
            .count();
        if run > 0 {
            succeed_all(conn, &rest[..run], now, &mut out).await?;
            rest = &rest[run..];
        } else {
            self::finish(conn, first, &ops.retry, now, &mut out).await?;
            rest = &rest[1..];
        }
    }
    for id in &ops.expire {
        expire(conn, *id, now, &mut out).await?;
    }
    if ops.durability() == Durability::WithNext {
        // Starts alone: their commit does not wait for the WAL flush (the epoch fences what
        // a lost one handed out); the next synchronous commit flushes it too.
        sqlx::query("SET LOCAL synchronous_commit TO OFF")
            .execute(&mut *conn)
            .await?;
    }
    if !ops.starts.is_empty() {
        start_all(conn, &ops.starts, now, &mut out).await?;
    }
    Ok(out)
}

/// Successes of their jobs' current attempts, in one statement with the ends of their
/// attempts: only the current, running attempt may finish its job (the fence); a success
/// that is not one is stale. Then the dependents they made ready, in one query.
const SUCCEED_ALL: &str = "WITH f AS (
        SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[]) AS f(id, attempt, output)),
    done AS (UPDATE jobs j SET state = 30 /* succeeded */, output = f.output, error = NULL,
            finished_at_ms = $4
        FROM f WHERE j.id = f.id AND j.state = 20 /* running */ AND j.attempt = f.attempt
        RETURNING j.seq, j.id, j.attempt, j.queue, j.started_at_ms),
    ended AS (UPDATE attempts a SET finished_at_ms = $4, outcome = $5, error = NULL
        FROM done WHERE a.job_seq = done.seq AND a.number = done.attempt)
    SELECT id, queue, started_at_ms,
        EXISTS (SELECT 1 FROM dependencies d WHERE d.depends_on = done.id)
    FROM done";
/// Queued jobs that depend on one of `$1` and whose dependencies have all succeeded now
/// (`READY_COLUMNS_J` go first).
const NOW_READY_DEPENDENTS_OF_ANY: &str = "
    FROM jobs j
    WHERE j.state = 10 /* queued */
      AND j.id IN (SELECT d.job_id FROM dependencies d WHERE d.depends_on = ANY($1))
      AND NOT EXISTS (SELECT 1 FROM dependencies d2 JOIN jobs p ON p.id = d2.depends_on
                      WHERE d2.job_id = j.id AND p.state != 30 /* succeeded */)
    ORDER BY j.seq";

async fn succeed_all(
    conn: &mut PgConnection,
    finishes: &[Finish],
    now: i64,
    out: &mut TransitionOutcome,
) -> Result<()> {
    let mut ids = Vec::with_capacity(finishes.len());
    let mut attempts = Vec::with_capacity(finishes.len());
    let mut outputs: Vec<&[u8]> = Vec::with_capacity(finishes.len());
    for finish in finishes {
        if let Outcome::Succeeded(output) = &finish.outcome {
            ids.push(finish.job_id.to_string());
            attempts.push(i64::from(finish.attempt));
            outputs.push(output);
        }
    }
    let rows = sqlx::query(SUCCEED_ALL)
        .bind(&ids)
        .bind(&attempts)
        .bind(&outputs)
        .bind(now)
        .bind(AttemptOutcome::Succeeded.code())
        .fetch_all(&mut *conn)
        .await?;
    let mut succeeded = std::collections::HashSet::with_capacity(rows.len());
    let mut with_dependents = Vec::new();
    for row in &rows {
        let id: JobId = row.id(0)?;
        let queue: String = row.col(1)?;
        let started_at_ms: Option<i64> = row.col(2)?;
        out.metrics
            .ended(&queue, AttemptOutcome::Succeeded, started_at_ms, now);
        out.metrics.finished(&queue, JobState::Succeeded);
        out.terminal.push(id);
        if row.col::<bool>(3)? {
            with_dependents.push(id.to_string());
        }
        succeeded.insert(id);
    }
    for finish in finishes {
        if !succeeded.contains(&finish.job_id) {
            out.stale.push((finish.job_id, finish.attempt));
        }
    }
    if !with_dependents.is_empty() {
        let ready_now = sqlx::query(AssertSqlSafe(format!(
            "SELECT {READY_COLUMNS_J} {NOW_READY_DEPENDENTS_OF_ANY}"
        )))
        .bind(&with_dependents)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(ready_from_row)
        .collect::<Result<Vec<_>>>()?;
        out.ready.extend(ready_now);
    }
    Ok(())
}

const EXPIRE: &str = "UPDATE jobs SET state = 60 /* deadline_exceeded */, error = $1,
        finished_at_ms = $2
    WHERE id = $3 AND state = 10 /* queued */ RETURNING queue";

/// A queued job whose deadline passed: it ends without ever running.
async fn expire(
    conn: &mut PgConnection,
    id: JobId,
    now: i64,
    out: &mut TransitionOutcome,
) -> Result<()> {
    let expired: Option<String> = sqlx::query_scalar(EXPIRE)
        .bind(EXPIRED_BEFORE_RUNNING)
        .bind(now)
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(queue) = expired {
        out.metrics.finished(&queue, JobState::DeadlineExceeded);
        out.terminal.push(id);
        end_descendants(conn, id, JobState::DeadlineExceeded, now, out).await?;
        fail_group(conn, id, EXPIRED_BEFORE_RUNNING, now, out).await?;
    }
    Ok(())
}

/// errgroup, first failure only: one conditional statement, so that of two jobs of a group
/// failing at once in two transactions, exactly one records its error.
const FAIL_GROUP: &str = "UPDATE groups g SET failed_job_id = $1, error = $2
    FROM jobs j
    WHERE j.id = $1 AND g.id = j.group_id AND g.tenant_key = coalesce(j.tenant_id, '')
      AND g.cancel_on_failure AND g.failed_job_id IS NULL
    RETURNING g.id, g.tenant_key";

/// errgroup: the first job of a `cancel_on_failure` group to end badly cancels every other
/// unfinished job of the group, and its error becomes the group's.
async fn fail_group(
    conn: &mut PgConnection,
    id: JobId,
    error: &str,
    now: i64,
    out: &mut TransitionOutcome,
) -> Result<()> {
    let Some(row) = sqlx::query(FAIL_GROUP)
        .bind(id.to_string())
        .bind(error)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(());
    };
    let group = GroupKey {
        id: row.col(0)?,
        tenant: row.col(1)?,
    };
    let reason = format!("job {id} of its group failed: {error}");
    let (ids, running) =
        cancel::cancel_group_jobs(conn, &group, &reason, now, &mut out.metrics).await?;
    for cancelled in &ids {
        end_descendants(conn, *cancelled, JobState::Cancelled, now, out).await?;
    }
    out.terminal.extend(ids.iter().copied());
    out.cancelled_dependents.extend(ids);
    out.stopped.extend(running);
    Ok(())
}

/// Ends what can no longer happen after `id` ended in `state`: its queued dependents, and
/// (when it was cancelled or ran out of time) its children, running or not, all the way down.
async fn end_descendants(
    conn: &mut PgConnection,
    id: JobId,
    state: JobState,
    now: i64,
    out: &mut TransitionOutcome,
) -> Result<()> {
    let (ended, running) = cancel::end_descendants(conn, id, state, now, &mut out.metrics).await?;
    out.terminal.extend(ended.iter().copied());
    out.cancelled_dependents.extend(ended);
    out.stopped.extend(running);
    Ok(())
}

async fn finish(
    conn: &mut PgConnection,
    finish: &Finish,
    retry: &RetryPolicy,
    now: i64,
    out: &mut TransitionOutcome,
) -> Result<()> {
    if let Outcome::Succeeded(_) = &finish.outcome {
        return succeed_all(conn, std::slice::from_ref(finish), now, out).await;
    }
    let current = match sqlx::query(RUNNING_JOB)
        .bind(finish.job_id.to_string())
        .fetch_optional(&mut *conn)
        .await?
    {
        Some(row) => Some(Current {
            seq: row.col(0)?,
            state: row.state(1)?,
            attempt: row.u32(2)?,
            failures: row.u32(3)?,
            max_attempts: row.u32(4)?,
            queue: row.col(5)?,
            kind: row.col(6)?,
            priority: row.col(7)?,
            deadline_ms: row.col(8)?,
            timeout_ms: row.col(9)?,
            started_at_ms: row.col(10)?,
            weight: row.u32(11)?,
            tenant_id: row.col(12)?,
            concurrency_key: row.col(13)?,
            queue_timeout: row.col(14)?,
        }),
        None => None,
    };
    // The fence: only the job's current, running attempt may finish it.
    let Some(current) =
        current.filter(|c| c.state == JobState::Running && c.attempt == finish.attempt)
    else {
        out.stale.push((finish.job_id, finish.attempt));
        return Ok(());
    };
    let id = finish.job_id;

    let outcome = current.outcome_of(&finish.outcome, now);
    let how = rules::ends_children(&outcome);
    if let Some(how) = how {
        let (ended, running) =
            cancel::end_attempt_children(conn, id, current.attempt, how, now, &mut out.metrics)
                .await?;
        out.terminal.extend(ended.iter().copied());
        out.cancelled_dependents.extend(ended);
        out.stopped.extend(running);
    }
    match &outcome {
        Outcome::Expired => {
            end_attempt(
                conn,
                &current,
                now,
                out,
                AttemptOutcome::DeadlineExceeded,
                Some("the job's deadline passed"),
            )
            .await?;
            let ended = Ended {
                id,
                current: &current,
                state: JobState::DeadlineExceeded,
                error: "its deadline passed while it ran",
                failures: current.failures,
            };
            end_job(conn, &ended, now, out).await?;
        }
        Outcome::TimedOut => {
            let message = current.timed_out();
            end_attempt(
                conn,
                &current,
                now,
                out,
                AttemptOutcome::DeadlineExceeded,
                Some(&message),
            )
            .await?;
            let run_at = now + retry.backoff_ms(current.failures + 1);
            if let Some(at) = again_or_fail(conn, id, &current, &message, run_at, now, out).await? {
                out.ready.push(current.ready(id, at));
            }
        }
        // Taken by `succeed_all` before anything is read.
        Outcome::Succeeded(_) => {}
        Outcome::Failed {
            message,
            retryable,
            retry_after_ms,
            cancelled,
        } => {
            let failures = current.failures + 1;
            let (state, outcome) = if *cancelled {
                (JobState::Cancelled, AttemptOutcome::Cancelled)
            } else if *retryable && failures < current.max_attempts {
                (JobState::Queued, AttemptOutcome::Failed)
            } else {
                (JobState::Failed, AttemptOutcome::Failed)
            };
            end_attempt(conn, &current, now, out, outcome, Some(message)).await?;
            if state == JobState::Queued {
                let delay = retry_after_ms.unwrap_or_else(|| retry.backoff_ms(failures));
                let run_at = now + delay;
                requeue_after(conn, Some(message), failures, run_at, current.seq).await?;
                out.ready.push(current.ready(id, run_at));
            } else {
                let error = if state == JobState::Failed && *retryable {
                    rules::out_of_attempts(message, failures)
                } else {
                    message.clone()
                };
                let ended = Ended {
                    id,
                    current: &current,
                    state,
                    error: &error,
                    failures,
                };
                end_job(conn, &ended, now, out).await?;
            }
        }
        Outcome::Lost(reason) => {
            end_attempt(conn, &current, now, out, AttemptOutcome::Lost, Some(reason)).await?;
            if let Some(at) = again_or_fail(conn, id, &current, reason, now, now, out).await? {
                out.ready.push(current.ready(id, at));
            }
        }
        Outcome::Released(reason) | Outcome::Interrupted(reason) => {
            let ended = match finish.outcome {
                Outcome::Interrupted(_) => AttemptOutcome::Interrupted,
                _ => AttemptOutcome::Released,
            };
            end_attempt(conn, &current, now, out, ended, Some(reason)).await?;
            requeue_after(conn, None, current.failures, now, current.seq).await?;
            out.ready.push(current.ready(id, now));
        }
    }
    Ok(())
}

/// Ends the current attempt of a job with `outcome`, counting it.
async fn end_attempt(
    conn: &mut PgConnection,
    current: &Current,
    now: i64,
    out: &mut TransitionOutcome,
    outcome: AttemptOutcome,
    error: Option<&str>,
) -> Result<()> {
    out.metrics
        .ended(&current.queue, outcome, current.started_at_ms, now);
    sqlx::query(END_ATTEMPT)
        .bind(now)
        .bind(outcome.code())
        .bind(error)
        .bind(current.seq)
        .bind(i64::from(current.attempt))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Back to the queue, to run at `run_at`.
async fn requeue_after(
    conn: &mut PgConnection,
    error: Option<&str>,
    failures: u32,
    run_at: i64,
    seq: i64,
) -> Result<()> {
    sqlx::query(RETRY)
        .bind(error)
        .bind(i64::from(failures))
        .bind(run_at)
        .bind(seq)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// An attempt that counts against `max_attempts` ended: the job goes back to its queue for
/// `run_at` if it has attempts left (returns that time), and ends `FAILED` otherwise.
async fn again_or_fail(
    conn: &mut PgConnection,
    id: JobId,
    current: &Current,
    message: &str,
    run_at: i64,
    now: i64,
    out: &mut TransitionOutcome,
) -> Result<Option<i64>> {
    let failures = current.failures + 1;
    if failures < current.max_attempts {
        requeue_after(conn, Some(message), failures, run_at, current.seq).await?;
        return Ok(Some(run_at));
    }
    let error = rules::out_of_attempts(message, failures);
    let ended = Ended {
        id,
        current,
        state: JobState::Failed,
        error: &error,
        failures,
    };
    end_job(conn, &ended, now, out).await?;
    Ok(None)
}

/// A job ending other than in success.
struct Ended<'a> {
    id: JobId,
    current: &'a Current,
    state: JobState,
    error: &'a str,
    failures: u32,
}

/// A terminal end other than success: the job, and every queued job that waited for it.
async fn end_job(
    conn: &mut PgConnection,
    ended: &Ended<'_>,
    now: i64,
    out: &mut TransitionOutcome,
) -> Result<()> {
    sqlx::query(FAIL)
        .bind(ended.state.code())
        .bind(ended.error)
        .bind(i64::from(ended.failures))
        .bind(now)
        .bind(ended.current.seq)
        .execute(&mut *conn)
        .await?;
    out.terminal.push(ended.id);
    out.metrics.finished(&ended.current.queue, ended.state);
    end_descendants(conn, ended.id, ended.state, now, out).await?;
    if matches!(ended.state, JobState::Failed | JobState::DeadlineExceeded) {
        fail_group(conn, ended.id, ended.error, now, out).await?;
    }
    Ok(())
}

/// Starts an attempt; returns what its worker is told, and since when the job waited.
/// Starts every attempt of a round in one statement, with their attempts' rows; a start
/// whose job is no longer queued at the attempt before is not one.
const START_ALL: &str = "WITH s AS (
        SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $5::bigint[])
            AS s(id, attempt, worker_id, epoch)),
    started AS (UPDATE jobs SET state = 20 /* running */, attempt = s.attempt,
            worker_id = s.worker_id, started_at_ms = $4, epoch = s.epoch
        FROM s WHERE jobs.id = s.id AND jobs.state = 10 /* queued */
            AND jobs.attempt = s.attempt - 1
        RETURNING jobs.seq, jobs.attempt, jobs.queue, jobs.kind, jobs.payload, jobs.deadline_ms,
            jobs.traceparent, jobs.tracestate, jobs.labels::text, jobs.group_id, jobs.tenant_id,
            jobs.max_attempts, jobs.depends_on,
            coalesce(jobs.timeout_ms, (SELECT q.attempt_timeout_ms FROM quotas q
                                       WHERE q.scope = 'queue:' || jobs.queue)),
            greatest(jobs.created_at_ms, coalesce(jobs.run_at_ms, 0)),
            (SELECT c.checkpoint FROM job_checkpoints c WHERE c.job_seq = jobs.seq),
            jobs.id, jobs.worker_id, jobs.epoch),
    attempted AS (INSERT INTO attempts (job_seq, number, worker_id, started_at_ms, outcome)
        SELECT seq, attempt, worker_id, $4, 10 /* running */ FROM started)
    SELECT * FROM started";

async fn start_all(
    conn: &mut PgConnection,
    starts: &[Start],
    now: i64,
    out: &mut TransitionOutcome,
) -> Result<()> {
    let ids: Vec<String> = starts.iter().map(|s| s.job_id.to_string()).collect();
    let attempts: Vec<i64> = starts.iter().map(|s| i64::from(s.attempt)).collect();
    let workers: Vec<&str> = starts.iter().map(|s| s.worker_id.as_str()).collect();
    let epochs: Vec<i64> = starts.iter().map(|s| s.epoch as i64).collect();
    let rows = sqlx::query(START_ALL)
        .bind(&ids)
        .bind(&attempts)
        .bind(&workers)
        .bind(now)
        .bind(&epochs)
        .fetch_all(&mut *conn)
        .await?;
    let mut started = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let id: JobId = row.id(16)?;
        let mut dispatch = Dispatch {
            job_id: id,
            attempt: row.u32(1)?,
            epoch: row.col::<i64>(18)? as u64,
            queue: row.col(2)?,
            kind: row.col(3)?,
            payload: row.col(4)?,
            ends_ms: None,
            traceparent: row.col::<Option<String>>(6)?.unwrap_or_default(),
            tracestate: row.col::<Option<String>>(7)?.unwrap_or_default(),
            labels: row
                .col::<Option<String>>(8)?
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default(),
            group_id: row.col(9)?,
            tenant_id: row.col(10)?,
            max_attempts: row.u32(11)?,
            dependency_outputs: Vec::new(),
            checkpoint: row.col(15)?,
        };
        let depends_on: Option<Vec<String>> = row.col(12)?;
        let deadline_ms: Option<i64> = row.col(5)?;
        let timeout_ms: Option<i64> = row.col(13)?;
        let queued_since: i64 = row.col(14)?;
        // A job with no timeout of its own gets its queue's default, if the queue has one.
        dispatch.ends_ms = rules::attempt_ends(deadline_ms, Some(now), timeout_ms);
        if let Some(depends_on) = depends_on {
            let outputs = sqlx::query(DEPENDENCY_OUTPUTS)
                .bind(&depends_on)
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|row| {
                    Ok((
                        row.id(0)?,
                        row.col::<Option<Vec<u8>>>(1)?.unwrap_or_default(),
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            // A pipeline stage: an empty payload with exactly one dependency takes its output.
            if dispatch.payload.is_empty() && outputs.len() == 1 {
                dispatch.payload = outputs[0].1.clone();
            }
            dispatch.dependency_outputs = outputs;
        }
        started.insert(id, (dispatch, queued_since));
    }
    // In the round's order, as the scheduler planned them.
    for start in starts {
        match started.remove(&start.job_id) {
            Some((dispatch, queued_since_ms)) => {
                out.metrics.started(&dispatch.queue);
                out.started.push(Started {
                    session: start.session,
                    dispatch,
                    queued_since_ms,
                });
            }
            None => out
                .not_started
                .push((start.session, start.job_id, start.attempt)),
        }
    }
    Ok(())
}

/// Locked: the job's state decides what the requeue does.
const JOB_TO_REQUEUE: &str = "SELECT seq, state, max_attempts FROM jobs WHERE id = $1 FOR UPDATE";
const REQUEUE: &str = "UPDATE jobs SET state = 10 /* queued */, failures = 0, max_attempts = $1,
        error = NULL, output = NULL, finished_at_ms = NULL, run_at_ms = NULL, worker_id = NULL
    WHERE seq = $2
    RETURNING id, queue, kind, priority, 0::bigint, seq, deadline_ms, weight, tenant_id,
        concurrency_key, attempt";
/// Its dependencies are read locked: one cannot end badly (or be requeued) meanwhile.
const FAILED_DEPENDENCY: &str = "SELECT p.id, p.state FROM dependencies d
    JOIN jobs p ON p.id = d.depends_on
    WHERE d.job_id = $1 ORDER BY p.seq FOR SHARE OF p";
const UNFINISHED_DEPENDENCIES: &str = "SELECT count(*) FROM dependencies d
    JOIN jobs p ON p.id = d.depends_on WHERE d.job_id = $1 AND p.state != 30 /* succeeded */";

/// Puts a job that ended badly back in its queue, with a fresh count of attempts. Returns it
/// as ready when its dependencies have all succeeded.
pub(super) async fn requeue(
    conn: &mut PgConnection,
    id: JobId,
    max_attempts: Option<u32>,
) -> Result<Option<ReadyJob>> {
    let row = sqlx::query(JOB_TO_REQUEUE)
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(Error::JobNotFound(id.to_string()))?;
    let (seq, state, current_max): (i64, JobState, u32) = (row.col(0)?, row.state(1)?, row.u32(2)?);
    if !state.is_bad_end() {
        return Err(Error::FailedPrecondition {
            id: id.to_string(),
            reason: format!(
                "is {}; only FAILED, CANCELLED or DEADLINE_EXCEEDED jobs can be requeued",
                state.wire_name()
            ),
        });
    }
    let mut failed_dependency = None;
    for row in sqlx::query(FAILED_DEPENDENCY)
        .bind(id.to_string())
        .fetch_all(&mut *conn)
        .await?
    {
        let dep_state = row.state(1)?;
        if dep_state.is_bad_end() {
            failed_dependency = Some((row.id(0)?, dep_state));
            break;
        }
    }
    if let Some((dep, dep_state)) = failed_dependency {
        return Err(Error::FailedPrecondition {
            id: id.to_string(),
            reason: format!(
                "its dependency {dep} ended {}; requeue that first",
                dep_state.wire_name()
            ),
        });
    }
    let row = sqlx::query(REQUEUE)
        .bind(i64::from(max_attempts.unwrap_or(current_max)))
        .bind(seq)
        .fetch_one(&mut *conn)
        .await?;
    let job = ready_from_row(&row)?;
    let unfinished: i64 = sqlx::query_scalar(UNFINISHED_DEPENDENCIES)
        .bind(id.to_string())
        .fetch_one(&mut *conn)
        .await?;
    Ok((unfinished == 0).then_some(job))
}

/// At start: what was running (still running, for its workers to reclaim) and every job that
/// is ready to run (queued, and all its dependencies succeeded).
pub(super) async fn recover(pool: &PgPool) -> Result<(Vec<ReadyJob>, Vec<RunningAttempt>)> {
    let running = sqlx::query(AssertSqlSafe(format!(
        "SELECT {READY_COLUMNS}, worker_id, started_at_ms,
            coalesce(timeout_ms, (SELECT attempt_timeout_ms FROM quotas
                                  WHERE scope = 'queue:' || j.queue)),
            epoch
         FROM jobs j WHERE state = 20 /* running */ ORDER BY seq"
    )))
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| {
        let job = ready_from_row(row)?;
        let worker_id: Option<String> = row.col(11)?;
        let started_at_ms: Option<i64> = row.col(12)?;
        let timeout_ms: Option<i64> = row.col(13)?;
        let epoch: i64 = row.col(14)?;
        Ok(rules::recovered(
            job,
            worker_id,
            epoch as u64,
            started_at_ms,
            timeout_ms,
        ))
    })
    .collect::<Result<Vec<_>>>()?;
    if !running.is_empty() {
        tracing::info!(
            running = running.len(),
            "jobs were running when the coordinator stopped; keeping them for their workers to reclaim"
        );
    }
    let ready = sqlx::query(AssertSqlSafe(format!(
        "SELECT {READY_COLUMNS} FROM jobs j
         WHERE state = 10 /* queued */ AND NOT EXISTS (
            SELECT 1 FROM dependencies d JOIN jobs p ON p.id = d.depends_on
            WHERE d.job_id = j.id AND p.state != 30 /* succeeded */)
         ORDER BY seq"
    )))
    .fetch_all(pool)
    .await?
    .iter()
    .map(ready_from_row)
    .collect::<Result<Vec<_>>>()?;
    Ok((ready, running))
}
