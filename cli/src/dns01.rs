//! DNS-01 and account-binding decisions of `dyncert issue` and `renew`:
//! which TXT name a hook is given, when a wildcard is refused, how a
//! hook's failure reads, and what an EAB key is. Pure, tested without a
//! CA or a hook.
#![forbid(unsafe_code)]

/// What a DNS hook's stderr may add to an error line, in characters.
pub const TAIL_CHARS: usize = 200;
/// Longest EAB key id accepted (CAs hand out short ids).
const MAX_EAB_KID: usize = 256;
/// Longest EAB MAC key accepted, decoded (HMAC keys are 32 to 64 bytes).
const MAX_EAB_KEY: usize = 256;

/// The TXT record name a CA looks up for `name` (RFC 8555 section 8.4),
/// as lego's exec provider gives it: `_acme-challenge.<name>.` with the
/// trailing dot, and without the `*.` of a wildcard.
pub fn challenge_fqdn(name: &str) -> String {
    let base = name.strip_prefix("*.").unwrap_or(name);
    format!("_acme-challenge.{}.", base.trim_end_matches('.'))
}

/// Why `names` cannot be issued with the challenge chosen: a wildcard is
/// only validated over DNS-01.
pub fn wildcard_refusal(names: &[String], dns01: bool) -> Option<String> {
    if dns01 {
        return None;
    }
    names.iter().find(|n| n.starts_with("*.")).map(|n| {
        format!(
            "cannot issue \"{}\": a wildcard needs the DNS-01 challenge (--dns-01 --dns-hook CMD)",
            n.escape_default()
        )
    })
}

/// The end of a hook's output on one line: control characters and runs
/// of white space become one space, and only the last `max` characters
/// are kept (an ellipsis says some were cut).
pub fn output_tail(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect();
    let line = words.join(" ");
    let count = line.chars().count();
    if count <= max {
        return line;
    }
    let kept: String = line.chars().skip(count - max).collect();
    format!("…{kept}")
}

/// How a hook run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookEnd {
    /// Exit status 0.
    Success,
    Exit(i32),
    Signal(i32),
    /// Killed after this many seconds.
    TimedOut(u64),
    /// Could not be started (the OS's reason).
    NotStarted(String),
}

/// The error text for a hook run that did not succeed, `None` when it
/// did: `DNS hook present for "NAME": exit status 1: <stderr tail>`.
pub fn hook_failure(action: &str, name: &str, end: &HookEnd, stderr_tail: &str) -> Option<String> {
    let how = match end {
        HookEnd::Success => return None,
        HookEnd::Exit(code) => format!("exit status {code}"),
        HookEnd::Signal(sig) => format!("killed by signal {sig}"),
        HookEnd::TimedOut(secs) => format!("no exit within {secs} s (killed)"),
        HookEnd::NotStarted(why) => format!("cannot start: {why}"),
    };
    let mut out = format!("DNS hook {action} for \"{name}\": {how}");
    if !stderr_tail.is_empty() {
        out.push_str(": ");
        out.push_str(stderr_tail);
    }
    Some(out)
}

/// `--eab-kid` and `--eab-hmac-key` checked: the id printable and short,
/// the key base64url (padding allowed, as CAs print it either way) of a
/// bounded size. Returns the raw key.
pub fn eab_key(kid: &str, hmac_b64url: &str) -> Result<Vec<u8>, String> {
    if kid.is_empty() || kid.len() > MAX_EAB_KID || !kid.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "--eab-kid: expected 1 to {MAX_EAB_KID} printable ASCII characters"
        ));
    }
    let trimmed = hmac_b64url.trim_end_matches('=');
    let key = base64url_decode(trimmed)
        .ok_or_else(|| "--eab-hmac-key: not base64url (A-Z a-z 0-9 - _)".to_owned())?;
    if key.is_empty() || key.len() > MAX_EAB_KEY {
        return Err(format!(
            "--eab-hmac-key: expected 1 to {MAX_EAB_KEY} bytes once decoded, got {}",
            key.len()
        ));
    }
    Ok(key)
}

/// Unpadded base64url (RFC 4648 section 5); `None` on any other byte or
/// an impossible length.
pub fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Unpadded base64url of `bytes`.
pub fn base64url_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_txt_name_has_the_prefix_and_the_trailing_dot_and_drops_the_wildcard() {
        assert_eq!(
            challenge_fqdn("*.tenant.test"),
            "_acme-challenge.tenant.test."
        );
        assert_eq!(
            challenge_fqdn("shop.example.com"),
            "_acme-challenge.shop.example.com."
        );
        assert_eq!(challenge_fqdn("a.test."), "_acme-challenge.a.test.");
    }

    #[test]
    fn wildcards_are_refused_without_dns01_only() {
        let names = vec!["tenant.test".to_owned(), "*.tenant.test".to_owned()];
        let why = wildcard_refusal(&names, false).unwrap();
        assert!(
            why.contains("\"*.tenant.test\"") && why.contains("DNS-01"),
            "{why}"
        );
        assert_eq!(wildcard_refusal(&names, true), None);
        assert_eq!(wildcard_refusal(&names[..1], false), None);
    }

    #[test]
    fn output_tail_is_one_bounded_line_of_the_end() {
        assert_eq!(
            output_tail(b"  bad\r\n token\x07 here\n", 100),
            "bad token here"
        );
        let long = "x".repeat(300) + " end";
        let t = output_tail(long.as_bytes(), 10);
        assert_eq!(t, "…xxxxxx end");
        assert_eq!(t.chars().count(), 11);
        assert_eq!(output_tail(b"\xff\xfeok", 10), "\u{fffd}\u{fffd}ok");
        assert_eq!(output_tail(b"", 10), "");
    }

    #[test]
    fn hook_failures_name_the_name_and_how_it_ended() {
        assert_eq!(
            hook_failure("present", "a.test", &HookEnd::Success, "x"),
            None
        );
        assert_eq!(
            hook_failure("present", "*.t.test", &HookEnd::Exit(1), "denied").unwrap(),
            "DNS hook present for \"*.t.test\": exit status 1: denied"
        );
        assert_eq!(
            hook_failure("cleanup", "a.test", &HookEnd::TimedOut(60), "").unwrap(),
            "DNS hook cleanup for \"a.test\": no exit within 60 s (killed)"
        );
        assert!(hook_failure("present", "a", &HookEnd::Signal(9), "")
            .unwrap()
            .contains("signal 9"));
        assert!(hook_failure(
            "present",
            "a",
            &HookEnd::NotStarted("No such file".into()),
            ""
        )
        .unwrap()
        .contains("cannot start: No such file"));
    }

    #[test]
    fn base64url_round_trips_and_refuses_other_alphabets() {
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n)
                .map(|i| i.wrapping_mul(37).wrapping_add(250))
                .collect();
            let s = base64url_encode(&bytes);
            assert!(
                !s.contains('=') && !s.contains('+') && !s.contains('/'),
                "{s}"
            );
            assert_eq!(base64url_decode(&s).unwrap(), bytes, "{s}");
        }
        assert_eq!(base64url_encode(b"\xfb\xff"), "-_8");
        assert_eq!(base64url_decode("a+b/"), None);
        assert_eq!(base64url_decode("abcde"), None);
    }

    #[test]
    fn eab_arguments_are_checked() {
        // pebble's example key.
        let key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
        assert_eq!(eab_key("kid-1", key).unwrap().len(), 48);
        assert_eq!(eab_key("kid-1", "AAAA==").unwrap(), [0, 0, 0]);
        assert!(eab_key("", key).unwrap_err().contains("--eab-kid"));
        assert!(eab_key("kid 1", key).unwrap_err().contains("--eab-kid"));
        assert!(eab_key("k", "not base64!")
            .unwrap_err()
            .contains("base64url"));
        assert!(eab_key("k", "").unwrap_err().contains("--eab-hmac-key"));
        let huge = base64url_encode(&[7; 300]);
        assert!(eab_key("k", &huge).unwrap_err().contains("300"));
    }
}
