//! What `dyncert run`'s worker does next while active: renewals come
//! first, on-demand work fits between them. Pure, tested without time
//! passing.
#![forbid(unsafe_code)]

/// The worker's next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Just became active: set up the stream's group and claim what a
    /// dead instance left pending (then a renew pass follows).
    Takeover,
    /// Run the renew pass.
    RenewPass,
    /// Claim stream entries pending too long (their handling failed).
    Reclaim,
    /// Read one batch of the stream, blocking at most this long: never
    /// past the time the next renew pass is due.
    Read { block_ms: u64 },
}

#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub renew_every_ms: u64,
    pub reclaim_every_ms: u64,
    /// Longest block of one read.
    pub block_max_ms: u64,
}

impl Schedule {
    /// `takeover`: a takeover not yet set up; `since_pass`: ms since the
    /// last renew pass of this activity (`None`: none yet); `since_claim`:
    /// ms since the last claim.
    pub fn next(&self, takeover: bool, since_pass: Option<u64>, since_claim: u64) -> Step {
        if takeover {
            return Step::Takeover;
        }
        let Some(since_pass) = since_pass.filter(|t| *t < self.renew_every_ms) else {
            return Step::RenewPass;
        };
        if since_claim >= self.reclaim_every_ms {
            return Step::Reclaim;
        }
        Step::Read {
            block_ms: (self.renew_every_ms - since_pass).clamp(1, self.block_max_ms.max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Schedule = Schedule {
        renew_every_ms: 3_600_000,
        reclaim_every_ms: 60_000,
        block_max_ms: 1_000,
    };

    #[test]
    fn a_takeover_is_set_up_first_then_renewals_run_at_once() {
        assert_eq!(S.next(true, Some(10), 0), Step::Takeover);
        assert_eq!(S.next(false, None, 0), Step::RenewPass);
    }

    #[test]
    fn renewals_come_before_on_demand_work_when_due() {
        assert_eq!(S.next(false, Some(3_600_000), 0), Step::RenewPass);
        assert_eq!(S.next(false, Some(3_600_000), 999_999), Step::RenewPass);
        assert_eq!(S.next(false, Some(5), 60_000), Step::Reclaim);
    }

    #[test]
    fn reads_never_block_past_the_next_pass() {
        assert_eq!(S.next(false, Some(0), 0), Step::Read { block_ms: 1_000 });
        assert_eq!(
            S.next(false, Some(3_599_700), 0),
            Step::Read { block_ms: 300 }
        );
        assert_eq!(
            S.next(false, Some(3_599_999), 0),
            Step::Read { block_ms: 1 }
        );
    }
}
