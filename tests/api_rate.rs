//! `dyncert_api ... rate=N` caps the certificate-API requests a worker
//! makes per second (burst N). A random-SNI flood of bare ClientHellos
//! then costs the API a few requests, not one per name: the names past the
//! cap get the default certificate, are counted in
//! `dyncert_api_rate_limited_total` and logged (rate-limited), and back
//! off like any failed lookup; a name the API has is served once its
//! backoff ends and the bucket has refilled.

use dyncert_testkit::*;
use std::time::{Duration, Instant};

/// The `http {}` directives, around [`METRICS_SERVER`] and [`SOURCE_SERVER`].
const API: &str = r#"
    dyncert_redis @REDIS@;
    dyncert_api @API@ writeback=1h rate=1;
    dyncert_api_timeout 1s;
    dyncert_fetch_timeout 3s;
    dyncert_cache max=1000 valid=1m stale=1h negative=30s;
"#;

/// Sends a bare ClientHello for each name, `threads` at a time; each
/// answer must be a handshake record (the default certificate), not a
/// closed connection.
fn hellos(port: u16, names: &[String], threads: usize) {
    std::thread::scope(|s| {
        for chunk in names.chunks(names.len().div_ceil(threads)) {
            s.spawn(move || {
                for name in chunk {
                    let answer = send_raw_client_hello(port, name.as_bytes())
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(answer.first(), Some(&0x16), "{name}: {answer:?}");
                }
            });
        }
    });
}

#[test]
fn a_random_sni_flood_asks_the_api_at_the_capped_rate_and_known_names_are_served_after() {
    let mport = free_port();
    let mut s = ApiStack::start_with(
        &http_block(&[API, METRICS_SERVER, SOURCE_SERVER]),
        NginxOpts::new().workers(1).var("MPORT", mport),
    );
    let known = "known.example.com";
    let leaf = s.pki.leaf(&[known], 8301);
    s.api.set_cert(known, &leaf);
    let unknown: Vec<String> = (0..59).map(|i| format!("flood-{i}.example.net")).collect();

    // 20 names at once drain the burst of 1 (a low rate leaves a second
    // before the next token, so a slow machine still meets an empty bucket).
    let start = Instant::now();
    hellos(s.nginx.port, &unknown[..20], 20);
    // A name the API has, right behind them: not asked, the default.
    s.get(known).assert_default();
    let refused_at = Instant::now();
    s.assert_asked(known, 0);
    // The rest of the 60 names over most of the second.
    for name in &unknown[20..] {
        hellos(s.nginx.port, std::slice::from_ref(name), 1);
        std::thread::sleep(Duration::from_millis(15));
    }
    let elapsed = start.elapsed();
    let flood_requests = s.api.total_requests() - s.api.requests_for(known);
    // The burst, one more a second, and one for the rounding of time.
    let bound = 1 + elapsed.as_secs_f64().ceil() as usize + 1;
    assert!(
        (1..=bound).contains(&flood_requests),
        "60 names in {elapsed:?} made {flood_requests} API requests, expected 1 to {bound}\n{}",
        s.api.dump()
    );
    assert!(
        elapsed < Duration::from_millis(1600),
        "flood took {elapsed:?}"
    );

    // Every name the API was not asked about is counted (the known one
    // too, at least once: its retry may already have come).
    let limited = scrape_metrics(mport).get("dyncert_api_rate_limited_total");
    assert!(
        limited >= (60 - flood_requests) as f64 && limited <= (62 - flood_requests) as f64,
        "dyncert_api_rate_limited_total {limited}, {flood_requests} of 60 names asked"
    );
    let line = s
        .nginx
        .wait_for_log_line(Duration::from_secs(2), |l| {
            l.contains("[warn]") && l.contains("the API's request rate cap (rate=1) was reached")
        })
        .unwrap_or_else(|| panic!("no rate-cap warning\n{}", s.nginx.logs()));
    assert!(line.contains("name: \""), "{line}");

    // The known name backed off (1 s less up to 1/8); once it ends and the
    // bucket has a token, it is asked once and served.
    let served = poll(Duration::from_secs(6), Duration::from_millis(100), || {
        Request::get("/")
            .sni(known)
            .https(s.nginx.port)
            .ok()
            .filter(|r| r.tls().leaf_serial == leaf.serial_hex)
    });
    let after = refused_at.elapsed();
    let r = served.unwrap_or_else(|| panic!("not served within 6 s\n{}", s.nginx.logs()));
    r.assert_served(&leaf, &s.pki);
    assert!(
        after >= Duration::from_millis(850),
        "served {after:?} after its refusal, within its backoff"
    );
    s.assert_asked(known, 1);
    s.nginx.assert_healthy();
}
