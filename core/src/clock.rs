//! Time as the core sees it: milliseconds of wall time, read through a
//! [`Clock`] so that the shell passes the real time in and tests pass
//! whatever time they need, never sleeping.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the UNIX epoch.
pub type Millis = u64;

/// Source of the current time, injectable so cache tests never sleep.
pub trait Clock {
    fn now(&self) -> Millis;
}

/// Wall-clock time. Wall time rather than a monotonic clock because entries
/// are compared with certificate notAfter dates, which are wall time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        // A clock before 1970 or past year 584 million reads as 0 or
        // saturates; neither can panic.
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
            Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
        })
    }
}

/// Milliseconds on this process's monotonic clock, 1 at the first call:
/// for process-wide deadlines that a wall-clock step must not move (not
/// for comparing with certificate dates, which are [`SystemClock`]'s).
/// Never 0, so that 0 can stand for "no deadline".
pub fn monotonic_ms() -> Millis {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    Millis::try_from(start.elapsed().as_millis())
        .unwrap_or(Millis::MAX)
        .saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_reads_a_plausible_wall_time() {
        // 2020-09-13 in ms: anything earlier means the conversion is wrong.
        assert!(SystemClock.now() > 1_600_000_000_000);
    }

    #[test]
    fn monotonic_time_starts_above_zero_and_never_goes_back() {
        let a = monotonic_ms();
        assert!(a >= 1);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = monotonic_ms();
        assert!(b >= a + 5, "{a} then {b}");
    }
}
