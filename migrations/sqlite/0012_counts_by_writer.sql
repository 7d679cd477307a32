-- The counts of jobs per queue and state, and of queued jobs per scope, are written by the
-- writer once per batch (`store/sqlite/counts.rs`), not row by row by six triggers here: one
-- trigger per way a job's state moves tells the writer, through a function only its
-- connection has (issue 12).
DROP TRIGGER queued_in;
DROP TRIGGER queued_out;
DROP TRIGGER queued_again;
DROP TRIGGER job_counts_in;
DROP TRIGGER job_counts_moved;
DROP TRIGGER job_counts_out;

CREATE TRIGGER job_moved_in AFTER INSERT ON jobs
BEGIN
    SELECT sy_job_moved(NEW.queue, NULL, NEW.state, NEW.tenant_id, NEW.concurrency_key);
END;

-- A job keeps its queue, tenant and key for life: only its state moves.
CREATE TRIGGER job_moved AFTER UPDATE OF state ON jobs WHEN OLD.state != NEW.state
BEGIN
    SELECT sy_job_moved(NEW.queue, OLD.state, NEW.state, NEW.tenant_id, NEW.concurrency_key);
END;

CREATE TRIGGER job_moved_out AFTER DELETE ON jobs
BEGIN
    SELECT sy_job_moved(OLD.queue, OLD.state, NULL, OLD.tenant_id, OLD.concurrency_key);
END;
