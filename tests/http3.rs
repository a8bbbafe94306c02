//! HTTP/3: QUIC handshakes get their certificate from the module too.
//!
//! The module chooses certificates in OpenSSL's certificate callback, which
//! is set on the server's SSL_CTX, and QUIC handshakes run through that
//! SSL_CTX as well; the ClientHello peek (and so the wait for a fetch)
//! exists only on TCP listeners. These tests make real HTTP/3 requests with
//! SNI through `tests/tools/h3_get.py` (aioquic: curl in Debian 12 has no
//! HTTP/3) against nginx + dyncert + redis-server.
//!
//! They skip, saying why, when the NGINX under test was built without
//! `--with-http_v3_module` or no Python with aioquic is found, unless
//! `DYNCERT_REQUIRE_HTTP3=1` (scripts/test.sh sets it after installing
//! aioquic), which turns a skip into a failure. The Python is
//! `DYNCERT_H3_PYTHON`, else the venv scripts/test.sh makes in
//! `target/tools/venv`, else `python3`.

use dyncert_testkit::*;
use openssl::x509::X509;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const HTTP: &str = r#"
http {
    access_log off;
    dyncert_redis @REDIS@;
    server {
        listen 127.0.0.1:@PORT@ ssl;
        listen 127.0.0.1:@PORT@ quic reuseport;
        http2 on;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        @SERVER@
        add_header Alt-Svc 'h3=":@PORT@"; ma=60' always;
        location / { return 200 "$ssl_server_name via $dyncert_source over $server_protocol\n"; }
    }
}
"#;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn required() -> bool {
    std::env::var_os("DYNCERT_REQUIRE_HTTP3").is_some_and(|v| v == "1")
}

/// Why HTTP/3 cannot be tested here, or the Python that runs the client.
fn h3_client() -> Result<PathBuf, String> {
    let nginx = nginx_bin();
    let v = Command::new(&nginx)
        .arg("-V")
        .output()
        .map_err(|e| format!("{}: {e}", nginx.display()))?;
    let info = String::from_utf8_lossy(&v.stderr);
    if !info.contains("--with-http_v3_module") {
        return Err(format!(
            "{} was built without --with-http_v3_module (NGX_CONFIGURE_ARGS, see .cargo/config.toml)",
            nginx.display()
        ));
    }

    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("DYNCERT_H3_PYTHON") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(manifest_dir().join("target/tools/venv/bin/python"));
    candidates.push(PathBuf::from("python3"));
    let mut tried = Vec::new();
    for python in candidates {
        let check = Command::new(&python).arg(script()).arg("--check").output();
        match check {
            Ok(o) if o.status.success() => return Ok(python),
            Ok(o) => tried.push(format!(
                "{}: {}",
                python.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => tried.push(format!("{}: {e}", python.display())),
        }
    }
    Err(format!(
        "no Python with aioquic ({}); scripts/test.sh installs it into target/tools/venv",
        tried.join("; ")
    ))
}

fn script() -> PathBuf {
    manifest_dir().join("tests/tools/h3_get.py")
}

/// The client's Python, or `None` after printing why the test is skipped.
fn client_or_skip(test: &str) -> Option<PathBuf> {
    match h3_client() {
        Ok(p) => Some(p),
        Err(why) if required() => {
            panic!("DYNCERT_REQUIRE_HTTP3=1 but HTTP/3 cannot be tested: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

/// What one HTTP/3 request saw.
#[derive(Debug)]
struct H3Response {
    status: u16,
    alpn: String,
    body: String,
    /// As sent by the server, leaf first.
    chain: Vec<X509>,
}

impl H3Response {
    fn leaf_sans(&self) -> Vec<String> {
        dns_sans(&self.chain[0])
    }

    fn is_default(&self) -> bool {
        self.leaf_sans() == [DEFAULT_NAME]
    }

    fn is_leaf(&self, leaf: &Leaf) -> bool {
        self.chain[0].to_der().unwrap() == leaf.issued.cert.to_der().unwrap()
    }

    fn source(&self) -> &str {
        self.body
            .split_once(" via ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .unwrap_or("")
    }

    fn assert_served(&self, leaf: &Leaf, pki: &Pki) {
        assert!(
            self.is_leaf(leaf),
            "wrong certificate over HTTP/3: SANs {:?} (body {:?})",
            self.leaf_sans(),
            self.body
        );
        assert_eq!(self.chain.len(), 2, "expected leaf + intermediate");
        assert_eq!(
            self.chain[1].to_der().unwrap(),
            pki.intermediate.cert.to_der().unwrap(),
            "second certificate is not the intermediate"
        );
        self.assert_http3();
    }

    fn assert_http3(&self) {
        assert_eq!(self.status, 200, "body {:?}", self.body);
        assert_eq!(self.alpn, "h3");
        assert!(
            self.body.contains("over HTTP/3.0"),
            "nginx did not see HTTP/3: {:?}",
            self.body
        );
    }
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex body"))
        .collect()
}

/// One HTTP/3 `GET /` to 127.0.0.1:`port` with SNI and `:authority` `sni`.
fn h3_get(python: &Path, port: u16, sni: &str) -> Result<H3Response, String> {
    h3_get_authority(python, port, sni, sni)
}

/// [`h3_get`] against `s`; panics, with nginx's logs, when it fails.
fn h3_ok(python: &Path, s: &Stack, sni: &str) -> H3Response {
    h3_get(python, s.nginx.port, sni)
        .unwrap_or_else(|e| panic!("HTTP/3 request failed: {e}\n{}", s.nginx.logs()))
}

/// Asks over HTTP/3 until `sni` is served `leaf` (the first handshakes of
/// an uncached name get the default certificate).
fn h3_until_served(python: &Path, s: &Stack, sni: &str, leaf: &Leaf) -> H3Response {
    poll(STARTUP_DEADLINE, Duration::from_millis(100), || {
        let r = h3_get(python, s.nginx.port, sni).ok()?;
        r.is_leaf(leaf).then_some(r)
    })
    .unwrap_or_else(|| panic!("never served its own certificate\n{}", s.nginx.logs()))
}

/// One HTTP/3 `GET /` with SNI `sni` and `:authority` `authority`.
fn h3_get_authority(
    python: &Path,
    port: u16,
    sni: &str,
    authority: &str,
) -> Result<H3Response, String> {
    let out = Command::new(python)
        .arg(script())
        .args(["--port", &port.to_string(), "--sni", sni])
        .args(["--authority", authority, "--timeout", "5"])
        .output()
        .map_err(|e| format!("run {}: {e}", python.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{} {}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let (head, pem) = match stdout.find("-----BEGIN") {
        Some(i) => stdout.split_at(i),
        None => (stdout.as_ref(), ""),
    };
    let field = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or("")
            .to_string()
    };
    let chain = X509::stack_from_pem(pem.as_bytes()).map_err(|e| format!("chain: {e}"))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {stdout:?}"));
    }
    Ok(H3Response {
        status: field("status").parse().unwrap_or(0),
        alpn: field("alpn"),
        body: String::from_utf8_lossy(&hex_decode(&field("body"))).into_owned(),
        chain,
    })
}

fn start(server: &str) -> Stack {
    Stack::start(1, &HTTP.replace("@SERVER@", server))
}

#[test]
fn http3_handshake_gets_certificate_from_redis() {
    let Some(python) = client_or_skip("http3_handshake_gets_certificate_from_redis") else {
        return;
    };
    let mut s = start("");
    let leaf = s.pki.leaf(&["h3.example.com"], 7001);
    s.redis.put_leaf("h3.example.com", &leaf);

    // No peek on UDP: the first QUIC handshake for an uncached name may get
    // the default certificate while the callback's fetch runs; every answer
    // is one of the two, and the record's certificate comes within seconds.
    let start = Instant::now();
    let served = loop {
        let r = h3_ok(&python, &s, "h3.example.com");
        if r.is_leaf(&leaf) {
            break r;
        }
        assert!(
            r.is_default(),
            "neither the record nor the default: SANs {:?}",
            r.leaf_sans()
        );
        r.assert_http3();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "HTTP/3 never got the certificate from Redis\n{}",
            s.nginx.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    served.assert_served(&leaf, &s.pki);
    assert!(
        matches!(served.source(), "cache" | "redis"),
        "$dyncert_source over HTTP/3: {:?}",
        served.body
    );
    s.nginx.assert_healthy();
}

#[test]
fn http3_uses_certificate_fetched_by_tcp_handshake() {
    let Some(python) = client_or_skip("http3_uses_certificate_fetched_by_tcp_handshake") else {
        return;
    };
    let mut s = start("");
    let leaf = s.pki.leaf(&["shop.example.com"], 7002);
    s.redis.put_leaf("shop.example.com", &leaf);

    // The TCP handshake parks until the record is fetched; the worker's
    // cache then serves QUIC from the very first handshake, the way a
    // browser arrives over HTTP/3 after an Alt-Svc from a TCP response.
    let tcp = s.get(Some("shop.example.com"));
    tcp.assert_served(&leaf, &s.pki);
    assert_eq!(tcp.source(), "redis", "body {:?}", tcp.body);

    for _ in 0..3 {
        let r = h3_ok(&python, &s, "shop.example.com");
        r.assert_served(&leaf, &s.pki);
        assert_eq!(r.source(), "cache", "body {:?}", r.body);
    }
    s.nginx.assert_healthy();
}

#[test]
fn http3_unknown_name_gets_default_certificate() {
    let Some(python) = client_or_skip("http3_unknown_name_gets_default_certificate") else {
        return;
    };
    let mut s = start("");
    for _ in 0..2 {
        let r = h3_ok(&python, &s, "nosuch.example.net");
        assert!(r.is_default(), "SANs {:?}", r.leaf_sans());
        r.assert_http3();
        assert_eq!(r.source(), "default", "body {:?}", r.body);
    }
    s.nginx.assert_healthy();
}

#[test]
fn http3_unknown_name_is_rejected_when_configured() {
    let Some(python) = client_or_skip("http3_unknown_name_is_rejected_when_configured") else {
        return;
    };
    let mut s = start("dyncert_unknown reject;");
    let leaf = s.pki.leaf(&["known.example.com"], 7003);
    s.redis.put_leaf("known.example.com", &leaf);
    s.get(Some("known.example.com"))
        .assert_served(&leaf, &s.pki);

    let err = h3_get(&python, s.nginx.port, "nosuch.example.net")
        .expect_err("a QUIC handshake for an unknown name must fail with dyncert_unknown reject");
    assert!(
        err.contains("TLS alert 112"),
        "expected the unrecognized_name alert (112), got: {err}"
    );
    // The worker is fine and keeps serving known names over QUIC.
    h3_ok(&python, &s, "known.example.com").assert_served(&leaf, &s.pki);
    s.nginx.assert_healthy();
}

/// `dyncert_on_demand on` over QUIC: no peek, so the first handshake
/// finds the name still being fetched; it is queued when the lookup says
/// it is unknown, once per negative-cache period, like over TCP
/// (tests/on_demand.rs).
#[test]
fn http3_unknown_name_is_queued_for_on_demand_once() {
    let Some(python) = client_or_skip("http3_unknown_name_is_queued_for_on_demand_once") else {
        return;
    };
    let mut s = start("dyncert_on_demand on;");
    let name = "quic-new.example.net";
    let queued = |s: &Stack| -> Vec<String> {
        s.redis
            .stream_entries("dyncert:on-demand")
            .into_iter()
            .map(|e| e["name"].clone())
            .collect()
    };
    for _ in 0..3 {
        let r = h3_ok(&python, &s, name);
        assert!(r.is_default(), "SANs {:?}", r.leaf_sans());
        r.assert_http3();
    }
    let first = poll(Duration::from_secs(5), Duration::from_millis(20), || {
        (!queued(&s).is_empty()).then_some(())
    });
    assert!(first.is_some(), "not queued:\n{}", s.nginx.logs());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(queued(&s), [name]);
    s.nginx.assert_healthy();
}

/// `dyncert_tenant_policy on` over QUIC: the same invariant as over TCP
/// (tests/tenant_attacks.rs). QUIC has no peek, so the first handshake for
/// an uncached name gets the default certificate: its request is refused.
const TENANT: &str = r#"
http {
    access_log off;
    dyncert_redis @REDIS@;
    server {
        listen 127.0.0.1:@PORT@ ssl;
        listen 127.0.0.1:@PORT@ quic reuseport;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        dyncert_tenant_policy on;
        root html;
        location / { }
    }
}
"#;

#[test]
fn http3_requests_are_held_to_the_tenant_policy() {
    let Some(python) = client_or_skip("http3_requests_are_held_to_the_tenant_policy") else {
        return;
    };
    let mut s = Stack::start(1, TENANT);
    write_file(&s.nginx.prefix().join("html/index.html"), "tenant page\n");
    let open = s.pki.leaf(&["open.example.com"], 7010);
    s.redis.put_leaf("open.example.com", &open);
    let fenced = s.pki.leaf(&["fenced.example.com"], 7011);
    s.redis
        .put_leaf_with("fenced.example.com", &fenced, &[("allow", "10.0.0.0/8")]);

    // Uncached: the QUIC handshake gets the default certificate, and the
    // request is not served.
    let r = h3_ok(&python, &s, "open.example.com");
    assert!(r.is_default(), "SANs {:?}", r.leaf_sans());
    assert_eq!(r.status, 421, "default certificate: {:?}", r.body);
    // Cached (by that handshake's fetch): served with its own certificate.
    let r = h3_until_served(&python, &s, "open.example.com", &open);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body, "tenant page\n");
    // Another name's :authority on that connection's certificate.
    let r = h3_get_authority(
        &python,
        s.nginx.port,
        "open.example.com",
        "fenced.example.com",
    )
    .unwrap_or_else(|e| panic!("HTTP/3 request failed: {e}\n{}", s.nginx.logs()));
    assert_eq!(r.status, 421, "{:?}", r.body);
    // The tenant's allow list applies over QUIC too.
    let r = h3_until_served(&python, &s, "fenced.example.com", &fenced);
    assert_eq!(r.status, 403, "{:?}", r.body);
    s.nginx.assert_healthy();
}

#[test]
fn http3_first_handshake_gets_a_certificate_any_worker_fetched() {
    let Some(python) =
        client_or_skip("http3_first_handshake_gets_a_certificate_any_worker_fetched")
    else {
        return;
    };
    // Two workers and the shared zone: the worker a QUIC handshake lands
    // on may not have fetched the name, but the zone has it.
    let mut s = Stack::start(
        2,
        &HTTP.replace("@SERVER@", "").replace(
            "dyncert_redis @REDIS@;",
            "dyncert_redis @REDIS@;\n    dyncert_shared_zone dyncert:4m;",
        ),
    );
    let mut from_the_zone = 0;
    for i in 0..12 {
        let name = format!("h3-{i}.example.com");
        let leaf = s.pki.leaf(&[&name], 7100 + i);
        s.redis.put_leaf(&name, &leaf);
        // One worker fetches it over TCP (the peek step waits for it)...
        let tcp = s.get(Some(&name));
        tcp.assert_served(&leaf, &s.pki);
        // ...and the first QUIC handshake, on whichever worker, gets it.
        let r = h3_ok(&python, &s, &name);
        r.assert_served(&leaf, &s.pki);
        assert!(
            matches!(r.source(), "shared" | "cache"),
            "{name}: body {:?}",
            r.body
        );
        from_the_zone += usize::from(r.source() == "shared");
    }
    // QUIC spreads connections over the workers: with 12 names, some land
    // on the worker that did not fetch (a 2^-12 chance that none does).
    assert!(from_the_zone > 0, "no QUIC handshake loaded from the zone");
    // A name no worker has fetched: the first QUIC handshake gets the
    // default certificate and starts the fetch; a later one gets the name's.
    let leaf = s.pki.leaf(&["h3-new.example.com"], 7199);
    s.redis.put_leaf("h3-new.example.com", &leaf);
    let first = h3_ok(&python, &s, "h3-new.example.com");
    assert!(first.is_default(), "SANs {:?}", first.leaf_sans());
    h3_until_served(&python, &s, "h3-new.example.com", &leaf);
    s.nginx.assert_healthy();
}
