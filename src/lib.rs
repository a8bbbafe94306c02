//! ngx_http_dyncert_module: per-SNI TLS certificates from Redis, cached per
//! worker, chosen at handshake time without ever blocking the event loop.
//!
//! This file holds the module's statics in nginx order: the commands table,
//! the context, the module. The unsafe glue is in `shell/`, one file per
//! nginx concept, each registering its own handlers; the decisions are in
//! `dyncert_core`.

// The shell is where the unsafe code is: every unsafe operation sits in an
// unsafe block (inside unsafe fns too), and every block says which
// guarantee it relies on.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use core::ffi::{c_char, c_void};
use core::ptr;

use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_http_module_t, ngx_module_t, ngx_uint_t, NGX_CONF_1MORE,
    NGX_CONF_FLAG, NGX_CONF_NOARGS, NGX_CONF_TAKE1, NGX_CONF_TAKE12, NGX_CONF_TAKE123,
    NGX_CONF_TAKE2, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF,
    NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_MODULE, NGX_HTTP_SRV_CONF, NGX_HTTP_SRV_CONF_OFFSET,
};
use ngx::http::HttpModule;
use ngx::ngx_string;

mod shell;

/// The module's Rust allocations go to mimalloc, never to the glibc heap
/// that nginx and OpenSSL share (see Cargo.toml for why). Memory never
/// crosses between the two: what OpenSSL or nginx allocate they free, and
/// the module's connection data lives in nginx pools.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use shell::conf::Module;
use shell::{directives, lifecycle, metrics, variables};

const fn command(
    name: ngx::ffi::ngx_str_t,
    type_: u32,
    set: unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char,
    conf: usize,
) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: type_ as ngx_uint_t,
        set: Some(set),
        conf,
        offset: 0,
        post: ptr::null_mut(),
    }
}

static mut NGX_HTTP_DYNCERT_COMMANDS: [ngx_command_t; 32] = [
    command(
        ngx_string!("dyncert"),
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_CONF_FLAG,
        directives::ngx_http_dyncert,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_unknown"),
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_CONF_TAKE1,
        directives::ngx_http_dyncert_unknown,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_redis"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        directives::ngx_http_dyncert_redis,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_redis_tls_trusted_certificate"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        directives::ngx_http_dyncert_redis_tls_trusted_certificate,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_redis_tls_certificate"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE2,
        directives::ngx_http_dyncert_redis_tls_certificate,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_redis_prefix"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        directives::ngx_http_dyncert_redis_prefix,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_redis_timeout"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        directives::ngx_http_dyncert_redis_timeout,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_cache"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_1MORE,
        directives::ngx_http_dyncert_cache,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_shared_zone"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        directives::ngx_http_dyncert_shared_zone,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_key_references"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE123,
        directives::ngx_http_dyncert_key_references,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_key_decryption_key"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE2,
        directives::ngx_http_dyncert_key_decryption_key,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_key_encryption"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        directives::ngx_http_dyncert_key_encryption,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_rsa_max_bits"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        directives::ngx_http_dyncert_rsa_max_bits,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_fetch_timeout"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        directives::ngx_http_dyncert_fetch_timeout,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_fetch_concurrency"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        directives::ngx_http_dyncert_fetch_concurrency,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_api"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE123,
        directives::ngx_http_dyncert_api,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_api_header"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE2,
        directives::ngx_http_dyncert_api_header,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_api_timeout"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        directives::ngx_http_dyncert_api_timeout,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_api_trusted_certificate"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        directives::ngx_http_dyncert_api_trusted_certificate,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_invalidate_channel"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        directives::ngx_http_dyncert_invalidate_channel,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_expiry_index"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        directives::ngx_http_dyncert_expiry_index,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_metrics"),
        NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS,
        metrics::ngx_http_dyncert_metrics,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_allow"),
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_1MORE,
        directives::ngx_http_dyncert_allow,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_deny_status"),
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
        directives::ngx_http_dyncert_deny_status,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_tenant_policy"),
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_CONF_FLAG,
        directives::ngx_http_dyncert_tenant_policy,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_session_tickets"),
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_CONF_FLAG,
        directives::ngx_http_dyncert_session_tickets,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_session_ticket_rotate"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE12,
        directives::ngx_http_dyncert_session_ticket_rotate,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_acme_challenge"),
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_CONF_FLAG,
        directives::ngx_http_dyncert_acme_challenge,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_acme_prefix"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        directives::ngx_http_dyncert_acme_prefix,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_on_demand"),
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_CONF_FLAG,
        directives::ngx_http_dyncert_on_demand,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_on_demand_stream"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE12,
        directives::ngx_http_dyncert_on_demand_stream,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    ngx_command_t::empty(),
];

static NGX_HTTP_DYNCERT_MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(variables::ngx_http_dyncert_add_variables),
    postconfiguration: Some(lifecycle::ngx_http_dyncert_init),
    create_main_conf: Some(Module::create_main_conf),
    init_main_conf: None,
    create_srv_conf: Some(Module::create_srv_conf),
    merge_srv_conf: Some(Module::merge_srv_conf),
    create_loc_conf: Some(Module::create_loc_conf),
    merge_loc_conf: Some(Module::merge_loc_conf),
};

ngx::ngx_modules!(ngx_http_dyncert_module);

#[used]
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_dyncert_module: ngx_module_t = ngx_module_t {
    ctx: ptr::addr_of!(NGX_HTTP_DYNCERT_MODULE_CTX) as _,
    // SAFETY: taking the address of the static commands table.
    commands: unsafe { ptr::addr_of_mut!(NGX_HTTP_DYNCERT_COMMANDS[0]) },
    type_: NGX_HTTP_MODULE as _,
    init_module: Some(lifecycle::ngx_http_dyncert_init_module),
    init_process: Some(lifecycle::ngx_http_dyncert_init_process),
    exit_process: Some(lifecycle::ngx_http_dyncert_exit_process),
    ..ngx_module_t::default()
};
