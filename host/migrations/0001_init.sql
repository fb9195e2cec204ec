-- Realms, who may use them, their files, and the card index.
-- Portable SQL: the same migration runs on SQLite and Postgres.

CREATE TABLE realms (
    url TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);

CREATE TABLE realm_permissions (
    realm_url TEXT NOT NULL REFERENCES realms (url) ON DELETE CASCADE,
    username TEXT NOT NULL,
    can_read BOOLEAN NOT NULL DEFAULT FALSE,
    can_write BOOLEAN NOT NULL DEFAULT FALSE,
    realm_owner BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (realm_url, username)
);

CREATE TABLE files (
    realm_url TEXT NOT NULL REFERENCES realms (url) ON DELETE CASCADE,
    path TEXT NOT NULL,
    content TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_modified BIGINT NOT NULL,
    PRIMARY KEY (realm_url, path)
);

CREATE TABLE card_index (
    realm_url TEXT NOT NULL REFERENCES realms (url) ON DELETE CASCADE,
    path TEXT NOT NULL,
    card_id TEXT NOT NULL,
    card_type TEXT NOT NULL,
    search_doc TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (realm_url, path)
);

CREATE INDEX card_index_by_type ON card_index (realm_url, card_type);
