//! Schedules: creating, pausing and deleting them (writer), reading them (read pool), and
//! firing a tick (writer): the tick's job goes in through the same path as any submit, and
//! the schedule's `last_fired_ms` moves in the same transaction, so that a crash keeps both
//! or neither.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{counts::Counts, submit, writer::savepoint};
use crate::{
    domain::{JobId, JobState, Misfire, NewSchedule, Overlap, ScheduleKey, ScheduleRecord},
    error::{Error, Result},
    store::{Durability, Fire, Fired, Origin, Submit},
    telemetry::Tally,
};

const INSERT: &str = "INSERT INTO schedules (tenant_key, id, tenant_id, cron, time_zone, job,
        misfire, overlap, paused, created_at_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
const EXISTS: &str = "SELECT 1 FROM schedules WHERE tenant_key = ?1 AND id = ?2";
const SET_PAUSED: &str = "UPDATE schedules SET paused = ?3 WHERE tenant_key = ?1 AND id = ?2";
const DELETE: &str = "DELETE FROM schedules WHERE tenant_key = ?1 AND id = ?2";
const COLUMNS: &str = "SELECT tenant_key, id, tenant_id, cron, time_zone, job, misfire, overlap,
        paused, created_at_ms, last_fired_ms, last_job_id, last_error
    FROM schedules";
/// What a fire needs to know of its schedule, read inside the fire's transaction.
const FIRE_STATE: &str = "SELECT s.paused, s.last_fired_ms, s.overlap, j.state
    FROM schedules s LEFT JOIN jobs j ON j.id = s.last_job_id
    WHERE s.tenant_key = ?1 AND s.id = ?2";
const FIRED: &str = "UPDATE schedules SET last_fired_ms = ?3, last_job_id = ?4, last_error = NULL
    WHERE tenant_key = ?1 AND id = ?2";
const NOT_FIRED: &str = "UPDATE schedules SET last_fired_ms = ?3, last_error = ?4
    WHERE tenant_key = ?1 AND id = ?2";

pub(super) fn create(conn: &Connection, schedule: &NewSchedule) -> Result<()> {
    let key = &schedule.key;
    if conn
        .prepare_cached(EXISTS)?
        .exists(params![key.tenant, key.id])?
    {
        return Err(Error::ScheduleExists(key.id.clone()));
    }
    let job = serde_json::to_string(&schedule.job)
        .map_err(|err| Error::Corrupt(format!("schedule {}: job template: {err}", key.id)))?;
    conn.prepare_cached(INSERT)?.execute(params![
        key.tenant,
        key.id,
        (!key.tenant.is_empty()).then_some(key.tenant.as_str()),
        schedule.cron,
        schedule.time_zone,
        job,
        schedule.misfire.as_str(),
        schedule.overlap.as_str(),
        schedule.paused,
        schedule.created_at_ms,
    ])?;
    Ok(())
}

pub(super) fn set_paused(conn: &Connection, key: &ScheduleKey, paused: bool) -> Result<()> {
    let changed = conn
        .prepare_cached(SET_PAUSED)?
        .execute(params![key.tenant, key.id, paused])?;
    if changed == 0 {
        return Err(Error::ScheduleNotFound(key.id.clone()));
    }
    Ok(())
}

pub(super) fn delete(conn: &Connection, key: &ScheduleKey) -> Result<()> {
    let changed = conn
        .prepare_cached(DELETE)?
        .execute(params![key.tenant, key.id])?;
    if changed == 0 {
        return Err(Error::ScheduleNotFound(key.id.clone()));
    }
    Ok(())
}

/// Every schedule, or one tenant's (`Some("")`: those with no tenant), by tenant and name.
pub(super) fn list(conn: &Connection, tenant: Option<&str>) -> Result<Vec<ScheduleRecord>> {
    let sql = format!("{COLUMNS} WHERE ?1 IS NULL OR tenant_key = ?1 ORDER BY tenant_key, id");
    let rows = conn
        .prepare_cached(&sql)?
        .query_map(params![tenant], raw)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(Raw::into_record).collect()
}

pub(super) fn get(conn: &Connection, key: &ScheduleKey) -> Result<Option<ScheduleRecord>> {
    let sql = format!("{COLUMNS} WHERE tenant_key = ?1 AND id = ?2");
    conn.prepare_cached(&sql)?
        .query_row(params![key.tenant, key.id], raw)
        .optional()?
        .map(Raw::into_record)
        .transpose()
}

/// Fires one tick: stores its job (or records why not) and moves `last_fired_ms`, together.
pub(super) fn fire(
    conn: &Connection,
    counts: &Counts,
    fire: &Fire,
    tally: &mut Tally,
) -> Result<Fired> {
    let Fire { key, tick_ms, job } = fire;
    let state = conn
        .prepare_cached(FIRE_STATE)?
        .query_row(params![key.tenant, key.id], |row| {
            Ok((
                row.get::<_, bool>(0)?,
                row.get::<_, Option<i64>>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<JobState>>(3)?,
            ))
        })
        .optional()?;
    let Some((paused, last_fired, overlap, previous)) = state else {
        return Ok(Fired::Stale);
    };
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
        conn.prepare_cached(NOT_FIRED)?
            .execute(params![key.tenant, key.id, tick_ms, why])?;
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
    match savepoint(conn, counts, |c| submit::submit(c, counts, &submit)) {
        Ok(mut done) => {
            submit::tally(tally, &submit.jobs, &done);
            let submitted = done
                .pop()
                .ok_or_else(|| Error::Corrupt("submit returned no job".into()))?;
            conn.prepare_cached(FIRED)?.execute(params![
                key.tenant,
                key.id,
                tick_ms,
                submitted.id
            ])?;
            Ok(Fired::Submitted(submitted))
        }
        Err(err @ Error::QueueFull { .. }) => {
            let why = err.to_string();
            conn.prepare_cached(NOT_FIRED)?
                .execute(params![key.tenant, key.id, tick_ms, why])?;
            Ok(Fired::Refused(why))
        }
        Err(err) => Err(err),
    }
}

/// A row as stored, before its text columns are decoded.
struct Raw {
    key: ScheduleKey,
    cron: String,
    time_zone: String,
    job: String,
    misfire: String,
    overlap: String,
    paused: bool,
    created_at_ms: i64,
    last_fired_ms: Option<i64>,
    last_job_id: Option<JobId>,
    last_error: Option<String>,
}

fn raw(row: &Row<'_>) -> rusqlite::Result<Raw> {
    Ok(Raw {
        key: ScheduleKey {
            tenant: row.get(0)?,
            id: row.get(1)?,
        },
        cron: row.get(3)?,
        time_zone: row.get(4)?,
        job: row.get(5)?,
        misfire: row.get(6)?,
        overlap: row.get(7)?,
        paused: row.get(8)?,
        created_at_ms: row.get(9)?,
        last_fired_ms: row.get(10)?,
        last_job_id: row.get(11)?,
        last_error: row.get(12)?,
    })
}

impl Raw {
    fn into_record(self) -> Result<ScheduleRecord> {
        let corrupt = |what: &str| Error::Corrupt(format!("schedule {}: {what}", self.key.id));
        let job = serde_json::from_str(&self.job).map_err(|_| corrupt("job template"))?;
        let misfire = Misfire::from_name(&self.misfire).ok_or_else(|| corrupt("misfire"))?;
        let overlap = Overlap::from_name(&self.overlap).ok_or_else(|| corrupt("overlap"))?;
        Ok(ScheduleRecord {
            schedule: NewSchedule {
                key: self.key,
                cron: self.cron,
                time_zone: self.time_zone,
                job,
                misfire,
                overlap,
                paused: self.paused,
                created_at_ms: self.created_at_ms,
            },
            last_fired_ms: self.last_fired_ms,
            last_job_id: self.last_job_id,
            last_error: self.last_error,
        })
    }
}
