-- Which coordinator leads the fleet on this database (one row). The leader runs the scheduler
-- and every write; the others forward their calls to `address`. A lease runs out at
-- `expires_at` (the database's clock) unless its holder renews it; `epoch` grows by one each
-- time another coordinator takes it over. See docs/architecture.md, "Several coordinators".
CREATE TABLE leadership (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    address TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
