//! One replica's view of the outbox: per realm, the last event it has read
//! and a bounded broadcast of the events after it. A feed reads each new
//! event from the database once, whoever woke it, and hands it to every
//! subscriber of that realm on this replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sqlx::Row;
use tokio::sync::broadcast;

use crate::store::{on_pool, Database, DbError};

/// One committed realm event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub seq: i64,
    /// The event's JSON (Boxel's realm-event shape).
    pub payload: String,
}

/// The events a replica has read, per realm, for its subscribers.
pub struct EventHub {
    db: Database,
    feeds: Mutex<HashMap<String, Arc<Feed>>>,
    /// Events one feed holds for a subscriber that has not read them yet.
    buffer: usize,
    /// Set when the server shuts down: every event stream ends.
    closing: tokio::sync::watch::Sender<bool>,
}

struct Feed {
    events: broadcast::Sender<Arc<Event>>,
    /// The newest seq read from the database (`None` until the first
    /// subscriber sets it): the async lock makes one reader at a time.
    last: tokio::sync::Mutex<Option<i64>>,
    /// The same, readable without waiting for a read in progress.
    newest: std::sync::atomic::AtomicI64,
}

/// Most events read in one query.
const PAGE: i64 = 500;
/// Oldest events of a realm checked for age by one statement.
const AGE_PRUNE_BATCH: i64 = 1000;

impl EventHub {
    pub fn new(db: Database, buffer: usize) -> EventHub {
        EventHub { db, feeds: Mutex::new(HashMap::new()), buffer: buffer.max(1), closing: tokio::sync::watch::channel(false).0 }
    }

    /// The server is shutting down: every event stream ends now, rather
    /// than hold the shutdown until its drain runs out. A subscriber
    /// resumes with its `Last-Event-ID` (on another replica), missing
    /// nothing.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Becomes true once [`EventHub::close`] is called.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    fn feeds(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Feed>>> {
        match self.feeds.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Every event of `realm` committed after this returns reaches the
    /// receiver (until it lags by more than the buffer, then it is closed
    /// with `Lagged`); earlier ones are in the database ([`EventHub::after`]).
    pub async fn subscribe(&self, realm: &str) -> Result<broadcast::Receiver<Arc<Event>>, DbError> {
        // Subscribed under the map's lock: `wake_all` drops only feeds
        // without receivers, never one being subscribed to.
        let (feed, receiver) = {
            let mut feeds = self.feeds();
            let feed = feeds
                .entry(realm.to_string())
                .or_insert_with(|| {
                    Arc::new(Feed { events: broadcast::channel(self.buffer).0, last: tokio::sync::Mutex::new(None), newest: Default::default() })
                })
                .clone();
            let receiver = feed.events.subscribe();
            (feed, receiver)
        };
        let mut last = feed.last.lock().await;
        if last.is_none() {
            let newest = self.window(realm).await?.1;
            *last = Some(newest);
            feed.newest.fetch_max(newest, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(receiver)
    }

    /// Reads the realm's new events, if anyone here follows it, and hands
    /// them to its subscribers.
    pub async fn wake(&self, realm: &str) {
        self.wake_for(realm, None).await
    }

    /// [`EventHub::wake`] for the event `seq`: nothing to read when this
    /// replica has read it already (a batch's first wake-up reads them all).
    pub async fn wake_for(&self, realm: &str, seq: Option<i64>) {
        let feed = self.feeds().get(realm).cloned();
        if let Some(feed) = feed {
            if seq.is_some_and(|seq| feed.newest.load(std::sync::atomic::Ordering::Relaxed) >= seq) {
                return;
            }
            if let Err(e) = self.pump(realm, &feed).await {
                tracing::warn!(%realm, error = %e, "cannot read new realm events; the next wake-up retries");
            }
        }
    }

    /// [`EventHub::wake`] for every realm someone here follows: the repair
    /// after a notification may have been lost.
    pub async fn wake_all(&self) {
        let realms: Vec<String> = {
            let mut feeds = self.feeds();
            // A realm nobody here follows any more is not read.
            feeds.retain(|_, feed| feed.events.receiver_count() > 0);
            feeds.keys().cloned().collect()
        };
        for realm in realms {
            self.wake(&realm).await;
        }
    }

    async fn pump(&self, realm: &str, feed: &Feed) -> Result<(), DbError> {
        let mut last = feed.last.lock().await;
        let Some(mut seen) = *last else { return Ok(()) };
        loop {
            let events = self.after(realm, seen, PAGE).await?;
            let full = events.len() as i64 == PAGE;
            for event in events {
                seen = event.seq;
                // No subscriber right now is fine.
                let _ = feed.events.send(Arc::new(event));
            }
            *last = Some(seen);
            feed.newest.fetch_max(seen, std::sync::atomic::Ordering::Relaxed);
            if !full {
                return Ok(());
            }
        }
    }

    /// The newest seq of `realm` this replica has read (0 if it follows none).
    pub fn newest_read(&self, realm: &str) -> i64 {
        self.feeds().get(realm).map_or(0, |feed| feed.newest.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Events a subscriber may fall behind (see `http::events`).
    pub fn buffer(&self) -> usize {
        self.buffer
    }

    /// The realm's retained events after `seq`, oldest first, at most `limit`.
    pub async fn after(&self, realm: &str, seq: i64, limit: i64) -> Result<Vec<Event>, DbError> {
        let sql = "SELECT seq, payload FROM realm_events WHERE realm_url = $1 AND seq > $2 ORDER BY seq LIMIT $3";
        let events = on_pool!(&self.db, pool => {
            let rows = sqlx::query(sql).bind(realm).bind(seq).bind(limit).fetch_all(pool).await?;
            rows.iter().map(|r| Ok::<_, sqlx::Error>(Event { seq: r.try_get(0)?, payload: r.try_get(1)? })).collect::<Result<Vec<_>, _>>()?
        });
        Ok(events)
    }

    /// The realm's oldest retained and newest seq (`None`, 0 with no events).
    pub async fn window(&self, realm: &str) -> Result<(Option<i64>, i64), DbError> {
        let sql = "SELECT MIN(seq), MAX(seq) FROM realm_events WHERE realm_url = $1";
        let window = on_pool!(&self.db, pool => {
            let row = sqlx::query(sql).bind(realm).fetch_one(pool).await?;
            (row.try_get::<Option<i64>, _>(0)?, row.try_get::<Option<i64>, _>(1)?.unwrap_or(0))
        });
        Ok(window)
    }

    /// Drops events older than `cutoff` (unix seconds) or more than `keep`
    /// before their realm's newest, keeping each realm's newest: its seq is
    /// what the next one counts from. Realm by realm along the primary key:
    /// one statement over the whole table visited every event (and looked
    /// up its realm's newest twice), seconds of database time a minute.
    pub async fn prune(&self, cutoff: i64, keep: i64) -> Result<u64, DbError> {
        let realms: Vec<String> = on_pool!(&self.db, pool => sqlx::query_scalar("SELECT url FROM realms").fetch_all(pool).await?);
        let mut removed = 0;
        for realm in realms {
            removed += self.prune_realm(&realm, cutoff, keep).await?;
        }
        Ok(removed)
    }

    async fn prune_realm(&self, realm: &str, cutoff: i64, keep: i64) -> Result<u64, DbError> {
        let by_count = "DELETE FROM realm_events WHERE realm_url = $1 AND seq <= (SELECT MAX(seq) FROM realm_events WHERE realm_url = $1) - $2";
        // Events are appended in time order, so the expired ones are the
        // oldest: checked from the oldest, a batch at a time, and only when
        // the oldest has expired (never the newest).
        let by_age = "DELETE FROM realm_events WHERE realm_url = $1 AND created_at < $2
                      AND (SELECT created_at FROM realm_events WHERE realm_url = $1 ORDER BY seq LIMIT 1) < $2
                      AND seq IN (SELECT seq FROM realm_events WHERE realm_url = $1
                                  AND seq < (SELECT MAX(seq) FROM realm_events WHERE realm_url = $1) ORDER BY seq LIMIT $3)";
        let mut removed = on_pool!(&self.db, pool => sqlx::query(by_count).bind(realm).bind(keep).execute(pool).await?.rows_affected());
        loop {
            let aged = on_pool!(&self.db, pool => sqlx::query(by_age).bind(realm).bind(cutoff).bind(AGE_PRUNE_BATCH).execute(pool).await?.rows_affected());
            removed += aged;
            if aged < AGE_PRUNE_BATCH as u64 {
                return Ok(removed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Permissions;

    const REALM: &str = "http://example.test/realm/";

    /// A realm with events 1..=n, the first `old` of them a day old.
    async fn realm_with_events(n: i64, old: i64) -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Database::connect(&format!("sqlite://{}", dir.path().join("t.db").display())).await.expect("connect");
        db.create_realm(REALM, Permissions::default()).await.expect("realm");
        let Database::Sqlite(pool) = &db else { unreachable!("a sqlite url") };
        let now = crate::store::now_unix();
        sqlx::query(
            "WITH RECURSIVE s(seq) AS (SELECT 1 UNION ALL SELECT seq + 1 FROM s WHERE seq < $2)
             INSERT INTO realm_events (realm_url, seq, payload, created_at)
             SELECT $1, seq, '{}', CASE WHEN seq <= $3 THEN $4 - 86400 ELSE $4 END FROM s",
        )
        .bind(REALM)
        .bind(n)
        .bind(old)
        .bind(now)
        .execute(pool)
        .await
        .expect("events");
        (dir, db)
    }

    #[tokio::test]
    async fn pruning_by_age_removes_every_expired_event_batch_after_batch() {
        let expired = AGE_PRUNE_BATCH * 2 + 500;
        let (_dir, db) = realm_with_events(expired + 3, expired).await;
        let hub = EventHub::new(db, 16);
        let cutoff = crate::store::now_unix() - 3600;
        assert_eq!(hub.prune(cutoff, 1_000_000).await.expect("prune"), expired as u64);
        assert_eq!(hub.window(REALM).await.expect("window"), (Some(expired + 1), expired + 3));
    }

    #[tokio::test]
    async fn pruning_keeps_the_newest_event_even_when_it_expired_and_the_newest_by_count() {
        let (_dir, db) = realm_with_events(30, 30).await;
        let hub = EventHub::new(db, 16);
        assert_eq!(hub.prune(0, 5).await.expect("prune by count"), 25);
        assert_eq!(hub.window(REALM).await.expect("window"), (Some(26), 30));
        let cutoff = crate::store::now_unix();
        assert_eq!(hub.prune(cutoff, 5).await.expect("prune by age"), 4);
        assert_eq!(hub.window(REALM).await.expect("window"), (Some(30), 30), "the newest stays: the next seq counts from it");
    }
}
