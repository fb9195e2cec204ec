//! The batch overlay: what a realm's open batch knows of its files, in
//! memory. Members of a batch run one after another against it: a read is
//! served from the member's own writes, else from the overlay (the batch's
//! committed members and every row already read from the database), and
//! only a path nobody has seen yet costs a database read. A member's
//! writes are buffered ([`Member`]); [`RealmBatch::absorb`] adds them to
//! the overlay when the member commits, and dropping a member forgets them
//! (no savepoints). At the end of the batch, [`RealmBatch::changes`] is
//! what the flush writes: each changed path once, in its final state, and
//! the search rows that differ from what the database holds. No SQL here.

use std::cmp::Ordering;
use std::collections::HashMap;

use super::known::FileMap;
use super::outbox::Changes;
use crate::search::fields::{changed_rows, fields_of, FieldRow};
use crate::search::index::SEARCH_VERSION;
use crate::store::{FileRow, Permissions};

/// The card-index row of a card file.
#[derive(Clone, Debug, PartialEq)]
pub struct CardRow {
    pub card_id: String,
    pub card_type: String,
    pub search_doc: String,
    /// Which `SEARCH_VERSION` built the stored `card_fields` rows (rows
    /// this build writes are always the current one).
    pub version: i64,
}

/// A file as a batch knows it: the row, and its card-index row if it is a card.
#[derive(Clone, Debug)]
pub struct FileState {
    pub row: FileRow,
    pub card: Option<CardRow>,
}

impl FileState {
    pub fn new(row: FileRow, card: Option<CardRow>) -> FileState {
        FileState { row, card }
    }

    /// Roughly the memory it holds (for the budget of the files a replica
    /// keeps between batches).
    pub fn bytes(&self) -> usize {
        let row = self.row.content.len() + self.row.content_hash.len() + 64;
        row + self.card.as_ref().map_or(0, |c| c.card_id.len() + c.card_type.len() + c.search_doc.len() + 32)
    }

    /// Every search row of a card file as this build derives them, sorted
    /// by [`key`] (none for other files).
    fn rows(&self) -> Vec<FieldRow> {
        let mut rows = match &self.card {
            Some(card) if !self.row.binary => fields_of(&self.row.content, &card.card_id),
            _ => Vec::new(),
        };
        sort_by_key(&mut rows);
        rows
    }

    /// The rows of this card's parts that differ in `new` (this file's
    /// next version), this one's and `new`'s, each sorted by [`key`]; None
    /// when they cannot be told apart by part (see [`changed_rows`]) or
    /// either is not a card of the same URL.
    fn changed_rows(&self, new: &FileState) -> Option<(Vec<FieldRow>, Vec<FieldRow>)> {
        let (Some(was), Some(now)) = (&self.card, &new.card) else { return None };
        if self.row.binary || new.row.binary || was.card_id != now.card_id {
            return None;
        }
        let (mut old, mut new) = changed_rows(&self.row.content, &new.row.content, &now.card_id)?;
        sort_by_key(&mut old);
        sort_by_key(&mut new);
        Some((old, new))
    }

    /// Same bytes, same times, same kind: writing one over the other changes nothing.
    fn same_file(&self, other: &FileState) -> bool {
        let (a, b) = (&self.row, &other.row);
        a.content_hash == b.content_hash && a.created == b.created && a.last_modified == b.last_modified && a.binary == b.binary
    }
}

/// One path of a batch: as the database holds it (`base`, read once) and
/// as the batch's committed members left it (`current`).
#[derive(Clone, Debug)]
struct Entry {
    base: Option<FileState>,
    current: Option<FileState>,
    /// Written by a committed member of this batch (not yet in the database).
    dirty: bool,
}

/// A path's state as a member sees it, and whether that state is a
/// batch-mate's uncommitted write.
pub struct Seen<'a> {
    pub state: Option<&'a FileState>,
    pub uncommitted: bool,
}

/// One member's buffered writes, in order; the last write of a path wins.
#[derive(Default)]
pub struct Member {
    writes: HashMap<String, Option<FileState>>,
    order: Vec<String>,
    /// What the member changed, for its realm event.
    pub changes: Changes,
    /// It read a batch-mate's write that is not committed yet: its answer
    /// stands only once the batch commits.
    pub saw_uncommitted: bool,
}

impl Member {
    pub fn put(&mut self, path: &str, state: Option<FileState>) {
        if self.writes.insert(path.to_string(), state).is_none() {
            self.order.push(path.to_string());
        }
    }

    pub fn get(&self, path: &str) -> Option<&Option<FileState>> {
        self.writes.get(path)
    }

    pub fn wrote(&self) -> bool {
        !self.writes.is_empty()
    }

    /// The paths written, in order.
    pub fn paths(&self) -> impl Iterator<Item = String> + '_ {
        self.order.iter().cloned()
    }
}

/// What a realm's batch knows, and the events of its committed members.
#[derive(Default)]
pub struct RealmBatch {
    /// Who may do what in the realm, as read under its lock (`None`: not
    /// known here, the in-memory store keeps no permissions).
    access: Option<HashMap<String, Permissions>>,
    entries: HashMap<String, Entry>,
    /// Event payloads of the committed members, in commit order.
    events: Vec<String>,
    /// Paths in the order they were first changed (so a flush is deterministic).
    changed: Vec<String>,
    /// The realm's newest event seq when the batch took its lock (`None`:
    /// not known; the in-memory store keeps no events).
    seq: Option<i64>,
    /// Files the replica already knew as of `seq` (see `known.rs`): served
    /// like rows read from the database, without reading them.
    known: FileMap,
}

impl RealmBatch {
    /// A batch of a realm whose permissions were read under its lock.
    pub fn with_access(access: Option<Vec<(String, Permissions)>>) -> RealmBatch {
        RealmBatch { access: access.map(|rows| rows.into_iter().collect()), ..RealmBatch::default() }
    }

    /// A batch that started at the realm's event seq `seq` (read with the
    /// lock), trusting `known`: files as of that same seq.
    pub fn at_seq(mut self, seq: Option<i64>, known: FileMap) -> RealmBatch {
        self.seq = seq;
        self.known = if seq.is_some() { known } else { FileMap::default() };
        self
    }

    /// Whether `user` (`None`: anyone) may write the realm, by what its
    /// lock holder read: the user's grant with anyone's.
    pub fn may_write(&self, user: Option<&str>) -> bool {
        let Some(access) = &self.access else { return true };
        let anyone = access.get("*").copied().unwrap_or_default();
        let granted = user.and_then(|u| access.get(u)).copied().unwrap_or_default().union(anyone);
        granted.write || granted.realm_owner
    }

    /// What the batch knows of `path`, if it has seen it.
    pub fn seen(&self, path: &str) -> Option<Seen<'_>> {
        match self.entries.get(path) {
            Some(e) => Some(Seen { state: e.current.as_ref(), uncommitted: e.dirty }),
            None => self.known.get(path).map(|state| Seen { state: state.as_ref(), uncommitted: false }),
        }
    }

    /// Records what the database holds at `path` (a read under the lock).
    /// A path the batch already knows keeps what it knows.
    pub fn learn(&mut self, path: &str, stored: Option<FileState>) {
        if self.known.contains_key(path) {
            return;
        }
        self.entries.entry(path.to_string()).or_insert_with(|| Entry { current: stored.clone(), base: stored, dirty: false });
    }

    /// Of `paths`, those the batch has not seen.
    pub fn unseen<'a>(&self, paths: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for path in paths {
            if !self.entries.contains_key(path) && !self.known.contains_key(path) && !out.contains(path) {
                out.push(path.clone());
            }
        }
        out
    }

    /// Adds a committing member's writes (and its event) to the overlay.
    /// Every path it wrote must have been seen first (its base read).
    pub fn absorb(&mut self, member: Member, event: Option<String>) {
        let Member { mut writes, order, .. } = member;
        for path in order {
            let Some(state) = writes.remove(&path) else { continue };
            let known = &mut self.known;
            // (`current` is set just below: no copy of the base for it.)
            let entry = self.entries.entry(path.clone()).or_insert_with(|| Entry { base: known.remove(&path).flatten(), current: None, dirty: false });
            if !entry.dirty {
                self.changed.push(path);
            }
            entry.current = state;
            entry.dirty = true;
        }
        self.events.extend(event);
    }

    /// Whether anything is left to write.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.events.is_empty()
    }

    /// What the replica may trust of the realm's files once the batch is
    /// over: every file the batch knew, in its final state, as of the seq
    /// the batch's events brought the realm to (`committed`: the newest seq
    /// its flush reported, `None` if it appended none). `None` when that is
    /// not certain: the batch did not know its starting seq, or the seqs
    /// disagree.
    pub fn into_known(self, committed: Option<i64>) -> Option<(i64, FileMap)> {
        let start = self.seq?;
        let seq = start + i64::try_from(self.events.len()).ok()?;
        let agrees = match committed {
            Some(newest) => newest == seq && !self.events.is_empty(),
            None => self.events.is_empty() && self.changed.is_empty(),
        };
        if !agrees {
            return None;
        }
        let mut files = self.known;
        for (path, entry) in self.entries {
            files.insert(path, entry.current);
        }
        Some((seq, files))
    }

    /// What the flush must write for this realm: each changed path in its
    /// final state against what the database holds.
    pub fn changes(&self) -> RealmChanges {
        let mut out = RealmChanges { events: self.events.clone(), ..RealmChanges::default() };
        for path in &self.changed {
            let Some(entry) = self.entries.get(path) else { continue };
            entry_changes(path, entry, &mut out);
        }
        out
    }
}

/// The rows one realm's flush writes. Every list holds a path at most once
/// (a field row: its (path, field, position) at most once).
#[derive(Default, Debug)]
pub struct RealmChanges {
    pub file_upserts: Vec<(String, FileRow)>,
    pub file_deletes: Vec<String>,
    /// Card-index rows to write (with the current `SEARCH_VERSION`).
    pub card_upserts: Vec<(String, CardRow)>,
    /// Card-index rows to remove (their field rows go with them).
    pub card_deletes: Vec<String>,
    /// Field rows to insert or overwrite.
    pub field_upserts: Vec<(String, FieldRow)>,
    /// Field rows to remove: (path, field, position).
    pub field_deletes: Vec<(String, String, i64)>,
    /// Paths whose stored field rows are not known (an older version):
    /// every row not in `field_upserts` is removed.
    pub field_resets: Vec<String>,
    /// Event payloads, in order.
    pub events: Vec<String>,
}

impl RealmChanges {
    pub fn is_empty(&self) -> bool {
        self.file_upserts.is_empty() && self.file_deletes.is_empty() && self.card_upserts.is_empty() && self.card_deletes.is_empty() && self.events.is_empty()
    }
}

fn entry_changes(path: &str, entry: &Entry, out: &mut RealmChanges) {
    match (&entry.base, &entry.current) {
        (None, None) => {}
        (Some(base), None) => {
            out.file_deletes.push(path.to_string());
            if base.card.is_some() {
                out.card_deletes.push(path.to_string());
            }
        }
        (base, Some(current)) => {
            if base.as_ref().is_some_and(|b| b.same_file(current) && b.card == current.card) {
                return;
            }
            out.file_upserts.push((path.to_string(), current.row.clone()));
            match (base.as_ref().and_then(|b| b.card.as_ref()), &current.card) {
                (Some(_), None) => out.card_deletes.push(path.to_string()),
                (None, None) => {}
                (stored, Some(card)) => {
                    out.card_upserts.push((path.to_string(), CardRow { version: SEARCH_VERSION, ..card.clone() }));
                    field_changes(path, base.as_ref().filter(|_| stored.is_some_and(|s| s.version == SEARCH_VERSION)), stored.is_some(), current, out);
                }
            }
        }
    }
}

/// A search row's key in `card_fields` (with the realm and path).
fn key(row: &FieldRow) -> (&str, i64) {
    (row.field.as_str(), row.position)
}

/// Sorts rows by [`key`], as the flush's diff walks them.
fn sort_by_key(rows: &mut [FieldRow]) {
    rows.sort_by(|a, b| key(a).cmp(&key(b)));
}

/// The field rows that turn what is stored into `current`'s: against the
/// base's rows when they are known (`known_base`), else a reset when the
/// path had rows of an older version (`had_rows`), else plain inserts.
fn field_changes(path: &str, known_base: Option<&FileState>, had_rows: bool, current: &FileState, out: &mut RealmChanges) {
    match known_base {
        Some(base) => {
            // Only the rows of the parts that differ, when the parts can be
            // told apart: an edit of a few attributes derives a few rows
            // (and parses both versions), not every row of the card.
            let (old, new) = base.changed_rows(current).unwrap_or_else(|| (base.rows(), current.rows()));
            // Both sorted by key: one walk, no hashing.
            let (mut old, mut new) = (old.iter().peekable(), new.iter().peekable());
            loop {
                let order = match (old.peek(), new.peek()) {
                    (None, None) => break,
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (Some(o), Some(n)) => key(o).cmp(&key(n)),
                };
                match order {
                    Ordering::Less => {
                        if let Some(row) = old.next() {
                            out.field_deletes.push((path.to_string(), row.field.clone(), row.position));
                        }
                    }
                    Ordering::Greater => {
                        if let Some(row) = new.next() {
                            out.field_upserts.push((path.to_string(), row.clone()));
                        }
                    }
                    Ordering::Equal => {
                        if let (Some(was), Some(row)) = (old.next(), new.next()) {
                            if was != row {
                                out.field_upserts.push((path.to_string(), row.clone()));
                            }
                        }
                    }
                }
            }
        }
        None => {
            if had_rows {
                out.field_resets.push(path.to_string());
            }
            out.field_upserts.extend(current.rows().into_iter().map(|row| (path.to_string(), row)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &str, modified: i64) -> FileState {
        FileState::new(
            FileRow { content: content.into(), content_hash: format!("h:{content}"), created: 1, last_modified: modified, binary: false },
            None,
        )
    }

    fn card(content: &str, modified: i64, version: i64) -> FileState {
        let row = file(content, modified).row;
        FileState::new(row, Some(CardRow { card_id: "http://h/r/Person/1".into(), card_type: "t".into(), search_doc: "{}".into(), version }))
    }

    fn person(attributes: &str) -> String {
        format!(r#"{{"data":{{"attributes":{attributes},"meta":{{"adoptsFrom":{{"module":"../person","name":"Person"}}}}}}}}"#)
    }

    fn content_of(batch: &RealmBatch, path: &str) -> Option<String> {
        batch.seen(path).and_then(|s| s.state.map(|f| f.row.content.clone()))
    }

    #[test]
    fn a_member_reads_its_own_writes_then_the_batch_then_asks_the_database() {
        let mut batch = RealmBatch::default();
        batch.learn("a.txt", Some(file("stored", 1)));
        batch.learn("gone.txt", None);
        assert!(batch.seen("other.txt").is_none(), "never read: the database must be asked");
        let seen = batch.seen("a.txt").unwrap();
        assert!(!seen.uncommitted);
        let mut first = Member::default();
        first.put("a.txt", Some(file("first", 2)));
        assert_eq!(first.get("a.txt").unwrap().as_ref().unwrap().row.content, "first", "read your own write");
        assert_eq!(content_of(&batch, "a.txt").as_deref(), Some("stored"), "not visible before the member commits");
        batch.absorb(first, Some("e1".into()));
        let seen = batch.seen("a.txt").unwrap();
        assert!(seen.uncommitted, "a batch-mate's write is not in the database yet");
        assert_eq!(seen.state.unwrap().row.content, "first");
        // Learning again (a later prefetch) never overwrites what the batch wrote.
        batch.learn("a.txt", Some(file("stored", 1)));
        assert_eq!(content_of(&batch, "a.txt").as_deref(), Some("first"));
        assert_eq!(batch.unseen(&["a.txt".to_string(), "b".to_string(), "b".to_string(), "gone.txt".to_string()]), vec!["b".to_string()]);
    }

    #[test]
    fn writing_needs_a_grant_as_read_under_the_lock() {
        let p = |write, realm_owner| Permissions { read: true, write, realm_owner };
        let batch = RealmBatch::with_access(Some(vec![("alice".into(), p(true, false)), ("carol".into(), p(false, true)), ("*".into(), p(false, false))]));
        assert!(batch.may_write(Some("alice")) && batch.may_write(Some("carol")));
        assert!(!batch.may_write(Some("bob")) && !batch.may_write(None));
        let public = RealmBatch::with_access(Some(vec![("*".into(), p(true, false))]));
        assert!(public.may_write(None) && public.may_write(Some("bob")));
        assert!(RealmBatch::default().may_write(None), "the in-memory store keeps no permissions");
    }

    #[test]
    fn a_failed_member_costs_the_batch_nothing() {
        let mut batch = RealmBatch::default();
        batch.learn("a.txt", Some(file("stored", 1)));
        let mut ok = Member::default();
        ok.put("a.txt", Some(file("ok", 2)));
        batch.absorb(ok, Some("ok".into()));
        let mut failed = Member::default();
        failed.put("a.txt", Some(file("failed", 3)));
        failed.put("b.txt", Some(file("failed", 3)));
        drop(failed);
        assert_eq!(content_of(&batch, "a.txt").as_deref(), Some("ok"));
        assert!(batch.seen("b.txt").is_none());
        let changes = batch.changes();
        assert_eq!(changes.file_upserts.len(), 1);
        assert_eq!(changes.file_upserts[0].1.content, "ok");
        assert_eq!(changes.events, vec!["ok".to_string()]);
    }

    #[test]
    fn the_flush_writes_each_path_once_in_its_final_state() {
        let mut batch = RealmBatch::default();
        for path in ["a.txt", "b.txt", "c.txt", "d.txt"] {
            batch.learn(path, Some(file("stored", 1)));
        }
        batch.learn("new.txt", None);
        let mut m1 = Member::default();
        m1.put("a.txt", Some(file("one", 2)));
        m1.put("b.txt", None);
        m1.put("new.txt", Some(file("created", 2)));
        batch.absorb(m1, Some("e1".into()));
        let mut m2 = Member::default();
        m2.put("a.txt", Some(file("two", 3)));
        m2.put("b.txt", Some(file("back", 3)));
        // Written back exactly as stored: nothing to flush for c.
        m2.put("c.txt", Some(file("stored", 1)));
        m2.put("new.txt", None);
        batch.absorb(m2, Some("e2".into()));
        let changes = batch.changes();
        let upserts: Vec<(&str, &str)> = changes.file_upserts.iter().map(|(p, r)| (p.as_str(), r.content.as_str())).collect();
        assert_eq!(upserts, [("a.txt", "two"), ("b.txt", "back")]);
        assert!(changes.file_deletes.is_empty(), "new.txt was created and deleted within the batch: never stored");
        assert_eq!(changes.events, ["e1", "e2"]);
        assert!(changes.card_upserts.is_empty() && changes.card_deletes.is_empty());
    }

    #[test]
    fn deleting_a_card_removes_its_index_row_and_a_card_written_as_a_plain_file_too() {
        let mut batch = RealmBatch::default();
        batch.learn("Person/1.json", Some(card(&person(r#"{"a":1}"#), 1, SEARCH_VERSION)));
        batch.learn("Person/2.json", Some(card(&person(r#"{"a":1}"#), 1, SEARCH_VERSION)));
        let mut m = Member::default();
        m.put("Person/1.json", None);
        m.put("Person/2.json", Some(file("plain now", 2)));
        batch.absorb(m, None);
        let changes = batch.changes();
        assert_eq!(changes.file_deletes, ["Person/1.json"]);
        assert_eq!(changes.card_deletes, ["Person/1.json", "Person/2.json"]);
        assert_eq!(changes.file_upserts.len(), 1);
        assert!(changes.field_upserts.is_empty() && changes.field_deletes.is_empty());
    }

    #[test]
    fn field_rows_are_written_only_where_they_differ_from_the_stored_ones() {
        let mut batch = RealmBatch::default();
        batch.learn("Person/1.json", Some(card(&person(r#"{"name":"Mango","age":3,"tags":["a","b"]}"#), 1, SEARCH_VERSION)));
        let mut m = Member::default();
        m.put("Person/1.json", Some(card(&person(r#"{"name":"Mango","age":4,"tags":["a"],"note":"hi"}"#), 2, SEARCH_VERSION)));
        batch.absorb(m, None);
        let changes = batch.changes();
        let upserts: Vec<(&str, i64, &str)> = changes.field_upserts.iter().map(|(_, r)| (r.field.as_str(), r.position, r.text.as_str())).collect();
        assert_eq!(upserts, [("age", 0, "4"), ("note", 0, "hi")]);
        assert_eq!(changes.field_deletes, [("Person/1.json".to_string(), "tags".to_string(), 1)]);
        assert!(changes.field_resets.is_empty());
        assert_eq!(changes.card_upserts.len(), 1);
    }

    #[test]
    fn a_card_is_diffed_by_part_as_its_every_row_would_be() {
        // What diffing every row of both versions writes: (field, position, text) upserts, and deletes.
        let every_row = |stored: &str, written: &str| {
            let (old, new) = (fields_of(stored, "http://h/r/Person/1"), fields_of(written, "http://h/r/Person/1"));
            let mut upserts: Vec<(String, i64, String)> =
                new.iter().filter(|row| !old.contains(row)).map(|r| (r.field.clone(), r.position, r.text.clone())).collect();
            let mut deletes: Vec<(String, i64)> =
                old.iter().filter(|o| !new.iter().any(|n| key(n) == key(o))).map(|r| (r.field.clone(), r.position)).collect();
            upserts.sort();
            deletes.sort();
            (upserts, deletes)
        };
        let flushed = |stored: &str, written: &str| {
            let mut batch = RealmBatch::default();
            batch.learn("Person/1.json", Some(card(stored, 1, SEARCH_VERSION)));
            let mut m = Member::default();
            m.put("Person/1.json", Some(card(written, 2, SEARCH_VERSION)));
            batch.absorb(m, None);
            let changes = batch.changes();
            assert!(changes.field_resets.is_empty());
            let mut upserts: Vec<(String, i64, String)> = changes.field_upserts.into_iter().map(|(_, r)| (r.field, r.position, r.text)).collect();
            let mut deletes: Vec<(String, i64)> = changes.field_deletes.into_iter().map(|(_, field, position)| (field, position)).collect();
            upserts.sort();
            deletes.sort();
            (upserts, deletes)
        };
        let stored = person(r#"{"name":"Mango","age":3,"tags":["a","b"],"address":{"city":"Paris"}}"#);
        let written = person(r#"{"name":"Mango","age":4,"tags":["a"],"address":{"city":"Paris"},"note":"hi"}"#);
        let versions = |stored: &str, written: &str| (card(stored, 1, SEARCH_VERSION), card(written, 2, SEARCH_VERSION));
        let (was, now) = versions(&stored, &written);
        assert!(was.changed_rows(&now).is_some(), "parts apart: diffed by part");
        let by_part = flushed(&stored, &written);
        assert_eq!(by_part, every_row(&stored, &written));
        assert_eq!(by_part.0.iter().map(|(f, _, _)| f.as_str()).collect::<Vec<_>>(), ["age", "note"]);
        // An attribute named with a dot could share a field with a nested one: every row is derived instead.
        let (stored, written) = (person(r#"{"a.b":1,"a":{"b":2}}"#), person(r#"{"a.b":3,"a":{"b":2}}"#));
        let (was, now) = versions(&stored, &written);
        assert!(was.changed_rows(&now).is_none(), "parts not apart");
        assert_eq!(flushed(&stored, &written), every_row(&stored, &written));
    }

    #[test]
    fn rows_of_an_older_version_or_a_new_card_are_written_whole() {
        let mut batch = RealmBatch::default();
        batch.learn("Person/1.json", Some(card(&person(r#"{"name":"Mango"}"#), 1, SEARCH_VERSION - 1)));
        batch.learn("Person/2.json", None);
        let mut m = Member::default();
        m.put("Person/1.json", Some(card(&person(r#"{"name":"Mango","age":4}"#), 2, SEARCH_VERSION)));
        m.put("Person/2.json", Some(card(&person(r#"{"name":"Van"}"#), 2, SEARCH_VERSION)));
        batch.absorb(m, None);
        let changes = batch.changes();
        assert_eq!(changes.field_resets, ["Person/1.json"]);
        let fields: Vec<(&str, &str)> = changes.field_upserts.iter().map(|(p, r)| (p.as_str(), r.field.as_str())).collect();
        // A card's rows in key order.
        assert_eq!(fields, [("Person/1.json", "age"), ("Person/1.json", "id"), ("Person/1.json", "name"), ("Person/2.json", "id"), ("Person/2.json", "name")]);
        assert!(changes.card_upserts.iter().all(|(_, c)| c.version == SEARCH_VERSION));
    }

    #[test]
    fn files_known_from_earlier_batches_are_served_and_diffed_against_like_rows_read() {
        let stored = card(&person(r#"{"name":"Mango","age":3}"#), 1, SEARCH_VERSION);
        let known = [("Person/1.json".to_string(), Some(stored)), ("absent.txt".to_string(), None)].into_iter().collect();
        let mut batch = RealmBatch::default().at_seq(Some(5), known);
        let seen = batch.seen("Person/1.json").expect("known: no read needed");
        assert!(!seen.uncommitted && seen.state.is_some());
        assert!(batch.seen("absent.txt").expect("known absent").state.is_none());
        assert_eq!(batch.unseen(&["Person/1.json".to_string(), "absent.txt".to_string(), "new.txt".to_string()]), vec!["new.txt".to_string()]);
        // A later read of a known path never replaces what is known.
        batch.learn("Person/1.json", None);
        assert!(batch.seen("Person/1.json").unwrap().state.is_some());
        batch.learn("new.txt", Some(file("read", 1)));
        let mut m = Member::default();
        m.put("Person/1.json", Some(card(&person(r#"{"name":"Mango","age":4}"#), 2, SEARCH_VERSION)));
        batch.absorb(m, Some("e6".into()));
        let changes = batch.changes();
        let upserts: Vec<(&str, &str)> = changes.field_upserts.iter().map(|(_, r)| (r.field.as_str(), r.text.as_str())).collect();
        assert_eq!(upserts, [("age", "4")], "diffed against the known rows, not rewritten whole");
        assert!(changes.field_resets.is_empty() && changes.field_deletes.is_empty());
        let (seq, files) = batch.into_known(Some(6)).expect("its one event brought the realm from 5 to 6");
        assert_eq!(seq, 6);
        let kept = files["Person/1.json"].as_ref().unwrap();
        assert!(kept.row.content.contains(r#""age":4"#), "kept in its final state");
        assert!(files["absent.txt"].is_none());
        assert_eq!(files["new.txt"].as_ref().unwrap().row.content, "read", "what the batch read is kept too");
    }

    #[test]
    fn what_a_batch_knew_is_kept_only_when_the_seqs_agree() {
        let written = || {
            let mut batch = RealmBatch::default().at_seq(Some(5), FileMap::default());
            batch.learn("a.txt", None);
            let mut m = Member::default();
            m.put("a.txt", Some(file("x", 2)));
            batch.absorb(m, Some("e".into()));
            batch
        };
        assert!(written().into_known(Some(7)).is_none(), "someone else's event in between: not certain");
        assert!(written().into_known(None).is_none(), "its event was not appended");
        let mut unknown = RealmBatch::default();
        unknown.learn("a.txt", None);
        assert!(unknown.into_known(None).is_none(), "the starting seq is not known");
        let mut read_only = RealmBatch::default().at_seq(Some(5), FileMap::default());
        read_only.learn("a.txt", None);
        let (seq, files) = read_only.into_known(None).expect("a batch that wrote nothing leaves the seq as it was");
        assert_eq!((seq, files.len()), (5, 1));
        assert!(RealmBatch::default().at_seq(None, [("a.txt".to_string(), None)].into_iter().collect()).seen("a.txt").is_none(), "no seq, nothing trusted");
    }
}
