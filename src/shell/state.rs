//! The per-worker state: the core's [`Worker`] (cache, in-flight fetches,
//! parked connections) with its fetcher, and the nginx connection that
//! watches the fetcher's wake-up socket. The lifecycle file installs it in
//! `init_process` and takes it back in `exit_process`; the peek, ssl,
//! access and ACME files reach it through [`with_worker`].

use std::cell::RefCell;

use dyncert_core::fetch::Fetcher;
use dyncert_core::flight::Attempt;
use dyncert_core::tier::TierHit;
use dyncert_core::worker::{FetchQueue, Worker};
use ngx::ffi::{ngx_atomic_uint_t, ngx_connection_t, ngx_msec_t};

use super::log::{debug, Log};

/// A connection parked by the peek step behind an in-flight fetch. nginx
/// reuses connection structures, so the number tells whether the structure
/// still holds the connection that was parked.
pub struct Parked {
    pub c: *mut ngx_connection_t,
    pub number: ngx_atomic_uint_t,
}

/// The worker's fetcher as the core's [`FetchQueue`]: the lookups the core
/// decides to start go to the fetcher thread, each with a debug line.
pub struct Fetches(pub Fetcher);

impl FetchQueue for Fetches {
    fn request(&self, name: &str, attempt: Attempt) -> bool {
        let queued = self.0.request(name, attempt);
        debug!(
            Log::cycle(),
            "dyncert: fetch {} (attempt {attempt}), name: \"{name}\"",
            if queued { "started" } else { "not queued" }
        );
        queued
    }

    fn load(&self, name: &str, hit: TierHit, attempt: Attempt) -> bool {
        let queued = self.0.load(name, hit, attempt);
        debug!(
            Log::cycle(),
            "dyncert: shared zone record {} (attempt {attempt}), name: \"{name}\"",
            if queued { "being loaded" } else { "not queued" }
        );
        queued
    }

    fn on_demand(&self, name: &str) -> bool {
        self.0.request_on_demand(name)
    }
}

pub struct State {
    pub worker: Worker<Parked, Fetches>,
    /// nginx connection wrapping the fetcher's wake-up socket.
    pub notify: *mut ngx_connection_t,
    pub fetch_timeout: ngx_msec_t,
}

thread_local! {
    // Only the event loop thread (the worker's main thread) ever sees this.
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// Makes `state` this worker's (init_process).
pub fn install(state: State) {
    STATE.with(|s| *s.borrow_mut() = Some(state));
}

/// Takes the worker's state back (exit_process).
pub fn take() -> Option<State> {
    STATE.with(|s| s.borrow_mut().take())
}

/// Runs `f` on the worker state if the fetcher runs in this process.
/// Never call nginx from inside `f` (it may re-enter dyncert).
pub fn with_worker<R>(f: impl FnOnce(&mut Worker<Parked, Fetches>) -> R) -> Option<R> {
    STATE.with(|s| {
        let mut s = s.try_borrow_mut().ok()?;
        s.as_mut().map(|st| f(&mut st.worker))
    })
}

/// The park/peek timeout, if dyncert runs in this worker.
pub fn fetch_timeout() -> Option<ngx_msec_t> {
    STATE.with(|s| s.try_borrow().ok()?.as_ref().map(|st| st.fetch_timeout))
}
