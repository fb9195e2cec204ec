//! Hardening: the server keeps its contract when clients are hostile,
//! slow, numerous or sloppy. This module proves that:
//!
//! 1. Preconditions are never ignored: an `If-Match` / `If-None-Match`
//!    value with bytes >= 0x80 is a 400 (nothing written) on every write
//!    route and on GET; a readable wrong etag is still a 412.
//! 2. Slow clients cannot starve the server: a flood of partial requests
//!    over `--max-connections` (and under the default cap) does not lock a
//!    normal client out; `--header-read-timeout`, `--idle-timeout` and
//!    `--body-read-timeout` close or answer (408) stuck connections; a
//!    `Content-Length` over a route's limit is a 413 before the body comes.
//! 3. Overload is 503 + `Retry-After`, never 500, and loses no acknowledged
//!    write: 3 000 simultaneous PATCHes; `--guest-instances 2 --guest-wait
//!    200ms` with 50 PATCHes.
//! 4. `/_atomic` inside its body limit answers 201 or a 4xx, never a 5xx:
//!    1 000 operations succeed, 1 001 are a 413, ~8 MiB of rich cards never
//!    fail with a 5xx, a body over 8 MiB is a 413.
//! 5. Error bodies carry no internals: a trapping guest answers a short 500
//!    with a correlation id that the server log also names.
//! 6. The `_` namespace is reserved on every write route (`/_atomic` hrefs,
//!    source POST/DELETE).
//! 7. One path grammar: undecodable (`%ff`) and control bytes (`%00`–`%1f`,
//!    `%7f`) are a 400 in request paths and `/_atomic` hrefs alike;
//!    redirects carry an ASCII, percent-encoded `Location`.
//! 8. Same document, same answer on both backends: NUL in a source file is a
//!    400 everywhere; NUL in a card string round-trips everywhere; a path or
//!    card type too long for a Postgres index is a 400 everywhere, and a
//!    very long attribute name is stored (unsearched) beside its neighbours.
//! 9. `relationships.<f>.links` that is not an object is a 400.
//! 10. Auth: the `Bearer` scheme is case-insensitive, a token whose `nbf`
//!     is in the future is a 401, a `realm-owner` grant reads and writes.
//! 11. Paths under no realm cost nothing (`realm_list_loads_total` barely
//!     moves), and a realm created while serving becomes reachable in 5 s.
//!
//! Every refused write is checked to have written nothing: by a GET, and
//! where no GET can tell (a POST create, a reserved path) by reading the
//! `files` table of the test's own database. Timing bounds are generous
//! (debug build, 2 cores, the rest of the suite running alongside): a
//! "prompt" answer is one under 3 s. Nothing sleeps to synchronise: slow
//! clients wait on their sockets with deadlines, everything else polls state.

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use futures::StreamExt;
use reqwest::header::{HeaderValue, AUTHORIZATION, IF_MATCH, IF_NONE_MATCH};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::{ConnectOptions, Row};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;
use crate::lock_holder::LockHolder;

/// A "prompt" answer arrives within this.
const PROMPT: Duration = Duration::from_secs(3);
/// A connection the server should close (after a 1 s timeout) is closed within this.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);
/// …and not before this: closing at once is not a timeout.
const NOT_BEFORE: Duration = Duration::from_millis(500);
/// How long any single raw exchange may take before the test gives up.
const RAW_TIMEOUT: Duration = Duration::from_secs(60);
/// An entity tag that is not valid UTF-8 (obs-text byte 0xff).
const UNREADABLE_ETAG: &[u8] = b"\"wrong\xff\"";
/// A partial request: headers that never end.
const PARTIAL_REQUEST: &[u8] = b"GET /test/ HTTP/1.1\r\nHost: x\r\n";
const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------
// Documents

/// Default realms plus extra `serve` arguments.
fn serve_with(args: &[&str]) -> ServerOptions {
    ServerOptions { serve_args: args.iter().map(|a| a.to_string()).collect(), ..ServerOptions::default() }
}

/// A Person card resource of `realm` (module `<realm>person`).
fn person(realm: &str, attributes: Value) -> Value {
    card_resource(&format!("{realm}person"), "Person", Some(attributes), None)
}

/// `{"atomic:operations": ops}`
fn operations(ops: Vec<Value>) -> Value {
    json!({ "atomic:operations": ops })
}

fn add(href: &str, data: Value) -> Value {
    json!({ "op": "add", "href": href, "data": data })
}

fn source(content: &str) -> Value {
    json!({ "type": "source", "attributes": { "content": content }, "meta": {} })
}

/// The absolute path of `url` on `srv` (`http://127.0.0.1:p/test/x` → `/test/x`).
fn path_of(srv: &Server, url: &str) -> String {
    let rest = url.strip_prefix(&srv.base).unwrap_or_else(|| panic!("{url} is not on {}", srv.base));
    format!("/{rest}")
}

/// Asserts an error response: `status`, a JSON body `{"errors":[{"status":status,…}]}`.
fn assert_error(resp: &Resp, status: u16) {
    assert_eq!(resp.status, status, "unexpected status for\n{resp}");
    let body = resp.json();
    assert_eq!(body["errors"][0]["status"], json!(status), "errors[0].status in\n{resp}");
}

/// Asserts a 503 that tells the client when to come back.
fn assert_retry_after(resp: &Resp) -> Result<(), String> {
    let Some(value) = resp.headers.get("retry-after") else { return Err(format!("503 without retry-after:\n{resp}")) };
    let value = value.to_str().unwrap_or("").trim();
    if value.parse::<u64>().is_ok() || httpdate::parse_http_date(value).is_ok() {
        Ok(())
    } else {
        Err(format!("retry-after {value:?} is neither delay-seconds nor an HTTP date:\n{resp}"))
    }
}

// ---------------------------------------------------------------------------
// The test's own view of the database: what is stored, whatever HTTP says

enum Db {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

/// Runs the same query code on whichever connection `$db` holds.
macro_rules! on_db {
    ($db:expr, $conn:ident => $body:expr) => {
        match $db {
            Db::Sqlite($conn) => $body,
            Db::Postgres($conn) => $body,
        }
    };
}

impl Db {
    async fn open(url: &str) -> Db {
        if url.starts_with("sqlite:") {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .unwrap_or_else(|e| panic!("{url}: {e}"))
                .create_if_missing(false)
                .busy_timeout(Duration::from_secs(30));
            Db::Sqlite(options.connect().await.unwrap_or_else(|e| panic!("open {url}: {e}")))
        } else {
            Db::Postgres(crate::pg::connect(url).await)
        }
    }

    /// Every stored path of `realm`, sorted.
    async fn paths(&mut self, realm: &str) -> Vec<String> {
        // `$N` placeholders work on both backends.
        let sql = "SELECT path FROM files WHERE realm_url = $1 ORDER BY path";
        let paths = on_db!(self, c => sqlx::query(sql)
            .bind(realm)
            .fetch_all(c)
            .await
            .map(|rows| rows.iter().map(|r| r.get::<String, _>(0)).collect::<Vec<String>>()));
        paths.unwrap_or_else(|e| panic!("reading the files of {realm}: {e}"))
    }

    /// Stores a file behind the server's back (for paths HTTP may not write).
    async fn insert_file(&mut self, realm: &str, path: &str, content: &str) {
        let now = now_unix() as i64;
        let sql = "INSERT INTO files (realm_url, path, content, content_hash, created_at, last_modified) VALUES ($1, $2, $3, $4, $5, $6)";
        let done = on_db!(self, c => sqlx::query(sql)
            .bind(realm)
            .bind(path)
            .bind(content)
            .bind("seeded-by-the-test")
            .bind(now)
            .bind(now)
            .execute(c)
            .await
            .map(|_| ()));
        done.unwrap_or_else(|e| panic!("inserting {realm}{path}: {e}"));
    }
}

/// Every path stored in `realm` on `srv`'s database, sorted.
async fn stored_paths(srv: &Server, realm: &str) -> Vec<String> {
    Db::open(srv.db_url()).await.paths(realm).await
}

// ---------------------------------------------------------------------------
// Raw HTTP over TCP: exact bytes out, exact bytes in

/// A response read off the wire, header values as raw bytes.
struct Raw {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl std::fmt::Display for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "HTTP {}", self.status)?;
        for (name, value) in &self.headers {
            writeln!(f, "{name}: {}", String::from_utf8_lossy(value))?;
        }
        let body: String = String::from_utf8_lossy(&self.body).chars().take(4000).collect();
        write!(f, "\n{body}")
    }
}

impl Raw {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}):\n{self}"))
    }

    /// Asserts `status` with a JSON error body naming it.
    fn assert_error(&self, status: u16, what: &str) {
        assert_eq!(self.status, status, "{what}: unexpected status for\n{self}");
        let media = self.header("content-type").map(|v| String::from_utf8_lossy(v).to_ascii_lowercase()).unwrap_or_default();
        assert!(media.contains("json"), "{what}: errors are JSON, content-type is {media:?} in\n{self}");
        assert_eq!(self.json()["errors"][0]["status"], json!(status), "{what}: errors[0].status in\n{self}");
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads more bytes into `buf`; `Err` on EOF or error.
async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) => Err(format!("connection closed after {} bytes: {:?}", buf.len(), String::from_utf8_lossy(buf))),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) => Err(format!("read failed after {} bytes: {e}", buf.len())),
    }
}

/// Decodes a complete chunked body at the start of `data`: `(body, consumed)`.
fn dechunk(data: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + find(&data[at..], b"\r\n")?;
        let size_text = String::from_utf8_lossy(&data[at..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // No trailers from our server: the final CRLF.
            return (data.len() >= at + 2).then(|| (body, at + 2));
        }
        if data.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&data[at..at + size]);
        at += size + 2;
    }
}

/// Reads one response off `stream` (bytes already read are in `buf`;
/// bytes after the response stay there). `no_body`: a HEAD response.
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>, no_body: bool) -> Result<Raw, String> {
    let header_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        read_more(stream, buf).await?;
    };
    let head = buf[..header_end - 4].to_vec();
    let mut lines = head.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {:?}", String::from_utf8_lossy(buf)))?;
    let headers: Vec<(String, Vec<u8>)> = lines
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            let value = &line[colon + 1..];
            let start = value.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(value.len());
            let end = value.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
            Some((String::from_utf8_lossy(&line[..colon]).trim().to_ascii_lowercase(), value[start..end.max(start)].to_vec()))
        })
        .collect();
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase());
    let (body, consumed) = if no_body || status == 204 || status == 304 || (100..200).contains(&status) {
        (Vec::new(), header_end)
    } else if let Some(length) = header("content-length") {
        let length: usize = length.trim().parse().map_err(|_| format!("bad content-length {length:?}"))?;
        while buf.len() < header_end + length {
            read_more(stream, buf).await?;
        }
        (buf[header_end..header_end + length].to_vec(), header_end + length)
    } else if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            if let Some((body, used)) = dechunk(&buf[header_end..]) {
                break (body, header_end + used);
            }
            read_more(stream, buf).await?;
        }
    } else {
        // Delimited by the end of the connection.
        while read_more(stream, buf).await.is_ok() {}
        (buf[header_end..].to_vec(), buf.len())
    };
    buf.drain(..consumed);
    Ok(Raw { status, headers, body })
}

/// `method path HTTP/1.1` with `Host`, `Connection: close`, a
/// `Content-Length` (unless `headers` has one), `headers`, then `body`.
fn request_bytes(port: u16, method: &str, path: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n").into_bytes();
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-length")) {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Writes a (possibly incomplete) request and reads the answer, which must
/// come within `within` even though the request never finishes.
async fn send_for_an_answer(stream: &mut TcpStream, request: &str, within: Duration, what: &str) -> Raw {
    let started = Instant::now();
    stream.write_all(request.as_bytes()).await.expect("write request");
    let mut buf = Vec::new();
    let resp = tokio::time::timeout(within, read_response(stream, &mut buf, false))
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {within:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(started.elapsed() < within, "{what}: answered after {:?}", started.elapsed());
    resp
}

async fn connect(port: u16) -> TcpStream {
    tokio::time::timeout(RAW_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
}

/// Sends `request` on a fresh connection; the response and how long it took
/// (connecting included), or why there was none within `within`.
async fn exchange(port: u16, request: &[u8], within: Duration) -> Result<(Raw, Duration), String> {
    let head_request = request.starts_with(b"HEAD ");
    let work = async {
        let started = Instant::now();
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect: {e}"))?;
        stream.write_all(request).await.map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        let raw = read_response(&mut stream, &mut buf, head_request).await?;
        Ok((raw, started.elapsed()))
    };
    tokio::time::timeout(within, work).await.unwrap_or_else(|_| Err(format!("no response within {within:?}")))
}

/// Sends `head` and then `body` on a fresh connection while already reading
/// the response: a server may answer (a 413) before it has read a large
/// body and close, which a client that insists on sending it all first
/// reports as a broken connection instead of the answer.
async fn send_while_reading(port: u16, head: Vec<u8>, body: Vec<u8>, within: Duration) -> Result<Raw, String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect: {e}"))?;
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        if writer.write_all(&head).await.is_ok() {
            for chunk in body.chunks(64 * 1024) {
                if writer.write_all(chunk).await.is_err() {
                    break;
                }
            }
        }
        writer
    });
    let mut buf = Vec::new();
    let answer = tokio::time::timeout(within, read_response(&mut reader, &mut buf, false))
        .await
        .unwrap_or_else(|_| Err(format!("no response within {within:?}")));
    writing.abort();
    answer
}

/// One raw request on a fresh connection; panics when there is no response.
async fn raw(srv: &Server, method: &str, path: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Raw {
    let request = request_bytes(srv.port, method, path, headers, body);
    exchange(srv.port, &request, RAW_TIMEOUT).await.unwrap_or_else(|e| panic!("{method} {path}: {e}")).0
}

/// Waits until the server closes `stream` (EOF or an error); answers how
/// long that took from `since`. Bytes the server sends first (e.g. a 408)
/// are allowed. Panics if it is still open after `within`.
async fn closed_by_server(stream: &mut TcpStream, since: Instant, within: Duration) -> Duration {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = within.saturating_sub(since.elapsed());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Err(_) => panic!(
                "the server kept the connection open for {within:?} (received {:?})",
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return since.elapsed(),
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Raises this process's open-file limit to its hard limit (servers it
/// spawns inherit it): the flood tests hold thousands of sockets.
fn raise_open_file_limit() {
    #[cfg(target_os = "linux")]
    {
        #[repr(C)]
        struct RLimit {
            cur: u64,
            max: u64,
        }
        extern "C" {
            fn getrlimit(resource: i32, limit: *mut RLimit) -> i32;
            fn setrlimit(resource: i32, limit: *const RLimit) -> i32;
        }
        const RLIMIT_NOFILE: i32 = 7;
        let mut limit = RLimit { cur: 0, max: 0 };
        // SAFETY: plain libc calls on a properly laid out `struct rlimit`.
        unsafe {
            if getrlimit(RLIMIT_NOFILE, &mut limit) == 0 && limit.cur < limit.max {
                limit.cur = limit.max;
                setrlimit(RLIMIT_NOFILE, &limit);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 1. Preconditions are never ignored

on_both_backends!(unreadable_preconditions_are_400_and_write_nothing);

async fn unreadable_preconditions_are_400_and_write_nothing(backend: Backend) {
    let srv = backend.start().await;
    let (realm, http) = (srv.realm("test"), srv.client());
    let (id, _) = http.create(&realm, &person_doc(&realm, json!({ "firstName": "Mango" }))).await;
    let card_file = format!("{id}.json");
    let stored_card = http.read(&card_file).await;
    let note = format!("{realm}notes.txt");
    http.seed(&note, "original").await;
    let fresh = format!("{realm}fresh.txt");
    let unreadable = HeaderValue::from_bytes(UNREADABLE_ETAG).expect("obs-text is a valid header value");
    let patch = person_doc(&realm, json!({ "firstName": "Refused" }));

    for name in [IF_MATCH, IF_NONE_MATCH] {
        let with = |request: reqwest::RequestBuilder| request.header(name.clone(), unreadable.clone());
        let answers = [
            ("card PATCH", with(http.patch_card(&id, &patch)).fetch().await),
            ("card DELETE", with(http.delete_card(&id)).fetch().await),
            ("source POST (existing file)", with(http.write_source(&note, "replaced")).fetch().await),
            ("source POST (new file)", with(http.write_source(&fresh, "created")).fetch().await),
            ("source DELETE", with(http.delete_source(&note)).fetch().await),
        ];
        for (route, resp) in &answers {
            assert_eq!(resp.status, 400, "{route} with an unreadable {name} must be 400, never ignored:\n{resp}");
            resp.card_error(400);
        }
        assert_eq!(http.read(&card_file).await, stored_card, "{name}: the card was not changed");
        assert_eq!(http.read(&note).await, "original", "{name}: the file was not changed");
        assert_eq!(http.source_status(&fresh).await, 404, "{name}: no file was created");
    }

    for (what, request) in [("card GET", http.get_card(&id)), ("source GET", http.get_source(&note))] {
        let resp = request.header(IF_NONE_MATCH, unreadable.clone()).fetch().await;
        assert_eq!(resp.status, 400, "{what} with an unreadable If-None-Match must be 400:\n{resp}");
        resp.card_error(400);
    }

    // A readable but wrong etag is still a 412 on every write route.
    let wrong = "\"wrong\"";
    http.patch_card(&id, &patch).header(IF_MATCH, wrong).fetch().await.card_error(412);
    http.delete_card(&id).header(IF_MATCH, wrong).fetch().await.card_error(412);
    http.write_source(&note, "replaced").header(IF_MATCH, wrong).fetch().await.card_error(412);
    http.delete_source(&note).header(IF_MATCH, wrong).fetch().await.card_error(412);
    assert_eq!(http.read(&card_file).await, stored_card, "412s change no card");
    assert_eq!(http.read(&note).await, "original", "412s change no file");
}

// ---------------------------------------------------------------------------
// 2. Slow clients

/// Opens up to `count` connections that each send a partial request and
/// keep it open; answers the ones established.
async fn partial_request_flood(port: u16, count: usize) -> Vec<TcpStream> {
    futures::stream::iter(0..count)
        .map(|_| async move {
            let mut stream = tokio::time::timeout(Duration::from_secs(20), TcpStream::connect(("127.0.0.1", port))).await.ok()?.ok()?;
            stream.write_all(PARTIAL_REQUEST).await.ok()?;
            Some(stream)
        })
        .buffer_unordered(128)
        .filter_map(|stream| async move { stream })
        .collect()
        .await
}

/// While ~3 000 partial requests are held open, a normal client (a fresh
/// connection per request) gets 20 GETs and a PATCH answered correctly and
/// promptly.
async fn a_partial_request_flood_does_not_lock_out_normal_clients(serve_args: &[&str]) {
    raise_open_file_limit();
    let srv = Server::start_with(serve_with(serve_args)).await;
    let realm = srv.realm("test");
    let (id, _) = srv.client().create(&realm, &person_doc(&realm, json!({ "firstName": "Steady" }))).await;
    let card_path = path_of(&srv, &id);

    let flood = partial_request_flood(srv.port, 3_000).await;
    assert!(flood.len() >= 2_000, "only {} of 3000 flood connections could be opened", flood.len());

    let get = request_bytes(srv.port, "GET", &card_path, &[("Accept", CARD_JSON.as_bytes())], b"");
    for i in 0..20 {
        let (resp, took) = exchange(srv.port, &get, RAW_TIMEOUT).await.unwrap_or_else(|e| {
            panic!("GET {i} during a flood of {} partial requests got no answer: {e}", flood.len())
        });
        assert_eq!(resp.status, 200, "GET {i} during the flood:\n{resp}");
        assert_eq!(resp.json()["data"]["attributes"]["firstName"], json!("Steady"), "GET {i} during the flood:\n{resp}");
        assert!(took < PROMPT, "GET {i} during the flood took {took:?}");
    }
    let body = serde_json::to_vec(&person_doc(&realm, json!({ "duringFlood": true }))).expect("serialise");
    let patch = request_bytes(
        srv.port,
        "PATCH",
        &card_path,
        &[("Accept", CARD_JSON.as_bytes()), ("Content-Type", CARD_JSON.as_bytes())],
        &body,
    );
    let (resp, took) = exchange(srv.port, &patch, RAW_TIMEOUT).await.unwrap_or_else(|e| panic!("PATCH during the flood: {e}"));
    assert_eq!(resp.status, 200, "PATCH during the flood:\n{resp}");
    assert_eq!(resp.json()["data"]["attributes"]["duringFlood"], json!(true), "PATCH during the flood:\n{resp}");
    assert!(took < PROMPT, "PATCH during the flood took {took:?}");
    drop(flood);

    let got = srv.client().get_card(&id).fetch().await.expect_status(200);
    assert_eq!(got.json()["data"]["attributes"]["duringFlood"], json!(true), "the PATCH made during the flood is stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_request_flood_over_the_connection_cap_does_not_lock_out_normal_clients() {
    a_partial_request_flood_does_not_lock_out_normal_clients(&["--max-connections", "1000"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_request_flood_under_the_default_cap_does_not_lock_out_normal_clients() {
    a_partial_request_flood_does_not_lock_out_normal_clients(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn header_read_timeout_closes_a_connection_stuck_in_its_headers() {
    let srv = Server::start_with(serve_with(&["--header-read-timeout", "1s"])).await;
    let mut stream = connect(srv.port).await;
    stream.write_all(PARTIAL_REQUEST).await.expect("write partial request");
    let took = closed_by_server(&mut stream, Instant::now(), CLOSE_WITHIN).await;
    assert!(took >= NOT_BEFORE, "closed after {took:?}: a partial request is not an error, only a slow one");
    srv.client().head(&srv.realm("test"), CARD_JSON).fetch().await.expect_status(200);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_timeout_closes_kept_alive_and_silent_connections() {
    let srv = Server::start_with(serve_with(&["--idle-timeout", "1s"])).await;
    let file = srv.url("test/hello.txt");
    srv.client().seed(&file, "hello").await;

    let kept_alive = async {
        let mut stream = connect(srv.port).await;
        let request = format!("GET /test/hello.txt HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: {CARD_SOURCE}\r\n\r\n", srv.port);
        stream.write_all(request.as_bytes()).await.expect("write request");
        let mut buf = Vec::new();
        let resp = tokio::time::timeout(RAW_TIMEOUT, read_response(&mut stream, &mut buf, false))
            .await
            .expect("response timed out")
            .unwrap_or_else(|e| panic!("keep-alive GET: {e}"));
        assert_eq!((resp.status, resp.text().as_str()), (200, "hello"), "keep-alive GET:\n{resp}");
        let connection = resp.header("connection").map(|v| String::from_utf8_lossy(v).to_ascii_lowercase());
        assert_ne!(connection.as_deref(), Some("close"), "an HTTP/1.1 request is kept alive:\n{resp}");
        closed_by_server(&mut stream, Instant::now(), CLOSE_WITHIN).await
    };
    let silent = async {
        let mut stream = connect(srv.port).await;
        closed_by_server(&mut stream, Instant::now(), CLOSE_WITHIN).await
    };
    let (after_response, never_spoke) = tokio::join!(kept_alive, silent);
    assert!(after_response >= NOT_BEFORE, "the kept-alive connection was closed {after_response:?} after its response");
    assert!(never_spoke >= NOT_BEFORE, "the silent connection was closed after {never_spoke:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn body_read_timeout_answers_408_and_writes_nothing() {
    let srv = Server::start_with(serve_with(&["--body-read-timeout", "1s"])).await;
    let realm = srv.realm("test");
    let mut stream = connect(srv.port).await;
    let head = format!(
        "POST /test/slow.txt HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: {CARD_SOURCE}\r\nContent-Type: {CARD_SOURCE}\r\nContent-Length: 100\r\n\r\n0123456789",
        srv.port
    );
    let resp = send_for_an_answer(&mut stream, &head, CLOSE_WITHIN, "a stalled body").await;
    resp.assert_error(408, "a body that stops coming");
    drop(stream);
    srv.client().get_source(&format!("{realm}slow.txt")).fetch().await.card_error(404);
    assert!(stored_paths(&srv, &realm).await.is_empty(), "a timed-out body writes nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_content_length_over_the_limit_is_413_before_the_body_arrives() {
    let srv = Server::start().await;
    let (realm, http) = (srv.realm("test"), srv.client());
    let (id, _) = http.create(&realm, &person_doc(&realm, json!({ "firstName": "Small" }))).await;
    let stored_card = http.read(&format!("{id}.json")).await;
    let before = stored_paths(&srv, &realm).await;
    let card_path = path_of(&srv, &id);

    let routes = [
        ("card POST", "POST", "/test/".to_string(), CARD_JSON),
        ("card PATCH", "PATCH", card_path, CARD_JSON),
        ("source POST", "POST", "/test/huge.txt".to_string(), CARD_SOURCE),
        ("/_atomic", "POST", "/test/_atomic".to_string(), JSON_API),
    ];
    for (what, method, path, media) in routes {
        let mut stream = connect(srv.port).await;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: {media}\r\nContent-Type: {media}\r\nContent-Length: 1000000000000\r\n\r\n{{}}",
            srv.port
        );
        let resp = send_for_an_answer(&mut stream, &head, PROMPT, &format!("{what} with a Content-Length of 1 TB")).await;
        resp.assert_error(413, what);
        // The unread body is still on the wire: the client must not reuse the connection.
        let connection = resp.header("connection").map(|v| String::from_utf8_lossy(v).to_ascii_lowercase());
        assert_eq!(connection.as_deref(), Some("close"), "{what}: a 413 before the body says `connection: close`");
    }
    assert_eq!(http.read(&format!("{id}.json")).await, stored_card, "the PATCH wrote nothing");
    http.get_source(&format!("{realm}huge.txt")).fetch().await.card_error(404);
    assert_eq!(stored_paths(&srv, &realm).await, before, "no 413 wrote anything");
}

// ---------------------------------------------------------------------------
// 3. Overload is 503 + Retry-After, never 500

/// How every answer of a load went.
#[derive(Default)]
struct Tally {
    /// `i` of every PATCH answered 200.
    ok: Vec<usize>,
    /// `i` of every PATCH answered 503 (with `Retry-After`).
    unavailable: Vec<usize>,
    failures: Vec<String>,
}

impl Tally {
    /// `answers[i]` answers the PATCH that set `k{i}` to `i`.
    fn of(answers: Vec<Result<Resp, String>>) -> Tally {
        let mut tally = Tally::default();
        for (i, answer) in answers.into_iter().enumerate() {
            match answer {
                Ok(resp) if resp.status == 200 => {
                    let set = resp.json()["data"]["attributes"][format!("k{i}")].clone();
                    if set == json!(i) {
                        tally.ok.push(i);
                    } else {
                        tally.failures.push(format!("PATCH k{i}: a 200 whose card lacks k{i}:\n{resp}"));
                    }
                }
                Ok(resp) if resp.status == 503 => match assert_retry_after(&resp) {
                    Ok(()) => tally.unavailable.push(i),
                    Err(why) => tally.failures.push(why),
                },
                Ok(resp) => tally.failures.push(format!("PATCH k{i}: neither 200 nor 503:\n{resp}")),
                Err(e) => tally.failures.push(format!("PATCH k{i}: no answer: {e}")),
            }
        }
        tally
    }

    fn assert_no_failures(&self) {
        let shown: Vec<&String> = self.failures.iter().take(5).collect();
        assert!(
            self.failures.is_empty(),
            "{} bad answers ({} ok, {} 503), e.g.:\n{}",
            self.failures.len(),
            self.ok.len(),
            self.unavailable.len(),
            shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n---\n")
        );
    }
}

/// Asserts that every PATCH answered 200 is in its card and that no PATCH
/// answered 503 is (PATCH `i` set `k{i}` on `cards[i % cards.len()]`).
async fn assert_exactly_the_acknowledged_patches_landed(http: &Client, cards: &[String], tally: &Tally) {
    let (mut lost, mut refused_but_written) = (Vec::new(), Vec::new());
    for (c, card) in cards.iter().enumerate() {
        let attributes = http.get_card(card).fetch().await.expect_status(200).json()["data"]["attributes"].clone();
        let mine = |i: &&usize| **i % cards.len() == c;
        for &i in tally.ok.iter().filter(mine) {
            if attributes[format!("k{i}")] != json!(i) {
                lost.push(format!("k{i}"));
            }
        }
        for &i in tally.unavailable.iter().filter(mine) {
            if attributes.get(format!("k{i}")).is_some() {
                refused_but_written.push(format!("k{i}"));
            }
        }
    }
    assert!(lost.is_empty(), "{} acknowledged PATCHes were lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);
    assert!(
        refused_but_written.is_empty(),
        "{} PATCHes answered 503 were written anyway, e.g. {:?}",
        refused_but_written.len(),
        &refused_but_written[..refused_but_written.len().min(10)]
    );
}

on_both_backends!(three_thousand_simultaneous_patches_answer_200_or_503_and_lose_nothing);

async fn three_thousand_simultaneous_patches_answer_200_or_503_and_lose_nothing(backend: Backend) {
    const CARDS: usize = 30;
    const PATCHES: usize = 3_000;
    raise_open_file_limit();
    let srv = backend.start().await;
    let (realm, http) = (srv.realm("test"), srv.client());
    let seeds = (0..CARDS).map(|c| add(&format!("load/card-{c}.json"), person(&realm, json!({ "card": c })))).collect();
    http.atomic(&realm, &operations(seeds)).fetch().await.expect_status(201);
    let cards: Vec<String> = (0..CARDS).map(|c| format!("{realm}load/card-{c}")).collect();

    let tasks: Vec<_> = (0..PATCHES)
        .map(|i| {
            let request = http.patch_card(&cards[i % CARDS], &person_doc(&realm, json!({ format!("k{i}"): i })));
            tokio::spawn(request.try_fetch())
        })
        .collect();
    let answers = join_all(tasks).await.into_iter().map(|t| t.expect("request task")).collect();
    let tally = Tally::of(answers);
    tally.assert_no_failures();
    assert!(!tally.ok.is_empty(), "no PATCH succeeded ({} answered 503)", tally.unavailable.len());
    assert_exactly_the_acknowledged_patches_landed(&http, &cards, &tally).await;
}

on_both_backends!(calls_beyond_the_guest_instances_get_503_with_retry_after);

async fn calls_beyond_the_guest_instances_get_503_with_retry_after(backend: Backend) {
    const PATCHES: usize = 50;
    // A long lock timeout: the only 503 that can come soon is "no free guest instance".
    let srv = backend.start_with(serve_with(&["--guest-instances", "2", "--guest-wait", "200ms", "--lock-timeout", "60s"])).await;
    let (realm, http) = (srv.realm("test"), srv.client());
    let (id, _) = http.create(&realm, &person_doc(&realm, json!({ "firstName": "Busy" }))).await;

    // With the realm's lock held from outside, the first writers keep their
    // guest instances while they wait for it: the rest cannot get one.
    let holder = LockHolder::hold(&srv, &realm).await;
    let unavailable = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..PATCHES)
        .map(|i| {
            let request = http.patch_card(&id, &person_doc(&realm, json!({ format!("k{i}"): i })));
            let unavailable = unavailable.clone();
            tokio::spawn(async move {
                let answer = request.try_fetch().await;
                if matches!(&answer, Ok(resp) if resp.status == 503) {
                    unavailable.fetch_add(1, Ordering::SeqCst);
                }
                answer
            })
        })
        .collect();
    // guest-wait is 200 ms: within 5 s, well before any lock timeout.
    wait_until!("a PATCH that found no free guest instance answers 503", Duration::from_secs(5), {
        (unavailable.load(Ordering::SeqCst) > 0).then_some(())
    });
    holder.release().await;

    let answers = join_all(tasks).await.into_iter().map(|t| t.expect("request task")).collect();
    let tally = Tally::of(answers);
    tally.assert_no_failures();
    assert!(!tally.unavailable.is_empty(), "no PATCH answered 503");
    assert_exactly_the_acknowledged_patches_landed(&http, &[id], &tally).await;
}

// ---------------------------------------------------------------------------
// 4. `/_atomic` inside its limits: 201 or 4xx, never 5xx

/// 1 000 (or `count`) small adds: cards and source files alternately.
fn small_adds(realm: &str, count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| match i % 2 {
            0 => add(&format!("many/card-{i}.json"), person(realm, json!({ "n": i }))),
            _ => add(&format!("many/file-{i}.txt"), source(&format!("file {i}"))),
        })
        .collect()
}

on_both_backends!(
    atomic_with_the_maximum_number_of_operations_succeeds,
    atomic_with_one_operation_too_many_is_413_and_writes_nothing,
    atomic_rich_cards_just_under_the_body_limit_never_fail_with_a_5xx,
    atomic_body_over_the_limit_is_413_and_writes_nothing,
);

async fn atomic_with_the_maximum_number_of_operations_succeeds(backend: Backend) {
    let srv = backend.start().await;
    let (realm, http) = (srv.realm("test"), srv.client());
    let resp = http.atomic(&realm, &operations(small_adds(&realm, 1_000))).fetch().await.expect_status(201);
    let results = resp.json()["atomic:results"].as_array().map_or(0, |r| r.len());
    assert_eq!(results, 1_000, "one result per operation");
    assert_eq!(stored_paths(&srv, &realm).await.len(), 1_000, "every operation is stored");
    let card = http.get_card(&format!("{realm}many/card-998")).fetch().await.expect_status(200);
    assert_eq!(card.json()["data"]["attributes"]["n"], json!(998));
    assert_eq!(http.read(&format!("{realm}many/file-999.txt")).await, "file 999");
}

async fn atomic_with_one_operation_too_many_is_413_and_writes_nothing(backend: Backend) {
    let srv = backend.start().await;
    let (realm, http) = (srv.realm("test"), srv.client());
    let resp = http.atomic(&realm, &operations(small_adds(&realm, 1_001))).fetch().await;
    assert_error(&resp, 413);
    assert!(stored_paths(&srv, &realm).await.is_empty(), "a refused /_atomic writes nothing");
    http.get_card(&format!("{realm}many/card-0")).fetch().await.card_error(404);
}

/// A card with 15 attributes (nested objects, arrays, nulls) and a
/// relationship; `pad` bytes of biography.
fn rich_card(realm: &str, i: usize, pad: usize) -> Value {
    let attributes = json!({
        "firstName": format!("First{i}"),
        "lastName": format!("Last{i}"),
        "age": i % 90,
        "active": i.is_multiple_of(2),
        "rating": 4.5,
        "tags": ["alpha", "beta", format!("t{i}")],
        "address": { "street": format!("{i} Main St"), "city": "Paris", "zip": null, "geo": { "lat": 48.25, "lng": 2.5 } },
        "phones": [{ "kind": "home", "number": format!("+33-{i}") }, { "kind": "work", "number": null }],
        "matrix": [[1, 2, 3], [4, 5, 6]],
        "history": [{ "at": i, "by": "import", "changes": { "from": null, "to": "created" } }],
        "email": format!("person{i}@example.com"),
        "nickname": null,
        "rank": i,
        "settings": { "theme": "dark", "flags": [true, false], "limits": { "daily": 10, "weekly": 70 } },
        "bio": "b".repeat(pad),
    });
    let relationships = json!({ "friend": link(&format!("{realm}rich/card-{}", (i + 1) % 1000)) });
    card_resource(&format!("{realm}person"), "Person", Some(attributes), Some(relationships))
}

async fn atomic_rich_cards_just_under_the_body_limit_never_fail_with_a_5xx(backend: Backend) {
    const CARDS: usize = 1_000;
    const LIMIT: usize = 8 * MIB;
    let srv = backend.start().await;
    let (realm, http) = (srv.realm("test"), srv.client());
    let build = |pad: usize| operations((0..CARDS).map(|i| add(&format!("rich/card-{i}.json"), rich_card(&realm, i, pad))).collect());
    let unpadded = serde_json::to_vec(&build(0)).expect("serialise").len();
    let pad = (LIMIT - 16 * 1024 - unpadded) / CARDS;
    let body = build(pad);
    let size = serde_json::to_vec(&body).expect("serialise").len();
    assert!(size < LIMIT && size > LIMIT - 64 * 1024, "the body is {size} bytes, meant to be just under {LIMIT}");

    let resp = http.atomic(&realm, &body).fetch().await;
    match resp.status {
        201 => {
            let results = resp.json()["atomic:results"].as_array().map_or(0, |r| r.len());
            assert_eq!(results, CARDS, "one result per card");
            for i in [0, CARDS / 2, CARDS - 1] {
                let got = http.get_card(&format!("{realm}rich/card-{i}")).fetch().await.expect_status(200);
                let sent = rich_card(&realm, i, pad);
                assert_eq!(got.json()["data"]["attributes"], sent["attributes"], "rich card {i} round-trips");
            }
        }
        413 => {
            assert_error(&resp, 413);
            assert!(stored_paths(&srv, &realm).await.is_empty(), "a refused /_atomic writes nothing");
        }
        _ => panic!("an /_atomic body of {size} bytes (under the limit) must be 201 or 413:\n{resp}"),
    }
}

async fn atomic_body_over_the_limit_is_413_and_writes_nothing(backend: Backend) {
    let srv = backend.start().await;
    let (realm, http) = (srv.realm("test"), srv.client());
    // Two files, each under the 5 MiB file limit, together over 8 MiB.
    let content = "z".repeat(4 * MIB + 300 * 1024);
    let body = serde_json::to_vec(&operations(vec![add("big-1.txt", source(&content)), add("big-2.txt", source(&content))]))
        .expect("serialise");
    assert!(body.len() > 8 * MIB);
    let length = body.len().to_string();
    let head = request_bytes(
        srv.port,
        "POST",
        "/test/_atomic",
        &[("Accept", JSON_API.as_bytes()), ("Content-Type", JSON_API.as_bytes()), ("Content-Length", length.as_bytes())],
        b"",
    );
    let resp = send_while_reading(srv.port, head, body, RAW_TIMEOUT).await.unwrap_or_else(|e| panic!("/_atomic over 8 MiB: {e}"));
    resp.assert_error(413, "an /_atomic body over 8 MiB");
    assert!(stored_paths(&srv, &realm).await.is_empty(), "a refused /_atomic writes nothing");
    assert_eq!(http.source_status(&format!("{realm}big-1.txt")).await, 404);
}

// ---------------------------------------------------------------------------
// 5. Error bodies never carry internals

/// The fault-injection guest of `guests.rs` (one build per test binary:
/// builds of guest variants share a target dir, so they must not race).
async fn faulty_guest() -> &'static std::path::Path {
    crate::guests::fixtures().await.faulty.as_path()
}

on_both_backends!(a_trapping_guest_answers_a_short_500_with_a_correlation_id_the_log_names);

async fn a_trapping_guest_answers_a_short_500_with_a_correlation_id_the_log_names(backend: Backend) {
    let guest = faulty_guest().await.to_str().expect("utf-8 path").to_string();
    let srv = backend.start_with(serve_with(&["--guest", &guest])).await;
    let (realm, http) = (srv.realm("test"), srv.client());
    let mut ids = Vec::new();
    for fault in ["trap", "trap-in-lock"] {
        let resp = http.get_card(&format!("{realm}_fault/{fault}")).fetch().await;
        let error = resp.card_error(500);
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.chars().count() < 300, "{fault}: the message is {} chars long:\n{resp}", message.chars().count());
        let lowercase = resp.body.to_lowercase();
        for internal in ["backtrace", "wasm", "panicked", ".rs:", "/src/", "/home/", "/root/", "/tmp/", "/work/", "\\\\"] {
            assert!(!lowercase.contains(internal), "{fault}: the error body shows internals ({internal:?}):\n{resp}");
        }
        let id = error["id"].as_str().unwrap_or_else(|| panic!("{fault}: no correlation id in errors[0].id:\n{resp}")).to_string();
        assert!(!id.trim().is_empty() && id.len() <= 100, "{fault}: correlation id {id:?}");
        wait_until!(format!("the server log names correlation id {id}"), Duration::from_secs(5), {
            srv.log().contains(&id).then_some(())
        });
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "every failure has its own correlation id");
    assert_eq!(http.source_status(&format!("{realm}half-written.txt")).await, 404, "the trap rolled back");
}

// ---------------------------------------------------------------------------
// 6. The `_` namespace is reserved on every write route

on_both_backends!(the_underscore_namespace_is_reserved_on_every_write_route);

async fn the_underscore_namespace_is_reserved_on_every_write_route(backend: Backend) {
    let srv = backend.start().await;
    let (realm, http) = (srv.realm("test"), srv.client());
    let card = add("./_x.json", person(&realm, json!({ "firstName": "Hidden" })));
    let file = add("./_y.txt", source("hidden"));
    let fine = add("./fine.txt", source("fine"));
    for (what, ops) in [
        ("a card at ./_x.json", vec![card.clone()]),
        ("a source at ./_y.txt", vec![file.clone()]),
        ("both, after a valid op", vec![fine, card, file]),
    ] {
        let resp = http.atomic(&realm, &operations(ops)).fetch().await;
        assert_eq!(resp.status, 400, "/_atomic adding {what}:\n{resp}");
        assert_eq!(stored_paths(&srv, &realm).await, Vec::<String>::new(), "/_atomic adding {what} wrote something");
    }

    let reserved = format!("{realm}_anything");
    http.write_source(&reserved, "hidden").fetch().await.card_error(405);
    assert!(stored_paths(&srv, &realm).await.is_empty(), "a source POST to _anything wrote it");

    // A file that got there behind the server's back is not deletable either.
    Db::open(srv.db_url()).await.insert_file(&realm, "_anything", "planted").await;
    http.delete_source(&reserved).fetch().await.card_error(405);
    assert_eq!(stored_paths(&srv, &realm).await, vec!["_anything".to_string()], "a source DELETE of _anything removed it");
}

// ---------------------------------------------------------------------------
// 7. One path grammar

/// `%00`–`%1f` and `%7f`, then the CR LF pair.
fn control_escapes() -> Vec<String> {
    let mut escapes: Vec<String> = (0u8..0x20).chain([0x7f]).map(|b| format!("%{b:02x}")).collect();
    escapes.push("%0d%0a".into());
    escapes
}

on_both_backends!(
    undecodable_and_control_bytes_are_400_in_paths_and_hrefs_alike,
    redirects_carry_an_ascii_percent_encoded_location,
);

async fn undecodable_and_control_bytes_are_400_in_paths_and_hrefs_alike(backend: Backend) {
    let srv = backend.start().await;
    let (realm, http) = (srv.realm("test"), srv.client());
    let card = person(&realm, json!({ "firstName": "Odd" }));

    for href in ["%ff.json", "%fe.json"] {
        let resp = http.atomic(&realm, &operations(vec![add(href, card.clone())])).fetch().await;
        assert_eq!(resp.status, 400, "/_atomic href {href}:\n{resp}");
    }
    for accept in [CARD_JSON, CARD_SOURCE] {
        for path in ["/test/%ff.json", "/test/%fe.json"] {
            raw(&srv, "GET", path, &[("Accept", accept.as_bytes())], b"").await.assert_error(400, &format!("GET {path} ({accept})"));
        }
    }
    raw(&srv, "POST", "/test/%ff.txt", &[("Accept", CARD_SOURCE.as_bytes())], b"evil").await.assert_error(400, "POST /test/%ff.txt");
    assert_eq!(http.source_status(&format!("{realm}%EF%BF%BD.json")).await, 404, "nothing is stored under U+FFFD");

    for escape in control_escapes() {
        let path = format!("/test/a{escape}b.txt");
        for method in ["GET", "POST", "DELETE"] {
            let resp = raw(&srv, method, &path, &[("Accept", CARD_SOURCE.as_bytes())], b"evil").await;
            resp.assert_error(400, &format!("{method} {path}"));
        }
        let href = format!("a{escape}b.txt");
        let resp = http.atomic(&realm, &operations(vec![add(&href, source("evil"))])).fetch().await;
        assert_eq!(resp.status, 400, "/_atomic href {href}:\n{resp}");
    }
    let resp = raw(&srv, "GET", "/test/x%0d%0a.json", &[("Accept", CARD_JSON.as_bytes())], b"").await;
    resp.assert_error(400, "GET /test/x%0d%0a.json (card), never a redirect");
    let stored = stored_paths(&srv, &realm).await;
    assert!(stored.is_empty(), "refused paths and hrefs wrote {stored:?}");
}

async fn redirects_carry_an_ascii_percent_encoded_location(backend: Backend) {
    let srv = backend.start().await;
    let location = |resp: &Raw| -> String {
        let bytes = resp.header("location").unwrap_or_else(|| panic!("a 302 without Location:\n{resp}"));
        assert!(bytes.iter().all(|b| b.is_ascii_graphic()), "Location is not visible ASCII: {:?}\n{resp}", String::from_utf8_lossy(bytes));
        String::from_utf8_lossy(bytes).into_owned()
    };

    let resp = raw(&srv, "GET", "/test/caf%C3%A9.json", &[("Accept", CARD_JSON.as_bytes())], b"").await;
    assert_eq!(resp.status, 302, "GET /test/café.json with the card Accept:\n{resp}");
    let to = location(&resp);
    assert!(to.ends_with("/test/caf%C3%A9") || to.ends_with("/test/caf%c3%a9"), "Location {to:?} should end in /test/caf%C3%A9");
    let resolved = url::Url::parse(&srv.url("test/caf%C3%A9.json")).and_then(|u| u.join(&to)).expect("Location resolves");
    assert_eq!(resolved.as_str().to_ascii_lowercase(), srv.url("test/caf%c3%a9"), "Location {to:?} names the card");

    let resp = raw(&srv, "GET", "/test", &[("Accept", CARD_JSON.as_bytes())], b"").await;
    assert_eq!(resp.status, 302, "GET /test (the realm without its slash):\n{resp}");
    let to = location(&resp);
    let resolved = url::Url::parse(&srv.url("test")).and_then(|u| u.join(&to)).expect("Location resolves");
    assert_eq!(resolved.as_str(), srv.realm("test"), "Location {to:?} is the realm");
}

// ---------------------------------------------------------------------------
// 8. Same document, same answer on both backends

on_both_backends!(
    a_source_file_containing_nul_is_400_and_writes_nothing,
    a_card_string_containing_nul_round_trips,
    keys_too_long_for_an_index_are_refused_or_left_unsearched_alike,
);

/// Postgres refuses a btree entry over 2704 bytes, and one refused row
/// would fail the shared commit of every request in it: a path over 1024
/// bytes and a card type over 1024 are a 400 on both backends, and a card
/// with a very long attribute name is stored (that field is not
/// searchable) beside a card written at the same time.
async fn keys_too_long_for_an_index_are_refused_or_left_unsearched_alike(backend: Backend) {
    let srv = backend.start().await;
    let (realm, http) = (srv.realm("test"), srv.client());
    let longest = format!("{}.txt", "a".repeat(1020));
    http.seed(&format!("{realm}{longest}"), "fits").await;
    assert_eq!(http.read(&format!("{realm}{longest}")).await, "fits");
    let too_long = format!("{}.txt", "b".repeat(1021));
    http.write_source(&format!("{realm}{too_long}"), "too long").fetch().await.card_error(400);
    let resp = http.atomic(&realm, &operations(vec![add(&too_long, source("too long"))])).fetch().await;
    assert_eq!(resp.status, 400, "/_atomic href of 1025 bytes:\n{resp}");

    let long_type = card_resource(&format!("{realm}{}", "m".repeat(1100)), "Person", Some(json!({ "firstName": "Long" })), None);
    let resp = http.create_card(&realm, &json!({ "data": long_type })).fetch().await;
    assert_eq!(resp.status, 400, "a card type over 1024 bytes:\n{resp}");

    // Letters from xorshift, which Postgres cannot compress under its limit.
    let mut state = 0x9e37_79b9_u32;
    let long_name: String = (0..3000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect();
    let odd = person(&realm, json!({ long_name.clone(): "value", "firstName": "Odd" }));
    let plain = person(&realm, json!({ "firstName": "Plain" }));
    let (odd, plain) = (json!({ "data": odd }), json!({ "data": plain }));
    let (odd, plain) = tokio::join!(http.create(&realm, &odd), http.create(&realm, &plain));
    let stored = http.get_card(&odd.0).fetch().await.expect_status(200).json();
    assert_eq!(stored["data"]["attributes"][&long_name], "value", "the long attribute round-trips");
    http.get_card(&plain.0).fetch().await.expect_status(200);
    assert_eq!(stored_paths(&srv, &realm).await.len(), 3, "the longest path and the two cards, nothing refused");
}

async fn a_source_file_containing_nul_is_400_and_writes_nothing(backend: Backend) {
    let srv = backend.start().await;
    let (realm, http) = (srv.realm("test"), srv.client());
    let file = format!("{realm}nul.txt");
    http.write_source(&file, "before\u{0}after").fetch().await.card_error(400);
    http.get_source(&file).fetch().await.card_error(404);

    let resp = http.atomic(&realm, &operations(vec![add("nul-atomic.txt", source("before\u{0}after"))])).fetch().await;
    assert_eq!(resp.status, 400, "/_atomic source content with NUL:\n{resp}");
    assert_eq!(http.source_status(&format!("{realm}nul-atomic.txt")).await, 404);

    http.seed(&file, "clean").await;
    http.write_source(&file, "dirty\u{0}").fetch().await.card_error(400);
    assert_eq!(http.read(&file).await, "clean", "a refused overwrite keeps the old text");
    assert_eq!(stored_paths(&srv, &realm).await, vec!["nul.txt".to_string()]);
}

async fn a_card_string_containing_nul_round_trips(backend: Backend) {
    let srv = backend.start().await;
    let (realm, http) = (srv.realm("test"), srv.client());
    let attributes = json!({ "firstName": "a\u{0}b", "list": ["\u{0}"], "nested": { "k": "x\u{0}" } });
    let (id, created) = http.create(&realm, &person_doc(&realm, attributes.clone())).await;
    assert_eq!(created.json()["data"]["attributes"], attributes, "the 201 answers the attributes as sent");
    let got = http.get_card(&id).fetch().await.expect_status(200);
    assert_eq!(got.json()["data"]["attributes"], attributes, "GET answers the attributes as sent");

    let patched = http.patch_card(&id, &person_doc(&realm, json!({ "lastName": "\u{0}z" }))).fetch().await.expect_status(200);
    assert_eq!(patched.json()["data"]["attributes"]["lastName"], json!("\u{0}z"));
    let got = http.get_card(&id).fetch().await.expect_status(200).json()["data"]["attributes"].clone();
    let mut expected = attributes.clone();
    expected["lastName"] = json!("\u{0}z");
    assert_eq!(got, expected, "GET after PATCH");
    let stored: Value = serde_json::from_str(&http.read(&format!("{id}.json")).await).expect("stored JSON");
    assert_eq!(stored["data"]["attributes"], expected, "the stored file");
    // The search index holds it too, and finds it by that very string.
    let query = json!({"filter": {"eq": {"lastName": "\u{0}z", "firstName": "a\u{0}b"}}}).to_string();
    let found = http.request(Method::from_bytes(b"QUERY").unwrap(), &format!("{realm}_search"), "application/vnd.card+json").body(query).fetch().await.expect_status(200);
    assert_eq!(found.json()["data"][0]["id"], json!(id), "found by search: {}", found.body);
}

// ---------------------------------------------------------------------------
// 9. Relationship links must be objects

on_both_backends!(relationship_links_that_are_not_an_object_are_400_and_write_nothing);

async fn relationship_links_that_are_not_an_object_are_400_and_write_nothing(backend: Backend) {
    // Same opening as `unreadable_preconditions_are_400_and_write_nothing`, spelled out: a stored card whose text each refusal must leave as it was.
    let srv = backend.start().await;
    let (realm, http) = (srv.realm("test"), srv.client());
    let (id, _) = http.create(&realm, &person_doc(&realm, json!({ "firstName": "Linked" }))).await;
    let card_file = format!("{id}.json");
    let stored_card = http.read(&card_file).await;
    let before = stored_paths(&srv, &realm).await;

    for links in [json!("x"), json!(42), json!(["./a"]), json!(true)] {
        let relationships = json!({ "friend": { "links": links } });
        let doc = card_doc(&format!("{realm}person"), "Person", Some(json!({ "firstName": "Bad" })), Some(relationships.clone()));
        let resp = http.create_card(&realm, &doc).fetch().await;
        assert_eq!(resp.status, 400, "POST with links {links}:\n{resp}");
        resp.card_error(400);
        let resp = http.patch_card(&id, &doc).fetch().await;
        assert_eq!(resp.status, 400, "PATCH with links {links}:\n{resp}");
        resp.card_error(400);
        let resource = card_resource(&format!("{realm}person"), "Person", Some(json!({ "firstName": "Bad" })), Some(relationships));
        let resp = http.atomic(&realm, &operations(vec![add("bad-links.json", resource)])).fetch().await;
        assert_eq!(resp.status, 400, "/_atomic add with links {links}:\n{resp}");

        assert_eq!(http.read(&card_file).await, stored_card, "links {links}: the PATCH wrote nothing");
        assert_eq!(stored_paths(&srv, &realm).await, before, "links {links}: nothing was created");
    }
}

// ---------------------------------------------------------------------------
// 10. Auth

/// A JWT signed here with the servers' secret.
fn sign(claims: &Value) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes())).expect("sign JWT")
}

/// `request` with this exact `Authorization` header.
fn with_authorization(request: reqwest::RequestBuilder, value: &str) -> reqwest::RequestBuilder {
    request.header(AUTHORIZATION, value)
}

on_both_backends!(
    the_bearer_scheme_is_case_insensitive,
    a_token_that_is_not_yet_valid_is_401,
    a_realm_owner_grant_reads_and_writes,
);

async fn the_bearer_scheme_is_case_insensitive(backend: Backend) {
    let srv = backend.start().await;
    let (realm, http) = (srv.realm("private"), srv.client());
    let token = srv.token(ALICE, &realm, &["read", "write"]).await;
    for (i, scheme) in ["Bearer", "bearer", "BEARER", "bEaReR"].into_iter().enumerate() {
        let authorization = format!("{scheme} {token}");
        let file = format!("{realm}scheme-{i}.txt");
        let resp = with_authorization(http.write_source(&file, scheme), &authorization).fetch().await;
        assert_eq!(resp.status, 204, "a write with `{scheme} <token>`:\n{resp}");
        let resp = with_authorization(http.get_source(&file), &authorization).fetch().await;
        assert_eq!((resp.status, resp.body.as_str()), (200, scheme), "a read with `{scheme} <token>`:\n{resp}");
    }
}

async fn a_token_that_is_not_yet_valid_is_401(backend: Backend) {
    let srv = backend.start().await;
    let (realm, http) = (srv.realm("private"), srv.client());
    let alice = srv.client_as(ALICE, &realm, &["read", "write"]).await;
    let file = format!("{realm}secret.txt");
    alice.seed(&file, "secret").await;

    let now = now_unix();
    let early = sign(&json!({
        "user": ALICE, "realm": realm, "permissions": ["read", "write"], "exp": now + 7200, "nbf": now + 3600,
    }));
    let early = http.with_token(&early);
    early.get_source(&file).fetch().await.card_error(401);
    early.write_source(&file, "overwritten").fetch().await.card_error(401);
    early.write_source(&format!("{realm}new.txt"), "new").fetch().await.card_error(401);
    assert_eq!(alice.read(&file).await, "secret", "the early token wrote nothing");
    assert_eq!(stored_paths(&srv, &realm).await, vec!["secret.txt".to_string()], "the early token created nothing");
}

async fn a_realm_owner_grant_reads_and_writes(backend: Backend) {
    let mut options = ServerOptions::default();
    options.realms.push(RealmSpec::new("owned", Public::None).grant("carol", &["realm-owner"]));
    let srv = backend.start_with(options).await;
    let realm = srv.realm("owned");
    srv.client().get_card(&format!("{realm}nobody")).fetch().await.card_error(401);

    let carol = srv.client_as("carol", &realm, &["realm-owner"]).await;
    let (id, _) = carol.create(&realm, &person_doc(&realm, json!({ "firstName": "Owned" }))).await;
    carol.get_card(&id).fetch().await.expect_status(200);
    let patched = carol.patch_card(&id, &person_doc(&realm, json!({ "lastName": "Card" }))).fetch().await.expect_status(200);
    assert_eq!(patched.json()["data"]["attributes"]["lastName"], json!("Card"));
    let file = format!("{realm}notes.txt");
    carol.seed(&file, "mine").await;
    assert_eq!(carol.read(&file).await, "mine");
    carol.atomic(&realm, &operations(vec![add("atomic.txt", source("a"))])).fetch().await.expect_status(201);
    carol.delete_source(&file).fetch().await.expect_status(204);
    carol.delete_card(&id).fetch().await.expect_status(204);
    assert_eq!(stored_paths(&srv, &realm).await, vec!["atomic.txt".to_string()]);
}

// ---------------------------------------------------------------------------
// 11. Unknown paths cost nothing; new realms still appear

/// `realm_list_loads_total` from `GET /_metrics`.
async fn realm_list_loads(srv: &Server) -> f64 {
    srv.metric("realm_list_loads_total").await
}

on_both_backends!(requests_under_no_realm_do_not_reload_the_realm_list, a_realm_created_while_serving_is_reachable_within_5s);

async fn requests_under_no_realm_do_not_reload_the_realm_list(backend: Backend) {
    let srv = backend.start().await;
    let http = srv.client();
    let started = Instant::now();
    let before = realm_list_loads(&srv).await;
    let statuses: Vec<u16> = futures::stream::iter(0..500)
        .map(|i| {
            let request = http.get_card(&srv.url(&format!("nowhere-{i}/card-{i}")));
            async move { request.fetch().await.status }
        })
        .buffer_unordered(20)
        .collect()
        .await;
    let after = realm_list_loads(&srv).await;
    let elapsed = started.elapsed().as_secs_f64();
    let not_404: Vec<&u16> = statuses.iter().filter(|s| **s != 404).collect();
    assert!(not_404.is_empty(), "paths under no realm are 404, got {not_404:?}");
    assert!(
        after - before <= elapsed + 2.0,
        "500 requests under no realm reloaded the realm list {} times in {elapsed:.1} s",
        after - before
    );
}

async fn a_realm_created_while_serving_is_reachable_within_5s(backend: Backend) {
    let srv = backend.start().await;
    let http = srv.client();
    let late = srv.realm("late");
    http.head(&late, CARD_JSON).fetch().await.expect_status(404);
    cli(&["realm", "create", &late, "--public", "write", "--database", srv.db_url()]).await.expect_success();
    let created = Instant::now();
    wait_until!(format!("{late} is served"), Duration::from_secs(5), {
        (http.head(&late, CARD_JSON).fetch().await.status == 200).then_some(())
    });
    assert!(created.elapsed() <= Duration::from_secs(5), "the new realm took {:?}", created.elapsed());
    http.seed(&format!("{late}hello.txt"), "hello").await;
    assert_eq!(http.read(&format!("{late}hello.txt")).await, "hello");
}
