//! A tenant's `client_ca` decides where this worker verifies client
//! certificates, and what each verification costs: OpenSSL checks every
//! name of the client's chain against every name constraint of its CAs
//! (up to 2^20 comparisons, `NAME_CHECK_MAX`), synchronously, on the
//! worker's event loop. Before these fixes a CA with ~900 excluded subtrees
//! (61 KiB, accepted) and a client certificate with ~1,100 names made each
//! such handshake cost ~70 ms and, on a resumed session, each *request*
//! (the chain was verified again at every request); and any client could
//! bring its own name-constrained "intermediate" in a 77 KB chain against
//! any name whose record has a `client_ca` (~60 ms a handshake).
//!
//! Now: a `client_ca` with more than 64 name-constraint subtrees is refused
//! (`client_ca_constraints`); a resumed session's client certificate is
//! verified once per connection; and the client's Certificate message is
//! bounded to 16 KiB when a client certificate is asked for.
//!
//! One worker, so every handshake shares one event loop. Times are printed.

use dyncert_testkit::conf::dyncert_server;
use dyncert_testkit::fixture::{cert_builder, xname};
use dyncert_testkit::pki::ec_key;
use dyncert_testkit::*;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode, SslVersion};
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509Extension, X509NameRef, X509};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// What a test certificate is.
struct Shape<'a> {
    cn: &'a str,
    issuer: &'a X509NameRef,
    ca: bool,
    sans: &'a [String],
    /// `n` excluded dNSName subtrees (a CA's name constraints).
    excluded: usize,
}

/// A certificate of `shape` for `public`, signed by `signer` (whose name
/// need not be `shape.issuer`: a forged chain).
fn cert(shape: Shape<'_>, public: &PKey<Private>, signer: &PKey<Private>) -> X509 {
    let mut b = cert_builder(shape.cn, shape.issuer, public);
    let basic = if shape.ca {
        BasicConstraints::new().critical().ca().build().unwrap()
    } else {
        BasicConstraints::new().critical().build().unwrap()
    };
    b.append_extension(basic).unwrap();
    if shape.ca {
        b.append_extension(KeyUsage::new().critical().key_cert_sign().build().unwrap())
            .unwrap();
    }
    if !shape.sans.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for s in shape.sans {
            san.dns(s);
        }
        let ext = san.build(&b.x509v3_context(None, None)).unwrap();
        b.append_extension(ext).unwrap();
    }
    if shape.excluded > 0 {
        let x = "x".repeat(40);
        let mut nc = String::from("critical");
        for i in 0..shape.excluded {
            nc.push_str(&format!(",excluded;DNS:{x}{i:06}"));
        }
        let ctx = b.x509v3_context(None, None);
        #[allow(deprecated)]
        let ext = X509Extension::new_nid(None, Some(&ctx), Nid::NAME_CONSTRAINTS, &nc).unwrap();
        b.append_extension(ext).unwrap();
    }
    b.sign(signer, MessageDigest::sha256()).unwrap();
    b.build()
}

/// `n` client names outside the excluded subtrees that share their first
/// 40 characters (every comparison reads them).
fn client_names(n: usize) -> Vec<String> {
    let x = "x".repeat(40);
    (0..n).map(|i| format!("c{i}.{x}999999")).collect()
}

fn pem(c: &X509) -> String {
    String::from_utf8(c.to_pem().unwrap()).unwrap()
}

/// A tenant's CA with `excluded` subtrees, and its key.
fn tenant_ca(excluded: usize) -> (X509, PKey<Private>) {
    let k = ec_key();
    let name = xname("tenant nc ca");
    let ca = cert(
        Shape {
            cn: "tenant nc ca",
            issuer: &name,
            ca: true,
            sans: &[],
            excluded,
        },
        &k,
        &k,
    );
    (ca, k)
}

/// A client certificate of `ca` with `names` names, for `ck`.
fn client_cert(ca: &(X509, PKey<Private>), names: usize, ck: &PKey<Private>) -> X509 {
    cert(
        Shape {
            cn: "client",
            issuer: ca.0.subject_name(),
            ca: false,
            sans: &client_names(names),
            excluded: 0,
        },
        ck,
        &ca.1,
    )
}

fn start() -> (Stack, u16) {
    let conf = dyncert_server(
        "
        dyncert_tenant_policy on;
        root html;
        location / { }
",
    );
    let (s, mport) = Stack::with_metrics(&conf, NginxOpts::new().workers(1));
    s.nginx.write_index_pages(&[""]);
    (s, mport)
}

fn rejected(mport: u16, reason: &str) -> f64 {
    scrape_metrics(mport).get(&format!(
        "dyncert_records_rejected_total{{reason=\"{reason}\"}}"
    ))
}

fn connector(chain: &[X509], k: &PKey<Private>, tls12: bool) -> SslConnector {
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    if tls12 {
        b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
    }
    if let Some((leaf, rest)) = chain.split_first() {
        b.set_certificate(leaf).unwrap();
        for c in rest {
            b.add_extra_chain_cert(c.clone()).unwrap();
        }
        b.set_private_key(k).unwrap();
    }
    b.build()
}

/// Sends `n` pipelined keep-alive requests (the last one closes) and reads
/// every answer: the time taken and the status lines.
fn requests(st: &mut SslStream<TcpStream>, sni: &str, n: usize) -> (Duration, Vec<String>) {
    let mut req = String::new();
    for i in 0..n {
        let close = if i + 1 == n {
            "Connection: close\r\n"
        } else {
            ""
        };
        req.push_str(&format!("GET / HTTP/1.1\r\nHost: {sni}\r\n{close}\r\n"));
    }
    let t = Instant::now();
    let _ = st.write_all(req.as_bytes());
    let mut buf = Vec::new();
    let _ = st.read_to_end(&mut buf);
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&buf);
    let statuses = text
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .map(str::to_owned)
        .collect();
    (took, statuses)
}

/// One handshake presenting `chain` and one request: its duration (the
/// server's CPU dominates) and the status line (None: the handshake or
/// the request failed). TLS 1.3 reads the client's certificate after the
/// client's Finished: the request makes the client wait for it.
fn handshake(
    port: u16,
    sni: &str,
    chain: &[X509],
    k: &PKey<Private>,
) -> (Duration, Option<String>) {
    let conn = connector(chain, k, false);
    let start = Instant::now();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let status = match conn.configure().unwrap().connect(sni, tcp) {
        Ok(mut st) => requests(&mut st, sni, 1).1.pop(),
        Err(_) => None,
    };
    (start.elapsed(), status)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The handshake+request median of `n` tries, and the statuses seen.
fn timed(
    port: u16,
    sni: &str,
    chain: &[X509],
    k: &PKey<Private>,
    n: usize,
) -> (Duration, Vec<Option<String>>) {
    let runs: Vec<_> = (0..n).map(|_| handshake(port, sni, chain, k)).collect();
    (
        median(runs.iter().map(|r| r.0).collect()),
        runs.into_iter().map(|r| r.1).collect(),
    )
}

/// Within `ratio` times `base`, with 2 ms for a busy test machine.
fn within(t: Duration, base: Duration, ratio: u32) -> bool {
    t <= base * ratio + Duration::from_millis(2)
}

#[test]
fn client_ca_with_hundreds_of_name_constraints_is_refused_and_costs_no_handshake_more() {
    let (s, mport) = start();
    let port = s.nginx.port;
    let ca = tenant_ca(900);
    let ca_pem = pem(&ca.0);
    assert!(ca_pem.len() <= 64 * 1024, "{} bytes", ca_pem.len());
    let leaf = s.pki.leaf(&["nc.example"], 7002);
    s.redis
        .put_leaf_with("nc.example", &leaf, &[("client_ca", &ca_pem)]);
    let ck = ec_key();
    // 2^20 / 901 names: the whole comparison allowance of OpenSSL.
    let heavy = client_cert(&ca, 1_048_576 / 901 - 2, &ck);
    let light = client_cert(&ca, 1, &ck);
    eprintln!(
        "client_ca: 900 subtrees, {} bytes of PEM; heavy client certificate {} bytes",
        ca_pem.len(),
        heavy.to_der().unwrap().len()
    );
    handshake(port, "nc.example", std::slice::from_ref(&light), &ck);
    let (light_t, _) = timed(port, "nc.example", &[light], &ck, 10);
    let (heavy_t, statuses) = timed(port, "nc.example", &[heavy], &ck, 10);
    eprintln!(
        "nc.example handshake+request: light client certificate median {light_t:?}, \
         heavy {heavy_t:?}; statuses {:?}",
        statuses[0]
    );
    assert!(
        within(heavy_t, light_t, 3),
        "a tenant's name constraints cost the worker {heavy_t:?} a handshake (light {light_t:?})"
    );
    assert!(rejected(mport, "client_ca_constraints") >= 1.0);
    // Refused: the name has no record, so the tenant policy answers 421.
    assert!(
        statuses
            .iter()
            .all(|s| s.as_deref() == Some("HTTP/1.1 421 Misdirected Request")),
        "{statuses:?}"
    );
    assert!(s.nginx.error_log().contains("client_ca"));
}

/// The bound itself: a CA with 64 subtrees is accepted, and a client
/// certificate with as many names as the 16 KiB Certificate message allows
/// is verified at the handshake, and then once per connection: a resumed
/// session's requests cost what they cost on the full handshake's
/// connection.
#[test]
fn resumed_session_verifies_its_client_certificate_once_per_connection() {
    let (s, mport) = start();
    let port = s.nginx.port;
    let ca = tenant_ca(64);
    let leaf = s.pki.leaf(&["nc.example"], 7002);
    s.redis
        .put_leaf_with("nc.example", &leaf, &[("client_ca", &pem(&ca.0))]);
    let ck = ec_key();
    let names = 250;
    let heavy = client_cert(&ca, names, &ck);
    eprintln!(
        "client_ca: 64 subtrees; client certificate: {names} names, {} bytes",
        heavy.to_der().unwrap().len()
    );
    let conn = connector(&[heavy], &ck, true);
    let n = 40;
    let mut full = Vec::new();
    let mut resumed = Vec::new();
    for _ in 0..3 {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut st = conn
            .configure()
            .unwrap()
            .connect("nc.example", tcp)
            .unwrap();
        let (t, statuses) = requests(&mut st, "nc.example", n);
        assert_eq!(statuses.len(), n);
        assert!(
            statuses.iter().all(|s| s == "HTTP/1.1 200 OK"),
            "{statuses:?}"
        );
        full.push(t / n as u32);
        let session = st.ssl().session().unwrap().to_owned();
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // The client's Finished and the requests go out back to back:
        // without this, Nagle holds the requests for the server's delayed
        // ACK (40 ms).
        tcp.set_nodelay(true).unwrap();
        let mut cfg = conn.configure().unwrap();
        // SAFETY: the session comes from a connection of this connector.
        unsafe { cfg.set_session(&session) }.unwrap();
        let mut st = cfg.connect("nc.example", tcp).unwrap();
        assert!(st.ssl().session_reused());
        let (t, statuses) = requests(&mut st, "nc.example", n);
        assert_eq!(statuses.len(), n);
        assert!(
            statuses.iter().all(|s| s == "HTTP/1.1 200 OK"),
            "{statuses:?}"
        );
        resumed.push(t / n as u32);
    }
    let (full, resumed) = (median(full), median(resumed));
    eprintln!("per request: full handshake's connection {full:?}, resumed session {resumed:?}");
    assert_eq!(rejected(mport, "client_ca_constraints"), 0.0);
    assert!(
        resumed <= full * 3 / 2 + Duration::from_micros(300),
        "a resumed session's requests cost {resumed:?} each, the full handshake's {full:?}"
    );
}

/// Anyone, against a tenant with an ordinary `client_ca`: a 77 KB chain
/// with a forged name-constrained "intermediate" (800 subtrees) over a
/// 700-name leaf. The Certificate message is over the bound: the handshake
/// fails before OpenSSL parses it.
#[test]
fn forged_name_constrained_chain_fails_fast() {
    let (s, _mport) = start();
    let port = s.nginx.port;
    let ca = s.pki.client_ca("ordinary tenant ca");
    let leaf = s.pki.leaf(&["mtls.example"], 7003);
    s.redis
        .put_leaf_with("mtls.example", &leaf, &[("client_ca", &ca.cert_pem)]);
    let ek = ec_key();
    let forged = cert(
        Shape {
            cn: "evil int",
            issuer: ca.cert.subject_name(),
            ca: true,
            sans: &[],
            excluded: 800,
        },
        &ek,
        &ek,
    );
    let evil_leaf = cert(
        Shape {
            cn: "evil leaf",
            issuer: &xname("evil int"),
            ca: false,
            sans: &client_names(700),
            excluded: 0,
        },
        &ek,
        &ek,
    );
    let chain = [evil_leaf, forged];
    let bytes: usize = chain.iter().map(|c| c.to_der().unwrap().len()).sum();
    let genuine = s.pki.client_cert(&ca, "ok client");
    let (ok, statuses) = timed(
        port,
        "mtls.example",
        std::slice::from_ref(&genuine.cert),
        &genuine.key,
        10,
    );
    assert!(
        statuses
            .iter()
            .all(|s| s.as_deref() == Some("HTTP/1.1 200 OK")),
        "{statuses:?}"
    );
    let (forged_t, statuses) = timed(port, "mtls.example", &chain, &ek, 10);
    eprintln!(
        "mtls.example: genuine client certificate median {ok:?}; forged {bytes}-byte chain median \
         {forged_t:?}, statuses {:?}",
        statuses[0]
    );
    assert!(
        within(forged_t, ok, 3),
        "a forged chain cost the worker {forged_t:?} a handshake (genuine {ok:?})"
    );
    assert!(statuses.iter().all(Option::is_none), "{statuses:?}");
    // nginx's own info line, and none of the alert lines a parsed forged
    // chain left (`ignoring stale global SSL error`).
    let log = s.nginx.error_log();
    assert!(!log.contains("[alert]"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("[info]") && l.contains("excessive message size")),
        "{log}"
    );
}
