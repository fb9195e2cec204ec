//! The body of a card create or PATCH: `{data, included?}` parsing, and
//! the side-loaded (`included`) cards written with the primary one, whose
//! local ids (`lid`) the relationships are promoted to.

use serde_json::Value;

use super::{card_dir_name, serialize_with_index};
use crate::error::{Error, Result};
use crate::paths;
use crate::serialize::{absolutize_refs, check_card_shape, is_card_resource};
use crate::store::CardIndex;

/// A card body `{data, included?}`.
pub(super) struct CardBody {
    pub(super) data: Value,
    pub(super) included: Vec<Value>,
}

pub(super) fn parse_card_body(body: &str, not_json: &str, invalid: &str) -> Result<CardBody> {
    let mut doc: Value =
        serde_json::from_str(body).map_err(|_| Error::BadRequest(not_json.to_string()))?;
    let data = doc.get_mut("data").map(Value::take).unwrap_or(Value::Null);
    if !is_card_resource(&data) {
        return Err(Error::BadRequest(invalid.to_string()));
    }
    check_card_shape(&data).map_err(|why| Error::BadRequest(format!("{invalid}: {why}")))?;
    let included = match doc.get_mut("included").map(Value::take) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(Error::BadRequest(format!(
                "{invalid}: included is not array"
            )))
        }
    };
    if !included.iter().all(is_card_resource) {
        return Err(Error::BadRequest(format!(
            "{invalid}: side-loaded data is not a valid card resource"
        )));
    }
    for (i, resource) in included.iter().enumerate() {
        check_card_shape(resource)
            .map_err(|why| Error::BadRequest(format!("{invalid}: included[{i}]: {why}")))?;
    }
    Ok(CardBody { data, included })
}

/// A side-loaded (`included`) card to write with the primary one.
pub(super) struct SideLoad {
    pub(super) path: String,
    pub(super) content: String,
    pub(super) index: CardIndex,
}

/// Plan the `included` cards of a create/patch: entries with a `lid` whose
/// `meta.realmURL` is absent or this realm go to `<dir><DirName>/<lid>.json`;
/// others are skipped. Their relative references are taken relative to
/// `base`. Relationships with a `data.lid` (in `primary` and in the
/// side-loaded cards) are promoted to point at those files.
pub(super) fn side_loads(
    realm: &str,
    dir: &str,
    base: &str,
    included: &[Value],
    primary: &mut Value,
    primary_path: &str,
) -> Result<Vec<SideLoad>> {
    let this_realm = paths::ensure_trailing_slash(realm);
    let mut targets: Vec<(String, String, String, &Value)> = Vec::new(); // (lid, id, path, resource)
    for resource in included {
        let Some(lid) = resource.get("lid").and_then(Value::as_str) else {
            continue;
        };
        let realm_url = resource
            .get("meta")
            .and_then(|m| m.get("realmURL"))
            .and_then(Value::as_str);
        if realm_url.is_some_and(|r| paths::ensure_trailing_slash(r) != this_realm) {
            continue;
        }
        if !paths::is_safe_segment(lid) {
            return Err(Error::BadRequest(format!(
                "Invalid local id '{lid}' in included"
            )));
        }
        if targets.iter().any(|(l, ..)| l == lid) {
            return Err(Error::BadRequest(format!(
                "Duplicate local id '{lid}' in included"
            )));
        }
        let path = format!("{dir}{}/{lid}.json", card_dir_name(resource));
        if path == primary_path {
            return Err(Error::BadRequest(format!(
                "Local id '{lid}' in included collides with the card being written"
            )));
        }
        targets.push((
            lid.to_string(),
            paths::card_id(realm, &path),
            path,
            resource,
        ));
    }
    let ids: Vec<(String, String)> = targets
        .iter()
        .map(|(l, id, ..)| (l.clone(), id.clone()))
        .collect();
    promote_lids(primary, &ids)?;
    targets
        .into_iter()
        .map(|(_, _, path, resource)| {
            let mut resource = resource.clone();
            absolutize_refs(&mut resource, base)?;
            promote_lids(&mut resource, &ids)?;
            let (content, index) = serialize_with_index(&resource, realm, &path)?;
            Ok(SideLoad {
                path,
                content,
                index,
            })
        })
        .collect()
}

/// The id a `data` entry with a `lid` (and no `id`) is promoted to.
fn lid_target(data: &Value, ids: &[(String, String)]) -> Result<Option<String>> {
    if data.get("id").is_some_and(Value::is_string) {
        return Ok(None);
    }
    let Some(lid) = data.get("lid").and_then(Value::as_str) else {
        return Ok(None);
    };
    match ids.iter().find(|(l, _)| l == lid) {
        Some((_, id)) => Ok(Some(id.clone())),
        None => Err(Error::BadRequest(format!(
            "Could not find local id {lid} in included"
        ))),
    }
}

/// Boxel's `promoteLocalIdsToRemoteIds`: a relationship whose `data` has a
/// `lid` gets `links.self` = the side-loaded card's id (array `data`
/// entries get that `id`). An unknown lid is a `BadRequest`.
fn promote_lids(resource: &mut Value, ids: &[(String, String)]) -> Result<()> {
    let Some(Value::Object(rels)) = resource.get_mut("relationships") else {
        return Ok(());
    };
    for (_, rel) in rels.iter_mut() {
        match rel {
            Value::Array(items) => {
                for item in items.iter_mut() {
                    promote_relationship(item, ids)?;
                }
            }
            other => promote_relationship(other, ids)?,
        }
    }
    Ok(())
}

fn promote_relationship(rel: &mut Value, ids: &[(String, String)]) -> Result<()> {
    let Value::Object(obj) = rel else {
        return Ok(());
    };
    let promoted = match obj.get_mut("data") {
        Some(Value::Array(items)) => {
            for item in items.iter_mut() {
                if let (Some(id), Value::Object(d)) = (lid_target(item, ids)?, &mut *item) {
                    d.insert("id".into(), Value::String(id));
                }
            }
            None
        }
        Some(data @ Value::Object(_)) => lid_target(data, ids)?,
        _ => None,
    };
    if let Some(id) = promoted {
        match obj.get_mut("links") {
            Some(Value::Object(links)) => {
                links.insert("self".into(), Value::String(id));
            }
            _ => {
                obj.insert("links".into(), serde_json::json!({ "self": id }));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::handlers::test_support::*;
    use crate::handlers::{create_card, patch_card};
    use crate::memory::MemoryStore;
    use serde_json::json;

    #[test]
    fn create_with_included_promotes_lids() {
        let store = MemoryStore::new();
        let body = json!({
            "data": {
                "type": "card",
                "attributes": {"firstName": "Van"},
                "relationships": {
                    "pet": {"data": {"type": "card", "lid": "p1"}},
                    "friends": {"data": [{"type": "card", "lid": "p2"}, {"type": "card", "id": "http://localhost:4201/test/Person/old"}]}
                },
                "meta": {"adoptsFrom": {"module": "./person.gts", "name": "Person"}}
            },
            "included": [
                {"type": "card", "lid": "p1", "attributes": {"name": "Mango"},
                 "meta": {"adoptsFrom": {"module": "http://localhost:4201/test/pet.gts", "name": "Pet"}}},
                {"type": "card", "lid": "p2", "attributes": {"firstName": "Hassan"},
                 "meta": {"adoptsFrom": {"module": "http://localhost:4201/test/person", "name": "Person"}, "realmURL": "http://localhost:4201/test"}},
                {"type": "card", "lid": "elsewhere", "attributes": {},
                 "meta": {"adoptsFrom": {"module": "./x", "name": "X"}, "realmURL": "http://localhost:4201/other/"}},
                {"type": "card", "attributes": {}, "meta": {"adoptsFrom": {"module": "./x", "name": "X"}}}
            ]
        });
        create_card(&store, REALM, "", "van", &body.to_string()).unwrap();
        assert_eq!(
            store.paths(REALM),
            vec!["Person/p2.json", "Person/van.json", "Pet/p1.json"]
        );
        assert_eq!(store.commits(), 1);
        let primary = stored_data(&store, "Person/van.json");
        assert_eq!(
            primary["relationships"],
            json!({"pet": {"links": {"self": "../Pet/p1"}},
                   "friends.0": {"links": {"self": "./p2"}},
                   "friends.1": {"links": {"self": "./old"}}})
        );
        assert_eq!(
            stored_data(&store, "Pet/p1.json")["attributes"]["name"],
            "Mango"
        );
        assert_eq!(
            stored_data(&store, "Pet/p1.json")["meta"]["adoptsFrom"]["module"],
            "../pet"
        );
        assert_eq!(
            store.index_row(REALM, "Pet/p1.json").unwrap().id,
            "http://localhost:4201/test/Pet/p1"
        );
    }

    #[test]
    fn patch_with_included_writes_side_loads() {
        let store = seeded();
        let body = json!({
            "data": {"relationships": {"pet": {"data": {"type": "card", "lid": "m"}}},
                     "meta": {"adoptsFrom": {"module": "./person", "name": "Person"}}},
            "included": [{"lid": "m", "attributes": {"name": "Mango"},
                          "meta": {"adoptsFrom": {"module": "./pet", "name": "Pet"}}}]
        });
        patch_card(&store, REALM, "person-1", &body.to_string(), None).unwrap();
        assert_eq!(
            stored_data(&store, "person-1.json")["relationships"],
            json!({"pet": {"links": {"self": "./Pet/m"}}})
        );
        // Alike in shape to the create test's checks, but of PATCH: the module is relative to the patched card, and the row's type is checked.
        assert_eq!(
            stored_data(&store, "Pet/m.json")["attributes"]["name"],
            "Mango"
        );
        // the included card's module is relative to the patched card, re-relativised for Pet/m.json
        assert_eq!(
            stored_data(&store, "Pet/m.json")["meta"]["adoptsFrom"]["module"],
            "../pet"
        );
        assert_eq!(
            store.index_row(REALM, "Pet/m.json").unwrap().card_type,
            "http://localhost:4201/test/pet#Pet"
        );
    }
}
