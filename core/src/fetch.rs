//! The per-worker fetcher: a background thread running a small Tokio
//! runtime that reads certificate records from Redis, validates them and
//! hands the results back to the nginx event loop.
//!
//! The event loop never waits on it: requests go in through a bounded
//! channel (`try_send`), results come back through a queue plus one byte
//! written to a socket whose other end nginx polls as a read event. The
//! fetcher never touches nginx structures and never logs: every outcome,
//! errors included, travels back as data and is logged by the event loop.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;

use crate::record::{check_lengths, decode_fields, RecordError};
use crate::validate::{validate, Invalid, ParsedCert};

/// Where a certificate came from. `as_str` feeds `$dyncert_source` and
/// metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    Cache,
    Redis,
    Default,
    Rejected,
    /// A resumed TLS session: no certificate was sent, none was chosen.
    Resumed,
}

impl CertSource {
    pub fn as_str(&self) -> &'static str {
        match self {
            CertSource::Cache => "cache",
            CertSource::Redis => "redis",
            CertSource::Default => "default",
            CertSource::Rejected => "rejected",
            CertSource::Resumed => "resumed",
        }
    }
}

/// Settings of one worker's fetcher, built from the nginx configuration.
#[derive(Debug, Clone)]
pub struct FetcherConfig {
    /// `redis://` or `rediss://` URL, already validated with [`check_redis_url`].
    pub redis_url: String,
    /// Key prefix; the key is prefix + normalised name.
    pub prefix: String,
    /// Bound on each Redis command and on connecting.
    pub redis_timeout: Duration,
    /// Most requests queued towards the thread (beyond: refused at once).
    pub queue_cap: usize,
}

/// Checks a Redis URL at configuration time so a typo fails `nginx -t`.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Why a record was refused: a log reason and a counter label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub label: &'static str,
}

impl From<Invalid> for Refusal {
    fn from(i: Invalid) -> Self {
        Refusal {
            reason: i.as_str(),
            label: i.label(),
        }
    }
}

impl From<RecordError> for Refusal {
    fn from(e: RecordError) -> Self {
        let label = match e {
            RecordError::MissingCrt => "missing_crt",
            RecordError::MissingKey => "missing_key",
            RecordError::CrtTooLarge => "crt_too_large",
            RecordError::KeyTooLarge => "key_too_large",
        };
        Refusal {
            reason: e.as_str(),
            label,
        }
    }
}

/// Result of one lookup.
#[derive(Debug)]
pub enum Outcome {
    /// A valid certificate.
    Found(Arc<ParsedCert>),
    /// No record for the name.
    NotFound,
    /// A record exists but must not be served.
    Refused(Refusal),
    /// Redis could not answer (down, timeout, protocol error). The text
    /// carries no record data and may be logged.
    Error(String),
}

#[derive(Debug)]
pub struct FetchResult {
    pub name: String,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

struct Shared {
    results: Mutex<VecDeque<FetchResult>>,
    notify: UnixStream,
}

impl Shared {
    fn push(&self, r: FetchResult) {
        if let Ok(mut q) = self.results.lock() {
            q.push_back(r);
        }
        // One byte wakes the event loop; a full socket buffer means a wake-up
        // is already pending, so WouldBlock is fine to ignore.
        let _ = (&self.notify).write(&[1]);
    }
}

/// Handle owned by the event loop.
pub struct Fetcher {
    tx: Option<mpsc::Sender<String>>,
    shared: Arc<Shared>,
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl Fetcher {
    /// Starts the thread. Call from the worker process (never the master:
    /// threads do not survive fork).
    pub fn start(cfg: FetcherConfig) -> io::Result<Fetcher> {
        let (wake, notify) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        notify.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            results: Mutex::new(VecDeque::new()),
            notify,
        });
        let (tx, rx) = mpsc::channel(cfg.queue_cap.max(1));
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("dyncert-fetch".into())
            .spawn(move || run(cfg, rx, thread_shared))?;
        Ok(Fetcher {
            tx: Some(tx),
            shared,
            wake,
            thread: Some(thread),
        })
    }

    /// The descriptor the event loop watches for readability.
    pub fn wake_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.wake.as_raw_fd()
    }

    /// Queues a lookup without blocking. `false` when the queue is full or
    /// the thread is gone: the caller serves the default instead of waiting.
    pub fn request(&self, name: &str) -> bool {
        match &self.tx {
            Some(tx) => tx.try_send(name.to_owned()).is_ok(),
            None => false,
        }
    }

    /// Empties the wake-up socket and returns every finished lookup.
    pub fn drain(&self) -> Vec<FetchResult> {
        let mut buf = [0u8; 256];
        loop {
            match io::Read::read(&mut (&self.wake), &mut buf) {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
        match self.shared.results.lock() {
            Ok(mut q) => q.drain(..).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Stops the thread: closing the channel ends its loop; lookups still
    /// running are abandoned after a short grace period.
    pub fn stop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(cfg: FetcherConfig, mut rx: mpsc::Receiver<String>, shared: Arc<Shared>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            // Without a runtime every request fails; report each as an error
            // so the event loop logs it and serves the default.
            let msg = format!("cannot start the fetcher runtime: {e}");
            while let Some(name) = rx.blocking_recv() {
                shared.push(FetchResult {
                    name,
                    outcome: Outcome::Error(msg.clone()),
                    elapsed: Duration::ZERO,
                });
            }
            return;
        }
    };
    rt.block_on(async move {
        let redis = connect(&cfg);
        let cfg = Arc::new(cfg);
        while let Some(name) = rx.recv().await {
            let shared = shared.clone();
            let cfg = cfg.clone();
            let redis = redis.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let outcome = match redis {
                    Ok(mut conn) => lookup(&mut conn, &cfg, &name).await,
                    Err(ref e) => Outcome::Error(e.clone()),
                };
                shared.push(FetchResult {
                    name,
                    outcome,
                    elapsed: start.elapsed(),
                });
            });
        }
    });
    rt.shutdown_timeout(Duration::from_millis(200));
}

/// Creates the connection lazily: nginx must start (and serve defaults)
/// while Redis is down; the manager reconnects with backoff by itself.
fn connect(cfg: &FetcherConfig) -> Result<ConnectionManager, String> {
    let client = redis::Client::open(cfg.redis_url.as_str()).map_err(|e| e.to_string())?;
    let mcfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(cfg.redis_timeout))
        .set_response_timeout(Some(cfg.redis_timeout))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_lazy_with_config(client, mcfg).map_err(|e| e.to_string())
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn lookup(conn: &mut ConnectionManager, cfg: &FetcherConfig, name: &str) -> Outcome {
    let key = format!("{}{}", cfg.prefix, name);
    // Sizes first, so an oversized value is refused without being read.
    let mut pipe = redis::pipe();
    pipe.cmd("EXISTS")
        .arg(&key)
        .cmd("HSTRLEN")
        .arg(&key)
        .arg("crt")
        .cmd("HSTRLEN")
        .arg(&key)
        .arg("key");
    let sizes = pipe.query_async::<(u64, u64, u64)>(conn);
    let (exists, crt_len, key_len) = match tokio::time::timeout(cfg.redis_timeout, sizes).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Outcome::Error(redis_error(&e)),
        Err(_) => return Outcome::Error("redis command timed out".into()),
    };
    match check_lengths(exists > 0, crt_len, key_len) {
        Ok(false) => return Outcome::NotFound,
        Ok(true) => {}
        Err(e) => return Outcome::Refused(e.into()),
    }
    let mut hmget = redis::cmd("HMGET");
    hmget.arg(&key).arg("crt").arg("key");
    let values = hmget.query_async::<(Option<Vec<u8>>, Option<Vec<u8>>)>(conn);
    let (crt, pkey) = match tokio::time::timeout(cfg.redis_timeout, values).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Outcome::Error(redis_error(&e)),
        Err(_) => return Outcome::Error("redis command timed out".into()),
    };
    if crt.is_none() && pkey.is_none() {
        // Deleted between the two reads.
        return Outcome::NotFound;
    }
    let record = match decode_fields(crt, pkey) {
        Ok(r) => r,
        Err(e) => return Outcome::Refused(e.into()),
    };
    match validate(&record, name, now_secs()) {
        Ok(p) => Outcome::Found(Arc::new(p)),
        Err(i) => Outcome::Refused(i.into()),
    }
}

/// Error text without any record data (redis errors carry command names
/// and server messages, never values).
fn redis_error(e: &redis::RedisError) -> String {
    let s = e.to_string();
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s
    }
}
