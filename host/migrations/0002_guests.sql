-- The guest registry: every deployed component, content-addressed, and the
-- log of activations (the newest row is the active guest).

CREATE TABLE guests (
    hash TEXT PRIMARY KEY,
    -- hex of the component bytes: portable between SQLite and Postgres
    bytes_hex TEXT NOT NULL,
    size BIGINT NOT NULL,
    deployed_at BIGINT NOT NULL,
    deployed_by TEXT NOT NULL
);

CREATE TABLE guest_activations (
    seq BIGINT PRIMARY KEY,
    hash TEXT NOT NULL REFERENCES guests (hash),
    activated_at BIGINT NOT NULL,
    activated_by TEXT NOT NULL
);
