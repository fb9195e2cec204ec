//! Throw-away PostgreSQL for the tests.
//!
//! * Without `DATABASE_URL`, one cluster per test-binary run ([`shared`]):
//!   `initdb` into a temp dir with the binaries of `/usr/lib/postgresql/*/bin`
//!   (the newest version; else `initdb`/`pg_ctl` on `PATH`), run as the
//!   unprivileged `postgres` user when the tests run as root, `-A trust`, a
//!   free port on 127.0.0.1, the unix socket inside the temp dir,
//!   `max_connections=200`; started with `pg_ctl -w start`. It is stopped
//!   (`pg_ctl stop -m immediate`) and its dir removed by an `atexit` handler
//!   when the test binary exits, and by a detached watchdog
//!   (`tail --pid=<test pid>`) if the test binary dies without running it.
//!   No process it starts keeps the test's stdout/stderr open.
//! * With `DATABASE_URL=postgres://…`, databases are created on that server
//!   instead (and dropped again when the test is done).
//! * [`fresh_database`] gives every test its own database, so Postgres tests
//!   run in parallel. A test that needs a cluster of its own (one it may
//!   restart) calls [`PgCluster::start`].
//!
//! Missing PostgreSQL binaries are a failure ("run ./dev setup"), never a skip.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, Row};

use crate::harness::{free_port, TestDb};

/// How long `pg_ctl` may wait for the server to start or stop.
const PG_CTL_WAIT_SECS: &str = "60";

// ---------------------------------------------------------------------------
// Binaries

/// The directory holding `initdb`, `pg_ctl` and `postgres`.
fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
                let bin = entry.path().join("bin");
                (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return bin;
        }
        let on_path = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file());
        on_path.unwrap_or_else(|| {
            panic!(
                "PostgreSQL binaries not found (looked for initdb and pg_ctl in /usr/lib/postgresql/*/bin and on PATH): \
                 run ./dev setup (or set DATABASE_URL to a server the tests may create databases on)"
            )
        })
    })
    .clone()
}

fn running_as_root() -> bool {
    extern "C" {
        fn geteuid() -> u32;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() == 0 }
}

/// `(uid, gid)` of the `postgres` user (Debian's package creates it).
fn postgres_user() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, "postgres"]).stderr(Stdio::null()).output();
        let out = out.unwrap_or_else(|e| panic!("cannot run `id {flag} postgres`: {e}"));
        assert!(out.status.success(), "running as root but there is no `postgres` user: run ./dev setup");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("numeric id")
    };
    (id("-u"), id("-g"))
}

/// A PostgreSQL program from [`bin_dir`], run as `postgres` when we are root
/// (initdb and pg_ctl refuse to run as root). Never inherits our stdio.
fn pg_command(program: &str, cwd: &Path) -> Command {
    let exe = bin_dir().join(program);
    let mut command = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    command.current_dir(cwd).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    for var in ["PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGDATABASE", "PGOPTIONS"] {
        command.env_remove(var);
    }
    command
}

/// Runs `command` with its output in `out_file` (a file, never a pipe: the
/// postmaster must not hold the test's pipes open); panics with that output
/// and `extra_log` when it fails.
fn run(mut command: Command, what: &str, out_file: &Path, extra_log: Option<&Path>) {
    let out = std::fs::File::create(out_file).expect("create pg output file");
    command.stdout(out.try_clone().expect("clone handle")).stderr(out);
    let status = command.status().unwrap_or_else(|e| panic!("cannot run {what}: {e} (run ./dev setup)"));
    if !status.success() {
        let output = std::fs::read_to_string(out_file).unwrap_or_default();
        let log = extra_log.map(|p| std::fs::read_to_string(p).unwrap_or_default()).unwrap_or_default();
        panic!("{what} failed ({status}):\n{output}\n--- server log ---\n{log}");
    }
}

// ---------------------------------------------------------------------------
// Clusters

/// A PostgreSQL cluster in a temp dir; stopped and removed on drop.
pub struct PgCluster {
    /// The temp dir: `data/`, the socket, the logs.
    dir: PathBuf,
    pub port: u16,
    stopped: AtomicBool,
    removed: AtomicBool,
}

impl PgCluster {
    /// initdb + `pg_ctl -w start` on a free port (blocking; a few seconds).
    pub fn start() -> PgCluster {
        bin_dir(); // fail early and clearly when PostgreSQL is missing
        let dir = tempfile::Builder::new().prefix("realm-pg-").tempdir().expect("temp dir").keep();
        if running_as_root() {
            let (uid, gid) = postgres_user();
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the cluster dir to postgres");
        }
        let data = dir.join("data");
        let mut initdb = pg_command("initdb", &dir);
        initdb.arg("-D").arg(&data).args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]);
        run(initdb, "initdb", &dir.join("initdb.out"), None);

        // Settings in postgresql.conf so that `pg_ctl restart` keeps them.
        let mut last_error = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let settings = format!(
                "\n# realm-tests\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
                 max_connections = 200\nshared_buffers = 32MB\nlog_min_messages = warning\n",
                dir.display()
            );
            let conf = data.join("postgresql.auto.conf");
            std::fs::write(&conf, settings).expect("write postgresql.auto.conf");
            let cluster = PgCluster { dir: dir.clone(), port, stopped: AtomicBool::new(true), removed: AtomicBool::new(false) };
            match cluster.try_pg_ctl(&["start"]) {
                Ok(()) => {
                    cluster.stopped.store(false, Ordering::SeqCst);
                    cluster.spawn_watchdog();
                    return cluster;
                }
                Err(e) => {
                    last_error = e;
                    // The port may have been taken meanwhile: try another one.
                    cluster.removed.store(true, Ordering::SeqCst); // keep the dir for the next attempt
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("could not start PostgreSQL:\n{last_error}");
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// `pg_ctl -D data -l server.log -w -t 60 <args>`.
    fn try_pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let mut command = pg_command("pg_ctl", &self.dir);
        command.arg("-D").arg(self.data()).arg("-l").arg(self.log()).args(["-w", "-t", PG_CTL_WAIT_SECS]).args(args);
        let out_file = self.dir.join("pg_ctl.out");
        let out = std::fs::File::create(&out_file).map_err(|e| e.to_string())?;
        if running_as_root() {
            let (uid, gid) = postgres_user();
            let _ = std::os::unix::fs::chown(&out_file, Some(uid), Some(gid));
        }
        command.stdout(out.try_clone().map_err(|e| e.to_string())?).stderr(out);
        let status = command.status().map_err(|e| format!("cannot run pg_ctl: {e} (run ./dev setup)"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl {} failed ({status}):\n{}\n--- server log ---\n{}",
                args.join(" "),
                std::fs::read_to_string(&out_file).unwrap_or_default(),
                std::fs::read_to_string(self.log()).unwrap_or_default()
            ))
        }
    }

    fn pg_ctl(&self, args: &[&str]) {
        if let Err(e) = self.try_pg_ctl(args) {
            panic!("{e}");
        }
    }

    /// Stops the server and leaves every backend dead when it returns
    /// (blocking). `mode`: `fast` or `immediate`.
    pub fn stop(&self, mode: &str) {
        self.pg_ctl(&["stop", "-m", mode]);
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Starts a stopped server again on the same port (blocking).
    pub fn start_again(&self) {
        self.pg_ctl(&["start"]);
        self.stopped.store(false, Ordering::SeqCst);
    }

    /// `pg_ctl restart -m fast` (blocking).
    pub fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "fast"]);
    }

    /// The server's log so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops (immediately) and removes everything; idempotent.
    fn shutdown(&self) {
        if !self.stopped.swap(true, Ordering::SeqCst) {
            let _ = self.try_pg_ctl(&["stop", "-m", "immediate"]);
        }
        if !self.removed.swap(true, Ordering::SeqCst) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A detached process that stops the cluster and removes its dir once
    /// this test binary is gone, however it ended (SIGKILL, abort…).
    fn spawn_watchdog(&self) {
        let pg_ctl = bin_dir().join("pg_ctl");
        let as_postgres = if running_as_root() { "runuser -u postgres -- " } else { "" };
        let script = format!(
            "tail --pid={pid} -f /dev/null 2>/dev/null || while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             if [ -d '{data}' ]; then {as_postgres}'{pg_ctl}' -D '{data}' stop -m immediate -w -t 30; rm -rf '{dir}'; fi",
            pid = std::process::id(),
            data = self.data().display(),
            pg_ctl = pg_ctl.display(),
            dir = self.dir.display(),
        );
        let mut command = Command::new("setsid");
        command.args(["sh", "-c", &script]).current_dir("/").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // Best effort: without setsid, the atexit handler still cleans up.
        if command.spawn().is_err() {
            let mut fallback = Command::new("sh");
            fallback.args(["-c", &script]).current_dir("/").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            let _ = fallback.spawn();
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log: String = self.server_log().lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            eprintln!("--- postgres log (port {}, last lines) ---\n{log}\n--- end of postgres log ---", self.port);
        }
        self.shutdown();
    }
}

// ---------------------------------------------------------------------------
// The server every test shares

/// Where test databases are created.
enum Shared {
    /// Our own cluster (stopped at exit).
    Own(PgCluster),
    /// `DATABASE_URL`: an admin URL on a server someone else runs.
    External(url::Url),
}

static SHARED: OnceLock<Shared> = OnceLock::new();

extern "C" fn stop_shared_cluster() {
    if let Some(Shared::Own(cluster)) = SHARED.get() {
        cluster.shutdown();
    }
}

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => {
            let url = url::Url::parse(url.trim()).unwrap_or_else(|e| panic!("DATABASE_URL={url:?} is not a URL: {e}"));
            assert!(
                matches!(url.scheme(), "postgres" | "postgresql"),
                "DATABASE_URL must be a postgres:// URL, is {url}"
            );
            Shared::External(url)
        }
        _ => {
            let cluster = PgCluster::start();
            extern "C" {
                fn atexit(callback: extern "C" fn()) -> i32;
            }
            // SAFETY: registering a plain function; it only touches a static.
            unsafe {
                atexit(stop_shared_cluster);
            }
            Shared::Own(cluster)
        }
    })
}

/// Admin URL (the `postgres` database) of `cluster_or_shared`.
fn admin_url(cluster: Option<&PgCluster>) -> String {
    match cluster {
        Some(cluster) => cluster.url("postgres"),
        None => match shared() {
            Shared::Own(cluster) => cluster.url("postgres"),
            Shared::External(url) => url.to_string(),
        },
    }
}

/// The URL of database `name` on the server of `admin`.
fn database_url(admin: &str, name: &str) -> String {
    let mut url = url::Url::parse(admin).expect("admin URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// Drops a database created on an external server when the test is done.
pub struct DropDatabase {
    admin: String,
    name: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Its own runtime on its own thread: we may be inside a test's runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async move {
                let mut conn = PgConnection::connect(&admin).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await.ok()?;
                Some(())
            })
        })
        .join();
    }
}

static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// A new, empty database of its own for one test: on the shared server,
/// or on `cluster` when given.
pub async fn fresh_database_on(cluster: Option<&PgCluster>) -> Arc<TestDb> {
    let n = DATABASES.fetch_add(1, Ordering::SeqCst);
    let external = cluster.is_none() && matches!(shared(), Shared::External(_));
    let name = if external { format!("t_{}_{}_{n}", std::process::id(), crate::harness::now_unix()) } else { format!("t_{n}") };
    let admin = admin_url(cluster);
    let mut conn = connect(&admin).await;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {admin}: {e}"));
    let _ = conn.close().await;
    let url = database_url(&admin, &name);
    let guard = external.then(|| DropDatabase { admin, name });
    TestDb::postgres(url, guard)
}

/// A new database on the shared server.
pub async fn fresh_database() -> Arc<TestDb> {
    // Starting the cluster blocks for a few seconds: not on a runtime worker.
    if let Err(e) = tokio::task::spawn_blocking(shared).await {
        std::panic::resume_unwind(e.into_panic());
    }
    fresh_database_on(None).await
}

/// A direct session (retries for a while: the server may be starting).
pub async fn connect(url: &str) -> PgConnection {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match PgConnection::connect(url).await {
            Ok(conn) => return conn,
            Err(e) if Instant::now() > deadline => panic!("cannot connect to {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

// ---------------------------------------------------------------------------
// Lock keys and a session to inspect and hold locks

/// Spec §5: the first 8 bytes of SHA-256 of the canonical realm URL, as a
/// big-endian signed i64.
pub fn realm_lock_key(canonical_realm_url: &str) -> i64 {
    let digest = Sha256::digest(canonical_realm_url.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// A lock held or awaited by a backend, as `pg_locks` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockRow {
    pub pid: i32,
    pub granted: bool,
}

/// The test's own session on a test database.
pub struct Session {
    pub conn: PgConnection,
    pub pid: i32,
}

impl Session {
    pub async fn open(url: &str) -> Session {
        let mut conn = connect(url).await;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut conn).await.expect("pg_backend_pid");
        Session { conn, pid }
    }

    pub async fn execute(&mut self, sql: &str) {
        sqlx::query(sql).execute(&mut self.conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// `pg_advisory_lock(key)` (session level).
    pub async fn advisory_lock(&mut self, key: i64) {
        sqlx::query("SELECT pg_advisory_lock($1)").bind(key).execute(&mut self.conn).await.expect("pg_advisory_lock");
    }

    /// `pg_advisory_unlock(key)`; asserts it was held.
    pub async fn advisory_unlock(&mut self, key: i64) {
        let held: bool =
            sqlx::query_scalar("SELECT pg_advisory_unlock($1)").bind(key).fetch_one(&mut self.conn).await.expect("pg_advisory_unlock");
        assert!(held, "the test session did not hold advisory lock {key}");
    }

    /// Whether nobody holds `key` right now (takes and releases it).
    pub async fn advisory_is_free(&mut self, key: i64) -> bool {
        let got: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut self.conn).await.expect("pg_try_advisory_lock");
        if got {
            self.advisory_unlock(key).await;
        }
        got
    }

    /// Every other backend's hold on / wait for advisory lock `key` in this database.
    pub async fn advisory_locks(&mut self, key: i64) -> Vec<LockRow> {
        let sql = "SELECT pid, granted FROM pg_locks
                   WHERE locktype = 'advisory'
                     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                     AND classid::int8 = (($1::int8 >> 32) & 4294967295)
                     AND objid::int8 = ($1::int8 & 4294967295)
                     AND objsubid = 1
                     AND pid <> pg_backend_pid()
                   ORDER BY pid";
        let rows = sqlx::query(sql).bind(key).fetch_all(&mut self.conn).await.expect("query pg_locks");
        rows.iter().map(|r| LockRow { pid: r.get(0), granted: r.get(1) }).collect()
    }

    /// Pids of other backends waiting for advisory lock `key`.
    pub async fn advisory_waiters(&mut self, key: i64) -> Vec<i32> {
        self.advisory_locks(key).await.into_iter().filter(|l| !l.granted).map(|l| l.pid).collect()
    }

    /// Pids of other backends holding advisory lock `key`.
    pub async fn advisory_holders(&mut self, key: i64) -> Vec<i32> {
        self.advisory_locks(key).await.into_iter().filter(|l| l.granted).map(|l| l.pid).collect()
    }

    /// The backend holding advisory lock `key` that waits for another
    /// transaction (e.g. a flush waiting for a row the test locked).
    pub async fn holder_waiting_for_a_transaction(&mut self, key: i64) -> Option<i32> {
        for pid in self.advisory_holders(key).await {
            let waits: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype = 'transactionid' AND NOT granted")
                .bind(pid)
                .fetch_one(&mut self.conn)
                .await
                .expect("pg_locks");
            if waits > 0 {
                return Some(pid);
            }
        }
        None
    }

    /// Pids of other backends waiting for a lock on table `table`.
    pub async fn table_lock_waiters(&mut self, table: &str) -> Vec<i32> {
        let sql = "SELECT pid FROM pg_locks
                   WHERE locktype = 'relation' AND NOT granted AND relation = $1::regclass
                     AND pid <> pg_backend_pid()
                   ORDER BY pid";
        sqlx::query_scalar(sql).bind(table).fetch_all(&mut self.conn).await.expect("query pg_locks")
    }

    /// Whether backend `pid` is still alive.
    pub async fn backend_alive(&mut self, pid: i32) -> bool {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(&mut self.conn)
            .await
            .expect("query pg_stat_activity");
        n > 0
    }

    /// The stored text of `path` in `realm`, read directly from `files`.
    pub async fn file_content(&mut self, realm: &str, path: &str) -> Option<String> {
        sqlx::query_scalar("SELECT content FROM files WHERE realm_url = $1 AND path = $2")
            .bind(realm)
            .bind(path)
            .fetch_optional(&mut self.conn)
            .await
            .expect("query files")
    }
}

/// `wait_until!(what, timeout, check)`: evaluates `check` (an expression
/// that may `.await`, giving an `Option`) every 20 ms until it is `Some`,
/// and yields the value; panics with `what` after `timeout`. It waits on
/// state (the database's locks, the clients' progress), not on time.
macro_rules! wait_until {
    ($what:expr, $timeout:expr, $check:expr) => {{
        let timeout: std::time::Duration = $timeout;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(value) = $check {
                break value;
            }
            assert!(std::time::Instant::now() < deadline, "timed out after {:?} waiting until {}", timeout, $what);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

#[test]
fn postgres_lock_key_matches_the_spec_vectors() {
    assert_eq!(realm_lock_key("http://127.0.0.1:4444/test/"), -2355824123773129196);
    assert_eq!(realm_lock_key("http://localhost:4201/a/"), -1024908116193556988);
    assert_eq!(realm_lock_key("http://localhost:4201/b/"), 4916872004007584858);
}
