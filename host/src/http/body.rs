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
    Ok(Vec::from(bytes))
}

/// [`read_body`], which must be UTF-8 (400 otherwise).
pub(super) async fn read_text(body: Body, headers: &HeaderMap, limit: usize, deadline: Duration) -> Result<String, Response> {
    let bytes = read_body(body, headers, limit, deadline).await?;
    String::from_utf8(bytes).map_err(|_| error(StatusCode::BAD_REQUEST, "the request body is not valid UTF-8"))
}

/// What one counting pass over a JSON body found.
enum Counted {
    /// Valid JSON; the length of the top-level `atomic:operations` array
    /// (the last one, as the guest reads it), if there is one.
    Json { operations: Option<usize> },
    TooManyValues,
    NotJson,
}

/// Counts the values of a JSON body without building it, stopping at the
/// first one past `max`.
fn count(body: &str, max: usize) -> Counted {
    use serde::de::DeserializeSeed;
    let tally = Tally { values: std::cell::Cell::new(0), max };
    let mut deserializer = serde_json::Deserializer::from_str(body);
    let counted = (CountValues { tally: &tally, top: true }).deserialize(&mut deserializer).and_then(|found| {
        deserializer.end()?;
        Ok(found)
    });
    match counted {
        Ok(found) => Counted::Json { operations: found.operations },
        Err(_) if tally.values.get() > max => Counted::TooManyValues,
        Err(_) => Counted::NotJson,
    }
}

fn too_many_values(max: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the JSON document holds more than {max} values (objects, arrays, strings, numbers); split it or simplify it"),
    )
}

/// Refuses (413) a JSON body with more than `max` values: what bounds the
/// guest's memory, whatever the body's shape. A body that is not JSON
/// passes: the guest answers that in its own words.
pub(super) fn check_json_values(body: &str, max: usize) -> Result<(), Response> {
    match count(body, max) {
        Counted::TooManyValues => Err(too_many_values(max)),
        _ => Ok(()),
    }
}

/// Refuses an `/_atomic` body that is not JSON (400, in the atomic error
/// shape), holds more than `max_values` values, or carries more operations
/// than allowed (413), in one pass, before the guest spends memory on it.
/// A body of another shape passes: the guest reports what is wrong with it.
pub(super) fn check_atomic_body(body: &str, max_operations: usize, max_values: usize) -> Result<(), Response> {
    match count(body, max_values) {
        Counted::NotJson => {
            let doc = json!({"errors": [{"title": "Invalid atomic:operations format", "detail": "Request body is not valid JSON"}]});
            Err(json_response(StatusCode::BAD_REQUEST, JSON_API, &doc))
        }
        Counted::TooManyValues => Err(too_many_values(max_values)),
        Counted::Json { operations: Some(count) } if count > max_operations => {
            let detail = format!("{count} operations in one request; at most {max_operations} are allowed (split the request)");
            let doc = json!({"errors": [{"status": 413, "title": "Too many operations", "detail": detail}]});
            Err(json_response(StatusCode::PAYLOAD_TOO_LARGE, JSON_API, &doc))
        }
        Counted::Json { .. } => Ok(()),
    }
}

/// The running count of one pass.
struct Tally {
    values: std::cell::Cell<usize>,
    max: usize,
}

/// Counts one value (and everything in it) into the tally, failing past
/// the maximum. At the top level it also notes `atomic:operations`.
struct CountValues<'a> {
    tally: &'a Tally,
    top: bool,
}

/// What a counted value tells its parent.
#[derive(Default)]
struct Found {
    /// The number of elements, when the value is an array.
    elements: Option<usize>,
    /// At the top level: the length of the last `atomic:operations` array.
    operations: Option<usize>,
}

impl CountValues<'_> {
    fn one<E: serde::de::Error>(&self) -> Result<Found, E> {
        self.tally.values.set(self.tally.values.get() + 1);
        if self.tally.values.get() > self.tally.max {
            Err(E::custom("too many JSON values"))
        } else {
            Ok(Found::default())
        }
    }

    fn inner(&self) -> CountValues<'_> {
        CountValues { tally: self.tally, top: false }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for CountValues<'_> {
    type Value = Found;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Found, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for CountValues<'_> {
    type Value = Found;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
        let mut found = self.one()?;
        let mut elements = 0;
        while seq.next_element_seed(self.inner())?.is_some() {
            elements += 1;
        }
        found.elements = Some(elements);
        Ok(found)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        let mut found = self.one()?;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let value = map.next_value_seed(self.inner())?;
            if self.top && key == "atomic:operations" {
                found.operations = value.elements;
            }
        }
        Ok(found)
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Found, E> { self.one() }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Found, E> { self.one() }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Found, E> { self.one() }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Found, E> { self.one() }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Found, E> { self.one() }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Found, E> { self.one() }
}

#[cfg(test)]
mod tests {
    use super::{check_atomic_body, check_json_values};
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
        let check = |body: &str| check_atomic_body(body, 3, 1000).map_err(|r| r.status());
        assert!(check(&ops(3)).is_ok());
        assert_eq!(check(&ops(4)), Err(StatusCode::PAYLOAD_TOO_LARGE));
        assert_eq!(check("{"), Err(StatusCode::BAD_REQUEST), "not JSON");
        assert_eq!(check("{} x"), Err(StatusCode::BAD_REQUEST), "trailing garbage");
        assert!(check(r#"{"atomic:operations":"x"}"#).is_ok(), "the guest reports the shape");
        // A repeated key cannot hide the operations the guest will run (it reads the last).
        let repeated = format!(r#"{{"atomic:operations":[],{}"#, &ops(4)[1..]);
        assert_eq!(check(&repeated), Err(StatusCode::PAYLOAD_TOO_LARGE));
        assert_eq!(check_atomic_body(&ops(3), 3, 5).map_err(|r| r.status()), Err(StatusCode::PAYLOAD_TOO_LARGE), "values");
    }
}
