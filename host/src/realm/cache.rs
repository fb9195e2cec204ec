//! What a replica remembers about realms between requests: the realm list.
//! It lives in memory, so routing a request (even one for a path under no
//! realm) costs no query; it is reloaded on a short timer, and on Postgres
//! also whenever any process changes a realm (`LISTEN/NOTIFY` on
//! [`REALM_CHANNEL`]). Permissions are read per request for reads, so a
//! `_permissions` change holds on every replica from the moment it commits
//! (a notification arrives a little later). Writes may go by the
//! permissions as last read ([`RealmCache::cached_permissions`]): the write
//! path checks them again under the realm's lock, which a permission
//! change takes too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::store::{Database, DbError, Permissions, REALM_CHANNEL};

/// How often the realm list is re-read without being told to: often on
/// SQLite (a `realm create` from another process cannot notify), rarely on
/// Postgres (NOTIFY tells; the timer only repairs a lost notification).
const SQLITE_REFRESH: Duration = Duration::from_secs(1);
const POSTGRES_REFRESH: Duration = Duration::from_secs(10);

pub struct RealmCache {
    db: Database,
    realms: ArcSwap<Vec<String>>,
    /// Permissions as last read, by (realm, user); dropped whenever a realm
    /// changes and on the timer.
    granted: std::sync::Mutex<std::collections::HashMap<(String, String), Permissions>>,
    /// How many times the realm list was read from the database.
    loads: AtomicU64,
}

impl RealmCache {
    pub async fn load(db: Database) -> Result<RealmCache, DbError> {
        let realms = ArcSwap::from_pointee(db.realms().await?);
        Ok(RealmCache { db, realms, granted: Default::default(), loads: AtomicU64::new(1) })
    }

    /// The realm URLs, as last loaded.
    pub fn realms(&self) -> Arc<Vec<String>> {
        self.realms.load_full()
    }

    /// How many times the realm list has been read from the database.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// Re-reads the realm list (and forgets the permissions read so far).
    pub async fn reload_realms(&self) -> Result<(), DbError> {
        self.granted().clear();
        let fresh = self.db.realms().await?;
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.realms.store(Arc::new(fresh));
        Ok(())
    }

    /// Re-reads the realm list on a timer, for as long as the server runs.
    pub async fn refresh_periodically(self: Arc<Self>) {
        let every = match self.db {
            Database::Postgres(_) => POSTGRES_REFRESH,
            _ => SQLITE_REFRESH,
        };
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if let Err(e) = self.reload_realms().await {
                tracing::warn!(error = %e, "cannot reload the realm list");
            }
        }
    }

    /// What exactly this user (`*` is anyone) may do in the realm.
    pub async fn permissions(&self, realm: &str, user: &str) -> Result<Permissions, DbError> {
        self.db.user_permissions(realm, user).await
    }

    fn granted(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, String), Permissions>> {
        match self.granted.lock() {
            Ok(granted) => granted,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// [`RealmCache::permissions`] as last read: for a write, whose batch
    /// checks them again under the realm's lock. At most a refresh period
    /// old, and dropped as soon as this replica hears of a change.
    pub async fn cached_permissions(&self, realm: &str, user: &str) -> Result<Permissions, DbError> {
        let key = (realm.to_string(), user.to_string());
        if let Some(p) = self.granted().get(&key) {
            return Ok(*p);
        }
        let p = self.db.user_permissions(realm, user).await?;
        let mut granted = self.granted();
        // Bounded: many users writing rarely only cost reads.
        if granted.len() >= 10_000 {
            granted.clear();
        }
        granted.insert(key, p);
        Ok(p)
    }

    async fn catch_up(&self) {
        if let Err(e) = self.reload_realms().await {
            tracing::warn!(error = %e, "cannot reload the realm list");
        }
    }

    /// Reloads the realm list whenever any process changes a realm (Postgres).
    /// If the listening connection is lost, notifications may have been
    /// missed, so the list is re-read then too.
    pub async fn follow_changes(self: Arc<Self>) {
        drop(tokio::spawn(self.clone().refresh_periodically()));
        let Database::Postgres(pool) = &self.db else { return };
        loop {
            let listener = match sqlx::postgres::PgListener::connect_with(pool).await {
                Ok(mut listener) => listener.listen(REALM_CHANNEL).await.map(|()| listener),
                Err(e) => Err(e),
            };
            let mut listener = match listener {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot LISTEN for realm changes; retrying");
                    self.catch_up().await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Anything changed before the LISTEN took effect is re-read.
            self.catch_up().await;
            loop {
                match listener.try_recv().await {
                    Ok(Some(_)) => self.catch_up().await,
                    // The connection was lost: sqlx reconnects on the next
                    // call, but notifications in between are gone.
                    Ok(None) => self.catch_up().await,
                    Err(e) => {
                        tracing::warn!(error = %e, "lost the realm-change listener");
                        self.catch_up().await;
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
