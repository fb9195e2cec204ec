//! Realm events: the outbox every committed write appends to, and the
//! Server-Sent Events stream `GET <realm>_events` that serves it.
//!
//! * One event per committed write request, whatever the route (card
//!   POST/PATCH/DELETE, source POST/DELETE, binary POST, `/_atomic`), with
//!   the URLs it changed and its `X-Boxel-Client-Request-Id`; none for a
//!   no-op or a refused / rolled-back write (also when rolled back members
//!   share a coalesced batch with committed ones).
//! * Resume: `Last-Event-ID` / `?lastEventId=` replay exactly what was
//!   missed, also while writes go on (the replay/live seam); one `reset`
//!   when the id is older than the retained window (count or age) or from
//!   the future. Sequence numbers never restart, even when every event has
//!   aged out.
//! * Read permission exactly as a card GET; heartbeats as SSE comments.
//! * Back-pressure: a stalled subscriber is dropped without slowing writers
//!   or other subscribers, and resumes missing nothing.
//! * Postgres: 2 replicas, 1 000 concurrent writes, every subscriber gets
//!   every event once in order; a replica killed with SIGKILL (its
//!   subscribers resume on the other one); Postgres restarted under load
//!   (no acknowledged event lost, no event for a refused write).
//!
//! Every wait is on the stream itself (read until the expected event
//! arrives, with a generous timeout); the only sleeps are the passage of
//! time under test (`--events-retain-age`, heartbeat rate) and back-offs.
//!
//! Assumes, beyond the contract: a realm's first event is seq 1; a stream
//! is subscribed once its response headers have arrived (an event
//! committed after that reaches it); `Last-Event-ID: N` replays when no
//! event after N was pruned (so `0` replays everything while nothing was
//! pruned, and N = oldest retained - 1 replays); on replicas, `realmURL`
//! and the invalidations name the realm as it was created (the first
//! server's port), whichever replica is asked.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::header::{ACCEPT, CONTENT_TYPE, IF_MATCH};
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};

use crate::harness::*;
use crate::lock_holder::LockHolder;
use crate::pg::{self, PgCluster};

const EVENT_STREAM: &str = "text/event-stream";
const CLIENT_REQUEST_ID: &str = "X-Boxel-Client-Request-Id";
/// How long we wait for an expected event or a stream's headers
/// (generous: debug builds, 2 cores, Postgres).
const EVENT_WAIT: Duration = Duration::from_secs(30);

// This module's tests, each on SQLite and Postgres.
on_both_backends!(
    every_write_appends_one_event_naming_what_it_changed,
    a_rolled_back_atomic_appends_no_event,
    a_resume_replays_exactly_the_missed_events_then_goes_live,
    a_resume_from_before_the_retained_window_or_from_the_future_is_one_reset,
    events_past_the_retained_age_are_pruned_and_seqs_never_restart,
    the_stream_needs_read_permission_exactly_like_a_card_get,
    heartbeats_are_comments_at_the_configured_interval,
    a_stream_outlives_the_idle_timeout_of_connections,
    a_stalled_subscriber_is_dropped_without_slowing_anyone_and_resumes_missing_nothing,
    a_reading_subscriber_keeps_up_with_one_commit_of_more_events_than_the_buffer,
);

// ---------------------------------------------------------------------------
// Server-Sent Events

/// Where a stream starts.
#[derive(Clone, Copy, Debug)]
enum Start {
    /// No `Last-Event-ID`: events committed after the connection.
    Now,
    /// `Last-Event-ID: N` header.
    Header(u64),
    /// `?lastEventId=N`.
    Query(u64),
}

fn events_url(realm: &str, from: Start) -> String {
    match from {
        Start::Query(n) => format!("{realm}_events?lastEventId={n}"),
        _ => format!("{realm}_events"),
    }
}

/// A client for streams: no overall timeout (a stream lasts as long as the
/// test needs), a connect timeout, its own connections.
fn stream_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .build()
        .expect("build reqwest client")
}

/// `GET <realm>_events` with `Accept: text/event-stream`, up to the
/// response headers (the body is left unread).
async fn open(realm: &str, token: Option<&str>, from: Start) -> Result<reqwest::Response, String> {
    let url = events_url(realm, from);
    let mut request = stream_client().get(&url).header(ACCEPT, EVENT_STREAM);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Start::Header(n) = from {
        request = request.header("Last-Event-ID", n.to_string());
    }
    match tokio::time::timeout(EVENT_WAIT, request.send()).await {
        Err(_) => Err(format!("GET {url} ({from:?}): no response headers within {EVENT_WAIT:?}")),
        Ok(Err(e)) => Err(format!("GET {url} ({from:?}): {e}")),
        Ok(Ok(response)) => Ok(response),
    }
}

/// A subscribed stream: asserts 200 and `content-type: text/event-stream`.
async fn subscribe(realm: &str, token: Option<&str>, from: Start) -> Sse {
    let label = format!("{} ({from:?})", events_url(realm, from));
    let response = open(realm, token, from).await.unwrap_or_else(|e| panic!("{e}"));
    Sse::new(response, &label).await
}

/// One dispatched SSE event.
#[derive(Clone, PartialEq)]
struct Event {
    id: Option<String>,
    /// The `event:` field (`None`: a default "message").
    event: Option<String>,
    /// Each `data:` line.
    data: Vec<String>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let data = brief(&self.data.join("\\n"));
        write!(f, "{{id: {:?}, event: {:?}, data: {data}}}", self.id, self.event)
    }
}

impl Event {
    /// The `id:` as a sequence number.
    fn seq(&self) -> u64 {
        self.id
            .as_deref()
            .and_then(|id| id.trim().parse().ok())
            .unwrap_or_else(|| panic!("an event without a numeric id: {self:?}"))
    }

    fn payload(&self) -> Value {
        let data = self.data.join("\n");
        serde_json::from_str(&data).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {self:?}"))
    }

    fn is_reset(&self) -> bool {
        self.event.as_deref() == Some("reset")
    }

    fn client_request_id(&self) -> Option<String> {
        self.payload()["clientRequestId"].as_str().map(String::from)
    }

    fn invalidations(&self) -> Vec<String> {
        let payload = self.payload();
        let list = payload["invalidations"].as_array().unwrap_or_else(|| panic!("no invalidations list in {self:?}"));
        list.iter().map(|u| u.as_str().unwrap_or_else(|| panic!("a non-string invalidation in {self:?}")).to_string()).collect()
    }
}

/// What a stream yields.
#[derive(Debug)]
enum Item {
    Event(Event),
    /// A `:` comment line (a heartbeat), its text after the colon, trimmed.
    Comment(String),
}

/// The field lines of the event being read.
#[derive(Default)]
struct Pending {
    id: Option<String>,
    event: Option<String>,
    data: Vec<String>,
    any: bool,
}

/// An SSE reader over a response body (`Response::chunk`): `id:`,
/// `event:`, `data:` lines (one leading space of the value dropped), a
/// blank line ends an event, `:` lines are comments; LF or CRLF endings.
struct Sse {
    label: String,
    response: reqwest::Response,
    buffer: Vec<u8>,
    /// How far `buffer` is known to hold no line end.
    scanned: usize,
    pending: Pending,
    /// Why the stream ended, once it has.
    ended: Option<String>,
    /// Events read so far (for failure messages).
    seen: usize,
    last_id: Option<String>,
}

impl Sse {
    async fn new(response: reqwest::Response, label: &str) -> Sse {
        let status = response.status().as_u16();
        let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if status != 200 {
            let body = response.text().await.unwrap_or_else(|e| format!("<body unreadable: {e}>"));
            panic!("{label}: expected 200, got {status} ({content_type}): {}", brief(&body));
        }
        let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        assert_eq!(media, EVENT_STREAM, "{label}: content-type of an event stream");
        Sse {
            label: label.to_string(),
            response,
            buffer: Vec::new(),
            scanned: 0,
            pending: Pending::default(),
            ended: None,
            seen: 0,
            last_id: None,
        }
    }

    /// The next event or comment; `None` once the stream has ended (see
    /// `ended`). Cancel-safe: nothing is lost when the future is dropped.
    async fn next_item(&mut self) -> Option<Item> {
        loop {
            while let Some(offset) = self.buffer[self.scanned..].iter().position(|b| *b == b'\n') {
                let end = self.scanned + offset;
                let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
                self.scanned = 0;
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                let line = String::from_utf8_lossy(&line).into_owned();
                if let Some(item) = self.feed(&line) {
                    return Some(item);
                }
            }
            self.scanned = self.buffer.len();
            if self.ended.is_some() {
                return None;
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.buffer.extend_from_slice(&bytes),
                Ok(None) => self.ended = Some("the stream ended".into()),
                Err(e) => self.ended = Some(format!("the stream broke: {e}")),
            }
        }
    }

    fn feed(&mut self, line: &str) -> Option<Item> {
        if line.is_empty() {
            if !std::mem::take(&mut self.pending.any) {
                return None;
            }
            let pending = std::mem::take(&mut self.pending);
            let event = Event { id: pending.id, event: pending.event, data: pending.data };
            self.seen += 1;
            self.last_id = event.id.clone().or(self.last_id.take());
            return Some(Item::Event(event));
        }
        if let Some(comment) = line.strip_prefix(':') {
            return Some(Item::Comment(comment.trim().to_string()));
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "id" => self.pending.id = Some(value.to_string()),
            "event" => self.pending.event = Some(value.to_string()),
            "data" => self.pending.data.push(value.to_string()),
            _ => return None, // `retry` and unknown fields
        }
        self.pending.any = true;
        None
    }

    fn describe(&self) -> String {
        format!("{} (read {} events, last id {:?}, {})", self.label, self.seen, self.last_id, self.ended.as_deref().unwrap_or("still open"))
    }

    /// The next event (comments skipped) within [`EVENT_WAIT`]; panics,
    /// naming `what` was awaited, when the stream ends or nothing comes.
    async fn next_event(&mut self, what: &str) -> Event {
        let deadline = tokio::time::Instant::now() + EVENT_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.next_item()).await {
                Err(_) => panic!("{}: no event within {EVENT_WAIT:?} while waiting for {what}", self.describe()),
                Ok(None) => panic!("{}: the stream ended while waiting for {what}", self.describe()),
                Ok(Some(Item::Comment(_))) => {}
                Ok(Some(Item::Event(event))) => return event,
            }
        }
    }

    /// The next `n` events.
    async fn next_events(&mut self, n: usize, what: &str) -> Vec<Event> {
        let mut events = Vec::with_capacity(n);
        for i in 0..n {
            events.push(self.next_event(&format!("{what} (event {} of {n})", i + 1)).await);
        }
        events
    }

    /// Events until (and with) the one whose seq is `last`; panics on a
    /// reset or an event past it.
    async fn events_through(&mut self, last: u64, what: &str) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let event = self.next_event(&format!("{what} (through seq {last})")).await;
            assert!(!event.is_reset(), "{}: unexpected {event:?} while reading {what}", self.describe());
            let seq = event.seq();
            events.push(event);
            if seq >= last {
                assert_eq!(seq, last, "{}: {what}: skipped past seq {last}", self.describe());
                return events;
            }
        }
    }

    /// Reads until the stream ends (within `within`): the events it had left.
    async fn read_to_end(&mut self, within: Duration) -> Result<Vec<Event>, Vec<Event>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut events = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.next_item()).await {
                Err(_) => return Err(events),
                Ok(None) => return Ok(events),
                Ok(Some(Item::Comment(_))) => {}
                Ok(Some(Item::Event(event))) => events.push(event),
            }
        }
    }
}

/// At most 300 characters of `text`.
fn brief(text: &str) -> String {
    let mut out: String = text.chars().take(300).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

// ---------------------------------------------------------------------------
// Expected events

/// `{"eventName":"index","indexType":"incremental",…}` exactly.
fn index_payload(realm: &str, invalidations: &[String], client_request_id: Option<&str>) -> Value {
    json!({
        "eventName": "index",
        "indexType": "incremental",
        "invalidations": invalidations,
        "clientRequestId": client_request_id,
        "realmURL": realm,
    })
}

fn assert_index_event(event: &Event, seq: u64, realm: &str, invalidations: &[String], client_request_id: Option<&str>, what: &str) {
    assert_eq!(event.event, None, "{what}: an index event is a default message (no `event:` field): {event:?}");
    assert_eq!(event.seq(), seq, "{what}: its event's id (every earlier write that changed nothing or was refused must have appended nothing): {event:?}");
    assert_eq!(event.data.len(), 1, "{what}: the payload is one `data:` line: {event:?}");
    assert_eq!(event.payload(), index_payload(realm, invalidations, client_request_id), "{what}: the payload of event {seq}");
}

/// Asserts the one `reset` a stream starts with.
fn assert_reset(event: &Event, newest: u64, realm: &str, what: &str) {
    assert_eq!(event.event.as_deref(), Some("reset"), "{what}: a resume past the retained window starts with `event: reset`: {event:?}");
    assert_eq!(event.seq(), newest, "{what}: the reset carries the newest seq: {event:?}");
    assert_eq!(event.payload(), json!({ "eventName": "reset", "realmURL": realm }), "{what}: the reset's data");
}

/// Asserts `events` are seqs `first, first+1, …` (no reset among them).
fn assert_contiguous(events: &[Event], first: u64, what: &str) {
    for (i, event) in events.iter().enumerate() {
        assert!(!event.is_reset(), "{what}: an unexpected reset at position {i}: {event:?}");
        assert_eq!(event.seq(), first + i as u64, "{what}: event {i} of {} (seqs: {:?})", events.len(), seqs(events));
    }
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.id.as_deref().and_then(|id| id.parse().ok()).unwrap_or(u64::MAX)).collect()
}

/// Follows one realm's events in step with the writes: each real write's
/// event must be the next one, one seq further.
struct Expect {
    realm: String,
    seq: u64,
}

impl Expect {
    /// A fresh realm: its first event is 1.
    fn fresh(realm: &str) -> Expect {
        Expect { realm: realm.to_string(), seq: 0 }
    }

    async fn next(&mut self, sse: &mut Sse, what: &str, invalidations: &[String], client_request_id: Option<&str>) -> Event {
        let event = sse.next_event(what).await;
        self.seq += 1;
        assert_index_event(&event, self.seq, &self.realm, invalidations, client_request_id, what);
        event
    }
}

// ---------------------------------------------------------------------------
// Requests

fn with_id(request: RequestBuilder, id: &str) -> RequestBuilder {
    request.header(CLIENT_REQUEST_ID, id)
}

fn serve_args(args: &[&str]) -> ServerOptions {
    ServerOptions { serve_args: args.iter().map(|a| a.to_string()).collect(), ..ServerOptions::default() }
}

/// A source resource for `/_atomic`.
fn source(content: &str) -> Value {
    json!({ "type": "source", "attributes": { "content": content }, "meta": {} })
}

fn atomic_op(kind: &str, href: &str, data: Value) -> Value {
    json!({ "op": kind, "href": href, "data": data })
}

/// A Person for POST create at a realm root (module relative to the realm,
/// so it means the same on every replica).
fn new_person(attributes: Value) -> Value {
    card_doc("./person", "Person", Some(attributes), None)
}

/// A Person patch for a card at `Person/<id>` (module relative to the card).
fn person_patch(attributes: Value) -> Value {
    card_doc("../person", "Person", Some(attributes), None)
}

/// The part of a `test` realm URL after `/test/` (replica-independent).
fn local_of(url: &str) -> String {
    url.split_once("/test/").map(|(_, local)| local.to_string()).unwrap_or_else(|| panic!("{url} is not in a `test` realm"))
}

// ---------------------------------------------------------------------------
// 1. One event per committed write, none for a no-op or a refusal

async fn every_write_appends_one_event_naming_what_it_changed(backend: Backend) {
    let srv = backend.start().await;
    let (realm, pubread) = (srv.realm("test"), srv.realm("pubread"));
    let http = srv.client();
    let bob = srv.client_as(BOB, &pubread, &["read", "write"]).await;
    let mut sse = subscribe(&realm, None, Start::Now).await;
    let mut other = subscribe(&pubread, None, Start::Now).await;
    let mut ex = Expect::fresh(&realm);

    // Card POST (create), with a client request id.
    let resp = with_id(http.create_card(&realm, &person_doc(&realm, json!({ "firstName": "Ada" }))), "create-1").fetch().await.expect_status(201);
    let card = resp.json()["data"]["id"].as_str().expect("data.id").to_string();
    ex.next(&mut sse, "card POST", std::slice::from_ref(&card), Some("create-1")).await;

    // PATCH without the header: clientRequestId null.
    let patch = person_doc(&realm, json!({ "firstName": "Grace" }));
    let etag = http.patch_card(&card, &patch).fetch().await.expect_status(200).etag();
    ex.next(&mut sse, "card PATCH without X-Boxel-Client-Request-Id", std::slice::from_ref(&card), None).await;

    // Nothing for: a no-op PATCH, If-Match failing (412), a body that is
    // not JSON (400), DELETE of a missing card (404), a write without
    // permission (401, another realm anyway).
    let same = with_id(http.patch_card(&card, &patch), "noop-patch").fetch().await.expect_status(200);
    assert_eq!(same.etag(), etag, "a no-op PATCH keeps the ETag");
    let refused = http.patch_card(&card, &person_doc(&realm, json!({ "firstName": "Refused" }))).header(IF_MATCH, "\"not-the-etag\"");
    with_id(refused, "refused-412").fetch().await.card_error(412);
    let not_json = http.request(Method::PATCH, &card, CARD_JSON).header(CONTENT_TYPE, CARD_JSON).body("{not json");
    with_id(not_json, "refused-400").fetch().await.card_error(400);
    with_id(http.delete_card(&format!("{realm}Person/missing")), "refused-404").fetch().await.card_error(404);
    let private = srv.realm("private");
    with_id(http.write_source(&format!("{private}x.txt"), "x"), "refused-401").fetch().await.card_error(401);

    // Source POST of a module: its file URL.
    let gts = format!("{realm}person.gts");
    with_id(http.write_source(&gts, "export class Person {}"), "source-1").fetch().await.expect_status(204);
    ex.next(&mut sse, "source POST of person.gts (after a no-op PATCH and four refused writes)", std::slice::from_ref(&gts), Some("source-1")).await;
    // The same bytes again: nothing.
    with_id(http.write_source(&gts, "export class Person {}"), "noop-source").fetch().await.expect_status(204);

    // Source POST of a card file: its card URL, without `.json`.
    let card_text = file_text(&card_doc("../person", "Person", Some(json!({ "firstName": "Src" })), None));
    http.write_source(&format!("{realm}Person/src.json"), card_text).fetch().await.expect_status(204);
    ex.next(&mut sse, "source POST of a card file Person/src.json (after an identical source POST)", &[format!("{realm}Person/src")], None).await;

    // Binary POST: its file URL; the same bytes again: nothing.
    let png = format!("{realm}images/logo.png");
    let bytes: Vec<u8> = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0xff, 0xfe];
    with_id(http.post_bytes(&png, "image/png", bytes.clone()), "binary-1").fetch().await.expect_status(204);
    ex.next(&mut sse, "binary POST of images/logo.png", std::slice::from_ref(&png), Some("binary-1")).await;
    with_id(http.post_bytes(&png, "image/png", bytes), "noop-binary").fetch().await.expect_status(204);

    // Card POST side-loading an `included` card: both new cards, each once
    // (the order of the primary and its side-loaded card is not asserted).
    let module = format!("{realm}person");
    let with_included = json!({
        "data": {
            "type": "card",
            "attributes": { "firstName": "Primary" },
            "relationships": { "bestFriend": { "data": { "lid": "friend-lid" } } },
            "meta": { "adoptsFrom": { "module": module, "name": "Person" } },
        },
        "included": [{
            "type": "card",
            "lid": "friend-lid",
            "attributes": { "firstName": "Friend" },
            "meta": { "adoptsFrom": { "module": module, "name": "Person" } },
        }],
    });
    let resp = with_id(http.create_card(&realm, &with_included), "create-included").fetch().await.expect_status(201);
    let primary = resp.json()["data"]["id"].as_str().expect("data.id").to_string();
    let friend = format!("{realm}Person/friend-lid");
    http.get_card(&friend).fetch().await.expect_status(200); // the side-loaded card was written where we expect
    let event = sse.next_event("card POST with an included card").await;
    ex.seq += 1;
    let mut got = event.invalidations();
    assert_eq!(got.len(), 2, "card POST with included: each new card once: {event:?}");
    got.sort();
    let mut want = vec![primary.clone(), friend.clone()];
    want.sort();
    assert_eq!(got, want, "card POST with included: the primary and the side-loaded card: {event:?}");
    let invalidations = event.invalidations();
    assert_index_event(&event, ex.seq, &realm, &invalidations, Some("create-included"), "card POST with included");

    // `/_atomic`: every op's URL, in op order.
    let body = json!({ "atomic:operations": [
        atomic_op("add", "Pet/a.json", card_resource(&format!("{realm}pet"), "Pet", Some(json!({ "name": "A" })), None)),
        atomic_op("add", "notes.txt", source("notes")),
        atomic_op("update", "person.gts", source("export class Person { v = 2 }")),
    ]});
    with_id(http.atomic(&realm, &body), "atomic-1").fetch().await.expect_status(201);
    let atomic_urls = vec![format!("{realm}Pet/a"), format!("{realm}notes.txt"), gts.clone()];
    ex.next(&mut sse, "/_atomic of a card, a new file and an update", &atomic_urls, Some("atomic-1")).await;

    // `/_atomic` whose last op fails: rolled back, nothing.
    let failing = json!({ "atomic:operations": [
        atomic_op("add", "Pet/b.json", card_resource(&format!("{realm}pet"), "Pet", Some(json!({ "name": "B" })), None)),
        atomic_op("add", "other.txt", source("other")),
        atomic_op("update", "missing.txt", source("nope")),
    ]});
    let resp = with_id(http.atomic(&realm, &failing), "atomic-failing").fetch().await;
    resp.atomic_errors(404);
    assert_eq!(http.source_status(&format!("{realm}Pet/b.json")).await, 404, "the failed /_atomic wrote nothing");

    // A write in another realm is that realm's event (its own seq 1), not this one's.
    let elsewhere = format!("{pubread}hello.txt");
    with_id(bob.write_source(&elsewhere, "hi"), "other-realm").fetch().await.expect_status(204);
    let event = other.next_event("the write in pubread").await;
    assert_index_event(&event, 1, &pubread, &[elsewhere], Some("other-realm"), "a write in pubread, on pubread's stream");

    // Card DELETE: its card URL.
    with_id(http.delete_card(&card), "delete-1").fetch().await.expect_status(204);
    ex.next(&mut sse, "card DELETE (after a failed /_atomic and a write in another realm)", std::slice::from_ref(&card), Some("delete-1")).await;

    // Source DELETE: its file URL.
    http.delete_source(&gts).fetch().await.expect_status(204);
    ex.next(&mut sse, "source DELETE of person.gts", std::slice::from_ref(&gts), None).await;
    with_id(http.delete_source(&gts), "refused-delete").fetch().await.card_error(404);

    // A last write: nothing came between.
    let marker = format!("{realm}marker.txt");
    with_id(http.write_source(&marker, "end"), "marker").fetch().await.expect_status(204);
    ex.next(&mut sse, "the last write (after a refused source DELETE)", &[marker], Some("marker")).await;
}

// ---------------------------------------------------------------------------
// 9. A rolled-back `/_atomic` appends nothing, alone or in a shared batch

async fn a_rolled_back_atomic_appends_no_event(backend: Backend) {
    let srv = backend.start().await;
    let realm = srv.realm("test");
    let http = srv.client();
    let mut sse = subscribe(&realm, None, Start::Now).await;
    let mut ex = Expect::fresh(&realm);
    let existing = format!("{realm}existing.txt");
    http.seed(&existing, "here").await;
    ex.next(&mut sse, "the seed", std::slice::from_ref(&existing), None).await;

    let pet = |name: &str| card_resource(&format!("{realm}pet"), "Pet", Some(json!({ "name": name })), None);
    let refusals: Vec<(&str, Value, u16)> = vec![
        ("update of a missing file last", json!({ "atomic:operations": [
            atomic_op("add", "Pet/x.json", pet("X")),
            atomic_op("add", "y.txt", source("y")),
            atomic_op("update", "missing.txt", source("nope")),
        ]}), 404),
        ("add of an existing file", json!({ "atomic:operations": [
            atomic_op("add", "z.txt", source("z")),
            atomic_op("add", "existing.txt", source("again")),
        ]}), 409),
        ("remove of a missing file", json!({ "atomic:operations": [
            atomic_op("update", "existing.txt", source("changed")),
            json!({ "op": "remove", "href": "gone.txt" }),
        ]}), 404),
        ("an invalid op", json!({ "atomic:operations": [
            atomic_op("add", "w.txt", source("w")),
            atomic_op("add", "Pet/bad.json", json!({ "type": "card", "attributes": {} })),
        ]}), 400),
    ];
    for (what, body, status) in &refusals {
        let resp = with_id(http.atomic(&realm, body), what).fetch().await;
        assert_eq!(resp.status, *status, "/_atomic with {what}:\n{resp}");
    }
    let not_json = http.request(Method::POST, &format!("{realm}_atomic"), JSON_API).header(CONTENT_TYPE, JSON_API).body("{");
    assert_eq!(not_json.fetch().await.status, 400);
    for path in ["Pet/x.json", "y.txt", "z.txt", "w.txt"] {
        assert_eq!(http.source_status(&format!("{realm}{path}")).await, 404, "{path}: a refused /_atomic wrote nothing");
    }
    assert_eq!(http.read(&existing).await, "here");

    let body = json!({ "atomic:operations": [atomic_op("update", "existing.txt", source("changed"))] });
    with_id(http.atomic(&realm, &body), "atomic-ok").fetch().await.expect_status(201);
    ex.next(&mut sse, "the /_atomic that commits, after five refused ones", std::slice::from_ref(&existing), Some("atomic-ok")).await;

    // Failing and committing writes at once (on Postgres they may share a
    // coalesced transaction): only the committed ones have events.
    let mut requests = Vec::new();
    for i in 0..10 {
        let good = format!("{realm}good-{i}.txt");
        requests.push(tokio::spawn(with_id(http.write_source(&good, format!("good {i}")), &format!("good-{i}")).fetch()));
        let bad = json!({ "atomic:operations": [
            atomic_op("add", &format!("bad-{i}.txt"), source("bad")),
            atomic_op("update", &format!("missing-{i}.txt"), source("nope")),
        ]});
        requests.push(tokio::spawn(with_id(http.atomic(&realm, &bad), &format!("bad-{i}")).fetch()));
    }
    let answers: Vec<Resp> = join_all(requests).await.into_iter().map(|r| r.expect("task")).collect();
    for resp in &answers {
        let want = if resp.method == Method::POST && resp.url.ends_with("_atomic") { 404 } else { 204 };
        assert_eq!(resp.status, want, "{resp}");
    }
    let events = sse.next_events(10, "the 10 committed source POSTs").await;
    assert_contiguous(&events, ex.seq + 1, "the concurrent writes");
    ex.seq += 10;
    let mut ids: Vec<String> = events.iter().map(|e| e.client_request_id().unwrap_or_else(|| format!("<null in {e:?}>"))).collect();
    ids.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("good-{i}")).collect();
    want.sort();
    assert_eq!(ids, want, "only the committed writes have events");
    for event in &events {
        let id = event.client_request_id().expect("id");
        let i: usize = id.trim_start_matches("good-").parse().expect("good-N");
        assert_eq!(event.invalidations(), vec![format!("{realm}good-{i}.txt")], "{event:?}");
    }
    let marker = format!("{realm}marker.txt");
    with_id(http.write_source(&marker, "end"), "marker").fetch().await.expect_status(204);
    ex.next(&mut sse, "the last write (after 10 rolled-back /_atomic)", &[marker], Some("marker")).await;
}

// ---------------------------------------------------------------------------
// 2. Resume

async fn a_resume_replays_exactly_the_missed_events_then_goes_live(backend: Backend) {
    let srv = backend.start().await;
    let realm = srv.realm("test");
    let http = srv.client();
    let mut live = subscribe(&realm, None, Start::Now).await;
    let mut ex = Expect::fresh(&realm);
    let mut history = Vec::new();
    for i in 1..=6 {
        let url = format!("{realm}notes-{i}.txt");
        with_id(http.write_source(&url, format!("note {i}")), &format!("r{i}")).fetch().await.expect_status(204);
        history.push(ex.next(&mut live, &format!("write {i}"), &[url], Some(&format!("r{i}"))).await);
    }

    let mut header = subscribe(&realm, None, Start::Header(3)).await;
    let mut query = subscribe(&realm, None, Start::Query(3)).await;
    let mut newest = subscribe(&realm, None, Start::Header(6)).await;
    let mut zero = subscribe(&realm, None, Start::Header(0)).await;
    assert_eq!(header.next_events(3, "the replay after Last-Event-ID: 3").await, history[3..].to_vec(), "Last-Event-ID: 3 replays 4..=6 as they were");
    assert_eq!(query.next_events(3, "the replay after ?lastEventId=3").await, history[3..].to_vec(), "?lastEventId=3 replays 4..=6 as they were");
    assert_eq!(zero.next_events(6, "the replay after Last-Event-ID: 0").await, history, "Last-Event-ID: 0 replays everything (nothing pruned)");

    // Then live: the next write is the next event of every stream (and the
    // first of the one that resumed from the newest id).
    let url = format!("{realm}notes-7.txt");
    with_id(http.write_source(&url, "note 7"), "r7").fetch().await.expect_status(204);
    let seventh = ex.next(&mut live, "write 7, live", std::slice::from_ref(&url), Some("r7")).await;
    for (sse, what) in [(&mut header, "Last-Event-ID: 3"), (&mut query, "?lastEventId=3"), (&mut newest, "Last-Event-ID: 6 (the newest)"), (&mut zero, "Last-Event-ID: 0")] {
        let event = sse.next_event(&format!("write 7 after the replay of {what}")).await;
        assert_eq!(event, seventh, "{what}: after the replay, the live event 7 and nothing else");
    }

    // Resuming while writes go on: replay and live meet without a gap or a
    // repeat. Three streams open while 30 writes are in flight, resuming
    // from points behind the newest event.
    const SEAM_WRITES: u64 = 30;
    let writer = {
        let (http, realm) = (http.clone(), realm.clone());
        tokio::spawn(async move {
            for i in 0..SEAM_WRITES {
                let url = format!("{realm}seam-{i}.txt");
                with_id(http.write_source(&url, format!("seam {i}")), &format!("seam-{i}")).fetch().await.expect_status(204);
            }
        })
    };
    let last = 7 + SEAM_WRITES;
    let mut resumed: Vec<(u64, Sse)> = Vec::new();
    let mut live_events = Vec::new();
    let opens = [(12u64, Start::Header(2)), (22, Start::Query(15)), (32, Start::Header(30))];
    while live_events.last().map(Event::seq) != Some(last) {
        let event = live.next_event("the seam writes, live").await;
        let seq = event.seq();
        live_events.push(event);
        for (at, from) in opens {
            if seq == at {
                let after = match from {
                    Start::Header(n) | Start::Query(n) => n,
                    Start::Now => unreachable!(),
                };
                resumed.push((after, subscribe(&realm, None, from).await));
            }
        }
    }
    writer.await.expect("writer");
    assert_contiguous(&live_events, 8, "the live stream during the seam writes");
    let everything: Vec<Event> = history.iter().chain(std::iter::once(&seventh)).chain(live_events.iter()).cloned().collect();
    for (after, sse) in &mut resumed {
        let what = format!("the stream resumed from {after} during the writes");
        let got = sse.events_through(last, &what).await;
        assert_eq!(got, everything[*after as usize..].to_vec(), "{what}: every event after {after} once, in order");
    }
}

async fn a_resume_from_before_the_retained_window_or_from_the_future_is_one_reset(backend: Backend) {
    let srv = backend.start_with(serve_args(&["--events-retain-count", "5"])).await;
    let realm = srv.realm("test");
    let http = srv.client();
    let mut live = subscribe(&realm, None, Start::Now).await;
    let mut ex = Expect::fresh(&realm);
    let mut history = Vec::new();
    for i in 1..=20 {
        let url = format!("{realm}notes-{i}.txt");
        http.write_source(&url, format!("note {i}")).fetch().await.expect_status(204);
        history.push(ex.next(&mut live, &format!("write {i}"), &[url], None).await);
    }
    // Retained: 16..=20.
    let mut resets = Vec::new();
    for from in [Start::Header(1), Start::Header(14), Start::Query(1), Start::Header(1000), Start::Query(21)] {
        let mut sse = subscribe(&realm, None, from).await;
        let event = sse.next_event(&format!("the reset of a resume {from:?}")).await;
        assert_reset(&event, 20, &realm, &format!("resume {from:?} with 16..=20 retained"));
        resets.push((from, sse));
    }
    // Nothing missing after 15: a replay, no reset.
    let mut fifteen = subscribe(&realm, None, Start::Header(15)).await;
    assert_eq!(fifteen.next_events(5, "the replay after 15").await, history[15..].to_vec(), "Last-Event-ID: 15 with 16..=20 retained replays them");

    // Every stream continues live after its reset (or replay): event 21 is next.
    let url = format!("{realm}notes-21.txt");
    with_id(http.write_source(&url, "note 21"), "after-reset").fetch().await.expect_status(204);
    let next = ex.next(&mut live, "write 21", &[url], Some("after-reset")).await;
    for (from, sse) in &mut resets {
        assert_eq!(sse.next_event(&format!("write 21 after the reset of {from:?}")).await, next, "{from:?}: one reset, then live from 21");
    }
    assert_eq!(fifteen.next_event("write 21 after the replay from 15").await, next);
    // The window moved with the write: 17..=21 retained now.
    let mut sse = subscribe(&realm, None, Start::Header(15)).await;
    assert_reset(&sse.next_event("a resume from 15 with 17..=21 retained").await, 21, &realm, "resume from 15 after one more write");
    let mut sse = subscribe(&realm, None, Start::Header(16)).await;
    assert_eq!(sse.next_events(5, "a resume from 16").await, [&history[16..], std::slice::from_ref(&next)].concat());
}

async fn events_past_the_retained_age_are_pruned_and_seqs_never_restart(backend: Backend) {
    let srv = backend.start_with(serve_args(&["--events-retain-age", "2s"])).await;
    let realm = srv.realm("test");
    let http = srv.client();
    let mut live = subscribe(&realm, None, Start::Now).await;
    let mut ex = Expect::fresh(&realm);
    let write = |i: u32| {
        let (http, url) = (http.clone(), format!("{realm}aged-{i}.txt"));
        async move {
            http.write_source(&url, format!("aged {i}")).fetch().await.expect_status(204);
            url
        }
    };
    for i in 1..=3 {
        let url = write(i).await;
        ex.next(&mut live, &format!("write {i}"), &[url], None).await;
    }
    // The passage of time is what is under test here.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let url = write(4).await;
    ex.next(&mut live, "write 4, 3.5 s later", &[url], None).await;
    // 1..=3 are older than 2 s: a resume from 1 is a reset. The contract
    // does not say when age pruning runs (at the write, or periodically:
    // the host prunes by age once a minute), hence the 90 s.
    const AGE_PRUNE_WAIT: Duration = Duration::from_secs(90);
    let deadline = Instant::now() + AGE_PRUNE_WAIT;
    loop {
        let mut sse = subscribe(&realm, None, Start::Header(1)).await;
        let event = sse.next_event("the first event of a resume from 1").await;
        if event.is_reset() {
            assert_reset(&event, 4, &realm, "resume from 1 after events 2 and 3 aged out");
            break;
        }
        assert_eq!(event.seq(), 2, "a resume from 1 either resets or replays from 2: {event:?}");
        assert!(Instant::now() < deadline, "events 2 and 3 (older than --events-retain-age 2s) were not pruned within {AGE_PRUNE_WAIT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Everything ages out; the next write still continues the sequence
    // (read on a fresh stream: `live` is over a minute old by now).
    drop(live);
    let mut after_four = subscribe(&realm, None, Start::Header(4)).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let url = write(5).await;
    ex.next(&mut after_four, "write 5, after every earlier event aged out (seqs never restart)", &[url], None).await;
    let mut sse = subscribe(&realm, None, Start::Header(2)).await;
    assert_reset(&sse.next_event("a resume from 2 after everything before 5 aged out").await, 5, &realm, "resume from 2");
}

// ---------------------------------------------------------------------------
// 3. Auth

/// The status of `GET <realm>_events` for `token` (the stream is closed at
/// once when it is 200) and, when not 200, the whole answer.
async fn stream_answer(realm: &str, token: Option<&str>) -> Resp {
    let response = open(realm, token, Start::Now).await.unwrap_or_else(|e| panic!("{e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = if status == 200 { String::new() } else { response.text().await.unwrap_or_default() };
    Resp { method: Method::GET, url: events_url(realm, Start::Now), status, headers, body }
}

async fn the_stream_needs_read_permission_exactly_like_a_card_get(backend: Backend) {
    let srv = backend.start().await;
    let (test, private, pubread) = (srv.realm("test"), srv.realm("private"), srv.realm("pubread"));
    let alice_token = srv.token(ALICE, &private, &["read", "write"]).await;
    let alice_reader = srv.token(ALICE, &private, &["read"]).await;
    let carol = srv.token("carol", &private, &["read"]).await; // no grant on `private`
    let wrong_realm = srv.token(BOB, &pubread, &["read", "write"]).await;
    let card = |realm: &str| format!("{realm}Person/nobody");
    let (private_url, pubread_url, test_url) = (private.as_str(), pubread.as_str(), test.as_str());
    let cases: Vec<(&str, &str, Option<&str>, u16)> = vec![
        ("anonymous on private", private_url, None, 401),
        ("a token that is not a JWT, on private", private_url, Some("not-a-jwt"), 401),
        ("carol (no grant) on private", private_url, Some(carol.as_str()), 403),
        ("bob's pubread token on private", private_url, Some(wrong_realm.as_str()), 403),
        ("alice (read, write) on private", private_url, Some(alice_token.as_str()), 200),
        ("alice (read) on private", private_url, Some(alice_reader.as_str()), 200),
        ("anonymous on pubread (public read)", pubread_url, None, 200),
        ("anonymous on test (public write)", test_url, None, 200),
    ];
    for (who, realm, token, status) in cases {
        // What a card GET of a missing card answers is what the stream answers.
        let http = match token {
            Some(token) => srv.client().with_token(token),
            None => srv.client(),
        };
        let card_status = http.get_card(&card(realm)).fetch().await.status;
        let card_status = if card_status == 404 { 200 } else { card_status };
        let resp = stream_answer(realm, token).await;
        assert_eq!(resp.status, card_status, "{who}: the stream answers as a card GET does:\n{resp}");
        assert_eq!(resp.status, status, "{who}:\n{resp}");
        if status == 200 {
            assert_eq!(resp.media_type(), EVENT_STREAM, "{who}:\n{resp}");
        } else {
            resp.card_error(status);
        }
    }
    // An authorised subscriber does get the private realm's events.
    let mut sse = subscribe(&private, Some(&alice_reader), Start::Now).await;
    let alice = srv.client().with_token(&alice_token);
    let url = format!("{private}secret.txt");
    with_id(alice.write_source(&url, "secret"), "private-write").fetch().await.expect_status(204);
    let event = sse.next_event("alice's write in private").await;
    assert_index_event(&event, 1, &private, &[url], Some("private-write"), "the private realm's event");
}

// ---------------------------------------------------------------------------
// 4. Heartbeats

/// Reads `n` heartbeats (and nothing else) from an idle stream; how long they took.
async fn count_heartbeats(sse: &mut Sse, n: usize) -> Duration {
    let started = Instant::now();
    let mut comments = Vec::new();
    while comments.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), sse.next_item()).await {
            Err(_) => panic!("{}: only {} heartbeats within 10 s with --events-heartbeat 200ms: {comments:?}", sse.describe(), comments.len()),
            Ok(None) => panic!("{}: the idle stream ended after {} heartbeats", sse.describe(), comments.len()),
            Ok(Some(Item::Event(event))) => panic!("{}: an event on an idle stream: {event:?}", sse.describe()),
            Ok(Some(Item::Comment(text))) => comments.push(text),
        }
    }
    for text in &comments {
        assert_eq!(text, "heartbeat", "{}: a heartbeat is the comment `: heartbeat`", sse.describe());
    }
    started.elapsed()
}

async fn heartbeats_are_comments_at_the_configured_interval(backend: Backend) {
    let srv = backend.start_with(serve_args(&["--events-heartbeat", "200ms"])).await;
    let realm = srv.realm("test");
    let mut sse = subscribe(&realm, None, Start::Now).await;
    let took = count_heartbeats(&mut sse, 3).await;
    assert!(took >= Duration::from_millis(300), "3 heartbeats every 200 ms took only {took:?}: not paced");
    // Events still come through between heartbeats.
    let url = format!("{realm}beat.txt");
    srv.client().write_source(&url, "beat").fetch().await.expect_status(204);
    let event = sse.next_event("the write among heartbeats").await;
    assert_index_event(&event, 1, &realm, &[url], None, "an event among heartbeats");
    // Roughly 5 per second (10 in 2 s; wide bounds for a loaded machine).
    let took = count_heartbeats(&mut sse, 10).await;
    assert!(took >= Duration::from_millis(1200) && took < Duration::from_secs(8), "10 heartbeats every 200 ms took {took:?}");
}

/// An event stream is a request in progress, not an idle connection: it
/// is not closed by `--idle-timeout` (nor should it be the first evicted
/// under `--max-connections`).
async fn a_stream_outlives_the_idle_timeout_of_connections(backend: Backend) {
    let srv = backend.start_with(serve_args(&["--idle-timeout", "1s", "--events-heartbeat", "300ms"])).await;
    let realm = srv.realm("test");
    let mut sse = subscribe(&realm, None, Start::Now).await;
    // About 3.6 s: more than three idle timeouts.
    count_heartbeats(&mut sse, 12).await;
    let url = format!("{realm}late.txt");
    srv.client().write_source(&url, "late").fetch().await.expect_status(204);
    let event = sse.next_event("a write after several idle timeouts").await;
    assert_index_event(&event, 1, &realm, &[url], None, "an event on a stream older than --idle-timeout");
}

// ---------------------------------------------------------------------------
// 5. Back-pressure

async fn a_stalled_subscriber_is_dropped_without_slowing_anyone_and_resumes_missing_nothing(backend: Backend) {
    // Enough bytes that the stalled connection's socket buffers (up to a
    // few MiB on loopback) fill and the server sees it fall behind: each
    // event carries a 32 KiB client request id; 300 events ≈ 10 MiB.
    const WRITES: usize = 300;
    const PAD: usize = 32 * 1024;
    const WORKERS: usize = 4;
    let srv = backend.start_with(serve_args(&["--events-buffer", "16"])).await;
    let realm = srv.realm("test");
    let id_of = |i: usize| format!("bp-{i}-{}", "p".repeat(PAD));
    let stalled = subscribe(&realm, None, Start::Now).await; // never read until the writes are done
    let mut reader = subscribe(&realm, None, Start::Now).await;
    let reading = tokio::spawn(async move {
        let events = reader.events_through(WRITES as u64, "every write, by the reading subscriber").await;
        (events, reader)
    });

    let tickets = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (tickets, realm, http) = (tickets.clone(), realm.clone(), Client::new());
        workers.push(tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            loop {
                let i = tickets.fetch_add(1, Ordering::SeqCst);
                if i >= WRITES {
                    return slowest;
                }
                let sent = Instant::now();
                let request = with_id(http.write_source(&format!("{realm}bp/{i}.txt"), format!("bp {i}")), &format!("bp-{i}-{}", "p".repeat(PAD)));
                let resp = request.fetch().await;
                assert_eq!(resp.status, 204, "write {i} while a subscriber is stalled:\n{resp}");
                slowest = slowest.max(sent.elapsed());
            }
        }));
    }
    let slowest = join_all(workers).await.into_iter().map(|r| r.expect("writer")).max().unwrap_or_default();
    let writing = started.elapsed();
    eprintln!("back-pressure: {WRITES} writes in {writing:?}, slowest {slowest:?}");
    assert!(slowest < Duration::from_secs(10), "a write took {slowest:?} while a subscriber was stalled");

    let (events, _reader) = tokio::time::timeout(Duration::from_secs(120), reading).await.expect("the reading subscriber got every event in time").expect("reader");
    assert_contiguous(&events, 1, "the reading subscriber");
    for event in &events {
        let i = event.seq() as usize;
        let id = event.client_request_id().unwrap_or_default();
        let file = event.invalidations().first().map(|u| local_of(u)).unwrap_or_default();
        let n: usize = file.trim_start_matches("bp/").trim_end_matches(".txt").parse().unwrap_or(usize::MAX);
        assert_eq!(id, id_of(n), "event {i}: the client request id of the write of bp/{n}.txt");
    }
    let mut files: Vec<String> = events.iter().flat_map(Event::invalidations).collect();
    files.sort();
    files.dedup();
    assert_eq!(files.len(), WRITES, "the reading subscriber saw every write once");

    // The stalled subscriber was dropped: reading it now reaches its end,
    // after an in-order prefix.
    let mut stalled = stalled;
    let got = match stalled.read_to_end(Duration::from_secs(60)).await {
        Ok(got) => got,
        Err(got) => panic!(
            "{}: the stalled subscriber (--events-buffer 16, {WRITES} events of {PAD} bytes) was not disconnected: \
             still open after 60 s, having got {} events (seqs {:?}…)",
            stalled.describe(),
            got.len(),
            &seqs(&got)[..got.len().min(5)]
        ),
    };
    eprintln!("back-pressure: the stalled subscriber got {} of {WRITES} events before its stream ended ({:?})", got.len(), stalled.ended);
    assert_contiguous(&got, 1, "what the stalled subscriber got before it was dropped");
    assert_eq!(got, events[..got.len()].to_vec(), "the stalled subscriber's events are a prefix of the reader's");
    assert!(got.len() < WRITES, "the stalled subscriber got all {WRITES} events and was still dropped: it was not behind");

    // It resumes from its last id and misses nothing.
    let last = got.last().map(Event::seq).unwrap_or(0);
    let mut resumed = subscribe(&realm, None, Start::Header(last)).await;
    let rest = resumed.events_through(WRITES as u64, "the rest, after the stalled subscriber resumed").await;
    assert_eq!(rest, events[last as usize..].to_vec(), "the resumed subscriber gets every event after {last} once, in order");
    let url = format!("{realm}after.txt");
    srv.client().write_source(&url, "after").fetch().await.expect_status(204);
    let event = resumed.next_event("a write after the resume").await;
    assert_index_event(&event, WRITES as u64 + 1, &realm, &[url], None, "live after the resume");
}

/// A subscriber that reads promptly is not "behind", even when one commit
/// carries more events than `--events-buffer`: 40 writes queue behind the
/// test's hold of the realm's lock and then share one commit (coalescing
/// allows 64 per commit; `--coalesce-max-wait 2s` lets them all join).
async fn a_reading_subscriber_keeps_up_with_one_commit_of_more_events_than_the_buffer(backend: Backend) {
    const WRITES: usize = 40;
    let srv = backend.start_with(serve_args(&["--events-buffer", "16", "--coalesce-max-wait", "2s"])).await;
    let realm = srv.realm("test");
    let mut reader = subscribe(&realm, None, Start::Now).await;
    let mut holder = LockHolder::hold(&srv, &realm).await;
    let mut writes = Vec::new();
    for i in 0..WRITES {
        let request = with_id(srv.client().write_source(&format!("{realm}burst/{i}.txt"), format!("burst {i}")), &format!("burst-{i}"));
        writes.push(tokio::spawn(request.fetch()));
    }
    holder.wait_for_a_waiter(EVENT_WAIT).await;
    // Let every request reach the server's queue (not needed for
    // correctness: fewer queued writes only make the burst smaller).
    tokio::time::sleep(Duration::from_secs(1)).await;
    holder.release().await;
    for write in join_all(writes).await {
        write.expect("task").expect_status(204);
    }
    let events = reader.events_through(WRITES as u64, "a burst of 40 events, read at once").await;
    assert_contiguous(&events, 1, "the burst");
    let mut ids: Vec<String> = events.iter().map(|e| e.client_request_id().unwrap_or_default()).collect();
    ids.sort();
    let mut want: Vec<String> = (0..WRITES).map(|i| format!("burst-{i}")).collect();
    want.sort();
    assert_eq!(ids, want);
}

// ---------------------------------------------------------------------------
// Followers and writers for the Postgres tests

/// When a follower stops.
#[derive(Clone, Debug)]
enum StopAt {
    /// Once it has the event with this seq.
    Seq(u64),
    /// Once it has the event of this client request id.
    ClientId(String),
}

#[derive(Clone, Default)]
struct Stop {
    at: Arc<Mutex<Option<StopAt>>>,
    give_up: Arc<AtomicBool>,
}

impl Stop {
    fn set(&self, at: StopAt) {
        *self.at.lock().expect("stop") = Some(at);
    }
}

/// A subscriber that, when its stream ends or breaks, reconnects with
/// `Last-Event-ID` (its last seq, else 0) — to the next replica in
/// `realms` when one does not answer.
struct Follower {
    name: String,
    realms: Vec<String>,
    at: usize,
    sse: Option<Sse>,
    events: Vec<Event>,
    ids: HashSet<String>,
    /// Each resume, and the failed attempts (the first few).
    reconnects: Vec<String>,
    failed_attempts: usize,
    gave_up: bool,
}

impl Follower {
    async fn connect(name: &str, realms: Vec<String>) -> Follower {
        let sse = subscribe(&realms[0], None, Start::Now).await;
        Follower {
            name: name.to_string(),
            realms,
            at: 0,
            sse: Some(sse),
            events: Vec::new(),
            ids: HashSet::new(),
            reconnects: Vec::new(),
            failed_attempts: 0,
            gave_up: false,
        }
    }

    fn last_seq(&self) -> u64 {
        self.events.iter().rev().find_map(|e| e.id.as_deref().and_then(|id| id.parse().ok())).unwrap_or(0)
    }

    fn done(&self, stop: &Stop) -> bool {
        match &*stop.at.lock().expect("stop") {
            None => false,
            Some(StopAt::Seq(seq)) => self.last_seq() >= *seq,
            Some(StopAt::ClientId(id)) => self.ids.contains(id),
        }
    }

    fn describe(&self) -> String {
        format!(
            "follower {} ({} events, last seq {}, {} resumes {:?}, {} failed attempts)",
            self.name,
            self.events.len(),
            self.last_seq(),
            self.reconnects.iter().filter(|r| r.starts_with("resumed")).count(),
            self.reconnects,
            self.failed_attempts
        )
    }

    async fn run(mut self, stop: Stop) -> Follower {
        loop {
            if self.done(&stop) {
                return self;
            }
            if stop.give_up.load(Ordering::SeqCst) {
                self.gave_up = true;
                return self;
            }
            let Some(sse) = self.sse.as_mut() else {
                self.reconnect().await;
                continue;
            };
            match tokio::time::timeout(Duration::from_millis(250), sse.next_item()).await {
                Err(_) | Ok(Some(Item::Comment(_))) => {}
                Ok(Some(Item::Event(event))) => {
                    if let Some(id) = (!event.is_reset()).then(|| event.client_request_id()).flatten() {
                        self.ids.insert(id);
                    }
                    self.events.push(event);
                }
                Ok(None) => {
                    let why = sse.ended.clone().unwrap_or_default();
                    let realm = self.realms[self.at].clone();
                    self.sse = None;
                    self.note(format!("stream on {realm} ended after seq {}: {why}", self.last_seq()));
                }
            }
        }
    }

    fn note(&mut self, what: String) {
        if self.reconnects.len() < 40 {
            self.reconnects.push(what);
        }
    }

    /// One attempt; on failure the next replica is tried after a back-off.
    async fn reconnect(&mut self) {
        let realm = self.realms[self.at].clone();
        let after = self.last_seq();
        match open(&realm, None, Start::Header(after)).await {
            Ok(response) if response.status().as_u16() == 200 => {
                let label = format!("{} (resumed after {after}, follower {})", events_url(&realm, Start::Now), self.name);
                self.sse = Some(Sse::new(response, &label).await);
                self.note(format!("resumed on {realm} after {after}"));
            }
            answer => {
                self.failed_attempts += 1;
                let what = match answer {
                    Ok(response) => format!("{} from {realm}", response.status()),
                    Err(e) => e,
                };
                if self.failed_attempts <= 5 {
                    self.note(format!("attempt failed: {what}"));
                }
                self.at = (self.at + 1) % self.realms.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Waits up to `within` for every follower to stop, then makes the rest
/// give up (they return what they got).
async fn finish(followers: Vec<tokio::task::JoinHandle<Follower>>, stop: &Stop, within: Duration) -> Vec<Follower> {
    let deadline = tokio::time::Instant::now() + within;
    let mut done = Vec::new();
    for handle in followers {
        let mut handle = handle;
        let follower = match tokio::time::timeout_at(deadline, &mut handle).await {
            Ok(follower) => follower,
            Err(_) => {
                stop.give_up.store(true, Ordering::SeqCst);
                handle.await
            }
        };
        done.push(follower.expect("follower task"));
    }
    done
}

/// What one write of the load got.
#[derive(Clone, Debug)]
struct WriteRecord {
    id: String,
    /// `POST`, `PATCH`, `refused` (a PATCH with a failing If-Match: never
    /// an event, whatever it is answered) or `marker`.
    kind: &'static str,
    /// The local paths (after `/test/`) the event must name, when known.
    expected: Option<Vec<String>>,
    /// The status, or the connection error.
    outcome: Result<u16, String>,
    /// The load's phase when sent (restart test: 0 running, 1 restarting,
    /// 2 restarted, 3 stopped, 4 started again, 5 the marker).
    phase: u8,
}

impl WriteRecord {
    fn acknowledged(&self) -> bool {
        matches!(self.outcome, Ok(status) if (200..300).contains(&status))
    }

    /// Answered 4xx: certainly not committed.
    fn refused(&self) -> bool {
        matches!(self.outcome, Ok(status) if (400..500).contains(&status))
    }

    fn outcome_name(&self) -> String {
        match &self.outcome {
            Ok(status) => status.to_string(),
            Err(_) => "connection error".into(),
        }
    }
}

/// The writers' shared state.
#[derive(Default)]
struct Load {
    /// Write tickets handed out (each write, except refused ones, takes one).
    tickets: AtomicUsize,
    /// Most tickets.
    limit: usize,
    stop: AtomicBool,
    phase: AtomicU8,
    /// Acknowledged writes by the phase they were sent in.
    acked: [AtomicUsize; 6],
    /// Other answers (and connection errors) by the phase they were sent in.
    failed: [AtomicUsize; 6],
    records: Mutex<Vec<WriteRecord>>,
}

impl Load {
    fn new(limit: usize) -> Arc<Load> {
        Arc::new(Load { limit, ..Load::default() })
    }

    fn acked_total(&self) -> usize {
        self.acked.iter().map(|a| a.load(Ordering::SeqCst)).sum()
    }

    fn records(&self) -> Vec<WriteRecord> {
        self.records.lock().expect("records").clone()
    }

    fn record(&self, record: WriteRecord) {
        if record.acknowledged() {
            self.acked[record.phase as usize].fetch_add(1, Ordering::SeqCst);
        } else if record.kind != "refused" {
            self.failed[record.phase as usize].fetch_add(1, Ordering::SeqCst);
        }
        self.records.lock().expect("records").push(record);
    }
}

/// One writer: POSTs a Person, then PATCHes its latest card two times out
/// of three and POSTs a new one the third, each with a unique client
/// request id; every `refuse_every`-th write also sends a PATCH bound to
/// fail its If-Match. It writes through `realms[0]` and moves to the next
/// replica when one does not answer.
async fn writer(load: Arc<Load>, name: String, realms: Vec<String>, refuse_every: usize) {
    let http = Client::new();
    let mut at = 0;
    let mut card: Option<String> = None;
    let mut n = 0usize;
    while !load.stop.load(Ordering::SeqCst) {
        let ticket = load.tickets.fetch_add(1, Ordering::SeqCst);
        if ticket >= load.limit {
            break;
        }
        let id = format!("w{ticket}");
        let realm = realms[at].clone();
        let phase = load.phase.load(Ordering::SeqCst);
        let (kind, request, mut expected) = match &card {
            Some(local) if !ticket.is_multiple_of(3) => {
                ("PATCH", http.patch_card(&format!("{realm}{local}"), &person_patch(json!({ id.clone(): ticket }))), Some(vec![local.clone()]))
            }
            _ => ("POST", http.create_card(&realm, &new_person(json!({ "firstName": id.clone() }))), None),
        };
        let answer = with_id(request, &id).try_fetch().await;
        if let Ok(resp) = &answer {
            if kind == "POST" && resp.status == 201 {
                let local = local_of(resp.json()["data"]["id"].as_str().unwrap_or_else(|| panic!("no data.id in\n{resp}")));
                card = Some(local.clone());
                expected = Some(vec![local]);
            }
        }
        let ok = matches!(&answer, Ok(resp) if (200..300).contains(&resp.status));
        if answer.is_err() {
            at = (at + 1) % realms.len();
        }
        load.record(WriteRecord { id, kind, expected, outcome: answer.map(|r| r.status), phase });
        if !ok {
            tokio::time::sleep(Duration::from_millis(25)).await; // back off while something is down
        }
        n += 1;
        if refuse_every > 0 && n.is_multiple_of(refuse_every) {
            if let Some(local) = &card {
                let id = format!("refused-{name}-{n}");
                let request = http.patch_card(&format!("{}{local}", realms[at]), &person_patch(json!({ "refused": true }))).header(IF_MATCH, "\"stale\"");
                let phase = load.phase.load(Ordering::SeqCst);
                let answer = with_id(request, &id).try_fetch().await;
                load.record(WriteRecord { id, kind: "refused", expected: None, outcome: answer.map(|r| r.status), phase });
            }
        }
    }
}

/// Writes the marker (a source file) through `realm` until it is
/// acknowledged; every attempt is recorded. Returns the acknowledged id.
async fn write_marker(load: &Load, realm: &str) -> String {
    let http = Client::new();
    for attempt in 0..300 {
        let id = format!("marker-{attempt}");
        let request = with_id(http.write_source(&format!("{realm}marker.txt"), id.clone()), &id);
        let answer = request.try_fetch().await;
        let record = WriteRecord { id: id.clone(), kind: "marker", expected: Some(vec!["marker.txt".into()]), outcome: answer.map(|r| r.status), phase: load.phase.load(Ordering::SeqCst) };
        let ok = record.acknowledged();
        load.record(record);
        if ok {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the marker write was not acknowledged in 300 attempts: {:?}", load.records().iter().rev().take(3).collect::<Vec<_>>());
}

/// Counts of outcomes per kind, for the log.
fn outcome_summary(records: &[WriteRecord]) -> BTreeMap<String, usize> {
    let mut summary = BTreeMap::new();
    for record in records {
        *summary.entry(format!("{} phase {}: {}", record.kind, record.phase, record.outcome_name())).or_default() += 1;
    }
    summary
}

/// Checks one follower against the writes: seqs `1..=last` each once in
/// order (no reset), every event an `index` event of `canonical` naming
/// what its write changed, every acknowledged write's event present once,
/// no event of a write that was refused or never sent.
fn check_follower(follower: &Follower, canonical: &str, writes: &[WriteRecord], last: u64) {
    let who = follower.describe();
    assert!(!follower.gave_up, "{who}: did not get through seq {last} in time (the missing seqs were lost)");
    let events = &follower.events[..follower.events.iter().position(|e| e.seq() == last).map(|p| p + 1).unwrap_or(follower.events.len())];
    let resets: Vec<&Event> = events.iter().filter(|e| e.is_reset()).collect();
    assert!(resets.is_empty(), "{who}: resets (events were missed): {resets:?}");
    let got = seqs(events);
    let want: Vec<u64> = (1..=last).collect();
    if got != want {
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for seq in &got {
            *counts.entry(*seq).or_default() += 1;
        }
        let missing: Vec<u64> = want.iter().filter(|s| !counts.contains_key(s)).copied().collect();
        let repeated: Vec<u64> = counts.iter().filter(|(_, n)| **n > 1).map(|(s, _)| *s).collect();
        let out_of_order = got.windows(2).position(|w| w[1] <= w[0]);
        panic!(
            "{who}: seqs are not 1..={last} each once in order: {} events, missing {:?}, repeated {:?}, first disorder at index {:?}",
            got.len(),
            &missing[..missing.len().min(20)],
            &repeated[..repeated.len().min(20)],
            out_of_order
        );
    }
    let by_id: HashMap<&str, &WriteRecord> = writes.iter().map(|w| (w.id.as_str(), w)).collect();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for event in events {
        let payload = event.payload();
        assert_eq!(event.event, None, "{who}: {event:?}");
        assert_eq!(payload["eventName"], json!("index"), "{who}: {event:?}");
        assert_eq!(payload["indexType"], json!("incremental"), "{who}: {event:?}");
        assert_eq!(payload["realmURL"], json!(canonical), "{who}: the realm URL as created: {event:?}");
        let id = event.client_request_id().unwrap_or_else(|| panic!("{who}: every write sent an id, this event has none: {event:?}"));
        if let Some(earlier) = seen.insert(id.clone(), event.seq()) {
            panic!("{who}: two events ({earlier} and {}) for the write {id}", event.seq());
        }
        let write = by_id.get(id.as_str()).unwrap_or_else(|| panic!("{who}: an event for a write never sent: {event:?}"));
        assert!(write.kind != "refused", "{who}: an event for a PATCH whose If-Match failed ({write:?}): {event:?}");
        assert!(!write.refused(), "{who}: an event for a write answered {} ({write:?}): {event:?}", write.outcome_name());
        let urls = event.invalidations();
        for url in &urls {
            assert!(url.starts_with(canonical), "{who}: an invalidation outside {canonical}: {event:?}");
        }
        let locals: Vec<String> = urls.iter().map(|u| local_of(u)).collect();
        match &write.expected {
            Some(expected) => assert_eq!(&locals, expected, "{who}: the invalidations of {write:?}: {event:?}"),
            None => assert!(locals.len() == 1 && locals[0].starts_with("Person/"), "{who}: a POST's new card, for {write:?}: {event:?}"),
        }
    }
    let lost: Vec<&WriteRecord> = writes.iter().filter(|w| w.acknowledged() && !seen.contains_key(&w.id)).collect();
    assert!(lost.is_empty(), "{who}: {} acknowledged writes have no event, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
}

/// Every follower saw the same events, seq by seq.
fn assert_same_events(followers: &[Follower], last: u64) {
    let first = &followers[0];
    for other in &followers[1..] {
        for seq in 1..=last {
            let a = first.events.iter().find(|e| e.seq() == seq).map(Event::payload);
            let b = other.events.iter().find(|e| e.seq() == seq).map(Event::payload);
            assert_eq!(a, b, "seq {seq}: followers {} and {} disagree", first.name, other.name);
        }
    }
}

// ---------------------------------------------------------------------------
// 6. Postgres: two replicas, 1 000 concurrent writes

#[tokio::test(flavor = "multi_thread")]
async fn postgres_two_replicas_every_subscriber_gets_every_event_once_in_order() {
    const WRITES: usize = 1000;
    const WRITERS_PER_REPLICA: usize = 4;
    let a = Backend::Postgres.start().await;
    let b = a.replica().await;
    let canonical = a.realm("test");
    let (on_a, on_b) = (a.realm("test"), b.realm("test"));
    let mut followers = Vec::new();
    for (name, realm) in [("a1", &on_a), ("a2", &on_a), ("b1", &on_b), ("b2", &on_b)] {
        followers.push(Follower::connect(name, vec![realm.clone()]).await);
    }
    let stop = Stop::default();
    stop.set(StopAt::Seq(WRITES as u64));
    let followers: Vec<_> = followers.into_iter().map(|f| tokio::spawn(f.run(stop.clone()))).collect();

    let load = Load::new(WRITES);
    let started = Instant::now();
    let mut writers = Vec::new();
    for i in 0..WRITERS_PER_REPLICA * 2 {
        let realm = if i % 2 == 0 { on_a.clone() } else { on_b.clone() };
        writers.push(tokio::spawn(writer(load.clone(), format!("writer{i}"), vec![realm], 40)));
    }
    join_all(writers).await.into_iter().for_each(|r| r.expect("writer"));
    let writes = load.records();
    eprintln!("two replicas: {} requests in {:?}: {:#?}", writes.len(), started.elapsed(), outcome_summary(&writes));
    let failed: Vec<&WriteRecord> = writes.iter().filter(|w| w.kind != "refused" && !w.acknowledged()).collect();
    assert!(failed.is_empty(), "{} writes failed, e.g. {:?}", failed.len(), &failed[..failed.len().min(5)]);
    let not_refused: Vec<&WriteRecord> = writes.iter().filter(|w| w.kind == "refused" && w.outcome != Ok(412)).collect();
    assert!(not_refused.is_empty(), "PATCHes with a stale If-Match must be 412: {not_refused:?}");
    assert_eq!(writes.iter().filter(|w| w.acknowledged()).count(), WRITES);

    let followers = finish(followers, &stop, Duration::from_secs(120)).await;
    for follower in &followers {
        assert!(follower.reconnects.is_empty(), "{}: a subscriber that reads was disconnected", follower.describe());
        check_follower(follower, &canonical, &writes, WRITES as u64);
        assert_eq!(follower.events.len(), WRITES, "{}: nothing past the last write", follower.describe());
    }
    assert_same_events(&followers, WRITES as u64);
}

// ---------------------------------------------------------------------------
// 7. Postgres: a replica killed mid-run

#[tokio::test(flavor = "multi_thread")]
async fn postgres_subscribers_of_a_killed_replica_resume_on_the_other_missing_nothing() {
    const TICKETS: usize = 300;
    const KILL_AFTER: usize = 100;
    let a = Backend::Postgres.start().await;
    let mut b = a.replica().await;
    let canonical = a.realm("test");
    let (on_a, on_b) = (a.realm("test"), b.realm("test"));
    let mut followers = Vec::new();
    for (name, realms) in [("a1", [&on_a, &on_b]), ("a2", [&on_a, &on_b]), ("b1", [&on_b, &on_a]), ("b2", [&on_b, &on_a])] {
        followers.push(Follower::connect(name, realms.iter().map(|r| r.to_string()).collect()).await);
    }
    let stop = Stop::default();
    let followers: Vec<_> = followers.into_iter().map(|f| tokio::spawn(f.run(stop.clone()))).collect();

    let load = Load::new(TICKETS);
    let mut writers = Vec::new();
    for i in 0..6 {
        let realms = if i % 2 == 0 { vec![on_a.clone(), on_b.clone()] } else { vec![on_b.clone(), on_a.clone()] };
        writers.push(tokio::spawn(writer(load.clone(), format!("writer{i}"), realms, 30)));
    }
    wait_until!(format!("{KILL_AFTER} acknowledged writes"), Duration::from_secs(120), (load.acked_total() >= KILL_AFTER).then_some(()));
    b.kill();
    load.phase.store(1, Ordering::SeqCst);
    join_all(writers).await.into_iter().for_each(|r| r.expect("writer"));
    let marker = write_marker(&load, &on_a).await;
    stop.set(StopAt::ClientId(marker.clone()));
    let writes = load.records();
    eprintln!("replica killed: {:#?}", outcome_summary(&writes));
    assert!(load.acked[1].load(Ordering::SeqCst) > 0, "writes went on after the kill");

    let followers = finish(followers, &stop, Duration::from_secs(120)).await;
    let last = followers[0].events.iter().find(|e| e.client_request_id().as_deref() == Some(marker.as_str())).map(Event::seq);
    let last = last.unwrap_or_else(|| panic!("{}: no marker event", followers[0].describe()));
    for follower in &followers {
        check_follower(follower, &canonical, &writes, last);
        eprintln!("{}", follower.describe());
    }
    for follower in &followers[2..] {
        assert!(
            follower.reconnects.iter().any(|r| r.starts_with(&format!("resumed on {on_a}"))),
            "{}: its replica was killed, it must have resumed on the other one",
            follower.describe()
        );
    }
    assert_same_events(&followers, last);
}

// ---------------------------------------------------------------------------
// 8. Postgres restarted, then stopped and started, mid-run

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restart_loses_no_acknowledged_event_and_invents_none() {
    const BEFORE: usize = 30;
    const AFTER: usize = 40;
    let cluster = Arc::new(tokio::task::spawn_blocking(PgCluster::start).await.expect("start postgres"));
    let db = pg::fresh_database_on(Some(&cluster)).await;
    let a = Server::start_on(db, serve_args(&["--lock-timeout", "2s"])).await;
    let b = a.replica().await;
    let canonical = a.realm("test");
    let (on_a, on_b) = (a.realm("test"), b.realm("test"));
    let mut followers = Vec::new();
    for (name, realms) in [("a1", [&on_a, &on_b]), ("a2", [&on_a, &on_b]), ("b1", [&on_b, &on_a]), ("b2", [&on_b, &on_a])] {
        followers.push(Follower::connect(name, realms.iter().map(|r| r.to_string()).collect()).await);
    }
    let stop = Stop::default();
    let followers: Vec<_> = followers.into_iter().map(|f| tokio::spawn(f.run(stop.clone()))).collect();

    let load = Load::new(usize::MAX);
    let mut writers = Vec::new();
    for i in 0..4 {
        let realm = if i % 2 == 0 { on_a.clone() } else { on_b.clone() };
        writers.push(tokio::spawn(writer(load.clone(), format!("writer{i}"), vec![realm], 10)));
    }
    let acked = |phase: usize| load.acked[phase].load(Ordering::SeqCst);
    wait_until!(format!("{BEFORE} acknowledged writes"), Duration::from_secs(120), (acked(0) >= BEFORE).then_some(()));
    load.phase.store(1, Ordering::SeqCst);
    let restarting = cluster.clone();
    tokio::task::spawn_blocking(move || restarting.restart()).await.expect("pg_ctl restart");
    load.phase.store(2, Ordering::SeqCst);
    wait_until!(format!("{AFTER} acknowledged writes after the restart"), Duration::from_secs(120), (acked(2) >= AFTER).then_some(()));
    // A longer outage: stopped until 10 writes have failed.
    load.phase.store(3, Ordering::SeqCst);
    let stopping = cluster.clone();
    tokio::task::spawn_blocking(move || stopping.stop("fast")).await.expect("pg_ctl stop");
    wait_until!("10 failed writes while Postgres is down", Duration::from_secs(120), (load.failed[3].load(Ordering::SeqCst) >= 10).then_some(()));
    let starting = cluster.clone();
    tokio::task::spawn_blocking(move || starting.start_again()).await.expect("pg_ctl start");
    load.phase.store(4, Ordering::SeqCst);
    wait_until!(format!("{AFTER} acknowledged writes after the start"), Duration::from_secs(120), (acked(4) >= AFTER).then_some(()));
    load.stop.store(true, Ordering::SeqCst);
    join_all(writers).await.into_iter().for_each(|r| r.expect("writer"));
    load.phase.store(5, Ordering::SeqCst);
    let marker = write_marker(&load, &on_b).await;
    stop.set(StopAt::ClientId(marker.clone()));
    let writes = load.records();
    eprintln!("postgres restarted: {:#?}", outcome_summary(&writes));

    let followers = finish(followers, &stop, Duration::from_secs(120)).await;
    let last = followers[0].events.iter().find(|e| e.client_request_id().as_deref() == Some(marker.as_str())).map(Event::seq);
    let last = last.unwrap_or_else(|| panic!("{}: no marker event", followers[0].describe()));
    for follower in &followers {
        check_follower(follower, &canonical, &writes, last);
        eprintln!("{}", follower.describe());
    }
    assert_same_events(&followers, last);
    // For the record: events of writes answered 5xx (their commit's fate
    // was unknown to the server too) are allowed, not asserted.
    let by_id: HashMap<&str, &WriteRecord> = writes.iter().map(|w| (w.id.as_str(), w)).collect();
    let unknown_landed = followers[0]
        .events
        .iter()
        .filter_map(|e| e.client_request_id())
        .filter(|id| by_id.get(id.as_str()).is_some_and(|w| !w.acknowledged()))
        .count();
    eprintln!("postgres restarted: {unknown_landed} events of writes whose outcome was unknown (5xx or connection error)");
}
