//! PATCH merge: applies a PATCH `data` resource onto a stored card resource
//! (spec §2 "PATCH merge", steps 1–4). Pure JSON in, JSON out.
//!
//! Deliberate choices where lodash/Boxel are quirky:
//! - An object merged onto an array, or an array onto an object, replaces
//!   the original value wholesale (lodash would merge the object's keys
//!   into the array); only object-onto-object merges recursively.
//! - Relationship grouping (step 4) runs when the patch carries a
//!   `relationships` object; a patch without relationships leaves the
//!   stored relationships byte-for-byte alone (so `{}` is an identity).
//! - An empty array-valued relationship `field: []` in the patch is a
//!   present, empty plural group: it clears `field.0…n` (Boxel ignores it).
//!   The merged `relationships` replaces the original even when empty.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::paths;
use crate::tree::{Members, Tree};

/// Keys of `meta` that the server owns; dropped from a patch.
pub const SERVER_META_KEYS: [&str; 4] =
    ["realmURL", "realmInfo", "lastModified", "resourceCreatedAt"];

/// Deep merge like lodash `mergeWith(a, b, arraysReplace)`: objects merge
/// recursively keeping `a`'s key order (new keys appended in `b`'s order),
/// arrays replace wholesale, `null` and primitives overwrite. Anything that
/// is not object-onto-object is a replacement by `b`.
pub fn deep_merge(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Object(ao), Value::Object(bo)) => {
            let mut out = ao.clone();
            merge_into(&mut out, bo);
            Value::Object(out)
        }
        _ => b.clone(),
    }
}

/// Merges `patch` into `target`; answers whether `target` now differs
/// from what it was (as `Value` equality sees it).
fn merge_into(target: &mut Map<String, Value>, patch: &Map<String, Value>) -> bool {
    let mut changed = false;
    for (k, pv) in patch {
        changed |= merge_entry(target, k, pv);
    }
    changed
}

/// [`merge_into`] of one key of the patch.
fn merge_entry(target: &mut Map<String, Value>, k: &str, pv: &Value) -> bool {
    match target.get_mut(k) {
        Some(tv) => match (tv, pv) {
            (Value::Object(to), Value::Object(po)) => merge_into(to, po),
            (tv, pv) => {
                let changed = *tv != *pv;
                *tv = pv.clone();
                changed
            }
        },
        None => {
            target.insert(k.to_string(), pv.clone());
            true
        }
    }
}

/// Merge the PATCH resource `patch` onto the stored resource `original` of
/// the card at `card_url` (spec §2 steps 1–4):
/// 1. drop `type`, `id`, `links` and the server-owned `meta` keys from the patch;
/// 2. type guard: a patch `meta.adoptsFrom` must resolve (against `card_url`,
///    executable extension trimmed) to the same `module#name` as the
///    original's, else `BadRequest("Cannot change card instance type to <json>")`;
/// 3. [`deep_merge`];
/// 4. relationships: `field.N` keys and array-valued `field` form one plural
///    group per field; a group in the patch replaces the original group,
///    singular relationships deep-merge, a singular key overwrites a group of
///    the same name; groups are re-emitted as `field.0…field.n`.
pub fn merge_patch(original: &Value, patch: &Value, card_url: &str) -> Result<Value> {
    let original = Resource::of(original.clone())?;
    merge_patch_owned(original, patch, card_url).map(|(merged, _)| merged.into_value())
}

/// [`merge_patch`] onto an `original` it may take apart (no copy of the
/// card); also answers whether the result differs from the original, as
/// `merged != original` would.
pub fn merge_patch_owned(original: Resource, patch: &Value, card_url: &str) -> Result<(Resource, bool)> {
    let mut merged = original;
    let mut patch = patch
        .as_object()
        .ok_or_else(|| Error::BadRequest("The patch is not a JSON object".into()))?
        .clone();

    // Step 1.
    strip_patch(&mut patch);

    // Step 2.
    type_guard(&merged.rest, &patch, card_url)?;

    // Step 3. Relationships step 4 regroups (whenever the patch has an
    // object of them) count as changed only if they end up different.
    let regrouped = matches!(patch.get("relationships"), Some(Value::Object(_)));
    let rels_before = if regrouped { merged.rest.get("relationships").cloned() } else { None };
    let mut changed = false;
    for (k, pv) in &patch {
        let this = if k == "attributes" { merged.merge_attributes(pv) } else { merge_entry(&mut merged.rest, k, pv) };
        changed |= this && !(regrouped && k == "relationships");
    }

    // Step 4.
    if let Some(Value::Object(patch_rels)) = patch.get("relationships") {
        if let Some(Value::Object(merged_rels)) = merged.rest.get_mut("relationships") {
            let combined =
                deep_merge_groups(format_for_merge(merged_rels), format_for_merge(patch_rels));
            *merged_rels = revert_merge_format(combined);
        }
    }
    if regrouped {
        changed |= merged.rest.get("relationships") != rels_before.as_ref();
    }
    Ok((merged, changed))
}

/// Text form of [`merge_patch`] for the `logic.merge` export: both inputs
/// are JSON text (invalid JSON → `BadRequest`); answers compact JSON.
pub fn merge_patch_text(original: &str, patch: &str, card_url: &str) -> Result<String> {
    let original: Tree = serde_json::from_str(original)
        .map_err(|e| Error::BadRequest(format!("original is not valid JSON: {e}")))?;
    let patch: Value = serde_json::from_str(patch)
        .map_err(|e| Error::BadRequest(format!("patch is not valid JSON: {e}")))?;
    let Tree::Object(original) = original else {
        return Err(not_an_object());
    };
    let (merged, _) = merge_patch_owned(Resource::of_members(original), &patch, card_url)?;
    serde_json::to_string(&merged).map_err(|e| Error::Storage(e.to_string()))
}

fn not_an_object() -> Error {
    Error::BadRequest("The stored card resource is not a JSON object".into())
}

/// A card resource as a merge works on it: its attributes (most of the
/// card) as a [`Tree`], its other members as `serde_json` values, and where
/// among them the attributes stand.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub attributes: Option<Tree>,
    /// The other members, in order (removing one before the attributes'
    /// place moves where they print).
    pub rest: Map<String, Value>,
    /// How many of `rest`'s members come before the attributes.
    attributes_at: usize,
}

impl Resource {
    /// The resource `value` is (`BadRequest` if it is not an object).
    pub fn of(value: Value) -> Result<Resource> {
        let Value::Object(map) = value else {
            return Err(not_an_object());
        };
        Ok(Resource::split(map, Tree::from, |v| v))
    }

    /// The resource whose members these are.
    pub fn of_members(members: Members) -> Resource {
        Resource::split(members, |tree| tree, Tree::into_value)
    }

    /// The resource of `members`: its attributes made a [`Tree`] by
    /// `attributes`, the other members made values by `other`.
    fn split<V>(members: impl IntoIterator<Item = (String, V)>, attributes: impl Fn(V) -> Tree, other: impl Fn(V) -> Value) -> Resource {
        let mut resource = Resource { attributes: None, rest: Map::new(), attributes_at: 0 };
        for (k, v) in members {
            if k == "attributes" {
                resource.attributes_at = resource.rest.len();
                resource.attributes = Some(attributes(v));
            } else {
                resource.rest.insert(k, other(v));
            }
        }
        resource
    }

    /// [`merge_entry`] of the patch's `attributes`.
    fn merge_attributes(&mut self, patch: &Value) -> bool {
        match &mut self.attributes {
            Some(attributes) => attributes.merge(patch),
            None => {
                self.attributes_at = self.rest.len();
                self.attributes = Some(Tree::from(patch));
                true
            }
        }
    }

    /// The resource as one `serde_json` value, its members in order.
    pub fn into_value(self) -> Value {
        let mut out = Map::new();
        let mut attributes = self.attributes.map(|a| (self.attributes_at, a));
        for (i, (k, v)) in self.rest.into_iter().enumerate() {
            if let Some((_, a)) = attributes.take_if(|(at, _)| *at == i) {
                out.insert("attributes".into(), a.into_value());
            }
            out.insert(k, v);
        }
        if let Some((_, a)) = attributes {
            out.insert("attributes".into(), a.into_value());
        }
        Value::Object(out)
    }
}

/// Printed as its [`Resource::into_value`] prints.
impl Serialize for Resource {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let len = self.rest.len() + usize::from(self.attributes.is_some());
        let mut map = serializer.serialize_map(Some(len))?;
        let attributes = self.attributes.as_ref().map(|a| (self.attributes_at, a));
        for (i, (k, v)) in self.rest.iter().enumerate() {
            if let Some((_, a)) = attributes.filter(|(at, _)| *at == i) {
                map.serialize_entry("attributes", a)?;
            }
            map.serialize_entry(k, v)?;
        }
        if let Some((_, a)) = attributes.filter(|(at, _)| *at >= self.rest.len()) {
            map.serialize_entry("attributes", a)?;
        }
        map.end()
    }
}

fn strip_patch(patch: &mut Map<String, Value>) {
    for key in ["type", "id", "links"] {
        patch.shift_remove(key);
    }
    if let Some(Value::Object(meta)) = patch.get_mut("meta") {
        for key in SERVER_META_KEYS {
            meta.shift_remove(key);
        }
    }
}

fn type_guard(orig: &Map<String, Value>, patch: &Map<String, Value>, card_url: &str) -> Result<()> {
    let Some(patch_meta) = patch.get("meta") else {
        return Ok(());
    };
    let patch_ref = match patch_meta {
        Value::Object(m) => match m.get("adoptsFrom") {
            Some(r) => r,
            None => return Ok(()),
        },
        // `meta: null` (or any non-object) would erase the card's type.
        other => other,
    };
    let stored_ref = orig.get("meta").and_then(|m| m.get("adoptsFrom"));
    if let (Value::Object(p), Some(Value::Object(o))) = (patch_ref, stored_ref) {
        // The same strings resolve against the same URL to the same key:
        // the usual PATCH sends back the type it read, so skip resolving it.
        let same = |k: &str| matches!((p.get(k), o.get(k)), (Some(Value::String(a)), Some(Value::String(b))) if a == b);
        if same("module") && same("name") {
            return Ok(());
        }
    }
    let refused = || {
        Error::BadRequest(format!(
            "Cannot change card instance type to {}",
            serde_json::to_string(patch_ref).unwrap_or_default()
        ))
    };
    let base = paths::parse_url(card_url)?;
    let key_of = |r: &Value| -> Option<String> {
        let module = r.get("module")?.as_str()?;
        let name = r.get("name")?.as_str()?;
        paths::type_key(module, name, &base).ok()
    };
    let patch_key = key_of(patch_ref).ok_or_else(refused)?;
    let orig_key = stored_ref.and_then(key_of);
    if orig_key.as_deref() == Some(patch_key.as_str()) {
        Ok(())
    } else {
        Err(refused())
    }
}

/// One field's relationships while merging: a plural group or a singular value.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    Group(Vec<Value>),
    Single(Value),
}

/// `field.N` → (`field`, N) when the last dot-separated part is all digits.
fn plural_field_name(key: &str) -> Option<&str> {
    let (name, index) = key.rsplit_once('.')?;
    (!name.is_empty() && !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
        .then_some(name)
}

/// Boxel's `_formatForMerge`: group `field.N` keys and array-valued `field`
/// (in key order) into plural groups; a singular key overwrites a group.
fn format_for_merge(rels: &Map<String, Value>) -> Vec<(String, Entry)> {
    let mut out: Vec<(String, Entry)> = Vec::new();
    for (key, value) in rels {
        let (name, items): (&str, Option<&[Value]>) = match value {
            Value::Array(items) => (key.as_str(), Some(items.as_slice())),
            _ => match plural_field_name(key) {
                Some(name) => (name, Some(std::slice::from_ref(value))),
                None => (key.as_str(), None),
            },
        };
        let pos = out.iter().position(|(k, _)| k == name);
        let entry = match items {
            Some(items) => {
                let mut group = match pos.map(|i| &mut out[i].1) {
                    Some(Entry::Group(g)) => std::mem::take(g),
                    _ => Vec::new(),
                };
                group.extend(items.iter().cloned());
                Entry::Group(group)
            }
            None => Entry::Single(value.clone()),
        };
        match pos {
            Some(i) => out[i].1 = entry,
            None => out.push((name.to_string(), entry)),
        }
    }
    out
}

/// `mergeWith(a, b, arraysReplace)` over formatted relationship maps.
fn deep_merge_groups(
    mut base: Vec<(String, Entry)>,
    patch: Vec<(String, Entry)>,
) -> Vec<(String, Entry)> {
    for (key, pe) in patch {
        match base.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => {
                slot.1 = match (&slot.1, pe) {
                    (Entry::Single(a), Entry::Single(b)) => Entry::Single(deep_merge(a, &b)),
                    (_, other) => other,
                };
            }
            None => base.push((key, pe)),
        }
    }
    base
}

/// Boxel's `_revertMergeFormat`: groups become `field.0…field.n`.
fn revert_merge_format(entries: Vec<(String, Entry)>) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, entry) in entries {
        match entry {
            Entry::Group(items) => {
                for (i, v) in items.into_iter().enumerate() {
                    out.insert(format!("{key}.{i}"), v);
                }
            }
            Entry::Single(v) => {
                out.insert(key, v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const CARD: &str = "http://localhost:4201/test/Person/1";

    fn person() -> Value {
        json!({"module": "../person", "name": "Person"})
    }

    fn base(extra: Value) -> Value {
        deep_merge(
            &json!({"type": "card", "attributes": {}, "meta": {"adoptsFrom": person()}}),
            &extra,
        )
    }

    /// (name, original, patch, expected merged)
    fn cases() -> Vec<(&'static str, Value, Value, Value)> {
        vec![
            (
                "primitives overwrite, absent keys kept",
                base(json!({"attributes": {"a": 1, "b": "x"}})),
                json!({"attributes": {"a": 2}}),
                base(json!({"attributes": {"a": 2, "b": "x"}})),
            ),
            (
                "arrays replace wholesale",
                base(json!({"attributes": {"tags": ["a", "b", "c"]}})),
                json!({"attributes": {"tags": ["z"]}}),
                base(json!({"attributes": {"tags": ["z"]}})),
            ),
            (
                "arrays of objects replace, no element merge",
                base(json!({"attributes": {"xs": [{"a": 1, "b": 2}]}})),
                json!({"attributes": {"xs": [{"a": 9}]}}),
                base(json!({"attributes": {"xs": [{"a": 9}]}})),
            ),
            (
                "null overwrites and does not delete",
                base(json!({"attributes": {"a": 1, "b": {"c": 2}}})),
                json!({"attributes": {"a": null, "b": null}}),
                base(json!({"attributes": {"a": null, "b": null}})),
            ),
            (
                "nested objects merge",
                base(
                    json!({"attributes": {"cardInfo": {"title": "t", "summary": "s", "deep": {"x": 1, "y": 2}}}}),
                ),
                json!({"attributes": {"cardInfo": {"summary": "S", "deep": {"y": 3, "z": 4}}}}),
                base(
                    json!({"attributes": {"cardInfo": {"title": "t", "summary": "S", "deep": {"x": 1, "y": 3, "z": 4}}}}),
                ),
            ),
            (
                "object onto array replaces (lodash quirk rejected)",
                base(json!({"attributes": {"v": [1, 2]}})),
                json!({"attributes": {"v": {"0": 9}}}),
                base(json!({"attributes": {"v": {"0": 9}}})),
            ),
            (
                "array onto object replaces",
                base(json!({"attributes": {"v": {"a": 1}}})),
                json!({"attributes": {"v": [1]}}),
                base(json!({"attributes": {"v": [1]}})),
            ),
            (
                "server keys dropped from the patch",
                base(json!({"attributes": {"a": 1}})),
                json!({"type": "other", "id": "http://x/y", "links": {"self": "http://x/y"},
                       "meta": {"realmURL": "http://x/", "realmInfo": {}, "lastModified": 5, "resourceCreatedAt": 4}}),
                base(json!({"attributes": {"a": 1}})),
            ),
            (
                "./person.gts equals ../person in the type guard",
                base(json!({})),
                json!({"meta": {"adoptsFrom": {"module": "../person.gts", "name": "Person"}}}),
                base(
                    json!({"meta": {"adoptsFrom": {"module": "../person.gts", "name": "Person"}}}),
                ),
            ),
            (
                "absolute module equals relative one in the type guard",
                base(json!({})),
                json!({"meta": {"adoptsFrom": {"module": "http://localhost:4201/test/person", "name": "Person"}}}),
                base(
                    json!({"meta": {"adoptsFrom": {"module": "http://localhost:4201/test/person", "name": "Person"}}}),
                ),
            ),
            (
                "plural group in the patch replaces the whole original group",
                base(json!({"relationships": {
                    "pets.0": {"links": {"self": "../Pet/a"}},
                    "pets.1": {"links": {"self": "../Pet/b"}},
                    "pets.2": {"links": {"self": "../Pet/c"}},
                    "friend": {"links": {"self": "./2"}}}})),
                json!({"relationships": {"pets.0": {"links": {"self": "../Pet/z"}}}}),
                base(json!({"relationships": {
                    "pets.0": {"links": {"self": "../Pet/z"}},
                    "friend": {"links": {"self": "./2"}}}})),
            ),
            // Alike in shape to the row above: table rows, one plural-group case each.
            (
                "array-valued plural field replaces the group and is re-emitted as field.N",
                base(json!({"relationships": {
                    "pets.0": {"links": {"self": "../Pet/a"}},
                    "pets.1": {"links": {"self": "../Pet/b"}}}})),
                json!({"relationships": {"pets": [{"links": {"self": "../Pet/x"}}, {"links": {"self": "../Pet/y"}}]}}),
                base(json!({"relationships": {
                    "pets.0": {"links": {"self": "../Pet/x"}},
                    "pets.1": {"links": {"self": "../Pet/y"}}}})),
            ),
            (
                "empty array clears the plural group",
                base(json!({"relationships": {
                    "pets.0": {"links": {"self": "../Pet/a"}},
                    "friend": {"links": {"self": "./2"}}}})),
                json!({"relationships": {"pets": []}}),
                base(json!({"relationships": {"friend": {"links": {"self": "./2"}}}})),
            ),
            (
                "singular relationship deep-merges",
                base(
                    json!({"relationships": {"friend": {"links": {"self": "./2"}, "data": {"type": "card", "id": "x"}}}}),
                ),
                json!({"relationships": {"friend": {"links": {"self": null}}}}),
                base(
                    json!({"relationships": {"friend": {"links": {"self": null}, "data": {"type": "card", "id": "x"}}}}),
                ),
            ),
            (
                "singular patch key overwrites a plural group",
                base(json!({"relationships": {
                    "pets.0": {"links": {"self": "../Pet/a"}},
                    "pets.1": {"links": {"self": "../Pet/b"}},
                    "friend": {"links": {"self": "./2"}}}})),
                json!({"relationships": {"pets": {"links": {"self": null}}}}),
                base(json!({"relationships": {
                    "pets": {"links": {"self": null}},
                    "friend": {"links": {"self": "./2"}}}})),
            ),
            (
                "new relationship appended, dotted non-numeric keys are singular",
                base(json!({"relationships": {"cardInfo.theme": {"links": {"self": null}}}})),
                json!({"relationships": {"cardInfo.theme": {"links": {"self": "./t"}}, "best": {"links": {"self": "./b"}}}}),
                base(
                    json!({"relationships": {"cardInfo.theme": {"links": {"self": "./t"}}, "best": {"links": {"self": "./b"}}}}),
                ),
            ),
            (
                "relationships added to a card without any",
                base(json!({})),
                json!({"relationships": {"pets.0": {"links": {"self": "../Pet/a"}}}}),
                base(json!({"relationships": {"pets.0": {"links": {"self": "../Pet/a"}}}})),
            ),
            (
                "meta merges, other meta keys kept",
                base(
                    json!({"meta": {"fields": {"a": {"adoptsFrom": {"module": "./x", "name": "X"}}}}}),
                ),
                json!({"meta": {"fields": {"b": [{"adoptsFrom": {"module": "./y", "name": "Y"}}]}}}),
                base(json!({"meta": {"fields": {
                    "a": {"adoptsFrom": {"module": "./x", "name": "X"}},
                    "b": [{"adoptsFrom": {"module": "./y", "name": "Y"}}]}}})),
            ),
        ]
    }

    #[test]
    fn merge_rules() {
        for (name, original, patch, want) in cases() {
            let got =
                merge_patch(&original, &patch, CARD).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(got, want, "{name}");
            // serde_json's Map equality ignores order; check order explicitly.
            assert_eq!(
                serde_json::to_string(&got).unwrap(),
                serde_json::to_string(&want).unwrap(),
                "{name}: key order"
            );
        }
    }

    #[test]
    fn key_order_kept() {
        let original = base(json!({"attributes": {"z": 1, "a": 2, "m": 3}}));
        let patch = json!({"attributes": {"q": 0, "a": 5, "b": 6}});
        let got = merge_patch(&original, &patch, CARD).unwrap();
        let keys: Vec<&String> = got["attributes"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["z", "a", "m", "q", "b"]);
        // top-level order too: original keys first
        let top: Vec<&String> = got.as_object().unwrap().keys().collect();
        assert_eq!(top, ["type", "attributes", "meta"]);
    }

    #[test]
    fn plural_group_order_is_first_occurrence() {
        let original = base(json!({"relationships": {
            "a": {"links": {"self": "./a"}},
            "pets.0": {"links": {"self": "./p0"}},
            "b": {"links": {"self": "./b"}},
            "pets.1": {"links": {"self": "./p1"}}}}));
        let got = merge_patch(&original, &json!({"relationships": {}}), CARD).unwrap();
        let keys: Vec<&String> = got["relationships"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["a", "pets.0", "pets.1", "b"]);
    }

    #[test]
    fn type_change_rejected() {
        let cases = [
            ("other name", json!({"module": "../person", "name": "Pet"})),
            (
                "other module",
                json!({"module": "../pet", "name": "Person"}),
            ),
            (
                "module not a string",
                json!({"module": 5, "name": "Person"}),
            ),
            ("missing name", json!({"module": "../person"})),
            ("null adoptsFrom", json!(null)),
        ];
        for (name, adopts) in cases {
            let patch = json!({"meta": {"adoptsFrom": adopts}});
            let want = format!(
                "Cannot change card instance type to {}",
                serde_json::to_string(&adopts).unwrap()
            );
            assert_eq!(
                merge_patch(&base(json!({})), &patch, CARD),
                Err(Error::BadRequest(want)),
                "{name}"
            );
        }
        assert_eq!(
            merge_patch(&base(json!({})), &json!({"meta": null}), CARD),
            Err(Error::BadRequest(
                "Cannot change card instance type to null".into()
            ))
        );
        let msg = merge_patch(
            &base(json!({})),
            &json!({"meta": {"adoptsFrom": {"module": "./pet.gts", "name": "Pet"}}}),
            CARD,
        );
        assert_eq!(
            msg,
            Err(Error::BadRequest(
                r#"Cannot change card instance type to {"module":"./pet.gts","name":"Pet"}"#.into()
            ))
        );
    }

    #[test]
    fn the_type_as_stored_passes_the_guard_however_it_is_written() {
        // `//` resolves to nothing: as stored, it is still the card's type.
        let modules = ["../person", "./person.gts", "../person.gts", "person", "/test/person", "http://localhost:4201/test/person.js", "https://cardstack.com/base/card-api", "@cardstack/base/card-api", "", "?q", "#f", "//"];
        for module in modules {
            let adopts = json!({"module": module, "name": "Person"});
            let original = deep_merge(&base(json!({})), &json!({"meta": {"adoptsFrom": adopts}}));
            let got = merge_patch(&original, &json!({"meta": {"adoptsFrom": adopts}}), CARD);
            assert!(got.is_ok(), "{module}: {got:?}");
            // Written another way, it passes when both resolve to one key.
            let other = json!({"module": "./person", "name": "Person"});
            let base_url = paths::parse_url(CARD).unwrap();
            let same_key = paths::type_key(module, "Person", &base_url).ok() == paths::type_key("./person", "Person", &base_url).ok();
            assert_eq!(merge_patch(&original, &json!({"meta": {"adoptsFrom": other}}), CARD).is_ok(), same_key, "{module}");
            assert_eq!(same_key, module == "./person.gts", "{module}");
        }
    }

    #[test]
    fn meta_without_adopts_from_passes_the_guard() {
        let got = merge_patch(&base(json!({})), &json!({"meta": {"fields": {}}}), CARD).unwrap();
        assert_eq!(got["meta"]["adoptsFrom"], person());
    }

    #[test]
    fn non_objects_refused() {
        assert!(matches!(
            merge_patch(&json!([]), &json!({}), CARD),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            merge_patch(&base(json!({})), &json!(3), CARD),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            merge_patch_text("{", "{}", CARD),
            Err(Error::BadRequest(_))
        ));
        assert_eq!(
            merge_patch_text(r#"{"a":1}"#, r#"{"b":2}"#, CARD).unwrap(),
            r#"{"a":1,"b":2}"#
        );
    }

    #[test]
    fn deep_merge_basics() {
        assert_eq!(
            deep_merge(&json!({"a": {"b": 1}}), &json!({"a": {"c": 2}})),
            json!({"a": {"b": 1, "c": 2}})
        );
        assert_eq!(deep_merge(&json!(1), &json!({"a": 1})), json!({"a": 1}));
        assert_eq!(deep_merge(&json!({"a": 1}), &json!(null)), json!(null));
    }

    // ---- properties ----

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-5i64..5).prop_map(|n| json!(n)),
            "[a-c]{0,2}".prop_map(Value::String),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::vec(("[a-d]", inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn relationship() -> impl Strategy<Value = Value> {
        prop_oneof![
            "[a-c]".prop_map(|s| json!({"links": {"self": format!("./{s}")}})),
            Just(json!({"links": {"self": null}})),
            "[a-c]".prop_map(|s| json!({"data": {"type": "card", "id": s}})),
        ]
    }

    fn relationships() -> impl Strategy<Value = Value> {
        // Array values only under plain field names: `field.N: [...]` is
        // not a shape any client sends (it would nest groups).
        let entry = prop_oneof![
            (
                prop_oneof!["[p-q]", "[p-q]\\.[0-2]", "x\\.y"],
                relationship()
            ),
            (
                "[p-q]",
                prop::collection::vec(relationship(), 0..3).prop_map(Value::Array)
            ),
        ];
        prop::collection::vec(entry, 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect()))
    }

    fn card() -> impl Strategy<Value = Value> {
        (json_value(), prop::option::of(relationships())).prop_map(|(attrs, rels)| {
            let mut c = base(json!({}));
            c["attributes"] = match attrs {
                Value::Object(_) => attrs,
                other => json!({"v": other}),
            };
            if let Some(r) = rels {
                c["relationships"] = r;
            }
            c
        })
    }

    fn patch() -> impl Strategy<Value = Value> {
        (
            prop::option::of(json_value()),
            prop::option::of(relationships()),
            any::<bool>(),
        )
            .prop_map(|(attrs, rels, with_meta)| {
                let mut p = json!({});
                if let Some(a) = attrs {
                    p["attributes"] = a;
                }
                if let Some(r) = rels {
                    p["relationships"] = r;
                }
                if with_meta {
                    p["meta"] = json!({"adoptsFrom": {"module": "../person.gts", "name": "Person"}, "lastModified": 1});
                }
                p
            })
    }

    proptest! {
        #[test]
        fn empty_patch_is_identity(c in card()) {
            let got = merge_patch(&c, &json!({}), CARD).unwrap();
            prop_assert_eq!(serde_json::to_string(&got).unwrap(), serde_json::to_string(&c).unwrap());
        }

        #[test]
        fn the_change_flag_is_whether_the_merge_changed_the_card(c in card(), p in patch()) {
            // A random patch, and the card itself (which mostly changes nothing).
            for p in [p, c.clone()] {
                let merged = merge_patch(&c, &p, CARD).unwrap();
                let (owned, changed) = merge_patch_owned(Resource::of(c.clone()).unwrap(), &p, CARD).unwrap();
                prop_assert_eq!(changed, merged != c);
                prop_assert_eq!(serde_json::to_string(&owned).unwrap(), serde_json::to_string(&merged).unwrap());
            }
        }

        #[test]
        fn patching_twice_equals_once(c in card(), p in patch()) {
            let once = merge_patch(&c, &p, CARD).unwrap();
            let twice = merge_patch(&once, &p, CARD).unwrap();
            prop_assert_eq!(serde_json::to_string(&twice).unwrap(), serde_json::to_string(&once).unwrap());
        }

        #[test]
        fn deep_merge_is_idempotent(a in json_value(), b in json_value()) {
            let once = deep_merge(&a, &b);
            let twice = deep_merge(&once, &b);
            prop_assert_eq!(serde_json::to_string(&twice).unwrap(), serde_json::to_string(&once).unwrap());
        }
    }
}
