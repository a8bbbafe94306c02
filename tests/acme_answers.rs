//! ACME HTTP-01 answers from Redis: `GET /.well-known/acme-challenge/<t>`
//! gets the value of `dyncert:acme:<t>` as text/plain, 404 when absent,
//! before rewrites and access rules (so on the port-80 server that
//! otherwise redirects, and behind a `dyncert_allow` that would deny the
//! CA), without a Redis command for a malformed token, and without
//! blocking the event loop when Redis hangs.

use dyncert_testkit::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

const HTTP: &str = r#"
http {
    access_log off;
    dyncert_redis @REDIS@;
    dyncert_redis_timeout 1s;
    server {
        listen 127.0.0.1:@MPORT@;
        location = /metrics { dyncert_metrics; }
    }
    # Port 80 of a terminator: everything goes to https, except challenges.
    server {
        listen 127.0.0.1:@PORT@;
        server_name _;
        dyncert_acme_challenge on;
        return 301 https://$host$request_uri;
    }
    # A server whose allowlist turns the test client (127.0.0.1) away.
    server {
        listen 127.0.0.1:@LPORT@;
        server_name _;
        dyncert_acme_challenge on;
        root html;
        location / { dyncert_allow 192.0.2.1; }
    }
    server {
        listen 127.0.0.1:@SPORT@ ssl;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        dyncert_acme_challenge on;
        location / { return 200 "tls\n"; }
    }
    # Without dyncert_acme_challenge the path is an ordinary one.
    server {
        listen 127.0.0.1:@NPORT@;
        server_name _;
        location / { return 200 "no acme\n"; }
    }
}
"#;

struct Acme {
    s: Stack,
    mport: u16,
    lport: u16,
    sport: u16,
    nport: u16,
}

fn start() -> Acme {
    let pki = Pki::new();
    let redis = Redis::start();
    let [mport, lport, sport, nport] = [(); 4].map(|_| free_port());
    let nginx = Nginx::start(
        &pki,
        HTTP,
        NginxOpts::new()
            .redis(&redis)
            .var("MPORT", mport)
            .var("LPORT", lport)
            .var("SPORT", sport)
            .var("NPORT", nport),
    );
    nginx.write_index_pages(&[".well-known/"]);
    Acme {
        s: Stack { pki, redis, nginx },
        mport,
        lport,
        sport,
        nport,
    }
}

/// A token as ACME CAs make them (43 base64url characters).
const TOKEN: &str = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
const KEY_AUTHORIZATION: &str =
    "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI";

fn path(token: &str) -> String {
    format!("/.well-known/acme-challenge/{token}")
}

impl Acme {
    fn set(&self, token: &str, value: &str) {
        self.s
            .redis
            .cmd(&["SET", &format!("dyncert:acme:{token}"), value]);
    }

    fn http(&self, req: Request, port: u16) -> Exchange {
        req.http(port)
            .unwrap_or_else(|e| panic!("request failed: {e}\n{}", self.s.nginx.logs()))
    }

    fn get(&self, token: &str) -> Exchange {
        self.http(Request::get(&path(token)), self.s.nginx.port)
    }
}

fn assert_answer(r: &Exchange, value: &str) {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, value);
    assert_eq!(r.header("Content-Type"), Some("text/plain"), "{r:?}");
    assert_eq!(
        r.header("Content-Length"),
        Some(value.len().to_string().as_str())
    );
}

#[test]
fn challenge_is_answered_from_redis_as_text_plain() {
    let mut a = start();
    a.set(TOKEN, KEY_AUTHORIZATION);
    assert_answer(&a.get(TOKEN), KEY_AUTHORIZATION);
    // Also on an https server, and for a short token of odd characters.
    let r = Request::get(&path(TOKEN)).https(a.sport).unwrap();
    assert_answer(&r, KEY_AUTHORIZATION);
    a.set("a-_Z9", "a-_Z9.thumb");
    assert_answer(&a.get("a-_Z9"), "a-_Z9.thumb");
    // A query string does not change the token.
    let r = a.http(
        Request::get(&format!("{}?x=1", path(TOKEN))),
        a.s.nginx.port,
    );
    assert_answer(&r, KEY_AUTHORIZATION);
    a.s.nginx.assert_healthy();
}

#[test]
fn absent_token_gets_404_and_a_token_written_later_is_served_within_the_negative_ttl() {
    let mut a = start();
    let r = a.get(TOKEN);
    assert_eq!(r.status, 404, "{r:?}");
    let asked = Instant::now();
    // An issuer writes the token right before the CA asks: a 404 from an
    // earlier ask is remembered for the negative TTL (2 s), no longer.
    a.set(TOKEN, KEY_AUTHORIZATION);
    let served = poll(Duration::from_secs(4), Duration::from_millis(50), || {
        let r = a.get(TOKEN);
        (r.status == 200).then_some(r)
    })
    .unwrap_or_else(|| panic!("not served after the negative TTL\n{}", a.s.nginx.logs()));
    assert_answer(&served, KEY_AUTHORIZATION);
    assert!(asked.elapsed() < Duration::from_secs(4));
    // A value is never remembered: a change, then a removal, show at once.
    let changed = format!("{TOKEN}.changedThumbprint");
    a.set(TOKEN, &changed);
    assert_answer(&a.get(TOKEN), &changed);
    a.s.redis.cmd(&["DEL", &format!("dyncert:acme:{TOKEN}")]);
    assert_eq!(a.get(TOKEN).status, 404);
    a.s.nginx.assert_healthy();
}

/// The challenge path reads `<prefix><token>` for any token, so only a key
/// authorization for that token is answered: with a prefix shared with
/// other keys, nothing else under it can be read from port 80.
#[test]
fn only_a_key_authorization_for_the_token_is_answered() {
    let mut a = start();
    a.set("ticket-keys", "{\"generation\":1,\"keys\":[\"secret\"]}");
    a.set("other", &format!("{TOKEN}.thumb"));
    a.set("bare", "bare");
    for token in ["ticket-keys", "other", "bare"] {
        let r = a.get(token);
        assert_eq!(r.status, 404, "{token}: {r:?}");
        assert!(!r.body.contains("secret"), "{r:?}");
    }
    a.set(TOKEN, KEY_AUTHORIZATION);
    assert_answer(&a.get(TOKEN), KEY_AUTHORIZATION);
    a.s.nginx.assert_healthy();
}

#[test]
fn absent_token_is_answered_404_without_another_redis_read_within_the_negative_ttl() {
    let mut a = start();
    let monitor = a.s.redis.monitor();
    let first = a.get("absentToken");
    assert_eq!(first.status, 404, "{first:?}");
    let answered = Instant::now();
    let mut asked = 0;
    // Well inside the negative TTL (2 s), also on a slow machine.
    while answered.elapsed() < Duration::from_millis(500) {
        let r = a.get("absentToken");
        assert_eq!(r.status, 404, "{r:?}");
        asked += 1;
    }
    monitor.sync();
    let reads = monitor
        .module_commands()
        .iter()
        .filter(|o| o.args.get(1).map(String::as_str) == Some("dyncert:acme:absentToken"))
        .count();
    assert!(asked >= 5, "only {asked} requests");
    assert_eq!(reads, 1, "{}", monitor.dump());
    a.s.nginx.assert_healthy();
}

#[test]
fn malformed_tokens_get_404_without_any_redis_command() {
    let mut a = start();
    let long = "a".repeat(129);
    let bad = [
        "",
        "a.b",
        "abc==",
        "a%20b",
        "%C3%A9t%C3%A9",
        "a~b",
        "a*",
        "a/b",
        "a%2Fb",
        "dyncert:cert:shop.example.com",
        long.as_str(),
    ];
    // Control first: the longest valid token is looked up.
    let longest = "b".repeat(128);
    let longest_answer = format!("{longest}.thumb");
    a.set(&longest, &longest_answer);
    let monitor = a.s.redis.monitor();
    for token in bad {
        let r = a.get(token);
        assert_eq!(r.status, 404, "token {token:?}: {r:?}");
    }
    monitor.sync();
    let seen = monitor.module_commands();
    assert!(
        seen.is_empty(),
        "malformed tokens reached Redis:\n{}",
        monitor.dump()
    );

    // Positive control: the same watch does see a valid token's lookup.
    assert_answer(&a.get(&longest), &longest_answer);
    monitor.sync();
    let key = format!("dyncert:acme:{longest}");
    let gets = monitor
        .module_commands()
        .iter()
        .filter(|o| o.command() == "GET" && o.args.get(1) == Some(&key))
        .count();
    assert_eq!(gets, 1, "{}", monitor.dump());
    a.s.nginx.assert_healthy();
}

#[test]
fn challenge_is_answered_before_the_https_redirect_and_a_denying_allowlist() {
    let mut a = start();
    a.set(TOKEN, KEY_AUTHORIZATION);
    // Controls: the port-80 server redirects everything else ...
    let r = a.http(
        Request::get("/shop/cart").host("shop.example.com"),
        a.s.nginx.port,
    );
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(
        r.header("Location"),
        Some("https://shop.example.com/shop/cart")
    );
    let r = a.http(
        Request::get("/.well-known/acme-challenge").host("shop.example.com"),
        a.s.nginx.port,
    );
    assert_eq!(r.status, 301, "not a challenge path: {r:?}");
    // ... and the allowlist denies this client.
    let r = a.http(Request::get("/.well-known/"), a.lport);
    assert_eq!(r.status, 403, "{r:?}");

    let r = a.http(
        Request::get(&path(TOKEN)).host("shop.example.com"),
        a.s.nginx.port,
    );
    assert_answer(&r, KEY_AUTHORIZATION);
    let r = a.http(Request::get(&path(TOKEN)), a.lport);
    assert_answer(&r, KEY_AUTHORIZATION);
    let r = a.http(Request::get(&path("unknownToken")), a.lport);
    assert_eq!(r.status, 404, "an absent token is 404, not 403: {r:?}");
    a.s.nginx.assert_healthy();
}

#[test]
fn servers_without_acme_challenge_do_not_answer_challenges() {
    let mut a = start();
    a.set(TOKEN, KEY_AUTHORIZATION);
    let monitor = a.s.redis.monitor();
    let r = a.http(Request::get(&path(TOKEN)), a.nport);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "no acme\n");
    monitor.sync();
    assert!(monitor.module_commands().is_empty(), "{}", monitor.dump());
    a.s.nginx.assert_healthy();
}

#[test]
fn head_request_gets_the_headers_of_the_answer() {
    let mut a = start();
    a.set(TOKEN, KEY_AUTHORIZATION);
    let r = a.http(Request::head(&path(TOKEN)), a.s.nginx.port);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "");
    assert_eq!(r.header("Content-Type"), Some("text/plain"));
    assert_eq!(
        r.header("Content-Length"),
        Some(KEY_AUTHORIZATION.len().to_string().as_str())
    );
    let r = a.http(Request::head(&path("absentToken")), a.s.nginx.port);
    assert_eq!(r.status, 404, "{r:?}");
    a.s.nginx.assert_healthy();
}

#[test]
fn answers_and_misses_are_counted_in_metrics() {
    let mut a = start();
    a.set(TOKEN, KEY_AUTHORIZATION);
    let before = scrape_metrics(a.mport);
    assert_eq!(a.get(TOKEN).status, 200);
    assert_eq!(a.get(TOKEN).status, 200);
    assert_eq!(a.get("absentToken").status, 404);
    assert_eq!(a.get("a.b").status, 404);
    assert_eq!(a.get("abc==").status, 404);
    let after = scrape_metrics(a.mport);
    let delta = |k: &str| after.get(k) - before.get(k);
    assert_eq!(delta("dyncert_acme_challenges_served_total"), 2.0);
    assert_eq!(delta("dyncert_acme_challenges_missing_total"), 3.0);
    a.s.nginx.assert_healthy();
}

#[test]
fn paused_redis_gets_503_after_the_redis_timeout_while_other_requests_are_served() {
    let mut a = start();
    a.set(TOKEN, KEY_AUTHORIZATION);
    // The module's Redis connection is up before Redis hangs (on a loaded
    // machine the worker's first connect may still be under way).
    let first = poll(STARTUP_DEADLINE, Duration::from_millis(100), || {
        let r = a.get(TOKEN);
        (r.status == 200).then_some(r)
    })
    .unwrap_or_else(|| panic!("never answered\n{}", a.s.nginx.logs()));
    assert_answer(&first, KEY_AUTHORIZATION);

    a.s.redis.pause();
    let port = a.s.nginx.port;
    let waiting = thread::spawn(move || Request::get(&path(TOKEN)).http(port));
    thread::sleep(Duration::from_millis(200));
    // The worker's event loop is not blocked meanwhile: the redirect and
    // a TLS handshake are answered at once.
    let r = a.http(Request::get("/"), port);
    assert_eq!(r.status, 301);
    assert!(r.elapsed < Duration::from_millis(500), "{:?}", r.elapsed);
    let r = Request::get("/").https(a.sport).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.elapsed < Duration::from_millis(500), "{:?}", r.elapsed);

    let r = waiting.join().unwrap().expect("challenge request");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.elapsed >= Duration::from_millis(900) && r.elapsed <= Duration::from_secs(3),
        "503 after {:?}, expected about dyncert_redis_timeout (1s)",
        r.elapsed
    );
    let line =
        a.s.nginx
            .wait_for_log_line(STARTUP_DEADLINE, |l| {
                l.contains("while reading an ACME challenge") && l.contains(TOKEN)
            })
            .unwrap_or_else(|| panic!("no warning\n{}", a.s.nginx.logs()));
    assert!(line.contains("[warn]"), "{line}");

    a.s.redis.resume();
    let served = poll(STARTUP_DEADLINE, Duration::from_millis(100), || {
        let r = a.get(TOKEN);
        (r.status == 200).then_some(r)
    })
    .unwrap_or_else(|| panic!("not answered after Redis resumed\n{}", a.s.nginx.logs()));
    assert_answer(&served, KEY_AUTHORIZATION);
    a.s.nginx.assert_healthy();
}

/// Sends `GET path` on `s` (keep-alive) and reads exactly one response;
/// returns its status.
fn exchange_on(s: &mut TcpStream, path: &str) -> Result<u16, String> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if raw.len() >= end + 4 + len {
                return head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or(format!("bad response {head:?}"));
            }
        }
        match s.read(&mut buf) {
            Ok(0) => return Err(format!("closed after {raw:?}")),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => {
                return Err(format!(
                    "read: {e} after {:?}",
                    String::from_utf8_lossy(&raw)
                ))
            }
        }
    }
}

fn keep_alive_connection(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

#[test]
fn connection_close_is_honoured_after_answers_and_misses() {
    let mut a = start();
    a.set(TOKEN, KEY_AUTHORIZATION);
    let mut open = Vec::new();
    for (what, req) in [
        ("answer", Request::get(&path(TOKEN))),
        ("HEAD answer", Request::head(&path(TOKEN))),
        ("absent token", Request::get(&path("absentToken"))),
        ("malformed token", Request::get(&path("a.b"))),
        ("redirect (control)", Request::get("/")),
    ] {
        let r = a.http(req, a.s.nginx.port);
        if !r.closed {
            open.push(format!("{what} ({})", r.status));
        }
    }
    assert!(
        open.is_empty(),
        "nginx kept the connection open after `Connection: close`: {open:?}"
    );
    a.s.nginx.assert_healthy();
}

#[test]
fn keep_alive_connection_serves_the_next_request_after_an_answer() {
    let mut a = start();
    a.set(TOKEN, KEY_AUTHORIZATION);
    let mut s = keep_alive_connection(a.s.nginx.port);
    for (path, status) in [
        (path(TOKEN), 200),
        ("/next".to_string(), 301),
        (path("absentToken"), 404),
        ("/last".to_string(), 301),
    ] {
        let got = exchange_on(&mut s, &path)
            .unwrap_or_else(|e| panic!("{path} on a kept-alive connection: {e}"));
        assert_eq!(got, status, "{path}");
    }
    a.s.nginx.assert_healthy();
}

#[test]
fn answered_challenges_release_their_connections() {
    let mut a = start();
    a.set(TOKEN, KEY_AUTHORIZATION);
    // More answers than a worker has connections (worker_connections 256,
    // the kit's default), each on a connection the client closes at once.
    for i in 0..300 {
        let mut s = keep_alive_connection(a.s.nginx.port);
        let got = exchange_on(&mut s, &path(TOKEN))
            .unwrap_or_else(|e| panic!("answer {i}: {e}\n{}", a.s.nginx.logs()));
        assert_eq!(got, 200, "answer {i}");
    }
    let r = a.http(Request::get("/after"), a.s.nginx.port);
    assert_eq!(r.status, 301, "{r:?}");
    a.s.nginx.assert_healthy();
}

const ACME_ONLY: &str = r#"
http {
    access_log off;
    dyncert_redis @REDIS@;
    server {
        listen 127.0.0.1:@PORT@;
        server_name _;
        dyncert_acme_challenge on;
        return 301 https://$host$request_uri;
    }
}
"#;

#[test]
fn an_nginx_with_only_acme_answers_serves_them_and_exits_cleanly() {
    let s = Stack::start(1, ACME_ONLY);
    s.redis
        .cmd(&["SET", &format!("dyncert:acme:{TOKEN}"), KEY_AUTHORIZATION]);
    let r = Request::get(&path(TOKEN)).http(s.nginx.port).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, KEY_AUTHORIZATION);
    let mut nginx = s.nginx;
    nginx.stop_and_assert_healthy();
}
