//! `realm-bench guest`: the card logic called natively (the `realm-guest`
//! crate's text functions, which are exactly what the component's
//! `logic.*` exports run) versus through wasmtime
//! (`realm_host::testing::GuestHarness`, the server's runtime: a fresh
//! `Store` and an instantiation from the pooling allocator per call, then
//! the export). The instantiate cost per request is estimated as the time
//! of a trivial call through the harness minus the same call natively.
//! The `patch` case is a whole PATCH request's guest work instead: the
//! `handlers::patch_card` handler on a stored card, natively against the
//! guest crate's in-memory store, through wasmtime against the host's
//! write path on its in-memory store (lock, overlay and commit included).

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use realm_guest::memory::MemoryStore;
use realm_guest::{atomic, handlers, merge, serialize};
use realm_host::guest::runtime::BUILTIN_GUEST;
use realm_host::testing::GuestHarness;
use serde_json::json;

use crate::cards;
use crate::record::Record;

#[derive(Args, Debug)]
pub struct GuestArgs {
    /// Time spent calling one operation in one run.
    #[arg(long, default_value_t = 1000)]
    pub millis: u64,
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    #[arg(long)]
    pub out: PathBuf,
    /// Only this case, e.g. "merge 1KB" or "trivial -" (for profiling).
    #[arg(long)]
    pub only: Option<String>,
    /// Only the calls through wasmtime (for profiling).
    #[arg(long)]
    pub wasm_only: bool,
}

const REALM: &str = "http://127.0.0.1:4201/bench/";

/// One benchmarked operation: its inputs, as both sides receive them.
struct Case {
    op: &'static str,
    size: &'static str,
    a: String,
    b: String,
    c: String,
}

fn cases() -> Vec<Case> {
    let card_url = format!("{REALM}Person/1");
    let file_url = format!("{REALM}Person/1.json");
    let mut out = vec![Case { op: "trivial", size: "-", a: "{}".into(), b: "{}".into(), c: card_url.clone() }];
    for (size, bytes) in [("1KB", 1024), ("100KB", 100 * 1024)] {
        let stored = cards::person_resource(bytes, "../person");
        let absolute = cards::person_resource(bytes, &format!("{REALM}person.gts"));
        let patch = cards::patch_data(0, 1, "../person");
        out.push(Case { op: "merge", size, a: stored.to_string(), b: patch.to_string(), c: card_url.clone() });
        out.push(Case { op: "serialize", size, a: absolute.to_string(), b: file_url.clone(), c: REALM.into() });
        let body = json!({"atomic:operations": [{"op": "add", "href": "./Person/1.json", "data": stored}]});
        out.push(Case { op: "validate", size, a: REALM.into(), b: body.to_string(), c: String::new() });
        let create = json!({"data": cards::person_resource(bytes, "./person")});
        out.push(Case { op: "patch", size, a: create.to_string(), b: format!("p{size}"), c: format!("Person/p{size}") });
    }
    out
}

/// Patches so far: each PATCH sets a new counter, so each one writes.
static PATCHES: AtomicU64 = AtomicU64::new(0);

/// The body of the next PATCH (a two-attribute change, as `realm-bench load` sends).
fn next_patch() -> String {
    json!({"data": cards::patch_data(0, PATCHES.fetch_add(1, Ordering::Relaxed), "../person")}).to_string()
}

/// Stores the card each `patch` case patches, on both sides.
async fn seed(store: &MemoryStore, h: &GuestHarness, cases: &[Case]) -> Result<(), String> {
    for case in cases.iter().filter(|c| c.op == "patch") {
        handlers::create_card(store, REALM, "", &case.b, &case.a).map_err(|e| format!("native create {}: {e:?}", case.c))?;
        h.create_card(REALM, "", &case.b, &case.a).await.map_err(|e| format!("wasm create {}: {e}", case.c))?;
    }
    Ok(())
}

fn native(store: &MemoryStore, case: &Case) -> Result<String, String> {
    let r = match case.op {
        "trivial" | "merge" => merge::merge_patch_text(&case.a, &case.b, &case.c),
        "serialize" => serialize::serialize_card_text(&case.a, &case.b, &case.c),
        "patch" => handlers::patch_card(store, REALM, &case.c, &next_patch(), None).map(|card| card.id),
        _ => atomic::validate_atomic_json(&case.a, &case.b),
    };
    r.map_err(|e| format!("{e:?}"))
}

async fn wasm(h: &GuestHarness, case: &Case) -> Result<String, String> {
    let r = match case.op {
        "trivial" | "merge" => h.merge(&case.a, &case.b, &case.c).await,
        "serialize" => h.serialize(&case.a, &case.b, &case.c).await,
        "patch" => h.patch_card(REALM, &case.c, &next_patch()).await.map(|card| card.id),
        _ => h.validate_atomic(&case.a, &case.b).await,
    };
    r.map_err(|e| e.to_string())
}

pub async fn run(args: GuestArgs) -> Result<(), String> {
    let compile_started = Instant::now();
    let harness = GuestHarness::from_bytes(BUILTIN_GUEST)?;
    let compile = compile_started.elapsed();
    eprintln!("compiling the built-in guest ({} bytes) took {compile:?}", BUILTIN_GUEST.len());
    Record {
        kind: "guest".into(),
        key: "guest compile".into(),
        ns_per_call: Some(compile.as_nanos() as f64),
        note: format!("GuestHarness::from_bytes of the {} byte built-in component", BUILTIN_GUEST.len()),
        ..Record::default()
    }
    .append_to(&args.out)?;

    let mut cases = cases();
    if let Some(only) = &args.only {
        cases.retain(|c| format!("{} {}", c.op, c.size) == *only);
    }
    let store = MemoryStore::new();
    seed(&store, &harness, &cases).await?;
    // Both sides must compute the same thing (a PATCH: answer the same card).
    for case in &cases {
        let n = native(&store, case).map_err(|e| format!("native {} {}: {e}", case.op, case.size))?;
        let w = wasm(&harness, case).await.map_err(|e| format!("wasm {} {}: {e}", case.op, case.size))?;
        if n != w {
            return Err(format!("{} {}: native and wasm answers differ", case.op, case.size));
        }
    }
    let budget = Duration::from_millis(args.millis);
    for run in 0..args.runs {
        for case in &cases {
            let (n_iter, n_time) = if args.wasm_only {
                (1, Duration::ZERO)
            } else {
                timed(budget, || async {
                    black_box(native(&store, black_box(case)).ok());
                })
                .await
            };
            let (w_iter, w_time) = timed(budget, || async {
                black_box(wasm(&harness, black_box(case)).await.ok());
            })
            .await;
            for (side, iters, time) in [("native", n_iter, n_time), ("wasm", w_iter, w_time)] {
                if args.wasm_only && side == "native" {
                    continue;
                }
                let record = Record {
                    kind: "guest".into(),
                    key: format!("guest {} {} {side}", case.op, case.size),
                    run,
                    seconds: time.as_secs_f64(),
                    ns_per_call: Some(time.as_nanos() as f64 / iters as f64),
                    iterations: Some(iters),
                    note: format!("input {} bytes", case.a.len() + case.b.len()),
                    ..Record::default()
                };
                eprintln!("{:<34} run {run} {:>12.0} ns/call ({iters} calls)", record.key, record.ns_per_call.unwrap_or(0.0));
                record.append_to(&args.out)?;
            }
        }
    }
    count_operators(&cases, &args.out).await
}

/// Records the wasm operators a call of each case executes, on a harness
/// that counts them (its calls are slower, so they are not timed).
async fn count_operators(cases: &[Case], out: &std::path::Path) -> Result<(), String> {
    const CALLS: u64 = 8;
    let counting = GuestHarness::counting(BUILTIN_GUEST)?;
    seed(&MemoryStore::new(), &counting, cases).await?;
    for case in cases {
        let before = counting.operators().unwrap_or(0);
        for _ in 0..CALLS {
            wasm(&counting, case).await.map_err(|e| format!("wasm {} {}: {e}", case.op, case.size))?;
        }
        let per_call = counting.operators().unwrap_or(0).saturating_sub(before) as f64 / CALLS as f64;
        let record = Record {
            kind: "guest".into(),
            key: format!("guest {} {} operators", case.op, case.size),
            iterations: Some(CALLS),
            operators_per_call: Some(per_call),
            note: format!("input {} bytes", case.a.len() + case.b.len()),
            ..Record::default()
        };
        eprintln!("{:<34} {per_call:>12.0} wasm operators/call", record.key);
        record.append_to(out)?;
    }
    Ok(())
}

/// Calls `f` repeatedly for about `budget` (after a short warm-up);
/// answers the number of calls and the time they took.
async fn timed<F, Fut>(budget: Duration, f: F) -> (u64, Duration)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let warm = Instant::now();
    while warm.elapsed() < budget / 10 {
        f().await;
    }
    let started = Instant::now();
    let mut iters = 0u64;
    loop {
        // Check the clock every few calls only.
        for _ in 0..8 {
            f().await;
        }
        iters += 8;
        if started.elapsed() >= budget {
            return (iters, started.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_case_records_its_operators_per_call() {
        let out = std::env::temp_dir().join(format!("realm-bench-operators-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&out);
        let cases = cases();
        count_operators(&cases, &out).await.unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let _ = std::fs::remove_file(&out);
        let records: Vec<Record> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(records.len(), cases.len());
        let ops = |key: &str| records.iter().find(|r| r.key == key).and_then(|r| r.operators_per_call).unwrap();
        assert!(ops("guest trivial - operators") > 0.0);
        assert!(ops("guest merge 1KB operators") > ops("guest trivial - operators"));
        assert!(ops("guest merge 100KB operators") > 10.0 * ops("guest merge 1KB operators"));
    }

    #[tokio::test]
    async fn every_case_runs_on_both_sides_and_a_patch_writes() {
        let harness = GuestHarness::from_bytes(BUILTIN_GUEST).unwrap();
        let store = MemoryStore::new();
        let cases = cases();
        seed(&store, &harness, &cases).await.unwrap();
        for case in &cases {
            let out = native(&store, case).unwrap_or_else(|e| panic!("{} {}: {e}", case.op, case.size));
            assert!(!out.is_empty());
            assert_eq!(wasm(&harness, case).await.as_deref(), Ok(out.as_str()), "{} {}", case.op, case.size);
        }
        for case in cases.iter().filter(|c| c.op == "patch") {
            let path = format!("{}.json", case.c);
            let before = harness.file(REALM, &path).await.unwrap();
            wasm(&harness, case).await.unwrap();
            assert_ne!(harness.file(REALM, &path).await.unwrap(), before, "each PATCH writes");
        }
    }
}
