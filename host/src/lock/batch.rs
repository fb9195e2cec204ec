//! What the writers queued for one realm hand along: the realm's turn, and
//! the open batch (a transaction that holds the realm's database lock, with
//! the writes of every member waiting for it to commit). Coalescing decides
//! how long a batch stays open.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Postgres, Sqlite, Transaction};
use tokio::sync::watch;

use super::error::WriteError;
use crate::store::{MemoryStore, Staged};

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
pub(super) struct RealmQueue {
    pub(super) turn: Arc<tokio::sync::Mutex<Option<OpenBatch>>>,
    /// Writers waiting for the turn (a holder only leaves the batch open
    /// when someone will take it over).
    pub(super) waiting: AtomicUsize,
}

/// What every member of a batch learns once the batch is over.
type Outcome = Option<Result<(), WriteError>>;

/// A transaction holding the realm's database lock, with the writes of
/// `members` requests that are waiting for it to commit.
pub(super) struct OpenBatch {
    pub(super) tx: Tx,
    pub(super) members: usize,
    pub(super) opened: Instant,
    pub(super) outcome: watch::Sender<Outcome>,
}

impl OpenBatch {
    /// Commits the batch and tells every member how it went.
    pub(super) async fn finish(self, stats: &BatchStats) -> Result<(), WriteError> {
        let result = self.tx.commit().await;
        if result.is_ok() {
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.members.fetch_add(self.members as u64, Ordering::Relaxed);
        }
        let _ = self.outcome.send(Some(result.clone()));
        result
    }
}

pub(super) enum Tx {
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

    pub(super) async fn rollback(self) -> Result<(), WriteError> {
        match self {
            Tx::Sqlite(t) => t.rollback().await?,
            Tx::Postgres(t) => t.rollback().await?,
            Tx::Memory(..) => {}
        }
        Ok(())
    }
}
