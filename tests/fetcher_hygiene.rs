//! The fetcher cannot be held by one record, and lives only where it
//! should: encrypted private keys are refused without any passphrase prompt
//! (even when nginx's stdin is an open pipe, as under `docker run -i`), only
//! worker processes start fetcher threads, those threads block every
//! signal, and the Redis password never reaches a log line or an
//! `nginx -t` error.

use std::fs;
use std::time::{Duration, Instant};

use dyncert_testkit::*;
use openssl::pkey::PKey;
use openssl::symm::Cipher;

/// Redis at `@REDIS@`, a test's `@EXTRA@` directives, [`METRICS_SERVER`]
/// and the module's server answering `<sni> via <source>`.
fn http() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;",
        "    @EXTRA@",
        METRICS_SERVER,
        &source_server(""),
    ])
}

struct Setup {
    s: Stack,
    mport: u16,
}

/// Starts nginx for [`http`] with `opts`; `@RPORT@` in `redis_url` is the
/// Redis port.
fn start(redis_url: Option<&str>, extra: &str, opts: NginxOpts) -> Setup {
    let pki = Pki::new();
    let redis = Redis::start();
    let mport = free_port();
    let url = redis_url.map_or_else(
        || redis.url(),
        |u| u.replace("@RPORT@", &redis.port.to_string()),
    );
    let opts = opts
        .var("MPORT", mport)
        .var("REDIS", url)
        .var("EXTRA", extra);
    let nginx = Nginx::start(&pki, &http(), opts);
    Setup {
        s: Stack { pki, redis, nginx },
        mport,
    }
}

fn rejected(mport: u16, reason: &str) -> f64 {
    scrape_metrics(mport).get(&format!(
        "dyncert_records_rejected_total{{reason=\"{reason}\"}}"
    ))
}

#[test]
fn encrypted_keys_are_refused_while_stdin_is_an_open_pipe() {
    let mut t = start(None, "", NginxOpts::new().stdin_pipe());
    let pkcs8 = t.s.pki.leaf(&["pkcs8.example.com"], 8001);
    let key = PKey::private_key_from_pem(pkcs8.key_pem.as_bytes()).unwrap();
    let encrypted = key
        .private_key_to_pem_pkcs8_passphrase(Cipher::aes_256_cbc(), b"passphrase")
        .unwrap();
    t.s.redis.hset_cert(
        "pkcs8.example.com",
        &pkcs8.chain_pem,
        std::str::from_utf8(&encrypted).unwrap(),
    );
    let traditional = t.s.pki.leaf(&["traditional.example.com"], 8002);
    let ec = PKey::private_key_from_pem(traditional.key_pem.as_bytes())
        .unwrap()
        .ec_key()
        .unwrap();
    let encrypted = ec
        .private_key_to_pem_passphrase(Cipher::aes_256_cbc(), b"passphrase")
        .unwrap();
    assert!(String::from_utf8_lossy(&encrypted).contains("Proc-Type: 4,ENCRYPTED"));
    t.s.redis.hset_cert(
        "traditional.example.com",
        &traditional.chain_pem,
        std::str::from_utf8(&encrypted).unwrap(),
    );
    let good = t.s.pki.leaf(&["good.example.com"], 8003);
    t.s.redis.put_leaf("good.example.com", &good);

    for name in ["pkcs8.example.com", "traditional.example.com"] {
        let r = t.s.get(Some(name));
        assert!(r.is_default(), "{name}: {:?}", r.body);
        let line =
            t.s.nginx
                .wait_for_log_line(STARTUP_DEADLINE, |l| {
                    l.contains("invalid certificate record") && l.contains(name)
                })
                .unwrap_or_else(|| panic!("no warning for {name}\n{}", t.s.nginx.logs()));
        assert!(line.contains("encrypted"), "{line}");
        assert!(!line.contains("BEGIN"), "no PEM in logs: {line}");
    }
    assert_eq!(rejected(t.mport, "encrypted_key"), 2.0);
    // The fetcher is not waiting on a passphrase: other names still load.
    t.s.get(Some("good.example.com"))
        .assert_served(&good, &t.s.pki);
    // And the worker exits promptly (a fetcher blocked on stdin would hold
    // it in exit_process forever).
    let t0 = Instant::now();
    t.s.nginx.stop_and_assert_healthy();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

/// The names of a process's threads, with their blocked-signal masks.
fn threads(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in dir.flatten() {
        let status = fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let mask = u64::from_str_radix(&field("SigBlk:"), 16).unwrap_or(0);
        out.push((field("Name:"), mask));
    }
    out
}

#[test]
fn only_workers_start_fetcher_threads_and_they_block_every_signal() {
    let cache = TempDir::new("proxy-cache");
    let extra = format!(
        "proxy_cache_path {} keys_zone=hygiene:1m;",
        cache.path().display()
    );
    let t = start(None, &extra, NginxOpts::new().helpers(2));
    let leaf = t.s.pki.leaf(&["a.example.com"], 8010);
    t.s.redis.put_leaf("a.example.com", &leaf);
    // A fetch makes sure every thread the fetcher starts exists.
    t.s.get(Some("a.example.com"))
        .assert_served(&leaf, &t.s.pki);

    let mut workers = 0;
    let mut helpers = 0;
    for pid in t.s.nginx.worker_pids() {
        let cmdline = fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ts = threads(pid);
        if cmdline.contains("worker process") {
            workers += 1;
            let names: Vec<&str> = ts.iter().map(|(n, _)| n.as_str()).collect();
            assert!(names.contains(&"dyncert-fetch"), "{names:?}");
            assert!(names.contains(&"dyncert-parse"), "{names:?}");
            for (name, mask) in ts.iter().skip(1) {
                for sig in [
                    libc::SIGHUP,
                    libc::SIGINT,
                    libc::SIGQUIT,
                    libc::SIGTERM,
                    libc::SIGUSR1,
                    libc::SIGUSR2,
                    libc::SIGCHLD,
                    libc::SIGPIPE,
                    libc::SIGALRM,
                    libc::SIGWINCH,
                    libc::SIGIO,
                ] {
                    assert!(
                        mask & (1 << (sig - 1)) != 0,
                        "thread {name} does not block signal {sig} (SigBlk {mask:x})"
                    );
                }
            }
        } else {
            helpers += 1;
            assert_eq!(
                ts.len(),
                1,
                "a helper process ({}) runs threads: {ts:?}",
                cmdline.replace('\0', " ").trim()
            );
        }
    }
    assert_eq!((workers, helpers), (1, 2));
}

#[test]
fn redis_password_never_appears_in_logs_or_config_errors() {
    const SECRET: &str = "s3cret-Pa55";
    // `nginx -t` with a URL that does not parse.
    let pki = Pki::new();
    let bad = format!(
        "http {{ dyncert_redis redis://:{SECRET}@127.0.0.1:notaport/0; \
         server {{ listen 127.0.0.1:{}; }} }}",
        free_port()
    );
    let check = Nginx::config_test(&pki, &bad, NginxOpts::new());
    assert!(!check.ok, "{}", check.output);
    assert!(check.output.contains("dyncert_redis") || check.output.contains("invalid parameter"));
    assert!(
        check.output.contains("redis://:***@127.0.0.1:notaport/0"),
        "{}",
        check.output
    );
    assert!(!check.output.contains(SECRET), "{}", check.output);

    // A running nginx with the wrong password: the errors are logged
    // without it.
    let mut t = start(
        Some(&format!("redis://:wrong-{SECRET}@127.0.0.1:@RPORT@/0")),
        "",
        NginxOpts::new(),
    );
    let leaf = t.s.pki.leaf(&["a.example.com"], 8020);
    t.s.redis.put_leaf("a.example.com", &leaf);
    t.s.redis.cmd(&["CONFIG", "SET", "requirepass", SECRET]);
    let r = t.s.get(Some("a.example.com"));
    assert!(r.is_default(), "{:?}", r.body);
    t.s.nginx
        .wait_for_log_line(STARTUP_DEADLINE, |l| l.contains("a.example.com"))
        .unwrap_or_else(|| panic!("no fetch error logged\n{}", t.s.nginx.logs()));
    let log = t.s.nginx.error_log();
    assert!(!log.contains(SECRET), "{log}");
    t.s.nginx.stop_and_assert_healthy();

    // The right password works.
    let t2 = start(
        Some(&format!("redis://:{SECRET}@127.0.0.1:@RPORT@/0")),
        "",
        NginxOpts::new(),
    );
    let leaf = t2.s.pki.leaf(&["b.example.com"], 8021);
    t2.s.redis.put_leaf("b.example.com", &leaf);
    t2.s.redis.cmd(&["CONFIG", "SET", "requirepass", SECRET]);
    t2.s.get(Some("b.example.com"))
        .assert_served(&leaf, &t2.s.pki);
    assert!(!t2.s.nginx.error_log().contains(SECRET));
}
