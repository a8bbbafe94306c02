//! The module's lifecycle, in the order nginx runs it: postconfiguration
//! checks the rules that span directives and lets each concern register its
//! handlers and callbacks; `init_module` publishes the new cycle's state in
//! the master; `init_process` starts the worker's fetcher thread and
//! watches its wake-up socket as an nginx read event, whose handler applies
//! finished fetches on the event loop and routes them to the parked
//! connections and ACME requests waiting; `exit_process` stops it.

use core::ptr;
use std::os::fd::RawFd;
use std::time::Duration;

use dyncert_core::clock::{Clock, SystemClock};
use dyncert_core::fetch::{start_key_loader, AcmeAnswer, Event, Fetcher, Outcome};
use dyncert_core::keyref::KeyRefMode;
use dyncert_core::metrics::WORKER_SLOTS;
use dyncert_core::worker::{Level, Worker};
use ngx::core::Status;
use ngx::ffi::{
    ngx_conf_t, ngx_connection_t, ngx_cycle_t, ngx_event_t, ngx_free_connection,
    ngx_get_connection, ngx_handle_read_event, ngx_int_t, ngx_process, NGX_OK, NGX_PROCESS_SINGLE,
    NGX_PROCESS_WORKER,
};
use ngx::http::HttpModuleMainConf;

use super::boundary::guard;
use super::conf::{self, MainConf, Module, Refused, Uses};
use super::log::{core_line, debug, Log};
use super::state::{self, with_worker, Fetches, State};
use super::{access, acme, handshake, metrics, peek, ssl, tickets, zone};

/// postconfiguration (`ngx_http_<module>_init` in nginx's own modules).
///
/// # Safety
/// Called by nginx with the configuration being loaded.
pub unsafe extern "C" fn ngx_http_dyncert_init(cf: *mut ngx_conf_t) -> ngx_int_t {
    guard("configuring servers", Status::NGX_ERROR.into(), || {
        // SAFETY: nginx passes the configuration being loaded, and nothing
        // else uses it while this runs.
        let cf = unsafe { &mut *cf };
        match configure(cf) {
            Ok(()) => Status::NGX_OK.into(),
            Err(Refused) => Status::NGX_ERROR.into(),
        }
    })
}

/// After every server's configuration is merged: the checks across
/// directives, in the order their errors are reported, and each concern's
/// handlers and callbacks.
fn configure(cf: &mut ngx_conf_t) -> Result<(), Refused> {
    let mcf = Module::main_conf_mut(cf).ok_or(Refused)?;
    if let Some(zone) = mcf.shared_zone {
        // The zone's init callback (after this) reads the fingerprint
        // through its data; mcf lives as long as the cycle.
        mcf.tier_config = mcf.tier_fingerprint();
        // SAFETY: nginx's entry for this configuration's zone; nothing
        // reads its data before the init callback.
        unsafe { (*zone.as_ptr()).data = ptr::addr_of_mut!(mcf.tier_config).cast() };
    }
    handshake::reserve_ex_index(cf)?;
    let servers = conf::servers(cf)?;
    metrics::label_servers(mcf, &servers);
    let uses = Uses::of(&servers);
    conf::check_redis_tls_use(cf, mcf)?;
    ssl::install_certificate_callbacks(cf, &servers)?;
    if uses.dyncert {
        peek::check_event_method(cf)?;
    }
    metrics::postconfiguration(cf, mcf, uses.dyncert)?;
    access::postconfiguration(cf, uses.tenant)?;
    acme::postconfiguration(cf, mcf, uses.acme)?;
    tickets::postconfiguration(cf, mcf, &servers)?;
    if !uses.dyncert {
        // Workers still need the fetcher to answer ACME challenges and to
        // keep the shared session ticket keys.
        mcf.enabled = uses.acme || mcf.session_tickets;
        mcf.ports.clear();
        return Ok(());
    }
    conf::check_sources(cf, mcf)?;
    conf::check_key_encryption(cf, mcf)?;
    mcf.on_demand = uses.on_demand;
    conf::check_on_demand(cf, mcf)?;
    mcf.enabled = true;
    ssl::install_handshake_callbacks(&servers, uses);
    mcf.ports = peek::ports(cf);
    Ok(())
}

/// init_module: runs in the master after the listening sockets of the new
/// cycle exist (at start and on every reload). A reload that fails earlier
/// (a zone, a `bind()`) never gets here, so this is where the new cycle's
/// state may replace the old one's in the master's memory.
///
/// # Safety
/// Called by nginx with the cycle being initialised.
pub unsafe extern "C" fn ngx_http_dyncert_init_module(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    guard("wrapping listeners", Status::NGX_ERROR.into(), || {
        // SAFETY: nginx passes the cycle being initialised, and nothing else
        // uses it while this runs.
        let cycle = unsafe { &mut *cycle };
        let Some(mcf) = Module::main_conf(cycle) else {
            // No http block: no metrics zone either.
            // SAFETY: None publishes nothing.
            unsafe { metrics::publish(None, 0) };
            return Status::NGX_OK.into();
        };
        // Also without `dyncert on`: `dyncert_metrics` alone has a zone.
        // SAFETY: the zone was added to this cycle, its init already ran.
        unsafe { metrics::publish(mcf.metrics_zone, mcf.server_names.len()) };
        if !mcf.enabled {
            return Status::NGX_OK.into();
        }
        let n = peek::wrap_listeners(cycle, &mcf.ports);
        Log::of_cycle(cycle).notice(format_args!(
            "dyncert: ClientHello peek enabled on {n} listener(s)"
        ));
        Status::NGX_OK.into()
    })
}

/// `init_process`: start the fetcher (threads only in workers, never in the
/// master, which forks).
///
/// # Safety
/// Called by nginx in a worker with the current cycle.
pub unsafe extern "C" fn ngx_http_dyncert_init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    guard("starting the worker", NGX_OK as ngx_int_t, || {
        // SAFETY: nginx passes the live current cycle.
        start_worker(unsafe { &*cycle });
        NGX_OK as ngx_int_t
    })
}

/// Claims the worker's metrics slot and starts its fetcher. A fetcher that
/// cannot start is logged, and the worker serves default certificates
/// rather than refuse to run.
fn start_worker(cycle: &ngx_cycle_t) {
    let Some(mcf) = Module::main_conf(cycle) else {
        return;
    };
    // Cache manager and loader processes run init_process too: they serve
    // no connections and must not start threads.
    // SAFETY: nginx sets ngx_process before init_process, and only the
    // event loop thread reads it.
    let process = unsafe { ngx_process } as u32;
    if process != NGX_PROCESS_WORKER && process != NGX_PROCESS_SINGLE {
        return;
    }
    if !metrics::claim_worker_slot() {
        Log::cycle().warn(format_args!(
            "dyncert: all {WORKER_SLOTS} metrics slots for worker gauges are held by live \
             processes; this worker's fetches in flight and cache size are left out of \
             dyncert_fetches_in_flight, dyncert_cache_entries and dyncert_cache_bytes"
        ));
    }
    if !mcf.enabled {
        return;
    }
    if let Err(e) = start_fetcher(cycle, mcf) {
        Log::cycle().alert(format_args!("dyncert: {e} while starting the worker"));
    }
}

/// Starts the fetcher threads and makes the worker's state.
fn start_fetcher(cycle: &ngx_cycle_t, mcf: &MainConf) -> Result<(), String> {
    // The process's key limits, before any thread that judges a key starts
    // (the parse thread) and before the event loop loads from the zone.
    mcf.key_limits().install();
    let cfg = mcf.fetcher_config()?;
    let flight_deadline = cfg.flight_deadline(Duration::from_millis(mcf.fetch_timeout() as u64));
    let key_loader = cfg.key_refs.mode == KeyRefMode::Engine;
    // The fetcher's threads (and the ones they start) inherit a mask that
    // blocks every signal: nginx's signals (reload, quit, child exits) must
    // reach the event loop thread, never a helper thread.
    let fetcher = with_signals_blocked(|| Fetcher::start(cfg))
        .map_err(|e| format!("cannot start the fetcher thread ({e})"))?;
    // Without it the worker still serves records that carry their key;
    // the next key reference's load tries to start it again.
    if key_loader {
        if let Err(e) = with_signals_blocked(start_key_loader) {
            Log::cycle().alert(format_args!(
                "dyncert: cannot start the PKCS#11 key loader thread ({e}) while starting the \
                 worker; key references are refused until a load starts it"
            ));
        }
    }
    let notify = watch(cycle, fetcher.wake_fd())?;
    let interner = fetcher.interner().clone();
    let mut worker = Worker::new(
        mcf.cache(),
        mcf.fetch_concurrency(),
        Fetches(fetcher),
        Box::new(metrics::ShmSink),
    )
    .with_flight_deadline(flight_deadline);
    if let Some(shm) = mcf.shared_zone {
        // SAFETY: the zone belongs to this cycle, whose init ran the
        // zone's init callback before any worker started.
        match unsafe { zone::Zone::of(shm.as_ptr()) } {
            Some(z) => {
                z.make_own();
                worker = worker.with_tier(Box::new(z), interner);
            }
            None => Log::cycle().alert(format_args!(
                "dyncert: the shared zone is not initialised while starting the worker"
            )),
        }
    }
    state::install(State {
        worker,
        notify,
        fetch_timeout: mcf.fetch_timeout(),
    });
    Ok(())
}

/// An nginx connection for the fetcher's wake-up socket `fd`, whose read
/// event runs the notify handler.
fn watch(cycle: &ngx_cycle_t, fd: RawFd) -> Result<*mut ngx_connection_t, String> {
    // SAFETY: fd is the fetcher's open socket, which outlives the
    // connection (exit_process frees the connection before it stops the
    // fetcher); cycle.log is the live cycle's log.
    let c = unsafe { ngx_get_connection(fd, cycle.log) };
    if c.is_null() {
        return Err("no free connection for the fetcher socket".to_owned());
    }
    // SAFETY: c was just handed out by ngx_get_connection, ours alone.
    let rev = unsafe { (*c).read };
    // SAFETY: as above; no http data: it is not a client connection.
    unsafe { (*c).data = ptr::null_mut() };
    // SAFETY: rev is c's read event, ours to set up.
    unsafe { (*rev).handler = Some(ngx_http_dyncert_notify_handler) };
    // SAFETY: as above.
    unsafe { (*rev).log = cycle.log };
    // SAFETY: as above; adds fd to the event method.
    if unsafe { ngx_handle_read_event(rev, 0) } != NGX_OK as ngx_int_t {
        // SAFETY: c is ours and not watched.
        unsafe { ngx_free_connection(c) };
        return Err("cannot watch the fetcher socket".to_owned());
    }
    Ok(c)
}

/// Runs `f` with every signal blocked in this thread (threads started by
/// `f` inherit that mask), then restores the mask.
fn with_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: sigset_t is plain data; all zeroes is a valid set.
    let mut all: libc::sigset_t = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { core::mem::zeroed() };
    // SAFETY: sigfillset(3) fills a set this frame owns.
    unsafe { libc::sigfillset(&mut all) };
    // SAFETY: pthread_sigmask(3) reads and writes sets this frame owns.
    let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old) } == 0;
    let r = f();
    if blocked {
        // SAFETY: as above, restoring the mask saved in old.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut()) };
    }
    r
}

/// `exit_process`: stop the fetcher thread.
///
/// # Safety
/// Called by nginx in a worker that is exiting.
pub unsafe extern "C" fn ngx_http_dyncert_exit_process(_cycle: *mut ngx_cycle_t) {
    guard("stopping the worker", (), || {
        metrics::release_worker_slot();
        let Some(mut st) = state::take() else {
            return;
        };
        // The fd itself is closed by the fetcher below (which also drops it
        // from epoll), so only the nginx connection slot is released here;
        // fd = -1 tells nginx's exit check the socket is not leaked.
        // SAFETY: notify came from ngx_get_connection and is still ours.
        unsafe { (*st.notify).fd = -1 };
        // SAFETY: as above.
        unsafe { ngx_free_connection(st.notify) };
        st.worker.queue_mut().0.stop();
    })
}

/// Read handler of the wake-up socket: applies each result and wakes its
/// waiters before the next result is applied. A woken connection's
/// certificate callback runs at once and finds the entry just cached; a
/// later result of the same batch could otherwise push it out of a small
/// hot set first, and the connection would get the default.
///
/// Each event, each wake-up and each ACME answer runs under a guard of its
/// own: a panic (a bug) applying one is logged at `alert` with what it
/// was, and the rest of the batch is still applied. Otherwise the names of
/// every later result would stay in flight until the in-flight deadline,
/// their connections parked in vain.
///
/// # Safety
/// Called by nginx with the wake-up connection's read event.
unsafe extern "C" fn ngx_http_dyncert_notify_handler(_ev: *mut ngx_event_t) {
    guard("applying fetch results", (), || {
        let events = with_worker(|w| w.queue().0.drain()).unwrap_or_default();
        let mut acme = Vec::new();
        for ev in events {
            debug!(Log::cycle(), "dyncert: {}", event_text(&ev));
            if let Event::Acme { token, answer } = ev {
                acme.push((token, answer));
                continue;
            }
            let what = applying(&ev);
            let mut lines: Vec<(Level, String)> = Vec::new();
            let waiters = guard(&what, Vec::new(), || {
                with_worker(|w| w.on_event(ev, SystemClock.now(), &mut |l, m| lines.push((l, m))))
                    .unwrap_or_default()
            });
            // Also the lines written before a panic.
            for (level, msg) in lines {
                core_line(level, &msg);
            }
            // The borrow is released: resuming a connection may run the
            // certificate callback, which needs the worker state again.
            for p in waiters {
                guard("resuming a parked connection", (), || {
                    // SAFETY: parked connections stay alive until resumed
                    // (only dyncert's handlers act on them while parked).
                    unsafe { peek::resume(p) }
                });
            }
        }
        for (token, answer) in acme {
            guard("answering an ACME challenge request", (), || {
                acme::complete(&token, &answer)
            });
        }
    })
}

/// What applying `ev` is, for the alert line of a panic: a result names
/// its name (validated, bounded by the fetcher's checks).
fn applying(ev: &Event) -> String {
    match ev {
        Event::Fetched(r) => format!("applying the fetch result of \"{}\"", r.name),
        Event::Invalidate(target) => format!("applying the invalidation of \"{target}\""),
        Event::OnDemand { name, .. } => {
            format!("applying the on-demand enqueue result of \"{name}\"")
        }
        _ => "applying a fetcher report".to_owned(),
    }
}

/// What the fetcher reports, for the debug log.
fn event_text(ev: &Event) -> String {
    match ev {
        Event::Fetched(r) => {
            let outcome = match &r.outcome {
                Outcome::Found {
                    source,
                    wildcard: None,
                    ..
                } => format!("found in {}", source.as_str()),
                Outcome::Found {
                    source,
                    wildcard: Some(w),
                    ..
                } => format!("found in {} as \"{w}\"", source.as_str()),
                Outcome::NotFound => "no record".to_owned(),
                Outcome::Refused(refusal) => format!("refused ({})", refusal.reason),
                Outcome::Error(e) => format!("failed ({e})"),
            };
            format!(
                "fetch done in {} ms: {outcome}, name: \"{}\" (attempt {})",
                r.elapsed.as_millis(),
                r.name,
                r.attempt
            )
        }
        Event::Acme { token, answer } => {
            let answer = match answer {
                AcmeAnswer::Value(_) => "found".to_owned(),
                AcmeAnswer::Absent => "absent".to_owned(),
                AcmeAnswer::Error(e) => format!("failed ({e})"),
            };
            format!("ACME challenge read done: {answer}, token: \"{token}\"")
        }
        Event::Invalidate(target) => format!("invalidation of \"{target}\""),
        Event::Subscribed { resubscribed } => {
            format!("invalidation channel subscribed (again: {resubscribed})")
        }
        Event::Warn(msg) => format!("fetcher warning: {msg}"),
        Event::Redis(note) => format!("redis connection report: {note:?}"),
        Event::Tickets(note) => format!("session ticket keys: {note:?}"),
        Event::OnDemand { name, result } => match result {
            Ok(()) => format!("on-demand enqueue done, name: \"{name}\""),
            Err(e) => format!("on-demand enqueue failed ({e}), name: \"{name}\""),
        },
    }
}
