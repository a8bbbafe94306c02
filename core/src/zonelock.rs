//! How a worker takes the shared zone's lock (`dyncert_shared_zone`) and
//! what it does with a zone a dead process left behind.
//!
//! nginx's own `ngx_shmtx_lock` sleeps in `sem_wait` until the holder lets
//! go. When the holder died holding the lock, only the master wakes the
//! sleepers (`ngx_unlock_mutexes`), and only for the zones of its current
//! cycle: after a reload that resized or dropped the zone, the old workers
//! still use the old zone, and one of them killed while holding its lock
//! left every other old worker asleep for good (never exiting on quit).
//!
//! So the shell never sleeps on the lock without bound: it tries, spins a
//! little ([`Wait`]), then yields and, between tries, looks at the holder
//! (the pid in the lock word, as `ngx_shmtx_force_unlock` reads it): a
//! holder that no longer exists is unlocked by force ([`holder`],
//! [`Holder::recover`]). A lookup or a store, and the reads a handshake's
//! lookup makes with them (the invalidation generation, the fetched
//! floor), may give up on a live holder that takes long
//! ([`Need::Optional`]: a miss or a skipped store only costs a fetch; the
//! reads answer what this process read last, which errs safely as both
//! only grow); after such a give-up its next operations only spin and
//! look at the holder once (a dead one is still taken back), for
//! [`QUIET_AFTER_GIVE_UP`] ([`GiveUps`]), so a stopped holder costs the
//! event loop one wait per period, not one per operation. An invalidation
//! (and a re-subscription's floor) gives up after the same budget too, on
//! the event loop every handshake of the
//! worker waits on, but is not lost: the worker holds it back
//! ([`Pending`]), notes it with its next zone operation or a short timer
//! ([`RETRY_EVERY`]), and meanwhile loads nothing the held-back
//! invalidation covers from the zone and stores nothing there
//! ([`Pending::skips`]): the names are fetched from the sources, as
//! after a miss. Only the master, emptying a zone it adopts for a changed
//! configuration before any worker of its cycle runs, waits longer
//! ([`Need::Required`], [`REQUIRED_BUDGET`]); a live holder that keeps the
//! lock past that does not run, and the master refuses the configuration
//! rather than hang (it answers no signal while it waits).
//!
//! A holder killed in the middle of an update may have left the zone's
//! trees and queue half changed. Every update marks the zone dirty first
//! and clean last; whoever takes the lock of a dirty zone empties it
//! ([`after_lock`]) instead of walking a torn tree: the zone is a cache.
#![forbid(unsafe_code)]

use core::fmt::Write;
use core::time::Duration;

use crate::clock::Millis;
use crate::name::is_one_label_below;

/// What the caller needs the lock for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A lookup, a store, the generation and fetched floor read on a
    /// handshake's way: may give up after [`OPTIONAL_BUDGET`] on a holder
    /// that is alive but slow (a miss, a store not made, the last value
    /// read).
    Optional,
    /// The master emptying a zone it adopts: no handshake runs in the
    /// master, so it waits up to [`REQUIRED_BUDGET`] for a live holder.
    Required,
}

/// Rounds of spinning before the first yield, on a machine with more than
/// one CPU: round `n` pauses `2^n` times, as `ngx_shmtx_lock` does with
/// its default spin of 2048 (2047 pauses in all, a few microseconds).
pub const SPIN_ROUNDS: u32 = 11;

/// Yields (`sched_yield`) before the waiter starts sleeping between tries.
pub const YIELDS: u32 = 64;

/// Sleep between tries once the yields are spent: a live holder that takes
/// this long is stopped (a debugger, SIGSTOP) or starved, not working.
pub const SLEEP: Duration = Duration::from_millis(1);

/// Longest an [`Need::Optional`] caller waits for a live holder. The
/// longest update under the lock (a wildcard invalidation walking every
/// record) takes a few milliseconds on the largest zones.
pub const OPTIONAL_BUDGET: Duration = Duration::from_millis(2);

/// Longest the master waits for a live holder ([`Need::Required`]): far
/// beyond any update under the lock, and any scheduling delay of a holder
/// that runs; one that holds the lock longer is stopped (a debugger,
/// SIGSTOP).
pub const REQUIRED_BUDGET: Duration = Duration::from_secs(3);

/// What to do after a failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Pause the CPU this many times (`ngx_cpu_pause`), then try again.
    Spin(u32),
    /// Look at the holder ([`holder`]); if it lives, `sched_yield`, then
    /// try again.
    Yield,
    /// Look at the holder; if it lives, sleep this long, then try again.
    Sleep(Duration),
    /// Stop trying: the operation is a miss, or its store is not made.
    GiveUp,
}

/// After an operation gave up on a live holder, how long this worker's
/// next optional operations only spin and look at the holder once: a
/// holder that did not run for [`OPTIONAL_BUDGET`] (stopped, starved of
/// CPU) seldom runs the next moment, and each wait stalls the event loop
/// and every handshake on it. Looking costs one `kill(pid, 0)`, so a
/// holder that died meanwhile is still taken back at once; one operation
/// per period still waits the full budget.
pub const QUIET_AFTER_GIVE_UP: Duration = RETRY_EVERY;

/// This worker's last give-up after a full wait, which decides how long
/// its next optional operations wait ([`GiveUps::wait`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GiveUps {
    /// When, on the caller's monotonic clock, and the lock word (the
    /// holder's pid) it gave up on; None once it got the lock since.
    last: Option<(Duration, i64)>,
}

impl GiveUps {
    /// How an operation for `need` that finds the lock taken at `now`,
    /// its word `word`, waits: quietly only while the holder it gave up
    /// on still holds it (another holder, one that took the lock back from
    /// a dead one or got it after a stopped one let go, is running).
    pub fn wait(&self, need: Need, smp: bool, now: Duration, word: i64) -> Wait {
        let quiet = need == Need::Optional
            && self.last.is_some_and(|(at, holder)| {
                holder == word && now.saturating_sub(at) < QUIET_AFTER_GIVE_UP
            });
        Wait {
            need,
            smp,
            failed: 0,
            quiet,
            looked: false,
        }
    }

    /// The operation that got `wait` (from [`GiveUps::wait`]) gave up at
    /// `now`; true when it had waited the full budget. Only a full wait
    /// starts a quiet period: a quiet give-up does not extend it, so one
    /// operation per period still waits.
    /// `word` is the lock word then.
    pub fn gave_up(&mut self, wait: &Wait, now: Duration, word: i64) -> bool {
        if wait.quiet {
            return false;
        }
        self.last = Some((now, word));
        true
    }

    /// The lock was taken: its holders run again.
    pub fn got_lock(&mut self) {
        self.last = None;
    }

    /// The retry timer ([`RETRY_EVERY`]) is due: its operation is the
    /// period's one full wait (the timer runs on nginx's cached clock,
    /// which can put it a moment inside the period; quiet, it would give
    /// up at once and hold the worker's invalidations back one more
    /// period).
    pub fn retry_due(&mut self) {
        self.last = None;
    }
}

/// One caller's wait for the lock.
#[derive(Debug, Clone)]
pub struct Wait {
    need: Need,
    /// Spinning is useless on one CPU: the holder cannot run meanwhile.
    smp: bool,
    failed: u32,
    /// Within a quiet period ([`GiveUps`]): give up once the spin is spent
    /// and the holder was looked at once.
    quiet: bool,
    looked: bool,
}

impl Wait {
    pub fn new(need: Need, smp: bool) -> Self {
        GiveUps::default().wait(need, smp, Duration::ZERO, 0)
    }

    /// The step after another failed try, `waited` after the first one.
    pub fn next(&mut self, waited: Duration) -> Step {
        let n = self.failed;
        self.failed = self.failed.saturating_add(1);
        if self.smp && n < SPIN_ROUNDS {
            return Step::Spin(1 << n);
        }
        if self.quiet {
            if self.looked {
                return Step::GiveUp;
            }
            self.looked = true;
            return Step::Yield;
        }
        let budget = match self.need {
            Need::Optional => OPTIONAL_BUDGET,
            Need::Required => REQUIRED_BUDGET,
        };
        if waited >= budget {
            return Step::GiveUp;
        }
        let after_spin = if self.smp { n - SPIN_ROUNDS } else { n };
        if after_spin < YIELDS {
            Step::Yield
        } else {
            Step::Sleep(SLEEP)
        }
    }
}

/// Who the lock word names (`ngx_shmtx_t.lock`: 0 when free, else the pid
/// of the process that took it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Free since the failed try: try again at once.
    Nobody,
    /// Another process, which may or may not live: ask the system
    /// (`kill(pid, 0)`) and call [`Holder::recover`].
    Process(i32),
    /// A word no process can have taken the lock with (this process's own
    /// pid while it does not hold the lock, which only a dead predecessor
    /// with the same pid can have left; or no pid at all): unlock it.
    Stale(i64),
}

/// Reads the lock word `word` seen by the process `own`.
pub fn holder(word: i64, own: i32) -> Holder {
    if word == 0 {
        Holder::Nobody
    } else if word == i64::from(own) {
        Holder::Stale(word)
    } else {
        // kill(2) with 0 or a negative pid signals process groups: never
        // ask it about such a word.
        match signalable(word) {
            Some(pid) => Holder::Process(pid),
            None => Holder::Stale(word),
        }
    }
}

impl Holder {
    /// The word to unlock by force (`ngx_shmtx_force_unlock`, which only
    /// clears the word if it still holds that value), given whether the
    /// system still knows the holder (`kill(pid, 0)` did not fail with
    /// ESRCH; a zombie not yet reaped by the master still counts).
    pub fn recover(self, alive: bool) -> Option<i64> {
        match self {
            Holder::Nobody => None,
            Holder::Process(pid) => (!alive).then_some(i64::from(pid)),
            Holder::Stale(word) => Some(word),
        }
    }
}

/// Invalidations a worker holds back, most: more collapse into `*` (every
/// name skips the zone until it is noted, which costs fetches, never a
/// removed record served).
pub const MAX_PENDING: usize = 64;

/// How often a worker with held-back invalidations tries the lock again
/// (each try gives up after [`OPTIONAL_BUDGET`]) when no handshake does.
pub const RETRY_EVERY: Duration = Duration::from_millis(50);

/// Whether an invalidation of `target` (a name, `*.parent`, or `*`) drops
/// the zone's record stored under `key`: the wildcard's own key and every
/// name one label below its parent, the keys its record may have been
/// stored under.
pub fn covers(target: &str, key: &[u8]) -> bool {
    if target == "*" {
        return true;
    }
    if key == target.as_bytes() {
        return true;
    }
    target
        .strip_prefix("*.")
        .is_some_and(|parent| is_one_label_below(key, parent.as_bytes()))
}

/// The zone operations a worker could not make within [`OPTIONAL_BUDGET`]
/// (a live holder that does not run: a debugger, SIGSTOP) and makes later,
/// in order, under the next lock it gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    /// Invalidation targets, oldest first; `*` alone once one is held.
    targets: Vec<String>,
    /// The latest re-subscription floor not yet noted.
    floor: Option<Millis>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty() && self.floor.is_none()
    }

    /// Holds back the invalidation of `target`. A `*` (or one more than
    /// [`MAX_PENDING`]) replaces them all: it covers every name.
    pub fn hold(&mut self, target: &str) {
        if self.targets.iter().any(|t| t == "*" || t == target) {
            return;
        }
        if target == "*" || self.targets.len() >= MAX_PENDING {
            self.targets.clear();
            self.targets.push("*".to_owned());
        } else {
            self.targets.push(target.to_owned());
        }
    }

    /// Holds back a re-subscription's floor (the latest one wins: floors
    /// only grow).
    pub fn hold_floor(&mut self, at: Millis) {
        self.floor = Some(self.floor.map_or(at, |f| f.max(at)));
    }

    /// Whether the zone is out of bounds for the record of `key` (a
    /// lookup is a miss, a store is not made): a held-back invalidation
    /// covers it, so the zone may still hold what it removes.
    pub fn skips(&self, key: &str) -> bool {
        self.targets.iter().any(|t| covers(t, key.as_bytes()))
    }

    /// Everything held back, to be applied in order under the lock; empty
    /// afterwards.
    pub fn take(&mut self) -> (Vec<String>, Option<Millis>) {
        (core::mem::take(&mut self.targets), self.floor.take())
    }
}

/// The pid `kill(pid, 0)` may be asked about for a pid-like `word` (a lock
/// word, a metrics slot's owner): positive and a `pid_t`; 0, negative
/// (process groups, everyone) and wider values are no process.
pub fn signalable(word: i64) -> Option<i32> {
    i32::try_from(word).ok().filter(|pid| *pid > 0)
}

/// Whether a process exists after `kill(pid, 0)`, given the error it
/// failed with (`None`: it succeeded): only "no such process" (ESRCH, the
/// caller's `esrch`) says it is gone; EPERM (another user's) and anything
/// else count as alive, so a live holder is never unlocked by force nor a
/// live worker's slot taken.
pub fn exists_after_probe(error: Option<i32>, esrch: i32) -> bool {
    error != Some(esrch)
}

/// What a process that just took the lock does with the zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterLock {
    /// Clean: go on.
    Use,
    /// A process died during an update (the dirty word holds its pid):
    /// empty the zone first.
    Reset { left_by: u64 },
}

/// The verdict on the zone's dirty word, read under the lock.
pub fn after_lock(dirty: u64) -> AfterLock {
    if dirty == 0 {
        AfterLock::Use
    } else {
        AfterLock::Reset { left_by: dirty }
    }
}

/// How a dirty zone is emptied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// Lay the slab pool out afresh (`ngx_slab_init`: its own free lists
    /// may be torn too, when the holder died inside the allocator) and
    /// take the header's pages again: the header is the pool's first
    /// allocation, in whole pages, so a fresh pool gives it the same
    /// address, which every worker keeps.
    Pool,
    /// The header is elsewhere (a zone this code did not lay out): only
    /// its trees and queue start empty; what the records held stays
    /// allocated until the zone is made anew.
    TreesOnly,
}

/// How to empty a dirty zone whose header is, or is not, at the start of
/// the pool's pages.
pub fn reset_plan(header_at_start: bool) -> Reset {
    if header_at_start {
        Reset::Pool
    } else {
        Reset::TreesOnly
    }
}

/// Bytes to ask the slab pool for the header (`size` bytes): at least more
/// than half a page, so that `ngx_slab_alloc` gives it whole pages of its
/// own, the first ones of a fresh pool ([`Reset::Pool`]).
pub fn header_alloc_size(size: usize, page: usize) -> usize {
    size.max(page / 2 + 1)
}

/// The zone's recovery counters, kept in its header (host-wide).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recoveries {
    /// Locks unlocked by force because their holder no longer existed.
    pub lock_recovered: u64,
    /// Zones emptied because a process died in the middle of an update.
    pub resets: u64,
    /// Zone operations that gave up on a live holder after
    /// [`OPTIONAL_BUDGET`] (a miss, a store not made, an invalidation
    /// held back).
    pub busy: u64,
}

/// The exposition of [`Recoveries`], appended to the zone's figures.
pub fn render(r: &Recoveries) -> String {
    let mut out = String::with_capacity(512);
    for (name, help, v) in [
        (
            "dyncert_shared_zone_lock_recovered_total",
            "Shared zone locks taken back from a process that died holding them.",
            r.lock_recovered,
        ),
        (
            "dyncert_shared_zone_resets_total",
            "Times the shared zone was emptied because a process died while updating it.",
            r.resets,
        ),
        (
            "dyncert_shared_zone_busy_total",
            "Shared zone operations that gave up waiting for its lock (a miss, a store not made, an invalidation held back).",
            r.busy,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(need: Need, smp: bool, waited: impl Fn(u32) -> Duration, n: u32) -> Vec<Step> {
        let mut w = Wait::new(need, smp);
        (0..n).map(|i| w.next(waited(i))).collect()
    }

    #[test]
    fn spins_like_nginx_then_yields_then_sleeps() {
        let s = steps(
            Need::Required,
            true,
            |_| Duration::ZERO,
            SPIN_ROUNDS + YIELDS + 2,
        );
        let spins: Vec<u32> = s
            .iter()
            .filter_map(|s| match s {
                Step::Spin(n) => Some(*n),
                _ => None,
            })
            .collect();
        assert_eq!(spins.len() as u32, SPIN_ROUNDS);
        assert_eq!(spins.iter().sum::<u32>(), 2047);
        assert!(s[SPIN_ROUNDS as usize..(SPIN_ROUNDS + YIELDS) as usize]
            .iter()
            .all(|s| *s == Step::Yield));
        assert_eq!(s[s.len() - 1], Step::Sleep(SLEEP));
    }

    #[test]
    fn one_cpu_never_spins() {
        let s = steps(Need::Required, false, |_| Duration::ZERO, 3);
        assert_eq!(s, vec![Step::Yield; 3]);
    }

    #[test]
    fn required_gives_up_only_after_seconds() {
        let mut w = Wait::new(Need::Required, true);
        for _ in 0..100_000 {
            assert_ne!(w.next(REQUIRED_BUDGET - SLEEP), Step::GiveUp);
        }
        assert_eq!(w.next(REQUIRED_BUDGET), Step::GiveUp);
    }

    #[test]
    fn optional_gives_up_after_its_budget_not_before() {
        let mut w = Wait::new(Need::Optional, true);
        for _ in 0..SPIN_ROUNDS {
            assert!(matches!(w.next(Duration::ZERO), Step::Spin(_)));
        }
        assert_eq!(w.next(OPTIONAL_BUDGET / 2), Step::Yield);
        assert_eq!(w.next(OPTIONAL_BUDGET), Step::GiveUp);
        let mut w = Wait::new(Need::Optional, false);
        assert_eq!(w.next(OPTIONAL_BUDGET), Step::GiveUp);
    }

    #[test]
    fn after_a_full_wait_gave_up_optional_operations_only_spin_for_a_while() {
        let ms = Duration::from_millis;
        let stopped = 4242;
        let mut g = GiveUps::default();
        let first = g.wait(Need::Optional, true, ms(1000), stopped);
        assert!(g.gave_up(&first, ms(1002), stopped), "a full wait");
        // Within the quiet period, the same holder: the spin, one look at
        // the holder (a dead one is taken back), then at once give up.
        let mut w = g.wait(Need::Optional, true, ms(1010), stopped);
        for _ in 0..SPIN_ROUNDS {
            assert!(matches!(w.next(Duration::ZERO), Step::Spin(_)));
        }
        assert_eq!(w.next(Duration::ZERO), Step::Yield);
        assert_eq!(w.next(Duration::ZERO), Step::GiveUp);
        let mut w = g.wait(Need::Optional, false, ms(1010), stopped);
        assert_eq!(w.next(Duration::ZERO), Step::Yield, "one CPU: no spin");
        assert_eq!(w.next(Duration::ZERO), Step::GiveUp);
        // A quiet give-up does not extend the period: one operation per
        // period still waits the full budget (and looks at the holder).
        assert!(!g.gave_up(&w, ms(1040), stopped), "a quiet give-up");
        let mut w = g.wait(
            Need::Optional,
            true,
            ms(1002) + QUIET_AFTER_GIVE_UP,
            stopped,
        );
        let steps: Vec<Step> = (0..SPIN_ROUNDS + 1)
            .map(|_| w.next(Duration::ZERO))
            .collect();
        assert_eq!(steps.last(), Some(&Step::Yield));
        // The master's wait is never shortened.
        let mut w = g.wait(Need::Required, true, ms(1010), stopped);
        for _ in 0..SPIN_ROUNDS {
            w.next(Duration::ZERO);
        }
        assert_eq!(w.next(REQUIRED_BUDGET / 2), Step::Yield);
        // Once the lock was taken, operations wait again.
        g.got_lock();
        let mut w = g.wait(Need::Optional, false, ms(1011), stopped);
        assert_eq!(w.next(Duration::ZERO), Step::Yield);
        assert_eq!(w.next(Duration::ZERO), Step::Yield);
    }

    #[test]
    fn the_quiet_period_is_for_the_holder_given_up_on() {
        let ms = Duration::from_millis;
        let (stopped, running) = (4242, 4343);
        let mut g = GiveUps::default();
        let first = g.wait(Need::Optional, false, ms(0), stopped);
        assert!(g.gave_up(&first, ms(2), stopped));
        // The stopped holder died and another worker took the lock back:
        // it runs, so it is waited for as usual.
        let mut w = g.wait(Need::Optional, false, ms(5), running);
        assert_eq!(w.next(Duration::ZERO), Step::Yield);
        assert_eq!(w.next(Duration::ZERO), Step::Yield);
        assert_eq!(w.next(OPTIONAL_BUDGET), Step::GiveUp);
        // Still quiet for the stopped one.
        let mut w = g.wait(Need::Optional, false, ms(6), stopped);
        assert_eq!(w.next(Duration::ZERO), Step::Yield);
        assert_eq!(w.next(Duration::ZERO), Step::GiveUp);
    }

    #[test]
    fn the_retry_timer_waits_the_full_budget_even_a_moment_inside_the_period() {
        let ms = Duration::from_millis;
        let stopped = 4242;
        let mut g = GiveUps::default();
        let first = g.wait(Need::Optional, false, ms(0), stopped);
        assert!(g.gave_up(&first, ms(2), stopped));
        // The timer fires on nginx's cached clock, 48 ms after the give-up
        // by the monotonic one.
        g.retry_due();
        let mut w = g.wait(Need::Optional, false, ms(50), stopped);
        assert_eq!(w.next(Duration::ZERO), Step::Yield);
        assert_eq!(w.next(Duration::ZERO), Step::Yield);
        assert_eq!(w.next(OPTIONAL_BUDGET), Step::GiveUp);
        // Its full wait starts the next period.
        assert!(g.gave_up(&w, ms(52), stopped));
        let mut w = g.wait(Need::Optional, false, ms(60), stopped);
        assert_eq!(w.next(Duration::ZERO), Step::Yield);
        assert_eq!(w.next(Duration::ZERO), Step::GiveUp);
    }

    #[test]
    fn what_an_invalidation_covers_in_the_zone() {
        assert!(covers("*", b"a.example.com"));
        assert!(covers("a.example.com", b"a.example.com"));
        assert!(!covers("a.example.com", b"b.example.com"));
        assert!(covers("*.example.com", b"*.example.com"));
        assert!(covers("*.example.com", b"a.example.com"));
        assert!(!covers("*.example.com", b"a.b.example.com"));
        assert!(!covers("*.example.com", b"example.com"));
        assert!(!covers("*.example.com", b"a.example.org"));
    }

    #[test]
    fn held_back_invalidations_skip_what_they_cover_only() {
        let mut p = Pending::default();
        assert!(p.is_empty());
        assert!(!p.skips("a.example.com"));
        p.hold("a.example.com");
        p.hold("*.example.org");
        p.hold("a.example.com");
        assert!(!p.is_empty());
        assert!(p.skips("a.example.com"));
        assert!(p.skips("x.example.org"));
        assert!(p.skips("*.example.org"));
        assert!(!p.skips("b.example.com"));
        let (targets, floor) = p.take();
        assert_eq!(targets, ["a.example.com", "*.example.org"]);
        assert_eq!(floor, None);
        assert!(p.is_empty());
        assert!(!p.skips("a.example.com"));
    }

    #[test]
    fn a_held_back_star_or_too_many_skip_every_name() {
        let mut p = Pending::default();
        p.hold("a.example.com");
        p.hold("*");
        p.hold("b.example.com");
        assert_eq!(p.take().0, ["*"]);
        for i in 0..MAX_PENDING {
            p.hold(&format!("n{i}.example.com"));
        }
        assert!(!p.skips("other.example.com"));
        p.hold("one.more.example.com");
        assert!(p.skips("other.example.com"));
        assert_eq!(p.take().0, ["*"]);
    }

    #[test]
    fn a_held_back_floor_keeps_the_latest_and_skips_nothing() {
        let mut p = Pending::default();
        p.hold_floor(20);
        p.hold_floor(10);
        assert!(!p.is_empty());
        // The worker that noted it judges its loads by its own epoch.
        assert!(!p.skips("a.example.com"));
        assert_eq!(p.take(), (Vec::new(), Some(20)));
        assert!(p.is_empty());
    }

    #[test]
    fn one_rule_for_asking_the_system_about_a_pid() {
        assert_eq!(signalable(4242), Some(4242));
        assert_eq!(signalable(0), None);
        assert_eq!(signalable(-1), None);
        assert_eq!(signalable(1 << 40), None);
        const ESRCH: i32 = 3;
        const EPERM: i32 = 1;
        assert!(exists_after_probe(None, ESRCH));
        assert!(exists_after_probe(Some(EPERM), ESRCH));
        assert!(!exists_after_probe(Some(ESRCH), ESRCH));
    }

    #[test]
    fn holder_words() {
        assert_eq!(holder(0, 100), Holder::Nobody);
        assert_eq!(holder(4242, 100), Holder::Process(4242));
        // Our own pid while we do not hold the lock: a dead predecessor.
        assert_eq!(holder(100, 100), Holder::Stale(100));
        // Never a pid kill(2) would read as a process group or everyone.
        assert_eq!(holder(-1, 100), Holder::Stale(-1));
        assert_eq!(holder(-4242, 100), Holder::Stale(-4242));
        assert_eq!(holder(1 << 40, 100), Holder::Stale(1 << 40));
    }

    #[test]
    fn only_a_gone_or_impossible_holder_is_unlocked() {
        assert_eq!(Holder::Process(4242).recover(true), None);
        assert_eq!(Holder::Process(4242).recover(false), Some(4242));
        assert_eq!(Holder::Stale(100).recover(true), Some(100));
        assert_eq!(Holder::Nobody.recover(false), None);
    }

    #[test]
    fn dirty_zone_is_reset() {
        assert_eq!(after_lock(0), AfterLock::Use);
        assert_eq!(after_lock(4242), AfterLock::Reset { left_by: 4242 });
        assert_eq!(reset_plan(true), Reset::Pool);
        assert_eq!(reset_plan(false), Reset::TreesOnly);
    }

    #[test]
    fn header_takes_whole_pages() {
        assert_eq!(header_alloc_size(4400, 4096), 4400);
        assert_eq!(header_alloc_size(100, 4096), 2049);
        assert_eq!(header_alloc_size(4400, 65536), 32769);
        // slab_pages counts it as pages of its own.
        assert!(crate::tier::slab_pages(header_alloc_size(100, 4096), 4096) >= 1);
    }

    #[test]
    fn renders_both_counters() {
        let t = render(&Recoveries {
            lock_recovered: 2,
            resets: 1,
            busy: 5,
        });
        assert!(t.contains("# TYPE dyncert_shared_zone_lock_recovered_total counter\n"));
        assert!(t.contains("dyncert_shared_zone_lock_recovered_total 2\n"));
        assert!(t.contains("dyncert_shared_zone_resets_total 1\n"));
        assert!(t.contains("dyncert_shared_zone_busy_total 5\n"));
    }
}
