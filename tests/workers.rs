//! With several workers, each has its own cache and fetcher: every
//! handshake gets the right certificate, and a worker fetches a name once
//! however many connections ask for it at the same time.

use dyncert_testkit::*;
use std::collections::{BTreeMap, BTreeSet};
use std::thread;

#[test]
fn many_handshakes_across_workers_get_the_right_certificate_and_fetch_once_per_worker() {
    let mut s = Stack::start(2, &redis_http());
    let leaf = s.pki.leaf(&["busy.example.com"], 6001);
    let other = s.pki.leaf(&["quiet.example.com"], 6002);
    s.redis.put_leaf("busy.example.com", &leaf);
    s.redis.put_leaf("quiet.example.com", &other);
    let monitor = s.redis.monitor();

    // Concurrent first contact: connections for one name race in both
    // workers and must share their worker's single fetch.
    let port = s.nginx.port;
    let threads: Vec<_> = (0..8)
        .map(|i| {
            thread::spawn(move || {
                let name = if i % 4 == 3 {
                    "quiet.example.com"
                } else {
                    "busy.example.com"
                };
                (0..5)
                    .map(|_| (name, Request::get("/").sni(name).https(port)))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    // Per worker pid, the names it served.
    let mut first_contact: BTreeMap<u32, BTreeSet<&str>> = BTreeMap::new();
    for t in threads {
        for (name, r) in t.join().unwrap() {
            let r = r.unwrap_or_else(|e| panic!("{name}: {e}"));
            let expected = if name == "busy.example.com" {
                &leaf
            } else {
                &other
            };
            r.assert_served(expected, &s.pki);
            assert_eq!(r.name(), name, "body {:?}", r.body);
            assert!(matches!(r.source(), "redis" | "cache"), "body {:?}", r.body);
            first_contact.entry(r.pid()).or_default().insert(name);
        }
    }
    let workers = s.nginx.worker_pids();
    assert!(
        first_contact.keys().all(|p| workers.contains(p)),
        "served by {first_contact:?}, workers are {workers:?}"
    );

    // Later handshakes in a worker that has seen the name are cache hits.
    for _ in 0..10 {
        let r = s.get(Some("busy.example.com"));
        r.assert_served(&leaf, &s.pki);
        if first_contact
            .get(&r.pid())
            .is_some_and(|names| names.contains("busy.example.com"))
        {
            assert_eq!(r.source(), "cache", "body {:?}", r.body);
        }
    }

    monitor.sync();
    for name in ["busy.example.com", "quiet.example.com"] {
        let n = monitor.fetches_of(name);
        assert!(
            (1..=2).contains(&n),
            "{name} fetched {n} times by 2 workers:\n{}",
            monitor.dump()
        );
    }
    s.nginx.assert_healthy();
}
