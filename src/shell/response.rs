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
    // SAFETY: the caller's contract: r is a live request.
    let rc = unsafe { ngx_http_discard_request_body(r) };
    if rc != NGX_OK as ngx_int_t {
        return rc;
    }
    {
        // SAFETY: r is live, and no other reference to it is held while
        // this one sets the response headers.
        let req = unsafe { &mut *r };
        req.headers_out.status = 200;
        req.headers_out.content_type.len = content_type.len();
        req.headers_out.content_type.data = content_type.as_ptr().cast_mut();
        req.headers_out.content_type_len = content_type.len();
        req.headers_out.content_length_n = body.len() as i64;
    }
    // SAFETY: r is live and its headers are set.
    let rc = unsafe { ngx_http_send_header(r) };
    // SAFETY: r is live; header_only is set by ngx_http_send_header.
    let header_only = unsafe { (*r).header_only() } != 0;
    if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || header_only {
        return rc;
    }
    // SAFETY: r is live.
    let pool = unsafe { (*r).pool };
    // SAFETY: pool is the request's, which lives until the response is
    // sent; ngx_create_temp_buf allocates the buffer from it.
    let b: *mut ngx_buf_t = unsafe { ngx_create_temp_buf(pool, body.len().max(1)) };
    // SAFETY: a non-NULL result is a fresh buffer of that pool, ours alone.
    let Some(buf) = (unsafe { b.as_mut() }) else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: the buffer has room for at least body.len() bytes from
    // `last`, and pool memory cannot overlap the body slice.
    unsafe { ptr::copy_nonoverlapping(body.as_ptr(), buf.last, body.len()) };
    // SAFETY: body.len() bytes past `last` are inside the buffer.
    buf.last = unsafe { buf.last.add(body.len()) };
    buf.set_last_buf(1);
    buf.set_last_in_chain(1);
    let mut out = ngx_chain_t {
        buf: b,
        next: ptr::null_mut(),
    };
    // SAFETY: r is live; the filter chain copies the link (as stub_status
    // does), so `out` may live on this stack frame.
    unsafe { ngx_http_output_filter(r, &mut out) }
}
