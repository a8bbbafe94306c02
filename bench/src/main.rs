//! dyncert-bench: full TLS 1.3 handshakes per second against the same NGINX
//! binary in three configurations, in one run:
//!
//! 1. `static`   — one `ssl_certificate`, one SNI (the ceiling);
//! 2. `dyncert`  — N names in Redis, served from dyncert's cache (warmed);
//! 3. `stock-var` — stock `ssl_certificate $ssl_server_name` files with
//!    `ssl_certificate_cache` over the same N names.
//!
//! Every handshake is verified: the leaf must name the SNI (mismatches are
//! counted and must be 0). Besides handshakes/s and latency it reports the
//! nginx worker's CPU time per handshake (from /proc), which stays a fair
//! comparison even when the client is the bottleneck, and worker RSS.
//!
//! Usage: `cargo build --release && cargo run --release -p dyncert-bench --
//! [--names N] [--seconds S] [--concurrency C]`

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslConnector, SslMethod, SslSessionCacheMode, SslVerifyMode, SslVersion};
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509NameBuilder, X509};

struct Args {
    names: usize,
    seconds: u64,
    concurrency: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        names: 10_000,
        seconds: 10,
        concurrency: 8,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).and_then(|s| s.parse::<u64>().ok());
        match (argv[i].as_str(), v) {
            ("--names", Some(v)) => a.names = v as usize,
            ("--seconds", Some(v)) => a.seconds = v,
            ("--concurrency", Some(v)) => a.concurrency = v as usize,
            _ => {
                eprintln!("usage: dyncert-bench [--names N] [--seconds S] [--concurrency C]");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    a
}

// --- paths -----------------------------------------------------------------

fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().expect("target/<profile>").to_path_buf()
}

fn nginx_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DYNCERT_NGINX_BIN") {
        return p.into();
    }
    let dir = fs::read_to_string(profile_dir().join("nginx-build-dir.txt"))
        .expect("target/<profile>/nginx-build-dir.txt: run `cargo build --release` first");
    PathBuf::from(dir.trim()).join("nginx")
}

fn module_path() -> PathBuf {
    std::env::var_os("DYNCERT_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| profile_dir().join("libngx_http_dyncert_module.so"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

// --- PKI -------------------------------------------------------------------

fn ec_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn cert(
    cn: &str,
    sans: &[&str],
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    serial: u32,
) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(serial).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map(|(c, _)| c.subject_name()).unwrap_or(&name))
        .unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    if !sans.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for s in sans {
            san.dns(s);
        }
        let ext = san
            .build(&b.x509v3_context(issuer.map(|(c, _)| &**c), None))
            .unwrap();
        b.append_extension(ext).unwrap();
    }
    b.sign(
        issuer.map(|(_, k)| k).unwrap_or(key),
        MessageDigest::sha256(),
    )
    .unwrap();
    b.build()
}

struct Site {
    name: String,
    chain_pem: String,
    key_pem: String,
}

// --- processes ---------------------------------------------------------------

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_redis(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    wait_port(port);
    (Proc(child), port)
}

fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend(b"\r\n");
    }
    out
}

/// Loads all records with one pipelined connection (raw RESP).
fn load_redis(port: u16, sites: &[Site]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut buf = Vec::new();
    for site in sites {
        let key = format!("dyncert:cert:{}", site.name);
        buf.extend(resp(&[
            b"HSET",
            key.as_bytes(),
            b"crt",
            site.chain_pem.as_bytes(),
            b"key",
            site.key_pem.as_bytes(),
        ]));
    }
    buf.extend(resp(&[b"PING"]));
    let reader_stream = s.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(reader_stream);
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 || line.starts_with("+PONG") {
                break;
            }
            assert!(!line.starts_with('-'), "redis error: {line}");
        }
    });
    s.write_all(&buf).unwrap();
    reader.join().unwrap();
}

struct Nginx {
    _proc: Proc,
    prefix: PathBuf,
    port: u16,
}

impl Nginx {
    fn start(prefix: &Path, http: &str, with_module: bool) -> Nginx {
        let port = free_port();
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        // Server on CPU 0, load generator on the others (when there are any).
        let affinity = if cpus > 1 {
            "worker_cpu_affinity 01;"
        } else {
            ""
        };
        let load = if with_module {
            format!("load_module {};", module_path().display())
        } else {
            String::new()
        };
        let conf = format!(
            "{load}\nworker_processes 1;\n{affinity}\ndaemon off;\nerror_log {p}/error.log warn;\n\
             pid {p}/nginx.pid;\nevents {{ worker_connections 4096; }}\n\
             http {{\n access_log off;\n ssl_protocols TLSv1.3;\n ssl_session_tickets off;\n\
             ssl_session_cache off;\n{http}\n}}\n",
            p = prefix.display(),
            http = http.replace("PORT", &port.to_string()),
        );
        fs::create_dir_all(prefix.join("conf")).unwrap();
        fs::create_dir_all(prefix.join("logs")).unwrap();
        fs::write(prefix.join("conf/nginx.conf"), conf).unwrap();
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(prefix)
            .args(["-c", "conf/nginx.conf", "-e"])
            .arg(prefix.join("error.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx");
        wait_port(port);
        Nginx {
            _proc: Proc(child),
            prefix: prefix.to_path_buf(),
            port,
        }
    }

    fn worker_pid(&self) -> u32 {
        let master: u32 = fs::read_to_string(self.prefix.join("nginx.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for e in fs::read_dir("/proc").unwrap().flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
                    let after = &stat[stat.rfind(')').unwrap_or(0) + 2..];
                    let ppid: u32 = after.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
                    if ppid == master {
                        return pid;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no nginx worker");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// utime + stime of a process, in microseconds.
fn cpu_micros(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = &stat[stat.rfind(')').map(|i| i + 2).unwrap_or(0)..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000 / hz
}

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

// --- load generator ----------------------------------------------------------

fn connector() -> SslConnector {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
    // Every handshake is a full one: no session reuse on the client side.
    b.set_session_cache_mode(SslSessionCacheMode::OFF);
    b.build()
}

/// One handshake; Ok(true) when the leaf names the SNI.
fn handshake(c: &SslConnector, port: u16, sni: &str) -> Result<bool, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).ok();
    let mut cfg = c.configure().map_err(|e| e.to_string())?;
    cfg.set_verify_hostname(false);
    let mut s = cfg.connect(sni, tcp).map_err(|e| e.to_string())?;
    let ok = s
        .ssl()
        .peer_certificate()
        .and_then(|leaf| leaf.subject_alt_names())
        .map(|sans| sans.iter().any(|g| g.dnsname() == Some(sni)))
        .unwrap_or(false);
    let _ = s.shutdown();
    let mut sink = [0u8; 64];
    let _ = s.get_mut().read(&mut sink);
    Ok(ok)
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity only touch the set we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

struct RunResult {
    handshakes: u64,
    errors: u64,
    mismatches: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_hs: f64,
    rss_kib: u64,
}

fn run_load(nginx: &Nginx, names: &[String], args: &Args) -> RunResult {
    let worker = nginx.worker_pid();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let stop = Arc::new(AtomicBool::new(false));
    let names = Arc::new(names.to_vec());
    let cpu0 = cpu_micros(worker);
    let start = Instant::now();
    let threads: Vec<_> = (0..args.concurrency)
        .map(|t| {
            let stop = stop.clone();
            let names = names.clone();
            let port = nginx.port;
            std::thread::spawn(move || {
                if cpus > 1 {
                    pin_to_cpu(1 + t % (cpus - 1));
                }
                let c = connector();
                let mut lat = Vec::new();
                let (mut errors, mut mismatches) = (0u64, 0u64);
                // xorshift: cheap, deterministic per thread.
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let sni = &names[(x % names.len() as u64) as usize];
                    let t0 = Instant::now();
                    match handshake(&c, port, sni) {
                        Ok(true) => lat.push(t0.elapsed().as_micros() as u32),
                        Ok(false) => mismatches += 1,
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors, mismatches)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(args.seconds));
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    let (mut errors, mut mismatches) = (0, 0);
    for t in threads {
        let (l, e, m) = t.join().unwrap();
        lat.extend(l);
        errors += e;
        mismatches += m;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_micros(worker).saturating_sub(cpu0);
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|&v| v as f64 / 1000.0)
            .unwrap_or(0.0)
    };
    let n = lat.len() as u64;
    RunResult {
        handshakes: n,
        errors,
        mismatches,
        secs,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        cpu_us_per_hs: if n > 0 { cpu as f64 / n as f64 } else { 0.0 },
        rss_kib: rss_kib(worker),
    }
}

/// Touches every name once (twice for dyncert: the first may be parked).
fn warm(nginx: &Nginx, names: &[String], passes: usize) -> u64 {
    let c = connector();
    let mut mismatches = 0;
    for pass in 0..passes {
        for n in names {
            match handshake(&c, nginx.port, n) {
                Ok(true) => {}
                _ if pass + 1 < passes => {}
                _ => mismatches += 1,
            }
        }
    }
    mismatches
}

fn main() {
    let args = parse_args();
    let dir = std::env::temp_dir().join(format!("dyncert-bench-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    eprintln!("nginx:  {}", nginx_bin().display());
    eprintln!("module: {}", module_path().display());

    eprintln!("generating {} ECDSA P-256 certificates...", args.names);
    let ca_key = ec_key();
    let ca = cert("dyncert bench CA", &[], &ca_key, None, 1);
    let ca_pem = String::from_utf8(ca.to_pem().unwrap()).unwrap();
    let mut sites = Vec::with_capacity(args.names);
    for i in 0..args.names {
        let name = format!("site{i}.bench.test");
        let k = ec_key();
        let leaf = cert(&name, &[&name], &k, Some((&ca, &ca_key)), 1000 + i as u32);
        sites.push(Site {
            chain_pem: String::from_utf8(leaf.to_pem().unwrap()).unwrap() + &ca_pem,
            key_pem: String::from_utf8(k.private_key_to_pem_pkcs8().unwrap()).unwrap(),
            name,
        });
    }
    let names: Vec<String> = sites.iter().map(|s| s.name.clone()).collect();

    // Files shared by the configurations.
    let certs = dir.join("certs");
    fs::create_dir_all(&certs).unwrap();
    let sk = ec_key();
    let static_leaf = cert(
        "static.bench.test",
        &["static.bench.test"],
        &sk,
        Some((&ca, &ca_key)),
        2,
    );
    fs::write(
        certs.join("static.crt"),
        [static_leaf.to_pem().unwrap(), ca.to_pem().unwrap()].concat(),
    )
    .unwrap();
    fs::write(
        certs.join("static.key"),
        sk.private_key_to_pem_pkcs8().unwrap(),
    )
    .unwrap();
    for s in &sites {
        fs::write(certs.join(format!("{}.crt", s.name)), &s.chain_pem).unwrap();
        fs::write(certs.join(format!("{}.key", s.name)), &s.key_pem).unwrap();
    }
    let c = certs.display().to_string();

    let mut table: Vec<(String, RunResult)> = Vec::new();
    let mut notes: HashMap<&str, String> = HashMap::new();

    // 1. static ceiling
    {
        let http = format!(
            "server {{ listen 127.0.0.1:PORT ssl; ssl_certificate {c}/static.crt; \
             ssl_certificate_key {c}/static.key; return 200; }}"
        );
        let ng = Nginx::start(&dir.join("static"), &http, true);
        eprintln!("running static ...");
        let r = run_load(&ng, &["static.bench.test".to_string()], &args);
        table.push(("static (1 name)".into(), r));
    }

    // 2. dyncert
    {
        let (_redis, rport) = start_redis(&dir);
        let t0 = Instant::now();
        load_redis(rport, &sites);
        notes.insert(
            "load",
            format!(
                "{:.1}s to load {} records into redis",
                t0.elapsed().as_secs_f64(),
                sites.len()
            ),
        );
        let http = format!(
            "dyncert_redis redis://127.0.0.1:{rport}/0; dyncert_cache max={} valid=1h; \
             server {{ listen 127.0.0.1:PORT ssl; ssl_certificate {c}/static.crt; \
             ssl_certificate_key {c}/static.key; dyncert on; return 200; }}",
            args.names + 100
        );
        let t0 = Instant::now();
        let ng = Nginx::start(&dir.join("dyncert"), &http, true);
        notes.insert(
            "start",
            format!("{:.0} ms", t0.elapsed().as_secs_f64() * 1000.0),
        );
        let w = ng.worker_pid();
        let rss0 = rss_kib(w);
        eprintln!("warming dyncert cache ...");
        let t0 = Instant::now();
        let miss = warm(&ng, &names, 2);
        let warm_secs = t0.elapsed().as_secs_f64();
        let rss1 = rss_kib(w);
        notes.insert(
            "mem",
            format!(
                "{:.2} KiB RSS per cached certificate ({} KiB -> {} KiB for {} names)",
                (rss1.saturating_sub(rss0)) as f64 / args.names as f64,
                rss0,
                rss1,
                args.names
            ),
        );
        notes.insert(
            "warm",
            format!(
                "{warm_secs:.1}s for two passes over {} names, {miss} mismatches",
                args.names
            ),
        );
        eprintln!("running dyncert ...");
        let r = run_load(&ng, &names, &args);
        table.push((format!("dyncert ({} names)", args.names), r));
    }

    // 3. stock nginx with variables + ssl_certificate_cache
    {
        let http = format!(
            "ssl_certificate_cache max={} valid=1h; server {{ listen 127.0.0.1:PORT ssl; \
             ssl_certificate {c}/$ssl_server_name.crt; ssl_certificate_key {c}/$ssl_server_name.key; \
             return 200; }}",
            args.names + 100
        );
        let ng = Nginx::start(&dir.join("stockvar"), &http, false);
        eprintln!("warming stock-variables cache ...");
        warm(&ng, &names, 1);
        eprintln!("running stock-variables ...");
        let r = run_load(&ng, &names, &args);
        table.push((format!("stock $ssl_server_name ({} names)", args.names), r));
    }

    println!();
    println!(
        "{:<36} {:>10} {:>9} {:>9} {:>13} {:>11} {:>7} {:>10}",
        "configuration",
        "hs/s",
        "p50 ms",
        "p99 ms",
        "srv cpu/hs us",
        "worker RSS",
        "errors",
        "mismatch"
    );
    for (name, r) in &table {
        println!(
            "{:<36} {:>10.0} {:>9.3} {:>9.3} {:>13.1} {:>8} KiB {:>7} {:>10}",
            name,
            r.handshakes as f64 / r.secs,
            r.p50_ms,
            r.p99_ms,
            r.cpu_us_per_hs,
            r.rss_kib,
            r.errors,
            r.mismatches
        );
    }
    let hs = |i: usize| table[i].1.handshakes as f64 / table[i].1.secs;
    let cpu = |i: usize| table[i].1.cpu_us_per_hs;
    println!();
    println!(
        "ratio dyncert/static:      handshakes/s {:.3}   server cpu per handshake {:.3}",
        hs(1) / hs(0),
        cpu(1) / cpu(0)
    );
    println!(
        "ratio dyncert/stock-vars:  handshakes/s {:.3}   server cpu per handshake {:.3}",
        hs(1) / hs(2),
        cpu(1) / cpu(2)
    );
    for k in ["load", "start", "warm", "mem"] {
        if let Some(v) = notes.get(k) {
            println!("{k:<6} {v}");
        }
    }
    let bad: u64 = table.iter().map(|(_, r)| r.mismatches).sum();
    println!("certificate/SNI mismatches: {bad}");
    let _ = fs::remove_dir_all(&dir);
    if bad > 0 {
        std::process::exit(1);
    }
}
