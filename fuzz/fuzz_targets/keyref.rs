//! Feeds arbitrary bytes, as a record's `key` field could hold them, to
//! the key-reference parser that decides whether OpenSSL's pkcs11 engine
//! is asked to load anything.
//!
//! Beyond "no panic", it checks what the engine relies on: nothing is
//! accepted with references off; an accepted reference is the pkcs11
//! engine's, a `pkcs11:` URI within the length bound, of printable ASCII
//! without separators that could smuggle a query, a quote or a NUL into
//! the engine; and PEM is never taken for a reference.

#![no_main]

use dyncert_core::keyref::{is_reference, parse, KeyRefMode, ENGINE_PREFIX, MAX_URI_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let off = parse(data, KeyRefMode::Off);
    let engine = parse(data, KeyRefMode::Engine);
    assert!(matches!(off, Ok(None) | Err(_)));
    assert_eq!(off.is_ok(), !is_reference(data));
    if data.trim_ascii_start().starts_with(b"-----") {
        assert_eq!(engine, Ok(None));
    }
    if let Ok(Some(r)) = engine {
        let uri = r.uri();
        assert!(is_reference(data));
        assert!(uri.starts_with("pkcs11:") && uri.len() <= MAX_URI_BYTES);
        assert!(String::from_utf8_lossy(data.trim_ascii()) == format!("{ENGINE_PREFIX}{uri}"));
        assert!(uri
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"?&\"'\\<>`{}|^#[] ".contains(&b)));
    }
});
