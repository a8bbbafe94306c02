//! Feeds arbitrary bytes, as a record's `key` field could hold them, to
//! the envelope parser and decryptor of encrypted private keys.
//!
//! Beyond "no panic", it checks what the fetcher relies on: a field that
//! does not start with `dyncert:` is never taken for an envelope; a parsed
//! envelope has a valid id and at least nonce + tag + one byte; nothing
//! decrypts without the right key and record name (the ring's key is
//! fixed, so only sealed seeds could open, and those under their name
//! only); and an input's own seal round-trips.

#![no_main]

use dyncert_core::keywrap::{
    is_envelope, open, parse, seal, unwrap_key, valid_id, KeyEncryption, KeyWrapConfig,
    KeyWrapError, Keyring, MAX_ENVELOPE_BYTES, NONCE_LEN, TAG_LEN,
};
use libfuzzer_sys::fuzz_target;

const AAD: &[u8] = b"dyncert:cert:fuzz.example";

fuzz_target!(|data: &[u8]| {
    let mut ring = Keyring::new();
    ring.insert("k1", [0x42; 32]);
    if let Ok(env) = parse(data) {
        assert!(is_envelope(data));
        assert!(valid_id(env.id.as_bytes()));
        assert!(env.sealed.len() > NONCE_LEN + TAG_LEN);
        assert!(data.trim_ascii().len() <= MAX_ENVELOPE_BYTES);
    }
    let opened = open(data, AAD, &ring);
    if opened.is_ok() {
        // Under another name it must not open.
        assert_eq!(
            open(data, b"dyncert:cert:other.example", &ring),
            Err(KeyWrapError::BadTag)
        );
    }
    let required = KeyWrapConfig {
        ring: ring.clone(),
        mode: KeyEncryption::Required,
    };
    let optional = KeyWrapConfig {
        ring: ring.clone(),
        mode: KeyEncryption::Optional,
    };
    if !is_envelope(data) {
        assert_eq!(unwrap_key(data, AAD, &optional), Ok(None));
        assert!(parse(data).is_err());
    } else {
        assert_eq!(unwrap_key(data, AAD, &required), opened.clone().map(Some));
    }
    if let Some(env) = seal(data, AAD, "k1", &ring) {
        assert_eq!(open(&env, AAD, &ring).as_deref(), Ok(data));
    }
});
