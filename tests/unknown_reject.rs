//! `dyncert_unknown reject;` turns a name without a usable record into a
//! failed handshake (`unrecognized_name` alert) instead of the default
//! certificate; clients without SNI still get the default.

use dyncert_testkit::conf::dyncert_server;
use dyncert_testkit::*;

fn http() -> String {
    let server = dyncert_server(
        r#"
        dyncert_unknown reject;
        location / { return 200 "$ssl_server_name via $dyncert_source name=$dyncert_name\n"; }
"#,
    );
    http_block(&["    dyncert_redis @REDIS@;", &server])
}

#[test]
fn unknown_name_is_rejected_with_unrecognized_name() {
    let mut s = Stack::start(1, &http());
    let leaf = s.pki.leaf(&["known.example.com"], 2001);
    s.redis.put_leaf("known.example.com", &leaf);

    let err = Request::get("/")
        .sni("unknown.example.com")
        .handshake(s.nginx.port)
        .expect_err("handshake for an unknown name succeeded despite dyncert_unknown reject");
    assert!(is_unrecognized_name(&err), "wrong failure: {err}");
    // Again, now that the miss may be cached.
    let err = Request::get("/")
        .sni("unknown.example.com")
        .handshake(s.nginx.port)
        .expect_err("second handshake for an unknown name succeeded");
    assert!(is_unrecognized_name(&err), "wrong failure: {err}");

    // The same server still serves names it has records for.
    let r = s.get(Some("known.example.com"));
    r.assert_served(&leaf, &s.pki);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);

    // A record that exists but is unusable counts as unknown.
    let other = s.pki.leaf(&["other.example.com"], 2002);
    s.redis
        .hset_cert("broken.example.com", &leaf.chain_pem, &other.key_pem);
    let err = Request::get("/")
        .sni("broken.example.com")
        .handshake(s.nginx.port)
        .expect_err("handshake for a bad record succeeded despite dyncert_unknown reject");
    assert!(is_unrecognized_name(&err), "wrong failure: {err}");
    s.nginx.assert_healthy();
}

#[test]
fn client_without_sni_gets_default_even_with_reject() {
    let s = Stack::start(1, &http());
    let r = s.get(None);
    assert_eq!(r.status, 200);
    r.assert_default();
    assert_eq!(r.source(), "default", "body {:?}", r.body);
}
