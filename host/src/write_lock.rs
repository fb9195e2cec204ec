//! The per-realm write lock and the transaction it guards.
//!
//! Taking a realm's lock: first wait in an in-process queue for that realm
//! (so waiters never hold pooled connections), then open a transaction that
//! holds the database-level lock: `BEGIN IMMEDIATE` on SQLite,
//! `pg_advisory_xact_lock(key)` as its own statement on Postgres. Every read
//! and write of the critical section runs on that transaction; `commit`
//! makes them durable at once, and anything else rolls them back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::{Postgres, Row, Sqlite, Transaction};
use tokio::sync::OwnedMutexGuard;

use crate::db::{self, Database, DbError, FileRow};
use crate::memory::{MemoryStore, Staged};
use crate::lock_key::advisory_lock_key;

/// Size limits on what may be stored.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub card_bytes: usize,
    pub file_bytes: usize,
}

/// Why a write-path operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the write lock of {0} could not be had in time; retry")]
    LockTimeout(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage error: {0}")]
    Storage(String),
}

impl From<sqlx::Error> for WriteError {
    fn from(e: sqlx::Error) -> Self {
        if is_lock_timeout(&e) {
            return WriteError::LockTimeout(e.to_string());
        }
        let db_error = DbError::Sqlx(e);
        if db_error.is_unavailable() {
            WriteError::Unavailable(db_error.to_string())
        } else {
            WriteError::Storage(db_error.to_string())
        }
    }
}

/// Postgres `lock_not_available` (lock_timeout expired).
fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03"))
}

/// The in-process side of the write locks: one FIFO queue per realm.
pub struct Locks {
    queues: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    timeout: Duration,
    limits: Limits,
}

impl Locks {
    pub fn new(timeout: Duration, limits: Limits) -> Locks {
        Locks { queues: Mutex::new(HashMap::new()), timeout, limits }
    }

    fn queue(&self, realm: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut queues = match self.queues.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        queues.entry(realm.to_string()).or_default().clone()
    }

    /// Waits for the realm's write lock, on this process and in the database.
    pub async fn acquire(&self, db: &Database, realm: &str) -> Result<WriteTxn, WriteError> {
        let started = tokio::time::Instant::now();
        let queue_turn = tokio::time::timeout(self.timeout, self.queue(realm).lock_owned())
            .await
            .map_err(|_| WriteError::LockTimeout(realm.to_string()))?;
        let remaining = self.timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
        let tx = match db {
            Database::Memory(store) => Tx::Memory(store.clone(), Staged::default()),
            Database::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Database::Postgres(pool) => {
                let mut tx = tokio::time::timeout(remaining, pool.begin())
                    .await
                    .map_err(|_| WriteError::Unavailable("no database connection became free in time".into()))??;
                let ms = remaining.as_millis().max(1);
                sqlx::query(&format!("SET LOCAL lock_timeout = '{ms}ms'")).execute(&mut *tx).await?;
                sqlx::query(&format!("SET LOCAL statement_timeout = '{}ms'", ms + 30_000))
                    .execute(&mut *tx)
                    .await?;
                // Its own statement: under READ COMMITTED every later
                // statement then sees what the previous holder committed.
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(advisory_lock_key(realm))
                    .execute(&mut *tx)
                    .await?;
                Tx::Postgres(tx)
            }
        };
        Ok(WriteTxn { realm: realm.to_string(), tx, limits: self.limits, _queue_turn: queue_turn })
    }
}

enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
    /// The in-memory store and the writes staged until commit.
    Memory(Arc<MemoryStore>, Staged),
}

/// Runs a statement on the open SQL transaction; `$memory` is the same
/// operation on the in-memory store.
macro_rules! on_tx {
    ($tx:expr, $conn:ident => $body:expr, ($store:ident, $staged:ident) => $memory:expr) => {
        match $tx {
            Tx::Sqlite(t) => {
                let $conn = &mut **t;
                $body
            }
            Tx::Postgres(t) => {
                let $conn = &mut **t;
                $body
            }
            Tx::Memory($store, $staged) => $memory,
        }
    };
}

/// A held realm write lock with its open transaction. Dropping it rolls
/// back; prefer [`WriteTxn::rollback`], which waits for the rollback.
pub struct WriteTxn {
    realm: String,
    tx: Tx,
    limits: Limits,
    _queue_turn: OwnedMutexGuard<()>,
}

/// The card index row to store with a card file.
pub struct IndexRow {
    pub card_id: String,
    pub card_type: String,
    pub search_doc: String,
}

/// What a write reports back.
pub struct Written {
    pub content_hash: String,
    pub created: i64,
    pub last_modified: i64,
    pub existed: bool,
}

impl WriteTxn {
    pub async fn read(&mut self, path: &str) -> Result<Option<FileRow>, WriteError> {
        let sql = "SELECT content, content_hash, created_at, last_modified FROM files WHERE realm_url = $1 AND path = $2";
        let realm = &self.realm;
        let row = on_tx!(&mut self.tx, conn => sqlx::query(sql).bind(realm).bind(path).fetch_optional(conn).await?
            .map(|r| db::file_row(&r)).transpose()?,
            (store, staged) => staged.read(store, realm, path));
        Ok(row)
    }

    pub async fn exists(&mut self, path: &str) -> Result<bool, WriteError> {
        let sql = "SELECT 1 FROM files WHERE realm_url = $1 AND path = $2";
        let realm = &self.realm;
        let found = on_tx!(&mut self.tx, conn => sqlx::query(sql).bind(realm).bind(path).fetch_optional(conn).await?.is_some(),
            (store, staged) => staged.read(store, realm, path).is_some());
        Ok(found)
    }

    /// Stores a file (and its index row, or removes a stale one). Identical
    /// content is not rewritten.
    pub async fn write(&mut self, path: &str, content: &str, index: Option<IndexRow>) -> Result<Written, WriteError> {
        let (what, limit) = match index {
            Some(_) => ("Card", self.limits.card_bytes),
            None => ("File", self.limits.file_bytes),
        };
        if content.len() > limit {
            return Err(WriteError::TooLarge(format!(
                "{what} size ({} bytes) exceeds maximum allowed size ({limit} bytes)",
                content.len()
            )));
        }
        let content_hash = hex::encode(Sha256::digest(content.as_bytes()));
        let now = db::now_unix();
        let realm = &self.realm;
        let existing_sql = "SELECT content_hash, created_at, last_modified FROM files WHERE realm_url = $1 AND path = $2";
        let existing: Option<(String, i64, i64)> = on_tx!(&mut self.tx, conn => sqlx::query(existing_sql)
            .bind(realm).bind(path).fetch_optional(conn).await?
            .map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).transpose()?,
            (store, staged) => staged.read(store, realm, path).map(|f| (f.content_hash, f.created, f.last_modified)));
        if let Some((hash, created, last_modified)) = &existing {
            if *hash == content_hash {
                return Ok(Written { content_hash, created: *created, last_modified: *last_modified, existed: true });
            }
        }
        let upsert = "INSERT INTO files (realm_url, path, content, content_hash, created_at, last_modified)
                      VALUES ($1, $2, $3, $4, $5, $5)
                      ON CONFLICT (realm_url, path) DO UPDATE
                      SET content = excluded.content, content_hash = excluded.content_hash,
                          last_modified = excluded.last_modified";
        let created = existing.as_ref().map(|(_, created, _)| *created).unwrap_or(now);
        on_tx!(&mut self.tx, conn => { sqlx::query(upsert)
            .bind(realm).bind(path).bind(content).bind(&content_hash).bind(now)
            .execute(conn).await?; },
            (_store, staged) => staged.put(path, FileRow {
                content: content.to_string(), content_hash: content_hash.clone(), created, last_modified: now,
            }));
        match index {
            Some(row) => {
                let sql = "INSERT INTO card_index (realm_url, path, card_id, card_type, search_doc, updated_at)
                           VALUES ($1, $2, $3, $4, $5, $6)
                           ON CONFLICT (realm_url, path) DO UPDATE
                           SET card_id = excluded.card_id, card_type = excluded.card_type,
                               search_doc = excluded.search_doc, updated_at = excluded.updated_at";
                on_tx!(&mut self.tx, conn => { sqlx::query(sql)
                    .bind(realm).bind(path).bind(&row.card_id).bind(&row.card_type).bind(&row.search_doc).bind(now)
                    .execute(conn).await?; },
                    (_store, _staged) => ());
            }
            None => self.delete_index_row(path).await?,
        }
        let existed = existing.is_some();
        Ok(Written { content_hash, created, last_modified: now, existed })
    }

    async fn delete_index_row(&mut self, path: &str) -> Result<(), WriteError> {
        let sql = "DELETE FROM card_index WHERE realm_url = $1 AND path = $2";
        let realm = &self.realm;
        on_tx!(&mut self.tx, conn => { sqlx::query(sql).bind(realm).bind(path).execute(conn).await?; },
            (_store, _staged) => ());
        Ok(())
    }

    /// Removes a file and its index row; false when there was no such file.
    pub async fn delete(&mut self, path: &str) -> Result<bool, WriteError> {
        let sql = "DELETE FROM files WHERE realm_url = $1 AND path = $2";
        let realm = &self.realm;
        let removed = on_tx!(&mut self.tx, conn => sqlx::query(sql).bind(realm).bind(path).execute(conn).await?.rows_affected(),
            (store, staged) => {
                let existed = staged.read(store, realm, path).is_some();
                staged.remove(path);
                u64::from(existed)
            });
        self.delete_index_row(path).await?;
        Ok(removed > 0)
    }

    /// Makes every write durable at once and releases the lock.
    pub async fn commit(self) -> Result<(), WriteError> {
        match self.tx {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
            Tx::Memory(store, staged) => staged.apply(&store, &self.realm),
        }
        Ok(())
    }

    /// Undoes every write and releases the lock, waiting until the database
    /// has done so (so the next holder never waits on a lazy rollback).
    pub async fn rollback(self) -> Result<(), WriteError> {
        match self.tx {
            Tx::Sqlite(t) => t.rollback().await?,
            Tx::Postgres(t) => t.rollback().await?,
            Tx::Memory(..) => {}
        }
        Ok(())
    }
}
