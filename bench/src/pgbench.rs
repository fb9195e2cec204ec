//! `realm-bench pgbench -- <pgbench args>`: runs pgbench (warm-up, then
//! the measured runs), reads its TPS and per-transaction log (for p50/p99),
//! accounts CPU of Postgres and of pgbench itself, and records each run.

use std::path::PathBuf;
use std::process::Command;

use clap::Args;

use crate::cpu::Watch;
use crate::record::Record;

#[derive(Args, Debug)]
pub struct PgbenchArgs {
    #[arg(long)]
    pub key: String,
    #[arg(long)]
    pub clients: usize,
    #[arg(long)]
    pub realms: usize,
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Seconds of unmeasured warm-up (0: none).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    #[arg(long)]
    pub seconds: u64,
    #[arg(long)]
    pub pg_pid: Option<i32>,
    #[arg(long)]
    pub out: PathBuf,
    /// Where pgbench writes its transaction logs.
    #[arg(long)]
    pub log_dir: PathBuf,
    /// The pgbench program and its arguments (without -T, -c, -l).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// CPU seconds of waited-for children so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn pgbench(args: &PgbenchArgs, seconds: u64, log_prefix: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]).arg("-c").arg(args.clients.to_string()).arg("-T").arg(seconds.to_string());
    if let Some(prefix) = log_prefix {
        cmd.arg("-l").arg(format!("--log-prefix={prefix}"));
    }
    let output = cmd.output().map_err(|e| format!("cannot run {}: {e}", args.command[0]))?;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    if !output.status.success() {
        return Err(format!("pgbench failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr)));
    }
    Ok(stdout)
}

/// A number after `label` on the line that starts with it.
fn field(text: &str, label: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_start().starts_with(label))?;
    let rest = line.trim_start()[label.len()..].trim_start_matches([' ', '=', ':']);
    rest.split_whitespace().next()?.parse().ok()
}

pub fn run(args: PgbenchArgs) -> Result<(), String> {
    std::fs::create_dir_all(&args.log_dir).map_err(|e| e.to_string())?;
    if args.warmup > 0 {
        pgbench(&args, args.warmup, None)?;
    }
    let watch = Watch { servers: Vec::new(), postmaster: args.pg_pid };
    for run in 0..args.runs {
        let prefix = args.log_dir.join(format!("run{run}"));
        let prefix = prefix.to_string_lossy().to_string();
        let tracker = watch.track();
        let children_before = children_cpu();
        let stdout = pgbench(&args, args.seconds, Some(&prefix))?;
        let mut cpu = tracker.finish();
        let pgbench_cpu = children_cpu() - children_before;
        cpu.other_s = (cpu.other_s - pgbench_cpu).max(0.0);
        cpu.self_s += pgbench_cpu;

        let mut latencies = Vec::new();
        for entry in std::fs::read_dir(&args.log_dir).map_err(|e| e.to_string())?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !name.starts_with(&format!("run{run}.")) {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).map_err(|e| e.to_string())?;
            // client_id transaction_no time_us script_no epoch epoch_us …
            latencies.extend(text.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()));
            std::fs::remove_file(entry.path()).ok();
        }
        let mut record = Record {
            kind: "pgbench".into(),
            key: args.key.clone(),
            run,
            clients: args.clients,
            realms: args.realms,
            replicas: 0,
            seconds: args.seconds as f64,
            cpu: Some(cpu),
            note: args.command.join(" "),
            ..Record::default()
        };
        record.ok = field(&stdout, "number of transactions actually processed").unwrap_or(0.0) as u64;
        let failed = field(&stdout, "number of failed transactions").unwrap_or(0.0) as u64;
        if failed > 0 {
            record.error_kinds.insert("failed".into(), failed);
        }
        record.errors = failed;
        record.tps = field(&stdout, "tps").unwrap_or(0.0);
        record.set_latencies(latencies);
        eprintln!("{}", record.summary());
        record.append_to(&args.out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_pgbench_summary_fields() {
        let out = "number of transactions actually processed: 12345\n\
                   number of failed transactions: 0 (0.000%)\n\
                   latency average = 2.1 ms\n\
                   tps = 4021.337 (without initial connection time)\n";
        assert_eq!(super::field(out, "number of transactions actually processed"), Some(12345.0));
        assert_eq!(super::field(out, "number of failed transactions"), Some(0.0));
        assert_eq!(super::field(out, "tps"), Some(4021.337));
    }
}
