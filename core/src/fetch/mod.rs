//! The per-worker fetcher: a background thread running a small Tokio
//! runtime that reads certificate records from Redis, validates them and
//! hands the results back to the nginx event loop.
//!
//! The event loop never waits on it: requests go in through a bounded
//! channel (`try_send`), results come back through a queue plus one byte
//! written to a socket whose other end nginx polls as a read event. The
//! fetcher never touches nginx structures and never logs: every outcome,
//! errors included, travels back as data and is logged by the event loop.
//!
//! This file holds the thread, its channels and the wake-up socket; the
//! sources live beside it: `sources` (the fallback order and the hand-off
//! to the parse thread), `redis` (reads, write-back, the connection),
//! `acme` (challenge reads), `invalidate` (the pub/sub listener) and
//! `error` (what a failure is).

mod acme;
mod conn;
mod enqueue;
mod error;
mod health;
mod heard;
mod invalidate;
mod redis;
mod sources;
mod tickets;

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::api::{ApiClient, ApiConfig};
use crate::clock::Millis;
use crate::compact::{Compact, Deadlines, IntermediateDers};
use crate::flight::Attempt;
use crate::intern::Interner;
use crate::keyref::KeyRefConfig;
use crate::keywrap::KeyWrapConfig;
use crate::outcome::{CertSource, FetchSource, Refusal, StepOutcome};
use crate::tier::TierHit;
use crate::validate::{Invalid, ParsedCert};
use crate::workqueue::WorkQueue;

pub use crate::topology::redact_redis_url;
pub use conn::{is_connection_failure, Notes, RedisConn, RedisNote, RedisTarget, RedisTls};
pub use error::{AcmeError, FetchError, RedisError};
pub use invalidate::{
    detection_bound, invalidation_target, BACKOFF_MAX as RESUBSCRIBE_BACKOFF_MAX,
};
pub use redis::check_redis_url;

pub use tickets::{TicketConfig, TicketNote, TicketStore, CHECK_INTERVAL as TICKET_CHECK_INTERVAL};

use sources::{ParseJob, Sources};

/// Settings of one worker's fetcher, built from the nginx configuration.
#[derive(Clone)]
pub struct FetcherConfig {
    /// Redis URL (one server, `sentinel://` or `cluster://`), already
    /// validated with [`check_redis_url`].
    pub redis_url: Option<String>,
    /// CA and client certificate of `rediss://` and `clusters://`.
    pub redis_tls: RedisTls,
    /// Key prefix; the key is prefix + normalised name.
    pub prefix: String,
    /// Bound on each Redis command and on connecting.
    pub redis_timeout: Duration,
    /// The certificate API, asked when Redis has no record (or is down).
    pub api: Option<ApiConfig>,
    /// TTL of records written back to Redis after an API hit; zero: no
    /// write-back.
    pub writeback: Duration,
    /// Most API requests per second (and at once after a quiet second)
    /// this worker makes (`dyncert_api rate=`); beyond, a lookup that
    /// needs the API fails without asking it. `None`: no cap.
    pub api_rate: Option<u32>,
    /// Pub/sub channel carrying names to drop from every worker's cache.
    pub invalidate_channel: Option<String>,
    /// Sorted set of names by notAfter (unix seconds) that write-backs
    /// keep current, for the `dyncert` CLI's `list`; `None`: not kept.
    pub expiry_index: Option<String>,
    /// Key prefix of ACME HTTP-01 key authorizations.
    pub acme_prefix: String,
    /// Most requests queued towards the thread (beyond: refused at once).
    pub queue_cap: usize,
    /// Most ACME reads queued, in a queue of their own so that challenge
    /// requests (anyone on port 80) never take a certificate fetch's place.
    pub acme_queue_cap: usize,
    /// A host-wide tier is configured: found records also come back in
    /// compact form, for the worker to store there.
    pub compact: bool,
    /// Which key references records may use (`dyncert_key_references`).
    pub key_refs: KeyRefConfig,
    /// Key-encryption keys and whether plain keys are still served
    /// (`dyncert_key_decryption_key`, `dyncert_key_encryption`).
    pub key_wrap: Arc<KeyWrapConfig>,
    /// Where unknown names are queued for on-demand issuance; `None`: no
    /// server has `dyncert_on_demand on`.
    pub on_demand: Option<crate::on_demand::Stream>,
    /// Shared session ticket keys (`dyncert_session_tickets`); `None`: off.
    pub tickets: Option<TicketConfig>,
}

impl FetcherConfig {
    /// About the longest a lookup takes when every step it makes runs out
    /// of its own bound: Redis's reads of the name and of its wildcard,
    /// each tried twice (once more on a fresh connection after a
    /// connection error), the API request, and two record parses, each of
    /// which may wait for a PKCS#11 key load. Enforced from when the
    /// lookup is queued, every wait included (the parse queue's too): a
    /// lookup still running then answers [`FetchError::LookupTimedOut`],
    /// and so does a tier load that waited that long to be parsed. The
    /// in-flight deadline is set past it ([`crate::flight::deadline`]), so
    /// that only a lookup whose answer was lost is started again.
    pub fn lookup_bound(&self) -> Duration {
        lookup_bound(self.redis_timeout, self.api.as_ref().map(|a| a.timeout))
    }

    /// The worker's in-flight deadline ([`crate::flight::deadline`]) for
    /// connections parked at most `fetch_timeout`: past the longer of
    /// that and [`Self::lookup_bound`], by one `redis_timeout`.
    pub fn flight_deadline(&self, fetch_timeout: Duration) -> Millis {
        let ms = |d: Duration| Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX);
        crate::flight::deadline(
            ms(fetch_timeout),
            ms(self.lookup_bound()),
            ms(self.redis_timeout),
        )
    }
}

/// See [`FetcherConfig::lookup_bound`].
fn lookup_bound(redis_timeout: Duration, api_timeout: Option<Duration>) -> Duration {
    redis_timeout
        .saturating_mul(4)
        .saturating_add(api_timeout.unwrap_or(Duration::ZERO))
        .saturating_add(crate::keyref::LOAD_TIMEOUT.saturating_mul(2))
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
        tier: TierData,
    },
    /// No record for the name.
    NotFound,
    /// A record exists but must not be served.
    Refused(Refusal),
    /// No source could answer (down, timeout, protocol error, bad API
    /// answer).
    Error(FetchError),
}

/// What a found record means for the host-wide tier.
#[derive(Debug)]
pub enum TierData {
    /// No tier, or nothing to store.
    None,
    /// Fetched from a source: store it (compact form, intermediates).
    Store(Box<Stored>),
    /// Loaded from the tier: cache it with the tier's deadlines.
    Loaded(Deadlines),
}

/// A fetched record in the form the tier keeps.
#[derive(Debug)]
pub struct Stored {
    pub compact: Compact,
    pub intermediates: IntermediateDers,
}

/// Work for the fetcher thread's certificate queue (ACME reads have a
/// queue of their own, see [`Fetcher::request_acme`]).
#[derive(Debug)]
enum Request {
    /// A lookup of a name, for the worker's attempt `attempt`, queued at
    /// `queued`: it answers by `queued` + the lookup bound.
    Cert {
        name: String,
        attempt: Attempt,
        queued: Instant,
    },
}

/// Longest ACME key authorization served (token + '.' + thumbprint is
/// under 100 bytes).
pub const MAX_ACME_VALUE: usize = 512;

/// The answer to an ACME challenge read.
#[derive(Debug)]
pub enum AcmeAnswer {
    Value(Vec<u8>),
    Absent,
    Error(AcmeError),
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
    /// lost, so the worker re-checks what it cached before.
    Subscribed {
        resubscribed: bool,
    },
    /// Something the operator should see (subscription trouble).
    Warn(String),
    /// A Redis connection failed, or a replica answered a read: counted,
    /// and logged with the node's address.
    Redis(RedisNote),
    /// An ACME challenge read finished.
    Acme {
        token: String,
        answer: AcmeAnswer,
    },
    /// A name queued for on-demand issuance was added to the stream, or
    /// could not be.
    OnDemand {
        name: String,
        result: Result<(), RedisError>,
    },
    /// The session ticket keys changed, or could not be read.
    Tickets(TicketNote),
}

#[derive(Debug)]
pub struct FetchResult {
    pub name: String,
    /// The worker's attempt this answers ([`crate::flight::Inflight::attempt`]):
    /// an answer of an attempt started again since is dropped.
    pub attempt: Attempt,
    pub outcome: Outcome,
    pub elapsed: Duration,
    /// Each source asked, in order, for the metrics.
    pub steps: Vec<Step>,
    /// A load of the host-wide tier's record, not a fetch from a source.
    pub loaded: bool,
}

/// One source asked during a lookup.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub source: FetchSource,
    pub outcome: StepOutcome,
    pub elapsed: Duration,
}

/// What the thread shares with the event loop: finished work and the
/// socket end that wakes it.
struct Shared {
    results: Mutex<VecDeque<Event>>,
    notify: UnixStream,
    /// Set when the invalidation subscription is back after a loss: the
    /// next lookup takes a new command connection (see `Sources::redis`).
    renew_redis: Arc<AtomicBool>,
    /// What the subscription heard, for write-backs: see [`heard`].
    heard: Arc<Mutex<heard::Heard>>,
}

impl Shared {
    /// The invalidation subscription is down (until the next
    /// `Event::Subscribed`).
    fn subscription_lost(&self) {
        if let Ok(mut h) = self.heard.lock() {
            h.lost();
        }
    }

    fn push(&self, r: Event) {
        if let Event::Subscribed { resubscribed: true } = r {
            self.renew_redis.store(true, Ordering::Relaxed);
        }
        if let Ok(mut h) = self.heard.lock() {
            match &r {
                Event::Invalidate(target) => h.invalidated(target),
                Event::Subscribed { resubscribed } => h.subscribed(*resubscribed),
                _ => {}
            }
        }
        if let Ok(mut q) = self.results.lock() {
            q.push_back(r);
        }
        // One byte wakes the event loop; a full socket buffer means a wake-up
        // is already pending, so WouldBlock is fine to ignore.
        let _ = (&self.notify).write(&[1]);
    }
}

/// Starts the worker's PKCS#11 key loader thread (loads of records' key
/// references run there, bounded, off the parse thread). Call from the
/// worker process with signals blocked, as for [`Fetcher::start`], when
/// `dyncert_key_references engine` is configured; once it runs, calling
/// again starts nothing.
pub fn start_key_loader() -> io::Result<()> {
    crate::ossl_engine::start_loader()
}

/// Handle owned by the event loop.
pub struct Fetcher {
    tx: Option<mpsc::Sender<Request>>,
    /// ACME tokens to read.
    acme_tx: Option<mpsc::Sender<String>>,
    /// Names to add to the on-demand stream.
    on_demand_tx: Option<mpsc::Sender<String>>,
    shared: Arc<Shared>,
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
    parse: Arc<WorkQueue<ParseJob>>,
    parse_thread: Option<JoinHandle<()>>,
    /// Parsed intermediates, shared by fetches and tier loads.
    interner: Arc<Interner>,
    /// [`FetcherConfig::lookup_bound`]: tier loads that waited longer in
    /// the parse queue answer without parsing.
    lookup_bound: Duration,
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
        let lookup_bound = cfg.lookup_bound();
        let (wake, notify) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        notify.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            results: Mutex::new(VecDeque::new()),
            notify,
            renew_redis: Arc::new(AtomicBool::new(false)),
            heard: Arc::new(Mutex::new(heard::Heard::default())),
        });
        let (tx, rx) = mpsc::channel(cfg.queue_cap.max(1));
        let (acme_tx, acme_rx) = mpsc::channel(cfg.acme_queue_cap.max(1));
        // At most one enqueue per finished lookup: the lookups' bound.
        let (on_demand_tx, on_demand_rx) = mpsc::channel(cfg.queue_cap.max(1));
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
        let interner = Arc::new(Interner::default());
        let thread_interner = interner.clone();
        let thread = std::thread::Builder::new()
            .name("dyncert-fetch".into())
            .spawn(move || {
                run(
                    cfg,
                    api,
                    Inboxes {
                        certs: rx,
                        acme: acme_rx,
                        on_demand: on_demand_rx,
                    },
                    thread_shared,
                    thread_parse,
                    thread_interner,
                )
            });
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
            on_demand_tx: Some(on_demand_tx),
            shared,
            wake,
            thread: Some(thread),
            parse,
            parse_thread: Some(parse_thread),
            interner,
            lookup_bound,
        })
    }

    /// The parsed intermediates every record of this worker shares.
    pub fn interner(&self) -> &Arc<Interner> {
        &self.interner
    }

    /// Parses a record the host-wide tier holds, on the parse thread; the
    /// result comes back like a fetch's (`Event::Fetched`, with
    /// [`TierData::Loaded`]). `false` when the parse queue is full.
    pub fn load(&self, name: &str, hit: TierHit, attempt: Attempt) -> bool {
        let shared = self.shared.clone();
        let interner = self.interner.clone();
        let name = name.to_owned();
        let queued = Instant::now();
        let bound = self.lookup_bound;
        let job: ParseJob = Box::new(move || {
            let start = Instant::now();
            // Waited in the parse queue (newest first under load) past
            // what a lookup may take: answered without parsing, as a
            // lookup past its bound is.
            let outcome = if queued.elapsed() >= bound {
                Outcome::Error(FetchError::LookupTimedOut(ms(bound)))
            } else {
                answer_load(|| load_stored(&interner, &hit, now_ms()))
            };
            shared.push(Event::Fetched(FetchResult {
                name,
                attempt,
                outcome,
                elapsed: start.elapsed(),
                steps: Vec::new(),
                loaded: true,
            }));
        });
        self.parse.push(job).is_ok()
    }

    /// The descriptor the event loop watches for readability.
    pub fn wake_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.wake.as_raw_fd()
    }

    /// Queues a lookup without blocking. `false` when the queue is full or
    /// the thread is gone: the caller serves the default instead of waiting.
    /// `attempt` comes back with the answer.
    pub fn request(&self, name: &str, attempt: Attempt) -> bool {
        let req = Request::Cert {
            name: name.to_owned(),
            attempt,
            queued: Instant::now(),
        };
        match &self.tx {
            Some(tx) => tx.try_send(req).is_ok(),
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

    /// Queues `name` (already decided by [`crate::on_demand`]) for the
    /// on-demand stream without blocking. `false` when it cannot be queued
    /// (full, or the thread is gone). A queue of its own: enqueues never
    /// take a lookup's place.
    pub fn request_on_demand(&self, name: &str) -> bool {
        match &self.on_demand_tx {
            Some(tx) => tx.try_send(name.to_owned()).is_ok(),
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
        self.on_demand_tx = None;
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

/// A record of the host-wide tier, parsed: found with the tier's
/// deadlines, or refused (expired since it was stored, or damaged).
pub fn load_stored(interner: &Interner, hit: &TierHit, now_ms: Millis) -> Outcome {
    let (compact, deadlines) = match Compact::decode(&hit.bytes) {
        Ok(v) => v,
        Err(_) => return Outcome::Refused(Invalid::CrtNotPem.into()),
    };
    match compact.load(interner, &hit.intermediates, now_ms) {
        Ok(cert) => Outcome::Found {
            cert: Arc::new(cert),
            source: CertSource::Shared,
            wildcard: None,
            tier: TierData::Loaded(deadlines),
        },
        Err(i) => Outcome::Refused(i.into()),
    }
}

/// Runs a tier load on the parse thread. A load has no answer channel
/// that a panic would drop (a fetch's parse has), so a panic must still
/// answer, or the name would stay in flight for the worker's lifetime.
fn answer_load(load: impl FnOnce() -> Outcome) -> Outcome {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(load))
        .unwrap_or(Outcome::Error(FetchError::ParseFailed))
}

/// Runs a lookup on the fetcher's runtime. A panic in it would end its
/// task without a report, and the worker would keep the name in flight
/// (every connection for it parked in vain until the in-flight deadline):
/// it answers as failed instead, which the worker logs at `alert` and
/// counts. The steps taken before the panic are kept by the caller.
async fn answer_lookup(lookup: impl std::future::Future<Output = Outcome>) -> Outcome {
    answer_or(lookup, Outcome::Error(FetchError::LookupPanicked)).await
}

/// `lookup`'s answer, or a timeout `bound` after it was `queued`: the bound the in-flight deadline is set past holds for every
/// wait of a lookup, the parse queue's included (newest first under
/// load: an old job may wait there without end), so that a slow but live
/// lookup answers before it would be started again. Its steps so far
/// stay with the caller; a record still queued for parsing is then not
/// parsed (its answer channel is closed: `sources::answer_if_awaited`).
/// A bound past what the clock can hold (timeouts of centuries) is none.
async fn within(
    queued: Instant,
    bound: Duration,
    lookup: impl std::future::Future<Output = Outcome>,
) -> Outcome {
    let Some(deadline) = queued.checked_add(bound) else {
        return lookup.await;
    };
    tokio::time::timeout_at(deadline.into(), lookup)
        .await
        .unwrap_or(Outcome::Error(FetchError::LookupTimedOut(ms(bound))))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `work`'s output, or `on_panic` if it panics: for the fetcher's tasks
/// whose answer the event loop waits for (lookups, ACME reads), so that a
/// bug ends in an answer rather than in a task that dies silently.
pub(super) async fn answer_or<T>(work: impl std::future::Future<Output = T>, on_panic: T) -> T {
    use futures_util::FutureExt;
    std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or(on_panic)
}

fn now_ms() -> Millis {
    crate::clock::Clock::now(&crate::clock::SystemClock)
}

/// The fetcher thread's queues, each bounded on its own.
struct Inboxes {
    certs: mpsc::Receiver<Request>,
    acme: mpsc::Receiver<String>,
    on_demand: mpsc::Receiver<String>,
}

fn run(
    cfg: FetcherConfig,
    api: Option<ApiClient>,
    inboxes: Inboxes,
    shared: Arc<Shared>,
    parse: Arc<WorkQueue<ParseJob>>,
    interner: Arc<Interner>,
) {
    let Inboxes {
        certs: mut rx,
        acme: acme_rx,
        on_demand: on_demand_rx,
    } = inboxes;
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
            drop(on_demand_rx);
            let error = FetchError::Runtime(e.to_string());
            while let Some(Request::Cert { name, attempt, .. }) = rx.blocking_recv() {
                shared.push(Event::Fetched(FetchResult {
                    name,
                    attempt,
                    outcome: Outcome::Error(error.clone()),
                    elapsed: Duration::ZERO,
                    steps: Vec::new(),
                    loaded: false,
                }));
            }
            return;
        }
    };
    rt.block_on(async move {
        let note_shared = shared.clone();
        let notes = Notes::new(move |n| note_shared.push(Event::Redis(n)));
        let target = cfg.redis_url.as_deref().map(|url| {
            RedisTarget::new(url, cfg.redis_tls.clone(), cfg.redis_timeout)
                .map_err(RedisError::Client)
        });
        let redis = target.as_ref().map(|t| {
            t.as_ref()
                .map_err(Clone::clone)
                .and_then(|t| redis::connect(t, notes.clone()))
        });
        // Rotations announced on the invalidation subscription wake the
        // ticket key task at once (it also checks every second).
        let rotated = Arc::new(tokio::sync::Notify::new());
        if let (Some(Ok(target)), Some(channel)) = (&target, &cfg.invalidate_channel) {
            let wakeup = cfg.tickets.as_ref().map(|t| invalidate::Wakeup {
                channel: format!("{}{}", t.key, crate::tickets::ROTATED_SUFFIX),
                notify: rotated.clone(),
            });
            tokio::spawn(invalidate::subscribe(
                target.clone(),
                channel.clone(),
                notes.clone(),
                shared.clone(),
                wakeup,
            ));
        }
        let reader = acme::AcmeReader::new(&redis, &cfg.acme_prefix, cfg.redis_timeout);
        tokio::spawn(acme::answer(acme_rx, reader, shared.clone()));
        match cfg.on_demand.clone() {
            Some(stream) => {
                tokio::spawn(enqueue::run(
                    on_demand_rx,
                    redis.clone(),
                    stream,
                    cfg.redis_timeout,
                    shared.clone(),
                ));
            }
            None => drop(on_demand_rx),
        }
        let target = match target {
            Some(Ok(t)) => Some((t, notes.clone())),
            _ => None,
        };
        let started = matches!(redis, Some(Ok(_)));
        let redis = Arc::new(sources::CommandConn::new(
            redis,
            target,
            shared.renew_redis.clone(),
        ));
        if let (true, Some(tickets)) = (started, cfg.tickets.clone()) {
            tokio::spawn(tickets::maintain(
                redis.clone(),
                tickets,
                cfg.redis_timeout,
                rotated.clone(),
                shared.clone(),
            ));
        }
        let bound = cfg.lookup_bound();
        let sources = Arc::new(Sources::new(
            cfg,
            redis,
            sources::Signals {
                heard: shared.heard.clone(),
            },
            api,
            parse,
            interner,
        ));
        while let Some(req) = rx.recv().await {
            let shared = shared.clone();
            let sources = sources.clone();
            let Request::Cert {
                name,
                attempt,
                queued,
            } = req;
            tokio::spawn(async move {
                let start = Instant::now();
                let mut steps = Vec::with_capacity(3);
                // Boxed: the lookup's future holds every step's state
                // (about 11 KB), and a task's future is moved about ten
                // times on its way into and out of the runtime (spawn, the
                // task cell, its output): 108 KB copied per lookup,
                // counted under callgrind, which evicted the event loop's
                // first-level cache at every first touch. Boxed, the task
                // moves a pointer and the lookup is built once, in place.
                let lookup = Box::pin(answer_lookup(sources.lookup(&name, &mut steps)));
                let outcome = within(queued, bound, lookup).await;
                shared.push(Event::Fetched(FetchResult {
                    name,
                    attempt,
                    outcome,
                    elapsed: start.elapsed(),
                    steps,
                    loaded: false,
                }));
            });
        }
    });
    rt.shutdown_timeout(Duration::from_millis(200));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_that_panics_still_answers_with_the_steps_it_took() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        // As the fetcher runs it: a task of its own, reporting afterwards.
        let (name, outcome, steps) = rt.block_on(async {
            tokio::spawn(async move {
                let name = "panics.example".to_owned();
                let mut steps = Vec::new();
                let outcome = answer_lookup(async {
                    steps.push(Step {
                        source: FetchSource::Redis,
                        outcome: StepOutcome::Miss,
                        elapsed: Duration::ZERO,
                    });
                    // A lookup that panics after an await point.
                    tokio::task::yield_now().await;
                    if steps.len() == 1 {
                        panic!("a lookup bug (expected by this test)");
                    }
                    Outcome::NotFound
                })
                .await;
                (name, outcome, steps)
            })
            .await
            .expect("the task reports instead of dying")
        });
        assert_eq!(name, "panics.example");
        assert!(
            matches!(outcome, Outcome::Error(FetchError::LookupPanicked)),
            "{outcome:?}"
        );
        assert_eq!(steps.len(), 1);
        let fine = rt.block_on(answer_lookup(async { Outcome::NotFound }));
        assert!(matches!(fine, Outcome::NotFound));
    }

    #[test]
    fn an_acme_read_that_panics_is_answered_as_an_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let answer = rt.block_on(answer_or(
            async {
                tokio::task::yield_now().await;
                if panics() {
                    panic!("an ACME read bug (expected by this test)");
                }
                AcmeAnswer::Absent
            },
            AcmeAnswer::Error(AcmeError::ReadPanicked),
        ));
        assert!(
            matches!(answer, AcmeAnswer::Error(AcmeError::ReadPanicked)),
            "{answer:?}"
        );
    }

    /// Keeps the compiler from seeing the panic as unconditional.
    fn panics() -> bool {
        std::hint::black_box(true)
    }

    #[test]
    fn a_lookup_is_bounded_by_its_reads_the_api_and_two_parses() {
        let s = Duration::from_secs;
        // The module's defaults: Redis 1 s, API 3 s.
        assert_eq!(lookup_bound(s(1), Some(s(3))), s(11));
        assert_eq!(lookup_bound(s(1), None), s(8));
        assert_eq!(lookup_bound(Duration::MAX, Some(s(3))), Duration::MAX);
    }

    #[test]
    fn a_lookup_past_its_bound_from_when_it_was_queued_answers_timed_out() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let bound = Duration::from_millis(50);
        let mut steps = Vec::new();
        let started = Instant::now();
        // A lookup that took one step, then waits (for the parse queue)
        // longer than its bound.
        let outcome = rt.block_on(within(Instant::now(), bound, async {
            steps.push(Step {
                source: FetchSource::Redis,
                outcome: StepOutcome::Hit,
                elapsed: Duration::ZERO,
            });
            tokio::time::sleep(Duration::from_secs(30)).await;
            Outcome::NotFound
        }));
        assert!(
            matches!(outcome, Outcome::Error(FetchError::LookupTimedOut(50))),
            "{outcome:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(steps.len(), 1, "the steps taken are kept");
        // Queued long ago (it waited in the fetcher's channel): its bound
        // is counted from then, not from when it began.
        let queued = Instant::now() - Duration::from_secs(1);
        let outcome = rt.block_on(within(queued, bound, async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Outcome::NotFound
        }));
        assert!(matches!(
            outcome,
            Outcome::Error(FetchError::LookupTimedOut(_))
        ));
        // Within its bound: its own answer.
        let outcome = rt.block_on(within(Instant::now(), bound, async { Outcome::NotFound }));
        assert!(matches!(outcome, Outcome::NotFound));
        // A bound the clock cannot hold (lookup_bound saturates): none.
        let outcome = rt.block_on(within(Instant::now(), Duration::MAX, async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Outcome::NotFound
        }));
        assert!(matches!(outcome, Outcome::NotFound));
    }

    #[test]
    fn a_tier_load_that_panics_still_answers() {
        let outcome = answer_load(|| panic!("a parse bug (expected by this test)"));
        assert!(
            matches!(outcome, Outcome::Error(FetchError::ParseFailed)),
            "{outcome:?}"
        );
        assert!(matches!(
            answer_load(|| Outcome::NotFound),
            Outcome::NotFound
        ));
    }
}
