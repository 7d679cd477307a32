-- Schedules: a cron timetable and the job each tick submits. A schedule is its tenant's
-- ('' for no tenant), keyed like groups. `last_fired_ms` is the latest tick handled: it moves
-- in the same transaction that stores that tick's job, so a coordinator that crashes either
-- stored both or neither, and the next start knows which ticks it missed.
CREATE TABLE schedules (
    tenant_key    TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    tenant_id     TEXT,
    cron          TEXT    NOT NULL,
    time_zone     TEXT    NOT NULL,
    -- The job template, as JSON of the coordinator's own `JobTemplate` (not protobuf).
    job           TEXT    NOT NULL,
    misfire       TEXT    NOT NULL CHECK (misfire IN ('skip', 'run_once')),
    overlap       TEXT    NOT NULL CHECK (overlap IN ('skip', 'allow')),
    paused        INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL,
    last_fired_ms INTEGER,
    -- The job of the latest tick that stored one: overlap SKIP looks at its state.
    last_job_id   TEXT,
    -- Why the latest tick stored nothing (admission refused it, or the previous run was still
    -- going), shown by ListSchedules.
    last_error    TEXT,
    PRIMARY KEY (tenant_key, id)
) WITHOUT ROWID;
