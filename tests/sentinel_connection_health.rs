//! The connection to a Sentinel-managed primary that goes silent is
//! replaced: a NAT, conntrack table or load balancer between the worker
//! and the primary forgets the idle command connection while the primary,
//! the sentinels and the invalidation subscription are fine. Before this
//! fix the module kept the forgotten connection for as long as the
//! sentinels named the same primary (every caller's own timeout dropped
//! the command before the connection could be dropped), so every
//! uncached name got the default certificate for as long as TCP kept the
//! flow open (regression test for the sources audit's finding 3, under
//! Sentinel; see tests/redis_connection_health.rs for one server).
//!
//! Real parts: a redis-server, three real sentinels and nginx. The
//! sentinels monitor the primary at the address of a TCP proxy in the
//! test (`SENTINEL MONITOR ... 127.0.0.1 <proxy port>`), so the module
//! reaches the primary through the proxy, as it would through a load
//! balancer or a NAT. Once frozen, the proxy stops forwarding (both ways)
//! on every connection it accepted before, except the ones that sent
//! SUBSCRIBE, and keeps them open; new connections are forwarded as
//! usual. The sentinels' own links to the primary freeze too, but their
//! `down-after-milliseconds` is a minute: they neither notice nor fail
//! over during the test.

use dyncert_testkit::blackhole::time_until_served;
use dyncert_testkit::*;
use std::thread;
use std::time::{Duration, Instant};

/// A primary the sentinels name at the proxy's address (no replica: no
/// failover is wanted here).
struct Deployment {
    primary: Redis,
    proxy: BlackholeProxy,
    sentinels: Vec<Redis>,
}

impl Deployment {
    fn start() -> Deployment {
        let primary = Redis::start();
        let proxy = BlackholeProxy::start(primary.port);
        let sentinels = sentinels_naming(proxy.port);
        Deployment {
            primary,
            proxy,
            sentinels,
        }
    }

    fn url(&self) -> String {
        let nodes: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("sentinel://{}/{SENTINEL_SERVICE}/0", nodes.join(","))
    }
}

/// nginx (one worker) whose primary is behind the proxy
/// ([`BlackholeProxy::nginx_behind`]), with its metrics port.
fn start_nginx(pki: &Pki, d: &Deployment, tickets: bool) -> (Nginx, u16) {
    d.proxy.nginx_behind(pki, &d.url(), &d.primary, tickets)
}

#[test]
fn a_name_is_served_within_seconds_after_the_primary_connection_went_silent() {
    let pki = Pki::new();
    let d = Deployment::start();
    let (nginx, mport) = start_nginx(&pki, &d, false);
    let warm = pki.leaf(&["warm.example.com"], 4101);
    d.primary.put_leaf("warm.example.com", &warm);
    let r = time_until_served(&nginx, "warm.example.com", &warm, Duration::from_secs(10));
    assert!(r.is_some(), "warm-up failed:\n{}", nginx.error_log());

    d.proxy.freeze();
    let late = pki.leaf(&["late.example.com"], 4102);
    d.primary.put_leaf("late.example.com", &late);
    // Past the once-a-second primary check: the lookup asks the sentinels
    // before its command, so its own timeout (started first) ends the wait
    // before the crate's would, as it mostly does in production. (When the
    // crate's timeout wins, the code before the fix dropped the connection,
    // logging a connect failure.)
    thread::sleep(Duration::from_millis(1500));
    let served = time_until_served(&nginx, "late.example.com", &late, Duration::from_secs(15));
    let log = nginx.error_log();
    // One timeout (1 s), the name's error backoff (1 s), then a lookup on
    // the new connection (the sentinels asked again first).
    assert!(
        served.is_some_and(|t| t < Duration::from_secs(5)),
        "late.example.com not served from Redis within 5 s of the freeze (served after \
         {served:?}):\n{}",
        tail(&log, 20)
    );

    d.proxy.assert_command_timeout_logged(&nginx, mport);
}

#[test]
fn the_session_ticket_task_moves_to_a_new_primary_connection_when_its_own_went_silent() {
    let pki = Pki::new();
    let d = Deployment::start();
    let (nginx, mport) = start_nginx(&pki, &d, true);
    // The worker made the fleet's first key set.
    let made = poll(Duration::from_secs(10), Duration::from_millis(100), || {
        (scrape_metrics(mport).get("dyncert_ticket_key_rotations_total") == 1.0).then_some(())
    });
    assert!(made.is_some(), "no key set:\n{}", nginx.error_log());

    d.proxy.freeze();
    // The operator drops every key (after a leak): the next check on a
    // live connection makes a new set.
    d.primary.cmd(&["DEL", "dyncert:ticket-keys"]);
    let t0 = Instant::now();
    let rotated = poll(Duration::from_secs(15), Duration::from_millis(200), || {
        (scrape_metrics(mport).get("dyncert_ticket_key_rotations_total") == 2.0)
            .then(|| t0.elapsed())
    });
    assert!(
        rotated.is_some_and(|t| t < Duration::from_secs(6)),
        "no new key set within 6 s of the freeze (after {rotated:?}):\n{}",
        tail(&nginx.error_log(), 20)
    );
    assert!(matches!(
        d.primary.cmd(&["EXISTS", "dyncert:ticket-keys"]),
        Reply::Int(1)
    ));
    d.proxy.assert_command_timeout_logged(&nginx, mport);
}

#[test]
fn a_worker_asks_the_sentinels_every_second_without_reconnecting_to_the_primary() {
    let pki = Pki::new();
    let d = Deployment::start();
    let (nginx, _) = start_nginx(&pki, &d, false);
    let warm = pki.leaf(&["warm.example.com"], 4103);
    d.primary.put_leaf("warm.example.com", &warm);
    let r = time_until_served(&nginx, "warm.example.com", &warm, Duration::from_secs(10));
    assert!(r.is_some(), "warm-up failed:\n{}", nginx.error_log());
    // The lookups' commands on the primary.
    let lookups = |d: &Deployment| d.primary.calls("eval_ro") + d.primary.calls("hmget");
    let (accepted, looked_up) = (d.proxy.accepted(), lookups(&d));

    // Four seconds of lookups (a name Redis does not hold every 200 ms):
    // past four of the lookups' once-a-second checks of the primary, and
    // four of the subscription's. Before the fix each check connected to
    // the primary (TCP, and TLS where configured) to ask its ROLE, then
    // dropped the connection: one or two connections per worker per
    // second, for the life of the worker.
    let t0 = Instant::now();
    let mut i = 0;
    while t0.elapsed() < Duration::from_secs(4) {
        let _ = Request::get("/")
            .sni(&format!("n{i}.example.com"))
            .https(nginx.port);
        i += 1;
        thread::sleep(Duration::from_millis(200));
    }
    // The lookups reached the primary (each one checks, once a second,
    // whether the sentinels still name it).
    let looked_up = lookups(&d) - looked_up;
    assert!(looked_up >= 10, "{looked_up} lookups on the primary in 4 s");
    assert_eq!(
        d.proxy.accepted(),
        accepted,
        "connections to the primary during 4 s of lookups:\n{}",
        tail(&nginx.error_log(), 20)
    );
}

/// Connections the sentinels have accepted in all, less the ones these
/// questions take.
fn sentinel_connections(d: &Deployment) -> u64 {
    d.sentinels.iter().map(Redis::connections_received).sum()
}

/// The ids of the subscriptions on the primary that are not the
/// sentinels' own (`__sentinel__:hello`): the worker's.
fn worker_subscriptions(d: &Deployment) -> Vec<String> {
    let clients = match d.primary.cmd(&["CLIENT", "LIST", "TYPE", "pubsub"]) {
        Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("CLIENT LIST: {other:?}"),
    };
    clients
        .lines()
        .filter(|l| !l.contains("name=sentinel-"))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

/// Closes the worker's subscription on the primary, and waits until it
/// subscribed again.
fn kill_subscription(d: &Deployment, nginx: &Nginx) {
    let ids = worker_subscriptions(d);
    assert_eq!(ids.len(), 1, "the worker's subscription: {ids:?}");
    d.primary.cmd(&["CLIENT", "KILL", "ID", &ids[0]]);
    let again = poll(Duration::from_secs(10), Duration::from_millis(50), || {
        let now = worker_subscriptions(d);
        (now.len() == 1 && now != ids).then_some(())
    });
    assert!(
        again.is_some(),
        "not subscribed again:\n{}",
        tail(&nginx.error_log(), 20)
    );
}

#[test]
fn a_worker_subscribes_again_over_the_sentinel_connections_it_has() {
    let pki = Pki::new();
    let d = Deployment::start();
    let (nginx, mport) = start_nginx(&pki, &d, false);
    // Past the subscription's first once-a-second check of the primary:
    // every connection the worker keeps to the sentinels is made. And the
    // sentinels have found each other (they link up through the primary's
    // hello channel, within seconds of starting), so that the count below
    // is the worker's.
    thread::sleep(Duration::from_millis(1500));
    let linked = poll(Duration::from_secs(15), Duration::from_millis(100), || {
        d.sentinels
            .iter()
            .all(|s| match s.cmd(&["CLIENT", "LIST"]) {
                Reply::Bulk(Some(b)) => {
                    String::from_utf8_lossy(&b)
                        .matches("name=sentinel-")
                        .count()
                        >= d.sentinels.len() - 1
                }
                _ => false,
            })
            .then_some(())
    });
    assert!(linked.is_some(), "the sentinels did not link up");
    let before = sentinel_connections(&d);
    for _ in 0..3 {
        kill_subscription(&d, &nginx);
    }
    thread::sleep(Duration::from_millis(1500));
    // Before: each subscription asked the sentinels over a set of new
    // connections it dropped once subscribed, and watched the primary over
    // another new set: 6 new connections per subscription (18 here).
    // Less the connections the first count took (one per sentinel).
    let made = sentinel_connections(&d) - before - d.sentinels.len() as u64;
    assert_eq!(
        made,
        0,
        "new connections to the sentinels for 3 subscriptions:\n{}",
        tail(&nginx.error_log(), 20)
    );
    let m = scrape_metrics(mport);
    assert!(m.get("dyncert_redis_resubscribes_total") >= 3.0);
}
