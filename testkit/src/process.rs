//! What every server of the kit needs: free ports, temp dirs, polling,
//! signals, and child processes that never outlive the run.

use std::collections::BTreeSet;
use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the kit waits for a process to come up or a condition to hold
/// before it gives up; generous because CI machines have 2 cores.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(15);

/// A port that was free a moment ago, and never handed out before in this
/// process: tests run in parallel threads, and two of them must not be
/// given the same port before either server binds it.
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`),
/// from which every client socket gets its local port: a port from that
/// range can be taken by some outgoing connection between this check and
/// the server's bind (seen as nginx's `bind() ... Address already in use`).
/// So is the port 10000 above it, which a Redis Cluster node binds for
/// its bus: both are checked and handed out together.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let (start, end) = below_ephemeral();
    let span = u32::from(end - start);
    // Processes start at different places, so that two test binaries run
    // at once rarely try the same ports.
    let seed = std::process::id().wrapping_mul(2_654_435_761) % span.max(1);
    let free = |p: u16| !given.contains(&p) && TcpListener::bind(("127.0.0.1", p)).is_ok();
    for i in 0..span {
        let port = start + ((seed + i) % span) as u16;
        let bus = port + CLUSTER_BUS_OFFSET;
        if free(port) && free(bus) {
            given.insert(port);
            given.insert(bus);
            return port;
        }
    }
    // No room below the range: let the kernel choose, as before.
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

/// How far above its port a Redis Cluster node listens for its bus.
const CLUSTER_BUS_OFFSET: u16 = 10_000;

/// Ports from 10000 whose bus port is still below the first ephemeral one
/// (32768 by default: 10000 to 22767); an empty range when the ephemeral
/// range starts lower.
fn below_ephemeral() -> (u16, u16) {
    let first_ephemeral = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let start = 10_000;
    (
        start,
        first_ephemeral
            .saturating_sub(CLUSTER_BUS_OFFSET)
            .max(start),
    )
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

/// A directory under the system temp dir, removed on Drop unless the thread
/// is panicking (then it is kept and its path printed for post-mortems).
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

/// Writes `contents` to `path`, creating its parent directories.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent dir");
    }
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Sends `sig` to one process the kit started (or one of its workers).
pub fn signal(pid: u32, sig: libc::c_int) -> bool {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is one of
    // our own children (or a worker of one), never a broad target.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Makes the child die with the thread that spawned it even when the
/// process is killed outright (Drop never runs then), so no server
/// outlives a test run.
pub fn die_with_parent(cmd: &mut Command) {
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
pub(crate) fn wait_exit(child: &mut Child, deadline: Duration) -> bool {
    poll(deadline, Duration::from_millis(20), || {
        child.try_wait().ok().flatten().map(|_| ())
    })
    .is_some()
}

/// Live children of `pid` according to /proc (the workers of an nginx
/// master).
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

/// The last `lines` lines of `text`, for failure messages.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Seconds since the epoch.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
