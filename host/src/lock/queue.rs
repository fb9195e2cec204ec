//! `Locks`, the in-process side of the write locks: one FIFO turn per
//! realm (a writer waits here before it touches a pooled connection), and
//! which commit group holds each realm's database lock. At its turn a
//! writer joins the group that holds its realm; else it adds the realm to
//! the replica's open group (Postgres: only if the realm's advisory lock is
//! free right now; SQLite: its one transaction covers every realm), opening
//! one if there is none (published before it is begun, so writers arriving
//! meanwhile share it); a realm another replica holds gets a group of its
//! own that waits for the lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::error::WriteError;
use super::group::{split_known, wanted, Asked, BatchStats, Coalescing, Group, InPath, Read, Shared, TxSlot};
use super::known::{KnownFiles, KnownRealms};
use super::sql;
use super::txn::{Limits, Waiters, WriteTxn, PREFETCH_HINTS};
use crate::store::Database;

/// Times a writer whose realm another replica holds tries the replica's
/// next shared group (once the one it tried is over) before it waits for
/// the lock in a group of its own.
const SHARED_RETRIES: usize = 3;

/// Bytes of realms' files a replica keeps between batches unless told.
pub const DEFAULT_KNOWN_BYTES: usize = 64 << 20;

/// The in-process side of the write locks: one FIFO turn per realm, and
/// the commit groups.
pub struct Locks {
    queues: Mutex<HashMap<String, Arc<RealmQueue>>>,
    /// The group other realms may join (the newest open one).
    current: Mutex<Option<Arc<Group>>>,
    /// SQLite (one writer per database) and memory: one group at a time
    /// holds this until it is over.
    writer: Arc<tokio::sync::Mutex<()>>,
    timeout: Duration,
    limits: Limits,
    coalescing: Coalescing,
    pub stats: Arc<BatchStats>,
    shared: Arc<Shared>,
    tickets: AtomicU64,
    /// Writers holding a realm's turn while they wait for its database lock.
    opening: std::sync::atomic::AtomicUsize,
}

/// One realm's queue.
#[derive(Default)]
struct RealmQueue {
    /// Whoever holds it runs the realm's critical section.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// The group holding the realm's database lock, while it is open.
    group: Mutex<Option<Arc<Group>>>,
    /// Who waits for the turn, and what they will read.
    waiters: Arc<Waiters>,
    /// The realm's last add to a shared group found its lock held by
    /// another transaction (another replica's): with no open group to try,
    /// its next writer waits for the lock in a group of its own at once,
    /// rather than beginning a shared group only to leave it.
    held_elsewhere: std::sync::atomic::AtomicBool,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl RealmQueue {
    fn group(&self) -> Option<Arc<Group>> {
        locked(&self.group).clone()
    }
}

impl Locks {
    pub fn new(timeout: Duration, limits: Limits) -> Locks {
        Locks::with_coalescing(timeout, limits, Coalescing::OFF)
    }

    pub fn with_coalescing(timeout: Duration, limits: Limits, coalescing: Coalescing) -> Locks {
        let stats = Arc::new(BatchStats::default());
        let shared = Shared::new(stats.clone(), tokio::sync::broadcast::channel(4096).0, 10_000, Arc::new(KnownRealms::new(DEFAULT_KNOWN_BYTES)));
        Locks {
            queues: Mutex::new(HashMap::new()),
            current: Mutex::new(None),
            writer: Arc::new(tokio::sync::Mutex::new(())),
            timeout,
            limits,
            coalescing,
            stats,
            shared: Arc::new(shared),
            tickets: AtomicU64::new(0),
            opening: Default::default(),
        }
    }

    /// Keeps the newest `count` events of each realm (an appended event
    /// retires the one `count` before it; pruning by age is the events
    /// hub's).
    pub fn retaining_events(self, count: u64) -> Locks {
        let retain_events = i64::try_from(count).unwrap_or(i64::MAX);
        self.with_shared(|s| Shared { retain_events, ..s })
    }

    /// Keeps up to `bytes` of realms' files between batches (0: none), so
    /// a realm's next batch need not read them again while no one else
    /// wrote the realm.
    pub fn knowing_files(self, bytes: usize) -> Locks {
        self.with_shared(|s| Shared { known: Arc::new(KnownRealms::new(bytes)), ..s })
    }

    /// Before any group exists (the builders above).
    fn with_shared(mut self, change: impl FnOnce(Shared) -> Shared) -> Locks {
        let s = &self.shared;
        let copy = Shared::new(s.stats.clone(), s.committed.clone(), s.retain_events, s.known.clone());
        self.shared = Arc::new(change(copy));
        self
    }

    /// The realm and newest seq of every commit that appended events, from now on.
    pub fn commits(&self) -> tokio::sync::broadcast::Receiver<(String, i64)> {
        self.shared.committed.subscribe()
    }

    /// Writers waiting for the realm's turn right now.
    pub fn waiting(&self, realm: &str) -> usize {
        self.queue(realm).waiters.count()
    }

    /// Writers that have their realm's turn and wait for its database lock
    /// right now (Postgres: another transaction holds it; SQLite: another
    /// process writes).
    pub fn opening(&self) -> usize {
        self.opening.load(Ordering::SeqCst)
    }

    /// Writers between asking for a realm's lock and learning how their
    /// commit ended, right now, over all realms.
    pub fn in_progress(&self) -> usize {
        self.shared.writers.load(Ordering::Relaxed)
    }

    /// Writers waiting for a realm's turn right now, over all realms.
    pub fn waiting_total(&self) -> usize {
        locked(&self.queues).values().map(|q| q.waiters.count()).sum()
    }

    fn queue(&self, realm: &str) -> Arc<RealmQueue> {
        locked(&self.queues).entry(realm.to_string()).or_default().clone()
    }

    /// Waits for the realm's write lock, on this process and in the database.
    pub async fn acquire(&self, db: &Database, realm: &str) -> Result<WriteTxn, WriteError> {
        self.acquire_for(db, realm, Vec::new()).await
    }

    /// `acquire`, naming the paths the writer will read (`hints`): whoever
    /// reads the realm first in a batch reads every queued writer's paths
    /// in the same query.
    pub async fn acquire_for(&self, db: &Database, realm: &str, hints: Vec<String>) -> Result<WriteTxn, WriteError> {
        let deadline = Instant::now() + self.timeout;
        let counted = InPath::count(&self.shared);
        let queue = self.queue(realm);
        // Counted as admitted before joining (and uncounted if the group
        // refuses): a turn holder that sees no admitted writer behind it may
        // wait for the group's end holding the turn.
        let mut ticket = Ticket::enter(&queue, self.tickets.fetch_add(1, Ordering::Relaxed), hints.clone(), true);
        // Joining the realm's open group now keeps it open for us while we wait.
        let mut admitted = Admitted(queue.group().filter(|g| g.join()));
        if admitted.0.is_none() {
            ticket.not_admitted();
        }
        let mut turn = Some(take_turn(&queue, ticket, &mut admitted, deadline, realm).await?);
        let group = loop {
            match queue.group() {
                Some(group) if admitted.is(&group) => {
                    admitted.0 = None;
                    break group;
                }
                Some(group) => {
                    admitted.release();
                    if group.join() {
                        break group;
                    }
                    // Full or closing (for good: it admits nobody again).
                    // Writers it admitted that are queued behind us must
                    // have the turn before it can end: then wait for its
                    // end without the turn and queue again; else wait
                    // holding the turn, keeping our place.
                    if queue.waiters.admitted() > 0 {
                        turn = None;
                    }
                    let ended = tokio::time::timeout_at(deadline, group.finished()).await;
                    if ended.is_err() {
                        return Err(WriteError::LockTimeout(realm.to_string()));
                    }
                    {
                        let mut holder = locked(&queue.group);
                        if holder.as_ref().is_some_and(|g| Arc::ptr_eq(g, &group)) {
                            *holder = None;
                        }
                    }
                    if turn.is_none() {
                        let ticket = Ticket::enter(&queue, self.tickets.fetch_add(1, Ordering::Relaxed), hints.clone(), false);
                        turn = Some(take_turn(&queue, ticket, &mut admitted, deadline, realm).await?);
                    }
                }
                None => {
                    admitted.release();
                    // Read along with the lock: what this writer and the
                    // ones queued behind it will read.
                    let mut asked = queue.waiters.asked_with_lock(PREFETCH_HINTS);
                    asked.paths.extend(hints.iter().cloned());
                    asked.paths.sort();
                    asked.paths.dedup();
                    let group = self.group_for(db, &queue, realm, asked, deadline).await?;
                    *locked(&queue.group) = Some(group.clone());
                    break group;
                }
            }
        };
        // Our place in the group leaves it if this future is dropped before
        // the `WriteTxn` below owns it (a client that went away).
        let mut member = Admitted(Some(group.clone()));
        let turn = match turn {
            Some(turn) => turn,
            None => {
                let ticket = Ticket::enter(&queue, self.tickets.fetch_add(1, Ordering::Relaxed), hints.clone(), false);
                take_turn(&queue, ticket, &mut admitted, deadline, realm).await?
            }
        };
        // No await from taking the batch to the `WriteTxn` that puts it back.
        let batch = group.take_batch(realm)?;
        member.0 = None;
        queue.waiters.took_turn();
        Ok(WriteTxn::new(realm, group, queue.waiters.clone(), turn, batch, self.limits, counted))
    }

    /// A group that holds `realm`'s lock (having read what is `asked` of it), with
    /// the caller admitted. What the replica knew of the realm (it holds the
    /// realm's turn, so no one else here uses it meanwhile) goes to the
    /// batch, or back.
    async fn group_for(&self, db: &Database, queue: &RealmQueue, realm: &str, asked: Asked, deadline: Instant) -> Result<Arc<Group>, WriteError> {
        let mut known = self.shared.known.take(realm);
        let found = self.find_group(db, queue, realm, asked, deadline, &mut known).await;
        if let Some(unused) = known {
            self.shared.known.put(realm, unused);
        }
        found
    }

    async fn find_group(&self, db: &Database, queue: &RealmQueue, realm: &str, asked: Asked, deadline: Instant, known: &mut Option<KnownFiles>) -> Result<Arc<Group>, WriteError> {
        let mut retries = 0;
        let split = matches!(db, Database::Postgres(_));
        loop {
            let shared = if queue.held_elsewhere.load(Ordering::Relaxed) && retries == 0 { self.current(split).map(|g| (g, None)) } else { Some(self.current_or_pending(split)?) };
            let Some((group, slot)) = shared else { break };
            let mut joined = Joined { group: Some(group.clone()), slot };
            if joined.slot.is_some() {
                let begun = self.begin(db, deadline, realm).await;
                let failed = begun.as_ref().err().cloned();
                if let Some(slot) = joined.slot.take() {
                    group.begun(slot, begun);
                }
                if let Some(e) = failed {
                    return Err(e);
                }
            }
            let added = group.try_add(realm, asked.clone(), known).await;
            queue.held_elsewhere.store(matches!(added, Ok(false)), Ordering::Relaxed);
            match added {
                Ok(true) => {
                    joined.group = None;
                    return Ok(group);
                }
                // Postgres: another replica holds the realm's lock. Its
                // groups last about as long as ours: once ours is over, the
                // realm is likely free for the next one, and a writer in a
                // shared group costs less than a group of its own.
                Ok(false) => {
                    drop(joined);
                    if retries == SHARED_RETRIES {
                        break;
                    }
                    retries += 1;
                    if tokio::time::timeout_at(deadline, group.finished()).await.is_err() {
                        return Err(WriteError::LockTimeout(realm.to_string()));
                    }
                }
                // The group's opener could not begin it (its own wait ran
                // out, or it went away): that says nothing of our wait, so
                // look for another group while we have time.
                Err(_) if group.never_began() && Instant::now() < deadline => drop(joined),
                Err(e) => return Err(e),
            }
        }
        // A transaction that already holds locks must not wait for another
        // (no two replicas may deadlock): wait for it in a group of our own.
        // (SQLite's and memory's one transaction covers every realm: never here.)
        if !matches!(db, Database::Postgres(_)) {
            return Err(WriteError::Storage(format!("{realm} could not join the database's one write transaction")));
        }
        let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let (unknown, checked) = split_known(&asked, known.as_ref());
        let (tx, held) = self.open(db, realm, wanted(&unknown, &checked, known.as_ref()), remaining).await?;
        let read = Read { paths: asked.paths, checked, known: known.take(), locked: held };
        let group = Group::new(tx, realm, read, self.coalescing, self.shared.clone(), None);
        *locked(&self.current) = Some(group.clone());
        Ok(group)
    }

    /// The replica's open group, joined to add a realm (see
    /// [`Group::join_to_add`]), if there is one.
    fn current(&self, split: bool) -> Option<Arc<Group>> {
        locked(&self.current).as_ref().filter(|g| g.join_to_add(split)).cloned()
    }

    /// The replica's open group, joined to add a realm; else a new one, published at once
    /// (so writers arriving while it is begun join it) with the slot its
    /// transaction goes in.
    fn current_or_pending(&self, split: bool) -> Result<(Arc<Group>, Option<TxSlot>), WriteError> {
        let mut current = locked(&self.current);
        if let Some(group) = current.as_ref().filter(|g| g.join_to_add(split)) {
            return Ok((group.clone(), None));
        }
        // (Not `current()`: checking and publishing under one lock, so two
        // writers finding no open group do not each begin one.)
        let (group, slot) = Group::pending(self.coalescing, self.shared.clone())?;
        *current = Some(group.clone());
        Ok((group, Some(slot)))
    }

    /// Begins a group's transaction (SQLite and memory: once the previous
    /// group has let go of the one-writer slot), counted in
    /// [`Locks::opening`] while it waits.
    async fn begin(&self, db: &Database, deadline: Instant, realm: &str) -> Result<(sql::Tx, Option<tokio::sync::OwnedMutexGuard<()>>), WriteError> {
        let _counted = Opening::count(&self.opening);
        let writer = match db {
            Database::Postgres(_) => None,
            _ => {
                let writer = tokio::time::timeout_at(deadline, self.writer.clone().lock_owned()).await;
                Some(writer.map_err(|_| WriteError::LockTimeout(realm.to_string()))?)
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        // The opener waits until its own deadline; the transaction then
        // serves every writer that joins it, so its lock waits get the
        // whole lock timeout, not what the opener had left.
        Ok((sql::begin(db, remaining, self.timeout).await?, writer))
    }

    /// `sql::open`, counted in [`Locks::opening`] while it waits.
    async fn open(&self, db: &Database, realm: &str, wanted: sql::Wanted<'_>, remaining: Duration) -> Result<(sql::Tx, sql::Locked), WriteError> {
        let _counted = Opening::count(&self.opening);
        sql::open(db, realm, wanted, remaining).await
    }
}

/// Counts a writer in [`Locks::opening`] while it lives.
struct Opening<'a>(&'a std::sync::atomic::AtomicUsize);

impl Opening<'_> {
    fn count(opening: &std::sync::atomic::AtomicUsize) -> Opening<'_> {
        opening.fetch_add(1, Ordering::SeqCst);
        Opening(opening)
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Takes the realm's turn (waiting until `deadline`) with the group place
/// the previous holder kept for its successor, then gives the ticket back.
async fn take_turn(queue: &Arc<RealmQueue>, ticket: Ticket, admitted: &mut Admitted, deadline: Instant, realm: &str) -> Result<tokio::sync::OwnedMutexGuard<()>, WriteError> {
    let turn = tokio::time::timeout_at(deadline, queue.turn.clone().lock_owned()).await;
    let turn = turn.map_err(|_| WriteError::LockTimeout(realm.to_string()))?;
    if let Some(handed) = queue.waiters.take_handover() {
        if admitted.0.is_none() {
            admitted.0 = Some(handed);
        } else {
            handed.leave(false);
        }
    }
    drop(ticket);
    Ok(turn)
}

/// A writer queued for a realm's turn, counted among its waiters (with the
/// paths it will read, and whether the realm's group admitted it) until it
/// has the turn or gives up.
struct Ticket {
    queue: Arc<RealmQueue>,
    id: u64,
    admitted: bool,
}

impl Ticket {
    fn enter(queue: &Arc<RealmQueue>, id: u64, hints: Vec<String>, admitted: bool) -> Ticket {
        queue.waiters.enter(id, hints, admitted);
        Ticket { queue: queue.clone(), id, admitted }
    }

    /// The group did not admit this writer after all.
    fn not_admitted(&mut self) {
        if std::mem::take(&mut self.admitted) {
            self.queue.waiters.not_admitted();
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.queue.waiters.leave(self.id, self.admitted);
    }
}

/// A group the writer was admitted to; leaving it unused (e.g. the wait
/// for the turn timed out) lets it commit without us.
struct Admitted(Option<Arc<Group>>);

impl Admitted {
    fn is(&self, group: &Arc<Group>) -> bool {
        self.0.as_ref().is_some_and(|g| Arc::ptr_eq(g, group))
    }

    fn release(&mut self) {
        if let Some(group) = self.0.take() {
            group.leave(false);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.release();
    }
}

/// A writer's place in a group it joined to add its realm, and the pending
/// group's transaction slot while it is the one to begin it. Dropped (an
/// error, or the writer's future dropped mid-wait), it leaves the group, so
/// the group can still commit without it, and a slot never filled tells
/// those waiting for the transaction why instead of leaving it empty.
struct Joined {
    group: Option<Arc<Group>>,
    slot: Option<TxSlot>,
}

impl Drop for Joined {
    fn drop(&mut self) {
        if let Some(group) = self.group.take() {
            if let Some(slot) = self.slot.take() {
                group.begun(slot, Err(WriteError::Unavailable("the writer opening this shared transaction went away before beginning it; retry".into())));
            }
            group.leave(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    use super::{locked, Coalescing, Group, Limits, Locks, WriteError, WriteTxn};
    use crate::store::{Database, Permissions};

    const REALM: &str = "http://example.test/realm/";

    async fn sqlite() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Database::connect(&format!("sqlite://{}", dir.path().join("t.db").display())).await.expect("connect");
        db.create_realm(REALM, Permissions::default()).await.expect("realm");
        (dir, db)
    }

    const LIMITS: Limits = Limits { card_bytes: 1 << 20, file_bytes: 1 << 20 };

    fn coalescing_locks() -> Arc<Locks> {
        Arc::new(Locks::with_coalescing(Duration::from_secs(10), LIMITS, Coalescing { max_batch: 64, max_wait: Duration::from_secs(10) }))
    }

    async fn until_waiting(locks: &Locks, n: usize) {
        while locks.waiting(REALM) < n {
            tokio::task::yield_now().await;
        }
    }

    /// The batches committed so far, and the requests they carried.
    fn assert_commits(locks: &Locks, batches: u64, members: u64) {
        assert_eq!(locks.stats.batches.load(Ordering::Relaxed), batches, "batches");
        assert_eq!(locks.stats.members.load(Ordering::Relaxed), members, "members");
    }

    async fn committed(db: &Database, path: &str) -> bool {
        db.read_file(REALM, path).await.expect("read").is_some()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_batch_commits_its_members_and_answers_none_before_the_commit() {
        let (_dir, db) = sqlite().await;
        let locks = coalescing_locks();
        let mut a = locks.acquire(&db, REALM).await.expect("a");
        let (l, d) = (locks.clone(), db.clone());
        let b = tokio::spawn(async move { l.acquire(&d, REALM).await });
        until_waiting(&locks, 1).await;

        a.write("a.txt", "from a", None).await.expect("write a");
        let a_commit = tokio::spawn(a.commit());
        let mut b = b.await.expect("task").expect("b joins the open batch");
        // A's commit has not answered, and its write is not durable yet.
        assert!(!a_commit.is_finished());
        assert!(!committed(&db, "a.txt").await);
        // B sees A's write in the batch.
        assert!(b.exists("a.txt").await.expect("exists"));
        b.write("b.txt", "from b", None).await.expect("write b");
        b.commit().await.expect("b commits the batch");
        a_commit.await.expect("task").expect("a's commit succeeds with the batch");
        assert!(committed(&db, "a.txt").await && committed(&db, "b.txt").await);
        assert_commits(&locks, 1, 2);
    }

    // Each test opens the same way (a holder, a waiter); what follows differs.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_failing_member_rolls_back_alone() {
        let (_dir, db) = sqlite().await;
        let locks = coalescing_locks();
        let mut a = locks.acquire(&db, REALM).await.expect("a");
        let spawn_acquire = |locks: Arc<Locks>, db: Database| tokio::spawn(async move { locks.acquire(&db, REALM).await });
        let b = spawn_acquire(locks.clone(), db.clone());
        until_waiting(&locks, 1).await;
        a.write("a.txt", "from a", None).await.expect("write a");
        let a_commit = tokio::spawn(a.commit());

        let mut b = b.await.expect("task").expect("b");
        let c = spawn_acquire(locks.clone(), db.clone());
        until_waiting(&locks, 1).await;
        b.write("b.txt", "from b", None).await.expect("write b");
        b.rollback().await.expect("b rolls back its own writes");

        let mut c = c.await.expect("task").expect("c");
        assert!(!c.exists("b.txt").await.expect("exists"), "b's rolled-back write is gone");
        c.write("c.txt", "from c", None).await.expect("write c");
        assert!(!a_commit.is_finished());
        c.commit().await.expect("c commits");
        a_commit.await.expect("task").expect("a committed");
        assert!(committed(&db, "a.txt").await && committed(&db, "c.txt").await);
        assert!(!committed(&db, "b.txt").await);
        assert_commits(&locks, 1, 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_idle_realm_commits_at_once_and_a_reader_that_wrote_nothing_lets_the_next_in() {
        let (_dir, db) = sqlite().await;
        let locks = coalescing_locks();
        let mut a = locks.acquire(&db, REALM).await.expect("a");
        a.write("a.txt", "alone", None).await.expect("write");
        a.commit().await.expect("commit");
        assert!(committed(&db, "a.txt").await);
        assert_eq!(locks.stats.batches.load(Ordering::Relaxed), 1);
        // A member that only read, then gave up (a 404, a 412), dropped.
        let mut b = locks.acquire(&db, REALM).await.expect("b");
        assert!(b.read("missing.txt").await.expect("read").is_none());
        assert!(!b.exists("missing").await.expect("exists"));
        drop(b);
        // Let that group end before anyone asks how it ended (an outcome
        // nobody was waiting for was once lost, and the next writer hung).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut c = tokio::time::timeout(Duration::from_secs(5), locks.acquire(&db, REALM)).await.expect("not stuck").expect("c");
        c.write("c.txt", "next", None).await.expect("write");
        c.commit().await.expect("commit");
        assert!(committed(&db, "c.txt").await);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_writer_that_cannot_join_its_realms_full_group_lets_those_admitted_behind_it_go_first() {
        let (_dir, db) = sqlite().await;
        let other = "http://example.test/other/";
        db.create_realm(other, Permissions::default()).await.expect("realm");
        let coalescing = Coalescing { max_batch: 2, max_wait: Duration::from_secs(10) };
        let locks = Arc::new(Locks::with_coalescing(Duration::from_secs(5), LIMITS, coalescing));
        let spawn_acquire = |realm: &'static str| {
            let (locks, db) = (locks.clone(), db.clone());
            tokio::spawn(async move { locks.acquire(&db, realm).await })
        };
        // A full group on another realm holds SQLite's one writer slot.
        let a = locks.acquire(&db, other).await.expect("a");
        let a2 = spawn_acquire(other);
        while locks.waiting(other) < 1 {
            tokio::task::yield_now().await;
        }
        // V takes REALM's turn and waits for the writer slot; W queues
        // behind V before REALM has a group, so W is admitted to none.
        let v = spawn_acquire(REALM);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let w = spawn_acquire(REALM);
        until_waiting(&locks, 1).await;
        a.commit().await.expect("a");
        a2.await.expect("task").expect("a2").commit().await.expect("a2");
        let mut v = v.await.expect("task").expect("v opens REALM's group");
        // X is admitted to V's group (now full) while queued behind W.
        let x = spawn_acquire(REALM);
        until_waiting(&locks, 2).await;
        v.write("v.txt", "v", None).await.expect("write");
        let v_commit = tokio::spawn(v.commit());
        let mut x = tokio::time::timeout(Duration::from_secs(3), x).await.expect("x is not stuck behind w").expect("task").expect("x");
        x.write("x.txt", "x", None).await.expect("write");
        x.commit().await.expect("x commits the group");
        v_commit.await.expect("task").expect("v");
        let mut w = w.await.expect("task").expect("w gets a group of its own");
        w.write("w.txt", "w", None).await.expect("write");
        w.commit().await.expect("w");
        for path in ["v.txt", "x.txt", "w.txt"] {
            assert!(committed(&db, path).await, "{path}");
        }
    }

    /// SQLite: a full group on `other` holds the one writer slot; `opener`
    /// takes REALM's turn, opens the replica's next group and waits for
    /// the slot; a writer of `third` joins that pending group. Answers the
    /// held group's two members, the opener's task, the joiner's task and
    /// the pending group.
    async fn a_pending_group_with_a_joiner(
        locks: &Arc<Locks>,
        db: &Database,
    ) -> (WriteTxn, tokio::task::JoinHandle<Result<WriteTxn, WriteError>>, tokio::task::JoinHandle<Result<WriteTxn, WriteError>>, tokio::task::JoinHandle<Result<WriteTxn, WriteError>>, Arc<Group>) {
        let spawn_acquire = |realm: &'static str| {
            let (locks, db) = (locks.clone(), db.clone());
            tokio::spawn(async move { locks.acquire(&db, realm).await })
        };
        let a = locks.acquire(db, OTHER).await.expect("a");
        let a2 = spawn_acquire(OTHER);
        while locks.waiting(OTHER) < 1 {
            tokio::task::yield_now().await;
        }
        let opener = spawn_acquire(REALM);
        while locks.opening() < 1 {
            tokio::task::yield_now().await;
        }
        let pending = locked(&locks.current).clone().expect("the opener published its pending group");
        let joiner = spawn_acquire(THIRD);
        while pending.active() < 2 {
            tokio::task::yield_now().await;
        }
        (a, a2, opener, joiner, pending)
    }

    const OTHER: &str = "http://example.test/other/";
    const THIRD: &str = "http://example.test/third/";

    /// REALM, OTHER and THIRD on SQLite; groups of at most two writers.
    async fn three_realms(lock_timeout: Duration) -> (tempfile::TempDir, Database, Arc<Locks>) {
        let (dir, db) = sqlite().await;
        for realm in [OTHER, THIRD] {
            db.create_realm(realm, Permissions::default()).await.expect("realm");
        }
        let coalescing = Coalescing { max_batch: 2, max_wait: Duration::from_secs(10) };
        (dir, db, Arc::new(Locks::with_coalescing(lock_timeout, LIMITS, coalescing)))
    }

    /// Commits the full group on OTHER that holds SQLite's writer slot.
    async fn release_the_slot(a: WriteTxn, a2: tokio::task::JoinHandle<Result<WriteTxn, WriteError>>) {
        a.commit().await.expect("a");
        a2.await.expect("task").expect("a2").commit().await.expect("a2");
    }

    /// `writer` (of `realm`) finishes acquiring, writes `path` and commits
    /// within 5 s.
    async fn writes_and_commits(db: &Database, writer: tokio::task::JoinHandle<Result<WriteTxn, WriteError>>, realm: &str, path: &str) {
        let mut txn = tokio::time::timeout(Duration::from_secs(5), writer).await.expect("not stuck").expect("task").expect("acquired");
        txn.write(path, "x", None).await.expect("write");
        tokio::time::timeout(Duration::from_secs(5), txn.commit()).await.expect("the group commits").expect("commit");
        assert!(db.read_file(realm, path).await.expect("read").is_some(), "{realm}{path}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_writer_dropped_while_it_waits_in_a_shared_group_does_not_keep_the_group_from_committing() {
        let (_dir, db, locks) = three_realms(Duration::from_secs(5)).await;
        let (a, a2, opener, joiner, pending) = a_pending_group_with_a_joiner(&locks, &db).await;
        // The joiner's client goes away: its future is dropped mid-wait.
        joiner.abort();
        assert!(matches!(joiner.await, Err(e) if e.is_cancelled()), "aborted");
        assert_eq!(pending.active(), 1, "the dropped writer left the group");
        release_the_slot(a, a2).await;
        writes_and_commits(&db, opener, REALM, "o.txt").await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_opener_dropped_before_its_group_began_sends_its_joiners_to_another_group() {
        let (_dir, db, locks) = three_realms(Duration::from_secs(5)).await;
        let (a, a2, opener, joiner, pending) = a_pending_group_with_a_joiner(&locks, &db).await;
        opener.abort();
        assert!(matches!(opener.await, Err(e) if e.is_cancelled()), "aborted");
        assert!(!pending.join(), "a group that never began admits no one");
        release_the_slot(a, a2).await;
        writes_and_commits(&db, joiner, THIRD, "j.txt").await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_joiner_outlives_an_opener_whose_own_wait_ran_out() {
        let (_dir, db, locks) = three_realms(Duration::from_secs(2)).await;
        let fourth = "http://example.test/fourth/";
        db.create_realm(fourth, Permissions::default()).await.expect("realm");
        let spawn_acquire = |realm: &'static str| {
            let (locks, db) = (locks.clone(), db.clone());
            tokio::spawn(async move { locks.acquire(&db, realm).await })
        };
        // A full group of two realms, both writers in it at once (neither
        // waits for a turn past the 2 s lock timeout), holds the slot.
        let a = locks.acquire(&db, OTHER).await.expect("a");
        let a2 = locks.acquire(&db, fourth).await.expect("a2 joins a's group");
        let opener = spawn_acquire(REALM);
        while locks.opening() < 1 {
            tokio::task::yield_now().await;
        }
        let pending = locked(&locks.current).clone().expect("the opener published its pending group");
        // The joiner comes 1 s later: it has 1 s of its wait left when the
        // opener's runs out.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let joiner = spawn_acquire(THIRD);
        while pending.active() < 2 {
            tokio::task::yield_now().await;
        }
        let gave_up = opener.await.expect("task");
        assert!(matches!(gave_up, Err(WriteError::LockTimeout(_))), "the opener's own wait ran out: {:?}", gave_up.map(|_| ()));
        let (a, a2) = tokio::join!(a.commit(), a2.commit());
        a.expect("a");
        a2.expect("a2");
        writes_and_commits(&db, joiner, THIRD, "j.txt").await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_batch_reads_its_writers_paths_with_its_lock_and_on_a_busy_realm_the_recent_ones() {
        let (_dir, db) = sqlite().await;
        // Without files kept between batches, which would know them anyway.
        let coalescing = Coalescing { max_batch: 64, max_wait: Duration::from_secs(10) };
        let locks = Arc::new(Locks::with_coalescing(Duration::from_secs(10), LIMITS, coalescing).knowing_files(0));
        let mut a = locks.acquire_for(&db, REALM, vec!["mine.txt".into()]).await.expect("a");
        assert!(a.knows("mine.txt"), "the writer's own path is read with the lock");
        assert!(!a.knows("other.txt"));
        a.write("a.txt", "x", None).await.expect("write");
        a.commit().await.expect("commit");
        // The last batch had one writer, as this one: nothing more is read.
        let mut b = locks.acquire(&db, REALM).await.expect("b");
        assert!(!b.knows("a.txt"), "a quiet realm's batch reads only its writers' paths");
        // This batch gets a second writer, queued behind b.
        let (l, d) = (locks.clone(), db.clone());
        let c = tokio::spawn(async move {
            let mut c = l.acquire(&d, REALM).await?;
            c.write("c.txt", "c", None).await?;
            c.commit().await
        });
        until_waiting(&locks, 1).await;
        b.write("b.txt", "b", None).await.expect("write");
        b.commit().await.expect("b commits");
        c.await.expect("task").expect("c commits");
        assert_commits(&locks, 2, 3);
        // Two writers in the last batch, none queued now: more are expected.
        let next = locks.acquire(&db, REALM).await.expect("next");
        for path in ["a.txt", "b.txt", "c.txt"] {
            assert!(next.knows(path), "a busy realm's recently written paths come along: {path}");
        }
        drop(next);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_waiter_that_gives_up_does_not_hold_up_the_holder() {
        let (_dir, db) = sqlite().await;
        let coalescing = Coalescing { max_batch: 64, max_wait: Duration::from_secs(10) };
        let locks = Arc::new(Locks::with_coalescing(Duration::from_millis(200), LIMITS, coalescing));
        let mut a = locks.acquire(&db, REALM).await.expect("a");
        let (l, d) = (locks.clone(), db.clone());
        let b = tokio::spawn(async move { l.acquire(&d, REALM).await.map(|_| ()) });
        until_waiting(&locks, 1).await;
        a.write("a.txt", "from a", None).await.expect("write a");
        // Hold the turn until B's wait (200 ms lock timeout) has expired.
        let b_result = b.await.expect("task");
        assert!(b_result.is_err(), "b timed out");
        a.commit().await.expect("a commits alone");
        assert!(committed(&db, "a.txt").await);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn what_a_batch_saw_is_known_to_the_realms_next_batch_until_another_replica_writes() {
        let (_dir, db) = sqlite().await;
        let (here, elsewhere) = (coalescing_locks(), coalescing_locks());
        let mut a = here.acquire_for(&db, REALM, vec!["absent.txt".into()]).await.expect("a");
        a.write("a.txt", "one", None).await.expect("write");
        assert!(!a.exists("absent.txt").await.expect("exists"));
        a.write("b.txt", "b", None).await.expect("write");
        a.commit().await.expect("commit");
        let mut next = here.acquire(&db, REALM).await.expect("next");
        for path in ["a.txt", "b.txt", "absent.txt"] {
            assert!(next.knows(path), "{path} is known from the last batch");
        }
        assert_eq!(next.read("a.txt").await.expect("read").map(|r| r.content).as_deref(), Some("one"));
        drop(next);
        // Another replica (its own `Locks`, the same database) writes.
        let mut other = elsewhere.acquire(&db, REALM).await.expect("other");
        other.write("a.txt", "two", None).await.expect("write");
        other.write("absent.txt", "now here", None).await.expect("write");
        assert!(other.delete("b.txt").await.expect("delete"));
        other.commit().await.expect("commit");
        let mut after = here.acquire(&db, REALM).await.expect("after");
        assert_eq!(after.read("a.txt").await.expect("read").map(|r| r.content).as_deref(), Some("two"), "not the kept 'one'");
        assert!(after.exists("absent.txt").await.expect("exists"), "created elsewhere");
        assert!(!after.exists("b.txt").await.expect("exists"), "deleted elsewhere");
        drop(after);
    }
}
