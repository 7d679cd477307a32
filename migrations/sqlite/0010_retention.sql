-- Retention (issue 15): the pruner removes finished jobs once their state's retention has
-- passed, and idempotency keys once their window has. These indexes let each of its small
-- batches find what is due without scanning what is not.

-- Finished jobs by state and end time: `state = ? AND finished_at_ms < ?` reads only what is
-- due. Queued and running jobs have no end time and are not in it.
CREATE INDEX jobs_finished ON jobs (state, finished_at_ms) WHERE finished_at_ms IS NOT NULL;

-- Whether a group still has an unfinished job (its finished jobs are kept until it has none),
-- found by one seek instead of a walk over the group.
CREATE INDEX jobs_group_state ON jobs (group_id, state) WHERE group_id IS NOT NULL;

-- Keys whose window has passed, oldest first.
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at_ms)
    WHERE expires_at_ms IS NOT NULL;
