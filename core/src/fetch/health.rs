//! Whether a command connection to one Redis server is still worth using.
//!
//! A connection that broke (an I/O error) is made again, but a timeout
//! alone does not break it: a command that goes unanswered leaves the
//! same connection in use. A flow that a NAT, conntrack table or load
//! balancer forgot (typically the idle command connection of a worker
//! whose cache is warm) would therefore time out every command for as
//! long as TCP keeps it open, up to a quarter of an hour, while Redis
//! answers new connections.
//!
//! The verdict here: a command that times out on a connection that had
//! answered makes that connection suspect, and the next command gets a
//! new one (commands in flight finish on the old one). One timeout is
//! enough: `dyncert_redis_timeout` is already hundreds of times what Redis
//! takes to answer; each failed lookup backs its name off (1 s, then 2 s,
//! ...), so waiting for a second timeout would cost a second round of
//! defaults and about twice the time to recover; and a needless new
//! connection costs one TCP (and TLS) handshake, the old one being closed
//! once its commands end. A timeout on a connection that never answered
//! is a failure to connect: the next attempt waits as after any other
//! ([`Reconnects`]), so a Redis that hangs costs each worker at most one
//! new connection per wait (at most one a second), never one per
//! timed-out command.
//!
//! The same holds for the connection to a Sentinel-managed primary (a
//! `MultiplexedConnection`, which never reconnects by itself): a suspect
//! one is replaced after asking the sentinels again ([`ask_sentinels`],
//! [`replace_primary`]). That connection has answered `ROLE` before it is
//! used, so its first timeout already counts; a primary that hangs gets
//! no new connection, as it fails that `ROLE` check.
//!
//! And for a Cluster connection (the crate's `ClusterConnection`, which
//! retries a timed-out command on the same node connection): one
//! [`ConnHealth`] for the whole connection, whose commands go to every
//! node, and a suspect one is replaced by a new connection made from the
//! configured nodes (a fresh slot map, a fresh connection to each node)
//! when [`replace_cluster`] says so. Two differences follow from one node
//! hanging while the others answer (the connection keeps answering, so
//! each timeout on the hung node would make it suspect again): at most
//! one replacement per [`CLUSTER_REPLACE_INTERVAL`], and a replacement
//! that fails (connecting to the hung node holds it up past the timeout)
//! keeps the old connection with a new [`ConnHealth`], as a new
//! connection's: it is not replaced again until it answered. A cluster
//! that hangs whole thus costs each worker one attempt per time it
//! answered, as one server does.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

/// How one command on a connection ended, as far as the connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandEnd {
    /// Redis answered: a value or a server error (WRONGTYPE, NOPERM...).
    Answered,
    /// Connecting failed or the connection broke (refused, reset, TLS,
    /// credentials): a single server's connection is made again (see
    /// [`Reconnects`]); a Cluster connection reconnects by itself.
    ConnectionFailed,
    /// No answer within `dyncert_redis_timeout`: the crate's own timeout,
    /// or its caller stopped waiting (see [`abandoned`]).
    TimedOut,
}

/// What to report about a command's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing.
    Fine,
    /// A failure to connect (or of the connection): the node is down,
    /// unreachable, or refuses the handshake or the credentials.
    ConnectFailed,
    /// A command went unanswered on a connection that was up. `renew`:
    /// this timeout made the connection suspect (reported once per
    /// connection, when it is replaced).
    CommandTimedOut { renew: bool },
}

/// Consecutive command timeouts on a connection that had answered after
/// which it is replaced (see the module's comment for why one).
pub const TIMEOUTS_BEFORE_RENEW: u32 = 1;

/// What the last command that ended said of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Last {
    /// No command ended yet: a timeout is the connection's connecting (a
    /// Cluster connection's), or it never answered.
    #[default]
    Nothing,
    Answered,
    /// The connection failed, or timed out before any answer: a Cluster
    /// connection is reconnecting, and a timeout is its connect's; a
    /// single server's connection is made again ([`ConnHealth::broken`]).
    Failed,
}

/// The health of one connection: a new one is made for its replacement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnHealth {
    last: Last,
    /// Command timeouts since the last answer.
    timeouts: u32,
    suspect: bool,
}

impl ConnHealth {
    /// Notes how a command ended; what to report about it.
    pub fn record(&mut self, end: CommandEnd) -> Verdict {
        match end {
            CommandEnd::Answered => {
                self.last = Last::Answered;
                self.timeouts = 0;
                Verdict::Fine
            }
            CommandEnd::ConnectionFailed => {
                self.last = Last::Failed;
                self.timeouts = 0;
                Verdict::ConnectFailed
            }
            // Before any answer, a timeout is the connecting's (a Cluster
            // connection's), or a connection that never answered: a
            // failure to connect.
            CommandEnd::TimedOut => match self.last {
                Last::Nothing | Last::Failed => {
                    self.last = Last::Failed;
                    Verdict::ConnectFailed
                }
                Last::Answered => {
                    self.timeouts = self.timeouts.saturating_add(1);
                    let renew = !self.suspect && self.timeouts >= TIMEOUTS_BEFORE_RENEW;
                    self.suspect |= renew;
                    Verdict::CommandTimedOut { renew }
                }
            },
        }
    }

    /// Whether the next command should get a new connection. Once
    /// suspect, a connection stays so (a late answer does not undo it):
    /// it is replaced, and its replacement starts afresh.
    pub fn suspect(&self) -> bool {
        self.suspect
    }

    /// Whether the last command that ended found the connection broken,
    /// or it timed out on a connection that never answered: a single
    /// server's connection is then made again (when `Reconnects` admits
    /// it), without the note a suspect one's replacement gets.
    pub fn broken(&self) -> bool {
        self.last == Last::Failed
    }
}

/// Shortest time between two replacements of a Cluster connection (see
/// the module's comment): a node that hangs while the others answer costs
/// each worker at most one new connection (one TCP connection per node)
/// this often. A middlebox that forgot the flows forgets new ones only
/// after minutes of idleness, so the first replacement is never held up.
pub const CLUSTER_REPLACE_INTERVAL: Duration = Duration::from_secs(10);

/// Whether the Cluster connection in use is replaced before the next
/// command: it is suspect, and it was not itself made by a replacement
/// less than [`CLUSTER_REPLACE_INTERVAL`] ago (`since_replaced`: time since
/// the last replacement, `None` before the first).
pub fn replace_cluster(suspect: bool, since_replaced: Option<Duration>) -> bool {
    suspect && since_replaced.is_none_or(|t| t >= CLUSTER_REPLACE_INTERVAL)
}

/// How a command whose caller stopped waiting after `elapsed` ended: a
/// timeout when the caller waited at least half the command timeout (the
/// callers' own bound is `dyncert_redis_timeout`, and it often ends the
/// wait just before the crate's would), nothing otherwise (the caller gave
/// up for a reason of its own, e.g. the worker is exiting).
pub fn abandoned(elapsed: Duration, timeout: Duration) -> Option<CommandEnd> {
    (elapsed >= timeout / 2).then_some(CommandEnd::TimedOut)
}

/// What the sentinels said when asked again about the primary whose
/// connection is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    /// A majority names the address in use.
    Same,
    /// A majority names another address: the primary moved.
    Other,
    /// The sentinels could not be asked, or no majority names one address.
    Nobody,
}

/// Whether a Sentinel connection asks the sentinels about its primary
/// before the next command: when the connection in use is suspect (it is
/// replaced, and the primary may have moved: a failover is a common cause
/// of a silent primary), or the last time they named it is `interval` ago.
pub fn ask_sentinels(suspect: bool, since_named: Duration, interval: Duration) -> bool {
    suspect || since_named >= interval
}

/// Whether a Sentinel connection replaces its primary connection, after
/// asking the sentinels ([`ask_sentinels`]): when the primary moved, or
/// the connection is suspect. A suspect connection is replaced also when
/// the sentinels name nobody: by one to the address a majority named
/// last, as a connection that still answered would be kept.
pub fn replace_primary(suspect: bool, named: Named) -> bool {
    suspect || named == Named::Other
}

/// Whether the routine re-check of a primary connection that answered
/// (asked in the background, after [`ask_sentinels`]) installs the primary
/// the sentinels named: only when a majority names another address
/// ([`replace_primary`] of a connection that is not suspect), and the
/// connection asked about is `still_in_use`. One that replaced it while
/// the sentinels were asked (after a timeout or a failure) stands: it was
/// chosen later, and overwriting it would bring back a primary nobody
/// checked since.
pub fn install_rechecked(named: Named, still_in_use: bool) -> bool {
    still_in_use && replace_primary(false, named)
}

/// Wait after the second failure in a row to connect to a node, before a
/// command may try it again ([`Reconnects`]); it doubles with each failed
/// attempt after it. After the first there is none: the first is usually
/// a connection that broke because the server restarted, and it is back.
pub const RECONNECT_FIRST_WAIT: Duration = Duration::from_millis(100);

/// Longest wait between two attempts to connect to a node that keeps
/// failing ([`Reconnects`]): a node that comes back is connected to again
/// within this (and one connect) of answering, as the invalidation
/// subscription is.
pub const RECONNECT_MAX_WAIT: Duration = Duration::from_secs(1);

/// The wait after `failures` failed attempts in a row (from 1): none
/// after the first, then [`RECONNECT_FIRST_WAIT`] doubling, at most
/// [`RECONNECT_MAX_WAIT`].
pub fn reconnect_wait(failures: u32) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    let doublings = failures.saturating_sub(2).min(16);
    RECONNECT_FIRST_WAIT
        .saturating_mul(1 << doublings)
        .min(RECONNECT_MAX_WAIT)
}

/// What a command that has no connection to a node does
/// ([`Reconnects::admit`]). The caller connects under a lock, so the
/// commands that come meanwhile share that attempt and are admitted again
/// after it (to its connection, or to the wait its failure started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Connect: the node answered last, it failed only once, or the wait
    /// after its last failure is over. `since` is the number of failures
    /// counted then: the attempt's failure is counted only if no other
    /// was since ([`Reconnects::failed`]).
    Connect { since: u64 },
    /// Wait until then, and ask again: the next attempt comes within the
    /// command's patience.
    WaitUntil(Instant),
    /// Fail at once: the next attempt is further off than the command's
    /// patience.
    Refuse,
}

/// When commands may try again a node that failed to connect, across
/// commands. The redis crate's `ConnectionManager` reconnected (with its
/// own short retries) on whatever command came next, so with a node down
/// every command was a new attempt: about a dozen connections a second
/// per worker under traffic, each worker of each terminator, all of them
/// at once when the node comes back. Now after the second failed attempt
/// in a row the commands of the next [`reconnect_wait`] wait for the
/// attempt after it (or fail at once, when that is further off than they
/// may wait): one attempt per wait per worker, the wait doubling from
/// 100 ms to 1 s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconnects {
    /// Failed attempts in a row.
    failures: u32,
    /// Failures counted ever: tells a command admitted before the last
    /// counted failure (it failed with the others) from one after it.
    counted: u64,
    /// When the next attempt may start; `None` while the node answers.
    next: Option<Instant>,
}

impl Reconnects {
    /// What a command without a connection, which may wait `patience`,
    /// does at `now`.
    pub fn admit(&self, now: Instant, patience: Duration) -> Admit {
        let since = self.counted;
        match self.next {
            None => Admit::Connect { since },
            Some(t) if t <= now => Admit::Connect { since },
            Some(t) if t.duration_since(now) <= patience => Admit::WaitUntil(t),
            Some(_) => Admit::Refuse,
        }
    }

    /// An attempt admitted with `since` ([`Admit`]) failed to connect, or
    /// a command on a connection taken with `since` found it broken, at
    /// `now`. Counted once: the commands in flight on a connection that
    /// broke fail together, and only the first of them counts.
    pub fn failed(&mut self, since: u64, now: Instant) {
        if since != self.counted {
            return;
        }
        self.counted = self.counted.wrapping_add(1);
        self.failures = self.failures.saturating_add(1);
        self.next = Some(now + reconnect_wait(self.failures));
    }

    /// The end of an attempt (or of a command on a connection) taken with
    /// `since`: answered, or failed at `now` ([`Self::failed`]).
    pub fn ended(&mut self, answered: bool, since: u64, now: Instant) {
        if answered {
            self.answered();
        } else {
            self.failed(since, now);
        }
    }

    /// A command was answered: the node is fine again.
    pub fn answered(&mut self) {
        self.failures = 0;
        self.next = None;
    }

    /// The failures counted so far: what [`Admit`] hands an attempt, and
    /// what a command on an established connection is taken with.
    pub fn counted(&self) -> u64 {
        self.counted
    }

    /// How long until the next attempt (zero when a command may go now).
    pub fn wait_left(&self, now: Instant) -> Duration {
        self.next
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_on_a_connection_that_answered_replaces_it_once() {
        let mut h = ConnHealth::default();
        assert_eq!(h.record(CommandEnd::Answered), Verdict::Fine);
        assert!(!h.suspect());
        assert_eq!(
            h.record(CommandEnd::TimedOut),
            Verdict::CommandTimedOut { renew: true }
        );
        assert!(h.suspect());
        // The other commands that were waiting on it time out too: counted,
        // not a second replacement.
        for _ in 0..5 {
            assert_eq!(
                h.record(CommandEnd::TimedOut),
                Verdict::CommandTimedOut { renew: false }
            );
        }
        // A late answer does not make it trusted again.
        assert_eq!(h.record(CommandEnd::Answered), Verdict::Fine);
        assert!(h.suspect());
    }

    #[test]
    fn timeouts_before_any_answer_are_failures_to_connect_not_a_suspect_connection() {
        let mut h = ConnHealth::default();
        assert!(!h.broken());
        for _ in 0..3 {
            assert_eq!(h.record(CommandEnd::TimedOut), Verdict::ConnectFailed);
            // A single server's connection is made again (after the wait
            // `Reconnects` sets), without a "reconnected" note.
            assert!(h.broken());
        }
        assert!(!h.suspect());
    }

    #[test]
    fn only_a_failure_or_a_timeout_before_any_answer_breaks_a_connection() {
        let mut h = ConnHealth::default();
        h.record(CommandEnd::Answered);
        assert!(!h.broken());
        // Silent after answering: suspect (replaced, and noted), not broken.
        h.record(CommandEnd::TimedOut);
        assert!(!h.broken());
        assert!(h.suspect());
        let mut h = ConnHealth::default();
        h.record(CommandEnd::Answered);
        h.record(CommandEnd::ConnectionFailed);
        assert!(h.broken());
        assert!(!h.suspect());
        // A command that answered on it after all (it was in flight on a
        // connection a Cluster connection made again): not broken.
        h.record(CommandEnd::Answered);
        assert!(!h.broken());
    }

    #[test]
    fn after_a_broken_connection_a_timeout_is_the_reconnect_not_a_command() {
        let mut h = ConnHealth::default();
        h.record(CommandEnd::Answered);
        assert_eq!(
            h.record(CommandEnd::ConnectionFailed),
            Verdict::ConnectFailed
        );
        assert_eq!(h.record(CommandEnd::TimedOut), Verdict::ConnectFailed);
        assert!(!h.suspect(), "a Cluster connection reconnects by itself");
        // Reconnected, answering, then silent: a command timeout again.
        h.record(CommandEnd::Answered);
        assert_eq!(
            h.record(CommandEnd::TimedOut),
            Verdict::CommandTimedOut { renew: true }
        );
    }

    #[test]
    fn connection_failures_are_reported_as_such_whatever_came_before() {
        let mut h = ConnHealth::default();
        assert_eq!(
            h.record(CommandEnd::ConnectionFailed),
            Verdict::ConnectFailed
        );
        h.record(CommandEnd::Answered);
        assert_eq!(
            h.record(CommandEnd::ConnectionFailed),
            Verdict::ConnectFailed
        );
        assert!(!h.suspect());
    }

    #[test]
    fn a_suspect_primary_connection_is_replaced_after_asking_the_sentinels_whatever_they_say() {
        let interval = Duration::from_secs(1);
        // Asked at once, not at the next periodic check.
        assert!(ask_sentinels(true, Duration::ZERO, interval));
        for named in [Named::Same, Named::Other, Named::Nobody] {
            assert!(replace_primary(true, named), "{named:?}");
        }
    }

    #[test]
    fn a_healthy_primary_connection_is_kept_until_the_primary_moves() {
        let interval = Duration::from_secs(1);
        assert!(!ask_sentinels(false, Duration::from_millis(999), interval));
        assert!(ask_sentinels(false, interval, interval));
        assert!(!replace_primary(false, Named::Same));
        // Sentinels down or split: the primary a majority named, still
        // answering, is kept.
        assert!(!replace_primary(false, Named::Nobody));
        assert!(replace_primary(false, Named::Other));
    }

    #[test]
    fn a_routine_recheck_installs_the_moved_primary_only_while_the_one_asked_about_is_in_use() {
        // The primary moved, and the connection asked about is still the
        // one in use: the new primary replaces it.
        assert!(install_rechecked(Named::Other, true));
        // The primary moved, but a timeout or a failure replaced the
        // connection meanwhile: that replacement stands.
        assert!(!install_rechecked(Named::Other, false));
        // The same primary: the connection in use is kept.
        assert!(!install_rechecked(Named::Same, true));
        assert!(!install_rechecked(Named::Same, false));
        // No majority (sentinels down or split): the primary in use, still
        // answering, is kept.
        assert!(!install_rechecked(Named::Nobody, true));
        assert!(!install_rechecked(Named::Nobody, false));
    }

    #[test]
    fn a_silent_primary_connection_becomes_suspect_after_one_timeout_once_it_answered() {
        // What `SentinelConn` feeds its primary connection's health.
        let mut h = ConnHealth::default();
        h.record(CommandEnd::Answered);
        assert!(!replace_primary(h.suspect(), Named::Same));
        assert_eq!(
            h.record(CommandEnd::TimedOut),
            Verdict::CommandTimedOut { renew: true }
        );
        assert!(ask_sentinels(
            h.suspect(),
            Duration::ZERO,
            Duration::from_secs(1)
        ));
        assert!(replace_primary(h.suspect(), Named::Same));
    }

    #[test]
    fn a_silent_cluster_connection_is_replaced_at_once_the_first_time() {
        // What `LazyCluster` feeds its connection's health: commands to
        // any node.
        let mut h = ConnHealth::default();
        h.record(CommandEnd::Answered);
        assert!(!replace_cluster(h.suspect(), None));
        assert_eq!(
            h.record(CommandEnd::TimedOut),
            Verdict::CommandTimedOut { renew: true }
        );
        assert!(replace_cluster(h.suspect(), None));
        // A replacement made long ago holds nothing up.
        assert!(replace_cluster(h.suspect(), Some(CLUSTER_REPLACE_INTERVAL)));
    }

    #[test]
    fn a_cluster_connection_is_replaced_at_most_once_per_interval() {
        // A node hangs while the others answer: the new connection answers
        // (other nodes), then times out (the hung one) and is suspect at
        // once; it is kept until the interval has passed.
        let mut h = ConnHealth::default();
        h.record(CommandEnd::Answered);
        h.record(CommandEnd::TimedOut);
        assert!(h.suspect());
        assert!(!replace_cluster(h.suspect(), Some(Duration::ZERO)));
        assert!(!replace_cluster(
            h.suspect(),
            Some(CLUSTER_REPLACE_INTERVAL - Duration::from_millis(1))
        ));
        assert!(replace_cluster(h.suspect(), Some(CLUSTER_REPLACE_INTERVAL)));
        // Not suspect: never replaced, however long ago the last one.
        assert!(!replace_cluster(false, Some(Duration::from_secs(3600))));
    }

    #[test]
    fn a_connection_kept_after_a_failed_replacement_is_replaced_again_only_after_it_answered() {
        // The whole cluster hangs: the replacement cannot connect, the old
        // connection is kept with the health of a new one.
        let mut h = ConnHealth::default();
        h.record(CommandEnd::Answered);
        h.record(CommandEnd::TimedOut);
        assert!(replace_cluster(h.suspect(), None));
        let mut h = ConnHealth::default();
        for _ in 0..3 {
            assert_eq!(h.record(CommandEnd::TimedOut), Verdict::ConnectFailed);
        }
        assert!(!replace_cluster(
            h.suspect(),
            Some(CLUSTER_REPLACE_INTERVAL)
        ));
        // It answers again, then goes silent: one more replacement, once
        // the interval since the failed one has passed.
        h.record(CommandEnd::Answered);
        assert_eq!(
            h.record(CommandEnd::TimedOut),
            Verdict::CommandTimedOut { renew: true }
        );
        assert!(!replace_cluster(h.suspect(), Some(Duration::from_secs(1))));
        assert!(replace_cluster(h.suspect(), Some(CLUSTER_REPLACE_INTERVAL)));
    }

    #[test]
    fn a_command_abandoned_after_half_the_timeout_timed_out() {
        let t = Duration::from_millis(500);
        assert_eq!(
            abandoned(Duration::from_millis(499), t),
            Some(CommandEnd::TimedOut)
        );
        assert_eq!(abandoned(t, t), Some(CommandEnd::TimedOut));
        assert_eq!(
            abandoned(Duration::from_millis(250), t),
            Some(CommandEnd::TimedOut)
        );
        assert_eq!(abandoned(Duration::from_millis(10), t), None);
        assert_eq!(abandoned(Duration::ZERO, t), None);
    }

    #[test]
    fn reconnect_waits_are_none_after_one_failure_then_double_from_100_ms_to_one_second() {
        let waits: Vec<u128> = (1..=8).map(|n| reconnect_wait(n).as_millis()).collect();
        assert_eq!(waits, [0, 100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(reconnect_wait(u32::MAX), RECONNECT_MAX_WAIT);
    }

    /// `r.admit(now, patience)`, without the failures count.
    fn admitted(r: &Reconnects, now: Instant, patience: Duration) -> &'static str {
        match r.admit(now, patience) {
            Admit::Connect { .. } => "connect",
            Admit::WaitUntil(_) => "wait",
            Admit::Refuse => "refuse",
        }
    }

    /// Admits a command at `now` and fails it there.
    fn fail_one(r: &mut Reconnects, now: Instant) {
        match r.admit(now, Duration::ZERO) {
            Admit::Connect { since } => r.failed(since, now),
            other => panic!("not admitted: {other:?}"),
        }
    }

    #[test]
    fn after_two_failed_connects_commands_wait_for_the_next_attempt_or_fail_at_once() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let z = Duration::ZERO;
        let mut r = Reconnects::default();
        // A node that answers: a command without a connection connects.
        assert_eq!(admitted(&r, t0, z), "connect");
        // It fails once (typically a connection broken by a restart): the
        // next command connects again at once.
        fail_one(&mut r, t0);
        assert_eq!(admitted(&r, t0, z), "connect");
        assert_eq!(admitted(&r, t0 + ms(1), z), "connect");
        // That fails too: the next attempt is 100 ms off. A command that
        // may wait 500 ms waits for it; one that may not wait fails at once.
        fail_one(&mut r, t0 + ms(2));
        assert_eq!(
            r.admit(t0 + ms(12), ms(500)),
            Admit::WaitUntil(t0 + ms(102))
        );
        assert_eq!(admitted(&r, t0 + ms(12), ms(50)), "refuse");
        assert_eq!(admitted(&r, t0 + ms(12), z), "refuse");
        assert_eq!(r.wait_left(t0 + ms(12)), ms(90));
        // Its time: a command connects (the others, waiting for the lock
        // it connects under, share it).
        assert_eq!(admitted(&r, t0 + ms(102), z), "connect");
        assert_eq!(r.wait_left(t0 + ms(150)), z);
        // It connected and was answered: back to normal.
        r.answered();
        assert_eq!(admitted(&r, t0 + ms(160), z), "connect");
        assert_eq!(r.wait_left(t0 + ms(160)), z);
    }

    #[test]
    fn an_attempt_ends_answered_or_failed_once_for_its_count() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let z = Duration::ZERO;
        let mut r = Reconnects::default();
        // Two attempts end failed: the next is 100 ms off.
        for i in 0..2 {
            let Admit::Connect { since } = r.admit(t0 + ms(i), z) else {
                panic!("attempt {i} not admitted");
            };
            r.ended(false, since, t0 + ms(i));
        }
        assert_eq!(r.wait_left(t0 + ms(1)), ms(100));
        // A late end taken with an old count changes nothing.
        r.ended(false, 0, t0 + ms(50));
        assert_eq!(r.wait_left(t0 + ms(1)), ms(100));
        // The next attempt ends answered, whatever its count: no wait.
        r.ended(true, 0, t0 + ms(101));
        assert_eq!(admitted(&r, t0 + ms(101), z), "connect");
        assert_eq!(r.wait_left(t0 + ms(101)), z);
    }

    #[test]
    fn the_commands_that_shared_an_attempt_count_one_failure() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let z = Duration::ZERO;
        let mut r = Reconnects::default();
        // Ten commands in flight on a connection when it broke: one failure.
        let since = r.counted();
        for i in 0..10 {
            r.failed(since, t0 + ms(i));
        }
        assert_eq!(r.wait_left(t0 + ms(9)), z, "one failure: no wait");
        // The attempt at once fails, and so do the commands that were on
        // the broken connection and end after it: the second failure,
        // 100 ms.
        let Admit::Connect { since: attempt } = r.admit(t0 + ms(10), z) else {
            panic!("no attempt after one failure")
        };
        r.failed(attempt, t0 + ms(11));
        r.failed(since, t0 + ms(12));
        assert_eq!(r.wait_left(t0 + ms(11)), ms(100));
        // Then 200, 400, 800 ms, then at most a second: one failure per
        // attempt, however many commands shared it.
        let mut now = t0 + ms(111);
        for expected in [200, 400, 800, 1000, 1000] {
            let Admit::Connect { since } = r.admit(now, z) else {
                panic!("no attempt at {:?}", now - t0)
            };
            r.failed(since, now);
            r.failed(since, now);
            assert_eq!(r.wait_left(now), ms(expected));
            assert_eq!(admitted(&r, now, z), "refuse");
            now += ms(expected);
        }
        // An answer: back to normal, and the next failure has no wait.
        r.answered();
        assert_eq!(admitted(&r, now, z), "connect");
        fail_one(&mut r, now);
        assert_eq!(r.wait_left(now), z);
        fail_one(&mut r, now);
        assert_eq!(r.wait_left(now), ms(100));
    }
}

/// The verdict applied to a real connection (`conn::SingleConn`): a real
/// redis-server behind the test kit's `BlackholeProxy`, a flow a
/// middlebox forgot once frozen.
#[cfg(test)]
mod live_tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crate::fetch::conn::{Notes, RedisNote, RedisTarget, RedisTls};
    use dyncert_testkit::{BlackholeProxy, Redis};

    const T: Duration = Duration::from_millis(300);

    /// `url`'s target (commands time out after `T`), notes collected into
    /// the returned list, and a runtime to drive them.
    fn setup(url: &str) -> (RedisTarget, Notes, Seen, tokio::runtime::Runtime) {
        let target = RedisTarget::new(url, RedisTls::default(), T).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let notes = Notes::new(move |n| sink.lock().unwrap().push(n));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        (target, notes, seen, rt)
    }

    type Seen = Arc<Mutex<Vec<RedisNote>>>;

    /// The `sentinel://` URL of `sentinels`' service, database 0.
    fn sentinel_url(sentinels: &[Redis]) -> String {
        let nodes: Vec<String> = sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!(
            "sentinel://{}/{}/0",
            nodes.join(","),
            dyncert_testkit::SENTINEL_SERVICE
        )
    }

    /// `cmd` through the handle: its answer as text, or "timeout".
    async fn query<V: redis::FromRedisValue + ToString>(
        conn: &mut crate::fetch::RedisConn,
        cmd: redis::Cmd,
    ) -> Result<String, String> {
        match tokio::time::timeout(T, cmd.query_async::<V>(conn)).await {
            Ok(Ok(v)) => Ok(v.to_string()),
            // The crate's own timeout, or the caller's: whichever ends first.
            Ok(Err(e)) if e.is_timeout() => Err("timeout".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timeout".into()),
        }
    }

    /// `PING` through the handle: "PONG", or "timeout".
    async fn ping(conn: &mut crate::fetch::RedisConn) -> Result<String, String> {
        query::<String>(conn, redis::cmd("PING")).await
    }

    /// What `setup`'s notes saw: one command timeout, then one
    /// replacement, both logged.
    fn assert_timed_out_then_reconnected(seen: &Seen) {
        let seen = seen.lock().unwrap();
        assert!(
            matches!(
                &seen[..],
                [
                    RedisNote::CommandTimedOut {
                        timeout: T,
                        logged: true,
                        ..
                    },
                    RedisNote::Reconnected { logged: true, .. },
                ]
            ),
            "{seen:?}"
        );
    }

    #[test]
    fn a_connection_that_went_silent_is_replaced_for_every_holder_after_one_timeout() {
        let redis = Redis::start();
        let proxy = BlackholeProxy::start(redis.port);
        let url = format!("redis://127.0.0.1:{}/0", proxy.port);
        let (target, notes, seen, rt) = setup(&url);
        rt.block_on(async {
            let mut lookups = target.connect(notes).unwrap();
            // A handle taken at start, as the ticket task's and the ACME
            // reader's are.
            let mut tickets = lookups.clone();
            assert_eq!(ping(&mut lookups).await, Ok("PONG".to_owned()));
            assert_eq!(proxy.accepted(), 1);
            proxy.freeze();
            assert_eq!(ping(&mut lookups).await, Err("timeout".to_owned()));
            assert_eq!(ping(&mut tickets).await, Ok("PONG".to_owned()));
            assert_eq!(ping(&mut lookups).await, Ok("PONG".to_owned()));
        });
        assert_eq!(proxy.accepted(), 2, "one new connection, shared");
        assert_timed_out_then_reconnected(&seen);
    }

    #[test]
    fn a_sentinel_primary_connection_that_went_silent_is_replaced_after_one_timeout() {
        use dyncert_testkit::sentinels_naming;
        // Three real sentinels that name the primary at the proxy's address.
        let redis = Redis::start();
        let proxy = BlackholeProxy::start(redis.port);
        let sentinels = sentinels_naming(proxy.port);
        let url = sentinel_url(&sentinels);
        let (target, notes, seen, rt) = setup(&url);
        rt.block_on(async {
            let mut lookups = target.connect(notes).unwrap();
            let mut tickets = lookups.clone();
            assert_eq!(ping(&mut lookups).await, Ok("PONG".to_owned()));
            proxy.freeze();
            assert_eq!(ping(&mut lookups).await, Err("timeout".to_owned()));
            // The next command, whoever sends it, asks the sentinels and
            // gets a new connection.
            assert_eq!(ping(&mut tickets).await, Ok("PONG".to_owned()));
            assert_eq!(ping(&mut lookups).await, Ok("PONG".to_owned()));
        });
        let node = format!("127.0.0.1:{}", proxy.port);
        let seen = seen.lock().unwrap();
        assert!(
            matches!(
                &seen[..],
                [
                    RedisNote::CommandTimedOut {
                        node: a,
                        timeout: T,
                        logged: true,
                    },
                    RedisNote::Reconnected { node: b, logged: true },
                ] if *a == node && *b == node
            ),
            "{seen:?}"
        );
    }

    /// `EXISTS key` through the handle: "1"/"0", or "timeout".
    async fn exists(conn: &mut crate::fetch::RedisConn, key: &str) -> Result<String, String> {
        query::<i64>(conn, redis::cmd("EXISTS").arg(key).clone()).await
    }

    /// Two keys owned by different nodes of `cluster`.
    fn keys_on_two_nodes(cluster: &dyncert_testkit::RedisCluster) -> (String, String) {
        let a = "k0".to_owned();
        let b = (1..100)
            .map(|i| format!("k{i}"))
            .find(|k| cluster.owner(k) != cluster.owner(&a))
            .unwrap();
        (a, b)
    }

    #[test]
    fn a_cluster_connection_that_went_silent_is_replaced_for_every_holder_after_one_timeout() {
        let c = dyncert_testkit::ProxiedCluster::start();
        let (target, notes, seen, rt) = setup(&c.url());
        rt.block_on(async {
            let mut lookups = target.connect(notes).unwrap();
            let mut tickets = lookups.clone();
            assert_eq!(exists(&mut lookups, "k").await, Ok("0".to_owned()));
            c.freeze();
            let before = c.accepted();
            assert_eq!(exists(&mut lookups, "k").await, Err("timeout".to_owned()));
            assert_eq!(exists(&mut tickets, "k").await, Ok("0".to_owned()));
            assert_eq!(exists(&mut lookups, "k").await, Ok("0".to_owned()));
            // One new Cluster connection: one connection to each node.
            assert_eq!(c.accepted() - before, c.proxies.len() as u64);
        });
        assert_timed_out_then_reconnected(&seen);
    }

    #[test]
    fn a_hung_cluster_node_costs_one_replacement_and_holds_up_no_command_to_the_others() {
        let cluster = dyncert_testkit::RedisCluster::start();
        let (a, b) = keys_on_two_nodes(&cluster);
        let hung = cluster
            .nodes
            .iter()
            .find(|n| n.port == cluster.owner(&b))
            .unwrap();
        let (target, notes, seen, rt) = setup(&cluster.url());
        rt.block_on(async {
            let mut conn = target.connect(notes).unwrap();
            assert_eq!(exists(&mut conn, &a).await, Ok("0".to_owned()));
            assert_eq!(exists(&mut conn, &b).await, Ok("0".to_owned()));
            hung.pause();
            assert_eq!(exists(&mut conn, &b).await, Err("timeout".to_owned()));
            // The next command to the hung node replaces the connection
            // (connecting to the hung node holds that up for the whole
            // timeout); one to another node meanwhile is answered on the old
            // one (had it waited for the replacement, it would time out).
            let (mut c1, mut c2) = (conn.clone(), conn.clone());
            let (_, answered) = tokio::join!(exists(&mut c1, &b), exists(&mut c2, &a));
            assert_eq!(answered, Ok("0".to_owned()));
            // Whatever the new connection: the other node answers, the hung
            // one does not, and no second replacement follows.
            for _ in 0..3 {
                assert_eq!(exists(&mut conn, &a).await, Ok("0".to_owned()));
                assert_eq!(exists(&mut conn, &b).await, Err("timeout".to_owned()));
            }
        });
        hung.resume();
        let seen = seen.lock().unwrap();
        let replaced = seen
            .iter()
            .filter(|n| matches!(n, RedisNote::Reconnected { .. }))
            .count();
        assert_eq!(replaced, 1, "{seen:?}");
    }

    #[test]
    fn a_hung_cluster_costs_one_replacement_attempt() {
        let cluster = dyncert_testkit::RedisCluster::start();
        let (target, notes, seen, rt) = setup(&cluster.url());
        rt.block_on(async {
            let mut conn = target.connect(notes).unwrap();
            assert_eq!(exists(&mut conn, "k").await, Ok("0".to_owned()));
            for n in &cluster.nodes {
                n.pause();
            }
            for _ in 0..4 {
                assert!(exists(&mut conn, "k").await.is_err());
            }
        });
        for n in &cluster.nodes {
            n.resume();
        }
        let seen = seen.lock().unwrap();
        assert!(
            matches!(
                &seen[..],
                [
                    RedisNote::CommandTimedOut { .. },
                    RedisNote::Reconnected { .. },
                    RedisNote::ConnectFailed { .. },
                    rest @ ..
                ] if rest.iter().all(|n| matches!(n, RedisNote::ConnectFailed { .. }))
            ),
            "{seen:?}"
        );
    }

    /// A server that accepts connections and never answers them (a Redis
    /// that hangs), counting what it accepted; it keeps them open.
    struct Hung {
        port: u16,
        accepted: Arc<std::sync::atomic::AtomicU64>,
    }

    impl Hung {
        fn start() -> Hung {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let count = accepted.clone();
            std::thread::spawn(move || {
                let mut open = Vec::new();
                for s in listener.incoming().flatten() {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    open.push(s);
                }
            });
            Hung { port, accepted }
        }

        fn accepted(&self) -> u64 {
            self.accepted.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// Sends `PING` every 10 ms for 3 s, each caller waiting only half the
    /// timeout: it stops waiting while a connection is being made to a
    /// server that does not answer (which takes the whole timeout). Every
    /// command must fail; returns how many were sent.
    async fn ping_impatiently(conn: &mut crate::fetch::RedisConn) -> usize {
        ask_impatiently(conn, &redis::cmd("PING")).await
    }

    /// [`ping_impatiently`] with `cmd`.
    async fn ask_impatiently(conn: &mut crate::fetch::RedisConn, cmd: &redis::Cmd) -> usize {
        let t0 = std::time::Instant::now();
        let mut sent = 0;
        while t0.elapsed() < Duration::from_secs(3) {
            sent += 1;
            let answered =
                tokio::time::timeout(T / 2, cmd.query_async::<Option<String>>(conn)).await;
            assert!(!matches!(answered, Ok(Ok(_))), "{answered:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sent
    }

    /// What [`ping_impatiently`] may cost a server that hangs: each attempt
    /// runs its whole 300 ms and counts as failed, whoever waited for it,
    /// so attempts come at about 0, 0.3, 0.7, 1.2, 1.9 and 3.0 s (the waits
    /// 0, 100, 200, 400 and 800 ms after them): 5 or 6. Cancelled with its
    /// caller instead, an attempt was never counted, and every command
    /// made a connection of its own (measured: 19, for one server and for
    /// a Sentinel primary alike).
    fn assert_one_attempt_per_wait(made: u64, sent: usize) {
        eprintln!("{made} connections for {sent} commands");
        assert!(
            (2..=7).contains(&made),
            "{made} connections to a server that hangs, for {sent} commands in 3 s"
        );
    }

    #[test]
    fn callers_that_stop_waiting_do_not_make_every_command_a_new_connection() {
        let hung = Hung::start();
        let url = format!("redis://127.0.0.1:{}/0", hung.port);
        let (target, notes, _seen, rt) = setup(&url);
        rt.block_on(async {
            let mut conn = target.connect(notes).unwrap();
            let sent = ping_impatiently(&mut conn).await;
            assert_one_attempt_per_wait(hung.accepted(), sent);
        });
    }

    #[test]
    fn callers_that_stop_waiting_do_not_make_every_command_a_new_connection_to_a_sentinel_primary()
    {
        use dyncert_testkit::{poll, sentinels_naming};
        // Three real sentinels that name, as the primary, a server that
        // accepts connections and never answers.
        let hung = Hung::start();
        let sentinels = sentinels_naming(hung.port);
        // Their own two links each to the primary they monitor.
        let linked = poll(Duration::from_secs(5), Duration::from_millis(50), || {
            (hung.accepted() >= 6).then_some(())
        });
        assert!(linked.is_some(), "{} sentinel links", hung.accepted());
        std::thread::sleep(Duration::from_millis(200));
        let url = sentinel_url(&sentinels);
        let (target, notes, _seen, rt) = setup(&url);
        rt.block_on(async {
            let mut conn = target.connect(notes).unwrap();
            let before = hung.accepted();
            let sent = ping_impatiently(&mut conn).await;
            assert_one_attempt_per_wait(hung.accepted() - before, sent);
        });
    }

    #[test]
    fn a_server_that_never_answered_gets_no_new_connection_per_timeout() {
        // Accepts and never answers: the manager's connecting times out.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "redis://127.0.0.1:{}/0",
            silent.local_addr().unwrap().port()
        );
        let (target, notes, seen, rt) = setup(&url);
        rt.block_on(async {
            let mut conn = target.connect(notes).unwrap();
            for _ in 0..3 {
                assert!(ping(&mut conn).await.is_err());
            }
        });
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty());
        assert!(
            seen.iter()
                .all(|n| matches!(n, RedisNote::ConnectFailed { .. })),
            "{seen:?}"
        );
    }

    /// Sends `cmd` every `every` for `during`; the answers that were `Ok`.
    async fn keep_asking(
        conn: &mut crate::fetch::RedisConn,
        cmd: &redis::Cmd,
        every: Duration,
        during: Duration,
    ) -> (usize, usize) {
        let t0 = std::time::Instant::now();
        let (mut sent, mut answered) = (0, 0);
        while t0.elapsed() < during {
            sent += 1;
            if query::<String>(conn, cmd.clone()).await.is_ok() {
                answered += 1;
            }
            tokio::time::sleep(every).await;
        }
        (sent, answered)
    }

    /// [`keep_asking`] `PING`, every `every_ms` for `secs`.
    async fn keep_pinging(
        conn: &mut crate::fetch::RedisConn,
        every_ms: u64,
        secs: u64,
    ) -> (usize, usize) {
        let every = Duration::from_millis(every_ms);
        keep_asking(conn, &redis::cmd("PING"), every, Duration::from_secs(secs)).await
    }

    #[test]
    fn a_server_that_is_down_gets_one_connection_attempt_per_wait_not_several_per_command() {
        // A server that is down behind a proxy that counts the connections
        // made to it (the proxy accepts, finds nothing behind, and closes).
        let mut redis = Redis::reserve();
        let proxy = BlackholeProxy::start(redis.port);
        let url = format!("redis://127.0.0.1:{}/0", proxy.port);
        let (target, notes, _seen, rt) = setup(&url);
        rt.block_on(async {
            let mut conn = target.connect(notes).unwrap();
            // A command every 10 ms for 3 s, as lookups under traffic.
            let (sent, answered) = keep_pinging(&mut conn, 10, 3).await;
            assert_eq!(answered, 0);
            // The first connection, a second right after its failure,
            // then attempts at about 0.1, 0.3, 0.7, 1.5 and 2.5 s (the wait
            // doubling to 1 s): 7. With the redis crate's
            // `ConnectionManager`, which also reconnected by itself right
            // after every failure, 13 for about 200 commands; before the
            // waits, a new attempt per command with the crate's retries (34
            // connections for 11 commands, each held up by the retries).
            let made = proxy.accepted();
            eprintln!("{made} connections for {sent} commands");
            assert!(
                made <= 8,
                "{made} connections to a server that is down, for {sent} commands in 3 s"
            );
            assert!(made >= 4, "{made} connections: no attempt after the first?");
            // The server comes back: a command answers within the longest
            // wait (1 s) and one connect.
            redis.start_server();
            let t0 = std::time::Instant::now();
            let mut back = None;
            while t0.elapsed() < Duration::from_secs(3) {
                if ping(&mut conn).await.is_ok() {
                    back = Some(t0.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(
                back.is_some_and(|t| t < Duration::from_millis(1500)),
                "answered {back:?} after the server came back"
            );
        });
    }

    #[test]
    fn a_sentinel_slower_than_the_others_keeps_its_connection() {
        use dyncert_testkit::{sentinels_naming, SENTINEL_SERVICE};
        let redis = Redis::start();
        let sentinels = sentinels_naming(redis.port);
        // The third sentinel is 40 ms away each way: it answers after the
        // other two, every time.
        let far = BlackholeProxy::start_delayed(sentinels[2].port, Duration::from_millis(40));
        let url = format!(
            "sentinel://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}/{SENTINEL_SERVICE}/0",
            sentinels[0].port, sentinels[1].port, far.port
        );
        let (target, notes, _seen, rt) = setup(&url);
        rt.block_on(async {
            let mut conn = target.connect(notes).unwrap();
            // 4 s of commands: past four of the once-a-second checks of the
            // primary, each decided by the first two sentinels.
            let (sent, answered) = keep_pinging(&mut conn, 50, 4).await;
            assert_eq!(answered, sent);
        });
        // One connection, made once. Before: the question to it was dropped
        // when the other two had agreed, mid-connect, and the connection
        // with it: one new connection per check.
        assert_eq!(far.accepted(), 1, "connections to the slower sentinel");
    }

    #[test]
    fn while_the_primary_is_down_reads_keep_one_replica_connection() {
        use dyncert_testkit::{redis_command, sentinels_naming, Reply, SENTINEL_SERVICE};
        let mut primary = Redis::start_with(&["--repl-diskless-sync-delay", "0"]);
        let port = primary.port.to_string();
        let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &port]);
        primary.cmd(&["SET", "k", "v"]);
        // Replicated, and known to every sentinel (which fail over only
        // after a minute: the primary stays down for the test).
        let synced =
            dyncert_testkit::poll(Duration::from_secs(10), Duration::from_millis(50), || {
                (replica.cmd(&["GET", "k"]) == Reply::Bulk(Some(b"v".to_vec()))).then_some(())
            });
        assert!(synced.is_some(), "not replicated");
        let sentinels = sentinels_naming(primary.port);
        let listed =
            dyncert_testkit::poll(Duration::from_secs(15), Duration::from_millis(100), || {
                sentinels
                    .iter()
                    .all(|s| {
                        matches!(
                            redis_command(s.port, &["SENTINEL", "REPLICAS", SENTINEL_SERVICE]),
                            Ok(Reply::Array(Some(v))) if !v.is_empty()
                        )
                    })
                    .then_some(())
            });
        assert!(listed.is_some(), "the sentinels do not list the replica");
        // And connected to it (a command and a hello link each), so that
        // the count below is the worker's connections alone.
        let linked =
            dyncert_testkit::poll(Duration::from_secs(15), Duration::from_millis(100), || {
                let clients = match replica.cmd(&["CLIENT", "LIST"]) {
                    Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
                    _ => String::new(),
                };
                (clients.matches("name=sentinel-").count() >= 2 * sentinels.len()).then_some(())
            });
        assert!(
            linked.is_some(),
            "the sentinels did not connect to the replica"
        );
        let url = sentinel_url(&sentinels);
        let (target, notes, seen, rt) = setup(&url);
        primary.stop();
        let before = replica.connections_received();
        rt.block_on(async {
            let mut conn = target.connect(notes).unwrap();
            let get = redis::cmd("GET").arg("k").clone();
            // 3 s of reads, one every 20 ms.
            let (sent, answered) = keep_asking(
                &mut conn,
                &get,
                Duration::from_millis(20),
                Duration::from_secs(3),
            )
            .await;
            assert_eq!(answered, sent, "reads the replica did not answer");
        });
        // Less the first count's own connection. Before: one new
        // connection per read (over a hundred here).
        let made = replica.connections_received() - before - 1;
        assert_eq!(made, 1, "connections to the replica");
        assert!(
            seen.lock()
                .unwrap()
                .iter()
                .any(|n| matches!(n, RedisNote::ReplicaRead { .. })),
            "no replica read noted"
        );
    }

    /// Whether `reply` holds the bulk string `text`, at any depth.
    fn mentions(reply: &dyncert_testkit::Reply, text: &str) -> bool {
        use dyncert_testkit::Reply;
        match reply {
            Reply::Bulk(Some(b)) => b == text.as_bytes(),
            Reply::Array(Some(v)) => v.iter().any(|r| mentions(r, text)),
            _ => false,
        }
    }

    #[test]
    fn a_replica_that_hangs_gets_one_connection_per_wait_while_the_primary_is_down() {
        use dyncert_testkit::{poll, redis_command, sentinels_naming, SENTINEL_SERVICE};
        let mut primary = Redis::start_with(&["--repl-diskless-sync-delay", "0"]);
        // The replica announces the proxy's port: the sentinels list it
        // there, and the worker connects through the proxy.
        let replica = Redis::start();
        let proxy = BlackholeProxy::start(replica.port);
        let announced = proxy.port.to_string();
        replica.cmd(&["CONFIG", "SET", "replica-announce-port", &announced]);
        replica.cmd(&["REPLICAOF", "127.0.0.1", &primary.port.to_string()]);
        let sentinels = sentinels_naming(primary.port);
        let listed = poll(Duration::from_secs(15), Duration::from_millis(100), || {
            sentinels
                .iter()
                .all(|s| {
                    matches!(
                        redis_command(s.port, &["SENTINEL", "REPLICAS", SENTINEL_SERVICE]),
                        Ok(r) if mentions(&r, &announced)
                    )
                })
                .then_some(())
        });
        assert!(listed.is_some(), "the sentinels do not list the replica");
        // Their own links to it (a command and a hello link each).
        let linked = poll(Duration::from_secs(15), Duration::from_millis(50), || {
            (proxy.accepted() >= 6).then_some(())
        });
        assert!(linked.is_some(), "{} sentinel links", proxy.accepted());
        std::thread::sleep(Duration::from_millis(200));
        let (target, notes, _seen, rt) = setup(&sentinel_url(&sentinels));
        primary.stop();
        proxy.hang();
        let before = proxy.accepted();
        rt.block_on(async {
            let mut conn = target.connect(notes).unwrap();
            let get = redis::cmd("GET").arg("k").clone();
            let sent = ask_impatiently(&mut conn, &get).await;
            assert_one_attempt_per_wait(proxy.accepted() - before, sent);
        });
    }
}
