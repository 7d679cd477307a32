-- States and outcomes are stored by the coordinator's own names, not by protobuf enum numbers,
-- so that the wire contract and the schema change apart:
--   jobs.state        queued, running, succeeded, failed, cancelled, deadline_exceeded
--   attempts.outcome  running, succeeded, failed, cancelled, deadline_exceeded, lost,
--                     released, interrupted
-- SQLite cannot change a column's type in place: each table is rebuilt and its rows copied
-- with their states translated. Triggers are dropped and made again. Foreign keys are on
-- (SQLite as bundled enables them), so the new attempts table refers to the new jobs table
-- before the old tables go, child first; renaming the new jobs table carries the reference.

DROP TRIGGER group_job_ended;
DROP TRIGGER group_job_born_ended;
DROP TRIGGER queued_in;
DROP TRIGGER queued_out;
DROP TRIGGER queued_again;

CREATE TABLE jobs_v2 (
    -- Submission order: the tie-breaker after priority and run_at.
    seq              INTEGER PRIMARY KEY,
    id               TEXT    NOT NULL UNIQUE,
    queue            TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    payload          BLOB    NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    timeout_ms       INTEGER,
    deadline_ms      INTEGER,
    run_at_ms        INTEGER,
    idempotency_key  TEXT,
    concurrency_key  TEXT,
    weight           INTEGER NOT NULL DEFAULT 1,
    -- JSON array of job ids.
    depends_on       TEXT,
    group_id         TEXT,
    -- JSON object of string labels.
    labels           TEXT,
    tenant_id        TEXT,
    parent_job_id    TEXT,
    traceparent      TEXT,
    tracestate       TEXT,
    trace_id         TEXT,
    state            TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'succeeded',
                                                       'failed', 'cancelled',
                                                       'deadline_exceeded')),
    -- Attempts started (the fencing number of the current one).
    attempt          INTEGER NOT NULL DEFAULT 0,
    -- Attempts that count against max_attempts (failed or lost, not released or interrupted).
    failures         INTEGER NOT NULL DEFAULT 0,
    output           BLOB,
    error            TEXT,
    created_at_ms    INTEGER NOT NULL,
    started_at_ms    INTEGER,
    finished_at_ms   INTEGER,
    worker_id        TEXT
);

INSERT INTO jobs_v2 (seq, id, queue, kind, payload, priority, max_attempts, timeout_ms,
        deadline_ms, run_at_ms, idempotency_key, concurrency_key, weight, depends_on, group_id,
        labels, tenant_id, parent_job_id, traceparent, tracestate, trace_id, state, attempt,
        failures, output, error, created_at_ms, started_at_ms, finished_at_ms, worker_id)
    SELECT seq, id, queue, kind, payload, priority, max_attempts, timeout_ms, deadline_ms,
        run_at_ms, idempotency_key, concurrency_key, weight, depends_on, group_id, labels,
        tenant_id, parent_job_id, traceparent, tracestate, trace_id,
        CASE state WHEN 1 THEN 'queued' WHEN 2 THEN 'running' WHEN 3 THEN 'succeeded'
                   WHEN 4 THEN 'failed' WHEN 5 THEN 'cancelled' WHEN 6 THEN 'deadline_exceeded'
        END,
        attempt, failures, output, error, created_at_ms, started_at_ms, finished_at_ms,
        worker_id
    FROM jobs;

CREATE TABLE attempts_v2 (
    job_seq        INTEGER NOT NULL REFERENCES jobs_v2 (seq),
    number         INTEGER NOT NULL,
    worker_id      TEXT    NOT NULL,
    started_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER,
    outcome        TEXT    NOT NULL CHECK (outcome IN ('running', 'succeeded', 'failed',
                                                       'cancelled', 'deadline_exceeded',
                                                       'lost', 'released', 'interrupted')),
    error          TEXT,
    PRIMARY KEY (job_seq, number)
) WITHOUT ROWID;

INSERT INTO attempts_v2 (job_seq, number, worker_id, started_at_ms, finished_at_ms, outcome,
        error)
    SELECT job_seq, number, worker_id, started_at_ms, finished_at_ms,
        CASE outcome WHEN 1 THEN 'running' WHEN 2 THEN 'succeeded' WHEN 3 THEN 'failed'
                     WHEN 4 THEN 'cancelled' WHEN 5 THEN 'deadline_exceeded' WHEN 6 THEN 'lost'
                     WHEN 7 THEN 'released' WHEN 8 THEN 'interrupted'
        END,
        error
    FROM attempts;

DROP TABLE attempts;
DROP TABLE jobs;
ALTER TABLE jobs_v2 RENAME TO jobs;
ALTER TABLE attempts_v2 RENAME TO attempts;

-- A second submit with the same key in the same queue (and tenant) finds the first job.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (queue, coalesce(tenant_id, ''), idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_queue_state ON jobs (queue, state, seq);
CREATE INDEX jobs_state ON jobs (state, seq);
CREATE INDEX jobs_group ON jobs (group_id, seq) WHERE group_id IS NOT NULL;
-- A parent's children, for cancelling them with it.
CREATE INDEX jobs_parent ON jobs (parent_job_id) WHERE parent_job_id IS NOT NULL;


-- Fan-in: a group's job that reaches a terminal state gets a row in group_events.
CREATE TRIGGER group_job_ended AFTER UPDATE OF state ON jobs
    WHEN NEW.group_id IS NOT NULL
         AND NEW.state IN ('succeeded', 'failed', 'cancelled', 'deadline_exceeded')
         AND OLD.state IN ('queued', 'running')
BEGIN
    INSERT INTO group_events (group_id, job_id) VALUES (NEW.group_id, NEW.id);
END;

CREATE TRIGGER group_job_born_ended AFTER INSERT ON jobs
    WHEN NEW.group_id IS NOT NULL
         AND NEW.state IN ('succeeded', 'failed', 'cancelled', 'deadline_exceeded')
BEGIN
    INSERT INTO group_events (group_id, job_id) VALUES (NEW.group_id, NEW.id);
END;

-- Queued jobs per scope, for admission (`max_queued`) inside the submitting transaction.
CREATE TRIGGER queued_in AFTER INSERT ON jobs WHEN NEW.state = 'queued'
BEGIN
    INSERT INTO queued_counts (scope, queued) VALUES ('queue:' || NEW.queue, 1)
        ON CONFLICT (scope) DO UPDATE SET queued = queued + 1;
    INSERT INTO queued_counts (scope, queued)
        SELECT 'tenant:' || NEW.tenant_id, 1 WHERE NEW.tenant_id IS NOT NULL
        ON CONFLICT (scope) DO UPDATE SET queued = queued + 1;
    INSERT INTO queued_counts (scope, queued)
        SELECT 'key:' || NEW.concurrency_key, 1 WHERE NEW.concurrency_key IS NOT NULL
        ON CONFLICT (scope) DO UPDATE SET queued = queued + 1;
END;

CREATE TRIGGER queued_out AFTER UPDATE OF state ON jobs
    WHEN OLD.state = 'queued' AND NEW.state != 'queued'
BEGIN
    UPDATE queued_counts SET queued = queued - 1
        WHERE scope IN ('queue:' || NEW.queue, 'tenant:' || NEW.tenant_id,
                        'key:' || NEW.concurrency_key);
END;

CREATE TRIGGER queued_again AFTER UPDATE OF state ON jobs
    WHEN OLD.state != 'queued' AND NEW.state = 'queued'
BEGIN
    INSERT INTO queued_counts (scope, queued) VALUES ('queue:' || NEW.queue, 1)
        ON CONFLICT (scope) DO UPDATE SET queued = queued + 1;
    INSERT INTO queued_counts (scope, queued)
        SELECT 'tenant:' || NEW.tenant_id, 1 WHERE NEW.tenant_id IS NOT NULL
        ON CONFLICT (scope) DO UPDATE SET queued = queued + 1;
    INSERT INTO queued_counts (scope, queued)
        SELECT 'key:' || NEW.concurrency_key, 1 WHERE NEW.concurrency_key IS NOT NULL
        ON CONFLICT (scope) DO UPDATE SET queued = queued + 1;
END;
