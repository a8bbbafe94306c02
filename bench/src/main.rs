//! dyncert-bench: full TLS 1.3 handshakes per second against the same NGINX
//! binary in three configurations, in one run, interleaved in rounds:
//!
//! 1. `static`    — one `ssl_certificate`, one SNI (the ceiling);
//! 2. `dyncert`   — N names in Redis, served from dyncert's cache (warmed);
//! 3. `stock-var` — stock `ssl_certificate $ssl_server_name` files with
//!    `ssl_certificate_cache` over the same N names;
//!
//! plus dyncert with a single name, which separates the module's own cost
//! from the cost of N distinct keys. Then: cold-miss latency of a Redis hit
//! and of an API hit (a certificate API served by this process), memory
//! per cached certificate (with a breakdown by OpenSSL object), and nginx
//! start and reload time with N names in Redis against none.
//!
//! Every handshake is verified: the leaf must name the SNI (mismatches are
//! counted; any makes the exit status 1). Besides handshakes/s and latency
//! it reports the nginx worker's CPU time per handshake, which stays a fair
//! comparison when the client is the bottleneck.
//!
//! Usage: `cargo build --release && cargo build --release -p dyncert-bench &&
//! target/release/dyncert-bench [--quick] [--names N] [--seconds S] ...`
//!
//! `dyncert-bench junk [--junk N] [--rounds R]` measures instead what a
//! burst of N junk records being fetched adds to a good name's cold
//! handshake (see `junk.rs`); `dyncert-bench zone [--names N] [--workers
//! W] [--hot H]` the shared zone against its baselines: first touches,
//! Redis commands across workers, zone bytes, the memory of all workers,
//! hot-set misses, hot handshakes, start and reload (see `zone/`);
//! `dyncert-bench waf [--quick]` what ModSecurity with the CRS adds to a
//! cached handshake + GET (see `waf.rs`);
//! `dyncert-bench fleet ...` is the client of `scripts/fleet-test.sh`
//! (see `fleet/`).

mod client;
mod count;
mod fleet;
mod formats;
mod host;
mod junk;
mod lifecycle;
mod load;
mod probe;
mod profile;
mod report;
mod route;
mod servers;
mod waf;
mod zone;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::Client;
use dyncert_testkit::{module_path, nginx_bin, ApiReply, CertApi, LeafPem, Pki, Redis};
use host::{client_cpus, cpus, pin_to, rss_kib};
pub use lifecycle::Lifecycle;
use load::Load;
use servers::{
    count_records, dyncert_server, hgetall_micros, start_nginx, static_server, stock_server,
};

pub struct Args {
    pub names: usize,
    pub seconds: f64,
    pub rounds: usize,
    pub concurrency: usize,
    pub cold: usize,
    pub repeat: usize,
    pub quick: bool,
    pub keep: bool,
    /// `--profile DIR`: sample the worker during every slice (profile.rs).
    pub profile: Option<PathBuf>,
}

const USAGE: &str = "usage: dyncert-bench [--quick] [--names N] [--seconds S] [--rounds R] \
[--concurrency C] [--cold K] [--repeat R] [--keep] [--profile DIR]
  --quick          N=500, 3 s per configuration, 100 cold names, 3 repeats (CI)
  --names N        names in Redis (default 10000)
  --seconds S      measured seconds per configuration (default 10)
  --rounds R       the configurations take turns in R rounds (default 20)
  --concurrency C  concurrent connections (default 8)
  --cold K         never-seen names measured for a Redis hit and an API hit (default 1000)
  --repeat R       nginx starts and reloads measured per case (default 9)
  --keep           keep the temporary directory (configurations, logs, certificates)
  --profile DIR    sample the nginx worker with perf during every measured slice, keep
                   the recordings in DIR, and print the server CPU per handshake by phase";

fn parse_args(argv: &[String]) -> Args {
    let mut a = Args {
        names: 10_000,
        seconds: 10.0,
        rounds: 20,
        concurrency: 8,
        cold: 1000,
        repeat: 9,
        quick: false,
        keep: false,
        profile: None,
    };
    // The one flag with a path for its value: taken out before the
    // numeric ones are read.
    let mut argv = argv.to_vec();
    if let Some(i) = argv.iter().position(|s| s == "--profile") {
        if i + 1 >= argv.len() {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
        a.profile = Some(PathBuf::from(argv.remove(i + 1)));
        argv.remove(i);
    }
    let argv = &argv[..];
    if argv.iter().any(|s| s == "--quick") {
        a = Args {
            names: 500,
            seconds: 3.0,
            rounds: 6,
            cold: 100,
            repeat: 3,
            quick: true,
            profile: a.profile.clone(),
            ..a
        };
    }
    let usage = || -> ! {
        eprintln!("{USAGE}");
        std::process::exit(2)
    };
    for_each_flag(argv, &mut a.keep, usage, |flag, v| match flag {
        "--names" => a.names = v as usize,
        "--seconds" => a.seconds = v,
        "--rounds" => a.rounds = v as usize,
        "--concurrency" => a.concurrency = v as usize,
        "--cold" => a.cold = v as usize,
        "--repeat" => a.repeat = v as usize,
        _ => usage(),
    });
    if a.names == 0 || a.rounds == 0 || a.concurrency == 0 || a.cold == 0 || a.repeat == 0 {
        usage()
    }
    a
}

/// Walks `--flag VALUE` pairs (positive numbers), handing each to `set`;
/// `--quick` (read by the caller) is skipped, `--keep` sets `keep`.
/// Anything else, or a value that is not a positive number, is `usage()`.
pub fn for_each_flag(
    argv: &[String],
    keep: &mut bool,
    usage: fn() -> !,
    mut set: impl FnMut(&str, f64),
) {
    let mut i = 0;
    while i < argv.len() {
        let flag = argv[i].as_str();
        if flag == "--quick" || flag == "--keep" {
            *keep |= flag == "--keep";
            i += 1;
            continue;
        }
        match argv.get(i + 1).and_then(|s| s.parse::<f64>().ok()) {
            Some(v) if v > 0.0 => set(flag, v),
            _ => usage(),
        }
        i += 2;
    }
}

/// One configuration under load.
pub struct Config {
    pub label: String,
    nginx_port: u16,
    worker: u32,
    names: Arc<Vec<String>>,
    pub load: Load,
}

/// The cases whose start and reload are timed: stock nginx without the
/// module (for scale), dyncert without `dyncert_api` (N names in Redis),
/// and with it, 0 names in Redis and N names.
pub const LIFECYCLE_CASES: usize = 4;

/// Memory figures (KiB) of the warm-up: worker RSS before and after.
pub struct Memory {
    pub dyncert: (u64, u64),
    pub stock: (u64, u64),
    pub names: usize,
    pub breakdown: Option<probe::Breakdown>,
}

pub struct ColdReport {
    /// HGETALL round trips from the bench, microseconds.
    pub redis_rtt: Vec<u32>,
    pub redis: load::Cold,
    pub api: load::Cold,
    pub writeback: usize,
    pub api_found: u64,
    pub api_not_found: u64,
}

/// Everything that went wrong in a way that invalidates the run.
#[derive(Default)]
pub struct Problems {
    pub notes: Vec<String>,
    /// Handshakes whose certificate did not name the SNI, over the run.
    pub mismatches: u64,
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--probe") {
        let dir = PathBuf::from(argv.get(1).expect("dir"));
        let m = argv.get(2).and_then(|v| v.parse().ok()).expect("count");
        probe::child(&dir, m);
        return;
    }
    if argv.first().map(String::as_str) == Some("formats") {
        std::process::exit(formats::run(argv.iter().any(|a| a == "--quick")));
    }
    if argv.first().map(String::as_str) == Some("zone") {
        let args = zone::parse(&argv[1..]);
        in_scratch_dir(args.keep, |dir| zone::run(&args, dir));
    }
    if argv.first().map(String::as_str) == Some("count-diff") {
        std::process::exit(count::diff_cmd(&argv[1..]));
    }
    if argv.first().map(String::as_str) == Some("count") {
        let args = count::parse(&argv[1..]);
        in_scratch_dir(args.keep, |dir| count::run(&args, dir));
    }
    if argv.first().map(String::as_str) == Some("waf") {
        in_scratch_dir(false, |dir| waf::run(&argv[1..], dir));
    }
    if argv.first().map(String::as_str) == Some("profile-report") {
        std::process::exit(profile::report_cmd(&argv[1..]));
    }
    if argv.first().map(String::as_str) == Some("fleet") {
        std::process::exit(fleet::run(&argv[1..]));
    }
    if argv.first().map(String::as_str) == Some("junk") {
        let args = junk::parse(&argv[1..]);
        in_scratch_dir(false, |dir| {
            if cpus() > 1 {
                pin_to(&client_cpus());
            }
            junk::run(&args, dir)
        });
    }
    let args = parse_args(&argv);
    in_scratch_dir(args.keep, |dir| run(&args, dir));
}

/// Runs `bench` in a fresh directory of its own under the temporary
/// directory, removes it afterwards unless `keep`, and exits with the
/// bench's status.
fn in_scratch_dir(keep: bool, bench: impl FnOnce(&Path) -> i32) -> ! {
    let dir = std::env::temp_dir().join(format!("dyncert-bench-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let code = bench(&dir);
    if keep {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = fs::remove_dir_all(&dir);
    }
    std::process::exit(code);
}

fn step(what: &str) {
    eprintln!("[{}] {what}", elapsed_tag());
}

fn elapsed_tag() -> String {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    format!("{t:7.1}s")
}

fn run(args: &Args, dir: &Path) -> i32 {
    step(&format!("nginx {}", nginx_bin().display()));
    step(&format!("module {}", module_path().display()));
    let mut problems = Problems::default();

    // --- certificates (both CPUs) ---------------------------------------
    let threads = cpus();
    let t0 = Instant::now();
    let pki = Pki::new();
    let main_names: Vec<String> = (0..args.names)
        .map(|i| format!("site{i}.bench.test"))
        .collect();
    let cold_names: Vec<String> = (0..args.cold)
        .map(|i| format!("cold{i}.bench.test"))
        .collect();
    let api_names: Vec<String> = (0..args.cold)
        .map(|i| format!("api{i}.bench.test"))
        .collect();
    step(&format!(
        "generating {} ECDSA P-256 certificates on {threads} threads",
        args.names + 2 * args.cold + 1
    ));
    let sites = pki.leaves_pem(main_names.clone(), 1000, threads);
    let cold_sites = pki.leaves_pem(cold_names.clone(), 1000 + args.names as u64, threads);
    let api_sites = pki.leaves_pem(
        api_names.clone(),
        1000 + (args.names + args.cold) as u64,
        threads,
    );
    let static_site = pki.leaf_pem("static.bench.test".into(), 999);
    let gen_secs = t0.elapsed().as_secs_f64();

    // Files only for the stock configuration (and the static one).
    let t0 = Instant::now();
    let certs = dir.join("certs");
    fs::create_dir_all(&certs).unwrap();
    write_files(&certs, &pki, std::slice::from_ref(&static_site), 1);
    write_files(&certs, &pki, &sites, threads);
    let files_secs = t0.elapsed().as_secs_f64();
    step(&format!(
        "certificates {gen_secs:.1}s, files for the stock configuration {files_secs:.1}s"
    ));

    // From here on: nginx workers on CPU 0, everything else elsewhere.
    let two_cpus = cpus() > 1;
    if two_cpus {
        pin_to(&client_cpus());
    }

    let redis_full = Redis::start();
    let redis_empty = Redis::start();
    let t0 = Instant::now();
    redis_full.put_leaves_pem(&pki, &sites);
    redis_full.put_leaves_pem(&pki, &cold_sites);
    step(&format!(
        "{} records loaded into redis in {:.1}s",
        sites.len() + cold_sites.len(),
        t0.elapsed().as_secs_f64()
    ));
    // Started after the pinning: its threads stay off the worker's CPU.
    let api = CertApi::start();
    for s in &api_sites {
        api.set(&s.name, ApiReply::cert_pem(&s.chain_pem(&pki), &s.key_pem));
    }
    drop((sites, cold_sites, api_sites));

    let static_http = static_server(&certs, "static.bench.test");
    let cache_max = args.names + 2 * args.cold + 100;
    let dyncert_http = |redis_port: u16, with_api: bool| {
        let api = if with_api {
            format!("dyncert_api \"{}\" writeback=1h;", api.url_template())
        } else {
            String::new()
        };
        dyncert_server(&certs, "static.bench.test", redis_port, &api, cache_max)
    };
    let stock_http = stock_server(&certs, cache_max);

    let ng_static = start_nginx(&pki, &dir.join("static"), &static_http, false);
    let ng_dyncert = start_nginx(
        &pki,
        &dir.join("dyncert"),
        &dyncert_http(redis_full.port, true),
        true,
    );
    let ng_stock = start_nginx(&pki, &dir.join("stockvar"), &stock_http, false);
    let names = Arc::new(main_names);
    let first = names[0].clone();

    // --- warm-up and memory ------------------------------------------------
    let client = Client::new();
    let settle = |port: u16, sni: Option<&str>| {
        for _ in 0..3 {
            if let Ok(c) = client.handshake(port, sni) {
                c.close();
            }
        }
    };
    settle(ng_static.port, Some("static.bench.test"));
    settle(ng_dyncert.port, None);
    settle(ng_dyncert.port, Some(&first));
    settle(ng_stock.port, Some(&first));

    let dw = ng_dyncert.worker_pid();
    let rss0 = rss_kib(dw);
    step(&format!(
        "warming the dyncert cache with {} names",
        names.len()
    ));
    let w = load::warm(ng_dyncert.port, &names, args.concurrency);
    let dyn_mem = (rss0, rss_kib(dw));
    step(&format!(
        "  {:.1}s, {} mismatches, {} errors",
        w.secs, w.mismatches, w.errors
    ));
    problems.check("warming dyncert", w.mismatches, w.errors, &w.first_error);
    // Sampled proof that the measured run hits the cache, not Redis.
    let sample: Vec<String> = names
        .iter()
        .step_by((names.len() / args.cold.min(names.len())).max(1))
        .cloned()
        .collect();
    let (bad, first_bad) = load::check_sources(ng_dyncert.port, &sample, "cache");
    if bad > 0 {
        problems.notes.push(format!(
            "{bad} of {} sampled warmed names were not served from the cache (first: {})",
            sample.len(),
            first_bad.unwrap_or_default()
        ));
    }
    let warm_check = (sample.len(), bad);

    let sw = ng_stock.worker_pid();
    let rss0 = rss_kib(sw);
    step(&format!(
        "warming the stock ssl_certificate_cache with {} names",
        names.len()
    ));
    let w = load::warm(ng_stock.port, &names, args.concurrency);
    let stock_mem = (rss0, rss_kib(sw));
    step(&format!(
        "  {:.1}s, {} mismatches, {} errors",
        w.secs, w.mismatches, w.errors
    ));
    problems.check("warming stock", w.mismatches, w.errors, &w.first_error);

    // --- throughput, interleaved ----------------------------------------------
    let one = |n: &str| Arc::new(vec![n.to_owned()]);
    let mut configs = vec![
        Config {
            label: "static (1 name)".into(),
            nginx_port: ng_static.port,
            worker: ng_static.worker_pid(),
            names: one("static.bench.test"),
            load: Load::default(),
        },
        Config {
            label: format!("dyncert ({} names, cached)", names.len()),
            nginx_port: ng_dyncert.port,
            worker: dw,
            names: names.clone(),
            load: Load::default(),
        },
        Config {
            label: format!("stock $ssl_server_name ({})", names.len()),
            nginx_port: ng_stock.port,
            worker: sw,
            names: names.clone(),
            load: Load::default(),
        },
        Config {
            label: "dyncert (1 name, cached)".into(),
            nginx_port: ng_dyncert.port,
            worker: dw,
            names: one(&first),
            load: Load::default(),
        },
    ];
    // Short slices taking turns: drift on a shared machine then hits every
    // configuration alike, and each round's ratios compare neighbours.
    let slice = Duration::from_secs_f64(args.seconds / args.rounds as f64);
    let load_client = Arc::new(Client::new());
    let profiler = match args.profile.as_deref().map(profile::Profiler::new) {
        Some(Err(e)) => {
            eprintln!("dyncert-bench: {e}");
            return 2;
        }
        Some(Ok(p)) => Some(p),
        None => None,
    };
    for r in 0..args.rounds {
        step(&format!(
            "round {}/{}: {} configurations x {:.1}s",
            r + 1,
            args.rounds,
            configs.len(),
            slice.as_secs_f64()
        ));
        let n = configs.len();
        for k in 0..n {
            // Rotate the order so no configuration always runs first.
            let cfg = &mut configs[(k + r) % n];
            let sampling = profiler
                .as_ref()
                .map(|p| (p, p.start(&cfg.label, r, cfg.worker)));
            load::run_slice(
                &mut cfg.load,
                &load_client,
                cfg.nginx_port,
                cfg.worker,
                &cfg.names,
                args.concurrency,
                slice,
                (r * n + k) as u64 + 1,
            );
            if let Some((p, child)) = sampling {
                p.stop(child);
            }
        }
    }
    for cfg in &mut configs {
        cfg.load.rss_kib = rss_kib(cfg.worker);
        let l = &cfg.load;
        problems.check(&cfg.label, l.mismatches, l.errors, &l.first_error);
    }

    // --- cold misses -----------------------------------------------------------
    step(&format!(
        "cold misses: {} redis hits, {} api hits, each after a cached handshake",
        cold_names.len(),
        api_names.len()
    ));
    let redis_rtt = hgetall_micros(&redis_full, &cold_names);
    let redis_cold = load::cold(ng_dyncert.port, &names, &cold_names, "redis", 7);
    let api_cold = load::cold(ng_dyncert.port, &names, &api_names, "api", 11);
    for (what, c) in [("redis hit", &redis_cold), ("api hit", &api_cold)] {
        problems.check(what, c.mismatches, c.errors, &None);
        if c.unexpected > 0 {
            problems.notes.push(format!(
                "{what}: {} answers with an unexpected $dyncert_source (first: {})",
                c.unexpected,
                c.first_unexpected.clone().unwrap_or_default()
            ));
        }
    }
    // The write-back runs after the answer: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut writeback = count_records(&redis_full, &api_names);
    while writeback < api_names.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        writeback = count_records(&redis_full, &api_names);
    }
    let cold = ColdReport {
        redis_rtt,
        redis: redis_cold,
        api: api_cold,
        writeback,
        api_found: api.answered(200) as u64,
        api_not_found: api.answered(404) as u64,
    };
    let dyncert_log = ng_dyncert.error_log();
    drop((ng_static, ng_dyncert, ng_stock));

    // --- start and reload ---------------------------------------------------------
    step(&format!(
        "nginx start and reload, {} times each, 4 configurations",
        args.repeat
    ));
    let (http_redis_only, http_empty, http_full) = (
        dyncert_http(redis_full.port, false),
        dyncert_http(redis_empty.port, true),
        dyncert_http(redis_full.port, true),
    );
    let life = lifecycle::lifecycle(
        &pki,
        dir,
        args.repeat,
        &[
            (&static_http, false),
            (&http_redis_only, true),
            (&http_empty, true),
            (&http_full, true),
        ],
        &mut problems,
    );

    // --- where the memory goes -------------------------------------------------------
    step("probes: memory by OpenSSL object, parse and install times (child process)");
    let breakdown = probe::run(&certs, names.len().min(10_000));
    let mem = Memory {
        dyncert: dyn_mem,
        stock: stock_mem,
        names: names.len(),
        breakdown,
    };

    let warn_lines: Vec<&str> = dyncert_log
        .lines()
        .filter(|l| l.contains("[warn]") || l.contains("[error]") || l.contains("[alert]"))
        .collect();

    if let Some(p) = &profiler {
        step("reading the perf recordings back");
        let rows: Vec<_> = configs
            .iter()
            .map(|c| (c.label.clone(), c.load.cpu_us_per_hs(), p.read(&c.label)))
            .collect();
        println!("{}", profile::report(&rows));
    }
    report::print(report::Report {
        args,
        two_cpus,
        configs: &configs,
        cold: &cold,
        mem: &mem,
        life: &life,
        warm_check,
        problems: &problems,
        dyncert_log_warnings: &warn_lines,
    })
}

impl Problems {
    fn check(&mut self, what: &str, mismatches: u64, errors: u64, first: &Option<String>) {
        self.mismatches += mismatches;
        if mismatches > 0 {
            self.notes.push(format!(
                "{what}: {mismatches} handshakes got a certificate that does not name the SNI"
            ));
        }
        if errors > 0 {
            self.notes.push(format!(
                "{what}: {errors} handshakes failed (first: {})",
                first.clone().unwrap_or_default()
            ));
        }
    }
}

fn write_files(certs: &Path, pki: &Pki, sites: &[LeafPem], threads: usize) {
    let per = sites.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        for chunk in sites.chunks(per) {
            s.spawn(move || {
                for site in chunk {
                    fs::write(
                        certs.join(format!("{}.crt", site.name)),
                        site.chain_pem(pki),
                    )
                    .unwrap();
                    fs::write(certs.join(format!("{}.key", site.name)), &site.key_pem).unwrap();
                }
            });
        }
    });
}
