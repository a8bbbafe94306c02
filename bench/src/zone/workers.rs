//! Phases 2, 3 and 4 with W workers, each handshake sent to a chosen
//! worker (`route.rs`): the Redis commands a name costs the workers that
//! did not fetch it, the zone's bytes per name, and the memory of all
//! nginx processes once every worker has handshaked every name, against
//! stock nginx doing the same.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dyncert_testkit::{scrape_metrics, Nginx, Pki, Redis, Reply};

use super::sweep::redis_pid;
use super::{
    dyncert_servers, start_workers, stock_servers, Commands, Memory, Touches, ZoneArgs, ZoneFill,
    STATIC,
};
use crate::host::{cpu_busy_ns, cpus, pin_to, self_cpu_ns, task_cpu_ns};
use crate::route::Routes;
use crate::{step, Problems};

/// Source ports per worker for each client thread.
const PORTS_PER_CALLER: usize = 2;

/// Sends each (worker, name) of `items` to its worker, from `callers`
/// threads free to run on every CPU.
fn touch(routes: &Routes, callers: usize, items: &[(usize, &str)]) -> Touches {
    let next = AtomicUsize::new(0);
    let all = Mutex::new(Touches::default());
    let start = Instant::now();
    std::thread::scope(|s| {
        for caller in 0..callers {
            let (next, all) = (&next, &all);
            s.spawn(move || {
                pin_to(&(0..cpus()).collect::<Vec<_>>());
                let mut t = Touches::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(w, name)) = items.get(i) else {
                        break;
                    };
                    let r = routes.touch(w, caller, name);
                    t.misrouted += r.misrouted;
                    match (r.answer, r.error) {
                        (Some(a), _) if a.names_sni => {
                            t.handshakes += 1;
                            *t.sources.entry(a.source).or_default() += 1;
                        }
                        (Some(_), _) => t.mismatches += 1,
                        (None, e) => {
                            t.errors += 1;
                            t.first_error = t.first_error.or(e);
                        }
                    }
                }
                let mut all = all.lock().unwrap();
                all.handshakes += t.handshakes;
                all.errors += t.errors;
                all.mismatches += t.mismatches;
                all.misrouted += t.misrouted;
                if all.first_error.is_none() {
                    all.first_error = t.first_error;
                }
                for (k, v) in t.sources {
                    *all.sources.entry(k).or_default() += v;
                }
            });
        }
    });
    let mut t = all.into_inner().unwrap();
    t.secs = start.elapsed().as_secs_f64();
    t
}

/// Every name to every worker: worker w walks the names from its own
/// offset, so a name's first toucher is long done when the next worker
/// reaches it (the others then load it from the zone, not from Redis).
fn every_name_everywhere(names: &[String], workers: usize) -> Vec<(usize, &str)> {
    let n = names.len();
    (0..n * workers)
        .map(|k| {
            let (w, j) = (k % workers, k / workers);
            (w, names[(j + w * n / workers) % n].as_str())
        })
        .collect()
}

/// Calls of each Redis command (`INFO commandstats`), INFO itself left out.
fn command_calls(redis: &Redis) -> BTreeMap<String, u64> {
    let Reply::Bulk(Some(text)) = redis.cmd(&["INFO", "commandstats"]) else {
        panic!("INFO commandstats: not a bulk string");
    };
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| {
            let (cmd, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            (cmd != "info").then(|| (cmd.to_owned(), calls))
        })
        .collect()
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, &v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Total PSS (KiB) of nginx's master and workers.
fn nginx_pss(ng: &Nginx) -> u64 {
    std::iter::once(ng.master_pid())
        .chain(ng.worker_pids())
        .map(pss_kib)
        .sum()
}

fn pss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Busy time of every CPU, and the CPU time of the bench, nginx and
/// Redis: the difference is other work on the machine.
struct Machine {
    busy: u64,
    ours: u64,
    at: Instant,
}

impl Machine {
    fn ours(pids: &[u32]) -> u64 {
        self_cpu_ns() + pids.iter().map(|&p| task_cpu_ns(p)).sum::<u64>()
    }
    fn now(pids: &[u32]) -> Machine {
        Machine {
            busy: (0..cpus()).map(cpu_busy_ns).sum(),
            ours: Machine::ours(pids),
            at: Instant::now(),
        }
    }
    /// Share of all CPUs used by other processes since `self`.
    fn others_since(&self, pids: &[u32]) -> f64 {
        let busy: u64 = (0..cpus()).map(cpu_busy_ns).sum::<u64>() - self.busy;
        let ours = Machine::ours(pids).saturating_sub(self.ours);
        busy.saturating_sub(ours) as f64
            / (self.at.elapsed().as_nanos() as f64 * cpus() as f64).max(1.0)
    }
}

fn learn_routes(ng: &Nginx, callers: usize, problems: &mut Problems) -> Option<Routes> {
    let pids: Vec<u32> = ng.worker_pids().into_iter().collect();
    let r = Routes::learn(ng.port, &pids, None, callers, PORTS_PER_CALLER);
    if r.is_none() {
        problems.notes.push(format!(
            "could not find source ports reaching each of the workers {pids:?} \
             (listen ... reuseport)"
        ));
    }
    r
}

#[allow(clippy::too_many_arguments)]
pub(super) fn workers_phases(
    a: &ZoneArgs,
    pki: &Pki,
    dir: &Path,
    certs: &Path,
    names: &Arc<Vec<String>>,
    redis: &Redis,
    zmib: usize,
    problems: &mut Problems,
) -> (Commands, ZoneFill, Memory) {
    let callers = a.concurrency;
    let mport = dyncert_testkit::free_port();
    let ng = start_workers(
        pki,
        &dir.join("zone-w"),
        &dyncert_servers(redis.port, Some(zmib), a.hot, mport, true),
        true,
        a.workers,
    );
    step(&format!(
        "{} workers: learning which source ports reach which worker",
        a.workers
    ));
    let routes = learn_routes(&ng, callers, problems);
    let dyncert_idle = nginx_pss(&ng);

    // --- 2. Redis commands of the other workers -----------------------------
    let sample: Vec<&str> = names
        .iter()
        .step_by((names.len() / a.samples.min(names.len())).max(1))
        .map(String::as_str)
        .collect();
    let mut commands = Commands {
        sample: sample.len(),
        pass1: Touches::default(),
        pass2: Touches::default(),
        cmds1: BTreeMap::new(),
        cmds2: BTreeMap::new(),
        shared_loads2: 0.0,
    };
    let mut zone = ZoneFill::default();
    let mut dyncert_touch = Touches::default();
    let mut dyncert = 0;
    let ours = |ng: &Nginx| -> Vec<u32> {
        let mut p: Vec<u32> = std::iter::once(ng.master_pid())
            .chain(ng.worker_pids())
            .collect();
        p.extend(redis_pid(redis.port));
        p
    };
    let mut other_load: f64 = 0.0;
    if let Some(routes) = &routes {
        step(&format!(
            "Redis commands: {} names to worker 0, then to each of the {} others",
            sample.len(),
            a.workers - 1
        ));
        let c0 = command_calls(redis);
        let first: Vec<(usize, &str)> = sample.iter().map(|&n| (0, n)).collect();
        commands.pass1 = touch(routes, callers, &first);
        let c1 = command_calls(redis);
        let loads1 = scrape_metrics(mport).sum("dyncert_shared_loads_total");
        let others: Vec<(usize, &str)> = (1..a.workers)
            .flat_map(|w| sample.iter().map(move |&n| (w, n)))
            .collect();
        commands.pass2 = touch(routes, callers, &others);
        let c2 = command_calls(redis);
        commands.shared_loads2 = scrape_metrics(mport).sum("dyncert_shared_loads_total") - loads1;
        commands.cmds1 = delta(&c0, &c1);
        commands.cmds2 = delta(&c1, &c2);
        for (what, t) in [
            ("first pass", &commands.pass1),
            ("second pass", &commands.pass2),
        ] {
            problems.check(
                &format!("Redis commands, {what}"),
                t.mismatches,
                t.errors,
                &t.first_error,
            );
        }

        // --- 3, 4. every name in every worker ----------------------------------
        step(&format!(
            "memory: {} names x {} workers, dyncert (hot set {}, zone {zmib} MiB)",
            names.len(),
            a.workers,
            a.hot
        ));
        let items = every_name_everywhere(names, a.workers);
        let m = Machine::now(&ours(&ng));
        dyncert_touch = touch(routes, callers, &items);
        other_load = other_load.max(m.others_since(&ours(&ng)));
        problems.check(
            "memory, dyncert",
            dyncert_touch.mismatches,
            dyncert_touch.errors,
            &dyncert_touch.first_error,
        );
        step(&format!("  {:.1}s", dyncert_touch.secs));
        dyncert = nginx_pss(&ng);
        let z = scrape_metrics(mport);
        zone = ZoneFill {
            total: z.get("dyncert_shared_zone_bytes{state=\"total\"}"),
            free: z.get("dyncert_shared_zone_bytes{state=\"free\"}"),
            records: z.get("dyncert_shared_zone_records"),
            intermediates: z.sum("dyncert_shared_zone_intermediates"),
            evictions: z.sum("dyncert_shared_zone_evictions_total"),
        };
    }
    drop(routes);
    drop(ng);

    let ng = start_workers(
        pki,
        &dir.join("stock-w"),
        &stock_servers(certs, names.len(), true),
        false,
        a.workers,
    );
    let mut stock_touch = Touches::default();
    let stock_idle = nginx_pss(&ng);
    let mut stock = 0;
    // Stock nginx answers no name without its files: learn with the static one.
    let pids: Vec<u32> = ng.worker_pids().into_iter().collect();
    let routes = Routes::learn(ng.port, &pids, Some(STATIC), callers, PORTS_PER_CALLER);
    if let Some(routes) = &routes {
        step(&format!(
            "memory: {} names x {} workers, stock ssl_certificate_cache",
            names.len(),
            a.workers
        ));
        let items = every_name_everywhere(names, a.workers);
        let m = Machine::now(&ours(&ng));
        stock_touch = touch(routes, callers, &items);
        other_load = other_load.max(m.others_since(&ours(&ng)));
        problems.check(
            "memory, stock",
            stock_touch.mismatches,
            stock_touch.errors,
            &stock_touch.first_error,
        );
        step(&format!("  {:.1}s", stock_touch.secs));
        stock = nginx_pss(&ng);
    } else {
        problems.notes.push(format!(
            "stock: could not find source ports reaching each of the workers {pids:?}"
        ));
    }
    drop(ng);
    (
        commands,
        zone,
        Memory {
            dyncert_idle,
            dyncert,
            stock_idle,
            stock,
            dyncert_touch,
            stock_touch,
            other_load,
        },
    )
}
