//! The host-wide tier between a worker's parsed hot set and Redis: records
//! in compact form (`compact.rs`), stored once for all workers of a host.
//! In nginx it is a shared-memory zone (`dyncert_shared_zone`); the worker
//! only sees this trait, so its decisions are tested with [`MemoryTier`].
//!
//! A worker that misses its hot set asks the tier before Redis; what the
//! tier holds was fetched and validated by some worker of the host, and
//! carries that fetch's deadlines, so one fetch (or refresh) serves all.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::clock::Millis;
use crate::compact::{Deadlines, IntermediateDers};
use crate::intern::CertDigest;
use crate::name::wildcard_parent;

/// What the tier holds for a name: the compact record's bytes and the DER
/// of the intermediates it refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierHit {
    pub bytes: Vec<u8>,
    pub intermediates: IntermediateDers,
}

impl TierHit {
    /// The stored deadlines, read from the header without decoding the
    /// rest; None for bytes that are not a compact record.
    pub fn deadlines(&self) -> Option<Deadlines> {
        crate::compact::Compact::decode(&self.bytes)
            .ok()
            .map(|(_, d)| d)
    }
}

/// A host-wide store of compact records. Every call is short and never
/// waits on I/O: the nginx implementation takes the zone's lock for a
/// lookup and a copy.
///
/// Invalidations are applied by every worker, each when its own message
/// arrives, so a worker that has not applied one yet may come to store a
/// record it read before the update. The tier therefore counts the
/// invalidations applied to it ([`Invalidations`]): a lookup notes the
/// [`Self::generation`] before it reads a source, and its
/// [`Self::store`] is refused when an invalidation covering the name was
/// applied since.
pub trait SharedTier {
    /// The record stored for `name`, if any.
    fn lookup(&self, name: &str) -> Option<TierHit>;
    /// How many invalidations were applied to the tier so far.
    fn generation(&self) -> u64;
    /// Stores (or replaces) `name`'s record; the intermediates are stored
    /// once each. A full store evicts its least recently used records; a
    /// record it cannot hold at all is simply not stored, and evicts
    /// nothing ([`page_need`] tells the nginx zone). Refused (false,
    /// nothing stored; the only case of false) when an invalidation
    /// covering `name` was applied after [`Self::generation`] read
    /// `since`: the record may be the one it replaced.
    fn store(&self, name: &str, bytes: &[u8], intermediates: &IntermediateDers, since: u64)
        -> bool;
    /// Drops `name`. Each of the drops counts as an invalidation of what it
    /// drops (one that is not, a damaged record, only costs a lookup
    /// running elsewhere its store).
    fn remove(&self, name: &str);
    /// Drops the wildcard key `*.parent` and every name one label below
    /// `parent` (the names its record may have been stored under).
    fn remove_wildcard(&self, wildcard: &str);
    /// Drops everything.
    fn clear(&self);
    /// Notes that a worker's invalidation subscription came back after a
    /// loss at `at` (ms): messages published meanwhile reached no worker
    /// that lost it too (usually all of a host's, cut off from Redis
    /// together), so no record fetched before `at` is loaded any more;
    /// each is fetched again on its next miss and stored anew.
    fn note_resubscribed(&self, at: Millis);
    /// Records fetched before this time (ms) are not to be loaded: the
    /// latest [`Self::note_resubscribed`] of any worker, however long ago
    /// (a worker started since then sees it too).
    fn fetched_floor(&self) -> Millis;
}

/// Slots of [`Invalidations`]: targets that share one only make stores
/// more cautious, never less.
pub const INVALIDATION_SLOTS: usize = 512;

/// Which invalidations a tier has applied, and when, counted in
/// generations rather than by a clock: the tier's lock orders them with
/// every store. A fixed table in which a target's slot holds the
/// generation of its latest invalidation, so it never grows; two targets
/// in one slot can refuse a store that was safe (it is fetched again on a
/// later miss), never let through one that was not.
///
/// `repr(C)` and all-zero when new, so the nginx zone keeps it in shared
/// memory as it is.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Invalidations {
    generation: u64,
    /// Generation of the latest `*`.
    all: u64,
    slots: [u64; INVALIDATION_SLOTS],
    /// See [`SharedTier::fetched_floor`].
    fetched_floor: Millis,
}

impl Default for Invalidations {
    fn default() -> Self {
        Invalidations {
            generation: 0,
            all: 0,
            slots: [0; INVALIDATION_SLOTS],
            fetched_floor: 0,
        }
    }
}

impl Invalidations {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Notes an invalidation of `target` (a name, `*.parent`, or `*`).
    pub fn note(&mut self, target: &str) {
        self.generation = self.generation.saturating_add(1);
        if target == "*" {
            self.all = self.generation;
        } else {
            self.slots[slot(target)] = self.generation;
        }
    }

    /// Raises [`SharedTier::fetched_floor`] to `at` (never lowers it).
    pub fn note_resubscribed(&mut self, at: Millis) {
        self.fetched_floor = self.fetched_floor.max(at);
    }

    pub fn fetched_floor(&self) -> Millis {
        self.fetched_floor
    }

    /// Whether an invalidation that covers `name` (the name itself, its
    /// `*.parent`, or `*`) was noted after generation `since`.
    pub fn covers_since(&self, name: &str, since: u64) -> bool {
        self.all > since
            || self.slots[slot(name)] > since
            || wildcard_parent(name).is_some_and(|w| self.slots[slot(&w)] > since)
    }
}

/// Identifies the configuration that admitted a tier's records: where
/// they were read, what a fetch checked them against, and the deadlines
/// it gave them. A reload that keeps the tier but changes any of these
/// empties it, rather than serve what the old configuration admitted
/// (another prefix's records, deadlines the new one would not grant).
/// FNV-1a (64-bit) over the parts, each preceded by its length so that
/// no two lists of parts run together into one.
pub fn config_fingerprint<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for part in parts {
        eat(&(part.len() as u64).to_le_bytes());
        eat(part);
    }
    h
}

/// FNV-1a over `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Pages that allocations of some sizes take for themselves in an nginx
/// slab pool, against what an empty pool has for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageNeed {
    pub needed: usize,
    pub available: usize,
}

impl PageNeed {
    /// False when even an empty pool (every record evicted) could not
    /// hold the allocations at once, so evicting anything for them is
    /// waste. True for anything that might fit: allocations that share
    /// pages and fragmentation are not counted.
    pub fn may_fit(&self) -> bool {
        self.needed <= self.available
    }
}

/// Whole pages of `page` bytes that one allocation of `size` bytes takes
/// for itself: `ngx_slab_alloc` serves anything larger than half a page
/// with whole pages of its own (`ngx_slab_alloc_pages`); smaller ones share
/// a page with others of their size class and count as none here.
pub fn slab_pages(size: usize, page: usize) -> usize {
    if page == 0 || size <= page / 2 {
        0
    } else {
        size.div_ceil(page)
    }
}

/// What allocations of `sizes` bytes need of a slab pool whose pages span
/// `span` bytes (`end - start`: at least its page count times `page`, so
/// the count errs on the side of room) and which keeps one allocation of
/// `header` bytes for good. The header's pages are never free, and a small
/// header still takes a page of its size class, which no allocation of
/// whole pages can use.
pub fn page_need(
    sizes: impl IntoIterator<Item = usize>,
    page: usize,
    span: usize,
    header: usize,
) -> PageNeed {
    let needed = sizes
        .into_iter()
        .map(|size| slab_pages(size, page))
        .fold(0, usize::saturating_add);
    let pages = span.checked_div(page).unwrap_or(0);
    PageNeed {
        needed,
        available: pages.saturating_sub(slab_pages(header, page).max(1)),
    }
}

fn slot(target: &str) -> usize {
    fnv1a(target.as_bytes()) as usize % INVALIDATION_SLOTS
}

/// A stored record: its bytes and the digests of its intermediates.
type Entry = (Vec<u8>, Vec<CertDigest>);

/// An in-process tier: the reference behaviour, shared by several workers
/// in tests through `Rc`.
#[derive(Debug, Default)]
pub struct MemoryTier {
    records: RefCell<HashMap<String, Entry>>,
    intermediates: RefCell<HashMap<CertDigest, Vec<u8>>>,
    invalidations: RefCell<Invalidations>,
}

impl MemoryTier {
    pub fn len(&self) -> usize {
        self.records.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SharedTier for Rc<MemoryTier> {
    fn lookup(&self, name: &str) -> Option<TierHit> {
        let records = self.records.borrow();
        let (bytes, digests) = records.get(name)?;
        let all = self.intermediates.borrow();
        let intermediates = digests
            .iter()
            .filter_map(|d| all.get(d).map(|der| (*d, der.clone())))
            .collect();
        Some(TierHit {
            bytes: bytes.clone(),
            intermediates,
        })
    }

    fn generation(&self) -> u64 {
        self.invalidations.borrow().generation()
    }

    fn store(
        &self,
        name: &str,
        bytes: &[u8],
        intermediates: &IntermediateDers,
        since: u64,
    ) -> bool {
        if self.invalidations.borrow().covers_since(name, since) {
            return false;
        }
        let mut all = self.intermediates.borrow_mut();
        for (d, der) in intermediates {
            all.entry(*d).or_insert_with(|| der.clone());
        }
        self.records.borrow_mut().insert(
            name.to_owned(),
            (
                bytes.to_vec(),
                intermediates.iter().map(|(d, _)| *d).collect(),
            ),
        );
        true
    }

    fn remove(&self, name: &str) {
        self.invalidations.borrow_mut().note(name);
        self.records.borrow_mut().remove(name);
    }

    fn remove_wildcard(&self, wildcard: &str) {
        self.invalidations.borrow_mut().note(wildcard);
        self.records.borrow_mut().retain(|name, _| {
            name != wildcard && wildcard_parent(name).as_deref() != Some(wildcard)
        });
    }

    fn clear(&self) {
        self.invalidations.borrow_mut().note("*");
        self.records.borrow_mut().clear();
    }

    fn note_resubscribed(&self, at: Millis) {
        self.invalidations.borrow_mut().note_resubscribed(at);
    }

    fn fetched_floor(&self) -> Millis {
        self.invalidations.borrow().fetched_floor()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalidation_covers_only_lookups_started_before_it() {
        let mut inv = Invalidations::default();
        let before = inv.generation();
        inv.note("a.example.com");
        let after = inv.generation();
        assert!(inv.covers_since("a.example.com", before));
        assert!(!inv.covers_since("a.example.com", after));
        assert!(!inv.covers_since("b.example.com", before));
    }

    #[test]
    fn a_wildcard_covers_itself_and_names_one_label_below() {
        let mut inv = Invalidations::default();
        inv.note("*.example.com");
        assert!(inv.covers_since("*.example.com", 0));
        assert!(inv.covers_since("a.example.com", 0));
        assert!(!inv.covers_since("example.com", 0));
        assert!(!inv.covers_since("b.a.example.com", 0));
        // Invalidating a name does not cover its wildcard's record.
        let mut inv = Invalidations::default();
        inv.note("a.example.com");
        assert!(!inv.covers_since("*.example.com", 0));
    }

    #[test]
    fn everything_covers_every_name_until_the_next_lookup() {
        let mut inv = Invalidations::default();
        inv.note("*");
        assert!(inv.covers_since("a.example.com", 0));
        assert!(inv.covers_since("*.example.com", 0));
        assert!(!inv.covers_since("a.example.com", inv.generation()));
    }

    #[test]
    fn a_fingerprint_tells_configurations_apart() {
        let fp = |parts: &[&str]| config_fingerprint(parts.iter().map(|p| p.as_bytes()));
        assert_eq!(fp(&["a:", "600000"]), fp(&["a:", "600000"]));
        assert_ne!(fp(&["a:", "600000"]), fp(&["b:", "600000"]));
        assert_ne!(fp(&["a:", "600000"]), fp(&["a:", "60000"]));
        // Parts do not run together.
        assert_ne!(fp(&["ab", "c"]), fp(&["a", "bc"]));
        assert_ne!(fp(&["a", ""]), fp(&["a"]));
    }

    #[test]
    fn the_fetched_floor_only_rises() {
        let mut inv = Invalidations::default();
        assert_eq!(inv.fetched_floor(), 0);
        inv.note_resubscribed(500);
        inv.note_resubscribed(200);
        assert_eq!(inv.fetched_floor(), 500);
    }

    #[test]
    fn names_that_share_a_slot_err_on_the_side_of_refusing() {
        let target = "a.example.com";
        let other = (0..10_000)
            .map(|i| format!("n{i}.example.net"))
            .find(|n| slot(n) == slot(target))
            .expect("some name shares the slot");
        let mut inv = Invalidations::default();
        inv.note(target);
        assert!(inv.covers_since(&other, 0));
    }

    #[test]
    fn allocations_above_half_a_page_take_whole_pages_and_smaller_ones_none() {
        assert_eq!(slab_pages(0, 4096), 0);
        assert_eq!(slab_pages(2048, 4096), 0);
        assert_eq!(slab_pages(2049, 4096), 1);
        assert_eq!(slab_pages(4096, 4096), 1);
        assert_eq!(slab_pages(4097, 4096), 2);
        assert_eq!(slab_pages(120_000, 4096), 30);
        assert_eq!(slab_pages(usize::MAX, 4096), usize::MAX / 4096 + 1);
        assert_eq!(slab_pages(100, 0), 0);
    }

    #[test]
    fn an_empty_pool_has_its_pages_less_the_headers() {
        // 31 pages of 4 KiB (a 128k zone), a header of two pages.
        let span = 31 * 4096;
        let need = page_need([29 * 4096], 4096, span, 4096 + 100);
        assert_eq!(
            need,
            PageNeed {
                needed: 29,
                available: 29
            }
        );
        assert!(need.may_fit());
        assert!(!page_need([29 * 4096 + 1], 4096, span, 4096 + 100).may_fit());
        // A small header still holds a page of its own.
        assert_eq!(page_need([0], 4096, span, 200).available, 30);
        assert!(page_need([30 * 4096], 4096, span, 200).may_fit());
        assert!(!page_need([30 * 4096 + 1], 4096, span, 200).may_fit());
        // Bytes past the last whole page are not a page.
        assert_eq!(page_need([0], 4096, span + 4095, 200).available, 30);
    }

    #[test]
    fn a_record_and_its_intermediates_need_their_pages_together() {
        let span = 31 * 4096;
        // 20 + 5 + 5 pages: more than 29, though each fits alone.
        let sizes = [20 * 4096, 5 * 4096, 5 * 4096];
        assert!(!page_need(sizes, 4096, span, 5000).may_fit());
        // Allocations of half a page or less share pages: never counted,
        // so a record that might fit is never refused for them.
        let sizes = [29 * 4096, 2048, 2048, 100];
        assert!(page_need(sizes, 4096, span, 5000).may_fit());
        assert!(!page_need([usize::MAX, usize::MAX], 4096, span, 5000).may_fit());
    }

    #[test]
    fn a_pool_without_pages_fits_only_what_takes_none() {
        assert!(page_need([100], 4096, 0, 200).may_fit());
        assert!(!page_need([3000], 4096, 4096, 200).may_fit());
        assert!(page_need([3000], 0, 4096, 200).may_fit());
    }

    #[test]
    fn a_memory_tier_refuses_a_store_read_before_an_invalidation() {
        let tier = Rc::new(MemoryTier::default());
        let since = tier.generation();
        tier.remove("a.example.com");
        assert!(!tier.store("a.example.com", b"old", &Vec::new(), since));
        assert!(tier.lookup("a.example.com").is_none());
        assert!(tier.store("a.example.com", b"new", &Vec::new(), tier.generation()));
        assert_eq!(tier.lookup("a.example.com").unwrap().bytes, b"new");
        // Other names are stored as before.
        assert!(tier.store("b.example.com", b"b", &Vec::new(), since));
    }
}
