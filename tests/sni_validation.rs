//! The SNI is untrusted: names that are not valid host names never become
//! part of a Redis key (no I/O at all), get the default certificate or a
//! failed handshake, and never take a worker down.

use dyncert_testkit::*;

fn http() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;",
        &source_server(" name=$dyncert_name"),
    ])
}

/// Names OpenSSL's client is willing to send.
fn invalid_names() -> Vec<String> {
    vec![
        "bad_name.example.com".into(),
        "a..b.example.com".into(),
        ".leading-dot.example.com".into(),
        "127.0.0.1".into(),
        // Not *.example.com: the valid names below legitimately look up
        // their wildcard parent *.example.com.
        "*.wild.test".into(),
        "space name.example.com".into(),
        "slash/name.example.com".into(),
        // A label longer than 63 bytes.
        format!("{}.example.com", "l".repeat(64)),
        // 255 bytes in all: longer than a host name may be.
        format!("{}.example.com", vec!["m".repeat(60); 4].join("."))
            .chars()
            .take(255)
            .collect(),
    ]
}

/// Names only a hand-built ClientHello can carry.
fn invalid_raw_names() -> Vec<Vec<u8>> {
    vec![
        format!("{}.example.com", vec!["r".repeat(60); 5].join(".")).into_bytes(), // 316 bytes
        "\u{fc}ber.example.com".as_bytes().to_vec(),
        b"nul\0byte.example.com".to_vec(),
        Vec::new(),
    ]
}

#[test]
fn invalid_sni_never_reaches_redis() {
    let mut s = Stack::start(1, &http());
    let monitor = s.redis.monitor();

    for name in invalid_names() {
        // Host: localhost, or nginx answers 400 to the request (not the
        // handshake) for names it would not take as a Host header.
        match Request::get("/")
            .sni(&name)
            .host("localhost")
            .https(s.nginx.port)
        {
            Ok(r) => {
                r.assert_default();
                assert_eq!(r.source(), "default", "SNI {name:?}: body {:?}", r.body);
                assert_eq!(r.name(), "", "SNI {name:?}: body {:?}", r.body);
            }
            // nginx itself refuses some of these names; that is fine too.
            Err(e) => assert!(e.contains("handshake failed"), "SNI {name:?}: {e}"),
        }
    }
    for name in invalid_raw_names() {
        let answer = send_raw_client_hello(s.nginx.port, &name);
        assert!(
            answer.is_ok(),
            "raw SNI {:?}: no answer: {answer:?}",
            String::from_utf8_lossy(&name)
        );
    }

    // Valid names, through both clients, must reach Redis: otherwise the
    // check below could not fail.
    let r = s.get(Some("valid-unknown.example.com"));
    r.assert_default();
    let answer = send_raw_client_hello(s.nginx.port, b"valid-raw.example.com").unwrap();
    assert_eq!(
        answer.first(),
        Some(&0x16),
        "raw hello answer {answer:02x?}"
    );

    monitor.sync();
    let looked_up: Vec<String> = monitor
        .module_commands()
        .iter()
        .flat_map(|o| o.cert_names())
        .collect();
    assert!(
        looked_up.iter().any(|n| n == "valid-unknown.example.com")
            && looked_up.iter().any(|n| n == "valid-raw.example.com"),
        "valid names were not looked up, so MONITOR proves nothing:\n{}",
        monitor.dump()
    );
    let unexpected: Vec<&String> = looked_up
        .iter()
        // The valid names' wildcard parent is looked up too when they have
        // no exact record.
        .filter(|n| {
            *n != "valid-unknown.example.com"
                && *n != "valid-raw.example.com"
                && *n != "*.example.com"
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "invalid SNI reached Redis as {unexpected:?}:\n{}",
        monitor.dump()
    );
    let leaked: Vec<String> = monitor
        .module_commands()
        .iter()
        .filter(|o| {
            [
                "bad_name",
                "a..b",
                "leading-dot",
                "127.0.0.1",
                "*.wild",
                "space name",
                "slash/",
                "lllllll",
                "mmmmmmm",
                "rrrrrrr",
                "ber.example",
                "byte.example",
            ]
            .iter()
            // Arguments only: the raw line also carries the client address.
            .any(|frag| o.args.iter().any(|a| a.contains(frag)))
        })
        .map(|o| o.raw.clone())
        .collect();
    assert!(
        leaked.is_empty(),
        "invalid SNI in Redis commands: {leaked:?}"
    );

    // Still alive and serving records.
    let leaf = s.pki.leaf(&["after.example.com"], 4001);
    s.redis.put_leaf("after.example.com", &leaf);
    s.get(Some("after.example.com"))
        .assert_served(&leaf, &s.pki);
    s.nginx.assert_healthy();
}
