//! The schedule ticker: one task that owns every active schedule's next tick, sleeps until
//! the earliest, fires it through `Store::fire_schedule` (the job and the schedule's last
//! fired tick in one transaction) and, once that commits, hands the job to the scheduler.
//!
//! It is a task of its own beside the scheduler, not a part of the scheduler's core: a fire
//! waits for a commit, which must not hold up dispatch, and its state (one tick per
//! schedule) shares nothing with lanes, attempts or quotas. It talks to the scheduler only
//! through [`Scheduler::enqueue`].
//!
//! Exactly one job per tick across crashes comes from the store: the tick's job carries the
//! idempotency key `schedule:<id>:<tick ms>`, and a tick at or before the last fired one is
//! refused in the same transaction. The decisions here are pure functions of wall-clock
//! milliseconds ([`first_tick`], [`next_tick`]); the loop around them does the I/O.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Scheduler;
use crate::{
    domain::{JobId, Misfire, ScheduleKey, ScheduleRecord, Timetable, now_ms, schedule::tick_key},
    error::{Error, Result},
    store::{Fire, Fired, NewJob, Store},
};

/// How long a fire that failed (the store could not commit) waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Label on a fired job naming its schedule.
pub const SCHEDULE_LABEL: &str = "switchyard.schedule";
/// Label on a fired job: its tick, Unix ms.
pub const TICK_LABEL: &str = "switchyard.schedule.tick";
/// Label on a job `RUN_ONCE` fired for ticks missed while the coordinator was down.
pub const MISFIRE_LABEL: &str = "switchyard.schedule.misfire";

/// The first tick to fire for a schedule that starts being watched at `now`, and whether it
/// is a catch-up for missed ticks. Ticks after the last handled one (or the schedule's
/// creation) and before `now` were missed: `Skip` fires none of them, `RunOnce` the latest.
pub fn first_tick(
    timetable: &Timetable,
    misfire: Misfire,
    last_fired_ms: Option<i64>,
    created_at_ms: i64,
    now_ms: i64,
) -> Option<(i64, bool)> {
    let from = last_fired_ms.unwrap_or(created_at_ms);
    if misfire == Misfire::RunOnce
        && let Some(missed) = timetable.latest_between(from, now_ms)
    {
        return Some((missed, true));
    }
    next_tick(timetable, from, now_ms).map(|t| (t, false))
}

/// The tick after `fired_ms`, never one before `watched_from_ms` (those were missed, and are
/// the misfire policy's).
pub fn next_tick(timetable: &Timetable, fired_ms: i64, watched_from_ms: i64) -> Option<i64> {
    timetable.next_after(fired_ms.max(watched_from_ms - 1))
}

/// A handle to the ticker: tell it when a schedule changed.
#[derive(Clone)]
pub struct Ticker {
    changes: mpsc::Sender<ScheduleKey>,
}

impl Ticker {
    /// Starts the ticker on every schedule in the store, applying each one's misfire policy
    /// to the ticks missed while the coordinator was down.
    pub async fn start(
        store: Arc<dyn Store>,
        scheduler: Scheduler,
        shutdown: CancellationToken,
    ) -> Result<(Ticker, tokio::task::JoinHandle<()>)> {
        let started = now_ms();
        let mut watch = Watch::default();
        for record in store.schedules(None).await? {
            watch.put(record, started, true);
        }
        tracing::info!(schedules = watch.entries.len(), "schedule ticker started");
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(run(watch, store, scheduler, rx, shutdown));
        Ok((Ticker { changes: tx }, task))
    }

    /// The schedule was created, paused, resumed or deleted: the ticker rereads it.
    pub async fn changed(&self, key: ScheduleKey) {
        // A ticker that has stopped rereads everything at the next start.
        let _ = self.changes.send(key).await;
    }
}

/// One watched schedule.
struct Entry {
    record: ScheduleRecord,
    timetable: Timetable,
    /// The tick to fire next, and whether it catches up on missed ticks.
    tick_ms: i64,
    catch_up: bool,
    /// When it started being watched: ticks before it are the misfire policy's.
    watched_from_ms: i64,
    /// When to try (the tick, or later after a failed fire).
    wake_ms: i64,
}

/// Every watched schedule, and their wake-ups in order.
#[derive(Default)]
struct Watch {
    entries: HashMap<ScheduleKey, Entry>,
    wakes: BTreeSet<(i64, ScheduleKey)>,
}

impl Watch {
    /// Watches a schedule from `now`. At start (`starting`) missed ticks follow the misfire
    /// policy; a schedule created or resumed later fires from its next tick (ticks passed
    /// while paused are skipped).
    fn put(&mut self, record: ScheduleRecord, now: i64, starting: bool) {
        let key = record.schedule.key.clone();
        self.remove(&key);
        if record.schedule.paused {
            return;
        }
        let s = &record.schedule;
        let timetable = match Timetable::parse("", &s.cron, &s.time_zone) {
            Ok(t) => t,
            Err(err) => {
                // Validated when created: only a changed parser could refuse it now.
                tracing::error!(schedule = %key.id, cause = %err, "stored schedule no longer parses");
                return;
            }
        };
        let misfire = if starting { s.misfire } else { Misfire::Skip };
        let first = first_tick(
            &timetable,
            misfire,
            record.last_fired_ms,
            s.created_at_ms,
            now,
        );
        let Some((tick_ms, catch_up)) = first else {
            return;
        };
        self.wakes.insert((tick_ms, key.clone()));
        self.entries.insert(
            key,
            Entry {
                record,
                timetable,
                tick_ms,
                catch_up,
                watched_from_ms: now,
                wake_ms: tick_ms,
            },
        );
    }

    fn remove(&mut self, key: &ScheduleKey) {
        if let Some(entry) = self.entries.remove(key) {
            self.wakes.remove(&(entry.wake_ms, key.clone()));
        }
    }

    /// The earliest wake-up.
    fn next_wake(&self) -> Option<i64> {
        self.wakes.first().map(|(at, _)| *at)
    }

    /// Takes the schedules due by `now`.
    fn due(&mut self, now: i64) -> Vec<ScheduleKey> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.wakes.first()
            && *at <= now
        {
            if let Some((_, key)) = self.wakes.pop_first() {
                due.push(key);
            }
        }
        due
    }

    /// After a fire (committed, or found stale): on to the next tick.
    fn advance(&mut self, key: &ScheduleKey) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        entry.record.last_fired_ms = Some(entry.tick_ms);
        match next_tick(&entry.timetable, entry.tick_ms, entry.watched_from_ms) {
            Some(next) => {
                entry.tick_ms = next;
                entry.catch_up = false;
                entry.wake_ms = next;
                self.wakes.insert((next, key.clone()));
            }
            None => {
                self.entries.remove(key);
            }
        }
    }

    /// After a fire that failed: the same tick, a little later.
    fn retry(&mut self, key: &ScheduleKey, now: i64) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.wake_ms = now + RETRY.as_millis() as i64;
            self.wakes.insert((entry.wake_ms, key.clone()));
        }
    }
}

async fn run(
    mut watch: Watch,
    store: Arc<dyn Store>,
    scheduler: Scheduler,
    mut changes: mpsc::Receiver<ScheduleKey>,
    shutdown: CancellationToken,
) {
    loop {
        let sleep = async {
            match watch.next_wake() {
                Some(at) => {
                    let wait = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            change = changes.recv() => {
                let Some(key) = change else { break };
                match store.schedule(key.clone()).await {
                    Ok(Some(record)) => {
                        // A schedule already watched and still active keeps its place.
                        let same = watch.entries.get(&key).is_some_and(|e| {
                            !record.schedule.paused && e.record.schedule == record.schedule
                        });
                        if !same {
                            watch.put(record, now_ms(), false);
                        }
                    }
                    Ok(None) => watch.remove(&key),
                    Err(err) => {
                        tracing::warn!(schedule = %key.id, cause = %err, "could not reread a changed schedule");
                    }
                }
            }
            () = sleep => {
                let now = now_ms();
                for key in watch.due(now) {
                    let Some(entry) = watch.entries.get(&key) else { continue };
                    match fire(&*store, &scheduler, entry).await {
                        Ok(()) => watch.advance(&key),
                        Err(Error::ShuttingDown) => return,
                        Err(err) => {
                            tracing::warn!(schedule = %key.id, tick_ms = entry.tick_ms, cause = %err, "firing a schedule failed; retrying");
                            watch.retry(&key, now);
                        }
                    }
                }
            }
        }
    }
}

/// Fires one entry's tick and, once committed, hands a ready job to the scheduler.
#[tracing::instrument(skip_all, fields(schedule = %entry.record.schedule.key.id, tick_ms = entry.tick_ms))]
async fn fire(store: &dyn Store, scheduler: &Scheduler, entry: &Entry) -> Result<()> {
    let s = &entry.record.schedule;
    let t = &s.job;
    let mut labels = t.labels.clone();
    labels.insert(SCHEDULE_LABEL.into(), s.key.id.clone());
    labels.insert(TICK_LABEL.into(), entry.tick_ms.to_string());
    if entry.catch_up {
        labels.insert(MISFIRE_LABEL.into(), "true".into());
    }
    let job = NewJob {
        id: JobId::new(),
        queue: t.queue.clone(),
        kind: t.kind.clone(),
        payload: t.payload.clone(),
        priority: t.priority,
        max_attempts: t.max_attempts,
        timeout_ms: t.timeout_ms,
        deadline_ms: None,
        run_at_ms: None,
        idempotency_key: Some(tick_key(&s.key.id, entry.tick_ms)),
        // The tick's key binds forever: a tick is fired once, however often it is retried.
        unique: Default::default(),
        concurrency_key: t.concurrency_key.clone(),
        weight: t.weight,
        depends_on: vec![],
        labels,
        tenant_id: (!s.key.tenant.is_empty()).then(|| s.key.tenant.clone()),
        parent_job_id: None,
        parent_attempt: None,
        traceparent: None,
        tracestate: None,
        trace_id: None,
    };
    let fired = store
        .fire_schedule(Fire {
            key: s.key.clone(),
            tick_ms: entry.tick_ms,
            job,
        })
        .await?;
    match fired {
        Fired::Submitted(submitted) => {
            tracing::info!(job.id = %submitted.id, duplicate = submitted.duplicate, "schedule fired");
            if let Some(ready) = submitted.ready {
                scheduler.enqueue(vec![ready]).await?;
            }
        }
        Fired::Overlapped => tracing::info!("tick skipped: the previous run is still going"),
        Fired::Refused(why) => {
            // Not retried for this tick (the next tick tries again); kept as `last_error`.
            tracing::warn!(cause = %why, "tick refused by admission; the next tick tries again")
        }
        Fired::Stale => tracing::debug!("tick already handled, or the schedule paused or gone"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1000;

    fn every_second() -> Timetable {
        Timetable::parse("", "* * * * * *", "").expect("parses")
    }

    #[test]
    fn a_new_schedule_fires_from_its_next_tick() {
        let t = every_second();
        let created = 100 * SEC + 300;
        assert_eq!(
            first_tick(&t, Misfire::RunOnce, None, created, created),
            Some((101 * SEC, false))
        );
    }

    #[test]
    fn ticks_missed_while_down_follow_the_misfire_policy() {
        let t = every_second();
        // Last fired 100 s, down until 105.5 s: 101..=105 were missed.
        let (last, up) = (Some(100 * SEC), 105 * SEC + 500);
        assert_eq!(
            first_tick(&t, Misfire::Skip, last, 0, up),
            Some((106 * SEC, false))
        );
        assert_eq!(
            first_tick(&t, Misfire::RunOnce, last, 0, up),
            Some((105 * SEC, true))
        );
        // After the catch-up, the next is the first on-time tick, not 101.
        assert_eq!(next_tick(&t, 105 * SEC, up), Some(106 * SEC));
        // Back within the same second: nothing was missed.
        assert_eq!(
            first_tick(&t, Misfire::RunOnce, last, 0, 100 * SEC + 700),
            Some((101 * SEC, false))
        );
    }

    #[test]
    fn a_tick_due_exactly_at_start_is_on_time() {
        let t = every_second();
        assert_eq!(
            first_tick(&t, Misfire::Skip, Some(100 * SEC), 0, 101 * SEC),
            Some((101 * SEC, false))
        );
    }

    #[test]
    fn while_watched_every_tick_follows_the_last() {
        let t = every_second();
        assert_eq!(next_tick(&t, 101 * SEC, 50 * SEC), Some(102 * SEC));
    }
}
