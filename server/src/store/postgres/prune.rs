//! Retention: removing, in small batches, the finished jobs whose state's retention has passed,
//! with every row that belongs to them, the groups they leave empty, and the idempotency keys
//! whose window has passed. `sqlite/prune.rs`'s rules (what stays, and why, is told there).
//! A due job is locked before it is checked, so that a submit cannot make it a dependency
//! between the check and the delete. Postgres gives the freed space back by itself
//! (autovacuum): there is no vacuum step here, only the database's size.

use std::collections::HashSet;

use sqlx::{PgConnection, PgPool, postgres::PgRow};

use super::Columns;
use crate::{
    domain::JobId,
    error::Result,
    store::{Cutoff, GroupKey, Prune, Pruned, StoreSize},
};

/// The next jobs of state `$1` that ended before `$2`, after position (`$3` end, `$4` seq), in
/// order: what one batch looks at (the `jobs_finished` index holds them in this order).
const NEXT_DUE: &str = "SELECT seq, finished_at_ms FROM jobs
    WHERE state = $1 AND finished_at_ms < $2 AND (finished_at_ms, seq) > ($3, $4)
    ORDER BY finished_at_ms, seq
    LIMIT $5";
/// Locks a due job (skipping it if it is gone): a submit that would depend on it waits, and
/// the check that follows sees what committed meanwhile.
const LOCK_JOB: &str = "SELECT 1 FROM jobs WHERE seq = $1 FOR UPDATE";
/// Job `$1`, unless something keeps it. `$2` and `$3` are the watched groups' tenants and ids,
/// pair by pair.
const UNLESS_KEPT: &str = "SELECT j.seq, j.id, j.queue, coalesce(j.tenant_id, ''),
        j.idempotency_key, j.group_id, j.depends_on
    FROM jobs j
    WHERE j.seq = $1
      AND NOT EXISTS (SELECT 1 FROM dependencies d WHERE d.depends_on = j.id)
      AND (j.group_id IS NULL OR (
          NOT EXISTS (SELECT 1 FROM jobs g
              WHERE g.group_id = j.group_id AND g.state < 30 /* unfinished */
                AND coalesce(g.tenant_id, '') = coalesce(j.tenant_id, ''))
          AND NOT EXISTS (SELECT 1 FROM unnest($2::text[], $3::text[]) AS w (tenant, id)
              WHERE w.tenant = coalesce(j.tenant_id, '') AND w.id = j.group_id)))";
const JOB: &str = "SELECT j.seq, j.id, j.queue, coalesce(j.tenant_id, ''), j.idempotency_key,
        j.group_id, j.depends_on
    FROM jobs j WHERE j.seq = $1";
const DELETE_ATTEMPTS: &str = "DELETE FROM attempts WHERE job_seq = $1";
const DELETE_CHECKPOINT: &str = "DELETE FROM job_checkpoints WHERE job_seq = $1";
/// The job's own edges to what it depended on.
const DELETE_DEPENDENCIES: &str =
    "DELETE FROM dependencies WHERE depends_on = ANY($1) AND job_id = $2";
/// The job's key, if it still binds to this job (a later job may have taken it).
const DELETE_OWN_KEY: &str = "DELETE FROM idempotency_keys
    WHERE queue = $1 AND tenant_key = $2 AND key = $3 AND job_id = $4";
const DELETE_JOB: &str = "DELETE FROM jobs WHERE seq = $1";
const GROUP_HAS_JOBS: &str =
    "SELECT 1 FROM jobs WHERE group_id = $2 AND coalesce(tenant_id, '') = $1 LIMIT 1";
/// A group's events whose job is gone: another tenant's group of the same name keeps its own.
const DELETE_GROUP_EVENTS: &str = "DELETE FROM group_events e WHERE e.group_id = $1
    AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = e.job_id)";
const DELETE_GROUP: &str = "DELETE FROM groups WHERE tenant_key = $1 AND id = $2";
const DELETE_EXPIRED_KEYS: &str = "DELETE FROM idempotency_keys
    WHERE (queue, tenant_key, key) IN (
        SELECT queue, tenant_key, key FROM idempotency_keys
        WHERE expires_at_ms <= $1 ORDER BY expires_at_ms LIMIT $2
        FOR UPDATE SKIP LOCKED)";
const SIZE: &str = "SELECT pg_database_size(current_database())";

/// One due job, with what points at its other rows.
struct Due {
    seq: i64,
    id: JobId,
    queue: String,
    tenant_key: String,
    key: Option<String>,
    group: Option<String>,
    depends_on: Option<Vec<String>>,
}

impl Due {
    /// `seq, id, queue, tenant key, idempotency key, group, depends_on`, in that order.
    fn from_row(row: &PgRow) -> Result<Due> {
        Ok(Due {
            seq: row.col(0)?,
            id: row.id(1)?,
            queue: row.col(2)?,
            tenant_key: row.col(3)?,
            key: row.col(4)?,
            group: row.col(5)?,
            depends_on: row.col(6)?,
        })
    }
}

/// One batch: looks at up to `prune.limit` due jobs (removing those nothing keeps) and
/// removes up to as many expired keys.
pub(super) async fn prune(conn: &mut PgConnection, prune: &Prune) -> Result<Pruned> {
    let (watched_tenants, watched_ids): (Vec<&str>, Vec<&str>) = prune
        .watched
        .iter()
        .map(|g| (g.tenant.as_str(), g.id.as_str()))
        .unzip();
    let began = std::time::Instant::now();
    let mut pruned = Pruned::default();
    let mut left = i64::from(prune.limit);
    let mut groups: HashSet<GroupKey> = HashSet::new();
    // Only an end time makes a job due: a live state is never looked at.
    for cutoff in prune.cutoffs.iter().filter(|c| c.state.is_terminal()) {
        if left <= 0 {
            pruned.next.push(*cutoff);
            continue;
        }
        let (after_ms, after_seq) = cutoff.after;
        let due = sqlx::query(NEXT_DUE)
            .bind(cutoff.state.code())
            .bind(cutoff.before_ms)
            .bind(after_ms)
            .bind(after_seq)
            .bind(left)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| Ok((row.col::<i64>(0)?, row.col::<i64>(1)?)))
            .collect::<Result<Vec<_>>>()?;
        let looked = due.len() as i64;
        for &(seq, _) in &due {
            if sqlx::query(LOCK_JOB)
                .bind(seq)
                .fetch_optional(&mut *conn)
                .await?
                .is_none()
            {
                continue;
            }
            let Some(row) = sqlx::query(UNLESS_KEPT)
                .bind(seq)
                .bind(&watched_tenants)
                .bind(&watched_ids)
                .fetch_optional(&mut *conn)
                .await?
            else {
                continue;
            };
            let job = Due::from_row(&row)?;
            remove_job(conn, &job).await?;
            if let Some(group) = job.group {
                groups.insert(GroupKey {
                    tenant: job.tenant_key,
                    id: group,
                });
            }
            pruned.jobs += 1;
        }
        // As many as asked for: more may be due after the last one (fewer: the state is done).
        if looked == left
            && let Some(&(seq, ended)) = due.last()
        {
            pruned.next.push(Cutoff {
                after: (ended, seq),
                ..*cutoff
            });
        }
        left -= looked;
    }
    for group in groups {
        let has_jobs = sqlx::query(GROUP_HAS_JOBS)
            .bind(&group.tenant)
            .bind(&group.id)
            .fetch_optional(&mut *conn)
            .await?
            .is_some();
        if !has_jobs {
            sqlx::query(DELETE_GROUP_EVENTS)
                .bind(&group.id)
                .execute(&mut *conn)
                .await?;
            pruned.groups += sqlx::query(DELETE_GROUP)
                .bind(&group.tenant)
                .bind(&group.id)
                .execute(&mut *conn)
                .await?
                .rows_affected();
        }
    }
    pruned.keys = sqlx::query(DELETE_EXPIRED_KEYS)
        .bind(prune.now_ms)
        .bind(i64::from(prune.limit))
        .execute(&mut *conn)
        .await?
        .rows_affected();
    pruned.done = pruned.next.is_empty() && pruned.keys < u64::from(prune.limit);
    // `work` is what the batch added to a commit that others' writes share: here it shares
    // none (each write is its own transaction, and the batch locks only the rows it removes),
    // so the pruner runs its largest batches, back to back. How long it took is logged.
    tracing::debug!(took = ?began.elapsed(), jobs = pruned.jobs, "store: prune batch");
    pruned.work = std::time::Duration::ZERO;
    Ok(pruned)
}

/// Job `seq` with its attempts, checkpoint, own dependency edges and the idempotency key that
/// still names it (a bulk delete; the caller has checked that nothing needs it).
pub(super) async fn remove(conn: &mut PgConnection, seq: i64) -> Result<()> {
    let row = sqlx::query(JOB)
        .bind(seq)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(row) => remove_job(conn, &Due::from_row(&row)?).await,
        None => Ok(()),
    }
}

async fn remove_job(conn: &mut PgConnection, job: &Due) -> Result<()> {
    sqlx::query(DELETE_ATTEMPTS)
        .bind(job.seq)
        .execute(&mut *conn)
        .await?;
    sqlx::query(DELETE_CHECKPOINT)
        .bind(job.seq)
        .execute(&mut *conn)
        .await?;
    if let Some(depends_on) = &job.depends_on {
        sqlx::query(DELETE_DEPENDENCIES)
            .bind(depends_on)
            .bind(job.id.to_string())
            .execute(&mut *conn)
            .await?;
    }
    if let Some(key) = &job.key {
        sqlx::query(DELETE_OWN_KEY)
            .bind(&job.queue)
            .bind(&job.tenant_key)
            .bind(key)
            .bind(job.id.to_string())
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(DELETE_JOB)
        .bind(job.seq)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The database's size on disk (tables, indexes, TOAST; not the server's WAL). Nothing is
/// "free" to give back by hand: autovacuum reuses dead rows' space.
pub(super) async fn size(pool: &PgPool) -> Result<StoreSize> {
    let bytes: i64 = sqlx::query_scalar(SIZE).fetch_one(pool).await?;
    Ok(StoreSize {
        bytes: bytes.max(0) as u64,
        free_pages: 0,
    })
}
