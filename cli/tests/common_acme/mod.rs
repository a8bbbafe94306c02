//! The setup the ACME test files share: tests/acme's harness (pebble and
//! the DNS stub that points every name at 127.0.0.1), the terminator that
//! answers HTTP-01 from Redis and serves records, the CLI runner, and for
//! DNS-01 `pebble-challtestsrv` with a hook script that sets its TXT
//! records.

#[path = "../../../tests/acme/harness.rs"]
pub mod harness;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dyncert_testkit::*;
use harness::{DnsStub, Pebble};
use openssl::x509::X509;

/// The terminator: port 80's role answers challenges from Redis, the TLS
/// server serves records.
pub fn answer_and_serve() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;
    server {
        listen 127.0.0.1:@HTTP_PORT@;
        server_name _;
        dyncert_acme_challenge on;
        location / { return 404; }
    }",
        &source_server(" name=$dyncert_name"),
    ])
}

/// The record's fields sorted by name: HGETALL's order is not the
/// record's (a hash's iteration order changes as Redis rehashes it).
pub fn sorted_record(redis: &Redis, name: &str) -> Vec<(String, String)> {
    let mut fields = redis.record(name);
    fields.sort();
    fields
}

/// `dyncert put NAME --cert --key EXTRA...` of `chain` and `key`, written
/// into `dir` first.
pub fn put_pem(
    redis: &Redis,
    dir: &Path,
    name: &str,
    chain: &str,
    key: &str,
    extra: &[&str],
) -> Out {
    let stem = name.replace('*', "_");
    let crt_file = dir.join(format!("{stem}.crt"));
    let key_file = dir.join(format!("{stem}.key"));
    write_file(&crt_file, chain);
    write_file(&key_file, key);
    runner::put(redis, name, &crt_file, &key_file, extra)
}

#[path = "../common/mod.rs"]
mod runner;
#[allow(unused_imports)]
pub use runner::{dyncert, dyncert_at, Out};

pub fn issue(redis: &Redis, pebble: &Pebble, name: &str) -> Out {
    acme(redis, pebble, &["issue", name])
}

/// `dyncert ARGS... --acme-url <pebble> --acme-ca <its listener root>`.
pub fn acme(redis: &Redis, pebble: &Pebble, args: &[&str]) -> Out {
    let url = pebble.directory_url();
    let ca = pebble.ca_file();
    let mut all = args.to_vec();
    all.extend_from_slice(&["--acme-url", &url, "--acme-ca", ca.to_str().unwrap()]);
    dyncert(redis, &all)
}

impl Out {
    /// The one line a failed command printed, after checking it exited 1
    /// and printed exactly one line.
    pub fn one_line_failure(&self) -> &str {
        assert_eq!(
            self.code, 1,
            "stdout {}\nstderr {}",
            self.stdout, self.stderr
        );
        let line = self.stderr.trim_end();
        assert_eq!(line.lines().count(), 1, "one line: {line}");
        line
    }
}

/// The stored leaf (from the PEM `crt` field).
pub fn stored_leaf(redis: &Redis, name: &str) -> X509 {
    let crt = redis
        .record_field(name, "crt")
        .unwrap_or_else(|| panic!("no record for {name}"));
    X509::from_pem(crt.as_bytes()).expect("crt PEM")
}

pub fn serial(leaf: &X509) -> String {
    leaf.serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string()
}

/// The leaf nginx serves for `name`, once it is `serial` (invalidation
/// reaches the workers asynchronously).
pub fn served_serial(nginx: &Nginx, name: &str, serial: &str) -> X509 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = Request::get("/")
            .sni(name)
            .https(nginx.port)
            .unwrap_or_else(|e| panic!("TLS {name}: {e}\n{}", nginx.logs()));
        let leaf = r.tls().chain[0].clone();
        if self::serial(&leaf) == serial || Instant::now() > deadline {
            return leaf;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Keys under `pattern` (KEYS is fine on a test server).
pub fn keys(redis: &Redis, pattern: &str) -> Vec<String> {
    match redis.cmd(&["KEYS", pattern]) {
        Reply::Array(Some(items)) => items
            .into_iter()
            .filter_map(|r| match r {
                Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
                _ => None,
            })
            .collect(),
        other => panic!("KEYS {pattern}: {other:?}"),
    }
}

/// A CA, a terminator with `config` (its plain-HTTP port as `@HTTP_PORT@`,
/// where pebble validates) and their Redis: what every issuance test runs.
/// Bind every field when destructuring (`nginx: _nginx`, not `..`): a
/// field left to `..` is dropped, and its process killed, at once.
pub struct AcmeStack {
    pub nginx: Nginx,
    pub pebble: Pebble,
    pub redis: Redis,
    pub pki: Pki,
    pub dns: DnsStub,
}

impl AcmeStack {
    pub fn start(config: &str) -> AcmeStack {
        let pki = Pki::new();
        let redis = Redis::start();
        let dns = DnsStub::start();
        let http_port = free_port();
        let pebble = Pebble::start(http_port, &dns);
        let nginx = Nginx::start(
            &pki,
            config,
            NginxOpts::new().redis(&redis).var("HTTP_PORT", http_port),
        );
        AcmeStack {
            nginx,
            pebble,
            redis,
            pki,
            dns,
        }
    }
}

/// Now, in UNIX seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `pebble-challtestsrv` (Debian package `pebble`) on loopback: a DNS
/// server answering A with 127.0.0.1, AAAA with nothing, and TXT records
/// set over its management API (`POST /set-txt {"host","value"}`,
/// `/clear-txt {"host"}`). pebble is pointed at it with `-dnsserver`.
pub struct ChallTestSrv {
    pub dns: SocketAddr,
    pub management_port: u16,
    dir: TempDir,
    child: Child,
}

impl ChallTestSrv {
    pub fn start() -> ChallTestSrv {
        let dir = TempDir::new("challtestsrv");
        let (dns_port, management_port) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("challtestsrv.log")).unwrap();
        let mut cmd = Command::new("pebble-challtestsrv");
        cmd.args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{management_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .expect("spawn pebble-challtestsrv (Debian package pebble)");
        let dns: SocketAddr = format!("127.0.0.1:{dns_port}").parse().unwrap();
        let management: SocketAddr = format!("127.0.0.1:{management_port}").parse().unwrap();
        // Both listen on TCP (DNS on UDP as well) once it is ready.
        let ready = poll(STARTUP_DEADLINE, Duration::from_millis(20), || {
            (TcpStream::connect(dns).is_ok() && TcpStream::connect(management).is_ok())
                .then_some(())
        });
        let srv = ChallTestSrv {
            dns,
            management_port,
            dir,
            child,
        };
        assert!(ready.is_some(), "challtestsrv not ready\n{}", srv.log());
        srv
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("challtestsrv.log")).unwrap_or_default()
    }
}

impl Drop for ChallTestSrv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the test hook's `present` behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Present {
    /// Sets the TXT record, then exits 0.
    Sets,
    /// Says why on stderr and exits 1 (after logging).
    Fails,
    /// Exits 0 at once and sets the record a second later, as a DNS
    /// provider whose API answers before its servers carry the record.
    SetsLate,
}

/// A DNS-01 hook with lego's exec interface (`HOOK present|cleanup FQDN
/// VALUE`) that sets and clears the TXT record in challtestsrv with curl
/// and appends each call to a log.
pub struct DnsHookScript {
    pub path: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl DnsHookScript {
    pub fn new(chall: &ChallTestSrv, present: Present) -> DnsHookScript {
        Self::with_extra(chall, present, "")
    }

    /// [`Self::new`] whose script also runs the shell line `extra` first
    /// on every call (say, a concurrent change to Redis midway through an
    /// order).
    pub fn with_extra(chall: &ChallTestSrv, present: Present, extra: &str) -> DnsHookScript {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("dns-hook");
        let path = dir.path().join("hook.sh");
        let log = dir.path().join("calls.log");
        let special = match present {
            Present::Sets => "",
            Present::Fails => {
                "[ \"$1\" = present ] && { echo \"zone for $2 not found\" >&2; exit 1; }"
            }
            Present::SetsLate => {
                "[ \"$1\" = present ] && { (sleep 1; call set-txt \"$2\" \"$3\") >/dev/null 2>&1 & exit 0; }"
            }
        };
        let script = format!(
            r#"#!/bin/sh
call() {{
  curl -sS -f -X POST -d "{{\"host\":\"$2\",\"value\":\"$3\"}}" "http://127.0.0.1:{port}/$1"
}}
echo "$1 $2 $3" >> '{log}'
{extra}
{special}
case "$1" in
  present) call set-txt "$2" "$3" ;;
  cleanup) call clear-txt "$2" "$3" ;;
  *) echo "unknown action $1" >&2; exit 2 ;;
esac
"#,
            log = log.display(),
            port = chall.management_port,
        );
        write_file(&path, script);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        DnsHookScript {
            path,
            log,
            _dir: dir,
        }
    }

    /// Each call so far: `[action, fqdn, value]`.
    pub fn calls(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(' ').map(str::to_owned).collect())
            .collect()
    }
}

/// pebble validating DNS-01 against challtestsrv, with `eab` required
/// when given, a serving terminator and its Redis. Bind every field when
/// destructuring, as with [`AcmeStack`].
pub struct DnsStack {
    pub nginx: Nginx,
    pub pebble: Pebble,
    pub redis: Redis,
    pub pki: Pki,
    pub chall: ChallTestSrv,
}

impl DnsStack {
    pub fn start(eab: Option<(&str, &str)>) -> DnsStack {
        let pki = Pki::new();
        let redis = Redis::start();
        let chall = ChallTestSrv::start();
        let http_port = free_port();
        let pebble = Pebble::start_with(http_port, chall.dns, eab);
        let nginx = Nginx::start(
            &pki,
            &answer_and_serve(),
            NginxOpts::new().redis(&redis).var("HTTP_PORT", http_port),
        );
        DnsStack {
            nginx,
            pebble,
            redis,
            pki,
            chall,
        }
    }
}

/// A "CA" that accepts TCP connections and never sends a byte nor closes
/// them: a hung CA, or a middlebox that swallows the exchange. Its
/// directory URL is `https://127.0.0.1:PORT/dir`.
pub struct SilentCa {
    pub port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentCa {
    pub fn start() -> SilentCa {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind silent CA");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopping) = (Arc::clone(&accepted), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        held.push(conn);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        SilentCa {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for SilentCa {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `dyncert --redis URL ARGS...` with `env` added, killed if still
/// running after `deadline`; its output and how long it ran. The exit
/// code of a killed run is -1.
pub fn dyncert_bounded(
    redis: &Redis,
    env: &[(&str, &str)],
    args: &[&str],
    deadline: Duration,
) -> (Out, Duration) {
    use std::io::Read;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dyncert"));
    cmd.arg("--redis")
        .arg(redis.url())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let started = Instant::now();
    let mut child = cmd.spawn().expect("run dyncert");
    let status = poll(deadline, Duration::from_millis(20), || {
        child.try_wait().expect("wait for dyncert")
    });
    let took = started.elapsed();
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let code = status.and_then(|s| s.code()).unwrap_or(-1);
    (
        Out {
            code,
            stdout,
            stderr,
        },
        took,
    )
}
