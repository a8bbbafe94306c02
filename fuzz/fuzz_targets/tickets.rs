//! Feeds arbitrary bytes, as the `dyncert:ticket-keys` value in Redis
//! could hold them, to the session ticket key set loader.
//!
//! Beyond "no panic", it checks what the ticket callback relies on: a
//! loaded set has 1 to 1 + MAX_KEEP keys and re-encodes to the very bytes
//! it came from; a sealed value opens only under its own key name; with
//! sealing required a plain value never loads; and a rotation of a loaded
//! set keeps its current key as the first previous one.

#![no_main]

use dyncert_core::keywrap::{is_envelope, Keyring};
use dyncert_core::tickets::{KeySet, Storage, TicketKey, DEFAULT_KEY, MAX_KEEP};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut ring = Keyring::new();
    ring.insert("k1", [0x42; 32]);
    let open = Storage {
        ring: ring.clone(),
        seal_id: Some("k1".into()),
        require_sealed: false,
    };
    let strict = Storage {
        require_sealed: true,
        ..open.clone()
    };
    if let Ok(set) = open.load(data, DEFAULT_KEY) {
        assert!(!set.keys.is_empty() && set.keys.len() <= 1 + MAX_KEEP);
        if is_envelope(data) {
            assert!(open.load(data, "other").is_err());
        } else {
            assert_eq!(set.encode(), data);
            assert!(strict.load(data, DEFAULT_KEY).is_err());
        }
        let next = KeySet::rotate(
            Some(&set),
            TicketKey::from_bytes(std::array::from_fn(|i| 7 ^ i as u8)),
            0,
            1,
        );
        assert_eq!(next.keys.len(), 2);
        assert_eq!(next.keys[1], set.keys[0]);
        let stored = open.store(&next, DEFAULT_KEY).expect("seal");
        assert_eq!(open.load(&stored, DEFAULT_KEY).as_ref(), Ok(&next));
    }
});
