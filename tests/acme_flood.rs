//! A flood of ACME challenge requests for random tokens on port 80 is
//! bounded and kept apart from certificate fetches: while it runs, names
//! never seen before keep handshaking with their own certificate from
//! Redis and no certificate fetch is refused; Redis sees far fewer reads
//! than requests (one read per token at most, at most 4 requests of the
//! flooding address at once, 503 with `Retry-After` beyond); a real
//! challenge asked from another address is answered every time; and a
//! token Redis did not have is answered 404 without another read for the
//! negative TTL (2 s).

use dyncert_testkit::*;
use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

// One worker: the bounds are per worker. Default ACME bounds and fetch
// settings: the test shows what an operator gets without tuning.
const HTTP: &str = r#"
http {
    access_log off;
    dyncert_redis @REDIS@;
    server {
        listen 127.0.0.1:@MPORT@;
        location = /metrics { dyncert_metrics; }
    }
    # Port 80 of a terminator: challenges, and a redirect for the rest.
    server {
        listen 127.0.0.1:@HPORT@;
        server_name _;
        dyncert_acme_challenge on;
        return 301 https://$host$request_uri;
    }
    server {
        listen 127.0.0.1:@PORT@ ssl;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        location / { return 200 "$ssl_server_name via $dyncert_source name=$dyncert_name\n"; }
    }
}
"#;

/// Flooding threads, each with this many keep-alive connections that
/// always have a request outstanding: 120 at once from 127.0.0.1, well
/// past its share of 4 and the cap of 16 reads, and under the kit's
/// `worker_connections 256`.
const FLOODERS: usize = 6;
const CONNECTIONS: usize = 20;
/// The flood lasts at least this many requests, and until the probes
/// below are done.
const MIN_REQUESTS: usize = 3000;
/// Names with a record in Redis, each handshaken once during the flood.
const NAMES: usize = 24;
/// How long after its 404 an absent token is asked again: inside the
/// negative TTL (2 s) with room for a slow machine.
const RECHECK_FOR: Duration = Duration::from_millis(1000);
/// The flood goes on until a real challenge has been answered this often.
const REAL_ANSWERS: usize = 3;

const TOKEN: &str = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
const KEY_AUTHORIZATION: &str =
    "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI";
const ABSENT_TOKEN: &str = "absentTokenAskedAgainAndAgain_0123456789abc";

fn path(token: &str) -> String {
    format!("/.well-known/acme-challenge/{token}")
}

/// xorshift64*: random tokens without a dependency.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(0);
        Rng(h.finish() | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// 43 base64url characters, like a CA's token.
    fn token(&mut self) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        (0..43)
            .map(|_| ALPHABET[(self.next() % 64) as usize] as char)
            .collect()
    }
}

/// What the clients saw, by status; every 503 must carry `Retry-After`.
#[derive(Default)]
struct Seen {
    statuses: BTreeMap<u16, usize>,
    busy_without_retry_after: usize,
    failures: Vec<String>,
}

impl Seen {
    fn record(&mut self, r: &Exchange) {
        *self.statuses.entry(r.status).or_default() += 1;
        if r.status == 503 && r.header("Retry-After") != Some("1") {
            self.busy_without_retry_after += 1;
        }
    }

    fn count(&self, status: u16) -> usize {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.statuses.values().sum()
    }
}

/// One flooding thread: `CONNECTIONS` requests for random tokens at a
/// time, until `stop`.
fn flood(port: u16, stop: Arc<AtomicBool>, sent: Arc<AtomicUsize>, seen: Arc<Mutex<Seen>>) {
    let mut rng = Rng::new();
    let mut conns: Vec<Option<KeepAlive>> = (0..CONNECTIONS).map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        for c in conns.iter_mut() {
            let conn = match c {
                Some(conn) => conn,
                None => match KeepAlive::connect(port) {
                    Ok(conn) => c.insert(conn),
                    Err(e) => {
                        seen.lock().unwrap().failures.push(e);
                        continue;
                    }
                },
            };
            if let Err(e) = conn.send("GET", &path(&rng.token())) {
                seen.lock().unwrap().failures.push(e);
                *c = None;
            }
        }
        for c in conns.iter_mut() {
            let Some(conn) = c else { continue };
            sent.fetch_add(1, Ordering::Relaxed);
            match conn.receive() {
                Ok(r) => {
                    let mut seen = seen.lock().unwrap();
                    seen.record(&r);
                    if !matches!(r.status, 404 | 503) {
                        seen.failures.push(format!("random token answered {r:?}"));
                    }
                    if r.closed {
                        *c = None;
                    }
                }
                Err(e) => {
                    seen.lock().unwrap().failures.push(e);
                    *c = None;
                }
            }
        }
    }
}

#[test]
fn acme_flood_is_bounded_and_leaves_certificate_fetches_alone() {
    let pki = Pki::new();
    let redis = Redis::start();
    let [mport, hport] = [(); 2].map(|_| free_port());
    let nginx = Nginx::start(
        &pki,
        HTTP,
        NginxOpts::new()
            .redis(&redis)
            .var("MPORT", mport)
            .var("HPORT", hport),
    );
    let mut s = Stack { pki, redis, nginx };
    let names: Vec<String> = (0..NAMES)
        .map(|i| format!("t{i}.tenants.example"))
        .collect();
    let leaves: Vec<Leaf> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let leaf = s.pki.leaf(&[n], 14000 + i as u64);
            s.redis.put_leaf(n, &leaf);
            leaf
        })
        .collect();
    s.redis
        .cmd(&["SET", &format!("dyncert:acme:{TOKEN}"), KEY_AUTHORIZATION]);
    // The worker's Redis connection is up before the flood starts.
    poll(STARTUP_DEADLINE, Duration::from_millis(100), || {
        let r = Request::get(&path(TOKEN)).http(hport).ok()?;
        (r.status == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("challenge never answered\n{}", s.nginx.logs()));
    let before = scrape_metrics(mport);
    let monitor = s.redis.monitor();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let flood_seen = Arc::new(Mutex::new(Seen::default()));
    let start = Instant::now();
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|_| {
            let (stop, sent, seen) = (stop.clone(), sent.clone(), flood_seen.clone());
            thread::spawn(move || flood(hport, stop, sent, seen))
        })
        .collect();
    let flooding = poll(Duration::from_secs(10), Duration::from_millis(5), || {
        (sent.load(Ordering::Relaxed) >= 200).then_some(())
    });
    assert!(flooding.is_some(), "the flood did not start");

    // A CA validating a real challenge during the flood, from an address
    // of its own (a new connection each time, as CAs do): the flood holds
    // at most its own share of the reads, so every try is answered.
    let answered = Arc::new(AtomicUsize::new(0));
    let real = {
        let (stop, answered) = (stop.clone(), answered.clone());
        thread::spawn(move || {
            let mut seen = Seen::default();
            while !stop.load(Ordering::Relaxed) {
                let r = Request::get(&path(TOKEN))
                    .from("127.0.0.2")
                    .http(hport)
                    .expect("real challenge");
                seen.record(&r);
                match r.status {
                    200 if r.body == KEY_AUTHORIZATION => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => seen.failures.push(format!("real token answered {r:?}")),
                }
                thread::sleep(Duration::from_millis(20));
            }
            seen
        })
    };

    // Names never seen before handshake one after the other, each getting
    // its own certificate, fetched from Redis for this handshake.
    let tls = {
        let (names, serials) = (
            names.clone(),
            leaves
                .iter()
                .map(|l| l.serial_hex.clone())
                .collect::<Vec<_>>(),
        );
        let port = s.nginx.port;
        thread::spawn(move || {
            let mut failures = Vec::new();
            let mut handshakes = Vec::new();
            for (name, serial) in names.iter().zip(&serials) {
                match Request::get("/").sni(name).https(port) {
                    Ok(r) if r.tls().leaf_serial == *serial && r.source() == "redis" => {
                        handshakes.push(r.tls().handshake)
                    }
                    Ok(r) => failures.push(format!(
                        "{name}: SANs {:?}, source {:?}",
                        r.tls().leaf_sans,
                        r.source()
                    )),
                    Err(e) => failures.push(format!("{name}: {e}")),
                }
            }
            (failures, handshakes)
        })
    };

    // An absent token asked again and again, from a third address: one
    // read, then 404s from the negative cache (even while the flood keeps
    // its address at its share).
    let mut absent = Seen::default();
    let mut conn = KeepAlive::connect(hport).expect("connect");
    let first_404 = poll(Duration::from_secs(10), Duration::from_millis(10), || {
        let r = Request::get(&path(ABSENT_TOKEN))
            .from("127.0.0.3")
            .http(hport)
            .expect("absent token");
        absent.record(&r);
        (r.status == 404).then(Instant::now)
    })
    .unwrap_or_else(|| panic!("absent token never got 404: {:?}", absent.statuses));
    let busy_before_404 = absent.count(503);
    // Asked again from the flooding address: a known absence costs
    // nothing, so it is answered even past the address's share.
    let mut rechecks = 0;
    while first_404.elapsed() < RECHECK_FOR {
        let r = conn.get(&path(ABSENT_TOKEN)).expect("absent token");
        assert_eq!(
            r.status, 404,
            "known-absent token within the negative TTL: {r:?}"
        );
        rechecks += 1;
    }

    let (tls_failures, mut handshakes) = tls.join().unwrap();
    let enough = poll(Duration::from_secs(20), Duration::from_millis(10), || {
        (sent.load(Ordering::Relaxed) >= MIN_REQUESTS
            && answered.load(Ordering::Relaxed) >= REAL_ANSWERS)
            .then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    let flood_time = start.elapsed();
    let real = real.join().unwrap();
    assert!(
        enough.is_some(),
        "{sent:?} flood requests and {} real answers in {flood_time:?}",
        real.count(200)
    );

    let flood = flood_seen.lock().unwrap();
    assert!(
        flood.failures.is_empty(),
        "{} flood requests failed, e.g. {:?}\n{}",
        flood.failures.len(),
        &flood.failures[..flood.failures.len().min(5)],
        s.nginx.logs()
    );
    assert!(
        tls_failures.is_empty(),
        "handshakes during the flood: {tls_failures:?}\n{}",
        s.nginx.logs()
    );
    assert!(real.failures.is_empty(), "{:?}", real.failures);

    monitor.sync();
    let reads_of = |token: Option<&str>| {
        monitor
            .observed()
            .iter()
            .filter(|o| o.command() == "STRLEN")
            .filter(|o| {
                o.args.get(1).is_some_and(|k| match token {
                    Some(t) => *k == format!("dyncert:acme:{t}"),
                    None => k.starts_with("dyncert:acme:"),
                })
            })
            .count()
    };
    let reads = reads_of(None);
    let requests = flood.total() + real.total() + absent.total() + rechecks;
    let busy = flood.count(503) + real.count(503) + absent.count(503);
    handshakes.sort();
    eprintln!(
        "acme flood: {requests} requests in {flood_time:?} ({:?} from the flood), {reads} Redis \
         reads, {busy} answered 503; real token: {:?}; absent token: {busy_before_404} busy, \
         then 404 + {rechecks} rechecks; {} handshakes, median {:?}, max {:?}",
        flood.statuses,
        real.statuses,
        handshakes.len(),
        handshakes[handshakes.len() / 2],
        handshakes.last().unwrap(),
    );

    // Reads: far fewer than requests, the rest answered 503 at once (all
    // of them the flooding address's, past its share).
    assert!(
        reads * 3 <= requests,
        "{reads} Redis reads for {requests} challenge requests"
    );
    assert!(
        busy > 0,
        "the cap was never reached: the flood proves nothing"
    );
    assert_eq!(flood.busy_without_retry_after, 0, "503 without Retry-After");
    assert_eq!(real.busy_without_retry_after, 0, "503 without Retry-After");
    // The absent token cost one read, whatever was asked within its TTL.
    assert!(rechecks >= 10, "only {rechecks} rechecks");
    assert_eq!(
        reads_of(Some(ABSENT_TOKEN)),
        1,
        "reads of a token known absent"
    );

    // Certificates: every fetch started, every name served from Redis.
    let after = scrape_metrics(mport);
    let delta = |k: &str| after.get(k) - before.get(k);
    assert_eq!(after.get("dyncert_fetches_refused_total"), 0.0);
    assert_eq!(
        delta("dyncert_handshakes_total{source=\"redis\"}"),
        NAMES as f64
    );
    assert_eq!(delta("dyncert_handshakes_total{source=\"default\"}"), 0.0);
    assert_eq!(
        delta("dyncert_acme_challenges_refused_total"),
        busy as f64,
        "every 503 is counted as refused"
    );
    assert_eq!(
        delta("dyncert_acme_challenges_client_refused_total"),
        flood.count(503) as f64,
        "every 503 of the flood is its address's"
    );
    assert_eq!(
        (real.count(503), busy_before_404),
        (0, 0),
        "other addresses refused"
    );
    // Not delayed either: a handshake takes milliseconds, flood or not.
    let slowest = *handshakes.last().unwrap();
    assert!(
        slowest < Duration::from_secs(1),
        "slowest handshake of a new name during the flood: {slowest:?}"
    );
    assert!(
        flood_time < Duration::from_secs(30),
        "the flood took {flood_time:?}"
    );
    assert!(
        !s.nginx
            .error_log()
            .contains("while reading an ACME challenge"),
        "{}",
        s.nginx.logs()
    );
    s.nginx.assert_healthy();
}
