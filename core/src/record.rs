//! Decoding of a certificate record as Redis returns it (`HGETALL`).
//!
//! The record is untrusted input: every field is bounded before it is
//! handed to OpenSSL, and unknown fields are ignored so that later
//! additions (per-tenant policy) do not break older terminators.

use crate::outcome::Refusal;

/// Largest PEM chain accepted in `crt` (a leaf plus a few intermediates is
/// a few KiB; anything near this bound is a mistake or an attack).
pub const MAX_CRT_BYTES: usize = 64 * 1024;
/// Largest PEM private key accepted in `key` (an RSA-8192 key is ~6.5 KiB).
pub const MAX_KEY_BYTES: usize = 16 * 1024;
/// Most certificates accepted in one chain, leaf included.
pub const MAX_CHAIN_LEN: usize = 8;
/// Largest `allow` field (a per-tenant address list).
pub const MAX_ALLOW_BYTES: usize = 16 * 1024;
/// Largest `client_ca` field (PEM CA certificates for client auth).
pub const MAX_CLIENT_CA_BYTES: usize = 64 * 1024;

/// How `crt` and `key` are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Form {
    /// PEM text: the `crt` and `key` fields.
    #[default]
    Pem,
    /// DER: the `crt_der` field (certificates one after the other, leaf
    /// first) and `key_der` (SEC1, PKCS#1 or PKCS#8), which load faster
    /// and take a quarter less room.
    Der,
}

/// A record's second certificate and key (`crt_rsa`/`key_rsa`, or
/// `crt_der_rsa`/`key_der_rsa`): the other key type than the primary
/// pair, for clients that cannot use it. Never log `key`.
#[derive(Clone, PartialEq, Eq)]
pub struct Pair {
    pub crt: Vec<u8>,
    pub key: Vec<u8>,
    pub form: Form,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("form", &self.form)
            .field("crt_len", &self.crt.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A decoded, size-checked record. Never log `key`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub crt: Vec<u8>,
    pub key: Vec<u8>,
    pub form: Form,
    /// Per-tenant policy: comma-separated CIDRs allowed to reach the name.
    pub allow: Option<Vec<u8>>,
    /// Per-tenant policy: PEM CA certificates client certificates must
    /// chain to; when present, the handshake asks for one.
    pub client_ca: Option<Vec<u8>>,
    /// The optional second certificate (see [`Pair`]).
    pub second: Option<Pair>,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key must never reach a log line, even through Debug.
        f.debug_struct("Record")
            .field("form", &self.form)
            .field("crt_len", &self.crt.len())
            .field("allow_len", &self.allow.as_ref().map(Vec::len))
            .field("client_ca_len", &self.client_ca.as_ref().map(Vec::len))
            .field("second", &self.second)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Why a record was refused. `as_str` feeds log lines, `label` the
/// counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    MissingCrt,
    MissingKey,
    CrtTooLarge,
    KeyTooLarge,
    AllowTooLarge,
    ClientCaTooLarge,
    /// Only one of `crt_rsa` and `key_rsa` (or of their DER forms).
    SecondIncomplete,
    /// `crt_rsa` or `key_rsa` over the bounds of `crt` and `key`.
    SecondTooLarge,
}

impl RecordError {
    pub fn as_str(&self) -> &'static str {
        match self {
            RecordError::MissingCrt => "field \"crt\" is missing or empty",
            RecordError::MissingKey => "field \"key\" is missing or empty",
            RecordError::CrtTooLarge => "field \"crt\" is larger than 64 KiB",
            RecordError::KeyTooLarge => "field \"key\" is larger than 16 KiB",
            RecordError::AllowTooLarge => "field \"allow\" is larger than 16 KiB",
            RecordError::ClientCaTooLarge => "field \"client_ca\" is larger than 64 KiB",
            RecordError::SecondIncomplete => {
                "fields \"crt_rsa\" and \"key_rsa\" (or \"crt_der_rsa\" and \"key_der_rsa\") \
                 must be given together"
            }
            RecordError::SecondTooLarge => {
                "field \"crt_rsa\" is larger than 64 KiB or \"key_rsa\" larger than 16 KiB"
            }
        }
    }

    /// The `reason` label of `dyncert_records_rejected_total`.
    pub fn label(&self) -> &'static str {
        match self {
            RecordError::MissingCrt => "missing_crt",
            RecordError::MissingKey => "missing_key",
            RecordError::CrtTooLarge => "crt_too_large",
            RecordError::KeyTooLarge => "key_too_large",
            RecordError::AllowTooLarge => "allow_too_large",
            RecordError::ClientCaTooLarge => "client_ca_too_large",
            RecordError::SecondIncomplete => "rsa_pair_incomplete",
            RecordError::SecondTooLarge => "rsa_pair_too_large",
        }
    }
}

impl From<RecordError> for Refusal {
    fn from(e: RecordError) -> Self {
        Refusal {
            reason: e.as_str(),
            label: e.label(),
            record: None,
        }
    }
}

/// Checks the sizes Redis reported (`EXISTS`, `HSTRLEN crt`, `HSTRLEN key`)
/// before the values are read, so an oversized record is refused without
/// ever being transferred. `Ok(false)`: there is no record for the name.
pub fn check_lengths(exists: bool, crt_len: u64, key_len: u64) -> Result<bool, RecordError> {
    if !exists {
        return Ok(false);
    }
    if crt_len == 0 {
        return Err(RecordError::MissingCrt);
    }
    if key_len == 0 {
        return Err(RecordError::MissingKey);
    }
    if crt_len > MAX_CRT_BYTES as u64 {
        return Err(RecordError::CrtTooLarge);
    }
    if key_len > MAX_KEY_BYTES as u64 {
        return Err(RecordError::KeyTooLarge);
    }
    Ok(true)
}

/// Checks the sizes of the optional policy fields before they are read.
pub fn check_policy_lengths(allow_len: u64, client_ca_len: u64) -> Result<(), RecordError> {
    if allow_len > MAX_ALLOW_BYTES as u64 {
        return Err(RecordError::AllowTooLarge);
    }
    if client_ca_len > MAX_CLIENT_CA_BYTES as u64 {
        return Err(RecordError::ClientCaTooLarge);
    }
    Ok(())
}

/// Builds a record from the `crt` and `key` values (`HMGET`), re-checking
/// the bounds since the record may have changed between the two reads.
pub fn decode_fields(crt: Option<Vec<u8>>, key: Option<Vec<u8>>) -> Result<Record, RecordError> {
    decode_record(crt, key, None, None)
}

/// Like [`decode_fields`], with the optional per-tenant policy fields. A
/// field that is there is kept even when empty, and fails closed: an
/// empty `allow` is a list that names no address and so admits no one
/// (like `allow ","`), an empty `client_ca` holds no certificate and so
/// refuses the record; only a missing field means "no restriction".
pub fn decode_record(
    crt: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    allow: Option<Vec<u8>>,
    client_ca: Option<Vec<u8>>,
) -> Result<Record, RecordError> {
    let crt = crt
        .filter(|v| !v.is_empty())
        .ok_or(RecordError::MissingCrt)?;
    let key = key
        .filter(|v| !v.is_empty())
        .ok_or(RecordError::MissingKey)?;
    check_lengths(true, crt.len() as u64, key.len() as u64)?;
    check_policy_lengths(
        allow.as_ref().map_or(0, |v| v.len() as u64),
        client_ca.as_ref().map_or(0, |v| v.len() as u64),
    )?;
    Ok(Record {
        crt,
        key,
        form: Form::Pem,
        allow,
        client_ca,
        second: None,
    })
}

/// The form the second pair is read in, given the lengths Redis reported
/// for `crt_rsa`, `key_rsa`, `crt_der_rsa` and `key_der_rsa` (DER when
/// both DER fields are there, as for the primary pair); None: the record
/// has no second pair. Refused when only half a pair is there, or a
/// field is over the bounds of `crt` and `key`.
pub fn check_second_lengths(
    crt: u64,
    key: u64,
    crt_der: u64,
    key_der: u64,
) -> Result<Option<Form>, RecordError> {
    let (form, c, k) = match chosen_form(crt_der, key_der) {
        Form::Der => (Form::Der, crt_der, key_der),
        Form::Pem if crt > 0 && key > 0 => (Form::Pem, crt, key),
        Form::Pem if crt + key + crt_der + key_der > 0 => {
            return Err(RecordError::SecondIncomplete)
        }
        Form::Pem => return Ok(None),
    };
    if c > MAX_CRT_BYTES as u64 || k > MAX_KEY_BYTES as u64 {
        return Err(RecordError::SecondTooLarge);
    }
    Ok(Some(form))
}

/// The second pair from its two values (empty values count as absent),
/// re-checking the bounds.
pub fn decode_second(
    crt: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    form: Form,
) -> Result<Option<Pair>, RecordError> {
    let crt = crt.filter(|v| !v.is_empty());
    let key = key.filter(|v| !v.is_empty());
    match (crt, key) {
        (None, None) => Ok(None),
        (Some(crt), Some(key)) => {
            if crt.len() > MAX_CRT_BYTES || key.len() > MAX_KEY_BYTES {
                return Err(RecordError::SecondTooLarge);
            }
            Ok(Some(Pair { crt, key, form }))
        }
        _ => Err(RecordError::SecondIncomplete),
    }
}

/// The fields a record is read with, given the lengths Redis reported for
/// `crt_der` and `key_der`: the DER form when both are there (a record may
/// carry both forms, for terminators that only know PEM).
pub fn chosen_form(crt_der_len: u64, key_der_len: u64) -> Form {
    if crt_der_len > 0 && key_der_len > 0 {
        Form::Der
    } else {
        Form::Pem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_key_means_no_record() {
        assert_eq!(check_lengths(false, 0, 0), Ok(false));
    }

    #[test]
    fn present_fields_within_bounds_are_accepted() {
        assert_eq!(check_lengths(true, 2000, 300), Ok(true));
        let r = decode_fields(Some(b"C".to_vec()), Some(b"K".to_vec())).unwrap();
        assert_eq!((r.crt.as_slice(), r.key.as_slice()), (&b"C"[..], &b"K"[..]));
    }

    #[test]
    fn missing_or_empty_fields_are_refused() {
        assert_eq!(check_lengths(true, 0, 10), Err(RecordError::MissingCrt));
        assert_eq!(check_lengths(true, 10, 0), Err(RecordError::MissingKey));
        assert_eq!(
            decode_fields(None, Some(b"K".to_vec())),
            Err(RecordError::MissingCrt)
        );
        assert_eq!(
            decode_fields(Some(b"C".to_vec()), Some(Vec::new())),
            Err(RecordError::MissingKey)
        );
    }

    #[test]
    fn oversized_fields_are_refused_before_and_after_reading() {
        assert_eq!(
            check_lengths(true, MAX_CRT_BYTES as u64 + 1, 10),
            Err(RecordError::CrtTooLarge)
        );
        assert_eq!(
            check_lengths(true, 10, MAX_KEY_BYTES as u64 + 1),
            Err(RecordError::KeyTooLarge)
        );
        let big = vec![b'a'; MAX_KEY_BYTES + 1];
        assert_eq!(
            decode_fields(Some(b"C".to_vec()), Some(big)),
            Err(RecordError::KeyTooLarge)
        );
    }

    #[test]
    fn policy_fields_are_optional_and_bounded() {
        let r = decode_record(
            Some(b"C".to_vec()),
            Some(b"K".to_vec()),
            Some(b"10.0.0.0/8".to_vec()),
            Some(Vec::new()),
        )
        .unwrap();
        assert_eq!(r.allow.as_deref(), Some(&b"10.0.0.0/8"[..]));
        assert_eq!(r.client_ca.as_deref(), Some(&b""[..]), "empty is kept");
        // An empty allow list is a list: it admits no one.
        let r = decode_record(
            Some(b"C".to_vec()),
            Some(b"K".to_vec()),
            Some(Vec::new()),
            None,
        )
        .unwrap();
        assert_eq!(r.allow.as_deref(), Some(&b""[..]));
        let r = decode_fields(Some(b"C".to_vec()), Some(b"K".to_vec())).unwrap();
        assert_eq!(r.allow, None, "no field, no restriction");
        let big = vec![b'a'; MAX_ALLOW_BYTES + 1];
        assert_eq!(
            decode_record(Some(b"C".to_vec()), Some(b"K".to_vec()), Some(big), None),
            Err(RecordError::AllowTooLarge)
        );
        assert_eq!(
            check_policy_lengths(0, MAX_CLIENT_CA_BYTES as u64 + 1),
            Err(RecordError::ClientCaTooLarge)
        );
    }

    #[test]
    fn debug_output_never_contains_the_key() {
        let r = Record {
            form: Form::Pem,
            crt: b"C".to_vec(),
            key: b"SECRET".to_vec(),
            allow: None,
            client_ca: None,
            second: Some(Pair {
                crt: b"C".to_vec(),
                key: b"SECRET2".to_vec(),
                form: Form::Pem,
            }),
        };
        assert!(!format!("{r:?}").contains("SECRET"));
    }

    #[test]
    fn second_pair_is_optional_whole_and_bounded() {
        assert_eq!(check_second_lengths(0, 0, 0, 0), Ok(None));
        assert_eq!(check_second_lengths(10, 10, 0, 0), Ok(Some(Form::Pem)));
        assert_eq!(check_second_lengths(10, 10, 5, 5), Ok(Some(Form::Der)));
        assert_eq!(check_second_lengths(0, 0, 5, 5), Ok(Some(Form::Der)));
        for half in [(10, 0, 0, 0), (0, 10, 0, 0), (0, 0, 5, 0), (10, 0, 0, 5)] {
            assert_eq!(
                check_second_lengths(half.0, half.1, half.2, half.3),
                Err(RecordError::SecondIncomplete),
                "{half:?}"
            );
        }
        assert_eq!(
            check_second_lengths(MAX_CRT_BYTES as u64 + 1, 10, 0, 0),
            Err(RecordError::SecondTooLarge)
        );
        assert_eq!(
            check_second_lengths(0, 0, 10, MAX_KEY_BYTES as u64 + 1),
            Err(RecordError::SecondTooLarge)
        );
        assert_eq!(decode_second(None, Some(Vec::new()), Form::Pem), Ok(None));
        assert_eq!(
            decode_second(Some(b"C".to_vec()), None, Form::Pem),
            Err(RecordError::SecondIncomplete)
        );
        assert_eq!(
            decode_second(None, Some(b"K".to_vec()), Form::Pem),
            Err(RecordError::SecondIncomplete)
        );
        assert_eq!(
            decode_second(
                Some(b"C".to_vec()),
                Some(vec![b'a'; MAX_KEY_BYTES + 1]),
                Form::Pem
            ),
            Err(RecordError::SecondTooLarge)
        );
        let p = decode_second(Some(b"C".to_vec()), Some(b"K".to_vec()), Form::Der)
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.crt, p.key, p.form),
            (b"C".to_vec(), b"K".to_vec(), Form::Der)
        );
    }
}
