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

/// The names to order for record `name` whose leaf carries the DNS
/// subjectAltNames `sans`: the record's name first, then the others in
/// the certificate's order, without repeats. `Err` says why it is
/// skipped: a wildcard needs DNS-01, which is not built.
pub fn renewal_names(name: &str, sans: &[String]) -> Result<Vec<String>, String> {
    if let Some(w) = std::iter::once(name)
        .chain(sans.iter().map(String::as_str))
        .find(|n| n.starts_with("*."))
    {
        return Err(format!(
            "wildcard \"{w}\" needs the DNS-01 challenge, which is not built (HTTP-01 only)"
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
            renewal_names("shop.test", &sans).unwrap(),
            ["shop.test", "www.shop.test"]
        );
    }

    #[test]
    fn wildcards_are_skipped() {
        let sans = vec!["shop.test".to_owned(), "*.shop.test".to_owned()];
        assert!(renewal_names("shop.test", &sans)
            .unwrap_err()
            .contains("DNS-01"));
        assert!(renewal_names("*.shop.test", &[]).is_err());
    }
}
