//! Cache policy in a running nginx: after `valid=` the old certificate is
//! served while one background refresh runs; past `valid + stale` an entry
//! whose refresh keeps failing is dropped; nothing is served past its own
//! notAfter; unknown names are remembered for `negative=`; `max=` and
//! `max_size=` bound the cache, evicting the least recently used.

use dyncert_testkit::conf::dyncert_server;
use dyncert_testkit::*;
use openssl::asn1::Asn1Time;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Redis only, with short deadlines and `cache` as `dyncert_cache`.
fn redis_only(cache: &str) -> String {
    let directives = format!(
        "    dyncert_redis @REDIS@;\n    dyncert_redis_timeout 500ms;\n    \
         dyncert_fetch_timeout 1s;\n    dyncert_cache {cache};"
    );
    http_block(&[&directives, SOURCE_SERVER])
}

fn redis_stack(cache: &str) -> Stack {
    Stack::start(1, &redis_only(cache))
}

fn not_after_instant(leaf: &Leaf) -> Instant {
    let epoch = Asn1Time::from_unix(0).unwrap();
    let d = epoch.diff(leaf.issued.cert.not_after()).unwrap();
    let not_after = UNIX_EPOCH + Duration::from_secs(d.days as u64 * 86400 + d.secs as u64);
    let left = not_after
        .duration_since(SystemTime::now())
        .expect("certificate already expired");
    Instant::now() + left
}

fn serial_of(s: &Stack, name: &str) -> Result<Exchange, String> {
    Request::get("/").sni(name).https(s.nginx.port)
}

#[test]
fn stale_certificate_is_served_while_one_background_refresh_runs() {
    // Only the API behind the cache, so the refresh can be made slow.
    let pki = Pki::new();
    let redis = Redis::reserve();
    let api = CertApi::start();
    let mut nginx = Nginx::start(
        &pki,
        &http_block(&[
            "    dyncert_api @API@;",
            "    dyncert_api_timeout 5s;",
            "    dyncert_cache valid=1s stale=30s negative=2s;",
            &source_server(" name=$dyncert_name"),
        ]),
        NginxOpts::new().redis(&redis).api(&api),
    );
    let old = pki.leaf(&["renew.example.com"], 9001);
    let new = pki.leaf(&["renew.example.com"], 9002);
    api.set_cert("renew.example.com", &old);
    let r = Request::get("/")
        .sni("renew.example.com")
        .https(nginx.port)
        .unwrap();
    r.assert_served(&old, &pki);
    // Counted from the answer, not the request: the entry was cached before
    // the handshake completed, however slow a loaded machine was to fetch it.
    let fetched = Instant::now();

    // The renewal takes the API 1.5s to hand out.
    api.set(
        "renew.example.com",
        ApiReply::cert(&new).after(Duration::from_millis(1500)),
    );
    thread::sleep(Duration::from_millis(1200).saturating_sub(fetched.elapsed()));

    // Past valid=1s, concurrent handshakes all get the old certificate at
    // once instead of waiting for the refresh.
    for r in tls_burst(nginx.port, "renew.example.com", 6) {
        let r = r.unwrap();
        r.assert_served(&old, &pki);
        assert!(
            r.tls().handshake < Duration::from_millis(700),
            "a stale entry made the handshake wait {:?}",
            r.tls().handshake
        );
    }
    assert!(
        api.wait_requests_for("renew.example.com", 2, Duration::from_secs(3)),
        "no background refresh after valid=1s:\n{}",
        api.dump()
    );
    // Still only one refresh while it runs, however many handshakes.
    for _ in 0..5 {
        let r = Request::get("/")
            .sni("renew.example.com")
            .https(nginx.port)
            .unwrap();
        if r.tls().leaf_serial != new.serial_hex {
            r.assert_served(&old, &pki);
        }
    }
    assert_eq!(
        api.requests_for("renew.example.com"),
        2,
        "more than one refresh for one stale entry:\n{}",
        api.dump()
    );

    // Once the refresh is done, the new certificate is served.
    let renewed = poll(Duration::from_secs(5), Duration::from_millis(100), || {
        Request::get("/")
            .sni("renew.example.com")
            .https(nginx.port)
            .ok()
            .filter(|r| r.tls().leaf_serial == new.serial_hex)
    });
    assert!(
        renewed.is_some(),
        "the refreshed certificate is not served\n{}",
        nginx.logs()
    );
    nginx.assert_healthy();
}

#[test]
fn redis_record_is_refreshed_in_the_background_after_valid() {
    let mut s = redis_stack("valid=1s stale=30s negative=2s");
    let old = s.pki.leaf(&["roll.example.com"], 9003);
    let new = s.pki.leaf(&["roll.example.com"], 9004);
    s.redis.put_leaf("roll.example.com", &old);
    let monitor = s.redis.monitor();
    let start = Instant::now();
    s.get(Some("roll.example.com")).assert_served(&old, &s.pki);

    // Renewed in Redis: within valid=1s the cached one is still served.
    s.redis.put_leaf("roll.example.com", &new);
    let r = s.get(Some("roll.example.com"));
    assert!(start.elapsed() < Duration::from_millis(900), "too slow");
    r.assert_served(&old, &s.pki);
    assert_eq!(r.source(), "cache", "body {:?}", r.body);

    // After it, the refresh brings the new one, never a default between.
    let renewed = poll(Duration::from_secs(5), Duration::from_millis(50), || {
        let r = s.get(Some("roll.example.com"));
        assert!(!r.is_default(), "default served during a refresh");
        (r.tls().leaf_serial == new.serial_hex).then_some(start.elapsed())
    });
    let at = renewed.unwrap_or_else(|| panic!("not refreshed\n{}", s.nginx.logs()));
    assert!(
        at >= Duration::from_millis(900),
        "refreshed after {at:?}, before valid=1s"
    );
    monitor.sync();
    assert_eq!(
        monitor.lookups_of("roll.example.com"),
        2,
        "expected the first fetch and one refresh:\n{}",
        monitor.dump()
    );
    s.nginx.assert_healthy();
}

#[test]
fn entry_past_valid_plus_stale_is_dropped_when_refresh_keeps_failing() {
    let mut s = redis_stack("valid=1s stale=2s negative=1s");
    let leaf = s.pki.leaf(&["fading.example.com"], 9005);
    s.redis.put_leaf("fading.example.com", &leaf);
    let start = Instant::now();
    s.get(Some("fading.example.com"))
        .assert_served(&leaf, &s.pki);
    s.redis.stop();

    // Between valid and valid+stale: stale-if-error, served at once.
    thread::sleep(Duration::from_millis(1500).saturating_sub(start.elapsed()));
    let r = s.get(Some("fading.example.com"));
    r.assert_served(&leaf, &s.pki);
    assert!(
        r.tls().handshake < Duration::from_millis(500),
        "{:?}",
        r.tls().handshake
    );

    // Past valid+stale=3s: dropped, the default instead.
    let dropped = poll(Duration::from_secs(5), Duration::from_millis(100), || {
        let r = s.get(Some("fading.example.com"));
        r.is_default().then(|| start.elapsed())
    });
    let at = dropped.unwrap_or_else(|| {
        panic!(
            "still served {:?} after valid+stale with Redis down\n{}",
            start.elapsed(),
            s.nginx.logs()
        )
    });
    assert!(
        at >= Duration::from_millis(2500),
        "dropped after {at:?}, before valid+stale (3s)"
    );
    assert!(
        at < Duration::from_millis(4500),
        "dropped only after {at:?}"
    );

    // Redis back with the record: served again without a reload.
    s.redis.start_server();
    s.redis.put_leaf("fading.example.com", &leaf);
    let back = poll(Duration::from_secs(10), Duration::from_millis(200), || {
        serial_of(&s, "fading.example.com")
            .ok()
            .filter(|r| r.tls().leaf_serial == leaf.serial_hex)
    });
    assert!(back.is_some(), "did not recover\n{}", s.nginx.logs());
    s.nginx.assert_healthy();
}

#[test]
fn certificate_is_never_served_past_its_not_after() {
    let mut s = redis_stack("valid=1m stale=1h negative=1s");
    let leaf = s.pki.leaf_with(
        &["shortlived.example.com"],
        9006,
        LeafOpts {
            expires_in: Some(Duration::from_secs(3)),
            ..LeafOpts::default()
        },
    );
    let not_after = not_after_instant(&leaf);
    s.redis.put_leaf("shortlived.example.com", &leaf);
    s.get(Some("shortlived.example.com"))
        .assert_served(&leaf, &s.pki);

    let mut served_before = false;
    while Instant::now() < not_after + Duration::from_secs(3) {
        let r = s.get(Some("shortlived.example.com"));
        let t = Instant::now();
        if r.tls().leaf_serial == leaf.serial_hex {
            // One second of slack for clocks and the request itself.
            assert!(
                t < not_after + Duration::from_secs(1),
                "served {:?} past its notAfter",
                t - not_after
            );
            if t + Duration::from_secs(1) < not_after {
                served_before = true;
            }
        } else {
            r.assert_default();
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(served_before, "never served while it was valid");
    s.nginx.assert_healthy();
}

#[test]
fn unknown_name_is_remembered_for_the_negative_ttl_only() {
    let mut s = redis_stack("valid=1m negative=2s");
    let monitor = s.redis.monitor();
    let start = Instant::now();
    s.get(Some("later.example.com")).assert_default();

    // The record appears, but within negative=2s the name stays unknown
    // and Redis is not asked again.
    let leaf = s.pki.leaf(&["later.example.com"], 9007);
    s.redis.put_leaf("later.example.com", &leaf);
    for _ in 0..3 {
        s.get(Some("later.example.com")).assert_default();
    }
    assert!(start.elapsed() < Duration::from_millis(1800), "too slow");
    monitor.sync();
    assert_eq!(
        monitor.lookups_of("later.example.com"),
        1,
        "not negative-cached:\n{}",
        monitor.dump()
    );

    let found = poll(Duration::from_secs(6), Duration::from_millis(100), || {
        let r = s.get(Some("later.example.com"));
        (r.tls().leaf_serial == leaf.serial_hex).then(|| start.elapsed())
    });
    let at = found.unwrap_or_else(|| panic!("never looked up again\n{}", s.nginx.logs()));
    assert!(
        at >= Duration::from_millis(1800),
        "negative entry gone after {at:?}"
    );
    s.nginx.assert_healthy();
}

#[test]
fn max_entries_evicts_the_least_recently_used() {
    let mut s = redis_stack("max=3 valid=1m negative=1m");
    let names = [
        "e1.example.com",
        "e2.example.com",
        "e3.example.com",
        "e4.example.com",
    ];
    let leaves: Vec<Leaf> = names
        .iter()
        .zip(9010..)
        .map(|(n, serial)| s.pki.leaf(&[n], serial))
        .collect();
    for (n, l) in names.iter().zip(&leaves) {
        s.redis.put_leaf(n, l);
    }
    let monitor = s.redis.monitor();
    for n in &names[..3] {
        assert_eq!(s.get(Some(n)).source(), "redis");
    }
    // e1 used again: e2 is now the least recently used.
    assert_eq!(s.get(Some("e1.example.com")).source(), "cache");
    assert_eq!(s.get(Some("e4.example.com")).source(), "redis");

    let r = s.get(Some("e1.example.com"));
    r.assert_served(&leaves[0], &s.pki);
    assert_eq!(
        r.source(),
        "cache",
        "recently used entry evicted: {:?}",
        r.body
    );
    let r = s.get(Some("e2.example.com"));
    r.assert_served(&leaves[1], &s.pki);
    assert_eq!(r.source(), "redis", "LRU entry not evicted: {:?}", r.body);
    monitor.sync();
    assert_eq!(
        monitor.lookups_of("e2.example.com"),
        2,
        "{}",
        monitor.dump()
    );
    s.nginx.assert_healthy();
}

#[test]
fn max_size_bounds_the_cache_in_bytes() {
    let names: Vec<String> = (0..120).map(|i| format!("sz{i}.example.com")).collect();
    let sources_of_first_and_last = |cache: &str| {
        let mut s = redis_stack(cache);
        for (i, n) in names.iter().enumerate() {
            let leaf = s.pki.leaf(&[n], 9100 + i as u64);
            s.redis.put_leaf(n, &leaf);
            s.get(Some(n)).assert_served(&leaf, &s.pki);
        }
        let last = s.get(Some(names.last().unwrap())).source().to_string();
        let first = s.get(Some(&names[0])).source().to_string();
        s.nginx.assert_healthy();
        (first, last)
    };
    // 120 entries of leaf + intermediate (each weighed as its DER plus a
    // 2 KiB overhead, over 3 KiB) are more than 256k, the smallest bound.
    let (first, last) = sources_of_first_and_last("max=1000 max_size=256k valid=1m");
    assert_eq!(last, "cache", "the newest entry must fit in max_size=256k");
    assert_eq!(
        first, "redis",
        "the oldest entry was not evicted by max_size=256k"
    );
    // Control: the same names without a byte bound all stay cached.
    let (first, _) = sources_of_first_and_last("max=1000 valid=1m");
    assert_eq!(first, "cache", "evicted without a byte bound");
}

fn tenant() -> String {
    let server = dyncert_server(
        r#"
        dyncert_tenant_policy on;
        root html;
        location / { }
"#,
    );
    http_block(&[
        "    dyncert_redis @REDIS@;",
        "    dyncert_cache valid=1s stale=1h negative=1s;",
        &server,
    ])
}

/// A refused update normally keeps the working certificate while stale;
/// one that tightens the policy with a field that does not parse must not
/// leave the looser policy in force meanwhile.
#[test]
fn a_policy_update_that_does_not_parse_stops_the_old_policy() {
    let mut s = Stack::start(1, &tenant());
    s.nginx.write_index_pages(&[""]);
    let name = "fenced.example.com";
    let leaf = s.pki.leaf(&[name], 9301);
    let ca = s.pki.client_ca("tenant CA");
    let mangled_ca = ca.cert_pem.replace("MII", "MIX");
    for (round, (field, value)) in [
        ("allow", "127.0.0.2, 10.0.0.1/8"),
        ("client_ca", mangled_ca.as_str()),
    ]
    .into_iter()
    .enumerate()
    {
        // The open record: no policy fields.
        s.redis.put_leaf_with(name, &leaf, &[]);
        if round > 0 {
            s.redis.publish("dyncert:invalidate", name);
        }
        let open = poll(STARTUP_DEADLINE, Duration::from_millis(50), || {
            (s.get(Some(name)).status == 200).then_some(())
        });
        assert!(
            open.is_some(),
            "round {round}: the open record is not served"
        );
        s.redis.put_leaf_with(name, &leaf, &[(field, value)]);
        thread::sleep(Duration::from_millis(1100));
        // Past valid: the next handshake refreshes, and the refresh is
        // refused; from then on the name is not served with its old policy.
        let closed = poll(STARTUP_DEADLINE, Duration::from_millis(50), || {
            (s.get(Some(name)).status != 200).then_some(())
        });
        assert!(
            closed.is_some(),
            "the old policy is still served after a malformed {field}"
        );
        for _ in 0..3 {
            let r = s.get(Some(name));
            assert_ne!(r.status, 200, "malformed {field}: {:?}", r.body);
        }
        assert!(s.nginx.error_log().contains(&format!("field \"{field}\"")));
    }
    s.nginx.assert_healthy();
}

/// Names fetched at the same time reach a hot set of one: each waiting
/// connection gets its own certificate, though a result applied after it
/// evicts its entry (each result's waiters are woken before the next
/// result is applied). The worker and its threads share one CPU, so the
/// parse thread finishes several records before the event loop runs.
#[test]
fn names_fetched_together_are_each_served_by_a_hot_set_of_one() {
    let pki = Pki::new();
    let redis = Redis::start();
    let nginx = Nginx::start(
        &pki,
        &redis_only("max=1"),
        NginxOpts::new()
            .workers(1)
            .worker_cpu_affinity("01")
            .redis(&redis),
    );
    let names: Vec<String> = (0..12).map(|i| format!("t{i}.example.com")).collect();
    let leaves: Vec<Leaf> = names
        .iter()
        .enumerate()
        .map(|(i, n)| pki.leaf(&[n], 9400 + i as u64))
        .collect();
    for round in 0..3 {
        for (n, l) in names.iter().zip(&leaves) {
            redis.put_leaf(n, l);
        }
        // Redis holds every lookup back, then answers them at once.
        assert_eq!(
            redis.cmd(&["CLIENT", "PAUSE", "200", "ALL"]),
            Reply::Status("OK".into())
        );
        let port = nginx.port;
        let clients: Vec<_> = names
            .iter()
            .cloned()
            .map(|n| {
                thread::spawn(move || {
                    Request::default()
                        .sni(&n)
                        .https(port)
                        .unwrap_or_else(|e| panic!("{n}: {e}"))
                })
            })
            .collect();
        for ((c, n), l) in clients.into_iter().zip(&names).zip(&leaves) {
            let r = c.join().unwrap();
            assert!(!r.is_default(), "round {round}: {n} got the default");
            r.assert_served(l, &pki);
        }
        for n in &names {
            redis.cmd(&["DEL", &format!("dyncert:cert:{n}")]);
            redis.publish("dyncert:invalidate", n);
        }
    }
}
