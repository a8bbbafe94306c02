//! Redis and the certificate API both down: cached names keep being served
//! (stale, past `valid=`) at full speed, uncached names get the default
//! without stalling, and everything recovers by itself when the sources
//! come back.

use dyncert_testkit::*;
use std::thread;
use std::time::{Duration, Instant};

fn http() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;",
        "    dyncert_redis_timeout 500ms;",
        "    dyncert_api @API@ writeback=1h;",
        "    dyncert_api_timeout 1s;",
        "    dyncert_fetch_timeout 2s;",
        "    dyncert_cache max=1000 valid=1s stale=1h negative=1s;",
        &source_server(" name=$dyncert_name"),
    ])
}

fn poll_served(s: &ApiStack, name: &str, leaf: &Leaf, deadline: Duration) -> bool {
    poll(deadline, Duration::from_millis(200), || {
        Request::get("/")
            .sni(name)
            .https(s.nginx.port)
            .ok()
            .filter(|r| r.tls().leaf_serial == leaf.serial_hex)
    })
    .is_some()
}

#[test]
fn cached_names_are_served_stale_while_redis_and_api_are_down_then_recover() {
    let mut s = ApiStack::start(1, &http());
    let in_redis = s.pki.leaf(&["stored.example.com"], 12001);
    let in_api = s.pki.leaf(&["fetched.example.com"], 12002);
    s.redis.put_leaf("stored.example.com", &in_redis);
    s.api.set_cert("fetched.example.com", &in_api);
    assert_eq!(s.get("stored.example.com").source(), "redis");
    assert_eq!(s.get("fetched.example.com").source(), "api");

    s.redis.stop();
    s.api.stop();
    let down = Instant::now();

    // For 3s, well past valid=1s, the cached names keep being served at
    // once while their refreshes fail.
    while down.elapsed() < Duration::from_secs(3) {
        for (name, leaf) in [
            ("stored.example.com", &in_redis),
            ("fetched.example.com", &in_api),
        ] {
            let r = s.get(name);
            r.assert_served(leaf, &s.pki);
            assert!(
                r.elapsed < Duration::from_millis(500),
                "{name} took {:?} with both sources down",
                r.elapsed
            );
        }
        thread::sleep(Duration::from_millis(200));
    }

    // An uncached name gets the default, within the fetch timeout.
    let late = s.pki.leaf(&["late.example.com"], 12003);
    s.api.set_cert("late.example.com", &late);
    let r = s.get("late.example.com");
    r.assert_default();
    assert_eq!(r.source(), "default", "body {:?}", r.body);
    assert!(
        r.tls().handshake < Duration::from_millis(2500),
        "handshake took {:?}, more than dyncert_fetch_timeout",
        r.tls().handshake
    );
    s.nginx.assert_healthy();

    // Both back (Redis empty after its restart): no reload needed.
    s.redis.start_server();
    s.api.start_server();
    assert!(
        poll_served(&s, "late.example.com", &late, Duration::from_secs(15)),
        "uncached name not served within 15s of the sources coming back\n{}\n{}",
        s.api.dump(),
        s.nginx.logs()
    );
    // Refreshes work again: a renewal in Redis replaces the stale entry.
    let renewed = s.pki.leaf(&["stored.example.com"], 12004);
    s.redis.put_leaf("stored.example.com", &renewed);
    assert!(
        poll_served(&s, "stored.example.com", &renewed, Duration::from_secs(15)),
        "stale entry not refreshed after the sources came back\n{}",
        s.nginx.logs()
    );
    s.nginx.assert_healthy();
}

#[test]
fn hung_redis_and_api_do_not_stall_cached_names() {
    let mut s = ApiStack::start(1, &http());
    let leaf = s.pki.leaf(&["steady.example.com"], 12005);
    s.redis.put_leaf("steady.example.com", &leaf);
    s.get("steady.example.com").assert_served(&leaf, &s.pki);

    // Redis answers nothing, the API answers after 30s.
    s.redis.pause();
    s.api
        .set_fallback(ApiReply::not_found().after(Duration::from_secs(30)));
    thread::sleep(Duration::from_millis(1100));
    let port = s.nginx.port;
    let parked: Vec<_> = (0..3)
        .map(|i| {
            thread::spawn(move || {
                Request::get("/")
                    .sni(&format!("u{i}.example.com"))
                    .https(port)
            })
        })
        .collect();
    for _ in 0..10 {
        let r = s.get("steady.example.com");
        r.assert_served(&leaf, &s.pki);
        assert!(
            r.elapsed < Duration::from_millis(500),
            "cached name took {:?} while both sources hung",
            r.elapsed
        );
    }
    for p in parked {
        let r = p.join().unwrap().expect("parked handshake failed");
        r.assert_default();
        assert!(
            r.tls().handshake < Duration::from_millis(2500),
            "an uncached name waited {:?}, more than dyncert_fetch_timeout",
            r.tls().handshake
        );
    }
    s.redis.resume();
    s.nginx.assert_healthy();
}
