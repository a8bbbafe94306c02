//! Tenant policy decisions (`dyncert_tenant_policy on`): which TLS
//! sessions a connection may resume, whether a request may be served, and
//! whether its client certificate passes the record's `client_ca`.
//!
//! The invariant, on every server with the policy on: a request is served
//! only when (a) the TLS server name equals the request's host, (b) the
//! connection's handshake installed that name's own current record, and
//! (c) that record's policy passes. Anything else is a 421 Misdirected
//! Request, which makes clients retry on a fresh connection.
//!
//! Sessions are bound to the name and record of the handshake that made
//! them through the TLS session id context: OpenSSL treats a session whose
//! context differs from the connection's like a cache miss (TLS 1.2 session
//! ids and tickets, TLS 1.3 tickets alike), so the handshake goes on as a
//! full one and the client gets the tenant's own certificate and policy.

use std::net::IpAddr;

use openssl::stack::{Stack, StackRef};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::{X509VerifyParam, X509VerifyParamRef};
use openssl::x509::{X509PurposeId, X509Ref, X509StoreContext, X509VerifyResult, X509};

use crate::cidr::{self, Cidr};
use crate::name::normalize_sni;
use crate::validate::{ClientCa, ParsedCert};

/// Length of a TLS session id context (`SSL_MAX_SID_CTX_LENGTH`).
pub const SESSION_CONTEXT_LEN: usize = 32;

/// The session id context of a connection: a digest of the listener's
/// `salt` (`session_salt`: every server's TLS configuration and which one
/// is the listener's default), the server name the client asked
/// for (normalised; an invalid one is bound as sent, no name is its own
/// class) and the fingerprint of the record cached for that name when the
/// handshake started (`None`: no record). A session resumes only on a
/// connection that computes the same context.
pub fn session_context(
    salt: &[u8],
    server_name: Option<&[u8]>,
    record: Option<&[u8; 32]>,
) -> [u8; SESSION_CONTEXT_LEN] {
    let mut h = openssl::sha::Sha256::new();
    h.update(b"dyncert session context v1\0");
    h.update(&(salt.len() as u64).to_be_bytes());
    h.update(salt);
    match server_name {
        None => h.update(&[0]),
        Some(raw) => match normalize_sni(raw) {
            Ok(name) => {
                h.update(&[1]);
                h.update(&(name.len() as u64).to_be_bytes());
                h.update(name.as_bytes());
            }
            Err(_) => {
                h.update(&[2]);
                h.update(&(raw.len() as u64).to_be_bytes());
                h.update(raw);
            }
        },
    }
    match record {
        None => h.update(&[0]),
        Some(fp) => {
            h.update(&[1]);
            h.update(fp);
        }
    }
    h.finish()
}

/// What one server block's TLS configuration contributes to the session
/// salt: what nginx's own session id context covers
/// (`ngx_ssl_session_id_context`: the certificates, or their configured
/// names when they are loaded per handshake, and the client CA names), and
/// what else decides whether a client certificate is accepted (the
/// verification settings and the trusted certificates).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// DER of each `ssl_certificate` nginx loaded, in configuration order.
    pub certificates: Vec<Vec<u8>>,
    /// `ssl_certificate` values with variables (loaded per handshake).
    pub certificate_names: Vec<Vec<u8>>,
    /// The SSL_CTX's verify mode (`SSL_VERIFY_*` bits).
    pub verify_mode: i32,
    /// nginx's `ssl_verify_client` (off, on, optional, optional_no_ca).
    pub verify_client: u64,
    /// DER of each client CA name sent in the CertificateRequest, in order.
    pub client_ca_names: Vec<Vec<u8>>,
    /// DER of the trusted certificates client certificates are verified
    /// against (a set: their order does not count).
    pub trusted: Vec<Vec<u8>>,
}

/// The digest of every server block's TLS configuration, in configuration
/// order (`None`: a server without an SSL_CTX). Terminators with the same
/// configuration compute the same digest, so sessions and shared tickets
/// keep resuming across them; a reload that changes any server's
/// certificates, client CAs or verification starts sessions afresh.
pub fn configuration_digest(servers: &[Option<ServerTls>]) -> [u8; 32] {
    fn list(h: &mut openssl::sha::Sha256, items: &[&[u8]]) {
        h.update(&(items.len() as u64).to_be_bytes());
        for item in items {
            h.update(&(item.len() as u64).to_be_bytes());
            h.update(item);
        }
    }
    fn slices(v: &[Vec<u8>]) -> Vec<&[u8]> {
        v.iter().map(Vec::as_slice).collect()
    }
    let mut h = openssl::sha::Sha256::new();
    h.update(b"dyncert configuration digest v1\0");
    h.update(&(servers.len() as u64).to_be_bytes());
    for server in servers {
        let Some(tls) = server else {
            h.update(&[0]);
            continue;
        };
        h.update(&[1]);
        list(&mut h, &slices(&tls.certificates));
        list(&mut h, &slices(&tls.certificate_names));
        h.update(&tls.verify_mode.to_be_bytes());
        h.update(&tls.verify_client.to_be_bytes());
        list(&mut h, &slices(&tls.client_ca_names));
        let mut trusted = slices(&tls.trusted);
        trusted.sort_unstable();
        list(&mut h, &trusted);
    }
    h.finish()
}

/// The salt of connections that start on the SSL_CTX of the server at
/// `index` (its listener's default server): the configuration's digest,
/// and which default server it is, as nginx's own context is its default
/// server's.
pub fn session_salt(configuration: &[u8; 32], index: usize) -> [u8; 32] {
    let mut h = openssl::sha::Sha256::new();
    h.update(b"dyncert session salt v1\0");
    h.update(configuration);
    h.update(&(index as u64).to_be_bytes());
    h.finish()
}

/// Why a request was refused with 421. `as_str` feeds the log line,
/// `label` the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misdirected {
    /// The client sent no (valid) TLS server name.
    NoServerName,
    /// The request carries no host (HTTP/1.0 without Host).
    NoHost,
    /// The request's host is not the TLS server name (HTTP/2 connection
    /// reuse, a forged Host, a second server block's certificate).
    HostMismatch,
    /// This worker holds no current record for the host (unknown, evicted,
    /// invalidated, or never fetched because a source was down).
    NoRecord,
    /// The handshake installed something other than the host's current
    /// record: the default certificate, a wildcard record while the name
    /// has its own, or a record since replaced.
    NotInstalled,
}

impl Misdirected {
    pub const ALL: [Misdirected; 5] = [
        Misdirected::NoServerName,
        Misdirected::NoHost,
        Misdirected::HostMismatch,
        Misdirected::NoRecord,
        Misdirected::NotInstalled,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Misdirected::NoServerName => "the client sent no valid TLS server name",
            Misdirected::NoHost => "the request has no host",
            Misdirected::HostMismatch => "the request's host is not the TLS server name",
            Misdirected::NoRecord => "the host has no current certificate record",
            Misdirected::NotInstalled => {
                "the connection's handshake did not install the host's current record"
            }
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Misdirected::NoServerName => "no_server_name",
            Misdirected::NoHost => "no_host",
            Misdirected::HostMismatch => "host_mismatch",
            Misdirected::NoRecord => "no_record",
            Misdirected::NotInstalled => "not_installed",
        }
    }
}

/// What is known about one request when the policy is checked.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The connection's TLS server name as the client sent it.
    pub server_name: Option<&'a [u8]>,
    /// The request's host as nginx validated it (empty: none).
    pub host: &'a [u8],
    /// The `Host` header as the client sent it, when it sent one. nginx
    /// takes the host from an absolute request line (HTTP/1.1) or from
    /// `:authority` (HTTP/2) and then accepts any other `Host` header,
    /// which a backend routed by `$http_host` would act on.
    pub host_header: Option<&'a [u8]>,
    /// Fingerprint of the record the handshake installed, or, for a
    /// resumed session, of the record its context was bound to.
    pub installed: Option<&'a [u8; 32]>,
    /// The host's current record in this worker's cache (the exact name's
    /// entry, never its wildcard parent's).
    pub current: Option<&'a ParsedCert>,
    /// The client address nginx resolved.
    pub client: Option<IpAddr>,
    /// The request arrived in TLS early data (0-RTT), before the
    /// handshake finished.
    pub early_data: bool,
}

/// The verdict on one request.
pub enum Verdict<'a> {
    /// 421 Misdirected Request.
    Misdirected(Misdirected),
    /// The tenant's allow list does not admit the client.
    Denied,
    /// 425 Too Early: the allow list admits the address, but the request
    /// came in early data, where that address proves nothing (see
    /// [`judge_allow_list`]).
    TooEarly,
    /// Serve it, once the client certificate (if the record asks for one)
    /// verifies against these CAs.
    Pass { client_ca: Option<&'a ClientCa> },
}

/// A `Host` value without its `:port`. A bracketed IPv6 literal keeps its
/// brackets, and so never equals a server name.
fn without_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return host;
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(i) if host[i + 1..].iter().all(u8::is_ascii_digit) => &host[..i],
        _ => host,
    }
}

/// Applies the invariant to one request.
pub fn decide<'a>(f: &RequestFacts<'a>) -> Verdict<'a> {
    let Some(name) = f.server_name.and_then(|s| normalize_sni(s).ok()) else {
        return Verdict::Misdirected(Misdirected::NoServerName);
    };
    if f.host.is_empty() {
        return Verdict::Misdirected(Misdirected::NoHost);
    }
    if normalize_sni(f.host).ok().as_deref() != Some(name.as_str()) {
        return Verdict::Misdirected(Misdirected::HostMismatch);
    }
    if let Some(h) = f.host_header {
        if normalize_sni(without_port(h)).ok().as_deref() != Some(name.as_str()) {
            return Verdict::Misdirected(Misdirected::HostMismatch);
        }
    }
    let Some(current) = f.current else {
        return Verdict::Misdirected(Misdirected::NoRecord);
    };
    if f.installed != Some(&current.fingerprint) {
        return Verdict::Misdirected(Misdirected::NotInstalled);
    }
    if let Some(list) = &current.policy.allow {
        match judge_allow_list(list, f.client, f.early_data) {
            AllowVerdict::Admitted => {}
            AllowVerdict::Denied => return Verdict::Denied,
            AllowVerdict::TooEarly => return Verdict::TooEarly,
        }
    }
    Verdict::Pass {
        client_ca: current.policy.client_ca.as_ref(),
    }
}

/// What an IP allow list (`dyncert_allow`, or a tenant's `allow`) says
/// about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowVerdict {
    Admitted,
    /// The address is not on the list (or unknown): the deny status.
    Denied,
    /// The address is on the list, but the request came in TLS early data:
    /// 425 Too Early (RFC 8470), and the client sends it again once the
    /// handshake is done.
    TooEarly,
}

/// Judges `client` against an allow list. A request in early data (0-RTT)
/// is never admitted by its address: over QUIC, 0-RTT packets are
/// processed before the client proved it owns its source address (unless
/// `quic_retry on`), so anyone holding a session ticket for the name can
/// send a request from a forged address inside the list; over TCP, early
/// data can be replayed (RFC 8446, section 8). An address outside the
/// list is denied either way.
/// A list that admits every address of the client's family (`dyncert_allow
/// all`) admits early data too: a forged address gains nothing there.
pub fn judge_allow_list(list: &[Cidr], client: Option<IpAddr>, early_data: bool) -> AllowVerdict {
    let Some(ip) = client.filter(|&ip| cidr::matches(list, ip)) else {
        return AllowVerdict::Denied;
    };
    if early_data && !cidr::admits_any_address_like(list, ip) {
        AllowVerdict::TooEarly
    } else {
        AllowVerdict::Admitted
    }
}

/// `X509_V_OK`.
const VERIFY_OK: i32 = 0;
/// `X509_V_ERR_UNSPECIFIED`: verification could not even be set up.
const VERIFY_UNSPECIFIED: i32 = 1;

/// The client certificate a connection holds (`SSL_get0_peer_certificate`)
/// and the certificates the client sent with it
/// (`SSL_get_peer_cert_chain`, which leaves the leaf out on a server).
#[derive(Clone, Copy)]
pub struct PeerCertificate<'a> {
    pub leaf: &'a X509Ref,
    pub sent: Option<&'a StackRef<X509>>,
}

/// How the connection's handshake verified the client certificate; the
/// codes are `X509_V_*` from `SSL_get_verify_result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeVerify {
    /// This full handshake asked for the certificate against the record's
    /// CAs: OpenSSL verified it like any TLS server does (purpose and trust
    /// "SSL client", the connection's verify parameters and security
    /// level), and that result stands.
    Asked(i32),
    /// A resumed session: OpenSSL did not verify anything, the result is
    /// the one the session's first handshake stored with it.
    Resumed(i32),
    /// The handshake did not ask for a certificate against the record's
    /// CAs.
    NotAsked,
}

/// What the connection's verification settings add to the CAs: the SSL
/// object's own verify parameters (`SSL_get0_param`: depth, flags) and its
/// security level, which OpenSSL applies to the chain's keys and
/// signatures (`X509_VERIFY_PARAM_set_auth_level`).
#[derive(Clone, Copy)]
pub struct VerifySettings<'a> {
    pub param: Option<&'a X509VerifyParamRef>,
    pub security_level: i32,
}

/// The verdict on a tenant's required client certificate, answered like
/// nginx's `ssl_verify_client on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertVerdict {
    Pass,
    /// No certificate: 496.
    Missing,
    /// The certificate does not verify (`X509_V_*` code): 495.
    Failed(i32),
}

/// Checks the client certificate of a request to a tenant whose record
/// names `ca`. A resumed session never gets more than a full handshake
/// would: it must have passed when the session was made (the session id
/// context binds it to the same record, so to the same CAs) and it must
/// still pass now, verified the way the handshake verifies.
pub fn check_client_certificate(
    ca: &ClientCa,
    peer: Option<PeerCertificate<'_>>,
    handshake: HandshakeVerify,
    settings: VerifySettings<'_>,
) -> ClientCertVerdict {
    let Some(peer) = peer else {
        return ClientCertVerdict::Missing;
    };
    let code = match handshake {
        HandshakeVerify::Asked(code) => code,
        HandshakeVerify::Resumed(stored) if stored != VERIFY_OK => stored,
        HandshakeVerify::Resumed(_) | HandshakeVerify::NotAsked => {
            verify_client(ca, peer, settings)
        }
    };
    if code == VERIFY_OK {
        ClientCertVerdict::Pass
    } else {
        ClientCertVerdict::Failed(code)
    }
}

/// The verdict a connection keeps on its client certificate, and the
/// record (fingerprint) whose CAs it was judged against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptVerdict {
    pub record: [u8; 32],
    pub verdict: ClientCertVerdict,
}

/// The connection's verdict on its client certificate for `record`: the
/// one it keeps, or `judge`'s, which it then keeps. A connection's client
/// certificate, chain and verify settings never change, and its record
/// cannot either (a request whose connection did not install the host's
/// current record is misdirected before this), so a verdict holds for the
/// connection's life, as a full handshake's does: a resumed session's
/// chain is verified once per connection, not at every request (a verify
/// costs up to a millisecond of the event loop within the bounds of
/// [`crate::clientca`], and keep-alive allows 1,000 requests a
/// connection). A verdict kept for another record is judged again.
pub fn judge_once(
    kept: &mut Option<KeptVerdict>,
    record: [u8; 32],
    judge: impl FnOnce() -> ClientCertVerdict,
) -> ClientCertVerdict {
    if let Some(k) = kept.filter(|k| k.record == record) {
        return k.verdict;
    }
    let verdict = judge();
    *kept = Some(KeptVerdict { record, verdict });
    verdict
}

/// Verifies `peer` against the tenant's CAs as OpenSSL verifies a client's
/// chain in a handshake (`ssl_verify_cert_chain`): purpose and trust "SSL
/// client" (`X509_STORE_CTX_set_default(ctx, "ssl_client")`), so a
/// certificate whose extended key usage leaves out clientAuth fails with
/// `X509_V_ERR_INVALID_PURPOSE`; then the connection's own parameters and
/// its security level. Returns an `X509_V_*` code.
///
/// The store is made for this check: the record's store is the one the
/// handshake uses (through `SSL_set1_verify_cert_store`, where OpenSSL adds
/// the purpose itself), and holds no purpose of its own.
pub fn verify_client(
    ca: &ClientCa,
    peer: PeerCertificate<'_>,
    settings: VerifySettings<'_>,
) -> i32 {
    verify_client_chain(ca, peer, settings).unwrap_or(VERIFY_UNSPECIFIED)
}

fn verify_client_chain(
    ca: &ClientCa,
    peer: PeerCertificate<'_>,
    settings: VerifySettings<'_>,
) -> Result<i32, openssl::error::ErrorStack> {
    let mut store = X509StoreBuilder::new()?;
    for c in &ca.certs {
        store.add_cert(c.clone())?;
    }
    // X509_STORE_set1_param(3) copies what is set, in this order, as
    // ssl_verify_cert_chain layers "ssl_client", the SSL's parameters and
    // its security level.
    let mut client = X509VerifyParam::new()?;
    client.set_purpose(X509PurposeId::SSL_CLIENT)?;
    store.set_param(&client)?;
    if let Some(param) = settings.param {
        store.set_param(param)?;
    }
    let mut level = X509VerifyParam::new()?;
    level.set_auth_level(settings.security_level);
    store.set_param(&level)?;
    // The purpose is set (by the SSL's parameters when they name one): the
    // trust follows from it when X509_STORE_CTX_init(3) sees none.
    let store = store.build();
    let empty;
    let sent = match peer.sent {
        Some(s) => s,
        None => {
            empty = Stack::new()?;
            &empty
        }
    };
    let mut ctx = X509StoreContext::new()?;
    ctx.init(&store, peer.leaf, sent, |c| {
        let ok = c.verify_cert()?;
        let code = c.error();
        Ok(match (ok, code) {
            (true, _) => VERIFY_OK,
            // A failure without a code is still a failure.
            (false, e) if e == X509VerifyResult::OK => VERIFY_UNSPECIFIED,
            (false, e) => e.as_raw(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;
    use crate::validate::testpki::*;
    use crate::validate::validate;

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn parsed(names: &[&str], allow: Option<&str>) -> ParsedCert {
        let k = key();
        let l = leaf(names, &k, -1, 30);
        let r = Record {
            form: crate::record::Form::Pem,
            crt: pem(&l),
            key: key_pem(&k),
            allow: allow.map(|a| a.as_bytes().to_vec()),
            client_ca: None,
            second: None,
        };
        validate(&r, names[0], now()).unwrap()
    }

    fn facts<'a>(cert: &'a ParsedCert, sni: &'a [u8], host: &'a [u8]) -> RequestFacts<'a> {
        RequestFacts {
            server_name: Some(sni),
            host,
            host_header: Some(host),
            installed: Some(&cert.fingerprint),
            current: Some(cert),
            client: Some("127.0.0.1".parse().unwrap()),
            early_data: false,
        }
    }

    fn misdirected(v: Verdict) -> Option<Misdirected> {
        match v {
            Verdict::Misdirected(m) => Some(m),
            _ => None,
        }
    }

    #[test]
    fn own_current_record_with_matching_host_passes() {
        let c = parsed(&["fenced.example"], None);
        assert!(matches!(
            decide(&facts(&c, b"fenced.example", b"fenced.example")),
            Verdict::Pass { client_ca: None }
        ));
        // Case and a trailing dot do not matter on either side (nginx has
        // already dropped the port).
        assert!(matches!(
            decide(&facts(&c, b"Fenced.Example.", b"fenced.example")),
            Verdict::Pass { .. }
        ));
    }

    #[test]
    fn missing_or_invalid_server_name_is_misdirected() {
        let c = parsed(&["fenced.example"], None);
        let mut f = facts(&c, b"", b"fenced.example");
        f.server_name = None;
        assert_eq!(misdirected(decide(&f)), Some(Misdirected::NoServerName));
        f.server_name = Some(b"bad_name");
        assert_eq!(misdirected(decide(&f)), Some(Misdirected::NoServerName));
    }

    #[test]
    fn host_must_be_the_server_name() {
        let c = parsed(&["fenced.example"], None);
        assert_eq!(
            misdirected(decide(&facts(&c, b"fenced.example", b""))),
            Some(Misdirected::NoHost)
        );
        assert_eq!(
            misdirected(decide(&facts(&c, b"other.example", b"fenced.example"))),
            Some(Misdirected::HostMismatch)
        );
        assert_eq!(
            misdirected(decide(&facts(&c, b"fenced.example", b"127.0.0.1"))),
            Some(Misdirected::HostMismatch)
        );
    }

    #[test]
    fn a_host_header_naming_another_host_is_misdirected() {
        let c = parsed(&["fenced.example"], None);
        let mut f = facts(&c, b"open.example", b"open.example");
        f.current = None;
        // The request line (or :authority) names the server name, the
        // Host header another tenant.
        f.host_header = Some(b"fenced.example");
        assert_eq!(misdirected(decide(&f)), Some(Misdirected::HostMismatch));
        let mut f = facts(&c, b"fenced.example", b"fenced.example");
        for same in [
            &b"fenced.example"[..],
            b"Fenced.Example.",
            b"fenced.example:443",
            b"fenced.example:8443",
        ] {
            f.host_header = Some(same);
            assert!(
                matches!(decide(&f), Verdict::Pass { .. }),
                "{}",
                String::from_utf8_lossy(same)
            );
        }
        for other in [
            &b"fenced.example:x"[..],
            b"[::1]:443",
            b"",
            b"fenced.example.other",
        ] {
            f.host_header = Some(other);
            assert_eq!(
                misdirected(decide(&f)),
                Some(Misdirected::HostMismatch),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
        // No Host header (HTTP/2 with :authority only): the host decides.
        f.host_header = None;
        assert!(matches!(decide(&f), Verdict::Pass { .. }));
    }

    #[test]
    fn anything_but_the_current_record_is_misdirected() {
        let c = parsed(&["fenced.example"], None);
        let replaced = parsed(&["fenced.example"], None);
        let mut f = facts(&c, b"fenced.example", b"fenced.example");
        f.current = None;
        assert_eq!(misdirected(decide(&f)), Some(Misdirected::NoRecord));
        f.current = Some(&c);
        f.installed = None; // the default certificate
        assert_eq!(misdirected(decide(&f)), Some(Misdirected::NotInstalled));
        f.installed = Some(&replaced.fingerprint);
        assert_eq!(misdirected(decide(&f)), Some(Misdirected::NotInstalled));
    }

    #[test]
    fn allow_list_of_the_current_record_applies() {
        let c = parsed(&["fenced.example"], Some("10.99.0.0/16"));
        let mut f = facts(&c, b"fenced.example", b"fenced.example");
        assert!(matches!(decide(&f), Verdict::Denied));
        f.client = None;
        assert!(matches!(decide(&f), Verdict::Denied));
        f.client = Some("10.99.1.2".parse().unwrap());
        assert!(matches!(decide(&f), Verdict::Pass { .. }));
    }

    /// Early data never gets in by its address: an address on the list
    /// is told to come back after the handshake (425), one off the list is
    /// denied as ever; with no list, early data is served.
    #[test]
    fn a_request_in_early_data_is_not_admitted_by_its_address() {
        let c = parsed(&["fenced.example"], Some("10.99.0.0/16"));
        let mut f = facts(&c, b"fenced.example", b"fenced.example");
        f.early_data = true;
        f.client = Some("10.99.1.2".parse().unwrap());
        assert!(matches!(decide(&f), Verdict::TooEarly));
        f.client = Some("10.98.1.2".parse().unwrap());
        assert!(matches!(decide(&f), Verdict::Denied));
        f.client = None;
        assert!(matches!(decide(&f), Verdict::Denied));
        let open = parsed(&["open.example"], None);
        let mut f = facts(&open, b"open.example", b"open.example");
        f.early_data = true;
        assert!(matches!(decide(&f), Verdict::Pass { .. }));

        let list = crate::cidr::parse_list("10.99.0.0/16, ::1").unwrap();
        let inside: IpAddr = "10.99.1.2".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        let outside: IpAddr = "192.0.2.1".parse().unwrap();
        for (client, early, want) in [
            (Some(inside), false, AllowVerdict::Admitted),
            (Some(v6), false, AllowVerdict::Admitted),
            (Some(inside), true, AllowVerdict::TooEarly),
            (Some(v6), true, AllowVerdict::TooEarly),
            (Some(outside), false, AllowVerdict::Denied),
            (Some(outside), true, AllowVerdict::Denied),
            (None, false, AllowVerdict::Denied),
            (None, true, AllowVerdict::Denied),
        ] {
            assert_eq!(
                judge_allow_list(&list, client, early),
                want,
                "{client:?} {early}"
            );
        }
        assert_eq!(
            judge_allow_list(&[], Some(inside), true),
            AllowVerdict::Denied
        );
        // `dyncert_allow all`, or a list holding a /0 of the client's
        // family, admits early data: an address proves nothing there.
        let all = crate::cidr::parse_list("0.0.0.0/0, ::/0").unwrap();
        for ip in [inside, v6, outside, "::ffff:192.0.2.1".parse().unwrap()] {
            assert_eq!(
                judge_allow_list(&all, Some(ip), true),
                AllowVerdict::Admitted,
                "{ip}"
            );
        }
        let v4_all = crate::cidr::parse_list("0.0.0.0/0, ::1").unwrap();
        assert_eq!(
            judge_allow_list(&v4_all, Some(outside), true),
            AllowVerdict::Admitted
        );
        assert_eq!(
            judge_allow_list(&v4_all, Some(v6), true),
            AllowVerdict::TooEarly
        );
    }

    #[test]
    fn an_allow_list_naming_no_address_denies_everyone() {
        for empty in ["", " ", ",", " , "] {
            let c = parsed(&["fenced.example"], Some(empty));
            assert_eq!(c.policy.allow.as_deref(), Some(&[][..]), "{empty:?}");
            let mut f = facts(&c, b"fenced.example", b"fenced.example");
            for client in [
                Some("127.0.0.1".parse().unwrap()),
                Some("::1".parse().unwrap()),
                None,
            ] {
                f.client = client;
                assert!(
                    matches!(decide(&f), Verdict::Denied),
                    "{empty:?} {client:?}"
                );
            }
        }
    }

    #[test]
    fn wildcard_record_installed_while_the_name_has_its_own_is_misdirected() {
        let wildcard = parsed(&["*.example.com"], None);
        let own = parsed(&["fenced.example.com"], Some("10.99.0.0/16"));
        let mut f = facts(&own, b"fenced.example.com", b"fenced.example.com");
        f.installed = Some(&wildcard.fingerprint);
        f.client = Some("10.99.1.2".parse().unwrap());
        assert_eq!(misdirected(decide(&f)), Some(Misdirected::NotInstalled));
    }

    #[test]
    fn resumed_session_is_held_to_the_record_its_context_was_bound_to() {
        let bound = parsed(&["fenced.example"], None);
        let current = parsed(&["fenced.example"], None);
        // A session made while `bound` was the record, resumed after it
        // was replaced: the handshake installed nothing new.
        let mut f = facts(&current, b"fenced.example", b"fenced.example");
        f.installed = Some(&bound.fingerprint);
        assert_eq!(misdirected(decide(&f)), Some(Misdirected::NotInstalled));
        // Bound to the current record: the session is as good as a full
        // handshake.
        f.installed = Some(&current.fingerprint);
        assert!(matches!(decide(&f), Verdict::Pass { .. }));
    }

    #[test]
    fn connection_reused_for_another_name_is_misdirected_even_with_its_record() {
        // HTTP/2 reuse: the connection was made for one tenant, the
        // request is for another whose record is cached and whose
        // fingerprint the client claims.
        let other = parsed(&["other.example"], None);
        let mut f = facts(&other, b"fenced.example", b"other.example");
        f.installed = Some(&other.fingerprint);
        assert_eq!(misdirected(decide(&f)), Some(Misdirected::HostMismatch));
    }

    #[test]
    fn default_certificate_without_a_record_is_no_record() {
        // A fetch timeout, the fetch cap or Redis down: the handshake got
        // the default and the worker holds nothing for the name.
        let c = parsed(&["fenced.example"], None);
        let mut f = facts(&c, b"fenced.example", b"fenced.example");
        f.installed = None;
        f.current = None;
        assert_eq!(misdirected(decide(&f)), Some(Misdirected::NoRecord));
    }

    #[test]
    fn misdirection_is_decided_before_the_allow_list() {
        let c = parsed(&["fenced.example"], Some("10.99.0.0/16"));
        let mut f = facts(&c, b"fenced.example", b"fenced.example");
        f.installed = None;
        assert_eq!(misdirected(decide(&f)), Some(Misdirected::NotInstalled));
        f.server_name = None;
        assert_eq!(misdirected(decide(&f)), Some(Misdirected::NoServerName));
    }

    #[test]
    fn record_with_client_cas_passes_them_on() {
        let k = key();
        let l = leaf(&["fenced.example"], &k, -1, 30);
        let ca_key = key();
        let ca = leaf(&["tenant ca"], &ca_key, -1, 30);
        let r = Record {
            form: crate::record::Form::Pem,
            crt: pem(&l),
            key: key_pem(&k),
            allow: None,
            client_ca: Some(pem(&ca)),
            second: None,
        };
        let c = validate(&r, "fenced.example", now()).unwrap();
        match decide(&facts(&c, b"fenced.example", b"fenced.example")) {
            Verdict::Pass {
                client_ca: Some(cas),
            } => assert_eq!(cas.certs.len(), 1),
            _ => panic!("expected a pass that asks for a client certificate"),
        }
    }

    /// A tenant's CA as a record carries it, and certificates it issued.
    mod client_pki {
        use super::*;
        use dyncert_testkit::pki::{ec_key, Issued, Pki};
        use openssl::asn1::Asn1Time;
        use openssl::hash::MessageDigest;
        use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
        use openssl::x509::X509Name;

        pub struct Tenant {
            pub ca: ClientCa,
            pub issuer: Issued,
        }

        pub fn tenant(pki: &Pki, cn: &str) -> Tenant {
            let issuer = pki.client_ca(cn);
            let ca = crate::validate::policy_of(None, Some(issuer.cert_pem.as_bytes()))
                .unwrap()
                .client_ca
                .unwrap();
            Tenant { ca, issuer }
        }

        /// A certificate of `issuer` with these extended key usages (none:
        /// no extension, good for any purpose).
        pub fn issued(issuer: &Issued, eku: &[&str], days: (i64, i64)) -> X509 {
            let key = ec_key();
            let mut name = X509Name::builder().unwrap();
            name.append_entry_by_text("CN", "holder").unwrap();
            let name = name.build();
            let mut b = X509::builder().unwrap();
            b.set_version(2).unwrap();
            b.set_subject_name(&name).unwrap();
            b.set_issuer_name(issuer.cert.subject_name()).unwrap();
            b.set_pubkey(&key).unwrap();
            b.set_not_before(&Asn1Time::from_unix(super::now() + days.0 * 86_400).unwrap())
                .unwrap();
            b.set_not_after(&Asn1Time::from_unix(super::now() + days.1 * 86_400).unwrap())
                .unwrap();
            b.append_extension(BasicConstraints::new().critical().build().unwrap())
                .unwrap();
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .digital_signature()
                    .build()
                    .unwrap(),
            )
            .unwrap();
            if !eku.is_empty() {
                let mut e = ExtendedKeyUsage::new();
                for u in eku {
                    match *u {
                        "clientAuth" => e.client_auth(),
                        "serverAuth" => e.server_auth(),
                        "emailProtection" => e.email_protection(),
                        other => panic!("{other}"),
                    };
                }
                b.append_extension(e.build().unwrap()).unwrap();
            }
            b.sign(&issuer.key, MessageDigest::sha256()).unwrap();
            b.build()
        }
    }

    const SETTINGS: VerifySettings<'static> = VerifySettings {
        param: None,
        security_level: 1,
    };

    fn peer(leaf: &X509) -> Option<PeerCertificate<'_>> {
        Some(PeerCertificate { leaf, sent: None })
    }

    #[test]
    fn client_certificates_are_verified_for_client_authentication() {
        let pki = dyncert_testkit::pki::Pki::new();
        let t = client_pki::tenant(&pki, "tenant CA");
        let other = client_pki::tenant(&pki, "other CA");
        let now = (-1, 30);
        let cases: [(&str, X509, i32); 7] = [
            (
                "clientAuth",
                client_pki::issued(&t.issuer, &["clientAuth"], now),
                0,
            ),
            ("no EKU", client_pki::issued(&t.issuer, &[], now), 0),
            (
                "server and client",
                client_pki::issued(&t.issuer, &["serverAuth", "clientAuth"], now),
                0,
            ),
            // X509_V_ERR_INVALID_PURPOSE: the tenant's server certificates
            // are no client certificates.
            (
                "serverAuth only",
                client_pki::issued(&t.issuer, &["serverAuth"], now),
                26,
            ),
            (
                "emailProtection",
                client_pki::issued(&t.issuer, &["emailProtection"], now),
                26,
            ),
            // X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
            (
                "other CA",
                client_pki::issued(&other.issuer, &["clientAuth"], now),
                20,
            ),
            // X509_V_ERR_CERT_HAS_EXPIRED
            (
                "expired",
                client_pki::issued(&t.issuer, &["clientAuth"], (-30, -1)),
                10,
            ),
        ];
        for (what, cert, code) in &cases {
            assert_eq!(
                verify_client(&t.ca, peer(cert).unwrap(), SETTINGS),
                *code,
                "{what}"
            );
        }
    }

    #[test]
    fn a_resumed_session_gets_no_more_than_a_full_handshake() {
        let pki = dyncert_testkit::pki::Pki::new();
        let t = client_pki::tenant(&pki, "tenant CA");
        let good = client_pki::issued(&t.issuer, &["clientAuth"], (-1, 30));
        let server = client_pki::issued(&t.issuer, &["serverAuth"], (-1, 30));
        let check = |cert, how| check_client_certificate(&t.ca, peer(cert), how, SETTINGS);
        // What the full handshake found stands.
        assert_eq!(
            check(&good, HandshakeVerify::Asked(0)),
            ClientCertVerdict::Pass
        );
        assert_eq!(
            check(&server, HandshakeVerify::Asked(26)),
            ClientCertVerdict::Failed(26)
        );
        // Resumed: verified again, purpose included, whatever the session
        // says ...
        assert_eq!(
            check(&good, HandshakeVerify::Resumed(0)),
            ClientCertVerdict::Pass
        );
        assert_eq!(
            check(&server, HandshakeVerify::Resumed(0)),
            ClientCertVerdict::Failed(26)
        );
        // ... and a session whose handshake refused the certificate stays
        // refused.
        assert_eq!(
            check(&good, HandshakeVerify::Resumed(26)),
            ClientCertVerdict::Failed(26)
        );
        assert_eq!(
            check(&server, HandshakeVerify::NotAsked),
            ClientCertVerdict::Failed(26)
        );
        assert_eq!(
            check(&good, HandshakeVerify::NotAsked),
            ClientCertVerdict::Pass
        );
        assert_eq!(
            check_client_certificate(&t.ca, None, HandshakeVerify::Resumed(0), SETTINGS),
            ClientCertVerdict::Missing
        );
    }

    #[test]
    fn a_connection_judges_its_client_certificate_once_per_record() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut kept = None;
        let mut judged = 0;
        let mut judge = |record, verdict| {
            judge_once(&mut kept, record, || {
                judged += 1;
                verdict
            })
        };
        assert_eq!(judge(a, ClientCertVerdict::Pass), ClientCertVerdict::Pass);
        // Kept: the later requests of the connection are not judged again,
        // whatever a new judgement would say.
        for _ in 0..1000 {
            assert_eq!(
                judge(a, ClientCertVerdict::Failed(10)),
                ClientCertVerdict::Pass
            );
        }
        // Another record: judged afresh, and kept in place of the first.
        assert_eq!(
            judge(b, ClientCertVerdict::Failed(26)),
            ClientCertVerdict::Failed(26)
        );
        assert_eq!(
            judge(b, ClientCertVerdict::Pass),
            ClientCertVerdict::Failed(26)
        );
        assert_eq!(
            judge(a, ClientCertVerdict::Missing),
            ClientCertVerdict::Missing
        );
        assert_eq!(judged, 3);
        assert_eq!(
            kept,
            Some(KeptVerdict {
                record: a,
                verdict: ClientCertVerdict::Missing
            })
        );
    }

    #[test]
    fn a_resumed_sessions_failure_is_kept_too() {
        let pki = dyncert_testkit::pki::Pki::new();
        let t = client_pki::tenant(&pki, "tenant CA");
        let server = client_pki::issued(&t.issuer, &["serverAuth"], (-1, 30));
        let mut kept = None;
        let check = || {
            check_client_certificate(&t.ca, peer(&server), HandshakeVerify::Resumed(0), SETTINGS)
        };
        assert_eq!(
            judge_once(&mut kept, [7; 32], check),
            ClientCertVerdict::Failed(26)
        );
        assert_eq!(
            judge_once(&mut kept, [7; 32], || unreachable!("kept")),
            ClientCertVerdict::Failed(26)
        );
    }

    #[test]
    fn the_connections_verify_parameters_apply() {
        let pki = dyncert_testkit::pki::Pki::new();
        let t = client_pki::tenant(&pki, "tenant CA");
        let good = client_pki::issued(&t.issuer, &["clientAuth"], (-1, 30));
        // A connection set to verify for another purpose (SSL_set_purpose)
        // is followed, as in the handshake.
        let mut param = X509VerifyParam::new().unwrap();
        param.set_purpose(X509PurposeId::SMIME_SIGN).unwrap();
        let settings = VerifySettings {
            param: Some(&param),
            security_level: 1,
        };
        assert_eq!(verify_client(&t.ca, peer(&good).unwrap(), settings), 26);
        // The security level applies to the chain's keys: P-256 is 128
        // bits, short of level 5's 256.
        let strict = VerifySettings {
            param: None,
            security_level: 5,
        };
        assert_ne!(verify_client(&t.ca, peer(&good).unwrap(), strict), 0);
    }

    #[test]
    fn configuration_digest_covers_every_servers_tls_identity() {
        let server = ServerTls {
            certificates: vec![b"leaf A".to_vec(), b"leaf B".to_vec()],
            certificate_names: vec![],
            verify_mode: 1,
            verify_client: 1,
            client_ca_names: vec![b"CN=CA A".to_vec()],
            trusted: vec![b"CA A".to_vec(), b"CA C".to_vec()],
        };
        let config = vec![None, Some(ServerTls::default()), Some(server.clone())];
        let base = configuration_digest(&config);
        assert_eq!(base, configuration_digest(&config.clone()), "deterministic");
        let mut reordered = server.clone();
        reordered.trusted.reverse();
        assert_eq!(
            base,
            configuration_digest(&[None, Some(ServerTls::default()), Some(reordered)]),
            "the trusted store is a set"
        );
        let changed = |f: &dyn Fn(&mut ServerTls)| {
            let mut s = server.clone();
            f(&mut s);
            configuration_digest(&[None, Some(ServerTls::default()), Some(s)])
        };
        let others = [
            changed(&|s| s.certificates[1] = b"leaf B2".to_vec()),
            changed(&|s| s.certificates.reverse()),
            changed(&|s| s.certificate_names.push(b"$ssl_server_name.crt".to_vec())),
            changed(&|s| s.verify_mode = 0),
            changed(&|s| s.verify_client = 2),
            changed(&|s| s.client_ca_names = vec![b"CN=CA B".to_vec()]),
            changed(&|s| s.client_ca_names.clear()),
            changed(&|s| {
                s.trusted.pop();
            }),
            // Framed: moving bytes between neighbours is a change.
            changed(&|s| s.certificates = vec![b"leaf AB".to_vec(), b"leaf B"[5..].to_vec()]),
            changed(&|s| {
                let name = s.client_ca_names.pop().unwrap();
                s.trusted.push(name);
            }),
            configuration_digest(&[Some(ServerTls::default()), Some(server.clone())]),
            configuration_digest(&[Some(server.clone()), None, Some(ServerTls::default())]),
            configuration_digest(&[]),
        ];
        for (i, o) in others.iter().enumerate() {
            assert_ne!(&base, o, "case {i}");
        }
        assert_ne!(session_salt(&base, 0), session_salt(&base, 1));
        assert_ne!(session_salt(&base, 0), session_salt(&others[0], 0));
        assert_eq!(session_salt(&base, 2), session_salt(&base, 2));
    }

    #[test]
    fn session_context_binds_name_and_record() {
        let salt = b"listener";
        let a = [1u8; 32];
        let b = [2u8; 32];
        let base = session_context(salt, Some(b"fenced.example"), Some(&a));
        assert_eq!(
            base,
            session_context(salt, Some(b"FENCED.example."), Some(&a)),
            "normalised names share sessions"
        );
        let others = [
            session_context(salt, None, Some(&a)),
            session_context(salt, Some(b"other.example"), Some(&a)),
            session_context(salt, Some(b"fenced.example"), None),
            session_context(salt, Some(b"fenced.example"), Some(&b)),
            session_context(b"other listener", Some(b"fenced.example"), Some(&a)),
            session_context(salt, Some(b"bad_name"), Some(&a)),
        ];
        for (i, o) in others.iter().enumerate() {
            assert_ne!(&base, o, "case {i}");
        }
        assert_ne!(others[0], others[2], "no name vs no record");
    }
}
