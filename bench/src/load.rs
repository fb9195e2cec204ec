//! `realm-bench load`: closed-loop HTTP PATCH load against one or more
//! realm-host replicas. Each client keeps one request in flight over a
//! keep-alive connection, picks a realm and a card at random for every
//! request, and sends attributes no other request sends (so every PATCH
//! really writes). Requests completing after the deadline are not counted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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

    if args.warmup > 0.0 {
        one_run(&ctx, args.clients, Duration::from_secs_f64(args.warmup)).await;
    }
    for run in 0..args.runs {
        let metrics_before = metrics(&ctx).await;
        let tracker = watch.track();
        let started = Instant::now();
        let outs = one_run(&ctx, args.clients, Duration::from_secs_f64(args.seconds)).await;
        let elapsed = started.elapsed().as_secs_f64().min(args.seconds);
        let cpu = tracker.finish();
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
        for out in outs {
            latencies.extend(out.latencies_us);
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
        if let (Some(before), Some(after)) = (metrics_before, metrics_after) {
            record.batches = Some(after.0.saturating_sub(before.0));
            record.batch_members = Some(after.1.saturating_sub(before.1));
        }
        eprintln!("{}", record.summary());
        record.append_to(&args.out)?;
    }
    Ok(())
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
    let mut out = ClientOut::default();
    let mut rng = Rng::new(client as u64 + 1 + ctx.sequence.load(Ordering::Relaxed));
    let server = &ctx.servers[client % ctx.servers.len()];
    while Instant::now() < deadline {
        let realm = &ctx.cards[rng.below(ctx.cards.len())];
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
            Ok(()) => out.latencies_us.push((finished - started).as_micros() as u64),
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

/// Sum over replicas of (commits, requests committed) from `/_metrics`.
async fn metrics(ctx: &Ctx) -> Option<(u64, u64)> {
    let mut total = (0, 0);
    for server in &ctx.servers {
        let text = ctx.http.get(format!("{server}/_metrics")).send().await.ok()?.text().await.ok()?;
        let (b, m) = parse_metrics(&text)?;
        total.0 += b;
        total.1 += m;
    }
    Some(total)
}

fn parse_metrics(text: &str) -> Option<(u64, u64)> {
    let value = |name: &str| {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    };
    Some((value("realm_write_commits_total ")?, value("realm_write_requests_committed_total ")?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_prometheus_counters() {
        let text = "# TYPE realm_write_commits_total counter\nrealm_write_commits_total 12\n\
                    # TYPE realm_write_requests_committed_total counter\nrealm_write_requests_committed_total 40\n";
        assert_eq!(super::parse_metrics(text), Some((12, 40)));
        assert_eq!(super::parse_metrics("nothing"), None);
    }
}
