//! Reads, on the pool (each a statement or a few, outside any write's transaction). Text is
//! ordered bytewise (`COLLATE "C"`), as SQLite orders it, whatever the database's collation.

use sqlx::{AssertSqlSafe, PgPool, postgres::PgRow};

use super::{Columns, id_texts};
use crate::{
    domain::{
        AttemptRecord, GroupEvent, GroupRecord, JobId, JobProgress, JobRecord, JobState,
        QueueCounts, Quota,
    },
    error::Result,
    store::{DeadLetterGroup, GroupKey, ListFilter, ListPage, MinuteCount},
};

/// A statement built from parts, with its arguments numbered as they are added.
#[derive(Debug, Default)]
pub(super) struct Sql {
    pub text: String,
    pub args: Vec<Arg>,
}

/// One argument of a built statement.
#[derive(Debug, Clone)]
pub(super) enum Arg {
    Int(i64),
    Text(String),
    Texts(Vec<String>),
    Ints(Vec<i64>),
}

impl Sql {
    pub fn new(text: &str) -> Sql {
        Sql {
            text: text.to_owned(),
            args: Vec::new(),
        }
    }

    /// Appends `clause`, whose `$?` becomes the next argument's number.
    pub fn push(&mut self, clause: &str, arg: Arg) -> &mut Sql {
        self.args.push(arg);
        let n = format!("${}", self.args.len());
        self.text.push_str(&clause.replace("$?", &n));
        self
    }

    pub fn query(&self) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let mut query = sqlx::query(AssertSqlSafe(self.text.clone()));
        for arg in &self.args {
            query = match arg {
                Arg::Int(n) => query.bind(*n),
                Arg::Text(t) => query.bind(t.as_str()),
                Arg::Texts(t) => query.bind(t.as_slice()),
                Arg::Ints(n) => query.bind(n.as_slice()),
            };
        }
        query
    }
}

const JOB_COLUMNS: &str = "seq, id, queue, kind, payload, priority, max_attempts, timeout_ms,
    deadline_ms, run_at_ms, idempotency_key, concurrency_key, weight, depends_on, group_id,
    labels::text, tenant_id, parent_job_id, trace_id, state, attempt, output, error,
    created_at_ms, started_at_ms, finished_at_ms, worker_id, progress_attempt,
    progress_fraction, progress_message, progress_updated_at_ms";

/// The dependencies of a job that have not succeeded yet.
const WAITING_FOR: &str = "SELECT id FROM jobs
    WHERE id = ANY($1) AND state != 30 /* succeeded */ ORDER BY seq";

/// For a queued job with dependencies: those that have not succeeded yet.
async fn fill_waiting_for(pool: &PgPool, job: &mut JobRecord) -> Result<()> {
    if job.state != JobState::Queued || job.depends_on.is_empty() {
        return Ok(());
    }
    job.waiting_for = sqlx::query(WAITING_FOR)
        .bind(id_texts(&job.depends_on))
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| row.id(0))
        .collect::<Result<_>>()?;
    Ok(())
}

/// The checkpoint the job's next attempt would receive.
const CHECKPOINT: &str = "SELECT checkpoint FROM job_checkpoints WHERE job_seq = $1";

const ATTEMPTS: &str = "SELECT number, worker_id, started_at_ms, finished_at_ms, outcome, error
    FROM attempts WHERE job_seq = $1 ORDER BY number";

pub(super) async fn get(pool: &PgPool, id: JobId) -> Result<Option<JobRecord>> {
    let Some(row) = sqlx::query(AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"
    )))
    .bind(id.to_string())
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let mut job = job_from_row(&row)?;
    job.attempts = sqlx::query(ATTEMPTS)
        .bind(job.seq)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(AttemptRecord {
                number: row.u32(0)?,
                worker_id: row.col(1)?,
                started_at_ms: row.col(2)?,
                finished_at_ms: row.col(3)?,
                outcome: row.outcome(4)?,
                error: row.col(5)?,
            })
        })
        .collect::<Result<_>>()?;
    if let Some(progress) = &mut job.progress {
        progress.checkpoint = sqlx::query_scalar(CHECKPOINT)
            .bind(job.seq)
            .fetch_optional(pool)
            .await?;
    }
    fill_waiting_for(pool, &mut job).await?;
    Ok(Some(job))
}

pub(super) async fn list(pool: &PgPool, filter: &ListFilter) -> Result<ListPage> {
    let mut sql = Sql::new(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE true"));
    sql.push(" AND seq > $?", Arg::Int(filter.after_seq));
    matching(filter, &mut sql);
    // One row more than the page tells whether another page follows.
    sql.push(
        " ORDER BY seq LIMIT $?",
        Arg::Int(i64::from(filter.page_size) + 1),
    );
    let mut jobs = sql
        .query()
        .fetch_all(pool)
        .await?
        .iter()
        .map(job_from_row)
        .collect::<Result<Vec<_>>>()?;
    let more = jobs.len() > filter.page_size as usize;
    jobs.truncate(filter.page_size as usize);
    let next_after_seq = more.then(|| jobs.last().map(|job| job.seq)).flatten();
    for job in &mut jobs {
        fill_waiting_for(pool, job).await?;
    }
    Ok(ListPage {
        jobs,
        next_after_seq,
    })
}

/// From the trigger-kept `job_counts` (migration 0002): a few rows per queue and state.
const QUEUE_COUNTS: &str = "SELECT queue, state, sum(n)::BIGINT FROM job_counts
    GROUP BY queue, state HAVING sum(n) > 0 ORDER BY queue COLLATE \"C\"";

pub(super) async fn queue_counts(pool: &PgPool) -> Result<Vec<QueueCounts>> {
    let rows = sqlx::query(QUEUE_COUNTS)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| Ok((row.col(0)?, row.state(1)?, row.col::<i64>(2)?.max(0) as u64)))
        .collect::<Result<Vec<_>>>()?;
    Ok(QueueCounts::fold(rows))
}

/// Ended jobs per minute and state (`jobs_finished` holds only ended jobs).
const ENDED_PER_MINUTE: &str = "SELECT finished_at_ms / 60000 * 60000 AS minute, state, count(*)
     FROM jobs WHERE finished_at_ms >= $1 GROUP BY minute, state ORDER BY minute, state";

pub(super) async fn ended_per_minute(pool: &PgPool, since_ms: i64) -> Result<Vec<MinuteCount>> {
    sqlx::query(ENDED_PER_MINUTE)
        .bind(since_ms)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(MinuteCount {
                minute_ms: row.col(0)?,
                state: row.state(1)?,
                count: row.col::<i64>(2)?.max(0) as u64,
            })
        })
        .collect()
}

/// The oldest queued job per queue, through `jobs_state` (queued rows only).
const OLDEST_QUEUED: &str =
    "SELECT queue, min(created_at_ms) FROM jobs WHERE state = $1 GROUP BY queue
    ORDER BY queue COLLATE \"C\"";

pub(super) async fn oldest_queued(pool: &PgPool) -> Result<Vec<(String, i64)>> {
    sqlx::query(OLDEST_QUEUED)
        .bind(JobState::Queued.code())
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| Ok((row.col(0)?, row.col(1)?)))
        .collect()
}

/// FAILED jobs by kind and error, through `jobs_state` (failed rows only).
const DEAD_LETTERS: &str = "SELECT kind, error, count(*) AS n, max(finished_at_ms) FROM jobs
     WHERE state = $1 AND ($2::text IS NULL OR tenant_id = $2)
     GROUP BY kind, error ORDER BY n DESC, kind COLLATE \"C\", error COLLATE \"C\" NULLS FIRST LIMIT $3";

pub(super) async fn dead_letters(
    pool: &PgPool,
    tenant: Option<&str>,
    limit: u32,
) -> Result<Vec<DeadLetterGroup>> {
    sqlx::query(DEAD_LETTERS)
        .bind(JobState::Failed.code())
        .bind(tenant)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(DeadLetterGroup {
                kind: row.col(0)?,
                error: row.col(1)?,
                count: row.col::<i64>(2)?.max(0) as u64,
                last_failed_ms: row.col(3)?,
            })
        })
        .collect()
}

/// The `AND …` clauses (and their arguments) that select the jobs `filter` matches; its
/// `after_seq` and `page_size` are the caller's.
pub(super) fn matching(filter: &ListFilter, sql: &mut Sql) {
    if let Some(queue) = &filter.queue {
        sql.push(" AND queue = $?", Arg::Text(queue.clone()));
    }
    if let Some(state) = filter.state {
        sql.push(" AND state = $?", Arg::Int(state.code()));
    }
    if let Some(kind) = &filter.kind {
        sql.push(" AND kind = $?", Arg::Text(kind.clone()));
    }
    if let Some(group) = &filter.group_id {
        sql.push(" AND group_id = $?", Arg::Text(group.clone()));
    }
    if let Some(parent) = &filter.parent_job_id {
        sql.push(" AND parent_job_id = $?", Arg::Text(parent.to_string()));
    }
    if let Some(tenant) = &filter.tenant_id {
        sql.push(" AND tenant_id = $?", Arg::Text(tenant.clone()));
    }
    if let Some(after) = filter.submitted_after_ms {
        sql.push(" AND created_at_ms >= $?", Arg::Int(after));
    }
    if let Some(before) = filter.submitted_before_ms {
        sql.push(" AND created_at_ms < $?", Arg::Int(before));
    }
    if let Some((key, value)) = &filter.label {
        // Containment, which the `jobs_labels` index answers; the key is a value here, not
        // a JSON path, so nothing in it needs escaping.
        sql.push(
            " AND labels @> jsonb_build_object($?::text, ",
            Arg::Text(key.clone()),
        );
        sql.push("$?::text)", Arg::Text(value.clone()));
    }
}

fn job_from_row(row: &PgRow) -> Result<JobRecord> {
    let depends_on: Option<Vec<String>> = row.col(13)?;
    let labels: Option<String> = row.col(15)?;
    Ok(JobRecord {
        seq: row.col(0)?,
        id: row.id(1)?,
        queue: row.col(2)?,
        kind: row.col(3)?,
        payload: row.col(4)?,
        priority: row.col(5)?,
        max_attempts: row.u32(6)?,
        timeout_ms: row.col(7)?,
        deadline_ms: row.col(8)?,
        run_at_ms: row.col(9)?,
        idempotency_key: row.col(10)?,
        concurrency_key: row.col(11)?,
        weight: row.u32(12)?,
        depends_on: depends_on
            .unwrap_or_default()
            .iter()
            .filter_map(|id| id.parse().ok())
            .collect(),
        group_id: row.col(14)?,
        labels: labels
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default(),
        tenant_id: row.col(16)?,
        parent_job_id: row.opt_id(17)?,
        trace_id: row.col(18)?,
        state: row.state(19)?,
        attempt: row.u32(20)?,
        output: row.col::<Option<Vec<u8>>>(21)?.unwrap_or_default(),
        error: row.col(22)?,
        created_at_ms: row.col(23)?,
        started_at_ms: row.col(24)?,
        finished_at_ms: row.col(25)?,
        worker_id: row.col(26)?,
        attempts: vec![],
        waiting_for: vec![],
        // Stored together: a job has progress once an attempt of it has reported.
        progress: match row.opt_u32(27)? {
            Some(attempt) => Some(JobProgress {
                attempt,
                fraction: row.col(28)?,
                message: row.col(29)?,
                updated_at_ms: row.col::<Option<i64>>(30)?.unwrap_or_default(),
                checkpoint: None,
            }),
            None => None,
        },
    })
}

const GROUP: &str = "SELECT id, size, cancel_on_failure, created_at_ms, failed_job_id, error,
        tenant_id
    FROM groups WHERE id = $1 AND ($2::text IS NULL OR tenant_key = $2)
    ORDER BY tenant_key COLLATE \"C\" LIMIT 1";
const GROUP_COUNTS: &str = "SELECT state, count(*) FROM jobs
    WHERE group_id = $1 AND coalesce(tenant_id, '') = $2 GROUP BY state";

/// A group with its counts by state, if it exists in `tenant`'s namespace (or any, for `None`).
pub(super) async fn group(
    pool: &PgPool,
    id: &str,
    tenant: Option<&str>,
) -> Result<Option<GroupRecord>> {
    let Some(row) = sqlx::query(GROUP)
        .bind(id)
        .bind(tenant)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let mut group = GroupRecord {
        id: row.col(0)?,
        size: row.u32(1)?,
        cancel_on_failure: row.col(2)?,
        created_at_ms: row.col(3)?,
        failed_job_id: row.opt_id(4)?,
        error: row.col(5)?,
        tenant_id: row.col(6)?,
        ..Default::default()
    };
    let tenant_key = group.tenant_id.clone().unwrap_or_default();
    for row in sqlx::query(GROUP_COUNTS)
        .bind(id)
        .bind(tenant_key)
        .fetch_all(pool)
        .await?
    {
        let count = u32::try_from(row.col::<i64>(1)?).unwrap_or(u32::MAX);
        group.count(row.state(0)?, count);
    }
    Ok(Some(group))
}

const GROUP_EVENTS: &str = "SELECT e.seq, j.id, j.state, j.output, j.error
    FROM group_events e JOIN jobs j ON j.id = e.job_id
    WHERE e.group_id = $1 AND coalesce(j.tenant_id, '') = $4 AND e.seq > $2
    ORDER BY e.seq LIMIT $3";

/// Up to `limit` results of a group's jobs that ended after cursor `after`, in order.
pub(super) async fn group_events(
    pool: &PgPool,
    group: &GroupKey,
    after: i64,
    limit: u32,
) -> Result<Vec<GroupEvent>> {
    sqlx::query(GROUP_EVENTS)
        .bind(&group.id)
        .bind(after)
        .bind(i64::from(limit))
        .bind(&group.tenant)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(GroupEvent {
                cursor: row.col(0)?,
                job_id: row.id(1)?,
                state: row.state(2)?,
                output: row.col::<Option<Vec<u8>>>(3)?.unwrap_or_default(),
                error: row.col(4)?,
            })
        })
        .collect()
}

/// A scope's count is the sum of its rows (see the schema).
const QUOTAS: &str = "SELECT q.scope, q.max_in_flight, q.max_queued, q.rate_per_second, q.burst,
        coalesce(c.queued, 0), q.attempt_timeout_ms
    FROM quotas q LEFT JOIN LATERAL (
        SELECT sum(n.queued)::bigint AS queued FROM queued_counts n WHERE n.scope = q.scope) c
        ON true
    ORDER BY q.scope COLLATE \"C\"";

/// Every quota, with the jobs queued in its scope now.
pub(super) async fn quotas(pool: &PgPool) -> Result<Vec<(Quota, u64)>> {
    sqlx::query(QUOTAS)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok((
                Quota {
                    scope: row.col(0)?,
                    max_in_flight: row.opt_u32(1)?,
                    max_queued: row.opt_u32(2)?,
                    rate_per_second: row.col(3)?,
                    burst: row.opt_u32(4)?,
                    attempt_timeout_ms: row.col(6)?,
                },
                row.col::<i64>(5)?.max(0) as u64,
            ))
        })
        .collect()
}

/// Queued jobs with a deadline that still wait for a dependency to succeed.
const WAITING: &str = "SELECT j.id, j.deadline_ms FROM jobs j
    WHERE j.state = 10 /* queued */ AND j.deadline_ms IS NOT NULL AND EXISTS (
        SELECT 1 FROM dependencies d JOIN jobs p ON p.id = d.depends_on
        WHERE d.job_id = j.id AND p.state != 30 /* succeeded */)";

/// Queued jobs waiting for their dependencies, with their deadlines (for the scheduler's
/// timers at start).
pub(super) async fn waiting(pool: &PgPool) -> Result<Vec<(JobId, i64)>> {
    sqlx::query(WAITING)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| Ok((row.id(0)?, row.col(1)?)))
        .collect()
}

pub(super) async fn paused(pool: &PgPool) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT queue FROM paused_queues ORDER BY queue COLLATE \"C\"")
            .fetch_all(pool)
            .await?,
    )
}
