//! An in-memory [`Store`] with real transaction semantics, for tests of the
//! handlers here and anywhere else that wants a host without a database.
//!
//! - Realms spring into existence on first use; files and index rows are
//!   kept per realm, keyed by realm-local path.
//! - A [`MemoryLock`] works on a private copy of its realm; `commit`
//!   publishes the copy, dropping the lock without `commit` discards it
//!   (rollback). Taking a lock on a realm whose lock is held is
//!   `Error::LockHeld` (single-threaded, so waiting could only deadlock).
//! - Writing identical content is a no-op that keeps the metadata.
//! - ETags are `"<counter>-<fnv32 of content>"`; `created`/`last_modified`
//!   come from a fake clock the test sets.
//! - Size limits like the host's (card limit when an index row is given,
//!   file limit otherwise → `Error::PayloadTooLarge`) once set.
//! - Failures can be injected into `write` (per path) and `commit`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::store::{CardIndex, FileMeta, Store, StoredFile, WriteLock};

#[derive(Debug, Clone, Default)]
struct RealmState {
    files: BTreeMap<String, StoredFile>,
    index: BTreeMap<String, CardIndex>,
}

#[derive(Debug, Default)]
struct State {
    realms: HashMap<String, RealmState>,
    locked: HashSet<String>,
    clock: i64,
    counter: u64,
    write_calls: u64,
    commits: u64,
    fail_write: Option<String>,
    fail_commit: bool,
    /// (card bytes, file bytes)
    limits: Option<(usize, usize)>,
}

impl State {
    fn next_etag(&mut self, content: &str) -> String {
        self.counter += 1;
        format!("\"{}-{:08x}\"", self.counter, fnv32(content))
    }
}

fn fnv32(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Apply one write to a realm state (shared by locks and [`MemoryStore::put`]).
fn apply_write(
    state: &mut State,
    realm: &mut RealmState,
    path: &str,
    content: &str,
    index: Option<CardIndex>,
) -> FileMeta {
    match index {
        Some(i) => {
            realm.index.insert(path.to_string(), i);
        }
        None => {
            realm.index.remove(path);
        }
    }
    let now = state.clock;
    if let Some(old) = realm.files.get(path) {
        if old.content == content {
            return FileMeta {
                etag: old.etag.clone(),
                created: old.created,
                last_modified: old.last_modified,
                existed: true,
            };
        }
    }
    let existed = realm.files.contains_key(path);
    let created = realm.files.get(path).map_or(now, |f| f.created);
    let etag = state.next_etag(content);
    realm.files.insert(
        path.to_string(),
        StoredFile {
            content: content.to_string(),
            etag: etag.clone(),
            created,
            last_modified: now,
        },
    );
    FileMeta {
        etag,
        created,
        last_modified: now,
        existed,
    }
}

/// The in-memory host. Cloning shares the same storage.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: Rc<RefCell<State>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the fake clock (unix seconds) used for `created`/`last_modified`.
    pub fn set_clock(&self, now: i64) {
        self.state.borrow_mut().clock = now;
    }

    /// Move the fake clock forward by `seconds`.
    pub fn advance_clock(&self, seconds: i64) {
        self.state.borrow_mut().clock += seconds;
    }

    /// Write a file directly, committed, outside any lock (for seeding).
    pub fn put(
        &self,
        realm: &str,
        path: &str,
        content: &str,
        index: Option<CardIndex>,
    ) -> FileMeta {
        let mut state = self.state.borrow_mut();
        let mut realm_state = state.realms.remove(realm).unwrap_or_default();
        let meta = apply_write(&mut state, &mut realm_state, path, content, index);
        state.realms.insert(realm.to_string(), realm_state);
        meta
    }

    /// The committed file at `path`.
    pub fn file(&self, realm: &str, path: &str) -> Option<StoredFile> {
        self.state
            .borrow()
            .realms
            .get(realm)?
            .files
            .get(path)
            .cloned()
    }

    /// The committed index row of the file at `path`.
    pub fn index_row(&self, realm: &str, path: &str) -> Option<CardIndex> {
        self.state
            .borrow()
            .realms
            .get(realm)?
            .index
            .get(path)
            .cloned()
    }

    /// Every committed path of `realm`, sorted.
    pub fn paths(&self, realm: &str) -> Vec<String> {
        self.state
            .borrow()
            .realms
            .get(realm)
            .map(|r| r.files.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// How many times `WriteLock::write` was called (committed or not).
    pub fn write_calls(&self) -> u64 {
        self.state.borrow().write_calls
    }

    /// How many locks were committed.
    pub fn commits(&self) -> u64 {
        self.state.borrow().commits
    }

    /// Whether the write lock of `realm` is held right now.
    pub fn is_locked(&self, realm: &str) -> bool {
        self.state.borrow().locked.contains(realm)
    }

    /// Make every `write` to `path` fail with `Error::Storage` (`None` heals).
    pub fn fail_writes_to(&self, path: Option<&str>) {
        self.state.borrow_mut().fail_write = path.map(str::to_string);
    }

    /// Refuse writes over `card_bytes` (with an index row) or `file_bytes`
    /// (without) with `Error::PayloadTooLarge`, as the host does.
    pub fn set_limits(&self, card_bytes: usize, file_bytes: usize) {
        self.state.borrow_mut().limits = Some((card_bytes, file_bytes));
    }

    /// Make the next `commit` fail with `Error::Storage` (the lock then rolls back).
    pub fn fail_next_commit(&self) {
        self.state.borrow_mut().fail_commit = true;
    }
}

/// A held write lock of one realm of a [`MemoryStore`].
#[derive(Debug)]
pub struct MemoryLock {
    state: Rc<RefCell<State>>,
    realm: String,
    staged: RealmState,
}

impl WriteLock for MemoryLock {
    fn read(&mut self, path: &str) -> Result<Option<StoredFile>> {
        Ok(self.staged.files.get(path).cloned())
    }

    fn exists(&mut self, path: &str) -> Result<bool> {
        Ok(self.staged.files.contains_key(path))
    }

    fn write(&mut self, path: &str, content: &str, index: Option<CardIndex>) -> Result<FileMeta> {
        let mut state = self.state.borrow_mut();
        state.write_calls += 1;
        if state.fail_write.as_deref() == Some(path) {
            return Err(Error::Storage(format!("injected write failure for {path}")));
        }
        if let Some((card, file)) = state.limits {
            let (what, limit) = if index.is_some() {
                ("Card", card)
            } else {
                ("File", file)
            };
            if content.len() > limit {
                return Err(Error::PayloadTooLarge(format!(
                    "{what} size ({} bytes) exceeds maximum allowed size ({limit} bytes)",
                    content.len()
                )));
            }
        }
        Ok(apply_write(
            &mut state,
            &mut self.staged,
            path,
            content,
            index,
        ))
    }

    fn delete(&mut self, path: &str) -> Result<bool> {
        self.staged.index.remove(path);
        Ok(self.staged.files.remove(path).is_some())
    }

    fn commit(mut self) -> Result<()> {
        let mut state = self.state.borrow_mut();
        if std::mem::take(&mut state.fail_commit) {
            return Err(Error::Storage("injected commit failure".into()));
        }
        let staged = std::mem::take(&mut self.staged);
        state.realms.insert(self.realm.clone(), staged);
        state.commits += 1;
        Ok(())
    }
}

impl Drop for MemoryLock {
    fn drop(&mut self) {
        if let Ok(mut state) = self.state.try_borrow_mut() {
            state.locked.remove(&self.realm);
        }
    }
}

impl Store for MemoryStore {
    type Lock = MemoryLock;

    fn with_write_lock(&self, realm: &str) -> Result<MemoryLock> {
        let mut state = self.state.borrow_mut();
        if !state.locked.insert(realm.to_string()) {
            return Err(Error::LockHeld(format!(
                "the write lock of {realm} is already held"
            )));
        }
        let staged = state.realms.get(realm).cloned().unwrap_or_default();
        Ok(MemoryLock {
            state: Rc::clone(&self.state),
            realm: realm.to_string(),
            staged,
        })
    }

    fn read_file(&self, realm: &str, path: &str) -> Result<Option<StoredFile>> {
        Ok(self.file(realm, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "http://h/r/";

    #[test]
    fn commit_publishes_and_drop_rolls_back() {
        let store = MemoryStore::new();
        store.set_clock(10);
        let mut lock = store.with_write_lock(R).unwrap();
        let meta = lock.write("a.txt", "one", None).unwrap();
        assert_eq!(
            (meta.created, meta.last_modified, meta.existed),
            (10, 10, false)
        );
        assert!(lock.exists("a.txt").unwrap());
        assert_eq!(store.file(R, "a.txt"), None, "not visible before commit");
        lock.commit().unwrap();
        assert_eq!(store.file(R, "a.txt").unwrap().content, "one");
        assert!(!store.is_locked(R));

        let mut lock = store.with_write_lock(R).unwrap();
        lock.write("b.txt", "two", None).unwrap();
        assert!(lock.delete("a.txt").unwrap());
        drop(lock);
        assert_eq!(store.paths(R), vec!["a.txt".to_string()]);
        assert!(!store.is_locked(R));
    }

    #[test]
    fn lock_is_exclusive_and_released() {
        let store = MemoryStore::new();
        let lock = store.with_write_lock(R).unwrap();
        assert!(matches!(store.with_write_lock(R), Err(Error::LockHeld(_))));
        assert!(store.with_write_lock("http://h/other/").is_ok());
        drop(lock);
        assert!(store.with_write_lock(R).is_ok());
    }

    #[test]
    fn identical_write_keeps_metadata() {
        let store = MemoryStore::new();
        store.set_clock(1);
        let first = store.put(R, "a", "x", None);
        store.advance_clock(5);
        let mut lock = store.with_write_lock(R).unwrap();
        let same = lock.write("a", "x", None).unwrap();
        assert_eq!(
            (same.etag.as_str(), same.last_modified, same.existed),
            (first.etag.as_str(), 1, true)
        );
        let changed = lock.write("a", "y", None).unwrap();
        assert_ne!(changed.etag, first.etag);
        assert_eq!((changed.created, changed.last_modified), (1, 6));
    }

    #[test]
    fn injected_failures() {
        let store = MemoryStore::new();
        store.fail_writes_to(Some("bad"));
        let mut lock = store.with_write_lock(R).unwrap();
        assert!(matches!(
            lock.write("bad", "x", None),
            Err(Error::Storage(_))
        ));
        lock.write("good", "x", None).unwrap();
        store.fail_next_commit();
        assert!(matches!(lock.commit(), Err(Error::Storage(_))));
        assert!(store.paths(R).is_empty());
        assert!(!store.is_locked(R));
    }

    #[test]
    fn size_limits() {
        let store = MemoryStore::new();
        store.set_limits(4, 8);
        let row = CardIndex {
            id: "i".into(),
            card_type: "t".into(),
            search_doc: "{}".into(),
        };
        let mut lock = store.with_write_lock(R).unwrap();
        assert!(matches!(
            lock.write("a.json", "12345", Some(row.clone())),
            Err(Error::PayloadTooLarge(_))
        ));
        assert!(lock.write("a.json", "1234", Some(row)).is_ok());
        assert!(lock.write("b.txt", "12345678", None).is_ok());
        assert!(matches!(
            lock.write("b.txt", "123456789", None),
            Err(Error::PayloadTooLarge(_))
        ));
    }

    #[test]
    fn index_rows_follow_files() {
        let store = MemoryStore::new();
        let row = CardIndex {
            id: "http://h/r/a".into(),
            card_type: "t".into(),
            search_doc: "{}".into(),
        };
        store.put(R, "a.json", "{}", Some(row.clone()));
        assert_eq!(store.index_row(R, "a.json"), Some(row));
        let mut lock = store.with_write_lock(R).unwrap();
        lock.delete("a.json").unwrap();
        lock.commit().unwrap();
        assert_eq!(store.index_row(R, "a.json"), None);
    }
}
