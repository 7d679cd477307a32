-- Jobs per queue and state, kept by the transaction that changes them (issue 12): `Stats`
-- reads a row per queue and state instead of counting every job ever stored. A row whose
-- count falls to zero stays; readers skip it.
CREATE TABLE job_counts (
    queue TEXT NOT NULL,
    state INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (queue, state)
) WITHOUT ROWID;

INSERT INTO job_counts (queue, state, n) SELECT queue, state, count(*) FROM jobs GROUP BY queue, state;

CREATE TRIGGER job_counts_in AFTER INSERT ON jobs
BEGIN
    INSERT INTO job_counts (queue, state, n) VALUES (NEW.queue, NEW.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER job_counts_moved AFTER UPDATE OF state ON jobs WHEN OLD.state != NEW.state
BEGIN
    UPDATE job_counts SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;
    INSERT INTO job_counts (queue, state, n) VALUES (NEW.queue, NEW.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER job_counts_out AFTER DELETE ON jobs
BEGIN
    UPDATE job_counts SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;
END;
