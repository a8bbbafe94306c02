//! A command connection to Redis that goes silent is replaced: a NAT,
//! conntrack table or load balancer forgets the worker's idle command
//! connection while Redis, and the invalidation subscription (which PINGs),
//! are fine. Commands on the forgotten flow time out; the redis crate does
//! not reconnect after a timeout, so before this fix every uncached name
//! got the default certificate for as long as TCP kept the flow open (up
//! to a quarter of an hour), and the session ticket task stopped rotating.
//!
//! A real redis-server behind a TCP proxy in the test: once frozen, the
//! proxy stops forwarding (both ways) on every connection it accepted
//! before, except the one that sent SUBSCRIBE, and keeps them open; new
//! connections are forwarded as usual. The timeout is logged as a command
//! timeout on an open connection, not as a failure to connect.

use dyncert_testkit::blackhole::time_until_served;
use dyncert_testkit::*;
use std::time::{Duration, Instant};

/// nginx (one worker) whose Redis is behind `proxy`
/// ([`BlackholeProxy::nginx_behind`]), with its metrics port.
fn start(pki: &Pki, redis: &Redis, proxy: &BlackholeProxy, tickets: bool) -> (Nginx, u16) {
    let url = format!("redis://127.0.0.1:{}/0", proxy.port);
    proxy.nginx_behind(pki, &url, redis, tickets)
}

#[test]
fn a_name_is_served_within_seconds_after_the_command_connection_went_silent() {
    let pki = Pki::new();
    let redis = Redis::start();
    let proxy = BlackholeProxy::start(redis.port);
    let (nginx, mport) = start(&pki, &redis, &proxy, false);
    let warm = pki.leaf(&["warm.example.com"], 4001);
    redis.put_leaf("warm.example.com", &warm);
    let r = time_until_served(&nginx, "warm.example.com", &warm, Duration::from_secs(10));
    assert!(r.is_some(), "warm-up failed:\n{}", nginx.error_log());
    // The command connection and the subscription's.
    let before = proxy.accepted();
    assert_eq!(before, 2);

    proxy.freeze();
    let late = pki.leaf(&["late.example.com"], 4002);
    redis.put_leaf("late.example.com", &late);
    let served = time_until_served(&nginx, "late.example.com", &late, Duration::from_secs(15));
    let log = nginx.error_log();
    // One timeout (1 s), the name's error backoff (1 s), then a lookup on
    // the new connection.
    assert!(
        served.is_some_and(|t| t < Duration::from_secs(5)),
        "late.example.com not served from Redis within 5 s of the freeze (served after \
         {served:?}, {} connections accepted in all):\n{}",
        proxy.accepted(),
        tail(&log, 20)
    );
    // One new connection (the manager may retry connecting it on a
    // loaded machine), not one per lookup.
    let after = proxy.accepted();
    assert!(
        (before + 1..=before + 3).contains(&after),
        "{after} connections"
    );
    proxy.assert_command_timeout_logged(&nginx, mport);
}

#[test]
fn the_session_ticket_task_moves_to_a_new_connection_when_its_own_went_silent() {
    let pki = Pki::new();
    let redis = Redis::start();
    let proxy = BlackholeProxy::start(redis.port);
    let (nginx, mport) = start(&pki, &redis, &proxy, true);
    // The worker made the fleet's first key set.
    let made = poll(Duration::from_secs(10), Duration::from_millis(100), || {
        (scrape_metrics(mport).get("dyncert_ticket_key_rotations_total") == 1.0).then_some(())
    });
    assert!(made.is_some(), "no key set:\n{}", nginx.error_log());

    proxy.freeze();
    // The operator drops every key (after a leak): the next check on a
    // live connection makes a new set.
    redis.cmd(&["DEL", "dyncert:ticket-keys"]);
    let t0 = Instant::now();
    let rotated = poll(Duration::from_secs(15), Duration::from_millis(200), || {
        (scrape_metrics(mport).get("dyncert_ticket_key_rotations_total") == 2.0)
            .then(|| t0.elapsed())
    });
    assert!(
        rotated.is_some_and(|t| t < Duration::from_secs(5)),
        "no new key set within 5 s of the freeze (after {rotated:?}):\n{}",
        tail(&nginx.error_log(), 20)
    );
    assert!(matches!(
        redis.cmd(&["EXISTS", "dyncert:ticket-keys"]),
        Reply::Int(1)
    ));
    proxy.assert_command_timeout_logged(&nginx, mport);
}
