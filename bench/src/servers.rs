//! The servers the benchmark measures, from the kit: nginx with one worker
//! on CPU 0, TLS 1.3 only and no session reuse (every handshake a full
//! one), error.log at `warn`; and what it asks of Redis besides the kit's
//! bulk load.

use std::path::Path;
use std::time::Instant;

use dyncert_testkit::{encode_command, Nginx, NginxOpts, Pki, Redis, Reply, DEFAULT_PREFIX};

use crate::host::cpus;

/// The main context of every nginx the benchmark runs, in `prefix` (kept
/// with `--keep`).
pub fn opts(prefix: &Path, with_module: bool) -> NginxOpts {
    let mut o = NginxOpts::new()
        .prefix(prefix)
        .worker_connections(4096)
        .error_log_level("warn");
    // The worker on CPU 0; the master stays where the bench pinned it.
    if cpus() > 1 {
        o = o.worker_cpu_affinity("01");
    }
    if !with_module {
        o = o.without_module();
    }
    o
}

/// The `http {}` block around `servers` (which listen on `@PORT@`).
pub fn http_block(servers: &str) -> String {
    format!(
        "http {{\n access_log off;\n ssl_protocols TLSv1.3;\n ssl_session_tickets off;\n \
         ssl_session_cache off;\n{servers}\n}}\n"
    )
}

/// Starts nginx for `servers` in `prefix` and waits until it serves.
pub fn start_nginx(pki: &Pki, prefix: &Path, servers: &str, with_module: bool) -> Nginx {
    Nginx::start(pki, &http_block(servers), opts(prefix, with_module))
}

/// Starts nginx for `servers` in `prefix`; does not wait.
pub fn spawn_nginx(pki: &Pki, prefix: &Path, servers: &str, with_module: bool) -> Nginx {
    Nginx::spawn(pki, &http_block(servers), opts(prefix, with_module))
}

/// Round-trip times (microseconds) of `HGETALL` for each of `names`,
/// one at a time: the Redis part of a cold miss, seen from here.
pub fn hgetall_micros(redis: &Redis, names: &[String]) -> Vec<u32> {
    let mut conn = redis.connect();
    names
        .iter()
        .map(|n| {
            let t0 = Instant::now();
            conn.cmd(&["HGETALL", &format!("{DEFAULT_PREFIX}{n}")])
                .expect("HGETALL");
            t0.elapsed().as_micros() as u32
        })
        .collect()
}

/// How many of `names` have a record.
pub fn count_records(redis: &Redis, names: &[String]) -> usize {
    redis
        .pipeline(
            names
                .iter()
                .map(|n| encode_command(&["EXISTS", &format!("{DEFAULT_PREFIX}{n}")])),
        )
        .iter()
        .filter(|r| **r == Reply::Int(1))
        .count()
}
