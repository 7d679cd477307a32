-- Epochs: each run of a leader takes the next one (durably, in its recovery), and the attempts
-- it starts carry it in their fencing token (workers.proto, point 3). An attempt number that a
-- start lost to a crash lets the next run hand out again never matches the token of the first.
CREATE TABLE epochs (
    epoch BIGINT NOT NULL
);
INSERT INTO epochs (epoch) VALUES (0);

-- The epoch of the run that started the job's current attempt (0: before epochs).
ALTER TABLE jobs ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
