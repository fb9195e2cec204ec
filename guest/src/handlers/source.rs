//! The source routes: POST and DELETE of a file stored verbatim (a `.json`
//! card document gets its index row).

use super::check_if_match;
use crate::error::{Error, Result};
use crate::paths;
use crate::serialize::index_for_file;
use crate::store::{FileMeta, Store, WriteLock};

/// Source-delete fallbacks tried after the exact path, as Boxel does.
const SOURCE_FALLBACK_EXTENSIONS: [&str; 5] = [".js", ".gjs", ".ts", ".gts", ".json"];

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
// Same parameters as `patch_card`/`delete_card`: each handler's own WIT signature; the bodies differ.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::AtomicErrorKind;
    use crate::handlers::test_support::*;
    use crate::handlers::{atomic, serialize_with_index};
    use serde_json::json;

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
}
