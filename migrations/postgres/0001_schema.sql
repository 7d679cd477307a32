-- The Postgres schema: the end state of migrations/sqlite/0001 to 0010 in one file, since a
-- Postgres database starts fresh. Times are Unix milliseconds (UTC), BIGINT. Ids are the
-- coordinator's own text (UUIDs, hyphenated), as in SQLite. Every integer is BIGINT so that
-- each binds and reads as an i64 (attempt numbers and limits are u32 in the domain).
--
-- States and outcomes are stored by the coordinator's own codes (`domain::JobState::code`,
-- `domain::AttemptOutcome::code`), as in SQLite:
--   jobs.state        10 queued, 20 running, 30 succeeded, 40 failed, 50 cancelled,
--                     60 deadline_exceeded (terminal: 30 and above)
--   attempts.outcome  10 running, 20 succeeded, 30 failed, 40 cancelled,
--                     50 deadline_exceeded, 60 lost, 70 released, 80 interrupted

CREATE TABLE jobs (
    -- Submission order: the tie-breaker after priority and run_at, and the cursor of List and
    -- bulk steps.
    seq                    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                     TEXT    NOT NULL UNIQUE,
    queue                  TEXT    NOT NULL,
    kind                   TEXT    NOT NULL,
    payload                BYTEA   NOT NULL,
    priority               INTEGER NOT NULL DEFAULT 0,
    max_attempts           BIGINT  NOT NULL,
    timeout_ms             BIGINT,
    deadline_ms            BIGINT,
    run_at_ms              BIGINT,
    -- The key as submitted, for all to see; which job it binds is in idempotency_keys.
    idempotency_key        TEXT,
    concurrency_key        TEXT,
    weight                 BIGINT  NOT NULL DEFAULT 1,
    -- The jobs it runs after (also as edges in `dependencies`).
    depends_on             TEXT[],
    group_id               TEXT,
    -- An object of string labels.
    labels                 JSONB,
    tenant_id              TEXT,
    parent_job_id          TEXT,
    -- The attempt of its parent that submitted it (NULL: not said, or no parent).
    parent_attempt         BIGINT,
    traceparent            TEXT,
    tracestate             TEXT,
    trace_id               TEXT,
    state                  BIGINT  NOT NULL,
    -- Attempts started (the fencing number of the current one).
    attempt                BIGINT  NOT NULL DEFAULT 0,
    -- Attempts that count against max_attempts (failed or lost, not released or interrupted).
    failures               BIGINT  NOT NULL DEFAULT 0,
    output                 BYTEA,
    error                  TEXT,
    created_at_ms          BIGINT  NOT NULL,
    started_at_ms          BIGINT,
    finished_at_ms         BIGINT,
    worker_id              TEXT,
    -- The latest progress a running attempt reported (workers.proto point 8).
    progress_attempt       BIGINT,
    progress_fraction      DOUBLE PRECISION,
    progress_message       TEXT,
    progress_updated_at_ms BIGINT
);

CREATE INDEX jobs_queue_state ON jobs (queue, state, seq);
CREATE INDEX jobs_state ON jobs (state, seq);
CREATE INDEX jobs_group ON jobs (group_id, seq) WHERE group_id IS NOT NULL;
-- Whether a group still has an unfinished job, by one seek.
CREATE INDEX jobs_group_state ON jobs (group_id, state) WHERE group_id IS NOT NULL;
-- A parent's children, for cancelling them with it.
CREATE INDEX jobs_parent ON jobs (parent_job_id) WHERE parent_job_id IS NOT NULL;
-- Finished jobs by state and end time: what the pruner finds due.
CREATE INDEX jobs_finished ON jobs (state, finished_at_ms, seq) WHERE finished_at_ms IS NOT NULL;
-- List and bulk's label filter (`labels @> {"k": "v"}`).
CREATE INDEX jobs_labels ON jobs USING gin (labels jsonb_path_ops) WHERE labels IS NOT NULL;

-- Who waits for whom: `job_id` runs after `depends_on` succeeds. Keyed by the dependency (a
-- dependency's end finds its dependents), and indexed by the dependent (its own dependencies).
CREATE TABLE dependencies (
    depends_on TEXT NOT NULL,
    job_id     TEXT NOT NULL,
    PRIMARY KEY (depends_on, job_id)
);
CREATE INDEX dependencies_job ON dependencies (job_id, depends_on);

CREATE TABLE attempts (
    job_seq        BIGINT NOT NULL REFERENCES jobs (seq),
    number         BIGINT NOT NULL,
    worker_id      TEXT   NOT NULL,
    started_at_ms  BIGINT NOT NULL,
    finished_at_ms BIGINT,
    outcome        BIGINT NOT NULL,
    error          TEXT,
    PRIMARY KEY (job_seq, number)
);

-- Checkpoints (up to 1 MiB) in a table of their own, so that state changes do not copy them.
CREATE TABLE job_checkpoints (
    job_seq       BIGINT PRIMARY KEY REFERENCES jobs (seq),
    -- The attempt that stored it.
    attempt       BIGINT NOT NULL,
    checkpoint    BYTEA  NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- Group ids are each tenant's own: keyed by the tenant's id ('' for none) and the name.
CREATE TABLE groups (
    tenant_key        TEXT    NOT NULL,
    id                TEXT    NOT NULL,
    size              BIGINT  NOT NULL,
    cancel_on_failure BOOLEAN NOT NULL,
    created_at_ms     BIGINT  NOT NULL,
    tenant_id         TEXT,
    -- errgroup: the first job that ended badly, and its error.
    failed_job_id     TEXT,
    error             TEXT,
    PRIMARY KEY (tenant_key, id)
);
-- Looking a group up by name alone (an admin's view of every tenant).
CREATE INDEX groups_id ON groups (id);

-- Fan-in: one row each time a job of a group reaches a terminal state. `WatchGroup` streams
-- them by `seq` after a cursor, so within a group `seq` must follow commit order: the trigger
-- below takes a transaction lock on the group before it draws the next `seq`, so a later
-- transaction's event of the same group is numbered only after the earlier one committed.
CREATE TABLE group_events (
    seq      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_id TEXT   NOT NULL,
    job_id   TEXT   NOT NULL
);
CREATE INDEX group_events_group ON group_events (group_id, seq);

CREATE FUNCTION switchyard_group_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('switchyard.group:' || NEW.group_id, 0));
    INSERT INTO group_events (group_id, job_id) VALUES (NEW.group_id, NEW.id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER group_job_ended AFTER UPDATE OF state ON jobs FOR EACH ROW
    WHEN (NEW.group_id IS NOT NULL AND NEW.state >= 30 AND OLD.state < 30)
    EXECUTE FUNCTION switchyard_group_event();

CREATE TRIGGER group_job_born_ended AFTER INSERT ON jobs FOR EACH ROW
    WHEN (NEW.group_id IS NOT NULL AND NEW.state >= 30)
    EXECUTE FUNCTION switchyard_group_event();

-- Quotas by scope: `queue:<name>`, `key:<concurrency_key>`, `tenant:<id>`. Only `queue:`
-- scopes carry a default attempt timeout.
CREATE TABLE quotas (
    scope              TEXT PRIMARY KEY,
    max_in_flight      BIGINT,
    max_queued         BIGINT,
    rate_per_second    DOUBLE PRECISION,
    burst              BIGINT,
    attempt_timeout_ms BIGINT
);

CREATE TABLE paused_queues (
    queue TEXT PRIMARY KEY
);

-- Queued jobs per scope, kept by the triggers below, for admission (`max_queued`) inside the
-- submitting transaction and for ListQuotas. A scope's count is spread over 16 rows, the
-- job's id picking its row (the same one when it leaves the queue): a transaction holds the
-- row it changed until it commits, so with one row per scope every submit to a queue would
-- wait for the one before it to commit (fsync included). A scope's count is the sum of its rows
-- (so the sum stays right even if a row alone went negative: the row is only a spreading).
CREATE TABLE queued_counts (
    scope  TEXT     NOT NULL,
    shard  SMALLINT NOT NULL,
    queued BIGINT   NOT NULL,
    PRIMARY KEY (scope, shard)
);

CREATE FUNCTION switchyard_queued_in() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    shard_of SMALLINT := hashtext(NEW.id) & 15;
BEGIN
    INSERT INTO queued_counts (scope, shard, queued) VALUES ('queue:' || NEW.queue, shard_of, 1)
        ON CONFLICT (scope, shard) DO UPDATE SET queued = queued_counts.queued + 1;
    IF NEW.tenant_id IS NOT NULL THEN
        INSERT INTO queued_counts (scope, shard, queued)
            VALUES ('tenant:' || NEW.tenant_id, shard_of, 1)
            ON CONFLICT (scope, shard) DO UPDATE SET queued = queued_counts.queued + 1;
    END IF;
    IF NEW.concurrency_key IS NOT NULL THEN
        INSERT INTO queued_counts (scope, shard, queued)
            VALUES ('key:' || NEW.concurrency_key, shard_of, 1)
            ON CONFLICT (scope, shard) DO UPDATE SET queued = queued_counts.queued + 1;
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION switchyard_queued_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE queued_counts SET queued = queued - 1
        WHERE shard = hashtext(NEW.id) & 15
          AND scope IN ('queue:' || NEW.queue, 'tenant:' || NEW.tenant_id,
                        'key:' || NEW.concurrency_key);
    RETURN NULL;
END;
$$;

CREATE TRIGGER queued_in AFTER INSERT ON jobs FOR EACH ROW
    WHEN (NEW.state = 10)
    EXECUTE FUNCTION switchyard_queued_in();

CREATE TRIGGER queued_out AFTER UPDATE OF state ON jobs FOR EACH ROW
    WHEN (OLD.state = 10 AND NEW.state <> 10)
    EXECUTE FUNCTION switchyard_queued_out();

CREATE TRIGGER queued_again AFTER UPDATE OF state ON jobs FOR EACH ROW
    WHEN (OLD.state <> 10 AND NEW.state = 10)
    EXECUTE FUNCTION switchyard_queued_in();

-- One row the coordinator rewrites to learn whether the store can commit again.
CREATE TABLE store_probe (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    at_ms BIGINT  NOT NULL
);

-- Idempotency keys: a key binds within its queue and tenant ('' for none) for a window
-- (`expires_at_ms`) or while its job is queued or running, then may pass to a new job.
CREATE TABLE idempotency_keys (
    queue         TEXT    NOT NULL,
    tenant_key    TEXT    NOT NULL,
    key           TEXT    NOT NULL,
    job_id        TEXT    NOT NULL,
    expires_at_ms BIGINT,
    while_active  BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (queue, tenant_key, key)
);
-- Keys whose window has passed, oldest first.
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at_ms)
    WHERE expires_at_ms IS NOT NULL;

-- Schedules: a cron timetable and the job each tick submits, keyed like groups.
-- `last_fired_ms` moves in the same transaction that stores that tick's job.
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
    paused        BOOLEAN NOT NULL DEFAULT false,
    created_at_ms BIGINT  NOT NULL,
    last_fired_ms BIGINT,
    last_job_id   TEXT,
    last_error    TEXT,
    PRIMARY KEY (tenant_key, id)
);
