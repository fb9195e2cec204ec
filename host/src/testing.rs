//! Run a guest component in isolation: an in-memory store (no database, no
//! network) behind the same runtime and imports the server uses. Guest
//! authors write ordinary Rust tests against their `.wasm` file:
//!
//! ```no_run
//! # async fn demo() -> Result<(), String> {
//! use realm_host::testing::GuestHarness;
//! let guest = GuestHarness::load("target/my_guest.wasm")?;
//! let merged = guest
//!     .merge(r#"{"attributes":{"a":1}}"#, r#"{"attributes":{"b":2}}"#, "http://x/realm/Card/1")
//!     .await?;
//! assert!(merged.contains("\"b\":2"));
//! let report = guest.self_test().await;
//! assert_eq!(report.failed(), 0, "{}", report.table());
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::guest::runtime::{self, Answer, Call, CardResponse, Compiled, Guest, GuestError, Sandbox, Wasm};
use crate::guest::selftest::{self, Report};
use crate::lock::{Limits, Locks};
use crate::store::{Database, MemoryStore};

/// A guest running against its own in-memory realm store.
pub struct GuestHarness {
    wasm: Wasm,
    compiled: Compiled,
    guest: Guest,
    db: Database,
}

/// What a harness call can fail with.
#[derive(Debug)]
pub enum HarnessError {
    /// The guest answered an error (the host would map it to a status).
    Guest(GuestError),
    /// The guest trapped, ran out of time or memory, or answered nonsense.
    Failed(String),
}

impl std::fmt::Display for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HarnessError::Guest(e) => write!(f, "guest error: {e:?}"),
            HarnessError::Failed(m) => write!(f, "{m}"),
        }
    }
}

impl From<HarnessError> for String {
    fn from(e: HarnessError) -> String {
        e.to_string()
    }
}

const SANDBOX: Sandbox = Sandbox::DEFAULT;

impl GuestHarness {
    /// Compiles a component file; fails if it does not fit the world.
    pub fn load(path: impl AsRef<Path>) -> Result<GuestHarness, String> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_bytes(&bytes)
    }

    /// Compiles component bytes; fails if they do not fit the world.
    pub fn from_bytes(bytes: &[u8]) -> Result<GuestHarness, String> {
        Self::on_engine(runtime::engine(SANDBOX), bytes)
    }

    /// [`GuestHarness::from_bytes`] on an engine that counts the wasm
    /// operators its calls execute ([`GuestHarness::operators`]); its calls
    /// run slower, so time them on another.
    pub fn counting(bytes: &[u8]) -> Result<GuestHarness, String> {
        Self::on_engine(runtime::counting_engine(SANDBOX), bytes)
    }

    /// The wasm operators this harness's calls have executed so far (a
    /// [`GuestHarness::counting`] harness; `None` otherwise).
    pub fn operators(&self) -> Option<u64> {
        self.wasm.operators()
    }

    fn on_engine(wasm: wasmtime::Result<runtime::Wasm>, bytes: &[u8]) -> Result<GuestHarness, String> {
        let wasm = wasm.map_err(|e| format!("cannot start wasmtime: {e}"))?;
        let compiled = runtime::compile(&wasm, bytes).map_err(|e| format!("not a component of the realm-core world: {e:#}"))?;
        let db = Database::Memory(Arc::new(MemoryStore::default()));
        let limits = Limits { card_bytes: 512 * 1024, file_bytes: 5 * 1024 * 1024 };
        let locks = Arc::new(Locks::new(Duration::from_secs(5), limits));
        let guest = Guest::new(&wasm, &compiled, db.clone(), locks, SANDBOX);
        Ok(GuestHarness { wasm, compiled, guest, db })
    }

    /// Runs the built-in self-test suite (on a fresh store of its own).
    pub async fn self_test(&self) -> Report {
        selftest::run(&self.wasm, &self.compiled, SANDBOX).await
    }

    async fn call(&self, call: Call) -> Result<Answer, HarnessError> {
        match self.guest.run(call).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(HarnessError::Guest(e)),
            Err(trap) => Err(HarnessError::Failed(format!("guest failed: {trap:#}"))),
        }
    }

    async fn text(&self, call: Call) -> Result<String, HarnessError> {
        match self.call(call).await? {
            Answer::Text(text) => Ok(text),
            _ => Err(HarnessError::Failed("unexpected answer shape".into())),
        }
    }

    async fn card(&self, call: Call) -> Result<CardResponse, HarnessError> {
        match self.call(call).await? {
            Answer::Card(card) => Ok(card),
            _ => Err(HarnessError::Failed("unexpected answer shape".into())),
        }
    }

    /// `logic.merge`: a PATCH `data` merged onto a stored resource.
    pub async fn merge(&self, original: &str, patch: &str, card_url: &str) -> Result<String, HarnessError> {
        self.text(Call::Merge { original: original.into(), patch: patch.into(), card_url: card_url.into() }).await
    }

    /// `logic.serialize`: the stored file text of a card resource.
    pub async fn serialize(&self, resource: &str, file_url: &str, realm: &str) -> Result<String, HarnessError> {
        self.text(Call::Serialize { resource: resource.into(), file_url: file_url.into(), realm: realm.into() }).await
    }

    /// `logic.validate-atomic`: the planned operations as JSON.
    pub async fn validate_atomic(&self, realm: &str, body: &str) -> Result<String, HarnessError> {
        self.text(Call::ValidateAtomic { realm: realm.into(), body: body.into() }).await
    }

    /// POST a card into `dir` of `realm` with the file name `name`.
    pub async fn create_card(&self, realm: &str, dir: &str, name: &str, body: &str) -> Result<CardResponse, HarnessError> {
        let call = Call::CreateCard { realm: realm.into(), dir: dir.into(), new_name: name.into(), body: body.into() };
        self.card(call).await
    }

    /// GET a card by its realm-local path (without `.json`).
    pub async fn get_card(&self, realm: &str, path: &str) -> Result<CardResponse, HarnessError> {
        self.card(Call::GetCard { realm: realm.into(), path: path.into() }).await
    }

    /// PATCH a card.
    pub async fn patch_card(&self, realm: &str, path: &str, body: &str) -> Result<CardResponse, HarnessError> {
        self.card(Call::PatchCard { realm: realm.into(), path: path.into(), body: body.into(), if_match: None }).await
    }

    /// POST `/_atomic`; answers the `atomic:results` document.
    pub async fn atomic(&self, realm: &str, body: &str) -> Result<String, HarnessError> {
        self.text(Call::Atomic { realm: realm.into(), body: body.into() }).await
    }

    /// The committed text of a file in the in-memory store.
    pub async fn file(&self, realm: &str, path: &str) -> Option<String> {
        self.db.read_file(realm, path).await.ok().flatten().map(|f| f.content)
    }
}

#[cfg(test)]
mod tests {
    use super::GuestHarness;
    use crate::guest::runtime::BUILTIN_GUEST;

    const REALM: &str = "http://example.test/realm/";

    #[tokio::test]
    async fn runs_the_builtin_guest_in_memory() {
        let guest = GuestHarness::from_bytes(BUILTIN_GUEST).expect("the built-in guest loads");
        let report = guest.self_test().await;
        assert_eq!(report.failed(), 0, "{}", report.table());

        let merged = guest
            .merge(r#"{"attributes":{"a":[1,2],"b":1}}"#, r#"{"attributes":{"a":[3]}}"#, &format!("{REALM}Card/1"))
            .await
            .expect("merge");
        assert_eq!(merged, r#"{"attributes":{"a":[3],"b":1}}"#);

        let body = r#"{"data":{"type":"card","attributes":{"x":1},"meta":{"adoptsFrom":{"module":"./card","name":"Card"}}}}"#;
        let created = guest.create_card(REALM, "", "one", body).await.expect("create");
        assert_eq!(created.id, format!("{REALM}Card/one"));
        let patch = r#"{"data":{"attributes":{"y":2},"meta":{"adoptsFrom":{"module":"../card","name":"Card"}}}}"#;
        guest.patch_card(REALM, "Card/one", patch).await.expect("patch");
        let stored = guest.file(REALM, "Card/one.json").await.expect("stored");
        assert!(stored.contains("\"x\": 1") && stored.contains("\"y\": 2"), "{stored}");
        assert_eq!(guest.operators(), None, "only a counting harness counts");
    }

    #[tokio::test]
    async fn a_counting_harness_counts_the_operators_of_each_call() {
        let guest = GuestHarness::counting(BUILTIN_GUEST).expect("the built-in guest loads");
        let card = format!("{REALM}Card/1");
        let mut counts = Vec::new();
        for attributes in [r#"{"a":1}"#, r#"{"a":1}"#, r#"{"a":1,"b":[1,2,3],"c":{"d":"some text"}}"#] {
            let before = guest.operators().expect("counting");
            let stored = format!(r#"{{"attributes":{attributes}}}"#);
            guest.merge(&stored, r#"{"attributes":{"a":2}}"#, &card).await.expect("merge");
            counts.push(guest.operators().expect("counting") - before);
        }
        assert!(counts[0] > 1000, "a call runs the guest: {counts:?}");
        assert_eq!(counts[0], counts[1], "the same call, the same work");
        assert!(counts[2] > counts[1], "a bigger card, more work: {counts:?}");
    }
}
