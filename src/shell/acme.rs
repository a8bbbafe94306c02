//! ACME HTTP-01 answers: `GET /.well-known/acme-challenge/<token>` is
//! answered with the Redis value `dyncert:acme:<token>`, so whichever
//! terminator a CA reaches can answer a challenge an issuer started
//! elsewhere. Runs in the post-read phase (before rewrites, `return`s and
//! access rules) and never blocks: the request waits for the fetcher like
//! a parked connection does. Whether a request costs a Redis read at all
//! is the core's decision ([`AcmeGate`]): port 80 is anyone's.

use core::ffi::c_void;
use std::cell::RefCell;

use dyncert_core::acme::{challenge_token, valid_token, AcmeGate, Admission, Limits, RETRY_AFTER};
use dyncert_core::clock::{Clock, SystemClock};
use dyncert_core::fetch::AcmeAnswer;
use dyncert_core::metrics::Simple;
use ngx::ffi::{
    ngx_conf_t, ngx_http_cleanup_add, ngx_http_finalize_request,
    ngx_http_phases_NGX_HTTP_POST_READ_PHASE, ngx_http_request_t, ngx_http_run_posted_requests,
    ngx_int_t, ngx_list_push, ngx_table_elt_t, ngx_uint_t, NGX_DECLINED, NGX_DONE, NGX_ERROR,
    NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_HTTP_NOT_FOUND, NGX_HTTP_SERVICE_UNAVAILABLE,
};
use ngx::http::HttpModuleServerConf;

use super::boundary::guard;
use super::conf::{add_phase_handler, emerg, MainConf, Module, Refused};
use super::log::Log;
use super::metrics;
use super::response::send_body;
use super::state::with_worker;

thread_local! {
    // Requests waiting for their token's value, and which tokens may be
    // read (event loop only). The fetcher's ACME queue is sized from the
    // same `Limits::default()` (see MainConf::fetcher_config).
    static GATE: RefCell<AcmeGate<*mut ngx_http_request_t>> =
        RefCell::new(AcmeGate::new(Limits::default()));
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
    )
}

unsafe extern "C" fn ngx_http_dyncert_acme_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    guard(
        "answering an ACME challenge",
        NGX_DECLINED as ngx_int_t,
        || unsafe { start(r) },
    )
}

unsafe fn start(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request to phase handlers.
    let req = unsafe { &mut *r };
    if !Module::server_conf(req).is_some_and(|s| s.acme()) {
        return NGX_DECLINED as ngx_int_t;
    }
    if req.method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as ngx_uint_t == 0 {
        return NGX_DECLINED as ngx_int_t;
    }
    let uri = if req.uri.data.is_null() {
        &[][..]
    } else {
        // SAFETY: r->uri is the request's decoded path.
        unsafe { core::slice::from_raw_parts(req.uri.data, req.uri.len) }
    };
    let Some(token) = challenge_token(uri) else {
        return NGX_DECLINED as ngx_int_t;
    };
    if !valid_token(token) {
        // Never becomes a Redis key.
        count(Simple::AcmeMissing);
        return NGX_HTTP_NOT_FOUND as ngx_int_t;
    }
    let token = String::from_utf8_lossy(token).into_owned();
    let now = SystemClock.now();
    let Ok(admission) = GATE.with(|g| g.try_borrow_mut().map(|mut g| g.admit(&token, r, now)))
    else {
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
        Admission::Wait => {}
        Admission::Read => {
            if with_worker(|w| w.queue().request_acme(&token)) != Some(true) {
                // Nobody else can have joined: the event loop has not run.
                GATE.with(|g| drop(g.borrow_mut().not_queued(&token)));
                // SAFETY: as above.
                return unsafe { busy(r) };
            }
        }
    }
    // SAFETY: r is live; the cleanup runs when the request is freed, so a
    // request that goes away early is forgotten before we touch it.
    let cln = unsafe { ngx_http_cleanup_add(r, 0) };
    let Some(cln) = (unsafe { cln.as_mut() }) else {
        // Out of memory: answered 500 now, so it must not wait. Its read
        // (if it started one) goes on and frees its slot when it ends.
        forget(r);
        return NGX_ERROR as ngx_int_t;
    };
    cln.handler = Some(ngx_http_dyncert_acme_cleanup);
    cln.data = r as *mut c_void;
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
    // SAFETY: r is live; the header list lives in its pool.
    let h: *mut ngx_table_elt_t = unsafe { ngx_list_push(&mut (*r).headers_out.headers) }.cast();
    // SAFETY: a non-null ngx_list_push result is an uninitialised element
    // of the list, ours to fill.
    if let Some(h) = unsafe { h.as_mut() } {
        // As nginx's own filters fill output headers (hash 1: in use).
        h.hash = 1;
        h.next = core::ptr::null_mut();
        h.key.len = RETRY_AFTER_KEY.len();
        h.key.data = RETRY_AFTER_KEY.as_ptr() as *mut u8;
        h.value.len = RETRY_AFTER.len();
        h.value.data = RETRY_AFTER.as_ptr() as *mut u8;
        h.lowcase_key = core::ptr::null_mut();
    }
    NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t
}

fn forget(r: *mut ngx_http_request_t) {
    GATE.with(|g| {
        if let Ok(mut g) = g.try_borrow_mut() {
            g.abandon(|&x| x == r);
        }
    });
}

unsafe extern "C" fn ngx_http_dyncert_acme_cleanup(data: *mut c_void) {
    guard("freeing an ACME challenge request", (), || {
        forget(data as *mut ngx_http_request_t)
    });
}

/// The fetcher answered for `token`: respond to every request waiting.
pub fn complete(token: &str, result: &AcmeAnswer) {
    let now = SystemClock.now();
    let waiting = GATE.with(|g| g.borrow_mut().complete(token, result, now));
    for r in waiting {
        // SAFETY: requests in the gate are alive (their cleanup removes
        // them before they are freed).
        guard("answering an ACME challenge", (), || unsafe {
            answer(r, token, result)
        });
    }
}

unsafe fn answer(r: *mut ngx_http_request_t, token: &str, a: &AcmeAnswer) {
    // SAFETY: see complete().
    let c = unsafe { (*r).connection };
    let rc = match a {
        AcmeAnswer::Value(v) => {
            count(Simple::AcmeServed);
            unsafe { send_body(r, b"text/plain", v) }
        }
        AcmeAnswer::Absent => {
            count(Simple::AcmeMissing);
            NGX_HTTP_NOT_FOUND as ngx_int_t
        }
        AcmeAnswer::Error(e) => {
            Log::of(unsafe { &*c }).warn(format_args!(
                "dyncert: {e} while reading an ACME challenge, token: \"{token}\""
            ));
            NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t
        }
    };
    // SAFETY: r and c are live; finalizing ends the request (or keeps the
    // connection alive for the next one).
    unsafe {
        ngx_http_finalize_request(r, rc);
        ngx_http_run_posted_requests(c);
    }
}
