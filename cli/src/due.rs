//! When a record is due for renewal, and for which names: pure decisions
//! of `dyncert renew`, tested without Redis or a CA.
#![forbid(unsafe_code)]

/// Which rule says a certificate is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// Less than a third of its lifetime (notAfter - notBefore) is left:
    /// 30 days of a 90-day certificate, as ACME clients commonly do.
    LastThird,
    /// notAfter is within this many seconds (`--within`).
    Within(u64),
}

/// Most of the jitter, as a fraction of the lifetime: 1/100.
const JITTER_DIVISOR: i64 = 100;

/// The UNIX second from which a certificate valid from `not_before` to
/// `not_after` is due, `jitter` seconds earlier than the rule says.
pub fn due_from(not_before: i64, not_after: i64, window: Window, jitter: i64) -> i64 {
    let start = match window {
        Window::LastThird => not_after.saturating_sub(lifetime(not_before, not_after) / 3),
        Window::Within(w) => not_after.saturating_sub(w.min(i64::MAX as u64) as i64),
    };
    start.saturating_sub(jitter.max(0))
}

fn lifetime(not_before: i64, not_after: i64) -> i64 {
    not_after.saturating_sub(not_before).max(0)
}

/// The jitter for one record: `random` (uniform over u32) scaled to at
/// most 1% of the lifetime. It only ever makes a record due earlier, so
/// many certificates issued together are not all renewed in one run, and
/// a record the rule calls due is always due.
pub fn jitter(not_before: i64, not_after: i64, random: u32) -> i64 {
    let most = i128::from(lifetime(not_before, not_after) / JITTER_DIVISOR);
    (most * i128::from(random) / (i128::from(u32::MAX) + 1)) as i64
}

/// Whether to ask the CA for its renewal window (ARI) for a certificate
/// at `now`, when the lifetime rule makes it due from `by_lifetime`. Not
/// in the first half of its lifetime while that rule does not call it
/// due: CAs suggest windows in the last third or so (half of it for
/// short-lived certificates), so an answer could not make it due, and a
/// pass over a large index would send the CA one request per record,
/// one at a time. The cost: a window a CA moves early (a revocation
/// ahead) is seen once the certificate is half through its life.
pub fn ari_worth_asking(not_before: i64, not_after: i64, now: i64, by_lifetime: i64) -> bool {
    now >= by_lifetime || now >= not_before.saturating_add(lifetime(not_before, not_after) / 2)
}

/// The point of the CA's suggested renewal window `start..end` (ARI,
/// RFC 9773 section 4.2, UNIX seconds) from which a record is due:
/// `random` (uniform over u32) picks it uniformly in the window, so a
/// fleet renewed by many runs spreads over it as the CA asks. Past the
/// end a record is always due; a window whose end is before its start
/// counts as its start alone.
pub fn ari_due_from(start: i64, end: i64, random: u32) -> i64 {
    let span = i128::from(end.saturating_sub(start).max(0));
    let offset = span * i128::from(random) / (i128::from(u32::MAX) + 1);
    start.saturating_add(offset as i64)
}

/// Whether a refused new order is refused for its `replaces` alone (RFC
/// 9773 section 5: the certificate was replaced by another order), so
/// that ordering without it may succeed.
pub fn already_replaced(problem_type: Option<&str>) -> bool {
    problem_type == Some("urn:ietf:params:acme:error:alreadyReplaced")
}

/// The content octets of a DER INTEGER holding the non-negative serial
/// whose big-endian magnitude is `magnitude` (leading zeros stripped, a
/// zero byte put back when the high bit is set): what ARI's certificate
/// identifier encodes (RFC 9773 section 4.1), not the big number.
pub fn der_serial(magnitude: &[u8]) -> Vec<u8> {
    let start = magnitude
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(magnitude.len());
    let digits = &magnitude[start..];
    match digits.first() {
        None => vec![0],
        Some(b) if b & 0x80 != 0 => std::iter::once(0).chain(digits.iter().copied()).collect(),
        Some(_) => digits.to_vec(),
    }
}

/// The names to order for record `name` whose leaf carries the DNS
/// subjectAltNames `sans`: the record's name first, then the others in
/// the certificate's order, without repeats. `Err` says why it is
/// skipped: a wildcard needs DNS-01 (`dns01` false: no hook given).
pub fn renewal_names(name: &str, sans: &[String], dns01: bool) -> Result<Vec<String>, String> {
    if let Some(w) = std::iter::once(name)
        .chain(sans.iter().map(String::as_str))
        .find(|n| n.starts_with("*."))
        .filter(|_| !dns01)
    {
        return Err(format!(
            "wildcard \"{w}\" needs the DNS-01 challenge (--dns-01 --dns-hook CMD)"
        ));
    }
    let mut names = vec![name.to_owned()];
    for s in sans {
        let s = s.to_ascii_lowercase();
        if !names.contains(&s) {
            names.push(s);
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn last_third_of_a_90_day_certificate_starts_30_days_before_expiry() {
        assert_eq!(due_from(0, 90 * DAY, Window::LastThird, 0), 60 * DAY);
    }

    #[test]
    fn within_counts_back_from_not_after() {
        assert_eq!(
            due_from(0, 90 * DAY, Window::Within(10 * DAY as u64), 0),
            80 * DAY
        );
        assert_eq!(
            due_from(0, 90 * DAY, Window::Within(u64::MAX), 0),
            90 * DAY - i64::MAX
        );
    }

    #[test]
    fn jitter_is_at_most_a_hundredth_of_the_lifetime_and_only_earlier() {
        assert_eq!(jitter(0, 100 * DAY, 0), 0);
        let most = jitter(0, 100 * DAY, u32::MAX);
        assert!(most < DAY && most > DAY - 2, "{most}");
        assert_eq!(due_from(0, 90 * DAY, Window::LastThird, -5), 60 * DAY);
        assert_eq!(
            due_from(0, 90 * DAY, Window::LastThird, 100),
            60 * DAY - 100
        );
        // A reversed validity has no lifetime, hence no jitter.
        assert_eq!(jitter(10, 0, u32::MAX), 0);
    }

    #[test]
    fn names_start_with_the_record_name_without_repeats() {
        let sans = vec!["www.shop.test".to_owned(), "shop.test".to_owned()];
        assert_eq!(
            renewal_names("shop.test", &sans, false).unwrap(),
            ["shop.test", "www.shop.test"]
        );
    }

    #[test]
    fn wildcards_are_skipped_without_dns01_and_renewed_with_it() {
        let sans = vec!["shop.test".to_owned(), "*.shop.test".to_owned()];
        assert!(renewal_names("shop.test", &sans, false)
            .unwrap_err()
            .contains("DNS-01"));
        assert!(renewal_names("*.shop.test", &[], false).is_err());
        assert_eq!(
            renewal_names("*.shop.test", &["*.shop.test".to_owned()], true).unwrap(),
            ["*.shop.test"]
        );
        assert_eq!(
            renewal_names("shop.test", &sans, true).unwrap(),
            ["shop.test", "*.shop.test"]
        );
    }

    #[test]
    fn the_ari_point_is_uniform_in_the_window_and_never_past_its_end() {
        let (start, end) = (1_000 * DAY, 1_002 * DAY);
        assert_eq!(ari_due_from(start, end, 0), start);
        assert_eq!(ari_due_from(start, end, u32::MAX / 2 + 1), start + DAY);
        let last = ari_due_from(start, end, u32::MAX);
        assert!(last < end && last > end - 2, "{last}");
        // A reversed window is its start; an empty one too.
        assert_eq!(ari_due_from(end, start, u32::MAX), end);
        assert_eq!(ari_due_from(start, start, 12345), start);
        // No overflow at the extremes.
        assert_eq!(ari_due_from(i64::MIN, i64::MAX, 0), i64::MIN);
        assert!(ari_due_from(i64::MIN, i64::MAX, u32::MAX) < i64::MAX);
    }

    #[test]
    fn only_already_replaced_orders_again_without_replaces() {
        assert!(already_replaced(Some(
            "urn:ietf:params:acme:error:alreadyReplaced"
        )));
        assert!(!already_replaced(Some(
            "urn:ietf:params:acme:error:malformed"
        )));
        assert!(!already_replaced(None));
    }

    #[test]
    fn a_der_serial_keeps_its_sign_octet() {
        assert_eq!(der_serial(&[0x01, 0x02]), [0x01, 0x02]);
        assert_eq!(der_serial(&[0x00, 0x00, 0x7f]), [0x7f]);
        assert_eq!(der_serial(&[0x80, 0x01]), [0x00, 0x80, 0x01]);
        assert_eq!(der_serial(&[0x00, 0xff]), [0x00, 0xff]);
        assert_eq!(der_serial(&[]), [0x00]);
        assert_eq!(der_serial(&[0, 0]), [0x00]);
    }

    #[test]
    fn ari_is_asked_from_half_the_lifetime_or_once_due() {
        let (nb, na) = (0, 90 * 86_400);
        let by_lifetime = due_from(nb, na, Window::LastThird, 0);
        assert!(!ari_worth_asking(nb, na, 0, by_lifetime));
        assert!(!ari_worth_asking(nb, na, 45 * 86_400 - 1, by_lifetime));
        assert!(ari_worth_asking(nb, na, 45 * 86_400, by_lifetime));
        assert!(ari_worth_asking(nb, na, 89 * 86_400, by_lifetime));
        // --within makes it due earlier: asked then (the order names the
        // certificate it replaces).
        let within = due_from(nb, na, Window::Within(80 * 86_400), 0);
        assert!(ari_worth_asking(nb, na, 10 * 86_400, within));
        assert!(!ari_worth_asking(nb, na, 9 * 86_400, within));
    }
}
