//! `dyncert-bench zone`: the shared zone of issue 11 against its
//! baselines, in one run.
//!
//! 1. Cold sweep: the first handshake of each of N never-seen names, a
//!    few connections at a time, for dyncert with Redis and the shared
//!    zone, dyncert without the zone, and stock nginx
//!    (`ssl_certificate $ssl_server_name` files + `ssl_certificate_cache`),
//!    one worker on CPU 0; the names are swept in chunks, the three taking
//!    turns, so drift on a shared machine hits all alike.
//! 2. Redis commands of the other workers: W workers; a sample of names
//!    is handshaked once by worker 0 (which fetches), then once by each
//!    other worker; `INFO commandstats` before and after the second pass.
//! 3. Zone bytes per name, from the metrics, with N names in the zone.
//! 4. Memory: total PSS of all nginx processes once every worker has
//!    handshaked every name, against stock `ssl_certificate_cache`.
//! 5. A hot-set miss served from the zone, interleaved with hot
//!    handshakes (the reference), one at a time.
//! 6. Hot handshakes against the static-certificate ceiling, interleaved
//!    in rounds (the default mode's method).
//! 7. nginx start and reload with the zone configured: N names in Redis
//!    against none, and a reload keeping a zone of N records against an
//!    empty one.
//!
//! Phases 2 and 4 send each handshake to a chosen worker (`route.rs`).
//! Every handshake checks that the leaf names the SNI; a mismatch or a
//! failed handshake makes the exit status 1, a missed target does not.

mod hot;
mod parse;
mod report;
mod sweep;
mod workers;

pub(crate) use report::SWEEP_VS_STOCK;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use dyncert_testkit::{module_path, nginx_bin, scrape_metrics, Nginx, Pki, Redis};

use crate::client::Client;
use crate::host::{client_cpus, cpus, pin_to};
use crate::lifecycle::{reload_times, start_times};
use crate::load::{self, Load};
use crate::servers::{http_block, opts, start_nginx};
use crate::{for_each_flag, step, write_files, Problems};
use hot::{hot_rounds, zone_misses};
use sweep::{module_view, redis_pid, sweep_slice};
use workers::workers_phases;

pub struct ZoneArgs {
    pub names: usize,
    /// Names of the cold sweep (the first ones; default all).
    pub sweep: usize,
    pub workers: usize,
    pub hot: usize,
    pub concurrency: usize,
    pub rounds: usize,
    pub samples: usize,
    pub seconds: f64,
    pub repeat: usize,
    pub quick: bool,
    pub keep: bool,
}

const USAGE: &str = "usage: dyncert-bench zone [--names N] [--workers W] [--hot H] [--quick] \
[--sweep K] [--concurrency C] [--rounds R] [--samples K] [--seconds S] [--repeat R] [--keep]
  --names N        names (default 10000; the memory target is set at 100000)
  --workers W      workers of the multi-worker phases (default 4)
  --hot H          dyncert_cache max= (the per-worker hot set; default N/10)
  --quick          N=300, 3 rounds, 100 samples, 1.5 s of hot load, 3 repeats (CI)
  --sweep K        names of the cold sweep, the first K (default N; more than H + samples)
  --concurrency C  connections of the cold sweep and the hot load (default 8)
  --rounds R       rounds in which configurations take turns (default 10)
  --samples K      names of the Redis-command count and zone misses timed (default 1000)
  --seconds S      hot handshakes measured per configuration (default 6)
  --repeat R       nginx starts and reloads measured per case (default 9)
  --keep           keep the temporary directory";

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2)
}

pub fn parse(argv: &[String]) -> ZoneArgs {
    let mut a = ZoneArgs {
        names: 10_000,
        sweep: 0,
        workers: 4,
        hot: 0,
        concurrency: 8,
        rounds: 10,
        samples: 1000,
        seconds: 6.0,
        repeat: 9,
        quick: false,
        keep: false,
    };
    if argv.iter().any(|s| s == "--quick") {
        a = ZoneArgs {
            names: 300,
            rounds: 3,
            samples: 100,
            seconds: 1.5,
            repeat: 3,
            quick: true,
            ..a
        };
    }
    for_each_flag(argv, &mut a.keep, usage, |flag, v| match flag {
        "--names" => a.names = v as usize,
        "--sweep" => a.sweep = v as usize,
        "--workers" => a.workers = v as usize,
        "--hot" => a.hot = v as usize,
        "--concurrency" => a.concurrency = v as usize,
        "--rounds" => a.rounds = v as usize,
        "--samples" => a.samples = v as usize,
        "--seconds" => a.seconds = v,
        "--repeat" => a.repeat = v as usize,
        _ => usage(),
    });
    if a.hot == 0 {
        a.hot = (a.names / 10).max(1);
    }
    if a.names < 10 || a.workers < 2 || a.concurrency == 0 || a.rounds == 0 || a.repeat == 0 {
        usage()
    }
    // Phase 5 times names the sweep pushed out of the hot set: the sweep
    // covers at least the hot set and the samples (as names allow).
    a.sweep = if a.sweep == 0 {
        a.names
    } else {
        a.sweep.max(a.hot + a.samples).min(a.names)
    };
    a.rounds = a.rounds.min(a.sweep);
    a
}

// --- results -------------------------------------------------------------------

/// One configuration of the cold sweep.
pub struct SweepCfg {
    pub label: String,
    pub load: Load,
    /// CPU of its redis-server (none for stock), over the sweep.
    pub redis_cpu_ns: u64,
    /// The worker's CPU by thread, over the sweep.
    pub threads: BTreeMap<String, u64>,
    /// Of that, the time in the kernel.
    pub threads_sys: BTreeMap<String, u64>,
    /// `dyncert_handshakes_total` by source after the sweep, and the mean
    /// Redis fetch and time parked, ms (dyncert).
    pub sources: BTreeMap<String, f64>,
    pub fetch_ms: f64,
    pub park_ms: f64,
}

/// Handshakes sent to chosen workers.
#[derive(Default)]
pub struct Touches {
    pub handshakes: u64,
    pub errors: u64,
    pub mismatches: u64,
    pub misrouted: u64,
    pub first_error: Option<String>,
    /// `$dyncert_source` of each handshake.
    pub sources: BTreeMap<String, u64>,
    pub secs: f64,
}

/// Phase 2.
pub struct Commands {
    pub sample: usize,
    pub pass1: Touches,
    pub pass2: Touches,
    /// Redis commands (INFO excluded) by name, during each pass.
    pub cmds1: BTreeMap<String, u64>,
    pub cmds2: BTreeMap<String, u64>,
    pub shared_loads2: f64,
}

/// Phase 3: the zone's metrics with every name stored.
#[derive(Default)]
pub struct ZoneFill {
    pub total: f64,
    pub free: f64,
    pub records: f64,
    pub intermediates: f64,
    pub evictions: f64,
}

/// Phase 4: total PSS (KiB) of master and workers.
pub struct Memory {
    pub dyncert_idle: u64,
    pub dyncert: u64,
    pub stock_idle: u64,
    pub stock: u64,
    pub dyncert_touch: Touches,
    pub stock_touch: Touches,
    /// Share of the machine's CPU used by other processes while touching.
    pub other_load: f64,
}

/// Phase 5: handshake latencies (us), the hot reference and the misses.
#[derive(Default)]
pub struct Misses {
    pub hot_us: Vec<u32>,
    pub miss_us: Vec<u32>,
    pub unexpected: u64,
    pub first_unexpected: Option<String>,
    pub mismatches: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Deltas over the measurement: shared-zone loads, parked
    /// connections, and their mean time parked.
    pub shared_loads: f64,
    pub parks: f64,
    pub park_ms_mean: f64,
    pub parks_within_1ms: f64,
    /// The worker's CPU (us) per miss beyond a hot handshake, by thread.
    pub cpu_per_miss_us: BTreeMap<String, f64>,
}

/// Phase 7.
pub struct Life {
    pub labels: Vec<String>,
    pub start: Vec<Vec<f64>>,
    pub reload_labels: Vec<String>,
    pub reload: Vec<Vec<f64>>,
    /// Records in the zone of the reloaded nginx.
    pub reload_records: f64,
}

pub struct Results {
    pub sweep: Vec<SweepCfg>,
    pub commands: Commands,
    pub zone: ZoneFill,
    pub memory: Memory,
    pub misses: Misses,
    pub hot: Vec<crate::Config>,
    pub hot_names: usize,
    pub life: Life,
    pub zone_size_mib: usize,
    pub parse: parse::ParseCost,
}

// --- the run -------------------------------------------------------------------

/// The zone's size: room for every name with a wide margin (a record
/// takes about 1 KiB), so nothing is evicted during the run.
fn zone_mib(names: usize) -> usize {
    (names * 3 / 1024 + 16).next_power_of_two()
}

/// The `http {}` servers of dyncert: Redis on `redis_port`, the shared
/// zone when `zone_mib` is set, a hot set of `hot`, metrics on `mport`.
fn dyncert_servers(
    redis_port: u16,
    zone_mib: Option<usize>,
    hot: usize,
    mport: u16,
    reuseport: bool,
) -> String {
    let zone = zone_mib
        .map(|m| format!("dyncert_shared_zone dyncert:{m}m;\n"))
        .unwrap_or_default();
    let rp = if reuseport { " reuseport" } else { "" };
    format!(
        "dyncert_redis redis://127.0.0.1:{redis_port}/0;\n{zone}\
         dyncert_cache max={hot} valid=1h stale=1h negative=1m;\n\
         server {{ listen 127.0.0.1:{mport}; location / {{ dyncert_metrics; }} }}\n\
         server {{ listen 127.0.0.1:@PORT@ ssl{rp}; ssl_certificate default.crt; \
         ssl_certificate_key default.key; dyncert on; \
         return 200 \"$pid $dyncert_source\\n\"; }}"
    )
}

/// Stock nginx over the same names as files. inactive= defaults to 10s,
/// which would drop names between two touches: the same lifetime as
/// dyncert's. Its max= counts files: two per name.
fn stock_servers(certs: &Path, names: usize, reuseport: bool) -> String {
    let c = certs.display();
    let rp = if reuseport { " reuseport" } else { "" };
    format!(
        "ssl_certificate_cache max={} inactive=1h valid=1h;\n\
         server {{ listen 127.0.0.1:@PORT@ ssl{rp}; \
         ssl_certificate {c}/$ssl_server_name.crt; \
         ssl_certificate_key {c}/$ssl_server_name.key; return 200 \"$pid\\n\"; }}",
        2 * names + 100
    )
}

fn static_servers(certs: &Path) -> String {
    let c = certs.display();
    format!(
        "server {{ listen 127.0.0.1:@PORT@ ssl; ssl_certificate {c}/{STATIC}.crt; \
         ssl_certificate_key {c}/{STATIC}.key; return 200 \"$pid\\n\"; }}"
    )
}

/// The static configuration's name; stock nginx also has its files, which
/// lets its workers answer a name outside the N (learning routes).
const STATIC: &str = "static.zone.test";

/// nginx with `workers` workers, free to run on every CPU (the master
/// inherits the bench's pinning, and workers inherit the master's).
fn start_workers(pki: &Pki, prefix: &Path, servers: &str, module: bool, workers: usize) -> Nginx {
    let all: String = "1".repeat(cpus());
    Nginx::start(
        pki,
        &http_block(servers),
        opts(prefix, module)
            .workers(workers as u32)
            .worker_cpu_affinity(&all),
    )
}

pub fn run(a: &ZoneArgs, dir: &Path) -> i32 {
    step(&format!("nginx {}", nginx_bin().display()));
    step(&format!("module {}", module_path().display()));
    let mut problems = Problems::default();
    let threads = cpus();
    let pki = Pki::new();
    let names: Vec<String> = (0..a.names).map(|i| format!("z{i}.zone.test")).collect();
    step(&format!(
        "generating {} ECDSA P-256 certificates on {threads} threads",
        a.names + 1
    ));
    let t0 = Instant::now();
    let sites = pki.leaves_pem(names.clone(), 1000, threads);
    let static_site = pki.leaf_pem(STATIC.into(), 999);
    let certs = dir.join("certs");
    fs::create_dir_all(&certs).unwrap();
    write_files(&certs, &pki, std::slice::from_ref(&static_site), 1);
    write_files(&certs, &pki, &sites, threads);
    step(&format!(
        "  certificates and files {:.1}s",
        t0.elapsed().as_secs_f64()
    ));

    // From here on: single-worker nginx on CPU 0, everything else elsewhere.
    let two_cpus = cpus() > 1;
    if two_cpus {
        pin_to(&client_cpus());
    }
    let redis = Redis::start();
    let redis_w = Redis::start();
    let redis_empty = Redis::start();
    let t0 = Instant::now();
    redis.put_leaves_pem(&pki, &sites);
    redis_w.put_leaves_pem(&pki, &sites);
    step(&format!(
        "{} records loaded into two redis-servers in {:.1}s",
        sites.len(),
        t0.elapsed().as_secs_f64()
    ));
    let parse_cost = parse::measure(&pki, &sites[..sites.len().min(500)]);
    drop(sites);
    let names = Arc::new(names);
    let zmib = zone_mib(a.names);

    // --- 1. cold sweep ------------------------------------------------------------
    let (mz, mn) = (dyncert_testkit::free_port(), dyncert_testkit::free_port());
    let ng_zone = start_nginx(
        &pki,
        &dir.join("zone"),
        &dyncert_servers(redis.port, Some(zmib), a.hot, mz, false),
        true,
    );
    let ng_nozone = start_nginx(
        &pki,
        &dir.join("nozone"),
        &dyncert_servers(redis.port, None, a.hot, mn, false),
        true,
    );
    let ng_stock = start_nginx(
        &pki,
        &dir.join("stock"),
        &stock_servers(&certs, a.names, false),
        false,
    );
    let client = Arc::new(Client::new());
    for (port, sni) in [
        (ng_zone.port, None),
        (ng_nozone.port, None),
        (ng_stock.port, Some(STATIC)),
    ] {
        for _ in 0..3 {
            if let Ok(c) = client.handshake(port, sni) {
                c.close();
            }
        }
    }
    let redis_pid = redis_pid(redis.port);
    let mut sweep = vec![
        SweepCfg::new("dyncert + shared zone (Redis)"),
        SweepCfg::new("dyncert, no zone (Redis)"),
        SweepCfg::new("stock $ssl_server_name + cache (files)"),
    ];
    let cfgs = [
        (ng_zone.port, ng_zone.worker_pid(), redis_pid),
        (ng_nozone.port, ng_nozone.worker_pid(), redis_pid),
        (ng_stock.port, ng_stock.worker_pid(), None),
    ];
    let swept = &names[..a.sweep];
    let chunk = a.sweep.div_ceil(a.rounds);
    let chunks: Vec<Arc<Vec<String>>> = swept.chunks(chunk).map(|c| Arc::new(c.to_vec())).collect();
    for (r, names) in chunks.iter().enumerate() {
        step(&format!(
            "cold sweep round {}/{}: {} never-seen names x 3 configurations",
            r + 1,
            chunks.len(),
            names.len()
        ));
        for k in 0..cfgs.len() {
            // Rotate the order so no configuration always runs first.
            let i = (k + r) % cfgs.len();
            let (port, worker, rpid) = cfgs[i];
            sweep_slice(
                &mut sweep[i],
                &client,
                port,
                worker,
                rpid,
                names,
                a.concurrency,
            );
        }
    }
    for (cfg, mport) in sweep.iter_mut().zip([Some(mz), Some(mn), None]) {
        let l = &cfg.load;
        problems.check(&cfg.label, l.mismatches, l.errors, &l.first_error);
        if let Some(m) = mport {
            (cfg.sources, cfg.fetch_ms, cfg.park_ms) = module_view(m);
            let fetched = cfg.sources.get("redis").copied().unwrap_or(0.0);
            if fetched as usize != a.sweep {
                problems.notes.push(format!(
                    "{}: {fetched} of {} sweep handshakes were fetched from Redis ({:?}): \
                     not a sweep of first touches",
                    cfg.label, a.sweep, cfg.sources
                ));
            }
        }
    }
    drop((ng_nozone, ng_stock));

    // --- 5. a hot-set miss served from the zone --------------------------------
    // The sweep touched chunk 0 first: with more than H names after it, its
    // names left the hot set but stay in the zone. The hot reference takes
    // turns through at most H/3 names, so each is touched again before H
    // newer names could push it out.
    let refs: Vec<String> = chunks
        .last()
        .unwrap()
        .iter()
        .take((a.hot / 3).clamp(1, 10))
        .cloned()
        .collect();
    let room = a.sweep.saturating_sub(a.hot + refs.len());
    let miss_names: Vec<String> = chunks[0]
        .iter()
        .take(a.samples.min(room))
        .cloned()
        .collect();
    let misses = if miss_names.is_empty() {
        step(&format!(
            "hot-set misses: none to measure, the hot set ({}) holds every swept name ({})",
            a.hot, a.sweep
        ));
        Misses::default()
    } else {
        step(&format!(
            "hot-set misses from the zone: {} names, each after a hot handshake",
            miss_names.len()
        ));
        zone_misses(ng_zone.port, ng_zone.worker_pid(), mz, &refs, &miss_names)
    };
    problems.check(
        "hot-set misses",
        misses.mismatches,
        misses.errors,
        &misses.first_error,
    );
    if misses.unexpected > 0 {
        problems.notes.push(format!(
            "hot-set misses: {} answers with an unexpected $dyncert_source (first: {})",
            misses.unexpected,
            misses.first_unexpected.clone().unwrap_or_default()
        ));
    }

    // --- 6. hot handshakes against a static certificate ----------------------
    let ng_static = start_nginx(&pki, &dir.join("static"), &static_servers(&certs), false);
    // H/2 names handshaked last are all in the hot set.
    let hot_names: Arc<Vec<String>> = Arc::new(
        swept
            .iter()
            .rev()
            .take((a.hot / 2).max(1))
            .cloned()
            .collect(),
    );
    step(&format!(
        "hot handshakes: {} names made hot, then static and dyncert in {} rounds",
        hot_names.len(),
        a.rounds
    ));
    let w = load::warm(ng_zone.port, &hot_names, a.concurrency);
    problems.check(
        "warming the hot set",
        w.mismatches,
        w.errors,
        &w.first_error,
    );
    let hot = hot_rounds(a, &client, &ng_static, &ng_zone, &hot_names);
    for c in &hot {
        let l = &c.load;
        problems.check(&c.label, l.mismatches, l.errors, &l.first_error);
    }
    let sample: Vec<String> = hot_names.iter().take(100).cloned().collect();
    let (bad, first_bad) = load::check_sources(ng_zone.port, &sample, "cache");
    if bad > 0 {
        problems.notes.push(format!(
            "hot handshakes: {bad} of {} sampled hot names were not served from the hot set \
             (first: {})",
            sample.len(),
            first_bad.unwrap_or_default()
        ));
    }
    drop(ng_static);

    // --- 2, 3, 4: W workers ------------------------------------------------------
    let (commands, zone, memory) =
        workers_phases(a, &pki, dir, &certs, &names, &redis_w, zmib, &mut problems);
    drop(redis_w);

    // --- 7. start and reload ------------------------------------------------------
    step(&format!(
        "nginx start and reload with the zone configured, {} times each",
        a.repeat
    ));
    let life = lifecycle(
        a,
        &pki,
        dir,
        &certs,
        &redis,
        &redis_empty,
        &ng_zone,
        mz,
        zmib,
        &mut problems,
    );
    let warnings: Vec<String> = ng_zone
        .error_log()
        .lines()
        .filter(|l| l.contains("[warn]") || l.contains("[error]") || l.contains("[alert]"))
        .map(str::to_owned)
        .collect();
    drop(ng_zone);

    report::print(
        a,
        two_cpus,
        &Results {
            sweep,
            commands,
            zone,
            memory,
            misses,
            hot,
            hot_names: hot_names.len(),
            life,
            zone_size_mib: zmib,
            parse: parse_cost,
        },
        &problems,
        &warnings,
    )
}

impl SweepCfg {
    fn new(label: &str) -> SweepCfg {
        SweepCfg {
            label: label.to_owned(),
            load: Load::default(),
            redis_cpu_ns: 0,
            threads: BTreeMap::new(),
            threads_sys: BTreeMap::new(),
            sources: BTreeMap::new(),
            fetch_ms: 0.0,
            park_ms: 0.0,
        }
    }
}

// --- 7. start and reload -----------------------------------------------------------

#[allow(clippy::too_many_arguments)]
fn lifecycle(
    a: &ZoneArgs,
    pki: &Pki,
    dir: &Path,
    certs: &Path,
    redis: &Redis,
    redis_empty: &Redis,
    ng_zone: &Nginx,
    mz: u16,
    zmib: usize,
    problems: &mut Problems,
) -> Life {
    let servers = |r: &Redis| {
        dyncert_servers(
            r.port,
            Some(zmib),
            a.hot,
            dyncert_testkit::free_port(),
            false,
        )
    };
    let (stat, empty, full) = (static_servers(certs), servers(redis_empty), servers(redis));
    let start = start_times(
        pki,
        dir,
        a.repeat,
        &[(&stat, false), (&empty, true), (&full, true)],
        problems,
    );
    // Reloads: stock nginx, an empty zone, and the zone of the sweep, which
    // holds every name (a reload keeps it, and must not walk it).
    let records = scrape_metrics(mz).get("dyncert_shared_zone_records");
    let ng_stat = start_nginx(pki, &dir.join("reload-static"), &stat, false);
    let ng_empty = start_nginx(pki, &dir.join("reload-empty"), &empty, true);
    let reload = reload_times(&[&ng_stat, &ng_empty, ng_zone], a.repeat, problems);
    let after = scrape_metrics(mz).get("dyncert_shared_zone_records");
    if after != records {
        problems.notes.push(format!(
            "the zone held {records} records before the reloads and {after} after"
        ));
    }
    Life {
        labels: vec![
            "stock nginx, static certificate".into(),
            "dyncert + zone, 0 names in Redis".into(),
            format!("dyncert + zone, {} names in Redis", a.names),
        ],
        start,
        reload_labels: vec![
            "stock nginx, static certificate".into(),
            "dyncert, empty zone".into(),
            format!("dyncert, zone holding {records} records"),
        ],
        reload,
        reload_records: records,
    }
}
