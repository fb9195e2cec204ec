-- Seeds the pgbench database (after the host's migrations): 64 realms with
-- 8 cards of ~1 KB each and their index rows.
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
ANALYZE;
