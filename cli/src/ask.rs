//! The permission check of `dyncert run`'s on-demand issuance: the ask
//! endpoint's URL and verdict, the cap on ask calls per second and the
//! bounded memory of recent refusals that keep a flood of random SNI
//! names from reaching the endpoint (or the CA). Pure, tested without a
//! network; the shell does the one HTTP GET.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};

/// Where the ask endpoint is: plain HTTP (a local service; the name asked
/// about is public, the answer is one status code).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AskUrl {
    pub host: String,
    pub port: u16,
    /// Path and query, without the `domain` parameter.
    pub path: String,
}

impl AskUrl {
    pub fn parse(url: &str) -> Result<AskUrl, String> {
        let bad = |why: &str| format!("--ask \"{}\": {why}", url.escape_default());
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("an http:// URL is needed"))?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("invalid port"))?,
            ),
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty()
            || authority.contains('@')
            || path.contains('#')
            || !path.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(bad("invalid host or path"));
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        Ok(AskUrl {
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// The request target asking about `name` (a normalised host name:
    /// letters, digits, `-` and `.`, nothing to escape).
    pub fn target(&self, name: &str) -> String {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        format!("{}{sep}domain={name}", self.path)
    }
}

/// The verdict of the endpoint's status line: 2xx allows, anything else
/// (or no parseable line) refuses.
pub fn allowed(status_line: &str) -> bool {
    let mut parts = status_line.split_ascii_whitespace();
    matches!(
        (parts.next(), parts.next()),
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") && code.len() == 3 && code.starts_with('2')
            && code.bytes().all(|b| b.is_ascii_digit())
    )
}

/// A token bucket: `rate` ask calls per second, bursts of `rate`.
#[derive(Debug)]
pub struct RateLimit {
    rate: u32,
    tokens_milli: u64,
    last_ms: u64,
}

impl RateLimit {
    pub fn new(rate: u32, now_ms: u64) -> RateLimit {
        RateLimit {
            rate,
            tokens_milli: u64::from(rate) * 1000,
            last_ms: now_ms,
        }
    }

    /// Takes one call's token if there is one.
    pub fn take(&mut self, now_ms: u64) -> bool {
        let full = u64::from(self.rate) * 1000;
        let earned = now_ms.saturating_sub(self.last_ms) * u64::from(self.rate);
        self.tokens_milli = self.tokens_milli.saturating_add(earned).min(full);
        self.last_ms = self.last_ms.max(now_ms);
        if self.tokens_milli >= 1000 {
            self.tokens_milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// Names refused recently, each remembered for `ttl_ms`, at most
/// `capacity` of them (the oldest forgotten first).
#[derive(Debug)]
pub struct Refusals {
    capacity: usize,
    ttl_ms: u64,
    until: HashMap<String, u64>,
    order: VecDeque<(String, u64)>,
}

impl Refusals {
    pub fn new(capacity: usize, ttl_ms: u64) -> Refusals {
        Refusals {
            capacity: capacity.max(1),
            ttl_ms,
            until: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn remember(&mut self, name: &str, now_ms: u64) {
        self.expire(now_ms);
        let until = now_ms.saturating_add(self.ttl_ms);
        self.until.insert(name.to_owned(), until);
        self.order.push_back((name.to_owned(), until));
        while self.until.len() > self.capacity {
            self.pop_oldest();
        }
    }

    pub fn refused(&mut self, name: &str, now_ms: u64) -> bool {
        self.expire(now_ms);
        self.until.get(name).is_some_and(|t| now_ms < *t)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.until.len()
    }

    fn expire(&mut self, now_ms: u64) {
        while self.order.front().is_some_and(|(_, t)| *t <= now_ms) {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((name, t)) = self.order.pop_front() {
            // A name remembered again later has a newer entry behind.
            if self.until.get(&name) == Some(&t) {
                self.until.remove(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ask_urls_are_plain_http_with_the_domain_appended() {
        let u = AskUrl::parse("http://127.0.0.1:8080/allow").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 8080));
        assert_eq!(u.target("a.example"), "/allow?domain=a.example");
        let u = AskUrl::parse("http://ask.internal/check?tenant=7").unwrap();
        assert_eq!(u.port, 80);
        assert_eq!(u.target("a.example"), "/check?tenant=7&domain=a.example");
        let u = AskUrl::parse("http://[::1]:81").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 81));
        assert_eq!(u.target("b"), "/?domain=b");
        for bad in [
            "https://x/",
            "ftp://x",
            "http://",
            "http://:80/",
            "http://x:0/",
            "http://x:99999/",
            "http://u:p@x/",
            "http://x/a b",
            "http://x/#f",
        ] {
            assert!(AskUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_a_2xx_status_allows() {
        assert!(allowed("HTTP/1.1 200 OK"));
        assert!(allowed("HTTP/1.0 204"));
        for no in [
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 500",
            "HTTP/1.1 302 Found",
            "HTTP/1.1 2000",
            "HTTP/1.1 2x0",
            "",
            "garbage",
            "HTTP/2 200",
        ] {
            assert!(!allowed(no), "{no}");
        }
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_its_rate() {
        let mut r = RateLimit::new(10, 0);
        let burst = (0..100).filter(|_| r.take(0)).count();
        assert_eq!(burst, 10);
        assert!(!r.take(50), "half a token after 50 ms");
        assert!(r.take(100));
        assert!(!r.take(100));
        // A long pause refills to the burst, no more.
        let later = (0..100).filter(|_| r.take(60_000)).count();
        assert_eq!(later, 10);
        // Time going backwards earns nothing.
        assert!(!r.take(1_000));
    }

    #[test]
    fn refusals_are_remembered_for_their_ttl_and_bounded() {
        let mut f = Refusals::new(3, 1_000);
        f.remember("a", 0);
        assert!(f.refused("a", 999));
        assert!(!f.refused("a", 1_000));
        assert_eq!(f.len(), 0);
        for (i, n) in ["a", "b", "c", "d"].iter().enumerate() {
            f.remember(n, i as u64);
        }
        assert_eq!(f.len(), 3);
        assert!(!f.refused("a", 10), "the oldest went first");
        assert!(f.refused("d", 10));
        // Remembered again: the newer time holds.
        f.remember("b", 500);
        f.remember("e", 501);
        assert!(f.refused("b", 1_400));
        assert!(!f.refused("c", 1_400));
    }
}
