//! The card and source routes of spec §1–2 and the limits of §4: statuses,
//! headers, redirects, conditional requests, path validation, content
//! negotiation and the exact text of stored files.

use reqwest::header::{CONTENT_TYPE, IF_MATCH, IF_NONE_MATCH};
use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::*;

const PUBLIC_CACHE: &str = "public, max-age=0, must-revalidate";

/// `8-4-4-4-12` lowercase hex digits.
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| g.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)))
}

/// A started server, its `test` realm URL and an anonymous client.
async fn test_realm() -> (Server, String, Client) {
    let srv = Server::start().await;
    let realm = srv.realm("test");
    let http = srv.client();
    (srv, realm, http)
}

/// Creates a Person with `firstName` in `realm`; returns its id.
async fn create_person(http: &Client, realm: &str, first_name: &str) -> String {
    http.create(realm, &person_doc(realm, json!({ "firstName": first_name }))).await.0
}

/// A PATCH setting `attributes` on a Person.
fn person_patch(realm: &str, attributes: Value) -> Value {
    person_doc(realm, attributes)
}

#[tokio::test(flavor = "multi_thread")]
async fn post_create_returns_201_with_location_and_card_document() {
    let (_srv, realm, http) = test_realm().await;
    let (id, resp) = http.create(&realm, &person_doc(&realm, json!({ "firstName": "Mango" }))).await;

    let uuid = id.strip_prefix(&format!("{realm}Person/")).unwrap_or_else(|| panic!("id {id} is not under {realm}Person/"));
    assert!(is_uuid(uuid), "id {id} should end in a uuid");
    assert_eq!(resp.location(), id, "location header");
    assert!(resp.varies_on_accept(), "vary should name Accept:\n{resp}");
    let data = assert_card_document(&resp, &id, &realm);
    assert_eq!(data["attributes"]["firstName"], json!("Mango"));
    assert_eq!(data["meta"]["adoptsFrom"]["name"], json!("Person"));

    let other = create_person(&http, &realm, "Van Gogh").await;
    assert_ne!(other, id, "every create gets its own id");
    let got = http.get_card(&id).fetch().await.expect_status(200);
    assert_eq!(assert_card_document(&got, &id, &realm)["attributes"]["firstName"], json!("Mango"));
}

#[tokio::test(flavor = "multi_thread")]
async fn post_create_in_subdirectory_and_default_export_directory_name() {
    let (_srv, realm, http) = test_realm().await;
    let (id, _) = http.create(&format!("{realm}people/"), &person_doc(&realm, json!({ "firstName": "Mango" }))).await;
    let uuid = id.strip_prefix(&format!("{realm}people/Person/")).unwrap_or_else(|| panic!("id {id} not in people/Person/"));
    assert!(is_uuid(uuid), "id {id} should end in a uuid");
    http.get_card(&id).fetch().await.expect_status(200);

    // `name: default` → the module's last path segment without extension.
    let dog = card_doc(&format!("{realm}pets/dog.gts"), "default", Some(json!({ "name": "Rex" })), None);
    let (id, _) = http.create(&realm, &dog).await;
    let uuid = id.strip_prefix(&format!("{realm}dog/")).unwrap_or_else(|| panic!("id {id} not in dog/"));
    assert!(is_uuid(uuid), "id {id} should end in a uuid");
}

#[tokio::test(flavor = "multi_thread")]
async fn post_create_stores_the_exact_file_serialisation() {
    let (_srv, realm, http) = test_realm().await;
    let request = card_doc(
        &format!("{realm}person.gts"),
        "Person",
        Some(json!({ "firstName": "Mango", "nicknames": ["M", "Mangy"], "address": { "city": "Paris", "zip": null } })),
        Some(json!({
            "bestFriend": link(&format!("{realm}Person/abc")),
            "mentor": { "data": { "type": "card", "id": "http://example.com/cards/1" } },
        })),
    );
    let (id, _) = http.create(&realm, &request).await;

    let expected = json!({ "data": {
        "type": "card",
        "attributes": { "firstName": "Mango", "nicknames": ["M", "Mangy"], "address": { "city": "Paris", "zip": null } },
        "relationships": {
            "bestFriend": { "links": { "self": "./abc" } },
            "mentor": { "links": { "self": "http://example.com/cards/1" } },
        },
        "meta": { "adoptsFrom": { "module": "../person", "name": "Person" } },
    }});
    assert_eq!(http.read(&format!("{id}.json")).await, file_text(&expected));
}

#[tokio::test(flavor = "multi_thread")]
async fn get_card_returns_document_with_all_headers() {
    let (_srv, realm, http) = test_realm().await;
    let id = create_person(&http, &realm, "Mango").await;
    let resp = http.get_card(&id).fetch().await.expect_status(200);

    let data = assert_card_document(&resp, &id, &realm);
    assert_eq!(data["attributes"]["firstName"], json!("Mango"));
    resp.etag();
    let last_modified = resp.must_header("last-modified");
    httpdate::parse_http_date(last_modified).unwrap_or_else(|e| panic!("last-modified {last_modified:?}: {e}"));
    assert!(!resp.must_header("x-created").is_empty(), "x-created is empty");
    assert_eq!(resp.must_header("cache-control"), PUBLIC_CACHE);
    assert_eq!(resp.must_header("x-boxel-realm-url"), realm);
    assert!(resp.varies_on_accept(), "vary should name Accept:\n{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn get_missing_card_is_404_json_error() {
    let (_srv, realm, http) = test_realm().await;
    let resp = http.get_card(&format!("{realm}Person/nobody")).fetch().await;
    resp.card_error(404);
    assert_eq!(resp.must_header("x-boxel-realm-url"), realm);
}

#[tokio::test(flavor = "multi_thread")]
async fn get_card_json_file_redirects_to_the_card_id() {
    let (_srv, realm, http) = test_realm().await;
    let id = create_person(&http, &realm, "Mango").await;
    let resp = http.get_card(&format!("{id}.json")).fetch().await.expect_status(302);
    assert_eq!(resp.location(), id);
}

#[tokio::test(flavor = "multi_thread")]
async fn realm_url_without_trailing_slash_redirects() {
    let (srv, realm, http) = test_realm().await;
    let resp = http.get_card(&srv.url("test")).fetch().await.expect_status(302);
    assert_eq!(resp.location(), realm);
}

#[tokio::test(flavor = "multi_thread")]
async fn if_none_match_gives_304_until_the_card_changes() {
    let (_srv, realm, http) = test_realm().await;
    let id = create_person(&http, &realm, "Mango").await;
    let etag = http.get_card(&id).fetch().await.expect_status(200).etag();

    let resp = http.get_card(&id).header(IF_NONE_MATCH, &etag).fetch().await.expect_status(304);
    assert!(resp.body.is_empty(), "304 has no body:\n{resp}");
    assert_eq!(resp.header("etag"), Some(etag.as_str()), "304 repeats the etag");
    http.get_card(&id).header(IF_NONE_MATCH, "\"some-other-etag\"").fetch().await.expect_status(200);

    let patched = http.patch_card(&id, &person_patch(&realm, json!({ "firstName": "Changed" }))).fetch().await.expect_status(200);
    let new_etag = patched.etag();
    assert_ne!(new_etag, etag, "a real change changes the etag");
    let resp = http.get_card(&id).header(IF_NONE_MATCH, &etag).fetch().await.expect_status(200);
    assert_eq!(resp.etag(), new_etag, "GET serves the etag the PATCH answered");
    assert_eq!(resp.json()["data"]["attributes"]["firstName"], json!("Changed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_answers_200_with_headers_and_404_when_absent() {
    let (_srv, realm, http) = test_realm().await;
    let id = create_person(&http, &realm, "Mango").await;

    let resp = http.patch_card(&id, &person_patch(&realm, json!({ "lastName": "Dog" }))).fetch().await.expect_status(200);
    let data = assert_card_document(&resp, &id, &realm);
    assert_eq!(data["attributes"]["firstName"], json!("Mango"));
    assert_eq!(data["attributes"]["lastName"], json!("Dog"));
    resp.etag();
    assert_eq!(resp.must_header("cache-control"), PUBLIC_CACHE);
    assert!(resp.varies_on_accept(), "vary should name Accept:\n{resp}");

    // The `<id>.json` spelling is accepted too.
    let resp = http.patch_card(&format!("{id}.json"), &person_patch(&realm, json!({ "lastName": "Cat" }))).fetch().await;
    let resp = resp.expect_status(200);
    assert_eq!(resp.json()["data"]["attributes"]["lastName"], json!("Cat"));

    http.patch_card(&format!("{realm}Person/nobody"), &person_patch(&realm, json!({ "firstName": "X" })))
        .fetch()
        .await
        .card_error(404);
    assert_eq!(http.source_status(&format!("{realm}Person/nobody.json")).await, 404, "a 404 PATCH creates nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_card_gives_204_then_404() {
    let (_srv, realm, http) = test_realm().await;
    let id = create_person(&http, &realm, "Mango").await;
    let resp = http.delete_card(&id).fetch().await.expect_status(204);
    assert!(resp.body.is_empty(), "204 has no body:\n{resp}");
    http.get_card(&id).fetch().await.card_error(404);
    assert_eq!(http.source_status(&format!("{id}.json")).await, 404, "the file is gone");
    http.delete_card(&id).fetch().await.card_error(404);

    // `<id>.json` works as well.
    let id = create_person(&http, &realm, "Van Gogh").await;
    http.delete_card(&format!("{id}.json")).fetch().await.expect_status(204);
    http.get_card(&id).fetch().await.card_error(404);
}

#[tokio::test(flavor = "multi_thread")]
async fn if_match_mismatch_gives_412_and_writes_nothing() {
    let (_srv, realm, http) = test_realm().await;
    let id = create_person(&http, &realm, "Mango").await;
    let first_etag = http.get_card(&id).fetch().await.expect_status(200).etag();
    let file = format!("{id}.json");
    let stored = http.read(&file).await;

    let patch = person_patch(&realm, json!({ "firstName": "Refused" }));
    http.patch_card(&id, &patch).header(IF_MATCH, "\"not-the-etag\"").fetch().await.card_error(412);
    assert_eq!(http.read(&file).await, stored, "a 412 PATCH writes nothing");
    assert_eq!(http.get_card(&id).fetch().await.etag(), first_etag);

    let patch = person_patch(&realm, json!({ "firstName": "Accepted" }));
    let resp = http.patch_card(&id, &patch).header(IF_MATCH, &first_etag).fetch().await.expect_status(200);
    let second_etag = resp.etag();
    assert_eq!(resp.json()["data"]["attributes"]["firstName"], json!("Accepted"));

    // The first etag is stale now.
    http.patch_card(&id, &person_patch(&realm, json!({ "firstName": "Stale" })))
        .header(IF_MATCH, &first_etag)
        .fetch()
        .await
        .card_error(412);
    http.delete_card(&id).header(IF_MATCH, &first_etag).fetch().await.card_error(412);
    let resp = http.get_card(&id).fetch().await.expect_status(200);
    assert_eq!(resp.json()["data"]["attributes"]["firstName"], json!("Accepted"), "412s change nothing");

    let source = format!("{realm}notes.txt");
    http.seed(&source, "original").await;
    http.write_source(&source, "replaced").header(IF_MATCH, "\"not-the-etag\"").fetch().await.card_error(412);
    assert_eq!(http.read(&source).await, "original", "a 412 source POST writes nothing");

    http.delete_card(&id).header(IF_MATCH, &second_etag).fetch().await.expect_status(204);
    http.get_card(&id).fetch().await.card_error(404);
}

#[tokio::test(flavor = "multi_thread")]
async fn source_files_round_trip_verbatim() {
    // Alike in shape to atomic.rs's `source_content_is_stored_verbatim`, but through POST of each source, not one `/_atomic` request.
    let (_srv, realm, http) = test_realm().await;
    let files = [
        ("greeting.gts", "export const greeting = 'héllo ✓';\r\n\n  \t// trailing spaces   \n\n"),
        ("odd.json", "{\"b\":1,   \"a\" : [ 2,1 ]}\n"),
        ("deep/er/notes.md", "# Notes\n\nno trailing newline"),
        ("empty.txt", ""),
    ];
    for (path, text) in files {
        let url = format!("{realm}{path}");
        let resp = http.write_source(&url, text).fetch().await.expect_status(204);
        assert!(resp.body.is_empty(), "204 has no body:\n{resp}");
        assert_eq!(http.read(&url).await, text, "{path} comes back verbatim");
    }

    let url = format!("{realm}greeting.gts");
    http.write_source(&url, "export const v = 2;").fetch().await.expect_status(204);
    assert_eq!(http.read(&url).await, "export const v = 2;", "a second POST replaces the file");
    let resp = http.delete_source(&url).fetch().await.expect_status(204);
    assert!(resp.body.is_empty(), "204 has no body:\n{resp}");
    http.get_source(&url).fetch().await.card_error(404);
    http.delete_source(&url).fetch().await.card_error(404);
    http.get_source(&format!("{realm}never-written.txt")).fetch().await.card_error(404);
}

#[tokio::test(flavor = "multi_thread")]
async fn source_file_below_the_file_limit_is_accepted() {
    let (_srv, realm, http) = test_realm().await;
    let url = format!("{realm}big.txt");
    let text = "0123456789abcdef\n".repeat(3 * 1024 * 1024 / 17); // ~3 MiB, under 5 MiB
    http.seed(&url, &text).await;
    let got = http.read(&url).await;
    assert!(got == text, "3 MiB file differs after a round trip ({} bytes sent, {} read)", text.len(), got.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_card_is_413_json_error_and_writes_nothing() {
    let (_srv, realm, http) = test_realm().await;
    let huge = "x".repeat(600 * 1024);
    http.create_card(&realm, &person_doc(&realm, json!({ "bio": huge }))).fetch().await.card_error(413);

    let id = create_person(&http, &realm, "Mango").await;
    let stored = http.read(&format!("{id}.json")).await;
    http.patch_card(&id, &person_patch(&realm, json!({ "bio": huge }))).fetch().await.card_error(413);
    assert_eq!(http.read(&format!("{id}.json")).await, stored, "a 413 PATCH writes nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_source_file_is_413_and_writes_nothing() {
    let (_srv, realm, http) = test_realm().await;
    let url = format!("{realm}too-big.txt");
    let text = "y".repeat(5 * 1024 * 1024 + 1);
    http.write_source(&url, text).fetch().await.card_error(413);
    assert_eq!(http.source_status(&url).await, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn head_reports_existence_without_a_body() {
    let (_srv, realm, http) = test_realm().await;
    let file = format!("{realm}hello.txt");
    http.seed(&file, "hello").await;
    let id = create_person(&http, &realm, "Mango").await;

    let cases: Vec<(String, &str, u16)> = vec![
        (file.clone(), "*/*", 200),
        (format!("{realm}absent.txt"), "*/*", 404),
        (format!("{id}.json"), CARD_SOURCE, 200),
        (id.clone(), CARD_JSON, 200),
        (format!("{realm}Person/absent"), CARD_JSON, 404),
    ];
    for (url, accept, status) in cases {
        let resp = http.head(&url, accept).fetch().await.expect_status(status);
        assert!(resp.body.is_empty(), "HEAD has no body:\n{resp}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn card_writes_to_reserved_underscore_paths_are_405() {
    let (_srv, realm, http) = test_realm().await;
    let doc = person_doc(&realm, json!({ "firstName": "Mango" }));
    http.create_card(&format!("{realm}_cards/"), &doc).fetch().await.card_error(405);
    http.patch_card(&format!("{realm}_thing"), &doc).fetch().await.card_error(405);
    http.delete_card(&format!("{realm}_thing")).fetch().await.card_error(405);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_paths_are_400_and_never_escape_the_realm() {
    let srv = Server::start().await;
    let http = srv.client();
    let bad = [
        "/test/../private/escaped.txt",
        "/test/a/../escaped.txt",
        "/test/a//escaped.txt",
        "/test/a%2F..%2Fescaped.txt",
        "/test/%2e%2e/private/escaped.txt",
        "/test/a%5Cescaped.txt",
        "/test/a\\escaped.txt",
        "/test/a%00escaped.txt",
    ];
    for path in bad {
        let (status, body) = srv.raw("GET", path, CARD_SOURCE, "").await;
        assert_eq!(status, 400, "GET {path} should be 400, body: {body}");
        let (status, body) = srv.raw("POST", path, CARD_SOURCE, "evil").await;
        assert_eq!(status, 400, "POST {path} should be 400, body: {body}");
    }
    // Nothing was written anywhere.
    let alice = srv.client_as(ALICE, &srv.realm("private"), &["read", "write"]).await;
    assert_eq!(alice.source_status(&srv.url("private/escaped.txt")).await, 404);
    for path in ["test/escaped.txt", "test/a/escaped.txt", "escaped.txt"] {
        assert_eq!(http.source_status(&srv.url(path)).await, 404, "{path} must not exist");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_bodies_are_400_json_errors() {
    let (_srv, realm, http) = test_realm().await;
    let raw = |method: Method, url: &str, body: &'static str| {
        http.request(method, url, CARD_JSON).header(CONTENT_TYPE, CARD_JSON).body(body)
    };
    raw(Method::POST, &realm, "{\"data\": ").fetch().await.card_error(400);
    raw(Method::POST, &realm, "[1, 2]").fetch().await.card_error(400);
    raw(Method::POST, &realm, "{\"data\":{\"type\":\"card\",\"attributes\":{}}}").fetch().await.card_error(400);
    raw(Method::POST, &realm, "{\"data\":{\"type\":\"card\",\"meta\":{\"adoptsFrom\":{\"name\":\"Person\"}}}}")
        .fetch()
        .await
        .card_error(400);

    let id = create_person(&http, &realm, "Mango").await;
    let stored = http.read(&format!("{id}.json")).await;
    raw(Method::PATCH, &id, "{not json").fetch().await.card_error(400);
    assert_eq!(http.read(&format!("{id}.json")).await, stored, "a 400 PATCH writes nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_of_a_non_json_file_is_415() {
    let (_srv, realm, http) = test_realm().await;
    let url = format!("{realm}greeting.txt");
    http.seed(&url, "hello").await;
    http.patch_card(&url, &person_patch(&realm, json!({ "firstName": "X" }))).fetch().await.card_error(415);
    assert_eq!(http.read(&url).await, "hello");
}

#[tokio::test(flavor = "multi_thread")]
async fn accept_picks_the_first_supported_type_then_content_type() {
    let (_srv, realm, http) = test_realm().await;
    let note = format!("{realm}note.txt");
    http.seed(&note, "hi there").await;

    // First *supported* entry of the Accept list wins.
    let resp = http.request(Method::GET, &note, &format!("text/html, {CARD_SOURCE}, {CARD_JSON}")).fetch().await;
    assert_eq!(resp.expect_status(200).body, "hi there");

    // No route for the Accept type → the Content-Type decides.
    let url = format!("{realm}by-content-type.txt");
    http.request(Method::POST, &url, "text/plain").header(CONTENT_TYPE, CARD_SOURCE).body("typed").fetch().await.expect_status(204);
    assert_eq!(http.read(&url).await, "typed");
    let doc = serde_json::to_string(&person_doc(&realm, json!({ "firstName": "Ct" }))).unwrap();
    let resp = http.request(Method::POST, &realm, "text/plain").header(CONTENT_TYPE, CARD_JSON).body(doc).fetch().await;
    assert_eq!(resp.expect_status(201).json()["data"]["attributes"]["firstName"], json!("Ct"));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_realm_response_names_the_realm() {
    let (_srv, realm, http) = test_realm().await;
    let (id, created) = http.create(&realm, &person_doc(&realm, json!({ "firstName": "Mango" }))).await;
    let file = format!("{realm}f.txt");
    let atomic_ok = json!({ "atomic:operations": [
        { "op": "add", "href": "a.txt", "data": { "type": "source", "attributes": { "content": "a" }, "meta": {} } }
    ]});
    let mut responses = vec![created];
    responses.push(http.get_card(&id).fetch().await.expect_status(200));
    responses.push(http.get_card(&format!("{id}.json")).fetch().await.expect_status(302));
    responses.push(http.get_card(&format!("{realm}nobody")).fetch().await.expect_status(404));
    responses.push(http.patch_card(&id, &person_patch(&realm, json!({ "x": 1 }))).fetch().await.expect_status(200));
    responses.push(http.write_source(&file, "f").fetch().await.expect_status(204));
    responses.push(http.get_source(&file).fetch().await.expect_status(200));
    responses.push(http.head(&file, "*/*").fetch().await.expect_status(200));
    responses.push(http.delete_source(&file).fetch().await.expect_status(204));
    responses.push(http.get_source(&file).fetch().await.expect_status(404));
    responses.push(http.atomic(&realm, &atomic_ok).fetch().await.expect_status(201));
    responses.push(http.atomic(&realm, &json!({})).fetch().await.expect_status(400));
    responses.push(http.create_card(&realm, &json!({ "data": 1 })).fetch().await.expect_status(400));
    responses.push(http.delete_card(&id).fetch().await.expect_status(204));
    for resp in &responses {
        assert_eq!(resp.header("x-boxel-realm-url"), Some(realm.as_str()), "x-boxel-realm-url on\n{resp}");
    }
}
