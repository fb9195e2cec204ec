//! The command line (spec §6): `token` prints a verifiable JWT, bad input
//! fails with a non-zero exit and a one-line error, flags fall back to
//! their `REALM_*` environment variables, `serve` logs its URL and serves
//! every realm in its database by request path.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn token_prints_a_jwt_signed_with_the_secret() {
    let realm = "http://127.0.0.1:4201/private/";
    let token = issue_token("cli-secret", ALICE, realm, &["read", "write"]).await;

    let validation = Validation::new(Algorithm::HS256);
    let claims = jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_secret(b"cli-secret"), &validation)
        .unwrap_or_else(|e| panic!("token {token} does not verify with the secret: {e}"))
        .claims;
    assert_eq!(claims["user"], json!(ALICE));
    assert_eq!(claims["realm"], json!(realm));
    assert_eq!(claims["permissions"], json!(["read", "write"]));
    let exp = claims["exp"].as_u64().unwrap_or_else(|| panic!("exp is not unix seconds in {claims}"));
    assert!(exp > now_unix(), "exp {exp} is in the past");

    let wrong = jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_secret(b"other"), &validation);
    assert!(wrong.is_err(), "a token must not verify with another secret");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_fails_with_a_clear_error() {
    let db = TestDb::sqlite();
    let realm = "http://127.0.0.1:4201/cli/";
    cli(&["realm", "create", realm, "--public", "read", "--database", db.url()]).await.expect_success();

    let line = cli(&["realm", "create", "not-a-url", "--database", db.url()]).await.expect_one_line_error();
    assert!(line.contains("not-a-url"), "the error should name the bad URL: {line:?}");
    cli(&["realm", "grant", realm, ALICE, "fly", "--database", db.url()]).await.expect_failure();
    cli(&["realm", "create", "http://127.0.0.1:4201/other/", "--public", "sometimes", "--database", db.url()])
        .await
        .expect_failure();
    cli(&["token", "--user", ALICE, "--realm", realm, "--permissions", "read,fly", "--secret", "s"]).await.expect_failure();
    cli(&["token", "--user", ALICE, "--realm", "not-a-url", "--secret", "s"]).await.expect_failure();
    cli(&["no-such-command"]).await.expect_failure();
}

#[tokio::test(flavor = "multi_thread")]
async fn flags_fall_back_to_environment_variables() {
    let db = TestDb::sqlite();
    let port = free_port();
    let realm = format!("http://127.0.0.1:{port}/envrealm/");
    cli_with_env(&["realm", "create", &realm, "--public", "write"], &[("REALM_DATABASE_URL", db.url())])
        .await
        .expect_success();
    let token = cli_with_env(&["token", "--user", ALICE, "--realm", &realm], &[("REALM_SECRET", "env-secret")])
        .await
        .expect_success()
        .stdout;
    let decoded = jsonwebtoken::decode::<Value>(
        token.trim(),
        &DecodingKey::from_secret(b"env-secret"),
        &Validation::new(Algorithm::HS256),
    );
    assert!(decoded.is_ok(), "REALM_SECRET signs the token: {decoded:?}");

    let options = ServerOptions { realms: Vec::new(), port: Some(port), ..ServerOptions::default() };
    let srv = Server::start_on(db, options).await;
    let http = srv.client();
    let (id, created) = http.create(&realm, &person_doc(&realm, json!({ "firstName": "Env" }))).await;
    assert_card_document(&created, &id, &realm);
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_logs_the_url_it_listens_on() {
    let srv = Server::start().await;
    let url = format!("http://127.0.0.1:{}", srv.port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !srv.log().contains(&url) {
        assert!(std::time::Instant::now() < deadline, "the server log never mentions {url}:\n{}", srv.log());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replica_on_the_same_database_serves_the_same_realms() {
    let primary = Server::start().await;
    let realm = primary.realm("test");
    let (id, _) = primary.client().create(&realm, &person_doc(&realm, json!({ "firstName": "Shared" }))).await;
    let path = id.strip_prefix(&primary.base).expect("id on the primary's base");

    let replica = primary.replica().await;
    let got = replica.client().get_card(&replica.url(path)).fetch().await.expect_status(200);
    assert_eq!(got.json()["data"]["attributes"]["firstName"], json!("Shared"));
}
