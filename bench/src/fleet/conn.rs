//! One client connection of the fleet test: to the balancer, or straight
//! to a terminator behind the PROXY v2 header the balancer would send.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use dyncert_testkit::{proxy_v2, Exchange, Request, TlsConn};
use openssl::ssl::SslVersion;

/// A parked connection waits at most `dyncert_fetch_timeout` (1 s in the
/// fleet); anything slower than this is a failure.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// Source address written in the PROXY v2 header (direct only).
    proxy_from: Option<IpAddr>,
}

/// A finished handshake.
pub struct Shake {
    conn: TlsConn,
    /// The leaf's subjectAltName holds the SNI.
    pub names_sni: bool,
    /// The leaf's serial, upper-case hex (as `serial_hex`).
    pub serial: String,
}

impl Target {
    pub fn balancer(addr: SocketAddr) -> Target {
        Target {
            addr,
            proxy_from: None,
        }
    }

    pub fn direct(addr: SocketAddr, from: IpAddr) -> Target {
        Target {
            addr,
            proxy_from: Some(from),
        }
    }

    fn request(&self, name: &str, path: &str) -> Request {
        let mut r = Request::get(path)
            .to(&self.addr.ip().to_string())
            .sni(name)
            .min_tls(SslVersion::TLS1_3)
            .timeout(TIMEOUT);
        if let Some(from) = self.proxy_from {
            // The source port is made up: nginx only logs it.
            r = r.prefix(proxy_v2(SocketAddr::new(from, 40000), self.addr));
        }
        r
    }

    /// A full handshake for `name`, its leaf checked against the name.
    pub fn handshake(&self, name: &str) -> Result<Shake, String> {
        let conn = self.request(name, "/").handshake(self.addr.port())?;
        let names_sni = conn.leaf_names(name);
        let serial = conn
            .ssl()
            .peer_certificate()
            .and_then(|c| c.serial_number().to_bn().ok())
            .and_then(|b| b.to_hex_str().ok().map(|s| s.to_string()))
            .unwrap_or_default();
        Ok(Shake {
            conn,
            names_sni,
            serial,
        })
    }

    /// `GET path` for `name`.
    pub fn get(&self, name: &str, path: &str) -> Result<Exchange, String> {
        self.request(name, path).https(self.addr.port())
    }
}

impl Shake {
    pub fn elapsed(&self) -> Duration {
        self.conn.handshake_time()
    }

    pub fn close(self) {
        self.conn.close()
    }
}
