//! What a tenant's `client_ca` may cost the worker that verifies client
//! certificates against it.
//!
//! OpenSSL verifies a client's chain synchronously, on the worker's event
//! loop, and checks every name of every certificate below a CA against
//! every name-constraint subtree of that CA (`NAME_CONSTRAINTS_check`,
//! up to 2^20 comparisons per certificate: `NAME_CHECK_MAX`). Both factors
//! were chosen by others: the subtrees by the tenant (a 64 KiB `client_ca`
//! holds ~900 of them), the names by the client (100 KiB of Certificate
//! message by default, ~1,800 names). At the maximum a handshake cost
//! ~70 ms of the event loop, and every other connection of the worker
//! waited. The two bounds here keep the product small:
//!
//! - [`MAX_NAME_CONSTRAINT_SUBTREES`]: a `client_ca` whose certificates
//!   carry more subtrees in total is refused;
//! - [`MAX_CLIENT_CERTIFICATE_LIST`]: the client's Certificate message may
//!   be at most this long when a client certificate is asked for
//!   (`SSL_set_max_cert_list`), which bounds the names a client sends, and
//!   the subtrees of any "intermediate" it brings along.
//!
//! The input is untrusted (a Redis record): every read is bounded, nothing
//! panics.
#![forbid(unsafe_code)]

/// The most name-constraint subtrees (permitted and excluded, over all of
/// a `client_ca`'s certificates) a record may carry. A CA constrained for
/// its tenant names a few domains and address ranges; 64 leaves room for
/// dozens. Each comparison reads at most the client's name, so with the
/// client's chain held to [`MAX_CLIENT_CERTIFICATE_LIST`] bytes the check
/// reads at most 64 x 16 KiB = 1 MiB (~330 names of 50 bytes: ~21,000
/// comparisons, about a millisecond); 900 subtrees, which 64 KiB held,
/// allowed OpenSSL's whole 2^20 comparisons (~70 ms).
pub const MAX_NAME_CONSTRAINT_SUBTREES: usize = 64;

/// The longest Certificate message (bytes) a client may send when a
/// tenant's `client_ca` asks it for a certificate (OpenSSL's default is
/// 100 KiB). A client chain of leaf and intermediate is 1 to 4 KB (two
/// RSA-4096 certificates, ~3.5 KB); 16 KiB takes four such certificates
/// with room to spare, and OpenSSL refuses anything longer before it
/// parses a byte of it.
pub const MAX_CLIENT_CERTIFICATE_LIST: usize = 16 * 1024;

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
/// `[3] EXPLICIT Extensions` in a TBSCertificate.
const EXTENSIONS: u8 = 0xa3;
/// `permittedSubtrees [0]` and `excludedSubtrees [1]` (IMPLICIT, constructed).
const PERMITTED: u8 = 0xa0;
const EXCLUDED: u8 = 0xa1;
/// 2.5.29.30 (id-ce-nameConstraints).
const OID_NAME_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x1e];

/// Why a `client_ca` is refused by these rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstraintsError {
    /// More than [`MAX_NAME_CONSTRAINT_SUBTREES`] subtrees in total.
    TooMany(usize),
    /// A certificate whose extensions cannot be read as DER (OpenSSL may
    /// read more than this walker does: refused rather than guessed).
    Unreadable,
}

/// Judges the certificates (DER) of a `client_ca`: their name-constraint
/// subtrees, over all of them, must be at most
/// [`MAX_NAME_CONSTRAINT_SUBTREES`].
pub fn judge<'a>(certs: impl IntoIterator<Item = &'a [u8]>) -> Result<(), ConstraintsError> {
    let mut total = 0usize;
    for der in certs {
        total += name_constraint_subtrees(der).ok_or(ConstraintsError::Unreadable)?;
        if total > MAX_NAME_CONSTRAINT_SUBTREES {
            return Err(ConstraintsError::TooMany(total));
        }
    }
    Ok(())
}

/// The number of name-constraint subtrees (permitted and excluded) in a
/// certificate's DER, over every nameConstraints extension it has (one, in
/// a valid certificate); None when the DER cannot be walked. Only counts:
/// what a subtree says is OpenSSL's business.
pub fn name_constraint_subtrees(der: &[u8]) -> Option<usize> {
    let cert = tlv(der)?;
    if cert.tag != SEQUENCE || !cert.rest.is_empty() {
        return None;
    }
    let tbs = tlv(cert.value)?;
    if tbs.tag != SEQUENCE {
        return None;
    }
    // The extensions are the TBSCertificate's last element, [3].
    let mut rest = tbs.value;
    let mut extensions = None;
    while !rest.is_empty() {
        let e = tlv(rest)?;
        if e.tag == EXTENSIONS {
            extensions = Some(e.value);
        }
        rest = e.rest;
    }
    let Some(extensions) = extensions else {
        return Some(0);
    };
    let list = tlv(extensions)?;
    if list.tag != SEQUENCE || !list.rest.is_empty() {
        return None;
    }
    let mut total = 0usize;
    let mut rest = list.value;
    while !rest.is_empty() {
        let ext = tlv(rest)?;
        rest = ext.rest;
        if ext.tag != SEQUENCE {
            return None;
        }
        let id = tlv(ext.value)?;
        if id.tag != OID {
            return None;
        }
        let mut value = tlv(id.rest)?;
        if value.tag == BOOLEAN {
            value = tlv(value.rest)?;
        }
        if value.tag != OCTET_STRING || !value.rest.is_empty() {
            return None;
        }
        if id.value == OID_NAME_CONSTRAINTS {
            total += subtrees(value.value)?;
        }
    }
    Some(total)
}

/// The subtrees of one `NameConstraints` value.
fn subtrees(value: &[u8]) -> Option<usize> {
    let nc = tlv(value)?;
    if nc.tag != SEQUENCE || !nc.rest.is_empty() {
        return None;
    }
    let mut total = 0usize;
    let mut rest = nc.value;
    while !rest.is_empty() {
        let part = tlv(rest)?;
        rest = part.rest;
        if part.tag != PERMITTED && part.tag != EXCLUDED {
            return None;
        }
        let mut items = part.value;
        while !items.is_empty() {
            let item = tlv(items)?;
            items = item.rest;
            total += 1;
        }
    }
    Some(total)
}

/// Reads one DER element ([`crate::der`]'s reader: definite lengths in
/// their shortest form, at most 4 length bytes), refusing multi-byte tags,
/// which no field read here has.
fn tlv(buf: &[u8]) -> Option<crate::der::Tlv<'_>> {
    if buf.first()? & 0x1f == 0x1f {
        return None;
    }
    crate::der::tlv(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dyncert_testkit::pki::ec_key;
    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::x509::extension::BasicConstraints;
    use openssl::x509::{X509Extension, X509Name, X509};

    /// A self-signed CA with `nc` as its nameConstraints (none: no
    /// extension).
    fn ca(nc: Option<&str>) -> Vec<u8> {
        let key = ec_key();
        let mut name = X509Name::builder().unwrap();
        name.append_entry_by_text("CN", "tenant ca").unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
            .unwrap();
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        if let Some(nc) = nc {
            let ctx = b.x509v3_context(None, None);
            #[allow(deprecated)]
            let ext = X509Extension::new_nid(None, Some(&ctx), Nid::NAME_CONSTRAINTS, nc).unwrap();
            b.append_extension(ext).unwrap();
        }
        b.sign(&key, MessageDigest::sha256()).unwrap();
        b.build().to_der().unwrap()
    }

    fn excluded(n: usize) -> String {
        let mut s = String::from("critical");
        for i in 0..n {
            s.push_str(&format!(",excluded;DNS:x{i}.example"));
        }
        s
    }

    #[test]
    fn subtrees_are_counted_permitted_and_excluded_of_every_type() {
        assert_eq!(name_constraint_subtrees(&ca(None)), Some(0));
        let mixed = "critical,permitted;DNS:tenant.example,permitted;IP:10.0.0.0/255.0.0.0,\
                     permitted;email:.tenant.example,excluded;DNS:bad.tenant.example,\
                     excluded;URI:.evil.example";
        assert_eq!(name_constraint_subtrees(&ca(Some(mixed))), Some(5));
        assert_eq!(
            name_constraint_subtrees(&ca(Some(&excluded(900)))),
            Some(900)
        );
    }

    #[test]
    fn a_client_ca_within_the_bound_passes() {
        let a = ca(Some(&excluded(40)));
        let b = ca(Some(&excluded(24)));
        let plain = ca(None);
        assert_eq!(
            judge([a.as_slice(), b.as_slice(), plain.as_slice()]),
            Ok(())
        );
        assert_eq!(judge([ca(Some(&excluded(64))).as_slice()]), Ok(()));
        assert_eq!(judge(std::iter::empty()), Ok(()));
    }

    #[test]
    fn more_subtrees_than_the_bound_in_total_is_refused() {
        assert_eq!(
            judge([ca(Some(&excluded(65))).as_slice()]),
            Err(ConstraintsError::TooMany(65))
        );
        // Spread over several CAs: the total counts.
        let a = ca(Some(&excluded(40)));
        let b = ca(Some(&excluded(25)));
        assert_eq!(
            judge([a.as_slice(), b.as_slice()]),
            Err(ConstraintsError::TooMany(65))
        );
        assert!(matches!(
            judge([ca(Some(&excluded(900))).as_slice()]),
            Err(ConstraintsError::TooMany(_))
        ));
    }

    #[test]
    fn certificates_that_cannot_be_walked_are_refused() {
        let good = ca(Some(&excluded(3)));
        // Every truncation of a certificate is unreadable, never a panic.
        for cut in 0..good.len() {
            assert_eq!(name_constraint_subtrees(&good[..cut]), None, "{cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(name_constraint_subtrees(&trailing), None);
        assert_eq!(
            judge([b"not a certificate".as_slice()]),
            Err(ConstraintsError::Unreadable)
        );
        // An indefinite length (BER, which OpenSSL may read) is refused.
        assert_eq!(name_constraint_subtrees(&[0x30, 0x80, 0x00, 0x00]), None);
    }

    #[test]
    fn a_record_whose_client_ca_has_too_many_subtrees_is_refused() {
        use crate::validate::{policy_of, Invalid};
        let pem = |der: Vec<u8>| X509::from_der(&der).unwrap().to_pem().unwrap();
        let heavy = pem(ca(Some(&excluded(900))));
        assert_eq!(
            policy_of(None, Some(&heavy)).err(),
            Some(Invalid::ClientCaConstraints)
        );
        let mut two = pem(ca(Some(&excluded(60))));
        two.extend(pem(ca(Some(&excluded(5)))));
        assert_eq!(
            policy_of(None, Some(&two)).err(),
            Some(Invalid::ClientCaConstraints)
        );
        let ok = pem(ca(Some(&excluded(64))));
        assert_eq!(
            policy_of(None, Some(&ok))
                .unwrap()
                .client_ca
                .unwrap()
                .certs
                .len(),
            1
        );
        assert_eq!(
            Invalid::ClientCaConstraints.label(),
            "client_ca_constraints"
        );
    }

    #[test]
    fn the_bounds_keep_the_name_check_small() {
        // With ~50 bytes of DER per name a 16 KiB Certificate message
        // holds ~330 names: ~21,000 comparisons against the CA's subtrees,
        // 2% of OpenSSL's 2^20 allowance (shorter names are more of them,
        // each compared in fewer bytes).
        const NAMES: usize = MAX_CLIENT_CERTIFICATE_LIST / 50;
        const { assert!(NAMES * MAX_NAME_CONSTRAINT_SUBTREES < (1 << 20) / 40) };
        // And a real client chain fits: four RSA-4096 certificates.
        const { assert!(4 * 2_000 < MAX_CLIENT_CERTIFICATE_LIST) };
    }
}
