//! What the logic needs from its host: lock-free reads and a write lock.
//!
//! The wit-bindgen layer implements these traits over the real imports;
//! tests implement them in memory. Writing is only possible through a
//! [`WriteLock`], so no write path can forget to take the lock.

use crate::error::Result;

/// A stored file and its metadata; `etag` is opaque and changes with content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    pub content: String,
    pub etag: String,
    pub created: i64,
    pub last_modified: i64,
}

/// What the host reports after writing a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub etag: String,
    pub created: i64,
    pub last_modified: i64,
    /// False when the file did not exist before this write.
    pub existed: bool,
}

/// The searchable index row of a card, written with its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardIndex {
    pub id: String,
    pub card_type: String,
    pub search_doc: String,
}

/// Exclusive write access to one realm; dropping it without `commit` rolls back.
pub trait WriteLock {
    fn read(&mut self, path: &str) -> Result<Option<StoredFile>>;
    fn exists(&mut self, path: &str) -> Result<bool>;
    /// Reads these paths ahead in one round trip; changes no answer.
    fn prefetch(&mut self, _paths: &[String]) -> Result<()> {
        Ok(())
    }
    fn write(&mut self, path: &str, content: &str, index: Option<CardIndex>) -> Result<FileMeta>;
    fn delete(&mut self, path: &str) -> Result<bool>;
    fn commit(self) -> Result<()>;
}

/// The host as the logic sees it.
pub trait Store {
    type Lock: WriteLock;
    fn with_write_lock(&self, realm: &str) -> Result<Self::Lock>;
    fn read_file(&self, realm: &str, path: &str) -> Result<Option<StoredFile>>;
}
