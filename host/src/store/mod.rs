//! Storage: one schema (sqlx migrations) on two backends, SQLite (the
//! embedded default) and Postgres (for several replicas). This module holds
//! the connection, the realm/permission admin queries and lock-free reads;
//! `lock` holds the transactional write path.

// Lowest first; each file uses only the ones above it.
// The rows everyone uses: `FileRow`, `Permissions`, ETags, the clock.
mod rows;
// The in-memory backend: files only, writes staged until commit.
mod memory;
// Paths and times of a realm's files, without contents.
mod listing;
// The advisory-lock key of a realm.
mod lock_key;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

pub use listing::FileEntry;
pub use lock_key::advisory_lock_key;
pub use memory::MemoryStore;
pub(crate) use memory::Staged;
pub use rows::{etag_of, now_unix, FileRow, Permissions, StoredContent};

/// Runs the same statement on whichever backend `$db` is; the SQL uses
/// `$N` placeholders, which both backends accept.
/// The in-memory store has no SQL; admin queries refuse it.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::store::Database::Sqlite($pool) => $body,
            $crate::store::Database::Postgres($pool) => $body,
            $crate::store::Database::Memory(_) => return Err($crate::store::DbError::NotInMemory),
        }
    };
}
pub(crate) use on_pool;

/// Postgres channel announcing that a realm or its permissions changed.
pub const REALM_CHANNEL: &str = "realm_changed";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL '{0}': use sqlite://FILE or postgres://…")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("realm {0} does not exist; create it with `realm-host realm create {0}`")]
    NoSuchRealm(String),
    #[error("the in-memory store only holds files")]
    NotInMemory,
}

impl DbError {
    /// True when the database could not be reached (as opposed to a query
    /// that failed): the request should be retried later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Sqlx(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_)) => true,
            // Postgres going away: connection exceptions (class 08), admin or
            // crash shutdown and "cannot connect now" (57P01–57P03).
            DbError::Sqlx(sqlx::Error::Database(e)) => {
                e.code().is_some_and(|code| code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03"))
            }
            _ => false,
        }
    }
}

#[derive(Clone)]
pub enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    /// Files only, no persistence: for running a guest in isolation.
    Memory(std::sync::Arc<MemoryStore>),
}

/// A pooled Postgres connection idle this long is checked with a ping
/// before it is handed out (one in steady use is not).
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

impl Database {
    /// Connects (creating a missing SQLite file) and runs the migrations.
    pub async fn connect(url: &str) -> Result<Database, DbError> {
        let db = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true);
            Database::Sqlite(SqlitePoolOptions::new().max_connections(8).connect_with(options).await?)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Database::Postgres(
                PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(3))
                    // A connection in steady use is not pinged each time it
                    // is handed out (a round trip per acquire, on every
                    // request and every commit); one idle for a while is,
                    // as the database may have restarted meanwhile.
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for >= PING_IDLE_AFTER {
                                sqlx::Connection::ping(conn).await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect(url)
                    .await?,
            )
        } else {
            return Err(DbError::UnsupportedUrl(url.to_string()));
        };
        on_pool!(&db, pool => MIGRATOR.run(pool).await?);
        Ok(db)
    }

    /// Creates the realm if it is new and sets what anyone (`*`) may do.
    pub async fn create_realm(&self, realm: &str, public: Permissions) -> Result<(), DbError> {
        let sql = "INSERT INTO realms (url, created_at) VALUES ($1, $2) ON CONFLICT (url) DO NOTHING";
        on_pool!(self, pool => { sqlx::query(sql).bind(realm).bind(now_unix()).execute(pool).await?; });
        self.set_permissions(realm, "*", public).await
    }

    /// Tells every replica to drop what it cached about `realm`.
    async fn announce_change(&self, realm: &str) -> Result<(), DbError> {
        if let Database::Postgres(pool) = self {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(REALM_CHANNEL)
                .bind(realm)
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Adds permissions for a user in an existing realm.
    pub async fn grant(&self, realm: &str, user: &str, granted: Permissions) -> Result<(), DbError> {
        if !self.realms().await?.iter().any(|r| r == realm) {
            return Err(DbError::NoSuchRealm(realm.to_string()));
        }
        let current = self.user_permissions(realm, user).await?;
        self.set_permissions(realm, user, current.union(granted)).await
    }

    async fn set_permissions(&self, realm: &str, user: &str, p: Permissions) -> Result<(), DbError> {
        self.update_permissions(realm, &[(user.to_string(), Some(p))]).await
    }

    /// Every user granted anything in the realm, with what they may do,
    /// sorted by user name (`*` is anyone). Rows granting nothing are left out.
    pub async fn realm_permissions(&self, realm: &str) -> Result<Vec<(String, Permissions)>, DbError> {
        let sql = "SELECT username, can_read, can_write, realm_owner FROM realm_permissions WHERE realm_url = $1";
        let mut rows = on_pool!(self, pool => {
            let rows = sqlx::query(sql).bind(realm).fetch_all(pool).await?;
            rows.iter()
                .map(|r| Ok::<_, sqlx::Error>((r.try_get::<String, _>(0)?, Permissions {
                    read: r.try_get(1)?, write: r.try_get(2)?, realm_owner: r.try_get(3)?,
                })))
                .collect::<Result<Vec<_>, _>>()?
        });
        rows.retain(|(_, p)| *p != Permissions::default());
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(rows)
    }

    /// Sets each listed user's permissions (`None`: removes the user) in
    /// one transaction under the realm's write lock, then tells every replica.
    pub async fn update_permissions(&self, realm: &str, changes: &[(String, Option<Permissions>)]) -> Result<(), DbError> {
        let upsert = "INSERT INTO realm_permissions (realm_url, username, can_read, can_write, realm_owner)
                      VALUES ($1, $2, $3, $4, $5)
                      ON CONFLICT (realm_url, username) DO UPDATE
                      SET can_read = excluded.can_read, can_write = excluded.can_write, realm_owner = excluded.realm_owner";
        let remove = "DELETE FROM realm_permissions WHERE realm_url = $1 AND username = $2";
        let postgres = matches!(self, Database::Postgres(_));
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if postgres {
                // The realm's write lock: a change never lands in the middle
                // of a write batch, which reads the permissions once, under
                // this lock (SQLite's one writer serialises them anyway).
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(advisory_lock_key(realm)).execute(&mut *tx).await?;
            }
            for (user, change) in changes {
                match change {
                    Some(p) => sqlx::query(upsert).bind(realm).bind(user).bind(p.read).bind(p.write).bind(p.realm_owner).execute(&mut *tx).await?,
                    None => sqlx::query(remove).bind(realm).bind(user).execute(&mut *tx).await?,
                };
            }
            tx.commit().await?;
        });
        self.announce_change(realm).await
    }

    /// A cheap query: whether the database answers at all.
    pub async fn ping(&self) -> Result<(), DbError> {
        if let Database::Memory(_) = self {
            return Ok(());
        }
        on_pool!(self, pool => { sqlx::query("SELECT 1").execute(pool).await?; });
        Ok(())
    }

    /// Every realm URL, canonical.
    pub async fn realms(&self) -> Result<Vec<String>, DbError> {
        let sql = "SELECT url FROM realms ORDER BY url";
        let urls = on_pool!(self, pool => sqlx::query_scalar::<_, String>(sql).fetch_all(pool).await?);
        Ok(urls)
    }

    /// The permissions granted to exactly this user name (`*` is anyone).
    pub async fn user_permissions(&self, realm: &str, user: &str) -> Result<Permissions, DbError> {
        let sql = "SELECT can_read, can_write, realm_owner FROM realm_permissions WHERE realm_url = $1 AND username = $2";
        let row = on_pool!(self, pool => sqlx::query(sql).bind(realm).bind(user).fetch_optional(pool).await?
            .map(|r| Ok::<_, sqlx::Error>(Permissions {
                read: r.try_get(0)?, write: r.try_get(1)?, realm_owner: r.try_get(2)?,
            })).transpose()?);
        Ok(row.unwrap_or_default())
    }

    /// Lock-free read of the last committed version of a file.
    pub async fn read_file(&self, realm: &str, path: &str) -> Result<Option<FileRow>, DbError> {
        if let Database::Memory(store) = self {
            return Ok(store.read(realm, path));
        }
        let sql = "SELECT content, content_hash, created_at, last_modified, content_encoding FROM files WHERE realm_url = $1 AND path = $2";
        let row = on_pool!(self, pool => sqlx::query(sql).bind(realm).bind(path).fetch_optional(pool).await?
            .map(|r| file_row(&r)).transpose()?);
        Ok(row)
    }
}

impl Database {
    /// Lock-free read of several files of a realm in one query (missing
    /// ones are absent from the map).
    pub async fn read_files(&self, realm: &str, paths: &[String]) -> Result<std::collections::HashMap<String, FileRow>, DbError> {
        let mut files = std::collections::HashMap::new();
        if paths.is_empty() {
            return Ok(files);
        }
        if let Database::Memory(store) = self {
            files.extend(paths.iter().filter_map(|p| store.read(realm, p).map(|f| (p.clone(), f))));
            return Ok(files);
        }
        let placeholders: Vec<String> = (0..paths.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT content, content_hash, created_at, last_modified, content_encoding, path FROM files WHERE realm_url = $1 AND path IN ({})",
            placeholders.join(", ")
        );
        on_pool!(self, pool => {
            let mut query = sqlx::query(&sql).bind(realm);
            for path in paths {
                query = query.bind(path.as_str());
            }
            for row in query.fetch_all(pool).await? {
                files.insert(row.try_get::<String, _>(5)?, file_row(&row)?);
            }
        });
        Ok(files)
    }
}

/// Decodes a `SELECT content, content_hash, created_at, last_modified, content_encoding` row.
pub(crate) fn file_row<R: Row>(row: &R) -> Result<FileRow, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(FileRow {
        content: row.try_get(0)?,
        content_hash: row.try_get(1)?,
        created: row.try_get(2)?,
        last_modified: row.try_get(3)?,
        binary: row.try_get::<String, _>(4)? == "base64",
    })
}
