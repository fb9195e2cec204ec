//! Every statement the write path sends, per backend: opening a
//! transaction that holds a realm's lock (and adding realms to it), reading
//! the rows a batch needs, and the flush that writes a whole batch — on
//! Postgres one statement for every table of every realm in it, on SQLite a
//! few multi-row statements — before its one COMMIT.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Postgres, Row, Sqlite, Transaction};

use super::error::WriteError;
use super::outbox::EVENTS_CHANNEL;
use super::overlay::{CardRow, FileState, RealmChanges};
use crate::search::index::SEARCH_VERSION;
use crate::store::{advisory_lock_key, Database, FileRow, MemoryStore, Permissions, Staged};

/// The open transaction of a batch: it holds the database-level lock of
/// every realm in the batch (SQLite: the database's one write lock).
pub(super) enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(PgTx),
    /// The in-memory store: nothing to lock (the in-process turn is the
    /// lock); the flush applies the batch.
    Memory(Arc<MemoryStore>),
}

/// A Postgres transaction on a pooled connection, begun by hand (so BEGIN,
/// the timeouts and the lock take one round trip). A connection whose
/// transaction did not end cleanly is closed, never pooled: closing it
/// ends the transaction and frees its locks.
pub(super) struct PgTx {
    conn: PoolConnection<Postgres>,
    open: bool,
}

impl PgTx {
    /// Runs `begin` (statements that open the transaction) on a pooled connection.
    async fn begin(pool: &sqlx::PgPool, begin: String) -> Result<PgTx, sqlx::Error> {
        let mut tx = PgTx { conn: pool.acquire().await?, open: true };
        // Half begun (e.g. the lock wait timed out inside the transaction),
        // the connection is dropped with `open` set: closed, never pooled.
        sqlx::Executor::execute(tx.conn(), begin.as_str()).await?;
        Ok(tx)
    }

    fn conn(&mut self) -> &mut sqlx::PgConnection {
        &mut self.conn
    }

    async fn end(mut self, statement: &'static str) -> Result<(), WriteError> {
        sqlx::Executor::execute(self.conn(), statement).await?;
        self.open = false;
        Ok(())
    }
}

impl Drop for PgTx {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

/// How long a statement may run past the lock wait it started with.
const STATEMENT_SLACK: Duration = Duration::from_secs(30);

/// Postgres: takes realms' advisory locks (waiting for them, or only those
/// free right now) and, for each realm it holds, reads who may do what in
/// it, its newest event seq and the files asked for: any number of realms
/// in one round trip. A PL/pgSQL function because each statement of a
/// volatile function takes its own snapshot: the reads see whatever the
/// previous holder committed (a read in the locking statement itself would
/// not). Paths come flattened, each with its realm's number (from 1) and
/// whether the replica knows it already as of the realm's seq in
/// `p_known_seqs` (with the version it knows: hash, times, card row
/// version; NULL hash for known absent). A path not known is read; a
/// known one only if the seq moved, and then only if its stored version
/// is another (a row with NULL content: gone since). Per realm, a first
/// row says whether the lock was taken and carries the permissions (JSON)
/// and seq (`path` NULL); file rows follow. (Earlier builds' functions of
/// other arguments are left for replicas still on them.)
const LOCK_AND_READ_FUNCTION: &str = "DROP FUNCTION IF EXISTS realm_core_lock_and_read(boolean, bigint[], text[], bigint[], int[], text[], boolean[],
                                                    text[], bigint[], bigint[], bigint[]);
CREATE FUNCTION realm_core_lock_and_read(p_wait boolean, p_keys bigint[], p_realms text[], p_known_seqs bigint[],
                                         p_path_realm int[], p_paths text[], p_path_known boolean[],
                                         p_known_hashes text[], p_known_created bigint[], p_known_modified bigint[], p_known_card_versions bigint[])
    RETURNS TABLE (realm_no int, locked boolean, permissions text, seq bigint, path text, content text, content_hash text, created_at bigint,
                   last_modified bigint, content_encoding text, card_id text, card_type text, search_doc text, search_version bigint)
    LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_i int;
    v_seq bigint;
    v_moved boolean;
BEGIN
    FOR v_i IN 1 .. COALESCE(array_length(p_keys, 1), 0) LOOP
        IF p_wait THEN
            PERFORM pg_advisory_xact_lock(p_keys[v_i]);
        ELSIF NOT pg_try_advisory_xact_lock(p_keys[v_i]) THEN
            RETURN QUERY SELECT v_i, false, NULL::text, NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::bigint,
                NULL::text, NULL::text, NULL::text, NULL::text, NULL::bigint;
            CONTINUE;
        END IF;
        SELECT COALESCE(MAX(e.seq), 0) INTO v_seq FROM realm_events e WHERE e.realm_url = p_realms[v_i];
        v_moved := v_seq IS DISTINCT FROM p_known_seqs[v_i];
        RETURN QUERY SELECT v_i, true,
                (SELECT COALESCE(json_agg(json_build_array(p.username, p.can_read, p.can_write, p.realm_owner)), '[]'::json)::text
                 FROM realm_permissions p WHERE p.realm_url = p_realms[v_i]),
                v_seq, NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::text, NULL::bigint;
        RETURN QUERY SELECT v_i, true, NULL::text, NULL::bigint, q.p, f.content, f.content_hash, f.created_at, f.last_modified,
                f.content_encoding, c.card_id, c.card_type, c.search_doc, c.search_version
            FROM unnest(p_path_realm, p_paths, p_path_known, p_known_hashes, p_known_created, p_known_modified, p_known_card_versions)
                AS q(r, p, k, h, cr, m, cv)
            LEFT JOIN files f ON f.realm_url = p_realms[v_i] AND f.path = q.p
            LEFT JOIN card_index c ON c.realm_url = f.realm_url AND c.path = f.path
            -- (the second condition filters before the joins: no lookup of a known path while the seq holds)
            WHERE q.r = v_i AND (NOT q.k OR v_moved) AND CASE
                WHEN NOT q.k THEN f.path IS NOT NULL
                WHEN f.path IS NULL THEN q.h IS NOT NULL
                ELSE (f.content_hash, f.created_at, f.last_modified) IS DISTINCT FROM (q.h, q.cr, q.m)
                    OR (CASE WHEN c.card_id IS NULL THEN NULL ELSE COALESCE(c.search_version, 0) END) IS DISTINCT FROM q.cv
            END;
    END LOOP;
END
$fn$";

/// Creates what the write path needs in the database beyond the shared
/// migrations: on Postgres, [`LOCK_AND_READ_FUNCTION`] (replicas starting
/// together take turns to replace it).
pub async fn prepare(db: &Database) -> Result<(), WriteError> {
    if let Database::Postgres(pool) = db {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('realm_core_lock_and_read'))").execute(&mut *tx).await?;
        sqlx::raw_sql(LOCK_AND_READ_FUNCTION).execute(&mut *tx).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// What to read of a realm as its lock is taken: `paths` always, and the
/// `known` files (what the replica knows of them as of the realm's event
/// seq `known_seq`) only if the realm's seq is no longer that, and then
/// only those stored in another version since.
#[derive(Default)]
pub(super) struct Wanted<'a> {
    pub(super) paths: &'a [String],
    pub(super) known_seq: Option<i64>,
    pub(super) known: Vec<(&'a str, Option<&'a FileState>)>,
}

impl Wanted<'_> {
    /// Whether the known files must be checked: the realm's newest event
    /// seq is `seq`, not the one they are known as of.
    fn moved(&self, seq: Option<i64>) -> bool {
        seq.is_none() || seq != self.known_seq
    }

    /// The paths to read when the realm's newest event seq is `seq`.
    fn at(&self, seq: Option<i64>) -> Vec<String> {
        let mut paths = self.paths.to_vec();
        if self.moved(seq) {
            paths.extend(self.known.iter().map(|(path, _)| path.to_string()));
        }
        paths
    }
}

/// What a transaction read of a realm as it took the realm's lock: who may
/// do what there (`None`: the in-memory store, which keeps no
/// permissions), the realm's newest event seq (`None`: the in-memory
/// store, which keeps no events), the files asked for that exist and, if
/// the seq moved, the known files stored in another version since (a
/// known file in neither `found` nor `gone` is as known).
pub(super) struct Locked {
    pub(super) access: Option<Vec<(String, Permissions)>>,
    pub(super) seq: Option<i64>,
    pub(super) found: HashMap<String, FileState>,
    /// Known files stored no more (checked because the seq moved).
    pub(super) gone: Vec<String>,
}

/// Begins a transaction that holds no realm's lock yet (SQLite: the
/// database's write lock; Postgres: waiting at most `wait` for a
/// connection, its lock waits then bounded by `lock_timeout`); realms join
/// it with [`try_add_realms`].
pub(super) async fn begin(db: &Database, wait: Duration, lock_timeout: Duration) -> Result<Tx, WriteError> {
    match db {
        Database::Memory(store) => Ok(Tx::Memory(store.clone())),
        Database::Sqlite(pool) => Ok(Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?)),
        Database::Postgres(pool) => {
            let begun = tokio::time::timeout(wait, PgTx::begin(pool, begin_statement(lock_timeout)));
            Ok(Tx::Postgres(begun.await.map_err(|_| WriteError::Unavailable("no database connection came free in time; retry".into()))??))
        }
    }
}

/// Postgres: BEGIN with the transaction's timeouts (a lock wait of at
/// most `remaining`) and generic plans, in one round trip.
fn begin_statement(remaining: Duration) -> String {
    let ms = remaining.as_millis().max(1);
    let statement_ms = ms + STATEMENT_SLACK.as_millis();
    // Only numbers are spliced in: the simple protocol takes no parameters.
    // Generic plans: Postgres would otherwise plan the flush (and the
    // reads in `realm_core_lock_and_read`) afresh at every execution,
    // since its array parameters make a custom plan look cheaper;
    // planning the flush cost more than running it. Key lookups only (no
    // sequential scans, no hash or merge joins): every statement here
    // finds its rows by key, but a connection keeps the generic plan it
    // made first, and one made while a table was small (a new database, a
    // new realm) read the whole table (or its whole index, to join it) —
    // at every later commit, however large the table has grown since.
    format!(
        "BEGIN; SELECT set_config('lock_timeout', '{ms}ms', true), set_config('statement_timeout', '{statement_ms}ms', true), \
         set_config('plan_cache_mode', 'force_generic_plan', true), set_config('enable_seqscan', 'off', true), \
         set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)"
    )
}

/// Opens a transaction holding `realm`'s lock, waiting at most `remaining`
/// for it, and reads the realm's permissions, event seq and the `wanted`
/// files. On Postgres two round trips: BEGIN with the timeouts, then the
/// lock and the reads.
pub(super) async fn open(db: &Database, realm: &str, wanted: Wanted<'_>, remaining: Duration) -> Result<(Tx, Locked), WriteError> {
    match db {
        Database::Memory(store) => {
            let mut tx = Tx::Memory(store.clone());
            let locked = read_locked(&mut tx, realm, &wanted).await?;
            Ok((tx, locked))
        }
        Database::Sqlite(pool) => {
            let mut tx = Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?);
            let locked = read_locked(&mut tx, realm, &wanted).await?;
            Ok((tx, locked))
        }
        Database::Postgres(pool) => {
            let opened = tokio::time::timeout(remaining, async {
                let mut tx = PgTx::begin(pool, begin_statement(remaining)).await?;
                let locked = lock_and_read(&mut tx, true, &[(realm, wanted)]).await?.pop().flatten();
                Ok::<_, WriteError>((tx, locked))
            });
            let (tx, locked) = opened.await.map_err(|_| WriteError::LockTimeout(realm.to_string()))??;
            let locked = locked.ok_or_else(|| WriteError::Storage(format!("the lock of {realm} was not taken")))?;
            Ok((Tx::Postgres(tx), locked))
        }
    }
}

/// Adds realms to an open transaction, each only if its lock is free
/// right now (never waits: a transaction already holding locks must not
/// wait for another, so no two replicas can deadlock), reading the
/// permissions, event seq and `wanted` files of each; per realm, None when
/// another transaction holds its lock. Postgres: one round trip for all.
/// SQLite's and the memory store's transactions cover every realm already.
pub(super) async fn try_add_realms(tx: &mut Tx, realms: &[(&str, Wanted<'_>)]) -> Result<Vec<Option<Locked>>, WriteError> {
    match tx {
        Tx::Postgres(t) => lock_and_read(t, false, realms).await,
        Tx::Sqlite(_) | Tx::Memory(_) => {
            let mut out = Vec::with_capacity(realms.len());
            for (realm, wanted) in realms {
                out.push(Some(read_locked(tx, realm, wanted).await?));
            }
            Ok(out)
        }
    }
}

/// Calls `realm_core_lock_and_read` for `realms`: what was read of each,
/// None for those whose lock was not taken.
async fn lock_and_read(t: &mut PgTx, wait: bool, realms: &[(&str, Wanted<'_>)]) -> Result<Vec<Option<Locked>>, WriteError> {
    let keys: Vec<i64> = realms.iter().map(|(realm, _)| advisory_lock_key(realm)).collect();
    let names: Vec<&str> = realms.iter().map(|(realm, _)| *realm).collect();
    let known_seqs: Vec<Option<i64>> = realms.iter().map(|(_, w)| w.known_seq).collect();
    let mut flat = FlatPaths::default();
    for (i, (_, wanted)) in realms.iter().enumerate() {
        let no = i32::try_from(i + 1).map_err(|_| WriteError::Storage("too many realms in one transaction".into()))?;
        for path in wanted.paths {
            flat.push(no, path, None);
        }
        for (path, state) in &wanted.known {
            flat.push(no, path, Some(*state));
        }
    }
    let FlatPaths { realm: path_realm, path: paths, known: path_known, hash, created, modified, card_version } = flat;
    let rows = sqlx::query("SELECT * FROM realm_core_lock_and_read($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
        .bind(wait)
        .bind(keys)
        .bind(names)
        .bind(known_seqs)
        .bind(path_realm)
        .bind(paths)
        .bind(path_known)
        .bind(hash)
        .bind(created)
        .bind(modified)
        .bind(card_version)
        .fetch_all(t.conn())
        .await?;
    let mut out: Vec<Option<Locked>> = realms.iter().map(|_| None).collect();
    for row in &rows {
        let no: i32 = row.try_get(0)?;
        let slot = usize::try_from(no).ok().and_then(|n| n.checked_sub(1)).and_then(|i| out.get_mut(i));
        let Some(slot) = slot else { return Err(WriteError::Storage(format!("the lock function answered for realm number {no}"))) };
        if !row.try_get::<bool, _>(1)? {
            continue;
        }
        if let Some(json) = row.try_get::<Option<String>, _>(2)? {
            let seq = Some(row.try_get::<i64, _>(3)?);
            *slot = Some(Locked { access: Some(permissions_of_json(&json)?), seq, found: HashMap::new(), gone: Vec::new() });
        } else if let Some(path) = row.try_get::<Option<String>, _>(4)? {
            let Some(locked) = slot else { return Err(WriteError::Storage(format!("the lock function read {path} of a realm it did not lock"))) };
            if row.try_get::<Option<&str>, _>(5)?.is_none() {
                locked.gone.push(path);
            } else {
                locked.found.insert(path, state_at(row, 4)?);
            }
        }
    }
    Ok(out)
}

/// The paths of a `realm_core_lock_and_read` call, flattened into its
/// array arguments: each with its realm's number and, for a known file,
/// the version the replica knows (all NULL for a known absent one).
#[derive(Default)]
struct FlatPaths<'a> {
    realm: Vec<i32>,
    path: Vec<&'a str>,
    known: Vec<bool>,
    hash: Vec<Option<&'a str>>,
    created: Vec<Option<i64>>,
    modified: Vec<Option<i64>>,
    card_version: Vec<Option<i64>>,
}

impl<'a> FlatPaths<'a> {
    /// `known`: None for a path to read, else what the replica knows of it.
    fn push(&mut self, realm: i32, path: &'a str, known: Option<Option<&'a FileState>>) {
        self.realm.push(realm);
        self.path.push(path);
        self.known.push(known.is_some());
        let state = known.flatten();
        self.hash.push(state.map(|s| s.row.content_hash.as_str()));
        self.created.push(state.map(|s| s.row.created));
        self.modified.push(state.map(|s| s.row.last_modified));
        self.card_version.push(state.and_then(|s| s.card.as_ref()).map(|c| c.version));
    }
}

/// `[[user, read, write, owner], …]` as the function aggregates it.
fn permissions_of_json(json: &str) -> Result<Vec<(String, Permissions)>, WriteError> {
    let rows: Vec<(String, bool, bool, bool)> =
        serde_json::from_str(json).map_err(|e| WriteError::Storage(format!("the realm's permissions as read under its lock: {e}")))?;
    Ok(rows.into_iter().map(|(user, read, write, realm_owner)| (user, Permissions { read, write, realm_owner })).collect())
}

/// The permissions, event seq and files of a realm whose lock the
/// transaction holds (SQLite, memory).
async fn read_locked(tx: &mut Tx, realm: &str, wanted: &Wanted<'_>) -> Result<Locked, WriteError> {
    let (access, seq) = match tx {
        Tx::Sqlite(t) => {
            let rows = sqlx::query("SELECT username, can_read, can_write, realm_owner FROM realm_permissions WHERE realm_url = $1")
                .bind(realm)
                .fetch_all(&mut **t)
                .await?;
            let mut access = Vec::with_capacity(rows.len());
            for r in &rows {
                access.push((r.try_get(0)?, Permissions { read: r.try_get(1)?, write: r.try_get(2)?, realm_owner: r.try_get(3)? }));
            }
            let seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM realm_events WHERE realm_url = $1").bind(realm).fetch_one(&mut **t).await?;
            (Some(access), Some(seq))
        }
        Tx::Postgres(_) | Tx::Memory(_) => (None, None),
    };
    let found = read(tx, realm, &wanted.at(seq)).await?;
    // Checked known files are read whole here: those not found are gone.
    let gone = if wanted.moved(seq) {
        wanted.known.iter().filter(|(path, _)| !found.contains_key(*path)).map(|(path, _)| path.to_string()).collect()
    } else {
        Vec::new()
    };
    Ok(Locked { access, seq, found, gone })
}

const READ_POSTGRES: &str = "SELECT f.path, f.content, f.content_hash, f.created_at, f.last_modified, f.content_encoding,
        c.card_id, c.card_type, c.search_doc, c.search_version
    FROM files f LEFT JOIN card_index c ON c.realm_url = f.realm_url AND c.path = f.path
    WHERE f.realm_url = $1 AND f.path = ANY($2)";

/// Rows per multi-row SQLite statement (each binds at most 9 values a row,
/// well under SQLite's 32766 parameters).
const SQLITE_ROWS: usize = 500;

/// Reads `paths` of `realm` in the transaction (one query, or one per
/// [`SQLITE_ROWS`] paths): the stored files with their card rows; a path
/// with no file is absent from the answer.
pub(super) async fn read(tx: &mut Tx, realm: &str, paths: &[String]) -> Result<HashMap<String, FileState>, WriteError> {
    let mut found = HashMap::new();
    match tx {
        Tx::Postgres(t) => {
            for row in sqlx::query(READ_POSTGRES).bind(realm).bind(paths).fetch_all(t.conn()).await? {
                found.insert(row.try_get(0)?, state_at(&row, 0)?);
            }
        }
        Tx::Sqlite(t) => {
            for chunk in paths.chunks(SQLITE_ROWS) {
                let sql = format!(
                    "SELECT f.path, f.content, f.content_hash, f.created_at, f.last_modified, f.content_encoding,
                        c.card_id, c.card_type, c.search_doc, c.search_version
                     FROM files f LEFT JOIN card_index c ON c.realm_url = f.realm_url AND c.path = f.path
                     WHERE f.realm_url = $1 AND f.path IN ({})",
                    placeholders(2, chunk.len())
                );
                let mut query = sqlx::query(&sql).bind(realm);
                for path in chunk {
                    query = query.bind(path);
                }
                for row in query.fetch_all(&mut **t).await? {
                    found.insert(row.try_get(0)?, state_at(&row, 0)?);
                }
            }
        }
        Tx::Memory(store) => {
            for path in paths {
                if let Some(row) = store.read(realm, path) {
                    found.insert(path.clone(), FileState::new(row, None));
                }
            }
        }
    }
    Ok(found)
}

/// Decodes a row of the read statements, whose columns from `at` on are
/// path, content, hash, created, last modified, encoding, card id, card
/// type, search doc, search version.
fn state_at<R: Row>(row: &R, at: usize) -> Result<FileState, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let file = FileRow {
        content: row.try_get(at + 1)?,
        content_hash: row.try_get(at + 2)?,
        created: row.try_get(at + 3)?,
        last_modified: row.try_get(at + 4)?,
        binary: row.try_get::<String, _>(at + 5)? == "base64",
    };
    let card = match row.try_get::<Option<String>, _>(at + 6)? {
        Some(card_id) => Some(CardRow {
            card_id,
            card_type: row.try_get(at + 7)?,
            search_doc: row.try_get(at + 8)?,
            version: row.try_get::<Option<i64>, _>(at + 9)?.unwrap_or(0),
        }),
        None => None,
    };
    Ok(FileState::new(file, card))
}

/// What a flush keeps of the realms' events.
#[derive(Clone, Copy, Debug)]
pub(super) struct Retention {
    /// Events each realm keeps: an appended event retires the one this
    /// many before it.
    pub keep: i64,
}

/// Writes every realm's changes in the open transaction; answers the
/// newest event seq of each realm that appended events.
pub(super) async fn flush(tx: &mut Tx, realms: &[(String, RealmChanges)], now: i64, retention: Retention) -> Result<Vec<(String, i64)>, WriteError> {
    if realms.iter().all(|(_, c)| c.is_empty()) {
        return Ok(Vec::new());
    }
    match tx {
        Tx::Postgres(t) => flush_postgres(t, realms, now, retention).await,
        Tx::Sqlite(t) => flush_sqlite(t, realms, now, retention).await,
        Tx::Memory(store) => {
            for (realm, changes) in realms {
                let mut staged = Staged::new(realm);
                for path in &changes.file_deletes {
                    staged.remove(path);
                }
                for (path, row) in &changes.file_upserts {
                    staged.put(path, row.clone());
                }
                staged.apply(store);
            }
            Ok(Vec::new())
        }
    }
}

/// The whole flush on Postgres: one statement whose data-modifying CTEs
/// each write one table from arrays (`UNNEST`). Each CTE touches rows no
/// other one touches (a path is upserted or deleted, a field row upserted,
/// deleted or reset, never two of these), so their order does not matter;
/// the foreign keys are checked at the end of the statement. Event seqs
/// continue each realm's newest (looked up once per realm: inlined, the
/// lookup would run once per event); each appended event retires the one
/// `keep` before it (a primary-key lookup per event, then a delete by
/// tuple id: written as a join, a generic plan made while the table was
/// small hashed the appended events and scanned every stored event at
/// each later commit — milliseconds a commit, growing with the table;
/// pruning by age, and whatever a smaller `keep` leaves, is the events
/// hub's periodic job); the NOTIFY (realm and newest seq) is delivered
/// only on COMMIT.
const FLUSH_POSTGRES: &str = "WITH
    new_files AS (
        INSERT INTO files (realm_url, path, content, content_hash, created_at, last_modified, content_encoding)
        SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::text[])
        ON CONFLICT (realm_url, path) DO UPDATE SET content = excluded.content, content_hash = excluded.content_hash,
            last_modified = excluded.last_modified, content_encoding = excluded.content_encoding),
    gone_files AS (
        DELETE FROM files f USING UNNEST($8::text[], $9::text[]) AS d(realm_url, path)
        WHERE f.realm_url = d.realm_url AND f.path = d.path),
    new_cards AS (
        INSERT INTO card_index (realm_url, path, card_id, card_type, search_doc, updated_at, search_version)
        SELECT r, p, i, t, s, $37, $38 FROM UNNEST($10::text[], $11::text[], $12::text[], $13::text[], $14::text[]) AS c(r, p, i, t, s)
        ON CONFLICT (realm_url, path) DO UPDATE SET card_id = excluded.card_id, card_type = excluded.card_type,
            search_doc = excluded.search_doc, updated_at = excluded.updated_at, search_version = excluded.search_version),
    gone_cards AS (
        DELETE FROM card_index c USING UNNEST($15::text[], $16::text[]) AS d(realm_url, path)
        WHERE c.realm_url = d.realm_url AND c.path = d.path),
    new_fields AS (
        INSERT INTO card_fields (realm_url, path, field, position, kind, text_key, text_value, folded, number_value)
        SELECT * FROM UNNEST($17::text[], $18::text[], $19::text[], $20::int8[], $21::int8[], $22::text[], $23::text[], $24::text[], $25::float8[])
        ON CONFLICT (realm_url, path, field, position) DO UPDATE SET kind = excluded.kind, text_key = excluded.text_key,
            text_value = excluded.text_value, folded = excluded.folded, number_value = excluded.number_value),
    gone_fields AS (
        DELETE FROM card_fields f USING UNNEST($26::text[], $27::text[], $28::text[], $29::int8[]) AS d(realm_url, path, field, position)
        WHERE f.realm_url = d.realm_url AND f.path = d.path AND f.field = d.field AND f.position = d.position),
    reset_fields AS (
        DELETE FROM card_fields f USING UNNEST($30::text[], $31::text[]) AS d(realm_url, path)
        WHERE f.realm_url = d.realm_url AND f.path = d.path
          AND NOT EXISTS (SELECT 1 FROM UNNEST($17::text[], $18::text[], $19::text[], $20::int8[]) AS n(realm_url, path, field, position)
                          WHERE n.realm_url = f.realm_url AND n.path = f.path AND n.field = f.field AND n.position = f.position)),
    new_events AS (SELECT * FROM UNNEST($32::text[], $33::int8[], $34::text[]) AS e(realm_url, ord, payload)),
    last_seq AS MATERIALIZED (
        SELECT r.realm_url, COALESCE((SELECT MAX(m.seq) FROM realm_events m WHERE m.realm_url = r.realm_url), 0) AS seq
        FROM (SELECT DISTINCT realm_url FROM new_events) r),
    appended AS (
        INSERT INTO realm_events (realm_url, seq, payload, created_at)
        SELECT e.realm_url, l.seq + e.ord, e.payload, $37 FROM new_events e JOIN last_seq l ON l.realm_url = e.realm_url
        RETURNING realm_url, seq),
    newest AS (SELECT realm_url, MAX(seq) AS seq FROM appended GROUP BY realm_url),
    by_count AS (
        DELETE FROM realm_events r
        WHERE r.ctid = ANY (ARRAY(SELECT (SELECT m.ctid FROM realm_events m WHERE m.realm_url = a.realm_url AND m.seq = a.seq - $35) FROM appended a)))
    SELECT realm_url, seq, pg_notify($36, realm_url || ' ' || seq) FROM newest";

/// A table's rows as column arrays (`UNNEST` turns them back into rows).
#[derive(Default)]
struct FileColumns {
    realm: Vec<String>,
    path: Vec<String>,
    content: Vec<String>,
    hash: Vec<String>,
    created: Vec<i64>,
    modified: Vec<i64>,
    encoding: Vec<&'static str>,
}

#[derive(Default)]
struct CardColumns {
    realm: Vec<String>,
    path: Vec<String>,
    card_id: Vec<String>,
    card_type: Vec<String>,
    search_doc: Vec<String>,
}

#[derive(Default)]
struct FieldColumns {
    realm: Vec<String>,
    path: Vec<String>,
    field: Vec<String>,
    position: Vec<i64>,
    kind: Vec<i64>,
    key: Vec<String>,
    text: Vec<String>,
    folded: Vec<Option<String>>,
    number: Vec<Option<f64>>,
}

/// (realm, path) pairs, for the deletions.
#[derive(Default)]
struct PathColumns {
    realm: Vec<String>,
    path: Vec<String>,
}

impl PathColumns {
    fn push(&mut self, realm: &str, path: &str) {
        self.realm.push(realm.to_string());
        self.path.push(path.to_string());
    }
}

#[derive(Default)]
struct FieldKeyColumns {
    realm: Vec<String>,
    path: Vec<String>,
    field: Vec<String>,
    position: Vec<i64>,
}

#[derive(Default)]
struct EventColumns {
    realm: Vec<String>,
    ord: Vec<i64>,
    payload: Vec<String>,
}

/// Every table's rows of a flush, as the Postgres statement binds them.
#[derive(Default)]
struct Columns {
    files: FileColumns,
    gone_files: PathColumns,
    cards: CardColumns,
    gone_cards: PathColumns,
    fields: FieldColumns,
    gone_fields: FieldKeyColumns,
    reset_fields: PathColumns,
    events: EventColumns,
}

impl Columns {
    fn of(realms: &[(String, RealmChanges)]) -> Columns {
        let mut c = Columns::default();
        for (realm, changes) in realms {
            for (path, row) in &changes.file_upserts {
                let f = &mut c.files;
                f.realm.push(realm.clone());
                f.path.push(path.clone());
                f.content.push(row.content.clone());
                f.hash.push(row.content_hash.clone());
                f.created.push(row.created);
                f.modified.push(row.last_modified);
                f.encoding.push(encoding(row));
            }
            for path in &changes.file_deletes {
                c.gone_files.push(realm, path);
            }
            for (path, card) in &changes.card_upserts {
                let k = &mut c.cards;
                k.realm.push(realm.clone());
                k.path.push(path.clone());
                k.card_id.push(card.card_id.clone());
                k.card_type.push(card.card_type.clone());
                k.search_doc.push(card.search_doc.clone());
            }
            for path in &changes.card_deletes {
                c.gone_cards.push(realm, path);
            }
            for (path, row) in &changes.field_upserts {
                let f = &mut c.fields;
                f.realm.push(realm.clone());
                f.path.push(path.clone());
                f.field.push(row.field.clone());
                f.position.push(row.position);
                f.kind.push(row.kind as i64);
                f.key.push(row.key());
                f.text.push(row.text.clone());
                f.folded.push(row.folded());
                f.number.push(row.number);
            }
            for (path, field, position) in &changes.field_deletes {
                let g = &mut c.gone_fields;
                g.realm.push(realm.clone());
                g.path.push(path.clone());
                g.field.push(field.clone());
                g.position.push(*position);
            }
            for path in &changes.field_resets {
                c.reset_fields.push(realm, path);
            }
            for (ord, payload) in changes.events.iter().enumerate() {
                c.events.realm.push(realm.clone());
                c.events.ord.push(ord as i64 + 1);
                c.events.payload.push(payload.clone());
            }
        }
        c
    }
}

fn encoding(row: &FileRow) -> &'static str {
    if row.binary {
        "base64"
    } else {
        "utf-8"
    }
}

async fn flush_postgres(t: &mut PgTx, realms: &[(String, RealmChanges)], now: i64, retention: Retention) -> Result<Vec<(String, i64)>, WriteError> {
    let Columns { files: f, gone_files, cards: k, gone_cards, fields: d, gone_fields: g, reset_fields, events: e } = Columns::of(realms);
    let rows = sqlx::query(FLUSH_POSTGRES)
        .bind(f.realm).bind(f.path).bind(f.content).bind(f.hash).bind(f.created).bind(f.modified).bind(f.encoding)
        .bind(gone_files.realm).bind(gone_files.path)
        .bind(k.realm).bind(k.path).bind(k.card_id).bind(k.card_type).bind(k.search_doc)
        .bind(gone_cards.realm).bind(gone_cards.path)
        .bind(d.realm).bind(d.path).bind(d.field).bind(d.position).bind(d.kind).bind(d.key).bind(d.text).bind(d.folded).bind(d.number)
        .bind(g.realm).bind(g.path).bind(g.field).bind(g.position)
        .bind(reset_fields.realm).bind(reset_fields.path)
        .bind(e.realm).bind(e.ord).bind(e.payload)
        .bind(retention.keep).bind(EVENTS_CHANNEL)
        .bind(now).bind(SEARCH_VERSION)
        .fetch_all(t.conn())
        .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect::<Result<_, sqlx::Error>>().map_err(WriteError::from)
}

/// `$first, $first+1, …` (`n` of them).
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// `($first, …), (…)`: `rows` tuples of `width` placeholders.
fn tuples(first: usize, rows: usize, width: usize) -> String {
    (0..rows).map(|r| format!("({})", placeholders(first + r * width, width))).collect::<Vec<_>>().join(", ")
}

/// The flush on SQLite, in order: removals first (so a reset path's rows
/// are gone before its new ones go in), then files, card rows, field rows
/// and the events of each realm, several rows per statement.
async fn flush_sqlite(t: &mut Transaction<'static, Sqlite>, realms: &[(String, RealmChanges)], now: i64, retention: Retention) -> Result<Vec<(String, i64)>, WriteError> {
    let conn = &mut **t;
    let mut newest = Vec::new();
    for (realm, changes) in realms {
        // Removing a card row removes its field rows (ON DELETE CASCADE).
        let by_path: [(&str, Vec<&String>); 3] = [
            ("DELETE FROM card_index WHERE realm_url = $1 AND path IN", changes.card_deletes.iter().collect()),
            ("DELETE FROM files WHERE realm_url = $1 AND path IN", changes.file_deletes.iter().collect()),
            ("DELETE FROM card_fields WHERE realm_url = $1 AND path IN", changes.field_resets.iter().collect()),
        ];
        for (statement, paths) in by_path {
            for chunk in paths.chunks(SQLITE_ROWS) {
                let sql = format!("{statement} ({})", placeholders(2, chunk.len()));
                let mut query = sqlx::query(&sql).bind(realm);
                for path in chunk {
                    query = query.bind(path.as_str());
                }
                query.execute(&mut *conn).await?;
            }
        }
        for chunk in changes.field_deletes.chunks(SQLITE_ROWS) {
            let sql = format!("DELETE FROM card_fields WHERE realm_url = $1 AND (path, field, position) IN (VALUES {})", tuples(2, chunk.len(), 3));
            let mut query = sqlx::query(&sql).bind(realm);
            for (path, field, position) in chunk {
                query = query.bind(path).bind(field).bind(position);
            }
            query.execute(&mut *conn).await?;
        }
        for chunk in changes.file_upserts.chunks(SQLITE_ROWS) {
            let sql = format!(
                "INSERT INTO files (realm_url, path, content, content_hash, created_at, last_modified, content_encoding) VALUES {}
                 ON CONFLICT (realm_url, path) DO UPDATE SET content = excluded.content, content_hash = excluded.content_hash,
                     last_modified = excluded.last_modified, content_encoding = excluded.content_encoding",
                tuples(1, chunk.len(), 7)
            );
            let mut query = sqlx::query(&sql);
            for (path, row) in chunk {
                query = query.bind(realm).bind(path).bind(&row.content).bind(&row.content_hash).bind(row.created).bind(row.last_modified).bind(encoding(row));
            }
            query.execute(&mut *conn).await?;
        }
        for chunk in changes.card_upserts.chunks(SQLITE_ROWS) {
            let sql = format!(
                "INSERT INTO card_index (realm_url, path, card_id, card_type, search_doc, updated_at, search_version) VALUES {}
                 ON CONFLICT (realm_url, path) DO UPDATE SET card_id = excluded.card_id, card_type = excluded.card_type,
                     search_doc = excluded.search_doc, updated_at = excluded.updated_at, search_version = excluded.search_version",
                tuples(1, chunk.len(), 7)
            );
            let mut query = sqlx::query(&sql);
            for (path, card) in chunk {
                query = query.bind(realm).bind(path).bind(&card.card_id).bind(&card.card_type).bind(&card.search_doc).bind(now).bind(SEARCH_VERSION);
            }
            query.execute(&mut *conn).await?;
        }
        for chunk in changes.field_upserts.chunks(SQLITE_ROWS) {
            let sql = format!(
                "INSERT INTO card_fields (realm_url, path, field, position, kind, text_key, text_value, folded, number_value) VALUES {}
                 ON CONFLICT (realm_url, path, field, position) DO UPDATE SET kind = excluded.kind, text_key = excluded.text_key,
                     text_value = excluded.text_value, folded = excluded.folded, number_value = excluded.number_value",
                tuples(1, chunk.len(), 9)
            );
            let mut query = sqlx::query(&sql);
            for (path, row) in chunk {
                query = query
                    .bind(realm).bind(path).bind(&row.field).bind(row.position).bind(row.kind as i64)
                    .bind(row.key()).bind(&row.text).bind(row.folded()).bind(row.number);
            }
            query.execute(&mut *conn).await?;
        }
        if !changes.events.is_empty() {
            let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM realm_events WHERE realm_url = $1").bind(realm).fetch_one(&mut *conn).await?;
            for (i, chunk) in changes.events.chunks(SQLITE_ROWS).enumerate() {
                let sql = format!("INSERT INTO realm_events (realm_url, seq, payload, created_at) VALUES {}", tuples(1, chunk.len(), 4));
                let mut query = sqlx::query(&sql);
                for (j, payload) in chunk.iter().enumerate() {
                    let seq = last + (i * SQLITE_ROWS + j) as i64 + 1;
                    query = query.bind(realm).bind(seq).bind(payload).bind(now);
                }
                query.execute(&mut *conn).await?;
            }
            let seq = last + changes.events.len() as i64;
            sqlx::query("DELETE FROM realm_events WHERE realm_url = $1 AND seq > $2 - $4 AND seq <= $3 - $4")
                .bind(realm).bind(last).bind(seq).bind(retention.keep)
                .execute(&mut *conn)
                .await?;
            newest.push((realm.clone(), seq));
        }
    }
    Ok(newest)
}

impl Tx {
    pub(super) async fn commit(self) -> Result<(), WriteError> {
        match self {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.end("COMMIT").await?,
            Tx::Memory(_) => {}
        }
        Ok(())
    }

    pub(super) async fn rollback(self) -> Result<(), WriteError> {
        match self {
            Tx::Sqlite(t) => t.rollback().await?,
            Tx::Postgres(t) => t.end("ROLLBACK").await?,
            Tx::Memory(_) => {}
        }
        Ok(())
    }
}
