-- Jobs per queue and state, kept by the transaction that changes them (issue 12), as SQLite's
-- migration 0011 keeps them: `Stats` sums a few rows per queue and state instead of counting
-- every job stored. Each (queue, state) is spread over 16 rows, chosen by the job's id, as
-- `queued_counts` is: a transaction holds a row it changed until it commits, and one row per
-- queue and state would make every write to a queue wait for the one before it.
CREATE TABLE job_counts (
    queue TEXT     NOT NULL,
    state BIGINT   NOT NULL,
    shard SMALLINT NOT NULL,
    n     BIGINT   NOT NULL,
    PRIMARY KEY (queue, state, shard)
);

INSERT INTO job_counts (queue, state, shard, n)
    SELECT queue, state, hashtext(id) & 15, count(*) FROM jobs
    GROUP BY queue, state, hashtext(id) & 15;

CREATE FUNCTION switchyard_job_counts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE job_counts SET n = n - 1
            WHERE queue = OLD.queue AND state = OLD.state AND shard = hashtext(OLD.id) & 15;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO job_counts (queue, state, shard, n)
            VALUES (NEW.queue, NEW.state, hashtext(NEW.id) & 15, 1)
            ON CONFLICT (queue, state, shard) DO UPDATE SET n = job_counts.n + 1;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER job_counts_in AFTER INSERT ON jobs FOR EACH ROW
    EXECUTE FUNCTION switchyard_job_counts();

CREATE TRIGGER job_counts_moved AFTER UPDATE OF state ON jobs FOR EACH ROW
    WHEN (OLD.state <> NEW.state)
    EXECUTE FUNCTION switchyard_job_counts();

CREATE TRIGGER job_counts_out AFTER DELETE ON jobs FOR EACH ROW
    EXECUTE FUNCTION switchyard_job_counts();
