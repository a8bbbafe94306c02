//! The `dyncert_api` URL template, e.g.
//! `http://127.0.0.1:8080/certs/{name}`: checked and split once at
//! configuration time, so a lookup only joins prebuilt pieces around the
//! name.
//!
//! The name comes from an untrusted SNI. It is only ever substituted into
//! the path or query, never the scheme or authority, so no client can steer
//! the request to another host; and it is percent-encoded, so it cannot add
//! path segments or query parameters of its own.

/// A parsed `dyncert_api` URL template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    /// The literal text around each `{name}`; always one more piece than
    /// there are placeholders (at least two).
    pieces: Vec<String>,
    https: bool,
}

const PLACEHOLDER: &str = "{name}";

impl UrlTemplate {
    /// Accepts an `http://` or `https://` URL containing `{name}` once or
    /// more (every occurrence is replaced), in the path or query. Refuses
    /// other schemes, a missing `{name}`, `{name}` in the host, whitespace
    /// and control characters, other `{...}` placeholders, credentials in
    /// the URL (use `dyncert_api_header Authorization ...`) and fragments.
    /// The error text names the problem and fits nginx's
    /// `invalid parameter "..."` style after a colon.
    pub fn parse(s: &str) -> Result<UrlTemplate, String> {
        if s.is_empty() {
            return Err("is empty".into());
        }
        if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "contains {} (U+{:04X})",
                if c.is_whitespace() {
                    "whitespace"
                } else {
                    "a control character"
                },
                u32::from(c)
            ));
        }
        let (https, rest) = if let Some(rest) = strip_prefix_ignore_case(s, "https://") {
            (true, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(s, "http://") {
            (false, rest)
        } else {
            return Err("is not an http:// or https:// URL".into());
        };
        // WHATWG URL parsers read a backslash as '/' in http(s) URLs; refusing it
        // keeps this split and the client's parse in agreement.
        if rest.contains('\\') {
            return Err("contains a backslash".into());
        }
        let pieces: Vec<String> = s.split(PLACEHOLDER).map(str::to_owned).collect();
        if pieces.len() < 2 {
            return Err("has no {name} placeholder".into());
        }
        for piece in &pieces {
            if let Some(at) = piece.find(['{', '}']) {
                let tail = &piece[at..];
                let shown = match tail.find('}') {
                    Some(end) if tail.starts_with('{') => &tail[..=end],
                    _ => &tail[..1],
                };
                return Err(format!(
                    "has \"{shown}\" where only the {{name}} placeholder is allowed"
                ));
            }
        }
        // The authority ends at the first '/', '?' or '#' after the scheme.
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if authority.is_empty() {
            return Err("has no host".into());
        }
        if authority.contains(PLACEHOLDER) {
            return Err("has {name} in the host; put it in the path or query".into());
        }
        if authority.contains('@') {
            return Err(
                "has credentials in the URL; send them with dyncert_api_header Authorization"
                    .into(),
            );
        }
        if rest.contains('#') {
            return Err("has a fragment (\"#...\"), which is never sent".into());
        }
        let template = UrlTemplate { pieces, https };
        // A full parse of sample renderings catches a bad host or port now
        // rather than at the first lookup, and proves the name cannot move
        // the request to another host.
        let a = parse_url(&template.render("a.example"))?;
        let b = parse_url(&template.render("b.example"))?;
        let same_authority =
            (a.host_str(), a.port_or_known_default()) == (b.host_str(), b.port_or_known_default());
        let in_path_or_query =
            a.path().contains("a.example") || a.query().is_some_and(|q| q.contains("a.example"));
        if !same_authority {
            return Err("has {name} in the host; put it in the path or query".into());
        }
        if !in_path_or_query {
            return Err("loses {name} when the URL is normalised (\"..\" after it?)".into());
        }
        Ok(template)
    }

    /// Substitutes a normalised name (already validated: `[a-z0-9.-]`, and
    /// `*` as the left-most label of a wildcard name). Every byte outside
    /// the URL's unreserved set is percent-encoded, `*` as `%2A`, so even
    /// an unvalidated name could not add a path segment or a parameter.
    pub fn render(&self, name: &str) -> String {
        let encoded = percent_encode(name);
        let literal: usize = self.pieces.iter().map(String::len).sum();
        let mut url =
            String::with_capacity(literal + encoded.len() * (self.pieces.len().saturating_sub(1)));
        for (i, piece) in self.pieces.iter().enumerate() {
            if i > 0 {
                url.push_str(&encoded);
            }
            url.push_str(piece);
        }
        url
    }

    pub fn is_https(&self) -> bool {
        self.https
    }
}

fn parse_url(s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s).map_err(|e| format!("is not a valid URL: {e}"))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    Ok(url)
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// RFC 3986 §2.3 unreserved characters pass; every other byte becomes %XX.
fn percent_encode(name: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        UrlTemplate::parse(s).expect_err(s)
    }

    #[test]
    fn name_in_the_path_is_substituted() {
        let t = UrlTemplate::parse("http://127.0.0.1:8080/certs/{name}").unwrap();
        assert!(!t.is_https());
        assert_eq!(
            t.render("shop.example.com"),
            "http://127.0.0.1:8080/certs/shop.example.com"
        );
    }

    #[test]
    fn every_occurrence_is_substituted_including_the_query() {
        let t =
            UrlTemplate::parse("https://api.internal/v1/{name}/cert?domain={name}&x=1").unwrap();
        assert!(t.is_https());
        assert_eq!(
            t.render("a.example"),
            "https://api.internal/v1/a.example/cert?domain=a.example&x=1"
        );
    }

    #[test]
    fn placeholder_at_the_very_end_of_a_query_and_next_to_text() {
        let t = UrlTemplate::parse("http://h/c?n={name}").unwrap();
        assert_eq!(t.render("x.y"), "http://h/c?n=x.y");
        let t = UrlTemplate::parse("http://h/c/{name}.json").unwrap();
        assert_eq!(t.render("x.y"), "http://h/c/x.y.json");
    }

    #[test]
    fn wildcard_star_is_percent_encoded() {
        let t = UrlTemplate::parse("http://h/certs/{name}").unwrap();
        assert_eq!(t.render("*.example.com"), "http://h/certs/%2A.example.com");
    }

    #[test]
    fn characters_that_would_change_the_url_are_encoded() {
        let t = UrlTemplate::parse("http://h/certs/{name}").unwrap();
        assert_eq!(
            t.render("a/../b?c=d#e f%"),
            "http://h/certs/a%2F..%2Fb%3Fc%3Dd%23e%20f%25"
        );
        assert_eq!(t.render("é"), "http://h/certs/%C3%A9");
    }

    #[test]
    fn scheme_is_matched_case_insensitively() {
        assert!(UrlTemplate::parse("HTTPS://h/{name}").unwrap().is_https());
        assert!(!UrlTemplate::parse("Http://h/{name}").unwrap().is_https());
    }

    #[test]
    fn ipv6_host_and_port_are_accepted() {
        let t = UrlTemplate::parse("http://[::1]:8080/certs/{name}").unwrap();
        assert_eq!(t.render("a.b"), "http://[::1]:8080/certs/a.b");
    }

    #[test]
    fn missing_placeholder_is_named() {
        assert_eq!(err("http://h/certs/"), "has no {name} placeholder");
        assert_eq!(err("http://h/certs/{NAME}"), "has no {name} placeholder");
    }

    #[test]
    fn other_schemes_are_refused() {
        for s in [
            "ftp://h/{name}",
            "redis://h/{name}",
            "h/{name}",
            "//h/{name}",
        ] {
            assert_eq!(err(s), "is not an http:// or https:// URL", "{s}");
        }
    }

    #[test]
    fn other_placeholders_and_stray_braces_are_refused() {
        assert_eq!(
            err("http://h/{name}/{host}"),
            "has \"{host}\" where only the {name} placeholder is allowed"
        );
        assert_eq!(
            err("http://h/{name}}"),
            "has \"}\" where only the {name} placeholder is allowed"
        );
        assert_eq!(
            err("http://h/{{name}"),
            "has \"{\" where only the {name} placeholder is allowed"
        );
    }

    #[test]
    fn whitespace_and_control_characters_are_refused() {
        assert_eq!(err("http://h/ {name}"), "contains whitespace (U+0020)");
        assert_eq!(err("http://h/\t{name}"), "contains whitespace (U+0009)");
        assert_eq!(
            err("http://h/\u{1}{name}"),
            "contains a control character (U+0001)"
        );
    }

    #[test]
    fn name_in_the_host_is_refused() {
        for s in [
            "http://{name}/cert",
            "http://{name}.certs.internal/",
            "https://certs:{name}/x",
            "http://{name}?q",
        ] {
            assert_eq!(
                err(s),
                "has {name} in the host; put it in the path or query",
                "{s}"
            );
        }
    }

    #[test]
    fn credentials_and_fragments_are_refused() {
        assert!(err("http://user:secret@h/{name}").contains("credentials"));
        assert!(err("http://h/{name}#frag").contains("fragment"));
        assert!(err("http://h/c#{name}").contains("fragment"));
    }

    #[test]
    fn placeholder_removed_by_dot_segments_is_refused() {
        assert!(err("http://h/{name}/..").starts_with("loses {name}"));
    }

    #[test]
    fn empty_or_invalid_hosts_are_refused() {
        assert_eq!(err(""), "is empty");
        // A URL parser would take the name for the host here.
        assert_eq!(err("http:///{name}"), "has no host");
        assert_eq!(err("http://?{name}"), "has no host");
        assert_eq!(err("http://h\\{name}"), "contains a backslash");
        assert!(err("http://h:99999/{name}").starts_with("is not a valid URL"));
        assert!(err("http://:80/{name}").starts_with("is not a valid URL"));
    }
}
