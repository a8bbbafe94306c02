//! The issuer lease of `dyncert run`: which instance of a fleet may order
//! certificates. A pure state machine: the shell does the Redis command
//! [`Lease::next_op`] names every [`Lease::interval_ms`], feeds the result
//! to [`Lease::apply`] and issues only while [`Lease::active_until`] is in
//! the future.
//!
//! The lease key lives `ttl` in Redis from its last renewal. An instance
//! stops issuing at 2/3 of that, so it has stopped before another can
//! acquire the key, even if its renewals stall or Redis stops answering.
#![forbid(unsafe_code)]

/// The Redis operation to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `SET key id NX PX ttl`.
    Acquire,
    /// Compare-and-PEXPIRE: extend only while the value is still ours.
    Renew,
}

/// What Redis answered to the last [`Op`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The key is ours (acquired or extended).
    Held,
    /// Another instance holds it (or it expired and is gone).
    NotHeld,
    /// Redis failed or timed out: whether it is ours is unknown.
    Error,
}

/// What changed with that reply, for the log and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    None,
    /// This instance became the active one (a takeover when another was
    /// active before).
    Gained,
    /// A renewal failed with a Redis error: issuing is paused until a
    /// renewal succeeds again.
    Paused,
    /// Active again after [`Change::Paused`], the key having stayed ours.
    Resumed,
    /// Another instance has the key, or ours expired: standby.
    Lost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Standby,
    /// Ours, last extended at this time (ms).
    Active(u64),
    /// Was ours at this time; the last renewal failed.
    Unsure(u64),
}

#[derive(Clone, Copy, Debug)]
pub struct Lease {
    ttl_ms: u64,
    state: State,
}

impl Lease {
    pub fn new(ttl_ms: u64) -> Lease {
        Lease {
            ttl_ms: ttl_ms.max(3),
            state: State::Standby,
        }
    }

    /// Renewals (and a standby's polls) happen every ttl/3.
    pub fn interval_ms(&self) -> u64 {
        self.ttl_ms / 3
    }

    pub fn next_op(&self) -> Op {
        match self.state {
            State::Standby => Op::Acquire,
            State::Active(_) | State::Unsure(_) => Op::Renew,
        }
    }

    /// True while the key is ours as far as this instance knows.
    pub fn holds(&self) -> bool {
        !matches!(self.state, State::Standby)
    }

    /// Until when (ms) this instance may issue; 0 when it may not. This is
    /// 2/3 of the ttl after the last successful renewal: before the key
    /// can expire and another instance take it.
    pub fn active_until(&self) -> u64 {
        match self.state {
            State::Active(at) => at.saturating_add(self.ttl_ms * 2 / 3),
            _ => 0,
        }
    }

    /// The result of the operation [`Lease::next_op`] named, done at `now`.
    pub fn apply(&mut self, now_ms: u64, reply: Reply) -> Change {
        let (next, change) = match (self.state, reply) {
            (State::Standby, Reply::Held) => (State::Active(now_ms), Change::Gained),
            (State::Standby, _) => (State::Standby, Change::None),
            (State::Active(_), Reply::Held) => (State::Active(now_ms), Change::None),
            (State::Unsure(_), Reply::Held) => (State::Active(now_ms), Change::Resumed),
            (State::Active(_) | State::Unsure(_), Reply::NotHeld) => (State::Standby, Change::Lost),
            (State::Active(at), Reply::Error) => (State::Unsure(at), Change::Paused),
            (State::Unsure(at), Reply::Error) => {
                // Past the ttl the key has expired (or another has it).
                if now_ms.saturating_sub(at) >= self.ttl_ms {
                    (State::Standby, Change::Lost)
                } else {
                    (State::Unsure(at), Change::None)
                }
            }
        };
        self.state = next;
        change
    }

    /// Forget the lease (after releasing it on shutdown).
    pub fn release(&mut self) {
        self.state = State::Standby;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: u64 = 15_000;

    #[test]
    fn a_standby_polls_and_becomes_active_when_it_gets_the_key() {
        let mut l = Lease::new(TTL);
        assert_eq!(l.next_op(), Op::Acquire);
        assert_eq!(l.interval_ms(), 5_000);
        assert_eq!(l.apply(0, Reply::NotHeld), Change::None);
        assert_eq!(l.apply(5_000, Reply::Error), Change::None);
        assert_eq!(l.active_until(), 0);
        assert_eq!(l.apply(10_000, Reply::Held), Change::Gained);
        assert_eq!(l.next_op(), Op::Renew);
        assert_eq!(l.active_until(), 20_000);
        assert!(l.holds());
    }

    #[test]
    fn renewals_extend_activity_by_two_thirds_of_the_ttl() {
        let mut l = Lease::new(TTL);
        l.apply(0, Reply::Held);
        assert_eq!(l.apply(5_000, Reply::Held), Change::None);
        assert_eq!(l.active_until(), 15_000);
        // Stalled renewals: active_until does not move, so the shell stops
        // issuing at 2/3 of the ttl even without a reply.
        assert!(l.active_until() < 5_000 + TTL);
    }

    #[test]
    fn a_redis_error_pauses_issuing_at_once_and_a_good_renewal_resumes_it() {
        let mut l = Lease::new(TTL);
        l.apply(0, Reply::Held);
        assert_eq!(l.apply(5_000, Reply::Error), Change::Paused);
        assert_eq!(l.active_until(), 0, "no issuing while unsure");
        assert_eq!(l.next_op(), Op::Renew, "still tries to keep its key");
        assert_eq!(l.apply(10_000, Reply::Error), Change::None);
        assert_eq!(l.apply(12_000, Reply::Held), Change::Resumed);
        assert_eq!(l.active_until(), 22_000);
    }

    #[test]
    fn errors_past_the_ttl_or_another_holder_mean_standby() {
        let mut l = Lease::new(TTL);
        l.apply(0, Reply::Held);
        l.apply(5_000, Reply::Error);
        assert_eq!(l.apply(15_000, Reply::Error), Change::Lost);
        assert_eq!(l.next_op(), Op::Acquire);

        let mut l = Lease::new(TTL);
        l.apply(0, Reply::Held);
        assert_eq!(l.apply(5_000, Reply::NotHeld), Change::Lost);
        assert_eq!(l.active_until(), 0);
        assert!(!l.holds());
    }

    #[test]
    fn release_forgets_the_key() {
        let mut l = Lease::new(TTL);
        l.apply(0, Reply::Held);
        l.release();
        assert_eq!(l.next_op(), Op::Acquire);
        assert_eq!(l.active_until(), 0);
    }
}
