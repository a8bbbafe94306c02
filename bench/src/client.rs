//! The benchmark's use of the kit's TLS client: one full TLS 1.3
//! handshake per connection, never resumed, timed from connect(2) to the
//! end of the client's handshake, closed from the client side; and the
//! check that the certificate served names the SNI.

use std::time::Duration;

use dyncert_testkit::{Request, TlsConn};
use openssl::ssl::SslVersion;

/// The request every handshake starts from (built once, cloned per
/// handshake with its SNI).
pub struct Client {
    base: Request,
}

/// A finished handshake.
pub struct Conn {
    conn: TlsConn,
    /// From the start of connect(2) to the end of the client's handshake.
    pub elapsed: Duration,
    /// The leaf's subjectAltName holds the SNI (or there was no SNI).
    pub names_sni: bool,
}

impl Client {
    pub fn new() -> Client {
        Client {
            base: Request::get("/")
                .like_ssl_connector()
                .min_tls(SslVersion::TLS1_3)
                .timeout(Duration::from_secs(10)),
        }
    }

    /// Connects and handshakes, with `sni` (or none).
    pub fn handshake(&self, port: u16, sni: Option<&str>) -> Result<Conn, String> {
        let conn = self.base.clone().sni_opt(sni).handshake(port)?;
        let names_sni = sni.is_none_or(|sni| conn.leaf_names(sni));
        Ok(Conn {
            elapsed: conn.handshake_time(),
            names_sni,
            conn,
        })
    }
}

impl Conn {
    /// Closes from the client side (see `TlsConn::close`).
    pub fn close(self) {
        self.conn.close()
    }

    /// `GET /` and the response body (the bench's servers answer with
    /// `$pid $dyncert_source`).
    pub fn get(self) -> Result<String, String> {
        let r = self.conn.send()?;
        if r.status != 200 {
            return Err(format!("unexpected response: {}", r.status));
        }
        Ok(r.body.trim().to_owned())
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
