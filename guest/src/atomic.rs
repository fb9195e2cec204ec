//! `/_atomic`: parses and validates a request body (spec §3, every check
//! that needs no lock) into planned operations, and holds the pieces of the
//! locked phase that need no storage (existence errors, results document).
//!
//! Beyond Boxel: `remove` is supported, an op with invalid `data` is
//! refused (422) instead of skipped, and the same path twice in one request
//! is refused (400) instead of "last one wins".

use std::collections::HashSet;

use serde::{Serialize, Serializer};
use serde_json::{json, Value};

use crate::error::{AtomicError, AtomicErrorKind, Error, Result};
use crate::paths;
use crate::serialize::{card_index, index_for_file, is_card_resource, serialize_card_value};
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
///   invalid local path → 400; the same path twice → 400;
/// - `add`/`update` with missing or invalid `data` (not a card resource, not
///   serialisable, source `attributes.content` not a string) → 422.
///
/// On success the planned ops come in request order, cards already serialised.
pub fn plan_atomic(realm: &str, body: &str) -> Result<Vec<PlannedOp>> {
    let json: Value = serde_json::from_str(body).map_err(|_| {
        Error::Atomic(vec![error(
            AtomicErrorKind::BadRequest,
            INVALID_FORMAT,
            "Request body is not valid JSON",
        )])
    })?;
    let Some(ops) = json.get("atomic:operations").and_then(Value::as_array) else {
        return Err(Error::Atomic(vec![error(
            AtomicErrorKind::BadRequest,
            INVALID_FORMAT,
            "Request body must contain 'atomic:operations' array",
        )]));
    };
    let mut errors = Vec::new();
    let mut planned = Vec::new();
    let mut seen = HashSet::new();
    for (i, op) in ops.iter().enumerate() {
        if let Some(p) = plan_one(realm, i, op, &mut seen, &mut errors) {
            planned.push(p);
        }
    }
    if errors.is_empty() {
        Ok(planned)
    } else {
        Err(Error::Atomic(errors))
    }
}

/// The name the `logic.validate-atomic` adapter uses for [`plan_atomic`].
pub fn validate(realm: &str, body: &str) -> Result<Vec<PlannedOp>> {
    plan_atomic(realm, body)
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
                format!("Invalid href '{href}': {detail}"),
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
    // Without a valid path there is nothing to serialise against.
    let Some(path) = path else {
        return (None, None);
    };
    let serialised =
        serialize_card_value(data, &paths::file_url(realm, path), realm).and_then(|v| {
            let text =
                serde_json::to_string_pretty(&v).map_err(|e| Error::Storage(e.to_string()))?;
            Ok((v, text))
        });
    match serialised {
        Ok((value, text)) => {
            let index = path.ends_with(".json").then(|| {
                let id = paths::card_id(realm, path);
                card_index(&value, &id, &id)
            });
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
