//! Session tickets that work across the fleet (`dyncert_session_tickets`):
//! two nginx terminators sharing one redis-server take their ticket keys
//! from it, so a session from A resumes on B, still after one rotation,
//! no longer once its key has left the kept set; without the directive it
//! never does. A session never resumes for another tenant's name; Redis
//! down at start means no tickets (handshakes still work); a garbage or
//! oversized key set is refused with a log line and a counter.

use dyncert_core::keywrap::is_envelope;
use dyncert_core::tickets::{KeySet, TicketKey};
use dyncert_testkit::conf::dyncert_server;
use dyncert_testkit::*;
use openssl::ssl::{SslSession, SslVersion};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn http() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;\n    @EXTRA@",
        METRICS_SERVER,
        &dyncert_server(
            r#"
        dyncert_tenant_policy on;
        @TICKETS@
        root html;
        location / { }
"#,
        ),
    ])
}

const KEY: &str = "dyncert:ticket-keys";
const VERSIONS: [SslVersion; 2] = [SslVersion::TLS1_3, SslVersion::TLS1_2];

struct Terminator {
    nginx: Nginx,
    mport: u16,
}

impl Terminator {
    fn start(pki: &Pki, redis: &Redis, tickets: bool, extra: &str) -> Terminator {
        let mport = free_port();
        let nginx = Nginx::start(
            pki,
            &http(),
            NginxOpts::new()
                .workers(2)
                .redis(redis)
                .var("MPORT", mport)
                .var("EXTRA", extra)
                .var(
                    "TICKETS",
                    if tickets {
                        "dyncert_session_tickets on;"
                    } else {
                        ""
                    },
                ),
        );
        nginx.write_index_pages(&[""]);
        Terminator { nginx, mport }
    }

    fn port(&self) -> u16 {
        self.nginx.port
    }

    fn metric(&self, key: &str) -> f64 {
        scrape_metrics(self.mport).get(key)
    }

    /// A full request for `name`; the session it leaves.
    fn session(&self, name: &str, v: SslVersion) -> SslSession {
        let r = self.get(Request::get("/").sni(name).max_tls(v));
        assert_eq!(r.status, 200, "{r:?}");
        r.tls().session.clone().expect("a session")
    }

    fn get(&self, req: Request) -> Exchange {
        match req.https(self.port()) {
            Ok(x) => x,
            Err(e) => panic!("request failed: {e}\n{}", self.nginx.logs()),
        }
    }

    /// Whether `session` resumes for `name` (the request succeeds either way).
    fn resumes(&self, name: &str, v: SslVersion, session: &SslSession) -> bool {
        let r = self.get(Request::get("/").sni(name).max_tls(v).resume(session));
        assert_eq!(r.status, 200, "{r:?}");
        r.tls().resumed
    }
}

/// The generation of the stored (plain) key set: bytes 6..14, big endian.
fn generation(redis: &Redis) -> Option<u64> {
    match redis_command(redis.port, &["GET", KEY]).ok()? {
        Reply::Bulk(Some(v)) if v.len() >= 14 && v.starts_with(b"DCTK") => {
            Some(u64::from_be_bytes(v[6..14].try_into().unwrap()))
        }
        _ => None,
    }
}

/// Waits for generation `at_least`, then for every worker to have read it
/// (they read the set every second).
fn wait_generation(redis: &Redis, at_least: u64, deadline: Duration) -> u64 {
    let start = Instant::now();
    loop {
        if let Some(g) = generation(redis).filter(|&g| g >= at_least) {
            std::thread::sleep(Duration::from_millis(1500));
            return g;
        }
        assert!(
            start.elapsed() < deadline,
            "no key set generation {at_least} within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn two(pki: &Pki, redis: &Redis, tickets: bool, extra: &str) -> (Terminator, Terminator) {
    (
        Terminator::start(pki, redis, tickets, extra),
        Terminator::start(pki, redis, tickets, extra),
    )
}

#[test]
fn a_session_from_one_terminator_resumes_on_the_other_until_its_key_is_rotated_out() {
    let pki = Pki::new();
    let redis = Redis::start();
    let leaf = pki.leaf(&["shop.example.com"], 7001);
    redis.put_leaf("shop.example.com", &leaf);
    // keep=1: a ticket survives one rotation, not two.
    let (a, b) = two(
        &pki,
        &redis,
        true,
        "dyncert_session_ticket_rotate 6s keep=1;",
    );
    let g = wait_generation(&redis, 1, Duration::from_secs(10));
    // One session per attempt: a TLS 1.3 client offers a ticket once.
    let sessions: Vec<_> = VERSIONS
        .iter()
        .map(|&v| (v, [(); 4].map(|()| a.session("shop.example.com", v))))
        .collect();
    for (v, s) in &sessions {
        assert!(
            b.resumes("shop.example.com", *v, &s[0]),
            "A's session did not resume on B over {v:?}\n{}",
            b.nginx.logs()
        );
    }
    assert!(b.metric("dyncert_tickets_current_total") >= 2.0);

    wait_generation(&redis, g + 1, Duration::from_secs(10));
    for (v, s) in &sessions {
        assert!(
            b.resumes("shop.example.com", *v, &s[1]),
            "A's session did not resume on B after one rotation over {v:?}\n{}",
            b.nginx.logs()
        );
    }
    assert!(b.metric("dyncert_tickets_previous_total") >= 2.0);

    wait_generation(&redis, g + 2, Duration::from_secs(10));
    for (v, s) in &sessions {
        assert!(
            !b.resumes("shop.example.com", *v, &s[2]),
            "A's session still resumed on B after two rotations with keep=1 over {v:?}"
        );
        assert!(!a.resumes("shop.example.com", *v, &s[3]));
    }
    assert!(b.metric("dyncert_tickets_unknown_total") >= 2.0);
    // One rotation per period for the fleet, not one per terminator.
    let rotations = a.metric("dyncert_ticket_key_rotations_total")
        + b.metric("dyncert_ticket_key_rotations_total");
    let now = generation(&redis).unwrap();
    assert_eq!(
        rotations as u64, now,
        "rotations {rotations}, generation {now}"
    );
    let log = a.nginx.error_log() + &b.nginx.error_log();
    assert!(
        log.contains("session ticket keys rotated to generation"),
        "{log}"
    );
    let (mut a, mut b) = (a, b);
    a.nginx.assert_healthy();
    b.nginx.assert_healthy();
}

#[test]
fn without_shared_keys_a_session_from_one_terminator_does_not_resume_on_the_other() {
    let pki = Pki::new();
    let redis = Redis::start();
    let leaf = pki.leaf(&["shop.example.com"], 7002);
    redis.put_leaf("shop.example.com", &leaf);
    let (a, b) = two(&pki, &redis, false, "");
    for v in VERSIONS {
        let s = a.session("shop.example.com", v);
        // Control: the session is good on the terminator that made it.
        assert!(a.resumes("shop.example.com", v, &s), "control over {v:?}");
        assert!(
            !b.resumes("shop.example.com", v, &s),
            "resumed on B over {v:?}"
        );
    }
    assert_eq!(generation(&redis), None, "keys made without the directive");
}

#[test]
fn a_shared_session_never_resumes_for_another_tenants_name() {
    let pki = Pki::new();
    let redis = Redis::start();
    let x = pki.leaf(&["x.example.com"], 7003);
    let y = pki.leaf(&["y.example.com"], 7004);
    redis.put_leaf("x.example.com", &x);
    redis.put_leaf("y.example.com", &y);
    let (a, b) = two(&pki, &redis, true, "");
    wait_generation(&redis, 1, Duration::from_secs(10));
    for v in VERSIONS {
        let s = a.session("x.example.com", v);
        assert!(b.resumes("x.example.com", v, &s), "control over {v:?}");
        let s = a.session("x.example.com", v);
        let decrypted = b.metric("dyncert_tickets_current_total");
        let r = b.get(Request::get("/").sni("y.example.com").max_tls(v).resume(&s));
        assert!(!r.tls().resumed, "X's session resumed for Y over {v:?}");
        if v == SslVersion::TLS1_2 {
            // Not vacuous: the ticket was offered and opened, and the
            // session's binding to X refused it.
            assert!(b.metric("dyncert_tickets_current_total") > decrypted);
        }
        assert_eq!(r.status, 200, "{r:?}");
        r.assert_served(&y, &pki);
    }
}

#[test]
fn redis_down_at_start_means_no_tickets_until_the_keys_arrive() {
    let pki = Pki::new();
    let mut redis = Redis::reserve();
    let a = Terminator::start(&pki, &redis, true, "");
    std::thread::sleep(Duration::from_millis(1500));
    for v in VERSIONS {
        // The default certificate, a full handshake, and nothing to resume.
        let r = a.get(Request::get("/").sni("shop.example.com").max_tls(v));
        r.assert_default();
        if let Some(s) = &r.tls().session {
            let again = a.get(
                Request::get("/")
                    .sni("shop.example.com")
                    .max_tls(v)
                    .resume(s),
            );
            assert!(
                !again.tls().resumed,
                "resumed without shared keys over {v:?}"
            );
        }
    }
    redis.start_server();
    // Another name: a lookup of the first one that a reconnecting client
    // retried between the start and the put may have found it unknown.
    let leaf = pki.leaf(&["store.example.com"], 7005);
    redis.put_leaf("store.example.com", &leaf);
    wait_generation(&redis, 1, Duration::from_secs(10));
    // Each worker's command connection may still be waiting to reconnect
    // (up to 2 s): until then the name gets the default certificate.
    // Served to ten new connections in a row: by both workers.
    poll(Duration::from_secs(10), Duration::from_millis(100), || {
        (0..10)
            .all(|_| a.get(Request::get("/").sni("store.example.com")).status == 200)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("store.example.com not served\n{}", a.nginx.logs()));
    for v in VERSIONS {
        let s = a.session("store.example.com", v);
        assert!(a.resumes("store.example.com", v, &s), "over {v:?}");
    }
    let mut a = a;
    a.nginx
        .expect_log("while maintaining the session ticket keys");
    a.nginx.assert_healthy();
}

#[test]
fn a_garbage_or_oversized_key_set_is_refused_with_a_log_line_and_a_counter() {
    let pki = Pki::new();
    let redis = Redis::start();
    let leaf = pki.leaf(&["shop.example.com"], 7006);
    redis.put_leaf("shop.example.com", &leaf);
    redis_command(redis.port, &["SET", KEY, "not a key set"]).unwrap();
    let a = Terminator::start(&pki, &redis, true, "");
    let line = a.nginx.wait_for_log_line(Duration::from_secs(5), |l| {
        l.contains("ticket key set of an unknown format refused")
    });
    assert!(line.is_some(), "{}", a.nginx.logs());
    assert!(a.metric("dyncert_ticket_key_errors_total") >= 1.0);
    // Never overwritten by a terminator: the operator's to fix.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        redis_command(redis.port, &["GET", KEY]).unwrap(),
        Reply::Bulk(Some(b"not a key set".to_vec()))
    );
    for v in VERSIONS {
        let r = a.get(Request::get("/").sni("shop.example.com").max_tls(v));
        assert_eq!(r.status, 200);
        if let Some(s) = &r.tls().session {
            assert!(!a.resumes("shop.example.com", v, s), "over {v:?}");
        }
    }
    let big = "x".repeat(5000);
    redis_command(redis.port, &["SET", KEY, &big]).unwrap();
    let line = a.nginx.wait_for_log_line(Duration::from_secs(5), |l| {
        l.contains("oversized ticket key set refused")
    });
    assert!(line.is_some(), "{}", a.nginx.logs());
    // Deleting it has a new set made.
    redis_command(redis.port, &["DEL", KEY]).unwrap();
    wait_generation(&redis, 1, Duration::from_secs(10));
    for v in VERSIONS {
        let s = a.session("shop.example.com", v);
        assert!(a.resumes("shop.example.com", v, &s), "over {v:?}");
    }
    let mut a = a;
    a.nginx.assert_healthy();
}

#[test]
fn keys_that_cannot_be_rotated_expire_instead_of_living_forever() {
    let pki = Pki::new();
    let redis = Redis::start();
    let leaf = pki.leaf(&["shop.example.com"], 7010);
    redis.put_leaf("shop.example.com", &leaf);
    let a = Terminator::start(
        &pki,
        &redis,
        true,
        "dyncert_session_ticket_rotate 2s keep=0;",
    );
    wait_generation(&redis, 1, Duration::from_secs(10));
    let s = a.session("shop.example.com", SslVersion::TLS1_2);
    assert!(a.resumes("shop.example.com", SslVersion::TLS1_2, &s));
    // A value no terminator may overwrite: the loaded keys cannot be
    // rotated, so they end after (keep + 1) periods.
    redis_command(redis.port, &["SET", KEY, "not a key set"]).unwrap();
    // Both workers.
    let start = Instant::now();
    while a
        .nginx
        .error_log()
        .matches("expired without a newer one; no session tickets")
        .count()
        < 2
    {
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "{}",
            a.nginx.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for v in VERSIONS {
        let r = a.get(Request::get("/").sni("shop.example.com").max_tls(v));
        assert_eq!(r.status, 200);
        if let Some(s) = &r.tls().session {
            assert!(!a.resumes("shop.example.com", v, s), "over {v:?}");
        }
    }
    let mut a = a;
    a.nginx.assert_healthy();
}

#[test]
fn sessions_still_resume_after_a_reload() {
    let pki = Pki::new();
    let redis = Redis::start();
    let leaf = pki.leaf(&["shop.example.com"], 7011);
    redis.put_leaf("shop.example.com", &leaf);
    let (a, mut b) = two(&pki, &redis, true, "");
    let g = wait_generation(&redis, 1, Duration::from_secs(10));
    let sessions: Vec<_> = VERSIONS
        .iter()
        .map(|&v| (v, a.session("shop.example.com", v)))
        .collect();
    b.nginx.reload();
    // The new workers read the same set (no new generation).
    std::thread::sleep(Duration::from_millis(1500));
    for (v, s) in &sessions {
        assert!(b.resumes("shop.example.com", *v, s), "over {v:?}");
    }
    assert_eq!(generation(&redis), Some(g));
    b.nginx.assert_healthy();
}

#[test]
fn an_announced_rotation_reaches_every_worker_at_once() {
    let pki = Pki::new();
    let redis = Redis::start();
    let a = Terminator::start(&pki, &redis, true, "");
    let g = wait_generation(&redis, 1, Duration::from_secs(10));
    let loads = a.metric("dyncert_ticket_key_loads_total");
    // A set written from outside (as an operator's tool could), then
    // announced on the channel: both workers load it well before their
    // next one-second check.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let set = KeySet {
        generation: g + 100,
        ..KeySet::rotate(
            None,
            TicketKey::from_bytes(std::array::from_fn(|i| 9 ^ i as u8)),
            now,
            2,
        )
    };
    let mut conn = redis.connect();
    let value = set.encode();
    let reply = conn
        .cmd(&[b"SET".as_slice(), KEY.as_bytes(), &value])
        .unwrap();
    assert_eq!(reply, Reply::Status("OK".into()));
    let channel = format!("{KEY}:rotated");
    let published = Instant::now();
    conn.cmd(&[b"PUBLISH".as_slice(), channel.as_bytes(), b"x"])
        .unwrap();
    while a.metric("dyncert_ticket_key_loads_total") < loads + 2.0 {
        assert!(
            published.elapsed() < Duration::from_millis(300),
            "not loaded by both workers within 300 ms\n{}",
            a.nginx.logs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "announced rotation loaded by both workers in {:?}",
        published.elapsed()
    );
    assert_eq!(generation(&redis), Some(g + 100));
}

#[test]
fn a_deleted_key_set_is_made_again_and_taken_up_by_every_worker() {
    let pki = Pki::new();
    let redis = Redis::start();
    let leaf = pki.leaf(&["shop.example.com"], 7012);
    redis.put_leaf("shop.example.com", &leaf);
    let (a, b) = two(&pki, &redis, true, "");
    wait_generation(&redis, 1, Duration::from_secs(10));
    let old = redis_command(redis.port, &["GET", KEY]).unwrap();
    // The operator's way to replace every key at once (say, after a leak).
    redis_command(redis.port, &["DEL", KEY]).unwrap();
    let start = Instant::now();
    loop {
        match redis_command(redis.port, &["GET", KEY]).unwrap() {
            Reply::Bulk(Some(v)) if Reply::Bulk(Some(v.clone())) != old => break,
            _ => {}
        }
        assert!(start.elapsed() < Duration::from_secs(5), "no new set");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A new generation 1: every worker must still take it up.
    assert_eq!(generation(&redis), Some(1));
    std::thread::sleep(Duration::from_millis(1500));
    for v in VERSIONS {
        let resumed = (0..10)
            .filter(|_| {
                let s = a.session("shop.example.com", v);
                b.resumes("shop.example.com", v, &s)
            })
            .count();
        assert_eq!(resumed, 10, "over {v:?}");
    }
}

#[test]
fn keys_are_sealed_at_rest_under_the_key_encryption_key() {
    let pki = Pki::new();
    let redis = Redis::start();
    let leaf = pki.leaf(&["shop.example.com"], 7007);
    redis.put_leaf("shop.example.com", &leaf);
    let dir = TempDir::new("tickets-kek");
    let kek = dir.path().join("k1.key");
    std::fs::write(&kek, format!("{}\n", "ab".repeat(32))).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
    let extra = format!("dyncert_key_decryption_key k1 {};", kek.display());
    let (a, b) = two(&pki, &redis, true, &extra);
    let start = Instant::now();
    let stored = loop {
        if let Ok(Reply::Bulk(Some(v))) = redis_command(redis.port, &["GET", KEY]) {
            break v;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no key set");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(is_envelope(&stored), "stored in the clear");
    assert!(stored.starts_with(b"dyncert:v1:k1:"));
    std::thread::sleep(Duration::from_millis(1500));
    for v in VERSIONS {
        let s = a.session("shop.example.com", v);
        assert!(b.resumes("shop.example.com", v, &s), "over {v:?}");
    }
}

#[test]
fn config_needs_redis_and_refuses_ssl_session_tickets_off() {
    let pki = Pki::new();
    let no_redis = http().replace("dyncert_redis @REDIS@;", "");
    let t = Nginx::config_test(
        &pki,
        &no_redis,
        NginxOpts::new()
            .var("MPORT", free_port())
            .var("EXTRA", "")
            .var("TICKETS", "dyncert_session_tickets on;"),
    );
    assert!(!t.ok);
    assert!(
        t.output
            .contains("\"dyncert_session_tickets on\" needs \"dyncert_redis\""),
        "{}",
        t.output
    );
    let redis = Redis::start();
    let t = Nginx::config_test(
        &pki,
        &http(),
        NginxOpts::new()
            .redis(&redis)
            .var("MPORT", free_port())
            .var("EXTRA", "")
            .var(
                "TICKETS",
                "dyncert_session_tickets on; ssl_session_tickets off;",
            ),
    );
    assert!(!t.ok);
    assert!(
        t.output.contains("contradicts \"ssl_session_tickets off\""),
        "{}",
        t.output
    );
    for bad in ["500ms", "1h keep=9", "1h max=1"] {
        let t = Nginx::config_test(
            &pki,
            &http(),
            NginxOpts::new()
                .redis(&redis)
                .var("MPORT", free_port())
                .var("EXTRA", format!("dyncert_session_ticket_rotate {bad};"))
                .var("TICKETS", "dyncert_session_tickets on;"),
        );
        assert!(!t.ok, "{bad}");
        assert!(
            t.output.contains("invalid parameter"),
            "{bad}: {}",
            t.output
        );
    }
}

#[test]
fn shared_tickets_work_on_a_server_without_dyncert_on() {
    let pki = Pki::new();
    let redis = Redis::start();
    let http = http()
        .replace("        dyncert on;\n", "")
        .replace("        dyncert_tenant_policy on;\n", "");
    let start = || {
        let mport = free_port();
        let nginx = Nginx::start(
            &pki,
            &http,
            NginxOpts::new()
                .redis(&redis)
                .var("MPORT", mport)
                .var("EXTRA", "")
                .var("TICKETS", "dyncert_session_tickets on;"),
        );
        nginx.write_index_pages(&[""]);
        Terminator { nginx, mport }
    };
    let (a, b) = (start(), start());
    wait_generation(&redis, 1, Duration::from_secs(10));
    for v in VERSIONS {
        let s = a.session("static.example.com", v);
        assert!(b.resumes("static.example.com", v, &s), "over {v:?}");
    }
}

/// `openssl s_client` over `version`: connects to `port` for `name`,
/// saving the session to `out` and offering `inp`; its output.
fn s_client(port: u16, name: &str, version: &str, out: &Path, inp: Option<&Path>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", name, version, "-ign_eof"])
        .arg("-sess_out")
        .arg(out);
    if let Some(p) = inp {
        cmd.arg("-sess_in").arg(p);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    // A request whose response (and, over TLS 1.3, the tickets before it)
    // is read before the connection closes.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn openssl_s_client_sessions_resume_across_terminators() {
    let pki = Pki::new();
    let redis = Redis::start();
    let leaf = pki.leaf(&["shop.example.com"], 7009);
    redis.put_leaf("shop.example.com", &leaf);
    let (a, b) = two(&pki, &redis, true, "");
    wait_generation(&redis, 1, Duration::from_secs(10));
    let dir = TempDir::new("s-client");
    for (version, proto) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let first = dir.path().join(format!("a{version}"));
        let second = dir.path().join(format!("b{version}"));
        let out = s_client(a.port(), "shop.example.com", version, &first, None);
        assert!(out.contains(&format!("New, {proto}")), "{out}");
        assert!(out.contains("HTTP/1.1 200"), "{out}");
        let out = s_client(b.port(), "shop.example.com", version, &second, Some(&first));
        assert!(out.contains(&format!("Reused, {proto}")), "{out}");
        assert!(out.contains("HTTP/1.1 200"), "{out}");
    }
}

/// K clients each make a full handshake on A and try to resume on B:
/// the rate with and without the shared keys (printed; run with
/// `--nocapture` to see it).
#[test]
fn resumption_rate_across_two_terminators() {
    const K: usize = 50;
    let pki = Pki::new();
    let redis = Redis::start();
    let leaf = pki.leaf(&["shop.example.com"], 7008);
    redis.put_leaf("shop.example.com", &leaf);
    let mut rates = Vec::new();
    for tickets in [false, true] {
        let (a, b) = two(&pki, &redis, tickets, "");
        if tickets {
            wait_generation(&redis, 1, Duration::from_secs(10));
        }
        for v in VERSIONS {
            let resumed = (0..K)
                .filter(|_| {
                    let s = a.session("shop.example.com", v);
                    b.resumes("shop.example.com", v, &s)
                })
                .count();
            let rate = resumed as f64 / K as f64;
            eprintln!(
                "resumption rate A->B over {v:?}, dyncert_session_tickets {}: {resumed}/{K} = {:.0}%",
                if tickets { "on" } else { "off" },
                rate * 100.0
            );
            rates.push((tickets, rate));
        }
    }
    for (tickets, rate) in rates {
        if tickets {
            assert_eq!(rate, 1.0);
        } else {
            assert_eq!(rate, 0.0);
        }
    }
}
