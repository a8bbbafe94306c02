//! `$dyncert_source`, `$dyncert_name`, `$dyncert_cert_not_after` and
//! `$dyncert_fetch_time` for `log_format`, `return`, `map` and friends.

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
use super::handshake::{connection_info, connection_sni};

const SOURCE: usize = 0;
const NAME: usize = 1;
const NOT_AFTER: usize = 2;
const FETCH_TIME: usize = 3;

/// preconfiguration: registers the variables.
///
/// # Safety
/// Called by nginx with the configuration being loaded.
pub unsafe extern "C" fn ngx_http_dyncert_add_variables(cf: *mut ngx_conf_t) -> ngx_int_t {
    guard("registering variables", Status::NGX_ERROR.into(), || {
        // SAFETY: nginx passes the configuration being loaded.
        unsafe { add_variables(cf) }
    })
}

/// # Safety
/// `cf` must be the configuration nginx passes to preconfiguration.
unsafe fn add_variables(cf: *mut ngx_conf_t) -> ngx_int_t {
    let vars: [(&'static [u8], usize); 4] = [
        (b"dyncert_source", SOURCE),
        (b"dyncert_name", NAME),
        (b"dyncert_cert_not_after", NOT_AFTER),
        (b"dyncert_fetch_time", FETCH_TIME),
    ];
    for (name, which) in vars {
        let mut n = ngx_str_t {
            len: name.len(),
            data: name.as_ptr() as *mut u8,
        };
        // SAFETY: cf is valid during preconfiguration; nginx copies the name.
        let v = unsafe { ngx_http_add_variable(cf, &mut n, NGX_HTTP_VAR_NOCACHEABLE as _) };
        if v.is_null() {
            return Status::NGX_ERROR.into();
        }
        // SAFETY: v was just returned non-null by ngx_http_add_variable.
        unsafe {
            (*v).get_handler = Some(ngx_http_dyncert_variable);
            (*v).data = which;
        }
    }
    Status::NGX_OK.into()
}

fn set_not_found(v: &mut ngx_http_variable_value_t) {
    v.set_not_found(1);
    v.set_valid(0);
}

/// Copies `s` into the request pool and points `v` at it.
fn set_value(r: &ngx_http_request_t, v: &mut ngx_http_variable_value_t, s: &str) -> ngx_int_t {
    // SAFETY: the request pool lives as long as the request.
    let p = unsafe { ngx_pnalloc(r.pool, s.len().max(1)) } as *mut u8;
    if p.is_null() {
        return Status::NGX_ERROR.into();
    }
    // SAFETY: p has s.len() bytes; the regions do not overlap.
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
            // SAFETY: nginx passes a valid request and value for its lifetime.
            let (r, v) = unsafe { (&*r, &mut *v) };
            // Only servers with dyncert on have anything to say.
            if !Module::server_conf(r).is_some_and(|s| s.enabled()) {
                set_not_found(v);
                return Status::NGX_OK.into();
            }
            let value = match data {
                NAME => {
                    unsafe { connection_sni(r.connection) }.and_then(|raw| normalize_sni(raw).ok())
                }
                _ => unsafe { connection_info(r.connection) }.and_then(|info| match data {
                    SOURCE => Some(info.source.as_str().to_owned()),
                    NOT_AFTER => info.not_after.map(rfc3339),
                    FETCH_TIME => Some(seconds_ms(info.waited_us)),
                    _ => None,
                }),
            };
            match value {
                Some(s) => set_value(r, v, &s),
                None => {
                    set_not_found(v);
                    Status::NGX_OK.into()
                }
            }
        },
    )
}
