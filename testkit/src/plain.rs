//! Plain-HTTP helpers on top of the client: a keep-alive connection that
//! sends several requests, and the metrics scrape the tests count with.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Instant;

use crate::client::{Exchange, Request};
use crate::http::{header, parse_complete};
use crate::net::IO_TIMEOUT;

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

    /// The sum of the samples of `family` over all label sets (0 when it
    /// has none).
    pub fn sum(&self, family: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| k.as_str() == family || k.starts_with(&format!("{family}{{")))
            .map(|(_, v)| v)
            .sum()
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
