//! Which certificate a terminator serves, and how soon a renewal reaches
//! every terminator: `invalidate`, `get`, `wait-serial`.

use std::time::{Duration, Instant};

use dyncert_testkit::Pki;

use super::records::{publish, Resp, CHANNEL};
use super::{pct, usage, verdict, Flags, Target};

/// How long a terminator may take to serve a renewal before the round
/// counts as lost.
const GIVE_UP: Duration = Duration::from_secs(5);

/// Handshakes with `target` until it serves serial `hex`; the time from
/// `since` to the end of that handshake.
fn until_serial(
    target: &Target,
    name: &str,
    hex: &str,
    since: Instant,
    give_up: Duration,
    pause: Duration,
) -> Option<Duration> {
    loop {
        if let Ok(hs) = target.handshake(name) {
            let done = hs.serial == hex;
            hs.close();
            if done {
                return Some(since.elapsed());
            }
        }
        if since.elapsed() > give_up {
            return None;
        }
        std::thread::sleep(pause);
    }
}

/// `invalidate`: R renewals of one name (new certificate into Redis, then
/// PUBLISH), each timed from the PUBLISH until every terminator serves the
/// new certificate.
pub fn invalidate(f: &Flags) -> i32 {
    let name = f.req("name");
    let targets = f.targets();
    let rounds: usize = f.num("rounds", 20);
    let bound_ms: f64 = f.num("bound-ms", 100.0);
    let channel = f.opt("channel").unwrap_or(CHANNEL);
    let mut conn = match Resp::connect(f.addr("redis")) {
        Ok(c) => c,
        Err(e) => return verdict(false, &format!("redis: {e}")),
    };
    let pki = Pki::new();
    // Every terminator has the name cached before the first renewal.
    for t in &targets {
        if let Err(e) = t.handshake(name).map(|hs| hs.close()) {
            return verdict(false, &format!("warming {name} on {}: {e}", t.addr));
        }
    }
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut lost = 0;
    let base = 10_000_000 + super::epoch_ms() % 1_000_000 * 100;
    for round in 0..rounds {
        let (hex, at) = match publish(&mut conn, &pki, name, base + round as u64, channel) {
            Ok(v) => v,
            Err(e) => return verdict(false, &format!("publish: {e}")),
        };
        let took: Vec<Option<Duration>> = std::thread::scope(|s| {
            let hs: Vec<_> = targets
                .iter()
                .map(|t| {
                    let hex = &hex;
                    s.spawn(move || {
                        until_serial(t, name, hex, at, GIVE_UP, Duration::from_millis(1))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, t) in took.into_iter().enumerate() {
            match t {
                Some(d) => per[i].push(d.as_secs_f64() * 1e3),
                None => lost += 1,
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut worst: f64 = 0.0;
    let mut parts = Vec::new();
    for (t, ms) in targets.iter().zip(per.iter_mut()) {
        ms.sort_by(f64::total_cmp);
        let max = ms.last().copied().unwrap_or(f64::NAN);
        worst = worst.max(max);
        parts.push(format!(
            "{}: p50 {:.1} max {:.1}",
            t.addr.ip(),
            pct(ms, 50.0),
            max
        ));
    }
    verdict(
        lost == 0 && worst <= bound_ms,
        &format!(
            "{rounds} renewals, ms from PUBLISH to the new certificate: {} (bound {bound_ms:.0}, lost {lost})",
            parts.join(", ")
        ),
    )
}

/// `get`: one request; prints what came back, for the script to check.
pub fn get(f: &Flags) -> i32 {
    let name = f.req("name");
    let path = f.opt("path").unwrap_or("/");
    let Some(target) = f.targets().into_iter().next() else {
        usage("no target")
    };
    match target.get(name, path) {
        Ok(x) => {
            let tls = x.tls();
            println!(
                "status={} serial={} names_sni={} body={}",
                x.status,
                tls.leaf_serial,
                u8::from(tls.leaf_sans.iter().any(|s| s == name)),
                x.body.trim().replace('\n', " ")
            );
            0
        }
        Err(e) => {
            println!("status=error error={e}");
            1
        }
    }
}

/// `wait-serial`: how long until the target serves serial HEX.
pub fn wait_serial(f: &Flags) -> i32 {
    let name = f.req("name");
    let hex = f.req("serial");
    let timeout = Duration::from_millis(f.num("timeout-ms", 10_000));
    let Some(target) = f.targets().into_iter().next() else {
        usage("no target")
    };
    let since = Instant::now();
    match until_serial(
        &target,
        name,
        hex,
        since,
        timeout,
        Duration::from_millis(20),
    ) {
        Some(d) => {
            println!("elapsed_ms={}", d.as_millis());
            0
        }
        None => {
            println!("elapsed_ms=timeout");
            1
        }
    }
}
