//! The certificate API client: the source of truth behind Redis.
//!
//! Contract: `GET <template with the name>` → `200` with JSON
//! `{"crt": "<PEM chain>", "key": "<PEM key>"}` (other fields ignored) is a
//! record; `404` means no such domain; anything else is an error. The
//! response is untrusted: the whole exchange is bounded in time, the body
//! in size (read incrementally, never buffered past the bound), and the
//! fields go through the same size checks as a Redis record.
//!
//! Failures are [`ApiError`]s, whose texts are meant for nginx's log, so
//! they never carry the body, header values or key material.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT};

use crate::record::{decode_record, decode_second, Form, Record, RecordError};
use crate::template::UrlTemplate;

/// Default bound on a response body: a 64 KiB chain plus a 16 KiB key,
/// JSON-escaped, with room for extra fields.
pub const MAX_BODY: usize = 256 * 1024;

/// How the API is reached, built from `dyncert_api`, `dyncert_api_header`,
/// `dyncert_api_timeout` and `dyncert_api_trusted_certificate`.
#[derive(Clone)]
pub struct ApiConfig {
    pub template: UrlTemplate,
    /// Sent with every request, e.g. ("Authorization", "Bearer ...");
    /// each pair checked at configuration time with [`check_header`].
    pub headers: Vec<(String, String)>,
    /// Bound on the whole exchange: connect, TLS, headers and body.
    pub timeout: Duration,
    /// PEM bundle; when set, only these roots are trusted (no system
    /// roots).
    pub trusted_certificate: Option<Vec<u8>>,
    /// Largest body read; beyond it the response is an error.
    pub max_body: usize,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values are credentials: only their names may be shown.
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ApiConfig")
            .field("template", &self.template)
            .field("headers", &header_names)
            .field("timeout", &self.timeout)
            .field(
                "trusted_certificate_len",
                &self.trusted_certificate.as_ref().map(Vec::len),
            )
            .field("max_body", &self.max_body)
            .finish()
    }
}

/// Headers that frame the message or the connection: set by the client
/// itself, and a configured value would corrupt or smuggle requests.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Checks a `dyncert_api_header NAME VALUE` pair at configuration time. The
/// error names the header, never its value (it is usually a secret).
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name {name:?}"))?;
    if RESERVED_HEADERS.contains(&parsed.as_str()) {
        return Err(format!("header \"{name}\" is set by dyncert itself"));
    }
    HeaderValue::from_str(value).map_err(|_| {
        format!("invalid value for header \"{name}\": only visible ASCII, spaces and tabs")
    })?;
    Ok(())
}

/// The answer of one lookup.
#[derive(Debug)]
pub enum ApiOutcome {
    /// 200 with both fields present and within the record bounds (not yet
    /// validated as certificate and key).
    Found(Record),
    /// 404: the API does not know the name.
    NotFound,
    /// 200, but a field is missing, empty or too large.
    Refused(RecordError),
    /// Any other status, a timeout, an oversized body, invalid JSON, a
    /// connection or TLS failure.
    Error(ApiError),
}

/// Why the API gave no usable answer. The `Display` text is safe to log:
/// it names what failed, with the causes the HTTP and TLS layers give,
/// never the URL, the body, header values or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The exchange ran past `dyncert_api_timeout`.
    #[error("timed out after {}", bound(.0))]
    Timeout(Duration),
    /// Connecting (TCP or TLS) failed. `cause` is `": cause: cause of the
    /// cause..."`, bounded, or empty.
    #[error("connect failed{cause}")]
    Connect { cause: String },
    /// The body could not be read or decoded.
    #[error("reading the body failed{cause}")]
    Body { cause: String },
    /// Any other failure of the exchange.
    #[error("request failed{cause}")]
    Request { cause: String },
    /// A status other than 200 and 404.
    #[error("status {0}")]
    Status(u16),
    /// The body is longer than the bound (announced or read).
    #[error("body larger than {0} bytes")]
    BodyTooLarge(usize),
    /// The body is not JSON; serde_json's message gives a position, never
    /// the input.
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid JSON: not an object")]
    NotAnObject,
    #[error("invalid JSON: field \"{0}\" is not a string")]
    FieldNotString(&'static str),
}

/// A client for the certificate API: cheap to clone, one connection pool
/// shared by the clones.
#[derive(Clone)]
pub struct ApiClient {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    template: UrlTemplate,
    /// Sent per request rather than as the client's default headers,
    /// which keep only the last value of a repeated header.
    headers: HeaderMap,
    timeout: Duration,
    max_body: usize,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("template", &self.inner.template)
            .field("timeout", &self.inner.timeout)
            .field("max_body", &self.inner.max_body)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// Builds the HTTP client once: no redirects (a 3xx is an error), no
    /// proxy from the environment, TLS verification always on, HTTP/1.1.
    /// Call it where a Tokio runtime is not required (it spawns nothing).
    pub fn new(cfg: ApiConfig) -> Result<ApiClient, String> {
        if cfg.timeout.is_zero() {
            return Err("the api timeout must be positive".into());
        }
        if cfg.max_body == 0 {
            return Err("the api body bound must be positive".into());
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &cfg.headers {
            check_header(name, value)?;
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("invalid header name {name:?}"))?;
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| format!("invalid value for header \"{name}\""))?;
            // Keeps the value out of any debug output of the request.
            value.set_sensitive(true);
            headers.append(name, value);
        }
        if !headers.contains_key(ACCEPT) {
            headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        }
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("dyncert/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(cfg.timeout)
            // A backstop: `lookup` bounds the whole exchange itself.
            .timeout(cfg.timeout)
            .pool_idle_timeout(Duration::from_secs(30));
        if let Some(pem) = &cfg.trusted_certificate {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("cannot read the trusted certificates: {e}"))?;
            if certs.is_empty() {
                return Err("no certificate found in the trusted certificate file".into());
            }
            builder = builder.tls_certs_only(certs);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot create the api client{}", error_chain(&e)))?;
        Ok(ApiClient {
            inner: Arc::new(Inner {
                client,
                template: cfg.template,
                headers,
                timeout: cfg.timeout,
                max_body: cfg.max_body,
            }),
        })
    }

    /// Asks the API for `name` (normalised and validated: it becomes part
    /// of the URL). Never takes longer than the configured timeout, never
    /// reads more than the body bound, never panics on a bad response.
    pub async fn lookup(&self, name: &str) -> ApiOutcome {
        let timeout = self.inner.timeout;
        match tokio::time::timeout(timeout, self.exchange(name)).await {
            Ok(outcome) => outcome,
            Err(_) => ApiOutcome::Error(ApiError::Timeout(timeout)),
        }
    }

    async fn exchange(&self, name: &str) -> ApiOutcome {
        let inner = &*self.inner;
        let request = inner
            .client
            .get(inner.template.render(name))
            .headers(inner.headers.clone());
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => return ApiOutcome::Error(self.describe(&e)),
        };
        match response.status().as_u16() {
            200 => {}
            status => {
                drain_small(&mut response).await;
                return match status {
                    404 => ApiOutcome::NotFound,
                    _ => ApiOutcome::Error(ApiError::Status(status)),
                };
            }
        }
        let too_large = || ApiOutcome::Error(ApiError::BodyTooLarge(inner.max_body));
        // An announced length over the bound is refused before any of the
        // body is read.
        let announced = response.content_length().unwrap_or(0);
        if usize::try_from(announced).map_or(true, |n| n > inner.max_body) {
            return too_large();
        }
        let mut body = Vec::with_capacity(usize::try_from(announced).unwrap_or(0));
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if chunk.len() > inner.max_body - body.len() {
                        return too_large();
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return ApiOutcome::Error(self.describe(&e)),
            }
        }
        decode_body(&body)
    }

    /// The error with its cause chain but without the URL (it is known
    /// from the configuration, and the log line names the name).
    fn describe(&self, e: &reqwest::Error) -> ApiError {
        if e.is_timeout() {
            return ApiError::Timeout(self.inner.timeout);
        }
        let cause = error_chain(e);
        if e.is_connect() {
            ApiError::Connect { cause }
        } else if e.is_body() || e.is_decode() {
            ApiError::Body { cause }
        } else {
            ApiError::Request { cause }
        }
    }
}

/// ": cause: cause of the cause...", bounded. The top-level reqwest error
/// is left out: its text carries the URL.
fn error_chain(e: &reqwest::Error) -> String {
    let mut msg = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        // hyper's wrapper ("client error (Connect)") repeats what the
        // caller's prefix says, and TLS errors repeat their own cause.
        if !text.starts_with("client error (") && !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    truncate(msg, 300)
}

/// Reads a short error body to its end so the connection goes back to the
/// pool (a random-SNI flood is mostly 404s); a longer one is dropped with
/// its connection instead of being read.
async fn drain_small(response: &mut reqwest::Response) {
    const DRAIN: usize = 4 * 1024;
    if response.content_length().is_some_and(|n| n > DRAIN as u64) {
        return;
    }
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if read > DRAIN {
            return;
        }
    }
}

/// Reads `{"crt": "...", "key": "...", "allow": "...", "client_ca": "...",
/// "crt_rsa": "...", "key_rsa": "..."}` (all but the first two optional;
/// the last two together or not at all); null or absent fields are
/// missing, fields of another type make the JSON invalid.
fn decode_body(body: &[u8]) -> ApiOutcome {
    // serde_json's messages give a position, never the input, so they are
    // safe to log.
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return ApiOutcome::Error(ApiError::Json(e.to_string())),
    };
    let serde_json::Value::Object(mut fields) = value else {
        return ApiOutcome::Error(ApiError::NotAnObject);
    };
    let mut take = |field: &'static str| match fields.remove(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.into_bytes())),
        Some(_) => Err(field),
    };
    let mut values = Vec::with_capacity(6);
    for field in ["crt", "key", "allow", "client_ca", "crt_rsa", "key_rsa"] {
        match take(field) {
            Ok(v) => values.push(v),
            Err(f) => return ApiOutcome::Error(ApiError::FieldNotString(f)),
        }
    }
    let mut values = values.into_iter();
    let mut next = || values.next().flatten();
    let (crt, key, allow, client_ca) = (next(), next(), next(), next());
    let (crt_rsa, key_rsa) = (next(), next());
    let second = decode_second(crt_rsa, key_rsa, Form::Pem);
    match decode_record(crt, key, allow, client_ca).and_then(|r| second.map(|s| (r, s))) {
        Ok((mut record, second)) => {
            record.second = second;
            ApiOutcome::Found(record)
        }
        Err(e) => ApiOutcome::Refused(e),
    }
}

/// A bound as the configuration would write it: "3s", or "250ms" for
/// sub-second bounds.
fn bound(timeout: &Duration) -> String {
    if timeout.subsec_millis() == 0 {
        format!("{}s", timeout.as_secs())
    } else {
        format!("{}ms", timeout.as_millis())
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;

    use dyncert_testkit::pki::{LeafOpts, Pki};
    use openssl::ssl::{SslAcceptor, SslMethod};

    const CRT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nSECRETKEY\n-----END PRIVATE KEY-----\n";

    /// What the test server answers.
    #[derive(Clone)]
    enum Reply {
        /// Status and body, with Content-Length.
        Full(u16, String),
        /// Never answers; holds the connection for this long.
        Silent(Duration),
        /// Headers at once, then one body byte every interval.
        Trickle(Duration),
        /// 200 announcing `len` bytes with Content-Length, sending them.
        Announced(usize),
        /// 200 without Content-Length, streaming up to `len` bytes until
        /// the client goes away.
        Unannounced(usize),
        /// This status, its short body a moment later, then the next
        /// request on the same connection.
        KeepAlive(u16),
    }

    /// One request as the server read it.
    #[derive(Debug, Clone)]
    struct Seen {
        request_line: String,
        /// Lower-cased names.
        headers: Vec<(String, String)>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// A minimal HTTP/1.1 server on 127.0.0.1 (plain or TLS), one thread
    /// per connection, each connection closed after one response (except
    /// with `Reply::KeepAlive`).
    struct Server {
        port: u16,
        seen: Arc<Mutex<Vec<Seen>>>,
        /// Body bytes the server managed to write.
        written: Arc<AtomicUsize>,
        /// Connections accepted.
        connections: Arc<AtomicUsize>,
    }

    impl Server {
        fn start(reply: Reply) -> Server {
            Server::start_with(reply, None)
        }

        fn start_with(reply: Reply, tls: Option<SslAcceptor>) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let written = Arc::new(AtomicUsize::new(0));
            let connections = Arc::new(AtomicUsize::new(0));
            let (s, w, c) = (seen.clone(), written.clone(), connections.clone());
            let tls = tls.map(Arc::new);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { return };
                    c.fetch_add(1, Ordering::SeqCst);
                    let (reply, s, w, tls) = (reply.clone(), s.clone(), w.clone(), tls.clone());
                    std::thread::spawn(move || match tls {
                        Some(acceptor) => {
                            // A client that refuses our certificate ends the
                            // handshake; nothing to serve then.
                            if let Ok(stream) = acceptor.accept(stream) {
                                serve(stream, &reply, &s, &w);
                            }
                        }
                        None => serve(stream, &reply, &s, &w),
                    });
                }
            });
            Server {
                port,
                seen,
                written,
                connections,
            }
        }

        fn url(&self, scheme: &str) -> String {
            format!("{scheme}://127.0.0.1:{}/certs/{{name}}", self.port)
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    fn serve<S: Read + Write>(
        mut stream: S,
        reply: &Reply,
        seen: &Mutex<Vec<Seen>>,
        written: &AtomicUsize,
    ) {
        loop {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte) {
                    Ok(1) if head.len() < 64 * 1024 => head.push(byte[0]),
                    _ => return,
                }
            }
            let text = String::from_utf8_lossy(&head);
            let mut lines = text.split("\r\n");
            let request_line = lines.next().unwrap_or_default().to_owned();
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            seen.lock().unwrap().push(Seen {
                request_line,
                headers,
            });
            if respond(&mut stream, reply, written).is_err()
                || !matches!(reply, Reply::KeepAlive(_))
            {
                return;
            }
        }
    }

    fn respond<S: Write>(
        stream: &mut S,
        reply: &Reply,
        written: &AtomicUsize,
    ) -> std::io::Result<()> {
        let chunk = vec![b'x'; 64 * 1024];
        match reply {
            Reply::Full(status, body) => {
                write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )?;
                stream.flush()
            }
            Reply::KeepAlive(status) => {
                let body = "{\"error\": \"unknown name\"}";
                write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )?;
                stream.flush()?;
                // The body in its own segment, as a proxy or a slow
                // backend sends it: the client must wait for it.
                std::thread::sleep(Duration::from_millis(20));
                stream.write_all(body.as_bytes())?;
                stream.flush()
            }
            Reply::Silent(hold) => {
                std::thread::sleep(*hold);
                Ok(())
            }
            Reply::Trickle(every) => {
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
                )?;
                for _ in 0..1000 {
                    stream.write_all(b" ")?;
                    stream.flush()?;
                    written.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(*every);
                }
                Ok(())
            }
            Reply::Announced(len) | Reply::Unannounced(len) => {
                if let Reply::Announced(_) = reply {
                    write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                    )?;
                } else {
                    write!(stream, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
                }
                while written.load(Ordering::SeqCst) < *len {
                    stream.write_all(&chunk)?;
                    written.fetch_add(chunk.len(), Ordering::SeqCst);
                }
                stream.flush()
            }
        }
    }

    fn config(template: &str) -> ApiConfig {
        ApiConfig {
            template: UrlTemplate::parse(template).unwrap(),
            headers: Vec::new(),
            timeout: Duration::from_secs(3),
            trusted_certificate: None,
            max_body: MAX_BODY,
        }
    }

    /// Runs one lookup on a current-thread runtime, as the fetcher does.
    fn lookup(cfg: ApiConfig, name: &str) -> ApiOutcome {
        let client = ApiClient::new(cfg).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(client.lookup(name))
    }

    fn json(crt: &str, key: &str) -> String {
        serde_json::json!({ "crt": crt, "key": key }).to_string()
    }

    fn error(outcome: ApiOutcome) -> String {
        match outcome {
            ApiOutcome::Error(e) => e.to_string(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn ok_json_is_found_with_the_exact_fields() {
        let server = Server::start(Reply::Full(200, json(CRT, KEY)));
        match lookup(config(&server.url("http")), "shop.example.com") {
            ApiOutcome::Found(r) => {
                assert_eq!(r.crt, CRT.as_bytes());
                assert_eq!(r.key, KEY.as_bytes());
            }
            other => panic!("{other:?}"),
        }
        let seen = server.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].request_line, "GET /certs/shop.example.com HTTP/1.1");
        assert_eq!(seen[0].header("accept"), Some("application/json"));
        assert!(seen[0]
            .header("user-agent")
            .unwrap()
            .starts_with("dyncert/"));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = serde_json::json!({
            "crt": CRT, "key": KEY, "issuer": "acme", "policy": {"allow": ["10.0.0.0/8"]}, "n": 1
        });
        let server = Server::start(Reply::Full(200, body.to_string()));
        assert!(matches!(
            lookup(config(&server.url("http")), "a.example"),
            ApiOutcome::Found(_)
        ));
    }

    #[test]
    fn not_found_is_not_found() {
        let server = Server::start(Reply::Full(404, "{\"error\":\"unknown\"}".into()));
        assert!(matches!(
            lookup(config(&server.url("http")), "nope.example"),
            ApiOutcome::NotFound
        ));
    }

    #[test]
    fn lookups_reuse_the_connection_after_a_404() {
        let server = Server::start(Reply::KeepAlive(404));
        let client = ApiClient::new(config(&server.url("http"))).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for name in ["a.example", "b.example", "c.example"] {
            assert!(matches!(
                rt.block_on(client.lookup(name)),
                ApiOutcome::NotFound
            ));
        }
        assert_eq!(server.seen().len(), 3);
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn lookup_can_be_spawned_on_the_fetcher_runtime() {
        fn assert_send<T: Send + 'static>(_: T) {}
        let client = ApiClient::new(config("http://h/{name}")).unwrap();
        assert_send(async move { client.lookup("a.example").await });
    }

    #[test]
    fn server_error_names_the_status_and_not_the_body() {
        let server = Server::start(Reply::Full(500, format!("oops {KEY}")));
        let e = error(lookup(config(&server.url("http")), "a.example"));
        assert_eq!(e, "status 500");
    }

    #[test]
    fn redirects_are_not_followed() {
        let server = Server::start(Reply::Full(302, String::new()));
        assert_eq!(
            error(lookup(config(&server.url("http")), "a.example")),
            "status 302"
        );
        assert_eq!(server.seen().len(), 1);
    }

    #[test]
    fn silent_server_times_out_within_the_bound() {
        let server = Server::start(Reply::Silent(Duration::from_secs(5)));
        let mut cfg = config(&server.url("http"));
        cfg.timeout = Duration::from_millis(300);
        let start = Instant::now();
        let outcome = lookup(cfg, "a.example");
        let took = start.elapsed();
        assert!(
            matches!(
                outcome,
                ApiOutcome::Error(ApiError::Timeout(t)) if t == Duration::from_millis(300)
            ),
            "{outcome:?}"
        );
        assert_eq!(error(outcome), "timed out after 300ms");
        assert!(took >= Duration::from_millis(290), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }

    #[test]
    fn trickling_body_is_bounded_by_the_same_timeout() {
        let server = Server::start(Reply::Trickle(Duration::from_millis(50)));
        let mut cfg = config(&server.url("http"));
        cfg.timeout = Duration::from_secs(1);
        let start = Instant::now();
        let outcome = lookup(cfg, "a.example");
        assert!(
            matches!(outcome, ApiOutcome::Error(ApiError::Timeout(_))),
            "{outcome:?}"
        );
        assert_eq!(error(outcome), "timed out after 1s");
        assert!(start.elapsed() < Duration::from_millis(2500));
    }

    #[test]
    fn announced_ten_megabyte_body_is_refused_before_reading_it() {
        let ten_mb = 10 * 1024 * 1024;
        let server = Server::start(Reply::Announced(ten_mb));
        let start = Instant::now();
        let e = error(lookup(config(&server.url("http")), "a.example"));
        assert_eq!(e, "body larger than 262144 bytes");
        assert!(start.elapsed() < Duration::from_secs(2));
        // The kernel buffers some of it; the client never asked for more.
        std::thread::sleep(Duration::from_millis(100));
        assert!(server.written.load(Ordering::SeqCst) < ten_mb);
    }

    #[test]
    fn unannounced_huge_body_stops_being_read_at_the_bound() {
        // Far more than the loopback socket buffers can hold, so the server
        // can only finish if the client reads it all.
        let huge = 64 * 1024 * 1024;
        let server = Server::start(Reply::Unannounced(huge));
        let mut cfg = config(&server.url("http"));
        cfg.max_body = 100_000;
        let start = Instant::now();
        let e = error(lookup(cfg, "a.example"));
        assert_eq!(e, "body larger than 100000 bytes");
        assert!(start.elapsed() < Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(200));
        let written = server.written.load(Ordering::SeqCst);
        assert!(written < huge / 2, "server wrote {written} bytes");
    }

    #[test]
    fn body_exactly_at_the_bound_is_read() {
        let body = json(CRT, KEY);
        let server = Server::start(Reply::Full(200, body.clone()));
        let mut cfg = config(&server.url("http"));
        cfg.max_body = body.len();
        assert!(matches!(lookup(cfg, "a.example"), ApiOutcome::Found(_)));
        let mut cfg = config(&server.url("http"));
        cfg.max_body = body.len() - 1;
        assert!(error(lookup(cfg, "a.example")).starts_with("body larger than"));
    }

    #[test]
    fn invalid_json_is_an_error_without_the_body() {
        let server = Server::start(Reply::Full(200, format!("{{\"key\": \"{}", "S3CRET")));
        let e = error(lookup(config(&server.url("http")), "a.example"));
        assert!(e.starts_with("invalid JSON: "), "{e}");
        assert!(!e.contains("S3CRET"), "{e}");
    }

    #[test]
    fn json_that_is_not_an_object_or_has_wrong_types_is_an_error() {
        assert_eq!(error(decode_body(b"[1, 2]")), "invalid JSON: not an object");
        assert_eq!(
            error(decode_body(b"{\"crt\": 5, \"key\": \"k\"}")),
            "invalid JSON: field \"crt\" is not a string"
        );
        assert_eq!(
            error(decode_body(
                b"{\"crt\": \"c\", \"key\": {\"pem\": \"SECRET\"}}"
            )),
            "invalid JSON: field \"key\" is not a string"
        );
    }

    #[test]
    fn a_second_pair_is_read_whole_or_refused() {
        let body = br#"{"crt": "c", "key": "k", "crt_rsa": "c2", "key_rsa": "k2"}"#;
        let ApiOutcome::Found(r) = decode_body(body) else {
            panic!("expected a record");
        };
        let p = r.second.unwrap();
        assert_eq!(
            (p.crt, p.key, p.form),
            (b"c2".to_vec(), b"k2".to_vec(), Form::Pem)
        );
        let ApiOutcome::Found(r) = decode_body(br#"{"crt": "c", "key": "k", "key_rsa": null}"#)
        else {
            panic!("expected a record");
        };
        assert!(r.second.is_none());
        assert!(matches!(
            decode_body(br#"{"crt": "c", "key": "k", "crt_rsa": "c2"}"#),
            ApiOutcome::Refused(RecordError::SecondIncomplete)
        ));
        assert_eq!(
            error(decode_body(br#"{"crt": "c", "key": "k", "key_rsa": 1}"#)),
            "invalid JSON: field \"key_rsa\" is not a string"
        );
    }

    #[test]
    fn missing_key_field_is_refused() {
        let body = serde_json::json!({ "crt": CRT }).to_string();
        let server = Server::start(Reply::Full(200, body));
        assert!(matches!(
            lookup(config(&server.url("http")), "a.example"),
            ApiOutcome::Refused(RecordError::MissingKey)
        ));
    }

    #[test]
    fn null_empty_and_oversized_fields_are_refused_by_the_record_rules() {
        let refused = |body: &str| match decode_body(body.as_bytes()) {
            ApiOutcome::Refused(e) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused("{\"crt\": null, \"key\": \"k\"}"),
            RecordError::MissingCrt
        );
        assert_eq!(
            refused("{\"crt\": \"c\", \"key\": \"\"}"),
            RecordError::MissingKey
        );
        assert_eq!(refused("{}"), RecordError::MissingCrt);
        let big = json(&"a".repeat(crate::record::MAX_CRT_BYTES + 1), KEY);
        assert_eq!(refused(&big), RecordError::CrtTooLarge);
    }

    #[test]
    fn configured_headers_are_sent() {
        let server = Server::start(Reply::Full(200, json(CRT, KEY)));
        let mut cfg = config(&server.url("http"));
        cfg.headers = vec![
            ("Authorization".into(), "Bearer t0ken".into()),
            ("X-Tenant".into(), "a".into()),
            ("X-Tenant".into(), "b".into()),
            ("Accept".into(), "application/vnd.certs+json".into()),
        ];
        assert!(matches!(lookup(cfg, "a.example"), ApiOutcome::Found(_)));
        let seen = &server.seen()[0];
        assert_eq!(seen.header("authorization"), Some("Bearer t0ken"));
        let tenants: Vec<_> = seen
            .headers
            .iter()
            .filter(|(n, _)| n == "x-tenant")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(tenants, ["a", "b"]);
        assert_eq!(seen.header("accept"), Some("application/vnd.certs+json"));
    }

    #[test]
    fn the_name_is_in_the_path_and_a_wildcard_is_encoded() {
        let server = Server::start(Reply::Full(404, String::new()));
        let template = format!(
            "http://127.0.0.1:{}/v1/{{name}}/cert?n={{name}}",
            server.port
        );
        lookup(config(&template), "*.example.com");
        assert_eq!(
            server.seen()[0].request_line,
            "GET /v1/%2A.example.com/cert?n=%2A.example.com HTTP/1.1"
        );
    }

    #[test]
    fn connection_refused_is_an_error() {
        // Bind then drop: the port is very likely closed now.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = error(lookup(
            config(&format!("http://127.0.0.1:{port}/{{name}}")),
            "a.example",
        ));
        assert!(
            e.starts_with("connect failed: tcp connect error: Connection refused"),
            "{e}"
        );
        assert!(!e.contains("127.0.0.1"), "{e}");
    }

    #[test]
    fn header_checks_name_the_header_but_never_the_value() {
        assert_eq!(check_header("Authorization", "Bearer x"), Ok(()));
        assert_eq!(check_header("X-Empty", ""), Ok(()));
        assert_eq!(check_header("Host", "certs.internal"), Ok(()));
        assert!(check_header("Bad Name", "x")
            .unwrap_err()
            .contains("invalid header name"));
        assert!(check_header("", "x").is_err());
        let e = check_header("Authorization", "Bearer SECRET\r\nX-Evil: 1").unwrap_err();
        assert!(e.contains("\"Authorization\""), "{e}");
        assert!(!e.contains("SECRET"), "{e}");
        assert_eq!(
            check_header("Transfer-Encoding", "chunked").unwrap_err(),
            "header \"Transfer-Encoding\" is set by dyncert itself"
        );
        assert!(check_header("content-length", "1").is_err());
    }

    #[test]
    fn debug_output_hides_header_values() {
        let mut cfg = config("http://h/{name}");
        cfg.headers = vec![("Authorization".into(), "Bearer SECRET".into())];
        let shown = format!("{cfg:?}");
        assert!(shown.contains("Authorization"), "{shown}");
        assert!(!shown.contains("SECRET"), "{shown}");
        let client = ApiClient::new(cfg).unwrap();
        assert!(!format!("{client:?}").contains("SECRET"));
    }

    #[test]
    fn bad_settings_are_refused_when_the_client_is_built() {
        let mut cfg = config("http://h/{name}");
        cfg.timeout = Duration::ZERO;
        assert!(ApiClient::new(cfg).is_err());
        let mut cfg = config("http://h/{name}");
        cfg.max_body = 0;
        assert!(ApiClient::new(cfg).is_err());
        let mut cfg = config("http://h/{name}");
        cfg.trusted_certificate = Some(b"not a certificate".to_vec());
        assert!(ApiClient::new(cfg).is_err());
        let mut cfg = config("http://h/{name}");
        cfg.headers = vec![("Connection".into(), "close".into())];
        assert!(ApiClient::new(cfg).is_err());
    }

    #[test]
    fn timeout_text_reads_like_the_configuration() {
        assert_eq!(
            ApiError::Timeout(Duration::from_secs(3)).to_string(),
            "timed out after 3s"
        );
        assert_eq!(
            ApiError::Timeout(Duration::from_millis(1500)).to_string(),
            "timed out after 1500ms"
        );
    }

    #[test]
    fn error_texts_are_the_logged_ones() {
        let cases = [
            (
                ApiError::Connect {
                    cause: ": tcp connect error: Connection refused".into(),
                },
                "connect failed: tcp connect error: Connection refused",
            ),
            (
                ApiError::Body {
                    cause: String::new(),
                },
                "reading the body failed",
            ),
            (
                ApiError::Request {
                    cause: ": x".into(),
                },
                "request failed: x",
            ),
            (ApiError::Status(500), "status 500"),
            (
                ApiError::BodyTooLarge(MAX_BODY),
                "body larger than 262144 bytes",
            ),
            (
                ApiError::Json("EOF while parsing a value at line 1 column 0".into()),
                "invalid JSON: EOF while parsing a value at line 1 column 0",
            ),
            (ApiError::NotAnObject, "invalid JSON: not an object"),
            (
                ApiError::FieldNotString("crt"),
                "invalid JSON: field \"crt\" is not a string",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }

    // ---- https ----

    /// A TLS server signed by a fresh CA; returns it and the CA's PEM.
    fn tls_server(reply: Reply) -> (Server, Vec<u8>) {
        let pki = Pki::new();
        let leaf = pki.leaf_with(
            &["localhost"],
            1,
            LeafOpts {
                ips: &["127.0.0.1"],
                ..LeafOpts::default()
            },
        );
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor.set_private_key(&leaf.issued.key).unwrap();
        acceptor.set_certificate(&leaf.issued.cert).unwrap();
        acceptor
            .add_extra_chain_cert(pki.intermediate.cert.clone())
            .unwrap();
        acceptor.check_private_key().unwrap();
        let server = Server::start_with(reply, Some(acceptor.build()));
        (server, pki.root.cert_pem.into_bytes())
    }

    #[test]
    fn https_with_the_trusted_certificate_works() {
        let (server, ca_pem) = tls_server(Reply::Full(200, json(CRT, KEY)));
        let mut cfg = config(&server.url("https"));
        assert!(cfg.template.is_https());
        // A bundle: an unrelated CA first, ours second.
        let other = Pki::new().root.cert_pem.into_bytes();
        cfg.trusted_certificate = Some([other, ca_pem].concat());
        match lookup(cfg, "shop.example.com") {
            ApiOutcome::Found(r) => assert_eq!(r.key, KEY.as_bytes()),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            server.seen()[0].request_line,
            "GET /certs/shop.example.com HTTP/1.1"
        );
    }

    #[test]
    fn https_without_the_trusted_certificate_fails_verification() {
        let (server, _) = tls_server(Reply::Full(200, json(CRT, KEY)));
        let e = error(lookup(config(&server.url("https")), "a.example"));
        assert!(e.starts_with("connect failed: "), "{e}");
        assert!(e.contains("certificate verify failed"), "{e}");
        assert_eq!(e.matches("certificate verify failed").count(), 1, "{e}");
        assert!(server.seen().is_empty());
    }

    #[test]
    fn https_trusting_only_another_ca_fails_verification() {
        let (server, _) = tls_server(Reply::Full(200, json(CRT, KEY)));
        let mut cfg = config(&server.url("https"));
        cfg.trusted_certificate = Some(Pki::new().root.cert_pem.into_bytes());
        let e = error(lookup(cfg, "a.example"));
        assert!(e.contains("certificate verify failed"), "{e}");
        assert!(server.seen().is_empty());
    }
}
