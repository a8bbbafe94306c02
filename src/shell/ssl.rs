//! OpenSSL side of the handshake: the certificate callback that installs a
//! cached certificate, the ClientHello callback that binds sessions to
//! their name and record, and the server-name callback wrapper that
//! rejects unknown names. What they decide is recorded in `handshake.rs`.
//!
//! Every OpenSSL call is wrapped once and turned into a `Result`.

use core::ffi::{c_int, c_long, c_void};
use core::{ptr, slice};

use dyncert_core::clientca::MAX_CLIENT_CERTIFICATE_LIST;
use dyncert_core::clienthello::server_name_extension_host;
use dyncert_core::clock::{Clock, Millis, SystemClock};
use dyncert_core::name::normalize_sni_inline;
use dyncert_core::on_demand::Client;
use dyncert_core::outcome::{without_certificate, CertSource};
use dyncert_core::tenant::{
    configuration_digest, session_context, session_salt, ServerTls, SESSION_CONTEXT_LEN,
};
use dyncert_core::validate::{ClientCa, ParsedCert};
use dyncert_core::worker::{Selection, Tier};
use foreign_types::{ForeignType, ForeignTypeRef};
use ngx::ffi::{
    ngx_conf_t, ngx_connection_t, ngx_http_connection_t, ngx_http_core_srv_conf_t,
    ngx_http_ssl_servername, ngx_str_t, stack_st_X509, SSL_CTX_callback_ctrl,
    SSL_CTX_get_client_CA_list, SSL_CTX_set_cert_cb, SSL_CTX_set_client_hello_cb,
    SSL_add_client_CA, SSL_certs_clear, SSL_client_hello_get0_ext, SSL_ctrl,
    SSL_set_session_id_context, SSL_set_verify, SSL_use_cert_and_key, EVP_PKEY, SSL,
    SSL_AD_UNRECOGNIZED_NAME, SSL_CLIENT_HELLO_SUCCESS, SSL_CTRL_SET_MAX_CERT_LIST,
    SSL_CTRL_SET_TLSEXT_SERVERNAME_CB, SSL_CTRL_SET_VERIFY_CERT_STORE, SSL_CTX,
    SSL_TLSEXT_ERR_ALERT_FATAL, SSL_TLSEXT_ERR_OK, SSL_VERIFY_PEER, X509, X509_STORE_CTX,
};
use ngx::http::{HttpModuleServerConf, NgxHttpSslModule};
use openssl::ssl::SslContextRef;
use openssl::stack::StackRef;
use openssl::x509::{X509Name, X509Ref};

use super::boundary::guard;
use super::conf::{emerg, server_location, Module, Refused, SrvConf, Uses};
use super::handshake::{connection_of, on_demand_client, servername, set_binding, set_info};
use super::log::{core_line, debug, Log};
use super::state::with_worker;

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
        // SAFETY: the ctx is the server's live SSL_CTX; scf lives in the
        // same configuration, which frees both together.
        unsafe { install_cert_cb(sscf.ssl.ctx, scf) };
    }
    Ok(())
}

/// Installs the server-name and ClientHello callbacks that `dyncert_unknown
/// reject` and `dyncert_tenant_policy on` need, on every server's SSL_CTX:
/// a connection's initial SSL_CTX is its listener's default server's, and
/// OpenSSL runs that context's callbacks whichever server the name selects.
pub fn install_handshake_callbacks(servers: &[&ngx_http_core_srv_conf_t], uses: Uses) {
    // The ClientHello callback replaces the session id context nginx gave
    // each server (OpenSSL keeps a per-connection context across the
    // server-name switch), so the salt covers what those contexts cover,
    // for every server: whichever server the name selects, a reload that
    // changes its certificates or client CAs starts its sessions afresh.
    let configuration = uses.tenant.then(|| {
        let tls: Vec<_> = servers.iter().map(|&cscf| server_tls(cscf)).collect();
        configuration_digest(&tls)
    });
    for (index, &cscf) in servers.iter().enumerate() {
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
            // SAFETY: the ctx is the server's live SSL_CTX.
            unsafe { install_servername_cb(sscf.ssl.ctx) };
        }
        if let Some(configuration) = &configuration {
            // Sessions are bound to their name and record, so a session is
            // never resumed for another name or a replaced record.
            scf.session_salt = session_salt(configuration, index);
            // SAFETY: as for install_cert_cb above.
            unsafe { install_client_hello_cb(sscf.ssl.ctx, scf) };
        }
    }
}

/// What a server block's TLS configuration contributes to the session salt
/// (None without an SSL_CTX): what nginx's `ngx_ssl_session_id_context`
/// hashes (the loaded certificates, or their configured names when they
/// are loaded per handshake, and the client CA names) and the verification
/// settings and trusted certificates a client certificate was checked
/// against. Read at configuration time, before any handshake.
fn server_tls(cscf: &ngx_http_core_srv_conf_t) -> Option<ServerTls> {
    let sscf = NgxHttpSslModule::server_conf(cscf)?;
    if sscf.ssl.ctx.is_null() {
        return None;
    }
    // SAFETY: ngx_ssl_create initialised ssl.certs with one X509 pointer
    // per loaded `ssl_certificate` (ngx_ssl_certificate), which the SSL_CTX
    // keeps alive.
    let loaded = unsafe { sscf.ssl.certs.as_slice::<*mut X509>() };
    let mut certificates = Vec::with_capacity(loaded.len());
    for &x in loaded.iter().filter(|x| !x.is_null()) {
        // SAFETY: a live X509 of this configuration, borrowed for the call.
        let cert = unsafe { X509Ref::from_ptr(x.cast::<openssl_sys::X509>()) };
        certificates.extend(cert.to_der().ok());
    }
    // SAFETY: sscf.certificates is NULL or the array of `ssl_certificate`
    // values (ngx_str_t) of the merged configuration.
    let names = unsafe { sscf.certificates.as_ref() }.filter(|_| certificates.is_empty());
    let certificate_names = names
        // SAFETY: as above.
        .map(|a| unsafe { a.as_slice::<ngx_str_t>() })
        .unwrap_or_default()
        .iter()
        .map(|n| n.as_bytes().to_vec())
        .collect();
    // SAFETY: the ctx is the server's live SSL_CTX, borrowed for this call.
    let ctx = unsafe { SslContextRef::from_ptr(sscf.ssl.ctx.cast::<openssl_sys::SSL_CTX>()) };
    let verify_mode = ctx.verify_mode().bits();
    let verifies = verify_mode != 0;
    // SAFETY: ctx is live; SSL_CTX_get_client_CA_list(3) borrows its list
    // (NULL without one).
    let list = unsafe { SSL_CTX_get_client_CA_list(sscf.ssl.ctx) };
    let client_ca_names = if list.is_null() {
        Vec::new()
    } else {
        // SAFETY: a live STACK_OF(X509_NAME) owned by ctx, borrowed here.
        let list = unsafe { StackRef::<X509Name>::from_ptr(list.cast()) };
        list.iter().filter_map(|n| n.to_der().ok()).collect()
    };
    // X509_STORE_get1_all_certs(3): the store's certificates (its CRLs
    // are left out, as nginx leaves them out). Only when verifying.
    let trusted = if verifies {
        let all = ctx.cert_store().all_certificates();
        all.iter().filter_map(|c| c.to_der().ok()).collect()
    } else {
        Vec::new()
    };
    Some(ServerTls {
        certificates,
        certificate_names,
        verify_mode,
        verify_client: sscf.verify as u64,
        client_ca_names,
        trusted,
    })
}

/// Turns an OpenSSL return code into a Result naming the call.
fn cvt(r: c_long, what: &'static str) -> Result<(), &'static str> {
    if r > 0 {
        Ok(())
    } else {
        Err(what)
    }
}

/// Installs `cert` (and its second certificate, if any) on the connection
/// in place of the server's default,
/// without parsing anything. SSL_certs_clear drops the default first so
/// OpenSSL cannot pick it for a client whose signature algorithms would
/// prefer the default's key type. SSL_use_cert_and_key sets certificate,
/// key and chain in one call: one key-type lookup and one key check
/// (which OpenSSL runs on every install, whatever the call) instead of
/// one per `SSL_use_*` call, and no per-certificate chain calls.
///
/// Returns whether a client certificate was requested (tenant policy and a
/// record with `client_ca`).
///
/// # Safety
/// `ssl` must be a live SSL object inside its certificate callback.
unsafe fn install(ssl: *mut SSL, cert: &ParsedCert, tenant: bool) -> Result<bool, &'static str> {
    // SAFETY: ssl is live; SSL_certs_clear(3) drops its certificates.
    unsafe { SSL_certs_clear(ssl) };
    // SAFETY: ssl is live; SSL_use_cert_and_key(3) takes its own
    // references to the X509, the EVP_PKEY and each certificate of the
    // chain (it copies the stack), all of which outlive the call.
    let r = unsafe {
        SSL_use_cert_and_key(
            ssl,
            cert.leaf.as_ptr().cast::<X509>(),
            cert.key.as_ptr().cast::<EVP_PKEY>(),
            cert.chain.as_ptr().cast::<stack_st_X509>(),
            1,
        )
    };
    cvt(r.into(), "SSL_use_cert_and_key() failed")?;
    if let Some(second) = &cert.second {
        // The other key type goes to its own slot beside the first, as
        // with two `ssl_certificate` lines: OpenSSL picks one per
        // handshake by the client's signature algorithms and ciphers.
        // SAFETY: as above.
        let r = unsafe {
            SSL_use_cert_and_key(
                ssl,
                second.leaf.as_ptr().cast::<X509>(),
                second.key.as_ptr().cast::<EVP_PKEY>(),
                second.chain.as_ptr().cast::<stack_st_X509>(),
                1,
            )
        };
        cvt(
            r.into(),
            "SSL_use_cert_and_key() failed for the second certificate",
        )?;
    }
    if let Some(ca) = cert.policy.client_ca.as_ref().filter(|_| tenant) {
        // SAFETY: the caller's contract.
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
/// The client's Certificate message is held to
/// [`MAX_CLIENT_CERTIFICATE_LIST`] (SSL_set_max_cert_list(3)): OpenSSL
/// reads the limit when that message arrives, after this callback, and
/// fails the handshake on a longer one before parsing it, so no client can
/// make the worker check a chain of thousands of names against forged
/// name constraints.
///
/// # Safety
/// `ssl` must be a live SSL object inside its certificate callback.
unsafe fn request_client_certificate(ssl: *mut SSL, ca: &ClientCa) -> Result<(), &'static str> {
    // SAFETY: ssl is live; SSL_set_max_cert_list(3) is this ctrl, which
    // only stores the value.
    unsafe {
        SSL_ctrl(
            ssl,
            SSL_CTRL_SET_MAX_CERT_LIST as c_int,
            MAX_CLIENT_CERTIFICATE_LIST as c_long,
            ptr::null_mut(),
        )
    };
    // SAFETY: SSL_set1_verify_cert_store(3) is this ctrl with 1: it takes
    // its own reference to the store.
    let r = unsafe {
        SSL_ctrl(
            ssl,
            SSL_CTRL_SET_VERIFY_CERT_STORE as c_int,
            1,
            ca.store.as_ptr().cast::<c_void>(),
        )
    };
    cvt(r, "SSL_set1_verify_cert_store() failed")?;
    for c in &ca.certs {
        // SAFETY: ssl is live; SSL_add_client_CA(3) copies the subject name.
        let r = unsafe { SSL_add_client_CA(ssl, c.as_ptr().cast::<X509>()) };
        cvt(r.into(), "SSL_add_client_CA() failed")?;
    }
    // SAFETY: ssl is live; the callback is a plain function.
    unsafe {
        SSL_set_verify(
            ssl,
            SSL_VERIFY_PEER as c_int,
            Some(ngx_http_dyncert_verify_callback),
        )
    };
    Ok(())
}

/// Keeps the handshake going whatever the verification result; the result
/// stays available through SSL_get_verify_result(3) for the access check
/// and `$ssl_client_verify` (the same approach as nginx's own callback).
unsafe extern "C" fn ngx_http_dyncert_verify_callback(
    _ok: c_int,
    _ctx: *mut X509_STORE_CTX,
) -> c_int {
    1
}

/// SSL_CTX_set_cert_cb(3) callback of servers with `dyncert on`.
///
/// # Safety
/// Called by OpenSSL during a handshake; `arg` is the server's SrvConf.
unsafe extern "C" fn ngx_http_dyncert_cert_cb(ssl: *mut SSL, arg: *mut c_void) -> c_int {
    guard("selecting a certificate", 0, || {
        // SAFETY: arg is the SrvConf install_cert_cb gave this SSL_CTX; it
        // lives in the configuration that owns the SSL_CTX.
        let scf = unsafe { arg.cast::<SrvConf>().as_ref() };
        // SAFETY: OpenSSL passes the live SSL object of the handshake.
        unsafe { select_certificate(ssl, scf) }
    })
}

/// The certificate callback's work: the name's cached certificate, or the
/// server's default (or a failed handshake with `dyncert_unknown reject`).
/// Returns the callback's result (1: go on, 0: fail the handshake).
///
/// # Safety
/// `ssl` must be a live SSL object inside its certificate callback.
unsafe fn select_certificate(ssl: *mut SSL, scf: Option<&SrvConf>) -> c_int {
    let reject = scf.is_some_and(SrvConf::rejects_unknown);
    let tenant = scf.is_some_and(SrvConf::tenant_policy);
    // SAFETY: the caller's contract.
    let raw = unsafe { servername(ssl) };
    let Some(Ok(name)) = raw.map(normalize_sni_inline) else {
        // No SNI: the default certificate. An invalid one never causes a
        // lookup: the default, or the rejection.
        debug!(
            // SAFETY: the caller's contract.
            handshake_log(unsafe { connection_of(ssl) }),
            "dyncert: no valid SNI, no cache lookup"
        );
        let source = without_certificate(reject, raw.is_some());
        // SAFETY: the caller's contract.
        unsafe { set_info(ssl, source, None, false) };
        return c_int::from(source != CertSource::Rejected);
    };
    let now = SystemClock.now();
    // A QUIC handshake had no peek step to wait for a load: it may parse
    // the shared zone's record now (bounded and counted by the worker).
    // SAFETY: the caller's contract.
    let no_peek = unsafe { connection_of(ssl) }.is_some_and(|c| c.type_ == libc::SOCK_DGRAM);
    let Selection { cert, source, tier } =
        with_worker(|w| w.for_handshake_sync(&name, now, no_peek))
            .unwrap_or(Selection::default_for(Tier::Miss));
    debug!(
        // SAFETY: the caller's contract.
        handshake_log(unsafe { connection_of(ssl) }),
        "dyncert: cache lookup: {}, certificate: {}, name: \"{name}\"",
        tier.as_str(),
        cert.as_ref().map_or("none", |_| source.as_str())
    );
    let Some(cert) = cert else {
        if scf.is_some_and(SrvConf::on_demand) {
            // SAFETY: the caller's contract.
            on_demand(&name, on_demand_client(unsafe { connection_of(ssl) }), now);
        }
        let source = without_certificate(reject, true);
        // SAFETY: the caller's contract.
        unsafe { set_info(ssl, source, None, false) };
        return c_int::from(source != CertSource::Rejected);
    };
    // SAFETY: the caller's contract.
    match unsafe { install(ssl, &cert, tenant) } {
        Ok(requested) => {
            // SAFETY: the caller's contract.
            unsafe { set_info(ssl, source, Some(&cert), requested) };
            1
        }
        Err(what) => {
            // A record validation admitted that OpenSSL will not install
            // (a security level above the one validation judges, 2): the
            // handshake fails closed, as it must, but this is the tenant's
            // record, not a bug: counted, and logged at warn with OpenSSL's
            // reason at most once per name per 10 s. The error queue is
            // read (and emptied) whether or not a line is written.
            let errors = openssl::error::ErrorStack::get();
            super::metrics::add(
                super::metrics::layout().simple(dyncert_core::metrics::Simple::InstallFailures),
                1,
            );
            thread_local! {
                static INSTALL_LOG: core::cell::RefCell<dyncert_core::chainsec::InstallLog> =
                    core::cell::RefCell::default();
            }
            let due = INSTALL_LOG
                .try_with(|l| {
                    l.try_borrow_mut()
                        .ok()
                        .and_then(|mut l| l.allow(&name, now))
                })
                .ok()
                .flatten();
            if let Some(held) = due {
                let reasons: Vec<&str> =
                    errors.errors().iter().filter_map(|e| e.reason()).collect();
                let reasons = if reasons.is_empty() {
                    "no reason given".to_owned()
                } else {
                    reasons.join(", ")
                };
                let held = match held {
                    0 => String::new(),
                    n => format!(", {n} more since the last line"),
                };
                Log::cycle().warn(format_args!(
                    "dyncert: {what} while installing a certificate ({reasons}), the handshake \
                     fails (dyncert_install_failures_total{held}), name: \"{name}\""
                ));
            }
            0
        }
    }
}

/// A handshake from `client` on a server with `dyncert_on_demand on` got
/// no certificate for `name`: the core decides whether to queue it (once
/// per negative entry, within the client's budget), the fetcher thread
/// adds it to the stream.
fn on_demand(name: &str, client: Client, now: Millis) {
    let mut lines = Vec::new();
    with_worker(|w| w.on_demand(name, client, now, &mut |l, m| lines.push((l, m))));
    for (level, msg) in lines {
        core_line(level, &msg);
    }
}

/// The log of a handshake's connection (the cycle's without one).
fn handshake_log(c: Option<&ngx_connection_t>) -> Log {
    c.map_or_else(Log::cycle, Log::of)
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
unsafe extern "C" fn ngx_http_dyncert_client_hello(
    ssl: *mut SSL,
    _al: *mut c_int,
    arg: *mut c_void,
) -> c_int {
    guard(
        "binding a TLS session to its name",
        SSL_CLIENT_HELLO_SUCCESS as c_int,
        || {
            // SAFETY: arg is the SrvConf install_client_hello_cb gave this
            // SSL_CTX; it lives in the configuration that owns the SSL_CTX.
            if let Some(scf) = unsafe { arg.cast::<SrvConf>().as_ref() } {
                // SAFETY: OpenSSL passes the live SSL object of the
                // handshake, inside its ClientHello callback.
                unsafe { bind_session(ssl, scf) };
            }
            SSL_CLIENT_HELLO_SUCCESS as c_int
        },
    )
}

/// Binds the connection's session id context to the name the ClientHello
/// asks for and the record cached for it now.
///
/// # Safety
/// `ssl` must be a live SSL object inside its ClientHello callback.
unsafe fn bind_session(ssl: *mut SSL, scf: &SrvConf) {
    // SAFETY: the caller's contract.
    let sni = unsafe { client_hello_sni(ssl) };
    let record = sni
        .and_then(|raw| normalize_sni_inline(raw).ok())
        .and_then(|name| {
            let now = SystemClock.now();
            with_worker(|w| w.current(&name, now).map(|c| c.fingerprint)).flatten()
        });
    let ctx = session_context(&scf.session_salt, sni, record.as_ref());
    // SAFETY: ssl is live; SSL_set_session_id_context(3) copies
    // SESSION_CONTEXT_LEN (= SSL_MAX_SID_CTX_LENGTH) bytes.
    let r = unsafe { SSL_set_session_id_context(ssl, ctx.as_ptr(), SESSION_CONTEXT_LEN as u32) };
    if r == 1 {
        // SAFETY: the caller's contract.
        unsafe { set_binding(ssl, record, scf.session_salt) };
    }
}

/// The host name of the ClientHello's server_name extension, raw.
///
/// # Safety
/// `ssl` must be a live SSL object inside its ClientHello callback; the
/// slice is valid until the callback returns.
unsafe fn client_hello_sni<'a>(ssl: *mut SSL) -> Option<&'a [u8]> {
    let mut ext: *const u8 = ptr::null();
    let mut len = 0usize;
    // SAFETY: ssl is live inside its ClientHello callback;
    // SSL_client_hello_get0_ext(3) points ext at the extension's body.
    let found = unsafe { SSL_client_hello_get0_ext(ssl, 0, &mut ext, &mut len) } == 1;
    if !found || ext.is_null() {
        return None;
    }
    // SAFETY: ext points to len bytes that OpenSSL keeps until the
    // callback returns.
    server_name_extension_host(unsafe { slice::from_raw_parts(ext, len) })
}

/// Wraps nginx's server-name callback so that `dyncert_unknown reject`
/// fails the handshake with an `unrecognized_name` alert (the certificate
/// callback can only fail with `internal_error`).
///
/// # Safety
/// Called by OpenSSL during a handshake with nginx's arguments.
unsafe extern "C" fn ngx_http_dyncert_servername(
    ssl: *mut SSL,
    ad: *mut c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: same contract as nginx's own callback, which we call first so
    // it selects the virtual server exactly as without dyncert.
    let rc = unsafe { ngx_http_ssl_servername(ssl.cast(), ad, arg) };
    if rc != SSL_TLSEXT_ERR_OK as c_int {
        return rc;
    }
    guard("checking a server name", rc, || {
        // SAFETY: OpenSSL passes the live SSL object of the handshake, and
        // its alert slot.
        if unsafe { rejects_name(ssl) } {
            // SAFETY: ad is OpenSSL's alert slot for this callback.
            unsafe { *ad = SSL_AD_UNRECOGNIZED_NAME as c_int };
            return SSL_TLSEXT_ERR_ALERT_FATAL as c_int;
        }
        rc
    })
}

/// Whether `dyncert_unknown reject` refuses the name of this handshake
/// (after nginx selected the server by it); a refusal is recorded.
///
/// # Safety
/// `ssl` must be a live SSL object of an nginx connection, inside its
/// server-name callback.
unsafe fn rejects_name(ssl: *mut SSL) -> bool {
    // SAFETY: the caller's contract.
    let Some(c) = (unsafe { connection_of(ssl) }) else {
        return false;
    };
    // SAFETY: during the handshake c->data is the connection's
    // ngx_http_connection_t, whose server nginx's callback just set.
    let Some(hc) = (unsafe { c.data.cast::<ngx_http_connection_t>().as_ref() }) else {
        return false;
    };
    let Some(scf) = Module::server_conf(hc).filter(|s| s.enabled() && s.rejects_unknown()) else {
        return false;
    };
    // SAFETY: the caller's contract.
    let Some(raw) = (unsafe { servername(ssl) }) else {
        return false; // no SNI: the default certificate
    };
    let now = SystemClock.now();
    let name = normalize_sni_inline(raw).ok();
    let known = name
        .as_ref()
        .is_some_and(|name| with_worker(|w| w.has_certificate(name, now)).unwrap_or(false));
    if known {
        return false;
    }
    if let Some(name) = name.filter(|_| scf.on_demand()) {
        on_demand(&name, on_demand_client(Some(c)), now);
    }
    // SAFETY: c->ssl is the live ngx_ssl_connection_t of this handshake.
    if let Some(sc) = unsafe { c.ssl.as_mut() } {
        // Logged at info by nginx, like ssl_reject_handshake.
        sc.set_handshake_rejected(1);
    }
    // SAFETY: the caller's contract.
    unsafe { set_info(ssl, CertSource::Rejected, None, false) };
    true
}

/// Installs the certificate callback on a dyncert server's SSL_CTX.
///
/// # Safety
/// `ctx` must be a live SSL_CTX; `conf` must outlive it.
unsafe fn install_cert_cb(ctx: *mut SSL_CTX, conf: &mut SrvConf) {
    let arg = ptr::from_mut(conf).cast::<c_void>();
    // SAFETY: ctx is live; SSL_CTX_set_cert_cb(3) keeps arg, which
    // outlives the SSL_CTX (the caller's contract).
    unsafe { SSL_CTX_set_cert_cb(ctx, Some(ngx_http_dyncert_cert_cb), arg) };
}

/// Installs the ClientHello callback that binds sessions to their name and
/// record, with the salt set in `conf`.
///
/// # Safety
/// `ctx` must be a live SSL_CTX; `conf` must outlive it.
unsafe fn install_client_hello_cb(ctx: *mut SSL_CTX, conf: &mut SrvConf) {
    let arg = ptr::from_mut(conf).cast::<c_void>();
    // SAFETY: ctx is live; SSL_CTX_set_client_hello_cb(3) keeps arg, which
    // outlives the SSL_CTX (the caller's contract).
    unsafe { SSL_CTX_set_client_hello_cb(ctx, Some(ngx_http_dyncert_client_hello), arg) };
}

/// Replaces nginx's server-name callback with the wrapper above.
///
/// # Safety
/// `ctx` must be a live SSL_CTX of an http server.
unsafe fn install_servername_cb(ctx: *mut SSL_CTX) {
    type Cb = unsafe extern "C" fn(*mut SSL, *mut c_int, *mut c_void) -> c_int;
    let cb: Cb = ngx_http_dyncert_servername;
    // SAFETY: OpenSSL stores the callback as a generic function pointer and
    // calls it back with the (SSL *, int *, void *) signature it has.
    let cb = unsafe { core::mem::transmute::<Cb, unsafe extern "C" fn()>(cb) };
    // SAFETY: ctx is live; SSL_CTX_set_tlsext_servername_callback(3) is
    // this ctrl.
    unsafe { SSL_CTX_callback_ctrl(ctx, SSL_CTRL_SET_TLSEXT_SERVERNAME_CB as c_int, Some(cb)) };
}
