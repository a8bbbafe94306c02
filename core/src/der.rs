//! Just enough DER to load private keys the fast way on OpenSSL 3.0.
//!
//! OpenSSL 3.0 decodes a PKCS#8 key through its provider decoder chain,
//! which costs about 0.5 ms for a P-256 key; the legacy SEC1 and PKCS#1
//! decoders (`d2i_ECPrivateKey`, `d2i_RSAPrivateKey`) take about 15 µs for
//! the same key, and the key signs at the same speed afterwards. So a
//! PKCS#8 `PrivateKeyInfo` (RFC 5208) is unwrapped here into the structure
//! it carries: an RSA key's `RSAPrivateKey` as is, an EC key's
//! `ECPrivateKey` (RFC 5915) with the curve from the algorithm parameters
//! written into it (PKCS#8 leaves it out of the inner structure, and the
//! legacy decoder needs it). Anything else (Ed25519, explicit curve
//! parameters, attributes we do not know) is left to OpenSSL's PKCS#8 path.
//!
//! The input is untrusted (a Redis record): every read is bounded, nothing
//! panics, and there is a fuzz target.

/// A private key's DER, by structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyDer {
    /// An `ECPrivateKey` naming its curve (`d2i_ECPrivateKey`).
    Sec1(Vec<u8>),
    /// An `RSAPrivateKey` (`d2i_RSAPrivateKey`).
    Pkcs1(Vec<u8>),
    /// Anything else (Ed25519, ...): PKCS#8.
    Pkcs8(Vec<u8>),
}

impl KeyDer {
    pub fn tag(&self) -> u8 {
        match self {
            KeyDer::Sec1(_) => 1,
            KeyDer::Pkcs1(_) => 2,
            KeyDer::Pkcs8(_) => 3,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            KeyDer::Sec1(b) | KeyDer::Pkcs1(b) | KeyDer::Pkcs8(b) => b,
        }
    }

    /// Reads a `key_der` field: SEC1, PKCS#1 or (unencrypted) PKCS#8,
    /// told apart by their structure; PKCS#8 RSA and EC keys are unwrapped
    /// to the faster forms.
    pub fn parse(der: &[u8]) -> Option<KeyDer> {
        if let Some(u) = unwrap_pkcs8(der) {
            return Some(match u {
                Unwrapped::Sec1(b) => KeyDer::Sec1(b),
                Unwrapped::Pkcs1(b) => KeyDer::Pkcs1(b),
            });
        }
        let seq = tlv(der)?;
        if seq.tag != SEQUENCE || !seq.rest.is_empty() {
            return None;
        }
        let version = tlv(seq.value)?;
        let second = tlv(version.rest)?;
        match (version.tag, version.value, second.tag) {
            (INTEGER, [1], OCTET_STRING) => Some(KeyDer::Sec1(der.to_vec())),
            (INTEGER, [0], INTEGER) => Some(KeyDer::Pkcs1(der.to_vec())),
            (INTEGER, [0], SEQUENCE) => Some(KeyDer::Pkcs8(der.to_vec())),
            _ => None,
        }
    }

    /// Loads the key.
    pub fn load(&self) -> Result<PKey<Private>, ErrorStack> {
        self.load_for(None)
    }

    /// Loads the key, into `leaf`'s own public key object where that can
    /// be done (see [`crate::leafkey::ec_key_in_leaf`]).
    pub fn load_for(&self, leaf: Option<&mut X509>) -> Result<PKey<Private>, ErrorStack> {
        match self {
            KeyDer::Sec1(der) => load_sec1_for(der, leaf),
            KeyDer::Pkcs1(der) => Rsa::private_key_from_der(der).and_then(PKey::from_rsa),
            KeyDer::Pkcs8(der) => PKey::private_key_from_pkcs8(der),
        }
    }
}

/// Splits a `crt_der` field (certificates one after the other) into its
/// certificates: each a complete DER SEQUENCE, at most `max`, at least one.
pub fn split_certificates(der: &[u8], max: usize) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = der;
    while !rest.is_empty() {
        let t = tlv(rest)?;
        if t.tag != SEQUENCE || out.len() == max {
            return None;
        }
        out.push(t.raw);
        rest = t.rest;
    }
    (!out.is_empty()).then_some(out)
}

/// What a PKCS#8 key unwraps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unwrapped {
    /// An `ECPrivateKey` that names its curve: for `d2i_ECPrivateKey`.
    Sec1(Vec<u8>),
    /// An `RSAPrivateKey`: for `d2i_RSAPrivateKey`.
    Pkcs1(Vec<u8>),
}

use openssl::ec::EcKey;
use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use std::ffi::CStr;

use openssl::x509::X509;

use crate::leafkey::ec_key_in_leaf;
use crate::ossl_ffi::ec_key_from_parts;

/// The parts of an `ECPrivateKey` (RFC 5915) on a curve of [`CURVES`]
/// that carries its public key: what [`ec_key_from_parts`] builds from.
struct Sec1Parts<'a> {
    curve: &'static CStr,
    private: &'a [u8],
    public: &'a [u8],
}

fn sec1_parts(der: &[u8]) -> Option<Sec1Parts<'_>> {
    let version = versioned(der, 1)?;
    let private = tlv(version.rest)?;
    let params = tlv(private.rest)?;
    let public = tlv(params.rest)?;
    if private.tag != OCTET_STRING
        || private.value.is_empty()
        || params.tag != CONTEXT_0
        || public.tag != CONTEXT_1
        || !public.rest.is_empty()
    {
        return None;
    }
    let curve = CURVES.iter().find(|(oid, _)| *oid == params.value)?.1;
    let bits = tlv(public.value)?;
    match bits.value.split_first() {
        Some((0, point)) if bits.tag == BIT_STRING && bits.rest.is_empty() => Some(Sec1Parts {
            curve,
            private: private.value,
            public: point,
        }),
        _ => None,
    }
}

/// Loads an `ECPrivateKey`: as one provider-native key when it names a
/// known curve and carries its public key (what `EcKey::private_key_to_der` and the
/// PKCS#8 unwrapping produce), through `d2i_ECPrivateKey` otherwise.
pub fn load_sec1(der: &[u8]) -> Result<PKey<Private>, ErrorStack> {
    load_sec1_for(der, None)
}

/// [`load_sec1`], into `leaf`'s own public key object where that can be
/// done (see [`crate::leafkey::ec_key_in_leaf`]).
pub fn load_sec1_for(der: &[u8], leaf: Option<&mut X509>) -> Result<PKey<Private>, ErrorStack> {
    match sec1_parts(der) {
        Some(p) => {
            if let Some(key) = leaf.and_then(|l| ec_key_in_leaf(l, p.curve, p.private, p.public)) {
                return Ok(key);
            }
            ec_key_from_parts(p.curve, p.private, p.public)
        }
        None => EcKey::private_key_from_der(der).and_then(PKey::from_ec_key),
    }
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const NULL: u8 = 0x05;
const CONTEXT_0: u8 = 0xa0;
const CONTEXT_1: u8 = 0xa1;
const BIT_STRING: u8 = 0x03;

/// Named curves by OID element (tag and length included), with OpenSSL's
/// names for them.
const CURVES: &[(&[u8], &CStr)] = &[
    // 1.2.840.10045.3.1.7
    (
        &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        c"prime256v1",
    ),
    // 1.3.132.0.34
    (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22], c"secp384r1"),
    // 1.3.132.0.35
    (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23], c"secp521r1"),
];

/// 1.2.840.10045.2.1 (id-ecPublicKey).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// 1.2.840.113549.1.1.1 (rsaEncryption).
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// One TLV read from a buffer: its tag, its contents, and what follows.
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    pub(crate) value: &'a [u8],
    /// The whole element, tag and length included.
    pub(crate) raw: &'a [u8],
    pub(crate) rest: &'a [u8],
}

/// Reads one DER element (definite lengths only, at most 4 length bytes).
pub(crate) fn tlv(buf: &[u8]) -> Option<Tlv<'_>> {
    let (&tag, after_tag) = buf.split_first()?;
    let (&first, mut after_len) = after_tag.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || after_len.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &after_len[..n] {
            len = (len << 8) | usize::from(b);
        }
        after_len = &after_len[n..];
        // DER: the shortest form, so long forms only above 127.
        if len < 0x80 {
            return None;
        }
        len
    };
    if after_len.len() < len {
        return None;
    }
    let header = buf.len() - after_len.len();
    Some(Tlv {
        tag,
        value: &after_len[..len],
        raw: &buf[..header + len],
        rest: &after_len[len..],
    })
}

/// The version field of a whole-buffer SEQUENCE whose first element is
/// `INTEGER version` (`rest` is what follows it inside the SEQUENCE).
fn versioned(der: &[u8], version: u8) -> Option<Tlv<'_>> {
    let seq = tlv(der)?;
    if seq.tag != SEQUENCE || !seq.rest.is_empty() {
        return None;
    }
    let v = tlv(seq.value)?;
    (v.tag == INTEGER && v.value == [version]).then_some(v)
}

/// Appends a DER length.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    out.push(0x80 | (bytes.len() - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

fn push_tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    push_len(out, value.len());
    out.extend_from_slice(value);
}

/// Unwraps an unencrypted PKCS#8 `PrivateKeyInfo` holding an RSA key or an
/// EC key on a named curve; None for anything else (the caller then uses
/// OpenSSL's PKCS#8 decoder, which also refuses what is not a key).
pub fn unwrap_pkcs8(der: &[u8]) -> Option<Unwrapped> {
    // Version 0 (v1): version 1 (RFC 5958 OneAsymmetricKey) may carry a
    // public key we would silently drop; leave it to OpenSSL.
    let version = versioned(der, 0)?;
    let algorithm = tlv(version.rest)?;
    if algorithm.tag != SEQUENCE {
        return None;
    }
    let key = tlv(algorithm.rest)?;
    // No attributes: anything after the key is left to OpenSSL.
    if key.tag != OCTET_STRING || !key.rest.is_empty() {
        return None;
    }
    let oid = tlv(algorithm.value)?;
    if oid.tag != OID {
        return None;
    }
    if oid.value == OID_RSA_ENCRYPTION {
        let params = tlv(oid.rest)?;
        if params.tag != NULL || !params.value.is_empty() || !params.rest.is_empty() {
            return None;
        }
        let inner = tlv(key.value)?;
        if inner.tag != SEQUENCE || !inner.rest.is_empty() {
            return None;
        }
        return Some(Unwrapped::Pkcs1(key.value.to_vec()));
    }
    if oid.value == OID_EC_PUBLIC_KEY {
        let curve = tlv(oid.rest)?;
        if curve.tag != OID || !curve.rest.is_empty() {
            return None; // explicit parameters: OpenSSL's business
        }
        return sec1_with_curve(key.value, curve.raw).map(Unwrapped::Sec1);
    }
    None
}

/// Writes `curve` (a named-curve OID element) into an `ECPrivateKey` that
/// leaves its `[0] parameters` out; one that has them must name the same
/// curve.
fn sec1_with_curve(ec: &[u8], curve: &[u8]) -> Option<Vec<u8>> {
    let version = versioned(ec, 1)?;
    let private = tlv(version.rest)?;
    if private.tag != OCTET_STRING {
        return None;
    }
    let mut tail = private.rest;
    if let Some(params) = tlv(tail).filter(|t| t.tag == CONTEXT_0) {
        // Already there: it must be the same curve, and is kept as is.
        if params.value != curve {
            return None;
        }
        return Some(ec.to_vec());
    }
    let mut body = Vec::with_capacity(ec.len() + curve.len() + 4);
    body.extend_from_slice(version.raw);
    body.extend_from_slice(private.raw);
    push_tlv(&mut body, CONTEXT_0, curve);
    // The optional [1] publicKey (and nothing else) may follow.
    while !tail.is_empty() {
        let next = tlv(tail)?;
        body.extend_from_slice(next.raw);
        tail = next.rest;
    }
    let mut out = Vec::with_capacity(body.len() + 4);
    push_tlv(&mut out, SEQUENCE, &body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ec::EcGroup;
    use openssl::nid::Nid;

    #[test]
    fn key_der_fields_are_told_apart_and_load() {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let ec = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let rsa = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let ed = PKey::generate_ed25519().unwrap();
        let cases = [
            (ec.ec_key().unwrap().private_key_to_der().unwrap(), 1, &ec),
            (ec.private_key_to_pkcs8().unwrap(), 1, &ec),
            (rsa.rsa().unwrap().private_key_to_der().unwrap(), 2, &rsa),
            (rsa.private_key_to_pkcs8().unwrap(), 2, &rsa),
            (ed.private_key_to_pkcs8().unwrap(), 3, &ed),
        ];
        for (der, tag, key) in cases {
            let k = KeyDer::parse(&der).unwrap();
            assert_eq!(k.tag(), tag);
            assert!(k.load().unwrap().public_eq(key));
        }
        assert_eq!(KeyDer::parse(b"not a key"), None);
        assert_eq!(KeyDer::parse(&[0x30, 0x03, 0x02, 0x01, 0x05]), None);
    }

    #[test]
    fn sec1_keys_load_whole_or_through_the_legacy_decoder() {
        use openssl::hash::MessageDigest;
        use openssl::sign::{Signer, Verifier};
        for nid in [
            Nid::X9_62_PRIME256V1,
            Nid::SECP384R1,
            Nid::SECP521R1,
            Nid::SECP256K1,
        ] {
            let group = EcGroup::from_curve_name(nid).unwrap();
            let ec = EcKey::generate(&group).unwrap();
            let der = ec.private_key_to_der().unwrap();
            let known = nid != Nid::SECP256K1;
            assert_eq!(sec1_parts(&der).is_some(), known, "{nid:?}");
            let key = load_sec1(&der).unwrap();
            let public =
                PKey::from_ec_key(EcKey::from_public_key(&group, ec.public_key()).unwrap())
                    .unwrap();
            assert!(key.public_eq(&public));
            let mut signer = Signer::new(MessageDigest::sha256(), &key).unwrap();
            let sig = signer.sign_oneshot_to_vec(b"handshake").unwrap();
            let mut verifier = Verifier::new(MessageDigest::sha256(), &public).unwrap();
            assert!(verifier.verify_oneshot(&sig, b"handshake").unwrap());
        }
        // Without its public key (or with a point off the curve) a key is
        // not built from parts; OpenSSL's decoder has the last word.
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let der = EcKey::generate(&group)
            .unwrap()
            .private_key_to_der()
            .unwrap();
        let seq = tlv(&der).unwrap();
        let version = tlv(seq.value).unwrap();
        let private = tlv(version.rest).unwrap();
        let params = tlv(private.rest).unwrap();
        let mut body = [version.raw, private.raw, params.raw].concat();
        let mut no_public = Vec::new();
        push_tlv(&mut no_public, SEQUENCE, &body);
        assert!(sec1_parts(&no_public).is_none());
        assert!(load_sec1(&no_public).is_ok(), "the public key is derived");
        push_tlv(&mut body, CONTEXT_1, &[BIT_STRING, 3, 0, 4, 1]);
        let mut off_curve = Vec::new();
        push_tlv(&mut off_curve, SEQUENCE, &body);
        assert!(sec1_parts(&off_curve).is_some());
        assert!(load_sec1(&off_curve).is_err());
    }

    #[test]
    fn crt_der_fields_split_into_whole_certificates() {
        let one = [0x30, 0x03, 0x02, 0x01, 0x01];
        let two = [0x30, 0x00];
        let both = [&one[..], &two[..]].concat();
        assert_eq!(
            split_certificates(&both, 8).unwrap(),
            vec![&one[..], &two[..]]
        );
        assert_eq!(split_certificates(&both, 1), None, "over the bound");
        assert_eq!(split_certificates(&both[..4], 8), None, "truncated");
        assert_eq!(
            split_certificates(&[0x02, 0x01, 0x00], 8),
            None,
            "not a SEQUENCE"
        );
        assert_eq!(split_certificates(b"", 8), None);
    }

    #[test]
    fn ec_pkcs8_unwraps_to_sec1_that_names_its_curve() {
        for nid in [Nid::X9_62_PRIME256V1, Nid::SECP384R1] {
            let group = EcGroup::from_curve_name(nid).unwrap();
            let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
            let pkcs8 = key.private_key_to_pkcs8().unwrap();
            let Some(Unwrapped::Sec1(sec1)) = unwrap_pkcs8(&pkcs8) else {
                panic!("{nid:?} did not unwrap");
            };
            let back = EcKey::private_key_from_der(&sec1).unwrap();
            assert_eq!(back.group().curve_name(), Some(nid));
            let back = PKey::from_ec_key(back).unwrap();
            assert!(back.public_eq(&key), "{nid:?}: another key");
        }
    }

    #[test]
    fn rsa_pkcs8_unwraps_to_pkcs1() {
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let pkcs8 = key.private_key_to_pkcs8().unwrap();
        let Some(Unwrapped::Pkcs1(pkcs1)) = unwrap_pkcs8(&pkcs8) else {
            panic!("RSA did not unwrap");
        };
        let back = PKey::from_rsa(Rsa::private_key_from_der(&pkcs1).unwrap()).unwrap();
        assert!(back.public_eq(&key));
    }

    #[test]
    fn other_keys_and_garbage_are_left_to_openssl() {
        let ed = PKey::generate_ed25519().unwrap();
        assert_eq!(unwrap_pkcs8(&ed.private_key_to_pkcs8().unwrap()), None);
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let ec = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let good = ec.private_key_to_pkcs8().unwrap();
        for cut in 0..good.len() {
            assert_eq!(unwrap_pkcs8(&good[..cut]), None, "prefix of {cut} bytes");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(unwrap_pkcs8(&trailing), None);
        assert_eq!(unwrap_pkcs8(b""), None);
        assert_eq!(unwrap_pkcs8(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        // A non-minimal length is not DER.
        assert_eq!(unwrap_pkcs8(&[0x30, 0x81, 0x01, 0x00]), None);
    }

    #[test]
    fn sec1_with_other_curve_parameters_is_refused() {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let ec = EcKey::generate(&group).unwrap();
        let sec1 = ec.private_key_to_der().unwrap(); // names P-256
        let p384 = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
        assert_eq!(sec1_with_curve(&sec1, &p384), None);
        let p256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        assert_eq!(sec1_with_curve(&sec1, &p256), Some(sec1.clone()));
    }

    #[test]
    fn lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 65_535, 65_536] {
            let mut out = Vec::new();
            push_tlv(&mut out, OCTET_STRING, &vec![7u8; len]);
            let t = tlv(&out).unwrap();
            assert_eq!((t.tag, t.value.len(), t.rest.len()), (OCTET_STRING, len, 0));
            assert_eq!(t.raw, &out[..]);
        }
    }
}
