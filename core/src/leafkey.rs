//! A cached leaf whose public key object is its own private key.
//!
//! Every `SSL_use_cert_and_key` (and `SSL_use_PrivateKey`) checks that the
//! key belongs to the certificate with `EVP_PKEY_eq`, which compares the
//! curve parameters and the public points of two key objects, on every
//! handshake: 2 to 5 µs, reading two per-name objects that are cache-cold
//! at 100,000 names. `EVP_PKEY_eq` returns at once when both sides are the
//! same object. So the module makes them the same object, in one of two
//! ways:
//!
//! - **EC keys** (the common case), on every OpenSSL 3.x: the key pair is
//!   built straight into the leaf's own public key object
//!   ([`ec_key_in_leaf`]), when the leaf carries exactly the key's point
//!   on the key's curve. The key is built once either way; the leaf's
//!   decoded public key is replaced instead of kept beside it (about
//!   2 KiB less per cached name), and the certificate's saved encoding,
//!   which clients receive, is untouched.
//! - **Any other key** (RSA, an EC key stored without its point), where it
//!   is free: the leaf's key object is replaced by the private key
//!   (`X509_set_pubkey`, [`bind`]). OpenSSL 3.0 keeps the certificate's
//!   saved encoding then; later versions (3.5 here) mark the certificate
//!   as modified and re-encode it for every handshake, which costs more
//!   than the check saves. [`keeps_encoding`] finds out which, once per
//!   process, by behaviour rather than version number; where the encoding
//!   is not kept, nothing changes.
//!
//! Keys held by an HSM (key references) are never bound. A key that does
//! not match its leaf is never bound: it is refused as before.

use std::sync::OnceLock;

use openssl::pkey::{PKey, Private};
use openssl::x509::X509;

use crate::ossl_ffi::{ec_key_into_leaf, set_leaf_key, IntoLeaf};

/// Builds an EC key pair given as parts into `leaf`'s own public key
/// object when the leaf carries exactly that point on that curve: the key
/// is built once either way, the leaf's decoded public key is replaced
/// rather than kept beside it, and every install's key check finds the
/// same object. None: not the leaf's point (the caller builds the key on
/// its own and checks the pair as usual). Works on every OpenSSL 3.x: the
/// certificate's encoding is not touched.
pub fn ec_key_in_leaf(
    leaf: &mut X509,
    curve: &std::ffi::CStr,
    private: &[u8],
    public: &[u8],
) -> Option<PKey<Private>> {
    match ec_key_into_leaf(leaf, curve, private, public) {
        IntoLeaf::Built(key) => Some(key),
        IntoLeaf::NotSame => None,
        IntoLeaf::Failed => {
            // The leaf's key object may be empty now: parse it again (its
            // saved encoding is intact), and let the caller build the key.
            if let Ok(der) = leaf.to_der() {
                reparse(leaf, &der);
            }
            None
        }
    }
}

/// Replaces `leaf` by a fresh parse of `der`, its original encoding.
fn reparse(leaf: &mut X509, der: &[u8]) {
    if let Ok(fresh) = X509::from_der(der) {
        crate::validate::precompute(&fresh);
        *leaf = fresh;
    }
}

/// Whether `leaf`'s public key object is `key` itself.
pub fn is_bound(leaf: &X509, key: &PKey<Private>) -> bool {
    use foreign_types::ForeignType;
    leaf.public_key()
        .is_ok_and(|p| p.as_ptr().cast::<u8>() == key.as_ptr().cast::<u8>())
}

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

/// Whether to bind: the pure part of the decision. `keys_match` (an
/// `EVP_PKEY_eq`) is asked only when the rest allows binding.
pub fn decide(
    keeps_encoding: bool,
    key_reference: bool,
    keys_match: impl FnOnce() -> bool,
) -> Binding {
    if key_reference {
        Binding::KeyReference
    } else if !keeps_encoding {
        Binding::EncodingNotKept
    } else if !keys_match() {
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
    bind_with(leaf, key, key_reference, false)
}

/// [`bind`] for a pair the caller has just checked (`public_eq`), which is
/// not compared again.
pub fn bind_checked(leaf: &mut X509, key: &PKey<Private>, key_reference: bool) -> Binding {
    bind_with(leaf, key, key_reference, true)
}

fn bind_with(
    leaf: &mut X509,
    key: &PKey<Private>,
    key_reference: bool,
    pair_checked: bool,
) -> Binding {
    if is_bound(leaf, key) {
        return Binding::Bound;
    }
    let verdict = decide(!key_reference && keeps_encoding(), key_reference, || {
        pair_checked || leaf.public_key().is_ok_and(|p| p.public_eq(key))
    });
    if verdict != Binding::Bound {
        return verdict;
    }
    let Ok(before) = leaf.to_der() else {
        return Binding::Changed;
    };
    if set_leaf_key(leaf, key).is_ok() && leaf.to_der().is_ok_and(|after| after == before) {
        return Binding::Bound;
    }
    reparse(leaf, &before);
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
    let (k1, k2) = (p256()?, p256()?);
    let original = self_signed(&k1, "dyncert encoding probe")?.to_der()?;
    let mut cert = X509::from_der(&original)?;
    set_leaf_key(&mut cert, &k2)?;
    Ok(cert.to_der()? == original)
}

fn p256() -> Result<PKey<Private>, openssl::error::ErrorStack> {
    use openssl::ec::{EcGroup, EcKey};
    let group = EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)?;
    PKey::from_ec_key(EcKey::generate(&group)?)
}

/// A self-signed certificate for `key`, named `cn`, valid for a day from
/// now.
fn self_signed(key: &PKey<Private>, cn: &str) -> Result<X509, openssl::error::ErrorStack> {
    let mut name = openssl::x509::X509NameBuilder::new()?;
    name.append_entry_by_nid(openssl::nid::Nid::COMMONNAME, cn)?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_not_before(&*openssl::asn1::Asn1Time::days_from_now(0)?)?;
    b.set_not_after(&*openssl::asn1::Asn1Time::days_from_now(1)?)?;
    b.set_pubkey(key)?;
    b.sign(key, openssl::hash::MessageDigest::sha256())?;
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;

    #[test]
    fn decide_binds_only_software_keys_that_match_where_the_encoding_is_kept() {
        assert_eq!(decide(true, false, || true), Binding::Bound);
        assert_eq!(decide(false, false, || true), Binding::EncodingNotKept);
        assert_eq!(decide(true, true, || true), Binding::KeyReference);
        assert_eq!(decide(false, true, || false), Binding::KeyReference);
        assert_eq!(decide(true, false, || false), Binding::Mismatch);
        // The pair is compared only when the rest allows binding.
        let never = || -> bool { panic!("keys compared needlessly") };
        assert_eq!(decide(false, false, never), Binding::EncodingNotKept);
        assert_eq!(decide(true, true, never), Binding::KeyReference);
    }

    fn key() -> PKey<Private> {
        p256().unwrap()
    }

    fn cert(key: &PKey<Private>) -> X509 {
        self_signed(key, "leafkey.test").unwrap()
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

    /// The module's path for EC keys: the key built into the leaf's own
    /// object, on every OpenSSL 3.x.
    #[test]
    fn an_ec_key_is_built_into_its_leaf_which_keeps_its_bytes_and_signs() {
        use crate::der::KeyDer;
        let k = key();
        let der = cert(&k).to_der().unwrap();
        let mut leaf = X509::from_der(&der).unwrap();
        let sec1 = KeyDer::parse(&k.private_key_to_der().unwrap()).unwrap();
        let loaded = sec1.load_for(Some(&mut leaf)).unwrap();
        assert!(is_bound(&leaf, &loaded), "the leaf's key object is the key");
        assert_eq!(bind(&mut leaf, &loaded, false), Binding::Bound);
        assert_eq!(leaf.to_der().unwrap(), der, "the certificate's bytes");
        // It is the private key: what it signs verifies with the public
        // key a client reads from the certificate's bytes.
        let mut signer =
            openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &loaded).unwrap();
        signer.update(b"handshake transcript").unwrap();
        let sig = signer.sign_to_vec().unwrap();
        let client_view = X509::from_der(&der).unwrap().public_key().unwrap();
        let mut verifier =
            openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &client_view)
                .unwrap();
        verifier.update(b"handshake transcript").unwrap();
        assert!(verifier.verify(&sig).unwrap());
        // And OpenSSL installs the pair.
        let ctx = openssl::ssl::SslContext::builder(openssl::ssl::SslMethod::tls_server())
            .unwrap()
            .build();
        let mut ssl = openssl::ssl::Ssl::new(&ctx).unwrap();
        ssl.set_certificate(&leaf).unwrap();
        ssl.set_private_key(&loaded).unwrap();
    }

    #[test]
    fn another_point_or_curve_is_not_built_into_the_leaf() {
        use crate::der::KeyDer;
        let (k1, k2) = (key(), key());
        let mut leaf = X509::from_der(&cert(&k1).to_der().unwrap()).unwrap();
        let other = KeyDer::parse(&k2.private_key_to_der().unwrap()).unwrap();
        let loaded = other.load_for(Some(&mut leaf)).unwrap();
        assert!(!is_bound(&leaf, &loaded));
        assert!(leaf.public_key().unwrap().public_eq(&k1), "leaf untouched");
        assert!(loaded.public_eq(&k2));
        let g384 = EcGroup::from_curve_name(Nid::SECP384R1).unwrap();
        let k384 = PKey::from_ec_key(EcKey::generate(&g384).unwrap()).unwrap();
        let other = KeyDer::parse(&k384.private_key_to_der().unwrap()).unwrap();
        let loaded = other.load_for(Some(&mut leaf)).unwrap();
        assert!(!is_bound(&leaf, &loaded));
        assert!(leaf.public_key().unwrap().public_eq(&k1), "leaf untouched");
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
