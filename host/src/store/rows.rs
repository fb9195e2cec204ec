//! The rows every layer passes around: a stored file, what someone may do
//! in a realm, and the ETag and clock helpers that go with them. No SQL.

/// Who may do what in a realm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    pub read: bool,
    pub write: bool,
    pub realm_owner: bool,
}

impl Permissions {
    pub fn union(self, other: Permissions) -> Permissions {
        Permissions {
            read: self.read || other.read,
            write: self.write || other.write,
            realm_owner: self.realm_owner || other.realm_owner,
        }
    }
}

/// A stored file row.
#[derive(Clone, Debug)]
pub struct FileRow {
    pub content: String,
    pub content_hash: String,
    pub created: i64,
    pub last_modified: i64,
}

impl FileRow {
    /// The strong ETag of this file's content.
    pub fn etag(&self) -> String {
        etag_of(&self.content_hash)
    }
}

pub fn etag_of(content_hash: &str) -> String {
    format!("\"{content_hash}\"")
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
