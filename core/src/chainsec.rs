//! Whether OpenSSL will install a record's certificates: the strength of
//! every signature and of every intermediate's key.
//!
//! `SSL_use_cert_and_key` (in every handshake, in the certificate
//! callback) runs OpenSSL's security check (`ssl_security_cert`) on the
//! leaf and on every intermediate it is given: the certificate's public key
//! must have at least the security level's bits
//! (`EVP_PKEY_get_security_bits`), and so must its signature
//! (`X509_get_signature_info`: SHA-1 counts 63 bits, MD5 39, SHA-256 128,
//! an algorithm OpenSSL does not know fails), except a self-signed
//! certificate's signature, which is not judged. A record that fails it
//! cannot be served: left to the handshake, every handshake with its name
//! would fail. So validation refuses it, with the same measures, on the
//! parse thread and again when the shared zone is loaded:
//! [`Invalid::WeakSignature`] (the leaf's or an intermediate's signature)
//! and [`Invalid::ChainKeyTooWeak`] (an intermediate's key).
//!
//! The leaf's own key is [`crate::validate::judge_key`]'s, which is
//! stricter: every key it admits has at least [`MIN_SECURITY_BITS`]
//! (RSA of 2048 bits and more: 112 and more; P-256 128; Ed25519 128).
//!
//! **The level judged is 2 ([`MIN_SECURITY_BITS`] = 112), fixed.** It is
//! the default of Debian's OpenSSL and of OpenSSL from 3.2, and the level
//! [`crate::validate::RSA_MIN_BITS`] already holds records' keys to, in
//! every process that validates (workers, shared-zone loads, the CLI) with
//! no configuration to carry. A server whose `ssl_ciphers` lowers the level
//! (`@SECLEVEL=1`) still has SHA-1 and MD5 refused (they are under level
//! 1's 80 bits too); an RSA-1024 intermediate, which level 1 would install,
//! is refused anyway (no public CA has issued one for a decade). A server
//! that raises it (`@SECLEVEL=3`) refuses at install what this admits
//! (an RSA-2048 leaf): that is the shell's install failure, logged at
//! `warn` once per name per 10 s ([`InstallLog`]) and counted.

use std::collections::HashMap;
use std::ffi::c_int;

use foreign_types::ForeignTypeRef;
use openssl::x509::X509Ref;
use openssl_sys as ffi;

use crate::clock::Millis;
use crate::ratelimit::LogLimiter;
use crate::validate::Invalid;

extern "C" {
    // In libcrypto since 1.1.1; not declared by openssl-sys.
    fn X509_get_signature_info(
        x: *mut ffi::X509,
        mdnid: *mut c_int,
        pknid: *mut c_int,
        secbits: *mut c_int,
        flags: *mut u32,
    ) -> c_int;
}

/// Security level 2's bits: the fewest a signature or an intermediate's
/// key may have (see the module's documentation for why level 2).
pub const MIN_SECURITY_BITS: i32 = 112;

/// OpenSSL's flag of a self-signed certificate (`EXFLAG_SS`, x509v3.h).
const EXFLAG_SS: u32 = 0x2000;

/// What OpenSSL's check reads of a certificate's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// Self-signed: not judged.
    SelfSigned,
    /// The signature's security bits.
    Bits(i32),
    /// An algorithm OpenSSL cannot rate (it refuses such a certificate).
    Unknown,
}

/// What OpenSSL's check reads of one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strength {
    /// Security bits of its public key; None when it cannot be decoded.
    pub key_bits: Option<i32>,
    pub signature: Signature,
}

fn strong_enough(s: Signature, min_bits: i32) -> bool {
    match s {
        Signature::SelfSigned => true,
        Signature::Bits(b) => b >= min_bits,
        Signature::Unknown => false,
    }
}

/// The rule: the leaf's signature (`leaf`), and the key and signature of
/// every intermediate, must have `min_bits` (OpenSSL's order: each
/// certificate's key before its signature, the leaf first).
pub fn judge(
    leaf: Signature,
    intermediates: impl IntoIterator<Item = Strength>,
    min_bits: i32,
) -> Result<(), Invalid> {
    if !strong_enough(leaf, min_bits) {
        return Err(Invalid::WeakSignature);
    }
    for s in intermediates {
        if s.key_bits.is_none_or(|b| b < min_bits) {
            return Err(Invalid::ChainKeyTooWeak);
        }
        if !strong_enough(s.signature, min_bits) {
            return Err(Invalid::WeakSignature);
        }
    }
    Ok(())
}

/// What OpenSSL's check reads of `cert`'s signature. Also fills the
/// certificate's extension cache, which the first install would otherwise
/// fill on the event loop. The one `unsafe` of this module: two read-only
/// calls on a live certificate.
#[allow(unsafe_code)]
pub fn signature_of(cert: &X509Ref) -> Signature {
    let mut secbits: c_int = -1;
    // SAFETY: cert is a live X509 (the reference guarantees it); OpenSSL
    // only reads it and its lazily filled, locked extension cache; the out
    // pointers are ours or null, which it accepts.
    let ok = unsafe {
        X509_get_signature_info(
            cert.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut secbits,
            std::ptr::null_mut(),
        )
    };
    // SAFETY: as above; the flags were computed by the call before.
    let flags = unsafe { ffi::X509_get_extension_flags(cert.as_ptr()) };
    if flags & EXFLAG_SS != 0 {
        Signature::SelfSigned
    } else if ok == 1 {
        Signature::Bits(secbits)
    } else {
        Signature::Unknown
    }
}

/// What OpenSSL's check reads of `cert`.
pub fn strength_of(cert: &X509Ref) -> Strength {
    let key_bits = cert.public_key().ok().map(|k| k.security_bits() as i32);
    Strength {
        key_bits,
        signature: signature_of(cert),
    }
}

/// [`judge`] at level 2 of a leaf and its intermediates, the primary
/// pair's reasons (the second pair maps them to its own).
pub fn judge_chain<'a>(
    leaf: &X509Ref,
    intermediates: impl IntoIterator<Item = &'a X509Ref>,
) -> Result<(), Invalid> {
    judge(
        signature_of(leaf),
        intermediates.into_iter().map(strength_of),
        MIN_SECURITY_BITS,
    )
}

/// Shortest time between two log lines about one name's install failures.
pub const INSTALL_LOG_INTERVAL_MS: Millis = 10_000;
/// Most names remembered; beyond them, lines about other names share one
/// limiter of the same interval.
const INSTALL_LOG_NAMES: usize = 256;

/// The rate limit of the shell's install failure lines: at most one per
/// name per [`INSTALL_LOG_INTERVAL_MS`], with the failures left unlogged
/// since (each is counted anyway).
#[derive(Debug)]
pub struct InstallLog {
    last: HashMap<Box<str>, (Millis, u64)>,
    overflow: LogLimiter,
}

impl Default for InstallLog {
    fn default() -> Self {
        InstallLog {
            last: HashMap::new(),
            overflow: LogLimiter::new(INSTALL_LOG_INTERVAL_MS),
        }
    }
}

impl InstallLog {
    /// Some(failures not logged since the last line) when a line about
    /// `name` may be written at `now`; None when it is held back.
    pub fn allow(&mut self, name: &str, now: Millis) -> Option<u64> {
        let due = |at: Millis| now < at || now - at >= INSTALL_LOG_INTERVAL_MS;
        if let Some((at, held)) = self.last.get_mut(name) {
            if !due(*at) {
                *held = held.saturating_add(1);
                return None;
            }
            *at = now;
            return Some(std::mem::take(held));
        }
        if self.last.len() >= INSTALL_LOG_NAMES {
            self.last.retain(|_, (at, _)| !due(*at));
        }
        if self.last.len() >= INSTALL_LOG_NAMES {
            return self.overflow.allow(now);
        }
        self.last.insert(name.into(), (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dyncert_testkit::fixture::{rsa, xname};
    use dyncert_testkit::pki::ec_key as p256;
    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::pkey::{PKey, Private};
    use openssl::ssl::{Ssl, SslContext, SslMethod};
    use openssl::x509::X509;

    const GOOD: Strength = Strength {
        key_bits: Some(128),
        signature: Signature::Bits(128),
    };

    #[test]
    fn the_rule_judges_the_leafs_signature_and_each_intermediates_key_and_signature() {
        let m = MIN_SECURITY_BITS;
        assert_eq!(judge(Signature::Bits(128), [GOOD, GOOD], m), Ok(()));
        assert_eq!(judge(Signature::Bits(112), [], m), Ok(()));
        assert_eq!(judge(Signature::SelfSigned, [], m), Ok(()));
        for weak in [
            Signature::Bits(111),
            Signature::Bits(63),
            Signature::Unknown,
        ] {
            assert_eq!(judge(weak, [GOOD], m), Err(Invalid::WeakSignature));
            let int = Strength {
                signature: weak,
                ..GOOD
            };
            assert_eq!(
                judge(Signature::Bits(128), [GOOD, int], m),
                Err(Invalid::WeakSignature)
            );
        }
        for key_bits in [Some(80), Some(111), Some(0), Some(-1), None] {
            let int = Strength { key_bits, ..GOOD };
            assert_eq!(
                judge(Signature::Bits(128), [int], m),
                Err(Invalid::ChainKeyTooWeak),
                "{key_bits:?}"
            );
        }
        // A self-signed intermediate's signature is not judged, its key is.
        let root = Strength {
            key_bits: Some(128),
            signature: Signature::SelfSigned,
        };
        assert_eq!(judge(Signature::Bits(128), [root], m), Ok(()));
        // The key before the signature, as OpenSSL reports it.
        let both = Strength {
            key_bits: Some(40),
            signature: Signature::Bits(40),
        };
        assert_eq!(
            judge(Signature::Bits(128), [both], m),
            Err(Invalid::ChainKeyTooWeak)
        );
    }

    /// `cn`'s certificate for `key`, signed by `signer` (named `issuer`).
    fn cert(
        cn: &str,
        key: &PKey<Private>,
        issuer: &str,
        signer: &PKey<Private>,
        md: MessageDigest,
    ) -> X509 {
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&xname(cn)).unwrap();
        b.set_issuer_name(&xname(issuer)).unwrap();
        b.set_pubkey(key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.sign(signer, md).unwrap();
        b.build()
    }

    /// Whether OpenSSL at security level 2 installs `leaf` with `chain`.
    fn installs(leaf: &X509, key: &PKey<Private>, chain: &[&X509]) -> bool {
        let mut ctx = SslContext::builder(SslMethod::tls_server()).unwrap();
        ctx.set_security_level(2);
        let ctx = ctx.build();
        let mut ssl = Ssl::new(&ctx).unwrap();
        let mut ok = ssl.set_certificate(leaf).is_ok() && ssl.set_private_key(key).is_ok();
        for c in chain {
            ok = ok && ssl.add_chain_cert((*c).clone()).is_ok();
        }
        let _ = openssl::error::ErrorStack::get();
        ok
    }

    /// The measures are OpenSSL's: for real certificates the rule agrees
    /// with what OpenSSL at level 2 installs. (`add_chain_cert` runs the
    /// same `ssl_security_cert` on each intermediate as
    /// `SSL_use_cert_and_key` does.)
    #[test]
    fn the_rule_refuses_what_openssl_refuses_to_install_and_nothing_else() {
        let sha256 = MessageDigest::sha256;
        let (ik, k) = (p256(), p256());
        let int = cert("int", &ik, "root", &p256(), sha256());
        type Case = (
            &'static str,
            X509,
            PKey<Private>,
            Vec<X509>,
            Result<(), Invalid>,
        );
        let cases: Vec<Case> = vec![
            (
                "sha256 leaf",
                cert("a", &k, "int", &ik, sha256()),
                k.clone(),
                vec![int.clone()],
                Ok(()),
            ),
            (
                "sha1 leaf",
                cert("a", &k, "int", &ik, MessageDigest::sha1()),
                k.clone(),
                vec![int.clone()],
                Err(Invalid::WeakSignature),
            ),
            {
                let (rk, lk) = (rsa(2048), rsa(2048));
                (
                    "md5 leaf",
                    cert("a", &lk, "rsa int", &rk, MessageDigest::md5()),
                    lk,
                    vec![],
                    Err(Invalid::WeakSignature),
                )
            },
            (
                "sha1 intermediate",
                cert("a", &k, "int", &ik, sha256()),
                k.clone(),
                vec![cert("int", &ik, "root", &p256(), MessageDigest::sha1())],
                Err(Invalid::WeakSignature),
            ),
            {
                let wk = rsa(1024);
                (
                    "rsa-1024 intermediate",
                    cert("a", &k, "weak", &wk, sha256()),
                    k.clone(),
                    vec![cert("weak", &wk, "weak", &wk, sha256())],
                    Err(Invalid::ChainKeyTooWeak),
                )
            },
            {
                let wk = rsa(2048);
                (
                    "rsa-2048 intermediate, self-signed with sha1",
                    cert("a", &k, "ok", &wk, sha256()),
                    k.clone(),
                    vec![cert("ok", &wk, "ok", &wk, MessageDigest::sha1())],
                    Ok(()),
                )
            },
            (
                "self-signed sha1 leaf",
                cert("a", &k, "a", &k, MessageDigest::sha1()),
                k.clone(),
                vec![],
                Ok(()),
            ),
        ];
        for (what, leaf, key, chain, expected) in cases {
            assert_eq!(
                judge_chain(&leaf, chain.iter().map(|c| &**c)),
                expected,
                "{what}"
            );
            let refs: Vec<&X509> = chain.iter().collect();
            assert_eq!(installs(&leaf, &key, &refs), expected.is_ok(), "{what}");
        }
    }

    /// The leaf's own key is left to `judge_key`: everything it admits
    /// has level 2's bits.
    #[test]
    fn every_leaf_key_judge_key_admits_has_level_2s_bits() {
        use crate::validate::{judge_key, KeyLimits, KeyShape};
        // As validation sees them: a parsed certificate's public key.
        let public = |k: &PKey<Private>| {
            let md = match k.id() {
                openssl::pkey::Id::ED25519 => MessageDigest::null(),
                _ => MessageDigest::sha256(),
            };
            let der = cert("k", k, "k", k, md).to_der().unwrap();
            X509::from_der(&der).unwrap().public_key().unwrap()
        };
        let ed = PKey::generate_ed25519().unwrap();
        for key in [rsa(2048), p256(), ed] {
            let key = public(&key);
            let shape = KeyShape::of(&key);
            assert_eq!(judge_key(shape, KeyLimits::default()), Ok(()), "{shape:?}");
            assert!(key.security_bits() as i32 >= MIN_SECURITY_BITS, "{shape:?}");
        }
        let shape = KeyShape::of(&public(&rsa(2040)));
        assert!(judge_key(shape, KeyLimits::default()).is_err());
    }

    #[test]
    fn install_failures_are_logged_once_per_name_per_interval() {
        let mut l = InstallLog::default();
        assert_eq!(l.allow("a", 1_000), Some(0));
        assert_eq!(l.allow("a", 1_001), None);
        assert_eq!(l.allow("b", 1_002), Some(0), "names are limited apart");
        assert_eq!(l.allow("a", 10_999), None);
        assert_eq!(l.allow("a", 11_000), Some(2));
        assert_eq!(l.allow("a", 11_001), None);
        // A clock stepped back does not mute a name.
        assert_eq!(l.allow("a", 500), Some(1));
    }

    #[test]
    fn the_install_log_is_bounded_and_still_logs_when_full() {
        let mut l = InstallLog::default();
        for i in 0..INSTALL_LOG_NAMES {
            assert_eq!(l.allow(&format!("n{i}"), 1_000), Some(0));
        }
        // Full of recent names: others share one limiter.
        assert_eq!(l.allow("x", 2_000), Some(0));
        assert_eq!(l.allow("y", 2_001), None);
        assert_eq!(l.last.len(), INSTALL_LOG_NAMES);
        // Once those are old, they make room.
        assert_eq!(l.allow("z", 12_000), Some(0));
        assert_eq!(l.last.len(), 1);
    }
}
