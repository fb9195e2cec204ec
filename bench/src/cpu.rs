//! CPU accounting from /proc: the whole machine (/proc/stat) and given
//! processes (utime + stime of /proc/PID/stat), so every figure can say
//! where the CPU went per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Clock ticks per second of the /proc counters.
fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Busy and total ticks of all CPUs.
fn machine() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else { return (0, 0) };
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    (busy, busy + get(3) + get(4))
}

/// utime + stime of a process, in ticks, and its parent pid.
fn proc_ticks(pid: i32) -> Option<(u64, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)` field, which may contain spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4; utime 14, stime 15.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime, ppid))
}

/// Processes whose parent is `ppid`.
fn children_of(ppid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| proc_ticks(pid).map(|(_, p)| p) == Some(ppid))
        .collect()
}

/// What to account for: server processes, and a Postgres postmaster whose
/// children (backends, WAL writer, checkpointer…) are summed.
#[derive(Clone, Default)]
pub struct Watch {
    pub servers: Vec<i32>,
    pub postmaster: Option<i32>,
}

/// Counters at one instant.
pub struct Snapshot {
    machine: (u64, u64),
    servers: u64,
    pg: HashMap<i32, u64>,
    me: u64,
}

/// CPU used between two snapshots.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct CpuUse {
    /// Share of all CPUs busy (100 = every core busy).
    pub machine_busy_pct: f64,
    pub cores: usize,
    /// CPU seconds of the server processes, Postgres, and this process.
    pub server_s: f64,
    pub pg_s: f64,
    pub self_s: f64,
    /// CPU seconds of everything else on the machine (other work, kernel).
    pub other_s: f64,
}

impl Watch {
    pub fn snapshot(&self) -> Snapshot {
        let servers = self.servers.iter().filter_map(|&p| proc_ticks(p)).map(|(t, _)| t).sum();
        let mut pg = HashMap::new();
        if let Some(pm) = self.postmaster {
            for pid in std::iter::once(pm).chain(children_of(pm)) {
                if let Some((t, _)) = proc_ticks(pid) {
                    pg.insert(pid, t);
                }
            }
        }
        let me = proc_ticks(std::process::id() as i32).map(|(t, _)| t).unwrap_or(0);
        Snapshot { machine: machine(), servers, pg, me }
    }
}

/// Accounting over a stretch of time. A thread samples the Postgres
/// processes every 200 ms, so a backend that exits before the end (pgbench
/// disconnects as soon as it is done) still counts with its last sample.
pub struct Tracker {
    watch: Watch,
    before: Snapshot,
    seen: Arc<Mutex<HashMap<i32, u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    pub fn track(&self) -> Tracker {
        let before = self.snapshot();
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = self.postmaster.map(|pm| {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for pid in children_of(pm) {
                        if let (Some((t, _)), Ok(mut seen)) = (proc_ticks(pid), seen.lock()) {
                            seen.insert(pid, t);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        });
        Tracker { watch: self.clone(), before, seen, stop, thread }
    }
}

impl Tracker {
    pub fn finish(mut self) -> CpuUse {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut after = self.watch.snapshot();
        if let Ok(seen) = self.seen.lock() {
            for (pid, ticks) in seen.iter() {
                after.pg.entry(*pid).or_insert(*ticks);
            }
        }
        after.since(&self.before)
    }
}

impl Snapshot {
    pub fn since(&self, before: &Snapshot) -> CpuUse {
        let hz = clk_tck();
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let busy = self.machine.0.saturating_sub(before.machine.0) as f64;
        let total = self.machine.1.saturating_sub(before.machine.1) as f64;
        // A process that started in between counts from zero; one that
        // ended is lost (pools and pgbench keep their connections).
        let pg: u64 = self.pg.iter().map(|(pid, t)| t.saturating_sub(before.pg.get(pid).copied().unwrap_or(0))).sum();
        let server_s = self.servers.saturating_sub(before.servers) as f64 / hz;
        let pg_s = pg as f64 / hz;
        let self_s = self.me.saturating_sub(before.me) as f64 / hz;
        // /proc/stat ticks are per CPU, so busy ticks are CPU seconds × hz.
        let machine_s = busy / hz;
        CpuUse {
            machine_busy_pct: if total > 0.0 { 100.0 * busy / total } else { 0.0 },
            cores,
            server_s,
            pg_s,
            self_s,
            other_s: (machine_s - server_s - pg_s - self_s).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id() as i32;
        let (_, ppid) = proc_ticks(me).expect("own /proc entry");
        assert!(ppid > 0);
        assert!(children_of(ppid).contains(&me));
        let watch = Watch::default();
        let a = watch.snapshot();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        let used = watch.snapshot().since(&a);
        assert!(used.machine_busy_pct >= 0.0 && used.machine_busy_pct <= 100.0);
    }
}
