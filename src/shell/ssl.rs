//! OpenSSL side of the handshake: the certificate callback that installs a
//! cached certificate, the server-name callback wrapper that rejects unknown
//! names, and the per-connection record of where the certificate came from.
//!
//! Every OpenSSL call is wrapped once and turned into a `Result`.

use core::ffi::{c_int, c_long, c_void, CStr};
use core::ptr;
use std::sync::atomic::{AtomicI32, Ordering};

use dyncert_core::clienthello::server_name_extension_host;
use dyncert_core::clock::{Clock, SystemClock};
use dyncert_core::name::normalize_sni;
use dyncert_core::outcome::CertSource;
use dyncert_core::tenant::{session_context, SESSION_CONTEXT_LEN};
use dyncert_core::validate::{ClientCa, ParsedCert};
use foreign_types::{ForeignType, ForeignTypeRef};
use ngx::ffi::{
    ngx_conf_t, ngx_connection_t, ngx_http_connection_t, ngx_http_core_srv_conf_t,
    ngx_http_ssl_servername, ngx_ssl_connection_index, CRYPTO_get_ex_new_index,
    SSL_CTX_callback_ctrl, SSL_CTX_set_cert_cb, SSL_certs_clear, SSL_ctrl, SSL_get_ex_data,
    SSL_get_servername, SSL_session_reused, SSL_set_ex_data, SSL_use_PrivateKey,
    SSL_use_certificate, TLSEXT_NAMETYPE_host_name, CRYPTO_EX_INDEX_SSL, EVP_PKEY, SSL,
    SSL_AD_UNRECOGNIZED_NAME, SSL_CTRL_CHAIN_CERT, SSL_CTRL_SET_TLSEXT_SERVERNAME_CB, SSL_CTX,
    SSL_TLSEXT_ERR_ALERT_FATAL, SSL_TLSEXT_ERR_OK, X509,
};
use ngx::http::{HttpModuleServerConf, NgxHttpSslModule};

use super::boundary::guard;
use super::conf::{emerg, server_location, Module, Refused, SrvConf, Uses};
use super::log::Log;
use super::state::with_worker;
use super::{metrics, peek};
use core::mem::size_of;
use ngx::ffi::{
    ngx_palloc, SSL_CTX_get0_certificate, SSL_CTX_set_client_hello_cb, SSL_SESSION_set1_id_context,
    SSL_add_client_CA, SSL_client_hello_get0_ext, SSL_get_session, SSL_set_session_id_context,
    SSL_set_verify, SSL_CLIENT_HELLO_SUCCESS, SSL_CTRL_SET_VERIFY_CERT_STORE, SSL_VERIFY_PEER,
};

/// SSL ex_data slot holding a pointer to the connection's [`ConnInfo`]
/// (allocated from the connection pool). Allocated once per process in the
/// master.
static INFO_INDEX: AtomicI32 = AtomicI32::new(-1);

/// What dyncert knows about one connection's handshake (pool memory, plain
/// data): for the `$dyncert_*` variables and the tenant policy.
#[derive(Debug, Clone, Copy, Default)]
struct ConnInfo {
    /// Set by the certificate callback; None when it did not run (a
    /// resumed session, or a server without `dyncert on`).
    source: Option<CertSource>,
    /// notAfter of the certificate served (UNIX seconds), if dynamic.
    not_after: Option<u64>,
    /// Time the connection was parked waiting for a fetch (microseconds).
    waited_us: u64,
    /// Fingerprint of the record the certificate callback installed (None:
    /// the default certificate, or no callback).
    installed: Option<[u8; 32]>,
    /// The certificate callback asked for a client certificate against the
    /// installed record's CAs (so the handshake's verify result is theirs).
    client_ca_requested: bool,
    /// Set by the ClientHello callback: the record fingerprint the
    /// connection's session context is bound to (`Some(None)`: bound to
    /// "no record"), and the listener salt it was computed with.
    bound: Option<Option<[u8; 32]>>,
    salt: [u8; 32],
}

/// The `$dyncert_*` view of a connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnView {
    pub source: CertSource,
    pub not_after: Option<u64>,
    pub waited_us: u64,
}

/// What the tenant policy needs to know about a connection's handshake.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeFacts {
    /// The fingerprint of the record this connection is authenticated with:
    /// the one installed by a full handshake, or the one a resumed session
    /// was bound to. None: the default certificate, or unknown.
    pub record: Option<[u8; 32]>,
    /// The session was resumed (its client certificate, if any, was
    /// verified in an earlier handshake and must be verified again).
    pub resumed: bool,
    /// A full handshake asked for a client certificate against the
    /// installed record's CAs.
    pub client_ca_requested: bool,
}

/// Allocates the ex_data index (postconfiguration; once per process, the
/// index stays valid across reloads).
pub fn reserve_ex_index(cf: &mut ngx_conf_t) -> Result<(), Refused> {
    if INFO_INDEX.load(Ordering::Relaxed) >= 0 {
        return Ok(());
    }
    // SAFETY: plain OpenSSL call; NULL callbacks: the slot points into the
    // connection pool, which nginx frees, so OpenSSL must not.
    let idx = unsafe {
        CRYPTO_get_ex_new_index(
            CRYPTO_EX_INDEX_SSL as c_int,
            0,
            ptr::null_mut(),
            None,
            None,
            None,
        )
    };
    if idx < 0 {
        return Err(emerg(
            cf,
            format_args!("dyncert: cannot allocate an SSL ex_data index"),
        ));
    }
    INFO_INDEX.store(idx, Ordering::Relaxed);
    Ok(())
}

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

/// The connection's ConnInfo, allocated from its pool on first use.
///
/// # Safety
/// `ssl` must be a live SSL object of an nginx connection.
unsafe fn info_mut<'a>(ssl: *mut SSL) -> Option<&'a mut ConnInfo> {
    let idx = INFO_INDEX.load(Ordering::Relaxed);
    if idx < 0 {
        return None;
    }
    // SAFETY: the slot is NULL or a ConnInfo in the connection pool.
    let p = unsafe { SSL_get_ex_data(ssl, idx) } as *mut ConnInfo;
    if !p.is_null() {
        // SAFETY: see above; only the event loop thread touches it.
        return unsafe { p.as_mut() };
    }
    // SAFETY: nginx stores its connection in this ex_data slot.
    let c = unsafe { SSL_get_ex_data(ssl, ngx_ssl_connection_index) } as *mut ngx_connection_t;
    // SAFETY: c is NULL or the live connection owning ssl.
    let c = unsafe { c.as_ref() }?;
    // SAFETY: the pool lives as long as the connection, longer than its SSL.
    let p = unsafe { ngx_palloc(c.pool, size_of::<ConnInfo>()) } as *mut ConnInfo;
    if p.is_null() {
        return None;
    }
    // SAFETY: p is fresh, aligned pool memory for one ConnInfo (plain data,
    // nothing to drop); ssl is live.
    unsafe {
        p.write(ConnInfo::default());
        SSL_set_ex_data(ssl, idx, p as *mut c_void);
        p.as_mut()
    }
}

/// Records the certificate callback's decision on the connection, counts
/// the handshake, and rebinds the new session to what was installed.
///
/// # Safety
/// `ssl` must be a live SSL object of an nginx connection, inside its
/// certificate callback.
unsafe fn set_info(
    ssl: *mut SSL,
    source: CertSource,
    cert: Option<&ParsedCert>,
    client_ca_requested: bool,
) {
    metrics::count_handshake(source);
    // SAFETY: nginx stores its connection in this ex_data slot.
    let c = unsafe { SSL_get_ex_data(ssl, ngx_ssl_connection_index) } as *mut ngx_connection_t;
    // SAFETY: c is NULL or the live connection owning ssl.
    let waited_us = unsafe { c.as_ref() }.map_or(0, |c| peek::take_wait_time(c.number));
    let Some(info) = (unsafe { info_mut(ssl) }) else {
        return;
    };
    let installed = cert.map(|c| c.fingerprint);
    info.source = Some(source);
    info.not_after = cert.map(|c| c.not_after_ms / 1000);
    info.waited_us = waited_us;
    info.installed = installed;
    info.client_ca_requested = client_ca_requested;
    if let Some(bound) = info.bound {
        if bound != installed {
            // The ClientHello callback bound the session to the record
            // cached when the handshake started; bind it to what was
            // installed instead (the entry may have expired in between).
            let sni = unsafe { servername(ssl) };
            let ctx = session_context(&info.salt, sni, installed.as_ref());
            info.bound = Some(installed);
            // SAFETY: during the handshake SSL_get_session is the new
            // session; SSL_SESSION_set1_id_context(3) copies the bytes.
            unsafe {
                let sess = SSL_get_session(ssl);
                if !sess.is_null() {
                    SSL_SESSION_set1_id_context(sess, ctx.as_ptr(), ctx.len() as u32);
                }
            }
        }
    }
}

/// The connection's ConnInfo, if dyncert saw its handshake.
///
/// # Safety
/// `c` must be a live connection.
unsafe fn info_of(c: *mut ngx_connection_t) -> Option<(*mut SSL, Option<ConnInfo>)> {
    let ssl = unsafe { connection_ssl(c) }?;
    let idx = INFO_INDEX.load(Ordering::Relaxed);
    if idx < 0 {
        return Some((ssl, None));
    }
    // SAFETY: ssl is live; the slot is NULL or a ConnInfo in the pool.
    let p = unsafe { SSL_get_ex_data(ssl, idx) } as *const ConnInfo;
    Some((ssl, unsafe { p.as_ref() }.copied()))
}

/// What dyncert recorded for a connection, if it handled its handshake.
///
/// # Safety
/// `c` must be a live connection.
pub unsafe fn connection_info(c: *mut ngx_connection_t) -> Option<ConnView> {
    let (ssl, info) = unsafe { info_of(c) }?;
    // OpenSSL skips the certificate callback when it resumes a session.
    // SAFETY: ssl is live.
    let resumed = unsafe { SSL_session_reused(ssl) } == 1;
    let info = info.unwrap_or_default();
    let source = match info.source {
        Some(s) => s,
        None if resumed => CertSource::Resumed,
        None => return None,
    };
    Some(ConnView {
        source,
        not_after: info.not_after,
        waited_us: info.waited_us,
    })
}

/// The handshake facts the tenant policy decides on; None for a
/// connection without TLS.
///
/// # Safety
/// `c` must be a live connection.
pub unsafe fn handshake_facts(c: *mut ngx_connection_t) -> Option<HandshakeFacts> {
    let (ssl, info) = unsafe { info_of(c) }?;
    // SAFETY: ssl is live.
    let resumed = unsafe { SSL_session_reused(ssl) } == 1;
    let info = info.unwrap_or_default();
    Some(if resumed {
        // Only a session bound to this name and record resumes here (see
        // ngx_http_dyncert_client_hello); without a binding, nothing is
        // known about it.
        HandshakeFacts {
            record: info.bound.flatten(),
            resumed: true,
            client_ca_requested: false,
        }
    } else {
        HandshakeFacts {
            record: info.installed,
            resumed: false,
            client_ca_requested: info.client_ca_requested,
        }
    })
}

/// The SSL object of a connection.
///
/// # Safety
/// `c` must be a live connection.
pub unsafe fn ssl_of(c: *mut ngx_connection_t) -> Option<*mut SSL> {
    unsafe { connection_ssl(c) }
}

/// The raw SNI of a connection, if any.
///
/// # Safety
/// `c` must be a live connection; the slice lives as long as its SSL.
pub unsafe fn connection_sni<'a>(c: *mut ngx_connection_t) -> Option<&'a [u8]> {
    let ssl = unsafe { connection_ssl(c) }?;
    unsafe { servername(ssl) }
}

unsafe fn connection_ssl(c: *mut ngx_connection_t) -> Option<*mut SSL> {
    // SAFETY: c is live; c->ssl is NULL or nginx's ngx_ssl_connection_t.
    let sc = unsafe { c.as_ref()?.ssl.as_ref()? };
    (!sc.connection.is_null()).then_some(sc.connection)
}

/// SSL_get_servername(3): the host_name the client sent.
unsafe fn servername<'a>(ssl: *mut SSL) -> Option<&'a [u8]> {
    // SAFETY: ssl is live; the returned string is owned by the session.
    let p = unsafe { SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name as c_int) };
    if p.is_null() {
        return None;
    }
    // SAFETY: OpenSSL returns a NUL-terminated string.
    Some(unsafe { CStr::from_ptr(p) }.to_bytes())
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
