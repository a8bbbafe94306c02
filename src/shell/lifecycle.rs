//! Worker lifecycle: starts the fetcher thread in `init_process`, watches
//! its wake-up socket as an nginx read event, applies finished fetches on
//! the event loop and wakes parked connections; stops it in `exit_process`.

use core::ptr;

use dyncert_core::clock::{Clock, SystemClock};
use dyncert_core::fetch::{Event, Fetcher};
use dyncert_core::worker::{Level, Worker};
use ngx::ffi::{
    ngx_cycle_t, ngx_event_t, ngx_free_connection, ngx_get_connection, ngx_handle_read_event,
    ngx_int_t,
};
use ngx::http::HttpModuleMainConf;

use super::boundary::guard;
use super::log::Log;
use super::peek;
use super::state::{self, with_worker, State};
use crate::Module;

/// `init_process`: start the fetcher (threads only in workers, never in the
/// master, which forks).
///
/// # Safety
/// Called by nginx in a worker with the current cycle.
pub unsafe extern "C" fn ngx_http_dyncert_init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    guard("starting the worker", ngx::ffi::NGX_OK as ngx_int_t, || {
        // SAFETY: cycle is the live current cycle.
        let Some(mcf) = Module::main_conf(unsafe { &*cycle }) else {
            return ngx::ffi::NGX_OK as ngx_int_t;
        };
        // Cache manager and loader processes run init_process too: they
        // serve no connections and must not start threads.
        // SAFETY: ngx_process is set before init_process and only read here.
        let process = unsafe { ngx::ffi::ngx_process } as u32;
        if process != ngx::ffi::NGX_PROCESS_WORKER && process != ngx::ffi::NGX_PROCESS_SINGLE {
            return ngx::ffi::NGX_OK as ngx_int_t;
        }
        super::metrics::claim_worker_slot();
        if !mcf.enabled {
            return ngx::ffi::NGX_OK as ngx_int_t;
        }
        let cfg = match mcf.fetcher_config() {
            Ok(cfg) => cfg,
            Err(e) => {
                Log::cycle().alert(format_args!("dyncert: {e} while starting the worker"));
                return ngx::ffi::NGX_OK as ngx_int_t;
            }
        };
        // The fetcher's threads (and the ones they start) inherit a mask
        // that blocks every signal: nginx's signals (reload, quit, child
        // exits) must reach the event loop thread, never a helper thread.
        let fetcher = match with_signals_blocked(|| Fetcher::start(cfg)) {
            Ok(f) => f,
            Err(e) => {
                // Serve defaults rather than refuse to run.
                Log::cycle().alert(format_args!(
                    "dyncert: cannot start the fetcher thread ({e}) while starting the worker"
                ));
                return ngx::ffi::NGX_OK as ngx_int_t;
            }
        };
        // SAFETY: the fd is a valid open socket owned by the fetcher, which
        // lives until exit_process frees this connection first.
        let c = unsafe { ngx_get_connection(fetcher.wake_fd(), (*cycle).log) };
        if c.is_null() {
            Log::cycle().alert(format_args!(
                "dyncert: no free connection for the fetcher socket while starting the worker"
            ));
            return ngx::ffi::NGX_OK as ngx_int_t;
        }
        // SAFETY: c was just handed out by ngx_get_connection.
        unsafe {
            let rev = (*c).read;
            (*rev).handler = Some(ngx_http_dyncert_notify_handler);
            (*rev).log = (*cycle).log;
            (*c).data = ptr::null_mut();
            if ngx_handle_read_event(rev, 0) != ngx::ffi::NGX_OK as ngx_int_t {
                ngx_free_connection(c);
                Log::cycle().alert(format_args!(
                    "dyncert: cannot watch the fetcher socket while starting the worker"
                ));
                return ngx::ffi::NGX_OK as ngx_int_t;
            }
        }
        let state = State {
            worker: Worker::new(
                mcf.cache(),
                mcf.fetch_concurrency(),
                fetcher,
                Box::new(super::metrics::ShmSink),
            ),
            notify: c,
            fetch_timeout: mcf.fetch_timeout(),
        };
        state::install(state);
        ngx::ffi::NGX_OK as ngx_int_t
    })
}

/// Runs `f` with every signal blocked in this thread (threads started by
/// `f` inherit that mask), then restores the mask.
fn with_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: sigfillset/pthread_sigmask(3) on sets owned by this frame.
    unsafe {
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        let blocked = libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old) == 0;
        let r = f();
        if blocked {
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut());
        }
        r
    }
}

/// `exit_process`: stop the fetcher thread.
///
/// # Safety
/// Called by nginx in a worker that is exiting.
pub unsafe extern "C" fn ngx_http_dyncert_exit_process(_cycle: *mut ngx_cycle_t) {
    guard("stopping the worker", (), || {
        super::metrics::release_worker_slot();
        let Some(mut st) = state::take() else {
            return;
        };
        // SAFETY: notify came from ngx_get_connection and is still ours. The
        // fd itself is closed by the fetcher below (which also drops it from
        // epoll), so only the nginx connection slot is released here; fd = -1
        // tells nginx's exit check the socket is not leaked.
        unsafe {
            (*st.notify).fd = -1;
            ngx_free_connection(st.notify);
        }
        st.worker.queue_mut().stop();
    })
}

/// Read handler of the wake-up socket: apply results, then wake waiters.
unsafe extern "C" fn ngx_http_dyncert_notify_handler(_ev: *mut ngx_event_t) {
    guard("applying fetch results", (), || {
        let mut lines: Vec<(Level, String)> = Vec::new();
        let mut acme = Vec::new();
        let waiters = with_worker(|w| {
            let now = SystemClock.now();
            let mut waiters = Vec::new();
            for ev in w.queue().drain() {
                match ev {
                    Event::Acme { token, answer } => acme.push((token, answer)),
                    ev => waiters.extend(w.on_event(ev, now, &mut |l, m| lines.push((l, m)))),
                }
            }
            waiters
        })
        .unwrap_or_default();
        for (level, msg) in lines {
            match level {
                Level::Warn => Log::cycle().warn(format_args!("{msg}")),
                Level::Info => Log::cycle().info(format_args!("{msg}")),
            }
        }
        // The borrow is released: resuming a connection may run the
        // certificate callback, which needs the worker state again.
        for p in waiters {
            // SAFETY: parked connections stay alive until resumed (only
            // dyncert's handlers act on them while parked).
            unsafe { peek::resume(p) };
        }
        for (token, answer) in acme {
            super::acme::complete(&token, &answer);
        }
    })
}
