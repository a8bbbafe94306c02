//! The TLS client: one full TLS 1.3 handshake per connection, never resumed,
//! and the check that the certificate served names the SNI.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use openssl::ssl::{
    SslConnector, SslMethod, SslSessionCacheMode, SslStream, SslVerifyMode, SslVersion,
};

pub struct Client {
    connector: SslConnector,
}

/// A finished handshake.
pub struct Conn {
    stream: SslStream<TcpStream>,
    /// From the start of connect(2) to the end of the client's handshake.
    pub elapsed: Duration,
    /// The leaf's subjectAltName holds the SNI (or there was no SNI).
    pub names_sni: bool,
}

impl Client {
    pub fn new() -> Client {
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        // Chain validation is not what is measured; the SAN check below is
        // what proves the right certificate was chosen.
        b.set_verify(SslVerifyMode::NONE);
        b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
        // Every handshake is a full one: nothing is kept for resumption.
        b.set_session_cache_mode(SslSessionCacheMode::OFF);
        Client {
            connector: b.build(),
        }
    }

    /// Connects and handshakes, with `sni` (or none).
    pub fn handshake(&self, port: u16, sni: Option<&str>) -> Result<Conn, String> {
        let t0 = Instant::now();
        let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).ok();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut cfg = self.connector.configure().map_err(|e| e.to_string())?;
        cfg.set_verify_hostname(false);
        cfg.set_use_server_name_indication(sni.is_some());
        let stream = cfg
            .connect(sni.unwrap_or("localhost"), tcp)
            .map_err(|e| e.to_string())?;
        let elapsed = t0.elapsed();
        let names_sni = match sni {
            None => true,
            Some(sni) => stream
                .ssl()
                .peer_certificate()
                .and_then(|leaf| leaf.subject_alt_names())
                .is_some_and(|sans| sans.iter().any(|g| g.dnsname() == Some(sni))),
        };
        Ok(Conn {
            stream,
            elapsed,
            names_sni,
        })
    }
}

impl Conn {
    /// Sends close_notify and FIN first, then waits for the server to
    /// close. The client closing first keeps TIME_WAIT on the client's
    /// side: left on the server's, every reused client port would send its
    /// SYN into a TIME_WAIT socket, and the server's CPU per handshake
    /// would climb over the first half-minute of a run (until the
    /// ephemeral ports wrap) and bias whichever configuration ran first.
    pub fn close(mut self) {
        let _ = self.stream.shutdown();
        let _ = self.stream.get_ref().shutdown(Shutdown::Write);
        let mut sink = [0u8; 256];
        while matches!(self.stream.get_mut().read(&mut sink), Ok(n) if n > 0) {}
    }

    /// `GET /` and the response body (the bench's servers answer with
    /// `$pid $dyncert_source`).
    pub fn get(mut self) -> Result<String, String> {
        self.stream
            .write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut resp = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => resp.extend_from_slice(&buf[..n]),
                Err(e) if resp.is_empty() => return Err(e.to_string()),
                // nginx may close without close_notify after HTTP/1.0.
                Err(_) => break,
            }
        }
        let text = String::from_utf8_lossy(&resp);
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP response")?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!(
                "unexpected response: {}",
                head.lines().next().unwrap_or("")
            ));
        }
        Ok(body.trim().to_owned())
    }
}

/// What `$pid $dyncert_source` said.
pub struct Answer {
    pub pid: u32,
    pub source: String,
}

impl Answer {
    pub fn parse(body: &str) -> Option<Answer> {
        let mut it = body.split_whitespace();
        Some(Answer {
            pid: it.next()?.parse().ok()?,
            source: it.next().unwrap_or("").to_owned(),
        })
    }
}
