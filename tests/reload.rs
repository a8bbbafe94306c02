//! A configuration reload replaces the workers; the new ones start with
//! empty caches and their own fetchers and keep serving certificates from
//! Redis, including records written after the reload.

use dyncert_testkit::*;

#[test]
fn reload_keeps_serving_dynamic_certificates() {
    let mut s = Stack::start(2, &redis_http());
    let before = s.pki.leaf(&["before.example.com"], 5001);
    s.redis.put_leaf("before.example.com", &before);
    for _ in 0..4 {
        s.get(Some("before.example.com"))
            .assert_served(&before, &s.pki);
    }
    let old_workers = s.nginx.worker_pids();

    s.nginx.reload();
    let new_workers = s.nginx.worker_pids();
    assert!(new_workers.is_disjoint(&old_workers));

    let mut fetched_by = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let r = s.get(Some("before.example.com"));
        r.assert_served(&before, &s.pki);
        let pid = r.pid();
        assert!(
            new_workers.contains(&pid),
            "served by {pid}, not one of the new workers {new_workers:?}"
        );
        // Fresh workers, fresh caches: each fetches the name itself once.
        match r.source() {
            "redis" => assert!(fetched_by.insert(pid), "worker {pid} fetched twice"),
            "cache" => assert!(
                fetched_by.contains(&pid),
                "worker {pid} claims a cache hit it never fetched (cache survived the reload?)"
            ),
            other => panic!("unexpected source {other:?} in {:?}", r.body),
        }
    }

    let after = s.pki.leaf(&["after.example.com"], 5002);
    s.redis.put_leaf("after.example.com", &after);
    let r = s.get(Some("after.example.com"));
    r.assert_served(&after, &s.pki);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);

    // A second reload works as well as the first (init_module runs again).
    s.nginx.reload();
    s.get(Some("after.example.com"))
        .assert_served(&after, &s.pki);
    s.get(Some("unknown.example.com")).assert_default();
    s.nginx.assert_healthy();
}
