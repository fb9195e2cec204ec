//! The guest runtime: one wasmtime `Engine` and a pre-instantiated guest
//! per process, a fresh `Store` per call, and the `store` imports that give
//! the guest lock-free reads and a realm's write lock — nothing else.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, InstancePre, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolConcurrencyLimitError, PoolingAllocationConfig, Store, UpdateDeadline};

use super::clock::{Charged, GuestClock, InHost};
use super::exports::{call_export, Exports};
use crate::auth::Denied;
use crate::lock::{IndexRow, Locks, WriteError, WriteTxn};
use crate::store::{etag_of, Database, FileRow};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "realm-core",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "boxel:realm/store.write-lock": crate::lock::WriteTxn,
    },
});

pub use boxel::realm::types::{CardResponse, Error as GuestError, FileMeta};
use boxel::realm::types::{AtomicError, CardIndex, StoredFile};

/// The built-in guest, compiled from `guest/` by `build.rs`.
pub static BUILTIN_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/realm_guest.wasm"));

/// How much a guest call may use.
#[derive(Clone, Copy, Debug)]
pub struct Sandbox {
    /// Time the guest itself may run per call (time spent in host imports,
    /// such as waiting for a lock, does not count).
    pub cpu: Duration,
    /// Largest linear memory of a guest instance.
    pub memory_bytes: usize,
    /// Guest instances that may exist at once (the pool's size).
    pub instances: u32,
    /// How long a call waits for a free instance before it is refused (503).
    pub instance_wait: Duration,
}

impl Sandbox {
    pub const DEFAULT: Sandbox = Sandbox {
        cpu: Duration::from_secs(1),
        memory_bytes: 128 << 20,
        instances: 1000,
        instance_wait: Duration::from_secs(10),
    };
}

/// How often the engine's epoch advances; the granularity of `Sandbox::cpu`.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Fuel is one unit per operator (counting engines only); this much never
/// runs out.
const FUEL: u64 = u64::MAX / 2;

/// How long a call that found the instance pool full waits before it tries
/// again (see `Guest::run_for`).
const POOL_RETRY_PAUSE: Duration = Duration::from_millis(1);

/// What the host lets one guest call touch.
pub struct CallState {
    table: ResourceTable,
    db: Database,
    locks: Arc<Locks>,
    /// The realm the request addressed: the only one whose lock the guest
    /// may take (`None` for calls that write nothing).
    realm: Option<String>,
    /// Realms whose lock this call holds, with the handle's table slot.
    held: Vec<(String, u32)>,
    clock: Arc<GuestClock>,
    cpu_budget: Duration,
    /// Files of the call's realm the host has already read for it (a
    /// search page): `read-file` answers them without a query, once each.
    prefetched: HashMap<String, FileRow>,
    /// Who made the request, as its write lock needs to know.
    caller: Caller,
    /// The write lock refused the caller (the realm's permissions, read
    /// under its lock, do not let it write): the request is answered so,
    /// whatever the guest says.
    refused: Option<Denied>,
    /// The paths the call will read under the lock (read ahead with the
    /// other queued writers' paths).
    hints: Vec<String>,
    /// A write lock ended after reading a batch-mate's write, and that
    /// batch failed: whatever the guest answers was computed on writes that
    /// never happened.
    batch_failed: Option<WriteError>,
}

/// A loaded guest, ready to be instantiated per call.
pub struct Guest {
    wasm: Wasm,
    pre: InstancePre<CallState>,
    exports: Exports,
    db: Database,
    locks: Arc<Locks>,
    sandbox: Sandbox,
    /// First 12 hex digits of the component's SHA-256.
    pub short_hash: String,
}

/// Who a request is, as the write lock sees it.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    /// The request's `X-Boxel-Client-Request-Id`, for its realm event.
    pub client_request_id: Option<String>,
    /// The user whose grant let the request in (`None`: anyone's).
    pub user: Option<String>,
}

/// One request to the guest.
pub enum Call {
    GetCard { realm: String, path: String },
    /// `get-card` for each path in turn, on one instance; `prefetched`
    /// holds files already read (by realm-local path).
    GetCards { realm: String, paths: Vec<String>, prefetched: HashMap<String, FileRow> },
    CreateCard { realm: String, dir: String, new_name: String, body: String },
    PatchCard { realm: String, path: String, body: String, if_match: Option<String> },
    DeleteCard { realm: String, path: String, if_match: Option<String> },
    WriteSource { realm: String, path: String, content: String, if_match: Option<String> },
    DeleteSource { realm: String, path: String, if_match: Option<String> },
    Atomic { realm: String, body: String },
    Merge { original: String, patch: String, card_url: String },
    Serialize { resource: String, file_url: String, realm: String },
    ValidateAtomic { realm: String, body: String },
    /// Type-checks every export against the world (a call checks only the
    /// export it makes), answering `Done`; the self-test's first case.
    CheckExports,
}

/// What the guest answered.
pub enum Answer {
    Card(CardResponse),
    File(FileMeta),
    Text(String),
    Done,
    /// One answer per path of a `GetCards`, in order.
    Cards(Vec<Result<CardResponse, GuestError>>),
}

/// The process's one wasmtime engine and the slots of its instance pool.
#[derive(Clone)]
pub struct Wasm {
    pub engine: Engine,
    /// One permit per pooled component instance: a call waits here rather
    /// than fail when every instance is in use (e.g. waiting for locks).
    slots: Arc<tokio::sync::Semaphore>,
    /// Where compiled guests are kept between starts, if anywhere.
    compile_cache: Option<std::path::PathBuf>,
    /// With [`counting_engine`]: the wasm operators guests have executed.
    operators: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Calls that found the instance pool full although they held a permit
    /// and tried again.
    pool_retries: Arc<std::sync::atomic::AtomicU64>,
}

impl Wasm {
    /// The wasm operators executed by calls so far, if this is a
    /// [`counting_engine`].
    pub fn operators(&self) -> Option<u64> {
        self.operators.as_ref().map(|n| n.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// How many times a call found the instance pool full and tried again.
    pub fn pool_retries(&self) -> u64 {
        self.pool_retries.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Keeps compiled guests in `dir` (see `compile_cache`).
    pub fn with_compile_cache(mut self, dir: Option<std::path::PathBuf>) -> Wasm {
        self.compile_cache = dir;
        self
    }
}

impl Call {
    /// The realm this call serves, whose write lock it may take.
    fn realm(&self) -> Option<&str> {
        match self {
            Call::GetCard { realm, .. }
            | Call::GetCards { realm, .. }
            | Call::CreateCard { realm, .. }
            | Call::PatchCard { realm, .. }
            | Call::DeleteCard { realm, .. }
            | Call::WriteSource { realm, .. }
            | Call::DeleteSource { realm, .. }
            | Call::Atomic { realm, .. } => Some(realm),
            Call::Merge { .. } | Call::Serialize { .. } | Call::ValidateAtomic { .. } | Call::CheckExports => None,
        }
    }

    /// The realm-local paths this call will read under the write lock, as
    /// far as the host can tell (a hint: a wrong one costs a read, no more).
    fn hints(&self) -> Vec<String> {
        match self {
            Call::PatchCard { path, .. } | Call::DeleteCard { path, .. } => {
                let card = path.strip_suffix(".json").unwrap_or(path);
                vec![format!("{}.json", if card.is_empty() { "index" } else { card })]
            }
            Call::WriteSource { path, .. } | Call::DeleteSource { path, .. } => vec![path.clone()],
            _ => Vec::new(),
        }
    }
}

/// The process's one engine: pooling allocator, epoch interruption (with a
/// ticker thread), guest memories capped at `sandbox.memory_bytes`.
pub fn engine(sandbox: Sandbox) -> wasmtime::Result<Wasm> {
    engine_with(sandbox, false)
}

/// [`engine`] that also counts the wasm operators every call executes
/// (wasmtime's fuel; see [`Wasm::operators`]): a measure of a guest's work
/// that does not depend on the machine's speed, for benchmarks. The
/// counting slows the calls down, so servers never use it.
pub fn counting_engine(sandbox: Sandbox) -> wasmtime::Result<Wasm> {
    engine_with(sandbox, true)
}

fn engine_with(sandbox: Sandbox, count_operators: bool) -> wasmtime::Result<Wasm> {
    let mut pooling = PoolingAllocationConfig::default();
    // A component instance holds a few core instances (the module and its
    // adapter shims) but one linear memory.
    let slots = sandbox.instances.max(1);
    pooling.total_component_instances(slots);
    pooling.total_core_instances(slots * 8);
    pooling.total_memories(slots);
    pooling.total_tables(slots * 2);
    pooling.max_memory_size(sandbox.memory_bytes);
    // Reused slots are reset in place rather than unmapped: a fresh
    // instance per request then costs no page faults for its first pages.
    // Only the resident pages (pagemap scan, Linux 6.7+) of this much are
    // reset by hand: a page once written stays resident, so a larger
    // figure makes every later call in a slot pay for its biggest one
    // (measured: 256 KiB beat 1 and 4 MiB on the PATCH load and on calls
    // after a 100 KB card); the rest is given back with madvise.
    pooling.linear_memory_keep_resident(256 << 10);
    pooling.pagemap_scan(wasmtime::Enabled::Auto);
    pooling.table_keep_resident(64 << 10);
    pooling.async_stack_keep_resident(256 << 10);
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.consume_fuel(count_operators);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    let engine = Engine::new(&config)?;
    let ticking = engine.weak();
    std::thread::Builder::new()
        .name("epoch-ticker".into())
        .spawn(move || {
            while let Some(engine) = ticking.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map_err(|e| wasmtime::format_err!("cannot start the epoch ticker: {e}"))?;
    Ok(Wasm {
        engine,
        slots: Arc::new(tokio::sync::Semaphore::new(slots as usize)),
        compile_cache: None,
        operators: count_operators.then(Arc::default),
        pool_retries: Arc::default(),
    })
}

/// A compiled component that type-checks against the `realm-core` world.
#[derive(Clone)]
pub struct Compiled {
    pre: InstancePre<CallState>,
    exports: Exports,
    /// Hex SHA-256 of the component bytes.
    pub hash: String,
}

/// Compiles and links a component; fails with the reason when the bytes are
/// not a component or do not fit the world (its imports type-check and it
/// has every export; `Call::CheckExports` checks the exports' types).
pub fn compile(wasm: &Wasm, bytes: &[u8]) -> wasmtime::Result<Compiled> {
    let component = super::compile_cache::component(wasm.compile_cache.as_deref(), &wasm.engine, bytes)?;
    let mut linker = Linker::<CallState>::new(&wasm.engine);
    RealmCore::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |state| state)?;
    let pre = linker.instantiate_pre(&component)?;
    let exports = Exports::find(&pre)?;
    Ok(Compiled { pre, exports, hash: super::registry::hash_of(bytes) })
}

impl Guest {
    /// A compiled guest bound to a store.
    pub fn new(wasm: &Wasm, compiled: &Compiled, db: Database, locks: Arc<Locks>, sandbox: Sandbox) -> Guest {
        Guest {
            wasm: wasm.clone(),
            pre: compiled.pre.clone(),
            exports: compiled.exports.clone(),
            db,
            locks,
            sandbox,
            short_hash: compiled.hash[..12].to_string(),
        }
    }

    /// Runs one call in a fresh store. `Ok(Err(_))` is the guest's own
    /// answer; `Err(_)` is a trap or a host failure. Any write lock the
    /// guest still holds afterwards is rolled back before this returns.
    pub async fn run(&self, call: Call) -> wasmtime::Result<Result<Answer, GuestError>> {
        self.run_for(call, Caller::default()).await
    }

    /// `run` for a known caller: its write lock checks that the caller may
    /// write (an error that downcasts to [`Denied`] when not), and the realm
    /// event of its writes carries its `X-Boxel-Client-Request-Id`.
    pub async fn run_for(&self, call: Call, caller: Caller) -> wasmtime::Result<Result<Answer, GuestError>> {
        let slot = tokio::time::timeout(self.sandbox.instance_wait, self.wasm.slots.acquire()).await;
        let _slot = match slot {
            Ok(slot) => slot.map_err(|_| wasmtime::format_err!("the guest runtime is shutting down"))?,
            Err(_) => {
                return Ok(Err(GuestError::Unavailable(format!(
                    "the server is busy: no guest instance became free within {:?}; retry",
                    self.sandbox.instance_wait
                ))))
            }
        };
        let clock = Arc::new(GuestClock::default());
        let (call, prefetched) = match call {
            Call::GetCards { realm, paths, prefetched } => (Call::GetCards { realm, paths, prefetched: HashMap::new() }, prefetched),
            call => (call, HashMap::new()),
        };
        let mut state = self.call_state(&call, caller, clock.clone(), prefetched);
        // wasmtime's pool probes its shards one after another, so a call can
        // find it full while another call frees a slot in a shard it has
        // already probed. A call holding a permit always has a slot free
        // somewhere, so it tries again in a fresh store (the guest has not
        // run: the pool is only drawn on to instantiate and to start a call).
        let deadline = tokio::time::Instant::now() + self.sandbox.instance_wait;
        let (mut store, outcome) = loop {
            let mut store = self.store(state)?;
            let outcome = Charged { clock: clock.clone(), call: Box::pin(self.invoke(&mut store, &call)) }.await;
            match &outcome {
                Err(e) if e.is::<PoolConcurrencyLimitError>() && store.data().untouched() => {
                    self.wasm.pool_retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if tokio::time::Instant::now() >= deadline {
                        return Ok(Err(GuestError::Unavailable(format!(
                            "the server is busy: the guest instance pool stayed full for {:?}; retry",
                            self.sandbox.instance_wait
                        ))));
                    }
                    state = store.into_data();
                    tokio::time::sleep(POOL_RETRY_PAUSE).await;
                }
                _ => break (store, outcome),
            }
        };
        if let Some(operators) = &self.wasm.operators {
            operators.fetch_add(FUEL - store.get_fuel()?, std::sync::atomic::Ordering::Relaxed);
        }
        store.data_mut().release_all().await;
        if let Some(refused) = store.data_mut().refused.take() {
            return Err(wasmtime::Error::new(refused));
        }
        match store.data_mut().batch_failed.take() {
            Some(failed) if outcome.is_ok() => Ok(Err(guest_error(failed))),
            _ => outcome,
        }
    }

    /// What the host lets `call` touch, for `caller`.
    fn call_state(&self, call: &Call, caller: Caller, clock: Arc<GuestClock>, prefetched: HashMap<String, FileRow>) -> CallState {
        CallState {
            table: ResourceTable::new(),
            db: self.db.clone(),
            locks: self.locks.clone(),
            realm: call.realm().map(str::to_string),
            held: Vec::new(),
            clock,
            cpu_budget: self.sandbox.cpu,
            prefetched,
            caller,
            refused: None,
            hints: call.hints(),
            batch_failed: None,
        }
    }

    /// A fresh store for one call: its CPU budget checked at every epoch
    /// tick, and fuel when this engine counts operators.
    fn store(&self, state: CallState) -> wasmtime::Result<Store<CallState>> {
        let mut store = Store::new(&self.wasm.engine, state);
        // At every epoch tick, check the guest's own running time; yield to
        // the executor so a busy guest never starves other requests.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|context| {
            let state = context.data();
            if state.clock.used() > state.cpu_budget {
                Err(wasmtime::format_err!("the guest ran for more than its {:?} budget", state.cpu_budget))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        if self.wasm.operators.is_some() {
            store.set_fuel(FUEL)?;
        }
        Ok(store)
    }

    async fn invoke(&self, store: &mut Store<CallState>, call: &Call) -> wasmtime::Result<Result<Answer, GuestError>> {
        let instance = self.pre.instantiate_async(&mut *store).await?;
        // Instantiating is the host's work, not the guest's.
        store.data().clock.reset();
        let (e, i) = (&self.exports, &instance);
        // One arm per WIT export: alike in shape, each calls its own export.
        Ok(match call {
            Call::GetCard { realm, path } => {
                call_export::<_, _, Result<CardResponse, GuestError>>(store, i, &e.get_card, (realm.as_str(), path.as_str())).await?.map(Answer::Card)
            }
            Call::GetCards { realm, paths, .. } => {
                let func = i.get_typed_func::<(&str, &str), (Result<CardResponse, GuestError>,)>(&mut *store, &e.get_card)?;
                let mut cards = Vec::with_capacity(paths.len());
                for path in paths {
                    cards.push(func.call_async(&mut *store, (realm.as_str(), path.as_str())).await?.0);
                }
                Ok(Answer::Cards(cards))
            }
            Call::CreateCard { realm, dir, new_name, body } => call_export::<_, _, Result<CardResponse, GuestError>>(
                store,
                i,
                &e.create_card,
                (realm.as_str(), dir.as_str(), new_name.as_str(), body.as_str()),
            )
            .await?
            .map(Answer::Card),
            Call::PatchCard { realm, path, body, if_match } => call_export::<_, _, Result<CardResponse, GuestError>>(
                store,
                i,
                &e.patch_card,
                (realm.as_str(), path.as_str(), body.as_str(), if_match.as_deref()),
            )
            .await?
            .map(Answer::Card),
            Call::DeleteCard { realm, path, if_match } => {
                call_export::<_, _, Result<(), GuestError>>(store, i, &e.delete_card, (realm.as_str(), path.as_str(), if_match.as_deref()))
                    .await?
                    .map(|()| Answer::Done)
            }
            Call::WriteSource { realm, path, content, if_match } => call_export::<_, _, Result<FileMeta, GuestError>>(
                store,
                i,
                &e.write_source,
                (realm.as_str(), path.as_str(), content.as_str(), if_match.as_deref()),
            )
            .await?
            .map(Answer::File),
            Call::DeleteSource { realm, path, if_match } => {
                call_export::<_, _, Result<(), GuestError>>(store, i, &e.delete_source, (realm.as_str(), path.as_str(), if_match.as_deref()))
                    .await?
                    .map(|()| Answer::Done)
            }
            Call::Atomic { realm, body } => {
                call_export::<_, _, Result<String, GuestError>>(store, i, &e.atomic, (realm.as_str(), body.as_str())).await?.map(Answer::Text)
            }
            Call::Merge { original, patch, card_url } => {
                call_export::<_, _, Result<String, GuestError>>(store, i, &e.merge, (original.as_str(), patch.as_str(), card_url.as_str()))
                    .await?
                    .map(Answer::Text)
            }
            Call::Serialize { resource, file_url, realm } => {
                call_export::<_, _, Result<String, GuestError>>(store, i, &e.serialize, (resource.as_str(), file_url.as_str(), realm.as_str()))
                    .await?
                    .map(Answer::Text)
            }
            Call::ValidateAtomic { realm, body } => {
                call_export::<_, _, Result<String, GuestError>>(store, i, &e.validate_atomic, (realm.as_str(), body.as_str()))
                    .await?
                    .map(Answer::Text)
            }
            Call::CheckExports => {
                // bindgen's loader type-checks all of them, with its own types.
                RealmCoreIndices::new(&self.pre)?.load(&mut *store, i)?;
                Ok(Answer::Done)
            }
        })
    }
}

impl CallState {
    /// Nothing has happened in the call's name yet: no lock taken, no
    /// refusal, no batch joined.
    fn untouched(&self) -> bool {
        self.held.is_empty() && self.refused.is_none() && self.batch_failed.is_none()
    }

    /// Rolls back every lock the guest left open (it returned without
    /// committing, or trapped).
    async fn release_all(&mut self) {
        for (_, rep) in std::mem::take(&mut self.held) {
            if let Ok(txn) = self.table.delete(Resource::<WriteTxn>::new_own(rep)) {
                self.end(txn).await;
            }
        }
    }

    /// Ends a lock the guest did not commit: its writes are forgotten.
    async fn end(&mut self, txn: WriteTxn) {
        let host = InHost::enter(&self.clock);
        if let Err(e) = txn.rollback().await {
            self.batch_failed = Some(e);
        }
        drop(host);
    }

    fn forget(&mut self, rep: u32) {
        self.held.retain(|(_, held)| *held != rep);
    }

    fn txn(&mut self, lock: &Resource<WriteTxn>) -> wasmtime::Result<&mut WriteTxn> {
        Ok(self.table.get_mut(lock)?)
    }
}

fn guest_error(e: WriteError) -> GuestError {
    match e {
        WriteError::LockTimeout(m) => GuestError::LockTimeout(m),
        WriteError::TooLarge(m) => GuestError::PayloadTooLarge(m),
        WriteError::Invalid(m) => GuestError::BadRequest(m),
        WriteError::Unavailable(m) => GuestError::Unavailable(m),
        WriteError::Storage(m) => GuestError::Storage(m),
    }
}

fn stored(row: crate::store::FileRow) -> StoredFile {
    StoredFile { etag: row.etag(), created: row.created, last_modified: row.last_modified, content: row.content }
}

impl boxel::realm::types::Host for CallState {}

impl boxel::realm::store::Host for CallState {
    async fn with_write_lock(&mut self, realm: String) -> wasmtime::Result<Result<Resource<WriteTxn>, GuestError>> {
        if self.held.iter().any(|(held, _)| *held == realm) {
            return Ok(Err(GuestError::LockHeld(format!(
                "this call already holds the write lock of {realm}; use that handle"
            ))));
        }
        if self.realm.as_deref() != Some(realm.as_str()) {
            // A guest may only lock the realm the request addressed.
            return Err(wasmtime::format_err!(
                "the guest asked for the write lock of {realm} while serving {}",
                self.realm.as_deref().unwrap_or("a call that may not write")
            ));
        }
        let host = InHost::enter(&self.clock);
        let acquired = self.locks.acquire_for(&self.db, &realm, self.hints.clone()).await;
        drop(host);
        let txn = match acquired {
            Ok(txn) => txn,
            Err(e) => return Ok(Err(guest_error(e))),
        };
        let mut txn = txn;
        if !txn.may_write(self.caller.user.as_deref()) {
            // Let in by permissions read before; those read under the lock
            // say no. Nothing was written: dropping the lock forgets it.
            self.refused = Some(crate::auth::write_refused(self.caller.user.as_deref(), &realm));
            drop(txn);
            return Ok(Err(GuestError::Unavailable(format!("the caller may not write {realm}"))));
        }
        txn.set_client_request_id(self.caller.client_request_id.clone());
        let lock = self.table.push(txn)?;
        self.held.push((realm, lock.rep()));
        Ok(Ok(lock))
    }

    async fn read_file(&mut self, realm: String, path: String) -> wasmtime::Result<Result<Option<StoredFile>, GuestError>> {
        if self.realm.as_deref() == Some(realm.as_str()) {
            if let Some(row) = self.prefetched.remove(&path) {
                return Ok(Ok(Some(stored(row))));
            }
        }
        let host = InHost::enter(&self.clock);
        let read = self.db.read_file(&realm, &path).await;
        drop(host);
        Ok(match read {
            Ok(row) => Ok(row.map(stored)),
            Err(e) if e.is_unavailable() => Err(GuestError::Unavailable(e.to_string())),
            Err(e) => Err(GuestError::Storage(e.to_string())),
        })
    }
}

impl boxel::realm::store::HostWriteLock for CallState {
    async fn read(&mut self, lock: Resource<WriteTxn>, path: String) -> wasmtime::Result<Result<Option<StoredFile>, GuestError>> {
        let host = InHost::enter(&self.clock);
        let read = self.txn(&lock)?.read(&path).await;
        drop(host);
        Ok(read.map(|row| row.map(stored)).map_err(guest_error))
    }

    async fn exists(&mut self, lock: Resource<WriteTxn>, path: String) -> wasmtime::Result<Result<bool, GuestError>> {
        let host = InHost::enter(&self.clock);
        let found = self.txn(&lock)?.exists(&path).await;
        drop(host);
        Ok(found.map_err(guest_error))
    }

    async fn prefetch(&mut self, lock: Resource<WriteTxn>, paths: Vec<String>) -> wasmtime::Result<Result<(), GuestError>> {
        let host = InHost::enter(&self.clock);
        let read = self.txn(&lock)?.prefetch(&paths).await;
        drop(host);
        Ok(read.map_err(guest_error))
    }

    async fn write(
        &mut self,
        lock: Resource<WriteTxn>,
        path: String,
        content: String,
        index: Option<CardIndex>,
    ) -> wasmtime::Result<Result<FileMeta, GuestError>> {
        let index = index.map(|i| IndexRow { card_id: i.id, card_type: i.card_type, search_doc: i.search_doc });
        let host = InHost::enter(&self.clock);
        let written = self.txn(&lock)?.write(&path, &content, index).await;
        drop(host);
        Ok(written.map_err(guest_error).map(|w| FileMeta {
            etag: etag_of(&w.content_hash),
            created: w.created,
            last_modified: w.last_modified,
            existed: w.existed,
        }))
    }

    async fn delete(&mut self, lock: Resource<WriteTxn>, path: String) -> wasmtime::Result<Result<bool, GuestError>> {
        let host = InHost::enter(&self.clock);
        let deleted = self.txn(&lock)?.delete(&path).await;
        drop(host);
        Ok(deleted.map_err(guest_error))
    }

    async fn commit(&mut self, lock: Resource<WriteTxn>) -> wasmtime::Result<Result<(), GuestError>> {
        self.forget(lock.rep());
        let txn = self.table.delete(lock)?;
        let host = InHost::enter(&self.clock);
        let committed = txn.commit().await;
        drop(host);
        Ok(committed.map_err(guest_error))
    }

    async fn drop(&mut self, lock: Resource<WriteTxn>) -> wasmtime::Result<()> {
        self.forget(lock.rep());
        let txn = self.table.delete(lock)?;
        self.end(txn).await;
        Ok(())
    }
}

/// The HTTP status of each atomic error kind.
pub fn atomic_status(e: &AtomicError) -> u16 {
    use boxel::realm::types::AtomicErrorKind as K;
    match e.kind {
        K::BadRequest => 400,
        K::NotFound => 404,
        K::Conflict => 409,
        K::PayloadTooLarge => 413,
        K::Unprocessable => 422,
    }
}

pub use boxel::realm::types::AtomicError as GuestAtomicError;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::Limits;
    use crate::store::MemoryStore;

    /// A guest on a pool of one instance, with `instance_wait` to wait.
    fn guest_with_one_instance(instance_wait: Duration) -> Arc<Guest> {
        let sandbox = Sandbox { instances: 1, instance_wait, ..Sandbox::DEFAULT };
        let wasm = engine(sandbox).expect("engine");
        let compiled = compile(&wasm, BUILTIN_GUEST).expect("the built-in guest compiles");
        let db = Database::Memory(Arc::new(MemoryStore::default()));
        let locks = Arc::new(Locks::new(Duration::from_secs(5), Limits { card_bytes: 1 << 20, file_bytes: 1 << 20 }));
        Arc::new(Guest::new(&wasm, &compiled, db, locks, sandbox))
    }

    /// An instance made outside the permits, so the pool is full while a
    /// permit is free: what a call sees when wasmtime's probe of its shards
    /// misses the slot another call just freed.
    async fn instance_outside_the_permits(guest: &Guest) -> Store<CallState> {
        let state = guest.call_state(&merge(), Caller::default(), Arc::default(), HashMap::new());
        let mut store = guest.store(state).expect("store");
        guest.pre.instantiate_async(&mut store).await.expect("the pool's one instance");
        store
    }

    fn merge() -> Call {
        Call::Merge {
            original: r#"{"attributes":{"a":1}}"#.into(),
            patch: r#"{"attributes":{"b":2}}"#.into(),
            card_url: "http://x/realm/Card/1".into(),
        }
    }

    #[tokio::test]
    async fn a_call_holding_a_permit_that_finds_the_pool_full_tries_again_until_a_slot_is_free() {
        let guest = guest_with_one_instance(Duration::from_secs(60));
        let outside = instance_outside_the_permits(&guest).await;
        let call = tokio::spawn({
            let guest = guest.clone();
            async move { guest.run(merge()).await }
        });
        while guest.wasm.pool_retries() == 0 && !call.is_finished() {
            tokio::task::yield_now().await;
        }
        drop(outside);
        match call.await.expect("call task") {
            Ok(Ok(Answer::Text(merged))) => assert!(merged.contains(r#""b":2"#), "{merged}"),
            Ok(Ok(_)) => panic!("a merge answered another shape"),
            Ok(Err(e)) => panic!("the guest refused: {e:?}"),
            Err(e) => panic!("the call failed instead of trying again: {e:?}"),
        }
    }

    #[tokio::test]
    async fn a_pool_that_stays_full_for_the_instance_wait_answers_unavailable() {
        let guest = guest_with_one_instance(Duration::from_millis(50));
        let _outside = instance_outside_the_permits(&guest).await;
        match guest.run(merge()).await {
            Ok(Err(GuestError::Unavailable(message))) => assert!(message.contains("pool"), "{message}"),
            Ok(other) => panic!("expected unavailable, got {:?}", other.map(|_| "an answer")),
            Err(e) => panic!("expected unavailable, got a failure: {e:?}"),
        }
        assert!(guest.wasm.pool_retries() > 1);
    }
}
