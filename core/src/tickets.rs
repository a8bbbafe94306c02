//! Session ticket keys shared by every terminator (`dyncert_session_tickets`):
//! the stored form of the key set in Redis, the rotation decision, the set
//! after a rotation, and the lookup of a ticket's key by its name.
//!
//! One Redis string (default `dyncert:ticket-keys`) holds the set:
//!
//! ```text
//! "DCTK" | version 1 (1 byte) | count (1 byte) | generation (u64 BE)
//!        | created, unix ms (u64 BE) | count x 80-byte keys, newest first
//! ```
//!
//! Each key is laid out like nginx's 80-byte `ssl_session_ticket_key`
//! files: 16 bytes of name, 32 of HMAC-SHA256 key, 32 of AES-256 key.
//! With a `dyncert_key_decryption_key` the whole value is sealed in a
//! `keywrap` envelope (AES-256-GCM, AAD = the Redis key name).
#![forbid(unsafe_code)]

use std::fmt;

use crate::keywrap::{self, KeyWrapError, Keyring};

/// Default Redis key of the key set.
pub const DEFAULT_KEY: &str = "dyncert:ticket-keys";
/// Suffix of the lock key taken by the terminator that rotates.
pub const LOCK_SUFFIX: &str = ":lock";
/// Suffix of the channel a rotation is announced on.
pub const ROTATED_SUFFIX: &str = ":rotated";
/// Bytes of one key: name, HMAC key, AES key.
pub const KEY_BYTES: usize = 80;
pub const NAME_BYTES: usize = 16;
/// Most previous keys kept (`keep=`).
pub const MAX_KEEP: usize = 8;
/// Default previous keys kept.
pub const DEFAULT_KEEP: usize = 2;
/// Default rotation period (12 h).
pub const DEFAULT_ROTATE_MS: u64 = 12 * 3600 * 1000;
/// Shortest rotation period accepted (tests use a few seconds).
pub const MIN_ROTATE_MS: u64 = 1000;

const MAGIC: &[u8; 4] = b"DCTK";
const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 1 + 8 + 8;
/// Largest plain encoding.
pub const MAX_PLAIN: usize = HEADER + (1 + MAX_KEEP) * KEY_BYTES;
/// Largest stored value read (a sealed set in base64 fits well within).
pub const MAX_STORED: usize = 4096;

/// One ticket key. `Debug` never shows the key bytes; they are
/// overwritten when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketKey {
    bytes: [u8; KEY_BYTES],
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKey").finish_non_exhaustive()
    }
}

impl Drop for TicketKey {
    fn drop(&mut self) {
        self.bytes.fill(0);
        std::hint::black_box(&self.bytes);
    }
}

impl TicketKey {
    /// A key from 80 random bytes (a CSPRNG's: the caller's job).
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> TicketKey {
        TicketKey { bytes }
    }
    pub fn name(&self) -> &[u8; NAME_BYTES] {
        self.bytes[..16].try_into().expect("16 bytes")
    }
    pub fn hmac_key(&self) -> &[u8; 32] {
        self.bytes[16..48].try_into().expect("32 bytes")
    }
    pub fn aes_key(&self) -> &[u8; 32] {
        self.bytes[48..80].try_into().expect("32 bytes")
    }

    /// Whether a part (name, HMAC or AES key) is one byte value repeated:
    /// never what a CSPRNG makes, but what a broken tool writes (zeros,
    /// a fill pattern). Such a key would let anyone read the tickets.
    fn is_degenerate(&self) -> bool {
        let uniform = |part: &[u8]| part.iter().all(|&b| b == part[0]);
        uniform(self.name()) || uniform(self.hmac_key()) || uniform(self.aes_key())
    }
}

/// The shared key set: the first key encrypts, all decrypt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySet {
    /// Incremented by every rotation.
    pub generation: u64,
    /// When the current key was made (unix ms).
    pub created_ms: u64,
    /// Newest first; never empty.
    pub keys: Vec<TicketKey>,
}

/// Why a stored key set is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TicketKeysError {
    #[error("oversized ticket key set")]
    Oversized,
    #[error("ticket key set of an unknown format")]
    BadFormat,
    #[error("ticket key set with no keys or too many")]
    BadCount,
    #[error("ticket key set of the wrong length")]
    BadLength,
    #[error("sealed ticket key set that cannot be opened ({0})")]
    Sealed(&'static str),
    #[error("plain ticket key set while dyncert_key_encryption is required")]
    PlainRefused,
}

impl TicketKeysError {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            TicketKeysError::Oversized => "oversized",
            TicketKeysError::BadFormat | TicketKeysError::BadCount | TicketKeysError::BadLength => {
                "malformed"
            }
            TicketKeysError::Sealed(_) => "sealed",
            TicketKeysError::PlainRefused => "plain",
        }
    }
}

impl KeySet {
    /// The plain encoding (see the module comment).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.keys.len() * KEY_BYTES);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.keys.len() as u8);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        for k in &self.keys {
            out.extend_from_slice(&k.bytes);
        }
        out
    }

    /// Parses the plain encoding: exact length, 1 to `1 + MAX_KEEP` keys.
    pub fn decode(b: &[u8]) -> Result<KeySet, TicketKeysError> {
        if b.len() > MAX_PLAIN {
            return Err(TicketKeysError::Oversized);
        }
        if b.len() < HEADER || &b[..4] != MAGIC || b[4] != VERSION {
            return Err(TicketKeysError::BadFormat);
        }
        let count = b[5] as usize;
        if count == 0 || count > 1 + MAX_KEEP {
            return Err(TicketKeysError::BadCount);
        }
        if b.len() != HEADER + count * KEY_BYTES {
            return Err(TicketKeysError::BadLength);
        }
        let generation = u64::from_be_bytes(b[6..14].try_into().expect("8 bytes"));
        let created_ms = u64::from_be_bytes(b[14..22].try_into().expect("8 bytes"));
        let keys: Vec<TicketKey> = b[HEADER..]
            .chunks_exact(KEY_BYTES)
            .map(|c| TicketKey::from_bytes(c.try_into().expect("80 bytes")))
            .collect();
        if keys.iter().any(TicketKey::is_degenerate) {
            return Err(TicketKeysError::BadFormat);
        }
        // Two keys with one name: a ticket's name would pick the first,
        // so the set is not what its writer meant (a tool bug).
        if keys
            .iter()
            .enumerate()
            .any(|(i, k)| keys[..i].iter().any(|p| p.name() == k.name()))
        {
            return Err(TicketKeysError::BadFormat);
        }
        Ok(KeySet {
            generation,
            created_ms,
            keys,
        })
    }

    /// The set after a rotation: `fresh` first, then at most `keep` of
    /// the previous keys; the generation counts on from `prev`'s.
    pub fn rotate(prev: Option<&KeySet>, fresh: TicketKey, now_ms: u64, keep: usize) -> KeySet {
        let keep = keep.min(MAX_KEEP);
        let mut keys = Vec::with_capacity(1 + keep);
        keys.push(fresh);
        if let Some(p) = prev {
            keys.extend(p.keys.iter().take(keep).cloned());
        }
        KeySet {
            generation: prev.map_or(1, |p| p.generation.wrapping_add(1)),
            created_ms: now_ms,
            keys,
        }
    }

    /// The key that encrypts new tickets.
    pub fn current(&self) -> &TicketKey {
        &self.keys[0]
    }

    /// The key a ticket names, and whether it is the current one.
    pub fn find(&self, name: &[u8]) -> Option<(&TicketKey, Lookup)> {
        let i = self.keys.iter().position(|k| k.name() == name)?;
        let kind = if i == 0 {
            Lookup::Current
        } else {
            Lookup::Previous
        };
        Some((&self.keys[i], kind))
    }
}

/// What a ticket's key name found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The current key: the ticket is fine as it is.
    Current,
    /// A previous key: resume, and issue a ticket under the current one.
    Previous,
}

/// Whether the key made at `created_ms` is due for rotation at `now_ms`.
/// A creation time further in the future than one period (a clock gone
/// wrong) is due too, so a bad clock cannot pin a key forever.
pub fn due(now_ms: u64, created_ms: u64, period_ms: u64) -> bool {
    now_ms >= created_ms.saturating_add(period_ms) || created_ms > now_ms.saturating_add(period_ms)
}

/// Whether a set made at `created_ms` must no longer be used at all at
/// `now_ms`: `keep + 1` periods old, when even its newest key would have
/// been rotated out. A worker that cannot read a newer set (Redis down,
/// a refused value) then stops issuing and accepting tickets rather than
/// keep one key forever.
pub fn expired(now_ms: u64, created_ms: u64, period_ms: u64, keep: usize) -> bool {
    let life = period_ms.saturating_mul(keep as u64 + 1);
    now_ms >= created_ms.saturating_add(life)
}

/// How the key set is stored: sealed under `seal_id` of `ring` (the first
/// `dyncert_key_decryption_key`) when there is one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Storage {
    pub ring: Keyring,
    pub seal_id: Option<String>,
    /// `dyncert_key_encryption required`: a plain stored set is refused.
    pub require_sealed: bool,
}

impl Storage {
    /// The value to SET under `key`; `None` when sealing fails.
    pub fn store(&self, set: &KeySet, key: &str) -> Option<Vec<u8>> {
        let plain = set.encode();
        match &self.seal_id {
            Some(id) => keywrap::seal(&plain, key.as_bytes(), id, &self.ring),
            None => Some(plain),
        }
    }

    /// The key set from a stored value read under `key`.
    pub fn load(&self, value: &[u8], key: &str) -> Result<KeySet, TicketKeysError> {
        if value.len() > MAX_STORED {
            return Err(TicketKeysError::Oversized);
        }
        if keywrap::is_envelope(value) {
            let plain = keywrap::open(value, key.as_bytes(), &self.ring)
                .map_err(|e: KeyWrapError| TicketKeysError::Sealed(e.as_str()))?;
            return KeySet::decode(&plain);
        }
        if self.require_sealed {
            return Err(TicketKeysError::PlainRefused);
        }
        KeySet::decode(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key whose every part varies, named by `b` (its first byte).
    fn key(b: u8) -> TicketKey {
        TicketKey::from_bytes(std::array::from_fn(|i| b ^ i as u8))
    }

    fn plain(count: u8, keys: &[[u8; KEY_BYTES]]) -> Vec<u8> {
        let mut v = KeySet::rotate(None, key(1), 5, 0).encode()[..HEADER].to_vec();
        v[5] = count;
        for k in keys {
            v.extend_from_slice(k);
        }
        v
    }

    #[test]
    fn a_set_round_trips_and_names_its_parts() {
        let set = KeySet::rotate(None, key(7), 1000, 2);
        assert_eq!(set.generation, 1);
        let b = set.encode();
        assert_eq!(b.len(), HEADER + KEY_BYTES);
        assert_eq!(KeySet::decode(&b).unwrap(), set);
        let k = set.current();
        let bytes: [u8; KEY_BYTES] = std::array::from_fn(|i| 7 ^ i as u8);
        assert_eq!(k.name()[..], bytes[..16]);
        assert_eq!(k.hmac_key()[..], bytes[16..48]);
        assert_eq!(k.aes_key()[..], bytes[48..]);
        assert!(!format!("{k:?}").contains('7'));
    }

    #[test]
    fn keys_with_a_part_of_one_repeated_byte_are_refused() {
        let good: [u8; KEY_BYTES] = std::array::from_fn(|i| 3 ^ i as u8);
        assert!(KeySet::decode(&plain(1, &[good])).is_ok());
        assert_eq!(
            KeySet::decode(&plain(1, &[[0; KEY_BYTES]])),
            Err(TicketKeysError::BadFormat)
        );
        for (start, end) in [(0, 16), (16, 48), (48, 80)] {
            for fill in [0x00, 0x5a, 0xff] {
                let mut k = good;
                k[start..end].fill(fill);
                assert_eq!(
                    KeySet::decode(&plain(1, &[k])),
                    Err(TicketKeysError::BadFormat),
                    "part {start}..{end} filled with {fill:#x}"
                );
                // Also when only a previous key is degenerate.
                assert_eq!(
                    KeySet::decode(&plain(2, &[good, k])),
                    Err(TicketKeysError::BadFormat)
                );
            }
        }
        // One differing byte is enough: the check is for a fill, not for
        // entropy, which a stored value cannot show.
        let mut almost = [0u8; KEY_BYTES];
        almost[15] = 1;
        almost[47] = 1;
        almost[79] = 1;
        assert!(KeySet::decode(&plain(1, &[almost])).is_ok());
    }

    #[test]
    fn sets_with_two_keys_of_one_name_are_refused() {
        let a: [u8; KEY_BYTES] = std::array::from_fn(|i| 3 ^ i as u8);
        let b: [u8; KEY_BYTES] = std::array::from_fn(|i| 4 ^ i as u8);
        assert_eq!(KeySet::decode(&plain(2, &[a, b])).unwrap().keys.len(), 2);
        assert_eq!(
            KeySet::decode(&plain(2, &[a, a])),
            Err(TicketKeysError::BadFormat)
        );
        // Same name, other secrets: still ambiguous for a ticket.
        let mut same_name = b;
        same_name[..NAME_BYTES].copy_from_slice(&a[..NAME_BYTES]);
        assert_eq!(
            KeySet::decode(&plain(3, &[b, a, same_name])),
            Err(TicketKeysError::BadFormat)
        );
        // Refused sealed too, and labelled like any malformed set (the
        // previous set stays: the caller keeps what it had on any error).
        let mut ring = Keyring::new();
        ring.insert("k1", [3; 32]);
        let sealed = keywrap::seal(&plain(2, &[a, a]), DEFAULT_KEY.as_bytes(), "k1", &ring);
        let st = Storage {
            ring,
            seal_id: Some("k1".into()),
            require_sealed: true,
        };
        let err = st.load(&sealed.unwrap(), DEFAULT_KEY).unwrap_err();
        assert_eq!(err, TicketKeysError::BadFormat);
        assert_eq!(err.label(), "malformed");
    }

    #[test]
    fn rotation_prepends_and_keeps_the_configured_number() {
        let mut set = KeySet::rotate(None, key(1), 0, 2);
        for b in 2..=5 {
            set = KeySet::rotate(Some(&set), key(b), u64::from(b), 2);
        }
        assert_eq!(set.generation, 5);
        let names: Vec<u8> = set.keys.iter().map(|k| k.name()[0]).collect();
        assert_eq!(names, [5, 4, 3]);
        assert_eq!(set.find(key(5).name()).unwrap().1, Lookup::Current);
        assert_eq!(set.find(key(3).name()).unwrap().1, Lookup::Previous);
        assert!(set.find(key(2).name()).is_none());
        let capped = KeySet::rotate(Some(&set), key(9), 9, 100);
        assert_eq!(capped.keys.len(), 4);
    }

    #[test]
    fn rotation_is_due_after_the_period_or_on_a_wild_clock() {
        assert!(!due(1000, 1000, 500));
        assert!(!due(1499, 1000, 500));
        assert!(due(1500, 1000, 500));
        assert!(due(1000, 5000, 500));
        assert!(!due(1000, 1200, 500));
        assert!(due(u64::MAX, u64::MAX - 1, 1));
    }

    #[test]
    fn a_set_expires_when_its_newest_key_would_have_been_rotated_out() {
        assert!(!expired(2999, 0, 1000, 2));
        assert!(expired(3000, 0, 1000, 2));
        assert!(expired(1000, 0, 1000, 0));
        assert!(!expired(u64::MAX - 1, u64::MAX - 10, u64::MAX, 8));
    }

    #[test]
    fn malformed_sets_are_refused() {
        let good = KeySet::rotate(None, key(1), 0, 2).encode();
        assert_eq!(KeySet::decode(b""), Err(TicketKeysError::BadFormat));
        assert_eq!(
            KeySet::decode(&good[..good.len() - 1]),
            Err(TicketKeysError::BadLength)
        );
        let mut zero = good.clone();
        zero[5] = 0;
        assert_eq!(KeySet::decode(&zero), Err(TicketKeysError::BadCount));
        let mut many = good.clone();
        many[5] = 10;
        assert_eq!(KeySet::decode(&many), Err(TicketKeysError::BadCount));
        let mut v2 = good.clone();
        v2[4] = 2;
        assert_eq!(KeySet::decode(&v2), Err(TicketKeysError::BadFormat));
        assert_eq!(
            KeySet::decode(&vec![0; MAX_PLAIN + 1]),
            Err(TicketKeysError::Oversized)
        );
        assert_eq!(
            Storage::default().load(&vec![0; MAX_STORED + 1], DEFAULT_KEY),
            Err(TicketKeysError::Oversized)
        );
    }

    #[test]
    fn sealed_sets_open_only_under_their_key_name() {
        let mut ring = Keyring::new();
        ring.insert("k1", [3; 32]);
        let st = Storage {
            ring,
            seal_id: Some("k1".into()),
            require_sealed: true,
        };
        let set = KeySet::rotate(None, key(4), 9, 2);
        let stored = st.store(&set, DEFAULT_KEY).unwrap();
        assert!(keywrap::is_envelope(&stored));
        assert!(!stored.windows(16).any(|w| w == key(4).name()));
        assert_eq!(st.load(&stored, DEFAULT_KEY).unwrap(), set);
        assert!(matches!(
            st.load(&stored, "other"),
            Err(TicketKeysError::Sealed(_))
        ));
        assert_eq!(
            st.load(&set.encode(), DEFAULT_KEY),
            Err(TicketKeysError::PlainRefused)
        );
        let open = Storage::default();
        assert!(matches!(
            open.load(&stored, DEFAULT_KEY),
            Err(TicketKeysError::Sealed(_))
        ));
    }
}
