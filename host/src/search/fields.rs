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

use std::collections::HashMap;

use serde_json::Value;
use sha2::{Digest, Sha256};
use url::Url;

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
    /// [`text_key`] of `text`: what the equality index holds.
    pub key: String,
    /// Lowercased text, for `contains` (strings only).
    pub folded: Option<String>,
    pub number: Option<f64>,
}

/// Values longer than this are indexed by a prefix and their hash (a
/// B-tree entry must stay small; Postgres refuses index rows over ~2.7 kB).
const MAX_KEY_BYTES: usize = 256;
/// Nesting beyond this is not indexed.
const MAX_DEPTH: usize = 32;

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
    let Ok(doc) = serde_json::from_str::<Value>(content) else { return Vec::new() };
    let resource = doc.get("data").unwrap_or(&doc);
    if !resource.is_object() {
        return Vec::new();
    }
    let mut rows = Rows::default();
    // A card's `id` is a field too (Boxel's CardDef has one): `eq` on it,
    // or on `friend.id` through a link, finds cards by URL.
    rows.push("id".to_string(), Kind::Text, storable(card_url), None);
    if let Some(Value::Object(attributes)) = resource.get("attributes") {
        for (name, value) in attributes {
            rows.attribute(name, value, 0);
        }
    }
    if let Some(Value::Object(relationships)) = resource.get("relationships") {
        // Parsed only here: most cards have no relationships.
        if let Ok(base) = Url::parse(card_url) {
            for (name, relationship) in relationships {
                if let Some(target) = relationship.pointer("/links/self").and_then(Value::as_str).and_then(|link| card_url_of(link, &base)) {
                    rows.push(relationship_field(name), Kind::Link, storable(&target), None);
                }
            }
        }
    }
    rows.rows
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
    fn attribute(&mut self, field: &str, value: &Value, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        match value {
            Value::Null => {}
            Value::Bool(b) => self.push(field.to_string(), Kind::Bool, b.to_string(), None),
            Value::Number(n) => self.push(field.to_string(), Kind::Number, n.to_string(), n.as_f64().filter(|f| f.is_finite())),
            Value::String(s) => self.push(field.to_string(), Kind::Text, storable(s), None),
            Value::Array(items) => items.iter().for_each(|item| self.attribute(field, item, depth + 1)),
            Value::Object(fields) => {
                for (name, value) in fields {
                    self.attribute(&format!("{field}.{name}"), value, depth + 1);
                }
            }
        }
    }

    fn push(&mut self, field: String, kind: Kind, text: String, number: Option<f64>) {
        let field = storable(&field);
        let position = self.positions.entry(field.clone()).or_insert(0);
        let folded = (kind == Kind::Text).then(|| text.to_lowercase());
        self.rows.push(FieldRow { key: text_key(&text), field, position: *position, kind, text, folded, number });
        *position += 1;
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(rows[1].folded.as_deref(), Some("mango"));
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
}
