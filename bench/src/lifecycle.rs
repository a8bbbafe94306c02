//! nginx start and reload times: from spawning nginx to the first
//! handshake a worker completes, and from `nginx -s reload` to the first
//! handshake a new worker completes. Start times are taken on fresh
//! prefixes; reload times on running nginxes the caller owns, so a mode
//! can reload one whose state (a filled shared zone) it prepared.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use dyncert_testkit::{Nginx, Pki};

use crate::client::{Answer, Client};
use crate::servers::{spawn_nginx, start_nginx};
use crate::Problems;

/// Start and reload times (ms) of one nginx configuration.
#[derive(Default)]
pub struct Lifecycle {
    pub start: Vec<f64>,
    pub reload: Vec<f64>,
}

/// `$pid` of the worker that serves a fresh connection (no SNI: the
/// default certificate, no fetch).
fn serving_pid(client: &Client, port: u16) -> Option<u32> {
    let body = client.handshake(port, None).ok()?.get().ok()?;
    Answer::parse(&body).map(|a| a.pid)
}

/// Start times of each case (`http` block, with the module), `repeat`
/// times, the cases taking turns; in prefixes `dir/start-<i>-<rep>`.
pub fn start_times(
    pki: &Pki,
    dir: &Path,
    repeat: usize,
    cases: &[(&str, bool)],
    problems: &mut Problems,
) -> Vec<Vec<f64>> {
    let client = Client::new();
    let mut out = vec![Vec::new(); cases.len()];
    for rep in 0..repeat {
        for (i, &(http, module)) in cases.iter().enumerate() {
            let prefix = dir.join(format!("start-{i}-{rep}"));
            let t0 = Instant::now();
            let ng = spawn_nginx(pki, &prefix, http, module);
            let deadline = t0 + Duration::from_secs(20);
            let ok = loop {
                match client.handshake(ng.port, None) {
                    Ok(c) => {
                        c.close();
                        break true;
                    }
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_micros(500))
                    }
                    Err(e) => {
                        problems.notes.push(format!("nginx start (case {i}): {e}"));
                        break false;
                    }
                }
            };
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            drop(ng);
            let _ = fs::remove_dir_all(&prefix);
            if ok {
                out[i].push(ms);
            }
        }
    }
    out
}

/// Reload times of each running nginx, `repeat` times, taking turns; each
/// reload waits for the old worker to be gone before the next.
pub fn reload_times(running: &[&Nginx], repeat: usize, problems: &mut Problems) -> Vec<Vec<f64>> {
    let client = Client::new();
    let mut out = vec![Vec::new(); running.len()];
    for _ in 0..repeat {
        for (i, ng) in running.iter().enumerate() {
            let Some(old) = serving_pid(&client, ng.port) else {
                problems
                    .notes
                    .push(format!("reload (case {i}): no answer before reload"));
                continue;
            };
            let t0 = Instant::now();
            ng.nginx_s_reload();
            let deadline = t0 + Duration::from_secs(20);
            let ok = loop {
                match serving_pid(&client, ng.port) {
                    Some(pid) if pid != old => break true,
                    _ if Instant::now() > deadline => break false,
                    _ => std::thread::sleep(Duration::from_micros(500)),
                }
            };
            if !ok {
                problems
                    .notes
                    .push(format!("reload (case {i}): no new worker within 20s"));
                continue;
            }
            out[i].push(t0.elapsed().as_secs_f64() * 1000.0);
            // The old worker is gone before the next reload.
            let gone = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{old}")).exists() && Instant::now() < gone {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    out
}

/// Start and reload times of each case: starts on fresh prefixes, reloads
/// on one running nginx per case (in `dir/reload-<i>`).
pub fn lifecycle<const N: usize>(
    pki: &Pki,
    dir: &Path,
    repeat: usize,
    cases: &[(&str, bool); N],
    problems: &mut Problems,
) -> [Lifecycle; N] {
    let starts = start_times(pki, dir, repeat, cases, problems);
    let running: Vec<Nginx> = cases
        .iter()
        .enumerate()
        .map(|(i, &(http, module))| {
            start_nginx(pki, &dir.join(format!("reload-{i}")), http, module)
        })
        .collect();
    let refs: Vec<&Nginx> = running.iter().collect();
    let reloads = reload_times(&refs, repeat, problems);
    let mut it = starts.into_iter().zip(reloads);
    std::array::from_fn(|_| {
        let (start, reload) = it.next().unwrap_or_default();
        Lifecycle { start, reload }
    })
}
