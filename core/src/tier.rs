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
pub trait SharedTier {
    /// The record stored for `name`, if any.
    fn lookup(&self, name: &str) -> Option<TierHit>;
    /// Stores (or replaces) `name`'s record; the intermediates are stored
    /// once each. A full store evicts its least recently used records; a
    /// record it cannot hold at all is simply not stored.
    fn store(&self, name: &str, bytes: &[u8], intermediates: &IntermediateDers);
    /// Drops `name`.
    fn remove(&self, name: &str);
    /// Drops the wildcard key `*.parent` and every name one label below
    /// `parent` (the names its record may have been stored under).
    fn remove_wildcard(&self, wildcard: &str);
    /// Drops everything.
    fn clear(&self);
}

/// A stored record: its bytes and the digests of its intermediates.
type Entry = (Vec<u8>, Vec<CertDigest>);

/// An in-process tier: the reference behaviour, shared by several workers
/// in tests through `Rc`.
#[derive(Debug, Default)]
pub struct MemoryTier {
    records: RefCell<HashMap<String, Entry>>,
    intermediates: RefCell<HashMap<CertDigest, Vec<u8>>>,
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

    fn store(&self, name: &str, bytes: &[u8], intermediates: &IntermediateDers) {
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
    }

    fn remove(&self, name: &str) {
        self.records.borrow_mut().remove(name);
    }

    fn remove_wildcard(&self, wildcard: &str) {
        self.records.borrow_mut().retain(|name, _| {
            name != wildcard && wildcard_parent(name).as_deref() != Some(wildcard)
        });
    }

    fn clear(&self) {
        self.records.borrow_mut().clear();
    }
}
