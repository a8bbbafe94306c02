//! A PKCS#11 token that stops answering (a partitioned network HSM, a
//! wedged smart-card daemon) while a worker loads a key from it: the load
//! runs on a thread of its own, the record's parse waits at most 2 s and
//! refuses the record (`key_reference_timeout`), further key references are
//! refused at once while the token hangs, and plain PEM records of the same
//! worker keep being served; when the token answers again, so is the HSM
//! record.
//!
//! The token is SoftHSM2 behind a small PKCS#11 module of ours
//! (`tests/tools/pkcs11_hang.c`, built here with gcc) whose key-load calls
//! hang while a flag file exists. Needs softhsm2, opensc (pkcs11-tool),
//! libengine-pkcs11-openssl, gcc and libp11-kit-dev (`scripts/deps.sh
//! --pkcs11`); without them the test skips, unless `DYNCERT_REQUIRE_PKCS11`
//! is set: then it fails.

use dyncert_testkit::*;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

const P11_HEADER: &str = "/usr/include/p11-kit-1/p11-kit/pkcs11.h";

/// The worker waits this long for a record; longer than the module's
/// 2 s bound on a key load, so a plain record parsed right behind the
/// load that hangs is still served to the connection waiting for it.
const KEYREFS: &str = "    dyncert_fetch_timeout 3s;
    dyncert_cache max=1000 valid=1h stale=1h negative=1s;
    dyncert_key_references engine module=@MODULE@ pin_file=@PIN_FILE@;";

fn http() -> String {
    let http = http_block(&[
        "    dyncert_redis @REDIS@;",
        KEYREFS,
        METRICS_SERVER,
        SOURCE_SERVER,
    ]);
    format!("\nenv SOFTHSM2_CONF;{http}")
}

/// A SoftHSM2 token of its own, reached through the hanging module built
/// into the token's temp dir.
struct Hsm {
    token: SoftHsm,
}

impl std::ops::Deref for Hsm {
    type Target = SoftHsm;

    fn deref(&self) -> &SoftHsm {
        &self.token
    }
}

impl Hsm {
    /// A fresh token labelled "dyncert" (user PIN 1234) and the module, or
    /// `None` when the tools are missing and the test may skip.
    fn start() -> Option<Hsm> {
        let token = SoftHsm::start("softhsm-hang", &[P11_HEADER], &["gcc"])?;
        let hsm = Hsm { token };
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/pkcs11_hang.c");
        hsm.run(
            "gcc",
            &[
                "-Wall",
                "-Werror",
                "-shared",
                "-fPIC",
                "-I/usr/include/p11-kit-1",
                &format!("-DHANG_DIR=\"{}\"", hsm.dir.path().display()),
                &format!("-DREAL_MODULE=\"{SOFTHSM_MODULE}\""),
                "-o",
                hsm.module().to_str().unwrap(),
                source.to_str().unwrap(),
                "-ldl",
            ],
        );
        hsm.init_token();
        hsm.hand_to_workers();
        Some(hsm)
    }

    /// The hanging module (`dyncert_key_references engine module=`).
    fn module(&self) -> PathBuf {
        self.dir.path().join("libpkcs11_hang.so")
    }

    /// Makes the token's key-load calls hang until the guard is dropped.
    fn hang_loads(&self) -> Hang {
        let flag = self.dir.path().join("load");
        write_file(&flag, "hang");
        Hang(flag)
    }
}

/// A flag file of the hanging module; removing it (on drop too, so a
/// failed assertion never leaves a worker stuck) lets the token answer.
struct Hang(PathBuf);

impl Drop for Hang {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A handshake and request for `name`: the body (or the error) and how long
/// it took.
fn get(port: u16, name: &str) -> (Result<Exchange, String>, Duration) {
    let t0 = Instant::now();
    let r = Request::get("/")
        .sni(name)
        .timeout(Duration::from_secs(10))
        .https(port);
    (r, t0.elapsed())
}

/// nginx with `workers` workers whose key references go through `hsm`'s
/// hanging module, its metrics on `mport`.
fn stack(hsm: &Hsm, workers: u32, mport: u16) -> Stack {
    Stack::start_with(
        &http(),
        NginxOpts::new()
            .workers(workers)
            .var("MPORT", mport)
            .var("MODULE", hsm.module().display())
            .var("PIN_FILE", hsm.pin_file().display())
            .env("SOFTHSM2_CONF", hsm.conf().to_str().unwrap()),
    )
}

fn body(r: &Result<Exchange, String>) -> String {
    match r {
        Ok(e) => e.body.trim().to_owned(),
        Err(e) => format!("error: {e}"),
    }
}

/// "At once": a fetch and handshake on a loaded machine stay under it, and
/// one that waited for the hung token would take the load bound
/// (`LOAD_TIMEOUT`, 2 s) or hang until the token answers.
const AT_ONCE: Duration = Duration::from_millis(1500);

fn timeouts(mport: u16) -> f64 {
    scrape_metrics(mport).get("dyncert_records_rejected_total{reason=\"key_reference_timeout\"}")
}

/// Threads of process `pid` named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// With `dyncert_key_references engine`, each worker starts its key loader
/// thread in `init_process`, with its fetcher threads, before any record
/// names a key; the master starts none (it forks the workers).
#[test]
fn the_key_loader_thread_starts_with_each_worker() {
    let Some(hsm) = Hsm::start() else { return };
    let mut s = stack(&hsm, 2, free_port());
    let workers = s.nginx.worker_pids();
    assert_eq!(workers.len(), 2, "{workers:?}");
    for pid in workers {
        // init_process has run once the worker serves; polled all the same
        // (a worker may still be starting when the first one answers).
        let threads = || {
            (
                threads_named(pid, "dyncert-fetch"),
                threads_named(pid, "dyncert-pkcs11"),
            )
        };
        let started = poll(Duration::from_secs(5), Duration::from_millis(50), || {
            (threads() == (1, 1)).then_some(())
        });
        assert!(
            started.is_some(),
            "worker {pid}: (fetcher, loader) threads {:?} before any load",
            threads()
        );
    }
    assert_eq!(threads_named(s.nginx.master_pid(), "dyncert-pkcs11"), 0);
    assert!(!s.nginx.logs().contains("key loader"), "{}", s.nginx.logs());
    s.nginx.assert_healthy();
}

#[test]
fn a_hung_token_refuses_its_record_after_the_bound_and_never_holds_up_plain_records() {
    let Some(hsm) = Hsm::start() else { return };
    let mport = free_port();
    let s = stack(&hsm, 1, mport);
    let port = s.nginx.port;
    let hsm_leaf = s.pki.leaf(&["hsm.example.com"], 18001);
    hsm.import(&hsm_leaf, "01", "k1");
    s.redis.hset_cert(
        "hsm.example.com",
        &hsm_leaf.chain_pem,
        "engine:pkcs11:pkcs11:token=dyncert;object=k1",
    );
    let plain: Vec<(String, Leaf)> = (0..3)
        .map(|i| {
            let name = format!("plain{i}.example.com");
            let leaf = s.pki.leaf(&[name.as_str()], 18010 + i);
            s.redis.put_leaf(&name, &leaf);
            (name, leaf)
        })
        .collect();

    // The token hangs at the worker's first key load (its login).
    let hang = hsm.hang_loads();
    let hsm_first = thread::spawn(move || get(port, "hsm.example.com"));
    thread::sleep(Duration::from_millis(300));
    // A plain record parsed while that load hangs: served its own
    // certificate, to the connection that waits for it.
    let (r, took) = get(port, &plain[0].0);
    assert_eq!(
        r.as_ref().map(|e| e.source()),
        Ok("redis"),
        "a plain record while the token hangs: {:?} after {took:?}\n{}",
        body(&r),
        tail(&s.nginx.logs(), 10)
    );
    r.unwrap().assert_served(&plain[0].1, &s.pki);
    // The HSM record: the default after the 2 s bound, with a log line
    // and a counter.
    let (r, took) = hsm_first.join().unwrap();
    assert_eq!(
        r.as_ref().map(|e| e.source()),
        Ok("default"),
        "{:?} after {took:?}",
        body(&r)
    );
    assert!(took < Duration::from_millis(3500), "{took:?}");
    let line = s
        .nginx
        .wait_for_log_line(Duration::from_secs(5), |l| {
            l.contains("did not answer within 2s") && l.contains("name: \"hsm.example.com\"")
        })
        .unwrap_or_else(|| panic!("no timeout line\n{}", s.nginx.logs()));
    assert!(line.contains("[warn]"), "{line}");
    assert_eq!(timeouts(mport), 1.0);

    // Still hung: the record is refused at once (nothing waits on the
    // token again, no second load queues behind the first), and plain
    // records are served at once.
    thread::sleep(Duration::from_millis(1100)); // negative=1s
    let (r, took) = get(port, "hsm.example.com");
    assert_eq!(
        r.as_ref().map(|e| e.source()),
        Ok("default"),
        "{:?}",
        body(&r)
    );
    assert!(took < AT_ONCE, "refused at once: {took:?}");
    assert!(s
        .nginx
        .wait_for_log_line(Duration::from_secs(5), |l| {
            l.contains("has not answered an earlier key load within 2s")
                && l.contains("name: \"hsm.example.com\"")
        })
        .is_some());
    assert_eq!(timeouts(mport), 2.0);
    for (name, leaf) in &plain[1..] {
        let (r, took) = get(port, name);
        assert!(took < AT_ONCE, "{name}: {took:?}");
        let r = r.unwrap();
        assert_eq!(r.source(), "redis", "{:?}", r.body);
        r.assert_served(leaf, &s.pki);
    }

    // The token answers again: the hung load returns (its key is dropped)
    // and the record's next fetch loads the key and serves it.
    drop(hang);
    let served = poll(Duration::from_secs(20), Duration::from_millis(300), || {
        let (r, _) = get(port, "hsm.example.com");
        r.ok()
            .filter(|e| e.source() == "redis" || e.source() == "cache")
    })
    .unwrap_or_else(|| panic!("the HSM record was never served\n{}", s.nginx.logs()));
    served.assert_served(&hsm_leaf, &s.pki);
    let resolved = scrape_metrics(mport).get("dyncert_key_references_resolved_total");
    assert_eq!(resolved, 1.0, "the late load's key was discarded");
}

/// The loader thread holds nothing a handshake needs: while one key's load
/// hangs in the token (after the worker's login), a key loaded before still
/// signs its handshakes, and cached plain names are served as ever. (With
/// libp11 and SoftHSM; a module that serialises its calls internally would
/// stall those signatures too, see README.)
#[test]
fn a_key_loaded_before_keeps_signing_while_another_keys_load_hangs() {
    let Some(hsm) = Hsm::start() else { return };
    let mport = free_port();
    let s = stack(&hsm, 1, mport);
    let port = s.nginx.port;
    let leaves: Vec<Leaf> = (1..=2)
        .map(|i| {
            let name = format!("hsm{i}.example.com");
            let leaf = s.pki.leaf(&[name.as_str()], 18100 + i);
            hsm.import(&leaf, &format!("0{i}"), &format!("k{i}"));
            s.redis.hset_cert(
                &name,
                &leaf.chain_pem,
                &format!("engine:pkcs11:pkcs11:token=dyncert;object=k{i}"),
            );
            leaf
        })
        .collect();
    let plain = s.pki.leaf(&["plain.example.com"], 18103);
    s.redis.put_leaf("plain.example.com", &plain);
    for name in ["hsm1.example.com", "plain.example.com"] {
        let (r, _) = get(port, name);
        assert_eq!(
            r.as_ref().map(|e| e.source()),
            Ok("redis"),
            "{:?}",
            body(&r)
        );
    }

    let hang = hsm.hang_loads();
    let second = thread::spawn(move || get(port, "hsm2.example.com"));
    thread::sleep(Duration::from_millis(500));
    for (name, leaf) in [
        ("hsm1.example.com", &leaves[0]),
        ("plain.example.com", &plain),
    ] {
        let (r, took) = get(port, name);
        let r = r.unwrap_or_else(|e| panic!("{name}: {e} after {took:?}"));
        assert_eq!(r.source(), "cache", "{:?}", r.body);
        r.assert_served(leaf, &s.pki);
        assert!(took < AT_ONCE, "{name}: {took:?}");
    }
    let (r, took) = second.join().unwrap();
    assert_eq!(
        r.as_ref().map(|e| e.source()),
        Ok("default"),
        "{:?}",
        body(&r)
    );
    assert!(took < Duration::from_millis(3500), "{took:?}");
    assert_eq!(timeouts(mport), 1.0);
    drop(hang);
    let served = poll(Duration::from_secs(20), Duration::from_millis(300), || {
        get(port, "hsm2.example.com")
            .0
            .ok()
            .filter(|e| e.source() != "default")
    })
    .unwrap_or_else(|| panic!("hsm2 was never served\n{}", s.nginx.logs()));
    served.assert_served(&leaves[1], &s.pki);
}
