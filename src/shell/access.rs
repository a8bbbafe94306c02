//! Access phase: `dyncert_allow` lists and the per-tenant policy carried
//! by a certificate record (its own `allow` list and required client
//! certificate). The client address is the one nginx resolved
//! (`$remote_addr`, after PROXY protocol with realip or
//! `set_real_ip_from`), never a header on its own.

use core::ptr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dyncert_core::clock::{Clock, SystemClock};
use dyncert_core::metrics::Simple;
use dyncert_core::name::normalize_sni;
use dyncert_core::tenant::{
    check_client_certificate, decide, judge_allow_list, judge_once, AllowVerdict,
    ClientCertVerdict, HandshakeVerify, PeerCertificate, RequestFacts, Verdict, VerifySettings,
};
use dyncert_core::validate::ClientCa;
use foreign_types::ForeignTypeRef;
use ngx::ffi::{
    ngx_conf_t, ngx_connection_t, ngx_http_handler_pt, ngx_http_phases,
    ngx_http_phases_NGX_HTTP_ACCESS_PHASE, ngx_http_phases_NGX_HTTP_PREACCESS_PHASE,
    ngx_http_request_t, ngx_int_t, SSL_get0_param, SSL_get0_peer_certificate,
    SSL_get_peer_cert_chain, SSL_get_security_level, SSL_get_verify_result, NGX_DECLINED,
    NGX_HTTPS_CERT_ERROR, NGX_HTTPS_NO_CERT, NGX_HTTP_MISDIRECTED_REQUEST, SSL,
};
use ngx::http::{
    HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf, NgxHttpCoreModule,
};
use openssl::stack::StackRef;
use openssl::x509::verify::X509VerifyParamRef;
use openssl::x509::{X509Ref, X509};

use super::boundary::guard;
use super::conf::{add_phase_handler, Module, Refused};
use super::handshake::{
    connection_sni, handshake_facts, in_early_data, keep_client_verdict, request_connection,
    ssl_of, HandshakeFacts,
};
use super::log::{debug, Log};
use super::metrics;
use super::state::with_worker;

/// Registers `dyncert_allow`'s access handler and, when some server has
/// `dyncert_tenant_policy on`, the tenant policy's (postconfiguration).
pub fn postconfiguration(cf: &ngx_conf_t, tenant: bool) -> Result<(), Refused> {
    add_phase_handler(
        cf,
        ngx_http_phases_NGX_HTTP_ACCESS_PHASE,
        ngx_http_dyncert_access_handler,
    )?;
    if tenant {
        add_phase_handler(
            cf,
            ngx_http_phases_NGX_HTTP_PREACCESS_PHASE,
            ngx_http_dyncert_tenant_handler,
        )?;
        run_last_in_phase(cf, ngx_http_phases_NGX_HTTP_PREACCESS_PHASE)?;
    }
    Ok(())
}

/// Moves the handler just added to `phase` to the front of the phase's
/// array. nginx runs a phase's handlers in the reverse order of the array
/// (ngx_http_init_phase_handlers), and a dynamic module's
/// postconfiguration runs after the static modules', so an appended
/// handler would run first: before realip's pre-access handler, which
/// applies `set_real_ip_from` and `real_ip_header` set in a location. At
/// the front it runs last in the phase, after realip (and limit_req,
/// limit_conn), and judges the address `dyncert_allow` judges in the
/// access phase.
pub(super) fn run_last_in_phase(cf: &ngx_conf_t, phase: ngx_http_phases) -> Result<(), Refused> {
    let cmcf = NgxHttpCoreModule::main_conf_mut(cf).ok_or(Refused)?;
    let handlers = &mut cmcf.phases[phase as usize].handlers;
    let elts = handlers.elts.cast::<ngx_http_handler_pt>();
    if elts.is_null() || handlers.nelts == 0 {
        return Err(Refused);
    }
    // SAFETY: a phase's handlers are an ngx_array_t of nelts initialised
    // handler pointers in the configuration pool, read by nginx only after
    // every postconfiguration has run.
    let handlers = unsafe { core::slice::from_raw_parts_mut(elts, handlers.nelts) };
    handlers.rotate_right(1);
    Ok(())
}

/// The connection's client address as nginx resolved it.
pub(super) fn client_ip(c: &ngx_connection_t) -> Option<IpAddr> {
    // SAFETY: c->sockaddr of a live connection is NULL or the client's
    // address: c->socklen bytes of the sockaddr type its family names.
    let sa = unsafe { c.sockaddr.as_ref() }?;
    match i32::from(sa.sa_family) {
        libc::AF_INET => {
            // SAFETY: as above; an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*ptr::from_ref(sa).cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above; an AF_INET6 address is a sockaddr_in6.
            let sin6 = unsafe { &*ptr::from_ref(sa).cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// # Safety
/// Called by nginx with a live request, in the access phase.
unsafe extern "C" fn ngx_http_dyncert_access_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // A bug must not open the door: fail closed with a 500.
    guard("checking access", 500, || {
        // SAFETY: nginx passes a live request to phase handlers.
        check_allow(unsafe { &*r })
    })
}

/// `dyncert_allow`, in the access phase like nginx's `allow`.
fn check_allow(r: &ngx_http_request_t) -> ngx_int_t {
    let c = request_connection(r);
    let Some(lcf) = Module::location_conf(r) else {
        return NGX_DECLINED as ngx_int_t;
    };
    if let Some(list) = &lcf.allow {
        match judge_allow_list(list, client_ip(c), in_early_data(c)) {
            AllowVerdict::Admitted => {}
            AllowVerdict::Denied => {
                metrics::add(metrics::layout().simple(Simple::AllowDenials), 1);
                Log::of(c).err(format_args!("dyncert: access forbidden by dyncert_allow"));
                return lcf.deny_status() as ngx_int_t;
            }
            AllowVerdict::TooEarly => return too_early(c, "dyncert_allow"),
        }
    }
    NGX_DECLINED as ngx_int_t
}

/// The tenant policy, last in the pre-access phase: after realip has
/// resolved the client address (in a location too, see
/// [`run_last_in_phase`]), and before the access phase, whose `satisfy any`
/// would let another module's grant override a tenant's denial.
///
/// # Safety
/// Called by nginx with a live request, in the pre-access phase.
unsafe extern "C" fn ngx_http_dyncert_tenant_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // A bug must not open the door: fail closed with a 500.
    guard("checking the tenant policy", 500, || {
        // SAFETY: nginx passes a live request to phase handlers.
        check_tenant(unsafe { &*r })
    })
}

fn check_tenant(r: &ngx_http_request_t) -> ngx_int_t {
    // Subrequests run on behalf of a main request that passed.
    if !ptr::eq(r.main, r) {
        return NGX_DECLINED as ngx_int_t;
    }
    if !Module::server_conf(r).is_some_and(|s| s.enabled() && s.tenant_policy()) {
        return NGX_DECLINED as ngx_int_t;
    }
    let c = request_connection(r);
    // A plain-HTTP connection has no TLS facts.
    let facts = handshake_facts(c);
    // headers_in.server is the request's validated host.
    let host = r.headers_in.server.as_bytes();
    // The current record of the name asked for (the exact entry only).
    let current = normalize_sni(host).ok().and_then(|name| {
        let now = SystemClock.now();
        with_worker(|w| w.current(&name, now)).flatten()
    });
    let record = facts.and_then(|f| f.record);
    // SAFETY: nginx sets headers_in.host to the request's Host header line
    // (in its pool) when there is one, and leaves it null otherwise.
    let host_header = unsafe { r.headers_in.host.as_ref() }.map(|h| h.value.as_bytes());
    let verdict = decide(&RequestFacts {
        server_name: connection_sni(c),
        host,
        host_header,
        installed: record.as_ref(),
        current: current.as_deref(),
        client: client_ip(c),
        early_data: in_early_data(c),
    });
    debug!(
        Log::of(c),
        "dyncert: tenant policy: {}, host: \"{}\"",
        verdict_text(&verdict),
        String::from_utf8_lossy(host)
    );
    match verdict {
        Verdict::Misdirected(m) => {
            metrics::add(metrics::layout().misdirected(m), 1);
            Log::of(c).info(format_args!(
                "dyncert: request refused with 421 by the tenant policy: {}",
                m.as_str()
            ));
            NGX_HTTP_MISDIRECTED_REQUEST as ngx_int_t
        }
        Verdict::Denied => {
            metrics::add(metrics::layout().simple(Simple::TenantDenials), 1);
            Log::of(c).err(format_args!(
                "dyncert: access forbidden by the tenant's allow list"
            ));
            Module::location_conf(r).map_or(403, |l| l.deny_status()) as ngx_int_t
        }
        Verdict::TooEarly => too_early(c, "the tenant's allow list"),
        Verdict::Pass { client_ca: None } => NGX_DECLINED as ngx_int_t,
        Verdict::Pass {
            client_ca: Some(ca),
        } => require_client_certificate(c, ca, facts),
    }
}

/// 425 Too Early for a request in early data that an allow list would
/// admit by its address: the client sends it again after the handshake.
fn too_early(c: &ngx_connection_t, list: &str) -> ngx_int_t {
    metrics::add(metrics::layout().simple(Simple::EarlyDataRefusals), 1);
    Log::of(c).info(format_args!(
        "dyncert: request in TLS early data refused with 425 by {list}: its address is not proven yet"
    ));
    NGX_HTTP_TOO_EARLY
}

/// 425 Too Early (RFC 8470); nginx has no constant for it.
const NGX_HTTP_TOO_EARLY: ngx_int_t = 425;

/// The verdict, for the debug log.
fn verdict_text(verdict: &Verdict<'_>) -> String {
    match verdict {
        Verdict::Misdirected(m) => format!("421, {}", m.as_str()),
        Verdict::Denied => "denied by the tenant's allow list".to_owned(),
        Verdict::TooEarly => "425, early data".to_owned(),
        Verdict::Pass { client_ca: None } => "pass".to_owned(),
        Verdict::Pass { client_ca: Some(_) } => {
            "pass if the client certificate verifies".to_owned()
        }
    }
}

/// The tenant's required client certificate: 496 without one, 495 when it
/// does not verify against the tenant's CAs (answered like nginx's
/// `ssl_verify_client`). The core decides, once per connection; this
/// gathers what OpenSSL holds.
fn require_client_certificate(
    c: &ngx_connection_t,
    ca: &ClientCa,
    facts: Option<HandshakeFacts>,
) -> ngx_int_t {
    let judge = || match ssl_of(c) {
        // SAFETY: ssl is c's live SSL object and its handshake finished.
        Some(ssl) => unsafe { client_certificate_verdict(ssl, ca, facts) },
        None => ClientCertVerdict::Missing,
    };
    // The record the connection is authenticated with: the host's current
    // one (decide() checked), whose CAs `ca` are.
    let verdict = match facts.and_then(|f| f.record) {
        Some(record) => {
            let mut kept = facts.and_then(|f| f.client_verdict);
            let before = kept;
            let verdict = judge_once(&mut kept, record, judge);
            if let Some(k) = kept.filter(|&k| Some(k) != before) {
                keep_client_verdict(c, k);
            }
            verdict
        }
        None => judge(),
    };
    match verdict {
        ClientCertVerdict::Pass => NGX_DECLINED as ngx_int_t,
        ClientCertVerdict::Missing => {
            metrics::add(metrics::layout().simple(Simple::ClientCertRejections), 1);
            Log::of(c).info(format_args!(
                "dyncert: client sent no required SSL certificate"
            ));
            NGX_HTTPS_NO_CERT as ngx_int_t
        }
        ClientCertVerdict::Failed(code) => {
            metrics::add(metrics::layout().simple(Simple::ClientCertRejections), 1);
            Log::of(c).info(format_args!(
                "dyncert: client SSL certificate verify error: ({code}) \
                 against the tenant's client_ca"
            ));
            NGX_HTTPS_CERT_ERROR as ngx_int_t
        }
    }
}

/// Reads the connection's client certificate, the chain it came with, the
/// handshake's verification and the connection's verify settings, and has
/// the core judge them.
///
/// # Safety
/// `ssl` must be a live SSL object of a finished handshake.
unsafe fn client_certificate_verdict(
    ssl: *mut SSL,
    ca: &ClientCa,
    facts: Option<HandshakeFacts>,
) -> ClientCertVerdict {
    // SAFETY: ssl is live; SSL_get0_peer_certificate(3) borrows the peer
    // certificate (NULL without one) for as long as the session lives,
    // which outlives this call.
    let leaf = unsafe { SSL_get0_peer_certificate(ssl) };
    if leaf.is_null() {
        return ClientCertVerdict::Missing;
    }
    // SAFETY: as above: non-NULL, borrowed, not freed here.
    let leaf = unsafe { X509Ref::from_ptr(leaf.cast::<openssl_sys::X509>()) };
    // SAFETY: ssl is live; SSL_get_peer_cert_chain(3) borrows the chain the
    // peer sent (NULL without one), which lives as long as the session.
    let sent = unsafe { SSL_get_peer_cert_chain(ssl) };
    // SAFETY: as above; borrowed while ssl lives, not freed here.
    let sent = (!sent.is_null()).then(|| unsafe { StackRef::<X509>::from_ptr(sent.cast()) });
    // SAFETY: ssl is live; SSL_get_verify_result(3) is this handshake's
    // result, or for a resumed session the one stored with the session.
    let result = unsafe { SSL_get_verify_result(ssl) } as i32;
    let handshake = match facts {
        Some(f) if f.resumed => HandshakeVerify::Resumed(result),
        Some(f) if f.client_ca_requested => HandshakeVerify::Asked(result),
        _ => HandshakeVerify::NotAsked,
    };
    // SAFETY: ssl is live; SSL_get0_param(3) borrows the SSL object's own
    // verify parameters, never NULL, for as long as ssl lives.
    let param = unsafe { X509VerifyParamRef::from_ptr(SSL_get0_param(ssl).cast()) };
    // SAFETY: ssl is live; SSL_get_security_level(3) only reads it.
    let security_level = unsafe { SSL_get_security_level(ssl) };
    check_client_certificate(
        ca,
        Some(PeerCertificate { leaf, sent }),
        handshake,
        VerifySettings {
            param: Some(param),
            security_level,
        },
    )
}
