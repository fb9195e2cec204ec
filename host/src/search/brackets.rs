//! The GET form of a query: a URL query string in the bracket syntax
//! Boxel's clients write (the `qs` package's), e.g.
//! `filter[eq][firstName]=Mango&sort[0][by]=lastName&page[size]=10`,
//! turned into the JSON the query parser reads. Every value is a string;
//! keys `0`, `1`, … make a list.

use serde_json::{Map, Value};

use super::query::InvalidQuery;

/// Most `key=value` pairs in one query string.
const MAX_PAIRS: usize = 10_000;
/// Most bracketed segments in one key.
const MAX_SEGMENTS: usize = 40;

/// The JSON object a query string spells.
pub fn parse(query_string: &str) -> Result<Value, InvalidQuery> {
    let mut root = Map::new();
    for (n, (key, value)) in url::form_urlencoded::parse(query_string.as_bytes()).enumerate() {
        if n >= MAX_PAIRS {
            return Err(InvalidQuery(format!("the query string has more than {MAX_PAIRS} parameters")));
        }
        let path = segments(&key)?;
        insert(&mut root, &path, value.into_owned(), &key)?;
    }
    Ok(lists(Value::Object(root)))
}

/// `a[b][c]` → `["a", "b", "c"]`.
fn segments(key: &str) -> Result<Vec<String>, InvalidQuery> {
    let malformed = |why: &str| InvalidQuery(format!("malformed parameter '{key}': {why}"));
    let (head, mut rest) = key.split_at(key.find('[').unwrap_or(key.len()));
    if head.is_empty() {
        return Err(malformed("it has no name before its brackets"));
    }
    if head.contains(']') {
        return Err(malformed("a ']' without its '['"));
    }
    let mut out = vec![head.to_string()];
    while !rest.is_empty() {
        let Some(inner) = rest.strip_prefix('[') else { return Err(malformed("text after a ']' that does not open a new '['")) };
        let Some(close) = inner.find(']') else { return Err(malformed("a '[' is never closed")) };
        let segment = &inner[..close];
        if segment.is_empty() {
            return Err(malformed("empty brackets '[]' (give the index or name)"));
        }
        if segment.contains('[') {
            return Err(malformed("a '[' inside brackets"));
        }
        out.push(segment.to_string());
        if out.len() > MAX_SEGMENTS {
            return Err(malformed("too many brackets"));
        }
        rest = &inner[close + 1..];
    }
    Ok(out)
}

fn insert(node: &mut Map<String, Value>, path: &[String], value: String, key: &str) -> Result<(), InvalidQuery> {
    let conflict = || InvalidQuery(format!("parameter '{key}' is given twice or both as a value and as an object"));
    let (first, rest) = path.split_first().ok_or_else(conflict)?;
    if rest.is_empty() {
        if node.contains_key(first) {
            return Err(conflict());
        }
        node.insert(first.clone(), Value::String(value));
        return Ok(());
    }
    let child = node.entry(first.clone()).or_insert_with(|| Value::Object(Map::new()));
    match child {
        Value::Object(child) => insert(child, rest, value, key),
        _ => Err(conflict()),
    }
}

/// Objects keyed exactly `0`…`n-1` become lists, all the way down.
fn lists(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut indices: Vec<usize> = map.keys().filter_map(|k| k.parse().ok().filter(|i: &usize| i.to_string() == *k)).collect();
            indices.sort_unstable();
            let is_list = !map.is_empty() && indices.len() == map.len() && indices.iter().enumerate().all(|(n, i)| n == *i);
            if is_list {
                let mut items: Vec<(usize, Value)> = map.into_iter().map(|(k, v)| (k.parse().unwrap_or(0), lists(v))).collect();
                items.sort_by_key(|(i, _)| *i);
                Value::Array(items.into_iter().map(|(_, v)| v).collect())
            } else {
                Value::Object(map.into_iter().map(|(k, v)| (k, lists(v))).collect())
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::parse;
    use serde_json::json;

    #[test]
    fn brackets_become_json() {
        let q = parse("filter[eq][firstName]=Mango&filter%5Bon%5D%5Bmodule%5D=.%2Fperson&filter[on][name]=Person&sort[1][by]=b&sort[0][by]=a&sort[0][direction]=desc&page[size]=10&filter[eq][address.city]=San+Jos%C3%A9").unwrap();
        assert_eq!(q, json!({
            "filter": {"eq": {"firstName": "Mango", "address.city": "San José"}, "on": {"module": "./person", "name": "Person"}},
            "sort": [{"by": "a", "direction": "desc"}, {"by": "b"}],
            "page": {"size": "10"},
        }));
        assert_eq!(parse("").unwrap(), json!({}));
        // Not 0..n-1: stays an object (and the query parser refuses it).
        assert_eq!(parse("f[any][1][eq][a]=x").unwrap(), json!({"f": {"any": {"1": {"eq": {"a": "x"}}}}}));
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in ["filter[eq=x", "filter[eq][]=x", "[eq]=x", "filter]=x", "filter[a]b=x", "a=1&a=2", "a=1&a[b]=2", "a[b]=1&a=2", "a[[b]]=1"] {
            let e = parse(bad).unwrap_err();
            assert!(e.0.contains("parameter"), "{bad}: {e}");
        }
    }
}
