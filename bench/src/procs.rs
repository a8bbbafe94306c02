//! Child processes (redis-server, nginx), CPU pinning, and what /proc
//! says about them: CPU time, RSS, the busy time of a CPU.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::pki::{Pki, Site};

// --- where things are -------------------------------------------------------

fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().expect("target/<profile>").to_path_buf()
}

pub fn nginx_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DYNCERT_NGINX_BIN") {
        return p.into();
    }
    let dir = fs::read_to_string(profile_dir().join("nginx-build-dir.txt"))
        .expect("target/<profile>/nginx-build-dir.txt: run `cargo build --release` first");
    PathBuf::from(dir.trim()).join("nginx")
}

pub fn module_path() -> PathBuf {
    std::env::var_os("DYNCERT_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| profile_dir().join("libngx_http_dyncert_module.so"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

// --- CPUs -------------------------------------------------------------------

/// CPUs this process may use, as found at the first call (before the bench
/// pins itself: afterwards the answer would be the pinned set).
pub fn cpus() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// Pins the calling thread to `cpus` (children it spawns inherit this).
pub fn pin_to(cpus: &[usize]) {
    if cpus.is_empty() {
        return;
    }
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: CPU_SET writes one bit of the set we own; c < CPU_SETSIZE
        // since it is an index below available_parallelism.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: sched_setaffinity(2) on the calling thread (pid 0) reads the
    // set we pass, of the size we pass.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

/// CPUs for the load generator and everything else the bench runs (Redis,
/// the API server): all but CPU 0, which belongs to the nginx worker.
pub fn client_cpus() -> Vec<usize> {
    (1..cpus()).collect()
}

// --- /proc --------------------------------------------------------------------

/// On-CPU time of all threads of `pid`, in nanoseconds (schedstat).
pub fn task_cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU time of this process, all threads, in nanoseconds.
pub fn self_cpu_ns() -> u64 {
    // SAFETY: an all-zero rusage is valid; getrusage(2) fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a pointer to our rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(ru.ru_utime) + us(ru.ru_stime)) * 1000
}

/// Busy (non-idle, non-iowait) time of one CPU, in nanoseconds.
pub fn cpu_busy_ns(cpu: usize) -> u64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let tag = format!("cpu{cpu} ");
    let Some(line) = stat.lines().find(|l| l.starts_with(&tag)) else {
        return 0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    busy * 1_000_000_000 / hz
}

pub fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(1)?.parse().ok()
}

/// Children of `parent`, oldest (lowest start time) last is not promised:
/// callers that care ask nginx which worker answered ($pid).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&pid| parent_of(pid) == Some(parent))
        .collect()
}

// --- child processes ------------------------------------------------------------

/// A child process, stopped (TERM, then KILL) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(2));
    }
}

// --- Redis ------------------------------------------------------------------------

pub struct Redis {
    _proc: Proc,
    pub port: u16,
}

impl Redis {
    pub fn start(dir: &Path) -> Redis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        wait_port(port);
        Redis {
            _proc: Proc(child),
            port,
        }
    }

    /// Sends `commands` pipelined on one connection and returns the first
    /// line of each reply (replies here are one line: integers, statuses).
    pub fn pipeline<I>(&self, commands: I) -> Vec<String>
    where
        I: IntoIterator<Item = Vec<u8>>,
    {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("redis connect");
        let reader_stream = s.try_clone().unwrap();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(reader_stream);
            let mut replies = Vec::new();
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line.starts_with("+PONG") {
                    break;
                }
                assert!(!line.starts_with('-'), "redis error: {line}");
                replies.push(line.trim_end().to_owned());
            }
            replies
        });
        let mut buf = Vec::with_capacity(1 << 20);
        for c in commands {
            buf.extend_from_slice(&c);
            if buf.len() > 1 << 20 {
                s.write_all(&buf).unwrap();
                buf.clear();
            }
        }
        // The replies here are one line each and never "+PONG": a final
        // PING marks the end.
        buf.extend(resp(&[b"PING"]));
        s.write_all(&buf).unwrap();
        reader.join().unwrap()
    }

    /// Stores each site's record as `HSET dyncert:cert:<name> crt ... key ...`.
    pub fn load(&self, pki: &Pki, sites: &[Site]) {
        self.pipeline(sites.iter().map(|s| {
            let key = format!("dyncert:cert:{}", s.name);
            resp(&[
                b"HSET",
                key.as_bytes(),
                b"crt",
                s.chain_pem(pki).as_bytes(),
                b"key",
                s.key_pem.as_bytes(),
            ])
        }));
    }

    /// Round-trip times (microseconds) of `HGETALL` for each of `names`,
    /// one at a time: the Redis part of a cold miss, seen from here.
    pub fn hgetall_micros(&self, names: &[String]) -> Vec<u32> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("redis connect");
        s.set_nodelay(true).ok();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        let mut read_line = |r: &mut BufReader<TcpStream>| {
            line.clear();
            r.read_line(&mut line).expect("redis reply");
            line.trim_end().to_owned()
        };
        names
            .iter()
            .map(|n| {
                let t0 = Instant::now();
                s.write_all(&resp(&[b"HGETALL", format!("dyncert:cert:{n}").as_bytes()]))
                    .unwrap();
                let head = read_line(&mut r);
                let items: usize = head.trim_start_matches('*').parse().unwrap_or(0);
                for _ in 0..items {
                    let len: usize = read_line(&mut r).trim_start_matches('$').parse().unwrap();
                    let mut buf = vec![0u8; len + 2];
                    r.read_exact(&mut buf).unwrap();
                }
                t0.elapsed().as_micros() as u32
            })
            .collect()
    }

    /// How many of `names` have a record.
    pub fn count_records(&self, names: &[String]) -> usize {
        self.pipeline(
            names
                .iter()
                .map(|n| resp(&[b"EXISTS", format!("dyncert:cert:{n}").as_bytes()])),
        )
        .iter()
        .filter(|r| r.as_str() == ":1")
        .count()
    }
}

pub fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend(b"\r\n");
    }
    out
}

// --- nginx --------------------------------------------------------------------------

pub struct Nginx {
    proc: Option<Proc>,
    prefix: PathBuf,
    pub port: u16,
}

impl Nginx {
    /// Writes the configuration (`http` with `PORT` replaced) under
    /// `prefix` and starts nginx in the foreground; does not wait.
    pub fn spawn(prefix: &Path, http: &str, with_module: bool) -> Nginx {
        let port = free_port();
        // The worker on CPU 0; the master stays where the bench pinned it.
        let affinity = if cpus() > 1 {
            "worker_cpu_affinity 01;"
        } else {
            ""
        };
        let load = if with_module {
            format!("load_module {};", module_path().display())
        } else {
            String::new()
        };
        let conf = format!(
            "{load}\nworker_processes 1;\n{affinity}\ndaemon off;\n\
             error_log {p}/error.log warn;\npid {p}/nginx.pid;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n access_log off;\n ssl_protocols TLSv1.3;\n\
             ssl_session_tickets off;\n ssl_session_cache off;\n{http}\n}}\n",
            p = prefix.display(),
            http = http.replace("PORT", &port.to_string()),
        );
        fs::create_dir_all(prefix.join("conf")).unwrap();
        fs::create_dir_all(prefix.join("logs")).unwrap();
        fs::write(prefix.join("conf/nginx.conf"), conf).unwrap();
        let child = Command::new(nginx_bin())
            .args(Self::args(prefix))
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx");
        Nginx {
            proc: Some(Proc(child)),
            prefix: prefix.to_path_buf(),
            port,
        }
    }

    fn args(prefix: &Path) -> Vec<std::ffi::OsString> {
        vec![
            "-p".into(),
            prefix.into(),
            "-c".into(),
            "conf/nginx.conf".into(),
            "-e".into(),
            prefix.join("error.log").into(),
        ]
    }

    pub fn start(prefix: &Path, http: &str, with_module: bool) -> Nginx {
        let n = Self::spawn(prefix, http, with_module);
        wait_port(n.port);
        n
    }

    pub fn master_pid(&self) -> u32 {
        self.proc.as_ref().map(|p| p.0.id()).unwrap_or(0)
    }

    /// The (only) worker process.
    pub fn worker_pid(&self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(&pid) = children_of(self.master_pid()).first() {
                return pid;
            }
            assert!(Instant::now() < deadline, "no nginx worker");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `nginx -s reload` with this instance's prefix and configuration;
    /// returns once that command exits (the signal is sent, the new worker
    /// may not be up yet).
    pub fn reload(&self) {
        let st = Command::new(nginx_bin())
            .args(Self::args(&self.prefix))
            .args(["-s", "reload"])
            .stderr(Stdio::null())
            .status()
            .expect("nginx -s reload");
        assert!(st.success(), "nginx -s reload failed");
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.prefix.join("error.log")).unwrap_or_default()
    }

    /// Stops nginx and waits for it.
    pub fn stop(mut self) {
        self.proc.take();
    }
}
