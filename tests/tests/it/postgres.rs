//! The Postgres backend (spec §5 "The write lock"), against real
//! `realm-host serve` processes sharing one real database.
//!
//! * Two replicas: concurrent disjoint PATCHes both land, racing `/_atomic`
//!   adds of one href give exactly one 201 (the Boxel regressions), and the
//!   same under load (2 replicas × 16 clients × 50 PATCHes; 100 add races).
//! * Lock semantics: one realm serialises while others do not wait, the
//!   lock is the spec's key, it is released after errors, its timeout is a
//!   503 with `Retry-After` that writes nothing, and a replica killed while
//!   holding it neither keeps it nor leaves a half-done write.
//! * A database connection killed in the middle of a coalesced batch: every
//!   member is told 503 and nothing of the batch is written.
//! * `/_atomic` is all or nothing in the database itself.
//! * Postgres restarted and stopped under load (a cluster of its own): 503s,
//!   never a broken card nor a lost acknowledged write, then 200s again
//!   without restarting the server.
//! * Part of the SQLite suite runs on Postgres too: see `on_both_backends!`
//!   in `atomic.rs`, `concurrency.rs` and `merge.rs`.
//!
//! Concurrency is forced and observed through the database: the test's own
//! session holds the realm's advisory lock (or a table lock) and polls
//! `pg_locks` until the replicas are known to wait or hold, instead of
//! sleeping and hoping.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::harness::*;
use crate::pg::{self, realm_lock_key, PgCluster, Session};

/// How long we wait for the database to show a lock being held or awaited.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// `test` and `other`, both readable and writable by anyone, and extra
/// `serve` arguments (which replicas get too).
fn options(serve_args: &[&str]) -> ServerOptions {
    ServerOptions {
        realms: vec![RealmSpec::new("test", Public::Write), RealmSpec::new("other", Public::Write)],
        serve_args: serve_args.iter().map(|a| a.to_string()).collect(),
        ..ServerOptions::default()
    }
}

/// A server on a fresh database of the shared cluster.
async fn primary(serve_args: &[&str]) -> Server {
    Server::start_on(pg::fresh_database().await, options(serve_args)).await
}

/// Two replicas (`a` created the realms, `b` serves the same database).
async fn two_replicas(serve_args: &[&str]) -> (Server, Server) {
    let a = primary(serve_args).await;
    let b = a.replica().await;
    (a, b)
}

/// A replica as clients reach it. Replicas serve every realm of the
/// database by path, whatever port they listen on (spec §6), so `b`'s URLs
/// name `b`'s port while the realms were created with `a`'s.
#[derive(Clone)]
struct Node {
    base: String,
    http: Client,
}

impl Node {
    fn of(srv: &Server) -> Node {
        Node { base: srv.base.clone(), http: srv.client() }
    }

    /// `http://127.0.0.1:<this replica's port>/<path>`
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `<this replica's address>/<name>/`
    fn realm(&self, name: &str) -> String {
        self.url(&format!("{name}/"))
    }

    /// A client with its own connection pool.
    fn fresh_client(&self) -> Client {
        Client::new()
    }
}

/// Both replicas as clients reach them.
fn nodes(a: &Server, b: &Server) -> (Node, Node) {
    (Node::of(a), Node::of(b))
}

/// A Person document with `attributes`, module relative to the card.
fn person(attributes: Value) -> Value {
    card_doc("./person", "Person", Some(attributes), None)
}

/// Stores `<path>.json` (e.g. `test/card-1`) verbatim through `node`.
async fn seed_card(node: &Node, path: &str, attributes: Value) {
    node.http.seed(&node.url(&format!("{path}.json")), &file_text(&person(attributes))).await;
}

/// The stored file of `path` (e.g. `test/card-1`), parsed.
async fn stored(node: &Node, path: &str) -> Value {
    let text = node.http.read(&node.url(&format!("{path}.json"))).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("stored {path}.json is not JSON ({e}):\n{text}"))
}

/// `data.attributes` of the card at `path` as served by `node`.
async fn attributes(node: &Node, path: &str) -> Value {
    let resp = node.http.get_card(&node.url(path)).fetch().await.expect_status(200);
    resp.json()["data"]["attributes"].clone()
}

/// A request sent in the background.
fn send(request: reqwest::RequestBuilder) -> JoinHandle<Resp> {
    tokio::spawn(request.fetch())
}

/// An `/_atomic` body adding a Person card at `href`.
fn atomic_add(realm: &str, href: &str, first_name: &str) -> Value {
    json!({ "atomic:operations": [{
        "op": "add",
        "href": href,
        "data": card_resource(&format!("{realm}person"), "Person", Some(json!({ "firstName": first_name })), None),
    }]})
}

/// Waits until exactly `count` other backends wait for `key`.
async fn wait_for_waiters(session: &mut Session, key: i64, count: usize) -> Vec<i32> {
    wait_until!(format!("{count} backend(s) wait for advisory lock {key}"), LOCK_WAIT, {
        let waiters = session.advisory_waiters(key).await;
        (waiters.len() == count).then_some(waiters)
    })
}

/// Asserts a 503 answer to a write that could not get its lock.
fn assert_unavailable(resp: &Resp) {
    assert_eq!(resp.status, 503, "a write that cannot get the lock in time is 503:\n{resp}");
    let retry_after = resp.must_header("retry-after");
    assert!(retry_after.trim().parse::<u64>().is_ok(), "retry-after is delay-seconds, is {retry_after:?} in\n{resp}");
    let body = resp.json();
    assert!(body["errors"].as_array().is_some_and(|e| !e.is_empty()), "a 503 has a JSON errors body:\n{resp}");
}

// ---------------------------------------------------------------------------
// Boxel regressions on two replicas

#[tokio::test(flavor = "multi_thread")]
async fn postgres_two_replicas_concurrent_disjoint_patches_both_land() {
    let (a, b) = two_replicas(&[]).await;
    let (na, nb) = nodes(&a, &b);
    let card = "test/card-1";
    seed_card(&na, card, json!({ "firstName": "Shared" })).await;
    let key = realm_lock_key(&a.realm("test"));
    let mut session = Session::open(a.db_url()).await;

    for round in 0..3 {
        // Both PATCHes queue on the realm's lock in the database at once.
        session.advisory_lock(key).await;
        let from_a = send(na.http.patch_card(&na.url(card), &person(json!({ format!("fromA{round}"): round }))));
        let from_b = send(nb.http.patch_card(&nb.url(card), &person(json!({ format!("fromB{round}"): round }))));
        wait_for_waiters(&mut session, key, 2).await;
        session.advisory_unlock(key).await;

        let (ra, rb) = (from_a.await.expect("task"), from_b.await.expect("task"));
        let ra = ra.expect_status(200);
        let rb = rb.expect_status(200);
        assert_eq!(ra.json()["data"]["attributes"][format!("fromA{round}")], json!(round), "A's answer has A's field:\n{ra}");
        assert_eq!(rb.json()["data"]["attributes"][format!("fromB{round}")], json!(round), "B's answer has B's field:\n{rb}");
        assert_ne!(ra.etag(), rb.etag(), "two real changes, two etags");
    }

    for node in [&na, &nb] {
        let got = attributes(node, card).await;
        assert_eq!(got["firstName"], json!("Shared"), "replica {}: {got}", node.base);
        for round in 0..3 {
            assert_eq!(got[format!("fromA{round}")], json!(round), "replica {}: A's PATCH of round {round} was lost: {got}", node.base);
            assert_eq!(got[format!("fromB{round}")], json!(round), "replica {}: B's PATCH of round {round} was lost: {got}", node.base);
        }
    }
    assert_eq!(stored(&nb, card).await["data"]["attributes"], attributes(&na, card).await, "the stored file has every field");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_two_replicas_racing_atomic_adds_of_one_href_let_exactly_one_win() {
    let (a, b) = two_replicas(&[]).await;
    let (na, nb) = nodes(&a, &b);
    let realm = a.realm("test");
    let key = realm_lock_key(&realm);
    let mut session = Session::open(a.db_url()).await;

    for round in 0..3 {
        let href = format!("race-{round}.json");
        session.advisory_lock(key).await;
        let by_a = send(na.http.atomic(&na.realm("test"), &atomic_add(&realm, &href, "FromA")));
        let by_b = send(nb.http.atomic(&nb.realm("test"), &atomic_add(&realm, &href, "FromB")));
        wait_for_waiters(&mut session, key, 2).await;
        session.advisory_unlock(key).await;

        let answers = [("FromA", by_a.await.expect("task")), ("FromB", by_b.await.expect("task"))];
        let mut statuses: Vec<u16> = answers.iter().map(|(_, r)| r.status).collect();
        statuses.sort_unstable();
        assert_eq!(statuses, vec![201, 409], "round {round}: exactly one add wins:\n{}\n{}", answers[0].1, answers[1].1);
        let loser = answers.iter().find(|(_, r)| r.status == 409).map(|(_, r)| r).expect("a loser");
        assert_eq!(loser.atomic_errors(409)[0]["title"], json!("Resource already exists"));
        let winner = answers.iter().find(|(_, r)| r.status == 201).map(|(name, _)| *name).expect("a winner");

        let path = format!("test/race-{round}");
        for node in [&na, &nb] {
            assert_eq!(attributes(node, &path).await["firstName"], json!(winner), "round {round}: replica {} serves the winner", node.base);
        }
        assert_eq!(stored(&na, &path).await["data"]["attributes"]["firstName"], json!(winner), "round {round}: the winner is stored");
    }
}

// ---------------------------------------------------------------------------
// Under load

/// A long lock timeout: under load on 2 cores a write may queue for long.
const PATIENT: &[&str] = &["--lock-timeout", "120s"];

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stress_two_replicas_16_clients_50_patches_each_all_land() {
    stress_patches(PATIENT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stress_two_replicas_16_clients_50_patches_each_all_land_without_coalescing() {
    stress_patches(&[PATIENT, &["--coalesce-max-batch", "1"]].concat()).await;
}

/// 2 replicas × 16 clients × 50 sequential PATCHes, each setting its own
/// attribute of one card: every one lands.
async fn stress_patches(serve_args: &[&str]) {
    const CLIENTS: usize = 16;
    const PATCHES: usize = 50;
    let started = Instant::now();
    let (a, b) = two_replicas(serve_args).await;
    let (na, nb) = nodes(&a, &b);
    let card = "test/counter";
    seed_card(&na, card, json!({ "firstName": "Counter" })).await;

    let replicas = [na.clone(), nb.clone()];
    let tasks = (0..2 * CLIENTS).map(|client_no| {
        let node = &replicas[client_no % 2];
        let (url, http) = (node.url(card), node.fresh_client());
        tokio::spawn(async move {
            let mut answers = Vec::with_capacity(PATCHES);
            for i in 0..PATCHES {
                let resp = http.patch_card(&url, &person(json!({ format!("c{client_no}_{i}"): i }))).fetch().await;
                answers.push(resp);
            }
            answers
        })
    });
    let answers: Vec<Resp> = join_all(tasks).await.into_iter().flat_map(|t| t.expect("client task")).collect();
    for resp in &answers {
        assert_eq!(resp.status, 200, "every PATCH succeeds:\n{resp}");
    }

    let got = attributes(&nb, card).await;
    let missing: Vec<String> = (0..2 * CLIENTS)
        .flat_map(|c| (0..PATCHES).map(move |i| (c, i)))
        .filter(|(c, i)| got[format!("c{c}_{i}")] != json!(i))
        .map(|(c, i)| format!("c{c}_{i}"))
        .collect();
    assert!(missing.is_empty(), "{} of {} PATCHes were lost, e.g. {:?}", missing.len(), 2 * CLIENTS * PATCHES, &missing[..missing.len().min(10)]);
    let stored_attributes = stored(&na, card).await["data"]["attributes"].clone();
    assert_eq!(stored_attributes.as_object().map_or(0, |o| o.len()), 1 + 2 * CLIENTS * PATCHES, "the stored file has every attribute");
    eprintln!("{} PATCHes on two replicas ({serve_args:?}) took {:?}", 2 * CLIENTS * PATCHES, started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stress_100_add_races_across_two_replicas_one_201_each() {
    const RACES: usize = 100;
    let (a, b) = two_replicas(PATIENT).await;
    let (na, nb) = nodes(&a, &b);
    let realm = a.realm("test");
    let mut tasks = Vec::new();
    for race in 0..RACES {
        for (node, name) in [(&na, "FromA"), (&nb, "FromB")] {
            let request = node.fresh_client().atomic(&node.realm("test"), &atomic_add(&realm, &format!("fresh-{race}.json"), name));
            tasks.push(tokio::spawn(async move { (race, name, request.fetch().await) }));
        }
    }
    let mut by_race: BTreeMap<usize, Vec<(&str, Resp)>> = BTreeMap::new();
    for answer in join_all(tasks).await {
        let (race, name, resp) = answer.expect("task");
        by_race.entry(race).or_default().push((name, resp));
    }
    let mut session = Session::open(a.db_url()).await;
    let mut wins = BTreeMap::<&str, usize>::new();
    for (race, answers) in &by_race {
        let mut statuses: Vec<u16> = answers.iter().map(|(_, r)| r.status).collect();
        statuses.sort_unstable();
        assert_eq!(statuses, vec![201, 409], "race {race}: exactly one add wins:\n{}\n{}", answers[0].1, answers[1].1);
        let winner = answers.iter().find(|(_, r)| r.status == 201).map(|(name, _)| *name).expect("winner");
        *wins.entry(winner).or_default() += 1;
        let content = session.file_content(&realm, &format!("fresh-{race}.json")).await.expect("the winner's file");
        let content: Value = serde_json::from_str(&content).expect("stored JSON");
        assert_eq!(content["data"]["attributes"]["firstName"], json!(winner), "race {race}: the winner's card is stored");
    }
    assert_eq!(by_race.len(), RACES);
    eprintln!("add races won per replica: {wins:?}");
}

// ---------------------------------------------------------------------------
// Lock semantics

#[tokio::test(flavor = "multi_thread")]
async fn postgres_same_realm_serialises_while_another_realm_does_not_wait() {
    let srv = primary(&[]).await;
    let node = Node::of(&srv);
    seed_card(&node, "test/card-1", json!({ "firstName": "T" })).await;
    seed_card(&node, "other/card-1", json!({ "firstName": "O" })).await;
    let key = realm_lock_key(&srv.realm("test"));
    let mut session = Session::open(srv.db_url()).await;

    session.advisory_lock(key).await;
    let blocked = send(node.http.patch_card(&node.url("test/card-1"), &person(json!({ "blocked": true }))));
    let waiter = wait_for_waiters(&mut session, key, 1).await;

    // Another realm is not held up (its own lock, its own queue).
    let other = node.http.patch_card(&node.url("other/card-1"), &person(json!({ "free": true }))).fetch().await.expect_status(200);
    assert_eq!(other.json()["data"]["attributes"]["free"], json!(true));
    // …while the first PATCH still waits for the realm's lock.
    assert!(!blocked.is_finished(), "the PATCH of the held realm completed while its lock was held");
    assert_eq!(session.advisory_waiters(key).await, waiter, "the PATCH still waits for the realm's lock");
    assert_eq!(attributes(&node, "test/card-1").await["blocked"], Value::Null, "nothing written while the lock is held");

    session.advisory_unlock(key).await;
    let done = blocked.await.expect("task").expect_status(200);
    assert_eq!(done.json()["data"]["attributes"]["blocked"], json!(true));
    assert_eq!(attributes(&node, "test/card-1").await["blocked"], json!(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_replica_locks_the_spec_key_of_the_realm() {
    let (a, b) = two_replicas(&[]).await;
    let (na, nb) = nodes(&a, &b);
    let mut session = Session::open(a.db_url()).await;
    for (node, realm_name) in [(&na, "test"), (&nb, "other")] {
        let realm = a.realm(realm_name); // the canonical realm URL
        let key = realm_lock_key(&realm);
        let card = format!("{realm_name}/card-k");
        seed_card(&na, &card, json!({ "firstName": "K" })).await;

        session.advisory_lock(key).await;
        let blocked = send(node.http.patch_card(&node.url(&card), &person(json!({ "unlocked": true }))));
        // The replica waits on exactly the spec's key (pg_locks classid/objid).
        wait_for_waiters(&mut session, key, 1).await;
        assert!(!blocked.is_finished(), "{realm}: the PATCH completed while key {key} was held");
        let released = Instant::now();
        session.advisory_unlock(key).await;
        let resp = blocked.await.expect("task").expect_status(200);
        assert_eq!(resp.json()["data"]["attributes"]["unlocked"], json!(true));
        // Well within the 10 s lock timeout: it was waiting for that key only.
        assert!(released.elapsed() < Duration::from_secs(8), "{realm}: the PATCH took {:?} after the unlock", released.elapsed());
        wait_until!(format!("{realm}: the replica released key {key}"), Duration::from_secs(5), {
            session.advisory_is_free(key).await.then_some(())
        });
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_lock_is_released_after_errors() {
    let srv = primary(&["--lock-timeout", "2s"]).await;
    let node = Node::of(&srv);
    let http = &node.http;
    let card = "test/card-1";
    seed_card(&node, card, json!({ "firstName": "E" })).await;
    seed_card(&node, "test/taken", json!({ "firstName": "Taken" })).await;
    let realm = srv.realm("test");
    let key = realm_lock_key(&realm);
    let mut session = Session::open(srv.db_url()).await;

    // Three rounds of seven failing writes: more than the replica's pool of
    // 16 connections, so a leaked transaction would also exhaust the pool.
    let mut n = 0;
    for round in 0..3 {
        let failing: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
            ("type change", http.patch_card(&node.url(card), &card_doc("./pet", "Pet", Some(json!({ "x": 1 })), None)), 400),
            (
                "If-Match mismatch",
                http.patch_card(&node.url(card), &person(json!({ "x": 1 }))).header("if-match", "\"not-the-etag\""),
                412,
            ),
            ("PATCH of a missing card", http.patch_card(&node.url("test/missing"), &person(json!({ "x": 1 }))), 404),
            ("DELETE of a missing card", http.delete_card(&node.url("test/missing")), 404),
            ("atomic add of an existing file", http.atomic(&realm, &atomic_add(&realm, "taken.json", "Again")), 409),
            (
                "atomic update of a missing file",
                http.atomic(&realm, &json!({ "atomic:operations": [{ "op": "update", "href": "nope.json",
                    "data": card_resource(&format!("{realm}person"), "Person", Some(json!({})), None) }] })),
                404,
            ),
            ("card over the size limit", http.patch_card(&node.url(card), &person(json!({ "bio": "x".repeat(600 * 1024) }))), 413),
        ];
        for (what, request, status) in failing {
            let resp = request.fetch().await;
            assert_eq!(resp.status, status, "round {round}, {what}:\n{resp}");
            wait_until!(format!("round {round}, {what}: the realm's lock is free again"), Duration::from_secs(2), {
                session.advisory_is_free(key).await.then_some(())
            });
            n += 1;
            let ok = http.patch_card(&node.url(card), &person(json!({ format!("after{n}"): n }))).fetch().await;
            assert_eq!(ok.status, 200, "round {round}: the PATCH after the failed {what} must get the lock:\n{ok}");
        }
    }
    let got = attributes(&node, card).await;
    for i in 1..=n {
        assert_eq!(got[format!("after{i}")], json!(i));
    }
    assert_eq!(got["x"], Value::Null, "no failed write left a trace: {got}");
    assert_eq!(got["bio"], Value::Null, "no failed write left a trace");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_lock_timeout_is_503_with_retry_after_and_writes_nothing() {
    let (a, b) = two_replicas(&["--lock-timeout", "2s"]).await;
    let (na, nb) = nodes(&a, &b);
    let card = "test/card-1";
    seed_card(&na, card, json!({ "firstName": "Before" })).await;
    let realm = a.realm("test");
    let key = realm_lock_key(&realm);
    let mut session = Session::open(a.db_url()).await;
    let before = session.file_content(&realm, "card-1.json").await.expect("seeded");

    session.advisory_lock(key).await;
    let started = Instant::now();
    let mut requests = Vec::new();
    // Three on A (one waits in the database, two in A's in-process queue),
    // one `/_atomic` on A, one PATCH on B.
    for i in 0..3 {
        requests.push(send(na.http.patch_card(&na.url(card), &person(json!({ format!("a{i}"): i })))));
    }
    requests.push(send(na.http.atomic(&na.realm("test"), &atomic_add(&realm, "new.json", "New"))));
    requests.push(send(nb.http.patch_card(&nb.url(card), &person(json!({ "b": 1 })))));
    let answers: Vec<Resp> = join_all(requests).await.into_iter().map(|r| r.expect("task")).collect();
    let waited = started.elapsed();
    for resp in &answers {
        assert_unavailable(resp);
    }
    assert!(waited >= Duration::from_millis(1500), "the writes gave up after {waited:?}, before the 2 s lock timeout");
    // Nothing was written (checked while the lock is still held, and after).
    assert_eq!(session.file_content(&realm, "card-1.json").await.as_deref(), Some(before.as_str()));
    assert_eq!(session.file_content(&realm, "new.json").await, None);
    session.advisory_unlock(key).await;

    assert_eq!(session.file_content(&realm, "card-1.json").await.as_deref(), Some(before.as_str()), "a timed-out write wrote nothing");
    assert_eq!(na.http.source_status(&na.url("test/new.json")).await, 404, "a timed-out /_atomic wrote nothing");
    let ok = nb.http.patch_card(&nb.url(card), &person(json!({ "after": true }))).fetch().await.expect_status(200);
    let got = ok.json()["data"]["attributes"].clone();
    assert_eq!(got, json!({ "firstName": "Before", "after": true }), "only the later PATCH landed");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_replica_killed_while_holding_the_lock_releases_it_and_leaves_no_half_write() {
    let (mut a, b) = two_replicas(&["--lock-timeout", "20s"]).await;
    // Same opening as the lock-timeout test above, spelled out: each test's locals (here `a` is killed) read better than a fixture struct.
    let (na, nb) = nodes(&a, &b);
    let card = "test/card-1";
    seed_card(&na, card, json!({ "firstName": "Before" })).await;
    let realm = a.realm("test");
    let key = realm_lock_key(&realm);
    let mut session = Session::open(a.db_url()).await;
    let mut inspector = Session::open(a.db_url()).await;
    let before = inspector.file_content(&realm, "card-1.json").await.expect("seeded");

    // A takes the realm's lock, then blocks on its file write.
    session.execute("BEGIN").await;
    session.execute("LOCK TABLE files IN EXCLUSIVE MODE").await;
    let doomed = tokio::spawn(na.http.patch_card(&na.url(card), &person(json!({ "fromA": "half-done" }))).try_fetch());
    let a_backend = wait_until!("A's backend holds the realm's lock and waits for the files table", LOCK_WAIT, {
        let holders = inspector.advisory_holders(key).await;
        let table_waiters = inspector.table_lock_waiters("files").await;
        match holders.as_slice() {
            [pid] if table_waiters.contains(pid) => Some(*pid),
            _ => None,
        }
    });

    a.kill();
    let answer = doomed.await.expect("task");
    assert!(answer.is_err(), "a killed server cannot answer, got {answer:?}");

    // B queues for the lock, which A's orphaned backend still holds…
    let from_b = send(nb.http.patch_card(&nb.url(card), &person(json!({ "fromB": true }))));
    let b_waiter = wait_for_waiters(&mut inspector, key, 1).await;
    assert_ne!(b_waiter, vec![a_backend]);
    // …until the table lock goes: A's backend finds its client gone and rolls back.
    let released = Instant::now();
    session.execute("COMMIT").await;
    let resp = from_b.await.expect("task").expect_status(200);
    assert!(released.elapsed() < Duration::from_secs(20), "B waited {:?}, beyond its lock timeout", released.elapsed());
    let got = resp.json()["data"]["attributes"].clone();
    assert_eq!(got, json!({ "firstName": "Before", "fromB": true }), "A's half-done write is not visible to B");

    wait_until!("A's backend is gone", LOCK_WAIT, (!inspector.backend_alive(a_backend).await).then_some(()));
    let stored_text = inspector.file_content(&realm, "card-1.json").await.expect("file");
    assert!(!stored_text.contains("half-done"), "A's write was rolled back:\n{stored_text}");
    assert_ne!(stored_text, before, "B's write landed");
    assert_eq!(attributes(&nb, card).await, json!({ "firstName": "Before", "fromB": true }));
}

/// Writes `text` to `<realm>/<path>` as a source file (POST, expects 204 when it succeeds).
fn write_source(node: &Node, path: &str, text: &str) -> JoinHandle<Resp> {
    send(node.http.write_source(&node.url(path), text.to_string()))
}

/// Asserts a 503 for a write whose database connection went away.
fn assert_503(resp: &Resp, what: &str) {
    assert_eq!(resp.status, 503, "{what}: a write whose database connection dies is 503 (retry), not a server error:\n{resp}");
    assert!(resp.json()["errors"].as_array().is_some_and(|e| !e.is_empty()), "{what}: a JSON errors body:\n{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_connection_killed_mid_batch_answers_503_to_every_member_and_writes_nothing() {
    // Coalescing keeps the batch open for whoever queues (spec §5 allows
    // sharing the transaction; each member must still get an honest answer).
    let srv = primary(&["--lock-timeout", "30s", "--coalesce-max-wait", "60s"]).await;
    let node = Node::of(&srv);
    let realm = srv.realm("test");
    let key = realm_lock_key(&realm);
    let mut holder = Session::open(srv.db_url()).await;
    let mut rows = Session::open(srv.db_url()).await;
    let mut inspector = Session::open(srv.db_url()).await;
    let (first, second) = ("first.txt", "second.txt");
    node.http.seed(&node.url(&format!("test/{first}")), "old").await;
    node.http.seed(&node.url(&format!("test/{second}")), "old").await;

    // Member 1 waits for the realm's lock in the database; member 2 queues
    // behind it in the replica, so both share one batch, whose flush then
    // waits for a row lock on `second`.
    rows.execute("BEGIN").await;
    sqlx::query("SELECT 1 FROM files WHERE realm_url = $1 AND path = $2 FOR UPDATE")
        .bind(&realm)
        .bind(second)
        .execute(&mut rows.conn)
        .await
        .expect("lock the row");
    holder.advisory_lock(key).await;
    let member1 = write_source(&node, &format!("test/{first}"), "new");
    wait_for_waiters(&mut holder, key, 1).await; // member 1 has the turn
    let member2 = write_source(&node, &format!("test/{second}"), "new");
    wait_until!("member 2 queues behind member 1", LOCK_WAIT, (srv.metric("realm_write_waiting").await >= 1.0).then_some(()));
    holder.advisory_unlock(key).await;

    let batch_pid = wait_until!("the batch holds the realm's lock and waits for a row lock", LOCK_WAIT, inspector.holder_waiting_for_a_transaction(key).await);
    assert_eq!(inspector.file_content(&realm, first).await.as_deref(), Some("old"), "member 1 is not answered before the shared commit");

    // One transaction holds both members' writes and waits for the row.
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(batch_pid).fetch_one(&mut inspector.conn).await.expect("terminate");
    assert!(killed);
    let (r1, r2) = (member1.await.expect("task"), member2.await.expect("task"));
    rows.execute("ROLLBACK").await;
    assert_eq!(inspector.file_content(&realm, first).await.as_deref(), Some("old"), "member 1's write did not land");
    assert_eq!(inspector.file_content(&realm, second).await.as_deref(), Some("old"), "member 2's write did not land");
    assert_503(&r1, "a member of the batch whose connection was killed");
    assert_503(&r2, "the other member of that batch");
    // The replica recovers by itself.
    write_source(&node, &format!("test/{first}"), "after").await.expect("task").expect_status(204);
    assert_eq!(node.http.read(&node.url(&format!("test/{first}"))).await, "after");
}

// ---------------------------------------------------------------------------
// `/_atomic` is all or nothing in the database

#[tokio::test(flavor = "multi_thread")]
async fn postgres_atomic_whose_last_op_fails_leaves_no_rows() {
    let srv = primary(&[]).await;
    let node = Node::of(&srv);
    let http = &node.http;
    let realm = srv.realm("test");
    http.seed(&node.url("test/taken.txt"), "original").await;
    http.seed(&node.url("test/also-taken.txt"), "also original").await;
    http.seed(&node.url("test/victim.txt"), "keep me").await;
    seed_card(&node, "test/indexed", json!({ "firstName": "Indexed" })).await;
    let mut session = Session::open(srv.db_url()).await;
    let snapshot = "SELECT string_agg(path || '=' || content_hash, ',' ORDER BY path) FROM files WHERE realm_url = $1";
    let index_snapshot = "SELECT string_agg(path || '=' || card_id || '=' || search_doc, ',' ORDER BY path) FROM card_index WHERE realm_url = $1";
    let files_before: Option<String> = sqlx::query_scalar(snapshot).bind(&realm).fetch_one(&mut session.conn).await.expect("files");
    let index_before: Option<String> = sqlx::query_scalar(index_snapshot).bind(&realm).fetch_one(&mut session.conn).await.expect("index");

    let card = |first: &str| card_resource(&format!("{realm}person"), "Person", Some(json!({ "firstName": first })), None);
    let source = |text: &str| json!({ "type": "source", "attributes": { "content": text }, "meta": {} });
    // Each href appears once per request (no duplicate-href semantics involved).
    for (last, status) in [
        (json!({ "op": "add", "href": "also-taken.txt", "data": source("conflict") }), 409),
        (json!({ "op": "remove", "href": "missing.txt" }), 404),
        (json!({ "op": "add", "href": "big.json", "data": card(&"x".repeat(600 * 1024)) }), 413),
    ] {
        let body = json!({ "atomic:operations": [
            { "op": "add", "href": "first.json", "data": card("First") },
            { "op": "add", "href": "second.gts", "data": source("export default 2;") },
            { "op": "update", "href": "taken.txt", "data": source("overwritten") },
            { "op": "update", "href": "indexed.json", "data": card("Replaced") },
            { "op": "remove", "href": "victim.txt" },
            last.clone(),
        ]});
        let resp = http.atomic(&realm, &body).fetch().await;
        assert_eq!(resp.status, status, "last op {}:\n{resp}", last.to_string().chars().take(200).collect::<String>());
        let files: Option<String> = sqlx::query_scalar(snapshot).bind(&realm).fetch_one(&mut session.conn).await.expect("files");
        let index: Option<String> = sqlx::query_scalar(index_snapshot).bind(&realm).fetch_one(&mut session.conn).await.expect("index");
        assert_eq!(files, files_before, "files rows unchanged after a failed /_atomic ({status})");
        assert_eq!(index, index_before, "card_index rows unchanged after a failed /_atomic ({status})");
    }
    assert_eq!(http.read(&node.url("test/taken.txt")).await, "original");
    assert_eq!(http.read(&node.url("test/victim.txt")).await, "keep me");
    assert_eq!(attributes(&node, "test/indexed").await["firstName"], json!("Indexed"));
    wait_until!("the realm's lock is free after the failures", Duration::from_secs(5), {
        session.advisory_is_free(realm_lock_key(&realm)).await.then_some(())
    });
}

// ---------------------------------------------------------------------------
// Postgres restarted under load

/// What one request during the restart test got.
#[derive(Debug)]
struct Outcome {
    /// The attribute a PATCH set (None for GETs).
    key: Option<String>,
    /// The test phase when the request was sent and when it was answered.
    phase: (u8, u8),
    answer: Result<u16, String>,
    /// What was wrong with the answer, if anything.
    problem: Option<String>,
}

/// Phases: 0 running, 1 restarting (`pg_ctl restart -m fast`), 2 restarted,
/// 3 stopping and stopped (`pg_ctl stop -m fast`), 4 started again.
struct Load {
    phase: AtomicU8,
    /// 200s per phase in which the request was sent.
    ok: [AtomicUsize; 5],
    /// Non-200 answers (or connection errors) per phase in which they came back.
    failed: [AtomicUsize; 5],
    outcomes: Mutex<Vec<Outcome>>,
}

/// Checks one answer of the restart test: a 200 is a whole, valid card
/// document (with `key` when the request was a PATCH); anything else must
/// be a 503 with a JSON error body.
fn judge(resp: &Result<Resp, String>, key: Option<&(String, usize)>) -> Option<String> {
    let resp = match resp {
        Ok(resp) => resp,
        Err(_) => return None, // a connection error is allowed during the outage
    };
    match resp.status {
        200 => {
            let body: Value = match serde_json::from_str(&resp.body) {
                Ok(body) => body,
                Err(e) => return Some(format!("a 200 whose body is not JSON ({e}):\n{resp}")),
            };
            let attributes = &body["data"]["attributes"];
            if attributes["firstName"] != json!("Load") || body["data"]["meta"]["adoptsFrom"]["name"] != json!("Person") {
                return Some(format!("a 200 with a partial card:\n{resp}"));
            }
            if let Some((key, value)) = key {
                if attributes[key] != json!(value) {
                    return Some(format!("a 200 without its own change {key}:\n{resp}"));
                }
            }
            None
        }
        503 => match serde_json::from_str::<Value>(&resp.body) {
            Ok(body) if body["errors"].as_array().is_some_and(|e| !e.is_empty()) => None,
            _ => Some(format!("a 503 without a JSON errors body:\n{resp}")),
        },
        _ => Some(format!("neither 200 nor 503 while Postgres restarts:\n{resp}")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restarted_under_load_gives_503s_then_recovers_by_itself() {
    const WRITERS: usize = 4;
    const MAX_REQUESTS: usize = 600;
    const RECOVERED_AFTER: usize = 5;
    let cluster = Arc::new(tokio::task::spawn_blocking(PgCluster::start).await.expect("start postgres"));
    let db = pg::fresh_database_on(Some(&cluster)).await;
    let srv = Server::start_on(db, options(&["--lock-timeout", "2s"])).await;
    let node = Node::of(&srv);
    let card = "test/load";
    seed_card(&node, card, json!({ "firstName": "Load" })).await;
    let url = srv.url(card);

    let load = Arc::new(Load {
        phase: AtomicU8::new(0),
        ok: Default::default(),
        failed: Default::default(),
        outcomes: Mutex::new(Vec::new()),
    });
    // Writers PATCH their own attributes; one reader GETs the card. Each
    // stops once it has had RECOVERED_AFTER 200s in the last phase, or after
    // MAX_REQUESTS (then the test fails: no recovery).
    let mut clients = Vec::new();
    for client_no in 0..=WRITERS {
        let (load, url, http) = (load.clone(), url.clone(), Client::new());
        clients.push(tokio::spawn(async move {
            let mut recovered = 0;
            for i in 0..MAX_REQUESTS {
                let sent = load.phase.load(Ordering::SeqCst);
                let key = (client_no < WRITERS).then(|| (format!("w{client_no}_{i}"), i));
                let request = match &key {
                    Some((name, value)) => http.patch_card(&url, &person(json!({ name.clone(): value }))),
                    None => http.get_card(&url),
                };
                let resp = request.try_fetch().await;
                let answered = load.phase.load(Ordering::SeqCst);
                let problem = judge(&resp, key.as_ref());
                let ok = matches!(&resp, Ok(r) if r.status == 200);
                if ok {
                    load.ok[sent as usize].fetch_add(1, Ordering::SeqCst);
                    if sent == 4 {
                        recovered += 1;
                    }
                } else {
                    load.failed[answered as usize].fetch_add(1, Ordering::SeqCst);
                }
                load.outcomes.lock().expect("outcomes").push(Outcome {
                    key: key.map(|(k, _)| k),
                    phase: (sent, answered),
                    answer: resp.map(|r| r.status),
                    problem,
                });
                if recovered >= RECOVERED_AFTER {
                    return true;
                }
                if !ok {
                    tokio::time::sleep(Duration::from_millis(25)).await; // back off while it is down
                }
            }
            false
        }));
    }

    let progress = |phase: usize| load.ok[phase].load(Ordering::SeqCst);
    wait_until!("the clients have had 20 successes", Duration::from_secs(120), (progress(0) >= 20).then_some(()));
    // Make sure a write is halfway through its transaction when Postgres
    // goes down: it holds the realm's lock and waits to write its file.
    let key = realm_lock_key(&srv.realm("test"));
    let mut holder = Session::open(srv.db_url()).await;
    holder.execute("BEGIN").await;
    holder.execute("LOCK TABLE files IN EXCLUSIVE MODE").await;
    let mut inspector = Session::open(srv.db_url()).await;
    wait_until!("a write holds the realm's lock and waits for the files table", LOCK_WAIT, {
        let holders = inspector.advisory_holders(key).await;
        let table_waiters = inspector.table_lock_waiters("files").await;
        holders.iter().any(|pid| table_waiters.contains(pid)).then_some(())
    });
    drop(inspector);
    load.phase.store(1, Ordering::SeqCst);
    let restarting = cluster.clone();
    tokio::task::spawn_blocking(move || restarting.restart()).await.expect("pg_ctl restart");
    load.phase.store(2, Ordering::SeqCst);
    wait_until!("20 successes after the restart", Duration::from_secs(120), (progress(2) >= 20).then_some(()));

    // A longer outage, long enough to be seen by every kind of request.
    drop(holder); // its connection died with the restart
    // Before the stop, a write waits for the realm's lock in the database.
    let mut holder = Session::open(srv.db_url()).await;
    holder.advisory_lock(key).await;
    wait_for_waiters(&mut holder, key, 1).await;
    load.phase.store(3, Ordering::SeqCst);
    let stopping = cluster.clone();
    tokio::task::spawn_blocking(move || stopping.stop("fast")).await.expect("pg_ctl stop");
    wait_until!("10 failed answers while Postgres is down", Duration::from_secs(120), {
        (load.failed[3].load(Ordering::SeqCst) >= 10).then_some(())
    });
    let starting = cluster.clone();
    tokio::task::spawn_blocking(move || starting.start_again()).await.expect("pg_ctl start");
    load.phase.store(4, Ordering::SeqCst);
    drop(holder);

    let recovered: Vec<bool> = join_all(clients).await.into_iter().map(|r| r.expect("client task")).collect();
    let outcomes = std::mem::take(&mut *load.outcomes.lock().expect("outcomes"));
    let problems: Vec<&Outcome> = outcomes.iter().filter(|o| o.problem.is_some()).collect();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for outcome in &outcomes {
        let status = match &outcome.answer {
            Ok(status) => status.to_string(),
            Err(_) => "connection error".to_string(),
        };
        *statuses.entry(format!("phase {:?}: {status}", outcome.phase)).or_default() += 1;
    }
    eprintln!("restart under load, answers (phase sent, phase answered): {statuses:#?}");
    assert!(srv.client().head(&url, CARD_JSON).fetch().await.status == 200, "the server is still up");

    // The card is whole: every acknowledged PATCH is in it, and nothing that
    // was never sent.
    let resp = srv.client().get_card(&url).fetch().await.expect_status(200);
    let got = resp.json()["data"]["attributes"].as_object().cloned().expect("attributes");
    let attempted: BTreeSet<&str> = outcomes.iter().filter_map(|o| o.key.as_deref()).collect();
    let lost: Vec<&str> = outcomes
        .iter()
        .filter(|o| matches!(o.answer, Ok(200)))
        .filter_map(|o| o.key.as_deref())
        .filter(|key| !got.contains_key(*key))
        .collect();
    assert!(lost.is_empty(), "{} PATCHes were acknowledged with 200 but are missing after the restart: {lost:?}", lost.len());
    for key in got.keys() {
        assert!(key == "firstName" || attempted.contains(key.as_str()), "unexpected attribute {key}");
    }
    assert_eq!(stored(&node, card).await["data"]["attributes"], Value::Object(got), "the stored file matches the served card");
    assert!(problems.is_empty(), "{} bad answers, e.g. {:#?}\n{statuses:#?}", problems.len(), &problems[..problems.len().min(3)]);
    assert!(recovered.iter().all(|r| *r), "every client has 200s again after the restart by itself: {recovered:?}\n{statuses:#?}");
}

/// Permissions are cached per replica on Postgres; a grant made by another
/// process (the CLI) must reach every replica through NOTIFY, so a user
/// refused a moment ago is let in right after the grant, on both replicas.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_grants_reach_every_replica_at_once() {
    let a = Backend::Postgres.start().await;
    let b = a.replica().await;
    let private = a.realm("private");
    let carol_a = a.client_as("carol", &private, &["read"]).await;
    let carol_b = b.client_as("carol", &private, &["read"]).await;
    let on_b = private.replace(&a.base, &b.base);
    // Both replicas look carol up (and would cache that she may do
    // nothing). A read of a missing file: 403 refused, 404 allowed (HEAD
    // needs no permission).
    let missing = |realm: &str| format!("{realm}missing.txt");
    carol_a.get_source(&missing(&private)).fetch().await.expect_status(403);
    carol_b.get_source(&missing(&on_b)).fetch().await.expect_status(403);

    cli(&["realm", "grant", &private, "carol", "read", "--database", a.db_url()]).await.expect_success();
    for (client, url) in [(&carol_a, &private), (&carol_b, &on_b)] {
        let started = std::time::Instant::now();
        loop {
            let status = client.get_source(&missing(url)).fetch().await.status;
            if status == 404 {
                break;
            }
            assert_eq!(status, 403, "before the grant lands");
            assert!(started.elapsed() < std::time::Duration::from_secs(2), "the grant did not reach {url} within 2 s");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Statements that stay key lookups

/// The tables the write path writes, which grow with realms' histories.
const WRITTEN_TABLES: [&str; 4] = ["files", "card_index", "card_fields", "realm_events"];

/// Rows of [`WRITTEN_TABLES`] that scans read (sequential scans, and index
/// scans: a whole index read in order is no better), as the cumulative
/// statistics count them: this session's own reads included, and other
/// sessions' as far as they have handed them over (a backend does so at
/// most once a second, and as it exits).
async fn rows_scanned(session: &mut Session) -> BTreeMap<String, i64> {
    session.execute("SELECT pg_stat_force_next_flush()").await;
    session.execute("SELECT pg_stat_clear_snapshot()").await;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT t.relname::text, t.seq_tup_read + (SELECT COALESCE(sum(i.idx_tup_read), 0)::int8 FROM pg_stat_user_indexes i WHERE i.relid = t.relid)
         FROM pg_stat_user_tables t WHERE t.relname = ANY($1)",
    )
    .bind(&WRITTEN_TABLES[..])
    .fetch_all(&mut session.conn)
    .await
    .expect("pg_stat_user_tables");
    rows.into_iter().collect()
}

/// Every statement of the write path finds its rows by key, and must keep
/// doing so however its tables grew since a connection planned it: a
/// connection keeps the generic plan it made first, and one made on small
/// tables (a new database) scanned them instead. The flush retired old
/// events with a join whose plan read every stored event at each later
/// commit (milliseconds a commit, growing with the table, until
/// statistics made it plan again); its deletes of files, cards and search
/// rows were planned as scans of those tables too. (A replica keeps each
/// realm's last 10 000 events, so `realm_events` holds about that many
/// rows per realm.)
#[tokio::test(flavor = "multi_thread")]
async fn postgres_writes_never_read_a_whole_table_however_the_tables_grew() {
    const HISTORY: i64 = 20_000;
    let mut srv = primary(&["--events-retain-count", "10"]).await;
    let node = Node::of(&srv);
    let mut session = Session::open(srv.db_url()).await;
    // No statistics refresh (nor the new plans it would cause) during the test.
    for table in WRITTEN_TABLES {
        session.execute(&format!("ALTER TABLE {table} SET (autovacuum_enabled = off)")).await;
    }
    for card in ["test/card-1", "test/card-2", "test/card-3"] {
        seed_card(&node, card, json!({ "n": 0, "note": "seeded" })).await;
    }
    // The server's connections plan their statements on small tables...
    for n in 1..=20 {
        node.http.patch_card(&node.url("test/card-1"), &person(json!({ "n": n }))).fetch().await.expect_status(200);
    }
    // ...which then grow by another realm's long history.
    let other = srv.realm("other");
    for sql in [
        "INSERT INTO realm_events (realm_url, seq, payload, created_at) SELECT $1, g, '{}', extract(epoch FROM now())::bigint FROM generate_series(1, $2) g",
        "INSERT INTO files (realm_url, path, content, content_hash, created_at, last_modified) SELECT $1, 'c/' || g || '.json', '{}', 'h' || g, 1, 1 FROM generate_series(1, $2) g",
        "INSERT INTO card_index (realm_url, path, card_id, card_type, search_doc, updated_at, search_version)
         SELECT $1, 'c/' || g || '.json', $1 || 'c/' || g, 't', '{}', 1, (SELECT max(search_version) FROM card_index) FROM generate_series(1, $2) g",
        "INSERT INTO card_fields (realm_url, path, field, position, kind, text_key, text_value) SELECT $1, 'c/' || g || '.json', 'n', 0, 1, 'x', 'x' FROM generate_series(1, $2) g",
    ] {
        sqlx::query(sql).bind(&other).bind(HISTORY).execute(&mut session.conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    // (Our inserts' key checks read the card index; the server's reads
    // so far, on small tables, are a few dozen rows at most.)
    let before = rows_scanned(&mut session).await;
    // Writes of every kind: changed and removed search rows, a card and a file deleted.
    for n in 21..=50 {
        node.http.patch_card(&node.url("test/card-1"), &person(json!({ "n": n }))).fetch().await.expect_status(200);
    }
    node.http.patch_card(&node.url("test/card-2"), &person(json!({ "note": null }))).fetch().await.expect_status(200);
    node.http.delete_card(&node.url("test/card-3")).fetch().await.expect_status(204);
    assert_eq!(attributes(&node, "test/card-1").await["n"], json!(50));
    // A backend hands its counts over as it exits.
    srv.terminate();
    srv.exit_status(LOCK_WAIT).await;
    wait_until!("the server's sessions have ended", LOCK_WAIT, {
        let others: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
            .fetch_one(&mut session.conn)
            .await
            .expect("pg_stat_activity");
        (others == 0).then_some(())
    });
    let after = rows_scanned(&mut session).await;
    let read: BTreeMap<&String, i64> = after.iter().map(|(table, rows)| (table, rows - before.get(table).copied().unwrap_or(0))).collect();
    assert_eq!(read.len(), WRITTEN_TABLES.len(), "{read:?}");
    assert!(read.values().all(|rows| *rows < HISTORY), "the writes read whole tables (rows read by scans: {read:?})\n--- server log ---\n{}", srv.log());
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM realm_events WHERE realm_url = $1")
        .bind(srv.realm("test"))
        .fetch_one(&mut session.conn)
        .await
        .expect("count events");
    assert_eq!(kept, 10, "each commit past the 10th retired the event 10 before it");
}
