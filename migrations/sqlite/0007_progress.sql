-- Long jobs (workers.proto point 8): the latest progress a running attempt reported, and the
-- last checkpoint, which the job's next attempt receives. Each field keeps its last value
-- until a report sets it again; `progress_attempt` is the attempt that last reported.
ALTER TABLE jobs ADD COLUMN progress_attempt INTEGER;
ALTER TABLE jobs ADD COLUMN progress_fraction REAL;
ALTER TABLE jobs ADD COLUMN progress_message TEXT;
ALTER TABLE jobs ADD COLUMN progress_updated_at_ms INTEGER;

-- Checkpoints (up to 1 MiB) in a table of their own: a row is rewritten whole on every
-- update, so kept in `jobs` a checkpoint would be copied again by every state change and
-- every progress report that only moves the fraction.
CREATE TABLE job_checkpoints (
    job_seq       INTEGER PRIMARY KEY REFERENCES jobs (seq),
    -- The attempt that stored it.
    attempt       INTEGER NOT NULL,
    checkpoint    BLOB    NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
