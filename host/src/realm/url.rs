//! Realm URLs and realm-local paths: canonical forms and the checks that
//! keep a request inside its realm.

use percent_encoding::percent_decode_str;
use url::Url;

/// Why a realm URL or a local path was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("'{0}' is not an absolute http(s) URL")]
    NotAUrl(String),
    #[error("the path is not valid UTF-8 once percent-decoded")]
    NotUtf8,
    #[error("'..' and '.' segments are not allowed in a path")]
    DotSegment,
    #[error("empty path segments are not allowed")]
    EmptySegment,
    #[error("control characters (U+0000 to U+001F, U+007F) and backslashes are not allowed in a path")]
    BadCharacter,
    #[error("paths whose first segment starts with '_' are reserved for realm endpoints")]
    Reserved,
    #[error("the path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
}

/// Longest realm-local path, in bytes. With the realm URL and a search
/// field name it must fit one entry of Postgres' btree indexes (2704 bytes:
/// `files`, `card_index`, `card_fields`), or the shared commit that stores
/// it fails for every request in it.
pub const MAX_PATH_BYTES: usize = 1024;

/// Characters no realm-local path may hold: control characters (CR/LF
/// among them, which would also break headers) and backslashes.
pub fn is_forbidden_in_path(c: char) -> bool {
    c.is_ascii_control() || c == '\\'
}

/// Whether a realm-local path lies in the `_` namespace of realm endpoints.
pub fn is_reserved(local: &str) -> bool {
    local.starts_with('_')
}

/// Checks a path the guest asks to write or delete: a file path (not the
/// root, not a directory), valid, and outside the reserved namespace.
pub fn check_writable_path(local: &str) -> Result<(), PathError> {
    if local.is_empty() || local.ends_with('/') {
        return Err(PathError::EmptySegment);
    }
    check_local_path(local)?;
    if is_reserved(local) {
        return Err(PathError::Reserved);
    }
    Ok(())
}

/// Canonical form of a realm URL: lowercase scheme and host (by the URL
/// parser), percent-decoded path, trailing slash, no query or fragment.
pub fn canonical_realm_url(raw: &str) -> Result<String, PathError> {
    let url = Url::parse(raw.trim()).map_err(|_| PathError::NotAUrl(raw.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(PathError::NotAUrl(raw.to_string()));
    }
    let path = decode(url.path())?;
    let mut canonical = format!("{}{}", origin_of(&url), path);
    if !canonical.ends_with('/') {
        canonical.push('/');
    }
    Ok(canonical)
}

/// `scheme://host[:port]` as the URL parser normalises it.
pub fn origin_of(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// Percent-decodes a URL path.
pub fn decode(path: &str) -> Result<String, PathError> {
    percent_decode_str(path)
        .decode_utf8()
        .map(|p| p.into_owned())
        .map_err(|_| PathError::NotUtf8)
}

/// Checks a decoded realm-local path (no leading `/`; a trailing `/` marks a
/// directory). The empty path is the realm root.
pub fn check_local_path(local: &str) -> Result<(), PathError> {
    if local.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if local.chars().any(is_forbidden_in_path) {
        return Err(PathError::BadCharacter);
    }
    if local.is_empty() {
        return Ok(());
    }
    let trimmed = local.strip_suffix('/').unwrap_or(local);
    for segment in trimmed.split('/') {
        match segment {
            "" => return Err(PathError::EmptySegment),
            "." | ".." => return Err(PathError::DotSegment),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalises_realm_urls() {
        assert_eq!(canonical_realm_url("HTTP://LocalHost:4201/test").unwrap(), "http://localhost:4201/test/");
        assert_eq!(canonical_realm_url("http://127.0.0.1:4201/a%20b/").unwrap(), "http://127.0.0.1:4201/a b/");
        assert_eq!(canonical_realm_url("http://h/x/?q=1#f").unwrap(), "http://h/x/");
        assert!(canonical_realm_url("not-a-url").is_err());
        assert!(canonical_realm_url("file:///tmp/x").is_err());
    }

    #[test]
    fn refuses_paths_that_escape_or_are_malformed() {
        for ok in ["", "a", "a/b.json", "dir/", "a/b/c.gts"] {
            assert_eq!(check_local_path(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_local_path("../x"), Err(PathError::DotSegment));
        assert_eq!(check_local_path("a/../../x"), Err(PathError::DotSegment));
        assert_eq!(check_local_path("a/./x"), Err(PathError::DotSegment));
        assert_eq!(check_local_path("a//x"), Err(PathError::EmptySegment));
        assert_eq!(check_local_path("/x"), Err(PathError::EmptySegment));
        assert_eq!(check_local_path("a\\x"), Err(PathError::BadCharacter));
        assert_eq!(check_local_path("a\0x"), Err(PathError::BadCharacter));
        for control in ["x\r\n.json", "a\tb", "\u{1f}", "del\u{7f}"] {
            assert_eq!(check_local_path(control), Err(PathError::BadCharacter), "{control:?}");
        }
        assert_eq!(check_writable_path("_x.json"), Err(PathError::Reserved));
        assert_eq!(check_writable_path("dir/_x.json"), Ok(()));
        assert_eq!(check_writable_path("dir/"), Err(PathError::EmptySegment));
    }
}
