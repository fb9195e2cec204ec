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
    /// The text, or for a binary file the base64 of its bytes.
    pub content: String,
    /// SHA-256 (hex) of the file's bytes.
    pub content_hash: String,
    pub created: i64,
    pub last_modified: i64,
    /// Whether `content` is base64 (bytes that are not UTF-8 text).
    pub binary: bool,
}

/// How a file's bytes are kept in the `content` column.
pub enum StoredContent {
    Text(String),
    Base64(String),
}

impl StoredContent {
    /// Text when the bytes are UTF-8 without NUL (which Postgres `text`
    /// cannot hold), else base64.
    pub fn of(bytes: Vec<u8>) -> StoredContent {
        use base64::Engine;
        if bytes.contains(&0) {
            return StoredContent::Base64(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
        match String::from_utf8(bytes) {
            Ok(text) => StoredContent::Text(text),
            Err(e) => StoredContent::Base64(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())),
        }
    }

    /// The `content_encoding` column's value.
    pub fn encoding(&self) -> &'static str {
        match self {
            StoredContent::Text(_) => "utf-8",
            StoredContent::Base64(_) => "base64",
        }
    }
}

impl FileRow {
    /// The file's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        use base64::Engine;
        if self.binary {
            // Written only by `StoredContent::of`; undecodable means a
            // damaged row, answered as its stored text rather than a panic.
            base64::engine::general_purpose::STANDARD.decode(&self.content).unwrap_or_else(|_| self.content.clone().into_bytes())
        } else {
            self.content.clone().into_bytes()
        }
    }

    /// The size of the file's bytes.
    pub fn size(&self) -> usize {
        if self.binary {
            self.bytes().len()
        } else {
            self.content.len()
        }
    }

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
