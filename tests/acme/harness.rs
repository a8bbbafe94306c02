//! ACME issuance harness: Let's Encrypt's test CA (`pebble`) on loopback, a
//! stub DNS server that points every name at 127.0.0.1 for pebble's
//! validation, the ACME client `certbot` whose hooks move the HTTP-01 key
//! authorization and then the certificate through Redis
//! (tests/tools/acme-redis-hook.sh), and a stand-in for nginx that answers
//! challenges from Redis with the contract of `dyncert_acme_challenge`.
//!
//! Wiring of one issuance for NAME:
//!
//! ```text
//! certbot ──ACME/HTTPS──> pebble (127.0.0.1:P, TLS cert from the test kit's PKI)
//!    │ auth hook: SET dyncert:acme:<token> <key authorization>
//!    ▼                      │ DNS A? NAME ──> DnsStub: 127.0.0.1
//!  Redis <── GET ── nginx / ChallengeStandin on 127.0.0.1:httpPort
//!    ▲                      <── GET /.well-known/acme-challenge/<token>
//!    │ deploy hook: HSET dyncert:cert:NAME crt <fullchain> key <privkey>
//! ```
//!
//! Why certbot: the ACME client must write the challenge to Redis *before*
//! it asks the CA to validate. certbot's `--manual-auth-hook` runs to
//! completion first. Debian's lego (4.9.1) is built without its memcached
//! HTTP-01 provider (the flag is accepted and ignored, validation 404s),
//! and `--http.webroot` has no hook, so a watcher copying files into Redis
//! would race pebble, which validates the moment it is asked
//! (`PEBBLE_VA_NOSLEEP=1`). A Rust client crate would be a new
//! dev-dependency, and certbot is the client operators already run.
//!
//! Everything binds 127.0.0.1 on free ports and is killed on Drop. Only
//! the ACME tests need any of this (tests/acme/main.rs, and
//! cli/tests/acme_issue.rs, which includes this file by path for pebble
//! and the DNS stub), so it stays beside them rather than in the test kit.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509StoreContext, X509};

use dyncert_testkit::{
    die_with_parent, free_port, poll, redis_command, tail, write_file, Exchange, LeafOpts, Pki,
    Reply, Request, TempDir, IO_TIMEOUT, STARTUP_DEADLINE,
};

/// Where a CA fetches an HTTP-01 answer (RFC 8555 section 8.3).
pub const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";
/// Redis key prefix of challenge answers (the `dyncert_acme_challenge`
/// default, and the hook's `DYNCERT_ACME_PREFIX` default).
pub const ACME_PREFIX: &str = "dyncert:acme:";
/// How long one certbot run may take; a run is about 3 s here.
pub const ISSUANCE_DEADLINE: Duration = Duration::from_secs(60);

/// The certbot hook script, an absolute path.
pub fn hook_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/acme-redis-hook.sh")
}

/// Whether `token` is an ACME token: base64url, bounded.
pub fn is_token(token: &str) -> bool {
    (1..=128).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn require_binary(bin: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{bin}` not found on PATH: run scripts/acme-deps.sh (Debian packages pebble, certbot)"
    );
}

// ---------------------------------------------------------------------------
// DNS
// ---------------------------------------------------------------------------

/// A DNS server on 127.0.0.1 (UDP) that answers every `A` question with
/// 127.0.0.1 and everything else with an empty NOERROR, for pebble's
/// `-dnsserver`: the validation of `http://NAME:httpPort/...` then reaches
/// the local server whatever NAME is, without touching /etc/hosts. pebble
/// asks AAAA first and dials the first address, so AAAA must stay empty.
pub struct DnsStub {
    pub addr: SocketAddr,
    questions: Arc<Mutex<Vec<(String, u16)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// DNS record type A.
pub const DNS_A: u16 = 1;
/// DNS record type AAAA.
pub const DNS_AAAA: u16 = 28;

impl DnsStub {
    pub fn start() -> DnsStub {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind DNS stub");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let questions = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopping) = (Arc::clone(&questions), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stopping.load(Ordering::Relaxed) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some((answer, name, qtype)) = dns_answer(&buf[..n]) {
                    seen.lock().unwrap().push((name, qtype));
                    let _ = socket.send_to(&answer, peer);
                }
            }
        });
        DnsStub {
            addr,
            questions,
            stop,
            thread: Some(thread),
        }
    }

    /// Every question answered so far: (lower-case name without the final
    /// dot, type).
    pub fn questions(&self) -> Vec<(String, u16)> {
        self.questions.lock().unwrap().clone()
    }

    /// Whether an `A` question for `name` was answered.
    pub fn resolved(&self, name: &str) -> bool {
        self.questions()
            .iter()
            .any(|(n, t)| n == name && *t == DNS_A)
    }
}

impl Drop for DnsStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The answer to one DNS query (RFC 1035 section 4), with the question's
/// name and type; `None` for anything that is not a single plain question.
pub fn dns_answer(query: &[u8]) -> Option<(Vec<u8>, String, u16)> {
    if query.len() < 12 || query[2] & 0x80 != 0 || query[4..6] != [0, 1] {
        return None;
    }
    let mut labels = Vec::new();
    let mut i = 12;
    loop {
        let len = *query.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        // A question's name is never compressed (no 0xC0 pointers).
        if len > 63 {
            return None;
        }
        let label = query.get(i..i + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*query.get(i)?, *query.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*query.get(i + 2)?, *query.get(i + 3)?]);
    let question_end = i + 4;
    let answer_a = qtype == DNS_A && qclass == 1;

    let mut out = Vec::with_capacity(question_end + 16);
    // Header: the query's id; QR, AA, RD copied, RA, opcode QUERY, rcode
    // NOERROR; one question, one answer for A, nothing else.
    out.extend_from_slice(&query[0..2]);
    out.extend_from_slice(&[0x84 | (query[2] & 0x01), 0x80]);
    out.extend_from_slice(&[0, 1, 0, u8::from(answer_a), 0, 0, 0, 0]);
    out.extend_from_slice(&query[12..question_end]);
    if answer_a {
        // Name: pointer to the question's name at offset 12; TTL 0.
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 127, 0, 0, 1]);
    }
    Some((out, labels.join("."), qtype))
}

// ---------------------------------------------------------------------------
// pebble
// ---------------------------------------------------------------------------

/// A running `pebble`, killed on Drop.
///
/// Config (`pebble.json`): `listenAddress` 127.0.0.1:`port` (ACME
/// directory at `/dir`), `managementListenAddress` 127.0.0.1:
/// `management_port` (issuing root at `/roots/0`), `httpPort` the port where
/// HTTP-01 answers are fetched, `tlsPort` a free port nothing listens on
/// (certbot is told to answer HTTP-01 only).
/// Flags: `-dnsserver` the stub, `-strict=false` (its README's advice for
/// test rigs). Environment: `PEBBLE_VA_NOSLEEP=1` (validate at once),
/// `PEBBLE_WFE_NONCEREJECT=0` (no artificial badNonce errors),
/// `PEBBLE_AUTHZREUSE=0` (every order gets a fresh challenge).
pub struct Pebble {
    pub port: u16,
    pub management_port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on 127.0.0.1:`http_port` (whatever
    /// the name, through `dns`), and waits until its directory answers.
    pub fn start(http_port: u16, dns: &DnsStub) -> Pebble {
        Pebble::start_with(http_port, dns.addr, None)
    }

    /// The same with any DNS server (`pebble-challtestsrv` for DNS-01), and
    /// with `eab` = (key id, base64url MAC key) external account binding
    /// required of new accounts.
    pub fn start_with(http_port: u16, dns: SocketAddr, eab: Option<(&str, &str)>) -> Pebble {
        require_binary("pebble");
        let dir = TempDir::new("pebble");
        // pebble's own HTTPS listeners (ACME API and management): a
        // certificate for 127.0.0.1 and localhost from the kit's PKI, whose
        // root is the trust anchor clients are given (`REQUESTS_CA_BUNDLE`
        // for certbot). This is not the CA that issues certificates: pebble
        // makes a fresh root and intermediate at every start
        // (`Pebble::issuer_root_pem`).
        let pki = Pki::new();
        let listener = pki.leaf_with(
            &["localhost"],
            1,
            LeafOpts {
                ips: &["127.0.0.1"],
                ..LeafOpts::default()
            },
        );
        let cert = dir.path().join("listener.crt");
        let key = dir.path().join("listener.key");
        write_file(&cert, &listener.chain_pem);
        write_file(&key, &listener.key_pem);
        write_file(&dir.path().join("ca.pem"), &pki.root.cert_pem);
        let port = free_port();
        let management_port = free_port();
        let config = format!(
            r#"{{
  "pebble": {{
    "listenAddress": "127.0.0.1:{port}",
    "managementListenAddress": "127.0.0.1:{management_port}",
    "certificate": "{cert}",
    "privateKey": "{key}",
    "httpPort": {http_port},
    "tlsPort": {tls_port},
    "ocspResponderURL": "",
    "externalAccountBindingRequired": {required},
    "externalAccountMACKeys": {{{keys}}}
  }}
}}
"#,
            cert = cert.display(),
            key = key.display(),
            tls_port = free_port(),
            required = eab.is_some(),
            keys = eab
                .map(|(kid, mac)| format!("\"{kid}\": \"{mac}\""))
                .unwrap_or_default(),
        );
        let config_path = dir.path().join("pebble.json");
        write_file(&config_path, config);

        let log = fs::File::create(dir.path().join("pebble.log")).unwrap();
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(dns.to_string())
            .arg("-strict=false")
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("spawn pebble");
        let mut pebble = Pebble {
            port,
            management_port,
            dir,
            child: Some(child),
        };
        pebble.wait_ready();
        pebble
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("pebble exited: {status}\n{}", self.log());
            }
            if self.log().contains("ACME directory available")
                && self.https_get(self.port, "/dir").is_ok()
            {
                return;
            }
            if start.elapsed() > STARTUP_DEADLINE {
                panic!(
                    "pebble not ready after {STARTUP_DEADLINE:?}\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The ACME directory URL clients are given.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The trust anchor of pebble's HTTPS listeners (a PEM file).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// pebble's stdout/stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// The root of the chains pebble issues (generated at start, served by
    /// the management interface).
    pub fn issuer_root_pem(&self) -> String {
        let (status, body) = self
            .https_get(self.management_port, "/roots/0")
            .unwrap_or_else(|e| panic!("GET /roots/0: {e}\n{}", tail(&self.log(), 20)));
        assert_eq!(status, 200, "GET /roots/0: {body}");
        body
    }

    /// One HTTPS GET to a pebble listener; returns status and body.
    pub fn https_get(&self, port: u16, path: &str) -> Result<(u16, String), String> {
        let r = Request::get(path)
            .host(&format!("127.0.0.1:{port}"))
            .https(port)?;
        Ok((r.status, r.body))
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!("---- pebble log ----\n{}", tail(&self.log(), 60));
        }
    }
}

// ---------------------------------------------------------------------------
// certbot
// ---------------------------------------------------------------------------

/// What certbot left in its `live/NAME/` directory after an issuance.
#[derive(Debug, Clone)]
pub struct CertbotIssued {
    /// `fullchain.pem`: leaf first, then pebble's intermediate.
    pub fullchain_pem: String,
    pub privkey_pem: String,
}

/// Issues a certificate for `name` from `pebble` with certbot:
///
/// ```text
/// certbot certonly --non-interactive --agree-tos --register-unsafely-without-email
///   --server https://127.0.0.1:P/dir --config-dir D/config --work-dir D/work
///   --logs-dir D/logs --manual --preferred-challenges http
///   --manual-auth-hook '…/acme-redis-hook.sh auth'
///   --manual-cleanup-hook '…/acme-redis-hook.sh cleanup'
///   --deploy-hook '…/acme-redis-hook.sh deploy' --no-autorenew -d NAME
/// ```
///
/// with `REQUESTS_CA_BUNDLE` = pebble's listener certificate and
/// `DYNCERT_REDIS_PORT` = `redis_port` for the hooks. The key type is
/// certbot's default (ECDSA P-256). On failure the error carries certbot's
/// output and the tails of its log and pebble's.
pub fn certbot_issue(
    pebble: &Pebble,
    redis_port: u16,
    name: &str,
) -> Result<CertbotIssued, String> {
    require_binary("certbot");
    require_binary("redis-cli");
    let dir = TempDir::new("certbot");
    let hook = |what: &str| format!("bash '{}' {what}", hook_script().display());
    let output_path = dir.path().join("certbot.out");
    let out = fs::File::create(&output_path).unwrap();
    let mut cmd = Command::new("certbot");
    cmd.args(["certonly", "--non-interactive", "--agree-tos"])
        .arg("--register-unsafely-without-email")
        .args(["--server", &pebble.directory_url()])
        .arg("--config-dir")
        .arg(dir.path().join("config"))
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .arg("--logs-dir")
        .arg(dir.path().join("logs"))
        .args(["--manual", "--preferred-challenges", "http"])
        .args(["--manual-auth-hook", &hook("auth")])
        .args(["--manual-cleanup-hook", &hook("cleanup")])
        .args(["--deploy-hook", &hook("deploy")])
        .arg("--no-autorenew")
        .args(["-d", name])
        .env("REQUESTS_CA_BUNDLE", pebble.ca_file())
        .env("DYNCERT_REDIS_HOST", "127.0.0.1")
        .env("DYNCERT_REDIS_PORT", redis_port.to_string())
        .env_remove("DYNCERT_ACME_PREFIX")
        .env_remove("DYNCERT_CERT_PREFIX")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| format!("spawn certbot: {e}"))?;
    let status = poll(ISSUANCE_DEADLINE, Duration::from_millis(50), || {
        child.try_wait().ok().flatten()
    });
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failure(
                &dir,
                pebble,
                &format!("certbot still running after {ISSUANCE_DEADLINE:?}"),
            ));
        }
    };
    if !status.success() {
        return Err(failure(&dir, pebble, &format!("certbot {status}")));
    }
    let live = dir.path().join("config/live").join(name);
    let read = |f: &str| fs::read_to_string(live.join(f)).map_err(|e| format!("{f}: {e}"));
    match (read("fullchain.pem"), read("privkey.pem")) {
        (Ok(fullchain_pem), Ok(privkey_pem)) => Ok(CertbotIssued {
            fullchain_pem,
            privkey_pem,
        }),
        (Err(e), _) | (_, Err(e)) => Err(failure(&dir, pebble, &e)),
    }
}

fn failure(dir: &TempDir, pebble: &Pebble, what: &str) -> String {
    let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
    format!(
        "{what}\n---- certbot output ----\n{}\n---- certbot log ----\n{}\n---- pebble ----\n{}",
        read(&dir.path().join("certbot.out")),
        tail(&read(&dir.path().join("logs/letsencrypt.log")), 40),
        tail(&pebble.log(), 40)
    )
}

/// `GET path` over plain HTTP/1.1 to 127.0.0.1:`port` with `Host: host`,
/// as a CA's validation request looks.
pub fn http_get(port: u16, host: &str, path: &str) -> Result<Exchange, String> {
    Request::get(path)
        .host(host)
        .header("User-Agent", "dyncert-test")
        .header("Accept", "*/*")
        .http(port)
}

// ---------------------------------------------------------------------------
// Stand-in challenge responder
// ---------------------------------------------------------------------------

/// One request the stand-in answered.
#[derive(Debug, Clone)]
pub struct ChallengeRequest {
    pub path: String,
    pub host: String,
    pub user_agent: String,
    pub status: u16,
}

/// A plain-HTTP server with the contract of `dyncert_acme_challenge on;`:
/// `GET /.well-known/acme-challenge/<token>` answers the value of Redis key
/// `dyncert:acme:<token>` as text/plain, 404 when absent; a token that is
/// not base64url gets 400 without a Redis lookup; anything else 404. It
/// proves the harness until the module answers challenges itself.
pub struct ChallengeStandin {
    pub port: u16,
    seen: Arc<Mutex<Vec<ChallengeRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ChallengeStandin {
    /// Binds a free port (no race: the port is taken before pebble learns
    /// it) and answers from the Redis on `redis_port`.
    pub fn start(redis_port: u16) -> ChallengeStandin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind stand-in");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, stopping) = (Arc::clone(&seen), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            let mut workers = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let sink = Arc::clone(&sink);
                        // pebble validates from three goroutines at once.
                        workers.push(thread::spawn(move || {
                            if let Some(r) = serve_challenge(stream, redis_port) {
                                sink.lock().unwrap().push(r);
                            }
                        }));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        ChallengeStandin {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> Vec<ChallengeRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for ChallengeStandin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_challenge(stream: TcpStream, redis_port: u16) -> Option<ChallengeRequest> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let (mut host, mut user_agent) = (String::new(), String::new());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "host" => host = v.trim().to_string(),
                "user-agent" => user_agent = v.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("").to_string();
    let (status, body) = match path.strip_prefix(CHALLENGE_PATH) {
        Some(token) if method == "GET" && is_token(token) => {
            match redis_command(redis_port, &["GET", &format!("{ACME_PREFIX}{token}")]) {
                Ok(Reply::Bulk(Some(v))) => (200, String::from_utf8_lossy(&v).into_owned()),
                Ok(Reply::Bulk(None)) => (404, "no such challenge\n".to_string()),
                other => (502, format!("redis: {other:?}\n")),
            }
        }
        Some(_) => (400, "bad token\n".to_string()),
        None => (404, "not a challenge\n".to_string()),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Bad Gateway",
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    Some(ChallengeRequest {
        path,
        host,
        user_agent,
        status,
    })
}

// ---------------------------------------------------------------------------
// Checks on what was issued
// ---------------------------------------------------------------------------

/// Parses `crt_pem` (leaf first) and checks that it is what pebble issues
/// for `name`: the chain verifies up to `issuer_root_pem` (pebble's root of
/// this run), the leaf's only SAN is `name`, it is valid now, and
/// `key_pem` is its key. Returns the chain.
pub fn assert_pebble_issued(
    crt_pem: &str,
    key_pem: &str,
    name: &str,
    issuer_root_pem: &str,
) -> Vec<X509> {
    let chain = X509::stack_from_pem(crt_pem.as_bytes()).expect("crt is PEM certificates");
    assert!(
        chain.len() >= 2,
        "expected leaf + pebble intermediate, got {} certificate(s)",
        chain.len()
    );
    let root = X509::from_pem(issuer_root_pem.as_bytes()).expect("pebble root PEM");
    assert_chain_verifies(&chain, &root);

    let leaf = &chain[0];
    let sans: Vec<String> = leaf
        .subject_alt_names()
        .map(|s| {
            s.iter()
                .map(|g| {
                    g.dnsname()
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("{g:?}"))
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(sans, [name], "SANs of the issued leaf");
    let issuer_cn = common_name(leaf.issuer_name());
    assert!(
        issuer_cn.starts_with("Pebble Intermediate CA"),
        "leaf issued by {issuer_cn:?}, not pebble's intermediate"
    );
    let now = Asn1Time::days_from_now(0).unwrap();
    assert!(
        leaf.not_before() <= now && now < leaf.not_after(),
        "leaf not valid now"
    );

    let key = PKey::private_key_from_pem(key_pem.as_bytes()).expect("key is a PEM private key");
    assert!(
        leaf.public_key().unwrap().public_eq(&key),
        "key does not match the issued leaf"
    );
    chain
}

/// Asserts that `chain` (leaf first) verifies up to `root` alone.
pub fn assert_chain_verifies(chain: &[X509], root: &X509) {
    let mut store = X509StoreBuilder::new().unwrap();
    store.add_cert(root.clone()).unwrap();
    let store = store.build();
    let mut untrusted = Stack::new().unwrap();
    for c in &chain[1..] {
        untrusted.push(c.clone()).unwrap();
    }
    let mut ctx = X509StoreContext::new().unwrap();
    let verdict = ctx
        .init(&store, &chain[0], &untrusted, |c| {
            Ok(c.verify_cert()
                .map(|ok| (ok, c.error().to_string()))
                .unwrap_or((false, "verify_cert failed".to_string())))
        })
        .unwrap();
    assert!(
        verdict.0,
        "chain does not verify to pebble's root {:?}: {}",
        common_name(root.subject_name()),
        verdict.1
    );
}

pub fn common_name(name: &openssl::x509::X509NameRef) -> String {
    name.entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_default()
}

/// Tokens whose answers are in Redis right now (`KEYS dyncert:acme:*`).
pub fn pending_challenges(redis_port: u16) -> Vec<String> {
    match redis_command(redis_port, &["KEYS", &format!("{ACME_PREFIX}*")]) {
        Ok(Reply::Array(Some(items))) => items
            .into_iter()
            .filter_map(|r| match r {
                Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
                _ => None,
            })
            .collect(),
        other => panic!("KEYS {ACME_PREFIX}*: {other:?}"),
    }
}
