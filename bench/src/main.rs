//! `realm-bench`: the benchmark harness of the realm server. `bench/run`
//! drives it; each subcommand measures one thing and appends JSON lines to
//! a results file, and `report` turns that file into RESULTS.md.
//!
//! Nothing here runs under `cargo test` except fast unit tests.

mod cards;
mod cpu;
mod guest;
mod load;
mod pgbench;
mod record;
mod report;
mod search;
mod sqlite_direct;
mod stats;

use clap::{Parser, Subcommand};

// The server's allocator (host/src/main.rs), so the guest figures (native
// and through wasmtime) are measured as the server would run them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "realm-bench", about = "Benchmarks of realm-host (run them all with bench/run)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Closed-loop PATCH load against realm-host replicas.
    Load(load::LoadArgs),
    /// Guest logic natively vs through wasmtime (GuestHarness).
    Guest(guest::GuestArgs),
    /// The PATCH transaction directly with sqlx on SQLite.
    SqliteDirect(sqlite_direct::DirectArgs),
    /// Run pgbench and record its runs.
    Pgbench(pgbench::PgbenchArgs),
    /// Write RESULTS.md from a results file.
    Report(report::ReportArgs),
    /// The `_search` benchmark (bench/search): seed, time, explain; write SEARCH.md.
    Search(search::SearchArgs),
    /// Print a free TCP port on 127.0.0.1.
    FreePort,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Load(args) => multi_thread().and_then(|rt| rt.block_on(load::run(args))),
        Command::SqliteDirect(args) => multi_thread().and_then(|rt| rt.block_on(sqlite_direct::run(args))),
        Command::Guest(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(guest::run(args))),
        Command::Pgbench(args) => pgbench::run(args),
        Command::Report(args) => report::run(args),
        Command::Search(args) => multi_thread().and_then(|rt| rt.block_on(search::run(args))),
        Command::FreePort => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| println!("{}", a.port()))
            .map_err(|e| e.to_string()),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn multi_thread() -> Result<tokio::runtime::Runtime, String> {
    // Named so a system-wide profile tells the load generator from realm-host.
    tokio::runtime::Builder::new_multi_thread().thread_name("realm-bench").enable_all().build().map_err(|e| e.to_string())
}
