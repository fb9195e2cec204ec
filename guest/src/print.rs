//! Printing cards: a written card once for its file, its index row and its
//! answer, and the card document (spec §2 "Card document") of a stored one.
//!
//! A card's attributes are most of its text, and all three show them: the
//! file and the answer indented, the index row compact. So they are printed
//! once (indented, as at the top level) and spliced into each: indented
//! further for their place in the file and the answer, or with the
//! whitespace between tokens dropped for the index row. The bytes are the
//! ones `serde_json` prints for the whole values (the tests hold them to it).

use std::io;

use serde::Serialize;
use serde_json::ser::{CharEscape, CompactFormatter, Formatter};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::merge::{Resource, SERVER_META_KEYS};
use crate::paths;
use crate::serialize::{parse_stored_resource, StoredCard};
use crate::store::CardIndex;
use crate::tree::Tree;

/// A card serialised for its file and printed: the file's text, its index
/// row, and the parts of it its answer reuses.
pub struct PrintedCard {
    pub content: String,
    pub index: CardIndex,
    pub answer: Answer,
}

/// What the card document answered for a card just written takes from
/// its file's printing: attributes and relationships printed as members of
/// `data` (in the file and the answer alike), and the stored meta.
pub struct Answer {
    attributes: String,
    relationships: Option<String>,
    meta: Map<String, Value>,
}

impl PrintedCard {
    /// `card` printed as the file of the card `id` (its index row's id and
    /// the base its type is resolved against).
    pub fn new(card: StoredCard, id: &str) -> Result<PrintedCard> {
        let (attributes, search_doc) = in_data_and_compact(&card.attributes)?;
        let relationships = card.relationships.as_ref().map(in_data).transpose()?;
        let meta = in_data(&card.meta)?;
        let mut members = vec![("type", "\"card\""), ("attributes", attributes.as_str())];
        if let Some(rels) = &relationships {
            members.push(("relationships", rels));
        }
        members.push(("meta", &meta));
        let content = data_document(&members);
        let index = CardIndex {
            id: id.to_string(),
            card_type: card.card_type,
            search_doc,
        };
        Ok(PrintedCard { content, index, answer: Answer { attributes, relationships, meta: card.meta } })
    }
}

impl Answer {
    /// The answer for a stored card resource (the `data` of its file).
    fn of_stored(data: Resource) -> Result<Answer> {
        let Resource { attributes, rest: mut data, .. } = data;
        let attributes = in_data(&attributes.unwrap_or_else(Tree::empty_object))?;
        let relationships = data.remove("relationships").as_ref().map(in_data).transpose()?;
        let meta = match data.remove("meta") {
            Some(Value::Object(meta)) => meta,
            _ => Map::new(),
        };
        Ok(Answer { attributes, relationships, meta })
    }

    /// The card document, indented: `{"data":{"type":"card","id",
    /// "attributes","relationships"?,"meta":{"adoptsFrom", …other stored
    /// meta…,"lastModified","resourceCreatedAt","realmURL"},"links":{"self":
    /// id}}}`, attributes, relationships and adoptsFrom as stored.
    pub fn body(self, id: &str, realm: &str, created: i64, last_modified: i64) -> Result<String> {
        let id_text = compact(&id)?;
        let meta = in_data(&document_meta(self.meta, realm, created, last_modified))?;
        let links = in_data(&json!({ "self": id }))?;
        let mut members = vec![("type", "\"card\""), ("id", id_text.as_str()), ("attributes", self.attributes.as_str())];
        if let Some(rels) = &self.relationships {
            members.push(("relationships", rels));
        }
        members.push(("meta", &meta));
        members.push(("links", &links));
        Ok(data_document(&members))
    }
}

/// The card document answered by GET (and by a PATCH that changes nothing)
/// for a stored file's text ([`Answer::body`]); `UnsupportedMediaType` when
/// the text is not a card document.
pub fn card_document_text(stored: &str, id: &str, realm: &str, created: i64, last_modified: i64) -> Result<String> {
    let data = parse_stored_resource(stored)
        .ok_or_else(|| Error::UnsupportedMediaType(format!("{id} is not a card document")))?;
    Answer::of_stored(data)?.body(id, realm, created, last_modified)
}

/// The card document's `meta` of a stored card's: `adoptsFrom` first, the
/// other stored keys but the server's, then the server's.
fn document_meta(mut stored: Map<String, Value>, realm: &str, created: i64, last_modified: i64) -> Map<String, Value> {
    let mut meta = Map::new();
    // `remove` would move the last key into its place.
    if let Some(adopts) = stored.shift_remove("adoptsFrom") {
        meta.insert("adoptsFrom".into(), adopts);
    }
    for (k, v) in stored {
        if !SERVER_META_KEYS.contains(&k.as_str()) {
            meta.insert(k, v);
        }
    }
    meta.insert("lastModified".into(), json!(last_modified));
    meta.insert("resourceCreatedAt".into(), json!(created));
    meta.insert("realmURL".into(), json!(paths::ensure_trailing_slash(realm)));
    meta
}

fn compact<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Storage(e.to_string()))
}

/// `{"data": {…}}` indented, of members whose values are printed as
/// members of `data` ([`in_data`]). The keys are plain names (nothing to
/// escape).
fn data_document(members: &[(&str, &str)]) -> String {
    let len: usize = members.iter().map(|(key, value)| key.len() + value.len() + 10).sum();
    let mut out = String::with_capacity(len + 20);
    out.push_str("{\n  \"data\": {");
    for (i, (key, value)) in members.iter().enumerate() {
        out.push_str(if i == 0 { "\n    \"" } else { ",\n    \"" });
        out.push_str(key);
        out.push_str("\": ");
        out.push_str(value);
    }
    out.push_str("\n  }\n}");
    out
}

/// `value` printed indented as the value of a member of `data`: as
/// `serde_json::to_string_pretty` prints it, with every line after the
/// first two levels deeper.
fn in_data<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    print(value, Indented { level: 2, has_value: false, compact: None })
}

/// [`in_data`], and `value` compact as `serde_json::to_string` prints it
/// (the index row's search doc), from one walk over `value`.
fn in_data_and_compact<T: Serialize + ?Sized>(value: &T) -> Result<(String, String)> {
    let mut compact = Vec::with_capacity(256);
    let text = print(value, Indented { level: 2, has_value: false, compact: Some(&mut compact) })?;
    Ok((text, String::from_utf8(compact).map_err(|e| Error::Storage(e.to_string()))?))
}

fn print<T: Serialize + ?Sized>(value: &T, formatter: Indented) -> Result<String> {
    let mut out = Vec::with_capacity(256);
    let mut printer = serde_json::Serializer::with_formatter(&mut out, formatter);
    value.serialize(&mut printer).map_err(|e| Error::Storage(e.to_string()))?;
    String::from_utf8(out).map_err(|e| Error::Storage(e.to_string()))
}

/// `serde_json`'s `PrettyFormatter` (two spaces a level) starting at
/// `level` instead of 0, so a value is printed once, in its place; with
/// `compact`, it also prints the value there as `CompactFormatter` would.
struct Indented<'a> {
    level: usize,
    has_value: bool,
    compact: Option<&'a mut Vec<u8>>,
}

/// A value's token, printed the same by both formatters: written to the
/// output and to the compact copy. (A byte array is left to the trait's
/// default, which prints it as an array through the methods below.)
macro_rules! token {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $name<W: ?Sized + io::Write>(&mut self, out: &mut W $(, $arg: $ty)*) -> io::Result<()> {
            if let Some(compact) = self.compact.as_deref_mut() {
                CompactFormatter.$name(compact $(, $arg)*)?;
            }
            CompactFormatter.$name(out $(, $arg)*)
        }
    )*};
}

impl Indented<'_> {
    /// Whitespace and punctuation: `pretty` to the output, `compact` to the copy.
    fn write<W: ?Sized + io::Write>(&mut self, out: &mut W, pretty: &[u8], compact: &[u8]) -> io::Result<()> {
        if let Some(copy) = self.compact.as_deref_mut() {
            copy.extend_from_slice(compact);
        }
        out.write_all(pretty)
    }

    /// A new line at the current level, after a comma unless `first`.
    fn newline<W: ?Sized + io::Write>(&mut self, out: &mut W, first: bool) -> io::Result<()> {
        const SPACES: &[u8; 64] = &[b' '; 64];
        if first {
            out.write_all(b"\n")?;
        } else {
            self.write(out, b",\n", b",")?;
        }
        let mut width = self.level * 2;
        while width > 0 {
            let n = width.min(SPACES.len());
            out.write_all(&SPACES[..n])?;
            width -= n;
        }
        Ok(())
    }

    fn open<W: ?Sized + io::Write>(&mut self, out: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.level += 1;
        self.has_value = false;
        self.write(out, bracket, bracket)
    }

    fn close<W: ?Sized + io::Write>(&mut self, out: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.level -= 1;
        if self.has_value {
            self.newline(out, true)?;
        }
        self.write(out, bracket, bracket)
    }
}

impl Formatter for Indented<'_> {
    token! {
        write_null();
        write_bool(value: bool);
        write_i8(value: i8);
        write_i16(value: i16);
        write_i32(value: i32);
        write_i64(value: i64);
        write_i128(value: i128);
        write_u8(value: u8);
        write_u16(value: u16);
        write_u32(value: u32);
        write_u64(value: u64);
        write_u128(value: u128);
        write_f32(value: f32);
        write_f64(value: f64);
        write_number_str(value: &str);
        begin_string();
        end_string();
        write_string_fragment(fragment: &str);
        write_raw_fragment(fragment: &str);
    }

    fn write_char_escape<W: ?Sized + io::Write>(&mut self, out: &mut W, escape: CharEscape) -> io::Result<()> {
        let mut escaped = [0u8; 6];
        let mut rest = &mut escaped[..];
        CompactFormatter.write_char_escape(&mut rest, escape)?;
        let len = 6 - rest.len();
        let escaped = &escaped[..len];
        self.write(out, escaped, escaped)
    }

    fn begin_array<W: ?Sized + io::Write>(&mut self, out: &mut W) -> io::Result<()> {
        self.open(out, b"[")
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, out: &mut W) -> io::Result<()> {
        self.close(out, b"]")
    }

    fn begin_array_value<W: ?Sized + io::Write>(&mut self, out: &mut W, first: bool) -> io::Result<()> {
        self.newline(out, first)
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, _out: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, out: &mut W) -> io::Result<()> {
        self.open(out, b"{")
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, out: &mut W) -> io::Result<()> {
        self.close(out, b"}")
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, out: &mut W, first: bool) -> io::Result<()> {
        self.newline(out, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, out: &mut W) -> io::Result<()> {
        self.write(out, b": ", b":")
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, _out: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serialize::{card_index, serialize_card_parts};
    use proptest::prelude::*;

    const REALM: &str = "http://localhost:4201/test/";
    const ID: &str = "http://localhost:4201/test/Person/1";

    /// Any JSON value, strings with quotes, backslashes, spaces, newlines
    /// and non-ASCII text among them.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            "[ a\"\\\\:\n\t\u{1}\u{1f}{}é,\u{1F600}]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec(("[ a\":\\\\\n]{0,6}", inner), 0..5)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    fn card(attributes: Value, relationships: Option<Value>) -> Value {
        let mut card = json!({
            "type": "card",
            "attributes": attributes,
            "meta": {"adoptsFrom": {"module": "../person", "name": "Person"}, "extra": {"k": [1, "two"]}}
        });
        if let Some(rels) = relationships {
            card["relationships"] = rels;
        }
        card
    }

    #[test]
    fn a_card_prints_as_serde_json_prints_it() {
        let resource = card(
            json!({"name": "Mango", "empty": {}, "list": [], "nested": {"a": [1, {"b": "x: \"y\"\n"}]}}),
            Some(json!({"friend": {"links": {"self": "../Person/2"}}})),
        );
        let file_url = format!("{ID}.json");
        let card = serialize_card_parts(&resource, &file_url, REALM).unwrap();
        let value = card.clone().into_value();
        let printed = PrintedCard::new(card, ID).unwrap();
        assert_eq!(printed.content, serde_json::to_string_pretty(&value).unwrap());
        assert_eq!(printed.index, card_index(&value, ID, ID));
        let stored = card_document_text(&printed.content, ID, REALM, 7, 9).unwrap();
        let body = printed.answer.body(ID, REALM, 7, 9).unwrap();
        assert_eq!(body, stored, "a card just written is answered as it is read back");
        let document: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body, serde_json::to_string_pretty(&document).unwrap());
        assert_eq!(document["data"]["attributes"], value["data"]["attributes"]);
        assert_eq!(document["data"]["relationships"], value["data"]["relationships"]);
    }

    #[test]
    fn deep_values_print_as_serde_json_prints_them() {
        let mut deep = json!([1, {}, []]);
        for i in 0..40 {
            deep = if i % 2 == 0 { json!({"k": deep, "n": i}) } else { json!([deep, i]) };
        }
        let resource = card(json!({"deep": deep}), None);
        let file_url = format!("{ID}.json");
        let card = serialize_card_parts(&resource, &file_url, REALM).unwrap();
        let value = card.clone().into_value();
        let printed = PrintedCard::new(card, ID).unwrap();
        assert_eq!(printed.content, serde_json::to_string_pretty(&value).unwrap());
        assert_eq!(printed.index.search_doc, value["data"]["attributes"].to_string());
    }

    #[test]
    fn the_document_keeps_the_stored_meta_in_its_order() {
        let stored = r#"{"data": {"type": "card", "attributes": {},
            "meta": {"lastModified": 5, "b": 1, "adoptsFrom": {"module": "../person", "name": "Person"}, "c": 2, "a": 3}}}"#;
        let document: Value = serde_json::from_str(&card_document_text(stored, ID, REALM, 7, 9).unwrap()).unwrap();
        let keys: Vec<&str> = document["data"]["meta"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["adoptsFrom", "b", "c", "a", "lastModified", "resourceCreatedAt", "realmURL"]);
        assert_eq!(document["data"]["meta"]["lastModified"], 9, "the server's, not the stored one");
    }

    proptest! {
        #[test]
        fn a_value_prints_indented_and_compact_as_serde_json_prints_it(value in json_value()) {
            let (text, compact) = in_data_and_compact(&value).unwrap();
            let top_level = serde_json::to_string_pretty(&value).unwrap().replace('\n', "\n    ");
            prop_assert_eq!(text, top_level);
            prop_assert_eq!(compact, serde_json::to_string(&value).unwrap());
        }

        #[test]
        fn any_card_prints_as_serde_json_prints_it(
            attributes in prop::collection::vec(("[a-z ]{1,5}", json_value()), 0..6),
            relationships in prop::option::of(Just(json!({"a": {"links": {"self": "./x"}}, "b": [{"links": {"self": null}}]}))),
        ) {
            let resource = card(Value::Object(attributes.into_iter().collect()), relationships);
            let file_url = format!("{ID}.json");
            let card = serialize_card_parts(&resource, &file_url, REALM).unwrap();
            let value = card.clone().into_value();
            let printed = PrintedCard::new(card, ID).unwrap();
            prop_assert_eq!(&printed.content, &serde_json::to_string_pretty(&value).unwrap());
            prop_assert_eq!(&printed.index, &card_index(&value, ID, ID));
            let stored = card_document_text(&printed.content, ID, REALM, 1, 2).unwrap();
            let body = printed.answer.body(ID, REALM, 1, 2).unwrap();
            prop_assert_eq!(&body, &stored);
            let document: Value = serde_json::from_str(&body).unwrap();
            prop_assert_eq!(&body, &serde_json::to_string_pretty(&document).unwrap());
            prop_assert_eq!(&document["data"]["attributes"], &value["data"]["attributes"]);
        }
    }
}
