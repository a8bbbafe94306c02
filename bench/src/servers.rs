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

/// A server with one static certificate: `name`'s files in `certs`.
pub fn static_server(certs: &Path, name: &str) -> String {
    let c = certs.display();
    format!(
        "server {{ listen 127.0.0.1:@PORT@ ssl; ssl_certificate {c}/{name}.crt; \
         ssl_certificate_key {c}/{name}.key; return 200 \"$pid\\n\"; }}"
    )
}

/// dyncert on Redis at `redis_port` (and `api`, a `dyncert_api` line or
/// nothing), caching up to `cache_max` names, the default certificate
/// `default_name`'s files in `certs`; answers `$pid $dyncert_source`.
pub fn dyncert_server(
    certs: &Path,
    default_name: &str,
    redis_port: u16,
    api: &str,
    cache_max: usize,
) -> String {
    let c = certs.display();
    format!(
        "dyncert_redis redis://127.0.0.1:{redis_port}/0;\n{api}\n\
         dyncert_cache max={cache_max} valid=1h stale=1h negative=1m;\n\
         server {{ listen 127.0.0.1:@PORT@ ssl; ssl_certificate {c}/{default_name}.crt; \
         ssl_certificate_key {c}/{default_name}.key; dyncert on; \
         return 200 \"$pid $dyncert_source\\n\"; }}"
    )
}

/// Stock nginx: `ssl_certificate $ssl_server_name` files in `certs` with
/// `ssl_certificate_cache` for up to `cache_max` names. inactive= defaults
/// to 10s, which would drop most of N names between two random hits: the
/// stock cache gets dyncert's lifetime. Its max= counts files: two per
/// name.
pub fn stock_server(certs: &Path, cache_max: usize) -> String {
    let c = certs.display();
    format!(
        "ssl_certificate_cache max={} inactive=1h valid=1h;\n\
         server {{ listen 127.0.0.1:@PORT@ ssl; \
         ssl_certificate {c}/$ssl_server_name.crt; \
         ssl_certificate_key {c}/$ssl_server_name.key; return 200 \"$pid\\n\"; }}",
        2 * cache_max
    )
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
