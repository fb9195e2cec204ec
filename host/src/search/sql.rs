//! A checked query as one SQL statement over `card_index` and
//! `card_fields`, the same on SQLite and Postgres but for two spellings
//! (substring test, byte-order collation), so both answer alike.
//!
//! Each field condition is a set of card paths, `c.path IN (…)`, computed
//! from the equality or number index: the values of the field itself,
//! plus, for every split of a dotted path, the cards whose link at the
//! prefix points at a card matching the rest.

use super::fields::{text_key, Kind};
use super::query::{FieldPath, Filter, Query, Scalar, SortKey};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Text comparisons by code point on both backends.
    fn bytewise(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " COLLATE \"C\"",
        }
    }

    /// `haystack` holds the text bound as `needle` ([`Dialect::needle`]):
    /// on Postgres a LIKE, which a trigram index can serve.
    fn substring(self, haystack: &str, needle: &str) -> String {
        match self {
            Dialect::Sqlite => format!("instr({haystack}, {needle}) > 0"),
            Dialect::Postgres => format!("{haystack} LIKE {needle} ESCAPE '\\'"),
        }
    }

    /// What `substring` binds for the text to find.
    fn needle(self, text: &str) -> String {
        match self {
            Dialect::Sqlite => text.to_string(),
            Dialect::Postgres => {
                let escaped = text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
                format!("%{escaped}%")
            }
        }
    }
}

/// A bound parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum Bind {
    Text(String),
    Real(f64),
    Int(i64),
}

/// A statement and its parameters (`$1` is the realm).
pub struct Statement {
    pub sql: String,
    pub binds: Vec<Bind>,
}

/// A condition on one stored value (alias `f`).
enum Condition<'a> {
    Equals(&'a Scalar),
    OneOf(Vec<&'a Scalar>),
    Contains(&'a str),
    Range(&'a [(super::query::Comparison, Scalar)]),
    Present,
}

struct Builder {
    dialect: Dialect,
    binds: Vec<Bind>,
    aliases: usize,
}

impl Builder {
    fn bind(&mut self, value: Bind) -> String {
        self.binds.push(value);
        format!("${}", self.binds.len())
    }

    fn alias(&mut self, prefix: &str) -> String {
        self.aliases += 1;
        format!("{prefix}{}", self.aliases)
    }

    fn filter(&mut self, filter: &Filter, card: &str) -> String {
        match filter {
            Filter::Type(key) => format!("{card}.card_type = {}", self.bind(Bind::Text(key.clone()))),
            Filter::On(key, inner) => {
                let key = self.bind(Bind::Text(key.clone()));
                format!("({card}.card_type = {key} AND {})", self.filter(inner, card))
            }
            Filter::Not(inner) => format!("NOT ({})", self.filter(inner, card)),
            Filter::Every(items) => self.join(items, " AND ", "1 = 1", card),
            Filter::Any(items) => self.join(items, " OR ", "1 = 0", card),
            Filter::Eq(fields) => {
                let parts: Vec<String> = fields
                    .iter()
                    .map(|(path, value)| match value {
                        Some(value) => self.matching(card, path, &Condition::Equals(value)),
                        None => format!("NOT {}", self.matching(card, path, &Condition::Present)),
                    })
                    .collect();
                all(parts)
            }
            Filter::Contains(fields) => {
                let parts = fields.iter().map(|(path, text)| self.matching(card, path, &Condition::Contains(text))).collect();
                all(parts)
            }
            Filter::Range(fields) => {
                let parts = fields.iter().map(|(path, bounds)| self.matching(card, path, &Condition::Range(bounds))).collect();
                all(parts)
            }
            Filter::In(fields) => {
                let parts = fields
                    .iter()
                    .map(|(path, values)| {
                        let present: Vec<&Scalar> = values.iter().flatten().collect();
                        let mut options = Vec::new();
                        if !present.is_empty() {
                            options.push(self.matching(card, path, &Condition::OneOf(present)));
                        }
                        if values.iter().any(Option::is_none) {
                            options.push(format!("NOT {}", self.matching(card, path, &Condition::Present)));
                        }
                        if options.is_empty() { "1 = 0".to_string() } else { format!("({})", options.join(" OR ")) }
                    })
                    .collect();
                all(parts)
            }
        }
    }

    fn join(&mut self, items: &[Filter], with: &str, empty: &str, card: &str) -> String {
        if items.is_empty() {
            return empty.to_string();
        }
        let parts: Vec<String> = items.iter().map(|f| self.filter(f, card)).collect();
        format!("({})", parts.join(with))
    }

    /// `card.path IN (cards having a value of path meeting condition)`.
    fn matching(&mut self, card: &str, path: &FieldPath, condition: &Condition) -> String {
        format!("{card}.path IN ({})", self.paths(path, condition))
    }

    /// The paths of the realm's cards with a value at `path` (directly, or
    /// through a link at one of its prefixes) meeting `condition`.
    fn paths(&mut self, path: &FieldPath, condition: &Condition) -> String {
        let f = self.alias("f");
        let field = self.bind(Bind::Text(path.join(".")));
        let test = self.condition(&f, condition);
        let mut selects = vec![format!(
            "SELECT {f}.path FROM card_fields {f} WHERE {f}.realm_url = $1 AND {f}.field = {field} AND {f}.kind < {link} AND {test}",
            link = Kind::Link as i64
        )];
        for split in 1..path.len() {
            let (l, t) = (self.alias("l"), self.alias("t"));
            let prefix = self.bind(Bind::Text(path[..split].join(".")));
            let rest = self.paths(&path[split..].to_vec(), condition);
            selects.push(format!(
                "SELECT {l}.path FROM card_fields {l} JOIN card_index {t} ON {t}.realm_url = {l}.realm_url AND {t}.card_id = {l}.text_value \
                 WHERE {l}.realm_url = $1 AND {l}.field = {prefix} AND {l}.kind = {link} AND {t}.path IN ({rest})",
                link = Kind::Link as i64
            ));
        }
        selects.join(" UNION ALL ")
    }

    fn condition(&mut self, f: &str, condition: &Condition) -> String {
        match condition {
            Condition::Present => "1 = 1".to_string(),
            Condition::Equals(value) => self.equals(f, value),
            Condition::OneOf(values) => {
                let parts: Vec<String> = values.iter().map(|v| self.equals(f, v)).collect();
                format!("({})", parts.join(" OR "))
            }
            Condition::Contains(text) => {
                let needle = self.bind(Bind::Text(self.dialect.needle(text)));
                format!("{f}.kind = {} AND {}", Kind::Text as i64, self.dialect.substring(&format!("{f}.folded"), &needle))
            }
            Condition::Range(bounds) => {
                let parts: Vec<String> = bounds
                    .iter()
                    .map(|(comparison, bound)| match bound.number {
                        Some(n) => format!("{f}.kind = {} AND {f}.number_value {} {}", Kind::Number as i64, comparison.sql(), self.bind(Bind::Real(n))),
                        None => {
                            let text = self.bind(Bind::Text(bound.text.clone()));
                            format!("{f}.kind = {} AND {f}.text_value{} {} {text}", Kind::Text as i64, self.dialect.bytewise(), comparison.sql())
                        }
                    })
                    .collect();
                parts.join(" AND ")
            }
        }
    }

    /// Equal by text (strings, a number's JSON text, booleans) or as numbers.
    fn equals(&mut self, f: &str, value: &Scalar) -> String {
        let key = self.bind(Bind::Text(text_key(&value.text)));
        let text = self.bind(Bind::Text(value.text.clone()));
        let by_text = format!("({f}.text_key = {key} AND {f}.text_value = {text})");
        match value.number {
            Some(n) => format!("({by_text} OR ({f}.kind = {} AND {f}.number_value = {}))", Kind::Number as i64, self.bind(Bind::Real(n))),
            None => by_text,
        }
    }
}

fn all(parts: Vec<String>) -> String {
    format!("({})", parts.join(" AND "))
}

/// The page of card paths matching `query` in `realm`, each row with the
/// number of all matches (`total`).
pub fn page(query: &Query, realm: &str, dialect: Dialect) -> Statement {
    let mut b = Builder { dialect, binds: vec![Bind::Text(realm.to_string())], aliases: 0 };
    let condition = query.filter.as_ref().map(|f| b.filter(f, "c")).unwrap_or_else(|| "1 = 1".into());
    let bytewise = dialect.bytewise();
    let mut joins = String::new();
    let mut order = Vec::new();
    let mut files_joined = false;
    for (n, sort) in query.sort.iter().enumerate() {
        let dir = if sort.descending { "DESC" } else { "ASC" };
        match &sort.key {
            SortKey::Field(path) => {
                let field = b.bind(Bind::Text(path.join(".")));
                joins.push_str(&format!(
                    " LEFT JOIN card_fields s{n} ON s{n}.realm_url = c.realm_url AND s{n}.path = c.path AND s{n}.field = {field} AND s{n}.position = 0 AND s{n}.kind < {}",
                    Kind::Link as i64
                ));
                // Cards without a value last, whichever the direction.
                order.push(format!("(s{n}.kind IS NULL) ASC, s{n}.kind ASC, s{n}.number_value {dir}, s{n}.text_value{bytewise} {dir}"));
            }
            SortKey::LastModified | SortKey::CreatedAt => {
                if !files_joined {
                    joins.push_str(" JOIN files fl ON fl.realm_url = c.realm_url AND fl.path = c.path");
                    files_joined = true;
                }
                let column = if sort.key == SortKey::LastModified { "last_modified" } else { "created_at" };
                order.push(format!("fl.{column} {dir}"));
            }
            SortKey::CardUrl => order.push(format!("c.card_id{bytewise} {dir}")),
        }
    }
    order.push(format!("c.card_id{bytewise} ASC"));
    let (number, size) = query.page;
    let limit = b.bind(Bind::Int(size as i64));
    let offset = b.bind(Bind::Int((number * size) as i64));
    let sql = format!(
        "SELECT c.path, COUNT(*) OVER () FROM card_index c{joins} WHERE c.realm_url = $1 AND {condition} ORDER BY {} LIMIT {limit} OFFSET {offset}",
        order.join(", ")
    );
    Statement { sql, binds: b.binds }
}

/// How many cards match `query` in `realm` (for a page past the end).
pub fn count(query: &Query, realm: &str, dialect: Dialect) -> Statement {
    let mut b = Builder { dialect, binds: vec![Bind::Text(realm.to_string())], aliases: 0 };
    let condition = query.filter.as_ref().map(|f| b.filter(f, "c")).unwrap_or_else(|| "1 = 1".into());
    Statement { sql: format!("SELECT COUNT(*) FROM card_index c WHERE c.realm_url = $1 AND {condition}"), binds: b.binds }
}

#[cfg(test)]
mod tests {
    use super::Dialect;

    #[test]
    fn a_postgres_substring_is_an_escaped_like() {
        assert_eq!(Dialect::Postgres.needle(r"50%_a\b"), r"%50\%\_a\\b%");
        assert_eq!(Dialect::Postgres.substring("f.folded", "$3"), r"f.folded LIKE $3 ESCAPE '\'");
        assert_eq!(Dialect::Sqlite.needle("50%"), "50%");
    }
}
