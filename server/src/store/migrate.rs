//! Applies the numbered SQL files of `migrations/` once each, tracked by `PRAGMA user_version`.

use rusqlite::Connection;

use crate::error::{Error, Result};

/// Every migration, in order. Version N is the N-th entry.
const MIGRATIONS: &[&str] = &[include_str!("../../../migrations/0001_jobs.sql")];

/// Brings the schema up to date, each migration in its own transaction.
pub fn run(conn: &mut Connection) -> Result<()> {
    let current: u32 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
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
