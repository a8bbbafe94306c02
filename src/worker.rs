//! Per-worker state and the decisions taken on the event loop: what a
//! handshake gets, when a connection is parked, what a finished fetch
//! changes. Safe code: nginx objects only appear as the opaque waiter `W`.

use std::cell::Cell;
use std::sync::Arc;

use dyncert_core::cache::{CachePolicy, CertCache, Lookup};
use dyncert_core::clock::Millis;
use dyncert_core::fetch::{Event, FetchResult, Fetcher, Outcome};
use dyncert_core::flight::{Inflight, Join};
use dyncert_core::metrics::{MetricSink, Simple, W_BYTES, W_ENTRIES, W_INFLIGHT};
use dyncert_core::name::wildcard_parent;
use dyncert_core::outcome::{CertSource, FetchSource, StepOutcome};
use dyncert_core::ratelimit::LogLimiter;
use dyncert_core::validate::ParsedCert;

/// A cache entry: the parsed certificate plus the source to report for the
/// first handshake that uses it (`redis`, `api`), after which it reports
/// `cache`.
pub struct CachedCert {
    pub cert: Arc<ParsedCert>,
    first_source: Cell<Option<CertSource>>,
}

/// What the pre-handshake step does with a connection whose SNI it read.
#[derive(Debug, PartialEq, Eq)]
pub enum PreHandshake {
    /// Hand the connection to nginx now.
    Proceed,
    /// Keep it until the fetch for its name finishes or times out.
    Park,
}

/// Log levels the event loop maps onto nginx's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Warn,
    Info,
}

/// How long a name whose fetch failed waits before a refresh is retried.
const ERROR_RETRY_MS: Millis = 5_000;
/// When a refresh that could not even be queued (cap, full queue) is retried.
const QUEUE_RETRY_MS: Millis = 1_000;
/// Shortest freshness given to a certificate close to its expiry.
const REFRESH_AHEAD_FLOOR_MS: Millis = 60_000;
/// At most one source-trouble line per this interval per worker.
const ERROR_LOG_INTERVAL_MS: Millis = 10_000;
/// Memory charged per entry beyond its DER bytes: key, X509 structures,
/// the entry itself. A rough figure: `max_size=` is a bound, not a meter.
const ENTRY_OVERHEAD_BYTES: usize = 2048;

pub struct Worker<W> {
    cache: CertCache<CachedCert>,
    inflight: Inflight<W>,
    fetcher: Fetcher,
    error_log: LogLimiter,
    sink: Box<dyn MetricSink>,
}

impl<W> Worker<W> {
    pub fn new(
        policy: CachePolicy,
        concurrency: usize,
        fetcher: Fetcher,
        sink: Box<dyn MetricSink>,
    ) -> Self {
        Worker {
            cache: CertCache::new(policy),
            inflight: Inflight::new(concurrency),
            fetcher,
            error_log: LogLimiter::new(ERROR_LOG_INTERVAL_MS),
            sink,
        }
    }

    fn count(&self, s: Simple) {
        let layout = self.sink.layout();
        self.sink.add(layout.simple(s), 1);
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

    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    pub fn fetcher_mut(&mut self) -> &mut Fetcher {
        &mut self.fetcher
    }

    /// Called with the SNI read from a peeked ClientHello.
    pub fn pre_handshake(&mut self, name: &str, waiter: W, now: Millis) -> PreHandshake {
        // Only the exact name counts: a cached wildcard must not hide an
        // exact record that has not been fetched yet (exact records win).
        if self.cache.contains_usable(name, now) {
            return PreHandshake::Proceed;
        }
        let decision = match self.inflight.join(name, Some(waiter)) {
            Join::Joined => PreHandshake::Park,
            Join::Refused => {
                self.count(Simple::FetchesRefused);
                PreHandshake::Proceed
            }
            Join::Started => {
                if self.fetcher.request(name) {
                    PreHandshake::Park
                } else {
                    // Queue full or thread gone: do not wait for nothing.
                    drop(self.inflight.complete(name));
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

    /// Called from the certificate callback: the certificate to install (if
    /// any) and the source to report. Never waits; a miss schedules a fetch
    /// so a later handshake finds the name cached.
    pub fn for_handshake(
        &mut self,
        name: &str,
        now: Millis,
    ) -> (Option<Arc<ParsedCert>>, CertSource) {
        let r = match self.lookup(name, now) {
            Some((cert, first)) => (Some(cert), first.unwrap_or(CertSource::Cache)),
            None => (None, CertSource::Default),
        };
        self.publish_gauges();
        r
    }

    /// Exact name first, then its `*.parent` entry; schedules the fetches a
    /// handshake implies (miss, stale entry, exact name behind a wildcard).
    fn lookup(&mut self, name: &str, now: Millis) -> Option<(Arc<ParsedCert>, Option<CertSource>)> {
        let mut refresh = false;
        let found = match self.cache.get(name, now) {
            Lookup::Fresh(v) => Some((v.cert.clone(), v.first_source.take())),
            Lookup::Stale { value, refresh_due } => {
                refresh = refresh_due;
                Some((value.cert.clone(), value.first_source.take()))
            }
            Lookup::Negative => {
                self.count(Simple::NegativeHits);
                return None;
            }
            Lookup::Miss => {
                refresh = true;
                None
            }
        };
        if refresh {
            self.start_fetch(name, now);
        }
        if found.is_some() {
            return found;
        }
        let wildcard = wildcard_parent(name)?;
        match self.cache.get(&wildcard, now) {
            Lookup::Fresh(v) | Lookup::Stale { value: v, .. } => {
                Some((v.cert.clone(), v.first_source.take()))
            }
            Lookup::Negative | Lookup::Miss => None,
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
            Lookup::Negative | Lookup::Miss => return None,
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
            Lookup::Miss => self.start_fetch(name, now),
        }
        wildcard_parent(name).is_some_and(|w| self.cache.contains_usable(&w, now))
    }

    fn start_fetch(&mut self, name: &str, now: Millis) {
        let queued = match self.inflight.join(name, None) {
            Join::Started => {
                let ok = self.fetcher.request(name);
                if !ok {
                    drop(self.inflight.complete(name));
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
                    self.count(Simple::Resubscribes);
                    log(
                        Level::Warn,
                        "dyncert: invalidation channel subscribed again; names published \
                         meanwhile are refreshed when their \"valid\" time ends"
                            .to_owned(),
                    );
                }
                Vec::new()
            }
            Event::Warn(msg) => {
                log(Level::Warn, msg);
                Vec::new()
            }
            // Answered by the ACME handler, which the glue routes them to.
            Event::Acme { .. } => Vec::new(),
        }
    }

    /// Drops a name, a wildcard and every name served from it, or all.
    pub fn invalidate(&mut self, target: &str) {
        if target == "*" {
            self.cache.clear();
        } else if target.starts_with("*.") {
            self.cache.retain(|name, _| {
                name != target && wildcard_parent(name).as_deref() != Some(target)
            });
        } else {
            self.cache.remove(target);
        }
    }

    fn on_result(
        &mut self,
        r: FetchResult,
        now: Millis,
        log: &mut dyn FnMut(Level, String),
    ) -> Vec<W> {
        let FetchResult {
            name,
            outcome,
            steps,
            ..
        } = r;
        let layout = self.sink.layout();
        for step in &steps {
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
        match outcome {
            Outcome::Found {
                cert,
                source,
                wildcard,
            } => {
                let policy = *self.cache.policy();
                let expires = cert.not_after_ms;
                // Fresh until `valid` ends, or earlier so the certificate is
                // refreshed before its own expiry (renewals get picked up).
                // Never sooner than a retry interval: a source that keeps
                // answering with a nearly expired certificate must not cause
                // back-to-back refreshes.
                let floor = now.saturating_add(policy.valid.min(REFRESH_AHEAD_FLOOR_MS));
                let ahead = expires.saturating_sub(policy.valid).max(floor);
                let fresh_until = now.saturating_add(policy.valid).min(ahead);
                let bytes = cert.der_bytes + ENTRY_OVERHEAD_BYTES;
                if let Some(w) = wildcard {
                    let entry = CachedCert {
                        cert: cert.clone(),
                        first_source: Cell::new(Some(source)),
                    };
                    self.cache
                        .insert_weighted(w, entry, now, expires, fresh_until, bytes);
                }
                let entry = CachedCert {
                    cert,
                    first_source: Cell::new(Some(source)),
                };
                self.cache
                    .insert_weighted(name.clone(), entry, now, expires, fresh_until, bytes);
            }
            Outcome::NotFound => {
                self.cache.insert_negative(name.clone(), now);
            }
            Outcome::Refused(refusal) => {
                self.sink.add(layout.rejected(refusal.label), 1);
                log(
                    Level::Warn,
                    format!(
                        "dyncert: invalid certificate record ({}) while validating, name: \"{}\"",
                        refusal.reason, name
                    ),
                );
                // A refused update must not take down a working certificate:
                // keep a cached one (stale-if-error) and retry later.
                if self.cache.contains_usable(&name, now) {
                    self.cache.refresh_failed(&name, now, ERROR_RETRY_MS);
                } else {
                    self.cache.insert_negative(name.clone(), now);
                }
            }
            Outcome::Error(e) => {
                if let Some(suppressed) = self.error_log.allow(now) {
                    let more = if suppressed > 0 {
                        format!(" ({suppressed} similar errors suppressed)")
                    } else {
                        String::new()
                    };
                    log(Level::Warn, format!("dyncert: {e}, name: \"{name}\"{more}"));
                }
                self.cache.refresh_failed(&name, now, ERROR_RETRY_MS);
            }
        }
        self.inflight.complete(&name)
    }
}
