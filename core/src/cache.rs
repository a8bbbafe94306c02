//! Per-worker certificate cache policy: an LRU of certificates keyed by
//! normalised name and bounded in entries and in bytes, with a soft TTL
//! (serve, refresh in the background), a hard TTL (stale-if-error window)
//! and the certificate's own notAfter as an absolute cut-off; beside it, a
//! separate LRU of short-lived negative entries for names no source knows,
//! with its own bound, so that names a client makes up can only push out
//! other made-up names, never a certificate. The same LRU holds the short
//! error backoff of names whose lookup failed and that have no
//! certificate, so a failing source is not asked again at every handshake.
//!
//! Generic over the cached value so the policy is tested here without
//! OpenSSL; the glue stores its parsed chain and key. Time is passed in on
//! every call (see [`crate::clock::Clock`]) so tests drive it by hand and
//! never sleep.

use std::hash::{DefaultHasher, Hash, Hasher};

use crate::clock::Millis;
use crate::lru::{Lru, Slot};

/// Error backoff after a name's first failed lookup; it doubles with each
/// failure in a row.
pub const BACKOFF_MIN_MS: Millis = 1_000;
/// Longest error backoff; `negative` bounds it too, so a backoff never
/// outlasts what a 404 would.
pub const BACKOFF_MAX_MS: Millis = 30_000;

/// Sizes and lifetimes, from `dyncert_cache max= max_size= valid= stale=
/// negative= negative_max=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// Most certificate (positive) entries; 0 disables caching altogether,
    /// negative entries included (the directive refuses 0: a handshake
    /// gets its certificate from this cache).
    pub max_entries: usize,
    /// Most bytes of certificate entries, as weighed by the caller in
    /// [`CertCache::insert_weighted`]; 0 means no byte bound.
    pub max_bytes: usize,
    /// Age below which a positive entry is served without a refresh.
    pub valid: Millis,
    /// How long past `valid` a positive entry is still served while it is
    /// refreshed (and while refreshes fail).
    pub stale: Millis,
    /// Lifetime of a negative entry.
    pub negative: Millis,
    /// Most negative entries, kept apart from `max_entries` and
    /// `max_bytes`; 0 disables negative caching.
    pub negative_max: usize,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            max_entries: 10_000,
            max_bytes: 0,
            valid: 10 * 60 * 1000,
            stale: 60 * 60 * 1000,
            negative: 30 * 1000,
            negative_max: 10_000,
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
    /// No certificate, and the name's last lookup failed moments ago:
    /// serve what a miss serves, without starting a lookup (see
    /// [`CertCache::fetch_failed`]).
    Backoff,
    /// Nothing usable (absent, or dropped now because past valid+stale or
    /// past expires_at).
    Miss,
}

/// How far back the clock may step before a fresh entry is taken as
/// stepped over (see `CertCache::get`): small corrections change nothing.
const STEP_SLACK_MS: Millis = 60_000;

/// Whether a background refresh of a stale entry may be requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refresh {
    Idle,
    Requested,
    /// The last refresh failed; another may be requested from this time on.
    /// (when, set at): due at `when`, or at once when the clock is found
    /// before `set at` (stepped back: waiting would last the step).
    RetryAt(Millis, Millis),
}

/// A cached certificate.
struct Positive<V> {
    value: V,
    /// Served without a refresh before this time.
    fresh_until: Millis,
    /// Dropped at this time (fetch time + valid + stale): the end of
    /// stale-if-error.
    stale_until: Millis,
    /// The certificate's notAfter: never served from this time on.
    expires_at: Millis,
    refresh: Refresh,
    /// Weight counted in `CertCache::bytes`.
    bytes: usize,
}

/// How a positive entry stands at a given time, computed without touching
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Fresh,
    Stale,
    Expired,
}

impl<V> Positive<V> {
    fn state(&self, now: Millis) -> State {
        // Never serve a certificate past its notAfter, whatever the TTLs.
        // Absolute deadlines also mean a clock that stepped back makes the
        // entry look new, not ancient.
        if self.expires_at <= now || self.stale_until <= now {
            State::Expired
        } else if now < self.fresh_until {
            State::Fresh
        } else {
            State::Stale
        }
    }
}

/// Two LRUs with O(1) lookup, touch, insert and eviction: certificates,
/// bounded by `max_entries` and `max_bytes`, and negative entries (unknown
/// names and error backoffs), bounded by `negative_max`. A name is in at
/// most one of them. Each evicts only its own entries, so no number of
/// unknown or failing names can push a certificate out.
pub struct CertCache<V> {
    policy: CachePolicy,
    positive: Lru<Positive<V>>,
    /// Sum of the weights of the entries in `positive`.
    bytes: usize,
    /// When each name was found unknown, and whether it may still be
    /// queued for on-demand issuance (see [`Self::take_on_demand`]); or
    /// when its lookup last failed.
    negative: Lru<Negative>,
}

/// A negative entry.
#[derive(Debug, Clone, Copy)]
struct Negative {
    at: Millis,
    kind: Absent,
}

/// Why a name has no certificate.
#[derive(Debug, Clone, Copy)]
enum Absent {
    /// No source knows it. One on-demand enqueue is still allowed while
    /// `on_demand` is true.
    Unknown { on_demand: bool },
    /// Its lookup failed `failures` times in a row: no lookup for `for_ms`
    /// after the last one. Kept past that until the next result, to count
    /// the failures in a row.
    Failed { for_ms: Millis, failures: u32 },
}

impl Negative {
    /// Whether the entry still spares the name a lookup at `now`.
    fn holds(&self, policy: &CachePolicy, now: Millis) -> bool {
        let lifetime = match self.kind {
            Absent::Unknown { .. } => policy.negative,
            Absent::Failed { for_ms, .. } => for_ms,
        };
        // A clock stepped back past the entry's start ends it: kept, it
        // would spare the name its lookups for as long as the step (an
        // hour's step, an hour of the default certificate for a name that
        // may have a record). Ending it costs one lookup.
        now >= self.at && now - self.at < lifetime
    }

    /// For a failure entry, the failures in a row a new failure at `now`
    /// continues: a failure more than the longest backoff after the last
    /// backoff ended starts over.
    fn streak(&self, cap: Millis, now: Millis) -> Option<u32> {
        match self.kind {
            Absent::Failed { for_ms, failures }
                if now.saturating_sub(self.at) < for_ms.saturating_add(cap) =>
            {
                Some(failures)
            }
            _ => None,
        }
    }
}

/// The backoff after `failures` failed lookups in a row: 1 s doubling up to
/// `cap`, minus a jitter of up to an eighth (from the name and the time, so
/// names failing together, and terminators failing on one name, do not
/// come back in step; never above `cap`).
fn backoff(name: &str, now: Millis, failures: u32, cap: Millis) -> Millis {
    let doublings = failures.saturating_sub(1).min(16);
    let full = BACKOFF_MIN_MS.saturating_mul(1 << doublings).min(cap);
    let mut h = DefaultHasher::new();
    (name, now).hash(&mut h);
    full - h.finish() % (full / 8 + 1)
}

impl<V> CertCache<V> {
    pub fn new(policy: CachePolicy) -> Self {
        CertCache {
            policy,
            positive: Lru::new(),
            bytes: 0,
            negative: Lru::new(),
        }
    }

    pub fn policy(&self) -> &CachePolicy {
        &self.policy
    }

    /// Looks up and marks as most recently used (in whichever LRU holds the
    /// name). Entries whose `expires_at` (the certificate's notAfter) is ≤
    /// now are removed and reported as Miss (never serve past notAfter).
    /// Positive entries past valid+stale are removed -> Miss. Negative
    /// entries past `negative` are removed -> Miss. With `Stale`, the first
    /// call returns refresh_due=true and marks the refresh as requested so
    /// later calls return false until `insert`/`refresh_failed` happens.
    pub fn get(&mut self, name: &str, now: Millis) -> Lookup<'_, V> {
        if let Some(slot) = self.positive.find(name) {
            return self.get_positive(slot, now);
        }
        let Some(slot) = self.negative.find(name) else {
            return Lookup::Miss;
        };
        let Some(entry) = self.negative.value(slot).copied() else {
            return Lookup::Miss;
        };
        if entry.holds(&self.policy, now) {
            self.negative.touch(slot);
            return match entry.kind {
                Absent::Unknown { .. } => Lookup::Negative,
                Absent::Failed { .. } => Lookup::Backoff,
            };
        }
        // An ended backoff stays while it still counts the failures in a
        // row (the lookup this Miss starts may fail again).
        if entry.streak(self.backoff_cap(), now).is_none() {
            self.negative.remove_at(slot);
        }
        Lookup::Miss
    }

    fn get_positive(&mut self, slot: Slot, now: Millis) -> Lookup<'_, V> {
        let valid = self.policy.valid;
        let Some(state) = self.positive.value(slot).map(|p| match p.state(now) {
            // Fresh for longer than `valid` from now: the clock stepped back
            // (no fetch makes an entry fresh for longer). Served, and due
            // for a refresh, rather than left unrefreshed for the step.
            State::Fresh
                if p.fresh_until > now.saturating_add(valid).saturating_add(STEP_SLACK_MS) =>
            {
                State::Stale
            }
            state => state,
        }) else {
            return Lookup::Miss;
        };
        if state == State::Expired {
            self.remove_positive(slot);
            return Lookup::Miss;
        }
        self.positive.touch(slot);
        let Some(entry) = self.positive.value_mut(slot) else {
            return Lookup::Miss;
        };
        if state == State::Fresh {
            return Lookup::Fresh(&entry.value);
        }
        let refresh_due = match entry.refresh {
            Refresh::Idle => true,
            Refresh::Requested => false,
            Refresh::RetryAt(at, set) => now >= at || now < set,
        };
        if refresh_due {
            entry.refresh = Refresh::Requested;
        }
        Lookup::Stale {
            value: &entry.value,
            refresh_due,
        }
    }

    /// The positive entry of `name`, whatever its state, without touching
    /// anything.
    pub fn peek(&self, name: &str) -> Option<&V> {
        self.positive.get(name).map(|p| &p.value)
    }

    /// Like `get` without touching LRU order or mutating (for the
    /// pre-handshake "is a lookup needed" check): true for
    /// Fresh/Stale/Negative/Backoff.
    pub fn contains_usable(&self, name: &str, now: Millis) -> bool {
        match self.positive.get(name) {
            Some(entry) => entry.state(now) != State::Expired,
            None => self
                .negative
                .get(name)
                .is_some_and(|n| n.holds(&self.policy, now)),
        }
    }

    /// Whether `name` is backing off after a failed lookup at `now`
    /// (what `get` would answer `Lookup::Backoff` for), without touching
    /// anything.
    pub fn backs_off(&self, name: &str, now: Millis) -> bool {
        self.positive.find(name).is_none()
            && self.negative.get(name).is_some_and(|n| {
                matches!(n.kind, Absent::Failed { .. }) && n.holds(&self.policy, now)
            })
    }

    /// Whether `name` has a certificate that can be served at `now` (fresh
    /// or stale), without touching anything.
    pub fn has_certificate(&self, name: &str, now: Millis) -> bool {
        self.positive
            .get(name)
            .is_some_and(|entry| entry.state(now) != State::Expired)
    }

    /// Insert or replace a positive entry (fetched at `now`, certificate
    /// notAfter `expires_at`), fresh for `valid`, weighing nothing against
    /// `max_bytes`. Evicts least-recently-used certificates beyond
    /// max_entries. max_entries == 0 means caching disabled (insert is a
    /// no-op).
    pub fn insert(&mut self, name: String, value: V, now: Millis, expires_at: Millis) {
        let fresh_until = now.saturating_add(self.policy.valid);
        self.insert_weighted(name, value, now, expires_at, fresh_until, 0);
    }

    /// Insert or replace a positive entry weighing `bytes` against
    /// `max_bytes`, then evict least-recently-used certificates until both
    /// bounds hold. A negative entry of the same name is dropped. An entry
    /// heavier than `max_bytes` on its own is not cached (and an older
    /// entry of the same name is dropped, since it is outdated).
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
        self.insert_until(name, value, expires_at, fresh_until, stale_until, bytes);
    }

    /// Like [`Self::insert_weighted`] with every deadline given: for an
    /// entry another worker fetched, whose deadlines the shared store
    /// keeps, so that one fetch or refresh serves all workers alike.
    pub fn insert_until(
        &mut self,
        name: String,
        value: V,
        expires_at: Millis,
        fresh_until: Millis,
        stale_until: Millis,
        bytes: usize,
    ) {
        if self.policy.max_entries == 0 {
            return;
        }
        // The new entry supersedes the old one whatever happens next.
        self.negative.remove(&name);
        if let Some(slot) = self.positive.find(&name) {
            self.remove_positive(slot);
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
        while self.positive.len() >= self.policy.max_entries
            || self.bytes.saturating_add(bytes) > max_bytes
        {
            match self.positive.pop_lru() {
                Some((_, old)) => self.bytes = self.bytes.saturating_sub(old.bytes),
                None => break,
            }
        }
        self.positive.insert(
            name,
            Positive {
                value,
                fresh_until,
                stale_until,
                expires_at,
                refresh: Refresh::Idle,
                bytes,
            },
        );
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// Record that `name` is unknown in every source. Drops a positive
    /// entry of the same name even when negative caching is off: the
    /// sources are authoritative, so a deleted domain stops being served
    /// once a fetch says so. Evicts least-recently-used negative entries
    /// beyond `negative_max`, never a certificate.
    pub fn insert_negative(&mut self, name: String, now: Millis) {
        self.insert_negative_for(name, now, false);
    }

    /// [`Self::insert_negative`]; with `on_demand`, the entry allows one
    /// on-demand enqueue ([`Self::take_on_demand`]) during its lifetime.
    pub fn insert_negative_for(&mut self, name: String, now: Millis, on_demand: bool) {
        if let Some(slot) = self.positive.find(&name) {
            self.remove_positive(slot);
        }
        if self.policy.max_entries == 0 || self.policy.negative_max == 0 {
            return;
        }
        self.negative.remove(&name);
        while self.negative.len() >= self.policy.negative_max {
            if self.negative.pop_lru().is_none() {
                break;
            }
        }
        let kind = Absent::Unknown { on_demand };
        self.negative.insert(name, Negative { at: now, kind });
    }

    /// The longest error backoff: `negative` bounds it, so a failure never
    /// holds a name back longer than a 404 would.
    fn backoff_cap(&self) -> Millis {
        self.policy.negative.min(BACKOFF_MAX_MS)
    }

    /// A lookup of `name` failed (a source error or timeout). A certificate
    /// that can still be served is kept (stale-if-error) and its refresh
    /// may be requested again after `retry_after`; `None`. Without one,
    /// the name gets an error backoff, in the negative LRU and bounded by
    /// `negative_max` like the unknown names: [`Lookup::Backoff`] for 1 s,
    /// doubling with each failure in a row up to the smaller of 30 s and
    /// `negative` (minus a small jitter); the backoff given. A certificate
    /// or a negative entry for the name ends it, as do `remove`, `retain`,
    /// `clear` and `mark_all_due`; it never allows an on-demand enqueue
    /// (the name is not known to be unknown).
    pub fn fetch_failed(&mut self, name: &str, now: Millis, retry_after: Millis) -> Option<Millis> {
        if let Some(slot) = self.positive.find(name) {
            if self.positive.value(slot).map(|p| p.state(now)) != Some(State::Expired) {
                self.refresh_failed(name, now, retry_after);
                return None;
            }
            self.remove_positive(slot);
        }
        let cap = self.backoff_cap();
        if self.policy.max_entries == 0 || self.policy.negative_max == 0 || cap == 0 {
            return None;
        }
        let failures = match self.negative.get(name).and_then(|n| n.streak(cap, now)) {
            Some(before) => before.saturating_add(1),
            None => 1,
        };
        let for_ms = backoff(name, now, failures, cap);
        self.negative.remove(name);
        while self.negative.len() >= self.policy.negative_max {
            if self.negative.pop_lru().is_none() {
                break;
            }
        }
        let kind = Absent::Failed { for_ms, failures };
        self.negative
            .insert(name.to_owned(), Negative { at: now, kind });
        Some(for_ms)
    }

    /// Whether [`Self::take_on_demand`] would return true now (nothing
    /// taken).
    pub fn may_take_on_demand(&self, name: &str, now: Millis) -> bool {
        let Some(n) = self
            .negative
            .find(name)
            .and_then(|s| self.negative.value(s))
        else {
            return false;
        };
        matches!(n.kind, Absent::Unknown { on_demand: true }) && n.holds(&self.policy, now)
    }

    /// True once per negative entry made with `on_demand`, while it holds:
    /// the name may be queued for on-demand issuance now, and not again
    /// until a new entry replaces this one (after `negative`).
    pub fn take_on_demand(&mut self, name: &str, now: Millis) -> bool {
        let Some(slot) = self.negative.find(name) else {
            return false;
        };
        let policy = self.policy;
        let Some(n) = self.negative.value_mut(slot) else {
            return false;
        };
        let holds = n.holds(&policy, now);
        match &mut n.kind {
            Absent::Unknown { on_demand } if *on_demand && holds => {
                *on_demand = false;
                true
            }
            _ => false,
        }
    }

    /// Keeps only the entries for which `keep(name, value)` is true (value
    /// None for negative entries), e.g. to drop every name a wildcard
    /// certificate was cached under when it is invalidated.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, Option<&V>) -> bool) {
        let bytes = &mut self.bytes;
        self.positive.retain(
            |name, entry| keep(name, Some(&entry.value)),
            |gone| *bytes = bytes.saturating_sub(gone.bytes),
        );
        self.negative.retain(|name, _| keep(name, None), drop);
    }

    /// A background refresh failed: keep the entry (stale-if-error) and
    /// allow a new refresh to be requested after `retry_after` ms.
    pub fn refresh_failed(&mut self, name: &str, now: Millis, retry_after: Millis) {
        let Some(slot) = self.positive.find(name) else {
            return;
        };
        if let Some(entry) = self.positive.value_mut(slot) {
            entry.refresh = Refresh::RetryAt(now.saturating_add(retry_after), now);
        }
    }

    /// Makes every certificate due for a refresh at `now` (stale, its
    /// refresh requestable at once) and forgets every negative entry,
    /// without dropping or reordering a certificate: for when updates may
    /// have been missed (invalidation messages lost while the subscription
    /// was down). Each entry is still served until its refresh answers, so
    /// refreshes follow use and the fetch cap bounds them; entries whose
    /// refresh is already running keep waiting for it. Returns how many
    /// certificates were marked.
    pub fn mark_all_due(&mut self, now: Millis) -> usize {
        let mut marked = 0;
        for entry in self.positive.values_mut() {
            entry.fresh_until = entry.fresh_until.min(now);
            if entry.refresh != Refresh::Requested {
                entry.refresh = Refresh::Idle;
            }
            marked += 1;
        }
        self.negative.clear();
        marked
    }

    /// Makes `name`'s certificate due for a refresh at `now`, like
    /// [`Self::mark_all_due`] for one entry.
    pub fn mark_due(&mut self, name: &str, now: Millis) {
        let Some(slot) = self.positive.find(name) else {
            return;
        };
        if let Some(entry) = self.positive.value_mut(slot) {
            entry.fresh_until = entry.fresh_until.min(now);
            entry.refresh = Refresh::Idle;
        }
    }

    /// Forgets `name`, certificate or negative entry; false if neither was
    /// cached.
    pub fn remove(&mut self, name: &str) -> bool {
        match self.positive.find(name) {
            Some(slot) => {
                self.remove_positive(slot);
                true
            }
            None => self.negative.remove(name).is_some(),
        }
    }

    pub fn clear(&mut self) {
        self.positive.clear();
        self.bytes = 0;
        self.negative.clear();
    }

    /// Cached certificates (negative entries are in [`Self::negative_len`]).
    pub fn len(&self) -> usize {
        self.positive.len()
    }

    /// No certificate cached (there may be negative entries).
    pub fn is_empty(&self) -> bool {
        self.positive.is_empty()
    }

    /// Names remembered as unknown, at most `negative_max`.
    pub fn negative_len(&self) -> usize {
        self.negative.len()
    }

    /// Total weight of the cached certificates (see
    /// [`Self::insert_weighted`]); negative entries weigh nothing.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn remove_positive(&mut self, slot: Slot) {
        if let Some((_, gone)) = self.positive.remove_at(slot) {
            self.bytes = self.bytes.saturating_sub(gone.bytes);
        }
    }

    /// Certificate names from most to least recently used (tests check the
    /// order).
    #[cfg(test)]
    fn order(&self) -> Vec<&str> {
        self.positive.iter().map(|(name, _)| name).collect()
    }

    /// Negative entries from most to least recently used.
    #[cfg(test)]
    fn negative_order(&self) -> Vec<&str> {
        self.negative.iter().map(|(name, _)| name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
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
            negative_max: 100,
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
            (
                p.max_entries,
                p.max_bytes,
                p.valid,
                p.stale,
                p.negative,
                p.negative_max
            ),
            (10_000, 0, 10 * MINUTE, HOUR, 30 * SECOND, 10_000)
        );
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
    fn marking_all_due_keeps_serving_every_certificate_and_refreshes_each_once() {
        let mut cache = CertCache::new(policy(10));
        cache.insert("failing".to_owned(), 2, START, START + NOT_AFTER);
        cache.insert("running".to_owned(), 3, START, START + NOT_AFTER);
        let t = START + 20 * MINUTE;
        // One refresh failed and waits for its retry; one is running.
        assert_eq!(stale(cache.get("failing", t)), Some((2, true)));
        cache.refresh_failed("failing", t, 30 * SECOND);
        assert_eq!(stale(cache.get("running", t)), Some((3, true)));
        // Fetched just now: fresh by `valid` alone.
        cache.insert("fresh".to_owned(), 1, t, START + NOT_AFTER);
        cache.insert_negative("unknown".to_owned(), t);
        let order: Vec<String> = cache.order().iter().map(|n| n.to_string()).collect();

        let t = t + SECOND;
        assert_eq!(cache.mark_all_due(t), 3);
        assert_eq!(cache.order(), order, "nothing dropped or reordered");
        assert_eq!(stale(cache.get("fresh", t)), Some((1, true)));
        assert_eq!(stale(cache.get("fresh", t)), Some((1, false)), "once");
        assert_eq!(
            stale(cache.get("failing", t)),
            Some((2, true)),
            "the failed refresh's retry time no longer holds it back"
        );
        assert_eq!(
            stale(cache.get("running", t)),
            Some((3, false)),
            "a running refresh is not asked for twice"
        );
        // Forgotten: a name added meanwhile is looked up on its next use.
        assert!(matches!(cache.get("unknown", t), Lookup::Miss));
        // A refresh that lands is fresh as usual.
        cache.insert("fresh".to_owned(), 4, t, START + NOT_AFTER);
        assert_eq!(fresh(cache.get("fresh", t + SECOND)), Some(4));
        assert_eq!(CertCache::<u8>::new(policy(10)).mark_all_due(t), 0);
    }

    #[test]
    fn marking_one_name_due_rearms_its_refresh() {
        let mut cache = CertCache::new(policy(10));
        cache.insert("a".to_owned(), 1, START, START + NOT_AFTER);
        cache.mark_due("a", START + SECOND);
        assert_eq!(stale(cache.get("a", START + SECOND)), Some((1, true)));
        cache.refresh_failed("a", START + SECOND, 30 * SECOND);
        cache.mark_due("a", START + 2 * SECOND);
        assert_eq!(stale(cache.get("a", START + 2 * SECOND)), Some((1, true)));
        cache.mark_due("absent", START);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn refresh_failed_on_unknown_or_negative_names_is_harmless() {
        let mut cache: CertCache<u8> = CertCache::new(policy(10));
        cache.refresh_failed("nope", START, SECOND);
        cache.insert_negative("neg".to_owned(), START);
        cache.refresh_failed("neg", START, SECOND);
        assert!(matches!(cache.get("neg", START), Lookup::Negative));
        assert_eq!((cache.len(), cache.negative_len()), (0, 1));
    }

    // ---- error backoff ----

    /// Asserts that `name` backs off from `at` for `for_ms` (the full
    /// backoff `full` less at most an eighth), and no longer.
    fn backs_off(cache: &mut CertCache<u64>, name: &str, at: Millis, for_ms: Millis, full: Millis) {
        assert!(
            (full - full / 8..=full).contains(&for_ms),
            "backoff {for_ms} ms, expected {full} ms less a jitter"
        );
        assert!(matches!(cache.get(name, at), Lookup::Backoff));
        assert!(cache.contains_usable(name, at + for_ms - 1));
        assert!(!cache.has_certificate(name, at));
        assert!(matches!(cache.get(name, at + for_ms - 1), Lookup::Backoff));
        assert!(!cache.contains_usable(name, at + for_ms));
        assert!(matches!(cache.get(name, at + for_ms), Lookup::Miss));
    }

    #[test]
    fn a_failed_lookup_without_a_certificate_backs_off_one_second_doubling_up_to_30s() {
        let mut cache: CertCache<u64> = CertCache::new(CachePolicy {
            negative: MINUTE,
            ..policy(10)
        });
        let mut now = START;
        for full in [1, 2, 4, 8, 16, 30, 30, 30].map(|s| s * SECOND) {
            let for_ms = cache.fetch_failed("a", now, 5 * SECOND).unwrap();
            backs_off(&mut cache, "a", now, for_ms, full);
            // The next lookup starts when the backoff ends and fails.
            now += for_ms + 100;
        }
        // A success ends it, and the next failure starts over.
        cache.insert("a".to_owned(), 1, now, START + NOT_AFTER);
        assert_eq!(fresh(cache.get("a", now)), Some(1));
        cache.remove("a");
        let for_ms = cache.fetch_failed("a", now, 5 * SECOND).unwrap();
        backs_off(&mut cache, "a", now, for_ms, SECOND);
    }

    /// A refresh that failed is retried at once after the wall clock
    /// stepped back, not after the step.
    #[test]
    fn a_clock_stepped_back_makes_a_failed_refresh_due_again() {
        let mut cache = CertCache::new(policy(3));
        cache.insert("a".to_owned(), 1, START, START + NOT_AFTER);
        let stale = START + 11 * MINUTE;
        assert!(matches!(
            cache.get("a", stale),
            Lookup::Stale {
                refresh_due: true,
                ..
            }
        ));
        cache.refresh_failed("a", stale, 5 * SECOND);
        assert!(matches!(
            cache.get("a", stale + SECOND),
            Lookup::Stale {
                refresh_due: false,
                ..
            }
        ));
        assert!(matches!(
            cache.get("a", stale - HOUR),
            Lookup::Stale {
                refresh_due: true,
                ..
            }
        ));
    }

    /// A wall clock stepped back ends a backoff and a negative entry
    /// rather than stretching them by the step.
    #[test]
    fn a_clock_stepped_back_ends_a_backoff_and_a_negative_entry() {
        let mut cache: CertCache<u64> = CertCache::new(CachePolicy {
            negative: MINUTE,
            ..policy(10)
        });
        cache.fetch_failed("a", START, 5 * SECOND).unwrap();
        assert!(matches!(cache.get("a", START + 100), Lookup::Backoff));
        assert!(matches!(cache.get("a", START - HOUR), Lookup::Miss));
        cache.insert_negative("b".to_owned(), START);
        assert!(matches!(cache.get("b", START + 100), Lookup::Negative));
        assert!(matches!(cache.get("b", START - HOUR), Lookup::Miss));
    }

    #[test]
    fn the_backoff_never_outlasts_the_negative_period() {
        let mut cache: CertCache<u64> = CertCache::new(CachePolicy {
            negative: 3 * SECOND,
            ..policy(10)
        });
        let mut now = START;
        for full in [1, 2, 3, 3].map(|s| s * SECOND) {
            let for_ms = cache.fetch_failed("a", now, 5 * SECOND).unwrap();
            backs_off(&mut cache, "a", now, for_ms, full);
            now += for_ms;
        }
        // negative=0 (no negative caching): no backoff either.
        let mut cache: CertCache<u64> = CertCache::new(CachePolicy {
            negative: 0,
            ..policy(10)
        });
        assert_eq!(cache.fetch_failed("a", START, 5 * SECOND), None);
        assert!(matches!(cache.get("a", START), Lookup::Miss));
    }

    #[test]
    fn a_failure_long_after_the_last_backoff_starts_over_at_one_second() {
        let mut cache: CertCache<u64> = CertCache::new(policy(10));
        let first = cache.fetch_failed("a", START, 0).unwrap();
        let t = START + first;
        let second = cache.fetch_failed("a", t, 0).unwrap();
        assert!(second > SECOND, "in a row: doubled");
        // Quiet for longer than the longest backoff after it ended.
        let later = t + second + 30 * SECOND;
        assert!(matches!(cache.get("a", later), Lookup::Miss));
        assert_eq!(cache.negative_len(), 0, "dropped once it counts nothing");
        let again = cache.fetch_failed("a", later, 0).unwrap();
        backs_off(&mut cache, "a", later, again, SECOND);
    }

    #[test]
    fn a_failure_keeps_a_servable_certificate_and_replaces_an_expired_one() {
        let mut cache: CertCache<u64> = CertCache::new(policy(10));
        cache.insert("a".to_owned(), 1, START, START + NOT_AFTER);
        // Stale: served (stale-if-error), its refresh retried later.
        let t = START + 10 * MINUTE;
        assert_eq!(stale(cache.get("a", t)), Some((1, true)));
        assert_eq!(cache.fetch_failed("a", t, 5 * SECOND), None);
        assert_eq!(stale(cache.get("a", t + 1)), Some((1, false)));
        assert_eq!(stale(cache.get("a", t + 5 * SECOND)), Some((1, true)));
        assert_eq!(cache.negative_len(), 0);
        // Past its notAfter the certificate is gone anyway: the name backs
        // off like one never cached.
        let not_after = START + MINUTE;
        cache.insert("b".to_owned(), 2, START, not_after);
        let for_ms = cache.fetch_failed("b", not_after, 5 * SECOND).unwrap();
        assert_eq!(cache.order(), ["a"]);
        backs_off(&mut cache, "b", not_after, for_ms, SECOND);
    }

    #[test]
    fn a_certificate_an_unknown_verdict_or_an_invalidation_ends_a_backoff() {
        let mut cache: CertCache<u64> = CertCache::new(policy(10));
        let backoff = |cache: &mut CertCache<u64>, name: &str| {
            cache.fetch_failed(name, START, 0).unwrap();
            assert!(matches!(cache.get(name, START), Lookup::Backoff));
        };
        backoff(&mut cache, "a");
        cache.insert("a".to_owned(), 1, START, START + NOT_AFTER);
        assert_eq!(fresh(cache.get("a", START)), Some(1));
        assert_eq!(cache.negative_len(), 0);
        backoff(&mut cache, "b");
        cache.insert_negative("b".to_owned(), START);
        assert!(matches!(cache.get("b", START), Lookup::Negative));
        backoff(&mut cache, "c");
        assert!(cache.remove("c"));
        assert!(matches!(cache.get("c", START), Lookup::Miss));
        backoff(&mut cache, "x.example.com");
        cache.retain(|name, _| !name.ends_with(".example.com"));
        assert!(matches!(cache.get("x.example.com", START), Lookup::Miss));
        backoff(&mut cache, "d");
        cache.mark_all_due(START);
        assert!(matches!(cache.get("d", START), Lookup::Miss));
        backoff(&mut cache, "e");
        cache.clear();
        assert!(matches!(cache.get("e", START), Lookup::Miss));
    }

    #[test]
    fn backoffs_share_the_negative_bound_and_never_evict_a_certificate() {
        let mut cache = with_negative_max(2, 2);
        cache.insert("cert".to_owned(), 1, START, START + NOT_AFTER);
        cache.insert_negative("nx".to_owned(), START);
        for name in ["e1", "e2", "e3"] {
            cache.fetch_failed(name, START, 0).unwrap();
        }
        assert_eq!(cache.negative_order(), ["e3", "e2"]);
        assert_eq!(cache.order(), ["cert"]);
        // negative_max=0: nothing is remembered, failures included.
        let mut cache = with_negative_max(2, 0);
        assert_eq!(cache.fetch_failed("e", START, 0), None);
        assert_eq!(cache.negative_len(), 0);
    }

    #[test]
    fn a_backoff_allows_no_on_demand_enqueue() {
        let mut cache: CertCache<u64> = CertCache::new(policy(10));
        cache.fetch_failed("a", START, 0).unwrap();
        assert!(!cache.take_on_demand("a", START));
    }

    #[test]
    fn the_jitter_spreads_names_failing_together() {
        let mut cache: CertCache<u64> = CertCache::new(policy(100));
        let spread: std::collections::BTreeSet<Millis> = (0..20)
            .map(|i| cache.fetch_failed(&format!("n{i}"), START, 0).unwrap())
            .collect();
        assert!(spread.len() > 5, "{spread:?}");
        assert!(spread.iter().all(|b| (875..=1000).contains(b)));
    }

    #[test]
    fn a_negative_entry_allows_one_on_demand_enqueue_while_it_holds() {
        let mut cache = CertCache::<u64>::new(policy(10));
        cache.insert_negative_for("nx".to_owned(), START, true);
        assert!(cache.may_take_on_demand("nx", START + SECOND));
        assert!(
            cache.may_take_on_demand("nx", START + SECOND),
            "a peek takes nothing"
        );
        assert!(cache.take_on_demand("nx", START + SECOND));
        assert!(!cache.may_take_on_demand("nx", START + 2 * SECOND));
        assert!(!cache.take_on_demand("nx", START + 2 * SECOND), "once");
        assert!(!cache.may_take_on_demand("absent", START));
        let gone = START + cache.policy().negative;
        cache.insert_negative_for("old".to_owned(), START, true);
        assert!(!cache.may_take_on_demand("old", gone), "expired");
        // A new entry (the next negative period) allows one more.
        cache.insert_negative_for("nx".to_owned(), START + MINUTE, true);
        assert!(cache.take_on_demand("nx", START + MINUTE));
    }

    #[test]
    fn no_on_demand_enqueue_without_a_marked_live_negative_entry() {
        let mut cache = CertCache::<u64>::new(policy(10));
        assert!(!cache.take_on_demand("absent", START));
        cache.insert_negative("refused".to_owned(), START);
        assert!(!cache.take_on_demand("refused", START), "not marked");
        cache.insert_negative_for("old".to_owned(), START, true);
        let gone = START + cache.policy().negative;
        assert!(!cache.take_on_demand("old", gone), "expired");
        cache.insert("cert".to_owned(), 1, START, START + 30 * 24 * 60 * MINUTE);
        assert!(!cache.take_on_demand("cert", START), "a certificate");
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
        assert_eq!(cache.negative_len(), 0);
    }

    #[test]
    fn negative_entries_do_not_count_toward_max_entries() {
        let mut cache = CertCache::new(policy(2));
        cache.insert("a".to_owned(), 1, START, START + NOT_AFTER);
        cache.insert_negative("x".to_owned(), START);
        cache.insert_negative("y".to_owned(), START);
        assert_eq!((cache.len(), cache.negative_len()), (1, 2));
        assert_eq!(fresh(cache.get("a", START)), Some(1));
        cache.insert("b".to_owned(), 2, START, START + NOT_AFTER);
        assert_eq!(cache.order(), ["b", "a"]);
        assert_eq!(cache.negative_order(), ["y", "x"]);
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
        assert_eq!((cache.len(), cache.negative_len()), (0, 1));
        cache.insert("a".to_owned(), 3, START + 2 * SECOND, START + NOT_AFTER);
        assert_eq!(fresh(cache.get("a", START + 2 * SECOND)), Some(3));
        assert_eq!((cache.len(), cache.negative_len()), (1, 0));
    }

    fn with_negative_max(max_entries: usize, negative_max: usize) -> CertCache<u64> {
        CertCache::new(CachePolicy {
            negative_max,
            ..policy(max_entries)
        })
    }

    #[test]
    fn random_name_flood_never_evicts_cached_certificates() {
        let (max, negative_max) = (50, 200);
        let mut cache = CertCache::new(CachePolicy {
            max_bytes: 50 * 1000,
            negative_max,
            ..policy(max)
        });
        for i in 0..max as u64 {
            put(&mut cache, &format!("tenant{i}.example"), i, 1000);
        }
        assert_eq!((cache.len(), cache.bytes()), (max, 50 * 1000));
        // 100 times max_entries names no source knows, each seen once.
        for i in 0..100 * max as u64 {
            cache.insert_negative(format!("r{i:08x}.example"), START + i);
            assert!(cache.negative_len() <= negative_max);
        }
        assert_eq!(cache.negative_len(), negative_max);
        assert_eq!((cache.len(), cache.bytes()), (max, 50 * 1000));
        let later = START + 100 * max as u64;
        for i in 0..max as u64 {
            let name = format!("tenant{i}.example");
            assert_eq!(fresh(cache.get(&name, later)), Some(i), "{name}");
        }
        // The negative list reused its slots instead of growing.
        assert_eq!(cache.negative.capacity_used(), negative_max);
    }

    #[test]
    fn negative_max_evicts_the_least_recently_used_negative_entry() {
        let mut cache = with_negative_max(10, 3);
        for name in ["x", "y", "z"] {
            cache.insert_negative(name.to_owned(), START);
        }
        assert!(matches!(cache.get("x", START), Lookup::Negative));
        // contains_usable does not count as a use.
        assert!(cache.contains_usable("y", START));
        cache.insert_negative("w".to_owned(), START);
        assert_eq!(cache.negative_order(), ["w", "x", "z"]);
        assert!(matches!(cache.get("y", START), Lookup::Miss));
        // Re-recording a name refreshes it instead of adding a second entry.
        cache.insert_negative("z".to_owned(), START + SECOND);
        assert_eq!(cache.negative_order(), ["z", "w", "x"]);
        assert_eq!(cache.negative_len(), 3);
    }

    #[test]
    fn certificates_evict_only_certificates() {
        let mut cache = with_negative_max(2, 10);
        cache.insert_negative("x".to_owned(), START);
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            cache.insert(name.to_owned(), i as u64, START, START + NOT_AFTER);
        }
        assert_eq!(cache.order(), ["c", "b"]);
        assert_eq!(cache.negative_order(), ["x"]);
    }

    #[test]
    fn negative_insert_drops_the_certificate_of_that_name_and_its_bytes() {
        let mut cache = bounded(10, 0);
        put(&mut cache, "a", 1, 3000);
        put(&mut cache, "b", 2, 1000);
        cache.insert_negative("a".to_owned(), START + SECOND);
        assert_eq!(cache.order(), ["b"]);
        assert_eq!(cache.negative_order(), ["a"]);
        assert_eq!(cache.bytes(), 1000);
        assert!(matches!(cache.get("a", START + SECOND), Lookup::Negative));
    }

    #[test]
    fn positive_insert_drops_the_negative_entry_of_that_name() {
        let mut cache = bounded(10, 0);
        cache.insert_negative("a".to_owned(), START);
        cache.insert_negative("b".to_owned(), START);
        put(&mut cache, "a", 1, 500);
        assert_eq!(cache.negative_order(), ["b"]);
        assert_eq!(fresh(cache.get("a", START)), Some(1));
        // Even an entry too heavy to cache ends the negative one: the name
        // exists now.
        let mut cache = bounded(10, 100);
        cache.insert_negative("a".to_owned(), START);
        put(&mut cache, "a", 1, 101);
        assert_eq!((cache.len(), cache.negative_len()), (0, 0));
        assert!(matches!(cache.get("a", START), Lookup::Miss));
    }

    #[test]
    fn remove_and_clear_cover_negative_entries() {
        let mut cache = bounded(10, 0);
        put(&mut cache, "a", 1, 100);
        cache.insert_negative("x".to_owned(), START);
        cache.insert_negative("y".to_owned(), START);
        assert!(cache.remove("x"));
        assert!(!cache.remove("x"));
        assert!(matches!(cache.get("x", START), Lookup::Miss));
        assert_eq!(cache.negative_order(), ["y"]);
        cache.clear();
        assert_eq!(
            (cache.len(), cache.negative_len(), cache.bytes()),
            (0, 0, 0)
        );
        assert!(!cache.contains_usable("y", START));
    }

    #[test]
    fn negative_max_zero_caches_no_unknown_name_but_still_drops_the_certificate() {
        let mut cache = with_negative_max(10, 0);
        cache.insert("a".to_owned(), 1, START, START + NOT_AFTER);
        cache.insert_negative("a".to_owned(), START);
        cache.insert_negative("b".to_owned(), START);
        assert_eq!((cache.len(), cache.negative_len()), (0, 0));
        assert!(matches!(cache.get("a", START), Lookup::Miss));
        assert!(!cache.contains_usable("b", START));
        // Certificates are cached as usual.
        cache.insert("c".to_owned(), 3, START, START + NOT_AFTER);
        assert_eq!(fresh(cache.get("c", START)), Some(3));
    }

    #[test]
    fn max_entries_zero_disables_caching() {
        let mut cache = CertCache::new(policy(0));
        cache.insert("a".to_owned(), 1, START, START + NOT_AFTER);
        cache.insert_negative("b".to_owned(), START);
        assert!(cache.is_empty());
        assert_eq!(cache.negative_len(), 0);
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

    /// A clock stepped back keeps entries served (absolute deadlines make
    /// them look new, not ancient), and makes them due for a refresh: an
    /// entry fresh for longer than `valid` from now cannot come from a
    /// fetch, and left alone it would go unrefreshed for the whole step.
    #[test]
    fn clock_stepping_back_keeps_entries_served_and_due_for_a_refresh() {
        let mut cache = CertCache::new(policy(3));
        cache.insert("a".to_owned(), 1, START, START + NOT_AFTER);
        assert!(matches!(
            cache.get("a", START - HOUR),
            Lookup::Stale {
                value: 1,
                refresh_due: true
            }
        ));
        // A small step (a minute at most) changes nothing.
        cache.insert("b".to_owned(), 2, START, START + NOT_AFTER);
        assert_eq!(fresh(cache.get("b", START - SECOND)), Some(2));
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
            assert!(cache.negative_len() <= cache.policy().negative_max);
        }
        assert_eq!(cache.len(), max);
        assert!(cache.positive.capacity_used() <= max);
        assert_eq!(cache.order().len(), cache.len());
        assert_eq!(
            cache.positive.free_slots() + cache.len(),
            cache.positive.capacity_used()
        );
        assert_eq!(cache.negative_order().len(), cache.negative_len());
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
        assert_eq!(cache.bytes(), 8000);
        assert!(cache.remove("a"));
        assert_eq!(cache.bytes(), 5000);
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
        assert_eq!(cache.bytes(), 0);
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
    fn negative_entries_weigh_nothing_against_the_byte_bound() {
        let mut cache = bounded(1000, 10_000);
        put(&mut cache, "a", 1, 10_000);
        for i in 0..10 {
            cache.insert_negative(format!("n{i}.example"), START);
        }
        assert_eq!(cache.order(), ["a"]);
        assert_eq!((cache.bytes(), cache.negative_len()), (10_000, 10));
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
        assert_eq!(cache.order(), ["shop.example.org"]);
        assert_eq!(cache.negative_order(), ["x.example.com"]);
        assert_eq!(cache.bytes(), 100);
        cache.retain(|_, value| value.is_some());
        assert_eq!(cache.order(), ["shop.example.org"]);
        assert_eq!(cache.negative_len(), 0);
        cache.retain(|_, _| false);
        assert!(cache.is_empty());
        assert_eq!(cache.bytes(), 0);
        // Freed slots are reused.
        put(&mut cache, "c", 1, 1);
        assert_eq!(cache.positive.capacity_used(), 4);
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
            let counted: usize = cache.positive.iter().map(|(_, e)| e.bytes).sum();
            assert_eq!(counted, cache.bytes());
        }
        assert!(cache.bytes() > max_bytes / 2, "the cache is used");
        assert_eq!(cache.order().len(), cache.len());
        assert_eq!(
            cache.positive.free_slots() + cache.len(),
            cache.positive.capacity_used()
        );
    }
}
