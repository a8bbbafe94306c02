//! A token bucket: at most `rate` takes per second on average, `rate` at
//! once after a quiet second. It bounds how often a worker asks the
//! certificate API (`dyncert_api ... rate=N`), which
//! `dyncert_fetch_concurrency` does not: that bounds the requests in
//! flight, and a fast API answers thousands of them a second.
//!
//! Time comes in as the caller's monotonic reading (a `Duration` since
//! any fixed origin), so tests step it without sleeping. The level is kept
//! in billionths of a token, so a refill of one nanosecond counts at every
//! rate and nothing is lost to rounding.

#![forbid(unsafe_code)]

use std::time::Duration;

/// Billionths of a token in one token (one per nanosecond at 1/s).
const UNIT: u64 = 1_000_000_000;

/// Most takes a bucket allows per second; the level (`rate` tokens in
/// billionths) must fit a `u64` with room to spare.
pub const RATE_MAX: u32 = 100_000;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens added per second, and the most the bucket holds (the burst).
    rate: u64,
    /// Tokens held, in billionths.
    level: u64,
    /// The time of the last refill.
    last: Duration,
}

impl TokenBucket {
    /// A full bucket at `now`; `rate` is clamped to 1..=[`RATE_MAX`].
    pub fn new(rate: u32, now: Duration) -> TokenBucket {
        let rate = u64::from(rate.clamp(1, RATE_MAX));
        TokenBucket {
            rate,
            level: rate * UNIT,
            last: now,
        }
    }

    /// Takes one token if the bucket holds one at `now`. A `now` earlier
    /// than a reading already seen adds nothing (and does not move the
    /// bucket's time back, so no refill is counted twice).
    pub fn try_take(&mut self, now: Duration) -> bool {
        if now > self.last {
            let nanos = u64::try_from((now - self.last).as_nanos()).unwrap_or(u64::MAX);
            let cap = self.rate * UNIT;
            self.level = self
                .level
                .saturating_add(nanos.saturating_mul(self.rate))
                .min(cap);
            self.last = now;
        }
        if self.level >= UNIT {
            self.level -= UNIT;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn takes(b: &mut TokenBucket, now: Duration, tries: usize) -> usize {
        (0..tries).filter(|_| b.try_take(now)).count()
    }

    #[test]
    fn a_new_bucket_allows_a_burst_of_rate_then_nothing_at_the_same_instant() {
        let t0 = Duration::from_secs(100);
        let mut b = TokenBucket::new(5, t0);
        assert_eq!(takes(&mut b, t0, 60), 5);
        assert!(!b.try_take(t0));
    }

    #[test]
    fn tokens_come_back_at_the_rate_by_elapsed_time() {
        let t0 = Duration::ZERO;
        let mut b = TokenBucket::new(5, t0);
        assert_eq!(takes(&mut b, t0, 5), 5);
        // One token every 200 ms, not before.
        assert!(!b.try_take(t0 + 199 * MS));
        assert!(b.try_take(t0 + 200 * MS));
        assert!(!b.try_take(t0 + 300 * MS));
        // Partial refills add up across calls: 200 ms more since the take
        // at 200 ms, read in three steps.
        assert!(!b.try_take(t0 + 350 * MS));
        assert!(b.try_take(t0 + 400 * MS));
        // A second makes five.
        assert_eq!(takes(&mut b, t0 + 1400 * MS, 60), 5);
    }

    #[test]
    fn a_flood_over_one_second_gets_the_burst_plus_the_refill() {
        let mut b = TokenBucket::new(5, Duration::ZERO);
        // 60 tries spread evenly over a second: 5 at once, 5 refilled.
        let allowed = (0..60)
            .filter(|i| b.try_take(Duration::from_millis(i * 1000 / 59)))
            .count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn a_quiet_bucket_holds_no_more_than_its_burst() {
        let mut b = TokenBucket::new(3, Duration::ZERO);
        assert_eq!(takes(&mut b, Duration::from_secs(3600), 100), 3);
        // Even after an absurdly long silence (no overflow).
        assert_eq!(takes(&mut b, Duration::MAX, 100), 3);
    }

    #[test]
    fn a_clock_reading_from_before_adds_nothing_and_counts_nothing_twice() {
        let t0 = Duration::from_secs(10);
        let mut b = TokenBucket::new(1, t0);
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0 - Duration::from_secs(5)));
        // Still one second from t0, not from the earlier reading.
        assert!(!b.try_take(t0 + 999 * MS));
        assert!(b.try_take(t0 + 1000 * MS));
    }

    #[test]
    fn high_rates_refill_by_the_microsecond_and_rates_are_clamped() {
        let mut b = TokenBucket::new(RATE_MAX, Duration::ZERO);
        assert_eq!(takes(&mut b, Duration::ZERO, 200_000), 100_000);
        // 100000/s: one token per 10 µs.
        assert_eq!(takes(&mut b, Duration::from_micros(95), 100), 9);
        let mut b = TokenBucket::new(u32::MAX, Duration::ZERO);
        assert_eq!(takes(&mut b, Duration::ZERO, 200_000), 100_000);
        let mut b = TokenBucket::new(0, Duration::ZERO);
        assert_eq!(takes(&mut b, Duration::ZERO, 10), 1, "0 is taken as 1");
    }
}
