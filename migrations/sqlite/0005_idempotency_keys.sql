-- Idempotency keys in a table of their own, so that a key can bind for a while (unique_for)
-- or while its job is queued or running (unique_while_active), and then pass to a new job; the
-- job keeps its key for all to see. A key binds within its queue and tenant ('' for none).
CREATE TABLE idempotency_keys (
    queue         TEXT    NOT NULL,
    tenant_key    TEXT    NOT NULL,
    key           TEXT    NOT NULL,
    job_id        TEXT    NOT NULL,
    -- unique_for: the key is free again from this time on (NULL: never).
    expires_at_ms INTEGER,
    -- unique_while_active: the key is free again once its job has ended.
    while_active  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, tenant_key, key)
) WITHOUT ROWID;

INSERT INTO idempotency_keys (queue, tenant_key, key, job_id)
    SELECT queue, coalesce(tenant_id, ''), idempotency_key, id FROM jobs
    WHERE idempotency_key IS NOT NULL;

DROP INDEX jobs_idempotency;
