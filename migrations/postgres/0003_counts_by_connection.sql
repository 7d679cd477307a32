-- Queued counts written by connection, not by job (like `job_counts`, migration 0002): a
-- transaction changes only its own connection's shard of each scope, adding -1 or +1 (a row
-- may go below zero; admission and `Stats` read the sum). With the shard chosen by each job's
-- id, concurrent batches took a scope's 16 rows in different orders and deadlocked, and every
-- deadlock cost `deadlock_timeout` (1 s) before one of them was retried.
CREATE OR REPLACE FUNCTION switchyard_queued_add(scopes TEXT[], delta BIGINT) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    mine SMALLINT := pg_backend_pid() & 15;
    s TEXT;
BEGIN
    FOREACH s IN ARRAY scopes LOOP
        IF s IS NOT NULL THEN
            INSERT INTO queued_counts (scope, shard, queued) VALUES (s, mine, delta)
                ON CONFLICT (scope, shard) DO UPDATE SET queued = queued_counts.queued + delta;
        END IF;
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION switchyard_queued_in() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM switchyard_queued_add(ARRAY['queue:' || NEW.queue, 'tenant:' || NEW.tenant_id,
                                        'key:' || NEW.concurrency_key], 1);
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION switchyard_queued_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM switchyard_queued_add(ARRAY['queue:' || NEW.queue, 'tenant:' || NEW.tenant_id,
                                        'key:' || NEW.concurrency_key], -1);
    RETURN NULL;
END;
$$;
