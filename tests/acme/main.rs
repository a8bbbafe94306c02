//! ACME HTTP-01 answers from Redis, end to end (issue 4): a real CA
//! (`pebble`) and a real ACME client (`certbot`, hooks in
//! tests/tools/acme-redis-hook.sh) issue a certificate whose challenge is
//! answered from Redis over plain HTTP, the deploy hook stores it in Redis,
//! and dyncert serves it for the name. The wiring is described in
//! tests/acme/harness.rs; `scripts/acme-deps.sh` installs pebble and certbot.
//!
//! Until `dyncert_acme_challenge` exists, the challenge is answered by a
//! stand-in with the same contract, so CI keeps exercising pebble, certbot,
//! the hooks and dyncert's serving of what they issue.

mod harness;

use dyncert_testkit::*;
use harness::*;

/// The name certificates are issued for; it resolves only through the
/// harness's DNS stub, which is how pebble reaches 127.0.0.1.
const NAME: &str = "shop.acme.test";

/// Serving issued certificates: what `dyncert on;` does today.
fn serve() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;",
        &source_server(" name=$dyncert_name"),
    ])
}

/// The terminator of issue 4: the plain-HTTP server (port 80's role)
/// answers challenges from Redis before its access rules (`deny all`), the
/// TLS server serves what was issued. The access log shows who fetched
/// which challenge with what status.
fn answer_and_serve() -> String {
    http_block(&[
        r#"    log_format acme '$status $request_uri "$http_user_agent"';
    dyncert_redis @REDIS@;
    server {
        listen 127.0.0.1:@HTTP_PORT@;
        server_name _;
        access_log logs/acme-access.log acme;
        dyncert_acme_challenge on;
        location / { deny all; }
    }"#,
        &source_server(" name=$dyncert_name"),
    ])
}

fn start_nginx(pki: &Pki, redis: &Redis, template: &str, http_port: u16) -> Nginx {
    Nginx::start(
        pki,
        template,
        NginxOpts::new().redis(redis).var("HTTP_PORT", http_port),
    )
}

/// The challenge contract, checked directly on `port` before a CA relies
/// on it: a stored answer comes back as text/plain (a final newline
/// allowed), an absent one is 404, a token outside base64url is refused.
fn assert_challenge_contract(port: u16, redis: &Redis) {
    let token = "probe-Token_0123456789";
    let answer = format!("{token}.probe-thumbprint");
    let path = format!("{CHALLENGE_PATH}{token}");
    let host = format!("{NAME}:{port}");
    redis.cmd(&["SET", &format!("{ACME_PREFIX}{token}"), &answer]);

    let r = http_get(port, &host, &path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    // A CA ignores whitespace after the key authorization (RFC 8555 8.3).
    assert_eq!(
        (r.status, r.body.trim_end_matches(['\r', '\n'])),
        (200, answer.as_str()),
        "stored answer"
    );
    let ctype = r.header("content-type").unwrap_or("");
    assert!(ctype.starts_with("text/plain"), "Content-Type {ctype:?}");

    redis.cmd(&["DEL", &format!("{ACME_PREFIX}{token}")]);
    let r = http_get(port, &host, &path).unwrap();
    assert_eq!(r.status, 404, "absent answer, body {:?}", r.body);

    let r = http_get(port, &host, &format!("{CHALLENGE_PATH}not%20a.token")).unwrap();
    assert!(
        r.status == 400 || r.status == 404,
        "bad token got {} {:?}",
        r.status,
        r.body
    );
}

/// Tokens the auth hook wrote (`SET dyncert:acme:<token> ...`), from MONITOR.
fn tokens_set_by_hook(monitor: &Monitor) -> Vec<String> {
    monitor.sync();
    monitor
        .observed()
        .iter()
        .filter(|o| o.command() == "SET")
        .filter_map(|o| o.args.get(1)?.strip_prefix(ACME_PREFIX).map(str::to_string))
        .filter(|t| !t.starts_with("probe-"))
        .collect()
}

/// What every issuance must show once certbot is done: the hooks cleaned
/// the challenge up and stored exactly what was issued, the record is a
/// pebble chain for NAME, and dyncert serves that chain for NAME.
fn assert_issued_and_served(
    issued: &CertbotIssued,
    pebble: &Pebble,
    redis: &Redis,
    nginx: &mut Nginx,
    dns: &DnsStub,
) {
    assert!(
        dns.resolved(NAME),
        "pebble never resolved {NAME} through the stub: {:?}",
        dns.questions()
    );
    assert_eq!(
        pending_challenges(redis.port),
        Vec::<String>::new(),
        "the cleanup hook leaves no challenge behind"
    );

    let key = format!("{DEFAULT_PREFIX}{NAME}");
    let field = |f: &str| match redis.cmd(&["HGET", &key, f]) {
        Reply::Bulk(Some(v)) => String::from_utf8(v).unwrap(),
        other => panic!("HGET {key} {f}: {other:?} (deploy hook did not store it)"),
    };
    let (crt, key_pem) = (field("crt"), field("key"));
    assert_eq!(
        crt, issued.fullchain_pem,
        "record crt is certbot's fullchain.pem, byte for byte"
    );
    assert_eq!(
        key_pem, issued.privkey_pem,
        "record key is certbot's privkey.pem, byte for byte"
    );

    let root_pem = pebble.issuer_root_pem();
    let chain = assert_pebble_issued(&crt, &key_pem, NAME, &root_pem);

    let r = Request::get("/")
        .sni(NAME)
        .https(nginx.port)
        .unwrap_or_else(|e| panic!("TLS {NAME}: {e}\n{}", nginx.logs()));
    assert_eq!(r.status, 200, "body {:?}", r.body);
    assert_eq!(
        r.tls().chain[0].to_der().unwrap(),
        chain[0].to_der().unwrap(),
        "dyncert served another leaf (SANs {:?}, body {:?})",
        r.tls().leaf_sans,
        r.body
    );
    assert_eq!(r.tls().leaf_sans, [NAME]);
    assert_eq!(r.name(), NAME, "body {:?}", r.body);
    assert!(
        matches!(r.source(), "redis" | "cache"),
        "$dyncert_source {:?} (body {:?})",
        r.source(),
        r.body
    );
    let root = openssl::x509::X509::from_pem(root_pem.as_bytes()).unwrap();
    assert_chain_verifies(&r.tls().chain, &root);
    nginx.assert_healthy();
}

#[test]
fn dns_stub_points_every_name_at_loopback_and_has_no_aaaa() {
    // A query for shop.acme.test, type A then AAAA, as pebble's resolver
    // sends them (id 0x1234, RD set).
    let query = |qtype: u8| {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["shop", "acme", "test"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, qtype, 0, 1]);
        q
    };
    let dns = DnsStub::start();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = [0u8; 512];

    socket.send_to(&query(1), dns.addr).unwrap();
    let n = socket.recv(&mut buf).unwrap();
    let a = &buf[..n];
    assert_eq!(&a[..2], &[0x12, 0x34], "id echoed");
    assert_eq!(a[3] & 0x0f, 0, "NOERROR");
    assert_eq!(&a[6..8], &[0, 1], "one answer");
    assert_eq!(&a[n - 4..], &[127, 0, 0, 1], "A 127.0.0.1");

    socket.send_to(&query(28), dns.addr).unwrap();
    let n = socket.recv(&mut buf).unwrap();
    assert_eq!(buf[3] & 0x0f, 0, "NOERROR");
    assert_eq!(&buf[6..8], &[0, 0], "no AAAA answer");
    assert!(n > 12);

    assert!(dns.resolved(NAME));
    assert_eq!(
        dns.questions(),
        [(NAME.to_string(), DNS_A), (NAME.to_string(), DNS_AAAA)]
    );
}

#[test]
fn acme_harness_issues_certificate_with_redis_backed_http01_standin() {
    let pki = Pki::new();
    let redis = Redis::start();
    let standin = ChallengeStandin::start(redis.port);
    let dns = DnsStub::start();
    let pebble = Pebble::start(standin.port, &dns);
    let mut nginx = start_nginx(&pki, &redis, &serve(), free_port());
    assert_challenge_contract(standin.port, &redis);
    let monitor = redis.monitor();

    let issued = certbot_issue(&pebble, redis.port, NAME).unwrap_or_else(|e| panic!("{e}"));

    let tokens = tokens_set_by_hook(&monitor);
    assert_eq!(
        tokens.len(),
        1,
        "one HTTP-01 challenge, set by the auth hook: {tokens:?}"
    );
    let path = format!("{CHALLENGE_PATH}{}", tokens[0]);
    let fetched: Vec<_> = standin
        .requests()
        .into_iter()
        .filter(|r| r.path == path && r.user_agent.contains("Pebble"))
        .collect();
    assert!(
        !fetched.is_empty() && fetched.iter().all(|r| r.status == 200),
        "pebble must fetch {path} and get 200 every time: {:?}",
        standin.requests()
    );
    assert!(
        fetched.iter().all(|r| r.host.starts_with(NAME)),
        "pebble asks with Host {NAME}: {fetched:?}"
    );
    assert_issued_and_served(&issued, &pebble, &redis, &mut nginx, &dns);
}

#[test]
fn acme_issuance_end_to_end_through_dyncert() {
    let pki = Pki::new();
    let redis = Redis::start();
    let dns = DnsStub::start();
    let http_port = free_port();
    let pebble = Pebble::start(http_port, &dns);
    let mut nginx = start_nginx(&pki, &redis, &answer_and_serve(), http_port);
    assert_challenge_contract(http_port, &redis);
    let denied = http_get(http_port, NAME, "/").unwrap();
    assert_eq!(
        denied.status, 403,
        "`deny all` guards everything but challenges"
    );
    let monitor = redis.monitor();

    let issued = certbot_issue(&pebble, redis.port, NAME)
        .unwrap_or_else(|e| panic!("{e}\n{}", nginx.logs()));

    let tokens = tokens_set_by_hook(&monitor);
    assert_eq!(
        tokens.len(),
        1,
        "one HTTP-01 challenge, set by the auth hook: {tokens:?}"
    );
    let path = format!("{CHALLENGE_PATH}{}", tokens[0]);
    let access_log =
        std::fs::read_to_string(nginx.prefix().join("logs/acme-access.log")).unwrap_or_default();
    let fetched: Vec<&str> = access_log
        .lines()
        .filter(|l| l.contains(&path) && l.contains("Pebble"))
        .collect();
    assert!(
        !fetched.is_empty() && fetched.iter().all(|l| l.starts_with("200 ")),
        "pebble must fetch {path} from nginx and get 200 every time:\n{access_log}"
    );
    assert_issued_and_served(&issued, &pebble, &redis, &mut nginx, &dns);
}
