//! A ClientHello that arrives in pieces must be read as its bytes arrive,
//! not only when the peek's timer fires (after which a name not cached yet
//! would get the default certificate).
//!
//! `listen ... deferred` (TCP_DEFER_ACCEPT): nginx accepts a connection
//! once its first bytes are in, and with epoll does not register the
//! socket for reads at accept. A ClientHello that arrives in two TCP
//! segments, or after a PROXY protocol header sent in a segment of its
//! own, must still be read.
//!
//! A ClientHello cut into tiny TLS records, each in a TCP segment of its
//! own (legal, if odd: OpenSSL reassembles it). The peek waits for the
//! parser's bound on the bytes still missing instead of parsing the whole
//! buffer again at every segment; a bound that overshot would leave the
//! connection waiting for its timer.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use dyncert_testkit::*;

/// `@DEFERRED@`: ` deferred` or nothing.
const HTTP: &str = r#"
http {
    access_log off;
    dyncert_redis @REDIS@;
    dyncert_fetch_timeout 3s;
    server {
        listen 127.0.0.1:@PORT@ ssl@DEFERRED@;
        listen 127.0.0.1:@PPORT@ ssl proxy_protocol@DEFERRED@;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        location / { return 200 "$ssl_server_name via $dyncert_source\n"; }
    }
}
"#;

/// nginx with both listeners (`deferred` or not), Redis holding `names`'
/// leaves (serials from `serial`), and the proxy_protocol port.
fn start(deferred: bool, names: [&str; 2], serial: u64) -> (Pki, Redis, Nginx, u16, [Leaf; 2]) {
    let pport = free_port();
    let pki = Pki::new();
    let redis = Redis::start();
    let http = HTTP.replace("@DEFERRED@", if deferred { " deferred" } else { "" });
    let nginx = Nginx::start(
        &pki,
        &http,
        NginxOpts::new().redis(&redis).var("PPORT", pport),
    );
    let leaves = [0, 1].map(|i| pki.leaf(&[names[i]], serial + i as u64));
    for (name, leaf) in names.iter().zip(&leaves) {
        redis.put_leaf(name, leaf);
    }
    (pki, redis, nginx, pport, leaves)
}

/// Served `leaf` from Redis, well before the peek's timer (3 s).
fn assert_served_in_time(r: &Exchange, leaf: &Leaf, pki: &Pki) {
    r.assert_served(leaf, pki);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
    assert!(
        r.tls().handshake < Duration::from_millis(1500),
        "waited {:?} for the peek's timer",
        r.tls().handshake
    );
}

#[test]
fn a_client_hello_in_two_segments_is_read_as_it_arrives_on_a_deferred_listener() {
    let (pki, _redis, mut nginx, pport, [split, proxied]) =
        start(true, ["split.example.com", "proxied.example.com"], 3101);

    // 20 bytes of the ClientHello, then the rest 100 ms later.
    let r = Request::get("/")
        .sni("split.example.com")
        .split_hello(20, Duration::from_millis(100))
        .https(nginx.port)
        .unwrap();
    assert_served_in_time(&r, &split, &pki);

    // A PROXY protocol v2 header, then the whole ClientHello 100 ms later.
    let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let dst: SocketAddr = format!("127.0.0.1:{pport}").parse().unwrap();
    let r = Request::get("/")
        .sni("proxied.example.com")
        .prefix(proxy_v2(src, dst))
        .split_hello(0, Duration::from_millis(100))
        .https(pport)
        .unwrap();
    assert_served_in_time(&r, &proxied, &pki);
    nginx.assert_healthy();
}

/// A one-connection relay to `upstream` that sends `prefix` a byte per
/// segment, then the client's first TLS record cut into records of
/// `fragment` payload bytes, one segment each, then relays both ways.
fn dribbling_relay(upstream: u16, prefix: Vec<u8>, fragment: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut client, _) = listener.accept().unwrap();
        let mut server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
        server.set_nodelay(true).unwrap();
        for (i, byte) in prefix.iter().enumerate() {
            server.write_all(&[*byte]).unwrap();
            if i % 8 == 7 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let mut header = [0u8; 5];
        client.read_exact(&mut header).unwrap();
        assert_eq!(header[0], 22, "the client's first record is a handshake");
        let mut payload = vec![0u8; usize::from(u16::from_be_bytes([header[3], header[4]]))];
        client.read_exact(&mut payload).unwrap();
        for (i, chunk) in payload.chunks(fragment).enumerate() {
            let mut record = header[..3].to_vec();
            record.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
            record.extend_from_slice(chunk);
            server.write_all(&record).unwrap();
            // Pauses, so that the records arrive over many read events.
            if i % 8 == 7 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let mut to_server = server.try_clone().unwrap();
        let mut from_client = client.try_clone().unwrap();
        let upstream_copy = std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_client, &mut to_server);
            let _ = to_server.shutdown(Shutdown::Write);
        });
        let _ = std::io::copy(&mut server, &mut client);
        let _ = client.shutdown(Shutdown::Write);
        let _ = upstream_copy.join();
    });
    port
}

#[test]
fn a_client_hello_in_one_byte_records_gets_its_own_certificate_without_waiting_for_the_timer() {
    let (pki, _redis, mut nginx, pport, [tiny, proxied]) =
        start(false, ["tiny.example.com", "proxied.example.com"], 3201);

    // Every byte of the handshake message in a record of its own.
    let relay = dribbling_relay(nginx.port, Vec::new(), 1);
    let r = Request::get("/")
        .sni("tiny.example.com")
        .https(relay)
        .unwrap();
    assert_served_in_time(&r, &tiny, &pki);

    // A PROXY v1 header a byte at a time, then records of 3 bytes.
    let relay = dribbling_relay(
        pport,
        b"PROXY TCP4 192.0.2.1 127.0.0.1 40000 443\r\n".to_vec(),
        3,
    );
    let r = Request::get("/")
        .sni("proxied.example.com")
        .https(relay)
        .unwrap();
    assert_served_in_time(&r, &proxied, &pki);
    nginx.assert_healthy();
}
