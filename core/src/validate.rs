//! Turns a decoded record into parsed OpenSSL objects, refusing anything
//! that must not be served: unparsable PEM, an encrypted key, a key that
//! does not match the leaf, a leaf that does not cover the name, a
//! certificate outside its validity period, an over-long chain, a key
//! too weak or too slow to sign with (see [`judge_key`]: size, curve, RSA
//! public exponent; [`judge_private_key`]: an RSA key's CRT numbers), a
//! signature or an
//! intermediate's key OpenSSL would refuse to install (see
//! [`crate::chainsec`]).
//!
//! This runs on the fetcher thread, so the handshake path only ever sees
//! ready-made `X509`/`PKey` objects (no PEM parsing in the cert callback).
//! PEM is read by [`crate::pem`], never by OpenSSL, whose PEM readers ask
//! for a passphrase on stdin when a key is encrypted; OpenSSL only gets the
//! DER, through decoders that take no passphrase.

use std::sync::atomic::{AtomicU32, Ordering};

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::stack::Stack;
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::X509;

use crate::cidr::{parse_list, Cidr};

use crate::der::{load_sec1_for, split_certificates, unwrap_pkcs8, KeyDer, Unwrapped};
use crate::intern::{Held, InternError, Interner};
use crate::keyref::{self, KeyRefConfig, KeyRefMode, RefError};
use crate::name::dns_name_matches;
use crate::ossl_engine::EngineError;
use crate::outcome::Refusal;
use crate::pem::{self, Block, Label, PemError};
use crate::record::{Form, Pair, Record, MAX_CHAIN_LEN};
use crate::weight::{self, Heavy, Shape};

/// A certificate ready to be installed on a connection.
pub struct ParsedCert {
    pub leaf: X509,
    /// Intermediates, in the order they are sent (leaf excluded), as the
    /// OpenSSL stack `SSL_use_cert_and_key` takes: built once per parse,
    /// not per handshake.
    pub chain: Stack<X509>,
    pub key: PKey<Private>,
    /// The leaf's notAfter, milliseconds since the UNIX epoch.
    pub not_after_ms: u64,
    /// What the record's parsed certificates hold of a worker's memory
    /// (leaves, intermediates, client CAs: [`crate::weight`]), which
    /// `dyncert_cache max_size` counts. Shared intermediates are counted
    /// in every record that sends them.
    pub weight: usize,
    /// The record's holds on its intermediates (both chains): while the
    /// record lives, the interner shares them; with the last record
    /// holding one, it goes.
    pub held: Vec<Held>,
    /// The record's per-tenant policy (applied with `dyncert_tenant_policy`).
    pub policy: TenantPolicy,
    /// SHA-256 over every field of the record it was parsed from: two
    /// parses of the same record compare equal, any change (certificate,
    /// key or policy) does not. Tenant policy binds connections and TLS
    /// sessions to it.
    pub fingerprint: [u8; 32],
    /// The key was resolved from a key reference (`keyref`): it lives in
    /// a PKCS#11 module, so the record has no key material to share.
    pub key_reference: bool,
    /// The record's second certificate, of the other key type (`crt_rsa`
    /// and `key_rsa`): installed beside the primary, OpenSSL picks one per
    /// handshake by the client's signature algorithms.
    pub second: Option<Second>,
}

/// A record's second certificate, validated like the primary.
pub struct Second {
    pub leaf: X509,
    /// As [`ParsedCert::chain`].
    pub chain: Stack<X509>,
    pub key: PKey<Private>,
}

/// The key types a record with two certificates holds, one of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Ecdsa,
    Rsa,
}

impl KeyKind {
    /// ECDSA or RSA (RSA-PSS keys count as RSA); None for any other type.
    pub fn of<T: openssl::pkey::HasPublic>(key: &openssl::pkey::PKeyRef<T>) -> Option<KeyKind> {
        match key.id() {
            openssl::pkey::Id::EC => Some(KeyKind::Ecdsa),
            openssl::pkey::Id::RSA | openssl::pkey::Id::RSA_PSS => Some(KeyKind::Rsa),
            _ => None,
        }
    }

    /// The value of `$dyncert_cert_type`.
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyKind::Ecdsa => "ecdsa",
            KeyKind::Rsa => "rsa",
        }
    }
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
    /// The `client_ca` certificates carry more name-constraint subtrees
    /// than [`crate::clientca::MAX_NAME_CONSTRAINT_SUBTREES`] (or
    /// extensions that cannot be read): every client certificate checked
    /// against them would cost the worker's event loop that many
    /// comparisons per name.
    ClientCaConstraints,
    KeyEncrypted,
    /// A key reference that must not be loaded (`keyref`).
    KeyReference(RefError),
    /// An accepted key reference the PKCS#11 engine could not load.
    KeyReferenceFailed,
    /// The pkcs11 engine itself could not be loaded or initialised.
    KeyReferenceNoEngine,
    /// The PKCS#11 module did not answer the key load within
    /// [`keyref::LOAD_TIMEOUT`] (a hung token).
    KeyReferenceTimeout,
    /// An earlier key load has not answered within the bound: the token
    /// is not asked again until it does.
    KeyReferenceStuck,
    /// The second pair's counterparts of the checks above.
    RsaCrtNotPem,
    RsaKeyNotPem,
    RsaKeyMismatch,
    RsaNameNotCovered,
    RsaExpired,
    RsaNotYetValid,
    /// Two certificates that are not one ECDSA and one RSA.
    PairTypes,
    /// The leaf's RSA key has fewer than [`RSA_MIN_BITS`] bits.
    KeyTooWeak,
    /// The leaf's RSA key has more bits than `dyncert_rsa_max_bits`: every
    /// full handshake's signature would hold the worker's event loop.
    KeyTooSlow,
    /// The leaf's EC key is not on P-256, P-384 or P-521 by name.
    KeyCurve,
    /// The leaf's key is of a type TLS certificates are not served with.
    KeyType,
    /// The second pair's counterparts of the three above (its other key
    /// types are [`Invalid::PairTypes`]).
    RsaKeyTooWeak,
    RsaKeyTooSlow,
    RsaKeyCurve,
    /// The leaf's RSA key's public exponent is not an odd number from 3 to
    /// [`RSA_MAX_EXPONENT`]: OpenSSL checks every CRT signature with it,
    /// so a huge one makes each signature cost up to a second modulus's
    /// worth (review4 F6).
    KeyExponent,
    /// The RSA private key's CRT parameters are missing or do not fit its
    /// modulus and exponents ([`rsa_crt_consistent`]): OpenSSL's check of
    /// each CRT signature fails and it signs again without CRT, about ten
    /// times the cost of a signature with the same modulus (review4 F6).
    KeyInconsistent,
    /// The second pair's counterparts of the two above.
    RsaKeyExponent,
    RsaKeyInconsistent,
    /// An intermediate of more than [`weight::MAX_INTERMEDIATE_DER`] bytes
    /// or [`weight::MAX_INTERMEDIATE_NAMES`] subjectAltNames.
    ChainTooHeavy,
    /// A leaf of more than [`weight::MAX_LEAF_NAMES`] subjectAltNames.
    TooManyNames,
    /// All the record's certificates together, parsed, over
    /// [`weight::MAX_RECORD_WEIGHT`].
    RecordTooHeavy,
    /// The leaf or an intermediate is signed with fewer than
    /// [`crate::chainsec::MIN_SECURITY_BITS`] (SHA-1, MD5) or with an
    /// algorithm OpenSSL cannot rate: OpenSSL refuses to install it.
    WeakSignature,
    /// An intermediate's key has fewer than
    /// [`crate::chainsec::MIN_SECURITY_BITS`] (RSA under 2048 bits) or
    /// cannot be decoded: OpenSSL refuses to install it.
    ChainKeyTooWeak,
    /// The second pair's counterparts of the two above.
    RsaWeakSignature,
    RsaChainKeyTooWeak,
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
            Invalid::ClientCaConstraints => {
                "field \"client_ca\" holds certificates with more than 64 name-constraint \
                 subtrees in total (or unreadable extensions): checking client certificates \
                 against them would stall the worker"
            }
            Invalid::KeyEncrypted => {
                "field \"key\" holds an encrypted private key \
                 (dyncert has no passphrase: store it unencrypted)"
            }
            Invalid::KeyReference(e) => e.as_str(),
            Invalid::KeyReferenceNoEngine => {
                "the pkcs11 engine could not be loaded for the key reference in field \"key\" \
                 (is libengine-pkcs11-openssl installed, and dyncert_key_references module= right?)"
            }
            Invalid::KeyReferenceFailed => {
                "the pkcs11 engine could not load the key that field \"key\" names \
                 (no such object, wrong PIN, token or module unavailable)"
            }
            Invalid::KeyReferenceTimeout => {
                "the PKCS#11 token did not answer within 2s while loading the key that \
                 field \"key\" names (the load is left to finish in the background, \
                 its key discarded)"
            }
            Invalid::KeyReferenceStuck => {
                "the PKCS#11 token has not answered an earlier key load within 2s: the key \
                 that field \"key\" names is not asked for until it does"
            }
            Invalid::RsaCrtNotPem => "field \"crt_rsa\" holds no parsable certificate",
            Invalid::RsaKeyNotPem => "field \"key_rsa\" holds no parsable unencrypted private key",
            Invalid::RsaKeyMismatch => {
                "private key \"key_rsa\" does not match the certificate \"crt_rsa\""
            }
            Invalid::RsaNameNotCovered => {
                "certificate \"crt_rsa\" does not cover the name (subjectAltName)"
            }
            Invalid::RsaExpired => "certificate \"crt_rsa\" has expired (notAfter)",
            Invalid::RsaNotYetValid => "certificate \"crt_rsa\" is not yet valid (notBefore)",
            Invalid::PairTypes => {
                "a record with two certificates must hold one ECDSA and one RSA certificate"
            }
            Invalid::KeyTooWeak => "certificate \"crt\" has an RSA key of fewer than 2048 bits",
            Invalid::KeyTooSlow => {
                "certificate \"crt\" has an RSA key of more bits than dyncert_rsa_max_bits \
                 (default 4096): its signature in every handshake would stall the worker"
            }
            Invalid::KeyCurve => {
                "certificate \"crt\" has an EC key that is not on the named curve P-256, \
                 P-384 or P-521"
            }
            Invalid::KeyType => {
                "certificate \"crt\" has a key that is not RSA, ECDSA (P-256, P-384, P-521), \
                 Ed25519 or Ed448"
            }
            Invalid::RsaKeyTooWeak => {
                "certificate \"crt_rsa\" has an RSA key of fewer than 2048 bits"
            }
            Invalid::RsaKeyTooSlow => {
                "certificate \"crt_rsa\" has an RSA key of more bits than dyncert_rsa_max_bits \
                 (default 4096): its signature in every handshake would stall the worker"
            }
            Invalid::RsaKeyCurve => {
                "certificate \"crt_rsa\" has an EC key that is not on the named curve P-256, \
                 P-384 or P-521"
            }
            Invalid::KeyExponent => {
                "certificate \"crt\" has an RSA key whose public exponent is not an odd number \
                 from 3 to 2^32-1 (CAs issue 65537): its check of every signature would stall \
                 the worker"
            }
            Invalid::KeyInconsistent => {
                "key \"key\" is an RSA key whose CRT parameters are missing or do not fit its \
                 modulus and exponents: every signature would be made twice, the second time \
                 without CRT, stalling the worker"
            }
            Invalid::RsaKeyExponent => {
                "certificate \"crt_rsa\" has an RSA key whose public exponent is not an odd \
                 number from 3 to 2^32-1 (CAs issue 65537): its check of every signature would \
                 stall the worker"
            }
            Invalid::RsaKeyInconsistent => {
                "key \"key_rsa\" is an RSA key whose CRT parameters are missing or do not fit \
                 its modulus and exponents: every signature would be made twice, the second time \
                 without CRT, stalling the worker"
            }
            Invalid::ChainTooHeavy => {
                "a chain holds an intermediate of more than 8 KB or more than 100 \
                 subjectAltNames (no CA issues one; parsed, it would hold worker memory)"
            }
            Invalid::TooManyNames => {
                "a leaf certificate has more than 1000 subjectAltNames (CAs issue at most a \
                 few hundred; parsed, it would hold worker memory)"
            }
            Invalid::RecordTooHeavy => {
                "the record's certificates would hold more than 512 KiB of worker memory \
                 parsed"
            }
            Invalid::WeakSignature => {
                "field \"crt\" holds a certificate signed with a digest weaker than 112 bits \
                 (SHA-1, MD5) or an unknown algorithm: OpenSSL would refuse to send it"
            }
            Invalid::ChainKeyTooWeak => {
                "field \"crt\" holds an intermediate whose key is weaker than 112 bits \
                 (RSA under 2048) or unreadable: OpenSSL would refuse to send it"
            }
            Invalid::RsaWeakSignature => {
                "field \"crt_rsa\" holds a certificate signed with a digest weaker than \
                 112 bits (SHA-1, MD5) or an unknown algorithm: OpenSSL would refuse to send it"
            }
            Invalid::RsaChainKeyTooWeak => {
                "field \"crt_rsa\" holds an intermediate whose key is weaker than 112 bits \
                 (RSA under 2048) or unreadable: OpenSSL would refuse to send it"
            }
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
            Invalid::ClientCaConstraints => "client_ca_constraints",
            Invalid::KeyEncrypted => "encrypted_key",
            Invalid::KeyReference(_) => "key_reference_refused",
            Invalid::KeyReferenceFailed | Invalid::KeyReferenceNoEngine => "key_reference_failed",
            Invalid::KeyReferenceTimeout | Invalid::KeyReferenceStuck => "key_reference_timeout",
            Invalid::RsaCrtNotPem => "rsa_crt_invalid",
            Invalid::RsaKeyNotPem => "rsa_key_invalid",
            Invalid::RsaKeyMismatch => "rsa_key_mismatch",
            Invalid::RsaNameNotCovered => "rsa_name_not_covered",
            Invalid::RsaExpired => "rsa_expired",
            Invalid::RsaNotYetValid => "rsa_not_yet_valid",
            Invalid::PairTypes => "pair_types",
            Invalid::KeyTooWeak => "key_too_weak",
            Invalid::KeyTooSlow => "key_too_slow",
            Invalid::KeyCurve => "key_curve",
            Invalid::KeyType => "key_type",
            Invalid::RsaKeyTooWeak => "rsa_key_too_weak",
            Invalid::RsaKeyTooSlow => "rsa_key_too_slow",
            Invalid::RsaKeyCurve => "rsa_key_curve",
            Invalid::KeyExponent => "key_exponent",
            Invalid::KeyInconsistent => "key_inconsistent",
            Invalid::RsaKeyExponent => "rsa_key_exponent",
            Invalid::RsaKeyInconsistent => "rsa_key_inconsistent",
            Invalid::ChainTooHeavy => "chain_too_heavy",
            Invalid::TooManyNames => "too_many_names",
            Invalid::RecordTooHeavy => "record_too_heavy",
            Invalid::WeakSignature => "weak_signature",
            Invalid::ChainKeyTooWeak => "chain_key_too_weak",
            Invalid::RsaWeakSignature => "rsa_weak_signature",
            Invalid::RsaChainKeyTooWeak => "rsa_chain_key_too_weak",
        }
    }
}

impl From<Invalid> for Refusal {
    fn from(i: Invalid) -> Self {
        Refusal {
            reason: i.as_str(),
            label: i.label(),
            record: None,
        }
    }
}

/// Seconds a notBefore may lie in the future and still be accepted, so an
/// issuer whose clock runs slightly ahead does not cause outages.
const NOT_BEFORE_SKEW_SECS: i64 = 300;

/// Most PEM blocks accepted in `key`: `openssl ecparam -genkey` writes the
/// curve before the key.
const MAX_KEY_BLOCKS: usize = 2;

/// Fewest bits of an RSA modulus served: what CAs have issued since 2014
/// (CA/Browser Forum Baseline Requirements, 6.1.5). Below it OpenSSL's
/// security level 2 (the default of many distributions' OpenSSL builds)
/// refuses the certificate when it is installed, in every handshake.
pub const RSA_MIN_BITS: u32 = 2048;
/// Default `dyncert_rsa_max_bits`. One signature with the leaf's key is
/// made on the worker's event loop in every full handshake: RSA-4096
/// ~3 ms, RSA-8192 ~30 ms, RSA-15360 (which the 16 KiB `key` field holds)
/// ~160 ms; ECDSA P-256 ~0.05 ms.
pub const DEFAULT_RSA_MAX_BITS: u32 = 4096;
/// Largest `dyncert_rsa_max_bits` accepted.
pub const RSA_MAX_BITS_CEILING: u32 = 16384;
/// Largest RSA public exponent served (32 bits). OpenSSL checks every CRT
/// signature by raising it to the public exponent: with 65537 (what CAs
/// issue; 17 bits) that is 17 squarings, with a 4094-bit exponent as much
/// again as the signature's own exponentiations and more (an RSA-4096 key
/// then cost 19 ms a signature instead of 1.6). OpenSSL itself refuses
/// exponents of more than 64 bits for moduli of more than 3072 bits in
/// public-key operations, so clients could not verify such a key anyway.
pub const RSA_MAX_EXPONENT: u64 = u32::MAX as u64;

/// What a leaf's public key is, as far as its strength and its cost per
/// handshake go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyShape {
    /// RSA or RSA-PSS, with its modulus's bits and its public exponent
    /// (None: more than 64 bits, or unreadable).
    Rsa { bits: u32, exponent: Option<u64> },
    /// EC; `tls_curve`: on P-256, P-384 or P-521, named (explicit curve
    /// parameters are refused by RFC 5480 and were CVE-2020-0601's way in).
    Ec { tls_curve: bool },
    /// Ed25519 or Ed448 (fixed curves, cheap to sign with).
    EdDsa,
    /// Anything else (DSA, ...).
    Other,
}

impl KeyShape {
    /// The shape of `key`. EC keys are read through their "group" and
    /// "encoding" parameters, which leave the key as it is (getting an
    /// `EC_KEY` would make OpenSSL 3.0 keep a legacy copy of it).
    pub fn of<T: openssl::pkey::HasPublic>(key: &openssl::pkey::PKeyRef<T>) -> KeyShape {
        use crate::ossl_ffi::key_string_param;
        use openssl::pkey::Id;
        match key.id() {
            Id::RSA | Id::RSA_PSS => KeyShape::Rsa {
                bits: key.bits(),
                exponent: crate::ossl_ffi::key_bn_param(key, c"e").and_then(|e| small(&e)),
            },
            Id::EC => {
                let group = key_string_param(key, c"group");
                let encoding = key_string_param(key, c"encoding");
                KeyShape::Ec {
                    tls_curve: matches!(
                        group.as_deref(),
                        Some("prime256v1" | "secp384r1" | "secp521r1")
                    ) && encoding.as_deref() == Some("named_curve"),
                }
            }
            Id::ED25519 | Id::ED448 => KeyShape::EdDsa,
            _ => KeyShape::Other,
        }
    }
}

/// How strong and how costly a leaf's key may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimits {
    /// Most bits of an RSA modulus (`dyncert_rsa_max_bits`).
    pub rsa_max_bits: u32,
}

impl Default for KeyLimits {
    fn default() -> Self {
        KeyLimits {
            rsa_max_bits: DEFAULT_RSA_MAX_BITS,
        }
    }
}

/// The process's `dyncert_rsa_max_bits` (see [`KeyLimits::install`]).
static RSA_MAX_BITS: AtomicU32 = AtomicU32::new(DEFAULT_RSA_MAX_BITS);

impl KeyLimits {
    /// The limits every validation in this process applies: the fetcher's
    /// (records from Redis and the API), the shared zone's loads, the CLI's.
    pub fn current() -> KeyLimits {
        KeyLimits {
            rsa_max_bits: RSA_MAX_BITS.load(Ordering::Relaxed),
        }
    }

    /// Makes these the process's limits. A process-wide value rather than
    /// a field of each caller's configuration: every place that admits a
    /// key (the parse thread, a shared zone load, the CLI) must apply the
    /// same bound, and a worker serves one configuration. Called once, by
    /// the worker before its threads start and by the CLI before it
    /// validates; unit tests pass explicit `KeyLimits` instead, since
    /// installing would race with every test reading [`KeyLimits::current`].
    pub fn install(self) {
        RSA_MAX_BITS.store(self.rsa_max_bits, Ordering::Relaxed);
    }
}

/// `n` as a u64, None when it is negative or has more than 64 bits.
fn small(n: &openssl::bn::BigNumRef) -> Option<u64> {
    if n.is_negative() || n.num_bits() > 64 {
        return None;
    }
    let mut be = [0u8; 8];
    let v = n.to_vec();
    be[8 - v.len()..].copy_from_slice(&v);
    Some(u64::from_be_bytes(be))
}

/// Whether `exponent` is an RSA public exponent served: odd, from 3 to
/// [`RSA_MAX_EXPONENT`].
pub fn rsa_exponent_ok(exponent: Option<u64>) -> bool {
    matches!(exponent, Some(e) if e >= 3 && e % 2 == 1 && e <= RSA_MAX_EXPONENT)
}

/// Whether a leaf whose key has `shape` may be served under `limits`: RSA
/// of [`RSA_MIN_BITS`] to `limits.rsa_max_bits` bits with a public
/// exponent of at most 32 bits, EC on a named TLS curve, Ed25519, Ed448.
/// The primary pair's reasons; the second pair maps them to its own.
pub fn judge_key(shape: KeyShape, limits: KeyLimits) -> Result<(), Invalid> {
    match shape {
        KeyShape::Rsa { bits, .. } if bits < RSA_MIN_BITS => Err(Invalid::KeyTooWeak),
        KeyShape::Rsa { bits, .. } if bits > limits.rsa_max_bits => Err(Invalid::KeyTooSlow),
        KeyShape::Rsa { exponent, .. } if !rsa_exponent_ok(exponent) => Err(Invalid::KeyExponent),
        KeyShape::Rsa { .. } | KeyShape::Ec { tls_curve: true } | KeyShape::EdDsa => Ok(()),
        KeyShape::Ec { tls_curve: false } => Err(Invalid::KeyCurve),
        KeyShape::Other => Err(Invalid::KeyType),
    }
}

/// [`judge_key`] of `leaf`'s own public key: the key clients verify, and
/// the one the record's private key is then checked to match, so a key
/// held elsewhere (a key reference) is judged too. Runs before the private
/// key is loaded, so an oversized one is refused before it is decoded.
pub fn judge_leaf_key(leaf: &X509, limits: KeyLimits) -> Result<(), Invalid> {
    let key = leaf.public_key().map_err(|_| Invalid::CrtNotPem)?;
    judge_key(KeyShape::of(&key), limits)
}

/// An RSA private key's numbers (`RSAPrivateKey`, RFC 8017 A.1.2): what
/// OpenSSL signs with. Copies, wiped when dropped.
pub struct RsaNumbers {
    pub n: BigNum,
    pub e: BigNum,
    pub d: BigNum,
    pub p: BigNum,
    pub q: BigNum,
    /// d mod (p - 1), d mod (q - 1), q^-1 mod p.
    pub dp: BigNum,
    pub dq: BigNum,
    pub qinv: BigNum,
}

impl Drop for RsaNumbers {
    fn drop(&mut self) {
        for secret in [
            &mut self.d,
            &mut self.p,
            &mut self.q,
            &mut self.dp,
            &mut self.dq,
            &mut self.qinv,
        ] {
            secret.clear();
        }
    }
}

impl RsaNumbers {
    /// The numbers of an RSA (or RSA-PSS) private key with two primes;
    /// None when it lacks any of them (OpenSSL then signs without CRT) or
    /// has a third prime (a multi-prime key, which no CA-issued
    /// certificate's key is).
    pub fn of(key: &openssl::pkey::PKeyRef<Private>) -> Option<RsaNumbers> {
        use crate::ossl_ffi::key_bn_param;
        if let Some(mut third) = key_bn_param(key, c"rsa-factor3") {
            third.clear();
            return None;
        }
        let n = key_bn_param(key, c"n")?;
        let e = key_bn_param(key, c"e")?;
        let secrets = [
            c"d",
            c"rsa-factor1",
            c"rsa-factor2",
            c"rsa-exponent1",
            c"rsa-exponent2",
            c"rsa-coefficient1",
        ]
        .map(|name| key_bn_param(key, name));
        match secrets {
            [Some(d), Some(p), Some(q), Some(dp), Some(dq), Some(qinv)] => Some(RsaNumbers {
                n,
                e,
                d,
                p,
                q,
                dp,
                dq,
                qinv,
            }),
            mut some => {
                // Wiped as RsaNumbers' are.
                some.iter_mut().flatten().for_each(|s| s.clear());
                None
            }
        }
    }
}

/// A number derived from a private key (p-1, p-3, a remainder of d),
/// cleared when dropped, on error paths too: `BigNum`'s own drop frees
/// without clearing.
struct Wiped(BigNum);

impl Wiped {
    fn new() -> Result<Wiped, openssl::error::ErrorStack> {
        BigNum::new().map(Wiped)
    }
}

impl Drop for Wiped {
    fn drop(&mut self) {
        self.0.clear();
    }
}

impl core::ops::Deref for Wiped {
    type Target = BigNum;
    fn deref(&self) -> &BigNum {
        &self.0
    }
}

impl core::ops::DerefMut for Wiped {
    fn deref_mut(&mut self) -> &mut BigNum {
        &mut self.0
    }
}

/// Whether OpenSSL signs with `k` in its CRT path and keeps the result:
/// n = p·q (p ≠ q, both > 1), 0 < d < n, dp = d mod (p-1) and
/// dq = d mod (q-1), e·dp ≡ 1 mod (p-1) and e·dq ≡ 1 mod (q-1), and
/// 0 < qinv < p with qinv·q ≡ 1 mod p. OpenSSL checks each CRT signature
/// s by computing s^e mod n; when that is not the message (CRT exponents
/// that do not fit, or a d that is not e's inverse), it signs again as
/// m^d mod n, without CRT: about ten times the cost. A few big-number
/// products and remainders, microseconds even for RSA-16384, unlike
/// `RSA_check_key`, whose primality tests cost tens of milliseconds; so
/// p and q are not shown prime here (a composite one passes this and makes
/// most signatures fall back: [`rsa_crt_inverts`] tells).
pub fn rsa_crt_consistent(k: &RsaNumbers) -> bool {
    let judged = || -> Result<bool, openssl::error::ErrorStack> {
        let mut ctx = openssl::bn::BigNumContext::new()?;
        let one = BigNum::from_u32(1)?;
        let zero = BigNum::new()?;
        let positive = |x: &BigNum| x > &zero && !x.is_negative();
        if !(k.p > one && k.q > one && k.p != k.q && positive(&k.d) && positive(&k.qinv)) {
            return Ok(false);
        }
        if !positive(&k.e) || k.dp.is_negative() || k.dq.is_negative() {
            return Ok(false);
        }
        let mut pq = BigNum::new()?;
        pq.checked_mul(&k.p, &k.q, &mut ctx)?;
        if pq != k.n || k.d >= k.n || k.qinv >= k.p {
            return Ok(false);
        }
        // For each prime: its CRT exponent is d's remainder and e's inverse.
        for (prime, dx) in [(&k.p, &k.dp), (&k.q, &k.dq)] {
            let mut m = Wiped::new()?;
            m.checked_sub(prime, &one)?;
            let mut r = Wiped::new()?;
            r.nnmod(&k.d, &m, &mut ctx)?;
            if &*r != dx {
                return Ok(false);
            }
            let mut ed = BigNum::new()?;
            ed.mod_mul(&k.e, dx, &m, &mut ctx)?;
            if ed != one {
                return Ok(false);
            }
        }
        let mut c = BigNum::new()?;
        c.mod_mul(&k.qinv, &k.q, &k.p, &mut ctx)?;
        Ok(c == one)
    };
    judged().unwrap_or(false)
}

/// RSA moduli over this many bits have their CRT halves tried on a random
/// number ([`rsa_crt_inverts`]). At 2048 bits a key with a composite
/// factor costs about an honest RSA-4096 signature, which the default
/// `dyncert_rsa_max_bits` admits anyway, so RSA-2048 keys (most of what
/// CAs issue) are spared the exponentiation.
pub const RSA_INVERTS_CHECKED_OVER_BITS: u32 = 2048;

/// Whether `k`'s CRT halves invert each other where OpenSSL uses them:
/// for a random x with 1 < x < p-1, (x^dp mod p)^e mod p = x, and the
/// same for q. [`rsa_crt_consistent`] shows e·dp ≡ 1 mod (p-1), which
/// makes this hold for every x when p is prime; when p is the product of
/// two primes it fails for most x, and so does OpenSSL's check of every
/// CRT signature, which it then makes again without CRT (review4 F6's
/// residual: RSA-4096, another name's median handshake 1.1 -> 65 ms). One
/// exponentiation with each secret CRT exponent (constant time, as OpenSSL
/// signs), about one signature's cost in all, and two with e (at most 32
/// bits). Not a primality test, and a random draw: the x it holds for
/// make a subgroup, so for a factor where it does not hold for every x it
/// fails for at least half of them. A factor crafted so that it holds
/// for one x in m (m small: such products of two primes can be searched
/// for) passes one try in m and then makes m-1 signatures in m fall back:
/// a tenant retrying uploads about m times gets there (not closed; an
/// honest composite, and the plain attack, fail at once). An even factor,
/// or one of 3 or less (no x to try), is refused: no key of a CA-issued
/// certificate has one.
pub fn rsa_crt_inverts(k: &RsaNumbers) -> bool {
    let judged = || -> Result<bool, openssl::error::ErrorStack> {
        let mut ctx = openssl::bn::BigNumContext::new()?;
        let three = BigNum::from_u32(3)?;
        for (prime, dx) in [(&k.p, &k.dp), (&k.q, &k.dq)] {
            if prime <= &three {
                return Ok(false);
            }
            // x uniform in [2, prime - 2].
            let mut range = Wiped::new()?;
            range.checked_sub(prime, &three)?;
            let mut x = Wiped::new()?;
            range.rand_range(&mut x)?;
            x.add_word(2)?;
            let s = Wiped(crate::ossl_ffi::mod_exp_consttime(&x, dx, prime, &mut ctx)?);
            let mut back = Wiped::new()?;
            back.mod_exp(&s, &k.e, prime, &mut ctx)?;
            if *back != *x {
                return Ok(false);
            }
        }
        Ok(true)
    };
    judged().unwrap_or(false)
}

/// Whether `k`'s two primes multiply to its modulus.
pub fn primes_of_modulus(k: &RsaNumbers) -> bool {
    let product = || -> Result<BigNum, openssl::error::ErrorStack> {
        let mut ctx = openssl::bn::BigNumContext::new()?;
        let mut pq = BigNum::new()?;
        pq.checked_mul(&k.p, &k.q, &mut ctx)?;
        Ok(pq)
    };
    product().is_ok_and(|pq| pq == k.n)
}

/// The private key's own check, after it is known to match the leaf: an
/// RSA key's primes must be its modulus's (else [`Invalid::KeyMismatch`]:
/// `public_eq` compares n and e only) and it must be one OpenSSL signs with
/// at CRT cost ([`rsa_crt_consistent`]); other keys have nothing to judge
/// here. Microseconds: what a shared zone's load judges again (on the
/// event loop, for a handshake without a peek step). A fetched key is
/// judged by [`judge_fetched_private_key`]. Not for a key reference, whose
/// numbers stay in its token (which does its own signing; its exponent is
/// judged through the leaf).
pub fn judge_private_key(key: &openssl::pkey::PKeyRef<Private>) -> Result<(), Invalid> {
    judge_rsa_key(key, false)
}

/// [`judge_private_key`], and over [`RSA_INVERTS_CHECKED_OVER_BITS`] bits
/// [`rsa_crt_inverts`] (about a signature's cost): for a key as it is
/// fetched, on the parse thread. A shared zone holds only keys that passed
/// this, so its loads do not pay for it again.
pub fn judge_fetched_private_key(key: &openssl::pkey::PKeyRef<Private>) -> Result<(), Invalid> {
    judge_rsa_key(key, true)
}

fn judge_rsa_key(key: &openssl::pkey::PKeyRef<Private>, try_inverse: bool) -> Result<(), Invalid> {
    use openssl::pkey::Id;
    match key.id() {
        Id::RSA | Id::RSA_PSS => match RsaNumbers::of(key) {
            // The leaf's exponent is judged and matched already; a shared
            // zone's entry is loaded without the match.
            Some(k) if !rsa_exponent_ok(small(&k.e)) => Err(Invalid::KeyExponent),
            // Primes of another modulus: not the certificate's key (what
            // public_eq, comparing n and e only, cannot see).
            Some(k) if !primes_of_modulus(&k) => Err(Invalid::KeyMismatch),
            Some(k) if !rsa_crt_consistent(&k) => Err(Invalid::KeyInconsistent),
            // A factor that is not prime (review4 F6's residual).
            Some(k)
                if try_inverse
                    && k.n.num_bits() as u32 > RSA_INVERTS_CHECKED_OVER_BITS
                    && !rsa_crt_inverts(&k) =>
            {
                Err(Invalid::KeyInconsistent)
            }
            Some(_) => Ok(()),
            None => Err(Invalid::KeyInconsistent),
        },
        _ => Ok(()),
    }
}

/// Validates `record` for the (normalised) `name` at `now_secs` (UNIX time).
pub fn validate(record: &Record, name: &str, now_secs: i64) -> Result<ParsedCert, Invalid> {
    check(record, now_secs, None, None, KeyLimits::current(), |leaf| {
        covers(leaf, name)
    })
}

/// The fetcher's validation: [`validate`], or [`validate_wildcard`] for a
/// record stored under the `wildcard` key, with the intermediates taken
/// from (and added to) `interner`, so each distinct one is parsed once.
pub fn validate_shared(
    record: &Record,
    name: &str,
    wildcard: Option<&str>,
    now_secs: i64,
    interner: &Interner,
) -> Result<ParsedCert, Invalid> {
    validate_with_refs(
        record,
        name,
        wildcard,
        now_secs,
        interner,
        &KeyRefConfig::default(),
    )
}

/// [`validate_shared`] with key references allowed as `refs` says: the
/// fetcher's parse thread, the one place a reference is resolved.
pub fn validate_with_refs(
    record: &Record,
    name: &str,
    wildcard: Option<&str>,
    now_secs: i64,
    interner: &Interner,
    refs: &KeyRefConfig,
) -> Result<ParsedCert, Invalid> {
    let refs = Some(refs);
    let limits = KeyLimits::current();
    match wildcard {
        Some(w) => check(record, now_secs, Some(interner), refs, limits, |leaf| {
            any_dns_name(leaf, |dns| same_dns_name(dns, w)) && covers(leaf, name)
        }),
        None => check(record, now_secs, Some(interner), refs, limits, |leaf| {
            covers(leaf, name)
        }),
    }
}

/// Validates `record`, stored under the wildcard key `wildcard`
/// ("*.example.com"), for the (normalised) `name` that asked for it.
///
/// The record is cached under the wildcard and served to every other name
/// below the parent, so covering `name` is not enough (a certificate for
/// "shop.example.com" would then be served to "blog.example.com"): the
/// leaf must carry `wildcard` itself as a subjectAltName.
pub fn validate_wildcard(
    record: &Record,
    wildcard: &str,
    name: &str,
    now_secs: i64,
) -> Result<ParsedCert, Invalid> {
    check(record, now_secs, None, None, KeyLimits::current(), |leaf| {
        any_dns_name(leaf, |dns| same_dns_name(dns, wildcard)) && covers(leaf, name)
    })
}

/// Cheapest checks first, so junk is refused before OpenSSL parses much:
/// PEM structure of every field, then the leaf and its names and dates,
/// then the leaf's key type and size (`limits`), then the private key
/// (its match with the leaf, an RSA key's CRT parameters),
/// then the rest of the chain (with every signature's and intermediate
/// key's strength, [`crate::chainsec`]) and the client CAs.
fn check(
    record: &Record,
    now_secs: i64,
    interner: Option<&Interner>,
    refs: Option<&KeyRefConfig>,
    limits: KeyLimits,
    covered: impl Fn(&X509) -> bool,
) -> Result<ParsedCert, Invalid> {
    let certs = match record.form {
        Form::Pem => certificates(&record.crt, Invalid::CrtNotPem, Invalid::ChainTooLong)?,
        Form::Der => der_certificates(&record.crt)?,
    };
    let key_der = match record.form {
        Form::Pem => None,
        Form::Der => Some(KeyDer::parse(&record.key).ok_or(Invalid::KeyNotPem)?),
    };
    // A reference is decided on before anything is loaded; with
    // references off (the default, and everywhere but the fetcher) it is
    // refused, never read as a path.
    let mode = refs.map_or(KeyRefMode::Off, |r| r.mode);
    let key_ref = match record.form {
        Form::Pem => keyref::parse(&record.key, mode).map_err(Invalid::KeyReference)?,
        Form::Der => None,
    };
    let key_block = match (record.form, &key_ref) {
        (Form::Pem, None) => Some(key_block(&record.key)?),
        _ => None,
    };
    let ca_certs = match &record.client_ca {
        Some(pem) => Some(certificates(
            pem,
            Invalid::ClientCaNotPem,
            Invalid::ClientCaNotPem,
        )?),
        None => None,
    };
    let allow = allow_list(record.allow.as_deref())?;

    let (mut leaf, chain_der, not_after) = checked_leaf(&certs, &covered, now_secs)?;
    judge_leaf_key(&leaf, limits)?;

    let key = match (key_block, key_der, &key_ref) {
        (Some(block), _, _) => private_key(block, Some(&mut leaf))?,
        (None, Some(der), _) => der
            .load_for(Some(&mut leaf))
            .map_err(|_| Invalid::KeyNotPem)?,
        (None, None, Some(r)) => {
            let module = refs.and_then(|c| c.module.as_deref());
            let pin = refs.and_then(|c| c.pin.as_deref());
            crate::ossl_engine::load_private_key(r, module, pin).map_err(|e| match e {
                EngineError::Unavailable => Invalid::KeyReferenceNoEngine,
                EngineError::Load => Invalid::KeyReferenceFailed,
                EngineError::Timeout => Invalid::KeyReferenceTimeout,
                EngineError::Stuck => Invalid::KeyReferenceStuck,
            })?
        }
        (None, None, None) => return Err(Invalid::KeyNotPem),
    };
    let leaf_pub = leaf.public_key().map_err(|_| Invalid::CrtNotPem)?;
    if !leaf_pub.public_eq(&key) {
        return Err(Invalid::KeyMismatch);
    }
    if key_ref.is_none() {
        judge_fetched_private_key(&key)?;
    }
    let mut held = Vec::new();
    let second = match &record.second {
        Some(pair) => {
            let (blocks, second) =
                check_second(pair, now_secs, interner, limits, &covered, &mut held)?;
            match (KeyKind::of(&key), KeyKind::of(&second.key)) {
                (Some(a), Some(b)) if a != b => {}
                _ => return Err(Invalid::PairTypes),
            }
            Some((blocks, second))
        }
        None => None,
    };

    let chain = parsed_chain(chain_der, interner, &mut held)?;
    crate::chainsec::judge_chain(&leaf, &chain)?;
    let client_ca = match ca_certs {
        Some(blocks) => Some(client_ca(&blocks)?),
        None => None,
    };
    let second_certs = second.as_ref().map(|(b, _)| b.as_slice());
    let fingerprint = fingerprint_of(
        &certs,
        record,
        key_ref.as_ref().map(|r| r.uri()),
        second_certs,
    );
    precompute(&leaf);
    crate::leafkey::bind_checked(&mut leaf, &key, key_ref.is_some());
    let weight = record_weight(
        Shape::of(&leaf, certs[0].der.len()),
        second
            .as_ref()
            .map(|(b, s)| Shape::of(&s.leaf, b[0].der.len())),
        &held,
        client_ca.as_ref(),
    )?;
    // The record is as good as its first certificate to expire.
    let not_after = match &second {
        Some((_, s)) => not_after.min(unix_secs(s.leaf.not_after()).ok_or(Invalid::BadValidity)?),
        None => not_after,
    };

    Ok(ParsedCert {
        leaf,
        chain,
        key,
        not_after_ms: (not_after as u64).saturating_mul(1000),
        weight,
        held,
        policy: TenantPolicy { allow, client_ca },
        fingerprint,
        key_reference: key_ref.is_some(),
        second: second.map(|(_, s)| s),
    })
}

/// Validates a record's second pair like the primary (name, dates, key
/// match, chain bound), with the second pair's own refusal reasons. Its
/// key is key material only: a key reference is refused.
fn check_second(
    pair: &Pair,
    now_secs: i64,
    interner: Option<&Interner>,
    limits: KeyLimits,
    covered: &impl Fn(&X509) -> bool,
    held: &mut Vec<Held>,
) -> Result<(Vec<Block>, Second), Invalid> {
    let rsa = second_reason;
    let certs = match pair.form {
        Form::Pem => certificates(&pair.crt, Invalid::CrtNotPem, Invalid::ChainTooLong),
        Form::Der => der_certificates(&pair.crt),
    }
    .map_err(rsa)?;
    let (mut leaf, chain_der, _) = checked_leaf(&certs, covered, now_secs).map_err(rsa)?;
    judge_leaf_key(&leaf, limits).map_err(rsa)?;
    let key = match pair.form {
        Form::Pem => {
            keyref::parse(&pair.key, KeyRefMode::Off).map_err(|_| Invalid::RsaKeyNotPem)?;
            private_key(key_block(&pair.key).map_err(rsa)?, Some(&mut leaf)).map_err(rsa)?
        }
        Form::Der => KeyDer::parse(&pair.key)
            .ok_or(Invalid::RsaKeyNotPem)?
            .load_for(Some(&mut leaf))
            .map_err(|_| Invalid::RsaKeyNotPem)?,
    };
    let leaf_pub = leaf.public_key().map_err(|_| Invalid::RsaCrtNotPem)?;
    if !leaf_pub.public_eq(&key) {
        return Err(Invalid::RsaKeyMismatch);
    }
    judge_fetched_private_key(&key).map_err(rsa)?;
    let chain = parsed_chain(chain_der, interner, held).map_err(rsa)?;
    crate::chainsec::judge_chain(&leaf, &chain).map_err(rsa)?;
    precompute(&leaf);
    crate::leafkey::bind_checked(&mut leaf, &key, false);
    Ok((certs, Second { leaf, chain, key }))
}

/// The second pair's reason for a refusal of the primary pair's kind.
pub fn second_reason(e: Invalid) -> Invalid {
    match e {
        Invalid::CrtNotPem => Invalid::RsaCrtNotPem,
        Invalid::KeyNotPem | Invalid::KeyReference(_) => Invalid::RsaKeyNotPem,
        Invalid::NameNotCovered => Invalid::RsaNameNotCovered,
        Invalid::Expired => Invalid::RsaExpired,
        Invalid::NotYetValid => Invalid::RsaNotYetValid,
        Invalid::KeyTooWeak => Invalid::RsaKeyTooWeak,
        Invalid::KeyTooSlow => Invalid::RsaKeyTooSlow,
        Invalid::KeyCurve => Invalid::RsaKeyCurve,
        Invalid::KeyMismatch => Invalid::RsaKeyMismatch,
        Invalid::KeyExponent => Invalid::RsaKeyExponent,
        Invalid::KeyInconsistent => Invalid::RsaKeyInconsistent,
        Invalid::WeakSignature => Invalid::RsaWeakSignature,
        Invalid::ChainKeyTooWeak => Invalid::RsaChainKeyTooWeak,
        // A second pair is one ECDSA and one RSA certificate.
        Invalid::KeyType => Invalid::PairTypes,
        other => other,
    }
}

/// The leaf of a chain (first of `certs`), checked against the name
/// (`covered`) and the clock, with the rest of the chain and the leaf's
/// notAfter (UNIX seconds). Errors are the primary pair's; the second
/// pair maps them to its own.
fn checked_leaf<'a>(
    certs: &'a [Block],
    covered: &impl Fn(&X509) -> bool,
    now_secs: i64,
) -> Result<(X509, &'a [Block], i64), Invalid> {
    let (leaf_der, chain_der) = certs.split_first().ok_or(Invalid::CrtNotPem)?;
    let leaf = X509::from_der(&leaf_der.der).map_err(|_| Invalid::CrtNotPem)?;
    weight::judge_leaf(weight::names_of(&leaf)).map_err(heavy)?;
    if !covered(&leaf) {
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
    Ok((leaf, chain_der, not_after))
}

/// The intermediates parsed (each distinct one once, through `interner`
/// when given), as the stack the module installs; the holds on them are
/// added to `held`. Each is judged by [`weight::judge_intermediate`].
fn parsed_chain(
    chain_der: &[Block],
    interner: Option<&Interner>,
    held: &mut Vec<Held>,
) -> Result<Stack<X509>, Invalid> {
    let own;
    let interner = match interner {
        Some(i) => i,
        None => {
            own = Interner::default();
            &own
        }
    };
    let mut certs = Vec::with_capacity(chain_der.len());
    for b in chain_der {
        let h = interner.get_or_parse(&b.der).map_err(|e| match e {
            InternError::Parse => Invalid::CrtNotPem,
            InternError::Heavy(h) => heavy(h),
        })?;
        certs.push(h.cert().clone());
        held.push(h);
    }
    chain_stack(certs).map_err(|_| Invalid::CrtNotPem)
}

/// The refusal of a [`Heavy`] certificate or record.
pub fn heavy(h: Heavy) -> Invalid {
    match h {
        Heavy::Intermediate => Invalid::ChainTooHeavy,
        Heavy::LeafNames => Invalid::TooManyNames,
        Heavy::Record => Invalid::RecordTooHeavy,
    }
}

/// What a record's certificates weigh parsed: its leaf (and second leaf),
/// the intermediates it holds and its client CAs; refused over
/// [`weight::MAX_RECORD_WEIGHT`].
pub fn record_weight(
    leaf: Shape,
    second_leaf: Option<Shape>,
    held: &[Held],
    client_ca: Option<&ClientCa>,
) -> Result<usize, Invalid> {
    let cas = client_ca.map_or(&[][..], |c| c.certs.as_slice());
    let weight = std::iter::once(leaf)
        .chain(second_leaf)
        .chain(held.iter().map(|h| h.shape()))
        .chain(
            cas.iter()
                .map(|c| Shape::of(c, c.to_der().map_or(0, |d| d.len()))),
        )
        .fold(0usize, |w, s| w.saturating_add(s.weight()));
    weight::judge_record(weight).map_err(heavy)?;
    Ok(weight)
}

/// The intermediates as an OpenSSL stack (see [`ParsedCert::chain`]).
pub fn chain_stack(certs: Vec<X509>) -> Result<Stack<X509>, openssl::error::ErrorStack> {
    let mut stack = Stack::new()?;
    for c in certs {
        stack.push(c)?;
    }
    Ok(stack)
}

/// Has OpenSSL work out now, on the parse thread, what it would otherwise
/// work out on the event loop when the certificate is first installed
/// (`SSL_use_certificate` checks its signature's security level through
/// `X509_get_signature_info`): the certificate's extension cache, its
/// SHA-1 and every extension decoded, about 20 µs on OpenSSL 3.0.
/// `X509_get0_subject_key_id` fills that cache.
pub fn precompute(cert: &X509) {
    let _ = cert.subject_key_id();
}

/// A record's `allow` field, parsed.
fn allow_list(allow: Option<&[u8]>) -> Result<Option<Vec<Cidr>>, Invalid> {
    match allow {
        Some(a) => {
            let text = std::str::from_utf8(a).map_err(|_| Invalid::AllowInvalid)?;
            Ok(Some(parse_list(text).map_err(|_| Invalid::AllowInvalid)?))
        }
        None => Ok(None),
    }
}

/// The tenant policy of a record's raw `allow` and `client_ca` fields.
pub fn policy_of(allow: Option<&[u8]>, client_ca: Option<&[u8]>) -> Result<TenantPolicy, Invalid> {
    let client_ca = match client_ca {
        Some(pem) => Some(self::client_ca(&certificates(
            pem,
            Invalid::ClientCaNotPem,
            Invalid::ClientCaNotPem,
        )?)?),
        None => None,
    };
    Ok(TenantPolicy {
        allow: allow_list(allow)?,
        client_ca,
    })
}

/// The blocks of a certificate field (`crt`, `client_ca`): 1 to
/// `MAX_CHAIN_LEN` of them, all certificates.
fn certificates(pem: &[u8], not_pem: Invalid, too_many: Invalid) -> Result<Vec<Block>, Invalid> {
    let blocks = pem::parse(pem, MAX_CHAIN_LEN).map_err(|e| match e {
        PemError::Encrypted => Invalid::KeyEncrypted,
        PemError::TooManyBlocks => too_many,
        _ => not_pem,
    })?;
    if blocks.iter().any(|b| b.label != Label::Certificate) {
        return Err(not_pem);
    }
    Ok(blocks)
}

/// The one private key block of `key`, curve parameters skipped.
fn key_block(pem: &[u8]) -> Result<Block, Invalid> {
    let blocks = pem::parse(pem, MAX_KEY_BLOCKS).map_err(|e| match e {
        PemError::Encrypted => Invalid::KeyEncrypted,
        _ => Invalid::KeyNotPem,
    })?;
    let mut keys = blocks
        .into_iter()
        .filter(|b| b.label != Label::EcParameters);
    match (keys.next(), keys.next()) {
        (Some(key), None) => Ok(key),
        _ => Err(Invalid::KeyNotPem),
    }
}

/// Decodes a private key with the DER decoder its label names. Each of
/// them reads unencrypted keys only and never asks for a passphrase, unlike
/// the auto-detecting `d2i_AutoPrivateKey` and the PEM readers.
///
/// - `PRIVATE KEY`: `d2i_PKCS8_PRIV_KEY_INFO` and `EVP_PKCS82PKEY`
///   (<https://docs.openssl.org/3.0/man3/d2i_X509/>,
///   <https://docs.openssl.org/3.0/man3/EVP_PKCS82PKEY/>)
/// - `RSA PRIVATE KEY`: `d2i_RSAPrivateKey`
///   (<https://docs.openssl.org/3.0/man3/d2i_RSAPrivateKey/>)
/// - `EC PRIVATE KEY`: `d2i_ECPrivateKey`
///   (<https://docs.openssl.org/3.0/man3/d2i_ECPrivateKey/>)
///
/// A PKCS#8 RSA or named-curve EC key is unwrapped first (`der.rs`) and
/// goes through the last two, about 30 times cheaper on OpenSSL 3.0 than
/// its PKCS#8 decoder for the same key.
/// A PEM private key block, loaded into `leaf`'s own public key object
/// where that can be done ([`crate::leafkey::ec_key_in_leaf`]).
fn private_key(block: Block, leaf: Option<&mut X509>) -> Result<PKey<Private>, Invalid> {
    let key = match block.label {
        Label::PrivateKey => match unwrap_pkcs8(&block.der) {
            Some(Unwrapped::Sec1(sec1)) => load_sec1_for(&sec1, leaf),
            Some(Unwrapped::Pkcs1(pkcs1)) => {
                Rsa::private_key_from_der(&pkcs1).and_then(PKey::from_rsa)
            }
            None => PKey::private_key_from_pkcs8(&block.der),
        },
        Label::RsaPrivateKey => Rsa::private_key_from_der(&block.der).and_then(PKey::from_rsa),
        Label::EcPrivateKey => load_sec1_for(&block.der, leaf),
        _ => return Err(Invalid::KeyNotPem),
    };
    key.map_err(|_| Invalid::KeyNotPem)
}

/// True when one of the leaf's subjectAltName DNS entries satisfies `f`.
fn any_dns_name(leaf: &X509, f: impl Fn(&str) -> bool) -> bool {
    leaf.subject_alt_names()
        .is_some_and(|sans| sans.iter().filter_map(|gn| gn.dnsname()).any(f))
}

fn covers(leaf: &X509, name: &str) -> bool {
    any_dns_name(leaf, |dns| dns_name_matches(dns, name))
}

/// The same DNS name, case and one trailing dot aside (as in
/// [`dns_name_matches`]), with '*' compared as a plain character.
fn same_dns_name(a: &str, b: &str) -> bool {
    let a = a.strip_suffix('.').unwrap_or(a);
    let b = b.strip_suffix('.').unwrap_or(b);
    !a.is_empty() && a.eq_ignore_ascii_case(b)
}

/// SHA-256 over what a record is: its certificates' DER and its policy
/// fields, each length-prefixed. The same record in PEM or DER gives the
/// same fingerprint; any change of content does not.
///
/// The key is not hashed: it was checked to match the leaf's public key,
/// so the leaf names it. (Hashing a canonical encoding of the loaded key
/// would need `EVP_PKEY_get1_EC_KEY`, which makes OpenSSL 3.0 keep a legacy
/// copy of the key beside the provider one: 2 KiB per cached name.)
/// A key reference is hashed, though: the leaf does not say which token
/// object holds its key, and a changed reference must count as a change.
fn fingerprint_of(
    certs: &[Block],
    record: &Record,
    key_ref: Option<&str>,
    second: Option<&[Block]>,
) -> [u8; 32] {
    let mut h = openssl::sha::Sha256::new();
    let mut field = |v: Option<&[u8]>| match v {
        Some(v) => {
            h.update(&[1]);
            h.update(&(v.len() as u64).to_be_bytes());
            h.update(v);
        }
        None => h.update(&[0]),
    };
    field(Some(&(certs.len() as u64).to_be_bytes()));
    for c in certs {
        field(Some(&c.der));
    }
    field(record.allow.as_deref());
    field(record.client_ca.as_deref());
    // Only when there is one, so records with key material keep the
    // fingerprints they had.
    if let Some(r) = key_ref {
        field(Some(r.as_bytes()));
    }
    // Likewise: a second pair is hashed only when there is one, after a
    // marker no key reference field starts with.
    if let Some(second) = second {
        field(Some(b"second"));
        field(Some(&(second.len() as u64).to_be_bytes()));
        for c in second {
            field(Some(&c.der));
        }
    }
    h.finish()
}

/// The key of a record that validated, in its fastest DER form (what the
/// shared zone and a DER write-back store), read from the record itself.
/// Deriving it from the loaded key instead (`EVP_PKEY_get1_EC_KEY`) would make
/// OpenSSL 3.0 keep a legacy copy of the key (see [`fingerprint_of`]).
pub fn key_der(record: &Record) -> Option<KeyDer> {
    pair_key_der(&record.key, record.form)
}

/// [`key_der`] of one key field in `form` (the primary's or the second's).
pub fn pair_key_der(key: &[u8], form: Form) -> Option<KeyDer> {
    match form {
        Form::Der => KeyDer::parse(key),
        Form::Pem => {
            let block = key_block(key).ok()?;
            match block.label {
                Label::PrivateKey => Some(match unwrap_pkcs8(&block.der) {
                    Some(Unwrapped::Sec1(b)) => KeyDer::Sec1(b),
                    Some(Unwrapped::Pkcs1(b)) => KeyDer::Pkcs1(b),
                    None => KeyDer::Pkcs8(block.der),
                }),
                Label::RsaPrivateKey => Some(KeyDer::Pkcs1(block.der)),
                Label::EcPrivateKey => Some(KeyDer::Sec1(block.der)),
                _ => None,
            }
        }
    }
}

/// The `crt_der` and `key_der` fields of a validated certificate (its
/// chain's DER one after the other, its key in the fastest form): what
/// the API write-back and the `dyncert` CLI store beside the PEM.
pub fn der_form(cert: &ParsedCert, record: &Record) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut crt = cert.leaf.to_der().ok()?;
    for c in &cert.chain {
        crt.extend(c.to_der().ok()?);
    }
    let key = key_der(record)?;
    Some((crt, key.bytes().to_vec()))
}

/// The `crt_der_rsa` and `key_der_rsa` fields of a validated record with a
/// second pair, as [`der_form`].
pub fn second_der_form(cert: &ParsedCert, record: &Record) -> Option<(Vec<u8>, Vec<u8>)> {
    let (second, pair) = (cert.second.as_ref()?, record.second.as_ref()?);
    let mut crt = second.leaf.to_der().ok()?;
    for c in &second.chain {
        crt.extend(c.to_der().ok()?);
    }
    let key = pair_key_der(&pair.key, pair.form)?;
    Some((crt, key.bytes().to_vec()))
}

/// The certificates of a `crt_der` field.
fn der_certificates(der: &[u8]) -> Result<Vec<Block>, Invalid> {
    let certs = split_certificates(der, MAX_CHAIN_LEN).ok_or(Invalid::CrtNotPem)?;
    Ok(certs
        .into_iter()
        .map(|c| Block {
            label: Label::Certificate,
            der: c.to_vec(),
        })
        .collect())
}

fn client_ca(blocks: &[Block]) -> Result<ClientCa, Invalid> {
    let certs = blocks
        .iter()
        .map(|b| X509::from_der(&b.der).map_err(|_| Invalid::ClientCaNotPem))
        .collect::<Result<Vec<_>, _>>()?;
    // Each client certificate is checked against every subtree, on the
    // event loop: bounded here, on the parse thread.
    crate::clientca::judge(blocks.iter().map(|b| b.der.as_slice()))
        .map_err(|_| Invalid::ClientCaConstraints)?;
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
    //! Certificates made on the fly for unit tests: the test kit's
    //! self-signed leaves, as PEM where a record wants PEM.
    pub use dyncert_testkit::pki::{ec_key as key, self_signed as leaf};
    use openssl::pkey::{PKey, Private};
    use openssl::x509::X509;

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
    use dyncert_testkit::fixture::rsa_with_a_composite_factor;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::symm::Cipher;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn record(crt: Vec<u8>, key: Vec<u8>) -> Record {
        Record {
            form: crate::record::Form::Pem,
            crt,
            key,
            allow: None,
            client_ca: None,
            second: None,
        }
    }

    fn names(first: &str, n: usize) -> Vec<String> {
        std::iter::once(first.to_owned())
            .chain((1..n).map(|i| format!("p{i:04}.pad.example")))
            .collect()
    }

    fn leaf_of(sans: &[String], k: &PKey<Private>) -> X509 {
        let refs: Vec<&str> = sans.iter().map(String::as_str).collect();
        leaf(&refs, k, -1, 30)
    }

    /// A record for `name` with a leaf of `n` names and `chain`.
    fn heavy_record(name: &str, n: usize, chain: &[X509]) -> Record {
        let k = key();
        let mut crt = pem(&leaf_of(&names(name, n), &k));
        for c in chain {
            crt.extend(pem(c));
        }
        record(crt, key_pem(&k))
    }

    #[test]
    fn certificates_no_ca_issues_are_refused_as_too_heavy() {
        let n = "a.example.com";
        let ik = key();
        let int = |count| leaf_of(&names("int.example", count), &ik);
        let i = Interner::default();
        let v = |r: &Record| validate_shared(r, n, None, now(), &i).map(|p| p.weight);
        // The bounds themselves are accepted.
        let w = v(&heavy_record(n, weight::MAX_LEAF_NAMES, &[int(100)])).unwrap();
        assert!(w > 150 * 1024, "a 1,000-name leaf weighs {w}");
        assert_eq!(
            v(&heavy_record(n, weight::MAX_LEAF_NAMES + 1, &[])),
            Err(Invalid::TooManyNames)
        );
        assert_eq!(
            v(&heavy_record(n, 1, &[int(1), int(101)])),
            Err(Invalid::ChainTooHeavy)
        );
        // Over 8 KB of DER, whatever its names.
        let long: Vec<String> = std::iter::once("big.example".to_owned())
            .chain((0..60).map(|i| format!("{i:03}-{}.example", "x".repeat(150))))
            .collect();
        let big = leaf_of(&long, &ik);
        assert!(big.to_der().unwrap().len() > weight::MAX_INTERMEDIATE_DER);
        assert_eq!(v(&heavy_record(n, 1, &[big])), Err(Invalid::ChainTooHeavy));
        // Each within its bounds, too heavy together: a leaf of 1,000
        // names, 7 intermediates of 100, and the same again as the second
        // pair (an RSA leaf of 1,000 names).
        let chain: Vec<X509> = (0..7).map(|_| int(100)).collect();
        let mut r = heavy_record(n, weight::MAX_LEAF_NAMES, &chain);
        assert!(v(&r).is_ok(), "one pair fits");
        let rsa = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        let mut crt = pem(&leaf_of(&names(n, weight::MAX_LEAF_NAMES), &rsa));
        for c in &chain {
            crt.extend(pem(c));
        }
        r.second = Some(crate::record::Pair {
            form: crate::record::Form::Pem,
            crt,
            key: key_pem(&rsa),
        });
        assert_eq!(v(&r), Err(Invalid::RecordTooHeavy));
        assert_eq!(i.len(), 0, "nothing of a refused record is kept");
        // Without an interner (the CLI's validation), the same rules.
        assert_eq!(
            validate(&heavy_record(n, 1, &[int(101)]), n, now()).unwrap_err(),
            Invalid::ChainTooHeavy
        );
    }

    #[test]
    fn a_records_weight_counts_its_leaf_chain_and_client_cas() {
        let n = "a.example.com";
        let ik = key();
        let int = leaf(&["int.example"], &ik, -1, 300);
        let ca = leaf(&["ca.example"], &ik, -1, 300);
        let mut r = heavy_record(n, 1, std::slice::from_ref(&int));
        let chained = validate(&r, n, now()).unwrap();
        let leaf_w = weight::cert_weight(chained.leaf.to_der().unwrap().len(), 1);
        let int_w = weight::Shape::of(&int, int.to_der().unwrap().len()).weight();
        assert_eq!(chained.weight, leaf_w + int_w);
        r.client_ca = Some(pem(&ca));
        let with_ca = validate(&r, n, now()).unwrap();
        let ca_w = weight::Shape::of(&ca, ca.to_der().unwrap().len()).weight();
        assert_eq!(with_ca.weight, chained.weight + ca_w);
        assert_eq!(chained.held.len(), 1);
    }

    #[test]
    fn shared_validation_parses_each_intermediate_once() {
        use foreign_types::ForeignTypeRef;
        let ca = leaf(&["ca.example"], &key(), -1, 30);
        let interner = Interner::default();
        let mut chains = Vec::new();
        let mut parsed = Vec::new();
        for name in ["a.example.com", "b.example.com"] {
            let k = key();
            let mut crt = pem(&leaf(&[name], &k, -1, 30));
            crt.extend(pem(&ca));
            let p =
                validate_shared(&record(crt, key_pem(&k)), name, None, now(), &interner).unwrap();
            chains.push(p.chain.get(0).unwrap().as_ptr());
            parsed.push(p);
        }
        assert_eq!(chains[0], chains[1], "one parsed intermediate for both");
        assert_eq!(interner.len(), 1);
        // Shared while a record holds it; gone with the last one.
        drop(parsed.pop());
        assert_eq!(interner.len(), 1);
        drop(parsed.pop());
        assert_eq!(interner.len(), 0, "no record holds it any more");
        // The wildcard rule holds here too.
        let k = key();
        let narrow = record(pem(&leaf(&["shop.example.com"], &k, -1, 30)), key_pem(&k));
        assert_eq!(
            validate_shared(
                &narrow,
                "shop.example.com",
                Some("*.example.com"),
                now(),
                &interner
            )
            .unwrap_err(),
            Invalid::NameNotCovered
        );
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
        assert!(p.weight > 200);
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
    fn a_key_reference_is_refused_unless_allowed_and_never_read_as_a_path() {
        let leaf = leaf(&["shop.example.com"], &key(), -1, 30);
        let reference = b"engine:pkcs11:pkcs11:token=dyncert;object=shop".to_vec();
        let r = record(pem(&leaf), reference.clone());
        let refused = Invalid::KeyReference(RefError::Disabled);
        assert_eq!(
            validate(&r, "shop.example.com", now()).unwrap_err(),
            refused
        );
        let interner = Interner::default();
        let off = KeyRefConfig::default();
        let v = |r: &Record, refs: &KeyRefConfig| {
            validate_with_refs(r, "shop.example.com", None, now(), &interner, refs).unwrap_err()
        };
        assert_eq!(v(&r, &off), refused);
        assert_eq!(refused.label(), "key_reference_refused");
        let engine = KeyRefConfig {
            mode: KeyRefMode::Engine,
            module: Some("/nonexistent/libpkcs11.so".into()),
            ..KeyRefConfig::default()
        };
        let path = record(pem(&leaf), b"/etc/ssl/private/shop.key".to_vec());
        assert_eq!(
            v(&path, &engine),
            Invalid::KeyReference(RefError::NotAllowed)
        );
        // Allowed, but nothing to load it from: refused, never served.
        let failed = v(&r, &engine);
        assert!(
            matches!(
                failed,
                Invalid::KeyReferenceFailed | Invalid::KeyReferenceNoEngine
            ),
            "{failed:?}"
        );
        assert_eq!(failed.label(), "key_reference_failed");
    }

    #[test]
    fn a_token_that_does_not_answer_refuses_without_withdrawing_a_cached_key() {
        assert_eq!(
            keyref::LOAD_TIMEOUT,
            std::time::Duration::from_secs(2),
            "the reasons below say 2s"
        );
        for i in [Invalid::KeyReferenceTimeout, Invalid::KeyReferenceStuck] {
            assert_eq!(i.label(), "key_reference_timeout");
            assert!(i.as_str().contains("within 2s"), "{i:?}");
            // A token that hangs for a while is not a record that revokes
            // what the cached one grants: that one keeps being served.
            assert!(!Refusal::from(i).withdraws(), "{i:?}");
        }
    }

    #[test]
    fn a_changed_key_reference_is_a_changed_record() {
        let k = key();
        let crt = pem(&leaf(&["shop.example.com"], &k, -1, 30));
        let certs = certificates(&crt, Invalid::CrtNotPem, Invalid::ChainTooLong).unwrap();
        let r = record(crt.clone(), key_pem(&k));
        let plain = fingerprint_of(&certs, &r, None, None);
        let a = fingerprint_of(&certs, &r, Some("pkcs11:object=a"), None);
        let b = fingerprint_of(&certs, &r, Some("pkcs11:object=b"), None);
        assert_ne!(plain, a);
        assert_ne!(a, b);
        assert_eq!(a, fingerprint_of(&certs, &r, Some("pkcs11:object=a"), None));
        // Records with key material keep the fingerprint they always had.
        assert_eq!(
            plain,
            validate(&r, "shop.example.com", now()).unwrap().fingerprint
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
    fn fingerprint_follows_content_not_encoding() {
        let k = key();
        let l = leaf(&["shop.example.com"], &k, -1, 30);
        let base = record(pem(&l), key_pem(&k));
        let print = |r: &Record| validate(r, "shop.example.com", now()).unwrap().fingerprint;
        assert_eq!(print(&base), print(&base.clone()), "same record");
        // The same certificate and key as DER (SEC1 key), or with a
        // traditional PEM key: the same record.
        let der = Record {
            form: Form::Der,
            crt: l.to_der().unwrap(),
            key: k.ec_key().unwrap().private_key_to_der().unwrap(),
            allow: None,
            client_ca: None,
            second: None,
        };
        assert_eq!(print(&base), print(&der), "DER form");
        let traditional = record(pem(&l), k.ec_key().unwrap().private_key_to_pem().unwrap());
        assert_eq!(print(&base), print(&traditional), "traditional key");
        // Any change of content is another record.
        let mut with_allow = base.clone();
        with_allow.allow = Some(b"10.0.0.0/8".to_vec());
        let k2 = key();
        let other = record(pem(&leaf(&["shop.example.com"], &k2, -1, 30)), key_pem(&k2));
        let prints = [print(&base), print(&with_allow), print(&other)];
        for i in 0..prints.len() {
            for j in i + 1..prints.len() {
                assert_ne!(prints[i], prints[j], "records {i} and {j}");
            }
        }
    }

    #[test]
    fn a_records_key_der_is_read_from_the_record_in_its_fastest_form() {
        let ec = PKey::from_ec_key(ec()).unwrap();
        let rsa = PKey::from_rsa(rsa()).unwrap();
        let cases = [
            (Form::Pem, ec.private_key_to_pem_pkcs8().unwrap(), 1, &ec),
            (
                Form::Pem,
                ec.ec_key().unwrap().private_key_to_pem().unwrap(),
                1,
                &ec,
            ),
            (Form::Pem, rsa.private_key_to_pem_pkcs8().unwrap(), 2, &rsa),
            (
                Form::Pem,
                rsa.rsa().unwrap().private_key_to_pem().unwrap(),
                2,
                &rsa,
            ),
            (Form::Der, ec.private_key_to_pkcs8().unwrap(), 1, &ec),
        ];
        for (form, key, tag, original) in cases {
            let r = Record {
                form,
                crt: Vec::new(),
                key,
                allow: None,
                client_ca: None,
                second: None,
            };
            let k = key_der(&r).unwrap();
            assert_eq!(k.tag(), tag);
            assert!(k.load().unwrap().public_eq(original));
        }
    }

    #[test]
    fn der_records_validate_like_pem_ones() {
        let k = key();
        let l = leaf(&["shop.example.com"], &k, -1, 30);
        let ca = leaf(&["ca.example"], &key(), -1, 30);
        let der = |crt: Vec<u8>, key: Vec<u8>| Record {
            form: Form::Der,
            crt,
            key,
            allow: None,
            client_ca: None,
            second: None,
        };
        let chain = [l.to_der().unwrap(), ca.to_der().unwrap()].concat();
        let ok = validate(
            &der(chain.clone(), k.private_key_to_pkcs8().unwrap()),
            "shop.example.com",
            now(),
        )
        .unwrap();
        assert_eq!(ok.chain.len(), 1);
        let cases = [
            (
                der(b"junk".to_vec(), k.private_key_to_pkcs8().unwrap()),
                Invalid::CrtNotPem,
            ),
            (der(chain.clone(), b"junk".to_vec()), Invalid::KeyNotPem),
            (
                der(chain.clone(), key().private_key_to_pkcs8().unwrap()),
                Invalid::KeyMismatch,
            ),
            (
                der(
                    chain[..chain.len() - 1].to_vec(),
                    k.private_key_to_pkcs8().unwrap(),
                ),
                Invalid::CrtNotPem,
            ),
        ];
        for (r, want) in cases {
            assert_eq!(validate(&r, "shop.example.com", now()).unwrap_err(), want);
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

    fn shop_record(k: &PKey<Private>, key_pem: Vec<u8>) -> Record {
        record(pem(&leaf(&["shop.example.com"], k, -1, 30)), key_pem)
    }

    fn refusal(r: &Record) -> Invalid {
        validate(r, "shop.example.com", now()).unwrap_err()
    }

    fn rsa() -> Rsa<Private> {
        Rsa::generate(2048).unwrap()
    }

    fn ec() -> EcKey<Private> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        EcKey::generate(&group).unwrap()
    }

    /// `openssl ecparam -name prime256v1` output: the curve's OID.
    const P256_PARAMETERS: &[u8] =
        b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n";

    /// Every form of encrypted key, each with the refusal it must get.
    /// A PEM reader with OpenSSL's default password callback would prompt
    /// on all of them.
    fn encrypted_records() -> Vec<(&'static str, Record, Invalid)> {
        let pass = b"secret";
        let cipher = || Cipher::aes_256_cbc();
        let rsa = rsa();
        let rsa_pkey = PKey::from_rsa(rsa.clone()).unwrap();
        let ec = ec();
        let ec_pkey = PKey::from_ec_key(ec.clone()).unwrap();
        let pkcs8 = ec_pkey
            .private_key_to_pem_pkcs8_passphrase(cipher(), pass)
            .unwrap();
        let rsa_traditional = rsa.private_key_to_pem_passphrase(cipher(), pass).unwrap();
        let ec_traditional = ec.private_key_to_pem_passphrase(cipher(), pass).unwrap();
        for p in [&rsa_traditional, &ec_traditional] {
            assert!(String::from_utf8_lossy(p).contains("Proc-Type: 4,ENCRYPTED"));
        }
        let mislabelled = String::from_utf8(pkcs8.clone())
            .unwrap()
            .replace("ENCRYPTED PRIVATE KEY", "PRIVATE KEY");
        let mut crt_with_key = pem(&leaf(&["shop.example.com"], &ec_pkey, -1, 30));
        crt_with_key.extend_from_slice(&pkcs8);
        let mut with_ca = shop_record(&ec_pkey, key_pem(&ec_pkey));
        with_ca.client_ca = Some(pkcs8.clone());
        vec![
            (
                "encrypted PKCS#8",
                shop_record(&ec_pkey, pkcs8.clone()),
                Invalid::KeyEncrypted,
            ),
            (
                "encrypted traditional RSA",
                shop_record(&rsa_pkey, rsa_traditional),
                Invalid::KeyEncrypted,
            ),
            (
                "encrypted traditional EC",
                shop_record(&ec_pkey, ec_traditional),
                Invalid::KeyEncrypted,
            ),
            (
                "EncryptedPrivateKeyInfo labelled PRIVATE KEY",
                shop_record(&ec_pkey, mislabelled.into_bytes()),
                Invalid::KeyNotPem,
            ),
            (
                "encrypted key in crt",
                record(crt_with_key, key_pem(&ec_pkey)),
                Invalid::KeyEncrypted,
            ),
            ("encrypted key in client_ca", with_ca, Invalid::KeyEncrypted),
        ]
    }

    #[test]
    fn encrypted_keys_are_refused_with_their_own_reason() {
        for (what, r, want) in encrypted_records() {
            assert_eq!(refusal(&r), want, "{what}");
        }
        assert_eq!(Invalid::KeyEncrypted.label(), "encrypted_key");
        assert!(Invalid::KeyEncrypted
            .as_str()
            .contains("store it unencrypted"));
    }

    /// Set in the child process of the test below.
    const STDIN_CHILD: &str = "DYNCERT_TEST_ENCRYPTED_KEYS_CHILD";

    #[test]
    fn encrypted_keys_are_refused_without_reading_stdin() {
        if std::env::var_os(STDIN_CHILD).is_some() {
            for (what, r, want) in encrypted_records() {
                assert_eq!(refusal(&r), want, "{what}");
            }
            return;
        }
        // This test again, alone, in a child whose stdin is a pipe nobody
        // writes to, as nginx's may be: a passphrase prompt blocks it.
        let test = "validate::tests::encrypted_keys_are_refused_without_reading_stdin";
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--test-threads=1"])
            .env(STDIN_CHILD, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("validation still running after 60 s: waiting for a passphrase?");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn unencrypted_traditional_rsa_and_ec_keys_are_accepted() {
        let rsa = rsa();
        let r = shop_record(
            &PKey::from_rsa(rsa.clone()).unwrap(),
            rsa.private_key_to_pem().unwrap(),
        );
        assert!(String::from_utf8_lossy(&r.key).contains("BEGIN RSA PRIVATE KEY"));
        validate(&r, "shop.example.com", now()).unwrap();
        let ec = ec();
        let r = shop_record(
            &PKey::from_ec_key(ec.clone()).unwrap(),
            ec.private_key_to_pem().unwrap(),
        );
        assert!(String::from_utf8_lossy(&r.key).contains("BEGIN EC PRIVATE KEY"));
        validate(&r, "shop.example.com", now()).unwrap();
    }

    #[test]
    fn ec_parameters_before_the_key_are_skipped() {
        // As `openssl ecparam -genkey -name prime256v1` writes it.
        let ec = ec();
        let mut key = P256_PARAMETERS.to_vec();
        key.extend(ec.private_key_to_pem().unwrap());
        let r = shop_record(&PKey::from_ec_key(ec).unwrap(), key);
        validate(&r, "shop.example.com", now()).unwrap();
    }

    #[test]
    fn pkcs8_rsa_ec_and_ed25519_keys_are_accepted() {
        for k in [
            PKey::from_rsa(rsa()).unwrap(),
            PKey::from_ec_key(ec()).unwrap(),
            PKey::generate_ed25519().unwrap(),
        ] {
            let r = shop_record(&k, key_pem(&k));
            assert!(String::from_utf8_lossy(&r.key).contains("BEGIN PRIVATE KEY"));
            let p = validate(&r, "shop.example.com", now()).unwrap();
            assert_eq!(p.key.id(), k.id());
        }
    }

    #[test]
    fn key_field_must_hold_exactly_one_key() {
        let k = key();
        let mut two = key_pem(&k);
        two.extend(key_pem(&k));
        let mut params_only = P256_PARAMETERS.to_vec();
        params_only.extend_from_slice(P256_PARAMETERS);
        let leaf_pem = pem(&leaf(&["shop.example.com"], &k, -1, 30));
        let mut cert_and_key = leaf_pem.clone();
        cert_and_key.extend(key_pem(&k));
        for (what, key) in [
            ("two keys", two),
            ("parameters only", params_only),
            ("a certificate", leaf_pem),
            ("a certificate and a key", cert_and_key),
        ] {
            assert_eq!(refusal(&shop_record(&k, key)), Invalid::KeyNotPem, "{what}");
        }
    }

    #[test]
    fn certificate_fields_hold_only_certificates() {
        let k = key();
        let mut crt = pem(&leaf(&["shop.example.com"], &k, -1, 30));
        crt.extend(key_pem(&k));
        assert_eq!(refusal(&record(crt, key_pem(&k))), Invalid::CrtNotPem);
        let mut r = shop_record(&k, key_pem(&k));
        r.client_ca = Some(key_pem(&k));
        assert_eq!(refusal(&r), Invalid::ClientCaNotPem);
        r.client_ca =
            Some(b"-----BEGIN CERTIFICATE-----\nTWFu\n-----END CERTIFICATE-----\n".to_vec());
        assert_eq!(refusal(&r), Invalid::ClientCaNotPem, "not DER");
        r.client_ca = Some(pem(&leaf(&["ca.example"], &key(), -1, 30)));
        let p = validate(&r, "shop.example.com", now()).unwrap();
        assert_eq!(p.policy.client_ca.unwrap().certs.len(), 1);
    }

    #[test]
    fn junk_is_refused_before_the_leaf_is_looked_at() {
        let k = key();
        // Expired, for another name, with junk in the key: the key's PEM
        // is checked first.
        let old = leaf(&["other.example.com"], &k, -30, -1);
        assert_eq!(
            refusal(&record(pem(&old), b"junk".to_vec())),
            Invalid::KeyNotPem
        );
        // Names, then dates, come before the key is decoded.
        let other = leaf(&["other.example.com"], &k, -1, 30);
        assert_eq!(
            refusal(&record(pem(&other), key_pem(&key()))),
            Invalid::NameNotCovered
        );
        assert_eq!(
            refusal(&record(pem(&old), key_pem(&key()))),
            Invalid::NameNotCovered
        );
        let expired = leaf(&["shop.example.com"], &k, -30, -1);
        assert_eq!(
            refusal(&record(pem(&expired), key_pem(&key()))),
            Invalid::Expired
        );
    }

    #[test]
    fn wildcard_record_must_carry_the_wildcard_itself() {
        let k = key();
        let shop = leaf(&["shop.example.com"], &k, -1, 30);
        assert_eq!(
            validate_wildcard(
                &record(pem(&shop), key_pem(&k)),
                "*.example.com",
                "shop.example.com",
                now()
            )
            .unwrap_err(),
            Invalid::NameNotCovered,
            "would be served to every other name under example.com"
        );
        let both = leaf(&["shop.example.com", "*.EXAMPLE.com"], &k, -1, 30);
        let r = record(pem(&both), key_pem(&k));
        validate_wildcard(&r, "*.example.com", "shop.example.com", now()).unwrap();
        validate_wildcard(&r, "*.example.com", "blog.example.com", now()).unwrap();
    }

    #[test]
    fn wildcard_record_must_also_cover_the_name_asked_for() {
        let k = key();
        let wild = leaf(&["*.example.com"], &k, -1, 30);
        let r = record(pem(&wild), key_pem(&k));
        validate_wildcard(&r, "*.example.com", "shop.example.com", now()).unwrap();
        assert_eq!(
            validate_wildcard(&r, "*.example.com", "example.com", now()).unwrap_err(),
            Invalid::NameNotCovered
        );
        assert_eq!(
            validate_wildcard(&r, "*.shop.example.com", "a.shop.example.com", now()).unwrap_err(),
            Invalid::NameNotCovered
        );
        // Other checks still apply.
        assert_eq!(
            validate_wildcard(
                &record(pem(&wild), key_pem(&key())),
                "*.example.com",
                "shop.example.com",
                now()
            )
            .unwrap_err(),
            Invalid::KeyMismatch
        );
    }

    fn rsa_key() -> PKey<Private> {
        PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
    }

    /// A record for "shop.example.com" with `primary` as `crt`/`key` and
    /// `second` as `crt_rsa`/`key_rsa`, each a (leaf, key) pair.
    fn dual(primary: (&X509, &PKey<Private>), second: (&X509, &PKey<Private>)) -> Record {
        Record {
            second: Some(Pair {
                crt: pem(second.0),
                key: key_pem(second.1),
                form: Form::Pem,
            }),
            ..record(pem(primary.0), key_pem(primary.1))
        }
    }

    #[test]
    fn an_ecdsa_and_an_rsa_certificate_validate_together_either_way_round() {
        let (ek, rk) = (key(), rsa_key());
        let el = leaf(&["shop.example.com"], &ek, -1, 30);
        let rl = leaf(&["shop.example.com"], &rk, -1, 20);
        for (a, b) in [((&el, &ek), (&rl, &rk)), ((&rl, &rk), (&el, &ek))] {
            let r = dual(a, b);
            let p = validate(&r, "shop.example.com", now()).unwrap();
            let s = p.second.as_ref().expect("second certificate");
            assert!(s.key.public_eq(b.1));
            assert_eq!(
                KeyKind::of(&p.key).unwrap(),
                KeyKind::of(a.1).unwrap(),
                "the primary stays first"
            );
            // The record expires with its first certificate to expire.
            let rsa_end = unix_secs(rl.not_after()).unwrap() as u64 * 1000;
            assert_eq!(p.not_after_ms, rsa_end);
            // Both pairs are in the fingerprint.
            let single = validate(&record(pem(a.0), key_pem(a.1)), "shop.example.com", now());
            assert_ne!(p.fingerprint, single.unwrap().fingerprint);
            assert_eq!(
                p.fingerprint,
                validate(&r, "shop.example.com", now()).unwrap().fingerprint
            );
        }
    }

    #[test]
    fn a_bad_second_pair_refuses_the_record_with_its_own_reason() {
        let (ek, rk) = (key(), rsa_key());
        let el = leaf(&["shop.example.com"], &ek, -1, 30);
        let rl = leaf(&["shop.example.com"], &rk, -1, 30);
        let refused = |r: &Record| validate(r, "shop.example.com", now()).unwrap_err();
        // Key of another certificate.
        assert_eq!(
            refused(&dual((&el, &ek), (&rl, &rsa_key()))),
            Invalid::RsaKeyMismatch
        );
        // Two certificates of the same type.
        let ek2 = key();
        let el2 = leaf(&["shop.example.com"], &ek2, -1, 30);
        assert_eq!(refused(&dual((&el, &ek), (&el2, &ek2))), Invalid::PairTypes);
        let rk2 = rsa_key();
        let rl2 = leaf(&["shop.example.com"], &rk2, -1, 30);
        assert_eq!(refused(&dual((&rl, &rk), (&rl2, &rk2))), Invalid::PairTypes);
        // Another name.
        let other = leaf(&["blog.example.com"], &rk, -1, 30);
        assert_eq!(
            refused(&dual((&el, &ek), (&other, &rk))),
            Invalid::RsaNameNotCovered
        );
        // Expired, not yet valid.
        let old = leaf(&["shop.example.com"], &rk, -30, -1);
        assert_eq!(refused(&dual((&el, &ek), (&old, &rk))), Invalid::RsaExpired);
        let future = leaf(&["shop.example.com"], &rk, 2, 30);
        assert_eq!(
            refused(&dual((&el, &ek), (&future, &rk))),
            Invalid::RsaNotYetValid
        );
        // Garbage in either field.
        let mut r = dual((&el, &ek), (&rl, &rk));
        r.second.as_mut().unwrap().crt = b"junk".to_vec();
        assert_eq!(refused(&r), Invalid::RsaCrtNotPem);
        let mut r = dual((&el, &ek), (&rl, &rk));
        r.second.as_mut().unwrap().key = b"pkcs11:object=k".to_vec();
        assert_eq!(refused(&r), Invalid::RsaKeyNotPem, "no key reference");
        // Every label is distinct from the primary's.
        for i in [
            Invalid::RsaCrtNotPem,
            Invalid::RsaKeyNotPem,
            Invalid::RsaKeyMismatch,
            Invalid::RsaNameNotCovered,
            Invalid::RsaExpired,
            Invalid::RsaNotYetValid,
        ] {
            assert!(i.label().starts_with("rsa_") && i.as_str().contains("_rsa"));
        }
    }

    #[test]
    fn a_wildcard_records_second_certificate_must_carry_the_wildcard_too() {
        let (ek, rk) = (key(), rsa_key());
        let el = leaf(&["*.example.com"], &ek, -1, 30);
        let good = leaf(&["*.example.com"], &rk, -1, 30);
        let narrow = leaf(&["shop.example.com"], &rk, -1, 30);
        let r = dual((&el, &ek), (&good, &rk));
        assert!(validate_wildcard(&r, "*.example.com", "shop.example.com", now()).is_ok());
        let r = dual((&el, &ek), (&narrow, &rk));
        assert_eq!(
            validate_wildcard(&r, "*.example.com", "shop.example.com", now()).unwrap_err(),
            Invalid::RsaNameNotCovered
        );
    }

    #[test]
    fn a_der_second_pair_validates_and_gives_its_der_form() {
        let (ek, rk) = (key(), rsa_key());
        let el = leaf(&["shop.example.com"], &ek, -1, 30);
        let rl = leaf(&["shop.example.com"], &rk, -1, 30);
        let pem_record = dual((&el, &ek), (&rl, &rk));
        let p = validate(&pem_record, "shop.example.com", now()).unwrap();
        let (crt, key) = second_der_form(&p, &pem_record).unwrap();
        assert_eq!(crt, rl.to_der().unwrap());
        let mut der_record = pem_record.clone();
        der_record.second = Some(Pair {
            crt,
            key,
            form: Form::Der,
        });
        let d = validate(&der_record, "shop.example.com", now()).unwrap();
        assert_eq!(
            d.fingerprint, p.fingerprint,
            "same content, same fingerprint"
        );
        assert!(d.second.unwrap().key.public_eq(&rk));
    }

    /// The RSA-8192 key of `tests/key_strength.rs` (generating one takes
    /// ~15 s).
    const RSA_8192: &str = include_str!("../../tests/fixtures/rsa8192.key");

    fn rsa_8192() -> PKey<Private> {
        PKey::private_key_from_pem(RSA_8192.as_bytes()).unwrap()
    }

    fn rsa_bits(bits: u32) -> PKey<Private> {
        PKey::from_rsa(Rsa::generate(bits).unwrap()).unwrap()
    }

    fn ec_on(nid: Nid) -> PKey<Private> {
        PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(nid).unwrap()).unwrap())
            .unwrap()
    }

    /// A leaf for "shop.example.com" with `k`'s public key, decoded from
    /// its DER as every leaf validation sees is (a leaf built in memory
    /// keeps the key object it was given).
    fn decoded_leaf(k: &PKey<Private>) -> X509 {
        X509::from_der(&leaf(&["shop.example.com"], k, -1, 30).to_der().unwrap()).unwrap()
    }

    /// `check` of `r` for "shop.example.com" under `limits`.
    fn checked(r: &Record, limits: KeyLimits) -> Result<ParsedCert, Invalid> {
        check(r, now(), None, None, limits, |leaf| {
            covers(leaf, "shop.example.com")
        })
    }

    /// Why [`checked`] refuses a shop.example.com leaf of `leaf_key` with
    /// `key` as the record's key.
    fn key_refusal(leaf_key: &PKey<Private>, key: &PKey<Private>, limits: KeyLimits) -> Invalid {
        checked(&shop_record(leaf_key, key_pem(key)), limits).unwrap_err()
    }

    /// The chain's strength is judged (`crate::chainsec`), for the primary
    /// and the second pair: an RSA-1024 intermediate is refused with each
    /// pair's reason, an RSA-2048 one is not.
    #[test]
    fn a_chain_openssl_would_refuse_to_install_is_refused() {
        let rsa = |bits| PKey::from_rsa(Rsa::generate(bits).unwrap()).unwrap();
        let k = key();
        let with_int = |bits| {
            let mut crt = pem(&leaf(&["shop.example.com"], &k, -1, 30));
            crt.extend(pem(&leaf(&["int.example"], &rsa(bits), -1, 30)));
            crt
        };
        let d = KeyLimits::default();
        let r = record(with_int(1024), key_pem(&k));
        assert_eq!(checked(&r, d).unwrap_err(), Invalid::ChainKeyTooWeak);
        assert!(checked(&record(with_int(2048), key_pem(&k)), d).is_ok());
        // The same weak chain as a second (RSA) pair.
        let rk = rsa(2048);
        let mut crt_rsa = pem(&leaf(&["shop.example.com"], &rk, -1, 30));
        crt_rsa.extend(pem(&leaf(&["int.example"], &rsa(1024), -1, 30)));
        let mut r = record(with_int(2048), key_pem(&k));
        r.second = Some(Pair {
            form: crate::record::Form::Pem,
            crt: crt_rsa,
            key: key_pem(&rk),
        });
        assert_eq!(checked(&r, d).unwrap_err(), Invalid::RsaChainKeyTooWeak);
    }

    #[test]
    fn rsa_keys_are_served_from_2048_bits_to_the_limit_and_named_tls_curves_only() {
        let d = KeyLimits::default();
        assert_eq!(d.rsa_max_bits, 4096);
        let rsa = |bits| KeyShape::Rsa {
            bits,
            exponent: Some(65537),
        };
        for (shape, limits, want) in [
            (rsa(512), d, Err(Invalid::KeyTooWeak)),
            (rsa(1024), d, Err(Invalid::KeyTooWeak)),
            (rsa(2047), d, Err(Invalid::KeyTooWeak)),
            (rsa(2048), d, Ok(())),
            (rsa(3072), d, Ok(())),
            (rsa(4096), d, Ok(())),
            (rsa(4097), d, Err(Invalid::KeyTooSlow)),
            (rsa(8192), d, Err(Invalid::KeyTooSlow)),
            (rsa(15360), d, Err(Invalid::KeyTooSlow)),
            (rsa(8192), KeyLimits { rsa_max_bits: 8192 }, Ok(())),
            (
                rsa(8193),
                KeyLimits { rsa_max_bits: 8192 },
                Err(Invalid::KeyTooSlow),
            ),
            // The minimum holds whatever the maximum.
            (
                rsa(1024),
                KeyLimits {
                    rsa_max_bits: 16384,
                },
                Err(Invalid::KeyTooWeak),
            ),
            (KeyShape::Ec { tls_curve: true }, d, Ok(())),
            (KeyShape::Ec { tls_curve: false }, d, Err(Invalid::KeyCurve)),
            (KeyShape::EdDsa, d, Ok(())),
            (KeyShape::Other, d, Err(Invalid::KeyType)),
        ] {
            assert_eq!(judge_key(shape, limits), want, "{shape:?} {limits:?}");
        }
    }

    #[test]
    fn key_shapes_are_read_from_the_leafs_keys() {
        // As a leaf decodes them: the keys judged are the leaves' (a key
        // built with EC_KEY calls has no "encoding" parameter to read).
        let shape = |k: &PKey<Private>| KeyShape::of(&decoded_leaf(k).public_key().unwrap());
        let rsa = |bits| KeyShape::Rsa {
            bits,
            exponent: Some(65537),
        };
        assert_eq!(shape(&rsa_bits(2048)), rsa(2048));
        assert_eq!(shape(&rsa_8192()), rsa(8192));
        // review4's key: its 4094-bit exponent does not fit in 64 bits.
        assert_eq!(
            shape(&big_e_bad_crt()),
            KeyShape::Rsa {
                bits: 4096,
                exponent: None
            }
        );
        let e3 = PKey::from_rsa(Rsa::generate_with_e(2048, &BigNum::from_u32(3).unwrap()).unwrap())
            .unwrap();
        assert_eq!(
            shape(&e3),
            KeyShape::Rsa {
                bits: 2048,
                exponent: Some(3)
            }
        );
        for nid in [Nid::X9_62_PRIME256V1, Nid::SECP384R1, Nid::SECP521R1] {
            assert_eq!(
                shape(&ec_on(nid)),
                KeyShape::Ec { tls_curve: true },
                "{nid:?}"
            );
        }
        for nid in [Nid::SECP256K1, Nid::BRAINPOOL_P256R1, Nid::X9_62_PRIME192V1] {
            assert_eq!(
                shape(&ec_on(nid)),
                KeyShape::Ec { tls_curve: false },
                "{nid:?}"
            );
        }
        assert_eq!(shape(&PKey::generate_ed25519().unwrap()), KeyShape::EdDsa);
        // (The test kit's leaves are not signed with Ed448 keys.)
        assert_eq!(
            KeyShape::of(&PKey::generate_ed448().unwrap()),
            KeyShape::EdDsa
        );
        let dsa = openssl::dsa::Dsa::generate(2048).unwrap();
        assert_eq!(shape(&PKey::from_dsa(dsa).unwrap()), KeyShape::Other);
    }

    #[test]
    fn a_leaf_with_explicit_p256_parameters_is_refused() {
        use openssl::ec::Asn1Flag;
        let mut group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        group.set_asn1_flag(Asn1Flag::EXPLICIT_CURVE);
        let k = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let crt = decoded_leaf(&k);
        // The leaf's SubjectPublicKeyInfo carries the curve's parameters,
        // not its OID.
        let spki = crt.public_key().unwrap().public_key_to_der().unwrap();
        assert!(!spki
            .windows(8)
            .any(|w| w == [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]));
        assert_eq!(
            judge_leaf_key(&crt, KeyLimits::default()),
            Err(Invalid::KeyCurve)
        );
    }

    #[test]
    fn weak_slow_and_odd_keys_refuse_the_record_with_their_own_reasons() {
        let d = KeyLimits::default();
        let refused = |k: &PKey<Private>| key_refusal(k, k, d);
        assert_eq!(refused(&rsa_bits(1024)), Invalid::KeyTooWeak);
        assert_eq!(refused(&rsa_8192()), Invalid::KeyTooSlow);
        assert_eq!(refused(&ec_on(Nid::SECP256K1)), Invalid::KeyCurve);
        let dsa = PKey::from_dsa(openssl::dsa::Dsa::generate(2048).unwrap()).unwrap();
        assert_eq!(refused(&dsa), Invalid::KeyType);
        // Raised, the limit admits the RSA-8192 key.
        let big = rsa_8192();
        let raised = KeyLimits { rsa_max_bits: 8192 };
        checked(&shop_record(&big, key_pem(&big)), raised).unwrap();
        // Still served: RSA-2048 and -4096, the TLS curves, Ed25519.
        for k in [
            rsa_bits(2048),
            rsa_bits(4096),
            ec_on(Nid::SECP384R1),
            ec_on(Nid::SECP521R1),
            PKey::generate_ed25519().unwrap(),
        ] {
            checked(&shop_record(&k, key_pem(&k)), d).unwrap();
        }
        for i in [
            Invalid::KeyTooWeak,
            Invalid::KeyTooSlow,
            Invalid::KeyCurve,
            Invalid::KeyType,
        ] {
            assert!(i.as_str().contains("\"crt\""), "{i:?}");
        }
        assert!(Invalid::KeyTooSlow
            .as_str()
            .contains("dyncert_rsa_max_bits"));
    }

    #[test]
    fn the_leafs_key_is_judged_before_the_private_key_is_read() {
        // An RSA-8192 leaf with a key field that is another key, or junk
        // that has the shape of a key: refused for the leaf's key, whatever
        // the private key would have been, and before it is decoded.
        let big = rsa_8192();
        let crt = pem(&leaf(&["shop.example.com"], &big, -1, 30));
        let d = KeyLimits::default();
        let other = key();
        assert_eq!(
            checked(&record(crt.clone(), key_pem(&other)), d).unwrap_err(),
            Invalid::KeyTooSlow
        );
        let junk = b"-----BEGIN PRIVATE KEY-----\nTWFu\n-----END PRIVATE KEY-----\n".to_vec();
        assert_eq!(
            checked(&record(crt, junk), d).unwrap_err(),
            Invalid::KeyTooSlow
        );
        // A weak key that matches: still refused (the match check comes
        // after, it does not stand in for this one).
        let weak = rsa_bits(1024);
        assert_eq!(key_refusal(&weak, &weak, d), Invalid::KeyTooWeak);
    }

    #[test]
    fn a_second_pairs_weak_or_slow_key_refuses_with_the_second_pairs_reason() {
        let d = KeyLimits::default();
        let ek = key();
        let el = leaf(&["shop.example.com"], &ek, -1, 30);
        for (rk, want) in [
            (rsa_bits(1024), Invalid::RsaKeyTooWeak),
            (rsa_8192(), Invalid::RsaKeyTooSlow),
        ] {
            let rl = leaf(&["shop.example.com"], &rk, -1, 30);
            assert_eq!(checked(&dual((&el, &ek), (&rl, &rk)), d).unwrap_err(), want);
            // Either way round: as the primary, the primary's reason.
            let primary = match want {
                Invalid::RsaKeyTooWeak => Invalid::KeyTooWeak,
                _ => Invalid::KeyTooSlow,
            };
            assert_eq!(
                checked(&dual((&rl, &rk), (&el, &ek)), d).unwrap_err(),
                primary
            );
        }
        // An ECDSA second pair on another curve.
        let rk = rsa_key();
        let rl = leaf(&["shop.example.com"], &rk, -1, 30);
        let k1 = ec_on(Nid::SECP256K1);
        let l1 = leaf(&["shop.example.com"], &k1, -1, 30);
        assert_eq!(
            checked(&dual((&rl, &rk), (&l1, &k1)), d).unwrap_err(),
            Invalid::RsaKeyCurve
        );
        // A DSA second pair is not one of the two types.
        let dk = PKey::from_dsa(openssl::dsa::Dsa::generate(2048).unwrap()).unwrap();
        let dl = leaf(&["shop.example.com"], &dk, -1, 30);
        assert_eq!(
            checked(&dual((&el, &ek), (&dl, &dk)), d).unwrap_err(),
            Invalid::PairTypes
        );
        for i in [
            Invalid::RsaKeyTooWeak,
            Invalid::RsaKeyTooSlow,
            Invalid::RsaKeyCurve,
        ] {
            assert!(i.label().starts_with("rsa_") && i.as_str().contains("_rsa"));
        }
    }

    /// review4's RSA-4096 key: a 4094-bit public exponent, dmp1 and dmq1
    /// off by an XOR 2 (`tests/key_strength.rs`).
    const BIG_E_BAD_CRT: &str = include_str!("../../tests/fixtures/rsa4096-bige-badcrt.key");

    fn big_e_bad_crt() -> PKey<Private> {
        PKey::private_key_from_pem(BIG_E_BAD_CRT.as_bytes()).unwrap()
    }

    fn bn(n: &openssl::bn::BigNumRef) -> BigNum {
        n.to_owned().unwrap()
    }

    /// The key made of `k`'s numbers, unchecked, as a record's key field
    /// may hold them.
    fn key_of(k: &RsaNumbers) -> PKey<Private> {
        let rsa = Rsa::from_private_components(
            bn(&k.n),
            bn(&k.e),
            bn(&k.d),
            bn(&k.p),
            bn(&k.q),
            bn(&k.dp),
            bn(&k.dq),
            bn(&k.qinv),
        )
        .unwrap();
        PKey::from_rsa(rsa).unwrap()
    }

    fn plus(a: &BigNum, b: u32) -> BigNum {
        let mut r = BigNum::new().unwrap();
        r.checked_add(a, &BigNum::from_u32(b).unwrap()).unwrap();
        r
    }

    /// `k`'s numbers with `change` made to them.
    fn changed(k: &RsaNumbers, change: impl Fn(&mut RsaNumbers)) -> RsaNumbers {
        let mut c = RsaNumbers::of(&key_of(k)).unwrap();
        change(&mut c);
        c
    }

    #[test]
    fn rsa_exponents_are_odd_from_3_to_32_bits() {
        for (e, ok) in [
            (None, false),
            (Some(0), false),
            (Some(1), false),
            (Some(2), false),
            (Some(3), true),
            (Some(17), true),
            (Some(65537), true),
            (Some(65538), false),
            (Some(u64::from(u32::MAX)), true),
            (Some(u64::from(u32::MAX) + 2), false),
            (Some(u64::MAX), false),
        ] {
            assert_eq!(rsa_exponent_ok(e), ok, "{e:?}");
        }
        let d = KeyLimits::default();
        let rsa = |exponent| KeyShape::Rsa {
            bits: 2048,
            exponent,
        };
        assert_eq!(judge_key(rsa(Some(65537)), d), Ok(()));
        assert_eq!(judge_key(rsa(None), d), Err(Invalid::KeyExponent));
        assert_eq!(
            judge_key(rsa(Some(1 << 33 | 1)), d),
            Err(Invalid::KeyExponent)
        );
        // Size is judged first: the reason names what is most wrong.
        let huge = KeyShape::Rsa {
            bits: 8192,
            exponent: None,
        };
        assert_eq!(judge_key(huge, d), Err(Invalid::KeyTooSlow));
        assert_eq!(small(&BigNum::from_u32(65537).unwrap()), Some(65537));
        let mut two64 = BigNum::new().unwrap();
        two64.set_bit(64).unwrap();
        assert_eq!(small(&two64), None);
        two64.set_bit(64).unwrap();
        let mut max = BigNum::new().unwrap();
        max.checked_sub(&two64, &BigNum::from_u32(1).unwrap())
            .unwrap();
        assert_eq!(small(&max), Some(u64::MAX));
    }

    #[test]
    fn an_rsa_keys_crt_numbers_must_fit_its_modulus_and_exponents() {
        let good = RsaNumbers::of(&rsa_bits(2048)).unwrap();
        assert!(rsa_crt_consistent(&good));
        let one = BigNum::from_u32(1).unwrap();
        let phi = |k: &RsaNumbers| {
            let mut ctx = openssl::bn::BigNumContext::new().unwrap();
            let (mut p1, mut q1, mut phi) = (
                BigNum::new().unwrap(),
                BigNum::new().unwrap(),
                BigNum::new().unwrap(),
            );
            p1.checked_sub(&k.p, &one).unwrap();
            q1.checked_sub(&k.q, &one).unwrap();
            phi.checked_mul(&p1, &q1, &mut ctx).unwrap();
            phi
        };
        let cases: Vec<(&str, RsaNumbers)> = vec![
            ("dp off", changed(&good, |k| k.dp = plus(&k.dp, 2))),
            ("dq off", changed(&good, |k| k.dq = plus(&k.dq, 2))),
            ("qinv off", changed(&good, |k| k.qinv = plus(&k.qinv, 1))),
            ("qinv + p", changed(&good, |k| k.qinv = &k.qinv + &k.p)),
            ("n off", changed(&good, |k| k.n = plus(&k.n, 2))),
            (
                "e not d's inverse",
                changed(&good, |k| k.e = BigNum::from_u32(3).unwrap()),
            ),
            (
                "p = q",
                changed(&good, |k| {
                    k.p = bn(&k.q);
                }),
            ),
            (
                "p = 1",
                changed(&good, |k| k.p = BigNum::from_u32(1).unwrap()),
            ),
            ("d = 0", changed(&good, |k| k.d = BigNum::new().unwrap())),
            (
                // d and its CRT exponents agree and are e's inverse, but d
                // is over n: OpenSSL's non-CRT path would pay for its bits.
                "d + 2 phi",
                changed(&good, |k| {
                    let f = phi(k);
                    k.d = &(&k.d + &f) + &f;
                }),
            ),
            (
                // d's CRT exponents are d's, but d is not e's inverse: each
                // CRT signature fails OpenSSL's check.
                "d not e's inverse",
                changed(&good, |k| {
                    let mut ctx = openssl::bn::BigNumContext::new().unwrap();
                    let d = plus(&k.d, 2);
                    let (mut p1, mut q1) = (BigNum::new().unwrap(), BigNum::new().unwrap());
                    p1.checked_sub(&k.p, &one).unwrap();
                    q1.checked_sub(&k.q, &one).unwrap();
                    k.dp.nnmod(&d, &p1, &mut ctx).unwrap();
                    k.dq.nnmod(&d, &q1, &mut ctx).unwrap();
                    k.d = d;
                }),
            ),
        ];
        for (what, k) in &cases {
            assert!(!rsa_crt_consistent(k), "{what}");
        }
        // Each such key refuses its record (a leaf of the good key: the
        // same public numbers); the good one's numbers, made into a key the
        // same way, do not.
        let d = KeyLimits::default();
        let good_key = key_of(&good);
        checked(&shop_record(&good_key, key_pem(&good_key)), d).unwrap();
        for (what, k) in &cases {
            let want = match *what {
                // Public numbers changed: no longer the leaf's key.
                "n off" | "e not d's inverse" => continue,
                // Primes that are not the modulus's: another key's.
                "p = q" | "p = 1" => Invalid::KeyMismatch,
                _ => Invalid::KeyInconsistent,
            };
            let key = key_of(k);
            let got = key_refusal(&good_key, &key, d);
            if *what == "d + 2 phi" {
                // OpenSSL 3.5 already tells this key from the leaf's (its
                // d is over n): refused either way.
                assert!(
                    matches!(got, Invalid::KeyInconsistent | Invalid::KeyMismatch),
                    "{what}: {got:?}"
                );
                continue;
            }
            assert_eq!(got, want, "{what}");
        }
        // Another key's private numbers under this key's n and e: the
        // primes are not the modulus's.
        let other = RsaNumbers::of(&rsa_bits(2048)).unwrap();
        let forged = changed(&other, |k| {
            k.n = bn(&good.n);
            k.e = bn(&good.e);
        });
        assert!(!primes_of_modulus(&forged));
        let forged = key_of(&forged);
        assert_eq!(key_refusal(&good_key, &forged, d), Invalid::KeyMismatch);
    }

    #[test]
    fn review4s_key_is_refused_for_its_exponent_and_its_crt_for_itself() {
        let d = KeyLimits::default();
        let big = big_e_bad_crt();
        assert_eq!(key_refusal(&big, &big, d), Invalid::KeyExponent);
        // Its private key alone: the CRT fault and the exponent.
        let numbers = RsaNumbers::of(&big).unwrap();
        assert!(!rsa_crt_consistent(&numbers));
        assert_eq!(judge_private_key(&big), Err(Invalid::KeyExponent));
        // Its primes with e = 65537 and the same CRT fault.
        let fixed = changed(&numbers, |k| {
            let mut ctx = openssl::bn::BigNumContext::new().unwrap();
            let one = BigNum::from_u32(1).unwrap();
            let (mut p1, mut q1, mut phi) = (
                BigNum::new().unwrap(),
                BigNum::new().unwrap(),
                BigNum::new().unwrap(),
            );
            p1.checked_sub(&k.p, &one).unwrap();
            q1.checked_sub(&k.q, &one).unwrap();
            phi.checked_mul(&p1, &q1, &mut ctx).unwrap();
            k.e = BigNum::from_u32(65537).unwrap();
            k.d.mod_inverse(&k.e, &phi, &mut ctx).unwrap();
            k.dp.nnmod(&k.d, &p1, &mut ctx).unwrap();
            k.dq.nnmod(&k.d, &q1, &mut ctx).unwrap();
        });
        assert!(rsa_crt_consistent(&fixed));
        let good = key_of(&fixed);
        checked(&shop_record(&good, key_pem(&good)), d).unwrap();
        let bad = key_of(&changed(&fixed, |k| k.dp = plus(&k.dp, 2)));
        assert_eq!(key_refusal(&bad, &bad, d), Invalid::KeyInconsistent);
        // As a second pair: the second pair's reasons.
        let ek = key();
        let el = leaf(&["shop.example.com"], &ek, -1, 30);
        for (rk, want) in [
            (big.clone(), Invalid::RsaKeyExponent),
            (bad.clone(), Invalid::RsaKeyInconsistent),
        ] {
            let rl = leaf(&["shop.example.com"], &rk, -1, 30);
            assert_eq!(checked(&dual((&el, &ek), (&rl, &rk)), d).unwrap_err(), want);
        }
        assert_eq!(second_reason(Invalid::KeyExponent), Invalid::RsaKeyExponent);
        assert_eq!(
            second_reason(Invalid::KeyInconsistent),
            Invalid::RsaKeyInconsistent
        );
        // A second key whose primes are another modulus's.
        let rk = rsa_key();
        let rl = leaf(&["shop.example.com"], &rk, -1, 30);
        let mine = RsaNumbers::of(&rk).unwrap();
        let forged = key_of(&changed(&RsaNumbers::of(&rsa_bits(2048)).unwrap(), |k| {
            k.n = bn(&mine.n);
            k.e = bn(&mine.e);
        }));
        let mut r = dual((&el, &ek), (&rl, &rk));
        r.second.as_mut().unwrap().key = key_pem(&forged);
        assert_eq!(checked(&r, d).unwrap_err(), Invalid::RsaKeyMismatch);
        assert!(Invalid::RsaKeyExponent.label().starts_with("rsa_"));
        assert!(Invalid::RsaKeyInconsistent.as_str().contains("key_rsa"));
        assert!(Invalid::KeyInconsistent.as_str().contains("\"key\""));
    }

    #[test]
    fn an_rsa_key_without_crt_numbers_is_refused() {
        // n, e and d only: OpenSSL signs with it, without CRT.
        let full = RsaNumbers::of(&rsa_bits(2048)).unwrap();
        let bare = openssl::rsa::RsaPrivateKeyBuilder::new(bn(&full.n), bn(&full.e), bn(&full.d))
            .unwrap()
            .build();
        let bare = PKey::from_rsa(bare).unwrap();
        assert!(RsaNumbers::of(&bare).is_none());
        assert_eq!(judge_private_key(&bare), Err(Invalid::KeyInconsistent));
    }

    #[test]
    fn rsa_numbers_are_read_from_legacy_and_provider_keys_alike() {
        let legacy = rsa_bits(2048);
        let der = legacy.private_key_to_pkcs8().unwrap();
        let provider = PKey::private_key_from_pkcs8(&der).unwrap();
        for k in [&legacy, &provider] {
            let n = RsaNumbers::of(k).unwrap();
            assert!(rsa_crt_consistent(&n));
            assert_eq!(judge_private_key(k), Ok(()));
        }
        // Other keys have nothing to judge here.
        assert_eq!(judge_private_key(&key()), Ok(()));
        assert_eq!(
            judge_private_key(&PKey::generate_ed25519().unwrap()),
            Ok(())
        );
    }

    #[test]
    fn judging_an_rsa_keys_crt_numbers_costs_microseconds() {
        // The largest modulus dyncert_rsa_max_bits admits is 16384 bits;
        // RSA-8192 here (generated keys that size take minutes).
        let k = RsaNumbers::of(&rsa_8192()).unwrap();
        let start = Instant::now();
        for _ in 0..100 {
            assert!(rsa_crt_consistent(&k));
        }
        let each = start.elapsed() / 100;
        println!("rsa_crt_consistent, RSA-8192: {each:?}");
        assert!(each < Duration::from_millis(2), "{each:?}");
    }

    #[test]
    fn an_rsa_key_whose_factor_is_not_prime_is_refused_over_2048_bits() {
        let d = KeyLimits::default();
        for bits in [3072, 4096] {
            let bad = rsa_with_a_composite_factor(bits);
            let k = RsaNumbers::of(&bad).unwrap();
            // What the products and remainders cannot see.
            assert!(rsa_crt_consistent(&k), "{bits}");
            assert!(primes_of_modulus(&k), "{bits}");
            assert!(!rsa_crt_inverts(&k), "{bits}");
            assert_eq!(
                judge_fetched_private_key(&bad),
                Err(Invalid::KeyInconsistent)
            );
            // A shared zone's load does not try it again (it holds only
            // keys a fetch judged).
            assert_eq!(judge_private_key(&bad), Ok(()));
            assert_eq!(
                key_refusal(&bad, &bad, d),
                Invalid::KeyInconsistent,
                "{bits}"
            );
            // The second "prime" the product: refused as well.
            let swapped = key_of(&changed(&k, |k| {
                let mut ctx = openssl::bn::BigNumContext::new().unwrap();
                std::mem::swap(&mut k.p, &mut k.q);
                std::mem::swap(&mut k.dp, &mut k.dq);
                k.qinv.mod_inverse(&k.q, &k.p, &mut ctx).unwrap();
            }));
            assert_eq!(
                judge_fetched_private_key(&swapped),
                Err(Invalid::KeyInconsistent)
            );
            // As a second pair: the second pair's reason.
            let ek = key();
            let el = leaf(&["shop.example.com"], &ek, -1, 30);
            let rl = leaf(&["shop.example.com"], &bad, -1, 30);
            assert_eq!(
                checked(&dual((&el, &ek), (&rl, &bad)), d).unwrap_err(),
                Invalid::RsaKeyInconsistent
            );
        }
        // RSA-2048 is spared the exponentiation (such a key costs about an
        // honest RSA-4096 signature, which the default limit admits).
        let small = rsa_with_a_composite_factor(2048);
        assert!(!rsa_crt_inverts(&RsaNumbers::of(&small).unwrap()));
        assert_eq!(judge_fetched_private_key(&small), Ok(()));
        // Factors of 3 or less leave no number to try.
        let honest = RsaNumbers::of(&rsa_bits(2048)).unwrap();
        let tiny = changed(&honest, |k| k.q = BigNum::from_u32(3).unwrap());
        assert!(!rsa_crt_inverts(&tiny));
        // An even "prime" cannot be tried in Montgomery form: refused too.
        let even = changed(&honest, |k| k.p = plus(&k.p, 1));
        assert!(!rsa_crt_inverts(&even));
    }

    #[test]
    fn honest_rsa_keys_invert_and_trying_one_costs_about_a_signature() {
        let d = KeyLimits::default();
        let honest = rsa_bits(4096);
        let k = RsaNumbers::of(&honest).unwrap();
        // Each call draws its own x.
        for _ in 0..20 {
            assert!(rsa_crt_inverts(&k));
        }
        assert_eq!(judge_fetched_private_key(&honest), Ok(()));
        checked(&shop_record(&honest, key_pem(&honest)), d).unwrap();
        let provider =
            PKey::private_key_from_pkcs8(&honest.private_key_to_pkcs8().unwrap()).unwrap();
        assert_eq!(judge_fetched_private_key(&provider), Ok(()));
        for (what, key) in [("RSA-4096", honest), ("RSA-8192", rsa_8192())] {
            let k = RsaNumbers::of(&key).unwrap();
            let start = Instant::now();
            for _ in 0..20 {
                assert!(rsa_crt_inverts(&k));
            }
            let each = start.elapsed() / 20;
            let mut signer =
                openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
            let start = Instant::now();
            for _ in 0..20 {
                signer.sign_oneshot_to_vec(b"hello").unwrap();
            }
            let sign = start.elapsed() / 20;
            println!("rsa_crt_inverts, {what}: {each:?} (a signature: {sign:?})");
            assert!(
                each < sign * 3 + Duration::from_millis(5),
                "{what}: {each:?}"
            );
        }
    }
}
