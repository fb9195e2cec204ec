//! Permissions and tokens (spec §4): `private` needs a token (401 without
//! a valid one, 403 for the wrong realm or a missing permission), `test`
//! is public-write, `pubread` public-read; tokens are HS256 JWTs signed with
//! the bytes of `--secret` carrying `user`, `realm`, `permissions`, `exp`.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::RequestBuilder;
use serde_json::{json, Value};

use crate::harness::*;

const PRIVATE_CACHE: &str = "private, max-age=0, must-revalidate";

/// A JWT signed here (not by the CLI) with `secret`.
fn sign(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes())).expect("sign JWT")
}

fn claims(user: &str, realm: &str, permissions: &[&str], exp: u64) -> Value {
    json!({ "user": user, "realm": realm, "permissions": permissions, "exp": exp })
}

/// A server plus a card and a file that alice created in `private`.
struct PrivateRealm {
    srv: Server,
    realm: String,
    card: String,
    file: String,
}

impl PrivateRealm {
    async fn new() -> PrivateRealm {
        let srv = Server::start().await;
        let realm = srv.realm("private");
        let alice = srv.client_as(ALICE, &realm, &["read", "write"]).await;
        let (card, _) = alice.create(&realm, &person_doc(&realm, json!({ "firstName": "Secret" }))).await;
        let file = format!("{realm}secret.txt");
        alice.seed(&file, "secret").await;
        PrivateRealm { srv, realm, card, file }
    }

    /// One request of every kind against the realm, as `client`: reads first.
    fn requests(&self, client: &Client) -> Vec<(&'static str, RequestBuilder)> {
        let doc = person_doc(&self.realm, json!({ "firstName": "Intruder" }));
        let atomic = json!({ "atomic:operations": [
            { "op": "add", "href": "intruder.txt", "data": { "type": "source", "attributes": { "content": "x" }, "meta": {} } }
        ]});
        vec![
            ("read", client.get_card(&self.card)),
            ("read", client.get_source(&self.file)),
            ("write", client.create_card(&self.realm, &doc)),
            ("write", client.patch_card(&self.card, &doc)),
            ("write", client.delete_card(&self.card)),
            ("write", client.write_source(&self.file, "overwritten")),
            ("write", client.delete_source(&self.file)),
            ("write", client.atomic(&self.realm, &atomic)),
        ]
    }

    /// Asserts that every request of [`Self::requests`] as `client` is denied with `status`.
    async fn assert_all_denied(&self, client: &Client, status: u16) {
        for (_, request) in self.requests(client) {
            assert_denied(&request.fetch().await, status, &self.realm);
        }
    }

    /// Asserts that alice still sees the card and the file unchanged.
    async fn assert_untouched(&self) {
        let alice = self.srv.client_as(ALICE, &self.realm, &["read", "write"]).await;
        let card = alice.get_card(&self.card).fetch().await.expect_status(200);
        assert_eq!(card.json()["data"]["attributes"]["firstName"], json!("Secret"));
        assert_eq!(alice.read(&self.file).await, "secret");
        assert_eq!(alice.source_status(&format!("{}intruder.txt", self.realm)).await, 404);
    }
}

/// Asserts `status`; card routes must also answer with the JSON error shape.
fn assert_denied(resp: &Resp, status: u16, realm: &str) {
    if resp.url.ends_with("/_atomic") {
        assert_eq!(resp.status, status, "unexpected status for\n{resp}");
    } else {
        resp.card_error(status);
    }
    assert_eq!(resp.header("x-boxel-realm-url"), Some(realm), "x-boxel-realm-url on\n{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn private_realm_without_a_token_is_401() {
    let private = PrivateRealm::new().await;
    let anonymous = private.srv.client();
    private.assert_all_denied(&anonymous, 401).await;
    private.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_wrong_secret_and_expired_tokens_are_401() {
    let private = PrivateRealm::new().await;
    let realm = private.realm.as_str();
    let rw = ["read", "write"];
    let tokens = [
        "not-a-jwt".to_string(),
        "a.b.c".to_string(),
        sign("some other secret", &claims(ALICE, realm, &rw, now_unix() + 3600)),
        sign(SECRET, &claims(ALICE, realm, &rw, now_unix() - 3600)),
        sign(SECRET, &json!({ "user": ALICE, "realm": realm, "permissions": rw })), // no exp
    ];
    for token in &tokens {
        let client = private.srv.client().with_token(token);
        private.assert_all_denied(&client, 401).await;
    }
    private.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn token_for_another_realm_is_403() {
    let private = PrivateRealm::new().await;
    for other in ["test", "pubread"] {
        let client = private.srv.client_as(ALICE, &private.srv.realm(other), &["read", "write"]).await;
        private.assert_all_denied(&client, 403).await;
    }
    private.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_token_reads_but_cannot_write() {
    let private = PrivateRealm::new().await;
    let reader = private.srv.client_as(ALICE, &private.realm, &["read"]).await;
    for (kind, request) in private.requests(&reader) {
        let resp = request.fetch().await;
        match kind {
            "read" => assert_eq!(resp.status, 200, "a read token reads:\n{resp}"),
            _ => assert_denied(&resp, 403, &private.realm),
        }
    }
    private.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn read_write_token_can_do_everything() {
    let private = PrivateRealm::new().await;
    let (realm, http) = (&private.realm, private.srv.client_as(ALICE, &private.realm, &["read", "write"]).await);

    let got = http.get_card(&private.card).fetch().await.expect_status(200);
    assert_card_document(&got, &private.card, realm);
    assert_eq!(got.must_header("cache-control"), PRIVATE_CACHE);
    let patched = http.patch_card(&private.card, &person_doc(realm, json!({ "lastName": "Agent" }))).fetch().await;
    assert_eq!(patched.expect_status(200).must_header("cache-control"), PRIVATE_CACHE);
    let atomic = json!({ "atomic:operations": [
        { "op": "add", "href": "new.txt", "data": { "type": "source", "attributes": { "content": "new" }, "meta": {} } }
    ]});
    http.atomic(realm, &atomic).fetch().await.expect_status(201);
    assert_eq!(http.read(&format!("{realm}new.txt")).await, "new");
    http.write_source(&private.file, "rewritten").fetch().await.expect_status(204);
    assert_eq!(http.read(&private.file).await, "rewritten");
    http.delete_source(&private.file).fetch().await.expect_status(204);
    http.delete_card(&private.card).fetch().await.expect_status(204);
    http.get_card(&private.card).fetch().await.card_error(404);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_signed_with_the_secret_bytes_is_accepted() {
    let private = PrivateRealm::new().await;
    let token = sign(SECRET, &claims(ALICE, &private.realm, &["read", "write"], now_unix() + 3600));
    let http = private.srv.client().with_token(&token);
    http.get_card(&private.card).fetch().await.expect_status(200);
    http.write_source(&format!("{}signed.txt", private.realm), "ok").fetch().await.expect_status(204);
}

#[tokio::test(flavor = "multi_thread")]
async fn user_without_a_grant_is_403_even_with_a_token() {
    let private = PrivateRealm::new().await;
    let mallory = private.srv.client_as("mallory", &private.realm, &["read", "write"]).await;
    private.assert_all_denied(&mallory, 403).await;
    private.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn public_write_realm_needs_no_token() {
    let srv = Server::start().await;
    let (realm, http) = (srv.realm("test"), srv.client());
    let (id, _) = http.create(&realm, &person_doc(&realm, json!({ "firstName": "Anyone" }))).await;
    http.patch_card(&id, &person_doc(&realm, json!({ "lastName": "Else" }))).fetch().await.expect_status(200);
    http.seed(&format!("{realm}anon.txt"), "anon").await;
    let atomic = json!({ "atomic:operations": [
        { "op": "remove", "href": "anon.txt" }
    ]});
    http.atomic(&realm, &atomic).fetch().await.expect_status(201);
    http.delete_card(&id).fetch().await.expect_status(204);
}

#[tokio::test(flavor = "multi_thread")]
async fn public_read_realm_reads_anonymously_and_writes_with_a_grant() {
    let srv = Server::start().await;
    let realm = srv.realm("pubread");
    let bob = srv.client_as(BOB, &realm, &["read", "write"]).await;
    let (id, _) = bob.create(&realm, &person_doc(&realm, json!({ "firstName": "Bob's" }))).await;

    let anonymous = srv.client();
    let got = anonymous.get_card(&id).fetch().await.expect_status(200);
    assert_eq!(got.must_header("cache-control"), "public, max-age=0, must-revalidate");
    let doc = person_doc(&realm, json!({ "firstName": "Vandal" }));
    assert_denied(&anonymous.patch_card(&id, &doc).fetch().await, 401, &realm);
    assert_denied(&anonymous.create_card(&realm, &doc).fetch().await, 401, &realm);

    let carol = srv.client_as("carol", &realm, &["read", "write"]).await;
    assert_denied(&carol.patch_card(&id, &doc).fetch().await, 403, &realm);
    let got = anonymous.get_card(&id).fetch().await.expect_status(200);
    assert_eq!(got.json()["data"]["attributes"]["firstName"], json!("Bob's"));
}
