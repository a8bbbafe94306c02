//! Singleflight for certificate fetches with a global cap on fetches in
//! flight.
//!
//! Many connections for one new name must cost one Redis/API lookup, and a
//! flood of random names must not queue unbounded work behind Redis: past
//! the cap a connection is not parked at all and goes on to the handshake,
//! where it gets the default certificate (or is rejected) without waiting.
//! Generic over the waiter type so the glue can queue whatever identifies a
//! parked connection, and tests can use plain integers.

use std::collections::HashMap;

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

/// Names being fetched, each with the waiters to wake when it completes.
#[derive(Debug)]
pub struct Inflight<W> {
    cap: usize,
    fetches: HashMap<String, Vec<W>>,
}

impl<W> Inflight<W> {
    /// `cap` is the most fetches in flight at once; 0 refuses every fetch.
    pub fn new(cap: usize) -> Self {
        Inflight {
            cap,
            fetches: HashMap::new(),
        }
    }

    /// Registers interest in `name`; `waiter` (if Some) is queued to be
    /// woken on completion. Started counts toward the cap; Refused when a
    /// new fetch would exceed it (waiter NOT queued).
    ///
    /// Joining a running fetch is never refused: it costs no extra I/O.
    pub fn join(&mut self, name: &str, waiter: Option<W>) -> Join {
        if let Some(waiters) = self.fetches.get_mut(name) {
            waiters.extend(waiter);
            return Join::Joined;
        }
        if self.fetches.len() >= self.cap {
            return Join::Refused;
        }
        self.fetches
            .insert(name.to_owned(), waiter.into_iter().collect());
        Join::Started
    }

    /// The fetch for `name` finished: returns all queued waiters (in the
    /// order they joined) and frees the slot. Unknown names yield none.
    pub fn complete(&mut self, name: &str) -> Vec<W> {
        self.fetches.remove(name).unwrap_or_default()
    }

    /// Remove one waiter (e.g. its timer fired) matching `pred`; returns
    /// it. The fetch stays in flight: its result still fills the cache.
    pub fn remove_waiter(&mut self, name: &str, mut pred: impl FnMut(&W) -> bool) -> Option<W> {
        let waiters = self.fetches.get_mut(name)?;
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
}
