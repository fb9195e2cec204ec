//! Why a write-path operation failed, and which SQL errors mean what.

use crate::store::DbError;

/// Why a write-path operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("the write lock of {0} could not be had in time; retry")]
    LockTimeout(String),
    #[error("{0}")]
    TooLarge(String),
    /// The write itself is refused (reserved or malformed path, NUL in content).
    #[error("{0}")]
    Invalid(String),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage error: {0}")]
    Storage(String),
}

impl From<sqlx::Error> for WriteError {
    fn from(e: sqlx::Error) -> Self {
        if is_lock_timeout(&e) {
            return WriteError::LockTimeout(e.to_string());
        }
        let db_error = DbError::Sqlx(e);
        if db_error.is_unavailable() {
            WriteError::Unavailable(db_error.to_string())
        } else {
            WriteError::Storage(db_error.to_string())
        }
    }
}

/// Postgres `lock_not_available` (lock_timeout expired).
fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03"))
}
