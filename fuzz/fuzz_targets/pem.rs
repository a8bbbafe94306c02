//! Feeds arbitrary bytes, as a Redis record or an API answer could hold
//! them, to the PEM scanner that reads every certificate and key field.
//!
//! Beyond "no panic" (and libFuzzer's timeout catching anything slower
//! than linear), it checks what validation relies on: the block limit is
//! exact, a lower limit changes nothing but that, and the blocks found
//! survive a round trip through canonical PEM unchanged.

#![no_main]

use dyncert_core::pem::{parse, Block, PemError};
use libfuzzer_sys::fuzz_target;

/// The chain limit validation uses for `crt` and `client_ca`.
const MAX_BLOCKS: usize = 8;

fuzz_target!(|data: &[u8]| {
    let bounded = parse(data, MAX_BLOCKS);
    let unbounded = parse(data, usize::MAX);
    match &bounded {
        Ok(blocks) => {
            assert!(!blocks.is_empty() && blocks.len() <= MAX_BLOCKS);
            assert_eq!(&bounded, &unbounded);
            let decoded: usize = blocks.iter().map(|b| b.der.len()).sum();
            assert!(decoded <= data.len() / 4 * 3);
            assert_eq!(
                parse(data, blocks.len() - 1),
                Err(PemError::TooManyBlocks),
                "one block over the limit"
            );
            assert_eq!(parse(&encode(blocks), MAX_BLOCKS).as_ref(), Ok(blocks));
        }
        Err(PemError::TooManyBlocks) => match unbounded {
            Ok(blocks) => assert!(blocks.len() > MAX_BLOCKS),
            Err(e) => assert_ne!(e, PemError::TooManyBlocks),
        },
        Err(e) => assert_eq!(unbounded, Err(*e)),
    }
});

/// Canonical PEM: 64-column base64 lines, LF endings.
fn encode(blocks: &[Block]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in blocks {
        let label = b.label.as_str();
        out.extend_from_slice(format!("-----BEGIN {label}-----\n").as_bytes());
        for line in base64(&b.der).chunks(64) {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.extend_from_slice(format!("-----END {label}-----\n").as_bytes());
    }
    out
}

fn base64(bytes: &[u8]) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let mut n = [0u8; 3];
        n[..chunk.len()].copy_from_slice(chunk);
        let v = u32::from_be_bytes([0, n[0], n[1], n[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(v >> (18 - 6 * i)) as usize & 63]);
            } else {
                out.push(b'=');
            }
        }
    }
    out
}
