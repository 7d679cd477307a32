//! Bulk cancel, requeue and delete by filter: one bounded step per transaction.
//!
//! A step picks the matching jobs the action applies to after the cursor (`after_seq`), in
//! submission order, at most a page of them, and changes each with the same rules as the
//! single-job call (`cancel`, `requeue`). Jobs it changes stop matching (their state moves
//! out of the action's states), so a cursor by sequence number always advances and a
//! resumed action neither skips nor repeats a job.

use rusqlite::{Connection, params_from_iter, types::Value};

use super::{cancel, counts::Counts, lifecycle, prune, read, writer::savepoint};
use crate::{
    domain::{JobId, JobState},
    error::{Error, Result},
    store::{Bulk, BulkAction, BulkDone, CancelTarget, Cancelled},
};

/// A finished job is deleted only if nothing needs it, as retention decides
/// (`prune.rs`): no job depends on it (its output is a dependent's input, also for a
/// dependent requeued later), and its parent no longer runs.
const DELETABLE: &str =
    " AND NOT EXISTS (SELECT 1 FROM dependencies d WHERE d.depends_on = jobs.id)
    AND (jobs.parent_job_id IS NULL OR NOT EXISTS (SELECT 1 FROM jobs p
        WHERE p.id = jobs.parent_job_id AND p.state IN (10, 20)))";

/// `WHERE …` for the jobs in `states` that `bulk` applies to after its cursor, with its
/// arguments.
fn candidates(bulk: &Bulk, states: &[JobState]) -> (String, Vec<Value>) {
    let mut sql = String::from(" WHERE seq > ?");
    let mut args = vec![Value::Integer(bulk.filter.after_seq)];
    in_list(
        &mut sql,
        &mut args,
        " AND state",
        states.iter().map(|s| Value::Integer(s.code())),
    );
    read::matching(&bulk.filter, &mut sql, &mut args);
    if !bulk.ids.is_empty() {
        in_list(
            &mut sql,
            &mut args,
            " AND id",
            bulk.ids.iter().map(|id| Value::Text(id.to_string())),
        );
    }
    if bulk.action == BulkAction::Delete {
        sql.push_str(DELETABLE);
    }
    (sql, args)
}

/// Appends `<column> IN (?, …)` with `values` as its arguments.
fn in_list(
    sql: &mut String,
    args: &mut Vec<Value>,
    column: &str,
    values: impl Iterator<Item = Value>,
) {
    sql.push_str(column);
    sql.push_str(" IN (");
    for (i, value) in values.enumerate() {
        sql.push_str(if i == 0 { "?" } else { ", ?" });
        args.push(value);
    }
    sql.push(')');
}

/// A dry run: how many jobs from the cursor on the action would change.
pub(super) fn count(conn: &Connection, bulk: &Bulk) -> Result<BulkDone> {
    let (clauses, args) = candidates(bulk, bulk.action.applies_to());
    let matched: i64 = conn
        .prepare(&format!("SELECT count(*) FROM jobs{clauses}"))?
        .query_row(params_from_iter(args), |row| row.get(0))?;
    Ok(BulkDone {
        matched: matched.max(0) as u64,
        ..BulkDone::default()
    })
}

/// One step: changes up to a page of matching jobs.
pub(super) fn apply(conn: &Connection, counts: &Counts, bulk: &Bulk) -> Result<BulkDone> {
    let page = bulk.filter.page_size as usize;
    // One state at a time: the (queue, state, seq) and (state, seq) indexes then give the
    // jobs in order and the LIMIT stops the scan after a page. With all the states at once
    // SQLite sorts every match after the cursor, each step (quadratic over a long action).
    let mut picked: Vec<(i64, JobId, Option<i64>)> = Vec::new();
    for state in bulk.action.applies_to() {
        let (clauses, mut args) = candidates(bulk, std::slice::from_ref(state));
        args.push(Value::Integer(page as i64 + 1));
        let rows = conn
            .prepare_cached(&format!(
                "SELECT seq, id, deadline_ms FROM jobs{clauses} ORDER BY seq LIMIT ?"
            ))?
            .query_map(params_from_iter(args), |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        picked.extend(rows);
    }
    picked.sort_unstable_by_key(|p| p.0);
    picked.truncate(page + 1);
    let more = picked.len() > page;
    picked.truncate(page);
    let mut done = BulkDone {
        matched: picked.len() as u64,
        next_after_seq: more.then(|| picked.last().map(|p| p.0)).flatten(),
        ..BulkDone::default()
    };
    for (seq, id, deadline_ms) in picked {
        // Each job in its own savepoint: a rule that keeps one job keeps its writes out and
        // the step goes on.
        let changed = match bulk.action {
            BulkAction::Cancel => {
                match savepoint(conn, counts, |c| {
                    cancel::cancel(c, &CancelTarget::Job(id), &bulk.reason)
                }) {
                    Ok(cancelled) => {
                        absorb(&mut done.cancelled, cancelled);
                        true
                    }
                    // Cancelled already, by a cascade earlier in this step.
                    Err(Error::FailedPrecondition { .. }) => false,
                    Err(err) => return Err(err),
                }
            }
            BulkAction::Requeue => {
                match savepoint(conn, counts, |c| lifecycle::requeue(c, id, None)) {
                    Ok(Some(ready)) => {
                        done.ready.push(ready);
                        true
                    }
                    Ok(None) => {
                        if let Some(deadline) = deadline_ms {
                            done.waiting.push((id, deadline));
                        }
                        true
                    }
                    // Its dependency ended badly: requeue that first.
                    Err(Error::FailedPrecondition { .. }) => false,
                    Err(err) => return Err(err),
                }
            }
            BulkAction::Delete => {
                prune::remove(conn, seq)?;
                true
            }
        };
        done.changed += u64::from(changed);
    }
    Ok(done)
}

fn absorb(into: &mut Option<Cancelled>, mut more: Cancelled) {
    match into {
        None => *into = Some(more),
        Some(all) => {
            all.ids.append(&mut more.ids);
            all.dependents.append(&mut more.dependents);
            all.running.append(&mut more.running);
            all.metrics.append(&mut more.metrics);
        }
    }
    if let Some(all) = into {
        all.state = Some(JobState::Cancelled);
    }
}
