//! What dyncert records about a connection's TLS handshake, in an SSL
//! ex_data slot: where its certificate came from, which record it was
//! authenticated with, how long it waited. The certificate and ClientHello
//! callbacks write it; the `$dyncert_*` variables and the tenant policy
//! read it.

use core::ffi::{c_int, c_void, CStr};
use core::mem::size_of;
use core::ptr;
use std::sync::atomic::{AtomicI32, Ordering};

use dyncert_core::on_demand::{Client, Transport};
use dyncert_core::outcome::CertSource;
use dyncert_core::tenant::{session_context, KeptVerdict};
use dyncert_core::validate::{KeyKind, ParsedCert};
use foreign_types::ForeignTypeRef;
use ngx::ffi::{
    ngx_conf_t, ngx_connection_t, ngx_http_request_t, ngx_palloc, ngx_ssl_connection_index,
    CRYPTO_get_ex_new_index, SSL_SESSION_set1_id_context, SSL_get_certificate, SSL_get_ex_data,
    SSL_get_servername, SSL_get_session, SSL_session_reused, SSL_set_ex_data,
    TLSEXT_NAMETYPE_host_name, CRYPTO_EX_INDEX_SSL, SSL,
};
use openssl::x509::X509Ref;

use super::conf::{emerg, Refused};
use super::{metrics, peek};

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
    /// The tenant policy's verdict on the connection's client certificate,
    /// judged at its first request (`tenant::judge_once`).
    client_verdict: Option<KeptVerdict>,
}

/// The `$dyncert_*` view of a connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnView {
    pub source: CertSource,
    pub not_after: Option<u64>,
    pub waited_us: u64,
}

/// The key type of the certificate the connection was served, when it was
/// a dynamic one (`$dyncert_cert_type`); None for the default certificate,
/// a resumed session, or a connection without TLS.
pub fn served_cert_type(c: &ngx_connection_t) -> Option<KeyKind> {
    let (ssl, info) = info_of(c)?;
    info?.installed?;
    // SAFETY: ssl is c's live SSL object. SSL_get_certificate(3) returns
    // the certificate chosen for the handshake (OpenSSL points the
    // current slot at it), NULL or owned by ssl: not freed here.
    let leaf = unsafe { SSL_get_certificate(ssl) };
    if leaf.is_null() {
        return None;
    }
    // SAFETY: leaf is non-NULL and lives as long as ssl; only borrowed.
    let leaf = unsafe { X509Ref::from_ptr(leaf.cast()) };
    let key = leaf.public_key().ok()?;
    KeyKind::of(&key)
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
    /// The verdict on the client certificate an earlier request of the
    /// connection got.
    pub client_verdict: Option<KeptVerdict>,
}

/// Allocates the ex_data index (postconfiguration; once per process, the
/// index stays valid across reloads).
pub fn reserve_ex_index(cf: &mut ngx_conf_t) -> Result<(), Refused> {
    if INFO_INDEX.load(Ordering::Relaxed) >= 0 {
        return Ok(());
    }
    // SAFETY: CRYPTO_get_ex_new_index(3) takes no pointer to keep but the
    // NULL callbacks: the slot points into the connection pool, which
    // nginx frees, so OpenSSL must neither copy nor free it.
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

/// The nginx connection that owns `ssl`.
///
/// # Safety
/// `ssl` must be a live SSL object of an nginx connection.
pub unsafe fn connection_of<'a>(ssl: *mut SSL) -> Option<&'a ngx_connection_t> {
    // SAFETY: nginx sets its ex_data index once, at startup, before any
    // connection exists.
    let index = unsafe { ngx_ssl_connection_index };
    // SAFETY: ssl is live; nginx stores its connection in that slot
    // (ngx_ssl_create_connection).
    let c = unsafe { SSL_get_ex_data(ssl, index) };
    // SAFETY: the slot is NULL or the live connection that owns ssl, which
    // outlives it.
    unsafe { c.cast::<ngx_connection_t>().as_ref() }
}

/// Who made a handshake, for the on-demand enqueue budget: gathers the
/// PROXY protocol source, the peer address and the transport, and
/// [`Client::of`] decides. Over TCP nginx read the PROXY header before the
/// handshake (realip's `set_real_ip_from` only applies to requests, later)
/// and `c->sockaddr` is still the peer's address. A QUIC handshake's
/// address is validated only on a listener with `quic_retry on`
/// ([`quic_address_validated`]).
///
/// The PROXY source is taken from any peer, as nginx itself does on such a
/// listener: the rule (README, "Which address") is that only the balancer
/// may reach a `proxy_protocol` port. realip's `set_real_ip_from` is not
/// consulted: realip is an optional module whose configuration type is
/// private to it, so reading it means copying its layout. What a client
/// that breaks the rule gains is bounded by the core: its forged sources
/// get a budget per /24 or /48, and a full table refuses nobody
/// ([`dyncert_core::on_demand::AddressBudget`]), so it can flood the stream
/// as if there were no budget but cannot keep other clients' names out.
pub fn on_demand_client(c: Option<&ngx_connection_t>) -> Client {
    let Some(c) = c else {
        return Client::Local;
    };
    let transport = match c.type_ {
        libc::SOCK_DGRAM if quic_address_validated(c) => Transport::QuicValidated,
        libc::SOCK_DGRAM => Transport::Quic,
        _ => Transport::Tcp,
    };
    // SAFETY: c->proxy_protocol is NULL or the PROXY header nginx parsed
    // into the connection's pool, which outlives the handshake.
    let proxy_src = unsafe { c.proxy_protocol.as_ref() }.map(|pp| pp.src_addr.as_bytes());
    Client::of(proxy_src, super::access::client_ip(c), transport)
}

/// Whether nginx validated the address of a QUIC connection before its
/// handshake: `quic_retry` of its listener's default server, the
/// configuration `ngx_http_v3_init_stream` handed to `ngx_quic_run`. With
/// it on, `ngx_quic_handle_new_connection` answers every Initial without a
/// valid token (bound to the client's address) with a Retry and creates no
/// connection, so the certificate callback never runs for one. The server
/// the SNI selects does not count: its `quic_retry` was never applied.
/// (nginx's own per-connection flag, `qc->validated`, is in a private
/// structure the bindings do not have.)
#[cfg(ngx_feature = "http_v3")]
fn quic_address_validated(c: &ngx_connection_t) -> bool {
    use ngx::ffi::{ngx_http_connection_t, ngx_http_v3_srv_conf_t};
    let Some(index) = module_ctx_index(c"ngx_http_v3_module") else {
        return false;
    };
    // SAFETY: c is the main connection of an HTTP/3 QUIC connection, whose
    // data ngx_http_init_connection set to its ngx_http_connection_t (the
    // same cast as in the ClientHello callback).
    let Some(hc) = (unsafe { c.data.cast::<ngx_http_connection_t>().as_ref() }) else {
        return false;
    };
    // SAFETY: hc->addr_conf is the listening address's configuration, set
    // by ngx_http_init_connection and kept in the cycle's pool.
    let Some(addr) = (unsafe { hc.addr_conf.as_ref() }) else {
        return false;
    };
    if addr.quic() == 0 {
        return false;
    }
    // SAFETY: the default server of an address is a core server
    // configuration of the cycle.
    let Some(cscf) = (unsafe { addr.default_server.as_ref() }) else {
        return false;
    };
    // SAFETY: a server's ctx holds one srv_conf slot per HTTP module; the
    // v3 module's is its ngx_http_v3_srv_conf_t (ngx_http_get_module_srv_conf).
    let h3scf = unsafe {
        cscf.ctx
            .as_ref()
            .map(|ctx| (*ctx.srv_conf.add(index)).cast::<ngx_http_v3_srv_conf_t>())
    };
    // SAFETY: NULL or the merged configuration, which lives with the cycle.
    h3scf
        .and_then(|p| unsafe { p.as_ref() })
        .is_some_and(|h3| h3.quic.retry == 1)
}

#[cfg(not(ngx_feature = "http_v3"))]
fn quic_address_validated(_c: &ngx_connection_t) -> bool {
    false
}

/// The ctx_index of the module named `name` in the running cycle, looked
/// up by name rather than through its symbol, so that the module still
/// loads into an nginx built without it (`--with-compat`).
#[cfg(ngx_feature = "http_v3")]
fn module_ctx_index(name: &CStr) -> Option<usize> {
    // SAFETY: ngx_cycle is the worker's live cycle; its modules array has
    // modules_n entries, each a live ngx_module_t.
    let cycle = unsafe { ngx::ffi::ngx_cycle.as_ref() }?;
    if cycle.modules.is_null() {
        return None;
    }
    // SAFETY: as above.
    let modules = unsafe { core::slice::from_raw_parts(cycle.modules, cycle.modules_n) };
    modules.iter().find_map(|&m| {
        // SAFETY: a live module of the cycle.
        let m = unsafe { m.as_ref() }?;
        // SAFETY: a module's name is NULL or a static NUL-terminated string
        // (ngx_module_names, or the dynamic module's own).
        let found = !m.name.is_null() && unsafe { CStr::from_ptr(m.name) } == name;
        found.then_some(m.ctx_index)
    })
}

/// The connection's ConnInfo, allocated from its pool on first use.
///
/// # Safety
/// `ssl` must be a live SSL object of an nginx connection, and no other
/// reference to its ConnInfo may be alive.
unsafe fn info_mut<'a>(ssl: *mut SSL) -> Option<&'a mut ConnInfo> {
    let idx = INFO_INDEX.load(Ordering::Relaxed);
    if idx < 0 {
        return None;
    }
    // SAFETY: ssl is live; our slot is NULL or a ConnInfo that this
    // function put in the connection pool.
    let p = unsafe { SSL_get_ex_data(ssl, idx) }.cast::<ConnInfo>();
    if !p.is_null() {
        // SAFETY: as above, and the caller holds no other reference to it
        // (only the event loop thread touches a connection).
        return unsafe { p.as_mut() };
    }
    // SAFETY: ssl is a live SSL object of an nginx connection.
    let c = unsafe { connection_of(ssl) }?;
    // SAFETY: the pool lives as long as the connection, longer than its SSL.
    let p = unsafe { ngx_palloc(c.pool, size_of::<ConnInfo>()) }.cast::<ConnInfo>();
    if p.is_null() {
        return None;
    }
    // SAFETY: p is fresh pool memory, aligned (ngx_palloc aligns to
    // NGX_ALIGNMENT) and large enough for one ConnInfo, which is plain
    // data with nothing to drop.
    unsafe { p.write(ConnInfo::default()) };
    // SAFETY: ssl is live; the slot keeps a pointer OpenSSL never frees
    // (no free callback, see reserve_ex_index).
    unsafe { SSL_set_ex_data(ssl, idx, p.cast::<c_void>()) };
    // SAFETY: p was just initialised, and nothing else refers to it yet.
    unsafe { p.as_mut() }
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
    // SAFETY: the caller's contract.
    let waited_us = unsafe { connection_of(ssl) }.map_or(0, |c| peek::take_wait_time(c.number));
    // SAFETY: the caller's contract; no other ConnInfo reference is alive.
    let Some(info) = (unsafe { info_mut(ssl) }) else {
        return;
    };
    let installed = cert.map(|c| c.fingerprint);
    info.source = Some(source);
    info.not_after = cert.map(|c| c.not_after_ms / 1000);
    info.waited_us = waited_us;
    info.installed = installed;
    info.client_ca_requested = client_ca_requested;
    if info.bound.is_some_and(|bound| bound != installed) {
        // The ClientHello callback bound the session to the record cached
        // when the handshake started; bind it to what was installed
        // instead (the entry may have expired in between).
        // SAFETY: the caller's contract.
        let sni = unsafe { servername(ssl) };
        let ctx = session_context(&info.salt, sni, installed.as_ref());
        info.bound = Some(installed);
        // SAFETY: ssl is live; during the handshake SSL_get_session(3) is
        // the session being made (or NULL).
        let session = unsafe { SSL_get_session(ssl) };
        if !session.is_null() {
            // SAFETY: session is live; SSL_SESSION_set1_id_context(3)
            // copies the bytes.
            unsafe { SSL_SESSION_set1_id_context(session, ctx.as_ptr(), ctx.len() as u32) };
        }
    }
}

/// Records the record fingerprint (or none) that the ClientHello callback
/// bound the connection's session context to, and the listener salt it
/// used.
///
/// # Safety
/// `ssl` must be a live SSL object of an nginx connection, inside its
/// ClientHello callback.
pub unsafe fn set_binding(ssl: *mut SSL, record: Option<[u8; 32]>, salt: [u8; 32]) {
    // SAFETY: the caller's contract; no other ConnInfo reference is alive.
    if let Some(info) = unsafe { info_mut(ssl) } {
        info.bound = Some(record);
        info.salt = salt;
    }
}

/// The connection's SSL object and ConnInfo, if it has TLS.
fn info_of(c: &ngx_connection_t) -> Option<(*mut SSL, Option<ConnInfo>)> {
    let ssl = ssl_of(c)?;
    let idx = INFO_INDEX.load(Ordering::Relaxed);
    if idx < 0 {
        return Some((ssl, None));
    }
    // SAFETY: ssl is the live SSL object of c; our slot is NULL or a
    // ConnInfo in the connection pool.
    let p = unsafe { SSL_get_ex_data(ssl, idx) }.cast::<ConnInfo>();
    // SAFETY: as above; copied out at once, no reference kept.
    Some((ssl, unsafe { p.as_ref() }.copied()))
}

/// Whether the connection's TLS session was resumed: OpenSSL then skips
/// the certificate callback.
fn resumed(ssl: *mut SSL) -> bool {
    // SAFETY: ssl comes from ssl_of, the live SSL object of a connection.
    unsafe { SSL_session_reused(ssl) == 1 }
}

/// What dyncert recorded for a connection, if it handled its handshake.
pub fn connection_info(c: &ngx_connection_t) -> Option<ConnView> {
    let (ssl, info) = info_of(c)?;
    let info = info.unwrap_or_default();
    let source = match info.source {
        Some(s) => s,
        None if resumed(ssl) => CertSource::Resumed,
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
pub fn handshake_facts(c: &ngx_connection_t) -> Option<HandshakeFacts> {
    let (ssl, info) = info_of(c)?;
    let info = info.unwrap_or_default();
    Some(if resumed(ssl) {
        // Only a session bound to this name and record resumes here (see
        // ngx_http_dyncert_client_hello); without a binding, nothing is
        // known about it.
        HandshakeFacts {
            record: info.bound.flatten(),
            resumed: true,
            client_ca_requested: false,
            client_verdict: info.client_verdict,
        }
    } else {
        HandshakeFacts {
            record: info.installed,
            resumed: false,
            client_ca_requested: info.client_ca_requested,
            client_verdict: info.client_verdict,
        }
    })
}

/// Keeps the verdict on the connection's client certificate for its later
/// requests (see [`HandshakeFacts::client_verdict`]).
pub fn keep_client_verdict(c: &ngx_connection_t, kept: KeptVerdict) {
    let Some(ssl) = ssl_of(c) else {
        return;
    };
    // SAFETY: ssl is c's live SSL object; no other ConnInfo reference is
    // alive (info_of copies it out).
    if let Some(info) = unsafe { info_mut(ssl) } {
        info.client_verdict = Some(kept);
    }
}

/// The connection of a live request: it lives as long as the request.
pub fn request_connection(r: &ngx_http_request_t) -> &ngx_connection_t {
    // SAFETY: r->connection of a live request is its live connection.
    unsafe { &*r.connection }
}

/// The SSL object of a connection, if it has TLS.
pub fn ssl_of(c: &ngx_connection_t) -> Option<*mut SSL> {
    // SAFETY: c->ssl of a live connection is NULL or nginx's
    // ngx_ssl_connection_t for it.
    let sc = unsafe { c.ssl.as_ref() }?;
    (!sc.connection.is_null()).then_some(sc.connection)
}

/// Whether the connection is still in TLS early data (0-RTT): what
/// `$ssl_early_data` says, asked the way nginx asks it for the TLS library
/// it was built with (`ngx_ssl_get_early_data`). An HTTP/3 stream shares
/// its QUIC connection's SSL object.
pub fn in_early_data(c: &ngx_connection_t) -> bool {
    if ssl_of(c).is_none() {
        return false;
    }
    let mut s = ngx::ffi::ngx_str_t {
        len: 0,
        data: core::ptr::null_mut(),
    };
    // SAFETY: c is a live TLS connection (checked above); the function
    // only reads its SSL state and points s at a static string, never
    // allocating from the pool it is given.
    unsafe { ngx::ffi::ngx_ssl_get_early_data(core::ptr::from_ref(c).cast_mut(), c.pool, &mut s) };
    s.len == 1
}

/// The raw SNI of a connection, if any.
pub fn connection_sni(c: &ngx_connection_t) -> Option<&[u8]> {
    let ssl = ssl_of(c)?;
    // SAFETY: ssl is c's live SSL object, which lives as long as c.
    unsafe { servername(ssl) }
}

/// SSL_get_servername(3): the host_name the client sent.
///
/// # Safety
/// `ssl` must be live for as long as the returned slice is used.
pub unsafe fn servername<'a>(ssl: *mut SSL) -> Option<&'a [u8]> {
    // SAFETY: ssl is live; the returned string is owned by the SSL object
    // (its session), NULL without a name.
    let p = unsafe { SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name as c_int) };
    if p.is_null() {
        return None;
    }
    // SAFETY: a non-NULL result is a NUL-terminated string that lives as
    // long as ssl.
    Some(unsafe { CStr::from_ptr(p) }.to_bytes())
}
