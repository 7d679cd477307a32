//! Reads: a small pool of read-only connections, each query run on the blocking pool.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter, types::Value};
use switchyard_proto::v1::{
    self, Attempt, AttemptOutcome, BlockedOn, BlockedReason, Job, JobState,
};
use tokio::sync::Semaphore;

use super::{SyncMode, duration, open_connection, timestamp};
use crate::error::{Error, Result};

pub(crate) struct Readers {
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    pub(crate) fn open(path: &Path, sync: SyncMode, size: usize) -> Result<Readers> {
        let idle = (0..size)
            .map(|_| open_connection(path, sync, true))
            .collect::<Result<Vec<_>>>()?;
        Ok(Readers {
            idle: Mutex::new(idle),
            permits: Arc::new(Semaphore::new(size)),
        })
    }

    /// Runs `f` on an idle connection, waiting for one if all are busy.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let _permit = self
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
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let result = f(&conn);
            (conn, result)
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
        result
    }

    /// Closes the pool: waiting callers fail, idle connections are dropped.
    pub(crate) fn close(&self) {
        self.permits.close();
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

/// Which jobs `List` returns.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub queue: Option<String>,
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub group_id: Option<String>,
    pub parent_job_id: Option<String>,
    /// Only this tenant's jobs.
    pub tenant_id: Option<String>,
    /// Only jobs submitted after this sequence number (from the page token).
    pub after_seq: i64,
    pub page_size: u32,
}

#[derive(Debug, Clone)]
pub struct ListPage {
    pub jobs: Vec<Job>,
    /// The sequence number of the last job, when there are more after it.
    pub next_after_seq: Option<i64>,
}

const JOB_COLUMNS: &str = "seq, id, queue, kind, payload, priority, max_attempts, timeout_ms,
    deadline_ms, run_at_ms, idempotency_key, concurrency_key, weight, depends_on, group_id,
    labels, tenant_id, parent_job_id, trace_id, state, attempt, output, error, created_at_ms,
    started_at_ms, finished_at_ms, worker_id";

/// The dependencies of a job that have not succeeded yet.
const WAITING_FOR: &str = "SELECT id FROM jobs
    WHERE id IN (SELECT value FROM json_each(?1)) AND state != ?2 ORDER BY seq";

/// Marks a queued job that waits for dependencies as blocked on them.
fn explain_dependencies(conn: &Connection, job: &mut Job) -> Result<()> {
    if job.state != JobState::Queued as i32 || job.depends_on.is_empty() {
        return Ok(());
    }
    let ids = serde_json::to_string(&job.depends_on)
        .map_err(|e| Error::Corrupt(format!("job {}: depends_on: {e}", job.job_id)))?;
    let waiting_for = conn
        .prepare_cached(WAITING_FOR)?
        .query_map(params![ids, JobState::Succeeded as i32], |row| row.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    if !waiting_for.is_empty() {
        job.blocked_on = Some(BlockedOn {
            reason: BlockedReason::Dependencies as i32,
            detail: format!(
                "waiting for {} of its {} dependencies to succeed",
                waiting_for.len(),
                job.depends_on.len()
            ),
            waiting_for,
            ..Default::default()
        });
    }
    Ok(())
}

const ATTEMPTS: &str = "SELECT number, worker_id, started_at_ms, finished_at_ms, outcome, error
    FROM attempts WHERE job_seq = ?1 ORDER BY number";

pub(crate) fn get(conn: &Connection, id: &str) -> Result<Option<Job>> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
    let Some((seq, mut job)) = conn
        .prepare_cached(&sql)?
        .query_row([id], job_from_row)
        .optional()?
    else {
        return Ok(None);
    };
    job.attempts = conn
        .prepare_cached(ATTEMPTS)?
        .query_map([seq], |row| {
            Ok(Attempt {
                number: row.get(0)?,
                worker_id: row.get(1)?,
                started_at: Some(timestamp(row.get(2)?)),
                finished_at: row.get::<_, Option<i64>>(3)?.map(timestamp),
                outcome: row
                    .get::<_, Option<i32>>(4)?
                    .unwrap_or(AttemptOutcome::Unspecified as i32),
                error: row.get::<_, Option<String>>(5)?.unwrap_or_default(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    explain_dependencies(conn, &mut job)?;
    Ok(Some(job))
}

pub(crate) fn list(conn: &Connection, filter: &ListFilter) -> Result<ListPage> {
    let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE seq > ?");
    let mut args = vec![Value::Integer(filter.after_seq)];
    let mut add = |clause: &str, value: Value| {
        sql.push_str(clause);
        args.push(value);
    };
    if let Some(queue) = &filter.queue {
        add(" AND queue = ?", Value::Text(queue.clone()));
    }
    if let Some(state) = filter.state {
        add(" AND state = ?", Value::Integer(state as i64));
    }
    if let Some(kind) = &filter.kind {
        add(" AND kind = ?", Value::Text(kind.clone()));
    }
    if let Some(group) = &filter.group_id {
        add(" AND group_id = ?", Value::Text(group.clone()));
    }
    if let Some(parent) = &filter.parent_job_id {
        add(" AND parent_job_id = ?", Value::Text(parent.clone()));
    }
    if let Some(tenant) = &filter.tenant_id {
        add(" AND tenant_id = ?", Value::Text(tenant.clone()));
    }
    // One row more than the page tells whether another page follows.
    add(
        " ORDER BY seq LIMIT ?",
        Value::Integer(filter.page_size as i64 + 1),
    );
    let mut rows = conn
        .prepare_cached(&sql)?
        .query_map(params_from_iter(args), job_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let more = rows.len() > filter.page_size as usize;
    rows.truncate(filter.page_size as usize);
    let next_after_seq = more.then(|| rows.last().map(|(seq, _)| *seq)).flatten();
    let mut jobs: Vec<Job> = rows.into_iter().map(|(_, job)| job).collect();
    for job in &mut jobs {
        explain_dependencies(conn, job)?;
    }
    Ok(ListPage {
        jobs,
        next_after_seq,
    })
}

pub(crate) fn queue_stats(conn: &Connection) -> Result<Vec<v1::QueueStats>> {
    let mut out: Vec<v1::QueueStats> = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT queue, state, count(*) FROM jobs GROUP BY queue, state ORDER BY queue",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let queue: String = row.get(0)?;
        let state: i32 = row.get(1)?;
        let count: u64 = row.get::<_, i64>(2)? as u64;
        if out.last().is_none_or(|q| q.queue != queue) {
            out.push(v1::QueueStats {
                queue: queue.clone(),
                ..Default::default()
            });
        }
        let Some(stats) = out.last_mut() else {
            continue;
        };
        match JobState::try_from(state) {
            Ok(JobState::Queued) => stats.queued = count,
            Ok(JobState::Running) => stats.running = count,
            Ok(JobState::Succeeded) => stats.succeeded = count,
            Ok(JobState::Failed) => stats.failed = count,
            Ok(JobState::Cancelled) => stats.cancelled = count,
            Ok(JobState::DeadlineExceeded) => stats.deadline_exceeded = count,
            _ => return Err(Error::Corrupt(format!("queue {queue}: state {state}"))),
        }
    }
    Ok(out)
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<(i64, Job)> {
    let seq: i64 = row.get(0)?;
    let depends_on: Option<String> = row.get(13)?;
    let labels: Option<String> = row.get(15)?;
    let job = Job {
        job_id: row.get(1)?,
        queue: row.get(2)?,
        kind: row.get(3)?,
        payload: row.get(4)?,
        priority: row.get(5)?,
        max_attempts: row.get(6)?,
        timeout: row.get::<_, Option<i64>>(7)?.map(duration),
        deadline: row.get::<_, Option<i64>>(8)?.map(timestamp),
        run_at: row.get::<_, Option<i64>>(9)?.map(timestamp),
        idempotency_key: row.get::<_, Option<String>>(10)?.unwrap_or_default(),
        concurrency_key: row.get::<_, Option<String>>(11)?.unwrap_or_default(),
        weight: row.get(12)?,
        depends_on: depends_on
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default(),
        group_id: row.get::<_, Option<String>>(14)?.unwrap_or_default(),
        labels: labels
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default(),
        tenant_id: row.get::<_, Option<String>>(16)?.unwrap_or_default(),
        parent_job_id: row.get::<_, Option<String>>(17)?.unwrap_or_default(),
        trace_id: row.get::<_, Option<String>>(18)?.unwrap_or_default(),
        state: row.get(19)?,
        attempt: row.get(20)?,
        output: row.get::<_, Option<Vec<u8>>>(21)?.unwrap_or_default(),
        error: row.get::<_, Option<String>>(22)?.unwrap_or_default(),
        created_at: Some(timestamp(row.get(23)?)),
        started_at: row.get::<_, Option<i64>>(24)?.map(timestamp),
        finished_at: row.get::<_, Option<i64>>(25)?.map(timestamp),
        worker_id: row.get::<_, Option<String>>(26)?.unwrap_or_default(),
        blocked_on: None,
        attempts: vec![],
    };
    Ok((seq, job))
}

const GROUP: &str = "SELECT id, size, cancel_on_failure, created_at_ms, failed_job_id, error,
        tenant_id
    FROM groups WHERE id = ?1";
const GROUP_COUNTS: &str = "SELECT state, count(*) FROM jobs WHERE group_id = ?1 GROUP BY state";

/// A group with its counts by state, if it exists.
pub(crate) fn group(conn: &Connection, id: &str) -> Result<Option<v1::Group>> {
    let Some(mut group) = conn
        .prepare_cached(GROUP)?
        .query_row([id], |row| {
            Ok(v1::Group {
                group_id: row.get(0)?,
                size: row.get(1)?,
                cancel_on_failure: row.get(2)?,
                created_at: Some(timestamp(row.get(3)?)),
                failed_job_id: row.get::<_, Option<String>>(4)?.unwrap_or_default(),
                error: row.get::<_, Option<String>>(5)?.unwrap_or_default(),
                tenant_id: row.get::<_, Option<String>>(6)?.unwrap_or_default(),
                ..Default::default()
            })
        })
        .optional()?
    else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(GROUP_COUNTS)?;
    let mut rows = stmt.query([id])?;
    while let Some(row) = rows.next()? {
        let count: u32 = row.get(1)?;
        match JobState::try_from(row.get::<_, i32>(0)?) {
            Ok(JobState::Queued) => group.queued = count,
            Ok(JobState::Running) => group.running = count,
            Ok(JobState::Succeeded) => group.succeeded = count,
            Ok(JobState::Failed) => group.failed = count,
            Ok(JobState::Cancelled) => group.cancelled = count,
            Ok(JobState::DeadlineExceeded) => group.deadline_exceeded = count,
            _ => {
                return Err(Error::Corrupt(format!(
                    "group {id}: a job in an unknown state"
                )));
            }
        }
    }
    group.state = group_state(&group) as i32;
    Ok(Some(group))
}

/// RUNNING until every job has ended; then FAILED if one failed or ran out of time,
/// CANCELLED if any was cancelled, SUCCEEDED if all succeeded.
fn group_state(g: &v1::Group) -> JobState {
    if g.queued + g.running > 0 {
        JobState::Running
    } else if g.failed + g.deadline_exceeded > 0 || !g.error.is_empty() {
        JobState::Failed
    } else if g.cancelled > 0 {
        JobState::Cancelled
    } else {
        JobState::Succeeded
    }
}

const GROUP_EVENTS: &str = "SELECT e.seq, j.id, j.state, j.output, j.error
    FROM group_events e JOIN jobs j ON j.id = e.job_id
    WHERE e.group_id = ?1 AND e.seq > ?2 ORDER BY e.seq LIMIT ?3";

/// Up to `limit` results of a group's jobs that ended after cursor `after`, in order.
pub(crate) fn group_events(
    conn: &Connection,
    group: &str,
    after: i64,
    limit: u32,
) -> Result<Vec<(i64, v1::JobResult)>> {
    Ok(conn
        .prepare_cached(GROUP_EVENTS)?
        .query_map(params![group, after, limit], |row| {
            Ok((
                row.get(0)?,
                v1::JobResult {
                    job_id: row.get(1)?,
                    state: row.get(2)?,
                    output: row.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default(),
                    error: row.get::<_, Option<String>>(4)?.unwrap_or_default(),
                },
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

const QUOTAS: &str = "SELECT q.scope, q.max_in_flight, q.max_queued, q.rate_per_second, q.burst,
        coalesce(c.queued, 0)
    FROM quotas q LEFT JOIN queued_counts c ON c.scope = q.scope ORDER BY q.scope";

/// Every quota, with the jobs queued in its scope now.
pub(crate) fn quotas(conn: &Connection) -> Result<Vec<v1::Quota>> {
    Ok(conn
        .prepare_cached(QUOTAS)?
        .query_map([], |row| {
            Ok(v1::Quota {
                scope: row.get(0)?,
                max_in_flight: row.get(1)?,
                max_queued: row.get(2)?,
                rate_per_second: row.get(3)?,
                burst: row.get(4)?,
                held: 0,
                queued: row.get::<_, i64>(5)?.max(0) as u64,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(crate) fn paused(conn: &Connection) -> Result<Vec<String>> {
    Ok(conn
        .prepare_cached("SELECT queue FROM paused_queues ORDER BY queue")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}
