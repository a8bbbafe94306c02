//! What `dyncert run` may order: budgets of new orders per registered
//! domain and per account (sliding windows, counted in Redis sorted sets
//! of order times), and the exponential backoff of a name whose order
//! failed. Pure decisions, tested without Redis or a CA.
#![forbid(unsafe_code)]

use dyncert_core::directives::parse_time_ms;

/// At most `count` orders in any `period_secs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub count: u64,
    pub period_secs: u64,
}

/// `N/PERIOD`, the period in nginx time syntax: `50/7d`, `300/3h`.
pub fn parse_limit(v: &str) -> Result<Limit, String> {
    let bad = || format!("invalid limit \"{v}\": N/PERIOD, such as 50/7d or 300/3h");
    let (n, period) = v.split_once('/').ok_or_else(bad)?;
    let count: u64 = n.trim().parse().map_err(|_| bad())?;
    let period_secs = parse_time_ms(period.trim().as_bytes()).ok_or_else(bad)? / 1000;
    if count == 0 || count > 1_000_000 || period_secs == 0 {
        return Err(bad());
    }
    Ok(Limit { count, period_secs })
}

impl Limit {
    /// True when `in_window` orders in the last period leave room for one
    /// more.
    pub fn allows(&self, in_window: u64) -> bool {
        in_window < self.count
    }

    /// Order times at or before this are out of the window at `now`.
    pub fn window_start(&self, now: i64) -> i64 {
        now.saturating_sub(self.period_secs.min(i64::MAX as u64) as i64)
    }
}

/// Second-level suffixes under which names are registered (a small
/// approximation of the Public Suffix List: the common country-code
/// second levels). Anything else: the last two labels.
const TWO_LABEL_SUFFIXES: &[&str] = &[
    "co.uk", "org.uk", "ac.uk", "gov.uk", "me.uk", "ltd.uk", "plc.uk", "net.uk", "com.au",
    "net.au", "org.au", "edu.au", "gov.au", "co.nz", "org.nz", "net.nz", "co.jp", "ne.jp", "or.jp",
    "ac.jp", "co.kr", "or.kr", "com.br", "net.br", "org.br", "com.cn", "net.cn", "org.cn",
    "com.mx", "com.ar", "com.tr", "co.za", "co.in", "net.in", "org.in", "co.il", "com.sg",
    "com.hk", "com.tw", "co.id", "com.my", "com.ua", "com.pl", "co.th",
];

/// The registered domain a name counts against: the last two labels, or
/// three under a [`TWO_LABEL_SUFFIXES`] entry. `name` is normalised
/// (lower case, no trailing dot).
pub fn registered_domain(name: &str) -> &str {
    let labels: Vec<usize> = name
        .char_indices()
        .filter(|(_, c)| *c == '.')
        .map(|(i, _)| i)
        .collect();
    let keep = |n: usize| -> &str {
        // The part after the dot that starts the last `n` labels.
        match labels.len().checked_sub(n) {
            Some(i) => &name[labels[i] + 1..],
            None => name,
        }
    };
    if TWO_LABEL_SUFFIXES.contains(&keep(2)) {
        keep(3)
    } else {
        keep(2)
    }
}

/// First wait after a failed order.
pub const BACKOFF_FIRST: u64 = 60;
/// Longest wait: a name keeps being retried once a day.
pub const BACKOFF_MAX: u64 = 86_400;

/// The wait after the `failures`-th failure in a row: 1 min doubling,
/// at most 24 h.
pub fn backoff_secs(failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(20);
    (BACKOFF_FIRST << doublings).min(BACKOFF_MAX)
}

/// A name's backoff as kept in the `dyncert:issuer-backoff` hash:
/// `<next attempt, UNIX secs> <failures in a row>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub next_attempt: i64,
    pub failures: u32,
}

impl Backoff {
    /// After a failure at `now`, following `prior` (if any).
    pub fn after_failure(prior: Option<Backoff>, now: i64) -> Backoff {
        let failures = prior.map_or(0, |b| b.failures).saturating_add(1);
        Backoff {
            next_attempt: now.saturating_add(backoff_secs(failures) as i64),
            failures,
        }
    }

    pub fn encode(&self) -> String {
        format!("{} {}", self.next_attempt, self.failures)
    }

    /// `None` for a value not written by [`Backoff::encode`].
    pub fn decode(v: &str) -> Option<Backoff> {
        let (t, f) = v.split_once(' ')?;
        Some(Backoff {
            next_attempt: t.parse().ok()?,
            failures: f.parse().ok()?,
        })
    }

    pub fn waiting(&self, now: i64) -> bool {
        now < self.next_attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_with_nginx_periods() {
        // The defaults: Let's Encrypt's certificates per registered
        // domain, and new orders per account.
        assert_eq!(
            parse_limit("50/7d"),
            Ok(Limit {
                count: 50,
                period_secs: 7 * 86_400
            })
        );
        assert_eq!(
            parse_limit("300/3h"),
            Ok(Limit {
                count: 300,
                period_secs: 3 * 3_600
            })
        );
        assert_eq!(
            parse_limit("2/90s"),
            Ok(Limit {
                count: 2,
                period_secs: 90
            })
        );
        for bad in [
            "",
            "50",
            "0/1d",
            "x/1d",
            "5/",
            "5/0s",
            "5/soon",
            "2000000/1d",
        ] {
            assert!(parse_limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_limit_allows_up_to_its_count_in_its_window() {
        let l = parse_limit("2/1h").unwrap();
        assert!(l.allows(0) && l.allows(1));
        assert!(!l.allows(2) && !l.allows(9));
        assert_eq!(l.window_start(10_000), 6_400);
        assert_eq!(l.window_start(i64::MIN), i64::MIN);
    }

    #[test]
    fn registered_domains_are_the_last_two_labels_or_three_under_known_suffixes() {
        assert_eq!(registered_domain("a.b.example.com"), "example.com");
        assert_eq!(registered_domain("example.com"), "example.com");
        assert_eq!(registered_domain("localhost"), "localhost");
        assert_eq!(registered_domain("shop.acme.test"), "acme.test");
        assert_eq!(registered_domain("www.shop.co.uk"), "shop.co.uk");
        assert_eq!(registered_domain("shop.co.uk"), "shop.co.uk");
        assert_eq!(registered_domain("co.uk"), "co.uk");
        assert_eq!(registered_domain("x.y.example.com.au"), "example.com.au");
    }

    #[test]
    fn backoff_doubles_from_a_minute_to_a_day() {
        assert_eq!(backoff_secs(0), 60);
        assert_eq!(backoff_secs(1), 60);
        assert_eq!(backoff_secs(2), 120);
        assert_eq!(backoff_secs(3), 240);
        assert_eq!(backoff_secs(11), 61_440);
        assert_eq!(backoff_secs(12), 86_400);
        assert_eq!(backoff_secs(u32::MAX), 86_400);
    }

    #[test]
    fn backoff_records_round_trip_and_grow() {
        let b = Backoff::after_failure(None, 1_000);
        assert_eq!(
            b,
            Backoff {
                next_attempt: 1_060,
                failures: 1
            }
        );
        assert!(b.waiting(1_059) && !b.waiting(1_060));
        assert_eq!(Backoff::decode(&b.encode()), Some(b));
        let c = Backoff::after_failure(Some(b), 2_000);
        assert_eq!(c.failures, 2);
        assert_eq!(c.next_attempt, 2_120);
        for bad in ["", "1", "x 1", "1 -1", "1 2 3"] {
            assert_eq!(Backoff::decode(bad), None, "{bad}");
        }
    }
}
