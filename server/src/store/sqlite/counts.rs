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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rusqlite::{Connection, functions::FunctionFlags, params, types::ValueRef};

use crate::error::Result;

/// The function the triggers call: `sy_job_moved(queue, from, to, tenant, key)`, `from` NULL
/// for an insert and `to` NULL for a delete.
const MOVED: &str = "sy_job_moved";
/// States are stored by codes 10, 20, … 60 (`JobState::code`).
const STATES: usize = 6;

const ADD_JOBS: &str = "INSERT INTO job_counts (queue, state, n) VALUES (?1, ?2, ?3)
    ON CONFLICT (queue, state) DO UPDATE SET n = n + excluded.n";
const ADD_QUEUED: &str = "INSERT INTO queued_counts (scope, queued) VALUES (?1, ?2)
    ON CONFLICT (scope) DO UPDATE SET queued = queued + excluded.queued";

/// The net change of each count since the batch began.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Moves {
    /// Per queue, the change of its count in each state (by `code / 10 - 1`).
    queues: HashMap<String, [i64; STATES]>,
    /// Per scope (`tenant:…`, `key:…`), the change of its queued jobs. A queue's own scope is
    /// its count of queued jobs, in `queues`.
    queued: HashMap<String, i64>,
}

fn slot(code: i64) -> Option<usize> {
    let slot = usize::try_from(code / 10 - 1).ok()?;
    (code % 10 == 0 && slot < STATES).then_some(slot)
}

fn code(slot: usize) -> i64 {
    (slot as i64 + 1) * 10
}

const QUEUED: i64 = 10;

impl Moves {
    fn moved(
        &mut self,
        queue: &str,
        from: Option<i64>,
        to: Option<i64>,
        tenant: Option<&str>,
        key: Option<&str>,
    ) -> std::result::Result<(), String> {
        let mut change = |code: i64, by: i64| -> std::result::Result<(), String> {
            let slot = slot(code).ok_or_else(|| format!("no job state has the code {code}"))?;
            match self.queues.get_mut(queue) {
                Some(counts) => counts[slot] += by,
                None => {
                    let mut counts = [0; STATES];
                    counts[slot] = by;
                    self.queues.insert(queue.to_owned(), counts);
                }
            }
            if code == QUEUED {
                let scopes = [("tenant:", tenant), ("key:", key)];
                for (prefix, name) in scopes {
                    let Some(name) = name else { continue };
                    let scope = format!("{prefix}{name}");
                    *self.queued.entry(scope).or_default() += by;
                }
            }
            Ok(())
        };
        if let Some(from) = from {
            change(from, -1)?;
        }
        if let Some(to) = to {
            change(to, 1)?;
        }
        Ok(())
    }

    /// How many jobs this batch has added to (or, below zero, taken from) `scope`'s queued
    /// jobs so far.
    pub(super) fn queued(&self, scope: &str) -> i64 {
        match scope.strip_prefix("queue:") {
            Some(queue) => self.queues.get(queue).map_or(0, |c| c[0]),
            None => self.queued.get(scope).copied().unwrap_or(0),
        }
    }
}

/// The writer's moves, shared with the function its connection calls, and whether any quota
/// limits queued jobs at all (most stores have none: admission then reads nothing).
#[derive(Debug, Clone, Default)]
pub(super) struct Counts(Arc<Mutex<Moves>>, Arc<Mutex<Option<bool>>>);

const ANY_LIMIT: &str = "SELECT EXISTS (SELECT 1 FROM quotas WHERE max_queued IS NOT NULL)";

impl Counts {
    /// Gives `conn` the function the triggers call; the moves it hears are kept here.
    pub(super) fn register(conn: &Connection) -> Result<Counts> {
        let counts = Counts::default();
        let moves = counts.clone();
        conn.create_scalar_function(MOVED, 5, FunctionFlags::SQLITE_UTF8, move |ctx| {
            let fault = |err: String| rusqlite::Error::UserFunctionError(err.into());
            let text = |i: usize| -> rusqlite::Result<Option<&str>> {
                ctx.get_raw(i)
                    .as_str_or_null()
                    .map_err(|e| fault(e.to_string()))
            };
            let code = |i: usize| -> rusqlite::Result<Option<i64>> {
                match ctx.get_raw(i) {
                    ValueRef::Null => Ok(None),
                    ValueRef::Integer(code) => Ok(Some(code)),
                    other => Err(fault(format!(
                        "a job state stored as {:?}",
                        other.data_type()
                    ))),
                }
            };
            let queue = text(0)?.ok_or_else(|| fault("a job without a queue".into()))?;
            moves
                .lock()
                .moved(queue, code(1)?, code(2)?, text(3)?, text(4)?)
                .map_err(fault)?;
            Ok(Option::<i64>::None)
        })?;
        Ok(counts)
    }

    fn lock(&self) -> MutexGuard<'_, Moves> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
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
        let mut known = self.1.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(any) = *known {
            return Ok(any);
        }
        let any = conn
            .prepare_cached(ANY_LIMIT)?
            .query_row([], |row| row.get(0))?;
        *known = Some(any);
        Ok(any)
    }

    /// A quota was set or removed (or a batch that may have done so was undone).
    pub(super) fn quotas_changed(&self) {
        *self.1.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// How many jobs this batch has added to `scope`'s queued jobs so far (see
    /// [`Moves::queued`]).
    pub(super) fn queued(&self, scope: &str) -> i64 {
        self.lock().queued(scope)
    }

    /// Writes the batch's net change of each count, inside its transaction, and starts
    /// afresh. Counts that did not change are not touched.
    pub(super) fn flush(&self, conn: &Connection) -> Result<()> {
        let moves = std::mem::take(&mut *self.lock());
        let mut add_jobs = conn.prepare_cached(ADD_JOBS)?;
        let mut add_queued = conn.prepare_cached(ADD_QUEUED)?;
        for (queue, counts) in &moves.queues {
            for (slot, by) in counts.iter().enumerate().filter(|(_, by)| **by != 0) {
                add_jobs.execute(params![queue, code(slot), by])?;
            }
            if counts[0] != 0 {
                add_queued.execute(params![format!("queue:{queue}"), counts[0]])?;
            }
        }
        for (scope, by) in moves.queued.iter().filter(|(_, by)| **by != 0) {
            add_queued.execute(params![scope, by])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobState;

    #[test]
    fn a_state_code_names_one_slot() {
        assert_eq!(slot(JobState::Queued.code()), Some(0));
        assert_eq!(slot(JobState::DeadlineExceeded.code()), Some(STATES - 1));
        for state in [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
            JobState::DeadlineExceeded,
        ] {
            let slot = slot(state.code()).expect("a slot");
            assert_eq!(code(slot), state.code());
        }
        assert_eq!(slot(0), None);
        assert_eq!(slot(15), None);
        assert_eq!(slot(70), None);
        assert_eq!(slot(-10), None);
    }

    #[test]
    fn moves_net_out_per_queue_and_scope() {
        let mut moves = Moves::default();
        let (queued, running) = (
            Some(JobState::Queued.code()),
            Some(JobState::Running.code()),
        );
        moves
            .moved("q", None, queued, Some("t"), None)
            .expect("a known state");
        moves
            .moved("q", None, queued, Some("t"), Some("k"))
            .expect("a known state");
        moves
            .moved("q", queued, running, Some("t"), Some("k"))
            .expect("a known state");
        moves
            .moved("r", running, None, None, None)
            .expect("a known state");
        assert_eq!(moves.queued("queue:q"), 1);
        assert_eq!(moves.queued("tenant:t"), 1);
        assert_eq!(moves.queued("key:k"), 0);
        assert_eq!(moves.queued("queue:r"), 0);
        assert_eq!(moves.queues["q"][1], 1);
        assert_eq!(moves.queues["r"][1], -1);
        assert!(moves.moved("q", Some(70), None, None, None).is_err());
    }
}
