//! The request handlers, one per WIT `handlers` export, generic over the
//! host [`Store`]: they validate the request, take the realm write lock for
//! every change, and build the answer from the pure modules.
//!
//! Every error of a lock method is propagated unchanged with `?`, and an
//! early return simply drops the lock, which rolls back.

use serde_json::Value;

use crate::atomic::{existence_error, plan_atomic, results_document, OpKind};
use crate::error::{AtomicError, AtomicErrorKind, Error, Result};
use crate::merge::merge_patch;
use crate::paths;
use crate::serialize::{
    absolutize_refs, card_document, card_index, check_card_shape, index_for_file, is_card_resource,
    parse_stored_card, serialize_card_value,
};
use crate::store::{CardIndex, FileMeta, Store, StoredFile, WriteLock};

/// A card document answered to the client (the WIT `card-response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardResponse {
    /// The JSON:API card document, pretty-printed with 2 spaces.
    pub body: String,
    pub etag: String,
    pub created: i64,
    pub last_modified: i64,
    /// Absolute card id (URL without `.json`).
    pub id: String,
}

const CREATE_INVALID: &str = "Request body is not valid card JSON-API";
const PATCH_NOT_JSON: &str = "Invalid JSON body";
const PATCH_INVALID: &str = "The request body was not a card document";

/// Source-delete fallbacks tried after the exact path, as Boxel does.
const SOURCE_FALLBACK_EXTENSIONS: [&str; 5] = [".js", ".gjs", ".ts", ".gts", ".json"];

/// Whether an `If-Match` header value matches `etag`: `*`, or any
/// comma-separated entry equal to it exactly (strong comparison: a `W/`
/// entry never matches).
pub fn if_match_matches(header: &str, etag: &str) -> bool {
    let header = header.trim();
    header == "*"
        || header
            .split(',')
            .map(str::trim)
            .any(|tag| !tag.starts_with("W/") && tag == etag)
}

fn check_if_match(if_match: Option<&str>, current: Option<&StoredFile>, what: &str) -> Result<()> {
    let Some(header) = if_match else {
        return Ok(());
    };
    match current {
        Some(file) if if_match_matches(header, &file.etag) => Ok(()),
        Some(_) => Err(Error::PreconditionFailed(format!(
            "If-Match does not match the current ETag of {what}"
        ))),
        None => Err(Error::PreconditionFailed(format!(
            "If-Match given but {what} does not exist"
        ))),
    }
}

/// The directory a new card of this type goes in: `adoptsFrom.name`, or
/// for `default` the module's last path segment without extension; `cards`
/// when that is empty or not a usable segment (or starts with `_`).
pub fn card_dir_name(resource: &Value) -> String {
    let adopts = resource.get("meta").and_then(|m| m.get("adoptsFrom"));
    let name = adopts
        .and_then(|a| a.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let candidate = if name == "default" {
        let module = adopts
            .and_then(|a| a.get("module"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let module = module.split(['?', '#']).next().unwrap_or("");
        let last = module
            .split('/')
            .rfind(|s| !s.is_empty() && *s != "." && *s != "..")
            .unwrap_or("");
        match last.rfind('.') {
            Some(i) if i > 0 => &last[..i],
            _ => last,
        }
    } else {
        name
    };
    if paths::is_safe_segment(candidate) && !candidate.starts_with('_') {
        candidate.to_string()
    } else {
        "cards".to_string()
    }
}

fn not_a_card(id: &str) -> Error {
    Error::UnsupportedMediaType(format!("{id} is not a card"))
}

/// 415 when some other file sits at the card's path, else 404.
fn missing_card(other_file_exists: bool, id: &str) -> Error {
    if other_file_exists {
        not_a_card(id)
    } else {
        Error::NotFound(format!("Could not find {id}"))
    }
}

fn respond(
    content: &str,
    id: &str,
    realm: &str,
    etag: &str,
    created: i64,
    last_modified: i64,
) -> Result<CardResponse> {
    let doc =
        card_document(content, id, realm, created, last_modified).map_err(|_| not_a_card(id))?;
    let body = serde_json::to_string_pretty(&doc).map_err(|e| Error::Storage(e.to_string()))?;
    Ok(CardResponse {
        body,
        etag: etag.to_string(),
        created,
        last_modified,
        id: id.to_string(),
    })
}

/// Serialise a card for the realm-local file `path` with its index row.
fn serialize_with_index(resource: &Value, realm: &str, path: &str) -> Result<(String, CardIndex)> {
    let value = serialize_card_value(resource, &paths::file_url(realm, path), realm)?;
    let text = serde_json::to_string_pretty(&value).map_err(|e| Error::Storage(e.to_string()))?;
    let id = paths::card_id(realm, path);
    let index = card_index(&value, &id, &id);
    Ok((text, index))
}

/// A card body `{data, included?}`.
struct CardBody {
    data: Value,
    included: Vec<Value>,
}

fn parse_card_body(body: &str, not_json: &str, invalid: &str) -> Result<CardBody> {
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
struct SideLoad {
    path: String,
    content: String,
    index: CardIndex,
}

/// Plan the `included` cards of a create/patch: entries with a `lid` whose
/// `meta.realmURL` is absent or this realm go to `<dir><DirName>/<lid>.json`;
/// others are skipped. Their relative references are taken relative to
/// `base`. Relationships with a `data.lid` (in `primary` and in the
/// side-loaded cards) are promoted to point at those files.
fn side_loads(
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

/// GET a card: reads `<path>.json` lock-free (a trailing `.json` on `path`
/// is ignored, the empty path is `index`). Missing → 404, or 415 when a
/// file exists at `<path>` itself or `<path>.json` is not a card document.
pub fn get_card<S: Store>(store: &S, realm: &str, path: &str) -> Result<CardResponse> {
    let path = paths::card_path(path);
    let id = paths::card_id(realm, &path);
    match store.read_file(realm, &format!("{path}.json"))? {
        Some(file) => respond(
            &file.content,
            &id,
            realm,
            &file.etag,
            file.created,
            file.last_modified,
        ),
        None => Err(missing_card(store.read_file(realm, &path)?.is_some(), &id)),
    }
}

/// POST a new card into `dir` (empty or ending in `/`) as
/// `<dir><DirName>/<new_name>.json`, with its lid-bearing `included` cards,
/// under the write lock. The handler answers the document; the host sends 201.
pub fn create_card<S: Store>(
    store: &S,
    realm: &str,
    dir: &str,
    new_name: &str,
    body: &str,
) -> Result<CardResponse> {
    if !(dir.is_empty() || dir.ends_with('/')) {
        return Err(Error::BadRequest(format!("'{dir}' is not a directory")));
    }
    if paths::is_reserved(dir) {
        return Err(Error::MethodNotAllowed(format!(
            "POST not allowed for {}",
            paths::file_url(realm, dir)
        )));
    }
    if !dir.is_empty() {
        paths::validate_local_path(dir.trim_end_matches('/'))?;
    }
    if !paths::is_safe_segment(new_name) {
        return Err(Error::BadRequest(format!("Invalid card name '{new_name}'")));
    }
    let CardBody { mut data, included } = parse_card_body(body, CREATE_INVALID, CREATE_INVALID)?;
    let path = format!("{dir}{}/{new_name}.json", card_dir_name(&data));
    let id = paths::card_id(realm, &path);
    // The body's relative references are relative to the URL posted to.
    let base = paths::file_url(realm, dir);
    absolutize_refs(&mut data, &base)?;
    let side = side_loads(realm, dir, &base, &included, &mut data, &path)?;
    let (content, index) = serialize_with_index(&data, realm, &path)?;

    let mut lock = store.with_write_lock(realm)?;
    if lock.exists(&path)? {
        return Err(Error::Conflict(format!(
            "{} already exists",
            paths::file_url(realm, &path)
        )));
    }
    for s in side {
        lock.write(&s.path, &s.content, Some(s.index))?;
    }
    let meta = lock.write(&path, &content, Some(index))?;
    lock.commit()?;
    respond(
        &content,
        &id,
        realm,
        &meta.etag,
        meta.created,
        meta.last_modified,
    )
}

/// PATCH merge onto the stored card `<path>.json`. Under the lock: 404/415
/// as for GET, If-Match (412), merge, and — unless the merge changes
/// nothing and there is nothing side-loaded — serialise, write, commit.
/// A no-op writes and commits nothing and answers the stored document and ETag.
pub fn patch_card<S: Store>(
    store: &S,
    realm: &str,
    path: &str,
    body: &str,
    if_match: Option<&str>,
) -> Result<CardResponse> {
    let path = paths::card_path(path);
    let id = paths::card_id(realm, &path);
    if paths::is_reserved(&path) {
        return Err(Error::MethodNotAllowed(format!(
            "PATCH not allowed for {id}"
        )));
    }
    paths::validate_local_path(&path)?;
    let file_path = format!("{path}.json");
    let CardBody {
        data: mut patch,
        included,
    } = parse_card_body(body, PATCH_NOT_JSON, PATCH_INVALID)?;
    // The patch's references are relative to the card (the file's directory),
    // which is also what the included cards' references are relative to.
    let side = side_loads(realm, "", &id, &included, &mut patch, &file_path)?;

    let mut lock = store.with_write_lock(realm)?;
    let Some(stored) = lock.read(&file_path)? else {
        return Err(missing_card(lock.exists(&path)?, &id));
    };
    check_if_match(if_match, Some(&stored), &id)?;
    let original =
        Value::Object(parse_stored_card(&stored.content).ok_or_else(|| not_a_card(&id))?);
    let merged = merge_patch(&original, &patch, &id)?;
    let unchanged = |stored: &StoredFile| {
        respond(
            &stored.content,
            &id,
            realm,
            &stored.etag,
            stored.created,
            stored.last_modified,
        )
    };
    if side.is_empty() && merged == original {
        return unchanged(&stored);
    }
    let (content, index) = serialize_with_index(&merged, realm, &file_path)?;
    if side.is_empty() && content == stored.content {
        return unchanged(&stored);
    }
    for s in side {
        lock.write(&s.path, &s.content, Some(s.index))?;
    }
    let meta = lock.write(&file_path, &content, Some(index))?;
    lock.commit()?;
    respond(
        &content,
        &id,
        realm,
        &meta.etag,
        meta.created,
        meta.last_modified,
    )
}

/// DELETE the card file `<path>.json` (and its index row) under the lock:
/// 405 on `_` paths, 404/415 as for GET, 412 on an If-Match mismatch.
pub fn delete_card<S: Store>(
    store: &S,
    realm: &str,
    path: &str,
    if_match: Option<&str>,
) -> Result<()> {
    let path = paths::card_path(path);
    let id = paths::card_id(realm, &path);
    if paths::is_reserved(&path) {
        return Err(Error::MethodNotAllowed(format!(
            "DELETE not allowed for {id}"
        )));
    }
    paths::validate_local_path(&path)?;
    let file_path = format!("{path}.json");
    let mut lock = store.with_write_lock(realm)?;
    let Some(stored) = lock.read(&file_path)? else {
        return Err(missing_card(lock.exists(&path)?, &id));
    };
    check_if_match(if_match, Some(&stored), &id)?;
    if parse_stored_card(&stored.content).is_none() {
        return Err(not_a_card(&id));
    }
    lock.delete(&file_path)?;
    lock.commit()
}

/// 405 for a source write to the `_` namespace (realm endpoints), as on
/// the card routes; checked before the lock is taken.
fn refuse_reserved(method: &str, realm: &str, path: &str) -> Result<()> {
    if paths::is_reserved(path) {
        Err(Error::MethodNotAllowed(format!(
            "{method} not allowed for {}",
            paths::file_url(realm, path)
        )))
    } else {
        Ok(())
    }
}

/// POST a source file verbatim under the lock (If-Match checked inside it;
/// If-Match on a missing file → 412). A `.json` file whose content is a
/// card document gets its index row. An invalid path → 400, a path in the
/// `_` namespace → 405, both before the lock.
pub fn write_source<S: Store>(
    store: &S,
    realm: &str,
    path: &str,
    content: &str,
    if_match: Option<&str>,
) -> Result<FileMeta> {
    paths::validate_local_path(path)?;
    refuse_reserved("POST", realm, path)?;
    let mut lock = store.with_write_lock(realm)?;
    if if_match.is_some() {
        let current = lock.read(path)?;
        check_if_match(if_match, current.as_ref(), &paths::file_url(realm, path))?;
    }
    let index = index_for_file(realm, path, content);
    let meta = lock.write(path, content, index)?;
    lock.commit()?;
    Ok(meta)
}

/// DELETE a source file under the lock. Like Boxel, when `path` itself does
/// not exist `path` + `.js .gjs .ts .gts .json` are tried in that order;
/// none → 404. If-Match mismatch → 412. Invalid path → 400, `_` path → 405.
pub fn delete_source<S: Store>(
    store: &S,
    realm: &str,
    path: &str,
    if_match: Option<&str>,
) -> Result<()> {
    paths::validate_local_path(path)?;
    refuse_reserved("DELETE", realm, path)?;
    let mut lock = store.with_write_lock(realm)?;
    let candidates = std::iter::once(path.to_string()).chain(
        SOURCE_FALLBACK_EXTENSIONS
            .iter()
            .map(|ext| format!("{path}{ext}")),
    );
    let mut found = None;
    for candidate in candidates {
        if let Some(file) = lock.read(&candidate)? {
            found = Some((candidate, file));
            break;
        }
    }
    let Some((actual, file)) = found else {
        return Err(Error::NotFound(format!("{path} not found")));
    };
    check_if_match(if_match, Some(&file), &paths::file_url(realm, &actual))?;
    lock.delete(&actual)?;
    lock.commit()
}

/// POST `/_atomic`: validate without the lock ([`plan_atomic`]), then under
/// the lock check every op's existence (409 / 404, all errors listed, nothing
/// written), then apply every op and commit once. Answers the
/// `atomic:results` document in request order (`created` null for removals).
/// A `PayloadTooLarge` from a write is answered as a one-entry
/// `Error::Atomic` (kind `PayloadTooLarge`); every other lock error
/// propagates unchanged.
pub fn atomic<S: Store>(store: &S, realm: &str, body: &str) -> Result<String> {
    let ops = plan_atomic(realm, body)?;
    let mut lock = store.with_write_lock(realm)?;
    let mut errors = Vec::new();
    for op in &ops {
        let exists = lock.exists(&op.path)?;
        errors.extend(existence_error(op, exists));
    }
    if !errors.is_empty() {
        return Err(Error::Atomic(errors));
    }
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        match (op.op, op.content) {
            (OpKind::Remove, _) => {
                lock.delete(&op.path)?;
                results.push((op.url, None));
            }
            (_, Some(content)) => {
                let meta = match lock.write(&op.path, &content, op.index) {
                    Ok(meta) => meta,
                    // Listed like the other /_atomic errors; returning drops
                    // the lock, so everything written so far rolls back.
                    Err(Error::PayloadTooLarge(detail)) => {
                        return Err(Error::Atomic(vec![AtomicError {
                            kind: AtomicErrorKind::PayloadTooLarge,
                            title: "Payload Too Large".into(),
                            detail,
                        }]))
                    }
                    Err(e) => return Err(e),
                };
                results.push((op.url, Some(meta.created)));
            }
            (_, None) => {
                return Err(Error::Storage(format!(
                    "planned {:?} of {} has no content",
                    op.op, op.href
                )));
            }
        }
    }
    lock.commit()?;
    results_document(&results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use serde_json::json;

    const REALM: &str = "http://localhost:4201/test/";

    fn person(attrs: Value) -> Value {
        json!({"type": "card", "attributes": attrs,
               "meta": {"adoptsFrom": {"module": "./person.gts", "name": "Person"}}})
    }

    fn doc(data: Value) -> String {
        json!({ "data": data }).to_string()
    }

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    /// A store holding `person-1.json` (Mango, with cardInfo) and `greeting.txt`.
    fn seeded() -> MemoryStore {
        let store = MemoryStore::new();
        store.set_clock(1000);
        write_source(
            &store,
            REALM,
            "person-1.json",
            &serialize_with_index(
                &person(json!({"firstName": "Mango", "cardInfo": {"title": null, "summary": "s"}})),
                REALM,
                "person-1.json",
            )
            .unwrap()
            .0,
            None,
        )
        .unwrap();
        write_source(&store, REALM, "greeting.txt", "hello", None).unwrap();
        store.advance_clock(10);
        store
    }

    fn stored_data(store: &MemoryStore, path: &str) -> Value {
        parse(&store.file(REALM, path).unwrap().content)["data"].clone()
    }

    #[test]
    fn if_match_rules() {
        let cases = [
            ("\"1-a\"", "\"1-a\"", true),
            ("*", "\"1-a\"", true),
            ("\"0-x\", \"1-a\"", "\"1-a\"", true),
            ("  \"1-a\"  ", "\"1-a\"", true),
            ("\"1-b\"", "\"1-a\"", false),
            ("W/\"1-a\"", "\"1-a\"", false),
            ("1-a", "\"1-a\"", false),
            ("", "\"1-a\"", false),
        ];
        for (header, etag, want) in cases {
            assert_eq!(if_match_matches(header, etag), want, "{header} vs {etag}");
        }
    }

    #[test]
    fn dir_names() {
        let cases = [
            (json!({"module": "./person", "name": "Person"}), "Person"),
            (json!({"module": "./pet.gts", "name": "default"}), "pet"),
            (
                json!({"module": "https://cardstack.com/base/card-api", "name": "default"}),
                "card-api",
            ),
            (json!({"module": "./dir/", "name": "default"}), "dir"),
            (json!({"module": "./", "name": "default"}), "cards"),
            (json!({"module": "./x", "name": "a/b"}), "cards"),
            (json!({"module": "./x", "name": "_Hidden"}), "cards"),
        ];
        for (adopts, want) in cases {
            assert_eq!(
                card_dir_name(&json!({"meta": {"adoptsFrom": adopts}})),
                want,
                "{adopts}"
            );
        }
    }

    #[test]
    fn create_then_get() {
        let store = MemoryStore::new();
        store.set_clock(50);
        let created = create_card(
            &store,
            REALM,
            "",
            "abc",
            &doc(person(json!({"firstName": "Van"}))),
        )
        .unwrap();
        assert_eq!(created.id, "http://localhost:4201/test/Person/abc");
        assert_eq!((created.created, created.last_modified), (50, 50));
        let body = parse(&created.body);
        assert_eq!(body["data"]["id"], created.id.as_str());
        assert_eq!(body["data"]["links"]["self"], created.id.as_str());
        assert_eq!(body["data"]["type"], "card");
        assert_eq!(body["data"]["attributes"]["firstName"], "Van");
        assert_eq!(body["data"]["meta"]["realmURL"], REALM);
        assert_eq!(body["data"]["meta"]["lastModified"], 50);
        assert_eq!(body["data"]["meta"]["resourceCreatedAt"], 50);

        // stored file: module relative to Person/abc.json, extension trimmed
        assert_eq!(
            stored_data(&store, "Person/abc.json")["meta"]["adoptsFrom"]["module"],
            "../person"
        );
        let row = store.index_row(REALM, "Person/abc.json").unwrap();
        assert_eq!(row.card_type, "http://localhost:4201/test/person#Person");
        assert_eq!(row.search_doc, r#"{"firstName":"Van"}"#);

        for path in ["Person/abc", "Person/abc.json"] {
            let got = get_card(&store, REALM, path).unwrap();
            assert_eq!(got, created, "{path}");
        }
        assert_eq!(store.commits(), 1);
    }

    #[test]
    fn create_paths() {
        let store = MemoryStore::new();
        create_card(&store, REALM, "sub/", "n1", &doc(person(json!({})))).unwrap();
        let pet = json!({"meta": {"adoptsFrom": {"module": "./pet.gts", "name": "default"}}});
        create_card(&store, REALM, "", "n2", &doc(pet)).unwrap();
        assert_eq!(
            store.paths(REALM),
            vec!["pet/n2.json", "sub/Person/n1.json"]
        );
        // the module is relative to sub/Person/n1.json: ./person.gts from there
        assert_eq!(
            stored_data(&store, "sub/Person/n1.json")["meta"]["adoptsFrom"]["module"],
            "../person"
        );
        // an existing file is never overwritten
        assert!(matches!(
            create_card(
                &store,
                REALM,
                "",
                "n2",
                &doc(json!({"meta": {"adoptsFrom": {"module": "./pet", "name": "default"}}}))
            ),
            Err(Error::Conflict(_))
        ));
    }

    #[test]
    fn create_refusals() {
        let msg = CREATE_INVALID.to_string();
        let cases: Vec<(&str, &str, &str, String, Error)> = vec![
            (
                "not JSON",
                "",
                "x",
                "{".into(),
                Error::BadRequest(msg.clone()),
            ),
            (
                "no data",
                "",
                "x",
                "{}".into(),
                Error::BadRequest(msg.clone()),
            ),
            (
                "data without adoptsFrom",
                "",
                "x",
                doc(json!({"attributes": {}})),
                Error::BadRequest(msg.clone()),
            ),
            (
                "included not an array",
                "",
                "x",
                json!({"data": person(json!({})), "included": {}}).to_string(),
                Error::BadRequest(format!("{msg}: included is not array")),
            ),
            (
                "included entry not a card",
                "",
                "x",
                json!({"data": person(json!({})), "included": [{"lid": "a"}]}).to_string(),
                Error::BadRequest(format!(
                    "{msg}: side-loaded data is not a valid card resource"
                )),
            ),
            (
                "unknown lid",
                "",
                "x",
                doc(
                    json!({"relationships": {"pet": {"data": {"lid": "nope"}}}, "meta": {"adoptsFrom": {"module": "./p", "name": "P"}}}),
                ),
                Error::BadRequest("Could not find local id nope in included".into()),
            ),
            (
                "reserved dir",
                "_x/",
                "x",
                doc(person(json!({}))),
                Error::MethodNotAllowed(
                    "POST not allowed for http://localhost:4201/test/_x/".into(),
                ),
            ),
        ];
        for (name, dir, new_name, body, want) in cases {
            let store = MemoryStore::new();
            assert_eq!(
                create_card(&store, REALM, dir, new_name, &body),
                Err(want),
                "{name}"
            );
            assert!(store.paths(REALM).is_empty(), "{name}: nothing written");
        }
        let store = MemoryStore::new();
        assert!(matches!(
            create_card(&store, REALM, "dir", "x", &doc(person(json!({})))),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            create_card(&store, REALM, "", "a/b", &doc(person(json!({})))),
            Err(Error::BadRequest(_))
        ));
    }

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
    fn patch_merges() {
        let store = seeded();
        let before = store.file(REALM, "person-1.json").unwrap();
        let patch = doc(json!({"type": "card", "id": "ignored",
            "attributes": {"cardInfo": {"summary": "new"}},
            "relationships": {"pet": {"links": {"self": "http://localhost:4201/test/Pet/mango"}}},
            "meta": {"adoptsFrom": {"module": "./person.gts", "name": "Person"}, "lastModified": 1}}));
        let res = patch_card(&store, REALM, "person-1", &patch, None).unwrap();
        assert_ne!(res.etag, before.etag);
        assert_eq!((res.created, res.last_modified), (1000, 1010));
        let data = stored_data(&store, "person-1.json");
        assert_eq!(
            data["attributes"],
            json!({"firstName": "Mango", "cardInfo": {"title": null, "summary": "new"}})
        );
        assert_eq!(
            data["relationships"],
            json!({"pet": {"links": {"self": "./Pet/mango"}}})
        );
        assert_eq!(
            data["meta"],
            json!({"adoptsFrom": {"module": "./person", "name": "Person"}})
        );
        let body = parse(&res.body);
        assert_eq!(body["data"]["attributes"]["cardInfo"]["summary"], "new");
        assert_eq!(body["data"]["meta"]["lastModified"], 1010);
        assert_eq!(res, get_card(&store, REALM, "person-1").unwrap());
        // also accepts the `.json` form
        patch_card(
            &store,
            REALM,
            "person-1.json",
            &doc(person(json!({"firstName": "M2"}))),
            None,
        )
        .unwrap();
        assert_eq!(
            stored_data(&store, "person-1.json")["attributes"]["firstName"],
            "M2"
        );
    }

    #[test]
    fn noop_patch_writes_nothing() {
        let store = seeded();
        let before = get_card(&store, REALM, "person-1").unwrap();
        let (writes, commits) = (store.write_calls(), store.commits());
        let cases = [
            ("same value", person(json!({"firstName": "Mango"}))),
            ("empty attributes", person(json!({}))),
            (
                "server keys only",
                json!({"type": "card", "id": "x", "links": {"self": "x"},
                "meta": {"adoptsFrom": {"module": "./person", "name": "Person"}, "lastModified": 5, "realmURL": REALM}}),
            ),
            (
                "module with extension serialises identically",
                person(json!({"cardInfo": {"summary": "s"}})),
            ),
        ];
        for (name, patch) in cases {
            let res =
                patch_card(&store, REALM, "person-1", &doc(patch), Some(&before.etag)).unwrap();
            assert_eq!(res, before, "{name}");
            assert_eq!(
                (store.write_calls(), store.commits()),
                (writes, commits),
                "{name}"
            );
            assert!(!store.is_locked(REALM), "{name}: lock released");
        }
    }

    #[test]
    fn if_match_on_patch_and_delete() {
        let store = seeded();
        let etag = store.file(REALM, "person-1.json").unwrap().etag;
        let patch = doc(person(json!({"firstName": "X"})));
        for bad in ["\"nope\"", &format!("W/{etag}")] {
            assert!(
                matches!(
                    patch_card(&store, REALM, "person-1", &patch, Some(bad)),
                    Err(Error::PreconditionFailed(_))
                ),
                "{bad}"
            );
            assert!(
                matches!(
                    delete_card(&store, REALM, "person-1", Some(bad)),
                    Err(Error::PreconditionFailed(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            store.file(REALM, "person-1.json").unwrap().etag,
            etag,
            "unchanged"
        );
        let res = patch_card(
            &store,
            REALM,
            "person-1",
            &patch,
            Some(&format!("\"other\", {etag}")),
        )
        .unwrap();
        assert_ne!(res.etag, etag);
        // the old etag no longer matches
        assert!(matches!(
            patch_card(
                &store,
                REALM,
                "person-1",
                &doc(person(json!({"firstName": "Y"}))),
                Some(&etag)
            ),
            Err(Error::PreconditionFailed(_))
        ));
        patch_card(
            &store,
            REALM,
            "person-1",
            &doc(person(json!({"firstName": "Y"}))),
            Some("*"),
        )
        .unwrap();
        delete_card(&store, REALM, "person-1", Some("*")).unwrap();
        // missing card: 404 even with If-Match
        assert!(matches!(
            patch_card(&store, REALM, "person-1", &patch, Some("*")),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            delete_card(&store, REALM, "person-1", Some("*")),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn patch_refusals() {
        let store = seeded();
        let good = doc(person(json!({"firstName": "X"})));
        let cases: Vec<(&str, &str, String, Error)> = vec![
            (
                "invalid JSON",
                "person-1",
                "{".into(),
                Error::BadRequest("Invalid JSON body".into()),
            ),
            (
                "not a card document",
                "person-1",
                doc(json!({"attributes": {}})),
                Error::BadRequest("The request body was not a card document".into()),
            ),
            (
                "no data",
                "person-1",
                "[]".into(),
                Error::BadRequest("The request body was not a card document".into()),
            ),
            (
                "type change",
                "person-1",
                doc(json!({"meta": {"adoptsFrom": {"module": "./pet", "name": "Pet"}}})),
                Error::BadRequest(
                    r#"Cannot change card instance type to {"module":"./pet","name":"Pet"}"#.into(),
                ),
            ),
            (
                "missing card",
                "nobody",
                good.clone(),
                Error::NotFound("Could not find http://localhost:4201/test/nobody".into()),
            ),
            (
                "non-json file",
                "greeting.txt",
                good.clone(),
                Error::UnsupportedMediaType(
                    "http://localhost:4201/test/greeting.txt is not a card".into(),
                ),
            ),
            (
                "reserved path",
                "_info",
                good.clone(),
                Error::MethodNotAllowed(
                    "PATCH not allowed for http://localhost:4201/test/_info".into(),
                ),
            ),
        ];
        let before = store.file(REALM, "person-1.json").unwrap();
        for (name, path, body, want) in cases {
            assert_eq!(
                patch_card(&store, REALM, path, &body, None),
                Err(want),
                "{name}"
            );
        }
        assert_eq!(store.file(REALM, "person-1.json").unwrap(), before);
        assert_eq!(store.paths(REALM).len(), 2);
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

    #[test]
    fn get_rules() {
        let store = seeded();
        assert!(matches!(
            get_card(&store, REALM, "nobody"),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            get_card(&store, REALM, "greeting.txt"),
            Err(Error::UnsupportedMediaType(_))
        ));
        store.put(REALM, "config.json", r#"{"not": "a card"}"#, None);
        assert!(matches!(
            get_card(&store, REALM, "config"),
            Err(Error::UnsupportedMediaType(_))
        ));
        assert!(
            matches!(get_card(&store, REALM, ""), Err(Error::NotFound(m)) if m == "Could not find http://localhost:4201/test/index")
        );
        store.put(
            REALM,
            "index.json",
            &serialize_with_index(&person(json!({})), REALM, "index.json")
                .unwrap()
                .0,
            None,
        );
        assert_eq!(
            get_card(&store, REALM, "").unwrap().id,
            "http://localhost:4201/test/index"
        );
    }

    #[test]
    fn delete_rules() {
        let store = seeded();
        assert!(store.index_row(REALM, "person-1.json").is_some());
        delete_card(&store, REALM, "person-1.json", None).unwrap();
        assert_eq!(store.file(REALM, "person-1.json"), None);
        assert_eq!(store.index_row(REALM, "person-1.json"), None);
        assert!(matches!(
            delete_card(&store, REALM, "person-1", None),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            delete_card(&store, REALM, "greeting.txt", None),
            Err(Error::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            delete_card(&store, REALM, "_x", None),
            Err(Error::MethodNotAllowed(_))
        ));
        assert_eq!(store.paths(REALM), vec!["greeting.txt"]);
    }

    #[test]
    fn source_writes() {
        let store = seeded();
        let meta =
            write_source(&store, REALM, "person.gts", "export class Person {}", None).unwrap();
        assert!(!meta.existed);
        assert_eq!(store.index_row(REALM, "person.gts"), None);
        // If-Match on a missing file → 412
        assert!(matches!(
            write_source(&store, REALM, "new.gts", "x", Some("*")),
            Err(Error::PreconditionFailed(_))
        ));
        assert_eq!(store.file(REALM, "new.gts"), None);
        // mismatch → 412, match → written
        assert!(matches!(
            write_source(&store, REALM, "person.gts", "y", Some("\"nope\"")),
            Err(Error::PreconditionFailed(_))
        ));
        let again = write_source(&store, REALM, "person.gts", "y", Some(&meta.etag)).unwrap();
        assert!(again.existed);
        assert_ne!(again.etag, meta.etag);
        // a card document written as source is indexed
        let card = serialize_with_index(&person(json!({"firstName": "S"})), REALM, "s.json")
            .unwrap()
            .0;
        write_source(&store, REALM, "s.json", &card, None).unwrap();
        assert_eq!(
            store.index_row(REALM, "s.json").unwrap().id,
            "http://localhost:4201/test/s"
        );
        assert!(matches!(
            write_source(&store, REALM, "", "x", None),
            Err(Error::BadRequest(_))
        ));
    }

    #[test]
    fn source_deletes() {
        let store = seeded();
        write_source(&store, REALM, "person.gts", "x", None).unwrap();
        let etag = store.file(REALM, "greeting.txt").unwrap().etag;
        assert!(matches!(
            delete_source(&store, REALM, "greeting.txt", Some("\"nope\"")),
            Err(Error::PreconditionFailed(_))
        ));
        delete_source(&store, REALM, "greeting.txt", Some(&etag)).unwrap();
        // fallback extensions
        delete_source(&store, REALM, "person", None).unwrap();
        assert_eq!(store.file(REALM, "person.gts"), None);
        assert!(matches!(
            delete_source(&store, REALM, "person", None),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            delete_source(&store, REALM, "greeting.txt", Some("*")),
            Err(Error::NotFound(_))
        ));
        assert_eq!(store.paths(REALM), vec!["person-1.json"]);
    }

    fn atomic_body(ops: Value) -> String {
        json!({ "atomic:operations": ops }).to_string()
    }

    #[test]
    fn atomic_applies_all_ops_in_one_commit() {
        let store = seeded();
        let commits = store.commits();
        let text = atomic(
            &store,
            REALM,
            &atomic_body(json!([
                {"op": "add", "href": "new-person.json", "data": person(json!({"firstName": "New"}))},
                {"op": "add", "href": "pet.gts", "data": {"type": "source", "attributes": {"content": "export class Pet {}"}}},
                {"op": "update", "href": "person-1.json", "data": person(json!({"lastName": "Only"}))},
                {"op": "remove", "href": "greeting.txt"},
            ])),
        )
        .unwrap();
        assert_eq!(
            parse(&text),
            json!({"atomic:results": [
                {"data": {"id": "http://localhost:4201/test/new-person.json"}, "meta": {"created": 1010}},
                {"data": {"id": "http://localhost:4201/test/pet.gts"}, "meta": {"created": 1010}},
                {"data": {"id": "http://localhost:4201/test/person-1.json"}, "meta": {"created": 1000}},
                {"data": {"id": "http://localhost:4201/test/greeting.txt"}, "meta": {"created": null}}
            ]})
        );
        assert_eq!(store.commits(), commits + 1);
        assert_eq!(
            store.paths(REALM),
            vec!["new-person.json", "person-1.json", "pet.gts"]
        );
        assert_eq!(
            store.file(REALM, "pet.gts").unwrap().content,
            "export class Pet {}"
        );
        // update replaces the whole card: no merge with the stored firstName/cardInfo
        assert_eq!(
            stored_data(&store, "person-1.json")["attributes"],
            json!({"lastName": "Only"})
        );
        assert_eq!(
            store.index_row(REALM, "new-person.json").unwrap().id,
            "http://localhost:4201/test/new-person"
        );
        assert_eq!(
            stored_data(&store, "new-person.json")["meta"]["adoptsFrom"]["module"],
            "./person"
        );
    }

    #[test]
    fn atomic_existence_errors_list_everything_and_write_nothing() {
        let store = seeded();
        let (writes, commits) = (store.write_calls(), store.commits());
        let err = atomic(
            &store,
            REALM,
            &atomic_body(json!([
                {"op": "add", "href": "ok.json", "data": person(json!({}))},
                {"op": "add", "href": "person-1.json", "data": person(json!({}))},
                {"op": "update", "href": "missing.json", "data": person(json!({}))},
                {"op": "remove", "href": "gone.txt"},
            ])),
        )
        .unwrap_err();
        let Error::Atomic(errors) = err else {
            panic!("{err:?}")
        };
        let got: Vec<(AtomicErrorKind, &str, &str)> = errors
            .iter()
            .map(|e| (e.kind, e.title.as_str(), e.detail.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    AtomicErrorKind::Conflict,
                    "Resource already exists",
                    "Resource person-1.json already exists"
                ),
                (
                    AtomicErrorKind::NotFound,
                    "Resource does not exist",
                    "Resource missing.json does not exist"
                ),
                (
                    AtomicErrorKind::NotFound,
                    "Resource does not exist",
                    "Resource gone.txt does not exist"
                ),
            ]
        );
        assert_eq!((store.write_calls(), store.commits()), (writes, commits));
        assert_eq!(store.file(REALM, "ok.json"), None);
        assert!(!store.is_locked(REALM));
    }

    #[test]
    fn atomic_validation_happens_before_the_lock() {
        let store = seeded();
        let held = store.with_write_lock(REALM).unwrap();
        let err = atomic(
            &store,
            REALM,
            &atomic_body(json!([{"op": "frob", "href": "x.json"}])),
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::Atomic(ref e) if e.len() == 1 && e[0].kind == AtomicErrorKind::Unprocessable),
            "{err:?}"
        );
        // a valid body needs the lock, and the lock error propagates unchanged
        let err = atomic(
            &store,
            REALM,
            &atomic_body(json!([{"op": "remove", "href": "greeting.txt"}])),
        )
        .unwrap_err();
        assert!(matches!(err, Error::LockHeld(_)), "{err:?}");
        drop(held);
        assert!(matches!(
            atomic(&store, REALM, "not json"),
            Err(Error::Atomic(_))
        ));
    }

    #[test]
    fn atomic_failing_op_leaves_no_trace() {
        let store = seeded();
        store.fail_writes_to(Some("b.json"));
        let before: Vec<_> = store
            .paths(REALM)
            .iter()
            .map(|p| store.file(REALM, p))
            .collect();
        let err = atomic(
            &store,
            REALM,
            &atomic_body(json!([
                {"op": "add", "href": "a.json", "data": person(json!({}))},
                {"op": "remove", "href": "greeting.txt"},
                {"op": "add", "href": "b.json", "data": person(json!({}))},
            ])),
        )
        .unwrap_err();
        assert_eq!(
            err,
            Error::Storage("injected write failure for b.json".into())
        );
        let after: Vec<_> = store
            .paths(REALM)
            .iter()
            .map(|p| store.file(REALM, p))
            .collect();
        assert_eq!(after, before);
        assert!(!store.is_locked(REALM));
        // invalid data in one op: refused, nothing written
        store.fail_writes_to(None);
        let err = atomic(
            &store,
            REALM,
            &atomic_body(json!([
                {"op": "add", "href": "a.json", "data": person(json!({}))},
                {"op": "add", "href": "c.json", "data": {"type": "card", "attributes": {}}},
            ])),
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::Atomic(ref e) if e[0].kind == AtomicErrorKind::Unprocessable),
            "{err:?}"
        );
        assert_eq!(store.file(REALM, "a.json"), None);
    }

    #[test]
    fn size_limits() {
        let store = seeded();
        store.set_limits(1024, 4096);
        let big = "x".repeat(2000);
        let before = store.file(REALM, "person-1.json").unwrap();
        // card routes: the host's error propagates unchanged, nothing is written
        assert!(matches!(
            patch_card(
                &store,
                REALM,
                "person-1",
                &doc(person(json!({"bio": big}))),
                None
            ),
            Err(Error::PayloadTooLarge(_))
        ));
        assert!(matches!(
            create_card(&store, REALM, "", "n", &doc(person(json!({"bio": big})))),
            Err(Error::PayloadTooLarge(_))
        ));
        assert_eq!(store.file(REALM, "person-1.json").unwrap(), before);
        // a 2000-byte source is under the file limit
        write_source(&store, REALM, "bio.txt", &big, None).unwrap();
        // /_atomic lists it as a 413 error and rolls back the earlier ops
        let err = atomic(
            &store,
            REALM,
            &atomic_body(json!([
                {"op": "add", "href": "small.txt", "data": {"type": "source", "attributes": {"content": "s"}}},
                {"op": "remove", "href": "greeting.txt"},
                {"op": "add", "href": "big.json", "data": person(json!({"bio": big}))},
            ])),
        )
        .unwrap_err();
        let Error::Atomic(errors) = err else {
            panic!("{err:?}")
        };
        assert_eq!(errors.len(), 1);
        assert_eq!(
            (errors[0].kind, errors[0].title.as_str()),
            (AtomicErrorKind::PayloadTooLarge, "Payload Too Large")
        );
        assert_eq!(store.file(REALM, "small.txt"), None);
        assert!(store.file(REALM, "greeting.txt").is_some());
        assert!(!store.is_locked(REALM));
    }

    #[test]
    fn lock_and_commit_errors_propagate() {
        let store = seeded();
        let held = store.with_write_lock(REALM).unwrap();
        let patch = doc(person(json!({"firstName": "Z"})));
        assert!(matches!(
            patch_card(&store, REALM, "person-1", &patch, None),
            Err(Error::LockHeld(_))
        ));
        assert!(matches!(
            delete_card(&store, REALM, "person-1", None),
            Err(Error::LockHeld(_))
        ));
        assert!(matches!(
            write_source(&store, REALM, "a.txt", "a", None),
            Err(Error::LockHeld(_))
        ));
        assert!(matches!(
            delete_source(&store, REALM, "greeting.txt", None),
            Err(Error::LockHeld(_))
        ));
        assert!(matches!(
            create_card(&store, REALM, "", "n", &patch),
            Err(Error::LockHeld(_))
        ));
        drop(held);

        store.fail_next_commit();
        assert_eq!(
            create_card(&store, REALM, "", "n", &patch),
            Err(Error::Storage("injected commit failure".into()))
        );
        assert_eq!(store.file(REALM, "Person/n.json"), None);
        store.fail_writes_to(Some("person-1.json"));
        assert!(matches!(
            patch_card(&store, REALM, "person-1", &patch, None),
            Err(Error::Storage(_))
        ));
        assert_eq!(
            stored_data(&store, "person-1.json")["attributes"]["firstName"],
            "Mango"
        );
        assert!(!store.is_locked(REALM));
    }

    #[test]
    fn reserved_namespace_on_source_routes() {
        let store = seeded();
        store.put(REALM, "_anything", "planted", None);
        store.put(REALM, "_x.gts", "planted", None);
        let before = store.paths(REALM);
        let url = |p: &str| format!("{REALM}{p}");
        // (method, path, expected message); all refused before the lock.
        let cases = [
            ("POST", "_anything", url("_anything")),
            ("POST", "_dir/a.txt", url("_dir/a.txt")),
            ("POST", "_atomic", url("_atomic")),
            ("POST", "_x.json", url("_x.json")),
            ("DELETE", "_anything", url("_anything")),
            ("DELETE", "_x", url("_x")),
            ("DELETE", "_dir/a.txt", url("_dir/a.txt")),
        ];
        let held = store.with_write_lock(REALM).unwrap();
        for (method, path, url) in &cases {
            let got = match *method {
                "POST" => {
                    write_source(&store, REALM, path, &doc(person(json!({}))), None).map(|_| ())
                }
                _ => delete_source(&store, REALM, path, None),
            };
            assert_eq!(
                got,
                Err(Error::MethodNotAllowed(format!(
                    "{method} not allowed for {url}"
                ))),
                "{method} {path}"
            );
        }
        let got = atomic(
            &store,
            REALM,
            &atomic_body(json!([{"op": "remove", "href": "./_anything"}])),
        );
        assert!(
            matches!(got, Err(Error::Atomic(ref e)) if e.len() == 1 && e[0].kind == AtomicErrorKind::BadRequest),
            "{got:?}"
        );
        drop(held);
        for (method, path, _) in &cases {
            let got = match *method {
                "POST" => write_source(&store, REALM, path, "x", None).map(|_| ()),
                _ => delete_source(&store, REALM, path, None),
            };
            assert!(
                matches!(got, Err(Error::MethodNotAllowed(_))),
                "{method} {path}: {got:?}"
            );
        }
        assert_eq!(store.paths(REALM), before, "nothing written or deleted");
        assert_eq!(store.file(REALM, "_anything").unwrap().content, "planted");
        // `_` further down is an ordinary name
        write_source(&store, REALM, "dir/_x.txt", "fine", None).unwrap();
        delete_source(&store, REALM, "dir/_x.txt", None).unwrap();
    }

    #[test]
    fn control_characters_are_refused_everywhere() {
        let store = seeded();
        let controls: Vec<char> = (0u8..0x20).chain([0x7f]).map(char::from).collect();
        for &c in &controls {
            store.put(REALM, &format!("a{c}b.txt"), "planted", None);
        }
        let before: Vec<_> = store
            .paths(REALM)
            .iter()
            .map(|p| store.file(REALM, p))
            .collect();
        for &c in &controls {
            let path = format!("a{c}b.txt");
            let bad = |got: Result<()>, what: &str| {
                assert!(
                    matches!(got, Err(Error::BadRequest(_))),
                    "{what} {c:?}: {got:?}"
                );
            };
            bad(
                write_source(&store, REALM, &path, "x", None).map(|_| ()),
                "source POST",
            );
            bad(
                write_source(&store, REALM, &format!("dir/x{c}.json"), "x", None).map(|_| ()),
                "source POST in a dir",
            );
            bad(delete_source(&store, REALM, &path, None), "source DELETE");
            let card = doc(person(json!({})));
            bad(
                create_card(&store, REALM, &format!("d{c}/"), "n", &card).map(|_| ()),
                "create in dir",
            );
            bad(
                create_card(&store, REALM, "", &format!("n{c}"), &card).map(|_| ()),
                "create named",
            );
            let with_lid = json!({
                "data": {"relationships": {"pet": {"data": {"lid": format!("p{c}")}}},
                         "meta": {"adoptsFrom": {"module": "./person", "name": "Person"}}},
                "included": [{"lid": format!("p{c}"), "meta": {"adoptsFrom": {"module": "./pet", "name": "Pet"}}}]
            })
            .to_string();
            bad(
                create_card(&store, REALM, "", "n", &with_lid).map(|_| ()),
                "side-loaded lid",
            );
            bad(
                patch_card(&store, REALM, "person-1", &with_lid, None).map(|_| ()),
                "side-loaded lid on PATCH",
            );
            bad(
                patch_card(&store, REALM, &format!("p{c}"), &card, None).map(|_| ()),
                "PATCH",
            );
            bad(
                delete_card(&store, REALM, &format!("p{c}"), None),
                "card DELETE",
            );
            for href in [format!("a{c}b.txt"), format!("a%{:02x}b.txt", c as u32)] {
                let got = atomic(
                    &store,
                    REALM,
                    &atomic_body(json!([{"op": "remove", "href": href}])),
                );
                assert!(
                    matches!(got, Err(Error::Atomic(ref e)) if e.len() == 1 && e[0].kind == AtomicErrorKind::BadRequest),
                    "/_atomic {href:?}: {got:?}"
                );
            }
        }
        let after: Vec<_> = store
            .paths(REALM)
            .iter()
            .map(|p| store.file(REALM, p))
            .collect();
        assert_eq!(after, before, "nothing written or deleted");
        assert_eq!(
            write_source(&store, REALM, "x\r\n.json", "x", None),
            Err(Error::BadRequest(format!(
                "Invalid path 'x\\r\\n.json': {}",
                paths::BAD_CHARACTER
            )))
        );
    }

    #[test]
    fn json_api_shapes_on_card_routes() {
        let store = seeded();
        let stored_before = store.file(REALM, "person-1.json").unwrap();
        let with_rels = |rels: Value| {
            let mut p = person(json!({"firstName": "Bad"}));
            p["relationships"] = rels;
            p
        };
        let links = "relationship 'friend': links must be an object";
        // (relationships, expected reason) for create, PATCH and included
        let cases: Vec<(Value, &str)> = vec![
            (json!({"friend": {"links": "x"}}), links),
            (json!({"friend": {"links": 42}}), links),
            (json!({"friend": {"links": ["./a"]}}), links),
            (json!({"friend": {"links": true}}), links),
            (
                json!({"friend": {"links": {"self": 5}}}),
                "relationship 'friend': links.self must be a string or null",
            ),
            (
                json!({"friend": 5}),
                "relationship 'friend' must be an object, an array or null",
            ),
            (
                json!({"friend": {"data": 5}}),
                "relationship 'friend': data must be null, an object or an array of objects",
            ),
            (
                json!({"friend": {"data": [5]}}),
                "relationship 'friend': data must be null, an object or an array of objects",
            ),
            (
                json!({"friend": {"data": {"id": 5}}}),
                "relationship 'friend': data.id must be a string",
            ),
            (
                json!({"friend": {"data": {"lid": ["l"]}}}),
                "relationship 'friend': data.lid must be a string",
            ),
            (
                json!({"friend": {"links": {"self": "./x"}, "meta": "m"}}),
                "relationship 'friend': meta must be an object",
            ),
            (
                json!({"friends": [{"links": "x"}]}),
                "relationship 'friends.0': links must be an object",
            ),
        ];
        let held = store.with_write_lock(REALM).unwrap();
        for (rels, why) in &cases {
            let create = format!("{CREATE_INVALID}: {why}");
            assert_eq!(
                create_card(&store, REALM, "", "n", &doc(with_rels(rels.clone()))),
                Err(Error::BadRequest(create.clone())),
                "create {rels}"
            );
            assert_eq!(
                patch_card(
                    &store,
                    REALM,
                    "person-1",
                    &doc(with_rels(rels.clone())),
                    None
                ),
                Err(Error::BadRequest(format!("{PATCH_INVALID}: {why}"))),
                "PATCH {rels}"
            );
            let mut side = with_rels(rels.clone());
            side["lid"] = json!("s");
            let body = json!({"data": person(json!({})), "included": [person(json!({})), side]})
                .to_string();
            assert_eq!(
                create_card(&store, REALM, "", "n", &body),
                Err(Error::BadRequest(format!(
                    "{CREATE_INVALID}: included[1]: {why}"
                ))),
                "included {rels}"
            );
        }
        drop(held);
        // top-level members: the checks that already existed keep their message
        for bad in [
            json!({"type": "card", "attributes": [], "meta": {"adoptsFrom": {"module": "./p", "name": "P"}}}),
            json!({"type": "card", "relationships": [], "meta": {"adoptsFrom": {"module": "./p", "name": "P"}}}),
            json!({"type": "card", "meta": "x"}),
        ] {
            assert_eq!(
                create_card(&store, REALM, "", "n", &doc(bad.clone())),
                Err(Error::BadRequest(CREATE_INVALID.into())),
                "{bad}"
            );
        }
        assert_eq!(store.file(REALM, "person-1.json").unwrap(), stored_before);
        assert_eq!(store.paths(REALM), vec!["greeting.txt", "person-1.json"]);
        // accepted shapes: a null relationship, null links, plural arrays
        create_card(
            &store,
            REALM,
            "",
            "ok",
            &doc(with_rels(json!({"friend": null, "pet": {"links": null, "data": {"id": "./Pet/a"}}, "pets": [{"links": {"self": "./Pet/b"}}]}))),
        )
        .unwrap();
        assert_eq!(
            stored_data(&store, "Person/ok.json")["relationships"],
            json!({"friend": {"links": {"self": null}}, "pet": {"links": {"self": "../Pet/a"}}, "pets.0": {"links": {"self": "../Pet/b"}}})
        );
    }

    /// Live heap bytes of the current thread, counted only inside
    /// [`counting::peak_of`] (tests run in parallel threads).
    mod counting {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        struct Counting;

        #[global_allocator]
        static COUNTING: Counting = Counting;

        thread_local! {
            static ON: Cell<bool> = const { Cell::new(false) };
            static NOW: Cell<isize> = const { Cell::new(0) };
            static PEAK: Cell<isize> = const { Cell::new(0) };
        }

        fn track(delta: isize) {
            if ON.try_with(Cell::get).unwrap_or(false) {
                let now = NOW.get() + delta;
                NOW.set(now);
                PEAK.set(PEAK.get().max(now));
            }
        }

        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                let p = System.alloc(layout);
                if !p.is_null() {
                    track(layout.size() as isize);
                }
                p
            }
            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                let p = System.alloc_zeroed(layout);
                if !p.is_null() {
                    track(layout.size() as isize);
                }
                p
            }
            unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
                System.dealloc(p, layout);
                track(-(layout.size() as isize));
            }
            unsafe fn realloc(&self, p: *mut u8, layout: Layout, size: usize) -> *mut u8 {
                let q = System.realloc(p, layout, size);
                if !q.is_null() {
                    track(size as isize - layout.size() as isize);
                }
                q
            }
        }

        /// `f`'s result and the peak of bytes it held live at once.
        pub fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
            NOW.set(0);
            PEAK.set(0);
            ON.set(true);
            let out = f();
            ON.set(false);
            (out, PEAK.get().max(0) as usize)
        }
    }

    /// A host that keeps nothing: in wasm the written files live in the
    /// host, so this isolates what the guest itself holds.
    struct DiscardStore;
    struct DiscardLock;
    impl WriteLock for DiscardLock {
        fn read(&mut self, _: &str) -> Result<Option<StoredFile>> {
            Ok(None)
        }
        fn exists(&mut self, _: &str) -> Result<bool> {
            Ok(false)
        }
        fn write(&mut self, _: &str, _: &str, _: Option<CardIndex>) -> Result<FileMeta> {
            Ok(FileMeta {
                etag: String::new(),
                created: 0,
                last_modified: 0,
                existed: false,
            })
        }
        fn delete(&mut self, _: &str) -> Result<bool> {
            Ok(false)
        }
        fn commit(self) -> Result<()> {
            Ok(())
        }
    }
    impl Store for DiscardStore {
        type Lock = DiscardLock;
        fn with_write_lock(&self, _: &str) -> Result<DiscardLock> {
            Ok(DiscardLock)
        }
        fn read_file(&self, _: &str, _: &str) -> Result<Option<StoredFile>> {
            Ok(None)
        }
    }

    /// The rich card of the host's hardening test: 15 attributes and a link.
    fn rich_card(i: usize, pad: usize) -> Value {
        json!({"type": "card",
            "attributes": {
                "firstName": format!("First{i}"), "lastName": format!("Last{i}"),
                "age": i % 90, "active": i.is_multiple_of(2), "rating": 4.5,
                "tags": ["alpha", "beta", format!("t{i}")],
                "address": {"street": format!("{i} Main St"), "city": "Paris", "zip": null, "geo": {"lat": 48.25, "lng": 2.5}},
                "phones": [{"kind": "home", "number": format!("+33-{i}")}, {"kind": "work", "number": null}],
                "matrix": [[1, 2, 3], [4, 5, 6]],
                "history": [{"at": i, "by": "import", "changes": {"from": null, "to": "created"}}],
                "email": format!("person{i}@example.com"), "nickname": null, "rank": i,
                "settings": {"theme": "dark", "flags": [true, false], "limits": {"daily": 10, "weekly": 70}},
                "bio": "b".repeat(pad)},
            "relationships": {"friend": {"links": {"self": format!("{REALM}rich/card-{}", (i + 1) % 2000)}}},
            "meta": {"adoptsFrom": {"module": format!("{REALM}person"), "name": "Person"}}})
    }

    /// Peak heap of an `/_atomic` of 2 000 rich cards (~1.35 KiB each, as in
    /// the 3.8 MiB / 2 700-card body that exhausted a 64 MiB guest), body
    /// itself not counted. Holding the parsed body while planning took
    /// ~12.8× the body; streaming the plan takes ~2.7× (mostly the stored
    /// texts, which must all exist before the first write). Run with
    /// `--nocapture` to see the figures.
    #[test]
    fn atomic_peak_memory() {
        let ops: Vec<Value> = (0..2000)
            .map(|i| json!({"op": "add", "href": format!("rich/card-{i}.json"), "data": rich_card(i, 560)}))
            .collect();
        let body = atomic_body(Value::Array(ops));
        let (res, discard_peak) = counting::peak_of(|| atomic(&DiscardStore, REALM, &body));
        assert!(res.is_ok(), "{res:?}");
        let store = MemoryStore::new();
        let (res, memory_peak) = counting::peak_of(|| atomic(&store, REALM, &body));
        assert!(res.is_ok(), "{res:?}");
        let stored: usize = store
            .paths(REALM)
            .iter()
            .map(|p| {
                let f = store.file(REALM, p).map_or(0, |f| f.content.len());
                let i = store.index_row(REALM, p).map_or(0, |i| i.search_doc.len());
                f + i
            })
            .sum();
        println!(
            "atomic of 2000 cards, body {} bytes: peak {} bytes (guest only, discarding store), {} bytes (MemoryStore, which keeps {} bytes of files and search docs)",
            body.len(),
            discard_peak,
            memory_peak,
            stored
        );
        assert!(
            discard_peak < 4 * body.len(),
            "peak {discard_peak} for a body of {}",
            body.len()
        );
    }
}
