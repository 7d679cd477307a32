//! The SQL of a job's life after submit: starting attempts, finishing them, putting jobs back,
//! and finding what became ready. Runs on the writer thread, inside its transaction.

use rusqlite::{Connection, OptionalExtension, params};

use super::{READY_COLUMNS, READY_COLUMNS_J, cancel, ready_from_row};
use crate::store::rules::{self, Current, EXPIRED_BEFORE_RUNNING};
use crate::{
    domain::{AttemptOutcome, Dispatch, JobId, JobState, Outcome, ReadyJob, now_ms},
    error::{Error, Result},
    store::{Finish, GroupKey, RetryPolicy, Start, Started, TransitionOutcome, Transitions},
};

/// Its timeout is the attempt's: the job's own, or else its queue's default.
const RUNNING_JOB: &str = "SELECT seq, state, attempt, failures, max_attempts, queue, kind,
    priority, deadline_ms,
    coalesce(timeout_ms, (SELECT attempt_timeout_ms FROM quotas WHERE scope = 'queue:' || queue)),
    started_at_ms, weight, tenant_id, concurrency_key, timeout_ms IS NULL
    FROM jobs WHERE id = ?1";
const FAIL: &str = "UPDATE jobs SET state = ?1, error = ?2, failures = ?3, finished_at_ms = ?4
    WHERE seq = ?5";
const RETRY: &str =
    "UPDATE jobs SET state = 10 /* queued */, error = ?1, failures = ?2, run_at_ms = ?3,
    worker_id = NULL WHERE seq = ?4";
const END_ATTEMPT: &str = "UPDATE attempts SET finished_at_ms = ?1, outcome = ?2, error = ?3
    WHERE job_seq = ?4 AND number = ?5";
/// Queued dependents of a job whose dependencies have now all succeeded (`READY_COLUMNS_J`
/// go first).
const NOW_READY_DEPENDENTS: &str = "
    FROM dependencies d JOIN jobs j ON j.id = d.job_id
    WHERE d.depends_on = ?1 AND j.state = 10 /* queued */
      AND NOT EXISTS (SELECT 1 FROM dependencies d2 JOIN jobs p ON p.id = d2.depends_on
                      WHERE d2.job_id = j.id AND p.state != 30 /* succeeded */)";
/// The scheduler names the attempt it starts: the job's next one. A start that finds the job
/// no longer queued, or at another attempt, does nothing. The attempt resumes from the last
/// checkpoint an earlier one stored. Its timeout is the job's own, or else its queue's. The
/// run's epoch is stored beside the attempt: together they are its fencing token.
const START: &str = "UPDATE jobs SET state = 20 /* running */, attempt = ?4, worker_id = ?1,
        started_at_ms = ?2, epoch = ?5
    WHERE id = ?3 AND state = 10 /* queued */ AND attempt = ?4 - 1
    RETURNING seq, attempt, queue, kind, payload, deadline_ms, traceparent, tracestate, labels,
        group_id, tenant_id, max_attempts, depends_on,
        coalesce(timeout_ms, (SELECT q.attempt_timeout_ms FROM quotas q
                              WHERE q.scope = 'queue:' || jobs.queue)),
        max(created_at_ms, coalesce(run_at_ms, 0)),
        (SELECT c.checkpoint FROM job_checkpoints c WHERE c.job_seq = jobs.seq)";
const INSERT_ATTEMPT: &str = "INSERT INTO attempts (job_seq, number, worker_id, started_at_ms,
    outcome) VALUES (?1, ?2, ?3, ?4, 10 /* running */)";
const DEPENDENCY_OUTPUTS: &str =
    "SELECT id, output FROM jobs WHERE id IN (SELECT value FROM json_each(?1))";

/// Applies finishes first (they free things), then expiries, then starts.
pub(super) fn transition(conn: &Connection, ops: &Transitions) -> Result<TransitionOutcome> {
    let now = now_ms();
    let mut out = TransitionOutcome::default();
    for finish in &ops.finishes {
        self::finish(conn, finish, &ops.retry, now, &mut out)?;
    }
    for id in &ops.expire {
        expire(conn, *id, now, &mut out)?;
    }
    for start in &ops.starts {
        match self::start(conn, start, now)? {
            Some((dispatch, queued_since_ms)) => {
                out.metrics.started(&dispatch.queue);
                out.started.push(Started {
                    session: start.session,
                    dispatch,
                    queued_since_ms,
                })
            }
            None => out
                .not_started
                .push((start.session, start.job_id, start.attempt)),
        }
    }
    Ok(out)
}

const EXPIRE: &str = "UPDATE jobs SET state = 60 /* deadline_exceeded */, error = ?1,
        finished_at_ms = ?2
    WHERE id = ?3 AND state = 10 /* queued */ RETURNING queue";

/// A queued job whose deadline passed: it ends without ever running.
fn expire(conn: &Connection, id: JobId, now: i64, out: &mut TransitionOutcome) -> Result<()> {
    let expired = conn
        .prepare_cached(EXPIRE)?
        .query_row(params![EXPIRED_BEFORE_RUNNING, now, id], |row| {
            row.get::<_, String>(0)
        })
        .optional()?;
    if let Some(queue) = expired {
        out.metrics.finished(&queue, JobState::DeadlineExceeded);
        out.terminal.push(id);
        end_descendants(conn, id, JobState::DeadlineExceeded, now, out)?;
        fail_group(conn, id, EXPIRED_BEFORE_RUNNING, now, out)?;
    }
    Ok(())
}

const ERRGROUP_OF: &str = "SELECT g.id, g.tenant_key FROM jobs j
    JOIN groups g ON g.id = j.group_id AND g.tenant_key = coalesce(j.tenant_id, '')
    WHERE j.id = ?1 AND g.cancel_on_failure = 1 AND g.failed_job_id IS NULL";
const FAIL_GROUP: &str =
    "UPDATE groups SET failed_job_id = ?1, error = ?2 WHERE id = ?3 AND tenant_key = ?4";

/// errgroup: the first job of a `cancel_on_failure` group to end badly cancels every other
/// unfinished job of the group, and its error becomes the group's.
fn fail_group(
    conn: &Connection,
    id: JobId,
    error: &str,
    now: i64,
    out: &mut TransitionOutcome,
) -> Result<()> {
    let Some(group) = conn
        .prepare_cached(ERRGROUP_OF)?
        .query_row(params![id], |row| {
            Ok(GroupKey {
                id: row.get(0)?,
                tenant: row.get(1)?,
            })
        })
        .optional()?
    else {
        return Ok(());
    };
    conn.prepare_cached(FAIL_GROUP)?
        .execute(params![id, error, group.id, group.tenant])?;
    let reason = format!("job {id} of its group failed: {error}");
    let (ids, running) = cancel::cancel_group_jobs(conn, &group, &reason, now, &mut out.metrics)?;
    for cancelled in &ids {
        end_descendants(conn, *cancelled, JobState::Cancelled, now, out)?;
    }
    out.terminal.extend(ids.iter().copied());
    out.cancelled_dependents.extend(ids);
    out.stopped.extend(running);
    Ok(())
}

/// Ends what can no longer happen after `id` ended in `state`: its queued dependents, and
/// (when it was cancelled or ran out of time) its children, running or not, all the way down.
fn end_descendants(
    conn: &Connection,
    id: JobId,
    state: JobState,
    now: i64,
    out: &mut TransitionOutcome,
) -> Result<()> {
    let (ended, running) = cancel::end_descendants(conn, id, state, now, &mut out.metrics)?;
    out.terminal.extend(ended.iter().copied());
    out.cancelled_dependents.extend(ended);
    out.stopped.extend(running);
    Ok(())
}

/// A success, the common case, fenced in the update itself: one statement finds the current
/// attempt and ends the job.
const SUCCEED_CURRENT: &str = "UPDATE jobs SET state = 30 /* succeeded */, output = ?1,
        error = NULL, finished_at_ms = ?2
    WHERE id = ?3 AND state = 20 /* running */ AND attempt = ?4
    RETURNING seq, queue, started_at_ms";

fn succeed(
    conn: &Connection,
    finish: &Finish,
    output: &[u8],
    now: i64,
    out: &mut TransitionOutcome,
) -> Result<()> {
    let id = finish.job_id;
    let current = conn
        .prepare_cached(SUCCEED_CURRENT)?
        .query_row(params![output, now, id, finish.attempt], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<i64>>(2)?,
            ))
        })
        .optional()?;
    // The fence: only the job's current, running attempt may finish it.
    let Some((seq, queue, started_at_ms)) = current else {
        out.stale.push((id, finish.attempt));
        return Ok(());
    };
    conn.prepare_cached(END_ATTEMPT)?.execute(params![
        now,
        AttemptOutcome::Succeeded,
        Option::<&str>::None,
        seq,
        finish.attempt
    ])?;
    out.metrics
        .ended(&queue, AttemptOutcome::Succeeded, started_at_ms, now);
    out.metrics.finished(&queue, JobState::Succeeded);
    out.terminal.push(id);
    let ready_now = conn
        .prepare_cached(&format!("SELECT {READY_COLUMNS_J} {NOW_READY_DEPENDENTS}"))?
        .query_map(params![id], ready_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    out.ready.extend(ready_now);
    Ok(())
}

fn finish(
    conn: &Connection,
    finish: &Finish,
    retry: &RetryPolicy,
    now: i64,
    out: &mut TransitionOutcome,
) -> Result<()> {
    if let Outcome::Succeeded(output) = &finish.outcome {
        return succeed(conn, finish, output, now, out);
    }
    let current = conn
        .prepare_cached(RUNNING_JOB)?
        .query_row(params![finish.job_id], |row| {
            Ok(Current {
                seq: row.get(0)?,
                state: row.get(1)?,
                attempt: row.get(2)?,
                failures: row.get(3)?,
                max_attempts: row.get(4)?,
                queue: row.get(5)?,
                kind: row.get(6)?,
                priority: row.get(7)?,
                deadline_ms: row.get(8)?,
                timeout_ms: row.get(9)?,
                started_at_ms: row.get(10)?,
                weight: row.get(11)?,
                tenant_id: row.get(12)?,
                concurrency_key: row.get(13)?,
                queue_timeout: row.get(14)?,
            })
        })
        .optional()?;
    // The fence: only the job's current, running attempt may finish it.
    let Some(current) =
        current.filter(|c| c.state == JobState::Running && c.attempt == finish.attempt)
    else {
        out.stale.push((finish.job_id, finish.attempt));
        return Ok(());
    };
    let id = finish.job_id;
    let end_attempt = |out: &mut TransitionOutcome, outcome, error: Option<&str>| -> Result<()> {
        out.metrics
            .ended(&current.queue, outcome, current.started_at_ms, now);
        conn.prepare_cached(END_ATTEMPT)?.execute(params![
            now,
            outcome,
            error,
            current.seq,
            current.attempt
        ])?;
        Ok(())
    };

    let outcome = current.outcome_of(&finish.outcome, now);
    let how = rules::ends_children(&outcome);
    if let Some(how) = how {
        let (ended, running) =
            cancel::end_attempt_children(conn, id, current.attempt, how, now, &mut out.metrics)?;
        out.terminal.extend(ended.iter().copied());
        out.cancelled_dependents.extend(ended);
        out.stopped.extend(running);
    }
    match &outcome {
        Outcome::Expired => {
            end_attempt(
                out,
                AttemptOutcome::DeadlineExceeded,
                Some("the job's deadline passed"),
            )?;
            let ended = Ended {
                id,
                current: &current,
                state: JobState::DeadlineExceeded,
                error: "its deadline passed while it ran",
                failures: current.failures,
            };
            end_job(conn, &ended, now, out)?;
        }
        Outcome::TimedOut => {
            let message = current.timed_out();
            end_attempt(out, AttemptOutcome::DeadlineExceeded, Some(&message))?;
            let run_at = now + retry.backoff_ms(current.failures + 1);
            if let Some(at) = again_or_fail(conn, id, &current, &message, run_at, now, out)? {
                out.ready.push(current.ready(id, at));
            }
        }
        // Taken by `succeed` above.
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
            end_attempt(out, outcome, Some(message))?;
            if state == JobState::Queued {
                let delay = retry_after_ms.unwrap_or_else(|| retry.backoff_ms(failures));
                let run_at = now + delay;
                conn.prepare_cached(RETRY)?.execute(params![
                    message,
                    failures,
                    run_at,
                    current.seq
                ])?;
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
                end_job(conn, &ended, now, out)?;
            }
        }
        Outcome::Lost(reason) => {
            end_attempt(out, AttemptOutcome::Lost, Some(reason))?;
            if let Some(at) = again_or_fail(conn, id, &current, reason, now, now, out)? {
                out.ready.push(current.ready(id, at));
            }
        }
        Outcome::Released(reason) | Outcome::Interrupted(reason) => {
            let ended = match finish.outcome {
                Outcome::Interrupted(_) => AttemptOutcome::Interrupted,
                _ => AttemptOutcome::Released,
            };
            end_attempt(out, ended, Some(reason))?;
            conn.prepare_cached(RETRY)?.execute(params![
                Option::<&str>::None,
                current.failures,
                now,
                current.seq
            ])?;
            out.ready.push(current.ready(id, now));
        }
    }
    Ok(())
}

/// An attempt that counts against `max_attempts` ended: the job goes back to its queue for
/// `run_at` if it has attempts left (returns that time), and ends `FAILED` otherwise.
fn again_or_fail(
    conn: &Connection,
    id: JobId,
    current: &Current,
    message: &str,
    run_at: i64,
    now: i64,
    out: &mut TransitionOutcome,
) -> Result<Option<i64>> {
    let failures = current.failures + 1;
    if failures < current.max_attempts {
        conn.prepare_cached(RETRY)?
            .execute(params![message, failures, run_at, current.seq])?;
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
    end_job(conn, &ended, now, out)?;
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
fn end_job(
    conn: &Connection,
    ended: &Ended<'_>,
    now: i64,
    out: &mut TransitionOutcome,
) -> Result<()> {
    conn.prepare_cached(FAIL)?.execute(params![
        ended.state,
        ended.error,
        ended.failures,
        now,
        ended.current.seq
    ])?;
    out.terminal.push(ended.id);
    out.metrics.finished(&ended.current.queue, ended.state);
    end_descendants(conn, ended.id, ended.state, now, out)?;
    if matches!(ended.state, JobState::Failed | JobState::DeadlineExceeded) {
        fail_group(conn, ended.id, ended.error, now, out)?;
    }
    Ok(())
}

/// Starts an attempt; returns what its worker is told, and since when the job waited.
fn start(conn: &Connection, start: &Start, now: i64) -> Result<Option<(Dispatch, i64)>> {
    let row = conn
        .prepare_cached(START)?
        .query_row(
            params![
                start.worker_id,
                now,
                start.job_id,
                start.attempt,
                start.epoch as i64
            ],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    Dispatch {
                        job_id: start.job_id,
                        attempt: row.get(1)?,
                        epoch: start.epoch,
                        queue: row.get(2)?,
                        kind: row.get(3)?,
                        payload: row.get(4)?,
                        ends_ms: None,
                        traceparent: row.get::<_, Option<String>>(6)?.unwrap_or_default(),
                        tracestate: row.get::<_, Option<String>>(7)?.unwrap_or_default(),
                        labels: row
                            .get::<_, Option<String>>(8)?
                            .and_then(|t| serde_json::from_str(&t).ok())
                            .unwrap_or_default(),
                        group_id: row.get(9)?,
                        tenant_id: row.get(10)?,
                        max_attempts: row.get(11)?,
                        dependency_outputs: Vec::new(),
                        checkpoint: row.get(15)?,
                    },
                    row.get::<_, Option<String>>(12)?,
                    row.get::<_, Option<i64>>(5)?,
                    row.get::<_, Option<i64>>(13)?,
                    row.get::<_, i64>(14)?,
                ))
            },
        )
        .optional()?;
    let Some((seq, mut dispatch, depends_on, deadline_ms, timeout_ms, queued_since)) = row else {
        return Ok(None);
    };
    dispatch.ends_ms = rules::attempt_ends(deadline_ms, Some(now), timeout_ms);
    conn.prepare_cached(INSERT_ATTEMPT)?.execute(params![
        seq,
        dispatch.attempt,
        start.worker_id,
        now
    ])?;
    if let Some(depends_on) = depends_on {
        let outputs = conn
            .prepare_cached(DEPENDENCY_OUTPUTS)?
            .query_map(params![depends_on], |row| {
                Ok((
                    row.get::<_, JobId>(0)?,
                    row.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        // A pipeline stage: an empty payload with exactly one dependency takes its output.
        if dispatch.payload.is_empty() && outputs.len() == 1 {
            dispatch.payload = outputs[0].1.clone();
        }
        dispatch.dependency_outputs = outputs;
    }
    Ok(Some((dispatch, queued_since)))
}

const REQUEUE: &str = "UPDATE jobs SET state = 10 /* queued */, failures = 0, max_attempts = ?1,
        error = NULL, output = NULL, finished_at_ms = NULL, run_at_ms = NULL, worker_id = NULL
    WHERE seq = ?2
    RETURNING id, queue, kind, priority, 0, seq, deadline_ms, weight, tenant_id,
        concurrency_key, attempt";
const FAILED_DEPENDENCY: &str = "SELECT p.id, p.state FROM dependencies d
    JOIN jobs p ON p.id = d.depends_on
    WHERE d.job_id = ?1 AND p.state IN (40 /* failed */, 50 /* cancelled */, 60 /* deadline_exceeded */) LIMIT 1";
const UNFINISHED_DEPENDENCIES: &str = "SELECT count(*) FROM dependencies d
    JOIN jobs p ON p.id = d.depends_on WHERE d.job_id = ?1 AND p.state != 30 /* succeeded */";

/// Puts a job that ended badly back in its queue, with a fresh count of attempts. Returns it
/// as ready when its dependencies have all succeeded.
pub(super) fn requeue(
    conn: &Connection,
    id: JobId,
    max_attempts: Option<u32>,
) -> Result<Option<ReadyJob>> {
    let (seq, state, current_max): (i64, JobState, u32) = conn
        .prepare_cached("SELECT seq, state, max_attempts FROM jobs WHERE id = ?1")?
        .query_row(params![id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?
        .ok_or(Error::JobNotFound(id.to_string()))?;
    if !state.is_bad_end() {
        return Err(Error::FailedPrecondition {
            id: id.to_string(),
            reason: format!(
                "is {}; only FAILED, CANCELLED or DEADLINE_EXCEEDED jobs can be requeued",
                state.wire_name()
            ),
        });
    }
    let failed_dependency: Option<(JobId, JobState)> = conn
        .prepare_cached(FAILED_DEPENDENCY)?
        .query_row(params![id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    if let Some((dep, dep_state)) = failed_dependency {
        return Err(Error::FailedPrecondition {
            id: id.to_string(),
            reason: format!(
                "its dependency {dep} ended {}; requeue that first",
                dep_state.wire_name()
            ),
        });
    }
    let job = conn.prepare_cached(REQUEUE)?.query_row(
        params![max_attempts.unwrap_or(current_max), seq],
        ready_from_row,
    )?;
    let unfinished: i64 = conn
        .prepare_cached(UNFINISHED_DEPENDENCIES)?
        .query_row(params![id], |row| row.get(0))?;
    Ok((unfinished == 0).then_some(job))
}

/// At start: takes this run's epoch (one more than the last run's), finds the attempts that
/// were running when the coordinator stopped, and every job that is ready to run (queued, and
/// all its dependencies succeeded).
pub(super) fn recover(conn: &Connection) -> Result<super::writer::Recovering> {
    let epoch: i64 = conn.query_row(
        "UPDATE epochs SET epoch = epoch + 1 RETURNING epoch",
        [],
        |row| row.get(0),
    )?;
    // Attempts that were running stay running: their workers may still hold them and come
    // back for them within the reclaim window. The scheduler ends those nobody reclaims.
    let running = conn
        .prepare(&format!(
            "SELECT {READY_COLUMNS}, worker_id, started_at_ms,
                coalesce(timeout_ms, (SELECT attempt_timeout_ms FROM quotas
                                      WHERE scope = 'queue:' || j.queue)),
                epoch
             FROM jobs j WHERE state = 20 /* running */"
        ))?
        .query_map([], |row| {
            let job = ready_from_row(row)?;
            let worker_id: Option<String> = row.get(11)?;
            let started_at_ms: Option<i64> = row.get(12)?;
            let timeout_ms: Option<i64> = row.get(13)?;
            let epoch: i64 = row.get(14)?;
            Ok(rules::recovered(
                job,
                worker_id,
                epoch as u64,
                started_at_ms,
                timeout_ms,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if !running.is_empty() {
        tracing::info!(
            running = running.len(),
            "jobs were running when the coordinator stopped; keeping them for their workers to reclaim"
        );
    }
    let ready = conn
        .prepare(&format!(
            "SELECT {READY_COLUMNS} FROM jobs j
             WHERE state = 10 /* queued */ AND NOT EXISTS (
                SELECT 1 FROM dependencies d JOIN jobs p ON p.id = d.depends_on
                WHERE d.job_id = j.id AND p.state != 30 /* succeeded */)"
        ))?
        .query_map([], ready_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(super::writer::Recovering {
        ready,
        running,
        epoch: epoch as u64,
    })
}
