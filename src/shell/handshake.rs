//! What dyncert records about a connection's TLS handshake, in an SSL
//! ex_data slot: where its certificate came from, which record it was
//! authenticated with, how long it waited. The certificate and ClientHello
//! callbacks write it; the `$dyncert_*` variables and the tenant policy
//! read it.

use core::ffi::{c_int, c_void, CStr};
use core::mem::size_of;
use core::ptr;
use std::sync::atomic::{AtomicI32, Ordering};

use dyncert_core::outcome::CertSource;
use dyncert_core::tenant::session_context;
use dyncert_core::validate::ParsedCert;
use ngx::ffi::{
    ngx_conf_t, ngx_connection_t, ngx_palloc, ngx_ssl_connection_index, CRYPTO_get_ex_new_index,
    SSL_SESSION_set1_id_context, SSL_get_ex_data, SSL_get_servername, SSL_get_session,
    SSL_session_reused, SSL_set_ex_data, TLSEXT_NAMETYPE_host_name, CRYPTO_EX_INDEX_SSL, SSL,
};

use super::conf::{emerg, Refused};
use super::{metrics, peek};

/// SSL ex_data slot holding a pointer to the connection's [`ConnInfo`]
/// (allocated from the connection pool). Allocated once per process in the
/// master.
static INFO_INDEX: AtomicI32 = AtomicI32::new(-1);

/// What dyncert knows about one connection's handshake (pool memory, plain
/// data): for the `$dyncert_*` variables and the tenant policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnInfo {
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
    pub bound: Option<Option<[u8; 32]>>,
    pub salt: [u8; 32],
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

/// The connection's ConnInfo, allocated from its pool on first use.
///
/// # Safety
/// `ssl` must be a live SSL object of an nginx connection.
pub unsafe fn info_mut<'a>(ssl: *mut SSL) -> Option<&'a mut ConnInfo> {
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
pub unsafe fn set_info(
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
pub unsafe fn servername<'a>(ssl: *mut SSL) -> Option<&'a [u8]> {
    // SAFETY: ssl is live; the returned string is owned by the session.
    let p = unsafe { SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name as c_int) };
    if p.is_null() {
        return None;
    }
    // SAFETY: OpenSSL returns a NUL-terminated string.
    Some(unsafe { CStr::from_ptr(p) }.to_bytes())
}
