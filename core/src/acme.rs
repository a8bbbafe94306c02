//! ACME HTTP-01 (RFC 8555 §8.3) request rules: which paths are challenge
//! requests, which tokens may become part of a Redis key, and how many
//! Redis reads challenge requests may cost.
//!
//! Port 80 is open to anyone, so challenge requests are bounded like
//! certificate fetches: requests for one token share one read, at most
//! [`Limits::max_reads`] distinct tokens are read at once, and a token
//! Redis did not have is answered 404 without another read for a short
//! while. Past the bound a request waits in a short FIFO for a read to
//! end (with a healthy Redis one ends within a millisecond), for at most
//! [`Limits::queue_wait`]; past that, or with the FIFO full, it is answered
//! 503 instead of queueing more work behind Redis.
//!
//! The bound is shared by every client of the worker, so one client must
//! not be able to take all of it: each client address (IPv4 /32, IPv6 /64)
//! holds at most [`Limits::max_per_client`] requests that started or queued
//! a read, and its requests past that are the ones answered 503. A CA
//! validates from addresses of its own, so a flood from one address never
//! refuses it. A request for a token being read joins that read: it costs
//! no Redis work, so it takes none of that share, and behind a balancer
//! whose clients all share its address (no realip) a CA asking for the
//! token a read is under way for must not be refused. Joins hold a
//! connection (or an HTTP/2 stream) and a place in the gate, though, so
//! each address holds at most [`Limits::max_joins_per_client`] of them:
//! one address asking for one slow token over and over cannot fill the
//! gate's [`Limits::max_waiting`] places and lock everyone else out, and
//! joins from all addresses together take at most [`Limits::max_joins`]
//! of them, leaving the rest to requests that start or queue a read.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

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

/// Whose share of the gate a request uses: the client address nginx
/// resolved (after PROXY protocol and realip), IPv4 by /32 and IPv6 by /64,
/// the smallest network one subscriber commonly gets. An IPv4-mapped IPv6
/// address (a dual-stack listener) is its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    V4(u32),
    /// The upper 64 bits of the address.
    V6(u64),
    /// No IP address (a UNIX-domain listener): such clients share one
    /// share, like they share the one `$remote_addr` (`unix:`).
    Other,
}

impl Client {
    pub fn of(addr: Option<IpAddr>) -> Client {
        match addr {
            Some(IpAddr::V4(a)) => Client::V4(u32::from(a)),
            Some(IpAddr::V6(a)) => match a.to_ipv4_mapped() {
                Some(v4) => Client::V4(u32::from(v4)),
                None => Client::V6((u128::from(a) >> 64) as u64),
            },
            None => Client::Other,
        }
    }
}

/// Bounds of one worker's challenge lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most distinct tokens read from Redis at once; also the size of the
    /// fetcher's ACME queue, which therefore never fills while the gate
    /// holds. A CA asks for one token from a few vantage points and an
    /// issuer has a few orders open at a time: 16 is far above that.
    pub max_reads: usize,
    /// Most requests in the gate: waiting for those reads (several may
    /// wait for one token, each holding a connection or an HTTP/2 stream;
    /// see `max_joins_per_client` and `max_joins`) or in the FIFO.
    pub max_waiting: usize,
    /// Most requests waiting in the FIFO for a read to end, when all
    /// `max_reads` are under way. With a healthy Redis a read takes about
    /// a millisecond, so 16 reads serve 128 waiting requests within about
    /// 8 ms; more would only hold more connections while Redis is slow.
    pub max_queued: usize,
    /// Longest a request waits in the FIFO (`dyncert_redis_timeout`, see
    /// [`Limits::with_redis_timeout`]: a read under way ends by then,
    /// answered or not). 0: no FIFO, a request past the reads is answered
    /// 503 at once.
    pub queue_wait: Millis,
    /// Most requests one client address holds in the gate at once that
    /// started a read or wait in the FIFO for one; requests joining a read
    /// under way are not counted here (they cost no Redis work;
    /// [`Limits::max_joins_per_client`] bounds them). A CA asks for one token once from each of
    /// its vantage points, on their own addresses, and a read takes about
    /// a millisecond: even a CA checking several names of an order at once
    /// from one address rarely has more than one request here. 4 leaves
    /// room for that and for an issuer's own check behind the same address,
    /// while a flood from one address takes at most 4 of the 16 reads: a
    /// flooder needs 4 addresses to fill them.
    pub max_per_client: usize,
    /// Most requests one client address holds in the gate at once that
    /// joined a read under way. A join costs no Redis work but holds a
    /// connection and one of the `max_waiting` places until the read ends
    /// (up to `dyncert_redis_timeout` while Redis is slow), and HTTP/2
    /// gives one connection 128 of them: without this bound nine HTTP/2
    /// connections from one address asking for one token fill the gate.
    /// A CA asks for a token once per vantage point, each on an address of
    /// its own, so it rarely joins at all; even behind a balancer without
    /// realip, where every client shares one address, 32 requests for
    /// tokens already being read (each read about a millisecond) is far
    /// above what a few CAs and issuers ask at once. With 32, filling the
    /// 1,024 places takes 32 addresses, not one.
    pub max_joins_per_client: usize,
    /// Most requests in the gate that joined a read under way, over all
    /// clients: `max_waiting` less `max_reads` and `max_queued`, so that
    /// joins from many addresses never take the places of requests that
    /// start a read or wait in the FIFO for one (a CA's, for a token of
    /// its own).
    pub max_joins: usize,
    /// How long a token Redis did not have is answered 404 without a read.
    /// Short: an issuer writes the token just before the CA asks, and a
    /// 404 remembered from an earlier ask hides it until then.
    pub negative_ttl: Millis,
    /// Most tokens remembered as absent; the least recently asked go first.
    pub negative_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let (max_reads, max_waiting, max_queued) = (16, 1024, 128);
        Limits {
            max_reads,
            max_waiting,
            max_queued,
            queue_wait: 1_000,
            max_per_client: 4,
            max_joins_per_client: 32,
            max_joins: Limits::joins_left(max_waiting, max_reads, max_queued),
            negative_ttl: 2_000,
            negative_max: 1024,
        }
    }
}

impl Limits {
    /// The places joins may take: what the gate holds less the reads and
    /// the FIFO, so joins never take theirs.
    pub fn joins_left(max_waiting: usize, max_reads: usize, max_queued: usize) -> usize {
        max_waiting
            .saturating_sub(max_reads)
            .saturating_sub(max_queued)
    }
}

impl Limits {
    /// These limits with the FIFO's wait set to `dyncert_redis_timeout`:
    /// a read under way ends by then, answered or timed out, so a request
    /// waiting longer would only wait for a read that started after it.
    /// Whole milliseconds, rounded down (the directive takes milliseconds);
    /// a timeout past `Millis::MAX` ms waits `Millis::MAX`.
    pub fn with_redis_timeout(self, timeout: Duration) -> Limits {
        Limits {
            queue_wait: Millis::try_from(timeout.as_millis()).unwrap_or(Millis::MAX),
            ..self
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
    /// Every read is under way: the request waits in the FIFO until
    /// [`AcmeGate::promote`] starts its read or [`AcmeGate::expire`] gives
    /// it up (keep a timer for [`AcmeGate::next_expiry`]).
    Queued,
    /// Redis did not have the token a moment ago: 404 now, no read.
    Absent,
    /// At a bound: 503 with `Retry-After` now, no read.
    Busy,
    /// The request would start or queue a read, and its client already
    /// holds its share of those ([`Limits::max_per_client`]), or it would
    /// join a read under way, and its client already holds
    /// [`Limits::max_joins_per_client`] such requests: 503 with
    /// `Retry-After` now, no read.
    ClientBusy,
}

/// A request in the gate and the client it counts against.
struct Held<W> {
    waiter: W,
    client: Client,
    /// It joined a read under way: it counts among its client's joins,
    /// not its share of reads.
    joined: bool,
}

/// What one client holds in the gate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Holding {
    /// Requests that started or queued a read.
    reads: usize,
    /// Requests that joined a read under way.
    joins: usize,
}

/// A request waiting in the FIFO for a read of its token to start.
struct Queued<W> {
    token: String,
    held: Held<W>,
    since: Millis,
}

/// Per-worker singleflight, cap and negative cache of challenge reads.
/// Generic over the waiter so tests use integers and the glue its
/// request pointers.
pub struct AcmeGate<W> {
    limits: Limits,
    reads: Inflight<Held<W>>,
    /// Requests in the gate: in `reads` over all tokens, and in `queue`.
    waiting: usize,
    /// Of those, the requests that joined a read under way.
    joins: usize,
    /// Requests waiting for a read to start, oldest first.
    queue: VecDeque<Queued<W>>,
    /// Requests each client holds in the gate; only clients holding some
    /// (at most `max_waiting` entries).
    held: HashMap<Client, Holding>,
    /// Tokens Redis did not have, each with the time Redis said so.
    absent: Lru<Millis>,
}

impl<W> AcmeGate<W> {
    pub fn new(limits: Limits) -> Self {
        AcmeGate {
            limits,
            reads: Inflight::new(limits.max_reads),
            waiting: 0,
            joins: 0,
            queue: VecDeque::new(),
            held: HashMap::new(),
            absent: Lru::new(),
        }
    }

    /// Decides for a request of `client` for `token` at `now`; `waiter`
    /// is kept for the answer when the verdict is [`Admission::Read`],
    /// [`Admission::Wait`] or [`Admission::Queued`], and dropped otherwise.
    pub fn admit(&mut self, token: &str, client: Client, waiter: W, now: Millis) -> Admission {
        // A known absence costs nothing, so it is answered even at the cap.
        if self.known_absent(token, now) {
            return Admission::Absent;
        }
        // Joining a read under way costs no Redis work: none of the
        // client's share of reads is asked for it, only one of its joins.
        // (Inflight never refuses a join.)
        if self.reads.is_in_flight(token) {
            if self.joins_by(client) >= self.limits.max_joins_per_client {
                return Admission::ClientBusy;
            }
            if self.waiting >= self.limits.max_waiting || self.joins >= self.limits.max_joins {
                return Admission::Busy;
            }
            let held = Held {
                waiter,
                client,
                joined: true,
            };
            if self.reads.join(token, Some(held)) == Join::Refused {
                return Admission::Busy;
            }
            self.waiting += 1;
            self.joins += 1;
            self.held.entry(client).or_default().joins += 1;
            return Admission::Wait;
        }
        // Before the read bound: a client over its share is refused whether
        // or not the others have left room.
        if self.held_by(client) >= self.limits.max_per_client {
            return Admission::ClientBusy;
        }
        if self.waiting >= self.limits.max_waiting {
            return Admission::Busy;
        }
        let held = Held {
            waiter,
            client,
            joined: false,
        };
        let admission = if self.reads.in_flight() < self.limits.max_reads {
            match self.reads.join(token, Some(held)) {
                Join::Started => Admission::Read,
                // Not reached (the token is not being read); if it were, the
                // request waits, charged like the others.
                Join::Joined => Admission::Wait,
                // The request was dropped, holding nothing.
                Join::Refused => return Admission::Busy,
            }
        } else if self.queue.len() < self.limits.max_queued && self.limits.queue_wait > 0 {
            self.queue.push_back(Queued {
                token: token.to_owned(),
                held,
                since: now,
            });
            Admission::Queued
        } else {
            return Admission::Busy;
        };
        self.waiting += 1;
        self.held.entry(client).or_default().reads += 1;
        admission
    }

    /// Requests `client` holds in the gate that started or queued a read.
    pub fn held_by(&self, client: Client) -> usize {
        self.held.get(&client).map_or(0, |h| h.reads)
    }

    /// Requests `client` holds in the gate that joined a read under way.
    pub fn joins_by(&self, client: Client) -> usize {
        self.held.get(&client).map_or(0, |h| h.joins)
    }

    /// Clients holding requests in the gate.
    pub fn clients(&self) -> usize {
        self.held.len()
    }

    /// The read [`Admission::Read`] (or [`AcmeGate::promote`]) asked for
    /// could not be queued: frees its slot and returns the requests to
    /// answer 503. Then call [`AcmeGate::promote`].
    pub fn not_queued(&mut self, token: &str) -> Vec<W> {
        self.finish(token)
    }

    /// Starts reads for the oldest requests in the FIFO while reads are
    /// free, after a read ended: returns the tokens to read (as for
    /// [`Admission::Read`]). Requests for a token whose read starts all
    /// leave the FIFO with it: they share that read.
    pub fn promote(&mut self) -> Vec<String> {
        let mut started = Vec::new();
        while self.reads.in_flight() < self.limits.max_reads {
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            // Asked for before the request is handed over, so that a read
            // refused (`Inflight`'s cap below `max_reads`) leaves the
            // request in hand: it goes back to the front of the FIFO, still
            // holding its share, and waits there for a read or its expiry.
            match self.reads.join(&q.token, None) {
                Join::Started => {}
                // A read of the token started since (not from the FIFO,
                // which only holds tokens not being read): it is shared.
                Join::Joined => {
                    self.reads.join(&q.token, Some(q.held));
                    continue;
                }
                Join::Refused => {
                    self.queue.push_front(q);
                    break;
                }
            }
            // Joining the read just started is never refused; the requests
            // for its token all leave the FIFO with it.
            self.reads.join(&q.token, Some(q.held));
            let mut i = 0;
            while i < self.queue.len() {
                if self.queue[i].token == q.token {
                    if let Some(same) = self.queue.remove(i) {
                        self.reads.join(&same.token, Some(same.held));
                    }
                } else {
                    i += 1;
                }
            }
            started.push(q.token);
        }
        started
    }

    /// Gives up the requests whose wait in the FIFO ended at `now` (or
    /// began after it: a clock set back must not stretch a wait): returns
    /// them to answer 503.
    pub fn expire(&mut self, now: Millis) -> Vec<W> {
        let wait = self.limits.queue_wait;
        let mut expired = Vec::new();
        let mut i = 0;
        while i < self.queue.len() {
            let since = self.queue[i].since;
            if now < since || now - since >= wait {
                if let Some(q) = self.queue.remove(i) {
                    expired.push(self.release(q.held));
                }
            } else {
                i += 1;
            }
        }
        expired
    }

    /// How long after `now` the first wait in the FIFO ends; `None` when
    /// nothing waits there.
    pub fn next_expiry(&self, now: Millis) -> Option<Millis> {
        let wait = self.limits.queue_wait;
        self.queue
            .iter()
            .map(|q| {
                if now < q.since {
                    0
                } else {
                    wait.saturating_sub(now - q.since)
                }
            })
            .min()
    }

    /// Requests waiting in the FIFO.
    pub fn queued(&self) -> usize {
        self.queue.len()
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

    /// Forgets the first request matching `pred` (it went away before its
    /// answer). A read it waited for keeps its slot until it ends: the
    /// Redis work is still under way.
    pub fn abandon(&mut self, mut pred: impl FnMut(&W) -> bool) -> Option<W> {
        if let Some(i) = self.queue.iter().position(|q| pred(&q.held.waiter)) {
            let q = self.queue.remove(i)?;
            return Some(self.release(q.held));
        }
        // At most `max_reads` tokens to look through.
        let tokens: Vec<String> = self.reads.names().map(str::to_owned).collect();
        let found = tokens
            .iter()
            .find_map(|t| self.reads.remove_waiter(t, |h| pred(&h.waiter)))?;
        Some(self.release(found))
    }

    /// Distinct tokens being read.
    pub fn reads_in_flight(&self) -> usize {
        self.reads.in_flight()
    }

    /// Requests waiting for a read, or for one to start.
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
        let held = self.reads.complete(token);
        held.into_iter().map(|h| self.release(h)).collect()
    }

    /// A request leaves the gate: its client's share (or join) is free
    /// again.
    fn release(&mut self, h: Held<W>) -> W {
        self.waiting = self.waiting.saturating_sub(1);
        if h.joined {
            self.joins = self.joins.saturating_sub(1);
        }
        if let Some(n) = self.held.get_mut(&h.client) {
            let count = if h.joined { &mut n.joins } else { &mut n.reads };
            *count = count.saturating_sub(1);
            if *n == Holding::default() {
                self.held.remove(&h.client);
            }
        }
        h.waiter
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
    fn joins_take_what_the_reads_and_the_fifo_leave() {
        let l = Limits::default();
        assert_eq!(l.max_joins, 880);
        assert_eq!(
            l.max_joins,
            Limits::joins_left(l.max_waiting, l.max_reads, l.max_queued)
        );
        assert_eq!(Limits::joins_left(100, 16, 128), 0);
    }

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

    /// Without the FIFO: past the reads, 503 at once.
    fn limits(max_reads: usize, max_waiting: usize, negative_max: usize) -> Limits {
        Limits {
            max_reads,
            max_waiting,
            max_queued: 0,
            queue_wait: 1_000,
            max_per_client: 4,
            max_joins_per_client: 32,
            max_joins: max_waiting,
            negative_ttl: 2_000,
            negative_max,
        }
    }

    /// A client of its own for each waiter, unless a test says otherwise.
    fn c(w: usize) -> Client {
        Client::V4(w as u32)
    }

    fn value() -> AcmeAnswer {
        AcmeAnswer::Value(b"token.thumbprint".to_vec())
    }

    #[test]
    fn requests_for_one_token_share_one_read() {
        let mut gate = AcmeGate::new(Limits::default());
        assert_eq!(gate.admit("t", c(1), 1, 0), Admission::Read);
        assert_eq!(gate.admit("t", c(2), 2, 0), Admission::Wait);
        assert_eq!(gate.admit("t", c(3), 3, 1), Admission::Wait);
        assert_eq!((gate.reads_in_flight(), gate.waiting()), (1, 3));
        assert_eq!(gate.complete("t", &value(), 5), [1, 2, 3]);
        assert_eq!((gate.reads_in_flight(), gate.waiting()), (0, 0));
    }

    #[test]
    fn new_tokens_past_the_cap_are_busy_but_joining_a_read_is_not() {
        let mut gate = AcmeGate::new(limits(2, 100, 100));
        assert_eq!(gate.admit("a", c(1), 1, 0), Admission::Read);
        assert_eq!(gate.admit("b", c(2), 2, 0), Admission::Read);
        assert_eq!(gate.admit("c", c(3), 3, 0), Admission::Busy);
        assert_eq!(gate.admit("a", c(4), 4, 0), Admission::Wait);
        assert_eq!((gate.reads_in_flight(), gate.waiting()), (2, 3));
        assert_eq!(gate.complete("a", &AcmeAnswer::Absent, 1), [1, 4]);
        assert_eq!(gate.admit("c", c(5), 5, 1), Admission::Read);
    }

    #[test]
    fn absent_token_is_answered_without_a_read_until_the_ttl_ends() {
        let mut gate = AcmeGate::new(Limits::default());
        let ttl = gate.limits().negative_ttl;
        assert_eq!(gate.admit("t", c(1), 1, 1_000), Admission::Read);
        assert_eq!(gate.complete("t", &AcmeAnswer::Absent, 1_010), [1]);
        assert_eq!(gate.admit("t", c(2), 2, 1_010), Admission::Absent);
        assert_eq!(gate.admit("t", c(3), 3, 1_010 + ttl - 1), Admission::Absent);
        assert_eq!(gate.waiting(), 0, "answered at once, not queued");
        assert_eq!(gate.admit("t", c(4), 4, 1_010 + ttl), Admission::Read);
        assert_eq!(gate.absent_len(), 0, "the expired entry went");
    }

    #[test]
    fn known_absent_token_gets_404_even_at_the_cap() {
        let mut gate = AcmeGate::new(limits(1, 100, 100));
        gate.admit("gone", c(1), 1, 0);
        gate.complete("gone", &AcmeAnswer::Absent, 0);
        assert_eq!(gate.admit("busy", c(2), 2, 0), Admission::Read);
        assert_eq!(gate.admit("gone", c(3), 3, 1), Admission::Absent);
        assert_eq!(gate.admit("other", c(4), 4, 1), Admission::Busy);
    }

    #[test]
    fn a_value_is_never_remembered_and_clears_an_absence() {
        let mut gate = AcmeGate::new(Limits::default());
        gate.admit("t", c(1), 1, 0);
        assert_eq!(gate.complete("t", &value(), 0), [1]);
        assert_eq!(gate.admit("t", c(2), 2, 1), Admission::Read, "fresh read");
        assert_eq!(gate.complete("t", &value(), 1), [2]);
        assert_eq!(gate.absent_len(), 0);
        // An absence that ended is replaced by the next read's answer.
        gate.admit("u", c(3), 3, 10);
        gate.complete("u", &AcmeAnswer::Absent, 10);
        assert_eq!(gate.admit("u", c(4), 4, 10 + 2_000), Admission::Read);
        gate.complete("u", &value(), 10 + 2_000);
        assert_eq!(gate.admit("u", c(5), 5, 10 + 2_001), Admission::Read);
    }

    #[test]
    fn a_clock_set_back_does_not_stretch_an_absence() {
        let mut gate = AcmeGate::new(Limits::default());
        gate.admit("t", c(1), 1, 10_000);
        gate.complete("t", &AcmeAnswer::Absent, 10_000);
        assert_eq!(gate.admit("t", c(2), 2, 5_000), Admission::Read);
    }

    #[test]
    fn errors_are_not_remembered() {
        let mut gate = AcmeGate::new(Limits::default());
        gate.admit("t", c(1), 1, 0);
        let answer = AcmeAnswer::Error(AcmeError::Redis(RedisError::Timeout));
        assert_eq!(gate.complete("t", &answer, 0), [1]);
        assert_eq!(gate.admit("t", c(2), 2, 1), Admission::Read);
    }

    #[test]
    fn negative_cache_is_bounded_and_drops_the_least_recently_asked() {
        let mut gate = AcmeGate::new(limits(16, 100, 2));
        for (i, t) in ["a", "b"].into_iter().enumerate() {
            gate.admit(t, c(i), i, 0);
            gate.complete(t, &AcmeAnswer::Absent, 0);
        }
        assert_eq!(
            gate.admit("a", c(10), 10, 1),
            Admission::Absent,
            "touches a"
        );
        gate.admit("c", c(11), 11, 1);
        gate.complete("c", &AcmeAnswer::Absent, 1);
        assert_eq!(gate.absent_len(), 2);
        assert_eq!(gate.admit("a", c(12), 12, 2), Admission::Absent);
        assert_eq!(gate.admit("c", c(13), 13, 2), Admission::Absent);
        assert_eq!(
            gate.admit("b", c(14), 14, 2),
            Admission::Read,
            "b was pushed out"
        );
        // A random-token flood only ever holds negative_max entries.
        for i in 0..100 {
            let t = format!("r{i}");
            gate.admit(&t, c(i), i, 3);
            gate.complete(&t, &AcmeAnswer::Absent, 3);
        }
        assert_eq!(gate.absent_len(), 2);
    }

    #[test]
    fn waiting_requests_are_bounded_over_all_tokens() {
        let mut gate = AcmeGate::new(limits(16, 3, 100));
        assert_eq!(gate.admit("a", c(1), 1, 0), Admission::Read);
        assert_eq!(gate.admit("a", c(2), 2, 0), Admission::Wait);
        assert_eq!(gate.admit("b", c(3), 3, 0), Admission::Read);
        assert_eq!(gate.admit("a", c(4), 4, 0), Admission::Busy);
        assert_eq!(gate.admit("c", c(5), 5, 0), Admission::Busy);
        assert_eq!(gate.complete("a", &value(), 1), [1, 2]);
        assert_eq!(gate.admit("a", c(6), 6, 1), Admission::Read);
    }

    #[test]
    fn abandoned_request_is_not_answered_and_its_read_keeps_the_slot() {
        let mut gate = AcmeGate::new(limits(1, 100, 100));
        gate.admit("t", c(1), 1, 0);
        gate.admit("t", c(2), 2, 0);
        assert_eq!(gate.abandon(|&w| w == 1), Some(1));
        assert_eq!(gate.abandon(|&w| w == 1), None);
        assert_eq!(gate.abandon(|&w| w == 2), Some(2));
        assert_eq!((gate.reads_in_flight(), gate.waiting()), (1, 0));
        assert_eq!(
            gate.admit("u", c(3), 3, 0),
            Admission::Busy,
            "slot still taken"
        );
        assert!(gate.complete("t", &AcmeAnswer::Absent, 1).is_empty());
        assert_eq!(
            gate.admit("t", c(4), 4, 1),
            Admission::Absent,
            "answer kept"
        );
    }

    #[test]
    fn a_read_that_could_not_be_queued_frees_its_slot_and_remembers_nothing() {
        let mut gate = AcmeGate::new(limits(1, 100, 100));
        assert_eq!(gate.admit("t", c(1), 1, 0), Admission::Read);
        assert_eq!(gate.not_queued("t"), [1]);
        assert_eq!((gate.reads_in_flight(), gate.waiting()), (0, 0));
        assert_eq!(gate.admit("t", c(2), 2, 0), Admission::Read);
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
            gate.admit("t", c(1), 1, 0);
            gate.complete("t", &AcmeAnswer::Absent, 0);
            assert_eq!(gate.admit("t", c(2), 2, 0), Admission::Read, "{l:?}");
            assert_eq!(gate.absent_len(), 0);
        }
    }

    #[test]
    fn cap_zero_refuses_every_read() {
        let mut gate = AcmeGate::new(limits(0, 100, 100));
        assert_eq!(gate.admit("t", c(1), 1, 0), Admission::Busy);
        assert_eq!(gate.waiting(), 0);
    }

    #[test]
    fn addresses_are_grouped_by_ipv4_32_and_ipv6_64() {
        let ip = |s: &str| Client::of(Some(s.parse().unwrap()));
        assert_eq!(ip("192.0.2.1"), Client::V4(0xc000_0201));
        assert_ne!(ip("192.0.2.1"), ip("192.0.2.2"));
        assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        // A dual-stack listener sees IPv4 clients as mapped addresses.
        assert_eq!(ip("::ffff:192.0.2.1"), ip("192.0.2.1"));
        assert_ne!(ip("::ffff:192.0.2.1"), ip("::ffff:192.0.2.2"));
        assert_ne!(ip("::1"), ip("0.0.0.1"));
        assert_eq!(Client::of(None), Client::Other);
    }

    #[test]
    fn one_client_holds_at_most_its_share_and_others_are_admitted() {
        let mut gate = AcmeGate::new(Limits::default());
        let (flooder, ca) = (Client::V4(1), Client::V4(2));
        let share = gate.limits().max_per_client;
        for i in 0..share {
            assert_eq!(gate.admit(&format!("r{i}"), flooder, i, 0), Admission::Read);
        }
        // Past its share the flooder is refused a new read; joining a read
        // under way costs no Redis work and takes none of the share.
        assert_eq!(gate.admit("r99", flooder, 99, 0), Admission::ClientBusy);
        assert_eq!(gate.admit("r0", flooder, 98, 0), Admission::Wait);
        assert_eq!(gate.held_by(flooder), share);
        assert_eq!(
            gate.reads_in_flight(),
            share,
            "the rest of the reads are free"
        );
        // The CA's request is read at once, and may join the flooder's.
        assert_eq!(gate.admit("real", ca, 100, 0), Admission::Read);
        assert_eq!(gate.admit("r0", ca, 101, 0), Admission::Wait);
        assert_eq!(gate.held_by(ca), 1);
        // A read that ends gives the flooder one request back.
        assert_eq!(gate.complete("r1", &AcmeAnswer::Absent, 1), [1]);
        assert_eq!(gate.admit("r5", flooder, 5, 1), Admission::Read);
    }

    #[test]
    fn a_client_over_its_share_is_refused_even_with_reads_free() {
        let mut gate = AcmeGate::new(Limits {
            max_per_client: 1,
            ..Limits::default()
        });
        assert_eq!(gate.admit("a", c(1), 1, 0), Admission::Read);
        assert_eq!(gate.admit("b", c(1), 2, 0), Admission::ClientBusy);
        assert_eq!(gate.waiting(), 1, "the refused request holds nothing");
        // A known absence is still answered: it costs nothing.
        gate.admit("gone", c(2), 3, 0);
        gate.complete("gone", &AcmeAnswer::Absent, 0);
        assert_eq!(gate.admit("gone", c(1), 4, 0), Admission::Absent);
    }

    #[test]
    fn many_clients_share_the_reads_up_to_the_cap() {
        let mut gate = AcmeGate::new(limits(4, 100, 100));
        for i in 0..4 {
            assert_eq!(gate.admit(&format!("t{i}"), c(i), i, 0), Admission::Read);
        }
        assert_eq!(gate.admit("t4", c(4), 4, 0), Admission::Busy);
        assert_eq!(gate.held_by(c(4)), 0);
    }

    #[test]
    fn a_clients_share_is_given_back_however_its_requests_leave() {
        let mut gate = AcmeGate::new(Limits {
            max_per_client: 3,
            ..Limits::default()
        });
        let me = Client::V6(0x2001_0db8_0000_0001);
        assert_eq!(gate.admit("a", me, 1, 0), Admission::Read);
        assert_eq!(gate.admit("b", me, 2, 0), Admission::Read);
        assert_eq!(gate.admit("b", me, 3, 0), Admission::Wait, "holds none");
        assert_eq!(gate.admit("c", me, 4, 0), Admission::Read);
        assert_eq!(gate.admit("d", me, 5, 0), Admission::ClientBusy);
        // Answered, not queued, gone away: each gives one back (a join it
        // never held gives nothing back).
        assert_eq!(gate.complete("a", &value(), 1), [1]);
        assert_eq!(gate.held_by(me), 2);
        assert_eq!(gate.abandon(|&w| w == 3), Some(3));
        assert_eq!(gate.held_by(me), 2);
        assert_eq!(gate.not_queued("c"), [4]);
        assert_eq!(gate.held_by(me), 1);
        assert_eq!(gate.admit("d", me, 6, 1), Admission::Read);
        assert_eq!(gate.not_queued("d"), [6]);
        assert_eq!(gate.complete("b", &value(), 2), [2]);
        assert_eq!(gate.held_by(me), 0);
        // Nothing is kept for a client holding nothing.
        assert_eq!((gate.clients(), gate.waiting()), (0, 0));
    }

    #[test]
    fn a_flood_of_clients_is_remembered_only_while_they_hold_requests() {
        let mut gate = AcmeGate::new(limits(16, 64, 100));
        for i in 0..10_000usize {
            let t = format!("r{i}");
            gate.admit(&t, c(i), i, 0);
            if i % 2 == 0 {
                gate.complete(&t, &AcmeAnswer::Absent, 0);
            }
        }
        assert!(gate.clients() <= gate.limits().max_waiting);
        assert!(gate.clients() <= gate.reads_in_flight() * gate.limits().max_per_client);
    }

    /// With a FIFO of `max_queued` and a wait of 100 ms.
    fn queueing(max_reads: usize, max_queued: usize) -> Limits {
        Limits {
            max_queued,
            queue_wait: 100,
            ..limits(max_reads, 100, 100)
        }
    }

    #[test]
    fn past_the_reads_requests_wait_in_order_and_start_as_reads_end() {
        let mut gate = AcmeGate::new(queueing(2, 8));
        assert_eq!(gate.admit("a", c(1), 1, 0), Admission::Read);
        assert_eq!(gate.admit("b", c(2), 2, 0), Admission::Read);
        assert_eq!(gate.admit("c", c(3), 3, 0), Admission::Queued);
        assert_eq!(gate.admit("d", c(4), 4, 1), Admission::Queued);
        assert_eq!(gate.admit("c", c(5), 5, 2), Admission::Queued);
        // Joining a read under way never waits in the FIFO.
        assert_eq!(gate.admit("a", c(6), 6, 2), Admission::Wait);
        assert_eq!((gate.queued(), gate.waiting()), (3, 6));
        assert!(gate.promote().is_empty(), "no read is free yet");
        assert_eq!(gate.complete("a", &value(), 3), [1, 6]);
        // The oldest starts, with every request for its token.
        assert_eq!(gate.promote(), ["c"]);
        assert_eq!((gate.queued(), gate.reads_in_flight()), (1, 2));
        assert_eq!(gate.admit("c", c(7), 7, 3), Admission::Wait);
        assert_eq!(gate.complete("c", &AcmeAnswer::Absent, 4), [3, 5, 7]);
        assert_eq!(gate.complete("b", &value(), 4), [2]);
        assert_eq!(gate.promote(), ["d"]);
        assert!(gate.promote().is_empty());
        assert_eq!(gate.complete("d", &value(), 5), [4]);
        assert_eq!((gate.queued(), gate.waiting(), gate.clients()), (0, 0, 0));
    }

    #[test]
    fn a_wait_in_the_fifo_ends_after_queue_wait() {
        let mut gate = AcmeGate::new(queueing(1, 8));
        assert_eq!(gate.next_expiry(0), None);
        gate.admit("a", c(1), 1, 0);
        assert_eq!(gate.admit("b", c(2), 2, 10), Admission::Queued);
        assert_eq!(gate.admit("c", c(3), 3, 30), Admission::Queued);
        assert_eq!(gate.next_expiry(30), Some(80));
        assert!(gate.expire(109).is_empty());
        assert_eq!(gate.expire(110), [2]);
        assert_eq!(gate.next_expiry(110), Some(20));
        assert_eq!(gate.expire(500), [3]);
        assert_eq!(gate.next_expiry(500), None);
        assert_eq!((gate.queued(), gate.waiting()), (0, 1));
        assert_eq!(gate.held_by(c(2)), 0, "its share is given back");
        assert!(gate.promote().is_empty());
    }

    #[test]
    fn a_clock_set_back_does_not_stretch_a_wait() {
        let mut gate = AcmeGate::new(queueing(1, 8));
        gate.admit("a", c(1), 1, 10_000);
        gate.admit("b", c(2), 2, 10_000);
        assert_eq!(gate.next_expiry(5_000), Some(0));
        assert_eq!(gate.expire(5_000), [2]);
    }

    #[test]
    fn the_fifo_is_bounded_and_past_it_requests_are_busy() {
        let mut gate = AcmeGate::new(queueing(1, 2));
        gate.admit("a", c(1), 1, 0);
        assert_eq!(gate.admit("b", c(2), 2, 0), Admission::Queued);
        assert_eq!(gate.admit("c", c(3), 3, 0), Admission::Queued);
        assert_eq!(gate.admit("d", c(4), 4, 0), Admission::Busy);
        assert_eq!(gate.held_by(c(4)), 0);
        // The overall bound counts the FIFO too.
        let mut gate = AcmeGate::new(Limits {
            max_waiting: 2,
            ..queueing(1, 8)
        });
        gate.admit("a", c(1), 1, 0);
        assert_eq!(gate.admit("b", c(2), 2, 0), Admission::Queued);
        assert_eq!(gate.admit("c", c(3), 3, 0), Admission::Busy);
        // No wait, no FIFO.
        let mut gate = AcmeGate::new(Limits {
            queue_wait: 0,
            ..queueing(1, 8)
        });
        gate.admit("a", c(1), 1, 0);
        assert_eq!(gate.admit("b", c(2), 2, 0), Admission::Busy);
    }

    #[test]
    fn a_clients_share_counts_its_requests_in_the_fifo() {
        let mut gate = AcmeGate::new(Limits {
            max_per_client: 2,
            ..queueing(1, 8)
        });
        let (flooder, ca) = (c(1), c(2));
        assert_eq!(gate.admit("r1", flooder, 1, 0), Admission::Read);
        assert_eq!(gate.admit("r2", flooder, 2, 0), Admission::Queued);
        assert_eq!(gate.admit("r3", flooder, 3, 0), Admission::ClientBusy);
        // The CA waits behind the flooder's one request, not its flood.
        assert_eq!(gate.admit("real", ca, 4, 1), Admission::Queued);
        gate.complete("r1", &AcmeAnswer::Absent, 2);
        assert_eq!(gate.promote(), ["r2"]);
        gate.complete("r2", &AcmeAnswer::Absent, 3);
        assert_eq!(gate.promote(), ["real"]);
    }

    #[test]
    fn a_request_gone_from_the_fifo_is_forgotten() {
        let mut gate = AcmeGate::new(queueing(1, 8));
        gate.admit("a", c(1), 1, 0);
        gate.admit("b", c(2), 2, 0);
        gate.admit("c", c(3), 3, 0);
        assert_eq!(gate.abandon(|&w| w == 2), Some(2));
        assert_eq!(
            (gate.queued(), gate.waiting(), gate.held_by(c(2))),
            (1, 2, 0)
        );
        assert_eq!(gate.complete("a", &value(), 1), [1]);
        assert_eq!(gate.promote(), ["c"], "b is not read");
    }

    #[test]
    fn a_read_that_could_not_be_queued_lets_the_fifo_move_on() {
        let mut gate = AcmeGate::new(queueing(1, 8));
        assert_eq!(gate.admit("a", c(1), 1, 0), Admission::Read);
        assert_eq!(gate.admit("b", c(2), 2, 0), Admission::Queued);
        assert_eq!(gate.not_queued("a"), [1]);
        assert_eq!(gate.promote(), ["b"]);
    }

    #[test]
    fn joining_a_read_under_way_takes_none_of_the_clients_share() {
        // Behind a balancer without realip every client is its address.
        let mut gate = AcmeGate::new(Limits {
            max_waiting: 8,
            ..Limits::default()
        });
        let balancer = Client::V4(0x0a00_0001);
        let share = gate.limits().max_per_client;
        for i in 0..share {
            assert_eq!(
                gate.admit(&format!("t{i}"), balancer, i, 0),
                Admission::Read
            );
        }
        // The CA's requests for a token being read all join it.
        for w in 10..14 {
            assert_eq!(gate.admit("t0", balancer, w, 0), Admission::Wait);
        }
        assert_eq!(gate.held_by(balancer), share);
        assert_eq!(gate.admit("new", balancer, 20, 0), Admission::ClientBusy);
        // Joins are bounded by the requests the gate holds.
        assert_eq!(gate.waiting(), 8);
        assert_eq!(gate.admit("t1", balancer, 21, 0), Admission::Busy);
        // Answering the joins gives back only the reader's share.
        assert_eq!(gate.complete("t0", &value(), 1), [0, 10, 11, 12, 13]);
        assert_eq!((gate.held_by(balancer), gate.waiting()), (share - 1, 3));
        assert_eq!(gate.admit("new", balancer, 22, 1), Admission::Read);
    }

    #[test]
    fn a_read_refused_to_the_fifo_keeps_its_request_and_share() {
        let mut gate = AcmeGate::new(queueing(1, 8));
        assert_eq!(gate.admit("a", c(1), 1, 0), Admission::Read);
        assert_eq!(gate.admit("b", c(2), 2, 0), Admission::Queued);
        // The reads' own cap below `max_reads` (they are one number today):
        // the read is refused, and the request must not be lost.
        gate.limits.max_reads = 2;
        assert!(gate.promote().is_empty());
        assert_eq!((gate.queued(), gate.waiting()), (1, 2));
        assert_eq!(gate.held_by(c(2)), 1);
        // It starts when a read ends, or is given up to answer 503, and its
        // share comes back either way.
        assert_eq!(gate.complete("a", &value(), 1), [1]);
        assert_eq!(gate.promote(), ["b"]);
        assert_eq!(gate.complete("b", &value(), 2), [2]);
        assert_eq!((gate.waiting(), gate.clients()), (0, 0));
        let mut gate = AcmeGate::new(queueing(1, 8));
        gate.admit("c", c(3), 3, 10);
        assert_eq!(gate.admit("d", c(4), 4, 10), Admission::Queued);
        gate.limits.max_reads = 2;
        assert!(gate.promote().is_empty());
        assert_eq!(gate.expire(110), [4]);
        assert_eq!((gate.held_by(c(4)), gate.waiting()), (0, 1));
    }
    #[test]
    fn one_client_holds_at_most_its_joins_and_others_still_read() {
        // One address asking for one slow token over and over (HTTP/2
        // streams, or many connections), past the gate's places.
        let mut gate = AcmeGate::new(Limits::default());
        let l = *gate.limits();
        let (flooder, ca) = (Client::V4(1), Client::V4(2));
        assert_eq!(gate.admit("slow", flooder, 0, 0), Admission::Read);
        for w in 1..=l.max_joins_per_client {
            assert_eq!(gate.admit("slow", flooder, w, 0), Admission::Wait);
        }
        for w in 0..l.max_waiting {
            assert_eq!(
                gate.admit("slow", flooder, 10_000 + w, 0),
                Admission::ClientBusy
            );
        }
        assert_eq!(gate.joins_by(flooder), l.max_joins_per_client);
        assert_eq!(gate.held_by(flooder), 1, "joins are not its reads");
        assert_eq!(gate.waiting(), 1 + l.max_joins_per_client);
        // The CA's own token is read, and it may join the flooder's read.
        assert_eq!(gate.admit("real", ca, 20_000, 0), Admission::Read);
        assert_eq!(gate.admit("slow", ca, 20_001, 0), Admission::Wait);
        assert_eq!((gate.held_by(ca), gate.joins_by(ca)), (1, 1));
        // The flooder's own share of reads is untouched by its joins.
        assert_eq!(gate.admit("other", flooder, 30_000, 0), Admission::Read);
        // Answered or gone, each join is given back.
        assert_eq!(gate.abandon(|&w| w == 1), Some(1));
        assert_eq!(gate.joins_by(flooder), l.max_joins_per_client - 1);
        assert_eq!(gate.admit("slow", flooder, 40_000, 0), Admission::Wait);
        let answered = gate.complete("slow", &AcmeAnswer::Absent, 1);
        assert_eq!(answered.len(), l.max_joins_per_client + 2);
        assert_eq!((gate.joins_by(flooder), gate.joins_by(ca)), (0, 0));
        assert_eq!(gate.held_by(flooder), 1, "its read of \"other\"");
        gate.complete("other", &value(), 1);
        gate.complete("real", &value(), 1);
        assert_eq!((gate.waiting(), gate.clients()), (0, 0));
    }

    #[test]
    fn joins_and_reads_of_one_client_are_counted_apart() {
        let mut gate = AcmeGate::new(Limits {
            max_per_client: 1,
            max_joins_per_client: 2,
            ..Limits::default()
        });
        let me = c(1);
        assert_eq!(gate.admit("a", me, 1, 0), Admission::Read);
        assert_eq!(gate.admit("b", me, 2, 0), Admission::ClientBusy);
        assert_eq!(gate.admit("a", me, 3, 0), Admission::Wait);
        assert_eq!(gate.admit("a", me, 4, 0), Admission::Wait);
        assert_eq!(gate.admit("a", me, 5, 0), Admission::ClientBusy);
        // A join given back leaves the share of reads as it was.
        assert_eq!(gate.abandon(|&w| w == 3), Some(3));
        assert_eq!((gate.held_by(me), gate.joins_by(me)), (1, 1));
        assert_eq!(gate.admit("b", me, 6, 0), Admission::ClientBusy);
        assert_eq!(gate.admit("a", me, 7, 0), Admission::Wait);
        // Zero joins: every join is refused, reads still start.
        let mut gate = AcmeGate::new(Limits {
            max_joins_per_client: 0,
            ..Limits::default()
        });
        assert_eq!(gate.admit("a", c(1), 1, 0), Admission::Read);
        assert_eq!(gate.admit("a", c(2), 2, 0), Admission::ClientBusy);
        assert_eq!(gate.admit("b", c(2), 3, 0), Admission::Read);
    }

    #[test]
    fn the_fifo_waits_as_long_as_dyncert_redis_timeout() {
        let l = Limits::default().with_redis_timeout(Duration::from_millis(2_500));
        assert_eq!(l.queue_wait, 2_500);
        assert_eq!(
            l,
            Limits {
                queue_wait: 2_500,
                ..Limits::default()
            },
            "nothing else changes"
        );
        let ms = |d: Duration| Limits::default().with_redis_timeout(d).queue_wait;
        assert_eq!(ms(Duration::from_micros(1_999)), 1, "whole milliseconds");
        assert_eq!(ms(Duration::ZERO), 0, "no wait: no FIFO");
        assert_eq!(ms(Duration::MAX), Millis::MAX);
        // The gate's FIFO uses it.
        let mut gate = AcmeGate::new(Limits {
            max_reads: 1,
            ..Limits::default().with_redis_timeout(Duration::from_secs(3))
        });
        gate.admit("a", c(1), 1, 0);
        assert_eq!(gate.admit("b", c(2), 2, 0), Admission::Queued);
        assert_eq!(gate.next_expiry(0), Some(3_000));
    }

    #[test]
    fn joins_from_many_clients_leave_room_for_new_reads() {
        let mut gate = AcmeGate::new(Limits::default());
        let l = *gate.limits();
        assert_eq!(l.max_joins + l.max_reads + l.max_queued, l.max_waiting);
        assert_eq!(gate.admit("slow", c(0), 0, 0), Admission::Read);
        // Enough addresses, each within its joins, to fill every place.
        let mut w = 1;
        let (mut joined, mut busy) = (0, 0);
        for client in 1..=l.max_waiting / l.max_joins_per_client + 1 {
            for _ in 0..l.max_joins_per_client {
                match gate.admit("slow", c(client), w, 0) {
                    Admission::Wait => joined += 1,
                    Admission::Busy => busy += 1,
                    other => panic!("{other:?}"),
                }
                w += 1;
            }
        }
        assert_eq!(joined, l.max_joins);
        assert!(busy > 0);
        // Every read and every place in the FIFO is still free for others.
        for i in 1..l.max_reads {
            assert_eq!(
                gate.admit(&format!("t{i}"), c(10_000 + i), w, 0),
                Admission::Read
            );
            w += 1;
        }
        for i in 0..l.max_queued {
            assert_eq!(
                gate.admit(&format!("q{i}"), c(20_000 + i), w, 0),
                Admission::Queued
            );
            w += 1;
        }
        assert_eq!(gate.waiting(), l.max_waiting);
        // A join given back is free for another join.
        assert!(gate.abandon(|&x| x == 1).is_some());
        assert_eq!(gate.admit("slow", c(30_000), w, 0), Admission::Wait);
    }
}
