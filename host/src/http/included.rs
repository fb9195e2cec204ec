//! What a card GET adds to the guest's card document, as Boxel answers it:
//! `meta.realmInfo`, and the cards it links to (`linksTo`, and each
//! `field.N` of a `linksToMany`) side-loaded in a top-level `included` —
//! followed through their own links up to [`MAX_DEPTH`], each card once,
//! only cards of the same realm, and the key only when something is in it.
//! `_search` side-loads the linked cards of its results the same way.

use std::collections::HashSet;
use std::sync::Arc;

use axum::response::Response;
use serde_json::Value;
use url::Url;

use super::app::App;
use super::guest_call::{run, unexpected_shape};
use super::realm_meta::realm_info;
use super::responses::{internal_error, storage_error};
use crate::guest::runtime::{Answer, Call, Guest};
use crate::store::FileRow;

/// How many links away from the requested card `included` reaches.
pub(super) const MAX_DEPTH: usize = 3;
/// Most cards one response side-loads.
pub(super) const MAX_INCLUDED: usize = 100;

/// The card document with `meta.realmInfo` and `included`; the flag says
/// whether anything was side-loaded.
pub(super) async fn complete(app: &App, guest: &Arc<Guest>, realm: &str, body: &str) -> Result<(String, bool), Response> {
    let mut doc: Value = serde_json::from_str(body).map_err(|e| internal_error("the card logic answered a document that is not JSON", &e.to_string()))?;
    let info = Value::Object(realm_info(app, realm).await?);
    if let Some(meta) = doc.pointer_mut("/data/meta").and_then(Value::as_object_mut) {
        meta.insert("realmInfo".into(), info.clone());
    }
    let Some(primary) = doc.get("data").cloned() else { return Ok((body.to_string(), false)) };
    let included = side_load(app, guest, realm, &[primary], &info).await?;
    let side_loaded = !included.is_empty();
    if side_loaded {
        if let Some(object) = doc.as_object_mut() {
            object.insert("included".into(), Value::Array(included));
        }
    }
    Ok((doc.to_string(), side_loaded))
}

/// The cards `primaries` link to in `realm`, and theirs, up to
/// [`MAX_DEPTH`] links away: each once, never a primary, at most
/// [`MAX_INCLUDED`], each with `meta.realmInfo`. One guest call per depth.
pub(super) async fn side_load(app: &App, guest: &Arc<Guest>, realm: &str, primaries: &[Value], info: &Value) -> Result<Vec<Value>, Response> {
    let mut seen: HashSet<String> = primaries.iter().filter_map(|p| p.get("id").and_then(Value::as_str)).map(String::from).collect();
    let mut level: Vec<Value> = primaries.to_vec();
    let mut included = Vec::new();
    for _ in 0..MAX_DEPTH {
        let mut wanted = Vec::new();
        for resource in &level {
            for linked in links_in_realm(resource, realm) {
                if included.len() + wanted.len() < MAX_INCLUDED && seen.insert(linked.clone()) {
                    wanted.push(linked[realm.len()..].to_string());
                }
            }
        }
        if wanted.is_empty() {
            break;
        }
        // One query for the level's files rather than one per card.
        let prefetched = match app.db.read_files(realm, &with_json(&wanted)).await {
            Ok(files) => files,
            Err(e) => return Err(storage_error(&e)),
        };
        level = cards(guest, realm, wanted, prefetched).await?;
        for card in &mut level {
            if let Some(meta) = card.pointer_mut("/meta").and_then(Value::as_object_mut) {
                meta.insert("realmInfo".into(), info.clone());
            }
        }
        included.extend(level.iter().cloned());
    }
    Ok(included)
}

/// The file paths of card ids (realm-local, without `.json`).
fn with_json(paths: &[String]) -> Vec<String> {
    paths.iter().map(|p| format!("{p}.json")).collect()
}

/// The `data` resource of each card at `paths` that the card logic can
/// answer, in order; a missing or broken card is left out, as in Boxel.
pub(super) async fn cards(guest: &Arc<Guest>, realm: &str, paths: Vec<String>, prefetched: std::collections::HashMap<String, FileRow>) -> Result<Vec<Value>, Response> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let answer = run(guest, Call::GetCards { realm: realm.to_string(), paths: paths.clone(), prefetched }).await?;
    let Answer::Cards(answers) = answer else { return Err(unexpected_shape(guest)) };
    let mut out = Vec::with_capacity(answers.len());
    for (path, answer) in paths.iter().zip(answers) {
        match answer {
            Ok(card) => match serde_json::from_str::<Value>(&card.body) {
                Ok(Value::Object(mut doc)) => out.extend(doc.remove("data")),
                _ => tracing::warn!(%realm, %path, "the card logic answered a card that is not a JSON document"),
            },
            Err(refused) => tracing::debug!(%realm, %path, ?refused, "card left out"),
        }
    }
    Ok(out)
}

/// The absolute ids (no `.json`) of the cards a resource links to inside
/// `realm`, in the order of its relationships.
fn links_in_realm(resource: &Value, realm: &str) -> Vec<String> {
    let Some(id) = resource.get("id").and_then(Value::as_str).and_then(|id| Url::parse(id).ok()) else { return Vec::new() };
    let Some(relationships) = resource.get("relationships").and_then(Value::as_object) else { return Vec::new() };
    relationships
        .values()
        .filter_map(|r| r.pointer("/links/self").and_then(Value::as_str))
        .filter_map(|link| id.join(link).ok())
        .filter_map(|url| {
            let mut url = url;
            url.set_query(None);
            url.set_fragment(None);
            // Our realm URLs keep their path percent-decoded.
            let decoded = percent_encoding::percent_decode_str(url.as_str()).decode_utf8().ok()?.into_owned();
            let id = decoded.strip_suffix(".json").unwrap_or(&decoded).to_string();
            (id.starts_with(realm) && id.len() > realm.len()).then_some(id)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::links_in_realm;
    use serde_json::json;

    #[test]
    fn links_resolve_against_the_card_and_stay_in_the_realm() {
        let card = json!({"id": "http://h/r/Person/1", "relationships": {
            "friend": {"links": {"self": "./2"}},
            "pets.0": {"links": {"self": "../Pet/a.json"}},
            "pets.1": {"links": {"self": null}},
            "elsewhere": {"links": {"self": "http://h/other/x"}},
            "spaced": {"links": {"self": "../My%20Pet/b"}},
        }});
        assert_eq!(links_in_realm(&card, "http://h/r/"), ["http://h/r/Person/2", "http://h/r/Pet/a", "http://h/r/My Pet/b"]);
    }
}
