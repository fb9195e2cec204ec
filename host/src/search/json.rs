//! A JSON tree for one walk: strings borrowed from the text where they
//! need no unescaping, objects kept as ordered pairs. Deriving a card's
//! search rows reads each value once, so it skips what `serde_json::Value`
//! pays for lookups (hashing every key into an ordered map, owning every
//! string). A key given twice keeps its first place and its last value,
//! as `serde_json::Value` (with `preserve_order`) does.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

pub enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

/// Objects up to this many keys find a repeated key by a scan; larger
/// ones by a map, so a huge object cannot make parsing quadratic.
const SCANNED_KEYS: usize = 16;

impl<'a> Json<'a> {
    /// Parses `text`; None when it is not one JSON value.
    pub fn parse(text: &'a str) -> Option<Json<'a>> {
        serde_json::from_str(text).ok()
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(pairs) => pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Equal values give equal search rows: numbers are equal only as the
/// same kind and, for floats, the same bits (`-0.0` and `0.0` compare
/// equal as `f64`s, but their texts differ), strings and members as
/// written, members in order.
impl PartialEq for Json<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Json::Null, Json::Null) => true,
            (Json::Bool(a), Json::Bool(b)) => a == b,
            (Json::Number(a), Json::Number(b)) => match (a.is_f64(), b.is_f64()) {
                (true, true) => a.as_f64().map(f64::to_bits) == b.as_f64().map(f64::to_bits),
                (false, false) => a == b,
                _ => false,
            },
            (Json::String(a), Json::String(b)) => a == b,
            (Json::Array(a), Json::Array(b)) => a == b,
            (Json::Object(a), Json::Object(b)) => a == b,
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json<'de>, E> {
        Ok(Number::from_f64(v).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v)))
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json<'de>, D::Error> {
        Json::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut pairs: Vec<(Cow<'de, str>, Json<'de>)> = Vec::new();
        let mut places: HashMap<String, usize> = HashMap::new();
        while let Some(key) = map.next_key::<Json<'de>>()? {
            let Json::String(key) = key else { return Err(serde::de::Error::custom("an object key that is not a string")) };
            let value = map.next_value()?;
            let place = if pairs.len() < SCANNED_KEYS {
                pairs.iter().position(|(k, _)| *k == key)
            } else {
                if places.is_empty() {
                    places.extend(pairs.iter().enumerate().map(|(i, (k, _))| (k.to_string(), i)));
                }
                places.get(key.as_ref()).copied()
            };
            match place {
                Some(i) => pairs[i].1 = value,
                None => {
                    if !places.is_empty() {
                        places.insert(key.to_string(), pairs.len());
                    }
                    pairs.push((key, value));
                }
            }
        }
        Ok(Json::Object(pairs))
    }
}
