//! The searchable values of a card, one row per value: what `card_fields`
//! holds. Derived from the stored card document itself, so every write
//! path (card routes, `/_atomic`, a `.json` source file) indexes alike.
//!
//! A field is its dotted path through attributes, list positions left
//! out: `address.city`, `pets.name` (each element of `pets`), `nickNames`
//! (each element). A relationship is a field too (`friend`, `friends` for
//! `friends.0`, `friends.1`…) whose value is the linked card's URL, so a
//! query can follow it; so is the card's own `id` (its URL). Nulls are
//! not stored: absent and null are one.

use std::borrow::Cow;
use std::collections::HashMap;

use sha2::{Digest, Sha256};
use url::Url;

use super::json::Json;

/// The kind of a stored value; `Link` rows are relationships.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Number = 0,
    Text = 1,
    Bool = 2,
    Link = 3,
}

/// One value of one field of a card.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldRow {
    pub field: String,
    /// Order of this value among the card's values of `field` (0 first).
    pub position: i64,
    pub kind: Kind,
    /// The string; a number's JSON text; `true`/`false`; a link's card URL.
    pub text: String,
    pub number: Option<f64>,
}

impl FieldRow {
    /// [`text_key`] of `text`: what the equality index holds. (Computed
    /// when a row is written: most derived rows are only compared.)
    pub fn key(&self) -> String {
        text_key(&self.text)
    }

    /// Lowercased text, for `contains` (strings only).
    pub fn folded(&self) -> Option<String> {
        (self.kind == Kind::Text).then(|| fold(&self.text))
    }
}

/// Values longer than this are indexed by a prefix and their hash (a
/// B-tree entry must stay small; Postgres refuses index rows over ~2.7 kB).
const MAX_KEY_BYTES: usize = 256;
/// Nesting beyond this is not indexed.
const MAX_DEPTH: usize = 32;
/// Longest field path that is searchable, in bytes: a field is an index
/// key (with the realm URL, the card's path and the value's key it must
/// fit a Postgres btree entry), so a longer one gets no row and a filter
/// on it matches nothing.
const MAX_FIELD_BYTES: usize = 512;

/// A text as the index keeps it: NUL, which Postgres `text` cannot hold,
/// becomes U+FFFD (queries are mapped the same way, so they still match).
pub fn storable(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// The equality-index key of a value: the value itself when short, else
/// a prefix and the SHA-256 of the whole (a match is confirmed on `text`).
pub fn text_key(text: &str) -> String {
    if text.len() <= MAX_KEY_BYTES {
        return text.to_string();
    }
    let mut cut = 200;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}\u{1}{}", &text[..cut], hex::encode(Sha256::digest(text.as_bytes())))
}

/// Every searchable value of the card document `content` (a `{"data":…}`
/// document or a bare resource) whose URL is `card_url` (no `.json`).
/// Content that is not a JSON object yields nothing.
pub fn fields_of(content: &str, card_url: &str) -> Vec<FieldRow> {
    Json::parse(content).map_or_else(Vec::new, |doc| rows_of(&doc, card_url))
}

/// [`fields_of`] a parsed document.
fn rows_of(doc: &Json, card_url: &str) -> Vec<FieldRow> {
    let Some(resource) = resource_of(doc) else { return Vec::new() };
    let mut rows = Rows::default();
    // A card's `id` is a field too (Boxel's CardDef has one): `eq` on it,
    // or on `friend.id` through a link, finds cards by URL.
    rows.push("id", Kind::Text, storable(card_url), None);
    for (name, value) in members(resource, "attributes") {
        rows.attribute(name, value, 0);
    }
    rows.relationships(members(resource, "relationships"), card_url);
    rows.rows
}

/// Top-level attributes a card may have for [`changed_rows`] to compare
/// them one by one (beyond, every row is derived).
const COMPARED_ATTRIBUTES: usize = 64;

/// The search rows of two versions of one card's document, `old` and
/// `new` (its URL `card_url`), where they can differ: the rows of each
/// top-level attribute whose value differs and, if the relationships
/// differ, theirs (unsorted). Diffing these is diffing every row: the
/// parts left out are equal, so their rows are the same rows at the same
/// positions — as long as no field name can come from two parts (positions
/// count per field name). `None` when one might (an attribute named `id`,
/// or with a `.`, NUL or U+FFFD in its name; a relationship whose field
/// starts with an attribute's name or `id`), when a document is not a card
/// object, or past [`COMPARED_ATTRIBUTES`]: then derive every row.
pub fn changed_rows(old: &str, new: &str, card_url: &str) -> Option<(Vec<FieldRow>, Vec<FieldRow>)> {
    let (old_doc, new_doc) = (Json::parse(old)?, Json::parse(new)?);
    let (old, new) = (resource_of(&old_doc)?, resource_of(&new_doc)?);
    let (old_attributes, new_attributes) = (members(old, "attributes"), members(new, "attributes"));
    if old_attributes.len().max(new_attributes.len()) > COMPARED_ATTRIBUTES {
        return None;
    }
    let names = || old_attributes.iter().chain(new_attributes).map(|(name, _)| name.as_ref());
    if names().any(|name| name == "id" || name.contains(['.', '\0', '\u{FFFD}'])) {
        return None;
    }
    let (old_relationships, new_relationships) = (members(old, "relationships"), members(new, "relationships"));
    for (name, _) in old_relationships.iter().chain(new_relationships) {
        let field = relationship_field(name);
        let first = field.split('.').next().unwrap_or_default();
        if first == "id" || field.contains(['\0', '\u{FFFD}']) || names().any(|name| name == first) {
            return None;
        }
    }
    let (mut old_rows, mut new_rows) = (Rows::default(), Rows::default());
    let new_only = new_attributes.iter().filter(|(name, _)| member(old_attributes, name).is_none());
    for (name, _) in old_attributes.iter().chain(new_only) {
        let (was, now) = (member(old_attributes, name), member(new_attributes, name));
        if was == now {
            continue;
        }
        // A fresh count of positions per part: no field is in two parts.
        if let Some(was) = was {
            old_rows.append(Rows::of_attribute(name, was));
        }
        if let Some(now) = now {
            new_rows.append(Rows::of_attribute(name, now));
        }
    }
    if old_relationships != new_relationships {
        old_rows.relationships_apart(old_relationships, card_url);
        new_rows.relationships_apart(new_relationships, card_url);
    }
    Some((old_rows.rows, new_rows.rows))
}

/// The card resource of a document: its `data`, or the document itself;
/// None unless it is an object.
fn resource_of<'d, 'a>(doc: &'d Json<'a>) -> Option<&'d Json<'a>> {
    let resource = doc.get("data").unwrap_or(doc);
    matches!(resource, Json::Object(_)).then_some(resource)
}

/// The value of the member `name` of `members`.
fn member<'d, 'a>(members: &'d [(Cow<'a, str>, Json<'a>)], name: &str) -> Option<&'d Json<'a>> {
    members.iter().find(|(n, _)| n == name).map(|(_, value)| value)
}

/// The members of the object `resource[key]` (none unless it is one).
fn members<'d, 'a>(resource: &'d Json<'a>, key: &str) -> &'d [(Cow<'a, str>, Json<'a>)] {
    match resource.get(key) {
        Some(Json::Object(members)) => members,
        _ => &[],
    }
}

/// `friends.0` → `friends`, `pets.1.owner` → `pets.owner`.
fn relationship_field(name: &str) -> String {
    name.split('.').filter(|s| s.parse::<u64>().is_err()).collect::<Vec<_>>().join(".")
}

/// The card URL a link points to, as card ids are kept: resolved against
/// the card, percent-decoded, without query, fragment or `.json`.
pub fn card_url_of(link: &str, base: &Url) -> Option<String> {
    let mut url = base.join(link).ok()?;
    url.set_query(None);
    url.set_fragment(None);
    let decoded = percent_encoding::percent_decode_str(url.as_str()).decode_utf8().ok()?.into_owned();
    Some(decoded.strip_suffix(".json").map(str::to_string).unwrap_or(decoded))
}

#[derive(Default)]
struct Rows {
    rows: Vec<FieldRow>,
    positions: HashMap<String, i64>,
}

impl Rows {
    /// The rows of one top-level attribute, its positions counted apart.
    fn of_attribute(name: &str, value: &Json) -> Rows {
        let mut rows = Rows::default();
        rows.attribute(name, value, 0);
        rows
    }

    /// Adds `other`'s rows (positions as `other` counted them).
    fn append(&mut self, other: Rows) {
        self.rows.extend(other.rows);
    }

    /// Adds the rows of `relationships`, their positions counted apart.
    fn relationships_apart(&mut self, relationships: &[(Cow<'_, str>, Json<'_>)], card_url: &str) {
        let mut apart = Rows::default();
        apart.relationships(relationships, card_url);
        self.append(apart);
    }

    /// A link row per relationship whose `links.self` resolves.
    fn relationships(&mut self, relationships: &[(Cow<'_, str>, Json<'_>)], card_url: &str) {
        if relationships.is_empty() {
            return;
        }
        // Parsed only here: most cards have no relationships.
        let Ok(base) = Url::parse(card_url) else { return };
        for (name, relationship) in relationships {
            let link = relationship.get("links").and_then(|links| links.get("self")).and_then(Json::as_str);
            if let Some(target) = link.and_then(|link| card_url_of(link, &base)) {
                self.push(&relationship_field(name), Kind::Link, storable(&target), None);
            }
        }
    }

    fn attribute(&mut self, field: &str, value: &Json, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        match value {
            Json::Null => {}
            Json::Bool(b) => self.push(field, Kind::Bool, b.to_string(), None),
            Json::Number(n) => self.push(field, Kind::Number, n.to_string(), n.as_f64().filter(|f| f.is_finite())),
            Json::String(s) => self.push(field, Kind::Text, storable(s), None),
            Json::Array(items) => items.iter().for_each(|item| self.attribute(field, item, depth + 1)),
            Json::Object(fields) => {
                for (name, value) in fields {
                    self.attribute(&[field, name].join("."), value, depth + 1);
                }
            }
        }
    }

    fn push(&mut self, field: &str, kind: Kind, text: String, number: Option<f64>) {
        if field.len() > MAX_FIELD_BYTES {
            return;
        }
        let field = storable(field);
        // (Looked up before inserting: most repeated fields are list items.)
        let position = match self.positions.get_mut(&field) {
            Some(next) => {
                *next += 1;
                *next
            }
            None => {
                self.positions.insert(field.clone(), 0);
                0
            }
        };
        self.rows.push(FieldRow { field, position, kind, text, number });
    }
}

/// Lowercased for `contains`; ASCII (most text) without Unicode's tables.
fn fold(text: &str) -> String {
    if text.is_ascii() {
        text.to_ascii_lowercase()
    } else {
        text.to_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn summary(rows: &[FieldRow]) -> Vec<(String, i64, Kind, String)> {
        rows.iter().map(|r| (r.field.clone(), r.position, r.kind, r.text.clone())).collect()
    }

    #[test]
    fn nested_plural_and_linked_values_become_rows() {
        let card = r#"{"data":{"attributes":{"name":"Mango","age":3,"cool":true,"gone":null,
            "address":{"city":"Paris","zip":75001},"tags":["a","b"],"pets":[{"name":"Rex"},{"name":"Tom"}]},
            "relationships":{"friend":{"links":{"self":"./Van.json"}},"friends.0":{"links":{"self":"../Person/My%20Pal"}},
            "friends.1":{"links":{"self":null}}},"meta":{"adoptsFrom":{"module":"../person","name":"Person"}}}}"#;
        let rows = fields_of(card, "http://h/r/Person/Mango");
        // One row per line: the table is the expectation.
        let t = |f: &str, p, k, v: &str| (f.to_string(), p, k, v.to_string());
        assert_eq!(summary(&rows), [
            t("id", 0, Kind::Text, "http://h/r/Person/Mango"),
            t("name", 0, Kind::Text, "Mango"),
            t("age", 0, Kind::Number, "3"),
            t("cool", 0, Kind::Bool, "true"),
            t("address.city", 0, Kind::Text, "Paris"),
            t("address.zip", 0, Kind::Number, "75001"),
            t("tags", 0, Kind::Text, "a"),
            t("tags", 1, Kind::Text, "b"),
            t("pets.name", 0, Kind::Text, "Rex"),
            t("pets.name", 1, Kind::Text, "Tom"),
            t("friend", 0, Kind::Link, "http://h/r/Person/Van"),
            t("friends", 0, Kind::Link, "http://h/r/Person/My Pal"),
        ]);
        assert_eq!(rows[2].number, Some(3.0));
        assert_eq!(rows[1].folded().as_deref(), Some("mango"));
        assert_eq!((rows[2].folded(), rows[2].key()), (None, "3".to_string()));
    }

    #[test]
    fn long_values_are_keyed_by_prefix_and_hash_and_junk_yields_nothing() {
        let long = "é".repeat(300);
        let key = text_key(&long);
        assert!(key.len() < 300 && key.starts_with("éé") && key != text_key(&format!("{long}x")));
        assert_eq!(text_key("short"), "short");
        assert!(fields_of("not json", "http://h/r/x").is_empty());
        assert!(fields_of("[1,2]", "http://h/r/x").is_empty());
        let rows = fields_of(r#"{"attributes":{"a\u0000":"x\u0000y"}}"#, "http://h/r/x");
        assert_eq!((rows[1].field.as_str(), rows[1].text.as_str()), ("a\u{FFFD}", "x\u{FFFD}y"));
    }

    #[test]
    fn a_repeated_key_keeps_its_first_place_and_its_last_value() {
        let many: String = (0..40).map(|i| format!(r#""k{i}":{i},"#)).collect();
        let card = format!(r#"{{"attributes":{{"a":1,"b":2,"a":3,{many}"k3":"last","k39":null}}}}"#);
        let rows = fields_of(&card, "http://h/r/x");
        let t = |f: &str, v: &str| (f.to_string(), v.to_string());
        let got: Vec<_> = rows.iter().map(|r| t(&r.field, &r.text)).collect();
        assert_eq!(got[..5], [t("id", "http://h/r/x"), t("a", "3"), t("b", "2"), t("k0", "0"), t("k1", "1")]);
        assert_eq!(got[6], t("k3", "last"));
        assert_eq!(got.len(), 3 + 39, "k39 became null: no row");
    }

    #[test]
    fn changed_rows_are_those_of_the_changed_attributes_and_relationships_only() {
        let doc = |attributes: &str, relationships: &str| format!(r#"{{"data":{{"attributes":{attributes},"relationships":{relationships}}}}}"#);
        let friend = r#"{"friend":{"links":{"self":"./Van"}}}"#;
        let old = doc(r#"{"name":"Mango","counter":1,"tags":["a","b"]}"#, friend);
        let new = doc(r#"{"name":"Mango","counter":2,"tags":["a","b"],"note":"hi"}"#, friend);
        let (was, now) = changed_rows(&old, &new, "http://h/r/Person/1").expect("parts apart");
        let fields = |rows: &[FieldRow]| rows.iter().map(|r| (r.field.clone(), r.text.clone())).collect::<Vec<_>>();
        let t = |f: &str, v: &str| (f.to_string(), v.to_string());
        assert_eq!(fields(&was), [t("counter", "1")]);
        assert_eq!(fields(&now), [t("counter", "2"), t("note", "hi")]);
        let moved = doc(r#"{"name":"Mango"}"#, r#"{"friend":{"links":{"self":"./Tom"}}}"#);
        let (was, now) = changed_rows(&doc(r#"{"name":"Mango"}"#, friend), &moved, "http://h/r/Person/1").expect("parts apart");
        assert_eq!((fields(&was), fields(&now)), (vec![t("friend", "http://h/r/Person/Van")], vec![t("friend", "http://h/r/Person/Tom")]));
        // A field name two parts could share: every row is derived instead.
        for (attributes, relationships) in [(r#"{"id":"x"}"#, "{}"), (r#"{"a.b":1}"#, "{}"), (r#"{"a\u0000":1}"#, "{}"), (r#"{"friends":["x"]}"#, r#"{"friends.0":{"links":{"self":"./Van"}}}"#)] {
            assert!(changed_rows(&doc(attributes, relationships), &old, "http://h/r/Person/1").is_none(), "{attributes} {relationships}");
        }
        assert!(changed_rows("[1]", &old, "http://h/r/Person/1").is_none(), "not a card object");
        // Equal as numbers, not as rows: -0 is kept as "-0.0", 0.0 as "0.0".
        let (was, now) = changed_rows(&doc(r#"{"x":-0,"y":5}"#, "{}"), &doc(r#"{"x":0.0,"y":5.0}"#, "{}"), "http://h/r/Person/1").expect("parts apart");
        assert_eq!((fields(&was), fields(&now)), (vec![t("x", "-0.0"), t("y", "5")], vec![t("x", "0.0"), t("y", "5.0")]));
    }

    /// JSON text with repeated keys, escapes and numbers of every kind,
    /// shaped like a card (keys from a small set, so they repeat).
    fn json_text() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec!["data", "attributes", "relationships", "links", "self", "a", "a.b", "b", "x\\u0000", "\\u00e9t\\u00e9"]);
        let leaf = prop_oneof![
            Just("null".to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            (-1e300f64..1e300).prop_map(|f| format!("{f:e}")),
            prop::sample::select(vec!["0", "-0", "0.0", "-0.0", "1e-400", "-1e-400", "5", "5.0"]).prop_map(str::to_string),
            prop::sample::select(vec!["\"Mango\"", "\"Caf\\u00e9 \\\"quoted\\\"\\n\"", "\"a\\u0000b\"", "\"../Person/Van\"", "\"ÅÉ\""]).prop_map(str::to_string),
        ];
        leaf.prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec((key.clone(), inner), 0..6)
                    .prop_map(|pairs| format!("{{{}}}", pairs.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(","))),
            ]
        })
    }

    /// The document as `serde_json::Value` read it.
    fn from_value(value: &serde_json::Value) -> Json<'_> {
        use serde_json::Value;
        match value {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Number(n.clone()),
            Value::String(s) => Json::String(s.as_str().into()),
            Value::Array(items) => Json::Array(items.iter().map(from_value).collect()),
            Value::Object(map) => Json::Object(map.iter().map(|(k, v)| (k.as_str().into(), from_value(v))).collect()),
        }
    }

    /// The upserts and deletions that turn rows `old` into `new`, by key.
    fn diff(old: &[FieldRow], new: &[FieldRow]) -> (Vec<String>, Vec<(String, i64)>) {
        let by_key = |rows: &[FieldRow]| rows.iter().map(|r| ((r.field.clone(), r.position), format!("{r:?}"))).collect::<std::collections::BTreeMap<_, _>>();
        let (old, new) = (by_key(old), by_key(new));
        let upserts = new.iter().filter(|(k, row)| old.get(*k) != Some(row)).map(|(_, row)| row.clone()).collect();
        let deletes = old.keys().filter(|k| !new.contains_key(*k)).cloned().collect();
        (upserts, deletes)
    }

    /// A card's attributes (name, JSON text) and relationships (name, link's JSON text).
    type Card = (Vec<(&'static str, String)>, Vec<(&'static str, &'static str)>);

    /// A card document: attributes (names that may collide with one another,
    /// `id` or a relationship's field) and relationships (some unresolvable).
    fn card_text() -> impl Strategy<Value = Card> {
        let name = prop::sample::select(vec!["name", "counter", "tags", "address", "friends", "a", "a.b", "id", "x\\u0000", ""]);
        let relationship = prop::sample::select(vec!["friend", "friends.0", "friends.1", "pets.0.owner", "a", "0", "id"]);
        let link = prop::sample::select(vec!["\"./Van\"", "\"../Person/Tom.json\"", "null", "\"http://[bad\"", "\"#x\""]);
        (prop::collection::vec((name, json_text()), 0..6), prop::collection::vec((relationship, link), 0..3))
    }

    fn document((attributes, relationships): &Card) -> String {
        let attributes: Vec<String> = attributes.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        let relationships: Vec<String> = relationships.iter().map(|(k, l)| format!(r#""{k}":{{"links":{{"self":{l}}}}}"#)).collect();
        format!(r#"{{"data":{{"attributes":{{{}}},"relationships":{{{}}}}}}}"#, attributes.join(","), relationships.join(","))
    }

    proptest! {
        /// Diffing only the changed parts' rows is diffing every row, for any
        /// two versions of a card (the second one edited from the first, so
        /// most parts are equal) whose parts can be told apart.
        #[test]
        fn changed_rows_diff_as_every_row_does(old in card_text(), edits in card_text(), keep in prop::collection::vec(any::<bool>(), 0..6)) {
            let mut new = old.clone();
            for (i, keep) in keep.iter().enumerate() {
                if !keep && i < new.0.len() {
                    new.0.remove(i);
                }
            }
            new.0.extend(edits.0);
            if !edits.1.is_empty() {
                new.1 = edits.1;
            }
            let (old, new) = (document(&old), document(&new));
            let url = "http://h/r/Person/1";
            if let Some((was, now)) = changed_rows(&old, &new, url) {
                prop_assert_eq!(diff(&was, &now), diff(&fields_of(&old, url), &fields_of(&new, url)));
            }
        }

        /// The rows are those of the document as `serde_json::Value` reads
        /// it: the one-walk parser changes nothing (repeated keys, escapes,
        /// numbers), and text it refuses, `Value` refuses too.
        #[test]
        fn rows_are_those_of_the_document_as_serde_json_reads_it(text in json_text()) {
            let url = "http://h/r/Person/x";
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(value) => prop_assert_eq!(fields_of(&text, url), rows_of(&from_value(&value), url)),
                Err(_) => prop_assert!(fields_of(&text, url).is_empty()),
            }
        }
    }
}
