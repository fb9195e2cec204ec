//! The server's own endpoints, outside every realm: `/_guest` (deploy,
//! activate and list guests; guest-admin token) and `/_metrics`.

use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::app::App;
use super::body::read_body;
use super::responses::{error, json_response, storage_error, text_response, Reply};
use crate::auth;

/// Prometheus text: how many coalesced commits, and how many requests
/// they carried (members / batches is the mean batch size).
pub(super) fn metrics(app: &App) -> Response {
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
pub(super) async fn guest_admin(app: &App, request: Request) -> Reply {
    let (parts, body) = request.into_parts();
    let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let body_read = app.limits.body_read;
    let admin = auth::authorize_admin(&app.secret, authorization).map_err(super::responses::denied)?;
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
