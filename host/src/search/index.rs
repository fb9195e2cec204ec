//! Keeping `card_fields` in step with the cards: the version of the rows
//! this build writes (the write path, `lock::overlay`, writes only the rows
//! that changed), and the start-up pass that rebuilds the rows of cards
//! indexed by an older version.

use sqlx::Row;

use super::fields::{fields_of, FieldRow};
use crate::store::{on_pool, Database, DbError};

/// The version of the field rows this build writes; cards whose
/// `card_index.search_version` is older are re-indexed at start-up.
pub const SEARCH_VERSION: i64 = 1;

/// Removes a card's field rows (`$1` realm, `$2` path).
const DELETE_FIELDS: &str = "DELETE FROM card_fields WHERE realm_url = $1 AND path = $2";

/// Field rows per INSERT (7 parameters each, under both backends' caps).
const ROWS_PER_INSERT: usize = 500;

/// The INSERTs that store `rows` for one card: each statement with the
/// rows it binds after `$1` realm and `$2` path (see [`bind_field_rows`]).
fn insert_statements(rows: &[FieldRow]) -> Vec<(String, &[FieldRow])> {
    rows.chunks(ROWS_PER_INSERT)
        .map(|chunk| {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let p = 3 + i * 7;
                    format!("($1, $2, ${}, ${}, ${}, ${}, ${}, ${}, ${})", p, p + 1, p + 2, p + 3, p + 4, p + 5, p + 6)
                })
                .collect();
            let sql = format!(
                "INSERT INTO card_fields (realm_url, path, field, position, kind, text_key, text_value, folded, number_value) VALUES {}",
                values.join(", ")
            );
            (sql, chunk)
        })
        .collect()
}

/// Binds the rows of one of [`insert_statements`] to its query.
macro_rules! bind_field_rows {
    ($query:expr, $rows:expr) => {{
        let mut query = $query;
        for row in $rows.iter() {
            query = query
                .bind(row.field.as_str())
                .bind(row.position)
                .bind(row.kind as i64)
                .bind(row.key())
                .bind(row.text.as_str())
                .bind(row.folded())
                .bind(row.number);
        }
        query
    }};
}

/// On Postgres, a trigram index for `contains` (`pg_trgm`, shipped with
/// Postgres): built without blocking writes; where the extension cannot
/// be created, `contains` still answers the same, by reading the field's
/// values. Runs at every start (a no-op once the index exists).
pub async fn prepare_postgres(db: &Database) {
    let Database::Postgres(pool) = db else { return };
    let statements = [
        "CREATE EXTENSION IF NOT EXISTS pg_trgm",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS card_fields_folded_trgm ON card_fields USING gin (folded gin_trgm_ops)",
    ];
    for statement in statements {
        if let Err(e) = sqlx::raw_sql(statement).execute(pool).await {
            tracing::warn!(error = %e, %statement, "no trigram index for contains (searches still answer, more slowly)");
            return;
        }
    }
}

/// Re-indexes every card whose field rows are older than this build's,
/// one card per transaction. A card being written meanwhile is safe: the
/// version flag is claimed first, and a writer's newer rows replace ours.
pub async fn rebuild_stale(db: &Database) -> Result<u64, DbError> {
    let pending = "SELECT realm_url, path, card_id FROM card_index WHERE search_version < $1 LIMIT 500";
    let claim = "UPDATE card_index SET search_version = $3 WHERE realm_url = $1 AND path = $2 AND search_version < $3";
    let content = "SELECT content FROM files WHERE realm_url = $1 AND path = $2";
    let mut rebuilt = 0;
    loop {
        let batch: Vec<(String, String, String)> = on_pool!(db, pool => {
            let rows = sqlx::query(pending).bind(SEARCH_VERSION).fetch_all(pool).await?;
            rows.iter().map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).collect::<Result<Vec<_>, _>>()?
        });
        if batch.is_empty() {
            return Ok(rebuilt);
        }
        for (realm, path, card_id) in batch {
            on_pool!(db, pool => {
                let mut tx = pool.begin().await?;
                let claimed = sqlx::query(claim).bind(&realm).bind(&path).bind(SEARCH_VERSION).execute(&mut *tx).await?.rows_affected();
                if claimed > 0 {
                    let text: Option<String> = sqlx::query_scalar(content).bind(&realm).bind(&path).fetch_optional(&mut *tx).await?;
                    let rows = text.map(|t| fields_of(&t, &card_id)).unwrap_or_default();
                    sqlx::query(DELETE_FIELDS).bind(&realm).bind(&path).execute(&mut *tx).await?;
                    for (sql, chunk) in insert_statements(&rows) {
                        bind_field_rows!(sqlx::query(&sql).bind(&realm).bind(&path), chunk).execute(&mut *tx).await?;
                    }
                    rebuilt += 1;
                }
                tx.commit().await?;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rebuild_stale;
    use crate::search::query::{parse, QueryLimits};
    use crate::search::search;
    use crate::store::{Database, Permissions};
    use serde_json::json;
    use std::time::Duration;

    #[tokio::test]
    async fn cards_indexed_by_an_older_version_are_rebuilt_once_and_then_found() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::connect(&format!("sqlite://{}", dir.path().join("db.sqlite").display())).await.unwrap();
        let realm = "http://h/r/";
        db.create_realm(realm, Permissions::default()).await.unwrap();
        let Database::Sqlite(pool) = &db else { unreachable!() };
        let card = r#"{"data":{"attributes":{"firstName":"Mango"},"meta":{"adoptsFrom":{"module":"../person","name":"Person"}}}}"#;
        sqlx::query("INSERT INTO files (realm_url, path, content, content_hash, created_at, last_modified) VALUES ($1, 'Person/1.json', $2, 'h', 1, 1)")
            .bind(realm).bind(card).execute(pool).await.unwrap();
        // As an earlier build wrote it: an index row, no field rows.
        sqlx::query("INSERT INTO card_index (realm_url, path, card_id, card_type, search_doc, updated_at) VALUES ($1, 'Person/1.json', 'http://h/r/Person/1', 'http://h/person#Person', '{}', 1)")
            .bind(realm).execute(pool).await.unwrap();
        let query = parse(&json!({"filter": {"eq": {"firstName": "Mango"}}}), &url::Url::parse(realm).unwrap(), QueryLimits { max_page_size: 10, max_terms: 10 }).unwrap();
        assert_eq!(search(&db, realm, &query, Duration::from_secs(5)).await.unwrap().total, 0);
        assert_eq!(rebuild_stale(&db).await.unwrap(), 1);
        assert_eq!(rebuild_stale(&db).await.unwrap(), 0);
        let hits = search(&db, realm, &query, Duration::from_secs(5)).await.unwrap();
        assert_eq!((hits.total, hits.cards.len(), hits.cards[0].0.as_str()), (1, 1, "Person/1.json"));
    }
}
