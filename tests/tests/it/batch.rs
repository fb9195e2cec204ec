//! Write path v2: what a batch (the writers of a realm that run one after
//! another against its in-memory overlay and commit together) guarantees.
//! Each test lines its writers up behind a held database lock (Postgres:
//! the realm's advisory lock; SQLite: a write transaction on the file) and
//! waits, through `/_metrics`, until each has queued, so they run as one
//! batch in a known order once the lock is released:
//!
//! 1. a member's 412, 409 or 404 is computed against the earlier members'
//!    writes, not yet committed;
//! 2. a member that fails (If-Match, a conflicting or failing `/_atomic`,
//!    a guest that traps while holding the lock) costs the others nothing
//!    and writes nothing;
//! 3. the batch commits once, with exactly the successful members' writes;
//! 4. a replica SIGKILLed in the middle of a 30-member batch leaves nothing
//!    of that batch, and every write acknowledged before it is present
//!    (Postgres, two replicas);
//! 5. a writer whose client goes away while it waits (for the realm's
//!    turn, in a group still beginning, or as that group's opener) leaves
//!    the group and writes nothing; the writers that stay commit;
//! 6. a server SIGKILLed in the middle of a 30-member batch (one server,
//!    both backends), or at a random moment under load, started again on
//!    its database, has every acknowledged write and nothing of a batch it
//!    had not committed; of a write it never answered, all or nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::IF_MATCH;
use reqwest::RequestBuilder;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::harness::*;
use crate::lock_holder::LockHolder;
use crate::pg::Session;

const LINE_UP_WAIT: Duration = Duration::from_secs(30);

/// Sends `requests` in order, each once the previous one has queued: the
/// first holds the realm's turn and waits for the database lock, the n-th
/// waits for the turn behind n - 1 others.
pub(crate) async fn line_up(srv: &Server, requests: Vec<RequestBuilder>) -> Vec<JoinHandle<Result<Resp, String>>> {
    let mut sent = Vec::new();
    for (i, request) in requests.into_iter().enumerate() {
        sent.push(tokio::spawn(async move { request.try_fetch().await }));
        let (gauge, count) = if i == 0 { ("realm_write_opening", 1.0) } else { ("realm_write_waiting", i as f64) };
        let deadline = std::time::Instant::now() + LINE_UP_WAIT;
        while srv.metric(gauge).await < count {
            assert!(std::time::Instant::now() < deadline, "writer {i} never queued ({gauge} < {count})");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    sent
}

pub(crate) async fn answers(sent: Vec<JoinHandle<Result<Resp, String>>>) -> Vec<Resp> {
    let mut out = Vec::new();
    for handle in sent {
        out.push(handle.await.expect("request task").unwrap_or_else(|e| panic!("{e}")));
    }
    out
}

fn atomic_add(href: &str, data: Value) -> Value {
    json!({"atomic:operations": [{"op": "add", "href": href, "data": data}]})
}

fn person(realm: &str, attributes: Value) -> Value {
    person_doc(realm, attributes)
}

on_both_backends!(a_batch_sees_its_earlier_members_and_its_failures_cost_nothing);

async fn a_batch_sees_its_earlier_members_and_its_failures_cost_nothing(backend: Backend) {
    let f = crate::guests::fixtures().await;
    let options = ServerOptions { serve_args: vec!["--guest".into(), f.faulty.display().to_string()], ..ServerOptions::default() };
    let srv = backend.start_with(options).await;
    let realm = srv.realm("test");
    let http = srv.client();
    let (card, created) = http.create(&realm, &person(&realm, json!({"firstName": "Mango"}))).await;
    let before = created.etag();
    http.seed(&format!("{realm}doc.txt"), "old").await;
    let commits = srv.metric("realm_write_commits_total").await;
    let committed = srv.metric("realm_write_requests_committed_total").await;

    let blocker = LockHolder::hold(&srv, &realm).await;
    let new_card = json!({"type": "card", "attributes": {"firstName": "New"}, "meta": {"adoptsFrom": {"module": "./person", "name": "Person"}}});
    let nul_source = json!({"type": "source", "attributes": {"content": "a NUL \u{0}"}});
    let failing_atomic = json!({"atomic:operations": [
        {"op": "add", "href": "x.json", "data": new_card.clone()},
        {"op": "add", "href": "bad.txt", "data": nul_source},
    ]});
    let sent = line_up(&srv, vec![
        http.patch_card(&card, &person(&realm, json!({"a": 1}))),
        http.patch_card(&card, &person(&realm, json!({"b": 1}))).header(IF_MATCH, before.clone()),
        http.atomic(&realm, &atomic_add("new.json", new_card.clone())),
        http.atomic(&realm, &atomic_add("new.json", new_card.clone())),
        http.delete_source(&format!("{realm}doc.txt")),
        http.delete_source(&format!("{realm}doc.txt")),
        http.atomic(&realm, &failing_atomic),
        http.get_card(&format!("{realm}_fault/trap-in-lock")),
        http.patch_card(&card, &person(&realm, json!({"c": 1}))),
    ])
    .await;
    // Nobody is answered while the lock is held.
    assert!(sent.iter().all(|h| !h.is_finished()), "a member answered before its batch could commit");
    blocker.release().await;
    let got = answers(sent).await;

    let statuses: Vec<u16> = got.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 412, 201, 409, 204, 404, 400, 500, 200], "in order: {got:#?}");
    assert_eq!(got[8].json()["data"]["attributes"], json!({"firstName": "Mango", "a": 1, "c": 1}), "the last PATCH sees the first");
    assert_eq!(srv.metric("realm_write_commits_total").await - commits, 1.0, "one commit for the whole batch");
    assert_eq!(srv.metric("realm_write_requests_committed_total").await - committed, 4.0, "the four successful writers");

    let stored = http.get_card(&card).fetch().await.expect_status(200);
    assert_eq!(stored.json()["data"]["attributes"], json!({"firstName": "Mango", "a": 1, "c": 1}));
    assert_eq!(stored.etag(), got[8].etag());
    http.get_card(&format!("{realm}new")).fetch().await.expect_status(200);
    for gone in ["doc.txt", "x.json", "bad.txt", "half-written.txt"] {
        assert_eq!(http.source_status(&format!("{realm}{gone}")).await, 404, "{gone}");
    }
}

/// Postgres, two replicas: replica A is SIGKILLed while a batch of 30
/// writes waits in its flush (the test holds a row lock the flush needs).
#[tokio::test(flavor = "multi_thread")]
async fn postgres_replica_killed_mid_batch_of_30_leaves_nothing_of_it_and_keeps_every_acknowledged_write() {
    let mut a = Backend::Postgres.start_with(ServerOptions { serve_args: vec!["--coalesce-max-wait".into(), "60s".into()], ..ServerOptions::default() }).await;
    let b = a.replica().await;
    let realm_a = a.realm("test");
    let realm_b = b.realm("test");
    let (http_a, http_b) = (a.client(), b.client());
    const MEMBERS: usize = 30;
    for i in 0..MEMBERS {
        http_a.seed(&format!("{realm_a}doc-{i}.txt"), "old").await;
    }
    // Acknowledged before the batch, on both replicas.
    for i in 0..10 {
        http_a.write_source(&format!("{realm_a}ack-a-{i}.txt"), "acknowledged").fetch().await.expect_status(204);
        http_b.write_source(&format!("{realm_b}ack-b-{i}.txt"), "acknowledged").fetch().await.expect_status(204);
    }

    let mut rows = Session::open(a.db_url()).await;
    rows.execute("BEGIN").await;
    sqlx::query("SELECT 1 FROM files WHERE realm_url = $1 AND path = $2 FOR UPDATE")
        .bind(&realm_a)
        .bind(format!("doc-{}.txt", MEMBERS - 1))
        .execute(&mut rows.conn)
        .await
        .expect("lock the row");
    let blocker = LockHolder::hold(&a, &realm_a).await;
    let sent = line_up(&a, (0..MEMBERS).map(|i| http_a.write_source(&format!("{realm_a}doc-{i}.txt"), "new")).collect()).await;
    blocker.release().await;

    // The batch holds the realm's lock and its flush waits for the row.
    let key = crate::pg::realm_lock_key(&realm_a);
    let mut inspector = Session::open(a.db_url()).await;
    let deadline = std::time::Instant::now() + LINE_UP_WAIT;
    while inspector.holder_waiting_for_a_transaction(key).await.is_none() {
        assert!(std::time::Instant::now() < deadline, "the batch never reached its flush");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sent.iter().all(|h| !h.is_finished()), "a member of the batch was answered before its commit");
    assert_eq!(a.metric("realm_write_waiting").await, 0.0, "all {MEMBERS} writers are in the batch");

    a.kill();
    rows.execute("ROLLBACK").await;
    for handle in sent {
        // The connection closes with the process: no answer at all.
        if let Ok(answer) = handle.await.expect("request task") {
            panic!("a killed replica answered a member of its unfinished batch:\n{answer}");
        }
    }
    // The killed replica's transaction is gone with its connection.
    let deadline = std::time::Instant::now() + LINE_UP_WAIT;
    while !inspector.advisory_holders(key).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the killed replica's transaction still holds the realm's lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for i in 0..MEMBERS {
        assert_eq!(inspector.file_content(&realm_a, &format!("doc-{i}.txt")).await.as_deref(), Some("old"), "doc-{i}.txt of the killed batch");
    }
    for i in 0..10 {
        assert_eq!(http_b.read(&format!("{realm_b}ack-a-{i}.txt")).await, "acknowledged");
        assert_eq!(http_b.read(&format!("{realm_b}ack-b-{i}.txt")).await, "acknowledged");
    }
    // The other replica goes on writing.
    http_b.write_source(&format!("{realm_b}doc-0.txt"), "after").fetch().await.expect_status(204);
    assert_eq!(http_b.read(&format!("{realm_b}doc-0.txt")).await, "after");
}

/// Postgres: batches of different realms share one commit. A replica runs
/// two commits at once (alone on its realms); the commits of realms `c`
/// and `d` are held in their flush (the test holds row locks they need);
/// meanwhile writers of `a` and `b` form the next group, which commits
/// once, with both realms, when a commit slot frees.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_batches_of_two_realms_share_the_next_commit() {
    let realms = ["a", "b", "c", "d"].map(|r| RealmSpec::new(r, Public::Write)).to_vec();
    // A group admits writers for --coalesce-max-wait after it opens; the
    // test's polling must not outlast that.
    let serve_args = vec!["--coalesce-max-wait".to_string(), "60s".to_string()];
    let srv = Backend::Postgres.start_with(ServerOptions { realms, serve_args, ..ServerOptions::default() }).await;
    let http = srv.client();
    for r in ["a", "b", "c", "d"] {
        http.seed(&format!("{}doc.txt", srv.realm(r)), "old").await;
    }
    let (commits, realm_batches) = (srv.metric("realm_write_commits_total").await, srv.metric("realm_write_realm_batches_total").await);
    let mut rows = Session::open(srv.db_url()).await;
    rows.execute("BEGIN").await;
    let mut inspector = Session::open(srv.db_url()).await;
    let mut held = Vec::new();
    for r in ["c", "d"] {
        sqlx::query("SELECT 1 FROM files WHERE realm_url = $1 AND path = 'doc.txt' FOR UPDATE").bind(srv.realm(r)).execute(&mut rows.conn).await.expect("lock the row");
        held.push((r, tokio::spawn(http.write_source(&format!("{}doc.txt", srv.realm(r)), "new").try_fetch())));
        let key = crate::pg::realm_lock_key(&srv.realm(r));
        let deadline = std::time::Instant::now() + LINE_UP_WAIT;
        while inspector.holder_waiting_for_a_transaction(key).await.is_none() {
            assert!(std::time::Instant::now() < deadline, "{r}'s commit never reached its flush");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Written while both commits are under way: done, but not answered.
    let a = tokio::spawn(http.write_source(&format!("{}doc.txt", srv.realm("a")), "new").try_fetch());
    let key_a = crate::pg::realm_lock_key(&srv.realm("a"));
    let deadline = std::time::Instant::now() + LINE_UP_WAIT;
    while inspector.advisory_holders(key_a).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "a's writer never took a's lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = tokio::spawn(http.write_source(&format!("{}doc.txt", srv.realm("b")), "new").try_fetch());
    let key_b = crate::pg::realm_lock_key(&srv.realm("b"));
    let deadline = std::time::Instant::now() + LINE_UP_WAIT;
    while inspector.advisory_holders(key_b).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "b's writer never took b's lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(inspector.advisory_holders(key_a).await, inspector.advisory_holders(key_b).await, "one transaction holds both realms' locks");
    assert!(!a.is_finished() && !b.is_finished(), "answered before their commit");
    rows.execute("ROLLBACK").await;
    held.extend([("a", a), ("b", b)]);
    for (name, write) in held {
        let answer = write.await.expect("task").unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(answer.status, 204, "{name}: {answer}");
    }
    assert_eq!(srv.metric("realm_write_commits_total").await - commits, 3.0, "c's and d's commits, then a and b in one");
    assert_eq!(srv.metric("realm_write_realm_batches_total").await - realm_batches, 4.0);
    for r in ["a", "b", "c", "d"] {
        assert_eq!(http.read(&format!("{}doc.txt", srv.realm(r))).await, "new");
    }
}

/// Postgres, two replicas, six realms: 32 clients each PATCH 25 times a
/// card of a realm picked in turn, every PATCH setting its own attribute.
/// Realms join each other's commits on both replicas (the lock of a realm
/// another transaction holds is never waited for while holding others);
/// every PATCH lands, none is lost.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_two_replicas_writing_six_realms_lose_nothing_and_never_deadlock() {
    const REALMS: usize = 6;
    const CLIENTS: usize = 32;
    const PATCHES: usize = 25;
    let realms: Vec<RealmSpec> = (0..REALMS).map(|r| RealmSpec::new(&format!("r{r}"), Public::Write)).collect();
    let serve_args = vec!["--lock-timeout".to_string(), "120s".to_string()];
    let a = Backend::Postgres.start_with(ServerOptions { realms, serve_args: serve_args.clone(), ..ServerOptions::default() }).await;
    let b = a.replica_with(&serve_args).await;
    let bases = [a.base.clone(), b.base.clone()];
    let http = a.client();
    let cards: Vec<String> = futures::future::join_all((0..REALMS).map(|r| {
        let (http, realm) = (http.clone(), a.realm(&format!("r{r}")));
        async move { http.create(&realm, &person(&realm, json!({"firstName": "Counter"}))).await.0 }
    }))
    .await;
    let tasks = (0..CLIENTS).map(|client| {
        let (primary, base, realms) = (a.base.clone(), bases[client % 2].clone(), (0..REALMS).map(|r| a.realm(&format!("r{r}"))).collect::<Vec<_>>());
        let cards: Vec<String> = cards.iter().map(|card| card.replace(&primary, &base)).collect();
        let http = Client::new();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..PATCHES {
                let r = (client + i) % REALMS;
                let doc = person(&realms[r], json!({ format!("c{client}_{i}"): i }));
                let resp = http.patch_card(&cards[r], &doc).fetch().await;
                statuses.push((resp.status, resp.body));
            }
            statuses
        })
    });
    for (client, answers) in futures::future::join_all(tasks).await.into_iter().enumerate() {
        for (i, (status, body)) in answers.expect("client").into_iter().enumerate() {
            assert_eq!(status, 200, "client {client} PATCH {i}: {body}");
        }
    }
    let mut seen = 0;
    for (r, card) in cards.iter().enumerate() {
        let got = http.get_card(card).fetch().await.expect_status(200).json()["data"]["attributes"].clone();
        for client in 0..CLIENTS {
            for i in (0..PATCHES).filter(|i| (client + i) % REALMS == r) {
                assert_eq!(got[format!("c{client}_{i}")], json!(i), "realm r{r} lost c{client}_{i}");
                seen += 1;
            }
        }
        assert_eq!(got.as_object().map_or(0, |o| o.len()), 1 + seen_in(r, CLIENTS, PATCHES, REALMS), "realm r{r} has exactly its attributes");
    }
    assert_eq!(seen, CLIENTS * PATCHES);
}

fn seen_in(realm: usize, clients: usize, patches: usize, realms: usize) -> usize {
    (0..clients).map(|c| (0..patches).filter(|i| (c + i) % realms == realm).count()).sum()
}

/// `path` (below the server root) on replica `srv`.
fn on(srv: &Server, path: &str) -> String {
    format!("{}{path}", srv.base)
}

/// A Person card document with `attributes` whose module is named
/// relative to the card (replicas answer from different origins).
fn person_here(attributes: Value) -> Value {
    card_doc("./person", "Person", Some(attributes), None)
}

on_both_backends!(a_replica_keeps_what_another_replica_left_unchanged_and_rereads_the_rest);

/// Another replica's write moves the realm's event seq, but only the files
/// it changed are read again: a file it left alone is still built on as
/// kept (its search rows diffed against the kept ones), and the one it
/// changed, deleted or created is built on as it now is.
async fn a_replica_keeps_what_another_replica_left_unchanged_and_rereads_the_rest(backend: Backend) {
    let a = backend.start().await;
    let b = a.replica().await;
    let (ca, cb) = (a.client(), b.client());
    for (path, name) in [("test/kept", "Kept"), ("test/changed", "Changed"), ("test/deleted", "Deleted")] {
        ca.seed(&format!("{}.json", on(&a, path)), &file_text(&person_here(json!({ "firstName": name })))).await;
        // Written (and so kept) by a.
        ca.patch_card(&on(&a, path), &person_here(json!({ "lastName": "A" }))).fetch().await.expect_status(200);
    }
    // b moves the realm's seq: it changes one card, deletes one, creates one.
    cb.patch_card(&on(&b, "test/changed"), &person_here(json!({ "lastName": "B" }))).fetch().await.expect_status(200);
    cb.delete_card(&on(&b, "test/deleted")).fetch().await.expect_status(204);
    cb.seed(&format!("{}.json", on(&b, "test/created")), &file_text(&person_here(json!({ "firstName": "Created" })))).await;

    let kept = ca.patch_card(&on(&a, "test/kept"), &person_here(json!({ "firstName": "Renamed" }))).fetch().await.expect_status(200);
    assert_eq!(kept.json()["data"]["attributes"]["lastName"], json!("A"), "built on the kept card:\n{kept}");
    let changed = ca.patch_card(&on(&a, "test/changed"), &person_here(json!({ "firstName": "Again" }))).fetch().await.expect_status(200);
    assert_eq!(changed.json()["data"]["attributes"]["lastName"], json!("B"), "built on b's write:\n{changed}");
    let deleted = ca.patch_card(&on(&a, "test/deleted"), &person_here(json!({ "late": true }))).fetch().await;
    assert_eq!(deleted.status, 404, "deleted on b, gone on a:\n{deleted}");
    let created = ca.patch_card(&on(&a, "test/created"), &person_here(json!({ "lastName": "A" }))).fetch().await.expect_status(200);
    assert_eq!(created.json()["data"]["attributes"]["firstName"], json!("Created"), "created on b, found on a:\n{created}");

    // The search rows followed every write, the kept card's included.
    let search = |name: &str| format!("{}_search?filter[eq][firstName]={name}", on(&a, "test/"));
    for (name, hits) in [("Kept", 0), ("Renamed", 1), ("Changed", 0), ("Again", 1), ("Deleted", 0), ("Created", 1)] {
        let resp = ca.request(reqwest::Method::GET, &search(name), CARD_JSON).fetch().await.expect_status(200);
        let found = resp.json()["data"].as_array().map_or(0, Vec::len);
        assert_eq!(found, hits, "cards named {name}:\n{resp}");
    }
}

on_both_backends!(a_replica_builds_on_what_another_replica_wrote_since_its_last_batch);

/// A replica keeps what its batches saw of a realm's files for the realm's
/// next batch (trusted only while the realm's event seq is unchanged). A
/// write on another replica in between — an update, a delete, a create —
/// is what the next write must build on, never what was kept.
async fn a_replica_builds_on_what_another_replica_wrote_since_its_last_batch(backend: Backend) {
    let a = backend.start().await;
    let b = a.replica().await;
    let (ca, cb) = (a.client(), b.client());
    let path = "test/counter";
    ca.seed(&format!("{}.json", on(&a, path)), &file_text(&person_here(json!({ "firstName": "A" })))).await;

    // Updates, alternating: each answer carries every earlier attribute.
    let mut expected = serde_json::Map::from_iter([("firstName".to_string(), json!("A"))]);
    for i in 0..6 {
        let (srv, http) = if i % 2 == 0 { (&b, &cb) } else { (&a, &ca) };
        let resp = http.patch_card(&on(srv, path), &person_here(json!({ format!("n{i}"): i }))).fetch().await.expect_status(200);
        expected.insert(format!("n{i}"), json!(i));
        let got = resp.json()["data"]["attributes"].clone();
        for (k, v) in &expected {
            assert_eq!(&got[k], v, "PATCH {i} (on {}) builds on every earlier one: {k} in\n{resp}", srv.base);
        }
    }

    // A deletes the card that B's last batch saw: B's PATCH is a 404.
    ca.delete_card(&on(&a, path)).fetch().await.expect_status(204);
    let gone = cb.patch_card(&on(&b, path), &person_here(json!({ "late": true }))).fetch().await;
    assert_eq!(gone.status, 404, "the card deleted on the other replica is gone here too:\n{gone}");

    // B saw it absent; A creates it again: B's PATCH finds it.
    let source = format!("{}.json", on(&a, path));
    ca.seed(&source, &file_text(&person_here(json!({ "firstName": "Again" })))).await;
    let back = cb.patch_card(&on(&b, path), &person_here(json!({ "late": true }))).fetch().await.expect_status(200);
    assert_eq!(back.json()["data"]["attributes"]["firstName"], json!("Again"), "built on the re-created card:\n{back}");
    assert_eq!(back.json()["data"]["attributes"]["n0"], Value::Null, "nothing of the deleted card comes back:\n{back}");

    // And A, which wrote the card last before B did, sees B's write.
    let last = ca.patch_card(&on(&a, path), &person_here(json!({ "last": 1 }))).fetch().await.expect_status(200);
    assert_eq!(last.json()["data"]["attributes"]["late"], json!(true), "a builds on b's write:\n{last}");
}

// ---------------------------------------------------------------------------
// A client that goes away while its write waits

/// Two realms anyone may write: the held one and another.
fn two_realms() -> ServerOptions {
    // A lock timeout no wait below comes near: a write that never ends
    // shows as a late 503, not as one that happened to time out. A group
    // admits writers for --coalesce-max-wait after it opens: the test's
    // polling must not outlast that.
    let serve_args = ["--lock-timeout", "60s", "--coalesce-max-wait", "60s"].map(String::from).to_vec();
    let realms = ["test", "other"].map(|r| RealmSpec::new(r, Public::Write)).to_vec();
    ServerOptions { realms, serve_args, ..ServerOptions::default() }
}

fn sqlite(srv: &Server) -> bool {
    srv.db_url().starts_with("sqlite:")
}

/// Sends a whole binary `POST` of `path` (below the server root) on a
/// connection of its own and leaves the answer unread: dropping the
/// stream is the client going away.
async fn post_and_stay_on_the_line(srv: &Server, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let body = format!("written by {path}");
    let request = format!(
        "POST /{path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n{body}",
        srv.port,
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", srv.port)).await.expect("connect to the server");
    stream.write_all(request.as_bytes()).await.expect("send the request");
    stream
}

/// The status line's code of the answer on `stream`.
async fn answer_status(stream: &mut tokio::net::TcpStream) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        let read = tokio::time::timeout(LINE_UP_WAIT, stream.read(&mut byte)).await.expect("an answer in time").expect("read the answer");
        assert_eq!(read, 1, "the connection closed before an answer: {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("not a status line: {line:?}"))
}

fn post_binary(http: &Client, url: &str) -> RequestBuilder {
    http.post_bytes(url, "application/octet-stream", format!("written to {url}"))
}

/// Polls `/_metrics` until `gauge` reads `value`.
async fn until_gauge(srv: &Server, gauge: &str, value: f64, what: &str) {
    wait_until!(format!("{what} ({gauge} = {value})"), LINE_UP_WAIT, { (srv.metric(gauge).await == value).then_some(()) });
}

/// The answer of a writer that stayed on the line, which must come once
/// the lock is free.
async fn answer_of(name: &str, sent: JoinHandle<Result<Resp, String>>) -> Resp {
    let answer = tokio::time::timeout(LINE_UP_WAIT, sent).await;
    let answer = answer.unwrap_or_else(|_| panic!("{name} was never answered: its group never committed"));
    answer.expect("task").unwrap_or_else(|e| panic!("{name}: {e}"))
}

async fn status_of(http: &Client, url: &str) -> u16 {
    http.request(reqwest::Method::GET, url, "*/*").fetch().await.status
}

/// After the writers that went away: both realms take writes at once,
/// nothing is left in the write path, and of the writers that went away
/// nothing is stored.
async fn both_realms_write_and_nothing_is_left_of(srv: &Server, gone: &[&str]) {
    let http = srv.client();
    for realm in ["test", "other"] {
        let url = format!("{}after.bin", srv.realm(realm));
        let answer = tokio::time::timeout(LINE_UP_WAIT, post_binary(&http, &url).try_fetch()).await;
        let answer = answer.unwrap_or_else(|_| panic!("a write to {realm} after the others went away never ended")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(answer.status, 204, "{realm} takes writes:\n{answer}");
    }
    until_gauge(srv, "realm_write_in_progress", 0.0, "every writer done").await;
    assert_eq!(srv.metric("realm_write_waiting").await, 0.0);
    for path in gone {
        assert_eq!(status_of(&http, &format!("{}{path}", srv.base)).await, 404, "{path} went away before its turn: nothing of it is stored");
    }
}

on_both_backends!(writers_that_go_away_while_they_wait_cost_the_writers_that_stay_nothing, an_opener_that_goes_away_before_its_transaction_begins_costs_the_others_nothing);

/// With `test`'s lock held from outside, a writer of `test` waits for it,
/// holding the realm's turn and opening a group; one of `test` waits for
/// the turn and one of `other` waits too (SQLite: in the opener's group,
/// whose one transaction is still to begin; Postgres: it has a lock of its
/// own and writes at once). The ones that wait go away: the one that stays
/// commits once the lock is free, and nothing else is left waiting.
async fn writers_that_go_away_while_they_wait_cost_the_writers_that_stay_nothing(backend: Backend) {
    let srv = backend.start_with(two_realms()).await;
    let http = srv.client();
    let blocker = LockHolder::hold(&srv, &srv.realm("test")).await;

    let stays = tokio::spawn(post_binary(&http, &format!("{}stays.bin", srv.realm("test"))).try_fetch());
    until_gauge(&srv, "realm_write_opening", 1.0, "the first writer waits for the lock").await;
    let behind = post_and_stay_on_the_line(&srv, "test/gone-behind.bin").await;
    until_gauge(&srv, "realm_write_waiting", 1.0, "the second writer waits for the realm's turn").await;
    let mut joiner = post_and_stay_on_the_line(&srv, "other/gone-joiner.bin").await;
    let mut gone = vec!["test/gone-behind.bin"];
    if sqlite(&srv) {
        until_gauge(&srv, "realm_write_in_progress", 3.0, "the writer of `other` waits").await;
        assert_eq!(srv.metric("realm_write_opening").await, 1.0, "the writer of `other` joined the opener's group");
        gone.push("other/gone-joiner.bin");
    } else {
        assert_eq!(answer_status(&mut joiner).await, 204, "Postgres: `other` is not held, its writer does not wait");
    }
    drop((behind, joiner));
    until_gauge(&srv, "realm_write_in_progress", 1.0, "the server let go of the writers that went away").await;
    assert!(!stays.is_finished(), "answered while the lock is held");

    blocker.release().await;
    let stayed = answer_of("the writer that stayed", stays).await;
    assert_eq!(stayed.status, 204, "the writer that stayed commits:\n{stayed}");
    both_realms_write_and_nothing_is_left_of(&srv, &gone).await;
    assert_eq!(status_of(&http, &format!("{}stays.bin", srv.realm("test"))).await, 200);
}

/// With `test`'s lock held from outside, the writer that opened the group
/// (and waits for the lock) goes away before its transaction begins.
/// Those that waited with it — one of `test` for the realm's turn and, on
/// SQLite, one of `other` in the group the opener was beginning — find
/// another group and commit once the lock is free.
async fn an_opener_that_goes_away_before_its_transaction_begins_costs_the_others_nothing(backend: Backend) {
    let srv = backend.start_with(two_realms()).await;
    let http = srv.client();
    let blocker = LockHolder::hold(&srv, &srv.realm("test")).await;

    let opener = post_and_stay_on_the_line(&srv, "test/gone-opener.bin").await;
    until_gauge(&srv, "realm_write_opening", 1.0, "the opener waits for the lock").await;
    let behind = tokio::spawn(post_binary(&http, &format!("{}behind.bin", srv.realm("test"))).try_fetch());
    until_gauge(&srv, "realm_write_waiting", 1.0, "the second writer waits for the realm's turn").await;
    let joiner = tokio::spawn(post_binary(&http, &format!("{}joiner.bin", srv.realm("other"))).try_fetch());
    let mut stays = vec![("behind", behind)];
    let waiting = if sqlite(&srv) {
        until_gauge(&srv, "realm_write_in_progress", 3.0, "the writer of `other` waits").await;
        assert_eq!(srv.metric("realm_write_opening").await, 1.0, "the writer of `other` joined the opener's group");
        stays.push(("joiner", joiner));
        3.0
    } else {
        let joined = joiner.await.expect("task").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(joined.status, 204, "Postgres: `other` is not held, its writer does not wait:\n{joined}");
        2.0
    };
    drop(opener);
    let left = wait_until!("the server lets go of the opener", LINE_UP_WAIT, {
        let now = srv.metric("realm_write_in_progress").await;
        (now < waiting).then_some(now)
    });
    for (name, sent) in &mut stays {
        if sent.is_finished() {
            let answer = sent.await.expect("task").unwrap_or_else(|e| panic!("{name}: {e}"));
            panic!("{name} was answered while the lock is held, when the opener went away:\n{answer}");
        }
    }
    assert_eq!(left, waiting - 1.0, "only the opener left");

    blocker.release().await;
    for (name, sent) in stays {
        let answer = answer_of(name, sent).await;
        assert_eq!(answer.status, 204, "{name} commits after the opener went away:\n{answer}");
    }
    both_realms_write_and_nothing_is_left_of(&srv, &["test/gone-opener.bin"]).await;
    for path in ["test/behind.bin", "other/joiner.bin"] {
        assert_eq!(status_of(&http, &format!("{}{path}", srv.base)).await, 200, "{path}");
    }
}

// ---------------------------------------------------------------------------
// A server killed in the middle of a batch

on_both_backends!(a_server_killed_in_the_middle_of_a_30_member_batch_leaves_nothing_of_it);

/// One server: 30 writers line up behind the realm's lock (held from
/// outside), the 16th a guest call that writes and then runs on, holding
/// the realm's turn. Once the lock is free the first 15 take their turns
/// (their writes wait in the batch's overlay) and the 16th keeps the rest
/// waiting: SIGKILL then. A server started again on the same database has
/// every write acknowledged before, and nothing of the batch.
async fn a_server_killed_in_the_middle_of_a_30_member_batch_leaves_nothing_of_it(backend: Backend) {
    const MEMBERS: usize = 30;
    const STALLS: usize = 15;
    let f = crate::guests::fixtures().await;
    let serve_args = ["--guest", &f.faulty.display().to_string(), "--guest-timeout", "300s", "--lock-timeout", "60s", "--coalesce-max-wait", "60s"]
        .map(String::from)
        .to_vec();
    let mut srv = backend.start_with(ServerOptions { serve_args, ..ServerOptions::default() }).await;
    let (realm, http) = (srv.realm("test"), srv.client());
    for i in 0..10 {
        http.write_source(&format!("{realm}ack-{i}.txt"), "acknowledged").fetch().await.expect_status(204);
    }
    let turns = srv.metric("realm_write_turns_total").await;

    let blocker = LockHolder::hold(&srv, &realm).await;
    let requests = (0..MEMBERS)
        .map(|i| match i {
            STALLS => http.get_card(&format!("{realm}_fault/loop-in-lock")),
            _ => http.write_source(&format!("{realm}batch-{i}.txt"), "in the killed batch"),
        })
        .collect();
    let sent = line_up(&srv, requests).await;
    blocker.release().await;
    wait_until!("the members before the stalling one take their turns", LINE_UP_WAIT, {
        (srv.metric("realm_write_turns_total").await - turns >= STALLS as f64).then_some(())
    });
    assert_eq!(srv.metric("realm_write_turns_total").await - turns, STALLS as f64, "the stalling member keeps its turn");
    assert_eq!(srv.metric("realm_write_waiting").await, (MEMBERS - STALLS - 1) as f64, "the rest wait behind it");
    assert!(sent.iter().all(|h| !h.is_finished()), "a member was answered before its batch committed");

    srv.kill();
    for handle in sent {
        if let Ok(answer) = handle.await.expect("request task") {
            panic!("a killed server answered a member of its unfinished batch:\n{answer}");
        }
    }
    let again = srv.replica().await;
    let (realm, http) = (again.realm("test"), again.client());
    for i in 0..10 {
        assert_eq!(http.read(&format!("{realm}ack-{i}.txt")).await, "acknowledged", "ack-{i}.txt, acknowledged before the batch");
    }
    for i in (0..MEMBERS).filter(|i| *i != STALLS) {
        assert_eq!(http.source_status(&format!("{realm}batch-{i}.txt")).await, 404, "batch-{i}.txt of the killed batch");
    }
    assert_eq!(http.source_status(&format!("{realm}looped.txt")).await, 404, "the stalling member's write");
    http.write_source(&format!("{realm}after.txt"), "after").fetch().await.expect_status(204);
}

// ---------------------------------------------------------------------------
// A server killed under load

/// One write a client sent: the files it writes (path below the realm,
/// content) and whether it was answered 2xx, refused, or never answered.
struct Sent {
    files: Vec<(String, String)>,
    answer: Option<u16>,
}

/// Writes from client `c` until the server stops answering: two single
/// files, then an `/_atomic` add of three, and again.
async fn write_until_killed(http: Client, realm: String, c: usize, acknowledged: Arc<AtomicUsize>) -> Vec<Sent> {
    let mut sent = Vec::new();
    for i in 0.. {
        let files: Vec<(String, String)> = if i % 3 == 2 {
            (0..3).map(|k| (format!("c{c}/atomic-{i}-{k}.txt"), format!("atomic {c} {i} {k}"))).collect()
        } else {
            vec![(format!("c{c}/single-{i}.txt"), format!("single {c} {i}"))]
        };
        let request = if files.len() == 1 {
            http.write_source(&format!("{realm}{}", files[0].0), files[0].1.clone())
        } else {
            let ops: Vec<Value> = files
                .iter()
                .map(|(path, content)| json!({"op": "add", "href": path, "data": {"type": "source", "attributes": {"content": content}, "meta": {}}}))
                .collect();
            http.atomic(&realm, &json!({ "atomic:operations": ops }))
        };
        match request.try_fetch().await {
            Ok(resp) => {
                if (200..300).contains(&resp.status) {
                    acknowledged.fetch_add(1, Ordering::SeqCst);
                } else {
                    assert_eq!(resp.status, 503, "under load a write is done or refused for now:\n{resp}");
                }
                sent.push(Sent { files, answer: Some(resp.status) });
            }
            // The server is gone: this one was in flight.
            Err(_) => {
                sent.push(Sent { files, answer: None });
                return sent;
            }
        }
    }
    sent
}

on_both_backends!(a_server_killed_under_load_keeps_every_acknowledged_write_and_no_part_of_an_unanswered_one);

/// `kill -9` while 12 clients write (single files, and `/_atomic` adds of
/// three) as fast as they can: batches commit back to back, so the kill
/// lands while one is under way. A server started again on the same
/// database has every acknowledged write, nothing of a refused one, and of
/// each unanswered one all of it or nothing.
async fn a_server_killed_under_load_keeps_every_acknowledged_write_and_no_part_of_an_unanswered_one(backend: Backend) {
    const CLIENTS: usize = 12;
    const BEFORE_THE_KILL: usize = 300;
    let mut srv = backend.start().await;
    let realm = srv.realm("test");
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS).map(|c| tokio::spawn(write_until_killed(srv.client(), realm.clone(), c, acknowledged.clone()))).collect();
    wait_until!(format!("{BEFORE_THE_KILL} writes acknowledged"), Duration::from_secs(120), {
        (acknowledged.load(Ordering::SeqCst) >= BEFORE_THE_KILL).then_some(())
    });
    srv.kill();
    let mut sent = Vec::new();
    for client in clients {
        sent.extend(client.await.expect("client task"));
    }
    let unanswered = sent.iter().filter(|s| s.answer.is_none()).count();
    assert_eq!(unanswered, CLIENTS, "each client had one write in flight at the kill");

    let again = srv.replica().await;
    let (http, realm) = (again.client(), again.realm("test"));
    let (mut kept, mut lost) = (0, 0);
    for write in &sent {
        let mut found = Vec::new();
        for (path, content) in &write.files {
            let resp = http.get_source(&format!("{realm}{path}")).fetch().await;
            match resp.status {
                200 => {
                    assert_eq!(&resp.body, content, "{path}");
                    found.push(path);
                }
                404 => {}
                _ => panic!("reading {path} after the restart:\n{resp}"),
            }
        }
        let all = found.len() == write.files.len();
        match write.answer {
            Some(status) if (200..300).contains(&status) => assert!(all, "acknowledged ({status}) but after the restart only {found:?} of {:?}", write.files),
            Some(status) => assert!(found.is_empty(), "refused ({status}) yet {found:?} stored"),
            None => {
                assert!(all || found.is_empty(), "an unanswered write is all there or not at all: {found:?} of {:?}", write.files);
                if all {
                    kept += 1;
                } else {
                    lost += 1;
                }
            }
        }
    }
    eprintln!("of the {unanswered} writes in flight at the kill, {kept} had committed and {lost} had not");
    // The restarted server writes.
    http.write_source(&format!("{realm}after.txt"), "after").fetch().await.expect_status(204);
}
