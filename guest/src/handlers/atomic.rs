//! POST `/_atomic`: applies the plan of [`crate::atomic`] under one write
//! lock and one commit.

use crate::atomic::{existence_error, plan_atomic, results_document, OpKind};
use crate::error::{AtomicError, AtomicErrorKind, Error, Result};
use crate::store::{Store, WriteLock};

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
    let paths: Vec<String> = ops.iter().map(|op| op.path.clone()).collect();
    lock.prefetch(&paths)?;
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
    use crate::handlers::test_support::*;
    use crate::memory::MemoryStore;
    use crate::store::{CardIndex, FileMeta, StoredFile};
    use serde_json::json;
    use serde_json::Value;

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
