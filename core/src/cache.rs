//! Per-worker certificate cache policy: an LRU keyed by normalised name and
//! bounded in entries and in bytes, with a soft TTL (serve, refresh in the
//! background), a hard TTL (stale-if-error window), the certificate's own
//! notAfter as an absolute cut-off, and short-lived negative entries for
//! names no source knows.
//!
//! Generic over the cached value so the policy is tested here without
//! OpenSSL; the glue stores its parsed chain and key. Time is passed in on
//! every call (see [`Clock`]) so tests drive it by hand and never sleep.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the UNIX epoch.
pub type Millis = u64;

/// Source of the current time, injectable so cache tests never sleep.
pub trait Clock {
    fn now(&self) -> Millis;
}

/// Wall-clock time. Wall time rather than a monotonic clock because entries
/// are compared with certificate notAfter dates, which are wall time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        // A clock before 1970 or past year 584 million reads as 0 or
        // saturates; neither can panic.
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
            Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
        })
    }
}

/// What a negative entry weighs against [`CachePolicy::max_bytes`]: the
/// name, the node and the map slot, roughly. Not zero, so a random-SNI
/// flood cannot fill a byte-bounded cache with free entries.
pub const NEGATIVE_ENTRY_BYTES: usize = 64;

/// Sizes and lifetimes, from `dyncert_cache max= max_size= valid= stale=
/// negative=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// Most entries, positive and negative together; 0 disables caching.
    pub max_entries: usize,
    /// Most bytes, as weighed by the caller in
    /// [`CertCache::insert_weighted`]; 0 means no byte bound.
    pub max_bytes: usize,
    /// Age below which a positive entry is served without a refresh.
    pub valid: Millis,
    /// How long past `valid` a positive entry is still served while it is
    /// refreshed (and while refreshes fail).
    pub stale: Millis,
    /// Lifetime of a negative entry.
    pub negative: Millis,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            max_entries: 10_000,
            max_bytes: 0,
            valid: 10 * 60 * 1000,
            stale: 60 * 60 * 1000,
            negative: 30 * 1000,
        }
    }
}

/// The answer to a lookup.
#[derive(Debug)]
pub enum Lookup<'a, V> {
    /// Before its `fresh_until` (by default `valid` after it was fetched):
    /// serve.
    Fresh(&'a V),
    /// Past `fresh_until` but within `valid + stale` of its fetch (and
    /// before its own `expires_at`): serve, and the caller should schedule a
    /// background refresh (`refresh_due` tells whether one was already
    /// requested).
    Stale { value: &'a V, refresh_due: bool },
    /// Known not to exist (negative entry younger than `negative`).
    Negative,
    /// Nothing usable (absent, or dropped now because past valid+stale or
    /// past expires_at).
    Miss,
}

/// Whether a background refresh of a stale entry may be requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refresh {
    Idle,
    Requested,
    /// The last refresh failed; another may be requested from this time on.
    RetryAt(Millis),
}

enum Entry<V> {
    Positive {
        value: V,
        /// Served without a refresh before this time.
        fresh_until: Millis,
        /// Dropped at this time (fetch time + valid + stale): the end of
        /// stale-if-error.
        stale_until: Millis,
        /// The certificate's notAfter: never served from this time on.
        expires_at: Millis,
        refresh: Refresh,
    },
    Negative {
        at: Millis,
    },
}

/// How an entry stands at a given time, computed without touching it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Fresh,
    Stale,
    Negative,
    Expired,
}

impl<V> Entry<V> {
    fn value(&self) -> Option<&V> {
        match self {
            Entry::Positive { value, .. } => Some(value),
            Entry::Negative { .. } => None,
        }
    }

    fn state(&self, policy: &CachePolicy, now: Millis) -> State {
        match *self {
            Entry::Positive {
                fresh_until,
                stale_until,
                expires_at,
                ..
            } => {
                // Never serve a certificate past its notAfter, whatever the
                // TTLs. Absolute deadlines also mean a clock that stepped
                // back makes the entry look new, not ancient.
                if expires_at <= now || stale_until <= now {
                    State::Expired
                } else if now < fresh_until {
                    State::Fresh
                } else {
                    State::Stale
                }
            }
            Entry::Negative { at } => {
                // Saturating: a clock that stepped back keeps the entry.
                if now.saturating_sub(at) < policy.negative {
                    State::Negative
                } else {
                    State::Expired
                }
            }
        }
    }
}

/// Marks "no neighbour" in the intrusive list.
const NIL: usize = usize::MAX;

struct Node<V> {
    name: String,
    entry: Entry<V>,
    /// Weight counted in `CertCache::bytes`.
    bytes: usize,
    /// Towards the most recently used end.
    prev: usize,
    /// Towards the least recently used end.
    next: usize,
}

/// Bounded LRU with O(1) lookup, touch, insert and eviction: a map from
/// name to slot in a slab of nodes linked most- to least-recently used,
/// with freed slots reused through a free list.
pub struct CertCache<V> {
    policy: CachePolicy,
    index: HashMap<String, usize>,
    /// Sum of the weights of the entries in `index`.
    bytes: usize,
    slots: Vec<Option<Node<V>>>,
    free: Vec<usize>,
    /// Most recently used.
    head: usize,
    /// Least recently used: the next to be evicted.
    tail: usize,
}

impl<V> CertCache<V> {
    pub fn new(policy: CachePolicy) -> Self {
        CertCache {
            policy,
            index: HashMap::new(),
            bytes: 0,
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    pub fn policy(&self) -> &CachePolicy {
        &self.policy
    }

    /// Looks up and marks as most recently used. Entries whose `expires_at`
    /// (the certificate's notAfter) is ≤ now are removed and reported as
    /// Miss (never serve past notAfter). Positive entries past valid+stale
    /// are removed -> Miss. Negative entries past `negative` are removed ->
    /// Miss. With `Stale`, the first call returns refresh_due=true and marks
    /// the refresh as requested so later calls return false until
    /// `insert`/`refresh_failed` happens.
    pub fn get(&mut self, name: &str, now: Millis) -> Lookup<'_, V> {
        let Some(&slot) = self.index.get(name) else {
            return Lookup::Miss;
        };
        let state = match self.node(slot) {
            Some(node) => node.entry.state(&self.policy, now),
            None => return Lookup::Miss,
        };
        if state == State::Expired {
            self.remove_slot(slot);
            return Lookup::Miss;
        }
        self.move_to_front(slot);
        let Some(node) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return Lookup::Miss;
        };
        match (&mut node.entry, state) {
            (Entry::Positive { value, .. }, State::Fresh) => Lookup::Fresh(value),
            (Entry::Positive { value, refresh, .. }, State::Stale) => {
                let refresh_due = match *refresh {
                    Refresh::Idle => true,
                    Refresh::Requested => false,
                    Refresh::RetryAt(at) => now >= at,
                };
                if refresh_due {
                    *refresh = Refresh::Requested;
                }
                Lookup::Stale { value, refresh_due }
            }
            (Entry::Negative { .. }, State::Negative) => Lookup::Negative,
            // States are computed from the entry's own kind, so the other
            // pairs cannot occur.
            _ => Lookup::Miss,
        }
    }

    /// Like `get` without touching LRU order or mutating (for the
    /// pre-handshake "is it usable" check): true for Fresh/Stale/Negative.
    pub fn contains_usable(&self, name: &str, now: Millis) -> bool {
        self.index
            .get(name)
            .and_then(|&slot| self.node(slot))
            .is_some_and(|node| node.entry.state(&self.policy, now) != State::Expired)
    }

    /// Insert or replace a positive entry (fetched at `now`, certificate
    /// notAfter `expires_at`), fresh for `valid`, weighing nothing against
    /// `max_bytes`. Evicts least-recently-used entries beyond max_entries.
    /// max_entries == 0 means caching disabled (insert is a no-op).
    pub fn insert(&mut self, name: String, value: V, now: Millis, expires_at: Millis) {
        let fresh_until = now.saturating_add(self.policy.valid);
        self.insert_weighted(name, value, now, expires_at, fresh_until, 0);
    }

    /// Insert or replace a positive entry weighing `bytes` against
    /// `max_bytes`, then evict least-recently-used entries until both
    /// bounds hold. An entry heavier than `max_bytes` on its own is not
    /// cached (and an older entry of the same name is dropped, since it is
    /// outdated).
    ///
    /// The entry is Fresh before `fresh_until`, then Stale (served while a
    /// refresh runs, and while refreshes fail) until `now + valid + stale`
    /// or `expires_at`, whichever comes first. The caller sets
    /// `fresh_until` to the earlier of `now + valid` and a refresh-ahead
    /// point before the certificate's notAfter; a `fresh_until` at or
    /// before `now` makes the entry Stale at once, so a refresh is due on
    /// the next lookup. If the sources keep returning the same
    /// soon-to-expire certificate, put that point a retry interval after
    /// `now` so refreshes do not follow each other back to back.
    pub fn insert_weighted(
        &mut self,
        name: String,
        value: V,
        now: Millis,
        expires_at: Millis,
        fresh_until: Millis,
        bytes: usize,
    ) {
        let stale_until = now
            .saturating_add(self.policy.valid)
            .saturating_add(self.policy.stale);
        self.put(
            name,
            Entry::Positive {
                value,
                fresh_until,
                stale_until,
                expires_at,
                refresh: Refresh::Idle,
            },
            bytes,
        );
    }

    /// Record that `name` is unknown in every source. Replaces a positive
    /// entry: the sources are authoritative, so a deleted domain stops being
    /// served once a fetch says so. Weighs [`NEGATIVE_ENTRY_BYTES`].
    pub fn insert_negative(&mut self, name: String, now: Millis) {
        self.put(name, Entry::Negative { at: now }, NEGATIVE_ENTRY_BYTES);
    }

    /// Keeps only the entries for which `keep(name, value)` is true (value
    /// None for negative entries), e.g. to drop every name a wildcard
    /// certificate was cached under when it is invalidated.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, Option<&V>) -> bool) {
        let mut doomed = Vec::new();
        let mut slot = self.head;
        while let Some(node) = self.node(slot) {
            if !keep(&node.name, node.entry.value()) {
                doomed.push(slot);
            }
            slot = node.next;
        }
        for slot in doomed {
            self.remove_slot(slot);
        }
    }

    /// A background refresh failed: keep the entry (stale-if-error) and
    /// allow a new refresh to be requested after `retry_after` ms.
    pub fn refresh_failed(&mut self, name: &str, now: Millis, retry_after: Millis) {
        let Some(&slot) = self.index.get(name) else {
            return;
        };
        if let Some(Node {
            entry: Entry::Positive { refresh, .. },
            ..
        }) = self.slots.get_mut(slot).and_then(Option::as_mut)
        {
            *refresh = Refresh::RetryAt(now.saturating_add(retry_after));
        }
    }

    pub fn remove(&mut self, name: &str) -> bool {
        match self.index.get(name) {
            Some(&slot) => {
                self.remove_slot(slot);
                true
            }
            None => false,
        }
    }

    pub fn clear(&mut self) {
        self.index.clear();
        self.bytes = 0;
        self.slots.clear();
        self.free.clear();
        self.head = NIL;
        self.tail = NIL;
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Total weight of the cached entries (see [`Self::insert_weighted`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn put(&mut self, name: String, entry: Entry<V>, bytes: usize) {
        if self.policy.max_entries == 0 {
            return;
        }
        // The new entry supersedes the old one whatever happens next.
        if let Some(&slot) = self.index.get(&name) {
            self.remove_slot(slot);
        }
        let max_bytes = match self.policy.max_bytes {
            0 => usize::MAX,
            max => max,
        };
        if bytes > max_bytes {
            return;
        }
        // Evict first so the freed slot is reused and the slab never grows
        // past max_entries.
        while self.tail != NIL
            && (self.index.len() >= self.policy.max_entries
                || self.bytes.saturating_add(bytes) > max_bytes)
        {
            self.remove_slot(self.tail);
        }
        let node = Node {
            name: name.clone(),
            entry,
            bytes,
            prev: NIL,
            next: NIL,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                if let Some(free) = self.slots.get_mut(slot) {
                    *free = Some(node);
                }
                slot
            }
            None => {
                self.slots.push(Some(node));
                self.slots.len() - 1
            }
        };
        self.index.insert(name, slot);
        self.bytes = self.bytes.saturating_add(bytes);
        self.link_front(slot);
    }

    fn node(&self, slot: usize) -> Option<&Node<V>> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    fn node_mut(&mut self, slot: usize) -> Option<&mut Node<V>> {
        self.slots.get_mut(slot).and_then(Option::as_mut)
    }

    fn set_prev(&mut self, slot: usize, prev: usize) {
        if let Some(node) = self.node_mut(slot) {
            node.prev = prev;
        }
    }

    fn set_next(&mut self, slot: usize, next: usize) {
        if let Some(node) = self.node_mut(slot) {
            node.next = next;
        }
    }

    fn unlink(&mut self, slot: usize) {
        let Some((prev, next)) = self.node(slot).map(|n| (n.prev, n.next)) else {
            return;
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.set_next(prev, next);
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.set_prev(next, prev);
        }
        self.set_prev(slot, NIL);
        self.set_next(slot, NIL);
    }

    fn link_front(&mut self, slot: usize) {
        let old_head = self.head;
        self.set_prev(slot, NIL);
        self.set_next(slot, old_head);
        if old_head == NIL {
            self.tail = slot;
        } else {
            self.set_prev(old_head, slot);
        }
        self.head = slot;
    }

    fn move_to_front(&mut self, slot: usize) {
        if self.head != slot {
            self.unlink(slot);
            self.link_front(slot);
        }
    }

    fn remove_slot(&mut self, slot: usize) {
        self.unlink(slot);
        if let Some(node) = self.slots.get_mut(slot).and_then(Option::take) {
            self.index.remove(&node.name);
            self.bytes = self.bytes.saturating_sub(node.bytes);
            self.free.push(slot);
        }
    }

    /// Names from most to least recently used (tests check the order).
    #[cfg(test)]
    fn order(&self) -> Vec<&str> {
        let mut names = Vec::new();
        let mut slot = self.head;
        while let Some(node) = self.node(slot) {
            names.push(node.name.as_str());
            slot = node.next;
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const SECOND: Millis = 1000;
    const MINUTE: Millis = 60 * SECOND;
    const HOUR: Millis = 60 * MINUTE;
    /// Far beyond every TTL in these tests.
    const NOT_AFTER: Millis = 1_000 * 24 * HOUR;
    const START: Millis = 1_700_000_000_000;

    /// A clock the test moves by hand.
    struct FakeClock(Cell<Millis>);

    impl FakeClock {
        fn advance(&self, by: Millis) {
            self.0.set(self.0.get() + by);
        }

        fn set(&self, to: Millis) {
            self.0.set(to);
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Millis {
            self.0.get()
        }
    }

    fn policy(max_entries: usize) -> CachePolicy {
        CachePolicy {
            max_entries,
            max_bytes: 0,
            valid: 10 * MINUTE,
            stale: HOUR,
            negative: 30 * SECOND,
        }
    }

    fn fresh<V: Copy>(lookup: Lookup<'_, V>) -> Option<V> {
        match lookup {
            Lookup::Fresh(v) => Some(*v),
            _ => None,
        }
    }

    fn stale<V: Copy>(lookup: Lookup<'_, V>) -> Option<(V, bool)> {
        match lookup {
            Lookup::Stale { value, refresh_due } => Some((*value, refresh_due)),
            _ => None,
        }
    }

    #[test]
    fn default_policy_matches_the_documented_defaults() {
        let p = CachePolicy::default();
        assert_eq!(
            (p.max_entries, p.max_bytes, p.valid, p.stale, p.negative),
            (10_000, 0, 10 * MINUTE, HOUR, 30 * SECOND)
        );
    }

    #[test]
    fn system_clock_reads_a_plausible_wall_time() {
        // 2020-09-13 in ms: anything earlier means the conversion is wrong.
        assert!(SystemClock.now() > 1_600_000_000_000);
    }

    #[test]
    fn least_recently_inserted_entry_is_evicted_first() {
        let mut cache = CertCache::new(policy(3));
        for (i, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
            cache.insert(name.to_owned(), i, START, NOT_AFTER + START);
        }
        assert_eq!(cache.len(), 3);
        assert!(matches!(cache.get("a", START), Lookup::Miss));
        assert_eq!(cache.order(), ["d", "c", "b"]);
    }

    #[test]
    fn get_refreshes_recency_so_the_touched_entry_survives_eviction() {
        let mut cache = CertCache::new(policy(3));
        for name in ["a", "b", "c"] {
            cache.insert(name.to_owned(), 0, START, START + NOT_AFTER);
        }
        assert_eq!(fresh(cache.get("a", START)), Some(0));
        cache.insert("d".to_owned(), 0, START, START + NOT_AFTER);
        assert_eq!(cache.order(), ["d", "a", "c"]);
        assert!(matches!(cache.get("b", START), Lookup::Miss));
    }

    #[test]
    fn contains_usable_does_not_change_recency() {
        let mut cache = CertCache::new(policy(2));
        cache.insert("a".to_owned(), 0, START, START + NOT_AFTER);
        cache.insert("b".to_owned(), 0, START, START + NOT_AFTER);
        assert!(cache.contains_usable("a", START));
        cache.insert("c".to_owned(), 0, START, START + NOT_AFTER);
        assert!(!cache.contains_usable("a", START));
        assert_eq!(cache.order(), ["c", "b"]);
    }

    #[test]
    fn entry_goes_fresh_then_stale_then_is_dropped() {
        let clock = FakeClock(Cell::new(START));
        let mut cache = CertCache::new(policy(10));
        cache.insert("a".to_owned(), 7, clock.now(), START + NOT_AFTER);

        clock.advance(10 * MINUTE - 1);
        assert_eq!(fresh(cache.get("a", clock.now())), Some(7));

        clock.advance(1);
        assert!(cache.contains_usable("a", clock.now()));
        assert_eq!(stale(cache.get("a", clock.now())), Some((7, true)));

        clock.advance(HOUR - 1);
        assert!(cache.contains_usable("a", clock.now()));
        assert_eq!(stale(cache.get("a", clock.now())), Some((7, false)));

        clock.advance(1);
        assert!(!cache.contains_usable("a", clock.now()));
        assert!(matches!(cache.get("a", clock.now()), Lookup::Miss));
        assert!(cache.is_empty());
    }

    #[test]
    fn stale_refresh_is_due_only_once_until_insert() {
        let mut cache = CertCache::new(policy(10));
        cache.insert("a".to_owned(), 1, START, START + NOT_AFTER);
        let later = START + 20 * MINUTE;
        assert_eq!(stale(cache.get("a", later)), Some((1, true)));
        assert_eq!(stale(cache.get("a", later)), Some((1, false)));
        assert_eq!(stale(cache.get("a", later + MINUTE)), Some((1, false)));

        // The refresh lands: fresh again, and the next staleness re-arms.
        cache.insert("a".to_owned(), 2, later + MINUTE, START + NOT_AFTER);
        assert_eq!(fresh(cache.get("a", later + MINUTE)), Some(2));
        let much_later = later + 12 * MINUTE;
        assert_eq!(stale(cache.get("a", much_later)), Some((2, true)));
    }

    #[test]
    fn refresh_failed_keeps_serving_and_rearms_after_retry_after() {
        let mut cache = CertCache::new(policy(10));
        cache.insert("a".to_owned(), 1, START, START + NOT_AFTER);
        let t = START + 20 * MINUTE;
        assert_eq!(stale(cache.get("a", t)), Some((1, true)));
        cache.refresh_failed("a", t + SECOND, 30 * SECOND);
        assert_eq!(stale(cache.get("a", t + 30 * SECOND)), Some((1, false)));
        assert_eq!(stale(cache.get("a", t + 31 * SECOND)), Some((1, true)));
        assert_eq!(stale(cache.get("a", t + 32 * SECOND)), Some((1, false)));
    }

    #[test]
    fn refresh_failed_on_unknown_or_negative_names_is_harmless() {
        let mut cache: CertCache<u8> = CertCache::new(policy(10));
        cache.refresh_failed("nope", START, SECOND);
        cache.insert_negative("neg".to_owned(), START);
        cache.refresh_failed("neg", START, SECOND);
        assert!(matches!(cache.get("neg", START), Lookup::Negative));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn certificate_past_not_after_is_never_served_even_when_fresh() {
        let mut cache = CertCache::new(policy(10));
        let not_after = START + MINUTE;
        cache.insert("a".to_owned(), 1, START, not_after);
        assert!(cache.contains_usable("a", not_after - 1));
        assert_eq!(fresh(cache.get("a", not_after - 1)), Some(1));
        assert!(!cache.contains_usable("a", not_after));
        assert!(matches!(cache.get("a", not_after), Lookup::Miss));
        assert!(cache.is_empty());
    }

    #[test]
    fn certificate_expiring_inside_the_stale_window_is_cut_off_at_not_after() {
        let mut cache = CertCache::new(policy(10));
        let not_after = START + 30 * MINUTE;
        cache.insert("a".to_owned(), 1, START, not_after);
        assert_eq!(stale(cache.get("a", not_after - 1)), Some((1, true)));
        assert!(matches!(cache.get("a", not_after), Lookup::Miss));
    }

    #[test]
    fn negative_entry_lives_for_the_negative_ttl() {
        let mut cache: CertCache<u8> = CertCache::new(policy(10));
        cache.insert_negative("unknown.example".to_owned(), START);
        assert!(cache.contains_usable("unknown.example", START + 30 * SECOND - 1));
        assert!(matches!(
            cache.get("unknown.example", START + 30 * SECOND - 1),
            Lookup::Negative
        ));
        assert!(!cache.contains_usable("unknown.example", START + 30 * SECOND));
        assert!(matches!(
            cache.get("unknown.example", START + 30 * SECOND),
            Lookup::Miss
        ));
        assert!(cache.is_empty());
    }

    #[test]
    fn negative_entries_count_toward_max_entries() {
        let mut cache = CertCache::new(policy(2));
        cache.insert("a".to_owned(), 1, START, START + NOT_AFTER);
        cache.insert_negative("x".to_owned(), START);
        cache.insert_negative("y".to_owned(), START);
        assert_eq!(cache.len(), 2);
        assert!(matches!(cache.get("a", START), Lookup::Miss));
    }

    #[test]
    fn insert_replaces_an_existing_entry_and_makes_it_most_recent() {
        let mut cache = CertCache::new(policy(3));
        cache.insert("a".to_owned(), 1, START, START + NOT_AFTER);
        cache.insert("b".to_owned(), 1, START, START + NOT_AFTER);
        cache.insert("a".to_owned(), 2, START + MINUTE, START + NOT_AFTER);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.order(), ["a", "b"]);
        assert_eq!(fresh(cache.get("a", START + MINUTE)), Some(2));
    }

    #[test]
    fn positive_and_negative_entries_replace_each_other() {
        let mut cache = CertCache::new(policy(3));
        cache.insert("a".to_owned(), 1, START, START + NOT_AFTER);
        cache.insert_negative("a".to_owned(), START + SECOND);
        assert!(matches!(cache.get("a", START + SECOND), Lookup::Negative));
        cache.insert("a".to_owned(), 3, START + 2 * SECOND, START + NOT_AFTER);
        assert_eq!(fresh(cache.get("a", START + 2 * SECOND)), Some(3));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn max_entries_zero_disables_caching() {
        let mut cache = CertCache::new(policy(0));
        cache.insert("a".to_owned(), 1, START, START + NOT_AFTER);
        cache.insert_negative("b".to_owned(), START);
        assert!(cache.is_empty());
        assert!(matches!(cache.get("a", START), Lookup::Miss));
        assert!(!cache.contains_usable("b", START));
    }

    #[test]
    fn remove_and_clear_forget_entries() {
        let mut cache = CertCache::new(policy(3));
        cache.insert("a".to_owned(), 1, START, START + NOT_AFTER);
        cache.insert("b".to_owned(), 2, START, START + NOT_AFTER);
        assert!(cache.remove("a"));
        assert!(!cache.remove("a"));
        assert_eq!(cache.order(), ["b"]);
        cache.clear();
        assert!(cache.is_empty());
        assert_eq!(cache.order(), Vec::<&str>::new());
        cache.insert("c".to_owned(), 3, START, START + NOT_AFTER);
        assert_eq!(fresh(cache.get("c", START)), Some(3));
    }

    #[test]
    fn clock_stepping_back_keeps_entries_fresh() {
        let mut cache = CertCache::new(policy(3));
        cache.insert("a".to_owned(), 1, START, START + NOT_AFTER);
        assert_eq!(fresh(cache.get("a", START - HOUR)), Some(1));
    }

    #[test]
    fn heavy_churn_keeps_len_bounded_and_slots_reused() {
        let max = 1000;
        let mut cache = CertCache::new(policy(max));
        for i in 0..100_000u64 {
            let name = format!("n{}.example.com", i % 7919 * 13 + i / 7919);
            if i % 5 == 0 {
                cache.insert_negative(name, START + i);
            } else {
                cache.insert(name, i, START + i, START + NOT_AFTER);
            }
            if i % 3 == 0 {
                let _ = cache.get(&format!("n{}.example.com", i / 2), START + i);
            }
            if i % 11 == 0 {
                cache.remove(&format!("n{}.example.com", i / 3));
            }
            assert!(cache.len() <= max);
        }
        assert_eq!(cache.len(), max);
        assert!(cache.slots.len() <= max);
        assert_eq!(cache.order().len(), cache.len());
        assert_eq!(cache.free.len() + cache.len(), cache.slots.len());
    }

    fn bounded(max_entries: usize, max_bytes: usize) -> CertCache<u64> {
        CertCache::new(CachePolicy {
            max_bytes,
            ..policy(max_entries)
        })
    }

    /// insert_weighted with fresh_until = now + valid.
    fn put(cache: &mut CertCache<u64>, name: &str, value: u64, bytes: usize) {
        let fresh_until = START + 10 * MINUTE;
        cache.insert_weighted(
            name.to_owned(),
            value,
            START,
            START + NOT_AFTER,
            fresh_until,
            bytes,
        );
    }

    #[test]
    fn weighted_entries_add_up_and_removal_gives_the_bytes_back() {
        let mut cache = bounded(10, 0);
        put(&mut cache, "a", 1, 3000);
        put(&mut cache, "b", 2, 5000);
        cache.insert_negative("n".to_owned(), START);
        assert_eq!(cache.bytes(), 8000 + NEGATIVE_ENTRY_BYTES);
        assert!(cache.remove("a"));
        assert_eq!(cache.bytes(), 5000 + NEGATIVE_ENTRY_BYTES);
        cache.clear();
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn replacing_an_entry_counts_only_its_new_weight() {
        let mut cache = bounded(10, 0);
        put(&mut cache, "a", 1, 3000);
        put(&mut cache, "a", 2, 1000);
        assert_eq!((cache.len(), cache.bytes()), (1, 1000));
        cache.insert_negative("a".to_owned(), START);
        assert_eq!(cache.bytes(), NEGATIVE_ENTRY_BYTES);
        put(&mut cache, "a", 3, 2000);
        assert_eq!(cache.bytes(), 2000);
    }

    #[test]
    fn byte_bound_evicts_least_recently_used_until_the_new_entry_fits() {
        let mut cache = bounded(100, 10_000);
        put(&mut cache, "a", 1, 4000);
        put(&mut cache, "b", 2, 4000);
        assert_eq!(fresh(cache.get("a", START)), Some(1));
        // 4000 + 4000 + 3000 > 10_000: "b" is the least recently used.
        put(&mut cache, "c", 3, 3000);
        assert_eq!(cache.order(), ["c", "a"]);
        assert_eq!(cache.bytes(), 7000);
        // Needs two evictions.
        put(&mut cache, "d", 4, 9000);
        assert_eq!(cache.order(), ["d"]);
        assert_eq!(cache.bytes(), 9000);
    }

    #[test]
    fn entry_exactly_at_the_byte_bound_is_cached() {
        let mut cache = bounded(100, 10_000);
        put(&mut cache, "a", 1, 10_000);
        assert_eq!((cache.len(), cache.bytes()), (1, 10_000));
    }

    #[test]
    fn entry_heavier_than_the_byte_bound_is_not_cached_and_evicts_nothing() {
        let mut cache = bounded(100, 10_000);
        put(&mut cache, "a", 1, 4000);
        put(&mut cache, "huge", 2, 10_001);
        assert!(matches!(cache.get("huge", START), Lookup::Miss));
        assert_eq!(cache.order(), ["a"]);
        assert_eq!(cache.bytes(), 4000);
    }

    #[test]
    fn oversized_replacement_drops_the_outdated_entry() {
        let mut cache = bounded(100, 10_000);
        put(&mut cache, "a", 1, 4000);
        put(&mut cache, "a", 2, 20_000);
        assert!(matches!(cache.get("a", START), Lookup::Miss));
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn entry_bound_still_applies_under_a_byte_bound() {
        let mut cache = bounded(2, 1_000_000);
        put(&mut cache, "a", 1, 10);
        put(&mut cache, "b", 2, 10);
        put(&mut cache, "c", 3, 10);
        assert_eq!(cache.order(), ["c", "b"]);
        assert_eq!(cache.bytes(), 20);
    }

    #[test]
    fn negative_entries_weigh_against_the_byte_bound() {
        let mut cache = bounded(1000, 4 * NEGATIVE_ENTRY_BYTES);
        for i in 0..10 {
            cache.insert_negative(format!("n{i}.example"), START);
        }
        assert_eq!(cache.len(), 4);
        assert_eq!(cache.bytes(), 4 * NEGATIVE_ENTRY_BYTES);
        assert_eq!(
            cache.order(),
            ["n9.example", "n8.example", "n7.example", "n6.example"]
        );
    }

    #[test]
    fn plain_insert_weighs_nothing_and_is_fresh_for_valid() {
        let mut cache = bounded(10, 100);
        cache.insert("a".to_owned(), 1, START, START + NOT_AFTER);
        assert_eq!(cache.bytes(), 0);
        assert_eq!(fresh(cache.get("a", START + 10 * MINUTE - 1)), Some(1));
        assert_eq!(stale(cache.get("a", START + 10 * MINUTE)), Some((1, true)));
    }

    #[test]
    fn early_fresh_until_makes_the_entry_stale_before_valid_but_keeps_the_hard_limit() {
        let clock = FakeClock(Cell::new(START));
        let mut cache: CertCache<u64> = bounded(10, 0);
        // Refresh-ahead point 2 minutes in, well before valid (10 min).
        cache.insert_weighted(
            "a".to_owned(),
            1,
            clock.now(),
            START + NOT_AFTER,
            START + 2 * MINUTE,
            500,
        );
        clock.advance(2 * MINUTE - 1);
        assert_eq!(fresh(cache.get("a", clock.now())), Some(1));
        clock.advance(1);
        assert_eq!(stale(cache.get("a", clock.now())), Some((1, true)));
        // Stale until fetch + valid + stale, not fresh_until + stale.
        clock.set(START + 10 * MINUTE + HOUR - 1);
        assert_eq!(stale(cache.get("a", clock.now())), Some((1, false)));
        clock.advance(1);
        assert!(matches!(cache.get("a", clock.now()), Lookup::Miss));
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn fresh_until_in_the_past_means_a_refresh_is_due_at_once() {
        let mut cache: CertCache<u64> = bounded(10, 0);
        cache.insert_weighted("a".to_owned(), 1, START, START + NOT_AFTER, START, 0);
        assert_eq!(stale(cache.get("a", START)), Some((1, true)));
    }

    #[test]
    fn not_after_cuts_a_weighted_entry_off_even_when_fresh() {
        let mut cache: CertCache<u64> = bounded(10, 0);
        let not_after = START + MINUTE;
        cache.insert_weighted(
            "a".to_owned(),
            1,
            START,
            not_after,
            START + 10 * MINUTE,
            100,
        );
        assert_eq!(fresh(cache.get("a", not_after - 1)), Some(1));
        assert!(!cache.contains_usable("a", not_after));
        assert!(matches!(cache.get("a", not_after), Lookup::Miss));
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn retain_drops_the_names_a_wildcard_served_and_sees_negatives_as_none() {
        let mut cache = bounded(10, 0);
        put(&mut cache, "*.example.com", 7, 100);
        put(&mut cache, "a.example.com", 7, 100);
        put(&mut cache, "b.example.com", 7, 100);
        put(&mut cache, "shop.example.org", 8, 100);
        cache.insert_negative("x.example.com".to_owned(), START);
        let mut visited = Vec::new();
        cache.retain(|name, value| {
            visited.push((name.to_owned(), value.copied()));
            value != Some(&7)
        });
        assert_eq!(visited.len(), 5);
        assert!(visited.contains(&("x.example.com".to_owned(), None)));
        assert!(visited.contains(&("*.example.com".to_owned(), Some(7))));
        assert_eq!(cache.order(), ["x.example.com", "shop.example.org"]);
        assert_eq!(cache.bytes(), 100 + NEGATIVE_ENTRY_BYTES);
        cache.retain(|_, value| value.is_some());
        assert_eq!(cache.order(), ["shop.example.org"]);
        cache.retain(|_, _| false);
        assert!(cache.is_empty());
        assert_eq!(cache.bytes(), 0);
        // Freed slots are reused.
        put(&mut cache, "c", 1, 1);
        assert_eq!(cache.slots.len(), 5);
    }

    #[test]
    fn heavy_weighted_churn_keeps_bytes_within_the_bound() {
        let max_bytes = 256 * 1024;
        let mut cache = bounded(10_000, max_bytes);
        // A cheap deterministic generator, so the sizes vary without a
        // dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..50_000u64 {
            let r = next();
            let name = format!("n{}.example.com", r % 3000);
            let now = START + i;
            match r % 7 {
                0 => cache.insert_negative(name, now),
                1 => {
                    let _ = cache.get(&name, now);
                }
                2 => {
                    cache.remove(&name);
                }
                // Some entries above the bound, most a few KiB.
                _ => {
                    let bytes = if r % 101 == 0 {
                        max_bytes + 1
                    } else {
                        (next() % 20_000) as usize
                    };
                    cache.insert_weighted(name, i, now, START + NOT_AFTER, now + MINUTE, bytes);
                }
            }
            assert!(cache.bytes() <= max_bytes);
            let counted: usize = cache.slots.iter().flatten().map(|n| n.bytes).sum();
            assert_eq!(counted, cache.bytes());
        }
        assert!(cache.bytes() > max_bytes / 2, "the cache is used");
        assert_eq!(cache.order().len(), cache.len());
        assert_eq!(cache.free.len() + cache.len(), cache.slots.len());
    }
}
