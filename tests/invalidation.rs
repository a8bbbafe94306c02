//! Invalidation without reload: a name published on the Redis channel is
//! dropped in every worker of every nginx, `*` drops everything, a wildcard
//! drops the wildcard entry and the names served from it, and a renewed
//! record is served everywhere within 1 s of the PUBLISH. The subscription
//! survives a Redis restart.

use dyncert_testkit::*;
use std::thread;
use std::time::{Duration, Instant};

const CHANNEL: &str = "dyncert:invalidate";

/// Long TTLs: only an invalidation can make a worker fetch again.
fn http() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;\n    dyncert_cache max=1000 valid=1h stale=1h negative=1h;",
        SOURCE_SERVER,
    ])
}

const WORKERS: u32 = 2;
const DEADLINE: Duration = Duration::from_secs(10);

/// Every worker of `nginx` serves `leaf` for `name` (hits all of them).
fn assert_everywhere(nginx: &Nginx, pki: &Pki, name: &str, leaf: &Leaf, when: &str) {
    for r in nginx.hit_every_worker(name, DEADLINE) {
        assert_eq!(
            r.tls().leaf_serial,
            leaf.serial_hex,
            "{when}: worker {} served serial {} for {name} (body {:?})",
            r.pid(),
            r.tls().leaf_serial,
            r.body
        );
        r.assert_served(leaf, pki);
    }
}

fn wait_subscribed(redis: &Redis, n: i64) {
    assert!(
        redis.wait_subscribers(CHANNEL, n, DEADLINE),
        "{} subscribers on {CHANNEL}, expected {n} (one per worker)",
        redis.subscribers(CHANNEL)
    );
}

/// PUBLISH, then wait out the 1 s the workers have to act on it.
fn publish_and_wait(redis: &Redis, message: &str, expected_receivers: i64) {
    let sent = Instant::now();
    let got = redis.publish(CHANNEL, message);
    assert!(
        got >= expected_receivers,
        "PUBLISH {message} reached {got} subscribers, expected {expected_receivers}"
    );
    thread::sleep(Duration::from_secs(1).saturating_sub(sent.elapsed()));
}

#[test]
fn published_name_is_renewed_in_every_worker_within_1s() {
    let mut s = Stack::start(WORKERS, &http());
    let old = s.pki.leaf(&["shop.example.com"], 10001);
    let new = s.pki.leaf(&["shop.example.com"], 10002);
    let bystander_old = s.pki.leaf(&["bystander.example.com"], 10003);
    let bystander_new = s.pki.leaf(&["bystander.example.com"], 10004);
    s.redis.put_leaf("shop.example.com", &old);
    s.redis.put_leaf("bystander.example.com", &bystander_old);
    assert_everywhere(&s.nginx, &s.pki, "shop.example.com", &old, "warm-up");
    assert_everywhere(
        &s.nginx,
        &s.pki,
        "bystander.example.com",
        &bystander_old,
        "warm-up",
    );
    wait_subscribed(&s.redis, WORKERS.into());

    // Renewed in Redis, not yet published: the caches still hold the old
    // one (so what follows is the PUBLISH's doing, not a TTL's).
    s.redis.put_leaf("shop.example.com", &new);
    s.redis.put_leaf("bystander.example.com", &bystander_new);
    assert_everywhere(&s.nginx, &s.pki, "shop.example.com", &old, "before PUBLISH");

    publish_and_wait(&s.redis, "shop.example.com", WORKERS.into());
    assert_everywhere(
        &s.nginx,
        &s.pki,
        "shop.example.com",
        &new,
        "1s after PUBLISH",
    );
    // Only the published name was dropped.
    assert_everywhere(
        &s.nginx,
        &s.pki,
        "bystander.example.com",
        &bystander_old,
        "after PUBLISH of another name",
    );
    s.nginx.assert_healthy();
}

#[test]
fn published_star_drops_every_name() {
    let mut s = Stack::start(WORKERS, &http());
    let names = ["a.example.com", "b.example.org"];
    let olds: Vec<Leaf> = names
        .iter()
        .zip(10010..)
        .map(|(n, serial)| s.pki.leaf(&[n], serial))
        .collect();
    let news: Vec<Leaf> = names
        .iter()
        .zip(10020..)
        .map(|(n, serial)| s.pki.leaf(&[n], serial))
        .collect();
    for (n, l) in names.iter().zip(&olds) {
        s.redis.put_leaf(n, l);
        assert_everywhere(&s.nginx, &s.pki, n, l, "warm-up");
    }
    wait_subscribed(&s.redis, WORKERS.into());
    for (n, l) in names.iter().zip(&news) {
        s.redis.put_leaf(n, l);
    }
    publish_and_wait(&s.redis, "*", WORKERS.into());
    for (n, l) in names.iter().zip(&news) {
        assert_everywhere(&s.nginx, &s.pki, n, l, "1s after PUBLISH *");
    }
    s.nginx.assert_healthy();
}

#[test]
fn published_wildcard_drops_the_wildcard_entry_and_names_served_from_it() {
    let mut s = Stack::start(WORKERS, &http());
    let old = s.pki.leaf(&["*.example.com"], 10030);
    let new = s.pki.leaf(&["*.example.com"], 10031);
    let exact = s.pki.leaf(&["shop.example.com"], 10032);
    let other_old = s.pki.leaf(&["other.example.net"], 10033);
    let other_new = s.pki.leaf(&["other.example.net"], 10034);
    s.redis.put_leaf("*.example.com", &old);
    s.redis.put_leaf("shop.example.com", &exact);
    s.redis.put_leaf("other.example.net", &other_old);
    // The exact name first: that the first handshake of a name with an
    // exact record never gets a cached wildcard is wildcards.rs' business.
    assert_everywhere(&s.nginx, &s.pki, "shop.example.com", &exact, "warm-up");
    for n in ["x.example.com", "y.example.com"] {
        assert_everywhere(&s.nginx, &s.pki, n, &old, "warm-up");
    }
    assert_everywhere(&s.nginx, &s.pki, "other.example.net", &other_old, "warm-up");
    wait_subscribed(&s.redis, WORKERS.into());

    s.redis.put_leaf("*.example.com", &new);
    s.redis.put_leaf("other.example.net", &other_new);
    publish_and_wait(&s.redis, "*.example.com", WORKERS.into());
    // The exact record still wins over the wildcard (asked first again, for
    // the reason above).
    assert_everywhere(
        &s.nginx,
        &s.pki,
        "shop.example.com",
        &exact,
        "after PUBLISH",
    );
    for n in ["x.example.com", "y.example.com"] {
        assert_everywhere(&s.nginx, &s.pki, n, &new, "1s after PUBLISH *.example.com");
    }
    // A name outside the wildcard keeps its cached certificate.
    assert_everywhere(
        &s.nginx,
        &s.pki,
        "other.example.net",
        &other_old,
        "after PUBLISH *.example.com",
    );
    s.nginx.assert_healthy();
}

#[test]
fn invalidation_reaches_every_nginx_sharing_redis() {
    let pki = Pki::new();
    let redis = Redis::start();
    let mut fleet: Vec<Nginx> = (0..2)
        .map(|_| {
            Nginx::start(
                &pki,
                &http(),
                NginxOpts::new().workers(WORKERS).redis(&redis),
            )
        })
        .collect();
    let old = pki.leaf(&["fleet.example.com"], 10040);
    let new = pki.leaf(&["fleet.example.com"], 10041);
    redis.put_leaf("fleet.example.com", &old);
    for n in &fleet {
        assert_everywhere(n, &pki, "fleet.example.com", &old, "warm-up");
    }
    let all_workers = i64::from(WORKERS) * fleet.len() as i64;
    wait_subscribed(&redis, all_workers);

    redis.put_leaf("fleet.example.com", &new);
    publish_and_wait(&redis, "fleet.example.com", all_workers);
    for n in &fleet {
        assert_everywhere(n, &pki, "fleet.example.com", &new, "1s after PUBLISH");
    }
    for n in &mut fleet {
        n.assert_healthy();
    }
}

#[test]
fn subscription_survives_a_redis_restart() {
    let mut s = Stack::start(WORKERS, &http());
    let old = s.pki.leaf(&["phoenix.example.com"], 10050);
    let new = s.pki.leaf(&["phoenix.example.com"], 10051);
    s.redis.put_leaf("phoenix.example.com", &old);
    assert_everywhere(&s.nginx, &s.pki, "phoenix.example.com", &old, "warm-up");
    wait_subscribed(&s.redis, WORKERS.into());

    s.redis.stop();
    // Cached names keep being served while Redis is away.
    assert_everywhere(&s.nginx, &s.pki, "phoenix.example.com", &old, "Redis down");
    s.redis.start_server();
    // The new server starts empty: every worker must subscribe again.
    assert!(
        s.redis
            .wait_subscribers(CHANNEL, WORKERS.into(), Duration::from_secs(15)),
        "workers did not re-subscribe within 15s of the Redis restart ({} subscribers)\n{}",
        s.redis.subscribers(CHANNEL),
        s.nginx.logs()
    );
    s.redis.put_leaf("phoenix.example.com", &new);
    publish_and_wait(&s.redis, "phoenix.example.com", WORKERS.into());
    assert_everywhere(
        &s.nginx,
        &s.pki,
        "phoenix.example.com",
        &new,
        "1s after PUBLISH",
    );
    s.nginx.assert_healthy();
}

#[test]
fn custom_invalidate_channel_is_the_only_one_listened_to() {
    let mut s = Stack::start(
        WORKERS,
        &http().replace(
            "dyncert_redis @REDIS@;",
            "dyncert_redis @REDIS@; dyncert_invalidate_channel tenants:flush;",
        ),
    );
    let old = s.pki.leaf(&["custom.example.com"], 10060);
    let new = s.pki.leaf(&["custom.example.com"], 10061);
    s.redis.put_leaf("custom.example.com", &old);
    assert_everywhere(&s.nginx, &s.pki, "custom.example.com", &old, "warm-up");
    assert!(
        s.redis
            .wait_subscribers("tenants:flush", WORKERS.into(), DEADLINE),
        "workers did not subscribe to tenants:flush ({})",
        s.redis.subscribers("tenants:flush")
    );
    assert_eq!(
        s.redis.subscribers(CHANNEL),
        0,
        "still on the default channel"
    );

    s.redis.put_leaf("custom.example.com", &new);
    let sent = Instant::now();
    assert!(s.redis.publish("tenants:flush", "custom.example.com") >= WORKERS.into());
    thread::sleep(Duration::from_secs(1).saturating_sub(sent.elapsed()));
    assert_everywhere(
        &s.nginx,
        &s.pki,
        "custom.example.com",
        &new,
        "1s after PUBLISH",
    );
    s.nginx.assert_healthy();
}
