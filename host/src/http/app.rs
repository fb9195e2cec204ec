//! What every request handler shares: the store, the running guest, the
//! token secret, the request limits, the commit counters and the realm cache.

use std::sync::Arc;
use std::time::Duration;

use crate::events::EventHub;
use crate::guest::swap::Guests;
use crate::lock::{BatchStats, Locks};
use crate::realm::cache::RealmCache;
use crate::store::Database;

/// What one request may send.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    /// Card POST/PATCH bodies.
    pub card_bytes: usize,
    /// Source POST bodies.
    pub file_bytes: usize,
    /// `/_atomic` bodies.
    pub atomic_bytes: usize,
    /// Operations in one `/_atomic` request.
    pub atomic_operations: usize,
    /// JSON values (objects, arrays, strings, numbers…) in one JSON body
    /// the guest will parse: what bounds the guest's memory per request.
    pub json_values: usize,
    /// How long a client may take to send a whole body (408 beyond).
    pub body_read: Duration,
    /// What one `_search` may ask for and how long it may run.
    pub search: crate::search::SearchLimits,
    /// How often an idle event stream sends a heartbeat comment.
    pub events_heartbeat: Duration,
}

/// Everything a request handler needs.
pub struct App {
    pub db: Database,
    pub guests: Arc<Guests>,
    pub secret: String,
    pub limits: RequestLimits,
    /// Counters of coalesced commits, for `/_metrics`.
    pub(super) stats: Arc<BatchStats>,
    /// Realm list and permissions.
    pub realms: Arc<RealmCache>,
    /// The realms' write locks (the guest's own): binary file writes,
    /// which need no card logic, take them here.
    pub(super) locks: Arc<Locks>,
    /// This replica's feeds of realm events.
    pub(super) events: Arc<EventHub>,
}

impl App {
    pub async fn new(
        db: Database,
        guests: Arc<Guests>,
        secret: String,
        limits: RequestLimits,
        stats: Arc<BatchStats>,
        locks: Arc<Locks>,
        events: Arc<EventHub>,
    ) -> Result<App, crate::store::DbError> {
        let realms = Arc::new(RealmCache::load(db.clone()).await?);
        Ok(App { db, guests, secret, limits, stats, realms, locks, events })
    }
}
