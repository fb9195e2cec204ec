//! Files of any type, written as they are: `POST <path>` with a body that
//! is neither a card document nor card source (`application/octet-stream`,
//! `image/png`, …). The bytes are stored byte-exact under the realm's
//! write lock — the same lock the guest writes under — with no card logic
//! involved, since there is none for bytes. (A `.json` path goes through
//! the guest instead, as card source, so its card index stays right.)

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::app::App;
use super::body::read_body;
use super::files::set_file_headers;
use super::resolve::Target;
use super::responses::{error, internal_error, unavailable, Reply};
use crate::lock::WriteError;
use crate::store::etag_of;

/// Stores the request body at the target's path; 204 with its validators.
/// `user`: whose grant let the request in, checked again under the lock.
pub(super) async fn write(app: &App, target: &Target, headers: &HeaderMap, body: Body, if_match: Option<String>, user: Option<&str>) -> Reply {
    let (realm, local) = (&target.realm, &target.local);
    if local.is_empty() || local.ends_with('/') || local.starts_with('_') {
        return Err(error(StatusCode::METHOD_NOT_ALLOWED, &format!("POST not allowed for {realm}{local}: a file is written to a file path outside `_`")));
    }
    let bytes = read_body(body, headers, app.limits.file_bytes, app.limits.body_read).await?;
    let mut txn = app.locks.acquire_for(&app.db, realm, vec![local.clone()]).await.map_err(write_refused)?;
    if !txn.may_write(user) {
        let _ = txn.rollback().await;
        return Err(super::responses::denied(crate::auth::write_refused(user, realm)));
    }
    txn.set_client_request_id(super::guest_call::client_request_id(headers));
    if let Some(expected) = if_match {
        let current = match txn.read(local).await {
            Ok(current) => current,
            Err(e) => return Err(abandon(txn, e).await),
        };
        let matches = current.as_ref().is_some_and(|file| if_match_matches(&expected, &file.etag()));
        if !matches {
            let _ = txn.rollback().await;
            let why = if current.is_some() { "does not match the current ETag of" } else { "given but there is no file at" };
            return Err(error(StatusCode::PRECONDITION_FAILED, &format!("If-Match {why} {realm}{local}")));
        }
    }
    let written = match txn.write_bytes(local, bytes).await {
        Ok(written) => written,
        Err(e) => return Err(abandon(txn, e).await),
    };
    txn.commit().await.map_err(write_refused)?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    set_file_headers(response.headers_mut(), &etag_of(&written.content_hash), written.created, written.last_modified);
    Ok(response)
}

/// `If-Match: *` or a list holding this strong tag (as the guest decides it).
fn if_match_matches(header: &str, etag: &str) -> bool {
    let header = header.trim();
    header == "*" || header.split(',').map(str::trim).any(|tag| !tag.starts_with("W/") && tag == etag)
}

/// Rolls the write back, then answers why it failed.
async fn abandon(txn: crate::lock::WriteTxn, e: WriteError) -> Response {
    let _ = txn.rollback().await;
    write_refused(e)
}

fn write_refused(e: WriteError) -> Response {
    match e {
        WriteError::TooLarge(m) => error(StatusCode::PAYLOAD_TOO_LARGE, &m),
        WriteError::Invalid(m) => error(StatusCode::BAD_REQUEST, &m),
        WriteError::LockTimeout(m) => unavailable("the realm is busy: its write lock could not be had in time; retry", &m),
        WriteError::Unavailable(m) => unavailable("the server or its storage is busy or unreachable right now; retry", &m),
        WriteError::Storage(m) => internal_error("storage failed", &m),
    }
}
