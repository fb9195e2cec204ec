//! What a realm holds, without the contents: each file's path and times,
//! for `/_mtimes` and directory listings.

use sqlx::Row;

use super::{on_pool, Database, DbError};

/// A stored file's path and times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds.
    pub last_modified: i64,
}

impl Database {
    /// Which of `paths` hold a file in the realm (one query).
    pub async fn existing_paths(&self, realm: &str, paths: &[String]) -> Result<Vec<String>, DbError> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        if let Database::Memory(store) = self {
            return Ok(paths.iter().filter(|p| store.read(realm, p).is_some()).cloned().collect());
        }
        let placeholders: Vec<String> = (2..paths.len() + 2).map(|i| format!("${i}")).collect();
        let sql = format!("SELECT path FROM files WHERE realm_url = $1 AND path IN ({})", placeholders.join(", "));
        let found = on_pool!(self, pool => {
            let mut query = sqlx::query_scalar::<_, String>(&sql).bind(realm);
            for path in paths {
                query = query.bind(path);
            }
            query.fetch_all(pool).await?
        });
        Ok(found)
    }

    /// Every file of the realm whose path starts with `prefix` (`""` for
    /// all), sorted by path (byte order, the same on both backends).
    pub async fn list_files(&self, realm: &str, prefix: &str) -> Result<Vec<FileEntry>, DbError> {
        // `substr`, not `LIKE`: no wildcard escaping, and SQLite's LIKE
        // ignores ASCII case.
        let sql = "SELECT path, created_at, last_modified FROM files
                   WHERE realm_url = $1 AND substr(path, 1, length($2)) = $2";
        let mut entries = on_pool!(self, pool => {
            let rows = sqlx::query(sql).bind(realm).bind(prefix).fetch_all(pool).await?;
            rows.iter()
                .map(|r| Ok::<_, sqlx::Error>(FileEntry { path: r.try_get(0)?, created: r.try_get(1)?, last_modified: r.try_get(2)? }))
                .collect::<Result<Vec<_>, _>>()?
        });
        // Byte order: SQL `ORDER BY` would follow the database's collation.
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        // `length` counts characters on both backends, so the prefix test
        // is exact; this guards against a backend that counts bytes.
        entries.retain(|e| e.path.starts_with(prefix));
        Ok(entries)
    }
}
