//! ACME HTTP-01 (RFC 8555 §8.3) request rules: which paths are challenge
//! requests, which tokens may become part of a Redis key, and how many
//! Redis reads challenge requests may cost.
//!
//! Port 80 is open to anyone, so challenge requests are bounded like
//! certificate fetches: requests for one token share one read, at most
//! [`Limits::max_reads`] distinct tokens are read at once, and a token
//! Redis did not have is answered 404 without another read for a short
//! while. Past the bound a request is answered 503 at once instead of
//! queueing work behind Redis.

use crate::clock::Millis;
use crate::fetch::AcmeAnswer;
use crate::flight::{Inflight, Join};
use crate::lru::Lru;

/// The path prefix CAs request.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Longest token accepted (RFC 8555 requires at least 128 bits of
/// entropy, 22+ base64url characters; real ones are 43).
pub const MAX_TOKEN: usize = 128;

/// The token of a challenge path, if `path` is one. The token itself may
/// still be invalid (see [`valid_token`]).
pub fn challenge_token(path: &[u8]) -> Option<&[u8]> {
    path.strip_prefix(CHALLENGE_PREFIX.as_bytes())
}

/// base64url alphabet without padding, 1..=MAX_TOKEN bytes: anything else
/// is answered without any lookup.
pub fn valid_token(token: &[u8]) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN
        && token
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `value` is an HTTP-01 key authorization for `token`
/// (RFC 8555 §8.1: the token, `.`, and the base64url account key
/// thumbprint). Only such a value is answered: the challenge path reads
/// `<prefix><token>` for any token, so with a prefix shared with other
/// keys (`dyncert_acme_prefix dyncert:`) anyone on port 80 could read any
/// string key under it (the session ticket keys, an account key).
pub fn is_key_authorization(token: &[u8], value: &[u8]) -> bool {
    value
        .strip_prefix(token)
        .and_then(|rest| rest.strip_prefix(b"."))
        .is_some_and(valid_token)
}

/// `Retry-After` of a 503 past the bounds, in seconds: a read takes
/// milliseconds, so a slot is free again long before a client retries.
pub const RETRY_AFTER: &str = "1";

/// Bounds of one worker's challenge lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most distinct tokens read from Redis at once; also the size of the
    /// fetcher's ACME queue, which therefore never fills while the gate
    /// holds. A CA asks for one token from a few vantage points and an
    /// issuer has a few orders open at a time: 16 is far above that.
    pub max_reads: usize,
    /// Most requests waiting for those reads (any number may wait for one
    /// token, each holding a connection).
    pub max_waiting: usize,
    /// How long a token Redis did not have is answered 404 without a read.
    /// Short: an issuer writes the token just before the CA asks, and a
    /// 404 remembered from an earlier ask hides it until then.
    pub negative_ttl: Millis,
    /// Most tokens remembered as absent; the least recently asked go first.
    pub negative_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_reads: 16,
            max_waiting: 1024,
            negative_ttl: 2_000,
            negative_max: 1024,
        }
    }
}

/// What to do with one challenge request for a valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Queue a Redis read of the token (on failure, call
    /// [`AcmeGate::not_queued`]); the request waits for its answer.
    Read,
    /// A read of the token is under way: the request waits for it too.
    Wait,
    /// Redis did not have the token a moment ago: 404 now, no read.
    Absent,
    /// At a bound: 503 with `Retry-After` now, no read.
    Busy,
}

/// Per-worker singleflight, cap and negative cache of challenge reads.
/// Generic over the waiter so tests use integers and the glue its
/// request pointers.
pub struct AcmeGate<W> {
    limits: Limits,
    reads: Inflight<W>,
    /// Requests queued in `reads`, over all tokens.
    waiting: usize,
    /// Tokens Redis did not have, each with the time Redis said so.
    absent: Lru<Millis>,
}

impl<W> AcmeGate<W> {
    pub fn new(limits: Limits) -> Self {
        AcmeGate {
            limits,
            reads: Inflight::new(limits.max_reads),
            waiting: 0,
            absent: Lru::new(),
        }
    }

    /// Decides for a request for `token` at `now`; `waiter` is queued for
    /// the answer when the verdict is [`Admission::Read`] or
    /// [`Admission::Wait`], and dropped otherwise.
    pub fn admit(&mut self, token: &str, waiter: W, now: Millis) -> Admission {
        // A known absence costs nothing, so it is answered even at the cap.
        if self.known_absent(token, now) {
            return Admission::Absent;
        }
        if self.waiting >= self.limits.max_waiting {
            return Admission::Busy;
        }
        let admission = match self.reads.join(token, Some(waiter)) {
            Join::Started => Admission::Read,
            Join::Joined => Admission::Wait,
            Join::Refused => return Admission::Busy,
        };
        self.waiting += 1;
        admission
    }

    /// The read [`Admission::Read`] asked for could not be queued: frees
    /// its slot and returns the requests to answer 503.
    pub fn not_queued(&mut self, token: &str) -> Vec<W> {
        self.finish(token)
    }

    /// A read of `token` finished at `now`: returns the requests to answer
    /// with it. An absent token is remembered for `negative_ttl`; a value
    /// never is (each validation of a CA must see what Redis holds now),
    /// nor is an error.
    pub fn complete(&mut self, token: &str, answer: &AcmeAnswer, now: Millis) -> Vec<W> {
        match answer {
            AcmeAnswer::Absent => self.remember_absent(token, now),
            AcmeAnswer::Value(_) => drop(self.absent.remove(token)),
            AcmeAnswer::Error(_) => {}
        }
        self.finish(token)
    }

    /// Forgets the first waiting request matching `pred` (it went away
    /// before its answer). Its read keeps its slot until it ends: the
    /// Redis work is still under way.
    pub fn abandon(&mut self, mut pred: impl FnMut(&W) -> bool) -> Option<W> {
        // At most `max_reads` tokens to look through.
        let tokens: Vec<String> = self.reads.names().map(str::to_owned).collect();
        let found = tokens
            .iter()
            .find_map(|t| self.reads.remove_waiter(t, &mut pred))?;
        self.waiting -= 1;
        Some(found)
    }

    /// Distinct tokens being read.
    pub fn reads_in_flight(&self) -> usize {
        self.reads.in_flight()
    }

    /// Requests waiting for a read.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Tokens remembered as absent (expired ones included until they are
    /// asked for again or pushed out).
    pub fn absent_len(&self) -> usize {
        self.absent.len()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn finish(&mut self, token: &str) -> Vec<W> {
        let waiters = self.reads.complete(token);
        self.waiting -= waiters.len();
        waiters
    }

    fn known_absent(&mut self, token: &str, now: Millis) -> bool {
        let Some(slot) = self.absent.find(token) else {
            return false;
        };
        // Wall time: a clock set back must not stretch an absence.
        let ttl = self.limits.negative_ttl;
        if self
            .absent
            .value(slot)
            .is_some_and(|&since| since <= now && now - since < ttl)
        {
            self.absent.touch(slot);
            true
        } else {
            self.absent.remove_at(slot);
            false
        }
    }

    fn remember_absent(&mut self, token: &str, now: Millis) {
        let Limits {
            negative_ttl,
            negative_max,
            ..
        } = self.limits;
        if negative_ttl == 0 || negative_max == 0 {
            return;
        }
        if self.absent.find(token).is_none() {
            while self.absent.len() >= negative_max {
                if self.absent.pop_lru().is_none() {
                    break;
                }
            }
        }
        self.absent.insert(token.to_owned(), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_key_authorization_for_the_token_is_answered() {
        let thumb = b"9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI";
        let value = [&b"tok-EN_1."[..], thumb].concat();
        assert!(is_key_authorization(b"tok-EN_1", &value));
        // Another token's, something else under the prefix, damaged ones.
        assert!(!is_key_authorization(b"other", &value));
        assert!(!is_key_authorization(b"ticket-keys", b"{\"generation\":1}"));
        assert!(!is_key_authorization(b"tok", b"tok"));
        assert!(!is_key_authorization(b"tok", b"tok."));
        assert!(!is_key_authorization(b"tok", b"tok.a.b"));
        assert!(!is_key_authorization(b"tok", b"tok.abc\n"));
        assert!(!is_key_authorization(b"tok", b"tokabc"));
    }
    use crate::fetch::{AcmeError, RedisError};

    #[test]
    fn challenge_paths_yield_their_token() {
        assert_eq!(
            challenge_token(b"/.well-known/acme-challenge/abc_DEF-123"),
            Some(&b"abc_DEF-123"[..])
        );
        assert_eq!(challenge_token(b"/.well-known/acme-challenge"), None);
        assert_eq!(challenge_token(b"/index.html"), None);
    }

    #[test]
    fn only_base64url_tokens_of_bounded_length_are_valid() {
        assert!(valid_token(b"LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        assert!(!valid_token(b""));
        assert!(!valid_token(b"abc/../x"));
        assert!(!valid_token(b"abc.def"));
        assert!(!valid_token(b"abc=="));
        assert!(!valid_token(b"a b"));
        assert!(!valid_token(b"*"));
        assert!(!valid_token("é".as_bytes()));
        assert!(!valid_token(&[b'a'; MAX_TOKEN + 1]));
        assert!(valid_token(&[b'a'; MAX_TOKEN]));
    }

    fn limits(max_reads: usize, max_waiting: usize, negative_max: usize) -> Limits {
        Limits {
            max_reads,
            max_waiting,
            negative_ttl: 2_000,
            negative_max,
        }
    }

    fn value() -> AcmeAnswer {
        AcmeAnswer::Value(b"token.thumbprint".to_vec())
    }

    #[test]
    fn requests_for_one_token_share_one_read() {
        let mut gate = AcmeGate::new(Limits::default());
        assert_eq!(gate.admit("t", 1, 0), Admission::Read);
        assert_eq!(gate.admit("t", 2, 0), Admission::Wait);
        assert_eq!(gate.admit("t", 3, 1), Admission::Wait);
        assert_eq!((gate.reads_in_flight(), gate.waiting()), (1, 3));
        assert_eq!(gate.complete("t", &value(), 5), [1, 2, 3]);
        assert_eq!((gate.reads_in_flight(), gate.waiting()), (0, 0));
    }

    #[test]
    fn new_tokens_past_the_cap_are_busy_but_joining_a_read_is_not() {
        let mut gate = AcmeGate::new(limits(2, 100, 100));
        assert_eq!(gate.admit("a", 1, 0), Admission::Read);
        assert_eq!(gate.admit("b", 2, 0), Admission::Read);
        assert_eq!(gate.admit("c", 3, 0), Admission::Busy);
        assert_eq!(gate.admit("a", 4, 0), Admission::Wait);
        assert_eq!((gate.reads_in_flight(), gate.waiting()), (2, 3));
        assert_eq!(gate.complete("a", &AcmeAnswer::Absent, 1), [1, 4]);
        assert_eq!(gate.admit("c", 5, 1), Admission::Read);
    }

    #[test]
    fn absent_token_is_answered_without_a_read_until_the_ttl_ends() {
        let mut gate = AcmeGate::new(Limits::default());
        let ttl = gate.limits().negative_ttl;
        assert_eq!(gate.admit("t", 1, 1_000), Admission::Read);
        assert_eq!(gate.complete("t", &AcmeAnswer::Absent, 1_010), [1]);
        assert_eq!(gate.admit("t", 2, 1_010), Admission::Absent);
        assert_eq!(gate.admit("t", 3, 1_010 + ttl - 1), Admission::Absent);
        assert_eq!(gate.waiting(), 0, "answered at once, not queued");
        assert_eq!(gate.admit("t", 4, 1_010 + ttl), Admission::Read);
        assert_eq!(gate.absent_len(), 0, "the expired entry went");
    }

    #[test]
    fn known_absent_token_gets_404_even_at_the_cap() {
        let mut gate = AcmeGate::new(limits(1, 100, 100));
        gate.admit("gone", 1, 0);
        gate.complete("gone", &AcmeAnswer::Absent, 0);
        assert_eq!(gate.admit("busy", 2, 0), Admission::Read);
        assert_eq!(gate.admit("gone", 3, 1), Admission::Absent);
        assert_eq!(gate.admit("other", 4, 1), Admission::Busy);
    }

    #[test]
    fn a_value_is_never_remembered_and_clears_an_absence() {
        let mut gate = AcmeGate::new(Limits::default());
        gate.admit("t", 1, 0);
        assert_eq!(gate.complete("t", &value(), 0), [1]);
        assert_eq!(gate.admit("t", 2, 1), Admission::Read, "fresh read");
        assert_eq!(gate.complete("t", &value(), 1), [2]);
        assert_eq!(gate.absent_len(), 0);
        // An absence that ended is replaced by the next read's answer.
        gate.admit("u", 3, 10);
        gate.complete("u", &AcmeAnswer::Absent, 10);
        assert_eq!(gate.admit("u", 4, 10 + 2_000), Admission::Read);
        gate.complete("u", &value(), 10 + 2_000);
        assert_eq!(gate.admit("u", 5, 10 + 2_001), Admission::Read);
    }

    #[test]
    fn a_clock_set_back_does_not_stretch_an_absence() {
        let mut gate = AcmeGate::new(Limits::default());
        gate.admit("t", 1, 10_000);
        gate.complete("t", &AcmeAnswer::Absent, 10_000);
        assert_eq!(gate.admit("t", 2, 5_000), Admission::Read);
    }

    #[test]
    fn errors_are_not_remembered() {
        let mut gate = AcmeGate::new(Limits::default());
        gate.admit("t", 1, 0);
        let answer = AcmeAnswer::Error(AcmeError::Redis(RedisError::Timeout));
        assert_eq!(gate.complete("t", &answer, 0), [1]);
        assert_eq!(gate.admit("t", 2, 1), Admission::Read);
    }

    #[test]
    fn negative_cache_is_bounded_and_drops_the_least_recently_asked() {
        let mut gate = AcmeGate::new(limits(16, 100, 2));
        for (i, t) in ["a", "b"].into_iter().enumerate() {
            gate.admit(t, i, 0);
            gate.complete(t, &AcmeAnswer::Absent, 0);
        }
        assert_eq!(gate.admit("a", 10, 1), Admission::Absent, "touches a");
        gate.admit("c", 11, 1);
        gate.complete("c", &AcmeAnswer::Absent, 1);
        assert_eq!(gate.absent_len(), 2);
        assert_eq!(gate.admit("a", 12, 2), Admission::Absent);
        assert_eq!(gate.admit("c", 13, 2), Admission::Absent);
        assert_eq!(gate.admit("b", 14, 2), Admission::Read, "b was pushed out");
        // A random-token flood only ever holds negative_max entries.
        for i in 0..100 {
            let t = format!("r{i}");
            gate.admit(&t, i, 3);
            gate.complete(&t, &AcmeAnswer::Absent, 3);
        }
        assert_eq!(gate.absent_len(), 2);
    }

    #[test]
    fn waiting_requests_are_bounded_over_all_tokens() {
        let mut gate = AcmeGate::new(limits(16, 3, 100));
        assert_eq!(gate.admit("a", 1, 0), Admission::Read);
        assert_eq!(gate.admit("a", 2, 0), Admission::Wait);
        assert_eq!(gate.admit("b", 3, 0), Admission::Read);
        assert_eq!(gate.admit("a", 4, 0), Admission::Busy);
        assert_eq!(gate.admit("c", 5, 0), Admission::Busy);
        assert_eq!(gate.complete("a", &value(), 1), [1, 2]);
        assert_eq!(gate.admit("a", 6, 1), Admission::Read);
    }

    #[test]
    fn abandoned_request_is_not_answered_and_its_read_keeps_the_slot() {
        let mut gate = AcmeGate::new(limits(1, 100, 100));
        gate.admit("t", 1, 0);
        gate.admit("t", 2, 0);
        assert_eq!(gate.abandon(|&w| w == 1), Some(1));
        assert_eq!(gate.abandon(|&w| w == 1), None);
        assert_eq!(gate.abandon(|&w| w == 2), Some(2));
        assert_eq!((gate.reads_in_flight(), gate.waiting()), (1, 0));
        assert_eq!(gate.admit("u", 3, 0), Admission::Busy, "slot still taken");
        assert!(gate.complete("t", &AcmeAnswer::Absent, 1).is_empty());
        assert_eq!(gate.admit("t", 4, 1), Admission::Absent, "answer kept");
    }

    #[test]
    fn a_read_that_could_not_be_queued_frees_its_slot_and_remembers_nothing() {
        let mut gate = AcmeGate::new(limits(1, 100, 100));
        assert_eq!(gate.admit("t", 1, 0), Admission::Read);
        assert_eq!(gate.not_queued("t"), [1]);
        assert_eq!((gate.reads_in_flight(), gate.waiting()), (0, 0));
        assert_eq!(gate.admit("t", 2, 0), Admission::Read);
    }

    #[test]
    fn zero_ttl_or_zero_entries_disable_negative_caching() {
        for l in [
            Limits {
                negative_ttl: 0,
                ..Limits::default()
            },
            Limits {
                negative_max: 0,
                ..Limits::default()
            },
        ] {
            let mut gate = AcmeGate::new(l);
            gate.admit("t", 1, 0);
            gate.complete("t", &AcmeAnswer::Absent, 0);
            assert_eq!(gate.admit("t", 2, 0), Admission::Read, "{l:?}");
            assert_eq!(gate.absent_len(), 0);
        }
    }

    #[test]
    fn cap_zero_refuses_every_read() {
        let mut gate = AcmeGate::new(limits(0, 100, 100));
        assert_eq!(gate.admit("t", 1, 0), Admission::Busy);
        assert_eq!(gate.waiting(), 0);
    }
}
