-- The realm-event outbox: one row per committed write request, appended in
-- that request's transaction. `seq` counts each realm's events from 1, one
-- by one with no gaps (the realm's write lock orders the appends).
CREATE TABLE realm_events (
    realm_url TEXT NOT NULL REFERENCES realms (url) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (realm_url, seq)
);
