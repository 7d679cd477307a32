//! Bulk cancel, requeue and delete by filter: one bounded step per transaction, each job
//! changed in its own savepoint by the single-job rules. `sqlite/bulk.rs`'s rules.

use sqlx::{PgConnection, PgPool};

use super::{
    Columns, cancel, lifecycle, prune,
    read::{self, Arg, Sql},
};
use crate::{
    domain::{JobId, JobState},
    error::{Error, Result},
    store::{Bulk, BulkAction, BulkDone, CancelTarget, Cancelled},
};

/// A finished job is deleted only if nothing needs it, as retention decides: no job depends
/// on it, and its parent no longer runs.
const DELETABLE: &str =
    " AND NOT EXISTS (SELECT 1 FROM dependencies d WHERE d.depends_on = jobs.id)
    AND (jobs.parent_job_id IS NULL OR NOT EXISTS (SELECT 1 FROM jobs p
        WHERE p.id = jobs.parent_job_id AND p.state IN (10, 20)))";

/// `SELECT <columns> FROM jobs WHERE …` for the jobs in `states` that `bulk` applies to after
/// its cursor.
fn candidates(columns: &str, bulk: &Bulk, states: &[JobState]) -> Sql {
    let mut sql = Sql::new(&format!("SELECT {columns} FROM jobs WHERE true"));
    sql.push(" AND seq > $?", Arg::Int(bulk.filter.after_seq));
    sql.push(
        " AND state = ANY($?)",
        Arg::Ints(states.iter().map(|s| s.code()).collect()),
    );
    read::matching(&bulk.filter, &mut sql);
    if !bulk.ids.is_empty() {
        sql.push(
            " AND id = ANY($?)",
            Arg::Texts(bulk.ids.iter().map(JobId::to_string).collect()),
        );
    }
    if bulk.action == BulkAction::Delete {
        sql.text.push_str(DELETABLE);
    }
    sql
}

/// A dry run: how many jobs from the cursor on the action would change.
pub(super) async fn count(pool: &PgPool, bulk: &Bulk) -> Result<BulkDone> {
    let sql = candidates("count(*)", bulk, bulk.action.applies_to());
    let row = sql.query().fetch_one(pool).await?;
    let matched: i64 = row.col(0)?;
    Ok(BulkDone {
        matched: matched.max(0) as u64,
        ..BulkDone::default()
    })
}

/// One step: changes up to a page of matching jobs.
pub(super) async fn apply(conn: &mut PgConnection, bulk: &Bulk) -> Result<BulkDone> {
    let page = bulk.filter.page_size as usize;
    let mut sql = candidates("seq, id, deadline_ms", bulk, bulk.action.applies_to());
    sql.push(" ORDER BY seq LIMIT $?", Arg::Int(page as i64 + 1));
    let mut picked = sql
        .query()
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| Ok((row.col::<i64>(0)?, row.id(1)?, row.col::<Option<i64>>(2)?)))
        .collect::<Result<Vec<_>>>()?;
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
        sqlx::query("SAVEPOINT bulk_job")
            .execute(&mut *conn)
            .await?;
        let result = match bulk.action {
            BulkAction::Cancel => {
                match cancel::cancel(conn, &CancelTarget::Job(id), &bulk.reason).await {
                    Ok(cancelled) => {
                        absorb(&mut done.cancelled, cancelled);
                        Ok(true)
                    }
                    // Cancelled already, by a cascade earlier in this step.
                    Err(Error::FailedPrecondition { .. }) => Ok(false),
                    Err(err) => Err(err),
                }
            }
            BulkAction::Requeue => match lifecycle::requeue(conn, id, None).await {
                Ok(Some(ready)) => {
                    done.ready.push(ready);
                    Ok(true)
                }
                Ok(None) => {
                    if let Some(deadline) = deadline_ms {
                        done.waiting.push((id, deadline));
                    }
                    Ok(true)
                }
                // Its dependency ended badly: requeue that first.
                Err(Error::FailedPrecondition { .. }) => Ok(false),
                Err(err) => Err(err),
            },
            BulkAction::Delete => prune::remove(conn, seq).await.map(|()| true),
        };
        match result {
            Ok(true) => {
                sqlx::query("RELEASE SAVEPOINT bulk_job")
                    .execute(&mut *conn)
                    .await?;
                done.changed += 1;
            }
            Ok(false) => {
                sqlx::query("ROLLBACK TO SAVEPOINT bulk_job")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("RELEASE SAVEPOINT bulk_job")
                    .execute(&mut *conn)
                    .await?;
            }
            // The whole step rolls back.
            Err(err) => return Err(err),
        }
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
