//! A ClientHello cut into tiny TLS records, each in a TCP segment of its
//! own (legal, if odd: OpenSSL reassembles it). The peek waits for the
//! parser's bound on the bytes still missing instead of parsing the whole
//! buffer again at every segment; a bound that overshot would leave the
//! connection waiting for its timer, and a name not cached yet would get the
//! default certificate. So each name must get its own certificate, fetched
//! from Redis while the connection waited, well before the timer.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use dyncert_testkit::*;

const HTTP: &str = r#"
http {
    access_log off;
    dyncert_redis @REDIS@;
    dyncert_fetch_timeout 3s;
    server {
        listen 127.0.0.1:@PORT@ ssl;
        listen 127.0.0.1:@PPORT@ ssl proxy_protocol;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        location / { return 200 "$ssl_server_name via $dyncert_source\n"; }
    }
}
"#;

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
    let pport = free_port();
    let pki = Pki::new();
    let redis = Redis::start();
    let mut nginx = Nginx::start(
        &pki,
        HTTP,
        NginxOpts::new().redis(&redis).var("PPORT", pport),
    );
    let tiny = pki.leaf(&["tiny.example.com"], 3201);
    let proxied = pki.leaf(&["proxied.example.com"], 3202);
    redis.put_leaf("tiny.example.com", &tiny);
    redis.put_leaf("proxied.example.com", &proxied);

    // Every byte of the handshake message in a record of its own.
    let relay = dribbling_relay(nginx.port, Vec::new(), 1);
    let r = Request::get("/")
        .sni("tiny.example.com")
        .https(relay)
        .unwrap();
    r.assert_served(&tiny, &pki);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
    assert!(
        r.tls().handshake < Duration::from_millis(1500),
        "waited {:?} for the peek's timer",
        r.tls().handshake
    );

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
    r.assert_served(&proxied, &pki);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
    assert!(
        r.tls().handshake < Duration::from_millis(1500),
        "waited {:?} for the peek's timer",
        r.tls().handshake
    );
    nginx.assert_healthy();
}
