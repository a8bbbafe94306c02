//! Phases 5 and 6 on the one-worker nginx with the zone: a hot-set miss
//! served from the zone against a hot handshake, one at a time; hot
//! handshakes under load against a static certificate, in rounds.

use std::sync::Arc;
use std::time::Duration;

use dyncert_testkit::{scrape_metrics, Nginx};

use super::{Misses, ZoneArgs, STATIC};
use crate::client::{Answer, Client};
use crate::host::{thread_cpu_delta, thread_cpu_ns};
use crate::load::{self, Load};

/// For each of `misses` (in the zone, not in the hot set), a hot handshake
/// (the reference, taking turns through `refs`) then the miss, one at a
/// time; each answer's `$dyncert_source` is checked. Then as many hot
/// handshakes alone: the worker's CPU by thread in both passes gives what
/// a miss costs each thread over a hot handshake.
pub(super) fn zone_misses(
    port: u16,
    worker: u32,
    mport: u16,
    refs: &[String],
    misses: &[String],
) -> Misses {
    load::pin_client_thread(0);
    let client = Client::new();
    let mut out = Misses::default();
    // The references become hot now, whatever the sweep left.
    for r in refs {
        if let Ok(c) = client.handshake(port, Some(r)) {
            c.close();
        }
    }
    let m0 = scrape_metrics(mport);
    let one = |name: &str, want: &str, lat: &mut Vec<u32>, out: &mut Misses| {
        let c = match client.handshake(port, Some(name)) {
            Ok(c) if c.names_sni => c,
            Ok(c) => {
                out.mismatches += 1;
                return c.close();
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(e);
                return;
            }
        };
        let us = c.elapsed.as_micros() as u32;
        let said = c
            .get()
            .map(|body| Answer::parse(&body).map(|a| a.source).unwrap_or(body));
        match said {
            Ok(src) if src == want => lat.push(us),
            other => {
                out.unexpected += 1;
                out.first_unexpected
                    .get_or_insert_with(|| format!("{name}: {other:?}, expected {want}"));
            }
        }
    };
    let (mut hot, mut miss) = (Vec::new(), Vec::new());
    let t0 = thread_cpu_ns(worker);
    for (i, m) in misses.iter().enumerate() {
        one(&refs[i % refs.len()], "cache", &mut hot, &mut out);
        one(m, "shared", &mut miss, &mut out);
    }
    let t1 = thread_cpu_ns(worker);
    let mut alone = Vec::new();
    for i in 0..2 * misses.len() {
        one(&refs[i % refs.len()], "cache", &mut alone, &mut out);
    }
    let mixed = thread_cpu_delta(&t0, &t1);
    let hot_only = thread_cpu_delta(&t1, &thread_cpu_ns(worker));
    let k = misses.len().max(1) as f64;
    out.cpu_per_miss_us = mixed
        .iter()
        .map(|(t, &ns)| {
            let base = *hot_only.get(t).unwrap_or(&0) as f64;
            (t.clone(), (ns as f64 - base) / 1000.0 / k)
        })
        .collect();
    out.hot_us = hot;
    out.miss_us = miss;
    // Only the misses park (a hot handshake is answered in the certificate
    // callback): the module's own view of what a miss costs.
    let m1 = scrape_metrics(mport);
    let d = |k: &str| m1.sum(k) - m0.sum(k);
    out.shared_loads = d("dyncert_shared_loads_total");
    out.parks = d("dyncert_park_duration_seconds_count");
    out.park_ms_mean = d("dyncert_park_duration_seconds_sum") * 1000.0 / out.parks.max(1.0);
    out.parks_within_1ms = d("dyncert_park_duration_seconds_bucket{le=\"0.001\"}");
    out
}

// --- 6. hot handshakes -----------------------------------------------------------

/// Static and dyncert's hot set under load, taking turns in rounds.
pub(super) fn hot_rounds(
    a: &ZoneArgs,
    client: &Arc<Client>,
    ng_static: &Nginx,
    ng_zone: &Nginx,
    hot_names: &Arc<Vec<String>>,
) -> Vec<crate::Config> {
    let mut configs = [
        (
            "static (1 name)".to_owned(),
            ng_static.port,
            ng_static.worker_pid(),
            Arc::new(vec![STATIC.to_owned()]),
        ),
        (
            format!("dyncert + zone, hot set ({} names)", hot_names.len()),
            ng_zone.port,
            ng_zone.worker_pid(),
            hot_names.clone(),
        ),
    ]
    .map(|(label, port, worker, names)| crate::Config {
        label,
        nginx_port: port,
        worker,
        names,
        load: Load::default(),
    });
    let slice = Duration::from_secs_f64(a.seconds / a.rounds as f64);
    for r in 0..a.rounds {
        for k in 0..configs.len() {
            let cfg = &mut configs[(k + r) % 2];
            load::run_slice(
                &mut cfg.load,
                client,
                cfg.nginx_port,
                cfg.worker,
                &cfg.names,
                a.concurrency,
                slice,
                (r * 2 + k) as u64 + 1,
            );
        }
    }
    configs.into()
}
