//! What this replica knows of realms' files between batches: for each
//! realm, the files its recent batches read or wrote, as of the realm's
//! newest event seq when they committed. Every change to a realm's files
//! appends a realm event (and so moves the seq), so a batch that finds the
//! seq unchanged once it holds the realm's lock may trust these files
//! without reading them again. On any other seq (another replica wrote
//! the realm) the lock's read checks each file's stored version and
//! returns only those stored anew or gone; the rest stay trusted. A batch
//! takes its realm's entry for its whole run (its realm's turn makes it
//! the only user) and gives it back, brought up to date, when it commits.
//! Bounded by a byte budget; the realms used longest ago go first.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::overlay::FileState;

/// A realm's files as of one event seq (`None`: known absent).
#[derive(Debug, Default)]
pub struct KnownFiles {
    pub seq: i64,
    pub files: FileMap,
}

impl KnownFiles {
    /// Roughly the memory it holds.
    fn bytes(&self) -> usize {
        self.files.bytes()
    }
}

/// Files by path (`None`: known absent), with a running count of roughly
/// the memory they hold, so a batch that gives back a realm of thousands
/// of known files pays for the files it touched, not for all of them.
#[derive(Debug, Default)]
pub struct FileMap {
    files: HashMap<String, Option<FileState>>,
    bytes: usize,
}

/// What one known file counts for in the budget.
fn file_bytes(path: &str, state: &Option<FileState>) -> usize {
    64 + path.len() + state.as_ref().map_or(0, FileState::bytes)
}

impl FileMap {
    pub fn with_capacity(capacity: usize) -> FileMap {
        FileMap { files: HashMap::with_capacity(capacity), bytes: 0 }
    }

    pub fn get(&self, path: &str) -> Option<&Option<FileState>> {
        self.files.get(path)
    }

    pub fn contains_key(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }

    pub fn insert(&mut self, path: String, state: Option<FileState>) {
        let bytes = file_bytes(&path, &state);
        if let Some(old) = self.files.get(&path) {
            self.bytes -= file_bytes(&path, old);
        }
        self.files.insert(path, state);
        self.bytes += bytes;
    }

    pub fn remove(&mut self, path: &str) -> Option<Option<FileState>> {
        let state = self.files.remove(path)?;
        self.bytes -= file_bytes(path, &state);
        Some(state)
    }

    pub fn paths(&self) -> impl Iterator<Item = &String> {
        self.files.keys()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Roughly the memory the files hold (see [`FileState::bytes`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl FromIterator<(String, Option<FileState>)> for FileMap {
    fn from_iter<I: IntoIterator<Item = (String, Option<FileState>)>>(files: I) -> FileMap {
        let mut map = FileMap::default();
        for (path, state) in files {
            map.insert(path, state);
        }
        map
    }
}

#[cfg(test)]
impl std::ops::Index<&str> for FileMap {
    type Output = Option<FileState>;

    fn index(&self, path: &str) -> &Option<FileState> {
        &self.files[path]
    }
}

/// The replica's known files of every realm, within `budget` bytes.
pub struct KnownRealms {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    realms: HashMap<String, Entry>,
    /// The realms by when they were last given back, oldest first.
    by_use: BTreeMap<u64, String>,
    bytes: usize,
    clock: u64,
}

impl Inner {
    fn remove(&mut self, realm: &str) -> Option<Entry> {
        let entry = self.realms.remove(realm)?;
        self.by_use.remove(&entry.used);
        self.bytes -= entry.bytes;
        Some(entry)
    }
}

struct Entry {
    known: KnownFiles,
    bytes: usize,
    used: u64,
}

impl KnownRealms {
    /// A budget of 0 keeps nothing.
    pub fn new(budget: usize) -> KnownRealms {
        KnownRealms { budget, inner: Mutex::new(Inner::default()) }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Takes what is known of `realm` (for a batch that is about to hold its lock).
    pub fn take(&self, realm: &str) -> Option<KnownFiles> {
        self.inner().remove(realm).map(|entry| entry.known)
    }

    /// Keeps `known` for `realm`'s next batch, making room by dropping the
    /// realms used longest ago; something bigger than the budget is not kept.
    pub fn put(&self, realm: &str, known: KnownFiles) {
        let bytes = known.bytes() + realm.len();
        if bytes > self.budget {
            return;
        }
        let mut inner = self.inner();
        inner.remove(realm);
        while inner.bytes + bytes > self.budget {
            let Some(oldest) = inner.by_use.first_key_value().map(|(_, realm)| realm.clone()) else { break };
            inner.remove(&oldest);
        }
        inner.clock += 1;
        let used = inner.clock;
        inner.bytes += bytes;
        inner.by_use.insert(used, realm.to_string());
        inner.realms.insert(realm.to_string(), Entry { known, bytes, used });
    }

    /// Bytes held now.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.inner().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FileRow;

    fn known(seq: i64, content: &str) -> KnownFiles {
        let row = FileRow { content: content.into(), content_hash: "h".into(), created: 1, last_modified: 1, binary: false };
        KnownFiles { seq, files: [("a.txt".to_string(), Some(FileState::new(row, None))), ("gone".to_string(), None)].into_iter().collect() }
    }

    #[test]
    fn a_file_map_counts_the_bytes_of_the_files_it_holds_as_they_come_and_go() {
        let state = |content: &str| Some(FileState::new(FileRow { content: content.into(), content_hash: "h".into(), created: 1, last_modified: 1, binary: false }, None));
        let counted = |map: &FileMap| map.files.iter().map(|(path, state)| file_bytes(path, state)).sum::<usize>();
        let mut map: FileMap = [("a.txt".to_string(), state("aaaa")), ("gone".to_string(), None)].into_iter().collect();
        assert_eq!(map.bytes(), counted(&map));
        map.insert("a.txt".into(), state(&"b".repeat(1000)));
        assert_eq!(map.bytes(), counted(&map), "a file written over counts as its new version only");
        assert!(map.bytes() > 1000);
        map.insert("c.txt".into(), None);
        assert_eq!(map.remove("a.txt").flatten().map(|s| s.row.content.len()), Some(1000));
        assert!(map.remove("nothing").is_none());
        assert_eq!(map.bytes(), counted(&map));
        map.remove("gone");
        map.remove("c.txt");
        assert_eq!(map.bytes(), 0);
    }

    #[test]
    fn a_realm_is_taken_by_one_batch_and_given_back() {
        let realms = KnownRealms::new(1 << 20);
        realms.put("r1", known(3, "x"));
        let taken = realms.take("r1").expect("kept");
        assert_eq!(taken.seq, 3);
        assert!(realms.take("r1").is_none(), "one batch at a time has it");
        assert_eq!(realms.bytes(), 0);
        realms.put("r1", taken);
        assert!(realms.bytes() > 0);
    }

    #[test]
    fn the_budget_drops_the_realms_used_longest_ago() {
        let one = known(1, &"x".repeat(1000)).bytes() + 2;
        let realms = KnownRealms::new(one * 2 + 10);
        realms.put("r1", known(1, &"x".repeat(1000)));
        realms.put("r2", known(1, &"x".repeat(1000)));
        realms.put("r3", known(1, &"x".repeat(1000)));
        assert!(realms.take("r1").is_none(), "the oldest made room");
        assert!(realms.take("r2").is_some() && realms.take("r3").is_some());
        realms.put("big", known(1, &"x".repeat(10_000)));
        assert!(realms.take("big").is_none(), "bigger than the budget: not kept");
        let none = KnownRealms::new(0);
        none.put("r1", known(1, "x"));
        assert!(none.take("r1").is_none(), "a budget of 0 keeps nothing");
    }
}
