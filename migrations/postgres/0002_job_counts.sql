-- Jobs per queue and state, kept by the transaction that changes them (issue 12), as SQLite's
-- migration 0011 keeps them: `Stats` sums a few rows per queue and state instead of counting
-- every job stored. Each (queue, state) is spread over 16 rows, and a transaction writes only
-- the rows of its own connection's shard (a row may go below zero; the sum is the count). A
-- transaction holds a row it changed until it commits: one row per queue and state would make
-- every write to a queue wait for the one before it, and rows chosen per job would be taken
-- in a different order by each transaction, and deadlock.
CREATE TABLE job_counts (
    queue TEXT     NOT NULL,
    state BIGINT   NOT NULL,
    shard SMALLINT NOT NULL,
    n     BIGINT   NOT NULL,
    PRIMARY KEY (queue, state, shard)
);

INSERT INTO job_counts (queue, state, shard, n)
    SELECT queue, state, 0, count(*) FROM jobs GROUP BY queue, state;

CREATE FUNCTION switchyard_job_counts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    mine SMALLINT := pg_backend_pid() & 15;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO job_counts (queue, state, shard, n) VALUES (OLD.queue, OLD.state, mine, -1)
            ON CONFLICT (queue, state, shard) DO UPDATE SET n = job_counts.n - 1;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO job_counts (queue, state, shard, n) VALUES (NEW.queue, NEW.state, mine, 1)
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
