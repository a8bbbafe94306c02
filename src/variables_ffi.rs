//! `$dyncert_source` and `$dyncert_name` for `log_format`, `return`,
//! `map` and friends.

use core::ptr;

use dyncert_core::name::normalize_sni;
use ngx::core::Status;
use ngx::ffi::{
    ngx_conf_t, ngx_http_add_variable, ngx_http_request_t, ngx_http_variable_value_t, ngx_int_t,
    ngx_pnalloc, ngx_str_t, NGX_HTTP_VAR_NOCACHEABLE,
};

use crate::boundary_ffi::guard;
use crate::ssl_ffi::{connection_sni, connection_source};
use crate::Module;
use ngx::http::HttpModuleServerConf;

/// Registers the variables (preconfiguration).
///
/// # Safety
/// `cf` must be the configuration nginx passes to preconfiguration.
pub unsafe fn add_variables(cf: *mut ngx_conf_t) -> ngx_int_t {
    let vars: [(&'static [u8], VarHandler); 2] = [
        (b"dyncert_source", ngx_http_dyncert_source_variable),
        (b"dyncert_name", ngx_http_dyncert_name_variable),
    ];
    for (name, handler) in vars {
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
            (*v).get_handler = Some(handler);
            (*v).data = 0;
        }
    }
    Status::NGX_OK.into()
}

type VarHandler = unsafe extern "C" fn(
    *mut ngx_http_request_t,
    *mut ngx_http_variable_value_t,
    usize,
) -> ngx_int_t;

fn set_value(v: &mut ngx_http_variable_value_t, data: *mut u8, len: usize) {
    v.set_len(len as u32);
    v.set_valid(1);
    v.set_no_cacheable(0);
    v.set_not_found(0);
    v.data = data;
}

fn set_not_found(v: &mut ngx_http_variable_value_t) {
    v.set_not_found(1);
    v.set_valid(0);
}

/// # Safety
/// Called by nginx with a live request and value slot.
unsafe extern "C" fn ngx_http_dyncert_source_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    guard(
        "evaluating $dyncert_source",
        Status::NGX_ERROR.into(),
        || {
            // SAFETY: nginx passes a valid request and value for its lifetime.
            let (r, v) = unsafe { (&mut *r, &mut *v) };
            if !Module::server_conf(r).is_some_and(|s| s.enabled()) {
                set_not_found(v);
                return Status::NGX_OK.into();
            }
            match unsafe { connection_source(r.connection) } {
                Some(src) => {
                    let s: &'static str = src.as_str();
                    set_value(v, s.as_ptr() as *mut u8, s.len());
                }
                None => set_not_found(v),
            }
            Status::NGX_OK.into()
        },
    )
}

/// # Safety
/// Called by nginx with a live request and value slot.
unsafe extern "C" fn ngx_http_dyncert_name_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    guard("evaluating $dyncert_name", Status::NGX_ERROR.into(), || {
        // SAFETY: nginx passes a valid request and value for its lifetime.
        let (r, v) = unsafe { (&mut *r, &mut *v) };
        let name = unsafe { connection_sni(r.connection) }.and_then(|raw| normalize_sni(raw).ok());
        let Some(name) = name else {
            set_not_found(v);
            return Status::NGX_OK.into();
        };
        // SAFETY: the request pool lives as long as the request.
        let p = unsafe { ngx_pnalloc(r.pool, name.len()) } as *mut u8;
        if p.is_null() {
            return Status::NGX_ERROR.into();
        }
        // SAFETY: p has name.len() bytes; the regions do not overlap.
        unsafe { ptr::copy_nonoverlapping(name.as_ptr(), p, name.len()) };
        set_value(v, p, name.len());
        Status::NGX_OK.into()
    })
}
