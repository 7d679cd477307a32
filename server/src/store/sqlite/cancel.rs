//! Ending jobs before their time: a cancelled job or group, and everything that can no longer
//! happen after a job ended badly (its queued dependents, and the children of a cancelled or
//! expired parent, all the way down). Runs on the writer thread, inside its transaction.

use rusqlite::{Connection, OptionalExtension, params};

use super::submit::dependency_failed;
use crate::{
    domain::{AttemptOutcome, JobId, JobState, now_ms},
    error::{Error, Result},
    store::{CancelTarget, Cancelled, GroupKey},
    telemetry::Tally,
};

const CANCEL_JOB: &str =
    "UPDATE jobs SET state = 50 /* cancelled */, error = ?1, finished_at_ms = ?2
    WHERE id = ?3 AND state = 10 /* queued */";
const CANCEL_GROUP: &str =
    "UPDATE jobs SET state = 50 /* cancelled */, error = ?1, finished_at_ms = ?2
    WHERE group_id = ?3 AND coalesce(tenant_id, '') = ?4 AND state = 10 /* queued */
    RETURNING id, queue";
/// Queued dependents of one job: they can no longer run. `+state` keeps SQLite from walking
/// every queued job by the state index; the dependents come from the dependency edges.
const CANCEL_DEPENDENTS: &str = "UPDATE jobs SET state = 50 /* cancelled */, error = ?1,
        finished_at_ms = ?2
    WHERE +state = 10 /* queued */ AND id IN (SELECT job_id FROM dependencies WHERE depends_on = ?3)
    RETURNING id, queue";
const CANCEL_RUNNING: &str = "UPDATE jobs SET state = 50 /* cancelled */, error = ?1,
        finished_at_ms = ?2
    WHERE seq = ?3";
const RUNNING_OF_GROUP: &str = "SELECT id, seq, attempt, queue, started_at_ms FROM jobs
    WHERE group_id = ?1 AND coalesce(tenant_id, '') = ?2 AND state = 20 /* running */";
/// What cancelling one job needs to know of it.
const JOB_TO_CANCEL: &str = "SELECT state, seq, attempt, queue, started_at_ms FROM jobs
    WHERE id = ?1";
const GROUP_EXISTS: &str = "SELECT 1 FROM groups WHERE tenant_key = ?1 AND id = ?2";
const CHILDREN: &str = "SELECT id, seq, state, attempt, queue, started_at_ms FROM jobs
    WHERE parent_job_id = ?1 AND state IN (10 /* queued */, 20 /* running */)";
const END_CHILD: &str =
    "UPDATE jobs SET state = 50 /* cancelled */, error = ?1, finished_at_ms = ?2 WHERE seq = ?3";
const END_ATTEMPT: &str = "UPDATE attempts SET finished_at_ms = ?1, outcome = ?2, error = ?3
    WHERE job_seq = ?4 AND number = ?5";

/// The jobs a cascade ended, and of those the running ones with their attempt.
pub(super) type Descendants = (Vec<JobId>, Vec<(JobId, u32)>);

pub(super) fn cancel(conn: &Connection, target: &CancelTarget, reason: &str) -> Result<Cancelled> {
    let now = now_ms();
    let mut tally = Tally::default();
    let mut running_now: Vec<(JobId, u32)> = Vec::new();
    let (ids, state) = match target {
        CancelTarget::Job(id) => {
            let (state, seq, attempt, queue, started_at_ms): (
                JobState,
                i64,
                u32,
                String,
                Option<i64>,
            ) = conn
                .prepare_cached(JOB_TO_CANCEL)?
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
                .ok_or(Error::JobNotFound(id.to_string()))?;
            match state {
                JobState::Queued => {
                    let changed = conn
                        .prepare_cached(CANCEL_JOB)?
                        .execute(params![reason, now, id])?;
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
                    cancel_running(conn, seq, attempt, reason, now)?;
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
            if !conn
                .prepare_cached(GROUP_EXISTS)?
                .exists(params![group.tenant, group.id])?
            {
                return Err(Error::GroupNotFound(group.id.clone()));
            }
            let (ids, running) = cancel_group_jobs(conn, group, reason, now, &mut tally)?;
            running_now.extend(running);
            return finish_cancel(conn, ids, None, running_now, now, tally);
        }
    };
    finish_cancel(conn, ids, Some(state), running_now, now, tally)
}

/// Cancels what depended on the cancelled jobs, and gathers the answer.
fn finish_cancel(
    conn: &Connection,
    ids: Vec<JobId>,
    state: Option<JobState>,
    mut running: Vec<(JobId, u32)>,
    now: i64,
    mut tally: Tally,
) -> Result<Cancelled> {
    let mut dependents = Vec::new();
    for id in &ids {
        let (ended, ended_running) =
            end_descendants(conn, *id, JobState::Cancelled, now, &mut tally)?;
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
pub(super) fn cancel_group_jobs(
    conn: &Connection,
    group: &GroupKey,
    reason: &str,
    now: i64,
    tally: &mut Tally,
) -> Result<Descendants> {
    let queued = conn
        .prepare_cached(CANCEL_GROUP)?
        .query_map(params![reason, now, group.id, group.tenant], |row| {
            Ok((row.get::<_, JobId>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut ids = Vec::with_capacity(queued.len());
    for (id, queue) in queued {
        tally.finished(&queue, JobState::Cancelled);
        ids.push(id);
    }
    let running = conn
        .prepare_cached(RUNNING_OF_GROUP)?
        .query_map(params![group.id, group.tenant], |row| {
            Ok((
                row.get::<_, JobId>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, u32>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, Option<i64>>(4)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut running_now = Vec::with_capacity(running.len());
    for (id, seq, attempt, queue, started_at_ms) in running {
        tally.ended(&queue, AttemptOutcome::Cancelled, started_at_ms, now);
        tally.finished(&queue, JobState::Cancelled);
        cancel_running(conn, seq, attempt, reason, now)?;
        running_now.push((id, attempt));
        ids.push(id);
    }
    Ok((ids, running_now))
}

/// Ends a running job `CANCELLED` and its current attempt with it: the attempt is fenced
/// out, so whatever its worker reports later is refused.
fn cancel_running(conn: &Connection, seq: i64, attempt: u32, reason: &str, now: i64) -> Result<()> {
    conn.prepare_cached(CANCEL_RUNNING)?
        .execute(params![reason, now, seq])?;
    conn.prepare_cached(END_ATTEMPT)?.execute(params![
        now,
        AttemptOutcome::Cancelled,
        reason,
        seq,
        attempt
    ])?;
    Ok(())
}

/// Ends what can no longer happen after `root` ended in `state`: its queued dependents (they
/// needed it to succeed) and, when it was cancelled or ran out of time, its children, running
/// or not (the done channel). All the way down. Returns the jobs it ended and, of those, the
/// running ones with their attempt, for their workers to stop.
pub(super) fn end_descendants(
    conn: &Connection,
    root: JobId,
    state: JobState,
    now: i64,
    tally: &mut Tally,
) -> Result<Descendants> {
    let mut dependents = conn.prepare_cached(CANCEL_DEPENDENTS)?;
    let mut frontier: Vec<(JobId, JobState)> = vec![(root, state)];
    let mut ended = Vec::new();
    let mut running = Vec::new();
    while let Some((job, job_state)) = frontier.pop() {
        let reason = dependency_failed(job, job_state);
        let next = dependents
            .query_map(params![reason, now, job], |row| {
                Ok((row.get::<_, JobId>(0)?, row.get::<_, String>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let next: Vec<JobId> = next
            .into_iter()
            .map(|(id, queue)| {
                tally.finished(&queue, JobState::Cancelled);
                id
            })
            .collect();
        if matches!(job_state, JobState::Cancelled | JobState::DeadlineExceeded) {
            let reason = format!("its parent {job} ended {}", job_state.wire_name());
            let (kids, kids_running) = cancel_children(conn, job, &reason, now, tally)?;
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
fn cancel_children(
    conn: &Connection,
    parent: JobId,
    reason: &str,
    now: i64,
    tally: &mut Tally,
) -> Result<Descendants> {
    let kids = conn
        .prepare_cached(CHILDREN)?
        .query_map(params![parent], |row| {
            Ok((
                row.get::<_, JobId>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, JobState>(2)?,
                row.get::<_, u32>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, Option<i64>>(5)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut end_child = conn.prepare_cached(END_CHILD)?;
    let mut end_attempt = conn.prepare_cached(END_ATTEMPT)?;
    let mut ended = Vec::with_capacity(kids.len());
    let mut running = Vec::new();
    for (id, seq, kid_state, attempt, queue, started_at_ms) in kids {
        end_child.execute(params![reason, now, seq])?;
        tally.finished(&queue, JobState::Cancelled);
        if kid_state == JobState::Running {
            tally.ended(&queue, AttemptOutcome::Cancelled, started_at_ms, now);
            end_attempt.execute(params![
                now,
                AttemptOutcome::Cancelled,
                reason,
                seq,
                attempt
            ])?;
            running.push((id, attempt));
        }
        ended.push(id);
    }
    Ok((ended, running))
}

/// Children belong to their parent's attempt: when attempt `attempt` of `parent` ends other
/// than in success (`how`), its children still queued or running are cancelled, and what
/// depends on them or descends from them, all the way down. A retry submits fresh ones.
pub(super) fn end_attempt_children(
    conn: &Connection,
    parent: JobId,
    attempt: u32,
    how: &str,
    now: i64,
    tally: &mut Tally,
) -> Result<Descendants> {
    let reason = format!("attempt {attempt} of its parent {parent} ended {how}");
    let (kids, mut running) = cancel_children(conn, parent, &reason, now, tally)?;
    let mut ended = kids.clone();
    for kid in kids {
        let (more, more_running) = end_descendants(conn, kid, JobState::Cancelled, now, tally)?;
        ended.extend(more);
        running.extend(more_running);
    }
    Ok((ended, running))
}
