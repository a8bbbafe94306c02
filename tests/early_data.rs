//! Requests in TLS early data (0-RTT) and IP allow lists. Over QUIC, 0-RTT
//! packets are processed before the client has proved it owns its source
//! address, so a client holding a session ticket could send a request from
//! a forged address inside an allow list; over TCP, early data can be
//! replayed. So an allow list (`dyncert_allow`, or a tenant's `allow`)
//! never admits a request in early data by its address: an address on the
//! list gets 425 Too Early and sends the request again after the
//! handshake, an address off the list is denied as ever, and where no
//! list applies early data is served.
//!
//! Early data is sent over TCP here: the QUIC layer this nginx uses with
//! OpenSSL (its compatibility layer) does not offer 0-RTT, and the verdict
//! is the same function for both transports.

use std::io::{Read, Write};
use std::net::TcpStream;

use openssl::ssl::{Ssl, SslContext, SslMethod, SslStream, SslVerifyMode, SslVersion};

use dyncert_testkit::*;

/// The servers of the `http {}` block, after Redis and [`METRICS_SERVER`]
/// ([`metrics_http`]).
const HTTP: &str = r#"
    server {
        listen 127.0.0.1:@PORT@ ssl default_server;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        ssl_early_data on;
        dyncert on;
        dyncert_tenant_policy on;
        add_header X-Early "[$ssl_early_data]" always;
        root html;
        location / { }
        location /listed/ { dyncert_allow 127.0.0.1; }
        location /public/ { dyncert_allow all; }
    }
"#;

const OPEN: &str = "open.example.com";
const FENCED: &str = "fenced.example.com";
const ELSEWHERE: &str = "elsewhere.example.com";

fn request(name: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n")
}

/// `path` requested in early data on a resumed session for `name`, the
/// session made by a full handshake just before: (status, response). The
/// client holds back the end of its handshake until the server has had
/// time to answer the early data (as a server may, before the handshake
/// completes), so the request is answered while still in early data.
fn early(port: u16, name: &str, path: &str) -> (u16, String) {
    let ctx = client_context();
    let connect = || {
        let t = TcpStream::connect(("127.0.0.1", port)).unwrap();
        t.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut ssl = Ssl::new(&ctx).unwrap();
        ssl.set_hostname(name).unwrap();
        (ssl, t)
    };
    let (ssl, t) = connect();
    let mut s = SslStream::new(ssl, t).unwrap();
    s.connect().unwrap();
    s.write_all(request(name, "/").as_bytes()).unwrap();
    let mut first = Vec::new();
    let _ = s.read_to_end(&mut first);
    let session = s.ssl().session().expect("a session").to_owned();
    assert!(session.max_early_data() > 0, "the ticket allows early data");

    let (mut ssl, t) = connect();
    // SAFETY: the session comes from a connection of the same context.
    unsafe { ssl.set_session(&session).unwrap() };
    let mut s = SslStream::new(ssl, t).unwrap();
    let req = request(name, path);
    let sent = s
        .write_early_data(req.as_bytes())
        .unwrap_or_else(|e| panic!("early data: {e} {:?}", openssl::error::ErrorStack::get()));
    assert_eq!(sent, req.len());
    std::thread::sleep(std::time::Duration::from_millis(300));
    s.connect().unwrap();
    assert!(s.ssl().session_reused(), "resumed");
    response(&mut s)
}

/// A TLS 1.3 client context (the server's certificate is not what these
/// tests look at).
fn client_context() -> SslContext {
    let mut b = SslContext::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
    b.build()
}

/// The response read to the end: (status, text).
fn response(s: &mut SslStream<TcpStream>) -> (u16, String) {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|l| l.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The same request after a full handshake.
fn late(port: u16, name: &str, path: &str) -> (u16, String) {
    let mut ssl = Ssl::new(&client_context()).unwrap();
    ssl.set_hostname(name).unwrap();
    let mut s = SslStream::new(ssl, TcpStream::connect(("127.0.0.1", port)).unwrap()).unwrap();
    s.connect().unwrap();
    s.write_all(request(name, path).as_bytes()).unwrap();
    response(&mut s)
}

#[test]
fn allow_lists_answer_early_data_with_425_and_the_same_request_after_the_handshake_passes() {
    let (s, mport) = Stack::with_metrics(HTTP, NginxOpts::new());
    let Stack {
        pki,
        redis,
        mut nginx,
    } = s;
    nginx.write_index_pages(&["", "listed/", "public/"]);
    redis.put_leaf(OPEN, &pki.leaf(&[OPEN], 7101));
    redis.put_leaf_with(
        FENCED,
        &pki.leaf(&[FENCED], 7102),
        &[("allow", "127.0.0.1")],
    );
    redis.put_leaf_with(
        ELSEWHERE,
        &pki.leaf(&[ELSEWHERE], 7103),
        &[("allow", "192.0.2.0/24")],
    );
    let port = nginx.port;
    let before = scrape_metrics(mport);

    // Control: where no list applies, early data is accepted and served.
    let (status, text) = early(port, OPEN, "/");
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("X-Early: [1]"),
        "served in early data: {text}"
    );

    // dyncert_allow admits 127.0.0.1, but not in early data.
    let (status, text) = early(port, OPEN, "/listed/");
    assert_eq!(status, 425, "{text}");
    let (status, text) = late(port, OPEN, "/listed/");
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("X-Early: []"), "{text}");

    // A list that admits everyone (`all`) admits early data too.
    let (status, text) = early(port, OPEN, "/public/");
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("X-Early: [1]"), "{text}");

    // The tenant's own allow list, the same way.
    let (status, text) = early(port, FENCED, "/");
    assert_eq!(status, 425, "{text}");
    let (status, text) = late(port, FENCED, "/");
    assert_eq!(status, 200, "{text}");

    // An address off the list is denied, early or not.
    let (status, text) = early(port, ELSEWHERE, "/");
    assert_eq!(status, 403, "{text}");
    let (status, _) = late(port, ELSEWHERE, "/");
    assert_eq!(status, 403);

    let after = scrape_metrics(mport);
    let delta = |k: &str| after.get(k) - before.get(k);
    assert_eq!(delta("dyncert_early_data_refusals_total"), 2.0);
    // ELSEWHERE: the full request that made the session, the early one,
    // the late one.
    assert_eq!(delta("dyncert_tenant_denials_total"), 3.0);
    assert_eq!(delta("dyncert_allowlist_denials_total"), 0.0);
    let log = nginx.error_log();
    assert!(
        log.contains("refused with 425 by dyncert_allow")
            && log.contains("refused with 425 by the tenant's allow list"),
        "{log}"
    );
    nginx.assert_healthy();
}
