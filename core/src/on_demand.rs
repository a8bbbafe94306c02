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

use std::collections::HashMap;
use std::net::IpAddr;

use crate::clock::Millis;
use crate::fetch::Step;
use crate::name::{normalize_sni, punycode_decode};
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

/// Top-level domains under which no certificate authority can validate a
/// name, so a name under them is never queued: RFC 6761 lets applications
/// treat `localhost` (§6.3, loopback) and `invalid` (§6.4, never resolves)
/// as special; `local` is multicast DNS, link-local (RFC 6762 §3); `onion`
/// must not reach DNS (RFC 7686 §2); `alt` is for non-DNS namespaces
/// (RFC 9476); `arpa` is infrastructure (reverse zones, `home.arpa` of
/// RFC 8375). Not refused: `test` and `example`, which RFC 6761 §6.2 and
/// §6.5 tell applications not to treat as special (a private ACME CA with
/// its own DNS issues for them, as the tests here do), nor `internal`
/// (reserved for private use, like private address space: a private CA can
/// issue for it).
pub const SPECIAL_USE_TLDS: [&str; 6] = ["localhost", "invalid", "local", "onion", "alt", "arpa"];

/// Why a valid server name is still never queued: no certificate
/// authority can issue for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unissuable {
    /// One label (`localhost`, `com`, `metadata`, `0x7f000001`).
    OneLabel,
    /// The top-level label is a number (`0x7f.1`, an `inet_aton` form).
    NumericTld,
    /// Under a special-use top-level domain ([`SPECIAL_USE_TLDS`]).
    SpecialUse,
    /// An `xn--` label that is not valid Punycode of a lowercase,
    /// printable non-ASCII label, or a label with `--` in its third and
    /// fourth characters that is not an A-label (reserved, RFC 5891
    /// §4.2.3.1).
    BadLabel,
}

impl Unissuable {
    pub fn as_str(&self) -> &'static str {
        match self {
            Unissuable::OneLabel => "a single-label name",
            Unissuable::NumericTld => "a numeric top-level label",
            Unissuable::SpecialUse => "a special-use top-level domain",
            Unissuable::BadLabel => "a label that is bad IDNA or reserved (\"ab--\")",
        }
    }
}

/// Whether no CA can issue for `name`, a valid normalised name (see
/// [`is_queueable_name`]), and why. Cheap: one pass over at most 253
/// bytes, and Punycode decoding of `xn--` labels.
pub fn unissuable(name: &str) -> Option<Unissuable> {
    let tld = match name.rsplit_once('.') {
        Some((_, tld)) => tld,
        None => return Some(Unissuable::OneLabel),
    };
    // inet_aton(3) reads a decimal, octal (leading 0) or hexadecimal
    // (0x) number as an address part; normalize_sni refuses all-digit
    // top-level labels already, so only the hexadecimal form is left.
    let hex = tld
        .strip_prefix("0x")
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    if hex || tld.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Unissuable::NumericTld);
    }
    if SPECIAL_USE_TLDS.contains(&tld) {
        return Some(Unissuable::SpecialUse);
    }
    if !name.split('.').all(label_may_be_issued) {
        return Some(Unissuable::BadLabel);
    }
    None
}

/// An LDH label (already checked) that a CA may accept: an A-label must
/// decode to a lowercase, printable label with some non-ASCII character
/// (IDNA2008 refuses upper case and controls; a label that decodes to
/// ASCII only is a fake A-label); any other label must not have `--` in
/// its third and fourth characters (RFC 5891 §4.2.3.1).
fn label_may_be_issued(label: &str) -> bool {
    let Some(tail) = label.strip_prefix("xn--") else {
        return label.get(2..4) != Some("--");
    };
    let Some(chars) = punycode_decode(tail) else {
        return false;
    };
    chars.iter().any(|c| !c.is_ascii())
        && chars.iter().all(|&c| {
            if c.is_ascii() {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
            } else {
                !c.is_control() && !c.is_whitespace() && !c.is_uppercase()
            }
        })
}

/// Most enqueues one client address may cause per worker per
/// negative-cache period. A real visitor's first visit to a new customer
/// domain touches one to a few of its names (apex, `www`, a shop or API
/// name), each queued once; four covers that, and a name over the budget
/// keeps its allowance, so the next handshake for it from any other
/// address, or from this one in the next period, queues it. A one-address
/// random-SNI flood adds at most four names per period per worker to the
/// stream, instead of one per handshake.
pub const PER_ADDRESS: u32 = 4;
/// Most enqueues the addresses of one network (an IPv4 /24, an IPv6 /48)
/// may cause together per worker per negative-cache period, besides each
/// address's own [`PER_ADDRESS`]. One party easily holds many /64s (a free
/// tunnel broker hands out a /48: 65,536 of them) or several addresses of
/// one /24, so the per-address budget alone lets it multiply its share;
/// this caps one such party at four visitors' worth.
pub const PER_PREFIX: u32 = 4 * PER_ADDRESS;
/// Most client addresses, and most networks, a worker's budget remembers
/// in one period. Only those that caused an enqueue this period are held
/// (about 50 bytes each, so at most about 400 KB per worker). A full table
/// never refuses anyone: see [`AddressBudget`].
pub const ADDRESSES_MAX: usize = 4096;

/// Who made a handshake, as far as the on-demand budget trusts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// A TCP client's address: the PROXY protocol source when the listener
    /// has `proxy_protocol`, else the socket's peer address; or a QUIC
    /// client's address that nginx validated ([`Transport::QuicValidated`]).
    Address(IpAddr),
    /// A TCP connection without an IP address (a UNIX-domain listener):
    /// all of them share one budget.
    Local,
    /// A QUIC handshake whose address nginx has not validated (no
    /// `quic_retry on`): the certificate callback runs on the client's
    /// first Initial, which needs no return path, so the address means
    /// nothing and every such handshake shares one budget. A browser's first visit to a name is
    /// over TCP, which queues it under its own address whatever QUIC
    /// floods do.
    Quic,
}

/// How a handshake reached the certificate callback, as far as its
/// client's address goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP: the peer completed the three-way handshake, so its address
    /// (or the PROXY source its balancer vouched for) is real.
    Tcp,
    /// QUIC whose address nginx has not validated: the certificate
    /// callback runs on the client's first Initial.
    Quic,
    /// QUIC on a listener whose default server has `quic_retry on`: nginx
    /// creates a connection only for an Initial that carries a valid
    /// address validation token (a Retry's, or a NEW_TOKEN's, both bound
    /// to the client's address), so the peer address is a return path.
    QuicValidated,
}

/// Longest text address nginx writes for a PROXY source: an IPv6 address
/// (45 characters with an embedded IPv4 part) with room to spare; longer
/// text is not an address.
const PROXY_SRC_MAX: usize = 64;

impl Client {
    /// Who a handshake is charged to, from what the shell read off the
    /// connection: `proxy_src`, the PROXY protocol source nginx parsed
    /// (text, as in `c->proxy_protocol->src_addr`); `peer`, the socket's
    /// peer address (None for a UNIX-domain socket).
    ///
    /// - Unvalidated QUIC: [`Client::Quic`], whatever the addresses.
    /// - Validated QUIC: the peer address (nginx takes no PROXY header on
    ///   QUIC, so a source there is ignored); [`Client::Quic`] without one.
    /// - TCP: the PROXY source when it is an IP address, else the peer (a
    ///   header nginx kept but whose source is no address is charged to the
    ///   balancer, which all such connections then share), else
    ///   [`Client::Local`].
    ///
    /// An IPv4-mapped IPv6 address (a dual-stack listener) is its IPv4
    /// address, so both forms share one budget.
    pub fn of(proxy_src: Option<&[u8]>, peer: Option<IpAddr>, transport: Transport) -> Client {
        let address = |ip: IpAddr| Client::Address(ip.to_canonical());
        match transport {
            Transport::Quic => Client::Quic,
            Transport::QuicValidated => peer.map_or(Client::Quic, address),
            Transport::Tcp => proxy_src
                .and_then(parse_proxy_src)
                .or(peer)
                .map_or(Client::Local, address),
        }
    }
}

/// A PROXY source's text as an IP address: bounded, UTF-8, no zone id.
fn parse_proxy_src(src: &[u8]) -> Option<IpAddr> {
    if src.len() > PROXY_SRC_MAX {
        return None;
    }
    core::str::from_utf8(src).ok()?.parse().ok()
}

/// The budget key of an address: an IPv4 address, or the /64 of an IPv6
/// one (one subscriber's usual allocation); an IPv4-mapped IPv6 address
/// counts as its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressKey {
    V4(u32),
    V6(u64),
}

impl AddressKey {
    pub fn of(ip: IpAddr) -> AddressKey {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(u32::from(v4)),
                None => AddressKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }

    /// The network the address is counted in as well ([`PER_PREFIX`]): its
    /// IPv4 /24 or IPv6 /48.
    pub fn prefix(&self) -> PrefixKey {
        match *self {
            AddressKey::V4(a) => PrefixKey::V4(a >> 8),
            AddressKey::V6(p64) => PrefixKey::V6(p64 >> 16),
        }
    }
}

/// An IPv4 /24 or an IPv6 /48 ([`AddressKey::prefix`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrefixKey {
    V4(u32),
    V6(u64),
}

/// Why a handshake that could have queued its name did not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotQueued {
    /// No CA can issue for the name ([`unissuable`]); counted once per
    /// negative entry, whose allowance it uses up.
    Name,
    /// The client's address caused [`PER_ADDRESS`] enqueues this period.
    PerAddress,
    /// The addresses of the client's /24 or /48 caused [`PER_PREFIX`]
    /// enqueues this period.
    PerPrefix,
    /// QUIC handshakes, which share one budget ([`Client::Quic`]),
    /// caused [`PER_ADDRESS`] enqueues this period.
    Quic,
}

impl NotQueued {
    pub const ALL: [NotQueued; 4] = [
        NotQueued::Name,
        NotQueued::PerAddress,
        NotQueued::PerPrefix,
        NotQueued::Quic,
    ];

    /// The metric label (`dyncert_on_demand_refused_total{reason=}`).
    pub fn label(&self) -> &'static str {
        match self {
            NotQueued::Name => "name",
            NotQueued::PerAddress => "per_address",
            NotQueued::PerPrefix => "per_prefix",
            NotQueued::Quic => "quic",
        }
    }
}

/// How much of a prefix's budget its addresses used, and how many of its
/// addresses the table holds.
#[derive(Debug, Clone, Copy, Default)]
struct PrefixUse {
    used: u32,
    keys: u32,
}

/// Per-worker enqueue budget by client: at most `per_address` enqueues per
/// address and `per_prefix` per /24 or /48 in each period (the
/// negative-cache period), for QUIC handshakes together and for addresses
/// without IP together `per_address` each. Periods start at `offset` past a
/// multiple of the period, a value the worker draws at random, so that
/// nobody outside knows when a worker's budgets start again; the tables are
/// emptied when a new one starts.
///
/// Both tables hold at most `max` entries. A full table never refuses a
/// new address, which would let whoever fills it (one party with enough
/// /64s or PROXY headers it forges) keep everyone else from queueing:
/// - a new address evicts an address of the prefix holding the most
///   addresses in the table. That prefix's own count stays, so its
///   addresses together still cause at most `per_prefix` enqueues (an
///   evicted address only gets its `per_address` back within that);
/// - a new prefix evicts one prefix and its addresses, which start again.
///   The prefix table is full only when `max` networks have each queued a
///   name this period: a flood that already puts more names in the stream
///   than the issuer asks, which refusing newcomers would make worse for
///   real visitors, not better.
#[derive(Debug)]
pub struct AddressBudget {
    per_address: u32,
    per_prefix: u32,
    max: usize,
    period: Millis,
    offset: Millis,
    window: Millis,
    keys: HashMap<AddressKey, u32>,
    prefixes: HashMap<PrefixKey, PrefixUse>,
    local: u32,
    quic: u32,
}

impl AddressBudget {
    pub fn new(
        per_address: u32,
        per_prefix: u32,
        max: usize,
        period: Millis,
        offset: Millis,
    ) -> AddressBudget {
        let period = period.max(1);
        AddressBudget {
            per_address,
            per_prefix,
            max: max.max(1),
            period,
            offset: offset % period,
            window: 0,
            keys: HashMap::new(),
            prefixes: HashMap::new(),
            local: 0,
            quic: 0,
        }
    }

    fn roll(&mut self, now: Millis) {
        let window = now.saturating_add(self.offset) / self.period;
        if window != self.window {
            self.window = window;
            self.keys.clear();
            self.keys.shrink_to(self.max.min(64));
            self.prefixes.clear();
            self.prefixes.shrink_to(self.max.min(64));
            self.local = 0;
            self.quic = 0;
        }
    }

    /// Whether `client` may cause one more enqueue at `now` (nothing charged).
    pub fn check(&mut self, client: Client, now: Millis) -> Result<(), NotQueued> {
        self.roll(now);
        let key = match client {
            Client::Quic if self.quic >= self.per_address => return Err(NotQueued::Quic),
            Client::Local if self.local >= self.per_address => return Err(NotQueued::PerAddress),
            Client::Quic | Client::Local => return Ok(()),
            Client::Address(ip) => AddressKey::of(ip),
        };
        if self.keys.get(&key).copied().unwrap_or(0) >= self.per_address {
            return Err(NotQueued::PerAddress);
        }
        let prefix = self.prefixes.get(&key.prefix()).map_or(0, |p| p.used);
        if prefix >= self.per_prefix {
            return Err(NotQueued::PerPrefix);
        }
        Ok(())
    }

    /// Charges one enqueue to `client` (after [`Self::check`] passed).
    pub fn charge(&mut self, client: Client, now: Millis) {
        self.roll(now);
        let key = match client {
            Client::Quic => return self.quic = self.quic.saturating_add(1),
            Client::Local => return self.local = self.local.saturating_add(1),
            Client::Address(ip) => AddressKey::of(ip),
        };
        let prefix = key.prefix();
        if !self.prefixes.contains_key(&prefix) && self.prefixes.len() >= self.max {
            self.evict_prefix();
        }
        let new_key = !self.keys.contains_key(&key);
        if new_key && self.keys.len() >= self.max {
            self.evict_address();
        }
        let p = self.prefixes.entry(prefix).or_default();
        p.used = p.used.saturating_add(1);
        if new_key {
            p.keys += 1;
        }
        let n = self.keys.entry(key).or_insert(0);
        *n = n.saturating_add(1);
    }

    /// Drops one address of the prefix that holds the most addresses.
    fn evict_address(&mut self) {
        let Some((&prefix, _)) = self.prefixes.iter().max_by_key(|(_, p)| p.keys) else {
            return;
        };
        let Some(&key) = self.keys.keys().find(|k| k.prefix() == prefix) else {
            return;
        };
        self.keys.remove(&key);
        if let Some(p) = self.prefixes.get_mut(&prefix) {
            p.keys = p.keys.saturating_sub(1);
        }
    }

    /// Drops one prefix (the table's first: an arbitrary one, hash order)
    /// and its addresses.
    fn evict_prefix(&mut self) {
        let Some(&prefix) = self.prefixes.keys().next() else {
            return;
        };
        self.prefixes.remove(&prefix);
        self.keys.retain(|k, _| k.prefix() != prefix);
    }

    /// Addresses held this period.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Networks (/24, /48) held this period.
    pub fn prefixes(&self) -> usize {
        self.prefixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.local == 0 && self.quic == 0
    }
}

/// What a handshake on a server with `dyncert_on_demand on` that got no
/// certificate does for on-demand issuance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Take the name's allowance and queue the name now (the client is
    /// charged).
    Enqueue,
    /// Its lookup is still running: queue it when the lookup says it is
    /// unknown everywhere (the client is charged now).
    WhenFetched,
    /// Not queued, and counted; with [`NotQueued::Name`] the caller takes
    /// (uses up) the name's allowance, otherwise the allowance is kept.
    Refused(NotQueued),
    /// Nothing to do: an invalid name, or its allowance is used up and its
    /// lookup is not running.
    Nothing,
}

/// The decision at a handshake from `client` that found no certificate, on
/// a server with `dyncert_on_demand on`. `allowance`: the name's negative
/// entry would grant its one allowance now (not taken: the caller takes it
/// on [`Verdict::Enqueue`] and on [`NotQueued::Name`]); `pending`: its
/// lookup is running and the name is not yet waiting for it.
///
/// In order: an invalid name does nothing; a name no CA can issue for is
/// refused once per negative entry (its allowance is used up: no client
/// could queue it); a handshake that would queue nothing anyway (no
/// allowance, no lookup running) does nothing, and is not counted nor
/// charged; a client over its address's, its network's or the shared QUIC
/// budget is refused, and the name keeps its allowance for a handshake from
/// another client; otherwise the name is queued now (`allowance`) or when
/// its lookup ends (`pending`), and the client is charged.
pub fn decide(
    name: &str,
    client: Client,
    budget: &mut AddressBudget,
    now: Millis,
    allowance: bool,
    pending: bool,
) -> Verdict {
    if !is_queueable_name(name) {
        return Verdict::Nothing;
    }
    if unissuable(name).is_some() {
        return if allowance {
            Verdict::Refused(NotQueued::Name)
        } else {
            Verdict::Nothing
        };
    }
    if !allowance && !pending {
        return Verdict::Nothing;
    }
    if let Err(refusal) = budget.check(client, now) {
        return Verdict::Refused(refusal);
    }
    budget.charge(client, now);
    if allowance {
        Verdict::Enqueue
    } else {
        Verdict::WhenFetched
    }
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
    fn tcp_handshakes_are_charged_to_the_proxy_source_else_the_peer() {
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        let tcp = |src: Option<&[u8]>, peer| Client::of(src, peer, Transport::Tcp);
        assert_eq!(tcp(Some(b"203.0.113.9"), Some(peer)), ip("203.0.113.9"));
        assert_eq!(tcp(Some(b"2001:db8::1"), Some(peer)), ip("2001:db8::1"));
        assert_eq!(tcp(None, Some(peer)), ip("192.0.2.7"));
        // A source that is no address is the balancer's (the peer's).
        for bad in [
            &b""[..],
            b"UNKNOWN",
            b"203.0.113.9 ",
            b"203.0.113.256",
            b"fe80::1%eth0",
            b"\xff\xfe",
            b"localhost",
            &[b'1'; 200],
        ] {
            assert_eq!(tcp(Some(bad), Some(peer)), ip("192.0.2.7"), "{bad:?}");
        }
        // A UNIX-domain socket: no peer address.
        assert_eq!(tcp(None, None), Client::Local);
        assert_eq!(tcp(Some(b"bad"), None), Client::Local);
        assert_eq!(tcp(Some(b"203.0.113.9"), None), ip("203.0.113.9"));
    }

    #[test]
    fn an_ipv4_mapped_address_is_its_ipv4_address() {
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            Client::of(None, Some(mapped), Transport::Tcp),
            ip("192.0.2.7")
        );
        assert_eq!(
            Client::of(Some(b"::ffff:203.0.113.9"), None, Transport::Tcp),
            ip("203.0.113.9")
        );
        assert_eq!(
            Client::of(None, Some(mapped), Transport::QuicValidated),
            ip("192.0.2.7")
        );
        // Not IPv4-compatible ("::a.b.c.d", deprecated): an IPv6 /64.
        let compat: IpAddr = "::192.0.2.7".parse().unwrap();
        assert_eq!(
            Client::of(None, Some(compat), Transport::Tcp),
            Client::Address(compat)
        );
    }

    #[test]
    fn unvalidated_quic_shares_one_budget_whatever_its_addresses() {
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        for src in [None, Some(&b"203.0.113.9"[..])] {
            for p in [None, Some(peer)] {
                assert_eq!(Client::of(src, p, Transport::Quic), Client::Quic);
            }
        }
    }

    #[test]
    fn validated_quic_is_charged_to_its_peer_and_never_to_a_proxy_source() {
        let peer: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        let v = |src, peer| Client::of(src, peer, Transport::QuicValidated);
        assert_eq!(v(None, Some(peer)), Client::Address(peer));
        assert_eq!(
            v(Some(&b"203.0.113.9"[..]), Some(peer)),
            Client::Address(peer)
        );
        assert_eq!(v(Some(&b"203.0.113.9"[..]), None), Client::Quic);
        assert_eq!(v(None, None), Client::Quic);
    }

    const T0: Millis = 1_000_000;
    const PERIOD: Millis = 30_000;

    fn ip(s: &str) -> Client {
        Client::Address(s.parse().unwrap())
    }

    fn budget() -> AddressBudget {
        AddressBudget::new(PER_ADDRESS, PER_PREFIX, ADDRESSES_MAX, PERIOD, 0)
    }

    #[test]
    fn an_invalid_name_never_queues_nor_takes_the_allowance() {
        let mut b = budget();
        for name in ["10.0.0.1", "Upper.example", "a..b"] {
            let v = decide(name, ip("192.0.2.1"), &mut b, T0, true, true);
            assert_eq!(v, Verdict::Nothing, "{name}");
        }
        assert!(b.is_empty());
    }

    #[test]
    fn a_valid_name_queues_when_the_allowance_is_granted_and_charges_its_address() {
        let mut b = budget();
        let c = ip("192.0.2.1");
        assert_eq!(
            decide("a.example", c, &mut b, T0, true, false),
            Verdict::Enqueue
        );
        assert_eq!(b.len(), 1);
        // Allowance used up, lookup not running: nothing, nothing charged.
        assert_eq!(
            decide("a.example", c, &mut b, T0, false, false),
            Verdict::Nothing
        );
        // Its lookup is running: queued when it ends, charged now.
        assert_eq!(
            decide("b.example", c, &mut b, T0, false, true),
            Verdict::WhenFetched
        );
        assert_eq!(
            decide("c.example", c, &mut b, T0, true, false),
            Verdict::Enqueue
        );
        assert_eq!(
            decide("d.example", c, &mut b, T0, true, false),
            Verdict::Enqueue
        );
        // Four charged: over the budget.
        assert_eq!(
            decide("e.example", c, &mut b, T0, true, true),
            Verdict::Refused(NotQueued::PerAddress)
        );
    }

    #[test]
    fn over_its_budget_an_address_leaves_the_names_allowance_for_another_address() {
        let mut b = budget();
        let flood = ip("203.0.113.9");
        for i in 0..PER_ADDRESS {
            let name = format!("f{i}.flood.example");
            assert_eq!(
                decide(&name, flood, &mut b, T0, true, false),
                Verdict::Enqueue
            );
        }
        // Refused: the caller keeps the allowance, so it is still there
        // for the next handshake.
        for _ in 0..100 {
            let v = decide("shop.example.net", flood, &mut b, T0 + 1, true, false);
            assert_eq!(v, Verdict::Refused(NotQueued::PerAddress));
        }
        let v = decide(
            "shop.example.net",
            ip("198.51.100.7"),
            &mut b,
            T0 + 2,
            true,
            false,
        );
        assert_eq!(v, Verdict::Enqueue);
    }

    #[test]
    fn the_budget_starts_again_with_each_period() {
        let mut b = budget();
        let c = ip("192.0.2.1");
        let start = T0 - T0 % PERIOD;
        for i in 0..PER_ADDRESS {
            let name = format!("n{i}.example");
            assert_eq!(
                decide(&name, c, &mut b, start, true, false),
                Verdict::Enqueue
            );
        }
        let last = start + PERIOD - 1;
        assert_eq!(
            decide("x.example", c, &mut b, last, true, false),
            Verdict::Refused(NotQueued::PerAddress)
        );
        assert_eq!(
            decide("x.example", c, &mut b, last + 1, true, false),
            Verdict::Enqueue
        );
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn ipv4_counts_per_address_and_ipv6_per_64() {
        assert_eq!(
            AddressKey::of("2001:db8:1:2::1".parse().unwrap()),
            AddressKey::of("2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap())
        );
        assert_ne!(
            AddressKey::of("2001:db8:1:2::1".parse().unwrap()),
            AddressKey::of("2001:db8:1:3::1".parse().unwrap())
        );
        assert_ne!(
            AddressKey::of("192.0.2.1".parse().unwrap()),
            AddressKey::of("192.0.2.2".parse().unwrap())
        );
        assert_eq!(
            AddressKey::of("::ffff:192.0.2.1".parse().unwrap()),
            AddressKey::of("192.0.2.1".parse().unwrap())
        );
        // A flood from one /64, each handshake from another address in it.
        let mut b = budget();
        let mut queued = 0;
        for i in 0..100u32 {
            let c = ip(&format!("2001:db8:1:2::{i:x}"));
            let name = format!("f{i}.example");
            queued += u32::from(decide(&name, c, &mut b, T0, true, false) == Verdict::Enqueue);
        }
        assert_eq!(queued, PER_ADDRESS);
    }

    #[test]
    fn one_48_of_5000_64s_queues_its_network_budget_and_a_visitor_still_queues() {
        let mut b = budget();
        let mut queued = 0;
        for i in 0..5000u32 {
            let c = ip(&format!("2001:db8:1:{i:x}::1"));
            let name = format!("f{i}.flood.example");
            match decide(&name, c, &mut b, T0, true, false) {
                Verdict::Enqueue => queued += 1,
                v => assert_eq!(v, Verdict::Refused(NotQueued::PerPrefix)),
            }
        }
        assert_eq!(queued, PER_PREFIX);
        assert_eq!(b.len(), PER_PREFIX as usize);
        for visitor in ["198.51.100.7", "2001:db8:2::1", "2001:db8:1:ffff::1"] {
            let v = decide("shop.example.net", ip(visitor), &mut b, T0, true, false);
            let want = if visitor == "2001:db8:1:ffff::1" {
                Verdict::Refused(NotQueued::PerPrefix)
            } else {
                Verdict::Enqueue
            };
            assert_eq!(v, want, "{visitor}");
        }
    }

    #[test]
    fn the_addresses_of_one_ipv4_24_share_a_network_budget() {
        let mut b = budget();
        let mut queued = 0;
        for i in 1..=254u32 {
            let name = format!("f{i}.flood.example");
            let c = ip(&format!("203.0.113.{i}"));
            queued += u32::from(decide(&name, c, &mut b, T0, true, false) == Verdict::Enqueue);
        }
        assert_eq!(queued, PER_PREFIX);
        assert_eq!(
            decide("a.example", ip("203.0.114.1"), &mut b, T0, true, false),
            Verdict::Enqueue
        );
        assert_eq!(
            AddressKey::of("203.0.113.1".parse().unwrap()).prefix(),
            PrefixKey::V4(0xcb_00_71)
        );
        assert_eq!(
            AddressKey::of("2001:db8:1:ffff::1".parse().unwrap()).prefix(),
            AddressKey::of("2001:db8:1::".parse().unwrap()).prefix()
        );
        assert_ne!(
            AddressKey::of("2001:db8:1::".parse().unwrap()).prefix(),
            AddressKey::of("2001:db8:2::".parse().unwrap()).prefix()
        );
    }

    #[test]
    fn a_full_address_table_evicts_within_the_largest_network_and_refuses_nobody() {
        let mut b = AddressBudget::new(PER_ADDRESS, PER_PREFIX, 8, PERIOD, 0);
        // 6 addresses of one /24 and 2 of another fill the table.
        for i in 1..=6 {
            let c = ip(&format!("192.0.2.{i}"));
            assert_eq!(
                decide("a.example", c, &mut b, T0, true, false),
                Verdict::Enqueue
            );
        }
        for c in ["198.51.100.1", "198.51.100.2"] {
            assert_eq!(
                decide("a.example", ip(c), &mut b, T0, true, false),
                Verdict::Enqueue
            );
        }
        assert_eq!(b.len(), 8);
        // A new address is not refused: an address of 192.0.2.0/24 goes.
        for c in ["203.0.113.1", "203.0.113.2"] {
            assert_eq!(
                decide("b.example", ip(c), &mut b, T0, true, false),
                Verdict::Enqueue
            );
        }
        assert_eq!(b.len(), 8);
        for c in ["198.51.100.1", "198.51.100.2"] {
            assert_eq!(
                decide("c.example", ip(c), &mut b, T0, true, false),
                Verdict::Enqueue
            );
        }
        // Evicted addresses do not lift their network's cap: in all, the
        // /24 queues PER_PREFIX names, however its addresses churn.
        let mut queued = 6;
        for i in 7..=254 {
            let c = ip(&format!("192.0.2.{i}"));
            queued +=
                u32::from(decide("d.example", c, &mut b, T0, true, false) == Verdict::Enqueue);
        }
        assert_eq!(queued, PER_PREFIX);
        assert!(b.len() <= 8);
    }

    #[test]
    fn a_full_network_table_evicts_a_network_and_refuses_nobody() {
        let mut b = AddressBudget::new(PER_ADDRESS, PER_PREFIX, 4, PERIOD, 0);
        for i in 0..100 {
            let c = ip(&format!("10.{i}.0.1"));
            assert_eq!(
                decide("a.example", c, &mut b, T0, true, false),
                Verdict::Enqueue
            );
            assert!(b.prefixes() <= 4 && b.len() <= 4);
        }
    }

    #[test]
    fn windows_start_at_the_workers_offset() {
        const OFFSET: Millis = 12_345;
        let mut b = AddressBudget::new(PER_ADDRESS, PER_PREFIX, ADDRESSES_MAX, PERIOD, OFFSET);
        let c = ip("192.0.2.1");
        let start = 100 * PERIOD - OFFSET;
        for i in 0..PER_ADDRESS {
            let name = format!("n{i}.example");
            assert_eq!(
                decide(&name, c, &mut b, start, true, false),
                Verdict::Enqueue
            );
        }
        // A multiple of the period is no boundary...
        assert_eq!(
            decide("x.example", c, &mut b, 100 * PERIOD, true, false),
            Verdict::Refused(NotQueued::PerAddress)
        );
        // ...the offset one is.
        assert_eq!(
            decide("x.example", c, &mut b, start + PERIOD - 1, true, false),
            Verdict::Refused(NotQueued::PerAddress)
        );
        assert_eq!(
            decide("x.example", c, &mut b, start + PERIOD, true, false),
            Verdict::Enqueue
        );
    }

    #[test]
    fn a_handshake_that_would_queue_nothing_is_neither_refused_nor_charged() {
        let mut b = budget();
        let c = ip("192.0.2.1");
        for i in 0..PER_ADDRESS {
            let name = format!("n{i}.example");
            assert_eq!(decide(&name, c, &mut b, T0, true, false), Verdict::Enqueue);
        }
        // Over its budget, but the name's allowance is used up and its
        // lookup is not running: nothing would be queued, so no refusal.
        assert_eq!(
            decide("n0.example", c, &mut b, T0, false, false),
            Verdict::Nothing
        );
        // A name that would be queued is refused.
        assert_eq!(
            decide("new.example", c, &mut b, T0, false, true),
            Verdict::Refused(NotQueued::PerAddress)
        );
        // Nothing charged for a handshake that queues nothing.
        let mut b = budget();
        for _ in 0..10 {
            assert_eq!(
                decide("n0.example", c, &mut b, T0, false, false),
                Verdict::Nothing
            );
        }
        assert!(b.is_empty());
    }

    #[test]
    fn local_clients_share_one_budget() {
        let mut b = budget();
        for i in 0..PER_ADDRESS {
            let name = format!("n{i}.example");
            assert_eq!(
                decide(&name, Client::Local, &mut b, T0, true, false),
                Verdict::Enqueue
            );
        }
        assert_eq!(
            decide("x.example", Client::Local, &mut b, T0, true, false),
            Verdict::Refused(NotQueued::PerAddress)
        );
    }

    #[test]
    fn quic_handshakes_share_one_budget_apart_from_tcp_addresses() {
        let mut b = budget();
        for i in 0..PER_ADDRESS {
            let name = format!("q{i}.example");
            assert_eq!(
                decide(&name, Client::Quic, &mut b, T0, true, false),
                Verdict::Enqueue
            );
        }
        let v = decide("q.example", Client::Quic, &mut b, T0, true, true);
        assert_eq!(v, Verdict::Refused(NotQueued::Quic));
        // The same name from a TCP client (here from 127.0.0.1, which the
        // QUIC handshakes may have claimed too) is queued.
        assert_eq!(
            decide("q.example", ip("127.0.0.1"), &mut b, T0, true, false),
            Verdict::Enqueue
        );
    }

    #[test]
    fn names_no_ca_can_issue_are_refused_once_per_allowance_and_charge_nothing() {
        let mut b = budget();
        let c = ip("192.0.2.1");
        for name in [
            "localhost",
            "com",
            "metadata",
            "0x7f000001",
            "foo.local",
            "xn--a.example",
        ] {
            assert_eq!(
                decide(name, c, &mut b, T0, true, true),
                Verdict::Refused(NotQueued::Name),
                "{name}"
            );
            assert_eq!(
                decide(name, c, &mut b, T0, false, true),
                Verdict::Nothing,
                "{name}"
            );
        }
        assert!(b.is_empty());
    }

    #[test]
    fn unissuable_names_and_why() {
        use Unissuable::*;
        for (name, why) in [
            ("localhost", OneLabel),
            ("com", OneLabel),
            ("metadata", OneLabel),
            ("0x7f000001", OneLabel),
            ("a.0x7f", NumericTld),
            ("0x7f.0x1", NumericTld),
            ("0x7f.0.0.0x1", NumericTld),
            ("foo.localhost", SpecialUse),
            ("foo.invalid", SpecialUse),
            ("printer.local", SpecialUse),
            ("x.onion", SpecialUse),
            ("a.alt", SpecialUse),
            ("1.0.0.127.in-addr.arpa", SpecialUse),
            ("router.home.arpa", SpecialUse),
            ("xn--a.example", BadLabel),
            ("xn--99999999999.example", BadLabel),
            ("shop.xn--abc-.example", BadLabel),
            ("xn--abc.example", BadLabel),
            ("ab--cd.example.com", BadLabel),
            ("xn--bcher-kva.xn--a", BadLabel),
            // Decodes to ASCII only: a fake A-label.
            ("xn--ab-.example", BadLabel),
        ] {
            assert_eq!(unissuable(name), Some(why), "{name}");
        }
        for name in [
            "shop.example.com",
            "a.b",
            "xn--bcher-kva.example",
            "www.xn--mnchen-3ya.de",
            "xn--egbpdaj6bu4bxfgehfvwxn.example",
            "shop.customer.example.net",
            "ok-visitor.acme.test",
            "a.example",
            "x.internal",
            "a-b--c.example",
            "0x.example.com",
            "co.0xg",
            "xn--e1afmkfd.xn--80akhbyknj4f",
        ] {
            assert_eq!(unissuable(name), None, "{name}");
        }
    }

    #[test]
    fn refusal_labels_are_distinct() {
        let labels: std::collections::HashSet<_> =
            NotQueued::ALL.iter().map(NotQueued::label).collect();
        assert_eq!(labels.len(), NotQueued::ALL.len());
    }
}
