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

/// Prometheus text: how many commits, how many write requests and realm
/// batches they carried (requests / commits is the mean batch size), how
/// long writers held their realm's turn and how long the flushes and
/// COMMITs took, how many writers are in the write path now, how many
/// wait for a realm's turn and how many hold one while they wait for the
/// database's lock; how often the realm list was read.
pub(super) fn metrics(app: &App) -> Response {
    use std::sync::atomic::Ordering;
    let s = &app.stats;
    let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let seconds = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as f64 / 1e9;
    let body = format!(
        "# TYPE realm_write_commits_total counter\nrealm_write_commits_total {}\n\
         # TYPE realm_write_requests_committed_total counter\nrealm_write_requests_committed_total {}\n\
         # TYPE realm_write_realm_batches_total counter\nrealm_write_realm_batches_total {}\n\
         # TYPE realm_write_turns_total counter\nrealm_write_turns_total {}\n\
         # TYPE realm_write_turn_seconds_total counter\nrealm_write_turn_seconds_total {:.6}\n\
         # TYPE realm_write_commit_seconds_total counter\nrealm_write_commit_seconds_total {:.6}\n\
         # TYPE realm_write_in_progress gauge\nrealm_write_in_progress {}\n\
         # TYPE realm_write_waiting gauge\nrealm_write_waiting {}\n\
         # TYPE realm_write_opening gauge\nrealm_write_opening {}\n\
         # TYPE realm_list_loads_total counter\nrealm_list_loads_total {}\n",
        count(&s.batches),
        count(&s.members),
        count(&s.realm_batches),
        count(&s.turns),
        seconds(&s.turn_nanos),
        seconds(&s.commit_nanos),
        app.locks.in_progress(),
        app.locks.waiting_total(),
        app.locks.opening(),
        app.realms.loads(),
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
