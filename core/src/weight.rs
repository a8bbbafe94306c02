//! What a record's parsed certificates cost a worker's memory, and which
//! certificates are too heavy to hold at all.
//!
//! A parsed certificate costs far more than its DER: OpenSSL keeps the DER
//! decoded into objects, one `GENERAL_NAME` (with its string) per
//! subjectAltName, plus the cached extension data of every certificate.
//! Measured with OpenSSL 3.0 (`parsed_size_per_shape`, RSS of a process
//! holding 2,000 parsed certificates of each shape, per certificate): a
//! one-name certificate of 353 bytes of DER costs 4.7 KiB; one of 100
//! names, 2.9 KB DER, 17.1 KiB; one of 1,000 names, 27 KB DER, 153 KiB
//! (charged 4.8, 19.5 and 155 KiB). So about
//! [`CERT_BASE_BYTES`] + [`DER_FACTOR`] x DER + [`NAME_BYTES`] per name,
//! which [`cert_weight`] charges; `dyncert_cache max_size=` counts it.
//!
//! The bounds on a record's contents (refused at validation, on the parse
//! thread, before the record is cached or shared):
//! - an intermediate of more than [`MAX_INTERMEDIATE_DER`] bytes or more
//!   than [`MAX_INTERMEDIATE_NAMES`] names (real intermediates are 1 to
//!   2 KB and carry no subjectAltName; intermediates are sent, never
//!   verified by the server, so size is all a tenant could get from one);
//! - a leaf of more than [`MAX_LEAF_NAMES`] names (public CAs issue at
//!   most 100 per certificate, Let's Encrypt 100, the commercial "UCC"
//!   products 250; ten times that leaves private CAs room);
//! - a record whose certificates weigh more than [`MAX_RECORD_WEIGHT`]
//!   (512 KiB) altogether: two leaves of a few hundred long names each,
//!   with their chains, fit; a tenant cannot make one entry of a cache
//!   without `max_size` hold a megabyte.
//!
//! A record heavier than the cache's whole `max_size` (at least 256 KiB)
//! is charged that much ([`charged`]): it is cached alone rather than not
//! at all, which would make every handshake for its name fetch it again.
#![forbid(unsafe_code)]

use openssl::x509::X509Ref;

/// Charged per parsed certificate besides its DER and names: the `X509`
/// structure, its cached digests and decoded extensions.
pub const CERT_BASE_BYTES: usize = 4096;
/// Charged per byte of DER: OpenSSL keeps the encoding and the decoded
/// fields.
pub const DER_FACTOR: usize = 2;
/// Charged per subjectAltName: a `GENERAL_NAME`, its `ASN1_STRING` and
/// their allocator overhead, about 100 bytes on 64-bit glibc.
pub const NAME_BYTES: usize = 100;
/// Largest intermediate accepted, in DER bytes.
pub const MAX_INTERMEDIATE_DER: usize = 8 * 1024;
/// Most subjectAltNames an intermediate may carry.
pub const MAX_INTERMEDIATE_NAMES: usize = 100;
/// Most subjectAltNames a leaf may carry.
pub const MAX_LEAF_NAMES: usize = 1000;
/// Heaviest record accepted: leaf, chain, second pair and client CAs,
/// weighed by [`cert_weight`]: twice the smallest `dyncert_cache
/// max_size=` (`directives::MIN_CACHE_BYTES`).
pub const MAX_RECORD_WEIGHT: usize = 2 * crate::directives::MIN_CACHE_BYTES;

/// Why a record is too heavy to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heavy {
    /// An intermediate over [`MAX_INTERMEDIATE_DER`] bytes or
    /// [`MAX_INTERMEDIATE_NAMES`] names.
    Intermediate,
    /// A leaf with more than [`MAX_LEAF_NAMES`] names.
    LeafNames,
    /// All certificates together over [`MAX_RECORD_WEIGHT`].
    Record,
}

/// The size and the number of subjectAltNames of one certificate: all
/// that its weight depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    pub der: usize,
    pub names: usize,
}

impl Shape {
    /// The shape of `cert`, whose DER is `der` bytes long.
    pub fn of(cert: &X509Ref, der: usize) -> Shape {
        Shape {
            der,
            names: names_of(cert),
        }
    }

    /// The memory a worker holds for this certificate parsed.
    pub fn weight(&self) -> usize {
        cert_weight(self.der, self.names)
    }
}

/// The subjectAltNames of `cert` (every kind, not only DNS names).
pub fn names_of(cert: &X509Ref) -> usize {
    cert.subject_alt_names().map_or(0, |n| n.len())
}

/// The memory a worker holds for one parsed certificate of `der` bytes
/// with `names` subjectAltNames (see the module documentation).
pub fn cert_weight(der: usize, names: usize) -> usize {
    CERT_BASE_BYTES
        .saturating_add(der.saturating_mul(DER_FACTOR))
        .saturating_add(names.saturating_mul(NAME_BYTES))
}

/// Whether an intermediate of `der` bytes may be parsed at all: checked
/// before OpenSSL decodes it.
pub fn judge_intermediate_size(der: usize) -> Result<(), Heavy> {
    if der > MAX_INTERMEDIATE_DER {
        return Err(Heavy::Intermediate);
    }
    Ok(())
}

/// Whether a parsed intermediate of `shape` may be held.
pub fn judge_intermediate(shape: Shape) -> Result<(), Heavy> {
    judge_intermediate_size(shape.der)?;
    if shape.names > MAX_INTERMEDIATE_NAMES {
        return Err(Heavy::Intermediate);
    }
    Ok(())
}

/// Whether a leaf with `names` subjectAltNames may be held.
pub fn judge_leaf(names: usize) -> Result<(), Heavy> {
    if names > MAX_LEAF_NAMES {
        return Err(Heavy::LeafNames);
    }
    Ok(())
}

/// What a cache bounded to `max_bytes` (0: no byte bound) charges an
/// entry that weighs `bytes`: its weight, or the whole bound when it is
/// heavier, so that it is cached alone rather than refused by the cache.
pub fn charged(bytes: usize, max_bytes: usize) -> usize {
    match max_bytes {
        0 => bytes,
        max => bytes.min(max),
    }
}

/// Whether a record whose certificates weigh `weight` in all may be held.
pub fn judge_record(weight: usize) -> Result<(), Heavy> {
    if weight > MAX_RECORD_WEIGHT {
        return Err(Heavy::Record);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_grows_with_der_and_names_and_never_overflows() {
        assert_eq!(cert_weight(0, 0), CERT_BASE_BYTES);
        assert_eq!(cert_weight(1000, 0), CERT_BASE_BYTES + 2000);
        assert_eq!(cert_weight(353, 1), 4902, "measured: 4818");
        assert_eq!(cert_weight(1000, 10), CERT_BASE_BYTES + 2000 + 1000);
        assert_eq!(cert_weight(usize::MAX, usize::MAX), usize::MAX);
        // The audit's heavy certificate: 28 KB DER, 1,300 names, measured
        // at 175 to 202 KiB of worker RSS.
        let w = cert_weight(28_000, 1300);
        assert!((170 * 1024..=210 * 1024).contains(&w), "{w}");
        // An ordinary intermediate: ~1.3 KB, no names, ~5 to 7 KiB.
        assert!((5 * 1024..=7 * 1024).contains(&cert_weight(1300, 0)));
    }

    #[test]
    fn intermediates_over_8k_or_100_names_are_refused() {
        let ok = Shape {
            der: MAX_INTERMEDIATE_DER,
            names: MAX_INTERMEDIATE_NAMES,
        };
        assert_eq!(judge_intermediate(ok), Ok(()));
        assert_eq!(judge_intermediate_size(MAX_INTERMEDIATE_DER), Ok(()));
        let big = Shape {
            der: ok.der + 1,
            ..ok
        };
        assert_eq!(judge_intermediate(big), Err(Heavy::Intermediate));
        assert_eq!(
            judge_intermediate_size(big.der),
            Err(Heavy::Intermediate),
            "refused before it is parsed"
        );
        let named = Shape {
            names: ok.names + 1,
            ..ok
        };
        assert_eq!(judge_intermediate(named), Err(Heavy::Intermediate));
    }

    #[test]
    fn leaves_over_1000_names_are_refused() {
        assert_eq!(judge_leaf(100), Ok(()));
        assert_eq!(judge_leaf(MAX_LEAF_NAMES), Ok(()));
        assert_eq!(judge_leaf(MAX_LEAF_NAMES + 1), Err(Heavy::LeafNames));
    }

    #[test]
    fn the_heaviest_accepted_record_fits_the_smallest_cache() {
        assert_eq!(judge_record(MAX_RECORD_WEIGHT), Ok(()));
        assert_eq!(judge_record(MAX_RECORD_WEIGHT + 1), Err(Heavy::Record));
        // A leaf of the most names, of long names, alone fits, and two
        // leaves of 281 names of 206 bytes (60 KB DER each) with their
        // intermediate.
        assert_eq!(judge_record(cert_weight(40_000, MAX_LEAF_NAMES)), Ok(()));
        let long = 2 * cert_weight(60_000, 281) + cert_weight(1400, 0);
        assert_eq!(judge_record(long), Ok(()));
        // An ordinary record (leaf of a few names, two intermediates, and
        // the same again as a second pair) weighs a few tens of KiB.
        let ordinary = 2 * (cert_weight(1500, 3) + 2 * cert_weight(1400, 0));
        assert!(ordinary < 64 * 1024, "{ordinary}");
    }

    #[test]
    fn an_entry_heavier_than_the_cache_is_charged_the_whole_cache() {
        assert_eq!(charged(10_000, 0), 10_000, "no byte bound");
        assert_eq!(charged(10_000, 256 * 1024), 10_000);
        assert_eq!(charged(MAX_RECORD_WEIGHT, 256 * 1024), 256 * 1024);
    }

    #[test]
    fn shape_counts_every_subject_alt_name() {
        use crate::validate::testpki::{key, leaf};
        let names: Vec<String> = (0..7).map(|i| format!("n{i}.example")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let c = leaf(&refs, &key(), -1, 30);
        let der = c.to_der().unwrap().len();
        let s = Shape::of(&c, der);
        assert_eq!(s, Shape { der, names: 7 });
        assert_eq!(s.weight(), cert_weight(der, 7));
    }

    /// The figures in the module documentation: RSS per parsed certificate
    /// of three shapes, against [`cert_weight`]. Linux only; run with
    /// `cargo test -p dyncert-core --release weight::tests::parsed_size
    /// -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn parsed_size_per_shape() {
        use crate::validate::testpki::{key, leaf};
        use dyncert_testkit::fixture::rss_kib;
        use openssl::x509::X509;
        let rss_kib = || rss_kib(std::process::id()) as usize;
        const N: usize = 2000;
        let k = key();
        for names in [1usize, 100, 1000] {
            let sans: Vec<String> = (0..names)
                .map(|i| format!("n{i:04}.tenant-{names}.example"))
                .collect();
            let refs: Vec<&str> = sans.iter().map(String::as_str).collect();
            let der = leaf(&refs, &k, -1, 30).to_der().unwrap();
            let before = rss_kib();
            let held: Vec<X509> = (0..N)
                .map(|_| {
                    let c = X509::from_der(&der).unwrap();
                    crate::validate::precompute(&c);
                    c
                })
                .collect();
            let per = (rss_kib() - before) * 1024 / N;
            eprintln!(
                "{names} names, {} B DER: {per} B RSS per parsed certificate, charged {}",
                der.len(),
                cert_weight(der.len(), names)
            );
            drop(held);
        }
    }
}
