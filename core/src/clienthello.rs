//! Peek-time parser for the first bytes of a connection: an optional PROXY
//! protocol header (v1 or v2) followed by a TLS ClientHello, from which the
//! SNI is taken before nginx starts the handshake.
//!
//! The glue feeds it bytes read with `MSG_PEEK`, from the start of the
//! connection, each time more have arrived. So the parser must answer
//! [`Peek::NeedMore`] for every prefix of a valid input, reject anything
//! else as early as it can (a plaintext HTTP client should not be parked
//! until the peek limit), and never panic on hostile bytes. It is an
//! optimisation only: the certificate callback uses OpenSSL's own parse, so
//! anything unusual here is simply [`Peek::Unparseable`] and the connection
//! goes on to nginx as usual.

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::str::FromStr;

/// Most bytes the glue will ever MSG_PEEK: a PROXY v2 header with TLVs
/// (bounded by [`PROXY_V2_MAX`]) plus a ClientHello that may span several
/// TLS records.
pub const PEEK_LIMIT: usize = 20 * 1024;
/// Largest PROXY v2 header accepted (16-byte fixed part plus addresses and
/// TLVs); larger v2 headers are [`Peek::Unparseable`].
pub const PROXY_V2_MAX: usize = 16 + 1024;

/// The PROXY v1 line is at most 107 bytes, CRLF included (haproxy's
/// proxy-protocol.txt, section 2.1).
const PROXY_V1_MAX: usize = 107;
const PROXY_V1_PREFIX: &[u8] = b"PROXY ";
const PROXY_V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
const PROXY_V2_FIXED: usize = 16;

const RECORD_HEADER: usize = 5;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
/// TLSPlaintext.length must not exceed 2^14 (RFC 8446 §5.1); a ClientHello
/// is always plaintext.
const MAX_RECORD_PAYLOAD: usize = 16384;
const HANDSHAKE_HEADER: usize = 4;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;

/// What the bytes peeked so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek<'a> {
    /// Not enough bytes yet; call again when more have arrived (the glue
    /// re-peeks the whole buffer from the start). `at_least` is a lower
    /// bound on the length a buffer needs before it can hold the complete
    /// ClientHello (always more than the buffer given), so the glue need
    /// not look again before that many bytes are there: a ClientHello
    /// dribbled in tiny records is parsed a few dozen times, not once per
    /// record. Bytes that would make it unparseable may come earlier; they
    /// are then seen once `at_least` is reached (or at the peek timer).
    NeedMore { at_least: usize },
    /// A complete ClientHello. `sni` is the first host_name entry of the
    /// server_name extension, raw bytes (not validated, not lowercased),
    /// None when the extension is absent or has no host_name. It borrows
    /// from the peeked buffer when the ClientHello came in one record and is
    /// owned when it had to be reassembled from several.
    Hello { sni: Option<Cow<'a, [u8]>> },
    /// Not a parseable ClientHello (not TLS, SSLv2, malformed, over
    /// [`PEEK_LIMIT`], missing/invalid PROXY header when one is expected...).
    /// The reason is a short static string for a debug log.
    Unparseable(&'static str),
}

/// Why parsing stopped before a ClientHello was found.
enum Stop {
    /// With the least buffer length that could hold a complete ClientHello
    /// (see [`Peek::NeedMore`]).
    NeedMore(usize),
    Bad(&'static str),
}

type Parse<T> = Result<T, Stop>;

/// `buf` is everything peeked so far from the start of the connection.
/// `proxy_protocol` is true when the listener has `proxy_protocol`: then a
/// PROXY v1 (`"PROXY TCP4 ...\r\n"`, at most 107 bytes, also
/// `"PROXY UNKNOWN\r\n"`) or v2 header must come first and is skipped; if it
/// is absent the result is [`Peek::Unparseable`].
pub fn peek_client_hello(buf: &[u8], proxy_protocol: bool) -> Peek<'_> {
    // The glue never peeks more: a hello that ends past the limit is one
    // it can never see whole, whatever a longer buffer says.
    let buf = buf.get(..PEEK_LIMIT).unwrap_or(buf);
    match parse(buf, proxy_protocol) {
        Ok(sni) => Peek::Hello { sni },
        // The glue never peeks more than PEEK_LIMIT, so waiting longer
        // could only park the connection until its timer fires.
        Err(Stop::NeedMore(at_least)) if at_least > PEEK_LIMIT => {
            Peek::Unparseable("no complete ClientHello within the peek limit")
        }
        // Never at or below what is there already, whatever a bound
        // computed below says.
        Err(Stop::NeedMore(at_least)) => Peek::NeedMore {
            at_least: at_least.max(buf.len() + 1),
        },
        Err(Stop::Bad(reason)) => Peek::Unparseable(reason),
    }
}

fn parse(buf: &[u8], proxy_protocol: bool) -> Parse<Option<Cow<'_, [u8]>>> {
    if buf.is_empty() {
        return Err(Stop::NeedMore(1));
    }
    let skip = if proxy_protocol {
        proxy_header_len(buf)?
    } else {
        0
    };
    let tls = buf.get(skip..).unwrap_or_default();
    if tls.is_empty() {
        return Err(Stop::NeedMore(skip + RECORD_HEADER + 1));
    }
    client_hello_sni(tls, skip)
}

/// True when `buf` agrees with `prefix` on every byte both have, so a short
/// `buf` may still grow into the full prefix.
fn agrees_with_prefix(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf.get(..n) == prefix.get(..n)
}

/// Length of the PROXY header at the start of `buf`.
fn proxy_header_len(buf: &[u8]) -> Parse<usize> {
    // "PROXY " and the v2 signature differ in their first byte, so at most
    // one of them can agree with a non-empty buffer.
    if agrees_with_prefix(buf, PROXY_V1_PREFIX) {
        proxy_v1_len(buf)
    } else if agrees_with_prefix(buf, PROXY_V2_SIGNATURE) {
        proxy_v2_len(buf)
    } else {
        Err(Stop::Bad("PROXY protocol header expected"))
    }
}

fn proxy_v1_len(buf: &[u8]) -> Parse<usize> {
    let window = buf.get(..buf.len().min(PROXY_V1_MAX)).unwrap_or_default();
    let lf = window.iter().position(|&b| b == b'\n');
    let line = match lf {
        Some(lf) => window
            .get(..lf)
            .and_then(|line| line.strip_suffix(b"\r"))
            .ok_or(Stop::Bad("PROXY v1 header does not end with CRLF"))?,
        // The CR of the CRLF may have arrived without its LF.
        None => window.strip_suffix(b"\r").unwrap_or(window),
    };
    // The line is printable ASCII. Checking the bytes seen so far refuses a
    // binary client before 107 bytes have arrived, and checking them the
    // same way with or without the LF keeps every prefix of an accepted
    // header a NeedMore.
    if !line.iter().all(|b| (b' '..=b'~').contains(b)) {
        return Err(Stop::Bad("PROXY v1 header is not printable text"));
    }
    match lf {
        Some(lf) => {
            proxy_v1_line(line)?;
            Ok(lf + 1)
        }
        None if buf.len() < PROXY_V1_MAX => Err(Stop::NeedMore(buf.len() + 1)),
        None => Err(Stop::Bad("PROXY v1 header longer than 107 bytes")),
    }
}

/// Checks the v1 line (without CRLF) the way nginx will read it after us,
/// so that what we skip is what nginx skips.
fn proxy_v1_line(line: &[u8]) -> Parse<()> {
    const BAD: Stop = Stop::Bad("PROXY v1 header is malformed");
    let text = std::str::from_utf8(line).map_err(|_| BAD)?;
    let mut fields = text.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(BAD);
    }
    match fields.next() {
        // The receiver must ignore everything after UNKNOWN (proxy-protocol.txt).
        Some("UNKNOWN") => Ok(()),
        Some("TCP4") => proxy_v1_endpoints::<Ipv4Addr>(fields),
        Some("TCP6") => proxy_v1_endpoints::<Ipv6Addr>(fields),
        _ => Err(Stop::Bad("PROXY v1 header has an unknown protocol")),
    }
}

fn proxy_v1_endpoints<'a, A: FromStr>(mut fields: impl Iterator<Item = &'a str>) -> Parse<()> {
    const BAD: Stop = Stop::Bad("PROXY v1 header has invalid addresses or ports");
    let addr = |f: Option<&str>| f.and_then(|s| A::from_str(s).ok()).is_some();
    let port = |f: Option<&str>| {
        f.is_some_and(|s| {
            !s.is_empty()
                && s.len() <= 5
                && s.bytes().all(|b| b.is_ascii_digit())
                && s.parse::<u16>().is_ok()
        })
    };
    let ok = addr(fields.next())
        && addr(fields.next())
        && port(fields.next())
        && port(fields.next())
        && fields.next().is_none();
    if ok {
        Ok(())
    } else {
        Err(BAD)
    }
}

fn proxy_v2_len(buf: &[u8]) -> Parse<usize> {
    // Every byte present is checked as it arrives, so garbage after the
    // signature is refused without waiting for the full fixed part.
    if let Some(&ver_cmd) = buf.get(12) {
        if ver_cmd >> 4 != 2 {
            return Err(Stop::Bad("PROXY v2 header has an unknown version"));
        }
        if ver_cmd & 0x0f > 1 {
            return Err(Stop::Bad("PROXY v2 header has an unknown command"));
        }
    }
    let Some(&[ver_cmd, family, len_hi, len_lo]) = buf.get(12..PROXY_V2_FIXED) else {
        return Err(Stop::NeedMore(PROXY_V2_FIXED.max(buf.len() + 1)));
    };
    let total = PROXY_V2_FIXED + usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if total > PROXY_V2_MAX {
        return Err(Stop::Bad("PROXY v2 header larger than 1040 bytes"));
    }
    let block = buf
        .get(PROXY_V2_FIXED..total)
        .ok_or(Stop::NeedMore(total))?;
    let is_local = ver_cmd & 0x0f == 0;
    // LOCAL and AF_UNSPEC carry no addresses the receiver may use; the
    // block is skipped whole, as the specification asks.
    let address_len = match family {
        _ if is_local => return Ok(total),
        0x00 => return Ok(total),
        0x11 | 0x12 => 12,
        0x21 | 0x22 => 36,
        0x31 | 0x32 => 216,
        _ => return Err(Stop::Bad("PROXY v2 header has an unknown address family")),
    };
    let tlvs = block
        .get(address_len..)
        .ok_or(Stop::Bad("PROXY v2 header shorter than its addresses"))?;
    let mut r = Reader::new(tlvs);
    while !r.is_empty() {
        const OVERRUN: Stop = Stop::Bad("PROXY v2 TLV overruns the header");
        r.u8().ok_or(OVERRUN)?;
        let len = r.u16().ok_or(OVERRUN)?;
        r.take(usize::from(len)).ok_or(OVERRUN)?;
    }
    Ok(total)
}

/// Checks whatever part of a record header `header` holds and returns the
/// record's payload length once all five bytes are there.
fn record_header(header: &[u8]) -> Parse<usize> {
    if let Some(&content_type) = header.first() {
        // An SSLv2 CLIENT-HELLO starts with a 2-byte length whose top bit
        // is set; nginx's OpenSSL refuses it anyway.
        if content_type & 0x80 != 0 {
            return Err(Stop::Bad("SSLv2-style ClientHello"));
        }
        if content_type != CONTENT_TYPE_HANDSHAKE {
            return Err(Stop::Bad("not a TLS handshake record"));
        }
    }
    if let Some(&major) = header.get(1) {
        if major != 3 {
            return Err(Stop::Bad("TLS record version is not 3.x"));
        }
    }
    let Some(&[_, _, _, len_hi, len_lo]) = header.get(..RECORD_HEADER) else {
        // The caller knows how much more the hello needs.
        return Err(Stop::NeedMore(0));
    };
    let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if len == 0 {
        // RFC 8446 §5.1: zero-length handshake fragments MUST NOT be sent.
        return Err(Stop::Bad("empty TLS handshake record"));
    }
    if len > MAX_RECORD_PAYLOAD {
        return Err(Stop::Bad("TLS record longer than 16384 bytes"));
    }
    Ok(len)
}

/// Where the handshake bytes sit in the peeked buffer: one range per
/// record. The first range is kept apart so that the usual single-record
/// hello costs no allocation.
#[derive(Default)]
struct Fragments {
    first: Option<Range<usize>>,
    rest: Vec<Range<usize>>,
    total: usize,
}

impl Fragments {
    fn push(&mut self, range: Range<usize>) {
        self.total = self.total.saturating_add(range.len());
        if self.first.is_none() {
            self.first = Some(range);
        } else {
            self.rest.push(range);
        }
    }

    fn bytes<'a>(&'a self, tls: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.first
            .iter()
            .chain(self.rest.iter())
            .map(move |r| tls.get(r.clone()).unwrap_or_default())
    }
}

/// Reads the handshake header once enough fragment bytes are there and
/// returns the full message length (header included).
fn handshake_len(tls: &[u8], fragments: &Fragments, offset: usize) -> Parse<Option<usize>> {
    let mut header = [0u8; HANDSHAKE_HEADER];
    let mut have = 0;
    for (slot, &b) in header.iter_mut().zip(fragments.bytes(tls).flatten()) {
        *slot = b;
        have += 1;
    }
    if have >= 1 && header[0] != HANDSHAKE_CLIENT_HELLO {
        return Err(Stop::Bad("first handshake message is not a ClientHello"));
    }
    if have < HANDSHAKE_HEADER {
        return Ok(None);
    }
    let [_, a, b, c] = header;
    let len = HANDSHAKE_HEADER + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
    // Refuse a hello that cannot fit in what the glue will ever peek now,
    // rather than parking the connection until the limit is reached.
    if offset + RECORD_HEADER + len > PEEK_LIMIT {
        return Err(Stop::Bad("ClientHello larger than the peek limit"));
    }
    Ok(Some(len))
}

/// How many more handshake bytes the ClientHello needs at the least: the
/// rest of the message once its length is known, else the rest of its
/// 4-byte header. Never 0 while it is incomplete.
fn handshake_bytes_missing(message_len: Option<usize>, fragments: &Fragments) -> usize {
    message_len
        .unwrap_or(HANDSHAKE_HEADER)
        .saturating_sub(fragments.total)
        .max(1)
}

/// Finds the ClientHello in the records at the start of `tls` (which sits
/// `offset` bytes into the peeked buffer) and returns its SNI.
fn client_hello_sni(tls: &[u8], offset: usize) -> Parse<Option<Cow<'_, [u8]>>> {
    let mut fragments = Fragments::default();
    let mut message_len = None;
    let mut pos = 0;
    let message_len = loop {
        let payload_len = match record_header(tls.get(pos..).unwrap_or_default()) {
            // The next record needs its header and at least the handshake
            // bytes still missing.
            Err(Stop::NeedMore(_)) => {
                let missing = handshake_bytes_missing(message_len, &fragments);
                return Err(Stop::NeedMore(offset + pos + RECORD_HEADER + missing));
            }
            other => other?,
        };
        let start = pos + RECORD_HEADER;
        let end = start + payload_len;
        let available = end.min(tls.len());
        fragments.push(start..available.max(start));
        if message_len.is_none() {
            message_len = handshake_len(tls, &fragments, offset)?;
        }
        if let Some(len) = message_len {
            if fragments.total >= len {
                break len;
            }
        }
        if available < end {
            // The rest of this record, and as many more records as the
            // missing bytes need beyond it (at least one header).
            let missing = handshake_bytes_missing(message_len, &fragments);
            let in_this_record = end - available;
            let at_least = if missing <= in_this_record {
                available + missing
            } else {
                end + RECORD_HEADER + (missing - in_this_record)
            };
            return Err(Stop::NeedMore(offset + at_least));
        }
        pos = end;
    };

    const INTERNAL: Stop = Stop::Bad("internal: fragment out of bounds");
    if fragments.rest.is_empty() {
        let start = fragments.first.as_ref().map_or(0, |r| r.start);
        let message = tls.get(start..start + message_len).ok_or(INTERNAL)?;
        let body = message.get(HANDSHAKE_HEADER..).unwrap_or_default();
        let sni = client_hello_body_sni(body)?;
        return Ok(sni.and_then(|r| body.get(r)).map(Cow::Borrowed));
    }
    let mut message = Vec::with_capacity(message_len);
    for bytes in fragments.bytes(tls) {
        let wanted = message_len - message.len();
        message.extend_from_slice(bytes.get(..wanted.min(bytes.len())).unwrap_or_default());
    }
    let body = message.get(HANDSHAKE_HEADER..).unwrap_or_default();
    let Some(range) = client_hello_body_sni(body)? else {
        return Ok(None);
    };
    let start = HANDSHAKE_HEADER + range.start;
    let end = HANDSHAKE_HEADER + range.end;
    // Reuse the reassembly buffer for the name instead of copying it again.
    message.truncate(end);
    message.drain(..start);
    Ok(Some(Cow::Owned(message)))
}

/// Walks a ClientHello body (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2) and returns
/// where the first host_name of its server_name extension is.
fn client_hello_body_sni(body: &[u8]) -> Parse<Option<Range<usize>>> {
    const TRUNCATED: Stop = Stop::Bad("ClientHello truncated");
    let mut r = Reader::new(body);
    let legacy_version = r.u16().ok_or(TRUNCATED)?;
    if legacy_version >> 8 != 3 {
        return Err(Stop::Bad("ClientHello version is not 3.x"));
    }
    r.take(32).ok_or(TRUNCATED)?; // random
    let session_id_len = r.u8().ok_or(TRUNCATED)?;
    if session_id_len > 32 {
        return Err(Stop::Bad("ClientHello session id longer than 32 bytes"));
    }
    r.take(usize::from(session_id_len)).ok_or(TRUNCATED)?;
    let suites_len = r.u16().ok_or(TRUNCATED)?;
    if suites_len == 0 || suites_len % 2 != 0 {
        return Err(Stop::Bad(
            "ClientHello cipher suite list has an invalid length",
        ));
    }
    r.take(usize::from(suites_len)).ok_or(TRUNCATED)?;
    let compression_len = r.u8().ok_or(TRUNCATED)?;
    if compression_len == 0 {
        return Err(Stop::Bad("ClientHello has no compression method"));
    }
    r.take(usize::from(compression_len)).ok_or(TRUNCATED)?;
    // Extensions are optional in TLS 1.0-1.2: nothing after the compression
    // methods means no SNI, not a malformed hello.
    if r.is_empty() {
        return Ok(None);
    }
    let extensions_len = r.u16().ok_or(TRUNCATED)?;
    if usize::from(extensions_len) != r.remaining() {
        return Err(Stop::Bad(
            "ClientHello extensions length does not match the message",
        ));
    }
    const OVERRUN: Stop = Stop::Bad("ClientHello extension overruns the extension block");
    let mut sni = None;
    let mut seen_server_name = false;
    while !r.is_empty() {
        let extension_type = r.u16().ok_or(OVERRUN)?;
        let len = r.u16().ok_or(OVERRUN)?;
        let start = r.position();
        let data = r.take(usize::from(len)).ok_or(OVERRUN)?;
        if extension_type == EXTENSION_SERVER_NAME {
            // RFC 8446 §4.2: at most one extension of each type; two names
            // would leave us guessing which one OpenSSL will pick.
            if seen_server_name {
                return Err(Stop::Bad("duplicate server_name extension"));
            }
            seen_server_name = true;
            sni = server_name_host(data)?.map(|h| start + h.start..start + h.end);
        }
    }
    Ok(sni)
}

/// The first host_name of a server_name extension body (RFC 6066 §3), as
/// OpenSSL's ClientHello callback hands it over; None when there is none
/// or the body is malformed.
pub fn server_name_extension_host(data: &[u8]) -> Option<&[u8]> {
    let range = server_name_host(data).ok()??;
    data.get(range)
}

/// Walks a server_name extension body (RFC 6066 §3) and returns where its
/// first host_name is.
fn server_name_host(data: &[u8]) -> Parse<Option<Range<usize>>> {
    const BAD: Stop = Stop::Bad("server_name extension is malformed");
    let mut r = Reader::new(data);
    let list_len = r.u16().ok_or(BAD)?;
    if list_len == 0 || usize::from(list_len) != r.remaining() {
        return Err(BAD);
    }
    let mut host = None;
    while !r.is_empty() {
        let name_type = r.u8().ok_or(BAD)?;
        let len = r.u16().ok_or(BAD)?;
        let start = r.position();
        r.take(usize::from(len)).ok_or(BAD)?;
        if name_type == NAME_TYPE_HOST_NAME && host.is_none() {
            host = Some(start..start + usize::from(len));
        }
    }
    Ok(host)
}

/// Bounds-checked big-endian reader; every read returns None past the end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let bytes = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(bytes)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn u16(&mut self) -> Option<u16> {
        match *self.take(2)? {
            [hi, lo] => Some(u16::from_be_bytes([hi, lo])),
            _ => None,
        }
    }

    fn position(&self) -> usize {
        self.pos
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn is_empty(&self) -> bool {
        self.remaining() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from `openssl s_client -connect 127.0.0.1:PORT
    /// -servername shop.example.com` (OpenSSL 3.0): one record, TLS 1.3
    /// key share, 62 cipher suite bytes, SNI `shop.example.com`.
    const OPENSSL_S_CLIENT_HELLO: &[u8] = &[
        0x16, 0x03, 0x01, 0x01, 0x3d, 0x01, 0x00, 0x01, 0x39, 0x03, 0x03, 0x34, 0x02, 0x8b, 0x21,
        0xbc, 0xd0, 0xdc, 0x56, 0xfe, 0x8e, 0x42, 0x7c, 0xb5, 0xcf, 0x71, 0xf5, 0x7c, 0xfa, 0x11,
        0x24, 0xbd, 0xd3, 0x65, 0x51, 0x8a, 0x18, 0xd6, 0x95, 0xb7, 0x78, 0xef, 0x68, 0x20, 0xd9,
        0x01, 0x16, 0xc9, 0xaf, 0xb9, 0x48, 0xae, 0x26, 0xf1, 0xde, 0xfa, 0xe8, 0x69, 0x21, 0xb7,
        0xfc, 0xc8, 0xac, 0x38, 0x69, 0xdb, 0xf8, 0x4d, 0xf5, 0x48, 0x14, 0xcd, 0x66, 0xcf, 0x53,
        0x66, 0x00, 0x3e, 0x13, 0x02, 0x13, 0x03, 0x13, 0x01, 0xc0, 0x2c, 0xc0, 0x30, 0x00, 0x9f,
        0xcc, 0xa9, 0xcc, 0xa8, 0xcc, 0xaa, 0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x9e, 0xc0, 0x24, 0xc0,
        0x28, 0x00, 0x6b, 0xc0, 0x23, 0xc0, 0x27, 0x00, 0x67, 0xc0, 0x0a, 0xc0, 0x14, 0x00, 0x39,
        0xc0, 0x09, 0xc0, 0x13, 0x00, 0x33, 0x00, 0x9d, 0x00, 0x9c, 0x00, 0x3d, 0x00, 0x3c, 0x00,
        0x35, 0x00, 0x2f, 0x00, 0xff, 0x01, 0x00, 0x00, 0xb2, 0x00, 0x00, 0x00, 0x15, 0x00, 0x13,
        0x00, 0x00, 0x10, 0x73, 0x68, 0x6f, 0x70, 0x2e, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65,
        0x2e, 0x63, 0x6f, 0x6d, 0x00, 0x0b, 0x00, 0x04, 0x03, 0x00, 0x01, 0x02, 0x00, 0x0a, 0x00,
        0x16, 0x00, 0x14, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x1e, 0x00, 0x19, 0x00, 0x18, 0x01, 0x00,
        0x01, 0x01, 0x01, 0x02, 0x01, 0x03, 0x01, 0x04, 0x00, 0x23, 0x00, 0x00, 0x00, 0x16, 0x00,
        0x00, 0x00, 0x17, 0x00, 0x00, 0x00, 0x0d, 0x00, 0x2a, 0x00, 0x28, 0x04, 0x03, 0x05, 0x03,
        0x06, 0x03, 0x08, 0x07, 0x08, 0x08, 0x08, 0x09, 0x08, 0x0a, 0x08, 0x0b, 0x08, 0x04, 0x08,
        0x05, 0x08, 0x06, 0x04, 0x01, 0x05, 0x01, 0x06, 0x01, 0x03, 0x03, 0x03, 0x01, 0x03, 0x02,
        0x04, 0x02, 0x05, 0x02, 0x06, 0x02, 0x00, 0x2b, 0x00, 0x09, 0x08, 0x03, 0x04, 0x03, 0x03,
        0x03, 0x02, 0x03, 0x01, 0x00, 0x2d, 0x00, 0x02, 0x01, 0x01, 0x00, 0x33, 0x00, 0x26, 0x00,
        0x24, 0x00, 0x1d, 0x00, 0x20, 0xa1, 0x1e, 0x0d, 0x89, 0x8b, 0x7f, 0x1d, 0xc9, 0x2e, 0x9a,
        0x7e, 0xdf, 0x3a, 0x54, 0x37, 0xab, 0xfc, 0xa8, 0x9b, 0xfd, 0xe0, 0x84, 0xc0, 0x8c, 0x44,
        0x0f, 0x74, 0xef, 0x7d, 0x41, 0xc9, 0x09,
    ];

    /// Extension bytes as (type, data).
    fn extension(extension_type: u16, data: &[u8]) -> Vec<u8> {
        let mut out = extension_type.to_be_bytes().to_vec();
        out.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    /// A server_name extension body holding the given (name_type, name) entries.
    fn server_name_list(entries: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (name_type, name) in entries {
            list.push(*name_type);
            list.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
            list.extend_from_slice(name);
        }
        let mut out = u16::try_from(list.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(&list);
        out
    }

    #[test]
    fn server_name_extension_body_yields_its_first_host_name() {
        let body = server_name_list(&[(7, b"x"), (0, b"shop.example"), (0, b"b")]);
        assert_eq!(
            server_name_extension_host(&body),
            Some(&b"shop.example"[..])
        );
        assert_eq!(
            server_name_extension_host(&server_name_list(&[(7, b"x")])),
            None
        );
        assert_eq!(server_name_extension_host(&body[..body.len() - 1]), None);
        assert_eq!(server_name_extension_host(b""), None);
    }

    fn sni_extension(name: &str) -> Vec<u8> {
        extension(0, &server_name_list(&[(0, name.as_bytes())]))
    }

    /// A ClientHello body shaped like a modern client's, with the given
    /// extensions (None: no extension block at all).
    fn hello_body(extensions: Option<&[Vec<u8>]>) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0xab; 32]); // random
        body.push(32);
        body.extend_from_slice(&[0xcd; 32]); // session id
        body.extend_from_slice(&[0x00, 0x06, 0x13, 0x01, 0x13, 0x02, 0xc0, 0x2f]);
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        if let Some(extensions) = extensions {
            let block: Vec<u8> = extensions.concat();
            body.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
            body.extend_from_slice(&block);
        }
        body
    }

    fn typical_extensions(sni: Option<&str>) -> Vec<Vec<u8>> {
        let mut extensions = vec![
            extension(0x000b, &[0x03, 0x00, 0x01, 0x02]), // ec_point_formats
            extension(0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]), // groups
        ];
        if let Some(name) = sni {
            extensions.insert(1, sni_extension(name));
        }
        extensions.push(extension(0x002b, &[0x04, 0x03, 0x04, 0x03, 0x03])); // versions
        extensions
    }

    /// Wraps a ClientHello body into a handshake message.
    fn handshake(body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len()).unwrap().to_be_bytes();
        let mut out = vec![HANDSHAKE_CLIENT_HELLO, len[1], len[2], len[3]];
        out.extend_from_slice(body);
        out
    }

    /// Splits `message` into handshake records carrying `sizes` bytes each;
    /// the last record takes whatever is left.
    fn records(message: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = message;
        let mut sizes = sizes.iter();
        while !rest.is_empty() {
            let n = sizes.next().copied().unwrap_or(rest.len()).min(rest.len());
            let (fragment, tail) = rest.split_at(n);
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
            out.extend_from_slice(fragment);
            rest = tail;
        }
        out
    }

    fn hello_with_sni(name: &str) -> Vec<u8> {
        records(
            &handshake(&hello_body(Some(&typical_extensions(Some(name))))),
            &[],
        )
    }

    fn proxy_v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = PROXY_V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    fn tcp4_addresses() -> Vec<u8> {
        vec![192, 0, 2, 1, 198, 51, 100, 7, 0xc3, 0x50, 0x01, 0xbb]
    }

    fn concat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn sni_of(peek: Peek<'_>) -> Option<Vec<u8>> {
        match peek {
            Peek::Hello { sni } => sni.map(Cow::into_owned),
            other => panic!("expected a ClientHello, got {other:?}"),
        }
    }

    fn assert_unparseable(buf: &[u8], proxy_protocol: bool) -> &'static str {
        match peek_client_hello(buf, proxy_protocol) {
            Peek::Unparseable(reason) => reason,
            other => panic!("expected Unparseable, got {other:?}"),
        }
    }

    /// The bound a NeedMore gives, checked to be beyond the buffer.
    fn assert_need_more(buf: &[u8], proxy_protocol: bool) -> usize {
        match peek_client_hello(buf, proxy_protocol) {
            Peek::NeedMore { at_least } => {
                assert!(at_least > buf.len(), "{at_least} for {} bytes", buf.len());
                at_least
            }
            other => panic!("expected NeedMore, got {other:?}"),
        }
    }

    /// Every strict prefix must wait for more, with a bound no longer than
    /// the whole (which is complete), and the whole must parse.
    fn assert_prefixes_need_more(buf: &[u8], proxy_protocol: bool) {
        for n in 0..buf.len() {
            let at_least = assert_need_more(&buf[..n], proxy_protocol);
            assert!(
                at_least <= buf.len(),
                "prefix of {n} bytes out of {}: bound {at_least}",
                buf.len()
            );
        }
        assert!(matches!(
            peek_client_hello(buf, proxy_protocol),
            Peek::Hello { .. }
        ));
    }

    #[test]
    fn openssl_s_client_hello_yields_its_sni_borrowed_from_the_buffer() {
        match peek_client_hello(OPENSSL_S_CLIENT_HELLO, false) {
            Peek::Hello {
                sni: Some(Cow::Borrowed(name)),
            } => assert_eq!(name, b"shop.example.com"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn every_truncation_prefix_of_the_openssl_hello_needs_more() {
        assert_prefixes_need_more(OPENSSL_S_CLIENT_HELLO, false);
    }

    #[test]
    fn openssl_hello_refragmented_into_tiny_records_yields_the_same_sni() {
        let message = &OPENSSL_S_CLIENT_HELLO[RECORD_HEADER..];
        let buf = records(message, &[1; 400]);
        assert_eq!(
            sni_of(peek_client_hello(&buf, false)).unwrap(),
            b"shop.example.com"
        );
    }

    #[test]
    fn built_hello_with_sni_yields_raw_sni_without_lowercasing() {
        let buf = hello_with_sni("Shop.Example.COM.");
        assert_eq!(
            sni_of(peek_client_hello(&buf, false)).unwrap(),
            b"Shop.Example.COM."
        );
    }

    #[test]
    fn hello_without_server_name_extension_yields_no_sni() {
        let buf = records(
            &handshake(&hello_body(Some(&typical_extensions(None)))),
            &[],
        );
        assert_eq!(peek_client_hello(&buf, false), Peek::Hello { sni: None });
    }

    #[test]
    fn hello_without_any_extension_block_yields_no_sni() {
        let buf = records(&handshake(&hello_body(None)), &[]);
        assert_eq!(peek_client_hello(&buf, false), Peek::Hello { sni: None });
    }

    #[test]
    fn hello_with_empty_extension_block_yields_no_sni() {
        let buf = records(&handshake(&hello_body(Some(&[]))), &[]);
        assert_eq!(peek_client_hello(&buf, false), Peek::Hello { sni: None });
    }

    #[test]
    fn server_name_without_host_name_entry_yields_no_sni() {
        let ext = extension(0, &server_name_list(&[(7, b"opaque")]));
        let buf = records(&handshake(&hello_body(Some(&[ext]))), &[]);
        assert_eq!(peek_client_hello(&buf, false), Peek::Hello { sni: None });
    }

    #[test]
    fn first_host_name_entry_wins_over_later_ones_and_other_types() {
        let list = server_name_list(&[
            (7, b"opaque"),
            (0, b"first.example"),
            (0, b"second.example"),
        ]);
        let buf = records(&handshake(&hello_body(Some(&[extension(0, &list)]))), &[]);
        assert_eq!(
            sni_of(peek_client_hello(&buf, false)).unwrap(),
            b"first.example"
        );
    }

    #[test]
    fn fragmented_client_hello_across_two_records_yields_owned_sni() {
        let message = handshake(&hello_body(Some(&typical_extensions(Some(
            "a.example.org",
        )))));
        let buf = records(&message, &[60]);
        match peek_client_hello(&buf, false) {
            Peek::Hello {
                sni: Some(Cow::Owned(name)),
            } => assert_eq!(name, b"a.example.org"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn fragmented_client_hello_across_three_records_yields_sni() {
        let message = handshake(&hello_body(Some(&typical_extensions(Some(
            "b.example.org",
        )))));
        // The second boundary falls inside the server_name bytes.
        let buf = records(&message, &[50, 70]);
        assert_eq!(
            sni_of(peek_client_hello(&buf, false)).unwrap(),
            b"b.example.org"
        );
    }

    #[test]
    fn handshake_header_split_over_one_byte_records_is_reassembled() {
        let message = handshake(&hello_body(Some(&typical_extensions(Some(
            "c.example.org",
        )))));
        let buf = records(&message, &[1, 1, 1, 1]);
        assert_eq!(
            sni_of(peek_client_hello(&buf, false)).unwrap(),
            b"c.example.org"
        );
    }

    #[test]
    fn every_truncation_prefix_of_single_and_fragmented_hellos_needs_more() {
        let message = handshake(&hello_body(Some(&typical_extensions(Some(
            "d.example.org",
        )))));
        for sizes in [&[][..], &[60], &[50, 70], &[1, 2, 3, 4, 5]] {
            assert_prefixes_need_more(&records(&message, sizes), false);
        }
    }

    #[test]
    fn bytes_after_the_hello_do_not_matter() {
        let mut buf = hello_with_sni("e.example.org");
        buf.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01, 0xff, 0xff]);
        assert_eq!(
            sni_of(peek_client_hello(&buf, false)).unwrap(),
            b"e.example.org"
        );
    }

    #[test]
    fn empty_buffer_needs_more() {
        assert_eq!(assert_need_more(&[], false), 1);
        assert_eq!(assert_need_more(&[], true), 1);
    }

    #[test]
    fn proxy_v1_tcp4_header_is_skipped() {
        let hello = hello_with_sni("v1.example.org");
        let buf = concat(&[b"PROXY TCP4 192.0.2.1 198.51.100.7 50000 443\r\n", &hello]);
        assert_eq!(
            sni_of(peek_client_hello(&buf, true)).unwrap(),
            b"v1.example.org"
        );
        assert_prefixes_need_more(&buf, true);
    }

    #[test]
    fn proxy_v1_tcp6_header_is_skipped() {
        let hello = hello_with_sni("v6.example.org");
        let buf = concat(&[b"PROXY TCP6 2001:db8::1 2001:db8::2 50000 443\r\n", &hello]);
        assert_eq!(
            sni_of(peek_client_hello(&buf, true)).unwrap(),
            b"v6.example.org"
        );
    }

    #[test]
    fn proxy_v1_unknown_header_is_skipped_with_or_without_addresses() {
        let hello = hello_with_sni("u.example.org");
        for header in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n",
        ] {
            let buf = concat(&[header, &hello]);
            assert_eq!(
                sni_of(peek_client_hello(&buf, true)).unwrap(),
                b"u.example.org"
            );
        }
    }

    #[test]
    fn proxy_v1_longest_legal_header_is_skipped() {
        // The 107-byte bound is "PROXY UNKNOWN" followed by the longest
        // TCP6 fields, which the specification sizes its buffers for.
        let header = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(header.len(), PROXY_V1_MAX);
        let buf = concat(&[header, &hello_with_sni("long.example.org")]);
        assert_eq!(
            sni_of(peek_client_hello(&buf, true)).unwrap(),
            b"long.example.org"
        );
    }

    #[test]
    fn proxy_v1_header_without_crlf_within_107_bytes_is_unparseable() {
        let mut buf = b"PROXY TCP4 ".to_vec();
        buf.resize(200, b'1');
        assert_eq!(
            assert_unparseable(&buf, true),
            "PROXY v1 header longer than 107 bytes"
        );
    }

    #[test]
    fn proxy_v1_header_with_bad_fields_is_unparseable() {
        let hello = hello_with_sni("x.example.org");
        for header in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.7 50000\r\n"[..],
            b"PROXY TCP4 2001:db8::1 198.51.100.7 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 1 65536\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 +1 2\r\n",
            b"PROXY TCP4  192.0.2.1 198.51.100.7 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 3\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.7 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\n",
        ] {
            let buf = concat(&[header, &hello]);
            assert_unparseable(&buf, true);
        }
    }

    #[test]
    fn proxy_v1_header_with_binary_bytes_is_refused_before_the_line_ends() {
        assert_unparseable(b"PROXY TCP4 \x16\x03", true);
    }

    #[test]
    fn proxy_v1_unknown_header_with_control_bytes_is_unparseable_with_or_without_lf() {
        assert_unparseable(b"PROXY UNKNOWN \x01\r\n\x16\x03\x01", true);
        assert_unparseable(b"PROXY UNKNOWN \x01", true);
        assert_unparseable(b"PROXY UNKNOWN a\rb", true);
        assert_need_more(b"PROXY UNKNOWN a\r", true);
    }

    #[test]
    fn proxy_v2_header_without_tlvs_is_skipped() {
        let hello = hello_with_sni("v2.example.org");
        let buf = concat(&[&proxy_v2(1, 0x11, &tcp4_addresses()), &hello]);
        assert_eq!(
            sni_of(peek_client_hello(&buf, true)).unwrap(),
            b"v2.example.org"
        );
        assert_prefixes_need_more(&buf, true);
    }

    #[test]
    fn proxy_v2_header_with_tlvs_is_skipped() {
        let mut block = tcp4_addresses();
        block.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']); // ALPN
        block.extend_from_slice(&[0x04, 0x00, 0x10]); // NOOP padding
        block.extend_from_slice(&[0; 16]);
        let hello = hello_with_sni("tlv.example.org");
        let buf = concat(&[&proxy_v2(1, 0x11, &block), &hello]);
        assert_eq!(
            sni_of(peek_client_hello(&buf, true)).unwrap(),
            b"tlv.example.org"
        );
        assert_prefixes_need_more(&buf, true);
    }

    #[test]
    fn proxy_v2_tcp6_and_local_headers_are_skipped() {
        let hello = hello_with_sni("six.example.org");
        let tcp6 = proxy_v2(1, 0x21, &[0x20; 36]);
        let local = proxy_v2(0, 0x00, &[]);
        let local_with_junk = proxy_v2(0, 0x11, &[0xff; 5]);
        for header in [tcp6, local, local_with_junk] {
            let buf = concat(&[&header, &hello]);
            assert_eq!(
                sni_of(peek_client_hello(&buf, true)).unwrap(),
                b"six.example.org"
            );
        }
    }

    #[test]
    fn proxy_v2_header_larger_than_the_limit_is_unparseable_before_it_arrives() {
        let header = proxy_v2(1, 0x11, &vec![0; PROXY_V2_MAX - PROXY_V2_FIXED + 1]);
        assert_unparseable(&header[..PROXY_V2_FIXED], true);
    }

    #[test]
    fn proxy_v2_header_with_bad_version_command_family_or_tlv_is_unparseable() {
        let hello = hello_with_sni("bad.example.org");
        let mut bad_version = proxy_v2(1, 0x11, &tcp4_addresses());
        bad_version[12] = 0x11;
        let mut bad_command = proxy_v2(1, 0x11, &tcp4_addresses());
        bad_command[12] = 0x22;
        let bad_family = proxy_v2(1, 0x41, &tcp4_addresses());
        let short_addresses = proxy_v2(1, 0x21, &tcp4_addresses());
        let mut overrun = tcp4_addresses();
        overrun.extend_from_slice(&[0x01, 0x00, 0x09, b'h']);
        let tlv_overrun = proxy_v2(1, 0x11, &overrun);
        for header in [
            bad_version,
            bad_command,
            bad_family,
            short_addresses,
            tlv_overrun,
        ] {
            assert_unparseable(&concat(&[&header, &hello]), true);
        }
    }

    #[test]
    fn partial_proxy_headers_need_more() {
        assert_need_more(b"PRO", true);
        assert_need_more(b"PROXY TCP4 192.0.2.1", true);
        assert_eq!(assert_need_more(&PROXY_V2_SIGNATURE[..7], true), 16);
        let header = proxy_v2(1, 0x11, &tcp4_addresses());
        assert_eq!(assert_need_more(&header[..20], true), header.len());
        // The header, then at least a record header and a byte.
        assert_eq!(assert_need_more(&header, true), header.len() + 6);
    }

    #[test]
    fn proxy_expected_but_absent_is_unparseable() {
        let hello = hello_with_sni("direct.example.org");
        assert_eq!(
            assert_unparseable(&hello, true),
            "PROXY protocol header expected"
        );
        assert_unparseable(b"\x16", true);
    }

    #[test]
    fn proxy_header_on_a_listener_without_proxy_protocol_is_unparseable() {
        let buf = concat(&[b"PROXY UNKNOWN\r\n", &hello_with_sni("x.example.org")]);
        assert_unparseable(&buf, false);
    }

    #[test]
    fn garbage_is_unparseable() {
        assert_unparseable(b"\x00\x01\x02\x03\x04\x05", false);
        assert_unparseable(&[0xff; 64], false);
        assert_unparseable(b"\x00garbage", true);
    }

    #[test]
    fn plaintext_http_is_unparseable_from_its_first_byte() {
        assert_unparseable(b"G", false);
        assert_unparseable(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", false);
        let buf = concat(&[b"PROXY UNKNOWN\r\n", b"GET / HTTP/1.1\r\n"]);
        assert_unparseable(&buf, true);
    }

    #[test]
    fn sslv2_client_hello_is_unparseable() {
        // 2-byte SSLv2 header (top bit set), CLIENT-HELLO, version 3.1.
        let sslv2 = [
            0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
        ];
        assert_eq!(assert_unparseable(&sslv2, false), "SSLv2-style ClientHello");
    }

    #[test]
    fn record_with_wrong_version_or_length_is_unparseable() {
        assert_unparseable(&[22, 2, 0], false);
        assert_eq!(
            assert_unparseable(&[22, 3, 1, 0x40, 0x01], false),
            "TLS record longer than 16384 bytes"
        );
        assert_eq!(
            assert_unparseable(&[22, 3, 1, 0, 0], false),
            "empty TLS handshake record"
        );
    }

    #[test]
    fn non_handshake_record_between_fragments_is_unparseable() {
        let message = handshake(&hello_body(Some(&typical_extensions(Some(
            "f.example.org",
        )))));
        let mut buf = records(&message[..40], &[]);
        buf.extend_from_slice(&[21, 3, 3, 0, 2, 2, 40]); // alert
        assert_unparseable(&buf, false);
    }

    #[test]
    fn first_handshake_message_other_than_client_hello_is_refused_at_its_first_byte() {
        assert_eq!(
            assert_unparseable(&[22, 3, 3, 0, 80, 2], false),
            "first handshake message is not a ClientHello"
        );
    }

    #[test]
    fn client_hello_declaring_more_than_the_peek_limit_is_unparseable_at_once() {
        assert_eq!(
            assert_unparseable(&[22, 3, 1, 0x40, 0x00, 1, 0x00, 0x60, 0x00], false),
            "ClientHello larger than the peek limit"
        );
    }

    #[test]
    fn buffer_at_the_peek_limit_without_a_complete_hello_is_unparseable() {
        // A legal-size hello split into one-byte records cannot arrive
        // within PEEK_LIMIT bytes: six bytes of record per hello byte.
        let body = hello_body(Some(&[extension(0x0015, &vec![0; 4000])]));
        let buf = records(&handshake(&body), &[1; 5000]);
        assert!(buf.len() > PEEK_LIMIT);
        // The rest could still come in one large record early on...
        assert_need_more(&buf[..100], false);
        // ...but not once it could no longer fit: refused before the limit.
        for n in [PEEK_LIMIT - 100, PEEK_LIMIT - 1, PEEK_LIMIT, buf.len()] {
            assert_eq!(
                assert_unparseable(&buf[..n], false),
                "no complete ClientHello within the peek limit",
                "{n} bytes"
            );
        }
    }

    #[test]
    fn largest_hello_that_fits_the_peek_limit_is_parsed() {
        let padding = vec![0; PEEK_LIMIT - 200];
        let body = hello_body(Some(&[
            sni_extension("big.example.org"),
            extension(0x0015, &padding),
        ]));
        let buf = records(&handshake(&body), &[MAX_RECORD_PAYLOAD]);
        assert!(buf.len() <= PEEK_LIMIT);
        assert_eq!(
            sni_of(peek_client_hello(&buf, false)).unwrap(),
            b"big.example.org"
        );
    }

    /// How many times a glue that waits for each bound parses a hello that
    /// arrives `step` bytes at a time, and what it finds at the end.
    fn parses_following_the_bounds(buf: &[u8], step: usize) -> (usize, Peek<'_>) {
        let mut parses = 0;
        let mut wait_for = 0;
        let mut have = 0;
        loop {
            have = (have + step).min(buf.len());
            if have < wait_for {
                continue;
            }
            parses += 1;
            match peek_client_hello(&buf[..have], false) {
                Peek::NeedMore { at_least } => wait_for = at_least,
                done => return (parses, done),
            }
        }
    }

    #[test]
    fn a_hello_dribbled_in_one_byte_records_is_parsed_a_few_dozen_times() {
        // 3,100 bytes of message, one record of one byte each (six bytes of
        // record per byte of message): the peek used to parse the whole
        // buffer again at each arrival, once per record.
        let body = hello_body(Some(&[
            sni_extension("slow.example.org"),
            extension(0x0015, &vec![0; 3000]),
        ]));
        let message = handshake(&body);
        let buf = records(&message, &vec![1; message.len()]);
        assert!(message.len() > 3100 && buf.len() <= PEEK_LIMIT);
        let (parses, found) = parses_following_the_bounds(&buf, 6);
        assert_eq!(sni_of(found).unwrap(), b"slow.example.org");
        // Each parse at least removes a sixth of what is missing: about
        // log(3100) / log(6/5), plus the record header steps.
        assert!(
            parses <= 60,
            "{parses} parses for {} records",
            message.len()
        );
        // Any arrival pattern is bounded alike.
        for step in [1, 5, 7, 64, 1000] {
            let (parses, found) = parses_following_the_bounds(&buf, step);
            assert_eq!(sni_of(found).unwrap(), b"slow.example.org");
            assert!(parses <= 60, "{parses} parses in steps of {step}");
        }
        // A hello in one record is parsed as soon as its record is there.
        let whole = hello_with_sni("fast.example.org");
        let at_least = assert_need_more(&whole[..9], false);
        assert_eq!(at_least, whole.len());
    }

    /// Overwrites part of a ClientHello body.
    fn corrupt(body: &mut [u8], at: usize, bytes: &[u8]) {
        body[at..at + bytes.len()].copy_from_slice(bytes);
    }

    #[test]
    fn malformed_fixed_fields_are_unparseable() {
        let good = hello_body(Some(&typical_extensions(Some("g.example.org"))));
        // Offsets: version 0, random 2, session id length 34, suites length
        // 67, compression length 75, extensions length 77.
        let mut bad_version = good.clone();
        corrupt(&mut bad_version, 0, &[0x02, 0x00]);
        let mut long_session_id = good.clone();
        corrupt(&mut long_session_id, 34, &[33]);
        let mut odd_suites = good.clone();
        corrupt(&mut odd_suites, 67, &[0x00, 0x05]);
        let mut no_suites = good.clone();
        corrupt(&mut no_suites, 67, &[0x00, 0x00]);
        let mut no_compression = good.clone();
        corrupt(&mut no_compression, 75, &[0x00]);
        let mut huge_suites = good.clone();
        corrupt(&mut huge_suites, 67, &[0xff, 0xfe]);
        for body in [
            bad_version,
            long_session_id,
            odd_suites,
            no_suites,
            no_compression,
            huge_suites,
        ] {
            assert_unparseable(&records(&handshake(&body), &[]), false);
        }
        assert_eq!(
            sni_of(peek_client_hello(&records(&handshake(&good), &[]), false)).unwrap(),
            b"g.example.org"
        );
    }

    #[test]
    fn truncated_hello_body_is_unparseable_not_waited_for() {
        // The handshake length says the message is complete; its body is
        // not a whole ClientHello.
        let good = hello_body(None);
        for len in [0, 1, 2, 30, 34, 60, 70, 76] {
            assert_unparseable(&records(&handshake(&good[..len]), &[]), false);
        }
    }

    #[test]
    fn extension_lengths_that_overrun_are_unparseable() {
        let mut sni = sni_extension("h.example.org");
        // Extension data length one more than present.
        sni[3] += 1;
        let buf = records(&handshake(&hello_body(Some(&[sni]))), &[]);
        assert_unparseable(&buf, false);

        // Extension block length disagreeing with the message length.
        let mut body = hello_body(Some(&typical_extensions(Some("h.example.org"))));
        body[78] = body[78].wrapping_add(1);
        assert_eq!(
            assert_unparseable(&records(&handshake(&body), &[]), false),
            "ClientHello extensions length does not match the message"
        );

        // Extension header cut short inside the block.
        let body = hello_body(Some(&[vec![0x00, 0x0b, 0x00]]));
        assert_unparseable(&records(&handshake(&body), &[]), false);
    }

    #[test]
    fn server_name_lengths_that_overrun_are_unparseable() {
        let name = b"i.example.org";
        let mut list_too_long = server_name_list(&[(0, name)]);
        list_too_long[1] += 1;
        let mut entry_too_long = server_name_list(&[(0, name)]);
        entry_too_long[4] += 1;
        let empty_list = vec![0, 0];
        let empty_extension = vec![];
        for data in [list_too_long, entry_too_long, empty_list, empty_extension] {
            let buf = records(&handshake(&hello_body(Some(&[extension(0, &data)]))), &[]);
            assert_eq!(
                assert_unparseable(&buf, false),
                "server_name extension is malformed"
            );
        }
    }

    #[test]
    fn duplicate_server_name_extensions_are_unparseable() {
        let extensions = [
            sni_extension("one.example.org"),
            sni_extension("two.example.org"),
        ];
        let buf = records(&handshake(&hello_body(Some(&extensions))), &[]);
        assert_eq!(
            assert_unparseable(&buf, false),
            "duplicate server_name extension"
        );
    }
}
