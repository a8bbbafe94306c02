//! A client for the access-phase tests: requests from a chosen source
//! address, behind a PROXY protocol header, with arbitrary headers, with a
//! client certificate, resuming a session, over TLS or plain HTTP; it also
//! reports whether the server asked for a client certificate and which CAs
//! it named. Plus the metrics scrape those tests count with.

use std::collections::BTreeMap;
use std::ffi::{c_int, c_void};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use foreign_types::ForeignTypeRef;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    Ssl, SslContext, SslMethod, SslSession, SslSessionCacheMode, SslVerifyMode, SslVersion,
};
use openssl::stack::StackRef;
use openssl::x509::{X509Name, X509};

use super::{Issued, TlsResponse, IO_TIMEOUT};

// Not wrapped by the openssl crate.
extern "C" {
    // https://docs.openssl.org/3.0/man3/SSL_CTX_set_cert_cb/
    fn SSL_CTX_set_cert_cb(
        ctx: *mut openssl_sys::SSL_CTX,
        cb: Option<unsafe extern "C" fn(*mut openssl_sys::SSL, *mut c_void) -> c_int>,
        arg: *mut c_void,
    );
    // https://docs.openssl.org/3.0/man3/SSL_get_client_CA_list/
    fn SSL_get_client_CA_list(s: *const openssl_sys::SSL) -> *mut openssl_sys::stack_st_X509_NAME;
}

/// What the client-side certificate callback saw: OpenSSL calls it on a
/// client only when the server sent a CertificateRequest.
#[derive(Default)]
struct CertProbe {
    requested: AtomicBool,
    /// CNs of the CA names in the CertificateRequest.
    cas: Mutex<Vec<String>>,
}

unsafe extern "C" fn probe_cert_cb(ssl: *mut openssl_sys::SSL, arg: *mut c_void) -> c_int {
    // SAFETY: arg is the CertProbe of the exchange that owns this SSL; it
    // outlives the connection (see `Request::https`).
    let probe = unsafe { &*(arg as *const CertProbe) };
    probe.requested.store(true, Ordering::SeqCst);
    // SAFETY: on a client, the list parsed from the CertificateRequest,
    // owned by the SSL (or NULL).
    let list = unsafe { SSL_get_client_CA_list(ssl) };
    if !list.is_null() {
        // SAFETY: a live STACK_OF(X509_NAME), borrowed for this call only.
        let names = unsafe { StackRef::<X509Name>::from_ptr(list) };
        let mut cas = probe.cas.lock().unwrap();
        for n in names {
            cas.push(common_name(n));
        }
    }
    1
}

fn common_name(n: &openssl::x509::X509NameRef) -> String {
    n.entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_default()
}

/// A PROXY protocol v1 header (text) for a TCP connection `src` -> `dst`.
pub fn proxy_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A PROXY protocol v2 header (binary, PROXY command) for `src` -> `dst`.
pub fn proxy_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    let mut addrs = Vec::new();
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.push(0x11); // AF_INET, STREAM
            addrs.extend_from_slice(&s.octets());
            addrs.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            h.push(0x21); // AF_INET6, STREAM
            addrs.extend_from_slice(&s.octets());
            addrs.extend_from_slice(&d.octets());
        }
        _ => panic!("PROXY v2: mixed address families {src} {dst}"),
    }
    addrs.extend_from_slice(&src.port().to_be_bytes());
    addrs.extend_from_slice(&dst.port().to_be_bytes());
    h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    h.extend_from_slice(&addrs);
    h
}

/// A TCP connection to `to` whose source address is `from` (any local
/// address: the whole of 127.0.0.0/8 is, so tests can play several
/// clients), or the kernel's choice when `None`.
pub fn connect_from(from: Option<IpAddr>, to: SocketAddr) -> Result<TcpStream, String> {
    let Some(from) = from else {
        return TcpStream::connect_timeout(&to, IO_TIMEOUT)
            .map_err(|e| format!("connect {to}: {e}"));
    };
    let (family, src, dst) = match (from, to) {
        (IpAddr::V4(_), SocketAddr::V4(_)) => (
            libc::AF_INET,
            sockaddr(SocketAddr::new(from, 0)),
            sockaddr(to),
        ),
        (IpAddr::V6(_), SocketAddr::V6(_)) => (
            libc::AF_INET6,
            sockaddr(SocketAddr::new(from, 0)),
            sockaddr(to),
        ),
        _ => return Err(format!("cannot connect from {from} to {to}")),
    };
    // SAFETY: socket(2) has no memory preconditions.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh socket we own; the TcpStream closes it on drop,
    // also on the error paths below.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    // SAFETY: src/dst are initialized sockaddr_storage values of the right
    // family with their true lengths.
    if unsafe { libc::bind(fd, &src.0 as *const _ as *const libc::sockaddr, src.1) } != 0 {
        return Err(format!("bind {from}: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: as above; a blocking connect on loopback returns at once.
    if unsafe { libc::connect(fd, &dst.0 as *const _ as *const libc::sockaddr, dst.1) } != 0 {
        return Err(format!(
            "connect {to} from {from}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(stream)
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any
            // sockaddr type.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Whether this machine can use `::1` (containers without IPv6 cannot).
pub fn has_ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// The TLS side of an exchange.
pub struct TlsSide {
    /// The server's chain as `TlsResponse` (for `assert_served` and
    /// `assert_default`; its status and body repeat the exchange's).
    pub peer: TlsResponse,
    /// The server sent a CertificateRequest.
    pub cert_requested: bool,
    /// CNs of the CAs it named in it.
    pub requested_cas: Vec<String>,
    /// The handshake resumed the session given with `Request::resume`.
    pub resumed: bool,
    /// The session after the exchange (tickets arrive after the handshake
    /// in TLS 1.3, so this is read once the response is in).
    pub session: Option<SslSession>,
    pub version: &'static str,
}

impl std::fmt::Debug for TlsSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSide")
            .field("leaf_sans", &self.peer.leaf_sans)
            .field("leaf_serial", &self.peer.leaf_serial)
            .field("cert_requested", &self.cert_requested)
            .field("requested_cas", &self.requested_cas)
            .field("resumed", &self.resumed)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// One request and its response.
#[derive(Debug)]
pub struct Exchange {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The server closed the connection after the response, as it must
    /// after `Connection: close`.
    pub closed: bool,
    /// From connect until the response was complete (not until the close).
    pub elapsed: Duration,
    pub tls: Option<TlsSide>,
}

impl Exchange {
    /// A response header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn tls(&self) -> &TlsSide {
        self.tls.as_ref().expect("not a TLS exchange")
    }
}

/// A request as the access tests need to shape it; `http` or `https`
/// sends it.
#[derive(Clone)]
pub struct Request {
    method: String,
    path: String,
    host: Option<String>,
    headers: Vec<(String, String)>,
    from: Option<IpAddr>,
    to: IpAddr,
    prefix: Vec<u8>,
    sni: Option<String>,
    client_cert: Option<(X509, PKey<Private>)>,
    max_tls: Option<SslVersion>,
    session: Option<SslSession>,
    alpn: Option<Vec<u8>>,
    split: Option<(usize, Duration)>,
}

impl Request {
    pub fn get(path: &str) -> Request {
        Request::method("GET", path)
    }

    pub fn head(path: &str) -> Request {
        Request::method("HEAD", path)
    }

    pub fn method(method: &str, path: &str) -> Request {
        Request {
            method: method.to_string(),
            path: path.to_string(),
            host: None,
            headers: Vec::new(),
            from: None,
            to: IpAddr::V4(Ipv4Addr::LOCALHOST),
            prefix: Vec::new(),
            sni: None,
            client_cert: None,
            max_tls: None,
            session: None,
            alpn: None,
            split: None,
        }
    }

    /// `Host` header; defaults to the SNI, else `localhost`.
    pub fn host(mut self, host: &str) -> Request {
        self.host = Some(host.to_string());
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Connects from this local address.
    pub fn from(mut self, ip: &str) -> Request {
        self.from = Some(ip.parse().expect("source address"));
        self
    }

    /// Connects to this address (default 127.0.0.1).
    pub fn to(mut self, ip: &str) -> Request {
        self.to = ip.parse().expect("destination address");
        self
    }

    /// Bytes written on the TCP connection before anything else (a PROXY
    /// protocol header).
    pub fn prefix(mut self, bytes: Vec<u8>) -> Request {
        self.prefix = bytes;
        self
    }

    pub fn sni(mut self, name: &str) -> Request {
        self.sni = Some(name.to_string());
        self
    }

    /// Presents this certificate when the server asks for one.
    pub fn client_cert(mut self, cert: &Issued) -> Request {
        self.client_cert = Some((cert.cert.clone(), cert.key.clone()));
        self
    }

    pub fn max_tls(mut self, v: SslVersion) -> Request {
        self.max_tls = Some(v);
        self
    }

    /// Offers these ALPN protocols (wire format: length-prefixed names);
    /// a long list makes a ClientHello larger than the module's peek.
    pub fn alpn(mut self, protos: Vec<u8>) -> Request {
        self.alpn = Some(protos);
        self
    }

    /// Sends the first `at` bytes of the ClientHello, waits `pause`, then
    /// the rest (a ClientHello split across TCP segments).
    pub fn split_hello(mut self, at: usize, pause: Duration) -> Request {
        self.split = Some((at, pause));
        self
    }

    /// Offers this session for resumption.
    pub fn resume(mut self, session: &SslSession) -> Request {
        self.session = Some(session.clone());
        self
    }

    fn head_bytes(&self) -> Vec<u8> {
        let host = self
            .host
            .clone()
            .or_else(|| self.sni.clone())
            .unwrap_or_else(|| "localhost".to_string());
        let mut req = format!("{} {} HTTP/1.1\r\nHost: {host}\r\n", self.method, self.path);
        for (k, v) in &self.headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("Connection: close\r\n\r\n");
        req.into_bytes()
    }

    fn connect(&self, port: u16) -> Result<TcpStream, String> {
        let mut tcp = connect_from(self.from, SocketAddr::new(self.to, port))?;
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        tcp.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        if !self.prefix.is_empty() {
            tcp.write_all(&self.prefix)
                .map_err(|e| format!("write prefix: {e}"))?;
        }
        Ok(tcp)
    }

    /// Sends the request over plain HTTP.
    pub fn http(&self, port: u16) -> Result<Exchange, String> {
        let start = Instant::now();
        let mut tcp = self.connect(port)?;
        tcp.write_all(&self.head_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let probe = tcp.try_clone().unwrap();
        let r = read_response(&mut tcp, self.method == "HEAD", |t| {
            probe.set_read_timeout(Some(t)).unwrap()
        })?;
        Ok(Exchange {
            status: r.status,
            headers: r.headers,
            body: r.body,
            closed: r.closed,
            elapsed: r.complete - start,
            tls: None,
        })
    }

    /// Sends the request over TLS (no verification of the server: the
    /// tests compare its chain themselves).
    pub fn https(&self, port: u16) -> Result<Exchange, String> {
        // Declared first, dropped last: the SSL_CTX below points at it.
        let probe = Box::new(CertProbe::default());
        let start = Instant::now();
        let tcp = self.connect(port)?;
        let timeouts = tcp.try_clone().unwrap();

        let mut b = SslContext::builder(SslMethod::tls_client()).unwrap();
        b.set_verify(SslVerifyMode::NONE);
        b.set_min_proto_version(Some(SslVersion::TLS1_2)).unwrap();
        b.set_max_proto_version(self.max_tls).unwrap();
        // Sessions are resumed only when a test asks for it.
        b.set_session_cache_mode(SslSessionCacheMode::OFF);
        if let Some(protos) = &self.alpn {
            b.set_alpn_protos(protos).unwrap();
        }
        // SAFETY: b is a live SSL_CTX; the probe outlives every SSL made
        // from it (they all live inside this function).
        unsafe {
            SSL_CTX_set_cert_cb(
                b.as_ptr(),
                Some(probe_cert_cb),
                &*probe as *const CertProbe as *mut c_void,
            );
        }
        let ctx = b.build();
        let mut ssl = Ssl::new(&ctx).unwrap();
        if let Some(name) = &self.sni {
            ssl.set_hostname(name)
                .map_err(|e| format!("client refused SNI {name:?}: {e}"))?;
        }
        if let Some((cert, key)) = &self.client_cert {
            ssl.set_certificate(cert).unwrap();
            ssl.set_private_key(key).unwrap();
        }
        if let Some(s) = &self.session {
            // SAFETY: the session comes from an earlier exchange of this
            // client with the same kind of context.
            unsafe { ssl.set_session(s) }.unwrap();
        }
        let tcp = SplitWrites {
            inner: tcp,
            split: self.split,
        };
        let mut stream = ssl.connect(tcp).map_err(|e| match e {
            openssl::ssl::HandshakeError::Failure(mid) => {
                format!("handshake failed: {}", mid.error())
            }
            openssl::ssl::HandshakeError::SetupFailure(e) => format!("setup: {e}"),
            openssl::ssl::HandshakeError::WouldBlock(_) => "handshake timed out".to_string(),
        })?;
        let handshake = start.elapsed();
        // A resumed session carries the peer's leaf but not its chain.
        let chain: Vec<X509> = match stream.ssl().peer_cert_chain() {
            Some(c) => c.iter().map(|x| x.to_owned()).collect(),
            None => stream.ssl().peer_certificate().into_iter().collect(),
        };
        let leaf = chain.first().ok_or("no peer certificate")?;
        let leaf_serial = leaf
            .serial_number()
            .to_bn()
            .and_then(|b| b.to_hex_str().map(|s| s.to_string()))
            .map_err(|e| e.to_string())?;
        let leaf_sans = leaf
            .subject_alt_names()
            .map(|s| {
                s.iter()
                    .filter_map(|g| g.dnsname().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();

        stream
            .write_all(&self.head_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let r = read_response(&mut stream, self.method == "HEAD", |t| {
            timeouts.set_read_timeout(Some(t)).unwrap()
        })?;
        let elapsed = r.complete - start;
        let ssl = stream.ssl();
        let tls = TlsSide {
            peer: TlsResponse {
                chain,
                leaf_serial,
                leaf_sans,
                status: r.status,
                body: r.body.clone(),
                elapsed,
                handshake,
            },
            cert_requested: probe.requested.load(Ordering::SeqCst),
            requested_cas: probe.cas.lock().unwrap().clone(),
            resumed: ssl.session_reused(),
            // Through DER, as a client storing sessions would: a session
            // object OpenSSL saw end in an unexpected EOF (nginx may close
            // without close_notify) is marked not resumable in memory.
            session: ssl
                .session()
                .and_then(|s| s.to_der().ok())
                .and_then(|der| SslSession::from_der(&der).ok()),
            version: ssl.version_str(),
        };
        drop(stream);
        drop(ctx);
        Ok(Exchange {
            status: r.status,
            headers: r.headers,
            body: r.body,
            closed: r.closed,
            elapsed,
            tls: Some(tls),
        })
    }
}

/// A TCP stream whose first write can be split in two with a pause.
struct SplitWrites {
    inner: TcpStream,
    split: Option<(usize, Duration)>,
}

impl Read for SplitWrites {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for SplitWrites {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.split.take() {
            Some((at, pause)) if at < buf.len() => {
                self.inner.write_all(&buf[..at])?;
                self.inner.flush()?;
                std::thread::sleep(pause);
                self.inner.write_all(&buf[at..])?;
                Ok(buf.len())
            }
            _ => self.inner.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A plain-HTTP/1.1 keep-alive connection on which requests are sent and
/// answered one at a time. Floods use many of them, each with a request
/// outstanding, so that many requests reach nginx at once (new
/// connections only come in one `accept` per event loop iteration).
pub struct KeepAlive {
    stream: TcpStream,
    sent: Option<(Instant, bool)>,
}

impl KeepAlive {
    pub fn connect(port: u16) -> Result<KeepAlive, String> {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let stream =
            TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Ok(KeepAlive { stream, sent: None })
    }

    /// Writes `METHOD path` without waiting for the answer.
    pub fn send(&mut self, method: &str, path: &str) -> Result<(), String> {
        assert!(self.sent.is_none(), "one request at a time");
        let req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        self.stream
            .write_all(req.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        self.sent = Some((Instant::now(), method == "HEAD"));
        Ok(())
    }

    /// Reads the answer to the request sent; `closed` says the server
    /// announced `Connection: close` (the connection is then done).
    pub fn receive(&mut self) -> Result<Exchange, String> {
        let (start, head) = self.sent.take().expect("no request sent");
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let (status, headers, body) = loop {
            if let Some(p) = parse_complete(&raw, head) {
                break p;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&raw))),
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        };
        let closed =
            header(&headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        Ok(Exchange {
            status,
            headers,
            body,
            closed,
            elapsed: start.elapsed(),
            tls: None,
        })
    }

    /// `GET path` and its answer.
    pub fn get(&mut self, path: &str) -> Result<Exchange, String> {
        self.send("GET", path)?;
        self.receive()
    }
}

/// How long to wait for the server to close after a complete response.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A response as read: status, headers, body (de-chunked), whether the
/// server then closed the connection, and when the response was complete.
struct ReadResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    closed: bool,
    complete: Instant,
}

/// Reads one response. `set_timeout` changes the socket's read timeout
/// (the stream may be TLS over it).
fn read_response(
    s: &mut impl Read,
    head_request: bool,
    set_timeout: impl Fn(Duration),
) -> Result<ReadResponse, String> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let mut closed = false;
    let mut parsed = None;
    let mut complete = None;
    loop {
        if parsed.is_none() {
            parsed = parse_complete(&raw, head_request);
            if parsed.is_some() {
                // The response is in; now only the close is awaited.
                complete = Some(Instant::now());
                set_timeout(CLOSE_WAIT);
            }
        }
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if parsed.is_none() {
                    return Err(format!(
                        "read timed out; got {:?}",
                        String::from_utf8_lossy(&raw)
                    ));
                }
                break;
            }
            // A reset or an unexpected EOF after TLS: the server is gone.
            Err(e) => {
                if raw.is_empty() {
                    return Err(format!("read: {e}"));
                }
                closed = true;
                break;
            }
        }
    }
    let (status, headers, body) = match parsed.or_else(|| parse_complete(&raw, head_request)) {
        Some(p) => p,
        // No length: the body is everything up to the close.
        None => parse_until_close(&raw)?,
    };
    Ok(ReadResponse {
        status,
        headers,
        body,
        closed,
        complete: complete.unwrap_or_else(Instant::now),
    })
}

type Headers = Vec<(String, String)>;
/// Status, headers, body.
type Parsed = (u16, Headers, String);

/// Status, headers, and where the body starts.
fn parse_head(raw: &[u8]) -> Option<(u16, Headers, usize)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = String::from_utf8_lossy(&raw[..end]);
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some((status, headers, end + 4))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The response if it is complete by its own framing (Content-Length,
/// chunked, or a HEAD answer).
fn parse_complete(raw: &[u8], head_request: bool) -> Option<Parsed> {
    let (status, headers, start) = parse_head(raw)?;
    let rest = &raw[start..];
    if head_request || status == 204 || status == 304 {
        return Some((status, headers, String::new()));
    }
    if header(&headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let body = dechunk(rest)?;
        return Some((status, headers, body));
    }
    let len: usize = header(&headers, "content-length")?.parse().ok()?;
    (rest.len() >= len).then(|| {
        let body = String::from_utf8_lossy(&rest[..len]).into_owned();
        (status, headers, body)
    })
}

fn parse_until_close(raw: &[u8]) -> Result<Parsed, String> {
    let (status, headers, start) = parse_head(raw)
        .ok_or_else(|| format!("no HTTP response in {:?}", String::from_utf8_lossy(raw)))?;
    let body = String::from_utf8_lossy(&raw[start..]).into_owned();
    Ok((status, headers, body))
}

/// A complete chunked body, or None while chunks are missing.
fn dechunk(mut rest: &[u8]) -> Option<String> {
    let mut body = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some(String::from_utf8_lossy(&body).into_owned());
        }
        if rest.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// One scrape of a `dyncert_metrics` endpoint: sample -> value.
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    /// A sample that must be exported.
    pub fn get(&self, key: &str) -> f64 {
        *self
            .0
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key} in {:#?}", self.0))
    }
}

/// `GET /metrics` on a plain-HTTP server with `dyncert_metrics`.
pub fn scrape_metrics(port: u16) -> Metrics {
    let r = Request::get("/metrics")
        .http(port)
        .unwrap_or_else(|e| panic!("metrics: {e}"));
    assert_eq!(r.status, 200, "metrics answered {r:?}");
    let samples = r
        .body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (k, v) = line.rsplit_once(' ').expect("sample line");
            (k.to_owned(), v.parse::<f64>().expect("numeric sample"))
        })
        .collect();
    Metrics(samples)
}

/// Writes `html/<dir>index.html` under nginx's prefix for each of `dirs`
/// (`""` for the root, else ending in `/`), with the body `page /<dir>\n`:
/// content for `root html;` locations, which the access phase guards
/// (a `return` would answer in the rewrite phase, before it).
pub fn write_index_pages(nginx: &super::Nginx, dirs: &[&str]) {
    for d in dirs {
        super::write_file(
            &nginx.prefix().join("html").join(d).join("index.html"),
            format!("page /{d}\n"),
        );
    }
}

/// The body `write_index_pages` wrote for `dir`.
pub fn index_page(dir: &str) -> String {
    format!("page /{dir}\n")
}
