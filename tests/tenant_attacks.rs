//! The tenant policy tried as an attacker would: every way a handshake can
//! end with something other than the tenant's own current record, and
//! every way a request can borrow another connection's or another name's
//! standing. The invariant (`dyncert_tenant_policy on`): a request is served
//! only when the TLS server name is its host, the connection's handshake
//! installed that name's own current record, and the record's policy
//! passes; anything else is 421.
//!
//! The tenant `fenced.example.com` admits 127.0.0.2 only, so a client on
//! 127.0.0.1 that gets the page has bypassed the policy; a client on
//! 127.0.0.2 shows that legitimate use still works.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use dyncert_testkit::conf::dyncert_server;
use dyncert_testkit::*;
use openssl::ssl::SslVersion;

const HTTP: &str = r#"
http {
    access_log off;
    dyncert_redis @REDIS@;
    dyncert_redis_timeout @REDIS_TIMEOUT@;
    dyncert_fetch_timeout @FETCH_TIMEOUT@;
    dyncert_fetch_concurrency @CONCURRENCY@;
    ssl_session_cache shared:SSL:1m;
    server {
        listen 127.0.0.1:@MPORT@;
        location = /metrics { dyncert_metrics; }
    }
    server {
        listen 127.0.0.1:@PORT@ ssl default_server;
        listen 127.0.0.1:@PORT@ quic reuseport;
        http2 on;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        dyncert_tenant_policy on;
        root html;
        location / { }
    }
    # The same tenant server without session tickets: TLS 1.2 resumes by
    # session id from the shared cache (and TLS 1.3 statefully).
    server {
        listen 127.0.0.1:@IDPORT@ ssl;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        ssl_session_tickets off;
        dyncert on;
        dyncert_tenant_policy on;
        root html;
        location / { }
    }
    # Another server on the same listener, with a static certificate.
    server {
        listen 127.0.0.1:@PORT@ ssl;
        http2 on;
        server_name other.example.net;
        ssl_certificate     @OTHER_CRT@;
        ssl_certificate_key @OTHER_KEY@;
        root html;
        location / { }
    }
}
"#;

const FENCED: &str = "fenced.example.com";
const PLAIN: &str = "plain.example.com";
const ALLOWED: &str = "127.0.0.2";
const OUTSIDER: &str = "127.0.0.1";

struct Setup {
    redis_timeout: &'static str,
    fetch_timeout: &'static str,
    concurrency: &'static str,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            redis_timeout: "1s",
            fetch_timeout: "2s",
            concurrency: "64",
        }
    }
}

struct T {
    s: Stack,
    mport: u16,
    /// Same tenant server, but without session tickets: TLS 1.2 resumes
    /// by session id from the shared cache (and TLS 1.3 statefully).
    idport: u16,
    fenced: Leaf,
    _files: TempDir,
}

fn start_with(setup: Setup) -> T {
    let pki = Pki::new();
    let redis = Redis::start();
    let files = TempDir::new("other-cert");
    let other = pki.leaf(&["other.example.net"], 7001);
    let crt = files.path().join("other.crt");
    let key = files.path().join("other.key");
    write_file(&crt, &other.chain_pem);
    write_file(&key, &other.key_pem);
    let mport = free_port();
    let idport = free_port();
    let nginx = Nginx::start(
        &pki,
        HTTP,
        NginxOpts::new()
            .redis(&redis)
            .var("MPORT", mport)
            .var("IDPORT", idport)
            .var("REDIS_TIMEOUT", setup.redis_timeout)
            .var("FETCH_TIMEOUT", setup.fetch_timeout)
            .var("CONCURRENCY", setup.concurrency)
            .var("OTHER_CRT", crt.display())
            .var("OTHER_KEY", key.display()),
    );
    nginx.write_index_pages(&[""]);
    let fenced = pki.leaf(&[FENCED], 7002);
    redis.put_leaf_with(FENCED, &fenced, &[("allow", ALLOWED)]);
    let plain = pki.leaf(&[PLAIN], 7003);
    redis.put_leaf(PLAIN, &plain);
    T {
        s: Stack { pki, redis, nginx },
        mport,
        idport,
        fenced,
        _files: files,
    }
}

fn start() -> T {
    start_with(Setup::default())
}

impl T {
    fn port(&self) -> u16 {
        self.s.nginx.port
    }

    fn send(&self, req: Request, port: u16) -> Exchange {
        req.https(port)
            .unwrap_or_else(|e| panic!("request failed: {e}\n{}", self.s.nginx.logs()))
    }

    fn misdirected(&self, reason: &str) -> f64 {
        scrape_metrics(self.mport).get(&format!(
            "dyncert_tenant_misdirected_total{{reason=\"{reason}\"}}"
        ))
    }
}

/// The tenant's page must not have been served.
fn assert_not_served(r: &Exchange, what: &str) {
    assert!(
        r.status != 200 && r.body != index_page(""),
        "{what}: the tenant's content was served: {r:?}"
    );
}

const VERSIONS: [SslVersion; 2] = [SslVersion::TLS1_3, SslVersion::TLS1_2];

#[test]
fn request_without_sni_is_misdirected_whatever_the_host() {
    let mut t = start();
    // Cache both names first: nothing about them is unknown.
    for name in [FENCED, PLAIN] {
        let r = t.send(Request::get("/").from(ALLOWED).sni(name), t.port());
        assert_eq!(r.status, 200, "control for {name}: {r:?}");
    }
    let before = t.misdirected("no_server_name");
    for v in VERSIONS {
        for host in [FENCED, PLAIN] {
            let r = t.send(
                Request::get("/").from(ALLOWED).host(host).max_tls(v),
                t.port(),
            );
            r.assert_default();
            assert_eq!(r.status, 421, "no SNI, Host {host} over {v:?}: {r:?}");
            assert_not_served(&r, "no SNI");
        }
    }
    assert_eq!(t.misdirected("no_server_name") - before, 4.0);
    t.s.nginx.assert_healthy();
}

#[test]
fn host_other_than_the_tls_server_name_is_misdirected() {
    let mut t = start();
    for (sni, host) in [(PLAIN, FENCED), (FENCED, PLAIN)] {
        for v in VERSIONS {
            let r = t.send(
                Request::get("/")
                    .from(ALLOWED)
                    .sni(sni)
                    .host(host)
                    .max_tls(v),
                t.port(),
            );
            assert_eq!(r.status, 421, "SNI {sni}, Host {host}: {r:?}");
            assert_not_served(&r, "Host differs from SNI");
        }
    }
    // With the port and a trailing dot the Host is still the name.
    let r = t.send(
        Request::get("/")
            .from(ALLOWED)
            .sni(FENCED)
            .host(&format!("{FENCED}.:{}", t.port())),
        t.port(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    t.s.nginx.assert_healthy();
}

/// HTTP/1.1 takes the host from an absolute request line and accepts a
/// `Host` header naming something else; a backend routed by `$http_host`
/// would act on that other name. The request is refused unless both name
/// the TLS server name.
#[test]
fn a_host_header_naming_another_tenant_beside_an_absolute_request_line_is_misdirected() {
    let mut t = start();
    // SNI and request line: the open tenant; Host header: the fenced one.
    let r = t.send(
        Request::get(&format!("https://{PLAIN}/"))
            .from(OUTSIDER)
            .sni(PLAIN)
            .host(FENCED),
        t.port(),
    );
    assert_eq!(r.status, 421, "{r:?}");
    assert_not_served(&r, "Host header differs from the request line");
    // Both naming the server name (with a port) is served.
    let r = t.send(
        Request::get(&format!("https://{PLAIN}/"))
            .from(OUTSIDER)
            .sni(PLAIN)
            .host(&format!("{PLAIN}:{}", t.port())),
        t.port(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    t.s.nginx.assert_healthy();
}

#[test]
fn certificate_of_another_server_block_does_not_reach_the_tenant() {
    let mut t = start();
    let r = t.send(Request::get("/").from(ALLOWED).sni(FENCED), t.port());
    assert_eq!(r.status, 200, "control: {r:?}");
    // The static server's own name gets its own content...
    let r = t.send(
        Request::get("/").from(ALLOWED).sni("other.example.net"),
        t.port(),
    );
    assert_eq!(r.status, 200, "control: {r:?}");
    // ...but its handshake cannot be used for the tenant, whose Host sends
    // the request to the tenant-policy server.
    let r = t.send(
        Request::get("/")
            .from(ALLOWED)
            .sni("other.example.net")
            .host(FENCED),
        t.port(),
    );
    assert_eq!(r.status, 421, "{r:?}");
    assert_not_served(&r, "another server block's handshake");
    t.s.nginx.assert_healthy();
}

/// Sessions of `donor` handshakes resumed for `FENCED`.
fn resumption_attempts(t: &T, port: u16, from: &str) -> Vec<(String, Exchange)> {
    let mut out = Vec::new();
    for v in VERSIONS {
        for donor_sni in [None, Some(PLAIN), Some("other.example.net")] {
            let mut donor = Request::get("/").from(from).max_tls(v);
            if let Some(sni) = donor_sni {
                donor = donor.sni(sni);
            }
            let first = t.send(donor, port);
            let Some(session) = first.tls().session.as_ref() else {
                panic!("{v:?} donor {donor_sni:?}: no session to resume");
            };
            let r = t.send(
                Request::get("/")
                    .from(from)
                    .sni(FENCED)
                    .max_tls(v)
                    .resume(session),
                port,
            );
            out.push((format!("{v:?}, session of {donor_sni:?}, port {port}"), r));
        }
    }
    out
}

#[test]
fn sessions_of_other_names_are_declined_and_the_handshake_goes_on() {
    let mut t = start();
    // Control: this client resumes its own sessions at all, on both ports
    // (tickets, and session ids from the shared cache).
    for port in [t.port(), t.idport] {
        for v in VERSIONS {
            let req = Request::get("/").from(ALLOWED).sni(PLAIN).max_tls(v);
            let first = t.send(req.clone(), port);
            let again = t.send(req.resume(first.tls().session.as_ref().unwrap()), port);
            assert!(again.tls().resumed, "control: no resumption over {v:?}");
        }
    }
    for port in [t.port(), t.idport] {
        // An outsider gets a full handshake with the tenant's certificate
        // and the tenant's verdict.
        for (what, r) in resumption_attempts(&t, port, OUTSIDER) {
            assert!(!r.tls().resumed, "{what}: resumed: {r:?}");
            r.assert_served(&t.fenced, &t.s.pki);
            assert_eq!(r.status, 403, "{what}: {r:?}");
            assert_not_served(&r, &what);
        }
        // A legitimate client whose session is declined just works.
        for (what, r) in resumption_attempts(&t, port, ALLOWED) {
            assert!(!r.tls().resumed, "{what}: resumed: {r:?}");
            r.assert_served(&t.fenced, &t.s.pki);
            assert_eq!(r.status, 200, "{what}: {r:?}");
        }
    }
    t.s.nginx.assert_healthy();
}

#[test]
fn tenant_session_is_not_resumed_without_sni_or_for_another_name() {
    let mut t = start();
    for port in [t.port(), t.idport] {
        for v in VERSIONS {
            let first = t.send(Request::get("/").from(ALLOWED).sni(FENCED).max_tls(v), port);
            assert_eq!(first.status, 200, "control: {first:?}");
            let session = first.tls().session.clone().expect("a session");
            // Without SNI, asking for the tenant by Host.
            let r = t.send(
                Request::get("/")
                    .from(ALLOWED)
                    .host(FENCED)
                    .max_tls(v)
                    .resume(&session),
                port,
            );
            assert!(!r.tls().resumed, "{v:?} without SNI resumed: {r:?}");
            assert_eq!(r.status, 421, "{v:?}: {r:?}");
            // For another name, asking for the tenant by Host.
            let r = t.send(
                Request::get("/")
                    .from(ALLOWED)
                    .sni(PLAIN)
                    .host(FENCED)
                    .max_tls(v)
                    .resume(&session),
                port,
            );
            assert!(!r.tls().resumed, "{v:?} for {PLAIN} resumed: {r:?}");
            assert_eq!(r.status, 421, "{v:?}: {r:?}");
        }
    }
    t.s.nginx.assert_healthy();
}

#[test]
fn own_sessions_resume_until_the_record_is_replaced() {
    let mut t = start();
    for port in [t.port(), t.idport] {
        for v in VERSIONS {
            let req = Request::get("/").from(ALLOWED).sni(FENCED).max_tls(v);
            let first = t.send(req.clone(), port);
            let session = first.tls().session.clone().expect("a session");
            let again = t.send(req.clone().resume(&session), port);
            assert!(again.tls().resumed, "{v:?} on {port}: {again:?}");
            assert_eq!(again.status, 200, "{again:?}");
            // ...and an outsider resuming the tenant's own session gets the
            // tenant's verdict. (A fresh session: this client's TLS 1.2
            // sessions resume once, with or without the module.)
            let session = t.send(req.clone(), port).tls().session.clone().unwrap();
            let r = t.send(
                Request::get("/")
                    .from(OUTSIDER)
                    .sni(FENCED)
                    .max_tls(v)
                    .resume(&session),
                port,
            );
            assert!(r.tls().resumed, "{v:?} on {port}: {r:?}");
            assert_eq!(r.status, 403, "{r:?}");
        }
    }
    // The record is replaced (renewed certificate, same policy).
    let renewed = t.s.pki.leaf(&[FENCED], 7010);
    t.s.redis
        .put_leaf_with(FENCED, &renewed, &[("allow", ALLOWED)]);
    t.s.redis.publish("dyncert:invalidate", FENCED);
    let req = Request::get("/").from(ALLOWED).sni(FENCED);
    let fresh = poll(STARTUP_DEADLINE, Duration::from_millis(50), || {
        let r = t.send(req.clone(), t.port());
        (r.tls().leaf_serial == renewed.serial_hex).then_some(r)
    })
    .unwrap_or_else(|| panic!("renewal not picked up\n{}", t.s.nginx.logs()));
    assert_eq!(fresh.status, 200);
    // A session of the old record is declined: full handshake, new record.
    let old = t.send(req.clone(), t.idport);
    let old_session = old.tls().session.clone().unwrap();
    let renewed2 = t.s.pki.leaf(&[FENCED], 7011);
    t.s.redis
        .put_leaf_with(FENCED, &renewed2, &[("allow", ALLOWED)]);
    t.s.redis.publish("dyncert:invalidate", FENCED);
    poll(STARTUP_DEADLINE, Duration::from_millis(50), || {
        let r = t.send(req.clone(), t.port());
        (r.tls().leaf_serial == renewed2.serial_hex).then_some(())
    })
    .unwrap_or_else(|| panic!("second renewal not picked up\n{}", t.s.nginx.logs()));
    let r = t.send(req.clone().resume(&old_session), t.idport);
    assert!(
        !r.tls().resumed,
        "a session of a replaced record resumed: {r:?}"
    );
    r.assert_served(&renewed2, &t.s.pki);
    assert_eq!(r.status, 200, "{r:?}");
    t.s.nginx.assert_healthy();
}

#[test]
fn unparseable_client_hellos_never_bypass_the_policy() {
    let mut t = start();
    // Oversized: a ClientHello larger than the peek (a long ALPN list), for
    // a name not cached yet: the handshake cannot wait for the fetch and
    // gets the default certificate; the request is refused.
    let mut alpn = Vec::new();
    for i in 0..2600 {
        let p = format!("proto-{i:04}");
        alpn.push(p.len() as u8);
        alpn.extend_from_slice(p.as_bytes());
    }
    alpn.extend_from_slice(b"\x08http/1.1");
    let r = t.send(
        Request::get("/").from(ALLOWED).sni(FENCED).alpn(alpn),
        t.port(),
    );
    r.assert_default();
    assert_eq!(r.status, 421, "oversized ClientHello: {r:?}");
    // Split with a pause, for the other name: whatever the handshake got,
    // the tenant's content comes only with the tenant's certificate.
    let r = t.send(
        Request::get("/")
            .from(OUTSIDER)
            .sni(FENCED)
            .split_hello(20, Duration::from_millis(300)),
        t.port(),
    );
    assert_not_served(&r, "split ClientHello");
    let r = t.send(
        Request::get("/")
            .from(ALLOWED)
            .sni(PLAIN)
            .split_hello(20, Duration::from_millis(300)),
        t.port(),
    );
    assert!(
        r.status == 421 || r.tls().leaf_sans == [PLAIN],
        "split ClientHello: served without the name's own certificate: {r:?}"
    );
    // Garbage before the ClientHello: no TLS at all.
    let bad = Request::get("/")
        .from(ALLOWED)
        .sni(FENCED)
        .prefix(b"GARBAGE\r\n".to_vec())
        .https(t.port());
    assert!(bad.as_ref().map_or(true, |r| r.status != 200), "{bad:?}");
    t.s.nginx.assert_healthy();
}

#[test]
fn fetch_timeout_cap_and_redis_down_get_the_default_and_no_content() {
    let mut t = start_with(Setup {
        redis_timeout: "10s",
        fetch_timeout: "300ms",
        concurrency: "1",
    });
    // Redis hangs: the parked connection times out and gets the default.
    t.s.redis.pause();
    let r = t.send(Request::get("/").from(ALLOWED).sni(FENCED), t.port());
    r.assert_default();
    assert_eq!(r.status, 421, "fetch timed out: {r:?}");
    // That fetch is still in flight (10 s Redis timeout) and holds the only
    // slot: the next name is not fetched at all.
    let r = t.send(Request::get("/").from(ALLOWED).sni(PLAIN), t.port());
    r.assert_default();
    assert_eq!(r.status, 421, "fetch cap reached: {r:?}");
    t.s.redis.resume();
    // Redis down: the fetch fails at once.
    t.s.redis.stop();
    let r = t.send(
        Request::get("/").from(ALLOWED).sni("other.example.com"),
        t.port(),
    );
    r.assert_default();
    assert_eq!(r.status, 421, "redis down: {r:?}");
    assert!(t.misdirected("not_installed") + t.misdirected("no_record") >= 3.0);
    t.s.nginx.assert_healthy();
}

#[test]
fn wildcard_record_does_not_stand_in_for_a_name_with_its_own() {
    let mut t = start();
    let wild = t.s.pki.leaf(&["*.example.com"], 7020);
    t.s.redis.put_leaf("*.example.com", &wild);
    // Cache the wildcard through another name.
    let r = t.send(
        Request::get("/").from(ALLOWED).sni("www.example.com"),
        t.port(),
    );
    r.assert_served(&wild, &t.s.pki);
    assert_eq!(r.status, 200, "a name served by the wildcard: {r:?}");
    // fenced.example.com has its own record, which cannot be fetched now:
    // its handshake gets the cached wildcard, its request is refused.
    t.s.redis.stop();
    let r = t.send(Request::get("/").from(ALLOWED).sni(FENCED), t.port());
    r.assert_served(&wild, &t.s.pki);
    assert_eq!(r.status, 421, "{r:?}");
    assert_not_served(&r, "wildcard record in place of the name's own");
    t.s.nginx.assert_healthy();
}

// --- One connection, several requests (tests/tools/conn.py) -------------

fn python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/venv/bin/python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tools/conn.py");
    for p in [venv, PathBuf::from("python3")] {
        let ok = Command::new(&p)
            .arg(&script)
            .arg("--check")
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return p;
        }
    }
    panic!(
        "no Python with h2 and cryptography for tests/tools/conn.py; \
         scripts/test.sh installs them into target/tools/venv"
    );
}

struct Conn {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    serial: String,
}

impl Conn {
    fn open(port: u16, sni: &str, http2: bool) -> Conn {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tools/conn.py");
        let mut cmd = Command::new(python());
        cmd.arg(script)
            .args(["--port", &port.to_string(), "--sni", sni])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if http2 {
            cmd.arg("--http2");
        }
        let mut child = cmd.spawn().expect("spawn conn.py");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.first(), Some(&"connected"), "{line}");
        let serial = words[2].to_uppercase();
        Conn {
            child,
            stdin,
            stdout,
            serial,
        }
    }

    /// One request on the connection: status and body.
    fn get(&mut self, authority: &str) -> (u16, String) {
        writeln!(self.stdin, "GET {authority} /").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.first(), Some(&"response"), "{line}");
        let body = match words[2] {
            "-" => String::new(),
            hex => String::from_utf8_lossy(
                &(0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect::<Vec<u8>>(),
            )
            .into_owned(),
        };
        (words[1].parse().unwrap(), body)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "QUIT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn http2_connection_reuse_across_names_is_misdirected() {
    let mut t = start();
    // One certificate for two names, as browsers coalesce connections for.
    let shared = t.s.pki.leaf(&["a.example.org", "b.example.org"], 7030);
    t.s.redis.put_leaf("a.example.org", &shared);
    t.s.redis.put_leaf("b.example.org", &shared);
    let r = t.send(Request::get("/").sni("b.example.org"), t.port());
    assert_eq!(r.status, 200, "control: b.example.org on its own: {r:?}");
    let mut conn = Conn::open(t.port(), "a.example.org", true);
    assert_eq!(conn.serial, shared.serial_hex);
    assert_eq!(conn.get("a.example.org"), (200, index_page("")));
    let (status, body) = conn.get("b.example.org");
    assert_eq!(status, 421, "HTTP/2 reuse for another name: {body}");
    assert_ne!(body, index_page(""));
    assert_eq!(
        conn.get("a.example.org").0,
        200,
        "the connection stays good"
    );
    t.s.nginx.assert_healthy();
}

#[test]
fn open_connections_are_held_to_the_current_record() {
    let mut t = start();
    let open = t.s.pki.leaf(&["open.example.org"], 7040);
    t.s.redis
        .put_leaf_with("open.example.org", &open, &[("allow", "127.0.0.0/8")]);
    for http2 in [false, true] {
        let mut conn = Conn::open(t.port(), "open.example.org", http2);
        assert_eq!(conn.serial, open.serial_hex);
        assert_eq!(conn.get("open.example.org").0, 200, "http2 {http2}");
        // The policy changes (same certificate, no longer this client):
        // the next request on the open connection is not served.
        t.s.redis
            .put_leaf_with("open.example.org", &open, &[("allow", "10.0.0.0/8")]);
        t.s.redis.publish("dyncert:invalidate", "open.example.org");
        let (status, body) = poll(STARTUP_DEADLINE, Duration::from_millis(50), || {
            // Fetch the new record into the worker through a new handshake.
            let _ = Request::get("/").sni("open.example.org").https(t.port());
            let r = conn.get("open.example.org");
            (r.0 != 200).then_some(r)
        })
        .unwrap_or_else(|| panic!("policy change not applied\n{}", t.s.nginx.logs()));
        assert_eq!(status, 421, "http2 {http2}: {body}");
        assert_ne!(body, index_page(""));
        // A new connection is held to the new policy.
        let r = t.send(Request::get("/").sni("open.example.org"), t.port());
        assert_eq!(r.status, 403, "{r:?}");
        // Back to the first policy for the next round.
        t.s.redis
            .put_leaf_with("open.example.org", &open, &[("allow", "127.0.0.0/8")]);
        t.s.redis.publish("dyncert:invalidate", "open.example.org");
        poll(STARTUP_DEADLINE, Duration::from_millis(50), || {
            let r = Request::get("/")
                .sni("open.example.org")
                .https(t.port())
                .ok()?;
            (r.status == 200).then_some(())
        })
        .expect("policy restored");
    }
    t.s.nginx.assert_healthy();
}

fn http_location_realip() -> String {
    let server = dyncert_server(
        r#"
        dyncert_tenant_policy on;
        root html;
        add_header X-Remote $remote_addr always;
        # realip set in a location (nginx allows it there) resolves the
        # address in the pre-access phase, not in post-read.
        location / {
            set_real_ip_from 127.0.0.0/8;
            real_ip_header X-Real-IP;
        }
        location /office/ {
            set_real_ip_from 127.0.0.0/8;
            real_ip_header X-Real-IP;
            dyncert_allow 203.0.113.0/24;
        }
"#,
    );
    http_block(&["    dyncert_redis @REDIS@;", &server])
}

/// The trusted proxy 127.0.0.1 forwards clients' addresses in `X-Real-IP`;
/// the tenant's list must judge the client realip resolved, as
/// `dyncert_allow` and nginx's `allow` do, never the proxy.
#[test]
fn tenant_allow_list_judges_the_address_realip_resolved_in_a_location() {
    let pki = Pki::new();
    let redis = Redis::start();
    let mut nginx = Nginx::start(
        &pki,
        &http_location_realip(),
        NginxOpts::new().redis(&redis),
    );
    nginx.write_index_pages(&["", "office/"]);
    // Tenant a admits its office only, tenant b the proxy's address only.
    let a = pki.leaf(&["a.example.com"], 6101);
    let b = pki.leaf(&["b.example.com"], 6102);
    redis.put_leaf_with("a.example.com", &a, &[("allow", "203.0.113.0/24")]);
    redis.put_leaf_with("b.example.com", &b, &[("allow", "127.0.0.1")]);
    let send = |path: &str, sni: &str, client: &str| {
        // A file, not "/": the index module's internal redirect would run
        // the pre-access phase a second time, after realip, and hide the
        // first pass (a proxy_pass location has only the one).
        Request::get(path)
            .from("127.0.0.1")
            .sni(sni)
            .header("X-Real-IP", client)
            .https(nginx.port)
            .unwrap_or_else(|e| panic!("request failed: {e}\n{}", nginx.logs()))
    };
    let mut wrong = Vec::new();
    for (path, sni, client, status) in [
        // The proxy's address is in b's list, the client's is not.
        ("/index.html", "b.example.com", "198.51.100.7", 403),
        // The client is in a's office, the proxy is not.
        ("/index.html", "a.example.com", "203.0.113.9", 200),
        ("/index.html", "a.example.com", "198.51.100.7", 403),
        // dyncert_allow and the tenant's list see the same client.
        ("/office/index.html", "a.example.com", "203.0.113.9", 200),
        ("/office/index.html", "b.example.com", "203.0.113.9", 403),
    ] {
        let r = send(path, sni, client);
        r.assert_served(if sni == "a.example.com" { &a } else { &b }, &pki);
        let remote = r.header("X-Remote");
        if r.status != status || remote != Some(client) {
            wrong.push(format!(
                "{sni}{path} from {client}: {} with $remote_addr {remote:?} (expected {status})",
                r.status
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}\n{}", nginx.logs());
    let log = nginx.error_log();
    assert!(
        log.lines()
            .any(|l| l.contains("forbidden by the tenant's allow list")
                && l.contains("client: 198.51.100.7")),
        "the denial should name the client realip resolved:\n{log}"
    );
    nginx.assert_healthy();
}
