//! ACME HTTP-01 answers: `GET /.well-known/acme-challenge/<token>` is
//! answered with the Redis value `dyncert:acme:<token>`, so whichever
//! terminator a CA reaches can answer a challenge an issuer started
//! elsewhere. Runs in the post-read phase (before rewrites, `return`s and
//! access rules) and never blocks: the request waits for the fetcher like
//! a parked connection does. Whether a request costs a Redis read at all
//! is the core's decision ([`AcmeGate`]): port 80 is anyone's, so the
//! gate also keeps one client address from taking every read. A request
//! past the reads waits in the gate's FIFO, bounded by one worker-wide
//! timer, never by blocking.

use core::ffi::c_void;
use core::ptr;
use std::cell::{Cell, RefCell};

use dyncert_core::acme::{
    challenge_token, valid_token, AcmeGate, Admission, Client, Limits, RETRY_AFTER,
};
use dyncert_core::clock::{Clock, SystemClock};
use dyncert_core::fetch::AcmeAnswer;
use dyncert_core::metrics::Simple;
use ngx::ffi::{
    ngx_add_timer, ngx_conf_t, ngx_connection_t, ngx_event_t, ngx_http_cleanup_add,
    ngx_http_finalize_request, ngx_http_phases_NGX_HTTP_POST_READ_PHASE, ngx_http_request_t,
    ngx_http_run_posted_requests, ngx_int_t, ngx_list_push, ngx_str_t, ngx_table_elt_t, ngx_uint_t,
    NGX_DECLINED, NGX_DONE, NGX_ERROR, NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_HTTP_NOT_FOUND,
    NGX_HTTP_SERVICE_UNAVAILABLE,
};
use ngx::http::{HttpModuleMainConf, HttpModuleServerConf};

use super::access::{client_ip, run_last_in_phase};
use super::boundary::guard;
use super::conf::{add_phase_handler, emerg, MainConf, Module, Refused};
use super::handshake::request_connection;
use super::log::Log;
use super::metrics;
use super::response::send_body;
use super::state::with_worker;

type Gate = AcmeGate<*mut ngx_http_request_t>;

thread_local! {
    // Requests waiting for their token's value, and which tokens may be
    // read (event loop only). The fetcher's ACME queue is sized from the
    // same `Limits::default()` (see MainConf::fetcher_config); the FIFO's
    // wait comes from the configuration, so the gate is made by the first
    // challenge request.
    static GATE: RefCell<Option<Gate>> = const { RefCell::new(None) };
    // The timer that ends waits in the gate's FIFO (event loop only):
    // made once, never freed, like the worker it belongs to.
    static FIFO_TIMER: Cell<*mut ngx_event_t> = const { Cell::new(ptr::null_mut()) };
}

/// Runs `f` on the worker's gate, if it is made (and not in use: only a
/// bug re-enters).
fn with_gate<R>(f: impl FnOnce(&mut Gate) -> R) -> Option<R> {
    GATE.with(|g| {
        let mut g = g.try_borrow_mut().ok()?;
        g.as_mut().map(f)
    })
}

const RETRY_AFTER_KEY: &str = "Retry-After";

fn count(s: Simple) {
    metrics::add(metrics::layout().simple(s), 1);
}

/// Registers the challenge handler when some server has
/// `dyncert_acme_challenge on` (postconfiguration).
pub fn postconfiguration(cf: &mut ngx_conf_t, mcf: &MainConf, acme: bool) -> Result<(), Refused> {
    if !acme {
        return Ok(());
    }
    if mcf.redis_url.is_none() {
        return Err(emerg(
            cf,
            format_args!(
                "\"dyncert_acme_challenge on\" needs \"dyncert_redis\": the answers are read from Redis"
            ),
        ));
    }
    add_phase_handler(
        cf,
        ngx_http_phases_NGX_HTTP_POST_READ_PHASE,
        ngx_http_dyncert_acme_handler,
    )?;
    // After realip's post-read handler, which applies a server's
    // `set_real_ip_from` (`real_ip_header proxy_protocol` behind an L4
    // balancer): the gate shares its reads out by the client's address,
    // not the balancer's.
    run_last_in_phase(cf, ngx_http_phases_NGX_HTTP_POST_READ_PHASE)
}

/// # Safety
/// Called by nginx with a live request, in the post-read phase.
unsafe extern "C" fn ngx_http_dyncert_acme_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    guard(
        "answering an ACME challenge",
        NGX_DECLINED as ngx_int_t,
        // SAFETY: nginx passes a live request to phase handlers.
        || unsafe { start(r) },
    )
}

/// Answers a challenge request at once, or makes it wait for the read of
/// its token.
///
/// # Safety
/// `r` must be a live request in the post-read phase.
unsafe fn start(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: the caller's contract; the reference ends before r is used
    // again.
    let token = match token_of(unsafe { &*r }) {
        Ok(token) => token,
        Err(rc) => return rc,
    };
    // SAFETY: as above.
    let req = unsafe { &*r };
    let client = Client::of(client_ip(request_connection(req)));
    let limits = Module::main_conf(req).map_or(Limits::default(), |m| {
        Limits::default().with_redis_timeout(m.redis_timeout())
    });
    let now = SystemClock.now();
    let Some(admission) = GATE.with(|g| {
        let mut g = g.try_borrow_mut().ok()?;
        let gate = g.get_or_insert_with(|| AcmeGate::new(limits));
        Some(gate.admit(&token, client, r, now))
    }) else {
        // Only reachable by re-entering from inside the gate: a bug.
        return NGX_ERROR as ngx_int_t;
    };
    match admission {
        Admission::Absent => {
            count(Simple::AcmeMissing);
            return NGX_HTTP_NOT_FOUND as ngx_int_t;
        }
        // SAFETY: r is live and its response has not started.
        Admission::Busy => return unsafe { busy(r) },
        Admission::ClientBusy => {
            count(Simple::AcmeClientRefused);
            // SAFETY: as above.
            return unsafe { busy(r) };
        }
        Admission::Wait => {}
        Admission::Queued => arm_fifo_timer(),
        Admission::Read => {
            if with_worker(|w| w.queue().0.request_acme(&token)) != Some(true) {
                // Nobody else can have joined: the event loop has not run.
                with_gate(|g| drop(g.not_queued(&token)));
                start_promoted_reads();
                // SAFETY: as above.
                return unsafe { busy(r) };
            }
        }
    }
    // SAFETY: the caller's contract.
    unsafe { wait(r) }
}

/// The token a challenge request asks for; `Err` with the handler's
/// result for the requests this handler does not wait for: not a
/// challenge for this server (declined), or a token that cannot exist (404,
/// and it never becomes a Redis key).
fn token_of(r: &ngx_http_request_t) -> Result<String, ngx_int_t> {
    if !Module::server_conf(r).is_some_and(|s| s.acme()) {
        return Err(NGX_DECLINED as ngx_int_t);
    }
    if r.method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as ngx_uint_t == 0 {
        return Err(NGX_DECLINED as ngx_int_t);
    }
    // r->uri is the request's decoded path.
    let Some(token) = challenge_token(r.uri.as_bytes()) else {
        return Err(NGX_DECLINED as ngx_int_t);
    };
    if !valid_token(token) {
        count(Simple::AcmeMissing);
        return Err(NGX_HTTP_NOT_FOUND as ngx_int_t);
    }
    Ok(String::from_utf8_lossy(token).into_owned())
}

/// Keeps an admitted request until [`complete`] answers it.
///
/// # Safety
/// `r` must be a live request in the post-read phase, in the gate.
unsafe fn wait(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: r is live; the cleanup runs when the request is freed, so a
    // request that goes away early is forgotten before we touch it.
    let cln = unsafe { ngx_http_cleanup_add(r, 0) };
    // SAFETY: NULL or the cleanup nginx just added to r, initialised.
    let Some(cln) = (unsafe { cln.as_mut() }) else {
        // Out of memory: answered 500 now, so it must not wait. Its read
        // (if it started one) goes on and frees its slot when it ends.
        forget(r);
        return NGX_ERROR as ngx_int_t;
    };
    cln.handler = Some(ngx_http_dyncert_acme_cleanup);
    cln.data = r.cast::<c_void>();
    // No extra reference: the post-read phase does not finalize a handler's
    // NGX_DONE (unlike the content phase), so the request keeps its single
    // reference until answer() finalizes it; nothing else reads from or
    // times out the connection meanwhile, and the cleanup above covers an
    // early free.
    NGX_DONE as ngx_int_t
}

/// 503 with `Retry-After`, no Redis read: the worker's challenge lookups
/// are at their bound.
///
/// # Safety
/// `r` must be a live request whose response has not started.
unsafe fn busy(r: *mut ngx_http_request_t) -> ngx_int_t {
    count(Simple::AcmeRefused);
    // SAFETY: the caller's contract: r is live, and nothing else refers to
    // its output headers now.
    let headers = unsafe { &mut (*r).headers_out.headers };
    // SAFETY: headers is the request's output header list; ngx_list_push
    // returns a fresh element of it in the request pool (or NULL).
    let h = unsafe { ngx_list_push(headers) }.cast::<ngx_table_elt_t>();
    if !h.is_null() {
        // As nginx's own filters fill output headers (hash 1: in use).
        let header = ngx_table_elt_t {
            hash: 1,
            key: ngx_str_t {
                len: RETRY_AFTER_KEY.len(),
                data: RETRY_AFTER_KEY.as_ptr().cast_mut(),
            },
            value: ngx_str_t {
                len: RETRY_AFTER.len(),
                data: RETRY_AFTER.as_ptr().cast_mut(),
            },
            lowcase_key: ptr::null_mut(),
            next: ptr::null_mut(),
        };
        // SAFETY: h is that fresh element, ours to initialise.
        unsafe { h.write(header) };
    }
    NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t
}

/// Answers a request in the gate 503 with `Retry-After` now.
///
/// # Safety
/// `r` must be a live request that was in the gate and is no longer.
unsafe fn refuse(r: *mut ngx_http_request_t) {
    // SAFETY: the caller's contract: r is live.
    let c = unsafe { (*r).connection };
    // SAFETY: r is live and its response has not started.
    let rc = unsafe { busy(r) };
    // SAFETY: r is live; after this it is not used.
    unsafe { ngx_http_finalize_request(r, rc) };
    // SAFETY: as in answer().
    unsafe { ngx_http_run_posted_requests(c) };
}

/// Starts the reads the gate lets the FIFO's oldest requests have, once
/// reads ended; a read the fetcher cannot take answers its requests 503
/// and lets the next ones try.
fn start_promoted_reads() {
    loop {
        let tokens = with_gate(|g| g.promote()).unwrap_or_default();
        let mut refused = Vec::new();
        for token in tokens {
            if with_worker(|w| w.queue().0.request_acme(&token)) != Some(true) {
                refused.extend(with_gate(|g| g.not_queued(&token)).unwrap_or_default());
            }
        }
        if refused.is_empty() {
            break;
        }
        for r in refused {
            guard("refusing an ACME challenge", (), || {
                // SAFETY: requests in the gate are alive (their cleanup
                // removes them before they are freed); not_queued took r
                // out of it.
                unsafe { refuse(r) }
            });
        }
    }
    arm_fifo_timer();
}

/// Sets the FIFO's timer for the first wait to end, if some request waits
/// there and the timer is not set: a later request's wait ends later, so a
/// set timer is never late (at worst early, and then set again).
fn arm_fifo_timer() {
    let Some(Some(after)) = with_gate(|g| g.next_expiry(SystemClock.now())) else {
        return;
    };
    let Some(ev) = fifo_timer() else {
        return;
    };
    // SAFETY: ev is the worker's FIFO timer event, used on this thread only.
    if unsafe { (*ev).timer_set() } == 0 {
        // SAFETY: as above; nginx's timer tree lives as long as the worker.
        unsafe { ngx_add_timer(ev, after.max(1) as ngx::ffi::ngx_msec_t) };
    }
}

/// The worker's FIFO timer event, made on first use. Not cancelable: a
/// worker shutting down gracefully waits for its queued requests' answers,
/// which come within `queue_wait`.
fn fifo_timer() -> Option<*mut ngx_event_t> {
    let ev = FIFO_TIMER.get();
    if !ev.is_null() {
        return Some(ev);
    }
    // SAFETY: ngx_connection_t is plain C data; all zeroes is a valid,
    // unused connection.
    let mut dummy: Box<ngx_connection_t> = Box::new(unsafe { core::mem::zeroed() });
    // nginx's debug lines about timers name the event's connection's fd.
    dummy.fd = -1;
    // SAFETY: ngx_event_t is plain C data; all zeroes is an event with no
    // timer set and nothing posted.
    let mut timer: Box<ngx_event_t> = Box::new(unsafe { core::mem::zeroed() });
    timer.data = Box::into_raw(dummy).cast::<c_void>();
    timer.handler = Some(ngx_http_dyncert_acme_fifo_handler);
    timer.log = Log::cycle().as_ptr();
    let ev = Box::into_raw(timer);
    FIFO_TIMER.set(ev);
    Some(ev)
}

/// # Safety
/// Called by nginx when the FIFO's timer fires, with its event.
unsafe extern "C" fn ngx_http_dyncert_acme_fifo_handler(_ev: *mut ngx_event_t) {
    guard("ending ACME challenge waits", (), || {
        let expired = with_gate(|g| g.expire(SystemClock.now())).unwrap_or_default();
        for r in expired {
            guard("refusing an ACME challenge", (), || {
                // SAFETY: requests in the gate are alive (their cleanup
                // removes them before they are freed); expire took r out.
                unsafe { refuse(r) }
            });
        }
        arm_fifo_timer();
    });
}

fn forget(r: *mut ngx_http_request_t) {
    with_gate(|g| g.abandon(|&x| x == r));
}

/// # Safety
/// Called by nginx when a request in the gate is freed, with the request.
unsafe extern "C" fn ngx_http_dyncert_acme_cleanup(data: *mut c_void) {
    guard("freeing an ACME challenge request", (), || {
        forget(data.cast::<ngx_http_request_t>())
    });
}

/// The fetcher answered for `token`: respond to every request waiting.
pub fn complete(token: &str, result: &AcmeAnswer) {
    let now = SystemClock.now();
    let waiting = with_gate(|g| g.complete(token, result, now)).unwrap_or_default();
    // The read's slot is free: the FIFO's oldest go first.
    start_promoted_reads();
    for r in waiting {
        guard("answering an ACME challenge", (), || {
            // SAFETY: requests in the gate are alive (their cleanup removes
            // them before they are freed), waiting for this answer.
            unsafe { answer(r, token, result) }
        });
    }
}

/// # Safety
/// `r` must be a live request waiting in the gate.
unsafe fn answer(r: *mut ngx_http_request_t, token: &str, a: &AcmeAnswer) {
    // SAFETY: the caller's contract: r is live.
    let c = unsafe { (*r).connection };
    let rc = match a {
        AcmeAnswer::Value(v) => {
            count(Simple::AcmeServed);
            // SAFETY: r is live and its response has not started.
            unsafe { send_body(r, b"text/plain", v) }
        }
        AcmeAnswer::Absent => {
            count(Simple::AcmeMissing);
            NGX_HTTP_NOT_FOUND as ngx_int_t
        }
        AcmeAnswer::Error(e) => {
            // SAFETY: c is r's live connection.
            Log::of(unsafe { &*c }).warn(format_args!(
                "dyncert: {e} while reading an ACME challenge, token: \"{token}\""
            ));
            NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t
        }
    };
    // SAFETY: r is live; finalizing ends the request (or keeps the
    // connection alive for the next one), after which r is not used.
    unsafe { ngx_http_finalize_request(r, rc) };
    // SAFETY: c points into nginx's connection array, memory that stays
    // valid even if finalizing closed the connection; like nginx's own
    // handlers after finalizing, this relies on ngx_http_run_posted_requests
    // checking c->destroyed first.
    unsafe { ngx_http_run_posted_requests(c) };
}
