//! Invalidations lost while the subscription was down: once a worker has
//! subscribed again it re-checks everything it cached, so a renewal
//! published meanwhile is served within seconds of the subscription's
//! return, not when `valid` (1 h here) ends. Two ways of losing it: Redis
//! drops the subscriber (`CLIENT KILL TYPE pubsub`), and a silent
//! partition (a proxy that stops passing bytes without closing anything),
//! which only the subscription's PING notices.

use dyncert_testkit::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const CHANNEL: &str = "dyncert:invalidate";

/// valid=1h: only the re-check after the re-subscription can make a
/// worker fetch the name again within these tests.
fn http() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;",
        "    dyncert_redis_timeout 300ms;",
        "    dyncert_cache max=1000 valid=1h stale=1h negative=1h;",
        &source_server(" pid=$pid"),
    ])
}

const WORKERS: u32 = 2;
const DEADLINE: Duration = Duration::from_secs(10);
/// `dyncert_redis_timeout` above.
const REDIS_TIMEOUT: Duration = Duration::from_millis(300);
/// core/src/fetch/invalidate.rs: the longest wait between two attempts to
/// subscribe.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Every worker serves `leaf` for `name`.
fn served_everywhere(nginx: &Nginx, name: &str, leaf: &Leaf) -> bool {
    nginx
        .hit_every_worker(name, DEADLINE)
        .iter()
        .all(|r| r.tls().leaf_serial == leaf.serial_hex)
}

/// How long until every worker serves `leaf` for `name`, polling;
/// panics after `deadline`.
fn until_served_everywhere(nginx: &Nginx, name: &str, leaf: &Leaf, deadline: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if served_everywhere(nginx, name, leaf) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < deadline,
            "{name}: serial {} not served by every worker within {deadline:?}\n{}",
            leaf.serial_hex,
            nginx.logs()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn count_lines(nginx: &Nginx, part: &str) -> usize {
    nginx
        .error_log()
        .lines()
        .filter(|l| l.contains(part))
        .count()
}

#[test]
fn renewal_published_while_redis_dropped_the_subscription_is_served_once_it_returns() {
    lost_publish_is_made_up_for(&http(), 20001);
}

#[test]
fn with_a_shared_zone_a_lost_publish_is_made_up_for_in_every_worker() {
    // The zone's record was stored before the loss too: it must not pass
    // for a refresh (which records pass is core/src/worker.rs' business).
    let http = http().replace(
        "dyncert_redis @REDIS@;",
        "dyncert_redis @REDIS@; dyncert_shared_zone resub:1m;",
    );
    lost_publish_is_made_up_for(&http, 20003);
}

/// Caches a name in every worker, replaces its record and loses the
/// PUBLISH (the subscribers are killed first), then checks every worker
/// serves the new certificate soon after subscribing again.
fn lost_publish_is_made_up_for(http: &str, serial: u64) {
    let mut s = Stack::start(WORKERS, http);
    let name = "kept.example.com";
    let old = s.pki.leaf(&[name], serial);
    let new = s.pki.leaf(&[name], serial + 1);
    s.redis.put_leaf(name, &old);
    assert!(served_everywhere(&s.nginx, name, &old), "warm-up");
    assert!(s.redis.wait_subscribers(CHANNEL, WORKERS.into(), DEADLINE));

    s.redis.put_leaf(name, &new);
    // On one connection, back to back: the workers cannot subscribe again
    // between the two (they wait at least 100 ms), so the PUBLISH reaches
    // nobody.
    let mut conn = s.redis.connect();
    conn.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).unwrap();
    let killed = Instant::now();
    let reached = conn.cmd(&["PUBLISH", CHANNEL, name]).unwrap();
    assert!(matches!(reached, Reply::Int(0)), "the PUBLISH must be lost");
    assert!(
        s.redis.wait_subscribers(CHANNEL, WORKERS.into(), DEADLINE),
        "workers did not subscribe again\n{}",
        s.nginx.logs()
    );
    let resubscribed = killed.elapsed();
    let caught_up = until_served_everywhere(&s.nginx, name, &new, Duration::from_secs(5));
    eprintln!(
        "subscribed again {} ms after CLIENT KILL; new certificate on every worker {} ms later",
        resubscribed.as_millis(),
        caught_up.as_millis()
    );
    assert!(resubscribed < Duration::from_secs(2), "{resubscribed:?}");
    assert_eq!(count_lines(&s.nginx, "subscribed again"), WORKERS as usize);
    assert_eq!(
        count_lines(
            &s.nginx,
            "1 cached certificates are refreshed on their next use"
        ),
        WORKERS as usize,
        "{}",
        s.nginx.error_log()
    );
    assert!(count_lines(&s.nginx, "subscription closed while subscribed") >= 1);
    s.nginx.assert_healthy();
}

#[test]
fn a_silent_partition_is_noticed_by_ping_and_the_renewal_served_after_it_heals() {
    let pki = Pki::new();
    let redis = Redis::start();
    let proxy = Partition::start(redis.port);
    let mut nginx = Nginx::start(
        &pki,
        &http(),
        NginxOpts::new()
            .workers(WORKERS)
            .var("REDIS", format!("redis://127.0.0.1:{}/0", proxy.port)),
    );
    let name = "cut.example.com";
    let old = pki.leaf(&[name], 20011);
    let new = pki.leaf(&[name], 20012);
    redis.put_leaf(name, &old);
    assert!(served_everywhere(&nginx, name, &old), "warm-up");
    assert!(redis.wait_subscribers(CHANNEL, WORKERS.into(), DEADLINE));

    proxy.cut(true);
    let cut = Instant::now();
    redis.put_leaf(name, &new);
    // Redis still counts the subscribers (the proxy holds their
    // connections open): the message goes into the void.
    assert_eq!(redis.publish(CHANNEL, name), i64::from(WORKERS));
    // Nothing closed, nothing answers: each worker finds out from its PING.
    let noticed = poll(DEADLINE, Duration::from_millis(10), || {
        (count_lines(&nginx, "redis PING timed out") >= WORKERS as usize).then(|| cut.elapsed())
    })
    .unwrap_or_else(|| panic!("no PING timeout logged\n{}", nginx.logs()));
    // Cached names are served all along.
    assert!(
        served_everywhere(&nginx, name, &old),
        "during the partition"
    );
    // Longer than several re-subscription attempts.
    thread::sleep(Duration::from_secs(3).saturating_sub(cut.elapsed()));
    assert!(served_everywhere(&nginx, name, &old), "still cut");

    proxy.cut(false);
    let caught_up = until_served_everywhere(&nginx, name, &new, Duration::from_secs(5));
    eprintln!(
        "PING timeouts logged {} ms after the cut; new certificate on every worker {} ms after the heal",
        noticed.as_millis(),
        caught_up.as_millis()
    );
    // Detection: one PING interval plus its timeout (2 x 300 ms), plus
    // scheduling slack.
    assert!(
        noticed <= 2 * REDIS_TIMEOUT + Duration::from_millis(500),
        "{noticed:?}"
    );
    // Catch-up: the longest backoff, a subscribe, one fetch, plus slack.
    assert!(
        caught_up <= BACKOFF_MAX + 3 * REDIS_TIMEOUT + Duration::from_millis(700),
        "{caught_up:?}"
    );
    assert!(count_lines(&nginx, "subscribed again") >= WORKERS as usize);
    nginx.assert_healthy();
}

/// A TCP proxy to Redis that can stop passing bytes, in both directions
/// and on every connection, old or new, without closing anything: what a
/// partition looks like to both ends. Bytes sent meanwhile are delivered
/// when it heals, as TCP's retransmissions would, unless their
/// connection was closed by then.
struct Partition {
    port: u16,
    cut: Arc<AtomicBool>,
}

impl Partition {
    fn start(upstream: u16) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let c = cut.clone();
        thread::spawn(move || {
            for down in listener.incoming() {
                let Ok(down) = down else { return };
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                for (from, to) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    let c = c.clone();
                    thread::spawn(move || pump(from, to, &c));
                }
            }
        });
        Partition { port, cut }
    }

    fn cut(&self, on: bool) {
        self.cut.store(on, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` while not cut; at the end of either, closes both.
fn pump(mut from: TcpStream, mut to: TcpStream, cut: &AtomicBool) {
    from.set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if cut.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(5));
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        // Read just as the cut began: held until it heals.
        while cut.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(5));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
