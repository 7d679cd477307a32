//! Reads: a small pool of read-only connections, each query run where it may block (in place
//! on the coordinator's multi-threaded runtime, else on the blocking pool).

use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter, types::Value};
use tokio::sync::Semaphore;

use super::{json_ids, open_connection, parse_json_ids};
use crate::{
    domain::{
        AttemptRecord, GroupEvent, GroupRecord, JobId, JobProgress, JobRecord, JobState,
        QueueCounts, Quota,
    },
    error::{Error, Result},
    store::{DeadLetterGroup, GroupKey, ListFilter, ListPage, MinuteCount, StoreConfig},
};

pub(super) struct Readers {
    idle: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    pub(super) fn open(config: &StoreConfig, size: usize) -> Result<Readers> {
        let idle = (0..size)
            .map(|_| open_connection(config, true))
            .collect::<Result<Vec<_>>>()?;
        Ok(Readers {
            idle: Arc::new(Mutex::new(idle)),
            permits: Arc::new(Semaphore::new(size)),
        })
    }

    /// Runs `f` on an idle connection, waiting for one if all are busy.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::ShuttingDown)?;
        let conn = self
            .idle
            .lock()
            .map_err(|_| Error::Corrupt("read pool lock poisoned".into()))?
            .pop()
            .ok_or(Error::ShuttingDown)?;
        let idle = self.idle.clone();
        let read = move || {
            let result = f(&conn);
            // The connection goes back before its permit, from here: a caller that went away
            // while its read ran (a client hanging up) loses the pool nothing.
            if !permit.semaphore().is_closed()
                && let Ok(mut idle) = idle.lock()
            {
                idle.push(conn);
            }
            drop(permit);
            result
        };
        // On the coordinator's multi-threaded runtime the read runs on this thread, which
        // hands its other tasks to the rest of the pool meanwhile: a point read takes tens of
        // microseconds, and the hop to the blocking pool and back cost more than that (half of
        // the re-read that ends a `Run`, issue 12).
        match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(read),
            _ => tokio::task::spawn_blocking(read)
                .await
                .map_err(|e| Error::Io(std::io::Error::other(e)))?,
        }
    }

    /// Closes the pool: waiting callers fail, idle connections are dropped.
    pub(super) fn close(&self) {
        self.permits.close();
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

const JOB_COLUMNS: &str = "seq, id, queue, kind, payload, priority, max_attempts, timeout_ms,
    deadline_ms, run_at_ms, idempotency_key, concurrency_key, weight, depends_on, group_id,
    labels, tenant_id, parent_job_id, trace_id, state, attempt, output, error, created_at_ms,
    started_at_ms, finished_at_ms, worker_id, progress_attempt, progress_fraction,
    progress_message, progress_updated_at_ms";

/// The dependencies of a job that have not succeeded yet.
const WAITING_FOR: &str = "SELECT id FROM jobs
    WHERE id IN (SELECT value FROM json_each(?1)) AND state != 30 /* succeeded */ ORDER BY seq";

/// For a queued job with dependencies: those that have not succeeded yet.
fn fill_waiting_for(conn: &Connection, job: &mut JobRecord) -> Result<()> {
    if job.state != JobState::Queued || job.depends_on.is_empty() {
        return Ok(());
    }
    job.waiting_for = conn
        .prepare_cached(WAITING_FOR)?
        .query_map(params![json_ids(&job.depends_on)], |row| row.get(0))?
        .collect::<rusqlite::Result<Vec<JobId>>>()?;
    Ok(())
}

/// The checkpoint the job's next attempt would receive.
const CHECKPOINT: &str = "SELECT checkpoint FROM job_checkpoints WHERE job_seq = ?1";

const ATTEMPTS: &str = "SELECT number, worker_id, started_at_ms, finished_at_ms, outcome, error
    FROM attempts WHERE job_seq = ?1 ORDER BY number";

pub(super) fn get(conn: &Connection, id: JobId) -> Result<Option<JobRecord>> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
    let Some(mut job) = conn
        .prepare_cached(&sql)?
        .query_row(params![id], job_from_row)
        .optional()?
    else {
        return Ok(None);
    };
    job.attempts = conn
        .prepare_cached(ATTEMPTS)?
        .query_map([job.seq], |row| {
            Ok(AttemptRecord {
                number: row.get(0)?,
                worker_id: row.get(1)?,
                started_at_ms: row.get(2)?,
                finished_at_ms: row.get(3)?,
                outcome: row.get(4)?,
                error: row.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if let Some(progress) = &mut job.progress {
        progress.checkpoint = conn
            .prepare_cached(CHECKPOINT)?
            .query_row([job.seq], |row| row.get(0))
            .optional()?;
    }
    fill_waiting_for(conn, &mut job)?;
    Ok(Some(job))
}

pub(super) fn list(conn: &Connection, filter: &ListFilter) -> Result<ListPage> {
    let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE seq > ?");
    let mut args = vec![Value::Integer(filter.after_seq)];
    matching(filter, &mut sql, &mut args);
    let mut add = |clause: &str, value: Value| {
        sql.push_str(clause);
        args.push(value);
    };
    // One row more than the page tells whether another page follows.
    add(
        " ORDER BY seq LIMIT ?",
        Value::Integer(filter.page_size as i64 + 1),
    );
    let mut jobs = conn
        .prepare_cached(&sql)?
        .query_map(params_from_iter(args), job_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let more = jobs.len() > filter.page_size as usize;
    jobs.truncate(filter.page_size as usize);
    let next_after_seq = more.then(|| jobs.last().map(|job| job.seq)).flatten();
    for job in &mut jobs {
        fill_waiting_for(conn, job)?;
    }
    Ok(ListPage {
        jobs,
        next_after_seq,
    })
}

pub(super) fn queue_counts(conn: &Connection) -> Result<Vec<QueueCounts>> {
    let rows = conn
        .prepare_cached("SELECT queue, state, n FROM job_counts WHERE n > 0 ORDER BY queue")?
        .query_map([], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get::<_, i64>(2)?.max(0) as u64,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(QueueCounts::fold(rows))
}

/// Ended jobs per minute and state. No index covers `finished_at_ms`: this reads the ended
/// jobs' rows once (retention keeps their number bounded); the answer is at most a row per
/// minute and state.
const ENDED_PER_MINUTE: &str = "SELECT finished_at_ms / 60000 * 60000 AS minute, state, count(*)
     FROM jobs WHERE finished_at_ms >= ?1 GROUP BY minute, state ORDER BY minute";

pub(super) fn ended_per_minute(conn: &Connection, since_ms: i64) -> Result<Vec<MinuteCount>> {
    let mut stmt = conn.prepare_cached(ENDED_PER_MINUTE)?;
    let rows = stmt.query_map([since_ms], |row| {
        Ok(MinuteCount {
            minute_ms: row.get(0)?,
            state: row.get(1)?,
            count: row.get::<_, i64>(2)?.max(0) as u64,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The oldest queued job per queue, through `jobs_state` (queued rows only).
const OLDEST_QUEUED: &str =
    "SELECT queue, min(created_at_ms) FROM jobs WHERE state = ?1 GROUP BY queue ORDER BY queue";

pub(super) fn oldest_queued(conn: &Connection) -> Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare_cached(OLDEST_QUEUED)?;
    let rows = stmt.query_map([JobState::Queued.code()], |row| {
        Ok((row.get(0)?, row.get(1)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// FAILED jobs by kind and error, through `jobs_state` (failed rows only).
const DEAD_LETTERS: &str = "SELECT kind, error, count(*) AS n, max(finished_at_ms) FROM jobs
     WHERE state = ?1 AND (?2 IS NULL OR tenant_id = ?2)
     GROUP BY kind, error ORDER BY n DESC, kind, error LIMIT ?3";

pub(super) fn dead_letters(
    conn: &Connection,
    tenant: Option<&str>,
    limit: u32,
) -> Result<Vec<DeadLetterGroup>> {
    let mut stmt = conn.prepare_cached(DEAD_LETTERS)?;
    let rows = stmt.query_map(params![JobState::Failed.code(), tenant, limit], |row| {
        Ok(DeadLetterGroup {
            kind: row.get(0)?,
            error: row.get(1)?,
            count: row.get::<_, i64>(2)?.max(0) as u64,
            last_failed_ms: row.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The `AND …` clauses (and their arguments) that select the jobs `filter` matches; its
/// `after_seq` and `page_size` are the caller's.
pub(super) fn matching(filter: &ListFilter, sql: &mut String, args: &mut Vec<Value>) {
    let mut add = |clause: &str, value: Value| {
        sql.push_str(clause);
        args.push(value);
    };
    if let Some(queue) = &filter.queue {
        add(" AND queue = ?", Value::Text(queue.clone()));
    }
    if let Some(state) = filter.state {
        add(" AND state = ?", Value::Integer(state.code()));
    }
    if let Some(kind) = &filter.kind {
        add(" AND kind = ?", Value::Text(kind.clone()));
    }
    if let Some(group) = &filter.group_id {
        add(" AND group_id = ?", Value::Text(group.clone()));
    }
    if let Some(parent) = &filter.parent_job_id {
        add(" AND parent_job_id = ?", Value::Text(parent.to_string()));
    }
    if let Some(tenant) = &filter.tenant_id {
        add(" AND tenant_id = ?", Value::Text(tenant.clone()));
    }
    if let Some(after) = filter.submitted_after_ms {
        add(" AND created_at_ms >= ?", Value::Integer(after));
    }
    if let Some(before) = filter.submitted_before_ms {
        add(" AND created_at_ms < ?", Value::Integer(before));
    }
    if let Some((key, value)) = &filter.label {
        // `labels` is a JSON object of strings; `json_each` compares the key as given (no
        // JSON path syntax to escape).
        add(
            " AND EXISTS (SELECT 1 FROM json_each(jobs.labels) WHERE json_each.key = ?",
            Value::Text(key.clone()),
        );
        add(" AND json_each.value = ?)", Value::Text(value.clone()));
    }
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let depends_on: Option<String> = row.get(13)?;
    let labels: Option<String> = row.get(15)?;
    Ok(JobRecord {
        seq: row.get(0)?,
        id: row.get(1)?,
        queue: row.get(2)?,
        kind: row.get(3)?,
        payload: row.get(4)?,
        priority: row.get(5)?,
        max_attempts: row.get(6)?,
        timeout_ms: row.get(7)?,
        deadline_ms: row.get(8)?,
        run_at_ms: row.get(9)?,
        idempotency_key: row.get(10)?,
        concurrency_key: row.get(11)?,
        weight: row.get(12)?,
        depends_on: depends_on
            .as_deref()
            .map(parse_json_ids)
            .unwrap_or_default(),
        group_id: row.get(14)?,
        labels: labels
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default(),
        tenant_id: row.get(16)?,
        parent_job_id: row.get(17)?,
        trace_id: row.get(18)?,
        state: row.get(19)?,
        attempt: row.get(20)?,
        output: row.get::<_, Option<Vec<u8>>>(21)?.unwrap_or_default(),
        error: row.get(22)?,
        created_at_ms: row.get(23)?,
        started_at_ms: row.get(24)?,
        finished_at_ms: row.get(25)?,
        worker_id: row.get(26)?,
        attempts: vec![],
        waiting_for: vec![],
        // Stored together: a job has progress once an attempt of it has reported.
        progress: match row.get::<_, Option<u32>>(27)? {
            Some(attempt) => Some(JobProgress {
                attempt,
                fraction: row.get(28)?,
                message: row.get(29)?,
                updated_at_ms: row.get::<_, Option<i64>>(30)?.unwrap_or_default(),
                checkpoint: None,
            }),
            None => None,
        },
    })
}

const GROUP: &str = "SELECT id, size, cancel_on_failure, created_at_ms, failed_job_id, error,
        tenant_id
    FROM groups WHERE id = ?1 AND (?2 IS NULL OR tenant_key = ?2)
    ORDER BY tenant_key LIMIT 1";
const GROUP_COUNTS: &str = "SELECT state, count(*) FROM jobs
    WHERE group_id = ?1 AND coalesce(tenant_id, '') = ?2 GROUP BY state";

/// A group with its counts by state, if it exists in `tenant`'s namespace (or any, for `None`).
pub(super) fn group(
    conn: &Connection,
    id: &str,
    tenant: Option<&str>,
) -> Result<Option<GroupRecord>> {
    let Some(mut group) = conn
        .prepare_cached(GROUP)?
        .query_row(params![id, tenant], |row| {
            Ok(GroupRecord {
                id: row.get(0)?,
                size: row.get(1)?,
                cancel_on_failure: row.get(2)?,
                created_at_ms: row.get(3)?,
                failed_job_id: row.get(4)?,
                error: row.get(5)?,
                tenant_id: row.get(6)?,
                ..Default::default()
            })
        })
        .optional()?
    else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(GROUP_COUNTS)?;
    let tenant_key = group.tenant_id.clone().unwrap_or_default();
    let mut rows = stmt.query(params![id, tenant_key])?;
    while let Some(row) = rows.next()? {
        group.count(row.get(0)?, row.get(1)?);
    }
    Ok(Some(group))
}

const GROUP_EVENTS: &str = "SELECT e.seq, j.id, j.state, j.output, j.error
    FROM group_events e JOIN jobs j ON j.id = e.job_id
    WHERE e.group_id = ?1 AND coalesce(j.tenant_id, '') = ?4 AND e.seq > ?2
    ORDER BY e.seq LIMIT ?3";

/// Up to `limit` results of a group's jobs that ended after cursor `after`, in order.
pub(super) fn group_events(
    conn: &Connection,
    group: &GroupKey,
    after: i64,
    limit: u32,
) -> Result<Vec<GroupEvent>> {
    Ok(conn
        .prepare_cached(GROUP_EVENTS)?
        .query_map(params![group.id, after, limit, group.tenant], |row| {
            Ok(GroupEvent {
                cursor: row.get(0)?,
                job_id: row.get(1)?,
                state: row.get(2)?,
                output: row.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default(),
                error: row.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

const QUOTAS: &str = "SELECT q.scope, q.max_in_flight, q.max_queued, q.rate_per_second, q.burst,
        coalesce(c.queued, 0), q.attempt_timeout_ms
    FROM quotas q LEFT JOIN queued_counts c ON c.scope = q.scope ORDER BY q.scope";

/// Every quota, with the jobs queued in its scope now.
pub(super) fn quotas(conn: &Connection) -> Result<Vec<(Quota, u64)>> {
    Ok(conn
        .prepare_cached(QUOTAS)?
        .query_map([], |row| {
            Ok((
                Quota {
                    scope: row.get(0)?,
                    max_in_flight: row.get(1)?,
                    max_queued: row.get(2)?,
                    rate_per_second: row.get(3)?,
                    burst: row.get(4)?,
                    attempt_timeout_ms: row.get(6)?,
                },
                row.get::<_, i64>(5)?.max(0) as u64,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Queued jobs with a deadline that still wait for a dependency to succeed.
const WAITING: &str = "SELECT j.id, j.deadline_ms FROM jobs j
    WHERE j.state = 10 /* queued */ AND j.deadline_ms IS NOT NULL AND EXISTS (
        SELECT 1 FROM dependencies d JOIN jobs p ON p.id = d.depends_on
        WHERE d.job_id = j.id AND p.state != 30 /* succeeded */)";

/// Queued jobs waiting for their dependencies, with their deadlines (for the scheduler's
/// timers at start).
pub(super) fn waiting(conn: &Connection) -> Result<Vec<(JobId, i64)>> {
    Ok(conn
        .prepare_cached(WAITING)?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(super) fn paused(conn: &Connection) -> Result<Vec<String>> {
    Ok(conn
        .prepare_cached("SELECT queue FROM paused_queues ORDER BY queue")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DbUrl, StoreConfig};

    fn pool(dir: &tempfile::TempDir) -> Readers {
        let config = StoreConfig::for_tests(DbUrl::Sqlite(dir.path().join("readers.db")));
        drop(open_connection(&config, false).expect("create the database"));
        Readers::open(&config, 1).expect("open the pool")
    }

    /// A caller that goes away while its read runs (a client hanging up on `Get`) must not take
    /// the pool's connection with it: with one connection, every later read would fail.
    async fn a_read_whose_caller_goes_away_keeps_its_connection(in_place_reads_end_first: bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let readers = Arc::new(pool(&dir));
        let (started, is_started) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let first = tokio::spawn({
            let readers = readers.clone();
            async move {
                readers
                    .run(move |conn| {
                        let _ = started.send(());
                        let _ = released.recv();
                        Ok(conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?)
                    })
                    .await
            }
        });
        is_started.await.expect("the first read started");
        first.abort();
        let _ = release.send(());
        // On the blocking pool the caller is gone before the read ends; in place, the read
        // holds its task until it ends, so the abort comes too late to matter.
        let outcome = first.await;
        assert_eq!(outcome.is_ok(), in_place_reads_end_first, "{outcome:?}");
        for _ in 0..3 {
            let n = readers
                .run(|conn| Ok(conn.query_row("SELECT 2", [], |r| r.get::<_, i64>(0))?))
                .await
                .expect("a read after the abandoned one");
            assert_eq!(n, 2);
        }
    }

    #[tokio::test]
    async fn on_the_blocking_pool() {
        a_read_whose_caller_goes_away_keeps_its_connection(false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_place_on_a_multi_threaded_runtime() {
        a_read_whose_caller_goes_away_keeps_its_connection(true).await;
    }
}
