//! Access phase: `dyncert_allow` lists and the per-tenant policy carried
//! by a certificate record (its own `allow` list and required client
//! certificate). The client address is the one nginx resolved
//! (`$remote_addr`, after PROXY protocol with realip or
//! `set_real_ip_from`), never a header on its own.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dyncert_core::cidr;
use dyncert_core::clock::{Clock, SystemClock};
use dyncert_core::metrics::Simple;
use dyncert_core::name::normalize_sni;
use dyncert_core::tenant::{decide, RequestFacts, Verdict};
use dyncert_core::validate::ClientCa;
use foreign_types::{ForeignType, ForeignTypeRef};
use ngx::ffi::{
    ngx_conf_t, ngx_http_phases_NGX_HTTP_ACCESS_PHASE, ngx_http_phases_NGX_HTTP_PREACCESS_PHASE,
};
use ngx::ffi::{
    ngx_connection_t, ngx_http_request_t, ngx_int_t, SSL_get0_peer_certificate,
    SSL_get_verify_result, NGX_DECLINED, NGX_HTTPS_CERT_ERROR, NGX_HTTPS_NO_CERT,
    NGX_HTTP_MISDIRECTED_REQUEST, X509_V_OK,
};
use ngx::ffi::{SSL_get1_peer_certificate, SSL_get_peer_cert_chain, SSL};
use ngx::http::{HttpModuleLocationConf, HttpModuleServerConf};
use openssl::stack::{Stack, StackRef};
use openssl::x509::{X509StoreContext, X509};

use super::boundary::guard;
use super::conf::{add_phase_handler, Module, Refused};
use super::handshake::{connection_sni, handshake_facts, ssl_of, HandshakeFacts};
use super::log::Log;
use super::metrics;
use super::state::with_worker;

/// The connection's client address as nginx resolved it.
///
/// # Safety
/// `c` must be a live connection.
unsafe fn client_ip(c: &ngx_connection_t) -> Option<IpAddr> {
    let sa = c.sockaddr;
    if sa.is_null() {
        return None;
    }
    // SAFETY: c->sockaddr holds c->socklen bytes of a sockaddr of its family.
    unsafe {
        match (*sa).sa_family as i32 {
            libc::AF_INET => {
                let sin = &*(sa as *const libc::sockaddr_in);
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))))
            }
            libc::AF_INET6 => {
                let sin6 = &*(sa as *const libc::sockaddr_in6);
                Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

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
    }
    Ok(())
}

unsafe extern "C" fn ngx_http_dyncert_access_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // A bug must not open the door: fail closed with a 500.
    guard("checking access", 500, || unsafe { check_allow(r) })
}

/// `dyncert_allow`, in the access phase like nginx's `allow`.
unsafe fn check_allow(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request to phase handlers.
    let req = unsafe { &*r };
    // SAFETY: a request's connection is live for its whole life.
    let c = unsafe { &*req.connection };
    let Some(lcf) = Module::location_conf(req) else {
        return NGX_DECLINED as ngx_int_t;
    };
    if let Some(list) = &lcf.allow {
        let ip = unsafe { client_ip(c) };
        if !ip.is_some_and(|ip| cidr::matches(list, ip)) {
            metrics::add(metrics::layout().simple(Simple::AllowDenials), 1);
            Log::of(c).err(format_args!("dyncert: access forbidden by dyncert_allow"));
            return lcf.deny_status() as ngx_int_t;
        }
    }
    NGX_DECLINED as ngx_int_t
}

/// The tenant policy, in the pre-access phase: after realip has resolved
/// the client address, and before the access phase, whose `satisfy any`
/// would let another module's grant override a tenant's denial.
unsafe extern "C" fn ngx_http_dyncert_tenant_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // A bug must not open the door: fail closed with a 500.
    guard("checking the tenant policy", 500, || unsafe {
        check_tenant(r)
    })
}

unsafe fn check_tenant(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request to phase handlers.
    let req = unsafe { &*r };
    // Subrequests run on behalf of a main request that passed.
    if req.main != r {
        return NGX_DECLINED as ngx_int_t;
    }
    if !Module::server_conf(req).is_some_and(|s| s.enabled() && s.tenant_policy()) {
        return NGX_DECLINED as ngx_int_t;
    }
    // SAFETY: a request's connection is live for its whole life.
    let c = unsafe { &*req.connection };
    // SAFETY: as above; a plain-HTTP connection has no TLS facts.
    let facts = unsafe { handshake_facts(req.connection) };
    let server_name = unsafe { connection_sni(req.connection) };
    let host = &req.headers_in.server;
    let host: &[u8] = if host.len == 0 || host.data.is_null() {
        &[]
    } else {
        // SAFETY: headers_in.server is the request's validated host.
        unsafe { core::slice::from_raw_parts(host.data, host.len) }
    };
    // The current record of the name asked for (the exact entry only).
    let current = normalize_sni(host).ok().and_then(|name| {
        let now = SystemClock.now();
        with_worker(|w| w.current(&name, now)).flatten()
    });
    let record = facts.and_then(|f| f.record);
    let verdict = decide(&RequestFacts {
        server_name,
        host,
        installed: record.as_ref(),
        current: current.as_deref(),
        client: unsafe { client_ip(c) },
    });
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
            Module::location_conf(req).map_or(403, |l| l.deny_status()) as ngx_int_t
        }
        Verdict::Pass { client_ca: None } => NGX_DECLINED as ngx_int_t,
        Verdict::Pass {
            client_ca: Some(ca),
        } => unsafe { check_client_certificate(c, ca, facts) },
    }
}

/// The tenant's required client certificate: 496 without one, 495 when it
/// does not verify against the tenant's CAs (answered like nginx's
/// `ssl_verify_client`).
///
/// # Safety
/// `c` must be a live connection.
unsafe fn check_client_certificate(
    c: &ngx_connection_t,
    ca: &ClientCa,
    facts: Option<HandshakeFacts>,
) -> ngx_int_t {
    // SAFETY: c is live.
    let Some(ssl) = (unsafe { ssl_of(c as *const _ as *mut _) }) else {
        return NGX_HTTPS_NO_CERT as ngx_int_t;
    };
    // SAFETY: ssl is live; get0 borrows the peer certificate.
    if unsafe { SSL_get0_peer_certificate(ssl) }.is_null() {
        metrics::add(metrics::layout().simple(Simple::ClientCertRejections), 1);
        Log::of(c).info(format_args!(
            "dyncert: client sent no required SSL certificate"
        ));
        return NGX_HTTPS_NO_CERT as ngx_int_t;
    }
    // The handshake's own result counts only when this handshake asked
    // against the record's CAs; a resumed session carries the verification
    // of an earlier handshake: verify again.
    let verify = if facts.is_some_and(|f| f.client_ca_requested && !f.resumed) {
        // SAFETY: ssl is live.
        unsafe { SSL_get_verify_result(ssl) }
    } else {
        unsafe { verify_peer(ssl, ca) }
    };
    if verify != X509_V_OK as core::ffi::c_long {
        metrics::add(metrics::layout().simple(Simple::ClientCertRejections), 1);
        Log::of(c).info(format_args!(
            "dyncert: client SSL certificate verify error: ({verify}) \
                 against the tenant's client_ca"
        ));
        return NGX_HTTPS_CERT_ERROR as ngx_int_t;
    }
    NGX_DECLINED as ngx_int_t
}

/// Verifies the connection's client certificate (and the chain it sent)
/// against the tenant's CAs; returns an X509_V_* code.
///
/// # Safety
/// `ssl` must be a live SSL object of a finished handshake.
unsafe fn verify_peer(ssl: *mut SSL, ca: &ClientCa) -> core::ffi::c_long {
    const FAILED: core::ffi::c_long = 1; // X509_V_ERR_UNSPECIFIED
                                         // SAFETY: get1 returns a new reference (or NULL), owned by X509 below.
    let leaf = unsafe { SSL_get1_peer_certificate(ssl) };
    if leaf.is_null() {
        return FAILED;
    }
    let leaf = unsafe { X509::from_ptr(leaf as *mut openssl_sys::X509) };
    let mut chain = match Stack::<X509>::new() {
        Ok(s) => s,
        Err(_) => return FAILED,
    };
    // SAFETY: the peer chain (borrowed, may be NULL) lives as long as ssl.
    let sent = unsafe { SSL_get_peer_cert_chain(ssl) };
    if !sent.is_null() {
        let sent = unsafe { StackRef::<X509>::from_ptr(sent as *mut _) };
        for c in sent {
            if chain.push(c.to_owned()).is_err() {
                return FAILED;
            }
        }
    }
    let Ok(mut ctx) = X509StoreContext::new() else {
        return FAILED;
    };
    match ctx.init(&ca.store, &leaf, &chain, |c| {
        Ok((c.verify_cert()?, c.error().as_raw()))
    }) {
        Ok((true, _)) => X509_V_OK as core::ffi::c_long,
        Ok((false, code)) => code as core::ffi::c_long,
        Err(_) => FAILED,
    }
}
