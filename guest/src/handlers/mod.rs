//! The request handlers, one per WIT `handlers` export, generic over the
//! host [`Store`]: they validate the request, take the realm write lock for
//! every change, and build the answer from the pure modules.
//!
//! Every error of a lock method is propagated unchanged with `?`, and an
//! early return simply drops the lock, which rolls back.
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | what several routes share: [`CardResponse`] and `respond`, If-Match, the new-card directory name, card serialisation with its index row, the 404/415 of a missing card; the cross-route tests |
//! | `card_body.rs` | the body of a create/PATCH: `{data, included?}` parsing, side-loaded cards and lid promotion |
//! | `card.rs` | the card routes: [`get_card`], [`create_card`], [`patch_card`], [`delete_card`] |
//! | `source.rs` | the source routes: [`write_source`], [`delete_source`] |
//! | `atomic.rs` | [`atomic()`]: applies a `/_atomic` plan (planned in [`crate::atomic`]) under one lock |
//!
//! [`Store`]: crate::store::Store

mod atomic;
mod card;
mod card_body;
mod source;

pub use self::atomic::atomic;
pub use self::card::{create_card, delete_card, get_card, patch_card};
pub use self::source::{delete_source, write_source};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::paths;
use crate::print::{card_document_text, Answer, PrintedCard};
use crate::merge::Resource;
use crate::serialize::{serialize_card_parts_owned, serialize_resource, CardFile};
use crate::store::{CardIndex, StoredFile};

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

/// The card document of a stored file's text (GET, or a PATCH that changes
/// nothing); 415 when the text is not a card document.
fn respond(
    content: &str,
    id: &str,
    realm: &str,
    etag: &str,
    created: i64,
    last_modified: i64,
) -> Result<CardResponse> {
    let body = card_document_text(content, id, realm, created, last_modified).map_err(|_| not_a_card(id))?;
    Ok(card_response(body, id, etag, created, last_modified))
}

/// The answer to a create or PATCH: the card as just written, from its
/// file's printing (`answer`), without reading that text back.
fn respond_written(
    answer: Answer,
    id: &str,
    realm: &str,
    etag: &str,
    created: i64,
    last_modified: i64,
) -> Result<CardResponse> {
    let body = answer.body(id, realm, created, last_modified)?;
    Ok(card_response(body, id, etag, created, last_modified))
}

fn card_response(body: String, id: &str, etag: &str, created: i64, last_modified: i64) -> CardResponse {
    CardResponse {
        body,
        etag: etag.to_string(),
        created,
        last_modified,
        id: id.to_string(),
    }
}

/// [`respond`] with a stored file's content, ETag and times.
fn respond_stored(file: &StoredFile, id: &str, realm: &str) -> Result<CardResponse> {
    respond(
        &file.content,
        id,
        realm,
        &file.etag,
        file.created,
        file.last_modified,
    )
}

/// Serialise a card for the realm-local file `path` and print it (its
/// text, index row and answer).
fn serialize_card(resource: Value, realm: &str, path: &str) -> Result<PrintedCard> {
    let card = serialize_card_parts_owned(resource, &card_file(realm, path)?)?;
    PrintedCard::new(card, &paths::card_id(realm, path))
}

/// The parsed URLs of the realm-local file `path`.
fn card_file(realm: &str, path: &str) -> Result<CardFile> {
    CardFile::new(&paths::file_url(realm, path), realm)
}

/// [`serialize_card`] of a merged resource, for the file `file` of the card `id`.
fn serialize_resource_at(resource: Resource, file: &CardFile, id: &str) -> Result<PrintedCard> {
    PrintedCard::new(serialize_resource(resource, file)?, id)
}

/// [`serialize_card`]'s text and index row.
fn serialize_with_index(resource: &Value, realm: &str, path: &str) -> Result<(String, CardIndex)> {
    serialize_card(resource.clone(), realm, path).map(|card| (card.content, card.index))
}

/// Fixtures shared by the handlers' tests.
#[cfg(test)]
mod test_support {
    use super::{serialize_with_index, write_source};
    use crate::memory::MemoryStore;
    use serde_json::{json, Value};

    pub(super) const REALM: &str = "http://localhost:4201/test/";

    pub(super) fn person(attrs: Value) -> Value {
        json!({"type": "card", "attributes": attrs,
               "meta": {"adoptsFrom": {"module": "./person.gts", "name": "Person"}}})
    }

    pub(super) fn doc(data: Value) -> String {
        json!({ "data": data }).to_string()
    }

    pub(super) fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    /// A store holding `person-1.json` (Mango, with cardInfo) and `greeting.txt`.
    pub(super) fn seeded() -> MemoryStore {
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

    pub(super) fn stored_data(store: &MemoryStore, path: &str) -> Value {
        parse(&store.file(REALM, path).unwrap().content)["data"].clone()
    }

    pub(super) fn atomic_body(ops: Value) -> String {
        json!({ "atomic:operations": ops }).to_string()
    }
}

/// The If-Match and directory-name rules, and what every route shares:
/// size limits, lock and commit errors, control characters in paths.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::AtomicErrorKind;
    use crate::handlers::test_support::*;
    use crate::store::Store;
    use serde_json::json;

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
}
