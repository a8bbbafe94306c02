//! Turns a decoded record into parsed OpenSSL objects, refusing anything
//! that must not be served: unparsable PEM, a key that does not match the
//! leaf, a leaf that does not cover the name, a certificate outside its
//! validity period, an over-long chain.
//!
//! This runs on the fetcher thread, so the handshake path only ever sees
//! ready-made `X509`/`PKey` objects (no PEM parsing in the cert callback).

use openssl::asn1::Asn1Time;
use openssl::pkey::{PKey, Private};
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::X509;

use crate::cidr::{parse_list, Cidr};

use crate::name::dns_name_matches;
use crate::record::{Record, MAX_CHAIN_LEN};

/// A certificate ready to be installed on a connection.
pub struct ParsedCert {
    pub leaf: X509,
    /// Intermediates, in the order they are sent (leaf excluded).
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
    /// The leaf's notAfter, milliseconds since the UNIX epoch.
    pub not_after_ms: u64,
    /// Approximate DER size of leaf + chain, for memory accounting.
    pub der_bytes: usize,
    /// The record's per-tenant policy (applied with `dyncert_tenant_policy`).
    pub policy: TenantPolicy,
    /// SHA-256 over every field of the record it was parsed from: two
    /// parses of the same record compare equal, any change (certificate,
    /// key or policy) does not. Tenant policy binds connections and TLS
    /// sessions to it.
    pub fingerprint: [u8; 32],
}

/// Per-tenant policy carried by a record.
#[derive(Default)]
pub struct TenantPolicy {
    /// Client networks allowed to reach the name, if restricted.
    pub allow: Option<Vec<Cidr>>,
    /// CAs that client certificates must chain to, if required.
    pub client_ca: Option<ClientCa>,
}

/// A tenant's client-certificate authorities, ready for the handshake.
pub struct ClientCa {
    /// Sent in the CertificateRequest (their subject names).
    pub certs: Vec<X509>,
    /// Verifies the client's chain (these CAs only, no system roots).
    pub store: X509Store,
}

impl std::fmt::Debug for TenantPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantPolicy")
            .field("allow", &self.allow.as_ref().map(Vec::len))
            .field("client_ca", &self.client_ca.as_ref().map(|c| c.certs.len()))
            .finish()
    }
}

impl std::fmt::Debug for ParsedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedCert")
            .field("chain_len", &self.chain.len())
            .field("not_after_ms", &self.not_after_ms)
            .finish_non_exhaustive()
    }
}

/// Why a record was refused. `as_str` feeds log lines and metric labels;
/// none of them carries key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    CrtNotPem,
    ChainTooLong,
    KeyNotPem,
    KeyMismatch,
    NameNotCovered,
    Expired,
    NotYetValid,
    BadValidity,
    AllowInvalid,
    ClientCaNotPem,
}

impl Invalid {
    pub fn as_str(&self) -> &'static str {
        match self {
            Invalid::CrtNotPem => "field \"crt\" holds no parsable PEM certificate",
            Invalid::ChainTooLong => "field \"crt\" holds more than 8 certificates",
            Invalid::KeyNotPem => "field \"key\" holds no parsable unencrypted PEM private key",
            Invalid::KeyMismatch => "private key does not match the certificate",
            Invalid::NameNotCovered => "certificate does not cover the name (subjectAltName)",
            Invalid::Expired => "certificate has expired (notAfter)",
            Invalid::NotYetValid => "certificate is not yet valid (notBefore)",
            Invalid::BadValidity => "certificate validity dates cannot be read",
            Invalid::AllowInvalid => {
                "field \"allow\" is not a comma-separated list of addresses and CIDRs"
            }
            Invalid::ClientCaNotPem => "field \"client_ca\" holds no parsable PEM certificate",
        }
    }

    /// Short machine label for counters.
    pub fn label(&self) -> &'static str {
        match self {
            Invalid::CrtNotPem => "crt_not_pem",
            Invalid::ChainTooLong => "chain_too_long",
            Invalid::KeyNotPem => "key_not_pem",
            Invalid::KeyMismatch => "key_mismatch",
            Invalid::NameNotCovered => "name_not_covered",
            Invalid::Expired => "expired",
            Invalid::NotYetValid => "not_yet_valid",
            Invalid::BadValidity => "bad_validity",
            Invalid::AllowInvalid => "allow_invalid",
            Invalid::ClientCaNotPem => "client_ca_not_pem",
        }
    }
}

/// Seconds a notBefore may lie in the future and still be accepted, so an
/// issuer whose clock runs slightly ahead does not cause outages.
const NOT_BEFORE_SKEW_SECS: i64 = 300;

/// Validates `record` for the (normalised) `name` at `now_secs` (UNIX time).
pub fn validate(record: &Record, name: &str, now_secs: i64) -> Result<ParsedCert, Invalid> {
    let mut certs = X509::stack_from_pem(&record.crt).map_err(|_| Invalid::CrtNotPem)?;
    if certs.is_empty() {
        return Err(Invalid::CrtNotPem);
    }
    if certs.len() > MAX_CHAIN_LEN {
        return Err(Invalid::ChainTooLong);
    }
    let leaf = certs.remove(0);
    let key = PKey::private_key_from_pem(&record.key).map_err(|_| Invalid::KeyNotPem)?;

    let leaf_pub = leaf.public_key().map_err(|_| Invalid::CrtNotPem)?;
    if !leaf_pub.public_eq(&key) {
        return Err(Invalid::KeyMismatch);
    }

    let covered = leaf
        .subject_alt_names()
        .map(|sans| {
            sans.iter()
                .filter_map(|gn| gn.dnsname())
                .any(|dns| dns_name_matches(dns, name))
        })
        .unwrap_or(false);
    if !covered {
        return Err(Invalid::NameNotCovered);
    }

    let not_after = unix_secs(leaf.not_after()).ok_or(Invalid::BadValidity)?;
    let not_before = unix_secs(leaf.not_before()).ok_or(Invalid::BadValidity)?;
    if not_after <= now_secs {
        return Err(Invalid::Expired);
    }
    if not_before > now_secs + NOT_BEFORE_SKEW_SECS {
        return Err(Invalid::NotYetValid);
    }

    let der_bytes = std::iter::once(&leaf)
        .chain(certs.iter())
        .map(|c| c.to_der().map(|d| d.len()).unwrap_or(0))
        .sum();

    let policy = TenantPolicy {
        allow: match &record.allow {
            Some(a) => {
                let text = std::str::from_utf8(a).map_err(|_| Invalid::AllowInvalid)?;
                Some(parse_list(text).map_err(|_| Invalid::AllowInvalid)?)
            }
            None => None,
        },
        client_ca: match &record.client_ca {
            Some(pem) => Some(client_ca(pem)?),
            None => None,
        },
    };

    Ok(ParsedCert {
        leaf,
        chain: certs,
        key,
        not_after_ms: (not_after as u64).saturating_mul(1000),
        der_bytes,
        policy,
        fingerprint: fingerprint(record),
    })
}

/// SHA-256 over the record's fields, each length-prefixed so that moving
/// bytes from one field to the next changes the result.
pub fn fingerprint(record: &Record) -> [u8; 32] {
    let mut h = openssl::sha::Sha256::new();
    let fields = [
        Some(&record.crt),
        Some(&record.key),
        record.allow.as_ref(),
        record.client_ca.as_ref(),
    ];
    for f in fields {
        match f {
            Some(v) => {
                h.update(&[1]);
                h.update(&(v.len() as u64).to_be_bytes());
                h.update(v);
            }
            None => h.update(&[0]),
        }
    }
    h.finish()
}

fn client_ca(pem: &[u8]) -> Result<ClientCa, Invalid> {
    let certs = X509::stack_from_pem(pem).map_err(|_| Invalid::ClientCaNotPem)?;
    if certs.is_empty() || certs.len() > MAX_CHAIN_LEN {
        return Err(Invalid::ClientCaNotPem);
    }
    let mut b = X509StoreBuilder::new().map_err(|_| Invalid::ClientCaNotPem)?;
    for c in &certs {
        b.add_cert(c.clone()).map_err(|_| Invalid::ClientCaNotPem)?;
    }
    Ok(ClientCa {
        certs,
        store: b.build(),
    })
}

fn unix_secs(t: &openssl::asn1::Asn1TimeRef) -> Option<i64> {
    let epoch = Asn1Time::from_unix(0).ok()?;
    let diff = epoch.diff(t).ok()?;
    Some(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

#[cfg(test)]
pub(crate) mod testpki {
    //! Certificates made on the fly for unit tests (no files, no network).
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::{PKey, Private};
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509NameBuilder, X509};

    pub fn key() -> PKey<Private> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
    }

    /// Self-signed leaf for `sans`, valid from `from_days` to `to_days`
    /// relative to now.
    pub fn leaf(sans: &[&str], key: &PKey<Private>, from_days: i64, to_days: i64) -> X509 {
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", sans.first().unwrap_or(&"x"))
            .unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        let mut serial = BigNum::new().unwrap();
        serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
        b.set_serial_number(&serial.to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(key).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        b.set_not_before(&Asn1Time::from_unix(now + from_days * 86400).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(now + to_days * 86400).unwrap())
            .unwrap();
        if !sans.is_empty() {
            let mut san = SubjectAlternativeName::new();
            for s in sans {
                san.dns(s);
            }
            let ext = san.build(&b.x509v3_context(None, None)).unwrap();
            b.append_extension(ext).unwrap();
        }
        b.sign(key, MessageDigest::sha256()).unwrap();
        b.build()
    }

    pub fn pem(cert: &X509) -> Vec<u8> {
        cert.to_pem().unwrap()
    }

    pub fn key_pem(key: &PKey<Private>) -> Vec<u8> {
        key.private_key_to_pem_pkcs8().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testpki::*;
    use super::*;

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn record(crt: Vec<u8>, key: Vec<u8>) -> Record {
        Record {
            crt,
            key,
            allow: None,
            client_ca: None,
        }
    }

    #[test]
    fn matching_record_parses_with_chain() {
        let k = key();
        let leaf = leaf(&["shop.example.com"], &k, -1, 30);
        let other = super::testpki::leaf(&["ca.example"], &key(), -1, 30);
        let mut crt = pem(&leaf);
        crt.extend(pem(&other));
        let p = validate(&record(crt, key_pem(&k)), "shop.example.com", now()).unwrap();
        assert_eq!(p.chain.len(), 1);
        assert!(p.not_after_ms > (now() as u64) * 1000);
        assert!(p.der_bytes > 200);
    }

    #[test]
    fn key_of_another_certificate_is_refused() {
        let leaf = leaf(&["shop.example.com"], &key(), -1, 30);
        let r = record(pem(&leaf), key_pem(&key()));
        assert_eq!(
            validate(&r, "shop.example.com", now()).unwrap_err(),
            Invalid::KeyMismatch
        );
    }

    #[test]
    fn certificate_for_another_name_is_refused() {
        let k = key();
        let leaf = leaf(&["other.example.com"], &k, -1, 30);
        let r = record(pem(&leaf), key_pem(&k));
        assert_eq!(
            validate(&r, "shop.example.com", now()).unwrap_err(),
            Invalid::NameNotCovered
        );
    }

    #[test]
    fn wildcard_certificate_covers_one_label() {
        let k = key();
        let leaf = leaf(&["*.example.com"], &k, -1, 30);
        let r = record(pem(&leaf), key_pem(&k));
        assert!(validate(&r, "shop.example.com", now()).is_ok());
        assert_eq!(
            validate(&r, "a.shop.example.com", now()).unwrap_err(),
            Invalid::NameNotCovered
        );
    }

    #[test]
    fn expired_and_future_certificates_are_refused() {
        let k = key();
        let old = leaf(&["shop.example.com"], &k, -30, -1);
        assert_eq!(
            validate(&record(pem(&old), key_pem(&k)), "shop.example.com", now()).unwrap_err(),
            Invalid::Expired
        );
        let future = leaf(&["shop.example.com"], &k, 2, 30);
        assert_eq!(
            validate(
                &record(pem(&future), key_pem(&k)),
                "shop.example.com",
                now()
            )
            .unwrap_err(),
            Invalid::NotYetValid
        );
    }

    #[test]
    fn garbage_pem_is_refused_with_the_field_named() {
        let k = key();
        let leaf = leaf(&["shop.example.com"], &k, -1, 30);
        assert_eq!(
            validate(
                &record(b"junk".to_vec(), key_pem(&k)),
                "shop.example.com",
                now()
            )
            .unwrap_err(),
            Invalid::CrtNotPem
        );
        assert_eq!(
            validate(
                &record(pem(&leaf), b"junk".to_vec()),
                "shop.example.com",
                now()
            )
            .unwrap_err(),
            Invalid::KeyNotPem
        );
        assert!(Invalid::KeyNotPem.as_str().contains("\"key\""));
    }

    #[test]
    fn fingerprint_follows_every_field() {
        let k = key();
        let l = leaf(&["shop.example.com"], &k, -1, 30);
        let base = record(pem(&l), key_pem(&k));
        let a = validate(&base, "shop.example.com", now()).unwrap();
        let b = validate(&base.clone(), "shop.example.com", now()).unwrap();
        assert_eq!(
            a.fingerprint, b.fingerprint,
            "same record, same fingerprint"
        );
        let mut with_allow = base.clone();
        with_allow.allow = Some(b"10.0.0.0/8".to_vec());
        let mut empty_allow = base.clone();
        empty_allow.allow = Some(Vec::new());
        let prints = [
            fingerprint(&base),
            fingerprint(&with_allow),
            fingerprint(&empty_allow),
            fingerprint(&record(pem(&l), key_pem(&key()))),
        ];
        for i in 0..prints.len() {
            for j in i + 1..prints.len() {
                assert_ne!(prints[i], prints[j], "records {i} and {j}");
            }
        }
    }

    #[test]
    fn overlong_chain_is_refused() {
        let k = key();
        let l = leaf(&["shop.example.com"], &k, -1, 30);
        let mut crt = Vec::new();
        for _ in 0..(MAX_CHAIN_LEN + 1) {
            crt.extend(pem(&l));
        }
        assert_eq!(
            validate(&record(crt, key_pem(&k)), "shop.example.com", now()).unwrap_err(),
            Invalid::ChainTooLong
        );
    }
}
