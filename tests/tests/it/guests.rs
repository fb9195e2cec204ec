//! Guest lifecycle: deploy, list, activate and roll back (CLI and
//! `PUT /_guest`), rejected deploys, hot swap under load on two replicas,
//! `--watch`, the self-test CLI, and the sandbox limits against
//! deliberately misbehaving guests (built from `realm-guest` with its
//! test-only fault features).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::harness::*;

/// Component files the tests deploy.
pub(crate) struct Fixtures {
    _dir: tempfile::TempDir,
    pub(crate) builtin: PathBuf,
    /// Behaves like the built-in guest, but `_fault/…` GETs misbehave.
    pub(crate) faulty: PathBuf,
    /// Its merge is wrong, so it fails the self-test.
    pub(crate) broken: PathBuf,
}

static FIXTURES: LazyLock<Fixtures> = LazyLock::new(build_fixtures);

fn build_fixtures() -> Fixtures {
    let dir = tempfile::Builder::new().prefix("realm-guests-").tempdir().expect("temp dir");
    let builtin = dir.path().join("builtin.wasm");
    let status = std::process::Command::new(binary())
        .args(["guest", "builtin"])
        .arg(&builtin)
        .status()
        .expect("run realm-host guest builtin");
    assert!(status.success(), "realm-host guest builtin failed");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf();
    // The built-in guest's target dir: its build of std is reused.
    let target_dir = workspace.join("target").join(guest_build::GUEST_TARGET_DIR);
    let build = |features: &[&str], name: &str| {
        let bytes = guest_build::GuestBuild { workspace: &workspace, target_dir: target_dir.clone(), features }
            .component()
            .unwrap_or_else(|e| panic!("building the {name} guest: {e}"));
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write guest");
        path
    };
    let faulty = build(&["fault-injection"], "faulty.wasm");
    let broken = build(&["fault-broken-merge"], "broken.wasm");
    Fixtures { _dir: dir, builtin, faulty, broken }
}

/// The guest variants, built once per test binary (one build at a time:
/// they share a target dir and its output file).
pub(crate) async fn fixtures() -> &'static Fixtures {
    tokio::task::spawn_blocking(|| &*FIXTURES).await.expect("build guest fixtures")
}

fn short_hash(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read guest");
    hex_prefix(&Sha256::digest(&bytes))
}

fn hex_prefix(digest: &[u8]) -> String {
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

async fn running_guest(server: &Server) -> String {
    let resp = server.client().head(&server.realm("test"), CARD_JSON).fetch().await;
    resp.header("x-realm-guest").unwrap_or_else(|| panic!("no x-realm-guest on\n{resp}")).to_string()
}

/// Polls until `server` runs `wanted`; answers how long it took.
async fn wait_for_guest(server: &Server, wanted: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if running_guest(server).await == wanted {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{} still runs {} instead of {wanted} after {within:?}\n{}",
            server.base,
            running_guest(server).await,
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn person(attributes: serde_json::Value) -> serde_json::Value {
    json!({"data": {"type": "card", "attributes": attributes,
        "meta": {"adoptsFrom": {"module": "http://example.com/person", "name": "Person"}}}})
}

async fn guest_cli(args: &[&str], db: &str) -> CliOutput {
    let mut all = vec!["guest"];
    all.extend_from_slice(args);
    all.extend(["--database", db]);
    cli(&all).await
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_test_cli_passes_the_builtin_and_fails_a_broken_guest() {
    let f = fixtures().await;
    let good = cli(&["guest", "test", f.builtin.to_str().expect("utf-8 path")]).await.expect_success();
    assert!(good.stdout.contains("PASS  merge: arrays replace"), "{}", good.stdout);
    assert!(good.stdout.contains(" passed, 0 failed"), "{}", good.stdout);
    let bad = cli(&["guest", "test", f.broken.to_str().expect("utf-8 path")]).await;
    bad.expect_failure();
    assert!(bad.stdout.contains("FAIL  merge: arrays replace"), "{}", bad.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_list_activate_and_rollback_switch_the_running_guest() {
    let f = fixtures().await;
    let server = Server::start().await;
    let db = server.db_url().to_string();
    let (builtin, faulty) = (short_hash(&f.builtin), short_hash(&f.faulty));
    assert_eq!(running_guest(&server).await, builtin);

    // A guest this server never ran is compiled on its first activation
    // (over a second in the debug test build under load): not timed.
    guest_cli(&["deploy", f.faulty.to_str().expect("path")], &db).await.expect_success();
    wait_for_guest(&server, &faulty, Duration::from_secs(30)).await;

    // Switches to guests it has compiled are timed: within a second.
    guest_cli(&["deploy", f.builtin.to_str().expect("path")], &db).await.expect_success();
    let took = wait_for_guest(&server, &builtin, Duration::from_secs(3)).await;
    assert!(took <= Duration::from_secs(1), "switch took {took:?}");

    let list = guest_cli(&["list"], &db).await.expect_success();
    assert!(list.stdout.lines().any(|l| l.starts_with(&builtin) && l.trim_end().ends_with('*')), "{}", list.stdout);
    assert!(list.stdout.lines().any(|l| l.starts_with(&faulty) && !l.trim_end().ends_with('*')), "{}", list.stdout);

    guest_cli(&["rollback"], &db).await.expect_success();
    wait_for_guest(&server, &faulty, Duration::from_secs(1)).await;
    guest_cli(&["activate", &builtin], &db).await.expect_success();
    wait_for_guest(&server, &builtin, Duration::from_secs(1)).await;

    // Cards written before the swaps are still served.
    let client = server.client();
    let (id, _) = client.create(&server.realm("test"), &person(json!({"name": "Ada"}))).await;
    client.get_card(&id).fetch().await.expect_status(200);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_deploys_need_a_guest_admin_and_bad_guests_are_refused() {
    let f = fixtures().await;
    let server = Server::start().await;
    let builtin = short_hash(&f.builtin);
    let url = server.url("_guest");
    let put = |client: &Client, bytes: Vec<u8>| client.request(Method::PUT, &url, "application/json").body(bytes).fetch();
    let faulty_bytes = std::fs::read(&f.faulty).expect("read");

    put(&server.client(), faulty_bytes.clone()).await.expect_status(401);
    let realm_token = server.token(ALICE, &server.realm("private"), &["read", "write"]).await;
    put(&server.client().with_token(&realm_token), faulty_bytes.clone()).await.expect_status(403);

    let admin = cli(&["token", "--user", "ops", "--admin", "--secret", SECRET]).await.expect_success();
    let admin = server.client().with_token(admin.stdout.trim());
    let refused: [(&str, Vec<u8>, &str); 4] = [
        ("not wasm", b"hello".to_vec(), "not a WebAssembly binary"),
        ("a core module", b"\0asm\x01\0\0\0".to_vec(), "not a component"),
        ("a component of another world", b"\0asm\x0d\0\x01\0".to_vec(), "not a component of the realm-core world"),
        ("a guest failing the self-test", std::fs::read(&f.broken).expect("read"), "self-test"),
    ];
    for (what, bytes, why) in refused {
        let resp = put(&admin, bytes).await.expect_status(400);
        assert!(resp.json()["errors"][0]["message"].as_str().unwrap_or("").contains(why), "{what}: {resp}");
        assert_eq!(running_guest(&server).await, builtin, "{what} replaced the running guest");
    }

    let resp = put(&admin, faulty_bytes).await.expect_status(200);
    assert_eq!(resp.json()["active"], true, "{resp}");
    assert_eq!(running_guest(&server).await, short_hash(&f.faulty), "the deploying replica switches at once");
    let listed = admin.request(Method::GET, &url, "application/json").fetch().await.expect_status(200);
    assert_eq!(listed.json()["guests"][0]["deployedBy"], "ops", "{listed}");
}

on_both_backends!(runaway_guests_answer_500_roll_back_and_leave_the_server_healthy);

async fn runaway_guests_answer_500_roll_back_and_leave_the_server_healthy(backend: Backend) {
    let f = fixtures().await;
    let options = ServerOptions {
        serve_args: ["--guest", f.faulty.to_str().expect("path"), "--guest-timeout", "300ms", "--lock-timeout", "3s"]
            .map(String::from)
            .to_vec(),
        ..ServerOptions::default()
    };
    let server = backend.start_with(options).await;
    let client = server.client();
    let realm = server.realm("test");
    let faulty = short_hash(&f.faulty);
    let (id, _) = client.create(&realm, &person(json!({"name": "Ada"}))).await;

    for fault in ["loop", "loop-in-lock", "bomb", "trap", "trap-in-lock", "lock-twice", "lock-other-realm"] {
        let started = Instant::now();
        let resp = client.get_card(&format!("{realm}_fault/{fault}")).fetch().await.expect_status(500);
        assert!(started.elapsed() < Duration::from_secs(10), "{fault} took {:?}", started.elapsed());
        let message = resp.json()["errors"][0]["message"].as_str().unwrap_or("").to_string();
        if fault == "lock-twice" {
            assert!(message.contains("already holds the write lock"), "{fault}: {resp}");
        } else {
            assert!(message.contains(&faulty), "{fault}: the error names the guest: {resp}");
        }
        // Nothing the guest wrote before trapping is visible, the lock was
        // released, and the next request is fine.
        assert_eq!(client.source_status(&format!("{realm}half-written.txt")).await, 404, "after {fault}");
        assert_eq!(client.source_status(&format!("{realm}looped.txt")).await, 404, "after {fault}");
        assert_eq!(client.source_status(&format!("{}stolen.txt", server.realm("pubread"))).await, 404, "after {fault}");
        let patched = client.patch_card(&id, &person(json!({"fault": fault}))).fetch().await.expect_status(200);
        assert_eq!(patched.json()["data"]["attributes"]["fault"], fault);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_reloads_a_changed_guest_file_and_keeps_the_old_one_on_a_bad_change() {
    let f = fixtures().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("guest.wasm");
    std::fs::copy(&f.builtin, &file).expect("copy");
    let options = ServerOptions {
        serve_args: vec!["--guest".into(), file.display().to_string(), "--watch".into()],
        ..ServerOptions::default()
    };
    let server = Server::start_with(options).await;
    assert_eq!(running_guest(&server).await, short_hash(&f.builtin));

    let replace = |bytes: Vec<u8>| {
        let staged = dir.path().join("staged.wasm");
        std::fs::write(&staged, bytes).expect("write");
        std::fs::rename(&staged, &file).expect("rename");
    };
    replace(std::fs::read(&f.faulty).expect("read"));
    wait_for_guest(&server, &short_hash(&f.faulty), Duration::from_secs(10)).await;

    replace(std::fs::read(&f.broken).expect("read"));
    let started = Instant::now();
    while !server.log().contains("rejected the changed guest") {
        assert!(started.elapsed() < Duration::from_secs(20), "the bad change was never rejected\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(running_guest(&server).await, short_hash(&f.faulty));
}

#[tokio::test(flavor = "multi_thread")]
async fn swaps_under_load_on_two_replicas_answer_no_errors() {
    let f = fixtures().await;
    let primary = Backend::Postgres.start().await;
    let replica = primary.replica().await;
    let db = primary.db_url().to_string();
    let realm = primary.realm("test");
    let (id, _) = primary.client().create(&realm, &person(json!({"n": 0}))).await;

    // Register both guests, then go back to the built-in one.
    guest_cli(&["deploy", f.faulty.to_str().expect("path")], &db).await.expect_success();
    guest_cli(&["deploy", f.builtin.to_str().expect("path")], &db).await.expect_success();
    let (builtin, faulty) = (short_hash(&f.builtin), short_hash(&f.faulty));
    // Warm-up, untimed: a guest's first activation on a replica includes
    // compiling it. After this, both replicas hold both guests compiled.
    for hash in [&faulty, &builtin] {
        guest_cli(&["activate", hash], &db).await.expect_success();
        for server in [&primary, &replica] {
            wait_for_guest(server, hash, Duration::from_secs(30)).await;
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for (n, server) in [&primary, &replica, &primary, &replica].into_iter().enumerate() {
        let client = server.client();
        let (stop, id) = (stop.clone(), id.clone());
        let url = id.replace(&primary.base, &server.base);
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) && i < 5_000 {
                let patched = client.patch_card(&url, &person(json!({ format!("c{n}_{i}"): i }))).fetch().await;
                let got = client.get_card(&url).fetch().await;
                for resp in [patched, got] {
                    if !(200..300).contains(&resp.status) {
                        failures.push(resp.to_string());
                    }
                }
                i += 1;
            }
            (i, failures)
        }));
    }

    let mut expected = builtin.clone();
    for step in 0..6 {
        let activated = if step == 5 {
            guest_cli(&["rollback"], &db).await.expect_success();
            if expected == builtin { faulty.clone() } else { builtin.clone() }
        } else {
            let next = if expected == builtin { &faulty } else { &builtin };
            guest_cli(&["activate", next], &db).await.expect_success();
            next.clone()
        };
        for server in [&primary, &replica] {
            let took = wait_for_guest(server, &activated, Duration::from_secs(3)).await;
            assert!(took <= Duration::from_secs(1), "step {step}: {} switched after {took:?}", server.base);
        }
        expected = activated;
    }
    stop.store(true, Ordering::Relaxed);
    let mut requests = 0;
    for client in clients {
        let (done, failures) = client.await.expect("client task");
        assert!(failures.is_empty(), "non-2xx answers during swaps:\n{}", failures.join("\n---\n"));
        requests += done;
    }
    assert!(requests > 0, "the clients made no requests");
}

/// `serve --compile-cache DIR`: the first start stores the compiled guest,
/// the next loads it, and an entry that is not wasmtime's own is replaced
/// by a fresh compile (the server serves either way).
#[tokio::test(flavor = "multi_thread")]
async fn the_compile_cache_is_filled_reused_and_repaired() {
    let cache = tempfile::Builder::new().prefix("compile-cache-").tempdir().expect("temp dir");
    let args = vec!["--compile-cache".to_string(), cache.path().display().to_string()];
    let entries = || {
        let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(cache.path()).expect("read cache").map(|e| e.expect("entry").path()).collect();
        found.sort();
        found
    };
    let first = Server::start_with(ServerOptions { serve_args: args.clone(), ..ServerOptions::default() }).await;
    let stored = entries();
    assert_eq!(stored.len(), 1, "one entry for the built-in guest: {stored:?}");
    assert!(stored[0].extension().is_some_and(|e| e == "cwasm"), "{stored:?}");
    assert!(!first.log().contains("loaded from the compile cache"), "{}", first.log());

    let second = first.replica().await;
    assert!(second.log().contains("loaded from the compile cache"), "{}", second.log());
    let card = format!("{}cached", second.realm("test"));
    second.client().write_source(&format!("{card}.json"), person(json!({"firstName": "Cached"})).to_string()).fetch().await.expect_status(204);
    second.client().get_card(&card).fetch().await.expect_status(200);

    // Replaced, not rewritten in place: running servers map the file.
    let corrupt = cache.path().join("corrupt.tmp");
    std::fs::write(&corrupt, b"not a compiled component").expect("write a corrupt entry");
    std::fs::rename(&corrupt, &stored[0]).expect("corrupt the entry");
    let third = first.replica().await;
    assert!(third.log().contains("unusable compile-cache entry"), "{}", third.log());
    third.client().get_card(&card).fetch().await.expect_status(200);
    assert_eq!(entries(), stored, "the same entry, rewritten");
    let repaired = std::fs::read(&stored[0]).expect("read entry");
    assert_ne!(repaired, b"not a compiled component", "the entry was rewritten");
}
