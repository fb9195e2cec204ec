//! The in-process side of the write locks: one FIFO queue per realm, so a
//! writer waits here before it takes a pooled connection; at its turn it
//! takes over the batch its predecessor left open, or opens a transaction
//! that holds the realm's database lock.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::batch::{BatchStats, Coalescing, OpenBatch, RealmQueue, Tx};
use super::error::WriteError;
use super::key::advisory_lock_key;
use super::txn::{Limits, WriteTxn};
use crate::store::{Database, Staged};

/// The in-process side of the write locks: one FIFO queue per realm.
pub struct Locks {
    queues: Mutex<HashMap<String, Arc<RealmQueue>>>,
    timeout: Duration,
    limits: Limits,
    coalescing: Coalescing,
    pub stats: Arc<BatchStats>,
    /// Realms whose commit appended an event, announced in-process.
    committed: tokio::sync::broadcast::Sender<(String, i64)>,
    /// How many events each realm keeps and for how long (seconds); older
    /// ones are pruned as new ones come.
    retain_events: (i64, i64),
}

impl Locks {
    pub fn new(timeout: Duration, limits: Limits) -> Locks {
        Locks::with_coalescing(timeout, limits, Coalescing::OFF)
    }

    pub fn with_coalescing(timeout: Duration, limits: Limits, coalescing: Coalescing) -> Locks {
        Locks {
            queues: Mutex::new(HashMap::new()),
            timeout,
            limits,
            coalescing,
            stats: Arc::default(),
            committed: tokio::sync::broadcast::channel(4096).0,
            retain_events: (10_000, 7 * 86_400),
        }
    }

    /// Keeps the newest `count` events of each realm, none older than `age`
    /// (but always the newest).
    pub fn retaining_events(mut self, count: u64, age: Duration) -> Locks {
        let age = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
        self.retain_events = (i64::try_from(count).unwrap_or(i64::MAX), age);
        self
    }

    /// The realm and seq of every commit that appended an event, from now on.
    pub fn commits(&self) -> tokio::sync::broadcast::Receiver<(String, i64)> {
        self.committed.subscribe()
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
            changes: Default::default(),
            client_request_id: None,
            committed: self.committed.clone(),
            appended: None,
            retain_events: self.retain_events,
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Coalescing, Limits, Locks};
    use crate::store::{Database, Permissions};

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

    /// The batches committed so far, and the requests they carried.
    fn assert_commits(locks: &Locks, batches: u64, members: u64) {
        assert_eq!(locks.stats.batches.load(Ordering::Relaxed), batches, "batches");
        assert_eq!(locks.stats.members.load(Ordering::Relaxed), members, "members");
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
        assert_commits(&locks, 1, 2);
    }

    // Each test opens the same way (a holder, a waiter); what follows differs.
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
        assert_commits(&locks, 1, 2);
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
