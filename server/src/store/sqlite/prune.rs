//! Retention: removing, in small batches, the finished jobs whose state's retention has passed,
//! with every row that belongs to them, the groups they leave empty, and the idempotency keys
//! whose window has passed; and giving the freed pages back (incremental vacuum). Runs on the
//! writer thread, inside its transaction; the pruner task (`crate::retention`) decides when.
//!
//! What stays however old it is:
//! - queued and running jobs (they have no end time);
//! - a job another job depends on, for as long as that dependent is kept: its output feeds
//!   the dependent's start, and a requeued dependent runs again on it;
//! - the jobs of a group that still has an unfinished job, or that a `WatchGroup` watches
//!   (its results are read from them); the group and its events go with its last job.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, params};

use super::parse_json_ids;
use crate::{
    domain::JobId,
    error::Result,
    store::{Cutoff, GroupKey, Prune, Pruned, StoreSize},
};

/// The next jobs of state `?1` that ended before `?2`, after position (`?3` end, `?4` seq), in
/// order: what one batch looks at (the `jobs_finished` index holds them in this order).
const NEXT_DUE: &str = "SELECT seq, finished_at_ms FROM jobs
    WHERE state = ?1 AND finished_at_ms < ?2
      AND finished_at_ms >= ?3 AND (finished_at_ms > ?3 OR seq > ?4)
    ORDER BY finished_at_ms, seq
    LIMIT ?5";
/// Job `?1`, unless something keeps it. `?2` is the watched groups as a JSON array of
/// `[tenant, id]` pairs.
const UNLESS_KEPT: &str = "SELECT j.seq, j.id, j.queue, coalesce(j.tenant_id, ''),
        j.idempotency_key, j.group_id, j.depends_on
    FROM jobs j
    WHERE j.seq = ?1
      AND NOT EXISTS (SELECT 1 FROM dependencies d WHERE d.depends_on = j.id)
      AND (j.group_id IS NULL OR (
          NOT EXISTS (SELECT 1 FROM jobs g
              WHERE g.group_id = j.group_id AND g.state < 30 /* unfinished */
                AND coalesce(g.tenant_id, '') = coalesce(j.tenant_id, ''))
          AND NOT EXISTS (SELECT 1 FROM json_each(?2) w
              WHERE json_extract(w.value, '$[0]') = coalesce(j.tenant_id, '')
                AND json_extract(w.value, '$[1]') = j.group_id)))";
const DELETE_ATTEMPTS: &str = "DELETE FROM attempts WHERE job_seq = ?1";
const DELETE_CHECKPOINT: &str = "DELETE FROM job_checkpoints WHERE job_seq = ?1";
/// The job's own edges to what it depended on (by the primary key, from its `depends_on`).
const DELETE_DEPENDENCY: &str = "DELETE FROM dependencies WHERE depends_on = ?1 AND job_id = ?2";
/// The job's key, if it still binds to this job (a later job may have taken it).
const DELETE_OWN_KEY: &str = "DELETE FROM idempotency_keys
    WHERE queue = ?1 AND tenant_key = ?2 AND key = ?3 AND job_id = ?4";
const DELETE_JOB: &str = "DELETE FROM jobs WHERE seq = ?1";
const GROUP_HAS_JOBS: &str =
    "SELECT 1 FROM jobs WHERE group_id = ?2 AND coalesce(tenant_id, '') = ?1 LIMIT 1";
/// A group's events whose job is gone: another tenant's group of the same name keeps its own.
const DELETE_GROUP_EVENTS: &str = "DELETE FROM group_events WHERE group_id = ?1
    AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = group_events.job_id)";
const DELETE_GROUP: &str = "DELETE FROM groups WHERE tenant_key = ?1 AND id = ?2";
const DELETE_EXPIRED_KEYS: &str = "DELETE FROM idempotency_keys
    WHERE (queue, tenant_key, key) IN (
        SELECT queue, tenant_key, key FROM idempotency_keys
        WHERE expires_at_ms <= ?1 ORDER BY expires_at_ms LIMIT ?2)";

/// One due job, with what points at its other rows.
struct Due {
    seq: i64,
    id: JobId,
    queue: String,
    tenant_key: String,
    key: Option<String>,
    group: Option<String>,
    depends_on: Option<String>,
}

impl Due {
    /// `seq, id, queue, tenant key, idempotency key, group, depends_on`, in that order.
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Due> {
        Ok(Due {
            seq: row.get(0)?,
            id: row.get(1)?,
            queue: row.get(2)?,
            tenant_key: row.get(3)?,
            key: row.get(4)?,
            group: row.get(5)?,
            depends_on: row.get(6)?,
        })
    }
}

/// One batch: looks at up to `prune.limit` due jobs (removing those nothing keeps) and
/// removes up to as many expired keys. Bounded by what it looks at, not by what it removes,
/// so that many due jobs that must stay (a large group still running) cost each batch no more.
pub(super) fn prune(conn: &Connection, prune: &Prune) -> Result<Pruned> {
    let watched: Vec<(&str, &str)> = prune
        .watched
        .iter()
        .map(|g| (g.tenant.as_str(), g.id.as_str()))
        .collect();
    let watched = serde_json::to_string(&watched).unwrap_or_else(|_| "[]".into());
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
        let due = conn
            .prepare_cached(NEXT_DUE)?
            .query_map(
                params![cutoff.state, cutoff.before_ms, after_ms, after_seq, left],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let looked = due.len() as i64;
        for &(seq, _) in &due {
            let Some(job) = conn
                .prepare_cached(UNLESS_KEPT)?
                .query_row(params![seq, watched], Due::from_row)
                .optional()?
            else {
                continue;
            };
            remove_job(conn, &job)?;
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
        let has_jobs = conn
            .prepare_cached(GROUP_HAS_JOBS)?
            .exists(params![group.tenant, group.id])?;
        if !has_jobs {
            conn.prepare_cached(DELETE_GROUP_EVENTS)?
                .execute(params![group.id])?;
            pruned.groups += conn
                .prepare_cached(DELETE_GROUP)?
                .execute(params![group.tenant, group.id])? as u64;
        }
    }
    pruned.keys = conn
        .prepare_cached(DELETE_EXPIRED_KEYS)?
        .execute(params![prune.now_ms, prune.limit])? as u64;
    pruned.done = pruned.next.is_empty() && pruned.keys < u64::from(prune.limit);
    pruned.work = began.elapsed();
    Ok(pruned)
}

/// Job `seq` with its attempts, checkpoint, own dependency edges and the idempotency key that
/// still names it (a bulk delete; the caller has checked that nothing needs it).
pub(super) fn remove(conn: &Connection, seq: i64) -> Result<()> {
    let job = conn
        .prepare_cached(
            "SELECT j.seq, j.id, j.queue, coalesce(j.tenant_id, ''), j.idempotency_key, j.group_id,
                j.depends_on FROM jobs j WHERE j.seq = ?1",
        )?
        .query_row(params![seq], Due::from_row)
        .optional()?;
    match job {
        Some(job) => remove_job(conn, &job),
        None => Ok(()),
    }
}

fn remove_job(conn: &Connection, job: &Due) -> Result<()> {
    conn.prepare_cached(DELETE_ATTEMPTS)?
        .execute(params![job.seq])?;
    conn.prepare_cached(DELETE_CHECKPOINT)?
        .execute(params![job.seq])?;
    if let Some(depends_on) = &job.depends_on {
        let mut delete = conn.prepare_cached(DELETE_DEPENDENCY)?;
        for dep in parse_json_ids(depends_on) {
            delete.execute(params![dep, job.id])?;
        }
    }
    if let Some(key) = &job.key {
        conn.prepare_cached(DELETE_OWN_KEY)?.execute(params![
            job.queue,
            job.tenant_key,
            key,
            job.id
        ])?;
    }
    conn.prepare_cached(DELETE_JOB)?.execute(params![job.seq])?;
    Ok(())
}

/// Moves up to `pages` free pages to the end of the file and truncates them off.
pub(super) fn vacuum(conn: &Connection, pages: u32) -> Result<StoreSize> {
    // It frees one page per step: run it to the end (`execute_batch` would step it once).
    let mut stmt = conn.prepare(&format!("PRAGMA incremental_vacuum({})", pages.max(1)))?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    drop(rows);
    drop(stmt);
    size(conn)
}

/// The database's size: its pages and those free inside it.
pub(super) fn size(conn: &Connection) -> Result<StoreSize> {
    let pragma = |name: &str| -> Result<i64> {
        Ok(conn.query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))?)
    };
    let bytes = pragma("page_count")?.saturating_mul(pragma("page_size")?);
    Ok(StoreSize {
        bytes: bytes.max(0) as u64,
        free_pages: pragma("freelist_count")?.max(0) as u64,
    })
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use crate::{
        store::{
            CancelTarget, NewJob, Prune, Store, StoreConfig,
            conformance::{new_job, submit},
            sqlite::SqliteStore,
        },
        telemetry::Metrics,
    };

    fn config(dir: &tempfile::TempDir) -> StoreConfig {
        StoreConfig {
            readers: 1,
            ..StoreConfig::for_tests(crate::store::DbUrl::Sqlite(dir.path().join("prune.db")))
        }
    }

    fn auto_vacuum(config: &StoreConfig) -> i64 {
        let crate::store::DbUrl::Sqlite(path) = &config.db else {
            panic!("a sqlite config")
        };
        Connection::open(path)
            .and_then(|c| c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)))
            .expect("read auto_vacuum")
    }

    /// A new database is made with incremental vacuum: what pruning frees, vacuum gives back
    /// to the file system.
    #[tokio::test]
    async fn freed_pages_go_back_to_the_file_system() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = config(&dir);
        let store = SqliteStore::open(&config, Metrics::new()).expect("open");
        let jobs: Vec<NewJob> = (0..200)
            .map(|_| NewJob {
                payload: vec![7; 8192],
                ..new_job("q")
            })
            .collect();
        let done = submit(&store, jobs, None).await;
        for job in &done {
            store
                .cancel(CancelTarget::Job(job.id), "no".into())
                .await
                .expect("cancel");
        }
        let full = store.vacuum(1).await.expect("size");
        let now = crate::domain::now_ms() + 60_000;
        let prune = Prune {
            cutoffs: vec![crate::store::Cutoff::new(
                crate::domain::JobState::Cancelled,
                now,
            )],
            now_ms: now,
            limit: 500,
            watched: vec![],
        };
        assert_eq!(store.prune(prune).await.expect("prune").jobs, 200);
        let freed = store.vacuum(1).await.expect("size");
        assert!(freed.free_pages > 100, "{freed:?}");
        let after = store.vacuum(1_000_000).await.expect("vacuum");
        assert_eq!(after.free_pages, 0);
        assert!(
            after.bytes + 1024 * 1024 < full.bytes,
            "{after:?} < {full:?}"
        );
        store.close().await.expect("close");
        assert_eq!(auto_vacuum(&config), 2, "incremental");
    }

    /// A small database made without incremental vacuum is switched at open.
    #[tokio::test]
    async fn a_small_old_database_is_switched_at_open() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = config(&dir);
        let crate::store::DbUrl::Sqlite(path) = &config.db else {
            panic!("a sqlite config")
        };
        Connection::open(path)
            .and_then(|c| {
                c.execute_batch("CREATE TABLE old (x INTEGER); INSERT INTO old VALUES (1);")
            })
            .expect("an old database");
        assert_eq!(auto_vacuum(&config), 0);
        let store = SqliteStore::open(&config, Metrics::new()).expect("open");
        store.close().await.expect("close");
        assert_eq!(auto_vacuum(&config), 2);
    }
}
