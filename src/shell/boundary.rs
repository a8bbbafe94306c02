//! The panic boundary of every `extern "C"` entry point.
//!
//! A panic must never unwind into nginx (undefined behaviour, and a dead
//! worker). Each entry point runs its body through [`guard`]: a bug fails
//! one handshake or connection and leaves an ALERT line, nothing more.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::log::Log;

/// Runs `f`; on panic logs an ALERT naming `what` and returns `fallback`.
pub fn guard<R>(what: &str, fallback: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            Log::cycle().alert(format_args!("dyncert: internal error (panic) while {what}"));
            fallback
        }
    }
}
