//! The Cluster connection that goes silent is replaced: a NAT, conntrack
//! table or load balancer between the worker and the cluster's nodes
//! forgets the idle command connections while the nodes, and the
//! invalidation subscription, are fine. The redis crate's Cluster client
//! retries a timed-out command on the same connection, so before this fix
//! every uncached name got the default certificate for as long as TCP
//! kept the flows open (`TCP_USER_TIMEOUT`, 30 s); see
//! tests/redis_connection_health.rs for one server and
//! tests/sentinel_connection_health.rs for Sentinel.
//!
//! Real parts: a three-primary redis Cluster, one TCP proxy per node
//! whose address the node announces (so CLUSTER SLOTS and MOVED lead the
//! module through the proxies, as through a NAT), and nginx. Once frozen,
//! the proxies stop forwarding (both ways) on every connection they
//! accepted before, except the one that sent SUBSCRIBE, and keep them
//! open; new connections are forwarded as usual.

use dyncert_testkit::blackhole::time_until_served;
use dyncert_testkit::*;
use std::time::Duration;

#[test]
fn a_name_is_served_within_seconds_after_the_cluster_connection_went_silent() {
    let pki = Pki::new();
    let c = ProxiedCluster::start();
    let (nginx, mport) = c.nginx_behind(&pki, false);
    let warm = pki.leaf(&["warm.example.com"], 4201);
    let late = pki.leaf(&["late.example.com"], 4202);
    // Both written before the freeze, so that the kit's own connections
    // (which follow MOVED to the proxies) are not frozen with the module's.
    c.cluster.put_leaf("warm.example.com", &warm);
    c.cluster.put_leaf("late.example.com", &late);
    let r = time_until_served(&nginx, "warm.example.com", &warm, Duration::from_secs(10));
    assert!(r.is_some(), "warm-up failed:\n{}", nginx.error_log());

    c.freeze();
    let before = c.accepted();
    let served = time_until_served(&nginx, "late.example.com", &late, Duration::from_secs(10));
    let log = nginx.error_log();
    // One timeout (1 s), the name's error backoff (1 s), then a lookup on
    // the new connection (CLUSTER SLOTS, then the record).
    assert!(
        served.is_some_and(|t| t < Duration::from_secs(5)),
        "late.example.com not served from Redis within 5 s of the freeze (served after \
         {served:?}, {} connections accepted since):\n{}",
        c.accepted() - before,
        tail(&log, 20)
    );
    // One new Cluster connection (a connection to each node, maybe a
    // retried one on a loaded machine), not one per lookup.
    let after = c.accepted();
    assert!(
        (before + 1..=before + 2 * c.proxies.len() as u64).contains(&after),
        "{} new connections",
        after - before
    );
    c.assert_command_timeout_logged(&nginx, mport);
}
