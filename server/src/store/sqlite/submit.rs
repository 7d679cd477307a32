//! Storing submitted jobs: idempotency keys, admission (`max_queued`), dependencies and
//! groups. Runs on the writer thread, inside its transaction.

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, params};

use super::{counts::Counts, json_ids};
use crate::{
    domain::{JobId, JobState, ReadyJob, now_ms, scopes},
    error::{Error, Result},
    store::{NewJob, Origin, Submit, Submitted},
    telemetry::Tally,
};

/// Counts the jobs a submit stored: each new one, and those that ended at once (`CANCELLED`,
/// a dependency having already ended badly).
pub(super) fn tally(tally: &mut Tally, jobs: &[NewJob], done: &[Submitted]) {
    // `submit` answers each job in order, a repeated idempotency key included.
    for (job, submitted) in jobs.iter().zip(done).filter(|(_, s)| !s.duplicate) {
        tally.submitted(&job.queue);
        tally.finished(&job.queue, submitted.state);
    }
}

/// The `max_queued` limits that apply to these jobs, with how many are queued now: refuses
/// the whole submit if any scope would go past its limit.
const QUEUED_LIMITS: &str = "SELECT q.scope, q.max_queued, coalesce(c.queued, 0)
    FROM quotas q LEFT JOIN queued_counts c ON c.scope = q.scope
    WHERE q.max_queued IS NOT NULL AND q.scope IN (SELECT value FROM json_each(?1))";

/// Queued jobs per scope are the stored count and what this batch moved so far (`counts`).
fn admit(conn: &Connection, counts: &Counts, jobs: &[&NewJob]) -> Result<()> {
    if !counts.any_queued_limit(conn)? {
        return Ok(());
    }
    let mut adding: HashMap<String, u64> = HashMap::new();
    for job in jobs {
        let scopes = scopes(
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
        let queued = queued + counts.queued(&scope);
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

/// The job a key is bound to now, if the binding still holds at `?4` (now): its window has
/// not passed, and (for unique_while_active) its job is queued or running.
const FIND_IDEMPOTENT: &str = "SELECT j.id, j.state, j.payload FROM idempotency_keys k
    JOIN jobs j ON j.id = k.job_id
    WHERE k.queue = ?1 AND k.tenant_key = ?2 AND k.key = ?3
      AND (k.expires_at_ms IS NULL OR k.expires_at_ms > ?4)
      AND (k.while_active = 0 OR j.state IN (10 /* queued */, 20 /* running */))";
/// A new job takes the key (from a binding that no longer holds, if there was one).
const BIND_KEY: &str = "INSERT OR REPLACE INTO idempotency_keys (queue, tenant_key, key, job_id,
        expires_at_ms, while_active)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
/// Debounce: the repeat's payload replaces that of the job it found, while it is queued.
const DEBOUNCE: &str = "UPDATE jobs SET payload = ?1 WHERE id = ?2 AND state = 10 /* queued */";
const JOB_STATE: &str = "SELECT state, coalesce(tenant_id, '') FROM jobs WHERE id = ?1";
const GROUP_EXISTS: &str = "SELECT 1 FROM groups WHERE tenant_key = ?1 AND id = ?2";
const INSERT_GROUP: &str =
    "INSERT INTO groups (tenant_key, id, size, cancel_on_failure, created_at_ms, tenant_id)
        VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const INSERT_JOB: &str = "INSERT INTO jobs (
        id, queue, kind, payload, priority, max_attempts, timeout_ms, deadline_ms, run_at_ms,
        idempotency_key, concurrency_key, weight, depends_on, group_id, labels, tenant_id,
        parent_job_id, traceparent, tracestate, trace_id, state, error, created_at_ms,
        finished_at_ms, parent_attempt)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
        ?19, ?20, ?21, ?22, ?23, ?24, ?25)";
/// A child names its parent's attempt: it joins only while that attempt is the running one.
const PARENT_RUNS: &str = "SELECT 1 FROM jobs WHERE id = ?1 AND state = 20 /* running */
    AND attempt = ?2";
const INSERT_DEPENDENCY: &str =
    "INSERT OR IGNORE INTO dependencies (depends_on, job_id) VALUES (?1, ?2)";

/// An idempotency key where it binds: queue, tenant, key.
type KeyOf<'a> = (&'a str, &'a str, &'a str);
/// The job a key of the batch binds to, its state and payload.
type Bound<'a> = (JobId, JobState, &'a [u8]);

pub(super) fn submit(
    conn: &Connection,
    counts: &Counts,
    submit: &Submit,
) -> Result<Vec<Submitted>> {
    let Submit {
        origin,
        jobs,
        group,
        scope,
        durability: _,
    } = submit;
    let now = now_ms();
    if let Some(group) = group {
        // The group is its tenant's: the batch's jobs all carry the caller's tenant.
        let tenant = jobs.first().and_then(|j| j.tenant_id.as_deref());
        let tenant_key = tenant.unwrap_or("");
        if conn
            .prepare_cached(GROUP_EXISTS)?
            .exists(params![tenant_key, group.id])?
        {
            return Err(Error::GroupExists(group.id.clone()));
        }
        conn.prepare_cached(INSERT_GROUP)?.execute(params![
            tenant_key,
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
    let mut replaced: HashMap<JobId, JobId> = HashMap::new();
    // Each key of this batch, bound to the job it names: an earlier job's, or this batch's
    // first job with it.
    let mut keys: HashMap<KeyOf<'_>, Bound<'_>> = HashMap::new();
    {
        // Statements are taken from the cache only where a job needs them: a lookup costs a
        // hash of the SQL text.
        for job in jobs {
            let existing = match &job.idempotency_key {
                Some(key) => {
                    let tenant = job.tenant_id.as_deref().unwrap_or("");
                    match keys.get(&(job.queue.as_str(), tenant, key.as_str())) {
                        Some((id, state, payload)) => Some((*id, *state, payload.to_vec())),
                        None => {
                            let found = conn
                                .prepare_cached(FIND_IDEMPOTENT)?
                                .query_row(params![job.queue, tenant, key, now], |row| {
                                    Ok((
                                        row.get::<_, JobId>(0)?,
                                        row.get::<_, JobState>(1)?,
                                        row.get::<_, Vec<u8>>(2)?,
                                    ))
                                })
                                .optional()?;
                            if found.is_none() {
                                keys.insert(
                                    (&job.queue, tenant, key),
                                    (job.id, JobState::Queued, &job.payload),
                                );
                            }
                            found
                        }
                    }
                }
                None => None,
            };
            results.push(match existing {
                Some((id, state, payload)) => {
                    replaced.insert(job.id, id);
                    let payload_differs = payload != job.payload;
                    // Debounce: the last repeat's payload is the one that runs, while the
                    // job has not started.
                    let debounced = job.unique.debounce
                        && payload_differs
                        && state == JobState::Queued
                        && conn
                            .prepare_cached(DEBOUNCE)?
                            .execute(params![job.payload, id])?
                            == 1;
                    Submitted {
                        id,
                        duplicate: true,
                        payload_differs,
                        debounced,
                        state,
                        ready: None,
                        waiting_until_ms: None,
                    }
                }
                None => Submitted {
                    id: job.id,
                    duplicate: false,
                    payload_differs: false,
                    debounced: false,
                    state: JobState::Queued,
                    ready: None,
                    waiting_until_ms: None,
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
    admit(conn, counts, &new_jobs)?;
    for job in &new_jobs {
        if let (Some(parent), Some(attempt)) = (job.parent_job_id, job.parent_attempt)
            && !conn
                .prepare_cached(PARENT_RUNS)?
                .exists(params![parent, attempt])?
        {
            return Err(Error::parent_attempt_ended(parent, attempt));
        }
    }
    let in_batch: HashSet<JobId> = jobs.iter().map(|j| j.id).collect();
    let mut insert = conn.prepare_cached(INSERT_JOB)?;
    for (index, (job, result)) in jobs.iter().zip(results.iter_mut()).enumerate() {
        if result.duplicate {
            continue;
        }
        let mut depends_on = Vec::with_capacity(job.depends_on.len());
        // A dependency that already ended other than SUCCEEDED dooms this job at once.
        let mut doomed = None;
        let mut waits = false;
        for (d, dep) in job.depends_on.iter().enumerate() {
            let dep = *replaced.get(dep).unwrap_or(dep);
            let state = if in_batch.contains(&dep) {
                JobState::Queued
            } else {
                // Another tenant's job is, to this caller, no job at all.
                let found = conn
                    .prepare_cached(JOB_STATE)?
                    .query_row(params![dep], |row| {
                        Ok((row.get::<_, JobState>(0)?, row.get::<_, String>(1)?))
                    })
                    .optional()?
                    .filter(|(_, tenant)| scope.as_ref().is_none_or(|s| s == tenant));
                match found {
                    Some((state, _)) => state,
                    None => {
                        let field = match origin {
                            Origin::Submit => format!("depends_on[{d}]"),
                            Origin::Batch => format!("jobs[{index}].depends_on[{d}]"),
                        };
                        return Err(Error::invalid(field, format!("no job {dep}")));
                    }
                }
            };
            if state.is_bad_end() {
                doomed.get_or_insert_with(|| dependency_failed(dep, state));
            } else if state != JobState::Succeeded {
                waits = true;
            }
            depends_on.push(dep);
        }
        let depends_json = (!depends_on.is_empty()).then(|| json_ids(&depends_on));
        let labels = (!job.labels.is_empty())
            .then(|| serde_json::to_string(&job.labels).unwrap_or_else(|_| "{}".into()));
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
            group.as_ref().map(|g| g.id.as_str()),
            labels,
            job.tenant_id,
            job.parent_job_id,
            job.traceparent,
            job.tracestate,
            job.trace_id,
            state,
            doomed,
            now,
            doomed.as_ref().map(|_| now),
            job.parent_attempt,
        ])?;
        let seq = conn.last_insert_rowid();
        if !depends_on.is_empty() {
            let mut insert_dependency = conn.prepare_cached(INSERT_DEPENDENCY)?;
            for dep in &depends_on {
                insert_dependency.execute(params![dep, job.id])?;
            }
        }
        if let Some(key) = &job.idempotency_key {
            conn.prepare_cached(BIND_KEY)?.execute(params![
                job.queue,
                job.tenant_id.as_deref().unwrap_or(""),
                key,
                job.id,
                job.unique.for_ms.map(|ms| now.saturating_add(ms)),
                job.unique.while_active,
            ])?;
        }
        result.state = state;
        if state == JobState::Queued && waits {
            result.waiting_until_ms = job.deadline_ms;
        }
        if state == JobState::Queued && !waits {
            result.ready = Some(ReadyJob {
                id: job.id,
                queue: job.queue.clone(),
                kind: job.kind.clone(),
                priority: job.priority,
                run_at_ms: job.run_at_ms.unwrap_or(0),
                seq,
                deadline_ms: job.deadline_ms,
                weight: job.weight,
                tenant_id: job.tenant_id.clone(),
                concurrency_key: job.concurrency_key.clone(),
                attempt: 0,
            });
        }
    }
    Ok(results)
}

/// Why a job cannot run: a dependency of it ended badly.
pub(super) fn dependency_failed(dep: JobId, end: JobState) -> String {
    format!("dependency {dep} ended {}", end.wire_name())
}
