//! Names no source knows are remembered in a cache of their own
//! (`dyncert_cache negative_max=`), so a client making up SNI names can
//! never push a real certificate out of a worker's cache.

use dyncert_testkit::*;
use std::collections::hash_map::RandomState;
use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

const TENANTS: usize = 50;
/// 50 times `max=`: enough to have evicted every tenant many times over
/// when unknown names shared the LRU with certificates.
const FLOOD: usize = 5000;
const CLIENTS: usize = 4;
const PARENT: &str = "flood.example.net";
/// Holds every tenant with room to spare, and far fewer than the flood's
/// names.
const MAX: usize = 100;
const _: () = assert!(TENANTS < MAX && 10 * MAX < FLOOD);

// One worker: the cache is per worker.
fn http() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;",
        "    dyncert_fetch_timeout 2s;",
        "    dyncert_cache @CACHE@;",
        &source_server(" name=$dyncert_name"),
    ])
}

fn random_u64(i: u64) -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(i);
    h.finish()
}

/// Handshakes for `names` from a few client threads; the failures, each
/// with its name.
fn handshake_all(
    port: u16,
    names: Vec<String>,
    check: fn(&Exchange) -> Result<(), String>,
) -> Vec<String> {
    let names = Arc::new(names);
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (names, next, failures) = (names.clone(), next.clone(), failures.clone());
            thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = names.get(i) else { break };
                let verdict = Request::get("/")
                    .sni(name)
                    .https(port)
                    .and_then(|r| check(&r));
                if let Err(e) = verdict {
                    failures.lock().unwrap().push(format!("{name}: {e}"));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    Arc::try_unwrap(failures).unwrap().into_inner().unwrap()
}

#[test]
fn random_name_flood_never_evicts_cached_certificates() {
    let mut s = Stack::start(1, &http().replace("@CACHE@", &format!("max={MAX}")));
    let tenants: Vec<(String, Leaf)> = (0..TENANTS)
        .map(|i| {
            let name = format!("tenant{i}.example.com");
            let leaf = s.pki.leaf(&[&name], 15000 + i as u64);
            s.redis.put_leaf(&name, &leaf);
            (name, leaf)
        })
        .collect();

    // Warm: each tenant fetched from Redis and served its own certificate.
    for (name, leaf) in &tenants {
        let r = s.get(Some(name));
        r.assert_served(leaf, &s.pki);
        assert_eq!(r.source(), "redis", "{name}: body {:?}", r.body);
    }

    // The flood: names never seen before, each looked up and found in no
    // source, so each becomes a negative entry.
    let flood: Vec<String> = (0..FLOOD as u64)
        .map(|i| format!("r{:016x}.{PARENT}", random_u64(i)))
        .collect();
    let distinct: BTreeSet<String> = flood.iter().cloned().collect();
    let monitor = s.redis.monitor();
    let start = Instant::now();
    let failures = handshake_all(s.nginx.port, flood, |r| {
        if r.is_default() {
            Ok(())
        } else {
            Err(format!("not the default: {:?}", r.tls().leaf_sans))
        }
    });
    let flood_time = start.elapsed();
    assert!(
        failures.is_empty(),
        "{} of {FLOOD} flood handshakes failed, e.g. {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        s.nginx.logs()
    );
    monitor.sync();
    let looked_up: BTreeSet<String> = monitor
        .lookup_order()
        .into_iter()
        .filter(|n| distinct.contains(n))
        .collect();
    eprintln!(
        "negative_cache: {FLOOD} flood handshakes in {flood_time:?}, {} names looked up in Redis",
        looked_up.len()
    );
    // Each looked-up name that was not found is a negative entry: far more
    // of them than `max=`, or the flood proved nothing.
    assert!(
        looked_up.len() > 10 * MAX,
        "only {} flood names reached Redis",
        looked_up.len()
    );
    drop(monitor);

    // Every tenant is still cached: its own certificate, from the cache,
    // and not one Redis command about it.
    let monitor = s.redis.monitor();
    for (name, leaf) in &tenants {
        let r = s.get(Some(name));
        r.assert_served(leaf, &s.pki);
        assert_eq!(
            r.source(),
            "cache",
            "{name} was evicted by the flood: body {:?}",
            r.body
        );
    }
    monitor.sync();
    let asked: Vec<&str> = tenants
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| monitor.commands_about(name) > 0)
        .collect();
    assert!(
        asked.is_empty(),
        "tenants looked up in Redis after the flood: {asked:?}\n{}",
        monitor.dump()
    );
    s.nginx.assert_healthy();
}

#[test]
fn negative_max_that_is_not_a_number_fails_config_test() {
    let pki = Pki::new();
    let opts = |cache: &str| {
        NginxOpts::new()
            .var("REDIS", "redis://127.0.0.1:6379/0")
            .var("CACHE", cache)
    };
    for good in ["negative_max=0", "max=100 negative_max=50000"] {
        let t = Nginx::config_test(&pki, &http(), opts(good));
        assert!(t.ok, "`dyncert_cache {good}` failed:\n{}", t.output);
    }
    for bad in ["negative_max=abc", "negative_max=-1", "negative_max="] {
        let t = Nginx::config_test(&pki, &http(), opts(bad));
        assert!(
            !t.ok,
            "`dyncert_cache {bad}` passed nginx -t:\n{}",
            t.output
        );
        let expected = format!("invalid parameter \"{bad}\"");
        assert!(
            t.output.contains(&expected),
            "`dyncert_cache {bad}`: no `{expected}` in:\n{}",
            t.output
        );
    }
}
