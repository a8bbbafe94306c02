//! On-demand certificates, the module's side: which unknown names a
//! worker queues for the issuer (`dyncert run`), and the stream format
//! both sides share. The module only queues; the issuer reads the stream,
//! asks the operator's permission endpoint, issues and publishes the
//! invalidation that makes terminators fetch the new record.
//!
//! A name is queued when a handshake on a server with `dyncert_on_demand
//! on` finds it unknown everywhere, at most once per negative-cache entry:
//! once per name, per negative-cache period, per worker. The negative
//! entry carries that one allowance ([`crate::cache::CertCache::take_on_demand`]);
//! this module says which lookups may grant it and whether a handshake
//! takes it.
#![forbid(unsafe_code)]

use crate::fetch::Step;
use crate::name::normalize_sni;
use crate::outcome::StepOutcome;

/// Default Redis stream of queued names (`dyncert_on_demand_stream`).
pub const STREAM_DEFAULT: &str = "dyncert:on-demand";
/// Default bound on the stream's length (`maxlen=`).
pub const MAXLEN_DEFAULT: usize = 10_000;
/// Largest `maxlen=`: a stream entry is about 100 bytes, so at most about
/// 100 MB of Redis memory.
pub const MAXLEN_MAX: usize = 1_000_000;

/// Where names are queued: `dyncert_on_demand_stream KEY [maxlen=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub key: String,
    /// The stream never holds more entries (exact `MAXLEN` trimming).
    pub maxlen: usize,
}

impl Default for Stream {
    fn default() -> Self {
        Stream {
            key: STREAM_DEFAULT.to_owned(),
            maxlen: MAXLEN_DEFAULT,
        }
    }
}

/// Entry field: the normalised server name (lowercase, no trailing dot).
pub const FIELD_NAME: &str = "name";
/// Entry field: when it was queued, unix seconds.
pub const FIELD_AT: &str = "at";
/// Entry field, optional: the queuing worker's process id (for the
/// operator; the issuer must not require it).
pub const FIELD_WORKER: &str = "worker";

/// Whether a lookup found the name unknown everywhere: every source
/// configured was asked and said "no such name" (a Redis miss for the
/// name and its wildcard; a 404 from the API when there is one). A
/// source that failed, timed out or refused a record means "unknown
/// here", not "unknown": an outage must not queue the whole traffic.
/// The fetcher records a step for every source it asks, and a Redis
/// error step when Redis could not even be asked, so an empty list
/// (nothing asked) is not "unknown" either.
pub fn unknown_everywhere(steps: &[Step]) -> bool {
    !steps.is_empty() && steps.iter().all(|s| s.outcome == StepOutcome::Miss)
}

/// Whether a name may be queued at all: a valid, normalised server name.
/// IP literals and invalid names never get here from a handshake (they
/// cause no lookup), but the stream is the issuer's input: checked again.
pub fn is_queueable_name(name: &str) -> bool {
    normalize_sni(name.as_bytes()).is_ok_and(|n| n == name)
}

/// The decision at a handshake that found no certificate: queue `name`
/// when its server has `dyncert_on_demand on` (`server_on`), the name is
/// valid and normalised, and `take` grants the negative entry's one
/// allowance (it holds, was made from an "unknown everywhere" lookup, and
/// was not used yet). `take` is only called when the other rules pass, so
/// a server without on-demand never uses up the allowance another server
/// of the same worker would have used.
pub fn should_enqueue(name: &str, server_on: bool, take: impl FnOnce() -> bool) -> bool {
    server_on && is_queueable_name(name) && take()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::FetchSource;
    use std::time::Duration;

    fn step(source: FetchSource, outcome: StepOutcome) -> Step {
        Step {
            source,
            outcome,
            elapsed: Duration::ZERO,
        }
    }

    const MISS: StepOutcome = StepOutcome::Miss;

    #[test]
    fn misses_everywhere_are_unknown_everywhere() {
        use FetchSource::{Api, Redis};
        assert!(unknown_everywhere(&[step(Redis, MISS), step(Redis, MISS)]));
        assert!(unknown_everywhere(&[step(Redis, MISS), step(Api, MISS)]));
        assert!(unknown_everywhere(&[step(Api, MISS)]));
    }

    #[test]
    fn a_source_that_failed_or_refused_is_not_unknown_everywhere() {
        use FetchSource::{Api, Redis};
        for bad in [
            StepOutcome::Error,
            StepOutcome::Timeout,
            StepOutcome::Refused,
        ] {
            assert!(!unknown_everywhere(&[step(Redis, bad), step(Api, MISS)]));
            assert!(!unknown_everywhere(&[step(Redis, MISS), step(Api, bad)]));
            assert!(!unknown_everywhere(&[step(Redis, MISS), step(Redis, bad)]));
        }
        assert!(!unknown_everywhere(&[step(Redis, StepOutcome::Hit)]));
        assert!(!unknown_everywhere(&[]), "nothing asked");
    }

    #[test]
    fn only_valid_normalised_names_are_queueable() {
        assert!(is_queueable_name("shop.example.com"));
        assert!(is_queueable_name("xn--bcher-kva.example"));
        for bad in [
            "",
            "Shop.example.com",
            "shop.example.com.",
            "192.0.2.1",
            "[::1]",
            "bad_name.example",
            "-bad.example",
            "a..b",
        ] {
            assert!(!is_queueable_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_server_without_on_demand_never_queues_nor_takes_the_allowance() {
        let mut taken = false;
        assert!(!should_enqueue("a.example", false, || {
            taken = true;
            true
        }));
        assert!(!taken);
    }

    #[test]
    fn an_invalid_name_never_queues_nor_takes_the_allowance() {
        let mut taken = false;
        assert!(!should_enqueue("10.0.0.1", true, || {
            taken = true;
            true
        }));
        assert!(!taken);
    }

    #[test]
    fn a_valid_name_on_an_on_demand_server_queues_when_the_allowance_is_granted() {
        assert!(should_enqueue("a.example", true, || true));
        assert!(!should_enqueue("a.example", true, || false));
    }
}
