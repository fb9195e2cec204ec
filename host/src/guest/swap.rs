//! The running guest and how it is replaced: validation (the bytes are a
//! component of the `realm-core` world and pass the self-test), the atomic
//! switch (requests in flight finish on the guest they started with), and
//! the watchers that switch every replica when another one activates a
//! guest (Postgres NOTIFY plus polling) or when a local file changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::registry::GUEST_CHANNEL;
use super::runtime::{self, Guest, Sandbox, Wasm};
use super::selftest;
use crate::lock::Locks;
use crate::store::Database;

/// The running guest and what is needed to build the next one.
pub struct Guests {
    current: ArcSwap<Guest>,
    /// Every guest compiled so far, by full hash: switching back to one is
    /// instant, and registry guests are compiled before they are activated.
    compiled: std::sync::Mutex<std::collections::HashMap<String, runtime::Compiled>>,
    engine: Wasm,
    db: Database,
    locks: Arc<Locks>,
    sandbox: Sandbox,
}

impl Guests {
    pub fn new(engine: Wasm, db: Database, locks: Arc<Locks>, sandbox: Sandbox, first: runtime::Compiled) -> Guests {
        let guest = Guest::new(&engine, &first, db.clone(), locks.clone(), sandbox);
        let compiled = std::sync::Mutex::new(std::collections::HashMap::from([(first.hash.clone(), first)]));
        Guests { current: ArcSwap::from_pointee(guest), compiled, engine, db, locks, sandbox }
    }

    fn cached(&self, hash: &str) -> Option<runtime::Compiled> {
        self.compiled.lock().ok().and_then(|cache| cache.get(hash).cloned())
    }

    fn remember(&self, compiled: &runtime::Compiled) {
        if let Ok(mut cache) = self.compiled.lock() {
            cache.insert(compiled.hash.clone(), compiled.clone());
        }
    }

    /// Compiles a registry guest (off the executor), or takes it from the cache.
    async fn compile_registered(&self, hash: &str) -> Result<runtime::Compiled, String> {
        if let Some(compiled) = self.cached(hash) {
            return Ok(compiled);
        }
        let (_, bytes) = self
            .db
            .guest_bytes(hash)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("guest {hash} is not in the registry"))?;
        let engine = self.engine.clone();
        let compiled = tokio::task::spawn_blocking(move || runtime::compile(&engine, &bytes))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{e:#}"))?;
        self.remember(&compiled);
        Ok(compiled)
    }

    /// The guest new requests run on.
    pub fn current(&self) -> Arc<Guest> {
        self.current.load_full()
    }

    /// Compiles and self-tests `bytes`, then makes it the running guest.
    /// Compilation and the self-test run off the async executor.
    pub async fn switch_to(&self, bytes: Vec<u8>) -> Result<String, String> {
        let compiled = validate(&self.engine, self.sandbox, bytes).await?;
        self.remember(&compiled);
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
        if !active.starts_with(&self.running_hash()) {
            // The deployer validated it; compile only, so every replica switches fast.
            let compiled = self.compile_registered(&active).await?;
            let guest = Guest::new(&self.engine, &compiled, self.db.clone(), self.locks.clone(), self.sandbox);
            tracing::info!(guest = %guest.short_hash, "switched to the registry's active guest");
            self.current.store(Arc::new(guest));
        }
        // Compile what was deployed but is not active yet, so activating
        // (or rolling back to) it later is instant.
        for deployed in self.db.list_guests().await.map_err(|e| e.to_string())? {
            if self.cached(&deployed.hash).is_none() {
                self.compile_registered(&deployed.hash).await?;
            }
        }
        Ok(())
    }

    /// Reloads the guest whenever `path` changes (local development).
    pub async fn watch_file(self: Arc<Self>, path: PathBuf) {
        let mut last = std::fs::read(&path).ok().map(|b| super::registry::hash_of(&b));
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let Ok(bytes) = std::fs::read(&path) else { continue };
            let hash = super::registry::hash_of(&bytes);
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
