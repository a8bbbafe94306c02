//! Per-worker state and the decisions taken on the event loop: what a
//! handshake gets, when a connection is parked, what a finished fetch
//! changes. nginx objects only appear as the opaque waiter `W`, the
//! fetcher as the [`FetchQueue`] `Q`, counters as a [`MetricSink`], and
//! the time as a `now` argument, so every decision is tested here without
//! threads, sockets or sleeping.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;

use crate::cache::{CachePolicy, CertCache, Lookup};
use crate::clock::Millis;
use crate::compact::Deadlines;
use crate::fetch::{
    load_stored, Event, FetchError, FetchResult, Fetcher, Outcome, RedisNote, TicketNote, TierData,
};
use crate::flight::{Attempt, Inflight, Join};
use crate::intern::Interner;
use crate::metrics::{MetricSink, Simple, W_BYTES, W_ENTRIES, W_INFLIGHT};
use crate::name::wildcard_parent;
use crate::on_demand::{
    decide, unissuable, unknown_everywhere, AddressBudget, Client, NotQueued, Verdict,
    ADDRESSES_MAX, PER_ADDRESS, PER_PREFIX,
};
use crate::outcome::{CertSource, FetchSource, StepOutcome};
use crate::ratelimit::{suppressed_note, LogLimiter};
use crate::tier::{SharedTier, TierHit};
use crate::validate::ParsedCert;

/// Where the worker sends the lookups it decides to start: the fetcher
/// thread in nginx, a recorder in tests.
pub trait FetchQueue {
    /// Queues a lookup of `name` without blocking, for the fetch's attempt
    /// `attempt` (its answer carries it back); `false` when it cannot be
    /// queued (full, or the thread is gone).
    fn request(&self, name: &str, attempt: Attempt) -> bool;
    /// Queues the parse of the tier's record for `name` (off the event
    /// loop, answered like a fetch, `attempt` with it); `false` when it
    /// cannot be queued.
    fn load(&self, name: &str, hit: TierHit, attempt: Attempt) -> bool;
    /// Queues `name` for the on-demand stream without blocking; `false`
    /// when it cannot be queued.
    fn on_demand(&self, name: &str) -> bool;
}

impl FetchQueue for Fetcher {
    fn request(&self, name: &str, attempt: Attempt) -> bool {
        Fetcher::request(self, name, attempt)
    }

    fn load(&self, name: &str, hit: TierHit, attempt: Attempt) -> bool {
        Fetcher::load(self, name, hit, attempt)
    }

    fn on_demand(&self, name: &str) -> bool {
        Fetcher::request_on_demand(self, name)
    }
}

/// A cache entry: the parsed certificate plus the source to report for the
/// first handshake that uses it (`redis`, `api`), after which it reports
/// `cache`.
pub struct CachedCert {
    pub cert: Arc<ParsedCert>,
    first_source: Cell<Option<CertSource>>,
    /// When its source answered (for a tier record: when the worker that
    /// fetched it did), to tell a newer tier record from this one.
    fetched: Millis,
}

/// What the pre-handshake step does with a connection whose SNI it read.
#[derive(Debug, PartialEq, Eq)]
pub enum PreHandshake {
    /// Hand the connection to nginx now.
    Proceed,
    /// Keep it until the fetch for its name finishes or times out.
    Park,
}

/// Which cache entry answered a handshake's lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The name's own entry (fresh or stale).
    Exact,
    /// The entry of its `*.parent` wildcard.
    Wildcard,
    /// A negative entry: the sources have no record for the name.
    Negative,
    /// Nothing cached for the name or its wildcard.
    Miss,
    /// The name's last lookup failed moments ago: no certificate of its
    /// own, and no lookup until its backoff ends.
    Backoff,
    /// Parsed just now from the host-wide tier (a handshake without peek).
    Shared,
}

impl Tier {
    pub fn as_str(&self) -> &'static str {
        match self {
            Tier::Exact => "exact",
            Tier::Wildcard => "wildcard",
            Tier::Negative => "negative",
            Tier::Miss => "miss",
            Tier::Backoff => "backoff",
            Tier::Shared => "shared",
        }
    }
}

/// What a handshake gets: the certificate to install (None: the server's
/// default, or a rejection), the source to report, and the cache entry
/// that answered.
pub struct Selection {
    pub cert: Option<Arc<ParsedCert>>,
    pub source: CertSource,
    pub tier: Tier,
}

impl Selection {
    /// A cache entry's certificate: its first use reports where it came
    /// from, later ones `cache`.
    fn of(entry: &CachedCert, tier: Tier) -> Selection {
        Selection {
            cert: Some(entry.cert.clone()),
            source: entry.first_source.take().unwrap_or(CertSource::Cache),
            tier,
        }
    }

    /// The server's default certificate.
    pub fn default_for(tier: Tier) -> Selection {
        Selection {
            cert: None,
            source: CertSource::Default,
            tier,
        }
    }
}

/// Log levels the event loop maps onto nginx's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// A bug in dyncert (a panic caught off the event loop).
    Alert,
    Warn,
    Info,
    /// Only in an nginx built `--with-debug`.
    Debug,
}

/// How long a cached name whose fetch failed waits before a refresh is
/// retried (a name without a certificate backs off instead: see
/// [`CertCache::fetch_failed`]).
const ERROR_RETRY_MS: Millis = 5_000;
/// When a refresh that could not even be queued (cap, full queue) is retried.
const QUEUE_RETRY_MS: Millis = 1_000;
/// Shortest freshness given to a certificate close to its expiry.
const REFRESH_AHEAD_FLOOR_MS: Millis = 60_000;
/// At most one source-trouble line per this interval per worker.
const ERROR_LOG_INTERVAL_MS: Millis = 10_000;
/// Most tier records parsed synchronously in the certificate callback per
/// second (handshakes without a peek step: QUIC); beyond, the record is
/// loaded off the event loop and the handshake gets what a miss gets.
pub const SYNC_LOADS_PER_SEC: u32 = 64;
/// How long a fetch may go without reporting before the next connection
/// for its name starts it again, until [`Worker::with_flight_deadline`]
/// sets the configuration's (see [`crate::flight::deadline`]).
const DEFAULT_FLIGHT_DEADLINE_MS: Millis = 30_000;

/// What the worker knows of the current attempt of a name's fetch
/// ([`Inflight::attempt`]): set when the attempt is queued, read when its
/// answer is applied. An attempt started again, or asked again, starts
/// with none of these: it reads its sources after them.
#[derive(Debug, Default)]
struct Marks {
    /// The tier's invalidation generation when the attempt (a lookup of
    /// the sources) was queued: its record is stored in the tier only if
    /// no invalidation covering the name was applied to the tier since
    /// (by any worker). `None` for tier loads, and without a tier.
    since: Option<u64>,
    /// An invalidation of the name was applied while it ran: it may have
    /// read the record the invalidation replaced, so its answer is not
    /// cached and the sources are asked again.
    invalidated: bool,
    /// It was running at the latest re-subscription after a loss: it may
    /// have read Redis before an update whose message was lost, so its
    /// answer is taken as fetched before the epoch.
    suspect: bool,
}
/// Memory charged per entry beyond its certificates' weight
/// ([`crate::weight`]): the key, the policy, the entry itself. A rough
/// figure: `max_size=` is a bound, not a meter.
const ENTRY_OVERHEAD_BYTES: usize = 2048;

pub struct Worker<W, Q> {
    cache: CertCache<CachedCert>,
    inflight: Inflight<W>,
    queue: Q,
    error_log: LogLimiter,
    sink: Box<dyn MetricSink>,
    /// The host-wide tier, and the interner its records are parsed with.
    tier: Option<(Box<dyn SharedTier>, Arc<Interner>)>,
    /// Synchronous tier loads in the current second: (second, count).
    sync_loads: (Millis, u32),
    /// When the invalidation subscription was last re-established after a
    /// loss (0: never lost). Whatever was fetched before may have missed
    /// an invalidation: see [`Self::on_resubscribed`].
    epoch: Millis,
    /// The marks of each name's current attempt (see [`Marks`]). Only the
    /// current attempt's answer is applied: an attempt started again
    /// after the in-flight deadline answers for nothing (its marks were
    /// replaced by the new attempt's). At most the names in flight.
    running: HashMap<String, Marks>,
    /// Names whose fetch was started again because it had not reported
    /// within the in-flight deadline: logged with the current attempt's
    /// answer. At most the names in flight.
    restarted: HashSet<String>,
    /// The monotonic clock the in-flight deadline is measured on
    /// ([`crate::clock::monotonic_ms`]; tests set their own): a wall
    /// clock stepped forward would make every fetch in flight overdue.
    monotonic: fn() -> Millis,
    /// Answers of attempts started again since: at most one line per
    /// interval.
    superseded_log: LogLimiter,
    /// Names being fetched that a handshake on a server with
    /// `dyncert_on_demand on` found without a certificate (no peek step:
    /// QUIC, or the name's negative entry ended meanwhile): queued as soon
    /// as the fetch says they are unknown everywhere. At most the names in
    /// flight.
    on_demand_wanted: HashSet<String>,
    /// On-demand enqueue failures: at most one line per interval.
    on_demand_log: LogLimiter,
    /// Enqueues charged to each client address this negative-cache period.
    on_demand_budget: AddressBudget,
    /// Names not queued by [`crate::on_demand::decide`]: at most one line
    /// per interval.
    on_demand_refused_log: LogLimiter,
    /// Lookups refused by the API's rate cap: at most one line per
    /// interval, apart from the source errors' so that a flood of them
    /// does not hide a failing Redis or API.
    api_rate_log: LogLimiter,
    /// Lookups that panicked: at most one line per interval.
    panic_log: LogLimiter,
}

/// The deadlines to cache a record with, given when it was fetched: a
/// record fetched before `epoch` (the last re-subscription after a loss)
/// may have missed an invalidation, so it is due for a refresh at `now`,
/// served meanwhile. Deadlines after the epoch are kept as they are, so a
/// record another worker fetched after the heal is not fetched again.
pub fn checked_since(d: Deadlines, epoch: Millis, now: Millis) -> Deadlines {
    if d.fetched < epoch {
        Deadlines {
            fresh_until: d.fresh_until.min(now),
            ..d
        }
    } else {
        d
    }
}

/// Whether an invalidation of `target` (a name, `*.parent`, or `*` for
/// all) covers a lookup of `name`.
fn invalidates(target: &str, name: &str) -> bool {
    target == "*"
        || target == name
        || (target.starts_with("*.") && wildcard_parent(name).as_deref() == Some(target))
}

impl<W, Q: FetchQueue> Worker<W, Q> {
    pub fn new(
        policy: CachePolicy,
        concurrency: usize,
        queue: Q,
        sink: Box<dyn MetricSink>,
    ) -> Self {
        // Each worker's budget periods start at a random point, so nobody
        // outside can time a flood to the moment they start again.
        let offset = RandomState::new().hash_one(std::process::id());
        let on_demand_budget = AddressBudget::new(
            PER_ADDRESS,
            PER_PREFIX,
            ADDRESSES_MAX,
            policy.negative,
            offset % policy.negative.max(1),
        );
        Worker {
            cache: CertCache::new(policy),
            inflight: Inflight::new(concurrency).with_deadline(DEFAULT_FLIGHT_DEADLINE_MS),
            queue,
            error_log: LogLimiter::new(ERROR_LOG_INTERVAL_MS),
            sink,
            tier: None,
            sync_loads: (0, 0),
            epoch: 0,
            running: HashMap::new(),
            restarted: HashSet::new(),
            monotonic: crate::clock::monotonic_ms,
            superseded_log: LogLimiter::new(ERROR_LOG_INTERVAL_MS),
            on_demand_wanted: HashSet::new(),
            on_demand_log: LogLimiter::new(ERROR_LOG_INTERVAL_MS),
            on_demand_budget,
            on_demand_refused_log: LogLimiter::new(ERROR_LOG_INTERVAL_MS),
            api_rate_log: LogLimiter::new(ERROR_LOG_INTERVAL_MS),
            panic_log: LogLimiter::new(ERROR_LOG_INTERVAL_MS),
        }
    }

    /// Fetches that have not reported `deadline` ms after they started
    /// are started again by the next connection for their name (see
    /// [`crate::flight::deadline`]).
    pub fn with_flight_deadline(mut self, deadline: Millis) -> Self {
        self.inflight = Inflight::new(self.inflight.cap()).with_deadline(deadline);
        self
    }

    /// Joins the fetch of `name`, or starts it: again when it is past the
    /// in-flight deadline on the monotonic clock (its answer was lost: a
    /// lookup answers within its bound), counted at once and logged with
    /// the new attempt's answer (the callers have no log). The first
    /// attempt's answer, should it come after all, is dropped.
    fn join(&mut self, name: &str, waiter: Option<W>) -> Join {
        let now = (self.monotonic)();
        if self.inflight.is_overdue(name, now) {
            self.count(Simple::FetchesLost);
            self.restarted.insert(name.to_owned());
        }
        self.inflight.join_at(name, waiter, now)
    }

    /// A fetch [`Self::join`] said to start could not be queued: the name
    /// leaves the table (an earlier attempt's answer then answers for
    /// nothing). Its waiters, if it was started again after the deadline,
    /// are left to their own timers.
    fn not_started(&mut self, name: &str) {
        drop(self.inflight.complete(name));
        self.restarted.remove(name);
        self.running.remove(name);
    }

    /// Puts the host-wide tier between the hot set and the sources; its
    /// records are parsed with `interner` (the fetcher's).
    pub fn with_tier(mut self, tier: Box<dyn SharedTier>, interner: Arc<Interner>) -> Self {
        self.tier = Some((tier, interner));
        self
    }

    /// Asks the tier, then the sources: loads the tier's record of `name`
    /// when it is usable and newer than `have` (the fetch time of the entry
    /// being refreshed), else queues a fetch. `false` when nothing could
    /// be queued.
    /// The attempt is the entry's current one ([`Self::join`] just said
    /// to start it).
    fn fetch_or_load(&mut self, name: &str, now: Millis, have: Option<Millis>) -> bool {
        let Some(attempt) = self.inflight.attempt(name) else {
            return false;
        };
        if let Some(hit) = self.tier_hit(name, now, have) {
            if self.load(name, hit, attempt) {
                return true;
            }
        }
        self.request(name, attempt)
    }

    /// Queues a lookup of the sources for `name` as `attempt`, noting the
    /// tier's invalidation generation first (before any source is read).
    /// The attempt's marks start afresh.
    fn request(&mut self, name: &str, attempt: Attempt) -> bool {
        let since = self.tier.as_ref().map(|(t, _)| t.generation());
        if !self.queue.request(name, attempt) {
            return false;
        }
        let marks = Marks {
            since,
            ..Marks::default()
        };
        self.running.insert(name.to_owned(), marks);
        true
    }

    /// Queues the parse of the tier's record `hit` of `name` as `attempt`.
    fn load(&mut self, name: &str, hit: TierHit, attempt: Attempt) -> bool {
        if !self.queue.load(name, hit, attempt) {
            return false;
        }
        self.running.insert(name.to_owned(), Marks::default());
        self.count(Simple::TierLoads);
        true
    }

    /// The current attempt of `name` is asked again, of the sources (its
    /// answer could not be used); `false` when it cannot be queued.
    fn request_again(&mut self, name: &str) -> bool {
        let now = (self.monotonic)();
        match self.inflight.again(name, Some(now)) {
            Some(attempt) => self.request(name, attempt),
            None => false,
        }
    }

    /// The tier's record of `name` if it can still be served, is newer
    /// than `have` (the entry a refresh replaces), and was fetched since
    /// the latest re-subscription after a loss, this worker's or any
    /// other's: an older one may have missed an invalidation, so the
    /// sources are asked instead (and their answer replaces it).
    fn tier_hit(&self, name: &str, now: Millis, have: Option<Millis>) -> Option<TierHit> {
        let (tier, _) = self.tier.as_ref()?;
        let hit = tier.lookup(name)?;
        let d = hit.deadlines()?;
        let floor = self.epoch.max(tier.fetched_floor());
        let newer = have.is_none_or(|f| d.fetched > f);
        (now < d.stale_until && d.fetched >= floor && newer).then_some(hit)
    }

    fn count(&self, s: Simple) {
        let layout = self.sink.layout();
        self.sink.add(layout.simple(s), 1);
    }

    /// A source said `name` has no record (deleted, perhaps without an
    /// invalidation): the tier's copy goes too, or every worker without
    /// the name would load it again until its stale deadline. Counted as
    /// an invalidation of `name`, so a lookup elsewhere that read the
    /// record before it was deleted does not store it back.
    fn forget_in_tier(&self, name: &str) {
        if let Some((tier, _)) = &self.tier {
            tier.remove(name);
        }
    }

    /// Publishes this worker's gauges (cheap: three stores).
    pub fn publish_gauges(&self) {
        self.sink
            .set_worker(W_INFLIGHT, self.inflight.in_flight() as u64);
        // Certificates and negative entries, as the gauge's help says.
        let entries = self.cache.len() + self.cache.negative_len();
        self.sink.set_worker(W_ENTRIES, entries as u64);
        self.sink.set_worker(W_BYTES, self.cache.bytes() as u64);
    }

    /// The fetch queue, for what the worker does not decide (draining
    /// results, ACME reads, stopping).
    pub fn queue(&self) -> &Q {
        &self.queue
    }

    pub fn queue_mut(&mut self) -> &mut Q {
        &mut self.queue
    }

    /// Called with the SNI read from a peeked ClientHello.
    pub fn pre_handshake(&mut self, name: &str, waiter: W, now: Millis) -> PreHandshake {
        // Only the exact name counts: a cached wildcard must not hide an
        // exact record that has not been fetched yet (exact records win).
        if self.cache.contains_usable(name, now) {
            return self.load_while_backing_off(name, waiter, now);
        }
        let decision = match self.join(name, Some(waiter)) {
            Join::Joined => PreHandshake::Park,
            Join::Refused => {
                self.count(Simple::FetchesRefused);
                PreHandshake::Proceed
            }
            Join::Started => {
                if self.fetch_or_load(name, now, None) {
                    PreHandshake::Park
                } else {
                    // Queue full or thread gone: do not wait for nothing.
                    self.not_started(name);
                    self.count(Simple::FetchesRefused);
                    PreHandshake::Proceed
                }
            }
        };
        if decision == PreHandshake::Park {
            self.count(Simple::Parked);
        }
        self.publish_gauges();
        decision
    }

    /// A name backing off after its own failed lookup is not looked up
    /// again, but a record another worker has since put in the tier costs
    /// no source request: the connection waits for its load.
    fn load_while_backing_off(&mut self, name: &str, waiter: W, now: Millis) -> PreHandshake {
        if !self.cache.backs_off(name, now) {
            return PreHandshake::Proceed;
        }
        let Some(hit) = self.tier_hit(name, now, None) else {
            return PreHandshake::Proceed;
        };
        match self.join(name, Some(waiter)) {
            Join::Joined => {}
            Join::Refused => return PreHandshake::Proceed,
            Join::Started => {
                let loaded = match self.inflight.attempt(name) {
                    Some(attempt) => self.load(name, hit, attempt),
                    None => false,
                };
                if !loaded {
                    self.not_started(name);
                    return PreHandshake::Proceed;
                }
            }
        }
        self.count(Simple::Parked);
        self.publish_gauges();
        PreHandshake::Park
    }

    /// Called from the certificate callback: the certificate to install (if
    /// any) and the source to report. Never waits; a miss schedules a fetch
    /// so a later handshake finds the name cached.
    pub fn for_handshake(&mut self, name: &str, now: Millis) -> Selection {
        self.for_handshake_sync(name, now, false)
    }

    /// [`Self::for_handshake`] for a handshake that had no peek step (QUIC):
    /// with `sync`, a name this worker has not cached but the tier holds
    /// is parsed here and now (bounded by [`SYNC_LOADS_PER_SEC`], counted),
    /// so the first handshake gets it.
    pub fn for_handshake_sync(&mut self, name: &str, now: Millis, sync: bool) -> Selection {
        let loadable = !self.cache.contains_usable(name, now) || self.cache.backs_off(name, now);
        if sync && loadable && !self.inflight.is_in_flight(name) {
            if let Some(cert) = self.load_now(name, now) {
                self.publish_gauges();
                return Selection {
                    cert: Some(cert),
                    source: CertSource::Shared,
                    tier: Tier::Shared,
                };
            }
        }
        let r = self.lookup(name, now);
        self.publish_gauges();
        r
    }

    /// Parses the tier's record of `name` on the event loop and caches it,
    /// within the per-second budget.
    fn load_now(&mut self, name: &str, now: Millis) -> Option<Arc<ParsedCert>> {
        let second = now / 1000;
        if self.sync_loads.0 != second {
            self.sync_loads = (second, 0);
        }
        if self.sync_loads.1 >= SYNC_LOADS_PER_SEC {
            return None;
        }
        let hit = self.tier_hit(name, now, None)?;
        let (_, interner) = self.tier.as_ref()?;
        self.sync_loads.1 += 1;
        self.count(Simple::TierSyncLoads);
        match load_stored(interner, &hit, now) {
            Outcome::Found {
                cert,
                tier: TierData::Loaded(d),
                ..
            } => {
                let d = checked_since(d, self.epoch, now);
                self.insert(name.to_owned(), cert.clone(), None, &d);
                Some(cert)
            }
            _ => None,
        }
    }

    /// Caches `cert` under `name` with the deadlines `d`; `first` is the
    /// source the first handshake reports.
    fn insert(
        &mut self,
        name: String,
        cert: Arc<ParsedCert>,
        first: Option<CertSource>,
        d: &Deadlines,
    ) {
        let bytes = crate::weight::charged(
            cert.weight.saturating_add(ENTRY_OVERHEAD_BYTES),
            self.cache.policy().max_bytes,
        );
        let expires = cert.not_after_ms;
        let entry = CachedCert {
            cert,
            first_source: Cell::new(first),
            fetched: d.fetched,
        };
        self.cache
            .insert_until(name, entry, expires, d.fresh_until, d.stale_until, bytes);
    }

    /// Exact name first, then its `*.parent` entry; schedules the fetches a
    /// handshake implies (miss, stale entry, exact name behind a wildcard),
    /// none while the name backs off after a failed lookup.
    fn lookup(&mut self, name: &str, now: Millis) -> Selection {
        let mut refresh = false;
        let mut miss = Tier::Miss;
        let found = match self.cache.get(name, now) {
            Lookup::Fresh(v) => Some(Selection::of(v, Tier::Exact)),
            Lookup::Stale { value, refresh_due } => {
                refresh = refresh_due;
                Some(Selection::of(value, Tier::Exact))
            }
            Lookup::Negative => {
                self.count(Simple::NegativeHits);
                return Selection::default_for(Tier::Negative);
            }
            // What a failed lookup left it: its wildcard or the default.
            Lookup::Backoff => {
                self.count(Simple::FetchBackoff);
                miss = Tier::Backoff;
                None
            }
            Lookup::Miss => {
                refresh = true;
                None
            }
        };
        if refresh {
            self.start_fetch(name, now);
        }
        if let Some(found) = found {
            return found;
        }
        let Some(wildcard) = wildcard_parent(name) else {
            return Selection::default_for(miss);
        };
        match self.cache.get(&wildcard, now) {
            Lookup::Fresh(v) | Lookup::Stale { value: v, .. } => Selection::of(v, Tier::Wildcard),
            Lookup::Negative | Lookup::Backoff | Lookup::Miss => Selection::default_for(miss),
        }
    }

    /// The name's own current record: its exact cache entry (fresh or
    /// stale), never its wildcard parent's. For the tenant policy, which
    /// holds connections to it; a stale entry's refresh is started here
    /// like on a handshake.
    pub fn current(&mut self, name: &str, now: Millis) -> Option<Arc<ParsedCert>> {
        let (cert, refresh) = match self.cache.get(name, now) {
            Lookup::Fresh(v) => (v.cert.clone(), false),
            Lookup::Stale { value, refresh_due } => (value.cert.clone(), refresh_due),
            Lookup::Negative | Lookup::Backoff | Lookup::Miss => return None,
        };
        if refresh {
            self.start_fetch(name, now);
        }
        Some(cert)
    }

    /// Whether a name has a certificate to serve right now (for
    /// `dyncert_unknown reject`, decided before the certificate callback).
    /// Does not consume the first-use marker: the callback that follows
    /// reports the source.
    pub fn has_certificate(&mut self, name: &str, now: Millis) -> bool {
        match self.cache.get(name, now) {
            Lookup::Fresh(_) => return true,
            Lookup::Stale { refresh_due, .. } => {
                if refresh_due {
                    self.start_fetch(name, now);
                }
                return true;
            }
            Lookup::Negative => return false,
            Lookup::Backoff => {
                let wildcard =
                    wildcard_parent(name).is_some_and(|w| self.cache.has_certificate(&w, now));
                if !wildcard {
                    // Rejected here; with a wildcard, the certificate
                    // callback that follows counts it.
                    self.count(Simple::FetchBackoff);
                }
                return wildcard;
            }
            Lookup::Miss => self.start_fetch(name, now),
        }
        wildcard_parent(name).is_some_and(|w| self.cache.contains_usable(&w, now))
    }

    /// Called after a handshake from `client` on a server with
    /// `dyncert_on_demand on` got no certificate for `name` (the default
    /// one, or the rejection): queues the name for on-demand issuance when
    /// [`decide`] says so, at most once per negative entry and within the
    /// client address's budget; a name still being fetched is queued when
    /// its lookup ends, if it is unknown everywhere. A refusal is counted,
    /// and logged at `info` at most once per interval.
    pub fn on_demand(
        &mut self,
        name: &str,
        client: Client,
        now: Millis,
        log: &mut dyn FnMut(Level, String),
    ) {
        let allowance = self.cache.may_take_on_demand(name, now);
        let pending = self.inflight.is_in_flight(name) && !self.on_demand_wanted.contains(name);
        let verdict = decide(
            name,
            client,
            &mut self.on_demand_budget,
            now,
            allowance,
            pending,
        );
        match verdict {
            Verdict::Enqueue => {
                self.cache.take_on_demand(name, now);
                self.enqueue(name, now, log);
            }
            Verdict::WhenFetched => {
                self.on_demand_wanted.insert(name.to_owned());
            }
            Verdict::Refused(r) => {
                if r == NotQueued::Name {
                    self.cache.take_on_demand(name, now);
                }
                self.on_demand_refused(name, client, r, now, log);
            }
            Verdict::Nothing => {}
        }
    }

    fn on_demand_refused(
        &mut self,
        name: &str,
        client: Client,
        r: NotQueued,
        now: Millis,
        log: &mut dyn FnMut(Level, String),
    ) {
        let layout = self.sink.layout();
        self.sink.add(layout.on_demand_refused(r), 1);
        let Some(suppressed) = self.on_demand_refused_log.allow(now) else {
            return;
        };
        let why = match (r, client) {
            (NotQueued::Name, _) => format!(
                "it is {}, for which no CA issues",
                unissuable(name).map_or("unissuable", |u| u.as_str())
            ),
            (NotQueued::PerAddress, Client::Address(ip)) => format!(
                "client {ip} already caused {PER_ADDRESS} enqueues in this negative-cache period"
            ),
            (NotQueued::PerAddress, _) => format!(
                "clients without an IP address already caused {PER_ADDRESS} enqueues in this \
                 negative-cache period"
            ),
            (NotQueued::PerPrefix, Client::Address(ip)) => format!(
                "the network of client {ip} (its /24 or /48) already caused {PER_PREFIX} \
                 enqueues in this negative-cache period"
            ),
            (NotQueued::PerPrefix, _) => "the network's budget is used up".to_owned(),
            (NotQueued::Quic, _) => format!(
                "QUIC handshakes, whose addresses are not validated yet, already caused \
                 {PER_ADDRESS} enqueues in this negative-cache period"
            ),
        };
        let more = suppressed_note(suppressed, "lines");
        log(
            Level::Info,
            format!("dyncert: not queued for on-demand issuance: {why}, name: \"{name}\"{more}"),
        );
    }

    fn enqueue(&mut self, name: &str, now: Millis, log: &mut dyn FnMut(Level, String)) {
        if self.queue.on_demand(name) {
            return; // counted when the fetcher reports
        }
        self.on_demand_failed(name, "the on-demand queue is full", now, log);
    }

    fn on_demand_failed(
        &mut self,
        name: &str,
        why: &str,
        now: Millis,
        log: &mut dyn FnMut(Level, String),
    ) {
        self.count(Simple::OnDemandErrors);
        if let Some(suppressed) = self.on_demand_log.allow(now) {
            let more = suppressed_note(suppressed, "errors");
            log(
                Level::Warn,
                format!(
                    "dyncert: {why} while queuing for on-demand issuance, name: \"{name}\"{more}"
                ),
            );
        }
    }

    fn start_fetch(&mut self, name: &str, now: Millis) {
        let have = self.cache.peek(name).map(|e| e.fetched);
        let queued = match self.join(name, None) {
            Join::Started => {
                let ok = self.fetch_or_load(name, now, have);
                if !ok {
                    self.not_started(name);
                }
                ok
            }
            Join::Joined => true,
            Join::Refused => false,
        };
        if !queued {
            self.count(Simple::FetchesRefused);
        }
        if !queued {
            // Let a later handshake ask again instead of waiting for expiry.
            self.cache.refresh_failed(name, now, QUEUE_RETRY_MS);
        }
    }

    /// A parked connection's timer fired: forget it (the fetch goes on).
    pub fn abandon(&mut self, name: &str, pred: impl FnMut(&W) -> bool) -> Option<W> {
        self.inflight.remove_waiter(name, pred)
    }

    /// Applies one report of the fetcher thread. Returns the connections to
    /// wake; `log` receives the lines to write (no key material in them).
    pub fn on_event(
        &mut self,
        event: Event,
        now: Millis,
        log: &mut dyn FnMut(Level, String),
    ) -> Vec<W> {
        match event {
            Event::Fetched(r) => {
                let woken = self.on_result(r, now, log);
                self.publish_gauges();
                woken
            }
            Event::Invalidate(target) => {
                self.invalidate(&target);
                self.count(Simple::Invalidations);
                self.publish_gauges();
                log(
                    Level::Info,
                    format!("dyncert: invalidated \"{target}\" as published"),
                );
                Vec::new()
            }
            Event::Subscribed { resubscribed } => {
                if resubscribed {
                    let marked = self.on_resubscribed(now);
                    self.publish_gauges();
                    log(
                        Level::Warn,
                        format!(
                            "dyncert: invalidation channel subscribed again; names published \
                             meanwhile may have been missed: {marked} cached certificates \
                             are refreshed on their next use"
                        ),
                    );
                }
                Vec::new()
            }
            Event::Warn(msg) => {
                log(Level::Warn, msg);
                Vec::new()
            }
            Event::Redis(note) => {
                self.on_redis_note(note, log);
                Vec::new()
            }
            // Answered by the ACME handler, which the glue routes them to.
            Event::Acme { .. } => Vec::new(),
            Event::Tickets(note) => {
                self.on_ticket_note(note, log);
                Vec::new()
            }
            Event::OnDemand { name, result } => {
                match result {
                    Ok(()) => {
                        self.count(Simple::OnDemandEnqueued);
                        log(
                            Level::Debug,
                            format!("dyncert: queued for on-demand issuance, name: \"{name}\""),
                        );
                    }
                    Err(e) => self.on_demand_failed(&name, &e.to_string(), now, log),
                }
                Vec::new()
            }
        }
    }

    /// Counts and logs what the session ticket key task reports; never a
    /// key byte, only generations and counts.
    fn on_ticket_note(&mut self, note: TicketNote, log: &mut dyn FnMut(Level, String)) {
        match note {
            TicketNote::Loaded { generation, keys } => {
                self.count(Simple::TicketKeyLoads);
                log(
                    Level::Info,
                    format!(
                        "dyncert: session ticket keys generation {generation} loaded \
                         ({keys} key(s))"
                    ),
                );
            }
            TicketNote::Rotated { generation } => {
                self.count(Simple::TicketKeyRotations);
                log(
                    Level::Info,
                    format!("dyncert: session ticket keys rotated to generation {generation}"),
                );
            }
            TicketNote::Refused(e) => {
                self.count(Simple::TicketKeyErrors);
                log(
                    Level::Warn,
                    format!(
                        "dyncert: {e} refused while loading the session ticket keys; \
                         the keys loaded before stay in use"
                    ),
                );
            }
            TicketNote::Expired { generation } => {
                self.count(Simple::TicketKeyErrors);
                log(
                    Level::Warn,
                    format!(
                        "dyncert: session ticket keys generation {generation} expired \
                         without a newer one; no session tickets until one is loaded"
                    ),
                );
            }
            TicketNote::Failed(e) => {
                self.count(Simple::TicketKeyErrors);
                log(
                    Level::Warn,
                    format!("dyncert: redis error ({e}) while maintaining the session ticket keys"),
                );
            }
        }
    }

    /// Counts a Redis connection failure, command timeout, reconnect or
    /// replica read, and logs it with the node's address unless the same
    /// node was logged moments ago.
    fn on_redis_note(&mut self, note: RedisNote, log: &mut dyn FnMut(Level, String)) {
        match note {
            RedisNote::ConnectFailed {
                node,
                error,
                logged,
            } => {
                self.count(Simple::RedisConnectErrors);
                if logged {
                    log(
                        Level::Warn,
                        format!("dyncert: {error} while connecting to redis node \"{node}\""),
                    );
                }
            }
            RedisNote::CommandTimedOut {
                node,
                timeout,
                logged,
            } => {
                self.count(Simple::RedisCommandTimeouts);
                if logged {
                    log(
                        Level::Warn,
                        format!(
                            "dyncert: redis command timed out after {} ms on the open \
                             connection to redis node \"{node}\"",
                            timeout.as_millis()
                        ),
                    );
                }
            }
            RedisNote::Reconnected { node, logged } => {
                self.count(Simple::RedisReconnects);
                if logged {
                    log(
                        Level::Warn,
                        format!(
                            "dyncert: replacing the command connection to redis node \"{node}\" \
                             after a command timed out on it (a hung server, or a connection \
                             a middlebox dropped)"
                        ),
                    );
                }
            }
            RedisNote::ScriptReadRefused { error } => log(
                Level::Warn,
                format!(
                    "dyncert: redis refused the one-step record read ({error}); records are \
                     read in two steps for the next 5 minutes, where a value written between \
                     the size check and the read is read whole: allow EVAL_RO (Redis 7 or \
                     later) to the module's user"
                ),
            ),
            RedisNote::ReplicaRead { node, logged } => {
                self.count(Simple::RedisReplicaReads);
                if logged {
                    log(
                        Level::Warn,
                        format!(
                            "dyncert: the redis primary is unreachable, reading from replica \"{node}\""
                        ),
                    );
                }
            }
        }
    }

    /// The invalidation subscription is back after a loss: messages
    /// published meanwhile are lost, so everything cached may be outdated.
    /// Every certificate becomes due for a refresh (still served until it
    /// answers: no handshake waits, and refreshes follow use, within the
    /// fetch cap), negative entries go, results of lookups running now
    /// count as fetched before, and tier records fetched before now are
    /// not taken as refreshes. Returns how many certificates were marked.
    fn on_resubscribed(&mut self, now: Millis) -> usize {
        // Strictly after anything fetched so far, even with a coarse clock.
        self.epoch = now.max(self.epoch).saturating_add(1);
        if let Some((tier, _)) = &self.tier {
            // The tier's records were kept by the invalidations some worker
            // applied: this one missed some, and so perhaps did all.
            tier.note_resubscribed(self.epoch);
        }
        // Only the current attempts: an earlier one answers for nothing.
        for name in self.inflight.names() {
            self.running.entry(name.to_owned()).or_default().suspect = true;
        }
        let marked = self.cache.mark_all_due(now);
        self.count(Simple::Resubscribes);
        let layout = self.sink.layout();
        self.sink
            .add(layout.simple(Simple::ResubscribeMarked), marked as u64);
        marked
    }

    /// Drops a name, a wildcard and every name served from it, or all.
    pub fn invalidate(&mut self, target: &str) {
        // A lookup running now may have read Redis before the update that
        // this message announces; its result must not be cached.
        // (Marks the current attempts: an earlier one answers for nothing.)
        for name in self
            .inflight
            .names()
            .filter(|name| invalidates(target, name))
        {
            self.running.entry(name.to_owned()).or_default().invalidated = true;
        }
        if target == "*" {
            self.cache.clear();
        } else if target.starts_with("*.") {
            self.cache.retain(|name, _| !invalidates(target, name));
        } else {
            self.cache.remove(target);
        }
        // Every worker receives the message and drops its copies; the
        // tier's is dropped by whichever comes first (the others find it
        // gone).
        if let Some((tier, _)) = &self.tier {
            match target {
                "*" => tier.clear(),
                t if t.starts_with("*.") => tier.remove_wildcard(t),
                t => tier.remove(t),
            }
        }
    }

    /// The deadlines of a certificate fetched now: fresh until `valid`
    /// ends, or earlier so it is refreshed before its own expiry (renewals
    /// get picked up), never sooner than a retry interval (a source that
    /// keeps answering with a nearly expired certificate must not cause
    /// back-to-back refreshes); stale-if-error for `stale` after `valid`.
    /// When a result applied `now` counts as fetched, for ordering it
    /// against re-subscriptions (this worker's epoch, and the tier's floor,
    /// the latest of any worker's): the clock, but never before the latest
    /// re-subscription known. So a wall clock stepped back after one does
    /// not make every new result look older than it (each one due for a
    /// refresh at once, and no tier record ever loadable: a refetch of
    /// every name in use until the clock catches up). Results of lookups
    /// that were running at a re-subscription are dated before it
    /// separately (`suspect`).
    fn fetch_stamp(&self, now: Millis) -> Millis {
        let floor = self.tier.as_ref().map_or(0, |(t, _)| t.fetched_floor());
        now.max(self.epoch).max(floor)
    }

    fn deadlines(&self, not_after: Millis, now: Millis) -> Deadlines {
        let policy = *self.cache.policy();
        let floor = now.saturating_add(policy.valid.min(REFRESH_AHEAD_FLOOR_MS));
        let ahead = not_after.saturating_sub(policy.valid).max(floor);
        Deadlines {
            fetched: self.fetch_stamp(now),
            fresh_until: now.saturating_add(policy.valid).min(ahead),
            stale_until: now
                .saturating_add(policy.valid)
                .saturating_add(policy.stale),
        }
    }

    /// Counts what each source asked during a lookup answered.
    fn count_steps(&self, steps: &[crate::fetch::Step]) {
        let layout = self.sink.layout();
        for step in steps {
            self.sink.add(layout.fetch(step.source, step.outcome), 1);
            for (slot, n) in layout.fetch_latency(step.source, step.elapsed.as_micros() as u64) {
                self.sink.add(slot, n);
            }
            if step.source == FetchSource::Redis
                && matches!(step.outcome, StepOutcome::Error | StepOutcome::Timeout)
            {
                self.sink.add(layout.simple(Simple::RedisErrors), 1);
            }
        }
    }

    /// The answer of an attempt that is no longer `name`'s current one (it
    /// was started again after the in-flight deadline, or its entry ended
    /// meanwhile): what it read may be older than what the current attempt
    /// reads, older even than an invalidation the current attempt's marks
    /// no longer hold for it. Dropped: not cached, not stored in the tier,
    /// and no waiter woken. Not counted again: the restart that
    /// superseded it was counted in `dyncert_fetches_lost_total`, and the
    /// line says the fetch was slow, not lost.
    fn superseded(
        &mut self,
        name: &str,
        elapsed: std::time::Duration,
        now: Millis,
        log: &mut dyn FnMut(Level, String),
    ) {
        let Some(suppressed) = self.superseded_log.allow(now) else {
            return;
        };
        let more = suppressed_note(suppressed, "lines");
        log(
            Level::Info,
            format!(
                "dyncert: a fetch of \"{name}\" answered after {} ms, after it had been \
                 started again; its answer is dropped{more}",
                elapsed.as_millis()
            ),
        );
    }

    fn on_result(
        &mut self,
        r: FetchResult,
        now: Millis,
        log: &mut dyn FnMut(Level, String),
    ) -> Vec<W> {
        let FetchResult {
            name,
            attempt,
            outcome,
            steps,
            loaded,
            elapsed,
        } = r;
        // The sources were asked, whichever attempt this is.
        self.count_steps(&steps);
        if !self.inflight.is_current(&name, attempt) {
            self.superseded(&name, elapsed, now, log);
            return Vec::new();
        }
        let marks = self.running.remove(&name).unwrap_or_default();
        let since = marks.since;
        if self.restarted.remove(&name) {
            log(
                Level::Warn,
                format!(
                    "dyncert: the fetch of \"{name}\" had not answered within the in-flight \
                     deadline and was started again"
                ),
            );
        }
        let layout = self.sink.layout();
        if marks.invalidated {
            // An invalidation of the name was applied while this lookup
            // ran: what it read may be the record the invalidation
            // replaced. Nothing is cached; the sources are asked again
            // (not the tier, which another worker may not have cleared
            // yet) and the waiters keep waiting.
            log(
                Level::Info,
                format!(
                    "dyncert: \"{name}\" was invalidated while being fetched; fetching it again"
                ),
            );
            if self.request_again(&name) {
                return Vec::new();
            }
            self.running.remove(&name);
            self.on_demand_wanted.remove(&name);
            return self.inflight.complete(&name);
        }
        let suspect = marks.suspect;
        if loaded && !matches!(outcome, Outcome::Found { .. }) {
            // The tier's record went bad (expired since it was stored, or
            // damaged): drop it and ask the sources, keeping the waiters
            // and a pending on-demand request (the sources' answer
            // decides it). A load cut at its bound in a busy parse queue
            // never read the record: it stays for the other workers.
            if matches!(outcome, Outcome::Error(FetchError::LookupTimedOut(_))) {
                self.count(Simple::TierLoadsTimedOut);
            } else {
                if let Some((tier, _)) = &self.tier {
                    tier.remove(&name);
                }
                self.count(Simple::TierLoadsRefused);
            }
            if self.request_again(&name) {
                return Vec::new();
            }
            self.on_demand_wanted.remove(&name);
            self.cache.refresh_failed(&name, now, QUEUE_RETRY_MS);
            return self.inflight.complete(&name);
        }
        let wanted = self.on_demand_wanted.remove(&name);
        match outcome {
            Outcome::Found {
                cert,
                source,
                wildcard,
                tier,
            } => {
                let mut d = match &tier {
                    TierData::Loaded(d) => *d,
                    _ => self.deadlines(cert.not_after_ms, now),
                };
                if cert.key_reference {
                    // Resolved on the parse thread for this fetch; every
                    // handshake until the next one reuses the key.
                    self.count(Simple::KeyRefsResolved);
                }
                if suspect {
                    d.fetched = d.fetched.min(self.epoch.saturating_sub(1));
                }
                let d = checked_since(d, self.epoch, now);
                if let (TierData::Store(stored), Some((t, _)), Some(since)) =
                    (&tier, &self.tier, since)
                {
                    let bytes = stored.compact.encode(&d);
                    let mut kept = t.store(&name, &bytes, &stored.intermediates, since);
                    if let Some(w) = &wildcard {
                        kept &= t.store(w, &bytes, &stored.intermediates, since);
                    }
                    if !kept {
                        // Another worker applied an invalidation of it
                        // while this lookup ran; this worker's own message
                        // is on its way and drops its copy too.
                        self.count(Simple::TierStoresRefused);
                        log(
                            Level::Info,
                            format!(
                                "dyncert: \"{name}\" was read before an invalidation another \
                                 worker applied; not stored in the shared zone"
                            ),
                        );
                    }
                }
                if let Some(w) = wildcard {
                    self.insert(w, cert.clone(), Some(source), &d);
                }
                self.insert(name.clone(), cert, Some(source), &d);
            }
            Outcome::NotFound if suspect => {
                // Outdated perhaps: drop the old entry, remember nothing.
                self.cache.remove(&name);
                self.forget_in_tier(&name);
            }
            Outcome::NotFound => {
                self.forget_in_tier(&name);
                // Only a lookup every source answered grants the negative
                // entry its one enqueue; a handshake that already asked
                // for it takes it now.
                let unknown = unknown_everywhere(&steps);
                self.cache
                    .insert_negative_for(name.clone(), now, unknown && !wanted);
                if unknown && wanted {
                    self.enqueue(&name, now, log);
                }
            }
            Outcome::Refused(refusal) => {
                self.sink.add(layout.rejected(refusal.label), 1);
                let record = match &refusal.record {
                    Some(key) => format!(", record: \"{key}\""),
                    None => String::new(),
                };
                log(
                    Level::Warn,
                    format!(
                        "dyncert: invalid certificate record ({}) while validating, name: \"{}\"{record}",
                        refusal.reason, name
                    ),
                );
                // A refused update must not take down a working certificate:
                // keep a cached one (stale-if-error) and retry later, unless
                // the update withdraws what the cached one grants.
                if refusal.withdraws() {
                    self.cache.remove(&name);
                    self.forget_in_tier(&name);
                    self.cache.insert_negative(name.clone(), now);
                } else if self.cache.has_certificate(&name, now) {
                    self.cache.refresh_failed(&name, now, ERROR_RETRY_MS);
                } else {
                    self.cache.insert_negative(name.clone(), now);
                }
            }
            Outcome::Error(e) => {
                let panicked = e == FetchError::LookupPanicked;
                let limiter = if matches!(e, FetchError::ApiRateLimited(_)) {
                    self.count(Simple::ApiRateLimited);
                    &mut self.api_rate_log
                } else if panicked {
                    // A bug, logged apart from the sources' trouble so
                    // that neither hides the other.
                    self.count(Simple::FetchesLost);
                    &mut self.panic_log
                } else {
                    &mut self.error_log
                };
                if let Some(suppressed) = limiter.allow(now) {
                    let more = suppressed_note(suppressed, "errors");
                    let level = if panicked { Level::Alert } else { Level::Warn };
                    log(level, format!("dyncert: {e}, name: \"{name}\"{more}"));
                }
                if suspect {
                    // From before the loss: says nothing about the
                    // sources now (the name is asked again on its next
                    // use, below).
                    self.cache.refresh_failed(&name, now, ERROR_RETRY_MS);
                } else {
                    // A cached certificate is kept and refreshed later;
                    // without one, the name backs off, so a failing
                    // source is not asked again at every handshake (nor
                    // by the waiters this wakes).
                    self.cache.fetch_failed(&name, now, ERROR_RETRY_MS);
                }
            }
        }
        if suspect {
            // A refusal or failure from before the loss says nothing about
            // now: ask again on the next use rather than after the retry
            // interval (once: the name is no longer suspect).
            self.cache.mark_due(&name, now);
        }
        self.inflight.complete(&name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use openssl::pkey::{PKey, Private};
    use openssl::x509::X509;

    use crate::fetch::{AcmeAnswer, FetchError, RedisError, Step};
    use crate::metrics::Layout;
    use crate::outcome::Refusal;
    use crate::validate::testpki;
    use crate::validate::TenantPolicy;

    const SECOND: Millis = 1_000;
    const MINUTE: Millis = 60 * SECOND;
    const DAY: Millis = 24 * 60 * MINUTE;
    const NOW: Millis = 1_700_000_000_000;
    const VALID: Millis = 10 * MINUTE;
    /// Far from expiry: refreshed when `valid` ends.
    const NOT_AFTER: Millis = NOW + 30 * DAY;
    const DER_BYTES: usize = 1_000;

    /// Records the lookups the worker starts; refuses them when told to.
    #[derive(Default)]
    struct FakeQueue {
        asked: RefCell<Vec<String>>,
        /// Every lookup and load queued, with its attempt.
        attempts: RefCell<Vec<(String, Attempt)>>,
        /// Tier records handed to the parse thread.
        loads: RefCell<Vec<(String, TierHit)>>,
        /// Names queued for the on-demand stream.
        on_demand: RefCell<Vec<String>>,
        full: std::cell::Cell<bool>,
    }

    impl FetchQueue for FakeQueue {
        fn request(&self, name: &str, attempt: Attempt) -> bool {
            if self.full.get() {
                return false;
            }
            self.asked.borrow_mut().push(name.to_owned());
            self.attempts.borrow_mut().push((name.to_owned(), attempt));
            true
        }

        fn load(&self, name: &str, hit: TierHit, attempt: Attempt) -> bool {
            if self.full.get() {
                return false;
            }
            self.loads.borrow_mut().push((name.to_owned(), hit));
            self.attempts.borrow_mut().push((name.to_owned(), attempt));
            true
        }

        fn on_demand(&self, name: &str) -> bool {
            if self.full.get() {
                return false;
            }
            self.on_demand.borrow_mut().push(name.to_owned());
            true
        }
    }

    /// Counters and gauges, readable while the worker holds the sink.
    #[derive(Default)]
    struct Metrics {
        slots: RefCell<Vec<u64>>,
        gauges: RefCell<[u64; 4]>,
    }

    struct Sink(Rc<Metrics>);

    impl MetricSink for Sink {
        fn add(&self, slot: usize, n: u64) {
            self.0.slots.borrow_mut()[slot] += n;
        }
        fn set_worker(&self, field: usize, value: u64) {
            self.0.gauges.borrow_mut()[field] = value;
        }
        fn layout(&self) -> Layout {
            Layout { servers: 0 }
        }
    }

    impl Metrics {
        fn get(&self, slot: usize) -> u64 {
            self.slots.borrow()[slot]
        }
        fn simple(&self, s: Simple) -> u64 {
            self.get(Layout { servers: 0 }.simple(s))
        }
        fn on_demand_refused(&self, r: NotQueued) -> u64 {
            self.get(Layout { servers: 0 }.on_demand_refused(r))
        }
        fn gauge(&self, field: usize) -> u64 {
            self.gauges.borrow()[field]
        }
    }

    type TestWorker = Worker<u32, FakeQueue>;

    fn policy() -> CachePolicy {
        CachePolicy {
            max_entries: 100,
            max_bytes: 0,
            valid: VALID,
            stale: 60 * MINUTE,
            negative: 30 * SECOND,
            negative_max: 100,
        }
    }

    fn worker_with(concurrency: usize) -> (TestWorker, Rc<Metrics>) {
        let metrics = Rc::new(Metrics::default());
        metrics
            .slots
            .borrow_mut()
            .resize(Layout { servers: 0 }.len(), 0);
        let mut w = Worker::new(
            policy(),
            concurrency,
            FakeQueue::default(),
            Box::new(Sink(metrics.clone())),
        );
        w.monotonic = test_monotonic;
        // Budget periods aligned to multiples of the negative period, so
        // the tests know where they end.
        w.on_demand_budget =
            AddressBudget::new(PER_ADDRESS, PER_PREFIX, ADDRESSES_MAX, policy().negative, 0);
        (w, metrics)
    }

    fn worker() -> (TestWorker, Rc<Metrics>) {
        worker_with(64)
    }

    /// A certificate with the given fingerprint byte and notAfter (the
    /// worker reads nothing else of it; one key pair serves every test).
    fn cert(fp: u8, not_after_ms: Millis) -> Arc<ParsedCert> {
        thread_local! {
            static PAIR: (X509, PKey<Private>) = {
                let key = testpki::key();
                (testpki::leaf(&["a.example.com"], &key, -1, 30), key)
            };
        }
        PAIR.with(|(leaf, key)| {
            Arc::new(ParsedCert {
                leaf: leaf.clone(),
                chain: openssl::stack::Stack::new().unwrap(),
                key: key.clone(),
                not_after_ms,
                weight: DER_BYTES,
                held: Vec::new(),
                policy: TenantPolicy::default(),
                fingerprint: [fp; 32],
                key_reference: false,
                second: None,
            })
        })
    }

    fn fetched(name: &str, outcome: Outcome) -> Event {
        Event::Fetched(FetchResult {
            name: name.to_owned(),
            outcome,
            attempt: 0,
            elapsed: Duration::ZERO,
            steps: Vec::new(),
            loaded: false,
        })
    }

    fn found(name: &str, cert: Arc<ParsedCert>, wildcard: Option<&str>) -> Event {
        fetched(
            name,
            Outcome::Found {
                cert,
                source: CertSource::Redis,
                wildcard: wildcard.map(str::to_owned),
                tier: TierData::None,
            },
        )
    }

    fn refused() -> Outcome {
        Outcome::Refused(Refusal {
            reason: "certificate has expired (notAfter)",
            label: "expired",
            record: None,
        })
    }

    fn failed() -> Outcome {
        Outcome::Error(FetchError::Redis(RedisError::Timeout))
    }

    thread_local! {
        /// The monotonic clock of this test's workers (0 until set).
        static MONOTONIC: std::cell::Cell<Millis> = const { std::cell::Cell::new(0) };
    }

    fn test_monotonic() -> Millis {
        MONOTONIC.with(|m| m.get())
    }

    /// Sets the monotonic clock the in-flight deadline is measured on.
    fn set_monotonic(ms: Millis) {
        MONOTONIC.with(|m| m.set(ms));
    }

    /// `event` as the answer of attempt `attempt` (the test helpers make
    /// answers of attempt 0: the name's current attempt, see [`apply`]).
    fn of_attempt(mut event: Event, attempt: Attempt) -> Event {
        if let Event::Fetched(r) = &mut event {
            r.attempt = attempt;
        }
        event
    }

    /// The attempts queued for `name`, in order.
    fn attempts(w: &TestWorker, name: &str) -> Vec<Attempt> {
        let all = w.queue().attempts.borrow();
        all.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .collect()
    }

    /// Applies `event`; the connections woken and the lines logged. An
    /// answer of attempt 0 answers the name's current attempt; for a name
    /// not in flight, of a fetch started for it without a waiter (as
    /// [`cache`] needs). Answers of other attempts: [`of_attempt`].
    fn apply(w: &mut TestWorker, event: Event, now: Millis) -> (Vec<u32>, Vec<(Level, String)>) {
        let mut event = event;
        if let Event::Fetched(r) = &mut event {
            if r.attempt == 0 {
                if !w.inflight.is_in_flight(&r.name) {
                    w.inflight.join(&r.name, None);
                }
                r.attempt = w.inflight.attempt(&r.name).unwrap_or(0);
            }
        }
        let mut lines = Vec::new();
        let woken = w.on_event(event, now, &mut |l, m| lines.push((l, m)));
        (woken, lines)
    }

    fn asked(w: &TestWorker) -> Vec<String> {
        w.queue().asked.borrow().clone()
    }

    /// Caches `name` (fetched at `now`, from Redis) as a finished fetch
    /// would, and forgets that it was asked for.
    fn cache(w: &mut TestWorker, name: &str, c: Arc<ParsedCert>, now: Millis) {
        apply(w, found(name, c, None), now);
        w.queue().asked.borrow_mut().clear();
    }

    fn fingerprint(r: Selection) -> (Option<u8>, CertSource) {
        (r.cert.map(|c| c.fingerprint[0]), r.source)
    }

    // ---- fetches that never report ----

    const FLIGHT_DEADLINE: Millis = 5 * SECOND;

    #[test]
    fn a_fetch_that_never_reports_is_started_again_after_the_flight_deadline() {
        let (w, m) = worker_with(1);
        let mut w = w.with_flight_deadline(FLIGHT_DEADLINE);
        set_monotonic(1);
        assert_eq!(w.pre_handshake("a.example", 1, NOW), PreHandshake::Park);
        set_monotonic(FLIGHT_DEADLINE);
        assert_eq!(
            w.pre_handshake("a.example", 2, NOW + FLIGHT_DEADLINE - 1),
            PreHandshake::Park
        );
        assert_eq!(asked(&w), ["a.example"]);
        // Their timers fired (the glue hands them to nginx).
        assert_eq!(w.abandon("a.example", |&c| c == 1), Some(1));
        // The lookup's answer was lost: the next connection for the name
        // starts it again, in the same slot (cap 1), instead of parking
        // behind it until the worker exits.
        set_monotonic(FLIGHT_DEADLINE + 1);
        assert_eq!(
            w.pre_handshake("a.example", 3, NOW + FLIGHT_DEADLINE),
            PreHandshake::Park
        );
        assert_eq!(asked(&w), ["a.example", "a.example"]);
        assert_eq!(m.simple(Simple::FetchesLost), 1);
        assert_eq!(m.simple(Simple::FetchesRefused), 0);
        assert_eq!(m.gauge(W_INFLIGHT), 1);
        // The new lookup answers: every waiter still queued is woken, and
        // the restart is logged with the name.
        let (woken, lines) = apply(
            &mut w,
            found("a.example", cert(7, NOT_AFTER), None),
            NOW + FLIGHT_DEADLINE + 10,
        );
        assert_eq!(woken, [2, 3]);
        assert!(
            lines.iter().any(|(l, m)| *l == Level::Warn
                && m.contains("\"a.example\" had not answered within the in-flight deadline")),
            "{lines:?}"
        );
        assert_eq!(m.gauge(W_INFLIGHT), 0);
        // The first lookup answering late after all wakes nobody, logs no
        // restart, and changes nothing: dropped, said at info.
        let first = attempts(&w, "a.example")[0];
        let (woken, lines) = apply(
            &mut w,
            of_attempt(found("a.example", cert(8, NOT_AFTER), None), first),
            NOW + FLIGHT_DEADLINE + 20,
        );
        assert!(woken.is_empty(), "{woken:?}");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0].0, Level::Info);
        assert!(
            lines[0].1.contains(
                "a fetch of \"a.example\" answered after 0 ms, after it had \
                                 been started again; its answer is dropped"
            ),
            "{lines:?}"
        );
        assert_eq!(
            fingerprint(w.for_handshake("a.example", NOW + FLIGHT_DEADLINE + 30)).0,
            Some(7)
        );
        assert_eq!(m.simple(Simple::FetchesLost), 1, "the restart, once");
    }

    #[test]
    fn a_refresh_that_never_reports_is_asked_again_after_the_flight_deadline() {
        let (w, m) = worker();
        let mut w = w.with_flight_deadline(FLIGHT_DEADLINE);
        // A handshake without a peek step (QUIC) starts the lookup.
        set_monotonic(1);
        w.for_handshake("q.example", NOW);
        set_monotonic(FLIGHT_DEADLINE);
        w.for_handshake("q.example", NOW + FLIGHT_DEADLINE - 1);
        assert_eq!(asked(&w), ["q.example"]);
        set_monotonic(FLIGHT_DEADLINE + 1);
        w.for_handshake("q.example", NOW + FLIGHT_DEADLINE);
        assert_eq!(asked(&w), ["q.example", "q.example"]);
        assert_eq!(m.simple(Simple::FetchesLost), 1);
    }

    #[test]
    fn a_restart_that_cannot_be_queued_frees_the_name() {
        let (w, m) = worker_with(1);
        let mut w = w.with_flight_deadline(FLIGHT_DEADLINE);
        set_monotonic(1);
        assert_eq!(w.pre_handshake("a.example", 1, NOW), PreHandshake::Park);
        set_monotonic(FLIGHT_DEADLINE + 1);
        w.queue().full.set(true);
        assert_eq!(
            w.pre_handshake("a.example", 2, NOW + FLIGHT_DEADLINE),
            PreHandshake::Proceed
        );
        assert_eq!(m.simple(Simple::FetchesRefused), 1);
        assert_eq!(m.gauge(W_INFLIGHT), 0);
        // The slot is free for another name; nothing is left to log.
        w.queue().full.set(false);
        assert_eq!(
            w.pre_handshake("b.example", 3, NOW + FLIGHT_DEADLINE),
            PreHandshake::Park
        );
        // The first attempt answers after all: for nothing (its entry
        // is gone), and the restart that was not queued is not logged.
        let first = attempts(&w, "a.example")[0];
        let (woken, lines) = apply(
            &mut w,
            of_attempt(fetched("a.example", Outcome::NotFound), first),
            NOW + FLIGHT_DEADLINE,
        );
        assert!(woken.is_empty());
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].1.contains("its answer is dropped"), "{lines:?}");
        assert!(!w.inflight.is_in_flight("a.example"));
        assert_eq!(w.cache.negative_len(), 0);
    }

    #[test]
    fn the_default_flight_deadline_restarts_a_lost_fetch_within_30_seconds() {
        let (mut w, _) = worker();
        set_monotonic(1);
        assert_eq!(w.pre_handshake("a.example", 1, NOW), PreHandshake::Park);
        set_monotonic(1 + 29 * SECOND);
        assert_eq!(
            w.pre_handshake("a.example", 2, NOW + 29 * SECOND),
            PreHandshake::Park
        );
        assert_eq!(asked(&w), ["a.example"]);
        set_monotonic(1 + 30 * SECOND);
        assert_eq!(
            w.pre_handshake("a.example", 3, NOW + 30 * SECOND),
            PreHandshake::Park
        );
        assert_eq!(asked(&w), ["a.example", "a.example"]);
    }

    #[test]
    fn the_flight_deadline_is_measured_on_the_monotonic_clock() {
        // review4 F8: a wall clock stepped forward by more than the
        // deadline (NTP after a suspend) restarts nothing; the monotonic
        // clock going past it does.
        let (w, m) = worker();
        let mut w = w.with_flight_deadline(FLIGHT_DEADLINE);
        set_monotonic(1_000);
        assert_eq!(w.pre_handshake("a.example", 1, NOW), PreHandshake::Park);
        let stepped = NOW + 10 * DAY;
        assert_eq!(w.pre_handshake("a.example", 2, stepped), PreHandshake::Park);
        w.for_handshake("a.example", stepped);
        assert_eq!(asked(&w), ["a.example"]);
        assert_eq!(m.simple(Simple::FetchesLost), 0);
        // A wall clock stepped back changes nothing either.
        set_monotonic(1_000 + FLIGHT_DEADLINE - 1);
        w.pre_handshake("a.example", 3, NOW - DAY);
        assert_eq!(asked(&w), ["a.example"]);
        set_monotonic(1_000 + FLIGHT_DEADLINE);
        w.pre_handshake("a.example", 4, NOW - DAY);
        assert_eq!(asked(&w), ["a.example", "a.example"]);
        assert_eq!(m.simple(Simple::FetchesLost), 1);
    }

    #[test]
    fn a_lookup_that_panicked_wakes_its_waiters_and_is_logged_at_alert() {
        let (mut w, m) = worker();
        assert_eq!(w.pre_handshake("p.example", 1, NOW), PreHandshake::Park);
        assert_eq!(w.pre_handshake("p.example", 2, NOW), PreHandshake::Park);
        let (woken, lines) = apply(
            &mut w,
            fetched("p.example", Outcome::Error(FetchError::LookupPanicked)),
            NOW,
        );
        assert_eq!(woken, [1, 2]);
        assert_eq!(
            lines,
            [(
                Level::Alert,
                "dyncert: internal error (panic) while fetching, name: \"p.example\"".to_owned()
            )]
        );
        assert_eq!(m.simple(Simple::FetchesLost), 1);
        assert_eq!(m.gauge(W_INFLIGHT), 0);
        // The name backs off like any failed lookup: no fetch per handshake.
        assert_eq!(
            w.pre_handshake("p.example", 3, NOW + 1),
            PreHandshake::Proceed
        );
        assert_eq!(asked(&w), ["p.example"]);
        // A source's error right after is still logged: panics have a
        // line limit of their own.
        w.pre_handshake("r.example", 4, NOW + 2);
        let (_, lines) = apply(&mut w, fetched("r.example", failed()), NOW + 2);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0].0, Level::Warn);
    }

    #[test]
    fn a_lookup_past_its_bound_wakes_its_waiters_and_backs_off_as_a_failure() {
        // review4 F7: a lookup answers within its bound (here: it did
        // not finish, waiting for the parse queue), before the in-flight
        // deadline would start it again; not a lost fetch.
        let (mut w, m) = worker();
        assert_eq!(w.pre_handshake("s.example", 1, NOW), PreHandshake::Park);
        let timed_out = Outcome::Error(FetchError::LookupTimedOut(11_000));
        let (woken, lines) = apply(&mut w, fetched("s.example", timed_out), NOW);
        assert_eq!(woken, [1]);
        assert_eq!(
            lines,
            [(
                Level::Warn,
                "dyncert: the lookup did not finish within 11000 ms (redis, the api and the \
                 record parse queue together), name: \"s.example\""
                    .to_owned()
            )]
        );
        assert_eq!(m.simple(Simple::FetchesLost), 0);
        assert_eq!(
            w.pre_handshake("s.example", 2, NOW + 1),
            PreHandshake::Proceed
        );
        assert_eq!(asked(&w), ["s.example"]);
    }

    // ---- on demand ----

    fn unknown(name: &str, sources: &[(FetchSource, StepOutcome)]) -> Event {
        Event::Fetched(FetchResult {
            name: name.to_owned(),
            attempt: 0,
            outcome: Outcome::NotFound,
            elapsed: Duration::ZERO,
            steps: sources
                .iter()
                .map(|&(source, outcome)| Step {
                    source,
                    outcome,
                    elapsed: Duration::ZERO,
                })
                .collect(),
            loaded: false,
        })
    }

    const REDIS_MISS: [(FetchSource, StepOutcome); 2] = [
        (FetchSource::Redis, StepOutcome::Miss),
        (FetchSource::Redis, StepOutcome::Miss),
    ];

    fn queued(w: &TestWorker) -> Vec<String> {
        w.queue().on_demand.borrow().clone()
    }

    fn on_demand(w: &mut TestWorker, name: &str, now: Millis) -> Vec<(Level, String)> {
        on_demand_from(w, name, "192.0.2.1", now)
    }

    fn on_demand_from(
        w: &mut TestWorker,
        name: &str,
        client: &str,
        now: Millis,
    ) -> Vec<(Level, String)> {
        let mut lines = Vec::new();
        let client = match client {
            "quic" => Client::Quic,
            ip => Client::Address(ip.parse().unwrap()),
        };
        w.on_demand(name, client, now, &mut |l, m| lines.push((l, m)));
        lines
    }

    fn unknown_now(w: &mut TestWorker, name: &str, now: Millis) {
        assert_eq!(w.pre_handshake(name, 1, now), PreHandshake::Park);
        apply(w, unknown(name, &REDIS_MISS), now);
    }

    #[test]
    fn one_address_queues_at_most_its_budget_and_leaves_other_addresses_theirs() {
        let (mut w, m) = worker();
        let flood = "203.0.113.9";
        let mut lines = Vec::new();
        for i in 0..20 {
            let name = format!("f{i}.flood.example");
            unknown_now(&mut w, &name, NOW);
            lines.extend(on_demand_from(&mut w, &name, flood, NOW + 1));
        }
        assert_eq!(queued(&w).len(), PER_ADDRESS as usize);
        assert_eq!(m.on_demand_refused(NotQueued::PerAddress), 16);
        assert_eq!(
            lines,
            [(
                Level::Info,
                "dyncert: not queued for on-demand issuance: client 203.0.113.9 already \
                 caused 4 enqueues in this negative-cache period, name: \"f4.flood.example\""
                    .to_owned()
            )]
        );
        // The real name from the flooding address: refused, and its
        // allowance is kept for another address.
        let real = "shop.example.net";
        unknown_now(&mut w, real, NOW);
        on_demand_from(&mut w, real, flood, NOW + 2);
        on_demand_from(&mut w, real, "198.51.100.7", NOW + 3);
        on_demand_from(&mut w, real, "198.51.100.8", NOW + 4);
        assert_eq!(queued(&w).last().map(String::as_str), Some(real));
        assert_eq!(queued(&w).len(), PER_ADDRESS as usize + 1);
        // A name refused from the flooding address and seen by QUIC first
        // (still being fetched): the refusal does not stop a later
        // handshake from another address.
        let late = "late.example.net";
        assert_eq!(w.for_handshake(late, NOW).tier, Tier::Miss);
        on_demand_from(&mut w, late, flood, NOW + 5);
        on_demand_from(&mut w, late, "198.51.100.9", NOW + 6);
        apply(&mut w, unknown(late, &REDIS_MISS), NOW + 7);
        assert_eq!(queued(&w).last().map(String::as_str), Some(late));
        // The next period: the flooding address has its budget again.
        let next = NOW + 30 * SECOND;
        unknown_now(&mut w, "n.flood.example", next);
        on_demand_from(&mut w, "n.flood.example", flood, next);
        assert_eq!(
            queued(&w).last().map(String::as_str),
            Some("n.flood.example")
        );
    }

    #[test]
    fn a_flood_from_5000_64s_of_one_48_leaves_other_visitors_their_enqueues() {
        let (mut w, m) = worker();
        for i in 0..5000u32 {
            let name = format!("f{i}.flood.example");
            unknown_now(&mut w, &name, NOW);
            on_demand_from(&mut w, &name, &format!("2001:db8:1:{i:x}::1"), NOW + 1);
        }
        for (name, visitor) in [
            ("shop.example.net", "198.51.100.7"),
            ("www.example.org", "2001:db8:2::7"),
        ] {
            unknown_now(&mut w, name, NOW + 2);
            on_demand_from(&mut w, name, visitor, NOW + 2);
            assert_eq!(queued(&w).last().map(String::as_str), Some(name));
        }
        // The /48 queued its network's budget, 16 names.
        assert_eq!(queued(&w).len(), 16 + 2);
        assert_eq!(m.on_demand_refused(NotQueued::PerAddress), 0);
    }

    #[test]
    fn a_handshake_that_would_queue_nothing_is_not_counted_as_refused() {
        let (mut w, m) = worker();
        let flood = "203.0.113.9";
        for i in 0..4 {
            let name = format!("f{i}.flood.example");
            unknown_now(&mut w, &name, NOW);
            on_demand_from(&mut w, &name, flood, NOW + 1);
        }
        assert_eq!(queued(&w).len(), 4);
        // The same names again (a browser retrying): already queued,
        // nothing to refuse.
        for _ in 0..10 {
            on_demand_from(&mut w, "f0.flood.example", flood, NOW + 2);
        }
        assert_eq!(m.on_demand_refused(NotQueued::PerAddress), 0);
        // A name that would be queued is refused, and counted.
        unknown_now(&mut w, "new.example", NOW + 3);
        on_demand_from(&mut w, "new.example", flood, NOW + 3);
        assert_eq!(m.on_demand_refused(NotQueued::PerAddress), 1);
    }

    #[test]
    fn quic_handshakes_share_one_budget_and_names_no_ca_issues_for_are_refused() {
        let (mut w, m) = worker();
        for i in 0..10 {
            let name = format!("q{i}.example");
            assert_eq!(w.for_handshake(&name, NOW).tier, Tier::Miss);
            on_demand_from(&mut w, &name, "quic", NOW);
            apply(&mut w, unknown(&name, &REDIS_MISS), NOW);
        }
        assert_eq!(queued(&w).len(), PER_ADDRESS as usize);
        assert_eq!(m.on_demand_refused(NotQueued::Quic), 6);
        // A name no CA issues for: refused once per negative entry.
        for name in ["localhost", "printer.local"] {
            unknown_now(&mut w, name, NOW);
            for i in 0..3 {
                on_demand(&mut w, name, NOW + i);
            }
        }
        assert_eq!(m.on_demand_refused(NotQueued::Name), 2);
        assert_eq!(queued(&w).len(), PER_ADDRESS as usize);
    }

    #[test]
    fn an_unknown_name_is_queued_once_per_negative_period() {
        let (mut w, _) = worker();
        let name = "nx.example.com";
        assert_eq!(w.pre_handshake(name, 1, NOW), PreHandshake::Park);
        apply(&mut w, unknown(name, &REDIS_MISS), NOW);
        for i in 0..10 {
            assert_eq!(w.for_handshake(name, NOW + i).tier, Tier::Negative);
            on_demand(&mut w, name, NOW + i);
        }
        assert_eq!(queued(&w), [name]);
        // The negative entry ends: fetched again, queued again.
        let later = NOW + 30 * SECOND;
        assert_eq!(w.pre_handshake(name, 2, later), PreHandshake::Park);
        apply(&mut w, unknown(name, &REDIS_MISS), later);
        on_demand(&mut w, name, later);
        assert_eq!(queued(&w), [name, name]);
    }

    #[test]
    fn a_name_a_source_failed_or_refused_for_is_not_queued() {
        use FetchSource::{Api, Redis};
        let bad = [
            vec![(Redis, StepOutcome::Error), (Api, StepOutcome::Miss)],
            vec![(Redis, StepOutcome::Timeout), (Api, StepOutcome::Miss)],
            vec![
                (Redis, StepOutcome::Miss),
                (Redis, StepOutcome::Miss),
                (Api, StepOutcome::Error),
            ],
            vec![],
        ];
        for (i, steps) in bad.iter().enumerate() {
            let (mut w, _) = worker();
            let name = format!("n{i}.example.com");
            w.pre_handshake(&name, 1, NOW);
            apply(&mut w, unknown(&name, steps), NOW);
            on_demand(&mut w, &name, NOW);
            assert!(queued(&w).is_empty(), "{steps:?}");
        }
        // A refused record and a failed lookup are not "unknown" either.
        let (mut w, _) = worker();
        for (name, outcome) in [("r.example.com", refused()), ("f.example.com", failed())] {
            w.pre_handshake(name, 1, NOW);
            apply(&mut w, fetched(name, outcome), NOW);
            on_demand(&mut w, name, NOW);
        }
        assert!(queued(&w).is_empty());
    }

    #[test]
    fn a_name_still_being_fetched_is_queued_when_its_lookup_says_unknown() {
        // No peek step (QUIC): the handshake comes before the answer.
        let (mut w, _) = worker();
        let name = "quic.example.com";
        assert_eq!(w.for_handshake(name, NOW).tier, Tier::Miss);
        on_demand(&mut w, name, NOW);
        assert!(queued(&w).is_empty());
        apply(&mut w, unknown(name, &REDIS_MISS), NOW);
        assert_eq!(queued(&w), [name]);
        // The negative entry's allowance was used by that enqueue.
        on_demand(&mut w, name, NOW + 1);
        assert_eq!(queued(&w), [name]);
    }

    #[test]
    fn a_handshake_that_never_asked_leaves_the_allowance_to_one_that_does() {
        let (mut w, _) = worker();
        let name = "plain.example.com";
        w.pre_handshake(name, 1, NOW);
        apply(&mut w, unknown(name, &REDIS_MISS), NOW);
        // Handshakes on servers without on-demand do not call on_demand.
        w.for_handshake(name, NOW);
        assert!(queued(&w).is_empty());
        on_demand(&mut w, name, NOW + 1);
        assert_eq!(queued(&w), [name]);
    }

    #[test]
    fn invalid_names_and_cached_names_are_never_queued() {
        let (mut w, _) = worker();
        on_demand(&mut w, "192.0.2.1", NOW);
        on_demand(&mut w, "Upper.example.com", NOW);
        cache(&mut w, "a.example.com", cert(1, NOT_AFTER), NOW);
        on_demand(&mut w, "a.example.com", NOW);
        assert!(queued(&w).is_empty());
    }

    #[test]
    fn enqueue_results_are_counted_and_failures_logged_at_most_once_per_interval() {
        let (mut w, m) = worker();
        let (_, lines) = apply(
            &mut w,
            Event::OnDemand {
                name: "a.example.com".into(),
                result: Ok(()),
            },
            NOW,
        );
        assert_eq!(m.simple(Simple::OnDemandEnqueued), 1);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].0, Level::Debug);
        let mut warns = 0;
        for i in 0..5 {
            let (_, lines) = apply(
                &mut w,
                Event::OnDemand {
                    name: "b.example.com".into(),
                    result: Err(RedisError::Timeout),
                },
                NOW + i,
            );
            warns += lines.iter().filter(|(l, _)| *l == Level::Warn).count();
        }
        assert_eq!(m.simple(Simple::OnDemandErrors), 5);
        assert_eq!(warns, 1);
        // A full queue counts as an error too.
        let name = "full.example.com";
        w.pre_handshake(name, 1, NOW);
        apply(&mut w, unknown(name, &REDIS_MISS), NOW);
        w.queue().full.set(true);
        let lines = on_demand(&mut w, name, NOW + ERROR_LOG_INTERVAL_MS);
        assert_eq!(m.simple(Simple::OnDemandErrors), 6);
        assert!(lines[0].1.contains("full"), "{lines:?}");
    }

    // ---- pre-handshake ----

    #[test]
    fn cached_name_proceeds_without_a_fetch() {
        let (mut w, m) = worker();
        cache(&mut w, "a.example.com", cert(1, NOT_AFTER), NOW);
        assert_eq!(
            w.pre_handshake("a.example.com", 1, NOW),
            PreHandshake::Proceed
        );
        // Stale is still usable: the handshake goes on, the callback
        // starts the refresh.
        assert_eq!(
            w.pre_handshake("a.example.com", 2, NOW + VALID + SECOND),
            PreHandshake::Proceed
        );
        assert!(asked(&w).is_empty());
        assert_eq!(m.simple(Simple::Parked), 0);
    }

    #[test]
    fn name_known_to_be_unknown_proceeds_without_a_fetch() {
        let (mut w, m) = worker();
        apply(&mut w, fetched("nx.example.com", Outcome::NotFound), NOW);
        assert_eq!(
            w.pre_handshake("nx.example.com", 1, NOW + SECOND),
            PreHandshake::Proceed
        );
        assert!(asked(&w).is_empty());
        assert_eq!(m.simple(Simple::Parked), 0);
    }

    #[test]
    fn unknown_name_parks_and_starts_one_fetch() {
        let (mut w, m) = worker();
        assert_eq!(w.pre_handshake("a.example.com", 1, NOW), PreHandshake::Park);
        assert_eq!(asked(&w), ["a.example.com"]);
        assert_eq!(m.simple(Simple::Parked), 1);
        assert_eq!(m.gauge(W_INFLIGHT), 1);
    }

    #[test]
    fn connections_for_one_name_share_its_fetch_and_wake_in_order() {
        let (mut w, m) = worker();
        for waiter in 1..=3 {
            assert_eq!(
                w.pre_handshake("a.example.com", waiter, NOW),
                PreHandshake::Park
            );
        }
        assert_eq!(asked(&w), ["a.example.com"], "one fetch for three");
        assert_eq!(m.simple(Simple::Parked), 3);
        let (woken, _) = apply(
            &mut w,
            found("a.example.com", cert(1, NOT_AFTER), None),
            NOW,
        );
        assert_eq!(woken, [1, 2, 3]);
        assert_eq!(m.gauge(W_INFLIGHT), 0);
    }

    /// The running lookup of a.example.com answers with certificate `fp`:
    /// the connections woken.
    fn answer_a(w: &mut TestWorker, fp: u8) -> Vec<u32> {
        apply(w, found("a.example.com", cert(fp, NOT_AFTER), None), NOW).0
    }

    /// What a handshake for a.example.com gets from the cache.
    fn served_a(w: &mut TestWorker) -> Option<u8> {
        fingerprint(w.for_handshake("a.example.com", NOW)).0
    }

    /// Lookup A of a.example.com (waiter 1) runs across an invalidation
    /// and past the in-flight deadline, so the next handshake (waiter 2)
    /// restarts it as B: the worker, its metrics, A's and B's attempts.
    fn restarted_across_an_invalidation() -> (TestWorker, Rc<Metrics>, Attempt, Attempt) {
        let (w, m) = worker();
        let mut w = w.with_flight_deadline(FLIGHT_DEADLINE);
        let n = "a.example.com";
        set_monotonic(1);
        assert_eq!(w.pre_handshake(n, 1, NOW), PreHandshake::Park); // A
        apply(&mut w, Event::Invalidate(n.into()), NOW + 100);
        set_monotonic(1 + FLIGHT_DEADLINE);
        assert_eq!(
            w.pre_handshake(n, 2, NOW + FLIGHT_DEADLINE),
            PreHandshake::Park
        ); // B
        let (a, b) = match attempts(&w, n)[..] {
            [a, b] => (a, b),
            ref other => panic!("{other:?}"),
        };
        assert_ne!(a, b);
        (w, m, a, b)
    }

    #[test]
    fn a_late_first_fetch_after_a_restart_does_not_undo_an_invalidation() {
        // review4 F1: A reads the record an invalidation then replaces and
        // stalls past the in-flight deadline; B, the restart, reads the new
        // one. A's late answer must neither replace B's nor wake anyone.
        let (mut w, m, a, b) = restarted_across_an_invalidation();
        let n = "a.example.com";
        let now = NOW + FLIGHT_DEADLINE + 10;
        // B was queued after the invalidation: its answer is the new record.
        let (woken, _) = apply(
            &mut w,
            of_attempt(found(n, cert(2, NOT_AFTER), None), b),
            now,
        );
        assert_eq!(woken, [1, 2]);
        assert_eq!(fingerprint(w.for_handshake(n, now + 2)).0, Some(2));
        // A answers late with what it read before the invalidation.
        let late = of_attempt(found(n, cert(1, NOT_AFTER), None), a);
        let (woken, lines) = apply(&mut w, late, now + 3);
        assert!(woken.is_empty());
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(fingerprint(w.for_handshake(n, now + 4)).0, Some(2));
        assert_eq!(asked(&w).len(), 2, "nothing asked again");
        assert_eq!(m.simple(Simple::FetchesLost), 1);
    }

    #[test]
    fn a_late_first_fetch_answering_before_its_restart_leaves_the_waiters_waiting() {
        // review4 F1: A answers after the restart but before B: it may
        // have read the record an invalidation replaced, whose mark the
        // restart's attempt does not carry.
        let (mut w, _, a, b) = restarted_across_an_invalidation();
        let n = "a.example.com";
        let now = NOW + FLIGHT_DEADLINE + 10;
        for outcome in [
            Outcome::Found {
                cert: cert(1, NOT_AFTER),
                source: CertSource::Redis,
                wildcard: None,
                tier: TierData::None,
            },
            Outcome::NotFound,
            failed(),
        ] {
            let (woken, _) = apply(&mut w, of_attempt(fetched(n, outcome), a), now);
            assert!(woken.is_empty());
            assert!(w.inflight.is_in_flight(n));
            assert_eq!(fingerprint(w.for_handshake(n, now)).0, None);
            assert_eq!(w.pre_handshake(n, 3, now), PreHandshake::Park, "no backoff");
        }
        assert_eq!(asked(&w).len(), 2);
        // B answers: cached, the waiters woken.
        let (woken, _) = apply(
            &mut w,
            of_attempt(found(n, cert(2, NOT_AFTER), None), b),
            now,
        );
        assert_eq!(woken, [1, 2, 3, 3, 3]);
        assert_eq!(fingerprint(w.for_handshake(n, now)).0, Some(2));
    }

    #[test]
    fn an_attempt_asked_again_after_an_invalidation_is_the_only_current_one() {
        // Without a restart: B ran across an invalidation, C is asked; a
        // second answer of B (none is expected, but a bug) is not C's.
        let (mut w, _) = worker();
        let n = "a.example.com";
        assert_eq!(w.pre_handshake(n, 1, NOW), PreHandshake::Park);
        apply(&mut w, Event::Invalidate(n.into()), NOW);
        let b = attempts(&w, n)[0];
        let (woken, _) = apply(
            &mut w,
            of_attempt(found(n, cert(1, NOT_AFTER), None), b),
            NOW,
        );
        assert!(woken.is_empty());
        let c = attempts(&w, n)[1];
        assert_ne!(b, c);
        let (woken, _) = apply(
            &mut w,
            of_attempt(found(n, cert(1, NOT_AFTER), None), b),
            NOW,
        );
        assert!(woken.is_empty());
        assert_eq!(served_a(&mut w), None);
        let (woken, _) = apply(
            &mut w,
            of_attempt(found(n, cert(2, NOT_AFTER), None), c),
            NOW,
        );
        assert_eq!(woken, [1]);
        assert_eq!(served_a(&mut w), Some(2));
    }

    #[test]
    fn a_lookup_running_across_its_invalidation_is_not_cached_and_asked_again() {
        let (mut w, _) = worker();
        assert_eq!(w.pre_handshake("a.example.com", 1, NOW), PreHandshake::Park);
        assert_eq!(asked(&w), ["a.example.com"]);
        // The message comes while the lookup runs; the lookup then answers
        // with what it read before the update.
        apply(&mut w, Event::Invalidate("a.example.com".into()), NOW);
        let (woken, lines) = apply(
            &mut w,
            found("a.example.com", cert(1, NOT_AFTER), None),
            NOW,
        );
        assert!(woken.is_empty(), "the waiter waits for the new lookup");
        assert_eq!(asked(&w), ["a.example.com", "a.example.com"]);
        assert!(lines
            .iter()
            .any(|(l, m)| *l == Level::Info && m.contains("invalidated while being fetched")));
        assert_eq!(served_a(&mut w), None);
        // The new lookup's answer is cached and wakes the waiter.
        assert_eq!(answer_a(&mut w, 2), [1]);
        assert_eq!(served_a(&mut w), Some(2));
    }

    #[test]
    fn an_invalidation_covers_running_lookups_of_its_name_its_wildcard_or_all() {
        for (target, covered) in [
            ("a.example.com", true),
            ("*.example.com", true),
            ("*", true),
            ("b.example.com", false),
            ("*.other.example", false),
        ] {
            let (mut w, _) = worker();
            assert_eq!(w.pre_handshake("a.example.com", 1, NOW), PreHandshake::Park);
            apply(&mut w, Event::Invalidate(target.into()), NOW);
            let woken = answer_a(&mut w, 1);
            let cached = served_a(&mut w);
            assert_eq!(
                (woken.is_empty(), cached.is_none()),
                (covered, covered),
                "{target}"
            );
        }
        assert!(invalidates("*", "x.example.com"));
        assert!(!invalidates("*.example.com", "example.com"));
        assert!(!invalidates("*.example.com", "a.b.example.com"));
    }

    #[test]
    fn a_lookup_invalidated_while_running_that_cannot_be_asked_again_wakes_its_waiters() {
        let (mut w, _) = worker();
        assert_eq!(w.pre_handshake("a.example.com", 1, NOW), PreHandshake::Park);
        apply(&mut w, Event::Invalidate("a.example.com".into()), NOW);
        w.queue().full.set(true);
        assert_eq!(
            answer_a(&mut w, 1),
            [1],
            "nobody waits for a lookup that was not queued"
        );
        assert_eq!(served_a(&mut w), None);
        // The next lookup of the name is cached as usual.
        w.queue().full.set(false);
        assert_eq!(w.pre_handshake("a.example.com", 2, NOW), PreHandshake::Park);
        assert_eq!(answer_a(&mut w, 2), [2]);
        assert_eq!(served_a(&mut w), Some(2));
    }

    #[test]
    fn past_the_fetch_cap_a_connection_proceeds_and_is_counted() {
        let (mut w, m) = worker_with(1);
        assert_eq!(w.pre_handshake("a.example.com", 1, NOW), PreHandshake::Park);
        assert_eq!(
            w.pre_handshake("b.example.com", 2, NOW),
            PreHandshake::Proceed
        );
        // Joining the running fetch costs nothing: never refused.
        assert_eq!(w.pre_handshake("a.example.com", 3, NOW), PreHandshake::Park);
        assert_eq!(asked(&w), ["a.example.com"]);
        assert_eq!(m.simple(Simple::FetchesRefused), 1);
        assert_eq!(m.simple(Simple::Parked), 2);
    }

    #[test]
    fn a_full_queue_lets_the_connection_proceed_and_frees_the_slot() {
        let (mut w, m) = worker_with(1);
        w.queue().full.set(true);
        assert_eq!(
            w.pre_handshake("a.example.com", 1, NOW),
            PreHandshake::Proceed
        );
        assert_eq!(m.simple(Simple::FetchesRefused), 1);
        assert_eq!(m.simple(Simple::Parked), 0);
        assert_eq!(m.gauge(W_INFLIGHT), 0);
        // The slot was given back: with room in the queue, the next one
        // parks although the cap is 1.
        w.queue().full.set(false);
        assert_eq!(w.pre_handshake("b.example.com", 2, NOW), PreHandshake::Park);
        assert_eq!(asked(&w), ["b.example.com"]);
    }

    #[test]
    fn a_cached_wildcard_does_not_spare_the_exact_name_its_fetch() {
        let (mut w, _) = worker();
        apply(
            &mut w,
            found("a.example.com", cert(1, NOT_AFTER), Some("*.example.com")),
            NOW,
        );
        // b.example.com may have a record of its own: exact records win.
        assert_eq!(w.pre_handshake("b.example.com", 1, NOW), PreHandshake::Park);
        assert_eq!(asked(&w), ["b.example.com"]);
    }

    #[test]
    fn abandoned_connection_is_not_woken_and_the_fetch_goes_on() {
        let (mut w, _) = worker();
        w.pre_handshake("a.example.com", 1, NOW);
        w.pre_handshake("a.example.com", 2, NOW);
        assert_eq!(w.abandon("a.example.com", |&p| p == 1), Some(1));
        assert_eq!(w.abandon("a.example.com", |&p| p == 1), None);
        assert_eq!(w.abandon("b.example.com", |_| true), None);
        let (woken, _) = apply(
            &mut w,
            found("a.example.com", cert(1, NOT_AFTER), None),
            NOW,
        );
        assert_eq!(woken, [2]);
        assert_eq!(
            fingerprint(w.for_handshake("a.example.com", NOW)),
            (Some(1), CertSource::Redis),
            "the result was cached all the same"
        );
    }

    // ---- certificate callback ----

    #[test]
    fn exact_name_reports_its_source_once_then_cache() {
        let (mut w, m) = worker();
        cache(&mut w, "a.example.com", cert(1, NOT_AFTER), NOW);
        assert_eq!(
            fingerprint(w.for_handshake("a.example.com", NOW)),
            (Some(1), CertSource::Redis)
        );
        assert_eq!(
            fingerprint(w.for_handshake("a.example.com", NOW)),
            (Some(1), CertSource::Cache)
        );
        assert!(asked(&w).is_empty(), "fresh: no refresh");
        assert_eq!(m.gauge(W_ENTRIES), 1);
    }

    #[test]
    fn api_answers_report_api_on_first_use() {
        let (mut w, _) = worker();
        let event = fetched(
            "a.example.com",
            Outcome::Found {
                cert: cert(1, NOT_AFTER),
                source: CertSource::Api,
                wildcard: None,
                tier: TierData::None,
            },
        );
        apply(&mut w, event, NOW);
        assert_eq!(
            w.for_handshake("a.example.com", NOW).source,
            CertSource::Api
        );
        assert_eq!(
            w.for_handshake("a.example.com", NOW).source,
            CertSource::Cache
        );
    }

    #[test]
    fn name_below_a_cached_wildcard_gets_it_and_its_own_fetch_starts() {
        let (mut w, _) = worker();
        apply(
            &mut w,
            found("a.example.com", cert(7, NOT_AFTER), Some("*.example.com")),
            NOW,
        );
        w.queue().asked.borrow_mut().clear();
        assert_eq!(
            fingerprint(w.for_handshake("b.example.com", NOW)),
            (Some(7), CertSource::Redis),
            "first use of the wildcard entry"
        );
        assert_eq!(asked(&w), ["b.example.com"]);
        assert_eq!(
            fingerprint(w.for_handshake("c.example.com", NOW)),
            (Some(7), CertSource::Cache)
        );
        // Only one level: a.b.example.com is not covered by *.example.com.
        assert_eq!(
            fingerprint(w.for_handshake("a.b.example.com", NOW)),
            (None, CertSource::Default)
        );
    }

    #[test]
    fn exact_record_wins_over_the_wildcard() {
        let (mut w, _) = worker();
        apply(
            &mut w,
            found("a.example.com", cert(7, NOT_AFTER), Some("*.example.com")),
            NOW,
        );
        cache(&mut w, "b.example.com", cert(2, NOT_AFTER), NOW);
        assert_eq!(
            w.for_handshake("b.example.com", NOW)
                .cert
                .unwrap()
                .fingerprint[0],
            2
        );
    }

    #[test]
    fn stale_certificate_is_served_while_one_refresh_runs() {
        let (mut w, _) = worker();
        cache(&mut w, "a.example.com", cert(1, NOT_AFTER), NOW);
        let later = NOW + VALID;
        assert_eq!(
            fingerprint(w.for_handshake("a.example.com", later)),
            (Some(1), CertSource::Redis)
        );
        assert_eq!(asked(&w), ["a.example.com"]);
        assert_eq!(
            fingerprint(w.for_handshake("a.example.com", later + SECOND)),
            (Some(1), CertSource::Cache)
        );
        assert_eq!(asked(&w), ["a.example.com"], "one refresh at a time");
        // The refresh lands: fresh again, and a new certificate.
        apply(
            &mut w,
            found("a.example.com", cert(2, NOT_AFTER), None),
            later,
        );
        assert_eq!(
            fingerprint(w.for_handshake("a.example.com", later + SECOND)),
            (Some(2), CertSource::Redis)
        );
    }

    #[test]
    fn each_handshake_says_which_cache_tier_answered() {
        let (mut w, _) = worker();
        let tier = |w: &mut TestWorker, name: &str| w.for_handshake(name, NOW).tier;
        assert_eq!(tier(&mut w, "a.example.com"), Tier::Miss);
        apply(
            &mut w,
            found("a.example.com", cert(1, NOT_AFTER), Some("*.example.com")),
            NOW,
        );
        assert_eq!(tier(&mut w, "a.example.com"), Tier::Exact);
        assert_eq!(tier(&mut w, "b.example.com"), Tier::Wildcard);
        // One level only, as for the certificate itself.
        assert_eq!(tier(&mut w, "a.b.example.com"), Tier::Miss);
        apply(&mut w, fetched("nx.example.org", Outcome::NotFound), NOW);
        assert_eq!(tier(&mut w, "nx.example.org"), Tier::Negative);
        // A stale entry still answers from its own tier.
        assert_eq!(
            w.for_handshake("a.example.com", NOW + VALID).tier,
            Tier::Exact
        );
    }

    #[test]
    fn unknown_name_gets_the_default_and_schedules_a_fetch() {
        let (mut w, _) = worker();
        assert_eq!(
            fingerprint(w.for_handshake("a.example.com", NOW)),
            (None, CertSource::Default)
        );
        assert_eq!(asked(&w), ["a.example.com"]);
        // Nobody waits for that fetch.
        let (woken, _) = apply(
            &mut w,
            found("a.example.com", cert(1, NOT_AFTER), None),
            NOW,
        );
        assert!(woken.is_empty());
        assert_eq!(
            fingerprint(w.for_handshake("a.example.com", NOW)),
            (Some(1), CertSource::Redis)
        );
    }

    #[test]
    fn negative_name_gets_the_default_without_a_fetch_and_is_counted() {
        let (mut w, m) = worker();
        apply(&mut w, fetched("nx.example.com", Outcome::NotFound), NOW);
        assert_eq!(
            fingerprint(w.for_handshake("nx.example.com", NOW + SECOND)),
            (None, CertSource::Default)
        );
        assert!(asked(&w).is_empty());
        assert_eq!(m.simple(Simple::NegativeHits), 1);
        // Once the negative entry ends, the name is fetched again.
        w.for_handshake("nx.example.com", NOW + 30 * SECOND);
        assert_eq!(asked(&w), ["nx.example.com"]);
    }

    #[test]
    fn refresh_that_cannot_be_queued_is_counted_and_retried_a_second_later() {
        let (mut w, m) = worker();
        cache(&mut w, "a.example.com", cert(1, NOT_AFTER), NOW);
        w.queue().full.set(true);
        let stale = NOW + VALID;
        assert!(w.for_handshake("a.example.com", stale).cert.is_some());
        assert_eq!(m.simple(Simple::FetchesRefused), 1);
        w.queue().full.set(false);
        w.for_handshake("a.example.com", stale + QUEUE_RETRY_MS - 1);
        assert!(asked(&w).is_empty(), "not before the retry time");
        w.for_handshake("a.example.com", stale + QUEUE_RETRY_MS);
        assert_eq!(asked(&w), ["a.example.com"]);
    }

    #[test]
    fn refresh_past_the_cap_is_counted() {
        let (mut w, m) = worker_with(1);
        w.pre_handshake("busy.example.com", 1, NOW);
        w.for_handshake("a.example.com", NOW);
        assert_eq!(asked(&w), ["busy.example.com"]);
        assert_eq!(m.simple(Simple::FetchesRefused), 1);
    }

    // ---- the name's own record (tenant policy) ----

    #[test]
    fn current_is_the_exact_entry_never_the_wildcard() {
        let (mut w, _) = worker();
        apply(
            &mut w,
            found("a.example.com", cert(7, NOT_AFTER), Some("*.example.com")),
            NOW,
        );
        apply(&mut w, fetched("nx.example.com", Outcome::NotFound), NOW);
        assert_eq!(w.current("a.example.com", NOW).unwrap().fingerprint[0], 7);
        assert!(w.current("b.example.com", NOW).is_none());
        assert!(w.current("nx.example.com", NOW).is_none());
        assert!(w.current("c.other.com", NOW).is_none());
        // Neither a miss nor a wildcard starts a fetch here.
        assert!(asked(&w).is_empty());
    }

    #[test]
    fn current_starts_the_refresh_of_a_stale_entry_and_keeps_the_first_use() {
        let (mut w, _) = worker();
        cache(&mut w, "a.example.com", cert(1, NOT_AFTER), NOW);
        assert!(w.current("a.example.com", NOW).is_some());
        assert!(asked(&w).is_empty());
        assert!(w.current("a.example.com", NOW + VALID).is_some());
        assert_eq!(asked(&w), ["a.example.com"]);
        assert_eq!(
            w.for_handshake("a.example.com", NOW + VALID).source,
            CertSource::Redis
        );
    }

    // ---- dyncert_unknown reject ----

    #[test]
    fn has_certificate_answers_without_taking_the_first_use() {
        let (mut w, _) = worker();
        cache(&mut w, "a.example.com", cert(1, NOT_AFTER), NOW);
        assert!(w.has_certificate("a.example.com", NOW));
        assert!(asked(&w).is_empty());
        assert_eq!(
            w.for_handshake("a.example.com", NOW).source,
            CertSource::Redis
        );
        // Stale: still a certificate, and its refresh starts.
        assert!(w.has_certificate("a.example.com", NOW + VALID));
        assert_eq!(asked(&w), ["a.example.com"]);
    }

    #[test]
    fn has_certificate_is_false_for_unknown_names_and_fetches_misses() {
        let (mut w, _) = worker();
        apply(&mut w, fetched("nx.example.com", Outcome::NotFound), NOW);
        assert!(!w.has_certificate("nx.example.com", NOW));
        assert!(asked(&w).is_empty());
        assert!(!w.has_certificate("a.example.com", NOW));
        assert_eq!(asked(&w), ["a.example.com"]);
    }

    #[test]
    fn has_certificate_counts_a_usable_wildcard() {
        let (mut w, _) = worker();
        apply(
            &mut w,
            found("a.example.com", cert(7, NOT_AFTER), Some("*.example.com")),
            NOW,
        );
        w.queue().asked.borrow_mut().clear();
        assert!(w.has_certificate("b.example.com", NOW));
        assert_eq!(asked(&w), ["b.example.com"], "its own record is asked for");
        assert!(!w.has_certificate("b.other.com", NOW));
    }

    // ---- finished fetches ----

    #[test]
    fn found_is_fresh_for_valid_far_from_expiry() {
        let (mut w, m) = worker();
        cache(&mut w, "a.example.com", cert(1, NOT_AFTER), NOW);
        w.for_handshake("a.example.com", NOW + VALID - 1);
        assert!(asked(&w).is_empty());
        w.for_handshake("a.example.com", NOW + VALID);
        assert_eq!(asked(&w), ["a.example.com"]);
        assert_eq!(m.gauge(W_ENTRIES), 1);
        assert_eq!(m.gauge(W_BYTES), (DER_BYTES + ENTRY_OVERHEAD_BYTES) as u64);
    }

    #[test]
    fn found_is_refreshed_ahead_of_its_expiry() {
        let (mut w, _) = worker();
        // Expires 5 minutes after `valid` would end: refreshed 5 minutes
        // from now, so the renewal is picked up before expiry.
        let not_after = NOW + VALID + 5 * MINUTE;
        cache(&mut w, "a.example.com", cert(1, not_after), NOW);
        w.for_handshake("a.example.com", NOW + 5 * MINUTE - 1);
        assert!(asked(&w).is_empty());
        w.for_handshake("a.example.com", NOW + 5 * MINUTE);
        assert_eq!(asked(&w), ["a.example.com"]);
    }

    #[test]
    fn refresh_ahead_never_comes_sooner_than_the_floor() {
        let (mut w, _) = worker();
        // Refresh-ahead would be 10 s from now: a source that keeps
        // answering with this certificate is asked once a minute at most.
        let not_after = NOW + VALID + 10 * SECOND;
        cache(&mut w, "a.example.com", cert(1, not_after), NOW);
        w.for_handshake("a.example.com", NOW + REFRESH_AHEAD_FLOOR_MS - 1);
        assert!(asked(&w).is_empty());
        w.for_handshake("a.example.com", NOW + REFRESH_AHEAD_FLOOR_MS);
        assert_eq!(asked(&w), ["a.example.com"]);
        // Never served past its own expiry.
        assert_eq!(
            fingerprint(w.for_handshake("a.example.com", not_after)),
            (None, CertSource::Default)
        );
    }

    #[test]
    fn found_under_a_wildcard_caches_the_wildcard_and_the_name() {
        let (mut w, m) = worker();
        apply(
            &mut w,
            found("a.example.com", cert(7, NOT_AFTER), Some("*.example.com")),
            NOW,
        );
        assert_eq!(m.gauge(W_ENTRIES), 2);
        assert_eq!(
            m.gauge(W_BYTES),
            2 * (DER_BYTES + ENTRY_OVERHEAD_BYTES) as u64
        );
        assert_eq!(w.current("a.example.com", NOW).unwrap().fingerprint[0], 7);
        assert_eq!(w.current("*.example.com", NOW).unwrap().fingerprint[0], 7);
    }

    #[test]
    fn not_found_forgets_a_cached_certificate_and_remembers_the_name() {
        let (mut w, m) = worker();
        cache(&mut w, "a.example.com", cert(1, NOT_AFTER), NOW);
        let (_, lines) = apply(&mut w, fetched("a.example.com", Outcome::NotFound), NOW);
        assert!(lines.is_empty());
        assert_eq!(
            fingerprint(w.for_handshake("a.example.com", NOW)),
            (None, CertSource::Default)
        );
        assert_eq!(m.simple(Simple::NegativeHits), 1);
        assert_eq!(m.gauge(W_ENTRIES), 1, "the negative entry");
    }

    #[test]
    fn refused_record_keeps_a_cached_certificate_and_retries_later() {
        let (mut w, m) = worker();
        cache(&mut w, "a.example.com", cert(1, NOT_AFTER), NOW);
        let stale = NOW + VALID;
        w.for_handshake("a.example.com", stale);
        let (_, lines) = apply(&mut w, fetched("a.example.com", refused()), stale);
        assert_eq!(
            lines,
            [(
                Level::Warn,
                "dyncert: invalid certificate record (certificate has expired (notAfter)) \
                 while validating, name: \"a.example.com\""
                    .to_owned()
            )]
        );
        assert_eq!(m.get(Layout { servers: 0 }.rejected("expired")), 1);
        assert_eq!(
            w.for_handshake("a.example.com", stale)
                .cert
                .unwrap()
                .fingerprint[0],
            1
        );
        w.queue().asked.borrow_mut().clear();
        w.for_handshake("a.example.com", stale + ERROR_RETRY_MS - 1);
        assert!(asked(&w).is_empty());
        w.for_handshake("a.example.com", stale + ERROR_RETRY_MS);
        assert_eq!(asked(&w), ["a.example.com"]);
    }

    #[test]
    fn refused_record_without_a_cached_certificate_is_remembered_as_unknown() {
        let (mut w, m) = worker();
        w.pre_handshake("a.example.com", 1, NOW);
        let (woken, _) = apply(&mut w, fetched("a.example.com", refused()), NOW);
        assert_eq!(woken, [1]);
        assert_eq!(
            fingerprint(w.for_handshake("a.example.com", NOW)),
            (None, CertSource::Default)
        );
        assert_eq!(m.simple(Simple::NegativeHits), 1);
    }

    #[test]
    fn a_refusal_that_names_its_record_is_logged_with_it_and_counted() {
        let (mut w, m) = worker();
        let refusal = Outcome::Refused(Refusal {
            record: Some("dyncert:cert:*.example.com".into()),
            ..crate::keywrap::KeyWrapError::BadTag.into()
        });
        let (_, lines) = apply(&mut w, fetched("a.example.com", refusal), NOW);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let (level, line) = &lines[0];
        assert_eq!(*level, Level::Warn);
        assert!(
            line.contains("authentication failed")
                && line
                    .ends_with("name: \"a.example.com\", record: \"dyncert:cert:*.example.com\""),
            "{line}"
        );
        assert_eq!(
            m.get(Layout { servers: 0 }.rejected("key_decrypt_bad_tag")),
            1
        );
    }

    #[test]
    fn a_refused_policy_update_stops_serving_the_cached_policy() {
        let Host {
            mut a, mut b, tier, ..
        } = host();
        fetch_and_store(&mut a, "a.example.com", NOW);
        // The owner tightens the allowlist with a typo: the record is
        // refused, and the old (looser) one is not served meanwhile, by
        // this worker or, through the zone, by another.
        let stale = NOW + VALID;
        a.for_handshake("a.example.com", stale);
        let refusal = Outcome::Refused(crate::validate::Invalid::AllowInvalid.into());
        apply(&mut a, fetched("a.example.com", refusal), stale);
        assert!(a.for_handshake("a.example.com", stale).cert.is_none());
        assert!(tier.is_empty());
        assert_eq!(
            b.pre_handshake("a.example.com", 2, stale),
            PreHandshake::Park
        );
        assert!(b.queue().loads.borrow().is_empty());
        // A certificate that does not parse keeps the working one instead.
        let (mut w, _) = worker();
        cache(&mut w, "b.example.com", cert(1, NOT_AFTER), NOW);
        w.for_handshake("b.example.com", stale);
        let refusal = Outcome::Refused(crate::validate::Invalid::CrtNotPem.into());
        apply(&mut w, fetched("b.example.com", refusal), stale);
        assert!(w.for_handshake("b.example.com", stale).cert.is_some());
    }

    #[test]
    fn failed_fetch_keeps_serving_and_its_log_lines_are_rate_limited() {
        let (mut w, _) = worker();
        cache(&mut w, "a.example.com", cert(1, NOT_AFTER), NOW);
        let (_, lines) = apply(&mut w, fetched("a.example.com", failed()), NOW);
        assert_eq!(
            lines,
            [(
                Level::Warn,
                "dyncert: redis command timed out while fetching from redis, \
                 name: \"a.example.com\""
                    .to_owned()
            )]
        );
        let (_, lines) = apply(&mut w, fetched("b.example.com", failed()), NOW + SECOND);
        assert!(lines.is_empty(), "within the interval");
        let (_, lines) = apply(
            &mut w,
            fetched("c.example.com", failed()),
            NOW + ERROR_LOG_INTERVAL_MS,
        );
        assert_eq!(
            lines[0].1,
            "dyncert: redis command timed out while fetching from redis, \
             name: \"c.example.com\" (1 similar errors suppressed)"
        );
        assert!(w.for_handshake("a.example.com", NOW).cert.is_some());
    }

    #[test]
    fn failed_refresh_is_retried_after_the_error_interval() {
        let (mut w, _) = worker();
        cache(&mut w, "a.example.com", cert(1, NOT_AFTER), NOW);
        let stale = NOW + VALID;
        w.for_handshake("a.example.com", stale);
        apply(&mut w, fetched("a.example.com", failed()), stale);
        w.queue().asked.borrow_mut().clear();
        assert!(w
            .for_handshake("a.example.com", stale + ERROR_RETRY_MS - 1)
            .cert
            .is_some());
        assert!(asked(&w).is_empty());
        w.for_handshake("a.example.com", stale + ERROR_RETRY_MS);
        assert_eq!(asked(&w), ["a.example.com"]);
    }

    /// Shortest first backoff: 1 s less the largest jitter (an eighth).
    const BACKOFF_SURE: Millis = SECOND - SECOND / 8 - 1;

    /// A name backing off after its own failed lookup still takes the
    /// record another worker has since put in the tier: loading it costs
    /// no source request (over TCP the connection waits for the load; a
    /// handshake without peek parses it at once).
    #[test]
    fn a_backing_off_name_is_loaded_from_the_tier_another_worker_filled() {
        let Host {
            mut a,
            mut b,
            interner,
            ..
        } = host();
        let name = "a.example.com";
        assert_eq!(a.pre_handshake(name, 1, NOW), PreHandshake::Park);
        apply(&mut a, fetched(name, failed()), NOW);
        assert_eq!(a.for_handshake(name, NOW).tier, Tier::Backoff);
        a.queue().asked.borrow_mut().clear();
        // B fetches it.
        fetch_and_store(&mut b, name, NOW + 10);
        let t = NOW + 20;
        assert_eq!(a.pre_handshake(name, 2, t), PreHandshake::Park);
        assert!(asked(&a).is_empty(), "no source asked");
        assert_eq!(run_loads(&mut a, &interner, t), [2]);
        let sel = a.for_handshake(name, t);
        assert_eq!(sel.cert.unwrap().fingerprint, [1; 32]);
        assert!(asked(&a).is_empty());

        // The same for a handshake without peek.
        let Host { mut a, mut b, .. } = host();
        assert_eq!(a.pre_handshake(name, 1, NOW), PreHandshake::Park);
        apply(&mut a, fetched(name, failed()), NOW);
        fetch_and_store(&mut b, name, NOW + 10);
        let sel = a.for_handshake_sync(name, NOW + 20, true);
        assert_eq!(sel.tier, Tier::Shared);
        assert_eq!(sel.cert.unwrap().fingerprint, [1; 32]);
    }

    #[test]
    fn a_failed_lookup_of_an_uncached_name_backs_off_without_a_second_fetch() {
        let (mut w, m) = worker();
        let name = "a.example.com";
        assert_eq!(w.pre_handshake(name, 1, NOW), PreHandshake::Park);
        let (woken, _) = apply(&mut w, fetched(name, failed()), NOW);
        assert_eq!(woken, [1]);
        // The woken connection's certificate callback: the default, and
        // no second lookup.
        let sel = w.for_handshake(name, NOW);
        assert_eq!((sel.cert.is_none(), sel.tier), (true, Tier::Backoff));
        assert_eq!(sel.source, CertSource::Default);
        // Nor for the connections that follow within the backoff, which do
        // not wait either; and the name is not "unknown" for on-demand.
        for i in 0..10 {
            let t = NOW + i * BACKOFF_SURE / 10;
            assert_eq!(w.pre_handshake(name, 2, t), PreHandshake::Proceed);
            assert_eq!(w.for_handshake(name, t).tier, Tier::Backoff);
            on_demand(&mut w, name, t);
        }
        assert_eq!(asked(&w), [name]);
        assert!(queued(&w).is_empty());
        assert_eq!(m.simple(Simple::FetchBackoff), 11);
        assert_eq!(m.simple(Simple::Parked), 1);
        assert_eq!(m.gauge(W_ENTRIES), 1, "the backoff is an entry");
        // Once it ends the name is asked again; failing again doubles it.
        let t = NOW + SECOND;
        assert_eq!(w.pre_handshake(name, 3, t), PreHandshake::Park);
        assert_eq!(asked(&w), [name, name]);
        assert_eq!(apply(&mut w, fetched(name, failed()), t).0, [3]);
        w.for_handshake(name, t + SECOND);
        assert_eq!(asked(&w).len(), 2, "still backing off after 1 s");
        let t = t + 2 * SECOND;
        w.for_handshake(name, t);
        assert_eq!(asked(&w).len(), 3);
        // A success ends it: served from then on.
        apply(&mut w, found(name, cert(1, NOT_AFTER), None), t);
        assert_eq!(fingerprint(w.for_handshake(name, t)).0, Some(1));
        assert_eq!(m.simple(Simple::FetchBackoff), 12);
    }

    #[test]
    fn a_lookup_past_the_api_rate_cap_is_counted_logged_apart_and_backs_off() {
        let (mut w, m) = worker();
        let capped = || Outcome::Error(FetchError::ApiRateLimited(5));
        let name = "a.example.com";
        assert_eq!(w.pre_handshake(name, 1, NOW), PreHandshake::Park);
        let (woken, lines) = apply(&mut w, fetched(name, capped()), NOW);
        assert_eq!(woken, [1]);
        assert_eq!(
            lines,
            [(
                Level::Warn,
                "dyncert: the API's request rate cap (rate=5) was reached while fetching \
                 from the api, name: \"a.example.com\""
                    .to_owned()
            )]
        );
        assert_eq!(m.simple(Simple::ApiRateLimited), 1);
        // The default certificate and a backoff, as for any failed lookup:
        // neither a negative entry nor an on-demand enqueue.
        let sel = w.for_handshake(name, NOW);
        assert_eq!((sel.cert.is_none(), sel.tier), (true, Tier::Backoff));
        on_demand(&mut w, name, NOW);
        assert!(queued(&w).is_empty());
        w.for_handshake(name, NOW + SECOND);
        assert_eq!(asked(&w), [name, name], "asked again once the backoff ends");
        // A flood of capped lookups has its own log limiter: a source error
        // right after is still written.
        for i in 0..20 {
            let (_, lines) = apply(&mut w, fetched(&format!("n{i}.example.com"), capped()), NOW);
            assert!(lines.is_empty(), "{lines:?}");
        }
        assert_eq!(m.simple(Simple::ApiRateLimited), 21);
        let (_, lines) = apply(&mut w, fetched("b.example.com", failed()), NOW);
        assert_eq!(lines.len(), 1, "a source error is not hidden");
        assert_eq!(m.simple(Simple::FetchBackoff), 1);
        let (_, lines) = apply(
            &mut w,
            fetched("c.example.com", capped()),
            NOW + ERROR_LOG_INTERVAL_MS,
        );
        assert!(
            lines[0]
                .1
                .ends_with("name: \"c.example.com\" (20 similar errors suppressed)"),
            "{lines:?}"
        );
    }

    #[test]
    fn a_handshake_without_peek_backs_off_too() {
        let (mut w, _) = worker();
        let name = "quic.example.com";
        assert_eq!(w.for_handshake_sync(name, NOW, true).tier, Tier::Miss);
        apply(&mut w, fetched(name, failed()), NOW);
        for i in 0..5 {
            let sel = w.for_handshake_sync(name, NOW + i * 100, true);
            assert_eq!(sel.tier, Tier::Backoff);
        }
        assert_eq!(asked(&w), [name]);
    }

    #[test]
    fn a_backing_off_name_gets_its_cached_wildcard_or_is_rejected_without_a_fetch() {
        let (mut w, m) = worker();
        w.pre_handshake("a.example.com", 1, NOW);
        apply(&mut w, fetched("a.example.com", failed()), NOW);
        // dyncert_unknown reject: rejected here, counted here.
        assert!(!w.has_certificate("a.example.com", NOW));
        assert_eq!(m.simple(Simple::FetchBackoff), 1);
        // A wildcard cached since (another name's lookup) is served, as it
        // is after a failure today; the exact name is not asked again.
        apply(
            &mut w,
            found("x.example.com", cert(2, NOT_AFTER), Some("*.example.com")),
            NOW,
        );
        w.queue().asked.borrow_mut().clear();
        assert!(w.has_certificate("a.example.com", NOW));
        let sel = w.for_handshake("a.example.com", NOW);
        assert_eq!((sel.tier, fingerprint(sel).0), (Tier::Wildcard, Some(2)));
        assert!(w.current("a.example.com", NOW).is_none());
        assert!(asked(&w).is_empty());
        assert_eq!(m.simple(Simple::FetchBackoff), 2);
    }

    #[test]
    fn an_invalidation_or_a_resubscription_ends_a_backoff() {
        for end in [
            Event::Invalidate("a.example.com".into()),
            Event::Invalidate("*.example.com".into()),
            Event::Invalidate("*".into()),
            RESUBSCRIBED,
        ] {
            let (mut w, _) = worker();
            w.pre_handshake("a.example.com", 1, NOW);
            apply(&mut w, fetched("a.example.com", failed()), NOW);
            assert_eq!(
                w.pre_handshake("a.example.com", 2, NOW),
                PreHandshake::Proceed
            );
            apply(&mut w, end, NOW);
            assert_eq!(w.pre_handshake("a.example.com", 3, NOW), PreHandshake::Park);
            assert_eq!(asked(&w).len(), 2);
        }
        // An invalidation of another name leaves it.
        let (mut w, _) = worker();
        w.pre_handshake("a.example.com", 1, NOW);
        apply(&mut w, fetched("a.example.com", failed()), NOW);
        w.invalidate("b.example.com");
        w.invalidate("*.example.org");
        assert_eq!(
            w.pre_handshake("a.example.com", 2, NOW),
            PreHandshake::Proceed
        );
    }

    #[test]
    fn failed_fetch_of_an_unknown_name_caches_no_certificate_and_wakes_its_waiters() {
        let (mut w, m) = worker();
        w.pre_handshake("a.example.com", 1, NOW);
        let (woken, _) = apply(&mut w, fetched("a.example.com", failed()), NOW);
        assert_eq!(woken, [1]);
        assert_eq!(m.gauge(W_ENTRIES), 1, "only its backoff");
        // Not remembered as unknown: asked again once the backoff ends.
        assert_eq!(
            w.pre_handshake("a.example.com", 2, NOW + SECOND),
            PreHandshake::Park
        );
    }

    #[test]
    fn every_step_is_counted_with_its_latency_and_redis_trouble() {
        let (mut w, m) = worker();
        let event = Event::Fetched(FetchResult {
            name: "a.example.com".into(),
            attempt: 0,
            outcome: Outcome::NotFound,
            elapsed: Duration::from_millis(5),
            steps: vec![
                Step {
                    source: FetchSource::Redis,
                    outcome: StepOutcome::Timeout,
                    elapsed: Duration::from_micros(1_500),
                },
                Step {
                    source: FetchSource::Api,
                    outcome: StepOutcome::Miss,
                    elapsed: Duration::from_millis(3),
                },
            ],
            loaded: false,
        });
        apply(&mut w, event, NOW);
        let l = Layout { servers: 0 };
        assert_eq!(m.get(l.fetch(FetchSource::Redis, StepOutcome::Timeout)), 1);
        assert_eq!(m.get(l.fetch(FetchSource::Api, StepOutcome::Miss)), 1);
        for (slot, n) in l.fetch_latency(FetchSource::Redis, 1_500) {
            assert_eq!(m.get(slot), n, "redis latency slot {slot}");
        }
        for (slot, n) in l.fetch_latency(FetchSource::Api, 3_000) {
            assert_eq!(m.get(slot), n, "api latency slot {slot}");
        }
        assert_eq!(m.simple(Simple::RedisErrors), 1);
    }

    // ---- invalidation and the subscription ----

    fn cached_names(w: &mut TestWorker, now: Millis) -> Vec<&'static str> {
        [
            "*.example.com",
            "a.example.com",
            "b.example.com",
            "a.b.example.com",
            "example.com",
            "a.other.com",
        ]
        .into_iter()
        .filter(|n| w.current(n, now).is_some())
        .collect()
    }

    fn cache_all(w: &mut TestWorker) {
        apply(
            w,
            found("a.example.com", cert(7, NOT_AFTER), Some("*.example.com")),
            NOW,
        );
        for name in [
            "b.example.com",
            "a.b.example.com",
            "example.com",
            "a.other.com",
        ] {
            cache(w, name, cert(1, NOT_AFTER), NOW);
        }
    }

    #[test]
    fn invalidating_a_name_drops_only_that_name() {
        let (mut w, m) = worker();
        cache_all(&mut w);
        let (woken, lines) = apply(&mut w, Event::Invalidate("b.example.com".into()), NOW);
        assert!(woken.is_empty());
        assert_eq!(
            lines,
            [(
                Level::Info,
                "dyncert: invalidated \"b.example.com\" as published".to_owned()
            )]
        );
        assert_eq!(
            cached_names(&mut w, NOW),
            [
                "*.example.com",
                "a.example.com",
                "a.b.example.com",
                "example.com",
                "a.other.com"
            ]
        );
        assert_eq!(m.simple(Simple::Invalidations), 1);
        assert_eq!(m.gauge(W_ENTRIES), 5);
    }

    #[test]
    fn invalidating_a_wildcard_drops_it_and_every_name_one_level_below() {
        let (mut w, _) = worker();
        cache_all(&mut w);
        apply(&mut w, Event::Invalidate("*.example.com".into()), NOW);
        assert_eq!(
            cached_names(&mut w, NOW),
            ["a.b.example.com", "example.com", "a.other.com"]
        );
    }

    #[test]
    fn invalidating_everything_empties_the_cache() {
        let (mut w, m) = worker();
        cache_all(&mut w);
        apply(&mut w, fetched("nx.example.com", Outcome::NotFound), NOW);
        apply(&mut w, Event::Invalidate("*".into()), NOW);
        assert!(cached_names(&mut w, NOW).is_empty());
        assert_eq!(m.gauge(W_ENTRIES), 0);
        assert_eq!(m.gauge(W_BYTES), 0);
        // The negative entry went too: the name is fetched again.
        w.for_handshake("nx.example.com", NOW);
        assert_eq!(asked(&w), ["nx.example.com"]);
    }

    #[test]
    fn resubscription_is_counted_and_logged_the_first_subscription_is_not() {
        let (mut w, m) = worker();
        let (_, lines) = apply(
            &mut w,
            Event::Subscribed {
                resubscribed: false,
            },
            NOW,
        );
        assert!(lines.is_empty());
        assert_eq!(m.simple(Simple::Resubscribes), 0);
        let (_, lines) = apply(&mut w, Event::Subscribed { resubscribed: true }, NOW);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].0, Level::Warn);
        assert!(lines[0].1.contains("subscribed again"), "{}", lines[0].1);
        assert_eq!(m.simple(Simple::Resubscribes), 1);
    }

    const RESUBSCRIBED: Event = Event::Subscribed { resubscribed: true };

    #[test]
    fn the_first_subscription_leaves_the_cache_alone() {
        let (mut w, m) = worker();
        cache(&mut w, "a.example.com", cert(1, NOT_AFTER), NOW);
        let first = Event::Subscribed {
            resubscribed: false,
        };
        apply(&mut w, first, NOW + SECOND);
        assert!(w
            .for_handshake("a.example.com", NOW + SECOND)
            .cert
            .is_some());
        assert!(asked(&w).is_empty());
        assert_eq!(m.simple(Simple::ResubscribeMarked), 0);
    }

    #[test]
    fn after_a_lost_subscription_each_certificate_is_refreshed_on_its_next_use_and_served_meanwhile(
    ) {
        let (mut w, m) = worker();
        cache(&mut w, "a.example.com", cert(1, NOT_AFTER), NOW);
        cache(&mut w, "b.example.com", cert(2, NOT_AFTER), NOW);
        apply(&mut w, fetched("nx.example.com", Outcome::NotFound), NOW);
        // Well within `valid`: only the lost subscription makes them due.
        let t = NOW + SECOND;
        let (woken, lines) = apply(&mut w, RESUBSCRIBED, t);
        assert!(woken.is_empty());
        assert_eq!(
            lines,
            [(
                Level::Warn,
                "dyncert: invalidation channel subscribed again; names published meanwhile \
                 may have been missed: 2 cached certificates are refreshed on their next use"
                    .to_owned()
            )]
        );
        assert_eq!(m.simple(Simple::Resubscribes), 1);
        assert_eq!(m.simple(Simple::ResubscribeMarked), 2);
        assert!(asked(&w).is_empty(), "no stampede: nothing fetched yet");
        assert_eq!(
            m.gauge(W_ENTRIES),
            2,
            "nothing dropped but the negative entry"
        );

        // The handshake gets the cached certificate at once and starts one
        // refresh; the next one does not start another.
        assert_eq!(
            w.pre_handshake("a.example.com", 1, t),
            PreHandshake::Proceed
        );
        assert_eq!(
            fingerprint(w.for_handshake("a.example.com", t)),
            (Some(1), CertSource::Redis)
        );
        w.for_handshake("a.example.com", t);
        assert_eq!(asked(&w), ["a.example.com"]);
        // The renewal published while the subscription was down arrives.
        let t2 = t + SECOND;
        apply(&mut w, found("a.example.com", cert(9, NOT_AFTER), None), t2);
        w.for_handshake("a.example.com", t2);
        assert_eq!(w.current("a.example.com", t2).unwrap().fingerprint, [9; 32]);
        assert_eq!(asked(&w), ["a.example.com"], "fresh again");
        // A name known to be unknown before the loss is looked up again.
        w.for_handshake("nx.example.com", t);
        assert_eq!(asked(&w), ["a.example.com", "nx.example.com"]);
    }

    #[test]
    fn refreshes_after_a_lost_subscription_stay_within_the_fetch_cap() {
        let (mut w, m) = worker_with(1);
        cache(&mut w, "a.example.com", cert(1, NOT_AFTER), NOW);
        cache(&mut w, "b.example.com", cert(2, NOT_AFTER), NOW);
        apply(&mut w, RESUBSCRIBED, NOW);
        assert!(w.for_handshake("a.example.com", NOW).cert.is_some());
        assert!(w.for_handshake("b.example.com", NOW).cert.is_some());
        assert_eq!(asked(&w), ["a.example.com"]);
        assert_eq!(m.simple(Simple::FetchesRefused), 1);
        // The refused one asks again a retry interval later.
        apply(
            &mut w,
            found("a.example.com", cert(3, NOT_AFTER), None),
            NOW,
        );
        w.for_handshake("b.example.com", NOW + QUEUE_RETRY_MS);
        assert_eq!(asked(&w), ["a.example.com", "b.example.com"]);
    }

    #[test]
    fn a_lookup_running_when_the_subscription_returns_is_checked_again() {
        let (mut w, _) = worker();
        w.pre_handshake("a.example.com", 1, NOW);
        w.pre_handshake("b.example.com", 2, NOW);
        w.pre_handshake("c.example.com", 3, NOW);
        apply(&mut w, RESUBSCRIBED, NOW + SECOND);
        let t = NOW + 2 * SECOND;
        // It may have read Redis before a renewal whose message was lost:
        // served, and asked again on its next use, once.
        let (woken, _) = apply(&mut w, found("a.example.com", cert(1, NOT_AFTER), None), t);
        assert_eq!(woken, [1]);
        assert!(w.for_handshake("a.example.com", t).cert.is_some());
        w.for_handshake("a.example.com", t);
        // A failure is retried on the next use, not after 5 s.
        apply(&mut w, fetched("b.example.com", failed()), t);
        // "Unknown" from before is not remembered.
        apply(&mut w, fetched("c.example.com", Outcome::NotFound), t);
        w.for_handshake("b.example.com", t);
        w.for_handshake("c.example.com", t);
        assert_eq!(
            asked(&w)[3..],
            ["a.example.com", "b.example.com", "c.example.com"]
        );
        // Once: the refreshed result is trusted as usual.
        apply(&mut w, found("a.example.com", cert(2, NOT_AFTER), None), t);
        w.for_handshake("a.example.com", t + SECOND);
        assert_eq!(asked(&w).len(), 6);
    }

    #[test]
    fn redis_connection_failures_are_all_counted_and_logged_with_the_node_unless_repeated() {
        let (mut w, m) = worker();
        let failed = |logged| {
            Event::Redis(RedisNote::ConnectFailed {
                node: "redis.internal:6380".into(),
                error: "Connection refused".into(),
                logged,
            })
        };
        let (woken, lines) = apply(&mut w, failed(true), NOW);
        assert!(woken.is_empty());
        assert_eq!(
            lines,
            [(
                Level::Warn,
                "dyncert: Connection refused while connecting to redis node \"redis.internal:6380\""
                    .to_owned()
            )]
        );
        let (_, lines) = apply(&mut w, failed(false), NOW);
        assert!(lines.is_empty());
        assert_eq!(m.simple(Simple::RedisConnectErrors), 2);
        let replica = |logged| {
            Event::Redis(RedisNote::ReplicaRead {
                node: "10.0.0.2:6379".into(),
                logged,
            })
        };
        let (_, lines) = apply(&mut w, replica(true), NOW);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].1.contains("\"10.0.0.2:6379\""), "{}", lines[0].1);
        apply(&mut w, replica(false), NOW);
        assert_eq!(m.simple(Simple::RedisReplicaReads), 2);
    }

    #[test]
    fn a_command_timeout_and_a_reconnect_have_lines_and_counters_of_their_own() {
        let (mut w, m) = worker();
        let timed_out = |logged| {
            Event::Redis(RedisNote::CommandTimedOut {
                node: "10.0.0.7:6379".into(),
                timeout: Duration::from_millis(500),
                logged,
            })
        };
        let (_, lines) = apply(&mut w, timed_out(true), NOW);
        assert_eq!(
            lines,
            [(
                Level::Warn,
                "dyncert: redis command timed out after 500 ms on the open connection \
                 to redis node \"10.0.0.7:6379\""
                    .to_owned()
            )]
        );
        assert!(apply(&mut w, timed_out(false), NOW).1.is_empty());
        assert_eq!(m.simple(Simple::RedisCommandTimeouts), 2);
        assert_eq!(
            m.simple(Simple::RedisConnectErrors),
            0,
            "not a connect error"
        );
        let (_, lines) = apply(
            &mut w,
            Event::Redis(RedisNote::Reconnected {
                node: "10.0.0.7:6379".into(),
                logged: true,
            }),
            NOW,
        );
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].1.starts_with(
                "dyncert: replacing the command connection to redis node \"10.0.0.7:6379\""
            ),
            "{}",
            lines[0].1
        );
        assert_eq!(m.simple(Simple::RedisReconnects), 1);
    }

    #[test]
    fn ticket_key_notes_are_counted_and_logged_without_key_material() {
        use crate::tickets::TicketKeysError;
        let (mut w, m) = worker();
        let (_, lines) = apply(
            &mut w,
            Event::Tickets(TicketNote::Loaded {
                generation: 7,
                keys: 3,
            }),
            NOW,
        );
        assert_eq!(
            lines,
            [(
                Level::Info,
                "dyncert: session ticket keys generation 7 loaded (3 key(s))".to_owned()
            )]
        );
        apply(
            &mut w,
            Event::Tickets(TicketNote::Rotated { generation: 8 }),
            NOW,
        );
        let (_, lines) = apply(
            &mut w,
            Event::Tickets(TicketNote::Refused(TicketKeysError::Oversized)),
            NOW,
        );
        assert_eq!(lines[0].0, Level::Warn);
        assert!(
            lines[0].1.contains("oversized ticket key set refused"),
            "{}",
            lines[0].1
        );
        let (_, lines) = apply(
            &mut w,
            Event::Tickets(TicketNote::Expired { generation: 8 }),
            NOW,
        );
        assert_eq!(lines[0].0, Level::Warn);
        apply(
            &mut w,
            Event::Tickets(TicketNote::Failed("timeout".into())),
            NOW,
        );
        assert_eq!(m.simple(Simple::TicketKeyLoads), 1);
        assert_eq!(m.simple(Simple::TicketKeyRotations), 1);
        assert_eq!(m.simple(Simple::TicketKeyErrors), 3);
    }

    #[test]
    fn fetcher_warnings_are_logged_as_they_are() {
        let (mut w, _) = worker();
        let (woken, lines) = apply(&mut w, Event::Warn("dyncert: something".into()), NOW);
        assert!(woken.is_empty());
        assert_eq!(lines, [(Level::Warn, "dyncert: something".to_owned())]);
    }

    #[test]
    fn acme_answers_are_not_the_workers_business() {
        let (mut w, _) = worker();
        w.pre_handshake("a.example.com", 1, NOW);
        let event = Event::Acme {
            token: "t".into(),
            answer: AcmeAnswer::Absent,
        };
        let (woken, lines) = apply(&mut w, event, NOW);
        assert!(woken.is_empty());
        assert!(lines.is_empty());
    }

    // ---- the host-wide tier ----

    use crate::compact::Compact;
    use crate::fetch::Stored;
    use crate::record::Record;
    use crate::tier::MemoryTier;

    /// Two workers of one host: each with its own hot set and queue, one
    /// tier between them.
    struct Host {
        a: TestWorker,
        b: TestWorker,
        /// A's and B's counters.
        ma: Rc<Metrics>,
        mb: Rc<Metrics>,
        tier: Rc<MemoryTier>,
        interner: Arc<Interner>,
    }

    fn host() -> Host {
        let tier = Rc::new(MemoryTier::default());
        let interner = Arc::new(Interner::default());
        let (a, ma) = worker();
        let a = a.with_tier(Box::new(tier.clone()), interner.clone());
        let (b, mb) = worker();
        let b = b.with_tier(Box::new(tier.clone()), interner.clone());
        Host {
            a,
            b,
            ma,
            mb,
            tier,
            interner,
        }
    }

    /// `w` fetches `name` for a handshake (certificate 1) and stores it in
    /// the tier, as a first miss does.
    fn fetch_and_store(w: &mut TestWorker, name: &str, now: Millis) {
        w.pre_handshake(name, 1, now);
        apply(w, found_storable(name, cert(1, NOT_AFTER), None), now);
    }

    /// A finished fetch from Redis, with the compact form the parse thread
    /// makes when a tier is configured.
    fn found_storable(name: &str, c: Arc<ParsedCert>, wildcard: Option<&str>) -> Event {
        let record = Record {
            form: crate::record::Form::Pem,
            crt: Vec::new(),
            key: c.key.private_key_to_pem_pkcs8().unwrap(),
            allow: None,
            client_ca: None,
            second: None,
        };
        let (compact, intermediates) = Compact::of(&c, &record, CertSource::Redis).unwrap();
        fetched(
            name,
            Outcome::Found {
                cert: c,
                source: CertSource::Redis,
                wildcard: wildcard.map(str::to_owned),
                tier: TierData::Store(Box::new(Stored {
                    compact,
                    intermediates,
                })),
            },
        )
    }

    /// What the parse thread answers for the loads `w` queued.
    fn run_loads(w: &mut TestWorker, interner: &Interner, now: Millis) -> Vec<u32> {
        let loads: Vec<_> = w.queue().loads.borrow_mut().drain(..).collect();
        let mut woken = Vec::new();
        for (name, hit) in loads {
            let event = Event::Fetched(FetchResult {
                name,
                attempt: 0,
                outcome: load_stored(interner, &hit, now),
                elapsed: Duration::ZERO,
                steps: Vec::new(),
                loaded: true,
            });
            woken.extend(apply(w, event, now).0);
        }
        woken
    }

    #[test]
    fn a_late_first_fetch_after_a_restart_is_not_stored_in_the_tier() {
        // review4 F1, the shared-zone variant: A read the record before an
        // invalidation, B was started again after it; A answers first.
        let mut h = host();
        let dl = 5 * SECOND;
        let mut a = std::mem::replace(&mut h.a, worker().0).with_flight_deadline(dl);
        let n = "a.example.com";
        set_monotonic(1);
        assert_eq!(a.pre_handshake(n, 1, NOW), PreHandshake::Park); // A reads old
        apply(&mut a, Event::Invalidate(n.into()), NOW + 100);
        set_monotonic(1 + dl);
        assert_eq!(a.pre_handshake(n, 2, NOW + dl), PreHandshake::Park); // B
        let ids = attempts(&a, n);
        assert_eq!(ids.len(), 2);
        let late = of_attempt(found_storable(n, cert(1, NOT_AFTER), None), ids[0]);
        let (woken, _) = apply(&mut a, late, NOW + dl + 10);
        assert!(woken.is_empty(), "woken with the pre-invalidation record");
        assert!(
            h.tier.lookup(n).is_none(),
            "pre-invalidation record stored in the tier"
        );
        assert_eq!(fingerprint(a.for_handshake(n, NOW + dl + 20)).0, None);
        // B's answer, read after the invalidation, is stored and served.
        let b = of_attempt(found_storable(n, cert(2, NOT_AFTER), None), ids[1]);
        let (woken, _) = apply(&mut a, b, NOW + dl + 30);
        assert_eq!(woken, [1, 2]);
        assert!(h.tier.lookup(n).is_some());
        assert_eq!(fingerprint(a.for_handshake(n, NOW + dl + 40)).0, Some(2));
    }

    #[test]
    fn a_late_tier_load_after_a_restart_is_not_cached() {
        // A load of the tier's record stuck in the parse queue past the
        // deadline; the record is invalidated meanwhile; the restart asks
        // the sources. The load's late answer is dropped.
        let Host {
            mut a,
            mut b,
            interner,
            ..
        } = host();
        let n = "a.example.com";
        fetch_and_store(&mut a, n, NOW);
        let mut b = std::mem::replace(&mut b, worker().0);
        b = b.with_flight_deadline(FLIGHT_DEADLINE);
        set_monotonic(1);
        assert_eq!(b.pre_handshake(n, 1, NOW), PreHandshake::Park);
        assert_eq!(b.queue().loads.borrow().len(), 1);
        let stuck: Vec<_> = b.queue().loads.borrow_mut().drain(..).collect();
        apply(&mut b, Event::Invalidate(n.into()), NOW + 100);
        set_monotonic(1 + FLIGHT_DEADLINE);
        assert_eq!(
            b.pre_handshake(n, 2, NOW + FLIGHT_DEADLINE),
            PreHandshake::Park
        );
        assert_eq!(asked(&b), [n], "the tier no longer has it: the sources");
        let ids = attempts(&b, n);
        let (_, hit) = &stuck[0];
        let late = Event::Fetched(FetchResult {
            name: n.to_owned(),
            attempt: ids[0],
            outcome: load_stored(&interner, hit, NOW),
            elapsed: Duration::ZERO,
            steps: Vec::new(),
            loaded: true,
        });
        let (woken, _) = apply(&mut b, late, NOW + FLIGHT_DEADLINE + 10);
        assert!(woken.is_empty());
        assert_eq!(
            fingerprint(b.for_handshake(n, NOW + FLIGHT_DEADLINE + 20)).0,
            None
        );
    }

    #[test]
    fn a_name_fetched_by_one_worker_is_loaded_by_the_others_not_fetched() {
        let Host {
            mut a,
            mut b,
            mb,
            tier,
            interner,
            ..
        } = host();
        assert_eq!(mb.simple(Simple::TierLoads), 0);
        assert_eq!(a.pre_handshake("a.example.com", 1, NOW), PreHandshake::Park);
        let (woken, _) = apply(
            &mut a,
            found_storable("a.example.com", cert(1, NOT_AFTER), None),
            NOW,
        );
        assert_eq!(woken, [1]);
        assert_eq!(tier.len(), 1, "stored for the host");

        let later = NOW + 5 * SECOND;
        assert_eq!(
            b.pre_handshake("a.example.com", 2, later),
            PreHandshake::Park
        );
        assert!(asked(&b).is_empty(), "no fetch: {:?}", asked(&b));
        assert_eq!(b.queue().loads.borrow().len(), 1);
        assert_eq!(mb.simple(Simple::TierLoads), 1);
        assert_eq!(run_loads(&mut b, &interner, later), [2]);
        let sel = b.for_handshake("a.example.com", later);
        let (c, source) = (sel.cert, sel.source);
        assert_eq!(source, CertSource::Shared);
        assert_eq!(c.unwrap().fingerprint, [1; 32]);
        assert_eq!(
            b.for_handshake("a.example.com", later).source,
            CertSource::Cache
        );
        // The fetching worker's deadlines hold for all: fresh until the
        // fetch's valid ends, not the load's.
        // Stale, and the tier's record is no newer: B refreshes from the
        // sources (and its result will serve the host).
        let c = b.for_handshake("a.example.com", NOW + VALID + SECOND).cert;
        assert!(c.is_some(), "served stale meanwhile");
        assert_eq!(asked(&b), ["a.example.com"]);
        assert_eq!(b.queue().loads.borrow().len(), 0);
    }

    #[test]
    fn a_refresh_loads_a_newer_tier_record_and_fetches_otherwise() {
        let Host {
            mut a,
            mut b,
            interner,
            ..
        } = host();
        fetch_and_store(&mut a, "a.example.com", NOW);
        b.pre_handshake("a.example.com", 2, NOW);
        run_loads(&mut b, &interner, NOW);
        // A refreshes first and stores the new record.
        let t1 = NOW + VALID + SECOND;
        a.for_handshake("a.example.com", t1);
        assert_eq!(asked(&a), ["a.example.com", "a.example.com"]);
        apply(
            &mut a,
            found_storable("a.example.com", cert(2, NOT_AFTER), None),
            t1,
        );
        // B's entry is stale too: it loads A's newer record, no fetch.
        let t2 = t1 + SECOND;
        let c = b.for_handshake("a.example.com", t2).cert;
        assert_eq!(c.unwrap().fingerprint, [1; 32], "served stale meanwhile");
        assert!(asked(&b).is_empty());
        run_loads(&mut b, &interner, t2);
        assert_eq!(b.current("a.example.com", t2).unwrap().fingerprint, [2; 32]);
        // When nobody refreshed since B's copy, B fetches itself.
        let t3 = t2 + VALID + SECOND;
        b.for_handshake("a.example.com", t3);
        assert_eq!(asked(&b), ["a.example.com"]);
    }

    #[test]
    fn an_unusable_tier_record_is_dropped_and_the_name_fetched() {
        let Host {
            mut a,
            mut b,
            mb,
            tier,
            interner,
            ..
        } = host();
        a.pre_handshake("a.example.com", 1, NOW);
        // Expires in a minute; by the time B loads it, it has expired.
        let short = NOW + MINUTE;
        apply(
            &mut a,
            found_storable("a.example.com", cert(1, short), None),
            NOW,
        );
        let later = short + SECOND;
        b.pre_handshake("a.example.com", 2, NOW);
        let (woken, _) = {
            let loads: Vec<_> = b.queue().loads.borrow_mut().drain(..).collect();
            let (name, hit) = loads.into_iter().next().unwrap();
            let event = Event::Fetched(FetchResult {
                name,
                attempt: 0,
                outcome: load_stored(&interner, &hit, later),
                elapsed: Duration::ZERO,
                steps: Vec::new(),
                loaded: true,
            });
            apply(&mut b, event, later)
        };
        assert!(woken.is_empty(), "the waiter waits for the fetch");
        assert_eq!(asked(&b), ["a.example.com"]);
        assert!(tier.is_empty());
        assert_eq!(mb.simple(Simple::TierLoadsRefused), 1);
        let (woken, _) = apply(
            &mut b,
            found("a.example.com", cert(3, NOT_AFTER), None),
            later,
        );
        assert_eq!(woken, [2]);
    }

    #[test]
    fn an_on_demand_request_waiting_for_a_refused_tier_load_waits_for_the_sources() {
        let Host {
            mut a,
            mut b,
            interner,
            ..
        } = host();
        let name = "gone.example.com";
        let short = NOW + MINUTE;
        a.pre_handshake(name, 1, NOW);
        apply(&mut a, found_storable(name, cert(1, short), None), NOW);
        // B loads A's record, which has expired by the time it is parsed;
        // meanwhile a handshake for the name got no certificate.
        b.pre_handshake(name, 2, NOW);
        let later = short + SECOND;
        on_demand_from(&mut b, name, "198.51.100.7", later);
        assert!(queued(&b).is_empty(), "decided when the lookup ends");
        let loads: Vec<_> = b.queue().loads.borrow_mut().drain(..).collect();
        let (loaded, hit) = loads.into_iter().next().unwrap();
        let event = Event::Fetched(FetchResult {
            name: loaded,
            attempt: 0,
            outcome: load_stored(&interner, &hit, later),
            elapsed: Duration::ZERO,
            steps: Vec::new(),
            loaded: true,
        });
        apply(&mut b, event, later);
        assert_eq!(asked(&b), [name], "the sources are asked instead");
        assert!(queued(&b).is_empty());
        // Unknown to the sources too: the request made meanwhile is queued.
        apply(&mut b, unknown(name, &REDIS_MISS), later);
        assert_eq!(queued(&b), [name]);
    }

    #[test]
    fn a_tier_load_cut_at_its_bound_leaves_the_record_to_the_other_workers() {
        let Host {
            mut a,
            mut b,
            mb,
            tier,
            ..
        } = host();
        let name = "busy.example.com";
        fetch_and_store(&mut a, name, NOW);
        b.pre_handshake(name, 2, NOW);
        let loads: Vec<_> = b.queue().loads.borrow_mut().drain(..).collect();
        assert_eq!(loads.len(), 1);
        let event = Event::Fetched(FetchResult {
            name: name.to_owned(),
            attempt: 0,
            outcome: Outcome::Error(FetchError::LookupTimedOut(3_000)),
            elapsed: Duration::ZERO,
            steps: Vec::new(),
            loaded: true,
        });
        let (woken, _) = apply(&mut b, event, NOW + SECOND);
        assert!(woken.is_empty(), "the waiter waits for the sources");
        assert_eq!(asked(&b), [name]);
        assert_eq!(tier.len(), 1, "the record was never read: it stays");
        assert_eq!(mb.simple(Simple::TierLoadsRefused), 0);
        assert_eq!(mb.simple(Simple::TierLoadsTimedOut), 1);
    }

    #[test]
    fn wildcard_records_are_stored_under_both_keys_and_invalidations_clear_the_tier() {
        let Host {
            mut a, mut b, tier, ..
        } = host();
        a.pre_handshake("x.example.com", 1, NOW);
        apply(
            &mut a,
            found_storable("x.example.com", cert(1, NOT_AFTER), Some("*.example.com")),
            NOW,
        );
        assert_eq!(tier.len(), 2);
        b.invalidate("*.example.com");
        assert!(tier.is_empty());
        a.pre_handshake("y.example.com", 2, NOW);
        apply(
            &mut a,
            found_storable("y.example.com", cert(2, NOT_AFTER), None),
            NOW,
        );
        b.invalidate("y.example.com");
        assert!(tier.is_empty());
        a.invalidate("y.example.com");
        a.pre_handshake("y.example.com", 3, NOW);
        apply(
            &mut a,
            found_storable("y.example.com", cert(2, NOT_AFTER), None),
            NOW,
        );
        assert_eq!(tier.len(), 1);
        b.invalidate("*");
        assert!(tier.is_empty());
    }

    #[test]
    fn a_record_read_before_another_workers_invalidation_is_not_stored_in_the_tier() {
        let Host {
            mut a,
            mut b,
            ma,
            tier,
            interner,
            ..
        } = host();
        // A starts a lookup; B applies an invalidation of the name before
        // A's own message arrives, and A's lookup then answers with what
        // it read before the update.
        a.pre_handshake("a.example.com", 1, NOW);
        apply(&mut b, Event::Invalidate("a.example.com".into()), NOW);
        let (woken, lines) = apply(
            &mut a,
            found_storable("a.example.com", cert(1, NOT_AFTER), None),
            NOW,
        );
        assert_eq!(woken, [1], "A's waiter is served; A's message drops it");
        assert!(tier.is_empty(), "the old record must not reach the tier");
        assert_eq!(ma.simple(Simple::TierStoresRefused), 1);
        assert!(lines
            .iter()
            .any(|(l, m)| *l == Level::Info && m.contains("not stored in the shared zone")));
        // B misses the tier and asks the sources.
        assert_eq!(b.pre_handshake("a.example.com", 2, NOW), PreHandshake::Park);
        assert_eq!(asked(&b), ["a.example.com"]);
        // A's message arrives; its next lookup started after the
        // invalidation and is stored, and B can load it from there.
        apply(&mut a, Event::Invalidate("a.example.com".into()), NOW);
        assert_eq!(fingerprint(a.for_handshake("a.example.com", NOW)).0, None);
        a.pre_handshake("a.example.com", 3, NOW);
        apply(
            &mut a,
            found_storable("a.example.com", cert(2, NOT_AFTER), None),
            NOW,
        );
        assert_eq!(tier.len(), 1);
        assert_eq!(ma.simple(Simple::TierStoresRefused), 1);
        let mut c = worker()
            .0
            .with_tier(Box::new(tier.clone()), interner.clone());
        c.pre_handshake("a.example.com", 4, NOW);
        assert_eq!(run_loads(&mut c, &interner, NOW), [4]);
        assert_eq!(
            fingerprint(c.for_handshake("a.example.com", NOW)).0,
            Some(2)
        );
    }

    #[test]
    fn a_wildcard_invalidation_elsewhere_keeps_both_keys_out_of_the_tier() {
        let Host {
            mut a, mut b, tier, ..
        } = host();
        a.pre_handshake("x.example.com", 1, NOW);
        apply(&mut b, Event::Invalidate("*.example.com".into()), NOW);
        apply(
            &mut a,
            found_storable("x.example.com", cert(1, NOT_AFTER), Some("*.example.com")),
            NOW,
        );
        assert!(tier.is_empty());
        // An invalidation of an unrelated name does not get in the way.
        a.pre_handshake("y.example.com", 2, NOW);
        apply(&mut b, Event::Invalidate("z.example.org".into()), NOW);
        apply(
            &mut a,
            found_storable("y.example.com", cert(2, NOT_AFTER), None),
            NOW,
        );
        assert_eq!(tier.len(), 1);
    }

    #[test]
    fn after_a_lost_subscription_older_tier_records_are_refetched_newer_ones_loaded() {
        let Host {
            mut a,
            mut b,
            mb,
            tier,
            interner,
            ..
        } = host();
        fetch_and_store(&mut a, "a.example.com", NOW);
        b.pre_handshake("a.example.com", 2, NOW);
        run_loads(&mut b, &interner, NOW);
        a.queue().asked.borrow_mut().clear();
        // Both workers of the host lost their subscription and got it back.
        let t = NOW + SECOND;
        apply(&mut a, RESUBSCRIBED, t);
        apply(&mut b, RESUBSCRIBED, t);
        // A refreshes from Redis (the tier's record predates the loss), and
        // serves its copy meanwhile.
        assert!(a.for_handshake("a.example.com", t).cert.is_some());
        assert_eq!(asked(&a), ["a.example.com"]);
        assert!(a.queue().loads.borrow().is_empty());
        let t2 = t + SECOND;
        apply(
            &mut a,
            found_storable("a.example.com", cert(2, NOT_AFTER), None),
            t2,
        );
        // B takes A's record, fetched after the heal: no second fetch.
        assert_eq!(
            b.for_handshake("a.example.com", t2)
                .cert
                .unwrap()
                .fingerprint,
            [1; 32],
            "served meanwhile"
        );
        assert!(asked(&b).is_empty());
        run_loads(&mut b, &interner, t2);
        assert_eq!(b.current("a.example.com", t2).unwrap().fingerprint, [2; 32]);
        b.for_handshake("a.example.com", t2 + SECOND);
        assert!(asked(&b).is_empty(), "and it is fresh");
        assert_eq!(mb.simple(Simple::TierLoads), 2);
        assert_eq!(tier.len(), 1);
    }

    /// The wall clock steps back an hour after a re-subscription: what is
    /// fetched from then on is still after it, so it is fresh (not fetched
    /// again at every handshake) and the other workers load it from the
    /// tier instead of asking Redis.
    #[test]
    fn a_clock_stepped_back_after_a_resubscription_does_not_make_new_results_old() {
        let Host {
            mut a,
            mut b,
            tier,
            interner,
            ..
        } = host();
        let t = NOW + SECOND;
        apply(&mut a, RESUBSCRIBED, t);
        apply(&mut b, RESUBSCRIBED, t);
        let back = NOW - 60 * MINUTE;
        fetch_and_store(&mut a, "a.example.com", back);
        assert_eq!(asked(&a), ["a.example.com"]);
        a.queue().asked.borrow_mut().clear();
        assert!(a
            .for_handshake("a.example.com", back + SECOND)
            .cert
            .is_some());
        assert!(asked(&a).is_empty(), "fresh, not fetched again");
        assert_eq!(
            b.pre_handshake("a.example.com", 2, back + SECOND),
            PreHandshake::Park
        );
        assert!(asked(&b).is_empty(), "B loads the tier's record");
        assert_eq!(run_loads(&mut b, &interner, back + SECOND), [2]);
        assert!(b.current("a.example.com", back + SECOND).is_some());
        assert_eq!(tier.len(), 1);
        // A lookup running at a later re-subscription is still dated
        // before it.
        b.for_handshake("z.example.com", back + 2 * SECOND);
        apply(&mut b, RESUBSCRIBED, back + 3 * SECOND);
        apply(
            &mut b,
            found_storable("z.example.com", cert(3, NOT_AFTER), None),
            back + 4 * SECOND,
        );
        b.queue().asked.borrow_mut().clear();
        b.for_handshake("z.example.com", back + 5 * SECOND);
        assert_eq!(asked(&b), ["z.example.com"], "refreshed: it may be stale");
    }

    #[test]
    fn a_tier_record_fetched_before_any_workers_resubscription_is_fetched_again_not_loaded() {
        let Host {
            mut a,
            mut b,
            tier,
            interner,
            ..
        } = host();
        fetch_and_store(&mut a, "a.example.com", NOW);
        let t = NOW + SECOND;
        apply(&mut b, RESUBSCRIBED, t);
        // B never had the name, and the zone's copy may have missed an
        // invalidation (B's loss may have been the whole host's): Redis is
        // asked, the connection waiting as for a zone load.
        assert_eq!(b.pre_handshake("a.example.com", 2, t), PreHandshake::Park);
        assert!(b.queue().loads.borrow().is_empty());
        assert_eq!(asked(&b), ["a.example.com"]);
        // A worker that never lost its subscription, or one started after
        // the loss, does the same: the floor is the tier's.
        let (mut c, _) = worker();
        c = c.with_tier(Box::new(tier.clone()), interner.clone());
        assert_eq!(c.pre_handshake("a.example.com", 3, t), PreHandshake::Park);
        assert_eq!(asked(&c), ["a.example.com"]);
        // So does a handshake without peek (QUIC): the default, and a fetch.
        let (mut d, _) = worker();
        d = d.with_tier(Box::new(tier.clone()), interner.clone());
        assert!(d
            .for_handshake_sync("a.example.com", t, true)
            .cert
            .is_none());
        assert_eq!(asked(&d), ["a.example.com"]);
        // What B fetches after its re-subscription is loaded by the others.
        apply(
            &mut b,
            found_storable("a.example.com", cert(2, NOT_AFTER), None),
            t + 1,
        );
        let (mut e, _) = worker();
        e = e.with_tier(Box::new(tier), interner.clone());
        assert_eq!(
            e.pre_handshake("a.example.com", 4, t + 2),
            PreHandshake::Park
        );
        assert_eq!(run_loads(&mut e, &interner, t + 2), [4]);
        let sel = e.for_handshake("a.example.com", t + 2);
        assert_eq!(sel.cert.unwrap().fingerprint, [2; 32]);
        assert!(asked(&e).is_empty());
    }

    #[test]
    fn a_name_a_source_no_longer_has_leaves_the_tier_too() {
        let Host {
            mut a, mut b, tier, ..
        } = host();
        fetch_and_store(&mut a, "a.example.com", NOW);
        assert_eq!(tier.len(), 1);
        // A's refresh finds the record deleted (no invalidation published).
        let t = NOW + 11 * MINUTE;
        a.for_handshake("a.example.com", t);
        apply(&mut a, fetched("a.example.com", Outcome::NotFound), t);
        assert!(tier.is_empty());
        // B, which never had the name, asks Redis instead of loading the
        // deleted certificate.
        assert_eq!(b.pre_handshake("a.example.com", 2, t), PreHandshake::Park);
        assert!(b.queue().loads.borrow().is_empty());
        assert_eq!(asked(&b), ["a.example.com"]);
        // A lookup B started before the deletion does not store it back.
        let since = tier.generation();
        apply(&mut a, fetched("a.example.com", Outcome::NotFound), t);
        assert!(!tier.store("a.example.com", b"old", &Vec::new(), since));
    }

    #[test]
    fn records_fetched_before_the_last_resubscription_are_due() {
        let d = Deadlines {
            fetched: 10,
            fresh_until: 1_000,
            stale_until: 5_000,
        };
        assert_eq!(checked_since(d, 0, 20), d, "never lost");
        assert_eq!(checked_since(d, 10, 20), d, "fetched at the epoch");
        assert_eq!(
            checked_since(d, 11, 20),
            Deadlines {
                fresh_until: 20,
                ..d
            }
        );
        // Already due earlier: unchanged.
        let due = Deadlines {
            fresh_until: 15,
            ..d
        };
        assert_eq!(checked_since(due, 11, 20), due);
    }

    #[test]
    fn a_handshake_without_peek_parses_the_tier_record_now_within_a_budget() {
        let Host {
            mut a, mut b, mb, ..
        } = host();
        fetch_and_store(&mut a, "a.example.com", NOW);
        let sel = b.for_handshake_sync("a.example.com", NOW, true);
        let (c, source) = (sel.cert, sel.source);
        assert_eq!(
            (c.map(|c| c.fingerprint), source),
            (Some([1; 32]), CertSource::Shared)
        );
        assert_eq!(mb.simple(Simple::TierSyncLoads), 1);
        // Without `sync` (a peeked TCP handshake), nothing is parsed here.
        let mut c2 = host().b;
        assert_eq!(
            c2.for_handshake_sync("a.example.com", NOW, false).source,
            CertSource::Default
        );
        // The budget: past it, the record is loaded off the event loop.
        for i in 0..SYNC_LOADS_PER_SEC + 5 {
            let name = format!("n{i}.example.com");
            a.pre_handshake(&name, 1, NOW);
            apply(&mut a, found_storable(&name, cert(1, NOT_AFTER), None), NOW);
        }
        let mut served = 0;
        for i in 0..SYNC_LOADS_PER_SEC + 5 {
            let name = format!("n{i}.example.com");
            if b.for_handshake_sync(&name, NOW, true).cert.is_some() {
                served += 1;
            }
        }
        assert_eq!(
            served,
            SYNC_LOADS_PER_SEC - 1,
            "one was spent on a.example.com"
        );
        assert_eq!(b.queue().loads.borrow().len(), 6, "the rest are loaded");
    }
}
