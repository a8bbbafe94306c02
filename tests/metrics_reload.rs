//! The metrics zone survives every kind of reload: one that changes the
//! number of server blocks (the zone keeps its size, so nginx hands the
//! same memory to the new cycle and the counters go on counting), and one
//! that fails after the zone was set up (at `bind()`): nginx keeps the old
//! cycle, and a worker the master forks afterwards still finds the old
//! cycle's counters, not the freed zone of the cycle that failed.

use dyncert_testkit::*;
use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
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
        location / { return 200 "$ssl_server_name via $dyncert_source pid=$pid\n"; }
    }
    @EXTRA@
"#;

/// The third server block, last so the first two keep their positions.
const EXTRA: &str = r#"
    server {
        listen 127.0.0.1:@XPORT@ ssl;
        server_name extra;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        location / { return 200 "extra via $dyncert_source pid=$pid\n"; }
    }
"#;

const HANDSHAKES: &str = "dyncert_handshakes_total{source=\"default\"}";
const EXTRA_LABEL: &str = "dyncert_responses_total{server=\"extra\",class=\"2xx\"}";

/// The `http {}` block with `@PORT@` left for the kit and `extra` server
/// blocks after the first two.
fn http(redis: &Redis, mport: u16, extra: &str) -> String {
    worker_metrics_http(HTTP)
        .replace("@REDIS@", &redis.url())
        .replace("@MPORT@", &mport.to_string())
        .replace("@EXTRA@", extra)
}

/// The third server block, on `port`.
fn extra(port: u16) -> String {
    EXTRA.replace("@XPORT@", &port.to_string())
}

/// Server blocks on a port that another process holds, so the reload
/// fails at `bind()`, after nginx set up the new cycle's shared zones.
/// Many of them: a zone sized by the number of server blocks would be a
/// new one, which nginx frees when the reload fails.
fn unbindable(port: u16) -> String {
    (0..150)
        .map(|n| {
            format!("    server {{ listen 127.0.0.1:{port}; server_name filler{n}.invalid; }}\n")
        })
        .collect()
}

fn metrics_from(mport: u16) -> (u32, Metrics) {
    let r: Exchange = Request::get("/metrics")
        .http(mport)
        .unwrap_or_else(|e| panic!("metrics: {e}"));
    assert_eq!(r.status, 200, "metrics answered {r:?}");
    let worker = r
        .header("X-Worker")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let samples: BTreeMap<String, f64> = r
        .body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (k, v) = line.rsplit_once(' ').expect("sample line");
            (k.to_owned(), v.parse().expect("numeric sample"))
        })
        .collect();
    (worker, Metrics(samples))
}

/// Handshakes that get the default certificate, as clients saw them, and
/// the largest value of the counter scraped so far.
struct Tally {
    made: u64,
    last: f64,
}

impl Tally {
    /// `n` handshakes for an unknown name on `port`.
    fn handshake(&mut self, nginx: &Nginx, port: u16, n: usize) {
        for _ in 0..n {
            let r = Request::get("/")
                .sni("nobody.example.com")
                .https(port)
                .unwrap_or_else(|e| panic!("handshake on {port}: {e}\n{}", nginx.logs()));
            r.assert_default();
            assert_eq!(r.source(), "default", "{:?}", r.body);
            self.made += 1;
        }
    }

    /// The counter never goes down and counts every handshake made since
    /// nginx started, whichever cycle's worker made it.
    fn check(&mut self, m: &Metrics, when: &str) {
        let now = m.get(HANDSHAKES);
        assert!(
            now >= self.last,
            "{when}: {HANDSHAKES} went down from {} to {now}",
            self.last
        );
        assert_eq!(
            now, self.made as f64,
            "{when}: {HANDSHAKES} vs handshakes made"
        );
        self.last = now;
    }
}

#[test]
fn counters_survive_reloads_that_change_server_blocks_or_fail_at_bind() {
    let started = Instant::now();
    let pki = Pki::new();
    let redis = Redis::start();
    let mport = free_port();
    let xport = free_port();
    // The failing configuration listens where we do.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let hport = held.local_addr().unwrap().port();

    let mut nginx = Nginx::start(&pki, &http(&redis, mport, ""), NginxOpts::new().workers(2));
    let port = nginx.port;
    let conf = |more: &str| http(&redis, mport, more);
    let mut tally = Tally { made: 0, last: 0.0 };
    tally.handshake(&nginx, port, 3);
    tally.check(&metrics_from(mport).1, "at start");

    const FAIL_AT: usize = 10;
    let mut servers = 2;
    for i in 0..20 {
        let when = format!("reload {i}");
        if i == FAIL_AT {
            nginx.expect_log(format!("127.0.0.1:{hport} failed"));
            nginx.expect_log("still could not bind()");
            nginx.write_http(&conf(&unbindable(hport)));
            nginx.reload_failing("still could not bind()");

            // The old configuration still serves.
            let (_, m) = metrics_from(mport);
            assert_eq!(
                m.0.contains_key(EXTRA_LABEL),
                servers == 3,
                "{when}: {servers} server blocks expected"
            );
            assert!(
                !m.0.keys().any(|k| k.contains("filler")),
                "{when}: the failed config took effect"
            );
            tally.handshake(&nginx, port, 2);
            tally.check(&metrics_from(mport).1, &when);

            // A worker forked by the master after the failure works on the
            // old cycle's zone.
            let workers = nginx.worker_pids();
            let victim = *workers.iter().next().unwrap();
            nginx.expect_log(format!("worker process {victim} exited on signal 9"));
            assert!(signal(victim, libc::SIGKILL));
            let respawned = poll(STARTUP_DEADLINE, Duration::from_millis(20), || {
                let now = nginx.worker_pids();
                let new: Vec<u32> = now.difference(&workers).copied().collect();
                (now.len() == 2 && !now.contains(&victim) && new.len() == 1).then(|| new[0])
            })
            .unwrap_or_else(|| panic!("{victim} was not respawned\n{}", nginx.logs()));
            let serving = nginx.worker_pids();
            for r in nginx.hit_every_worker("nobody.example.com", STARTUP_DEADLINE) {
                assert_eq!(r.source(), "default", "{:?}", r.body);
                tally.made += 1;
            }
            assert_eq!(
                nginx.worker_pids(),
                serving,
                "a worker died serving handshakes"
            );
            // Its /metrics, like any worker's, has every handshake.
            let m = poll(STARTUP_DEADLINE, Duration::from_millis(10), || {
                let (w, m) = metrics_from(mport);
                (w == respawned).then_some(m)
            })
            .unwrap_or_else(|| panic!("worker {respawned} never answered /metrics"));
            tally.check(&m, &format!("{when}, respawned worker {respawned}"));
            continue;
        }

        let target = 5 - servers;
        let third = if target == 3 {
            extra(xport)
        } else {
            String::new()
        };
        nginx.write_http(&conf(&third));
        nginx.reload();
        servers = target;

        // It took effect: the server blocks are those of the new file.
        let (_, m) = metrics_from(mport);
        assert_eq!(
            m.0.contains_key(EXTRA_LABEL),
            servers == 3,
            "{when}: {servers} server blocks expected"
        );
        tally.check(&m, &when);
        tally.handshake(&nginx, port, 2);
        if servers == 3 {
            tally.handshake(&nginx, xport, 1);
        } else {
            assert!(
                TcpStream::connect(("127.0.0.1", xport)).is_err(),
                "{when}: the removed server block still listens"
            );
        }
        tally.check(&metrics_from(mport).1, &when);
    }

    drop(held);
    nginx.assert_healthy();
    // The only worker that died is the one killed on purpose.
    let deaths: Vec<String> = nginx
        .error_log()
        .lines()
        .filter(|l| l.contains("exited on signal"))
        .map(str::to_owned)
        .collect();
    assert_eq!(deaths.len(), 1, "{deaths:#?}\n{}", nginx.logs());
    eprintln!("20 reloads in {:?}", started.elapsed());
}

/// No `dyncert on`, no `dyncert_metrics`: the cycle has no metrics zone,
/// and nginx frees the old one when the reload succeeds.
const PLAIN: &str = r#"
http {
    access_log off;
    server {
        listen 127.0.0.1:@PORT@ ssl;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        location / { return 200 "plain pid=$pid\n"; }
    }
}
"#;

#[test]
fn workers_of_a_configuration_without_metrics_never_touch_the_freed_zone() {
    let pki = Pki::new();
    let redis = Redis::start();
    let mport = free_port();
    let mut nginx = Nginx::start(&pki, &http(&redis, mport, ""), NginxOpts::new().workers(2));
    let mut tally = Tally { made: 0, last: 0.0 };
    tally.handshake(&nginx, nginx.port, 2);
    tally.check(&metrics_from(mport).1, "at start");

    nginx.write_http(PLAIN);
    nginx.reload();
    for r in nginx.hit_every_worker("plain.example.com", STARTUP_DEADLINE) {
        assert!(r.body.starts_with("plain"), "{:?}", r.body);
    }

    // Back to metrics: a new zone, counting from zero.
    nginx.write_http(&http(&redis, mport, ""));
    nginx.reload();
    let mut tally = Tally { made: 0, last: 0.0 };
    tally.handshake(&nginx, nginx.port, 2);
    tally.check(&metrics_from(mport).1, "after the round trip");
    nginx.assert_healthy();
}
