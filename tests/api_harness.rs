//! The certificate API test server on its own, driven by a plain HTTP
//! client: a failure in the API feature tests can then be told apart from a
//! broken test server.

use dyncert_testkit::*;
use openssl::ssl::{SslConnector, SslMethod};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

/// Status, lower-cased headers and body of one HTTP/1.1 response.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn read_response(r: &mut impl BufRead) -> Response {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(n) = header("content-length") {
        body.resize(n.parse().unwrap(), 0);
        r.read_exact(&mut body).unwrap();
    } else if header("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    Response {
        status,
        headers,
        body,
    }
}

fn get(port: u16, path: &str, extra: &str) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: api\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    read_response(&mut BufReader::new(s))
}

#[test]
fn api_server_answers_per_name_and_counts_requests() {
    let pki = Pki::new();
    let api = CertApi::start();
    let leaf = pki.leaf(&["shop.example.com"], 7001);
    api.set_cert("shop.example.com", &leaf);
    api.set("broken.example.com", ApiReply::status(500));
    api.set("bad.example.com", ApiReply::json(200, "{\"crt\": "));

    let r = get(
        api.port,
        "/certs/shop.example.com",
        "Authorization: Bearer s3cret\r\n",
    );
    assert_eq!(r.status, 200);
    let body = String::from_utf8(r.body).unwrap();
    assert!(
        body.contains(&json_string(&leaf.chain_pem)),
        "crt not in {body}"
    );
    assert!(
        body.contains(&json_string(&leaf.key_pem)),
        "key not in {body}"
    );
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/json"),
        "{:?}",
        r.headers
    );

    assert_eq!(get(api.port, "/certs/unknown.example.com", "").status, 404);
    assert_eq!(get(api.port, "/certs/broken.example.com", "").status, 500);
    assert_eq!(
        get(api.port, "/certs/bad.example.com", "").body,
        b"{\"crt\": "
    );
    // Percent-encoded names are decoded.
    assert_eq!(get(api.port, "/certs/%2A.example.com", "").status, 404);

    assert_eq!(api.requests_for("shop.example.com"), 1);
    assert_eq!(api.requests_for("*.example.com"), 1);
    assert_eq!(api.total_requests(), 5);
    let first = &api.requests()[0];
    assert_eq!(first.method, "GET");
    assert_eq!(first.path, "/certs/shop.example.com");
    assert_eq!(first.header("Authorization"), Some("Bearer s3cret"));
    assert_eq!(api.in_flight(), 0);
}

#[test]
fn api_server_keeps_connections_alive() {
    let api = CertApi::start();
    let s = TcpStream::connect(("127.0.0.1", api.port)).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for i in 0..3 {
        write!(
            w,
            "GET /certs/n{i}.example.com HTTP/1.1\r\nHost: api\r\n\r\n"
        )
        .unwrap();
        assert_eq!(read_response(&mut r).status, 404);
    }
    assert_eq!(api.total_requests(), 3);
}

#[test]
fn api_server_measures_requests_in_flight() {
    let api = CertApi::start();
    api.set_fallback(ApiReply::not_found().after(Duration::from_millis(300)));
    let port = api.port;
    let start = Instant::now();
    let threads: Vec<_> = (0..5)
        .map(|i| thread::spawn(move || get(port, &format!("/certs/slow{i}.example.com"), "")))
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().status, 404);
    }
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(api.max_in_flight(), 5);
    assert_eq!(api.in_flight(), 0);
}

#[test]
fn api_server_streams_huge_bodies() {
    let api = CertApi::start();
    api.set("big.example.com", ApiReply::huge(3 << 20, true));
    api.set("sized.example.com", ApiReply::huge(3 << 20, false));
    for name in ["big.example.com", "sized.example.com"] {
        let r = get(api.port, &format!("/certs/{name}"), "");
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 3 << 20, "{name}");
        assert!(r.body.starts_with(b"{\"crt\": \"AAAA"));
        assert!(r.body.ends_with(b"\"key\": \"x\"}"));
    }
}

#[test]
fn api_server_stops_and_starts_on_the_same_port() {
    let mut api = CertApi::start();
    // A request hanging in the API when it stops is cut off too.
    api.set_fallback(ApiReply::not_found().after(Duration::from_secs(30)));
    let port = api.port;
    let hanging = thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        write!(
            s,
            "GET /certs/hang.example.com HTTP/1.1\r\nHost: api\r\n\r\n"
        )
        .unwrap();
        let mut buf = Vec::new();
        let start = Instant::now();
        let _ = s.read_to_end(&mut buf);
        start.elapsed()
    });
    assert!(api.wait_requests_for("hang.example.com", 1, Duration::from_secs(5)));
    api.stop();
    assert!(hanging.join().unwrap() < Duration::from_secs(3));
    assert!(
        TcpStream::connect(("127.0.0.1", api.port)).is_err(),
        "a stopped API must refuse connections"
    );
    api.start_server();
    api.set_fallback(ApiReply::not_found());
    assert_eq!(get(api.port, "/certs/back.example.com", "").status, 404);
    assert_eq!(api.total_requests(), 2);
}

#[test]
fn https_api_server_is_trusted_through_its_ca_file() {
    let pki = Pki::new();
    let api = CertApi::start_tls(&pki);
    assert!(api.url_template().starts_with("https://127.0.0.1:"));
    let leaf = pki.leaf(&["tls.example.com"], 7002);
    api.set_cert("tls.example.com", &leaf);

    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(api.ca_file()).unwrap();
    let connector = b.build();
    let tcp = TcpStream::connect(("127.0.0.1", api.port)).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // Verified against the IP address SAN, as the module connecting to
    // https://127.0.0.1:PORT must.
    let mut tls = connector.connect("127.0.0.1", tcp).unwrap();
    write!(
        tls,
        "GET /certs/tls.example.com HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let r = read_response(&mut BufReader::new(tls));
    assert_eq!(r.status, 200);
    assert_eq!(api.requests_for("tls.example.com"), 1);

    // Without the CA the certificate is not trusted.
    let untrusted = SslConnector::builder(SslMethod::tls_client())
        .unwrap()
        .build();
    let tcp = TcpStream::connect(("127.0.0.1", api.port)).unwrap();
    assert!(untrusted.connect("127.0.0.1", tcp).is_err());
}
