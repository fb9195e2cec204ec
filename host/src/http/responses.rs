//! How the host answers: JSON and text bodies, redirects, URLs fit for a
//! header, and every error shape — the spec's card-route error, a 500 that
//! carries only a correlation id, a 503 with `Retry-After`, and the guest's
//! own and `/_atomic` errors.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::guest::runtime::{atomic_status, GuestError};

pub(crate) const CARD_JSON: &str = "application/vnd.card+json";
pub(crate) const CARD_SOURCE: &str = "application/vnd.card+source";
pub(crate) const JSON_API: &str = "application/vnd.api+json";

/// A finished response or an early refusal; both are responses.
pub(super) type Reply = Result<Response, Response>;

/// A 500 that tells the client only what failed and a correlation id; the
/// details (traps, backtraces, SQL errors) go to the log under that id.
pub(super) fn internal_error(what: &str, detail: &str) -> Response {
    let id = uuid::Uuid::new_v4().to_string();
    tracing::error!(correlation_id = %id, %detail, "{what}");
    let message = format!("{what}; the server log has the details under correlation id {id}");
    let doc = json!({"errors": [{"id": id, "status": 500, "title": "Internal Server Error", "message": message}]});
    json_response(StatusCode::INTERNAL_SERVER_ERROR, "application/json", &doc)
}

/// A 503 with `Retry-After`; `detail` is logged, not sent.
pub(super) fn unavailable(message: &str, detail: &str) -> Response {
    tracing::warn!(%detail, "{message}");
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

pub(super) fn guest_error_response(e: GuestError) -> Response {
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
fn atomic_error_response(errors: &[crate::guest::runtime::GuestAtomicError]) -> Response {
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

pub(super) fn storage_error(e: &crate::store::DbError) -> Response {
    if e.is_unavailable() {
        unavailable("storage is unreachable right now; retry", &e.to_string())
    } else {
        internal_error("storage failed", &e.to_string())
    }
}

/// A URL as it may appear in a header: ASCII, with the path (which our
/// canonical URLs keep percent-decoded) percent-encoded.
pub(super) fn encode_url(url: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
    /// What may not appear raw in a URL path (RFC 3986), `%` included: a
    /// decoded path can hold a literal `%`.
    const PATH: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'<').add(b'>').add(b'?').add(b'`').add(b'{').add(b'}').add(b'\\').add(b'^').add(b'|');
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = url[after_scheme..].find('/').map(|i| after_scheme + i).unwrap_or(url.len());
    let (origin, path) = url.split_at(path_start);
    format!("{origin}{}", utf8_percent_encode(path, PATH))
}

pub(super) fn redirect(to: &str) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// A card-route error in the spec's shape.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let doc = json!({"errors": [{"status": status.as_u16(), "title": title, "message": message}]});
    json_response(status, "application/json", &doc)
}

pub(super) fn json_response(status: StatusCode, content_type: &'static str, doc: &serde_json::Value) -> Response {
    text_response(status, content_type, doc.to_string())
}

pub(super) fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The answer to a refused request: 401, 403, or 503 (permissions unreadable).
pub(super) fn denied(refusal: crate::auth::Denied) -> Response {
    use crate::auth::Denied;
    match refusal {
        Denied::Unauthenticated(m) => error(StatusCode::UNAUTHORIZED, &m),
        Denied::Forbidden(m) => error(StatusCode::FORBIDDEN, &m),
        Denied::Unavailable(detail) => unavailable("the permissions cannot be checked right now; retry", &detail),
    }
}

#[cfg(test)]
mod tests {
    use super::encode_url;

    #[test]
    fn header_urls_are_ascii_and_percent_encoded() {
        assert_eq!(encode_url("http://h:1/test/café"), "http://h:1/test/caf%C3%A9");
        assert_eq!(encode_url("http://h:1/a b/50%/x?y#z"), "http://h:1/a%20b/50%25/x%3Fy%23z");
        assert_eq!(encode_url("http://h:1/plain/Person/1"), "http://h:1/plain/Person/1");
    }
}
