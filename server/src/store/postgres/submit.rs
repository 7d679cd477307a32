//! Storing submitted jobs: idempotency keys, admission (`max_queued`), dependencies and
//! groups, inside the submit's transaction. The rules are `sqlite/submit.rs`'s; what differs
//! is the locks that stand in for SQLite's single writer (see `mod.rs`).

use std::collections::{BTreeSet, HashMap, HashSet};

use sqlx::PgConnection;

use super::{Columns, id_texts};
use crate::{
    domain::{JobId, JobState, ReadyJob, now_ms, scopes},
    error::{Error, Result},
    store::{Durability, NewJob, Origin, Submit, Submitted},
    telemetry::Tally,
};

/// Counts the jobs a submit stored: each new one, and those that ended at once (`CANCELLED`,
/// a dependency having already ended badly).
pub(super) fn tally(tally: &mut Tally, jobs: &[NewJob], done: &[Submitted]) {
    for (job, submitted) in jobs.iter().zip(done).filter(|(_, s)| !s.duplicate) {
        tally.submitted(&job.queue);
        tally.finished(&job.queue, submitted.state);
    }
}

/// The scopes with a `max_queued` among `$1`, locked until this transaction ends: a second
/// submit to a limited scope waits here, then counts what the first one stored.
const LOCK_LIMITS: &str = "SELECT scope, max_queued FROM quotas
    WHERE max_queued IS NOT NULL AND scope = ANY($1) ORDER BY scope FOR UPDATE";
/// Read after the lock (a statement of its own, so it sees what committed while it waited).
const QUEUED: &str = "SELECT scope, sum(queued)::bigint FROM queued_counts
    WHERE scope = ANY($1) GROUP BY scope";

async fn admit(conn: &mut PgConnection, jobs: &[&NewJob]) -> Result<()> {
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
    if adding.is_empty() {
        return Ok(());
    }
    let scopes: Vec<String> = adding.keys().cloned().collect();
    let limits = sqlx::query(LOCK_LIMITS)
        .bind(&scopes)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| Ok((row.col::<String>(0)?, row.col::<i64>(1)?)))
        .collect::<Result<Vec<_>>>()?;
    if limits.is_empty() {
        return Ok(());
    }
    let limited: Vec<String> = limits.iter().map(|(scope, _)| scope.clone()).collect();
    let queued: HashMap<String, i64> = sqlx::query(QUEUED)
        .bind(&limited)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| Ok((row.col::<String>(0)?, row.col::<i64>(1)?)))
        .collect::<Result<_>>()?;
    for (scope, max) in limits {
        let now = queued.get(&scope).copied().unwrap_or(0);
        let more = adding.get(&scope).copied().unwrap_or(0) as i64;
        if now + more > max {
            return Err(Error::QueueFull {
                scope,
                queued: now.max(0) as u64,
                max: max.max(0) as u64,
            });
        }
    }
    Ok(())
}

/// Serializes the submits of one idempotency key (queue, tenant, key) until this transaction
/// ends, so that a second one finds the first one's job.
const LOCK_KEY: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";
/// The job a key is bound to now, if the binding still holds at `$4` (now): its window has
/// not passed, and (for unique_while_active) its job is queued or running.
const FIND_IDEMPOTENT: &str = "SELECT j.id, j.state, j.payload FROM idempotency_keys k
    JOIN jobs j ON j.id = k.job_id
    WHERE k.queue = $1 AND k.tenant_key = $2 AND k.key = $3
      AND (k.expires_at_ms IS NULL OR k.expires_at_ms > $4)
      AND (NOT k.while_active OR j.state IN (10 /* queued */, 20 /* running */))";
/// A new job takes the key (from a binding that no longer holds, if there was one).
const BIND_KEY: &str = "INSERT INTO idempotency_keys (queue, tenant_key, key, job_id,
        expires_at_ms, while_active)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (queue, tenant_key, key) DO UPDATE SET job_id = excluded.job_id,
        expires_at_ms = excluded.expires_at_ms, while_active = excluded.while_active";
/// Debounce: the repeat's payload replaces that of the job it found, while it is queued.
const DEBOUNCE: &str = "UPDATE jobs SET payload = $1 WHERE id = $2 AND state = 10 /* queued */";
/// A dependency's state, locked against its end (or removal) until this submit commits: the
/// transaction that ends it then finds the new edge and cancels the dependent if it must.
const JOB_STATE: &str = "SELECT state, coalesce(tenant_id, '') FROM jobs WHERE id = $1 FOR SHARE";
const INSERT_GROUP: &str =
    "INSERT INTO groups (tenant_key, id, size, cancel_on_failure, created_at_ms, tenant_id)
        VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";
const INSERT_JOB: &str = "INSERT INTO jobs (
        id, queue, kind, payload, priority, max_attempts, timeout_ms, deadline_ms, run_at_ms,
        idempotency_key, concurrency_key, weight, depends_on, group_id, labels, tenant_id,
        parent_job_id, traceparent, tracestate, trace_id, state, error, created_at_ms,
        finished_at_ms, parent_attempt)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15::jsonb, $16, $17,
        $18, $19, $20, $21, $22, $23, $24, $25)
    RETURNING seq";
/// A child names its parent's attempt: it joins only while that attempt is the running one
/// (locked, so the attempt cannot end before the child is stored and found).
const PARENT_RUNS: &str = "SELECT 1 FROM jobs WHERE id = $1 AND state = 20 /* running */
    AND attempt = $2 FOR SHARE";
const INSERT_DEPENDENCY: &str =
    "INSERT INTO dependencies (depends_on, job_id) VALUES ($1, $2) ON CONFLICT DO NOTHING";

/// An idempotency key where it binds: queue, tenant, key.
type KeyOf<'a> = (&'a str, &'a str, &'a str);
/// The job a key of the batch binds to, its state and payload.
type Bound<'a> = (JobId, JobState, &'a [u8]);

pub(super) async fn submit(conn: &mut PgConnection, submit: &Submit) -> Result<Vec<Submitted>> {
    let Submit {
        origin,
        jobs,
        group,
        scope,
        durability,
    } = submit;
    if *durability == Durability::WithNext {
        // Its commit does not wait for the WAL flush: the start's commit, which does, flushes
        // it too (the WAL is flushed in order).
        sqlx::query("SET LOCAL synchronous_commit TO OFF")
            .execute(&mut *conn)
            .await?;
    }
    let now = now_ms();
    if let Some(group) = group {
        // The group is its tenant's: the batch's jobs all carry the caller's tenant.
        let tenant = jobs.first().and_then(|j| j.tenant_id.as_deref());
        let inserted = sqlx::query(INSERT_GROUP)
            .bind(tenant.unwrap_or(""))
            .bind(&group.id)
            .bind(jobs.len() as i64)
            .bind(group.cancel_on_failure)
            .bind(now)
            .bind(tenant)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        if inserted == 0 {
            return Err(Error::GroupExists(group.id.clone()));
        }
    }

    // Every key of the batch, locked in one order (two batches that share keys cannot
    // deadlock on them).
    let keys_to_lock: BTreeSet<String> = jobs
        .iter()
        .filter_map(|job| {
            let key = job.idempotency_key.as_deref()?;
            let tenant = job.tenant_id.as_deref().unwrap_or("");
            // Lengths first: no key can pass for another by containing the separator.
            Some(format!(
                "switchyard.key:{}:{}:{}:{tenant}:{key}",
                job.queue.len(),
                tenant.len(),
                job.queue,
            ))
        })
        .collect();
    for key in &keys_to_lock {
        sqlx::query(LOCK_KEY).bind(key).execute(&mut *conn).await?;
    }

    // First pass: which jobs repeat an idempotency key, of an earlier job or of an earlier
    // entry of this batch. Their dependents then point at that job instead.
    let mut results = Vec::with_capacity(jobs.len());
    let mut replaced: HashMap<JobId, JobId> = HashMap::new();
    let mut keys: HashMap<KeyOf<'_>, Bound<'_>> = HashMap::new();
    for job in jobs {
        let existing = match &job.idempotency_key {
            Some(key) => {
                let tenant = job.tenant_id.as_deref().unwrap_or("");
                match keys.get(&(job.queue.as_str(), tenant, key.as_str())) {
                    Some((id, state, payload)) => Some((*id, *state, payload.to_vec())),
                    None => {
                        let found = match sqlx::query(FIND_IDEMPOTENT)
                            .bind(&job.queue)
                            .bind(tenant)
                            .bind(key)
                            .bind(now)
                            .fetch_optional(&mut *conn)
                            .await?
                        {
                            Some(row) => Some((row.id(0)?, row.state(1)?, row.col::<Vec<u8>>(2)?)),
                            None => None,
                        };
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
                // Debounce: the last repeat's payload is the one that runs, while the job has
                // not started.
                let debounced = job.unique.debounce
                    && payload_differs
                    && state == JobState::Queued
                    && sqlx::query(DEBOUNCE)
                        .bind(&job.payload)
                        .bind(id.to_string())
                        .execute(&mut *conn)
                        .await?
                        .rows_affected()
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

    // Admission counts only the jobs that will be stored: a repeat of an idempotency key
    // returns the first job even when its queue is full.
    let new_jobs: Vec<&NewJob> = jobs
        .iter()
        .zip(&results)
        .filter(|(_, r)| !r.duplicate)
        .map(|(j, _)| j)
        .collect();
    admit(conn, &new_jobs).await?;
    for job in &new_jobs {
        if let (Some(parent), Some(attempt)) = (job.parent_job_id, job.parent_attempt)
            && sqlx::query(PARENT_RUNS)
                .bind(parent.to_string())
                .bind(i64::from(attempt))
                .fetch_optional(&mut *conn)
                .await?
                .is_none()
        {
            return Err(Error::parent_attempt_ended(parent, attempt));
        }
    }
    let in_batch: HashSet<JobId> = jobs.iter().map(|j| j.id).collect();
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
                let found = match sqlx::query(JOB_STATE)
                    .bind(dep.to_string())
                    .fetch_optional(&mut *conn)
                    .await?
                {
                    Some(row) => Some((row.state(0)?, row.col::<String>(1)?)),
                    None => None,
                }
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
        let depends = (!depends_on.is_empty()).then(|| id_texts(&depends_on));
        let labels = (!job.labels.is_empty())
            .then(|| serde_json::to_string(&job.labels).unwrap_or_else(|_| "{}".into()));
        let state = if doomed.is_some() {
            JobState::Cancelled
        } else {
            JobState::Queued
        };
        let seq: i64 = sqlx::query_scalar(INSERT_JOB)
            .bind(job.id.to_string())
            .bind(&job.queue)
            .bind(&job.kind)
            .bind(&job.payload)
            .bind(job.priority)
            .bind(i64::from(job.max_attempts))
            .bind(job.timeout_ms)
            .bind(job.deadline_ms)
            .bind(job.run_at_ms)
            .bind(&job.idempotency_key)
            .bind(&job.concurrency_key)
            .bind(i64::from(job.weight))
            .bind(depends)
            .bind(group.as_ref().map(|g| g.id.as_str()))
            .bind(labels)
            .bind(&job.tenant_id)
            .bind(job.parent_job_id.map(|id| id.to_string()))
            .bind(&job.traceparent)
            .bind(&job.tracestate)
            .bind(&job.trace_id)
            .bind(state.code())
            .bind(&doomed)
            .bind(now)
            .bind(doomed.as_ref().map(|_| now))
            .bind(job.parent_attempt.map(i64::from))
            .fetch_one(&mut *conn)
            .await?;
        for dep in &depends_on {
            sqlx::query(INSERT_DEPENDENCY)
                .bind(dep.to_string())
                .bind(job.id.to_string())
                .execute(&mut *conn)
                .await?;
        }
        if let Some(key) = &job.idempotency_key {
            sqlx::query(BIND_KEY)
                .bind(&job.queue)
                .bind(job.tenant_id.as_deref().unwrap_or(""))
                .bind(key)
                .bind(job.id.to_string())
                .bind(job.unique.for_ms.map(|ms| now.saturating_add(ms)))
                .bind(job.unique.while_active)
                .execute(&mut *conn)
                .await?;
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
