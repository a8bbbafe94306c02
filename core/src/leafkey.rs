//! A cached leaf whose public key object is its own private key.
//!
//! Every `SSL_use_cert_and_key` (and `SSL_use_PrivateKey`) checks that the
//! key belongs to the certificate with `EVP_PKEY_eq`, which compares the
//! curve parameters and the public points of two key objects, on every
//! handshake: about 3 µs, reading two per-name objects that are cache-cold
//! at 100,000 names. `EVP_PKEY_eq` returns at once when both sides are the
//! same object. So once a record's key is checked against its leaf (as the
//! parse does anyway), the leaf's decoded public key is replaced by the
//! private key object itself, and the per-handshake check costs nothing.
//! That also frees the decoded public key, about 2 KiB per cached name on
//! OpenSSL 3.0.
//!
//! It is done only where it is free. The certificate a client receives is
//! the leaf's saved DER encoding: OpenSSL 3.0 keeps it when the key object
//! is replaced, while later versions (3.5 here) mark the certificate as
//! modified and re-encode it for every handshake, which costs more than the
//! check saves. [`keeps_encoding`] finds out which, once per process, by
//! behaviour rather than version number; where the encoding is not kept,
//! nothing changes. Keys held by an HSM (key references) are never bound.

use std::sync::OnceLock;

use openssl::pkey::{PKey, Private};
use openssl::x509::X509;

use crate::ossl_ffi::set_leaf_key;

/// Why a leaf was, or was not, bound to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// The leaf's public key object is now the private key.
    Bound,
    /// This OpenSSL re-encodes a certificate whose key object was
    /// replaced: binding would cost more per handshake than it saves.
    EncodingNotKept,
    /// The key lives in an HSM (a key reference): left to OpenSSL's check.
    KeyReference,
    /// The key does not match the leaf: left to OpenSSL's check, which
    /// refuses it.
    Mismatch,
    /// Binding would have changed the certificate's bytes (not seen with
    /// any OpenSSL this module supports; checked anyway), or OpenSSL
    /// failed: the leaf is parsed again from its DER, unbound.
    Changed,
}

/// Whether to bind: the pure part of the decision.
pub fn decide(keeps_encoding: bool, key_reference: bool, keys_match: bool) -> Binding {
    if key_reference {
        Binding::KeyReference
    } else if !keeps_encoding {
        Binding::EncodingNotKept
    } else if !keys_match {
        Binding::Mismatch
    } else {
        Binding::Bound
    }
}

/// Binds `leaf` to `key` when [`decide`] says so, checking first that the
/// key belongs to the leaf, and after that the certificate's bytes did not
/// change. On any failure after the key was set, `leaf` is replaced by a
/// fresh parse of its original DER.
pub fn bind(leaf: &mut X509, key: &PKey<Private>, key_reference: bool) -> Binding {
    bind_with(leaf, key, key_reference, None)
}

/// [`bind`] for a pair the caller has just checked (`public_eq`), which is
/// not compared again.
pub fn bind_checked(leaf: &mut X509, key: &PKey<Private>, key_reference: bool) -> Binding {
    bind_with(leaf, key, key_reference, Some(true))
}

fn bind_with(
    leaf: &mut X509,
    key: &PKey<Private>,
    key_reference: bool,
    checked: Option<bool>,
) -> Binding {
    if key_reference {
        return Binding::KeyReference;
    }
    if !keeps_encoding() {
        return Binding::EncodingNotKept;
    }
    let keys_match = checked.unwrap_or_else(|| leaf.public_key().is_ok_and(|p| p.public_eq(key)));
    let verdict = decide(true, false, keys_match);
    if verdict != Binding::Bound {
        return verdict;
    }
    let Ok(before) = leaf.to_der() else {
        return Binding::Changed;
    };
    if set_leaf_key(leaf, key).is_ok() && leaf.to_der().is_ok_and(|after| after == before) {
        return Binding::Bound;
    }
    if let Ok(fresh) = X509::from_der(&before) {
        crate::validate::precompute(&fresh);
        *leaf = fresh;
    }
    Binding::Changed
}

/// Whether this OpenSSL keeps a certificate's saved encoding when its
/// public key object is replaced, found once per process: a certificate is
/// given another key, and its DER compared with the original.
pub fn keeps_encoding() -> bool {
    static KEEPS: OnceLock<bool> = OnceLock::new();
    *KEEPS.get_or_init(|| probe().unwrap_or(false))
}

fn probe() -> Result<bool, openssl::error::ErrorStack> {
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let k1 = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let k2 = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = openssl::x509::X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, "dyncert encoding probe")?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_not_before(&*openssl::asn1::Asn1Time::from_unix(0)?)?;
    b.set_not_after(&*openssl::asn1::Asn1Time::from_unix(86_400)?)?;
    b.set_pubkey(&k1)?;
    b.sign(&k1, MessageDigest::sha256())?;
    let original = b.build().to_der()?;
    let mut cert = X509::from_der(&original)?;
    set_leaf_key(&mut cert, &k2)?;
    Ok(cert.to_der()? == original)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;

    #[test]
    fn decide_binds_only_software_keys_that_match_where_the_encoding_is_kept() {
        assert_eq!(decide(true, false, true), Binding::Bound);
        assert_eq!(decide(false, false, true), Binding::EncodingNotKept);
        assert_eq!(decide(true, true, true), Binding::KeyReference);
        assert_eq!(decide(false, true, false), Binding::KeyReference);
        assert_eq!(decide(true, false, false), Binding::Mismatch);
    }

    fn key() -> PKey<Private> {
        let g = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&g).unwrap()).unwrap()
    }

    fn cert(key: &PKey<Private>) -> X509 {
        let mut b = X509::builder().unwrap();
        let mut n = openssl::x509::X509NameBuilder::new().unwrap();
        n.append_entry_by_nid(Nid::COMMONNAME, "leafkey.test")
            .unwrap();
        let n = n.build();
        b.set_version(2).unwrap();
        b.set_subject_name(&n).unwrap();
        b.set_issuer_name(&n).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(30).unwrap())
            .unwrap();
        b.set_pubkey(key).unwrap();
        b.sign(key, openssl::hash::MessageDigest::sha256()).unwrap();
        b.build()
    }

    /// The probe's answer is the library's behaviour: where it says the
    /// encoding is kept, a certificate given a foreign key still encodes
    /// to its original bytes; where not, it does not.
    #[test]
    fn the_probe_matches_what_the_library_does() {
        let (k1, k2) = (key(), key());
        let der = cert(&k1).to_der().unwrap();
        let mut c = X509::from_der(&der).unwrap();
        set_leaf_key(&mut c, &k2).unwrap();
        assert_eq!(keeps_encoding(), c.to_der().unwrap() == der);
        // What was seen on the two versions the project builds with.
        let v = openssl::version::number();
        if v < 0x3010_0000 {
            assert!(keeps_encoding(), "OpenSSL 3.0 keeps the saved encoding");
        } else if v >= 0x3050_0000 {
            assert!(!keeps_encoding(), "OpenSSL 3.5 re-encodes");
        }
    }

    #[test]
    fn a_bound_leaf_keeps_its_bytes_and_its_key_is_the_private_key_object() {
        let k = key();
        let mut leaf = X509::from_der(&cert(&k).to_der().unwrap()).unwrap();
        let der = leaf.to_der().unwrap();
        let verdict = bind(&mut leaf, &k, false);
        assert_eq!(leaf.to_der().unwrap(), der);
        assert!(leaf.public_key().unwrap().public_eq(&k));
        if keeps_encoding() {
            assert_eq!(verdict, Binding::Bound);
            // The same object: what makes OpenSSL's per-handshake check free.
            use foreign_types::ForeignType;
            let p = leaf.public_key().unwrap();
            assert_eq!(p.as_ptr().cast::<u8>(), k.as_ptr().cast::<u8>());
        } else {
            assert_eq!(verdict, Binding::EncodingNotKept);
        }
    }

    #[test]
    fn a_foreign_key_or_a_key_reference_is_never_bound() {
        let (k1, k2) = (key(), key());
        let mut leaf = X509::from_der(&cert(&k1).to_der().unwrap()).unwrap();
        let der = leaf.to_der().unwrap();
        let verdict = bind(&mut leaf, &k2, false);
        let expected = if keeps_encoding() {
            Binding::Mismatch
        } else {
            Binding::EncodingNotKept
        };
        assert_eq!(verdict, expected);
        assert!(leaf.public_key().unwrap().public_eq(&k1));
        assert_eq!(bind(&mut leaf, &k1, true), Binding::KeyReference);
        assert!(!leaf.public_key().unwrap().public_eq(&k2));
        assert_eq!(leaf.to_der().unwrap(), der);
    }
}
