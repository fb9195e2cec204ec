//! Running a checked query: the page of matching cards and the total, read
//! in one snapshot, under the search timeout (Postgres `statement_timeout`,
//! SQLite a progress handler that interrupts the statement).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Row;

use super::query::Query;
use super::sql::{self, Bind, Dialect};
use crate::store::{Database, DbError, FileRow};

/// Why a search did not answer.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("the search ran longer than {0:?}; narrow the filter")]
    TooSlow(Duration),
    #[error(transparent)]
    Storage(#[from] DbError),
}

/// A page of results: each card's realm-local path and stored file, in
/// order, and how many cards match in all.
pub struct Hits {
    pub total: u64,
    pub cards: Vec<(String, FileRow)>,
}

/// Binds a statement's parameters, on whichever backend.
macro_rules! bound {
    ($statement:expr) => {{
        let mut query = sqlx::query(&$statement.sql);
        for bind in &$statement.binds {
            query = match bind {
                Bind::Text(text) => query.bind(text.as_str()),
                Bind::Real(number) => query.bind(*number),
                Bind::Int(int) => query.bind(*int),
            };
        }
        query
    }};
}

const FILES: &str = "SELECT path, content, content_hash, created_at, last_modified, content_encoding FROM files WHERE realm_url = $1 AND path IN";

/// Runs `query` over the cards of `realm`.
pub async fn search(db: &Database, realm: &str, query: &Query, timeout: Duration) -> Result<Hits, SearchError> {
    match db {
        Database::Postgres(pool) => {
            let page = sql::page(query, realm, Dialect::Postgres);
            let run = async {
                let mut tx = pool.begin().await?;
                // One snapshot for the page and its files.
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
                sqlx::query("SELECT set_config('statement_timeout', $1, true)")
                    .bind(format!("{}ms", timeout.as_millis().max(1)))
                    .execute(&mut *tx)
                    .await?;
                let rows = bound!(page).fetch_all(&mut *tx).await?;
                let (paths, total) = paths_and_total(&rows)?;
                let count = sql::count(query, realm, Dialect::Postgres);
                let total = match total {
                    Some(total) => total,
                    None => bound!(count).fetch_one(&mut *tx).await?.try_get::<i64, _>(0)?,
                };
                let files = sqlx::query(&format!("{FILES} (SELECT unnest($2::text[]))")).bind(realm).bind(&paths).fetch_all(&mut *tx).await?;
                let files = files_by_path(&files)?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>((paths, total, files))
            };
            finish(run.await, timeout, |e| e.code().as_deref() == Some("57014"))
        }
        Database::Sqlite(pool) => {
            let page = sql::page(query, realm, Dialect::Sqlite);
            let mut conn = pool.acquire().await.map_err(DbError::from)?;
            let deadline = Instant::now() + timeout;
            // The handler outlives this search if the request is dropped
            // midway; once `Searching` is gone it never interrupts anything.
            let searching = Searching::default();
            let active = searching.0.clone();
            conn.lock_handle().await.map_err(DbError::from)?.set_progress_handler(10_000, move || {
                !active.load(Ordering::Relaxed) || Instant::now() < deadline
            });
            let run = async {
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                let rows = bound!(page).fetch_all(&mut *tx).await?;
                let (paths, total) = paths_and_total(&rows)?;
                let count = sql::count(query, realm, Dialect::Sqlite);
                let total = match total {
                    Some(total) => total,
                    None => bound!(count).fetch_one(&mut *tx).await?.try_get::<i64, _>(0)?,
                };
                let placeholders: Vec<String> = (0..paths.len()).map(|i| format!("${}", i + 2)).collect();
                let files = if paths.is_empty() {
                    HashMap::new()
                } else {
                    let statement = format!("{FILES} ({})", placeholders.join(", "));
                    let mut files = sqlx::query(&statement).bind(realm);
                    for path in &paths {
                        files = files.bind(path.as_str());
                    }
                    files_by_path(&files.fetch_all(&mut *tx).await?)?
                };
                tx.commit().await?;
                Ok::<_, sqlx::Error>((paths, total, files))
            };
            let outcome = run.await;
            drop(searching);
            if let Ok(mut handle) = conn.lock_handle().await {
                handle.remove_progress_handler();
            }
            // SQLITE_INTERRUPT is result code 9.
            finish(outcome, timeout, |e| e.code().as_deref() == Some("9"))
        }
        Database::Memory(_) => Err(SearchError::Storage(DbError::NotInMemory)),
    }
}

/// True while a search runs on the connection its flag was given to.
struct Searching(Arc<AtomicBool>);

impl Default for Searching {
    fn default() -> Searching {
        Searching(Arc::new(AtomicBool::new(true)))
    }
}

impl Drop for Searching {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

type Page = (Vec<String>, i64, HashMap<String, FileRow>);

/// The page in order (cards deleted since cannot be in one snapshot, but
/// a path without its file is skipped rather than answered half).
fn finish(outcome: Result<Page, sqlx::Error>, timeout: Duration, is_timeout: impl Fn(&dyn sqlx::error::DatabaseError) -> bool) -> Result<Hits, SearchError> {
    match outcome {
        Ok((paths, total, mut files)) => Ok(Hits {
            total: total.max(0) as u64,
            cards: paths.into_iter().filter_map(|p| files.remove(&p).map(|f| (p, f))).collect(),
        }),
        Err(sqlx::Error::Database(e)) if is_timeout(e.as_ref()) => Err(SearchError::TooSlow(timeout)),
        Err(e) => Err(SearchError::Storage(DbError::from(e))),
    }
}

fn paths_and_total<R: Row>(rows: &[R]) -> Result<(Vec<String>, Option<i64>), sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let total = rows.first().map(|r| r.try_get::<i64, _>(1)).transpose()?;
    let paths = rows.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<_, _>>()?;
    Ok((paths, total))
}

fn files_by_path<R: Row>(rows: &[R]) -> Result<HashMap<String, FileRow>, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .map(|r| {
            let path: String = r.try_get(0)?;
            Ok((path, FileRow {
                content: r.try_get(1)?,
                content_hash: r.try_get(2)?,
                created: r.try_get(3)?,
                last_modified: r.try_get(4)?,
                binary: r.try_get::<String, _>(5)? == "base64",
            }))
        })
        .collect()
}
