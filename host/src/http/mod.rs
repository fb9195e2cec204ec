//! The HTTP data plane of spec §1–4: finds the realm and local path of a
//! request, checks permissions, picks the route by media type, runs the
//! guest (in its own task, so a client that goes away cannot cancel a
//! critical section halfway) and turns its answer into a response.
//! Early refusals travel as `Err(Response)`: they are the response.
#![allow(clippy::result_large_err)]

// Lowest first; each file uses only the ones above it.
// Answer shapes: bodies, redirects, header URLs and every error.
mod responses;
// Request bodies: size limits, deadlines, JSON counting.
mod body;
// What every handler shares (`App`) and the request limits.
mod app;
// Which realm and local path a request addresses.
mod resolve;
// What a file is from its name: content type, module extensions, FileDef.
mod file_types;
// File and card answers: validators, caching, conditional requests.
mod files;
// Which media type a request asks for, parameters included.
mod media;
// `/_guest` and `/_metrics`.
mod admin;
// `_info`, `_mtimes`, directory listings, `_readiness-check`.
mod realm_meta;
// `_permissions`.
mod permissions;
// `file-meta` documents: a non-card file asked for as a card.
mod file_meta;
// Running one guest call in its own task.
mod guest_call;
// Files of any type, written byte-exact under the realm's lock.
mod binary;
// `meta.realmInfo` and the linked cards of a card GET.
mod included;
// `_search`: the three request forms, the answer document.
mod search;
// `_events`: a realm's events as Server-Sent Events.
mod events;
// The accept loop: connection cap, header and idle deadlines, graceful drain.
pub mod listener;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

use admin::{guest_admin, metrics};
use body::{check_atomic_body, check_json_values, read_text};
use files::{card_response, head, precondition, set_file_headers, source};
use media::{media_of, Media};
use resolve::{resolve, Resolved, Target};
use responses::{encode_url, error, guest_error_response, redirect, text_response, Reply};
use responses::JSON_API;
use crate::auth::{self, Denied, Need};
use crate::guest::runtime::{Answer, Call, Guest, GuestError};
use guest_call::{card_answer, run_call, run_write, unexpected_shape};

pub use app::{App, RequestLimits};

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

/// The realm a response belongs to, for its `x-boxel-realm-*` headers.
struct RealmHeaders {
    url: String,
    public_readable: bool,
}

async fn handle(State(app): State<Arc<App>>, request: Request) -> Response {
    let mut realm_headers = None::<RealmHeaders>;
    // The guest this whole request runs on, even if a swap happens meanwhile.
    let guest = app.guests.current();
    let reply = match request.uri().path() {
        "/_guest" => guest_admin(&app, request).await,
        "/_metrics" => Ok(metrics(&app)),
        "/_readiness-check" if request.method() == Method::GET => Ok(realm_meta::readiness(&app.db).await),
        _ => route(&app, &guest, request, &mut realm_headers).await,
    };
    let mut response = reply.unwrap_or_else(|refusal| refusal);
    let headers = response.headers_mut();
    if let Some(realm) = realm_headers {
        if let Ok(url) = HeaderValue::from_str(&encode_url(&realm.url)) {
            headers.insert("x-boxel-realm-url", url);
        }
        if realm.public_readable {
            headers.insert("x-boxel-realm-public-readable", HeaderValue::from_static("true"));
        }
    }
    if let Ok(hash) = HeaderValue::from_str(&guest.short_hash) {
        headers.insert("x-realm-guest", hash);
    }
    response
}

/// The method a request means: `POST` with `X-HTTP-Method-Override: QUERY`
/// is a `QUERY` (a read with a body), as in Boxel.
fn method_of(method: &Method, headers: &HeaderMap) -> Method {
    let overridden = headers.get("x-http-method-override").and_then(|v| v.to_str().ok());
    match overridden {
        Some(name) if *method == Method::POST && name.trim().eq_ignore_ascii_case("QUERY") => {
            Method::from_bytes(b"QUERY").unwrap_or_else(|_| method.clone())
        }
        _ => method.clone(),
    }
}

/// What a request needs: realm endpoints their own, else read for the
/// methods that change nothing and write for the rest.
fn need_of(method: &Method, local: &str) -> Need {
    if local == "_permissions" {
        return Need::RealmOwner;
    }
    match *method {
        Method::GET | Method::HEAD | Method::OPTIONS => Need::Read,
        _ if method.as_str() == "QUERY" => Need::Read,
        _ => Need::Write,
    }
}

async fn route(app: &App, guest: &Arc<Guest>, request: Request, realm_headers: &mut Option<RealmHeaders>) -> Reply {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let method = method_of(&parts.method, &headers);
    let mut target = match resolve(app, &headers, parts.uri.path())? {
        Resolved::Target(t) => t,
        Resolved::Redirect(to) => return Ok(redirect(&to)),
    };
    let need = need_of(&method, &target.local);
    let authorized = authorize(app, &mut target, need, &headers).await;
    *realm_headers = Some(RealmHeaders { url: target.realm.clone(), public_readable: target.public.read });
    if method == Method::GET && target.local == "_readiness-check" {
        return Ok(realm_meta::readiness(&app.db).await);
    }
    if method == Method::HEAD {
        // HEAD needs no credentials (as in Boxel): a client learns which
        // realm a URL is in and whether it is public. Whether the path
        // exists is told only to those who may read it.
        return match authorized {
            Ok(_) => head(app, &target, media_of(&headers).is_ok_and(|m| m == Media::Card)).await,
            Err(Denied::Unavailable(detail)) => Err(responses::denied(Denied::Unavailable(detail))),
            Err(_) => Ok(StatusCode::OK.into_response()),
        };
    }
    // Whose grant let the request in: a write lock checks it again.
    let user = authorized.map_err(responses::denied)?;

    if method == Method::GET && target.local == "_events" && accepts_event_stream(&headers) {
        let stalls = parts.extensions.get::<Arc<listener::WriteStalls>>().cloned();
        return events::stream(app, &target, &headers, parts.uri.query(), stalls).await;
    }
    let media = media_of(&headers)?;
    let if_match = precondition(&headers, header::IF_MATCH)?;
    // Read now so an unreadable one is refused on every route.
    precondition(&headers, header::IF_NONE_MATCH)?;
    let local = target.local.clone();
    let realm = target.realm.clone();
    let is_query = method.as_str() == "QUERY";
    let response = match (method.clone(), media) {
        (Method::GET, Media::JsonApi) if local == "_info" => realm_meta::info(app, &target).await?,
        (_, Media::JsonApi) if is_query && local == "_info" => realm_meta::info(app, &target).await?,
        (Method::GET, Media::JsonApi) if local == "_mtimes" => realm_meta::mtimes(app, &target).await?,
        (Method::GET, Media::JsonApi) if local == "_permissions" => permissions::get(app, &target).await?,
        (Method::PATCH, Media::JsonApi) if local == "_permissions" => permissions::patch(app, &target, &headers, body).await?,
        (Method::GET, Media::JsonApi) if local.is_empty() || local.ends_with('/') => realm_meta::directory(app, &target).await?,
        (Method::GET, Media::Card) if local == "_search" => search::get(app, guest, &target, parts.uri.query().unwrap_or("")).await?,
        (_, Media::Card) if is_query && local == "_search" => {
            let body = read_text(body, &headers, app.limits.card_bytes, app.limits.body_read).await?;
            check_json_values(&body, app.limits.json_values)?;
            search::query(app, guest, &target, &body).await?
        }
        (Method::GET, Media::Card) => {
            if let Some(id) = local.strip_suffix(".json") {
                return Ok(redirect(&encode_url(&format!("{realm}{id}"))));
            }
            match run_call(guest, Call::GetCard { realm, path: local }, user).await? {
                Ok(answer) => {
                    let mut card = card_answer(answer)?;
                    let (body, side_loaded) = included::complete(app, guest, &target.realm, &card.body).await?;
                    card.body = body;
                    // The ETag is the card file's: with linked cards in the
                    // answer, a 304 could hide a change to one of them.
                    let conditions = if side_loaded { HeaderMap::new() } else { headers.clone() };
                    card_response(StatusCode::OK, card, &target, &conditions)
                }
                // A file that is not a card: its `file-meta` document.
                Err(GuestError::UnsupportedMediaType(message)) => match file_meta::document(app, &target).await? {
                    Some(document) => document,
                    None => return Err(guest_error_response(GuestError::UnsupportedMediaType(message))),
                },
                Err(refused) => return Err(guest_error_response(refused)),
            }
        }
        (Method::GET, _) => source(app, &target, &headers).await?,
        (Method::POST, Media::Card) => {
            if !(local.is_empty() || local.ends_with('/')) {
                return Err(error(StatusCode::METHOD_NOT_ALLOWED, "cards are created by POST to the realm or a directory ending in '/'"));
            }
            let body = read_text(body, &headers, app.limits.card_bytes, app.limits.body_read).await?;
            check_json_values(&body, app.limits.json_values)?;
            let new_name = uuid::Uuid::new_v4().to_string();
            let card = card_answer(run_write(guest, Call::CreateCard { realm, dir: local, new_name, body }, &headers, user).await?)?;
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
            let card = card_answer(run_write(guest, Call::PatchCard { realm, path, body, if_match }, &headers, user).await?)?;
            card_response(StatusCode::OK, card, &target, &HeaderMap::new())
        }
        (Method::DELETE, Media::Card) => {
            let path = local.strip_suffix(".json").unwrap_or(&local).to_string();
            run_write(guest, Call::DeleteCard { realm, path, if_match }, &headers, user).await?;
            StatusCode::NO_CONTENT.into_response()
        }
        // Card source; also any other body for a `.json` path (the guest
        // indexes it as a card).
        (Method::POST, Media::Source | Media::Other) if media == Media::Source || local.ends_with(".json") => {
            let content = read_text(body, &headers, app.limits.file_bytes, app.limits.body_read).await?;
            if local.ends_with(".json") {
                // The guest parses a `.json` file to index it as a card.
                check_json_values(&content, app.limits.json_values)?;
            }
            match run_write(guest, Call::WriteSource { realm, path: local, content, if_match }, &headers, user).await? {
                Answer::File(meta) => {
                    let mut response = StatusCode::NO_CONTENT.into_response();
                    set_file_headers(response.headers_mut(), &meta.etag, meta.created, meta.last_modified);
                    response
                }
                _ => return Err(unexpected_shape(guest)),
            }
        }
        (Method::POST, Media::Other) => binary::write(app, &target, &headers, body, if_match, user.as_deref()).await?,
        (Method::DELETE, Media::Source) => {
            run_write(guest, Call::DeleteSource { realm, path: local, if_match }, &headers, user).await?;
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::POST, Media::JsonApi) if local == "_atomic" => {
            let body = read_text(body, &headers, app.limits.atomic_bytes, app.limits.body_read).await?;
            check_atomic_body(&body, app.limits.atomic_operations, app.limits.json_values)?;
            match run_write(guest, Call::Atomic { realm, body }, &headers, user).await? {
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
    Ok(response)
}

/// Whether `Accept` names `text/event-stream`.
fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| item.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream")))
}

/// Checks the request's credentials against what it needs in the realm,
/// filling in what anyone may do there; answers whose grant let it in.
/// A write goes by the permissions as last read (its write lock checks
/// them again, as read under the realm's lock), falling back to reading
/// them when those say no; everything else reads them now.
async fn authorize(app: &App, target: &mut Target, need: Need, headers: &HeaderMap) -> Result<Option<String>, Denied> {
    if need == Need::Write {
        if let Ok(user) = authorize_with(app, target, need, headers, true).await {
            return Ok(user);
        }
    }
    authorize_with(app, target, need, headers, false).await
}

async fn authorize_with(app: &App, target: &mut Target, need: Need, headers: &HeaderMap, cached: bool) -> Result<Option<String>, Denied> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let realms = &app.realms;
    let realm = target.realm.as_str();
    let permissions = |user: String| async move {
        let read = if cached { realms.cached_permissions(realm, &user).await } else { realms.permissions(realm, &user).await };
        read.map_err(|e| Denied::Unavailable(e.to_string()))
    };
    let public = permissions("*".to_string()).await?;
    let result = auth::authorize(&app.secret, realm, need, public, authorization, permissions).await;
    target.public = public;
    result
}

