//! The counts that commit with the jobs they count: jobs per queue and state (`job_counts`,
//! what `Stats` reads) and queued jobs per scope (`queued_counts`, what admission reads).
//!
//! One trigger for each way a job's state moves (inserted, updated, deleted) calls
//! `sy_job_moved`, which adds the move to the batch's [`Moves`] here; the writer writes each
//! count's net change once, just before the batch commits ([`Counts::flush`]). Six triggers
//! that each wrote two to four rows per job were a quarter of the SQL of storing a job and a
//! third of starting and finishing one (issue 12); a batch of a thousand starts now writes a
//! handful of rows. Every path that moves a job is counted, a future one included: the
//! trigger sees the row, not the code.
//!
//! A command that is undone takes its moves with it: [`savepoint`](super::writer::savepoint)
//! marks the moves before a command and rewinds them if it fails, and a batch that does not
//! commit forgets them ([`Counts::forget`]). Only the writer's connection has the function:
//! another that changed `jobs` would fail (`no such function: sy_job_moved`), not miscount.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rusqlite::{Connection, functions::FunctionFlags, params};

use crate::{domain::JobState, error::Result};

/// The function the triggers call: `sy_job_moved(queue, from, to, tenant, key)`, `from` NULL
/// for an insert and `to` NULL for a delete.
const MOVED: &str = "sy_job_moved";
const STATES: usize = JobState::ALL.len();

const ADD_JOBS: &str = "INSERT INTO job_counts (queue, state, n) VALUES (?1, ?2, ?3)
    ON CONFLICT (queue, state) DO UPDATE SET n = n + excluded.n";
const ADD_QUEUED: &str = "INSERT INTO queued_counts (scope, queued) VALUES (?1, ?2)
    ON CONFLICT (scope) DO UPDATE SET queued = queued + excluded.queued";
const ANY_LIMIT: &str = "SELECT EXISTS (SELECT 1 FROM quotas WHERE max_queued IS NOT NULL)";

/// Where a state's count sits in a queue's row of [`Moves`]: its place in `JobState::ALL`.
fn slot(state: JobState) -> usize {
    state as usize
}

/// The net change of each count since the batch began.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Moves {
    /// Per queue, the change of its count in each state (by [`slot`]). A queue's scope
    /// (`queue:…`) counts its queued jobs: this row's `Queued`.
    queues: HashMap<String, [i64; STATES]>,
    /// Per tenant and per concurrency key, the change of its queued jobs.
    tenants: HashMap<String, i64>,
    keys: HashMap<String, i64>,
}

/// Changes `name`'s entry, copying the name only for a new one.
fn add<V: Default>(map: &mut HashMap<String, V>, name: &str, change: impl FnOnce(&mut V)) {
    match map.get_mut(name) {
        Some(value) => change(value),
        None => change(map.entry(name.to_owned()).or_default()),
    }
}

impl Moves {
    fn moved(
        &mut self,
        queue: &str,
        from: Option<JobState>,
        to: Option<JobState>,
        tenant: Option<&str>,
        key: Option<&str>,
    ) {
        for (state, by) in [(from, -1), (to, 1)] {
            let Some(state) = state else { continue };
            add(&mut self.queues, queue, |counts| counts[slot(state)] += by);
            if state == JobState::Queued {
                for (map, name) in [(&mut self.tenants, tenant), (&mut self.keys, key)] {
                    if let Some(name) = name {
                        add(map, name, |n| *n += by);
                    }
                }
            }
        }
    }

    /// How many jobs this batch has added to (or, below zero, taken from) `scope`'s queued
    /// jobs so far.
    fn queued(&self, scope: &str) -> i64 {
        let queued = |map: &HashMap<String, i64>, name| map.get(name).copied().unwrap_or(0);
        if let Some(queue) = scope.strip_prefix("queue:") {
            self.queues
                .get(queue)
                .map_or(0, |c| c[slot(JobState::Queued)])
        } else if let Some(tenant) = scope.strip_prefix("tenant:") {
            queued(&self.tenants, tenant)
        } else if let Some(key) = scope.strip_prefix("key:") {
            queued(&self.keys, key)
        } else {
            0
        }
    }
}

/// The writer's moves, shared with the function its connection calls, and whether any quota
/// limits queued jobs at all (most stores have none: admission then reads nothing). Owned by
/// the writer thread.
#[derive(Debug)]
pub(super) struct Counts {
    moves: Arc<Mutex<Moves>>,
    any_queued_limit: Cell<Option<bool>>,
}

impl Counts {
    /// Gives `conn` the function the triggers call; the moves it hears are kept here.
    pub(super) fn register(conn: &Connection) -> Result<Counts> {
        let moves = Arc::new(Mutex::new(Moves::default()));
        let heard = moves.clone();
        conn.create_scalar_function(MOVED, 5, FunctionFlags::SQLITE_UTF8, move |ctx| {
            let text = |i: usize| {
                ctx.get_raw(i)
                    .as_str_or_null()
                    .map_err(|e| rusqlite::Error::UserFunctionError(e.into()))
            };
            let queue = text(0)?.ok_or_else(|| {
                rusqlite::Error::UserFunctionError("a job without a queue".into())
            })?;
            let (from, to) = (ctx.get::<Option<JobState>>(1)?, ctx.get(2)?);
            lock(&heard).moved(queue, from, to, text(3)?, text(4)?);
            Ok(Option::<i64>::None)
        })?;
        Ok(Counts {
            moves,
            any_queued_limit: Cell::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Moves> {
        lock(&self.moves)
    }

    /// The moves so far, to go back to if what comes next is undone.
    pub(super) fn mark(&self) -> Moves {
        self.lock().clone()
    }

    pub(super) fn rewind(&self, to: Moves) {
        *self.lock() = to;
    }

    /// The batch did not commit: what it moved never happened, and a quota it set may not
    /// stand.
    pub(super) fn forget(&self) {
        *self.lock() = Moves::default();
        self.quotas_changed();
    }

    /// Whether some quota has a `max_queued`, as the transaction sees it: read again after
    /// [`quotas_changed`](Self::quotas_changed).
    pub(super) fn any_queued_limit(&self, conn: &Connection) -> Result<bool> {
        if let Some(any) = self.any_queued_limit.get() {
            return Ok(any);
        }
        let any = conn
            .prepare_cached(ANY_LIMIT)?
            .query_row([], |row| row.get(0))?;
        self.any_queued_limit.set(Some(any));
        Ok(any)
    }

    /// A quota was set or removed (or a batch that may have done so was undone).
    pub(super) fn quotas_changed(&self) {
        self.any_queued_limit.set(None);
    }

    /// How many jobs this batch has added to `scope`'s queued jobs so far.
    pub(super) fn queued(&self, scope: &str) -> i64 {
        self.lock().queued(scope)
    }

    /// Writes the batch's net change of each count, inside its transaction, and starts
    /// afresh. Counts that did not change are not touched.
    pub(super) fn flush(&self, conn: &Connection) -> Result<()> {
        let moves = std::mem::take(&mut *self.lock());
        let mut add_jobs = conn.prepare_cached(ADD_JOBS)?;
        let mut add_queued = conn.prepare_cached(ADD_QUEUED)?;
        let changed = |by: &i64| *by != 0;
        for (queue, counts) in &moves.queues {
            for (state, by) in JobState::ALL
                .iter()
                .zip(counts)
                .filter(|(_, by)| changed(by))
            {
                add_jobs.execute(params![queue, state, by])?;
            }
            let queued = counts[slot(JobState::Queued)];
            if changed(&queued) {
                add_queued.execute(params![format!("queue:{queue}"), queued])?;
            }
        }
        for (prefix, map) in [("tenant", &moves.tenants), ("key", &moves.keys)] {
            for (name, by) in map.iter().filter(|(_, by)| changed(by)) {
                add_queued.execute(params![format!("{prefix}:{name}"), by])?;
            }
        }
        Ok(())
    }
}

fn lock(moves: &Mutex<Moves>) -> MutexGuard<'_, Moves> {
    moves.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_has_its_own_slot_in_the_order_of_all() {
        for (i, state) in JobState::ALL.into_iter().enumerate() {
            assert_eq!(slot(state), i, "{state:?}");
        }
    }

    #[test]
    fn moves_net_out_per_queue_and_scope() {
        let mut moves = Moves::default();
        let (queued, running) = (Some(JobState::Queued), Some(JobState::Running));
        moves.moved("q", None, queued, Some("t"), None);
        moves.moved("q", None, queued, Some("t"), Some("k"));
        moves.moved("q", queued, running, Some("t"), Some("k"));
        moves.moved("r", running, None, None, None);
        assert_eq!(moves.queued("queue:q"), 1);
        assert_eq!(moves.queued("tenant:t"), 1);
        assert_eq!(moves.queued("key:k"), 0);
        assert_eq!(moves.queued("queue:r"), 0);
        assert_eq!(
            moves.queued("tenant:q"),
            0,
            "a queue's name is not a tenant's"
        );
        assert_eq!(moves.queues["q"][slot(JobState::Running)], 1);
        assert_eq!(moves.queues["r"][slot(JobState::Running)], -1);
    }

    #[test]
    fn the_function_hears_known_states_and_refuses_others() {
        let conn = Connection::open_in_memory().expect("a database");
        let counts = Counts::register(&conn).expect("the function");
        let call = |sql: &str| conn.query_row(sql, [], |_| Ok(()));
        call("SELECT sy_job_moved('q', NULL, 10, 't', NULL)").expect("an insert, queued");
        call("SELECT sy_job_moved('q', 10, 20, 't', NULL)").expect("a start");
        call("SELECT sy_job_moved('q', NULL, 10, 't', NULL)").expect("another insert");
        assert_eq!(counts.queued("queue:q"), 1);
        assert_eq!(counts.queued("tenant:t"), 1);
        assert!(call("SELECT sy_job_moved('q', 70, NULL, NULL, NULL)").is_err());
        assert!(call("SELECT sy_job_moved(NULL, NULL, 10, NULL, NULL)").is_err());
        assert_eq!(counts.queued("queue:q"), 1, "a refused move counts nothing");
    }
}
