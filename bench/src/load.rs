//! `realm-bench load`: closed-loop HTTP PATCH load against one or more
//! realm-host replicas. Each client keeps one request in flight over a
//! keep-alive connection, picks a realm and a card at random for every
//! request, and sends attributes no other request sends (so every PATCH
//! really writes). Requests completing after the deadline are not counted.
//!
//! `--subscribers N` first opens N realm-event streams (`GET <realm>_events`,
//! Server-Sent Events), spread round-robin over the realms written and the
//! servers, each read continuously by its own task; every run's record then
//! also says how many events they received (`subscribers` in its JSON line),
//! and after the last run a `subscribers-final` line checks every stream
//! against its realm's newest event id (nothing missing, nothing repeated).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use crate::cards;
use crate::cpu::Watch;
use crate::record::Record;
use crate::stats::Rng;

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Base URL of a replica (repeat for several; clients are spread round-robin).
    #[arg(long = "server", required = true)]
    pub servers: Vec<String>,
    /// Realms written: `<server>/<prefix>1/` … `<server>/<prefix>N/` (they must exist, writable by `*`).
    #[arg(long, default_value_t = 1)]
    pub realms: usize,
    #[arg(long, default_value = "r")]
    pub realm_prefix: String,
    /// Cards created in each realm before the runs; each request patches one at random.
    #[arg(long, default_value_t = 8)]
    pub cards_per_realm: usize,
    /// Size of each card's JSON, in bytes.
    #[arg(long, default_value_t = 1024)]
    pub card_bytes: usize,
    #[arg(long)]
    pub clients: usize,
    /// Length of one measured run.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Unmeasured load before the first run.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Figure this belongs to, e.g. `host c32 realms1 rep1`.
    #[arg(long)]
    pub key: String,
    /// Kind of figure (`host`, `sqlite-host`).
    #[arg(long, default_value = "host")]
    pub kind: String,
    /// Server processes whose CPU time is accounted.
    #[arg(long = "watch-pid")]
    pub watch_pids: Vec<i32>,
    /// Postgres postmaster whose children's CPU time is accounted.
    #[arg(long)]
    pub pg_pid: Option<i32>,
    /// Results file (JSON lines, appended).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "")]
    pub note: String,
    /// Realm-event (SSE) streams opened before the runs, round-robin over
    /// the realms written and the servers; each is read continuously.
    #[arg(long, default_value_t = 0)]
    pub subscribers: usize,
}

struct Ctx {
    http: reqwest::Client,
    servers: Vec<String>,
    /// Per realm, the URL paths of its cards.
    cards: Vec<Vec<String>>,
    sequence: AtomicU64,
}

#[derive(Default)]
struct ClientOut {
    latencies_us: Vec<u64>,
    /// Successful requests per realm (index into `Ctx::cards`).
    ok_per_realm: Vec<u64>,
    errors: BTreeMap<String, u64>,
    samples: Vec<String>,
}

pub async fn run(args: LoadArgs) -> Result<(), String> {
    let servers: Vec<String> = args.servers.iter().map(|s| s.trim_end_matches('/').to_string()).collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients + 16)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let cards = create_cards(&http, &servers[0], &args).await?;
    let ctx = Arc::new(Ctx { http, servers, cards, sequence: AtomicU64::new(1) });
    let watch = Watch { servers: args.watch_pids.clone(), postmaster: args.pg_pid };
    let subscribers = if args.subscribers > 0 { Some(Subscribers::open(&ctx.servers, &args).await?) } else { None };

    if args.warmup > 0.0 {
        one_run(&ctx, args.clients, Duration::from_secs_f64(args.warmup)).await;
    }
    for run in 0..args.runs {
        let metrics_before = metrics(&ctx).await;
        let streams_before = subscribers.as_ref().map(Subscribers::totals);
        let tracker = watch.track();
        let started = Instant::now();
        let outs = one_run(&ctx, args.clients, Duration::from_secs_f64(args.seconds)).await;
        let elapsed = started.elapsed().as_secs_f64().min(args.seconds);
        let cpu = tracker.finish();
        let streams_after = subscribers.as_ref().map(Subscribers::totals);
        let metrics_after = metrics(&ctx).await;

        let mut record = Record {
            kind: args.kind.clone(),
            key: args.key.clone(),
            run,
            clients: args.clients,
            realms: args.realms,
            replicas: ctx.servers.len(),
            seconds: elapsed,
            cpu: Some(cpu),
            note: args.note.clone(),
            ..Record::default()
        };
        let mut latencies = Vec::new();
        let mut ok_per_realm = vec![0u64; ctx.cards.len()];
        for out in outs {
            latencies.extend(out.latencies_us);
            for (r, n) in out.ok_per_realm.iter().enumerate() {
                ok_per_realm[r] += n;
            }
            for (k, n) in out.errors {
                *record.error_kinds.entry(k).or_default() += n;
            }
            for s in out.samples {
                if record.error_samples.len() < 3 {
                    record.error_samples.push(s);
                }
            }
        }
        record.set_outcome(latencies);
        record.peak_rss_mb = args.watch_pids.iter().filter_map(|&pid| peak_rss_mb(pid)).reduce(f64::max);
        if let (Some(before), Some(after)) = (metrics_before, metrics_after) {
            let delta = |f: fn(&Counters) -> f64| Some(f(&after) - f(&before)).filter(|d| d.is_finite());
            record.batches = delta(|c| c.commits).map(|d| d as u64);
            record.batch_members = delta(|c| c.members).map(|d| d as u64);
            record.realm_batches = delta(|c| c.realm_batches).map(|d| d as u64);
            record.turns = delta(|c| c.turns).map(|d| d as u64);
            record.turn_s = delta(|c| c.turn_s);
            record.commit_s = delta(|c| c.commit_s);
        }
        eprintln!("{}", record.summary());
        match (&subscribers, streams_before, streams_after) {
            (Some(subs), Some(before), Some(after)) => {
                let stats = subs.run_stats(&before, &after, &ok_per_realm, elapsed);
                eprintln!("  subscribers: {stats}");
                let mut line = serde_json::to_value(&record).map_err(|e| e.to_string())?;
                line["subscribers"] = stats;
                append_json(&args.out, &line)?;
            }
            _ => record.append_to(&args.out)?,
        }
    }
    if let Some(subs) = subscribers {
        // Long enough for the repair poll (1 s by default) to deliver
        // anything a lost wake-up left behind.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let check = subs.final_check().await;
        eprintln!("  subscribers at the end: {check}");
        let line = json!({"kind": "subscribers-final", "key": args.key, "note": args.note, "subscribers": check});
        append_json(&args.out, &line)?;
        subs.close();
    }
    Ok(())
}

fn append_json(path: &std::path::Path, value: &serde_json::Value) -> Result<(), String> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    writeln!(f, "{value}").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// POSTs the cards every request will patch; answers their URL paths.
async fn create_cards(http: &reqwest::Client, server: &str, args: &LoadArgs) -> Result<Vec<Vec<String>>, String> {
    let mut all = Vec::new();
    for r in 1..=args.realms {
        let realm = format!("{server}/{}{r}/", args.realm_prefix);
        let mut paths = Vec::new();
        for _ in 0..args.cards_per_realm {
            let body = json!({"data": cards::person_resource(args.card_bytes, "./person")}).to_string();
            let response = http
                .post(&realm)
                .header("accept", "application/vnd.card+json")
                .header("content-type", "application/vnd.card+json")
                .body(body)
                .send()
                .await
                .map_err(|e| format!("POST {realm}: {e}"))?;
            let status = response.status();
            let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
            let text = response.text().await.unwrap_or_default();
            let (true, Some(location)) = (status.as_u16() == 201, location) else {
                return Err(format!("POST {realm} answered {status}: {text:.300}"));
            };
            let url = url::Url::parse(&location).map_err(|e| format!("location {location}: {e}"))?;
            paths.push(url.path().to_string());
        }
        all.push(paths);
    }
    Ok(all)
}

async fn one_run(ctx: &Arc<Ctx>, clients: usize, length: Duration) -> Vec<ClientOut> {
    let deadline = Instant::now() + length;
    run_clients(clients, |client| {
        let ctx = ctx.clone();
        async move { client_loop(&ctx, client, deadline).await }
    })
    .await
}

/// Runs `client(0)` … `client(clients - 1)` as concurrent tasks; answers
/// the outputs of those that finished (a client that panicked is left out).
pub(crate) async fn run_clients<T, Fut>(clients: usize, client: impl Fn(usize) -> Fut) -> Vec<T>
where
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let tasks: Vec<_> = (0..clients).map(|c| tokio::spawn(client(c))).collect();
    let mut outs = Vec::new();
    for t in tasks {
        if let Ok(out) = t.await {
            outs.push(out);
        }
    }
    outs
}

async fn client_loop(ctx: &Ctx, client: usize, deadline: Instant) -> ClientOut {
    let mut out = ClientOut { ok_per_realm: vec![0; ctx.cards.len()], ..ClientOut::default() };
    let mut rng = Rng::new(client as u64 + 1 + ctx.sequence.load(Ordering::Relaxed));
    let server = &ctx.servers[client % ctx.servers.len()];
    while Instant::now() < deadline {
        let realm_index = rng.below(ctx.cards.len());
        let realm = &ctx.cards[realm_index];
        let path = &realm[rng.below(realm.len())];
        let n = ctx.sequence.fetch_add(1, Ordering::Relaxed);
        // The card lives at <realm>Person/<id>; its module is <realm>person.
        let body = json!({"data": cards::patch_data(client, n, "../person")}).to_string();
        let started = Instant::now();
        let sent = ctx
            .http
            .patch(format!("{server}{path}"))
            .header("accept", "application/vnd.card+json")
            .header("content-type", "application/vnd.card+json")
            .body(body)
            .send()
            .await;
        let outcome = match sent {
            Ok(response) => {
                let status = response.status();
                let text = response.bytes().await;
                match (status.is_success(), text) {
                    (true, Ok(_)) => Ok(()),
                    (_, Ok(body)) => Err((status.as_u16().to_string(), String::from_utf8_lossy(&body).chars().take(200).collect())),
                    (_, Err(e)) => Err(("body".to_string(), e.to_string())),
                }
            }
            Err(e) => Err((if e.is_timeout() { "timeout" } else { "transport" }.to_string(), e.to_string())),
        };
        let finished = Instant::now();
        if finished > deadline {
            break;
        }
        match outcome {
            Ok(()) => {
                out.latencies_us.push((finished - started).as_micros() as u64);
                out.ok_per_realm[realm_index] += 1;
            }
            Err((kind, message)) => {
                *out.errors.entry(kind.clone()).or_default() += 1;
                if out.samples.len() < 3 {
                    out.samples.push(format!("{kind}: {message}"));
                }
            }
        }
    }
    out
}

/// One realm-event stream's counters, shared with the task reading it.
struct StreamStats {
    events: AtomicU64,
    bytes: AtomicU64,
    /// `event: reset` frames (the server said: reload, then follow from its id).
    resets: AtomicU64,
    /// Ids jumped over (an event with id > previous + 1 counts the ids between).
    skipped: AtomicU64,
    /// Events whose id was not above the previous one.
    repeated: AtomicU64,
    /// Sampled payloads that were not this realm's `index` event.
    bad_payloads: AtomicU64,
    /// The last id received (the stream's start when none yet).
    last_id: AtomicI64,
    ended: AtomicBool,
    error: Mutex<Option<String>>,
}

struct Stream {
    realm: usize,
    server: usize,
    /// The realm's newest event id when the stream was opened.
    start: i64,
    stats: Arc<StreamStats>,
    task: tokio::task::JoinHandle<()>,
}

/// The subscribers' counters at one instant.
struct Totals {
    per_stream: Vec<u64>,
    bytes: u64,
    resets: u64,
    skipped: u64,
    repeated: u64,
    bad_payloads: u64,
    ended: usize,
}

struct Subscribers {
    servers: Vec<String>,
    /// Realm paths, `/<prefix>N/`.
    realms: Vec<String>,
    streams: Vec<Stream>,
    http: reqwest::Client,
}

impl Subscribers {
    /// Opens `args.subscribers` streams: stream i follows realm i mod R,
    /// on server (realm + i div R) mod S, so a realm's subscribers are
    /// spread over the servers too. Answers once every stream has its
    /// response headers (the server subscribes before it sends them).
    async fn open(servers: &[String], args: &LoadArgs) -> Result<Subscribers, String> {
        // No overall timeout: the streams stay open for the whole command.
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let realms: Vec<String> = (1..=args.realms).map(|r| format!("/{}{r}/", args.realm_prefix)).collect();
        let mut newest = Vec::new();
        for realm in &realms {
            newest.push(newest_event(&http, &servers[0], realm).await?);
        }
        let mut streams = Vec::new();
        for i in 0..args.subscribers {
            let realm = i % realms.len();
            let server = (realm + i / realms.len()) % servers.len();
            let url = format!("{}{}_events", servers[server], realms[realm]);
            let response = tokio::time::timeout(Duration::from_secs(10), http.get(&url).header("accept", "text/event-stream").send())
                .await
                .map_err(|_| format!("GET {url}: no response headers within 10 s"))?
                .map_err(|e| format!("GET {url}: {e}"))?;
            let status = response.status();
            let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            if !status.is_success() || !content_type.starts_with("text/event-stream") {
                let text = response.text().await.unwrap_or_default();
                return Err(format!("GET {url} answered {status} ({content_type}): {text:.300}"));
            }
            let stats = Arc::new(StreamStats {
                events: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                resets: AtomicU64::new(0),
                skipped: AtomicU64::new(0),
                repeated: AtomicU64::new(0),
                bad_payloads: AtomicU64::new(0),
                last_id: AtomicI64::new(newest[realm]),
                ended: AtomicBool::new(false),
                error: Mutex::new(None),
            });
            let task = tokio::spawn(read_stream(response, stats.clone(), format!("{}\"", realms[realm])));
            streams.push(Stream { realm, server, start: newest[realm], stats, task });
        }
        eprintln!("  {} event streams open ({} realm(s), {} server(s))", streams.len(), realms.len(), servers.len());
        Ok(Subscribers { servers: servers.to_vec(), realms, streams, http })
    }

    fn totals(&self) -> Totals {
        let sum = |f: fn(&StreamStats) -> &AtomicU64| self.streams.iter().map(|s| f(&s.stats).load(Ordering::Relaxed)).sum::<u64>();
        Totals {
            per_stream: self.streams.iter().map(|s| s.stats.events.load(Ordering::Relaxed)).collect(),
            bytes: sum(|s| &s.bytes),
            resets: sum(|s| &s.resets),
            skipped: sum(|s| &s.skipped),
            repeated: sum(|s| &s.repeated),
            bad_payloads: sum(|s| &s.bad_payloads),
            ended: self.streams.iter().filter(|s| s.stats.ended.load(Ordering::Relaxed)).count(),
        }
    }

    fn errors(&self) -> Vec<String> {
        let mut samples: Vec<String> = Vec::new();
        for s in &self.streams {
            if let Some(e) = s.stats.error.lock().ok().and_then(|e| e.clone()) {
                if samples.len() < 5 {
                    samples.push(format!("{}{}: {e}", self.servers[s.server], self.realms[s.realm]));
                }
            }
        }
        samples
    }

    /// What the streams received during one run. `expected` is what they
    /// should have received for the requests the run counted (each
    /// successful PATCH commits one event of its realm, which each of that
    /// realm's streams receives); delivery lags a commit a little, so the
    /// two differ by the events in flight at the run's ends.
    fn run_stats(&self, before: &Totals, after: &Totals, ok_per_realm: &[u64], seconds: f64) -> serde_json::Value {
        let per_stream: Vec<u64> = after.per_stream.iter().zip(&before.per_stream).map(|(a, b)| a - b).collect();
        let events: u64 = per_stream.iter().sum();
        let expected: u64 = self.streams.iter().map(|s| ok_per_realm.get(s.realm).copied().unwrap_or(0)).sum();
        json!({
            "streams": self.streams.len(),
            "events": events,
            "expected": expected,
            "delivered_ratio": if expected > 0 { events as f64 / expected as f64 } else { f64::NAN },
            "events_per_s": events as f64 / seconds,
            "bytes": after.bytes - before.bytes,
            "per_stream_min": per_stream.iter().min().copied().unwrap_or(0),
            "per_stream_max": per_stream.iter().max().copied().unwrap_or(0),
            "resets": after.resets - before.resets,
            "skipped": after.skipped - before.skipped,
            "repeated": after.repeated - before.repeated,
            "bad_payloads": after.bad_payloads - before.bad_payloads,
            "ended": after.ended,
            "ended_in_run": after.ended - before.ended,
            "errors": self.errors(),
        })
    }

    /// Every stream against its realm's newest event id, read afresh: what
    /// it should have received since it opened, what it did, and whether it
    /// is still open.
    async fn final_check(&self) -> serde_json::Value {
        let http = &self.http;
        let mut newest = Vec::new();
        let mut failures = Vec::new();
        for realm in &self.realms {
            match newest_event(http, &self.servers[0], realm).await {
                Ok(n) => newest.push(Some(n)),
                Err(e) => {
                    failures.push(e);
                    newest.push(None);
                }
            }
        }
        let (mut expected, mut received, mut missing, mut behind) = (0u64, 0u64, 0u64, 0usize);
        for s in &self.streams {
            let Some(newest) = newest[s.realm] else { continue };
            let should = (newest - s.start).max(0) as u64;
            let got = s.stats.events.load(Ordering::Relaxed);
            expected += should;
            received += got;
            missing += should.saturating_sub(got);
            if s.stats.last_id.load(Ordering::Relaxed) != newest {
                behind += 1;
            }
        }
        let t = self.totals();
        json!({
            "streams": self.streams.len(),
            "expected": expected,
            "received": received,
            "missing": missing,
            "streams_not_at_newest": behind,
            "resets": t.resets,
            "skipped": t.skipped,
            "repeated": t.repeated,
            "bad_payloads": t.bad_payloads,
            "ended": t.ended,
            "errors": self.errors(),
            "check_failures": failures,
        })
    }

    fn close(self) {
        for s in self.streams {
            s.task.abort();
        }
    }
}

/// The realm's newest event id: a stream asked to resume after an id
/// newer than the newest starts with `event: reset` whose id is the newest.
async fn newest_event(http: &reqwest::Client, server: &str, realm: &str) -> Result<i64, String> {
    let url = format!("{server}{realm}_events");
    let read = async {
        let mut response = http
            .get(&url)
            .header("accept", "text/event-stream")
            .header("last-event-id", i64::MAX.to_string())
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url} answered {}", response.status()));
        }
        let mut parser = SseParser::default();
        let mut found = None;
        while found.is_none() {
            let Some(chunk) = response.chunk().await.map_err(|e| format!("GET {url}: {e}"))? else {
                return Err(format!("GET {url}: the stream ended before its reset event"));
            };
            parser.feed(&chunk, |frame| {
                if frame.reset && found.is_none() {
                    found = frame.id;
                }
            });
        }
        found.ok_or_else(|| format!("GET {url}: reset without an id"))
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.map_err(|_| format!("GET {url}: no reset event within 10 s"))?
}

/// Reads one stream until it ends, counting what arrives.
/// `realm_end` is the realm's path and a quote: how its `realmURL` value ends.
async fn read_stream(mut response: reqwest::Response, stats: Arc<StreamStats>, realm_end: String) {
    let mut parser = SseParser::default();
    let mut sampled = 0u64;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                stats.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                parser.feed(&chunk, |frame| {
                    let last = stats.last_id.load(Ordering::Relaxed);
                    if frame.reset {
                        stats.resets.fetch_add(1, Ordering::Relaxed);
                        if let Some(id) = frame.id {
                            stats.last_id.store(id, Ordering::Relaxed);
                        }
                        return;
                    }
                    stats.events.fetch_add(1, Ordering::Relaxed);
                    let Some(id) = frame.id else {
                        stats.repeated.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    if id > last + 1 {
                        stats.skipped.fetch_add((id - last - 1) as u64, Ordering::Relaxed);
                    } else if id <= last {
                        stats.repeated.fetch_add(1, Ordering::Relaxed);
                    }
                    stats.last_id.store(id.max(last), Ordering::Relaxed);
                    // Check one payload in 500 (and the first): this realm's index event.
                    if sampled.is_multiple_of(500) {
                        let ok = frame.data.as_deref().is_some_and(|d| {
                            d.contains("\"realmURL\":\"") && d.contains(realm_end.as_str()) && d.contains("\"eventName\":\"index\"")
                        });
                        if !ok {
                            stats.bad_payloads.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    sampled += 1;
                });
            }
            Ok(None) => {
                let n = stats.events.load(Ordering::Relaxed);
                *stats.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("ended by the server after {n} events"));
                stats.ended.store(true, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                *stats.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("read error: {e}"));
                stats.ended.store(true, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// One dispatched SSE frame.
struct Frame {
    id: Option<i64>,
    reset: bool,
    /// The data, kept only when the caller will look at it.
    data: Option<String>,
}

/// Incremental Server-Sent Events parser (lines may split across chunks).
#[derive(Default)]
struct SseParser {
    line: Vec<u8>,
    id: Option<i64>,
    reset: bool,
    data: Option<String>,
    has_fields: bool,
}

impl SseParser {
    fn feed(&mut self, mut chunk: &[u8], mut on_frame: impl FnMut(Frame)) {
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            if self.line.is_empty() {
                self.line_done(&chunk[..end], &mut on_frame);
            } else {
                self.line.extend_from_slice(&chunk[..end]);
                let line = std::mem::take(&mut self.line);
                self.line_done(&line, &mut on_frame);
            }
            chunk = &chunk[end + 1..];
        }
        self.line.extend_from_slice(chunk);
    }

    fn line_done(&mut self, line: &[u8], on_frame: &mut impl FnMut(Frame)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.has_fields {
                on_frame(Frame { id: self.id.take(), reset: self.reset, data: self.data.take() });
            }
            self.reset = false;
            self.has_fields = false;
            self.id = None;
            self.data = None;
            return;
        }
        if line[0] == b':' {
            return; // a comment: the heartbeat
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &b""[..]),
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        self.has_fields = true;
        match field {
            b"id" => self.id = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse().ok()),
            b"event" => self.reset = value == b"reset",
            b"data" => {
                let text = String::from_utf8_lossy(value);
                match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(&text);
                    }
                    None => self.data = Some(text.into_owned()),
                }
            }
            _ => {}
        }
    }
}

/// Sum over replicas of (commits, requests committed) from `/_metrics`.
/// The write-path counters of `/_metrics`, summed over the servers.
#[derive(Clone, Copy, Default)]
struct Counters {
    commits: f64,
    members: f64,
    realm_batches: f64,
    turns: f64,
    turn_s: f64,
    commit_s: f64,
}

async fn metrics(ctx: &Ctx) -> Option<Counters> {
    let mut total = Counters::default();
    for server in &ctx.servers {
        let text = ctx.http.get(format!("{server}/_metrics")).send().await.ok()?.text().await.ok()?;
        let c = parse_metrics(&text)?;
        total.commits += c.commits;
        total.members += c.members;
        total.realm_batches += c.realm_batches;
        total.turns += c.turns;
        total.turn_s += c.turn_s;
        total.commit_s += c.commit_s;
    }
    Some(total)
}

fn parse_metrics(text: &str) -> Option<Counters> {
    let value = |name: &str| {
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
    };
    Some(Counters {
        commits: value("realm_write_commits_total")?,
        members: value("realm_write_requests_committed_total")?,
        // Older servers do not report the time split.
        realm_batches: value("realm_write_realm_batches_total").unwrap_or(f64::NAN),
        turns: value("realm_write_turns_total").unwrap_or(f64::NAN),
        turn_s: value("realm_write_turn_seconds_total").unwrap_or(f64::NAN),
        commit_s: value("realm_write_commit_seconds_total").unwrap_or(f64::NAN),
    })
}

/// Peak resident set (VmHWM) of a process, in MB.
fn peak_rss_mb(pid: i32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_prometheus_counters() {
        let text = "# TYPE realm_write_commits_total counter\nrealm_write_commits_total 12\n\
                    # TYPE realm_write_requests_committed_total counter\nrealm_write_requests_committed_total 40\n";
        let c = super::parse_metrics(text).expect("parsed");
        assert_eq!((c.commits, c.members), (12.0, 40.0));
        assert!(c.turn_s.is_nan(), "an older server without the time split");
        let text = format!("{text}realm_write_turns_total 7\nrealm_write_turn_seconds_total 0.5\n");
        let c = super::parse_metrics(&text).expect("parsed");
        assert_eq!((c.turns, c.turn_s), (7.0, 0.5));
        assert!(super::parse_metrics("nothing").is_none());
    }

    #[test]
    fn parses_sse_frames_split_anywhere() {
        let text = b": heartbeat\n\nid: 7\ndata: {\"a\":1}\n\nevent: reset\nid: 9\ndata: {}\r\n\r\nid: 10\ndata: x\ndata: y\n\n";
        for split in 0..text.len() {
            let mut parser = super::SseParser::default();
            let mut frames = Vec::new();
            for part in [&text[..split], &text[split..]] {
                parser.feed(part, |f| frames.push((f.id, f.reset, f.data)));
            }
            assert_eq!(
                frames,
                vec![
                    (Some(7), false, Some("{\"a\":1}".to_string())),
                    (Some(9), true, Some("{}".to_string())),
                    (Some(10), false, Some("x\ny".to_string())),
                ],
                "split at {split}"
            );
        }
    }
}
