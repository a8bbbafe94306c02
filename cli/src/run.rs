//! `dyncert run`: the long-running issuer. One instance of a fleet holds
//! the lease ([`crate::lease`]) and, while it does, renews what is due
//! every `--renew-every` ([`renew::renew`]) and orders certificates for
//! the names terminators put on the on-demand stream, when the ask
//! endpoint allows them and the budgets and backoff ([`crate::budget`])
//! let it. This file gathers and applies: Redis commands, the ask GET,
//! the metrics listener, signals, threads. Every decision is in the pure
//! modules.
//!
//! Threads: the main one keeps the lease; a worker renews and handles
//! the stream (renewals first, at most one batch of stream entries
//! between two checks of the schedule); one answers /metrics.

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use redis::Value;

use crate::acme::{self, OrderLock, RELEASE_LUA};
use crate::ask::{allowed, AskUrl, RateLimit, Refusals};
use crate::budget::{registered_domain, Backoff, Limit};
use crate::cert::{now_secs, record_name};
use crate::due::Window;
use crate::error::CliError;
use crate::lease::{Change, Lease, Op, Reply};
use crate::metrics::{Failure, Metrics, OnDemand, Order};
use crate::renew;
use crate::schedule::{Schedule, Step};
use crate::store::{Expect, Store};
use dyncert_core::on_demand;

/// The stream terminators add unknown names to (`dyncert_on_demand_stream`'s
/// default, shared with the module).
pub const ON_DEMAND_STREAM_DEFAULT: &str = dyncert_core::on_demand::STREAM_DEFAULT;
pub const LEASE_KEY_DEFAULT: &str = "dyncert:issuer-lease";
/// The consumer group every instance reads the stream in.
const GROUP: &str = "dyncert-issuer";
/// Hash: name -> `<next attempt> <failures>` after failed orders.
const BACKOFF_KEY: &str = "dyncert:issuer-backoff";
/// Sorted sets of order times: `<prefix>domain:<registered domain>` and
/// `<prefix>account`.
const BUDGET_PREFIX: &str = "dyncert:issuer-orders:";
/// Stream entries per read: the on-demand work between two checks of
/// the renewal schedule.
const BATCH: usize = 32;
/// Longest XREADGROUP BLOCK.
const BLOCK_MS: u64 = 1000;
/// Entries pending this long are claimed again (their handling failed).
const RECLAIM_IDLE_MS: u64 = 60_000;
/// Recent refusals remembered, and for how long.
const REFUSALS_MAX: usize = 10_000;
const REFUSAL_TTL_MS: u64 = 10 * 60 * 1000;
/// Deadline of one whole ask request: name resolution, connect, send
/// and the status line.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest name in a stream entry (a DNS name).
const NAME_MAX: usize = 253;

/// How often an idle worker looks for new stream entries.
const READ_POLL: Duration = Duration::from_millis(100);

/// KEYS[1]: the stream. ARGV: `read` (XREADGROUP of new entries) or
/// `claim` (XAUTOCLAIM of entries idle ARGV[5] ms), group, consumer,
/// count, idle, the name field, the longest name. `{id, name, ...}` with
/// `false` (nil) for a name that is missing or too long: an entry's
/// values (any size a client with write access likes) stay in Redis.
const ENTRIES_LUA: &str = "local got \
    if ARGV[1] == 'claim' then \
      got = redis.call('XAUTOCLAIM', KEYS[1], ARGV[2], ARGV[3], ARGV[5], '0-0', 'COUNT', ARGV[4])[2] \
    else \
      local r = redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4], 'STREAMS', KEYS[1], '>') \
      got = r and r[1][2] or {} \
    end \
    local out = {} \
    for _, e in ipairs(got) do \
      local name = false \
      if type(e[2]) == 'table' then \
        for i = 1, #e[2], 2 do \
          if e[2][i] == ARGV[6] then \
            if #e[2][i + 1] <= tonumber(ARGV[7]) then name = e[2][i + 1] end \
            break \
          end \
        end \
      end \
      table.insert(out, e[1]) \
      table.insert(out, name) \
    end \
    return out";

const RENEW_LUA: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";

pub struct Config {
    /// ACME options; names and policy fields are set per order.
    pub template: acme::Request,
    pub window: Window,
    pub renew_every: Duration,
    pub lease_key: String,
    pub lease_ttl_ms: u64,
    pub ask: Option<AskUrl>,
    pub ask_rate: u32,
    pub stream: String,
    pub metrics: Option<SocketAddr>,
    pub domain_limit: Limit,
    pub account_limit: Limit,
    /// Record key prefix (to see whether a record exists).
    pub prefix: String,
}

/// What the threads share.
struct Shared {
    metrics: Metrics,
    start: Instant,
    /// Issue only before this (ms since `start`); 0: not active.
    active_until: AtomicU64,
    /// Bumped at each takeover, so the worker claims pending entries.
    epoch: AtomicU64,
    stop: Arc<AtomicBool>,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn is_active(&self) -> bool {
        self.now_ms() < self.active_until.load(Ordering::SeqCst)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

fn log(line: std::fmt::Arguments<'_>) {
    eprintln!("dyncert run: {line}");
}

/// Runs until SIGTERM or SIGINT; `lease_store` and `work_store` are two
/// connections (the worker's blocking reads must not hold up renewals of
/// the lease).
pub fn run(mut lease_store: Store, work_store: Store, cfg: Config) -> Result<u8, CliError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| CliError::Input(format!("cannot handle signals: {e}")))?;
    }
    let shared = Arc::new(Shared {
        metrics: Metrics::new(),
        start: Instant::now(),
        active_until: AtomicU64::new(0),
        epoch: AtomicU64::new(0),
        stop,
    });
    if let Some(addr) = cfg.metrics {
        let listener = TcpListener::bind(addr)
            .map_err(|e| CliError::Input(format!("--metrics {addr}: {e}")))?;
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("dyncert-metrics".into())
            .spawn(move || serve_metrics(listener, &shared))
            .map_err(|e| CliError::Input(format!("cannot start the metrics thread: {e}")))?;
    }
    let id = instance_id()?;
    match &cfg.ask {
        Some(_) => log(format_args!(
            "instance {id}: on-demand names are asked at --ask, at most {}/s",
            cfg.ask_rate
        )),
        None => log(format_args!(
            "instance {id}: no --ask: every on-demand name is refused"
        )),
    }
    let lease_key = cfg.lease_key.clone();
    let ttl = cfg.lease_ttl_ms;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    {
        let shared = Arc::clone(&shared);
        let id = id.clone();
        std::thread::Builder::new()
            .name("dyncert-worker".into())
            .spawn(move || {
                Worker::new(work_store, cfg, id, &shared).run(&shared);
                let _ = done_tx.send(());
            })
            .map_err(|e| CliError::Input(format!("cannot start the worker thread: {e}")))?;
    }

    let mut lease = Lease::new(ttl);
    while !shared.stopping() {
        let now = shared.now_ms();
        let reply = lease_op(&mut lease_store, lease.next_op(), &lease_key, &id, ttl);
        let change = lease.apply(now, reply);
        shared
            .active_until
            .store(lease.active_until(), Ordering::SeqCst);
        match change {
            Change::None => {}
            Change::Gained => {
                shared.metrics.takeovers.fetch_add(1, Ordering::Relaxed);
                shared.epoch.fetch_add(1, Ordering::SeqCst);
                log(format_args!("lease \"{lease_key}\": acquired, active"));
            }
            Change::Paused => log(format_args!(
                "lease \"{lease_key}\": renewal failed (Redis), issuing paused"
            )),
            Change::Resumed => log(format_args!(
                "lease \"{lease_key}\": renewed again, issuing resumed"
            )),
            Change::Lost => log(format_args!("lease \"{lease_key}\": lost, standby")),
        }
        let until = shared.now_ms() + lease.interval_ms();
        while !shared.stopping() && shared.now_ms() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    shared.active_until.store(0, Ordering::SeqCst);
    if lease.holds() {
        let released: Result<i64, CliError> = lease_store.q(redis::cmd("EVAL")
            .arg(RELEASE_LUA)
            .arg(1)
            .arg(&lease_key)
            .arg(&id)
            .clone());
        match released {
            Ok(_) => log(format_args!("lease \"{lease_key}\": released")),
            Err(e) => log(format_args!("lease \"{lease_key}\": release failed: {e}")),
        }
        lease.release();
    }
    // The worker finishes the name it is on (bounded: an order has its
    // deadlines); a renew pass in progress is left to the next instance.
    let _ = done_rx.recv_timeout(Duration::from_secs(10));
    log(format_args!("stopped"));
    Ok(0)
}

fn lease_op(store: &mut Store, op: Op, key: &str, id: &str, ttl_ms: u64) -> Reply {
    let result: Result<bool, CliError> = match op {
        Op::Acquire => store
            .q::<Option<String>>(
                redis::cmd("SET")
                    .arg(key)
                    .arg(id)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .clone(),
            )
            .map(|r| r.is_some()),
        Op::Renew => store
            .q::<i64>(
                redis::cmd("EVAL")
                    .arg(RENEW_LUA)
                    .arg(1)
                    .arg(key)
                    .arg(id)
                    .arg(ttl_ms)
                    .clone(),
            )
            .map(|n| n == 1),
    };
    match result {
        Ok(true) => Reply::Held,
        Ok(false) => Reply::NotHeld,
        Err(e) => {
            log(format_args!("lease \"{key}\": {e}"));
            Reply::Error
        }
    }
}

/// `<pid>-<16 hex digits>`: unique per process, names the consumer too.
fn instance_id() -> Result<String, CliError> {
    let mut b = [0u8; 8];
    openssl::rand::rand_bytes(&mut b)
        .map_err(|e| CliError::Input(format!("random instance id: {e}")))?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!("{}-{hex}", std::process::id()))
}

/// One stream entry: its id and the name it carries (`None`: malformed).
struct Entry {
    id: String,
    name: Option<String>,
}

/// What to do with an entry once handled.
enum Handled {
    Ack,
    /// Leave it pending: this instance stopped being active, or Redis
    /// failed; it is claimed again later.
    Keep,
}

struct Worker {
    store: Store,
    cfg: Config,
    id: String,
    rate: RateLimit,
    refusals: Refusals,
}

impl Worker {
    fn new(store: Store, cfg: Config, id: String, shared: &Shared) -> Worker {
        let rate = RateLimit::new(cfg.ask_rate, shared.now_ms());
        Worker {
            store,
            cfg,
            id,
            rate,
            refusals: Refusals::new(REFUSALS_MAX, REFUSAL_TTL_MS),
        }
    }

    fn run(&mut self, shared: &Shared) {
        let schedule = Schedule {
            renew_every_ms: self.cfg.renew_every.as_millis() as u64,
            reclaim_every_ms: RECLAIM_IDLE_MS,
            block_max_ms: BLOCK_MS,
        };
        let mut seen_epoch = 0;
        let mut last_pass: Option<Instant> = None;
        let mut last_claim = Instant::now();
        let ms = |t: Instant| t.elapsed().as_millis() as u64;
        while !shared.stopping() {
            if !shared.is_active() {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            let epoch = shared.epoch.load(Ordering::SeqCst);
            match schedule.next(epoch != seen_epoch, last_pass.map(ms), ms(last_claim)) {
                Step::Takeover => match self.ensure_group().and_then(|()| self.claim(0)) {
                    Ok(claimed) => {
                        seen_epoch = epoch;
                        last_pass = None;
                        last_claim = Instant::now();
                        if !claimed.is_empty() {
                            log(format_args!(
                                "claimed {} pending on-demand entries",
                                claimed.len()
                            ));
                        }
                        self.handle_batch(claimed, shared);
                    }
                    Err(e) => self.redis_failed(shared, &e),
                },
                Step::RenewPass => {
                    self.renew_pass(shared);
                    last_pass = Some(Instant::now());
                }
                Step::Reclaim => {
                    // Entries left pending here (Redis failed, or issuing
                    // was paused mid-batch) are handled again.
                    last_claim = Instant::now();
                    match self.claim(RECLAIM_IDLE_MS) {
                        Ok(claimed) => self.handle_batch(claimed, shared),
                        Err(e) => self.redis_failed(shared, &e),
                    }
                }
                Step::Read { block_ms } => match self.read(block_ms, shared) {
                    Ok(entries) => self.handle_batch(entries, shared),
                    Err(e) => self.redis_failed(shared, &e),
                },
            }
        }
    }

    fn redis_failed(&self, shared: &Shared, e: &CliError) {
        shared.metrics.failure(Failure::Redis);
        log(format_args!("{e}"));
        std::thread::sleep(Duration::from_secs(1));
    }

    /// The existing renew path over the index, and what it changed.
    fn renew_pass(&mut self, shared: &Shared) {
        let before: HashMap<String, i64> = match self.store.expiring(None) {
            Ok(e) => e.into_iter().collect(),
            Err(e) => return self.redis_failed(shared, &e),
        };
        let opts = renew::Options {
            window: self.cfg.window,
            dry_run: false,
            jitter: true,
        };
        let code = renew::renew(&mut self.store, &opts, &self.cfg.template);
        shared.metrics.renew_passes.fetch_add(1, Ordering::Relaxed);
        let after = match self.store.expiring(None) {
            Ok(e) => e,
            Err(e) => return self.redis_failed(shared, &e),
        };
        let mut renewed = 0;
        for (name, not_after) in &after {
            if before.get(name).is_some_and(|old| old != not_after) {
                renewed += 1;
                shared.metrics.order(Order::Renewed);
                // Renewals count against the account's orders (not the
                // domain's: renewals are exempt from that limit).
                let _ = self.count_order(None, name);
            }
        }
        shared.metrics.next_expiry.store(
            after.first().map_or(i64::MIN, |(_, t)| *t),
            Ordering::Relaxed,
        );
        match code {
            Ok(0) => log(format_args!("renew pass: {renewed} renewed")),
            Ok(_) => {
                shared.metrics.failure(Failure::Renew);
                log(format_args!(
                    "renew pass: {renewed} renewed, some failed (see above)"
                ));
            }
            Err(e) => {
                shared.metrics.failure(Failure::Renew);
                log(format_args!("renew pass failed: {e}"));
            }
        }
    }

    fn ensure_group(&mut self) -> Result<(), CliError> {
        let created: Result<(), CliError> = self.store.q(redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.cfg.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .clone());
        match created {
            Err(CliError::Redis(m)) if m.contains("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Entries pending longer than `idle_ms` (any consumer), now ours.
    fn claim(&mut self, idle_ms: u64) -> Result<Vec<Entry>, CliError> {
        self.entries("claim", idle_ms)
    }

    /// New entries, waiting up to `block_ms` for some. Polled rather than
    /// read with BLOCK: a blocking read transfers whole entries, and the
    /// script that bounds them cannot block.
    fn read(&mut self, block_ms: u64, shared: &Shared) -> Result<Vec<Entry>, CliError> {
        let until = Instant::now() + Duration::from_millis(block_ms);
        loop {
            let got = self.entries("read", 0)?;
            let left = until.saturating_duration_since(Instant::now());
            if !got.is_empty() || left.is_zero() || shared.stopping() {
                return Ok(got);
            }
            std::thread::sleep(left.min(READ_POLL));
        }
    }

    /// Up to [`BATCH`] entries, read (`"read"`) or claimed (`"claim"`) by
    /// [`ENTRIES_LUA`]: ids and bounded names only.
    fn entries(&mut self, how: &str, idle_ms: u64) -> Result<Vec<Entry>, CliError> {
        let reply: Value = self.store.q(redis::cmd("EVAL")
            .arg(ENTRIES_LUA)
            .arg(1)
            .arg(&self.cfg.stream)
            .arg(how)
            .arg(GROUP)
            .arg(&self.id)
            .arg(BATCH)
            .arg(idle_ms)
            .arg(on_demand::FIELD_NAME)
            .arg(NAME_MAX)
            .clone())?;
        Ok(script_entries(&reply))
    }

    fn handle_batch(&mut self, batch: Vec<Entry>, shared: &Shared) {
        let mut seen = HashSet::new();
        for entry in batch {
            if !shared.is_active() {
                // The rest stays pending for whoever is active.
                return;
            }
            let handled = match &entry.name {
                None => {
                    shared.metrics.on_demand(OnDemand::Refused);
                    log(format_args!(
                        "on-demand entry {}: no name, dropped",
                        entry.id
                    ));
                    Handled::Ack
                }
                Some(raw) => self.handle(raw, &mut seen, shared),
            };
            if let Handled::Ack = handled {
                let acked: Result<i64, CliError> = self.store.q(redis::cmd("XACK")
                    .arg(&self.cfg.stream)
                    .arg(GROUP)
                    .arg(&entry.id)
                    .clone());
                if let Err(e) = acked {
                    self.redis_failed(shared, &e);
                }
            }
        }
    }

    fn handle(&mut self, raw: &str, seen: &mut HashSet<String>, shared: &Shared) -> Handled {
        let m = &shared.metrics;
        let name = match record_name(raw) {
            Ok(n) if !n.starts_with("*.") => n,
            Ok(_) | Err(_) => {
                m.on_demand(OnDemand::Refused);
                log(format_args!(
                    "on-demand \"{}\": refused (not a host name that can be ordered on demand)",
                    raw.escape_default()
                ));
                return Handled::Ack;
            }
        };
        // The module queues no such name (on_demand::decide), but the
        // stream is anyone's with write access to Redis: checked again
        // before the ask endpoint and the CA are troubled with it.
        if let Some(why) = on_demand::unissuable(&name) {
            m.on_demand(OnDemand::Refused);
            log(format_args!(
                "on-demand \"{name}\": refused (no CA can issue for {})",
                why.as_str()
            ));
            return Handled::Ack;
        }
        if !seen.insert(name.clone()) {
            return Handled::Ack;
        }
        match self.decide(&name, shared) {
            Ok(Some(outcome)) => {
                m.on_demand(outcome);
                Handled::Ack
            }
            Ok(None) => Handled::Keep,
            Err(e) => {
                self.redis_failed(shared, &e);
                Handled::Keep
            }
        }
    }

    /// The checks, cheapest first, then the order. `None`: not decided
    /// (this instance stopped being active), keep the entry.
    fn decide(&mut self, name: &str, shared: &Shared) -> Result<Option<OnDemand>, CliError> {
        let m = &shared.metrics;
        let now_ms = shared.now_ms();
        if self.refusals.refused(name, now_ms) {
            log(format_args!("on-demand \"{name}\": refused (recently)"));
            return Ok(Some(OnDemand::Refused));
        }
        let exists: i64 = self.store.q(redis::cmd("EXISTS")
            .arg(format!("{}{name}", self.cfg.prefix))
            .clone())?;
        if exists > 0 {
            log(format_args!("on-demand \"{name}\": a record exists"));
            return Ok(Some(OnDemand::Exists));
        }
        let now = now_secs();
        if let Some(b) = self.backoff(name)? {
            if b.waiting(now) {
                log(format_args!(
                    "on-demand \"{name}\": deferred (backoff after {} failures, next attempt in {} s)",
                    b.failures,
                    b.next_attempt - now
                ));
                return Ok(Some(OnDemand::Deferred));
            }
        }
        let Some(ask) = &self.cfg.ask else {
            self.refusals.remember(name, now_ms);
            return Ok(Some(OnDemand::Refused));
        };
        if !self.rate.take(now_ms) {
            log(format_args!(
                "on-demand \"{name}\": dropped (over --ask-rate)"
            ));
            return Ok(Some(OnDemand::Dropped));
        }
        m.ask_calls.fetch_add(1, Ordering::Relaxed);
        let verdict = ask_endpoint(ask, name);
        if verdict != Ok(true) {
            if let Err(e) = &verdict {
                m.failure(Failure::Ask);
                log(format_args!("on-demand \"{name}\": ask failed: {e}"));
            }
            self.refusals.remember(name, now_ms);
            log(format_args!(
                "on-demand \"{name}\": refused by the ask endpoint"
            ));
            return Ok(Some(OnDemand::Refused));
        }
        if let Some(which) = self.over_budget(name, now)? {
            m.failure(Failure::Budget);
            log(format_args!(
                "on-demand \"{name}\": deferred ({which} budget spent)"
            ));
            return Ok(Some(OnDemand::Deferred));
        }
        if !shared.is_active() {
            return Ok(None);
        }
        // Taken before the budget counts the order: an order in flight
        // elsewhere (another issuer, `dyncert renew` from cron) is not
        // one more here.
        let ttl = self.cfg.template.order_lock_ttl;
        let Some(lock) = OrderLock::acquire(&mut self.store, name, ttl)? else {
            log(format_args!(
                "on-demand \"{name}\": deferred (ordered elsewhere)"
            ));
            return Ok(Some(OnDemand::Deferred));
        };
        let outcome = self.order(name, now, shared, &lock);
        // The lock expires by itself; what the order did stands (an
        // error here would keep the entry for another attempt).
        if let Err(e) = lock.release(&mut self.store) {
            shared.metrics.failure(Failure::Redis);
            log(format_args!(
                "{}",
                acme::unreleased_warning(name, ttl, &e).trim_start_matches("dyncert: ")
            ));
        }
        outcome
    }

    /// The order itself, with its budget entries and its backoff.
    fn order(
        &mut self,
        name: &str,
        now: i64,
        shared: &Shared,
        lock: &OrderLock,
    ) -> Result<Option<OnDemand>, CliError> {
        let m = &shared.metrics;
        self.count_order(Some(registered_domain(name)), name)?;
        let mut req = self.cfg.template.clone();
        req.names = vec![name.to_owned()];
        // Ordered because no record existed: one stored meanwhile (an
        // operator's put) wins over the certificate ordered here.
        req.expect = Some(Expect::Absent);
        match acme::issue_locked(&mut self.store, &req, lock) {
            Ok(p) => {
                // Stored: the invalidation goes first, and nothing after
                // it undoes the store or its report. A Redis error in the
                // bookkeeping is a warning (a stale backoff entry is
                // harmless: a name with a record is never ordered).
                m.order(Order::Issued);
                let (said, failed) = crate::publish(&mut self.store, &p.name);
                log(format_args!(
                    "on-demand \"{name}\": issued, notAfter {}; {said}",
                    dyncert_core::timefmt::rfc3339(p.not_after.max(0) as u64),
                ));
                if let Some(e) = failed {
                    m.failure(Failure::Redis);
                    let warning = crate::unpublished_warning(&p.name, &e);
                    log(format_args!("{}", warning.trim_start_matches("dyncert: ")));
                }
                let cleared: Result<i64, CliError> = self
                    .store
                    .q(redis::cmd("HDEL").arg(BACKOFF_KEY).arg(name).clone());
                if let Err(e) = cleared {
                    m.failure(Failure::Redis);
                    log(format_args!(
                        "warning: on-demand \"{name}\": its backoff was not cleared ({e})"
                    ));
                }
                Ok(Some(OnDemand::Issued))
            }
            Err(CliError::Redis(e)) => Err(CliError::Redis(e)),
            // The lock passed to another process mid-order: that one
            // orders the name; no backoff for a failure that was not one.
            Err(CliError::Busy(why)) => {
                log(format_args!("on-demand \"{name}\": deferred ({why})"));
                Ok(Some(OnDemand::Deferred))
            }
            Err(CliError::Changed(why)) => {
                let _: i64 = self
                    .store
                    .q(redis::cmd("HDEL").arg(BACKOFF_KEY).arg(name).clone())?;
                log(format_args!("on-demand \"{name}\": {why}"));
                Ok(Some(OnDemand::Exists))
            }
            Err(e) => {
                let b = Backoff::after_failure(self.backoff(name)?, now);
                let _: i64 = self.store.q(redis::cmd("HSET")
                    .arg(BACKOFF_KEY)
                    .arg(name)
                    .arg(b.encode())
                    .clone())?;
                m.order(Order::Failed);
                m.failure(Failure::Acme);
                log(format_args!(
                    "on-demand \"{name}\": failed ({e}); next attempt in {} s",
                    b.next_attempt - now
                ));
                Ok(Some(OnDemand::Deferred))
            }
        }
    }

    fn backoff(&mut self, name: &str) -> Result<Option<Backoff>, CliError> {
        let v: Option<String> = self
            .store
            .q(redis::cmd("HGET").arg(BACKOFF_KEY).arg(name).clone())?;
        Ok(v.as_deref().and_then(Backoff::decode))
    }

    /// Which budget (`"domain"`, `"account"`) has no room, if one.
    fn over_budget(&mut self, name: &str, now: i64) -> Result<Option<&'static str>, CliError> {
        let domain = format!("{BUDGET_PREFIX}domain:{}", registered_domain(name));
        let account = format!("{BUDGET_PREFIX}account");
        for (key, limit, which) in [
            (domain, self.cfg.domain_limit, "domain"),
            (account, self.cfg.account_limit, "account"),
        ] {
            let _: i64 = self.store.q(redis::cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(limit.window_start(now))
                .clone())?;
            let n: u64 = self.store.q(redis::cmd("ZCARD").arg(&key).clone())?;
            if !limit.allows(n) {
                return Ok(Some(which));
            }
        }
        Ok(None)
    }

    /// Records one new order against the account and, when given, the
    /// registered domain (each set expires after its window).
    fn count_order(&mut self, domain: Option<&str>, name: &str) -> Result<(), CliError> {
        let now = now_secs();
        let member = format!("{now}:{name}:{}", self.id);
        let mut sets = vec![(format!("{BUDGET_PREFIX}account"), self.cfg.account_limit)];
        if let Some(d) = domain {
            sets.push((format!("{BUDGET_PREFIX}domain:{d}"), self.cfg.domain_limit));
        }
        for (key, limit) in sets {
            let _: i64 =
                self.store
                    .q(redis::cmd("ZADD").arg(&key).arg(now).arg(&member).clone())?;
            let _: i64 = self.store.q(redis::cmd("EXPIRE")
                .arg(&key)
                .arg(limit.period_secs)
                .clone())?;
        }
        Ok(())
    }
}

/// [`ENTRIES_LUA`]'s reply: `[id, name or nil, ...]`; a name is kept
/// only when it is non-empty UTF-8 of at most [`NAME_MAX`] bytes.
fn script_entries(v: &Value) -> Vec<Entry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    items
        .chunks(2)
        .filter_map(|pair| {
            let id = text(pair.first()?)?;
            let name = pair
                .get(1)
                .and_then(text)
                .filter(|n| !n.is_empty() && n.len() <= NAME_MAX);
            Some(Entry { id, name })
        })
        .collect()
}

/// `GET <ask>?domain=<name>`: Ok(true) on a 2xx status. The whole
/// request (name resolution, connect, request, status line) has one
/// deadline, [`ASK_TIMEOUT`]: a timeout per read would let an endpoint
/// that trickles a byte every few seconds hold the worker, and every
/// name behind it, for as long as it likes.
fn ask_endpoint(ask: &AskUrl, name: &str) -> Result<bool, String> {
    let deadline = Instant::now() + ASK_TIMEOUT;
    let late = || format!("no answer within {} s", ASK_TIMEOUT.as_secs());
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(late)
    };
    let addr = resolve(&ask.host, ask.port, left()?)?;
    let mut conn = TcpStream::connect_timeout(&addr, left()?).map_err(|e| e.to_string())?;
    let host = if ask.host.contains(':') {
        format!("[{}]:{}", ask.host, ask.port)
    } else {
        format!("{}:{}", ask.host, ask.port)
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: dyncert\r\nConnection: close\r\n\r\n",
        ask.target(name)
    );
    // One small write: it fits the socket buffer, so one timeout bounds it.
    conn.set_write_timeout(Some(left()?))
        .and_then(|()| conn.write_all(request.as_bytes()))
        .map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let mut buf = [0u8; 256];
    while line.len() < 1024 && !line.contains(&b'\n') {
        conn.set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(late())
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let first = line.split(|b| *b == b'\n').next().unwrap_or_default();
    Ok(allowed(String::from_utf8_lossy(first).trim_end()))
}

/// Set while a name resolution that outlived its request is still
/// running: at most one such thread at a time.
static RESOLVING: AtomicBool = AtomicBool::new(false);

/// `host:port`'s first address within `limit`. An IP literal needs no
/// lookup; a host name is resolved on a thread of its own (getaddrinfo
/// has no timeout), and a lookup still stuck from an earlier request
/// fails the next ones at once rather than piling up threads.
fn resolve(host: &str, port: u16, limit: Duration) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if RESOLVING.swap(true, Ordering::SeqCst) {
        return Err(format!(
            "{host}: an earlier name resolution is still running"
        ));
    }
    let (tx, rx) = mpsc::channel();
    let owned = host.to_owned();
    let spawned = std::thread::Builder::new()
        .name("dyncert-resolve".into())
        .spawn(move || {
            let found = (owned.as_str(), port)
                .to_socket_addrs()
                .map(|mut a| a.next());
            RESOLVING.store(false, Ordering::SeqCst);
            let _ = tx.send(found);
        });
    if let Err(e) = spawned {
        RESOLVING.store(false, Ordering::SeqCst);
        return Err(format!("{host}: cannot resolve: {e}"));
    }
    match rx.recv_timeout(limit) {
        Ok(Ok(Some(addr))) => Ok(addr),
        Ok(Ok(None)) => Err(format!("{host}: no address")),
        Ok(Err(e)) => Err(format!("{host}: {e}")),
        Err(_) => Err(format!(
            "{host}: name resolution took longer than {} ms",
            limit.as_millis()
        )),
    }
}

/// Connections `/metrics` answers at once; more are closed unanswered.
const METRICS_CONNECTIONS: usize = 8;
/// Whole-request bound of one metrics connection (head read and answer).
const METRICS_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /metrics` answers the exposition; anything else 404. Each
/// connection on a thread of its own, with one deadline for the whole
/// exchange and at most [`METRICS_CONNECTIONS`] at once: a client that
/// trickles its request (or many of them) cannot keep the scraper out
/// for longer than that deadline.
fn serve_metrics(listener: TcpListener, shared: &Arc<Shared>) {
    let open = Arc::new(AtomicU64::new(0));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if open.fetch_add(1, Ordering::SeqCst) >= METRICS_CONNECTIONS as u64 {
            open.fetch_sub(1, Ordering::SeqCst);
            drop(conn);
            continue;
        }
        let (shared, done) = (Arc::clone(shared), Arc::clone(&open));
        let spawned = std::thread::Builder::new()
            .name("dyncert-metrics-conn".into())
            .spawn(move || {
                answer_metrics(conn, &shared);
                done.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn answer_metrics(mut conn: TcpStream, shared: &Shared) {
    let deadline = Instant::now() + METRICS_TIMEOUT;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let Some(limit) = left() else { return };
        if conn.set_read_timeout(Some(limit)).is_err() {
            return;
        }
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let first = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let is_metrics = first.starts_with(b"GET /metrics ") || first == b"GET /metrics";
    shared
        .metrics
        .active
        .store(u64::from(shared.is_active()), Ordering::Relaxed);
    let (status, body) = if is_metrics {
        ("200 OK", shared.metrics.render(now_secs()))
    } else {
        ("404 Not Found", "not found\n".to_owned())
    };
    let Some(limit) = left() else { return };
    let _ = conn.set_write_timeout(Some(limit));
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn script_replies_give_ids_and_bounded_names() {
        let long = "a".repeat(NAME_MAX + 1);
        let reply = Value::Array(vec![
            bulk("1-0"),
            bulk("a.example"),
            bulk("2-0"),
            Value::Nil,
            bulk("3-0"),
            bulk(&long),
            bulk("4-0"),
            bulk(""),
            bulk("5-0"),
        ]);
        let got: Vec<(String, Option<String>)> = script_entries(&reply)
            .into_iter()
            .map(|e| (e.id, e.name))
            .collect();
        assert_eq!(
            got,
            [
                ("1-0".to_owned(), Some("a.example".to_owned())),
                ("2-0".to_owned(), None),
                ("3-0".to_owned(), None),
                ("4-0".to_owned(), None),
                ("5-0".to_owned(), None),
            ]
        );
        assert!(script_entries(&Value::Nil).is_empty());
    }
}
