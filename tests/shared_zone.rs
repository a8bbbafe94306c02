//! `dyncert_shared_zone`: one store per host. A name one worker fetched is
//! loaded by the others from the zone (no Redis command), survives a
//! worker killed and respawned and a reload that keeps the zone, leaves it
//! when invalidated (by a `*.parent` only one label below the parent; also
//! when a worker that has not yet applied the invalidation finishes a
//! lookup that read the old record, when the name is deleted, and after a
//! lost subscription), is emptied by a reload that changes what admitted
//! its records, and a zone too small for the names evicts its least
//! recently used records without failing a handshake, while a record
//! bigger than the whole zone is served but evicts nothing.

use dyncert_testkit::*;
use std::collections::BTreeMap;
use std::time::Duration;

fn http() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;\n    dyncert_shared_zone dyncert:@ZONE@;\n    \
         dyncert_cache @CACHE@;",
        METRICS_SERVER,
        SOURCE_SERVER,
    ])
}

struct Host {
    s: Stack,
    mport: u16,
}

fn start(workers: u32, zone: &str, cache: &str) -> Host {
    let mport = free_port();
    let s = Stack::start_with(
        &http(),
        NginxOpts::new()
            .workers(workers)
            .var("MPORT", mport)
            .var("ZONE", zone)
            .var("CACHE", cache),
    );
    Host { s, mport }
}

impl Host {
    fn metric(&self, key: &str) -> f64 {
        scrape_metrics(self.mport).get(key)
    }
}

/// How many handshakes of each worker reported each source for `name`
/// (a burst reaches every worker; a worker's first use of an entry reports
/// where it came from, every later one `cache`).
fn sources_per_worker(h: &Host, name: &str) -> BTreeMap<u32, BTreeMap<String, usize>> {
    let mut seen: BTreeMap<u32, BTreeMap<String, usize>> = BTreeMap::new();
    for r in h.s.nginx.hit_every_worker(name, STARTUP_DEADLINE) {
        *seen
            .entry(r.pid())
            .or_default()
            .entry(r.source().to_owned())
            .or_default() += 1;
    }
    seen
}

/// True when the worker's handshakes were served from the zone once and
/// from its own cache otherwise: never fetched.
fn loaded_from_the_zone(sources: &BTreeMap<String, usize>) -> bool {
    sources.get("shared") == Some(&1) && sources.keys().all(|s| s == "shared" || s == "cache")
}

#[test]
fn four_workers_share_one_fetch() {
    let mut h = start(4, "8m", "max=1000");
    let leaf = h.s.pki.leaf(&["shared.example.com"], 9001);
    h.s.redis.put_leaf("shared.example.com", &leaf);
    let monitor = h.s.redis.monitor();

    // One worker fetches it (one connection, so one worker).
    let r = h.s.get(Some("shared.example.com"));
    r.assert_served(&leaf, &h.s.pki);
    assert_eq!(r.source(), "redis", "{:?}", r.body);
    let fetcher = r.pid();
    // Every other worker's first handshake for it is served from the zone.
    let seen = sources_per_worker(&h, "shared.example.com");
    assert_eq!(seen.len(), 4, "{seen:?}");
    for (pid, sources) in &seen {
        if *pid == fetcher {
            assert!(sources.keys().all(|s| s == "cache"), "{seen:?}");
        } else {
            assert!(loaded_from_the_zone(sources), "worker {pid}: {seen:?}");
        }
    }
    monitor.sync();
    assert_eq!(
        monitor.fetches_of("shared.example.com"),
        1,
        "one Redis read for the whole host:\n{}",
        monitor.dump()
    );
    assert_eq!(h.metric("dyncert_shared_loads_total"), 3.0);
    assert_eq!(h.metric("dyncert_shared_zone_records"), 1.0);
    assert_eq!(h.metric("dyncert_handshakes_total{source=\"shared\"}"), 3.0);
    h.s.nginx.assert_healthy();
}

#[test]
fn a_wildcard_invalidation_drops_only_the_zone_records_one_label_below() {
    let mut h = start(1, "8m", "max=1000");
    let names = [
        "a.example.com",
        "b.example.com",
        "example.com",
        "x.a.example.com",
        "myexample.com",
        "a.example.org",
    ];
    for (n, serial) in names.into_iter().zip(9300..) {
        let l = h.s.pki.leaf(&[n], serial);
        h.s.redis.put_leaf(n, &l);
        h.s.get(Some(n)).assert_served(&l, &h.s.pki);
    }
    assert_eq!(h.metric("dyncert_shared_zone_records"), 6.0);
    h.s.redis.publish("dyncert:invalidate", "*.example.com");
    poll(STARTUP_DEADLINE, Duration::from_millis(20), || {
        (h.metric("dyncert_shared_zone_records") <= 4.0).then_some(())
    })
    .expect("the zone drops the names below example.com");
    // The parent, a name two labels below and one that merely ends with
    // the parent's text stay.
    assert_eq!(h.metric("dyncert_shared_zone_records"), 4.0);
    h.s.nginx.assert_healthy();
}

#[test]
fn a_respawned_worker_and_a_reload_find_the_zone_intact() {
    let mut h = start(2, "8m", "max=1000");
    let leaf = h.s.pki.leaf(&["kept.example.com"], 9002);
    h.s.redis.put_leaf("kept.example.com", &leaf);
    sources_per_worker(&h, "kept.example.com");
    let monitor = h.s.redis.monitor();

    // A worker killed with SIGKILL: the master forks a new one, whose
    // first handshake loads the record from the zone.
    let before = h.s.nginx.worker_pids();
    let victim = *before.iter().next().unwrap();
    assert!(signal(victim, libc::SIGKILL));
    h.s.nginx.expect_log("exited on signal 9");
    let respawned = poll(STARTUP_DEADLINE, Duration::from_millis(20), || {
        let pids = h.s.nginx.worker_pids();
        (pids.len() == 2 && !pids.contains(&victim)).then_some(pids)
    })
    .expect("the master respawns the worker");
    let seen = sources_per_worker(&h, "kept.example.com");
    for pid in &respawned {
        if before.contains(pid) {
            assert!(seen[pid].keys().all(|s| s == "cache"), "{seen:?}");
        } else {
            assert!(
                loaded_from_the_zone(&seen[pid]),
                "new worker {pid}: {seen:?}"
            );
        }
    }
    // A reload that keeps the zone: the new workers load from it too.
    h.s.nginx.reload();
    let seen = sources_per_worker(&h, "kept.example.com");
    assert!(seen.values().all(loaded_from_the_zone), "{seen:?}");
    monitor.sync();
    assert_eq!(
        monitor.fetches_of("kept.example.com"),
        0,
        "{}",
        monitor.dump()
    );
    h.s.nginx.assert_healthy();
}

#[test]
fn an_invalidation_clears_the_zone_and_the_next_handshake_fetches_again() {
    let mut h = start(2, "8m", "max=1000");
    let old = h.s.pki.leaf(&["renewed.example.com"], 9003);
    h.s.redis.put_leaf("renewed.example.com", &old);
    sources_per_worker(&h, "renewed.example.com");
    assert_eq!(h.metric("dyncert_shared_zone_records"), 1.0);

    let new = h.s.pki.leaf(&["renewed.example.com"], 9004);
    h.s.redis.put_leaf("renewed.example.com", &new);
    h.s.redis
        .publish("dyncert:invalidate", "renewed.example.com");
    poll(STARTUP_DEADLINE, Duration::from_millis(20), || {
        (h.metric("dyncert_shared_zone_records") == 0.0).then_some(())
    })
    .expect("the zone drops the record");
    // Each worker applies the message on its own: a handshake a worker
    // takes before it has may still get its cached copy.
    poll(STARTUP_DEADLINE, Duration::from_millis(20), || {
        let log = h.s.nginx.error_log();
        (log.matches("invalidated \"renewed.example.com\" as published")
            .count()
            >= 2)
            .then_some(())
    })
    .expect("both workers apply the invalidation");
    for r in
        h.s.nginx
            .hit_every_worker("renewed.example.com", STARTUP_DEADLINE)
    {
        r.assert_served(&new, &h.s.pki);
    }
    h.s.nginx.assert_healthy();
}

#[test]
fn a_name_deleted_from_redis_is_not_loaded_back_from_the_zone() {
    // One worker, a hot set of one: a name the worker does not hold is
    // looked up in the zone first.
    let mut h = start(1, "8m", "max=1 valid=1s stale=1h negative=1s");
    let leaf = h.s.pki.leaf(&["gone.example.com"], 9005);
    h.s.redis.put_leaf("gone.example.com", &leaf);
    h.s.get(Some("gone.example.com"))
        .assert_served(&leaf, &h.s.pki);
    // The customer leaves: the record is deleted, no invalidation.
    h.s.redis.cmd(&["DEL", "dyncert:cert:gone.example.com"]);
    std::thread::sleep(Duration::from_millis(1200));
    // Past valid: the refresh this handshake starts says NotFound.
    h.s.get(Some("gone.example.com"));
    poll(STARTUP_DEADLINE, Duration::from_millis(20), || {
        (h.metric("dyncert_shared_zone_records") == 0.0).then_some(())
    })
    .expect("the refresh that found the name deleted drops the zone's record");
    // Once the negative entry has ended, the name is looked up again and
    // gets the default, not the deleted certificate out of the zone.
    std::thread::sleep(Duration::from_millis(1200));
    h.s.get(Some("gone.example.com")).assert_default();
    h.s.nginx.assert_healthy();
}

#[test]
fn a_record_from_before_a_lost_subscription_is_fetched_again_not_loaded() {
    // A hot set of one, so the name lives only in the zone.
    let mut h = start(1, "8m", "max=1 valid=1h stale=1h");
    assert!(h
        .s
        .redis
        .wait_subscribers("dyncert:invalidate", 1, STARTUP_DEADLINE));
    let name = "renewed.example.com";
    let old = h.s.pki.leaf(&[name], 9006);
    let new = h.s.pki.leaf(&[name], 9007);
    let other = h.s.pki.leaf(&["other.example.com"], 9008);
    h.s.redis.put_leaf(name, &old);
    h.s.redis.put_leaf("other.example.com", &other);
    h.s.get(Some(name)).assert_served(&old, &h.s.pki);
    h.s.get(Some("other.example.com"))
        .assert_served(&other, &h.s.pki);
    // The subscription is lost; the renewal is stored and published while
    // nobody listens, so the zone keeps the old record.
    let key = format!("dyncert:cert:{name}");
    let replies = h.s.redis.pipeline([
        encode_command(&["CLIENT", "KILL", "TYPE", "pubsub"]),
        encode_command(&["HSET", &key, "crt", &new.chain_pem, "key", &new.key_pem]),
        encode_command(&["PUBLISH", "dyncert:invalidate", name]),
    ]);
    assert_eq!(replies[2], Reply::Int(0), "nobody heard the message");
    poll(STARTUP_DEADLINE, Duration::from_millis(20), || {
        (h.metric("dyncert_redis_resubscribes_total") >= 1.0).then_some(())
    })
    .expect("subscribed again");
    assert_eq!(h.metric("dyncert_shared_zone_records"), 2.0);
    // The zone's record predates the re-subscription: Redis is asked.
    let r = h.s.get(Some(name));
    r.assert_served(&new, &h.s.pki);
    assert_eq!(r.source(), "redis");
    h.s.nginx.assert_healthy();
}

#[test]
fn a_reload_that_changes_the_sources_or_deadlines_empties_the_zone() {
    let mut h = start(1, "8m", "max=1000 valid=1h stale=1h");
    let name = "moved.example.com";
    let a = h.s.pki.leaf(&[name], 9009);
    let b = h.s.pki.leaf(&[name], 9010);
    h.s.redis.put_leaf(name, &a);
    h.s.redis
        .hset_cert_key(&format!("b:{name}"), &b.chain_pem, &b.key_pem);
    h.s.get(Some(name)).assert_served(&a, &h.s.pki);
    // Same configuration: the zone is kept.
    h.s.nginx.reload();
    let r = h.s.get(Some(name));
    r.assert_served(&a, &h.s.pki);
    assert_eq!(r.source(), "shared");
    // Another key prefix: what the old one admitted is not served.
    let prefixed = http().replace(
        "dyncert_cache @CACHE@;",
        "dyncert_cache @CACHE@;\n    dyncert_redis_prefix b:;",
    );
    h.s.nginx.write_http(&prefixed);
    h.s.nginx.reload();
    let r = h.s.get(Some(name));
    r.assert_served(&b, &h.s.pki);
    assert_eq!(r.source(), "redis");
    assert!(h
        .s
        .nginx
        .error_log()
        .contains("shared zone's 1 records were fetched under another configuration"));
    // Shorter deadlines: emptied too (a record keeps the deadlines it was
    // fetched with).
    let shorter = prefixed.replace("@CACHE@", "max=1000 valid=1h stale=1s");
    h.s.nginx.write_http(&shorter);
    h.s.nginx.reload();
    let r = h.s.get(Some(name));
    r.assert_served(&b, &h.s.pki);
    assert_eq!(r.source(), "redis");
    h.s.nginx.assert_healthy();
}

/// [`http`] with the certificate API behind Redis.
fn http_api() -> String {
    let redis = "    dyncert_redis @REDIS@;\n";
    let http = http();
    assert!(http.contains(redis));
    http.replacen(
        redis,
        &format!(
            "{redis}    dyncert_api @API@ writeback=1h;\n    dyncert_api_timeout 2s;\n    \
             dyncert_fetch_timeout 3s;\n"
        ),
        1,
    )
}

/// Local and remote port and inode of this host's IPv4 TCP sockets.
fn tcp_sockets() -> Vec<(u16, u16, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some((port(f.get(1)?)?, port(f.get(2)?)?, f.get(9)?.parse().ok()?))
        })
        .collect()
}

/// The local ports of `pid`'s TCP connections to `remote` (any thread's).
fn ports_to(pid: u32, remote: u16) -> Vec<u16> {
    let inodes: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| {
                let link = std::fs::read_link(e.ok()?.path()).ok()?;
                let link = link.to_str()?;
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()
            })
            .collect()
        })
        .unwrap_or_default();
    tcp_sockets()
        .into_iter()
        .filter(|(_, r, inode)| *r == remote && inodes.contains(inode))
        .map(|(l, _, _)| l)
        .collect()
}

/// Redis's id for the pub/sub client connected from one of `ports`.
fn subscriber_id(redis: &Redis, ports: &[u16]) -> Option<String> {
    let Reply::Bulk(Some(list)) = redis.cmd(&["CLIENT", "LIST", "TYPE", "pubsub"]) else {
        return None;
    };
    String::from_utf8_lossy(&list).lines().find_map(|line| {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(k).map(str::to_owned))
        };
        let port: u16 = field("addr=")?.rsplit(':').next()?.parse().ok()?;
        ports.contains(&port).then(|| field("id="))?
    })
}

#[test]
fn a_record_read_before_another_workers_invalidation_stays_out_of_the_zone() {
    // Worker A looks a name up in the slow API; the operator stores a
    // renewal and publishes it while A's subscription is down, so worker B
    // applies the invalidation and A does not. A's answer (the old
    // certificate) must not reach the zone, where B would load it.
    let mport = free_port();
    // A cache that keeps what it has for an hour: only invalidations drop
    // it.
    let ApiStack {
        pki,
        redis,
        api,
        mut nginx,
    } = ApiStack::start_with(
        &http_api(),
        NginxOpts::new()
            .workers(2)
            .var("MPORT", mport)
            .var("ZONE", "8m")
            .var("CACHE", "max=1000 valid=1h stale=1h"),
    );
    assert!(redis.wait_subscribers("dyncert:invalidate", 2, STARTUP_DEADLINE));
    let name = "raced.example.com";
    let old = pki.leaf(&[name], 9011);
    let new = pki.leaf(&[name], 9012);
    api.set(
        name,
        ApiReply::cert(&old).after(Duration::from_millis(1500)),
    );

    let a = std::thread::scope(|scope| {
        let first = scope.spawn(|| {
            Request::default()
                .sni(name)
                .https(nginx.port)
                .expect("the first handshake")
        });
        assert!(
            api.wait_requests_for(name, 1, STARTUP_DEADLINE),
            "{}",
            api.dump()
        );
        let a = poll(STARTUP_DEADLINE, Duration::from_millis(10), || {
            nginx
                .worker_pids()
                .into_iter()
                .find(|pid| !ports_to(*pid, api.port).is_empty())
        })
        .expect("the worker asking the API");
        let id = subscriber_id(&redis, &ports_to(a, redis.port))
            .unwrap_or_else(|| panic!("worker {a}'s subscription in CLIENT LIST"));
        // In one pipeline, well within the 100 ms A waits before it
        // subscribes again.
        let key = format!("dyncert:cert:{name}");
        let replies = redis.pipeline([
            encode_command(&["CLIENT", "KILL", "ID", &id]),
            encode_command(&["HSET", &key, "crt", &new.chain_pem, "key", &new.key_pem]),
            encode_command(&["PUBLISH", "dyncert:invalidate", name]),
        ]);
        assert_eq!(
            replies.last(),
            Some(&Reply::Int(1)),
            "only the other worker is subscribed: {replies:?}"
        );
        // A answers its waiter with what it read.
        let r = first.join().unwrap();
        assert_eq!(r.pid(), a);
        r.assert_served(&old, &pki);
        a
    });
    let metric = |key: &str| scrape_metrics(mport).get(key);
    assert_eq!(
        metric("dyncert_shared_stores_refused_total"),
        1.0,
        "{}",
        nginx.logs()
    );
    assert!(nginx.error_log().contains(&format!(
        "\"{name}\" was read before an invalidation another worker applied"
    )));
    // B gets the renewal (from Redis, or from the zone once A's refresh,
    // which its re-subscription scheduled, stored it), never the old
    // certificate from the zone. A serves its old copy until that
    // refresh answers.
    let by_b: Vec<Exchange> = nginx
        .hit_every_worker(name, STARTUP_DEADLINE)
        .into_iter()
        .filter(|r| r.pid() != a)
        .collect();
    assert!(!by_b.is_empty());
    for r in &by_b {
        r.assert_served(&new, &pki);
    }
    nginx.assert_healthy();
}

#[test]
fn a_zone_too_small_for_the_names_evicts_and_never_fails_a_handshake() {
    // 128 KiB hold a few dozen records; the hot set holds 5.
    let mut h = start(1, "128k", "max=5");
    let names: Vec<String> = (0..300).map(|i| format!("n{i}.tiny.example")).collect();
    let leaves: Vec<Leaf> = names
        .iter()
        .enumerate()
        .map(|(i, n)| h.s.pki.leaf(&[n], 9100 + i as u64))
        .collect();
    for (n, l) in names.iter().zip(&leaves) {
        h.s.redis.put_leaf(n, l);
    }
    for _ in 0..2 {
        for (n, l) in names.iter().zip(&leaves) {
            h.s.get(Some(n)).assert_served(l, &h.s.pki);
        }
    }
    let evictions = h.metric("dyncert_shared_zone_evictions_total");
    let records = h.metric("dyncert_shared_zone_records");
    assert!(evictions > 0.0, "no eviction");
    assert!(records > 0.0 && records < 300.0, "{records} records");
    assert!(h.metric("dyncert_shared_zone_bytes{state=\"total\"}") > 0.0);
    h.s.nginx.assert_healthy();
}

/// `sans` long DNS names below `zone`, each 206 bytes: about 210 bytes of
/// a leaf's DER per name.
fn long_names(sans: usize, zone: &str) -> Vec<String> {
    (0..sans)
        .map(|i| {
            format!(
                "{}{i:04}.{}.{}.{zone}",
                "x".repeat(59),
                "y".repeat(63),
                "z".repeat(63)
            )
        })
        .collect()
}

#[test]
fn a_record_bigger_than_the_empty_zone_is_served_and_evicts_nothing() {
    // A hot set of one: the names it drops are looked up in the zone.
    let mut h = start(1, "128k", "max=1");
    let fits: Vec<(&str, Leaf)> = ["a.fits.example", "b.fits.example", "c.fits.example"]
        .into_iter()
        .zip(9400..)
        .map(|(n, serial)| (n, h.s.pki.leaf(&[n], serial)))
        .collect();
    for (n, l) in &fits {
        h.s.redis.put_leaf(n, l);
        h.s.get(Some(n)).assert_served(l, &h.s.pki);
    }
    assert_eq!(h.metric("dyncert_shared_zone_records"), 3.0);
    assert_eq!(h.metric("dyncert_shared_zone_stores_total"), 3.0);
    let zone_bytes = h.metric("dyncert_shared_zone_bytes{state=\"total\"}");

    // Within every record bound (each chain under 64 KiB of DER, `allow`
    // under 16 KiB), and together more than all the zone's pages: two
    // leaves for many long names, ECDSA and RSA, in DER, and a long
    // tenant allow list.
    let name = "big.toobig.example";
    let long = long_names(280, "toobig.example");
    let sans: Vec<&str> = std::iter::once(name)
        .chain(long.iter().map(String::as_str))
        .collect();
    let ec = h.s.pki.leaf(&sans, 9410);
    let rsa_key =
        openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let rsa_public =
        openssl::pkey::PKey::public_key_from_der(&rsa_key.public_key_to_der().unwrap()).unwrap();
    let (rsa, _) = h.s.pki.leaf_for_public_key(&sans, 9411, &rsa_public);
    let intermediate = h.s.pki.intermediate.cert.to_der().unwrap();
    let crt_der = [ec.issued.cert.to_der().unwrap(), intermediate.clone()].concat();
    let key_der = ec
        .issued
        .key
        .ec_key()
        .unwrap()
        .private_key_to_der()
        .unwrap();
    let crt_der_rsa = [rsa.to_der().unwrap(), intermediate].concat();
    let key_der_rsa = rsa_key.rsa().unwrap().private_key_to_der().unwrap();
    let mut allow = String::from("127.0.0.1");
    for i in 0.. {
        let next = format!(",2001:db8:{i:04x}:ffff:ffff:ffff:ffff:0/112");
        if allow.len() + next.len() > 16 * 1024 {
            break;
        }
        allow.push_str(&next);
    }
    for der in [&crt_der, &crt_der_rsa] {
        assert!(der.len() < 64 * 1024, "{}", der.len());
    }
    // The leaves and the allow list alone: the intermediate is stored
    // once, apart.
    let record_bytes =
        ec.issued.cert.to_der().unwrap().len() + rsa.to_der().unwrap().len() + allow.len();
    assert!(
        record_bytes as f64 > zone_bytes,
        "{record_bytes} bytes fit in a zone of {zone_bytes} bytes"
    );
    let key = format!("dyncert:cert:{name}");
    let hset: [&[u8]; 12] = [
        b"HSET",
        key.as_bytes(),
        b"crt_der",
        &crt_der,
        b"key_der",
        &key_der,
        b"crt_der_rsa",
        &crt_der_rsa,
        b"key_der_rsa",
        &key_der_rsa,
        b"allow",
        allow.as_bytes(),
    ];
    h.s.redis.connect().cmd(&hset).unwrap();
    let big_serials = [ec.serial_hex.clone(), serial_hex(9411)];

    // Fetched and served from Redis, twice (the hot set drops it in
    // between): each store gives up without evicting a record.
    for round in 0..2 {
        let r = h.s.get(Some(name));
        assert!(
            big_serials.contains(&r.tls().leaf_serial),
            "round {round}: {:?} {:?}",
            r.tls().leaf_serial,
            r.body
        );
        assert_eq!(r.source(), "redis", "round {round}: {:?}", r.body);
        assert_eq!(
            h.metric("dyncert_shared_zone_evictions_total"),
            0.0,
            "round {round}: {}",
            h.s.nginx.logs()
        );
        assert_eq!(h.metric("dyncert_shared_zone_records"), 3.0);
        // The records that fit are still in the zone: loaded, not fetched.
        for (n, l) in &fits {
            let r = h.s.get(Some(n));
            r.assert_served(l, &h.s.pki);
            assert_eq!(r.source(), "shared", "round {round}: {:?}", r.body);
        }
    }
    assert_eq!(h.metric("dyncert_shared_zone_stores_total"), 3.0);
    let refusals =
        h.s.nginx
            .error_log()
            .lines()
            .filter(|l| {
                l.contains("[warn]")
                    && l.contains("record too big for the shared zone")
                    && l.contains(&format!("name: \"{name}\""))
            })
            .count();
    assert_eq!(refusals, 2, "{}", h.s.nginx.logs());
    h.s.nginx.assert_healthy();
}

#[test]
fn shared_zone_values_are_checked_by_nginx_t() {
    let pki = Pki::new();
    for (value, ok) in [
        ("dyncert:1m", true),
        ("dyncert", false),
        ("dyncert:64k", false),
        (":1m", false),
    ] {
        let t = Nginx::config_test(
            &pki,
            &format!(
                "http {{ dyncert_redis redis://127.0.0.1:1/0; dyncert_shared_zone {value}; \
                 server {{ listen 127.0.0.1:@PORT@; }} }}"
            ),
            NginxOpts::new(),
        );
        assert_eq!(t.ok, ok, "{value}: {}", t.output);
        if !ok {
            assert!(
                t.output.contains(&format!("invalid parameter \"{value}\"")),
                "{value}: {}",
                t.output
            );
        }
    }
}
