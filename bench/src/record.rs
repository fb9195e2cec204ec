//! One measured run, as a line of JSON in the results file that
//! `realm-bench report` turns into RESULTS.md.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cpu::CpuUse;

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(default)]
pub struct Record {
    /// `pgbench`, `host`, `sqlite-host`, `sqlite-direct`, `guest`.
    pub kind: String,
    /// Which figure this run belongs to (runs of one key are medianed).
    pub key: String,
    pub run: usize,
    pub clients: usize,
    pub realms: usize,
    pub replicas: usize,
    /// Measured wall time of the run.
    pub seconds: f64,
    /// Successful requests / transactions.
    pub ok: u64,
    /// Failed ones (non-2xx, transport errors, aborted transactions).
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub error_samples: Vec<String>,
    /// ok / seconds.
    pub tps: f64,
    // Alike in shape to guest's `PlannedOp` (a run of plain `pub` fields), an unrelated struct.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    pub cpu: Option<CpuUse>,
    /// Coalescing counters (deltas over the run) from `/_metrics`.
    pub batches: Option<u64>,
    pub batch_members: Option<u64>,
    /// The write path's time split (deltas over the run) from `/_metrics`:
    /// realm batches carried by those commits, writers' turns and their
    /// total seconds, seconds spent flushing and committing.
    pub realm_batches: Option<u64>,
    pub turns: Option<u64>,
    pub turn_s: Option<f64>,
    pub commit_s: Option<f64>,
    /// Peak resident memory of the server processes after the run (MB, the
    /// largest replica's VmHWM).
    pub peak_rss_mb: Option<f64>,
    /// Guest benchmark: mean time of one call.
    pub ns_per_call: Option<f64>,
    pub iterations: Option<u64>,
    /// Guest benchmark: wasm operators one call executed (wasmtime's fuel,
    /// on an engine that counts it): the guest's work, whatever the
    /// machine's speed.
    pub operators_per_call: Option<f64>,
    /// Free-form description (options, sizes).
    pub note: String,
}

impl Record {
    pub fn append_to(&self, path: &Path) -> Result<(), String> {
        let line = serde_json::to_string(self).map_err(|e| e.to_string())?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        writeln!(f, "{line}").map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    pub fn read_all(path: &Path) -> Result<Vec<Record>, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| format!("bad result line {l:.80}: {e}")))
            .collect()
    }

    /// Completes a closed-loop run's record from the latencies (µs) of its
    /// successful requests: `ok`, `errors` (the sum of `error_kinds`), `tps`
    /// over `seconds`, and the latency fields.
    pub fn set_outcome(&mut self, latencies: Vec<u64>) {
        self.ok = latencies.len() as u64;
        self.errors = self.error_kinds.values().sum();
        self.tps = self.ok as f64 / self.seconds;
        self.set_latencies(latencies);
    }

    /// Fills the latency fields from unsorted samples in microseconds.
    pub fn set_latencies(&mut self, mut micros: Vec<u64>) {
        micros.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        self.p50_ms = ms(crate::stats::quantile_sorted(&micros, 0.50));
        self.p99_ms = ms(crate::stats::quantile_sorted(&micros, 0.99));
        self.max_ms = ms(micros.last().copied().unwrap_or(0));
        self.mean_ms = if micros.is_empty() { 0.0 } else { ms(micros.iter().sum::<u64>()) / micros.len() as f64 };
    }

    /// One line for the terminal.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{:<44} run {} {:>9.1}/s p50 {:>7.2} ms p99 {:>7.2} ms errors {}",
            self.key, self.run, self.tps, self.p50_ms, self.p99_ms, self.errors
        );
        if let (Some(b), Some(m)) = (self.batches, self.batch_members) {
            if b > 0 {
                s.push_str(&format!(" batch {:.1}", m as f64 / b as f64));
            }
        }
        if let Some(c) = &self.cpu {
            s.push_str(&format!(" cpu {:.0}%", c.machine_busy_pct));
        }
        s
    }
}
