//! HTTP/1.1 on the client side: reading one response by its own framing
//! (Content-Length, chunked, HEAD, or up to the close), keep-alive
//! connections for floods, and the metrics scrape.

use std::io::{ErrorKind, Read};
use std::time::{Duration, Instant};

/// How long to wait for the server to close after a complete response.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A response as read: status, headers, body (de-chunked), whether the
/// server then closed the connection, and when the response was complete.
pub(crate) struct ReadResponse {
    pub status: u16,
    pub headers: Headers,
    pub body: String,
    pub closed: bool,
    pub complete: Instant,
}

/// Reads one response. `set_timeout` changes the socket's read timeout
/// (the stream may be TLS over it).
pub(crate) fn read_response(
    s: &mut impl Read,
    head_request: bool,
    set_timeout: impl Fn(Duration),
) -> Result<ReadResponse, String> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let mut closed = false;
    let mut parsed = None;
    let mut complete = None;
    loop {
        if parsed.is_none() {
            parsed = parse_complete(&raw, head_request);
            if parsed.is_some() {
                // The response is in; now only the close is awaited.
                complete = Some(Instant::now());
                set_timeout(CLOSE_WAIT);
            }
        }
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if parsed.is_none() {
                    return Err(format!(
                        "read timed out; got {:?}",
                        String::from_utf8_lossy(&raw)
                    ));
                }
                break;
            }
            // A reset or an unexpected EOF after TLS (nginx may close
            // without close_notify): the server is gone.
            Err(e) => {
                if raw.is_empty() {
                    return Err(format!("read: {e}"));
                }
                closed = true;
                break;
            }
        }
    }
    let (status, headers, body) = match parsed.or_else(|| parse_complete(&raw, head_request)) {
        Some(p) => p,
        // No length: the body is everything up to the close.
        None => parse_until_close(&raw)?,
    };
    Ok(ReadResponse {
        status,
        headers,
        body,
        closed,
        complete: complete.unwrap_or_else(Instant::now),
    })
}

pub(crate) type Headers = Vec<(String, String)>;
/// Status, headers, body.
type Parsed = (u16, Headers, String);

/// Status, headers, and where the body starts.
fn parse_head(raw: &[u8]) -> Option<(u16, Headers, usize)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = String::from_utf8_lossy(&raw[..end]);
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some((status, headers, end + 4))
}

/// A header by case-insensitive name.
pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The response if it is complete by its own framing (Content-Length,
/// chunked, or a HEAD answer).
pub(crate) fn parse_complete(raw: &[u8], head_request: bool) -> Option<Parsed> {
    let (status, headers, start) = parse_head(raw)?;
    let rest = &raw[start..];
    if head_request || status == 204 || status == 304 {
        return Some((status, headers, String::new()));
    }
    if header(&headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let body = dechunk(rest)?;
        return Some((status, headers, body));
    }
    let len: usize = header(&headers, "content-length")?.parse().ok()?;
    (rest.len() >= len).then(|| {
        let body = String::from_utf8_lossy(&rest[..len]).into_owned();
        (status, headers, body)
    })
}

fn parse_until_close(raw: &[u8]) -> Result<Parsed, String> {
    let (status, headers, start) = parse_head(raw)
        .ok_or_else(|| format!("no HTTP response in {:?}", String::from_utf8_lossy(raw)))?;
    let body = String::from_utf8_lossy(&raw[start..]).into_owned();
    Ok((status, headers, body))
}

/// A complete chunked body, or None while chunks are missing.
fn dechunk(mut rest: &[u8]) -> Option<String> {
    let mut body = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some(String::from_utf8_lossy(&body).into_owned());
        }
        if rest.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}
