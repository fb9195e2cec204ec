//! `realm-bench guest`: the card logic called natively (the `realm-guest`
//! crate's text functions, which are exactly what the component's
//! `logic.*` exports run) versus through wasmtime
//! (`realm_host::testing::GuestHarness`, the server's runtime: a fresh
//! `Store` and an instantiation from the pooling allocator per call, then
//! the export). The instantiate cost per request is estimated as the time
//! of a trivial call through the harness minus the same call natively.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use realm_guest::{atomic, merge, serialize};
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
    }
    out
}

fn native(case: &Case) -> Result<String, String> {
    let r = match case.op {
        "trivial" | "merge" => merge::merge_patch_text(&case.a, &case.b, &case.c),
        "serialize" => serialize::serialize_card_text(&case.a, &case.b, &case.c),
        _ => atomic::validate_atomic_json(&case.a, &case.b),
    };
    r.map_err(|e| format!("{e:?}"))
}

async fn wasm(h: &GuestHarness, case: &Case) -> Result<String, String> {
    let r = match case.op {
        "trivial" | "merge" => h.merge(&case.a, &case.b, &case.c).await,
        "serialize" => h.serialize(&case.a, &case.b, &case.c).await,
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
    // Both sides must compute the same thing.
    for case in &cases {
        let n = native(case).map_err(|e| format!("native {} {}: {e}", case.op, case.size))?;
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
                    black_box(native(black_box(case)).ok());
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

    #[test]
    fn every_case_runs_natively() {
        for case in cases() {
            let out = native(&case).unwrap_or_else(|e| panic!("{} {}: {e}", case.op, case.size));
            assert!(!out.is_empty());
        }
    }
}
