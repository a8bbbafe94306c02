//! The certificate API behind Redis (`dyncert_api`): a Redis miss asks the
//! API, a certificate it returns is served and written back to Redis with a
//! TTL, a 404 is negative-cached (unless Redis failed: then a cached
//! certificate is kept), and every other answer (500, timeout, oversized or
//! invalid body, a certificate for another name) gets the default
//! certificate and a clear warning while nginx keeps serving.

use dyncert_testkit::*;
use openssl::pkey::PKey;
use openssl::x509::X509;
use std::time::{Duration, Instant};

/// The `http {}` directives of most tests here, around [`SOURCE_SERVER`].
const API: &str = r#"
    dyncert_redis @REDIS@;
    dyncert_api @API@ writeback=1h;
    dyncert_api_header Authorization "Bearer s3cret";
    dyncert_api_header X-Terminator edge-1;
    dyncert_api_timeout 1s;
    dyncert_fetch_timeout 3s;
    dyncert_cache max=1000 valid=1m stale=1h negative=2s;
"#;

fn http() -> String {
    http_block(&[API, SOURCE_SERVER])
}

/// Waits until Redis holds a record for `name` and returns its fields.
fn wait_record(redis: &Redis, name: &str) -> Option<(String, String)> {
    poll(Duration::from_secs(5), Duration::from_millis(20), || {
        let crt = redis.record_field(name, "crt")?;
        let key = redis.record_field(name, "key")?;
        Some((crt, key))
    })
}

/// Asserts that a written-back record is `leaf`'s chain with a key that
/// matches it (the module may re-encode the PEM, so compare parsed).
fn assert_record_is(crt: &str, key: &str, leaf: &Leaf, pki: &Pki) {
    let chain = X509::stack_from_pem(crt.as_bytes()).expect("written-back crt parses");
    assert_eq!(
        chain.first().map(|c| c.to_der().unwrap()),
        Some(leaf.issued.cert.to_der().unwrap()),
        "written-back crt does not start with the leaf"
    );
    assert!(
        chain
            .iter()
            .any(|c| c.to_der().unwrap() == pki.intermediate.cert.to_der().unwrap()),
        "written-back crt lost the intermediate"
    );
    let key = PKey::private_key_from_pem(key.as_bytes()).expect("written-back key parses");
    assert!(
        key.public_eq(&leaf.issued.cert.public_key().unwrap()),
        "written-back key does not match the leaf"
    );
}

#[test]
fn redis_miss_is_fetched_from_api_served_and_written_back_with_ttl() {
    let s = ApiStack::start(1, &http());
    let leaf = s.pki.leaf(&["shop.example.com"], 8001);
    s.api.set_cert("shop.example.com", &leaf);
    let monitor = s.redis.monitor();

    let r = s.get("shop.example.com");
    assert_eq!(r.status, 200);
    r.assert_served(&leaf, &s.pki);
    assert_eq!(r.source(), "api", "body {:?}", r.body);
    s.assert_asked("shop.example.com", 1);

    // Redis was asked first.
    monitor.sync();
    assert!(
        monitor.lookups_of("shop.example.com") >= 1,
        "the API was asked without looking in Redis first:\n{}",
        monitor.dump()
    );

    let (crt, key) = wait_record(&s.redis, "shop.example.com").unwrap_or_else(|| {
        panic!(
            "no record written back to Redis: {:?}\n{}",
            s.redis.record("shop.example.com"),
            s.nginx.logs()
        )
    });
    assert_record_is(&crt, &key, &leaf, &s.pki);
    let ttl = s.redis.ttl("shop.example.com");
    assert!(
        ttl > 3600 - 60 && ttl <= 3600,
        "written-back record has TTL {ttl}, expected writeback=1h"
    );
    // The expiry index has the name, scored by the leaf's notAfter
    // (written in the same transaction as the record).
    let not_after = openssl::asn1::Asn1Time::from_unix(0)
        .unwrap()
        .diff(leaf.issued.cert.not_after())
        .unwrap();
    let not_after = i64::from(not_after.days) * 86_400 + i64::from(not_after.secs);
    assert_eq!(
        s.redis
            .cmd(&["ZSCORE", "dyncert:expiry", "shop.example.com"]),
        Reply::Bulk(Some(not_after.to_string().into_bytes())),
        "no expiry index entry after the write-back"
    );

    // The worker now has it cached: neither source is asked again.
    let r = s.get("shop.example.com");
    r.assert_served(&leaf, &s.pki);
    assert_eq!(r.source(), "cache", "body {:?}", r.body);
    s.assert_asked("shop.example.com", 1);
}

#[test]
fn next_terminator_finds_the_api_certificate_in_redis() {
    let s = ApiStack::start(1, &http());
    let leaf = s.pki.leaf(&["fleet.example.com"], 8002);
    s.api.set_cert("fleet.example.com", &leaf);
    s.get("fleet.example.com").assert_served(&leaf, &s.pki);
    assert!(
        wait_record(&s.redis, "fleet.example.com").is_some(),
        "no write-back\n{}",
        s.nginx.logs()
    );

    // A second nginx on the same Redis and API: Redis answers, the API is
    // not asked a second time.
    let other = s.another_nginx(&http());
    let r = Request::get("/")
        .sni("fleet.example.com")
        .https(other.port)
        .unwrap();
    r.assert_served(&leaf, &s.pki);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
    s.assert_asked("fleet.example.com", 1);
}

/// The first certificate of a record's `crt` field, as DER.
fn record_leaf_der(redis: &Redis, name: &str) -> Option<Vec<u8>> {
    let crt = redis.record_field(name, "crt")?;
    let chain = X509::stack_from_pem(crt.as_bytes()).ok()?;
    chain.first().map(|c| c.to_der().unwrap())
}

/// A handshake for `name`, which Redis has no record of: its lookup asks
/// the API, which is slow (800 ms) to answer with `old`, the certificate
/// it had. `meanwhile` (an operator's change) runs while the lookup waits.
fn handshake_while_the_api_answers_late(
    s: &ApiStack,
    name: &str,
    old: &Leaf,
    meanwhile: impl FnOnce(),
) -> Exchange {
    assert!(s
        .redis
        .wait_subscribers("dyncert:invalidate", 1, Duration::from_secs(5)));
    s.api
        .set(name, ApiReply::cert(old).after(Duration::from_millis(800)));
    std::thread::scope(|scope| {
        let handshake = scope.spawn(|| s.get(name));
        assert!(
            s.api.wait_requests_for(name, 1, Duration::from_secs(5)),
            "{}",
            s.api.dump()
        );
        meanwhile();
        handshake.join().unwrap()
    })
}

#[test]
fn a_record_written_while_the_api_answers_is_not_overwritten_by_the_write_back() {
    let mut s = ApiStack::start(1, &http());
    let name = "race.example.com";
    let old = s.pki.leaf(&[name], 8031);
    let new = s.pki.leaf(&[name], 8032);
    let r = handshake_while_the_api_answers_late(&s, name, &old, || {
        // Meanwhile the operator stores the renewal and announces it.
        s.redis.put_leaf(name, &new);
        s.redis.publish("dyncert:invalidate", name);
    });
    r.assert_served(&new, &s.pki);
    // The write-back must not replace the operator's record with the
    // API's older answer (give it time to have been tried).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        record_leaf_der(&s.redis, name),
        Some(new.issued.cert.to_der().unwrap()),
        "the write-back overwrote the record written meanwhile: {:?}",
        s.redis.record(name)
    );
    assert_eq!(s.redis.ttl(name), -1, "the operator's record got a TTL");
    // A handshake after the caches are dropped still gets the renewal.
    s.redis.publish("dyncert:invalidate", name);
    let r = poll(Duration::from_secs(5), Duration::from_millis(50), || {
        let r = s.get(name);
        (r.source() == "redis").then_some(r)
    })
    .expect("fetched again after the invalidation");
    r.assert_served(&new, &s.pki);
    s.nginx.assert_healthy();
}

#[test]
fn writeback_ttl_defaults_to_24_hours() {
    let s = ApiStack::start(1, &http().replace(" writeback=1h;", ";"));
    let leaf = s.pki.leaf(&["daily.example.com"], 8003);
    s.api.set_cert("daily.example.com", &leaf);
    s.get("daily.example.com").assert_served(&leaf, &s.pki);
    assert!(
        wait_record(&s.redis, "daily.example.com").is_some(),
        "no write-back\n{}",
        s.nginx.logs()
    );
    let ttl = s.redis.ttl("daily.example.com");
    assert!(
        ttl > 86400 - 60 && ttl <= 86400,
        "written-back record has TTL {ttl}, expected the 24h default"
    );
    // The fast form is written beside the PEM: the chain's DER and the key
    // as SEC1, which the next terminator loads.
    let mut conn = s.redis.connect();
    let der = conn
        .cmd(&[
            "HMGET",
            "dyncert:cert:daily.example.com",
            "crt_der",
            "key_der",
        ])
        .unwrap();
    let Reply::Array(Some(items)) = der else {
        panic!("HMGET answered {der:?}");
    };
    let (Some(Reply::Bulk(Some(crt))), Some(Reply::Bulk(Some(key)))) =
        (items.first(), items.get(1))
    else {
        panic!("no DER form written back: {items:?}");
    };
    let first = X509::from_der(crt).expect("crt_der starts with a DER certificate");
    assert_eq!(first.to_der().unwrap(), leaf.issued.cert.to_der().unwrap());
    let sec1 = openssl::ec::EcKey::private_key_from_der(key).expect("key_der is SEC1");
    assert!(openssl::pkey::PKey::from_ec_key(sec1)
        .unwrap()
        .public_eq(&leaf.issued.key));
}

#[test]
fn record_in_redis_wins_and_the_api_is_not_asked() {
    let s = ApiStack::start(1, &http());
    let stored = s.pki.leaf(&["both.example.com"], 8004);
    let from_api = s.pki.leaf(&["both.example.com"], 8005);
    s.redis.put_leaf("both.example.com", &stored);
    s.api.set_cert("both.example.com", &from_api);
    let r = s.get("both.example.com");
    r.assert_served(&stored, &s.pki);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
    s.assert_asked("both.example.com", 0);
}

#[test]
fn api_request_carries_configured_headers_and_normalised_name() {
    let s = ApiStack::start(1, &http());
    let leaf = s.pki.leaf(&["case.example.com"], 8006);
    s.api.set_cert("case.example.com", &leaf);
    s.get("Case.EXAMPLE.com.").assert_served(&leaf, &s.pki);

    let reqs = s.api.requests();
    assert_eq!(reqs.len(), 1, "{}", s.api.dump());
    let req = &reqs[0];
    assert_eq!(req.method, "GET");
    assert_eq!(req.path, "/certs/case.example.com", "{}", s.api.dump());
    assert_eq!(req.header("Authorization"), Some("Bearer s3cret"));
    assert_eq!(req.header("X-Terminator"), Some("edge-1"));
}

#[test]
fn api_404_gets_default_and_is_negative_cached() {
    let s = ApiStack::start(1, &http());
    let start = Instant::now();
    let r = s.get("nobody.example.com");
    r.assert_default();
    assert_eq!(r.source(), "default", "body {:?}", r.body);
    s.assert_asked("nobody.example.com", 1);

    // Within negative=2s the API is not asked again.
    for _ in 0..3 {
        s.get("nobody.example.com").assert_default();
    }
    assert!(
        start.elapsed() < Duration::from_millis(1800),
        "too slow to check the negative TTL"
    );
    assert_eq!(
        s.api.requests_for("nobody.example.com"),
        1,
        "a 404 was not negative-cached:\n{}",
        s.api.dump()
    );

    // After it, the name is looked up again (and found, now).
    let leaf = s.pki.leaf(&["nobody.example.com"], 8007);
    s.api.set_cert("nobody.example.com", &leaf);
    let served = poll(Duration::from_secs(6), Duration::from_millis(100), || {
        Request::get("/")
            .sni("nobody.example.com")
            .https(s.nginx.port)
            .ok()
            .filter(|r| r.tls().leaf_serial == leaf.serial_hex)
    });
    assert!(
        served.is_some(),
        "not asked again after the negative TTL\n{}",
        s.api.dump()
    );
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "negative entry expired after {:?}, expected negative=2s",
        start.elapsed()
    );
}

/// A good name served from the API before the failure, so the test can
/// show that cached names keep working afterwards.
fn warm(s: &ApiStack) -> Leaf {
    let good = s.pki.leaf(&["good.example.com"], 8100);
    s.api.set_cert("good.example.com", &good);
    s.get("good.example.com").assert_served(&good, &s.pki);
    good
}

/// `name` gets the default certificate, a `[warn]` naming it and one of
/// `reasons`, and nginx keeps serving the cached good name.
fn assert_failure_handled(s: &mut ApiStack, good: &Leaf, name: &str, reasons: &[&str]) {
    let r = s.get(name);
    r.assert_default();
    assert_eq!(r.source(), "default", "body {:?}", r.body);
    assert!(
        s.api.requests_for(name) >= 1,
        "API not asked for {name}:\n{}",
        s.api.dump()
    );

    let quoted = format!("name: \"{name}\"");
    let line = s
        .nginx
        .wait_for_log_line(Duration::from_secs(5), |l| {
            l.contains("dyncert:") && l.contains(&quoted)
        })
        .unwrap_or_else(|| panic!("no log line naming {name}\n{}", s.nginx.logs()));
    assert!(line.contains("[warn]"), "logged at the wrong level: {line}");
    let lower = line.to_lowercase();
    assert!(
        reasons.iter().any(|r| lower.contains(&r.to_lowercase())),
        "log line does not say why ({reasons:?}): {line}"
    );
    assert!(
        !line.contains("BEGIN") && !line.contains("AAAAAAAA"),
        "response material in the log: {line}"
    );

    let r = s.get("good.example.com");
    r.assert_served(good, &s.pki);
    assert_eq!(r.source(), "cache", "body {:?}", r.body);
    s.nginx.assert_healthy();
}

#[test]
fn api_500_gets_default_is_logged_and_retried_later() {
    let mut s = ApiStack::start(1, &http());
    let good = warm(&s);
    s.api.set("flaky.example.com", ApiReply::status(500));
    assert_failure_handled(&mut s, &good, "flaky.example.com", &["status 500"]);

    // An error is not "unknown": once the API recovers the name is served
    // without a reload.
    let leaf = s.pki.leaf(&["flaky.example.com"], 8008);
    s.api.set_cert("flaky.example.com", &leaf);
    let served = poll(Duration::from_secs(15), Duration::from_millis(200), || {
        Request::get("/")
            .sni("flaky.example.com")
            .https(s.nginx.port)
            .ok()
            .filter(|r| r.tls().leaf_serial == leaf.serial_hex)
    });
    assert!(
        served.is_some(),
        "not retried within 15s after a 500\n{}\n{}",
        s.api.dump(),
        s.nginx.logs()
    );
}

#[test]
fn api_timeout_gets_default_after_api_timeout_and_is_logged() {
    let mut s = ApiStack::start(1, &http());
    let good = warm(&s);
    let slow = s.pki.leaf(&["slow.example.com"], 8009);
    s.api.set(
        "slow.example.com",
        ApiReply::cert(&slow).after(Duration::from_secs(10)),
    );
    let port = s.nginx.port;
    let parked = std::thread::spawn(move || Request::get("/").sni("slow.example.com").https(port));
    // While the API hangs, the cached name is served at once.
    assert!(s
        .api
        .wait_requests_for("slow.example.com", 1, Duration::from_secs(3)));
    let r = s.get("good.example.com");
    r.assert_served(&good, &s.pki);
    assert!(
        r.elapsed < Duration::from_millis(500),
        "a cached name took {:?} while the API hung",
        r.elapsed
    );

    let r = parked.join().unwrap().expect("parked handshake failed");
    r.assert_default();
    assert!(
        r.tls().handshake >= Duration::from_millis(800)
            && r.tls().handshake < Duration::from_millis(2500),
        "handshake took {:?}, expected about dyncert_api_timeout (1s)",
        r.tls().handshake
    );
    assert_failure_handled(&mut s, &good, "slow.example.com", &["timed out", "timeout"]);
}

#[test]
fn api_10mb_body_with_content_length_gets_default_and_is_logged() {
    let mut s = ApiStack::start(1, &http());
    let good = warm(&s);
    s.api
        .set("big.example.com", ApiReply::huge(10 << 20, false));
    assert_failure_handled(&mut s, &good, "big.example.com", &["larger than"]);
}

#[test]
fn api_10mb_chunked_body_gets_default_and_is_logged() {
    let mut s = ApiStack::start(1, &http());
    let good = warm(&s);
    s.api
        .set("chunked.example.com", ApiReply::huge(10 << 20, true));
    assert_failure_handled(&mut s, &good, "chunked.example.com", &["larger than"]);
}

#[test]
fn api_invalid_json_gets_default_and_is_logged() {
    let mut s = ApiStack::start(1, &http());
    let good = warm(&s);
    s.api.set(
        "json.example.com",
        ApiReply::json(200, "{\"crt\": \"-----BEGIN CERTIFICATE-----\\nMIIB"),
    );
    assert_failure_handled(&mut s, &good, "json.example.com", &["invalid JSON"]);
}

#[test]
fn api_certificate_for_another_name_gets_default_and_is_logged() {
    let mut s = ApiStack::start(1, &http());
    let good = warm(&s);
    let other = s.pki.leaf(&["other.example.com"], 8010);
    s.api.set_cert("victim.example.com", &other);
    assert_failure_handled(
        &mut s,
        &good,
        "victim.example.com",
        &["does not cover the name"],
    );
    // Nothing unusable is written back.
    assert!(
        s.redis.record("victim.example.com").is_empty(),
        "a rejected certificate was written back to Redis"
    );
}

#[test]
fn garbage_http_answer_gets_default_and_is_logged() {
    let mut s = ApiStack::start(1, &http());
    let good = warm(&s);
    s.api.set(
        "garbage.example.com",
        ApiReply::raw(&b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02"[..]),
    );
    let r = s.get("garbage.example.com");
    r.assert_default();
    let line = s.nginx.wait_for_log_line(Duration::from_secs(5), |l| {
        l.contains("dyncert:") && l.contains("name: \"garbage.example.com\"")
    });
    assert!(line.is_some(), "not logged\n{}", s.nginx.logs());
    s.get("good.example.com").assert_served(&good, &s.pki);
    s.nginx.assert_healthy();
}

#[test]
fn redis_down_goes_to_the_api_directly() {
    let pki = Pki::new();
    let redis = Redis::reserve();
    let api = CertApi::start();
    let mut nginx = Nginx::start(&pki, &http(), NginxOpts::new().redis(&redis).api(&api));
    let leaf = pki.leaf(&["direct.example.com"], 8011);
    api.set_cert("direct.example.com", &leaf);

    let r = Request::get("/")
        .sni("direct.example.com")
        .https(nginx.port)
        .unwrap();
    r.assert_served(&leaf, &pki);
    assert_eq!(r.source(), "api", "body {:?}", r.body);
    assert!(
        r.tls().handshake < Duration::from_millis(1500),
        "handshake took {:?}: Redis being down must not cost the fetch timeout",
        r.tls().handshake
    );
    nginx.assert_healthy();
}

#[test]
fn hung_redis_falls_through_to_the_api_within_the_fetch_timeout() {
    let mut s = ApiStack::start(
        1,
        &http().replace(
            "dyncert_api_timeout 1s;",
            "dyncert_api_timeout 1s; dyncert_redis_timeout 500ms;",
        ),
    );
    let _ = warm(&s);
    let leaf = s.pki.leaf(&["hung.example.com"], 8012);
    s.api.set_cert("hung.example.com", &leaf);
    s.redis.pause();
    let r = s.get("hung.example.com");
    s.redis.resume();
    r.assert_served(&leaf, &s.pki);
    assert_eq!(r.source(), "api", "body {:?}", r.body);
    assert!(
        r.tls().handshake < Duration::from_millis(2500),
        "handshake took {:?}",
        r.tls().handshake
    );
    s.nginx.assert_healthy();
}

const API_ONLY: &str = r#"
    dyncert_api @API@;
    dyncert_cache valid=1m negative=2s;
"#;

#[test]
fn api_alone_without_redis_serves_certificates() {
    let pki = Pki::new();
    let redis = Redis::reserve();
    let api = CertApi::start();
    let mut nginx = Nginx::start(
        &pki,
        &http_block(&[API_ONLY, SOURCE_SERVER]),
        NginxOpts::new().redis(&redis).api(&api),
    );
    let leaf = pki.leaf(&["solo.example.com"], 8013);
    api.set_cert("solo.example.com", &leaf);

    let r = Request::get("/")
        .sni("solo.example.com")
        .https(nginx.port)
        .unwrap();
    r.assert_served(&leaf, &pki);
    assert_eq!(r.source(), "api", "body {:?}", r.body);
    let r = Request::get("/")
        .sni("solo.example.com")
        .https(nginx.port)
        .unwrap();
    r.assert_served(&leaf, &pki);
    assert_eq!(r.source(), "cache", "body {:?}", r.body);
    Request::get("/")
        .sni("nobody.example.com")
        .https(nginx.port)
        .unwrap()
        .assert_default();
    assert_eq!(api.requests_for("solo.example.com"), 1, "{}", api.dump());
    nginx.assert_healthy();
}

const HTTPS_API: &str = r#"
    dyncert_redis @REDIS@;
    dyncert_api @API@;
    dyncert_api_trusted_certificate @API_CA@;
    dyncert_api_timeout 1s;
"#;

#[test]
fn https_api_is_verified_against_the_trusted_certificate() {
    let pki = Pki::new();
    let redis = Redis::start();
    let api = CertApi::start_tls(&pki);
    let mut nginx = Nginx::start(
        &pki,
        &http_block(&[HTTPS_API, SOURCE_SERVER]),
        NginxOpts::new().redis(&redis).api(&api),
    );
    let leaf = pki.leaf(&["secure.example.com"], 8014);
    api.set_cert("secure.example.com", &leaf);

    let r = Request::get("/")
        .sni("secure.example.com")
        .https(nginx.port)
        .unwrap();
    r.assert_served(&leaf, &pki);
    assert_eq!(r.source(), "api", "body {:?}", r.body);
    nginx.assert_healthy();
}

#[test]
fn https_api_with_an_untrusted_certificate_is_not_used() {
    let pki = Pki::new();
    let redis = Redis::start();
    let api = CertApi::start_tls(&pki);
    // System roots only: the test CA is not among them.
    let template = http_block(&[HTTPS_API, SOURCE_SERVER])
        .replace("dyncert_api_trusted_certificate @API_CA@;", "");
    let mut nginx = Nginx::start(&pki, &template, NginxOpts::new().redis(&redis).api(&api));
    let leaf = pki.leaf(&["mitm.example.com"], 8015);
    api.set_cert("mitm.example.com", &leaf);

    let r = Request::get("/")
        .sni("mitm.example.com")
        .https(nginx.port)
        .unwrap();
    r.assert_default();
    assert_eq!(
        api.requests_for("mitm.example.com"),
        0,
        "a request went to an API whose certificate is not trusted"
    );
    let line = nginx.wait_for_log_line(Duration::from_secs(5), |l| {
        l.contains("dyncert:") && l.contains("name: \"mitm.example.com\"")
    });
    assert!(line.is_some(), "not logged\n{}", nginx.logs());
    nginx.assert_healthy();
}

/// A wildcard in Redis stands in only for names no source has a record
/// of: a name whose own record lives in the API (the source of truth;
/// Redis holds its answers only for the write-back TTL) gets its own
/// certificate, not its parent's, and a name the API does not know still
/// gets the wildcard.
#[test]
fn a_redis_wildcard_does_not_stand_in_for_a_name_the_api_has() {
    let mut s = ApiStack::start(1, &http());
    let wild = s.pki.leaf(&["*.example.com"], 8101);
    s.redis.put_leaf("*.example.com", &wild);
    let own = s.pki.leaf(&["own.example.com"], 8102);
    s.api.set_cert("own.example.com", &own);

    let r = s.get("own.example.com");
    r.assert_served(&own, &s.pki);
    assert_eq!(r.source(), "api", "body {:?}", r.body);
    assert_eq!(s.api.requests_for("own.example.com"), 1);

    let r = s.get("other.example.com");
    r.assert_served(&wild, &s.pki);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
    assert_eq!(
        s.api.requests_for("other.example.com"),
        1,
        "the API is asked about the name before its wildcard stands in"
    );
    s.nginx.assert_healthy();
}

/// A Redis stall during a refresh, while the API answers 404 for the name
/// (its record lives in Redis only): the API's 404 does not say Redis has
/// no record, so the cached certificate is kept (stale-if-error), the
/// Redis error is logged for the name, and nothing is negative-cached.
#[test]
fn a_redis_stall_with_an_api_404_keeps_serving_the_cached_redis_certificate() {
    let mut s = ApiStack::start(
        1,
        &http()
            .replace(
                "dyncert_api_timeout 1s;",
                "dyncert_api_timeout 1s; dyncert_redis_timeout 300ms;",
            )
            .replace(
                "valid=1m stale=1h negative=2s",
                "valid=1s stale=1h negative=30s",
            ),
    );
    let name = "redisonly.example.com";
    let leaf = s.pki.leaf(&[name], 8201);
    s.redis.put_leaf(name, &leaf);
    let r = s.get(name);
    r.assert_served(&leaf, &s.pki);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
    s.assert_asked(name, 0);

    // Past `valid`: the next handshake starts a refresh, into the stall.
    std::thread::sleep(Duration::from_millis(1300));
    s.redis.pause();
    let start = Instant::now();
    let mut during = Vec::new();
    while start.elapsed() < Duration::from_millis(2500) {
        let r = s.get(name);
        during.push((
            start.elapsed(),
            r.tls().leaf_serial.clone(),
            r.source().to_owned(),
        ));
        std::thread::sleep(Duration::from_millis(250));
    }
    let asked = s.api.requests_for(name);
    s.redis.resume();
    assert!(
        during
            .iter()
            .all(|(_, serial, _)| *serial == leaf.serial_hex),
        "the cached certificate was dropped during the Redis stall \
         (elapsed, serial, source): {during:?}\n{}",
        s.nginx.logs()
    );
    assert!(
        asked >= 1,
        "the refresh never reached the API (the test did not exercise its 404)\n{}",
        s.api.dump()
    );
    let line = s.nginx.wait_for_log_line(Duration::from_secs(2), |l| {
        l.contains("[warn]")
            && l.contains("while fetching from redis")
            && l.contains(&format!("name: \"{name}\""))
    });
    assert!(
        line.is_some(),
        "the Redis error was not logged for the name\n{}",
        s.nginx.logs()
    );

    // Redis is back: served at once, well within `negative=30s` (nothing
    // was negative-cached), and refreshed from Redis later.
    let back = Instant::now();
    let r = s.get(name);
    r.assert_served(&leaf, &s.pki);
    let refreshed = poll(Duration::from_secs(10), Duration::from_millis(200), || {
        let r = s.get(name);
        assert_eq!(
            r.tls().leaf_serial,
            leaf.serial_hex,
            "not served after Redis came back ({:?} later), via {}\n{}",
            back.elapsed(),
            r.source(),
            s.nginx.logs()
        );
        (r.source() == "redis").then_some(())
    });
    assert!(
        refreshed.is_some(),
        "never refreshed from Redis after it came back\n{}",
        s.nginx.logs()
    );
    s.nginx.assert_healthy();
}

/// A written-back copy lives no longer than its certificate: once the
/// certificate expires, Redis has dropped the copy and the API (which
/// holds the renewal) is asked again, by this terminator and by others.
/// A copy outliving its certificate would be refused, and a refused Redis
/// record ends the lookup before the API is asked.
#[test]
fn a_writeback_copy_expires_with_its_certificate_and_the_api_renewal_is_served() {
    let s = ApiStack::start(1, &http().replace("valid=1m", "valid=2s"));
    let name = "short.example.com";
    let old = s.pki.leaf_with(
        &[name],
        8202,
        LeafOpts {
            expires_in: Some(Duration::from_secs(4)),
            ..LeafOpts::default()
        },
    );
    let renewed = s.pki.leaf(&[name], 8203);
    let not_after_ms = {
        let d = openssl::asn1::Asn1Time::from_unix(0)
            .unwrap()
            .diff(old.issued.cert.not_after())
            .unwrap();
        (i64::from(d.days) * 86_400 + i64::from(d.secs)) * 1000
    };
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    s.api.set_cert(name, &old);
    let r = s.get(name);
    r.assert_served(&old, &s.pki);
    assert_eq!(r.source(), "api", "body {:?}", r.body);
    assert!(
        wait_record(&s.redis, name).is_some(),
        "no write-back\n{}",
        s.nginx.logs()
    );
    let pttl = match s.redis.cmd(&["PTTL", &format!("dyncert:cert:{name}")]) {
        Reply::Int(n) => n,
        other => panic!("PTTL: {other:?}"),
    };
    let left = not_after_ms - now_ms();
    assert!(
        pttl > 0 && pttl <= left + 50,
        "the copy's PTTL is {pttl} ms, but its certificate expires in {left} ms \
         (writeback=1h must not outlive it)"
    );

    // The API renews; once the old certificate has expired, this
    // terminator fetches the renewal (no invalidation sent).
    s.api.set_cert(name, &renewed);
    let wait = u64::try_from(not_after_ms - now_ms()).unwrap_or(0) + 500;
    std::thread::sleep(Duration::from_millis(wait));
    let served = poll(Duration::from_secs(5), Duration::from_millis(200), || {
        let r = s.get(name);
        (r.tls().leaf_serial == renewed.serial_hex).then_some(r)
    })
    .unwrap_or_else(|| {
        panic!(
            "the renewal was not served after the old certificate expired \
             (API requests: {}; copy TTL {})\n{}",
            s.api.requests_for(name),
            s.redis.ttl(name),
            s.nginx.logs()
        )
    });
    served.assert_served(&renewed, &s.pki);

    // Another terminator, with an empty cache, gets the renewal too.
    let other = s.another_nginx(&http());
    let r = Request::get("/").sni(name).https(other.port).unwrap();
    r.assert_served(&renewed, &s.pki);
}

/// An operator rotates a certificate in the API while a terminator's
/// lookup of it is waiting for the API's (old) answer, then drops the
/// Redis copy and publishes the name, as the README says. The old answer
/// is not written back after that: the invalidated lookup's retry, the
/// next handshake and another terminator all get the new certificate,
/// and Redis holds the new one.
#[test]
fn an_api_answer_in_flight_during_a_delete_and_invalidation_is_not_written_back() {
    let s = ApiStack::start(1, &http());
    let name = "rotated.example.com";
    let old = s.pki.leaf(&[name], 8101);
    let new = s.pki.leaf(&[name], 8102);
    let r = handshake_while_the_api_answers_late(&s, name, &old, || {
        s.api.set_cert(name, &new);
        s.redis.cmd(&["DEL", &format!("dyncert:cert:{name}")]);
        assert_eq!(s.redis.publish("dyncert:invalidate", name), 1);
    });
    r.assert_served(&new, &s.pki);
    s.get(name).assert_served(&new, &s.pki);
    let (crt, _) = wait_record(&s.redis, name).expect("the new answer written back");
    assert!(
        crt.contains(new.chain_pem.lines().nth(1).unwrap()),
        "Redis holds the new certificate"
    );
    let other = s.another_nginx(&http());
    let r = Request::get("/").sni(name).https(other.port).unwrap();
    r.assert_served(&new, &s.pki);
}
