//! The embedded backend: SQLite in WAL mode.
//!
//! One writer thread owns the write connection (`writer.rs`): callers send it commands and
//! await a reply, and it commits everything that is waiting in one transaction (group commit),
//! so one fsync covers many jobs. The scheduler's commands come on a channel of their own that
//! the writer always serves first and that never refuses, so client submits cannot starve
//! dispatch. The SQL of each operation lives beside it: `submit.rs`, `cancel.rs`,
//! `lifecycle.rs` (starts, finishes, recovery), `progress.rs` (what running attempts report),
//! `prune.rs` (retention and incremental vacuum), `read.rs`. Reads go to a small pool of read-only connections that WAL lets run beside the
//! writer.

mod bulk;
mod cancel;
mod counts;
mod lifecycle;
mod migrate;
mod progress;
mod prune;
mod read;
mod schedules;
mod submit;
mod writer;

use crate::store::WriteCounters;
use std::sync::{Arc, Mutex};

use rusqlite::{
    Connection, OpenFlags, ToSql,
    types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef},
};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    Bulk, BulkDone, CancelTarget, Cancelled, DeadLetterGroup, Fire, Fired, ListFilter, ListPage,
    MinuteCount, ProgressReport, Progressed, Prune, Pruned, Recovered, Store, StoreConfig,
    StoreSize, Submit, Submitted, SyncMode, TransitionOutcome, Transitions, WriterStats,
};
use crate::{
    domain::{
        AttemptOutcome, GroupEvent, GroupRecord, JobId, JobRecord, JobState, NewSchedule,
        QueueCounts, Quota, ReadyJob, ScheduleKey, ScheduleRecord,
    },
    error::{Error, Result},
    telemetry::Metrics,
};
use writer::{AdminOp, Command};

/// Room on the scheduler's channel: it has one transition in flight at a time, so this is
/// never full; it is bounded all the same.
const SCHEDULER_QUEUE: usize = 64;

/// A cheap handle to the SQLite store: clone it freely.
#[derive(Clone)]
pub struct SqliteStore {
    /// Client commands: refused with `Overloaded` when full.
    commands: mpsc::Sender<Command>,
    /// The scheduler's commands: served first, waited for rather than refused.
    priority: mpsc::Sender<Command>,
    readers: Arc<read::Readers>,
    counters: Arc<WriteCounters>,
    health: watch::Receiver<Option<crate::error::StoreFault>>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    checkpointer: Arc<Mutex<Option<Checkpointer>>>,
}

/// How often the checkpointer copies what the WAL holds into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// The writer checkpoints itself only past this many WAL pages (SQLite's default is 1,000):
/// a backstop for a checkpointer that cannot keep up (a reader holding an old snapshot).
const WRITER_AUTOCHECKPOINT_PAGES: i64 = 16_384;

/// WAL checkpoints off the writer's path: a thread of its own with its own connection runs a
/// PASSIVE checkpoint (which never blocks the writer) every [`CHECKPOINT_EVERY`]. Left to the
/// writer, a checkpoint (copy a thousand pages and fsync the database file) ran inside some
/// commit every few megabytes of WAL, and every write queued behind that commit waited for it:
/// the submit p99 while retention deletes a million rows (issue 15).
struct Checkpointer {
    stop: std::sync::mpsc::Sender<()>,
    handle: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    fn start(config: &StoreConfig) -> Result<Checkpointer> {
        let conn = open_connection(config, false)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("switchyard-checkpoint".into())
            .spawn(move || {
                // A message or a closed channel both mean stop.
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    if let Err(err) =
                        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::debug!(cause = %err, "store: checkpoint failed; the next one retries");
                    }
                }
            })?;
        Ok(Checkpointer { stop, handle })
    }

    fn stop(self) -> std::thread::Result<()> {
        let _ = self.stop.send(());
        self.handle.join()
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database, applies migrations and starts the writer.
    pub fn open(config: &StoreConfig, metrics: Metrics) -> Result<SqliteStore> {
        let mut conn = open_connection(config, false)?;
        let counts = counts::Counts::register(&conn)?;
        incremental_vacuum(&conn, config)?;
        migrate::run(&mut conn)?;
        metrics.set_store_bytes(prune::size(&conn)?.bytes);
        let readers = read::Readers::open(config, config.readers.max(1))?;
        let counters = Arc::new(WriteCounters::default());
        let (tx, rx) = mpsc::channel(config.write_queue.max(1));
        let (priority, priority_rx) = mpsc::channel(SCHEDULER_QUEUE);
        let thread_counters = counters.clone();
        let (health_tx, health) = watch::channel(None);
        metrics.set_store_healthy(true);
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)?;
        let checkpointer = Checkpointer::start(config)?;
        let synchronous = writer::Synchronous::new(config.sync);
        let handle = std::thread::Builder::new()
            .name("switchyard-writer".into())
            .spawn(move || {
                writer::run(
                    conn,
                    &counts,
                    writer::Inbox {
                        priority: priority_rx,
                        clients: rx,
                    },
                    synchronous,
                    &thread_counters,
                    &metrics,
                    &health_tx,
                )
            })?;
        Ok(SqliteStore {
            commands: tx,
            priority,
            readers: Arc::new(readers),
            counters,
            health,
            writer: Arc::new(Mutex::new(Some(handle))),
            checkpointer: Arc::new(Mutex::new(Some(checkpointer))),
        })
    }

    /// A client command: refused at once when the write queue is full.
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

    /// A command of the scheduler's (or of shutdown): waits for room instead of failing.
    async fn call_first<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.priority
            .send(make(reply))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)
    }
}

#[tonic::async_trait]
impl Store for SqliteStore {
    async fn recover(&self) -> Result<Recovered> {
        let writer::Recovering {
            ready,
            running,
            epoch,
        } = self
            .call_first(|reply| Command::Recover { reply })
            .await??;
        Ok(Recovered {
            ready,
            running,
            epoch,
            quotas: self
                .readers
                .run(read::quotas)
                .await?
                .into_iter()
                .map(|(q, _)| q)
                .collect(),
            paused: self.readers.run(read::paused).await?,
            waiting: self.readers.run(read::waiting).await?,
        })
    }

    async fn submit(&self, submit: Submit) -> Result<Vec<Submitted>> {
        self.call(|reply| Command::Submit { submit, reply }).await?
    }

    async fn cancel(&self, target: CancelTarget, reason: String) -> Result<Cancelled> {
        self.call(|reply| Command::Cancel {
            target,
            reason,
            reply,
        })
        .await?
    }

    async fn requeue(&self, id: JobId, max_attempts: Option<u32>) -> Result<Option<ReadyJob>> {
        self.call(|reply| Command::Requeue {
            id,
            max_attempts,
            reply,
        })
        .await?
    }

    async fn bulk(&self, bulk: Bulk) -> Result<BulkDone> {
        if bulk.dry_run {
            // A count changes nothing: the read pool answers it, not the writer.
            return self.readers.run(move |conn| bulk::count(conn, &bulk)).await;
        }
        self.call(|reply| Command::Bulk {
            bulk: Box::new(bulk),
            reply,
        })
        .await?
    }

    async fn transition(&self, ops: Transitions) -> Result<TransitionOutcome> {
        self.call_first(|reply| Command::Transition { ops, reply })
            .await?
    }

    async fn progress(&self, reports: Vec<ProgressReport>) -> Result<Progressed> {
        self.call(|reply| Command::Progress { reports, reply })
            .await?
    }

    async fn set_quota(&self, quota: Quota) -> Result<()> {
        self.call(|reply| Command::Admin {
            op: AdminOp::SetQuota(quota),
            reply,
        })
        .await?
    }

    async fn pause(&self, queue: String, paused: bool) -> Result<()> {
        self.call(|reply| Command::Admin {
            op: AdminOp::Pause { queue, paused },
            reply,
        })
        .await?
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>> {
        self.readers.run(move |conn| read::get(conn, id)).await
    }

    async fn list(&self, filter: ListFilter) -> Result<ListPage> {
        self.readers
            .run(move |conn| read::list(conn, &filter))
            .await
    }

    async fn group(&self, id: String, tenant: Option<String>) -> Result<Option<GroupRecord>> {
        self.readers
            .run(move |conn| read::group(conn, &id, tenant.as_deref()))
            .await
    }

    async fn group_events(
        &self,
        group: super::GroupKey,
        after: i64,
        limit: u32,
    ) -> Result<Vec<GroupEvent>> {
        self.readers
            .run(move |conn| read::group_events(conn, &group, after, limit))
            .await
    }

    async fn quotas(&self) -> Result<Vec<(Quota, u64)>> {
        self.readers.run(read::quotas).await
    }

    async fn paused(&self) -> Result<Vec<String>> {
        self.readers.run(read::paused).await
    }

    async fn queue_counts(&self) -> Result<Vec<QueueCounts>> {
        self.readers.run(read::queue_counts).await
    }

    async fn ended_per_minute(&self, since_ms: i64) -> Result<Vec<MinuteCount>> {
        self.readers
            .run(move |conn| read::ended_per_minute(conn, since_ms))
            .await
    }

    async fn oldest_queued(&self) -> Result<Vec<(String, i64)>> {
        self.readers.run(read::oldest_queued).await
    }

    async fn dead_letters(
        &self,
        tenant: Option<String>,
        limit: u32,
    ) -> Result<Vec<DeadLetterGroup>> {
        self.readers
            .run(move |conn| read::dead_letters(conn, tenant.as_deref(), limit))
            .await
    }

    async fn create_schedule(&self, schedule: NewSchedule) -> Result<()> {
        self.call(|reply| Command::Admin {
            op: AdminOp::CreateSchedule(Box::new(schedule)),
            reply,
        })
        .await?
    }

    async fn pause_schedule(&self, key: ScheduleKey, paused: bool) -> Result<()> {
        self.call(|reply| Command::Admin {
            op: AdminOp::PauseSchedule { key, paused },
            reply,
        })
        .await?
    }

    async fn delete_schedule(&self, key: ScheduleKey) -> Result<()> {
        self.call(|reply| Command::Admin {
            op: AdminOp::DeleteSchedule(key),
            reply,
        })
        .await?
    }

    async fn schedule(&self, key: ScheduleKey) -> Result<Option<ScheduleRecord>> {
        self.readers
            .run(move |conn| schedules::get(conn, &key))
            .await
    }

    async fn schedules(&self, tenant: Option<String>) -> Result<Vec<ScheduleRecord>> {
        self.readers
            .run(move |conn| schedules::list(conn, tenant.as_deref()))
            .await
    }

    async fn fire_schedule(&self, fire: Fire) -> Result<Fired> {
        // The firing task's own write: like the scheduler's, it waits for room instead of
        // being refused, so a busy write queue delays a tick but does not drop it.
        self.call_first(|reply| Command::Fire {
            fire: Box::new(fire),
            reply,
        })
        .await?
    }

    async fn prune(&self, prune: Prune) -> Result<Pruned> {
        // A client write: housekeeping waits its turn behind the submits already queued.
        self.call(|reply| Command::Prune { prune, reply }).await?
    }

    async fn vacuum(&self, pages: u32) -> Result<StoreSize> {
        self.call(|reply| Command::Vacuum { pages, reply }).await?
    }

    fn writer_stats(&self) -> WriterStats {
        self.counters.snapshot()
    }

    fn health(&self) -> watch::Receiver<Option<crate::error::StoreFault>> {
        self.health.clone()
    }

    async fn probe(&self) -> Result<()> {
        self.call_first(|reply| Command::Probe { reply }).await?
    }

    async fn close(&self) -> Result<()> {
        // A send error means the writer is already gone: closing twice is fine.
        let _ = self.call_first(|reply| Command::Close { reply }).await;
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
        let checkpointer = self
            .checkpointer
            .lock()
            .map_err(|_| Error::Corrupt("checkpointer handle lock poisoned".into()))?
            .take();
        if let Some(checkpointer) = checkpointer {
            tokio::task::spawn_blocking(move || checkpointer.stop())
                .await
                .map_err(|e| Error::Io(std::io::Error::other(e)))?
                .map_err(|_| Error::Io(std::io::Error::other("checkpoint thread panicked")))?;
        }
        self.readers.close();
        Ok(())
    }
}

/// Largest database (bytes) that is rewritten at open to switch it to incremental vacuum;
/// a larger one is left as it is, with a warning, since `VACUUM` copies the whole file.
const VACUUM_SWITCH_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Makes sure pages freed by pruning can be given back (`auto_vacuum = INCREMENTAL`). A new
/// database has it from the start (`open_connection` sets it before the first table exists).
/// One created before retention has to be rewritten once by `VACUUM` to switch: done here
/// while the file is small (a quick copy), otherwise left to the operator (pruning still
/// reuses the freed pages inside the file, it just never shrinks it).
fn incremental_vacuum(conn: &Connection, config: &StoreConfig) -> Result<()> {
    let path = path(config)?;
    let wrap = |source| Error::Open {
        path: path.display().to_string(),
        source,
    };
    // 0 none, 1 full, 2 incremental.
    let mode: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |row| row.get(0))
        .map_err(wrap)?;
    if mode == 2 {
        return Ok(());
    }
    let size = prune::size(conn)?.bytes;
    if size <= VACUUM_SWITCH_MAX_BYTES {
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(wrap)?;
        conn.execute_batch("VACUUM").map_err(wrap)?;
        tracing::info!(bytes = size, "database switched to incremental vacuum");
    } else {
        tracing::warn!(
            bytes = size,
            "the database predates incremental vacuum: pruned space is reused but the file \
             will not shrink; switch it once, with the coordinator stopped, by running \
             `PRAGMA auto_vacuum = INCREMENTAL; VACUUM;` in sqlite3"
        );
    }
    Ok(())
}

/// The database file `--db` names.
fn path(config: &StoreConfig) -> Result<&std::path::Path> {
    match &config.db {
        super::DbUrl::Sqlite(path) => Ok(path),
        other => Err(Error::Config(format!("{other}: not a sqlite:// database"))),
    }
}

/// Opens one connection with the per-connection pragmas on it.
fn open_connection(config: &StoreConfig, read_only: bool) -> Result<Connection> {
    let (path, sync) = (path(config)?, config.sync);
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
    conn.busy_timeout(config.busy_timeout).map_err(wrap)?;
    if !read_only {
        // Before anything else touches a new file: auto_vacuum can only be chosen before the
        // first table is created (on an existing database this does nothing until a VACUUM).
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(wrap)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(wrap)?;
    }
    let sync = match sync {
        SyncMode::Full => "FULL",
        SyncMode::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)
        .map_err(wrap)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

// How domain values are stored: ids as their hyphenated text, states and outcomes by their
// codes (the SQL here writes a code with its name beside it: `10 /* queued */`).

impl ToSql for JobId {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.to_string()))
    }
}

impl FromSql for JobId {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|_| FromSqlError::Other("not a job id".into()))
    }
}

impl ToSql for JobState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.code()))
    }
}

impl FromSql for JobState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let code = value.as_i64()?;
        JobState::from_code(code).ok_or(FromSqlError::OutOfRange(code))
    }
}

impl ToSql for AttemptOutcome {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.code()))
    }
}

impl FromSql for AttemptOutcome {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let code = value.as_i64()?;
        AttemptOutcome::from_code(code).ok_or(FromSqlError::OutOfRange(code))
    }
}

/// The columns `ready_from_row` reads, in order (prefix `j.` where joined).
const READY_COLUMNS: &str = "id, queue, kind, priority, coalesce(run_at_ms, 0), seq,
    deadline_ms, weight, tenant_id, concurrency_key, attempt";
const READY_COLUMNS_J: &str = "j.id, j.queue, j.kind, j.priority,
    coalesce(j.run_at_ms, 0), j.seq, j.deadline_ms, j.weight, j.tenant_id, j.concurrency_key,
    j.attempt";

fn ready_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ReadyJob> {
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
        attempt: row.get(10)?,
    })
}

fn json_ids(ids: &[JobId]) -> String {
    let ids: Vec<String> = ids.iter().map(JobId::to_string).collect();
    serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into())
}

fn parse_json_ids(text: &str) -> Vec<JobId> {
    serde_json::from_str::<Vec<String>>(text)
        .unwrap_or_default()
        .iter()
        .filter_map(|id| id.parse().ok())
        .collect()
}
