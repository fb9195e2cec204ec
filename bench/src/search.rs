//! `realm-bench search`: the `_search` benchmark (`bench/search` drives it).
//!
//! `search run` seeds one realm with `--cards` Person cards through
//! `/_atomic` (unless it already holds exactly that many), then for each
//! query of [`queries`] sends warm-up requests and `--requests` sequential
//! measured ones over one keep-alive connection, and explains the exact
//! statement the server runs (built with `realm_host::search::sql::page`
//! from the same JSON): on Postgres `EXPLAIN (ANALYZE, BUFFERS)` of the
//! statement as first planned and as the server's prepared statement runs
//! it once the plan cache has settled; on SQLite `EXPLAIN QUERY PLAN`.
//! Everything goes to one JSON file per backend.
//!
//! `search report` renders bench/SEARCH.md from those files, keeping the
//! hand-written analysis between the `<!-- analysis -->` markers of the
//! previous report.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use realm_host::search::query::{self, QueryLimits};
use realm_host::search::sql::{self, Bind, Dialect, Statement};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::Row;

use crate::stats::{quantile_sorted, Rng};

#[derive(Args, Debug)]
pub struct SearchArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Subcommand, Debug)]
pub enum Action {
    /// Seed a realm, time the queries over HTTP, explain their statements.
    Run(RunArgs),
    /// Write SEARCH.md from the files of `search run`.
    Report(ReportArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Label of the backend (`postgres`, `sqlite`).
    #[arg(long)]
    pub backend: String,
    /// Base URL realm-host listens on.
    #[arg(long)]
    pub server: String,
    /// The realm's URL as created (`realm create`); requests go to its path on `--server`.
    #[arg(long)]
    pub realm_url: String,
    /// The database realm-host serves (postgres://… or sqlite://…), for the plans.
    #[arg(long)]
    pub database: String,
    #[arg(long, default_value_t = 100_000)]
    pub cards: usize,
    /// Cards per `/_atomic` request (the server's default maximum is 1000 operations).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Measured requests per query.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Unmeasured requests per query before those.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Run VACUUM (ANALYZE) after seeding (Postgres): the state autovacuum reaches on its own after a
    /// bulk insert, reached before measuring instead of during it.
    #[arg(long)]
    pub analyze: bool,
    /// The server's `--search-max-page-size` and `--search-max-terms`.
    #[arg(long, default_value_t = 1000)]
    pub max_page_size: u64,
    #[arg(long, default_value_t = 500)]
    pub max_terms: usize,
    /// Before each query, wait at most this many seconds for the machine to be under 25% busy.
    #[arg(long, default_value_t = 0)]
    pub quiet_wait: u64,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Result files of `search run` (one per backend, in table order).
    #[arg(long = "results", required = true)]
    pub results: Vec<PathBuf>,
    /// JSON object of run facts: date, tree, machine, cpu, postgres, command, wall.
    #[arg(long)]
    pub meta: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
}

pub async fn run(args: SearchArgs) -> Result<(), String> {
    match args.action {
        Action::Run(a) => run_backend(a).await,
        Action::Report(a) => report(a),
    }
}

// ---------------------------------------------------------------------------
// The cards

const FIRST_A: [&str; 25] = [
    "Al", "Be", "Ca", "Da", "El", "Fa", "Gi", "Ha", "Io", "Ja", "Ka", "Li", "Ma", "Ne", "Ol", "Pa", "Qu", "Ro", "Sa", "Ta", "Ul", "Va",
    "Wi", "Xa", "Yo",
];
const FIRST_B: [&str; 40] = [
    "bel", "cor", "dan", "fin", "gar", "hil", "jon", "kin", "lor", "mar", "nor", "pir", "ren", "sel", "tor", "vin", "wen", "xis", "yan",
    "zed", "bri", "cla", "dro", "fla", "gro", "kle", "mon", "pra", "sto", "tri", "ula", "vor", "wyn", "zul", "nia", "ria", "tha", "lio",
    "mae", "dez",
];
const LAST_C: [&str; 15] = ["B", "C", "D", "F", "G", "H", "K", "L", "M", "N", "P", "R", "S", "T", "W"];
const LAST_V: [&str; 5] = ["a", "e", "i", "o", "u"];
const LAST_END: [&str; 20] = [
    "ckford", "lton", "rwell", "msby", "nley", "rrow", "dges", "tcher", "mpton", "ssler", "ngham", "vers", "rton", "llis", "ddock",
    "xley", "berg", "stead", "mond", "ville",
];
const CITY_A: [&str; 20] = [
    "North", "South", "East", "West", "New", "Old", "Port", "Lake", "Fort", "Mount", "Glen", "Red", "Green", "Stone", "Silver", "Oak",
    "Ash", "Elm", "River", "Bay",
];
const CITY_B: [&str; 10] = ["field", "ton", "ford", "bridge", "haven", "wood", "dale", "mouth", "burg", "view"];
const NICKS: [&str; 40] = [
    "Ace", "Bear", "Bee", "Birdie", "Boo", "Bud", "Buzz", "Chip", "Coco", "Cricket", "Dash", "Doc", "Duke", "Fox", "Gizmo", "Goose", "Happy",
    "Ice", "Jazz", "Kit", "Lucky", "Max", "Moose", "Nugget", "Peanut", "Pepper", "Pip", "Red", "Rocky", "Scout", "Shadow", "Skip", "Sparky",
    "Sunny", "Tank", "Tiger", "Tiny", "Whiz", "Ziggy", "Zip",
];
/// Each bio names one hobby: a hobby's own fragment matches ~1/30 of the cards.
const HOBBIES: [&str; 30] = [
    "gardening", "chess", "saxophone", "painting", "cycling", "hiking", "pottery", "knitting", "fishing", "baking", "archery", "climbing",
    "rowing", "surfing", "juggling", "origami", "birdwatching", "calligraphy", "fencing", "sailing", "skating", "woodworking", "yoga",
    "astronomy", "beekeeping", "canoeing", "dancing", "embroidery", "falconry", "geocaching",
];
const FILLER: [&str; 48] = [
    "and", "the", "with", "often", "weekends", "friends", "quiet", "mornings", "long", "walks", "coffee", "books", "music", "travel",
    "family", "work", "projects", "city", "parks", "evenings", "old", "films", "cooking", "for", "neighbours", "learning", "new", "things",
    "slowly", "enjoys", "kind", "curious", "people", "stories", "markets", "trains", "rain", "tea", "letters", "maps", "small", "gifts",
    "early", "late", "summer", "winter", "light", "noise",
];

/// Distinct first names (an `eq` on one matches ~cards/1000 cards).
pub const FIRST_NAMES: usize = FIRST_A.len() * FIRST_B.len();

pub fn first_name(k: usize) -> String {
    format!("{}{}", FIRST_A[k / FIRST_B.len() % FIRST_A.len()], FIRST_B[k % FIRST_B.len()])
}

fn card_path(i: usize) -> String {
    format!("Person/p{i:06}")
}

/// Card `i` of `n` (deterministic): the `data` of its `/_atomic` add.
pub fn person(i: usize, n: usize) -> Value {
    let mut rng = Rng::new(0x5EA7C4 + i as u64);
    let first = first_name(rng.below(FIRST_NAMES));
    let last = format!("{}{}{}", LAST_C[rng.below(LAST_C.len())], LAST_V[rng.below(LAST_V.len())], LAST_END[rng.below(LAST_END.len())]);
    let city = format!("{}{}", CITY_A[rng.below(CITY_A.len())], CITY_B[rng.below(CITY_B.len())]);
    let age = 18 + rng.below(73);
    let nicks: Vec<&str> = (0..1 + rng.below(3)).map(|_| NICKS[rng.below(NICKS.len())]).collect();
    let mut bio = format!("{first} {last} from {city} likes {}", HOBBIES[rng.below(HOBBIES.len())]);
    while bio.len() < 190 {
        bio.push(' ');
        bio.push_str(FILLER[rng.below(FILLER.len())]);
    }
    bio.push('.');
    let mut data = json!({
        "type": "card",
        "attributes": {
            "firstName": first,
            "lastName": last,
            "age": age,
            "address": {"street": format!("{} {} Street", 1 + rng.below(300), CITY_A[rng.below(CITY_A.len())]), "city": city},
            "nickNames": nicks,
            "bio": bio,
        },
        "meta": {"adoptsFrom": {"module": "../person", "name": "Person"}}
    });
    if rng.below(2) == 0 {
        let friend = rng.below(n);
        data["relationships"] = json!({"bestFriend": {"links": {"self": format!("./p{friend:06}")}}});
    }
    data
}

// ---------------------------------------------------------------------------
// The queries

/// How a query is sent.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub enum Form {
    /// `QUERY` with the JSON body.
    Query,
    /// `GET` with the bracket syntax.
    Get,
    /// Not a search: `GET` of the card at `json.path` (a diagnostic: what serving one card costs).
    Card,
}

pub struct QueryCase {
    pub key: &'static str,
    pub title: &'static str,
    pub form: Form,
    pub json: Value,
}

/// The name every `eq` looks for (one of the FIRST_NAMES).
fn target_name() -> String {
    first_name(417)
}

/// The fragment `contains` looks for (inside one hobby, so ~1/30 of the cards).
const FRAGMENT: &str = "xophon";

/// The first card of `n` that links to a best friend (for the card GET diagnostic).
fn linked_card(n: usize) -> String {
    card_path((0..n).find(|&i| person(i, n).get("relationships").is_some()).unwrap_or(0))
}

pub fn queries(n: usize) -> Vec<QueryCase> {
    let name = target_name();
    let eq = json!({"filter": {"eq": {"firstName": name}}, "page": {"size": 25}});
    vec![
        QueryCase { key: "a", title: "eq firstName, page of 25 (QUERY)", form: Form::Query, json: eq.clone() },
        QueryCase { key: "b", title: "eq firstName, page of 25 (GET brackets)", form: Form::Get, json: eq },
        QueryCase {
            key: "c",
            title: "contains bio, page of 25",
            form: Form::Query,
            json: json!({"filter": {"contains": {"bio": FRAGMENT}}, "page": {"size": 25}}),
        },
        QueryCase {
            key: "d",
            title: "type Person, sort lastName desc, page 10 of 25",
            form: Form::Query,
            json: json!({"filter": {"type": {"module": "./person", "name": "Person"}}, "sort": [{"by": "lastName", "direction": "desc"}], "page": {"number": 10, "size": 25}}),
        },
        QueryCase {
            key: "e",
            title: "range 30 ≤ age < 40, sort age, page of 25",
            form: Form::Query,
            json: json!({"filter": {"range": {"age": {"gte": 30, "lt": 40}}}, "sort": [{"by": "age"}], "page": {"size": 25}}),
        },
        QueryCase {
            key: "f",
            title: "eq bestFriend.firstName (through the link), page of 25",
            form: Form::Query,
            json: json!({"filter": {"eq": {"bestFriend.firstName": target_name()}}, "page": {"size": 25}}),
        },
        QueryCase { key: "g", title: "no filter, sort cardURL, page of 25", form: Form::Query, json: json!({"sort": [{"by": "cardURL"}], "page": {"size": 25}}) },
        // Diagnostics: the fixed cost of a search answer, and of serving one card.
        QueryCase {
            key: "a1",
            title: "(diagnostic) eq firstName, page of 1",
            form: Form::Query,
            json: json!({"filter": {"eq": {"firstName": target_name()}}, "page": {"size": 1}}),
        },
        QueryCase { key: "card", title: "(diagnostic) GET one card that links to another, not a search", form: Form::Card, json: json!({"path": linked_card(n)}) },
    ]
}

/// `{"a": {"b": "x"}, "l": [..]}` → `a[b]=x&l[0]=…`, every key and value percent-encoded (as `qs` does).
pub fn brackets(value: &Value) -> String {
    fn walk(prefix: &str, value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => map.iter().for_each(|(k, v)| walk(&if prefix.is_empty() { k.clone() } else { format!("{prefix}[{k}]") }, v, out)),
            Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| walk(&format!("{prefix}[{i}]"), v, out)),
            Value::String(s) => out.push(format!("{}={}", pct(prefix), pct(s))),
            other => out.push(format!("{}={}", pct(prefix), pct(&other.to_string()))),
        }
    }
    let mut out = Vec::new();
    walk("", value, &mut out);
    out.join("&")
}

fn pct(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Results

#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(default)]
pub struct BackendResult {
    pub backend: String,
    pub database: String,
    pub cards: usize,
    pub seed: Option<Seed>,
    pub analyzed: bool,
    /// Table and index sizes, as (name, bytes).
    pub sizes: Vec<(String, u64)>,
    pub queries: Vec<QueryResult>,
}

#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(default)]
pub struct Seed {
    pub cards: usize,
    pub requests: usize,
    pub per_request: usize,
    pub seconds: f64,
    pub request_p50_ms: f64,
    pub request_p99_ms: f64,
    pub request_max_ms: f64,
    pub body_bytes: u64,
}

#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(default)]
pub struct QueryResult {
    pub key: String,
    pub title: String,
    pub form: Option<Form>,
    /// What was sent: the JSON body or the query string.
    pub request: String,
    pub total: u64,
    pub returned: usize,
    pub included: usize,
    pub response_bytes: usize,
    pub requests: usize,
    pub errors: usize,
    pub error_sample: String,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Share of all CPUs busy (anyone's) while the requests ran.
    pub machine_busy: f64,
    /// The page statement alone on the bench's own connection.
    pub sql_p50_ms: f64,
    pub sql_p99_ms: f64,
    pub sql: String,
    pub binds: Vec<String>,
    pub plans: Vec<Plan>,
    /// Indexes the plan reads, and findings (big sequential scans, …).
    pub indexes: Vec<String>,
    pub findings: Vec<String>,
    /// Most expensive plan nodes by their own time (ms), Postgres.
    pub hot_nodes: Vec<(String, f64)>,
    pub execution_ms: Option<f64>,
    pub planning_ms: Option<f64>,
}

#[derive(Serialize, Deserialize, Debug, Default, Clone)]
#[serde(default)]
pub struct Plan {
    pub title: String,
    pub text: String,
}

// ---------------------------------------------------------------------------
// search run

enum Db {
    Pg(sqlx::PgPool),
    Lite(sqlx::SqlitePool),
}

macro_rules! bound {
    ($sql:expr, $binds:expr) => {{
        let mut q = sqlx::query($sql);
        for bind in $binds {
            q = match bind {
                Bind::Text(text) => q.bind(text.as_str()),
                Bind::Real(number) => q.bind(*number),
                Bind::Int(int) => q.bind(*int),
            };
        }
        q
    }};
}

async fn run_backend(args: RunArgs) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(4)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let realm_url = url::Url::parse(&args.realm_url).map_err(|e| format!("--realm-url: {e}"))?;
    let base = format!("{}{}", args.server.trim_end_matches('/'), realm_url.path());
    let db = if args.database.starts_with("postgres") {
        Db::Pg(sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&args.database).await.map_err(|e| format!("{}: {e}", args.database))?)
    } else {
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(&args.database).map_err(|e| e.to_string())?.read_only(true);
        Db::Lite(sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect_with(options).await.map_err(|e| format!("{}: {e}", args.database))?)
    };
    let mut result = BackendResult { backend: args.backend.clone(), database: redact(&args.database), cards: args.cards, ..Default::default() };

    let before = total_of(&http, &base, &json!({"page": {"size": 1}})).await?;
    if before == args.cards as u64 {
        eprintln!("{}: the realm already holds {before} cards; not seeding", args.backend);
    } else if before == 0 {
        result.seed = Some(seed(&http, &base, &args).await?);
        let after = total_of(&http, &base, &json!({"page": {"size": 1}})).await?;
        if after != args.cards as u64 {
            return Err(format!("after seeding the realm holds {after} cards, not {}", args.cards));
        }
    } else {
        return Err(format!("the realm holds {before} cards, neither 0 nor {}", args.cards));
    }
    if args.analyze {
        if let Db::Pg(pool) = &db {
            let started = Instant::now();
            sqlx::raw_sql("VACUUM (ANALYZE)").execute(pool).await.map_err(|e| format!("VACUUM (ANALYZE): {e}"))?;
            eprintln!("{}: VACUUM (ANALYZE) in {:.1} s", args.backend, started.elapsed().as_secs_f64());
            result.analyzed = true;
        }
    }
    result.sizes = sizes(&db).await?;

    let limits = QueryLimits { max_page_size: args.max_page_size, max_terms: args.max_terms };
    for case in queries(args.cards) {
        // Between queries nothing of ours runs: busy now is someone else.
        wait_quiet(args.quiet_wait).await;
        if case.form == Form::Card {
            let mut q = QueryResult { key: case.key.into(), title: case.title.into(), form: Some(case.form), ..Default::default() };
            measure(&http, &base, &case, args.warmup, args.requests, &mut q).await;
            eprintln!("{} {}: p50 {:.2} ms p99 {:.2} ms (errors {})", args.backend, case.key, q.p50_ms, q.p99_ms, q.errors);
            result.queries.push(q);
            continue;
        }
        let parsed = query::parse(&case.json, &realm_url, limits).map_err(|e| format!("query {}: {e}", case.key))?;
        let dialect = if matches!(db, Db::Pg(_)) { Dialect::Postgres } else { Dialect::Sqlite };
        let statement = sql::page(&parsed, &args.realm_url, dialect);
        let mut q = QueryResult {
            key: case.key.into(),
            title: case.title.into(),
            form: Some(case.form),
            sql: statement.sql.clone(),
            binds: statement.binds.iter().map(bind_text).collect(),
            ..Default::default()
        };
        if case.form == Form::Get {
            // The GET form must come to the very same statement.
            let string = brackets(&case.json);
            let from_get = realm_host::search::brackets::parse(&string).map_err(|e| format!("brackets of {}: {e}", case.key))?;
            let again = sql::page(&query::parse(&from_get, &realm_url, limits).map_err(|e| e.to_string())?, &args.realm_url, dialect);
            if again.sql != statement.sql || again.binds != statement.binds {
                q.findings.push("the GET form parses to a different statement than the JSON form".into());
            }
        }
        measure(&http, &base, &case, args.warmup, args.requests, &mut q).await;
        eprintln!(
            "{} {}: total {} p50 {:.2} ms p99 {:.2} ms mean {:.2} ms (errors {}, machine busy {:.0}%)",
            args.backend, case.key, q.total, q.p50_ms, q.p99_ms, q.mean_ms, q.errors, q.machine_busy * 100.0
        );
        match &db {
            Db::Pg(pool) => explain_pg(pool, &statement, &mut q, args.warmup.max(6), args.requests).await?,
            Db::Lite(pool) => explain_sqlite(pool, &statement, &mut q, args.warmup.max(6), args.requests).await?,
        }
        result.queries.push(q);
    }
    let text = serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?;
    std::fs::write(&args.out, text).map_err(|e| format!("{}: {e}", args.out.display()))
}

fn redact(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
}

fn bind_text(bind: &Bind) -> String {
    match bind {
        Bind::Text(t) => format!("'{}'", t.replace('\'', "''")),
        Bind::Real(r) => format!("{r:?}"),
        Bind::Int(i) => i.to_string(),
    }
}

fn search_request(http: &reqwest::Client, base: &str, case_form: Form, json: &Value) -> reqwest::RequestBuilder {
    let request = match case_form {
        Form::Query => http
            .request(reqwest::Method::from_bytes(b"QUERY").expect("QUERY is a method"), format!("{base}_search"))
            .header("content-type", "application/json")
            .body(json.to_string()),
        Form::Get => http.get(format!("{base}_search?{}", brackets(json))),
        Form::Card => http.get(format!("{base}{}", json["path"].as_str().unwrap_or(""))),
    };
    request.header("accept", "application/vnd.card+json")
}

async fn total_of(http: &reqwest::Client, base: &str, json: &Value) -> Result<u64, String> {
    let response = search_request(http, base, Form::Query, json).send().await.map_err(|e| format!("search: {e}"))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("search answered {status}: {body:.300}"));
    }
    let doc: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    doc.pointer("/meta/page/total").and_then(Value::as_u64).ok_or_else(|| format!("no meta.page.total in {body:.300}"))
}

async fn seed(http: &reqwest::Client, base: &str, args: &RunArgs) -> Result<Seed, String> {
    let n = args.cards;
    let mut latencies = Vec::new();
    let mut bytes = 0u64;
    let started = Instant::now();
    let mut next = 0;
    while next < n {
        let end = (next + args.batch).min(n);
        let operations: Vec<Value> = (next..end)
            .map(|i| json!({"op": "add", "href": format!("./{}.json", card_path(i)), "data": person(i, n)}))
            .collect();
        let body = json!({"atomic:operations": operations}).to_string();
        bytes += body.len() as u64;
        let sent = Instant::now();
        let response = http
            .post(format!("{base}_atomic"))
            .header("accept", "application/vnd.api+json")
            .header("content-type", "application/vnd.api+json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("POST _atomic: {e}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        latencies.push(sent.elapsed().as_micros() as u64);
        if status.as_u16() != 201 {
            return Err(format!("POST _atomic (cards {next}..{end}) answered {status}: {text:.500}"));
        }
        next = end;
        if latencies.len() % 10 == 0 {
            eprintln!("{}: seeded {next}/{n} in {:.1} s", args.backend, started.elapsed().as_secs_f64());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Seed {
        cards: n,
        requests: latencies.len(),
        per_request: args.batch,
        seconds,
        request_p50_ms: ms(quantile_sorted(&latencies, 0.5)),
        request_p99_ms: ms(quantile_sorted(&latencies, 0.99)),
        request_max_ms: ms(latencies.last().copied().unwrap_or(0)),
        body_bytes: bytes,
    })
}

/// Waits up to `seconds` for a second in which the machine is under 25% busy.
async fn wait_quiet(seconds: u64) {
    for _ in 0..seconds {
        let a = cpu_jiffies();
        tokio::time::sleep(Duration::from_secs(1)).await;
        match (a, cpu_jiffies()) {
            (Some(a), Some(b)) if ((b.0 - a.0) as f64) < 0.25 * (b.1 - a.1).max(1) as f64 => return,
            (None, _) | (_, None) => return,
            _ => {}
        }
    }
    if seconds > 0 {
        eprintln!("   (machine still busy after {seconds}s; going on)");
    }
}

/// Busy and total jiffies of all CPUs so far.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    if v.len() < 8 {
        return None;
    }
    let idle = v[3] + v[4];
    let total: u64 = v[..8].iter().sum();
    Some((total - idle, total))
}

async fn measure(http: &reqwest::Client, base: &str, case: &QueryCase, warmup: usize, requests: usize, q: &mut QueryResult) {
    q.request = match case.form {
        Form::Query => case.json.to_string(),
        Form::Get => format!("GET _search?{}", brackets(&case.json)),
        Form::Card => format!("GET {}", case.json["path"].as_str().unwrap_or("")),
    };
    let mut latencies = Vec::with_capacity(requests);
    let mut last_body = None;
    let mut cpu_before = None;
    for i in 0..warmup + requests {
        if i == warmup {
            cpu_before = cpu_jiffies();
        }
        let started = Instant::now();
        let outcome = match search_request(http, base, case.form, &case.json).send().await {
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Ok(body) if status.is_success() => Ok(body),
                    Ok(body) => Err(format!("{status}: {}", String::from_utf8_lossy(&body).chars().take(300).collect::<String>())),
                    Err(e) => Err(format!("body: {e}")),
                }
            }
            Err(e) => Err(format!("transport: {e}")),
        };
        let elapsed = started.elapsed().as_micros() as u64;
        match outcome {
            Ok(body) => {
                if i >= warmup {
                    latencies.push(elapsed);
                }
                last_body = Some(body);
            }
            Err(e) => {
                q.errors += 1;
                if q.error_sample.is_empty() {
                    q.error_sample = e;
                }
            }
        }
    }
    if let (Some(a), Some(b)) = (cpu_before, cpu_jiffies()) {
        q.machine_busy = (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64;
    }
    q.requests = latencies.len();
    if let Some(body) = last_body {
        q.response_bytes = body.len();
        if let Ok(doc) = serde_json::from_slice::<Value>(&body) {
            q.total = doc.pointer("/meta/page/total").and_then(Value::as_u64).unwrap_or(0);
            q.returned = match doc.get("data") {
                Some(Value::Array(items)) => items.len(),
                Some(Value::Object(_)) => 1,
                _ => 0,
            };
            q.included = doc.get("included").and_then(Value::as_array).map_or(0, Vec::len);
        }
    }
    let (p50, p99, mean, min, max) = summary(&mut latencies);
    (q.p50_ms, q.p99_ms, q.mean_ms, q.min_ms, q.max_ms) = (p50, p99, mean, min, max);
}

/// p50, p99, mean, min, max in ms of µs samples.
fn summary(micros: &mut [u64]) -> (f64, f64, f64, f64, f64) {
    micros.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    let mean = if micros.is_empty() { 0.0 } else { ms(micros.iter().sum::<u64>()) / micros.len() as f64 };
    (
        ms(quantile_sorted(micros, 0.5)),
        ms(quantile_sorted(micros, 0.99)),
        mean,
        ms(micros.first().copied().unwrap_or(0)),
        ms(micros.last().copied().unwrap_or(0)),
    )
}

async fn sizes(db: &Db) -> Result<Vec<(String, u64)>, String> {
    match db {
        Db::Pg(pool) => {
            let rows = sqlx::query(
                "SELECT c.relname::text || CASE WHEN c.relkind = 'r' THEN ' (table with its indexes)' ELSE '' END, pg_total_relation_size(c.oid)::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i') AND c.relname IN \
                 ('files', 'card_index', 'card_fields', 'card_fields_pkey', 'card_fields_by_text', 'card_fields_by_number', 'card_index_pkey', 'card_index_by_type', 'card_index_by_card_id', 'card_fields_folded_trgm') \
                 ORDER BY c.relkind DESC, 2 DESC",
            )
            .fetch_all(pool)
            .await
            .map_err(|e| format!("sizes: {e}"))?;
            let mut out = Vec::new();
            for r in rows {
                out.push((r.try_get::<String, _>(0).map_err(|e| e.to_string())?, r.try_get::<i64, _>(1).map_err(|e| e.to_string())? as u64));
            }
            let db: i64 = sqlx::query("SELECT pg_database_size(current_database())").fetch_one(pool).await.and_then(|r| r.try_get(0)).map_err(|e| e.to_string())?;
            out.push(("(whole database)".into(), db as u64));
            let rows: i64 = sqlx::query("SELECT COUNT(*) FROM card_fields").fetch_one(pool).await.and_then(|r| r.try_get(0)).map_err(|e| e.to_string())?;
            out.push(("card_fields rows".into(), rows as u64));
            Ok(out)
        }
        Db::Lite(pool) => {
            let pages: i64 = sqlx::query("PRAGMA page_count").fetch_one(pool).await.and_then(|r| r.try_get(0)).map_err(|e| e.to_string())?;
            let size: i64 = sqlx::query("PRAGMA page_size").fetch_one(pool).await.and_then(|r| r.try_get(0)).map_err(|e| e.to_string())?;
            let rows: i64 = sqlx::query("SELECT COUNT(*) FROM card_fields").fetch_one(pool).await.and_then(|r| r.try_get(0)).map_err(|e| e.to_string())?;
            let stat: i64 = sqlx::query("SELECT COUNT(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")
                .fetch_one(pool)
                .await
                .and_then(|r| r.try_get(0))
                .map_err(|e| e.to_string())?;
            Ok(vec![
                ("(database file)".into(), (pages * size) as u64),
                ("card_fields rows".into(), rows as u64),
                ("sqlite_stat1 present (ANALYZE ever run)".into(), stat as u64),
            ])
        }
    }
}

/// A literal for `EXECUTE`.
fn literal(bind: &Bind) -> String {
    bind_text(bind)
}

async fn explain_pg(pool: &sqlx::PgPool, statement: &Statement, q: &mut QueryResult, warmup: usize, runs: usize) -> Result<(), String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: sqlx::Error| format!("{what}: {err}")
    };
    // The statement alone, as sqlx prepares it (the plan cache settles after 5 runs, as on the server's connections).
    let mut conn = pool.acquire().await.map_err(e("acquire"))?;
    let mut micros = Vec::new();
    for i in 0..warmup + runs {
        let started = Instant::now();
        bound!(&statement.sql, &statement.binds).fetch_all(&mut *conn).await.map_err(e("the page statement"))?;
        if i >= warmup {
            micros.push(started.elapsed().as_micros() as u64);
        }
    }
    drop(conn);
    let (p50, p99, ..) = summary(&mut micros);
    (q.sql_p50_ms, q.sql_p99_ms) = (p50, p99);

    let mut tx = pool.begin().await.map_err(e("begin"))?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await.map_err(e("set transaction"))?;
    sqlx::query("SELECT set_config('statement_timeout', '120s', true)").execute(&mut *tx).await.map_err(e("statement_timeout"))?;
    let explain = format!("EXPLAIN (ANALYZE, BUFFERS) {}", statement.sql);
    let rows = bound!(&explain, &statement.binds).fetch_all(&mut *tx).await.map_err(e("EXPLAIN"))?;
    let text: Vec<String> = rows.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<_, _>>().map_err(e("EXPLAIN row"))?;
    q.plans.push(Plan { title: "EXPLAIN (ANALYZE, BUFFERS), parameters bound (a custom plan: the server's first 5 runs on a connection)".into(), text: text.join("\n") });
    let json_explain = format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}", statement.sql);
    let row = bound!(&json_explain, &statement.binds).fetch_one(&mut *tx).await.map_err(e("EXPLAIN JSON"))?;
    let custom: Value = serde_json::from_str(&row.try_get_unchecked::<String, _>(0).map_err(e("EXPLAIN JSON row"))?).map_err(|e| e.to_string())?;

    // The server's prepared statement once the plan cache has settled.
    let literals: Vec<String> = statement.binds.iter().map(literal).collect();
    let execute = format!("EXECUTE bench_search({})", literals.join(", "));
    sqlx::raw_sql(&format!("PREPARE bench_search AS {}", statement.sql)).execute(&mut *tx).await.map_err(e("PREPARE"))?;
    for _ in 0..6 {
        sqlx::raw_sql(&execute).execute(&mut *tx).await.map_err(e("EXECUTE"))?;
    }
    let rows = sqlx::raw_sql(&format!("EXPLAIN (ANALYZE, BUFFERS) {execute}")).fetch_all(&mut *tx).await.map_err(e("EXPLAIN EXECUTE"))?;
    let settled: Vec<String> = rows.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<_, _>>().map_err(e("EXPLAIN EXECUTE row"))?;
    let rows = sqlx::raw_sql(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {execute}")).fetch_all(&mut *tx).await.map_err(e("EXPLAIN EXECUTE JSON"))?;
    let settled_json: Value = match rows.first() {
        Some(r) => serde_json::from_str(&r.try_get_unchecked::<String, _>(0).map_err(e("EXPLAIN EXECUTE JSON row"))?).map_err(|e| e.to_string())?,
        None => Value::Null,
    };
    sqlx::raw_sql("DEALLOCATE bench_search").execute(&mut *tx).await.map_err(e("DEALLOCATE"))?;
    tx.commit().await.map_err(e("commit"))?;

    let custom_root = &custom[0]["Plan"];
    let settled_root = &settled_json[0]["Plan"];
    let generic = settled.iter().any(|l| l.contains("$1"));
    if shape(custom_root) == shape(settled_root) {
        q.findings.push(format!(
            "the prepared statement, after 6 runs, keeps the same plan ({})",
            if generic { "a generic plan of the same shape" } else { "custom plans" }
        ));
    } else {
        q.findings.push(format!(
            "the prepared statement, after 6 runs, switches to a {} plan of a different shape (shown below): that is what the server's connections run from their 6th execution on",
            if generic { "generic" } else { "different" }
        ));
        q.plans.push(Plan { title: "EXPLAIN (ANALYZE, BUFFERS) EXECUTE of the prepared statement after 6 runs (the plan the server settles on)".into(), text: settled.join("\n") });
    }
    q.execution_ms = custom[0]["Execution Time"].as_f64();
    q.planning_ms = custom[0]["Planning Time"].as_f64();
    let mut nodes = Vec::new();
    walk_pg(custom_root, &mut nodes);
    for node in &nodes {
        if let Some(index) = &node.index {
            if !q.indexes.contains(index) {
                q.indexes.push(index.clone());
            }
        }
        if node.kind.contains("Seq Scan") && node.rows_read >= 10_000.0 {
            q.findings.push(format!("sequential scan of {} reading {:.0} rows ({:.1} ms)", node.relation.as_deref().unwrap_or("?"), node.rows_read, node.total_ms));
        }
        if node.kind.starts_with("Gather") {
            q.findings.push(format!("a parallel plan ({}, {}): the query itself keeps both CPUs busy", node.kind, node.detail));
        }
        if node.kind == "Sort" && node.rows_in >= 10_000.0 {
            q.findings.push(format!("a sort of {:.0} rows ({:.1} ms, {})", node.rows_in, node.self_ms, node.detail));
        }
    }
    let settled_nodes = {
        let mut n = Vec::new();
        walk_pg(settled_root, &mut n);
        n
    };
    if let Some(ms) = settled_json[0]["Execution Time"].as_f64() {
        q.findings.push(format!("execution {:.2} ms as first planned, {:.2} ms as the prepared statement after 6 runs", q.execution_ms.unwrap_or(f64::NAN), ms));
    }
    for node in &settled_nodes {
        if node.kind.contains("Seq Scan") && node.rows_read >= 10_000.0 && shape(custom_root) != shape(settled_root) {
            q.findings.push(format!("(settled plan) sequential scan of {} reading {:.0} rows ({:.1} ms)", node.relation.as_deref().unwrap_or("?"), node.rows_read, node.total_ms));
        }
    }
    nodes.sort_by(|a, b| b.self_ms.total_cmp(&a.self_ms));
    q.hot_nodes = nodes.iter().take(4).filter(|n| n.self_ms >= 0.05).map(|n| (n.label(), n.self_ms)).collect();
    Ok(())
}

struct PgNode {
    kind: String,
    relation: Option<String>,
    index: Option<String>,
    detail: String,
    /// Total time of all loops, and that minus the children's.
    total_ms: f64,
    self_ms: f64,
    /// Rows it produced over all loops, plus those its filter removed.
    rows_read: f64,
    /// Rows its (first) child produced, for a sort.
    rows_in: f64,
}

impl PgNode {
    fn label(&self) -> String {
        let mut s = self.kind.clone();
        if let Some(index) = &self.index {
            let _ = write!(s, " using {index}");
        }
        if let Some(relation) = &self.relation {
            let _ = write!(s, " on {relation}");
        }
        if !self.detail.is_empty() {
            let _ = write!(s, " ({})", self.detail);
        }
        s
    }
}

/// A node's time over all its loops, in wall-clock terms: below a Gather
/// the loops ran in `processes` processes at once.
fn node_time(node: &Value, processes: f64) -> f64 {
    node["Actual Total Time"].as_f64().unwrap_or(0.0) * node["Actual Loops"].as_f64().unwrap_or(1.0) / processes
}

fn walk_pg(node: &Value, out: &mut Vec<PgNode>) {
    walk_pg_in(node, 1.0, out)
}

fn walk_pg_in(node: &Value, processes: f64, out: &mut Vec<PgNode>) {
    if node.is_null() {
        return;
    }
    let below = match node["Workers Launched"].as_f64() {
        Some(workers) if node["Node Type"].as_str().is_some_and(|t| t.starts_with("Gather")) => workers + 1.0,
        _ => processes,
    };
    let children: Vec<&Value> = node["Plans"].as_array().map(|p| p.iter().collect()).unwrap_or_default();
    let child_time: f64 = children.iter().map(|c| node_time(c, below)).sum();
    let loops = node["Actual Loops"].as_f64().unwrap_or(1.0);
    let rows = node["Actual Rows"].as_f64().unwrap_or(0.0) * loops;
    let removed = node["Rows Removed by Filter"].as_f64().unwrap_or(0.0) * loops + node["Rows Removed by Index Recheck"].as_f64().unwrap_or(0.0) * loops;
    let mut detail = String::new();
    if let Some(method) = node["Sort Method"].as_str() {
        detail = format!("{method}, key {}", node["Sort Key"].as_array().map(|k| k.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default());
    } else if let Some(cond) = node["Index Cond"].as_str() {
        detail = format!("Index Cond: {cond}");
    } else if let Some(filter) = node["Filter"].as_str() {
        detail = format!("Filter: {filter}");
    } else if let Some(workers) = node["Workers Launched"].as_u64() {
        detail = format!("{workers} workers launched");
    }
    if detail.chars().count() > 160 {
        detail = detail.chars().take(160).collect::<String>() + "…";
    }
    out.push(PgNode {
        kind: node["Node Type"].as_str().unwrap_or("?").to_string(),
        relation: node["Relation Name"].as_str().map(|r| match node["Alias"].as_str() {
            Some(a) if a != r => format!("{r} {a}"),
            _ => r.to_string(),
        }),
        index: node["Index Name"].as_str().map(str::to_string),
        detail,
        total_ms: node_time(node, processes),
        self_ms: (node_time(node, processes) - child_time).max(0.0),
        rows_read: rows + removed,
        rows_in: children.first().map(|c| c["Actual Rows"].as_f64().unwrap_or(0.0) * c["Actual Loops"].as_f64().unwrap_or(1.0)).unwrap_or(0.0),
    });
    for child in children {
        walk_pg_in(child, below, out);
    }
}

/// A plan's node types, relations and indexes, without numbers.
fn shape(node: &Value) -> String {
    if node.is_null() {
        return String::new();
    }
    let children: Vec<String> = node["Plans"].as_array().map(|p| p.iter().map(shape).collect()).unwrap_or_default();
    format!(
        "{}[{}|{}|{}]({})",
        node["Node Type"].as_str().unwrap_or(""),
        node["Relation Name"].as_str().unwrap_or(""),
        node["Index Name"].as_str().unwrap_or(""),
        node["Join Type"].as_str().unwrap_or(""),
        children.join(",")
    )
}

async fn explain_sqlite(pool: &sqlx::SqlitePool, statement: &Statement, q: &mut QueryResult, warmup: usize, runs: usize) -> Result<(), String> {
    let mut micros = Vec::new();
    for i in 0..warmup + runs {
        let started = Instant::now();
        bound!(&statement.sql, &statement.binds).fetch_all(pool).await.map_err(|e| format!("the page statement: {e}"))?;
        if i >= warmup {
            micros.push(started.elapsed().as_micros() as u64);
        }
    }
    let (p50, p99, ..) = summary(&mut micros);
    (q.sql_p50_ms, q.sql_p99_ms) = (p50, p99);
    let explain = format!("EXPLAIN QUERY PLAN {}", statement.sql);
    let rows = bound!(&explain, &statement.binds).fetch_all(pool).await.map_err(|e| format!("EXPLAIN QUERY PLAN: {e}"))?;
    let mut entries = Vec::new();
    for r in &rows {
        let id: i64 = r.try_get(0).map_err(|e| e.to_string())?;
        let parent: i64 = r.try_get(1).map_err(|e| e.to_string())?;
        let detail: String = r.try_get(3).map_err(|e| e.to_string())?;
        entries.push((id, parent, detail));
    }
    let mut depth: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
    let mut text = Vec::new();
    for (id, parent, detail) in &entries {
        let d = if *parent == 0 { 0 } else { depth.get(parent).copied().unwrap_or(0) + 1 };
        depth.insert(*id, d);
        text.push(format!("{}{}", "  ".repeat(d), detail));
        for index in ["card_fields_by_text", "card_fields_by_number", "card_fields_pkey", "card_index_by_type", "card_index_by_card_id", "sqlite_autoindex_card_fields_1", "sqlite_autoindex_card_index_1"] {
            if detail.contains(&format!("INDEX {index}")) && !q.indexes.contains(&index.to_string()) {
                q.indexes.push(index.to_string());
            }
        }
        if detail.starts_with("SCAN ") && !detail.starts_with("SCAN (") && !detail.contains("USING") {
            q.findings.push(format!("full scan: {detail}"));
        }
        if detail.contains("USE TEMP B-TREE FOR ORDER BY") {
            q.findings.push("sorts every match in a temporary B-tree (ORDER BY not served by an index)".into());
        }
    }
    q.plans.push(Plan { title: "EXPLAIN QUERY PLAN, parameters bound".into(), text: text.join("\n") });
    Ok(())
}

// ---------------------------------------------------------------------------
// search report

const ANALYSIS_START: &str = "<!-- analysis -->";
const ANALYSIS_END: &str = "<!-- /analysis -->";

fn report(args: ReportArgs) -> Result<(), String> {
    let read = |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let meta: Value = serde_json::from_str(&read(&args.meta)?).map_err(|e| format!("{}: {e}", args.meta.display()))?;
    let mut results = Vec::new();
    for path in &args.results {
        let r: BackendResult = serde_json::from_str(&read(path)?).map_err(|e| format!("{}: {e}", path.display()))?;
        results.push(r);
    }
    let previous = std::fs::read_to_string(&args.out).unwrap_or_default();
    let analysis = match (previous.find(ANALYSIS_START), previous.find(ANALYSIS_END)) {
        (Some(a), Some(b)) if a < b => previous[a + ANALYSIS_START.len()..b].trim().to_string(),
        _ => "(No analysis written yet: write it between these markers; `bench/search` keeps it when it regenerates the report.)".to_string(),
    };
    let m = |k: &str| meta[k].as_str().unwrap_or("?").to_string();
    let mut o = String::new();
    let w = &mut o;
    let _ = writeln!(w, "# Search benchmark\n");
    let _ = writeln!(w, "Generated by `bench/search` (`realm-bench search`); the analysis section is written by hand and kept across runs.\n");
    let _ = writeln!(w, "- date: {}", m("date"));
    let _ = writeln!(w, "- tree: {}", m("tree"));
    let _ = writeln!(w, "- machine: {}; {}; {}", m("machine"), m("cpu"), m("kernel"));
    let _ = writeln!(w, "- Postgres: {}", m("postgres"));
    let _ = writeln!(w, "- reproduce: {}", m("command"));
    let _ = writeln!(w, "- wall time: {}", m("wall"));
    let _ = writeln!(w, "- method: {}", m("method"));
    let _ = writeln!(w);

    // The target.
    let _ = writeln!(w, "## Target\n");
    if let Some(pg) = results.iter().find(|r| r.backend == "postgres") {
        if let Some(a) = pg.queries.iter().find(|q| q.key == "a") {
            let met = a.errors == 0 && a.requests > 0 && a.p50_ms <= 5.0;
            let _ = writeln!(
                w,
                "**eq page of 25 on Postgres p50 ≤ 5 ms: {} ({:.2} ms; p99 {:.2} ms; {} matches)**\n",
                if met { "met" } else { "missed" },
                a.p50_ms,
                a.p99_ms,
                a.total
            );
        }
    } else {
        let _ = writeln!(w, "No Postgres results in this run.\n");
    }

    let _ = writeln!(w, "## Latency\n");
    let _ = writeln!(
        w,
        "Per query: warm-up requests, then sequential measured requests over one keep-alive connection (`Accept: application/vnd.card+json`); \
         the time is from sending the request to the last byte of the answer. \"SQL alone\" is the page statement (the one below) run by the \
         bench on its own connection as a prepared statement, without the transaction, the files read, the rendering and `included`. \
         \"busy\" is the share of both CPUs in use by anyone while the query's requests ran: the bench, the server and the database take \
         turns, about one CPU (50%), unless Postgres runs a parallel plan (see the query's findings); otherwise well above 50% means \
         something else was running. Before each query the bench waits for the machine to be idle.\n"
    );
    for r in &results {
        let _ = writeln!(w, "### {} ({} cards)\n", r.backend, r.cards);
        let _ = writeln!(w, "| | query | total matches | data / included | answer | requests | p50 ms | p99 ms | mean ms | SQL alone p50 / p99 ms | busy |");
        let _ = writeln!(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for q in &r.queries {
            let errors = if q.errors > 0 { format!(" **{} errors**: {}", q.errors, q.error_sample.chars().take(120).collect::<String>()) } else { String::new() };
            let _ = writeln!(
                w,
                "| {} | {}{} | {} | {} / {} | {:.1} kB | {} | {:.2} | {:.2} | {:.2} | {} | {:.0}% |",
                q.key,
                q.title,
                errors,
                if q.form == Some(Form::Card) { "—".to_string() } else { q.total.to_string() },
                q.returned,
                q.included,
                q.response_bytes as f64 / 1000.0,
                q.requests,
                q.p50_ms,
                q.p99_ms,
                q.mean_ms,
                if q.form == Some(Form::Card) { "—".to_string() } else { format!("{:.2} / {:.2}", q.sql_p50_ms, q.sql_p99_ms) },
                q.machine_busy * 100.0
            );
        }
        let _ = writeln!(w);
    }

    let _ = writeln!(w, "## Seeding\n");
    let _ = writeln!(w, "| backend | cards | `/_atomic` requests × cards | seconds | cards/s | request p50 / p99 / max ms | body MB |");
    let _ = writeln!(w, "|---|---:|---|---:|---:|---:|---:|");
    for r in &results {
        if let Some(s) = &r.seed {
            let _ = writeln!(
                w,
                "| {} | {} | {} × {} | {:.1} | {:.0} | {:.0} / {:.0} / {:.0} | {:.1} |",
                r.backend,
                s.cards,
                s.requests,
                s.per_request,
                s.seconds,
                s.cards as f64 / s.seconds,
                s.request_p50_ms,
                s.request_p99_ms,
                s.request_max_ms,
                s.body_bytes as f64 / 1e6
            );
        } else {
            let _ = writeln!(w, "| {} | {} | (reused an already seeded realm) | | | | |", r.backend, r.cards);
        }
    }
    let _ = writeln!(w, "\nOne client, one request at a time, each an all-or-nothing transaction; every card is a `files` row, a `card_index` row and its `card_fields` rows.\n");
    for r in &results {
        let sizes: Vec<String> = r
            .sizes
            .iter()
            .map(|(name, v)| if name.contains("rows") || name.contains("present") { format!("{name}: {v}") } else { format!("{name} {:.1} MB", *v as f64 / 1e6) })
            .collect();
        let _ = writeln!(w, "- {} sizes{}: {}", r.backend, if r.analyzed { " (after VACUUM (ANALYZE))" } else { "" }, sizes.join(", "));
    }
    let _ = writeln!(w);

    let _ = writeln!(w, "## Analysis\n");
    let _ = writeln!(w, "{ANALYSIS_START}\n{analysis}\n{ANALYSIS_END}\n");

    let _ = writeln!(w, "## Plans\n");
    let _ = writeln!(
        w,
        "Each statement is the one the server runs for the query, built with `realm_host::search::sql::page` from the same JSON (the GET \
         form parses to the same statement, checked). Postgres: `EXPLAIN (ANALYZE, BUFFERS)` in a REPEATABLE READ READ ONLY transaction \
         as the server's, with the parameters bound (the custom plan the server's first 5 runs on a connection get); then the statement \
         is PREPAREd and run 6 times, and `EXPLAIN EXECUTE` shows the plan it settles on — shown only when its shape differs. SQLite: \
         `EXPLAIN QUERY PLAN` with the parameters bound.\n"
    );
    let qkeys: Vec<String> = results.first().map(|r| r.queries.iter().map(|q| q.key.clone()).collect()).unwrap_or_default();
    for key in qkeys {
        let first = results.iter().find_map(|r| r.queries.iter().find(|q| q.key == key));
        let Some(first) = first else { continue };
        if first.title.starts_with("(diagnostic)") {
            continue;
        }
        let _ = writeln!(w, "### ({}) {}\n", first.key, first.title);
        let _ = writeln!(w, "Request: `{}`\n", first.request);
        for r in &results {
            let Some(q) = r.queries.iter().find(|q| q.key == key) else { continue };
            let _ = writeln!(w, "#### {}\n", r.backend);
            let _ = writeln!(w, "{} matches; p50 {:.2} ms, p99 {:.2} ms; statement alone p50 {:.2} ms.", q.total, q.p50_ms, q.p99_ms, q.sql_p50_ms);
            if let (Some(e), Some(p)) = (q.execution_ms, q.planning_ms) {
                let _ = writeln!(w, "EXPLAIN ANALYZE: planning {p:.2} ms, execution {e:.2} ms.");
            }
            let _ = writeln!(w);
            let indexes = if q.indexes.is_empty() { "none".to_string() } else { q.indexes.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ") };
            let _ = writeln!(w, "- indexes used: {indexes}");
            if key == "a" || key == "b" {
                let uses = q.indexes.iter().any(|i| i == "card_fields_by_text");
                let _ = writeln!(w, "- **uses `card_fields_by_text`: {}**", if uses { "yes" } else { "no" });
            }
            for f in &q.findings {
                let _ = writeln!(w, "- {f}");
            }
            if !q.hot_nodes.is_empty() {
                let hot: Vec<String> = q.hot_nodes.iter().map(|(n, ms)| format!("{ms:.2} ms {n}")).collect();
                let _ = writeln!(w, "- most own time: {}", hot.join("; "));
            }
            let _ = writeln!(w, "\n<details><summary>statement and plan</summary>\n");
            let _ = writeln!(w, "```sql\n{}\n```\n", q.sql);
            let binds: Vec<String> = q.binds.iter().enumerate().map(|(i, b)| format!("${} = {b}", i + 1)).collect();
            let _ = writeln!(w, "Parameters: {}\n", binds.join(", "));
            for p in &q.plans {
                let _ = writeln!(w, "{}:\n\n```\n{}\n```\n", p.title, p.text);
            }
            let _ = writeln!(w, "</details>\n");
        }
    }
    std::fs::write(&args.out, o).map_err(|e| format!("{}: {e}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards_are_deterministic_and_names_repeat_about_once_in_a_thousand() {
        assert_eq!(person(7, 100), person(7, 100));
        assert_eq!(FIRST_NAMES, 1000);
        let names: std::collections::HashSet<String> = (0..FIRST_NAMES).map(first_name).collect();
        assert_eq!(names.len(), FIRST_NAMES);
        let n = 20_000;
        let hits = (0..n).filter(|&i| person(i, n)["attributes"]["firstName"] == target_name()).count();
        assert!((5..=45).contains(&hits), "{hits}");
        let bio = person(3, n)["attributes"]["bio"].as_str().unwrap().to_string();
        assert!((190..=220).contains(&bio.len()), "{bio}");
        let fragment = (0..n).filter(|&i| person(i, n)["attributes"]["bio"].as_str().unwrap().to_lowercase().contains(FRAGMENT)).count();
        assert!(fragment > n / 50 && fragment < n / 20, "{fragment}");
    }

    #[test]
    fn the_get_form_spells_the_same_query() {
        for case in queries(100).into_iter().filter(|c| c.form != Form::Card) {
            let string = brackets(&case.json);
            let back = realm_host::search::brackets::parse(&string).unwrap();
            let realm = url::Url::parse("http://h/r/").unwrap();
            let limits = QueryLimits { max_page_size: 1000, max_terms: 500 };
            let a = sql::page(&query::parse(&case.json, &realm, limits).unwrap(), "http://h/r/", Dialect::Postgres);
            let b = sql::page(&query::parse(&back, &realm, limits).unwrap(), "http://h/r/", Dialect::Postgres);
            assert_eq!(a.sql, b.sql, "{}", case.key);
            assert_eq!(a.binds.len(), b.binds.len(), "{}", case.key);
        }
    }
}
