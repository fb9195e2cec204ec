//! Which media type a request asks for (spec §2): the first known type in
//! `Accept`, else in `Content-Type`. Parameters follow JSON:API: `charset`
//! (UTF-8 only) and `q` on every type; on `application/vnd.api+json` also
//! `profile` and `ext`, where the only extension served is the atomic one.
//! A known type with any other parameter is not a match: if nothing else in
//! `Accept` matches, that is 406; in `Content-Type` it is 415.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;

use super::responses::{error, CARD_JSON, CARD_SOURCE, JSON_API};

/// The JSON:API atomic operations extension.
pub(super) const ATOMIC_EXT: &str = "https://jsonapi.org/ext/atomic";

/// The media types routes are chosen by.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Media {
    Card,
    Source,
    JsonApi,
    Other,
}

/// What one entry of a media type list is.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Known(Media),
    /// A known type with a parameter we do not serve (the message says which).
    Refused(String),
    /// `q=0`, or a type we do not route by.
    Ignored,
}

/// The media type of the request; 415 for a `Content-Type` naming a known
/// type with parameters we do not serve, 406 for an `Accept` whose only
/// known types carry such parameters.
pub(super) fn media_of(headers: &HeaderMap) -> Result<Media, Response> {
    let content_type = pick(headers, header::CONTENT_TYPE);
    if let Pick::Refused(why) = &content_type {
        return Err(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, &format!("unsupported Content-Type: {why}")));
    }
    match pick(headers, header::ACCEPT) {
        Pick::Found(media) => Ok(media),
        Pick::Refused(why) => Err(error(StatusCode::NOT_ACCEPTABLE, &format!("unsupported Accept: {why}"))),
        Pick::Nothing => match content_type {
            Pick::Found(media) => Ok(media),
            _ => Ok(Media::Other),
        },
    }
}

enum Pick {
    Found(Media),
    Refused(String),
    Nothing,
}

fn pick(headers: &HeaderMap, name: header::HeaderName) -> Pick {
    let mut refused = None;
    for value in headers.get_all(name) {
        let Ok(text) = value.to_str() else { continue };
        for item in split_outside_quotes(text, ',') {
            match entry(item) {
                Entry::Known(media) => return Pick::Found(media),
                Entry::Refused(why) => refused = refused.or(Some(why)),
                Entry::Ignored => {}
            }
        }
    }
    refused.map_or(Pick::Nothing, Pick::Refused)
}

fn entry(item: &str) -> Entry {
    let mut parts = split_outside_quotes(item, ';').into_iter();
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let media = match essence.as_str() {
        CARD_JSON => Media::Card,
        CARD_SOURCE => Media::Source,
        JSON_API => Media::JsonApi,
        _ => return Entry::Ignored,
    };
    for parameter in parts {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        let name = name.trim().to_ascii_lowercase();
        let value = unquote(value.trim());
        match name.as_str() {
            "charset" if value.eq_ignore_ascii_case("utf-8") => {}
            "charset" => return Entry::Refused(format!("charset '{value}' (only utf-8 is served)")),
            "q" if value.parse::<f32>().is_ok_and(|q| q <= 0.0) => return Entry::Ignored,
            "q" => {}
            "profile" if media == Media::JsonApi => {}
            "ext" if media == Media::JsonApi => {
                if let Some(other) = value.split_ascii_whitespace().find(|uri| *uri != ATOMIC_EXT) {
                    return Entry::Refused(format!("the JSON:API extension '{other}' (only {ATOMIC_EXT} is served)"));
                }
            }
            "" => {}
            _ => return Entry::Refused(format!("the media type parameter '{name}' on {essence}")),
        }
    }
    Entry::Known(media)
}

/// Splits on `separator` except inside a quoted string.
fn split_outside_quotes(text: &str, separator: char) -> Vec<&str> {
    let mut pieces = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                pieces.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    pieces.push(&text[start..]);
    pieces
}

fn unquote(value: &str) -> String {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn media(accept: Option<&str>, content_type: Option<&str>) -> Result<Media, StatusCode> {
        let mut headers = HeaderMap::new();
        if let Some(a) = accept {
            headers.insert(header::ACCEPT, HeaderValue::from_str(a).unwrap());
        }
        if let Some(c) = content_type {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(c).unwrap());
        }
        media_of(&headers).map_err(|r| r.status())
    }

    #[test]
    fn exact_types_and_the_first_known_entry_win() {
        assert_eq!(media(Some("application/vnd.card+json"), None), Ok(Media::Card));
        assert_eq!(media(Some("text/html, application/vnd.card+source, application/vnd.card+json"), None), Ok(Media::Source));
        assert_eq!(media(Some("*/*"), Some("application/vnd.api+json")), Ok(Media::JsonApi));
        assert_eq!(media(None, None), Ok(Media::Other));
        assert_eq!(media(Some("Application/Vnd.Card+JSON"), None), Ok(Media::Card), "types are case-insensitive");
    }

    #[test]
    fn json_api_parameters_are_honoured() {
        let atomic = r#"application/vnd.api+json; ext="https://jsonapi.org/ext/atomic""#;
        assert_eq!(media(Some(atomic), Some(atomic)), Ok(Media::JsonApi));
        assert_eq!(media(Some("application/vnd.card+json; charset=utf-8"), None), Ok(Media::Card));
        assert_eq!(media(Some("application/vnd.api+json;charset=UTF-8;profile=\"https://x/p, https://y/q\""), None), Ok(Media::JsonApi));
        assert_eq!(media(Some("application/vnd.api+json; ext=\"https://example.com/other\""), None), Err(StatusCode::NOT_ACCEPTABLE));
        assert_eq!(
            media(Some("application/vnd.api+json; ext=\"https://example.com/other\", application/vnd.api+json"), None),
            Ok(Media::JsonApi),
            "another entry can still match"
        );
        assert_eq!(media(Some("application/vnd.api+json"), Some("application/vnd.api+json; ext=\"urn:x\"")), Err(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        assert_eq!(media(Some("application/vnd.card+json; ext=\"urn:x\""), None), Err(StatusCode::NOT_ACCEPTABLE));
        assert_eq!(media(Some("application/vnd.card+json; charset=latin1"), None), Err(StatusCode::NOT_ACCEPTABLE));
        assert_eq!(media(Some("application/vnd.card+json; q=0, application/vnd.card+source"), None), Ok(Media::Source));
    }
}
