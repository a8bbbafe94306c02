//! The machine the benchmark measures on: its CPUs, pinning to them, and
//! what /proc says about CPU time and memory.

use std::collections::BTreeMap;
use std::fs;
use std::sync::OnceLock;

// --- CPUs -------------------------------------------------------------------

/// CPUs this process may use, as found at the first call (before the bench
/// pins itself: afterwards the answer would be the pinned set).
pub fn cpus() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// Pins the calling thread to `cpus` (children it spawns inherit this).
pub fn pin_to(cpus: &[usize]) {
    if cpus.is_empty() {
        return;
    }
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: CPU_SET writes one bit of the set we own; c < CPU_SETSIZE
        // since it is an index below available_parallelism.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: sched_setaffinity(2) on the calling thread (pid 0) reads the
    // set we pass, of the size we pass.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

/// CPUs for the load generator and everything else the bench runs (Redis,
/// the API server): all but CPU 0, which belongs to the nginx worker.
pub fn client_cpus() -> Vec<usize> {
    (1..cpus()).collect()
}

// --- /proc --------------------------------------------------------------------

/// On-CPU time of all threads of `pid`, in nanoseconds (schedstat).
pub fn task_cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// On-CPU time of the threads of `pid` by thread name (`comm`: nginx's
/// event loop is `nginx`, the module's threads `dyncert-...`), in
/// nanoseconds.
pub fn thread_cpu_ns(pid: u32) -> BTreeMap<String, u64> {
    by_thread_name(pid, "schedstat", |s| {
        s.split_whitespace().next()?.parse::<u64>().ok()
    })
}

/// `read` of each thread's `/proc/PID/task/TID/FILE`, summed by thread
/// name (0 where it gives nothing).
fn by_thread_name(
    pid: u32,
    file: &str,
    read: impl Fn(&str) -> Option<u64>,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let v = fs::read_to_string(t.path().join(file))
            .ok()
            .and_then(|s| read(&s))
            .unwrap_or(0);
        *out.entry(comm.trim().to_owned()).or_default() += v;
    }
    out
}

/// Time the threads of `pid` spent in the kernel, by thread name as in
/// [`thread_cpu_ns`], in nanoseconds (`stime` of `/proc/PID/task/TID/stat`,
/// in clock ticks: 10 ms each, so only sums over seconds of CPU mean
/// something).
pub fn thread_sys_ns(pid: u32) -> BTreeMap<String, u64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    by_thread_name(pid, "stat", |s| Some(stime_ticks(s)? * 1_000_000_000 / hz))
}

/// `stime` of a `/proc/.../stat` line: the 15th field, the 13th after the
/// parenthesised command name (which may hold spaces and parentheses).
fn stime_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(12)?.parse().ok()
}

/// `after - before`, thread by thread.
pub fn thread_cpu_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, &v)| (k.clone(), v.saturating_sub(*before.get(k).unwrap_or(&0))))
        .collect()
}

/// CPU time of this process, all threads, in nanoseconds.
pub fn self_cpu_ns() -> u64 {
    // SAFETY: an all-zero rusage is valid; getrusage(2) fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a pointer to our rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(ru.ru_utime) + us(ru.ru_stime)) * 1000
}

/// Busy (non-idle, non-iowait) time of one CPU, in nanoseconds.
pub fn cpu_busy_ns(cpu: usize) -> u64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let tag = format!("cpu{cpu} ");
    let Some(line) = stat.lines().find(|l| l.starts_with(&tag)) else {
        return 0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    busy * 1_000_000_000 / hz
}

pub fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stime_is_read_after_the_command_name() {
        let line = "4242 (dyncert (x) 1) S 1 4242 4242 0 -1 4194560 90 0 0 0 17 23 0 0 20 0 3 0";
        assert_eq!(stime_ticks(line), Some(23));
        assert_eq!(stime_ticks("4242 (nginx) S 1"), None);
        assert_eq!(stime_ticks("no parenthesis"), None);
    }
}
