//! Records as the module sees them: the record name (normalised by the
//! module's rules), a record built from files within the module's limits
//! and validated by the module's own code, the fields the CLI stores, and
//! what `get` shows of a stored record (never its key).

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use dyncert_core::der::split_certificates;
use dyncert_core::name::{normalize_sni, wildcard_parent};
use dyncert_core::pem::{self, Label};
use dyncert_core::record::{
    check_second_lengths, chosen_form, decode_record, decode_second, Form, Record, RecordError,
    MAX_ALLOW_BYTES, MAX_CHAIN_LEN, MAX_CLIENT_CA_BYTES, MAX_CRT_BYTES, MAX_KEY_BYTES,
};
use dyncert_core::timefmt::rfc3339;
use dyncert_core::validate::{
    der_form, second_der_form, validate, validate_wildcard, Invalid, ParsedCert,
};
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey, Private};
use openssl::sign::{Signer, Verifier};
use openssl::x509::{X509NameRef, X509};

use crate::error::CliError;

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The name a record is stored under: a host name normalised as the
/// module normalises an SNI, or `*.<parent>` for a wildcard record, which
/// the module only looks up for a parent of two labels or more.
pub fn record_name(raw: &str) -> Result<String, CliError> {
    let invalid =
        |why: &str| CliError::Input(format!("invalid name \"{}\": {why}", raw.escape_default()));
    match raw.strip_prefix("*.") {
        Some(parent) => {
            let parent = normalize_sni(parent.as_bytes()).map_err(|e| invalid(e.as_str()))?;
            if wildcard_parent(&format!("x.{parent}")).is_none() {
                return Err(invalid(
                    "a wildcard record needs two labels or more after \"*.\" (the module never looks up \"*.<tld>\")",
                ));
            }
            Ok(format!("*.{parent}"))
        }
        None => normalize_sni(raw.as_bytes()).map_err(|e| invalid(e.as_str())),
    }
}

/// Reads at most `max` + 1 bytes of `path`: a file over the module's
/// bound is refused with the module's reason without being read whole.
fn read_bounded(path: &Path, max: usize, too_large: RecordError) -> Result<Vec<u8>, CliError> {
    let file = File::open(path)
        .map_err(|e| CliError::Input(format!("cannot read {}: {e}", path.display())))?;
    let mut data = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| CliError::Input(format!("cannot read {}: {e}", path.display())))?;
    if data.len() > max {
        return Err(CliError::refused(&path.display().to_string(), too_large));
    }
    Ok(data)
}

/// What `put` and `import` store, from files.
pub struct Input<'a> {
    pub crt: &'a Path,
    pub key: &'a Path,
    pub allow: Option<&'a str>,
    pub client_ca: Option<&'a Path>,
    /// The second certificate chain and key (`crt_rsa`, `key_rsa`).
    pub second: Option<(&'a Path, &'a Path)>,
}

/// A validated record, ready to be written.
pub struct Prepared {
    pub name: String,
    /// The hash's fields, in the order they are written.
    pub fields: Vec<(&'static str, Vec<u8>)>,
    /// The leaf's notAfter, UNIX seconds: the expiry index's score.
    pub not_after: i64,
}

impl Prepared {
    /// True when `stored` (HGETALL) holds exactly these fields.
    pub fn same_fields(&self, stored: &HashMap<String, Vec<u8>>) -> bool {
        stored.len() == self.fields.len()
            && self
                .fields
                .iter()
                .all(|(f, v)| stored.get(*f).is_some_and(|s| s == v))
    }
}

/// Reads and validates a record for `name` as the module would at `now`:
/// the module's size limits, PEM rules and checks (key matches, SAN covers
/// the name, dates, encrypted keys refused).
pub fn prepare(name: &str, input: &Input<'_>, now: i64) -> Result<Prepared, CliError> {
    let crt = read_bounded(input.crt, MAX_CRT_BYTES, RecordError::CrtTooLarge)?;
    let key = read_bounded(input.key, MAX_KEY_BYTES, RecordError::KeyTooLarge)?;
    let client_ca = match input.client_ca {
        Some(p) => Some(read_bounded(
            p,
            MAX_CLIENT_CA_BYTES,
            RecordError::ClientCaTooLarge,
        )?),
        None => None,
    };
    let allow = input.allow.map(|a| a.as_bytes().to_vec());
    let second = match input.second {
        Some((c, k)) => Some((
            read_bounded(c, MAX_CRT_BYTES, RecordError::SecondTooLarge)?,
            read_bounded(k, MAX_KEY_BYTES, RecordError::SecondTooLarge)?,
        )),
        None => None,
    };
    prepare_pairs(name, crt, key, allow, client_ca, second, now)
}

/// [`prepare`] for a chain and key already in memory (what `issue` got
/// from the CA), within the same bounds.
pub fn prepare_bytes(
    name: &str,
    crt: Vec<u8>,
    key: Vec<u8>,
    allow: Option<Vec<u8>>,
    client_ca: Option<Vec<u8>>,
    now: i64,
) -> Result<Prepared, CliError> {
    prepare_pairs(name, crt, key, allow, client_ca, None, now)
}

/// [`prepare_bytes`] with an optional second certificate and key of the
/// other key type, validated as the module validates it.
fn prepare_pairs(
    name: &str,
    crt: Vec<u8>,
    key: Vec<u8>,
    allow: Option<Vec<u8>>,
    client_ca: Option<Vec<u8>>,
    second: Option<(Vec<u8>, Vec<u8>)>,
    now: i64,
) -> Result<Prepared, CliError> {
    if crt.len() > MAX_CRT_BYTES {
        return Err(CliError::refused(name, RecordError::CrtTooLarge));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(CliError::refused(name, RecordError::KeyTooLarge));
    }
    if allow.as_ref().is_some_and(|a| a.len() > MAX_ALLOW_BYTES) {
        return Err(CliError::refused(name, RecordError::AllowTooLarge));
    }
    let mut record = decode_record(Some(crt), Some(key), allow, client_ca)
        .map_err(|e| CliError::refused(name, e))?;
    if let Some((c, k)) = second {
        record.second =
            decode_second(Some(c), Some(k), Form::Pem).map_err(|e| CliError::refused(name, e))?;
    }
    let parsed = check(&record, name, now).map_err(|e| CliError::refused(name, e))?;
    let mut fields: Vec<(&'static str, Vec<u8>)> =
        vec![("crt", record.crt.clone()), ("key", record.key.clone())];
    // The fast form beside the PEM, as the API write-back stores it.
    if let Some((crt_der, key_der)) = der_form(&parsed, &record) {
        fields.push(("crt_der", crt_der));
        fields.push(("key_der", key_der));
    }
    if let Some(a) = &record.allow {
        fields.push(("allow", a.clone()));
    }
    if let Some(c) = &record.client_ca {
        fields.push(("client_ca", c.clone()));
    }
    if let Some(pair) = &record.second {
        fields.push(("crt_rsa", pair.crt.clone()));
        fields.push(("key_rsa", pair.key.clone()));
        if let Some((crt_der, key_der)) = second_der_form(&parsed, &record) {
            fields.push(("crt_der_rsa", crt_der));
            fields.push(("key_der_rsa", key_der));
        }
    }
    Ok(Prepared {
        name: name.to_owned(),
        fields,
        not_after: (parsed.not_after_ms / 1000) as i64,
    })
}

/// The module's validation for a record stored under `name`: a wildcard
/// record must carry the wildcard itself. Then each key must sign for its
/// leaf: the module compares public halves only, so a key carrying the
/// leaf's public point (or modulus) with another private part (a bit
/// flip, a crafted file) passes it, is served, and fails every handshake.
fn check(record: &Record, name: &str, now: i64) -> Result<ParsedCert, Invalid> {
    let parsed = if name.starts_with("*.") {
        validate_wildcard(record, name, name, now)
    } else {
        validate(record, name, now)
    }?;
    // A key reference signs in its HSM, which is not the CLI's to drive.
    if !parsed.key_reference && !signs_for(&parsed.key, &parsed.leaf) {
        return Err(Invalid::KeyMismatch);
    }
    if let Some(second) = &parsed.second {
        if !signs_for(&second.key, &second.leaf) {
            return Err(Invalid::RsaKeyMismatch);
        }
    }
    Ok(parsed)
}

/// True when a signature by `key` verifies with `leaf`'s public key: the
/// pairwise check a handshake makes, once, before the record is stored.
/// Tens of microseconds for P-256, about a millisecond for RSA 2048.
fn signs_for(key: &PKey<Private>, leaf: &X509) -> bool {
    const MESSAGE: &[u8] = b"dyncert: does this key sign for its certificate?";
    let pairwise = || -> Result<bool, openssl::error::ErrorStack> {
        let public = leaf.public_key()?;
        let (mut signer, mut verifier) = match key.id() {
            // EdDSA signs the message itself, with no separate digest.
            Id::ED25519 | Id::ED448 => (
                Signer::new_without_digest(key)?,
                Verifier::new_without_digest(&public)?,
            ),
            _ => (
                Signer::new(MessageDigest::sha256(), key)?,
                Verifier::new(MessageDigest::sha256(), &public)?,
            ),
        };
        let signature = signer.sign_oneshot_to_vec(MESSAGE)?;
        verifier.verify_oneshot(&signature, MESSAGE)
    };
    pairwise().unwrap_or(false)
}

/// A stored record, as `get` shows it.
pub struct Shown {
    pub leaf: Option<LeafInfo>,
    pub allow: Option<String>,
    pub client_ca: bool,
    pub forms: Vec<&'static str>,
    /// `None`: the module would serve it; else its refusal.
    pub refused: Option<String>,
}

pub struct LeafInfo {
    pub subject: String,
    pub sans: Vec<String>,
    pub issuer: String,
    pub not_after: i64,
    pub sha256: String,
}

impl LeafInfo {
    pub fn not_after_rfc3339(&self) -> String {
        rfc3339(self.not_after.max(0) as u64)
    }
}

/// Days from `now` until `not_after`, rounded down (negative once past).
pub fn days_left(not_after: i64, now: i64) -> i64 {
    (not_after - now).div_euclid(86_400)
}

/// Describes the fields of a stored record (HGETALL) for `name`.
pub fn show(name: &str, fields: &HashMap<String, Vec<u8>>, now: i64) -> Shown {
    let has = |f: &str| fields.get(f).is_some_and(|v| !v.is_empty());
    let mut forms = Vec::new();
    if has("crt") && has("key") {
        forms.push("pem");
    }
    if has("crt_der") && has("key_der") {
        forms.push("der");
    }
    let len = |f: &str| fields.get(f).map_or(0, |v| v.len() as u64);
    // The form the module reads: DER when both DER fields are there.
    let form = chosen_form(len("crt_der"), len("key_der"));
    let (crt_field, key_field) = match form {
        Form::Pem => ("crt", "key"),
        Form::Der => ("crt_der", "key_der"),
    };
    let field = |f: &str| fields.get(f).cloned();
    // The second pair in the form the module reads.
    let second = check_second_lengths(
        len("crt_rsa"),
        len("key_rsa"),
        len("crt_der_rsa"),
        len("key_der_rsa"),
    )
    .and_then(|f| match f {
        Some(Form::Der) => decode_second(field("crt_der_rsa"), field("key_der_rsa"), Form::Der),
        Some(Form::Pem) => decode_second(field("crt_rsa"), field("key_rsa"), Form::Pem),
        None => Ok(None),
    });
    if has("crt_rsa") && has("key_rsa") {
        forms.push("pem_rsa");
    }
    if has("crt_der_rsa") && has("key_der_rsa") {
        forms.push("der_rsa");
    }
    let refused = match decode_record(
        field(crt_field),
        field(key_field),
        field("allow"),
        field("client_ca"),
    )
    .and_then(|r| second.map(|s| (r, s)))
    {
        Ok((mut record, second)) => {
            record.form = form;
            record.second = second;
            check(&record, name, now)
                .err()
                .map(|e| refusal_text(e.as_str(), e.label()))
        }
        Err(e) => Some(refusal_text(e.as_str(), e.label())),
    };
    let leaf = fields
        .get(crt_field)
        .and_then(|crt| leaf_of(crt, form))
        .and_then(|leaf| leaf_info(&leaf));
    Shown {
        leaf,
        allow: fields
            .get("allow")
            .map(|a| String::from_utf8_lossy(a).into_owned()),
        client_ca: has("client_ca"),
        forms,
        refused,
    }
}

fn refusal_text(reason: &str, label: &str) -> String {
    format!("{reason} ({label})")
}

/// The leaf of a `crt` (PEM) or `crt_der` field.
pub fn leaf_of(crt: &[u8], form: Form) -> Option<X509> {
    let der = match form {
        Form::Der => split_certificates(crt, MAX_CHAIN_LEN)?.first()?.to_vec(),
        Form::Pem => {
            let blocks = pem::parse(crt, MAX_CHAIN_LEN).ok()?;
            let first = blocks.into_iter().next()?;
            if first.label != Label::Certificate {
                return None;
            }
            first.der
        }
    };
    X509::from_der(&der).ok()
}

fn leaf_info(leaf: &X509) -> Option<LeafInfo> {
    let sans = leaf
        .subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.dnsname().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let digest = leaf.digest(MessageDigest::sha256()).ok()?;
    let sha256 = digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    Some(LeafInfo {
        subject: name_text(leaf.subject_name()),
        sans,
        issuer: name_text(leaf.issuer_name()),
        not_after: unix_secs(leaf.not_after())?,
        sha256,
    })
}

/// `CN=shop.example.com, O=Example`: short names, as `openssl x509` shows.
fn name_text(name: &X509NameRef) -> String {
    name.entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_else(|_| "?".to_owned());
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The notAfter of a leaf, UNIX seconds.
pub fn not_after_of(leaf: &X509) -> Option<i64> {
    unix_secs(leaf.not_after())
}

/// What `renew` needs of a stored record's leaf.
pub struct StoredLeaf {
    pub not_before: i64,
    pub not_after: i64,
    /// The DNS subjectAltNames, in the certificate's order.
    pub sans: Vec<String>,
    /// The authorityKeyIdentifier's keyIdentifier, and the serial's
    /// big-endian magnitude: the certificate's ARI identity.
    pub aki: Option<Vec<u8>>,
    pub serial: Vec<u8>,
    /// The leaf's key is RSA (else ECDSA, or another type renewal orders
    /// as ECDSA).
    pub rsa: bool,
}

/// The leaf of a stored record (HGETALL), read from the form the module
/// reads (DER when both DER fields are there, else PEM).
pub fn stored_leaf(fields: &HashMap<String, Vec<u8>>) -> Option<StoredLeaf> {
    let len = |f: &str| fields.get(f).map_or(0, |v| v.len() as u64);
    let (field, form) = match chosen_form(len("crt_der"), len("key_der")) {
        Form::Der => ("crt_der", Form::Der),
        Form::Pem => ("crt", Form::Pem),
    };
    let leaf = leaf_of(fields.get(field)?, form)?;
    let sans = leaf
        .subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.dnsname().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Some(StoredLeaf {
        not_before: unix_secs(leaf.not_before())?,
        not_after: unix_secs(leaf.not_after())?,
        sans,
        aki: leaf.authority_key_id().map(|k| k.as_slice().to_vec()),
        serial: leaf.serial_number().to_bn().ok()?.to_vec(),
        rsa: leaf
            .public_key()
            .is_ok_and(|k| k.id() == openssl::pkey::Id::RSA),
    })
}

fn unix_secs(t: &Asn1TimeRef) -> Option<i64> {
    let epoch = Asn1Time::from_unix(0).ok()?;
    let diff = epoch.diff(t).ok()?;
    Some(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_follow_the_modules_rules() {
        assert_eq!(
            record_name("Shop.Example.COM.").unwrap(),
            "shop.example.com"
        );
        assert_eq!(record_name("*.Example.com").unwrap(), "*.example.com");
        for bad in [
            "*.com",
            "a..b",
            "under_score.example",
            "192.0.2.1",
            "*.*.x.y",
            "",
        ] {
            assert!(record_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn days_left_round_down() {
        assert_eq!(days_left(86_400 * 3, 0), 3);
        assert_eq!(days_left(86_400 * 3 - 1, 0), 2);
        assert_eq!(days_left(-1, 0), -1);
    }
}
