//! The test's hold of a realm's database-level write lock, from outside
//! the server (Postgres: the realm's advisory lock; SQLite: a `BEGIN
//! IMMEDIATE` transaction on the file), so that the server's writers queue
//! behind it until it is released.

use std::time::Duration;

use crate::harness::Server;
use crate::pg::{self, Session};

pub(crate) enum LockHolder {
    Postgres(Session, i64),
    Sqlite(sqlx::SqliteConnection),
}

impl LockHolder {
    pub(crate) async fn hold(srv: &Server, realm: &str) -> LockHolder {
        let url = srv.db_url();
        if url.starts_with("sqlite:") {
            use sqlx::ConnectOptions;
            let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(url)
                .unwrap_or_else(|e| panic!("{url}: {e}"))
                .create_if_missing(false)
                .busy_timeout(Duration::from_secs(30));
            let mut conn = options.connect().await.unwrap_or_else(|e| panic!("open {url}: {e}"));
            sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut conn).await.expect("BEGIN IMMEDIATE on the test database");
            return LockHolder::Sqlite(conn);
        }
        let mut session = Session::open(url).await;
        let key = pg::realm_lock_key(realm);
        session.advisory_lock(key).await;
        LockHolder::Postgres(session, key)
    }

    /// Postgres: waits (at most `within`) until a server backend waits for
    /// the lock. SQLite shows no waiter: answers at once.
    pub(crate) async fn wait_for_a_waiter(&mut self, within: Duration) {
        if let LockHolder::Postgres(session, key) = self {
            let key = *key;
            wait_until!("a write waits for the realm's lock", within, (!session.advisory_waiters(key).await.is_empty()).then_some(()));
        }
    }

    pub(crate) async fn release(self) {
        match self {
            LockHolder::Postgres(mut session, key) => session.advisory_unlock(key).await,
            LockHolder::Sqlite(mut conn) => {
                sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.expect("ROLLBACK on the test database");
            }
        }
    }
}
