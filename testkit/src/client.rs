//! The TLS (and plain HTTP) client of the tests and the benchmark: a
//! `Request` shaped as a test needs it (source address, PROXY protocol
//! prefix, SNI, Host, headers, client certificate, TLS versions, ALPN, a
//! ClientHello split across segments, a session to resume), sent as a
//! whole (`https`, `http`), or only as far as the handshake (`handshake`,
//! which the benchmark times and closes from the client side), or only as
//! far as the ClientHello (`send_hello`, a connection left parked).
//!
//! The server is never verified: the tests compare the chain they got
//! with the record, and the benchmark checks that the leaf names the SNI.
//! Connections share one SSL_CTX (the benchmark's another, see
//! `Request::like_ssl_connector`), built once: a handshake costs what a
//! client's handshake costs and nothing more.

use std::ffi::{c_int, c_void};
use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use foreign_types::ForeignTypeRef;
use openssl::ex_data::Index;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    HandshakeError, Ssl, SslConnector, SslContext, SslContextBuilder, SslMethod, SslRef,
    SslSession, SslSessionCacheMode, SslStream, SslVerifyMode, SslVersion,
};
use openssl::stack::StackRef;
use openssl::x509::{X509Name, X509NameRef, X509};

use crate::http::{header, read_response, Headers};
use crate::net::connect_from;
use crate::pki::{dns_sans, Issued, Leaf, Pki, DEFAULT_NAME};

pub use crate::net::IO_TIMEOUT;

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

/// Where each connection keeps its `CertProbe`.
fn probe_index() -> Index<Ssl, Arc<CertProbe>> {
    static INDEX: OnceLock<Index<Ssl, Arc<CertProbe>>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().expect("SSL ex_data index"))
}

unsafe extern "C" fn probe_cert_cb(ssl: *mut openssl_sys::SSL, _arg: *mut c_void) -> c_int {
    // SAFETY: OpenSSL passes the live SSL whose handshake runs this
    // callback; it is borrowed for the call only.
    let ssl = unsafe { SslRef::from_ptr(ssl) };
    let Some(probe) = ssl.ex_data(probe_index()) else {
        return 1;
    };
    probe.requested.store(true, Ordering::SeqCst);
    // SAFETY: on a client, the list parsed from the CertificateRequest,
    // owned by the SSL (or NULL).
    let list = unsafe { SSL_get_client_CA_list(ssl.as_ptr()) };
    if !list.is_null() {
        // SAFETY: a live STACK_OF(X509_NAME), borrowed for this call only.
        let names = unsafe { StackRef::<X509Name>::from_ptr(list) };
        let mut cas = probe.cas.lock().unwrap();
        for n in names {
            cas.push(common_name(n));
        }
    }
    // Go on with the certificate set on the SSL, if any.
    1
}

fn common_name(n: &X509NameRef) -> String {
    n.entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_default()
}

/// The SSL_CTX connections are made from: no verification, TLS 1.2 at
/// least, no session cache (a resumed session skips the certificate
/// selection under test; sessions are resumed only when a request says
/// so), and the CertificateRequest probe. Built once per process (one of
/// two: see `Request::like_ssl_connector`).
fn context(like_ssl_connector: bool) -> &'static SslContext {
    static PLAIN: OnceLock<SslContext> = OnceLock::new();
    static CONNECTOR: OnceLock<SslContext> = OnceLock::new();
    let configure = |b: &mut SslContextBuilder| {
        b.set_verify(SslVerifyMode::NONE);
        b.set_min_proto_version(Some(SslVersion::TLS1_2)).unwrap();
        b.set_session_cache_mode(SslSessionCacheMode::OFF);
        // SAFETY: b is a live SSL_CTX; the callback reads only the SSL it
        // is given and that SSL's ex_data.
        unsafe { SSL_CTX_set_cert_cb(b.as_ptr(), Some(probe_cert_cb), std::ptr::null_mut()) };
    };
    if like_ssl_connector {
        CONNECTOR.get_or_init(|| {
            let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
            configure(&mut b);
            b.build().into_context()
        })
    } else {
        PLAIN.get_or_init(|| {
            let mut b = SslContext::builder(SslMethod::tls_client()).unwrap();
            configure(&mut b);
            b.build()
        })
    }
}

/// A request as a test shapes it; `https` or `http` sends it.
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
    min_tls: Option<SslVersion>,
    max_tls: Option<SslVersion>,
    session: Option<SslSession>,
    alpn: Option<Vec<u8>>,
    split: Option<(usize, Duration)>,
    timeout: Duration,
    like_ssl_connector: bool,
}

/// `GET /`, for handshakes whose request does not matter.
impl Default for Request {
    fn default() -> Request {
        Request::get("/")
    }
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
            min_tls: None,
            max_tls: None,
            session: None,
            alpn: None,
            split: None,
            timeout: IO_TIMEOUT,
            like_ssl_connector: false,
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

    /// Sends this server name, as it is (SSL_set_tlsext_host_name directly:
    /// unlike SslConnector it sends IP literals and odd names, which the
    /// tests need).
    pub fn sni(self, name: &str) -> Request {
        self.sni_opt(Some(name))
    }

    /// `sni`, or no server name at all when `None`.
    pub fn sni_opt(mut self, name: Option<&str>) -> Request {
        self.sni = name.map(str::to_string);
        self
    }

    /// Presents this certificate when the server asks for one.
    pub fn client_cert(mut self, cert: &Issued) -> Request {
        self.client_cert = Some((cert.cert.clone(), cert.key.clone()));
        self
    }

    /// The lowest TLS version offered (TLS 1.2 unless set).
    pub fn min_tls(mut self, v: SslVersion) -> Request {
        self.min_tls = Some(v);
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

    /// Read and write timeout of the connection (`IO_TIMEOUT` unless set).
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = timeout;
        self
    }

    /// Connects from an SSL_CTX set up as `openssl::ssl::SslConnector`
    /// sets one up (OpenSSL's bug workarounds, the system's CA store
    /// loaded), still verifying nothing. OpenSSL then looks every server
    /// chain up in that store, some 0.3 ms of client time per handshake
    /// here: the benchmark's client has always paid that, and keeps paying
    /// it so that its latencies compare with earlier results.
    pub fn like_ssl_connector(mut self) -> Request {
        self.like_ssl_connector = true;
        self
    }

    fn head_bytes(&self) -> Vec<u8> {
        let host = self
            .host
            .as_deref()
            .or(self.sni.as_deref())
            .unwrap_or("localhost");
        let mut req = format!("{} {} HTTP/1.1\r\nHost: {host}\r\n", self.method, self.path);
        for (k, v) in &self.headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("Connection: close\r\n\r\n");
        req.into_bytes()
    }

    fn connect(&self, port: u16) -> Result<TcpStream, String> {
        let mut tcp = connect_from(self.from, SocketAddr::new(self.to, port))?;
        tcp.set_read_timeout(Some(self.timeout)).unwrap();
        tcp.set_write_timeout(Some(self.timeout)).unwrap();
        // Every write is a segment of its own at once: a TLS client's
        // Finished and the request behind it must not wait for an ACK.
        tcp.set_nodelay(true).unwrap();
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
        let timeouts = tcp.try_clone().unwrap();
        let r = read_response(&mut tcp, self.method == "HEAD", |t| {
            timeouts.set_read_timeout(Some(t)).unwrap()
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

    /// Sends the request over TLS.
    pub fn https(&self, port: u16) -> Result<Exchange, String> {
        self.handshake(port)?.send()
    }

    /// An SSL for this request's TLS settings.
    fn ssl(&self) -> Result<(Ssl, Arc<CertProbe>), String> {
        let mut ssl =
            Ssl::new(context(self.like_ssl_connector)).map_err(|e| format!("SSL_new: {e}"))?;
        if let Some(v) = self.min_tls {
            ssl.set_min_proto_version(Some(v)).unwrap();
        }
        if let Some(v) = self.max_tls {
            ssl.set_max_proto_version(Some(v)).unwrap();
        }
        if let Some(protos) = &self.alpn {
            ssl.set_alpn_protos(protos).unwrap();
        }
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
            // client, made from the same SSL_CTX.
            unsafe { ssl.set_session(s) }.unwrap();
        }
        let probe = Arc::new(CertProbe::default());
        ssl.set_ex_data(probe_index(), Arc::clone(&probe));
        Ok((ssl, probe))
    }

    /// Connects and completes the TLS handshake; the request itself is
    /// sent by `TlsConn::send` (or never: `TlsConn::close`).
    pub fn handshake(&self, port: u16) -> Result<TlsConn, String> {
        let (ssl, probe) = self.ssl()?;
        let start = Instant::now();
        let tcp = self.connect(port)?;
        let tcp = SplitWrites {
            inner: tcp,
            split: self.split,
        };
        let stream = ssl.connect(tcp).map_err(|e| match e {
            HandshakeError::Failure(mid) => format!("handshake failed: {}", mid.error()),
            HandshakeError::SetupFailure(e) => format!("setup: {e}"),
            HandshakeError::WouldBlock(_) => "handshake timed out".to_string(),
        })?;
        Ok(TlsConn {
            handshake: start.elapsed(),
            start,
            stream,
            probe,
            head: self.head_bytes(),
            head_request: self.method == "HEAD",
        })
    }

    /// Connects and sends the ClientHello, without waiting for the answer:
    /// the connection stays open, as far as the client is concerned, until
    /// the returned value is dropped.
    pub fn send_hello(&self, port: u16) -> Result<HelloSent, String> {
        let (ssl, _probe) = self.ssl()?;
        let tcp = self.connect(port)?;
        tcp.set_nonblocking(true)
            .map_err(|e| format!("nonblocking: {e}"))?;
        let tcp = SplitWrites {
            inner: tcp,
            split: None,
        };
        match ssl.connect(tcp) {
            Err(HandshakeError::WouldBlock(mid)) => Ok(HelloSent {
                _conn: Box::new(mid),
            }),
            Ok(s) => Ok(HelloSent { _conn: Box::new(s) }),
            Err(HandshakeError::Failure(mid)) => Err(format!("handshake failed: {}", mid.error())),
            Err(HandshakeError::SetupFailure(e)) => Err(format!("setup: {e}")),
        }
    }
}

/// A finished TLS handshake, its request not sent yet.
pub struct TlsConn {
    stream: SslStream<SplitWrites>,
    /// When connect(2) started.
    start: Instant,
    /// From the start of connect(2) to the end of the client's handshake.
    handshake: Duration,
    probe: Arc<CertProbe>,
    head: Vec<u8>,
    head_request: bool,
}

impl fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConn")
            .field("handshake", &self.handshake)
            .field("version", &self.stream.ssl().version_str())
            .finish_non_exhaustive()
    }
}

impl TlsConn {
    /// From the start of connect(2) to the end of the client's handshake.
    pub fn handshake_time(&self) -> Duration {
        self.handshake
    }

    /// Whether the leaf's subjectAltNames include the DNS name `name`.
    pub fn leaf_names(&self, name: &str) -> bool {
        self.stream
            .ssl()
            .peer_certificate()
            .and_then(|leaf| leaf.subject_alt_names())
            .is_some_and(|sans| sans.iter().any(|g| g.dnsname() == Some(name)))
    }

    pub fn ssl(&self) -> &SslRef {
        self.stream.ssl()
    }

    /// Sends close_notify and FIN first, then waits for the server to
    /// close. The client closing first keeps TIME_WAIT on the client's
    /// side: left on the server's, every reused client port would send its
    /// SYN into a TIME_WAIT socket, and the server's CPU per handshake
    /// would climb over the first half-minute of a benchmark run (until
    /// the ephemeral ports wrap) and bias whichever configuration ran
    /// first.
    pub fn close(mut self) {
        let _ = self.stream.shutdown();
        let _ = self.stream.get_ref().inner.shutdown(Shutdown::Write);
        let mut sink = [0u8; 256];
        while matches!(self.stream.get_mut().inner.read(&mut sink), Ok(n) if n > 0) {}
    }

    /// Sends the request and reads the response.
    pub fn send(mut self) -> Result<Exchange, String> {
        // A resumed session carries the peer's leaf but not its chain.
        let chain: Vec<X509> = match self.stream.ssl().peer_cert_chain() {
            Some(c) => c.iter().map(|x| x.to_owned()).collect(),
            None => self.stream.ssl().peer_certificate().into_iter().collect(),
        };
        let leaf = chain.first().ok_or("no peer certificate")?;
        let leaf_serial = leaf
            .serial_number()
            .to_bn()
            .and_then(|b| b.to_hex_str().map(|s| s.to_string()))
            .map_err(|e| e.to_string())?;
        let leaf_sans = dns_sans(leaf);

        self.stream
            .write_all(&self.head)
            .map_err(|e| format!("write: {e}"))?;
        let timeouts = self.stream.get_ref().inner.try_clone().unwrap();
        let r = read_response(&mut self.stream, self.head_request, |t| {
            timeouts.set_read_timeout(Some(t)).unwrap()
        })?;
        let ssl = self.stream.ssl();
        let tls = TlsSide {
            chain,
            leaf_serial,
            leaf_sans,
            handshake: self.handshake,
            cert_requested: self.probe.requested.load(Ordering::SeqCst),
            requested_cas: self.probe.cas.lock().unwrap().clone(),
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
        Ok(Exchange {
            status: r.status,
            headers: r.headers,
            body: r.body,
            closed: r.closed,
            elapsed: r.complete - self.start,
            tls: Some(tls),
        })
    }
}

/// A connection whose ClientHello is sent; dropping it closes it.
pub struct HelloSent {
    /// The handshake in progress (or done, if the server was quick).
    _conn: Box<dyn std::any::Any>,
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

/// The TLS side of an exchange.
pub struct TlsSide {
    /// The server's chain as sent, leaf first (only the leaf when the
    /// session was resumed).
    pub chain: Vec<X509>,
    /// Upper-case hex, as `Leaf::serial_hex`.
    pub leaf_serial: String,
    pub leaf_sans: Vec<String>,
    /// From connect to the end of the handshake.
    pub handshake: Duration,
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

impl fmt::Debug for TlsSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSide")
            .field("leaf_sans", &self.leaf_sans)
            .field("leaf_serial", &self.leaf_serial)
            .field("handshake", &self.handshake)
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
    pub headers: Headers,
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
        header(&self.headers, name)
    }

    /// The TLS side; panics for a plain-HTTP exchange.
    pub fn tls(&self) -> &TlsSide {
        self.tls.as_ref().expect("not a TLS exchange")
    }

    /// The server presented the static default certificate.
    pub fn is_default(&self) -> bool {
        self.tls().leaf_sans == [DEFAULT_NAME]
    }

    /// `$dyncert_source` from a body of the form `... via <source> ...`
    /// (empty when the variable is).
    pub fn source(&self) -> &str {
        self.body
            .split_once(" via ")
            .and_then(|(_, rest)| rest.split([' ', '\n']).next())
            .unwrap_or("")
    }

    /// `$dyncert_name` from a body containing `name=<name>`.
    pub fn name(&self) -> &str {
        self.body
            .split_whitespace()
            .find_map(|w| w.strip_prefix("name="))
            .unwrap_or("")
    }

    /// `$pid` of the worker from a body containing `pid=<pid>`.
    pub fn pid(&self) -> u32 {
        self.body
            .split_whitespace()
            .find_map(|w| w.strip_prefix("pid="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid= in body {:?}", self.body))
    }

    /// Asserts that the leaf is `leaf` and that the intermediate follows it.
    pub fn assert_served(&self, leaf: &Leaf, pki: &Pki) {
        let tls = self.tls();
        assert_eq!(
            tls.leaf_serial, leaf.serial_hex,
            "wrong certificate (SANs {:?}, body {:?})",
            tls.leaf_sans, self.body
        );
        assert_eq!(
            tls.chain[0].to_der().unwrap(),
            leaf.issued.cert.to_der().unwrap(),
            "leaf differs from the record"
        );
        assert_eq!(tls.chain.len(), 2, "expected leaf + intermediate");
        assert_eq!(
            tls.chain[1].to_der().unwrap(),
            pki.intermediate.cert.to_der().unwrap(),
            "second certificate is not the intermediate"
        );
    }

    pub fn assert_default(&self) {
        let tls = self.tls();
        assert!(
            self.is_default(),
            "expected the default certificate, got SANs {:?} serial {} (body {:?})",
            tls.leaf_sans,
            tls.leaf_serial,
            self.body
        );
    }
}

/// Whether a handshake error is the `unrecognized_name` alert (112).
pub fn is_unrecognized_name(err: &str) -> bool {
    let e = err.to_lowercase();
    e.contains("unrecognized name")
        || e.contains("unrecognized_name")
        || e.contains("alert number 112")
}

/// `n` requests for `sni` at the same time: concurrent connections are
/// what spreads a burst over several workers.
pub fn tls_burst(port: u16, sni: &str, n: usize) -> Vec<Result<Exchange, String>> {
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let req = Request::default().sni(sni);
            std::thread::spawn(move || req.https(port))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}
