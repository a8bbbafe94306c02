//! OpenSSL side of the handshake: the certificate callback that installs a
//! cached certificate, the server-name callback wrapper that rejects unknown
//! names, and the per-connection record of where the certificate came from.
//!
//! Every OpenSSL call is wrapped once and turned into a `Result`.

use core::ffi::{c_int, c_long, c_void, CStr};
use core::ptr;
use std::sync::atomic::{AtomicI32, Ordering};

use dyncert_core::cache::{Clock, SystemClock};
use dyncert_core::fetch::CertSource;
use dyncert_core::name::normalize_sni;
use dyncert_core::validate::{ClientCa, ParsedCert, TenantPolicy};
use foreign_types::ForeignType;
use ngx::ffi::{
    ngx_connection_t, ngx_http_connection_t, ngx_http_ssl_servername, ngx_ssl_connection_index,
    ngx_uint_t, CRYPTO_get_ex_new_index, SSL_CTX_callback_ctrl, SSL_CTX_set_cert_cb,
    SSL_certs_clear, SSL_ctrl, SSL_get_ex_data, SSL_get_servername, SSL_session_reused,
    SSL_set_ex_data, SSL_use_PrivateKey, SSL_use_certificate, TLSEXT_NAMETYPE_host_name,
    CRYPTO_EX_INDEX_SSL, EVP_PKEY, NGX_LOG_ALERT, SSL, SSL_AD_UNRECOGNIZED_NAME,
    SSL_CTRL_CHAIN_CERT, SSL_CTRL_SET_TLSEXT_SERVERNAME_CB, SSL_CTX, SSL_TLSEXT_ERR_ALERT_FATAL,
    SSL_TLSEXT_ERR_OK, X509,
};
use ngx::http::HttpModuleServerConf;
use std::sync::Arc;

use crate::boundary_ffi::{guard, log};
use crate::conf_ffi::SrvConf;
use crate::worker_ffi::with_worker;
use crate::Module;
use crate::{listener_ffi, metrics_ffi};
use core::mem::size_of;
use ngx::ffi::{
    ngx_palloc, ngx_pool_cleanup_add, SSL_SESSION_get0_hostname, SSL_add_client_CA,
    SSL_get_session, SSL_set_verify, SSL_AD_ACCESS_DENIED, SSL_CTRL_SET_VERIFY_CERT_STORE,
    SSL_VERIFY_PEER,
};

/// SSL ex_data slot holding a pointer to the connection's [`ConnInfo`]
/// (allocated from the connection pool). Allocated once per process in the
/// master.
static INFO_INDEX: AtomicI32 = AtomicI32::new(-1);

/// What dyncert decided for one connection, for the `$dyncert_*`
/// variables.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub source: CertSource,
    /// notAfter of the certificate served (UNIX seconds), if dynamic.
    pub not_after: Option<u64>,
    /// Time the connection was parked waiting for a fetch (microseconds).
    pub waited_us: u64,
    /// The served certificate when its tenant policy applies (one strong
    /// reference, released by a pool cleanup); NULL otherwise.
    pub policy: *const ParsedCert,
    /// A resumed session on a tenant-policy server whose name has no cached
    /// record: its policy is unknown, so requests are refused (421, which
    /// makes clients reconnect with a full handshake).
    pub policy_unknown: bool,
}

impl ConnInfo {
    /// The tenant policy recorded for the connection.
    pub fn tenant_policy(&self) -> Option<&TenantPolicy> {
        // SAFETY: policy is NULL or an Arc<ParsedCert> reference kept alive
        // until the connection pool is destroyed, which outlives requests.
        unsafe { self.policy.as_ref() }.map(|c| &c.policy)
    }
}

/// Pool cleanup dropping the connection's reference to its certificate.
unsafe extern "C" fn ngx_http_dyncert_release_policy(data: *mut c_void) {
    if !data.is_null() {
        // SAFETY: data came from Arc::into_raw in set_info, exactly once.
        drop(unsafe { Arc::from_raw(data as *const ParsedCert) });
    }
}

/// Allocates the ex_data index (idempotent across reloads).
pub fn init_ex_index() -> bool {
    if INFO_INDEX.load(Ordering::Relaxed) >= 0 {
        return true;
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
        return false;
    }
    INFO_INDEX.store(idx, Ordering::Relaxed);
    true
}

/// Records the decision on the connection and counts the handshake.
///
/// # Safety
/// `ssl` must be a live SSL object of an nginx connection.
unsafe fn set_info(
    ssl: *mut SSL,
    source: CertSource,
    cert: Option<&Arc<ParsedCert>>,
    tenant: bool,
) {
    metrics_ffi::count_handshake(source);
    let not_after = cert.map(|c| c.not_after_ms / 1000);
    let idx = INFO_INDEX.load(Ordering::Relaxed);
    if idx < 0 {
        return;
    }
    // SAFETY: nginx stores its connection in this ex_data slot.
    let c = unsafe { SSL_get_ex_data(ssl, ngx_ssl_connection_index) } as *mut ngx_connection_t;
    let Some(c) = (unsafe { c.as_ref() }) else {
        return;
    };
    let waited_us = listener_ffi::take_wait_time(c.number);
    // SAFETY: the pool lives as long as the connection, longer than its SSL.
    let p = unsafe { ngx_palloc(c.pool, size_of::<ConnInfo>()) } as *mut ConnInfo;
    if p.is_null() {
        return;
    }
    let mut policy = ptr::null();
    if let Some(cert) =
        cert.filter(|c| tenant && (c.policy.allow.is_some() || c.policy.client_ca.is_some()))
    {
        // SAFETY: the pool outlives every request of the connection.
        let cln = unsafe { ngx_pool_cleanup_add(c.pool, 0) };
        if let Some(cln) = unsafe { cln.as_mut() } {
            policy = Arc::into_raw(cert.clone());
            cln.handler = Some(ngx_http_dyncert_release_policy);
            cln.data = policy as *mut c_void;
        }
    }
    // SAFETY: p is fresh, aligned pool memory for one ConnInfo (plain data;
    // the policy reference is released by the cleanup above).
    unsafe {
        p.write(ConnInfo {
            source,
            not_after,
            waited_us,
            policy,
            policy_unknown: tenant && source == CertSource::Resumed && cert.is_none(),
        });
        SSL_set_ex_data(ssl, idx, p as *mut c_void);
    }
}

/// What dyncert recorded for a connection, if it handled its handshake.
///
/// # Safety
/// `c` must be a live connection.
pub unsafe fn connection_info(c: *mut ngx_connection_t) -> Option<ConnInfo> {
    let ssl = unsafe { connection_ssl(c) }?;
    let idx = INFO_INDEX.load(Ordering::Relaxed);
    if idx < 0 {
        return None;
    }
    // SAFETY: ssl is live; the slot is NULL or a ConnInfo in the pool.
    let p = unsafe { SSL_get_ex_data(ssl, idx) } as *const ConnInfo;
    match unsafe { p.as_ref() } {
        Some(info) => Some(*info),
        // OpenSSL skips the certificate callback when it resumes a session.
        // SAFETY: ssl is live.
        None if unsafe { SSL_session_reused(ssl) } == 1 => Some(ConnInfo {
            source: CertSource::Resumed,
            not_after: None,
            waited_us: 0,
            policy: ptr::null(),
            policy_unknown: false,
        }),
        None => None,
    }
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
/// # Safety
/// `ssl` must be a live SSL object inside its certificate callback.
unsafe fn install(ssl: *mut SSL, cert: &ParsedCert, tenant: bool) -> Result<(), &'static str> {
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
    }
    Ok(())
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
                Ok(()) => {
                    unsafe { set_info(ssl, source, Some(&cert), tenant) };
                    1
                }
                Err(what) => {
                    log(
                        NGX_LOG_ALERT as ngx_uint_t,
                        &format!(
                            "dyncert: {what} while installing a certificate, name: \"{name}\""
                        ),
                    );
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
        if !scf.enabled() || !(scf.rejects_unknown() || scf.tenant_policy()) {
            return rc;
        }
        // SAFETY: ssl is live.
        let raw = unsafe { servername(ssl) };
        if scf.tenant_policy() {
            if let Some(alert) = unsafe { check_resumption(ssl, raw) } {
                // SAFETY: c is live with an SSL connection (in its handshake).
                unsafe {
                    if let Some(sc) = (*c).ssl.as_mut() {
                        sc.set_handshake_rejected(1);
                    }
                    set_info(ssl, CertSource::Rejected, None, false);
                    *ad = alert;
                }
                return SSL_TLSEXT_ERR_ALERT_FATAL as c_int;
            }
        }
        if !scf.rejects_unknown() {
            return rc;
        }
        let Some(raw) = raw else {
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

/// What a resumed session may use as its tenant policy.
pub enum ResumedRecord {
    /// Not a resumed session (or no session yet).
    NotResumed,
    /// Made for another name: must not be used for this one.
    OtherName,
    /// The name's cached record (None: not cached, policy unknown).
    Cached(Option<Arc<ParsedCert>>),
}

/// Tenant policy and session resumption. OpenSSL skips the certificate
/// callback when it resumes a session, so the policy is never recorded by
/// it: a session is only good for the name it was made for (as nginx
/// requires for `ssl_verify_client`), and the name's cached record stands
/// in for the certificate callback's.
///
/// # Safety
/// `ssl` must be a live SSL object, in or after its server-name callback.
pub unsafe fn resumed_record(ssl: *mut SSL, sni: Option<&[u8]>) -> ResumedRecord {
    // SAFETY: the session is the one being resumed (its host name set) or
    // a new one (host name not yet set during the server-name callback).
    let sess = unsafe { SSL_get_session(ssl) };
    if sess.is_null() {
        return ResumedRecord::NotResumed;
    }
    let host = unsafe { SSL_SESSION_get0_hostname(sess) };
    if host.is_null() {
        return ResumedRecord::NotResumed;
    }
    // SAFETY: OpenSSL returns a NUL-terminated string owned by the session.
    let host = unsafe { CStr::from_ptr(host) }.to_bytes();
    if !sni.is_some_and(|s| s.eq_ignore_ascii_case(host)) {
        return ResumedRecord::OtherName;
    }
    ResumedRecord::Cached(normalize_sni(host).ok().and_then(|name| {
        let now = SystemClock.now();
        with_worker(|w| w.cached(&name, now)).flatten()
    }))
}

/// In the server-name callback of a tenant-policy server: refuses a TLS 1.3
/// session made for another name at once, and records the policy of a
/// resumed one. Returns the alert when the handshake must fail. (TLS 1.2
/// resumes after this callback; the access handler checks those.)
///
/// # Safety
/// `ssl` must be a live SSL object inside its server-name callback.
unsafe fn check_resumption(ssl: *mut SSL, sni: Option<&[u8]>) -> Option<c_int> {
    match unsafe { resumed_record(ssl, sni) } {
        ResumedRecord::NotResumed => None,
        ResumedRecord::OtherName => Some(SSL_AD_ACCESS_DENIED as c_int),
        ResumedRecord::Cached(cert) => {
            // SAFETY: ssl is live.
            unsafe { set_info(ssl, CertSource::Resumed, cert.as_ref(), true) };
            None
        }
    }
}

/// Installs the certificate callback on a dyncert server's SSL_CTX.
///
/// # Safety
/// `ctx` must be a live SSL_CTX; `conf` must outlive it.
pub unsafe fn install_cert_cb(ctx: *mut SSL_CTX, conf: *mut SrvConf) {
    // SAFETY: SSL_CTX_set_cert_cb(3); conf lives in the configuration pool
    // that also owns (and frees) the SSL_CTX.
    unsafe { SSL_CTX_set_cert_cb(ctx, Some(ngx_http_dyncert_cert_cb), conf as *mut c_void) };
}

/// Replaces nginx's server-name callback with the wrapper above.
///
/// # Safety
/// `ctx` must be a live SSL_CTX of an http server.
pub unsafe fn install_servername_cb(ctx: *mut SSL_CTX) {
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
