//! Connections as the access tests shape them: from a chosen source
//! address, behind a PROXY protocol header, and hand-built ClientHellos
//! that OpenSSL's client would refuse to send.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::time::Duration;

/// Connect, read and write timeout of the client.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

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
    let family = match (from, to) {
        (IpAddr::V4(_), SocketAddr::V4(_)) => libc::AF_INET,
        (IpAddr::V6(_), SocketAddr::V6(_)) => libc::AF_INET6,
        _ => return Err(format!("cannot connect from {from} to {to}")),
    };
    let (src, dst) = (sockaddr(SocketAddr::new(from, 0)), sockaddr(to));
    // SAFETY: socket(2) has no memory preconditions.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh socket we own; the TcpStream closes it on drop,
    // also on the error paths below.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    // SAFETY: src is an initialized sockaddr_storage of the socket's family
    // with its true length.
    if unsafe { libc::bind(fd, &src.0 as *const _ as *const libc::sockaddr, src.1) } != 0 {
        return Err(format!("bind {from}: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: as above, for dst; a blocking connect on loopback returns at
    // once.
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

/// A hand-built TLS 1.2 ClientHello whose SNI is `sni` bytes as they are:
/// OpenSSL's client refuses names longer than 255 bytes, and the server
/// must survive them.
pub fn raw_client_hello(sni: &[u8]) -> Vec<u8> {
    fn u16be(n: usize) -> [u8; 2] {
        (n as u16).to_be_bytes()
    }
    let mut ext = Vec::new();
    // server_name
    let mut sn = vec![0u8];
    sn.extend_from_slice(&u16be(sni.len()));
    sn.extend_from_slice(sni);
    let mut sn_list = u16be(sn.len()).to_vec();
    sn_list.extend_from_slice(&sn);
    ext.extend_from_slice(&[0, 0]);
    ext.extend_from_slice(&u16be(sn_list.len()));
    ext.extend_from_slice(&sn_list);
    // supported_groups: x25519, secp256r1
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed
    ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
    ext.extend_from_slice(&[
        0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01,
    ]);

    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x5a; 32]); // random
    body.push(0); // session id
    let suites: [u16; 4] = [0xc02b, 0xc02f, 0xc02c, 0xc030];
    body.extend_from_slice(&u16be(suites.len() * 2));
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    body.extend_from_slice(&u16be(ext.len()));
    body.extend_from_slice(&ext);

    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);

    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&u16be(hs.len()));
    rec.extend_from_slice(&hs);
    rec
}

/// Sends `raw_client_hello(sni)` and returns the first bytes of the answer
/// (a handshake record 0x16 or an alert 0x15), or an empty vector when the
/// server just closed.
pub fn send_raw_client_hello(port: u16, sni: &[u8]) -> Result<Vec<u8>, String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(&raw_client_hello(sni))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(n) => Ok(buf[..n].to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}
