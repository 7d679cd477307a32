//! The writer thread: the only code that writes to the database, and only the group-commit
//! loop. The rules of each command are in `submit.rs`, `cancel.rs`, `lifecycle.rs` and
//! `progress.rs`.
//!
//! It blocks until a command arrives on either of its two channels, then takes every
//! scheduler command waiting and the client commands waiting (up to [`MAX_BATCH`]), applies
//! each inside its own savepoint (one bad command does not spoil the others) and commits them
//! all in one `BEGIN IMMEDIATE` transaction. Replies go out only after the commit: an
//! acknowledged write is durable.

use std::time::Instant;

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot, watch};

use super::{bulk, cancel, counts::Counts, lifecycle, progress, prune, schedules, submit};
use crate::store::WriteCounters;
use crate::{
    domain::{JobId, NewSchedule, Quota, ReadyJob, ScheduleKey, now_ms},
    error::{Error, Result, StoreFault},
    store::{
        Bulk, BulkDone, CancelTarget, Cancelled, Durability, Fire, Fired, ProgressReport,
        Progressed, Prune, Pruned, StoreSize, Submit, Submitted, SyncMode, TransitionOutcome,
        Transitions,
    },
    telemetry::{Metrics, Tally},
};

/// What recovery finds: ready jobs and attempts still running, and the epoch it took.
#[derive(Debug, Default)]
pub(super) struct Recovering {
    pub ready: Vec<ReadyJob>,
    pub running: Vec<crate::domain::RunningAttempt>,
    pub epoch: u64,
}

/// The most client commands one transaction carries (the scheduler's are always all taken).
const MAX_BATCH: usize = 2048;

pub(super) enum Command {
    Submit {
        submit: Submit,
        reply: oneshot::Sender<Result<Vec<Submitted>>>,
    },
    Cancel {
        target: CancelTarget,
        reason: String,
        reply: oneshot::Sender<Result<Cancelled>>,
    },
    Transition {
        ops: Transitions,
        reply: oneshot::Sender<Result<TransitionOutcome>>,
    },
    Requeue {
        id: JobId,
        max_attempts: Option<u32>,
        reply: oneshot::Sender<Result<Option<ReadyJob>>>,
    },
    /// One step of a bulk action.
    Bulk {
        bulk: Box<Bulk>,
        reply: oneshot::Sender<Result<BulkDone>>,
    },
    Admin {
        op: AdminOp,
        reply: oneshot::Sender<Result<()>>,
    },
    /// What running attempts reported (fenced, best effort).
    Progress {
        reports: Vec<ProgressReport>,
        reply: oneshot::Sender<Result<Progressed>>,
    },
    Recover {
        reply: oneshot::Sender<Result<Recovering>>,
    },
    /// One tick of a schedule: its job and its last fired tick, together.
    Fire {
        fire: Box<Fire>,
        reply: oneshot::Sender<Result<Fired>>,
    },
    /// A small real write: can the store commit again?
    Probe {
        reply: oneshot::Sender<Result<()>>,
    },
    /// One small batch of retention.
    Prune {
        prune: Prune,
        reply: oneshot::Sender<Result<Pruned>>,
    },
    /// Gives back up to `pages` free pages.
    Vacuum {
        pages: u32,
        reply: oneshot::Sender<Result<StoreSize>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// Run-time control, persisted.
#[derive(Debug, Clone)]
pub(super) enum AdminOp {
    SetQuota(Quota),
    Pause { queue: String, paused: bool },
    CreateSchedule(Box<NewSchedule>),
    PauseSchedule { key: ScheduleKey, paused: bool },
    DeleteSchedule(ScheduleKey),
}

/// The writer's two inputs.
pub(super) struct Inbox {
    /// The scheduler's (and shutdown's): always served first.
    pub priority: mpsc::Receiver<Command>,
    pub clients: mpsc::Receiver<Command>,
}

impl Inbox {
    /// Blocks for the next command, the scheduler's first; `None` once both are closed.
    fn next(&mut self) -> Option<Command> {
        futures::executor::block_on(async {
            tokio::select! {
                biased;
                Some(command) = self.priority.recv() => Some(command),
                Some(command) = self.clients.recv() => Some(command),
                else => None,
            }
        })
    }

    /// Adds what is already waiting: every scheduler command, then clients' up to the limit.
    fn fill(&mut self, batch: &mut Vec<Command>) {
        while let Ok(command) = self.priority.try_recv() {
            batch.push(command);
        }
        while batch.len() < MAX_BATCH {
            match self.clients.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
    }
}

impl Command {
    /// Whether its commit must be durable before it is answered ([`Durability`]).
    fn needs_sync(&self) -> bool {
        let durability = match self {
            Command::Submit { submit, .. } => submit.durability,
            Command::Transition { ops, .. } => ops.durability(),
            _ => Durability::BeforeReply,
        };
        durability == Durability::BeforeReply
    }
}

/// The writer connection's `synchronous`. Under `--sync full` it is FULL (each COMMIT
/// fsyncs the WAL) for every batch but one that holds nothing to make durable before its
/// replies: that one commits under NORMAL, and the next FULL commit's fsync covers it.
/// NORMAL still syncs around checkpoints, which keeps the file whole either way.
pub(super) struct Synchronous {
    configured: SyncMode,
    full_now: bool,
}

impl Synchronous {
    /// As the connection was opened: FULL under `--sync full`.
    pub(super) fn new(configured: SyncMode) -> Synchronous {
        Synchronous {
            configured,
            full_now: configured == SyncMode::Full,
        }
    }

    /// Makes the next commit fsync if `durable` and the store syncs at all; returns whether
    /// it will.
    fn set(&mut self, conn: &Connection, durable: bool) -> rusqlite::Result<bool> {
        let full = durable && self.configured == SyncMode::Full;
        if full != self.full_now {
            conn.pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" })?;
            self.full_now = full;
        }
        Ok(full)
    }
}

/// What a command's run produced, held until its transaction commits.
enum Outcome {
    Submit(Result<Vec<Submitted>>),
    Cancel(Result<Cancelled>),
    Transition(Result<TransitionOutcome>),
    Requeue(Result<Option<ReadyJob>>),
    Bulk(Result<BulkDone>),
    Admin(Result<()>),
    Progress(Result<Progressed>),
    Recover(Result<Recovering>),
    Fire(Result<Fired>),
    Probe(Result<()>),
    Prune(Result<Pruned>),
    Vacuum(Result<StoreSize>),
    Close,
}

impl Outcome {
    /// The command's own error, if it failed (its writes are to be undone).
    fn error(&self) -> Option<&Error> {
        match self {
            Outcome::Submit(r) => r.as_ref().err(),
            Outcome::Cancel(r) => r.as_ref().err(),
            Outcome::Transition(r) => r.as_ref().err(),
            Outcome::Requeue(r) => r.as_ref().err(),
            Outcome::Bulk(r) => r.as_ref().err(),
            Outcome::Admin(r) => r.as_ref().err(),
            Outcome::Progress(r) => r.as_ref().err(),
            Outcome::Recover(r) => r.as_ref().err(),
            Outcome::Fire(r) => r.as_ref().err(),
            Outcome::Probe(r) => r.as_ref().err(),
            Outcome::Prune(r) => r.as_ref().err(),
            Outcome::Vacuum(r) => r.as_ref().err(),
            Outcome::Close => None,
        }
    }
}

/// A command with what its run produced, answered once its transaction commits or fails.
struct Pending {
    command: Command,
    outcome: Outcome,
}

impl Pending {
    fn new(command: Command, outcome: Outcome) -> Pending {
        Pending { command, outcome }
    }

    fn send(self, commit: &Result<(), Failed>) {
        use {Command as C, Outcome as O};
        match (self.command, self.outcome) {
            (C::Submit { reply, .. }, O::Submit(r)) => answer(reply, r, commit),
            (C::Cancel { reply, .. }, O::Cancel(r)) => answer(reply, r, commit),
            (C::Transition { reply, .. }, O::Transition(r)) => answer(reply, r, commit),
            (C::Requeue { reply, .. }, O::Requeue(r)) => answer(reply, r, commit),
            (C::Bulk { reply, .. }, O::Bulk(r)) => answer(reply, r, commit),
            (C::Admin { reply, .. }, O::Admin(r)) => answer(reply, r, commit),
            (C::Progress { reply, .. }, O::Progress(r)) => answer(reply, r, commit),
            (C::Recover { reply }, O::Recover(r)) => answer(reply, r, commit),
            (C::Fire { reply, .. }, O::Fire(r)) => answer(reply, r, commit),
            (C::Probe { reply }, O::Probe(r)) => answer(reply, r, commit),
            (C::Prune { reply, .. }, O::Prune(r)) => answer(reply, r, commit),
            (C::Vacuum { reply, .. }, O::Vacuum(r)) => answer(reply, r, commit),
            (C::Close { reply }, _) => drop(reply.send(())),
            // Never: each outcome is made by running its own command (`run_command`).
            (command, _) => refuse(
                command,
                &Err(Failed::Other("the writer lost a command's outcome".into())),
            ),
        }
    }

    /// Whether the command itself failed (its writes are to be undone).
    fn failed(&self) -> bool {
        self.outcome.error().is_some()
    }

    /// The store fault the command's own result carries, if any, with what the database said.
    fn fault(&self) -> Option<(StoreFault, &str)> {
        match self.outcome.error() {
            Some(Error::Store { fault, detail }) => Some((*fault, detail.as_str())),
            _ => None,
        }
    }
}

/// Why a whole batch failed (BEGIN or COMMIT did), told to each of its commands.
#[derive(Debug, Clone)]
enum Failed {
    Store(StoreFault, String),
    Other(String),
}

impl From<Error> for Failed {
    fn from(err: Error) -> Self {
        match err {
            Error::Store { fault, detail } => Failed::Store(fault, detail),
            other => Failed::Other(other.to_string()),
        }
    }
}

impl From<rusqlite::Error> for Failed {
    fn from(err: rusqlite::Error) -> Self {
        Failed::from(Error::from(err))
    }
}

/// Sends `result` if the commit held; the commit's error otherwise. A caller that hung up
/// no longer wants the answer: a failed send is fine.
fn answer<T>(tx: oneshot::Sender<Result<T>>, result: Result<T>, commit: &Result<(), Failed>) {
    let _ = tx.send(match commit {
        Ok(()) => result,
        Err(Failed::Store(fault, detail)) => Err(Error::Store {
            fault: *fault,
            detail: detail.clone(),
        }),
        Err(Failed::Other(e)) => Err(Error::CommitFailed(e.clone())),
    });
}

/// Whether the store can commit: `None` while it can, the fault while it cannot.
pub(super) type Health = watch::Sender<Option<StoreFault>>;

/// The writer loop. Returns when both channels close or a `Close` command is committed.
pub(super) fn run(
    mut conn: Connection,
    counts: &Counts,
    mut inbox: Inbox,
    mut synchronous: Synchronous,
    counters: &WriteCounters,
    metrics: &Metrics,
    health: &Health,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut closing = false;
    while !closing {
        let Some(first) = inbox.next() else {
            break;
        };
        batch.push(first);
        inbox.fill(&mut batch);
        closing = batch.iter().any(|c| matches!(c, Command::Close { .. }));
        let fault = commit_batch(
            &mut conn,
            counts,
            &mut batch,
            &mut synchronous,
            counters,
            metrics,
        );
        if let Some(fault) = fault {
            metrics.store_fault(fault.as_str());
        }
        // Told only when it changes: health checks and the gauge follow it.
        health.send_if_modified(|now| {
            let changed = *now != fault;
            *now = fault;
            changed
        });
        metrics.set_store_healthy(fault.is_none());
    }
    // Fold the WAL back into the main file so the database is whole on its own.
    if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::warn!(cause = %err, "final WAL checkpoint failed");
    }
    if let Err((_, err)) = conn.close() {
        tracing::warn!(cause = %err, "closing the database failed");
    }
    tracing::info!("store closed");
}

/// Commits one batch; returns the store fault it met, if any (then the store cannot commit
/// now).
fn commit_batch(
    conn: &mut Connection,
    counts: &Counts,
    batch: &mut Vec<Command>,
    synchronous: &mut Synchronous,
    counters: &WriteCounters,
    metrics: &Metrics,
) -> Option<StoreFault> {
    // Taking stock at start, probing and housekeeping (pruning, vacuum) are the store's own
    // work, not anyone's commands.
    let commands = batch
        .iter()
        .filter(|c| {
            !matches!(
                c,
                Command::Recover { .. }
                    | Command::Probe { .. }
                    | Command::Prune { .. }
                    | Command::Vacuum { .. }
            )
        })
        .count() as u64;
    let mut rows = 0u64;
    // Held until the commit: a command that rolls back, or a failed commit, counts nothing.
    let mut tally = Tally::default();
    let began = Instant::now();
    let durable = batch.iter().any(Command::needs_sync);
    let begun = synchronous
        .set(conn, durable)
        .and_then(|synced| conn.execute_batch("BEGIN IMMEDIATE").map(|()| synced));
    let synced = match begun {
        Ok(synced) => synced,
        Err(err) => return refuse_all(batch.drain(..), err),
    };
    // The scheduler's transitions go first (each source's own order is kept).
    batch.sort_by_key(|c| !matches!(c, Command::Transition { .. }));
    // Every command straight in the transaction first, with no savepoint: a savepoint copies
    // each page its command changes into a journal before the change, which for a scheduler
    // round or a batch of submits is most of the pages the batch writes. Commands rarely fail;
    // when one does, the whole transaction is undone and the batch is run again the careful
    // way, each command in a savepoint of its own.
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut clean = true;
    for command in batch.iter() {
        let outcome = run_command(conn, counts, command, Guard::Alone, &mut rows, &mut tally);
        clean = outcome.error().is_none();
        outcomes.push(outcome);
        if !clean {
            break;
        }
    }
    let pending = if clean {
        batch
            .drain(..)
            .zip(outcomes)
            .map(|(command, outcome)| Pending::new(command, outcome))
            .collect()
    } else {
        // What the failed pass produced is never sent: the batch runs again.
        drop(outcomes);
        counts.forget();
        rows = 0;
        tally = Tally::default();
        if let Err(err) = restart(conn) {
            return refuse_all(batch.drain(..), err);
        }
        match guarded_pass(conn, counts, batch, &mut rows, &mut tally) {
            Ok(pending) => pending,
            Err(fault) => return fault,
        }
    };
    // A power cut that takes a commit no fsync covered (only such a commit can be lost so):
    // it is gone after the restart, though its replies went out as if it had stayed.
    let lost = (|| {
        fail::fail_point!("store-unsynced-commit-lost", !synced, |_| true);
        false
    })();
    let end = if lost { "ROLLBACK" } else { "COMMIT" };
    // The counts of what the batch moved go in with it, written once each.
    let commit = counts
        .flush(conn)
        .map_err(Failed::from)
        .and_then(|()| conn.execute_batch(end).map_err(Failed::from))
        .inspect_err(|err| {
            tracing::error!(cause = ?err, "commit failed; rolling back");
            counts.forget();
            // The transaction may still be open after a failed COMMIT; end it.
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        });
    let fault = match &commit {
        Err(Failed::Store(fault, _)) => Some(*fault),
        Err(Failed::Other(_)) => None,
        Ok(()) => pending
            .iter()
            .find_map(Pending::fault)
            .map(|(fault, _)| fault),
    };
    // A crash after the commit, before any reply: what committed must be found after a
    // restart, though nobody heard of it.
    fail::fail_point!("store-after-commit", |_| -> Option<StoreFault> {
        std::process::abort()
    });
    if commit.is_ok() && commands > 0 {
        counters.record(commands, rows, synced);
        // Before the replies: whoever hears of a write can already see it counted.
        metrics.store_committed(began.elapsed(), commands);
        metrics.record(tally);
    }
    for reply in pending {
        reply.send(&commit);
    }
    fault
}

/// Ends what is left of a transaction a command failed in and begins another. Some errors (a
/// full disk, an I/O error) have already rolled it back.
fn restart(conn: &Connection) -> rusqlite::Result<()> {
    if !conn.is_autocommit() {
        conn.execute_batch("ROLLBACK")?;
    }
    conn.execute_batch("BEGIN IMMEDIATE")
}

/// Answers every command with `err`, which stopped their batch; returns its store fault.
fn refuse_all(
    commands: impl IntoIterator<Item = Command>,
    err: rusqlite::Error,
) -> Option<StoreFault> {
    let err = Err(Failed::from(err));
    for command in commands {
        refuse(command, &err);
    }
    match err {
        Err(Failed::Store(fault, _)) => Some(fault),
        _ => None,
    }
}

/// Runs a batch again after one of its commands failed, in a new transaction: each command
/// but the first in a savepoint of its own, so that one that fails takes only its own writes
/// with it. Returns the results to send after the commit, or, if the batch failed as one
/// (its replies sent), the store fault it met.
fn guarded_pass(
    conn: &Connection,
    counts: &Counts,
    batch: &mut Vec<Command>,
    rows: &mut u64,
    tally: &mut Tally,
) -> std::result::Result<Vec<Pending>, Option<StoreFault>> {
    let mut pending = Vec::with_capacity(batch.len());
    // The first command runs outside a savepoint: with nothing before it in the transaction,
    // undoing it is rolling the transaction back.
    let mut queue = batch.drain(..);
    if let Some(first) = queue.next() {
        let done = apply(conn, counts, first, Guard::Alone, rows, tally);
        let failed = done.failed();
        pending.push(done);
        if failed {
            counts.forget();
        }
        if failed && let Err(err) = restart(conn) {
            for reply in pending {
                reply.send(&Ok(()));
            }
            return Err(refuse_all(queue, err));
        }
    }
    while let Some(command) = queue.next() {
        pending.push(apply(conn, counts, command, Guard::Savepoint, rows, tally));
        // Some errors (a full disk, an I/O error) roll the whole transaction back, not just
        // the command's savepoint: what the batch did so far is gone, and the commands after
        // it would each commit on their own. The batch fails as one, with that error.
        if conn.is_autocommit() {
            counts.forget();
            let cause = pending.iter().find_map(Pending::fault);
            let fault = cause.map(|(fault, _)| fault);
            let err = Err(match fault {
                Some(fault) => Failed::Store(fault, "the store rolled the batch back".into()),
                None => Failed::Other("the store rolled the batch back".into()),
            });
            tracing::error!(
                ?fault,
                cause = cause.map_or("", |(_, detail)| detail),
                "a command ended the transaction; the batch is refused"
            );
            for command in queue {
                refuse(command, &err);
            }
            for reply in pending {
                reply.send(&err);
            }
            return Err(fault);
        }
    }
    Ok(pending)
}

/// How a command's writes are undone if it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard {
    /// In a savepoint of its own, rolled back to if it fails.
    Savepoint,
    /// Alone so far in its transaction: the caller rolls the transaction back if it fails.
    Alone,
}

/// Runs `f` as `guard` says.
fn guarded<T>(
    conn: &Connection,
    counts: &Counts,
    guard: Guard,
    f: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    match guard {
        Guard::Savepoint => savepoint(conn, counts, f),
        Guard::Alone => f(conn),
    }
}

/// Applies one command under its guard; its reply waits for the commit.
fn apply(
    conn: &Connection,
    counts: &Counts,
    command: Command,
    guard: Guard,
    rows: &mut u64,
    tally: &mut Tally,
) -> Pending {
    let outcome = run_command(conn, counts, &command, guard, rows, tally);
    Pending::new(command, outcome)
}

/// Runs one command under its guard, leaving it to be answered (or run again).
fn run_command(
    conn: &Connection,
    counts: &Counts,
    command: &Command,
    guard: Guard,
    rows: &mut u64,
    tally: &mut Tally,
) -> Outcome {
    match command {
        Command::Submit { submit, .. } => {
            let result = guarded(conn, counts, guard, |c| submit::submit(c, counts, submit));
            if let Ok(done) = &result {
                *rows += done.iter().filter(|s| !s.duplicate).count() as u64;
                submit::tally(tally, &submit.jobs, done);
            }
            Outcome::Submit(result)
        }
        Command::Cancel { target, reason, .. } => {
            let mut result = guarded(conn, counts, guard, |c| cancel::cancel(c, target, reason));
            if let Ok(done) = &mut result {
                *rows += (done.ids.len() + done.dependents.len()) as u64;
                tally.append(&mut done.metrics);
            }
            Outcome::Cancel(result)
        }
        Command::Transition { ops, .. } => {
            let mut result = guarded(conn, counts, guard, |c| lifecycle::transition(c, ops));
            if let Ok(done) = &mut result {
                *rows += (ops.finishes.len() + done.started.len() + done.cancelled_dependents.len())
                    as u64;
                tally.append(&mut done.metrics);
            }
            Outcome::Transition(result)
        }
        Command::Requeue {
            id, max_attempts, ..
        } => {
            let result = guarded(conn, counts, guard, |c| {
                lifecycle::requeue(c, *id, *max_attempts)
            });
            *rows += u64::from(result.is_ok());
            Outcome::Requeue(result)
        }
        Command::Bulk { bulk, .. } => {
            let mut result = guarded(conn, counts, guard, |c| bulk::apply(c, counts, bulk));
            if let Ok(done) = &mut result {
                *rows += done.changed;
                if let Some(cancelled) = &mut done.cancelled {
                    tally.append(&mut cancelled.metrics);
                }
            }
            Outcome::Bulk(result)
        }
        Command::Admin { op, .. } => {
            if matches!(op, AdminOp::SetQuota(_)) {
                counts.quotas_changed();
            }
            let result = guarded(conn, counts, guard, |c| admin(c, op));
            *rows += u64::from(result.is_ok());
            Outcome::Admin(result)
        }
        Command::Progress { reports, .. } => {
            let mut result = guarded(conn, counts, guard, |c| progress::progress(c, reports));
            if let Ok(done) = &mut result {
                *rows += u64::from(done.stored);
                tally.append(&mut done.metrics);
            }
            Outcome::Progress(result)
        }
        Command::Recover { .. } => {
            Outcome::Recover(guarded(conn, counts, guard, lifecycle::recover))
        }
        Command::Fire { fire, .. } => {
            // Counted only if it commits, like every command's metrics.
            let mut counted = Tally::default();
            let result = guarded(conn, counts, guard, |c| {
                schedules::fire(c, counts, fire, &mut counted)
            });
            if let Ok(Fired::Submitted(s)) = &result
                && !s.duplicate
            {
                *rows += 1;
                tally.append(&mut counted);
            }
            Outcome::Fire(result)
        }
        Command::Probe { .. } => Outcome::Probe(guarded(conn, counts, guard, probe)),
        // Deletions: not rows written.
        Command::Prune { prune, .. } => {
            Outcome::Prune(guarded(conn, counts, guard, |c| prune::prune(c, prune)))
        }
        Command::Vacuum { pages, .. } => {
            Outcome::Vacuum(guarded(conn, counts, guard, |c| prune::vacuum(c, *pages)))
        }
        Command::Close { .. } => Outcome::Close,
    }
}

/// Pages a write needs free at least, for the store to count as able to commit again.
const PROBE_ROOM_PAGES: i64 = 16;

/// A real write, and room for more: whether the store can take writes again.
fn probe(conn: &Connection) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO store_probe (id, at_ms) VALUES (1, ?1)")?
        .execute(params![now_ms()])?;
    let pragma = |name: &str| -> Result<i64> {
        Ok(conn.query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))?)
    };
    let room = pragma("max_page_count")? - pragma("page_count")? + pragma("freelist_count")?;
    if room < PROBE_ROOM_PAGES {
        return Err(Error::Store {
            fault: StoreFault::Full,
            detail: format!("{room} pages left under the database's size cap"),
        });
    }
    Ok(())
}

/// Answers a command of a batch that could not begin, with the batch's error (`err` is always
/// an `Err`: the placeholder results below are never sent).
fn refuse(command: Command, err: &Result<(), Failed>) {
    debug_assert!(err.is_err());
    let outcome = match &command {
        Command::Submit { .. } => Outcome::Submit(Ok(vec![])),
        Command::Cancel { .. } => Outcome::Cancel(Err(Error::ShuttingDown)),
        Command::Transition { .. } => Outcome::Transition(Ok(TransitionOutcome::default())),
        Command::Requeue { .. } => Outcome::Requeue(Ok(None)),
        Command::Bulk { .. } => Outcome::Bulk(Err(Error::ShuttingDown)),
        Command::Admin { .. } => Outcome::Admin(Ok(())),
        Command::Progress { .. } => Outcome::Progress(Ok(Progressed::default())),
        Command::Recover { .. } => Outcome::Recover(Ok(Default::default())),
        Command::Fire { .. } => Outcome::Fire(Ok(Fired::Stale)),
        Command::Probe { .. } => Outcome::Probe(Ok(())),
        Command::Prune { .. } => Outcome::Prune(Ok(Pruned::default())),
        Command::Vacuum { .. } => Outcome::Vacuum(Ok(StoreSize::default())),
        Command::Close { .. } => Outcome::Close,
    };
    Pending::new(command, outcome).send(err);
}

/// Runs `f` in a savepoint: its writes, and the moves of jobs they made, are kept if it
/// succeeds and undone if it fails.
pub(super) fn savepoint<T>(
    conn: &Connection,
    counts: &Counts,
    f: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    conn.prepare_cached("SAVEPOINT command")?.execute([])?;
    let before = counts.mark();
    match f(conn) {
        Ok(value) => {
            conn.prepare_cached("RELEASE command")?.execute([])?;
            Ok(value)
        }
        Err(err) => {
            counts.rewind(before);
            // An error that rolled the whole transaction back left no savepoint to return
            // to; the batch sees that and fails as one.
            if !conn.is_autocommit() {
                conn.prepare_cached("ROLLBACK TO command")?.execute([])?;
                conn.prepare_cached("RELEASE command")?.execute([])?;
            }
            Err(err)
        }
    }
}

fn admin(conn: &Connection, op: &AdminOp) -> Result<()> {
    match op {
        AdminOp::SetQuota(q) if q.is_empty() => {
            conn.prepare_cached("DELETE FROM quotas WHERE scope = ?1")?
                .execute(params![q.scope])?;
        }
        AdminOp::SetQuota(q) => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO quotas (scope, max_in_flight, max_queued,
                    rate_per_second, burst, attempt_timeout_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                q.scope,
                q.max_in_flight,
                q.max_queued,
                q.rate_per_second,
                q.burst,
                q.attempt_timeout_ms
            ])?;
        }
        AdminOp::Pause {
            queue,
            paused: true,
        } => {
            conn.prepare_cached("INSERT OR IGNORE INTO paused_queues (queue) VALUES (?1)")?
                .execute(params![queue])?;
        }
        AdminOp::Pause {
            queue,
            paused: false,
        } => {
            conn.prepare_cached("DELETE FROM paused_queues WHERE queue = ?1")?
                .execute(params![queue])?;
        }
        AdminOp::CreateSchedule(schedule) => schedules::create(conn, schedule)?,
        AdminOp::PauseSchedule { key, paused } => schedules::set_paused(conn, key, *paused)?,
        AdminOp::DeleteSchedule(key) => schedules::delete(conn, key)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests;
