-- Issue 15 (bulk actions over 100k jobs showed it): the `dependencies` table is keyed by
-- (depends_on, job_id), so every "what does this job depend on" (`d.job_id = ?`: requeue's
-- checks, readiness of a dependent, recovery) scanned the whole table. This index answers
-- them directly.
CREATE INDEX dependencies_job ON dependencies (job_id, depends_on);
