//! Card serialisation: the stored file text of a card (spec §2 "File
//! serialisation"), the card's index row, and the card-resource shape
//! check. The card document answered to clients is printed in `print`.
//!
//! Without the card definition we cannot drop unknown or computed
//! attributes as Boxel does; attributes are stored as given.

use serde_json::{json, Map, Value};
use url::Url;

use crate::error::{Error, Result};
use crate::merge::{Resource, SERVER_META_KEYS};
use crate::tree::Tree;
use crate::paths;
use crate::store::CardIndex;

/// Whether `v` is a card resource: an object whose `meta.adoptsFrom` has a
/// string `module` and `name`, whose `attributes` (if present) is an object
/// and whose `relationships` (if present) is an object. Lenient on purpose:
/// it recognises stored files; requests get [`check_card_shape`].
pub fn is_card_resource(v: &Value) -> bool {
    v.as_object().is_some_and(is_card_resource_map)
}

/// [`is_card_resource`] of an object.
fn is_card_resource_map(obj: &Map<String, Value>) -> bool {
    is_card_resource_parts(obj, obj.get("attributes").is_none_or(Value::is_object))
}

/// [`is_card_resource`] of an object whose attributes, if any, are an
/// object when `attributes_ok` (the other members are in `obj`).
fn is_card_resource_parts(obj: &Map<String, Value>, attributes_ok: bool) -> bool {
    let adopts = obj.get("meta").and_then(|m| m.get("adoptsFrom"));
    let code_ref_ok = adopts.is_some_and(|a| {
        a.get("module").is_some_and(Value::is_string) && a.get("name").is_some_and(Value::is_string)
    });
    code_ref_ok && attributes_ok && obj.get("relationships").is_none_or(Value::is_object)
}

/// The JSON:API shape of a card resource, checked by every entry point
/// (POST create, PATCH, `/_atomic` card ops, side-loaded cards) before
/// anything trusts it, and again by [`serialize_card_value`]:
/// - an object with `meta` an object whose `adoptsFrom` has string
///   `module` and `name`; `attributes` (if present) an object;
/// - `relationships` (if present) an object; each value `null`, an object,
///   or an array (the plural form) of objects or `null`s;
/// - in a relationship object: `links` null or an object, `links.self` a
///   string or null, `data` null, an object or an array of objects, each
///   `data` `id`/`lid` (if present) a string, `meta` an object.
///
/// The error is a sentence naming the offending member, e.g.
/// `relationship 'friend': links must be an object`.
pub fn check_card_shape(v: &Value) -> std::result::Result<(), String> {
    let obj = v.as_object().ok_or("the card resource must be an object")?;
    check_card_shape_parts(obj, obj.get("attributes").is_none_or(Value::is_object))
}

/// [`check_card_shape`] of an object whose attributes, if any, are an
/// object when `attributes_ok` (the other members are in `obj`).
fn check_card_shape_parts(obj: &Map<String, Value>, attributes_ok: bool) -> std::result::Result<(), String> {
    let meta = match obj.get("meta") {
        Some(Value::Object(meta)) => meta,
        Some(_) => return Err("meta must be an object".into()),
        None => return Err(ADOPTS_FROM_REQUIRED.into()),
    };
    let adopts = meta.get("adoptsFrom");
    let code_ref_ok = adopts.is_some_and(|a| {
        a.get("module").is_some_and(Value::is_string) && a.get("name").is_some_and(Value::is_string)
    });
    if !code_ref_ok {
        return Err(ADOPTS_FROM_REQUIRED.into());
    }
    if !attributes_ok {
        return Err("attributes must be an object".into());
    }
    match obj.get("relationships") {
        None => Ok(()),
        Some(Value::Object(rels)) => rels
            .iter()
            .try_for_each(|(key, rel)| check_relationship_value(key, rel)),
        Some(_) => Err("relationships must be an object".into()),
    }
}

const ADOPTS_FROM_REQUIRED: &str = "meta.adoptsFrom with string module and name is required";

fn check_relationship_value(key: &str, value: &Value) -> std::result::Result<(), String> {
    match value {
        // Stored as `{"links":{"self":null}}`.
        Value::Null => Ok(()),
        Value::Object(rel) => check_relationship(key, rel),
        // The plural form, fanned out to `key.0…n`.
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| match item {
                Value::Null => Ok(()),
                Value::Object(rel) => check_relationship(&format!("{key}.{i}"), rel),
                _ => Err(format!(
                    "relationship '{key}.{i}' must be an object or null"
                )),
            }),
        _ => Err(format!(
            "relationship '{key}' must be an object, an array or null"
        )),
    }
}

fn check_relationship(key: &str, rel: &Map<String, Value>) -> std::result::Result<(), String> {
    match rel.get("links") {
        None | Some(Value::Null) => {}
        Some(Value::Object(links)) => {
            if !links
                .get("self")
                .is_none_or(|s| s.is_null() || s.is_string())
            {
                return Err(format!(
                    "relationship '{key}': links.self must be a string or null"
                ));
            }
        }
        Some(_) => return Err(format!("relationship '{key}': links must be an object")),
    }
    let not_data =
        || format!("relationship '{key}': data must be null, an object or an array of objects");
    match rel.get("data") {
        None | Some(Value::Null) => {}
        Some(Value::Object(d)) => check_identifier(key, "data", d)?,
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let d = item.as_object().ok_or_else(not_data)?;
                check_identifier(key, &format!("data[{i}]"), d)?;
            }
        }
        Some(_) => return Err(not_data()),
    }
    if rel.get("meta").is_some_and(|m| !m.is_object()) {
        return Err(format!("relationship '{key}': meta must be an object"));
    }
    Ok(())
}

fn check_identifier(
    key: &str,
    what: &str,
    data: &Map<String, Value>,
) -> std::result::Result<(), String> {
    for member in ["id", "lid"] {
        if data.get(member).is_some_and(|v| !v.is_string()) {
            return Err(format!(
                "relationship '{key}': {what}.{member} must be a string"
            ));
        }
    }
    Ok(())
}

/// Accept either a resource or a `{"data": resource}` document (a value
/// with `data` and no `meta` is taken as a document).
fn resource_of(v: &Value) -> &Value {
    match v.as_object() {
        Some(o) if is_document(o) => &o["data"],
        _ => v,
    }
}

/// Whether an object is a `{"data": resource}` document rather than a resource.
fn is_document(o: &Map<String, Value>) -> bool {
    o.contains_key("data") && !o.contains_key("meta")
}

/// The stored text of the card `resource` at `file_url` in `realm`:
/// `{"data":{"type":"card","attributes","relationships"?,"meta"}}`,
/// pretty-printed with 2 spaces, no trailing newline. `resource` may also
/// be a `{"data": …}` document, so serialising a stored file is idempotent.
///
/// - `type` is forced to `card`; only `attributes` (default `{}`),
///   `relationships` (if present) and `meta` are kept, so `id`, `lid`,
///   `links`, `included` go; the server-owned `meta` keys go too.
/// - Each relationship becomes `{"links":{"self":…}}` (+ its `meta`):
///   `links.self` if present, else `data.id`, else `null` for a `data.lid`
///   (else no `links`); URLs are resolved against `file_url` and made
///   relative when in the same realm; `data` is never stored. An
///   array-valued relationship, or one whose `data` is an array, is fanned
///   out to `field.0…n`; a `null` relationship is `{"links":{"self":null}}`.
/// - `meta.adoptsFrom.module` and every `meta.fields…adoptsFrom.module` are
///   made relative to the file and lose their executable extension.
///
/// A non-card resource or an unusable URL → `BadRequest`.
pub fn serialize_card_file(resource: &Value, file_url: &str, realm: &str) -> Result<String> {
    let doc = serialize_card_value(resource, file_url, realm)?;
    serde_json::to_string_pretty(&doc).map_err(|e| Error::Storage(e.to_string()))
}

/// Text form of [`serialize_card_file`] for the `logic.serialize` export.
pub fn serialize_card_text(resource: &str, file_url: &str, realm: &str) -> Result<String> {
    let v: Value = serde_json::from_str(resource)
        .map_err(|e| Error::BadRequest(format!("resource is not valid JSON: {e}")))?;
    serialize_card_file(&v, file_url, realm)
}

/// [`serialize_card_file`] before printing: the `{"data": …}` value.
pub fn serialize_card_value(resource: &Value, file_url: &str, realm: &str) -> Result<Value> {
    serialize_card_parts(resource, file_url, realm).map(StoredCard::into_value)
}

/// [`serialize_card_value`] in parts.
pub fn serialize_card_parts(resource: &Value, file_url: &str, realm: &str) -> Result<StoredCard> {
    let resource = resource_of(resource);
    check_serializable(resource)?;
    let attributes = resource.get("attributes").map(Tree::from);
    let meta = resource.get("meta").and_then(Value::as_object).cloned();
    serialized(attributes, resource.get("relationships"), meta, &CardFile::new(file_url, realm)?)
}

/// [`serialize_card_parts`] of a resource it may take apart (its
/// attributes and meta move into the result instead of being copied), for
/// a file whose URLs are already parsed.
pub fn serialize_card_parts_owned(resource: Value, file: &CardFile) -> Result<StoredCard> {
    let resource = match resource {
        Value::Object(mut o) if is_document(&o) => o.remove("data").unwrap_or_default(),
        other => other,
    };
    check_serializable(&resource)?;
    let Value::Object(mut resource) = resource else {
        return Err(Error::BadRequest("The resource is not a JSON object".into()));
    };
    let attributes = resource.remove("attributes").map(Tree::from);
    let meta = match resource.remove("meta") {
        Some(Value::Object(meta)) => Some(meta),
        _ => None,
    };
    serialized(attributes, resource.get("relationships"), meta, file)
}

/// [`serialize_card_parts_owned`] of a merged [`Resource`].
pub fn serialize_resource(resource: Resource, file: &CardFile) -> Result<StoredCard> {
    if is_document(&resource.rest) {
        return serialize_card_parts_owned(resource.into_value(), file);
    }
    let Resource { attributes, mut rest, .. } = resource;
    let attributes_ok = attributes.as_ref().is_none_or(Tree::is_object);
    if !is_card_resource_parts(&rest, attributes_ok) {
        return Err(not_serializable());
    }
    check_card_shape_parts(&rest, attributes_ok).map_err(Error::BadRequest)?;
    let meta = match rest.remove("meta") {
        Some(Value::Object(meta)) => Some(meta),
        _ => None,
    };
    serialized(attributes, rest.get("relationships"), meta, file)
}

fn check_serializable(resource: &Value) -> Result<()> {
    if !is_card_resource(resource) {
        return Err(not_serializable());
    }
    check_card_shape(resource).map_err(Error::BadRequest)
}

fn not_serializable() -> Error {
    Error::BadRequest("The resource is not a card resource (meta.adoptsFrom with module and name is required)".into())
}

/// A card resource serialised for its file, in parts: the file is
/// `{"data": {"type": "card", "attributes", "relationships"?, "meta"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCard {
    pub attributes: Tree,
    pub relationships: Option<Map<String, Value>>,
    pub meta: Map<String, Value>,
    /// The index row's `card_type` ([`card_type`] of `meta` at the card's URL).
    pub card_type: String,
}

impl StoredCard {
    /// The file's `{"data": …}` value.
    pub fn into_value(self) -> Value {
        let mut out = Map::new();
        out.insert("type".into(), json!("card"));
        out.insert("attributes".into(), self.attributes.into_value());
        if let Some(rels) = self.relationships {
            out.insert("relationships".into(), Value::Object(rels));
        }
        out.insert("meta".into(), Value::Object(self.meta));
        json!({ "data": Value::Object(out) })
    }
}

/// The stored form of a card resource's parts.
fn serialized(
    attributes: Option<Tree>,
    relationships: Option<&Value>,
    meta: Option<Map<String, Value>>,
    file: &CardFile,
) -> Result<StoredCard> {
    let relationships = match relationships {
        Some(Value::Object(rels)) => Some(file.relationships(rels)?),
        _ => None,
    };
    let mut meta = meta.unwrap_or_default();
    for key in SERVER_META_KEYS {
        meta.shift_remove(key);
    }
    let card_url = paths::trim_json_extension(file.file.as_str());
    let card_type = match file.field_meta(&mut meta)? {
        // The stored module is `module_url` made relative to the file, so
        // resolving it again against the card gives `module_url` back when
        // the card is in the file's directory; trimming it again is what
        // `card_type` would do.
        Some(module_url) if file.card_in_its_directory() => {
            format!("{}#{}", paths::trim_url_executable_extension(&module_url), adopts_from_name(Some(&meta)))
        }
        _ => card_type(Some(&meta), card_url),
    };
    Ok(StoredCard { attributes: attributes.unwrap_or_else(Tree::empty_object), relationships, meta, card_type })
}

/// The file a card is serialised for and its realm: the URLs its
/// references are resolved against and made relative to, parsed once.
pub struct CardFile {
    file: Url,
    realm: Url,
}

impl CardFile {
    pub fn new(file_url: &str, realm: &str) -> Result<CardFile> {
        Ok(CardFile { file: paths::parse_url(file_url)?, realm: paths::parse_realm(realm)? })
    }

    /// Whether the card's URL (the file's without `.json`) is in the file's
    /// directory: not when its last segment is a dot segment (`..`, also
    /// percent-encoded), which parsing the card's URL resolves away.
    fn card_in_its_directory(&self) -> bool {
        let name = self.file.path().rsplit('/').next().unwrap_or_default();
        let name = paths::trim_json_extension(name).to_ascii_lowercase();
        !matches!(name.as_str(), "." | ".." | "%2e" | ".%2e" | "%2e." | "%2e%2e")
    }

    /// A URL reference resolved against the file and made realm-relative.
    fn link(&self, reference: &str) -> Result<String> {
        let url = paths::resolve(reference, &self.file)?;
        Ok(paths::maybe_relative_url(
            &url,
            &self.file,
            Some(&self.realm),
        ))
    }

    /// A module reference made relative to the file, and the URL it was
    /// resolved to (`None` for a bare specifier, kept as written).
    fn module(&self, module: &str) -> Result<(String, Option<Url>)> {
        if paths::is_bare_specifier(module) {
            return Ok((module.to_string(), None));
        }
        let url = paths::resolve_module(module, &self.file)?;
        let relative = paths::maybe_relative_url(&url, &self.file, Some(&self.realm));
        Ok((relative, Some(url)))
    }

    /// `links.self` for one relationship object, or `None` for no links.
    fn self_link(&self, key: &str, rel: &Map<String, Value>) -> Result<Option<Value>> {
        if let Some(links) = rel.get("links").and_then(Value::as_object) {
            if let Some(s) = links.get("self") {
                return match s {
                    Value::Null => Ok(Some(Value::Null)),
                    Value::String(s) => Ok(Some(Value::String(self.link(s)?))),
                    _ => Err(Error::BadRequest(format!(
                        "relationship '{key}': links.self must be a string or null"
                    ))),
                };
            }
        }
        match rel.get("data") {
            Some(data) => self.data_link(key, data),
            None => Ok(None),
        }
    }

    fn data_link(&self, key: &str, data: &Value) -> Result<Option<Value>> {
        match data.get("id") {
            Some(Value::String(id)) => return Ok(Some(Value::String(self.link(id)?))),
            Some(Value::Null) | None => {}
            Some(_) => {
                return Err(Error::BadRequest(format!(
                    "relationship '{key}': data.id must be a string"
                )))
            }
        }
        Ok(data.get("lid").map(|_| Value::Null))
    }

    fn stored(self_link: Option<Value>, meta: Option<&Value>) -> Value {
        let mut out = Map::new();
        if let Some(s) = self_link {
            out.insert("links".into(), json!({ "self": s }));
        }
        if let Some(m) = meta {
            out.insert("meta".into(), m.clone());
        }
        Value::Object(out)
    }

    fn relationships(&self, rels: &Map<String, Value>) -> Result<Map<String, Value>> {
        let mut out = Map::new();
        for (key, value) in rels {
            match value {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let k = format!("{key}.{i}");
                        let v = self.single(&k, item)?;
                        out.insert(k, v);
                    }
                }
                Value::Object(rel) if rel.get("data").is_some_and(Value::is_array) => {
                    let items = rel
                        .get("data")
                        .and_then(Value::as_array)
                        .map(Vec::as_slice)
                        .unwrap_or(&[]);
                    for (i, d) in items.iter().enumerate() {
                        let k = format!("{key}.{i}");
                        let link = self.data_link(&k, d)?;
                        out.insert(k, Self::stored(link, rel.get("meta")));
                    }
                }
                _ => {
                    let v = self.single(key, value)?;
                    out.insert(key.clone(), v);
                }
            }
        }
        Ok(out)
    }

    fn single(&self, key: &str, value: &Value) -> Result<Value> {
        match value {
            Value::Null => Ok(json!({"links": {"self": null}})),
            Value::Object(rel) => Ok(Self::stored(self.self_link(key, rel)?, rel.get("meta"))),
            _ => Err(Error::BadRequest(format!(
                "relationship '{key}' is not an object"
            ))),
        }
    }

    /// Relativise `adoptsFrom.module` of this meta object and recurse into
    /// its `fields` (each an object or an array of objects); answers the
    /// URL this meta's own module resolved to, if it is not a bare specifier.
    fn field_meta(&self, meta: &mut Map<String, Value>) -> Result<Option<Url>> {
        let mut resolved = None;
        if let Some(Value::Object(adopts)) = meta.get_mut("adoptsFrom") {
            if let Some(Value::String(module)) = adopts.get("module") {
                let (rel, url) = self.module(module)?;
                resolved = url;
                adopts.insert("module".into(), Value::String(rel));
            }
        }
        if let Some(Value::Object(fields)) = meta.get_mut("fields") {
            for (_, field) in fields.iter_mut() {
                match field {
                    Value::Object(m) => {
                        self.field_meta(m)?;
                    }
                    Value::Array(items) => {
                        for item in items.iter_mut() {
                            if let Value::Object(m) = item {
                                self.field_meta(m)?;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(resolved)
    }
}

/// Make the URL references of a card resource absolute against `base`:
/// `meta.adoptsFrom.module` (and those under `meta.fields`), relationship
/// `links.self` and `data.id` (also in array `data` and array-valued
/// relationships). Used when a resource is written somewhere other than
/// the URL its references were written relative to (POST bodies are
/// relative to the URL posted to; side-loaded cards to the primary card).
pub fn absolutize_refs(resource: &mut Value, base: &str) -> Result<()> {
    let base = paths::parse_url(base)?;
    let abs = |s: &mut String| -> Result<()> {
        *s = paths::resolve(s, &base)?.to_string();
        Ok(())
    };
    fn field_meta(
        meta: &mut Map<String, Value>,
        abs: &dyn Fn(&mut String) -> Result<()>,
    ) -> Result<()> {
        if let Some(Value::String(module)) =
            meta.get_mut("adoptsFrom").and_then(|a| a.get_mut("module"))
        {
            // A package name is not relative to anything.
            if !paths::is_bare_specifier(module) {
                abs(module)?;
            }
        }
        if let Some(Value::Object(fields)) = meta.get_mut("fields") {
            for (_, field) in fields.iter_mut() {
                match field {
                    Value::Object(m) => field_meta(m, abs)?,
                    Value::Array(items) => {
                        for item in items.iter_mut() {
                            if let Value::Object(m) = item {
                                field_meta(m, abs)?;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
    fn relationship(rel: &mut Value, abs: &dyn Fn(&mut String) -> Result<()>) -> Result<()> {
        if let Some(Value::String(s)) = rel.get_mut("links").and_then(|l| l.get_mut("self")) {
            abs(s)?;
        }
        match rel.get_mut("data") {
            Some(Value::Array(items)) => {
                for d in items.iter_mut() {
                    if let Some(Value::String(id)) = d.get_mut("id") {
                        abs(id)?;
                    }
                }
            }
            Some(d) => {
                if let Some(Value::String(id)) = d.get_mut("id") {
                    abs(id)?;
                }
            }
            None => {}
        }
        Ok(())
    }
    if let Some(Value::Object(meta)) = resource.get_mut("meta") {
        field_meta(meta, &abs)?;
    }
    if let Some(Value::Object(rels)) = resource.get_mut("relationships") {
        for (_, rel) in rels.iter_mut() {
            match rel {
                Value::Array(items) => {
                    for item in items.iter_mut() {
                        relationship(item, &abs)?;
                    }
                }
                other => relationship(other, &abs)?,
            }
        }
    }
    Ok(())
}

/// The stored card resource (`data`) of a stored file's text, if the text
/// is a `{"data": <card resource>}` document.
pub fn parse_stored_card(stored: &str) -> Option<Map<String, Value>> {
    let Value::Object(mut doc) = serde_json::from_str(stored).ok()? else { return None };
    match doc.remove("data")? {
        Value::Object(data) if is_card_resource_map(&data) => Some(data),
        _ => None,
    }
}

/// [`parse_stored_card`] as a [`Resource`] to merge a PATCH onto.
pub fn parse_stored_resource(stored: &str) -> Option<Resource> {
    let Tree::Object(doc) = serde_json::from_str(stored).ok()? else { return None };
    // A parsed object's keys are distinct.
    let Tree::Object(data) = doc.into_iter().find(|(k, _)| k == "data")?.1 else { return None };
    let resource = Resource::of_members(data);
    let attributes_ok = resource.attributes.as_ref().is_none_or(Tree::is_object);
    is_card_resource_parts(&resource.rest, attributes_ok).then_some(resource)
}

/// The index row of a card: `card_type` is the module resolved against
/// `card_url` without executable extension, `#`, and the name (the raw
/// module when it cannot be resolved); `search_doc` is the attributes as
/// compact JSON (`{}` when absent). `resource` may be a `{"data":…}` document.
pub fn card_index(resource: &Value, id: &str, card_url: &str) -> CardIndex {
    let resource = resource_of(resource);
    let search_doc = match resource.get("attributes") {
        Some(a) => serde_json::to_string(a).unwrap_or_else(|_| "{}".into()),
        None => "{}".into(),
    };
    CardIndex {
        id: id.to_string(),
        card_type: card_type(resource.get("meta").and_then(Value::as_object), card_url),
        search_doc,
    }
}

/// The index row's `card_type` of a card whose `meta` this is.
pub fn card_type(meta: Option<&Map<String, Value>>, card_url: &str) -> String {
    let module = meta
        .and_then(|m| m.get("adoptsFrom"))
        .and_then(|a| a.get("module"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = adopts_from_name(meta);
    paths::parse_url(card_url)
        .and_then(|base| paths::type_key(module, name, &base))
        .unwrap_or_else(|_| format!("{}#{name}", paths::trim_executable_extension(module)))
}

/// `meta.adoptsFrom.name`, or `""`.
fn adopts_from_name(meta: Option<&Map<String, Value>>) -> &str {
    meta.and_then(|m| m.get("adoptsFrom"))
        .and_then(|a| a.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The index row for a file written verbatim at the realm-local `path`:
/// `Some` when `path` ends in `.json` and `content` is a card document.
pub fn index_for_file(realm: &str, path: &str, content: &str) -> Option<CardIndex> {
    if !path.ends_with(".json") {
        return None;
    }
    let data = parse_stored_card(content)?;
    let id = paths::card_id(realm, path);
    Some(card_index(&Value::Object(data), &id, &id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::print::card_document_text;
    use proptest::prelude::*;

    const REALM: &str = "http://localhost:4201/test/";
    const FILE: &str = "http://localhost:4201/test/Person/1.json";

    fn card(extra: Value) -> Value {
        crate::merge::deep_merge(
            &json!({"type": "card", "attributes": {"firstName": "Mango"},
                    "meta": {"adoptsFrom": {"module": "../person", "name": "Person"}}}),
            &extra,
        )
    }

    fn data_of(resource: Value) -> Value {
        let text = serialize_card_file(&resource, FILE, REALM).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        doc["data"].clone()
    }

    #[test]
    fn serialisation_rules() {
        // (name, resource, json pointer, expected value at pointer; `null` pointer target absent = Value::Null)
        let cases: Vec<(&str, Value, &str, Value)> = vec![
            (
                "type forced to card",
                card(json!({"type": "other"})),
                "/type",
                json!("card"),
            ),
            (
                "id removed",
                card(json!({"id": "http://localhost:4201/test/Person/1"})),
                "/id",
                Value::Null,
            ),
            (
                "lid removed",
                card(json!({"lid": "abc"})),
                "/lid",
                Value::Null,
            ),
            (
                "links removed",
                card(json!({"links": {"self": "x"}})),
                "/links",
                Value::Null,
            ),
            (
                "unknown top-level key removed",
                card(json!({"extra": 1})),
                "/extra",
                Value::Null,
            ),
            (
                "meta.realmURL removed",
                card(json!({"meta": {"realmURL": REALM}})),
                "/meta/realmURL",
                Value::Null,
            ),
            (
                "meta.realmInfo removed",
                card(json!({"meta": {"realmInfo": {}}})),
                "/meta/realmInfo",
                Value::Null,
            ),
            (
                "meta.lastModified removed",
                card(json!({"meta": {"lastModified": 1}})),
                "/meta/lastModified",
                Value::Null,
            ),
            (
                "meta.resourceCreatedAt removed",
                card(json!({"meta": {"resourceCreatedAt": 1}})),
                "/meta/resourceCreatedAt",
                Value::Null,
            ),
            (
                "attributes default to {}",
                json!({"meta": {"adoptsFrom": {"module": "../person", "name": "Person"}}}),
                "/attributes",
                json!({}),
            ),
            (
                "attributes kept verbatim",
                card(json!({"attributes": {"a": [1, {"b": null}]}})),
                "/attributes/a",
                json!([1, {"b": null}]),
            ),
            (
                "module extension trimmed and relative",
                card(
                    json!({"meta": {"adoptsFrom": {"module": "http://localhost:4201/test/person.gts"}}}),
                ),
                "/meta/adoptsFrom/module",
                json!("../person"),
            ),
            (
                "relative module with extension trimmed",
                card(json!({"meta": {"adoptsFrom": {"module": "./pet.gts"}}})),
                "/meta/adoptsFrom/module",
                json!("./pet"),
            ),
            (
                "cross-origin module absolute, extension trimmed",
                card(
                    json!({"meta": {"adoptsFrom": {"module": "https://cardstack.com/base/card-api.gts", "name": "CardDef"}}}),
                ),
                "/meta/adoptsFrom/module",
                json!("https://cardstack.com/base/card-api"),
            ),
            (
                "bare package specifier kept verbatim",
                card(json!({"meta": {"adoptsFrom": {"module": "@cardstack/base/card-api", "name": "CardDef"}}})),
                "/meta/adoptsFrom/module",
                json!("@cardstack/base/card-api"),
            ),
            (
                "other realm module stays absolute",
                card(
                    json!({"meta": {"adoptsFrom": {"module": "http://localhost:4201/other/person.gts"}}}),
                ),
                "/meta/adoptsFrom/module",
                json!("http://localhost:4201/other/person"),
            ),
            (
                "meta.fields adoptsFrom relativised",
                card(
                    json!({"meta": {"fields": {"pet": {"adoptsFrom": {"module": "http://localhost:4201/test/pet.gts", "name": "Pet"}}}}}),
                ),
                "/meta/fields/pet/adoptsFrom/module",
                json!("../pet"),
            ),
            (
                "meta.fields array entries relativised",
                card(
                    json!({"meta": {"fields": {"pets": [{"adoptsFrom": {"module": "http://localhost:4201/test/Person/pet.js", "name": "Pet"}}]}}}),
                ),
                "/meta/fields/pets/0/adoptsFrom/module",
                json!("./pet"),
            ),
            (
                "nested meta.fields relativised",
                card(
                    json!({"meta": {"fields": {"a": {"fields": {"b": {"adoptsFrom": {"module": "http://localhost:4201/test/b.ts", "name": "B"}}}}}}}),
                ),
                "/meta/fields/a/fields/b/adoptsFrom/module",
                json!("../b"),
            ),
            (
                "relationship links.self made relative",
                card(
                    json!({"relationships": {"friend": {"links": {"self": "http://localhost:4201/test/Person/2"}}}}),
                ),
                "/relationships/friend",
                json!({"links": {"self": "./2"}}),
            ),
            (
                "relationship data.id → links.self, data dropped",
                card(
                    json!({"relationships": {"pet": {"data": {"type": "card", "id": "http://localhost:4201/test/Pet/mango"}}}}),
                ),
                "/relationships/pet",
                json!({"links": {"self": "../Pet/mango"}}),
            ),
            (
                "links.self preferred over data.id",
                card(
                    json!({"relationships": {"pet": {"links": {"self": "../Pet/a"}, "data": {"type": "card", "id": "../Pet/b"}}}}),
                ),
                "/relationships/pet",
                json!({"links": {"self": "../Pet/a"}}),
            ),
            (
                "links.self null is kept",
                card(
                    json!({"relationships": {"pet": {"links": {"self": null}, "data": {"id": "../Pet/b"}}}}),
                ),
                "/relationships/pet",
                json!({"links": {"self": null}}),
            ),
            (
                "data.lid → links.self null",
                card(
                    json!({"relationships": {"pet": {"data": {"type": "card", "lid": "new-pet"}}}}),
                ),
                "/relationships/pet",
                json!({"links": {"self": null}}),
            ),
            // Alike in shape to the rows above: table rows, one relationship case each.
            (
                "cross-realm link stays absolute",
                card(
                    json!({"relationships": {"pet": {"links": {"self": "http://localhost:4201/other/Pet/1"}}}}),
                ),
                "/relationships/pet",
                json!({"links": {"self": "http://localhost:4201/other/Pet/1"}}),
            ),
            (
                "cross-origin link stays absolute",
                card(
                    json!({"relationships": {"pet": {"data": {"id": "https://elsewhere.example/Pet/1"}}}}),
                ),
                "/relationships/pet",
                json!({"links": {"self": "https://elsewhere.example/Pet/1"}}),
            ),
            (
                "relationship meta kept, other links dropped",
                card(
                    json!({"relationships": {"pet": {"links": {"self": "../Pet/a", "related": "x"}, "meta": {"m": 1}}}}),
                ),
                "/relationships/pet",
                json!({"links": {"self": "../Pet/a"}, "meta": {"m": 1}}),
            ),
            (
                "relationship without links or data is empty",
                card(json!({"relationships": {"pet": {}}})),
                "/relationships/pet",
                json!({}),
            ),
            (
                "null relationship → links.self null",
                card(json!({"relationships": {"pet": null}})),
                "/relationships/pet",
                json!({"links": {"self": null}}),
            ),
            (
                "array-valued relationship fanned out",
                card(
                    json!({"relationships": {"pets": [{"links": {"self": "../Pet/a"}}, {"data": {"id": "../Pet/b"}}]}}),
                ),
                "/relationships",
                json!({"pets.0": {"links": {"self": "../Pet/a"}}, "pets.1": {"links": {"self": "../Pet/b"}}}),
            ),
            (
                "array data fanned out",
                card(
                    json!({"relationships": {"pets": {"data": [{"type": "card", "id": "../Pet/a"}, {"type": "card", "lid": "x"}]}}}),
                ),
                "/relationships",
                json!({"pets.0": {"links": {"self": "../Pet/a"}}, "pets.1": {"links": {"self": null}}}),
            ),
        ];
        for (name, resource, pointer, want) in cases {
            let data = data_of(resource);
            assert_eq!(
                data.pointer(pointer).cloned().unwrap_or(Value::Null),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn exact_file_text() {
        let resource = json!({
            "id": "http://localhost:4201/test/Person/1",
            "type": "card",
            "links": {"self": "http://localhost:4201/test/Person/1"},
            "attributes": {"firstName": "Mango"},
            "relationships": {"pet": {"links": {"self": "http://localhost:4201/test/Pet/a"}, "data": {"type": "card", "id": "http://localhost:4201/test/Pet/a"}}},
            "meta": {"adoptsFrom": {"module": "http://localhost:4201/test/person.gts", "name": "Person"},
                     "lastModified": 5, "realmURL": REALM}
        });
        let want = r#"{
  "data": {
    "type": "card",
    "attributes": {
      "firstName": "Mango"
    },
    "relationships": {
      "pet": {
        "links": {
          "self": "../Pet/a"
        }
      }
    },
    "meta": {
      "adoptsFrom": {
        "module": "../person",
        "name": "Person"
      }
    }
  }
}"#;
        assert_eq!(serialize_card_file(&resource, FILE, REALM).unwrap(), want);
        // a document is accepted too and gives the same text
        assert_eq!(
            serialize_card_file(&json!({"data": resource, "included": []}), FILE, REALM).unwrap(),
            want
        );
        assert_eq!(
            serialize_card_text(&resource.to_string(), FILE, REALM).unwrap(),
            want
        );
    }

    #[test]
    fn serialisation_errors() {
        let cases = [
            ("no meta", json!({"attributes": {}})),
            (
                "adoptsFrom without name",
                json!({"meta": {"adoptsFrom": {"module": "./x"}}}),
            ),
            (
                "attributes not an object",
                json!({"attributes": [], "meta": {"adoptsFrom": {"module": "./x", "name": "X"}}}),
            ),
            (
                "relationship not an object",
                card(json!({"relationships": {"x": 3}})),
            ),
            (
                "links.self not a string",
                card(json!({"relationships": {"x": {"links": {"self": 3}}}})),
            ),
            ("not an object", json!("card")),
        ];
        for (name, resource) in cases {
            assert!(
                matches!(
                    serialize_card_file(&resource, FILE, REALM),
                    Err(Error::BadRequest(_))
                ),
                "{name}"
            );
        }
        assert!(matches!(
            serialize_card_text("{", FILE, REALM),
            Err(Error::BadRequest(_))
        ));
    }

    #[test]
    fn card_resource_shape() {
        let ok = json!({"meta": {"adoptsFrom": {"module": "./x", "name": "X"}}});
        assert!(is_card_resource(&ok));
        assert!(is_card_resource(&card(json!({"relationships": {}}))));
        for bad in [
            json!(null),
            json!({}),
            json!({"meta": {}}),
            json!({"meta": {"adoptsFrom": {"module": 1, "name": "X"}}}),
            json!({"meta": {"adoptsFrom": {"module": "./x", "name": "X"}}, "attributes": null}),
            json!({"meta": {"adoptsFrom": {"module": "./x", "name": "X"}}, "relationships": []}),
        ] {
            assert!(!is_card_resource(&bad), "{bad}");
        }
    }

    #[test]
    fn json_api_shapes() {
        let rel = |r: Value| card(json!({ "relationships": { "friend": r } }));
        let ok = [
            ("no relationships", card(json!({}))),
            ("empty relationships", card(json!({"relationships": {}}))),
            ("null relationship", rel(json!(null))),
            ("empty relationship", rel(json!({}))),
            ("links.self string", rel(json!({"links": {"self": "./2"}}))),
            ("links.self null", rel(json!({"links": {"self": null}}))),
            ("links null", rel(json!({"links": null}))),
            (
                "links without self",
                rel(json!({"links": {"related": "x"}})),
            ),
            ("data null", rel(json!({"data": null}))),
            (
                "data id",
                rel(json!({"data": {"type": "card", "id": "./2"}})),
            ),
            (
                "data lid",
                rel(json!({"data": {"type": "card", "lid": "l"}})),
            ),
            (
                "data array",
                rel(json!({"data": [{"id": "./a"}, {"lid": "b"}]})),
            ),
            ("empty data array", rel(json!({"data": []}))),
            (
                "meta object",
                rel(json!({"links": {"self": "./2"}, "meta": {"m": 1}})),
            ),
            (
                "plural array",
                rel(json!([{"links": {"self": "./a"}}, null, {}])),
            ),
            ("empty plural array", rel(json!([]))),
            (
                "plural field.N keys",
                card(json!({"relationships": {"pets.0": {"links": {"self": "./a"}}}})),
            ),
        ];
        for (name, resource) in ok {
            assert_eq!(check_card_shape(&resource), Ok(()), "{name}");
            serialize_card_file(&resource, FILE, REALM).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
        let links = "relationship 'friend': links must be an object";
        let data = "relationship 'friend': data must be null, an object or an array of objects";
        let bad: Vec<(&str, Value, &str)> = vec![
            (
                "not an object",
                json!([]),
                "the card resource must be an object",
            ),
            ("no meta", json!({"attributes": {}}), ADOPTS_FROM_REQUIRED),
            (
                "meta not an object",
                json!({"meta": "x"}),
                "meta must be an object",
            ),
            ("meta null", json!({"meta": null}), "meta must be an object"),
            (
                "adoptsFrom without name",
                json!({"meta": {"adoptsFrom": {"module": "./x"}}}),
                ADOPTS_FROM_REQUIRED,
            ),
            (
                "attributes not an object",
                card(json!({"attributes": [1]})),
                "attributes must be an object",
            ),
            (
                "attributes null",
                card(json!({"attributes": null})),
                "attributes must be an object",
            ),
            (
                "relationships an array",
                card(json!({"relationships": []})),
                "relationships must be an object",
            ),
            (
                "relationships null",
                card(json!({"relationships": null})),
                "relationships must be an object",
            ),
            (
                "relationship a number",
                rel(json!(5)),
                "relationship 'friend' must be an object, an array or null",
            ),
            (
                "relationship a string",
                rel(json!("./2")),
                "relationship 'friend' must be an object, an array or null",
            ),
            (
                "plural item a string",
                rel(json!([{}, "./2"])),
                "relationship 'friend.1' must be an object or null",
            ),
            (
                "plural item with bad links",
                rel(json!([{"links": "x"}])),
                "relationship 'friend.0': links must be an object",
            ),
            ("links a string", rel(json!({"links": "x"})), links),
            ("links a number", rel(json!({"links": 42})), links),
            ("links an array", rel(json!({"links": ["./a"]})), links),
            ("links a boolean", rel(json!({"links": true})), links),
            (
                "links.self a number",
                rel(json!({"links": {"self": 3}})),
                "relationship 'friend': links.self must be a string or null",
            ),
            (
                "links.self an object",
                rel(json!({"links": {"self": {}}})),
                "relationship 'friend': links.self must be a string or null",
            ),
            ("data a string", rel(json!({"data": "./2"})), data),
            ("data a number", rel(json!({"data": 1})), data),
            ("data array of strings", rel(json!({"data": ["./2"]})), data),
            (
                "data.id a number",
                rel(json!({"data": {"id": 1}})),
                "relationship 'friend': data.id must be a string",
            ),
            (
                "data.id null",
                rel(json!({"data": {"id": null}})),
                "relationship 'friend': data.id must be a string",
            ),
            (
                "data.lid a number",
                rel(json!({"data": {"lid": 1}})),
                "relationship 'friend': data.lid must be a string",
            ),
            (
                "data[1].id an object",
                rel(json!({"data": [{"id": "./a"}, {"id": {}}]})),
                "relationship 'friend': data[1].id must be a string",
            ),
            (
                "meta a string",
                rel(json!({"meta": "m"})),
                "relationship 'friend': meta must be an object",
            ),
            (
                "meta null",
                rel(json!({"meta": null})),
                "relationship 'friend': meta must be an object",
            ),
        ];
        for (name, resource, want) in bad {
            assert_eq!(check_card_shape(&resource), Err(want.to_string()), "{name}");
            // serialisation, the last gate before storing, refuses it too
            assert!(
                matches!(
                    serialize_card_file(&resource, FILE, REALM),
                    Err(Error::BadRequest(_))
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn document_of_a_stored_card() {
        let stored = serialize_card_file(
            &card(json!({"relationships": {"pet": {"links": {"self": "../Pet/a"}}},
                         "meta": {"fields": {"x": {"adoptsFrom": {"module": "../x", "name": "X"}}}}})),
            FILE,
            REALM,
        )
        .unwrap();
        let id = "http://localhost:4201/test/Person/1";
        let doc: Value = serde_json::from_str(&card_document_text(&stored, id, REALM, 100, 200).unwrap()).unwrap();
        let want = json!({"data": {
            "type": "card",
            "id": id,
            "attributes": {"firstName": "Mango"},
            "relationships": {"pet": {"links": {"self": "../Pet/a"}}},
            "meta": {
                "adoptsFrom": {"module": "../person", "name": "Person"},
                "fields": {"x": {"adoptsFrom": {"module": "../x", "name": "X"}}},
                "lastModified": 200,
                "resourceCreatedAt": 100,
                "realmURL": REALM
            },
            "links": {"self": id}
        }});
        assert_eq!(
            serde_json::to_string(&doc).unwrap(),
            serde_json::to_string(&want).unwrap()
        );
        for bad in ["not json", "{}", r#"{"data": {"attributes": {}}}"#] {
            assert!(
                matches!(
                    card_document_text(bad, id, REALM, 0, 0),
                    Err(Error::UnsupportedMediaType(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn absolutizing_refs() {
        let mut r = card(json!({
            "relationships": {
                "a": {"links": {"self": "./x"}, "data": {"id": "../y"}},
                "b": [{"links": {"self": "z"}}],
                "c": {"data": [{"id": "./w"}, {"lid": "l"}]},
                "d": {"links": {"self": null}}
            },
            "meta": {"adoptsFrom": {"module": "./person.gts"}, "fields": {"f": [{"adoptsFrom": {"module": "./f", "name": "F"}}]}}
        }));
        absolutize_refs(&mut r, "http://localhost:4201/test/dir/").unwrap();
        let base = "http://localhost:4201/test/dir/";
        assert_eq!(
            r["relationships"]["a"],
            json!({"links": {"self": format!("{base}x")}, "data": {"id": "http://localhost:4201/test/y"}})
        );
        assert_eq!(
            r["relationships"]["b"],
            json!([{"links": {"self": format!("{base}z")}}])
        );
        assert_eq!(
            r["relationships"]["c"],
            json!({"data": [{"id": format!("{base}w")}, {"lid": "l"}]})
        );
        assert_eq!(r["relationships"]["d"], json!({"links": {"self": null}}));
        assert_eq!(
            r["meta"]["adoptsFrom"]["module"],
            format!("{base}person.gts")
        );
        assert_eq!(
            r["meta"]["fields"]["f"][0]["adoptsFrom"]["module"],
            format!("{base}f")
        );
    }

    #[test]
    fn index_rows() {
        let id = "http://localhost:4201/test/Person/1";
        let idx = card_index(
            &card(json!({"meta": {"adoptsFrom": {"module": "../person.gts"}}})),
            id,
            id,
        );
        assert_eq!(idx.id, id);
        assert_eq!(idx.card_type, "http://localhost:4201/test/person#Person");
        assert_eq!(idx.search_doc, r#"{"firstName":"Mango"}"#);
        let idx = card_index(
            &json!({"meta": {"adoptsFrom": {"module": "https://cardstack.com/base/card-api", "name": "CardDef"}}}),
            id,
            id,
        );
        assert_eq!(idx.card_type, "https://cardstack.com/base/card-api#CardDef");
        assert_eq!(idx.search_doc, "{}");
    }

    #[test]
    fn a_merged_resource_is_refused_as_its_value_is() {
        let file = CardFile::new(FILE, REALM).unwrap();
        let cases = [
            json!({"attributes": 5, "meta": {"adoptsFrom": {"module": "./p", "name": "P"}}}),
            json!({"attributes": [], "relationships": 3, "meta": {"adoptsFrom": {"module": "./p", "name": "P"}}}),
            json!({"relationships": {"a": 3}, "meta": {"adoptsFrom": {"module": "./p", "name": "P"}}}),
            json!({"attributes": {}, "meta": {"adoptsFrom": {"module": 1, "name": "P"}}}),
            json!({"data": {"attributes": {}, "meta": {"adoptsFrom": {"module": "./p", "name": "P"}}}}),
        ];
        for v in cases {
            let want = serialize_card_parts_owned(v.clone(), &file).map(|c| c.into_value());
            assert_eq!(serialize_resource(Resource::of(v.clone()).unwrap(), &file).map(|c| c.into_value()), want, "{v}");
        }
    }

    #[test]
    fn a_stored_resource_is_the_stored_card() {
        let stored = r#"{"data": {"type": "card", "attributes": {"a": 1, "a": 2}, "meta": {"adoptsFrom": {"module": "./p", "name": "P"}}, "id": "x"}, "data": 5}"#;
        assert_eq!(parse_stored_resource(stored), None, "the last data wins, as in parse_stored_card");
        assert_eq!(parse_stored_card(stored), None);
        for stored in [
            r#"{"data": {"type": "card", "attributes": {"a": 1, "a": 2}, "meta": {"adoptsFrom": {"module": "./p", "name": "P"}}, "id": "x"}}"#,
            r#"{"data": {"attributes": [], "meta": {"adoptsFrom": {"module": "./p", "name": "P"}}}}"#,
            r#"{"data": {"meta": {"adoptsFrom": {"module": "./p"}}}}"#,
            r#"{"data": {"meta": {"adoptsFrom": {"module": "./p", "name": "P"}}}}"#,
            r#"[1]"#,
        ] {
            let want = parse_stored_card(stored).map(Value::Object);
            assert_eq!(parse_stored_resource(stored).map(Resource::into_value), want, "{stored}");
        }
    }

    #[test]
    fn a_serialised_card_has_the_type_its_stored_meta_gives() {
        let modules = ["../person", "./person.gts", "./x.ts.gts", "person.gjs", "/test/person.js", "../../../../up", "./a%20b?q=1#f",
            "http://localhost:4201/test/person.gts", "http://localhost:4201/other/x", "https://cardstack.com/base/card-api",
            "@cardstack/base/card-api", "", "?q", "#f", "."];
        for path in ["Person/1.json", "index.json", "a/b/c.json", "a/b/%2e%2e.json", "a/%2E.json", "a/b/.%2e.json", "a/..x.json"] {
            let file_url = format!("{REALM}{path}");
            let id = file_url.trim_end_matches(".json");
            for module in modules {
                let resource = json!({"type": "card", "meta": {"adoptsFrom": {"module": module, "name": "Person"}, "fields": {"f": {"adoptsFrom": {"module": "./f.gts", "name": "F"}}}}});
                let card = serialize_card_parts(&resource, &file_url, REALM).unwrap();
                let stored = card.clone().into_value();
                assert_eq!(card.card_type, card_index(&stored, id, id).card_type, "{module} in {path}");
            }
        }
    }

    // ---- properties ----

    fn link() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!(null)),
            "[a-c]{1,2}".prop_map(|s| json!(format!("./{s}"))),
            "[a-c]{1,2}".prop_map(|s| json!(format!("../../{s}"))),
            "[a-c]{1,2}".prop_map(|s| json!(format!("http://localhost:4201/test/{s}/x"))),
            "[a-c]{1,2}".prop_map(|s| json!(format!("http://localhost:4201/other/{s}"))),
            "[a-c]{1,2}".prop_map(|s| json!(format!("https://else.example/{s}.gts"))),
            Just(json!("http://localhost:4201/test/")),
            Just(json!("http://localhost:4201/test/Person")),
        ]
    }

    fn relationship() -> impl Strategy<Value = Value> {
        prop_oneof![
            link().prop_map(|l| json!({"links": {"self": l}})),
            link()
                .prop_filter("string", Value::is_string)
                .prop_map(|l| json!({"data": {"type": "card", "id": l}})),
            Just(json!({"data": {"type": "card", "lid": "l1"}})),
            link().prop_map(|l| json!({"links": {"self": l}, "meta": {"k": 1}})),
            Just(json!(null)),
            prop::collection::vec(link().prop_map(|l| json!({"links": {"self": l}})), 0..3)
                .prop_map(Value::Array),
        ]
    }

    fn module() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("./person.gts".to_string()),
            Just("../person".to_string()),
            Just("http://localhost:4201/test/a/b.js".to_string()),
            Just("https://cardstack.com/base/card-api".to_string()),
            Just("http://localhost:4201/other/x.gjs".to_string()),
        ]
    }

    fn resource() -> impl Strategy<Value = Value> {
        (
            prop::collection::vec(("[a-e]", relationship()), 0..4),
            module(),
            prop::option::of(module()),
            any::<bool>(),
        )
            .prop_map(|(rels, m, field_module, with_id)| {
                let mut r = json!({
                    "type": "card",
                    "attributes": {"n": 1},
                    "relationships": Value::Object(rels.into_iter().collect()),
                    "meta": {"adoptsFrom": {"module": m, "name": "T"}, "realmURL": REALM, "lastModified": 3}
                });
                if let Some(fm) = field_module {
                    r["meta"]["fields"] = json!({"f": {"adoptsFrom": {"module": fm, "name": "F"}}, "g": [{"adoptsFrom": {"module": "./g.gts", "name": "G"}}]});
                }
                if with_id {
                    r["id"] = json!("http://localhost:4201/test/Person/1");
                    r["links"] = json!({"self": "http://localhost:4201/test/Person/1"});
                }
                r
            })
    }

    proptest! {
        #[test]
        fn serialising_a_resource_taken_apart_gives_the_same_value(r in resource()) {
            for v in [r.clone(), json!({"data": r})] {
                // Printed: map equality would not see the members' order.
                let borrowed = serialize_card_parts(&v, FILE, REALM).map(|c| c.into_value().to_string());
                let file = CardFile::new(FILE, REALM).unwrap();
                let merged = serialize_resource(Resource::of(v.clone()).unwrap(), &file).map(|c| c.into_value().to_string());
                let owned = serialize_card_parts_owned(v, &file).map(|c| c.into_value().to_string());
                prop_assert_eq!(&owned, &borrowed);
                prop_assert_eq!(merged, borrowed);
            }
        }

        #[test]
        fn serialising_is_idempotent(r in resource()) {
            let once = serialize_card_file(&r, FILE, REALM).unwrap();
            let parsed: Value = serde_json::from_str(&once).unwrap();
            let twice = serialize_card_file(&parsed, FILE, REALM).unwrap();
            prop_assert_eq!(twice, once);
        }

        #[test]
        fn document_round_trips_to_same_file(r in resource()) {
            // GET doc → stored again gives the stored text (what a PATCH of the
            // GET body would write).
            let once = serialize_card_file(&r, FILE, REALM).unwrap();
            let doc: Value = serde_json::from_str(&card_document_text(&once, "http://localhost:4201/test/Person/1", REALM, 1, 2).unwrap()).unwrap();
            let again = serialize_card_file(&doc["data"], FILE, REALM).unwrap();
            prop_assert_eq!(again, once);
        }
    }
}
