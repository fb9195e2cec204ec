//! The card routes: GET, create (POST), PATCH and DELETE of the card file
//! `<path>.json`.

use super::card_body::{parse_card_body, side_loads, CardBody, SideLoad};
use super::{
    card_dir_name, card_file, check_if_match, missing_card, not_a_card, respond_stored,
    respond_written, serialize_card, serialize_resource_at, CardResponse,
};
use crate::error::{Error, Result};
use crate::merge::merge_patch_owned;
use crate::paths;
use crate::print::PrintedCard;
use crate::serialize::{absolutize_refs, parse_stored_card, parse_stored_resource};
use crate::store::{Store, WriteLock};

const CREATE_INVALID: &str = "Request body is not valid card JSON-API";
const PATCH_NOT_JSON: &str = "Invalid JSON body";
const PATCH_INVALID: &str = "The request body was not a card document";

/// GET a card: reads `<path>.json` lock-free (a trailing `.json` on `path`
/// is ignored, the empty path is `index`). Missing → 404, or 415 when a
/// file exists at `<path>` itself or `<path>.json` is not a card document.
pub fn get_card<S: Store>(store: &S, realm: &str, path: &str) -> Result<CardResponse> {
    let path = paths::card_path(path);
    let id = paths::card_id(realm, &path);
    match store.read_file(realm, &format!("{path}.json"))? {
        Some(file) => respond_stored(&file, &id, realm),
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
    let card = serialize_card(data, realm, &path)?;

    let mut lock = store.with_write_lock(realm)?;
    if lock.exists(&path)? {
        return Err(Error::Conflict(format!(
            "{} already exists",
            paths::file_url(realm, &path)
        )));
    }
    write_and_commit(lock, side, &path, card, &id, realm)
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
    let (path, id, file_path) = card_target("PATCH", realm, path)?;
    let CardBody {
        data: mut patch,
        included,
    } = parse_card_body(body, PATCH_NOT_JSON, PATCH_INVALID)?;
    // The patch's references are relative to the card (the file's directory),
    // which is also what the included cards' references are relative to.
    let side = side_loads(realm, "", &id, &included, &mut patch, &file_path)?;
    // Parsed before the realm's turn, which is serial.
    let file = card_file(realm, &file_path)?;

    let mut lock = store.with_write_lock(realm)?;
    let Some(stored) = lock.read(&file_path)? else {
        return Err(missing_card(lock.exists(&path)?, &id));
    };
    check_if_match(if_match, Some(&stored), &id)?;
    let original = parse_stored_resource(&stored.content).ok_or_else(|| not_a_card(&id))?;
    let (merged, changed) = merge_patch_owned(original, &patch, &id)?;
    if side.is_empty() && !changed {
        return respond_stored(&stored, &id, realm);
    }
    let card = serialize_resource_at(merged, &file, &id)?;
    if side.is_empty() && card.content == stored.content {
        return respond_stored(&stored, &id, realm);
    }
    write_and_commit(lock, side, &file_path, card, &id, realm)
}

/// The card a PATCH or DELETE names: its path without `.json`, its id and
/// its file `<path>.json`; 405 for `method` on a `_` path, 400 for an
/// invalid one.
fn card_target(method: &str, realm: &str, path: &str) -> Result<(String, String, String)> {
    let path = paths::card_path(path);
    let id = paths::card_id(realm, &path);
    if paths::is_reserved(&path) {
        return Err(Error::MethodNotAllowed(format!(
            "{method} not allowed for {id}"
        )));
    }
    paths::validate_local_path(&path)?;
    let file_path = format!("{path}.json");
    Ok((path, id, file_path))
}

/// The end of a create or PATCH under `lock`: writes the side-loaded cards,
/// then the card (`content` and index row) at `path`, commits, and answers
/// the card as written.
fn write_and_commit<L: WriteLock>(
    mut lock: L,
    side: Vec<SideLoad>,
    path: &str,
    card: PrintedCard,
    id: &str,
    realm: &str,
) -> Result<CardResponse> {
    for s in side {
        lock.write(&s.path, &s.content, Some(s.index))?;
    }
    let PrintedCard { content, index, answer } = card;
    let meta = lock.write(path, &content, Some(index))?;
    lock.commit()?;
    respond_written(answer, id, realm, &meta.etag, meta.created, meta.last_modified)
}

/// DELETE the card file `<path>.json` (and its index row) under the lock:
/// 405 on `_` paths, 404/415 as for GET, 412 on an If-Match mismatch.
pub fn delete_card<S: Store>(
    store: &S,
    realm: &str,
    path: &str,
    if_match: Option<&str>,
) -> Result<()> {
    let (path, id, file_path) = card_target("DELETE", realm, path)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use crate::handlers::serialize_with_index;
    use crate::handlers::test_support::*;
    use crate::memory::MemoryStore;
    use serde_json::json;

    #[test]
    fn a_create_or_patch_answers_exactly_what_a_get_of_the_written_file_answers() {
        let store = MemoryStore::new();
        store.set_clock(70);
        let rich = person(json!({"firstName": "Van", "n": 1.5e300, "big": 18446744073709551615u64,
            "nested": {"z": [1, {"y": null}], "a": "é\u{1F600}"}}));
        let mut data = rich.clone();
        data["relationships"] = json!({"friend": {"links": {"self": "./Mango"}}});
        data["meta"]["fields"] = json!({"x": {"adoptsFrom": {"module": "./pet", "name": "Pet"}}});
        let created = create_card(&store, REALM, "", "abc", &doc(data)).unwrap();
        let got = get_card(&store, REALM, "Person/abc").unwrap();
        assert_eq!(created, got);
        let patched = patch_card(&store, REALM, "Person/abc", &doc(json!({"type": "card", "attributes": {"n": -0.0, "more": [true]}, "meta": {"adoptsFrom": {"module": "../person", "name": "Person"}}})), None).unwrap();
        assert_eq!(patched, get_card(&store, REALM, "Person/abc").unwrap());
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
    fn numbers_keep_their_digits_through_create_and_patches() {
        // Numbers serde_json's default (fast) parser reads 1 ulp off: every
        // PATCH re-reads the stored card, so an untouched attribute drifted.
        let store = MemoryStore::new();
        let numbers = "[-1.5143540779964615e146,2.2250738585072014e-308,0.30000000000000004,9007199254740993]";
        let body = format!(
            r#"{{"data":{{"type":"card","attributes":{{"numbers":{numbers},"n":0}},"meta":{{"adoptsFrom":{{"module":"./person","name":"Person"}}}}}}}}"#
        );
        let created = create_card(&store, REALM, "", "digits", &body).unwrap();
        let printed = |data: &Value| serde_json::to_string(&data["attributes"]["numbers"]).unwrap();
        let want = "[-1.5143540779964615e+146,2.2250738585072014e-308,0.30000000000000004,9007199254740993]";
        assert_eq!(printed(&parse(&created.body)["data"]), want);
        for n in 1..=3 {
            let patch = doc(json!({"attributes": {"n": n}, "meta": {"adoptsFrom": {"module": "../person", "name": "Person"}}}));
            let patched = patch_card(&store, REALM, "Person/digits", &patch, None).unwrap();
            assert_eq!(printed(&parse(&patched.body)["data"]), want, "PATCH {n}");
            assert_eq!(printed(&stored_data(&store, "Person/digits.json")), want, "stored after PATCH {n}");
            assert_eq!(patched, get_card(&store, REALM, "Person/digits").unwrap());
        }
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
}
