//! Per-worker state and the decisions taken on the event loop: what a
//! handshake gets, when a connection is parked, what a finished fetch
//! changes. Safe code: nginx objects only appear as the opaque waiter `W`.

use std::cell::Cell;
use std::sync::Arc;

use dyncert_core::cache::{CachePolicy, CertCache, Lookup, Millis};
use dyncert_core::fetch::{CertSource, FetchResult, Fetcher, Outcome};
use dyncert_core::flight::{Inflight, Join};
use dyncert_core::ratelimit::LogLimiter;
use dyncert_core::validate::ParsedCert;

/// A cache entry: the parsed certificate plus the source to report for the
/// first handshake that uses it (`redis`), after which it reports `cache`.
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
}

/// How long a name whose fetch failed waits before a refresh is retried.
const ERROR_RETRY_MS: Millis = 5_000;
/// At most one Redis-trouble line per this interval per worker.
const REDIS_LOG_INTERVAL_MS: Millis = 10_000;

pub struct Worker<W> {
    cache: CertCache<CachedCert>,
    inflight: Inflight<W>,
    fetcher: Fetcher,
    redis_log: LogLimiter,
}

impl<W> Worker<W> {
    pub fn new(policy: CachePolicy, concurrency: usize, fetcher: Fetcher) -> Self {
        Worker {
            cache: CertCache::new(policy),
            inflight: Inflight::new(concurrency),
            fetcher,
            redis_log: LogLimiter::new(REDIS_LOG_INTERVAL_MS),
        }
    }

    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    pub fn fetcher_mut(&mut self) -> &mut Fetcher {
        &mut self.fetcher
    }

    /// Called with the SNI read from a peeked ClientHello.
    pub fn pre_handshake(&mut self, name: &str, waiter: W, now: Millis) -> PreHandshake {
        if self.cache.contains_usable(name, now) {
            return PreHandshake::Proceed;
        }
        match self.inflight.join(name, Some(waiter)) {
            Join::Joined => PreHandshake::Park,
            Join::Refused => PreHandshake::Proceed,
            Join::Started => {
                if self.fetcher.request(name) {
                    PreHandshake::Park
                } else {
                    // Queue full or thread gone: do not wait for nothing.
                    drop(self.inflight.complete(name));
                    PreHandshake::Proceed
                }
            }
        }
    }

    /// Called from the certificate callback: the certificate to install (if
    /// any) and the source to report. Never waits; a miss schedules a fetch
    /// so a later handshake finds the name cached.
    pub fn for_handshake(
        &mut self,
        name: &str,
        now: Millis,
    ) -> (Option<Arc<ParsedCert>>, CertSource) {
        let mut refresh = false;
        let found = match self.cache.get(name, now) {
            Lookup::Fresh(v) => Some((v.cert.clone(), v.first_source.take())),
            Lookup::Stale { value, refresh_due } => {
                refresh = refresh_due;
                Some((value.cert.clone(), value.first_source.take()))
            }
            Lookup::Negative => None,
            Lookup::Miss => {
                refresh = true;
                None
            }
        };
        if refresh {
            self.start_fetch(name);
        }
        match found {
            Some((cert, first)) => (Some(cert), first.unwrap_or(CertSource::Cache)),
            None => (None, CertSource::Default),
        }
    }

    /// Whether a name has a certificate to serve right now (for
    /// `dyncert_unknown reject`, decided before the certificate callback).
    pub fn has_certificate(&mut self, name: &str, now: Millis) -> bool {
        match self.cache.get(name, now) {
            Lookup::Fresh(_) => true,
            Lookup::Stale { refresh_due, .. } => {
                if refresh_due {
                    self.start_fetch(name);
                }
                true
            }
            Lookup::Negative => false,
            Lookup::Miss => {
                self.start_fetch(name);
                false
            }
        }
    }

    fn start_fetch(&mut self, name: &str) {
        if let Join::Started = self.inflight.join(name, None) {
            if !self.fetcher.request(name) {
                drop(self.inflight.complete(name));
            }
        }
    }

    /// A parked connection's timer fired: forget it (the fetch goes on).
    pub fn abandon(&mut self, name: &str, pred: impl FnMut(&W) -> bool) -> Option<W> {
        self.inflight.remove_waiter(name, pred)
    }

    /// Applies a finished fetch to the cache. Returns the connections to
    /// wake; `log` receives the lines to write (no key material in them).
    pub fn on_result(
        &mut self,
        r: FetchResult,
        now: Millis,
        log: &mut dyn FnMut(Level, String),
    ) -> Vec<W> {
        let FetchResult { name, outcome, .. } = r;
        match outcome {
            Outcome::Found(cert) => {
                let expires = cert.not_after_ms;
                let entry = CachedCert {
                    cert,
                    first_source: Cell::new(Some(CertSource::Redis)),
                };
                self.cache.insert(name.clone(), entry, now, expires);
            }
            Outcome::NotFound => {
                self.cache.remove(&name);
                self.cache.insert_negative(name.clone(), now);
            }
            Outcome::Refused(refusal) => {
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
                if let Some(suppressed) = self.redis_log.allow(now) {
                    let more = if suppressed > 0 {
                        format!(" ({suppressed} similar errors suppressed)")
                    } else {
                        String::new()
                    };
                    log(
                        Level::Warn,
                        format!("dyncert: {e} while fetching from redis, name: \"{name}\"{more}"),
                    );
                }
                self.cache.refresh_failed(&name, now, ERROR_RETRY_MS);
            }
        }
        self.inflight.complete(&name)
    }
}
