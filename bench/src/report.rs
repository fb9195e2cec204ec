//! `realm-bench report`: turns the results file of one `bench/run` into
//! RESULTS.md — medians of the runs of each figure, ratios to the
//! baselines measured in the same invocation, the targets, and what the
//! CPU accounting says about any target that is missed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;

use crate::record::Record;
use crate::stats::median;

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[arg(long)]
    pub results: PathBuf,
    /// JSON object: date, machine, command, parameters (written by bench/run).
    #[arg(long)]
    pub meta: PathBuf,
    /// Output of the profiling step, included verbatim when present.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Hand-written analysis, included verbatim when present.
    #[arg(long)]
    pub analysis: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
}

/// The runs of one figure.
struct Figure<'a>(Vec<&'a Record>);

impl Figure<'_> {
    fn med(&self, f: impl Fn(&Record) -> Option<f64>) -> f64 {
        median(&self.0.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
    }
    fn tps(&self) -> f64 {
        self.med(|r| Some(r.tps))
    }
    fn p50(&self) -> f64 {
        self.med(|r| Some(r.p50_ms))
    }
    fn p99(&self) -> f64 {
        self.med(|r| Some(r.p99_ms))
    }
    fn errors(&self) -> u64 {
        self.0.iter().map(|r| r.errors).sum()
    }
    fn ok(&self) -> u64 {
        self.0.iter().map(|r| r.ok).sum()
    }
    fn runs(&self) -> usize {
        self.0.len()
    }
    /// Mean requests per commit over all runs.
    fn batch(&self) -> f64 {
        let b: u64 = self.0.iter().filter_map(|r| r.batches).sum();
        let m: u64 = self.0.iter().filter_map(|r| r.batch_members).sum();
        if b == 0 {
            f64::NAN
        } else {
            m as f64 / b as f64
        }
    }
    /// CPU microseconds per successful request of one component.
    fn cpu_us(&self, part: impl Fn(&crate::cpu::CpuUse) -> f64) -> f64 {
        self.med(|r| r.cpu.as_ref().filter(|_| r.ok > 0).map(|c| part(c) * 1e6 / r.ok as f64))
    }
    /// Realm batches per commit (above 1 when realms share commits).
    fn realm_batches(&self) -> f64 {
        let b: u64 = self.0.iter().filter_map(|r| r.batches).sum();
        let rb: u64 = self.0.iter().filter_map(|r| r.realm_batches).sum();
        if b == 0 || rb == 0 {
            f64::NAN
        } else {
            rb as f64 / b as f64
        }
    }
    /// Mean length of a writer's turn, µs.
    fn turn_us(&self) -> f64 {
        self.med(|r| Some(r.turn_s? * 1e6 / r.turns? as f64))
    }
    /// Mean length of a commit (flush and COMMIT), ms.
    fn commit_ms(&self) -> f64 {
        self.med(|r| Some(r.commit_s? * 1e3 / r.batches? as f64))
    }
    /// Turn and commit time as shares of the wall time.
    fn turn_share(&self) -> f64 {
        self.med(|r| Some(r.turn_s? / r.seconds))
    }
    fn commit_share(&self) -> f64 {
        self.med(|r| Some(r.commit_s? / r.seconds))
    }
    fn busy(&self) -> f64 {
        self.med(|r| r.cpu.as_ref().map(|c| c.machine_busy_pct))
    }
    /// CPU of everything not accounted (other work on the machine, the
    /// kernel's own threads), as a share of the machine.
    fn other(&self) -> f64 {
        self.med(|r| r.cpu.as_ref().filter(|_| r.seconds > 0.0).map(|c| 100.0 * c.other_s / (r.seconds * c.cores as f64)))
    }
    fn ns(&self) -> f64 {
        self.med(|r| r.ns_per_call)
    }
    fn error_kinds(&self) -> String {
        let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
        for r in &self.0 {
            for (k, n) in &r.error_kinds {
                *kinds.entry(k).or_default() += n;
            }
        }
        kinds.iter().map(|(k, n)| format!("{k}×{n}")).collect::<Vec<_>>().join(", ")
    }
}

fn f1(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        "–".into()
    }
}
fn f2(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "–".into()
    }
}
fn f0(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.0}")
    } else {
        "–".into()
    }
}

/// A target: the measured ratio or value against the goal.
struct Target {
    name: String,
    measured: String,
    value: f64,
    goal: f64,
    /// true: value must be ≥ goal; false: ≤ goal.
    at_least: bool,
    unit: &'static str,
    why: Vec<String>,
}

impl Target {
    fn met(&self) -> Option<bool> {
        if !self.value.is_finite() {
            return None;
        }
        Some(if self.at_least { self.value >= self.goal } else { self.value <= self.goal })
    }
    fn verdict(&self) -> String {
        match self.met() {
            None => "not measured".into(),
            Some(true) => "**met**".into(),
            Some(false) => {
                let by = if self.at_least {
                    format!("{:.0}% short", 100.0 * (1.0 - self.value / self.goal))
                } else {
                    format!("{:.0}% over", 100.0 * (self.value / self.goal - 1.0))
                };
                format!("**missed** ({by})")
            }
        }
    }
}

pub fn run(args: ReportArgs) -> Result<(), String> {
    let records = Record::read_all(&args.results)?;
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&args.meta).map_err(|e| format!("cannot read {}: {e}", args.meta.display()))?,
    )
    .map_err(|e| format!("{}: {e}", args.meta.display()))?;
    let mut by_key: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in &records {
        by_key.entry(&r.key).or_default().push(r);
    }
    let fig = |key: &str| by_key.get(key).map(|v| Figure(v.clone()));
    let m = |k: &str| meta.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();

    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# realm-host benchmark results\n");
    let _ = writeln!(w, "Generated by `bench/run` — do not edit by hand; re-run it instead (analysis notes live in `bench/ANALYSIS.md`).\n");
    let _ = writeln!(w, "| | |\n|---|---|");
    for (label, key) in [
        ("date", "date"),
        ("machine", "machine"),
        ("CPU", "cpu"),
        ("memory", "memory"),
        ("kernel", "kernel"),
        ("Postgres", "postgres"),
        ("rustc", "rustc"),
        ("source", "tree"),
        ("command", "command"),
        ("parameters", "parameters"),
        ("wall time", "wall"),
    ] {
        let _ = writeln!(w, "| {label} | {} |", m(key).replace('|', "\\|"));
    }
    let _ = writeln!(
        w,
        "\nEvery figure is the **median of the runs** of that configuration (each metric medianed on its own); every \
         ratio divides two medians measured in this same invocation, and the PATCH baselines (pgbench) and \
         realm-host's Postgres figures are measured in interleaved rounds (one run of each per round), so a drift \
         of the machine's speed during the invocation falls on both sides of a ratio. Latencies are per request (client side, \
         closed loop). CPU columns come from /proc: µs of CPU per successful request spent in realm-host, in \
         Postgres (postmaster and all its children) and in the load generator (pgbench or `realm-bench load`); \
         \"busy\" is the share of all {} cores busy during the run. The load generator runs on the same machine.\n",
        m("nproc")
    );

    let worst_other = by_key
        .iter()
        .filter(|(k, _)| !k.starts_with("guest"))
        .map(|(k, v)| (k.to_string(), Figure(v.clone()).other()))
        .filter(|(_, o)| o.is_finite())
        .max_by(|a, b| a.1.total_cmp(&b.1));
    match worst_other {
        Some((key, o)) if o > 10.0 => {
            let _ = writeln!(
                w,
                "> **Interference:** other work on this machine (not realm-host, Postgres or the load generator) used up to {}% of its CPU during a figure (`{key}`; see the \"other %\" columns). Figures with a high \"other %\" understate what this machine can do; compare ratios only between figures with similar interference.\n",
                f0(o)
            );
        }
        Some((_, o)) => {
            let _ = writeln!(w, "Other work on the machine used at most {}% of its CPU during any figure.\n", f0(o));
        }
        None => {}
    }

    // ---- targets
    let mut targets = Vec::new();
    let pg = |c: usize, r: usize| fig(&format!("pgbench c{c} realms{r}"));
    let pg_files = |c: usize, r: usize| fig(&format!("pgbench-files c{c} realms{r}"));
    let host = |c: usize, r: usize, rep: usize| fig(&format!("host c{c} realms{r} rep{rep}"));
    let round_trip_us = fig("pgbench roundtrip c1").map(|f| 1e3 * f.med(|r| Some(r.mean_ms))).unwrap_or(f64::NAN);
    let host_diag = |h: &Figure, base: Option<&Figure>| -> Vec<String> {
        let mut why = vec![format!(
            "realm-host: {} req/s, {} requests and {} realm batches per commit, CPU per request: host {} µs, Postgres {} µs, load generator {} µs; machine {}% busy.",
            f0(h.tps()), f1(h.batch()), f1(h.realm_batches()), f0(h.cpu_us(|c| c.server_s)), f0(h.cpu_us(|c| c.pg_s)), f0(h.cpu_us(|c| c.self_s)), f0(h.busy())
        )];
        why.push(format!(
            "Write path: a writer holds its realm's turn {} µs on average (its guest work and reads, against the overlay); a commit (flush and COMMIT) takes {} ms; turns fill {}% and commits {}% of the wall time (over 100%: several at once).",
            f0(h.turn_us()), f2(h.commit_ms()), f0(100.0 * h.turn_share()), f0(100.0 * h.commit_share())
        ));
        if let Some(b) = base {
            why.push(format!(
                "pgbench: {} tx/s, CPU per transaction: Postgres {} µs, pgbench {} µs; machine {}% busy.",
                f0(b.tps()), f0(b.cpu_us(|c| c.pg_s)), f0(b.cpu_us(|c| c.self_s)), f0(b.busy())
            ));
            let total_h = h.cpu_us(|c| c.server_s + c.pg_s + c.self_s);
            let total_b = b.cpu_us(|c| c.pg_s + c.self_s);
            if total_h.is_finite() && total_b.is_finite() {
                why.push(format!(
                    "CPU in all per request (host + Postgres + client): {} µs against {} µs per pgbench transaction; on {} cores that alone bounds realm-host at {}× pgbench when both saturate the machine.",
                    f0(total_h), f0(total_b), m("nproc"), f2(total_b / total_h)
                ));
            }
            if h.busy() < 85.0 {
                why.push(format!(
                    "The machine is only {}% busy, so this figure is bound by waiting, not CPU: one round trip to Postgres (`SELECT 1`, one client) takes {} µs here.",
                    f0(h.busy()), f0(round_trip_us)
                ));
            }
        }
        why
    };
    for (r, goal, name) in [(1, 3.0, "hot realm, 32 clients"), (64, 1.0, "64 realms, 32 clients")] {
        for rep in [1, 2] {
            let (Some(h), Some(b)) = (host(32, r, rep), pg(32, r)) else { continue };
            let old = pg_files(32, r).map(|o| format!("; {}× the files-and-index-only SQL of 2026-11", f2(h.tps() / o.tps()))).unwrap_or_default();
            targets.push(Target {
                name: format!("{name}, {rep} replica{}: PATCH TPS / pgbench", if rep > 1 { "s" } else { "" }),
                measured: format!("{} / {} TPS{old}", f0(h.tps()), f0(b.tps())),
                value: h.tps() / b.tps(),
                goal,
                at_least: true,
                unit: "×",
                why: host_diag(&h, Some(&b)),
            });
        }
    }
    if let Some(h) = host(32, 1, 1) {
        let mut why = host_diag(&h, pg(32, 1).as_ref());
        why.truncate(2);
        why.push("Where the host's time goes: see the profile below (the guest's compiled code, its instantiation and teardown, malloc, HTTP and the kernel's loopback TCP; bench/ANALYSIS.md splits it).".into());
        targets.push(Target {
            name: "host CPU per hot-realm PATCH (32 clients, 1 replica)".into(),
            measured: format!("{} µs", f0(h.cpu_us(|c| c.server_s))),
            value: h.cpu_us(|c| c.server_s),
            goal: 150.0,
            at_least: false,
            unit: "µs",
            why,
        });
    }
    let inst = instantiate_ns(&fig);
    if inst.is_finite() {
        targets.push(Target {
            name: "per-request instantiate".into(),
            measured: format!("{} µs", f2(inst / 1e3)),
            value: inst / 1e3,
            goal: 5.0,
            at_least: false,
            unit: "µs",
            why: vec!["Measured as the time of a trivial `merge({}, {})` through `GuestHarness` (fresh `Store`, `instantiate_async` from the pooling allocator, one export call with its canonical-ABI copies, the store dropped and its memory reset) minus the same call natively.".into()],
        });
    }
    if let (Some(wm), Some(nm)) = (fig("guest merge 1KB wasm"), fig("guest merge 1KB native")) {
        let why = vec![format!(
            "One merge of a 1 KB card: native {} µs, through wasmtime {} µs, of which about {} µs is the per-call instantiate; the merge itself then costs about {} µs in wasm ({}× native).",
            f2(nm.ns() / 1e3), f2(wm.ns() / 1e3), f2(inst / 1e3), f2((wm.ns() - inst) / 1e3), f2((wm.ns() - inst) / nm.ns())
        )];
        targets.push(Target {
            name: "1 KB merge through wasmtime / native (whole call, as a request pays it)".into(),
            measured: format!("{} / {} µs", f2(wm.ns() / 1e3), f2(nm.ns() / 1e3)),
            value: wm.ns() / nm.ns(),
            goal: 1.3,
            at_least: false,
            unit: "×",
            why,
        });
    }
    if let (Some(h), Some(d)) = (fig("sqlite-host c32"), fig("sqlite-direct c32")) {
        targets.push(Target {
            name: "SQLite, 32 clients: PATCH TPS / direct sqlx (same transaction)".into(),
            measured: format!("{} / {} TPS", f0(h.tps()), f0(d.tps())),
            value: h.tps() / d.tps(),
            goal: 2.0,
            at_least: true,
            unit: "×",
            why: vec![
                format!(
                    "realm-host: {} req/s, mean batch {} requests/commit, CPU per request: host {} µs, load generator {} µs; machine {}% busy.",
                    f0(h.tps()), f1(h.batch()), f0(h.cpu_us(|c| c.server_s)), f0(h.cpu_us(|c| c.self_s)), f0(h.busy())
                ),
                format!(
                    "direct sqlx: {} tx/s, CPU per transaction {} µs (all in-process); machine {}% busy.",
                    f0(d.tps()), f0(d.cpu_us(|c| c.self_s)), f0(d.busy())
                ),
            ],
        });
    }
    {
        let mut worst: Option<(String, f64, f64, f64, f64)> = None;
        for (key, v) in &by_key {
            if !(key.starts_with("host c32") || key.starts_with("sqlite-host c32")) || key.contains("coalesce-off") {
                continue;
            }
            let f = Figure(v.clone());
            let ratio = f.p99() / f.p50();
            if worst.as_ref().is_none_or(|w| ratio > w.1) {
                worst = Some((key.to_string(), ratio, f.p50(), f.p99(), f.batch()));
            }
        }
        if let Some((key, ratio, p50, p99, batch)) = worst {
            targets.push(Target {
                name: "p99 / p50 at 32 clients, worst configuration".into(),
                measured: format!("`{key}`: p99 {} ms / p50 {} ms", f2(p99), f2(p50)),
                value: ratio,
                goal: 5.0,
                at_least: false,
                unit: "×",
                why: vec![format!(
                    "In the worst configuration the mean batch is {} requests/commit; a request that joins a batch early waits for the whole batch's commit.",
                    f1(batch)
                )],
            });
        }
    }
    if let Some(h) = host(32, 1, 1) {
        let rss = h.0.iter().filter_map(|r| r.peak_rss_mb).fold(f64::NAN, f64::max);
        targets.push(Target {
            name: "peak RSS of one replica under the hot-realm run".into(),
            measured: format!("{} MB", f0(rss)),
            value: rss,
            goal: 200.0,
            at_least: false,
            unit: "MB",
            why: vec!["VmHWM of the replica's process after its runs (the guest pool reserves address space, not resident memory).".into()],
        });
    }

    let _ = writeln!(w, "## Targets\n");
    let _ = writeln!(w, "| target | measured | ratio / value | goal | verdict |\n|---|---|---|---|---|");
    for t in &targets {
        let op = if t.at_least { "≥" } else { "≤" };
        let _ = writeln!(w, "| {} | {} | {} {} | {op} {} {} | {} |", t.name, t.measured, f2(t.value), t.unit, t.goal, t.unit, t.verdict());
    }
    let missed: Vec<&Target> = targets.iter().filter(|t| t.met() == Some(false)).collect();
    if !missed.is_empty() {
        let _ = writeln!(w, "\n### What the measurements say about the missed targets\n");
        for t in missed {
            let _ = writeln!(w, "- **{}** — {}:", t.name, t.verdict().replace("**", ""));
            for line in &t.why {
                let _ = writeln!(w, "  - {line}");
            }
        }
    }

    // ---- a. pgbench
    let _ = writeln!(w, "\n## a. Baseline: pgbench, the SQL of one PATCH per transaction\n");
    let _ = writeln!(w, "`bench/patch.pgbench` (`-M prepared`): what realm-host's write path runs for one PATCH, one request per transaction — `BEGIN; SELECT pg_advisory_xact_lock(key of the realm); SELECT the file with its index row; upsert files; upsert card_index; upsert the two search rows the PATCH changes (counter, note); append the realm event (next seq, retire the one 10 000 before, NOTIFY); COMMIT;`. The rows \"files only\" run `bench/patch-files-only.pgbench`, the transaction of 2026-11 (files and card_index, before search rows and events), kept to compare with older figures. Both on the host's schema (its migrations and the trigram index it creates) seeded with 64 realms × 8 cards of ~1 KB with ~40 search rows each; `\\set r random(1,:realms)`, `\\set c random(1,8)`. The first row is one client sending `SELECT 1` (`bench/roundtrip.pgbench`): the latency of one round trip to Postgres on this machine.\n");
    let _ = writeln!(w, "| SQL | clients | realms | TPS | p50 ms | p99 ms | errors | Postgres µs/tx | pgbench µs/tx | busy % | other % | runs |\n|---|---|---|---|---|---|---|---|---|---|---|---|");
    if let Some(f) = fig("pgbench roundtrip c1") {
        let _ = writeln!(
            w,
            "| `SELECT 1` | 1 | – | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            f0(f.tps()), f2(f.p50()), f2(f.p99()), f.errors(), f0(f.cpu_us(|c| c.pg_s)), f0(f.cpu_us(|c| c.self_s)), f0(f.busy()), f0(f.other()), f.runs()
        );
    }
    for (label, script) in [("PATCH", "pgbench"), ("files only", "pgbench-files")] {
        for c in [8, 32] {
            for r in [1, 64] {
                if let Some(f) = fig(&format!("{script} c{c} realms{r}")) {
                    let _ = writeln!(
                        w,
                        "| {label} | {c} | {r} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        f0(f.tps()), f2(f.p50()), f2(f.p99()), f.errors(), f0(f.cpu_us(|c| c.pg_s)), f0(f.cpu_us(|c| c.self_s)), f0(f.busy()), f0(f.other()), f.runs()
                    );
                }
            }
        }
    }

    // ---- b. host
    let _ = writeln!(w, "\n## b. realm-host PATCH on Postgres\n");
    let _ = writeln!(w, "`realm-bench load`: closed-loop clients over keep-alive HTTP/1.1, each PATCH sets attributes no other request sets (`counter`, `note`) on one of 8 cards (~1 KB) of a random realm; non-2xx answers and transport errors count as errors. Replicas are separate `realm-host serve` processes on the same database; clients are spread round-robin. Coalescing is on (`--coalesce-max-batch 64 --coalesce-max-wait 20ms`, the defaults). \"× files only\" divides by the files-only pgbench of the same run. Per commit: the write requests and realm batches one COMMIT carried; turn: how long a writer held its realm's turn; commit: flush and COMMIT (both from `/_metrics`).\n");
    let _ = writeln!(w, "| replicas | clients | realms | TPS | × pgbench | × files only | p50 ms | p99 ms | p99/p50 | errors | requests / realm batches per commit | turn µs | commit ms | host µs/req | Postgres µs/req | client µs/req | busy % | other % | peak RSS MB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for rep in [1, 2] {
        for c in [8, 32] {
            for r in [1, 64] {
                let Some(f) = host(c, r, rep) else { continue };
                let base = pg(c, r).map(|b| b.tps()).unwrap_or(f64::NAN);
                let old = pg_files(c, r).map(|b| b.tps()).unwrap_or(f64::NAN);
                let rss = f.0.iter().filter_map(|r| r.peak_rss_mb).fold(f64::NAN, f64::max);
                let _ = writeln!(
                    w,
                    "| {rep} | {c} | {r} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    f0(f.tps()), f2(f.tps() / base), f2(f.tps() / old), f2(f.p50()), f2(f.p99()), f1(f.p99() / f.p50()), errors_cell(&f),
                    f1(f.batch()), f1(f.realm_batches()), f0(f.turn_us()), f2(f.commit_ms()),
                    f0(f.cpu_us(|c| c.server_s)), f0(f.cpu_us(|c| c.pg_s)), f0(f.cpu_us(|c| c.self_s)), f0(f.busy()), f0(f.other()), f0(rss)
                );
            }
        }
    }

    // ---- c. guest
    let _ = writeln!(w, "\n## c. Guest cost: native vs wasmtime\n");
    let _ = writeln!(w, "Native: the `realm-guest` crate's text functions (`merge_patch_text`, `serialize_card_text`, `validate_atomic_json`) — exactly what the component's `logic.*` exports run. wasmtime: `realm_host::testing::GuestHarness` on the built-in component, i.e. the server's runtime (one engine, pooling allocator, `InstancePre`), which creates a fresh `Store`, instantiates and calls the export per call. Mean time per call over a fixed time budget, median of the runs. Inputs: a Person card of ~1 KB / ~100 KB; merge applies a two-attribute patch; validate plans one `add` of that card; patch is a whole PATCH request's guest work (`handlers::patch_card` with a new two-attribute patch each call: read, merge, serialise, index row, write, answer), natively against the guest crate's in-memory store and through wasmtime against the host's write path on its in-memory store (lock, overlay and commit included, so its ratio is not the guest's alone).\n");
    let _ = writeln!(w, "The last column is the guest's work counted rather than timed: the wasm operators one call executes (wasmtime's fuel, on a second engine that counts it; mean of 8 calls). It does not move with the machine's speed, so it compares guest builds across runs and hours.\n");
    let _ = writeln!(w, "| operation | card | native µs | wasmtime µs | wasm / native | wasm − instantiate µs | (wasm − instantiate) / native | wasm operators / call |\n|---|---|---|---|---|---|---|---|");
    let inst = instantiate_ns(&fig);
    for op in ["trivial", "merge", "serialize", "validate", "patch"] {
        for size in ["-", "1KB", "100KB"] {
            let (Some(n), Some(wf)) = (fig(&format!("guest {op} {size} native")), fig(&format!("guest {op} {size} wasm"))) else { continue };
            let (n, wa) = (n.ns(), wf.ns());
            let operators = fig(&format!("guest {op} {size} operators")).map_or("—".to_string(), |f| f0(f.med(|r| r.operators_per_call)));
            let _ = writeln!(
                w,
                "| {op} | {size} | {} | {} | {} | {} | {} | {operators} |",
                f2(n / 1e3), f2(wa / 1e3), f2(wa / n), f2((wa - inst) / 1e3), f2((wa - inst) / n)
            );
        }
    }
    if let Some(c) = fig("guest compile") {
        let _ = writeln!(w, "\nPer-request instantiate (trivial call through wasmtime minus natively): **{} µs**. Compiling the built-in component once at start-up (`GuestHarness::from_bytes`): {} ms.", f2(inst / 1e3), f0(c.ns() / 1e6));
    }

    // ---- d. sqlite
    let _ = writeln!(w, "\n## d. Embedded default: SQLite\n");
    let _ = writeln!(w, "realm-host on a `sqlite://` file (one realm; `realm-bench load` as in b) against `realm-bench sqlite-direct`: the SQL of one PATCH per transaction with sqlx in-process — the host's own pool (`realm_host::store::Database::connect`: WAL, 8 connections, busy timeout), `BEGIN IMMEDIATE;` the file with its index row; upsert files; upsert card_index; upsert the two search rows; the realm event; `COMMIT`, ~1 KB content — with the same number of concurrent clients.\n");
    let _ = writeln!(w, "| clients | realm-host TPS | direct TPS | ratio | host p50 / p99 ms | direct p50 / p99 ms | host errors | direct errors | mean batch | host µs/req | client µs/req | direct µs/tx | busy % host / direct | other % host / direct |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for c in [8, 32] {
        let (Some(h), Some(d)) = (fig(&format!("sqlite-host c{c}")), fig(&format!("sqlite-direct c{c}"))) else { continue };
        let _ = writeln!(
            w,
            "| {c} | {} | {} | {} | {} / {} | {} / {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} |",
            f0(h.tps()), f0(d.tps()), f2(h.tps() / d.tps()), f2(h.p50()), f2(h.p99()), f2(d.p50()), f2(d.p99()),
            errors_cell(&h), errors_cell(&d), f1(h.batch()), f0(h.cpu_us(|c| c.server_s)), f0(h.cpu_us(|c| c.self_s)), f0(d.cpu_us(|c| c.self_s)),
            f0(h.busy()), f0(d.busy()), f0(h.other()), f0(d.other())
        );
    }

    // ---- e. coalescing
    let _ = writeln!(w, "\n## e. Coalescing on vs off (hot realm, 32 clients, 1 replica, Postgres)\n");
    let _ = writeln!(w, "| coalescing | TPS | × pgbench | p50 ms | p99 ms | mean batch | commits/s | host µs/req | Postgres µs/req | errors |\n|---|---|---|---|---|---|---|---|---|---|");
    let base = pg(32, 1).map(|b| b.tps()).unwrap_or(f64::NAN);
    for (label, key) in [("on (max batch 64, max wait 20 ms)", "host c32 realms1 rep1"), ("off (`--coalesce-max-batch 1`)", "host c32 realms1 rep1 coalesce-off")] {
        let Some(f) = fig(key) else { continue };
        let commits = f.med(|r| r.batches.map(|b| b as f64 / r.seconds));
        let _ = writeln!(
            w,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            f0(f.tps()), f2(f.tps() / base), f2(f.p50()), f2(f.p99()), f1(f.batch()), f0(commits), f0(f.cpu_us(|c| c.server_s)), f0(f.cpu_us(|c| c.pg_s)), errors_cell(&f)
        );
    }
    if let (Some(on), Some(off)) = (fig("host c32 realms1 rep1"), fig("host c32 realms1 rep1 coalesce-off")) {
        let _ = writeln!(w, "\nCoalescing on / off: **{}×** the throughput.", f2(on.tps() / off.tps()));
    }

    // ---- errors
    let errored: Vec<_> = by_key.iter().filter(|(_, v)| v.iter().any(|r| r.errors > 0)).collect();
    let _ = writeln!(w, "\n## Errors\n");
    if errored.is_empty() {
        let _ = writeln!(w, "No request or transaction failed in any run ({} successful in all).", records.iter().map(|r| r.ok).sum::<u64>());
    } else {
        for (key, v) in errored {
            let f = Figure(v.clone());
            let samples: Vec<_> = v.iter().flat_map(|r| r.error_samples.iter()).take(2).cloned().collect();
            let _ = writeln!(w, "- `{key}`: {} errors of {} ({}) e.g. {}", f.errors(), f.errors() + f.ok(), f.error_kinds(), samples.join(" | "));
        }
    }

    if let Some(p) = args.profile.as_ref().filter(|p| p.exists()) {
        let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
        let _ = writeln!(w, "\n## Profile\n\n{}", text.trim_end());
    }
    if let Some(a) = args.analysis.as_ref().filter(|p| p.exists()) {
        let text = std::fs::read_to_string(a).map_err(|e| e.to_string())?;
        let _ = writeln!(w, "\n{}", text.trim_end());
    }
    std::fs::write(&args.out, md).map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn errors_cell(f: &Figure) -> String {
    if f.errors() == 0 {
        "0".into()
    } else {
        format!("{} ({})", f.errors(), f.error_kinds())
    }
}

/// Trivial call through wasmtime minus natively, in ns.
fn instantiate_ns<'a>(fig: &impl Fn(&str) -> Option<Figure<'a>>) -> f64 {
    match (fig("guest trivial - wasm"), fig("guest trivial - native")) {
        (Some(w), Some(n)) => w.ns() - n.ns(),
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_say_by_how_much_they_are_missed() {
        let t = |value, at_least| Target { name: String::new(), measured: String::new(), value, goal: 2.0, at_least, unit: "×", why: vec![] };
        assert_eq!(t(3.0, true).verdict(), "**met**");
        assert_eq!(t(1.0, true).verdict(), "**missed** (50% short)");
        assert_eq!(t(3.0, false).verdict(), "**missed** (50% over)");
        assert_eq!(t(f64::NAN, false).verdict(), "not measured");
    }
}
