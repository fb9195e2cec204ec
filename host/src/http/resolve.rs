//! Which realm a request addresses, and the local path inside it: the
//! longest realm path that prefixes the request path, from the in-memory
//! realm list (no query), whatever host and port the replica is reached on.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;

use super::app::App;
use super::responses::{encode_url, error};
use crate::realm::url::{self as realm_url, check_local_path};
use crate::store::Permissions;

/// The realm a request addresses and the local path inside it; `public`
/// (what anyone may do there) is filled in by the router, which knows
/// whether an exact read of it is needed.
pub(super) struct Target {
    pub(super) realm: String,
    pub(super) local: String,
    pub(super) public: Permissions,
}

pub(super) enum Resolved {
    Target(Target),
    Redirect(String),
}

/// Finds the realm whose URL path is the longest prefix of the request
/// path (spec §1, §6: a replica serves every realm of the database,
/// whatever host and port it is reached on). Among realms with the same
/// path, the one on the request's own origin wins.
pub(super) fn resolve(app: &App, headers: &HeaderMap, raw_path: &str) -> Result<Resolved, Response> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let path = realm_url::decode(raw_path).map_err(|e| error(StatusCode::BAD_REQUEST, &e.to_string()))?;
    // The realm list is kept in memory (see `RealmCache`): a path under no
    // realm costs no query.
    match best_realm(&app.realms.realms(), &host, &path) {
        Some(Found::Redirect(realm)) => Ok(Resolved::Redirect(encode_url(&realm))),
        Some(Found::Realm { realm, local }) => {
            check_local_path(&local).map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid path '{local}': {e}")))?;
            Ok(Resolved::Target(Target { realm, local, public: Permissions::default() }))
        }
        None => Err(error(StatusCode::NOT_FOUND, &format!("no realm serves {path}"))),
    }
}

enum Found {
    Realm { realm: String, local: String },
    Redirect(String),
}

/// The path part of a URL (`http://h:p/a/b/` → `/a/b/`).
pub(super) fn path_of(realm: &str) -> &str {
    let after_scheme = realm.find("://").map(|i| i + 3).unwrap_or(0);
    realm[after_scheme..].find('/').map(|i| &realm[after_scheme + i..]).unwrap_or("/")
}

fn best_realm(realms: &[String], host: &str, path: &str) -> Option<Found> {
    let on_this_host = |r: &String| r.split("://").nth(1).is_some_and(|rest| rest.starts_with(host) && rest[host.len()..].starts_with('/'));
    let best = realms
        .iter()
        .filter(|r| path.starts_with(path_of(r)))
        .max_by_key(|r| (path_of(r).len(), on_this_host(r)));
    match best {
        Some(realm) => Some(Found::Realm { realm: realm.clone(), local: path[path_of(realm).len()..].to_string() }),
        None => realms
            .iter()
            .filter(|r| path_of(r).strip_suffix('/') == Some(path))
            .max_by_key(|r| on_this_host(r))
            .map(|r| Found::Redirect(r.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::{best_realm, Found};

    fn realms() -> Vec<String> {
        ["http://a:1/test/", "http://a:1/test/deep/", "http://b:2/test/", "http://a:1/other/"].map(String::from).to_vec()
    }

    fn realm_of(host: &str, path: &str) -> Option<(String, String)> {
        match best_realm(&realms(), host, path) {
            Some(Found::Realm { realm, local }) => Some((realm, local)),
            _ => None,
        }
    }

    #[test]
    fn the_longest_realm_path_wins_whatever_the_port() {
        assert_eq!(realm_of("a:1", "/test/x.json"), Some(("http://a:1/test/".into(), "x.json".into())));
        assert_eq!(realm_of("a:1", "/test/deep/x"), Some(("http://a:1/test/deep/".into(), "x".into())));
        assert_eq!(realm_of("replica:9", "/other/"), Some(("http://a:1/other/".into(), "".into())));
        assert_eq!(realm_of("b:2", "/test/x"), Some(("http://b:2/test/".into(), "x".into())), "own origin first");
        assert_eq!(realm_of("a:1", "/nothing/x"), None);
    }

    #[test]
    fn a_realm_path_without_its_slash_redirects() {
        assert!(matches!(best_realm(&realms(), "a:1", "/other"), Some(Found::Redirect(r)) if r == "http://a:1/other/"));
    }
}
