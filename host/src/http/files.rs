//! Answers that carry a stored file or card: HEAD, GET of a raw file, the
//! card response, and their validators and caching headers (`ETag`,
//! `Last-Modified`, `x-created`, `Cache-Control`); conditional requests
//! (`If-None-Match`, and the reading of `If-Match` for the guest).

use std::time::{Duration, UNIX_EPOCH};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::app::App;
use super::file_types::{content_type, has_executable_extension, text_content_type, EXECUTABLE_EXTENSIONS};
use super::resolve::{path_of, Target};
use super::responses::{encode_url, error, redirect, storage_error, text_response, Reply, CARD_JSON};
use crate::guest::runtime::CardResponse;

/// HEAD: 200 when the realm root, a directory, a file, or (asked for as a
/// card) a card exists at the path; 302 where a GET would redirect.
pub(super) async fn head(app: &App, target: &Target, as_card: bool) -> Reply {
    let local = &target.local;
    if local.is_empty() || local.ends_with('/') {
        return Ok(StatusCode::OK.into_response());
    }
    let mut candidates = vec![local.clone()];
    if as_card {
        candidates.push(format!("{local}.json"));
    }
    let found = app.db.existing_paths(&target.realm, &candidates).await.map_err(|e| storage_error(&e))?;
    if !found.is_empty() {
        return Ok(StatusCode::OK.into_response());
    }
    match module_fallback(app, target).await? {
        Some(path) => Ok(redirect_within(target, &path)),
        None => Ok(StatusCode::NOT_FOUND.into_response()),
    }
}

/// GET of a raw file (card+source, or any other Accept), with the content
/// type of its extension. A path without an executable extension that
/// holds no file redirects (302) to the first of `<path>.js .gjs .ts .gts
/// .json` that exists, as Boxel resolves a module specifier.
pub(super) async fn source(app: &App, target: &Target, request_headers: &HeaderMap) -> Reply {
    let Some(file) = app.db.read_file(&target.realm, &target.local).await.map_err(|e| storage_error(&e))? else {
        return match module_fallback(app, target).await? {
            Some(path) => Ok(redirect_within(target, &path)),
            None => Err(error(StatusCode::NOT_FOUND, &format!("Could not find {}{}", target.realm, target.local))),
        };
    };
    let etag = file.etag();
    if if_none_match(request_headers, &etag)? {
        return Ok(not_modified(&etag, file.last_modified, target));
    }
    let content_type = if file.binary { content_type(&target.local) } else { text_content_type(&target.local) };
    let mut response = if file.binary { (StatusCode::OK, file.bytes()).into_response() } else { (StatusCode::OK, file.content).into_response() };
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    set_file_headers(response.headers_mut(), &etag, file.created, file.last_modified);
    set_cache_control(response.headers_mut(), target);
    Ok(response)
}

/// The first `<local><ext>` that exists, for a local path that names no
/// executable extension (and is not a directory).
async fn module_fallback(app: &App, target: &Target) -> Result<Option<String>, Response> {
    let local = &target.local;
    if local.is_empty() || local.ends_with('/') || has_executable_extension(local) {
        return Ok(None);
    }
    let candidates: Vec<String> = EXECUTABLE_EXTENSIONS.iter().chain(&[".json"]).map(|ext| format!("{local}{ext}")).collect();
    let found = app.db.existing_paths(&target.realm, &candidates).await.map_err(|e| storage_error(&e))?;
    Ok(candidates.into_iter().find(|c| found.contains(c)))
}

/// A 302 whose `Location` is the path of `local` in the realm, as Boxel sends it.
fn redirect_within(target: &Target, local: &str) -> Response {
    let url = encode_url(&format!("{}{local}", target.realm));
    redirect(path_of(&url))
}

pub(super) fn card_response(status: StatusCode, card: CardResponse, target: &Target, request_headers: &HeaderMap) -> Response {
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
pub(super) fn precondition(headers: &HeaderMap, name: header::HeaderName) -> Result<Option<String>, Response> {
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

pub(super) fn set_file_headers(headers: &mut HeaderMap, etag: &str, created: i64, last_modified: i64) {
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

pub(super) fn set_cache_control(headers: &mut HeaderMap, target: &Target) {
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

#[cfg(test)]
mod tests {
    use super::precondition;
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
}
