-- Jobs, their attempts and their groups. Times are Unix milliseconds (UTC).

CREATE TABLE jobs (
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
    -- switchyard.v1.JobState
    state            INTEGER NOT NULL,
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

-- A second submit with the same key in the same queue (and tenant) finds the first job.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (queue, coalesce(tenant_id, ''), idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_queue_state ON jobs (queue, state, seq);
CREATE INDEX jobs_state ON jobs (state, seq);
CREATE INDEX jobs_group ON jobs (group_id, seq) WHERE group_id IS NOT NULL;
-- A parent's children, for cancelling them with it.
CREATE INDEX jobs_parent ON jobs (parent_job_id) WHERE parent_job_id IS NOT NULL;

-- Who waits for whom: `job_id` runs after `depends_on` succeeds. Keyed by the dependency, so
-- that a dependency's end finds its dependents.
CREATE TABLE dependencies (
    depends_on TEXT NOT NULL,
    job_id     TEXT NOT NULL,
    PRIMARY KEY (depends_on, job_id)
) WITHOUT ROWID;

CREATE TABLE attempts (
    job_seq        INTEGER NOT NULL REFERENCES jobs (seq),
    number         INTEGER NOT NULL,
    worker_id      TEXT    NOT NULL,
    started_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER,
    -- switchyard.v1.AttemptOutcome
    outcome        INTEGER NOT NULL,
    error          TEXT,
    PRIMARY KEY (job_seq, number)
) WITHOUT ROWID;

CREATE TABLE groups (
    id                TEXT    PRIMARY KEY,
    size              INTEGER NOT NULL,
    cancel_on_failure INTEGER NOT NULL,
    created_at_ms     INTEGER NOT NULL,
    tenant_id         TEXT,
    -- errgroup: the first job that ended badly, and its error.
    failed_job_id     TEXT,
    error             TEXT
);

-- Fan-in: one row each time a job of a group reaches a terminal state, in commit order.
-- `WatchGroup` streams them; a row's seq is the cursor to resume after it.
CREATE TABLE group_events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id TEXT    NOT NULL,
    job_id   TEXT    NOT NULL
);
CREATE INDEX group_events_group ON group_events (group_id, seq);

-- Terminal states are 3 (SUCCEEDED) to 6 (DEADLINE_EXCEEDED), as switchyard.v1.JobState.
CREATE TRIGGER group_job_ended AFTER UPDATE OF state ON jobs
    WHEN NEW.group_id IS NOT NULL AND NEW.state BETWEEN 3 AND 6
         AND OLD.state NOT BETWEEN 3 AND 6
BEGIN
    INSERT INTO group_events (group_id, job_id) VALUES (NEW.group_id, NEW.id);
END;

CREATE TRIGGER group_job_born_ended AFTER INSERT ON jobs
    WHEN NEW.group_id IS NOT NULL AND NEW.state BETWEEN 3 AND 6
BEGIN
    INSERT INTO group_events (group_id, job_id) VALUES (NEW.group_id, NEW.id);
END;

-- Quotas by scope: `queue:<name>`, `key:<concurrency_key>`, `tenant:<id>`.
CREATE TABLE quotas (
    scope           TEXT PRIMARY KEY,
    max_in_flight   INTEGER,
    max_queued      INTEGER,
    rate_per_second REAL,
    burst           INTEGER
);

CREATE TABLE paused_queues (
    queue TEXT PRIMARY KEY
);

-- Queued jobs per scope, kept by the triggers below, for admission (`max_queued`) inside the
-- submitting transaction.
CREATE TABLE queued_counts (
    scope  TEXT PRIMARY KEY,
    queued INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TRIGGER queued_in AFTER INSERT ON jobs WHEN NEW.state = 1
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

CREATE TRIGGER queued_out AFTER UPDATE OF state ON jobs WHEN OLD.state = 1 AND NEW.state != 1
BEGIN
    UPDATE queued_counts SET queued = queued - 1
        WHERE scope IN ('queue:' || NEW.queue, 'tenant:' || NEW.tenant_id,
                        'key:' || NEW.concurrency_key);
END;

CREATE TRIGGER queued_again AFTER UPDATE OF state ON jobs WHEN OLD.state != 1 AND NEW.state = 1
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
