//! `dyncert run` end to end, with the setup of acme_issue.rs: pebble
//! validates HTTP-01 against a real nginx answering from Redis, and the
//! issuer runs as a real process (or two) on a real redis-server. The ask
//! endpoint is a small HTTP server of the test that allows names starting
//! with `ok-` and records every request.

#[allow(dead_code)]
mod common_acme;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common_acme::harness::{assert_chain_verifies, http_get, Pebble};
use common_acme::{
    answer_and_serve, put_pem, serial, sorted_record, unix_now, AcmeStack, SilentCa,
};
use dyncert_testkit::*;
use openssl::x509::X509;

const STREAM: &str = "dyncert:on-demand";
const INDEX: &str = "dyncert:expiry";
const BACKOFF: &str = "dyncert:issuer-backoff";
/// A name the terminator does not answer challenges for.
const UNREACHABLE: &str = "ok-unreachable.acme.test";

/// [`answer_and_serve`] with a plain-HTTP server for [`UNREACHABLE`] that
/// does not answer challenges: its orders fail validation.
fn config() -> String {
    let ssl_server = "    server {\n        listen 127.0.0.1:@PORT@ ssl;";
    let t = answer_and_serve();
    assert!(t.contains(ssl_server));
    t.replacen(
        ssl_server,
        &format!(
            "    server {{\n        listen 127.0.0.1:@HTTP_PORT@;\n        server_name {UNREACHABLE};\n        location / {{ return 404; }}\n    }}\n{ssl_server}"
        ),
        1,
    )
}

/// The ask endpoint: 200 for names starting with `ok-`, 403 otherwise.
struct AskServer {
    port: u16,
    asked: Arc<Mutex<Vec<String>>>,
}

impl AskServer {
    fn start() -> AskServer {
        Self::start_with(|_| {})
    }

    /// [`Self::start`] that calls `before` with each domain it allows,
    /// before it answers.
    fn start_with(before: impl Fn(&str) + Send + 'static) -> AskServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&asked);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut line = String::new();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                // Until the blank line ending the head.
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    header.clear();
                }
                let domain = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|t| t.split_once("?domain="))
                    .map(|(_, d)| d.to_owned())
                    .unwrap_or_default();
                let status = if domain.starts_with("ok-") {
                    before(&domain);
                    "200 OK"
                } else {
                    "403 Forbidden"
                };
                seen.lock().unwrap().push(domain);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        AskServer { port, asked }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/ask", self.port)
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

/// One `dyncert run` process, its metrics port and its stderr.
struct Issuer {
    child: Child,
    metrics_port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl Issuer {
    fn start(redis: &Redis, pebble: &Pebble, extra: &[&str]) -> Issuer {
        let ca = pebble.ca_file();
        let mut args = vec!["--acme-ca", ca.to_str().unwrap()];
        args.extend_from_slice(extra);
        Issuer::start_at(redis, &pebble.directory_url(), &args)
    }

    /// An issuer of the CA at `acme_url` (`extra` has its `--acme-ca`).
    fn start_at(redis: &Redis, acme_url: &str, extra: &[&str]) -> Issuer {
        let dir = TempDir::new("dyncert-run");
        let log = dir.path().join("stderr");
        let metrics_port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dyncert"));
        cmd.arg("--redis")
            .arg(redis.url())
            .arg("run")
            .arg("--acme-url")
            .arg(acme_url)
            .arg("--metrics")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("spawn dyncert run");
        let issuer = Issuer {
            child,
            metrics_port,
            log,
            _dir: dir,
        };
        assert!(
            poll(Duration::from_secs(10), Duration::from_millis(50), || {
                issuer.metrics().map(|_| ())
            })
            .is_some(),
            "no metrics: {}",
            issuer.log()
        );
        issuer
    }

    /// An issuer asking `ask_url`, with a 3 s lease, once it is active.
    fn start_active(redis: &Redis, pebble: &Pebble, ask_url: &str, extra: &[&str]) -> Issuer {
        let mut args = vec!["--ask", ask_url, "--lease-ttl", "3s"];
        args.extend_from_slice(extra);
        let issuer = Issuer::start(redis, pebble, &args);
        issuer.wait_metric("dyncert_issuer_active", Duration::from_secs(10), |v| {
            v == 1.0
        });
        issuer
    }

    /// An issuer of `ca`, which never answers (`--acme-timeout 1s`),
    /// asking `ask_url`, with a 3 s lease, once it is active.
    fn start_silent_active(redis: &Redis, ca: &SilentCa, ask_url: &str) -> Issuer {
        let issuer = Issuer::start_at(
            redis,
            &ca.url(),
            &[
                "--ask",
                ask_url,
                "--lease-ttl",
                "3s",
                "--acme-timeout",
                "1s",
            ],
        );
        issuer.wait_metric("dyncert_issuer_active", Duration::from_secs(10), |v| {
            v == 1.0
        });
        issuer
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metrics(&self) -> Option<String> {
        let r = http_get(self.metrics_port, "127.0.0.1", "/metrics").ok()?;
        (r.status == 200).then_some(r.body)
    }

    /// The value of the sample `series` (`name` or `name{label="v"}`).
    fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}\n{}", self.log()))
    }

    fn wait_metric(&self, series: &str, deadline: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let mut last = f64::NAN;
        let got = poll(deadline, Duration::from_millis(100), || {
            last = self.metric(series);
            ok(last).then_some(last)
        });
        got.unwrap_or_else(|| panic!("{series} stayed {last}\n{}", self.log()))
    }

    fn active(&self) -> bool {
        self.metric("dyncert_issuer_active") == 1.0
    }

    fn signal(&mut self, sig: i32) {
        assert!(signal(self.child.id(), sig), "signal {sig}");
        let _ = self.child.wait();
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn xadd(redis: &Redis, name: &str) {
    let at = unix_now().to_string();
    let r = redis.cmd(&[
        "XADD", STREAM, "MAXLEN", "~", "100000", "*", "name", name, "at", &at,
    ]);
    assert!(matches!(r, Reply::Bulk(Some(_))), "XADD: {r:?}");
}

fn serial_of(redis: &Redis, name: &str) -> Option<String> {
    let crt = redis.record_field(name, "crt")?;
    let leaf = X509::from_pem(crt.as_bytes()).expect("crt PEM");
    Some(serial(&leaf))
}

fn wait_record(redis: &Redis, name: &str, issuer: &Issuer, pebble: &Pebble) -> String {
    poll(Duration::from_secs(30), Duration::from_millis(100), || {
        serial_of(redis, name)
    })
    .unwrap_or_else(|| {
        panic!(
            "no record for {name} within 30 s\n{}\n{}",
            issuer.log(),
            tail(&pebble.log(), 30)
        )
    })
}

const ISSUED: &str = "dyncert_issuer_orders_total{result=\"issued\"}";
const FAILED: &str = "dyncert_issuer_orders_total{result=\"failed\"}";
const RENEWED: &str = "dyncert_issuer_orders_total{result=\"renewed\"}";
const REFUSED: &str = "dyncert_issuer_on_demand_total{result=\"refused\"}";
const DROPPED: &str = "dyncert_issuer_on_demand_total{result=\"dropped\"}";
const DEFERRED: &str = "dyncert_issuer_on_demand_total{result=\"deferred\"}";
const PASSES: &str = "dyncert_issuer_renew_passes_total";
const ASKS: &str = "dyncert_issuer_ask_requests_total";

#[test]
fn on_demand_issues_what_the_ask_endpoint_allows_and_a_random_name_flood_stays_bounded() {
    let AcmeStack {
        mut nginx,
        pebble,
        redis,
        pki: _pki,
        dns: _dns,
    } = AcmeStack::start(&config());
    let ask = AskServer::start();
    let issuer = Issuer::start_active(&redis, &pebble, &ask.url(), &["--renew-every", "2s"]);
    let monitor = redis.monitor();

    let name = "ok-shop.acme.test";
    xadd(&redis, name);
    xadd(&redis, "evil.acme.test");
    let issued = wait_record(&redis, name, &issuer, &pebble);
    assert!(matches!(
        redis.cmd(&["ZSCORE", INDEX, name]),
        Reply::Bulk(Some(_))
    ));
    monitor.sync();
    assert!(
        monitor
            .observed()
            .iter()
            .any(|o| o.command() == "PUBLISH" && o.args.get(2).map(String::as_str) == Some(name)),
        "an invalidation was published for {name}"
    );
    // nginx serves it, chained to pebble's root.
    let r = poll(Duration::from_secs(5), Duration::from_millis(50), || {
        let r = Request::get("/").sni(name).https(nginx.port).ok()?;
        r.tls().leaf_sans.iter().any(|s| s == name).then_some(r)
    })
    .unwrap_or_else(|| panic!("nginx does not serve {name}\n{}", nginx.logs()));
    let root = X509::from_pem(pebble.issuer_root_pem().as_bytes()).unwrap();
    assert_chain_verifies(&r.tls().chain, &root);
    assert_eq!(serial(&r.tls().chain[0]), issued);

    // The forbidden name was asked about, refused, never ordered.
    issuer.wait_metric(REFUSED, Duration::from_secs(10), |v| v >= 1.0);
    assert!(ask.asked().iter().any(|d| d == "evil.acme.test"));
    assert!(redis.record("evil.acme.test").is_empty());
    assert_eq!(issuer.metric(ISSUED), 1.0);
    assert_eq!(issuer.metric(FAILED), 0.0);
    assert!(issuer
        .log()
        .contains("on-demand \"evil.acme.test\": refused"));

    // A flood of random names: dropped beyond the ask rate, none ordered.
    let asks_before = ask.asked().len();
    let passes_before = issuer.metric(PASSES);
    let handled_before = issuer.metric(REFUSED) + issuer.metric(DROPPED);
    let started = Instant::now();
    let mut rnd = [0u8; 8];
    let flood: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            openssl::rand::rand_bytes(&mut rnd).unwrap();
            let label: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
            let name = format!("r{i}-{label}.flood.test");
            encode_command(&["XADD", STREAM, "*", "name", &name, "at", "0"])
        })
        .collect();
    redis.pipeline(flood);
    issuer.wait_metric(REFUSED, Duration::from_secs(30), |_| {
        issuer.metric(REFUSED) + issuer.metric(DROPPED) >= handled_before + 1000.0
    });
    let elapsed = started.elapsed().as_secs_f64();
    let asked = ask.asked().len() - asks_before;
    // A burst of 10, then 10 per second.
    let cap = 10.0 + 10.0 * elapsed.ceil();
    eprintln!("flood: 1000 names handled in {elapsed:.1} s, {asked} ask requests");
    assert!(
        (asked as f64) <= cap,
        "{asked} ask requests in {elapsed:.1} s (cap {cap})"
    );
    assert!(issuer.metric(DROPPED) >= 900.0 - 10.0 * elapsed.ceil());
    assert_eq!(issuer.metric(ASKS) as usize, ask.asked().len());
    assert_eq!(issuer.metric(ISSUED), 1.0, "no order for a flooded name");
    assert_eq!(issuer.metric(FAILED), 0.0);
    // And it keeps renewing (every 2 s) meanwhile.
    issuer.wait_metric(PASSES, Duration::from_secs(6), |v| v >= passes_before + 2.0);
    assert_eq!(serial_of(&redis, name), Some(issued));
    nginx.assert_healthy();
}

#[test]
fn one_instance_is_active_and_a_standby_takes_over_within_the_lease_ttl() {
    let AcmeStack {
        nginx: _nginx,
        pebble,
        redis,
        pki: _pki,
        dns: _dns,
    } = AcmeStack::start(&config());
    let ask = AskServer::start();
    let url = ask.url();
    let args = ["--ask", url.as_str(), "--lease-ttl", "3s"];
    let mut a = Issuer::start(&redis, &pebble, &args);
    let mut b = Issuer::start(&redis, &pebble, &args);
    poll(Duration::from_secs(10), Duration::from_millis(100), || {
        (a.active() || b.active()).then_some(())
    })
    .expect("one becomes active");
    // Exactly one, and it stays so across lease renewals.
    for _ in 0..20 {
        assert!(a.active() ^ b.active(), "\n{}\n{}", a.log(), b.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    if b.active() {
        std::mem::swap(&mut a, &mut b);
    }

    // kill -9: no release; the standby waits for the key to expire.
    a.signal(9);
    let killed = Instant::now();
    let name = "ok-takeover.acme.test";
    xadd(&redis, name);
    b.wait_metric("dyncert_issuer_active", Duration::from_secs(6), |v| {
        v == 1.0
    });
    let took = killed.elapsed();
    eprintln!("takeover {took:?} after kill -9 (lease ttl 3 s)");
    // ttl + ttl/3, plus the 100 ms between two metric reads.
    assert!(
        took <= Duration::from_millis(4_200),
        "took over after {took:?}"
    );
    assert_eq!(b.metric("dyncert_issuer_lease_takeovers_total"), 1.0);
    assert!(b.log().contains("acquired, active"), "{}", b.log());

    let issued = wait_record(&redis, name, &b, &pebble);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(serial_of(&redis, name), Some(issued), "ordered once");
    assert_eq!(b.metric(ISSUED), 1.0);
    assert_eq!(ask.asked().iter().filter(|d| d.as_str() == name).count(), 1);
    assert!(matches!(
        redis.cmd(&["EXISTS", &format!("dyncert:order-lock:{name}")]),
        Reply::Int(0)
    ));

    // SIGTERM releases the lease at once.
    b.signal(15);
    assert!(matches!(
        redis.cmd(&["EXISTS", "dyncert:issuer-lease"]),
        Reply::Int(0)
    ));
    assert!(b.log().contains("released"), "{}", b.log());
}

#[test]
fn run_renews_a_due_record_at_start_while_visitors_keep_coming_and_then_only_when_due() {
    let AcmeStack {
        nginx,
        pebble,
        redis,
        pki,
        dns: _dns,
    } = AcmeStack::start(&config());
    let name = "shop.acme.test";
    let leaf = pki.leaf_with(
        &[name],
        7,
        LeafOpts {
            expires_in: Some(Duration::from_secs(86_400)),
            ..Default::default()
        },
    );
    redis.put_leaf(name, &leaf);
    let soon = (unix_now() + 86_400).to_string();
    redis.cmd(&["ZADD", INDEX, &soon, name]);
    let old = serial_of(&redis, name).unwrap();

    // Visitors keep coming throughout the renewal: every handshake must
    // get a certificate naming the name, the old one and then the new.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = nginx.port;
    let visitors = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut served, mut failed, mut serials) = (0u32, Vec::new(), Vec::<String>::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match Request::get("/").sni(name).https(port) {
                    Ok(r) if r.tls().leaf_sans.iter().any(|s| s == name) => {
                        served += 1;
                        let s = serial(&r.tls().chain[0]);
                        if serials.last() != Some(&s) {
                            serials.push(s);
                        }
                    }
                    Ok(r) => failed.push(format!("served {:?}", r.tls().leaf_sans)),
                    Err(e) => failed.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (served, failed, serials)
        })
    };

    let issuer = Issuer::start(
        &redis,
        &pebble,
        &[
            "--renew-every",
            "2s",
            "--within",
            "30d",
            "--lease-ttl",
            "3s",
        ],
    );
    issuer.wait_metric(RENEWED, Duration::from_secs(60), |v| v == 1.0);
    let renewed = serial_of(&redis, name).unwrap();
    assert_ne!(renewed, old, "renewed at start");
    // The invalidation reaches the worker; then the visitors stop.
    poll(Duration::from_secs(5), Duration::from_millis(20), || {
        let r = Request::get("/").sni(name).https(port).ok()?;
        (serial(&r.tls().chain[0]) == renewed).then_some(())
    })
    .expect("nginx serves the renewed certificate");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, failed, serials) = visitors.join().unwrap();
    eprintln!(
        "renewal under traffic: {served} handshakes, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert_eq!(
        serials,
        [old.clone(), renewed.clone()],
        "old, then new, never back"
    );
    assert!(served > 20, "{served} handshakes");
    assert!(issuer.log().contains("no --ask"), "{}", issuer.log());

    // Later passes find nothing due.
    let passes = issuer.metric(PASSES);
    issuer.wait_metric(PASSES, Duration::from_secs(10), |v| v >= passes + 3.0);
    assert_eq!(issuer.metric(RENEWED), 1.0);
    assert_eq!(serial_of(&redis, name), Some(renewed));
    let next = issuer.metric("dyncert_issuer_next_expiry_seconds");
    assert!(next > 30.0 * 86_400.0, "next expiry in {next} s");
}

#[test]
fn a_failed_order_backs_off_and_is_not_retried_before_its_time() {
    let AcmeStack {
        nginx: _nginx,
        pebble,
        redis,
        pki: _pki,
        dns: _dns,
    } = AcmeStack::start(&config());
    let ask = AskServer::start();
    // One order per registered domain per hour: the failed order spends
    // acme.test's budget.
    let issuer = Issuer::start_active(
        &redis,
        &pebble,
        &ask.url(),
        &["--max-orders-per-domain", "1/1h"],
    );

    xadd(&redis, UNREACHABLE);
    issuer.wait_metric(FAILED, Duration::from_secs(60), |v| v == 1.0);
    let now = unix_now() as i64;
    let entry = match redis.cmd(&["HGET", BACKOFF, UNREACHABLE]) {
        Reply::Bulk(Some(v)) => String::from_utf8(v).unwrap(),
        other => panic!("no backoff entry: {other:?}\n{}", issuer.log()),
    };
    let (next, failures) = entry.split_once(' ').unwrap();
    let next: i64 = next.parse().unwrap();
    assert_eq!(failures, "1");
    assert!(
        (now + 30..=now + 61).contains(&next),
        "next attempt {next}, now {now}"
    );
    assert!(redis.record(UNREACHABLE).is_empty());
    assert!(issuer
        .log()
        .contains(&format!("on-demand \"{UNREACHABLE}\": failed")));

    // Asked for again, twice: deferred, neither asked about nor ordered.
    // One at a time: repeats within one batch of entries are skipped.
    let deferred = issuer.metric(DEFERRED);
    for n in [1.0, 2.0] {
        xadd(&redis, UNREACHABLE);
        issuer.wait_metric(DEFERRED, Duration::from_secs(10), |v| v >= deferred + n);
    }
    assert_eq!(issuer.metric(FAILED), 1.0);
    assert_eq!(issuer.metric(ISSUED), 0.0);
    assert_eq!(
        ask.asked()
            .iter()
            .filter(|d| d.as_str() == UNREACHABLE)
            .count(),
        1
    );
    assert!(matches!(
        redis.cmd(&["HGET", BACKOFF, UNREACHABLE]),
        Reply::Bulk(Some(v)) if v == entry.as_bytes()
    ));

    // Another name of acme.test: allowed, but over the domain's budget.
    let other = "ok-other.acme.test";
    let budget = "dyncert_issuer_failures_total{reason=\"budget\"}";
    assert_eq!(issuer.metric(budget), 0.0);
    xadd(&redis, other);
    issuer.wait_metric(budget, Duration::from_secs(10), |v| v == 1.0);
    assert!(ask.asked().iter().any(|d| d == other));
    assert!(redis.record(other).is_empty());
    assert_eq!(issuer.metric(FAILED), 1.0);
    assert!(matches!(
        redis.cmd(&["ZCARD", "dyncert:issuer-orders:domain:acme.test"]),
        Reply::Int(1)
    ));
    assert!(issuer.log().contains(&format!(
        "on-demand \"{other}\": deferred (domain budget spent)"
    )));
}

#[test]
fn run_refuses_bad_options_with_one_line() {
    let redis = Redis::start();
    let acme = ["--acme-url", "https://127.0.0.1:1/dir"];
    for (args, code, says) in [
        (
            vec!["--ask", "https://ask.internal/"],
            1,
            "an http:// URL is needed",
        ),
        (vec!["--lease-ttl", "0s"], 2, "invalid time"),
        (vec!["--max-orders-per-domain", "50"], 2, "N/PERIOD"),
        (vec!["--ask-rate", "0"], 2, "ask-rate"),
        (vec!["--lease-key", "a b"], 1, "--lease-key"),
    ] {
        let mut all = vec!["run"];
        all.extend_from_slice(&acme);
        all.extend_from_slice(&args);
        let out = common_acme::dyncert(&redis, &all);
        assert_eq!(out.code, code, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
    let out = common_acme::dyncert(&redis, &["--index", "off", "run", acme[0], acme[1]]);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr.trim_end(),
        "dyncert: dyncert run needs the expiry index (--index off)"
    );
}

/// [`answer_and_serve`] with `dyncert_on_demand on` on the TLS server and a
/// stream bound of 500 entries.
fn on_demand_config() -> String {
    let cfg = answer_and_serve()
        .replacen(
            "    dyncert_redis @REDIS@;\n",
            "    dyncert_redis @REDIS@;\n    dyncert_on_demand_stream dyncert:on-demand maxlen=500;\n",
            1,
        )
        .replacen("        dyncert on;\n", "        dyncert on;\n        dyncert_on_demand on;\n", 1);
    assert!(cfg.contains("dyncert_on_demand on;") && cfg.contains("maxlen=500"));
    cfg
}

/// The serial of the leaf `nginx` serves for `name`, when it names `name`
/// (else the default certificate was served: `None`).
fn served(nginx: &Nginx, name: &str) -> Option<(String, Vec<X509>)> {
    let r = Request::get("/").sni(name).https(nginx.port).ok()?;
    let tls = r.tls();
    tls.leaf_sans
        .iter()
        .any(|s| s == name)
        .then(|| (serial(&tls.chain[0]), tls.chain.clone()))
}

/// The whole on-demand path, nothing written by the test: a first visitor's
/// handshake on terminator A gets the default certificate and makes the
/// module queue the name; `dyncert run` asks the endpoint, orders it over
/// HTTP-01 (answered by the terminators), stores and publishes it; a later
/// handshake on A and on terminator B (same Redis) gets the issued
/// certificate. A forbidden name is queued and never ordered; 1,000 random
/// names from handshakes leave the stream at its bound and order nothing.
#[test]
fn a_first_visitor_triggers_issuance_served_by_two_terminators() {
    let config = on_demand_config();
    let AcmeStack {
        nginx: mut a,
        pebble,
        redis,
        pki,
        dns: _dns,
    } = AcmeStack::start(&config);
    let mut b = Nginx::start(
        &pki,
        &config,
        NginxOpts::new().redis(&redis).var("HTTP_PORT", free_port()),
    );
    let ask = AskServer::start();
    let issuer = Issuer::start_active(&redis, &pebble, &ask.url(), &[]);

    let name = "ok-visitor.acme.test";
    let started = Instant::now();
    assert!(
        served(&a, name).is_none(),
        "the first visitor gets the default"
    );
    let queued = poll(Duration::from_secs(5), Duration::from_millis(20), || {
        redis
            .stream_entries(STREAM)
            .into_iter()
            .find(|e| e.get("name").map(String::as_str) == Some(name))
    });
    assert!(queued.is_some(), "the module queued {name}\n{}", a.logs());
    // Within 30 s both terminators serve the issued certificate, chained
    // to pebble's root.
    let root = X509::from_pem(pebble.issuer_root_pem().as_bytes()).unwrap();
    let mut seen = Vec::new();
    for t in [&a, &b] {
        let (serial, chain) = poll(Duration::from_secs(30), Duration::from_millis(200), || {
            served(t, name)
        })
        .unwrap_or_else(|| {
            panic!(
                "{name} not served within 30 s\n{}\n{}",
                issuer.log(),
                t.logs()
            )
        });
        assert_chain_verifies(&chain, &root);
        seen.push(serial);
    }
    eprintln!(
        "{name}: issued and served by both terminators {:.1} s after the first handshake",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(seen[0], seen[1], "one certificate for both terminators");
    assert_eq!(serial_of(&redis, name).as_ref(), Some(&seen[0]));
    assert_eq!(issuer.metric(ISSUED), 1.0);

    // A forbidden name: queued by the module, asked, never ordered.
    let evil = "evil-visitor.acme.test";
    assert!(served(&b, evil).is_none());
    issuer.wait_metric(REFUSED, Duration::from_secs(10), |v| v >= 1.0);
    assert!(ask.asked().iter().any(|d| d == evil), "{:?}", ask.asked());
    assert!(redis.record(evil).is_empty());

    // A random-SNI flood through the module: the stream stays at its
    // bound and nothing is ordered. Each name from a network (/24) of its
    // own: one address may queue only 4 names per period per worker, the
    // addresses of one /24 together 16 (tests/on_demand_flood.rs).
    let mut rnd = [0u8; 6];
    for i in 0..1000 {
        openssl::rand::rand_bytes(&mut rnd).unwrap();
        let label: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
        let t = if i % 2 == 0 { &a } else { &b };
        let _ = Request::get("/")
            .sni(&format!("f{i}-{label}.flood.test"))
            .from(&format!("127.{}.{}.1", 1 + i / 250, i % 250))
            .https(t.port);
    }
    let len = match redis.cmd(&["XLEN", STREAM]) {
        Reply::Int(n) => n,
        r => panic!("XLEN: {r:?}"),
    };
    assert!(len <= 500, "stream length {len} over its bound");
    issuer.wait_metric(REFUSED, Duration::from_secs(30), |_| {
        issuer.metric(REFUSED) + issuer.metric(DROPPED) >= 400.0
    });
    assert_eq!(issuer.metric(ISSUED), 1.0, "no order for a flooded name");
    assert_eq!(issuer.metric(FAILED), 0.0);
    // The issued name is still served from both.
    assert_eq!(served(&a, name).map(|s| s.0).as_ref(), Some(&seen[0]));
    a.assert_healthy();
    b.assert_healthy();
}

/// A record the operator stores while on-demand issuance is ordering the
/// name (here: when the ask endpoint is asked, after the issuer found no
/// record) is kept: the issued certificate is not stored over it, so
/// neither its certificate nor its policy fields are lost.
#[test]
fn on_demand_keeps_a_record_stored_while_its_certificate_was_ordered() {
    let AcmeStack {
        nginx: _nginx,
        pebble,
        redis,
        pki,
        dns: _dns,
    } = AcmeStack::start(&answer_and_serve());
    let name = "ok-raced.acme.test";
    let leaf = pki.leaf(&[name], 7001);
    let (port, crt, key) = (redis.port, leaf.chain_pem.clone(), leaf.key_pem.clone());
    let ask = AskServer::start_with(move |domain| {
        if domain == name {
            let key_name = format!("dyncert:cert:{domain}");
            let args = [
                "HSET",
                &key_name,
                "crt",
                &crt,
                "key",
                &key,
                "allow",
                "10.0.0.0/8",
            ];
            redis_command(port, &args).expect("the operator's put");
        }
    });
    let issuer = Issuer::start_active(&redis, &pebble, &ask.url(), &[]);
    xadd(&redis, name);
    issuer.wait_metric(
        "dyncert_issuer_on_demand_total{result=\"exists\"}",
        Duration::from_secs(30),
        |v| v == 1.0,
    );
    assert!(ask.asked().iter().any(|d| d == name), "{:?}", ask.asked());
    assert!(
        issuer
            .log()
            .contains("the record changed while the certificate was ordered"),
        "{}",
        issuer.log()
    );
    assert_eq!(serial_of(&redis, name), Some(serial(&leaf.issued.cert)));
    assert_eq!(
        redis.record_field(name, "allow").as_deref(),
        Some("10.0.0.0/8")
    );
    assert_eq!(issuer.metric(ISSUED), 0.0);
}

/// The ask endpoint down or hanging fails closed: the name is refused,
/// counted as an ask failure, and never ordered.
#[test]
fn an_ask_endpoint_that_is_down_or_hangs_refuses() {
    let AcmeStack {
        nginx: _nginx,
        pebble,
        redis,
        pki: _pki,
        dns: _dns,
    } = AcmeStack::start(&config());
    let ask_failures = "dyncert_issuer_failures_total{reason=\"ask\"}";
    // Down: nothing listens on the port.
    let down = format!("http://127.0.0.1:{}/ask", free_port());
    let issuer = Issuer::start_active(&redis, &pebble, &down, &[]);
    xadd(&redis, "ok-down.acme.test");
    issuer.wait_metric(REFUSED, Duration::from_secs(10), |v| v >= 1.0);
    assert_eq!(issuer.metric(ask_failures), 1.0);
    drop(issuer);

    // Hanging: the connection is accepted by the kernel, never answered.
    let hang = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}/ask", hang.local_addr().unwrap().port());
    let issuer = Issuer::start_active(&redis, &pebble, &url, &[]);
    let started = Instant::now();
    xadd(&redis, "ok-hang.acme.test");
    issuer.wait_metric(REFUSED, Duration::from_secs(15), |v| v >= 1.0);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4),
        "refused after the ask timeout, not before: {waited:?}"
    );
    assert_eq!(issuer.metric(ask_failures), 1.0);
    assert_eq!(issuer.metric(ISSUED), 0.0);
    for name in ["ok-down.acme.test", "ok-hang.acme.test"] {
        assert!(redis.record(name).is_empty(), "{name} never ordered");
    }
    assert!(
        issuer
            .log()
            .contains("on-demand \"ok-hang.acme.test\": ask failed"),
        "{}",
        issuer.log()
    );
}

/// A CA that accepts the connection and never answers: each ACME step
/// fails within `--acme-timeout`, so the renew pass ends with its record
/// failed, the next on-demand name is ordered, fails the same way and is
/// backed off, and the worker goes on while the instance stays active.
#[test]
fn run_goes_on_past_a_ca_that_never_answers_within_the_acme_timeout() {
    let pki = Pki::new();
    let redis = Redis::start();
    let ca = SilentCa::start();
    let ask = AskServer::start();
    // Due: 10 minutes of its life left.
    let dir = TempDir::new("run-silent-ca");
    let due = "due.acme.test";
    let leaf = pki.leaf_with(
        &[due],
        7,
        LeafOpts {
            expires_in: Some(Duration::from_secs(600)),
            ..Default::default()
        },
    );
    let out = put_pem(&redis, dir.path(), due, &leaf.chain_pem, &leaf.key_pem, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let before = sorted_record(&redis, due);

    let url = ca.url();
    let issuer = Issuer::start_at(
        &redis,
        &url,
        &[
            "--ask",
            &ask.url(),
            "--lease-ttl",
            "3s",
            "--acme-timeout",
            "1s",
        ],
    );
    let logged = |what: &str| {
        poll(Duration::from_secs(20), Duration::from_millis(100), || {
            issuer.log().contains(what).then_some(())
        })
        .unwrap_or_else(|| panic!("no \"{what}\" in\n{}", issuer.log()))
    };
    logged("renew pass: 0 renewed, some failed");
    assert!(
        issuer.log().contains(&format!(
            "renewal information: account: no answer from the CA at {url} within 1 s (--acme-timeout); \
             the lifetime rule decides for the rest of this run"
        )),
        "{}",
        issuer.log()
    );
    assert_eq!(
        sorted_record(&redis, due),
        before,
        "the due record is kept as it was"
    );

    let name = "ok-new.acme.test";
    xadd(&redis, name);
    logged(&format!(
        "on-demand \"{name}\": failed (issue \"{name}\": account: no answer from the CA at {url} \
         within 1 s (--acme-timeout)); next attempt in 60 s"
    ));
    assert_eq!(ask.asked(), [name]);
    assert_eq!(issuer.metric(FAILED), 1.0);
    assert!(
        redis.cmd(&["HGET", BACKOFF, name]) != Reply::Bulk(None),
        "backed off"
    );
    assert!(issuer.active(), "still the active instance");
    assert!(ca.accepted() >= 3, "every step reached the CA");
}

/// An on-demand certificate, once stored, is published and its entry
/// acknowledged whatever the bookkeeping after it does: a Redis error
/// clearing the name's backoff (HDEL refused by an ACL here) is a
/// warning, not a failed entry left pending without its invalidation.
#[test]
fn on_demand_publishes_a_stored_certificate_when_clearing_its_backoff_fails() {
    let AcmeStack {
        nginx: _nginx,
        pebble,
        redis,
        pki: _pki,
        dns: _dns,
    } = AcmeStack::start(&answer_and_serve());
    redis.cmd(&["ACL", "SETUSER", "default", "-hdel"]);
    let ask = AskServer::start();
    let issuer = Issuer::start_active(&redis, &pebble, &ask.url(), &[]);
    let name = "ok-bookkept.acme.test";
    xadd(&redis, name);
    issuer.wait_metric(ISSUED, Duration::from_secs(30), |v| v == 1.0);
    assert!(serial_of(&redis, name).is_some());
    let log = issuer.log();
    assert!(
        log.contains(&format!(
            "dyncert run: on-demand \"{name}\": issued, notAfter "
        )) && log.contains("; invalidation published on \"dyncert:invalidate\""),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "dyncert run: warning: on-demand \"{name}\": its backoff was not cleared (Redis: "
        )),
        "{log}"
    );
    let pending = poll(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || match redis.cmd(&["XPENDING", STREAM, "dyncert-issuer"]) {
            Reply::Array(Some(a)) if a.first() == Some(&Reply::Int(0)) => Some(()),
            _ => None,
        },
    );
    assert!(pending.is_some(), "the entry was acknowledged\n{log}");
}

/// An ask endpoint that accepts and then trickles its answer, one byte a
/// second (a 200 status line, given time), is refused within the ask
/// request's one deadline (5 s), not after as many reads as it cares to
/// send. A client that trickles its request to /metrics meanwhile does
/// not keep the scraper out.
#[test]
fn an_ask_endpoint_that_trickles_its_answer_is_refused_within_the_deadline() {
    let redis = Redis::start();
    let ca = SilentCa::start();
    let trickle = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}/ask",
        trickle.local_addr().unwrap().port()
    );
    std::thread::spawn(move || {
        for conn in trickle.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                for b in b"HTTP/1.1 200 OK\r\n\r\n".iter().cycle().take(120) {
                    if conn.write_all(&[*b]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
        }
    });
    let issuer = Issuer::start_silent_active(&redis, &ca, &url);

    // A metrics client that sends one byte a second, and never ends its
    // request head.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", issuer.metrics_port)).unwrap();
    let dribbler = std::thread::spawn(move || {
        for b in b"GET /metrics HTTP/1.1\r\nX: ".iter().cycle().take(15) {
            if slow.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let scraped = Instant::now();
    assert!(issuer.metrics().is_some(), "{}", issuer.log());
    assert!(
        scraped.elapsed() < Duration::from_secs(1),
        "the scrape waited behind the slow client: {:?}",
        scraped.elapsed()
    );

    let name = "ok-trickle.acme.test";
    let started = Instant::now();
    xadd(&redis, name);
    issuer.wait_metric(REFUSED, Duration::from_secs(9), |v| v >= 1.0);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4),
        "refused at the deadline, not before: {waited:?}"
    );
    assert_eq!(
        issuer.metric("dyncert_issuer_failures_total{reason=\"ask\"}"),
        1.0
    );
    assert!(
        issuer.log().contains(&format!(
            "on-demand \"{name}\": ask failed: no answer within 5 s"
        )),
        "{}",
        issuer.log()
    );
    assert_eq!(issuer.metric(ISSUED) + issuer.metric(FAILED), 0.0);
    assert_eq!(ca.accepted(), 0, "nothing ordered");
    drop(dribbler);
}

/// Bytes Redis has sent to its clients so far.
fn redis_sent(redis: &Redis) -> u64 {
    let Reply::Bulk(Some(info)) = redis.cmd(&["INFO", "stats"]) else {
        panic!("INFO")
    };
    String::from_utf8(info)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A stream entry with an oversized name (and an oversized other field)
/// is dropped as an entry with no name, without its values reaching the
/// issuer: the bytes Redis sends stay far below their size. The entry
/// after it is handled as usual.
#[test]
fn an_oversized_stream_entry_is_dropped_without_being_read() {
    let redis = Redis::start();
    let ca = SilentCa::start();
    let ask = AskServer::start();
    let issuer = Issuer::start_silent_active(&redis, &ca, &ask.url());
    issuer.wait_metric(PASSES, Duration::from_secs(10), |v| v >= 1.0);
    let size = 4_000_000;
    let before = redis_sent(&redis);
    let Reply::Bulk(Some(id)) = redis.cmd(&[
        "EVAL",
        "return redis.call('XADD', KEYS[1], '*', 'name', string.rep('a', tonumber(ARGV[1])), \
         'at', string.rep('1', tonumber(ARGV[1])))",
        "1",
        STREAM,
        &size.to_string(),
    ]) else {
        panic!("XADD")
    };
    let id = String::from_utf8(id).unwrap();
    xadd(&redis, "no-after-the-big-one.acme.test");
    issuer.wait_metric(REFUSED, Duration::from_secs(10), |v| v >= 2.0);
    let sent = redis_sent(&redis) - before;
    assert!(
        sent < 1_000_000,
        "Redis sent {sent} bytes: the oversized entry was read\n{}",
        issuer.log()
    );
    assert!(
        issuer
            .log()
            .contains(&format!("on-demand entry {id}: no name, dropped")),
        "{}",
        issuer.log()
    );
    assert_eq!(ask.asked(), ["no-after-the-big-one.acme.test"]);
}

/// Names no CA can issue for (the module's own rule,
/// `on_demand::unissuable`), put on the stream by anyone who can write to
/// Redis: each is refused with its reason and counted, and neither the ask
/// endpoint (which would allow them: they start with `ok-`) nor the CA is
/// troubled with them. The name after them is handled as usual.
#[test]
fn names_no_ca_can_issue_are_refused_before_the_ask_endpoint() {
    let redis = Redis::start();
    let ca = SilentCa::start();
    let ask = AskServer::start();
    let issuer = Issuer::start_silent_active(&redis, &ca, &ask.url());
    let unissuable = [
        ("ok-intranet", "a single-label name"),
        ("ok-shop.localhost", "a special-use top-level domain"),
        ("ok-shop.onion", "a special-use top-level domain"),
        ("ok-shop.0x7f", "a numeric top-level label"),
        (
            "ok-shop.ab--cd.test",
            "a label that is bad IDNA or reserved",
        ),
    ];
    for (name, _) in unissuable {
        xadd(&redis, name);
    }
    xadd(&redis, "no-after-them.acme.test");
    let n = unissuable.len() as f64 + 1.0;
    issuer.wait_metric(REFUSED, Duration::from_secs(10), |v| v >= n);
    assert_eq!(ask.asked(), ["no-after-them.acme.test"]);
    assert_eq!(ca.accepted(), 0, "nothing ordered");
    let log = issuer.log();
    for (name, why) in unissuable {
        assert!(
            log.contains(&format!(
                "on-demand \"{name}\": refused (no CA can issue for {why}"
            )),
            "{log}"
        );
        assert!(redis.record(name).is_empty());
    }
}
