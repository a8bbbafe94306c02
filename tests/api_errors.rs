//! A name whose lookup fails (here the certificate API answering 500) and
//! that has no cached certificate backs off: handshakes for it get the
//! default certificate without asking the sources again, for 1 s after the
//! first failure, doubling with each failure in a row. A failing API is not
//! asked twice per connection, and a recovered one is picked up within the
//! backoff.

use dyncert_testkit::*;
use std::time::{Duration, Instant};

/// The `http {}` directives, around [`METRICS_SERVER`] and [`SOURCE_SERVER`].
const API: &str = r#"
    dyncert_redis @REDIS@;
    dyncert_api @API@ writeback=1h;
    dyncert_api_timeout 1s;
    dyncert_fetch_timeout 3s;
    dyncert_cache max=1000 valid=1m stale=1h negative=10s;
"#;

#[test]
fn a_failing_name_is_asked_once_per_backoff_not_twice_per_handshake() {
    let mport = free_port();
    let s = ApiStack::start_with(
        &http_block(&[API, METRICS_SERVER, SOURCE_SERVER]),
        NginxOpts::new().workers(1).var("MPORT", mport),
    );
    let name = "down.example.com";
    s.api.set(name, ApiReply::status(500));
    let get = || s.get(name);

    // The first connection waits for the lookup and gets the default; its
    // certificate callback does not ask again.
    get().assert_default();
    let failed = Instant::now();
    // Within the first backoff (1 s less a jitter of up to 1/8), more
    // connections: the default, and no request.
    let mut within = 0;
    while failed.elapsed() < Duration::from_millis(500) {
        get().assert_default();
        within += 1;
    }
    assert!(within >= 3, "only {within} handshakes in 500 ms");
    assert_eq!(
        s.api.requests_for(name),
        1,
        "{} handshakes made more than one request\n{}",
        within + 1,
        s.api.dump()
    );

    // Once it ends, the name is asked again, once: the second failure
    // backs off for 2 s.
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(failed.elapsed()));
    get().assert_default();
    let failed_again = Instant::now();
    s.assert_asked(name, 2);

    // The API recovers: the certificate is served when the backoff ends,
    // and the handshakes meanwhile ask nothing.
    let leaf = s.pki.leaf(&[name], 8201);
    s.api.set_cert(name, &leaf);
    let served = poll(Duration::from_secs(5), Duration::from_millis(100), || {
        Some(get()).filter(|r| r.tls().leaf_serial == leaf.serial_hex)
    });
    let after = failed_again.elapsed();
    let r = served.unwrap_or_else(|| panic!("not served within 5 s\n{}", s.api.dump()));
    r.assert_served(&leaf, &s.pki);
    assert!(
        after < Duration::from_millis(2600),
        "served {after:?} after the second failure, expected its 2 s backoff"
    );
    s.assert_asked(name, 3);

    let backoffs = scrape_metrics(mport).get("dyncert_fetch_backoff_total");
    assert!(
        backoffs >= within as f64 + 1.0,
        "dyncert_fetch_backoff_total {backoffs}, expected at least {}",
        within + 1
    );
}
