//! A card's attributes as a PATCH reads, merges and prints them: a JSON
//! value whose objects are vectors of members in order, not hashed maps.
//!
//! A card's attributes are most of its text, and a PATCH parses all of them
//! from the stored file, changes a few and prints them again, inside the
//! realm's turn. `serde_json::Value` keeps each object in an `IndexMap`,
//! which hashes every key it inserts or looks up; a `Tree` compares keys
//! (to find a repeated one, or the one a merge looks up) and hashes them
//! only in objects past [`INDEX_THRESHOLD`]. It behaves as `Value` does where the
//! card logic can tell: a repeated key keeps its first place and its last
//! value, objects are equal whatever their members' order, and it prints
//! byte for byte as `Value` prints (the tests hold it to all three).

use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Number, Value};

#[derive(Debug, Clone)]
pub enum Tree {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Tree>),
    Object(Members),
}

/// An object's members in order, each key once.
#[derive(Debug, Clone, Default)]
pub struct Members(Vec<(String, Tree)>);

/// Objects up to this size find a key by comparing it with each; larger
/// ones build an index while they are parsed or merged into, so neither
/// grows quadratically.
const INDEX_THRESHOLD: usize = 16;

impl Members {
    pub fn iter(&self) -> impl Iterator<Item = &(String, Tree)> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.0.iter().position(|(k, _)| k == key)
    }

    pub fn get(&self, key: &str) -> Option<&Tree> {
        self.position(key).map(|i| &self.0[i].1)
    }

    /// `Map::insert`: a new key goes last, a known one keeps its place.
    fn insert(&mut self, index: &mut Index, key: String, value: Tree) {
        match index.find(self, &key) {
            Some(i) => self.0[i].1 = value,
            None => {
                index.add(self, &key);
                self.0.push((key, value));
            }
        }
    }
}

impl IntoIterator for Members {
    type Item = (String, Tree);
    type IntoIter = std::vec::IntoIter<(String, Tree)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Where the keys of a large object are (built once it outgrows [`INDEX_THRESHOLD`]).
struct Index(Option<HashMap<String, usize>>);

impl Index {
    /// The index of `members` as they are: none while they are few.
    fn of(members: &Members) -> Index {
        if members.len() < INDEX_THRESHOLD {
            return Index(None);
        }
        Index(Some(members.0.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect()))
    }

    fn find(&self, members: &Members, key: &str) -> Option<usize> {
        match &self.0 {
            Some(map) => map.get(key).copied(),
            None => members.position(key),
        }
    }

    /// Records `key`, about to be pushed as the last member of `members`.
    fn add(&mut self, members: &Members, key: &str) {
        if self.0.is_none() {
            *self = Index::of(members);
        }
        if let Some(map) = &mut self.0 {
            map.insert(key.to_string(), members.len());
        }
    }
}

impl Tree {
    pub fn empty_object() -> Tree {
        Tree::Object(Members::default())
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Tree::Object(_))
    }

    /// Merges `patch` into `self` as `merge::deep_merge` does (objects
    /// member by member, anything else replaces); answers whether `self`
    /// changed, as comparing before and after would.
    pub fn merge(&mut self, patch: &Value) -> bool {
        match (self, patch) {
            (Tree::Object(members), Value::Object(patch)) => {
                let mut index = Index::of(members);
                let mut changed = false;
                for (key, value) in patch {
                    match index.find(members, key) {
                        Some(i) => changed |= members.0[i].1.merge(value),
                        None => {
                            index.add(members, key);
                            members.0.push((key.clone(), Tree::from(value)));
                            changed = true;
                        }
                    }
                }
                changed
            }
            (this, patch) => {
                let changed = !this.equals(patch);
                *this = Tree::from(patch);
                changed
            }
        }
    }

    /// Whether `self` and `value` are the same JSON (`Value`'s equality:
    /// objects compare whatever their members' order).
    pub fn equals(&self, value: &Value) -> bool {
        match (self, value) {
            (Tree::Null, Value::Null) => true,
            (Tree::Bool(a), Value::Bool(b)) => a == b,
            (Tree::Number(a), Value::Number(b)) => a == b,
            (Tree::String(a), Value::String(b)) => a == b,
            (Tree::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.equals(b)),
            (Tree::Object(a), Value::Object(b)) => {
                a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| v.equals(w)))
            }
            _ => false,
        }
    }

    /// The same JSON as a `serde_json::Value`.
    pub fn into_value(self) -> Value {
        match self {
            Tree::Null => Value::Null,
            Tree::Bool(b) => Value::Bool(b),
            Tree::Number(n) => Value::Number(n),
            Tree::String(s) => Value::String(s),
            Tree::Array(items) => Value::Array(items.into_iter().map(Tree::into_value).collect()),
            Tree::Object(members) => {
                let mut map = Map::new();
                for (k, v) in members.0 {
                    map.insert(k, v.into_value());
                }
                Value::Object(map)
            }
        }
    }
}

impl From<&Value> for Tree {
    fn from(value: &Value) -> Tree {
        match value {
            Value::Null => Tree::Null,
            Value::Bool(b) => Tree::Bool(*b),
            Value::Number(n) => Tree::Number(n.clone()),
            Value::String(s) => Tree::String(s.clone()),
            Value::Array(items) => Tree::Array(items.iter().map(Tree::from).collect()),
            // A map's keys are distinct already.
            Value::Object(map) => Tree::Object(Members(map.iter().map(|(k, v)| (k.clone(), Tree::from(v))).collect())),
        }
    }
}

impl From<Value> for Tree {
    fn from(value: Value) -> Tree {
        match value {
            Value::Null => Tree::Null,
            Value::Bool(b) => Tree::Bool(b),
            Value::Number(n) => Tree::Number(n),
            Value::String(s) => Tree::String(s),
            Value::Array(items) => Tree::Array(items.into_iter().map(Tree::from).collect()),
            Value::Object(map) => Tree::Object(Members(map.into_iter().map(|(k, v)| (k, Tree::from(v))).collect())),
        }
    }
}

/// Equality as `Value`'s: objects compare whatever their members' order.
impl PartialEq for Tree {
    fn eq(&self, other: &Tree) -> bool {
        match (self, other) {
            (Tree::Null, Tree::Null) => true,
            (Tree::Bool(a), Tree::Bool(b)) => a == b,
            (Tree::Number(a), Tree::Number(b)) => a == b,
            (Tree::String(a), Tree::String(b)) => a == b,
            (Tree::Array(a), Tree::Array(b)) => a == b,
            (Tree::Object(a), Tree::Object(b)) => {
                a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| v == w))
            }
            _ => false,
        }
    }
}

/// Printed through the same serializer calls as `Value`'s, so any
/// formatter prints it as it prints the `Value`.
impl Serialize for Tree {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Tree::Null => serializer.serialize_unit(),
            Tree::Bool(b) => serializer.serialize_bool(*b),
            Tree::Number(n) => n.serialize(serializer),
            Tree::String(s) => serializer.serialize_str(s),
            Tree::Array(items) => serializer.collect_seq(items),
            Tree::Object(members) => {
                let mut map = serializer.serialize_map(Some(members.len()))?;
                for (k, v) in members.iter() {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Tree, D::Error> {
        deserializer.deserialize_any(TreeVisitor)
    }
}

/// What `Value`'s own visitor does, into a [`Tree`].
struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Tree;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_unit<E>(self) -> Result<Tree, E> {
        Ok(Tree::Null)
    }

    fn visit_none<E>(self) -> Result<Tree, E> {
        Ok(Tree::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Tree, D::Error> {
        Deserialize::deserialize(deserializer)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Tree, E> {
        Ok(Tree::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Tree, E> {
        Ok(Tree::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Tree, E> {
        Ok(Tree::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Tree, E> {
        Ok(Number::from_f64(n).map_or(Tree::Null, Tree::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Tree, E> {
        Ok(Tree::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Tree, E> {
        Ok(Tree::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Tree::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
        let mut members = Members::default();
        let mut index = Index(None);
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value()?;
            members.insert(&mut index, key, value);
        }
        Ok(Tree::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn parse(text: &str) -> Tree {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn a_repeated_key_keeps_its_first_place_and_its_last_value() {
        let text = r#"{"a": 1, "b": 2, "a": 3}"#;
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&parse(text)).unwrap(), serde_json::to_string(&value).unwrap());
        // Past the size where an index takes over from scanning.
        let many: Vec<String> = (0..40).map(|i| format!("\"k{}\": {i}", i % 25)).collect();
        let text = format!("{{{}}}", many.join(","));
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&parse(&text)).unwrap(), serde_json::to_string(&value).unwrap());
    }

    #[test]
    fn objects_are_equal_whatever_their_order() {
        assert_eq!(parse(r#"{"a": 1, "b": [2]}"#), parse(r#"{"b": [2], "a": 1}"#));
        assert!(parse(r#"{"a": 1, "b": [2]}"#).equals(&json!({"b": [2], "a": 1})));
        assert_ne!(parse(r#"{"a": 1}"#), parse(r#"{"a": 1.0}"#));
        assert!(!parse(r#"[1, 2]"#).equals(&json!([2, 1])));
    }

    #[test]
    fn merging_into_a_large_object_finds_its_keys() {
        let mut tree = Tree::from(json!((0..40).map(|i| (format!("k{i}"), json!({"n": i}))).collect::<Map<String, Value>>()));
        assert!(!tree.merge(&json!({"k39": {"n": 39}, "k0": {}})));
        assert!(tree.merge(&json!({"k20": {"m": 1}, "new": 1})));
        let value = tree.into_value();
        assert_eq!(value["k20"], json!({"n": 20, "m": 1}));
        assert_eq!(value.as_object().unwrap().keys().next_back().unwrap(), "new");
        assert_eq!(value.as_object().unwrap().len(), 41);
    }

    /// JSON text with repeated keys among the members.
    fn json_text() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
            "[ a\"\\\\\n\u{1}é]{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(|items| format!("[{}]", items.join(", "))),
                prop::collection::vec(("[a-e]{1,2}", inner), 0..40).prop_map(|members| {
                    let members: Vec<String> = members.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
                    format!("{{{}}}", members.join(", "))
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn a_tree_is_the_value_serde_json_parses(text in json_text()) {
            let value: Value = serde_json::from_str(&text).unwrap();
            let tree = parse(&text);
            prop_assert_eq!(serde_json::to_string(&tree).unwrap(), serde_json::to_string(&value).unwrap());
            prop_assert_eq!(serde_json::to_string_pretty(&tree).unwrap(), serde_json::to_string_pretty(&value).unwrap());
            prop_assert!(tree.equals(&value));
            prop_assert_eq!(&tree, &Tree::from(&value));
            prop_assert_eq!(tree.into_value(), value);
        }

        #[test]
        fn merging_a_tree_is_merging_the_value(a in json_text(), b in json_text()) {
            let (a, b): (Value, Value) = (serde_json::from_str(&a).unwrap(), serde_json::from_str(&b).unwrap());
            let mut tree = Tree::from(&a);
            let changed = tree.merge(&b);
            let merged = crate::merge::deep_merge(&a, &b);
            prop_assert_eq!(changed, merged != a);
            prop_assert_eq!(serde_json::to_string(&tree).unwrap(), serde_json::to_string(&merged).unwrap());
        }
    }
}
