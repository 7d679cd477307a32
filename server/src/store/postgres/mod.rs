//! The Postgres backend (`--db postgres://…`), through a sqlx connection pool.
//!
//! Each write is one transaction of its own (no group commit: Postgres commits concurrent
//! transactions side by side). The SQL of each operation lives beside it, as in `sqlite/`:
//! `submit.rs`, `cancel.rs`, `lifecycle.rs` (starts, finishes, recovery), `progress.rs`,
//! `prune.rs`, `schedules.rs`, `bulk.rs`, `read.rs`. It reproduces the SQLite backend's
//! behaviour; the conformance suite holds both to it.
//!
//! **Concurrency.** SQLite has exactly one writer, so its read-then-write steps cannot
//! interleave. Here transactions run at READ COMMITTED side by side, and every read that a
//! write depends on takes a lock that makes the other writer wait:
//! - a job read to decide what to do with it (finish, cancel, requeue, prune) is read
//!   `FOR UPDATE`; a job that a submit depends on, or whose running attempt a child names, is
//!   read `FOR SHARE`, so that it cannot end (or be pruned) before the new edge commits;
//! - an idempotency key is taken under a transaction-scoped advisory lock on the key (in a
//!   fixed order within a batch), so that two submits of one key find one job;
//! - admission locks the `quotas` rows with a `max_queued` before it reads the counts, so
//!   that two submits cannot both pass a limit;
//! - a schedule is read `FOR UPDATE` when it fires, so that a tick fires once;
//! - a group's events are numbered under a lock on the group (the trigger), so that a
//!   `WatchGroup` cursor never passes over an event that commits later.
//!
//! The other writes are single conditional statements (`UPDATE … WHERE state = … AND attempt
//! = …`), which READ COMMITTED re-checks on the row it waited for. A deadlock or a
//! serialization failure is retried a few times ([`MAX_RETRIES`]). Nothing assumes this
//! coordinator is the database's only writer beyond what the scheduler's own in-memory state
//! assumes.
//!
//! **Two pools.** Client writes and reads share one pool; the scheduler's writes (transitions,
//! schedule fires, probes, recovery) have a small pool of their own, so that a flood of
//! submits never holds up dispatch, as SQLite's priority channel does. Client writes in
//! flight are bounded by `--write-queue`: past it a write is refused `Overloaded`.

mod bulk;
mod cancel;
mod lease;
mod lifecycle;
mod progress;
mod prune;
mod read;
mod schedules;
mod submit;
#[cfg(test)]
mod tests;

pub use lease::{Fence, Leader, Lease};

use crate::store::WriteCounters;
use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{
    PgConnection, PgPool, Row,
    postgres::{PgConnectOptions, PgPoolOptions, PgRow},
};
use tokio::sync::{Semaphore, watch};

use super::{
    Bulk, BulkDone, CancelTarget, Cancelled, DbUrl, DeadLetterGroup, Durability, Fire, Fired,
    ListFilter, ListPage, MinuteCount, ProgressReport, Progressed, Prune, Pruned, Recovered, Store,
    StoreConfig, StoreSize, Submit, Submitted, SyncMode, TransitionOutcome, Transitions,
    WriterStats,
};
use crate::{
    domain::{
        AttemptOutcome, GroupEvent, GroupRecord, JobId, JobRecord, JobState, NewSchedule,
        QueueCounts, Quota, ReadyJob, ScheduleKey, ScheduleRecord, now_ms,
    },
    error::{Error, Result, StoreFault},
    telemetry::{Metrics, Tally},
};

/// Connections the scheduler's writes have to themselves: it has one transition in flight at
/// a time, plus a schedule fire and a probe.
const PRIORITY_CONNECTIONS: u32 = 2;
/// Connections for client writes, beside the readers: commits wait for the WAL's flush, and
/// concurrent ones share it (Postgres's own group commit), so more of them in flight is more
/// throughput.
const WRITER_CONNECTIONS: u32 = 16;
/// Tries of a transaction that met a deadlock or a serialization failure.
const MAX_RETRIES: u32 = 5;

/// A cheap handle to the Postgres store: clone it freely.
#[derive(Clone)]
pub struct PostgresStore {
    /// Client writes and reads.
    pool: PgPool,
    /// The scheduler's writes.
    priority: PgPool,
    /// Client writes in flight: bounded by `--write-queue`.
    writes: Arc<Semaphore>,
    counters: Arc<WriteCounters>,
    metrics: Metrics,
    health_tx: Arc<watch::Sender<Option<StoreFault>>>,
    health: watch::Receiver<Option<StoreFault>>,
    /// The latest time a scheduler transition was stamped with ([`PostgresStore::stamp`]).
    last_stamp: Arc<AtomicI64>,
    /// Held by a scheduler transition from its hand-over to its commit: they commit one at
    /// a time, in the order they were handed over (a fair lock), as on SQLite's one writer.
    transitions: Arc<tokio::sync::Mutex<()>>,
    /// Up once this coordinator may no longer lead: every commit is refused ([`Lease`]).
    fence: Fence,
    /// For the lease's own connection.
    options: PgConnectOptions,
    /// `--sync full`: a commit returns once Postgres has flushed its WAL.
    synced: bool,
}

/// Which path a write takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// A client's: refused with `Overloaded` when too many are in flight.
    Client,
    /// The scheduler's (or the store's own): waits, never refused.
    Priority,
    /// The store's own housekeeping on the client pool (pruning): refused like a client's,
    /// not counted as a command.
    Housekeeping,
}

/// Runs `$body` (an expression over `$conn: &mut PgConnection` that yields a `Result`) in one
/// transaction on `$lane`, committing it if the body succeeds; a deadlock or serialization
/// failure runs it again from the start, a few times. The store's health follows the
/// outcome. `$body` is written once and may run more than once: it must only read its inputs.
macro_rules! transaction {
    ($store:expr, $lane:expr, |$conn:ident| $body:expr) => {{
        let store: &PostgresStore = $store;
        let lane: Lane = $lane;
        let _permit = store.admit(lane)?;
        let pool = store.pool_for(lane);
        let began = std::time::Instant::now();
        let mut tries = 0u32;
        let result = loop {
            let attempt: $crate::error::Result<_> = async {
                store.fence.check()?;
                let mut tx = pool.begin().await?;
                let value = {
                    let $conn: &mut sqlx::PgConnection = &mut tx;
                    $body
                };
                // A coordinator that may have lost its lease commits nothing (the body's
                // work is rolled back as the transaction drops).
                match value.and_then(|value| store.fence.check().map(|()| value)) {
                    Ok(value) => {
                        tx.commit().await?;
                        Ok(value)
                    }
                    Err(err) => {
                        // Dropping it would roll back too; this way the connection is clean
                        // before it goes back to the pool.
                        let _ = tx.rollback().await;
                        Err(err)
                    }
                }
            }
            .await;
            match attempt {
                Err(err) if tries + 1 < MAX_RETRIES && retryable(&err) => {
                    tries += 1;
                    tracing::debug!(cause = %err, tries, "store: transaction retried");
                    tokio::time::sleep(std::time::Duration::from_millis(
                        fastrand::u64(1..=10 * u64::from(tries)),
                    ))
                    .await;
                }
                other => break other,
            }
        };
        store.committed(lane, &result, began);
        result
    }};
}

impl PostgresStore {
    /// Connects to the database `config.db` names (it must exist), applies the migrations of
    /// `migrations/postgres/` that it lacks, and opens the pools.
    pub async fn open(config: &StoreConfig, metrics: Metrics) -> Result<PostgresStore> {
        let DbUrl::Postgres(url) = &config.db else {
            return Err(Error::Config(format!(
                "{}: not a postgres:// database",
                config.db
            )));
        };
        let options = PgConnectOptions::from_str(url)
            .map_err(|err| Error::Config(format!("{}: {err}", config.db)))?
            .application_name("switchyard");
        // `--busy-timeout`: how long a write waits for a row another transaction holds.
        let lock_timeout = format!("{}ms", config.busy_timeout.as_millis().max(1));
        let mut settings = vec![("lock_timeout", lock_timeout)];
        if config.sync == SyncMode::Normal {
            // An acknowledged commit may be lost if the database server itself crashes (not
            // when the coordinator does), as SQLite's NORMAL on a power cut.
            settings.push(("synchronous_commit", "off".to_owned()));
        }
        let options = options.options(settings);
        let readers = u32::try_from(config.readers.max(1)).unwrap_or(u32::MAX);
        // How long a call waits for a connection; a server out of reach fails after this.
        // `--busy-timeout` too: the wait for a lock another process holds, in SQLite.
        let acquire_timeout = config.busy_timeout.max(Duration::from_millis(100));
        let pool = PgPoolOptions::new()
            .max_connections(readers.saturating_add(WRITER_CONNECTIONS))
            .acquire_timeout(acquire_timeout)
            .connect_with(options.clone())
            .await?;
        // Each migration in its own transaction, under sqlx's advisory lock (two coordinators
        // starting at once apply each one once).
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        let priority = PgPoolOptions::new()
            .max_connections(PRIORITY_CONNECTIONS)
            .acquire_timeout(acquire_timeout)
            .connect_with(options.clone())
            .await?;
        let (health_tx, health) = watch::channel(None);
        metrics.set_store_healthy(true);
        let store = PostgresStore {
            pool,
            priority,
            writes: Arc::new(Semaphore::new(config.write_queue.max(1))),
            counters: Arc::new(WriteCounters::default()),
            metrics,
            health_tx: Arc::new(health_tx),
            health,
            last_stamp: Arc::new(AtomicI64::new(0)),
            transitions: Arc::new(tokio::sync::Mutex::new(())),
            fence: Fence::default(),
            options,
            synced: config.sync == SyncMode::Full,
        };
        store
            .metrics
            .set_store_bytes(prune::size(&store.pool).await?.bytes);
        Ok(store)
    }

    /// This coordinator's side of the fleet's leadership lease, on a connection of its own,
    /// sharing the store's fence. `address` is where the other coordinators reach it.
    pub fn own_lease(&self, address: String, term: Duration) -> Lease {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(term / 4)
            .connect_lazy_with(self.options.clone());
        Lease::new(pool, address, term, self.fence.clone())
    }

    /// The time a scheduler transition is stamped with: now, never earlier than one handed
    /// over before it (should the clock step back).
    fn stamp(&self) -> i64 {
        let now = now_ms();
        now.max(self.last_stamp.fetch_max(now, Ordering::Relaxed))
    }

    /// A permit for a client write, refused at once when too many are in flight.
    fn admit(&self, lane: Lane) -> Result<Option<tokio::sync::OwnedSemaphorePermit>> {
        match lane {
            Lane::Priority => Ok(None),
            Lane::Client | Lane::Housekeeping => self
                .writes
                .clone()
                .try_acquire_owned()
                .map(Some)
                .map_err(|err| match err {
                    tokio::sync::TryAcquireError::NoPermits => {
                        Error::Overloaded("the store's write queue")
                    }
                    tokio::sync::TryAcquireError::Closed => Error::ShuttingDown,
                }),
        }
    }

    fn pool_for(&self, lane: Lane) -> &PgPool {
        match lane {
            Lane::Priority => &self.priority,
            Lane::Client | Lane::Housekeeping => &self.pool,
        }
    }

    /// After a write: times it if it committed a command (housekeeping is not one), and
    /// moves health. A store fault makes the store unhealthy; anything else (a commit, or a
    /// refusal the database answered) shows it can commit.
    fn committed<T>(&self, lane: Lane, result: &Result<T>, began: Instant) {
        let fault = match result {
            Err(Error::Store { fault, .. }) => Some(*fault),
            _ => None,
        };
        if result.is_ok() && lane != Lane::Housekeeping {
            self.metrics.store_committed(began.elapsed(), 1);
        }
        self.set_health(fault);
    }

    /// Counts a committed command and the job rows it wrote, as the SQLite writer does (here
    /// every commit carries one command).
    fn count(&self, rows: usize) {
        self.counters.record(1, rows as u64, self.synced);
    }

    fn set_health(&self, fault: Option<StoreFault>) {
        if let Some(fault) = fault {
            self.metrics.store_fault(fault.as_str());
        }
        self.health_tx.send_if_modified(|now| {
            let changed = *now != fault;
            *now = fault;
            changed
        });
        self.metrics.set_store_healthy(fault.is_none());
    }

    /// A read: a server out of reach makes the store unhealthy (reads never make it healthy
    /// again; a probe's write does).
    fn read<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(Error::Store {
            fault: fault @ StoreFault::Unreachable,
            ..
        }) = &result
        {
            self.set_health(Some(*fault));
        }
        result
    }
}

/// A deadlock or a serialization failure: the transaction did nothing and may simply run
/// again.
fn retryable(err: &Error) -> bool {
    match err {
        Error::Postgres(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("40001" | "40P01"))
        }
        _ => false,
    }
}

#[tonic::async_trait]
impl Store for PostgresStore {
    async fn recover(&self) -> Result<Recovered> {
        let conn = &self.priority;
        // Taken first, and committed (synchronously) before any start can use it.
        let epoch: i64 = sqlx::query_scalar("UPDATE epochs SET epoch = epoch + 1 RETURNING epoch")
            .fetch_one(conn)
            .await?;
        let (ready, running) = lifecycle::recover(conn).await?;
        Ok(Recovered {
            ready,
            running,
            epoch: epoch as u64,
            quotas: read::quotas(conn)
                .await?
                .into_iter()
                .map(|(q, _)| q)
                .collect(),
            paused: read::paused(conn).await?,
            waiting: read::waiting(conn).await?,
        })
    }

    async fn submit(&self, submit: Submit) -> Result<Vec<Submitted>> {
        let synced = self.synced && submit.durability == Durability::BeforeReply;
        let done = transaction!(self, Lane::Client, |conn| submit::submit(conn, &submit)
            .await)?;
        let rows = done.iter().filter(|s| !s.duplicate).count() as u64;
        self.counters.record(1, rows, synced);
        let mut tally = Tally::default();
        submit::tally(&mut tally, &submit.jobs, &done);
        self.metrics.record(tally);
        Ok(done)
    }

    async fn cancel(&self, target: CancelTarget, reason: String) -> Result<Cancelled> {
        let mut done = transaction!(self, Lane::Client, |conn| cancel::cancel(
            conn, &target, &reason
        )
        .await)?;
        self.count(done.ids.len() + done.dependents.len());
        self.metrics.record(std::mem::take(&mut done.metrics));
        Ok(done)
    }

    async fn requeue(&self, id: JobId, max_attempts: Option<u32>) -> Result<Option<ReadyJob>> {
        let ready = transaction!(self, Lane::Client, |conn| lifecycle::requeue(
            conn,
            id,
            max_attempts
        )
        .await)?;
        self.count(1);
        Ok(ready)
    }

    async fn bulk(&self, bulk: Bulk) -> Result<BulkDone> {
        if bulk.dry_run {
            // A count changes nothing: a read.
            return self.read(bulk::count(&self.pool, &bulk).await);
        }
        let mut done = transaction!(self, Lane::Client, |conn| bulk::apply(conn, &bulk).await)?;
        self.count(done.changed as usize);
        if let Some(cancelled) = &mut done.cancelled {
            self.metrics.record(std::mem::take(&mut cancelled.metrics));
        }
        Ok(done)
    }

    async fn transition(&self, ops: Transitions) -> Result<TransitionOutcome> {
        // The scheduler hands rounds over in order and may have two committing at once. They
        // commit in that order, as on SQLite: a round must not see what a later one did (an
        // errgroup's failure that cancels its queued siblings must not find one that a later
        // round started meanwhile running: its stop would come before the start settled, and
        // the worker would run a cancelled job). The fair lock is asked for on the first poll,
        // before anything else waits. The stamp follows the same order (and a retry keeps
        // it): a start planned on the permit a finish freed is never stamped before it.
        let _turn = self.transitions.lock().await;
        let now = self.stamp();
        let mut done = transaction!(self, Lane::Priority, |conn| lifecycle::transition(
            conn, &ops, now
        )
        .await)?;
        let rows = ops.finishes.len() + done.started.len() + done.cancelled_dependents.len();
        let synced = self.synced && ops.durability() == Durability::BeforeReply;
        self.counters.record(1, rows as u64, synced);
        self.metrics.record(std::mem::take(&mut done.metrics));
        Ok(done)
    }

    async fn progress(&self, reports: Vec<ProgressReport>) -> Result<Progressed> {
        let mut done = transaction!(self, Lane::Client, |conn| progress::progress(
            conn, &reports
        )
        .await)?;
        self.count(done.stored as usize);
        self.metrics.record(std::mem::take(&mut done.metrics));
        Ok(done)
    }

    async fn set_quota(&self, quota: Quota) -> Result<()> {
        transaction!(self, Lane::Client, |conn| set_quota(conn, &quota).await)?;
        self.count(1);
        Ok(())
    }

    async fn pause(&self, queue: String, paused: bool) -> Result<()> {
        transaction!(self, Lane::Client, |conn| pause(conn, &queue, paused).await)?;
        self.count(1);
        Ok(())
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>> {
        self.read(read::get(&self.pool, id).await)
    }

    async fn list(&self, filter: ListFilter) -> Result<ListPage> {
        self.read(read::list(&self.pool, &filter).await)
    }

    async fn group(&self, id: String, tenant: Option<String>) -> Result<Option<GroupRecord>> {
        self.read(read::group(&self.pool, &id, tenant.as_deref()).await)
    }

    async fn group_events(
        &self,
        group: super::GroupKey,
        after: i64,
        limit: u32,
    ) -> Result<Vec<GroupEvent>> {
        self.read(read::group_events(&self.pool, &group, after, limit).await)
    }

    async fn quotas(&self) -> Result<Vec<(Quota, u64)>> {
        self.read(read::quotas(&self.pool).await)
    }

    async fn paused(&self) -> Result<Vec<String>> {
        self.read(read::paused(&self.pool).await)
    }

    async fn queue_counts(&self) -> Result<Vec<QueueCounts>> {
        self.read(read::queue_counts(&self.pool).await)
    }

    async fn ended_per_minute(&self, since_ms: i64) -> Result<Vec<MinuteCount>> {
        self.read(read::ended_per_minute(&self.pool, since_ms).await)
    }

    async fn oldest_queued(&self) -> Result<Vec<(String, i64)>> {
        self.read(read::oldest_queued(&self.pool).await)
    }

    async fn dead_letters(
        &self,
        tenant: Option<String>,
        limit: u32,
    ) -> Result<Vec<DeadLetterGroup>> {
        self.read(read::dead_letters(&self.pool, tenant.as_deref(), limit).await)
    }

    async fn create_schedule(&self, schedule: NewSchedule) -> Result<()> {
        transaction!(self, Lane::Client, |conn| schedules::create(
            conn, &schedule
        )
        .await)?;
        self.count(1);
        Ok(())
    }

    async fn pause_schedule(&self, key: ScheduleKey, paused: bool) -> Result<()> {
        transaction!(self, Lane::Client, |conn| schedules::set_paused(
            conn, &key, paused
        )
        .await)?;
        self.count(1);
        Ok(())
    }

    async fn delete_schedule(&self, key: ScheduleKey) -> Result<()> {
        transaction!(self, Lane::Client, |conn| schedules::delete(conn, &key)
            .await)?;
        self.count(1);
        Ok(())
    }

    async fn schedule(&self, key: ScheduleKey) -> Result<Option<ScheduleRecord>> {
        self.read(schedules::get(&self.pool, &key).await)
    }

    async fn schedules(&self, tenant: Option<String>) -> Result<Vec<ScheduleRecord>> {
        self.read(schedules::list(&self.pool, tenant.as_deref()).await)
    }

    async fn fire_schedule(&self, fire: Fire) -> Result<Fired> {
        // The firing task's own write: like the scheduler's, it waits rather than being
        // refused, so a busy store delays a tick but does not drop it.
        let (fired, tally) = transaction!(self, Lane::Priority, |conn| {
            let mut tally = Tally::default();
            schedules::fire(conn, &fire, &mut tally)
                .await
                .map(|fired| (fired, tally))
        })?;
        let stored = matches!(&fired, Fired::Submitted(s) if !s.duplicate);
        self.count(usize::from(stored));
        if stored {
            self.metrics.record(tally);
        }
        Ok(fired)
    }

    async fn prune(&self, prune: Prune) -> Result<Pruned> {
        // A client write: housekeeping is refused like a submit when the store is busy.
        transaction!(self, Lane::Housekeeping, |conn| prune::prune(conn, &prune)
            .await)
    }

    async fn vacuum(&self, _pages: u32) -> Result<StoreSize> {
        // Postgres gives space back by itself (autovacuum); this only measures the database.
        let size = self.read(prune::size(&self.pool).await)?;
        self.metrics.set_store_bytes(size.bytes);
        Ok(size)
    }

    fn writer_stats(&self) -> WriterStats {
        self.counters.snapshot()
    }

    fn health(&self) -> watch::Receiver<Option<StoreFault>> {
        self.health.clone()
    }

    fn lease(&self, address: String, term: Duration) -> Option<Lease> {
        Some(self.own_lease(address, term))
    }

    async fn probe(&self) -> Result<()> {
        let result = probe(&self.priority).await;
        // Not a command: health follows it, the counters do not.
        let fault = match &result {
            Err(Error::Store { fault, .. }) => Some(*fault),
            _ => None,
        };
        self.set_health(fault);
        result
    }

    async fn close(&self) -> Result<()> {
        // Refuses new client writes, then waits for what was sent to finish (closing a pool
        // waits for its connections to come back) and closes every connection.
        self.writes.close();
        self.pool.close().await;
        self.priority.close().await;
        tracing::info!("store closed");
        Ok(())
    }
}

const PROBE: &str = "INSERT INTO store_probe (id, at_ms) VALUES (1, $1)
    ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms";

/// A real write: whether the database takes writes again.
async fn probe(pool: &PgPool) -> Result<()> {
    sqlx::query(PROBE).bind(now_ms()).execute(pool).await?;
    Ok(())
}

const DELETE_QUOTA: &str = "DELETE FROM quotas WHERE scope = $1";
const SET_QUOTA: &str = "INSERT INTO quotas (scope, max_in_flight, max_queued, rate_per_second,
        burst, attempt_timeout_ms) VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (scope) DO UPDATE SET max_in_flight = excluded.max_in_flight,
        max_queued = excluded.max_queued, rate_per_second = excluded.rate_per_second,
        burst = excluded.burst, attempt_timeout_ms = excluded.attempt_timeout_ms";
const PAUSE: &str = "INSERT INTO paused_queues (queue) VALUES ($1) ON CONFLICT DO NOTHING";
const RESUME: &str = "DELETE FROM paused_queues WHERE queue = $1";

async fn set_quota(conn: &mut PgConnection, q: &Quota) -> Result<()> {
    if q.is_empty() {
        sqlx::query(DELETE_QUOTA)
            .bind(&q.scope)
            .execute(&mut *conn)
            .await?;
        return Ok(());
    }
    sqlx::query(SET_QUOTA)
        .bind(&q.scope)
        .bind(q.max_in_flight.map(i64::from))
        .bind(q.max_queued.map(i64::from))
        .bind(q.rate_per_second)
        .bind(q.burst.map(i64::from))
        .bind(q.attempt_timeout_ms)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn pause(conn: &mut PgConnection, queue: &str, paused: bool) -> Result<()> {
    sqlx::query(if paused { PAUSE } else { RESUME })
        .bind(queue)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

// How domain values are stored: ids as their hyphenated text, states and outcomes by their
// codes, u32 counts as BIGINT. The SQL writes a code with its name beside it: `10 /* queued */`.

/// Reading typed columns from a row, each failure a `Corrupt` row or a driver error.
pub(super) trait Columns {
    fn col<'r, T>(&'r self, index: usize) -> Result<T>
    where
        T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>;
    fn id(&self, index: usize) -> Result<JobId>;
    fn opt_id(&self, index: usize) -> Result<Option<JobId>>;
    fn state(&self, index: usize) -> Result<JobState>;
    fn opt_state(&self, index: usize) -> Result<Option<JobState>>;
    fn outcome(&self, index: usize) -> Result<AttemptOutcome>;
    fn u32(&self, index: usize) -> Result<u32>;
    fn opt_u32(&self, index: usize) -> Result<Option<u32>>;
}

impl Columns for PgRow {
    fn col<'r, T>(&'r self, index: usize) -> Result<T>
    where
        T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        Ok(self.try_get(index)?)
    }

    fn id(&self, index: usize) -> Result<JobId> {
        parse_id(self.try_get::<&str, _>(index)?)
    }

    fn opt_id(&self, index: usize) -> Result<Option<JobId>> {
        self.try_get::<Option<&str>, _>(index)?
            .map(parse_id)
            .transpose()
    }

    fn state(&self, index: usize) -> Result<JobState> {
        let code: i64 = self.try_get(index)?;
        JobState::from_code(code).ok_or_else(|| Error::Corrupt(format!("job state {code}")))
    }

    fn opt_state(&self, index: usize) -> Result<Option<JobState>> {
        match self.try_get::<Option<i64>, _>(index)? {
            Some(code) => JobState::from_code(code)
                .map(Some)
                .ok_or_else(|| Error::Corrupt(format!("job state {code}"))),
            None => Ok(None),
        }
    }

    fn outcome(&self, index: usize) -> Result<AttemptOutcome> {
        let code: i64 = self.try_get(index)?;
        AttemptOutcome::from_code(code)
            .ok_or_else(|| Error::Corrupt(format!("attempt outcome {code}")))
    }

    fn u32(&self, index: usize) -> Result<u32> {
        to_u32(self.try_get(index)?)
    }

    fn opt_u32(&self, index: usize) -> Result<Option<u32>> {
        self.try_get::<Option<i64>, _>(index)?
            .map(to_u32)
            .transpose()
    }
}

fn parse_id(text: &str) -> Result<JobId> {
    text.parse()
        .map_err(|_| Error::Corrupt(format!("not a job id: {text:?}")))
}

fn to_u32(n: i64) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::Corrupt(format!("{n} is out of range")))
}

/// Ids as text, for `= ANY($1)`.
fn id_texts(ids: &[JobId]) -> Vec<String> {
    ids.iter().map(JobId::to_string).collect()
}

/// The columns `ready_from_row` reads, in order (prefix `j.` where joined).
const READY_COLUMNS: &str = "id, queue, kind, priority, coalesce(run_at_ms, 0), seq,
    deadline_ms, weight, tenant_id, concurrency_key, attempt";
const READY_COLUMNS_J: &str = "j.id, j.queue, j.kind, j.priority,
    coalesce(j.run_at_ms, 0), j.seq, j.deadline_ms, j.weight, j.tenant_id, j.concurrency_key,
    j.attempt";

fn ready_from_row(row: &PgRow) -> Result<ReadyJob> {
    Ok(ReadyJob {
        id: row.id(0)?,
        queue: row.col(1)?,
        kind: row.col(2)?,
        priority: row.col(3)?,
        run_at_ms: row.col(4)?,
        seq: row.col(5)?,
        deadline_ms: row.col(6)?,
        weight: row.u32(7)?,
        tenant_id: row.col(8)?,
        concurrency_key: row.col(9)?,
        attempt: row.u32(10)?,
    })
}
