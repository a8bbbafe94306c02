//! Runs the DNS-01 hook program the way lego's exec provider does:
//! `CMD present FQDN VALUE` and `CMD cleanup FQDN VALUE`, no shell in
//! between, with dyncert's environment less its own variables
//! ([`CLEARED_ENV`]). stdin and stdout are /dev/null; the end of stderr is
//! kept (bounded) for the error line. A hook still running at its timeout is
//! killed with its whole process group (a script's curl included).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::dns01::{hook_failure, output_tail, HookEnd, TAIL_CHARS};

/// The variables `dyncert` reads its own options from, removed from the
/// hook's environment: the Redis URL carries its password, the EAB MAC
/// key is a secret, and the rest name key files (Redis TLS client key,
/// key-encryption keys) a DNS provider's script has no business with.
/// The hook gets everything else (its provider's token, PATH, HOME).
pub const CLEARED_ENV: [&str; 8] = [
    "DYNCERT_REDIS",
    "DYNCERT_REDIS_CA",
    "DYNCERT_REDIS_CERT",
    "DYNCERT_REDIS_KEY",
    "DYNCERT_KEY_ENCRYPTION_KEYS",
    "DYNCERT_ACME_TIMEOUT",
    "DYNCERT_EAB_KID",
    "DYNCERT_EAB_HMAC_KEY",
];

/// Bytes of stderr kept while reading (the line shows fewer).
const STDERR_KEPT: usize = 4096;
/// How long stderr may stay open after the hook exited (a background
/// child holding it) before it is read no further.
const STDERR_GRACE: Duration = Duration::from_secs(1);

/// The DNS-01 options of `issue` and `renew`.
#[derive(Clone, Debug)]
pub struct DnsHook {
    /// The program (a path, or a name looked up in PATH).
    pub command: PathBuf,
    /// A run still going after this is killed.
    pub timeout: Duration,
    /// Sleep between the last `present` and telling the CA.
    pub propagation_wait: Duration,
}

impl DnsHook {
    /// Runs `CMD action fqdn value`; `Err` is the one-line reason, naming
    /// `name` (the identifier the record is for).
    pub fn run(&self, action: &str, name: &str, fqdn: &str, value: &str) -> Result<(), String> {
        let (end, tail) = self.spawn_and_wait(action, fqdn, value);
        match hook_failure(action, name, &end, &tail) {
            None => Ok(()),
            Some(why) => Err(why),
        }
    }

    fn spawn_and_wait(&self, action: &str, fqdn: &str, value: &str) -> (HookEnd, String) {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        let mut cmd = Command::new(&self.command);
        cmd.arg(action)
            .arg(fqdn)
            .arg(value)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        for var in CLEARED_ENV {
            cmd.env_remove(var);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let why = format!("\"{}\": {e}", self.command.display());
                return (HookEnd::NotStarted(why), String::new());
            }
        };
        let (tx, rx) = mpsc::channel();
        if let Some(mut stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut kept: Vec<u8> = Vec::new();
                let mut buf = [0u8; 1024];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > STDERR_KEPT {
                        kept.drain(..kept.len() - STDERR_KEPT);
                    }
                }
                let _ = tx.send(kept);
            });
        }
        let deadline = Instant::now() + self.timeout;
        let end = loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    break match (status.code(), status.signal()) {
                        (Some(0), _) => HookEnd::Success,
                        (Some(code), _) => HookEnd::Exit(code),
                        (None, Some(sig)) => HookEnd::Signal(sig),
                        (None, None) => HookEnd::Exit(-1),
                    };
                }
                Ok(None) if Instant::now() >= deadline => {
                    kill_group(child.id());
                    let _ = child.kill();
                    let _ = child.wait();
                    break HookEnd::TimedOut(self.timeout.as_secs());
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => break HookEnd::NotStarted(format!("wait: {e}")),
            }
        };
        let tail = rx
            .recv_timeout(STDERR_GRACE)
            .map(|b| output_tail(&b, TAIL_CHARS))
            .unwrap_or_default();
        (end, tail)
    }
}

/// SIGKILL to the hook's process group (it leads its own: `process_group(0)`).
fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 0 {
            // SAFETY: kill(2) with a negative pid signals that process
            // group only; no memory is involved.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}
