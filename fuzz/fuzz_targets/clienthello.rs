//! Feeds arbitrary bytes, as a client could send them before the TLS
//! handshake, to the peek parser with and without a PROXY header expected,
//! and any SNI it returns to the name rules.
//!
//! Beyond "no panic", it checks the properties the glue relies on: every
//! shorter peek that lacks part of the ClientHello says NeedMore (so the
//! glue never acts on half of one), with a bound the glue may wait for
//! (beyond the peek, and no shorter peek below it is a complete hello), and
//! a normalised name is stable and matches itself.

#![no_main]

use dyncert_core::clienthello::{peek_client_hello, Peek, PEEK_LIMIT};
use dyncert_core::name::{dns_name_matches, normalize_sni, wildcard_parent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for proxy_protocol in [false, true] {
        let full = peek_client_hello(data, proxy_protocol);
        if !matches!(full, Peek::Hello { .. }) {
            continue;
        }
        check_prefixes(data, proxy_protocol, &full);
        let Peek::Hello { sni } = full else {
            continue;
        };
        let Some(sni) = sni else {
            continue;
        };
        if let Ok(name) = normalize_sni(&sni) {
            assert!(name.len() <= 253);
            assert_eq!(normalize_sni(name.as_bytes()).as_deref(), Ok(name.as_str()));
            assert!(dns_name_matches(&name, &name));
            if let Some(parent) = wildcard_parent(&name) {
                assert!(dns_name_matches(&parent, &name));
            }
        }
    }
});

/// On a sample of shorter peeks (all of them would make the run
/// quadratic): while the ClientHello is incomplete the answer is NeedMore,
/// whose bound is beyond the peek and not beyond where the hello completes
/// (the peek one byte short of the bound is no Hello yet), and once it is
/// complete it is the same Hello for every longer peek (bytes after the
/// hello do not change it).
fn check_prefixes(data: &[u8], proxy_protocol: bool, full: &Peek<'_>) {
    let len = data.len().min(PEEK_LIMIT);
    let mut cuts = [0, 1, len / 2, len.saturating_sub(1), len / 3, len * 3 / 4];
    // Let the input steer a few cuts too, so the fuzzer can aim them.
    for (cut, byte) in cuts.iter_mut().skip(4).zip(data.iter().rev()) {
        *cut = (*cut + usize::from(*byte)) % len.max(1);
    }
    cuts.sort_unstable();
    let mut complete = false;
    for cut in cuts {
        if cut >= len {
            continue;
        }
        let prefix = data.get(..cut).unwrap_or_default();
        let peek = peek_client_hello(prefix, proxy_protocol);
        if let Peek::NeedMore { at_least } = peek {
            assert!(at_least > cut, "bound {at_least} for a peek of {cut}");
            let short = data.get(..at_least - 1).unwrap_or(data);
            assert!(
                !matches!(peek_client_hello(short, proxy_protocol), Peek::Hello { .. }),
                "a peek of {} is complete, below the bound {at_least} given at {cut}",
                short.len()
            );
        }
        if complete || !matches!(peek, Peek::NeedMore { .. }) {
            assert_eq!(&peek, full, "prefix of {cut} bytes");
            complete = true;
        }
    }
}
