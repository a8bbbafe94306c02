//! Feeds arbitrary bytes, as a host-wide store could hold them after a
//! bug or a stray write, to the compact record decoder.
//!
//! Beyond "no panic": whatever decodes re-encodes to the same bytes (the
//! format has one encoding per record), and no decoded field is larger
//! than the input.

#![no_main]

use dyncert_core::compact::Compact;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((record, deadlines)) = Compact::decode(data) {
        assert_eq!(record.encode(&deadlines), data);
        assert!(record.leaf.len() <= data.len());
    }
});
