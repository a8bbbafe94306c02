//! Phase 1, the cold sweep: one handshake for each never-seen name of a
//! chunk, a few connections at a time, with the server's CPU (the
//! worker's threads included) and its Redis's CPU apart.

use std::collections::BTreeMap;
use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dyncert_testkit::scrape_metrics;

use super::SweepCfg;
use crate::client::Client;
use crate::host::{
    cpu_busy_ns, self_cpu_ns, task_cpu_ns, thread_cpu_delta, thread_cpu_ns, thread_sys_ns,
};
use crate::load::{self, Tally};

/// The pid of the redis-server listening on `port` (its title names the
/// address), for its CPU time.
pub(super) fn redis_pid(port: u16) -> Option<u32> {
    let tag = format!(":{port}");
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        (cmd.starts_with("redis-server") && cmd.split_whitespace().any(|w| w.ends_with(&tag)))
            .then_some(pid)
    })
}

/// One handshake for each of `names`, `concurrency` at a time: a slice of
/// `into`'s load.
pub(super) fn sweep_slice(
    into: &mut SweepCfg,
    client: &Arc<Client>,
    port: u16,
    worker: u32,
    redis: Option<u32>,
    names: &Arc<Vec<String>>,
    concurrency: usize,
) {
    let next = Arc::new(AtomicUsize::new(0));
    let l = &mut into.load;
    let hs0 = l.lat_us.len() as u64;
    let r0 = redis.map(task_cpu_ns).unwrap_or(0);
    let t0 = thread_cpu_ns(worker);
    let s0 = thread_sys_ns(worker);
    let (w0, b0, c0) = (task_cpu_ns(worker), cpu_busy_ns(0), self_cpu_ns());
    let start = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|t| {
            let (next, names, client) = (next.clone(), names.clone(), client.clone());
            std::thread::spawn(move || {
                load::pin_client_thread(t);
                let mut tally = Tally::default();
                while let Some(n) = names.get(next.fetch_add(1, Ordering::Relaxed)) {
                    tally.handshake(&client, port, n);
                }
                tally
            })
        })
        .collect();
    for t in threads {
        t.join().expect("sweep thread").add_to(l);
    }
    let wall = start.elapsed().as_nanos() as u64;
    let cpu = task_cpu_ns(worker).saturating_sub(w0);
    l.slices.push((l.lat_us.len() as u64 - hs0, wall, cpu));
    l.wall_ns += wall;
    l.worker_cpu_ns += cpu;
    l.server_cpu_busy_ns += cpu_busy_ns(0).saturating_sub(b0);
    l.client_cpu_ns += self_cpu_ns().saturating_sub(c0);
    into.redis_cpu_ns += redis.map(task_cpu_ns).unwrap_or(0).saturating_sub(r0);
    for (k, v) in thread_cpu_delta(&t0, &thread_cpu_ns(worker)) {
        *into.threads.entry(k).or_default() += v;
    }
    for (k, v) in thread_cpu_delta(&s0, &thread_sys_ns(worker)) {
        *into.threads_sys.entry(k).or_default() += v;
    }
}

/// What the module says about a sweep: `dyncert_handshakes_total` by
/// source, and the mean Redis fetch and time parked (ms).
pub(super) fn module_view(mport: u16) -> (BTreeMap<String, f64>, f64, f64) {
    let m = scrape_metrics(mport);
    let prefix = "dyncert_handshakes_total{source=\"";
    let sources =
        m.0.iter()
            .filter_map(|(k, &v)| {
                let src = k.strip_prefix(prefix)?.split('"').next()?.to_owned();
                (v > 0.0).then_some((src, v))
            })
            .collect();
    let mean_ms = |sum: &str, count: &str| m.sum(sum) * 1000.0 / m.sum(count).max(1.0);
    (
        sources,
        mean_ms(
            "dyncert_fetch_duration_seconds_sum{source=\"redis\"}",
            "dyncert_fetch_duration_seconds_count{source=\"redis\"}",
        ),
        mean_ms(
            "dyncert_park_duration_seconds_sum",
            "dyncert_park_duration_seconds_count",
        ),
    )
}
