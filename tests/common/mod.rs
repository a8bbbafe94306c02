//! Integration test harness: a throwaway PKI, a real `redis-server` and the
//! real NGINX built from the same sources as the module, each on its own
//! free port and temp prefix so tests can run in parallel threads.
//!
//! Everything started here is killed on Drop, also when a test panics; a
//! failing test prints the tail of the nginx error.log.

// Each tests/*.rs compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod acme;
pub mod api;
pub mod client;
#[allow(unused_imports)]
pub use api::*;

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{Ssl, SslContext, SslMethod, SslSessionCacheMode, SslVerifyMode, SslVersion};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Name, X509};

/// How long the harness waits for a process to come up or a condition to
/// hold before it gives up; generous because CI machines have 2 cores.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(15);
/// Connect, read and write timeout of the TLS test client.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Paths of the binaries under test
// ---------------------------------------------------------------------------

/// `target/<profile>`: integration tests run from `target/<profile>/deps/`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// The NGINX binary the module was compiled against: `DYNCERT_NGINX_BIN`,
/// else the nginx-sys build dir exported by build.rs (compile time), else
/// the copy of it that build.rs writes to `target/<profile>`.
pub fn nginx_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("DYNCERT_NGINX_BIN") {
        return PathBuf::from(bin);
    }
    let mut candidates = Vec::new();
    if let Some(dir) = option_env!("DYNCERT_NGINX_BUILD_DIR") {
        candidates.push(PathBuf::from(dir).join("nginx"));
    }
    if let Ok(dir) = fs::read_to_string(profile_dir().join("nginx-build-dir.txt")) {
        candidates.push(PathBuf::from(dir.trim()).join("nginx"));
    }
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "no nginx binary found (tried {candidates:?}); run `cargo build` first or set DYNCERT_NGINX_BIN"
    );
}

/// The built module, as an absolute path (`load_module` resolves relative
/// paths against the prefix, which is a temp dir here).
pub fn module_path() -> PathBuf {
    if let Some(m) = std::env::var_os("DYNCERT_MODULE") {
        let m = PathBuf::from(m);
        return if m.is_absolute() {
            m
        } else {
            std::env::current_dir().unwrap().join(m)
        };
    }
    let m = profile_dir().join("libngx_http_dyncert_module.so");
    assert!(
        m.is_file(),
        "module {} not found; run `cargo build` first or set DYNCERT_MODULE",
        m.display()
    );
    m
}

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

/// A port that was free a moment ago, and never handed out before in this
/// test binary: tests run in parallel threads, and two of them must not be
/// given the same port before either server binds it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if GIVEN.lock().map(|mut g| g.insert(port)).unwrap_or(true) {
            return port;
        }
    }
}

/// Polls `f` until it returns `Some` or `deadline` passes.
pub fn poll<T>(
    deadline: Duration,
    interval: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= deadline {
            return None;
        }
        thread::sleep(interval);
    }
}

/// A directory under the system temp dir, removed on Drop unless the test
/// is failing (then it is kept and its path printed for post-mortems).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "dyncert-{tag}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("kept {} for inspection", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent dir");
    }
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Sends `sig` to one process the test started (or one of its workers).
pub fn signal(pid: u32, sig: libc::c_int) -> bool {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is one of
    // our own children (or its process group), never a broad target.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Makes the child die with the test process even when the test binary is
/// killed outright (Drop never runs then), so no server outlives a test run.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls
    // prctl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Waits for `child` to exit, up to `deadline`.
fn wait_exit(child: &mut Child, deadline: Duration) -> bool {
    poll(deadline, Duration::from_millis(20), || {
        child.try_wait().ok().flatten().map(|_| ())
    })
    .is_some()
}

/// Children of `pid` according to /proc (nginx workers of a master).
pub fn child_pids(pid: u32) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // The comm field may contain spaces; fields after the last ')' are
        // "state ppid ...".
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) && state != Some("Z") {
            out.insert(p);
        }
    }
    out
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// PKI
// ---------------------------------------------------------------------------

/// A key pair with its certificate, as objects and as PEM.
pub struct Issued {
    pub cert: X509,
    pub key: PKey<Private>,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A leaf certificate and the chain a server should present with it.
pub struct Leaf {
    pub issued: Issued,
    /// Leaf first, then the intermediate: the `crt` field of a record.
    pub chain_pem: String,
    pub key_pem: String,
    /// Upper-case hex, as `TlsResponse::leaf_serial`.
    pub serial_hex: String,
}

/// Options for a leaf; `Default` is a valid certificate issued by the
/// intermediate CA.
#[derive(Default)]
pub struct LeafOpts {
    pub expired: bool,
}

/// A root CA, an intermediate CA, and the static default certificate
/// (`default.invalid`, self-signed) that nginx serves for unknown names.
pub struct Pki {
    pub root: Issued,
    pub intermediate: Issued,
    pub default: Issued,
}

fn new_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn name(cn: &str) -> X509Name {
    let mut n = X509Name::builder().unwrap();
    n.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    n.build()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

struct CertSpec<'a> {
    cn: &'a str,
    sans: &'a [&'a str],
    /// IP address SANs (servers the module connects to by address).
    ips: &'a [&'a str],
    serial: Option<u64>,
    ca: bool,
    not_before: i64,
    not_after: i64,
}

fn issue(spec: CertSpec<'_>, issuer: Option<&Issued>) -> Issued {
    let key = new_key();
    let subject = name(spec.cn);
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let serial = match spec.serial {
        Some(s) => BigNum::from_dec_str(&s.to_string()).unwrap(),
        None => {
            let mut bn = BigNum::new().unwrap();
            bn.rand(63, MsbOption::MAYBE_ZERO, false).unwrap();
            bn
        }
    };
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&subject).unwrap();
    match issuer {
        Some(i) => b.set_issuer_name(i.cert.subject_name()).unwrap(),
        None => b.set_issuer_name(&subject).unwrap(),
    }
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(spec.not_before).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(spec.not_after).unwrap())
        .unwrap();
    if spec.ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap(),
        )
        .unwrap();
    } else {
        b.append_extension(BasicConstraints::new().critical().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .build()
                .unwrap(),
        )
        .unwrap();
    }
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(issuer.map(|i| i.cert.as_ref()), None))
        .unwrap();
    b.append_extension(ski).unwrap();
    if let Some(i) = issuer {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(Some(&i.cert), None))
            .unwrap();
        b.append_extension(aki).unwrap();
    }
    if !spec.sans.is_empty() || !spec.ips.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for s in spec.sans {
            san.dns(s);
        }
        for ip in spec.ips {
            san.ip(ip);
        }
        let ext = san
            .build(&b.x509v3_context(issuer.map(|i| i.cert.as_ref()), None))
            .unwrap();
        b.append_extension(ext).unwrap();
    }
    let signer = issuer.map(|i| &i.key).unwrap_or(&key);
    b.sign(signer, MessageDigest::sha256()).unwrap();
    let cert = b.build();
    let cert_pem = String::from_utf8(cert.to_pem().unwrap()).unwrap();
    let key_pem = String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    Issued {
        cert,
        key,
        cert_pem,
        key_pem,
    }
}

impl Pki {
    pub fn new() -> Pki {
        let now = unix_now();
        let year = 365 * 24 * 3600;
        let root = issue(
            CertSpec {
                cn: "dyncert test root CA",
                sans: &[],
                ips: &[],
                serial: None,
                ca: true,
                not_before: now - 3600,
                not_after: now + 10 * year,
            },
            None,
        );
        let intermediate = issue(
            CertSpec {
                cn: "dyncert test intermediate CA",
                sans: &[],
                ips: &[],
                serial: None,
                ca: true,
                not_before: now - 3600,
                not_after: now + 5 * year,
            },
            Some(&root),
        );
        let default = issue(
            CertSpec {
                cn: DEFAULT_NAME,
                sans: &[DEFAULT_NAME],
                ips: &[],
                serial: Some(1),
                ca: false,
                not_before: now - 3600,
                not_after: now + year,
            },
            None,
        );
        Pki {
            root,
            intermediate,
            default,
        }
    }

    /// A leaf for `sans` (the first one is also the CN) with `serial`,
    /// issued by the intermediate.
    pub fn leaf(&self, sans: &[&str], serial: u64) -> Leaf {
        self.leaf_with(sans, serial, LeafOpts::default())
    }

    pub fn leaf_with(&self, sans: &[&str], serial: u64, opts: LeafOpts) -> Leaf {
        let now = unix_now();
        let (not_before, not_after) = if opts.expired {
            (now - 30 * 24 * 3600, now - 24 * 3600)
        } else {
            (now - 3600, now + 90 * 24 * 3600)
        };
        self.leaf_between(sans, &[], serial, not_before, not_after)
    }

    /// A leaf whose notAfter is `lifetime` from now: the module must stop
    /// serving it then, whatever its cache TTLs say.
    pub fn leaf_expiring_in(&self, sans: &[&str], serial: u64, lifetime: Duration) -> Leaf {
        let now = unix_now();
        self.leaf_between(
            sans,
            &[],
            serial,
            now - 3600,
            now + lifetime.as_secs() as i64,
        )
    }

    /// A server certificate for a TLS endpoint of the harness (the HTTPS
    /// certificate API), valid for DNS names and IP addresses.
    pub fn server_leaf(&self, sans: &[&str], ips: &[&str], serial: u64) -> Leaf {
        let now = unix_now();
        self.leaf_between(sans, ips, serial, now - 3600, now + 90 * 24 * 3600)
    }

    /// A self-signed CA unrelated to the server PKI: what a tenant puts in
    /// the `client_ca` field of its record.
    pub fn client_ca(&self, cn: &str) -> Issued {
        let now = unix_now();
        issue(
            CertSpec {
                cn,
                sans: &[],
                ips: &[],
                serial: None,
                ca: true,
                not_before: now - 3600,
                not_after: now + 365 * 24 * 3600,
            },
            None,
        )
    }

    /// A client certificate with subject `CN=cn` issued by `ca`.
    pub fn client_cert(&self, ca: &Issued, cn: &str) -> Issued {
        let now = unix_now();
        issue(
            CertSpec {
                cn,
                sans: &[],
                ips: &[],
                serial: None,
                ca: false,
                not_before: now - 3600,
                not_after: now + 30 * 24 * 3600,
            },
            Some(ca),
        )
    }

    fn leaf_between(
        &self,
        sans: &[&str],
        ips: &[&str],
        serial: u64,
        not_before: i64,
        not_after: i64,
    ) -> Leaf {
        let issued = issue(
            CertSpec {
                cn: sans[0],
                sans,
                ips,
                serial: Some(serial),
                ca: false,
                not_before,
                not_after,
            },
            Some(&self.intermediate),
        );
        let chain_pem = format!("{}{}", issued.cert_pem, self.intermediate.cert_pem);
        let key_pem = issued.key_pem.clone();
        Leaf {
            issued,
            chain_pem,
            key_pem,
            serial_hex: serial_hex(serial),
        }
    }

    /// Writes `default.crt` / `default.key` into `dir`.
    pub fn write_default(&self, dir: &Path) {
        write_file(&dir.join("default.crt"), &self.default.cert_pem);
        write_file(&dir.join("default.key"), &self.default.key_pem);
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

/// CN and only SAN of the static default certificate.
pub const DEFAULT_NAME: &str = "default.invalid";

pub fn serial_hex(serial: u64) -> String {
    BigNum::from_dec_str(&serial.to_string())
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string()
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

/// A RESP reply, as far as the tests need it.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, line.to_string());
    Ok(match kind {
        "+" => Reply::Status(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Reply::Bulk(Some(buf))
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Reply::Array(None)
            } else {
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(read_reply(r)?);
                }
                Reply::Array(Some(items))
            }
        }
        _ => return Err(bad()),
    })
}

fn encode_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One command on a fresh connection (the server may have been restarted
/// between calls).
pub fn redis_command(port: u16, args: &[&str]) -> Result<Reply, String> {
    redis_command_timeout(port, args, IO_TIMEOUT)
}

pub fn redis_command_timeout(port: u16, args: &[&str], timeout: Duration) -> Result<Reply, String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    s.write_all(&encode_command(args))
        .map_err(|e| e.to_string())?;
    read_reply(&mut BufReader::new(s)).map_err(|e| e.to_string())
}

/// A `redis-server` of our own on a free port, killed on Drop.
pub struct Redis {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
    starts: u32,
}

impl Redis {
    /// Starts a server and waits until it answers PING.
    pub fn start() -> Redis {
        let mut r = Redis::reserve();
        r.start_server();
        r
    }

    /// A free port for a server that is not running yet (`start_server`
    /// starts it); models "Redis down when nginx starts".
    pub fn reserve() -> Redis {
        Redis {
            port: free_port(),
            dir: TempDir::new("redis"),
            child: None,
            starts: 0,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts (or restarts) the server on the same port, with an empty
    /// dataset (no persistence).
    pub fn start_server(&mut self) {
        assert!(self.child.is_none(), "redis already running");
        self.starts += 1;
        let log = fs::File::create(self.dir.path().join(format!("redis-{}.log", self.starts)))
            .expect("redis log file");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("spawn redis-server (is it installed?)");
        self.child = Some(child);
        let port = self.port;
        let up = poll(STARTUP_DEADLINE, Duration::from_millis(20), || {
            matches!(redis_command(port, &["PING"]), Ok(Reply::Status(ref s)) if s == "PONG")
                .then_some(())
        });
        if up.is_none() {
            let log =
                fs::read_to_string(self.dir.path().join(format!("redis-{}.log", self.starts)))
                    .unwrap_or_default();
            panic!("redis-server on port {port} did not answer PING:\n{log}");
        }
    }

    /// Stops the server (SIGKILL, as a crash) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis is not running").id()
    }

    /// SIGSTOP: the server keeps its sockets but answers nothing, which is
    /// what a hung Redis looks like to a client.
    pub fn pause(&self) {
        assert!(signal(self.pid(), libc::SIGSTOP), "SIGSTOP redis");
    }

    pub fn resume(&self) {
        assert!(signal(self.pid(), libc::SIGCONT), "SIGCONT redis");
    }

    pub fn cmd(&self, args: &[&str]) -> Reply {
        match redis_command(self.port, args) {
            Ok(Reply::Error(e)) => panic!("redis {args:?}: {e}"),
            Ok(r) => r,
            Err(e) => panic!("redis {args:?}: {e}"),
        }
    }

    /// Stores a certificate record the way an issuer would.
    pub fn hset_cert(&self, name: &str, crt: &str, key: &str) {
        self.hset_cert_key(&format!("{DEFAULT_PREFIX}{name}"), crt, key);
    }

    /// Stores a certificate record under a full key (custom prefixes).
    pub fn hset_cert_key(&self, key_name: &str, crt: &str, key: &str) {
        self.cmd(&["HSET", key_name, "crt", crt, "key", key]);
    }

    pub fn put_leaf(&self, name: &str, leaf: &Leaf) {
        self.hset_cert(name, &leaf.chain_pem, &leaf.key_pem);
    }

    /// Stores `leaf` for `name` with extra record fields (per-tenant
    /// policy: `allow`, `client_ca`), replacing any previous record so no
    /// field of an earlier test step lingers.
    pub fn put_leaf_with(&self, name: &str, leaf: &Leaf, fields: &[(&str, &str)]) {
        let key = format!("{DEFAULT_PREFIX}{name}");
        self.cmd(&["DEL", &key]);
        let mut args = vec![
            "HSET",
            key.as_str(),
            "crt",
            &leaf.chain_pem,
            "key",
            &leaf.key_pem,
        ];
        for (k, v) in fields {
            args.push(k);
            args.push(v);
        }
        self.cmd(&args);
    }

    /// The fields of `name`'s record (empty when there is none). A MONITOR
    /// sees this HGETALL like one of the module's: read records after the
    /// counting is done.
    pub fn record(&self, name: &str) -> Vec<(String, String)> {
        let key = format!("{DEFAULT_PREFIX}{name}");
        let Reply::Array(Some(items)) = self.cmd(&["HGETALL", &key]) else {
            panic!("HGETALL {key}: not an array");
        };
        let text = |r: &Reply| match r {
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("HGETALL {key}: unexpected item {other:?}"),
        };
        items
            .chunks(2)
            .map(|kv| (text(&kv[0]), text(&kv[1])))
            .collect()
    }

    /// One field of `name`'s record.
    pub fn record_field(&self, name: &str, field: &str) -> Option<String> {
        self.record(name)
            .into_iter()
            .find(|(k, _)| k == field)
            .map(|(_, v)| v)
    }

    /// `TTL` of `name`'s record in seconds: -2 when absent, -1 when it
    /// never expires.
    pub fn ttl(&self, name: &str) -> i64 {
        match self.cmd(&["TTL", &format!("{DEFAULT_PREFIX}{name}")]) {
            Reply::Int(n) => n,
            other => panic!("TTL: {other:?}"),
        }
    }

    /// `PUBLISH`; returns how many subscribers received the message.
    pub fn publish(&self, channel: &str, message: &str) -> i64 {
        match self.cmd(&["PUBLISH", channel, message]) {
            Reply::Int(n) => n,
            other => panic!("PUBLISH: {other:?}"),
        }
    }

    /// Subscribers of `channel` (`PUBSUB NUMSUB`).
    pub fn subscribers(&self, channel: &str) -> i64 {
        match self.cmd(&["PUBSUB", "NUMSUB", channel]) {
            Reply::Array(Some(items)) => match items.get(1) {
                Some(Reply::Int(n)) => *n,
                other => panic!("PUBSUB NUMSUB: {other:?}"),
            },
            other => panic!("PUBSUB NUMSUB: {other:?}"),
        }
    }

    /// Waits until `channel` has at least `n` subscribers; false on timeout.
    pub fn wait_subscribers(&self, channel: &str, n: i64, deadline: Duration) -> bool {
        poll(deadline, Duration::from_millis(20), || {
            (self.subscribers(channel) >= n).then_some(())
        })
        .is_some()
    }

    /// Starts capturing every command the server executes (MONITOR).
    pub fn monitor(&self) -> Monitor {
        Monitor::start(self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped process still dies of SIGKILL, but let it run so the
            // kernel tears its sockets down promptly.
            signal(child.id(), libc::SIGCONT);
        }
        self.stop();
    }
}

/// Key prefix of certificate records (the `dyncert_redis_prefix` default).
pub const DEFAULT_PREFIX: &str = "dyncert:cert:";

/// One command seen by MONITOR.
#[derive(Debug, Clone)]
pub struct Observed {
    pub raw: String,
    pub args: Vec<String>,
}

impl Observed {
    pub fn command(&self) -> String {
        self.args
            .first()
            .map(|a| a.to_uppercase())
            .unwrap_or_default()
    }

    /// `dyncert:cert:<name>` keys among the arguments, as names.
    pub fn cert_names(&self) -> Vec<String> {
        self.args
            .iter()
            .filter_map(|a| a.strip_prefix(DEFAULT_PREFIX).map(str::to_string))
            .collect()
    }
}

/// Parses a MONITOR line: `1700000000.123 [0 127.0.0.1:5555] "HGETALL" "k"`,
/// arguments quoted with C-style escapes (`sdscatrepr`).
fn parse_monitor_line(line: &str) -> Observed {
    let mut args = Vec::new();
    let start = line.find("] ").map(|i| i + 2).unwrap_or(0);
    let bytes = &line.as_bytes()[start..];
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        i += 1;
        let mut cur = Vec::new();
        while i < bytes.len() && bytes[i] != b'"' {
            if bytes[i] == b'\\' && i + 1 < bytes.len() {
                i += 1;
                match bytes[i] {
                    b'n' => cur.push(b'\n'),
                    b'r' => cur.push(b'\r'),
                    b't' => cur.push(b'\t'),
                    b'a' => cur.push(7),
                    b'b' => cur.push(8),
                    b'x' if i + 2 < bytes.len() => {
                        let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("3f");
                        cur.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                        i += 2;
                    }
                    other => cur.push(other),
                }
            } else {
                cur.push(bytes[i]);
            }
            i += 1;
        }
        i += 1;
        args.push(String::from_utf8_lossy(&cur).into_owned());
    }
    Observed {
        raw: line.to_string(),
        args,
    }
}

/// A MONITOR connection read by a background thread.
pub struct Monitor {
    port: u16,
    stream: TcpStream,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Monitor {
    fn start(port: u16) -> Monitor {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect MONITOR");
        stream
            .write_all(&encode_command(&["MONITOR"]))
            .expect("send MONITOR");
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        // MONITOR answers +OK once it is active: nothing before that point
        // is captured, so wait for it.
        match read_reply(&mut reader) {
            Ok(Reply::Status(s)) if s == "OK" => {}
            other => panic!("MONITOR: {other:?}"),
        }
        stream.set_read_timeout(None).unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = thread::spawn(move || {
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let l = line.trim_end_matches("\r\n");
                        let l = l.strip_prefix('+').unwrap_or(l);
                        sink.lock().unwrap().push(l.to_string());
                    }
                }
            }
        });
        Monitor {
            port,
            stream,
            lines,
            reader: Some(reader),
        }
    }

    /// Waits until every command the server executed before this call has
    /// been captured: Redis runs commands one at a time in arrival order,
    /// so once our own marker shows up, everything before it is in.
    pub fn sync(&self) {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let marker = format!(
            "dyncert-test-marker-{}",
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        redis_command(self.port, &["ECHO", &marker]).expect("ECHO marker");
        let seen = poll(STARTUP_DEADLINE, Duration::from_millis(10), || {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(&marker))
                .then_some(())
        });
        assert!(seen.is_some(), "MONITOR did not show marker {marker}");
    }

    /// Everything captured so far, minus our own markers.
    pub fn observed(&self) -> Vec<Observed> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| !l.contains("dyncert-test-marker-"))
            .map(|l| parse_monitor_line(l))
            .collect()
    }

    /// Commands other than the ones a test issues itself to set up records,
    /// and other than each worker's invalidation subscription (made once
    /// at start, whenever the worker gets to it: not a lookup).
    pub fn module_commands(&self) -> Vec<Observed> {
        self.observed()
            .into_iter()
            .filter(|o| {
                !matches!(
                    o.command().as_str(),
                    "HSET" | "DEL" | "ECHO" | "MONITOR" | "SUBSCRIBE"
                )
            })
            .collect()
    }

    /// How many commands of any kind the module sent about `name`.
    pub fn commands_about(&self, name: &str) -> usize {
        self.module_commands()
            .iter()
            .filter(|o| o.cert_names().iter().any(|n| n == name))
            .count()
    }

    /// Fetches of the record of `name`: commands that read the certificate
    /// itself. A fetch may come with cheap probes (EXISTS, HSTRLEN to bound
    /// sizes) and may read the fields in one or two commands; reading `crt`
    /// happens exactly once per fetch in each of those shapes.
    pub fn fetches_of(&self, name: &str) -> usize {
        self.fetched_names().iter().filter(|n| *n == name).count()
    }

    /// Names whose record was read, in order, once per fetch.
    pub fn fetched_names(&self) -> Vec<String> {
        self.module_commands()
            .iter()
            .filter(|o| match o.command().as_str() {
                "HGETALL" => true,
                "HMGET" | "HGET" => o.args[2..].iter().any(|f| f == "crt"),
                _ => false,
            })
            .flat_map(|o| o.cert_names())
            .collect()
    }

    /// Commands that read a record (or probe it), as (name, signature):
    /// the command and its arguments after the key.
    fn reads(&self) -> Vec<(String, String)> {
        const READS: [&str; 8] = [
            "EXISTS", "HGETALL", "HMGET", "HGET", "HSTRLEN", "HLEN", "HEXISTS", "TYPE",
        ];
        self.module_commands()
            .iter()
            .filter(|o| READS.contains(&o.command().as_str()))
            .flat_map(|o| {
                let sig = format!(
                    "{} {}",
                    o.command(),
                    o.args.get(2..).unwrap_or(&[]).join(" ")
                );
                o.cert_names().into_iter().map(move |n| (n, sig.clone()))
            })
            .collect()
    }

    /// Lookups of names, in the order they started, once per lookup, also
    /// for records that do not exist (where a module that probes first
    /// never reads `crt`): the module runs the same commands in the same
    /// order for every lookup, so the command that opened the first lookup
    /// of a name marks the start of each of its lookups.
    pub fn lookup_order(&self) -> Vec<String> {
        let reads = self.reads();
        let mut opener: std::collections::HashMap<String, String> = Default::default();
        for (name, sig) in &reads {
            opener.entry(name.clone()).or_insert_with(|| sig.clone());
        }
        reads
            .into_iter()
            .filter(|(name, sig)| opener.get(name) == Some(sig))
            .map(|(name, _)| name)
            .collect()
    }

    /// How many times the record of `name` was looked up (see
    /// `lookup_order`).
    pub fn lookups_of(&self, name: &str) -> usize {
        self.lookup_order().iter().filter(|n| *n == name).count()
    }

    pub fn dump(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

// ---------------------------------------------------------------------------
// NGINX
// ---------------------------------------------------------------------------

/// Main-context settings the harness writes above a test's `http {}` block.
pub struct NginxOpts {
    pub workers: u32,
    pub load_module: bool,
    /// `use METHOD;` in the `events {}` block (`None`: nginx's default).
    pub event_method: Option<&'static str>,
}

impl Default for NginxOpts {
    fn default() -> Self {
        NginxOpts {
            workers: 1,
            load_module: true,
            event_method: None,
        }
    }
}

/// The main context every test shares: foreground master with workers, a
/// per-prefix pid file and error.log at `info` (client mistakes are INFO in
/// nginx, and the module's warnings must be visible).
pub fn main_conf(prefix: &Path, opts: &NginxOpts) -> String {
    let mut s = String::new();
    if opts.load_module {
        s.push_str(&format!("load_module {};\n", module_path().display()));
    }
    let event_method = opts
        .event_method
        .map(|m| format!(" use {m};"))
        .unwrap_or_default();
    s.push_str(&format!(
        "worker_processes {workers};\n\
         daemon off;\n\
         master_process on;\n\
         error_log {prefix}/error.log info;\n\
         pid {prefix}/nginx.pid;\n\
         events {{ worker_connections 256;{event_method} }}\n",
        workers = opts.workers,
        prefix = prefix.display()
    ));
    s
}

/// A running nginx master (and its workers) in a temp prefix.
pub struct Nginx {
    pub port: u16,
    pub workers: u32,
    /// Child processes besides the workers (cache manager and loader).
    helpers: u32,
    prefix: TempDir,
    child: Option<Child>,
    /// The write end of nginx's stdin when it is a pipe, kept open.
    _stdin: Option<std::process::ChildStdin>,
    /// The main context above the `http {}` block (for `write_http`).
    main: String,
    /// Parts of error.log lines a test caused on purpose (see `expect_log`).
    expected: Vec<String>,
}

/// How a test wants nginx started beyond its configuration.
#[derive(Default)]
pub struct Spawn<'a> {
    /// Extra environment variables for the nginx process.
    pub env: &'a [(&'a str, &'a str)],
    /// nginx's stdin is a pipe nobody writes to and nobody closes (as
    /// under `docker run -i`), instead of /dev/null.
    pub stdin_pipe: bool,
    /// Child processes besides the workers to wait for (a cache manager
    /// and a cache loader with `proxy_cache_path`).
    pub helpers: u32,
}

impl Nginx {
    /// Writes `main_conf` + `http_block` into PREFIX/conf/nginx.conf with the
    /// default certificate next to it, starts nginx, and waits until all
    /// workers run and `port` accepts connections.
    pub fn start(pki: &Pki, opts: NginxOpts, http_block: &str, port: u16) -> Nginx {
        Nginx::start_env(pki, opts, http_block, port, &[])
    }

    /// `start` with extra environment variables for the nginx process
    /// (read at configuration time, e.g. by `dyncert_allow env=VAR`).
    pub fn start_env(
        pki: &Pki,
        opts: NginxOpts,
        http_block: &str,
        port: u16,
        env: &[(&str, &str)],
    ) -> Nginx {
        Nginx::spawn(
            pki,
            opts,
            http_block,
            port,
            Spawn {
                env,
                ..Spawn::default()
            },
        )
    }

    /// `start` with the extras of [`Spawn`].
    pub fn spawn(pki: &Pki, opts: NginxOpts, http_block: &str, port: u16, how: Spawn) -> Nginx {
        let env = how.env;
        let prefix = TempDir::new("nginx");
        let conf_dir = prefix.path().join("conf");
        pki.write_default(&conf_dir);
        fs::create_dir_all(prefix.path().join("logs")).unwrap();
        let main = main_conf(prefix.path(), &opts);
        write_file(&conf_dir.join("nginx.conf"), format!("{main}{http_block}"));

        let stdout = fs::File::create(prefix.path().join("stdout.log")).unwrap();
        let mut cmd = Command::new(nginx_bin());
        cmd.arg("-p")
            .arg(prefix.path())
            .args(["-c", "conf/nginx.conf", "-e"])
            .arg(prefix.path().join("error.log"))
            .stdin(if how.stdin_pipe {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .envs(env.iter().copied())
            .stdout(stdout.try_clone().unwrap())
            .stderr(stdout)
            // Own process group: Drop can reap workers even if the master
            // was killed before it could stop them.
            .process_group(0);
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("spawn nginx");
        let stdin = child.stdin.take();
        let mut nginx = Nginx {
            port,
            workers: opts.workers,
            helpers: how.helpers,
            prefix,
            child: Some(child),
            _stdin: stdin,
            main,
            expected: Vec::new(),
        };
        nginx.wait_ready();
        nginx
    }

    fn master_pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn prefix(&self) -> &Path {
        self.prefix.path()
    }

    pub fn conf_path(&self) -> PathBuf {
        self.prefix().join("conf/nginx.conf")
    }

    /// Current worker pids.
    pub fn worker_pids(&self) -> BTreeSet<u32> {
        child_pids(self.master_pid())
    }

    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(format!("nginx master exited: {status}")),
            _ => None,
        }
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(why) = self.exited() {
                panic!("{why}\n{}", self.logs());
            }
            let workers = self.worker_pids().len() as u32;
            let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
            if workers == self.workers + self.helpers
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return;
            }
            if start.elapsed() > STARTUP_DEADLINE {
                panic!(
                    "nginx not ready after {STARTUP_DEADLINE:?} ({workers} workers)\n{}",
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reloads the configuration (SIGHUP, what `nginx -s reload` sends) and
    /// waits until a full set of new workers replaced the old ones.
    pub fn reload(&mut self) {
        let old = self.worker_pids();
        assert!(signal(self.master_pid(), libc::SIGHUP), "SIGHUP nginx");
        let workers = self.workers as usize;
        let ok = poll(STARTUP_DEADLINE, Duration::from_millis(20), || {
            let now = self.worker_pids();
            (now.len() == workers && now.is_disjoint(&old)).then_some(())
        });
        if ok.is_none() {
            panic!(
                "reload: workers {:?} did not replace {old:?}\n{}",
                self.worker_pids(),
                self.logs()
            );
        }
        if let Some(why) = self.exited() {
            panic!("{why}\n{}", self.logs());
        }
    }

    /// Replaces the `http {}` block of nginx.conf (the main context stays);
    /// nginx reads it at the next `reload`.
    pub fn write_http(&self, http_block: &str) {
        write_file(&self.conf_path(), format!("{}{http_block}", self.main));
    }

    /// Reloads a configuration that must fail to load: sends SIGHUP, waits
    /// for a new error.log line containing `failure`, and asserts that
    /// nginx kept its old cycle (same workers, master alive). Announce the
    /// failure's own log lines with `expect_log` first.
    pub fn reload_failing(&mut self, failure: &str) {
        let old = self.worker_pids();
        let count = |log: &str| log.lines().filter(|l| l.contains(failure)).count();
        let before = count(&self.error_log());
        assert!(signal(self.master_pid(), libc::SIGHUP), "SIGHUP nginx");
        let seen = poll(STARTUP_DEADLINE, Duration::from_millis(20), || {
            (count(&self.error_log()) > before).then_some(())
        });
        if seen.is_none() {
            panic!("reload: no {failure:?} in error.log\n{}", self.logs());
        }
        if let Some(why) = self.exited() {
            panic!("{why}\n{}", self.logs());
        }
        assert_eq!(
            self.worker_pids(),
            old,
            "a failed reload replaced the workers\n{}",
            self.logs()
        );
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.prefix().join("error.log")).unwrap_or_default()
    }

    /// Waits until error.log has a line for which `pred` holds.
    pub fn wait_for_log_line(
        &self,
        deadline: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        poll(deadline, Duration::from_millis(20), || {
            self.error_log()
                .lines()
                .find(|l| pred(l))
                .map(str::to_string)
        })
    }

    /// Tail of error.log and everything nginx wrote to stdout/stderr.
    pub fn logs(&self) -> String {
        let out = fs::read_to_string(self.prefix().join("stdout.log")).unwrap_or_default();
        format!(
            "---- nginx error.log ({}) ----\n{}\n---- nginx stdout/stderr ----\n{}",
            self.prefix().display(),
            tail(&self.error_log(), 80),
            tail(&out, 20)
        )
    }

    /// Tells `health()` that error.log lines containing `part` are the
    /// test's doing (a reload that fails at `bind()`, a worker it killed),
    /// not trouble. Keep `part` specific: a port, a pid.
    pub fn expect_log(&mut self, part: impl Into<String>) {
        self.expected.push(part.into());
    }

    /// Problems that fail any test: the master died, a worker crashed (the
    /// master respawns it, so requests alone would not notice), or an
    /// `alert`/`emerg` (a bug, by the house logging rules), except lines
    /// announced with `expect_log`.
    pub fn health(&mut self) -> Result<(), String> {
        if let Some(why) = self.exited() {
            return Err(why);
        }
        let log = self.error_log();
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("exited on signal")
                    || l.contains("[alert]")
                    || l.contains("[emerg]")
                    || l.contains("panic")
            })
            .filter(|l| !self.expected.iter().any(|e| l.contains(e.as_str())))
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "nginx error.log reports trouble:\n{}",
                bad.join("\n")
            ))
        }
    }

    /// Asserts `health()`; call at the end of a test for a clear message.
    pub fn assert_healthy(&mut self) {
        if let Err(e) = self.health() {
            panic!("{e}\n{}", self.logs());
        }
    }

    /// Stops nginx, then asserts `health()` over the whole error.log,
    /// including what the workers logged while exiting (which Drop, checking
    /// before it stops nginx, does not see).
    pub fn stop_and_assert_healthy(&mut self) {
        self.shutdown();
        self.assert_healthy();
    }

    fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        // Fast shutdown (SIGTERM); a master stuck in a worker's exit hook
        // is killed with its whole process group.
        signal(pid, libc::SIGTERM);
        let clean = wait_exit(&mut child, Duration::from_secs(5));
        signal(pid, libc::SIGKILL);
        let pgid = libc::pid_t::try_from(pid).unwrap();
        // SAFETY: kill(2) on the process group nginx was started in
        // (process_group(0) made its pgid equal to its pid): only the master
        // and its workers are in it.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = child.wait();
        if !clean && !thread::panicking() {
            panic!("nginx did not stop within 5s of SIGTERM\n{}", self.logs());
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.logs());
            self.shutdown();
            return;
        }
        let health = self.health();
        self.shutdown();
        if let Err(e) = health {
            panic!("{e}\n{}", self.logs());
        }
    }
}

/// Result of `nginx -t`.
pub struct ConfigTest {
    pub ok: bool,
    /// stderr and stdout of `nginx -t` plus the error.log it wrote.
    pub output: String,
}

/// Runs `nginx -t -p PREFIX -c conf/nginx.conf` on a prefix that the
/// caller has filled.
pub fn nginx_test_prefix(prefix: &Path) -> ConfigTest {
    nginx_test_prefix_env(prefix, &[])
}

/// `nginx_test_prefix` with extra environment variables for nginx.
pub fn nginx_test_prefix_env(prefix: &Path, env: &[(&str, &str)]) -> ConfigTest {
    fs::create_dir_all(prefix.join("logs")).unwrap();
    let out: Output = Command::new(nginx_bin())
        .envs(env.iter().copied())
        .arg("-t")
        .arg("-p")
        .arg(prefix)
        .args(["-c", "conf/nginx.conf", "-e"])
        .arg(prefix.join("error.log"))
        .stdin(Stdio::null())
        .output()
        .expect("run nginx -t");
    let log = fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
    ConfigTest {
        ok: out.status.success(),
        output: format!(
            "{}{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            log
        ),
    }
}

/// `nginx -t` for `main_conf(opts)` + `http_block`, with the default
/// certificate in the conf dir.
pub fn nginx_test_config(pki: &Pki, opts: NginxOpts, http_block: &str) -> ConfigTest {
    nginx_test_config_env(pki, opts, http_block, &[])
}

/// `nginx_test_config` with extra environment variables for nginx.
pub fn nginx_test_config_env(
    pki: &Pki,
    opts: NginxOpts,
    http_block: &str,
    env: &[(&str, &str)],
) -> ConfigTest {
    let prefix = TempDir::new("nginx-t");
    let conf_dir = prefix.path().join("conf");
    pki.write_default(&conf_dir);
    let conf = format!("{}{}", main_conf(prefix.path(), &opts), http_block);
    write_file(&conf_dir.join("nginx.conf"), conf);
    nginx_test_prefix_env(prefix.path(), env)
}

/// Replaces `@NAME@` placeholders in a config template (nginx configs are
/// full of braces, which `format!` would need doubled).
pub fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("@{k}@"), v);
    }
    assert!(
        !s.contains("@PORT@") && !s.contains("@REDIS@") && !s.contains("@API@"),
        "unfilled placeholder in:\n{s}"
    );
    s
}

/// Everything most tests need: a PKI, a Redis and an nginx whose `http {}`
/// block is `template` with `@PORT@` and `@REDIS@` filled in.
pub struct Stack {
    pub pki: Pki,
    pub redis: Redis,
    pub nginx: Nginx,
}

impl Stack {
    pub fn start(workers: u32, template: &str) -> Stack {
        let pki = Pki::new();
        let redis = Redis::start();
        let nginx = start_nginx_with(&pki, &redis, workers, template);
        Stack { pki, redis, nginx }
    }

    pub fn get(&self, sni: Option<&str>) -> TlsResponse {
        tls_get(self.nginx.port, sni, "/")
            .unwrap_or_else(|e| panic!("TLS request with SNI {sni:?} failed: {e}"))
    }
}

/// Starts nginx with the module for `template` (placeholders `@PORT@`,
/// `@REDIS@`) against `redis`, which need not be running.
pub fn start_nginx_with(pki: &Pki, redis: &Redis, workers: u32, template: &str) -> Nginx {
    start_nginx_vars(pki, workers, template, &[("REDIS", &redis.url())])
}

/// Starts nginx with the module for `template`, with `@PORT@` set to a
/// free port and the other placeholders from `vars`.
pub fn start_nginx_vars(pki: &Pki, workers: u32, template: &str, vars: &[(&str, &str)]) -> Nginx {
    start_nginx_env(pki, workers, template, vars, &[])
}

/// `start_nginx_vars` with extra environment variables for nginx.
pub fn start_nginx_env(
    pki: &Pki,
    workers: u32,
    template: &str,
    vars: &[(&str, &str)],
    env: &[(&str, &str)],
) -> Nginx {
    let port = free_port();
    let port_s = port.to_string();
    let mut all = vec![("PORT", port_s.as_str())];
    all.extend_from_slice(vars);
    let http = render(template, &all);
    Nginx::start_env(
        pki,
        NginxOpts {
            workers,
            ..NginxOpts::default()
        },
        &http,
        port,
        env,
    )
}

// ---------------------------------------------------------------------------
// TLS client
// ---------------------------------------------------------------------------

/// What one HTTPS request saw.
#[derive(Debug)]
pub struct TlsResponse {
    /// Peer chain as sent, leaf first.
    pub chain: Vec<X509>,
    pub leaf_serial: String,
    pub leaf_sans: Vec<String>,
    pub status: u16,
    pub body: String,
    /// From connect to the end of the response.
    pub elapsed: Duration,
    /// From connect to the end of the handshake.
    pub handshake: Duration,
}

impl TlsResponse {
    pub fn is_default(&self) -> bool {
        self.leaf_sans == [DEFAULT_NAME]
    }

    /// `$dyncert_source` from a body of the form `... via <source> ...`
    /// (empty when the variable is).
    pub fn source(&self) -> &str {
        self.body
            .split_once(" via ")
            .and_then(|(_, rest)| rest.split([' ', '\n']).next())
            .unwrap_or("")
    }

    /// `$dyncert_name` from a body containing `name=<name>`.
    pub fn name(&self) -> &str {
        self.body
            .split_whitespace()
            .find_map(|w| w.strip_prefix("name="))
            .unwrap_or("")
    }

    /// `$pid` of the worker from a body containing `pid=<pid>`.
    pub fn pid(&self) -> u32 {
        self.body
            .split_whitespace()
            .find_map(|w| w.strip_prefix("pid="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid= in body {:?}", self.body))
    }

    /// Asserts that the leaf is `leaf` and that the intermediate follows it.
    pub fn assert_served(&self, leaf: &Leaf, pki: &Pki) {
        assert_eq!(
            self.leaf_serial, leaf.serial_hex,
            "wrong certificate (SANs {:?}, body {:?})",
            self.leaf_sans, self.body
        );
        assert_eq!(
            self.chain[0].to_der().unwrap(),
            leaf.issued.cert.to_der().unwrap(),
            "leaf differs from the record"
        );
        assert_eq!(self.chain.len(), 2, "expected leaf + intermediate");
        assert_eq!(
            self.chain[1].to_der().unwrap(),
            pki.intermediate.cert.to_der().unwrap(),
            "second certificate is not the intermediate"
        );
    }

    pub fn assert_default(&self) {
        assert!(
            self.is_default(),
            "expected the default certificate, got SANs {:?} serial {} (body {:?})",
            self.leaf_sans,
            self.leaf_serial,
            self.body
        );
    }
}

fn client_context() -> SslContext {
    let mut b = SslContext::builder(SslMethod::tls_client()).unwrap();
    // The tests check the chain themselves; verification would only get in
    // the way of the default and expired certificates.
    b.set_verify(SslVerifyMode::NONE);
    b.set_min_proto_version(Some(SslVersion::TLS1_2)).unwrap();
    // A resumed session skips the certificate selection under test.
    b.set_session_cache_mode(SslSessionCacheMode::OFF);
    b.build()
}

fn tls_connect(
    port: u16,
    sni: Option<&str>,
) -> Result<(openssl::ssl::SslStream<TcpStream>, Instant), String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let start = Instant::now();
    let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    tcp.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut ssl = Ssl::new(&client_context()).unwrap();
    if let Some(name) = sni {
        // SSL_set_tlsext_host_name directly: unlike SslConnector it sends IP
        // literals and odd names as they are, which the tests need.
        ssl.set_hostname(name)
            .map_err(|e| format!("client refused SNI {name:?}: {e}"))?;
    }
    let stream = ssl.connect(tcp).map_err(|e| match e {
        openssl::ssl::HandshakeError::Failure(mid) => {
            format!("handshake failed: {}", mid.error())
        }
        openssl::ssl::HandshakeError::SetupFailure(e) => format!("setup: {e}"),
        openssl::ssl::HandshakeError::WouldBlock(_) => "handshake timed out".to_string(),
    })?;
    Ok((stream, start))
}

/// One HTTPS request: `GET path` with SNI `sni` (none when `None`) and the
/// same name in `Host`.
pub fn tls_get(port: u16, sni: Option<&str>, path: &str) -> Result<TlsResponse, String> {
    tls_get_host(port, sni, sni.unwrap_or("localhost"), path)
}

/// One HTTPS request with a `Host` of its own, for SNI values that nginx
/// would refuse as a Host header (400) once the handshake is done.
pub fn tls_get_host(
    port: u16,
    sni: Option<&str>,
    host: &str,
    path: &str,
) -> Result<TlsResponse, String> {
    let (mut stream, start) = tls_connect(port, sni)?;
    let handshake = start.elapsed();
    let chain: Vec<X509> = stream
        .ssl()
        .peer_cert_chain()
        .map(|c| c.iter().map(|x| x.to_owned()).collect())
        .unwrap_or_default();
    let leaf = chain.first().ok_or("no peer certificate")?;
    let leaf_serial = leaf
        .serial_number()
        .to_bn()
        .and_then(|b| b.to_hex_str().map(|s| s.to_string()))
        .map_err(|e| e.to_string())?;
    let leaf_sans = leaf
        .subject_alt_names()
        .map(|s| {
            s.iter()
                .filter_map(|g| g.dnsname().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.ssl_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.code() == openssl::ssl::ErrorCode::ZERO_RETURN => break,
            // nginx may close without close_notify after Connection: close.
            Err(_) if !raw.is_empty() => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header end in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok(TlsResponse {
        chain,
        leaf_serial,
        leaf_sans,
        status,
        body: body.to_string(),
        elapsed,
        handshake,
    })
}

/// `n` requests for `sni` at the same time: concurrent connections are
/// what spreads a burst over several workers.
pub fn tls_burst(port: u16, sni: &str, n: usize) -> Vec<Result<TlsResponse, String>> {
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let sni = sni.to_string();
            thread::spawn(move || tls_get(port, Some(&sni), "/"))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Bursts of requests for `sni` until every current worker of `nginx` has
/// answered (the body must carry `pid=$pid`); panics after `deadline`.
/// Returns every response, for the caller to check what each worker served.
pub fn hit_every_worker(nginx: &Nginx, sni: &str, deadline: Duration) -> Vec<TlsResponse> {
    let workers = nginx.worker_pids();
    let mut seen = BTreeSet::new();
    let mut all = Vec::new();
    let start = Instant::now();
    while !workers.is_subset(&seen) {
        if start.elapsed() > deadline {
            panic!(
                "only workers {seen:?} of {workers:?} answered for {sni} within {deadline:?}\n{}",
                nginx.logs()
            );
        }
        for r in tls_burst(nginx.port, sni, 8) {
            let r = r.unwrap_or_else(|e| panic!("{sni}: {e}\n{}", nginx.logs()));
            seen.insert(r.pid());
            all.push(r);
        }
    }
    all
}

/// The handshake error text, or `None` when the handshake succeeded.
pub fn tls_handshake_error(port: u16, sni: Option<&str>) -> Option<String> {
    tls_connect(port, sni).err()
}

/// Whether a handshake error is the `unrecognized_name` alert (112).
pub fn is_unrecognized_name(err: &str) -> bool {
    let e = err.to_lowercase();
    e.contains("unrecognized name")
        || e.contains("unrecognized_name")
        || e.contains("alert number 112")
}

/// A hand-built TLS 1.2 ClientHello whose SNI is `sni` bytes as they are:
/// OpenSSL's client refuses names longer than 255 bytes, and the server
/// must survive them.
pub fn raw_client_hello(sni: &[u8]) -> Vec<u8> {
    fn u16be(n: usize) -> [u8; 2] {
        (n as u16).to_be_bytes()
    }
    let mut ext = Vec::new();
    // server_name
    let mut sn = vec![0u8];
    sn.extend_from_slice(&u16be(sni.len()));
    sn.extend_from_slice(sni);
    let mut sn_list = u16be(sn.len()).to_vec();
    sn_list.extend_from_slice(&sn);
    ext.extend_from_slice(&[0, 0]);
    ext.extend_from_slice(&u16be(sn_list.len()));
    ext.extend_from_slice(&sn_list);
    // supported_groups: x25519, secp256r1
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed
    ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
    ext.extend_from_slice(&[
        0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01,
    ]);

    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x5a; 32]); // random
    body.push(0); // session id
    let suites: [u16; 4] = [0xc02b, 0xc02f, 0xc02c, 0xc030];
    body.extend_from_slice(&u16be(suites.len() * 2));
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    body.extend_from_slice(&u16be(ext.len()));
    body.extend_from_slice(&ext);

    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);

    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&u16be(hs.len()));
    rec.extend_from_slice(&hs);
    rec
}

/// Sends `raw_client_hello(sni)` and returns the first bytes of the answer
/// (a handshake record 0x16 or an alert 0x15), or an empty vector when the
/// server just closed.
pub fn send_raw_client_hello(port: u16, sni: &[u8]) -> Result<Vec<u8>, String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(&raw_client_hello(sni))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(n) => Ok(buf[..n].to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}
