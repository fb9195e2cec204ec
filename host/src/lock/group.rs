//! A commit group: one open transaction holding the database lock of one
//! or more realms, the batch overlay of each of those realms, and the
//! members it carries. Members join while it is open; when the last one
//! leaves it flushes every realm's writes and commits once (group commit),
//! then tells every member how that went. No member is answered before.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{watch, OwnedMutexGuard};

use super::error::WriteError;
use super::known::{FileMap, KnownFiles, KnownRealms};
use super::overlay::{FileState, RealmBatch};
use super::sql::{self, Retention, Tx, Wanted};
use crate::store::now_unix;

/// How members share a commit: a group stays open while any member is
/// running or queued in it, up to `max_batch` members or `max_wait` of age.
/// `max_batch <= 1` turns coalescing off (one request per transaction).
#[derive(Clone, Copy, Debug)]
pub struct Coalescing {
    pub max_batch: usize,
    pub max_wait: Duration,
}

impl Coalescing {
    pub const OFF: Coalescing = Coalescing { max_batch: 1, max_wait: Duration::ZERO };
}

/// Counters of committed groups, for `/_metrics`.
#[derive(Default)]
pub struct BatchStats {
    /// Commits that carried writes.
    pub batches: AtomicU64,
    /// Write requests those commits carried.
    pub members: AtomicU64,
    /// Realm batches those commits carried (more than `batches` when
    /// realms shared a commit).
    pub realm_batches: AtomicU64,
    /// Turns ended (a writer's critical section), and their total length.
    pub turns: AtomicU64,
    pub turn_nanos: AtomicU64,
    /// Total time of the flushes and COMMITs of those commits.
    pub commit_nanos: AtomicU64,
}

impl BatchStats {
    pub(super) fn add_turn(&self, held: Duration) {
        self.turns.fetch_add(1, Ordering::Relaxed);
        self.turn_nanos.fetch_add(u64::try_from(held.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// Commits a replica runs at once (see [`Shared::commits_in_flight`]). A
/// group whose writers are all done while that many commits are under way
/// stays open and commits when one of them ends (group commit): under
/// load, writers that arrive during a commit share the next one instead of
/// each opening their own.
const COMMITS_IN_FLIGHT: usize = 2;
/// The same while another replica writes this replica's realms.
const COMMITS_IN_FLIGHT_CONTENDED: usize = 1;

/// How long after another replica was last found holding a realm's lock
/// this replica counts as sharing its realms with it.
const CONTENTION_WINDOW: Duration = Duration::from_secs(2);

/// The replica's commits under way, and the groups ready to commit next.
#[derive(Default)]
pub(super) struct Pacing {
    in_flight: usize,
    ready: VecDeque<Weak<Group>>,
}

/// What every group of a replica shares: where it reports, and the pacing
/// of its commits.
pub(super) struct Shared {
    pub(super) pacing: Mutex<Pacing>,
    pub(super) stats: Arc<BatchStats>,
    /// Realms whose commit appended events, and their newest seq.
    pub(super) committed: tokio::sync::broadcast::Sender<(String, i64)>,
    /// Events each realm keeps.
    pub(super) retain_events: i64,
    /// What the replica knows of realms' files between their batches.
    pub(super) known: Arc<KnownRealms>,
    /// Writers between asking for a lock and learning how their group
    /// ended (see [`InPath`]).
    pub(super) writers: AtomicUsize,
    /// When another replica was last found holding a realm's lock (as
    /// time since `born`, in ms; 0: never).
    pub(super) contended_at: AtomicU64,
    pub(super) born: Instant,
}

impl Shared {
    pub(super) fn new(stats: Arc<BatchStats>, committed: tokio::sync::broadcast::Sender<(String, i64)>, retain_events: i64, known: Arc<KnownRealms>) -> Shared {
        Shared { pacing: Default::default(), stats, committed, retain_events, known, writers: Default::default(), contended_at: Default::default(), born: Instant::now() }
    }

    /// Another replica holds a realm's lock this replica asked for.
    fn note_contention(&self) {
        let at = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
        self.contended_at.store(at, Ordering::Relaxed);
    }

    /// Whether another replica has written this replica's realms lately.
    fn contended(&self) -> bool {
        let at = self.contended_at.load(Ordering::Relaxed);
        at != 0 && self.born.elapsed().as_millis() < u128::from(at) + CONTENTION_WINDOW.as_millis()
    }

    /// Members a group may have and still take a realm it does not hold.
    /// Alone on its realms, a replica splits its writers into two groups:
    /// with every writer in one, its commit would run while no one else
    /// can; with half in each, one group gathers (guest calls, reads) while
    /// the other commits, and the two may commit at once. While another
    /// replica writes the same realms its groups already fill our commits'
    /// gaps, and splitting would only halve ours: no cap. (Writers of a
    /// realm the group holds join it up to `max_batch` either way: they
    /// could not go sooner.)
    fn realm_add_cap(&self) -> usize {
        if self.contended() {
            return usize::MAX;
        }
        self.writers.load(Ordering::Relaxed).div_ceil(2).max(1)
    }

    /// Commits this replica runs at once: two while it is alone on its
    /// realms (its split groups, above), else one.
    fn commits_in_flight(&self) -> usize {
        if self.contended() {
            COMMITS_IN_FLIGHT_CONTENDED
        } else {
            COMMITS_IN_FLIGHT
        }
    }
}

/// Counts a writer in [`Shared::writers`] while it lives.
pub(super) struct InPath(Arc<Shared>);

impl InPath {
    pub(super) fn count(shared: &Arc<Shared>) -> InPath {
        shared.writers.fetch_add(1, Ordering::Relaxed);
        InPath(shared.clone())
    }
}

impl Drop for InPath {
    fn drop(&mut self) {
        self.0.writers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a member learns once its group is over.
type Outcome = Option<Result<(), WriteError>>;

/// A writer's request to add its realm to the group.
struct Add {
    realm: String,
    asked: Asked,
    known: Option<KnownFiles>,
    reply: tokio::sync::oneshot::Sender<Result<Added, WriteError>>,
}

/// The answer to an [`Add`].
enum Added {
    Yes,
    /// Another transaction holds the realm's lock; what the writer knew of
    /// the realm, given back.
    HeldElsewhere(Option<KnownFiles>),
}

/// The place of a pending group's transaction, held by its opener until
/// it is begun.
pub(super) struct TxSlot(tokio::sync::OwnedMutexGuard<Option<Tx>>);

pub(super) struct Group {
    /// `None` until its opener has begun it, and once it has finished.
    tx: Arc<tokio::sync::Mutex<Option<Tx>>>,
    /// Why its transaction could not be begun.
    broken: Mutex<Option<WriteError>>,
    /// Realms writers asked to add, for whoever gets the transaction next.
    adds: Mutex<Vec<Add>>,
    state: Mutex<State>,
    outcome: watch::Sender<Outcome>,
    coalescing: Coalescing,
    shared: Arc<Shared>,
}

struct State {
    /// New members may still join.
    open: bool,
    /// Members admitted and not done yet (running, or queued for a turn).
    active: usize,
    /// Members admitted in all.
    admitted: usize,
    /// Members whose writes it carries.
    writers: usize,
    /// The realms whose lock the group holds; a realm's batch is `None`
    /// while a member (holding that realm's turn) has it.
    realms: HashMap<String, Option<RealmBatch>>,
    /// SQLite and memory: the one-writer slot, held until the group is over.
    writer: Option<OwnedMutexGuard<()>>,
    /// Waiting for a commit slot (in `Pacing::ready`).
    queued: bool,
    /// Its commit slot came while writers were still running in it: it
    /// admits no one new and commits when they are done (else writers that
    /// keep arriving would hold it open until `max_wait`).
    closing: bool,
    /// When its transaction began (`max_wait` counts from there, not from
    /// a wait for the database's lock).
    opened: Instant,
}

impl Group {
    /// A group holding `realm`'s lock in `tx` (where `read` was read of
    /// it), with its opener admitted.
    pub(super) fn new(tx: Tx, realm: &str, read: Read, coalescing: Coalescing, shared: Arc<Shared>, writer: Option<OwnedMutexGuard<()>>) -> Arc<Group> {
        let realms = HashMap::from([(realm.to_string(), Some(read.into_batch()))]);
        Group::with(Some(tx), realms, coalescing, shared, writer)
    }

    /// A group whose transaction is still to be begun, with its opener
    /// admitted. Writers may join it at once: their adds wait until the
    /// opener, who holds the returned slot, has put the transaction in
    /// ([`Group::begun`]). So the writers that arrive while a group is being
    /// opened share it, instead of each opening (and committing) their own.
    pub(super) fn pending(coalescing: Coalescing, shared: Arc<Shared>) -> Result<(Arc<Group>, TxSlot), WriteError> {
        let group = Group::with(None, HashMap::new(), coalescing, shared, None);
        // Nobody else has seen the group yet: free.
        let slot = group.tx.clone().try_lock_owned().map_err(|_| WriteError::Storage("a new group's transaction was already taken".into()))?;
        Ok((group, TxSlot(slot)))
    }

    fn with(tx: Option<Tx>, realms: HashMap<String, Option<RealmBatch>>, coalescing: Coalescing, shared: Arc<Shared>, writer: Option<OwnedMutexGuard<()>>) -> Arc<Group> {
        Arc::new(Group {
            tx: Arc::new(tokio::sync::Mutex::new(tx)),
            broken: Mutex::new(None),
            adds: Mutex::new(Vec::new()),
            state: Mutex::new(State { open: true, active: 1, admitted: 1, writers: 0, realms, writer, queued: false, closing: false, opened: Instant::now() }),
            outcome: watch::channel(None).0,
            coalescing,
            shared,
        })
    }

    /// The opener of a pending group has begun its transaction (holding
    /// `writer`, SQLite's and memory's one-writer slot), or could not.
    pub(super) fn begun(&self, slot: TxSlot, begun: Result<(Tx, Option<OwnedMutexGuard<()>>), WriteError>) {
        let TxSlot(mut slot) = slot;
        match begun {
            Ok((tx, writer)) => {
                let mut state = self.state();
                state.writer = writer;
                state.opened = Instant::now();
                *slot = Some(tx);
            }
            Err(e) => {
                *locked(&self.broken) = Some(e);
                // Nobody may join a group that has no transaction.
                self.state().closing = true;
            }
        }
    }

    /// Whether its opener failed to begin it (those who joined it may look
    /// for another group).
    pub(super) fn never_began(&self) -> bool {
        locked(&self.broken).is_some()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Admits one more member if the group is open and under its limits;
    /// the member must [`leave`](Group::leave) once done.
    pub(super) fn join(&self) -> bool {
        self.join_under(usize::MAX)
    }

    /// [`join`](Group::join) for a writer that will add a realm the group
    /// does not hold; with `split`, only while it has fewer members than
    /// [`Shared::realm_add_cap`]. (Postgres only: SQLite's one writer
    /// commits one group at a time, so a split would only add commits.)
    pub(super) fn join_to_add(&self, split: bool) -> bool {
        self.join_under(if split { self.shared.realm_add_cap() } else { usize::MAX })
    }

    fn join_under(&self, cap: usize) -> bool {
        let mut state = self.state();
        let c = self.coalescing;
        let admit = state.open && !state.closing && state.admitted < c.max_batch.max(1).min(cap) && state.opened.elapsed() < c.max_wait;
        if admit {
            state.active += 1;
            state.admitted += 1;
        }
        admit
    }

    /// Members admitted and not done yet.
    #[cfg(test)]
    pub(super) fn active(&self) -> usize {
        self.state().active
    }

    /// Whether the group holds `realm`'s lock.
    pub(super) fn holds(&self, realm: &str) -> bool {
        self.state().realms.contains_key(realm)
    }

    /// Adds `realm` to the group, taking its lock if it is free right now
    /// (never waiting: see `sql::try_add_realms`) and reading what is
    /// `asked` of it (see [`split_known`]). False when another
    /// transaction holds it; `known` is used only if the realm was added.
    /// Writers adding realms at the same time share one round trip: whoever
    /// gets the transaction next adds every realm asked for by then.
    pub(super) async fn try_add(&self, realm: &str, asked: Asked, known: &mut Option<KnownFiles>) -> Result<bool, WriteError> {
        if self.holds(realm) {
            return Ok(true);
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        locked(&self.adds).push(Add { realm: realm.to_string(), asked, known: known.take(), reply });
        {
            let mut tx = self.tx.lock().await;
            let adds = std::mem::take(&mut *locked(&self.adds));
            match tx.as_mut() {
                _ if adds.is_empty() => {}
                Some(tx) => self.add_all(tx, adds).await,
                None => {
                    let e = self.why_no_tx();
                    for add in adds {
                        let _ = add.reply.send(Err(e.clone()));
                    }
                }
            }
        }
        match answer.await {
            Ok(Ok(Added::Yes)) => Ok(true),
            Ok(Ok(Added::HeldElsewhere(back))) => {
                *known = back;
                Ok(false)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(WriteError::Unavailable("adding the realm to a shared transaction was interrupted; retry".into())),
        }
    }

    /// Adds every realm in `adds` in one go, and answers each asker.
    async fn add_all(&self, tx: &mut Tx, adds: Vec<Add>) {
        let splits: Vec<(Vec<String>, Vec<String>)> = adds.iter().map(|a| split_known(&a.asked, a.known.as_ref())).collect();
        let wanted: Vec<(&str, Wanted<'_>)> =
            adds.iter().zip(&splits).map(|(a, (unknown, checked))| (a.realm.as_str(), wanted(unknown, checked, a.known.as_ref()))).collect();
        let result = sql::try_add_realms(tx, &wanted).await;
        drop(wanted);
        match result {
            Err(e) => {
                for add in adds {
                    let _ = add.reply.send(Err(e.clone()));
                }
            }
            Ok(read) => {
                for ((add, read), (_, checked)) in adds.into_iter().zip(read).zip(splits) {
                    let Add { realm, asked, known, reply } = add;
                    let Some(locked) = read else {
                        self.shared.note_contention();
                        let _ = reply.send(Ok(Added::HeldElsewhere(known)));
                        continue;
                    };
                    let batch = Read { paths: asked.paths, checked, known, locked }.into_batch();
                    self.state().realms.entry(realm).or_insert(Some(batch));
                    let _ = reply.send(Ok(Added::Yes));
                }
            }
        }
    }

    /// Why the transaction is not there: it could not be begun, or it is over.
    fn why_no_tx(&self) -> WriteError {
        locked(&self.broken).clone().unwrap_or_else(finished)
    }

    /// Takes `realm`'s batch for a member holding that realm's turn.
    pub(super) fn take_batch(&self, realm: &str) -> Result<RealmBatch, WriteError> {
        let mut state = self.state();
        match state.realms.get_mut(realm) {
            Some(batch) => batch.take().ok_or_else(|| WriteError::Storage(format!("the batch of {realm} is already in use"))),
            None => Err(WriteError::Storage(format!("this transaction does not hold the lock of {realm}"))),
        }
    }

    /// Gives a realm's batch back (a member is done with its turn).
    pub(super) fn put_batch(&self, realm: &str, batch: RealmBatch) {
        self.state().realms.insert(realm.to_string(), Some(batch));
    }

    /// Reads `paths` of `realm` in the group's transaction.
    pub(super) async fn read(&self, realm: &str, paths: &[String]) -> Result<HashMap<String, FileState>, WriteError> {
        let mut tx = self.tx.lock().await;
        let tx = tx.as_mut().ok_or_else(finished)?;
        sql::read(tx, realm, paths).await
    }

    /// How the group ended, once it has.
    pub(super) fn outcome(&self) -> watch::Receiver<Outcome> {
        self.outcome.subscribe()
    }

    /// Counts a member's turn of `held` in the replica's statistics.
    pub(super) fn record_turn(&self, held: Duration) {
        self.shared.stats.add_turn(held);
    }

    /// Waits until the group is over; answers how it went.
    pub(super) async fn finished(&self) -> Result<(), WriteError> {
        let mut outcome = self.outcome();
        let settled = outcome.wait_for(Option::is_some).await.map(|o| o.clone());
        match settled {
            Ok(Some(result)) => result,
            _ => Err(lost()),
        }
    }

    /// A member is done (`wrote`: its writes are in the group). The last
    /// one to leave closes the group and starts its commit (in a task of
    /// its own, so no caller going away can stop it halfway).
    pub(super) fn leave(self: &Arc<Self>, wrote: bool) {
        let mut state = self.state();
        state.active = state.active.saturating_sub(1);
        if wrote {
            state.writers += 1;
        }
        if state.open && state.active == 0 {
            self.commit_or_queue(state);
        }
    }

    /// Starts the commit of a group nobody is running in, or queues it for
    /// the next commit slot (it stays open meanwhile).
    fn commit_or_queue(self: &Arc<Self>, mut state: MutexGuard<'_, State>) {
        // Without coalescing a group never grows, so waiting only delays it;
        // a group that holds no realm (its writers all left, e.g. their
        // realms were held elsewhere) has nothing to commit.
        let limit = if self.coalescing.max_batch <= 1 || state.realms.is_empty() { usize::MAX } else { self.shared.commits_in_flight() };
        let started = {
            let mut pacing = locked(&self.shared.pacing);
            if pacing.in_flight < limit {
                pacing.in_flight += 1;
                true
            } else {
                if !state.queued {
                    state.queued = true;
                    pacing.ready.push_back(Arc::downgrade(self));
                }
                false
            }
        };
        if started {
            state.open = false;
            state.queued = false;
            drop(state);
            let group = self.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(async move { group.finish().await })),
                // No runtime (a drop during shutdown): nothing can commit;
                // dropping the transaction rolls it back.
                Err(_) => group.fail(lost()),
            }
        }
    }

    /// A commit slot came free: the oldest queued group commits now, or, if
    /// writers still run in it, stops admitting and commits when they leave.
    fn commit_done(&self) {
        let ready: Vec<Weak<Group>> = {
            let mut pacing = locked(&self.shared.pacing);
            pacing.in_flight = pacing.in_flight.saturating_sub(1);
            pacing.ready.drain(..).collect()
        };
        let mut requeue = Vec::new();
        let mut started = false;
        for group in ready.into_iter().filter_map(|g| g.upgrade()) {
            let mut state = group.state();
            if !state.open || !state.queued {
                continue;
            }
            if started || state.active > 0 {
                if !started {
                    state.closing = true;
                    started = true;
                }
                requeue.push(Arc::downgrade(&group));
                continue;
            }
            state.queued = false;
            group.commit_or_queue(state);
            started = true;
        }
        if !requeue.is_empty() {
            let mut pacing = locked(&self.shared.pacing);
            for group in requeue.into_iter().rev() {
                pacing.ready.push_front(group);
            }
        }
    }

    fn fail(&self, error: WriteError) {
        // Stored even when nobody is subscribed yet (a later `finished` reads it).
        self.outcome.send_replace(Some(Err(error)));
    }

    /// Flushes every realm's batch and commits, or rolls back when there is
    /// nothing to write; then answers every member.
    async fn finish(self: Arc<Self>) {
        self.flush_and_commit().await;
        self.commit_done();
    }

    async fn flush_and_commit(&self) {
        let tx = self.tx.lock().await.take();
        let (realms, writers, writer) = {
            let mut state = self.state();
            let realms: Vec<(String, RealmBatch)> = state.realms.drain().filter_map(|(realm, batch)| batch.map(|b| (realm, b))).collect();
            (realms, state.writers, state.writer.take())
        };
        let Some(tx) = tx else {
            self.fail(lost());
            return;
        };
        let changes: Vec<_> = realms.iter().filter(|(_, b)| !b.is_empty()).map(|(realm, b)| (realm.clone(), b.changes())).collect();
        let started = Instant::now();
        let result = if changes.is_empty() {
            tx.rollback().await.map(|()| Vec::new())
        } else {
            self.commit(tx, &changes).await
        };
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        // The next group may take the database's write lock now.
        drop(writer);
        match result {
            Ok(newest) => {
                // Before anyone is answered: the realm's next writer here
                // starts from what this batch leaves.
                for (realm, batch) in realms {
                    let committed = newest.iter().find(|(r, _)| *r == realm).map(|(_, seq)| *seq);
                    if let Some((seq, files)) = batch.into_known(committed) {
                        self.shared.known.put(&realm, KnownFiles { seq, files });
                    }
                }
                if !changes.is_empty() {
                    let stats = &self.shared.stats;
                    stats.batches.fetch_add(1, Ordering::Relaxed);
                    stats.members.fetch_add(writers as u64, Ordering::Relaxed);
                    stats.realm_batches.fetch_add(changes.len() as u64, Ordering::Relaxed);
                    stats.commit_nanos.fetch_add(took, Ordering::Relaxed);
                }
                self.outcome.send_replace(Some(Ok(())));
                for announced in newest {
                    // Nobody listening (no subscriber yet) is fine.
                    let _ = self.shared.committed.send(announced);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, realms = changes.len(), members = writers, "a commit group failed; nothing of it was written");
                self.fail(e);
            }
        }
    }

    async fn commit(&self, mut tx: Tx, changes: &[(String, super::overlay::RealmChanges)]) -> Result<Vec<(String, i64)>, WriteError> {
        let now = now_unix();
        let retention = Retention { keep: self.shared.retain_events };
        match sql::flush(&mut tx, changes, now, retention).await {
            Ok(newest) => tx.commit().await.map(|()| newest),
            Err(e) => {
                // Roll back now: a lazy rollback would keep SQLite's write
                // lock from the next group until the connection is reused.
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }
}

/// What was read of a realm as its lock was taken, which paths were asked
/// for, which known files were checked, and what the replica knew of it
/// before.
pub(super) struct Read {
    pub(super) paths: Vec<String>,
    pub(super) checked: Vec<String>,
    pub(super) known: Option<KnownFiles>,
    pub(super) locked: sql::Locked,
}

/// What a realm's batch reads along with the realm's lock.
#[derive(Clone, Debug, Default)]
pub(super) struct Asked {
    /// The paths its writers will read (and perhaps the realm's recently
    /// written ones).
    pub(super) paths: Vec<String>,
    /// More writers are expected during the batch than are queued for it
    /// now (its previous batch had more): the known files they may need
    /// are worth checking in the lock's round trip, not one read each in
    /// the realm's turn. When not, a batch whose seq another replica moved
    /// checks only the asked ones: checking the rest cost ~15 µs of
    /// Postgres each for files a batch of one or two writers never reads.
    pub(super) busy: bool,
}

/// Most known files of a realm checked as its lock is taken (when another
/// replica moved its seq), counting the asked ones: beyond them, files
/// the batch's later writers may need without a read of their own.
const KNOWN_CHECKED: usize = 64;

/// What to read of a realm: (not known, known files to check). Every asked
/// known path is checked and, if the realm is [`Asked::busy`], other known
/// ones up to [`KNOWN_CHECKED`] in all.
pub(super) fn split_known(asked: &Asked, known: Option<&KnownFiles>) -> (Vec<String>, Vec<String>) {
    let Some(known) = known else { return (asked.paths.clone(), Vec::new()) };
    let (unknown, mut checked): (Vec<String>, Vec<String>) = asked.paths.iter().cloned().partition(|p| !known.files.contains_key(p));
    let room = if asked.busy { KNOWN_CHECKED.saturating_sub(checked.len()) } else { 0 };
    let others: Vec<String> = known.files.paths().filter(|p| !checked.contains(p)).take(room).cloned().collect();
    checked.extend(others);
    (unknown, checked)
}

/// The [`Wanted`] of a realm: `unknown` paths to read, `checked` known
/// files (of `known`) to check if the realm's seq moved.
pub(super) fn wanted<'a>(unknown: &'a [String], checked: &'a [String], known: Option<&'a KnownFiles>) -> Wanted<'a> {
    let Some(known) = known else { return Wanted { paths: unknown, ..Wanted::default() } };
    let states = checked.iter().filter_map(|p| known.files.get(p).map(|state| (p.as_str(), state.as_ref()))).collect();
    Wanted { paths: unknown, known_seq: Some(known.seq), known: states }
}

impl Read {
    /// A realm batch that knows who may write, the files known as of the
    /// realm's seq — all of them if it has not moved, else the checked
    /// ones as the read found them — and these paths (a path not found
    /// is known absent).
    fn into_batch(self) -> RealmBatch {
        let sql::Locked { access, seq, mut found, gone } = self.locked;
        let known = match (seq, self.known) {
            (Some(seq), Some(known)) if known.seq == seq => known.files,
            (Some(_), Some(mut known)) => {
                let mut files = FileMap::with_capacity(self.checked.len());
                for path in self.checked {
                    let state = match found.remove(&path) {
                        Some(read) => Some(read),
                        None if gone.contains(&path) => None,
                        None => match known.files.remove(&path) {
                            Some(unchanged) => unchanged,
                            None => continue,
                        },
                    };
                    files.insert(path, state);
                }
                files
            }
            _ => FileMap::default(),
        };
        let mut batch = RealmBatch::with_access(access).at_seq(seq, known);
        for path in self.paths {
            let state = found.remove(&path);
            batch.learn(&path, state);
        }
        batch
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn finished() -> WriteError {
    WriteError::Storage("the write lock was already released".into())
}

fn lost() -> WriteError {
    WriteError::Unavailable("the shared transaction was lost before it committed; nothing was written, retry".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared::new(Arc::new(BatchStats::default()), tokio::sync::broadcast::channel(4).0, 10, Arc::new(KnownRealms::new(0)))
    }

    const COALESCING: Coalescing = Coalescing { max_batch: 64, max_wait: Duration::from_secs(10) };

    #[test]
    fn alone_a_replica_splits_its_writers_in_two_groups_that_may_commit_at_once() {
        let shared = shared();
        shared.writers.store(32, Ordering::Relaxed);
        assert_eq!((shared.realm_add_cap(), shared.commits_in_flight()), (16, 2));
        shared.writers.store(3, Ordering::Relaxed);
        assert_eq!(shared.realm_add_cap(), 2);
        shared.writers.store(0, Ordering::Relaxed);
        assert_eq!(shared.realm_add_cap(), 1, "the opener always gets in");
    }

    #[test]
    fn while_another_replica_writes_its_realms_a_replica_keeps_one_group_and_one_commit() {
        let shared = shared();
        shared.writers.store(32, Ordering::Relaxed);
        shared.note_contention();
        assert_eq!((shared.realm_add_cap(), shared.commits_in_flight()), (usize::MAX, 1));
        // Contention long past (the window is over): split again.
        let past = Shared { born: Instant::now() - CONTENTION_WINDOW * 3, ..shared };
        past.contended_at.store(1, Ordering::Relaxed);
        assert_eq!((past.realm_add_cap(), past.commits_in_flight()), (16, 2));
    }

    fn state(content: &str) -> FileState {
        let row = crate::store::FileRow { content: content.into(), content_hash: format!("h-{content}"), created: 1, last_modified: 1, binary: false };
        FileState::new(row, None)
    }

    fn content(batch: &RealmBatch, path: &str) -> Option<Option<String>> {
        batch.seen(path).map(|seen| seen.state.map(|s| s.row.content.clone()))
    }

    #[test]
    fn after_another_replicas_writes_only_the_checked_known_files_stay_known_as_the_check_found_them() {
        let known = KnownFiles {
            seq: 5,
            files: [
                ("same.txt".to_string(), Some(state("same"))),
                ("changed.txt".to_string(), Some(state("old"))),
                ("deleted.txt".to_string(), Some(state("was"))),
                ("absent.txt".to_string(), None),
                ("unchecked.txt".to_string(), Some(state("stale?"))),
            ]
            .into_iter()
            .collect(),
        };
        let asked = vec!["same.txt".to_string(), "new.txt".to_string(), "missing.txt".to_string()];
        // What split_known would have checked, less the one left out.
        let checked: Vec<String> = ["same.txt", "changed.txt", "deleted.txt", "absent.txt"].map(String::from).into();
        let locked = sql::Locked {
            access: Some(Vec::new()),
            seq: Some(7),
            found: HashMap::from([("changed.txt".to_string(), state("new")), ("new.txt".to_string(), state("fresh"))]),
            gone: vec!["deleted.txt".to_string()],
        };
        let batch = Read { paths: asked, checked, known: Some(known), locked }.into_batch();
        assert_eq!(content(&batch, "same.txt"), Some(Some("same".into())), "unchanged since: still known");
        assert_eq!(content(&batch, "changed.txt"), Some(Some("new".into())), "stored anew: as read");
        assert_eq!(content(&batch, "deleted.txt"), Some(None), "gone since");
        assert_eq!(content(&batch, "absent.txt"), Some(None), "still absent");
        assert_eq!(content(&batch, "unchecked.txt"), None, "not checked: not trusted, read when needed");
        assert_eq!(content(&batch, "new.txt"), Some(Some("fresh".into())));
        assert_eq!(content(&batch, "missing.txt"), Some(None), "asked and not found: absent");
    }

    #[test]
    fn with_the_seq_unmoved_every_known_file_stays_known() {
        let known = KnownFiles { seq: 5, files: [("a.txt".to_string(), Some(state("a"))), ("b.txt".to_string(), None)].into_iter().collect() };
        let locked = sql::Locked { access: Some(Vec::new()), seq: Some(5), found: HashMap::new(), gone: Vec::new() };
        let batch = Read { paths: vec!["a.txt".into()], checked: Vec::new(), known: Some(known), locked }.into_batch();
        assert_eq!(content(&batch, "a.txt"), Some(Some("a".into())));
        assert_eq!(content(&batch, "b.txt"), Some(None));
    }

    #[test]
    fn asked_known_paths_are_always_checked_and_others_up_to_the_cap_on_a_busy_realm() {
        let files = (0..100).map(|i| (format!("k{i}.txt"), None)).collect();
        let known = KnownFiles { seq: 1, files };
        let asked = Asked { paths: vec!["k99.txt".into(), "u.txt".into()], busy: true };
        let (unknown, checked) = split_known(&asked, Some(&known));
        assert_eq!(unknown, ["u.txt"]);
        assert_eq!(checked.len(), KNOWN_CHECKED);
        assert_eq!(checked[0], "k99.txt", "the asked one first");
        assert_eq!(checked.iter().filter(|p| *p == "k99.txt").count(), 1);
        let quiet = Asked { busy: false, ..asked };
        let (unknown, checked) = split_known(&quiet, Some(&known));
        assert_eq!((unknown, checked), (vec!["u.txt".to_string()], vec!["k99.txt".to_string()]), "a quiet realm checks only what is asked");
        assert_eq!(split_known(&quiet, None), (quiet.paths.clone(), Vec::new()), "nothing known: everything asked is read");
    }

    #[test]
    fn a_full_half_takes_no_new_realm_but_still_admits_writers_of_its_own() {
        let shared = Arc::new(shared());
        shared.writers.store(4, Ordering::Relaxed);
        let (group, _slot) = Group::pending(COALESCING, shared.clone()).expect("pending group");
        assert!(group.join_to_add(true), "second of four writers: within half");
        assert!(!group.join_to_add(true), "third: the next group takes it");
        assert!(group.join_to_add(false), "no split (SQLite): one group takes every realm");
        assert!(group.join(), "a writer of a realm the group holds joins it anyway");
    }
}
