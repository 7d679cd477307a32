//! Applies the numbered SQL files of `migrations/sqlite/` once each, tracked by
//! `PRAGMA user_version`.

use rusqlite::Connection;

use crate::error::{Error, Result};

/// Every migration, in order. Version N is the N-th entry.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../../migrations/sqlite/0001_jobs.sql"),
    include_str!("../../../../migrations/sqlite/0002_domain_states.sql"),
    include_str!("../../../../migrations/sqlite/0003_store_probe.sql"),
    include_str!("../../../../migrations/sqlite/0004_groups_per_tenant.sql"),
    include_str!("../../../../migrations/sqlite/0005_idempotency_keys.sql"),
    include_str!("../../../../migrations/sqlite/0006_schedules.sql"),
    include_str!("../../../../migrations/sqlite/0007_progress.sql"),
    include_str!("../../../../migrations/sqlite/0008_attempt_timeouts.sql"),
    include_str!("../../../../migrations/sqlite/0009_dependencies_by_job.sql"),
    include_str!("../../../../migrations/sqlite/0010_retention.sql"),
    include_str!("../../../../migrations/sqlite/0011_job_counts.sql"),
    include_str!("../../../../migrations/sqlite/0012_counts_by_writer.sql"),
    include_str!("../../../../migrations/sqlite/0013_epochs.sql"),
];

/// Brings the schema up to date, each migration in its own transaction.
pub fn run(conn: &mut Connection) -> Result<()> {
    upgrade(conn, MIGRATIONS.len())
}

/// Applies migrations up to version `to`.
fn upgrade(conn: &mut Connection, to: usize) -> Result<()> {
    let current: u32 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (index, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .take(to)
        .skip(current as usize)
    {
        let version = index as u32 + 1;
        let wrap = |source| Error::Migration { version, source };
        let tx = conn.transaction().map_err(wrap)?;
        tx.execute_batch(sql).map_err(wrap)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(wrap)?;
        tx.commit().map_err(wrap)?;
        tracing::info!(version, "applied migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AttemptOutcome, JobState};

    /// A database made by the first schema, which stored states as protobuf numbers, keeps
    /// every job, attempt and trigger-maintained count through the upgrade.
    #[test]
    fn a_database_of_the_first_schema_is_converted() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut conn = Connection::open(dir.path().join("old.db")).expect("open");
        upgrade(&mut conn, 1).expect("the first schema");
        // As the first schema's coordinator wrote them: a succeeded job of a group with its
        // attempt, a running one, and a queued one counted for admission by its trigger.
        conn.execute_batch(
            "INSERT INTO groups (id, size, cancel_on_failure, created_at_ms) VALUES ('g', 2, 0, 1);
             INSERT INTO jobs (id, queue, kind, payload, max_attempts, group_id, state, attempt,
                 created_at_ms)
                 VALUES ('00000000-0000-7000-8000-000000000001', 'q', 'echo', x'', 3, 'g', 2, 1, 1);
             INSERT INTO attempts (job_seq, number, worker_id, started_at_ms, outcome)
                 VALUES (1, 1, 'w', 2, 1);
             UPDATE jobs SET state = 3 WHERE seq = 1;
             UPDATE attempts SET outcome = 2, finished_at_ms = 3;
             INSERT INTO jobs (id, queue, kind, payload, max_attempts, state, attempt,
                 created_at_ms)
                 VALUES ('00000000-0000-7000-8000-000000000002', 'q', 'echo', x'', 3, 2, 1, 1);
             INSERT INTO jobs (id, queue, kind, payload, max_attempts, state, created_at_ms,
                 tenant_id)
                 VALUES ('00000000-0000-7000-8000-000000000003', 'q', 'echo', x'', 3, 1, 1, 't');",
        )
        .expect("rows of the first schema");

        run(&mut conn).expect("upgrade");
        let counts = super::super::counts::Counts::register(&conn).expect("the counting function");

        let states: Vec<(i64, i64)> = conn
            .prepare("SELECT seq, state FROM jobs ORDER BY seq")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()
            })
            .expect("states");
        assert_eq!(
            states,
            [
                (1, JobState::Succeeded.code()),
                (2, JobState::Running.code()),
                (3, JobState::Queued.code())
            ]
        );
        let outcome: i64 = conn
            .query_row("SELECT outcome FROM attempts", [], |r| r.get(0))
            .expect("the attempt");
        assert_eq!(outcome, AttemptOutcome::Succeeded.code());
        let events: i64 = conn
            .query_row("SELECT count(*) FROM group_events", [], |r| r.get(0))
            .expect("group events");
        assert_eq!(
            events, 1,
            "the first schema's trigger recorded the group's end"
        );
        // The counts carried over, and the writer keeps them by the new codes: the queued job
        // leaves the admission count.
        let tenant_queued = |conn: &Connection| -> i64 {
            conn.query_row(
                "SELECT queued FROM queued_counts WHERE scope = 'tenant:t'",
                [],
                |r| r.get(0),
            )
            .expect("count")
        };
        assert_eq!(tenant_queued(&conn), 1);
        conn.execute(
            "UPDATE jobs SET state = ?1 WHERE seq = 3",
            [JobState::Cancelled.code()],
        )
        .expect("cancel");
        counts.flush(&conn).expect("the counts");
        assert_eq!(tenant_queued(&conn), 0);
        // A protobuf number names no stored state.
        assert_eq!(JobState::from_code(1), None);
    }
}
