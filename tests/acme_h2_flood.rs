//! ACME challenge floods over HTTP/2, where one connection from one
//! address holds up to 128 requests at once (nginx's concurrent streams).
//! The gate shares its reads out by client address, so every stream of a
//! connection counts against that address: a flood of random tokens over
//! one connection takes at most its 4 reads, its other streams are answered
//! 503 with `Retry-After: 1` (`dyncert_acme_challenges_client_refused_total`),
//! and a CA on another address keeps getting its key authorization.
//! Requests joining a read under way (one token asked for over and over)
//! are bounded per address too (32): before, nine HTTP/2 connections from
//! one address asking for one token while Redis was slow filled the
//! worker's 1,024 places, and a CA asking from elsewhere was answered 503
//! at once.
//!
//! HTTP/2 is spoken by `tests/tools/h2_streams.py` (Python `h2`, which
//! `scripts/test.sh` installs into `target/tools/venv`).

use dyncert_testkit::conf::dyncert_server;
use dyncert_testkit::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const TOKEN: &str = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
const KEY_AUTHORIZATION: &str =
    "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI";
const FLOODER: &str = "127.0.0.1";
const CA: &str = "127.0.0.2";
/// What the gate lets one address hold (core/src/acme.rs, `Limits`).
const JOINS_PER_CLIENT: usize = 32;
const PLACES: usize = 1024;
/// Joins over all addresses: the places less the 16 reads and the FIFO's 128.
const MAX_JOINS: usize = PLACES - 16 - 128;

fn path(token: &str) -> String {
    format!("/.well-known/acme-challenge/{token}")
}

/// The port-80 server and the TLS one, both with HTTP/2 (h2c with prior
/// knowledge on port 80, ALPN h2 over TLS) and the challenge answers.
fn start(redis_timeout: &str) -> (Stack, u16, u16) {
    let hport = free_port();
    let rest = format!(
        r#"
    dyncert_redis_timeout {redis_timeout};
    http2 on;
    # One connection carries the whole flood (nginx's default ends one
    # after 1,000 requests, and a flooder simply opens the next).
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:@HPORT@;
        server_name _;
        dyncert_acme_challenge on;
        return 301 https://$host$request_uri;
    }}
{}"#,
        dyncert_server("        dyncert_acme_challenge on;\n        location / { return 200; }\n")
    );
    let (s, mport) = Stack::with_metrics(&rest, NginxOpts::new().var("HPORT", hport));
    s.redis
        .cmd(&["SET", &format!("dyncert:acme:{TOKEN}"), KEY_AUTHORIZATION]);
    // The worker's Redis connection is up before a flood starts.
    poll(STARTUP_DEADLINE, Duration::from_millis(100), || {
        validate(hport).ok().filter(|r| r.status == 200)
    })
    .unwrap_or_else(|| panic!("challenge never answered\n{}", s.nginx.logs()));
    (s, hport, mport)
}

/// The CA's validation: a new HTTP/1.1 connection from its own address.
fn validate(hport: u16) -> Result<Exchange, String> {
    Request::get(&path(TOKEN))
        .host("shop.example.com")
        .from(CA)
        .http(hport)
}

fn assert_validated(r: &Result<Exchange, String>) {
    match r {
        Ok(r) if r.status == 200 && r.body == KEY_AUTHORIZATION => {}
        other => panic!("the CA was not answered its key authorization: {other:?}"),
    }
}

fn tool() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tools/h2_streams.py")
}

fn python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/venv/bin/python");
    for p in [venv, PathBuf::from("python3")] {
        let ok = Command::new(&p)
            .arg(tool())
            .arg("--check")
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return p;
        }
    }
    panic!("no Python with h2 for tests/tools/h2_streams.py; scripts/test.sh installs it into target/tools/venv");
}

/// A running `h2_streams.py`: its streams are written once [`Flood::start`]
/// returns.
struct Flood {
    child: Child,
    out: BufReader<ChildStdout>,
}

/// What a flood's streams got, by status, and the rest of its last line.
#[derive(Debug, Default)]
struct Outcome {
    statuses: BTreeMap<u16, usize>,
    reset: usize,
    noretry: usize,
    open: usize,
    cancelled: usize,
}

impl Outcome {
    fn count(&self, status: u16) -> usize {
        self.statuses.get(&status).copied().unwrap_or(0)
    }
}

impl Flood {
    fn start<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Flood {
        let mut child = Command::new(python())
            .arg(tool())
            .args(["--bind", FLOODER])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn h2_streams.py");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("sent "), "h2_streams.py: {line}");
        Flood { child, out }
    }

    fn finish(mut self) -> Outcome {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let _ = self.child.wait();
        let rest = line
            .strip_prefix("done")
            .unwrap_or_else(|| panic!("h2_streams.py: {line}"));
        let mut o = Outcome::default();
        for word in rest.split_whitespace() {
            let (k, v) = word.split_once('=').unwrap();
            let v: usize = v.parse().unwrap();
            match k {
                "reset" => o.reset = v,
                "noretry" => o.noretry = v,
                "open" => o.open = v,
                "cancelled" => o.cancelled = v,
                status => {
                    o.statuses.insert(status.parse().unwrap(), v);
                }
            }
        }
        o
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One TLS connection with 128 streams for random tokens at all times
/// while a CA validates from another address over HTTP/1.1: the flood gets
/// 404s and 503s (its address's 4 reads, nothing more), the CA always its
/// key authorization.
#[test]
fn one_http2_connection_flooding_random_tokens_does_not_refuse_a_ca() {
    let (mut s, hport, mport) = start("1s");
    let before = scrape_metrics(mport);
    let port = s.nginx.port.to_string();
    let flood = Flood::start(&[
        "--tls",
        "--port",
        &port,
        "--streams",
        "128",
        "--path",
        &path("flood{n}"),
        "--for",
        "3",
    ]);
    let start = Instant::now();
    let mut tries = 0;
    while start.elapsed() < Duration::from_millis(2500) {
        assert_validated(&validate(hport));
        tries += 1;
        thread::sleep(Duration::from_millis(10));
    }
    let o = flood.finish();
    let after = scrape_metrics(mport);
    let delta = |k: &str| after.get(k) - before.get(k);
    eprintln!("flood over one HTTP/2 connection: {o:?}; CA: {tries} validations, all 200");
    assert!(tries >= 50, "only {tries} validations");
    assert_eq!((o.reset, o.noretry, o.open), (0, 0, 0), "{o:?}");
    let total: usize = o.statuses.values().sum();
    assert!(total >= 1000, "the flood sent only {total} requests: {o:?}");
    assert_eq!(total, o.count(404) + o.count(503), "{o:?}");
    assert!(
        o.count(503) > 0,
        "the flood never went past its share: {o:?}"
    );
    assert_eq!(
        delta("dyncert_acme_challenges_client_refused_total"),
        o.count(503) as f64,
        "every 503 of the flood is a per-client refusal"
    );
    assert_eq!(
        delta("dyncert_acme_challenges_refused_total"),
        o.count(503) as f64
    );
    s.nginx.stop_and_assert_healthy();
}

/// What a flood of requests for one token that Redis hangs on got, what the
/// CA asking meanwhile got, and the refusal counters' increase.
struct Joins {
    flood: Outcome,
    refused: f64,
    client_refused: f64,
}

/// While Redis hangs, `connections` h2c connections from `binds` (in turn)
/// each ask `streams` times at once for one token Redis does not hold; once
/// the flood is in the gate a CA asks for its token from its own address,
/// and Redis is back 300 ms later: the CA must get its key authorization.
fn joins_flood(binds: &str, connections: usize, streams: usize) -> Joins {
    // Longer than the test holds Redis, so nothing times out meanwhile.
    let (mut s, hport, mport) = start("5s");
    let before = scrape_metrics(mport);
    let refused = |m: &Metrics| {
        m.get("dyncert_acme_challenges_refused_total")
            - before.get("dyncert_acme_challenges_refused_total")
    };
    let total = connections * streams;
    assert!(total > PLACES);
    s.redis.pause();
    let flood = Flood::start(&[
        "--bind",
        binds,
        "--port",
        &hport.to_string(),
        "--connections",
        &connections.to_string(),
        "--streams",
        &streams.to_string(),
        "--path",
        &path("slow"),
    ]);
    // The streams reached the gate once some are refused: past its places
    // (without the bounds on joins), or past those bounds.
    let in_gate = poll(Duration::from_secs(3), Duration::from_millis(20), || {
        (refused(&scrape_metrics(mport)) >= (total - PLACES) as f64).then_some(())
    });
    thread::sleep(Duration::from_millis(300));
    let ca = thread::spawn(move || validate(hport));
    thread::sleep(Duration::from_millis(300));
    // The CA's request must still be waiting for the hung read when Redis
    // comes back (old code: 503 at once); answered after that says the
    // test really had it in the gate alongside the flood.
    let ca_waited = !ca.is_finished();
    s.redis.resume();
    let answer = ca.join().unwrap();
    assert!(
        ca_waited,
        "the CA was answered while Redis hung: {:?}",
        answer.as_ref().map(|r| r.status)
    );
    let flood = flood.finish();
    let after = scrape_metrics(mport);
    eprintln!(
        "flood of joins: {flood:?}; CA: {:?}",
        answer.as_ref().map(|r| r.status)
    );
    assert_validated(&answer);
    assert!(in_gate.is_some(), "the flood was not refused: {flood:?}");
    assert_eq!(
        (flood.reset, flood.noretry, flood.open),
        (0, 0, 0),
        "{flood:?}"
    );
    // One read and its joins are answered (the token is not in Redis), the
    // rest refused at once.
    assert_eq!(flood.count(404) + flood.count(503), total, "{flood:?}");
    assert_eq!(refused(&after), flood.count(503) as f64);
    s.nginx.stop_and_assert_healthy();
    Joins {
        refused: refused(&after),
        client_refused: after.get("dyncert_acme_challenges_client_refused_total")
            - before.get("dyncert_acme_challenges_client_refused_total"),
        flood,
    }
}

/// Nine connections from one address, 1,152 streams: one read and 32
/// joins, the rest refused for the address's joins. Before the bound the
/// flood's joins took all 1,024 places and the CA got 503 at once.
#[test]
fn one_address_joining_one_slow_read_does_not_fill_the_gate() {
    let j = joins_flood(FLOODER, 9, 128);
    let held = 1 + JOINS_PER_CLIENT;
    assert_eq!(
        (j.flood.count(404), j.flood.count(503)),
        (held, 9 * 128 - held),
        "{:?}",
        j.flood
    );
    assert_eq!(j.client_refused, j.refused, "all for the address's joins");
}

/// 33 addresses, each within its 32 joins, would fill the 1,024 places
/// too: joins take at most 880 of them, so a CA's new read still finds
/// room. (Without that bound the CA got 503 at once.)
#[test]
fn joins_from_many_addresses_leave_room_for_a_cas_read() {
    let binds: Vec<String> = (1..=33).map(|i| format!("127.0.1.{i}")).collect();
    let j = joins_flood(&binds.join(","), 33, 40);
    assert_eq!(
        (j.flood.count(404), j.flood.count(503)),
        (1 + MAX_JOINS, 33 * 40 - 1 - MAX_JOINS),
        "{:?}",
        j.flood
    );
}

/// While Redis hangs, one address's streams waiting for a read are reset
/// by the client (RST_STREAM) and their connection closed: nginx keeps
/// them until the read ends, and then their answers go nowhere without
/// harm; the CA is answered, and their places are the address's again
/// (the next streams get one read and 32 joins, not 503s).
#[test]
fn http2_streams_cancelled_while_waiting_are_let_go_when_their_read_ends() {
    let (mut s, hport, _) = start("5s");
    let hport_s = hport.to_string();
    let args = |token: &str| -> Vec<String> {
        let path = path(token);
        ["--port", &hport_s, "--streams", "128", "--path", &path]
            .map(str::to_owned)
            .to_vec()
    };
    let held = 1 + JOINS_PER_CLIENT;
    s.redis.pause();
    let cancel = ["--cancel-after".to_owned(), "1".to_owned()];
    let o = Flood::start(&[args("slow"), cancel.to_vec()].concat()).finish();
    assert_eq!((o.count(503), o.cancelled), (128 - held, held), "{o:?}");
    s.redis.resume();
    poll(Duration::from_secs(5), Duration::from_millis(50), || {
        validate(hport).ok().filter(|r| r.status == 200)
    })
    .unwrap_or_else(|| panic!("the CA was not answered\n{}", s.nginx.logs()));

    // Another token: "slow" is remembered absent for 2 s now.
    s.redis.pause();
    let flood = Flood::start(&args("slow2"));
    thread::sleep(Duration::from_millis(300));
    s.redis.resume();
    let o = flood.finish();
    assert_eq!((o.count(404), o.count(503)), (held, 128 - held), "{o:?}");
    assert_eq!((o.reset, o.noretry, o.open), (0, 0, 0), "{o:?}");
    s.nginx.stop_and_assert_healthy();
}
