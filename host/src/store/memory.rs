//! An in-memory store with the same transactional semantics as the SQL
//! backends (writes are staged and applied at commit), so a guest can be
//! run and tested with no database at all. The per-realm queue in
//! `lock::Locks` is its write lock. Card index rows are not kept.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::rows::FileRow;

/// Committed files, keyed by (realm, path).
#[derive(Default)]
pub struct MemoryStore {
    files: Mutex<BTreeMap<(String, String), FileRow>>,
}

impl MemoryStore {
    fn committed(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), FileRow>> {
        match self.files.lock() {
            Ok(files) => files,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn read(&self, realm: &str, path: &str) -> Option<FileRow> {
        self.committed().get(&(realm.to_string(), path.to_string())).cloned()
    }
}

/// Writes staged by one held lock of `realm`: `None` marks a deletion.
pub(crate) struct Staged {
    realm: String,
    changes: BTreeMap<String, Option<FileRow>>,
}

impl Staged {
    pub fn new(realm: &str) -> Staged {
        Staged { realm: realm.to_string(), changes: BTreeMap::new() }
    }

    pub fn put(&mut self, path: &str, row: FileRow) {
        self.changes.insert(path.to_string(), Some(row));
    }

    pub fn remove(&mut self, path: &str) {
        self.changes.insert(path.to_string(), None);
    }

    pub fn apply(self, store: &MemoryStore) {
        let mut files = store.committed();
        for (path, change) in self.changes {
            let key = (self.realm.clone(), path);
            match change {
                Some(row) => files.insert(key, row),
                None => files.remove(&key),
            };
        }
    }
}
