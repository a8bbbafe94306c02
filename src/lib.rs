//! ngx_http_dyncert_module: per-SNI TLS certificates from Redis, cached per
//! worker, chosen at handshake time without ever blocking the event loop.
//!
//! This file holds only the module statics and lifecycle, in nginx order:
//! commands, context, module, then the configuration-time hooks.

use core::ffi::{c_char, c_void};
use core::ptr;

use ngx::core::Status;
use ngx::ffi::{
    ngx_array_t, ngx_command_t, ngx_conf_t, ngx_cycle_t, ngx_http_conf_addr_t,
    ngx_http_conf_port_t, ngx_http_core_srv_conf_t, ngx_http_module_t, ngx_int_t, ngx_module_t,
    ngx_uint_t, NGX_CONF_1MORE, NGX_CONF_FLAG, NGX_CONF_NOARGS, NGX_CONF_TAKE1, NGX_CONF_TAKE12,
    NGX_CONF_TAKE2, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF,
    NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_MODULE, NGX_HTTP_SRV_CONF, NGX_HTTP_SRV_CONF_OFFSET,
    NGX_LOG_EMERG,
};
use ngx::http::{
    HttpModule, HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf,
    NgxHttpCoreModule, NgxHttpSslModule,
};
use ngx::{ngx_conf_log_error, ngx_string};

mod shell;

use dyncert_core::event_method::check_event_method;
use shell::conf::{LocConf, MainConf, SrvConf};
use shell::log::Log;
use shell::{access, acme, boundary, conf, lifecycle, metrics, peek, ssl, variables};

pub(crate) struct Module;

impl HttpModule for Module {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the module static is initialised at load time and only
        // mutated by nginx while loading configuration (single-threaded).
        unsafe { &*ptr::addr_of!(ngx_http_dyncert_module) }
    }

    unsafe extern "C" fn preconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        boundary::guard(
            "registering variables",
            Status::NGX_ERROR.into(),
            || unsafe { variables::add_variables(cf) },
        )
    }

    unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        boundary::guard("configuring servers", Status::NGX_ERROR.into(), || unsafe {
            postconfiguration(cf)
        })
    }
}

// SAFETY: create_main_conf/create_srv_conf allocate exactly these types.
unsafe impl HttpModuleMainConf for Module {
    type MainConf = MainConf;
}
// SAFETY: as above.
unsafe impl HttpModuleServerConf for Module {
    type ServerConf = SrvConf;
}
// SAFETY: create_loc_conf allocates exactly this type.
unsafe impl HttpModuleLocationConf for Module {
    type LocationConf = LocConf;
}

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

static mut NGX_HTTP_DYNCERT_COMMANDS: [ngx_command_t; 20] = [
    command(
        ngx_string!("dyncert"),
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_CONF_FLAG,
        conf::ngx_http_dyncert,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_unknown"),
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_CONF_TAKE1,
        conf::ngx_http_dyncert_unknown,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_redis"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        conf::ngx_http_dyncert_redis,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_redis_prefix"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        conf::ngx_http_dyncert_redis_prefix,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_redis_timeout"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        conf::ngx_http_dyncert_redis_timeout,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_cache"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_1MORE,
        conf::ngx_http_dyncert_cache,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_fetch_timeout"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        conf::ngx_http_dyncert_fetch_timeout,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_fetch_concurrency"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        conf::ngx_http_dyncert_fetch_concurrency,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_api"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE12,
        conf::ngx_http_dyncert_api,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_api_header"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE2,
        conf::ngx_http_dyncert_api_header,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_api_timeout"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        conf::ngx_http_dyncert_api_timeout,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_api_trusted_certificate"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        conf::ngx_http_dyncert_api_trusted_certificate,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_invalidate_channel"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        conf::ngx_http_dyncert_invalidate_channel,
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
        conf::ngx_http_dyncert_allow,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_deny_status"),
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
        conf::ngx_http_dyncert_deny_status,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_tenant_policy"),
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_CONF_FLAG,
        conf::ngx_http_dyncert_tenant_policy,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_acme_challenge"),
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_CONF_FLAG,
        conf::ngx_http_dyncert_acme_challenge,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("dyncert_acme_prefix"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        conf::ngx_http_dyncert_acme_prefix,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    ngx_command_t::empty(),
];

static NGX_HTTP_DYNCERT_MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(Module::preconfiguration),
    postconfiguration: Some(Module::postconfiguration),
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
    init_module: Some(ngx_http_dyncert_init_module),
    init_process: Some(lifecycle::ngx_http_dyncert_init_process),
    exit_process: Some(lifecycle::ngx_http_dyncert_exit_process),
    ..ngx_module_t::default()
};

/// Appends `handler` to an http phase (postconfiguration).
///
/// # Safety
/// `cf` must be the configuration being loaded.
unsafe fn add_phase_handler(
    cf: *mut ngx_conf_t,
    phase: ngx::ffi::ngx_http_phases,
    handler: unsafe extern "C" fn(*mut ngx::ffi::ngx_http_request_t) -> ngx_int_t,
) -> bool {
    let Some(cmcf) = NgxHttpCoreModule::main_conf_mut(unsafe { &*cf }) else {
        return false;
    };
    let handlers = &mut cmcf.phases[phase as usize].handlers;
    // SAFETY: a phase's handlers are an ngx_array_t of handler pointers.
    let h = unsafe { ngx::ffi::ngx_array_push(handlers) } as *mut ngx::ffi::ngx_http_handler_pt;
    if h.is_null() {
        return false;
    }
    // SAFETY: h points to a fresh element of the array.
    unsafe { *h = Some(handler) };
    true
}

fn array<T>(a: &ngx_array_t) -> &[T] {
    if a.elts.is_null() || a.nelts == 0 {
        return &[];
    }
    // SAFETY: an ngx_array_t of T holds nelts initialised elements.
    unsafe { core::slice::from_raw_parts(a.elts as *const T, a.nelts) }
}

/// Where a server block was defined, for error messages.
fn location(cscf: &ngx_http_core_srv_conf_t) -> String {
    if cscf.file_name.is_null() {
        return "a server block".into();
    }
    // SAFETY: nginx stores the NUL-terminated file name of the block.
    let f = unsafe { core::ffi::CStr::from_ptr(cscf.file_name as *const c_char) };
    format!("the server block at {}:{}", f.to_string_lossy(), cscf.line)
}

/// After all server configurations are merged: validate cross-directive
/// rules, install the OpenSSL callbacks, and record which listeners lead to
/// dyncert servers.
unsafe fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    let cf_ref = unsafe { &*cf };
    let Some(mcf) = Module::main_conf_mut(cf_ref) else {
        return Status::NGX_ERROR.into();
    };
    let Some(cmcf) = NgxHttpCoreModule::main_conf(cf_ref) else {
        return Status::NGX_ERROR.into();
    };
    if !ssl::init_ex_index() {
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "dyncert: cannot allocate an SSL ex_data index"
        );
        return Status::NGX_ERROR.into();
    }

    let servers: &[*mut ngx_http_core_srv_conf_t] = array(&cmcf.servers);
    mcf.server_names.clear();
    let mut any_acme = false;
    for (i, &cscf) in servers.iter().enumerate() {
        // SAFETY: cmcf->servers holds live server configurations.
        let cscf = unsafe { &*cscf };
        let name = &cscf.server_name;
        let name = if name.len == 0 || name.data.is_null() {
            "_".to_owned()
        } else {
            // SAFETY: nginx's ngx_str_t of the first server_name.
            String::from_utf8_lossy(unsafe { core::slice::from_raw_parts(name.data, name.len) })
                .into_owned()
        };
        mcf.server_names.push(name);
        if let Some(scf) = Module::server_conf_mut(cscf) {
            scf.server_index = i;
            any_acme |= scf.acme();
        }
    }
    let mut any_enabled = false;
    let mut any_reject = false;
    let mut any_tenant = false;
    for &cscf in servers {
        // SAFETY: cmcf->servers holds live server configurations.
        let cscf = unsafe { &*cscf };
        let (Some(scf), Some(sscf)) = (
            Module::server_conf_mut(cscf),
            NgxHttpSslModule::server_conf(cscf),
        ) else {
            continue;
        };
        if !scf.enabled() {
            continue;
        }
        if !sscf.certificate_values.is_null() {
            ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "\"dyncert on\" cannot be combined with variables in \"ssl_certificate\" in {}: \
                 both need the certificate callback and OpenSSL keeps only one",
                location(cscf)
            );
            return Status::NGX_ERROR.into();
        }
        if sscf.ssl.ctx.is_null() {
            ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "\"dyncert on\" needs a default \"ssl_certificate\" in {}",
                location(cscf)
            );
            return Status::NGX_ERROR.into();
        }
        // SAFETY: the ctx and scf both live in this configuration cycle.
        unsafe { ssl::install_cert_cb(sscf.ssl.ctx, scf as *mut SrvConf) };
        any_enabled = true;
        any_reject |= scf.rejects_unknown();
        any_tenant |= scf.tenant_policy();
    }

    // The peek leaves the ClientHello in the socket: a level-triggered event
    // method would report it readable forever (a busy loop).
    if any_enabled {
        // SAFETY: cf->cycle is the cycle being loaded.
        let method = unsafe { peek::event_method((*cf).cycle) };
        if let Some(Err(e)) = method.as_deref().map(check_event_method) {
            ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", e);
            return Status::NGX_ERROR.into();
        }
    }

    mcf.metrics_zone = None;
    if any_enabled || mcf.metrics_used {
        let Ok(zone) = (unsafe { metrics::add_zone(cf) }) else {
            return Status::NGX_ERROR.into();
        };
        mcf.metrics_zone = Some(zone);
        if !unsafe {
            add_phase_handler(
                cf,
                ngx::ffi::ngx_http_phases_NGX_HTTP_LOG_PHASE,
                metrics::ngx_http_dyncert_log_handler,
            )
        } {
            return Status::NGX_ERROR.into();
        }
    }
    if !unsafe {
        add_phase_handler(
            cf,
            ngx::ffi::ngx_http_phases_NGX_HTTP_ACCESS_PHASE,
            access::ngx_http_dyncert_access_handler,
        )
    } {
        return Status::NGX_ERROR.into();
    }
    if any_acme {
        if mcf.redis_url.is_none() {
            ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "\"dyncert_acme_challenge on\" needs \"dyncert_redis\": the answers are read from Redis"
            );
            return Status::NGX_ERROR.into();
        }
        if !unsafe {
            add_phase_handler(
                cf,
                ngx::ffi::ngx_http_phases_NGX_HTTP_POST_READ_PHASE,
                acme::ngx_http_dyncert_acme_handler,
            )
        } {
            return Status::NGX_ERROR.into();
        }
    }
    if !any_enabled {
        // Workers still need the fetcher to answer ACME challenges.
        mcf.enabled = any_acme;
        mcf.ports.clear();
        return Status::NGX_OK.into();
    }
    if mcf.redis_url.is_none() && mcf.api_template.is_none() {
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "\"dyncert on\" is set but neither \"dyncert_redis\" nor \"dyncert_api\" is: \
             dyncert has no certificate source"
        );
        return Status::NGX_ERROR.into();
    }
    mcf.enabled = true;

    // A connection's initial SSL_CTX is its listener's default server's,
    // and OpenSSL runs that context's ClientHello and server-name callbacks
    // whichever server the name selects: install them on every server.
    for &cscf in servers {
        // SAFETY: cmcf->servers holds live server configurations.
        let cscf = unsafe { &*cscf };
        let (Some(sscf), Some(scf)) = (
            NgxHttpSslModule::server_conf(cscf),
            Module::server_conf_mut(cscf),
        ) else {
            continue;
        };
        if sscf.ssl.ctx.is_null() {
            continue;
        }
        if any_reject {
            // SAFETY: the ctx lives in this configuration cycle.
            unsafe { ssl::install_servername_cb(sscf.ssl.ctx) };
        }
        if any_tenant {
            // Sessions are bound to their name and record, so a session is
            // never resumed for another name or a replaced record.
            // SAFETY: the ctx and scf both live in this configuration cycle.
            unsafe { ssl::install_client_hello_cb(sscf.ssl.ctx, scf as *mut SrvConf) };
        }
    }
    if any_tenant
        && !unsafe {
            add_phase_handler(
                cf,
                ngx::ffi::ngx_http_phases_NGX_HTTP_PREACCESS_PHASE,
                access::ngx_http_dyncert_tenant_handler,
            )
        }
    {
        return Status::NGX_ERROR.into();
    }

    // Ports whose ssl listeners lead to a dyncert server get the peek step.
    mcf.ports.clear();
    if !cmcf.ports.is_null() {
        let ports: &[ngx_http_conf_port_t] = array(unsafe { &*cmcf.ports });
        for port in ports {
            let addrs: &[ngx_http_conf_addr_t] = array(&port.addrs);
            for addr in addrs {
                if addr.opt.ssl() == 0 {
                    continue;
                }
                let servers: &[*mut ngx_http_core_srv_conf_t] = array(&addr.servers);
                let dyn_server = servers
                    .iter()
                    .any(|&s| Module::server_conf(unsafe { &*s }).is_some_and(|c| c.enabled()));
                let key = (port.family as i32, port.port);
                if dyn_server && !mcf.ports.contains(&key) {
                    mcf.ports.push(key);
                }
            }
        }
    }
    Status::NGX_OK.into()
}

/// init_module: runs in the master after the listening sockets of the new
/// cycle exist (at start and on every reload). A reload that fails earlier
/// (a zone, a `bind()`) never gets here, so this is where the new cycle's
/// state may replace the old one's in the master's memory.
unsafe extern "C" fn ngx_http_dyncert_init_module(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    boundary::guard("wrapping listeners", Status::NGX_ERROR.into(), || {
        // SAFETY: cycle is the cycle being initialised.
        let Some(mcf) = Module::main_conf(unsafe { &*cycle }) else {
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
        let n = unsafe { peek::wrap_listeners(cycle, &mcf.ports) };
        // SAFETY: cycle is the cycle being initialised.
        Log::of_cycle(unsafe { &*cycle }).notice(format_args!(
            "dyncert: ClientHello peek enabled on {n} listener(s)"
        ));
        Status::NGX_OK.into()
    })
}
