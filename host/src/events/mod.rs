//! Realm events: every committed write request appended one row to the
//! outbox (`realm_events`, see `lock::outbox`) in its own transaction; this
//! module delivers them. Each replica keeps one feed per followed realm
//! ([`EventHub`]) and wakes it on a local commit, on a Postgres NOTIFY (one
//! dedicated LISTEN connection) and on a repair poll, so an event is read
//! from the database once per replica and never skipped.

// Lowest first; each file uses only the ones above it.
// Per-realm feeds: read new events once, broadcast them, bounded.
mod feed;

use std::sync::Arc;
use std::time::Duration;

use crate::lock::{Locks, EVENTS_CHANNEL};
use crate::store::{now_unix, Database};

pub use feed::{Event, EventHub};

/// How events are delivered and kept.
#[derive(Clone, Copy, Debug)]
pub struct EventOptions {
    /// Events a subscriber may fall behind before it is disconnected.
    pub buffer: usize,
    /// How often every followed realm is re-read (repairs lost NOTIFYs).
    pub poll: Duration,
    /// Events older than this are pruned (each realm keeps its newest).
    pub retain_age: Duration,
    /// Events each realm keeps at most (a write retires the one this many
    /// before it; the periodic prune catches up on the rest).
    pub retain_count: u64,
}

/// Starts the hub and what wakes it: local commits, NOTIFY, the poll.
pub fn start(db: Database, locks: &Locks, options: EventOptions) -> Arc<EventHub> {
    let hub = Arc::new(EventHub::new(db.clone(), options.buffer));
    let mut commits = locks.commits();
    let local = hub.clone();
    tokio::spawn(async move {
        loop {
            match commits.recv().await {
                Ok((realm, seq)) => local.wake_for(&realm, Some(seq)).await,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => local.wake_all().await,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let polled = hub.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(options.poll.max(Duration::from_millis(10)));
        let mut last_prune = std::time::Instant::now();
        // A short retention is pruned often, a long one once a minute.
        let prune_every = (options.retain_age / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            tick.tick().await;
            polled.wake_all().await;
            if last_prune.elapsed() >= prune_every {
                last_prune = std::time::Instant::now();
                let cutoff = now_unix().saturating_sub(i64::try_from(options.retain_age.as_secs()).unwrap_or(i64::MAX));
                let keep = i64::try_from(options.retain_count).unwrap_or(i64::MAX);
                if let Err(e) = polled.prune(cutoff, keep).await {
                    tracing::warn!(error = %e, "cannot prune old realm events");
                }
            }
        }
    });
    if let Database::Postgres(pool) = db {
        tokio::spawn(listen(pool, hub.clone()));
    }
    hub
}

/// The same LISTEN-and-repair loop as the realm list's
/// (`realm::cache::follow_changes`), on its own channel and connection:
/// each reacts to a lost connection in its own way.
///
/// Wakes the realm named by every NOTIFY on [`EVENTS_CHANNEL`] (unless
/// this replica has read that event already); after the
/// connection was lost (notifications may be gone) wakes every realm.
async fn listen(pool: sqlx::PgPool, hub: Arc<EventHub>) {
    loop {
        let listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(mut listener) => listener.listen(EVENTS_CHANNEL).await.map(|()| listener),
            Err(e) => Err(e),
        };
        let mut listener = match listener {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for realm events; retrying (the poll still delivers them)");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        hub.wake_all().await;
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    // `<realm> <seq>` (a realm URL may hold spaces, a seq never).
                    let payload = notification.payload();
                    match payload.rsplit_once(' ').map(|(realm, seq)| (realm, seq.parse::<i64>().ok())) {
                        Some((realm, Some(seq))) => hub.wake_for(realm, Some(seq)).await,
                        _ => hub.wake(payload).await,
                    }
                }
                Ok(None) => hub.wake_all().await,
                Err(e) => {
                    tracing::warn!(error = %e, "lost the realm-event listener");
                    hub.wake_all().await;
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
