//! Host name rules: normalising an untrusted SNI before it becomes part of a
//! Redis key, an API URL or a cache key, the wildcard parent looked up after
//! an exact miss, and certificate name matching.
//!
//! An SNI that fails [`normalize_sni`] must never trigger I/O, so the rules
//! are deliberately narrower than what a ClientHello may carry: LDH labels
//! only (IDNs arrive as A-labels, `xn--...`), no IP literals (RFC 6066 §3
//! forbids them in server_name), no underscores.

/// Longest host name in presentation form without the trailing dot
/// (RFC 1035 §2.3.4 allows 255 octets on the wire, i.e. 253 characters).
const MAX_NAME: usize = 253;
/// RFC 1035 §2.3.4.
const MAX_LABEL: usize = 63;

/// Why an SNI was refused. `as_str` feeds log lines and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong,
    LabelEmpty,
    LabelTooLong,
    BadChar,
    BadHyphen,
    IpLiteral,
}

impl NameError {
    pub fn as_str(&self) -> &'static str {
        match self {
            NameError::Empty => "empty name",
            NameError::TooLong => "name longer than 253 bytes",
            NameError::LabelEmpty => "empty label",
            NameError::LabelTooLong => "label longer than 63 bytes",
            NameError::BadChar => "character outside [a-z0-9-.]",
            NameError::BadHyphen => "label starts or ends with '-'",
            NameError::IpLiteral => "IP address literal",
        }
    }
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for NameError {}

/// Normalise an SNI: ASCII-lowercase, strip ONE trailing dot, then validate:
/// total ≤ 253, labels 1..=63 of `[a-z0-9-]`, no label starting or ending
/// with '-', at least one label, and no name whose last label is all digits
/// (an IPv4 literal). Bytes outside ASCII and '_' are [`NameError::BadChar`].
/// Never panics.
pub fn normalize_sni(raw: &[u8]) -> Result<String, NameError> {
    normalize_sni_inline(raw).map(|name| name.as_str().to_owned())
}

/// A normalised host name held inline, without an allocation: what the
/// handshake path (the peek, the certificate callback) looks names up by.
#[derive(Clone, Copy)]
pub struct InlineName {
    len: u8,
    bytes: [u8; MAX_NAME],
}

impl InlineName {
    pub fn as_str(&self) -> &str {
        // Only validated ASCII is ever stored, so this never fails; the
        // fallback keeps the accessor free of panics all the same.
        core::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Debug for InlineName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for InlineName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::ops::Deref for InlineName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// [`normalize_sni`] into an [`InlineName`]: the same rules, no allocation.
pub fn normalize_sni_inline(raw: &[u8]) -> Result<InlineName, NameError> {
    let name = raw.strip_suffix(b".").unwrap_or(raw);
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    // Checked before anything is copied: the raw SNI may be 64 KiB.
    if name.len() > MAX_NAME {
        return Err(NameError::TooLong);
    }
    let mut last_label: &[u8] = &[];
    for label in name.split(|&b| b == b'.') {
        check_label(label)?;
        last_label = label;
    }
    // No TLD is all digits; such a name is an IPv4 address (or a decimal
    // trick like "2130706433") and would let a client pick arbitrary keys.
    if last_label.iter().all(u8::is_ascii_digit) {
        return Err(NameError::IpLiteral);
    }
    let mut out = InlineName {
        len: 0,
        bytes: [0; MAX_NAME],
    };
    for (dst, src) in out.bytes.iter_mut().zip(name) {
        *dst = src.to_ascii_lowercase();
    }
    // name.len() <= MAX_NAME = 253 fits in a u8.
    out.len = u8::try_from(name.len()).map_err(|_| NameError::TooLong)?;
    Ok(out)
}

fn check_label(label: &[u8]) -> Result<(), NameError> {
    if label.is_empty() {
        return Err(NameError::LabelEmpty);
    }
    if label.len() > MAX_LABEL {
        return Err(NameError::LabelTooLong);
    }
    if !label
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(NameError::BadChar);
    }
    if label.first() == Some(&b'-') || label.last() == Some(&b'-') {
        return Err(NameError::BadHyphen);
    }
    Ok(())
}

/// The wildcard name whose certificate would cover `name`: for
/// "a.b.example.com", Some("*.b.example.com"). None when `name` has fewer
/// than 3 labels (a "*.com" entry must never be looked up) or already
/// starts with "*.".
pub fn wildcard_parent(name: &str) -> Option<String> {
    if name.starts_with("*.") {
        return None;
    }
    let (first, parent) = name.split_once('.')?;
    if first.is_empty() || !has_two_labels(parent) {
        return None;
    }
    Some(format!("*.{parent}"))
}

/// True when `name` has at least two labels, none of them empty.
fn has_two_labels(name: &str) -> bool {
    has_two_labels_bytes(name.as_bytes())
}

fn has_two_labels_bytes(name: &[u8]) -> bool {
    name.contains(&b'.') && name.split(|&b| b == b'.').all(|label| !label.is_empty())
}

/// Whether `name` is exactly one label below `parent`, by the rules of
/// [`wildcard_parent`]: true exactly when `wildcard_parent(name)` is
/// `*.parent`, so a wildcard invalidation can be matched against every
/// record of the shared zone, under its lock, without building a string
/// per record. The left-most label is non-empty and not `*` (a wildcard
/// key is not below its parent), and `parent` has at least two labels (a
/// `*.com` entry never covers anything). Both are normalised names:
/// compared byte for byte, without case folding.
pub fn is_one_label_below(name: &[u8], parent: &[u8]) -> bool {
    // Most names fail here, before `parent` is looked at.
    let Some(label) = name
        .strip_suffix(parent)
        .and_then(|head| head.strip_suffix(b"."))
    else {
        return false;
    };
    !label.is_empty() && label != b"*" && !label.contains(&b'.') && has_two_labels_bytes(parent)
}

/// RFC 6125 §6.4 matching of a certificate DNS name (SAN dNSName) against a
/// normalised host name: case-insensitive, trailing dot ignored on both; a
/// wildcard is only the complete left-most label "*" (no partial "f*o"),
/// matches exactly one non-empty label, and is refused when the rest has
/// fewer than 2 labels ("*.com" and "*" never match).
///
/// A host that is itself a wildcard name ("*.example.com", the key of a
/// wildcard cache entry) matches the identical pattern, since "*" is then
/// just the one label the pattern's wildcard stands for.
pub fn dns_name_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.strip_suffix('.').unwrap_or(pattern);
    let host = host.strip_suffix('.').unwrap_or(host);
    if pattern.is_empty() || host.is_empty() {
        return false;
    }
    match pattern.strip_prefix("*.") {
        Some(rest) => {
            if rest.contains('*') || !has_two_labels(rest) {
                return false;
            }
            match host.split_once('.') {
                Some((label, host_rest)) => {
                    !label.is_empty() && host_rest.eq_ignore_ascii_case(rest)
                }
                None => false,
            }
        }
        None => !pattern.contains('*') && pattern.eq_ignore_ascii_case(host),
    }
}

/// Decodes the Punycode of an A-label's tail (what follows `xn--`), as
/// RFC 3492 §6.2 says, into its code points. `None` when it is not valid
/// Punycode: a character that is no digit, an overflow, a basic code
/// point where only non-basic ones may be inserted, or a value that is no
/// Unicode scalar value. Never panics; at most 63 bytes in practice, and
/// linear in the input for each code point inserted.
pub fn punycode_decode(input: &str) -> Option<Vec<char>> {
    const BASE: u32 = 36;
    const TMIN: u32 = 1;
    const TMAX: u32 = 26;
    const SKEW: u32 = 38;
    const DAMP: u32 = 700;
    fn adapt(delta: u32, points: u32, first: bool) -> u32 {
        let mut delta = if first { delta / DAMP } else { delta / 2 };
        delta += delta / points;
        let mut k = 0;
        while delta > ((BASE - TMIN) * TMAX) / 2 {
            delta /= BASE - TMIN;
            k += BASE;
        }
        k + (BASE - TMIN + 1) * delta / (delta + SKEW)
    }
    let (basic, rest) = match input.rfind('-') {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => ("", input),
    };
    if !basic.is_ascii() {
        return None;
    }
    let mut out: Vec<char> = basic.chars().collect();
    let (mut n, mut i, mut bias) = (128u32, 0u32, 72u32);
    let mut digits = rest.bytes();
    while digits.len() > 0 {
        let old = i;
        let mut w = 1u32;
        let mut k = BASE;
        loop {
            let digit = match digits.next()? {
                b @ b'a'..=b'z' => u32::from(b - b'a'),
                b @ b'A'..=b'Z' => u32::from(b - b'A'),
                b @ b'0'..=b'9' => u32::from(b - b'0') + 26,
                _ => return None,
            };
            i = i.checked_add(digit.checked_mul(w)?)?;
            let t = if k <= bias {
                TMIN
            } else if k >= bias + TMAX {
                TMAX
            } else {
                k - bias
            };
            if digit < t {
                break;
            }
            w = w.checked_mul(BASE - t)?;
            k += BASE;
        }
        let len = u32::try_from(out.len()).ok()? + 1;
        bias = adapt(i - old, len, old == 0);
        n = n.checked_add(i / len)?;
        i %= len;
        if n < 0x80 {
            return None;
        }
        out.insert(usize::try_from(i).ok()?, char::from_u32(n)?);
        i += 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_is_lowercased_and_loses_one_trailing_dot() {
        assert_eq!(
            normalize_sni(b"Shop.Example.COM."),
            Ok("shop.example.com".to_owned())
        );
        assert_eq!(
            normalize_sni(b"xn--bcher-kva.example"),
            Ok("xn--bcher-kva.example".to_owned())
        );
        assert_eq!(normalize_sni(b"localhost"), Ok("localhost".to_owned()));
        assert_eq!(
            normalize_sni(b"1.example.com"),
            Ok("1.example.com".to_owned())
        );
        assert_eq!(normalize_sni(b"a.b2"), Ok("a.b2".to_owned()));
    }

    #[test]
    fn the_inline_form_follows_the_same_rules_without_allocating() {
        let long = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "B".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        let inputs: [&[u8]; 10] = [
            b"Shop.Example.COM.",
            b"localhost",
            b"",
            b".",
            b"a..b",
            b"10.0.0.1",
            b"under_score.example",
            b"-bad.example",
            long.as_bytes(),
            b"\xffe.example",
        ];
        for raw in inputs {
            let inline = normalize_sni_inline(raw).map(|n| n.as_str().to_owned());
            assert_eq!(inline, normalize_sni(raw), "{raw:?}");
        }
        let name = normalize_sni_inline(long.as_bytes()).unwrap();
        assert_eq!(name.len(), 253);
        assert_eq!(&*name, long.to_ascii_lowercase());
        let too_long = format!("{long}e");
        assert_eq!(
            normalize_sni_inline(too_long.as_bytes()).map(|_| ()),
            Err(NameError::TooLong)
        );
    }

    #[test]
    fn only_one_trailing_dot_is_stripped() {
        assert_eq!(normalize_sni(b"example.com.."), Err(NameError::LabelEmpty));
    }

    #[test]
    fn empty_names_are_refused() {
        assert_eq!(normalize_sni(b""), Err(NameError::Empty));
        assert_eq!(normalize_sni(b"."), Err(NameError::Empty));
    }

    #[test]
    fn empty_labels_are_refused() {
        for raw in [&b".example.com"[..], b"a..example.com", b".."] {
            assert_eq!(normalize_sni(raw), Err(NameError::LabelEmpty), "{raw:?}");
        }
    }

    #[test]
    fn name_of_253_bytes_is_accepted_and_254_refused() {
        let label = "a".repeat(63);
        let name = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(name.len(), 253);
        assert_eq!(normalize_sni(name.as_bytes()), Ok(name.clone()));
        assert_eq!(
            normalize_sni(format!("{name}.").as_bytes()),
            Ok(name.clone())
        );
        assert_eq!(
            normalize_sni(format!("x{name}").as_bytes()),
            Err(NameError::TooLong)
        );
    }

    #[test]
    fn huge_sni_is_refused_without_walking_it() {
        assert_eq!(normalize_sni(&vec![b'a'; 65535]), Err(NameError::TooLong));
    }

    #[test]
    fn label_of_64_bytes_is_refused() {
        let name = format!("{}.example.com", "a".repeat(64));
        assert_eq!(normalize_sni(name.as_bytes()), Err(NameError::LabelTooLong));
        let name = format!("{}.example.com", "a".repeat(63));
        assert!(normalize_sni(name.as_bytes()).is_ok());
    }

    #[test]
    fn characters_outside_ldh_are_refused() {
        for raw in [
            &b"under_score.example.com"[..],
            b"sp ace.example.com",
            b"caf\xc3\xa9.example.com",
            b"\xff.example.com",
            b"nul\0.example.com",
            b"*.example.com",
            b"a/b.example.com",
            b"2001:db8::1",
            b"[::1]",
        ] {
            assert_eq!(normalize_sni(raw), Err(NameError::BadChar), "{raw:?}");
        }
    }

    #[test]
    fn labels_starting_or_ending_with_hyphen_are_refused() {
        for raw in [
            &b"-a.example.com"[..],
            b"a-.example.com",
            b"example.-com",
            b"-",
        ] {
            assert_eq!(normalize_sni(raw), Err(NameError::BadHyphen), "{raw:?}");
        }
    }

    #[test]
    fn ipv4_literals_are_refused() {
        for raw in [
            &b"192.0.2.1"[..],
            b"192.0.2.1.",
            b"2130706433",
            b"example.123",
        ] {
            assert_eq!(normalize_sni(raw), Err(NameError::IpLiteral), "{raw:?}");
        }
    }

    #[test]
    fn every_error_has_a_distinct_message() {
        let all = [
            NameError::Empty,
            NameError::TooLong,
            NameError::LabelEmpty,
            NameError::LabelTooLong,
            NameError::BadChar,
            NameError::BadHyphen,
            NameError::IpLiteral,
        ];
        let messages: std::collections::HashSet<_> = all.iter().map(NameError::as_str).collect();
        assert_eq!(messages.len(), all.len());
        assert_eq!(NameError::TooLong.to_string(), "name longer than 253 bytes");
    }

    #[test]
    fn wildcard_parent_replaces_the_first_label() {
        assert_eq!(
            wildcard_parent("a.b.example.com").as_deref(),
            Some("*.b.example.com")
        );
        assert_eq!(
            wildcard_parent("www.example.com").as_deref(),
            Some("*.example.com")
        );
    }

    #[test]
    fn wildcard_parent_never_reaches_a_public_suffix_or_nests() {
        assert_eq!(wildcard_parent("example.com"), None);
        assert_eq!(wildcard_parent("localhost"), None);
        assert_eq!(wildcard_parent("*.example.com"), None);
        assert_eq!(wildcard_parent(".example.com"), None);
        assert_eq!(wildcard_parent("a..com"), None);
        assert_eq!(wildcard_parent(""), None);
    }

    #[test]
    fn one_label_below_is_the_name_a_wildcard_of_the_parent_covers() {
        assert!(is_one_label_below(b"www.example.com", b"example.com"));
        assert!(is_one_label_below(b"a.b.example.com", b"b.example.com"));
        assert!(is_one_label_below(b"x--1.example.co.uk", b"example.co.uk"));
    }

    #[test]
    fn the_parent_itself_and_names_further_below_are_not_one_label_below() {
        assert!(!is_one_label_below(b"example.com", b"example.com"));
        assert!(!is_one_label_below(b"a.b.example.com", b"example.com"));
        assert!(!is_one_label_below(b"com", b"example.com"));
        assert!(!is_one_label_below(b"", b"example.com"));
    }

    #[test]
    fn a_name_that_only_ends_with_the_parents_text_is_not_below_it() {
        assert!(!is_one_label_below(b"myexample.com", b"example.com"));
        assert!(!is_one_label_below(b"a.myexample.com", b"example.com"));
        assert!(!is_one_label_below(b"www.example.com.evil", b"example.com"));
        assert!(!is_one_label_below(b".example.com", b"example.com"));
        assert!(!is_one_label_below(b"a..example.com", b"example.com"));
    }

    #[test]
    fn one_label_below_never_reaches_a_single_label_parent_or_a_wildcard_key() {
        assert!(!is_one_label_below(b"example.com", b"com"));
        assert!(!is_one_label_below(b"a.", b""));
        assert!(!is_one_label_below(b"a.example..com", b"example..com"));
        assert!(!is_one_label_below(b"*.example.com", b"example.com"));
        assert!(is_one_label_below(b"*a.example.com", b"example.com"));
    }

    #[test]
    fn one_label_below_compares_normalised_bytes_without_folding_case() {
        // Names are lower case by the time they are compared; an upper
        // case parent is simply another name.
        assert!(!is_one_label_below(b"www.example.com", b"Example.com"));
        assert!(!is_one_label_below(b"www.Example.com", b"example.com"));
        assert!(is_one_label_below(b"WWW.example.com", b"example.com"));
    }

    #[test]
    fn one_label_below_agrees_with_wildcard_parent() {
        let names = [
            "www.example.com",
            "a.b.example.com",
            "example.com",
            "com",
            "myexample.com",
            "*.example.com",
            "*a.example.com",
            ".example.com",
            "a..example.com",
            "a.example..com",
            "a.",
            "",
            "WWW.example.com",
            "www.Example.com",
        ];
        let parents = [
            "example.com",
            "b.example.com",
            "com",
            "",
            "example..com",
            ".example.com",
            "Example.com",
            "*.example.com",
        ];
        for name in names {
            for parent in parents {
                assert_eq!(
                    is_one_label_below(name.as_bytes(), parent.as_bytes()),
                    wildcard_parent(name).as_deref() == Some(&*format!("*.{parent}")),
                    "{name:?} under {parent:?}"
                );
            }
        }
    }

    #[test]
    fn exact_pattern_matches_case_insensitively_and_ignores_trailing_dot() {
        assert!(dns_name_matches("Shop.Example.com", "shop.example.com"));
        assert!(dns_name_matches("shop.example.com.", "shop.example.com"));
        assert!(!dns_name_matches("shop.example.com", "shop.example.org"));
        assert!(!dns_name_matches("example.com", "shop.example.com"));
        assert!(!dns_name_matches("", ""));
    }

    #[test]
    fn wildcard_matches_exactly_one_left_most_label() {
        assert!(dns_name_matches("*.example.com", "shop.example.com"));
        assert!(dns_name_matches("*.EXAMPLE.com.", "shop.example.com"));
        assert!(!dns_name_matches("*.example.com", "example.com"));
        assert!(!dns_name_matches("*.example.com", "a.shop.example.com"));
        assert!(!dns_name_matches("*.example.com", ".example.com"));
    }

    #[test]
    fn partial_and_inner_wildcards_never_match() {
        assert!(!dns_name_matches("f*o.example.com", "foo.example.com"));
        assert!(!dns_name_matches("*o.example.com", "foo.example.com"));
        assert!(!dns_name_matches("foo*.example.com", "foo.example.com"));
        assert!(!dns_name_matches("a.*.example.com", "a.b.example.com"));
        assert!(!dns_name_matches("*.*.example.com", "a.b.example.com"));
    }

    #[test]
    fn wildcard_over_fewer_than_two_labels_never_matches() {
        assert!(!dns_name_matches("*.com", "example.com"));
        assert!(!dns_name_matches("*", "localhost"));
        assert!(!dns_name_matches("*.", "localhost"));
        assert!(!dns_name_matches("*..com", "a..com"));
    }

    #[test]
    fn wildcard_cache_key_matches_its_own_wildcard_pattern() {
        assert!(dns_name_matches("*.example.com", "*.example.com"));
        assert!(!dns_name_matches("shop.example.com", "*.example.com"));
    }

    #[test]
    fn punycode_decodes_rfc_3492_samples_and_refuses_invalid_input() {
        let text = |s: &str| punycode_decode(s).map(|c| c.into_iter().collect::<String>());
        assert_eq!(text("bcher-kva").as_deref(), Some("bücher"));
        assert_eq!(text("mnchen-3ya").as_deref(), Some("münchen"));
        // RFC 3492 §7.1 (A) Arabic (Egyptian), (L) 3年B組金八先生.
        assert_eq!(
            text("egbpdaj6bu4bxfgehfvwxn").as_deref(),
            Some("\u{644}\u{64a}\u{647}\u{645}\u{627}\u{628}\u{62a}\u{643}\u{644}\u{645}\u{648}\u{634}\u{639}\u{631}\u{628}\u{64a}\u{61f}")
        );
        assert_eq!(
            text("3B-ww4c5e180e575a65lsy2b").as_deref(),
            Some("3年B組金八先生")
        );
        // "a" decodes to U+0080; an overflow, a non-digit, a basic code
        // point inserted, and an unfinished number fail.
        assert_eq!(text("a").as_deref(), Some("\u{80}"));
        assert_eq!(text("99999999999"), None);
        assert_eq!(text("ab_c"), None);
        assert_eq!(text("z"), None, "ends inside a number");
        assert_eq!(text(""), Some(String::new()));
    }
}
