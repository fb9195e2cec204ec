//! `realm-bench sqlite-direct`: the PATCH transaction done directly with
//! sqlx on SQLite — the baseline of the embedded default. Same pool as the
//! host (`realm_host::store::Database::connect`: WAL, 8 connections, 30 s busy
//! timeout, the host's migrations), same statements as the host's write
//! path for one request, no HTTP, no guest, no JSON work: `BEGIN IMMEDIATE;`
//! the file row with its index row; upsert files; upsert card_index; upsert
//! the two search rows a bench PATCH changes (`counter`, `note`); the realm
//! event (next seq, retiring the one 10 000 before); `COMMIT`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use realm_host::store::{Database, Permissions};
use sha2::{Digest, Sha256};
use sqlx::SqlitePool;

use crate::cards;
use crate::cpu::Watch;
use crate::load::run_clients;
use crate::record::Record;
use crate::stats::Rng;

#[derive(Args, Debug)]
pub struct DirectArgs {
    /// SQLite file (created).
    #[arg(long)]
    pub db: PathBuf,
    #[arg(long)]
    pub clients: usize,
    #[arg(long, default_value_t = 8)]
    pub cards: usize,
    #[arg(long, default_value_t = 1024)]
    pub card_bytes: usize,
    // Alike load's `seconds`/`warmup`/`runs`/`key` flags, but each subcommand declares (and documents in --help) its own.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    #[arg(long)]
    pub key: String,
    #[arg(long)]
    pub out: PathBuf,
}

const REALM: &str = "http://127.0.0.1:1/direct/";

struct Ctx {
    pool: SqlitePool,
    paths: Vec<String>,
    /// The stored card text, split where the counter goes.
    content: (String, String),
    sequence: AtomicU64,
}

pub async fn run(args: DirectArgs) -> Result<(), String> {
    let url = format!("sqlite://{}", args.db.display());
    let db = Database::connect(&url).await.map_err(|e| format!("{url}: {e}"))?;
    db.create_realm(REALM, Permissions::default()).await.map_err(|e| e.to_string())?;
    let Database::Sqlite(pool) = db else { return Err("not a SQLite database".into()) };

    let mut resource = cards::person_resource(args.card_bytes, "../person");
    resource["attributes"]["counter"] = serde_json::json!(-987654321);
    let text = serde_json::to_string_pretty(&serde_json::json!({"data": resource})).map_err(|e| e.to_string())?;
    let (a, b) = text.split_once("-987654321").ok_or("no counter in the card")?;
    let ctx = Arc::new(Ctx {
        pool,
        paths: (0..args.cards).map(|i| format!("Person/{i}.json")).collect(),
        content: (a.to_string(), b.to_string()),
        sequence: AtomicU64::new(1),
    });
    // Seed the rows every transaction updates.
    for i in 0..args.cards {
        transaction(&ctx, i, 0).await.map_err(|e| format!("seeding: {e}"))?;
    }

    let watch = Watch::default();
    if args.warmup > 0.0 {
        one_run(&ctx, args.clients, Duration::from_secs_f64(args.warmup)).await;
    }
    for run in 0..args.runs {
        let tracker = watch.track();
        let started = Instant::now();
        let outs = one_run(&ctx, args.clients, Duration::from_secs_f64(args.seconds)).await;
        let elapsed = started.elapsed().as_secs_f64().min(args.seconds);
        let mut record = Record {
            kind: "sqlite-direct".into(),
            key: args.key.clone(),
            run,
            clients: args.clients,
            realms: 1,
            replicas: 1,
            seconds: elapsed,
            cpu: Some(tracker.finish()),
            note: "sqlx on SQLite, same pool and statements as the host".into(),
            ..Record::default()
        };
        let mut latencies = Vec::new();
        for (lat, errors) in outs {
            latencies.extend(lat);
            for (k, n) in errors {
                *record.error_kinds.entry(k).or_default() += n;
            }
        }
        record.set_outcome(latencies);
        eprintln!("{}", record.summary());
        record.append_to(&args.out)?;
    }
    Ok(())
}

type Out = (Vec<u64>, BTreeMap<String, u64>);

async fn one_run(ctx: &Arc<Ctx>, clients: usize, length: Duration) -> Vec<Out> {
    let deadline = Instant::now() + length;
    run_clients(clients, |client| {
        let ctx = ctx.clone();
        async move {
            let mut rng = Rng::new(client as u64 + 7);
            let mut out: Out = Default::default();
            while Instant::now() < deadline {
                let card = rng.below(ctx.paths.len());
                let n = ctx.sequence.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let result = transaction(&ctx, card, n).await;
                let finished = Instant::now();
                if finished > deadline {
                    break;
                }
                match result {
                    Ok(()) => out.0.push((finished - started).as_micros() as u64),
                    Err(e) => *out.1.entry(e.chars().take(60).collect()).or_default() += 1,
                }
            }
            out
        }
    })
    .await
}

/// One PATCH-equivalent transaction on card `card`, writing counter `n`.
async fn transaction(ctx: &Ctx, card: usize, n: u64) -> Result<(), String> {
    let path = &ctx.paths[card];
    let content = format!("{}{n}{}", ctx.content.0, ctx.content.1);
    let hash = hex::encode(Sha256::digest(content.as_bytes()));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let e = |e: sqlx::Error| e.to_string();
    let mut tx = ctx.pool.begin_with("BEGIN IMMEDIATE").await.map_err(e)?;
    sqlx::query(
        "SELECT f.path, f.content, f.content_hash, f.created_at, f.last_modified, f.content_encoding,
                c.card_id, c.card_type, c.search_doc, c.search_version
         FROM files f LEFT JOIN card_index c ON c.realm_url = f.realm_url AND c.path = f.path
         WHERE f.realm_url = $1 AND f.path IN ($2)",
    )
    .bind(REALM)
    .bind(path)
    .fetch_optional(&mut *tx)
    .await
    .map_err(e)?;
    sqlx::query(
        "INSERT INTO files (realm_url, path, content, content_hash, created_at, last_modified)
         VALUES ($1, $2, $3, $4, $5, $5)
         ON CONFLICT (realm_url, path) DO UPDATE
         SET content = excluded.content, content_hash = excluded.content_hash, last_modified = excluded.last_modified",
    )
    .bind(REALM)
    .bind(path)
    .bind(&content)
    .bind(&hash)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(e)?;
    let card_id = format!("{REALM}{}", path.trim_end_matches(".json"));
    let search_doc = format!("{{\"firstName\":\"Mango\",\"counter\":{n}}}");
    sqlx::query(
        "INSERT INTO card_index (realm_url, path, card_id, card_type, search_doc, updated_at, search_version)
         VALUES ($1, $2, $3, $4, $5, $6, 1)
         ON CONFLICT (realm_url, path) DO UPDATE
         SET card_id = excluded.card_id, card_type = excluded.card_type,
             search_doc = excluded.search_doc, updated_at = excluded.updated_at, search_version = excluded.search_version",
    )
    .bind(REALM)
    .bind(path)
    .bind(&card_id)
    .bind(format!("{REALM}person/Person"))
    .bind(&search_doc)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(e)?;
    let note = format!("client 1 request {n}");
    sqlx::query(
        "INSERT INTO card_fields (realm_url, path, field, position, kind, text_key, text_value, folded, number_value)
         VALUES ($1, $2, 'counter', 0, 0, $3, $3, NULL, $4), ($1, $2, 'note', 0, 1, $5, $5, $5, NULL)
         ON CONFLICT (realm_url, path, field, position) DO UPDATE SET kind = excluded.kind, text_key = excluded.text_key,
             text_value = excluded.text_value, folded = excluded.folded, number_value = excluded.number_value",
    )
    .bind(REALM)
    .bind(path)
    .bind(n.to_string())
    .bind(n as f64)
    .bind(&note)
    .execute(&mut *tx)
    .await
    .map_err(e)?;
    let payload = format!(
        r#"{{"eventName":"index","indexType":"incremental","invalidations":["{card_id}"],"clientRequestId":null,"realmURL":"{REALM}"}}"#
    );
    let seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM realm_events WHERE realm_url = $1")
        .bind(REALM)
        .fetch_one(&mut *tx)
        .await
        .map_err(e)?;
    sqlx::query("INSERT INTO realm_events (realm_url, seq, payload, created_at) VALUES ($1, $2, $3, $4)")
        .bind(REALM)
        .bind(seq)
        .bind(&payload)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(e)?;
    sqlx::query("DELETE FROM realm_events WHERE realm_url = $1 AND seq > $2 - 1 - $3 AND seq <= $2 - $3")
        .bind(REALM)
        .bind(seq)
        .bind(10_000_i64)
        .execute(&mut *tx)
        .await
        .map_err(e)?;
    tx.commit().await.map_err(e)
}
