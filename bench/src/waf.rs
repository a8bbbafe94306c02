//! `dyncert-bench waf [--quick] [--rounds R] [--seconds S]`: what
//! ModSecurity with the OWASP Core Rule Set adds to a request on top of a
//! cached dyncert handshake. Not a target, a figure for the README.
//!
//! One nginx (one worker, on CPU 0) with dyncert and the ModSecurity
//! connector (scripts/build-modsecurity.sh) serves two ports that differ
//! only in `modsecurity on` with the rules of nginx-conf/waf/modsecurity.conf:
//! a small static page for names whose records are in Redis, warmed into
//! dyncert's cache first. Each connection is a full TLS 1.3 handshake
//! (X25519, no resumption) and one `GET /` (status and body checked). The
//! two ports take turns in rounds; the figures are medians over rounds of
//! the worker's CPU per connection and of the per-round difference.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dyncert_testkit::module::workspace_dir;
use dyncert_testkit::{free_port, index_page, nginx_and_openssl, Nginx, Pki, Redis};

use crate::client::Client;
use crate::host::{client_cpus, cpus, pin_to, task_cpu_ns};
use crate::load::{pin_client_thread, Rng};
use crate::report::median;
use crate::servers::opts;

const NAMES: usize = 50;
const CONCURRENCY: usize = 8;

const SERVERS: &str = r#"
    dyncert_redis @REDIS@;
    server {
        listen 127.0.0.1:@PORT@ ssl;
        server_name plain;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        root html;
        location / { }
    }
    server {
        listen 127.0.0.1:@WAFPORT@ ssl;
        server_name waf;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        root html;
        modsecurity on;
        modsecurity_rules_file @RULES@;
        location / { }
    }
"#;

/// Connections of one port in one round: how many, wall and worker CPU.
#[derive(Clone, Copy, Default)]
struct Slice {
    ok: u64,
    errors: u64,
    wall_ns: u64,
    cpu_ns: u64,
}

impl Slice {
    fn cpu_us(&self) -> f64 {
        self.cpu_ns as f64 / 1000.0 / (self.ok as f64).max(1.0)
    }
    fn per_sec(&self) -> f64 {
        self.ok as f64 / (self.wall_ns as f64 / 1e9).max(1e-9)
    }
}

/// The connector, or why it cannot run.
fn connector() -> Result<PathBuf, String> {
    let module = std::env::var_os("DYNCERT_MODSECURITY_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_dir().join("target/modsecurity/ngx_http_modsecurity_module.so")
        });
    if module.is_file() {
        Ok(module)
    } else {
        Err(format!(
            "no ModSecurity connector at {}: run scripts/build-modsecurity.sh",
            module.display()
        ))
    }
}

/// The example's rules, the audit log moved into `dir`.
fn write_rules(dir: &Path) -> PathBuf {
    let example = workspace_dir().join("nginx-conf/waf/modsecurity.conf");
    let rules =
        fs::read_to_string(&example).unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    let path = dir.join("modsecurity.conf");
    fs::write(
        &path,
        rules.replace(
            "/var/log/nginx/modsec_audit.log",
            &dir.join("modsec_audit.log").display().to_string(),
        ),
    )
    .unwrap();
    path
}

/// `CONCURRENCY` clients doing handshake + `GET /` for `dur`.
fn slice(
    client: &Arc<Client>,
    port: u16,
    worker: u32,
    names: &Arc<Vec<String>>,
    dur: Duration,
    seed: u64,
) -> Slice {
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = task_cpu_ns(worker);
    let start = Instant::now();
    let threads: Vec<_> = (0..CONCURRENCY)
        .map(|t| {
            let (stop, names, client) = (stop.clone(), names.clone(), client.clone());
            std::thread::spawn(move || {
                pin_client_thread(t);
                let mut rng = Rng::new(seed ^ ((t as u64 + 1) << 20));
                let (mut ok, mut errors) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let sni = &names[rng.below(names.len())];
                    let good = client
                        .handshake(port, Some(sni))
                        .ok()
                        .filter(|c| c.names_sni)
                        .and_then(|c| c.get().ok())
                        .is_some_and(|body| body == index_page("").trim());
                    if good {
                        ok += 1;
                    } else {
                        errors += 1;
                    }
                }
                (ok, errors)
            })
        })
        .collect();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    let mut s = Slice::default();
    for t in threads {
        let (ok, errors) = t.join().expect("client thread");
        s.ok += ok;
        s.errors += errors;
    }
    s.wall_ns = start.elapsed().as_nanos() as u64;
    s.cpu_ns = task_cpu_ns(worker).saturating_sub(cpu0);
    s
}

pub fn run(argv: &[String], dir: &Path) -> i32 {
    let quick = argv.iter().any(|a| a == "--quick");
    let value = |flag: &str| {
        argv.iter()
            .position(|a| a == flag)
            .and_then(|i| argv.get(i + 1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let rounds = value("--rounds").map_or(if quick { 4 } else { 20 }, |v| v as usize);
    let seconds = value("--seconds").unwrap_or(if quick { 0.5 } else { 1.0 });
    let module = match connector() {
        Ok(m) => m,
        Err(why) => {
            eprintln!("dyncert-bench waf: {why}");
            return 2;
        }
    };
    if cpus() > 1 {
        pin_to(&client_cpus());
    }
    let pki = Pki::new();
    let redis = Redis::start();
    let names: Vec<String> = (0..NAMES).map(|i| format!("waf{i}.example.com")).collect();
    for (i, n) in names.iter().enumerate() {
        redis.put_leaf(n, &pki.leaf(&[n.as_str()], 9000 + i as u64));
    }
    let rules = write_rules(dir);
    let waf_port = free_port();
    let http = format!(
        "http {{\n access_log off;\n ssl_protocols TLSv1.3;\n ssl_session_tickets off;\n \
         ssl_session_cache off;\n{SERVERS}\n}}\n"
    );
    let nginx = Nginx::start(
        &pki,
        &http,
        opts(&dir.join("nginx"), true)
            .other_module(&module, false)
            .redis(&redis)
            .var("WAFPORT", waf_port)
            .var("RULES", rules.display()),
    );
    nginx.write_index_pages(&[""]);
    let worker = nginx.worker_pid();
    let client = Arc::new(Client::new());
    let names = Arc::new(names);
    let ports = [
        ("without ModSecurity", nginx.port),
        ("ModSecurity + CRS", waf_port),
    ];

    // Warm the cache (one worker: one handshake per name is enough) and
    // check both ports serve.
    for (label, port) in ports {
        let s = slice(&client, port, worker, &names, Duration::from_millis(300), 1);
        if s.ok == 0 || s.errors > 0 {
            eprintln!(
                "dyncert-bench waf: {label}: {} good, {} failed while warming\n{}",
                s.ok,
                s.errors,
                nginx.logs()
            );
            return 1;
        }
    }

    let mut per: [Vec<Slice>; 2] = [Vec::new(), Vec::new()];
    for r in 0..rounds {
        // Alternate which port goes first, so drift hits both alike.
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let s = slice(
                &client,
                ports[i].1,
                worker,
                &names,
                Duration::from_secs_f64(seconds),
                r as u64 + 7,
            );
            per[i].push(s);
        }
    }
    let errors: u64 = per.iter().flatten().map(|s| s.errors).sum();
    let cpu = |i: usize| median(&per[i].iter().map(Slice::cpu_us).collect::<Vec<_>>());
    let rate = |i: usize| median(&per[i].iter().map(Slice::per_sec).collect::<Vec<_>>());
    let diffs: Vec<f64> = per[0]
        .iter()
        .zip(&per[1])
        .map(|(a, b)| b.cpu_us() - a.cpu_us())
        .collect();
    let ratios: Vec<f64> = per[0]
        .iter()
        .zip(&per[1])
        .map(|(a, b)| b.cpu_us() / a.cpu_us())
        .collect();

    println!("\n## ModSecurity + CRS on top of a cached handshake + GET (dyncert-bench waf)\n");
    println!(
        "{}; ModSecurity-nginx connector {} with nginx-conf/waf/modsecurity.conf (CRS, paranoia level 1); {NAMES} names cached; full TLS 1.3 handshake + GET / per connection, \
         {CONCURRENCY} at a time; {rounds} rounds of {seconds} s per configuration, medians\n",
        nginx_and_openssl(),
        module.canonicalize().unwrap_or(module.clone()).display()
    );
    println!("| configuration | connections/s | worker CPU per connection |");
    println!("| --- | --- | --- |");
    for (i, (label, _)) in ports.iter().enumerate() {
        println!("| {label} | {:.0} | {:.0} µs |", rate(i), cpu(i));
    }
    println!(
        "\nModSecurity + CRS adds {:.0} µs of worker CPU per request ({:+.1}%), median of per-round differences.",
        median(&diffs),
        (median(&ratios) - 1.0) * 100.0
    );
    if errors > 0 {
        println!("\nproblem: {errors} connections failed or got the wrong page");
        return 1;
    }
    drop(nginx);
    0
}
