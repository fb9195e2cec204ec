//! Card search (`_search`): the query language, the index it runs on, and
//! running a query. Cards' searchable values live in `card_fields`, one row
//! per value, written in the same transaction as the card; a query becomes
//! one SQL statement over that table, alike on SQLite and Postgres.

// Lowest first; each file uses only the ones above it.
// A borrowed JSON tree for one walk over a card's document.
mod json;
// The rows a card's document yields: fields, kinds, index keys.
pub mod fields;
// Keeping `card_fields` in step with writes; rebuilding stale rows.
pub mod index;
// The query language: JSON in, a checked `Query` out.
pub mod query;
// The GET form: bracket syntax into the query's JSON.
pub mod brackets;
// A `Query` as SQL, per backend (public so the bench can EXPLAIN it).
pub mod sql;
// Running a query: the page, the total, the timeout.
mod run;

use std::time::Duration;

pub use query::{InvalidQuery, Query, QueryLimits};
pub use run::{search, Hits, SearchError};

/// What `_search` may cost: the query's own limits and the time it may run.
#[derive(Clone, Copy, Debug)]
pub struct SearchLimits {
    pub query: QueryLimits,
    pub timeout: Duration,
}
