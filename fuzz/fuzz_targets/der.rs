//! Feeds arbitrary bytes, as the `key` field of a record could hold them
//! inside a `PRIVATE KEY` block, to the PKCS#8 unwrapper.
//!
//! Beyond "no panic": what it hands to OpenSSL's legacy decoders is
//! never larger than the input plus the curve it writes in, and unwrapping
//! the same input twice gives the same answer.

#![no_main]

use dyncert_core::der::{unwrap_pkcs8, Unwrapped};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let once = unwrap_pkcs8(data);
    assert_eq!(once, unwrap_pkcs8(data));
    match once {
        // The inner key plus a [0] curve OID (at most 2 + 2 + 8 bytes of
        // header growth here, curve OIDs are short).
        Some(Unwrapped::Sec1(sec1)) => assert!(sec1.len() <= data.len() + 32),
        Some(Unwrapped::Pkcs1(pkcs1)) => assert!(pkcs1.len() < data.len()),
        None => {}
    }
});
