//! Handshakes sent to a chosen nginx worker.
//!
//! With `listen ... reuseport` every worker accepts on a socket of its own,
//! and Linux picks the socket for a new connection from a hash of its
//! addresses and ports. For one destination, a connection from a fixed
//! source address and port therefore reaches the same worker every time.
//! `Routes::learn` binds source ports one by one, asks which worker
//! answers (`$pid`), and keeps a few ports per worker; `Routes::touch`
//! then reaches worker `w` through one of its ports. Each connection ends
//! with a reset (`SO_LINGER` 0) after the TLS close_notify, so it leaves
//! no TIME_WAIT on either side and its port can connect again at once.
//!
//! Every handshake is checked like the load generator's: the leaf must
//! name the SNI. Every answer says which worker served it, and a touch
//! that reached another worker (the kernel may rehash when a worker
//! restarts) counts as misrouted and is retried through another port.

use std::io::{self, Read, Write};
use std::mem::size_of;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::Duration;

use openssl::ssl::{Ssl, SslContext, SslMethod, SslVerifyMode, SslVersion};

/// Source ports tried: below Linux's ephemeral range (32768 and up), so
/// they do not collide with ports the kernel hands out to other programs.
const FIRST_PORT: u16 = 20_000;
const LAST_PORT: u16 = 31_999;
/// Attempts of one touch before it counts as an error.
const TRIES: usize = 8;

/// What a routed handshake found.
pub struct Answer {
    pub pid: u32,
    /// `$dyncert_source` (empty for stock nginx).
    pub source: String,
    /// The leaf's subjectAltName holds the SNI (true without SNI).
    pub names_sni: bool,
}

/// Source ports by worker, for one nginx port.
pub struct Routes {
    port: u16,
    ctx: SslContext,
    /// Worker pids, in the order callers name them (0..W).
    pub pids: Vec<u32>,
    /// Parallel callers; caller c binds ports[w][c], ports[w][c + callers], ...
    callers: usize,
    /// ports[w]: source ports whose connections reach worker w.
    ports: Vec<Vec<u16>>,
}

/// Outcome of `Routes::touch`.
pub struct Touch {
    pub answer: Option<Answer>,
    /// Attempts that reached another worker than asked.
    pub misrouted: u64,
    pub error: Option<String>,
}

fn cvt(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn sockaddr(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn setsockopt<T>(fd: libc::c_int, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: setsockopt(2) reads size_of::<T>() bytes from a live value.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
}

/// A TCP connection from 127.0.0.1:`src` to 127.0.0.1:`dst` that resets
/// when closed.
fn connect_from_port(src: u16, dst: u16, timeout: Duration) -> io::Result<TcpStream> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    cvt(fd)?;
    // SAFETY: fd is a socket we just created and nothing else owns; the
    // TcpStream closes it, also on the error paths below.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    // The previous connection from this port was reset, but a socket that
    // was in TIME_WAIT (a port another program used) must not stop us.
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &1 as &libc::c_int)?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger)?;
    let from = sockaddr(src);
    // SAFETY: bind(2) reads a sockaddr_in of the size we pass.
    cvt(unsafe {
        libc::bind(
            fd,
            (&from as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    let to = sockaddr(dst);
    // SAFETY: connect(2) reads a sockaddr_in of the size we pass; the
    // socket is blocking, so it returns once connected or failed.
    cvt(unsafe {
        libc::connect(
            fd,
            (&to as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    debug_assert!(stream.as_raw_fd() == fd);
    Ok(stream)
}

/// The client context: TLS 1.3 only, no resumption, no verification (the
/// leaf's name is checked instead), no CA store (the cheapest client:
/// these handshakes fill caches, they are not timed).
fn context() -> SslContext {
    let mut b = SslContext::builder(SslMethod::tls_client()).expect("SSL_CTX");
    b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_session_cache_mode(openssl::ssl::SslSessionCacheMode::OFF);
    b.build()
}

/// `GET /` on keep-alive, the body of the answer (the bench's servers
/// answer `$pid [$dyncert_source]`).
fn get_body<S: Read + Write>(s: &mut S, host: &str) -> Result<String, String> {
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).into_owned();
            if !head.starts_with("HTTP/1.1 200") {
                return Err(format!("unexpected answer: {head}"));
            }
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .ok_or("no Content-Length")?;
            let body = &raw[end + 4..];
            if body.len() >= len {
                return Ok(String::from_utf8_lossy(&body[..len]).trim().to_owned());
            }
        }
        match s.read(&mut buf) {
            Ok(0) => return Err("closed before the answer".into()),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

impl Routes {
    /// Learns, for nginx on `port` with the workers `pids`, ports for
    /// `callers` parallel callers, `per_caller` per worker each (a caller
    /// only ever binds its own ports), handshaking with `sni`. None when
    /// some worker cannot be reached through enough of the ports tried.
    pub fn learn(
        port: u16,
        pids: &[u32],
        sni: Option<&str>,
        callers: usize,
        per_caller: usize,
    ) -> Option<Routes> {
        let want = callers * per_caller;
        let mut r = Routes {
            port,
            ctx: context(),
            pids: pids.to_vec(),
            callers,
            ports: vec![Vec::new(); pids.len()],
        };
        for src in FIRST_PORT..=LAST_PORT {
            if r.ports.iter().all(|p| p.len() >= want) {
                break;
            }
            // Ports another program holds fail to bind: skip them.
            let Ok(a) = r.handshake(src, sni) else {
                continue;
            };
            if let Some(w) = r.pids.iter().position(|&p| p == a.pid) {
                if r.ports[w].len() < want {
                    r.ports[w].push(src);
                }
            }
        }
        r.ports.iter().all(|p| p.len() >= want).then_some(r)
    }

    /// One handshake from source port `src` with `sni`, then `GET /`.
    fn handshake(&self, src: u16, sni: Option<&str>) -> Result<Answer, String> {
        let tcp = connect_from_port(src, self.port, Duration::from_secs(10))
            .map_err(|e| format!("connect from port {src}: {e}"))?;
        let mut ssl = Ssl::new(&self.ctx).map_err(|e| format!("SSL_new: {e}"))?;
        if let Some(n) = sni {
            ssl.set_hostname(n).map_err(|e| format!("SNI {n}: {e}"))?;
        }
        let mut s = ssl
            .connect(tcp)
            .map_err(|e| format!("handshake failed: {e}"))?;
        let names_sni = sni.is_none_or(|n| {
            s.ssl()
                .peer_certificate()
                .and_then(|leaf| leaf.subject_alt_names())
                .is_some_and(|sans| sans.iter().any(|g| g.dnsname() == Some(n)))
        });
        let body = get_body(&mut s, sni.unwrap_or("localhost"))?;
        let _ = s.shutdown();
        let mut it = body.split_whitespace();
        let pid = it
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("unexpected body {body:?}"))?;
        Ok(Answer {
            pid,
            source: it.next().unwrap_or("").to_owned(),
            names_sni,
        })
    }

    /// A handshake with `sni` served by worker `w`, from a port of
    /// `caller` (below the `callers` given to `learn`).
    pub fn touch(&self, w: usize, caller: usize, sni: &str) -> Touch {
        let mine: Vec<u16> = self.ports[w]
            .iter()
            .skip(caller)
            .step_by(self.callers)
            .copied()
            .collect();
        let mut t = Touch {
            answer: None,
            misrouted: 0,
            error: None,
        };
        for k in 0..TRIES {
            match self.handshake(mine[k % mine.len()], Some(sni)) {
                Ok(a) if a.pid == self.pids[w] => {
                    t.answer = Some(a);
                    t.error = None;
                    return t;
                }
                Ok(a) => {
                    t.misrouted += 1;
                    // A misrouted handshake is still checked.
                    if !a.names_sni {
                        t.answer = Some(a);
                        return t;
                    }
                }
                Err(e) => t.error = Some(e),
            }
        }
        t.error
            .get_or_insert_with(|| format!("{sni}: never reached worker {w}"));
        t
    }
}
