//! The routes a Boxel host app reads before and around its writes: realm
//! headers and credential-free HEAD, `_info`, `_mtimes`, directory
//! listings, `_permissions`, `_readiness-check`, and JSON:API media type
//! parameters — each with its auth and bad-input answers, on both backends.

use std::sync::Arc;

use reqwest::header::CONTENT_TYPE;
use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::*;
use crate::pg::{self, PgCluster};

const ATOMIC_MEDIA: &str = r#"application/vnd.api+json; ext="https://jsonapi.org/ext/atomic""#;
const CAROL: &str = "carol";

/// The default realms plus `owned` (private; carol owns it, alice may read
/// and write).
fn options_with_owner() -> ServerOptions {
    let mut options = ServerOptions::default();
    options.realms.push(RealmSpec::new("owned", Public::None).grant(CAROL, &["realm-owner"]).grant(ALICE, &["read", "write"]));
    options
}

fn api(http: &Client, method: Method, url: &str) -> reqwest::RequestBuilder {
    http.request(method, url, JSON_API)
}

async fn get_api(http: &Client, url: &str) -> Resp {
    api(http, Method::GET, url).fetch().await
}

// This module's tests, each on SQLite and Postgres (every module has such a list).
on_both_backends!(
    every_realm_response_names_its_realm_and_head_needs_no_credentials,
    info_follows_the_realm_config_file_and_permissions_on_every_replica,
    mtimes_list_every_file_of_the_realm,
    directories_list_one_level_sorted,
    permissions_are_read_and_patched_by_the_realm_owner_only,
    permission_changes_hold_on_every_replica_before_the_answer,
    write_permission_changes_hold_on_every_replica_for_every_write_route,
    readiness_check_is_public,
    json_api_media_type_parameters_are_honoured,
    modules_resolve_without_their_extension_and_files_carry_their_type,
    a_file_that_is_not_a_card_asked_for_as_one_is_a_file_meta_document,
    card_gets_carry_realm_info_and_their_linked_cards_in_included,
    module_specifiers_are_kept_as_boxel_writes_them,
    binary_files_round_trip_byte_exact,
);

async fn every_realm_response_names_its_realm_and_head_needs_no_credentials(backend: Backend) {
    let srv = backend.start().await;
    let (private, pubread) = (srv.realm("private"), srv.realm("pubread"));
    let alice = srv.client_as(ALICE, &private, &["read", "write"]).await;
    alice.seed(&format!("{private}notes.txt"), "secret").await;
    let bob = srv.client_as(BOB, &pubread, &["read", "write"]).await;
    bob.seed(&format!("{pubread}hello.txt"), "hi").await;
    let anonymous = srv.client();

    // 401 carries the realm URL (a client learns where to get a token).
    let refused = anonymous.get_source(&format!("{private}notes.txt")).fetch().await;
    refused.card_error(401);
    assert_eq!(refused.header("x-boxel-realm-url"), Some(private.as_str()), "{refused}");
    assert_eq!(refused.header("x-boxel-realm-public-readable"), None, "{refused}");
    // Public-readable realms say so on every answer, errors included.
    for url in [format!("{pubread}hello.txt"), format!("{pubread}missing.txt")] {
        let resp = anonymous.get_source(&url).fetch().await;
        assert_eq!(resp.header("x-boxel-realm-url"), Some(pubread.as_str()), "{resp}");
        assert_eq!(resp.header("x-boxel-realm-public-readable"), Some("true"), "{resp}");
    }

    // HEAD without credentials: 200 and the realm headers, never content,
    // and whether a path exists only for those who may read the realm.
    for path in ["notes.txt", "nothing-here.txt", ""] {
        let resp = anonymous.head(&format!("{private}{path}"), "*/*").fetch().await.expect_status(200);
        assert_eq!(resp.header("x-boxel-realm-url"), Some(private.as_str()), "{resp}");
        assert_eq!(resp.header("x-boxel-realm-public-readable"), None, "{resp}");
        assert!(resp.body.is_empty(), "{resp}");
    }
    alice.head(&format!("{private}notes.txt"), CARD_JSON).fetch().await.expect_status(200);
    alice.head(&format!("{private}nothing-here.txt"), CARD_JSON).fetch().await.expect_status(404);
    let resp = anonymous.head(&format!("{pubread}hello.txt"), "*/*").fetch().await.expect_status(200);
    assert_eq!(resp.header("x-boxel-realm-public-readable"), Some("true"), "{resp}");
    anonymous.head(&format!("{pubread}missing.txt"), "*/*").fetch().await.expect_status(404);
    // A token for another realm is no credential here: still only 200.
    let elsewhere = srv.client_as(BOB, &pubread, &["read"]).await;
    elsewhere.head(&format!("{private}nothing-here.txt"), "*/*").fetch().await.expect_status(200);
}

async fn info_follows_the_realm_config_file_and_permissions_on_every_replica(backend: Backend) {
    let srv = backend.start_with(options_with_owner()).await;
    let replica = srv.replica().await;
    let (private, test, owned) = (srv.realm("private"), srv.realm("test"), srv.realm("owned"));
    let alice = srv.client_as(ALICE, &private, &["read", "write"]).await;

    let resp = get_api(&alice, &format!("{private}_info")).await.expect_status(200);
    assert_eq!(resp.media_type(), JSON_API);
    let expected = json!({"data": {"id": private, "type": "realm-info", "attributes": {
        "name": "Unnamed Workspace", "backgroundURL": null, "iconURL": null, "showAsCatalog": null,
        "visibility": "private", "realmUserId": null, "publishable": null, "lastPublishedAt": null,
    }}});
    assert_eq!(resp.json(), expected, "defaults");
    let public = get_api(&srv.client(), &format!("{test}_info")).await.expect_status(200).json();
    assert_eq!(public["data"]["attributes"]["visibility"], json!("public"));
    let carol = srv.client_as(CAROL, &owned, &["realm-owner"]).await;
    let shared = get_api(&carol, &format!("{owned}_info")).await.expect_status(200).json();
    assert_eq!(shared["data"]["attributes"]["visibility"], json!("shared"), "carol and alice");
    assert_eq!(shared["data"]["attributes"]["realmUserId"], json!(CAROL), "the realm owner");

    // `.realm.json` wins; the change shows at once on the other replica.
    alice.seed(&format!("{private}realm.json"), r#"{"data":{"type":"card","attributes":{"cardInfo":{"name":"From the card"},"iconURL":"https://i/card.png"}}}"#).await;
    let on_replica = get_api(&alice, &replica.url("private/_info")).await.expect_status(200).json();
    assert_eq!(on_replica["data"]["attributes"]["name"], json!("From the card"));
    assert_eq!(on_replica["data"]["attributes"]["iconURL"], json!("https://i/card.png"));
    let config = r#"{"name":"Mango's Workspace","backgroundURL":"https://i/bg.jpg","iconURL":7,"showAsCatalog":true,"publishable":false}"#;
    alice.seed(&format!("{private}.realm.json"), config).await;
    let on_replica = get_api(&alice, &replica.url("private/_info")).await.expect_status(200).json();
    let attributes = &on_replica["data"]["attributes"];
    assert_eq!(attributes["name"], json!("Mango's Workspace"));
    assert_eq!(attributes["backgroundURL"], json!("https://i/bg.jpg"));
    assert_eq!(attributes["iconURL"], json!(null), "not a string");
    assert_eq!(attributes["showAsCatalog"], json!(true));
    assert_eq!(attributes["publishable"], json!(false));
    // Not JSON: the defaults, not an error.
    alice.seed(&format!("{private}.realm.json"), "{ broken").await;
    let broken = get_api(&alice, &format!("{private}_info")).await.expect_status(200).json();
    assert_eq!(broken["data"]["attributes"]["name"], json!("Unnamed Workspace"));

    // QUERY, and POST overridden to QUERY, answer the same (a read).
    let queried = api(&alice, Method::from_bytes(b"QUERY").unwrap(), &format!("{private}_info")).fetch().await.expect_status(200);
    assert_eq!(queried.json(), broken);
    let overridden = api(&alice, Method::POST, &format!("{private}_info")).header("x-http-method-override", "QUERY").fetch().await;
    assert_eq!(overridden.expect_status(200).json(), broken);
    let overridden = api(&srv.client(), Method::POST, &format!("{test}_info")).header("x-http-method-override", "QUERY").fetch().await;
    assert_eq!(overridden.expect_status(200).json()["data"]["id"], json!(test), "a read: public read is enough");

    assert_private_read_refused(&srv, &format!("{private}_info")).await;
}

/// A read in the `private` realm: 401 without a token, 403 with a token
/// that grants nothing there.
async fn assert_private_read_refused(srv: &Server, url: &str) {
    get_api(&srv.client(), url).await.card_error(401);
    let stranger = srv.client_as(BOB, &srv.realm("private"), &["read"]).await;
    get_api(&stranger, url).await.card_error(403);
}

async fn mtimes_list_every_file_of_the_realm(backend: Backend) {
    let srv = backend.start().await;
    let (test, private) = (srv.realm("test"), srv.realm("private"));
    let http = srv.client();
    http.seed(&format!("{test}a.txt"), "a").await;
    http.seed(&format!("{test}deep/dir/b.gts"), "export const b = 1;").await;
    let (card, _) = http.create(&format!("{test}people/"), &person_doc(&test, json!({"firstName": "Mango"}))).await;
    // Another realm's files are not listed.
    let alice = srv.client_as(ALICE, &private, &["read", "write"]).await;
    alice.seed(&format!("{private}other.txt"), "x").await;

    let resp = get_api(&http, &format!("{test}_mtimes")).await.expect_status(200);
    assert_eq!(resp.media_type(), JSON_API);
    let doc = resp.json();
    assert_eq!(doc["data"]["id"], json!(test));
    assert_eq!(doc["data"]["type"], json!("mtimes"));
    let mtimes = doc["data"]["attributes"]["mtimes"].as_object().unwrap_or_else(|| panic!("no mtimes in {doc}"));
    let mut urls: Vec<&String> = mtimes.keys().collect();
    urls.sort();
    let mut expected = [format!("{test}a.txt"), format!("{test}deep/dir/b.gts"), format!("{card}.json")];
    expected.sort();
    assert_eq!(urls, expected.iter().collect::<Vec<_>>());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    for (url, mtime) in mtimes {
        let mtime = mtime.as_i64().unwrap_or_else(|| panic!("{url}: {mtime} is not unix seconds"));
        assert!((now - 600..=now + 5).contains(&mtime), "{url}: {mtime} is not a recent unix time");
    }
    assert_private_read_refused(&srv, &format!("{private}_mtimes")).await;
}

async fn directories_list_one_level_sorted(backend: Backend) {
    let srv = backend.start().await;
    let (test, private) = (srv.realm("test"), srv.realm("private"));
    let http = srv.client();
    let empty = get_api(&http, &test).await.expect_status(200).json();
    assert_eq!(empty, json!({"data": {"id": test, "type": "directory", "relationships": {}}}), "an empty realm");
    for path in ["b.txt", "a.gts", "docs/x.md", "docs/deep/y.md", "docs/deep/z.md", "docs-other.txt"] {
        http.seed(&format!("{test}{path}"), path).await;
    }

    let resp = get_api(&http, &test).await.expect_status(200);
    assert_eq!(resp.media_type(), JSON_API);
    let doc = resp.json();
    assert_eq!(doc["data"]["id"], json!(test));
    assert_eq!(doc["data"]["type"], json!("directory"));
    let entries = doc["data"]["relationships"].as_object().unwrap_or_else(|| panic!("no relationships in {doc}"));
    assert_eq!(entries.keys().collect::<Vec<_>>(), ["a.gts", "b.txt", "docs-other.txt", "docs/"], "one level, sorted");
    assert_eq!(entries["docs/"], json!({"links": {"related": format!("{test}docs/")}, "meta": {"kind": "directory"}}));
    let file = &entries["b.txt"];
    assert_eq!(file["links"]["related"], json!(format!("{test}b.txt")));
    assert_eq!(file["meta"]["kind"], json!("file"));
    let got = http.get_source(&format!("{test}b.txt")).fetch().await.expect_status(200);
    let last_modified = httpdate::parse_http_date(got.must_header("last-modified")).unwrap();
    let seconds = last_modified.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert_eq!(file["meta"]["lastModified"], json!(seconds), "the file's own mtime");
    assert!(file["meta"]["resourceCreatedAt"].is_i64(), "{file}");

    let docs = get_api(&http, &format!("{test}docs/")).await.expect_status(200).json();
    let entries = docs["data"]["relationships"].as_object().unwrap();
    assert_eq!(entries.keys().collect::<Vec<_>>(), ["deep/", "x.md"]);
    let deep = get_api(&http, &format!("{test}docs/deep/")).await.expect_status(200).json();
    assert_eq!(deep["data"]["relationships"].as_object().unwrap().keys().collect::<Vec<_>>(), ["y.md", "z.md"]);
    get_api(&http, &format!("{test}nothing/")).await.card_error(404);
    get_api(&http, &format!("{test}doc/")).await.card_error(404);

    assert_private_read_refused(&srv, &private).await;
}

fn permissions_patch(permissions: Value) -> Value {
    json!({"data": {"id": "ignored", "type": "permissions", "attributes": {"permissions": permissions}}})
}

async fn patch_permissions(http: &Client, realm: &str, body: &str) -> Resp {
    api(http, Method::PATCH, &format!("{realm}_permissions")).header(CONTENT_TYPE, JSON_API).body(body.to_string()).fetch().await
}

async fn permissions_are_read_and_patched_by_the_realm_owner_only(backend: Backend) {
    let srv = backend.start_with(options_with_owner()).await;
    let (owned, test) = (srv.realm("owned"), srv.realm("test"));
    let carol = srv.client_as(CAROL, &owned, &["realm-owner"]).await;
    let url = format!("{owned}_permissions");

    let resp = get_api(&carol, &url).await.expect_status(200);
    assert_eq!(resp.media_type(), JSON_API);
    let initial = json!({"data": {"id": owned, "type": "permissions", "attributes": {"permissions": {
        "alice": ["read", "write"], "carol": ["realm-owner"],
    }}}});
    assert_eq!(resp.json(), initial);

    // Auth: 401 without a token (even on a public-write realm), 403 for a
    // writer, 403 for a token that claims realm-owner without the grant.
    get_api(&srv.client(), &url).await.card_error(401);
    get_api(&srv.client(), &format!("{test}_permissions")).await.card_error(401);
    let alice = srv.client_as(ALICE, &owned, &["read", "write"]).await;
    get_api(&alice, &url).await.card_error(403);
    let pretender = srv.client_as(ALICE, &owned, &["read", "write", "realm-owner"]).await;
    get_api(&pretender, &url).await.card_error(403);
    let body = permissions_patch(json!({"bob": ["read"]})).to_string();
    patch_permissions(&alice, &owned, &body).await.card_error(403);
    patch_permissions(&srv.client(), &owned, &body).await.card_error(401);

    // Bad input: 400 with Boxel's messages, and nothing written.
    let refusals = [
        ("{ not json".to_string(), "The request body was not json"),
        (json!({"data": {"type": "permissions"}}).to_string(), "The request body was missing permissions"),
        (permissions_patch(json!(["read"])).to_string(), "permissions must be an object"),
        (permissions_patch(json!({"bob": "read"})).to_string(), "permissions must be an array or null"),
        (permissions_patch(json!({"bob": ["read"], "dave": ["admin"]})).to_string(), "'admin' is not a valid permission"),
        (permissions_patch(json!({"bob": ["read"], "carol": ["read"]})).to_string(), "cannot modify permissions of the realm owner carol"),
        (permissions_patch(json!({"bob": ["read"], "carol": null})).to_string(), "cannot modify permissions of the realm owner carol"),
        (permissions_patch(json!({"bob": ["read"], "dave": ["read", "realm-owner"]})).to_string(), "cannot create new realm owner dave"),
    ];
    for (body, message) in refusals {
        let error = patch_permissions(&carol, &owned, &body).await.card_error(400);
        let text = error["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{body}: {text:?} should say {message:?}");
    }
    assert_eq!(get_api(&carol, &url).await.expect_status(200).json(), initial, "refused patches write nothing");

    // A patch merges per user and answers the whole document.
    let body = permissions_patch(json!({"bob": ["read"], "alice": [], "*": ["read"]})).to_string();
    let resp = patch_permissions(&carol, &owned, &body).await.expect_status(200);
    let expected = json!({"data": {"id": owned, "type": "permissions", "attributes": {"permissions": {
        "*": ["read"], "bob": ["read"], "carol": ["realm-owner"],
    }}}});
    assert_eq!(resp.json(), expected);
    assert_eq!(get_api(&carol, &url).await.expect_status(200).json(), expected);
    // The realm is now public-readable, and alice lost her access.
    let resp = srv.client().head(&format!("{owned}x"), "*/*").fetch().await;
    assert_eq!(resp.header("x-boxel-realm-public-readable"), Some("true"), "{resp}");
    alice.write_source(&format!("{owned}x.txt"), "x").fetch().await.card_error(403);
    let info = get_api(&srv.client(), &format!("{owned}_info")).await.expect_status(200).json();
    assert_eq!(info["data"]["attributes"]["visibility"], json!("public"));
    // `null` removes too; an empty patch changes nothing.
    let resp = patch_permissions(&carol, &owned, &permissions_patch(json!({"*": null})).to_string()).await.expect_status(200);
    assert_eq!(resp.json()["data"]["attributes"]["permissions"], json!({"bob": ["read"], "carol": ["realm-owner"]}));
    let resp = patch_permissions(&carol, &owned, &permissions_patch(json!({})).to_string()).await.expect_status(200);
    assert_eq!(resp.json()["data"]["attributes"]["permissions"], json!({"bob": ["read"], "carol": ["realm-owner"]}));
    srv.client().get_source(&format!("{owned}x")).fetch().await.card_error(401);
}

/// The `owned` realm on a server and a replica of it, with its owner
/// (carol) and two writers (alice, bob) as clients of the server.
struct OwnedOnTwoReplicas {
    srv: Server,
    replica: Server,
    owned: String,
    carol: Client,
    alice: Client,
    bob: Client,
}

impl OwnedOnTwoReplicas {
    async fn start(backend: Backend) -> OwnedOnTwoReplicas {
        let srv = backend.start_with(options_with_owner()).await;
        let replica = srv.replica().await;
        let owned = srv.realm("owned");
        let carol = srv.client_as(CAROL, &owned, &["realm-owner"]).await;
        let alice = srv.client_as(ALICE, &owned, &["read", "write"]).await;
        let bob = srv.client_as(BOB, &owned, &["read", "write"]).await;
        OwnedOnTwoReplicas { srv, replica, owned, carol, alice, bob }
    }
}

async fn permission_changes_hold_on_every_replica_before_the_answer(backend: Backend) {
    let OwnedOnTwoReplicas { srv: _primary, replica, owned, carol, alice, bob } = OwnedOnTwoReplicas::start(backend).await;
    alice.seed(&format!("{owned}doc.txt"), "text").await;
    let on_replica = replica.url("owned/doc.txt");
    // Warm whatever the replica may cache about these users.
    alice.get_source(&on_replica).fetch().await.expect_status(200);
    bob.get_source(&on_replica).fetch().await.card_error(403);
    for round in 0..5 {
        let grant = permissions_patch(json!({"bob": ["read", "write"], "alice": []})).to_string();
        patch_permissions(&carol, &owned, &grant).await.expect_status(200);
        bob.get_source(&on_replica).fetch().await.expect_status(200);
        alice.get_source(&on_replica).fetch().await.card_error(403);
        let back = permissions_patch(json!({"alice": ["read", "write"], "bob": null})).to_string();
        let resp = patch_permissions(&carol, &replica.url("owned/"), &back).await;
        assert_eq!(resp.status, 200, "round {round}: {resp}");
        alice.get_source(&on_replica).fetch().await.expect_status(200);
        bob.get_source(&on_replica).fetch().await.card_error(403);
    }
}

/// Writes go by the permissions a replica last read, then check them again
/// under the realm's write lock, which a permission change takes too: a
/// change holds for writes on every replica as soon as it is answered,
/// whatever the replica remembered (on SQLite a replica hears of a change
/// only by its timer).
async fn write_permission_changes_hold_on_every_replica_for_every_write_route(backend: Backend) {
    let OwnedOnTwoReplicas { srv: _primary, replica, owned, carol, alice, bob } = OwnedOnTwoReplicas::start(backend).await;
    let (card, _) = alice.create(&owned, &person_doc(&owned, json!({"firstName": "Shared"}))).await;
    alice.seed(&format!("{owned}doc.txt"), "start").await;
    let replicas = [owned.clone(), replica.url("owned/")];
    let new_card = json!({"type": "card", "attributes": {}, "meta": {"adoptsFrom": {"module": "./person", "name": "Person"}}});
    let refused_everywhere = |who: Client, realm: String, round: usize| {
        let (card, new_card) = (card.replace(&owned, &realm), new_card.clone());
        async move {
            let doc = format!("{realm}doc.txt");
            who.write_source(&doc, "refused").fetch().await.card_error(403);
            who.delete_source(&doc).fetch().await.card_error(403);
            who.patch_card(&card, &person_doc(&realm, json!({"refused": round}))).fetch().await.card_error(403);
            who.create_card(&realm, &person_doc(&realm, json!({"refused": round}))).fetch().await.card_error(403);
            let body = json!({"atomic:operations": [{"op": "add", "href": format!("refused-{round}.json"), "data": new_card}]});
            who.atomic(&realm, &body).fetch().await.card_error(403);
            who.post_bytes(&format!("{realm}refused.bin"), "application/octet-stream", vec![1, 2, 3]).fetch().await.card_error(403);
        }
    };
    for round in 0..3 {
        // Both replicas let alice write, and refuse bob (and remember it).
        for realm in &replicas {
            alice.write_source(&format!("{realm}doc.txt"), format!("alice {round}")).fetch().await.expect_status(204);
            bob.write_source(&format!("{realm}doc.txt"), "refused").fetch().await.card_error(403);
        }
        let swap = permissions_patch(json!({"bob": ["read", "write"], "alice": ["read"]})).to_string();
        patch_permissions(&carol, &replicas[round % 2], &swap).await.expect_status(200);
        for realm in &replicas {
            refused_everywhere(alice.clone(), realm.clone(), round).await;
            bob.write_source(&format!("{realm}doc.txt"), format!("bob {round}")).fetch().await.expect_status(204);
            assert_eq!(alice.read(&format!("{realm}doc.txt")).await, format!("bob {round}"), "only bob's write landed");
        }
        let back = permissions_patch(json!({"alice": ["read", "write"], "bob": ["read"]})).to_string();
        patch_permissions(&carol, &replicas[(round + 1) % 2], &back).await.expect_status(200);
        for realm in &replicas {
            refused_everywhere(bob.clone(), realm.clone(), round).await;
        }
    }
    for gone in ["refused.bin", "refused-0.json", "refused-1.json", "refused-2.json"] {
        assert_eq!(alice.source_status(&format!("{owned}{gone}")).await, 404, "{gone}");
    }
    assert_eq!(alice.get_card(&card).fetch().await.expect_status(200).json()["data"]["attributes"], json!({"firstName": "Shared"}));
}

async fn readiness_check_is_public(backend: Backend) {
    let srv = backend.start().await;
    for url in [srv.url("_readiness-check"), format!("{}_readiness-check", srv.realm("private"))] {
        let resp = srv.client().request(Method::GET, &url, "*/*").fetch().await.expect_status(200);
        assert!(resp.body.is_empty(), "{resp}");
    }
}

/// On a cluster of its own: stopped, the check says 503 (with what is not
/// ready); started again, 200 without restarting the server.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_readiness_check_is_503_while_the_database_is_down() {
    let cluster = Arc::new(tokio::task::spawn_blocking(PgCluster::start).await.expect("start postgres"));
    let db = pg::fresh_database_on(Some(&cluster)).await;
    let srv = Server::start_on(db, ServerOptions::default()).await;
    let check = || srv.client().request(Method::GET, &srv.url("_readiness-check"), "*/*").fetch();
    check().await.expect_status(200);
    let stopping = cluster.clone();
    tokio::task::spawn_blocking(move || stopping.stop("fast")).await.expect("pg_ctl stop");
    let resp = check().await.expect_status(503);
    assert_eq!(resp.header("x-boxel-not-ready"), Some("storage"), "{resp}");
    assert!(resp.header("retry-after").is_some(), "{resp}");
    let starting = cluster.clone();
    tokio::task::spawn_blocking(move || starting.start_again()).await.expect("pg_ctl start");
    // The pool reconnects by itself; a few checks may still find old connections gone.
    let mut answers = Vec::new();
    for _ in 0..50 {
        let resp = check().await;
        answers.push(resp.status);
        if resp.status == 200 {
            return;
        }
        assert_eq!(resp.status, 503, "{resp}");
    }
    panic!("never ready again after the database came back: {answers:?}");
}

async fn json_api_media_type_parameters_are_honoured(backend: Backend) {
    let srv = backend.start().await;
    let test = srv.realm("test");
    let http = srv.client();
    let op = |href: &str| json!({"atomic:operations": [{"op": "add", "href": href, "data": person_doc(&test, json!({"firstName": "Ext"}))["data"]}]});

    // The atomic extension's own media type, on Accept and Content-Type.
    let resp = http
        .request(Method::POST, &format!("{test}_atomic"), ATOMIC_MEDIA)
        .header(CONTENT_TYPE, ATOMIC_MEDIA)
        .body(op("ext/one.json").to_string())
        .fetch()
        .await
        .expect_status(201);
    assert_eq!(resp.media_type(), JSON_API);
    let with_charset = "application/vnd.api+json; charset=utf-8";
    http.request(Method::POST, &format!("{test}_atomic"), with_charset)
        .header(CONTENT_TYPE, with_charset)
        .body(op("ext/two.json").to_string())
        .fetch()
        .await
        .expect_status(201);
    // Card routes take `charset` too.
    http.request(Method::GET, &format!("{test}ext/one"), "application/vnd.card+json; charset=utf-8").fetch().await.expect_status(200);

    // An extension we do not serve: 415 on Content-Type, 406 on Accept; nothing written.
    let unknown = r#"application/vnd.api+json; ext="https://example.com/ext/other""#;
    let resp = http.request(Method::POST, &format!("{test}_atomic"), JSON_API).header(CONTENT_TYPE, unknown).body(op("ext/three.json").to_string()).fetch().await;
    resp.card_error(415);
    let resp = http.request(Method::POST, &format!("{test}_atomic"), unknown).header(CONTENT_TYPE, JSON_API).body(op("ext/three.json").to_string()).fetch().await;
    resp.card_error(406);
    http.get_card(&format!("{test}ext/three")).fetch().await.card_error(404);
    let resp = http.request(Method::GET, &format!("{test}ext/one"), "application/vnd.card+json; charset=latin1").fetch().await;
    resp.card_error(406);
}

async fn modules_resolve_without_their_extension_and_files_carry_their_type(backend: Backend) {
    let srv = backend.start().await;
    let (test, private) = (srv.realm("test"), srv.realm("private"));
    let http = srv.client();
    for (path, text) in [
        ("person.gts", "export class Person {}"),
        ("util.ts", "export const u = 1;"),
        ("both.gts", "gts"),
        ("both.js", "js"),
        ("hello.test.gts", "dotted"),
        ("notes.txt", "plain"),
        ("readme.md", "# hi"),
    ] {
        http.seed(&format!("{test}{path}"), text).await;
    }
    let (card, _) = http.create(&test, &person_doc(&test, json!({"firstName": "Mango"}))).await;
    let realm_path = url::Url::parse(&test).unwrap().path().to_string();

    // No extension: 302 to the first of .js .gjs .ts .gts .json that
    // exists; `Location` is the path, as Boxel sends it. HEAD says the same.
    let card_path = &card[test.len()..];
    for (asked, found) in [("person", "person.gts"), ("both", "both.js"), ("hello.test", "hello.test.gts"), (card_path, &*format!("{card_path}.json"))] {
        let resp = http.get_source(&format!("{test}{asked}")).fetch().await.expect_status(302);
        assert_eq!(resp.header("location"), Some(&*format!("{realm_path}{found}")), "{resp}");
        let resp = http.head(&format!("{test}{asked}"), CARD_SOURCE).fetch().await.expect_status(302);
        assert_eq!(resp.header("location"), Some(&*format!("{realm_path}{found}")), "{resp}");
        let resp = http.request(Method::GET, &format!("{test}{asked}"), "*/*").fetch().await.expect_status(302);
        assert_eq!(resp.header("location"), Some(&*format!("{realm_path}{found}")), "{resp}");
    }
    // A path with an executable extension is never redirected.
    http.get_source(&format!("{test}util.gts")).fetch().await.card_error(404);
    http.get_source(&format!("{test}nothing")).fetch().await.card_error(404);

    for (path, content_type) in [
        ("person.gts", "text/typescript+glimmer; charset=utf-8"),
        ("util.ts", "text/typescript; charset=utf-8"),
        ("notes.txt", "text/plain; charset=utf-8"),
        ("readme.md", "text/markdown; charset=utf-8"),
        (&*format!("{card_path}.json"), "application/json; charset=utf-8"),
    ] {
        let resp = http.get_source(&format!("{test}{path}")).fetch().await.expect_status(200);
        assert_eq!(resp.header("content-type"), Some(content_type), "{resp}");
    }
    // Resolution reads the realm: a private one answers 401 first.
    let alice = srv.client_as(ALICE, &private, &["read", "write"]).await;
    alice.seed(&format!("{private}secret.gts"), "x").await;
    srv.client().get_source(&format!("{private}secret")).fetch().await.card_error(401);
    let stranger = srv.client_as(BOB, &private, &["read"]).await;
    stranger.get_source(&format!("{private}secret")).fetch().await.card_error(403);
    alice.get_source(&format!("{private}secret")).fetch().await.expect_status(302);
}

async fn a_file_that_is_not_a_card_asked_for_as_one_is_a_file_meta_document(backend: Backend) {
    let srv = backend.start().await;
    let (test, private) = (srv.realm("test"), srv.realm("private"));
    let http = srv.client();
    http.seed(&format!("{test}docs/notes.txt"), "hello notes").await;
    let url = format!("{test}docs/notes.txt");

    let resp = http.get_card(&url).fetch().await.expect_status(200);
    assert_eq!(resp.media_type(), CARD_JSON);
    let etag = resp.etag();
    let source = http.get_source(&url).fetch().await.expect_status(200);
    assert_eq!(source.etag(), etag, "the file's own etag");
    let doc = resp.json();
    let data = &doc["data"];
    assert_eq!(data["type"], json!("file-meta"));
    assert_eq!(data["id"], json!(url));
    assert_eq!(data["links"]["self"], json!(url));
    let attributes = &data["attributes"];
    assert_eq!(attributes["name"], json!("notes.txt"));
    assert_eq!(attributes["url"], json!(url));
    assert_eq!(attributes["sourceUrl"], json!(url));
    assert_eq!(attributes["contentType"], json!("text/plain"));
    assert_eq!(attributes["contentSize"], json!(11));
    assert!(attributes["contentHash"].is_string() && attributes["lastModified"].is_i64() && attributes["createdAt"].is_i64(), "{doc}");
    assert_eq!(data["meta"]["adoptsFrom"], json!({"module": "https://cardstack.com/base/text-file-def", "name": "TextFileDef"}));
    assert_eq!(data["meta"]["realmURL"], json!(test));
    assert_eq!(data["meta"]["realmInfo"]["name"], json!("Unnamed Workspace"));

    http.get_card(&format!("{test}docs/absent.txt")).fetch().await.card_error(404);
    let alice = srv.client_as(ALICE, &private, &["read", "write"]).await;
    alice.seed(&format!("{private}logo.svg"), "<svg/>").await;
    srv.client().get_card(&format!("{private}logo.svg")).fetch().await.card_error(401);
    let stranger = srv.client_as(BOB, &private, &["read"]).await;
    stranger.get_card(&format!("{private}logo.svg")).fetch().await.card_error(403);
    let meta = alice.get_card(&format!("{private}logo.svg")).fetch().await.expect_status(200).json();
    assert_eq!(meta["data"]["attributes"]["contentType"], json!("image/svg+xml"));
    assert_eq!(meta["data"]["meta"]["adoptsFrom"]["name"], json!("SvgDef"));
}

/// A Person card document with these relationships.
fn linked_person(realm: &str, name: &str, relationships: Value) -> Value {
    let mut doc = person_doc(realm, json!({"firstName": name}));
    doc["data"]["relationships"] = relationships;
    doc
}

async fn card_gets_carry_realm_info_and_their_linked_cards_in_included(backend: Backend) {
    let srv = backend.start().await;
    let test = srv.realm("test");
    let http = srv.client();
    http.seed(&format!("{test}.realm.json"), r#"{"name":"Linked Realm"}"#).await;
    // a → b (linksTo), a → [c, d] (linksToMany), c → e, d → a (a cycle),
    // a → a missing card and a card of another realm (both left out).
    let put = |name: &'static str, relationships: Value| {
        let (http, test) = (http.clone(), test.clone());
        let doc = linked_person(&test, name, relationships);
        async move { http.seed(&format!("{test}Person/{name}.json"), &doc.to_string()).await }
    };
    put("e", json!({})).await;
    put("b", json!({})).await;
    put("c", json!({"friend": {"links": {"self": "./e"}}})).await;
    put("d", json!({"friend": {"links": {"self": "./a"}}})).await;
    put("a", json!({
        "best": {"links": {"self": "./b"}},
        "pets.0": {"links": {"self": "./c"}},
        "pets.1": {"links": {"self": "./d"}},
        "gone": {"links": {"self": "./missing"}},
        "far": {"links": {"self": format!("{}Person/x", srv.realm("pubread"))}},
        "none": {"links": {"self": null}},
    }))
    .await;

    let resp = http.get_card(&format!("{test}Person/a")).fetch().await.expect_status(200);
    let doc = resp.json();
    assert_eq!(doc["data"]["meta"]["realmInfo"]["name"], json!("Linked Realm"), "{doc}");
    assert_eq!(doc["data"]["meta"]["realmURL"], json!(test));
    let included = doc["included"].as_array().unwrap_or_else(|| panic!("no included in {doc}"));
    let ids: Vec<&str> = included.iter().map(|r| r["id"].as_str().unwrap_or_default()).collect();
    let expected: Vec<String> = ["b", "c", "d", "e"].iter().map(|n| format!("{test}Person/{n}")).collect();
    assert_eq!(ids, expected, "each linked card once, breadth first, never the card itself");
    for resource in included {
        assert_eq!(resource["type"], json!("card"));
        assert!(resource["attributes"]["firstName"].is_string(), "{resource}");
        assert_eq!(resource["meta"]["realmInfo"]["name"], json!("Linked Realm"));
    }
    // The ETag is the file's, so a card with linked cards is never a 304.
    let etag = resp.etag();
    http.get_card(&format!("{test}Person/a")).header(reqwest::header::IF_NONE_MATCH, &etag).fetch().await.expect_status(200);

    // Without links, no `included` key at all (and 304 as before).
    let lone = http.get_card(&format!("{test}Person/e")).fetch().await.expect_status(200);
    assert!(lone.json().get("included").is_none(), "{lone}");
    assert_eq!(lone.json()["data"]["meta"]["realmInfo"]["name"], json!("Linked Realm"));
    http.get_card(&format!("{test}Person/e")).header(reqwest::header::IF_NONE_MATCH, lone.etag()).fetch().await.expect_status(304);
}

async fn module_specifiers_are_kept_as_boxel_writes_them(backend: Backend) {
    let srv = backend.start().await;
    let test = srv.realm("test");
    let http = srv.client();
    for (module, stored) in [
        ("@cardstack/base/card-api", "@cardstack/base/card-api"),
        ("https://cardstack.com/base/card-api", "https://cardstack.com/base/card-api"),
        ("./person.gts", "../person"),
        (&*format!("{test}person.gts"), "../person"),
    ] {
        let doc = json!({"data": {"type": "card", "attributes": {}, "meta": {"adoptsFrom": {"module": module, "name": "CardDef"}}}});
        let (id, created) = http.create(&test, &doc).await;
        assert_eq!(created.json()["data"]["meta"]["adoptsFrom"]["module"], json!(stored), "{module}: {created}");
        let file: Value = serde_json::from_str(&http.read(&format!("{id}.json")).await).unwrap();
        assert_eq!(file["data"]["meta"]["adoptsFrom"]["module"], json!(stored), "{module}: the stored file");
    }
}

/// PNG signature, a NUL, bytes that are not UTF-8, and some text.
fn png_bytes() -> Vec<u8> {
    let mut bytes = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0xff, 0xfe, 0x80];
    bytes.extend((0..=255u8).cycle().take(3000));
    bytes.extend_from_slice("tail ✓".as_bytes());
    bytes
}


async fn binary_files_round_trip_byte_exact(backend: Backend) {
    use sha2::{Digest, Sha256};
    let srv = backend.start_with(ServerOptions { serve_args: vec!["--file-limit".into(), "10000".into()], ..ServerOptions::default() }).await;
    let (test, private) = (srv.realm("test"), srv.realm("private"));
    let http = srv.client();
    let url = format!("{test}images/logo.png");
    let bytes = png_bytes();

    let written = http.post_bytes(&url, "application/octet-stream", bytes.clone()).fetch().await.expect_status(204);
    let etag = format!("\"{}\"", hex_of(&Sha256::digest(&bytes)));
    assert_eq!(written.etag(), etag, "the ETag is the SHA-256 of the bytes");
    for accept in ["*/*", "image/png"] {
        let response = http.http_get_bytes(&url, accept).await;
        assert_eq!(response.0, 200);
        assert_eq!(response.1, bytes, "byte-exact with Accept {accept}");
        assert_eq!(response.2.get("content-type").and_then(|v| v.to_str().ok()), Some("image/png"));
        assert_eq!(response.2.get("etag").and_then(|v| v.to_str().ok()), Some(etag.as_str()));
        assert!(response.2.get("last-modified").is_some());
    }
    http.request(Method::GET, &url, "*/*").header(reqwest::header::IF_NONE_MATCH, &etag).fetch().await.expect_status(304);
    http.head(&url, "*/*").fetch().await.expect_status(200);
    let meta = http.get_card(&url).fetch().await.expect_status(200).json();
    assert_eq!(meta["data"]["attributes"]["contentSize"], json!(bytes.len()), "{meta}");
    assert_eq!(meta["data"]["attributes"]["contentType"], json!("image/png"));
    assert_eq!(meta["data"]["meta"]["adoptsFrom"]["name"], json!("PngDef"));
    let listing = get_api(&http, &format!("{test}images/")).await.expect_status(200).json();
    assert!(listing["data"]["relationships"]["logo.png"].is_object(), "{listing}");

    // Any non-card type writes bytes; text stays text; If-Match is honoured.
    http.post_bytes(&url, "image/png", b"\x00changed".to_vec()).header(reqwest::header::IF_MATCH, "\"wrong\"").fetch().await.card_error(412);
    assert_eq!(http.http_get_bytes(&url, "*/*").await.1, bytes, "a refused write changes nothing");
    http.post_bytes(&url, "image/png", b"\x00changed".to_vec()).header(reqwest::header::IF_MATCH, &etag).fetch().await.expect_status(204);
    assert_eq!(http.http_get_bytes(&url, "*/*").await.1, b"\x00changed");
    http.post_bytes(&format!("{test}notes.txt"), "text/plain", "plain ✓".as_bytes().to_vec()).fetch().await.expect_status(204);
    assert_eq!(http.read(&format!("{test}notes.txt")).await, "plain ✓");
    // Card source over a binary file makes it text again.
    http.seed(&url, "now text").await;
    assert_eq!(http.read(&url).await, "now text");
    http.delete_source(&url).fetch().await.expect_status(204);
    http.request(Method::GET, &url, "*/*").fetch().await.card_error(404);

    // A `.json` body goes through the card logic, and is indexed as a card.
    let card = person_doc(&test, json!({"firstName": "Bytes"}));
    http.post_bytes(&format!("{test}Person/bytes.json"), "application/octet-stream", card.to_string().into_bytes()).fetch().await.expect_status(204);
    let got = http.get_card(&format!("{test}Person/bytes")).fetch().await.expect_status(200).json();
    assert_eq!(got["data"]["attributes"]["firstName"], json!("Bytes"));
    http.post_bytes(&format!("{test}bad.json"), "application/octet-stream", vec![0xff, 0xfe]).fetch().await.card_error(400);

    // Limits, reserved paths, auth.
    http.post_bytes(&format!("{test}big.bin"), "application/octet-stream", vec![7; 10_001]).fetch().await.card_error(413);
    http.request(Method::GET, &format!("{test}big.bin"), "*/*").fetch().await.card_error(404);
    http.post_bytes(&format!("{test}_x.bin"), "application/octet-stream", vec![1]).fetch().await.card_error(405);
    http.post_bytes(&format!("{test}dir/"), "application/octet-stream", vec![1]).fetch().await.card_error(405);
    http.post_bytes(&format!("{private}logo.png"), "application/octet-stream", bytes.clone()).fetch().await.card_error(401);
    let reader = srv.client_as(ALICE, &private, &["read"]).await;
    reader.post_bytes(&format!("{private}logo.png"), "application/octet-stream", bytes.clone()).fetch().await.card_error(403);
    let alice = srv.client_as(ALICE, &private, &["read", "write"]).await;
    alice.post_bytes(&format!("{private}logo.png"), "application/octet-stream", bytes.clone()).fetch().await.expect_status(204);
    assert_eq!(alice.http_get_bytes(&format!("{private}logo.png"), "*/*").await.1, bytes);
    srv.client().request(Method::GET, &format!("{private}logo.png"), "*/*").fetch().await.card_error(401);
}

fn hex_of(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
