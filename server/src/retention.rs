//! Retention: the pruner task, which keeps the database from growing without end. Every
//! `--prune-interval` it asks the store to remove what the `--retain-*` flags let go, one
//! small batch (at most [`PRUNE_BATCH`] jobs) per transaction until a batch finds nothing,
//! then gives the freed pages back to the file system in bounded steps, and records the
//! store's size.
//!
//! Each batch is an ordinary client write: it waits its turn in the writer's queue behind the
//! submits already there and rides in a group commit like them, never on the scheduler's lane.
//! A submit that arrives while a batch runs waits for it, so the batch is kept short: its size
//! follows how long the last one's statements took in the store ([`BATCH_TARGET`]: halved when
//! slower, grown when well under; the commit's fsync is not counted, every submit pays its
//! own), and the task pauses as long again before the next, so pruning holds the writer at
//! most half the time. A backlog of millions of due jobs then costs submitters a few
//! milliseconds at worst, never one long stall. What the store keeps however old it
//! is (live jobs, dependencies of kept jobs, running or watched groups) is its rule
//! (`store::sqlite::prune`); the watched groups come from the [`Notifier`].

use std::{sync::Arc, time::Duration};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::Retention,
    domain::{JobState, now_ms},
    error::{Error, Result},
    fanin::Notifier,
    store::{Cutoff, Prune, Pruned, Store},
    telemetry::Metrics,
};

/// Jobs one pruning transaction removes at most: small enough that the commit it rides in
/// stays short.
pub const PRUNE_BATCH: u32 = 500;

/// The fewest jobs a batch asks for, however slow the store.
const MIN_BATCH: u32 = 16;

/// How long one batch's statements should take in the store: what a submit that shares its
/// commit waits for it at worst, beside the commit itself.
pub const BATCH_TARGET: Duration = Duration::from_millis(1);

/// Free pages one vacuum step gives back at most (256 KiB of 4 KiB pages): each moved page is
/// written again, so a step is kept about as short as a pruning batch.
const VACUUM_STEP: u32 = 64;

/// How long to wait before trying again when the write queue is full.
const BUSY_BACKOFF: Duration = Duration::from_millis(50);

impl Retention {
    /// For each terminal state that is pruned, the end time before which its jobs are due.
    pub fn cutoffs(&self, now_ms: i64) -> Vec<Cutoff> {
        [
            (JobState::Succeeded, self.succeeded),
            (JobState::Failed, self.failed),
            (JobState::Cancelled, self.cancelled),
            (JobState::DeadlineExceeded, self.deadline_exceeded),
        ]
        .into_iter()
        .filter_map(|(state, kept)| {
            let kept = i64::try_from(kept?.as_millis()).unwrap_or(i64::MAX);
            Some(Cutoff::new(state, now_ms.saturating_sub(kept)))
        })
        .collect()
    }
}

/// Starts the pruner on `tasks`; it stops when `stop` fires.
pub fn start(
    store: Arc<dyn Store>,
    notifier: Notifier,
    metrics: Metrics,
    retention: Retention,
    stop: CancellationToken,
    tasks: &TaskTracker,
) {
    let pruner = Pruner {
        store,
        notifier,
        metrics,
        retention,
        stop,
    };
    tasks.spawn(pruner.run());
}

struct Pruner {
    store: Arc<dyn Store>,
    notifier: Notifier,
    metrics: Metrics,
    retention: Retention,
    stop: CancellationToken,
}

impl Pruner {
    async fn run(self) {
        let every = self.retention.interval;
        // The first pass after one interval: a coordinator that starts does its own work first.
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            match self.pass().await {
                Ok(pruned) if !pruned.is_empty() => tracing::info!(
                    jobs = pruned.jobs,
                    groups = pruned.groups,
                    keys = pruned.keys,
                    "pruned"
                ),
                Ok(_) => {}
                Err(Error::ShuttingDown) => break,
                Err(err) => tracing::warn!(cause = %err, "pruning failed; trying again later"),
            }
        }
    }

    /// One pass: batches until everything due (as of its start) has been looked at, then the
    /// vacuum.
    async fn pass(&self) -> Result<Pruned> {
        let mut total = Pruned::default();
        let mut limit = PRUNE_BATCH / 4;
        let now = now_ms();
        let mut cutoffs = self.retention.cutoffs(now);
        while !self.stop.is_cancelled() {
            let prune = Prune {
                cutoffs: cutoffs.clone(),
                now_ms: now,
                limit,
                // Read for each batch: a watch opened meanwhile counts from the next one.
                watched: self.notifier.watched_groups(),
            };
            let pruned = match self.store.prune(prune).await {
                Err(Error::Overloaded(_)) => {
                    self.back_off().await;
                    continue;
                }
                other => other?,
            };
            // The batch's own work, not its commit's fsync: what a submit in the same commit
            // waited for because of it.
            let took = pruned.work;
            // The reply comes after the commit: what is counted is gone.
            self.metrics.pruned(pruned.jobs);
            total.jobs += pruned.jobs;
            total.groups += pruned.groups;
            total.keys += pruned.keys;
            if pruned.done {
                break;
            }
            cutoffs = pruned.next;
            limit = next_limit(limit, took);
            // The writer is the submitters' as long again (at least a millisecond).
            self.pause(took.max(Duration::from_millis(1))).await;
        }
        self.vacuum().await?;
        Ok(total)
    }

    /// Gives the free pages back, a bounded step at a time, and records the size.
    async fn vacuum(&self) -> Result<()> {
        let mut free = u64::MAX;
        while !self.stop.is_cancelled() {
            let began = tokio::time::Instant::now();
            let size = match self.store.vacuum(VACUUM_STEP).await {
                Err(Error::Overloaded(_)) => {
                    self.back_off().await;
                    continue;
                }
                other => other?,
            };
            self.metrics.set_store_bytes(size.bytes);
            // A database without incremental vacuum frees nothing: stop when a step does not.
            if size.free_pages == 0 || size.free_pages >= free {
                break;
            }
            free = size.free_pages;
            self.pause(began.elapsed()).await;
        }
        Ok(())
    }

    async fn back_off(&self) {
        self.pause(BUSY_BACKOFF).await;
    }

    async fn pause(&self, time: Duration) {
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = tokio::time::sleep(time) => {}
        }
    }
}

/// The next batch's size: halved after a batch slower than [`BATCH_TARGET`], a quarter more
/// after one well under it, within [`MIN_BATCH`]..=[`PRUNE_BATCH`].
fn next_limit(limit: u32, took: Duration) -> u32 {
    let next = if took > BATCH_TARGET {
        limit / 2
    } else if took < BATCH_TARGET / 2 {
        limit + limit / 4 + 1
    } else {
        limit
    };
    next.clamp(MIN_BATCH, PRUNE_BATCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_follow_how_long_the_last_took() {
        let slow = BATCH_TARGET * 3;
        let fast = BATCH_TARGET / 4;
        assert_eq!(next_limit(100, slow), 50);
        assert_eq!(next_limit(20, slow), MIN_BATCH);
        assert_eq!(next_limit(100, fast), 126);
        assert_eq!(next_limit(PRUNE_BATCH, fast), PRUNE_BATCH);
        assert_eq!(next_limit(100, BATCH_TARGET), 100);
    }
}
