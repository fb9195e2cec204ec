-- Files of any type: `content` holds the text itself ('utf-8') or, for
-- bytes that are not UTF-8 text (or hold NUL), their base64 ('base64').
-- `content_hash` is always the SHA-256 of the bytes.
ALTER TABLE files ADD COLUMN content_encoding TEXT NOT NULL DEFAULT 'utf-8';
