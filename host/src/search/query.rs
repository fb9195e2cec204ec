//! The query language of `_search`, as Boxel defines it: parsed from JSON
//! (the GET form arrives as JSON too, see `brackets`) and checked whole
//! before any SQL runs. Every refusal is an [`InvalidQuery`] naming the fault.

use serde_json::{Map, Value};
use url::Url;

use super::fields::storable;

/// Why a query was refused; the client sees `Invalid query: <this>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidQuery(pub String);

fn invalid<T>(message: impl Into<String>) -> Result<T, InvalidQuery> {
    Err(InvalidQuery(message.into()))
}

/// What one query may ask for.
#[derive(Clone, Copy, Debug)]
pub struct QueryLimits {
    /// Largest `page.size`; also the size of a page when none is asked for.
    pub max_page_size: u64,
    /// Most terms (filter nodes, field conditions, sort keys) in one query.
    pub max_terms: usize,
}

/// Most dot-separated segments in a field path.
pub const MAX_PATH_SEGMENTS: usize = 6;
/// Deepest nesting of `not`/`every`/`any`.
const MAX_NESTING: usize = 32;

/// A field path, split at its dots.
pub type FieldPath = Vec<String>;

/// A value to compare with: its text, and its number when it is one (a
/// JSON number, or a string spelling one — the GET form's numbers).
#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    pub text: String,
    pub number: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Comparison {
    pub fn sql(self) -> &'static str {
        match self {
            Comparison::Gt => ">",
            Comparison::Gte => ">=",
            Comparison::Lt => "<",
            Comparison::Lte => "<=",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    /// Cards whose `adoptsFrom` is this type key (`module#name`).
    Type(String),
    /// Every field equals its value; `None` is absent (or null, or empty).
    Eq(Vec<(FieldPath, Option<Scalar>)>),
    /// Every field has a string value holding this (lowercased) text.
    Contains(Vec<(FieldPath, String)>),
    /// Every field has one value meeting all of its bounds.
    Range(Vec<(FieldPath, Vec<(Comparison, Scalar)>)>),
    /// Every field equals one of its values.
    In(Vec<(FieldPath, Vec<Option<Scalar>>)>),
    Not(Box<Filter>),
    Every(Vec<Filter>),
    Any(Vec<Filter>),
    /// Cards of this type key that also match the filter.
    On(String, Box<Filter>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum SortKey {
    Field(FieldPath),
    LastModified,
    CreatedAt,
    CardUrl,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sort {
    pub key: SortKey,
    pub descending: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub filter: Option<Filter>,
    pub sort: Vec<Sort>,
    /// 0-based page number and page size.
    pub page: (u64, u64),
}

const OPERATORS: [&str; 8] = ["type", "eq", "contains", "range", "in", "not", "every", "any"];

/// Parses and checks a query; `realm` resolves relative type modules.
pub fn parse(query: &Value, realm: &Url, limits: QueryLimits) -> Result<Query, InvalidQuery> {
    let Value::Object(query) = query else { return invalid("a query is a JSON object") };
    if let Some(key) = query.keys().find(|k| !matches!(k.as_str(), "filter" | "sort" | "page")) {
        return invalid(format!("unknown key '{key}' (a query has filter, sort and page)"));
    }
    let mut parser = Parser { realm, terms: 0, max_terms: limits.max_terms };
    let filter = query.get("filter").map(|f| parser.filter(f, 0)).transpose()?;
    let sort = match query.get("sort") {
        None => Vec::new(),
        Some(Value::Array(keys)) => keys.iter().map(|k| parser.sort(k)).collect::<Result<_, _>>()?,
        Some(_) => return invalid("sort is a list of {by, direction, on}"),
    };
    let page = match query.get("page") {
        None => (0, limits.max_page_size),
        Some(Value::Object(page)) => page_of(page, limits.max_page_size)?,
        Some(_) => return invalid("page is an object {number, size}"),
    };
    Ok(Query { filter, sort, page })
}

fn page_of(page: &Map<String, Value>, max_size: u64) -> Result<(u64, u64), InvalidQuery> {
    if let Some(key) = page.keys().find(|k| !matches!(k.as_str(), "number" | "size")) {
        return invalid(format!("unknown page key '{key}' (page has number and size)"));
    }
    let whole = |key: &str| -> Result<Option<u64>, InvalidQuery> {
        match page.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
            Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().map(Some).map_err(|_| InvalidQuery(format!("page.{key} '{s}' is too large")))
            }
            Some(other) => invalid(format!("page.{key} must be a whole number ≥ 0, not {other}")),
        }
    };
    let number = whole("number")?.unwrap_or(0);
    let size = whole("size")?.unwrap_or(max_size);
    if size == 0 || size > max_size {
        return invalid(format!("page.size must be between 1 and {max_size}, not {size}"));
    }
    if number.checked_mul(size).is_none_or(|offset| offset > i64::MAX as u64) {
        return invalid(format!("page.number {number} is too large"));
    }
    Ok((number, size))
}

struct Parser<'a> {
    realm: &'a Url,
    terms: usize,
    max_terms: usize,
}

impl Parser<'_> {
    /// Counts one term; refuses the query past the limit.
    fn term(&mut self) -> Result<(), InvalidQuery> {
        self.terms_of(1)
    }

    fn terms_of(&mut self, n: usize) -> Result<(), InvalidQuery> {
        self.terms = self.terms.saturating_add(n);
        if self.terms > self.max_terms {
            return invalid(format!("the query has more than {} terms", self.max_terms));
        }
        Ok(())
    }

    fn filter(&mut self, filter: &Value, depth: usize) -> Result<Filter, InvalidQuery> {
        if depth > MAX_NESTING {
            return invalid(format!("filters nest more than {MAX_NESTING} deep"));
        }
        self.term()?;
        let Value::Object(filter) = filter else { return invalid(format!("a filter is an object, not {filter}")) };
        if let Some(key) = filter.keys().find(|k| *k != "on" && !OPERATORS.contains(&k.as_str())) {
            return invalid(format!("unknown filter key '{key}' (expected one of {} and optionally on)", OPERATORS.join(", ")));
        }
        let operators: Vec<&str> = OPERATORS.iter().copied().filter(|op| filter.contains_key(*op)).collect();
        let operator = match operators.as_slice() {
            [one] => *one,
            [] if filter.contains_key("on") => return invalid("a filter with on needs an operator (eq, contains, range, in, not, every, any)"),
            [] => return invalid("a filter is empty"),
            many => return invalid(format!("a filter has one operator, not {}", many.join(" and "))),
        };
        let value = &filter[operator];
        let parsed = match operator {
            "type" => Filter::Type(self.type_key(value, "type")?),
            "eq" => Filter::Eq(self.fields(value, "eq", |v| eq_value(v, "eq"))?),
            "contains" => Filter::Contains(self.fields(value, "contains", contains_value)?),
            "range" => Filter::Range(self.fields(value, "range", range_bounds)?),
            "in" => Filter::In(self.fields(value, "in", in_values)?),
            "not" => Filter::Not(Box::new(self.filter(value, depth + 1)?)),
            "every" | "any" => {
                let Value::Array(items) = value else { return invalid(format!("{operator} is a list of filters")) };
                let items = items.iter().map(|f| self.filter(f, depth + 1)).collect::<Result<Vec<_>, _>>()?;
                if operator == "every" { Filter::Every(items) } else { Filter::Any(items) }
            }
            other => return invalid(format!("unknown filter key '{other}'")),
        };
        match filter.get("on") {
            Some(on) => Ok(Filter::On(self.type_key(on, "on")?, Box::new(parsed))),
            None => Ok(parsed),
        }
    }

    /// `{field: value, …}` with each value checked by `check`.
    fn fields<T>(&mut self, value: &Value, operator: &str, check: impl Fn(&Value) -> Result<T, InvalidQuery>) -> Result<Vec<(FieldPath, T)>, InvalidQuery> {
        let Value::Object(fields) = value else { return invalid(format!("{operator} is an object of field paths, not {value}")) };
        if fields.is_empty() {
            return invalid(format!("{operator} names no field"));
        }
        let mut out = Vec::with_capacity(fields.len());
        for (path, value) in fields {
            let segments = field_path(path)?;
            // What the SQL will hold: a condition per way through the path
            // (attribute or link at each dot), per value of an `in`.
            let values = match value {
                Value::Array(values) => values.len().max(1),
                _ => 1,
            };
            self.terms_of((1usize << (segments.len() - 1)).saturating_mul(values))?;
            let checked = check(value).map_err(|InvalidQuery(why)| InvalidQuery(format!("{operator} '{path}': {why}")))?;
            out.push((segments, checked));
        }
        Ok(out)
    }

    /// A `{module, name}` reference as the type key cards are indexed by.
    fn type_key(&mut self, value: &Value, what: &str) -> Result<String, InvalidQuery> {
        let reference = value.as_object().filter(|o| o.len() == 2);
        let module = reference.and_then(|o| o.get("module")).and_then(Value::as_str);
        let name = reference.and_then(|o| o.get("name")).and_then(Value::as_str);
        let (Some(module), Some(name)) = (module, name) else {
            return invalid(format!("{what} is {{\"module\": <URL>, \"name\": <export name>}}, not {value}"));
        };
        if module.is_empty() || name.is_empty() {
            return invalid(format!("{what} needs a module and a name"));
        }
        type_key(module, name, self.realm)
    }

    fn sort(&mut self, key: &Value) -> Result<Sort, InvalidQuery> {
        self.term()?;
        let Value::Object(key) = key else { return invalid(format!("a sort key is an object {{by, direction}}, not {key}")) };
        if let Some(k) = key.keys().find(|k| !matches!(k.as_str(), "by" | "direction" | "on")) {
            return invalid(format!("unknown sort key '{k}' (a sort key has by, direction and on)"));
        }
        if let Some(on) = key.get("on") {
            self.type_key(on, "sort on")?;
        }
        let by = match key.get("by") {
            Some(Value::String(by)) => by,
            _ => return invalid("a sort key needs by (a field path, lastModified, createdAt or cardURL)"),
        };
        let key_of = match by.as_str() {
            "lastModified" => SortKey::LastModified,
            "createdAt" => SortKey::CreatedAt,
            "cardURL" => SortKey::CardUrl,
            path => SortKey::Field(field_path(path)?),
        };
        let descending = match key.get("direction") {
            None => false,
            Some(Value::String(d)) if d == "asc" => false,
            Some(Value::String(d)) if d == "desc" => true,
            Some(other) => return invalid(format!("sort direction is asc or desc, not {other}")),
        };
        Ok(Sort { key: key_of, descending })
    }
}

/// The key cards of type `module`/`name` are indexed by: the module
/// resolved against the realm without its executable extension, `#`,
/// the name; a bare package specifier stays as written.
pub fn type_key(module: &str, name: &str, realm: &Url) -> Result<String, InvalidQuery> {
    let relative = module.starts_with("./") || module.starts_with("../") || module.starts_with('/');
    if !relative && Url::parse(module).is_err() {
        return Ok(format!("{module}#{name}"));
    }
    let mut url = realm.join(module).map_err(|e| InvalidQuery(format!("module '{module}' is not a URL: {e}")))?;
    let path = url.path().to_string();
    let trimmed = [".gts", ".gjs", ".ts", ".js"].iter().find_map(|ext| path.strip_suffix(ext)).unwrap_or(&path).to_string();
    url.set_path(&trimmed);
    Ok(format!("{url}#{name}"))
}

fn field_path(path: &str) -> Result<FieldPath, InvalidQuery> {
    let segments: Vec<String> = storable(path).split('.').map(str::to_string).collect();
    if segments.iter().any(String::is_empty) {
        return invalid(format!("'{path}' is not a field path (dot-separated field names)"));
    }
    if segments.len() > MAX_PATH_SEGMENTS {
        return invalid(format!("field path '{path}' has more than {MAX_PATH_SEGMENTS} segments"));
    }
    Ok(segments)
}

fn scalar(value: &Value) -> Option<Scalar> {
    match value {
        Value::String(s) => {
            let s = &storable(s);
            // Only a string that is exactly a JSON number counts as one.
            let number = (s.trim() == s).then(|| serde_json::from_str::<f64>(s).ok()).flatten().filter(|n| n.is_finite());
            Some(Scalar { text: s.clone(), number })
        }
        Value::Number(n) => Some(Scalar { text: n.to_string(), number: n.as_f64() }),
        Value::Bool(b) => Some(Scalar { text: b.to_string(), number: None }),
        _ => None,
    }
}

fn eq_value(value: &Value, operator: &str) -> Result<Option<Scalar>, InvalidQuery> {
    match value {
        Value::Null => Ok(None),
        v => scalar(v).map(Some).ok_or_else(|| InvalidQuery(format!("{operator} compares with a string, number, boolean or null, not {v}"))),
    }
}

fn contains_value(value: &Value) -> Result<String, InvalidQuery> {
    match value {
        Value::String(s) => Ok(storable(s).to_lowercase()),
        Value::Number(n) => Ok(n.to_string()),
        v => invalid(format!("contains looks for a string, not {v}")),
    }
}

fn range_bounds(value: &Value) -> Result<Vec<(Comparison, Scalar)>, InvalidQuery> {
    let Value::Object(bounds) = value else { return invalid(format!("a range is an object of gt, gte, lt, lte, not {value}")) };
    if bounds.is_empty() {
        return invalid("a range needs gt, gte, lt or lte");
    }
    bounds
        .iter()
        .map(|(op, bound)| {
            let comparison = match op.as_str() {
                "gt" => Comparison::Gt,
                "gte" => Comparison::Gte,
                "lt" => Comparison::Lt,
                "lte" => Comparison::Lte,
                other => return invalid(format!("unknown range operator '{other}' (gt, gte, lt, lte)")),
            };
            match bound {
                Value::String(_) | Value::Number(_) => Ok((comparison, scalar(bound).unwrap_or(Scalar { text: String::new(), number: None }))),
                other => invalid(format!("a {op} bound is a number or a string, not {other}")),
            }
        })
        .collect()
}

fn in_values(value: &Value) -> Result<Vec<Option<Scalar>>, InvalidQuery> {
    let Value::Array(values) = value else { return invalid(format!("in takes a list of values, not {value}")) };
    values.iter().map(|v| eq_value(v, "in")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: QueryLimits = QueryLimits { max_page_size: 100, max_terms: 10 };

    fn realm() -> Url {
        Url::parse("http://h/r/").unwrap()
    }

    fn refusal(query: Value) -> String {
        parse(&query, &realm(), LIMITS).unwrap_err().0
    }

    #[test]
    fn a_whole_query_parses() {
        let q = parse(&json!({
            "filter": {"on": {"module": "./person.gts", "name": "Person"}, "every": [
                {"eq": {"address.city": "Paris", "nick": null}},
                {"range": {"age": {"gt": "30", "lte": 40}}},
                {"not": {"contains": {"name": "MA"}}},
            ]},
            "sort": [{"by": "lastName", "direction": "desc"}, {"by": "createdAt"}],
            "page": {"number": "2", "size": 10},
        }), &realm(), QueryLimits { max_page_size: 100, max_terms: 20 }).unwrap();
        let Some(Filter::On(key, inner)) = q.filter else { panic!("expected on") };
        assert_eq!(key, "http://h/r/person#Person");
        let Filter::Every(parts) = *inner else { panic!("expected every") };
        assert_eq!(parts[0], Filter::Eq(vec![
            (vec!["address".into(), "city".into()], Some(Scalar { text: "Paris".into(), number: None })),
            (vec!["nick".into()], None),
        ]));
        assert_eq!(parts[1], Filter::Range(vec![(vec!["age".into()], vec![
            (Comparison::Gt, Scalar { text: "30".into(), number: Some(30.0) }),
            (Comparison::Lte, Scalar { text: "40".into(), number: Some(40.0) }),
        ])]));
        assert_eq!(parts[2], Filter::Not(Box::new(Filter::Contains(vec![(vec!["name".into()], "ma".into())]))));
        assert_eq!(q.sort, [Sort { key: SortKey::Field(vec!["lastName".into()]), descending: true }, Sort { key: SortKey::CreatedAt, descending: false }]);
        assert_eq!(q.page, (2, 10));
    }

    #[test]
    fn type_keys_match_how_cards_are_indexed() {
        let r = realm();
        assert_eq!(type_key("http://h/r/person", "P", &r).unwrap(), "http://h/r/person#P");
        assert_eq!(type_key("../other/pet.gts", "Pet", &r).unwrap(), "http://h/other/pet#Pet");
        assert_eq!(type_key("@cardstack/base/card-api", "CardDef", &r).unwrap(), "@cardstack/base/card-api#CardDef");
        assert_eq!(type_key("https://cardstack.com/base/card-api", "CardDef", &r).unwrap(), "https://cardstack.com/base/card-api#CardDef");
    }

    #[test]
    fn every_fault_is_named() {
        assert!(refusal(json!([])).contains("JSON object"));
        assert!(refusal(json!({"filtre": {}})).contains("unknown key 'filtre'"));
        assert!(refusal(json!({"filter": {"equals": {"a": 1}}})).contains("unknown filter key 'equals'"));
        assert!(refusal(json!({"filter": {"eq": {"a": 1}, "contains": {"a": "x"}}})).contains("one operator"));
        assert!(refusal(json!({"filter": {"eq": {"a": {"b": 1}}}})).contains("eq 'a'"));
        assert!(refusal(json!({"filter": {"range": {"a": {"gt": null}}}})).contains("bound"));
        assert!(refusal(json!({"filter": {"range": {"a": {"over": 1}}}})).contains("unknown range operator"));
        assert!(refusal(json!({"filter": {"any": {"eq": {"a": 1}}}})).contains("list of filters"));
        assert!(refusal(json!({"filter": {"type": {"module": "./p"}}})).contains("module"));
        assert!(refusal(json!({"filter": {"eq": {"a..b": 1}}})).contains("field path"));
        assert!(refusal(json!({"filter": {"eq": {"a.b.c.d.e.f.g": 1}}})).contains("segments"));
        assert!(refusal(json!({"page": {"size": 0}})).contains("between 1 and 100"));
        assert!(refusal(json!({"page": {"size": "101"}})).contains("between 1 and 100"));
        assert!(refusal(json!({"page": {"number": -1}})).contains("whole number"));
        assert!(refusal(json!({"page": {"number": 1.5}})).contains("whole number"));
        assert!(refusal(json!({"sort": [{"by": "a", "direction": "up"}]})).contains("asc or desc"));
        let many: Vec<Value> = (0..20).map(|i| json!({"eq": {"a": i}})).collect();
        assert!(refusal(json!({"filter": {"any": many}})).contains("more than 10 terms"));
        // A path of 5 segments is 16 ways through links; 11 values of an `in` are 11 terms.
        assert!(refusal(json!({"filter": {"eq": {"a.b.c.d.e": 1}}})).contains("more than 10 terms"));
        assert!(refusal(json!({"filter": {"in": {"a": (0..11).collect::<Vec<_>>()}}})).contains("more than 10 terms"));
        assert!(parse(&json!({"filter": {"in": {"a.b.c": [1, 2]}}}), &realm(), LIMITS).is_ok());
        let mut deep = json!({"eq": {"a": 1}});
        for _ in 0..40 {
            deep = json!({"not": deep});
        }
        let q = parse(&json!({"filter": deep}), &realm(), QueryLimits { max_page_size: 1, max_terms: 1000 });
        assert!(q.unwrap_err().0.contains("nest"));
    }
}
