//! `POST <realm>_atomic` (spec §3): results in request order, validation
//! errors and their consolidated statuses, existence checks (409/404), and
//! all-or-nothing application — a failing op leaves no trace of the others.

use reqwest::header::CONTENT_TYPE;
use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::*;

/// `{"atomic:operations": ops}`
fn operations(ops: Vec<Value>) -> Value {
    json!({ "atomic:operations": ops })
}

fn op(kind: &str, href: &str, data: Value) -> Value {
    json!({ "op": kind, "href": href, "data": data })
}

fn remove(href: &str) -> Value {
    json!({ "op": "remove", "href": href })
}

/// A Person card resource with an absolute `.gts` module.
fn person(realm: &str, attributes: Value) -> Value {
    card_resource(&format!("{realm}person.gts"), "Person", Some(attributes), None)
}

/// A source resource.
fn source(content: &str) -> Value {
    json!({ "type": "source", "attributes": { "content": content }, "meta": {} })
}

/// At most 200 characters of `value`, for failure messages.
fn brief(value: &Value) -> String {
    value.to_string().chars().take(200).collect()
}

/// A started server (SQLite), its `test` realm URL and an anonymous client.
async fn test_realm() -> (Server, String, Client) {
    test_realm_on(Backend::Sqlite).await
}

/// A started server on `backend`, its `test` realm URL and an anonymous client.
async fn test_realm_on(backend: Backend) -> (Server, String, Client) {
    let srv = backend.start().await;
    let realm = srv.realm("test");
    let http = srv.client();
    (srv, realm, http)
}

/// Asserts that none of `paths` (relative to `realm`) exists.
async fn assert_absent(http: &Client, realm: &str, paths: &[&str]) {
    for path in paths {
        assert_eq!(http.source_status(&format!("{realm}{path}")).await, 404, "{path} must not have been written");
    }
}

async fn add_update_remove_succeed_with_results_in_request_order(backend: Backend) {
    let (_srv, realm, http) = test_realm_on(backend).await;
    http.seed(&format!("{realm}existing.gts"), "export const v = 1;").await;
    http.seed(&format!("{realm}gone.txt"), "bye").await;

    let body = operations(vec![
        op("add", "new-person.json", person(&realm, json!({ "firstName": "Mango" }))),
        op("update", "existing.gts", source("export const v = 2;")),
        remove("gone.txt"),
        op("add", "./notes/sub/../readme.md", source("# hi\n")),
        op("add", "module.gts", source("export default 1;")),
    ]);
    let resp = http.atomic(&realm, &body).fetch().await.expect_status(201);
    assert_eq!(resp.media_type(), JSON_API);
    assert_eq!(resp.must_header("x-boxel-realm-url"), realm);

    let results = resp.json()["atomic:results"].as_array().cloned().unwrap_or_else(|| panic!("no atomic:results in\n{resp}"));
    let ids: Vec<&str> = results.iter().map(|r| r["data"]["id"].as_str().unwrap_or("<missing>")).collect();
    let expected: Vec<String> = ["new-person.json", "existing.gts", "gone.txt", "notes/readme.md", "module.gts"]
        .iter()
        .map(|p| format!("{realm}{p}"))
        .collect();
    assert_eq!(ids, expected, "results are absolute file URLs in request order");
    for (i, result) in results.iter().enumerate() {
        let created = &result["meta"]["created"];
        assert!(created.is_u64() || created.is_null(), "results[{i}].meta.created is unix seconds or null in\n{resp}");
    }
    for i in [0, 3, 4] {
        assert!(results[i]["meta"]["created"].is_u64(), "an added file has a creation time: results[{i}] in\n{resp}");
    }

    let card = http.get_card(&format!("{realm}new-person")).fetch().await.expect_status(200);
    assert_eq!(card.json()["data"]["attributes"]["firstName"], json!("Mango"));
    assert_eq!(http.read(&format!("{realm}existing.gts")).await, "export const v = 2;");
    assert_absent(&http, &realm, &["gone.txt"]).await;
    assert_eq!(http.read(&format!("{realm}notes/readme.md")).await, "# hi\n");
}

async fn added_card_is_stored_with_the_file_serialisation(backend: Backend) {
    let (_srv, realm, http) = test_realm_on(backend).await;
    let data = card_resource(
        &format!("{realm}person.gts"),
        "Person",
        Some(json!({ "firstName": "Mango", "tags": ["x"] })),
        Some(json!({
            "bestFriend": { "links": { "self": format!("{realm}Person/b") }, "data": { "type": "card", "id": format!("{realm}Person/b") } },
            "mentor": { "data": { "type": "card", "id": "http://example.com/cards/1" } },
        })),
    );
    http.atomic(&realm, &operations(vec![op("add", "people/mango.json", data)])).fetch().await.expect_status(201);
    let expected = json!({ "data": {
        "type": "card",
        "attributes": { "firstName": "Mango", "tags": ["x"] },
        "relationships": {
            "bestFriend": { "links": { "self": "../Person/b" } },
            "mentor": { "links": { "self": "http://example.com/cards/1" } },
        },
        "meta": { "adoptsFrom": { "module": "../person", "name": "Person" } },
    }});
    assert_eq!(http.read(&format!("{realm}people/mango.json")).await, file_text(&expected));
}

async fn update_of_a_card_replaces_it_entirely(backend: Backend) {
    let (_srv, realm, http) = test_realm_on(backend).await;
    let original = card_resource(
        &format!("{realm}person.gts"),
        "Person",
        Some(json!({ "firstName": "Mango", "lastName": "Dog", "address": { "city": "Paris", "zip": "75001" } })),
        Some(json!({ "bestFriend": link("./Person/a") })),
    );
    http.atomic(&realm, &operations(vec![op("add", "person-1.json", original)])).fetch().await.expect_status(201);

    let replacement = card_resource(
        &format!("{realm}person.gts"),
        "Person",
        Some(json!({ "firstName": "Van Gogh", "address": { "city": "Arles" } })),
        Some(json!({ "mentor": link("http://example.com/cards/2") })),
    );
    http.atomic(&realm, &operations(vec![op("update", "person-1.json", replacement)])).fetch().await.expect_status(201);
    let expected = json!({ "data": {
        "type": "card",
        "attributes": { "firstName": "Van Gogh", "address": { "city": "Arles" } },
        "relationships": { "mentor": link("http://example.com/cards/2") },
        "meta": { "adoptsFrom": { "module": "./person", "name": "Person" } },
    }});
    assert_eq!(http.read(&format!("{realm}person-1.json")).await, file_text(&expected), "no merge with the old card");
    let card = http.get_card(&format!("{realm}person-1")).fetch().await.expect_status(200);
    assert_eq!(card.json()["data"]["attributes"], expected["data"]["attributes"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn source_content_is_stored_verbatim() {
    let (_srv, realm, http) = test_realm().await;
    let files = [
        ("mod.gts", "import x from './x';\r\n\n\texport default   x ;  \n\n"),
        ("raw.json", "{ \"not\":\"pretty\",\"data\":1 }"),
        ("empty.txt", ""),
    ];
    let ops = files.iter().map(|(path, text)| op("add", path, source(text))).collect();
    http.atomic(&realm, &operations(ops)).fetch().await.expect_status(201);
    for (path, text) in files {
        assert_eq!(http.read(&format!("{realm}{path}")).await, text, "{path} stored verbatim");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn body_that_is_not_json_is_400_with_the_exact_error() {
    let (_srv, realm, http) = test_realm().await;
    let resp = http
        .request(Method::POST, &format!("{realm}_atomic"), JSON_API)
        .header(CONTENT_TYPE, JSON_API)
        .body("{\"atomic:operations\": [")
        .fetch()
        .await
        .expect_status(400);
    assert_eq!(resp.media_type(), JSON_API);
    assert_eq!(
        resp.json(),
        json!({ "errors": [{ "title": "Invalid atomic:operations format", "detail": "Request body is not valid JSON" }] })
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_or_non_array_operations_is_400() {
    let (_srv, realm, http) = test_realm().await;
    for body in [json!({}), json!({ "atomic:operations": {} }), json!({ "atomic:operations": "add" }), json!([])] {
        let errors = http.atomic(&realm, &body).fetch().await.atomic_errors(400);
        assert_eq!(errors[0]["status"], json!(400), "body {body}");
        assert_eq!(errors[0]["title"], json!("Invalid atomic:operations format"), "body {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unsupported_op_is_400_with_a_422_error_and_writes_nothing() {
    let (_srv, realm, http) = test_realm().await;
    let body = operations(vec![op("add", "ok.txt", source("ok")), op("delete", "x.txt", source("x"))]);
    let resp = http.atomic(&realm, &body).fetch().await;
    let errors = resp.atomic_errors(400);
    assert_eq!(errors.len(), 1, "one error:\n{resp}");
    assert_eq!(errors[0]["status"], json!(422));
    let detail = errors[0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("unsupported operation type"), "detail {detail:?}");
    assert_absent(&http, &realm, &["ok.txt", "x.txt"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_href_and_bad_resource_type_are_400_listing_every_error() {
    let (_srv, realm, http) = test_realm().await;
    let body = operations(vec![
        json!({ "op": "add", "data": source("no href") }),
        op("add", "widget.json", json!({ "type": "widget", "attributes": {} })),
        json!({ "op": "frobnicate" }),
        op("add", "fine.txt", source("fine")),
    ]);
    let resp = http.atomic(&realm, &body).fetch().await;
    resp.atomic_errors(400);
    // missing href (400), bad data.type (422), bad op (422) + its missing href (400)
    assert_eq!(resp.error_statuses(), vec![400, 400, 422, 422], "every error is listed:\n{resp}");
    assert_absent(&http, &realm, &["widget.json", "fine.txt"]).await;
}

async fn add_of_an_existing_file_is_409_and_writes_nothing(backend: Backend) {
    let (_srv, realm, http) = test_realm_on(backend).await;
    http.seed(&format!("{realm}taken.gts"), "original").await;
    let body = operations(vec![op("add", "fresh.txt", source("fresh")), op("add", "taken.gts", source("replaced"))]);
    let resp = http.atomic(&realm, &body).fetch().await;
    let errors = resp.atomic_errors(409);
    assert_eq!(errors.len(), 1, "one error:\n{resp}");
    assert_eq!(errors[0]["status"], json!(409));
    assert_eq!(errors[0]["title"], json!("Resource already exists"));
    assert_eq!(http.read(&format!("{realm}taken.gts")).await, "original");
    assert_absent(&http, &realm, &["fresh.txt"]).await;
}

async fn update_or_remove_of_a_missing_file_is_404(backend: Backend) {
    let (_srv, realm, http) = test_realm_on(backend).await;
    for body in [
        operations(vec![op("add", "fresh.txt", source("fresh")), op("update", "missing.txt", source("x"))]),
        operations(vec![op("add", "fresh.txt", source("fresh")), remove("missing.txt")]),
    ] {
        let resp = http.atomic(&realm, &body).fetch().await;
        let errors = resp.atomic_errors(404);
        assert_eq!(errors.len(), 1, "one error:\n{resp}");
        assert_eq!(errors[0]["title"], json!("Resource does not exist"));
        assert_absent(&http, &realm, &["fresh.txt", "missing.txt"]).await;
    }
}

async fn mixed_404_and_409_answer_404_listing_both(backend: Backend) {
    let (_srv, realm, http) = test_realm_on(backend).await;
    http.seed(&format!("{realm}taken.txt"), "original").await;
    let body = operations(vec![
        op("add", "taken.txt", source("replaced")),
        op("update", "missing.txt", source("x")),
        op("add", "fresh.txt", source("fresh")),
    ]);
    let resp = http.atomic(&realm, &body).fetch().await;
    resp.atomic_errors(404);
    assert_eq!(resp.error_statuses(), vec![404, 409], "both errors are listed:\n{resp}");
    assert_eq!(http.read(&format!("{realm}taken.txt")).await, "original");
    assert_absent(&http, &realm, &["missing.txt", "fresh.txt"]).await;
}

async fn a_failing_last_op_leaves_no_trace_of_the_earlier_ops(backend: Backend) {
    let (_srv, realm, http) = test_realm_on(backend).await;
    http.seed(&format!("{realm}taken.txt"), "original").await;
    http.seed(&format!("{realm}victim.txt"), "keep me").await;
    http.seed(&format!("{realm}existing.txt"), "untouched").await;
    let earlier = || {
        vec![
            op("add", "first.json", person(&realm, json!({ "firstName": "First" }))),
            op("add", "second.gts", source("export default 2;")),
            op("update", "taken.txt", source("overwritten")),
            remove("victim.txt"),
        ]
    };
    let card_without_adopts_from = json!({ "type": "card", "attributes": { "firstName": "Bad" } });
    let failing_lasts = [
        (op("add", "last.json", card_without_adopts_from), 400, 422),
        (op("add", "last.json", json!({ "type": "card", "attributes": [], "meta": { "adoptsFrom": { "module": "./person", "name": "Person" } } })), 400, 422),
        (op("add", "last.txt", json!({ "type": "source", "attributes": { "content": 42 }, "meta": {} })), 400, 422),
        (json!({ "op": "add", "href": "last.txt" }), 400, 422),
        (op("add", "existing.txt", source("conflict")), 409, 409),
        (op("add", "last.json", person(&realm, json!({ "bio": "x".repeat(600 * 1024) }))), 413, 413),
    ];
    for (last, http_status, error_status) in failing_lasts {
        let mut ops = earlier();
        ops.push(last.clone());
        let resp = http.atomic(&realm, &operations(ops)).fetch().await;
        assert_eq!(resp.status, http_status, "last op {}\n{resp}", brief(&last));
        assert!(resp.error_statuses().contains(&error_status), "an error with status {error_status} for {}\n{resp}", brief(&last));
        assert_absent(&http, &realm, &["first.json", "second.gts", "last.json", "last.txt"]).await;
        http.get_card(&format!("{realm}first")).fetch().await.card_error(404);
        assert_eq!(http.read(&format!("{realm}taken.txt")).await, "original");
        assert_eq!(http.read(&format!("{realm}victim.txt")).await, "keep me");
        assert_eq!(http.read(&format!("{realm}existing.txt")).await, "untouched");
    }
}

async fn href_outside_the_realm_is_a_404_error(backend: Backend) {
    let srv = backend.start().await;
    let (realm, http) = (srv.realm("test"), srv.client());
    let private_file = srv.url("private/escaped.txt");
    for href in ["../../outside.txt", "../private/escaped.txt", private_file.as_str(), "http://example.com/test/x.txt"] {
        let resp = http.atomic(&realm, &operations(vec![op("add", href, source("escaped"))])).fetch().await;
        let errors = resp.atomic_errors(404);
        assert_eq!(errors[0]["status"], json!(404), "href {href}");
    }
    let alice = srv.client_as(ALICE, &srv.realm("private"), &["read", "write"]).await;
    assert_eq!(alice.source_status(&private_file).await, 404, "nothing lands in another realm");
    assert_eq!(http.source_status(&srv.url("outside.txt")).await, 404);
}

// The same behaviour on both storage backends.
on_both_backends!(
    add_update_remove_succeed_with_results_in_request_order,
    added_card_is_stored_with_the_file_serialisation,
    update_of_a_card_replaces_it_entirely,
    add_of_an_existing_file_is_409_and_writes_nothing,
    update_or_remove_of_a_missing_file_is_404,
    mixed_404_and_409_answer_404_listing_both,
    a_failing_last_op_leaves_no_trace_of_the_earlier_ops,
    href_outside_the_realm_is_a_404_error,
);
