//! Schedules: a cron timetable in a time zone, the job each tick submits, and what to do
//! with ticks missed while the coordinator was down or while the previous run is still going.
//! Tick arithmetic is croner's (a maintained parser: `L`, `W`, `#`, ranges and time zones are
//! not ours to get wrong); this module only fixes which cron dialect we accept and turns its
//! answers into Unix milliseconds.

use std::{collections::BTreeMap, str::FromStr};

use chrono::{DateTime, TimeZone, Utc};
use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};

use crate::error::{Error, Result};

/// A schedule's name in its tenant's namespace (`""` for no tenant).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScheduleKey {
    pub tenant: String,
    pub id: String,
}

/// What to do with the ticks that passed while the coordinator was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Misfire {
    /// Fire none of them: the next run is the next tick.
    #[default]
    Skip,
    /// Fire one job (for the latest of them), however many were missed.
    RunOnce,
}

/// What to do with a tick while the schedule's previous job is still queued or running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlap {
    /// Fire nothing for this tick.
    #[default]
    Skip,
    /// Fire anyway.
    Allow,
}

impl Misfire {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Misfire::Skip => "skip",
            Misfire::RunOnce => "run_once",
        }
    }

    pub fn from_name(name: &str) -> Option<Misfire> {
        match name {
            "skip" => Some(Misfire::Skip),
            "run_once" => Some(Misfire::RunOnce),
            _ => None,
        }
    }
}

impl Overlap {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Allow => "allow",
        }
    }

    pub fn from_name(name: &str) -> Option<Overlap> {
        match name {
            "skip" => Some(Overlap::Skip),
            "allow" => Some(Overlap::Allow),
            _ => None,
        }
    }
}

/// The job a tick submits: a validated `SubmitRequest` without what only one job can carry
/// (an idempotency key, which each tick derives; dependencies; a group; absolute times).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobTemplate {
    pub queue: String,
    pub kind: String,
    pub payload: Vec<u8>,
    pub priority: i32,
    pub max_attempts: u32,
    pub timeout_ms: Option<i64>,
    pub concurrency_key: Option<String>,
    pub weight: u32,
    pub labels: BTreeMap<String, String>,
}

/// A schedule as created: everything the caller chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSchedule {
    pub key: ScheduleKey,
    pub cron: String,
    pub time_zone: String,
    pub job: JobTemplate,
    pub misfire: Misfire,
    pub overlap: Overlap,
    pub paused: bool,
    pub created_at_ms: i64,
}

/// A stored schedule, with what its firing has done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRecord {
    pub schedule: NewSchedule,
    /// The latest tick handled (a job fired, or the tick skipped for overlap or refused by
    /// admission), Unix ms.
    pub last_fired_ms: Option<i64>,
    /// The job of the latest tick that submitted one.
    pub last_job_id: Option<super::JobId>,
    /// Why the latest tick submitted nothing, when it did not.
    pub last_error: Option<String>,
}

/// The idempotency key of the job a schedule submits for `tick_ms`: the same tick can only
/// ever store one job, whichever coordinator fires it and however often.
pub fn tick_key(id: &str, tick_ms: i64) -> String {
    format!("schedule:{id}:{tick_ms}")
}

/// A cron expression in a time zone: when a schedule's ticks fall.
#[derive(Debug, Clone)]
pub struct Timetable {
    cron: Cron,
    zone: chrono_tz::Tz,
}

impl Timetable {
    /// Parses five fields, or six with a leading seconds field, and an IANA zone name (empty
    /// is UTC). A bad one is `INVALID_ARGUMENT` naming `{prefix}cron` or `{prefix}time_zone`.
    pub fn parse(prefix: &str, cron: &str, time_zone: &str) -> Result<Timetable> {
        let fields = cron.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(Error::invalid(
                format!("{prefix}cron"),
                format!("has {fields} fields; it takes five, or six with seconds first"),
            ));
        }
        let parsed = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(cron)
            .map_err(|err| Error::invalid(format!("{prefix}cron"), err.to_string()))?;
        let zone = if time_zone.is_empty() {
            chrono_tz::UTC
        } else {
            chrono_tz::Tz::from_str(time_zone).map_err(|_| {
                Error::invalid(
                    format!("{prefix}time_zone"),
                    format!("{time_zone:?} is not an IANA time zone name"),
                )
            })?
        };
        let timetable = Timetable { cron: parsed, zone };
        // A pattern that parses but never matches (`0 0 30 2 *`) would leave a schedule that
        // silently never fires.
        if timetable.next_after(crate::domain::now_ms()).is_none() {
            return Err(Error::invalid(
                format!("{prefix}cron"),
                "never matches a time",
            ));
        }
        Ok(timetable)
    }

    /// The first tick strictly after `after_ms` (Unix ms), `None` if there is none.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let start: DateTime<Utc> = DateTime::from_timestamp_millis(after_ms)?;
        let local = self.zone.from_utc_datetime(&start.naive_utc());
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    /// Up to `n` ticks after `after_ms`, in order.
    pub fn upcoming(&self, after_ms: i64, n: usize) -> Vec<i64> {
        let mut ticks = Vec::with_capacity(n);
        let mut at = after_ms;
        while ticks.len() < n {
            match self.next_after(at) {
                Some(tick) => {
                    ticks.push(tick);
                    at = tick;
                }
                None => break,
            }
        }
        ticks
    }

    /// The latest tick in `(after_ms, before_ms)`, if any: the one `RUN_ONCE` fires for the
    /// ticks missed in that span.
    pub fn latest_between(&self, after_ms: i64, before_ms: i64) -> Option<i64> {
        // croner looks back from the whole second, inclusively: from the last millisecond
        // before `before_ms`, that is the latest tick strictly before it.
        let end: DateTime<Utc> = DateTime::from_timestamp_millis(before_ms - 1)?;
        let local = self.zone.from_utc_datetime(&end.naive_utc());
        self.cron
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|t| t.timestamp_millis())
            .filter(|&tick| tick > after_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .expect("a test timestamp")
            .timestamp_millis()
    }

    #[test]
    fn five_fields_tick_on_minutes_and_six_on_seconds() {
        let minutes = Timetable::parse("", "*/15 * * * *", "").expect("five fields");
        assert_eq!(
            minutes.next_after(ms("2026-01-01T10:07:30Z")),
            Some(ms("2026-01-01T10:15:00Z"))
        );
        let seconds = Timetable::parse("", "*/1 * * * * *", "UTC").expect("six fields");
        let t = ms("2026-01-01T10:07:30.250Z");
        assert_eq!(seconds.next_after(t), Some(ms("2026-01-01T10:07:31Z")));
        // Strictly after: a tick is never its own successor.
        assert_eq!(
            seconds.next_after(ms("2026-01-01T10:07:31Z")),
            Some(ms("2026-01-01T10:07:32Z"))
        );
        assert_eq!(
            seconds.upcoming(t, 3),
            vec![
                ms("2026-01-01T10:07:31Z"),
                ms("2026-01-01T10:07:32Z"),
                ms("2026-01-01T10:07:33Z")
            ]
        );
    }

    #[test]
    fn ticks_fall_in_the_schedule_time_zone() {
        // 09:00 in New York is 14:00 UTC in winter and 13:00 UTC in summer.
        let t = Timetable::parse("", "0 9 * * *", "America/New_York").expect("parses");
        assert_eq!(
            t.next_after(ms("2026-01-15T12:00:00Z")),
            Some(ms("2026-01-15T14:00:00Z"))
        );
        assert_eq!(
            t.next_after(ms("2026-07-15T12:00:00Z")),
            Some(ms("2026-07-15T13:00:00Z"))
        );
    }

    #[test]
    fn the_latest_missed_tick_is_found_inside_the_span_only() {
        let t = Timetable::parse("", "* * * * * *", "").expect("parses");
        let down = ms("2026-01-01T00:00:00.500Z");
        let up = ms("2026-01-01T00:00:04.200Z");
        assert_eq!(t.latest_between(down, up), Some(ms("2026-01-01T00:00:04Z")));
        assert_eq!(t.latest_between(down, down + 100), None);
        // Strictly before: a tick at `before` itself is not missed.
        assert_eq!(
            t.latest_between(down, ms("2026-01-01T00:00:04Z")),
            Some(ms("2026-01-01T00:00:03Z"))
        );
    }

    #[test]
    fn bad_expressions_and_zones_name_their_field() {
        for cron in ["", "* * * *", "* * * * * * *", "61 * * * *", "every day"] {
            match Timetable::parse("schedule.", cron, "") {
                Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "schedule.cron"),
                other => panic!("{cron:?}: {other:?}"),
            }
        }
        match Timetable::parse("schedule.", "* * * * *", "Mars/Olympus") {
            Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "schedule.time_zone"),
            other => panic!("{other:?}"),
        }
    }
}
