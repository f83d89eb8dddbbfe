//! What the tool reads from and sets on the operating system: `/proc` figures of a process,
//! the open-file limit, and CPU pinning.

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

/// CPU time (user + system, all threads, including exited ones) of a process in seconds,
/// from fields 14 and 15 of `/proc/PID/stat`. Resolution: one clock tick (usually 10 ms).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / rustix::param::clock_ticks_per_second() as f64)
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
}
