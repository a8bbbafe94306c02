//! `dyncert_on_demand on;`: a handshake for a name no source knows, on a
//! server with on-demand, still gets what `dyncert_unknown` says, and the
//! worker adds the name to a bounded Redis stream (`XADD <stream> MAXLEN =
//! <maxlen> * name <name> at <secs> worker <pid>`) at most once per
//! negative-cache period. Never for a server without on-demand, a name
//! that has a record, a name a source failed for, or an invalid SNI.

use dyncert_testkit::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const STREAM: &str = "dyncert:on-demand";
/// The negative-cache period of the configurations below.
const NEGATIVE: Duration = Duration::from_secs(2);

// One worker: the once-per-period rule is per worker. Three TLS servers:
// on-demand on (the port's default server), on-demand off on the same
// port (chosen by SNI, which the peek step cannot know), and a port whose
// only server never turned it on.
const HTTP: &str = r#"
http {
    access_log off;
    dyncert_redis @REDIS@;
    dyncert_redis_timeout 500ms;
    dyncert_fetch_timeout 2s;
    dyncert_cache negative=2s;
    @EXTRA@
    server {
        listen 127.0.0.1:@MPORT@;
        location = /metrics { dyncert_metrics; }
    }
    server {
        listen 127.0.0.1:@PORT@ ssl;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        dyncert_on_demand on;
        @SERVER@
        location / { return 200 "$ssl_server_name via $dyncert_source\n"; }
    }
    server {
        listen 127.0.0.1:@PORT@ ssl;
        server_name .off.example.net;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        dyncert_on_demand off;
        location / { return 200 "$ssl_server_name via $dyncert_source\n"; }
    }
    server {
        listen 127.0.0.1:@OPORT@ ssl;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        location / { return 200 "$ssl_server_name via $dyncert_source\n"; }
    }
}
"#;

struct OnDemand {
    pki: Pki,
    redis: Redis,
    api: Option<CertApi>,
    nginx: Nginx,
    mport: u16,
    oport: u16,
}

impl OnDemand {
    fn start(extra: &str, server: &str, api: Option<CertApi>) -> OnDemand {
        let pki = Pki::new();
        let redis = Redis::start();
        let (mport, oport) = (free_port(), free_port());
        let mut opts = NginxOpts::new()
            .workers(1)
            .redis(&redis)
            .var("MPORT", mport)
            .var("OPORT", oport)
            .var("EXTRA", extra)
            .var("SERVER", server);
        if let Some(api) = &api {
            opts = opts.api(api);
        }
        let nginx = Nginx::start(&pki, HTTP, opts);
        OnDemand {
            pki,
            redis,
            api,
            nginx,
            mport,
            oport,
        }
    }

    /// A handshake and request with `sni` on `port`, which must get the
    /// default certificate.
    fn default_on(&self, port: u16, sni: &str) {
        let r = Request::get("/")
            .sni(sni)
            .host("localhost")
            .https(port)
            .unwrap_or_else(|e| panic!("{sni}: {e}\n{}", self.nginx.logs()));
        r.assert_default();
    }

    fn default(&self, sni: &str) {
        self.default_on(self.nginx.port, sni);
    }

    fn counters(&self) -> (f64, f64) {
        let m = scrape_metrics(self.mport);
        (
            m.get("dyncert_on_demand_enqueued_total"),
            m.get("dyncert_on_demand_enqueue_errors_total"),
        )
    }

    /// Waits until the worker has reported `n` enqueues.
    fn wait_enqueued(&self, n: f64) {
        let done = poll(Duration::from_secs(5), Duration::from_millis(20), || {
            (self.counters().0 >= n).then_some(())
        });
        assert!(
            done.is_some(),
            "{n} enqueues not reported: {:?}\n{}",
            self.counters(),
            self.nginx.logs()
        );
    }
}

fn names(redis: &Redis) -> Vec<String> {
    redis
        .stream_entries(STREAM)
        .into_iter()
        .map(|e| e["name"].clone())
        .collect()
}

fn xlen(redis: &Redis, key: &str) -> i64 {
    match redis.cmd(&["XLEN", key]) {
        Reply::Int(n) => n,
        other => panic!("XLEN answered {other:?}"),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn unknown_name_gets_the_default_and_is_queued_once_per_negative_period() {
    let mut s = OnDemand::start("", "", None);
    let name = "new-customer.example.com";
    let first = Instant::now();
    s.default(name);
    s.wait_enqueued(1.0);
    let e = s.redis.stream_entries(STREAM);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0]["name"], name);
    let at: u64 = e[0]["at"].parse().expect("at is unix seconds");
    assert!(at.abs_diff(unix_now()) <= 5, "at={at}");
    assert_eq!(e[0]["worker"], s.nginx.worker_pid().to_string());

    // Within the negative-cache period: the same entry only. The name is
    // in upper case once, with a trailing dot once: the same name.
    for i in 0..10 {
        let sni = match i {
            0 => "NEW-CUSTOMER.example.com".to_owned(),
            1 => format!("{name}."),
            _ => name.to_owned(),
        };
        s.default(&sni);
    }
    assert!(first.elapsed() < NEGATIVE, "too slow to prove anything");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(names(&s.redis), [name]);
    assert_eq!(s.counters(), (1.0, 0.0));

    // After the period: fetched again, still unknown, queued again.
    thread::sleep(NEGATIVE.saturating_sub(first.elapsed()) + Duration::from_millis(200));
    s.default(name);
    s.wait_enqueued(2.0);
    assert_eq!(names(&s.redis), [name, name]);
    s.nginx.assert_healthy();
}

#[test]
fn with_reject_the_handshake_fails_and_the_name_is_queued() {
    let s = OnDemand::start("", "dyncert_unknown reject;", None);
    let name = "rejected.example.com";
    for _ in 0..3 {
        let err = Request::get("/")
            .sni(name)
            .handshake(s.nginx.port)
            .expect_err("handshake for an unknown name succeeded despite reject");
        assert!(is_unrecognized_name(&err), "wrong failure: {err}");
    }
    s.wait_enqueued(1.0);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(names(&s.redis), [name]);
}

#[test]
fn servers_without_on_demand_queue_nothing() {
    let s = OnDemand::start("", "", None);
    // The same port, another server chosen by SNI: off.
    s.default("a.off.example.net");
    // Another port whose server never turned it on.
    s.default_on(s.oport, "b.example.org");
    // A name first seen on a server without on-demand keeps its one
    // enqueue for a server with it.
    s.default_on(s.oport, "c.example.org");
    s.default("c.example.org");
    s.wait_enqueued(1.0);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(names(&s.redis), ["c.example.org"]);
}

#[test]
fn known_names_invalid_names_and_no_sni_queue_nothing() {
    let s = OnDemand::start("", "", None);
    let leaf = s.pki.leaf(&["known.example.com"], 4101);
    s.redis.put_leaf("known.example.com", &leaf);
    let r = Request::get("/")
        .sni("known.example.com")
        .https(s.nginx.port)
        .unwrap();
    r.assert_served(&leaf, &s.pki);
    for sni in ["192.0.2.1", "under_score.example.com", "-bad.example.com"] {
        match Request::get("/")
            .sni(sni)
            .host("localhost")
            .https(s.nginx.port)
        {
            Ok(r) => r.assert_default(),
            // nginx itself refuses some of these names; that is fine too.
            Err(e) => assert!(e.contains("handshake failed"), "SNI {sni:?}: {e}"),
        }
    }
    let r = Request::get("/").https(s.nginx.port).unwrap();
    r.assert_default();
    for raw in [
        &b"nul\0byte.example.com"[..],
        "\u{fc}ber.example.com".as_bytes(),
    ] {
        let _ = send_raw_client_hello(s.nginx.port, raw);
    }
    // A valid unknown name is queued: otherwise the check could not fail.
    s.default("control.example.com");
    s.wait_enqueued(1.0);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(names(&s.redis), ["control.example.com"]);
}

#[test]
fn a_source_that_failed_queues_nothing() {
    let api = CertApi::start();
    api.set("broken-api.example.com", ApiReply::status(500));
    let mut s = OnDemand::start(
        "dyncert_api @API@ writeback=0; dyncert_api_timeout 1s;",
        "",
        Some(api),
    );
    // Redis misses, the API answers 500: not "unknown".
    s.default("broken-api.example.com");
    // Redis misses, the API answers 404: unknown everywhere.
    s.default("unknown-everywhere.example.com");
    s.wait_enqueued(1.0);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(names(&s.redis), ["unknown-everywhere.example.com"]);
    assert_eq!(s.counters(), (1.0, 0.0));

    // Redis down, the API answers 404: Redis could not say, so nothing is
    // queued (had it been, the XADD would have failed and been counted).
    s.redis.stop();
    s.default("redis-down.example.com");
    let api = s.api.as_ref().unwrap();
    assert!(api.wait_requests_for("redis-down.example.com", 1, Duration::from_secs(3)));
    // Time for a (wrong) XADD to fail: two tries of dyncert_redis_timeout.
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(s.counters(), (1.0, 0.0), "{}", s.nginx.logs());
    s.nginx.assert_healthy();
}

#[test]
fn redis_down_without_an_api_queues_nothing() {
    let mut s = OnDemand::start("", "", None);
    s.redis.stop();
    s.default("while-down.example.com");
    thread::sleep(Duration::from_millis(800));
    assert_eq!(s.counters(), (0.0, 0.0), "{}", s.nginx.logs());
    s.redis.start_server();
    assert!(names(&s.redis).is_empty());
}

#[test]
fn a_random_name_flood_keeps_the_stream_at_maxlen_and_cached_names_serving() {
    const MAXLEN: i64 = 100;
    const FLOOD: usize = 1000;
    let mut s = OnDemand::start("dyncert_on_demand_stream flood:q maxlen=100;", "", None);
    let leaf = s.pki.leaf(&["cached.example.com"], 4102);
    s.redis.put_leaf("cached.example.com", &leaf);
    let get_cached = |port| {
        Request::get("/")
            .sni("cached.example.com")
            .https(port)
            .map(|r| r.assert_served(&leaf, &s.pki))
    };
    get_cached(s.nginx.port).unwrap();

    let port = s.nginx.port;
    let done = Arc::new(AtomicBool::new(false));
    let flood = {
        let done = done.clone();
        thread::spawn(move || {
            let mut failed = 0;
            for i in 0..FLOOD {
                let name = format!("r{i:04}-{}.flood.example.com", std::process::id());
                // Each from a network (/24) of its own: one address, and
                // the addresses of one network together, may queue only a
                // few names per period (tests/on_demand_flood.rs).
                let from = format!("127.{}.{}.1", 1 + i / 250, i % 250);
                if Request::get("/")
                    .sni(&name)
                    .from(&from)
                    .https(port)
                    .is_err()
                {
                    failed += 1;
                }
            }
            done.store(true, Ordering::Relaxed);
            failed
        })
    };
    let mut cached_ok = 0;
    while !done.load(Ordering::Relaxed) {
        get_cached(port).unwrap_or_else(|e| panic!("cached name during the flood: {e}"));
        cached_ok += 1;
        assert!(xlen(&s.redis, "flood:q") <= MAXLEN);
    }
    assert_eq!(flood.join().unwrap(), 0, "flood handshakes failed");
    assert!(cached_ok > 0);
    s.wait_enqueued(FLOOD as f64);
    assert_eq!(xlen(&s.redis, "flood:q"), MAXLEN, "exact MAXLEN trimming");
    assert_eq!(xlen(&s.redis, STREAM), 0, "the default stream is unused");
    // The newest names are kept.
    let last = s.redis.stream_entries("flood:q").pop().unwrap();
    assert!(
        last["name"].starts_with(&format!("r{:04}-", FLOOD - 1)),
        "{last:?}"
    );
    eprintln!("on_demand: {cached_ok} cached handshakes during {FLOOD} flood handshakes");
    s.nginx.assert_healthy();
}

/// Valid server names that no CA issues for (audit finding 5) are never
/// queued: each is counted once per negative-cache period as refused, and
/// uses up no client's budget.
#[test]
fn names_no_ca_can_issue_are_not_queued() {
    let s = OnDemand::start("", "", None);
    let odd = [
        "localhost",
        "com",
        "metadata",
        "0x7f000001",
        "a.0x7f",
        "foo.local",
        "printer.local.",
        "Foo.LOCALHOST",
        "x.invalid",
        "x.onion",
        "router.home.arpa",
        "xn--a.example",
        "ab--cd.example.com",
    ];
    for sni in odd {
        for _ in 0..2 {
            let _ = send_raw_client_hello(s.nginx.port, sni.as_bytes());
        }
    }
    // IDNs and `.test`/`.example` names are queued (a private CA issues
    // for them), from the same address: the odd names used no budget.
    for ok in ["xn--bcher-kva.example", "control.example.test"] {
        let _ = send_raw_client_hello(s.nginx.port, ok.as_bytes());
    }
    s.wait_enqueued(2.0);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        names(&s.redis),
        ["xn--bcher-kva.example", "control.example.test"]
    );
    let m = scrape_metrics(s.mport);
    assert_eq!(
        m.get("dyncert_on_demand_refused_total{reason=\"name\"}"),
        odd.len() as f64,
        "{}",
        s.nginx.logs()
    );
    assert!(
        s.nginx
            .logs()
            .contains("not queued for on-demand issuance: it is a single-label name"),
        "{}",
        s.nginx.logs()
    );
}

#[test]
fn bad_on_demand_values_fail_config_test() {
    let pki = Pki::new();
    let check = |extra: &str, server: &str| {
        Nginx::config_test(
            &pki,
            HTTP,
            NginxOpts::new()
                .var("REDIS", "redis://127.0.0.1:6379/0")
                .var("MPORT", free_port())
                .var("OPORT", free_port())
                .var("EXTRA", extra)
                .var("SERVER", server),
        )
    };
    for ok in [
        "",
        "dyncert_on_demand_stream tenants:q;",
        "dyncert_on_demand_stream tenants:q maxlen=1;",
        "dyncert_on_demand_stream tenants:q maxlen=1000000;",
    ] {
        let t = check(ok, "");
        assert!(t.ok, "`{ok}` must pass:\n{}", t.output);
    }
    let cases: [(&str, &str, &str); 6] = [
        ("dyncert_on_demand_stream q maxlen=0;", "", "maxlen=0"),
        (
            "dyncert_on_demand_stream q maxlen=10000000;",
            "",
            "maxlen=10000000",
        ),
        ("dyncert_on_demand_stream q size=1;", "", "size=1"),
        (
            "dyncert_on_demand_stream;",
            "",
            "invalid number of arguments",
        ),
        (
            "dyncert_on_demand_stream a; dyncert_on_demand_stream b;",
            "",
            "is duplicate",
        ),
        ("dyncert_on_demand maybe;", "", "maybe"),
    ];
    for (extra, server, said) in cases {
        let t = check(extra, server);
        assert!(!t.ok, "`{extra} {server}` passed nginx -t:\n{}", t.output);
        assert!(
            t.output
                .lines()
                .any(|l| l.contains("[emerg]") && l.contains(said)),
            "`{extra} {server}`: no [emerg] line with {said:?}:\n{}",
            t.output
        );
    }
}

#[test]
fn on_demand_without_redis_fails_config_test() {
    let pki = Pki::new();
    let t = Nginx::config_test(
        &pki,
        r#"
http {
    dyncert_api "http://127.0.0.1:9/certs/{name}";
    server {
        listen 127.0.0.1:@PORT@ ssl;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        dyncert_on_demand on;
    }
}
"#,
        NginxOpts::new(),
    );
    assert!(!t.ok, "passed nginx -t:\n{}", t.output);
    assert!(
        t.output.lines().any(|l| l.contains("[emerg]")
            && l.contains("dyncert_on_demand")
            && l.contains("dyncert_redis")),
        "{}",
        t.output
    );
}
