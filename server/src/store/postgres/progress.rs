//! What a running attempt reports (`Progress`), stored with its job, and its checkpoint,
//! which the job's next attempt receives (`lifecycle::start` reads it). Inside the caller's
//! transaction; `sqlite/progress.rs`'s rules.

use sqlx::PgConnection;

use super::Columns;
use crate::{
    domain::now_ms,
    error::Result,
    store::{ProgressReport, Progressed},
};

/// The fence: only the job's current, running attempt moves its progress (its number, and the
/// epoch it was started in unless the report carries none; one conditional
/// statement, re-checked on the row if it had to wait for it). An unset field keeps the
/// stored value.
const PROGRESS: &str = "UPDATE jobs SET progress_attempt = $2,
        progress_fraction = coalesce($3, progress_fraction),
        progress_message = coalesce($4, progress_message),
        progress_updated_at_ms = $5
    WHERE id = $1 AND state = 20 /* running */ AND attempt = $2 AND ($6 = 0 OR epoch = $6)
    RETURNING seq, queue";
const SET_CHECKPOINT: &str = "INSERT INTO job_checkpoints (job_seq, attempt, checkpoint,
        updated_at_ms) VALUES ($1, $2, $3, $4)
    ON CONFLICT (job_seq) DO UPDATE SET attempt = excluded.attempt,
        checkpoint = excluded.checkpoint, updated_at_ms = excluded.updated_at_ms";
const CLEAR_CHECKPOINT: &str = "DELETE FROM job_checkpoints WHERE job_seq = $1";

/// Stores each report whose attempt is its job's current running one, in order (a later
/// report of the same attempt wins); the others are ignored.
pub(super) async fn progress(
    conn: &mut PgConnection,
    reports: &[ProgressReport],
) -> Result<Progressed> {
    let now = now_ms();
    let mut out = Progressed::default();
    for report in reports {
        let current = sqlx::query(PROGRESS)
            .bind(report.job_id.to_string())
            .bind(i64::from(report.attempt))
            .bind(report.fraction)
            .bind(&report.message)
            .bind(now)
            .bind(report.epoch as i64)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(row) = current else {
            out.ignored.push((report.job_id, report.attempt));
            continue;
        };
        let (seq, queue): (i64, String) = (row.col(0)?, row.col(1)?);
        match report.checkpoint.as_deref() {
            None => {}
            // An empty checkpoint is none: the next attempt starts from the beginning.
            Some([]) => {
                sqlx::query(CLEAR_CHECKPOINT)
                    .bind(seq)
                    .execute(&mut *conn)
                    .await?;
            }
            Some(checkpoint) => {
                sqlx::query(SET_CHECKPOINT)
                    .bind(seq)
                    .bind(i64::from(report.attempt))
                    .bind(checkpoint)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        out.stored += 1;
        out.metrics.progress(&queue);
    }
    Ok(out)
}
