//! Decoding of a certificate record as Redis returns it (`HGETALL`).
//!
//! The record is untrusted input: every field is bounded before it is
//! handed to OpenSSL, and unknown fields are ignored so that later
//! additions (per-tenant policy) do not break older terminators.

/// Largest PEM chain accepted in `crt` (a leaf plus a few intermediates is
/// a few KiB; anything near this bound is a mistake or an attack).
pub const MAX_CRT_BYTES: usize = 64 * 1024;
/// Largest PEM private key accepted in `key` (an RSA-8192 key is ~6.5 KiB).
pub const MAX_KEY_BYTES: usize = 16 * 1024;
/// Most certificates accepted in one chain, leaf included.
pub const MAX_CHAIN_LEN: usize = 8;

/// A decoded, size-checked record. Never log `key`.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    pub crt: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key must never reach a log line, even through Debug.
        f.debug_struct("Record")
            .field("crt_len", &self.crt.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Why a record was refused. `as_str` feeds log lines and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    MissingCrt,
    MissingKey,
    CrtTooLarge,
    KeyTooLarge,
}

impl RecordError {
    pub fn as_str(&self) -> &'static str {
        match self {
            RecordError::MissingCrt => "field \"crt\" is missing or empty",
            RecordError::MissingKey => "field \"key\" is missing or empty",
            RecordError::CrtTooLarge => "field \"crt\" is larger than 64 KiB",
            RecordError::KeyTooLarge => "field \"key\" is larger than 16 KiB",
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

/// Builds a record from the `crt` and `key` values (`HMGET`), re-checking
/// the bounds since the record may have changed between the two reads.
pub fn decode_fields(crt: Option<Vec<u8>>, key: Option<Vec<u8>>) -> Result<Record, RecordError> {
    let crt = crt
        .filter(|v| !v.is_empty())
        .ok_or(RecordError::MissingCrt)?;
    let key = key
        .filter(|v| !v.is_empty())
        .ok_or(RecordError::MissingKey)?;
    check_lengths(true, crt.len() as u64, key.len() as u64)?;
    Ok(Record { crt, key })
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
    fn debug_output_never_contains_the_key() {
        let r = Record {
            crt: b"C".to_vec(),
            key: b"SECRET".to_vec(),
        };
        assert!(!format!("{r:?}").contains("SECRET"));
    }
}
