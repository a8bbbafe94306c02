//! The compact form of a validated record, as a host-wide store keeps it:
//! the leaf's DER, the digests of its intermediates (stored once, apart),
//! the private key in the form OpenSSL 3.0 loads fastest (SEC1 for EC,
//! PKCS#1 for RSA, PKCS#8 only for the rest), the raw policy fields, the
//! record's fingerprint and its cache deadlines.
//!
//! Loading a compact record (`Compact::load`) skips everything a fetch
//! already checked (PEM, name coverage, key match) except the dates,
//! the key's type and size (`validate::judge_leaf_key`, cheap, under this
//! process's `dyncert_rsa_max_bits`), an RSA private key's CRT parameters
//! (`validate::judge_private_key`, microseconds) and the strength of the signatures
//! and of the intermediates' keys (`chainsec::judge_chain`): it
//! is only ever written by this module after `validate`, but the bytes sit
//! in memory other processes write, so decoding is bounded and checked
//! like any input (and fuzzed).

use openssl::x509::X509;

use crate::clock::Millis;
pub use crate::der::KeyDer;
use crate::intern::{digest, CertDigest, Held, InternError, Interner};
use crate::outcome::CertSource;
use crate::record::{Record, MAX_ALLOW_BYTES, MAX_CHAIN_LEN, MAX_CLIENT_CA_BYTES, MAX_KEY_BYTES};
use crate::validate::{
    chain_stack, heavy, judge_leaf_key, judge_private_key, key_der, pair_key_der, policy_of,
    precompute, record_weight, second_reason, Invalid, KeyLimits, ParsedCert, Second,
};
use crate::weight::Shape;

/// Format tag and version.
const MAGIC: &[u8; 4] = b"dcr1";
/// Largest leaf DER kept (the record's whole `crt` is bounded at 64 KiB).
pub const MAX_LEAF_BYTES: usize = 64 * 1024;

/// Intermediates by digest, with their DER: what a store keeps once each.
pub type IntermediateDers = Vec<(CertDigest, Vec<u8>)>;

/// When a stored record is fresh, stale and gone (the cache's deadlines,
/// shared so that one worker's fetch or refresh serves all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deadlines {
    pub fetched: Millis,
    pub fresh_until: Millis,
    pub stale_until: Millis,
}

/// A record in compact form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compact {
    pub fingerprint: [u8; 32],
    /// Where the record was fetched from (`Redis` or `Api`).
    pub source: CertSource,
    pub not_after_ms: u64,
    pub leaf: Vec<u8>,
    /// Digests of the intermediates, in the order they are sent.
    pub intermediates: Vec<CertDigest>,
    pub key: KeyDer,
    pub allow: Option<Vec<u8>>,
    pub client_ca: Option<Vec<u8>>,
    /// The record's second certificate (flag 4; entries written before
    /// there were second pairs have none and still load).
    pub second: Option<CompactPair>,
}

/// A second certificate in compact form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactPair {
    pub leaf: Vec<u8>,
    pub intermediates: Vec<CertDigest>,
    pub key: KeyDer,
}

/// Why stored bytes are not a compact record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CompactError {
    #[error("not a compact record (format tag)")]
    Magic,
    #[error("compact record truncated")]
    Truncated,
    #[error("compact record field over its bound")]
    TooLarge,
    #[error("compact record has an unknown {0}")]
    Unknown(&'static str),
    #[error("compact record has trailing bytes")]
    Trailing,
}

fn source_tag(s: CertSource) -> u8 {
    match s {
        CertSource::Api => 2,
        _ => 1,
    }
}

impl Compact {
    /// The compact form of `parsed`, validated from `record`, with the DER
    /// of each intermediate (to be stored once under its digest).
    pub fn of(
        parsed: &ParsedCert,
        record: &Record,
        source: CertSource,
    ) -> Result<(Compact, IntermediateDers), openssl::error::ErrorStack> {
        let mut ders = Vec::with_capacity(parsed.chain.len());
        let intermediates = digests(&parsed.chain, &mut ders)?;
        let second = match (&parsed.second, &record.second) {
            (Some(s), Some(pair)) => Some(CompactPair {
                leaf: s.leaf.to_der()?,
                intermediates: digests(&s.chain, &mut ders)?,
                key: pair_key_der(&pair.key, pair.form)
                    .ok_or_else(openssl::error::ErrorStack::get)?,
            }),
            _ => None,
        };
        Ok((
            Compact {
                fingerprint: parsed.fingerprint,
                source,
                not_after_ms: parsed.not_after_ms,
                leaf: parsed.leaf.to_der()?,
                intermediates,
                key: key_der(record).ok_or_else(openssl::error::ErrorStack::get)?,
                allow: record.allow.clone(),
                client_ca: record.client_ca.clone(),
                second,
            },
            ders,
        ))
    }

    /// Serialises with `deadlines`.
    pub fn encode(&self, deadlines: &Deadlines) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            128 + self.leaf.len() + self.key.bytes().len() + 32 * self.intermediates.len(),
        );
        out.extend_from_slice(MAGIC);
        out.push(source_tag(self.source));
        out.push(self.key.tag());
        out.push(
            u8::from(self.allow.is_some())
                | (u8::from(self.client_ca.is_some()) << 1)
                | (u8::from(self.second.is_some()) << 2),
        );
        out.push(self.intermediates.len() as u8);
        out.extend_from_slice(&self.fingerprint);
        for v in [
            self.not_after_ms,
            deadlines.fetched,
            deadlines.fresh_until,
            deadlines.stale_until,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        for d in &self.intermediates {
            out.extend_from_slice(d);
        }
        put_field(&mut out, &self.leaf);
        put_field(&mut out, self.key.bytes());
        if let Some(a) = &self.allow {
            put_field(&mut out, a);
        }
        if let Some(c) = &self.client_ca {
            put_field(&mut out, c);
        }
        if let Some(s) = &self.second {
            out.push(s.key.tag());
            out.push(s.intermediates.len() as u8);
            for d in &s.intermediates {
                out.extend_from_slice(d);
            }
            put_field(&mut out, &s.leaf);
            put_field(&mut out, s.key.bytes());
        }
        out
    }

    /// Reads what `encode` wrote; bounded, never panics.
    pub fn decode(bytes: &[u8]) -> Result<(Compact, Deadlines), CompactError> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(CompactError::Magic);
        }
        let source = match r.u8()? {
            1 => CertSource::Redis,
            2 => CertSource::Api,
            _ => return Err(CompactError::Unknown("source")),
        };
        let key_tag = r.u8()?;
        let flags = r.u8()?;
        if flags & !7 != 0 {
            return Err(CompactError::Unknown("flag"));
        }
        let n = usize::from(r.u8()?);
        if n >= MAX_CHAIN_LEN {
            return Err(CompactError::TooLarge);
        }
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(r.take(32)?);
        let not_after_ms = r.u64()?;
        let deadlines = Deadlines {
            fetched: r.u64()?,
            fresh_until: r.u64()?,
            stale_until: r.u64()?,
        };
        let mut intermediates = Vec::with_capacity(n);
        for _ in 0..n {
            let mut d = [0u8; 32];
            d.copy_from_slice(r.take(32)?);
            intermediates.push(d);
        }
        let leaf = r.field(MAX_LEAF_BYTES)?.to_vec();
        let key = key_of(key_tag, r.field(MAX_KEY_BYTES)?)?;
        let allow = match flags & 1 {
            0 => None,
            _ => Some(r.field(MAX_ALLOW_BYTES)?.to_vec()),
        };
        let client_ca = match flags & 2 {
            0 => None,
            _ => Some(r.field(MAX_CLIENT_CA_BYTES)?.to_vec()),
        };
        let second = match flags & 4 {
            0 => None,
            _ => {
                let key_tag = r.u8()?;
                let n = usize::from(r.u8()?);
                if n >= MAX_CHAIN_LEN {
                    return Err(CompactError::TooLarge);
                }
                let mut intermediates = Vec::with_capacity(n);
                for _ in 0..n {
                    let mut d = [0u8; 32];
                    d.copy_from_slice(r.take(32)?);
                    intermediates.push(d);
                }
                let leaf = r.field(MAX_LEAF_BYTES)?.to_vec();
                let key = key_of(key_tag, r.field(MAX_KEY_BYTES)?)?;
                Some(CompactPair {
                    leaf,
                    intermediates,
                    key,
                })
            }
        };
        if !r.0.is_empty() {
            return Err(CompactError::Trailing);
        }
        Ok((
            Compact {
                fingerprint,
                source,
                not_after_ms,
                leaf,
                intermediates,
                key,
                allow,
                client_ca,
                second,
            },
            deadlines,
        ))
    }

    /// Parses the stored record for serving: the leaf, the key, the
    /// intermediates from `interner` (or `missing` DER the caller fetched
    /// from the store, parsed and interned here), the policy. Refused when
    /// the certificate expired since it was stored.
    pub fn load(
        &self,
        interner: &Interner,
        missing: &[(CertDigest, Vec<u8>)],
        now_ms: Millis,
    ) -> Result<ParsedCert, Invalid> {
        if self.not_after_ms <= now_ms {
            return Err(Invalid::Expired);
        }
        let limits = KeyLimits::current();
        let mut held = Vec::new();
        let (leaf, key, chain) = load_pair(
            &self.leaf,
            &self.key,
            &self.intermediates,
            interner,
            missing,
            limits,
            &mut held,
        )?;
        let policy = policy_of(self.allow.as_deref(), self.client_ca.as_deref())?;
        let leaf_shape = Shape::of(&leaf, self.leaf.len());
        let mut second_shape = None;
        let second = match &self.second {
            Some(s) => {
                let (leaf, key, chain) = load_pair(
                    &s.leaf,
                    &s.key,
                    &s.intermediates,
                    interner,
                    missing,
                    limits,
                    &mut held,
                )
                .map_err(second_reason)?;
                second_shape = Some(Shape::of(&leaf, s.leaf.len()));
                Some(Second {
                    leaf,
                    key,
                    chain: chain_stack(chain).map_err(|_| Invalid::CrtNotPem)?,
                })
            }
            None => None,
        };
        // Judged again like the key: what another process stored passed
        // its validation, not necessarily this one's bounds.
        let weight = record_weight(leaf_shape, second_shape, &held, policy.client_ca.as_ref())?;
        Ok(ParsedCert {
            leaf,
            second,
            chain: chain_stack(chain).map_err(|_| Invalid::CrtNotPem)?,
            key,
            not_after_ms: self.not_after_ms,
            weight,
            held,
            policy,
            fingerprint: self.fingerprint,
            // Only records with key material are stored in the zone.
            key_reference: false,
        })
    }
}

/// The digests of `chain`, its DER added to `ders` (each once).
fn digests(
    chain: &openssl::stack::StackRef<X509>,
    ders: &mut IntermediateDers,
) -> Result<Vec<CertDigest>, openssl::error::ErrorStack> {
    let mut out = Vec::with_capacity(chain.len());
    for c in chain {
        let der = c.to_der()?;
        let d = digest(&der);
        if !ders.iter().any(|(e, _)| *e == d) {
            ders.push((d, der));
        }
        out.push(d);
    }
    Ok(out)
}

fn key_of(tag: u8, key: &[u8]) -> Result<KeyDer, CompactError> {
    let key = key.to_vec();
    match tag {
        1 => Ok(KeyDer::Sec1(key)),
        2 => Ok(KeyDer::Pkcs1(key)),
        3 => Ok(KeyDer::Pkcs8(key)),
        _ => Err(CompactError::Unknown("key form")),
    }
}

/// One stored leaf, key and chain, parsed (intermediates from `interner`
/// or `missing`).
fn load_pair(
    leaf: &[u8],
    key: &KeyDer,
    intermediates: &[CertDigest],
    interner: &Interner,
    missing: &[(CertDigest, Vec<u8>)],
    limits: KeyLimits,
    held: &mut Vec<Held>,
) -> Result<(X509, openssl::pkey::PKey<openssl::pkey::Private>, Vec<X509>), Invalid> {
    let mut leaf = X509::from_der(leaf).map_err(|_| Invalid::CrtNotPem)?;
    judge_leaf_key(&leaf, limits)?;
    precompute(&leaf);
    let key = key
        .load_for(Some(&mut leaf))
        .map_err(|_| Invalid::KeyNotPem)?;
    // Judged again like the leaf's key (microseconds): an RSA key whose
    // CRT parameters do not fit would make every signature twice.
    judge_private_key(&key)?;
    crate::leafkey::bind(&mut leaf, &key, false);
    let mut chain = Vec::with_capacity(intermediates.len());
    for d in intermediates {
        let cert = match interner.get(d) {
            Some(c) => c,
            None => {
                let (_, der) = missing
                    .iter()
                    .find(|(m, _)| m == d)
                    .ok_or(Invalid::CrtNotPem)?;
                interner.get_or_parse(der).map_err(|e| match e {
                    InternError::Parse => Invalid::CrtNotPem,
                    InternError::Heavy(h) => heavy(h),
                })?
            }
        };
        chain.push(cert.cert().clone());
        held.push(cert);
    }
    // Judged again like the key: what another process stored passed its
    // validation, not necessarily this one's.
    crate::chainsec::judge_chain(&leaf, chain.iter().map(|c| &**c))?;
    Ok((leaf, key, chain))
}

/// Appends a length-prefixed (u32, big-endian) field.
fn put_field(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CompactError> {
        if self.0.len() < n {
            return Err(CompactError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, CompactError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, CompactError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    fn field(&mut self, max: usize) -> Result<&'a [u8], CompactError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        let len = u32::from_be_bytes(b) as usize;
        if len > max {
            return Err(CompactError::TooLarge);
        }
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::testpki::{key, key_pem, leaf, pem};
    use crate::validate::validate_shared;
    use openssl::pkey::{PKey, Private};
    use openssl::rsa::Rsa;

    fn now_secs() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn a_stored_rsa_key_with_a_crt_fault_or_a_huge_exponent_is_refused_at_load() {
        // The leaf's key is RSA-2048 with e = 65537; the zone's key bytes
        // are not checked to match it at load, so each key is judged there
        // on its own (review4 F6).
        let rsa = Rsa::generate(2048).unwrap();
        let (record, parsed) = stored(PKey::from_rsa(rsa.clone()).unwrap(), None);
        let own = |n: &openssl::bn::BigNumRef| n.to_owned().unwrap();
        let mut dmp1 = own(rsa.dmp1().unwrap());
        dmp1.add_word(2).unwrap();
        let faulty = Rsa::from_private_components(
            own(rsa.n()),
            own(rsa.e()),
            own(rsa.d()),
            own(rsa.p().unwrap()),
            own(rsa.q().unwrap()),
            dmp1,
            own(rsa.dmq1().unwrap()),
            own(rsa.iqmp().unwrap()),
        )
        .unwrap();
        let big_e = PKey::private_key_from_pem(
            include_str!("../../tests/fixtures/rsa4096-bige-badcrt.key").as_bytes(),
        )
        .unwrap();
        let interner = Interner::default();
        for (key, want, second) in [
            (
                faulty.private_key_to_der().unwrap(),
                Invalid::KeyInconsistent,
                Invalid::RsaKeyInconsistent,
            ),
            (
                big_e.rsa().unwrap().private_key_to_der().unwrap(),
                Invalid::KeyExponent,
                Invalid::RsaKeyExponent,
            ),
        ] {
            let (mut c, ders) = Compact::of(&parsed, &record, CertSource::Redis).unwrap();
            c.key = KeyDer::Pkcs1(key);
            assert_eq!(c.load(&interner, &ders, 0).unwrap_err(), want);
            let (mut with_second, ders) = Compact::of(&parsed, &record, CertSource::Redis).unwrap();
            with_second.second = Some(CompactPair {
                leaf: c.leaf.clone(),
                intermediates: Vec::new(),
                key: c.key.clone(),
            });
            assert_eq!(with_second.load(&interner, &ders, 0).unwrap_err(), second);
        }
        // The entry as stored loads.
        let (c, ders) = Compact::of(&parsed, &record, CertSource::Redis).unwrap();
        c.load(&interner, &ders, 0).unwrap();
    }

    fn stored(key: PKey<Private>, allow: Option<&str>) -> (Record, ParsedCert) {
        let ca = leaf(&["ca.example"], &crate::validate::testpki::key(), -1, 300);
        let mut crt = pem(&leaf(&["shop.example.com"], &key, -1, 30));
        crt.extend(pem(&ca));
        let record = Record {
            form: crate::record::Form::Pem,
            crt,
            key: key_pem(&key),
            allow: allow.map(|a| a.as_bytes().to_vec()),
            client_ca: None,
            second: None,
        };
        let parsed = validate_shared(
            &record,
            "shop.example.com",
            None,
            now_secs(),
            &Interner::default(),
        )
        .unwrap();
        (record, parsed)
    }

    #[test]
    fn round_trip_keeps_everything_and_loads_the_same_certificate() {
        let keys = [
            key(),
            PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap(),
            PKey::generate_ed25519().unwrap(),
        ];
        for k in keys {
            let (record, parsed) = stored(k, Some("10.0.0.0/8"));
            let (c, ders) = Compact::of(&parsed, &record, CertSource::Api).unwrap();
            let d = Deadlines {
                fetched: 1,
                fresh_until: 2,
                stale_until: 3,
            };
            let bytes = c.encode(&d);
            let (back, back_d) = Compact::decode(&bytes).unwrap();
            assert_eq!((&back, back_d), (&c, d));
            let interner = Interner::default();
            let loaded = back.load(&interner, &ders, 0).unwrap();
            assert_eq!(loaded.fingerprint, parsed.fingerprint);
            assert_eq!(loaded.leaf.to_der().unwrap(), parsed.leaf.to_der().unwrap());
            assert!(loaded.key.public_eq(&parsed.key));
            assert_eq!(loaded.chain.len(), 1);
            assert!(loaded.policy.allow.is_some());
            assert_eq!(interner.len(), 1, "the intermediate is interned");
            // The next load finds the intermediate without its DER.
            assert!(back.load(&interner, &[], 0).is_ok());
        }
    }

    #[test]
    fn a_stored_key_over_this_processs_rsa_limit_is_refused_at_load() {
        // What a process with a higher dyncert_rsa_max_bits (or anything
        // else writing the zone) may have stored: this process's limit
        // (the default here) still applies.
        let (record, parsed) = stored(PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap(), None);
        let (mut c, ders) = Compact::of(&parsed, &record, CertSource::Redis).unwrap();
        let big =
            PKey::private_key_from_pem(include_str!("../../tests/fixtures/rsa8192.key").as_bytes())
                .unwrap();
        c.leaf = leaf(&["shop.example.com"], &big, -1, 30).to_der().unwrap();
        c.key = KeyDer::Pkcs1(big.rsa().unwrap().private_key_to_der().unwrap());
        let interner = Interner::default();
        assert_eq!(
            c.load(&interner, &ders, 0).unwrap_err(),
            Invalid::KeyTooSlow
        );
        // The same entry as a second pair: the second pair's reason.
        let (mut with_second, ders) = Compact::of(&parsed, &record, CertSource::Redis).unwrap();
        with_second.second = Some(CompactPair {
            leaf: c.leaf.clone(),
            intermediates: Vec::new(),
            key: c.key.clone(),
        });
        assert_eq!(
            with_second.load(&interner, &ders, 0).unwrap_err(),
            Invalid::RsaKeyTooSlow
        );
    }

    #[test]
    fn a_stored_chain_openssl_would_refuse_is_refused_at_load() {
        // An intermediate with an RSA-1024 key, as something else writing
        // the zone may have stored it: OpenSSL would refuse to send it.
        let (record, parsed) = stored(key(), None);
        let (mut c, _) = Compact::of(&parsed, &record, CertSource::Redis).unwrap();
        let weak = PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap();
        let der = leaf(&["weak.ca"], &weak, -1, 300).to_der().unwrap();
        c.intermediates = vec![digest(&der)];
        let missing = vec![(digest(&der), der)];
        assert_eq!(
            c.load(&Interner::default(), &missing, 0).unwrap_err(),
            Invalid::ChainKeyTooWeak
        );
    }

    #[test]
    fn ec_keys_are_stored_as_sec1() {
        let (record, parsed) = stored(key(), None);
        let (c, _) = Compact::of(&parsed, &record, CertSource::Redis).unwrap();
        assert!(matches!(c.key, KeyDer::Sec1(_)));
        let bytes = c.encode(&Deadlines::default());
        // Leaf, key and one digest, plus a small header.
        assert!(
            bytes.len() < c.leaf.len() + c.key.bytes().len() + 32 + 96,
            "{}",
            bytes.len()
        );
    }

    #[test]
    fn expired_or_unresolvable_records_are_refused() {
        let (record, parsed) = stored(key(), None);
        let (c, ders) = Compact::of(&parsed, &record, CertSource::Redis).unwrap();
        assert_eq!(
            c.load(&Interner::default(), &ders, c.not_after_ms)
                .unwrap_err(),
            Invalid::Expired
        );
        assert_eq!(
            c.load(&Interner::default(), &[], 0).unwrap_err(),
            Invalid::CrtNotPem,
            "an intermediate neither interned nor given"
        );
    }

    #[test]
    fn damaged_bytes_are_errors_never_panics() {
        let (record, parsed) = stored(key(), Some("10.0.0.0/8"));
        let (c, _) = Compact::of(&parsed, &record, CertSource::Redis).unwrap();
        let bytes = c.encode(&Deadlines::default());
        for cut in 0..bytes.len() {
            assert!(Compact::decode(&bytes[..cut]).is_err(), "prefix {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(Compact::decode(&trailing), Err(CompactError::Trailing));
        let mut magic = bytes.clone();
        magic[0] ^= 1;
        assert_eq!(Compact::decode(&magic), Err(CompactError::Magic));
        let mut flags = bytes.clone();
        flags[6] = 0x80;
        assert_eq!(Compact::decode(&flags), Err(CompactError::Unknown("flag")));
    }

    #[test]
    fn a_second_certificate_round_trips_and_old_entries_still_load() {
        let (record, _) = stored(key(), None);
        let rsa = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let ca = leaf(&["ca.example"], &crate::validate::testpki::key(), -1, 300);
        let mut crt = pem(&leaf(&["shop.example.com"], &rsa, -1, 30));
        crt.extend(pem(&ca));
        let dual = Record {
            second: Some(crate::record::Pair {
                crt,
                key: key_pem(&rsa),
                form: crate::record::Form::Pem,
            }),
            ..record.clone()
        };
        let parsed = validate_shared(
            &dual,
            "shop.example.com",
            None,
            now_secs(),
            &Interner::default(),
        )
        .unwrap();
        let (c, ders) = Compact::of(&parsed, &dual, CertSource::Redis).unwrap();
        assert_eq!(ders.len(), 2, "both chains' intermediates");
        let s = c.second.as_ref().unwrap();
        assert!(matches!(s.key, KeyDer::Pkcs1(_)));
        let bytes = c.encode(&Deadlines::default());
        let (back, _) = Compact::decode(&bytes).unwrap();
        assert_eq!(back, c);
        let loaded = back.load(&Interner::default(), &ders, 0).unwrap();
        assert_eq!(loaded.fingerprint, parsed.fingerprint);
        let second = loaded.second.unwrap();
        assert!(second.key.public_eq(&rsa));
        assert_eq!(second.chain.len(), 1);
        assert_eq!(
            second.leaf.to_der().unwrap(),
            parsed.second.as_ref().unwrap().leaf.to_der().unwrap()
        );
        for cut in 0..bytes.len() {
            assert!(Compact::decode(&bytes[..cut]).is_err(), "prefix {cut}");
        }
        // Any byte changed: an error, or a record that encodes back to
        // the same bytes (the fuzz target's invariant), never a panic.
        for i in 0..bytes.len() {
            for flip in [1u8, 0x80, 0xff] {
                let mut m = bytes.clone();
                m[i] ^= flip;
                if let Ok((r, d)) = Compact::decode(&m) {
                    assert_eq!(r.encode(&d), m, "byte {i}");
                }
            }
        }
        // An entry without a second pair (as written before they existed:
        // flag 4 clear, nothing after client_ca) loads as before.
        let (single, _) = stored(key(), None);
        let (parsed_single, record_single) = (
            validate_shared(
                &single,
                "shop.example.com",
                None,
                now_secs(),
                &Interner::default(),
            )
            .unwrap(),
            single,
        );
        let (c1, ders1) = Compact::of(&parsed_single, &record_single, CertSource::Redis).unwrap();
        let bytes1 = c1.encode(&Deadlines::default());
        assert_eq!(bytes1[6] & 4, 0);
        let (back1, _) = Compact::decode(&bytes1).unwrap();
        assert!(back1.second.is_none());
        assert!(back1
            .load(&Interner::default(), &ders1, 0)
            .unwrap()
            .second
            .is_none());
    }
}
