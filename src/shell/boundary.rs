//! Panic boundary and logging shared by every `extern "C"` entry point.
//!
//! A panic must never unwind into nginx (undefined behaviour, and a dead
//! worker). Each entry point runs its body through [`guard`]: a bug fails
//! one handshake or connection and leaves an ALERT line, nothing more.

use std::panic::{catch_unwind, AssertUnwindSafe};

use ngx::ffi::{ngx_log_t, ngx_uint_t, NGX_LOG_ALERT};
use ngx::ngx_log_error;

/// Runs `f`; on panic logs an ALERT naming `what` and returns `fallback`.
pub fn guard<R>(what: &str, fallback: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            log(
                NGX_LOG_ALERT as ngx_uint_t,
                &format!("dyncert: internal error (panic) while {what}"),
            );
            fallback
        }
    }
}

/// The cycle's log: valid for the whole life of a process once nginx has
/// started, and only ever used from the event loop thread.
pub fn cycle_log() -> *mut ngx_log_t {
    ngx::log::ngx_cycle_log().as_ptr()
}

/// Writes `msg` at `level` to the cycle log.
pub fn log(level: ngx_uint_t, msg: &str) {
    log_to(cycle_log(), level, msg);
}

/// Writes `msg` at `level` to `log` (a connection's or the cycle's).
pub fn log_to(log: *mut ngx_log_t, level: ngx_uint_t, msg: &str) {
    if log.is_null() {
        return;
    }
    ngx_log_error!(level, log, "{}", msg);
}
