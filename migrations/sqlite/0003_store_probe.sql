-- One row the coordinator rewrites to learn whether the store can commit again after a
-- full disk or a held lock (health turns SERVING again on its own once it can).
CREATE TABLE store_probe (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    at_ms INTEGER NOT NULL
);
