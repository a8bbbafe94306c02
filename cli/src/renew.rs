//! `renew`: every record of the expiry index that is due is issued again
//! through `issue`'s own path ([`acme::issue`]), for the names its leaf
//! carries and with its policy fields. Candidates come from the index
//! only (ZRANGEBYSCORE, never SCAN or KEYS): a record the index does not
//! name is never touched.
//!
//! When the CA's directory offers ACME Renewal Information (RFC 9773),
//! its suggested window decides instead of the lifetime rule, and the new
//! order names the certificate it replaces. It is asked only from half a
//! certificate's lifetime on (or once the lifetime rule calls it due):
//! see [`ari_worth_asking`].

use std::collections::HashMap;

use dyncert_core::timefmt::rfc3339;
use dyncert_core::{keyref, keywrap};
use instant_acme::CertificateIdentifier;

use crate::acme;
use crate::cert::{days_left, now_secs, stored_leaf, StoredLeaf};
use crate::dns01::base64url_encode;
use crate::due::{
    ari_due_from, ari_worth_asking, der_serial, due_from, jitter, renewal_names, Window,
};
use crate::error::CliError;
use crate::store::{Expect, Store};

pub struct Options {
    pub window: Window,
    pub dry_run: bool,
    /// Off only in tests (`--no-jitter`).
    pub jitter: bool,
}

/// What became of one record; its `as_str` leads its output line.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Renewed,
    /// Due, under `--dry-run`.
    Due,
    NotDue,
    Skipped,
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Renewed => "renewed",
            Outcome::Due => "due",
            Outcome::NotDue => "not due",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
        }
    }
}

/// Renews what is due; `template` holds the ACME options (its names and
/// policy fields are set per record). Exit status 1 when any failed, or
/// a renewal's invalidation was not published.
pub fn renew(store: &mut Store, opts: &Options, template: &acme::Request) -> Result<u8, CliError> {
    let entries = store.expiring(None)?;
    let mut counts = [0usize; 5];
    // Until the CA's directory says it has no renewalInfo.
    let mut ask_ari = true;
    // Renewed records whose invalidation was not published.
    let mut unpublished = 0;
    for (name, _) in &entries {
        let renewed = renew_one(store, name, opts, template, &mut ask_ari, &mut unpublished);
        let (outcome, detail) = match renewed {
            Ok(done) => done,
            Err(e) => (Outcome::Failed, e.to_string()),
        };
        counts[outcome as usize] += 1;
        println!("{} \"{name}\": {detail}", outcome.as_str());
    }
    let n = |o: Outcome| counts[o as usize];
    if opts.dry_run {
        println!(
            "dry run: due {}, not due {}, skipped {}, failed {}",
            n(Outcome::Due),
            n(Outcome::NotDue),
            n(Outcome::Skipped),
            n(Outcome::Failed)
        );
    } else {
        println!(
            "renewed {}, not due {}, skipped {}, failed {}",
            n(Outcome::Renewed),
            n(Outcome::NotDue),
            n(Outcome::Skipped),
            n(Outcome::Failed)
        );
    }
    Ok(if n(Outcome::Failed) > 0 || unpublished > 0 {
        1
    } else {
        0
    })
}

fn renew_one(
    store: &mut Store,
    name: &str,
    opts: &Options,
    template: &acme::Request,
    ask_ari: &mut bool,
    unpublished: &mut usize,
) -> Result<(Outcome, String), CliError> {
    // The TTL read with the fields, in one transaction: it is this
    // record's, not one written over it between two reads.
    let (fields, pttl) = store.fields_and_pttl(name)?;
    if fields.is_empty() {
        return Ok((
            Outcome::Skipped,
            "no record (a stale index entry: dyncert index rebuild drops it)".to_owned(),
        ));
    }
    // Only the module's write-back of a certificate API answer expires:
    // the API stays its source, and a renewed copy would lose its TTL and
    // hide the API's later answers (a new certificate, a 404) for good.
    if pttl > 0 {
        return Ok((
            Outcome::Skipped,
            format!(
                "a copy of the certificate API's answer that expires in {}; the API is its source",
                ttl_text(pttl)
            ),
        ));
    }
    let Some(leaf) = stored_leaf(&fields) else {
        return Ok((Outcome::Failed, "no readable certificate".to_owned()));
    };
    // A key held by an HSM never leaves it: an order would generate a
    // key in software and store it in Redis in the reference's place.
    // Said before the CA is asked anything (ARI), since nothing is
    // ordered for this record whatever it answers.
    if let Some(field) = key_reference_field(&fields) {
        return Ok((
            Outcome::Skipped,
            format!(
                "notAfter {} ({} days left): its key is held by an HSM (key reference in \
                 \"{field}\"); renew it with the HSM's tooling",
                rfc3339(leaf.not_after.max(0) as u64),
                days_left(leaf.not_after, now_secs())
            ),
        ));
    }
    let random = if opts.jitter { random_u32()? } else { 0 };
    let shake = jitter(leaf.not_before, leaf.not_after, random);
    let by_lifetime = due_from(leaf.not_before, leaf.not_after, opts.window, shake);
    let ari =
        if *ask_ari && ari_worth_asking(leaf.not_before, leaf.not_after, now_secs(), by_lifetime) {
            ari_window(store, template, &leaf, ask_ari)
        } else {
            None
        };
    let from = match (&ari, opts.window) {
        (None, _) => by_lifetime,
        // --within still makes a record due, whatever the CA suggests.
        (Some((start, end, _)), Window::Within(_)) => {
            ari_due_from(*start, *end, random).min(by_lifetime)
        }
        (Some((start, end, _)), Window::LastThird) => ari_due_from(*start, *end, random),
    };
    let now = now_secs();
    let mut when = format!(
        "notAfter {} ({} days left)",
        rfc3339(leaf.not_after.max(0) as u64),
        days_left(leaf.not_after, now)
    );
    if let Some((start, end, _)) = &ari {
        when.push_str(&format!(
            ", renewal window from the CA {} to {}",
            rfc3339((*start).max(0) as u64),
            rfc3339((*end).max(0) as u64)
        ));
    }
    if now < from {
        return Ok((
            Outcome::NotDue,
            format!("{when}, due from {}", rfc3339(from.max(0) as u64)),
        ));
    }
    // Issuance obtains one certificate and replaces the record: a second
    // pair (crt_rsa/key_rsa) would be lost without a word. Failing says
    // so every time the record is due, and in the exit status.
    if ["crt_rsa", "crt_der_rsa"]
        .iter()
        .any(|f| fields.contains_key(*f))
    {
        return Ok((
            Outcome::Failed,
            format!(
                "{when}: the record has a second certificate (crt_rsa), which renewal would \
                 drop; renew both with your own tooling and store them with dyncert put \
                 --cert-rsa/--key-rsa"
            ),
        ));
    }
    let names = match renewal_names(name, &leaf.sans, template.dns.is_some()) {
        Ok(n) => n,
        Err(why) => return Ok((Outcome::Skipped, why)),
    };
    if opts.dry_run {
        return Ok((Outcome::Due, format!("{when}, for {}", names.join(", "))));
    }
    let mut req = template.clone();
    req.names = crate::issue_names(&names)?;
    req.allow = fields.get("allow").cloned();
    req.client_ca = fields.get("client_ca").cloned();
    req.replaces = ari.map(|(_, _, id)| id);
    // The key type the record has, unless the operator chose one for the
    // run: an RSA certificate is often kept for clients without ECDSA,
    // and a silent switch would lock them out.
    if !template.key_type_chosen {
        req.rsa = leaf.rsa;
    }
    // What was read is what the renewal replaces: a record changed while
    // the certificate is ordered (an operator's put, a tightened allow)
    // is kept.
    req.expect = Some(Expect::Unchanged(fields.clone()));
    // An encrypted record stays encrypted (under its own id unless
    // --encrypt-with says another): a plain key would be refused by
    // terminators with dyncert_key_encryption required.
    if req.encrypt_with.is_none() {
        if let Some(id) = stored_key_id(&fields) {
            if req.key_ring.get(&id).is_none() {
                return Ok((
                    Outcome::Failed,
                    format!(
                        "its key is encrypted under \"{id}\": give --key-encryption-key {id}=FILE \
                         (or --encrypt-with another id)"
                    ),
                ));
            }
            req.encrypt_with = Some(id);
        }
    }
    let p = match acme::issue(store, &req) {
        Ok(p) => p,
        // `dyncert run` or another renew is ordering it right now.
        Err(CliError::Busy(why)) => return Ok((Outcome::Skipped, why)),
        Err(CliError::Changed(why)) => return Ok((Outcome::Skipped, why)),
        Err(e) => return Err(e),
    };
    // Renewed, whatever the publish does: a Redis error there is a
    // warning, and the exit status (the run's last line counts it renewed).
    let (said, failed) = crate::publish(store, &p.name);
    if let Some(e) = failed {
        eprintln!("{}", crate::unpublished_warning(&p.name, &e));
        *unpublished += 1;
    }
    Ok((
        Outcome::Renewed,
        format!(
            "{}: notAfter {} ({} days left), {} key{}; {said}{}",
            req.names.join(", "),
            rfc3339(p.not_after.max(0) as u64),
            days_left(p.not_after, now_secs()),
            if req.rsa { "RSA 2048" } else { "ECDSA P-256" },
            match (template.key_type_chosen, req.rsa == leaf.rsa) {
                (_, true) => " as before",
                (true, false) =>
                    if req.rsa {
                        " (was ECDSA: --rsa)"
                    } else {
                        " (was RSA: --ecdsa)"
                    },
                (false, false) => "",
            },
            if req.replaces.is_some() {
                "; on the CA's renewal window (ARI), replacing the old certificate"
            } else {
                ""
            }
        ),
    ))
}

/// The CA's renewal window for `leaf`, with its ARI identifier. `None`
/// when the leaf has no authorityKeyIdentifier, the CA has no ARI or does
/// not answer within `--acme-timeout` (then `ask_ari` turns false, for
/// the next records), or the CA does not know the certificate (another
/// CA's): the lifetime rule decides then.
fn ari_window(
    store: &mut Store,
    template: &acme::Request,
    leaf: &StoredLeaf,
    ask_ari: &mut bool,
) -> Option<(i64, i64, CertificateIdentifier<'static>)> {
    let aki = leaf.aki.as_ref()?;
    let id = CertificateIdentifier {
        authority_key_identifier: base64url_encode(aki).into(),
        serial: base64url_encode(&der_serial(&leaf.serial)).into(),
    };
    match acme::renewal_window(store, template, &id) {
        Ok(Some((start, end))) => Some((start, end, id)),
        Ok(None) => {
            *ask_ari = false;
            None
        }
        // A CA that does not answer would cost every later record the
        // same wait, even those far from due.
        Err(e @ CliError::Unanswered(_)) => {
            *ask_ari = false;
            eprintln!("dyncert: warning: {e}; the lifetime rule decides for the rest of this run");
            None
        }
        Err(_) => None,
    }
}

fn random_u32() -> Result<u32, CliError> {
    let mut b = [0u8; 4];
    openssl::rand::rand_bytes(&mut b).map_err(|e| CliError::Acme(format!("random jitter: {e}")))?;
    Ok(u32::from_le_bytes(b))
}

/// The key field holding a key reference (`engine:pkcs11:...`: the key
/// is in an HSM), if one does. An envelope (`dyncert:v1:...`) looks like
/// a URI too, and is tried first, as terminators do.
fn key_reference_field(fields: &HashMap<String, Vec<u8>>) -> Option<&'static str> {
    crate::keys::KEY_FIELDS.into_iter().find(|f| {
        fields
            .get(*f)
            .is_some_and(|v| !keywrap::is_envelope(v) && keyref::is_reference(v))
    })
}

/// A remaining TTL in milliseconds, to the two largest units: `23h 59m`,
/// `4m 10s`, `9s`.
fn ttl_text(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m"),
    }
}

/// The key id a stored record's key is encrypted under, if it is.
fn stored_key_id(fields: &HashMap<String, Vec<u8>>) -> Option<String> {
    crate::keys::KEY_FIELDS.iter().find_map(|f| {
        let v = fields.get(*f)?;
        dyncert_core::keywrap::parse(v)
            .ok()
            .map(|e| e.id.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_text_keeps_the_two_largest_units() {
        assert_eq!(ttl_text(86_400_000), "24h 0m");
        assert_eq!(ttl_text(86_399_000), "23h 59m");
        assert_eq!(ttl_text(250_000), "4m 10s");
        assert_eq!(ttl_text(9_999), "9s");
        assert_eq!(ttl_text(1), "0s");
    }

    #[test]
    fn a_key_reference_in_any_key_field_is_found_and_pem_or_envelopes_are_not() {
        let record = |field: &str, v: &[u8]| HashMap::from([(field.to_owned(), v.to_vec())]);
        let reference = b"engine:pkcs11:pkcs11:token=dyncert;object=shop";
        assert_eq!(key_reference_field(&record("key", reference)), Some("key"));
        assert_eq!(
            key_reference_field(&record("key_rsa", reference)),
            Some("key_rsa")
        );
        assert_eq!(
            key_reference_field(&record("key", b"-----BEGIN PRIVATE KEY-----\nMIG\n")),
            None
        );
        assert_eq!(
            key_reference_field(&record("key_der", b"\x30\x81\x87")),
            None
        );
        assert_eq!(
            key_reference_field(&record("key", b"dyncert:v1:2026-07:AAAA")),
            None,
            "an encrypted key"
        );
        assert_eq!(key_reference_field(&record("crt", reference)), None);
    }
}
