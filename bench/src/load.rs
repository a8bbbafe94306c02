//! The load generator: timed slices of concurrent handshakes with random
//! SNI, cache warming, and sequential cold-miss sampling.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{Answer, Client};
use crate::host::{client_cpus, cpu_busy_ns, pin_to, self_cpu_ns, task_cpu_ns};

/// Handshakes of one configuration, summed over its slices.
#[derive(Default)]
pub struct Load {
    pub errors: u64,
    pub mismatches: u64,
    /// Handshake latencies (microseconds) of the verified handshakes.
    pub lat_us: Vec<u32>,
    pub wall_ns: u64,
    pub worker_cpu_ns: u64,
    /// Busy time of the server's CPU (the worker and anything else on it).
    pub server_cpu_busy_ns: u64,
    pub client_cpu_ns: u64,
    pub first_error: Option<String>,
    pub rss_kib: u64,
    /// Per slice: (verified handshakes, wall ns, worker CPU ns).
    pub slices: Vec<(u64, u64, u64)>,
}

/// What one client thread saw of its handshakes: the latencies of the
/// verified ones, the errors, the certificates that did not name the SNI.
#[derive(Default)]
pub struct Tally {
    lat: Vec<u32>,
    errors: u64,
    mismatches: u64,
    first_error: Option<String>,
}

impl Tally {
    /// One handshake with `sni`, counted.
    pub fn handshake(&mut self, client: &Client, port: u16, sni: &str) {
        match client.handshake(port, Some(sni)) {
            Ok(c) => {
                if c.names_sni {
                    self.lat.push(c.elapsed.as_micros() as u32);
                } else {
                    self.mismatches += 1;
                }
                c.close();
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    /// Adds this thread's counts to `load`.
    pub fn add_to(self, load: &mut Load) {
        load.lat_us.extend(self.lat);
        load.errors += self.errors;
        load.mismatches += self.mismatches;
        if load.first_error.is_none() {
            load.first_error = self.first_error;
        }
    }
}

impl Load {
    pub fn handshakes(&self) -> u64 {
        self.lat_us.len() as u64
    }
    pub fn per_sec(&self) -> f64 {
        self.handshakes() as f64 / (self.wall_ns as f64 / 1e9).max(1e-9)
    }
    pub fn cpu_us_per_hs(&self) -> f64 {
        self.worker_cpu_ns as f64 / 1000.0 / (self.handshakes() as f64).max(1.0)
    }
    /// Share of the server CPU's busy time that was not the nginx worker.
    pub fn foreign_server_load(&self) -> f64 {
        self.server_cpu_busy_ns.saturating_sub(self.worker_cpu_ns) as f64
            / (self.wall_ns as f64).max(1.0)
    }
    pub fn worker_util(&self) -> f64 {
        self.worker_cpu_ns as f64 / (self.wall_ns as f64).max(1.0)
    }
    /// Client CPU used, in CPUs (1.0 = one CPU fully busy).
    pub fn client_util(&self) -> f64 {
        self.client_cpu_ns as f64 / (self.wall_ns as f64).max(1.0)
    }
    /// Handshakes/s and server CPU (us) per handshake of slice `i`.
    pub fn slice(&self, i: usize) -> (f64, f64) {
        let (hs, wall, cpu) = self.slices[i];
        let hs_f = (hs as f64).max(1.0);
        (hs as f64 / (wall as f64 / 1e9), cpu as f64 / 1000.0 / hs_f)
    }
}

/// A small, fast, deterministic PRNG (xorshift64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Pins the calling thread to one of the client CPUs (by `t`).
pub fn pin_client_thread(t: usize) {
    let cpus = client_cpus();
    if !cpus.is_empty() {
        pin_to(&[cpus[t % cpus.len()]]);
    }
}

/// `concurrency` connections at a time for `dur`, SNI drawn uniformly from
/// `names`; adds the results to `into`. The client (an SSL_CTX) is shared
/// and built once, so short slices do not pay for loading it.
#[allow(clippy::too_many_arguments)]
pub fn run_slice(
    into: &mut Load,
    client: &Arc<Client>,
    port: u16,
    worker: u32,
    names: &Arc<Vec<String>>,
    concurrency: usize,
    dur: Duration,
    seed: u64,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let hs0 = into.lat_us.len() as u64;
    let (w0, b0, c0) = (task_cpu_ns(worker), cpu_busy_ns(0), self_cpu_ns());
    let start = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|t| {
            let stop = stop.clone();
            let names = names.clone();
            let client = client.clone();
            std::thread::spawn(move || {
                pin_client_thread(t);
                let mut rng = Rng::new(seed ^ ((t as u64 + 1) << 20));
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    tally.handshake(&client, port, &names[rng.below(names.len())]);
                }
                tally
            })
        })
        .collect();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("load thread").add_to(into);
    }
    let wall = start.elapsed().as_nanos() as u64;
    let cpu = task_cpu_ns(worker).saturating_sub(w0);
    into.slices
        .push((into.lat_us.len() as u64 - hs0, wall, cpu));
    into.wall_ns += wall;
    into.worker_cpu_ns += cpu;
    into.server_cpu_busy_ns += cpu_busy_ns(0).saturating_sub(b0);
    into.client_cpu_ns += self_cpu_ns().saturating_sub(c0);
}

pub struct Warm {
    pub secs: f64,
    pub errors: u64,
    pub mismatches: u64,
    pub first_error: Option<String>,
}

/// One handshake per name, `concurrency` at a time.
pub fn warm(port: u16, names: &Arc<Vec<String>>, concurrency: usize) -> Warm {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|t| {
            let (next, names) = (next.clone(), names.clone());
            std::thread::spawn(move || {
                pin_client_thread(t);
                let client = Client::new();
                let (mut errors, mut mismatches, mut first_error) = (0u64, 0u64, None);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(n) = names.get(i) else { break };
                    match client.handshake(port, Some(n)) {
                        Ok(c) => {
                            mismatches += u64::from(!c.names_sni);
                            c.close();
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                }
                (errors, mismatches, first_error)
            })
        })
        .collect();
    let mut w = Warm {
        secs: 0.0,
        errors: 0,
        mismatches: 0,
        first_error: None,
    };
    for t in threads {
        let (e, m, fe) = t.join().expect("warm thread");
        w.errors += e;
        w.mismatches += m;
        if w.first_error.is_none() {
            w.first_error = fe;
        }
    }
    w.secs = start.elapsed().as_secs_f64();
    w
}

/// Handshakes `names` one by one and asks each connection for
/// `$dyncert_source`; returns how many said something else than `expect`
/// (or failed), with the first such answer.
pub fn check_sources(port: u16, names: &[String], expect: &str) -> (usize, Option<String>) {
    let client = Client::new();
    let mut bad = 0;
    let mut first = None;
    for n in names {
        let said = client
            .handshake(port, Some(n))
            .and_then(|c| {
                if c.names_sni {
                    c.get()
                } else {
                    Err("certificate does not name the SNI".into())
                }
            })
            .map(|body| Answer::parse(&body).map(|a| a.source).unwrap_or(body));
        if said.as_deref() != Ok(expect) {
            bad += 1;
            first.get_or_insert_with(|| format!("{n}: {said:?}"));
        }
    }
    (bad, first)
}

/// Sequential latencies of first handshakes for never-seen names, each
/// paired with a handshake for a cached name just before it, so both see
/// the same machine.
#[derive(Default)]
pub struct Cold {
    pub cached_us: Vec<u32>,
    pub cold_us: Vec<u32>,
    /// Answers whose `$dyncert_source` was not the expected one.
    pub unexpected: u64,
    pub first_unexpected: Option<String>,
    pub mismatches: u64,
    pub errors: u64,
}

pub fn cold(port: u16, cached: &[String], cold_names: &[String], expect: &str, seed: u64) -> Cold {
    pin_client_thread(0);
    let client = Client::new();
    let mut rng = Rng::new(seed);
    let mut out = Cold::default();
    let one = |name: &str, want: &str, lat: &mut Vec<u32>, out_err: &mut Cold| match client
        .handshake(port, Some(name))
    {
        Ok(c) if c.names_sni => {
            lat.push(c.elapsed.as_micros() as u32);
            let said = c
                .get()
                .map(|b| Answer::parse(&b).map(|a| a.source).unwrap_or(b));
            if said.as_deref() != Ok(want) {
                out_err.unexpected += 1;
                out_err
                    .first_unexpected
                    .get_or_insert_with(|| format!("{name}: {said:?}, expected {want}"));
            }
        }
        Ok(c) => {
            out_err.mismatches += 1;
            c.close();
        }
        Err(_) => out_err.errors += 1,
    };
    let mut cached_us = Vec::with_capacity(cold_names.len());
    let mut cold_us = Vec::with_capacity(cold_names.len());
    for n in cold_names {
        one(
            &cached[rng.below(cached.len())],
            "cache",
            &mut cached_us,
            &mut out,
        );
        one(n, expect, &mut cold_us, &mut out);
    }
    out.cached_us = cached_us;
    out.cold_us = cold_us;
    out
}

/// The `p` quantile (0..1) of `v` in milliseconds; sorts `v`.
pub fn pct_ms(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i] as f64 / 1000.0
}
