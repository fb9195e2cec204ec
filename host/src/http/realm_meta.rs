//! What a client reads about a realm before and around its cards: `_info`
//! (name, icons, visibility), `_mtimes` (every file's modification time),
//! directory listings, and `_readiness-check`. Read straight from storage
//! on every request, so a change committed on any replica shows at once.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::app::App;
use super::resolve::Target;
use super::responses::{error, json_response, storage_error, Reply, JSON_API};
use crate::store::{Database, DbError, Permissions};

/// How long `_readiness-check` waits for the database before saying 503.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /_readiness-check`: 200 when the database answers, else 503 with
/// `Retry-After` and `X-Boxel-Not-Ready` naming what is not ready.
pub(super) async fn readiness(db: &Database) -> Response {
    match tokio::time::timeout(READINESS_TIMEOUT, db.ping()).await {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        outcome => {
            let detail = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {READINESS_TIMEOUT:?}"),
            };
            tracing::warn!(%detail, "readiness check: storage is not ready");
            let mut response = StatusCode::SERVICE_UNAVAILABLE.into_response();
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            headers.insert("x-boxel-not-ready", HeaderValue::from_static("storage"));
            response
        }
    }
}

/// `GET|QUERY <realm>/_info`: the realm's `realm-info` resource, from its
/// `.realm.json` (a plain object), else its `realm.json` (a card), else
/// defaults; `visibility` and `realmUserId` from its permissions.
pub(super) async fn info(app: &App, target: &Target) -> Reply {
    let realm = &target.realm;
    let attributes = realm_info(app, realm).await?;
    let doc = json!({"data": {"id": realm, "type": "realm-info", "attributes": attributes}});
    Ok(json_response(StatusCode::OK, JSON_API, &doc))
}

/// The attributes of the realm's `realm-info` resource.
pub(super) async fn realm_info(app: &App, realm: &str) -> Result<Map<String, Value>, Response> {
    let permissions = app.db.realm_permissions(realm).await.map_err(|e| storage_error(&e))?;
    let mut attributes = Map::new();
    attributes.insert("name".into(), json!("Unnamed Workspace"));
    for key in ["backgroundURL", "iconURL", "showAsCatalog"] {
        attributes.insert(key.into(), Value::Null);
    }
    attributes.insert("visibility".into(), json!(visibility(&permissions)));
    let owner = permissions.iter().find(|(_, p)| p.realm_owner).map(|(user, _)| user.clone());
    attributes.insert("realmUserId".into(), json!(owner));
    attributes.insert("publishable".into(), Value::Null);
    attributes.insert("lastPublishedAt".into(), Value::Null);
    overlay_config(&app.db, realm, &mut attributes).await.map_err(|e| storage_error(&e))?;
    Ok(attributes)
}

/// Boxel's rule: anyone (`*`) → public; a `users` row or more than one
/// user → shared; else private.
fn visibility(permissions: &[(String, Permissions)]) -> &'static str {
    if permissions.iter().any(|(user, _)| user == "*") {
        "public"
    } else if permissions.len() > 1 || permissions.iter().any(|(user, _)| user == "users") {
        "shared"
    } else {
        "private"
    }
}

/// Takes the realm's settings from `.realm.json` (top-level keys) or, when
/// there is none, from the `realm.json` card (`attributes.cardInfo.name`,
/// `attributes.backgroundURL`, …). An unreadable file leaves the defaults.
async fn overlay_config(db: &Database, realm: &str, attributes: &mut Map<String, Value>) -> Result<(), DbError> {
    let (settings, name) = if let Some(file) = db.read_file(realm, ".realm.json").await? {
        let settings = parse_object(&file.content, ".realm.json", realm);
        let name = settings.get("name").cloned();
        (settings, name)
    } else if let Some(file) = db.read_file(realm, "realm.json").await? {
        let card = parse_object(&file.content, "realm.json", realm);
        let settings = card.get("data").and_then(|d| d.get("attributes")).and_then(Value::as_object).cloned().unwrap_or_default();
        let name = settings.get("cardInfo").and_then(|info| info.get("name")).cloned();
        (settings, name)
    } else {
        return Ok(());
    };
    if let Some(Value::String(name)) = name {
        attributes.insert("name".into(), json!(name));
    }
    for key in ["backgroundURL", "iconURL"] {
        if let Some(value) = settings.get(key) {
            attributes.insert(key.into(), if value.is_string() { value.clone() } else { Value::Null });
        }
    }
    for key in ["showAsCatalog", "publishable"] {
        if let Some(value) = settings.get(key) {
            attributes.insert(key.into(), if value.is_boolean() { value.clone() } else { Value::Null });
        }
    }
    Ok(())
}

fn parse_object(content: &str, file: &str, realm: &str) -> Map<String, Value> {
    match serde_json::from_str::<Value>(content) {
        Ok(Value::Object(object)) => object,
        _ => {
            tracing::warn!(%realm, "{file} is not a JSON object; /_info uses the defaults");
            Map::new()
        }
    }
}

/// `GET <realm>/_mtimes`: every file's URL and last modification (unix s).
pub(super) async fn mtimes(app: &App, target: &Target) -> Reply {
    let realm = &target.realm;
    let files = app.db.list_files(realm, "").await.map_err(|e| storage_error(&e))?;
    let mtimes: Map<String, Value> = files.into_iter().map(|f| (format!("{realm}{}", f.path), json!(f.last_modified))).collect();
    let doc = json!({"data": {"id": realm, "type": "mtimes", "attributes": {"mtimes": mtimes}}});
    Ok(json_response(StatusCode::OK, JSON_API, &doc))
}

/// `GET <dir>/` with `application/vnd.api+json`: the directory's entries,
/// one level, sorted; a sub-directory is any prefix of a stored path. 404
/// for a directory that holds no file (the realm root is always there).
pub(super) async fn directory(app: &App, target: &Target) -> Reply {
    let (realm, dir) = (&target.realm, &target.local);
    let files = app.db.list_files(realm, dir).await.map_err(|e| storage_error(&e))?;
    if files.is_empty() && !dir.is_empty() {
        return Err(error(StatusCode::NOT_FOUND, &format!("Could not find {realm}{dir}")));
    }
    let mut entries: BTreeMap<String, Value> = BTreeMap::new();
    for file in files {
        let rest = &file.path[dir.len()..];
        let entry = match rest.split_once('/') {
            Some((sub, _)) => {
                let name = format!("{sub}/");
                let meta = json!({"kind": "directory"});
                (name.clone(), json!({"links": {"related": format!("{realm}{dir}{name}")}, "meta": meta}))
            }
            None => {
                let meta = json!({"kind": "file", "lastModified": file.last_modified, "resourceCreatedAt": file.created});
                (rest.to_string(), json!({"links": {"related": format!("{realm}{}", file.path)}, "meta": meta}))
            }
        };
        entries.entry(entry.0).or_insert(entry.1);
    }
    let relationships: Map<String, Value> = entries.into_iter().collect();
    let doc = json!({"data": {"id": format!("{realm}{dir}"), "type": "directory", "relationships": relationships}});
    Ok(json_response(StatusCode::OK, JSON_API, &doc))
}

#[cfg(test)]
mod tests {
    use super::visibility;
    use crate::store::Permissions;

    #[test]
    fn visibility_follows_boxel() {
        let read = Permissions { read: true, ..Permissions::default() };
        let users = |names: &[&str]| names.iter().map(|n| (n.to_string(), read)).collect::<Vec<_>>();
        assert_eq!(visibility(&users(&["*", "alice"])), "public");
        assert_eq!(visibility(&users(&["alice", "bob"])), "shared");
        assert_eq!(visibility(&users(&["users"])), "shared");
        assert_eq!(visibility(&users(&["alice"])), "private");
        assert_eq!(visibility(&users(&[])), "private");
    }
}
