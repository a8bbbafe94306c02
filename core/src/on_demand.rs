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
/// Most client addresses a worker's budget remembers in one period. Only
/// addresses that caused an enqueue this period are held (about 50 bytes
/// each, so at most about 200 KB per worker); when the table is full, a
/// new address is refused until the period ends (see [`AddressBudget`]).
pub const ADDRESSES_MAX: usize = 4096;

/// Who made a handshake, as far as the on-demand budget trusts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// A TCP client's address: the PROXY protocol source when the listener
    /// has `proxy_protocol`, else the socket's peer address.
    Address(IpAddr),
    /// A TCP connection without an IP address (a UNIX-domain listener):
    /// all of them share one budget.
    Local,
    /// A QUIC handshake: the certificate callback runs before nginx has
    /// validated the client's address (one Initial, which needs no return
    /// path, gets there), so the address means nothing and every QUIC
    /// handshake shares one budget. A browser's first visit to a name is
    /// over TCP, which queues it under its own address whatever QUIC
    /// floods do.
    Quic,
}

/// The budget key of an address: an IPv4 address, or the /64 of an IPv6
/// one (one subscriber's usual allocation); an IPv4-mapped IPv6 address
/// counts as its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressKey {
    V4(u32),
    V6(u64),
    Local,
    Quic,
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
}

/// Why a handshake that could have queued its name did not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotQueued {
    /// No CA can issue for the name ([`unissuable`]); counted once per
    /// negative entry, whose allowance it uses up.
    Name,
    /// The client's address caused [`PER_ADDRESS`] enqueues this period.
    PerAddress,
    /// The budget's table is full ([`ADDRESSES_MAX`] addresses this period).
    Addresses,
    /// QUIC handshakes, which share one budget ([`Client::Quic`]),
    /// caused [`PER_ADDRESS`] enqueues this period.
    Quic,
}

impl NotQueued {
    pub const ALL: [NotQueued; 4] = [
        NotQueued::Name,
        NotQueued::PerAddress,
        NotQueued::Addresses,
        NotQueued::Quic,
    ];

    /// The metric label (`dyncert_on_demand_refused_total{reason=}`).
    pub fn label(&self) -> &'static str {
        match self {
            NotQueued::Name => "name",
            NotQueued::PerAddress => "per_address",
            NotQueued::Addresses => "addresses",
            NotQueued::Quic => "quic",
        }
    }
}

/// Per-worker enqueue budget by client address: at most `per_address`
/// enqueues per address in each period (the negative-cache period: the
/// windows are aligned to multiples of it, and the table is emptied when a
/// new one starts), for at most `max` addresses per period.
///
/// When the table is full, a new address is refused (fails closed): the
/// table holds only addresses that caused an enqueue this period, so it
/// fills only when `max` addresses have already queued names in one
/// period, a distributed flood; evicting would let such a flood queue
/// without bound, which is what the budget exists to stop. Real names are
/// not lost: a refused handshake leaves the name's allowance, and the
/// table empties when the period ends.
#[derive(Debug)]
pub struct AddressBudget {
    per_address: u32,
    max: usize,
    period: Millis,
    window: Millis,
    used: HashMap<AddressKey, u32>,
}

impl AddressBudget {
    pub fn new(per_address: u32, max: usize, period: Millis) -> AddressBudget {
        AddressBudget {
            per_address,
            max,
            period: period.max(1),
            window: 0,
            used: HashMap::new(),
        }
    }

    fn roll(&mut self, now: Millis) {
        let window = now / self.period;
        if window != self.window {
            self.window = window;
            self.used.clear();
            self.used.shrink_to(self.max.min(64));
        }
    }

    /// Whether `key` may cause one more enqueue at `now` (nothing charged).
    pub fn check(&mut self, key: AddressKey, now: Millis) -> Result<(), NotQueued> {
        self.roll(now);
        let over = if key == AddressKey::Quic {
            NotQueued::Quic
        } else {
            NotQueued::PerAddress
        };
        match self.used.get(&key) {
            Some(&n) if n >= self.per_address => Err(over),
            Some(_) => Ok(()),
            None if self.per_address == 0 => Err(over),
            None if self.used.len() >= self.max => Err(NotQueued::Addresses),
            None => Ok(()),
        }
    }

    /// Charges one enqueue to `key` (after [`Self::check`] passed).
    pub fn charge(&mut self, key: AddressKey, now: Millis) {
        self.roll(now);
        if self.used.len() < self.max || self.used.contains_key(&key) {
            *self.used.entry(key).or_insert(0) += 1;
        }
    }

    /// Addresses held this period.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

/// What a handshake on a server with `dyncert_on_demand on` that got no
/// certificate does for on-demand issuance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Queue the name now (its allowance is taken, its address charged).
    Enqueue,
    /// Its lookup is still running: queue it when the lookup says it is
    /// unknown everywhere (the address is charged now).
    WhenFetched,
    /// Not queued, and counted.
    Refused(NotQueued),
    /// Nothing to do: an invalid name, or its allowance is used up.
    Nothing,
}

/// The decision at a handshake that found no certificate, on a server with
/// `dyncert_on_demand on`. In order: an invalid name does nothing; a name
/// no CA can issue for is refused, once per negative entry (its allowance,
/// granted by `take`, is used up: no client could queue it); a client
/// address (all QUIC handshakes sharing one) over its budget is refused
/// without calling `take`, so the name's allowance is left for a handshake
/// from another address; otherwise the name is queued when `take` grants
/// its negative entry's one allowance, or later when `pending` says its
/// lookup is running (and the name not yet waiting for it), and only then
/// is the address charged.
pub fn decide(
    name: &str,
    client: Client,
    budget: &mut AddressBudget,
    now: Millis,
    take: impl FnOnce() -> bool,
    pending: impl FnOnce() -> bool,
) -> Verdict {
    if !is_queueable_name(name) {
        return Verdict::Nothing;
    }
    if unissuable(name).is_some() {
        return if take() {
            Verdict::Refused(NotQueued::Name)
        } else {
            Verdict::Nothing
        };
    }
    let key = match client {
        Client::Address(ip) => AddressKey::of(ip),
        Client::Local => AddressKey::Local,
        Client::Quic => AddressKey::Quic,
    };
    if let Err(refusal) = budget.check(key, now) {
        return Verdict::Refused(refusal);
    }
    let verdict = if take() {
        Verdict::Enqueue
    } else if pending() {
        Verdict::WhenFetched
    } else {
        return Verdict::Nothing;
    };
    budget.charge(key, now);
    verdict
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

    const T0: Millis = 1_000_000;
    const PERIOD: Millis = 30_000;

    fn ip(s: &str) -> Client {
        Client::Address(s.parse().unwrap())
    }

    fn budget() -> AddressBudget {
        AddressBudget::new(PER_ADDRESS, ADDRESSES_MAX, PERIOD)
    }

    #[test]
    fn an_invalid_name_never_queues_nor_takes_the_allowance() {
        let mut b = budget();
        for name in ["10.0.0.1", "Upper.example", "a..b"] {
            let mut taken = false;
            let v = decide(
                name,
                ip("192.0.2.1"),
                &mut b,
                T0,
                || {
                    taken = true;
                    true
                },
                || true,
            );
            assert_eq!(v, Verdict::Nothing, "{name}");
            assert!(!taken, "{name}");
        }
        assert!(b.is_empty());
    }

    #[test]
    fn a_valid_name_queues_when_the_allowance_is_granted_and_charges_its_address() {
        let mut b = budget();
        let c = ip("192.0.2.1");
        assert_eq!(
            decide("a.example", c, &mut b, T0, || true, || false),
            Verdict::Enqueue
        );
        assert_eq!(b.len(), 1);
        // Allowance used up, lookup not running: nothing, nothing charged.
        assert_eq!(
            decide("a.example", c, &mut b, T0, || false, || false),
            Verdict::Nothing
        );
        // Its lookup is running: queued when it ends, charged now.
        assert_eq!(
            decide("b.example", c, &mut b, T0, || false, || true),
            Verdict::WhenFetched
        );
        assert_eq!(
            decide("c.example", c, &mut b, T0, || true, || false),
            Verdict::Enqueue
        );
        assert_eq!(
            decide("d.example", c, &mut b, T0, || true, || false),
            Verdict::Enqueue
        );
        // Four charged: over the budget.
        assert_eq!(
            decide("e.example", c, &mut b, T0, || true, || true),
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
                decide(&name, flood, &mut b, T0, || true, || false),
                Verdict::Enqueue
            );
        }
        let mut allowance = true;
        for _ in 0..100 {
            let v = decide(
                "shop.example.net",
                flood,
                &mut b,
                T0 + 1,
                || std::mem::take(&mut allowance),
                || false,
            );
            assert_eq!(v, Verdict::Refused(NotQueued::PerAddress));
        }
        assert!(allowance, "the flooding address never took the allowance");
        let v = decide(
            "shop.example.net",
            ip("198.51.100.7"),
            &mut b,
            T0 + 2,
            || std::mem::take(&mut allowance),
            || false,
        );
        assert_eq!(v, Verdict::Enqueue);
        assert!(!allowance);
    }

    #[test]
    fn the_budget_starts_again_with_each_period() {
        let mut b = budget();
        let c = ip("192.0.2.1");
        let start = T0 - T0 % PERIOD;
        for i in 0..PER_ADDRESS {
            let name = format!("n{i}.example");
            assert_eq!(
                decide(&name, c, &mut b, start, || true, || false),
                Verdict::Enqueue
            );
        }
        let last = start + PERIOD - 1;
        assert_eq!(
            decide("x.example", c, &mut b, last, || true, || false),
            Verdict::Refused(NotQueued::PerAddress)
        );
        assert_eq!(
            decide("x.example", c, &mut b, last + 1, || true, || false),
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
            queued +=
                u32::from(decide(&name, c, &mut b, T0, || true, || false) == Verdict::Enqueue);
        }
        assert_eq!(queued, PER_ADDRESS);
    }

    #[test]
    fn a_full_table_refuses_new_addresses_until_the_period_ends() {
        let mut b = AddressBudget::new(PER_ADDRESS, 3, PERIOD);
        let start = T0 - T0 % PERIOD;
        for i in 1..=3 {
            let c = ip(&format!("192.0.2.{i}"));
            assert_eq!(
                decide("a.example", c, &mut b, start, || true, || false),
                Verdict::Enqueue
            );
        }
        let mut taken = false;
        let v = decide(
            "b.example",
            ip("192.0.2.4"),
            &mut b,
            start,
            || {
                taken = true;
                true
            },
            || true,
        );
        assert_eq!(v, Verdict::Refused(NotQueued::Addresses));
        assert!(!taken, "the allowance is kept");
        // Addresses already held still have their budget.
        assert_eq!(
            decide(
                "c.example",
                ip("192.0.2.1"),
                &mut b,
                start,
                || true,
                || false
            ),
            Verdict::Enqueue
        );
        assert_eq!(b.len(), 3);
        assert_eq!(
            decide(
                "b.example",
                ip("192.0.2.4"),
                &mut b,
                start + PERIOD,
                || true,
                || false
            ),
            Verdict::Enqueue
        );
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn local_clients_share_one_budget() {
        let mut b = budget();
        for i in 0..PER_ADDRESS {
            let name = format!("n{i}.example");
            assert_eq!(
                decide(&name, Client::Local, &mut b, T0, || true, || false),
                Verdict::Enqueue
            );
        }
        assert_eq!(
            decide("x.example", Client::Local, &mut b, T0, || true, || false),
            Verdict::Refused(NotQueued::PerAddress)
        );
    }

    #[test]
    fn quic_handshakes_share_one_budget_apart_from_tcp_addresses() {
        let mut b = budget();
        for i in 0..PER_ADDRESS {
            let name = format!("q{i}.example");
            assert_eq!(
                decide(&name, Client::Quic, &mut b, T0, || true, || false),
                Verdict::Enqueue
            );
        }
        let mut taken = false;
        let v = decide(
            "q.example",
            Client::Quic,
            &mut b,
            T0,
            || {
                taken = true;
                true
            },
            || true,
        );
        assert_eq!(v, Verdict::Refused(NotQueued::Quic));
        assert!(!taken);
        // The same name from a TCP client (here from 127.0.0.1, which the
        // QUIC handshakes may have claimed too) is queued.
        assert_eq!(
            decide("q.example", ip("127.0.0.1"), &mut b, T0, || true, || false),
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
                decide(name, c, &mut b, T0, || true, || true),
                Verdict::Refused(NotQueued::Name),
                "{name}"
            );
            assert_eq!(
                decide(name, c, &mut b, T0, || false, || true),
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
