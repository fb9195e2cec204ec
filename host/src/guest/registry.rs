//! The guest registry: deployed components, content-addressed by SHA-256,
//! and an append-only activation log whose newest row is the active guest.

use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::store::{now_unix, Database, DbError};

/// Postgres channel on which activations are announced to every replica.
pub const GUEST_CHANNEL: &str = "realm_guest_activated";

/// One deployed guest as `guest list` shows it.
#[derive(Debug, Clone)]
pub struct GuestVersion {
    pub hash: String,
    pub size: i64,
    pub deployed_at: i64,
    pub deployed_by: String,
    pub active: bool,
}

pub fn hash_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Database {
    /// Stores a component (idempotent) and answers its hash.
    pub async fn store_guest(&self, bytes: &[u8], deployed_by: &str) -> Result<String, DbError> {
        let hash = hash_of(bytes);
        let sql = "INSERT INTO guests (hash, bytes_hex, size, deployed_at, deployed_by) VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (hash) DO NOTHING";
        let encoded = hex::encode(bytes);
        crate::store::on_pool!(self, pool => { sqlx::query(sql)
            .bind(&hash).bind(&encoded).bind(bytes.len() as i64).bind(now_unix()).bind(deployed_by)
            .execute(pool).await?; });
        Ok(hash)
    }

    /// Makes a stored guest the active one and tells every replica.
    pub async fn activate_guest(&self, hash: &str, activated_by: &str) -> Result<(), DbError> {
        let sql = "INSERT INTO guest_activations (seq, hash, activated_at, activated_by)
                   SELECT COALESCE(MAX(seq), 0) + 1, $1, $2, $3 FROM guest_activations";
        crate::store::on_pool!(self, pool => { sqlx::query(sql)
            .bind(hash).bind(now_unix()).bind(activated_by).execute(pool).await?; });
        if let Database::Postgres(pool) = self {
            sqlx::query("SELECT pg_notify($1, $2)").bind(GUEST_CHANNEL).bind(hash).execute(pool).await?;
        }
        Ok(())
    }

    /// The hash of the active guest, if one was ever activated.
    pub async fn active_guest(&self) -> Result<Option<String>, DbError> {
        let sql = "SELECT hash FROM guest_activations ORDER BY seq DESC LIMIT 1";
        let hash = crate::store::on_pool!(self, pool => sqlx::query_scalar::<_, String>(sql).fetch_optional(pool).await?);
        Ok(hash)
    }

    /// The guest that was active before the current one.
    pub async fn previous_guest(&self) -> Result<Option<String>, DbError> {
        let Some(current) = self.active_guest().await? else { return Ok(None) };
        let sql = "SELECT hash FROM guest_activations WHERE hash <> $1 ORDER BY seq DESC LIMIT 1";
        let hash = crate::store::on_pool!(self, pool => sqlx::query_scalar::<_, String>(sql).bind(&current).fetch_optional(pool).await?);
        Ok(hash)
    }

    /// The bytes of a stored guest; `hash` may be a unique prefix.
    pub async fn guest_bytes(&self, hash: &str) -> Result<Option<(String, Vec<u8>)>, DbError> {
        let sql = "SELECT hash, bytes_hex FROM guests WHERE hash LIKE $1 ORDER BY hash LIMIT 2";
        let pattern = format!("{}%", hash.to_ascii_lowercase().replace(['%', '_'], ""));
        let rows: Vec<(String, String)> = crate::store::on_pool!(self, pool => sqlx::query(sql).bind(&pattern).fetch_all(pool).await?
            .iter().map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?))).collect::<Result<_, _>>()?);
        match rows.as_slice() {
            [(full, encoded)] => Ok(hex::decode(encoded).ok().map(|bytes| (full.clone(), bytes))),
            _ => Ok(None),
        }
    }

    /// Every deployed guest, newest first.
    pub async fn list_guests(&self) -> Result<Vec<GuestVersion>, DbError> {
        let active = self.active_guest().await?;
        let sql = "SELECT hash, size, deployed_at, deployed_by FROM guests ORDER BY deployed_at DESC, hash";
        let rows = crate::store::on_pool!(self, pool => sqlx::query(sql).fetch_all(pool).await?
            .iter().map(|r| Ok::<_, sqlx::Error>(GuestVersion {
                hash: r.try_get(0)?, size: r.try_get(1)?, deployed_at: r.try_get(2)?, deployed_by: r.try_get(3)?,
                active: false,
            })).collect::<Result<Vec<_>, _>>()?);
        Ok(rows
            .into_iter()
            .map(|mut g| {
                g.active = active.as_deref() == Some(g.hash.as_str());
                g
            })
            .collect())
    }
}
