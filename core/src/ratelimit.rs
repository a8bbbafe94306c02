//! Log flood guard: at most one line per interval for a given kind of
//! event, with a count of what was held back.
//!
//! A random-SNI flood or a Redis outage turns every connection into the
//! same warning; writing each one would cost more than the connection. The
//! glue keeps one limiter per message kind and appends
//! "(N similar messages suppressed)" when N > 0.

use crate::clock::Millis;

/// Allows one log line per `interval` and counts the suppressed ones.
#[derive(Debug, Clone)]
pub struct LogLimiter {
    interval: Millis,
    last_written: Option<Millis>,
    suppressed: u64,
}

impl LogLimiter {
    /// `interval` 0 lets every line through.
    pub fn new(interval: Millis) -> Self {
        LogLimiter {
            interval,
            last_written: None,
            suppressed: 0,
        }
    }

    /// Some(suppressed_since_last) when a line may be written now; None
    /// when it must be suppressed (and counted).
    pub fn allow(&mut self, now: Millis) -> Option<u64> {
        let due = match self.last_written {
            None => true,
            // A wall clock stepped back must not mute the log until it
            // catches up again.
            Some(last) if now < last => true,
            Some(last) => now - last >= self.interval,
        };
        if due {
            self.last_written = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }
}

/// What a written line says about the `suppressed` ones before it
/// (`what`: "lines", "errors"): nothing when there were none.
pub fn suppressed_note(suppressed: u64, what: &str) -> String {
    if suppressed > 0 {
        format!(" ({suppressed} similar {what} suppressed)")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_says_how_many_lines_were_held_back_if_any() {
        assert_eq!(suppressed_note(0, "errors"), "");
        assert_eq!(
            suppressed_note(3, "errors"),
            " (3 similar errors suppressed)"
        );
    }

    #[test]
    fn first_line_is_written_with_nothing_suppressed() {
        assert_eq!(LogLimiter::new(1000).allow(5), Some(0));
    }

    #[test]
    fn lines_within_the_interval_are_suppressed_and_counted() {
        let mut limiter = LogLimiter::new(1000);
        assert_eq!(limiter.allow(10_000), Some(0));
        assert_eq!(limiter.allow(10_001), None);
        assert_eq!(limiter.allow(10_999), None);
        assert_eq!(limiter.allow(11_000), Some(2));
        assert_eq!(limiter.allow(11_500), None);
        assert_eq!(limiter.allow(12_000), Some(1));
        assert_eq!(limiter.allow(20_000), Some(0));
    }

    #[test]
    fn zero_interval_writes_every_line() {
        let mut limiter = LogLimiter::new(0);
        for _ in 0..3 {
            assert_eq!(limiter.allow(7), Some(0));
        }
    }

    #[test]
    fn clock_stepping_back_does_not_mute_the_log() {
        let mut limiter = LogLimiter::new(60_000);
        assert_eq!(limiter.allow(1_000_000), Some(0));
        assert_eq!(limiter.allow(1_000_001), None);
        assert_eq!(limiter.allow(10), Some(1));
        assert_eq!(limiter.allow(11), None);
    }
}
