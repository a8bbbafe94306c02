//! `sweep`: every name once (once per terminator with `--direct`), C
//! connections at a time; 0 failures and 0 mismatches or FAIL.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::{pct, usage, verdict, Flags};

pub fn run(f: &Flags) -> i32 {
    let names = f
        .names("names")
        .unwrap_or_else(|| usage("--names is required"));
    let targets = f.targets();
    let concurrency: usize = f.num("concurrency", 8);
    let jobs: Vec<(usize, &str)> = targets
        .iter()
        .enumerate()
        .flat_map(|(t, _)| names.iter().map(move |n| (t, n.as_str())))
        .collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let mismatched = AtomicUsize::new(0);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let times: Mutex<Vec<f64>> = Mutex::new(Vec::with_capacity(jobs.len()));
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..concurrency.max(1) {
            s.spawn(|| {
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(t, name)) = jobs.get(i) else { break };
                    let target = &targets[t];
                    let problem = match target.handshake(name) {
                        Ok(hs) if hs.names_sni => {
                            mine.push(hs.elapsed().as_secs_f64() * 1e3);
                            hs.close();
                            None
                        }
                        Ok(hs) => {
                            mismatched.fetch_add(1, Ordering::Relaxed);
                            let e = format!(
                                "{name} via {}: leaf serial {} does not name it",
                                target.addr, hs.serial
                            );
                            hs.close();
                            Some(e)
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            Some(format!("{name} via {}: {e}", target.addr))
                        }
                    };
                    if let Some(e) = problem {
                        first_error.lock().unwrap().get_or_insert(e);
                    }
                }
                times.lock().unwrap().extend(mine);
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let mut times = times.into_inner().unwrap();
    times.sort_by(f64::total_cmp);
    let (failed, mismatched) = (failed.into_inner(), mismatched.into_inner());
    if let Some(e) = first_error.into_inner().unwrap() {
        eprintln!("fleet sweep: first problem: {e}");
    }
    verdict(
        failed == 0 && mismatched == 0,
        &format!(
            "handshakes={} failed={failed} mismatched={mismatched} hs_per_s={:.0} p50_ms={:.1} p99_ms={:.1} seconds={secs:.1}",
            jobs.len(),
            jobs.len() as f64 / secs,
            pct(&times, 50.0),
            pct(&times, 99.0)
        ),
    )
}
