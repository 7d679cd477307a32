//! Schedules: creating, pausing and deleting them, reading them, and firing a tick: the
//! tick's job goes in through the same path as any submit, and the schedule's
//! `last_fired_ms` moves in the same transaction. The schedule's row is locked while a tick
//! fires, so that two fires of one tick (a retry, or another coordinator) store one job.

use sqlx::{PgConnection, PgPool, postgres::PgRow};

use super::{Columns, submit};
use crate::{
    domain::{JobId, Misfire, NewSchedule, Overlap, ScheduleKey, ScheduleRecord},
    error::{Error, Result},
    store::{Durability, Fire, Fired, Origin, Submit},
    telemetry::Tally,
};

const INSERT: &str = "INSERT INTO schedules (tenant_key, id, tenant_id, cron, time_zone, job,
        misfire, overlap, paused, created_at_ms)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    ON CONFLICT DO NOTHING";
const SET_PAUSED: &str = "UPDATE schedules SET paused = $3 WHERE tenant_key = $1 AND id = $2";
const DELETE: &str = "DELETE FROM schedules WHERE tenant_key = $1 AND id = $2";
const LIST: &str = "SELECT tenant_key, id, tenant_id, cron, time_zone, job, misfire, overlap,
        paused, created_at_ms, last_fired_ms, last_job_id, last_error
    FROM schedules WHERE $1::text IS NULL OR tenant_key = $1 ORDER BY tenant_key COLLATE \"C\", id COLLATE \"C\"";
const GET: &str = "SELECT tenant_key, id, tenant_id, cron, time_zone, job, misfire, overlap,
        paused, created_at_ms, last_fired_ms, last_job_id, last_error
    FROM schedules WHERE tenant_key = $1 AND id = $2";
/// What a fire needs to know of its schedule, locked until the fire commits.
const FIRE_STATE: &str = "SELECT s.paused, s.last_fired_ms, s.overlap, j.state
    FROM schedules s LEFT JOIN jobs j ON j.id = s.last_job_id
    WHERE s.tenant_key = $1 AND s.id = $2
    FOR UPDATE OF s";
const FIRED: &str = "UPDATE schedules SET last_fired_ms = $3, last_job_id = $4, last_error = NULL
    WHERE tenant_key = $1 AND id = $2";
const NOT_FIRED: &str = "UPDATE schedules SET last_fired_ms = $3, last_error = $4
    WHERE tenant_key = $1 AND id = $2";

pub(super) async fn create(conn: &mut PgConnection, schedule: &NewSchedule) -> Result<()> {
    let key = &schedule.key;
    let job = serde_json::to_string(&schedule.job)
        .map_err(|err| Error::Corrupt(format!("schedule {}: job template: {err}", key.id)))?;
    let inserted = sqlx::query(INSERT)
        .bind(&key.tenant)
        .bind(&key.id)
        .bind((!key.tenant.is_empty()).then_some(key.tenant.as_str()))
        .bind(&schedule.cron)
        .bind(&schedule.time_zone)
        .bind(job)
        .bind(schedule.misfire.as_str())
        .bind(schedule.overlap.as_str())
        .bind(schedule.paused)
        .bind(schedule.created_at_ms)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if inserted == 0 {
        return Err(Error::ScheduleExists(key.id.clone()));
    }
    Ok(())
}

pub(super) async fn set_paused(
    conn: &mut PgConnection,
    key: &ScheduleKey,
    paused: bool,
) -> Result<()> {
    let changed = sqlx::query(SET_PAUSED)
        .bind(&key.tenant)
        .bind(&key.id)
        .bind(paused)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if changed == 0 {
        return Err(Error::ScheduleNotFound(key.id.clone()));
    }
    Ok(())
}

pub(super) async fn delete(conn: &mut PgConnection, key: &ScheduleKey) -> Result<()> {
    let changed = sqlx::query(DELETE)
        .bind(&key.tenant)
        .bind(&key.id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if changed == 0 {
        return Err(Error::ScheduleNotFound(key.id.clone()));
    }
    Ok(())
}

/// Every schedule, or one tenant's (`Some("")`: those with no tenant), by tenant and name.
pub(super) async fn list(pool: &PgPool, tenant: Option<&str>) -> Result<Vec<ScheduleRecord>> {
    sqlx::query(LIST)
        .bind(tenant)
        .fetch_all(pool)
        .await?
        .iter()
        .map(record)
        .collect()
}

pub(super) async fn get(pool: &PgPool, key: &ScheduleKey) -> Result<Option<ScheduleRecord>> {
    sqlx::query(GET)
        .bind(&key.tenant)
        .bind(&key.id)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(record)
        .transpose()
}

/// Fires one tick: stores its job (or records why not) and moves `last_fired_ms`, together.
pub(super) async fn fire(conn: &mut PgConnection, fire: &Fire, tally: &mut Tally) -> Result<Fired> {
    let Fire { key, tick_ms, job } = fire;
    let Some(row) = sqlx::query(FIRE_STATE)
        .bind(&key.tenant)
        .bind(&key.id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(Fired::Stale);
    };
    let (paused, last_fired, overlap, previous): (bool, Option<i64>, String, _) =
        (row.col(0)?, row.col(1)?, row.col(2)?, row.opt_state(3)?);
    // A paused schedule fires nothing, and a tick at or before the last one handled was
    // handled already (by this coordinator, or by the one before a crash).
    if paused || last_fired.is_some_and(|last| *tick_ms <= last) {
        return Ok(Fired::Stale);
    }
    let overlap = Overlap::from_name(&overlap)
        .ok_or_else(|| Error::Corrupt(format!("schedule {}: overlap {overlap:?}", key.id)))?;
    if overlap == Overlap::Skip
        && let Some(state) = previous.filter(|s| !s.is_terminal())
    {
        let why = format!("the previous run is still {}", state.as_str());
        not_fired(conn, key, *tick_ms, &why).await?;
        return Ok(Fired::Overlapped);
    }
    let submit = Submit {
        origin: Origin::Submit,
        jobs: vec![job.clone()],
        group: None,
        scope: Some(key.tenant.clone()),
        durability: Durability::BeforeReply,
    };
    // Its own savepoint: a refusal by admission undoes the submit alone, and the tick is
    // still recorded as handled, with the reason.
    sqlx::query("SAVEPOINT fire").execute(&mut *conn).await?;
    match submit::submit(conn, &submit).await {
        Ok(mut done) => {
            sqlx::query("RELEASE SAVEPOINT fire")
                .execute(&mut *conn)
                .await?;
            submit::tally(tally, &submit.jobs, &done);
            let submitted = done
                .pop()
                .ok_or_else(|| Error::Corrupt("submit returned no job".into()))?;
            sqlx::query(FIRED)
                .bind(&key.tenant)
                .bind(&key.id)
                .bind(tick_ms)
                .bind(submitted.id.to_string())
                .execute(&mut *conn)
                .await?;
            Ok(Fired::Submitted(submitted))
        }
        Err(err @ Error::QueueFull { .. }) => {
            sqlx::query("ROLLBACK TO SAVEPOINT fire")
                .execute(&mut *conn)
                .await?;
            sqlx::query("RELEASE SAVEPOINT fire")
                .execute(&mut *conn)
                .await?;
            let why = err.to_string();
            not_fired(conn, key, *tick_ms, &why).await?;
            Ok(Fired::Refused(why))
        }
        // The whole transaction rolls back (and a deadlock is retried from the start).
        Err(err) => Err(err),
    }
}

async fn not_fired(
    conn: &mut PgConnection,
    key: &ScheduleKey,
    tick_ms: i64,
    why: &str,
) -> Result<()> {
    sqlx::query(NOT_FIRED)
        .bind(&key.tenant)
        .bind(&key.id)
        .bind(tick_ms)
        .bind(why)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A stored schedule, its text columns decoded.
fn record(row: &PgRow) -> Result<ScheduleRecord> {
    let key = ScheduleKey {
        tenant: row.col(0)?,
        id: row.col(1)?,
    };
    let corrupt = |what: &str| Error::Corrupt(format!("schedule {}: {what}", key.id));
    let job: String = row.col(5)?;
    let job = serde_json::from_str(&job).map_err(|_| corrupt("job template"))?;
    let misfire: String = row.col(6)?;
    let misfire = Misfire::from_name(&misfire).ok_or_else(|| corrupt("misfire"))?;
    let overlap: String = row.col(7)?;
    let overlap = Overlap::from_name(&overlap).ok_or_else(|| corrupt("overlap"))?;
    let last_job_id: Option<JobId> = row.opt_id(11)?;
    Ok(ScheduleRecord {
        schedule: NewSchedule {
            cron: row.col(3)?,
            time_zone: row.col(4)?,
            job,
            misfire,
            overlap,
            paused: row.col(8)?,
            created_at_ms: row.col(9)?,
            key,
        },
        last_fired_ms: row.col(10)?,
        last_job_id,
        last_error: row.col(12)?,
    })
}
