//! ACME HTTP-01 answers: `GET /.well-known/acme-challenge/<token>` is
//! answered with the Redis value `dyncert:acme:<token>`, so whichever
//! terminator a CA reaches can answer a challenge an issuer started
//! elsewhere. Runs in the post-read phase (before rewrites, `return`s and
//! access rules) and never blocks: the request waits for the fetcher like
//! a parked connection does.

use core::ffi::c_void;
use std::cell::RefCell;
use std::collections::HashMap;

use dyncert_core::acme::{challenge_token, valid_token};
use dyncert_core::fetch::AcmeAnswer;
use dyncert_core::metrics::Simple;
use ngx::ffi::{
    ngx_http_cleanup_add, ngx_http_finalize_request, ngx_http_request_t,
    ngx_http_run_posted_requests, ngx_int_t, ngx_uint_t, NGX_DECLINED, NGX_DONE, NGX_ERROR,
    NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_HTTP_NOT_FOUND, NGX_HTTP_SERVICE_UNAVAILABLE, NGX_LOG_WARN,
};
use ngx::http::HttpModuleServerConf;

use crate::boundary_ffi::{guard, log_to};
use crate::response_ffi::send_body;
use crate::worker_ffi::with_worker;
use crate::{metrics_ffi, Module};

/// Most requests waiting for a Redis answer per worker.
const MAX_WAITING: usize = 1024;

thread_local! {
    // Requests waiting for their token's value, by token (event loop only).
    static WAITING: RefCell<HashMap<String, Vec<*mut ngx_http_request_t>>> =
        RefCell::new(HashMap::new());
}

fn count(s: Simple) {
    metrics_ffi::add(metrics_ffi::layout().simple(s), 1);
}

pub unsafe extern "C" fn ngx_http_dyncert_acme_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
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
    let full = WAITING.with(|w| w.borrow().values().map(Vec::len).sum::<usize>() >= MAX_WAITING);
    if full || with_worker(|w| w.fetcher().request_acme(&token)) != Some(true) {
        return NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t;
    }
    // SAFETY: r is live; the cleanup runs when the request is freed, so a
    // request that goes away early is forgotten before we touch it.
    let cln = unsafe { ngx_http_cleanup_add(r, 0) };
    let Some(cln) = (unsafe { cln.as_mut() }) else {
        return NGX_ERROR as ngx_int_t;
    };
    cln.handler = Some(ngx_http_dyncert_acme_cleanup);
    cln.data = r as *mut c_void;
    // No extra reference: the post-read phase does not finalize a handler's
    // NGX_DONE (unlike the content phase), so the request keeps its single
    // reference until answer() finalizes it; nothing else reads from or
    // times out the connection meanwhile, and the cleanup above covers an
    // early free.
    WAITING.with(|w| w.borrow_mut().entry(token).or_default().push(r));
    NGX_DONE as ngx_int_t
}

unsafe extern "C" fn ngx_http_dyncert_acme_cleanup(data: *mut c_void) {
    let r = data as *mut ngx_http_request_t;
    WAITING.with(|w| {
        if let Ok(mut w) = w.try_borrow_mut() {
            w.retain(|_, rs| {
                rs.retain(|&x| x != r);
                !rs.is_empty()
            });
        }
    });
}

/// The fetcher answered for `token`: respond to every request waiting.
pub fn complete(token: &str, result: &AcmeAnswer) {
    let waiting = WAITING.with(|w| w.borrow_mut().remove(token).unwrap_or_default());
    for r in waiting {
        // SAFETY: requests in WAITING are alive (their cleanup removes them
        // before they are freed).
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
            log_to(
                unsafe { (*c).log },
                NGX_LOG_WARN as ngx_uint_t,
                &format!("dyncert: {e} while reading an ACME challenge, token: \"{token}\""),
            );
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
