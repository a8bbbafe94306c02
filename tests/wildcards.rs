//! Wildcard records: without an exact record, `a.example.com` is served
//! from `dyncert:cert:*.example.com`, one label deep only (never
//! `a.b.example.com`, never the apex, never a `*.com`-style single-label
//! parent); an exact record always wins.

use dyncert_testkit::*;
use std::time::Duration;

fn http() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;\n    dyncert_cache max=1000 valid=1m negative=30s;",
        &source_server(" name=$dyncert_name"),
    ])
}

#[test]
fn wildcard_record_serves_single_label_subdomains() {
    let s = Stack::start(1, &http());
    let wild = s.pki.leaf(&["*.example.com"], 11001);
    s.redis.put_leaf("*.example.com", &wild);
    let monitor = s.redis.monitor();

    for name in ["x.example.com", "y.example.com", "x.example.com"] {
        let r = s.get(Some(name));
        r.assert_served(&wild, &s.pki);
        assert!(
            matches!(r.source(), "redis" | "cache"),
            "{name}: body {:?}",
            r.body
        );
        assert_eq!(r.name(), name, "body {:?}", r.body);
    }
    monitor.sync();
    let order = monitor.lookup_order();
    let exact = order.iter().position(|n| n == "x.example.com");
    let wildcard = order.iter().position(|n| n == "*.example.com");
    assert!(
        matches!((exact, wildcard), (Some(e), Some(w)) if e < w),
        "expected the exact name, then the wildcard, to be looked up: {order:?}"
    );
    // The repeat of x is served from the cache.
    assert_eq!(monitor.lookups_of("x.example.com"), 1, "{order:?}");
}

#[test]
fn wildcard_record_does_not_serve_deeper_names_or_the_apex() {
    let s = Stack::start(1, &http());
    let wild = s.pki.leaf(&["*.example.com"], 11002);
    s.redis.put_leaf("*.example.com", &wild);
    // A single-label parent is never a wildcard, even with a record.
    let tld = s.pki.leaf(&["*.com"], 11003);
    s.redis.put_leaf("*.com", &tld);
    let monitor = s.redis.monitor();

    for name in ["a.b.example.com", "example.com", "shop.com"] {
        let r = s.get(Some(name));
        r.assert_default();
        assert_eq!(r.source(), "default", "{name}: body {:?}", r.body);
    }
    monitor.sync();
    assert_eq!(
        monitor.commands_about("*.com"),
        0,
        "a single-label wildcard was looked up:\n{}",
        monitor.dump()
    );
    assert_eq!(
        monitor.commands_about("*.example.com"),
        0,
        "a.b.example.com or the apex looked up *.example.com:\n{}",
        monitor.dump()
    );
    // The check above could fail: the wildcard does work one label down.
    s.get(Some("one.example.com")).assert_served(&wild, &s.pki);
}

#[test]
fn exact_record_wins_over_wildcard() {
    let s = Stack::start(1, &http());
    let wild = s.pki.leaf(&["*.example.com"], 11004);
    let exact = s.pki.leaf(&["shop.example.com"], 11005);
    s.redis.put_leaf("*.example.com", &wild);
    s.redis.put_leaf("shop.example.com", &exact);

    // The wildcard is cached first: a sibling with its own record must
    // still get its own certificate.
    s.get(Some("x.example.com")).assert_served(&wild, &s.pki);
    let r = s.get(Some("shop.example.com"));
    assert_eq!(
        r.tls().leaf_sans,
        ["shop.example.com"],
        "the first handshake for shop.example.com got the cached wildcard although \
         it has an exact record (body {:?})",
        r.body
    );
    r.assert_served(&exact, &s.pki);
    s.get(Some("y.example.com")).assert_served(&wild, &s.pki);
    let r2 = s.get(Some("shop.example.com"));
    r2.assert_served(&exact, &s.pki);
    assert_eq!(r2.source(), "cache", "body {:?}", r2.body);
}

#[test]
fn exact_record_holding_a_wildcard_certificate_is_served() {
    let s = Stack::start(1, &http());
    let wild = s.pki.leaf(&["*.example.org"], 11006);
    s.redis.put_leaf("blog.example.org", &wild);
    let r = s.get(Some("blog.example.org"));
    r.assert_served(&wild, &s.pki);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
}

#[test]
fn wildcard_record_never_serves_a_name_its_certificate_does_not_cover() {
    let mut s = Stack::start(1, &http());
    // Stored under the wildcard key, but issued for one name only.
    let narrow = s.pki.leaf(&["x.example.net"], 11007);
    s.redis.put_leaf("*.example.net", &narrow);
    let r = s.get(Some("y.example.net"));
    r.assert_default();
    assert_eq!(r.source(), "default", "body {:?}", r.body);
    let line = s.nginx.wait_for_log_line(Duration::from_secs(3), |l| {
        l.contains("dyncert:") && l.contains("example.net")
    });
    assert!(line.is_some(), "not logged\n{}", s.nginx.logs());
    s.nginx.assert_healthy();
}

#[test]
fn wildcard_record_without_the_wildcard_itself_is_refused_for_every_name() {
    let mut s = Stack::start(1, &http());
    // Stored under the wildcard, but it names only shop.example.com: served
    // to the first name that asked, it would then be cached under
    // *.example.com and handed to blog.example.com too.
    let narrow = s.pki.leaf(&["shop.example.com"], 11010);
    s.redis.put_leaf("*.example.com", &narrow);
    for name in ["shop.example.com", "blog.example.com"] {
        let r = s.get(Some(name));
        r.assert_default();
        s.nginx
            .wait_for_log_line(STARTUP_DEADLINE, |l| {
                l.contains("invalid certificate record") && l.contains(name)
            })
            .unwrap_or_else(|| panic!("no warning for {name}\n{}", s.nginx.logs()));
    }
    // A proper wildcard record under the same key is served to both.
    let wild = s.pki.leaf(&["*.example.com"], 11011);
    s.redis.put_leaf("*.example.com", &wild);
    // The refusals are remembered as unknown names: drop them.
    s.redis.publish("dyncert:invalidate", "*.example.com");
    let served = poll(STARTUP_DEADLINE, Duration::from_millis(100), || {
        let r = s.get(Some("blog.example.com"));
        (!r.is_default()).then_some(r)
    })
    .unwrap_or_else(|| panic!("wildcard never served\n{}", s.nginx.logs()));
    served.assert_served(&wild, &s.pki);
    s.nginx.assert_healthy();
}
