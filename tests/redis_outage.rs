//! Redis trouble never stalls nginx: cached names keep handshaking while
//! Redis hangs, an uncached name waits at most `dyncert_fetch_timeout` and
//! then gets the default, and the module reconnects by itself.

use dyncert_testkit::*;
use std::time::Duration;

fn http() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;",
        "    dyncert_fetch_timeout 1s;",
        "    dyncert_redis_timeout 1s;",
        &source_server(" name=$dyncert_name"),
    ])
}

/// Handshakes for `name` until it is served `leaf`, or `deadline` passes.
fn poll_served(s: &Stack, name: &str, leaf: &Leaf, deadline: Duration) -> Option<Exchange> {
    poll(deadline, Duration::from_millis(200), || {
        Request::get("/")
            .sni(name)
            .https(s.nginx.port)
            .ok()
            .filter(|r| r.tls().leaf_serial == leaf.serial_hex)
    })
}

#[test]
fn cached_names_keep_handshaking_while_redis_is_stopped() {
    // One worker: the warm-up handshakes fill the cache the others meet.
    let mut s = Stack::start(1, &http());
    let names = ["one.example.com", "two.example.com"];
    let leaves: Vec<Leaf> = names
        .iter()
        .zip(3001..)
        .map(|(n, serial)| s.pki.leaf(&[n], serial))
        .collect();
    for (n, l) in names.iter().zip(&leaves) {
        s.redis.put_leaf(n, l);
        s.get(Some(n)).assert_served(l, &s.pki);
    }

    s.redis.pause();
    for round in 0..5 {
        for (n, l) in names.iter().zip(&leaves) {
            let r = s.get(Some(n));
            r.assert_served(l, &s.pki);
            assert_eq!(r.source(), "cache", "body {:?}", r.body);
            assert!(
                r.elapsed < Duration::from_millis(500),
                "round {round}: {n} took {:?} while Redis was stopped",
                r.elapsed
            );
        }
    }
    s.redis.resume();
    s.nginx.assert_healthy();
}

#[test]
fn uncached_name_waits_fetch_timeout_then_gets_default() {
    let mut s = Stack::start(1, &http());
    // Make sure the worker holds a live Redis connection before the hang.
    let warm = s.pki.leaf(&["warm.example.com"], 3003);
    s.redis.put_leaf("warm.example.com", &warm);
    s.get(Some("warm.example.com")).assert_served(&warm, &s.pki);
    let late = s.pki.leaf(&["late.example.com"], 3004);
    s.redis.put_leaf("late.example.com", &late);

    s.redis.pause();
    let port = s.nginx.port;
    let parked = std::thread::spawn(move || Request::get("/").sni("late.example.com").https(port));
    // While that connection is parked, the single worker keeps serving.
    std::thread::sleep(Duration::from_millis(300));
    let cached = s.get(Some("warm.example.com"));
    cached.assert_served(&warm, &s.pki);
    assert!(
        cached.elapsed < Duration::from_millis(500),
        "a cached name took {:?} while another connection waited for Redis",
        cached.elapsed
    );

    let r = parked.join().unwrap().expect("parked handshake failed");
    r.assert_default();
    assert_eq!(r.source(), "default", "body {:?}", r.body);
    assert!(
        r.tls().handshake >= Duration::from_millis(800)
            && r.tls().handshake < Duration::from_secs(3),
        "handshake took {:?}, expected about dyncert_fetch_timeout (1s)",
        r.tls().handshake
    );

    // Once Redis answers again the record is found.
    s.redis.resume();
    let r = poll_served(&s, "late.example.com", &late, Duration::from_secs(10));
    assert!(
        r.is_some(),
        "record not served after Redis came back\n{}",
        s.nginx.logs()
    );
    s.nginx.assert_healthy();
}

#[test]
fn redis_down_at_start_then_started_records_are_served() {
    let pki = Pki::new();
    let redis = Redis::reserve();
    let nginx = Nginx::start(&pki, &http(), NginxOpts::new().redis(&redis));
    let mut s = Stack { pki, redis, nginx };

    // Nginx is up without Redis: unknown names get the default, promptly
    // enough (connection refused, or at worst the fetch timeout).
    let r = s.get(Some("early.example.com"));
    r.assert_default();
    assert!(
        r.tls().handshake < Duration::from_secs(3),
        "{:?}",
        r.tls().handshake
    );

    s.redis.start_server();
    let leaf = s.pki.leaf(&["later.example.com"], 3005);
    s.redis.put_leaf("later.example.com", &leaf);
    let r = poll_served(&s, "later.example.com", &leaf, Duration::from_secs(10));
    assert!(
        r.is_some(),
        "record not served within 10s of Redis starting\n{}",
        s.nginx.logs()
    );
    s.nginx.assert_healthy();
}

#[test]
fn redis_restart_new_records_are_picked_up() {
    let mut s = Stack::start(1, &http());
    let before = s.pki.leaf(&["before.example.com"], 3006);
    s.redis.put_leaf("before.example.com", &before);
    s.get(Some("before.example.com"))
        .assert_served(&before, &s.pki);

    s.redis.stop();
    // Cached names are still served while Redis is gone.
    let r = s.get(Some("before.example.com"));
    r.assert_served(&before, &s.pki);
    assert!(r.elapsed < Duration::from_millis(500), "{:?}", r.elapsed);

    s.redis.start_server();
    let after = s.pki.leaf(&["after.example.com"], 3007);
    s.redis.put_leaf("after.example.com", &after);
    let r = poll_served(&s, "after.example.com", &after, Duration::from_secs(10));
    assert!(
        r.is_some(),
        "record not served within 10s of the Redis restart\n{}",
        s.nginx.logs()
    );
    s.nginx.assert_healthy();
}

#[test]
fn a_worker_tries_a_redis_that_is_down_about_twice_a_second_whatever_the_traffic() {
    // Redis down behind a proxy that counts the connections made to it
    // (it accepts, finds nothing behind, and closes).
    let pki = Pki::new();
    let mut redis = Redis::reserve();
    let proxy = BlackholeProxy::start(redis.port);
    let url = format!("redis://127.0.0.1:{}/0", proxy.port);
    let mut nginx = Nginx::start(
        &pki,
        &http(),
        NginxOpts::new().workers(1).var("REDIS", &url),
    );
    // 6 s of new names, about 20 a second, each one a lookup; counted over
    // the last 4 s, once the waits between attempts have grown to a second
    // (they start again from none after Redis answered).
    let t0 = std::time::Instant::now();
    let (mut sent, mut before) = (0, None);
    while t0.elapsed() < Duration::from_secs(6) {
        if before.is_none() && t0.elapsed() >= Duration::from_secs(2) {
            before = Some((proxy.accepted(), sent));
        }
        let r = Request::get("/")
            .sni(&format!("n{sent}.example.com"))
            .https(nginx.port)
            .unwrap_or_else(|e| panic!("handshake {sent}: {e}"));
        r.assert_default();
        sent += 1;
        std::thread::sleep(Duration::from_millis(30));
    }
    let (before, sent_before) = before.expect("a count at 2 s");
    // The lookups' attempts, one a second, and the subscription's, one a
    // second: 8, 10 with the edges of the window. With the redis crate's
    // `ConnectionManager`, which also reconnected by itself after every
    // failed attempt, 12; before the waits, every lookup was an attempt
    // with the crate's two retries, and held up by them (46 connections in
    // those 4 s, for only 7 names; now about 8 for about 60).
    let made = proxy.accepted() - before;
    let names = sent - sent_before;
    eprintln!("{made} connections in 4 s for {names} new names");
    assert!(
        made <= 10,
        "{made} connections to a Redis that is down in 4 s ({names} new names)"
    );
    assert!(names >= 20, "only {names} handshakes in 4 s");
    // Redis comes back: a record is served within the longest wait (1 s),
    // the name's own error backoff (1 s) and a lookup.
    redis.start_server();
    let leaf = pki.leaf(&["back.example.com"], 3008);
    redis.put_leaf("back.example.com", &leaf);
    let t1 = std::time::Instant::now();
    let served = poll(Duration::from_secs(10), Duration::from_millis(100), || {
        Request::get("/")
            .sni("back.example.com")
            .https(nginx.port)
            .ok()
            .filter(|r| r.tls().leaf_serial == leaf.serial_hex)
            .map(|_| t1.elapsed())
    });
    assert!(
        served.is_some_and(|t| t < Duration::from_secs(3)),
        "served {served:?} after Redis came back:\n{}",
        tail(&nginx.error_log(), 20)
    );
    nginx.assert_healthy();
}
