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

use futures_util::StreamExt;

use crate::api::{ApiClient, ApiConfig, ApiOutcome};
use crate::intern::Interner;
use crate::name::{normalize_sni, wildcard_parent};
use crate::outcome::{CertSource, FetchSource, Refusal, StepOutcome};
use crate::record::{check_lengths, check_policy_lengths, decode_record, Record};
use crate::workqueue::WorkQueue;

/// Hash fields of a record, in the order they are read.
const FIELDS: [&str; 4] = ["crt", "key", "allow", "client_ca"];
use crate::validate::{validate, validate_wildcard, ParsedCert};

/// Settings of one worker's fetcher, built from the nginx configuration.
#[derive(Clone)]
pub struct FetcherConfig {
    /// `redis://` URL, already validated with [`check_redis_url`].
    pub redis_url: Option<String>,
    /// Key prefix; the key is prefix + normalised name.
    pub prefix: String,
    /// Bound on each Redis command and on connecting.
    pub redis_timeout: Duration,
    /// The certificate API, asked when Redis has no record (or is down).
    pub api: Option<ApiConfig>,
    /// TTL of records written back to Redis after an API hit; zero: no
    /// write-back.
    pub writeback: Duration,
    /// Pub/sub channel carrying names to drop from every worker's cache.
    pub invalidate_channel: Option<String>,
    /// Key prefix of ACME HTTP-01 key authorizations.
    pub acme_prefix: String,
    /// Most requests queued towards the thread (beyond: refused at once).
    pub queue_cap: usize,
    /// Most ACME reads queued, in a queue of their own so that challenge
    /// requests (anyone on port 80) never take a certificate fetch's place.
    pub acme_queue_cap: usize,
}

/// A Redis URL fit for a log line or an `nginx -t` error: the user info's
/// password (or a user info that is only a password) becomes `***`. Also
/// for URLs that do not parse: whatever precedes the host's `@` is hidden.
pub fn redact_redis_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None if userinfo.is_empty() => String::new(),
        None => "***".to_owned(),
    };
    format!("{scheme}{shown}{}", &rest[at..])
}

/// Checks a Redis URL at configuration time so a typo fails `nginx -t`.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Result of one lookup.
#[derive(Debug)]
pub enum Outcome {
    /// A valid certificate, where it came from, and the wildcard key it was
    /// found under when there was no exact record.
    Found {
        cert: Arc<ParsedCert>,
        source: CertSource,
        wildcard: Option<String>,
    },
    /// No record for the name.
    NotFound,
    /// A record exists but must not be served.
    Refused(Refusal),
    /// No source could answer (down, timeout, protocol error, bad API
    /// answer). The text names the source and carries no record data.
    Error(String),
}

/// Work for the fetcher thread's certificate queue (ACME reads have a
/// queue of their own, see [`Fetcher::request_acme`]).
#[derive(Debug)]
enum Request {
    Cert(String),
}

/// Longest ACME key authorization served (token + '.' + thumbprint is
/// under 100 bytes).
pub const MAX_ACME_VALUE: usize = 512;

/// The answer to an ACME challenge read.
#[derive(Debug)]
pub enum AcmeAnswer {
    Value(Vec<u8>),
    Absent,
    Error(String),
}

/// What the fetcher thread reports to the event loop.
#[derive(Debug)]
pub enum Event {
    Fetched(FetchResult),
    /// A name (or `*.parent`, or `*`) published on the invalidation channel,
    /// already validated.
    Invalidate(String),
    /// The invalidation subscription was (re)established; `resubscribed`
    /// is false the first time. Messages published while it was down are
    /// lost, so the worker may want to refresh early.
    Subscribed {
        resubscribed: bool,
    },
    /// Something the operator should see (subscription trouble).
    Warn(String),
    /// An ACME challenge read finished.
    Acme {
        token: String,
        answer: AcmeAnswer,
    },
}

#[derive(Debug)]
pub struct FetchResult {
    pub name: String,
    pub outcome: Outcome,
    pub elapsed: Duration,
    /// Each source asked, in order, for the metrics.
    pub steps: Vec<Step>,
}

/// One source asked during a lookup.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub source: FetchSource,
    pub outcome: StepOutcome,
    pub elapsed: Duration,
}

struct Shared {
    results: Mutex<VecDeque<Event>>,
    notify: UnixStream,
}

impl Shared {
    fn push(&self, r: Event) {
        if let Ok(mut q) = self.results.lock() {
            q.push_back(r);
        }
        // One byte wakes the event loop; a full socket buffer means a wake-up
        // is already pending, so WouldBlock is fine to ignore.
        let _ = (&self.notify).write(&[1]);
    }
}

/// A record validation for the parse thread.
type ParseJob = Box<dyn FnOnce() + Send>;

/// Handle owned by the event loop.
pub struct Fetcher {
    tx: Option<mpsc::Sender<Request>>,
    /// ACME tokens to read.
    acme_tx: Option<mpsc::Sender<String>>,
    shared: Arc<Shared>,
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
    parse: Arc<WorkQueue<ParseJob>>,
    parse_thread: Option<JoinHandle<()>>,
}

impl Fetcher {
    /// Starts the thread. Call from the worker process (never the master:
    /// threads do not survive fork).
    pub fn start(cfg: FetcherConfig) -> io::Result<Fetcher> {
        // Built here so a bad API configuration is reported at start; the
        // client spawns nothing until used on the fetcher's runtime.
        let api = match &cfg.api {
            Some(a) => Some(ApiClient::new(a.clone()).map_err(io::Error::other)?),
            None => None,
        };
        let (wake, notify) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        notify.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            results: Mutex::new(VecDeque::new()),
            notify,
        });
        let (tx, rx) = mpsc::channel(cfg.queue_cap.max(1));
        let (acme_tx, acme_rx) = mpsc::channel(cfg.acme_queue_cap.max(1));
        // Every lookup in flight has at most one record being parsed.
        let parse = Arc::new(WorkQueue::new(cfg.queue_cap.max(1) * 2));
        let parse_queue = parse.clone();
        let parse_thread = std::thread::Builder::new()
            .name("dyncert-parse".into())
            .spawn(move || {
                while let Some(job) = parse_queue.pop() {
                    // A panic fails this record's lookup (its answer channel
                    // is dropped), never the thread.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })?;
        let thread_shared = shared.clone();
        let thread_parse = parse.clone();
        let thread = std::thread::Builder::new()
            .name("dyncert-fetch".into())
            .spawn(move || run(cfg, api, rx, acme_rx, thread_shared, thread_parse));
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                parse.close();
                let _ = parse_thread.join();
                return Err(e);
            }
        };
        Ok(Fetcher {
            tx: Some(tx),
            acme_tx: Some(acme_tx),
            shared,
            wake,
            thread: Some(thread),
            parse,
            parse_thread: Some(parse_thread),
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
            Some(tx) => tx.try_send(Request::Cert(name.to_owned())).is_ok(),
            None => false,
        }
    }

    /// Queues the read of an ACME HTTP-01 key authorization (`token` is
    /// already validated). `false` when it cannot be queued. Its queue is
    /// not the certificates' one: however full it is, [`Fetcher::request`]
    /// is unaffected.
    pub fn request_acme(&self, token: &str) -> bool {
        match &self.acme_tx {
            Some(tx) => tx.try_send(token.to_owned()).is_ok(),
            None => false,
        }
    }

    /// Empties the wake-up socket and returns every finished lookup.
    pub fn drain(&self) -> Vec<Event> {
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
        self.acme_tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The I/O thread is gone: nobody waits for what is still queued.
        self.parse.close();
        if let Some(t) = self.parse_thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    cfg: FetcherConfig,
    api: Option<ApiClient>,
    mut rx: mpsc::Receiver<Request>,
    acme_rx: mpsc::Receiver<String>,
    shared: Arc<Shared>,
    parse: Arc<WorkQueue<ParseJob>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            // Without a runtime every request fails; report each as an error
            // so the event loop logs it and serves the default. ACME reads
            // are refused at once (their queue is closed): 503.
            drop(acme_rx);
            let msg = format!("cannot start the fetcher runtime: {e}");
            while let Some(Request::Cert(name)) = rx.blocking_recv() {
                shared.push(Event::Fetched(FetchResult {
                    name,
                    outcome: Outcome::Error(msg.clone()),
                    elapsed: Duration::ZERO,
                    steps: Vec::new(),
                }));
            }
            return;
        }
    };
    rt.block_on(async move {
        let redis = cfg.redis_url.as_ref().map(|_| connect(&cfg));
        if let (Some(url), Some(channel)) = (&cfg.redis_url, &cfg.invalidate_channel) {
            tokio::spawn(subscribe(
                url.clone(),
                channel.clone(),
                cfg.redis_timeout,
                shared.clone(),
            ));
        }
        let sources = Arc::new(Sources {
            cfg,
            redis,
            api,
            intermediates: Arc::new(Interner::default()),
            parse,
        });
        tokio::spawn(answer_acme(acme_rx, sources.clone(), shared.clone()));
        while let Some(req) = rx.recv().await {
            let shared = shared.clone();
            let sources = sources.clone();
            let Request::Cert(name) = req;
            tokio::spawn(async move {
                let start = Instant::now();
                let mut steps = Vec::with_capacity(3);
                let outcome = sources.lookup(&name, &mut steps).await;
                shared.push(Event::Fetched(FetchResult {
                    name,
                    outcome,
                    elapsed: start.elapsed(),
                    steps,
                }));
            });
        }
    });
    rt.shutdown_timeout(Duration::from_millis(200));
}

/// Reads ACME key authorizations as the event loop asks for them. How
/// many run at once is bounded by the event loop (`acme::AcmeGate`), and
/// they never wait behind certificate lookups in a queue, nor these behind
/// them.
async fn answer_acme(mut rx: mpsc::Receiver<String>, sources: Arc<Sources>, shared: Arc<Shared>) {
    while let Some(token) = rx.recv().await {
        let (sources, shared) = (sources.clone(), shared.clone());
        tokio::spawn(async move {
            let answer = sources.acme(&token).await;
            shared.push(Event::Acme { token, answer });
        });
    }
}

struct Sources {
    cfg: FetcherConfig,
    redis: Option<Result<ConnectionManager, String>>,
    api: Option<ApiClient>,
    /// Shared parsed intermediates (one object per distinct DER).
    intermediates: Arc<Interner>,
    /// Jobs for the parse thread.
    parse: Arc<WorkQueue<ParseJob>>,
}

/// One Redis read of one key.
enum RedisAnswer {
    Record(Record),
    Absent,
    Refused(Refusal),
    Error(String),
    /// The command ran out of `dyncert_redis_timeout` (Redis hangs).
    Timeout,
    /// A connection error worth one retry on a fresh connection.
    Retry(String),
}

impl RedisAnswer {
    fn failed(e: &redis::RedisError) -> RedisAnswer {
        if retryable(e) {
            RedisAnswer::Retry(redis_error(e))
        } else {
            if e.is_timeout() {
                RedisAnswer::Timeout
            } else {
                RedisAnswer::Error(redis_error(e))
            }
        }
    }
}

impl Sources {
    /// cache miss → Redis (exact, then `*.parent`) → API, validating
    /// whatever is found against the requested name.
    async fn lookup(&self, name: &str, steps: &mut Vec<Step>) -> Outcome {
        let mut redis_error = None;
        if let Some(redis) = &self.redis {
            match redis {
                Ok(conn) => {
                    let mut conn = conn.clone();
                    let mut keys = vec![name.to_owned()];
                    keys.extend(wildcard_parent(name));
                    for key in keys {
                        let t0 = Instant::now();
                        let answer = self.read_redis(&mut conn, &key).await;
                        let (outcome, done) = match answer {
                            RedisAnswer::Record(r) => {
                                let wildcard = (key != name).then_some(key);
                                let o = self.found(r, name, CertSource::Redis, wildcard).await;
                                let step = if matches!(o, Outcome::Found { .. }) {
                                    StepOutcome::Hit
                                } else {
                                    StepOutcome::Refused
                                };
                                (step, Some(o))
                            }
                            RedisAnswer::Refused(r) => {
                                (StepOutcome::Refused, Some(Outcome::Refused(r)))
                            }
                            RedisAnswer::Absent => (StepOutcome::Miss, None),
                            // Redis down or hung: the API is the source of truth.
                            RedisAnswer::Error(e) | RedisAnswer::Retry(e) => {
                                redis_error = Some(e);
                                (StepOutcome::Error, None)
                            }
                            RedisAnswer::Timeout => {
                                redis_error = Some("redis command timed out".to_owned());
                                (StepOutcome::Timeout, None)
                            }
                        };
                        steps.push(Step {
                            source: FetchSource::Redis,
                            outcome,
                            elapsed: t0.elapsed(),
                        });
                        if let Some(o) = done {
                            return o;
                        }
                        if redis_error.is_some() {
                            break;
                        }
                    }
                }
                Err(e) => redis_error = Some(e.clone()),
            }
        }
        let Some(api) = &self.api else {
            return match redis_error {
                Some(e) => Outcome::Error(format!("{e} while fetching from redis")),
                None => Outcome::NotFound,
            };
        };
        let t0 = Instant::now();
        let (step, outcome) = match api.lookup(name).await {
            ApiOutcome::Found(record) => {
                let outcome = self
                    .found(record.clone(), name, CertSource::Api, None)
                    .await;
                if let (Outcome::Found { .. }, Some(Ok(conn))) = (&outcome, &self.redis) {
                    if redis_error.is_none() && !self.cfg.writeback.is_zero() {
                        self.write_back(conn.clone(), name, record);
                    }
                }
                let step = if matches!(outcome, Outcome::Found { .. }) {
                    StepOutcome::Hit
                } else {
                    StepOutcome::Refused
                };
                (step, outcome)
            }
            ApiOutcome::NotFound => (StepOutcome::Miss, Outcome::NotFound),
            ApiOutcome::Refused(e) => (StepOutcome::Refused, Outcome::Refused(e.into())),
            ApiOutcome::Error(e) => {
                let kind = if e.starts_with("timed out") {
                    StepOutcome::Timeout
                } else {
                    StepOutcome::Error
                };
                (
                    kind,
                    Outcome::Error(format!("{e} while fetching from the api")),
                )
            }
        };
        steps.push(Step {
            source: FetchSource::Api,
            outcome: step,
            elapsed: t0.elapsed(),
        });
        outcome
    }

    /// `GET <acme_prefix><token>`: the key authorization an issuer stored.
    async fn acme(&self, token: &str) -> AcmeAnswer {
        let Some(Ok(conn)) = &self.redis else {
            return AcmeAnswer::Error("no redis configured".into());
        };
        let mut conn = conn.clone();
        // Once more after a connection error (see read_redis).
        match self.acme_once(&mut conn, token).await {
            Err(_) => match self.acme_once(&mut conn, token).await {
                Ok(a) => a,
                Err(e) => AcmeAnswer::Error(e),
            },
            Ok(a) => a,
        }
    }

    /// `Err` only for a connection error worth a retry.
    async fn acme_once(
        &self,
        conn: &mut ConnectionManager,
        token: &str,
    ) -> Result<AcmeAnswer, String> {
        let key = format!("{}{}", self.cfg.acme_prefix, token);
        // STRLEN first: the answer is bounded like every other input.
        let mut pipe = redis::pipe();
        pipe.cmd("STRLEN").arg(&key);
        let t = self.cfg.redis_timeout;
        let len = match tokio::time::timeout(t, pipe.query_async::<(u64,)>(conn)).await {
            Ok(Ok((n,))) => n,
            Ok(Err(e)) if retryable(&e) => return Err(redis_error(&e)),
            Ok(Err(e)) => return Ok(AcmeAnswer::Error(redis_error(&e))),
            Err(_) => return Ok(AcmeAnswer::Error("redis command timed out".into())),
        };
        if len == 0 {
            return Ok(AcmeAnswer::Absent);
        }
        if len > MAX_ACME_VALUE as u64 {
            return Ok(AcmeAnswer::Error(format!(
                "value longer than {MAX_ACME_VALUE} bytes"
            )));
        }
        let mut get = redis::cmd("GET");
        get.arg(&key);
        Ok(
            match tokio::time::timeout(t, get.query_async::<Option<Vec<u8>>>(conn)).await {
                Ok(Ok(Some(v))) if !v.is_empty() && v.len() <= MAX_ACME_VALUE => {
                    AcmeAnswer::Value(v)
                }
                Ok(Ok(_)) => AcmeAnswer::Absent,
                Ok(Err(e)) if retryable(&e) => return Err(redis_error(&e)),
                Ok(Err(e)) => AcmeAnswer::Error(redis_error(&e)),
                Err(_) => AcmeAnswer::Error("redis command timed out".into()),
            },
        )
    }

    /// Validates a record for `name` on the parse thread (never on this
    /// I/O thread, whose other lookups and invalidations must not wait
    /// behind CPU work); intermediates are shared with the records already
    /// cached.
    async fn found(
        &self,
        record: Record,
        name: &str,
        source: CertSource,
        wildcard: Option<String>,
    ) -> Outcome {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let interner = self.intermediates.clone();
        let name = name.to_owned();
        let job: ParseJob = Box::new(move || {
            let _ = tx.send(parse_record(&interner, &record, &name, source, wildcard));
        });
        if self.parse.push(job).is_err() {
            return Outcome::Error("the record parse queue is full".to_owned());
        }
        rx.await
            .unwrap_or_else(|_| Outcome::Error("the record parse failed".to_owned()))
    }

    /// Reads a record, once more on a connection error: after a Redis
    /// restart the first command fails on the dead connection while the
    /// manager reconnects, and the retry waits for the new one.
    async fn read_redis(&self, conn: &mut ConnectionManager, name: &str) -> RedisAnswer {
        match self.read_redis_once(conn, name).await {
            RedisAnswer::Retry(_) => match self.read_redis_once(conn, name).await {
                RedisAnswer::Retry(e) => RedisAnswer::Error(e),
                other => other,
            },
            other => other,
        }
    }

    async fn read_redis_once(&self, conn: &mut ConnectionManager, name: &str) -> RedisAnswer {
        let t = self.cfg.redis_timeout;
        let key = format!("{}{}", self.cfg.prefix, name);
        // Sizes first, so an oversized value is refused without being read.
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS").arg(&key);
        for field in FIELDS {
            pipe.cmd("HSTRLEN").arg(&key).arg(field);
        }
        let sizes = pipe.query_async::<(u64, u64, u64, u64, u64)>(conn);
        let (exists, crt_len, key_len, allow_len, ca_len) =
            match tokio::time::timeout(t, sizes).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => return RedisAnswer::failed(&e),
                Err(_) => return RedisAnswer::Timeout,
            };
        match check_lengths(exists > 0, crt_len, key_len)
            .and_then(|e| check_policy_lengths(allow_len, ca_len).map(|()| e))
        {
            Ok(false) => return RedisAnswer::Absent,
            Ok(true) => {}
            Err(e) => return RedisAnswer::Refused(e.into()),
        }
        let mut hmget = redis::cmd("HMGET");
        hmget.arg(&key).arg(&FIELDS[..]);
        type Fields = (
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
        );
        let values = hmget.query_async::<Fields>(conn);
        let (crt, pkey, allow, client_ca) = match tokio::time::timeout(t, values).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return RedisAnswer::failed(&e),
            Err(_) => return RedisAnswer::Timeout,
        };
        if crt.is_none() && pkey.is_none() {
            // Deleted between the two reads.
            return RedisAnswer::Absent;
        }
        match decode_record(crt, pkey, allow, client_ca) {
            Ok(r) => RedisAnswer::Record(r),
            Err(e) => RedisAnswer::Refused(e.into()),
        }
    }

    /// Stores an API answer in Redis (HSET + EXPIRE, atomically) so the
    /// next terminator finds it there. Best effort, off the lookup's path.
    fn write_back(&self, mut conn: ConnectionManager, name: &str, record: Record) {
        let key = format!("{}{}", self.cfg.prefix, name);
        let ttl = self.cfg.writeback.as_secs().max(1);
        let t = self.cfg.redis_timeout;
        tokio::spawn(async move {
            let mut pipe = redis::pipe();
            // DEL first: policy fields the API no longer sends must not
            // linger from an older record.
            pipe.atomic().cmd("DEL").arg(&key).ignore();
            let hset = pipe
                .cmd("HSET")
                .arg(&key)
                .arg("crt")
                .arg(record.crt.as_slice())
                .arg("key")
                .arg(record.key.as_slice());
            if let Some(a) = &record.allow {
                hset.arg("allow").arg(a.as_slice());
            }
            if let Some(c) = &record.client_ca {
                hset.arg("client_ca").arg(c.as_slice());
            }
            hset.ignore().cmd("EXPIRE").arg(&key).arg(ttl).ignore();
            let _ = tokio::time::timeout(t, pipe.query_async::<()>(&mut conn)).await;
        });
    }
}

/// Listens on the invalidation channel for the life of the worker,
/// re-subscribing with backoff after any disconnect.
async fn subscribe(url: String, channel: String, timeout: Duration, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(100);
    let mut subscribed_before = false;
    let mut last_warn: Option<Instant> = None;
    loop {
        let mut subscribed = false;
        let err = match listen(
            &url,
            &channel,
            timeout,
            &shared,
            subscribed_before,
            &mut subscribed,
        )
        .await
        {
            Ok(()) => "subscription closed".to_owned(),
            Err(e) => e,
        };
        // One line per outage, then at most one every 30 s.
        if last_warn.is_none_or(|t| subscribed || t.elapsed() > Duration::from_secs(30)) {
            shared.push(Event::Warn(format!(
                "dyncert: {err} while subscribed to \"{channel}\", retrying"
            )));
            last_warn = Some(Instant::now());
        }
        if subscribed {
            subscribed_before = true;
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn listen(
    url: &str,
    channel: &str,
    timeout: Duration,
    shared: &Shared,
    resubscribed: bool,
    subscribed: &mut bool,
) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| redis_error(&e))?;
    let mut pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
        .await
        .map_err(|_| "redis connect timed out".to_owned())?
        .map_err(|e| redis_error(&e))?;
    tokio::time::timeout(timeout, pubsub.subscribe(channel))
        .await
        .map_err(|_| "redis SUBSCRIBE timed out".to_owned())?
        .map_err(|e| redis_error(&e))?;
    *subscribed = true;
    shared.push(Event::Subscribed { resubscribed });
    let mut stream = pubsub.on_message();
    while let Some(msg) = stream.next().await {
        let payload = msg.get_payload_bytes();
        match invalidation_target(payload) {
            Some(target) => shared.push(Event::Invalidate(target)),
            None => shared.push(Event::Warn(format!(
                "dyncert: ignored an invalid name ({} bytes) on \"{channel}\"",
                payload.len()
            ))),
        }
    }
    Ok(())
}

/// Validates an invalidation message: `*`, `*.<name>` or a host name.
pub fn invalidation_target(payload: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?.trim();
    if text == "*" {
        return Some("*".to_owned());
    }
    if let Some(rest) = text.strip_prefix("*.") {
        let parent = normalize_sni(rest.as_bytes()).ok()?;
        return Some(format!("*.{parent}"));
    }
    normalize_sni(text.as_bytes()).ok()
}

/// Creates the connection lazily: nginx must start (and serve defaults)
/// while Redis is down; the manager reconnects with backoff by itself.
fn connect(cfg: &FetcherConfig) -> Result<ConnectionManager, String> {
    let url = cfg.redis_url.as_deref().unwrap_or_default();
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mcfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(cfg.redis_timeout))
        .set_response_timeout(Some(cfg.redis_timeout))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_lazy_with_config(client, mcfg).map_err(|e| e.to_string())
}

/// Validates `record` for `name` (against the wildcard it was stored
/// under, if any) and shares its intermediates: the parse thread's job.
fn parse_record(
    interner: &Interner,
    record: &Record,
    name: &str,
    source: CertSource,
    wildcard: Option<String>,
) -> Outcome {
    // A record stored under `*.parent` is cached under that key and served
    // to every name below it: it must carry the wildcard itself.
    let parsed = match &wildcard {
        Some(w) => validate_wildcard(record, w, name, now_secs()),
        None => validate(record, name, now_secs()),
    };
    match parsed {
        Ok(mut p) => {
            interner.share(&mut p.chain);
            Outcome::Found {
                cert: Arc::new(p),
                source,
                wildcard,
            }
        }
        Err(i) => Outcome::Refused(i.into()),
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A connection error: the manager reconnects, a retry may succeed.
fn retryable(e: &redis::RedisError) -> bool {
    // A timeout means Redis hangs: retrying would only double the wait.
    !e.is_timeout() && (e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_url_passwords_never_reach_messages() {
        assert_eq!(
            redact_redis_url("redis://:s3cret@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_redis_url("rediss://app:s3cret@redis.internal/2?protocol=resp3"),
            "rediss://app:***@redis.internal/2?protocol=resp3"
        );
        assert_eq!(redact_redis_url("redis://s3cret@host"), "redis://***@host");
        // A '@' in the password itself: everything up to the host's '@'.
        assert_eq!(
            redact_redis_url("redis://u:a@b@host/0"),
            "redis://u:***@host/0"
        );
        assert_eq!(redact_redis_url("not a url :s3cret@x"), "not a url :***@x");
        assert_eq!(
            redact_redis_url("redis://127.0.0.1/0"),
            "redis://127.0.0.1/0"
        );
        assert_eq!(redact_redis_url("redis://h/p@th"), "redis://h/p@th");
        for url in ["redis://:s3cret@h", "redis://u:s3cret@h:1/0", "s3cret@h"] {
            assert!(!redact_redis_url(url).contains("s3cret"), "{url}");
        }
    }

    #[test]
    fn invalidation_messages_are_validated() {
        assert_eq!(invalidation_target(b"*").as_deref(), Some("*"));
        assert_eq!(
            invalidation_target(b"Shop.Example.com.").as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(
            invalidation_target(b"*.Example.com").as_deref(),
            Some("*.example.com")
        );
        assert_eq!(invalidation_target(b"a..b"), None);
        assert_eq!(invalidation_target(b"*.*.x"), None);
        assert_eq!(invalidation_target(b"\xff"), None);
        assert_eq!(invalidation_target(b""), None);
    }
}
