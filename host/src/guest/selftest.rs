//! The guest self-test: the spec's merge, serialisation and atomic cases,
//! run against a guest on the in-memory store (no database, no network).
//! Every guest must pass it before it can be activated.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::runtime::{atomic_status, Answer, Call, Compiled, Guest, GuestError, Sandbox, Wasm};
use crate::lock::{Limits, Locks};
use crate::store::{Database, MemoryStore};

const REALM: &str = "http://selftest.invalid/realm/";

/// The outcome of every case, in order.
pub struct Report {
    pub results: Vec<(&'static str, Result<(), String>)>,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|(_, r)| r.is_err()).count()
    }

    /// A pass/fail table, one case a line.
    pub fn table(&self) -> String {
        let width = self.results.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (name, result) in &self.results {
            match result {
                Ok(()) => out.push_str(&format!("PASS  {name}\n")),
                Err(why) => out.push_str(&format!("FAIL  {name:width$}  {why}\n")),
            }
        }
        out.push_str(&format!("{} passed, {} failed\n", self.results.len() - self.failed(), self.failed()));
        out
    }
}

/// Runs every case against a fresh in-memory realm.
pub async fn run(engine: &Wasm, compiled: &Compiled, sandbox: Sandbox) -> Report {
    let store = Arc::new(MemoryStore::default());
    let db = Database::Memory(store);
    let limits = Limits { card_bytes: 512 * 1024, file_bytes: 5 * 1024 * 1024 };
    let locks = Arc::new(Locks::new(Duration::from_secs(5), limits));
    let guest = Guest::new(engine, compiled, db.clone(), locks, sandbox);
    let t = Tester { guest, db };
    let mut results = Vec::new();
    macro_rules! case {
        ($name:literal, $body:expr) => {
            results.push(($name, $body.await));
        };
    }
    case!("exports: every export has the world's type", t.exports());
    case!("merge: arrays replace", t.merge_case(json!({"tags": ["a", "b"], "n": 1}), json!({"tags": ["c"]}), json!({"tags": ["c"], "n": 1})));
    case!("merge: null overwrites", t.merge_case(json!({"n": 1, "m": 2}), json!({"n": null}), json!({"n": null, "m": 2})));
    case!(
        "merge: nested objects merge",
        t.merge_case(json!({"address": {"street": "Main", "city": "A"}}), json!({"address": {"city": "B"}}), json!({"address": {"street": "Main", "city": "B"}}))
    );
    case!("merge: key order kept", t.key_order());
    case!("merge: type change rejected", t.type_change());
    case!("merge: same type spelled with extension", t.same_type_with_extension());
    case!("merge: plural relationship group replaced", t.plural_group());
    case!("serialize: module relative, two-space JSON", t.serialize_module());
    case!("serialize: relationship data becomes links.self", t.serialize_relationship());
    case!("serialize: server-owned fields removed", t.serialize_strips());
    case!("atomic: unsupported op refused (422)", t.atomic_invalid("frobnicate", "./x.txt", 422));
    case!("atomic: href outside the realm refused (404)", t.atomic_invalid("add", "../../elsewhere.txt", 404));
    case!("handlers: create, patch, read back", t.create_patch_get());
    case!("handlers: no-op patch keeps the etag", t.noop_patch());
    case!("handlers: if-match mismatch refused", t.if_match());
    case!("handlers: atomic is all or nothing", t.atomic_all_or_nothing());
    Report { results }
}

type Outcome = Result<(), String>;

struct Tester {
    guest: Guest,
    db: Database,
}

fn person(attributes: Value) -> Value {
    json!({"type": "card", "attributes": attributes, "meta": {"adoptsFrom": {"module": "../person", "name": "Person"}}})
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Outcome {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

fn parse(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("answer is not JSON ({e}): {text}"))
}

impl Tester {
    async fn call(&self, call: Call) -> Result<Result<Answer, GuestError>, String> {
        self.guest.run(call).await.map_err(|trap| format!("guest trapped: {trap}"))
    }

    async fn text(&self, call: Call) -> Result<String, String> {
        match self.call(call).await? {
            Ok(Answer::Text(text)) => Ok(text),
            Ok(_) => Err("unexpected answer shape".into()),
            Err(e) => Err(format!("guest answered an error: {e:?}")),
        }
    }

    async fn card(&self, call: Call) -> Result<super::runtime::CardResponse, String> {
        match self.call(call).await? {
            Ok(Answer::Card(card)) => Ok(card),
            Ok(_) => Err("unexpected answer shape".into()),
            Err(e) => Err(format!("guest answered an error: {e:?}")),
        }
    }

    async fn merge(&self, original: &Value, patch: &Value) -> Result<Result<Answer, GuestError>, String> {
        self.call(Call::Merge {
            original: original.to_string(),
            patch: patch.to_string(),
            card_url: format!("{REALM}Person/1"),
        })
        .await
    }

    async fn merged(&self, original: &Value, patch: &Value) -> Result<Value, String> {
        match self.merge(original, patch).await? {
            Ok(Answer::Text(text)) => parse(&text),
            Ok(_) => Err("unexpected answer shape".into()),
            Err(e) => Err(format!("guest answered an error: {e:?}")),
        }
    }

    /// A call type-checks only its own export, and the cases below do not
    /// call every one: check them all here, before any is served.
    async fn exports(&self) -> Outcome {
        match self.call(Call::CheckExports).await? {
            Ok(Answer::Done) => Ok(()),
            Ok(_) => Err("unexpected answer shape".into()),
            Err(e) => Err(format!("guest answered an error: {e:?}")),
        }
    }

    async fn merge_case(&self, original: Value, patch: Value, expected: Value) -> Outcome {
        let merged = self.merged(&person(original), &json!({"attributes": patch})).await?;
        check(merged["attributes"] == expected, || format!("attributes {} != expected {expected}", merged["attributes"]))
    }

    async fn key_order(&self) -> Outcome {
        let merged = self.merged(&person(json!({"a": 1, "b": 1, "c": 1})), &json!({"attributes": {"d": 4, "b": 2}})).await?;
        let keys: Vec<&str> = merged["attributes"].as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
        check(keys == ["a", "b", "c", "d"], || format!("key order {keys:?}"))
    }

    async fn type_change(&self) -> Outcome {
        let patch = json!({"meta": {"adoptsFrom": {"module": "../pet", "name": "Pet"}}});
        match self.merge(&person(json!({})), &patch).await? {
            Err(GuestError::BadRequest(m)) if m.contains("Cannot change card instance type") => Ok(()),
            other => Err(format!("expected bad-request 'Cannot change card instance type', got {:?}", other.map(|_| "a merge"))),
        }
    }

    async fn same_type_with_extension(&self) -> Outcome {
        let patch = json!({"attributes": {"x": 1}, "meta": {"adoptsFrom": {"module": format!("{REALM}person.gts"), "name": "Person"}}});
        self.merged(&person(json!({})), &patch).await.map(|_| ())
    }

    async fn plural_group(&self) -> Outcome {
        let mut original = person(json!({}));
        original["relationships"] = json!({
            "friends.0": {"links": {"self": "./a"}},
            "friends.1": {"links": {"self": "./b"}},
            "best": {"links": {"self": "./a"}}
        });
        let merged = self.merged(&original, &json!({"relationships": {"friends.0": {"links": {"self": "./c"}}}})).await?;
        let rel = &merged["relationships"];
        check(
            rel["friends.0"]["links"]["self"] == "./c" && rel.get("friends.1").is_none() && rel["best"]["links"]["self"] == "./a",
            || format!("relationships {rel}"),
        )
    }

    async fn serialize(&self, resource: &Value) -> Result<String, String> {
        self.text(Call::Serialize {
            resource: resource.to_string(),
            file_url: format!("{REALM}Person/1.json"),
            realm: REALM.to_string(),
        })
        .await
    }

    async fn serialize_module(&self) -> Outcome {
        let mut resource = person(json!({"name": "Ada"}));
        resource["meta"]["adoptsFrom"]["module"] = json!(format!("{REALM}person.gts"));
        let text = self.serialize(&resource).await?;
        let stored = parse(&text)?;
        check(stored["data"]["meta"]["adoptsFrom"]["module"] == "../person", || format!("module {}", stored["data"]["meta"]["adoptsFrom"]["module"]))?;
        check(text.starts_with("{\n  \"data\": {\n    ") && !text.ends_with('\n'), || format!("not two-space JSON without a final newline: {text:?}"))
    }

    async fn serialize_relationship(&self) -> Outcome {
        let mut resource = person(json!({}));
        resource["relationships"] = json!({"pet": {"data": {"type": "card", "id": "http://other.invalid/r/Pet/1"}}});
        let stored = parse(&self.serialize(&resource).await?)?;
        let pet = &stored["data"]["relationships"]["pet"];
        check(*pet == json!({"links": {"self": "http://other.invalid/r/Pet/1"}}), || format!("pet {pet}"))
    }

    async fn serialize_strips(&self) -> Outcome {
        let mut resource = person(json!({}));
        resource["type"] = json!("something");
        resource["id"] = json!(format!("{REALM}Person/1"));
        resource["links"] = json!({"self": "x"});
        resource["meta"]["lastModified"] = json!(1);
        resource["meta"]["realmURL"] = json!(REALM);
        let stored = parse(&self.serialize(&resource).await?)?;
        let data = &stored["data"];
        check(
            data["type"] == "card"
                && data.get("id").is_none()
                && data.get("links").is_none()
                && data["meta"].get("lastModified").is_none()
                && data["meta"].get("realmURL").is_none(),
            || format!("stored {data}"),
        )
    }

    async fn atomic_invalid(&self, op: &str, href: &str, status: u16) -> Outcome {
        let body = json!({"atomic:operations": [{"op": op, "href": href, "data": {"type": "source", "attributes": {"content": "x"}}}]});
        match self.call(Call::ValidateAtomic { realm: REALM.into(), body: body.to_string() }).await? {
            Err(GuestError::Atomic(errors)) => {
                let statuses: Vec<u16> = errors.iter().map(atomic_status).collect();
                check(statuses.contains(&status), || format!("error statuses {statuses:?}, wanted {status}"))
            }
            other => Err(format!("expected an atomic error, got {:?}", other.map(|_| "success"))),
        }
    }

    async fn create(&self, name: &str) -> Result<super::runtime::CardResponse, String> {
        let body = json!({"data": {"type": "card", "attributes": {"first": "Ada"}, "meta": {"adoptsFrom": {"module": "./person", "name": "Person"}}}});
        self.card(Call::CreateCard { realm: REALM.into(), dir: String::new(), new_name: name.into(), body: body.to_string() }).await
    }

    fn patch_call(&self, id: &str, attributes: Value, if_match: Option<String>) -> Call {
        let body = json!({"data": {"attributes": attributes, "meta": {"adoptsFrom": {"module": "../person", "name": "Person"}}}});
        Call::PatchCard { realm: REALM.into(), path: id.trim_start_matches(REALM).into(), body: body.to_string(), if_match }
    }

    async fn create_patch_get(&self) -> Outcome {
        let created = self.create("ada").await?;
        check(created.id == format!("{REALM}Person/ada"), || format!("id {}", created.id))?;
        self.card(self.patch_call(&created.id, json!({"last": "Lovelace"}), None)).await?;
        let got = self.card(Call::GetCard { realm: REALM.into(), path: "Person/ada".into() }).await?;
        let doc = parse(&got.body)?;
        check(doc["data"]["attributes"] == json!({"first": "Ada", "last": "Lovelace"}), || format!("attributes {}", doc["data"]["attributes"]))
    }

    async fn noop_patch(&self) -> Outcome {
        let created = self.create("grace").await?;
        let first = self.card(self.patch_call(&created.id, json!({"first": "Grace"}), None)).await?;
        let again = self.card(self.patch_call(&created.id, json!({"first": "Grace"}), None)).await?;
        check(first.etag == again.etag && first.last_modified == again.last_modified, || format!("etag {} then {}", first.etag, again.etag))
    }

    async fn if_match(&self) -> Outcome {
        let created = self.create("alan").await?;
        match self.call(self.patch_call(&created.id, json!({"first": "X"}), Some("\"not-the-etag\"".into()))).await? {
            Err(GuestError::PreconditionFailed(_)) => Ok(()),
            other => Err(format!("expected precondition-failed, got {:?}", other.map(|_| "success"))),
        }
    }

    async fn atomic_all_or_nothing(&self) -> Outcome {
        self.create("edsger").await?;
        let body = json!({"atomic:operations": [
            {"op": "add", "href": "./fresh.txt", "data": {"type": "source", "attributes": {"content": "x"}}},
            {"op": "add", "href": "./Person/edsger.json", "data": person(json!({}))}
        ]});
        match self.call(Call::Atomic { realm: REALM.into(), body: body.to_string() }).await? {
            Err(GuestError::Atomic(_)) => {}
            other => return Err(format!("expected a 409 atomic error, got {:?}", other.map(|_| "success"))),
        }
        let fresh = self.db.read_file(REALM, "fresh.txt").await.map_err(|e| e.to_string())?;
        check(fresh.is_none(), || "the first op of a refused /_atomic was written".into())
    }
}

#[cfg(test)]
mod tests {
    use crate::guest::runtime::BUILTIN_GUEST;
    use crate::testing::GuestHarness;

    const EXPORTS_CASE: &str = "exports: every export has the world's type";

    /// A component of the world whose `delete-card` (which no other case
    /// calls) answers another type: every export is there by name, so it
    /// compiles; only a type check can tell.
    fn mistyped_component() -> Vec<u8> {
        let declared = "delete-card: func(realm: string, path: string, if-match: option<string>) -> result<_, error>;";
        let wit = include_str!("../../../wit/realm.wit");
        assert!(wit.contains(declared), "wit/realm.wit no longer declares {declared}");
        let wit = wit.replace(declared, &declared.replace("result<_, error>", "result<string, error>"));
        let mut resolve = wit_parser::Resolve::default();
        let package = resolve.push_str("realm.wit", &wit).expect("the edited WIT parses");
        let world = resolve.select_world(&[package], Some("realm-core")).expect("the world");
        let abi = wit_parser::ManglingAndAbi::Legacy(wit_parser::LiftLowerAbi::Sync);
        let mut module = wit_component::dummy_module(&resolve, world, abi);
        wit_component::embed_component_metadata(&mut module, &resolve, world, wit_component::StringEncoding::UTF8).expect("metadata");
        wit_component::ComponentEncoder::default().module(&module).expect("module").validate(true).encode().expect("component")
    }

    #[tokio::test]
    async fn a_guest_with_a_mistyped_export_fails_the_exports_case_and_the_builtin_passes_it() {
        let mistyped = GuestHarness::from_bytes(&mistyped_component()).expect("every export is there by name, so it compiles");
        let report = mistyped.self_test().await;
        let (name, outcome) = &report.results[0];
        assert_eq!(*name, EXPORTS_CASE);
        assert!(outcome.is_err(), "a mistyped delete-card passed the exports case");

        let builtin = GuestHarness::from_bytes(BUILTIN_GUEST).expect("the built-in guest compiles");
        let report = builtin.self_test().await;
        assert_eq!(report.results[0], (EXPORTS_CASE, Ok(())));
        assert_eq!(report.failed(), 0, "{}", report.table());
    }
}
