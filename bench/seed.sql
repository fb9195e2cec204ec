-- Seeds the pgbench database (after the host's migrations): 64 realms with
-- 8 cards of ~1 KB each, their index rows and ~40 search rows each (about
-- what the bench's 1 KB Person card has).
INSERT INTO realms (url, created_at)
  SELECT 'http://127.0.0.1:1/r' || r || '/', 1700000000 FROM generate_series(1, 64) AS r;
INSERT INTO files (realm_url, path, content, content_hash, created_at, last_modified)
  SELECT 'http://127.0.0.1:1/r' || r || '/', 'Person/' || c || '.json',
         rpad('{"data":{"type":"card","attributes":{"counter":0', 1100, ' lorem ipsum dolor sit amet'),
         md5(r || '/' || c), 1700000000, 1700000000
  FROM generate_series(1, 64) AS r, generate_series(1, 8) AS c;
INSERT INTO card_index (realm_url, path, card_id, card_type, search_doc, updated_at)
  SELECT 'http://127.0.0.1:1/r' || r || '/', 'Person/' || c || '.json',
         'http://127.0.0.1:1/r' || r || '/Person/' || c, 'http://127.0.0.1:1/r' || r || '/person/Person',
         '{"firstName":"Mango","counter":0}', 1700000000
  FROM generate_series(1, 64) AS r, generate_series(1, 8) AS c;
UPDATE card_index SET search_version = 1;
INSERT INTO card_fields (realm_url, path, field, position, kind, text_key, text_value, folded, number_value)
  SELECT 'http://127.0.0.1:1/r' || r || '/', 'Person/' || c || '.json', 'entries.text', f, 1,
         'lorem ipsum dolor sit amet ' || f, 'lorem ipsum dolor sit amet ' || f, 'lorem ipsum dolor sit amet ' || f, NULL
  FROM generate_series(1, 64) AS r, generate_series(1, 8) AS c, generate_series(0, 37) AS f;
INSERT INTO card_fields (realm_url, path, field, position, kind, text_key, text_value, folded, number_value)
  SELECT 'http://127.0.0.1:1/r' || r || '/', 'Person/' || c || '.json', k, 0, CASE k WHEN 'counter' THEN 0 ELSE 1 END, '0', '0',
         CASE k WHEN 'counter' THEN NULL ELSE '0' END, CASE k WHEN 'counter' THEN 0 ELSE NULL END
  FROM generate_series(1, 64) AS r, generate_series(1, 8) AS c, unnest(ARRAY['counter', 'note']) AS k;
-- The trigram index realm-host creates at start (search/index.rs).
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX IF NOT EXISTS card_fields_folded_trgm ON card_fields USING gin (folded gin_trgm_ops);
ANALYZE;
