//! `GET|PATCH <realm>/_permissions` (realm owners only): who may do what
//! in the realm. PATCH merges per user — a list sets that user's
//! permissions, `[]` or `null` removes them — and refuses, as Boxel does,
//! to touch a realm owner or to make a new one. It commits in one
//! transaction, and permissions are read per request, so the change holds
//! on every replica before the response returns.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Map, Value};

use super::app::App;
use super::body::read_text;
use super::resolve::Target;
use super::responses::{error, json_response, storage_error, Reply, JSON_API};
use crate::store::Permissions;

/// The realm's `permissions` document.
pub(super) async fn get(app: &App, target: &Target) -> Reply {
    let rows = app.db.realm_permissions(&target.realm).await.map_err(|e| storage_error(&e))?;
    let permissions: Map<String, Value> = rows.into_iter().map(|(user, p)| (user, json!(names(p)))).collect();
    let doc = json!({"data": {"id": target.realm, "type": "permissions", "attributes": {"permissions": permissions}}});
    Ok(json_response(StatusCode::OK, JSON_API, &doc))
}

/// Applies a permissions patch, then answers the whole document.
pub(super) async fn patch(app: &App, target: &Target, headers: &HeaderMap, body: Body) -> Reply {
    let text = read_text(body, headers, app.limits.card_bytes, app.limits.body_read).await?;
    let changes = parse_patch(&text).map_err(|message| error(StatusCode::BAD_REQUEST, &message))?;
    let current = app.db.realm_permissions(&target.realm).await.map_err(|e| storage_error(&e))?;
    for (user, change) in &changes {
        if current.iter().any(|(owner, p)| owner == user && p.realm_owner) {
            return Err(error(StatusCode::BAD_REQUEST, &format!("cannot modify permissions of the realm owner {user}")));
        }
        if change.is_some_and(|p| p.realm_owner) {
            return Err(error(StatusCode::BAD_REQUEST, &format!("cannot create new realm owner {user}")));
        }
    }
    app.db.update_permissions(&target.realm, &changes).await.map_err(|e| storage_error(&e))?;
    get(app, target).await
}

/// `{"data":{"attributes":{"permissions":{user: [names] | null}}}}` →
/// each user's new permissions (`None`: remove), with Boxel's messages.
fn parse_patch(text: &str) -> Result<Vec<(String, Option<Permissions>)>, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("The request body was not json: {e}"))?;
    let patch = doc.pointer("/data/attributes/permissions").filter(|p| is_truthy(p));
    let patch = patch.ok_or("The request body was missing permissions")?;
    let invalid = |why: String| format!("The request body does not specify realm permissions correctly: {why}");
    let users = patch.as_object().ok_or_else(|| invalid("permissions must be an object".into()))?;
    let mut changes = Vec::with_capacity(users.len());
    for (user, listed) in users {
        if user.is_empty() || user.chars().any(char::is_control) {
            return Err(invalid(format!("user {user:?} must be a non-empty name without control characters")));
        }
        let listed = match listed {
            Value::Null => Vec::new(),
            Value::Array(listed) => listed.clone(),
            _ => return Err(invalid("permissions must be an array or null".into())),
        };
        let mut granted = Permissions::default();
        for name in &listed {
            match name.as_str() {
                Some("read") => granted.read = true,
                Some("write") => granted.write = true,
                Some("realm-owner") => granted.realm_owner = true,
                _ => {
                    let shown = name.as_str().map_or_else(|| name.to_string(), str::to_string);
                    return Err(invalid(format!("'{shown}' is not a valid permission")));
                }
            }
        }
        changes.push((user.clone(), (granted != Permissions::default()).then_some(granted)));
    }
    Ok(changes)
}

/// JavaScript truthiness, as Boxel's `if (!patch)` sees it.
fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

fn names(p: Permissions) -> Vec<&'static str> {
    let mut names = Vec::new();
    if p.read {
        names.push("read");
    }
    if p.write {
        names.push("write");
    }
    if p.realm_owner {
        names.push("realm-owner");
    }
    names
}

#[cfg(test)]
mod tests {
    use super::parse_patch;
    use crate::store::Permissions;

    #[test]
    fn patches_are_validated_with_boxels_messages() {
        let body = |permissions: &str| format!(r#"{{"data":{{"type":"permissions","attributes":{{"permissions":{permissions}}}}}}}"#);
        let read = Permissions { read: true, ..Permissions::default() };
        assert_eq!(parse_patch(&body(r#"{"bob":["read"],"carol":[],"dave":null}"#)), Ok(vec![("bob".into(), Some(read)), ("carol".into(), None), ("dave".into(), None)]));
        assert!(parse_patch("{").unwrap_err().starts_with("The request body was not json"));
        assert_eq!(parse_patch(r#"{"data":{}}"#).unwrap_err(), "The request body was missing permissions");
        assert!(parse_patch(&body(r#"["read"]"#)).unwrap_err().ends_with("permissions must be an object"));
        assert!(parse_patch(&body(r#"{"bob":"read"}"#)).unwrap_err().ends_with("permissions must be an array or null"));
        assert!(parse_patch(&body(r#"{"bob":["admin"]}"#)).unwrap_err().ends_with("'admin' is not a valid permission"));
        assert!(parse_patch(&body(r#"{"bob":[1]}"#)).unwrap_err().ends_with("'1' is not a valid permission"));
        assert!(parse_patch(&body(r#"{"":["read"]}"#)).is_err());
    }
}
