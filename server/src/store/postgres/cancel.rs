//! Ending jobs before their time: a cancelled job or group, and everything that can no longer
//! happen after a job ended badly (its queued dependents, and the children of a cancelled or
//! expired parent, all the way down). Inside the caller's transaction; `sqlite/cancel.rs`'s
//! rules.

use sqlx::PgConnection;

use super::{Columns, submit::dependency_failed};
use crate::{
    domain::{AttemptOutcome, JobId, JobState, now_ms},
    error::{Error, Result},
    store::{CancelTarget, Cancelled, GroupKey},
    telemetry::Tally,
};

const CANCEL_JOB: &str =
    "UPDATE jobs SET state = 50 /* cancelled */, error = $1, finished_at_ms = $2
    WHERE id = $3 AND state = 10 /* queued */";
const CANCEL_GROUP: &str =
    "UPDATE jobs SET state = 50 /* cancelled */, error = $1, finished_at_ms = $2
    WHERE group_id = $3 AND coalesce(tenant_id, '') = $4 AND state = 10 /* queued */
    RETURNING id, queue";
/// Queued dependents of one job: they can no longer run.
const CANCEL_DEPENDENTS: &str = "UPDATE jobs SET state = 50 /* cancelled */, error = $1,
        finished_at_ms = $2
    WHERE state = 10 /* queued */ AND id IN (SELECT job_id FROM dependencies WHERE depends_on = $3)
    RETURNING id, queue";
const CANCEL_RUNNING: &str = "UPDATE jobs SET state = 50 /* cancelled */, error = $1,
        finished_at_ms = $2
    WHERE seq = $3";
/// Locked: their attempts are fenced here, and must not finish meanwhile.
const RUNNING_OF_GROUP: &str = "SELECT id, seq, attempt, queue, started_at_ms FROM jobs
    WHERE group_id = $1 AND coalesce(tenant_id, '') = $2 AND state = 20 /* running */
    ORDER BY seq FOR UPDATE";
/// What cancelling one job needs to know of it, locked until the cancel commits.
const JOB_TO_CANCEL: &str = "SELECT state, seq, attempt, queue, started_at_ms FROM jobs
    WHERE id = $1 FOR UPDATE";
const GROUP_EXISTS: &str = "SELECT 1 FROM groups WHERE tenant_key = $1 AND id = $2";
const CHILDREN: &str = "SELECT id, seq, state, attempt, queue, started_at_ms FROM jobs
    WHERE parent_job_id = $1 AND state IN (10 /* queued */, 20 /* running */)
    ORDER BY seq FOR UPDATE";
const END_CHILD: &str =
    "UPDATE jobs SET state = 50 /* cancelled */, error = $1, finished_at_ms = $2 WHERE seq = $3";
const END_ATTEMPT: &str = "UPDATE attempts SET finished_at_ms = $1, outcome = $2, error = $3
    WHERE job_seq = $4 AND number = $5";

/// The jobs a cascade ended, and of those the running ones with their attempt.
pub(super) type Descendants = (Vec<JobId>, Vec<(JobId, u32)>);

pub(super) async fn cancel(
    conn: &mut PgConnection,
    target: &CancelTarget,
    reason: &str,
) -> Result<Cancelled> {
    let now = now_ms();
    let mut tally = Tally::default();
    let mut running_now: Vec<(JobId, u32)> = Vec::new();
    let (ids, state) = match target {
        CancelTarget::Job(id) => {
            let row = sqlx::query(JOB_TO_CANCEL)
                .bind(id.to_string())
                .fetch_optional(&mut *conn)
                .await?
                .ok_or(Error::JobNotFound(id.to_string()))?;
            let (state, seq, attempt, queue, started_at_ms): (
                JobState,
                i64,
                u32,
                String,
                Option<i64>,
            ) = (
                row.state(0)?,
                row.col(1)?,
                row.u32(2)?,
                row.col(3)?,
                row.col(4)?,
            );
            match state {
                JobState::Queued => {
                    let changed = sqlx::query(CANCEL_JOB)
                        .bind(reason)
                        .bind(now)
                        .bind(id.to_string())
                        .execute(&mut *conn)
                        .await?
                        .rows_affected();
                    if changed != 1 {
                        return Err(Error::Corrupt(format!(
                            "job {id}: vanished while cancelled"
                        )));
                    }
                    tally.finished(&queue, JobState::Cancelled);
                    (vec![*id], JobState::Cancelled)
                }
                JobState::Running => {
                    // The attempt is fenced out here: whatever its worker reports later is
                    // refused. The scheduler tells the worker to stop.
                    cancel_running(conn, seq, attempt, reason, now).await?;
                    running_now.push((*id, attempt));
                    tally.ended(&queue, AttemptOutcome::Cancelled, started_at_ms, now);
                    tally.finished(&queue, JobState::Cancelled);
                    (vec![*id], JobState::Cancelled)
                }
                other => {
                    return Err(Error::FailedPrecondition {
                        id: id.to_string(),
                        reason: format!("already ended ({})", other.as_str()),
                    });
                }
            }
        }
        CancelTarget::Group(group) => {
            if sqlx::query(GROUP_EXISTS)
                .bind(&group.tenant)
                .bind(&group.id)
                .fetch_optional(&mut *conn)
                .await?
                .is_none()
            {
                return Err(Error::GroupNotFound(group.id.clone()));
            }
            let (ids, running) = cancel_group_jobs(conn, group, reason, now, &mut tally).await?;
            running_now.extend(running);
            return finish_cancel(conn, ids, None, running_now, now, tally).await;
        }
    };
    finish_cancel(conn, ids, Some(state), running_now, now, tally).await
}

/// Cancels what depended on the cancelled jobs, and gathers the answer.
async fn finish_cancel(
    conn: &mut PgConnection,
    ids: Vec<JobId>,
    state: Option<JobState>,
    mut running: Vec<(JobId, u32)>,
    now: i64,
    mut tally: Tally,
) -> Result<Cancelled> {
    let mut dependents = Vec::new();
    for id in &ids {
        let (ended, ended_running) =
            end_descendants(conn, *id, JobState::Cancelled, now, &mut tally).await?;
        dependents.extend(ended);
        running.extend(ended_running);
    }
    Ok(Cancelled {
        ids,
        dependents,
        running,
        state,
        metrics: tally,
    })
}

/// Cancels every unfinished job of a group: queued ones, and running ones (their attempts are
/// fenced out here). Returns the ids, and the running ones with their attempt.
pub(super) async fn cancel_group_jobs(
    conn: &mut PgConnection,
    group: &GroupKey,
    reason: &str,
    now: i64,
    tally: &mut Tally,
) -> Result<Descendants> {
    let queued = sqlx::query(CANCEL_GROUP)
        .bind(reason)
        .bind(now)
        .bind(&group.id)
        .bind(&group.tenant)
        .fetch_all(&mut *conn)
        .await?;
    let mut ids = Vec::with_capacity(queued.len());
    for row in queued {
        tally.finished(&row.col::<String>(1)?, JobState::Cancelled);
        ids.push(row.id(0)?);
    }
    let running = sqlx::query(RUNNING_OF_GROUP)
        .bind(&group.id)
        .bind(&group.tenant)
        .fetch_all(&mut *conn)
        .await?;
    let mut running_now = Vec::with_capacity(running.len());
    for row in running {
        let (id, seq, attempt, queue, started_at_ms): (JobId, i64, u32, String, Option<i64>) = (
            row.id(0)?,
            row.col(1)?,
            row.u32(2)?,
            row.col(3)?,
            row.col(4)?,
        );
        tally.ended(&queue, AttemptOutcome::Cancelled, started_at_ms, now);
        tally.finished(&queue, JobState::Cancelled);
        cancel_running(conn, seq, attempt, reason, now).await?;
        running_now.push((id, attempt));
        ids.push(id);
    }
    Ok((ids, running_now))
}

/// Ends a running job `CANCELLED` and its current attempt with it: the attempt is fenced
/// out, so whatever its worker reports later is refused.
async fn cancel_running(
    conn: &mut PgConnection,
    seq: i64,
    attempt: u32,
    reason: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(CANCEL_RUNNING)
        .bind(reason)
        .bind(now)
        .bind(seq)
        .execute(&mut *conn)
        .await?;
    end_attempt(conn, seq, attempt, reason, now).await
}

async fn end_attempt(
    conn: &mut PgConnection,
    seq: i64,
    attempt: u32,
    reason: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(END_ATTEMPT)
        .bind(now)
        .bind(AttemptOutcome::Cancelled.code())
        .bind(reason)
        .bind(seq)
        .bind(i64::from(attempt))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Ends what can no longer happen after `root` ended in `state`: its queued dependents (they
/// needed it to succeed) and, when it was cancelled or ran out of time, its children, running
/// or not (the done channel). All the way down. Returns the jobs it ended and, of those, the
/// running ones with their attempt, for their workers to stop.
pub(super) async fn end_descendants(
    conn: &mut PgConnection,
    root: JobId,
    state: JobState,
    now: i64,
    tally: &mut Tally,
) -> Result<Descendants> {
    let mut frontier: Vec<(JobId, JobState)> = vec![(root, state)];
    let mut ended = Vec::new();
    let mut running = Vec::new();
    while let Some((job, job_state)) = frontier.pop() {
        let reason = dependency_failed(job, job_state);
        let rows = sqlx::query(CANCEL_DEPENDENTS)
            .bind(&reason)
            .bind(now)
            .bind(job.to_string())
            .fetch_all(&mut *conn)
            .await?;
        let mut next = Vec::with_capacity(rows.len());
        for row in rows {
            tally.finished(&row.col::<String>(1)?, JobState::Cancelled);
            next.push(row.id(0)?);
        }
        if matches!(job_state, JobState::Cancelled | JobState::DeadlineExceeded) {
            let reason = format!("its parent {job} ended {}", job_state.wire_name());
            let (kids, kids_running) = cancel_children(conn, job, &reason, now, tally).await?;
            running.extend(kids_running);
            ended.extend(kids.iter().copied());
            frontier.extend(kids.into_iter().map(|id| (id, JobState::Cancelled)));
        }
        ended.extend(next.iter().copied());
        frontier.extend(next.into_iter().map(|id| (id, JobState::Cancelled)));
    }
    Ok((ended, running))
}

/// Cancels a job's children that are still queued or running (not their own descendants),
/// for `reason`. Returns them, and the running ones with their attempt.
async fn cancel_children(
    conn: &mut PgConnection,
    parent: JobId,
    reason: &str,
    now: i64,
    tally: &mut Tally,
) -> Result<Descendants> {
    let kids = sqlx::query(CHILDREN)
        .bind(parent.to_string())
        .fetch_all(&mut *conn)
        .await?;
    let mut ended = Vec::with_capacity(kids.len());
    let mut running = Vec::new();
    for row in kids {
        let (id, seq, kid_state, attempt, queue, started_at_ms): (
            JobId,
            i64,
            JobState,
            u32,
            String,
            Option<i64>,
        ) = (
            row.id(0)?,
            row.col(1)?,
            row.state(2)?,
            row.u32(3)?,
            row.col(4)?,
            row.col(5)?,
        );
        sqlx::query(END_CHILD)
            .bind(reason)
            .bind(now)
            .bind(seq)
            .execute(&mut *conn)
            .await?;
        tally.finished(&queue, JobState::Cancelled);
        if kid_state == JobState::Running {
            tally.ended(&queue, AttemptOutcome::Cancelled, started_at_ms, now);
            end_attempt(conn, seq, attempt, reason, now).await?;
            running.push((id, attempt));
        }
        ended.push(id);
    }
    Ok((ended, running))
}

/// Children belong to their parent's attempt: when attempt `attempt` of `parent` ends other
/// than in success (`how`), its children still queued or running are cancelled, and what
/// depends on them or descends from them, all the way down. A retry submits fresh ones.
pub(super) async fn end_attempt_children(
    conn: &mut PgConnection,
    parent: JobId,
    attempt: u32,
    how: &str,
    now: i64,
    tally: &mut Tally,
) -> Result<Descendants> {
    let reason = format!("attempt {attempt} of its parent {parent} ended {how}");
    let (kids, mut running) = cancel_children(conn, parent, &reason, now, tally).await?;
    let mut ended = kids.clone();
    for kid in kids {
        let (more, more_running) =
            end_descendants(conn, kid, JobState::Cancelled, now, tally).await?;
        ended.extend(more);
        running.extend(more_running);
    }
    Ok((ended, running))
}
