//! Feeds arbitrary text, as a `dyncert_redis` directive or `--redis`
//! could hold it, to the Redis URL parser and the redaction that every
//! log line and `nginx -t` error goes through.
//!
//! Beyond "no panic", it checks what the operator relies on: a password
//! the parser found in a URL never survives redaction, and what parses as
//! a Sentinel or Cluster topology has between 1 and `MAX_NODES` nodes,
//! none with port 0.

#![no_main]

use dyncert_core::topology::{redact_redis_url, Topology, MAX_NODES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    let shown = redact_redis_url(url);
    let auth = match Topology::parse(url) {
        Ok(Topology::Sentinel {
            sentinels, auth, ..
        }) => {
            assert!(!sentinels.is_empty() && sentinels.len() <= MAX_NODES);
            assert!(sentinels.iter().all(|n| n.port > 0));
            auth
        }
        Ok(Topology::Cluster { nodes, auth, .. }) => {
            assert!(!nodes.is_empty() && nodes.len() <= MAX_NODES);
            assert!(nodes.iter().all(|n| n.port > 0));
            auth
        }
        Ok(Topology::Single { .. }) | Err(_) => return,
    };
    // A password written as is (no percent-encoding) between the user's
    // ':' and the host's '@', nowhere else in the URL, and without the
    // characters of the `user:***` that replaces it (else the user name
    // and the stars could spell it without revealing anything).
    if let Some(p) = auth.password {
        let literal = url.contains(&format!(":{p}@")) && url.matches(p.as_str()).count() == 1;
        if p.len() >= 4 && literal && !p.contains([':', '*']) {
            assert!(!shown.contains(p.as_str()), "{url} shown as {shown}");
        }
    }
});
