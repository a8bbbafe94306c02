//! OpenSSL side of the handshake: the certificate callback that installs a
//! cached certificate, the ClientHello callback that binds sessions to
//! their name and record, and the server-name callback wrapper that
//! rejects unknown names. What they decide is recorded in `handshake.rs`.
//!
//! Every OpenSSL call is wrapped once and turned into a `Result`.

use core::ffi::{c_int, c_long, c_void};
use core::ptr;

use dyncert_core::clienthello::server_name_extension_host;
use dyncert_core::clock::{Clock, SystemClock};
use dyncert_core::name::normalize_sni;
use dyncert_core::outcome::CertSource;
use dyncert_core::tenant::{session_context, SESSION_CONTEXT_LEN};
use dyncert_core::validate::{ClientCa, ParsedCert};
use foreign_types::{ForeignType, ForeignTypeRef};
use ngx::ffi::{
    ngx_conf_t, ngx_connection_t, ngx_http_connection_t, ngx_http_core_srv_conf_t,
    ngx_http_ssl_servername, ngx_ssl_connection_index, SSL_CTX_callback_ctrl, SSL_CTX_set_cert_cb,
    SSL_certs_clear, SSL_ctrl, SSL_get_ex_data, SSL_use_PrivateKey, SSL_use_certificate, EVP_PKEY,
    SSL, SSL_AD_UNRECOGNIZED_NAME, SSL_CTRL_CHAIN_CERT, SSL_CTRL_SET_TLSEXT_SERVERNAME_CB, SSL_CTX,
    SSL_TLSEXT_ERR_ALERT_FATAL, SSL_TLSEXT_ERR_OK, X509,
};
use ngx::http::{HttpModuleServerConf, NgxHttpSslModule};

use super::boundary::guard;
use super::conf::{emerg, server_location, Module, Refused, SrvConf, Uses};
use super::handshake::{info_mut, servername, set_info};
use super::log::Log;
use super::state::with_worker;
use ngx::ffi::{
    SSL_CTX_get0_certificate, SSL_CTX_set_client_hello_cb, SSL_add_client_CA,
    SSL_client_hello_get0_ext, SSL_set_session_id_context, SSL_set_verify,
    SSL_CLIENT_HELLO_SUCCESS, SSL_CTRL_SET_VERIFY_CERT_STORE, SSL_VERIFY_PEER,
};

/// Installs the certificate callback on the SSL_CTX of every server with
/// `dyncert on` (postconfiguration), after checking that the server can
/// have it.
pub fn install_certificate_callbacks(
    cf: &mut ngx_conf_t,
    servers: &[&ngx_http_core_srv_conf_t],
) -> Result<(), Refused> {
    for &cscf in servers {
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
            return Err(emerg(
                cf,
                format_args!(
                    "\"dyncert on\" cannot be combined with variables in \"ssl_certificate\" in {}: \
                     both need the certificate callback and OpenSSL keeps only one",
                    server_location(cscf)
                ),
            ));
        }
        if sscf.ssl.ctx.is_null() {
            return Err(emerg(
                cf,
                format_args!(
                    "\"dyncert on\" needs a default \"ssl_certificate\" in {}",
                    server_location(cscf)
                ),
            ));
        }
        // SAFETY: the ctx and scf both live in this configuration cycle.
        unsafe { install_cert_cb(sscf.ssl.ctx, scf as *mut SrvConf) };
    }
    Ok(())
}

/// Installs the server-name and ClientHello callbacks that `dyncert_unknown
/// reject` and `dyncert_tenant_policy on` need, on every server's SSL_CTX:
/// a connection's initial SSL_CTX is its listener's default server's, and
/// OpenSSL runs that context's callbacks whichever server the name selects.
pub fn install_handshake_callbacks(servers: &[&ngx_http_core_srv_conf_t], uses: Uses) {
    for &cscf in servers {
        let (Some(sscf), Some(scf)) = (
            NgxHttpSslModule::server_conf(cscf),
            Module::server_conf_mut(cscf),
        ) else {
            continue;
        };
        if sscf.ssl.ctx.is_null() {
            continue;
        }
        if uses.reject {
            // SAFETY: the ctx lives in this configuration cycle.
            unsafe { install_servername_cb(sscf.ssl.ctx) };
        }
        if uses.tenant {
            // Sessions are bound to their name and record, so a session is
            // never resumed for another name or a replaced record.
            // SAFETY: the ctx and scf both live in this configuration cycle.
            unsafe { install_client_hello_cb(sscf.ssl.ctx, scf as *mut SrvConf) };
        }
    }
}

/// Turns an OpenSSL return code into a Result naming the call.
fn cvt(r: c_long, what: &'static str) -> Result<(), &'static str> {
    if r > 0 {
        Ok(())
    } else {
        Err(what)
    }
}

/// Installs `cert` on the connection in place of the server's default,
/// without parsing anything. SSL_certs_clear drops the default first so
/// OpenSSL cannot pick it for a client whose signature algorithms would
/// prefer the default's key type.
///
/// Returns whether a client certificate was requested (tenant policy and a
/// record with `client_ca`).
///
/// # Safety
/// `ssl` must be a live SSL object inside its certificate callback.
unsafe fn install(ssl: *mut SSL, cert: &ParsedCert, tenant: bool) -> Result<bool, &'static str> {
    // SSL_certs_clear(3) / SSL_use_certificate(3) / SSL_use_PrivateKey(3) /
    // SSL_add1_chain_cert(3): each takes its own reference.
    unsafe {
        // SAFETY: ssl is live.
        SSL_certs_clear(ssl);
        // SAFETY: the X509 outlives the call; OpenSSL up-refs it.
        cvt(
            SSL_use_certificate(ssl, cert.leaf.as_ptr() as *mut X509) as c_long,
            "SSL_use_certificate() failed",
        )?;
        // SAFETY: the EVP_PKEY outlives the call; OpenSSL up-refs it.
        cvt(
            SSL_use_PrivateKey(ssl, cert.key.as_ptr() as *mut EVP_PKEY) as c_long,
            "SSL_use_PrivateKey() failed",
        )?;
        for x in &cert.chain {
            // SAFETY: SSL_add1_chain_cert is SSL_ctrl(CHAIN_CERT, 1, x): up-refs x.
            cvt(
                SSL_ctrl(
                    ssl,
                    SSL_CTRL_CHAIN_CERT as c_int,
                    1,
                    x.as_ptr() as *mut c_void,
                ),
                "SSL_add1_chain_cert() failed",
            )?;
        }
    }
    if let Some(ca) = cert.policy.client_ca.as_ref().filter(|_| tenant) {
        // SAFETY: ssl is live; the store and CA certificates outlive the
        // calls, and OpenSSL takes its own references/copies.
        unsafe { request_client_certificate(ssl, ca) }?;
        return Ok(true);
    }
    Ok(false)
}

/// Asks this connection's client for a certificate issued by the tenant's
/// CAs only (SSL_set_verify(3), SSL_set1_verify_cert_store(3),
/// SSL_add_client_CA(3)). Verification failures do not abort the handshake:
/// the access handler answers 495/496 like nginx's `ssl_verify_client`.
///
/// # Safety
/// `ssl` must be a live SSL object inside its certificate callback.
unsafe fn request_client_certificate(ssl: *mut SSL, ca: &ClientCa) -> Result<(), &'static str> {
    unsafe {
        // SAFETY: SSL_set1_verify_cert_store is this ctrl; it up-refs the store.
        cvt(
            SSL_ctrl(
                ssl,
                SSL_CTRL_SET_VERIFY_CERT_STORE as c_int,
                1,
                ca.store.as_ptr() as *mut c_void,
            ),
            "SSL_set1_verify_cert_store() failed",
        )?;
        for c in &ca.certs {
            // SAFETY: copies the subject name into the SSL's CA list.
            cvt(
                SSL_add_client_CA(ssl, c.as_ptr() as *mut X509) as c_long,
                "SSL_add_client_CA() failed",
            )?;
        }
        // SAFETY: ssl is live; the callback is a plain function.
        SSL_set_verify(
            ssl,
            SSL_VERIFY_PEER as c_int,
            Some(ngx_http_dyncert_verify_callback),
        );
    }
    Ok(())
}

/// Keeps the handshake going whatever the verification result; the result
/// stays available through SSL_get_verify_result(3) for the access check
/// and `$ssl_client_verify` (the same approach as nginx's own callback).
unsafe extern "C" fn ngx_http_dyncert_verify_callback(
    _ok: c_int,
    _ctx: *mut ngx::ffi::X509_STORE_CTX,
) -> c_int {
    1
}

/// SSL_CTX_set_cert_cb(3) callback of servers with `dyncert on`.
///
/// # Safety
/// Called by OpenSSL during a handshake; `arg` is the server's SrvConf.
pub unsafe extern "C" fn ngx_http_dyncert_cert_cb(ssl: *mut SSL, arg: *mut c_void) -> c_int {
    guard("selecting a certificate", 0, || {
        // SAFETY: arg was set to the server's SrvConf, which lives as long as
        // the configuration cycle that owns the SSL_CTX.
        let scf = unsafe { (arg as *const SrvConf).as_ref() };
        let reject = scf.is_some_and(|s| s.rejects_unknown());
        let tenant = scf.is_some_and(|s| s.tenant_policy());
        // SAFETY: ssl is live for the duration of the callback.
        let Some(raw) = (unsafe { servername(ssl) }) else {
            unsafe { set_info(ssl, CertSource::Default, None, false) };
            return 1;
        };
        let Ok(name) = normalize_sni(raw) else {
            unsafe { set_info(ssl, CertSource::Default, None, false) };
            return if reject { 0 } else { 1 };
        };
        let now = SystemClock.now();
        let (cert, source) =
            with_worker(|w| w.for_handshake(&name, now)).unwrap_or((None, CertSource::Default));
        match cert {
            Some(cert) => match unsafe { install(ssl, &cert, tenant) } {
                Ok(requested) => {
                    unsafe { set_info(ssl, source, Some(&cert), requested) };
                    1
                }
                Err(what) => {
                    Log::cycle().alert(format_args!(
                        "dyncert: {what} while installing a certificate, name: \"{name}\""
                    ));
                    0
                }
            },
            None if reject => {
                unsafe { set_info(ssl, CertSource::Rejected, None, false) };
                0
            }
            None => {
                unsafe { set_info(ssl, CertSource::Default, None, false) };
                1
            }
        }
    })
}

/// SSL_CTX_set_client_hello_cb(3) callback, installed on every server of an
/// http block where some server has `dyncert_tenant_policy on`. It runs
/// before OpenSSL looks at the session the client offers, and binds the
/// connection's session id context to the server name asked for and the
/// record cached for it: a session made for another name, without a name,
/// or under another record has another context, and OpenSSL declines it
/// like a cache miss (TLS 1.2 session ids and tickets, TLS 1.3 tickets), so
/// the handshake continues as a full one with the tenant's own certificate.
///
/// # Safety
/// Called by OpenSSL during a handshake; `arg` is the SrvConf of the
/// server whose SSL_CTX the connection started with.
pub unsafe extern "C" fn ngx_http_dyncert_client_hello(
    ssl: *mut SSL,
    _al: *mut c_int,
    arg: *mut c_void,
) -> c_int {
    guard(
        "binding a TLS session to its name",
        SSL_CLIENT_HELLO_SUCCESS as c_int,
        || {
            // SAFETY: arg is a SrvConf of this configuration cycle.
            let Some(scf) = (unsafe { (arg as *const SrvConf).as_ref() }) else {
                return SSL_CLIENT_HELLO_SUCCESS as c_int;
            };
            let mut ext: *const u8 = ptr::null();
            let mut len = 0usize;
            // SAFETY: SSL_client_hello_get0_ext(3): a view of the extension
            // body, valid during the callback.
            let sni = unsafe {
                if SSL_client_hello_get0_ext(ssl, 0, &mut ext, &mut len) == 1 && !ext.is_null() {
                    server_name_extension_host(core::slice::from_raw_parts(ext, len))
                } else {
                    None
                }
            };
            let record = sni
                .and_then(|raw| normalize_sni(raw).ok())
                .and_then(|name| {
                    let now = SystemClock.now();
                    with_worker(|w| w.current(&name, now).map(|c| c.fingerprint)).flatten()
                });
            let ctx = session_context(&scf.session_salt, sni, record.as_ref());
            // SAFETY: ssl is live; SSL_set_session_id_context(3) copies
            // SESSION_CONTEXT_LEN (= SSL_MAX_SID_CTX_LENGTH) bytes.
            let ok = unsafe {
                SSL_set_session_id_context(ssl, ctx.as_ptr(), SESSION_CONTEXT_LEN as u32)
            } == 1;
            // SAFETY: ssl is live.
            if let (true, Some(info)) = (ok, unsafe { info_mut(ssl) }) {
                info.bound = Some(record);
                info.salt = scf.session_salt;
            }
            SSL_CLIENT_HELLO_SUCCESS as c_int
        },
    )
}

/// Wraps nginx's server-name callback so that `dyncert_unknown reject`
/// fails the handshake with an `unrecognized_name` alert (the certificate
/// callback can only fail with `internal_error`).
///
/// # Safety
/// Called by OpenSSL during a handshake with nginx's arguments.
pub unsafe extern "C" fn ngx_http_dyncert_servername(
    ssl: *mut SSL,
    ad: *mut c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: same contract as nginx's own callback, which we call first so
    // it selects the virtual server exactly as without dyncert.
    let rc = unsafe { ngx_http_ssl_servername(ssl as *mut _, ad, arg) };
    if rc != SSL_TLSEXT_ERR_OK as c_int {
        return rc;
    }
    guard("checking a server name", rc, || {
        // SAFETY: nginx stores the connection in the SSL ex_data slot.
        let c = unsafe { SSL_get_ex_data(ssl, ngx_ssl_connection_index) } as *mut ngx_connection_t;
        // SAFETY: during the handshake c->data is the ngx_http_connection_t.
        let Some(hc) = (unsafe { c.as_ref() })
            .and_then(|c| unsafe { (c.data as *mut ngx_http_connection_t).as_ref() })
        else {
            return rc;
        };
        let Some(scf) = Module::server_conf(hc) else {
            return rc;
        };
        if !scf.enabled() || !scf.rejects_unknown() {
            return rc;
        }
        // SAFETY: ssl is live.
        let Some(raw) = (unsafe { servername(ssl) }) else {
            return rc; // no SNI: the default certificate
        };
        let known = match normalize_sni(raw) {
            Ok(name) => {
                let now = SystemClock.now();
                with_worker(|w| w.has_certificate(&name, now)).unwrap_or(false)
            }
            Err(_) => false,
        };
        if known {
            return rc;
        }
        // SAFETY: c is live with an SSL connection (we are in its handshake).
        unsafe {
            if let Some(sc) = (*c).ssl.as_mut() {
                // Logged at info by nginx, like ssl_reject_handshake.
                sc.set_handshake_rejected(1);
            }
            set_info(ssl, CertSource::Rejected, None, false);
            *ad = SSL_AD_UNRECOGNIZED_NAME as c_int;
        }
        SSL_TLSEXT_ERR_ALERT_FATAL as c_int
    })
}

/// Installs the certificate callback on a dyncert server's SSL_CTX.
///
/// # Safety
/// `ctx` must be a live SSL_CTX; `conf` must outlive it.
unsafe fn install_cert_cb(ctx: *mut SSL_CTX, conf: *mut SrvConf) {
    // SAFETY: SSL_CTX_set_cert_cb(3); conf lives in the configuration pool
    // that also owns (and frees) the SSL_CTX.
    unsafe { SSL_CTX_set_cert_cb(ctx, Some(ngx_http_dyncert_cert_cb), conf as *mut c_void) };
}

/// Installs the ClientHello callback that binds sessions to their name and
/// record, with the salt of `conf`'s server (its default certificate).
///
/// # Safety
/// `ctx` must be a live SSL_CTX; `conf` must outlive it.
unsafe fn install_client_hello_cb(ctx: *mut SSL_CTX, conf: *mut SrvConf) {
    // SAFETY: the salt is the SHA-256 of the DER of the server's default
    // certificate, read while the configuration is loaded.
    unsafe {
        let leaf = SSL_CTX_get0_certificate(ctx);
        let der = if leaf.is_null() {
            Vec::new()
        } else {
            openssl::x509::X509Ref::from_ptr(leaf as *mut openssl_sys::X509)
                .to_der()
                .unwrap_or_default()
        };
        (*conf).session_salt = openssl::sha::sha256(&der);
        // SAFETY: SSL_CTX_set_client_hello_cb(3); conf lives in the
        // configuration pool that also owns the SSL_CTX.
        SSL_CTX_set_client_hello_cb(
            ctx,
            Some(ngx_http_dyncert_client_hello),
            conf as *mut c_void,
        );
    }
}

/// Replaces nginx's server-name callback with the wrapper above.
///
/// # Safety
/// `ctx` must be a live SSL_CTX of an http server.
unsafe fn install_servername_cb(ctx: *mut SSL_CTX) {
    type Cb = unsafe extern "C" fn(*mut SSL, *mut c_int, *mut c_void) -> c_int;
    let cb: Cb = ngx_http_dyncert_servername;
    // SAFETY: SSL_CTX_set_tlsext_servername_callback(3) is this ctrl; OpenSSL
    // stores the pointer as a generic function and calls it with the
    // (SSL*, int*, void*) signature.
    unsafe {
        SSL_CTX_callback_ctrl(
            ctx,
            SSL_CTRL_SET_TLSEXT_SERVERNAME_CB as c_int,
            Some(core::mem::transmute::<Cb, unsafe extern "C" fn()>(cb)),
        )
    };
}
