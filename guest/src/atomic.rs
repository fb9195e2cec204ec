//! `/_atomic`: parses and validates a request body (spec §3, every check
//! that needs no lock) into planned operations, and holds the pieces of the
//! locked phase that need no storage (existence errors, results document).
//!
//! Beyond Boxel: `remove` is supported, an op with invalid `data` is
//! refused (422) instead of skipped, and the same path twice in one request
//! is refused (400) instead of "last one wins".

use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Serialize, Serializer};
use serde_json::{json, Value};

use crate::error::{AtomicError, AtomicErrorKind, Error, Result};
use crate::paths;
use crate::print::PrintedCard;
use crate::serialize::{check_card_shape, index_for_file, is_card_resource, serialize_card_parts};
use crate::store::CardIndex;

/// The title of every validation error, as Boxel words it.
pub const INVALID_FORMAT: &str = "Invalid atomic:operations format";

/// The operation of one `/_atomic` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Add,
    Update,
    Remove,
}

/// What an `add`/`update` stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    /// Stored through card serialisation.
    Card,
    /// `attributes.content` stored verbatim.
    Source,
}

/// One validated operation, ready to run under the write lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedOp {
    pub op: OpKind,
    /// The href as the client sent it (used in error details).
    pub href: String,
    /// Realm-local, percent-decoded path.
    pub path: String,
    /// Absolute file URL (realm URL + path), the id in `atomic:results`.
    pub url: String,
    /// `None` for `remove`.
    pub kind: Option<ResourceKind>,
    /// The text to store; `None` for `remove`.
    pub content: Option<String>,
    /// The card index row to write with the file (cards at `.json` paths,
    /// and sources whose `.json` content is a card document).
    #[serde(serialize_with = "serialize_index")]
    pub index: Option<CardIndex>,
}

fn serialize_index<S: Serializer>(
    index: &Option<CardIndex>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match index {
        Some(i) => {
            json!({"id": i.id, "cardType": i.card_type, "searchDoc": i.search_doc}).serialize(s)
        }
        None => s.serialize_none(),
    }
}

fn error(kind: AtomicErrorKind, title: &str, detail: impl Into<String>) -> AtomicError {
    AtomicError {
        kind,
        title: title.to_string(),
        detail: detail.into(),
    }
}

/// JS template-literal rendering of a JSON value (`undefined` when absent).
fn js_display(v: Option<&Value>) -> String {
    match v {
        None => "undefined".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Parse and validate an `/_atomic` body for `realm` (spec §3, everything
/// before the lock). Every error of every operation is collected into
/// `Error::Atomic`:
/// - body not JSON → one 400 "Request body is not valid JSON";
/// - `atomic:operations` missing or not an array → one 400, nothing else checked;
/// - op not `add`/`update`/`remove` → 422; missing href → 400;
///   `data.type` not `card`/`source` → 422; href outside the realm → 404;
///   invalid local path (including invalid UTF-8 once percent-decoded and
///   control characters) → 400; a path in the reserved `_` namespace → 400;
///   the same path twice → 400;
/// - `add`/`update` with missing or invalid `data` (not a card resource, a
///   JSON:API shape error, see [`check_card_shape`], not serialisable,
///   source `attributes.content` not a string) → 422.
///
/// On success the planned ops come in request order, cards already serialised.
///
/// The body is planned while it is parsed, one operation at a time, so the
/// parsed form of the whole body (~9× its size) is never alive at once;
/// only the planned contents accumulate.
pub fn plan_atomic(realm: &str, body: &str) -> Result<Vec<PlannedOp>> {
    let mut planner = Planner {
        realm,
        found: false,
        planned: Vec::new(),
        errors: Vec::new(),
        seen: HashSet::new(),
    };
    let mut de = serde_json::Deserializer::from_str(body);
    let parsed = de
        .deserialize_map(BodyVisitor(&mut planner))
        .and_then(|()| de.end());
    let no_operations = || {
        Error::Atomic(vec![error(
            AtomicErrorKind::BadRequest,
            INVALID_FORMAT,
            "Request body must contain 'atomic:operations' array",
        )])
    };
    match parsed {
        Ok(()) if planner.found => {
            if planner.errors.is_empty() {
                Ok(planner.planned)
            } else {
                Err(Error::Atomic(planner.errors))
            }
        }
        Ok(()) => Err(no_operations()),
        // A type error (body not an object, operations not an array) is
        // only that when the whole body is JSON.
        Err(e) if e.is_data() && serde_json::from_str::<IgnoredAny>(body).is_ok() => {
            Err(no_operations())
        }
        Err(_) => Err(Error::Atomic(vec![error(
            AtomicErrorKind::BadRequest,
            INVALID_FORMAT,
            "Request body is not valid JSON",
        )])),
    }
}

/// What [`plan_atomic`] has gathered so far.
struct Planner<'r> {
    realm: &'r str,
    /// Whether an `atomic:operations` array was seen.
    found: bool,
    planned: Vec<PlannedOp>,
    errors: Vec<AtomicError>,
    seen: HashSet<String>,
}

/// The body object: plans `atomic:operations`, skips every other member.
struct BodyVisitor<'p, 'r>(&'p mut Planner<'r>);

impl<'de> Visitor<'de> for BodyVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "atomic:operations" {
                map.next_value_seed(OpsSeed(&mut *self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// The `atomic:operations` array: each op is parsed, planned and dropped.
struct OpsSeed<'p, 'r>(&'p mut Planner<'r>);

impl<'de> DeserializeSeed<'de> for OpsSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for OpsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let p = self.0;
        // A repeated key: the last one wins, as when parsed into a `Value`.
        p.found = true;
        p.planned.clear();
        p.errors.clear();
        p.seen.clear();
        let mut i = 0;
        while let Some(op) = seq.next_element::<Value>()? {
            if let Some(planned) = plan_one(p.realm, i, &op, &mut p.seen, &mut p.errors) {
                p.planned.push(planned);
            }
            i += 1;
        }
        Ok(())
    }
}

/// [`plan_atomic`] answered as JSON text (the `logic.validate-atomic` export).
pub fn validate_atomic_json(realm: &str, body: &str) -> Result<String> {
    let plan = plan_atomic(realm, body)?;
    serde_json::to_string(&plan).map_err(|e| Error::Storage(e.to_string()))
}

fn plan_one(
    realm: &str,
    i: usize,
    op: &Value,
    seen: &mut HashSet<String>,
    errors: &mut Vec<AtomicError>,
) -> Option<PlannedOp> {
    let before = errors.len();
    let Some(obj) = op.as_object() else {
        errors.push(error(
            AtomicErrorKind::BadRequest,
            INVALID_FORMAT,
            format!("Operation {i} is not an object"),
        ));
        return None;
    };

    let kind = match obj.get("op").and_then(Value::as_str) {
        Some("add") => Some(OpKind::Add),
        Some("update") => Some(OpKind::Update),
        Some("remove") => Some(OpKind::Remove),
        _ => {
            errors.push(error(
                AtomicErrorKind::Unprocessable,
                INVALID_FORMAT,
                format!(
                    "You tried to use an unsupported operation type: '{}'. Only 'add', 'update' and 'remove' operations are supported",
                    js_display(obj.get("op"))
                ),
            ));
            None
        }
    };

    let href = match obj.get("href") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.as_str()),
        _ => {
            errors.push(error(
                AtomicErrorKind::BadRequest,
                INVALID_FORMAT,
                "Request operation must contain 'href' property",
            ));
            None
        }
    };

    // `data` is checked like Boxel: present (non-null) data needs a known type.
    let data = obj.get("data").filter(|d| !d.is_null());
    let resource_kind = match data {
        None => None,
        Some(d) => match d.get("type").and_then(Value::as_str) {
            Some("card") => Some(ResourceKind::Card),
            Some("source") => Some(ResourceKind::Source),
            _ => {
                errors.push(error(
                    AtomicErrorKind::Unprocessable,
                    INVALID_FORMAT,
                    format!(
                        "You tried to use an unsupported resource type: '{}'. Only 'card' and 'source' resource types are currently supported",
                        js_display(d.get("type"))
                    ),
                ));
                None
            }
        },
    };

    let path = href.and_then(|href| match paths::local_path_of_href(realm, href) {
        Ok(path) if paths::is_reserved(&path) => {
            errors.push(error(
                AtomicErrorKind::BadRequest,
                INVALID_FORMAT,
                format!("Invalid href '{href}': the '_' namespace is reserved for realm endpoints"),
            ));
            None
        }
        Ok(path) => {
            if seen.insert(path.clone()) {
                Some(path)
            } else {
                errors.push(error(
                    AtomicErrorKind::BadRequest,
                    INVALID_FORMAT,
                    format!("Resource {href} appears more than once in this request"),
                ));
                None
            }
        }
        Err(Error::NotFound(detail)) => {
            errors.push(error(AtomicErrorKind::NotFound, INVALID_FORMAT, detail));
            None
        }
        Err(e) => {
            let detail = match e {
                Error::BadRequest(m) => m,
                other => format!("{other:?}"),
            };
            errors.push(error(
                AtomicErrorKind::BadRequest,
                INVALID_FORMAT,
                format!("Invalid href '{}': {detail}", paths::shown(href)),
            ));
            None
        }
    });

    let (content, index) = match kind {
        Some(OpKind::Add | OpKind::Update) => {
            let shown = href.unwrap_or("");
            let op_name = js_display(obj.get("op"));
            match (data, resource_kind) {
                (None, _) => {
                    errors.push(error(
                        AtomicErrorKind::Unprocessable,
                        INVALID_FORMAT,
                        format!("Request operation '{op_name}' on {shown} must contain 'data'"),
                    ));
                    (None, None)
                }
                (Some(d), Some(ResourceKind::Card)) => {
                    card_content(realm, shown, d, path.as_deref(), errors)
                }
                (Some(d), Some(ResourceKind::Source)) => {
                    source_content(realm, shown, d, path.as_deref(), errors)
                }
                // bad data.type, already reported
                (Some(_), None) => (None, None),
            }
        }
        _ => (None, None),
    };

    if errors.len() > before {
        return None;
    }
    let (kind, path) = (kind?, path?);
    Some(PlannedOp {
        op: kind,
        href: href?.to_string(),
        url: paths::file_url(realm, &path),
        path,
        kind: if kind == OpKind::Remove {
            None
        } else {
            resource_kind
        },
        content,
        index,
    })
}

fn card_content(
    realm: &str,
    href: &str,
    data: &Value,
    path: Option<&str>,
    errors: &mut Vec<AtomicError>,
) -> (Option<String>, Option<CardIndex>) {
    if !is_card_resource(data) {
        errors.push(error(
            AtomicErrorKind::Unprocessable,
            INVALID_FORMAT,
            format!(
                "Invalid card resource for {href}: meta.adoptsFrom with string module and name is required, and attributes and relationships must be objects"
            ),
        ));
        return (None, None);
    }
    if let Err(why) = check_card_shape(data) {
        errors.push(error(
            AtomicErrorKind::Unprocessable,
            INVALID_FORMAT,
            format!("Invalid card resource for {href}: {why}"),
        ));
        return (None, None);
    }
    // Without a valid path there is nothing to serialise against.
    let Some(path) = path else {
        return (None, None);
    };
    let printed = serialize_card_parts(data, &paths::file_url(realm, path), realm)
        .and_then(|card| PrintedCard::new(card, &paths::card_id(realm, path)));
    match printed {
        Ok(PrintedCard { content: mut text, index, .. }) => {
            let mut index = path.ends_with(".json").then_some(index);
            // Kept until every op is planned: drop the growth slack.
            text.shrink_to_fit();
            if let Some(i) = index.as_mut() {
                i.search_doc.shrink_to_fit();
            }
            (Some(text), index)
        }
        Err(e) => {
            let detail = match e {
                Error::BadRequest(m) | Error::Storage(m) => m,
                other => format!("{other:?}"),
            };
            errors.push(error(
                AtomicErrorKind::Unprocessable,
                INVALID_FORMAT,
                format!("Invalid card resource for {href}: {detail}"),
            ));
            (None, None)
        }
    }
}

// Same signature as `card_content`: the two per-kind content planners `plan_one` picks between; their bodies differ.
fn source_content(
    realm: &str,
    href: &str,
    data: &Value,
    path: Option<&str>,
    errors: &mut Vec<AtomicError>,
) -> (Option<String>, Option<CardIndex>) {
    match data.get("attributes").and_then(|a| a.get("content")) {
        Some(Value::String(content)) => {
            let index = path.and_then(|p| index_for_file(realm, p, content));
            (Some(content.clone()), index)
        }
        _ => {
            errors.push(error(
                AtomicErrorKind::Unprocessable,
                INVALID_FORMAT,
                format!("Invalid source resource for {href}: attributes.content must be a string"),
            ));
            (None, None)
        }
    }
}

/// The locked-phase check of one op: `add` onto an existing file → 409,
/// `update`/`remove` of a missing file → 404.
pub fn existence_error(op: &PlannedOp, exists: bool) -> Option<AtomicError> {
    match (op.op, exists) {
        (OpKind::Add, true) => Some(error(
            AtomicErrorKind::Conflict,
            "Resource already exists",
            format!("Resource {} already exists", op.href),
        )),
        (OpKind::Update | OpKind::Remove, false) => Some(error(
            AtomicErrorKind::NotFound,
            "Resource does not exist",
            format!("Resource {} does not exist", op.href),
        )),
        _ => None,
    }
}

/// The success body: `{"atomic:results":[{"data":{"id":url},"meta":{"created":…}}]}`
/// in the order given (`created` is `null` for removals), pretty-printed.
pub fn results_document(results: &[(String, Option<i64>)]) -> Result<String> {
    let items: Vec<Value> = results
        .iter()
        .map(|(url, created)| json!({"data": {"id": url}, "meta": {"created": created}}))
        .collect();
    serde_json::to_string_pretty(&json!({ "atomic:results": items }))
        .map_err(|e| Error::Storage(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use AtomicErrorKind::*;

    const REALM: &str = "http://localhost:4201/test/";

    fn card_data() -> Value {
        json!({"type": "card", "attributes": {"firstName": "Mango"},
               "meta": {"adoptsFrom": {"module": "http://localhost:4201/test/person.gts", "name": "Person"}}})
    }

    fn body(ops: Value) -> String {
        json!({ "atomic:operations": ops }).to_string()
    }

    fn kinds(result: Result<Vec<PlannedOp>>) -> Vec<(AtomicErrorKind, String)> {
        match result {
            Err(Error::Atomic(errs)) => errs.into_iter().map(|e| (e.kind, e.detail)).collect(),
            other => panic!("expected atomic errors, got {other:?}"),
        }
    }

    #[test]
    fn validation_cases() {
        // (name, body, expected error kinds in order)
        let cases: Vec<(&str, String, Vec<AtomicErrorKind>)> = vec![
            ("body not JSON", "{nope".into(), vec![BadRequest]),
            (
                "operations missing",
                json!({}).to_string(),
                vec![BadRequest],
            ),
            (
                "operations not an array",
                json!({"atomic:operations": {}}).to_string(),
                vec![BadRequest],
            ),
            ("body an array", "[]".into(), vec![BadRequest]),
            (
                "unsupported op",
                body(json!([{"op": "delete", "href": "x.json"}])),
                vec![Unprocessable],
            ),
            (
                "unsupported op and no href",
                body(json!([{"op": "delete", "data": {"type": "card"}}])),
                vec![Unprocessable, BadRequest],
            ),
            (
                "missing href",
                body(json!([{"op": "add", "data": card_data()}])),
                vec![BadRequest],
            ),
            (
                "empty href",
                body(json!([{"op": "add", "href": "", "data": card_data()}])),
                vec![BadRequest],
            ),
            (
                "bad data.type",
                body(json!([{"op": "add", "href": "x.json", "data": {"type": "module"}}])),
                vec![Unprocessable],
            ),
            (
                "missing data.type",
                body(json!([{"op": "add", "href": "x.json", "data": {"attributes": {}}}])),
                vec![Unprocessable],
            ),
            (
                "missing data on add",
                body(json!([{"op": "add", "href": "x.json"}])),
                vec![Unprocessable],
            ),
            (
                "missing data on update",
                body(json!([{"op": "update", "href": "x.json", "data": null}])),
                vec![Unprocessable],
            ),
            (
                "card without adoptsFrom",
                body(
                    json!([{"op": "add", "href": "x.json", "data": {"type": "card", "attributes": {}}}]),
                ),
                vec![Unprocessable],
            ),
            (
                "card attributes not an object",
                body(json!([{"op": "add", "href": "x.json",
                "data": {"type": "card", "attributes": [], "meta": {"adoptsFrom": {"module": "./p", "name": "P"}}}}])),
                vec![Unprocessable],
            ),
            (
                "card relationship not serialisable",
                body(json!([{"op": "add", "href": "x.json",
                "data": {"type": "card", "relationships": {"r": 5}, "meta": {"adoptsFrom": {"module": "./p", "name": "P"}}}}])),
                vec![Unprocessable],
            ),
            (
                "source content not a string",
                body(
                    json!([{"op": "add", "href": "x.gts", "data": {"type": "source", "attributes": {"content": 5}}}]),
                ),
                vec![Unprocessable],
            ),
            (
                "source content missing",
                body(
                    json!([{"op": "add", "href": "x.gts", "data": {"type": "source", "attributes": {}}}]),
                ),
                vec![Unprocessable],
            ),
            (
                "href outside realm",
                body(json!([{"op": "add", "href": "../other/x.json", "data": card_data()}])),
                vec![NotFound],
            ),
            (
                "absolute href in other origin",
                body(json!([{"op": "remove", "href": "http://else.example/test/x.json"}])),
                vec![NotFound],
            ),
            (
                "href with empty segment",
                body(json!([{"op": "remove", "href": "a//x.json"}])),
                vec![BadRequest],
            ),
            (
                "href is the realm root",
                body(json!([{"op": "remove", "href": "./"}])),
                vec![BadRequest],
            ),
            (
                "duplicate href",
                body(json!([
                {"op": "add", "href": "x.json", "data": card_data()},
                {"op": "update", "href": "./dir/../x.json", "data": card_data()}])),
                vec![BadRequest],
            ),
            ("op not an object", body(json!([5])), vec![BadRequest]),
            (
                "errors of all ops listed",
                body(json!([
                {"op": "add", "href": "a.json", "data": card_data()},
                {"op": "frob", "href": "b.json"},
                {"op": "add", "data": card_data()},
                {"op": "add", "href": "../../x", "data": card_data()}])),
                vec![Unprocessable, BadRequest, NotFound],
            ),
        ];
        for (name, body, want) in cases {
            let got: Vec<AtomicErrorKind> = kinds(plan_atomic(REALM, &body))
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn exact_messages() {
        let err = plan_atomic(REALM, "nope").unwrap_err();
        assert_eq!(
            err,
            Error::Atomic(vec![AtomicError {
                kind: BadRequest,
                title: "Invalid atomic:operations format".into(),
                detail: "Request body is not valid JSON".into()
            }])
        );
        let got = kinds(plan_atomic(
            REALM,
            &body(json!([{"op": "delete", "data": {"type": "module"}}])),
        ));
        assert_eq!(
            got,
            vec![
                (Unprocessable, "You tried to use an unsupported operation type: 'delete'. Only 'add', 'update' and 'remove' operations are supported".into()),
                (BadRequest, "Request operation must contain 'href' property".into()),
                (Unprocessable, "You tried to use an unsupported resource type: 'module'. Only 'card' and 'source' resource types are currently supported".into()),
            ]
        );
        let got = kinds(plan_atomic(REALM, &body(json!([{"href": "x.json"}]))));
        assert_eq!(
            got[0].1,
            "You tried to use an unsupported operation type: 'undefined'. Only 'add', 'update' and 'remove' operations are supported"
        );
        let got = kinds(plan_atomic(
            REALM,
            &body(json!([{"op": "remove", "href": "../x.json"}])),
        ));
        assert_eq!(
            got,
            vec![(
                NotFound,
                "realm http://localhost:4201/test/ does not contain http://localhost:4201/x.json"
                    .into()
            )]
        );
        let got = kinds(plan_atomic(
            REALM,
            &body(json!([{"op": "remove", "href": "x.json"}, {"op": "remove", "href": "x.json"}])),
        ));
        assert_eq!(
            got,
            vec![(
                BadRequest,
                "Resource x.json appears more than once in this request".into()
            )]
        );
    }

    #[test]
    fn plans_ops_in_order() {
        let plan = plan_atomic(
            REALM,
            &body(json!([
                {"op": "add", "href": "Person/new.json", "data": card_data()},
                {"op": "update", "href": "/test/person.gts", "data": {"type": "source", "attributes": {"content": "export class X {}"}}},
                {"op": "remove", "href": "old.json", "data": {"type": "card"}},
                {"op": "add", "href": "notes.txt", "data": card_data()},
            ])),
        )
        .unwrap();
        assert_eq!(plan.len(), 4);

        let add = &plan[0];
        assert_eq!((add.op, add.kind), (OpKind::Add, Some(ResourceKind::Card)));
        assert_eq!(add.path, "Person/new.json");
        assert_eq!(add.url, "http://localhost:4201/test/Person/new.json");
        let stored: Value = serde_json::from_str(add.content.as_deref().unwrap()).unwrap();
        assert_eq!(stored["data"]["meta"]["adoptsFrom"]["module"], "../person");
        let index = add.index.as_ref().unwrap();
        assert_eq!(index.id, "http://localhost:4201/test/Person/new");
        assert_eq!(index.card_type, "http://localhost:4201/test/person#Person");

        let src = &plan[1];
        assert_eq!(
            (src.op, src.kind),
            (OpKind::Update, Some(ResourceKind::Source))
        );
        assert_eq!(src.path, "person.gts");
        assert_eq!(src.content.as_deref(), Some("export class X {}"));
        assert_eq!(src.index, None);

        let rm = &plan[2];
        assert_eq!(
            (rm.op, rm.kind, rm.content.as_deref()),
            (OpKind::Remove, None, None)
        );

        // a card at a non-.json path is stored but not indexed
        assert!(plan[3].content.is_some());
        assert_eq!(plan[3].index, None);

        let text =
            validate_atomic_json(REALM, &body(json!([{"op": "remove", "href": "a b.json"}])))
                .unwrap();
        assert_eq!(
            text,
            r#"[{"op":"remove","href":"a b.json","path":"a b.json","url":"http://localhost:4201/test/a b.json","kind":null,"content":null,"index":null}]"#
        );
    }

    #[test]
    fn source_json_card_gets_an_index() {
        let content = json!({"data": card_data()}).to_string();
        let plan = plan_atomic(
            REALM,
            &body(json!([{"op": "add", "href": "c.json", "data": {"type": "source", "attributes": {"content": content}}}])),
        )
        .unwrap();
        assert_eq!(plan[0].content.as_deref(), Some(content.as_str()));
        assert_eq!(
            plan[0].index.as_ref().map(|i| i.id.as_str()),
            Some("http://localhost:4201/test/c")
        );
    }

    #[test]
    fn body_shapes_while_streaming() {
        const NOT_JSON: &str = "Request body is not valid JSON";
        const NO_OPS: &str = "Request body must contain 'atomic:operations' array";
        let remove = |href: &str| json!({"op": "remove", "href": href}).to_string();
        // Ok(planned hrefs) or Err(the one body-level detail)
        type Want = std::result::Result<Vec<&'static str>, &'static str>;
        let cases: Vec<(&str, String, Want)> = vec![
            ("truncated array", "[1,".into(), Err(NOT_JSON)),
            ("truncated operations", format!("{{\"atomic:operations\": [{}", remove("a.txt")), Err(NOT_JSON)),
            ("syntax error after a bad op", format!("{{\"atomic:operations\": [{{\"op\": \"frob\"}}, {}, ]}}", remove("a.txt")), Err(NOT_JSON)),
            ("trailing garbage", format!("{{\"atomic:operations\": [{}]}} x", remove("a.txt")), Err(NOT_JSON)),
            ("empty body", "".into(), Err(NOT_JSON)),
            ("a string", "\"ops\"".into(), Err(NO_OPS)),
            ("null", "null".into(), Err(NO_OPS)),
            ("an array of ops", format!("[{}]", remove("a.txt")), Err(NO_OPS)),
            ("operations a number", json!({"atomic:operations": 5}).to_string(), Err(NO_OPS)),
            ("operations null", json!({"atomic:operations": null}).to_string(), Err(NO_OPS)),
            ("operations an object, rest of the body invalid", "{\"atomic:operations\": {}, ".into(), Err(NOT_JSON)),
            ("other members skipped", format!("{{\"x\": {{\"deep\": [1, {{}}]}}, \"atomic:operations\": [{}], \"y\": null}}", remove("a.txt")), Ok(vec!["a.txt"])),
            ("repeated key: the last wins", format!("{{\"atomic:operations\": [{}, {{\"op\": \"frob\"}}], \"atomic:operations\": [{}]}}", remove("a.txt"), remove("b.txt")), Ok(vec!["b.txt"])),
            ("escaped key", format!("{{\"atomic\\u003aoperations\": [{}]}}", remove("a.txt")), Ok(vec!["a.txt"])),
        ];
        for (name, body, want) in cases {
            let got = plan_atomic(REALM, &body);
            match want {
                Ok(hrefs) => {
                    let plan = got.unwrap_or_else(|e| panic!("{name}: {e:?}"));
                    let got: Vec<&str> = plan.iter().map(|p| p.href.as_str()).collect();
                    assert_eq!(got, hrefs, "{name}");
                }
                Err(detail) => {
                    assert_eq!(kinds(got), vec![(BadRequest, detail.to_string())], "{name}")
                }
            }
        }
    }

    #[test]
    fn reserved_undecodable_and_control_hrefs() {
        let reserved = |href: &str| {
            format!("Invalid href '{href}': the '_' namespace is reserved for realm endpoints")
        };
        let not_utf8 = |href: &str| format!("Invalid href '{href}': {}", paths::NOT_UTF8);
        let card = card_data();
        let src = json!({"type": "source", "attributes": {"content": "x"}});
        // (href, data or none for remove, expected detail)
        let cases: Vec<(&str, Option<Value>, String)> = vec![
            ("./_x.json", Some(card.clone()), reserved("./_x.json")),
            ("_dir/a.json", Some(card.clone()), reserved("_dir/a.json")),
            (
                "/test/_x.json",
                Some(card.clone()),
                reserved("/test/_x.json"),
            ),
            ("%5Fx.json", Some(card.clone()), reserved("%5Fx.json")),
            (
                "http://localhost:4201/test/_y.txt",
                Some(src.clone()),
                reserved("http://localhost:4201/test/_y.txt"),
            ),
            ("./_atomic", None, reserved("./_atomic")),
            (
                "dir/../_x.json",
                Some(card.clone()),
                reserved("dir/../_x.json"),
            ),
            ("%ff.json", Some(card.clone()), not_utf8("%ff.json")),
            ("%fe.json", Some(card.clone()), not_utf8("%fe.json")),
            ("dir/%C3.txt", Some(src.clone()), not_utf8("dir/%C3.txt")),
            (
                "a%0Ab.txt",
                Some(src.clone()),
                format!(
                    "Invalid href 'a%0Ab.txt': Invalid path 'a\\nb.txt': {}",
                    paths::BAD_CHARACTER
                ),
            ),
            (
                "a\r\nb.txt",
                Some(src.clone()),
                format!("Invalid href 'a\\r\\nb.txt': {}", paths::BAD_CHARACTER),
            ),
            (
                "a\\b.txt",
                None,
                format!("Invalid href 'a\\\\b.txt': {}", paths::BAD_CHARACTER),
            ),
        ];
        for (href, data, want) in cases {
            let op = match data {
                Some(d) => json!({"op": "add", "href": href, "data": d}),
                None => json!({"op": "remove", "href": href}),
            };
            assert_eq!(
                kinds(plan_atomic(REALM, &body(json!([op])))),
                vec![(BadRequest, want)],
                "{href:?}"
            );
        }
        // Every control byte, escaped or raw, in any segment.
        for b in (0u8..0x20).chain([0x7f]) {
            for href in [format!("a%{b:02x}b.txt"), format!("d/{}.txt", b as char)] {
                let got = kinds(plan_atomic(
                    REALM,
                    &body(json!([{"op": "add", "href": href, "data": src}])),
                ));
                assert_eq!(got.len(), 1, "{href:?}: {got:?}");
                assert_eq!(got[0].0, BadRequest, "{href:?}");
            }
        }
        // Two undecodable hrefs are two errors, never one path twice.
        let got = kinds(plan_atomic(
            REALM,
            &body(
                json!([{"op": "add", "href": "%ff.json", "data": card}, {"op": "add", "href": "%fe.json", "data": card}]),
            ),
        ));
        assert_eq!(
            got,
            vec![
                (BadRequest, not_utf8("%ff.json")),
                (BadRequest, not_utf8("%fe.json"))
            ]
        );
        // `_` further down is an ordinary name.
        let plan = plan_atomic(
            REALM,
            &body(json!([{"op": "add", "href": "dir/_x.json", "data": card}])),
        )
        .unwrap();
        assert_eq!(plan[0].path, "dir/_x.json");
    }

    #[test]
    fn card_shapes_are_checked() {
        let with_rels = |rels: Value| {
            let mut d = card_data();
            d["relationships"] = rels;
            json!([{"op": "add", "href": "x.json", "data": d}])
        };
        let links =
            "Invalid card resource for x.json: relationship 'friend': links must be an object";
        let cases: Vec<(Value, &str)> = vec![
            (json!({"friend": {"links": "x"}}), links),
            (json!({"friend": {"links": 42}}), links),
            (json!({"friend": {"links": ["./a"]}}), links),
            (json!({"friend": {"links": true}}), links),
            (json!({"friend": {"links": {"self": 1}}}), "Invalid card resource for x.json: relationship 'friend': links.self must be a string or null"),
            (json!({"friend": {"data": "./a"}}), "Invalid card resource for x.json: relationship 'friend': data must be null, an object or an array of objects"),
            (json!({"friend": {"data": {"id": 7}}}), "Invalid card resource for x.json: relationship 'friend': data.id must be a string"),
            (json!({"friend": {"data": [{"lid": false}]}}), "Invalid card resource for x.json: relationship 'friend': data[0].lid must be a string"),
            (json!({"friend": {"meta": []}}), "Invalid card resource for x.json: relationship 'friend': meta must be an object"),
            (json!({"pets": [{"links": "x"}]}), "Invalid card resource for x.json: relationship 'pets.0': links must be an object"),
        ];
        for (rels, want) in cases {
            let got = kinds(plan_atomic(REALM, &body(with_rels(rels.clone()))));
            assert_eq!(got, vec![(Unprocessable, want.to_string())], "{rels}");
        }
        // a shape error is listed even when the href is refused too
        let got = kinds(plan_atomic(
            REALM,
            &body(json!([{"op": "add", "href": "a//x.json",
            "data": {"type": "card", "relationships": {"friend": {"links": "x"}}, "meta": {"adoptsFrom": {"module": "./p", "name": "P"}}}}])),
        ));
        assert_eq!(
            got.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![BadRequest, Unprocessable]
        );
        // a null relationship is kept as a null link
        let plan = plan_atomic(REALM, &body(with_rels(json!({"friend": null})))).unwrap();
        let stored: Value = serde_json::from_str(plan[0].content.as_deref().unwrap()).unwrap();
        assert_eq!(
            stored["data"]["relationships"],
            json!({"friend": {"links": {"self": null}}})
        );
    }

    #[test]
    fn empty_operations_is_fine() {
        assert_eq!(plan_atomic(REALM, &body(json!([]))).unwrap(), vec![]);
    }

    #[test]
    fn existence_rules() {
        let op = |op| PlannedOp {
            op,
            href: "x.json".into(),
            path: "x.json".into(),
            url: format!("{REALM}x.json"),
            kind: None,
            content: None,
            index: None,
        };
        let cases = [
            (
                OpKind::Add,
                true,
                Some((
                    Conflict,
                    "Resource already exists",
                    "Resource x.json already exists",
                )),
            ),
            (OpKind::Add, false, None),
            (
                OpKind::Update,
                false,
                Some((
                    NotFound,
                    "Resource does not exist",
                    "Resource x.json does not exist",
                )),
            ),
            (OpKind::Update, true, None),
            (
                OpKind::Remove,
                false,
                Some((
                    NotFound,
                    "Resource does not exist",
                    "Resource x.json does not exist",
                )),
            ),
            (OpKind::Remove, true, None),
        ];
        for (kind, exists, want) in cases {
            let got = existence_error(&op(kind), exists).map(|e| (e.kind, e.title, e.detail));
            let want = want.map(|(k, t, d)| (k, t.to_string(), d.to_string()));
            assert_eq!(got, want, "{kind:?} exists={exists}");
        }
    }

    #[test]
    fn results_shape() {
        let text = results_document(&[
            (format!("{REALM}a.json"), Some(5)),
            (format!("{REALM}b.json"), None),
        ])
        .unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            json!({"atomic:results": [
                {"data": {"id": "http://localhost:4201/test/a.json"}, "meta": {"created": 5}},
                {"data": {"id": "http://localhost:4201/test/b.json"}, "meta": {"created": null}}
            ]})
        );
    }
}
