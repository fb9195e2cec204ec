//! `realm-host`: the realm server and its admin commands (spec §6).

use realm_host::guest::{runtime, selftest, swap};
use realm_host::http::{self, listener};
use realm_host::realm::url as realm_url;
use realm_host::{auth, events, lock, search};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use realm_host::lock::{Limits, Locks};
use realm_host::store::{Database, Permissions};

// The server allocates and frees small buffers on every request from many
// worker threads; mimalloc's thread-local free lists cost less CPU there
// than glibc's arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The database used when `--database` is not given: the embedded default.
const DEFAULT_DATABASE: &str = "sqlite://realm.db";

#[derive(Parser)]
#[command(name = "realm-host", version, about = "Hosts Boxel-style realms; card logic runs in a WebAssembly guest")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of `serve`'s flags costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve every realm in the database over HTTP.
    Serve(ServeArgs),
    /// Create realms and grant permissions.
    #[command(subcommand)]
    Realm(RealmCommand),
    /// Print a JWT for a user of a realm (or a guest-admin token).
    Token(TokenArgs),
    /// Deploy, list, switch and test guest components.
    #[command(subcommand)]
    Guest(GuestCommand),
}

#[derive(Subcommand)]
enum GuestCommand {
    /// Validate a component (world + self-test), store it and make it active.
    Deploy {
        file: PathBuf,
        #[arg(long, env = "REALM_DATABASE_URL", default_value = DEFAULT_DATABASE)]
        database: String,
        /// Who deploys (recorded in the registry).
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
    },
    /// List deployed guests: hash, size, deployed at, active.
    List {
        #[arg(long, env = "REALM_DATABASE_URL", default_value = DEFAULT_DATABASE)]
        database: String,
    },
    /// Make a deployed guest active again (hash or unique prefix).
    Activate {
        hash: String,
        #[arg(long, env = "REALM_DATABASE_URL", default_value = DEFAULT_DATABASE)]
        database: String,
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
    },
    /// Go back to the guest that was active before the current one.
    Rollback {
        #[arg(long, env = "REALM_DATABASE_URL", default_value = DEFAULT_DATABASE)]
        database: String,
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
    },
    /// Run the self-test suite against a component, in memory; exit 1 on failure.
    Test { file: PathBuf },
    /// Write the built-in guest component to a file (a starting point).
    Builtin { output: PathBuf },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "REALM_LISTEN", default_value = "127.0.0.1:4201")]
    listen: SocketAddr,
    /// sqlite://FILE or postgres://…; without it, the embedded default
    /// (`sqlite://realm.db` with a demo realm anyone may read and write).
    #[arg(long, env = "REALM_DATABASE_URL")]
    database: Option<String>,
    /// A guest component to run instead of the built-in one.
    #[arg(long, env = "REALM_GUEST")]
    guest: Option<PathBuf>,
    /// With --guest: reload the guest whenever the file changes.
    #[arg(long, requires = "guest")]
    watch: bool,
    /// Secret that signs tokens (HS256). Without it a random one is used,
    /// and only public realms are usable.
    #[arg(long, env = "REALM_SECRET")]
    secret: Option<String>,
    /// Largest stored card document, in bytes.
    #[arg(long, env = "REALM_CARD_LIMIT", default_value_t = 512 * 1024)]
    card_limit: usize,
    /// Largest stored file, in bytes.
    #[arg(long, env = "REALM_FILE_LIMIT", default_value_t = 5 * 1024 * 1024)]
    file_limit: usize,
    /// How long a write waits for its realm's lock before answering 503.
    #[arg(long, env = "REALM_LOCK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    lock_timeout: Duration,
    /// Time the guest itself may run per request before it is stopped (500).
    #[arg(long, env = "REALM_GUEST_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    guest_timeout: Duration,
    /// Most requests whose writes share one commit, over all its realms (1 turns coalescing off).
    #[arg(long, env = "REALM_COALESCE_MAX_BATCH", default_value_t = 64)]
    coalesce_max_batch: usize,
    /// Longest a shared commit admits new writers after it opens.
    #[arg(long, env = "REALM_COALESCE_MAX_WAIT", default_value = "20ms", value_parser = parse_duration)]
    coalesce_max_wait: Duration,
    /// MiB of realms' files a replica keeps between write batches, trusted
    /// while the realm's event seq is unchanged (0: read them every batch).
    #[arg(long, env = "REALM_WRITE_CACHE_MIB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(0..=1 << 20))]
    write_cache_mib: u64,
    /// Largest guest memory, in MiB (a guest that needs more fails with 500).
    #[arg(long, env = "REALM_GUEST_MEMORY_MIB", default_value_t = 128)]
    guest_memory_mib: usize,
    /// Guest instances that may run at once; more calls wait for one.
    #[arg(long, env = "REALM_GUEST_INSTANCES", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    guest_instances: u32,
    /// How long a request waits for a free guest instance before answering 503.
    #[arg(long, env = "REALM_GUEST_WAIT", default_value = "10s", value_parser = parse_duration)]
    guest_wait: Duration,
    /// Keep compiled guests in this directory, so a start (or a switch to a
    /// guest compiled before) need not compile again. Trusted like the
    /// binary: its files are loaded as machine code.
    #[arg(long, env = "REALM_COMPILE_CACHE")]
    compile_cache: Option<PathBuf>,
    /// Largest `/_atomic` request body, in bytes.
    #[arg(long, env = "REALM_ATOMIC_LIMIT", default_value_t = 8 * 1024 * 1024)]
    atomic_limit: usize,
    /// Most operations in one `/_atomic` request (413 beyond).
    #[arg(long, env = "REALM_ATOMIC_MAX_OPERATIONS", default_value_t = 1000)]
    atomic_max_operations: usize,
    /// Most values in one JSON body the guest parses (413 beyond): bounds
    /// the guest memory a request can need, whatever the body's shape.
    #[arg(long, env = "REALM_JSON_MAX_VALUES", default_value_t = 200_000)]
    json_max_values: usize,
    /// Largest `_search` page (also the page size when a query names none).
    #[arg(long, env = "REALM_SEARCH_MAX_PAGE_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    search_max_page_size: u64,
    /// Most terms (filter nodes, field conditions, sort keys) in one `_search` query.
    #[arg(long, env = "REALM_SEARCH_MAX_TERMS", default_value_t = 500)]
    search_max_terms: usize,
    /// How long one `_search` query may run in the database (400 beyond).
    #[arg(long, env = "REALM_SEARCH_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    search_timeout: Duration,
    /// Events a realm-event subscriber may fall behind before it is
    /// disconnected (it resumes with `Last-Event-ID`).
    #[arg(long, env = "REALM_EVENTS_BUFFER", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    events_buffer: u64,
    /// Newest events each realm keeps for `Last-Event-ID` resumes.
    #[arg(long, env = "REALM_EVENTS_RETAIN_COUNT", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    events_retain_count: u64,
    /// Events older than this are dropped (each realm keeps its newest).
    #[arg(long, env = "REALM_EVENTS_RETAIN_AGE", default_value = "7d", value_parser = parse_duration)]
    events_retain_age: Duration,
    /// Heartbeat comment interval on event streams (keeps proxies from closing them).
    #[arg(long, env = "REALM_EVENTS_HEARTBEAT", default_value = "15s", value_parser = parse_duration)]
    events_heartbeat: Duration,
    /// How often each followed realm's events are re-read (repairs a lost NOTIFY).
    #[arg(long, env = "REALM_EVENTS_POLL", default_value = "1s", value_parser = parse_duration)]
    events_poll: Duration,
    /// How long a client may take to send a request's headers, from its first byte.
    #[arg(long, env = "REALM_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: Duration,
    /// How long a client may take to send a request body (408 beyond).
    #[arg(long, env = "REALM_BODY_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    body_read_timeout: Duration,
    /// How long a connection may stay open with no request in progress.
    #[arg(long, env = "REALM_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Most open client connections; past it the longest-waiting idle one is closed.
    #[arg(long, env = "REALM_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// On SIGTERM or Ctrl-C: how long the requests in progress may take to
    /// finish; then the server exits, and those still running end unanswered.
    #[arg(long, env = "REALM_SHUTDOWN_DRAIN", default_value = "10s", value_parser = parse_duration)]
    shutdown_drain: Duration,
}

#[derive(Subcommand)]
enum RealmCommand {
    /// Create a realm (idempotent) and set what anyone may do in it.
    Create {
        url: String,
        #[arg(long, value_enum, default_value_t = Public::None)]
        public: Public,
        #[arg(long, env = "REALM_DATABASE_URL", default_value = DEFAULT_DATABASE)]
        database: String,
    },
    /// Grant a user permissions in a realm.
    Grant {
        url: String,
        user: String,
        #[arg(required = true, value_parser = ["read", "write", "realm-owner"])]
        permissions: Vec<String>,
        #[arg(long, env = "REALM_DATABASE_URL", default_value = DEFAULT_DATABASE)]
        database: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Public {
    None,
    Read,
    Write,
}

impl Public {
    fn permissions(self) -> Permissions {
        match self {
            Public::None => Permissions::default(),
            Public::Read => Permissions { read: true, ..Permissions::default() },
            Public::Write => Permissions { read: true, write: true, ..Permissions::default() },
        }
    }
}

#[derive(Args)]
struct TokenArgs {
    #[arg(long)]
    user: String,
    /// The realm the token is for (required unless --admin).
    #[arg(long, required_unless_present = "admin")]
    realm: Option<String>,
    /// A server-wide token that may deploy guests (`PUT /_guest`).
    #[arg(long, conflicts_with = "realm")]
    admin: bool,
    /// Comma-separated: read, write, realm-owner.
    #[arg(long, default_value = "read,write")]
    permissions: String,
    #[arg(long, env = "REALM_SECRET")]
    secret: String,
    /// Lifetime of the token, e.g. 7d, 12h, 30m, 45s.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    expires_in: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("'{text}' is not a duration like 10s, 500ms, 5m, 2h or 7d"))?;
    let secs = |k: u64| Duration::from_secs(n.saturating_mul(k));
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(secs(1)),
        "m" => Ok(secs(60)),
        "h" => Ok(secs(3600)),
        "d" => Ok(secs(86_400)),
        _ => Err(format!("'{text}' is not a duration like 10s, 500ms, 5m, 2h or 7d")),
    }
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "realm_host=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => exit_with(&format!("cannot start the async runtime: {e}")),
    };
    if let Err(message) = runtime.block_on(run(cli)) {
        exit_with(&message);
    }
}

fn exit_with(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Realm(RealmCommand::Create { url, public, database }) => {
            let realm = realm_url::canonical_realm_url(&url).map_err(|e| e.to_string())?;
            let db = connect(&database).await?;
            db.create_realm(&realm, public.permissions()).await.map_err(|e| e.to_string())?;
            println!("created {realm}");
            Ok(())
        }
        Command::Realm(RealmCommand::Grant { url, user, permissions, database }) => {
            let realm = realm_url::canonical_realm_url(&url).map_err(|e| e.to_string())?;
            let granted = auth::parse_permissions(permissions.iter().map(String::as_str))?;
            let db = connect(&database).await?;
            db.grant(&realm, &user, granted).await.map_err(|e| e.to_string())?;
            println!("granted {} to {user} in {realm}", permissions.join(", "));
            Ok(())
        }
        Command::Token(args) => {
            let token = match &args.realm {
                Some(realm) => {
                    let realm = realm_url::canonical_realm_url(realm).map_err(|e| e.to_string())?;
                    let permissions = auth::parse_permissions(args.permissions.split(','))?;
                    auth::issue(&args.secret, &args.user, &realm, permissions, args.expires_in.as_secs())?
                }
                None => auth::issue_admin(&args.secret, &args.user, args.expires_in.as_secs())?,
            };
            println!("{token}");
            Ok(())
        }
        Command::Guest(command) => guest_command(command).await,
    }
}

const DEFAULT_SANDBOX: runtime::Sandbox = runtime::Sandbox::DEFAULT;

async fn guest_command(command: GuestCommand) -> Result<(), String> {
    match command {
        GuestCommand::Test { file } => {
            let bytes = std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let engine = runtime::engine(DEFAULT_SANDBOX).map_err(|e| format!("cannot start wasmtime: {e}"))?;
            let compiled = runtime::compile(&engine, &bytes).map_err(|e| format!("not a component of the realm-core world: {e:#}"))?;
            let report = selftest::run(&engine, &compiled, DEFAULT_SANDBOX).await;
            print!("{}", report.table());
            if report.failed() > 0 {
                return Err(format!("{} self-test case(s) failed", report.failed()));
            }
            Ok(())
        }
        GuestCommand::Builtin { output } => {
            std::fs::write(&output, runtime::BUILTIN_GUEST).map_err(|e| format!("cannot write {}: {e}", output.display()))?;
            println!("wrote the built-in guest ({} bytes) to {}", runtime::BUILTIN_GUEST.len(), output.display());
            Ok(())
        }
        GuestCommand::Deploy { file, database, by } => {
            let bytes = std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let engine = runtime::engine(DEFAULT_SANDBOX).map_err(|e| format!("cannot start wasmtime: {e}"))?;
            let compiled = swap::validate(&engine, DEFAULT_SANDBOX, bytes.clone()).await?;
            let db = connect(&database).await?;
            db.store_guest(&bytes, &by).await.map_err(|e| e.to_string())?;
            db.activate_guest(&compiled.hash, &by).await.map_err(|e| e.to_string())?;
            println!("deployed and activated {}", compiled.hash);
            Ok(())
        }
        GuestCommand::List { database } => {
            let db = connect(&database).await?;
            println!("{:<64}  {:>10}  {:<29}  {:<12}  active", "hash", "size", "deployed at", "by");
            for g in db.list_guests().await.map_err(|e| e.to_string())? {
                let at = httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(g.deployed_at.max(0) as u64));
                println!("{:<64}  {:>10}  {:<29}  {:<12}  {}", g.hash, g.size, at, g.deployed_by, if g.active { "*" } else { "" });
            }
            Ok(())
        }
        GuestCommand::Activate { hash, database, by } => {
            let db = connect(&database).await?;
            let (full, _) = db
                .guest_bytes(&hash)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no deployed guest matches '{hash}' uniquely; see `realm-host guest list`"))?;
            db.activate_guest(&full, &by).await.map_err(|e| e.to_string())?;
            println!("activated {full}");
            Ok(())
        }
        GuestCommand::Rollback { database, by } => {
            let db = connect(&database).await?;
            let previous = db
                .previous_guest()
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "there is no earlier guest to roll back to".to_string())?;
            db.activate_guest(&previous, &by).await.map_err(|e| e.to_string())?;
            println!("rolled back to {previous}");
            Ok(())
        }
    }
}

async fn connect(url: &str) -> Result<Database, String> {
    Database::connect(url).await.map_err(|e| format!("cannot open database {url}: {e}"))
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let connection_limits = connection_limits(&args);
    let embedded_default = args.database.is_none();
    let database = args.database.unwrap_or_else(|| DEFAULT_DATABASE.to_string());
    let db = connect(&database).await?;
    lock::prepare(&db).await.map_err(|e| format!("cannot prepare the write path in {database}: {e}"))?;
    let rebuilt = search::index::rebuild_stale(&db).await.map_err(|e| format!("cannot rebuild the search index: {e}"))?;
    if rebuilt > 0 {
        tracing::info!(cards = rebuilt, "search index rebuilt for cards indexed by an older version");
    }
    let prepared = db.clone();
    drop(tokio::spawn(async move { search::index::prepare_postgres(&prepared).await }));
    if embedded_default {
        let demo = format!("http://{}/demo/", args.listen);
        db.create_realm(&demo, Public::Write.permissions()).await.map_err(|e| e.to_string())?;
        tracing::info!(realm = %demo, "demo realm: anyone may read and write");
    }
    let secret = match args.secret {
        Some(secret) => secret,
        None => {
            tracing::warn!("no --secret given: tokens are signed with a random secret and only public realms are usable");
            uuid::Uuid::new_v4().to_string()
        }
    };
    let limits = Limits { card_bytes: args.card_limit, file_bytes: args.file_limit };
    let request_limits = http::RequestLimits {
        card_bytes: args.card_limit,
        file_bytes: args.file_limit,
        atomic_bytes: args.atomic_limit,
        atomic_operations: args.atomic_max_operations,
        json_values: args.json_max_values,
        body_read: args.body_read_timeout,
        search: search::SearchLimits {
            query: search::QueryLimits { max_page_size: args.search_max_page_size, max_terms: args.search_max_terms },
            timeout: args.search_timeout,
        },
        events_heartbeat: args.events_heartbeat,
    };
    let coalescing = lock::Coalescing { max_batch: args.coalesce_max_batch, max_wait: args.coalesce_max_wait };
    let locks = Arc::new(Locks::with_coalescing(args.lock_timeout, limits, coalescing).retaining_events(args.events_retain_count).knowing_files(usize::try_from(args.write_cache_mib << 20).unwrap_or(usize::MAX)));
    let event_options = events::EventOptions {
        buffer: usize::try_from(args.events_buffer).unwrap_or(usize::MAX),
        poll: args.events_poll,
        retain_age: args.events_retain_age,
        retain_count: args.events_retain_count,
    };
    let hub = events::start(db.clone(), &locks, event_options);
    let sandbox = runtime::Sandbox {
        cpu: args.guest_timeout,
        memory_bytes: args.guest_memory_mib << 20,
        instances: args.guest_instances,
        instance_wait: args.guest_wait,
    };
    let engine = runtime::engine(sandbox)
        .map_err(|e| format!("cannot start wasmtime: {e}"))?
        .with_compile_cache(args.compile_cache.clone());
    let (bytes, source) = match &args.guest {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("cannot read guest {}: {e}", path.display()))?;
            (bytes, format!("file {}", path.display()))
        }
        None => match db.active_guest().await.map_err(|e| e.to_string())? {
            Some(active) => {
                let (_, bytes) = db
                    .guest_bytes(&active)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("the active guest {active} is missing from the registry"))?;
                (bytes, "registry".to_string())
            }
            None => (runtime::BUILTIN_GUEST.to_vec(), "built-in".to_string()),
        },
    };
    let compiled = runtime::compile(&engine, &bytes).map_err(|e| format!("the guest does not fit the realm-core world: {e:#}"))?;
    tracing::info!(guest = %&compiled.hash[..12], %source, "guest loaded");
    let stats = locks.stats.clone();
    let app_locks = locks.clone();
    let guests = Arc::new(swap::Guests::new(engine, db.clone(), locks, sandbox, compiled));
    match (&args.guest, args.watch) {
        (Some(path), true) => drop(tokio::spawn(guests.clone().watch_file(path.clone()))),
        (Some(_), false) => {}
        (None, _) => drop(tokio::spawn(guests.clone().follow_registry())),
    }
    let events = hub.clone();
    let app = Arc::new(http::App::new(db, guests, secret, request_limits, stats, app_locks, hub).await.map_err(|e| e.to_string())?);
    drop(tokio::spawn(app.realms.clone().follow_changes()));
    let listener = bind(args.listen).map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!("realm-host listening on http://{local}/");
    let shutdown = async move {
        shutdown_signal().await;
        tracing::info!(drain = ?connection_limits.drain, "shutting down: no new connections; the requests in progress finish, event streams end (their clients resume elsewhere)");
        events.close();
    };
    listener::serve(listener, http::router(app), connection_limits, shutdown).await;
    Ok(())
}

/// The connection cap, lowered to what the open-file limit allows.
fn connection_limits(args: &ServeArgs) -> listener::ConnectionLimits {
    // Database connections, the SQLite files and the listener need descriptors too.
    const RESERVED_DESCRIPTORS: u64 = 256;
    let files = listener::raise_open_file_limit();
    let possible = files.saturating_sub(RESERVED_DESCRIPTORS).max(16) as usize;
    let max_connections = args.max_connections.clamp(1, possible);
    if max_connections < args.max_connections {
        tracing::warn!(
            requested = args.max_connections,
            max_connections,
            "the open-file limit ({files}) lowers --max-connections; raise `ulimit -n` to allow more"
        );
    }
    listener::ConnectionLimits { header_read: args.header_read_timeout, idle: args.idle_timeout, max_connections, drain: args.shutdown_drain }
}

/// A listening socket with a deep accept queue (bursts of new connections).
fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(4096)
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
