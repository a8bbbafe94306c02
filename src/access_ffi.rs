//! Access phase: `dyncert_allow` lists and the per-tenant policy carried
//! by a certificate record (its own `allow` list and required client
//! certificate). The client address is the one nginx resolved
//! (`$remote_addr`, after PROXY protocol with realip or
//! `set_real_ip_from`), never a header on its own.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dyncert_core::cidr;
use dyncert_core::fetch::CertSource;
use dyncert_core::metrics::Simple;
use dyncert_core::name::normalize_sni;
use dyncert_core::validate::ClientCa;
use foreign_types::{ForeignType, ForeignTypeRef};
use ngx::ffi::{
    ngx_connection_t, ngx_http_request_t, ngx_int_t, ngx_uint_t, SSL_get0_peer_certificate,
    SSL_get_verify_result, NGX_DECLINED, NGX_HTTPS_CERT_ERROR, NGX_HTTPS_NO_CERT,
    NGX_HTTP_MISDIRECTED_REQUEST, NGX_LOG_ERR, NGX_LOG_INFO, X509_V_OK,
};
use ngx::ffi::{SSL_get1_peer_certificate, SSL_get_peer_cert_chain, SSL};
use ngx::http::{HttpModuleLocationConf, HttpModuleServerConf};
use openssl::stack::{Stack, StackRef};
use openssl::x509::{X509StoreContext, X509};

use crate::boundary_ffi::{guard, log_to};
use crate::ssl_ffi::{connection_info, connection_sni, resumed_record, ResumedRecord};
use crate::{metrics_ffi, Module};

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

pub unsafe extern "C" fn ngx_http_dyncert_access_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // A bug must not open the door: fail closed with a 500.
    guard("checking access", 500, || unsafe { check(r) })
}

unsafe fn check(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request to phase handlers.
    let req = unsafe { &*r };
    // SAFETY: a request's connection is live for its whole life.
    let c = unsafe { &*req.connection };
    let Some(lcf) = Module::location_conf(req) else {
        return NGX_DECLINED as ngx_int_t;
    };
    let ip = unsafe { client_ip(c) };

    if let Some(list) = &lcf.allow {
        if !ip.is_some_and(|ip| cidr::matches(list, ip)) {
            metrics_ffi::add(metrics_ffi::layout().simple(Simple::AllowDenials), 1);
            log_to(
                c.log,
                NGX_LOG_ERR as ngx_uint_t,
                "dyncert: access forbidden by dyncert_allow",
            );
            return lcf.deny_status() as ngx_int_t;
        }
    }

    if !Module::server_conf(req).is_some_and(|s| s.enabled() && s.tenant_policy()) {
        return NGX_DECLINED as ngx_int_t;
    }
    let Some(info) = (unsafe { connection_info(req.connection) }) else {
        return NGX_DECLINED as ngx_int_t;
    };
    // The policy belongs to the TLS server name (for a TLS 1.2 resumption,
    // the one of the original handshake): a request for another host on
    // this connection must not borrow it. nginx does the same for
    // ssl_verify_client.
    let sni = unsafe { connection_sni(req.connection) }.and_then(|s| normalize_sni(s).ok());
    let host = &req.headers_in.server;
    if let (Some(sni), false) = (&sni, host.len == 0 || host.data.is_null()) {
        // SAFETY: headers_in.server is the request's validated host.
        let host = unsafe { core::slice::from_raw_parts(host.data, host.len) };
        if !host.eq_ignore_ascii_case(sni.as_bytes()) {
            log_to(
                c.log,
                NGX_LOG_INFO as ngx_uint_t,
                "dyncert: client requested a host other than the TLS server name",
            );
            return NGX_HTTP_MISDIRECTED_REQUEST as ngx_int_t;
        }
    }
    // A TLS 1.2 resumption happens after the server-name callback: its
    // policy is looked up now, from the session's own name.
    let mut resumed = None;
    if info.source == CertSource::Resumed && info.policy.is_null() && !info.policy_unknown {
        // SAFETY: a resumed connection is a live TLS connection.
        let ssl = unsafe { c.ssl.as_ref() }.map_or(core::ptr::null_mut(), |s| s.connection);
        let sni = unsafe { connection_sni(req.connection) };
        match unsafe { resumed_record(ssl, sni) } {
            ResumedRecord::Cached(Some(cert)) => resumed = Some(cert),
            ResumedRecord::NotResumed => {}
            ResumedRecord::OtherName | ResumedRecord::Cached(None) => {
                return unsafe { reconnect(c) };
            }
        }
    }
    if info.policy_unknown {
        return unsafe { reconnect(c) };
    }
    let policy = match &resumed {
        Some(cert) => Some(&cert.policy),
        None => info.tenant_policy(),
    };
    let Some(policy) = policy else {
        return NGX_DECLINED as ngx_int_t;
    };
    if let Some(list) = &policy.allow {
        if !ip.is_some_and(|ip| cidr::matches(list, ip)) {
            metrics_ffi::add(metrics_ffi::layout().simple(Simple::TenantDenials), 1);
            log_to(
                c.log,
                NGX_LOG_ERR as ngx_uint_t,
                "dyncert: access forbidden by the tenant's allow list",
            );
            return lcf.deny_status() as ngx_int_t;
        }
    }
    if let Some(ca) = &policy.client_ca {
        // SAFETY: the policy exists only on TLS connections of this module.
        let ssl = unsafe { c.ssl.as_ref() }.map(|s| s.connection);
        let Some(ssl) = ssl.filter(|s| !s.is_null()) else {
            return NGX_HTTPS_NO_CERT as ngx_int_t;
        };
        // SAFETY: ssl is live; get0 borrows the peer certificate.
        let has_cert = !unsafe { SSL_get0_peer_certificate(ssl) }.is_null();
        if !has_cert {
            metrics_ffi::add(
                metrics_ffi::layout().simple(Simple::ClientCertRejections),
                1,
            );
            log_to(
                c.log,
                NGX_LOG_INFO as ngx_uint_t,
                "dyncert: client sent no required SSL certificate",
            );
            return NGX_HTTPS_NO_CERT as ngx_int_t;
        }
        // A resumed session carries the verification of its first
        // handshake, possibly against an older CA list: verify again.
        let verify = if info.source == CertSource::Resumed {
            unsafe { verify_peer(ssl, ca) }
        } else {
            // SAFETY: ssl is live.
            unsafe { SSL_get_verify_result(ssl) }
        };
        if verify != X509_V_OK as core::ffi::c_long {
            metrics_ffi::add(
                metrics_ffi::layout().simple(Simple::ClientCertRejections),
                1,
            );
            log_to(
                c.log,
                NGX_LOG_INFO as ngx_uint_t,
                &format!(
                    "dyncert: client SSL certificate verify error: ({verify}) \
                     against the tenant's client_ca"
                ),
            );
            return NGX_HTTPS_CERT_ERROR as ngx_int_t;
        }
    }
    NGX_DECLINED as ngx_int_t
}

/// A resumed session whose tenant policy cannot be checked (made for
/// another name, or the name is not cached): 421 makes clients reconnect,
/// and the full handshake brings the record.
///
/// # Safety
/// `c` must be a live connection.
unsafe fn reconnect(c: &ngx_connection_t) -> ngx_int_t {
    log_to(
        c.log,
        NGX_LOG_INFO as ngx_uint_t,
        "dyncert: resumed TLS session without a usable tenant policy, \
         asking the client to reconnect",
    );
    NGX_HTTP_MISDIRECTED_REQUEST as ngx_int_t
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
