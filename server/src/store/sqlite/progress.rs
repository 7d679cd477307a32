//! The SQL of long jobs: what a running attempt reports (`Progress`), stored with its job, and
//! its checkpoint, which the job's next attempt receives (`lifecycle::start` reads it). Runs
//! on the writer thread, inside its transaction.

use rusqlite::{Connection, OptionalExtension, params};

use crate::{
    domain::now_ms,
    error::Result,
    store::{ProgressReport, Progressed},
};

/// The fence: only the job's current, running attempt moves its progress (its number, and the
/// epoch it was started in unless the report carries none). An unset field
/// keeps the stored value.
const PROGRESS: &str = "UPDATE jobs SET progress_attempt = ?2,
        progress_fraction = coalesce(?3, progress_fraction),
        progress_message = coalesce(?4, progress_message),
        progress_updated_at_ms = ?5
    WHERE id = ?1 AND state = 20 /* running */ AND attempt = ?2 AND (?6 = 0 OR epoch = ?6)
    RETURNING seq, queue";
const SET_CHECKPOINT: &str = "INSERT INTO job_checkpoints (job_seq, attempt, checkpoint,
        updated_at_ms) VALUES (?1, ?2, ?3, ?4)
    ON CONFLICT (job_seq) DO UPDATE SET attempt = excluded.attempt,
        checkpoint = excluded.checkpoint, updated_at_ms = excluded.updated_at_ms";
const CLEAR_CHECKPOINT: &str = "DELETE FROM job_checkpoints WHERE job_seq = ?1";

/// Stores each report whose attempt is its job's current running one, in order (a later
/// report of the same attempt wins); the others are ignored.
pub(super) fn progress(conn: &Connection, reports: &[ProgressReport]) -> Result<Progressed> {
    let now = now_ms();
    let mut out = Progressed::default();
    for report in reports {
        let current = conn
            .prepare_cached(PROGRESS)?
            .query_row(
                params![
                    report.job_id,
                    report.attempt,
                    report.fraction,
                    report.message,
                    now,
                    report.epoch as i64
                ],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)),
            )
            .optional()?;
        let Some((seq, queue)) = current else {
            out.ignored.push((report.job_id, report.attempt));
            continue;
        };
        match report.checkpoint.as_deref() {
            None => {}
            // An empty checkpoint is none: the next attempt starts from the beginning.
            Some([]) => {
                conn.prepare_cached(CLEAR_CHECKPOINT)?
                    .execute(params![seq])?;
            }
            Some(checkpoint) => {
                conn.prepare_cached(SET_CHECKPOINT)?.execute(params![
                    seq,
                    report.attempt,
                    checkpoint,
                    now
                ])?;
            }
        }
        out.stored += 1;
        out.metrics.progress(&queue);
    }
    Ok(out)
}
