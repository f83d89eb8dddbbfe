//! What the tool reads from and sets on the operating system: `/proc` figures of a process,
//! the open-file limit, and CPU pinning.

use std::collections::BTreeMap;
use std::time::Instant;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns (soft, hard) afterwards. Child
/// processes (workers, spawned servers) inherit the raised limit.
pub fn raise_nofile_limit() -> (u64, u64) {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum });
    }
    let now = getrlimit(Resource::Nofile);
    (now.current.unwrap_or(u64::MAX), now.maximum.unwrap_or(u64::MAX))
}

/// Pins the calling thread, and so every thread and process it starts afterwards, to `cpu`.
pub fn pin_current_thread(cpu: usize) -> Result<(), String> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))
}

/// CPUs this process may run on.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map(usize::from).unwrap_or(1)
}

/// Resident set size of a process in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The command name and the CPU time (user + system) in seconds of a `/proc/…/stat` line, from
/// fields 2, 14 and 15. Resolution: one clock tick (usually 10 ms).
fn stat_cpu(stat: &str) -> Option<(&str, f64)> {
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, (utime + stime) as f64 / rustix::param::clock_ticks_per_second() as f64))
}

/// CPU time (user + system, all threads, including exited ones) of a process in seconds,
/// from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    Some(stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?.1)
}

/// CPU seconds of a process's live threads, summed by what they do: Herald names its
/// threads (`herald-ws`: WebSocket connections; `herald-cluster`: the NATS connection, stores
/// and feeds) and leaves tokio's default name on its HTTP runtime's (`tokio-rt-worker`).
/// Keys: `http`, `ws`, `cluster`, `other`. A thread that exited is not counted (its CPU is
/// only in the process's total).
pub fn thread_cpu_seconds(pid: u32) -> Option<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some((name, seconds)) = stat_cpu(&stat) else { continue };
        let role = match name {
            "tokio-rt-worker" => "http",
            "herald-ws" => "ws",
            "herald-cluster" => "cluster",
            _ => "other",
        };
        *out.entry(role.to_owned()).or_insert(0.0) += seconds;
    }
    Some(out)
}

/// What each role of [`thread_cpu_seconds`] used between two readings.
pub fn thread_cpu_between(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after.iter().map(|(k, a)| (k.clone(), (a - before.get(k).unwrap_or(&0.0)).max(0.0))).collect()
}

/// CPU time all processes on the machine have used (user, nice, system, irq, softirq,
/// steal from the `cpu` line of `/proc/stat`), in seconds.
pub fn system_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal …
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7).unwrap_or(&0);
    Some(busy as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// Pids of the kernel's softirq threads (`ksoftirqd/N`): loopback TCP work that the kernel
/// defers under load runs there, charged to neither the server nor the clients.
pub fn ksoftirqd_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .collect()
}

/// A point-in-time sample of a process: wall clock, CPU seconds and RSS.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub cpu_s: Option<f64>,
    pub rss_kib: Option<u64>,
}

impl Sample {
    pub fn take(pid: Option<u32>) -> Sample {
        Sample { at: Instant::now(), cpu_s: pid.and_then(cpu_seconds), rss_kib: pid.and_then(rss_kib) }
    }

    /// CPU seconds used between `self` and `later`.
    pub fn cpu_until(&self, later: &Sample) -> Option<f64> {
        Some(later.cpu_s? - self.cpu_s?)
    }

    /// CPU used between `self` and `later` as a percentage of one core.
    pub fn cpu_percent_until(&self, later: &Sample) -> Option<f64> {
        let wall = later.at.duration_since(self.at).as_secs_f64();
        (wall > 0.0).then_some(100.0 * self.cpu_until(later)? / wall)
    }
}

/// One-line description of the machine for reports.
pub fn machine() -> crate::report::Machine {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    crate::report::Machine {
        cpus_online: std::fs::read_to_string("/sys/devices/system/cpu/online")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cpu_model,
        memory_gib: mem_kib as f64 / (1024.0 * 1024.0),
        kernel,
        nofile_limit: raise_nofile_limit().1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(cpu_seconds(pid).is_some());
    }

    #[test]
    fn threads_are_counted_by_their_name() {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let busy = std::thread::Builder::new()
            .name("herald-cluster".into())
            .spawn(move || {
                let start = Instant::now();
                let mut x = 0u64;
                while start.elapsed() < std::time::Duration::from_millis(150) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                let _ = wait.recv();
            })
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let roles = thread_cpu_seconds(std::process::id()).unwrap();
        done.send(()).unwrap();
        busy.join().unwrap();
        assert!(roles.get("cluster").is_some_and(|s| *s >= 0.05), "{roles:?}");
        assert!(!roles.contains_key("ws"), "{roles:?}");
    }
}
