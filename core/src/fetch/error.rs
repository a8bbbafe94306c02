//! Why a lookup or a read failed, as types: the worker and the metrics
//! take the kind of failure from the variant, the log line from
//! `Display`. No variant carries record data, header values or the Redis
//! password. Also what a failed Redis command means: whether a retry on a
//! fresh connection may help.

use super::MAX_ACME_VALUE;
use crate::api::ApiError;

/// Why a certificate lookup got no answer ([`super::Outcome::Error`]).
/// The text names the source that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Redis failed, and no API answered with a certificate instead (an
    /// API's "not found" does not speak for the records Redis keeps).
    #[error("{0} while fetching from redis")]
    Redis(RedisError),
    #[error("{0} while fetching from the api")]
    Api(ApiError),
    /// The API was not asked: this worker's `dyncert_api rate=` cap was
    /// reached. An error, not "not found": the API may have the name.
    #[error("the API's request rate cap (rate={0}) was reached while fetching from the api")]
    ApiRateLimited(u32),
    /// Every lookup in flight already has a record waiting to be parsed.
    #[error("the record parse queue is full")]
    ParseQueueFull,
    /// The parse thread dropped the record (it panicked or is stopping).
    #[error("the record parse failed")]
    ParseFailed,
    /// The fetcher thread could not build its runtime: every lookup fails.
    #[error("cannot start the fetcher runtime: {0}")]
    Runtime(String),
    /// The lookup panicked (a bug in dyncert): answered as failed, so the
    /// name does not stay in flight.
    #[error("internal error (panic) while fetching")]
    LookupPanicked,
    /// The lookup ran past its bound (ms, [`super::FetcherConfig::lookup_bound`])
    /// from when it was queued: slow sources, or records waiting long to
    /// be parsed under load. Answered as failed, before the in-flight
    /// deadline would start it again.
    #[error("the lookup did not finish within {0} ms (redis, the api and the record parse queue together)")]
    LookupTimedOut(u64),
}

/// Why an ACME challenge read got no answer
/// ([`super::AcmeAnswer::Error`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcmeError {
    #[error("no redis configured")]
    NoRedis,
    #[error("{0}")]
    Redis(RedisError),
    /// Longer than any key authorization: not served.
    #[error("value longer than {MAX_ACME_VALUE} bytes")]
    TooLong,
    /// The read panicked (a bug in the module): answered as an error.
    #[error("internal error (panic) while reading")]
    ReadPanicked,
}

/// A Redis connection, command or subscription that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    /// The client could not be built from the URL (`nginx -t` checks it,
    /// so this is not expected at run time).
    #[error("{0}")]
    Client(String),
    /// The redis crate's error: command names and server messages, never
    /// values; bounded (see [`RedisError::command`]).
    #[error("{0}")]
    Command(String),
    /// A command ran out of `dyncert_redis_timeout` (Redis hangs).
    #[error("redis command timed out")]
    Timeout,
    /// Connecting for the invalidation subscription ran out of time.
    #[error("redis connect timed out")]
    ConnectTimeout,
    #[error("redis SUBSCRIBE timed out")]
    SubscribeTimeout,
    /// A PING on the invalidation subscription went unanswered for
    /// `dyncert_redis_timeout`: the connection is taken as dead.
    #[error("redis PING timed out")]
    HeartbeatTimeout,
    /// The server ended the invalidation subscription.
    #[error("subscription closed")]
    SubscriptionClosed,
    /// The sentinels named another primary than the one subscribed to.
    #[error("the sentinels named a new primary")]
    PrimaryMoved,
}

impl RedisError {
    /// Longest error text kept from the redis crate.
    const MAX_TEXT: usize = 200;

    /// The error of a failed command or connection, its text bounded.
    pub(super) fn command(e: &redis::RedisError) -> RedisError {
        let s = e.to_string();
        if s.len() > Self::MAX_TEXT {
            let mut end = Self::MAX_TEXT;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            RedisError::Command(format!("{}...", &s[..end]))
        } else {
            RedisError::Command(s)
        }
    }
}

/// A connection error: the manager reconnects, a retry may succeed.
pub(super) fn retryable(e: &redis::RedisError) -> bool {
    // A timeout means Redis hangs: retrying would only double the wait.
    !e.is_timeout() && (e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn texts_name_the_source_as_the_log_lines_always_did() {
        let cases = [
            (
                FetchError::Redis(RedisError::Timeout),
                "redis command timed out while fetching from redis",
            ),
            (
                FetchError::Redis(RedisError::Command("Connection refused".into())),
                "Connection refused while fetching from redis",
            ),
            (
                FetchError::Api(ApiError::Timeout(Duration::from_secs(3))),
                "timed out after 3s while fetching from the api",
            ),
            (
                FetchError::Api(ApiError::Status(503)),
                "status 503 while fetching from the api",
            ),
            (
                FetchError::ApiRateLimited(5),
                "the API's request rate cap (rate=5) was reached while fetching from the api",
            ),
            (FetchError::ParseQueueFull, "the record parse queue is full"),
            (FetchError::ParseFailed, "the record parse failed"),
            (
                FetchError::LookupPanicked,
                "internal error (panic) while fetching",
            ),
            (
                FetchError::Runtime("out of memory".into()),
                "cannot start the fetcher runtime: out of memory",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
        assert_eq!(AcmeError::NoRedis.to_string(), "no redis configured");
        assert_eq!(
            AcmeError::Redis(RedisError::Timeout).to_string(),
            "redis command timed out"
        );
        assert_eq!(
            AcmeError::TooLong.to_string(),
            "value longer than 512 bytes"
        );
        assert_eq!(
            RedisError::SubscribeTimeout.to_string(),
            "redis SUBSCRIBE timed out"
        );
        assert_eq!(
            RedisError::ConnectTimeout.to_string(),
            "redis connect timed out"
        );
        assert_eq!(
            RedisError::HeartbeatTimeout.to_string(),
            "redis PING timed out"
        );
        assert_eq!(
            RedisError::SubscriptionClosed.to_string(),
            "subscription closed"
        );
    }

    #[test]
    fn long_redis_errors_are_cut_at_a_char_boundary() {
        let long = redis::RedisError::from((redis::ErrorKind::Client, "refused", "é".repeat(300)));
        let RedisError::Command(text) = RedisError::command(&long) else {
            panic!("not a command error");
        };
        assert!(text.ends_with("..."), "{text}");
        assert!(text.len() <= RedisError::MAX_TEXT + 3, "{}", text.len());
    }
}
