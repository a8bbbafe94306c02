//! NGINX and the module run on one OpenSSL: the one they were built
//! against. A module linked to another libcrypto than its NGINX would hand
//! its objects to functions of a different library; the OpenSSL 3.5 build
//! flavour (scripts/test-openssl35.sh) would be meaningless if any part of
//! it still ran on the system's OpenSSL.
//!
//! With DYNCERT_EXPECT_OPENSSL set (the flavour script sets "3.5."), the
//! running NGINX must also report that version.

use dyncert_testkit::*;
use std::collections::BTreeSet;
use std::fs;

fn http() -> String {
    http_block(&["    dyncert_redis @REDIS@;", &source_server("")])
}

/// The files mapped into `pid` whose name starts with `lib` (e.g.
/// "libcrypto.so").
fn mapped(pid: u32, lib: &str) -> BTreeSet<String> {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.rsplit('/').next().is_some_and(|f| f.starts_with(lib)))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_worker_maps_exactly_one_libssl_and_one_libcrypto_and_serves_with_them() {
    let mut s = Stack::start(1, &http());
    let leaf = s.pki.leaf(&["one.example.com"], 7101);
    s.redis.put_leaf("one.example.com", &leaf);
    let r = Request::get("/")
        .sni("one.example.com")
        .https(s.nginx.port)
        .unwrap();
    r.assert_served(&leaf, &s.pki);

    let worker = s.nginx.worker_pid();
    let crypto = mapped(worker, "libcrypto.so");
    let ssl = mapped(worker, "libssl.so");
    assert_eq!(crypto.len(), 1, "libcrypto mapped: {crypto:?}");
    assert_eq!(ssl.len(), 1, "libssl mapped: {ssl:?}");
    // Both from the same installation.
    let dir = |set: &BTreeSet<String>| {
        let p = set.iter().next().unwrap();
        p[..p.rfind('/').unwrap()].to_owned()
    };
    assert_eq!(dir(&crypto), dir(&ssl));

    let server = nginx_and_openssl();
    assert!(
        !server.contains("this program links"),
        "NGINX and the tests link different OpenSSLs: {server}"
    );
    if let Ok(expected) = std::env::var("DYNCERT_EXPECT_OPENSSL") {
        assert!(
            server.contains(&format!("OpenSSL {expected}")),
            "expected OpenSSL {expected}, NGINX reports: {server}"
        );
        assert!(
            openssl::version::version().starts_with(&format!("OpenSSL {expected}")),
            "this test links {}",
            openssl::version::version()
        );
    }
    s.nginx.stop_and_assert_healthy();
}
