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

/// A bare module specifier (`@cardstack/base/card-api`, `lodash`): neither
/// a URL nor a relative (`./`, `../`) or absolute (`/`) path. It names a
/// package, not a file of the realm, so it is kept as written.
pub fn is_bare_specifier(module: &str) -> bool {
    let relative = module.starts_with("./") || module.starts_with("../") || module.starts_with('/') || module == "." || module == "..";
    !relative && !module.is_empty() && Url::parse(module).is_err()
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
    if is_bare_specifier(module) {
        return Ok(format!("{module}#{name}"));
    }
    Ok(format!("{}#{name}", resolve_module(module, base)?))
}

/// Why a percent-decoded href is refused (the host words it the same way).
pub const NOT_UTF8: &str = "the path is not valid UTF-8 once percent-decoded";

/// Why a path holding a forbidden character is refused.
pub const BAD_CHARACTER: &str =
    "control characters (U+0000 to U+001F, U+007F) and backslashes are not allowed in a path";

/// Percent-decode a URL path. Invalid UTF-8 after decoding is a
/// `BadRequest` ([`NOT_UTF8`]): replacing it would map different hrefs
/// (`%ff`, `%fe`) onto one path. Malformed escapes (`%zz`) stay literal.
pub fn percent_decode(s: &str) -> Result<String> {
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
    String::from_utf8(out).map_err(|_| Error::BadRequest(NOT_UTF8.into()))
}

/// Characters no realm-local path may hold: ASCII controls (CR/LF would
/// also break headers and logs) and backslashes.
pub fn is_forbidden_char(c: char) -> bool {
    c.is_ascii_control() || c == '\\'
}

/// `s` for an error message: forbidden characters shown escaped (`\n`,
/// `\u{7f}`), everything else as is. Display only, never a path.
pub fn shown(s: &str) -> String {
    s.chars()
        .map(|c| {
            if is_forbidden_char(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Why `seg` is not a usable path segment, if it is not.
fn segment_problem(seg: &str) -> Option<&'static str> {
    if seg.is_empty() {
        Some("empty path segments are not allowed")
    } else if seg == "." || seg == ".." {
        Some("'..' and '.' segments are not allowed in a path")
    } else if seg.chars().any(is_forbidden_char) {
        Some(BAD_CHARACTER)
    } else {
        None
    }
}

/// Check a realm-local path: non-empty, no empty, `.` or `..` segments (so
/// no leading or trailing slash), no control character (U+0000–U+001F,
/// U+007F) and no backslash. The one grammar every handler uses.
pub fn validate_local_path(path: &str) -> Result<()> {
    let problem = if path.is_empty() {
        Some("the path is empty")
    } else {
        path.split('/').find_map(segment_problem)
    };
    match problem {
        Some(why) => Err(Error::BadRequest(format!(
            "Invalid path '{}': {why}",
            shown(path)
        ))),
        None => Ok(()),
    }
}

/// Whether a realm-local path lies in the `_` namespace that is reserved
/// for realm endpoints (its first segment starts with `_`).
pub fn is_reserved(path: &str) -> bool {
    path.starts_with('_')
}

/// Resolve an `/_atomic` href against the realm and answer the realm-local
/// (decoded) path. Query and fragment are ignored. Outside the realm →
/// `NotFound("realm <realm> does not contain <url>")`; an unparsable href or
/// an invalid local path (see [`validate_local_path`]) → `BadRequest`.
pub fn local_path_of_href(realm: &str, href: &str) -> Result<String> {
    // The URL parser silently drops tabs and newlines, trims other controls
    // and reads `\` as `/`: `a\nb.json` would become `ab.json`.
    if href.chars().any(is_forbidden_char) {
        return Err(Error::BadRequest(BAD_CHARACTER.into()));
    }
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
    let local = percent_decode(rest)?;
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
/// the segment rules of [`validate_local_path`], and no `/`.
pub fn is_safe_segment(s: &str) -> bool {
    !s.contains('/') && segment_problem(s).is_none()
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
        let cases: Vec<(&str, std::result::Result<&str, &str>)> = vec![
            ("x.json", Ok("x.json")),
            ("caf%C3%A9.json", Ok("caf\u{e9}.json")),
            ("%ff.json", Err("400")),
            ("%fe.json", Err("400")),
            ("a%0Ab.txt", Err("400")),
            ("a%0d%0ab.txt", Err("400")),
            ("a%7fb.txt", Err("400")),
            ("a%00b.txt", Err("400")),
            ("a%5Cb.txt", Err("400")),
            // raw controls and backslashes would be dropped or rewritten by the URL parser
            ("a\nb.json", Err("400")),
            ("a\tb.json", Err("400")),
            ("\u{1}x.json", Err("400")),
            ("a\\b.json", Err("400")),
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
    fn href_refusal_messages() {
        let bad = |m: &str| Err(Error::BadRequest(m.into()));
        assert_eq!(local_path_of_href(REALM, "%ff.json"), bad(NOT_UTF8));
        assert_eq!(local_path_of_href(REALM, "a\r\nb.json"), bad(BAD_CHARACTER));
        assert_eq!(
            local_path_of_href(REALM, "a%0Ab.json"),
            bad(&format!("Invalid path 'a\\nb.json': {BAD_CHARACTER}"))
        );
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
        assert_eq!(type_key("@cardstack/base/card-api", "CardDef", &base).unwrap(), "@cardstack/base/card-api#CardDef");
    }

    #[test]
    fn bare_specifiers_name_packages() {
        for bare in ["@cardstack/base/card-api", "lodash", "person"] {
            assert!(is_bare_specifier(bare), "{bare}");
        }
        for not_bare in ["./person", "../person.gts", "/test/person", "https://cardstack.com/base/card-api", "", ".."] {
            assert!(!is_bare_specifier(not_bare), "{not_bare}");
        }
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
        let not_utf8 = Err(Error::BadRequest(NOT_UTF8.into()));
        let cases: [(&str, Result<String>); 11] = [
            ("a%20b", Ok("a b".into())),
            ("%E2%9C%93", Ok("✓".into())),
            ("%e2%9c%93", Ok("✓".into())),
            ("100%", Ok("100%".into())),
            ("%zz", Ok("%zz".into())),
            ("%4", Ok("%4".into())),
            ("%41", Ok("A".into())),
            // strict: no byte is replaced, so these never collide
            ("%ff.json", not_utf8.clone()),
            ("%fe.json", not_utf8.clone()),
            ("%E2%9C", not_utf8.clone()),
            ("%C0%AF", not_utf8),
        ];
        for (input, want) in cases {
            assert_eq!(percent_decode(input), want, "{input}");
        }
    }

    #[test]
    fn local_path_validation() {
        for ok in [
            "a",
            "a/b.json",
            "_x",
            "my card.json",
            "caf\u{e9}/\u{2713}",
            "a\u{80}b",
        ] {
            assert!(validate_local_path(ok).is_ok(), "{ok}");
            assert!(ok.contains('/') || is_safe_segment(ok), "{ok}");
        }
        let empty_seg = "empty path segments are not allowed";
        let dots = "'..' and '.' segments are not allowed in a path";
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "the path is empty"),
            ("/a".into(), empty_seg),
            ("a/".into(), empty_seg),
            ("a//b".into(), empty_seg),
            ("a/../b".into(), dots),
            ("./a".into(), dots),
            ("a\\b".into(), BAD_CHARACTER),
            ("x\r\n.json".into(), BAD_CHARACTER),
            ("dir/a\tb".into(), BAD_CHARACTER),
            ("del\u{7f}".into(), BAD_CHARACTER),
        ];
        // every C0 control and DEL, in any segment
        let controls = (0u8..0x20).chain([0x7f]).flat_map(|b| {
            [
                format!("a{}b", b as char),
                format!("dir/{}.json", b as char),
            ]
        });
        for (bad, why) in cases
            .into_iter()
            .chain(controls.map(|p| (p, BAD_CHARACTER)))
        {
            let want = format!("Invalid path '{}': {why}", shown(&bad));
            assert_eq!(
                validate_local_path(&bad),
                Err(Error::BadRequest(want)),
                "{bad:?}"
            );
            if !bad.contains('/') {
                assert!(!is_safe_segment(&bad), "{bad:?}");
            }
        }
        assert_eq!(shown("x\r\n\u{7f}\\é"), "x\\r\\n\\u{7f}\\\\é");
        assert!(is_safe_segment("Person"));
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0b", "a\nb", "\u{7f}"] {
            assert!(!is_safe_segment(bad), "{bad:?}");
        }
    }

    #[test]
    fn reserved_namespace() {
        let cases = [
            ("_x.json", true),
            ("_dir/a.json", true),
            ("_", true),
            ("_atomic", true),
            ("x.json", false),
            ("dir/_x.json", false),
            ("a_b", false),
        ];
        for (path, want) in cases {
            assert_eq!(is_reserved(path), want, "{path}");
        }
    }
}
