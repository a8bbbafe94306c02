//! `dyncert-bench junk`: what a burst of bad records costs a good name's
//! first fetch.
//!
//! N never-seen names whose records are junk (a certificate for the name
//! with another name's key: everything but the last check passes, so each
//! costs a full parse before it is refused) are requested at once, by N
//! connections that send their ClientHello and wait parked; right behind
//! them a never-seen good name is requested and its cold handshake timed.
//! The same cold handshake alone, in the same run, is the baseline. The
//! issue's target: N = 1,000 junk records add under 50 ms.

use std::path::Path;
use std::time::{Duration, Instant};

use dyncert_testkit::{
    encode_command, free_port, scrape_metrics, HelloSent, Pki, Redis, Request, DEFAULT_PREFIX,
};
use openssl::ssl::SslVersion;

use crate::client::Client;
use crate::host::cpus;
use crate::servers::start_nginx;

/// The target: added latency of a good name's cold handshake.
const TARGET_MS: f64 = 50.0;

pub struct JunkArgs {
    pub junk: usize,
    pub rounds: usize,
    pub quick: bool,
}

pub fn parse(argv: &[String]) -> JunkArgs {
    let mut a = JunkArgs {
        junk: 1000,
        rounds: 10,
        quick: false,
    };
    let mut i = 0;
    while i < argv.len() {
        match argv[i].as_str() {
            "--quick" => {
                a.quick = true;
                a.rounds = 3;
                i += 1;
            }
            flag @ ("--junk" | "--rounds") => {
                let Some(v) = argv.get(i + 1).and_then(|v| v.parse::<usize>().ok()) else {
                    usage()
                };
                if v == 0 {
                    usage()
                }
                if flag == "--junk" {
                    a.junk = v;
                } else {
                    a.rounds = v;
                }
                i += 2;
            }
            _ => usage(),
        }
    }
    a
}

fn usage() -> ! {
    eprintln!(
        "usage: dyncert-bench junk [--junk N] [--rounds R] [--quick]\n  \
         --junk N    junk records fetched at once ahead of a good name (default 1000)\n  \
         --rounds R  bursts measured (default 10; --quick: 3)"
    );
    std::process::exit(2)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs the scenario; returns the process exit status.
pub fn run(args: &JunkArgs, dir: &Path) -> i32 {
    let pki = Pki::new();
    let threads = cpus();
    let baseline_samples = 20;
    let good_names: Vec<String> = (0..baseline_samples + args.rounds)
        .map(|i| format!("good{i}.junk.test"))
        .collect();
    let junk_names: Vec<String> = (0..args.junk * args.rounds)
        .map(|i| format!("junk{i}.junk.test"))
        .collect();
    eprintln!(
        "generating {} certificates on {threads} threads",
        good_names.len() + junk_names.len()
    );
    let good = pki.leaves_pem(good_names.clone(), 1, threads);
    let junk = pki.leaves_pem(junk_names.clone(), 100_000, threads);

    let redis = Redis::start();
    redis.put_leaves_pem(&pki, &good);
    // Each junk record carries the next junk site's key: it parses, covers
    // its name, and is refused at the key check.
    redis.pipeline(junk.iter().enumerate().map(|(i, s)| {
        let other = &junk[(i + 1) % junk.len()];
        encode_command(&[
            "HSET",
            &format!("{DEFAULT_PREFIX}{}", s.name),
            "crt",
            &s.chain_pem(&pki),
            "key",
            &other.key_pem,
        ])
    }));
    drop(junk);

    let mport = free_port();
    // default.crt: the kit's static default certificate, which only the
    // warm-up handshake (no SNI) gets.
    let http = format!(
        "dyncert_redis {};\n\
         dyncert_fetch_concurrency {};\n dyncert_fetch_timeout 10s;\n\
         server {{ listen 127.0.0.1:{mport}; location / {{ dyncert_metrics; }} }}\n\
         server {{ listen 127.0.0.1:@PORT@ ssl backlog=8192; \
         ssl_certificate default.crt; ssl_certificate_key default.key; dyncert on; \
         return 200 \"$pid $dyncert_source\\n\"; }}",
        redis.url(),
        args.junk * 2 + 64,
    );
    let nginx = start_nginx(&pki, &dir.join("junk-nginx"), &http, true);
    let client = Client::new();
    let mut problems = Vec::new();
    let mut cold = |name: &str| -> f64 {
        match client.handshake(nginx.port, Some(name)) {
            Ok(c) => {
                let ms = c.elapsed.as_secs_f64() * 1000.0;
                if !c.names_sni {
                    problems.push(format!("{name}: served another certificate"));
                }
                c.close();
                ms
            }
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                f64::NAN
            }
        }
    };
    // Warm-up: the worker's Redis connection and code paths.
    let _ = client.handshake(nginx.port, None).map(|c| c.close());

    let mut alone: Vec<f64> = good_names[..baseline_samples]
        .iter()
        .map(|n| cold(n))
        .collect();
    let mut behind = Vec::new();
    let rejected_before = rejected(mport);
    let mut drained = true;
    for r in 0..args.rounds {
        let names = &junk_names[r * args.junk..(r + 1) * args.junk];
        let parked = send_hellos(nginx.port, names);
        behind.push(cold(&good_names[baseline_samples + r]));
        drop(parked);
        // Every burst starts on an idle fetcher: wait until this one's junk
        // records have all been fetched and refused.
        let want = rejected_before + ((r + 1) * args.junk) as u64;
        let t0 = Instant::now();
        while rejected(mport) < want {
            if t0.elapsed() > Duration::from_secs(60) {
                drained = false;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let refused = rejected(mport) - rejected_before;
    if !drained {
        problems.push("a burst's junk records were not all refused within 60 s".into());
    }
    let alone_ms = median(&mut alone);
    let behind_ms = median(&mut behind);
    let added = behind_ms - alone_ms;
    let pass = added < TARGET_MS;
    println!("\n## Junk records ahead of a good name (dyncert-bench junk)\n");
    println!("| | cold handshake p50 |");
    println!("| --- | --- |");
    println!("| good name alone ({baseline_samples} samples) | {alone_ms:.2} ms |");
    println!(
        "| good name right behind {} junk records being fetched ({} rounds) | {behind_ms:.2} ms |",
        args.junk, args.rounds
    );
    println!(
        "| added | {added:.2} ms (target < {TARGET_MS:.0} ms): {} |",
        if pass { "PASS" } else { "FAIL" }
    );
    println!(
        "\njunk records fetched and refused: {refused} of {} (each burst drained before the next)",
        args.junk * args.rounds
    );
    drop(nginx);
    for p in &problems {
        println!("problem: {p}");
    }
    if !problems.is_empty() || (!pass && !args.quick) {
        1
    } else {
        0
    }
}

/// Opens one connection per name and sends its ClientHello (a real one,
/// from OpenSSL on a non-blocking socket); the connections stay parked
/// until the returned values are dropped.
fn send_hellos(port: u16, names: &[String]) -> Vec<HelloSent> {
    let base = Request::get("/")
        .like_ssl_connector()
        .min_tls(SslVersion::TLS1_3);
    names
        .iter()
        .filter_map(|n| base.clone().sni(n).send_hello(port).ok())
        .collect()
}

/// `dyncert_records_rejected_total`, summed over reasons.
fn rejected(mport: u16) -> u64 {
    scrape_metrics(mport).sum("dyncert_records_rejected_total") as u64
}
