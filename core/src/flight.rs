//! Singleflight for certificate fetches with a global cap on fetches in
//! flight.
//!
//! Many connections for one new name must cost one Redis/API lookup, and a
//! flood of random names must not queue unbounded work behind Redis: past
//! the cap a connection is not parked at all and goes on to the handshake,
//! where it gets the default certificate (or is rejected) without waiting.
//! Generic over the waiter type so the glue can queue whatever identifies a
//! parked connection, and tests can use plain integers.
//!
//! A name leaves the table when its fetch reports. A fetch that never
//! reports (a bug: a panic that lost its result) must not hold the name
//! and its slot for the process's life, every later connection for it
//! parked in vain: with a deadline ([`Inflight::with_deadline`]), an entry
//! older than it is started again by the next [`Inflight::join_at`].
//!
//! Each start of a fetch (the first, a restart after the deadline, a
//! fetch asked again for the same entry) is an attempt with an id of its
//! own, never reused by this table ([`Inflight::attempt`]): after a
//! restart two fetches of one name may answer, and only the current
//! attempt's answer may complete the entry ([`Inflight::is_current`]). The
//! other one read its sources before the restart, perhaps before an
//! invalidation the restart's fetch saw.

use std::collections::HashMap;

use crate::clock::Millis;

/// The outcome of [`Inflight::join`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// The caller must start a fetch.
    Started,
    /// A fetch for this name is already running; the waiter was queued.
    Joined,
    /// Cap reached: no fetch, the caller proceeds without waiting.
    Refused,
}

/// How long an entry may wait for its fetch's report before the next join
/// starts the fetch again: the longer of what a waiter waits
/// (`fetch_timeout`) and what a lookup may take (`lookup_bound`), plus
/// `margin` (an event loop busy with other work applies a report late).
/// Past it no waiter of the first fetch is left (each left when its own
/// timer, at most `fetch_timeout`, fired) and the lookup has run out of
/// every bound it has: its report is lost. Saturating; at least 1 ms.
pub fn deadline(fetch_timeout: Millis, lookup_bound: Millis, margin: Millis) -> Millis {
    fetch_timeout
        .max(lookup_bound)
        .saturating_add(margin)
        .max(1)
}

/// Whether an entry started at `started` is past `deadline` at `now`. A
/// clock that went back (`now` before `started`) makes it younger, never
/// overdue. The clock is a monotonic one ([`crate::clock::monotonic_ms`]):
/// a wall clock stepped forward would make every entry overdue at once.
pub fn overdue(started: Millis, now: Millis, deadline: Millis) -> bool {
    now.saturating_sub(started) >= deadline
}

/// Which start of a fetch an answer belongs to: see [`Inflight::attempt`].
pub type Attempt = u64;

#[derive(Debug)]
struct Entry<W> {
    /// When the current attempt was started (the clock
    /// [`Inflight::join_at`] got); `None`: started by the clockless
    /// [`Inflight::join`], never overdue.
    started: Option<Millis>,
    /// The current attempt.
    attempt: Attempt,
    waiters: Vec<W>,
}

/// Names being fetched, each with the waiters to wake when it completes.
#[derive(Debug)]
pub struct Inflight<W> {
    cap: usize,
    /// See [`deadline`]; `None`: an entry waits for its report forever.
    deadline: Option<Millis>,
    fetches: HashMap<String, Entry<W>>,
    /// The last attempt id given out (ids start at 1).
    attempts: Attempt,
}

impl<W> Inflight<W> {
    /// `cap` is the most fetches in flight at once; 0 refuses every fetch.
    /// No deadline: see [`Inflight::with_deadline`].
    pub fn new(cap: usize) -> Self {
        Inflight {
            cap,
            deadline: None,
            fetches: HashMap::new(),
            attempts: 0,
        }
    }

    /// Entries older than `deadline` ms (see [`deadline`]) are started
    /// again by the next [`Inflight::join_at`].
    pub fn with_deadline(mut self, deadline: Millis) -> Self {
        self.deadline = Some(deadline.max(1));
        self
    }

    /// Registers interest in `name`; `waiter` (if Some) is queued to be
    /// woken on completion. Started counts toward the cap; Refused when a
    /// new fetch would exceed it (waiter NOT queued).
    ///
    /// Joining a running fetch is never refused: it costs no extra I/O.
    /// Without a clock: no entry is ever overdue.
    pub fn join(&mut self, name: &str, waiter: Option<W>) -> Join {
        self.join_entry(name, waiter, None)
    }

    /// [`Inflight::join`] at `now` (monotonic): an entry of `name` past the
    /// deadline ([`Inflight::is_overdue`]) is started again: `Started`, the
    /// caller starts a fetch as for a new name; the entry keeps its slot
    /// and its waiters (woken by the new attempt's answer, or by their own
    /// timers), its clock starts again at `now`, and it has a new attempt
    /// id: the first fetch's answer is no longer current.
    pub fn join_at(&mut self, name: &str, waiter: Option<W>, now: Millis) -> Join {
        self.join_entry(name, waiter, Some(now))
    }

    fn join_entry(&mut self, name: &str, waiter: Option<W>, now: Option<Millis>) -> Join {
        let overdue = self.is_overdue_at(name, now);
        if let Some(entry) = self.fetches.get_mut(name) {
            entry.waiters.extend(waiter);
            if !overdue {
                return Join::Joined;
            }
            self.attempts += 1;
            entry.attempt = self.attempts;
            entry.started = now;
            return Join::Started;
        }
        if self.fetches.len() >= self.cap {
            return Join::Refused;
        }
        self.attempts += 1;
        let entry = Entry {
            started: now,
            attempt: self.attempts,
            waiters: waiter.into_iter().collect(),
        };
        self.fetches.insert(name.to_owned(), entry);
        Join::Started
    }

    /// Whether the fetch of `name` is in flight and past the deadline at
    /// `now`: the next [`Inflight::join_at`] starts it again.
    pub fn is_overdue(&self, name: &str, now: Millis) -> bool {
        self.is_overdue_at(name, Some(now))
    }

    fn is_overdue_at(&self, name: &str, now: Option<Millis>) -> bool {
        match (self.fetches.get(name), self.deadline, now) {
            (
                Some(Entry {
                    started: Some(s), ..
                }),
                Some(d),
                Some(now),
            ) => overdue(*s, now, d),
            _ => false,
        }
    }

    /// The current attempt of the fetch of `name`, if in flight: the id
    /// the caller sends with the fetch it starts after `Started`, and that
    /// comes back with its answer.
    pub fn attempt(&self, name: &str) -> Option<Attempt> {
        self.fetches.get(name).map(|e| e.attempt)
    }

    /// Whether an answer of attempt `attempt` is the current attempt's of
    /// `name`: only that one may complete the entry. An answer of an
    /// attempt started again since (or of a name no longer in flight)
    /// read its sources before the current one did.
    pub fn is_current(&self, name: &str, attempt: Attempt) -> bool {
        self.attempt(name) == Some(attempt)
    }

    /// The fetch of `name` is started again for the same waiters (its
    /// answer could not be used: asked again): a new attempt id, and its
    /// clock starts again at `now`. `None` when `name` is not in flight.
    pub fn again(&mut self, name: &str, now: Option<Millis>) -> Option<Attempt> {
        let entry = self.fetches.get_mut(name)?;
        self.attempts += 1;
        entry.attempt = self.attempts;
        entry.started = now;
        Some(entry.attempt)
    }

    /// The fetch for `name` finished: returns all queued waiters (in the
    /// order they joined) and frees the slot. Unknown names yield none.
    pub fn complete(&mut self, name: &str) -> Vec<W> {
        self.fetches
            .remove(name)
            .map(|e| e.waiters)
            .unwrap_or_default()
    }

    /// Remove one waiter (e.g. its timer fired) matching `pred`; returns
    /// it. The fetch stays in flight: its result still fills the cache.
    pub fn remove_waiter(&mut self, name: &str, mut pred: impl FnMut(&W) -> bool) -> Option<W> {
        let waiters = &mut self.fetches.get_mut(name)?.waiters;
        let position = waiters.iter().position(&mut pred)?;
        Some(waiters.remove(position))
    }

    /// Names in flight, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fetches.keys().map(String::as_str)
    }

    pub fn is_in_flight(&self, name: &str) -> bool {
        self.fetches.contains_key(name)
    }

    pub fn in_flight(&self) -> usize {
        self.fetches.len()
    }

    pub fn cap(&self) -> usize {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_join_starts_a_fetch_and_later_joins_share_it() {
        let mut flight = Inflight::new(4);
        assert_eq!(flight.join("a.example", Some(1)), Join::Started);
        assert_eq!(flight.join("a.example", Some(2)), Join::Joined);
        assert_eq!(flight.join("a.example", None), Join::Joined);
        assert_eq!(flight.in_flight(), 1);
        assert!(flight.is_in_flight("a.example"));
        assert_eq!(flight.complete("a.example"), [1, 2]);
        assert!(!flight.is_in_flight("a.example"));
        assert_eq!(flight.in_flight(), 0);
    }

    #[test]
    fn start_without_waiter_completes_with_no_waiters() {
        let mut flight: Inflight<u32> = Inflight::new(1);
        assert_eq!(flight.join("a", None), Join::Started);
        assert!(flight.complete("a").is_empty());
    }

    #[test]
    fn new_fetch_beyond_the_cap_is_refused_without_queueing() {
        let mut flight = Inflight::new(2);
        assert_eq!(flight.join("a", Some(1)), Join::Started);
        assert_eq!(flight.join("b", Some(2)), Join::Started);
        assert_eq!(flight.join("c", Some(3)), Join::Refused);
        assert!(!flight.is_in_flight("c"));
        assert_eq!(flight.in_flight(), 2);
        assert_eq!(flight.cap(), 2);
        let mut names: Vec<&str> = flight.names().collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        // Joining an existing fetch still works at the cap.
        assert_eq!(flight.join("a", Some(4)), Join::Joined);
        assert_eq!(flight.complete("a"), [1, 4]);
        assert_eq!(flight.join("c", Some(3)), Join::Started);
    }

    #[test]
    fn cap_zero_refuses_every_fetch() {
        let mut flight = Inflight::new(0);
        assert_eq!(flight.join("a", Some(1)), Join::Refused);
        assert_eq!(flight.in_flight(), 0);
    }

    #[test]
    fn removed_waiter_is_not_woken_and_the_fetch_stays_in_flight() {
        let mut flight = Inflight::new(2);
        flight.join("a", Some(1));
        flight.join("a", Some(2));
        flight.join("a", Some(3));
        assert_eq!(flight.remove_waiter("a", |&w| w == 2), Some(2));
        assert_eq!(flight.remove_waiter("a", |&w| w == 2), None);
        assert_eq!(flight.remove_waiter("b", |_| true), None);
        assert!(flight.is_in_flight("a"));
        assert_eq!(flight.complete("a"), [1, 3]);
    }

    #[test]
    fn completing_an_unknown_name_returns_no_waiters() {
        let mut flight: Inflight<u8> = Inflight::new(1);
        assert!(flight.complete("nothing").is_empty());
        assert_eq!(flight.in_flight(), 0);
    }

    #[test]
    fn deadline_is_the_longer_bound_plus_the_margin() {
        // Module defaults: fetch 2 s, a lookup bounded at 11 s, margin 1 s.
        assert_eq!(deadline(2_000, 11_000, 1_000), 12_000);
        // A waiter's own wait longer than any lookup.
        assert_eq!(deadline(30_000, 11_000, 1_000), 31_000);
        assert_eq!(deadline(Millis::MAX, 0, 1_000), Millis::MAX);
        assert_eq!(deadline(0, 0, 0), 1);
    }

    #[test]
    fn overdue_from_the_deadline_on_and_never_when_the_clock_went_back() {
        assert!(!overdue(1_000, 1_000, 500));
        assert!(!overdue(1_000, 1_499, 500));
        assert!(overdue(1_000, 1_500, 500));
        assert!(overdue(1_000, Millis::MAX, 500));
        assert!(!overdue(5_000, 1_000, 500));
    }

    #[test]
    fn a_fetch_that_never_reports_is_started_again_after_the_deadline() {
        let mut flight = Inflight::new(1).with_deadline(3_000);
        assert_eq!(flight.join_at("a", Some(1), 10_000), Join::Started);
        assert_eq!(flight.join_at("a", Some(2), 12_999), Join::Joined);
        assert!(!flight.is_overdue("a", 12_999));
        // The report never came: the next join starts the fetch again,
        // in the same slot (the cap of 1 does not refuse it).
        assert!(flight.is_overdue("a", 13_000));
        assert_eq!(flight.join_at("a", Some(3), 13_000), Join::Started);
        assert_eq!(flight.in_flight(), 1);
        // Its clock starts again: joins within the new deadline share it.
        assert!(!flight.is_overdue("a", 15_999));
        assert_eq!(flight.join_at("a", None, 15_999), Join::Joined);
        assert_eq!(flight.join_at("a", Some(4), 16_000), Join::Started);
        // The waiters still queued are woken by whichever fetch reports.
        assert_eq!(flight.complete("a"), [1, 2, 3, 4]);
        assert!(!flight.is_overdue("a", 99_000));
        assert_eq!(flight.in_flight(), 0);
    }

    #[test]
    fn an_overdue_name_does_not_hold_its_slot_against_others() {
        let mut flight = Inflight::new(1).with_deadline(1_000);
        assert_eq!(flight.join_at("stuck", Some(1), 0), Join::Started);
        // The slot is taken by the stuck name until it is joined again;
        // a restart is charged to the same slot, never a second one.
        assert_eq!(flight.join_at("other", Some(2), 5_000), Join::Refused);
        assert_eq!(flight.join_at("stuck", Some(3), 5_000), Join::Started);
        assert_eq!(flight.in_flight(), 1);
        assert_eq!(flight.complete("stuck"), [1, 3]);
        assert_eq!(flight.join_at("other", Some(2), 5_000), Join::Started);
    }

    #[test]
    fn removed_waiters_of_an_overdue_entry_stay_removed() {
        let mut flight = Inflight::new(2).with_deadline(100);
        flight.join_at("a", Some(1), 0);
        flight.join_at("a", Some(2), 50);
        // Waiter 1's timer fired (it is answered as a timeout by the glue).
        assert_eq!(flight.remove_waiter("a", |&w| w == 1), Some(1));
        assert_eq!(flight.join_at("a", Some(3), 100), Join::Started);
        assert_eq!(flight.complete("a"), [2, 3]);
    }

    #[test]
    fn without_a_deadline_or_a_clock_an_entry_waits_for_its_report() {
        let mut flight = Inflight::new(1);
        assert_eq!(flight.join_at("a", Some(1), 0), Join::Started);
        assert!(!flight.is_overdue("a", Millis::MAX));
        assert_eq!(flight.join_at("a", Some(2), Millis::MAX), Join::Joined);
        // join (no clock) never restarts, even with a deadline, and an
        // entry it started has no clock: never overdue (review4 F8's nit).
        let mut timed = Inflight::new(1).with_deadline(1);
        assert_eq!(timed.join("a", Some(1)), Join::Started);
        assert_eq!(timed.join("a", Some(2)), Join::Joined);
        assert_eq!(timed.join_at("a", Some(3), 0), Join::Joined);
        assert_eq!(timed.join_at("a", Some(4), 1), Join::Joined);
        assert!(!timed.is_overdue("a", Millis::MAX));
        assert_eq!(timed.join_at("a", Some(5), Millis::MAX), Join::Joined);
    }

    #[test]
    fn each_start_of_a_fetch_is_an_attempt_of_its_own() {
        let mut flight = Inflight::new(2).with_deadline(1_000);
        assert_eq!(flight.attempt("a"), None);
        assert_eq!(flight.join_at("a", Some(1), 0), Join::Started);
        let first = flight.attempt("a").unwrap();
        assert!(flight.is_current("a", first));
        assert_eq!(flight.join_at("a", Some(2), 999), Join::Joined);
        assert_eq!(flight.attempt("a"), Some(first));
        // Restarted after the deadline: the first attempt's answer is no
        // longer the entry's.
        assert_eq!(flight.join_at("a", Some(3), 1_000), Join::Started);
        let second = flight.attempt("a").unwrap();
        assert_ne!(second, first);
        assert!(!flight.is_current("a", first));
        assert!(flight.is_current("a", second));
        // Asked again for the same waiters: another attempt, clock reset.
        let third = flight.again("a", Some(1_500)).unwrap();
        assert!(!flight.is_current("a", second) && flight.is_current("a", third));
        assert!(!flight.is_overdue("a", 2_499));
        assert!(flight.is_overdue("a", 2_500));
        assert_eq!(flight.again("b", Some(0)), None);
        // Another name's ids never repeat this one's.
        assert_eq!(flight.join_at("b", None, 0), Join::Started);
        let b = flight.attempt("b").unwrap();
        assert!(![first, second, third].contains(&b));
        assert!(!flight.is_current("b", third));
        // Completed, then started afresh: a late answer of any earlier
        // attempt is not the new entry's.
        assert_eq!(flight.complete("a"), [1, 2, 3]);
        assert!(!flight.is_current("a", third));
        assert_eq!(flight.join_at("a", None, 3_000), Join::Started);
        let fourth = flight.attempt("a").unwrap();
        assert!([first, second, third, b].iter().all(|&x| x != fourth));
        assert!(!flight.is_current("a", third));
    }
}
