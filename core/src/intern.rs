//! Sharing of intermediate certificates between cached records.
//!
//! Most customer certificates chain to a handful of intermediates, but
//! every record carries its own PEM copy. Parsed, an intermediate costs
//! about 5 KiB of OpenSSL heap and, on OpenSSL 3.0, about 0.15 ms of CPU:
//! each distinct DER is parsed once and the one object is shared by every
//! record that sends it, which also saves that parse on every later fetch.
//! Keyed by the SHA-256 of the DER, the name a shared store (a record's
//! compact form) can refer to an intermediate by.
//!
//! The table holds what records use, no more: each record keeps a
//! [`Held`] handle on its intermediates, the table only a weak one, so an
//! intermediate is freed with the last record (cached, in flight or on a
//! connection) that sent it. A tenant's intermediates therefore cost what
//! its cached records cost, within `dyncert_cache max_size`, and go when
//! they are evicted, deleted or invalidated (they used to stay for the
//! worker's life, up to 4,096 of them). Every intermediate is judged by
//! [`crate::weight`] before it is parsed or kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use openssl::x509::X509;

use crate::weight::{self, Heavy, Shape};

/// Most distinct intermediates in use at once that are shared; beyond, a
/// record's intermediates are its own (parsed for it, freed with it).
pub const MAX_INTERNED: usize = 4096;

/// Fewest table entries between two sweeps of the entries no record holds.
const SWEEP_FLOOR: usize = 64;

/// SHA-256 of a certificate's DER.
pub type CertDigest = [u8; 32];

/// The digest of `der`.
pub fn digest(der: &[u8]) -> CertDigest {
    openssl::sha::sha256(der)
}

/// One parsed intermediate and its shape (DER size, names).
pub struct Interned {
    cert: X509,
    shape: Shape,
}

impl std::fmt::Debug for Interned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interned")
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

impl Interned {
    pub fn cert(&self) -> &X509 {
        &self.cert
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }
}

/// A record's hold on one of its intermediates: while one exists, the
/// interner shares the certificate with every record that sends it.
pub type Held = Arc<Interned>;

/// Why an intermediate cannot be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InternError {
    /// OpenSSL could not parse the DER.
    Parse,
    /// Over the bounds of [`crate::weight`].
    Heavy(Heavy),
}

#[derive(Default)]
struct Table {
    map: HashMap<CertDigest, Weak<Interned>>,
    /// Size of the map at which the entries no record holds are dropped.
    sweep_at: usize,
}

impl Table {
    fn live(&self, d: &CertDigest) -> Option<Held> {
        self.map.get(d)?.upgrade()
    }

    /// Remembers `held` unless [`MAX_INTERNED`] intermediates are in use;
    /// first drops the entries of intermediates no record holds any more,
    /// once the map has doubled since the last sweep (amortised O(1)) or
    /// is full.
    fn remember(&mut self, d: CertDigest, held: &Held) {
        if self.map.len() >= self.sweep_at.clamp(SWEEP_FLOOR, MAX_INTERNED) {
            self.map.retain(|_, w| w.strong_count() > 0);
            self.sweep_at = self.map.len() * 2;
        }
        if self.map.len() < MAX_INTERNED || self.map.contains_key(&d) {
            self.map.insert(d, Arc::downgrade(held));
        }
    }
}

/// Digest -> the parsed certificate records hold, shared.
#[derive(Default)]
pub struct Interner {
    table: Mutex<Table>,
}

impl Interner {
    /// The shared certificate for `der`, parsed now only if no record
    /// holding it is alive; refused if it is too big or carries too many
    /// names to hold ([`weight::judge_intermediate`]).
    pub fn get_or_parse(&self, der: &[u8]) -> Result<Held, InternError> {
        weight::judge_intermediate_size(der.len()).map_err(InternError::Heavy)?;
        let d = digest(der);
        if let Some(shared) = self.get(&d) {
            return Ok(shared);
        }
        let cert = X509::from_der(der).map_err(|_| InternError::Parse)?;
        let shape = Shape::of(&cert, der.len());
        weight::judge_intermediate(shape).map_err(InternError::Heavy)?;
        let held = Arc::new(Interned { cert, shape });
        if let Ok(mut table) = self.table.lock() {
            if let Some(shared) = table.live(&d) {
                return Ok(shared);
            }
            table.remember(d, &held);
        }
        Ok(held)
    }

    /// The shared certificate with digest `d`, if a record holds it.
    pub fn get(&self, d: &CertDigest) -> Option<Held> {
        self.table.lock().ok()?.live(d)
    }

    /// Intermediates some record holds.
    pub fn len(&self) -> usize {
        self.table
            .lock()
            .map(|t| t.map.values().filter(|w| w.strong_count() > 0).count())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries in the table, including those of intermediates no record
    /// holds any more that the next sweep drops.
    pub fn entries(&self) -> usize {
        self.table.lock().map(|t| t.map.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::testpki::{key, leaf};
    use foreign_types::ForeignType;

    fn der(name: &str) -> Vec<u8> {
        leaf(&[name], &key(), -1, 30).to_der().unwrap()
    }

    #[test]
    fn equal_intermediates_become_one_object_parsed_once() {
        let der = der("ca.example");
        let i = Interner::default();
        let a = i.get_or_parse(&der).unwrap();
        let b = i.get_or_parse(&der).unwrap();
        assert_eq!(
            a.cert().as_ptr(),
            b.cert().as_ptr(),
            "one object for one DER"
        );
        assert_eq!(i.len(), 1);
        assert_eq!(
            i.get(&digest(&der)).unwrap().cert().as_ptr(),
            a.cert().as_ptr()
        );
        assert_eq!(
            a.shape(),
            Shape {
                der: der.len(),
                names: 1
            }
        );
    }

    #[test]
    fn different_certificates_stay_distinct_and_garbage_is_an_error() {
        let i = Interner::default();
        let one = i.get_or_parse(&der("one.example")).unwrap();
        let two = i.get_or_parse(&der("two.example")).unwrap();
        assert_ne!(one.cert().as_ptr(), two.cert().as_ptr());
        assert_eq!(i.len(), 2);
        assert_eq!(i.get_or_parse(b"not DER").unwrap_err(), InternError::Parse);
        assert_eq!(i.len(), 2, "nothing remembered for garbage");
    }

    #[test]
    fn an_intermediate_goes_with_the_last_record_holding_it() {
        let i = Interner::default();
        let der = der("ca.example");
        let a = i.get_or_parse(&der).unwrap();
        let b = i.get_or_parse(&der).unwrap();
        drop(a);
        assert!(i.get(&digest(&der)).is_some(), "still held by b");
        drop(b);
        assert!(i.get(&digest(&der)).is_none(), "no record holds it");
        assert_eq!(i.len(), 0);
        // Sent again, it is parsed again.
        assert!(i.get_or_parse(&der).is_ok());
    }

    #[test]
    fn entries_no_record_holds_are_swept_as_the_table_grows() {
        let i = Interner::default();
        for n in 0..10 * SWEEP_FLOOR {
            drop(i.get_or_parse(&der(&format!("n{n}.example"))).unwrap());
        }
        assert_eq!(i.len(), 0);
        assert!(i.entries() <= SWEEP_FLOOR, "{} entries", i.entries());
    }

    #[test]
    fn heavy_intermediates_are_refused_and_not_remembered() {
        let i = Interner::default();
        let names: Vec<String> = (0..=weight::MAX_INTERMEDIATE_NAMES)
            .map(|n| format!("n{n}.example"))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let named = leaf(&refs, &key(), -1, 30).to_der().unwrap();
        assert_eq!(
            i.get_or_parse(&named).unwrap_err(),
            InternError::Heavy(Heavy::Intermediate)
        );
        let big = vec![0u8; weight::MAX_INTERMEDIATE_DER + 1];
        assert_eq!(
            i.get_or_parse(&big).unwrap_err(),
            InternError::Heavy(Heavy::Intermediate),
            "refused by size before parsing"
        );
        assert_eq!(i.entries(), 0);
    }
}
