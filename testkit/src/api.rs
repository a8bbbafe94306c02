//! A real HTTP/1.1 server playing the certificate API (`dyncert_api`):
//! per-name programmable answers (a certificate, 404, 500, a delay, a huge
//! streamed body, invalid JSON, raw bytes), and what it saw: requests per
//! name with their headers and the status each got, and the most requests
//! it ever had open at once. Plain http or https (a server certificate
//! from the kit's PKI).
//!
//! One thread per connection, keep-alive honoured, so the module's HTTP
//! client can pool connections as it would against a real API. Answers
//! are rendered when they are set and written in one segment (TCP_NODELAY):
//! the benchmark times cold misses through this server.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use openssl::ssl::{SslAcceptor, SslMethod};

use crate::pki::{Leaf, LeafOpts, Pki};
use crate::process::{free_port, poll, write_file, TempDir};

/// Path prefix of the URL template the tests configure:
/// `http://127.0.0.1:PORT/certs/{name}`.
pub const API_PATH: &str = "/certs/";

/// What the API answers, ready to write.
#[derive(Debug)]
enum Body {
    /// A complete response: status line, headers, body.
    Response { status: u16, bytes: Vec<u8> },
    /// `200` whose body is a JSON document of `bytes` bytes (a `crt` of
    /// that size), written in 64 KiB chunks; with `chunked`, without a
    /// Content-Length (so only counting what arrives can bound it).
    Huge { bytes: usize, chunked: bool },
    /// These bytes on the socket, then close: anything at all.
    Raw(Vec<u8>),
}

/// An answer and how long to wait before sending it; cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiReply {
    body: Arc<Body>,
    delay: Duration,
}

impl ApiReply {
    /// `200` with the record of `leaf`.
    pub fn cert(leaf: &Leaf) -> ApiReply {
        ApiReply::cert_pem(&leaf.chain_pem, &leaf.key_pem)
    }

    /// `200` with `{"crt": ..., "key": ...}` and fields the module must
    /// ignore.
    pub fn cert_pem(crt: &str, key: &str) -> ApiReply {
        let json = format!(
            "{{\"crt\": {}, \"key\": {}, \"issued_by\": \"dyncert tests\", \"renew_after\": 86400}}",
            json_string(crt),
            json_string(key)
        );
        ApiReply::respond(200, "application/json", json.as_bytes())
    }

    /// This status with a short plain-text body.
    pub fn status(code: u16) -> ApiReply {
        let text = format!("{code} {}\n", reason(code));
        ApiReply::respond(code, "text/plain", text.as_bytes())
    }

    pub fn not_found() -> ApiReply {
        ApiReply::status(404)
    }

    /// This status with a JSON content type and this body, as is.
    pub fn json(code: u16, body: &str) -> ApiReply {
        ApiReply::respond(code, "application/json", body.as_bytes())
    }

    pub fn huge(bytes: usize, chunked: bool) -> ApiReply {
        ApiReply::from(Body::Huge { bytes, chunked })
    }

    pub fn raw(bytes: impl Into<Vec<u8>>) -> ApiReply {
        ApiReply::from(Body::Raw(bytes.into()))
    }

    /// The same answer, sent only after `delay`.
    pub fn after(mut self, delay: Duration) -> ApiReply {
        self.delay = delay;
        self
    }

    fn respond(status: u16, ctype: &str, body: &[u8]) -> ApiReply {
        let mut bytes = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
            reason(status),
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        ApiReply::from(Body::Response { status, bytes })
    }

    fn from(body: Body) -> ApiReply {
        ApiReply {
            body: Arc::new(body),
            delay: Duration::ZERO,
        }
    }

    /// The status this answer carries (`None` for raw bytes).
    fn status_code(&self) -> Option<u16> {
        match *self.body {
            Body::Response { status, .. } => Some(status),
            Body::Huge { .. } => Some(200),
            Body::Raw(_) => None,
        }
    }
}

/// One request as the API saw it.
#[derive(Clone, Debug)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    /// The percent-decoded path after `/certs/` (the whole path otherwise).
    pub name: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The status it was answered with (`None`: raw bytes).
    pub status: Option<u16>,
}

impl ApiRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct ApiState {
    routes: Mutex<HashMap<String, ApiReply>>,
    fallback: Mutex<ApiReply>,
    log: Mutex<Vec<ApiRequest>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Open connections, shut down when the server stops so that "API
    /// down" also means "no half-served requests linger".
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    stopping: AtomicBool,
}

/// The certificate API, killed (listener closed, connections shut down) on
/// Drop. Its threads inherit the CPU affinity of the thread that starts
/// (or restarts) it.
pub struct CertApi {
    pub port: u16,
    tls: Option<Arc<SslAcceptor>>,
    state: Arc<ApiState>,
    acceptor: Option<JoinHandle<()>>,
    dir: TempDir,
}

impl CertApi {
    /// A plain-http API on a free port; names without an answer get 404.
    pub fn start() -> CertApi {
        CertApi::new(None)
    }

    /// An https API whose certificate (for `localhost` and `127.0.0.1`)
    /// chains to `pki`'s root: `ca_file()` is what
    /// `dyncert_api_trusted_certificate` needs to trust it.
    pub fn start_tls(pki: &Pki) -> CertApi {
        let leaf = pki.leaf_with(
            &["localhost"],
            0x00A9_1000,
            LeafOpts {
                ips: &["127.0.0.1"],
                ..LeafOpts::default()
            },
        );
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        b.set_certificate(&leaf.issued.cert).unwrap();
        b.set_private_key(&leaf.issued.key).unwrap();
        b.add_extra_chain_cert(pki.intermediate.cert.clone())
            .unwrap();
        b.check_private_key().unwrap();
        let api = CertApi::new(Some(Arc::new(b.build())));
        write_file(&api.ca_file(), &pki.root.cert_pem);
        api
    }

    fn new(tls: Option<Arc<SslAcceptor>>) -> CertApi {
        let state = Arc::new(ApiState {
            routes: Mutex::new(HashMap::new()),
            fallback: Mutex::new(ApiReply::not_found()),
            log: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        });
        let mut api = CertApi {
            port: free_port(),
            tls,
            state,
            acceptor: None,
            dir: TempDir::new("api"),
        };
        api.start_server();
        api
    }

    /// The `dyncert_api` URL template (quote it in nginx.conf: an unquoted
    /// `{` starts a block there).
    pub fn url_template(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{API_PATH}{{name}}", self.port)
    }

    /// PEM file of the CA that issued the https API's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("api-ca.pem")
    }

    /// Answer `reply` to requests for `name` from now on.
    pub fn set(&self, name: &str, reply: ApiReply) {
        self.state
            .routes
            .lock()
            .unwrap()
            .insert(name.to_string(), reply);
    }

    /// Answer with `leaf` for `name`.
    pub fn set_cert(&self, name: &str, leaf: &Leaf) {
        self.set(name, ApiReply::cert(leaf));
    }

    /// What names without an answer of their own get (404 at first).
    pub fn set_fallback(&self, reply: ApiReply) {
        *self.state.fallback.lock().unwrap() = reply;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<ApiRequest> {
        self.state.log.lock().unwrap().clone()
    }

    /// How many requests asked for `name`.
    pub fn requests_for(&self, name: &str) -> usize {
        self.state
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.name == name)
            .count()
    }

    /// How many requests were answered with `status`.
    pub fn answered(&self, status: u16) -> usize {
        self.state
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.status == Some(status))
            .count()
    }

    pub fn total_requests(&self) -> usize {
        self.state.log.lock().unwrap().len()
    }

    /// Waits until `name` was asked for at least `n` times.
    pub fn wait_requests_for(&self, name: &str, n: usize, deadline: Duration) -> bool {
        poll(deadline, Duration::from_millis(10), || {
            (self.requests_for(name) >= n).then_some(())
        })
        .is_some()
    }

    /// Requests being answered right now.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests that were ever open (read, not yet answered) at
    /// the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// One line per request, for failure messages.
    pub fn dump(&self) -> String {
        self.requests()
            .iter()
            .map(|r| format!("{} {} {:?}", r.method, r.path, r.headers))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Closes the listener and every open connection: the port now refuses
    /// connections, as a crashed API would.
    pub fn stop(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.state.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so it sees the flag.
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        let _ = acceptor.join();
        for (_, c) in self.state.conns.lock().unwrap().drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Listens again on the same port, keeping answers and counters.
    pub fn start_server(&mut self) {
        assert!(self.acceptor.is_none(), "API already running");
        self.state.stopping.store(false, Ordering::SeqCst);
        let listener = poll(Duration::from_secs(5), Duration::from_millis(20), || {
            TcpListener::bind(("127.0.0.1", self.port)).ok()
        })
        .unwrap_or_else(|| panic!("cannot bind the API to port {}", self.port));
        let state = Arc::clone(&self.state);
        let tls = self.tls.clone();
        self.acceptor = Some(thread::spawn(move || accept_loop(listener, state, tls)));
    }
}

impl Drop for CertApi {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, state: Arc<ApiState>, tls: Option<Arc<SslAcceptor>>) {
    for conn in listener.incoming() {
        if state.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(conn) = conn else { continue };
        let id = state.next_conn.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = conn.try_clone() {
            state.conns.lock().unwrap().insert(id, clone);
        }
        let state = Arc::clone(&state);
        let tls = tls.clone();
        thread::spawn(move || {
            // The module must time out on its own; these only stop a
            // forgotten connection from holding a thread forever.
            let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
            let _ = conn.set_write_timeout(Some(Duration::from_secs(30)));
            let _ = conn.set_nodelay(true);
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(conn) {
                        serve(stream, &state);
                    }
                }
                None => serve(conn, &state),
            }
            state.conns.lock().unwrap().remove(&id);
        });
    }
}

/// Decrements the in-flight count however the answer ends.
struct InFlight<'a>(&'a ApiState);

impl<'a> InFlight<'a> {
    fn enter(state: &'a ApiState) -> InFlight<'a> {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn name_of(path: &str) -> String {
    let path = path.split('?').next().unwrap_or("");
    match path.strip_prefix(API_PATH) {
        Some(rest) => percent_decode(rest),
        None => percent_decode(path),
    }
}

/// Serves requests on one connection until the client closes it, asks to,
/// or an answer ends the connection by design.
fn serve<S: Read + Write>(stream: S, state: &ApiState) {
    let mut conn = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match conn.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            match conn.read_line(&mut h) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let h = h.trim_end_matches(['\r', '\n']);
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let content_length: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        if content_length > 0 {
            let mut body = vec![0; content_length.min(1 << 20)];
            if conn.read_exact(&mut body).is_err() {
                return;
            }
        }
        let close = headers
            .iter()
            .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));

        let in_flight = InFlight::enter(state);
        let name = name_of(&path);
        let reply = state
            .routes
            .lock()
            .unwrap()
            .get(&name)
            .cloned()
            .unwrap_or_else(|| state.fallback.lock().unwrap().clone());
        state.log.lock().unwrap().push(ApiRequest {
            method,
            path,
            name,
            headers,
            status: reply.status_code(),
        });
        // Sleep in slices so a stopped API lets go of its threads.
        let until = Instant::now() + reply.delay;
        while Instant::now() < until {
            if state.stopping.load(Ordering::SeqCst) {
                return;
            }
            thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
        }
        // Answered from here on: the client may see the answer, and ask
        // `in_flight`, before this thread gets to run again.
        drop(in_flight);
        let keep = match write_reply(conn.get_mut(), &reply.body) {
            Ok(keep) => keep,
            Err(_) => return,
        };
        if close || !keep {
            return;
        }
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes one answer; `Ok(false)` when the connection must close after it.
fn write_reply(w: &mut impl Write, body: &Body) -> std::io::Result<bool> {
    match body {
        Body::Response { bytes, .. } => {
            w.write_all(bytes)?;
            w.flush()?;
            Ok(true)
        }
        Body::Huge { bytes, chunked } => {
            write_huge(w, *bytes, *chunked)?;
            Ok(true)
        }
        Body::Raw(bytes) => {
            w.write_all(bytes)?;
            w.flush()?;
            Ok(false)
        }
    }
}

fn write_huge(w: &mut impl Write, bytes: usize, chunked: bool) -> std::io::Result<()> {
    let head = b"{\"crt\": \"";
    let tail = b"\", \"key\": \"x\"}";
    let filler = bytes.saturating_sub(head.len() + tail.len());
    if chunked {
        write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )?;
    } else {
        write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            head.len() + filler + tail.len()
        )?;
    }
    let chunk = |w: &mut dyn Write, data: &[u8]| -> std::io::Result<()> {
        if chunked {
            write!(w, "{:x}\r\n", data.len())?;
            w.write_all(data)?;
            w.write_all(b"\r\n")
        } else {
            w.write_all(data)
        }
    };
    chunk(w, head)?;
    let block = vec![b'A'; 64 * 1024];
    let mut left = filler;
    while left > 0 {
        let n = left.min(block.len());
        chunk(w, &block[..n])?;
        left -= n;
    }
    chunk(w, tail)?;
    if chunked {
        w.write_all(b"0\r\n\r\n")?;
    }
    w.flush()
}
