//! What a replica remembers about realms between requests: the realm list
//! and permissions. On Postgres both are cached and dropped on every
//! replica when any process changes them (`LISTEN/NOTIFY` on
//! [`REALM_CHANNEL`]); on SQLite, where other processes cannot notify,
//! permissions are read per request and the realm list is reloaded when a
//! request matches no realm.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::RwLock;

use crate::db::{Database, DbError, Permissions};

/// Postgres channel announcing that a realm or its permissions changed.
pub const REALM_CHANNEL: &str = "realm_changed";

pub struct RealmCache {
    db: Database,
    realms: RwLock<Vec<String>>,
    /// `(realm, user)` → permissions; only used on Postgres.
    permissions: RwLock<HashMap<(String, String), Permissions>>,
}

impl RealmCache {
    pub async fn load(db: Database) -> Result<RealmCache, DbError> {
        let realms = RwLock::new(db.realms().await?);
        Ok(RealmCache { db, realms, permissions: RwLock::default() })
    }

    fn caches_permissions(&self) -> bool {
        matches!(self.db, Database::Postgres(_))
    }

    /// The realm URLs, as last loaded.
    pub async fn realms(&self) -> Vec<String> {
        self.realms.read().await.clone()
    }

    /// Reloads the realm list (a request matched none of the known realms).
    pub async fn reload_realms(&self) -> Result<Vec<String>, DbError> {
        let fresh = self.db.realms().await?;
        *self.realms.write().await = fresh.clone();
        Ok(fresh)
    }

    /// What exactly this user (`*` is anyone) may do in the realm.
    pub async fn permissions(&self, realm: &str, user: &str) -> Result<Permissions, DbError> {
        let key = (realm.to_string(), user.to_string());
        if self.caches_permissions() {
            if let Some(known) = self.permissions.read().await.get(&key) {
                return Ok(*known);
            }
        }
        let fresh = self.db.user_permissions(realm, user).await?;
        if self.caches_permissions() {
            self.permissions.write().await.insert(key, fresh);
        }
        Ok(fresh)
    }

    async fn forget(&self) {
        self.permissions.write().await.clear();
        if let Err(e) = self.reload_realms().await {
            tracing::warn!(error = %e, "cannot reload the realm list");
        }
    }

    /// Drops the cache whenever any process changes a realm (Postgres).
    /// If the listening connection is lost, notifications may have been
    /// missed, so the cache is dropped then too.
    pub async fn follow_changes(self: std::sync::Arc<Self>) {
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
                    self.forget().await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Anything changed before the LISTEN took effect is re-read.
            self.forget().await;
            loop {
                match listener.try_recv().await {
                    Ok(Some(_)) => self.forget().await,
                    // The connection was lost: sqlx reconnects on the next
                    // call, but notifications in between are gone.
                    Ok(None) => self.forget().await,
                    Err(e) => {
                        tracing::warn!(error = %e, "lost the realm-change listener");
                        self.forget().await;
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
