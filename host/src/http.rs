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
use crate::write_lock::BatchStats;

pub const CARD_JSON: &str = "application/vnd.card+json";
pub const CARD_SOURCE: &str = "application/vnd.card+source";
pub const JSON_API: &str = "application/vnd.api+json";

/// What one request may send.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    /// Card POST/PATCH bodies.
    pub card_bytes: usize,
    /// Source POST bodies.
    pub file_bytes: usize,
    /// `/_atomic` bodies.
    pub atomic_bytes: usize,
    /// Operations in one `/_atomic` request.
    pub atomic_operations: usize,
    /// JSON values (objects, arrays, strings, numbers…) in one JSON body
    /// the guest will parse: what bounds the guest's memory per request.
    pub json_values: usize,
    /// How long a client may take to send a whole body (408 beyond).
    pub body_read: Duration,
}

/// Everything a request handler needs.
pub struct App {
    pub db: Database,
    pub guests: Arc<Guests>,
    pub secret: String,
    pub limits: RequestLimits,
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
        limits: RequestLimits,
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
            // One `vary` header for both CORS and our routing by Accept.
            tower_http::cors::CorsLayer::permissive()
                .vary([
                    header::ORIGIN,
                    header::ACCESS_CONTROL_REQUEST_METHOD,
                    header::ACCESS_CONTROL_REQUEST_HEADERS,
                    header::ACCEPT,
                ])
                .expose_headers([
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
    if let Some(realm) = realm_header.and_then(|r| HeaderValue::from_str(&encode_url(&r)).ok()) {
        headers.insert("x-boxel-realm-url", realm);
    }
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
    let if_match = precondition(&headers, header::IF_MATCH)?;
    // Read now so an unreadable one is refused on every route.
    precondition(&headers, header::IF_NONE_MATCH)?;
    let local = target.local.clone();
    let realm = target.realm.clone();
    let mut response = match (method.clone(), media) {
        (Method::HEAD, _) => head(app, &target).await?,
        (Method::GET, Media::Card) => {
            if let Some(id) = local.strip_suffix(".json") {
                return Ok(redirect(&encode_url(&format!("{realm}{id}"))));
            }
            let card = card_answer(run(guest, Call::GetCard { realm, path: local }).await?)?;
            card_response(StatusCode::OK, card, &target, &headers)
        }
        (Method::GET, _) => source(app, &target, &headers).await?,
        (Method::POST, Media::Card) => {
            if !(local.is_empty() || local.ends_with('/')) {
                return Err(error(StatusCode::METHOD_NOT_ALLOWED, "cards are created by POST to the realm or a directory ending in '/'"));
            }
            let body = read_text(body, &headers, app.limits.card_bytes, app.limits.body_read).await?;
            check_json_values(&body, app.limits.json_values)?;
            let new_name = uuid::Uuid::new_v4().to_string();
            let card = card_answer(run(guest, Call::CreateCard { realm, dir: local, new_name, body }).await?)?;
            let location = card.id.clone();
            let mut response = card_response(StatusCode::CREATED, card, &target, &HeaderMap::new());
            if let Ok(location) = HeaderValue::from_str(&encode_url(&location)) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        (Method::PATCH, Media::Card) => {
            let body = read_text(body, &headers, app.limits.card_bytes, app.limits.body_read).await?;
            check_json_values(&body, app.limits.json_values)?;
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
            let content = read_text(body, &headers, app.limits.file_bytes, app.limits.body_read).await?;
            if local.ends_with(".json") {
                // The guest parses a `.json` file to index it as a card.
                check_json_values(&content, app.limits.json_values)?;
            }
            match run(guest, Call::WriteSource { realm, path: local, content, if_match }).await? {
                Answer::File(meta) => {
                    let mut response = StatusCode::NO_CONTENT.into_response();
                    set_file_headers(response.headers_mut(), &meta.etag, meta.created, meta.last_modified);
                    response
                }
                _ => return Err(unexpected_shape(guest)),
            }
        }
        (Method::DELETE, Media::Source) => {
            run(guest, Call::DeleteSource { realm, path: local, if_match }).await?;
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::POST, Media::JsonApi) if local == "_atomic" => {
            let body = read_text(body, &headers, app.limits.atomic_bytes, app.limits.body_read).await?;
            check_atomic_size(&body, app.limits.atomic_operations)?;
            check_json_values(&body, app.limits.json_values)?;
            match run(guest, Call::Atomic { realm, body }).await? {
                Answer::Text(results) => text_response(StatusCode::CREATED, JSON_API, results),
                _ => return Err(unexpected_shape(guest)),
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
    // The realm list is kept in memory (see `RealmCache`): a path under no
    // realm costs no query.
    match best_realm(&app.realms.realms(), &host, &path) {
        Some(Found::Redirect(realm)) => Ok(Resolved::Redirect(encode_url(&realm))),
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
        Ok(Err(trap)) => Err(internal_error(&format!("the card logic (guest {}) failed", guest.short_hash), &format!("{trap:?}"))),
        Err(join_error) => Err(internal_error("the request failed", &join_error.to_string())),
    }
}

fn unexpected_shape(guest: &Guest) -> Response {
    internal_error(&format!("the card logic (guest {}) answered an unexpected shape", guest.short_hash), "unexpected answer variant")
}

fn card_answer(answer: Answer) -> Result<CardResponse, Response> {
    match answer {
        Answer::Card(card) => Ok(card),
        _ => Err(internal_error("the card logic answered an unexpected shape", "expected a card response")),
    }
}

/// A 500 that tells the client only what failed and a correlation id; the
/// details (traps, backtraces, SQL errors) go to the log under that id.
fn internal_error(what: &str, detail: &str) -> Response {
    let id = uuid::Uuid::new_v4().to_string();
    tracing::error!(correlation_id = %id, %detail, "{what}");
    let message = format!("{what}; the server log has the details under correlation id {id}");
    let doc = json!({"errors": [{"id": id, "status": 500, "title": "Internal Server Error", "message": message}]});
    json_response(StatusCode::INTERNAL_SERVER_ERROR, "application/json", &doc)
}

/// A 503 with `Retry-After`; `detail` is logged, not sent.
fn unavailable(message: &str, detail: &str) -> Response {
    tracing::warn!(%detail, "{message}");
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
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
        // The message is the host's own (which realm), not an internal.
        GuestError::LockHeld(m) => return internal_error(&format!("the card logic erred: {m}"), "lock-held"),
        GuestError::LockTimeout(m) => return unavailable("the realm is busy: its write lock could not be had in time; retry", &m),
        GuestError::Unavailable(m) => return unavailable("the server or its storage is busy or unreachable right now; retry", &m),
        GuestError::Storage(m) => return internal_error("storage failed", &m),
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
        unavailable("storage is unreachable right now; retry", &e.to_string())
    } else {
        internal_error("storage failed", &e.to_string())
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
         # TYPE realm_write_requests_committed_total counter\nrealm_write_requests_committed_total {members}\n\
         # TYPE realm_list_loads_total counter\nrealm_list_loads_total {loads}\n",
        loads = app.realms.loads(),
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
    let body_read = app.limits.body_read;
    let admin = auth::authorize_admin(&app.secret, authorization).map_err(|denied| match denied {
        Denied::Unauthenticated(m) => error(StatusCode::UNAUTHORIZED, &m),
        Denied::Forbidden(m) => error(StatusCode::FORBIDDEN, &m),
    })?;
    match parts.method {
        Method::PUT => {
            let bytes = read_body(body, &parts.headers, GUEST_UPLOAD_LIMIT, body_read).await?;
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
    if if_none_match(request_headers, &etag)? {
        return Ok(not_modified(&etag, file.last_modified, target));
    }
    let mut response = text_response(StatusCode::OK, "text/plain; charset=utf-8", file.content);
    set_file_headers(response.headers_mut(), &etag, file.created, file.last_modified);
    set_cache_control(response.headers_mut(), target);
    Ok(response)
}

fn card_response(status: StatusCode, card: CardResponse, target: &Target, request_headers: &HeaderMap) -> Response {
    if status == StatusCode::OK && if_none_match(request_headers, &card.etag).unwrap_or(false) {
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
fn if_none_match(headers: &HeaderMap, etag: &str) -> Result<bool, Response> {
    Ok(precondition(headers, header::IF_NONE_MATCH)?.is_some_and(|value| {
        value
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag)
    }))
}

/// A precondition header (`If-Match`, `If-None-Match`), all its lines
/// joined. One that cannot be read is refused, never ignored: ignoring it
/// would let a write go through that the client meant to make conditional.
fn precondition(headers: &HeaderMap, name: header::HeaderName) -> Result<Option<String>, Response> {
    let mut joined: Option<String> = None;
    for value in headers.get_all(&name) {
        let text = value.to_str().map_err(|_| {
            error(StatusCode::BAD_REQUEST, &format!("the {name} header cannot be read: entity tags are visible ASCII characters"))
        })?;
        match &mut joined {
            Some(all) => {
                all.push_str(", ");
                all.push_str(text);
            }
            None => joined = Some(text.to_string()),
        }
    }
    Ok(joined)
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

fn too_large(limit: usize) -> Response {
    error(StatusCode::PAYLOAD_TOO_LARGE, &format!("Request body exceeds maximum allowed size ({limit} bytes)"))
}

/// Reads a body of at most `limit` bytes within `deadline`: 413 at once
/// when `Content-Length` announces more, 413 when more arrives, 408 when
/// the client is too slow.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize, deadline: Duration) -> Result<Vec<u8>, Response> {
    let announced = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|length| length > limit as u64) {
        return Err(too_large(limit));
    }
    let read = tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await.map_err(|_| {
        error(StatusCode::REQUEST_TIMEOUT, &format!("the request body did not arrive within {deadline:?}"))
    })?;
    let bytes = read.map_err(|e| {
        let over = std::error::Error::source(&e).is_some_and(|inner| inner.is::<http_body_util::LengthLimitError>());
        if over {
            too_large(limit)
        } else {
            error(StatusCode::BAD_REQUEST, "could not read the request body")
        }
    })?;
    Ok(bytes.to_vec())
}

/// [`read_body`], which must be UTF-8 (400 otherwise).
async fn read_text(body: Body, headers: &HeaderMap, limit: usize, deadline: Duration) -> Result<String, Response> {
    let bytes = read_body(body, headers, limit, deadline).await?;
    String::from_utf8(bytes).map_err(|_| error(StatusCode::BAD_REQUEST, "the request body is not valid UTF-8"))
}

/// Refuses an `/_atomic` body that is not JSON (400, in the atomic error
/// shape) or carries more operations than allowed (413), before the guest
/// spends memory on it. Counting does not build the document.
fn check_atomic_size(body: &str, max_operations: usize) -> Result<(), Response> {
    match serde_json::from_str::<AtomicShape>(body) {
        Err(_) => {
            let doc = json!({"errors": [{"title": "Invalid atomic:operations format", "detail": "Request body is not valid JSON"}]});
            Err(json_response(StatusCode::BAD_REQUEST, JSON_API, &doc))
        }
        Ok(AtomicShape { operations: Some(count) }) if count > max_operations => {
            let detail = format!("{count} operations in one request; at most {max_operations} are allowed (split the request)");
            let doc = json!({"errors": [{"status": 413, "title": "Too many operations", "detail": detail}]});
            Err(json_response(StatusCode::PAYLOAD_TOO_LARGE, JSON_API, &doc))
        }
        Ok(_) => Ok(()),
    }
}

/// Refuses (413) a JSON body with more than `max` values, counting them
/// without building the document and stopping at the first one too many.
/// A body that is not JSON passes: the guest answers that in its own words.
fn check_json_values(body: &str, max: usize) -> Result<(), Response> {
    use serde::de::DeserializeSeed;
    let count = std::cell::Cell::new(0usize);
    let mut deserializer = serde_json::Deserializer::from_str(body);
    match (CountValues { count: &count, max }).deserialize(&mut deserializer) {
        Err(e) if e.to_string().starts_with(TOO_MANY_VALUES) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the JSON document holds more than {max} values (objects, arrays, strings, numbers); split it or simplify it"),
        )),
        _ => Ok(()),
    }
}

const TOO_MANY_VALUES: &str = "too many JSON values";

/// Counts every value of a JSON document into `count`, failing past `max`.
struct CountValues<'a> {
    count: &'a std::cell::Cell<usize>,
    max: usize,
}

impl CountValues<'_> {
    fn one<E: serde::de::Error>(&self) -> Result<(), E> {
        self.count.set(self.count.get() + 1);
        if self.count.get() > self.max {
            Err(E::custom(TOO_MANY_VALUES))
        } else {
            Ok(())
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for CountValues<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for CountValues<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.one()?;
        while seq.next_element_seed(CountValues { count: self.count, max: self.max })?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.one()?;
        while map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            map.next_value_seed(CountValues { count: self.count, max: self.max })?;
        }
        Ok(())
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> { self.one() }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> { self.one() }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> { self.one() }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> { self.one() }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> { self.one() }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> { self.one() }
}

/// Just enough of an `/_atomic` body to count its operations.
struct AtomicShape {
    operations: Option<usize>,
}

impl<'de> serde::Deserialize<'de> for AtomicShape {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

        /// Counts the elements of an array without keeping them.
        struct Count(Option<usize>);
        impl<'de> serde::Deserialize<'de> for Count {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct CountVisitor;
                impl<'de> Visitor<'de> for CountVisitor {
                    type Value = Count;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("any JSON value")
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                        let mut n = 0;
                        while seq.next_element::<IgnoredAny>()?.is_some() {
                            n += 1;
                        }
                        Ok(Count(Some(n)))
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Count, A::Error> {
                        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                        Ok(Count(None))
                    }
                    fn visit_bool<E>(self, _: bool) -> Result<Count, E> { Ok(Count(None)) }
                    fn visit_i64<E>(self, _: i64) -> Result<Count, E> { Ok(Count(None)) }
                    fn visit_u64<E>(self, _: u64) -> Result<Count, E> { Ok(Count(None)) }
                    fn visit_f64<E>(self, _: f64) -> Result<Count, E> { Ok(Count(None)) }
                    fn visit_str<E>(self, _: &str) -> Result<Count, E> { Ok(Count(None)) }
                    fn visit_unit<E>(self) -> Result<Count, E> { Ok(Count(None)) }
                }
                deserializer.deserialize_any(CountVisitor)
            }
        }

        struct ShapeVisitor;
        impl<'de> Visitor<'de> for ShapeVisitor {
            type Value = AtomicShape;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AtomicShape, A::Error> {
                let mut operations = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "atomic:operations" {
                        operations = map.next_value::<Count>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(AtomicShape { operations })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AtomicShape, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(AtomicShape { operations: None })
            }
            fn visit_bool<E>(self, _: bool) -> Result<AtomicShape, E> { Ok(AtomicShape { operations: None }) }
            fn visit_i64<E>(self, _: i64) -> Result<AtomicShape, E> { Ok(AtomicShape { operations: None }) }
            fn visit_u64<E>(self, _: u64) -> Result<AtomicShape, E> { Ok(AtomicShape { operations: None }) }
            fn visit_f64<E>(self, _: f64) -> Result<AtomicShape, E> { Ok(AtomicShape { operations: None }) }
            fn visit_str<E>(self, _: &str) -> Result<AtomicShape, E> { Ok(AtomicShape { operations: None }) }
            fn visit_unit<E>(self) -> Result<AtomicShape, E> { Ok(AtomicShape { operations: None }) }
        }
        deserializer.deserialize_any(ShapeVisitor)
    }
}

/// A URL as it may appear in a header: ASCII, with the path (which our
/// canonical URLs keep percent-decoded) percent-encoded.
fn encode_url(url: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
    /// What may not appear raw in a URL path (RFC 3986), `%` included: a
    /// decoded path can hold a literal `%`.
    const PATH: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'<').add(b'>').add(b'?').add(b'`').add(b'{').add(b'}').add(b'\\').add(b'^').add(b'|');
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = url[after_scheme..].find('/').map(|i| after_scheme + i).unwrap_or(url.len());
    let (origin, path) = url.split_at(path_start);
    format!("{origin}{}", utf8_percent_encode(path, PATH))
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
    use super::{best_realm, check_atomic_size, check_json_values, encode_url, precondition, Found};
    use axum::http::{header, HeaderMap, HeaderValue, StatusCode};

    #[test]
    fn unreadable_preconditions_are_refused_not_ignored() {
        let mut headers = HeaderMap::new();
        assert_eq!(precondition(&headers, header::IF_MATCH).ok(), Some(None));
        headers.append(header::IF_MATCH, HeaderValue::from_static("\"a\""));
        headers.append(header::IF_MATCH, HeaderValue::from_static("\"b\""));
        assert_eq!(precondition(&headers, header::IF_MATCH).ok(), Some(Some("\"a\", \"b\"".to_string())));
        headers.append(header::IF_MATCH, HeaderValue::from_bytes(b"\"wrong\xff\"").expect("obs-text is a valid header value"));
        let refused = precondition(&headers, header::IF_MATCH).expect_err("non-ASCII etag");
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn header_urls_are_ascii_and_percent_encoded() {
        assert_eq!(encode_url("http://h:1/test/café"), "http://h:1/test/caf%C3%A9");
        assert_eq!(encode_url("http://h:1/a b/50%/x?y#z"), "http://h:1/a%20b/50%25/x%3Fy%23z");
        assert_eq!(encode_url("http://h:1/plain/Person/1"), "http://h:1/plain/Person/1");
    }

    #[test]
    fn json_bodies_are_bounded_by_their_number_of_values() {
        assert!(check_json_values(r#"{"a":[1,2,{"b":null}]}"#, 6).is_ok());
        let refused = check_json_values(r#"{"a":[1,2,{"b":null}]}"#, 5).expect_err("7 values");
        assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(check_json_values("not json", 1).is_ok(), "the guest answers invalid JSON itself");
    }

    #[test]
    fn atomic_bodies_are_counted_before_the_guest_sees_them() {
        let ops = |n: usize| format!(r#"{{"x":1,"atomic:operations":[{}]}}"#, vec![r#"{"op":"remove"}"#; n].join(","));
        assert!(check_atomic_size(&ops(3), 3).is_ok());
        assert_eq!(check_atomic_size(&ops(4), 3).expect_err("4 > 3").status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(check_atomic_size("{", 3).expect_err("not JSON").status(), StatusCode::BAD_REQUEST);
        assert!(check_atomic_size(r#"{"atomic:operations":"x"}"#, 3).is_ok(), "the guest reports the shape");
    }

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
