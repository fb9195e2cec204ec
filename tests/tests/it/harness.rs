//! The test harness: real `realm-host` processes on throw-away databases,
//! driven over HTTP (and raw TCP where a URL library would "fix" the path).
//!
//! * [`binary`] finds the server binary (`REALM_HOST_BIN`, else the
//!   workspace's `target/debug/realm-host`).
//! * [`TestDb`] is a database URL plus whatever keeps it alive (a temp dir for
//!   SQLite); several [`Server`]s (replicas) may share one through an `Arc`.
//! * [`Server::start`] creates the default realms with the CLI, spawns
//!   `realm-host serve`, waits until it answers, and kills it on drop
//!   (printing its log when the test is failing).
//! * [`Client`] builds the requests of the contract; [`Fetch::fetch`] sends
//!   one and returns a [`Resp`] with the status, headers and body text.

#![allow(dead_code)]

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const CARD_JSON: &str = "application/vnd.card+json";
pub const CARD_SOURCE: &str = "application/vnd.card+source";
pub const JSON_API: &str = "application/vnd.api+json";
pub const PLAIN_JSON: &str = "application/json";

/// The secret every test server signs its tokens with.
pub const SECRET: &str = "realm-tests-secret";
/// The user granted `read write` on the `private` realm by default.
pub const ALICE: &str = "alice";
/// The user granted `read write` on the `pubread` realm by default.
pub const BOB: &str = "bob";

/// How long a server may take to answer its first request.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one CLI invocation may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one HTTP request may take (generous: debug builds, 2 cores).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Environment variables the CLI reads; cleared so the caller's shell cannot leak in.
const CLI_ENV: [&str; 5] = ["REALM_DATABASE_URL", "REALM_LISTEN", "REALM_SECRET", "REALM_GUEST", "REALM_COMPILE_CACHE"];

/// The compile cache the harness gives every server (in cargo's scratch
/// dir for tests): a guest is compiled once, not at every server start
/// (see `serve --compile-cache`).
pub fn compile_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("compile-cache")
}

// ---------------------------------------------------------------------------
// The binary and the command line

/// Path of the `realm-host` binary: `$REALM_HOST_BIN`, else
/// `<$CARGO_TARGET_DIR or <workspace>/target>/debug/realm-host`, else the
/// `realm-host` next to this test binary's profile directory.
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("REALM_HOST_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "REALM_HOST_BIN={} is not a file", bin.display());
        return bin;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace.join("target"));
    let target = if target.is_relative() { workspace.join(target) } else { target };
    let name = format!("realm-host{}", std::env::consts::EXE_SUFFIX);
    let mut candidates = vec![target.join("debug").join(&name)];
    // <target>/<profile>/deps/it-<hash> → <target>/<profile>/realm-host
    if let Some(profile_dir) = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf())) {
        candidates.push(profile_dir.join(&name));
    }
    candidates.iter().find(|c| c.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "realm-host binary not found (looked at {}): build it with `cargo build -p realm-host`, \
             or point REALM_HOST_BIN at it",
            candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    })
}

/// What a CLI invocation did.
#[derive(Debug)]
pub struct CliOutput {
    pub args: Vec<String>,
    /// `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics (showing everything) unless the command exited 0.
    pub fn expect_success(self) -> Self {
        assert!(self.success(), "`realm-host {}` failed:\n{self}", self.args.join(" "));
        self
    }

    /// Panics unless the command failed with a non-zero code, an error on
    /// stderr and no panic message.
    pub fn expect_failure(&self) -> &Self {
        assert!(matches!(self.code, Some(c) if c != 0), "`realm-host {}` should fail:\n{self}", self.args.join(" "));
        assert!(!self.stderr.contains("panicked at"), "`realm-host {}` panicked:\n{self}", self.args.join(" "));
        assert!(!self.stderr.trim().is_empty(), "`realm-host {}` failed silently:\n{self}", self.args.join(" "));
        self
    }

    /// Panics unless the command failed with a non-zero code and exactly one
    /// non-empty line of error on stderr (no panic message); returns that line.
    pub fn expect_one_line_error(&self) -> String {
        self.expect_failure();
        let lines: Vec<&str> = self.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "`realm-host {}` should print a one-line error:\n{self}", self.args.join(" "));
        lines[0].to_string()
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `realm-host <args>` with a clean `REALM_*` environment.
pub async fn cli(args: &[&str]) -> CliOutput {
    cli_with_env(args, &[]).await
}

/// Runs `realm-host <args>` with a clean `REALM_*` environment plus `env`.
pub async fn cli_with_env(args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let mut command = tokio::process::Command::new(binary());
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    for var in CLI_ENV {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    let output = tokio::time::timeout(CLI_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("`realm-host {}` did not finish within {CLI_TIMEOUT:?}", args.join(" ")))
        .unwrap_or_else(|e| panic!("cannot run realm-host: {e}"));
    CliOutput {
        args: args.iter().map(|a| a.to_string()).collect(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `realm-host token …`: a JWT for `user` on `realm` with `permissions`.
pub async fn issue_token(secret: &str, user: &str, realm: &str, permissions: &[&str]) -> String {
    let permissions = permissions.join(",");
    let out = cli(&["token", "--user", user, "--realm", realm, "--permissions", &permissions, "--secret", secret])
        .await
        .expect_success();
    let token = out.stdout.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "`realm-host token` should print a JWT, printed {token:?}");
    token
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

// ---------------------------------------------------------------------------
// Databases

/// A database URL and what keeps it alive.
pub struct TestDb {
    url: String,
    _dir: Option<TempDir>,
    /// Drops a database created on an external Postgres server.
    _pg: Option<crate::pg::DropDatabase>,
}

impl TestDb {
    /// A fresh SQLite file in its own temp dir (the server creates the file).
    pub fn sqlite() -> Arc<TestDb> {
        let dir = tempfile::Builder::new().prefix("realm-db-").tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("realm.db").display());
        Arc::new(TestDb { url, _dir: Some(dir), _pg: None })
    }

    /// A fresh Postgres database of its own (see [`crate::pg`]).
    pub async fn postgres_fresh() -> Arc<TestDb> {
        crate::pg::fresh_database().await
    }

    /// A Postgres database URL, with what drops the database when done.
    pub(crate) fn postgres(url: String, drop: Option<crate::pg::DropDatabase>) -> Arc<TestDb> {
        Arc::new(TestDb { url, _dir: None, _pg: drop })
    }

    /// Any database URL the caller manages (e.g. a Postgres database).
    pub fn external(url: impl Into<String>) -> Arc<TestDb> {
        Arc::new(TestDb { url: url.into(), _dir: None, _pg: None })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

/// The storage backend a test runs on: the same behaviour is proven on both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// A fresh database of this backend.
    pub async fn db(self) -> Arc<TestDb> {
        match self {
            Backend::Sqlite => TestDb::sqlite(),
            Backend::Postgres => TestDb::postgres_fresh().await,
        }
    }

    /// A server with the default realms on a fresh database of this backend.
    pub async fn start(self) -> Server {
        self.start_with(ServerOptions::default()).await
    }

    /// A server on a fresh database of this backend.
    pub async fn start_with(self, options: ServerOptions) -> Server {
        Server::start_on(self.db().await, options).await
    }
}

/// Turns `async fn name(backend: Backend)` test bodies into one test per
/// backend: `name::sqlite` and `name::postgres`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread")]
                async fn sqlite() {
                    super::$name($crate::harness::Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread")]
                async fn postgres() {
                    super::$name($crate::harness::Backend::Postgres).await
                }
            }
        )*
    };
}

// ---------------------------------------------------------------------------
// Servers

/// Who may use a realm without a token (`realm create --public`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Public {
    None,
    Read,
    Write,
}

impl Public {
    fn flag(self) -> &'static str {
        match self {
            Public::None => "none",
            Public::Read => "read",
            Public::Write => "write",
        }
    }
}

/// A realm the harness creates before the server starts.
#[derive(Clone, Debug)]
pub struct RealmSpec {
    /// Path below the server root, without slashes, e.g. `test`.
    pub name: String,
    pub public: Public,
    /// `(user, permissions)` pairs given to `realm grant`.
    pub grants: Vec<(String, Vec<String>)>,
}

impl RealmSpec {
    pub fn new(name: &str, public: Public) -> Self {
        RealmSpec { name: name.into(), public, grants: Vec::new() }
    }

    pub fn grant(mut self, user: &str, permissions: &[&str]) -> Self {
        self.grants.push((user.into(), permissions.iter().map(|p| p.to_string()).collect()));
        self
    }
}

/// How to start a server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Realms to create before serving (none for a replica of an existing database).
    pub realms: Vec<RealmSpec>,
    pub secret: String,
    /// Port to listen on; a free one when `None`.
    pub port: Option<u16>,
    /// Extra arguments after `serve …` (e.g. `--guest FILE`).
    pub serve_args: Vec<String>,
}

impl Default for ServerOptions {
    /// `test` (public write), `private` (no public access, alice may read and
    /// write) and `pubread` (public read, bob may read and write).
    fn default() -> Self {
        ServerOptions {
            realms: vec![
                RealmSpec::new("test", Public::Write),
                RealmSpec::new("private", Public::None).grant(ALICE, &["read", "write"]),
                RealmSpec::new("pubread", Public::Read).grant(BOB, &["read", "write"]),
            ],
            secret: SECRET.into(),
            port: None,
            serve_args: Vec::new(),
        }
    }
}

/// Kills and reaps the child process when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `realm-host serve`.
pub struct Server {
    pub port: u16,
    /// `http://127.0.0.1:<port>/`
    pub base: String,
    pub secret: String,
    log_path: PathBuf,
    http: Client,
    /// The extra `serve` arguments; replicas get the same.
    serve_args: Vec<String>,
    // Field order matters: the child dies before its log dir and its
    // database go.
    child: ChildGuard,
    db: Arc<TestDb>,
    _log_dir: TempDir,
}

impl Server {
    /// A server on a fresh SQLite database with the default realms.
    pub async fn start() -> Server {
        Self::start_with(ServerOptions::default()).await
    }

    /// A server on a fresh SQLite database.
    pub async fn start_with(options: ServerOptions) -> Server {
        Self::start_on(TestDb::sqlite(), options).await
    }

    /// Creates `options.realms` in `db` (realm URLs on this server's port),
    /// then serves `db`.
    pub async fn start_on(db: Arc<TestDb>, options: ServerOptions) -> Server {
        let port = options.port.unwrap_or_else(free_port);
        let base = format!("http://127.0.0.1:{port}/");
        for realm in &options.realms {
            let url = format!("{base}{}/", realm.name);
            cli(&["realm", "create", &url, "--public", realm.public.flag(), "--database", db.url()])
                .await
                .expect_success();
            for (user, permissions) in &realm.grants {
                let mut args = vec!["realm", "grant", &url, user];
                args.extend(permissions.iter().map(String::as_str));
                args.extend(["--database", db.url()]);
                cli(&args).await.expect_success();
            }
        }
        let probe = options.realms.first().map(|r| format!("{base}{}/", r.name)).unwrap_or_else(|| base.clone());
        Self::spawn(db, port, &options.secret, &options.serve_args, &probe).await
    }

    /// Another server (replica) on the same database, on its own port, with
    /// the same extra `serve` arguments.
    pub async fn replica(&self) -> Server {
        let args = self.serve_args.clone();
        self.replica_with(&args).await
    }

    /// A replica on the same database with these extra `serve` arguments.
    pub async fn replica_with<S: AsRef<str>>(&self, serve_args: &[S]) -> Server {
        let port = free_port();
        let probe = format!("http://127.0.0.1:{port}/");
        let args: Vec<String> = serve_args.iter().map(|a| a.as_ref().to_string()).collect();
        Self::spawn(self.db.clone(), port, &self.secret, &args, &probe).await
    }

    /// The server process id.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// `kill -9` the server and reap it.
    pub fn kill(&mut self) {
        self.child.0.kill().expect("SIGKILL realm-host");
        self.child.0.wait().expect("reap realm-host");
    }

    /// Asks the server to stop, as an orchestrator does (SIGTERM).
    pub fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.pid()).expect("a pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid; it touches no memory of ours.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM to realm-host: {}", std::io::Error::last_os_error());
    }

    /// Waits at most `within` for the process to exit by itself; its status.
    pub async fn exit_status(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.0.try_wait().expect("poll realm-host") {
                return status;
            }
            assert!(Instant::now() < deadline, "realm-host still runs {within:?} later\n--- server log ---\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(None))
    }

    async fn spawn(db: Arc<TestDb>, port: u16, secret: &str, extra: &[String], probe: &str) -> Server {
        let log_dir = tempfile::Builder::new().prefix("realm-server-").tempdir().expect("temp dir");
        let log_path = log_dir.path().join("server.log");
        let log = File::create(&log_path).expect("create server log");
        let listen = format!("127.0.0.1:{port}");
        let mut command = Command::new(binary());
        command
            .args(["serve", "--listen", &listen, "--database", db.url(), "--secret", secret])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .env("NO_COLOR", "1");
        for var in CLI_ENV {
            command.env_remove(var);
        }
        command.env("REALM_COMPILE_CACHE", compile_cache());
        let child = ChildGuard(command.spawn().unwrap_or_else(|e| panic!("cannot spawn realm-host serve: {e}")));
        let mut server = Server {
            port,
            base: format!("http://127.0.0.1:{port}/"),
            secret: secret.into(),
            log_path,
            http: Client::new(),
            serve_args: extra.to_vec(),
            child,
            db,
            _log_dir: log_dir,
        };
        server.wait_until_ready(probe).await;
        server
    }

    /// Polls `HEAD probe` until the server answers anything at all.
    async fn wait_until_ready(&mut self, probe: &str) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
        loop {
            if client.head(probe).send().await.is_ok() {
                return;
            }
            if let Some(status) = self.child.0.try_wait().ok().flatten() {
                panic!("realm-host serve exited ({status}) before answering\n--- server log ---\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!("realm-host serve did not answer HEAD {probe} within {STARTUP_TIMEOUT:?}\n--- server log ---\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Everything the server printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    pub fn db_url(&self) -> &str {
        self.db.url()
    }

    /// `http://127.0.0.1:<port>/<name>/`
    pub fn realm(&self, name: &str) -> String {
        format!("{}{name}/", self.base)
    }

    /// `http://127.0.0.1:<port>/<path>`
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// An anonymous client.
    pub fn client(&self) -> Client {
        self.http.clone()
    }

    /// The value of a `GET /_metrics` line (summed over its labels).
    pub async fn metric(&self, name: &str) -> f64 {
        let resp = self.client().request(Method::GET, &self.url("_metrics"), "text/plain").fetch().await.expect_status(200);
        let values: Vec<f64> = resp
            .body
            .lines()
            .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
            .filter_map(|line| line.split_whitespace().nth(1)?.parse().ok())
            .collect();
        assert!(!values.is_empty(), "no {name} in /_metrics:\n{resp}");
        values.iter().sum()
    }

    /// A CLI-issued token (signed with this server's secret).
    pub async fn token(&self, user: &str, realm: &str, permissions: &[&str]) -> String {
        issue_token(&self.secret, user, realm, permissions).await
    }

    /// A client presenting a CLI-issued token.
    pub async fn client_as(&self, user: &str, realm: &str, permissions: &[&str]) -> Client {
        self.http.with_token(&self.token(user, realm, permissions).await)
    }

    /// Sends `method path` byte for byte over TCP (no URL normalisation) and
    /// returns the status code and the body text.
    pub async fn raw(&self, method: &str, path: &str, accept: &str, body: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.expect("connect");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: {accept}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        stream.write_all(request.as_bytes()).await.expect("write raw request");
        let mut response = Vec::new();
        tokio::time::timeout(REQUEST_TIMEOUT, stream.read_to_end(&mut response))
            .await
            .expect("raw request timed out")
            .expect("read raw response");
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("{method} {path}: not an HTTP response: {response:?}"));
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- realm-host serve log ({}) ---\n{}\n--- end of log ---", self.base, self.log());
        }
    }
}

// ---------------------------------------------------------------------------
// Requests and responses

/// An HTTP client (no redirects followed) with an optional bearer token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    token: Option<String>,
    /// A `Host` header to send instead of the URL's (a replica behind a
    /// load balancer sees the public host of the realms).
    host: Option<String>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A client with its own connection pool.
    pub fn new() -> Client {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("build reqwest client");
        Client { http, token: None, host: None }
    }

    /// The same client, presenting `Authorization: Bearer <token>`.
    pub fn with_token(&self, token: &str) -> Client {
        Client { http: self.http.clone(), token: Some(token.into()), host: self.host.clone() }
    }

    /// The same client, sending `Host: host` (e.g. `127.0.0.1:4201`).
    pub fn with_host(&self, host: &str) -> Client {
        Client { http: self.http.clone(), token: self.token.clone(), host: Some(host.into()) }
    }

    /// `method url` with `Accept: accept` and the token if any.
    pub fn request(&self, method: Method, url: &str, accept: &str) -> RequestBuilder {
        let mut builder = self.http.request(method, url).header(ACCEPT, accept);
        if let Some(host) = &self.host {
            builder = builder.header(reqwest::header::HOST, host);
        }
        match &self.token {
            Some(token) => builder.header(AUTHORIZATION, format!("Bearer {token}")),
            None => builder,
        }
    }

    /// `request` with a JSON body of the given content type.
    fn with_json(&self, method: Method, url: &str, media: &str, body: &Value) -> RequestBuilder {
        self.request(method, url, media)
            .header(CONTENT_TYPE, media)
            .body(serde_json::to_vec(body).expect("serialise body"))
    }

    pub fn get_card(&self, url: &str) -> RequestBuilder {
        self.request(Method::GET, url, CARD_JSON)
    }

    /// POST create: `dir` is the realm root or a URL ending in `/`.
    pub fn create_card(&self, dir: &str, doc: &Value) -> RequestBuilder {
        self.with_json(Method::POST, dir, CARD_JSON, doc)
    }

    pub fn patch_card(&self, url: &str, doc: &Value) -> RequestBuilder {
        self.with_json(Method::PATCH, url, CARD_JSON, doc)
    }

    pub fn delete_card(&self, url: &str) -> RequestBuilder {
        self.request(Method::DELETE, url, CARD_JSON)
    }

    pub fn get_source(&self, url: &str) -> RequestBuilder {
        self.request(Method::GET, url, CARD_SOURCE)
    }

    pub fn write_source(&self, url: &str, text: impl Into<String>) -> RequestBuilder {
        self.request(Method::POST, url, CARD_SOURCE).body(text.into())
    }

    /// POST of raw bytes: a file written as it is (any media but card JSON
    /// and card source).
    pub fn post_bytes(&self, url: &str, content_type: &str, bytes: impl Into<reqwest::Body>) -> RequestBuilder {
        self.request(Method::POST, url, "*/*").header(CONTENT_TYPE, content_type).body(bytes)
    }

    pub fn delete_source(&self, url: &str) -> RequestBuilder {
        self.request(Method::DELETE, url, CARD_SOURCE)
    }

    /// GET `url` and its body as bytes: status, bytes, headers.
    pub async fn http_get_bytes(&self, url: &str, accept: &str) -> (u16, Vec<u8>, HeaderMap) {
        let response = self.request(Method::GET, url, accept).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap_or_else(|e| panic!("GET {url}: reading body: {e}"));
        (status, bytes.to_vec(), headers)
    }

    pub fn head(&self, url: &str, accept: &str) -> RequestBuilder {
        self.request(Method::HEAD, url, accept)
    }

    /// POST `<realm>_atomic` with `body`.
    pub fn atomic(&self, realm: &str, body: &Value) -> RequestBuilder {
        self.with_json(Method::POST, &format!("{realm}_atomic"), JSON_API, body)
    }

    // Short-hands that also assert success.

    /// POST create; asserts 201 and returns the new card id and the response.
    pub async fn create(&self, dir: &str, doc: &Value) -> (String, Resp) {
        let resp = self.create_card(dir, doc).fetch().await.expect_status(201);
        let id = resp.json()["data"]["id"].as_str().unwrap_or_else(|| panic!("no data.id in {resp}")).to_string();
        (id, resp)
    }

    /// Writes a file verbatim (source POST); asserts 204.
    pub async fn seed(&self, url: &str, text: &str) {
        self.write_source(url, text).fetch().await.expect_status(204);
    }

    /// Reads a file's exact text (source GET); asserts 200.
    pub async fn read(&self, url: &str) -> String {
        self.get_source(url).fetch().await.expect_status(200).body
    }

    /// The status a source GET of `url` gets (200 when it exists, 404 when not).
    pub async fn source_status(&self, url: &str) -> u16 {
        self.get_source(url).fetch().await.status
    }
}

/// Sends a request and collects the whole response.
pub trait Fetch {
    /// Panics when no complete response arrives.
    fn fetch(self) -> impl Future<Output = Resp> + Send;
    /// `Err` (describing the request and the error) when no complete
    /// response arrives, e.g. because the server was killed.
    fn try_fetch(self) -> impl Future<Output = Result<Resp, String>> + Send;
}

impl Fetch for RequestBuilder {
    async fn fetch(self) -> Resp {
        self.try_fetch().await.unwrap_or_else(|e| panic!("{e}"))
    }

    async fn try_fetch(self) -> Result<Resp, String> {
        let (client, request) = self.build_split();
        let request = request.expect("valid request");
        let method = request.method().clone();
        let url = request.url().to_string();
        let response = client.execute(request).await.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.map_err(|e| format!("{method} {url}: reading body: {e}"))?;
        Ok(Resp { method, url, status, headers, body })
    }
}

/// A complete response and the request it answers.
#[derive(Clone, Debug)]
pub struct Resp {
    pub method: Method,
    pub url: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} {} → {}", self.method, self.url, self.status)?;
        for (name, value) in &self.headers {
            writeln!(f, "{name}: {}", value.to_str().unwrap_or("<binary>"))?;
        }
        let body: String = self.body.chars().take(4000).collect();
        write!(f, "\n{body}")
    }
}

impl Resp {
    /// Panics (showing the whole response) unless the status is `status`.
    pub fn expect_status(self, status: u16) -> Resp {
        assert_eq!(self.status, status, "unexpected status for\n{self}");
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}):\n{self}"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("ASCII header"))
    }

    /// Every value of a header (it may be repeated), joined with `, `.
    pub fn header_values(&self, name: &str) -> String {
        let values: Vec<&str> = self.headers.get_all(name).iter().map(|v| v.to_str().expect("ASCII header")).collect();
        values.join(", ")
    }

    /// Whether `vary` (in any of its repetitions) names `Accept`.
    pub fn varies_on_accept(&self) -> bool {
        self.header_values("vary").split(',').any(|v| v.trim().eq_ignore_ascii_case("accept"))
    }

    /// A header that must be present.
    pub fn must_header(&self, name: &str) -> &str {
        self.header(name).unwrap_or_else(|| panic!("no `{name}` header in\n{self}"))
    }

    /// The content type without parameters.
    pub fn media_type(&self) -> &str {
        self.must_header("content-type").split(';').next().unwrap_or_default().trim()
    }

    /// The `etag` header, asserted to be a strong quoted etag.
    pub fn etag(&self) -> String {
        let etag = self.must_header("etag");
        assert!(
            etag.len() >= 2 && etag.starts_with('"') && etag.ends_with('"') && !etag.starts_with("W/"),
            "etag {etag:?} is not a strong quoted etag in\n{self}"
        );
        etag.to_string()
    }

    /// The `location` header resolved against the request URL.
    pub fn location(&self) -> String {
        let location = self.must_header("location");
        url::Url::parse(&self.url).and_then(|u| u.join(location)).map(String::from).unwrap_or_else(|e| {
            panic!("bad location {location:?} ({e}) in\n{self}")
        })
    }

    /// Asserts a card-route error (`application/json`,
    /// `{"errors":[{"status":N,"title":…,"message":…}]}`) and returns the first error.
    pub fn card_error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected status for\n{self}");
        assert_eq!(self.media_type(), PLAIN_JSON, "card errors are application/json:\n{self}");
        let body = self.json();
        let error = body["errors"][0].clone();
        assert_eq!(error["status"], json!(status), "errors[0].status in\n{self}");
        assert!(error["title"].is_string(), "errors[0].title is a string in\n{self}");
        assert!(error["message"].is_string(), "errors[0].message is a string in\n{self}");
        error
    }

    /// Asserts an `/_atomic` error response (`application/vnd.api+json`,
    /// every error with `status`, `title`, `detail`) and returns the errors.
    pub fn atomic_errors(&self, status: u16) -> Vec<Value> {
        assert_eq!(self.status, status, "unexpected status for\n{self}");
        assert_eq!(self.media_type(), JSON_API, "/_atomic errors are application/vnd.api+json:\n{self}");
        let errors = self.json()["errors"].as_array().cloned().unwrap_or_else(|| panic!("no errors array in\n{self}"));
        assert!(!errors.is_empty(), "empty errors array in\n{self}");
        for error in &errors {
            assert!(error["status"].is_u64(), "error without numeric status in\n{self}");
            assert!(error["title"].is_string(), "error without title in\n{self}");
            assert!(error["detail"].is_string(), "error without detail in\n{self}");
        }
        errors
    }

    /// The `status` of every error in the body, sorted.
    pub fn error_statuses(&self) -> Vec<u64> {
        let mut statuses: Vec<u64> = self.json()["errors"]
            .as_array()
            .map(|errors| errors.iter().filter_map(|e| e["status"].as_u64()).collect())
            .unwrap_or_default();
        statuses.sort_unstable();
        statuses
    }
}

// ---------------------------------------------------------------------------
// Documents

/// `{"data":{"type":"card",["attributes"],["relationships"],"meta":{"adoptsFrom":{module,name}}}}`
/// (keys in that order; `None` parts are left out).
pub fn card_doc(module: &str, name: &str, attributes: Option<Value>, relationships: Option<Value>) -> Value {
    json!({ "data": card_resource(module, name, attributes, relationships) })
}

/// A card resource (the `data` of [`card_doc`]).
pub fn card_resource(module: &str, name: &str, attributes: Option<Value>, relationships: Option<Value>) -> Value {
    let mut data = serde_json::Map::new();
    data.insert("type".into(), json!("card"));
    if let Some(attributes) = attributes {
        data.insert("attributes".into(), attributes);
    }
    if let Some(relationships) = relationships {
        data.insert("relationships".into(), relationships);
    }
    data.insert("meta".into(), json!({ "adoptsFrom": { "module": module, "name": name } }));
    Value::Object(data)
}

/// The exact text the spec stores for a document: 2-space pretty JSON, no
/// trailing newline (same as `JSON.stringify(doc, null, 2)` for our inputs).
pub fn file_text(doc: &Value) -> String {
    serde_json::to_string_pretty(doc).expect("serialise")
}

/// `{"links":{"self":target}}`
pub fn link(target: &str) -> Value {
    json!({ "links": { "self": target } })
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// Asserts the card document of `id` in `realm` (`data.type/id/links.self`,
/// `meta.realmURL/lastModified/resourceCreatedAt`) and returns its `data`.
pub fn assert_card_document(resp: &Resp, id: &str, realm: &str) -> Value {
    assert_eq!(resp.media_type(), CARD_JSON, "card documents are {CARD_JSON}:\n{resp}");
    let data = resp.json()["data"].clone();
    assert_eq!(data["type"], json!("card"), "data.type in\n{resp}");
    assert_eq!(data["id"], json!(id), "data.id in\n{resp}");
    assert_eq!(data["links"]["self"], json!(id), "data.links.self in\n{resp}");
    assert_eq!(data["meta"]["realmURL"], json!(realm), "data.meta.realmURL in\n{resp}");
    for key in ["lastModified", "resourceCreatedAt"] {
        let secs = data["meta"][key].as_u64().unwrap_or_else(|| panic!("data.meta.{key} is not unix seconds in\n{resp}"));
        assert!(secs > 1_600_000_000 && secs <= now_unix() + 5, "data.meta.{key}={secs} is not a plausible unix time in\n{resp}");
    }
    data
}

/// A `Person` card (module `<realm>person`) with `attributes`, for POST create.
pub fn person_doc(realm: &str, attributes: Value) -> Value {
    card_doc(&format!("{realm}person"), "Person", Some(attributes), None)
}
