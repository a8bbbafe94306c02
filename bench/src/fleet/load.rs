//! `load`: handshakes for S seconds while the script breaks something,
//! then the verdict from what the clients saw and when the script acted.
//!
//! The script appends `<label> <epoch ms>` lines to `--marks` as it acts
//! (`down`/`up` for Redis, `kill`/`dead`/`back` for a terminator); the
//! timestamps of every handshake are on the same wall clock.
//!
//! `--warm` names are cached on every terminator beforehand: not one of
//! their handshakes may fail, whatever happens to Redis. `--cold` names are
//! each asked once, never cached anywhere before: they need Redis.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{epoch_ms, pct, usage, verdict, Flags};

/// One handshake, as the client saw it.
#[derive(Clone, Debug)]
pub struct Event {
    /// Epoch ms at connect(2).
    pub start: u64,
    pub end: u64,
    pub cold: bool,
    /// Completed, and the leaf names the SNI (the default certificate
    /// served for want of the record is a failure too).
    pub ok: bool,
    /// Why it failed (empty when `ok`), for the verdict's figures.
    pub why: String,
}

/// Between two handshakes of a cold thread.
const COLD_PAUSE: Duration = Duration::from_millis(10);

pub fn run(f: &Flags) -> i32 {
    let warm = f
        .names("warm")
        .unwrap_or_else(|| usage("--warm is required"));
    let cold = f.names("cold").unwrap_or_default();
    let targets = f.targets();
    let concurrency: usize = f.num("concurrency", 8).max(2);
    let seconds: f64 = f.num("seconds", 10.0);
    let cold_threads = if cold.is_empty() { 0 } else { concurrency / 2 };
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let next_cold = AtomicUsize::new(0);
    let events: Mutex<Vec<Event>> = Mutex::new(Vec::new());
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|s| {
        for t in 0..concurrency {
            let (warm, cold, targets) = (&warm, &cold, &targets);
            let (next_cold, events, first_error) = (&next_cold, &events, &first_error);
            s.spawn(move || {
                let is_cold = t < cold_threads;
                let mut mine = Vec::new();
                let mut i = t;
                while Instant::now() < deadline {
                    let name = if is_cold {
                        match cold.get(next_cold.fetch_add(1, Ordering::Relaxed)) {
                            Some(n) => n,
                            None => break,
                        }
                    } else {
                        // A stride prime to any pool size walks the pool
                        // without two threads in lock step.
                        i = (i + 7919) % warm.len();
                        &warm[i]
                    };
                    let target = &targets[mine.len() % targets.len()];
                    let start = epoch_ms();
                    let why = match target.handshake(name) {
                        Ok(hs) => {
                            let why = if hs.names_sni {
                                String::new()
                            } else {
                                format!("{name}: served serial {} (not its own)", hs.serial)
                            };
                            hs.close();
                            why
                        }
                        Err(e) => format!("{name}: {e}"),
                    };
                    if !why.is_empty() {
                        first_error.lock().unwrap().get_or_insert(why.clone());
                    }
                    mine.push(Event {
                        start,
                        end: epoch_ms(),
                        cold: is_cold,
                        ok: why.is_empty(),
                        why,
                    });
                    if is_cold {
                        // Enough to see the outage begin and end, without
                        // a pool of names the size of a sweep.
                        std::thread::sleep(COLD_PAUSE);
                    }
                }
                events.lock().unwrap().extend(mine);
            });
        }
    });
    let mut events = events.into_inner().unwrap();
    events.sort_by_key(|e| e.start);
    if let Some(e) = first_error.into_inner().unwrap() {
        eprintln!("fleet load: first failure: {e}");
    }
    let marks = match f.opt("marks") {
        Some(path) => match read_marks(path) {
            Ok(m) => m,
            Err(e) => return verdict(false, &format!("marks: {e}")),
        },
        None => HashMap::new(),
    };
    let (pass, figures) = match f.opt("judge") {
        None => plain(&events),
        Some("redis") => redis_outage(
            &events,
            &marks,
            f.num("fetch-timeout-ms", 1000),
            f.opt("up-means").unwrap_or("Redis answered again"),
        ),
        Some("terminator") => terminator_restart(&events, &marks, concurrency),
        Some(other) => usage(&format!("--judge: unknown {other:?}")),
    };
    verdict(pass, &figures)
}

fn read_marks(path: &str) -> Result<HashMap<String, u64>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut m = HashMap::new();
    for line in text.lines() {
        if let Some((label, ms)) = line.split_once(' ') {
            let ms = ms
                .trim()
                .parse()
                .map_err(|_| format!("bad line {line:?}"))?;
            m.insert(label.to_owned(), ms);
        }
    }
    Ok(m)
}

fn mark(marks: &HashMap<String, u64>, label: &str) -> Result<u64, String> {
    marks
        .get(label)
        .copied()
        .ok_or_else(|| format!("the script recorded no \"{label}\" mark"))
}

fn latency(events: &[Event]) -> (f64, f64) {
    let mut ms: Vec<f64> = events
        .iter()
        .filter(|e| e.ok)
        .map(|e| (e.end - e.start) as f64)
        .collect();
    ms.sort_by(f64::total_cmp);
    (pct(&ms, 50.0), pct(&ms, 99.0))
}

/// No fault injected: every handshake must succeed.
pub fn plain(events: &[Event]) -> (bool, String) {
    let failed = events.iter().filter(|e| !e.ok).count();
    let (p50, p99) = latency(events);
    (
        failed == 0 && !events.is_empty(),
        format!(
            "handshakes={} failed={failed} p50_ms={p50:.0} p99_ms={p99:.0}",
            events.len()
        ),
    )
}

/// Redis down between `down` and `up`: warm names never fail; cold names
/// fail only until at most `fetch_timeout_ms` after `up`. `up_means` says
/// what `up` was in the figures (a restart, or a failover's new primary).
pub fn redis_outage(
    events: &[Event],
    marks: &HashMap<String, u64>,
    fetch_timeout_ms: u64,
    up_means: &str,
) -> (bool, String) {
    let (down, up) = match (mark(marks, "down"), mark(marks, "up")) {
        (Ok(d), Ok(u)) => (d, u),
        (Err(e), _) | (_, Err(e)) => return (false, e),
    };
    let warm: Vec<&Event> = events.iter().filter(|e| !e.cold).collect();
    let warm_failed = warm.iter().filter(|e| !e.ok).count();
    let warm_during = warm
        .iter()
        .filter(|e| e.start >= down && e.start < up)
        .count();
    let cold: Vec<&Event> = events.iter().filter(|e| e.cold).collect();
    let cold_failed = cold.iter().filter(|e| !e.ok).count();
    // Recovered: the start of the first successful cold handshake after
    // the last failed one (it may precede `up`: a handshake parked while
    // Redis was down is served when Redis answers within its fetch timeout).
    let last_fail = cold.iter().filter(|e| !e.ok).map(|e| e.start).max();
    let recovered_at = match last_fail {
        None => Some(down),
        Some(t) => cold.iter().find(|e| e.ok && e.start > t).map(|e| e.start),
    };
    let bound = up + fetch_timeout_ms;
    let (pass, recovery) = match recovered_at {
        Some(r) => (
            warm_failed == 0 && warm_during > 0 && r <= bound,
            format!("{} ms after the kill on", r.saturating_sub(down)),
        ),
        None => (false, "never".to_owned()),
    };
    (
        pass,
        format!(
            "{up_means} {} ms after the kill; cached names: {} handshakes ({warm_during} during the outage), {warm_failed} failed; uncached names: {} handshakes, {cold_failed} failed, every one started from {recovery} served (bound: outage + fetch timeout = {} ms)",
            up - down,
            warm.len(),
            cold.len(),
            bound - down
        ),
    )
}

/// A terminator killed at `kill` (gone at `dead`), restarted at `back`:
/// only connections that were on it may fail (started before `dead`, at
/// most one per client connection in flight).
pub fn terminator_restart(
    events: &[Event],
    marks: &HashMap<String, u64>,
    in_flight: usize,
) -> (bool, String) {
    let (dead, back) = match (mark(marks, "dead"), mark(marks, "back")) {
        (Ok(d), Ok(b)) => (d, b),
        (Err(e), _) | (_, Err(e)) => return (false, e),
    };
    let failed: Vec<&Event> = events.iter().filter(|e| !e.ok).collect();
    let late = failed.iter().filter(|e| e.start > dead).count();
    let during = events
        .iter()
        .filter(|e| e.start > dead && e.start < back)
        .count();
    let after = events.iter().filter(|e| e.start >= back && e.ok).count();
    // Each failure that counts against the terminator, placed on the
    // script's time line, so a failed run says what failed and when.
    let detail: String = failed
        .iter()
        .filter(|e| e.start > dead)
        .take(5)
        .map(|e| {
            let when = if e.start < back {
                format!("dead+{} ms", e.start - dead)
            } else {
                format!("back+{} ms", e.start - back)
            };
            format!(
                "; started {when}, lasted {} ms: {}",
                e.end.saturating_sub(e.start),
                e.why
            )
        })
        .collect();
    (
        late == 0 && failed.len() <= in_flight && during > 0 && after > 0,
        format!(
            "handshakes={} failed={} (connections in flight: {in_flight}) failed_after_kill={late} ok_while_down={during} ok_after_restart={after}{detail}",
            events.len(),
            failed.len()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(start: u64, cold: bool, ok: bool) -> Event {
        Event {
            start,
            end: start + 2,
            cold,
            ok,
            why: if ok {
                String::new()
            } else {
                "refused".to_owned()
            },
        }
    }

    fn marks(m: &[(&str, u64)]) -> HashMap<String, u64> {
        m.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn redis_outage_passes_when_cold_names_recover_within_one_fetch_timeout() {
        let m = marks(&[("down", 100), ("up", 200)]);
        let events = [
            ev(90, false, true),
            ev(150, false, true),
            ev(150, true, false),
            ev(250, true, false),
            ev(260, true, true),
            ev(400, true, true),
        ];
        let (pass, figures) = redis_outage(&events, &m, 100, "up");
        assert!(pass, "{figures}");
        assert!(
            figures.contains("from 160 ms after the kill on"),
            "{figures}"
        );
        // Recovery later than the fetch timeout fails.
        let (pass, _) = redis_outage(&events, &m, 50, "up");
        assert!(!pass);
    }

    #[test]
    fn redis_outage_fails_on_any_cached_failure() {
        let m = marks(&[("down", 100), ("up", 200)]);
        let events = [
            ev(150, false, false),
            ev(150, false, true),
            ev(300, true, true),
        ];
        assert!(!redis_outage(&events, &m, 1000, "up").0);
    }

    #[test]
    fn terminator_restart_allows_only_failures_started_before_it_died() {
        let m = marks(&[("kill", 100), ("dead", 110), ("back", 300)]);
        let ok = [
            ev(105, false, false),
            ev(200, false, true),
            ev(310, false, true),
        ];
        assert!(terminator_restart(&ok, &m, 8).0);
        let late = [
            ev(120, false, false),
            ev(200, false, true),
            ev(310, false, true),
        ];
        let (pass, figures) = terminator_restart(&late, &m, 8);
        assert!(!pass);
        assert!(
            figures.contains("started dead+10 ms, lasted 2 ms: refused"),
            "{figures}"
        );
        let too_many = [
            ev(105, false, false),
            ev(106, false, false),
            ev(310, false, true),
        ];
        assert!(!terminator_restart(&too_many, &m, 1).0);
    }
}
