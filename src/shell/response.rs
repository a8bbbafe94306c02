//! Sending a small in-memory response body (metrics, ACME answers).

use core::ptr;

use ngx::ffi::{
    ngx_buf_t, ngx_chain_t, ngx_create_temp_buf, ngx_http_discard_request_body,
    ngx_http_output_filter, ngx_http_request_t, ngx_http_send_header, ngx_int_t, NGX_ERROR, NGX_OK,
};

/// Sends `body` with status 200 and `content_type` (a static string);
/// returns what nginx returned, for `ngx_http_finalize_request`.
///
/// # Safety
/// `r` must be a live request whose response has not been started.
pub unsafe fn send_body(
    r: *mut ngx_http_request_t,
    content_type: &'static [u8],
    body: &[u8],
) -> ngx_int_t {
    // SAFETY: r is live.
    let req = unsafe { &mut *r };
    let rc = unsafe { ngx_http_discard_request_body(r) };
    if rc != NGX_OK as ngx_int_t {
        return rc;
    }
    req.headers_out.status = 200;
    req.headers_out.content_type.len = content_type.len();
    req.headers_out.content_type.data = content_type.as_ptr() as *mut u8;
    req.headers_out.content_type_len = content_type.len();
    req.headers_out.content_length_n = body.len() as i64;
    // SAFETY: r is live.
    let rc = unsafe { ngx_http_send_header(r) };
    if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || req.header_only() != 0 {
        return rc;
    }
    // SAFETY: the request pool lives until the response is sent.
    let b: *mut ngx_buf_t = unsafe { ngx_create_temp_buf(req.pool, body.len().max(1)) };
    if b.is_null() {
        return NGX_ERROR as ngx_int_t;
    }
    // SAFETY: b has room for body.len() bytes.
    unsafe {
        ptr::copy_nonoverlapping(body.as_ptr(), (*b).last, body.len());
        (*b).last = (*b).last.add(body.len());
        (*b).set_last_buf(1);
        (*b).set_last_in_chain(1);
    }
    let mut out = ngx_chain_t {
        buf: b,
        next: ptr::null_mut(),
    };
    // SAFETY: r is live; the filter chain copies the link (as stub_status).
    unsafe { ngx_http_output_filter(r, &mut out) }
}
