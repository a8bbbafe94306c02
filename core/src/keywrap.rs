//! Private keys encrypted at rest: a record's `key` (PEM) or `key_der`
//! (DER) field may hold an envelope instead of the key,
//!
//! ```text
//! dyncert:v1:<ID>:<base64( nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes) )>
//! ```
//!
//! AES-256-GCM under the key-encryption key `ID`
//! (`dyncert_key_decryption_key ID FILE;`), the additional authenticated
//! data being the record's full Redis key name (prefix + name), so that a
//! ciphertext copied to another name's record does not decrypt. The
//! plaintext is exactly what the field would hold unencrypted (PEM text in
//! `key`, DER in `key_der`). Base64 is the standard alphabet with padding,
//! no line breaks.
//!
//! Threat model: a Redis dump, replica or backup must not hand out the
//! keys; the memory of the host running nginx is trusted (the parsed key
//! lives there, and in the shared zone). A key reference
//! (`engine:pkcs11:...`) carries no key material and is never wrapped.
//!
//! Pure functions of bytes: parsing and the decision live here, OpenSSL
//! does the AES-GCM (through the `openssl` crate's safe API).

#![forbid(unsafe_code)]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};

use crate::outcome::Refusal;

/// What every envelope starts with; anything starting with `dyncert:` is
/// taken as an envelope (and refused as malformed if it is not a v1 one),
/// never as key material or a key reference.
pub const MAGIC: &[u8] = b"dyncert:";
/// The envelope version this build reads and writes.
pub const PREFIX_V1: &[u8] = b"dyncert:v1:";
/// Bytes of a key-encryption key (AES-256).
pub const KEY_LEN: usize = 32;
/// Bytes of the GCM nonce at the start of the decoded envelope.
pub const NONCE_LEN: usize = 12;
/// Bytes of the GCM tag at the end of the decoded envelope.
pub const TAG_LEN: usize = 16;
/// Longest key id.
pub const MAX_ID_LEN: usize = 64;
/// Longest envelope, the same bound as an unencrypted key field
/// ([`crate::record::MAX_KEY_BYTES`]): Redis reports the field's length
/// before it is read, and that check does not know whether it is wrapped.
/// A wrapped RSA-8192 PEM key takes about 9 KiB.
pub const MAX_ENVELOPE_BYTES: usize = crate::record::MAX_KEY_BYTES;

/// Whether a plain (unencrypted) key is still accepted
/// (`dyncert_key_encryption optional|required;`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyEncryption {
    /// Plain keys and envelopes are both served (the default).
    #[default]
    Optional,
    /// Only envelopes (and key references) are served.
    Required,
}

/// Why a key field could not be turned into key material. `as_str` is the
/// short name (`unknown_id` ...), `label` the `reason` label of
/// `dyncert_records_rejected_total`, `reason` the log text; none carries
/// key bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyWrapError {
    /// Starts with `dyncert:` but is not a well-formed v1 envelope: wrong
    /// version, bad id, bad base64, too short, too long.
    Malformed,
    /// The envelope names a key id this server does not have.
    UnknownId,
    /// Authentication failed: the ciphertext was altered, was made for
    /// another record name (moved), or under another key with this id.
    BadTag,
    /// A plain key while `dyncert_key_encryption required`.
    PlainRefused,
}

impl KeyWrapError {
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyWrapError::Malformed => "malformed",
            KeyWrapError::UnknownId => "unknown_id",
            KeyWrapError::BadTag => "bad_tag",
            KeyWrapError::PlainRefused => "plain_refused",
        }
    }

    /// The `reason` label of `dyncert_records_rejected_total`.
    pub fn label(&self) -> &'static str {
        match self {
            KeyWrapError::Malformed => "key_decrypt_malformed",
            KeyWrapError::UnknownId => "key_decrypt_unknown_id",
            KeyWrapError::BadTag => "key_decrypt_bad_tag",
            KeyWrapError::PlainRefused => "key_plain_refused",
        }
    }

    /// For the log line.
    pub fn reason(&self) -> &'static str {
        match self {
            KeyWrapError::Malformed => {
                "field \"key\" holds a malformed encrypted key \
                 (expected dyncert:v1:ID:BASE64 of nonce, ciphertext and tag)"
            }
            KeyWrapError::UnknownId => {
                "field \"key\" is encrypted under a key id that no \
                 dyncert_key_decryption_key names"
            }
            KeyWrapError::BadTag => {
                "field \"key\" could not be decrypted: authentication failed \
                 (ciphertext altered, wrong key for its id, or made for another record key)"
            }
            KeyWrapError::PlainRefused => {
                "field \"key\" holds an unencrypted private key and \
                 dyncert_key_encryption is required"
            }
        }
    }

    /// [`KeyWrapError::reason`] for the second key of a record
    /// (`key_rsa`), counted under the same labels.
    pub fn second_reason(&self) -> &'static str {
        match self {
            KeyWrapError::Malformed => {
                "field \"key_rsa\" holds a malformed encrypted key \
                 (expected dyncert:v1:ID:BASE64 of nonce, ciphertext and tag)"
            }
            KeyWrapError::UnknownId => {
                "field \"key_rsa\" is encrypted under a key id that no \
                 dyncert_key_decryption_key names"
            }
            KeyWrapError::BadTag => {
                "field \"key_rsa\" could not be decrypted: authentication failed \
                 (ciphertext altered, wrong key for its id, or made for another record key)"
            }
            KeyWrapError::PlainRefused => {
                "field \"key_rsa\" holds an unencrypted private key and \
                 dyncert_key_encryption is required"
            }
        }
    }
}

impl From<KeyWrapError> for Refusal {
    fn from(e: KeyWrapError) -> Self {
        Refusal {
            reason: e.reason(),
            label: e.label(),
            record: None,
        }
    }
}

/// Key-encryption keys by id. Debug never shows a key; the bytes are
/// overwritten when the ring is dropped.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Keyring {
    keys: Vec<(String, [u8; KEY_LEN])>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("ids", &self.ids().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Drop for Keyring {
    fn drop(&mut self) {
        for (_, k) in &mut self.keys {
            k.fill(0);
            // Keeps the stores above from being optimised away.
            std::hint::black_box(&k);
        }
    }
}

impl Keyring {
    pub fn new() -> Keyring {
        Keyring::default()
    }

    /// Adds a key; false (nothing added) when the id is already there.
    pub fn insert(&mut self, id: &str, key: [u8; KEY_LEN]) -> bool {
        if self.get(id).is_some() {
            return false;
        }
        self.keys.push((id.to_owned(), key));
        true
    }

    pub fn get(&self, id: &str) -> Option<&[u8; KEY_LEN]> {
        self.keys.iter().find(|(i, _)| i == id).map(|(_, k)| k)
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(i, _)| i.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What the fetcher needs to open records: the keys and the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyWrapConfig {
    pub ring: Keyring,
    pub mode: KeyEncryption,
}

/// A key id: 1 to [`MAX_ID_LEN`] characters of `[A-Za-z0-9_.-]`.
pub fn valid_id(id: &[u8]) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// True when a key field is meant as an envelope (starts with
/// `dyncert:`, surrounding whitespace aside). PEM starts with `-----`,
/// DER with `0x30`, a key reference with another scheme.
pub fn is_envelope(field: &[u8]) -> bool {
    field.trim_ascii().starts_with(MAGIC)
}

/// A parsed envelope: the key id and the decoded nonce ‖ ciphertext ‖ tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub id: &'a str,
    pub sealed: Vec<u8>,
}

/// Parses an envelope (surrounding ASCII whitespace is ignored), without
/// decrypting it.
pub fn parse(field: &[u8]) -> Result<Envelope<'_>, KeyWrapError> {
    let field = field.trim_ascii();
    if field.len() > MAX_ENVELOPE_BYTES {
        return Err(KeyWrapError::Malformed);
    }
    let rest = field
        .strip_prefix(PREFIX_V1)
        .ok_or(KeyWrapError::Malformed)?;
    let colon = rest
        .iter()
        .position(|&b| b == b':')
        .ok_or(KeyWrapError::Malformed)?;
    let (id, b64) = (&rest[..colon], &rest[colon + 1..]);
    if !valid_id(id) {
        return Err(KeyWrapError::Malformed);
    }
    // valid_id: ASCII only.
    let id = std::str::from_utf8(id).map_err(|_| KeyWrapError::Malformed)?;
    let sealed = STANDARD.decode(b64).map_err(|_| KeyWrapError::Malformed)?;
    // At least one byte of plaintext.
    if sealed.len() <= NONCE_LEN + TAG_LEN {
        return Err(KeyWrapError::Malformed);
    }
    Ok(Envelope { id, sealed })
}

/// Decrypts an envelope with the key its id names; `aad` is the record's
/// full Redis key name.
pub fn open(field: &[u8], aad: &[u8], ring: &Keyring) -> Result<Vec<u8>, KeyWrapError> {
    let env = parse(field)?;
    let key = ring.get(env.id).ok_or(KeyWrapError::UnknownId)?;
    let (nonce, rest) = env.sealed.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    decrypt_aead(
        Cipher::aes_256_gcm(),
        key,
        Some(nonce),
        aad,
        ciphertext,
        tag,
    )
    .map_err(|_| KeyWrapError::BadTag)
}

/// Encrypts `plaintext` (a key field's value) under key `id` of `ring`
/// for the record stored under `aad`, with a fresh random nonce. `None`:
/// no such id, an empty or oversized plaintext, or OpenSSL failed.
pub fn seal(plaintext: &[u8], aad: &[u8], id: &str, ring: &Keyring) -> Option<Vec<u8>> {
    if plaintext.is_empty() || !valid_id(id.as_bytes()) {
        return None;
    }
    let key = ring.get(id)?;
    let mut nonce = [0u8; NONCE_LEN];
    openssl::rand::rand_bytes(&mut nonce).ok()?;
    let mut tag = [0u8; TAG_LEN];
    let ciphertext = encrypt_aead(
        Cipher::aes_256_gcm(),
        key,
        Some(&nonce),
        aad,
        plaintext,
        &mut tag,
    )
    .ok()?;
    let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len() + TAG_LEN);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    sealed.extend_from_slice(&tag);
    let mut out = PREFIX_V1.to_vec();
    out.extend_from_slice(id.as_bytes());
    out.push(b':');
    out.extend_from_slice(STANDARD.encode(&sealed).as_bytes());
    (out.len() <= MAX_ENVELOPE_BYTES).then_some(out)
}

/// The key material of a record's key field under `cfg`: `Ok(None)` when
/// the field is to be used as it is (a plain key, or a key reference,
/// while allowed), `Ok(Some)` the decrypted key of an envelope, `Err` a
/// field that must not be served. `aad`: the record's Redis key name.
pub fn unwrap_key(
    field: &[u8],
    aad: &[u8],
    cfg: &KeyWrapConfig,
) -> Result<Option<Vec<u8>>, KeyWrapError> {
    if is_envelope(field) {
        return open(field, aad, &cfg.ring).map(Some);
    }
    // A key reference names a key in a device: nothing to encrypt.
    if cfg.mode == KeyEncryption::Required && !crate::keyref::is_reference(field) {
        return Err(KeyWrapError::PlainRefused);
    }
    Ok(None)
}

/// A key-encryption key file: exactly 32 raw bytes, or 64 hex digits, or
/// the base64 of 32 bytes (44 characters), the text forms with one
/// optional trailing newline (`openssl rand 32`, `openssl rand -hex 32`,
/// `openssl rand -base64 32` all write one).
pub fn key_of_file(contents: &[u8]) -> Result<[u8; KEY_LEN], &'static str> {
    const WHAT: &str = "must hold exactly 32 bytes, 64 hex digits or the base64 of 32 bytes";
    if contents.len() == KEY_LEN {
        let mut k = [0u8; KEY_LEN];
        k.copy_from_slice(contents);
        return Ok(k);
    }
    let text = contents.strip_suffix(b"\n").unwrap_or(contents);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    let mut k = [0u8; KEY_LEN];
    if text.len() == 2 * KEY_LEN {
        for (i, pair) in text.chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|_| WHAT)?;
            if !pair.iter().all(u8::is_ascii_hexdigit) {
                return Err(WHAT);
            }
            k[i] = u8::from_str_radix(hex, 16).map_err(|_| WHAT)?;
        }
        return Ok(k);
    }
    if text.len() == 44 {
        let v = STANDARD.decode(text).map_err(|_| WHAT)?;
        if v.len() == KEY_LEN {
            k.copy_from_slice(&v);
            return Ok(k);
        }
    }
    Err(WHAT)
}

/// The permission bits of a key file allow anyone to read it.
pub fn world_readable(mode: u32) -> bool {
    mode & 0o004 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const AAD: &[u8] = b"dyncert:cert:shop.example.com";
    const PEM: &[u8] =
        b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----\n";

    fn ring() -> Keyring {
        let mut r = Keyring::new();
        assert!(r.insert("k1", [1; KEY_LEN]));
        assert!(r.insert("k2", [2; KEY_LEN]));
        r
    }

    fn cfg(mode: KeyEncryption) -> KeyWrapConfig {
        KeyWrapConfig { ring: ring(), mode }
    }

    #[test]
    fn round_trip_under_each_id() {
        for id in ["k1", "k2"] {
            let env = seal(PEM, AAD, id, &ring()).unwrap();
            assert!(env.starts_with(format!("dyncert:v1:{id}:").as_bytes()));
            assert!(!env.windows(5).any(|w| w == b"BEGIN"));
            assert_eq!(open(&env, AAD, &ring()).unwrap(), PEM);
            assert_eq!(
                unwrap_key(&env, AAD, &cfg(KeyEncryption::Required)).unwrap(),
                Some(PEM.to_vec())
            );
        }
        // DER too, and surrounding whitespace is ignored.
        let der = [0x30, 0x81, 0x87, 0x02, 0x01, 0x00];
        let mut env = seal(&der, AAD, "k1", &ring()).unwrap();
        env.push(b'\n');
        assert_eq!(open(&env, AAD, &ring()).unwrap(), der);
        // Fresh nonces: two seals differ.
        assert_ne!(seal(PEM, AAD, "k1", &ring()), seal(PEM, AAD, "k1", &ring()));
    }

    #[test]
    fn an_envelope_sealed_by_another_implementation_opens() {
        // Python's cryptography (AESGCM), key 0x42 * 32, nonce 00..0b: the
        // format is the documented one, not only what seal() writes.
        let env = b"dyncert:v1:k1:AAECAwQFBgcICQoLKPO88Jxut0zUSGRDg5QNembY7iHlEM/EPrQNLddd+rcV3MzjPHJvvqgMd1RczOFVKIlRTfmKRQg4iY/40S7syJcslnQ/7R4XG3LwsJObvL612GLiAi6gdwi2AmrOxn0oJv0Dg2AKTWcZMy0DhM50oIGCduimmbc=";
        let mut ring = Keyring::new();
        ring.insert("k1", [0x42; KEY_LEN]);
        let plain = open(env, b"dyncert:cert:fuzz.example", &ring).unwrap();
        assert!(plain.starts_with(b"-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(
            &parse(env).unwrap().sealed[..NONCE_LEN],
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
        );
    }

    #[test]
    fn a_key_moved_to_another_name_does_not_decrypt() {
        let env = seal(PEM, AAD, "k1", &ring()).unwrap();
        assert_eq!(
            open(&env, b"dyncert:cert:evil.example.com", &ring()),
            Err(KeyWrapError::BadTag)
        );
        assert_eq!(
            open(&env, b"other:shop.example.com", &ring()),
            Err(KeyWrapError::BadTag)
        );
    }

    #[test]
    fn unknown_or_wrong_keys_are_refused() {
        let env = seal(PEM, AAD, "k1", &ring()).unwrap();
        assert_eq!(
            open(&env, AAD, &Keyring::new()),
            Err(KeyWrapError::UnknownId)
        );
        let mut other = Keyring::new();
        other.insert("k1", [9; KEY_LEN]);
        assert_eq!(open(&env, AAD, &other), Err(KeyWrapError::BadTag));
        // The id is authenticated through the key it selects: relabelled
        // under k2, it does not decrypt.
        let moved = [&b"dyncert:v1:k2:"[..], &env[b"dyncert:v1:k1:".len()..]].concat();
        assert_eq!(open(&moved, AAD, &ring()), Err(KeyWrapError::BadTag));
        assert_eq!(seal(PEM, AAD, "k3", &ring()), None);
    }

    #[test]
    fn every_tampered_byte_is_detected() {
        let env = seal(b"k", AAD, "k1", &ring()).unwrap();
        let p = parse(&env).unwrap();
        for i in 0..p.sealed.len() {
            let mut s = p.sealed.clone();
            s[i] ^= 0x01;
            let e = [&b"dyncert:v1:k1:"[..], STANDARD.encode(&s).as_bytes()].concat();
            assert_eq!(
                open(&e, AAD, &ring()),
                Err(KeyWrapError::BadTag),
                "byte {i}"
            );
        }
    }

    #[test]
    fn truncated_and_malformed_envelopes_are_refused() {
        let env = seal(PEM, AAD, "k1", &ring()).unwrap();
        // Cut anywhere: bad base64 or a bad tag, never a panic.
        for n in 0..env.len() {
            assert!(open(&env[..n], AAD, &ring()).is_err(), "{n}");
        }
        // Cut at a base64 quantum: decodes, fails authentication.
        let p = parse(&env).unwrap();
        let short = [
            &b"dyncert:v1:k1:"[..],
            STANDARD.encode(&p.sealed[..p.sealed.len() - 3]).as_bytes(),
        ]
        .concat();
        assert_eq!(open(&short, AAD, &ring()), Err(KeyWrapError::BadTag));
        for bad in [
            &b"dyncert:"[..],
            b"dyncert:v2:k1:AAAA",
            b"dyncert:v1:",
            b"dyncert:v1:k1",
            b"dyncert:v1::AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            b"dyncert:v1:k 1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            b"dyncert:v1:k/1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            // Not base64 / no padding / line breaks / too short.
            b"dyncert:v1:k1:!!!!",
            b"dyncert:v1:k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            b"dyncert:v1:k1:AAAAAAAAAAAAAAAAAAAA\nAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            b"dyncert:v1:k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
        ] {
            assert_eq!(
                open(bad, AAD, &ring()),
                Err(KeyWrapError::Malformed),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_id = [&b"dyncert:v1:"[..], &[b'a'; MAX_ID_LEN + 1], b":AAAA"].concat();
        assert_eq!(parse(&long_id), Err(KeyWrapError::Malformed));
        assert!(valid_id(&[b'a'; MAX_ID_LEN]));
        assert!(valid_id(b"2026-01_a.B"));
    }

    #[test]
    fn oversized_envelopes_are_refused_before_decoding() {
        let mut big = b"dyncert:v1:k1:".to_vec();
        big.resize(MAX_ENVELOPE_BYTES + 4, b'A');
        assert_eq!(parse(&big), Err(KeyWrapError::Malformed));
        // A plaintext whose envelope would not fit in a key field.
        assert_eq!(seal(&[b'a'; MAX_ENVELOPE_BYTES], AAD, "k1", &ring()), None);
        assert_eq!(seal(b"", AAD, "k1", &ring()), None);
    }

    #[test]
    fn plain_keys_follow_the_mode_and_references_pass() {
        let opt = cfg(KeyEncryption::Optional);
        let req = cfg(KeyEncryption::Required);
        assert_eq!(unwrap_key(PEM, AAD, &opt), Ok(None));
        assert_eq!(unwrap_key(PEM, AAD, &req), Err(KeyWrapError::PlainRefused));
        let der = [0x30, 0x81, 0x87];
        assert_eq!(unwrap_key(&der, AAD, &req), Err(KeyWrapError::PlainRefused));
        let r = b"engine:pkcs11:pkcs11:token=t;object=k";
        assert_eq!(unwrap_key(r, AAD, &req), Ok(None));
        // An envelope is opened whatever the mode, and refused without keys.
        let env = seal(PEM, AAD, "k1", &ring()).unwrap();
        assert_eq!(unwrap_key(&env, AAD, &opt), Ok(Some(PEM.to_vec())));
        assert_eq!(
            unwrap_key(&env, AAD, &KeyWrapConfig::default()),
            Err(KeyWrapError::UnknownId)
        );
    }

    #[test]
    fn labels_are_distinct_and_messages_carry_no_bytes() {
        let all = [
            KeyWrapError::Malformed,
            KeyWrapError::UnknownId,
            KeyWrapError::BadTag,
            KeyWrapError::PlainRefused,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.label(), b.label());
                assert_ne!(a.as_str(), b.as_str());
            }
        }
        assert!(!format!("{:?}", ring()).contains("1, 1"));
        assert!(format!("{:?}", ring()).contains("k2"));
    }

    #[test]
    fn key_files_in_raw_hex_and_base64() {
        let raw = [7u8; KEY_LEN];
        assert_eq!(key_of_file(&raw), Ok(raw));
        let hex = "07".repeat(32);
        assert_eq!(key_of_file(hex.as_bytes()), Ok(raw));
        assert_eq!(key_of_file(format!("{hex}\n").as_bytes()), Ok(raw));
        assert_eq!(key_of_file(format!("{hex}\r\n").as_bytes()), Ok(raw));
        let b64 = STANDARD.encode(raw);
        assert_eq!(key_of_file(b64.as_bytes()), Ok(raw));
        assert_eq!(key_of_file(format!("{b64}\n").as_bytes()), Ok(raw));
        for bad in [
            &b""[..],
            &[7u8; 31],
            &[7u8; 33],
            "0g".repeat(32).as_bytes(),
            "+7".repeat(32).as_bytes(),
            format!("{hex}\n\n").as_bytes(),
            STANDARD.encode([7u8; 33]).as_bytes(),
        ] {
            assert!(
                key_of_file(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(world_readable(0o644));
        assert!(world_readable(0o604));
        assert!(!world_readable(0o640));
        assert!(!world_readable(0o600));
    }
}
