//! A held realm write lock (`WriteTxn`): one member of a batch. Its reads
//! are served from its own writes, then the batch overlay, and only then
//! from the database (with every queued writer's paths in the same query);
//! its writes are buffered until it commits, and forgotten if it does not.
//! The host checks every path the guest writes or deletes, whatever the
//! guest.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::OwnedMutexGuard;

use super::error::WriteError;
use super::group::{Asked, Group, InPath};
use super::overlay::{CardRow, FileState, Member, RealmBatch};
use crate::search::index::SEARCH_VERSION;
use crate::store::{self, FileRow};

/// Size limits on what may be stored.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub card_bytes: usize,
    pub file_bytes: usize,
}

/// Queued writers' paths read along with a miss, at most.
pub(super) const PREFETCH_HINTS: usize = 256;

/// The writers queued for a realm's turn: how many, the paths they will
/// read (by ticket, so whoever reads the realm first in a batch reads them
/// all in one query), and the place in the realm's group that a leaving
/// writer hands to the next one.
#[derive(Default)]
pub(super) struct Waiters(std::sync::Mutex<WaitersState>);

#[derive(Default)]
struct WaitersState {
    count: usize,
    /// Of them, those the realm's group admitted as they arrived.
    admitted: usize,
    hints: Vec<(u64, Vec<String>)>,
    /// A group admission kept for whoever takes the turn next, so the
    /// group does not commit between two writers of a busy realm.
    handover: Option<Arc<Group>>,
    /// Paths the realm's latest writers wrote, newest last: a busy realm's
    /// next batch reads them along with its lock, as writers tend to come
    /// back (fewer reads in the realm's turn than it costs).
    recent: std::collections::VecDeque<String>,
    /// Writers that had the realm's turn since its lock was last read here:
    /// about how many the realm's batches have.
    turns: usize,
}

/// Recently written paths a realm remembers for its next batch, at most.
const RECENT_PATHS: usize = 16;

impl WaitersState {
    /// Up to `limit` of the hinted paths, then of the `recent` most recently
    /// written ones.
    fn hinted_then_recent(&self, recent: usize, limit: usize) -> Vec<String> {
        let hinted = self.hints.iter().flat_map(|(_, paths)| paths.iter().cloned());
        hinted.chain(self.recent.iter().rev().take(recent).cloned()).take(limit).collect()
    }
}

impl Waiters {
    fn state(&self) -> std::sync::MutexGuard<'_, WaitersState> {
        match self.0.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub(super) fn count(&self) -> usize {
        self.state().count
    }

    /// Queued writers the realm's group admitted as they arrived.
    pub(super) fn admitted(&self) -> usize {
        self.state().admitted
    }

    /// A waiting writer the realm's group did not admit after all.
    pub(super) fn not_admitted(&self) {
        let mut state = self.state();
        state.admitted = state.admitted.saturating_sub(1);
    }

    /// A writer starts waiting, reading `paths` at its turn; `admitted`: the
    /// realm's group admitted it.
    pub(super) fn enter(&self, ticket: u64, paths: Vec<String>, admitted: bool) {
        let mut state = self.state();
        state.count += 1;
        state.admitted += usize::from(admitted);
        if !paths.is_empty() {
            state.hints.push((ticket, paths));
        }
    }

    /// A writer stops waiting (it has the turn, or gave up). The last one
    /// to go gives back a hand-over nobody will take.
    pub(super) fn leave(&self, ticket: u64, admitted: bool) {
        let unclaimed = {
            let mut state = self.state();
            state.hints.retain(|(id, _)| *id != ticket);
            state.count = state.count.saturating_sub(1);
            state.admitted = state.admitted.saturating_sub(usize::from(admitted));
            if state.count == 0 { state.handover.take() } else { None }
        };
        if let Some(group) = unclaimed {
            group.leave(false);
        }
    }

    /// The admission a leaving writer handed over, for the new turn holder.
    pub(super) fn take_handover(&self) -> Option<Arc<Group>> {
        self.state().handover.take()
    }

    /// Keeps a place in `group` for the next turn holder if anyone waits
    /// and the group admits one more.
    fn hand_over(&self, group: &Arc<Group>) {
        let stale = {
            let mut state = self.state();
            if state.count > 0 && group.join() { state.handover.replace(group.clone()) } else { None }
        };
        if let Some(stale) = stale {
            stale.leave(false);
        }
    }

    /// A writer has the realm's turn.
    pub(super) fn took_turn(&self) {
        self.state().turns += 1;
    }

    /// What a batch that is taking the realm's lock reads along with it,
    /// besides its first writer's paths: up to `limit` of the hinted paths
    /// and, if more writers are expected than are queued (the realm's last
    /// batch had more: a busy realm), of the recently written ones too.
    pub(super) fn asked_with_lock(&self, limit: usize) -> Asked {
        let mut state = self.state();
        // The writer taking the lock has left the queue; it counts as one.
        let busy = state.turns > state.count + 1;
        state.turns = 0;
        Asked { paths: state.hinted_then_recent(if busy { limit } else { 0 }, limit), busy }
    }

    /// Up to `limit` of the hinted paths, then of the recently written ones.
    pub(super) fn paths(&self, limit: usize) -> Vec<String> {
        self.state().hinted_then_recent(limit, limit)
    }

    /// Remembers paths a writer wrote.
    fn wrote(&self, paths: impl Iterator<Item = String>) {
        let mut state = self.state();
        for path in paths {
            if let Some(at) = state.recent.iter().position(|p| *p == path) {
                state.recent.remove(at);
            }
            if state.recent.len() == RECENT_PATHS {
                state.recent.pop_front();
            }
            state.recent.push_back(path);
        }
    }
}

/// The host's own check of a path the guest writes or deletes, whatever
/// the guest: the same grammar as request paths, outside the `_` namespace.
fn check_path(path: &str) -> Result<(), WriteError> {
    crate::realm::url::check_writable_path(path).map_err(|e| WriteError::Invalid(format!("invalid path '{path}': {e}")))
}

/// Whether a file could be at `path` (every stored path passed
/// [`check_path`]'s checks). A guest may ask to read anything; a path that
/// cannot be stored is absent without a query, since Postgres refuses some
/// (U+0000) with an error that would abort the transaction the whole
/// shared commit is in.
fn could_be_stored(path: &str) -> bool {
    crate::realm::url::check_local_path(path).is_ok()
}

/// Longest `card_type` of a card index row, in bytes (its module URL and
/// name come from the card): it is an index key, as a path is.
const MAX_CARD_TYPE_BYTES: usize = 1024;

/// Postgres `text` cannot hold U+0000; refusing it everywhere keeps both
/// backends answering the same (bytes go by `write_bytes`).
fn check_text(what: impl FnOnce() -> String, texts: &[&str]) -> Result<(), WriteError> {
    if texts.iter().any(|text| text.contains('\0')) {
        return Err(WriteError::Invalid(format!("{} may not contain U+0000 (NUL)", what())));
    }
    Ok(())
}

/// The card index row to store with a card file.
pub struct IndexRow {
    pub card_id: String,
    pub card_type: String,
    pub search_doc: String,
}

/// What a write reports back.
pub struct Written {
    pub content_hash: String,
    pub created: i64,
    pub last_modified: i64,
    pub existed: bool,
}

/// A held realm write lock: this request's turn in the realm's batch.
/// Dropping it forgets its writes (as [`WriteTxn::rollback`] does).
pub struct WriteTxn {
    realm: String,
    group: Arc<Group>,
    waiters: Arc<Waiters>,
    /// `Some` until the turn ends.
    turn: Option<OwnedMutexGuard<()>>,
    /// When the turn began.
    began: std::time::Instant,
    batch: Option<RealmBatch>,
    member: Member,
    limits: Limits,
    /// The request's `X-Boxel-Client-Request-Id`, for its event.
    client_request_id: Option<String>,
    /// Counted among the replica's writers until the outcome is known
    /// (dropped last, after `commit`'s wait).
    _counted: InPath,
}

impl WriteTxn {
    pub(super) fn new(realm: &str, group: Arc<Group>, waiters: Arc<Waiters>, turn: OwnedMutexGuard<()>, batch: RealmBatch, limits: Limits, counted: InPath) -> WriteTxn {
        WriteTxn {
            realm: realm.to_string(),
            group,
            waiters,
            turn: Some(turn),
            began: std::time::Instant::now(),
            batch: Some(batch),
            member: Member::default(),
            limits,
            client_request_id: None,
            _counted: counted,
        }
    }

    fn batch(&mut self) -> Result<&mut RealmBatch, WriteError> {
        self.batch.as_mut().ok_or_else(|| WriteError::Storage("the write lock was already released".into()))
    }

    /// Reads `paths` the batch has not seen, with the queued writers' paths
    /// and the realm's recently written ones, in one query (on a quiet realm
    /// too: this round trip is paid anyway, the others ride along).
    pub async fn prefetch(&mut self, paths: &[String]) -> Result<(), WriteError> {
        let hinted = self.waiters.paths(PREFETCH_HINTS);
        let wanted = self.batch()?.unseen(paths.iter().chain(hinted.iter()).filter(|path| could_be_stored(path)));
        if wanted.is_empty() {
            return Ok(());
        }
        let mut found = self.group.read(&self.realm, &wanted).await?;
        let batch = self.batch()?;
        for path in wanted {
            let state = found.remove(&path);
            batch.learn(&path, state);
        }
        Ok(())
    }

    /// The state of `path` as this member sees it.
    async fn state_of(&mut self, path: &str) -> Result<Option<FileState>, WriteError> {
        if !could_be_stored(path) {
            return Ok(None);
        }
        if let Some(own) = self.member.get(path) {
            return Ok(own.clone());
        }
        if self.batch()?.seen(path).is_none() {
            self.prefetch(&[path.to_string()]).await?;
        }
        let seen = self.batch()?.seen(path).map(|s| (s.state.cloned(), s.uncommitted));
        match seen {
            Some((state, uncommitted)) => {
                self.member.saw_uncommitted |= uncommitted;
                Ok(state)
            }
            None => Err(WriteError::Storage(format!("{path} was read but not recorded"))),
        }
    }

    pub async fn read(&mut self, path: &str) -> Result<Option<FileRow>, WriteError> {
        Ok(self.state_of(path).await?.map(|state| state.row))
    }

    pub async fn exists(&mut self, path: &str) -> Result<bool, WriteError> {
        Ok(self.state_of(path).await?.is_some())
    }

    /// Stores a text file (and its index row, or drops a stale one).
    /// Identical content is not rewritten.
    pub async fn write(&mut self, path: &str, content: &str, index: Option<IndexRow>) -> Result<Written, WriteError> {
        check_text(|| format!("{path}: file content"), &[content])?;
        if let Some(row) = &index {
            check_text(|| format!("{path}: the card index row"), &[&row.card_id, &row.card_type, &row.search_doc])?;
            if row.card_type.len() > MAX_CARD_TYPE_BYTES {
                return Err(WriteError::Invalid(format!("{path}: the card's type (meta.adoptsFrom, resolved) is longer than {MAX_CARD_TYPE_BYTES} bytes")));
            }
        }
        let content_hash = hex::encode(Sha256::digest(content.as_bytes()));
        self.store(path, content.to_string(), false, content.len(), content_hash, index).await
    }

    /// Stores a file of any bytes, byte-exact (as text when they are UTF-8
    /// without NUL, else as base64); no index row.
    pub async fn write_bytes(&mut self, path: &str, bytes: Vec<u8>) -> Result<Written, WriteError> {
        let content_hash = hex::encode(Sha256::digest(&bytes));
        let size = bytes.len();
        match store::StoredContent::of(bytes) {
            store::StoredContent::Text(text) => self.store(path, text, false, size, content_hash, None).await,
            store::StoredContent::Base64(encoded) => self.store(path, encoded, true, size, content_hash, None).await,
        }
    }

    /// Buffers `content` (base64 when `binary`) of `size` bytes hashing to
    /// `content_hash`, unless the file already has that hash.
    async fn store(&mut self, path: &str, content: String, binary: bool, size: usize, content_hash: String, index: Option<IndexRow>) -> Result<Written, WriteError> {
        check_path(path)?;
        let (what, limit) = match index {
            Some(_) => ("Card", self.limits.card_bytes),
            None => ("File", self.limits.file_bytes),
        };
        if size > limit {
            return Err(WriteError::TooLarge(format!("{what} size ({size} bytes) exceeds maximum allowed size ({limit} bytes)")));
        }
        let existing = self.state_of(path).await?;
        if let Some(existing) = &existing {
            if existing.row.content_hash == content_hash {
                let row = &existing.row;
                return Ok(Written { content_hash, created: row.created, last_modified: row.last_modified, existed: true });
            }
        }
        let now = store::now_unix();
        let created = existing.as_ref().map(|e| e.row.created).unwrap_or(now);
        let is_card = index.is_some();
        let card = index.map(|i| CardRow { card_id: i.card_id, card_type: i.card_type, search_doc: i.search_doc, version: SEARCH_VERSION });
        let row = FileRow { content, content_hash: content_hash.clone(), created, last_modified: now, binary };
        self.member.put(path, Some(FileState::new(row, card)));
        self.member.changes.note(&self.realm, path, is_card);
        Ok(Written { content_hash, created, last_modified: now, existed: existing.is_some() })
    }

    /// Removes a file and its index row; false when there was no such file.
    pub async fn delete(&mut self, path: &str) -> Result<bool, WriteError> {
        check_path(path)?;
        let Some(existing) = self.state_of(path).await? else { return Ok(false) };
        self.member.put(path, None);
        self.member.changes.note(&self.realm, path, existing.card.is_some());
        Ok(true)
    }

    /// Whether `user` (`None`: anyone) may write the realm, by its
    /// permissions as read under the realm's lock (which a permission change
    /// takes too): the final word on a write let in by permissions read
    /// before.
    pub fn may_write(&self, user: Option<&str>) -> bool {
        self.batch.as_ref().is_some_and(|batch| batch.may_write(user))
    }

    /// Whether the batch knows `path` already (read or written), so a read
    /// of it costs no query.
    #[cfg(test)]
    pub(super) fn knows(&self, path: &str) -> bool {
        self.batch.as_ref().is_some_and(|batch| batch.seen(path).is_some())
    }

    /// Sets the `X-Boxel-Client-Request-Id` this request's event carries.
    pub fn set_client_request_id(&mut self, id: Option<String>) {
        self.client_request_id = id;
    }

    /// Adds this request's writes (and its realm event) to the batch and
    /// ends the turn; returns once the batch has committed (or at once when
    /// the request wrote nothing and read nothing uncommitted).
    pub async fn commit(mut self) -> Result<(), WriteError> {
        let member = std::mem::take(&mut self.member);
        let wrote = member.wrote();
        let must_wait = wrote || member.saw_uncommitted;
        let event = (!member.changes.is_empty()).then(|| member.changes.payload(&self.realm, self.client_request_id.as_deref()));
        self.waiters.wrote(member.paths());
        self.batch()?.absorb(member, event);
        self.end_turn(wrote, must_wait).await
    }

    /// Forgets this request's writes and ends the turn. Returns once the
    /// batch has committed when the request read a batch-mate's write (its
    /// answer was computed on it): an error then means that write never
    /// happened, and neither did what the answer saw.
    pub async fn rollback(mut self) -> Result<(), WriteError> {
        let must_wait = self.member.saw_uncommitted;
        self.member = Member::default();
        self.end_turn(false, must_wait).await
    }

    async fn end_turn(&mut self, wrote: bool, must_wait: bool) -> Result<(), WriteError> {
        let mut outcome = self.group.outcome();
        self.release(wrote);
        if !must_wait {
            return Ok(());
        }
        let settled = outcome.wait_for(Option::is_some).await.map(|o| o.clone());
        match settled {
            Ok(Some(result)) => result,
            _ => Err(WriteError::Unavailable("the shared transaction was lost before it committed; nothing was written, retry".into())),
        }
    }

    /// Gives the batch back, ends the turn and leaves the group (once).
    fn release(&mut self, wrote: bool) {
        if let Some(batch) = self.batch.take() {
            self.group.put_batch(&self.realm, batch);
        }
        if let Some(turn) = self.turn.take() {
            // Before the turn passes: the next writer keeps the group open.
            self.waiters.hand_over(&self.group);
            drop(turn);
            self.group.record_turn(self.began.elapsed());
            self.group.leave(wrote);
        }
    }
}

impl Drop for WriteTxn {
    fn drop(&mut self) {
        self.member = Member::default();
        self.release(false);
    }
}
