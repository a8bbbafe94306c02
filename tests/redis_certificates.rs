//! Certificates stored in Redis are served per SNI, with their chain, from
//! a per-worker cache after the first fetch; anything unusable falls back to
//! the server's static certificate.

use dyncert_testkit::*;
use std::time::Duration;

fn http() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;",
        &source_server(" name=$dyncert_name"),
    ])
}

#[test]
fn certificate_in_redis_is_served_with_its_chain() {
    let s = Stack::start(1, &http());
    let leaf = s
        .pki
        .leaf(&["shop.example.com", "www.shop.example.com"], 1001);
    s.redis.put_leaf("shop.example.com", &leaf);

    let r = s.get(Some("shop.example.com"));
    assert_eq!(r.status, 200);
    r.assert_served(&leaf, &s.pki);
    assert_eq!(
        r.tls().leaf_sans,
        ["shop.example.com", "www.shop.example.com"]
    );
    assert_eq!(r.name(), "shop.example.com", "body {:?}", r.body);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
}

#[test]
fn second_handshake_is_served_from_cache() {
    // One worker, so the second connection meets the first one's cache.
    let s = Stack::start(1, &http());
    let leaf = s.pki.leaf(&["cached.example.com"], 1002);
    s.redis.put_leaf("cached.example.com", &leaf);
    let monitor = s.redis.monitor();

    let first = s.get(Some("cached.example.com"));
    first.assert_served(&leaf, &s.pki);
    assert_eq!(first.source(), "redis", "body {:?}", first.body);

    for _ in 0..3 {
        let again = s.get(Some("cached.example.com"));
        again.assert_served(&leaf, &s.pki);
        assert_eq!(again.source(), "cache", "body {:?}", again.body);
    }
    monitor.sync();
    assert_eq!(
        monitor.fetches_of("cached.example.com"),
        1,
        "a cached name must not be fetched again:\n{}",
        monitor.dump()
    );
}

#[test]
fn unknown_name_gets_default_certificate() {
    let s = Stack::start(1, &http());
    let r = s.get(Some("unknown.example.com"));
    assert_eq!(r.status, 200);
    r.assert_default();
    assert_eq!(r.source(), "default", "body {:?}", r.body);
    assert_eq!(r.name(), "unknown.example.com", "body {:?}", r.body);
    // Also when asked again (now possibly from the negative cache).
    s.get(Some("unknown.example.com")).assert_default();
}

#[test]
fn client_without_sni_gets_default_certificate() {
    let s = Stack::start(1, &http());
    // A record under the name the client connects to by IP must not leak in.
    let leaf = s.pki.leaf(&["localhost"], 1003);
    s.redis.put_leaf("localhost", &leaf);
    let r = s.get(None);
    assert_eq!(r.status, 200);
    r.assert_default();
    assert_eq!(r.source(), "default", "body {:?}", r.body);
    assert_eq!(r.name(), "", "body {:?}", r.body);
}

#[test]
fn record_with_mismatched_key_gets_default_and_is_logged() {
    let s = Stack::start(1, &http());
    let leaf = s.pki.leaf(&["mismatch.example.com"], 1004);
    let other = s.pki.leaf(&["other.example.com"], 1005);
    s.redis
        .hset_cert("mismatch.example.com", &leaf.chain_pem, &other.key_pem);

    let r = s.get(Some("mismatch.example.com"));
    r.assert_default();
    assert_eq!(r.source(), "default", "body {:?}", r.body);

    let line = s.nginx.wait_for_log_line(Duration::from_secs(3), |l| {
        l.contains("dyncert:") && l.contains(r#"name: "mismatch.example.com""#)
    });
    let line = line.unwrap_or_else(|| panic!("no log line for the bad record\n{}", s.nginx.logs()));
    assert!(line.contains("[warn]"), "logged at the wrong level: {line}");
    assert!(line.contains("does not match"), "no reason in: {line}");
    assert!(
        !line.contains("PRIVATE KEY") && !line.contains("BEGIN"),
        "PEM material in the log: {line}"
    );
}

#[test]
fn record_with_garbage_pem_gets_default_and_is_logged() {
    let s = Stack::start(1, &http());
    s.redis.hset_cert(
        "garbage.example.com",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
        "garbage",
    );
    let r = s.get(Some("garbage.example.com"));
    r.assert_default();
    assert_eq!(r.source(), "default", "body {:?}", r.body);
    let line = s.nginx.wait_for_log_line(Duration::from_secs(3), |l| {
        l.contains("dyncert:") && l.contains(r#"name: "garbage.example.com""#)
    });
    let line = line.unwrap_or_else(|| panic!("no log line for the bad record\n{}", s.nginx.logs()));
    assert!(line.contains("[warn]"), "logged at the wrong level: {line}");
}

#[test]
fn new_record_is_picked_up_without_reload() {
    let s = Stack::start(1, &http());
    // The worker is up and talking to Redis before the record exists.
    let warmup = s.pki.leaf(&["warm.example.com"], 1006);
    s.redis.put_leaf("warm.example.com", &warmup);
    s.get(Some("warm.example.com"))
        .assert_served(&warmup, &s.pki);

    let leaf = s.pki.leaf(&["fresh.example.com"], 1007);
    s.redis.put_leaf("fresh.example.com", &leaf);
    let r = s.get(Some("fresh.example.com"));
    r.assert_served(&leaf, &s.pki);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
}

#[test]
fn name_is_normalised_before_lookup() {
    let s = Stack::start(1, &http());
    let leaf = s.pki.leaf(&["shop.example.com"], 1008);
    s.redis.put_leaf("shop.example.com", &leaf);
    let monitor = s.redis.monitor();

    let r = s.get(Some("Shop.Example.COM"));
    r.assert_served(&leaf, &s.pki);
    assert_eq!(r.name(), "shop.example.com", "body {:?}", r.body);

    let r = s.get(Some("shop.example.com."));
    r.assert_served(&leaf, &s.pki);
    assert_eq!(r.name(), "shop.example.com", "body {:?}", r.body);

    let r = s.get(Some("SHOP.example.com."));
    r.assert_served(&leaf, &s.pki);

    monitor.sync();
    assert_eq!(
        monitor.fetched_names(),
        ["shop.example.com"],
        "all spellings share one normalised key, fetched once:\n{}",
        monitor.dump()
    );
}

#[test]
fn expired_certificate_record_gets_default() {
    let s = Stack::start(1, &http());
    let leaf = s.pki.leaf_with(
        &["expired.example.com"],
        1009,
        LeafOpts {
            expired: true,
            ..LeafOpts::default()
        },
    );
    s.redis.put_leaf("expired.example.com", &leaf);
    let r = s.get(Some("expired.example.com"));
    r.assert_default();
    assert_eq!(r.source(), "default", "body {:?}", r.body);
    let line = s.nginx.wait_for_log_line(Duration::from_secs(3), |l| {
        l.contains("dyncert:") && l.contains(r#"name: "expired.example.com""#)
    });
    assert!(
        line.is_some(),
        "expired record not logged\n{}",
        s.nginx.logs()
    );
}

#[test]
fn custom_prefix_is_used_for_lookups() {
    let s = Stack::start(
        1,
        &http().replace(
            "dyncert_redis @REDIS@;",
            "dyncert_redis @REDIS@; dyncert_redis_prefix tenant1:certs:;",
        ),
    );
    let leaf = s.pki.leaf(&["prefixed.example.com"], 1010);
    s.redis.hset_cert_key(
        "tenant1:certs:prefixed.example.com",
        &leaf.chain_pem,
        &leaf.key_pem,
    );
    // A record under the default prefix must be ignored.
    let stray = s.pki.leaf(&["stray.example.com"], 1011);
    s.redis.put_leaf("stray.example.com", &stray);

    let r = s.get(Some("prefixed.example.com"));
    r.assert_served(&leaf, &s.pki);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
    s.get(Some("stray.example.com")).assert_default();
}

#[test]
fn server_without_dyncert_is_left_alone() {
    let pki = Pki::new();
    let redis = Redis::start();
    let (on_port, off_port) = (free_port(), free_port());
    let nginx = Nginx::start(
        &pki,
        r#"
http {
    access_log off;
    dyncert_redis @REDIS@;
    server {
        listen 127.0.0.1:@ON@ ssl;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        location / { return 200 "$ssl_server_name via $dyncert_source name=$dyncert_name\n"; }
    }
    server {
        listen 127.0.0.1:@OFF@ ssl;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        location / { return 200 "$ssl_server_name via $dyncert_source name=$dyncert_name\n"; }
    }
}
"#,
        NginxOpts::new()
            .redis(&redis)
            .port(on_port)
            .var("ON", on_port)
            .var("OFF", off_port),
    );
    let leaf = pki.leaf(&["shop.example.com"], 1012);
    redis.put_leaf("shop.example.com", &leaf);
    let monitor = redis.monitor();

    let r = Request::get("/")
        .sni("shop.example.com")
        .https(off_port)
        .unwrap();
    r.assert_default();
    assert_eq!(r.source(), "", "body {:?}", r.body);
    monitor.sync();
    assert_eq!(
        monitor.commands_about("shop.example.com"),
        0,
        "a server without dyncert looked the name up:\n{}",
        monitor.dump()
    );

    // The dyncert server next to it does serve the record (the check above
    // could fail).
    let r = Request::get("/")
        .sni("shop.example.com")
        .https(on_port)
        .unwrap();
    r.assert_served(&leaf, &pki);
    drop(nginx);
}

/// A record's `crt_der` (the chain's certificates one after the other)
/// and `key_der` (SEC1) for `leaf`.
fn der_fields(pki: &Pki, leaf: &Leaf) -> (Vec<u8>, Vec<u8>) {
    let chain = [
        leaf.issued.cert.to_der().unwrap(),
        pki.intermediate.cert.to_der().unwrap(),
    ]
    .concat();
    let key = leaf
        .issued
        .key
        .ec_key()
        .unwrap()
        .private_key_to_der()
        .unwrap();
    (chain, key)
}

#[test]
fn der_record_is_served_like_pem_and_wins_over_it() {
    let s = Stack::start(1, &http());
    let leaf = s.pki.leaf(&["der.example.com"], 1101);
    let stale = s.pki.leaf(&["der.example.com"], 1102);
    let (chain, key) = der_fields(&s.pki, &leaf);
    let mut conn = s.redis.connect();
    let hset: [&[u8]; 10] = [
        b"HSET",
        b"dyncert:cert:der.example.com",
        b"crt_der",
        &chain,
        b"key_der",
        &key,
        // A PEM form of another certificate beside it: the DER one wins.
        b"crt",
        stale.chain_pem.as_bytes(),
        b"key",
        stale.key_pem.as_bytes(),
    ];
    conn.cmd(&hset).unwrap();
    let r = s.get(Some("der.example.com"));
    r.assert_served(&leaf, &s.pki);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
}

/// The README's renewal recipe for a record that carries the DER form
/// (every record `dyncert put`, `import` or an API write-back stored):
/// the PEM fields written with the DER ones emptied, in one `HSET`, then
/// published. The DER form would otherwise win over the new PEM one.
#[test]
fn a_pem_renewal_that_empties_the_der_fields_is_served() {
    let s = Stack::start(1, &http());
    let name = "renewed.example.com";
    let old = s.pki.leaf(&[name], 1103);
    let new = s.pki.leaf(&[name], 1104);
    let (chain, key) = der_fields(&s.pki, &old);
    let record = format!("dyncert:cert:{name}");
    let mut conn = s.redis.connect();
    let both: [&[u8]; 10] = [
        b"HSET",
        record.as_bytes(),
        b"crt_der",
        &chain,
        b"key_der",
        &key,
        b"crt",
        old.chain_pem.as_bytes(),
        b"key",
        old.key_pem.as_bytes(),
    ];
    conn.cmd(&both).unwrap();
    s.get(Some(name)).assert_served(&old, &s.pki);

    s.redis.cmd(&[
        "HSET",
        &record,
        "crt",
        &new.chain_pem,
        "key",
        &new.key_pem,
        "crt_der",
        "",
        "key_der",
        "",
    ]);
    s.redis.cmd(&["PUBLISH", "dyncert:invalidate", name]);
    let served = poll(Duration::from_secs(5), Duration::from_millis(50), || {
        let r = s.get(Some(name));
        (r.tls().leaf_serial == new.serial_hex).then_some(r)
    });
    let r = served.unwrap_or_else(|| panic!("the renewal was not served"));
    r.assert_served(&new, &s.pki);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
}
