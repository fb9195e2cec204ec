//! The per-realm write lock and the transaction it guards.
//!
//! Taking a realm's lock: first wait in an in-process queue for that realm
//! (so waiters never hold pooled connections), then open a transaction that
//! holds the database-level lock: `BEGIN IMMEDIATE` on SQLite,
//! `pg_advisory_xact_lock(key)` as its own statement on Postgres. Every read
//! and write of the critical section runs on that transaction; `commit`
//! makes them durable at once, and anything else rolls them back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::{Postgres, Row, Sqlite, Transaction};
use tokio::sync::{watch, OwnedMutexGuard};

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
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("the write lock of {0} could not be had in time; retry")]
    LockTimeout(String),
    #[error("{0}")]
    TooLarge(String),
    /// The write itself is refused (reserved or malformed path, NUL in content).
    #[error("{0}")]
    Invalid(String),
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

/// How writers queued for one realm share a transaction: each runs in a
/// savepoint of the batch's transaction, and the batch commits once when
/// nobody is waiting, or when it reaches `max_batch` members or `max_wait`
/// of age. `max_batch <= 1` turns coalescing off.
#[derive(Clone, Copy, Debug)]
pub struct Coalescing {
    pub max_batch: usize,
    pub max_wait: Duration,
}

impl Coalescing {
    pub const OFF: Coalescing = Coalescing { max_batch: 1, max_wait: Duration::ZERO };
}

/// Counters of committed batches, for `/_metrics`.
#[derive(Default)]
pub struct BatchStats {
    pub batches: AtomicU64,
    pub members: AtomicU64,
}

/// The turn of one realm: a FIFO mutex that also carries the open batch
/// from one holder to the next.
#[derive(Default)]
struct RealmQueue {
    turn: Arc<tokio::sync::Mutex<Option<OpenBatch>>>,
    /// Writers waiting for the turn (a holder only leaves the batch open
    /// when someone will take it over).
    waiting: AtomicUsize,
}

/// What every member of a batch learns once the batch is over.
type Outcome = Option<Result<(), WriteError>>;

/// A transaction holding the realm's database lock, with the writes of
/// `members` requests that are waiting for it to commit.
struct OpenBatch {
    tx: Tx,
    members: usize,
    opened: Instant,
    outcome: watch::Sender<Outcome>,
}

impl OpenBatch {
    /// Commits the batch and tells every member how it went.
    async fn finish(self, stats: &BatchStats) -> Result<(), WriteError> {
        let result = self.tx.commit().await;
        if result.is_ok() {
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.members.fetch_add(self.members as u64, Ordering::Relaxed);
        }
        let _ = self.outcome.send(Some(result.clone()));
        result
    }
}

/// The in-process side of the write locks: one FIFO queue per realm.
pub struct Locks {
    queues: Mutex<HashMap<String, Arc<RealmQueue>>>,
    timeout: Duration,
    limits: Limits,
    coalescing: Coalescing,
    pub stats: Arc<BatchStats>,
}

impl Locks {
    pub fn new(timeout: Duration, limits: Limits) -> Locks {
        Locks::with_coalescing(timeout, limits, Coalescing::OFF)
    }

    pub fn with_coalescing(timeout: Duration, limits: Limits, coalescing: Coalescing) -> Locks {
        Locks { queues: Mutex::new(HashMap::new()), timeout, limits, coalescing, stats: Arc::default() }
    }

    /// Writers waiting for the realm's turn right now.
    pub fn waiting(&self, realm: &str) -> usize {
        self.queue(realm).waiting.load(Ordering::SeqCst)
    }

    fn queue(&self, realm: &str) -> Arc<RealmQueue> {
        let mut queues = match self.queues.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        queues.entry(realm.to_string()).or_default().clone()
    }

    /// Waits for the realm's write lock, on this process and in the database.
    pub async fn acquire(&self, db: &Database, realm: &str) -> Result<WriteTxn, WriteError> {
        let started = tokio::time::Instant::now();
        let queue = self.queue(realm);
        let waiting = Waiting::enter(&queue, &self.stats);
        let turn = tokio::time::timeout(self.timeout, queue.turn.clone().lock_owned()).await;
        let mut turn = turn.map_err(|_| WriteError::LockTimeout(realm.to_string()))?;
        waiting.served();
        let remaining = self.timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
        let batch = match turn.take() {
            Some(open) => open,
            None => OpenBatch {
                tx: open_locked_tx(db, realm, remaining).await?,
                members: 0,
                opened: Instant::now(),
                outcome: watch::channel(None).0,
            },
        };
        let mut txn = WriteTxn {
            realm: realm.to_string(),
            batch: Some(batch),
            turn,
            queue,
            coalescing: self.coalescing,
            stats: self.stats.clone(),
            limits: self.limits,
            known: HashMap::new(),
        };
        if let Err(e) = txn.savepoint("SAVEPOINT realm_member").await {
            txn.end_turn(false).await.ok();
            return Err(e);
        }
        Ok(txn)
    }
}

/// Opens a transaction that holds the realm's database-level lock.
async fn open_locked_tx(db: &Database, realm: &str, remaining: Duration) -> Result<Tx, WriteError> {
    Ok(match db {
        Database::Memory(store) => Tx::Memory(store.clone(), Staged::new(realm)),
        Database::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
        Database::Postgres(pool) => {
            let mut tx = tokio::time::timeout(remaining, pool.begin())
                .await
                .map_err(|_| WriteError::Unavailable("no database connection became free in time".into()))??;
            // One prepared statement whatever the values (SET LOCAL cannot
            // take parameters, so its text would change every time).
            let ms = remaining.as_millis().max(1);
            sqlx::query("SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true)")
                .bind(format!("{ms}ms"))
                .bind(format!("{}ms", ms + 30_000))
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
    })
}

/// Counts a writer as waiting for the turn. A holder leaves its batch open
/// only while someone waits; a waiter that leaves without its turn (lock
/// timeout) makes sure such a batch still commits.
struct Waiting {
    queue: Arc<RealmQueue>,
    stats: Arc<BatchStats>,
    served: bool,
}

impl Waiting {
    fn enter(queue: &Arc<RealmQueue>, stats: &Arc<BatchStats>) -> Waiting {
        queue.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting { queue: queue.clone(), stats: stats.clone(), served: false }
    }

    fn served(mut self) {
        self.served = true;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.queue.waiting.fetch_sub(1, Ordering::SeqCst);
        if !self.served {
            flush_when_idle(self.queue.clone(), self.stats.clone());
        }
    }
}

/// Commits a batch that a holder left open if nobody took it over (the
/// waiter it was left for gave up).
fn flush_when_idle(queue: Arc<RealmQueue>, stats: Arc<BatchStats>) {
    tokio::spawn(async move {
        let mut turn = queue.turn.clone().lock_owned().await;
        if let Some(batch) = turn.take() {
            if let Err(e) = batch.finish(&stats).await {
                tracing::error!(error = %e, "committing a coalesced batch failed");
            }
        }
    });
}

enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
    /// The in-memory store and the writes staged until commit.
    Memory(Arc<MemoryStore>, Staged),
}

impl Tx {
    async fn commit(self) -> Result<(), WriteError> {
        match self {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
            Tx::Memory(store, staged) => staged.apply(&store),
        }
        Ok(())
    }

    async fn rollback(self) -> Result<(), WriteError> {
        match self {
            Tx::Sqlite(t) => t.rollback().await?,
            Tx::Postgres(t) => t.rollback().await?,
            Tx::Memory(..) => {}
        }
        Ok(())
    }
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
    realm: String,
    /// Always `Some` until the turn ends.
    batch: Option<OpenBatch>,
    turn: OwnedMutexGuard<Option<OpenBatch>>,
    queue: Arc<RealmQueue>,
    coalescing: Coalescing,
    stats: Arc<BatchStats>,
    limits: Limits,
    /// What this turn has read or written of each path's row (hash,
    /// created, last modified), so `write` need not read it again. Valid
    /// for the whole turn: nobody else can change the realm meanwhile.
    known: HashMap<String, Option<(String, i64, i64)>>,
}

/// The host's own check of a path the guest writes or deletes, whatever
/// the guest: the same grammar as request paths, outside the `_` namespace.
fn check_path(path: &str) -> Result<(), WriteError> {
    crate::realm_url::check_writable_path(path).map_err(|e| WriteError::Invalid(format!("invalid path '{path}': {e}")))
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
    async fn savepoint(&mut self, statement: &str) -> Result<(), WriteError> {
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
        let sql = "SELECT content, content_hash, created_at, last_modified FROM files WHERE realm_url = $1 AND path = $2";
        let realm = &self.realm;
        let row = on_tx!(tx_of(&mut self.batch)?, conn => sqlx::query(sql).bind(realm).bind(path).fetch_optional(conn).await?
            .map(|r| db::file_row(&r)).transpose()?,
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

    /// Stores a file (and its index row, or removes a stale one). Identical
    /// content is not rewritten.
    pub async fn write(&mut self, path: &str, content: &str, index: Option<IndexRow>) -> Result<Written, WriteError> {
        check_path(path)?;
        // Postgres `text` cannot hold U+0000; refusing it everywhere keeps
        // both backends answering the same.
        if content.contains('\0') {
            return Err(WriteError::Invalid(format!("{path}: file content may not contain U+0000 (NUL)")));
        }
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
        let upsert = "INSERT INTO files (realm_url, path, content, content_hash, created_at, last_modified)
                      VALUES ($1, $2, $3, $4, $5, $5)
                      ON CONFLICT (realm_url, path) DO UPDATE
                      SET content = excluded.content, content_hash = excluded.content_hash,
                          last_modified = excluded.last_modified";
        let created = existing.as_ref().map(|(_, created, _)| *created).unwrap_or(now);
        on_tx!(tx_of(&mut self.batch)?, conn => { sqlx::query(upsert)
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
                on_tx!(tx_of(&mut self.batch)?, conn => { sqlx::query(sql)
                    .bind(realm).bind(path).bind(&row.card_id).bind(&row.card_type).bind(&row.search_doc).bind(now)
                    .execute(conn).await?; },
                    (_store, _staged) => ());
            }
            None => self.delete_index_row(path).await?,
        }
        let existed = existing.is_some();
        self.known.insert(path.to_string(), Some((content_hash.clone(), created, now)));
        Ok(Written { content_hash, created, last_modified: now, existed })
    }

    async fn delete_index_row(&mut self, path: &str) -> Result<(), WriteError> {
        let sql = "DELETE FROM card_index WHERE realm_url = $1 AND path = $2";
        let realm = &self.realm;
        on_tx!(tx_of(&mut self.batch)?, conn => { sqlx::query(sql).bind(realm).bind(path).execute(conn).await?; },
            (_store, _staged) => ());
        Ok(())
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
        self.delete_index_row(path).await?;
        self.known.insert(path.to_string(), None);
        Ok(removed > 0)
    }

    /// Makes this request's writes durable and releases the lock. With
    /// coalescing, the writes may join a batch that the next holder extends;
    /// this returns only once that batch has committed.
    pub async fn commit(mut self) -> Result<(), WriteError> {
        self.savepoint("RELEASE SAVEPOINT realm_member").await?;
        self.end_turn(true).await
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
    async fn end_turn(mut self, wrote: bool) -> Result<(), WriteError> {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Coalescing, Limits, Locks};
    use crate::db::{Database, Permissions};

    const REALM: &str = "http://example.test/realm/";

    async fn sqlite() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Database::connect(&format!("sqlite://{}", dir.path().join("t.db").display())).await.expect("connect");
        db.create_realm(REALM, Permissions::default()).await.expect("realm");
        (dir, db)
    }

    fn coalescing_locks() -> Arc<Locks> {
        let limits = Limits { card_bytes: 1 << 20, file_bytes: 1 << 20 };
        Arc::new(Locks::with_coalescing(Duration::from_secs(10), limits, Coalescing { max_batch: 64, max_wait: Duration::from_secs(10) }))
    }

    async fn until_waiting(locks: &Locks, n: usize) {
        while locks.waiting(REALM) < n {
            tokio::task::yield_now().await;
        }
    }

    async fn committed(db: &Database, path: &str) -> bool {
        db.read_file(REALM, path).await.expect("read").is_some()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_batch_commits_its_members_and_answers_none_before_the_commit() {
        let (_dir, db) = sqlite().await;
        let locks = coalescing_locks();
        let mut a = locks.acquire(&db, REALM).await.expect("a");
        let (l, d) = (locks.clone(), db.clone());
        let b = tokio::spawn(async move { l.acquire(&d, REALM).await });
        until_waiting(&locks, 1).await;

        a.write("a.txt", "from a", None).await.expect("write a");
        let a_commit = tokio::spawn(a.commit());
        let mut b = b.await.expect("task").expect("b takes over the open batch");
        // A's commit has not answered, and its write is not durable yet.
        assert!(!a_commit.is_finished());
        assert!(!committed(&db, "a.txt").await);
        // B sees A's write inside the shared transaction.
        assert!(b.exists("a.txt").await.expect("exists"));
        b.write("b.txt", "from b", None).await.expect("write b");
        b.commit().await.expect("b commits the batch");
        a_commit.await.expect("task").expect("a's commit succeeds with the batch");
        assert!(committed(&db, "a.txt").await && committed(&db, "b.txt").await);
        assert_eq!(locks.stats.batches.load(Ordering::Relaxed), 1);
        assert_eq!(locks.stats.members.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failing_member_rolls_back_alone() {
        let (_dir, db) = sqlite().await;
        let locks = coalescing_locks();
        let mut a = locks.acquire(&db, REALM).await.expect("a");
        let spawn_acquire = |locks: Arc<Locks>, db: Database| tokio::spawn(async move { locks.acquire(&db, REALM).await });
        let b = spawn_acquire(locks.clone(), db.clone());
        until_waiting(&locks, 1).await;
        a.write("a.txt", "from a", None).await.expect("write a");
        let a_commit = tokio::spawn(a.commit());

        let mut b = b.await.expect("task").expect("b");
        let c = spawn_acquire(locks.clone(), db.clone());
        until_waiting(&locks, 1).await;
        b.write("b.txt", "from b", None).await.expect("write b");
        b.rollback().await.expect("b rolls back its own writes");

        let mut c = c.await.expect("task").expect("c");
        assert!(!c.exists("b.txt").await.expect("exists"), "b's rolled-back write is gone");
        c.write("c.txt", "from c", None).await.expect("write c");
        assert!(!a_commit.is_finished());
        c.commit().await.expect("c commits");
        a_commit.await.expect("task").expect("a committed");
        assert!(committed(&db, "a.txt").await && committed(&db, "c.txt").await);
        assert!(!committed(&db, "b.txt").await);
        assert_eq!(locks.stats.batches.load(Ordering::Relaxed), 1);
        assert_eq!(locks.stats.members.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_idle_realm_commits_at_once() {
        let (_dir, db) = sqlite().await;
        let locks = coalescing_locks();
        let mut a = locks.acquire(&db, REALM).await.expect("a");
        a.write("a.txt", "alone", None).await.expect("write");
        a.commit().await.expect("commit");
        assert!(committed(&db, "a.txt").await);
        assert_eq!(locks.stats.batches.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_waiter_that_gives_up_does_not_hold_up_the_holder() {
        let (_dir, db) = sqlite().await;
        let limits = Limits { card_bytes: 1 << 20, file_bytes: 1 << 20 };
        let coalescing = Coalescing { max_batch: 64, max_wait: Duration::from_secs(10) };
        let locks = Arc::new(Locks::with_coalescing(Duration::from_millis(200), limits, coalescing));
        let mut a = locks.acquire(&db, REALM).await.expect("a");
        let (l, d) = (locks.clone(), db.clone());
        let b = tokio::spawn(async move { l.acquire(&d, REALM).await.map(|_| ()) });
        until_waiting(&locks, 1).await;
        a.write("a.txt", "from a", None).await.expect("write a");
        // Hold the turn until B's wait (200 ms lock timeout) has expired.
        let b_result = b.await.expect("task");
        assert!(b_result.is_err(), "b timed out");
        a.commit().await.expect("a commits alone");
        assert!(committed(&db, "a.txt").await);
    }
}
