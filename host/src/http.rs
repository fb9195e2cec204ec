//! The HTTP data plane of spec §1–4: finds the realm and local path of a
//! request, checks permissions, picks the route by media type, runs the
//! guest (in its own task, so a client that goes away cannot cancel a
//! critical section halfway) and turns its answer into a response.
//! Early refusals travel as `Err(Response)`: they are the response.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::json;

use crate::auth::{self, Denied, Need};
use crate::db::{Database, Permissions};
use crate::realm_cache::RealmCache;
use crate::realm_url::{self, check_local_path};
use crate::guests::Guests;
use crate::runtime::{atomic_status, Answer, Call, CardResponse, Guest, GuestError};
use crate::write_lock::{BatchStats, Limits};

pub const CARD_JSON: &str = "application/vnd.card+json";
pub const CARD_SOURCE: &str = "application/vnd.card+source";
pub const JSON_API: &str = "application/vnd.api+json";

/// Everything a request handler needs.
pub struct App {
    pub db: Database,
    pub guests: Arc<Guests>,
    pub secret: String,
    pub limits: Limits,
    /// Counters of coalesced commits, for `/_metrics`.
    stats: Arc<BatchStats>,
    /// Realm list and permissions.
    pub realms: Arc<RealmCache>,
}

impl App {
    pub async fn new(
        db: Database,
        guests: Arc<Guests>,
        secret: String,
        limits: Limits,
        stats: Arc<BatchStats>,
    ) -> Result<App, crate::db::DbError> {
        let realms = Arc::new(RealmCache::load(db.clone()).await?);
        Ok(App { db, guests, secret, limits, stats, realms })
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .fallback(handle)
        .with_state(app)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(
            tower_http::cors::CorsLayer::permissive().expose_headers([
                header::HeaderName::from_static("x-boxel-realm-url"),
                header::HeaderName::from_static("x-boxel-realm-public-readable"),
                header::ETAG,
                header::CACHE_CONTROL,
                header::LOCATION,
            ]),
        )
}

/// A finished response or an early refusal; both are responses.
type Reply = Result<Response, Response>;

/// The media type a request asks for (spec §2: Accept first, exact match).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Media {
    Card,
    Source,
    JsonApi,
    Other,
}

fn media_of(headers: &HeaderMap) -> Media {
    let pick = |name: header::HeaderName| {
        headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| {
            v.split(',').map(str::trim).find_map(|t| match t {
                CARD_JSON => Some(Media::Card),
                CARD_SOURCE => Some(Media::Source),
                JSON_API => Some(Media::JsonApi),
                _ => None,
            })
        })
    };
    pick(header::ACCEPT).or_else(|| pick(header::CONTENT_TYPE)).unwrap_or(Media::Other)
}

/// The realm a request addresses and the local path inside it.
struct Target {
    realm: String,
    local: String,
    public: Permissions,
}

async fn handle(State(app): State<Arc<App>>, request: Request) -> Response {
    let mut realm_header = None::<String>;
    // The guest this whole request runs on, even if a swap happens meanwhile.
    let guest = app.guests.current();
    let reply = if request.uri().path() == "/_guest" {
        guest_admin(&app, request).await
    } else if request.uri().path() == "/_metrics" {
        Ok(metrics(&app))
    } else {
        route(&app, &guest, request, &mut realm_header).await
    };
    let mut response = reply.unwrap_or_else(|refusal| refusal);
    let headers = response.headers_mut();
    if let Some(realm) = realm_header.and_then(|r| HeaderValue::from_str(&r).ok()) {
        headers.insert("x-boxel-realm-url", realm);
    }
    headers.insert(header::VARY, HeaderValue::from_static("Accept"));
    if let Ok(hash) = HeaderValue::from_str(&guest.short_hash) {
        headers.insert("x-realm-guest", hash);
    }
    response
}

async fn route(app: &App, guest: &Arc<Guest>, request: Request, realm_header: &mut Option<String>) -> Reply {
    let (parts, body) = request.into_parts();
    let method = parts.method.clone();
    let headers = parts.headers;
    let target = match resolve(app, &headers, parts.uri.path()).await? {
        Resolved::Target(t) => t,
        Resolved::Redirect(to) => return Ok(redirect(&to)),
    };
    *realm_header = Some(target.realm.clone());
    let need = match method {
        Method::GET | Method::HEAD | Method::OPTIONS => Need::Read,
        _ => Need::Write,
    };
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let cache = &app.realms;
    let realm = target.realm.clone();
    auth::authorize(&app.secret, &target.realm, need, target.public, authorization, |user| async move {
        cache.permissions(&realm, &user).await.unwrap_or_default()
    })
    .await
    .map_err(|denied| match denied {
        Denied::Unauthenticated(m) => error(StatusCode::UNAUTHORIZED, &m),
        Denied::Forbidden(m) => error(StatusCode::FORBIDDEN, &m),
    })?;

    let media = media_of(&headers);
    let if_match = header_string(&headers, header::IF_MATCH);
    let local = target.local.clone();
    let realm = target.realm.clone();
    let mut response = match (method.clone(), media) {
        (Method::HEAD, _) => head(app, &target).await?,
        (Method::GET, Media::Card) => {
            if let Some(id) = local.strip_suffix(".json") {
                return Ok(redirect(&format!("{realm}{id}")));
            }
            let card = card_answer(run(guest, Call::GetCard { realm, path: local }).await?)?;
            card_response(StatusCode::OK, card, &target, &headers)
        }
        (Method::GET, _) => source(app, &target, &headers).await?,
        (Method::POST, Media::Card) => {
            if !(local.is_empty() || local.ends_with('/')) {
                return Err(error(StatusCode::METHOD_NOT_ALLOWED, "cards are created by POST to the realm or a directory ending in '/'"));
            }
            let body = read_text(body, app.limits.card_bytes).await?;
            let new_name = uuid::Uuid::new_v4().to_string();
            let card = card_answer(run(guest, Call::CreateCard { realm, dir: local, new_name, body }).await?)?;
            let location = card.id.clone();
            let mut response = card_response(StatusCode::CREATED, card, &target, &HeaderMap::new());
            if let Ok(location) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        (Method::PATCH, Media::Card) => {
            let body = read_text(body, app.limits.card_bytes).await?;
            let path = local.strip_suffix(".json").unwrap_or(&local).to_string();
            let card = card_answer(run(guest, Call::PatchCard { realm, path, body, if_match }).await?)?;
            card_response(StatusCode::OK, card, &target, &HeaderMap::new())
        }
        (Method::DELETE, Media::Card) => {
            let path = local.strip_suffix(".json").unwrap_or(&local).to_string();
            run(guest, Call::DeleteCard { realm, path, if_match }).await?;
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::POST, Media::Source) => {
            let content = read_text(body, app.limits.file_bytes).await?;
            match run(guest, Call::WriteSource { realm, path: local, content, if_match }).await? {
                Answer::File(meta) => {
                    let mut response = StatusCode::NO_CONTENT.into_response();
                    set_file_headers(response.headers_mut(), &meta.etag, meta.created, meta.last_modified);
                    response
                }
                _ => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, "the guest answered an unexpected shape")),
            }
        }
        (Method::DELETE, Media::Source) => {
            run(guest, Call::DeleteSource { realm, path: local, if_match }).await?;
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::POST, Media::JsonApi) if local == "_atomic" => {
            let body = read_text(body, app.limits.file_bytes.saturating_mul(4)).await?;
            if serde_json::from_str::<serde::de::IgnoredAny>(&body).is_err() {
                let doc = json!({"errors": [{"title": "Invalid atomic:operations format", "detail": "Request body is not valid JSON"}]});
                return Err(json_response(StatusCode::BAD_REQUEST, JSON_API, &doc));
            }
            match run(guest, Call::Atomic { realm, body }).await? {
                Answer::Text(results) => text_response(StatusCode::CREATED, JSON_API, results),
                _ => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, "the guest answered an unexpected shape")),
            }
        }
        (method, _) => {
            return Err(error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{method} not allowed for {}{} with this Accept header", target.realm, target.local),
            ))
        }
    };
    if target.public.read {
        response.headers_mut().insert("x-boxel-realm-public-readable", HeaderValue::from_static("true"));
    }
    Ok(response)
}

enum Resolved {
    Target(Target),
    Redirect(String),
}

/// Finds the realm whose URL path is the longest prefix of the request
/// path (spec §1, §6: a replica serves every realm of the database,
/// whatever host and port it is reached on). Among realms with the same
/// path, the one on the request's own origin wins.
async fn resolve(app: &App, headers: &HeaderMap, raw_path: &str) -> Result<Resolved, Response> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let path = realm_url::decode(raw_path).map_err(|e| error(StatusCode::BAD_REQUEST, &e.to_string()))?;
    let mut found = best_realm(&app.realms.realms().await, &host, &path);
    if found.is_none() {
        let fresh = app.realms.reload_realms().await.map_err(|e| storage_error(&e))?;
        found = best_realm(&fresh, &host, &path);
    }
    match found {
        Some(Found::Redirect(realm)) => Ok(Resolved::Redirect(realm)),
        Some(Found::Realm { realm, local }) => {
            check_local_path(&local).map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid path '{local}': {e}")))?;
            let public = app.realms.permissions(&realm, "*").await.map_err(|e| storage_error(&e))?;
            Ok(Resolved::Target(Target { realm, local, public }))
        }
        None => Err(error(StatusCode::NOT_FOUND, &format!("no realm serves {path}"))),
    }
}

enum Found {
    Realm { realm: String, local: String },
    Redirect(String),
}

/// The path part of a canonical realm URL (`http://h:p/a/b/` → `/a/b/`).
fn path_of(realm: &str) -> &str {
    let after_scheme = realm.find("://").map(|i| i + 3).unwrap_or(0);
    realm[after_scheme..].find('/').map(|i| &realm[after_scheme + i..]).unwrap_or("/")
}

fn best_realm(realms: &[String], host: &str, path: &str) -> Option<Found> {
    let on_this_host = |r: &String| r.split("://").nth(1).is_some_and(|rest| rest.starts_with(host) && rest[host.len()..].starts_with('/'));
    let best = realms
        .iter()
        .filter(|r| path.starts_with(path_of(r)))
        .max_by_key(|r| (path_of(r).len(), on_this_host(r)));
    match best {
        Some(realm) => Some(Found::Realm { realm: realm.clone(), local: path[path_of(realm).len()..].to_string() }),
        None => realms
            .iter()
            .filter(|r| path_of(r).strip_suffix('/') == Some(path))
            .max_by_key(|r| on_this_host(r))
            .map(|r| Found::Redirect(r.clone())),
    }
}

/// Runs a guest call in its own task: the critical section finishes even
/// if the client disconnects and this request future is dropped.
async fn run(guest: &Arc<Guest>, call: Call) -> Result<Answer, Response> {
    let running = guest.clone();
    let outcome = tokio::spawn(async move { running.run(call).await }).await;
    match outcome {
        Ok(Ok(Ok(answer))) => Ok(answer),
        Ok(Ok(Err(guest_error))) => Err(guest_error_response(guest_error)),
        Ok(Err(trap)) => {
            tracing::error!(guest = %guest.short_hash, error = ?trap, "guest call failed");
            Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the card logic (guest {}) failed: {trap}", guest.short_hash),
            ))
        }
        Err(join_error) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, &format!("request task failed: {join_error}"))),
    }
}

fn card_answer(answer: Answer) -> Result<CardResponse, Response> {
    match answer {
        Answer::Card(card) => Ok(card),
        _ => Err(error(StatusCode::INTERNAL_SERVER_ERROR, "the guest answered an unexpected shape")),
    }
}

fn guest_error_response(e: GuestError) -> Response {
    let (status, message) = match e {
        GuestError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
        GuestError::NotFound(m) => (StatusCode::NOT_FOUND, m),
        GuestError::MethodNotAllowed(m) => (StatusCode::METHOD_NOT_ALLOWED, m),
        GuestError::Conflict(m) => (StatusCode::CONFLICT, m),
        GuestError::PreconditionFailed(m) => (StatusCode::PRECONDITION_FAILED, m),
        GuestError::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
        GuestError::UnsupportedMediaType(m) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, m),
        GuestError::LockHeld(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
        GuestError::LockTimeout(m) | GuestError::Unavailable(m) => {
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, &m);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        GuestError::Storage(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
        GuestError::Atomic(errors) => return atomic_error_response(&errors),
    };
    error(status, &message)
}

/// Validation errors consolidate to 400; otherwise the lowest status wins.
fn atomic_error_response(errors: &[crate::runtime::GuestAtomicError]) -> Response {
    let statuses: Vec<u16> = errors.iter().map(atomic_status).collect();
    let http = if statuses.iter().any(|s| *s == 400 || *s == 422) {
        400
    } else {
        statuses.iter().copied().min().unwrap_or(400)
    };
    let listed: Vec<_> = errors
        .iter()
        .zip(&statuses)
        .map(|(e, status)| json!({"status": status, "title": e.title, "detail": e.detail}))
        .collect();
    let status = StatusCode::from_u16(http).unwrap_or(StatusCode::BAD_REQUEST);
    json_response(status, JSON_API, &json!({ "errors": listed }))
}

fn storage_error(e: &crate::db::DbError) -> Response {
    if e.is_unavailable() {
        let mut response = error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    } else {
        error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
    }
}

/// Prometheus text: how many coalesced commits, and how many requests
/// they carried (members / batches is the mean batch size).
fn metrics(app: &App) -> Response {
    use std::sync::atomic::Ordering;
    let batches = app.stats.batches.load(Ordering::Relaxed);
    let members = app.stats.members.load(Ordering::Relaxed);
    let body = format!(
        "# TYPE realm_write_commits_total counter\nrealm_write_commits_total {batches}\n\
         # TYPE realm_write_requests_committed_total counter\nrealm_write_requests_committed_total {members}\n"
    );
    text_response(StatusCode::OK, "text/plain; version=0.0.4", body)
}

/// Largest guest component accepted by `PUT /_guest`.
const GUEST_UPLOAD_LIMIT: usize = 64 << 20;

/// `PUT /_guest` (component bytes) deploys and activates a guest;
/// `GET /_guest` lists the registry. Both need a guest-admin token.
async fn guest_admin(app: &App, request: Request) -> Reply {
    let (parts, body) = request.into_parts();
    let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let admin = auth::authorize_admin(&app.secret, authorization).map_err(|denied| match denied {
        Denied::Unauthenticated(m) => error(StatusCode::UNAUTHORIZED, &m),
        Denied::Forbidden(m) => error(StatusCode::FORBIDDEN, &m),
    })?;
    match parts.method {
        Method::PUT => {
            let bytes = axum::body::to_bytes(body, GUEST_UPLOAD_LIMIT)
                .await
                .map_err(|_| error(StatusCode::PAYLOAD_TOO_LARGE, &format!("a guest may be at most {GUEST_UPLOAD_LIMIT} bytes")))?
                .to_vec();
            let size = bytes.len();
            let hash = app.guests.switch_to(bytes.clone()).await.map_err(|why| error(StatusCode::BAD_REQUEST, &why))?;
            app.db.store_guest(&bytes, &admin).await.map_err(|e| storage_error(&e))?;
            app.db.activate_guest(&hash, &admin).await.map_err(|e| storage_error(&e))?;
            tracing::info!(guest = %&hash[..12], by = %admin, "guest deployed over HTTP");
            Ok(json_response(StatusCode::OK, "application/json", &json!({"hash": hash, "size": size, "active": true})))
        }
        Method::GET => {
            let versions = app.db.list_guests().await.map_err(|e| storage_error(&e))?;
            let listed: Vec<_> = versions
                .iter()
                .map(|g| json!({"hash": g.hash, "size": g.size, "deployedAt": g.deployed_at, "deployedBy": g.deployed_by, "active": g.active}))
                .collect();
            Ok(json_response(StatusCode::OK, "application/json", &json!({ "guests": listed })))
        }
        method => Err(error(StatusCode::METHOD_NOT_ALLOWED, &format!("{method} not allowed for /_guest (use PUT or GET)"))),
    }
}

/// HEAD: 200 when the realm root, a file, or a card at the path exists.
async fn head(app: &App, target: &Target) -> Reply {
    let exists = target.local.is_empty()
        || target.local.ends_with('/')
        || app.db.read_file(&target.realm, &target.local).await.map_err(|e| storage_error(&e))?.is_some()
        || app.db.read_file(&target.realm, &format!("{}.json", target.local)).await.map_err(|e| storage_error(&e))?.is_some();
    Ok(if exists { StatusCode::OK } else { StatusCode::NOT_FOUND }.into_response())
}

/// GET of a raw file (card+source, or any other Accept).
async fn source(app: &App, target: &Target, request_headers: &HeaderMap) -> Reply {
    let file = app
        .db
        .read_file(&target.realm, &target.local)
        .await
        .map_err(|e| storage_error(&e))?
        .ok_or_else(|| error(StatusCode::NOT_FOUND, &format!("Could not find {}{}", target.realm, target.local)))?;
    let etag = file.etag();
    if if_none_match(request_headers, &etag) {
        return Ok(not_modified(&etag, file.last_modified, target));
    }
    let mut response = text_response(StatusCode::OK, "text/plain; charset=utf-8", file.content);
    set_file_headers(response.headers_mut(), &etag, file.created, file.last_modified);
    set_cache_control(response.headers_mut(), target);
    Ok(response)
}

fn card_response(status: StatusCode, card: CardResponse, target: &Target, request_headers: &HeaderMap) -> Response {
    if status == StatusCode::OK && if_none_match(request_headers, &card.etag) {
        return not_modified(&card.etag, card.last_modified, target);
    }
    let mut response = text_response(status, CARD_JSON, card.body);
    set_file_headers(response.headers_mut(), &card.etag, card.created, card.last_modified);
    set_cache_control(response.headers_mut(), target);
    response
}

fn not_modified(etag: &str, last_modified: i64, target: &Target) -> Response {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&http_date(last_modified)) {
        headers.insert(header::LAST_MODIFIED, v);
    }
    set_cache_control(headers, target);
    response
}

/// `If-None-Match` matches `*` or any listed tag (weak comparison).
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    header_string(headers, header::IF_NONE_MATCH).is_some_and(|value| {
        value
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag)
    })
}

fn set_file_headers(headers: &mut HeaderMap, etag: &str, created: i64, last_modified: i64) {
    if let Ok(v) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&http_date(last_modified)) {
        headers.insert(header::LAST_MODIFIED, v);
    }
    if let Ok(v) = HeaderValue::from_str(&http_date(created)) {
        headers.insert("x-created", v);
    }
}

fn set_cache_control(headers: &mut HeaderMap, target: &Target) {
    let value = if target.public.read {
        "public, max-age=0, must-revalidate"
    } else {
        "private, max-age=0, must-revalidate"
    };
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(value));
}

fn http_date(unix: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64))
}

fn header_string(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// Reads a UTF-8 body of at most `limit` bytes (413 beyond, 400 if not UTF-8).
async fn read_text(body: Body, limit: usize) -> Result<String, Response> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|inner| inner.is::<http_body_util::LengthLimitError>());
        if too_large {
            error(StatusCode::PAYLOAD_TOO_LARGE, &format!("Request body exceeds maximum allowed size ({limit} bytes)"))
        } else {
            error(StatusCode::BAD_REQUEST, &format!("could not read the request body: {e}"))
        }
    })?;
    String::from_utf8(bytes.to_vec()).map_err(|_| error(StatusCode::BAD_REQUEST, "the request body is not valid UTF-8"))
}

fn redirect(to: &str) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// A card-route error in the spec's shape.
pub fn error(status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let doc = json!({"errors": [{"status": status.as_u16(), "title": title, "message": message}]});
    json_response(status, "application/json", &doc)
}

fn json_response(status: StatusCode, content_type: &'static str, doc: &serde_json::Value) -> Response {
    text_response(status, content_type, doc.to_string())
}

fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::{best_realm, Found};

    fn realms() -> Vec<String> {
        ["http://a:1/test/", "http://a:1/test/deep/", "http://b:2/test/", "http://a:1/other/"].map(String::from).to_vec()
    }

    fn realm_of(host: &str, path: &str) -> Option<(String, String)> {
        match best_realm(&realms(), host, path) {
            Some(Found::Realm { realm, local }) => Some((realm, local)),
            _ => None,
        }
    }

    #[test]
    fn the_longest_realm_path_wins_whatever_the_port() {
        assert_eq!(realm_of("a:1", "/test/x.json"), Some(("http://a:1/test/".into(), "x.json".into())));
        assert_eq!(realm_of("a:1", "/test/deep/x"), Some(("http://a:1/test/deep/".into(), "x".into())));
        assert_eq!(realm_of("replica:9", "/other/"), Some(("http://a:1/other/".into(), "".into())));
        assert_eq!(realm_of("b:2", "/test/x"), Some(("http://b:2/test/".into(), "x".into())), "own origin first");
        assert_eq!(realm_of("a:1", "/nothing/x"), None);
    }

    #[test]
    fn a_realm_path_without_its_slash_redirects() {
        assert!(matches!(best_realm(&realms(), "a:1", "/other"), Some(Found::Redirect(r)) if r == "http://a:1/other/"));
    }
}
