//! `listen ... deferred` (TCP_DEFER_ACCEPT): nginx accepts a connection
//! once its first bytes are in, and with epoll does not register the
//! socket for reads at accept. A ClientHello that arrives in two TCP
//! segments, or after a PROXY protocol header sent in a segment of its
//! own, must still be read as its bytes arrive: not only when the peek's
//! timer fires, after which a name not cached yet would get the default
//! certificate.

use std::net::SocketAddr;
use std::time::Duration;

use dyncert_testkit::*;

const HTTP: &str = r#"
http {
    access_log off;
    dyncert_redis @REDIS@;
    dyncert_fetch_timeout 3s;
    server {
        listen 127.0.0.1:@PORT@ ssl deferred;
        listen 127.0.0.1:@PPORT@ ssl proxy_protocol deferred;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        location / { return 200 "$ssl_server_name via $dyncert_source\n"; }
    }
}
"#;

#[test]
fn a_client_hello_in_two_segments_is_read_as_it_arrives_on_a_deferred_listener() {
    let pport = free_port();
    let pki = Pki::new();
    let redis = Redis::start();
    let mut nginx = Nginx::start(
        &pki,
        HTTP,
        NginxOpts::new().redis(&redis).var("PPORT", pport),
    );
    let split = pki.leaf(&["split.example.com"], 3101);
    let proxied = pki.leaf(&["proxied.example.com"], 3102);
    redis.put_leaf("split.example.com", &split);
    redis.put_leaf("proxied.example.com", &proxied);

    // 20 bytes of the ClientHello, then the rest 100 ms later.
    let r = Request::get("/")
        .sni("split.example.com")
        .split_hello(20, Duration::from_millis(100))
        .https(nginx.port)
        .unwrap();
    r.assert_served(&split, &pki);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
    assert!(
        r.tls().handshake < Duration::from_millis(1500),
        "waited {:?} for the peek's timer",
        r.tls().handshake
    );

    // A PROXY protocol v2 header, then the whole ClientHello 100 ms later.
    let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let dst: SocketAddr = format!("127.0.0.1:{pport}").parse().unwrap();
    let r = Request::get("/")
        .sni("proxied.example.com")
        .prefix(proxy_v2(src, dst))
        .split_hello(0, Duration::from_millis(100))
        .https(pport)
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
