//! What a worker's invalidation subscription has heard, for the write-back
//! of the certificate API's answers (see `sources::WriteGuard`).
//!
//! An operator who rotates a certificate in the API runs `dyncert delete
//! NAME` and publishes the name. An answer that was on its way meanwhile
//! is the old certificate: written back after the delete, it would be what
//! the invalidated lookup's retry, and every other terminator, read from
//! Redis for the write-back TTL. So an answer is written back only if no
//! invalidation covering its name (the name, its `*.parent`, or `*`) was
//! heard since its lookup began, and not while the subscription is down
//! (after a loss, or a first attempt that failed): nothing can be heard
//! then, and the subscription that follows counts as `*` (messages
//! published meanwhile were lost). A worker's first subscription is not
//! waited for (its first lookups would otherwise never write back); without
//! a subscription (`dyncert_invalidate_channel off`) there is nothing to
//! hear and write-backs go on.

use crate::tier::Invalidations;

/// See the module documentation.
pub struct Heard {
    table: Invalidations,
    /// False while the subscription is down after a loss.
    up: bool,
}

impl Default for Heard {
    fn default() -> Self {
        Heard {
            table: Invalidations::default(),
            up: true,
        }
    }
}

impl Heard {
    /// An invalidation of `target` (a name, `*.parent`, or `*`).
    pub fn invalidated(&mut self, target: &str) {
        self.table.note(target);
    }

    /// The subscription is up; `again`: after a loss. After a loss, or
    /// after attempts that failed, what was published meanwhile is lost,
    /// so it counts as `*`.
    pub fn subscribed(&mut self, again: bool) {
        if again || !self.up {
            self.table.note("*");
        }
        self.up = true;
    }

    /// The subscription is down, or an attempt to subscribe failed.
    pub fn lost(&mut self) {
        self.table.note("*");
        self.up = false;
    }

    /// What a lookup beginning now notes, for [`Heard::may_write_back`].
    pub fn generation(&self) -> u64 {
        self.table.generation()
    }

    /// Whether an answer for `name`, from a lookup that began at
    /// generation `since`, may be written back now.
    pub fn may_write_back(&self, name: &str, since: u64) -> bool {
        self.up && !self.table.covers_since(name, since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_written_back_while_the_subscription_is_down_after_a_loss() {
        let mut h = Heard::default();
        // The first subscription is not waited for.
        let early = h.generation();
        assert!(h.may_write_back("a.example.com", early));
        h.subscribed(false);
        assert!(h.may_write_back("a.example.com", early));
        let since = h.generation();
        h.lost();
        assert!(!h.may_write_back("a.example.com", since), "down");
        let during = h.generation();
        h.subscribed(true);
        assert!(
            !h.may_write_back("a.example.com", during),
            "began while down"
        );
        assert!(
            !h.may_write_back("a.example.com", since),
            "began before the loss"
        );
        assert!(h.may_write_back("a.example.com", h.generation()));

        // A first attempt that fails stops write-backs too, and the first
        // subscription after it counts as `*`.
        let mut h = Heard::default();
        let before = h.generation();
        h.lost();
        assert!(!h.may_write_back("a.example.com", before));
        let during = h.generation();
        h.subscribed(false);
        assert!(!h.may_write_back("a.example.com", during));
        assert!(h.may_write_back("a.example.com", h.generation()));
    }

    #[test]
    fn an_invalidation_covering_the_name_stops_its_write_back_others_do_not() {
        let mut h = Heard::default();
        for (target, covers) in [
            ("a.example.com", true),
            ("*.example.com", true),
            ("*", true),
            ("b.example.com", false),
            ("*.a.example.com", false),
            ("*.other.net", false),
        ] {
            let since = h.generation();
            h.invalidated(target);
            assert_eq!(
                !h.may_write_back("a.example.com", since),
                covers,
                "{target}"
            );
        }
    }
}
