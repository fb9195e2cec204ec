-- The search index: one row per searchable value of a card (see
-- host/src/search/fields.rs), written in the same transaction as the card.
-- kind: 0 number, 1 string, 2 boolean, 3 link (text_value = the card URL).
CREATE TABLE card_fields (
    realm_url TEXT NOT NULL,
    path TEXT NOT NULL,
    field TEXT NOT NULL,
    position BIGINT NOT NULL,
    kind BIGINT NOT NULL,
    -- text_value itself, or for a long value a prefix and its hash
    text_key TEXT NOT NULL,
    text_value TEXT NOT NULL,
    -- lowercased strings, for contains
    folded TEXT,
    number_value DOUBLE PRECISION,
    PRIMARY KEY (realm_url, path, field, position),
    FOREIGN KEY (realm_url, path) REFERENCES card_index (realm_url, path) ON DELETE CASCADE
);

CREATE INDEX card_fields_by_text ON card_fields (realm_url, field, text_key);
CREATE INDEX card_fields_by_number ON card_fields (realm_url, field, number_value);
-- Following a link: the linked card's row by its URL.
CREATE INDEX card_index_by_card_id ON card_index (realm_url, card_id);

-- Which version of the field rows a card has: rows of an older version
-- are rebuilt from the stored card at start-up.
ALTER TABLE card_index ADD COLUMN search_version BIGINT NOT NULL DEFAULT 0;
