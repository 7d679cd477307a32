//! The durable record of every job.
//!
//! One writer thread owns the SQLite write connection: callers send it [`writer::Command`]s on a
//! bounded channel and await a reply, and it commits everything that is waiting in one
//! transaction (group commit), so one fsync covers many jobs. Reads go to a small pool of
//! read-only connections (WAL lets them run beside the writer).

mod lifecycle;
mod migrate;
mod read;
mod writer;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, OpenFlags};
use switchyard_proto::v1;
use tokio::sync::{mpsc, oneshot};

use crate::{
    error::{Error, Result},
    telemetry::{Metrics, Tally},
};
pub use read::{ListFilter, ListPage};
use writer::Command;
pub use writer::{AdminOp, Origin};

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// fsync on every commit: an acknowledged job survives a power cut.
    Full,
    /// fsync at WAL checkpoints only: survives a killed process, not a power cut.
    Normal,
}

impl SyncMode {
    fn pragma(self) -> &'static str {
        match self {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        }
    }
}

/// Where the store lives and how it writes.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub sync: SyncMode,
    /// Read-only connections in the read pool.
    pub readers: usize,
    /// Commands that may wait for the writer before submitters are pushed back.
    pub write_queue: usize,
}

/// A job to insert, validated and with its id chosen.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub queue: String,
    pub kind: String,
    pub payload: Vec<u8>,
    pub priority: i32,
    pub max_attempts: u32,
    pub timeout_ms: Option<i64>,
    pub deadline_ms: Option<i64>,
    pub run_at_ms: Option<i64>,
    pub idempotency_key: Option<String>,
    pub concurrency_key: Option<String>,
    pub weight: u32,
    /// Ids of jobs that must succeed first: earlier jobs, or other jobs of the same batch.
    pub depends_on: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub tenant_id: Option<String>,
    pub parent_job_id: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub trace_id: Option<String>,
}

/// A group created by `SubmitBatch`.
#[derive(Debug, Clone)]
pub struct NewGroup {
    pub id: String,
    pub cancel_on_failure: bool,
}

/// What became of one submitted job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub id: String,
    /// The idempotency key matched an earlier job; `id` is that job's.
    pub duplicate: bool,
    pub state: v1::JobState,
    /// Set when the job was stored ready to run (queued, with no unfinished dependencies).
    pub ready: Option<ReadyJob>,
}

/// What the scheduler needs of a queued job: where it goes and in what order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyJob {
    pub id: String,
    pub queue: String,
    pub kind: String,
    pub priority: i32,
    /// Not before this time (Unix ms); 0 for "now".
    pub run_at_ms: i64,
    /// Submission order.
    pub seq: i64,
    /// When the whole job must be done (Unix ms).
    pub deadline_ms: Option<i64>,
    /// Permits it takes of each quota scope that applies to it.
    pub weight: u32,
    pub tenant_id: Option<String>,
    pub concurrency_key: Option<String>,
}

/// The columns `ReadyJob::from_row` reads, in order (prefix `j.` where joined).
pub(crate) const READY_COLUMNS: &str = "id, queue, kind, priority, coalesce(run_at_ms, 0), seq,
    deadline_ms, weight, tenant_id, concurrency_key";
pub(crate) const READY_COLUMNS_J: &str = "j.id, j.queue, j.kind, j.priority,
    coalesce(j.run_at_ms, 0), j.seq, j.deadline_ms, j.weight, j.tenant_id, j.concurrency_key";

impl ReadyJob {
    pub(crate) fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ReadyJob> {
        Ok(ReadyJob {
            id: row.get(0)?,
            queue: row.get(1)?,
            kind: row.get(2)?,
            priority: row.get(3)?,
            run_at_ms: row.get(4)?,
            seq: row.get(5)?,
            deadline_ms: row.get(6)?,
            weight: row.get(7)?,
            tenant_id: row.get(8)?,
            concurrency_key: row.get(9)?,
        })
    }

    /// The quota scopes that apply to it.
    pub fn scopes(&self) -> Vec<String> {
        crate::quota::scopes(
            &self.queue,
            self.concurrency_key.as_deref(),
            self.tenant_id.as_deref(),
        )
    }
}

/// Give a queued job to a worker session.
#[derive(Debug, Clone)]
pub struct Start {
    pub job_id: String,
    pub session: u64,
    pub worker_id: String,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded(Vec<u8>),
    Failed {
        message: String,
        retryable: bool,
        retry_after_ms: Option<i64>,
        /// The handler stopped because it was told to.
        cancelled: bool,
    },
    /// Its worker's stream died or its lease ran out: counts as a failed attempt.
    Lost(String),
    /// Handed back by a draining worker: does not count.
    Released(String),
    /// The job's deadline passed while it ran: the job ends `DEADLINE_EXCEEDED`.
    Expired,
    /// The attempt ran past its `timeout`: a retryable failure.
    TimedOut,
}

/// End one attempt (fenced by its number).
#[derive(Debug, Clone)]
pub struct Finish {
    pub job_id: String,
    pub attempt: u32,
    pub outcome: Outcome,
}

/// Exponential backoff with full jitter between attempts.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base_ms: i64,
    pub cap_ms: i64,
}

impl RetryPolicy {
    /// The delay before the attempt after `failures` failures: a random point in
    /// `[d/2, d]` where `d = min(cap, base * 2^(failures-1))`.
    pub fn backoff_ms(&self, failures: u32) -> i64 {
        let exp = failures.saturating_sub(1).min(30);
        let d = self
            .base_ms
            .saturating_mul(1i64 << exp)
            .min(self.cap_ms)
            .max(0);
        let jitter = uuid::Uuid::new_v4().as_u128() as u64 % (d as u64 / 2 + 1);
        d / 2 + jitter as i64
    }
}

/// One batch of the scheduler's state changes, committed together.
#[derive(Debug, Clone)]
pub struct Transitions {
    pub finishes: Vec<Finish>,
    /// Queued jobs whose deadline passed before they could run.
    pub expire: Vec<String>,
    pub starts: Vec<Start>,
    pub retry: RetryPolicy,
}

/// An attempt that started: where it goes, and its times.
#[derive(Debug)]
pub struct Started {
    pub session: u64,
    pub assignment: v1::Assignment,
    /// When it must end: the sooner of the job's deadline and the attempt's timeout.
    pub ends: Option<i64>,
    /// Since when it waited in its queue (submitted, or its `run_at` or backoff passed).
    pub queued_since_ms: i64,
}

/// What a committed batch of transitions did.
#[derive(Debug, Default)]
pub struct TransitionOutcome {
    /// Attempts now running, with the session they go to, and when each must end (the
    /// sooner of the job's deadline and the attempt's timeout).
    pub started: Vec<Started>,
    /// Starts that found the job no longer queued (cancelled meanwhile).
    pub not_started: Vec<(u64, String)>,
    /// Jobs that became ready: retries (with their backoff) and dependents.
    pub ready: Vec<ReadyJob>,
    /// Jobs that reached a terminal state.
    pub terminal: Vec<String>,
    /// Dependents and children cancelled because a job they needed ended badly.
    pub cancelled_dependents: Vec<String>,
    /// Of those, the ones that were running: (job, attempt), for their workers to stop.
    pub stopped: Vec<(String, u32)>,
    /// Results refused by the fence: (job, attempt).
    pub stale: Vec<(String, u32)>,
    /// What metrics count of it; the writer takes it once the transaction commits.
    pub metrics: Tally,
}

/// What to cancel.
#[derive(Debug, Clone)]
pub enum CancelTarget {
    Job(String),
    Group(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    /// Jobs this call moved to `CANCELLED`.
    pub ids: Vec<String>,
    /// Jobs that depended on them or were their children (at any depth), cancelled with them.
    pub dependents: Vec<String>,
    /// Of all those, the ones that were running: (job, attempt), for their workers to stop.
    pub running: Vec<(String, u32)>,
    /// For a single job, its state afterwards.
    pub state: v1::JobState,
    /// What metrics count of it; the writer takes it once the transaction commits.
    pub metrics: Tally,
}

/// Counters of the writer, for `Stats` and tests of group commit.
#[derive(Debug, Default)]
pub struct WriterCounters {
    commits: AtomicU64,
    commands: AtomicU64,
    rows_written: AtomicU64,
    max_batch: AtomicU64,
}

impl WriterCounters {
    fn record(&self, commands: u64, rows: u64) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commands.fetch_add(commands, Ordering::Relaxed);
        self.rows_written.fetch_add(rows, Ordering::Relaxed);
        self.max_batch.fetch_max(commands, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> v1::StoreStats {
        v1::StoreStats {
            commits: self.commits.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
            rows_written: self.rows_written.load(Ordering::Relaxed),
            max_batch: self.max_batch.load(Ordering::Relaxed),
        }
    }
}

/// A cheap handle to the store: clone it freely.
#[derive(Clone)]
pub struct Store {
    commands: mpsc::Sender<Command>,
    readers: Arc<read::Readers>,
    counters: Arc<WriterCounters>,
    metrics: Metrics,
    writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Store {
    /// Opens (creating if missing) the database, applies migrations, re-queues what was
    /// running when the coordinator last stopped, and starts the writer. Returns the jobs that
    /// are ready to run, for the scheduler. The writer records each commit in `metrics`.
    pub fn open(config: &StoreConfig, metrics: Metrics) -> Result<(Store, Vec<ReadyJob>)> {
        let mut conn = open_connection(&config.path, config.sync, false)?;
        migrate::run(&mut conn)?;
        let ready = {
            let tx = conn.transaction()?;
            let ready = lifecycle::recover(&tx)?;
            tx.commit()?;
            ready
        };
        let readers = read::Readers::open(&config.path, config.sync, config.readers.max(1))?;
        let counters = Arc::new(WriterCounters::default());
        let (tx, rx) = mpsc::channel(config.write_queue.max(1));
        let thread_counters = counters.clone();
        let thread_metrics = metrics.clone();
        let handle = std::thread::Builder::new()
            .name("switchyard-writer".into())
            .spawn(move || writer::run(conn, rx, thread_counters, thread_metrics))?;
        let store = Store {
            commands: tx,
            readers: Arc::new(readers),
            counters,
            metrics,
            writer: Arc::new(std::sync::Mutex::new(Some(handle))),
        };
        Ok((store, ready))
    }

    /// Commits a batch of the scheduler's transitions.
    pub async fn transition(&self, ops: Transitions) -> Result<TransitionOutcome> {
        self.call(|reply| Command::Transition { ops, reply })
            .await?
    }

    /// Puts a job that ended badly back in its queue; returns it if it is ready to run.
    pub async fn requeue(
        &self,
        job_id: String,
        max_attempts: Option<u32>,
    ) -> Result<Option<ReadyJob>> {
        self.call(|reply| Command::Requeue {
            job_id,
            max_attempts,
            reply,
        })
        .await?
    }

    /// Stores jobs (and their group) in one transaction: all of them or none.
    pub async fn submit(
        &self,
        origin: Origin,
        jobs: Vec<NewJob>,
        group: Option<NewGroup>,
    ) -> Result<Vec<Submitted>> {
        self.call(|reply| Command::Submit {
            origin,
            jobs,
            group,
            reply,
        })
        .await?
    }

    /// Cancels queued jobs: one, or every queued job of a group.
    pub async fn cancel(&self, target: CancelTarget, reason: String) -> Result<Cancelled> {
        self.call(|reply| Command::Cancel {
            target,
            reason,
            reply,
        })
        .await?
    }

    pub async fn get(&self, id: String) -> Result<v1::Job> {
        self.readers
            .run(move |conn| read::get(conn, &id)?.ok_or(Error::JobNotFound(id)))
            .await
    }

    pub async fn list(&self, filter: ListFilter) -> Result<ListPage> {
        self.readers
            .run(move |conn| read::list(conn, &filter))
            .await
    }

    pub async fn group(&self, id: String) -> Result<v1::Group> {
        self.readers
            .run(move |conn| read::group(conn, &id)?.ok_or(Error::GroupNotFound(id)))
            .await
    }

    /// Up to `limit` results of the group's jobs that ended after cursor `after`.
    pub async fn group_events(
        &self,
        group: String,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, v1::JobResult)>> {
        self.readers
            .run(move |conn| read::group_events(conn, &group, after, limit))
            .await
    }

    pub async fn quotas(&self) -> Result<Vec<v1::Quota>> {
        self.readers.run(read::quotas).await
    }

    pub async fn paused(&self) -> Result<Vec<String>> {
        self.readers.run(read::paused).await
    }

    /// Sets a scope's limits; a quota with none set removes it.
    pub async fn set_quota(&self, quota: v1::Quota) -> Result<()> {
        self.call(|reply| Command::Admin {
            op: AdminOp::SetQuota(quota),
            reply,
        })
        .await?
    }

    /// Pauses or resumes a queue; returns the queues paused afterwards.
    pub async fn pause(&self, queue: String, paused: bool) -> Result<()> {
        self.call(|reply| Command::Admin {
            op: AdminOp::Pause { queue, paused },
            reply,
        })
        .await?
    }

    pub async fn queue_stats(&self) -> Result<Vec<v1::QueueStats>> {
        self.readers.run(read::queue_stats).await
    }

    pub fn writer_stats(&self) -> v1::StoreStats {
        self.counters.snapshot()
    }

    /// The coordinator's metrics, for whoever holds the store (the scheduler, the API).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Lets the writer finish what was sent before, checkpoints the WAL and closes the file.
    /// Later calls fail with `ShuttingDown`.
    pub async fn close(&self) -> Result<()> {
        // A send error means the writer is already gone: closing twice is fine.
        let _ = self.call(|reply| Command::Close { reply }).await;
        let handle = self
            .writer
            .lock()
            .map_err(|_| Error::Corrupt("writer handle lock poisoned".into()))?
            .take();
        if let Some(handle) = handle {
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|e| Error::Io(std::io::Error::other(e)))?
                .map_err(|_| Error::Io(std::io::Error::other("writer thread panicked")))?;
        }
        self.readers.close();
        Ok(())
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .try_send(make(reply))
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => Error::Overloaded("the store's write queue"),
                mpsc::error::TrySendError::Closed(_) => Error::ShuttingDown,
            })?;
        rx.await.map_err(|_| Error::ShuttingDown)
    }
}

/// Opens one connection with the per-connection pragmas on it.
fn open_connection(path: &Path, sync: SyncMode, read_only: bool) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let wrap = |source| Error::Open {
        path: path.display().to_string(),
        source,
    };
    let conn = Connection::open_with_flags(path, flags).map_err(wrap)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(wrap)?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(wrap)?;
    }
    conn.pragma_update(None, "synchronous", sync.pragma())
        .map_err(wrap)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub(crate) fn duration(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}
