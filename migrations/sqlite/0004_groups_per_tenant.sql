-- Group ids are each tenant's own: two tenants may both name a group `nightly`, and one
-- cannot learn of another's group by trying its name. A group is keyed by its tenant's id
-- ('' for jobs with no tenant) and its name; its jobs carry the same tenant.
CREATE TABLE groups_v2 (
    tenant_key        TEXT    NOT NULL,
    id                TEXT    NOT NULL,
    size              INTEGER NOT NULL,
    cancel_on_failure INTEGER NOT NULL,
    created_at_ms     INTEGER NOT NULL,
    tenant_id         TEXT,
    -- errgroup: the first job that ended badly, and its error.
    failed_job_id     TEXT,
    error             TEXT,
    PRIMARY KEY (tenant_key, id)
) WITHOUT ROWID;

INSERT INTO groups_v2 (tenant_key, id, size, cancel_on_failure, created_at_ms, tenant_id,
        failed_job_id, error)
    SELECT coalesce(tenant_id, ''), id, size, cancel_on_failure, created_at_ms, tenant_id,
        failed_job_id, error
    FROM groups;

DROP TABLE groups;
ALTER TABLE groups_v2 RENAME TO groups;
-- Looking a group up by name alone (an admin's view of every tenant).
CREATE INDEX groups_id ON groups (id);
