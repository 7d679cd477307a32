-- Epochs: each start of a coordinator takes the next one (durably, in its recovery), and the
-- attempts it starts carry it in their fencing token (workers.proto, point 3). An attempt
-- number that a lost start (a power cut before any fsync covered it) lets the next run hand
-- out again never matches the token of the first.
CREATE TABLE epochs (
    epoch INTEGER NOT NULL
);
INSERT INTO epochs (epoch) VALUES (0);

-- The epoch of the run that started the job's current attempt (0: before epochs).
ALTER TABLE jobs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
