//! Request bodies: read within a size limit and a deadline (413 at once
//! when `Content-Length` announces too much, 408 for a slow client), and
//! JSON bodies bounded before the guest parses them — `/_atomic`
//! operations and JSON values are counted without building the document.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::responses::{error, json_response, JSON_API};

fn too_large(limit: usize) -> Response {
    error(StatusCode::PAYLOAD_TOO_LARGE, &format!("Request body exceeds maximum allowed size ({limit} bytes)"))
}

/// Reads a body of at most `limit` bytes within `deadline`: 413 at once
/// when `Content-Length` announces more, 413 when more arrives, 408 when
/// the client is too slow.
pub(super) async fn read_body(body: Body, headers: &HeaderMap, limit: usize, deadline: Duration) -> Result<Vec<u8>, Response> {
    let announced = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|length| length > limit as u64) {
        return Err(too_large(limit));
    }
    let read = tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await.map_err(|_| {
        error(StatusCode::REQUEST_TIMEOUT, &format!("the request body did not arrive within {deadline:?}"))
    })?;
    let bytes = read.map_err(|e| {
        let over = std::error::Error::source(&e).is_some_and(|inner| inner.is::<http_body_util::LengthLimitError>());
        if over {
            too_large(limit)
        } else {
            error(StatusCode::BAD_REQUEST, "could not read the request body")
        }
    })?;
    Ok(bytes.to_vec())
}

/// [`read_body`], which must be UTF-8 (400 otherwise).
pub(super) async fn read_text(body: Body, headers: &HeaderMap, limit: usize, deadline: Duration) -> Result<String, Response> {
    let bytes = read_body(body, headers, limit, deadline).await?;
    String::from_utf8(bytes).map_err(|_| error(StatusCode::BAD_REQUEST, "the request body is not valid UTF-8"))
}

/// Refuses an `/_atomic` body that is not JSON (400, in the atomic error
/// shape) or carries more operations than allowed (413), before the guest
/// spends memory on it. Counting does not build the document. A body of
/// another shape passes: the guest reports what is wrong with it.
pub(super) fn check_atomic_size(body: &str, max_operations: usize) -> Result<(), Response> {
    /// Just enough of an `/_atomic` body to count its operations.
    #[derive(serde::Deserialize)]
    struct AtomicShape<'a> {
        #[serde(rename = "atomic:operations", borrow)]
        operations: Option<&'a serde_json::value::RawValue>,
    }
    let Ok(shape) = serde_json::from_str::<AtomicShape>(body) else {
        if serde_json::from_str::<serde::de::IgnoredAny>(body).is_ok() {
            return Ok(());
        }
        let doc = json!({"errors": [{"title": "Invalid atomic:operations format", "detail": "Request body is not valid JSON"}]});
        return Err(json_response(StatusCode::BAD_REQUEST, JSON_API, &doc));
    };
    // A Vec of a zero-sized type counts without allocating per element.
    let count = shape.operations.and_then(|ops| serde_json::from_str::<Vec<serde::de::IgnoredAny>>(ops.get()).ok()).map(|ops| ops.len());
    match count {
        Some(count) if count > max_operations => {
            let detail = format!("{count} operations in one request; at most {max_operations} are allowed (split the request)");
            let doc = json!({"errors": [{"status": 413, "title": "Too many operations", "detail": detail}]});
            Err(json_response(StatusCode::PAYLOAD_TOO_LARGE, JSON_API, &doc))
        }
        _ => Ok(()),
    }
}

/// Refuses (413) a JSON body with more than `max` values, counting them
/// without building the document and stopping at the first one too many.
/// A body that is not JSON passes: the guest answers that in its own words.
pub(super) fn check_json_values(body: &str, max: usize) -> Result<(), Response> {
    use serde::de::DeserializeSeed;
    let count = std::cell::Cell::new(0usize);
    let mut deserializer = serde_json::Deserializer::from_str(body);
    match (CountValues { count: &count, max }).deserialize(&mut deserializer) {
        Err(e) if e.to_string().starts_with(TOO_MANY_VALUES) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the JSON document holds more than {max} values (objects, arrays, strings, numbers); split it or simplify it"),
        )),
        _ => Ok(()),
    }
}

const TOO_MANY_VALUES: &str = "too many JSON values";

/// Counts every value of a JSON document into `count`, failing past `max`.
struct CountValues<'a> {
    count: &'a std::cell::Cell<usize>,
    max: usize,
}

impl CountValues<'_> {
    fn one<E: serde::de::Error>(&self) -> Result<(), E> {
        self.count.set(self.count.get() + 1);
        if self.count.get() > self.max {
            Err(E::custom(TOO_MANY_VALUES))
        } else {
            Ok(())
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for CountValues<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for CountValues<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.one()?;
        while seq.next_element_seed(CountValues { count: self.count, max: self.max })?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.one()?;
        while map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            map.next_value_seed(CountValues { count: self.count, max: self.max })?;
        }
        Ok(())
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> { self.one() }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> { self.one() }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> { self.one() }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> { self.one() }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> { self.one() }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> { self.one() }
}

#[cfg(test)]
mod tests {
    use super::{check_atomic_size, check_json_values};
    use axum::http::StatusCode;

    #[test]
    fn json_bodies_are_bounded_by_their_number_of_values() {
        assert!(check_json_values(r#"{"a":[1,2,{"b":null}]}"#, 6).is_ok());
        let refused = check_json_values(r#"{"a":[1,2,{"b":null}]}"#, 5).expect_err("7 values");
        assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(check_json_values("not json", 1).is_ok(), "the guest answers invalid JSON itself");
    }

    #[test]
    fn atomic_bodies_are_counted_before_the_guest_sees_them() {
        let ops = |n: usize| format!(r#"{{"x":1,"atomic:operations":[{}]}}"#, vec![r#"{"op":"remove"}"#; n].join(","));
        assert!(check_atomic_size(&ops(3), 3).is_ok());
        assert_eq!(check_atomic_size(&ops(4), 3).expect_err("4 > 3").status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(check_atomic_size("{", 3).expect_err("not JSON").status(), StatusCode::BAD_REQUEST);
        assert!(check_atomic_size(r#"{"atomic:operations":"x"}"#, 3).is_ok(), "the guest reports the shape");
    }
}
