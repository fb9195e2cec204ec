//! A held realm write lock: this request's savepoint in the realm's open
//! transaction, and the reads and writes it runs there (each file written
//! with its card-index row). The host checks every path the guest writes
//! or deletes, whatever the guest.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use sqlx::Row;
use tokio::sync::OwnedMutexGuard;

use super::batch::{BatchStats, Coalescing, OpenBatch, RealmQueue, Tx};
use super::error::WriteError;
use super::outbox::{self, Changes};
use crate::search;
use crate::store::{self, FileRow};

/// Size limits on what may be stored.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub card_bytes: usize,
    pub file_bytes: usize,
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

/// The open transaction of a held turn (borrowed apart from the other fields).
fn tx_of(batch: &mut Option<OpenBatch>) -> Result<&mut Tx, WriteError> {
    batch
        .as_mut()
        .map(|batch| &mut batch.tx)
        .ok_or_else(|| WriteError::Storage("the write lock was already released".into()))
}

/// A held realm write lock: this request's savepoint in the realm's open
/// transaction. Dropping it abandons the batch (everything in it rolls
/// back); use [`WriteTxn::commit`] or [`WriteTxn::rollback`].
pub struct WriteTxn {
    pub(super) realm: String,
    /// Always `Some` until the turn ends.
    pub(super) batch: Option<OpenBatch>,
    pub(super) turn: OwnedMutexGuard<Option<OpenBatch>>,
    pub(super) queue: Arc<RealmQueue>,
    pub(super) coalescing: Coalescing,
    pub(super) stats: Arc<BatchStats>,
    pub(super) limits: Limits,
    /// What this turn has read or written of each path's row (hash,
    /// created, last modified), so `write` need not read it again. Valid
    /// for the whole turn: nobody else can change the realm meanwhile.
    pub(super) known: HashMap<String, Option<(String, i64, i64)>>,
    /// What this request changed: its realm event, appended at commit.
    pub(super) changes: Changes,
    /// The request's `X-Boxel-Client-Request-Id`, for its event.
    pub(super) client_request_id: Option<String>,
    /// Where a commit that appended an event is announced in-process
    /// (realm, seq).
    pub(super) committed: tokio::sync::broadcast::Sender<(String, i64)>,
    /// The seq of the event this request appended.
    pub(super) appended: Option<i64>,
    /// How many events each realm keeps, and for how long (seconds).
    pub(super) retain_events: (i64, i64),
}

/// The host's own check of a path the guest writes or deletes, whatever
/// the guest: the same grammar as request paths, outside the `_` namespace.
fn check_path(path: &str) -> Result<(), WriteError> {
    crate::realm::url::check_writable_path(path).map_err(|e| WriteError::Invalid(format!("invalid path '{path}': {e}")))
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
    /// Runs a savepoint statement (SQL backends; the in-memory store does
    /// not coalesce, so it needs none).
    pub(super) async fn savepoint(&mut self, statement: &str) -> Result<(), WriteError> {
        match tx_of(&mut self.batch)? {
            Tx::Sqlite(t) => {
                sqlx::query(statement).execute(&mut **t).await?;
            }
            Tx::Postgres(t) => {
                sqlx::query(statement).execute(&mut **t).await?;
            }
            Tx::Memory(..) => {}
        }
        Ok(())
    }

    pub async fn read(&mut self, path: &str) -> Result<Option<FileRow>, WriteError> {
        let sql = "SELECT content, content_hash, created_at, last_modified, content_encoding FROM files WHERE realm_url = $1 AND path = $2";
        let realm = &self.realm;
        let row = on_tx!(tx_of(&mut self.batch)?, conn => sqlx::query(sql).bind(realm).bind(path).fetch_optional(conn).await?
            .map(|r| store::file_row(&r)).transpose()?,
            (store, staged) => staged.read(store, realm, path));
        let summary = row.as_ref().map(|f| (f.content_hash.clone(), f.created, f.last_modified));
        self.known.insert(path.to_string(), summary);
        Ok(row)
    }

    pub async fn exists(&mut self, path: &str) -> Result<bool, WriteError> {
        let sql = "SELECT 1 FROM files WHERE realm_url = $1 AND path = $2";
        let realm = &self.realm;
        let found = on_tx!(tx_of(&mut self.batch)?, conn => sqlx::query(sql).bind(realm).bind(path).fetch_optional(conn).await?.is_some(),
            (store, staged) => staged.read(store, realm, path).is_some());
        Ok(found)
    }

    /// Stores a text file (and its index row, or removes a stale one).
    /// Identical content is not rewritten.
    pub async fn write(&mut self, path: &str, content: &str, index: Option<IndexRow>) -> Result<Written, WriteError> {
        // Postgres `text` cannot hold U+0000; refusing it in text everywhere
        // keeps both backends answering the same (bytes go by `write_bytes`).
        if content.contains('\0') {
            return Err(WriteError::Invalid(format!("{path}: file content may not contain U+0000 (NUL)")));
        }
        let content_hash = hex::encode(Sha256::digest(content.as_bytes()));
        self.store(path, content, false, content.len(), content_hash, index).await
    }

    /// Stores a file of any bytes, byte-exact (as text when they are UTF-8
    /// without NUL, else as base64); no index row.
    pub async fn write_bytes(&mut self, path: &str, bytes: Vec<u8>) -> Result<Written, WriteError> {
        let content_hash = hex::encode(Sha256::digest(&bytes));
        let size = bytes.len();
        match store::StoredContent::of(bytes) {
            store::StoredContent::Text(text) => self.store(path, &text, false, size, content_hash, None).await,
            store::StoredContent::Base64(encoded) => self.store(path, &encoded, true, size, content_hash, None).await,
        }
    }

    /// Writes `content` (base64 when `binary`) of `size` bytes hashing to
    /// `content_hash`, unless the stored file already has that hash.
    async fn store(&mut self, path: &str, content: &str, binary: bool, size: usize, content_hash: String, index: Option<IndexRow>) -> Result<Written, WriteError> {
        check_path(path)?;
        let (what, limit) = match index {
            Some(_) => ("Card", self.limits.card_bytes),
            None => ("File", self.limits.file_bytes),
        };
        if size > limit {
            return Err(WriteError::TooLarge(format!("{what} size ({size} bytes) exceeds maximum allowed size ({limit} bytes)")));
        }
        let now = store::now_unix();
        let realm = &self.realm;
        let existing_sql = "SELECT content_hash, created_at, last_modified FROM files WHERE realm_url = $1 AND path = $2";
        let existing: Option<(String, i64, i64)> = match self.known.get(path) {
            Some(known) => known.clone(),
            None => on_tx!(tx_of(&mut self.batch)?, conn => sqlx::query(existing_sql)
                .bind(realm).bind(path).fetch_optional(conn).await?
                .map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).transpose()?,
                (store, staged) => staged.read(store, realm, path).map(|f| (f.content_hash, f.created, f.last_modified))),
        };
        if let Some((hash, created, last_modified)) = &existing {
            if *hash == content_hash {
                return Ok(Written { content_hash, created: *created, last_modified: *last_modified, existed: true });
            }
        }
        let upsert = "INSERT INTO files (realm_url, path, content, content_hash, created_at, last_modified, content_encoding)
                      VALUES ($1, $2, $3, $4, $5, $5, $6)
                      ON CONFLICT (realm_url, path) DO UPDATE
                      SET content = excluded.content, content_hash = excluded.content_hash,
                          last_modified = excluded.last_modified, content_encoding = excluded.content_encoding";
        let encoding = if binary { "base64" } else { "utf-8" };
        let created = existing.as_ref().map(|(_, created, _)| *created).unwrap_or(now);
        on_tx!(tx_of(&mut self.batch)?, conn => { sqlx::query(upsert)
            .bind(realm).bind(path).bind(content).bind(&content_hash).bind(now).bind(encoding)
            .execute(conn).await?; },
            (_store, staged) => staged.put(path, FileRow {
                content: content.to_string(), content_hash: content_hash.clone(), created, last_modified: now, binary,
            }));
        self.changes.note(realm, path, index.is_some());
        match index {
            Some(row) => {
                let sql = "INSERT INTO card_index (realm_url, path, card_id, card_type, search_doc, updated_at, search_version)
                           VALUES ($1, $2, $3, $4, $5, $6, $7)
                           ON CONFLICT (realm_url, path) DO UPDATE
                           SET card_id = excluded.card_id, card_type = excluded.card_type,
                               search_doc = excluded.search_doc, updated_at = excluded.updated_at,
                               search_version = excluded.search_version";
                // The card's searchable values, from what is stored.
                let fields = if binary { Vec::new() } else { search::fields::fields_of(content, &row.card_id) };
                let inserts = search::index::insert_statements(&fields);
                on_tx!(tx_of(&mut self.batch)?, conn => {
                    sqlx::query(sql)
                        .bind(realm).bind(path).bind(&row.card_id).bind(&row.card_type).bind(&row.search_doc).bind(now)
                        .bind(search::index::SEARCH_VERSION)
                        .execute(&mut *conn).await?;
                    sqlx::query(search::index::DELETE_FIELDS).bind(realm).bind(path).execute(&mut *conn).await?;
                    for (sql, rows) in &inserts {
                        search::index::bind_field_rows!(sqlx::query(sql).bind(realm).bind(path), rows).execute(&mut *conn).await?;
                    }
                },
                    (_store, _staged) => ());
            }
            None => {
                self.delete_index_row(path).await?;
            }
        }
        let existed = existing.is_some();
        self.known.insert(path.to_string(), Some((content_hash.clone(), created, now)));
        Ok(Written { content_hash, created, last_modified: now, existed })
    }

    /// Removes a path's index row; true when it had one (it was a card).
    async fn delete_index_row(&mut self, path: &str) -> Result<bool, WriteError> {
        let sql = "DELETE FROM card_index WHERE realm_url = $1 AND path = $2";
        let realm = &self.realm;
        let removed = on_tx!(tx_of(&mut self.batch)?, conn => sqlx::query(sql).bind(realm).bind(path).execute(conn).await?.rows_affected(),
            (_store, _staged) => 0);
        Ok(removed > 0)
    }

    /// Removes a file and its index row; false when there was no such file.
    pub async fn delete(&mut self, path: &str) -> Result<bool, WriteError> {
        check_path(path)?;
        let sql = "DELETE FROM files WHERE realm_url = $1 AND path = $2";
        let realm = &self.realm;
        let removed = on_tx!(tx_of(&mut self.batch)?, conn => sqlx::query(sql).bind(realm).bind(path).execute(conn).await?.rows_affected(),
            (store, staged) => {
                let existed = staged.read(store, realm, path).is_some();
                staged.remove(path);
                u64::from(existed)
            });
        let was_card = self.delete_index_row(path).await?;
        if removed > 0 {
            self.changes.note(&self.realm, path, was_card);
        }
        self.known.insert(path.to_string(), None);
        Ok(removed > 0)
    }

    /// Makes this request's writes durable and releases the lock. With
    /// coalescing, the writes may join a batch that the next holder extends;
    /// this returns only once that batch has committed.
    pub async fn commit(mut self) -> Result<(), WriteError> {
        let announce = !self.changes.is_empty();
        if announce {
            self.append_event().await?;
        }
        self.savepoint("RELEASE SAVEPOINT realm_member").await?;
        let (committed, realm, seq) = (self.committed.clone(), self.realm.clone(), self.appended);
        self.end_turn(true).await?;
        if let (true, Some(seq)) = (announce, seq) {
            // Nobody listening (no subscriber yet) is fine.
            let _ = committed.send((realm, seq));
        }
        Ok(())
    }

    /// Sets the `X-Boxel-Client-Request-Id` this request's event carries.
    pub fn set_client_request_id(&mut self, id: Option<String>) {
        self.client_request_id = id;
    }

    /// Appends this request's realm event, the realm's next sequence number.
    async fn append_event(&mut self) -> Result<(), WriteError> {
        let payload = self.changes.payload(&self.realm, self.client_request_id.as_deref());
        let (realm, now, (keep, age)) = (&self.realm, store::now_unix(), self.retain_events);
        let cutoff = now.saturating_sub(age);
        match tx_of(&mut self.batch)? {
            Tx::Sqlite(t) => {
                let seq: i64 = sqlx::query_scalar(outbox::APPEND_SQLITE).bind(realm).bind(&payload).bind(now).fetch_one(&mut **t).await?;
                sqlx::query(outbox::PRUNE_COUNT_SQLITE).bind(realm).bind(seq).bind(keep).execute(&mut **t).await?;
                sqlx::query(outbox::PRUNE_AGE_SQLITE).bind(realm).bind(seq).bind(keep).bind(cutoff).execute(&mut **t).await?;
                self.appended = Some(seq);
            }
            Tx::Postgres(t) => {
                let row = sqlx::query(outbox::APPEND_POSTGRES).bind(realm).bind(&payload).bind(now).bind(keep).bind(cutoff).fetch_one(&mut **t).await?;
                self.appended = Some(row.try_get(0)?);
            }
            // The in-memory store keeps files only.
            Tx::Memory(..) => {}
        }
        Ok(())
    }

    /// Undoes this request's writes and releases the lock, waiting until
    /// the database has done so (the next holder never waits on a lazy
    /// rollback). Earlier members of the batch are unaffected.
    pub async fn rollback(mut self) -> Result<(), WriteError> {
        self.savepoint("ROLLBACK TO SAVEPOINT realm_member").await?;
        self.savepoint("RELEASE SAVEPOINT realm_member").await?;
        self.end_turn(false).await
    }

    /// Hands the open batch to the next waiter, or ends it: commit when it
    /// holds anyone's writes, else roll back (which releases the lock).
    pub(super) async fn end_turn(mut self, wrote: bool) -> Result<(), WriteError> {
        let Some(mut batch) = self.batch.take() else { return Ok(()) };
        if wrote {
            batch.members += 1;
        }
        let c = self.coalescing;
        let may_continue = c.max_batch > 1
            && !matches!(batch.tx, Tx::Memory(..))
            && batch.members < c.max_batch
            && batch.opened.elapsed() < c.max_wait
            && self.queue.waiting.load(Ordering::SeqCst) > 0;
        if may_continue {
            let mut outcome = batch.outcome.subscribe();
            *self.turn = Some(batch);
            drop(self);
            if !wrote {
                return Ok(());
            }
            let settled = outcome.wait_for(Option::is_some).await.map(|o| o.clone());
            return match settled {
                Ok(Some(result)) => result,
                _ => Err(WriteError::Unavailable("the shared transaction was lost before it committed; nothing was written, retry".into())),
            };
        }
        if batch.members > 0 {
            let result = batch.finish(&self.stats).await;
            if wrote { result } else { Ok(()) }
        } else {
            batch.tx.rollback().await
        }
    }
}
