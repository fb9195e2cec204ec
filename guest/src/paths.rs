//! URL and path helpers: the one place that turns references, hrefs and
//! realm-local paths into each other (resolution, executable-extension
//! trimming, realm-relative URLs, card ids).
//!
//! A realm is given as its canonical URL string (trailing slash, path
//! percent-decoded). Card ids and file URLs are built by concatenating that
//! string with a realm-local (decoded) path; URL arithmetic is done on the
//! parsed [`Url`] form, which re-encodes the path.

use url::Url;

use crate::error::{Error, Result};

/// Extensions of executable modules, trimmed from module references.
/// Order matters: the longer `.gts`/`.gjs` are tried before `.ts`/`.js`.
pub const EXECUTABLE_EXTENSIONS: [&str; 4] = [".gts", ".gjs", ".ts", ".js"];

/// Parse an absolute URL; a parse failure is a `BadRequest`.
pub fn parse_url(url: &str) -> Result<Url> {
    Url::parse(url).map_err(|e| Error::BadRequest(format!("Invalid URL '{url}': {e}")))
}

/// `realm` with a trailing slash added when it lacks one.
pub fn ensure_trailing_slash(realm: &str) -> String {
    if realm.ends_with('/') {
        realm.to_string()
    } else {
        format!("{realm}/")
    }
}

/// Parse a realm URL (adding the trailing slash if missing).
pub fn parse_realm(realm: &str) -> Result<Url> {
    parse_url(&ensure_trailing_slash(realm))
}

/// Resolve `reference` against `base` like `new URL(reference, base)`.
pub fn resolve(reference: &str, base: &Url) -> Result<Url> {
    base.join(reference)
        .map_err(|e| Error::BadRequest(format!("Invalid URL reference '{reference}': {e}")))
}

/// `s` without a trailing executable extension (`.gts .gjs .ts .js`).
pub fn trim_executable_extension(s: &str) -> &str {
    for ext in EXECUTABLE_EXTENSIONS {
        if let Some(stripped) = s.strip_suffix(ext) {
            return stripped;
        }
    }
    s
}

/// `url` with an executable extension trimmed from its path (the query and
/// fragment, if any, are kept).
pub fn trim_url_executable_extension(url: &Url) -> Url {
    let mut out = url.clone();
    let trimmed = trim_executable_extension(url.path());
    if trimmed.len() != url.path().len() {
        let trimmed = trimmed.to_string();
        out.set_path(&trimmed);
    }
    out
}

/// Whether `url` lies inside the realm `realm` (string prefix of the
/// serialised URLs, so scheme, host, port and path must all match).
pub fn in_realm(url: &Url, realm: &Url) -> bool {
    url.as_str().starts_with(realm.as_str())
}

/// A reference to `url` from the file `relative_to`: relative (`./x`,
/// `../x`) when both share an origin and, if `realm` is given, `url` is in
/// that realm whenever `relative_to` is; otherwise the absolute href.
///
/// Like Boxel's `maybeRelativeURL`, but computed from the directory of
/// `relative_to`, which also gets right the case Boxel gets wrong (a URL
/// naming an ancestor directory of the file without its trailing slash).
/// The query and fragment of `url` are kept.
pub fn maybe_relative_url(url: &Url, relative_to: &Url, realm: Option<&Url>) -> String {
    if url.origin() != relative_to.origin() || url.cannot_be_a_base() {
        return url.as_str().to_string();
    }
    if let Some(realm) = realm {
        if in_realm(relative_to, realm) && !in_realm(url, realm) {
            return url.as_str().to_string();
        }
    }
    let target: Vec<&str> = url.path().split('/').collect();
    let base: Vec<&str> = relative_to.path().split('/').collect();
    // Directories only: every segment except the last (the file name).
    let base_dirs = &base[..base.len().saturating_sub(1)];
    let (target_dirs, target_last) = match target.split_last() {
        Some((last, dirs)) => (dirs, *last),
        None => (&target[..0], ""),
    };
    let common = base_dirs
        .iter()
        .zip(target_dirs.iter())
        .take_while(|(a, b)| a == b)
        .count();
    let ups = base_dirs.len() - common;
    let mut rel = if ups == 0 {
        String::from("./")
    } else {
        "../".repeat(ups)
    };
    for dir in &target_dirs[common..] {
        rel.push_str(dir);
        rel.push('/');
    }
    rel.push_str(target_last);
    if let Some(q) = url.query() {
        rel.push('?');
        rel.push_str(q);
    }
    if let Some(f) = url.fragment() {
        rel.push('#');
        rel.push_str(f);
    }
    rel
}

/// The absolute, extension-trimmed module URL of a code reference
/// `module` resolved against `base`.
pub fn resolve_module(module: &str, base: &Url) -> Result<Url> {
    Ok(trim_url_executable_extension(&resolve(module, base)?))
}

/// The internal key of a card type: the resolved module without its
/// executable extension, `#`, and the export name. `./person.gts` and
/// `./person` from the same base give the same key.
pub fn type_key(module: &str, name: &str, base: &Url) -> Result<String> {
    Ok(format!("{}#{name}", resolve_module(module, base)?))
}

/// Percent-decode a URL path (invalid UTF-8 is replaced, never an error).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Check a realm-local path: non-empty, no empty, `.` or `..` segments (so
/// no leading or trailing slash), no NUL and no backslash.
pub fn validate_local_path(path: &str) -> Result<()> {
    let bad = path.is_empty()
        || path.contains('\0')
        || path.contains('\\')
        || path
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if bad {
        Err(Error::BadRequest(format!("Invalid path '{path}'")))
    } else {
        Ok(())
    }
}

/// Resolve an `/_atomic` href against the realm and answer the realm-local
/// (decoded) path. Query and fragment are ignored. Outside the realm →
/// `NotFound("realm <realm> does not contain <url>")`; an unparsable href or
/// an invalid local path (see [`validate_local_path`]) → `BadRequest`.
pub fn local_path_of_href(realm: &str, href: &str) -> Result<String> {
    let realm_url = parse_realm(realm)?;
    let mut url = resolve(href, &realm_url)?;
    url.set_query(None);
    url.set_fragment(None);
    if !in_realm(&url, &realm_url) {
        return Err(Error::NotFound(format!(
            "realm {} does not contain {url}",
            ensure_trailing_slash(realm)
        )));
    }
    let rest = url.path().get(realm_url.path().len()..).unwrap_or("");
    let local = percent_decode(rest);
    validate_local_path(&local)?;
    Ok(local)
}

/// `path` without a trailing `.json`.
pub fn trim_json_extension(path: &str) -> &str {
    path.strip_suffix(".json").unwrap_or(path)
}

/// The card id of the realm-local file `path`: realm URL + path minus `.json`.
pub fn card_id(realm: &str, path: &str) -> String {
    format!(
        "{}{}",
        ensure_trailing_slash(realm),
        trim_json_extension(path)
    )
}

/// The absolute URL string of the realm-local file `path`.
pub fn file_url(realm: &str, path: &str) -> String {
    format!("{}{path}", ensure_trailing_slash(realm))
}

/// A card's realm-local path without `.json`: a trailing `.json` is
/// stripped and the empty path (realm root) means `index`.
pub fn card_path(path: &str) -> String {
    let p = trim_json_extension(path);
    if p.is_empty() {
        "index".to_string()
    } else {
        p.to_string()
    }
}

/// Whether `s` can be used as one path segment (a directory or file name):
/// non-empty, not `.`/`..`, no `/`, `\` or NUL.
pub fn is_safe_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    const REALM: &str = "http://localhost:4201/test/";

    #[test]
    fn trims_executable_extensions() {
        let cases = [
            ("./person.gts", "./person"),
            ("./person.gjs", "./person"),
            ("./person.ts", "./person"),
            ("./person.js", "./person"),
            ("./person", "./person"),
            ("./person.json", "./person.json"),
            ("./x.gts.gts", "./x.gts"),
        ];
        for (input, want) in cases {
            assert_eq!(trim_executable_extension(input), want, "{input}");
        }
        let url = trim_url_executable_extension(&u("http://h/a/person.gts?x=1"));
        assert_eq!(url.as_str(), "http://h/a/person?x=1");
    }

    #[test]
    fn relative_urls() {
        let realm = u(REALM);
        let cases = [
            // (url, relative_to, want)
            (
                "http://localhost:4201/test/person",
                "http://localhost:4201/test/Person/1.json",
                "../person",
            ),
            (
                "http://localhost:4201/test/Person/2",
                "http://localhost:4201/test/Person/1.json",
                "./2",
            ),
            (
                "http://localhost:4201/test/Pet/mango",
                "http://localhost:4201/test/Person/1.json",
                "../Pet/mango",
            ),
            (
                "http://localhost:4201/test/a/b/c",
                "http://localhost:4201/test/x.json",
                "./a/b/c",
            ),
            (
                "http://localhost:4201/test/x",
                "http://localhost:4201/test/a/b/y.json",
                "../../x",
            ),
            (
                "http://localhost:4201/test/",
                "http://localhost:4201/test/a.json",
                "./",
            ),
            (
                "http://localhost:4201/test/a",
                "http://localhost:4201/test/a/b.json",
                "../a",
            ),
            (
                "http://localhost:4201/test/a.json",
                "http://localhost:4201/test/a.json",
                "./a.json",
            ),
            (
                "http://localhost:4201/test/x?q=1#f",
                "http://localhost:4201/test/a.json",
                "./x?q=1#f",
            ),
            // other realm on the same origin stays absolute
            (
                "http://localhost:4201/other/x",
                "http://localhost:4201/test/a.json",
                "http://localhost:4201/other/x",
            ),
            // other origin stays absolute
            (
                "https://cardstack.com/base/card-api",
                "http://localhost:4201/test/a.json",
                "https://cardstack.com/base/card-api",
            ),
        ];
        for (url, rel_to, want) in cases {
            let got = maybe_relative_url(&u(url), &u(rel_to), Some(&realm));
            assert_eq!(got, want, "{url} from {rel_to}");
            // and it resolves back to the same URL
            assert_eq!(u(rel_to).join(&got).unwrap().as_str(), url);
        }
    }

    #[test]
    fn hrefs_to_local_paths() {
        let cases: [(&str, std::result::Result<&str, &str>); 12] = [
            ("x.json", Ok("x.json")),
            ("./dir/x.json", Ok("dir/x.json")),
            ("dir/../x.json", Ok("x.json")),
            ("/test/x.json", Ok("x.json")),
            ("http://localhost:4201/test/a/b.gts", Ok("a/b.gts")),
            ("x.json?foo=1#bar", Ok("x.json")),
            ("my%20card.json", Ok("my card.json")),
            ("../other/x.json", Err("404")),
            ("http://elsewhere/test/x.json", Err("404")),
            ("/test", Err("404")),
            ("", Err("400")),
            ("dir//x.json", Err("400")),
        ];
        for (href, want) in cases {
            let got = local_path_of_href(REALM, href);
            match (want, got) {
                (Ok(w), Ok(g)) => assert_eq!(g, w, "{href}"),
                (Err("404"), Err(Error::NotFound(_))) => {}
                (Err("400"), Err(Error::BadRequest(_))) => {}
                (w, g) => panic!("{href}: want {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn outside_realm_message() {
        assert_eq!(
            local_path_of_href(REALM, "../x.json"),
            Err(Error::NotFound(
                "realm http://localhost:4201/test/ does not contain http://localhost:4201/x.json"
                    .into()
            ))
        );
    }

    #[test]
    fn type_keys_ignore_extension() {
        let base = u("http://localhost:4201/test/Person/1");
        assert_eq!(
            type_key("../person.gts", "Person", &base).unwrap(),
            type_key("http://localhost:4201/test/person", "Person", &base).unwrap()
        );
        assert_eq!(
            type_key("../person", "Person", &base).unwrap(),
            "http://localhost:4201/test/person#Person"
        );
    }

    #[test]
    fn ids_and_card_paths() {
        assert_eq!(
            card_id(REALM, "Person/1.json"),
            "http://localhost:4201/test/Person/1"
        );
        assert_eq!(
            card_id(REALM, "Person/1"),
            "http://localhost:4201/test/Person/1"
        );
        assert_eq!(card_id("http://h/r", "x"), "http://h/r/x");
        assert_eq!(
            file_url(REALM, "a.json"),
            "http://localhost:4201/test/a.json"
        );
        assert_eq!(card_path(""), "index");
        assert_eq!(card_path(".json"), "index");
        assert_eq!(card_path("a/b.json"), "a/b");
        assert_eq!(card_path("a/b"), "a/b");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("%E2%9C%93"), "✓");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn local_path_validation() {
        for ok in ["a", "a/b.json", "_x"] {
            assert!(validate_local_path(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", "a/../b", "./a", "a\\b", "a\0b"] {
            assert!(validate_local_path(bad).is_err(), "{bad:?}");
        }
        assert!(is_safe_segment("Person"));
        for bad in ["", ".", "..", "a/b", "a\\b"] {
            assert!(!is_safe_segment(bad), "{bad:?}");
        }
    }
}
