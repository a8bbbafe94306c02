//! `dyncert_metrics` serves Prometheus text from a shared-memory zone: the
//! numbers are the sum over workers whichever worker answers, and they
//! count what actually happened (handshakes by source, lookups, rejected
//! records, responses per server block). Also the log variables
//! `$dyncert_cert_not_after` and `$dyncert_fetch_time`.

use dyncert_testkit::conf::dyncert_server;
use dyncert_testkit::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The servers of the `http {}` block, after Redis and
/// [`WORKER_METRICS_SERVER`] ([`worker_metrics_http`]).
const HTTP: &str = r#"
    server {
        listen 127.0.0.1:@PORT@ ssl;
        server_name tenants;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        location / {
            return 200 "$ssl_server_name via $dyncert_source name=$dyncert_name pid=$pid until=$dyncert_cert_not_after waited=$dyncert_fetch_time\n";
        }
        location /missing { return 404; }
    }
"#;

struct Scrape {
    worker: u32,
    content_type: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key} in {:#?}", self.samples))
    }
}

fn scrape(port: u16) -> Scrape {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect metrics");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics.internal\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.1 200"), "metrics answered {head}");
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let mut samples = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (k, v) = line.rsplit_once(' ').expect("sample line");
        samples.insert(k.to_owned(), v.parse::<f64>().expect("numeric sample"));
    }
    Scrape {
        worker: header("X-Worker").parse().unwrap_or(0),
        content_type: header("Content-Type"),
        samples,
    }
}

/// Scrapes until both workers have answered; returns one scrape per pid.
fn scrape_every_worker(port: u16, workers: &BTreeSet<u32>) -> BTreeMap<u32, Scrape> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut by_worker = BTreeMap::new();
    while by_worker.len() < workers.len() {
        assert!(
            Instant::now() < deadline,
            "only workers {:?} of {workers:?} answered /metrics",
            by_worker.keys().collect::<Vec<_>>()
        );
        // New connections are spread over workers by the kernel; keep
        // asking until each has answered at least once.
        let s = scrape(port);
        by_worker.entry(s.worker).or_insert(s);
    }
    by_worker
}

fn start() -> (Stack, u16) {
    let mport = free_port();
    let opts = NginxOpts::new().workers(2).var("MPORT", mport);
    (Stack::start_with(&worker_metrics_http(HTTP), opts), mport)
}

#[test]
fn metrics_are_the_sum_over_workers_whichever_worker_answers() {
    let (s, mport) = start();
    let leaf = s.pki.leaf(&["counted.example.com"], 7101);
    s.redis.put_leaf("counted.example.com", &leaf);

    let mut by_source: BTreeMap<String, u64> = BTreeMap::new();
    let mut workers_seen = BTreeSet::new();
    for i in 0..30 {
        let sni = if i % 3 == 0 {
            "unknown-metrics.example.com"
        } else {
            "counted.example.com"
        };
        let r = s.get(Some(sni));
        *by_source.entry(r.source().to_owned()).or_default() += 1;
        workers_seen.insert(r.pid());
    }
    let workers = s.nginx.worker_pids();
    let scrapes = scrape_every_worker(mport, &workers);
    let first = scrapes.values().next().unwrap();
    for (pid, sc) in &scrapes {
        assert_eq!(
            sc.content_type, "text/plain; version=0.0.4; charset=utf-8",
            "worker {pid}"
        );
        for src in ["cache", "redis", "default"] {
            let key = format!("dyncert_handshakes_total{{source=\"{src}\"}}");
            assert_eq!(
                sc.get(&key),
                first.get(&key),
                "worker {pid} disagrees on {key}"
            );
            assert_eq!(
                sc.get(&key) as u64,
                by_source.get(src).copied().unwrap_or(0),
                "{key} vs what the clients saw {by_source:?} (workers used: {workers_seen:?})"
            );
        }
        assert_eq!(
            sc.get("dyncert_responses_total{server=\"tenants\",class=\"2xx\"}"),
            30.0,
            "worker {pid}"
        );
    }
}

#[test]
fn metrics_count_lookups_rejections_negative_hits_and_status_classes() {
    let (s, mport) = start();
    let good = s.pki.leaf(&["good.example.com"], 7201);
    s.redis.put_leaf("good.example.com", &good);
    let bad = s.pki.leaf(&["bad.example.com"], 7202);
    let other = s.pki.leaf(&["other.example.com"], 7203);
    // Key of another certificate: refused as key_mismatch.
    s.redis
        .hset_cert("bad.example.com", &bad.chain_pem, &other.key_pem);

    let before = scrape(mport);
    s.get(Some("good.example.com")).assert_served(&good, &s.pki);
    s.get(Some("bad.example.com")).assert_default();
    s.get(Some("nobody.example.com")).assert_default();
    let r = Request::get("/missing")
        .sni("good.example.com")
        .https(s.nginx.port)
        .unwrap();
    assert_eq!(r.status, 404);

    // The counters move in the shared zone as the workers apply results.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = scrape(mport);
        let d = |k: &str| now.get(k) - before.get(k);
        let ok = d("dyncert_records_rejected_total{reason=\"key_mismatch\"}") >= 1.0
            && d("dyncert_fetches_total{source=\"redis\",outcome=\"hit\"}") >= 1.0
            && d("dyncert_fetches_total{source=\"redis\",outcome=\"refused\"}") >= 1.0
            && d("dyncert_fetches_total{source=\"redis\",outcome=\"miss\"}") >= 1.0
            && d("dyncert_responses_total{server=\"tenants\",class=\"4xx\"}") == 1.0
            && d("dyncert_responses_total{server=\"tenants\",class=\"2xx\"}") == 3.0
            && d("dyncert_fetch_duration_seconds_count{source=\"redis\"}") >= 3.0
            && d("dyncert_parked_connections_total") >= 1.0;
        if ok {
            // No dyncert_api: no API lookups at all.
            assert_eq!(
                d("dyncert_fetch_duration_seconds_count{source=\"api\"}"),
                0.0
            );
            assert!(now.get("dyncert_cache_entries") >= 1.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics did not reflect the traffic:\n{:#?}",
            now.samples
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A name remembered as unknown costs no lookup: negative-cache hit.
    let before = scrape(mport);
    for _ in 0..6 {
        s.get(Some("nobody.example.com")).assert_default();
    }
    let after = scrape(mport);
    assert!(
        after.get("dyncert_negative_cache_hits_total")
            > before.get("dyncert_negative_cache_hits_total"),
        "no negative-cache hit counted"
    );
}

#[test]
fn log_variables_report_expiry_and_time_spent_waiting() {
    let (s, _mport) = start();
    let leaf = s.pki.leaf(&["vars.example.com"], 7301);
    s.redis.put_leaf("vars.example.com", &leaf);
    let r = s.get(Some("vars.example.com"));
    r.assert_served(&leaf, &s.pki);
    let field = |k: &str| {
        r.body
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {:?}", r.body))
            .to_owned()
    };
    // notAfter of the served leaf, as RFC 3339 UTC.
    let epoch = openssl::asn1::Asn1Time::from_unix(0).unwrap();
    let diff = epoch.diff(leaf.issued.cert.not_after()).unwrap();
    let secs = diff.days as i64 * 86_400 + diff.secs as i64;
    let until = field("until=");
    assert_eq!(until.len(), 20, "{until}");
    assert!(until.ends_with('Z'), "{until}");
    let expected_year = 1970 + secs / 31_556_952;
    assert!(
        until.starts_with(&expected_year.to_string()),
        "{until} vs notAfter {secs}"
    );
    // The first handshake waited for the Redis fetch: a small positive time
    // with millisecond resolution.
    let waited: f64 = field("waited=").parse().unwrap();
    assert!((0.0..2.0).contains(&waited), "waited={waited}");
    assert_eq!(field("waited=").split('.').nth(1).map(str::len), Some(3));

    // From the cache: no waiting at all.
    let again = s.get(Some("vars.example.com"));
    if again.source() == "cache" {
        let w: f64 = again
            .body
            .split_whitespace()
            .find_map(|x| x.strip_prefix("waited="))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(w, 0.0, "{:?}", again.body);
    }
    // The default certificate has no dynamic expiry: the variable is empty.
    let d = s.get(Some("none.example.com"));
    d.assert_default();
    assert!(d.body.contains("until= "), "{:?}", d.body);
}

/// As nginx-conf/minimal.conf: the TLS server is `server_name _;`
/// ([`dyncert_server`]), the port-80 server too, and the health server has
/// no `server_name`.
fn same_names() -> String {
    let tls = dyncert_server(r#"        location / { return 200 "tls\n"; }"#);
    let others = r#"
    server {
        listen 127.0.0.1:@HPORT@;
        server_name _;
        location / { return 301 https://$host$request_uri; }
    }
    server {
        listen 127.0.0.1:@MPORT@;
        location = /metrics { dyncert_metrics; }
    }
"#;
    tls + others
}

#[test]
fn server_blocks_sharing_a_first_name_are_told_apart_in_the_labels() {
    let [mport, hport] = [(); 2].map(|_| free_port());
    let opts = NginxOpts::new().var("MPORT", mport).var("HPORT", hport);
    let stack = Stack::start_with(
        &http_block(&["    dyncert_redis @REDIS@;", &same_names()]),
        opts,
    );
    for _ in 0..3 {
        let r = Request::get("/")
            .sni("a.example")
            .https(stack.nginx.port)
            .unwrap();
        assert_eq!(r.status, 200);
    }
    for _ in 0..5 {
        let r = Request::get("/").http(hport).unwrap();
        assert_eq!(r.status, 301);
    }
    let m = scrape_metrics(mport);
    // Identical label sets would be one series twice: Prometheus keeps one
    // of them and the port-80 server's counts are lost.
    assert_eq!(
        m.get("dyncert_responses_total{server=\"_\",class=\"2xx\"}"),
        3.0
    );
    assert_eq!(
        m.get("dyncert_responses_total{server=\"_#2\",class=\"3xx\"}"),
        5.0
    );
    assert_eq!(
        m.get("dyncert_responses_total{server=\"_#3\",class=\"2xx\"}"),
        0.0
    );
    let body = Request::get("/metrics").http(mport).unwrap().body;
    let series: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("dyncert_responses_total{"))
        .map(|l| l.rsplit_once(' ').unwrap().0)
        .collect();
    let unique: BTreeSet<&str> = series.iter().copied().collect();
    assert_eq!(unique.len(), series.len(), "a series twice in {series:#?}");
}
