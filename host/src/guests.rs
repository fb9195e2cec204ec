//! The running guest and how it is replaced: validation (the bytes are a
//! component of the `realm-core` world and pass the self-test), the atomic
//! switch (requests in flight finish on the guest they started with), and
//! the watchers that switch every replica when another one activates a
//! guest (Postgres NOTIFY plus polling) or when a local file changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::db::Database;
use crate::registry::GUEST_CHANNEL;
use crate::runtime::{self, Guest, Sandbox, Wasm};
use crate::selftest;
use crate::write_lock::Locks;

/// The running guest and what is needed to build the next one.
pub struct Guests {
    current: ArcSwap<Guest>,
    engine: Wasm,
    db: Database,
    locks: Arc<Locks>,
    sandbox: Sandbox,
}

impl Guests {
    pub fn new(engine: Wasm, db: Database, locks: Arc<Locks>, sandbox: Sandbox, first: Guest) -> Guests {
        Guests { current: ArcSwap::from_pointee(first), engine, db, locks, sandbox }
    }

    /// The guest new requests run on.
    pub fn current(&self) -> Arc<Guest> {
        self.current.load_full()
    }

    /// Compiles and self-tests `bytes`, then makes it the running guest.
    /// Compilation and the self-test run off the async executor.
    pub async fn switch_to(&self, bytes: Vec<u8>) -> Result<String, String> {
        let compiled = validate(&self.engine, self.sandbox, bytes).await?;
        let guest = Guest::new(&self.engine, &compiled, self.db.clone(), self.locks.clone(), self.sandbox);
        let short = guest.short_hash.clone();
        self.current.store(Arc::new(guest));
        tracing::info!(guest = %short, "switched guest");
        Ok(compiled.hash)
    }

    fn running_hash(&self) -> String {
        self.current.load().short_hash.clone()
    }

    /// Keeps this replica on the registry's active guest.
    pub async fn follow_registry(self: Arc<Self>) {
        let poll_every = match self.db {
            Database::Postgres(_) => Duration::from_millis(1000),
            _ => Duration::from_millis(200),
        };
        let mut listener = match &self.db {
            Database::Postgres(pool) => match sqlx::postgres::PgListener::connect_with(pool).await {
                Ok(mut listener) => match listener.listen(GUEST_CHANNEL).await {
                    Ok(()) => Some(listener),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot LISTEN for guest activations; polling only");
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot LISTEN for guest activations; polling only");
                    None
                }
            },
            _ => None,
        };
        loop {
            match listener.as_mut() {
                Some(l) => {
                    // A notification or the poll interval, whichever is first.
                    let _ = tokio::time::timeout(poll_every, l.recv()).await;
                }
                None => tokio::time::sleep(poll_every).await,
            }
            if let Err(e) = self.catch_up().await {
                tracing::warn!(error = %e, "cannot switch to the registry's active guest");
            }
        }
    }

    async fn catch_up(&self) -> Result<(), String> {
        let Some(active) = self.db.active_guest().await.map_err(|e| e.to_string())? else { return Ok(()) };
        if active.starts_with(&self.running_hash()) {
            return Ok(());
        }
        let (_, bytes) = self
            .db
            .guest_bytes(&active)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("active guest {active} is not in the registry"))?;
        // The deployer validated it; compile only, so every replica switches fast.
        let engine = self.engine.clone();
        let compiled = tokio::task::spawn_blocking(move || runtime::compile(&engine, &bytes))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{e:#}"))?;
        let guest = Guest::new(&self.engine, &compiled, self.db.clone(), self.locks.clone(), self.sandbox);
        tracing::info!(guest = %guest.short_hash, "switched to the registry's active guest");
        self.current.store(Arc::new(guest));
        Ok(())
    }

    /// Reloads the guest whenever `path` changes (local development).
    pub async fn watch_file(self: Arc<Self>, path: PathBuf) {
        let mut last = std::fs::read(&path).ok().map(|b| crate::registry::hash_of(&b));
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let Ok(bytes) = std::fs::read(&path) else { continue };
            let hash = crate::registry::hash_of(&bytes);
            if last.as_deref() == Some(hash.as_str()) {
                continue;
            }
            last = Some(hash);
            match self.switch_to(bytes).await {
                Ok(hash) => tracing::info!(file = %path.display(), guest = %&hash[..12], "reloaded guest"),
                Err(e) => tracing::error!(file = %path.display(), error = %e, "rejected the changed guest; still running the previous one"),
            }
        }
    }
}

/// Checks that `bytes` is a component of the `realm-core` world that
/// passes the built-in self-test; answers it compiled, or why not.
pub async fn validate(engine: &Wasm, sandbox: Sandbox, bytes: Vec<u8>) -> Result<runtime::Compiled, String> {
    if !bytes.starts_with(b"\0asm") {
        return Err("not a WebAssembly binary (no \\0asm header)".into());
    }
    let compiling = engine.clone();
    let compiled = tokio::task::spawn_blocking(move || runtime::compile(&compiling, &bytes))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("not a component of the realm-core world: {e:#}"))?;
    let report = selftest::run(engine, &compiled, sandbox).await;
    if report.failed() > 0 {
        return Err(format!("the guest fails the self-test:\n{}", report.table()));
    }
    Ok(compiled)
}
