-- Issue 13, long jobs (helper B's part).
--
-- A queue's default attempt timeout, in milliseconds: how long an attempt of a job in that
-- queue may run when the job sets no `timeout` of its own. Only `queue:` scopes carry one.
ALTER TABLE quotas ADD COLUMN attempt_timeout_ms INTEGER;

-- The attempt of its parent that submitted a child job (NULL: not said, or no parent). A
-- parent's attempt that ends other than in success cancels its children; a child submitted
-- by an attempt that already ended is refused.
ALTER TABLE jobs ADD COLUMN parent_attempt INTEGER;
