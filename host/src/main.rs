//! `realm-host`: the realm server and its admin commands (spec §6).

mod auth;
mod db;
mod http;
mod lock_key;
mod memory;
mod realm_url;
mod registry;
mod runtime;
mod write_lock;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::db::{Database, Permissions};
use crate::write_lock::{Limits, Locks};

/// The database used when `--database` is not given: the embedded default.
const DEFAULT_DATABASE: &str = "sqlite://realm.db";

#[derive(Parser)]
#[command(name = "realm-host", version, about = "Hosts Boxel-style realms; card logic runs in a WebAssembly guest")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every realm in the database over HTTP.
    Serve(ServeArgs),
    /// Create realms and grant permissions.
    #[command(subcommand)]
    Realm(RealmCommand),
    /// Print a JWT for a user of a realm.
    Token(TokenArgs),
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
    /// Largest guest memory, in MiB (a guest that needs more fails with 500).
    #[arg(long, env = "REALM_GUEST_MEMORY_MIB", default_value_t = 64)]
    guest_memory_mib: usize,
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
    #[arg(long)]
    realm: String,
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
            let realm = realm_url::canonical_realm_url(&args.realm).map_err(|e| e.to_string())?;
            let permissions = auth::parse_permissions(args.permissions.split(','))?;
            println!("{}", auth::issue(&args.secret, &args.user, &realm, permissions, args.expires_in.as_secs())?);
            Ok(())
        }
    }
}

async fn connect(url: &str) -> Result<Database, String> {
    Database::connect(url).await.map_err(|e| format!("cannot open database {url}: {e}"))
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let embedded_default = args.database.is_none();
    let database = args.database.unwrap_or_else(|| DEFAULT_DATABASE.to_string());
    let db = connect(&database).await?;
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
    let locks = Arc::new(Locks::new(args.lock_timeout, limits));
    let sandbox = runtime::Sandbox { cpu: args.guest_timeout, memory_bytes: args.guest_memory_mib << 20 };
    let engine = runtime::engine(sandbox).map_err(|e| format!("cannot start wasmtime: {e}"))?;
    let bytes = match &args.guest {
        Some(path) => std::fs::read(path).map_err(|e| format!("cannot read guest {}: {e}", path.display()))?,
        None => runtime::BUILTIN_GUEST.to_vec(),
    };
    let compiled = runtime::compile(&engine, &bytes).map_err(|e| format!("the guest does not fit the realm-core world: {e:#}"))?;
    let guest = runtime::Guest::new(&engine, &compiled, db.clone(), locks, sandbox);
    tracing::info!(guest = %guest.short_hash, "guest loaded");
    let app = Arc::new(http::App::new(db, Arc::new(guest), secret, limits).await.map_err(|e| e.to_string())?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!("realm-host listening on http://{local}/");
    axum::serve(listener, http::router(app))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| format!("server error: {e}"))
}
