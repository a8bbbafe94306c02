//! `$dyncert_source`, `$dyncert_name`, `$dyncert_cert_not_after`,
//! `$dyncert_fetch_time` and `$dyncert_cert_type` for `log_format`,
//! `return`, `map` and friends.

use core::ptr;

use dyncert_core::name::normalize_sni;
use dyncert_core::timefmt::{rfc3339, seconds_ms};
use ngx::core::Status;
use ngx::ffi::{
    ngx_conf_t, ngx_http_add_variable, ngx_http_request_t, ngx_http_variable_value_t, ngx_int_t,
    ngx_pnalloc, ngx_str_t, NGX_HTTP_VAR_NOCACHEABLE,
};
use ngx::http::HttpModuleServerConf;

use super::boundary::guard;
use super::conf::Module;
use super::handshake::{connection_info, connection_sni, request_connection, served_cert_type};

const SOURCE: usize = 0;
const NAME: usize = 1;
const NOT_AFTER: usize = 2;
const FETCH_TIME: usize = 3;
const CERT_TYPE: usize = 4;

/// preconfiguration: registers the variables.
///
/// # Safety
/// Called by nginx with the configuration being loaded.
pub unsafe extern "C" fn ngx_http_dyncert_add_variables(cf: *mut ngx_conf_t) -> ngx_int_t {
    guard("registering variables", Status::NGX_ERROR.into(), || {
        // SAFETY: nginx passes the configuration being loaded, and nothing
        // else uses it while this runs.
        add_variables(unsafe { &mut *cf })
    })
}

fn add_variables(cf: &mut ngx_conf_t) -> ngx_int_t {
    let vars: [(&'static [u8], usize); 5] = [
        (b"dyncert_source", SOURCE),
        (b"dyncert_name", NAME),
        (b"dyncert_cert_not_after", NOT_AFTER),
        (b"dyncert_fetch_time", FETCH_TIME),
        (b"dyncert_cert_type", CERT_TYPE),
    ];
    for (name, which) in vars {
        let mut n = ngx_str_t {
            len: name.len(),
            data: name.as_ptr().cast_mut(),
        };
        // SAFETY: cf is the configuration being loaded; nginx copies the
        // name and returns its variable (NULL on error), in cf's pool.
        let v = unsafe { ngx_http_add_variable(cf, &mut n, NGX_HTTP_VAR_NOCACHEABLE as _) };
        // SAFETY: as above: NULL or a live variable, ours to fill in.
        let Some(v) = (unsafe { v.as_mut() }) else {
            return Status::NGX_ERROR.into();
        };
        v.get_handler = Some(ngx_http_dyncert_variable);
        v.data = which;
    }
    Status::NGX_OK.into()
}

fn set_not_found(v: &mut ngx_http_variable_value_t) {
    v.set_not_found(1);
    v.set_valid(0);
}

/// Copies `s` into the request pool and points `v` at it.
fn set_value(r: &ngx_http_request_t, v: &mut ngx_http_variable_value_t, s: &str) -> ngx_int_t {
    // SAFETY: r->pool is the live request's pool, which lives as long as
    // the request and the value.
    let p = unsafe { ngx_pnalloc(r.pool, s.len().max(1)) }.cast::<u8>();
    if p.is_null() {
        return Status::NGX_ERROR.into();
    }
    // SAFETY: p is fresh pool memory of at least s.len() bytes, which
    // cannot overlap s.
    unsafe { ptr::copy_nonoverlapping(s.as_ptr(), p, s.len()) };
    v.set_len(s.len() as u32);
    v.set_valid(1);
    v.set_no_cacheable(0);
    v.set_not_found(0);
    v.data = p;
    Status::NGX_OK.into()
}

/// # Safety
/// Called by nginx with a live request and value slot; `data` is one of
/// the constants above.
unsafe extern "C" fn ngx_http_dyncert_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    data: usize,
) -> ngx_int_t {
    guard(
        "evaluating a $dyncert_ variable",
        Status::NGX_ERROR.into(),
        || {
            // SAFETY: nginx passes a live request...
            let r = unsafe { &*r };
            // SAFETY: ...and the value slot to fill, which nothing else
            // refers to meanwhile.
            let v = unsafe { &mut *v };
            match value(r, data) {
                Some(s) => set_value(r, v, &s),
                None => {
                    set_not_found(v);
                    Status::NGX_OK.into()
                }
            }
        },
    )
}

/// The value of variable `data` for a request; None: not found.
fn value(r: &ngx_http_request_t, data: usize) -> Option<String> {
    // Only servers with dyncert on have anything to say.
    if !Module::server_conf(r).is_some_and(|s| s.enabled()) {
        return None;
    }
    let c = request_connection(r);
    if data == NAME {
        return connection_sni(c).and_then(|raw| normalize_sni(raw).ok());
    }
    if data == CERT_TYPE {
        return served_cert_type(c).map(|k| k.as_str().to_owned());
    }
    let info = connection_info(c)?;
    match data {
        SOURCE => Some(info.source.as_str().to_owned()),
        NOT_AFTER => info.not_after.map(rfc3339),
        FETCH_TIME => Some(seconds_ms(info.waited_us)),
        _ => None,
    }
}
