//! Key references: a record's `key` field naming a private key held by a
//! PKCS#11 module instead of carrying the key itself
//! (`engine:pkcs11:pkcs11:token=dyncert;object=k1`).
//!
//! A record is untrusted input, and a reference makes OpenSSL load code
//! (an engine) and talk to a device, so what a record may name is the
//! operator's choice (`dyncert_key_references`, off by default) and is
//! narrowed further here: the engine is always `pkcs11`, the URI is an
//! RFC 7512 `pkcs11:` URI of bounded length, in a conservative character
//! set, with only the attributes that select a token and an object (and
//! `pin-value`). Attributes that would make the engine load another
//! module or read a file (`module-path`, `module-name`, `pin-source`) are
//! refused. This module decides; `ossl_engine` loads.

#![forbid(unsafe_code)]

/// What `dyncert_key_references` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyRefMode {
    /// Records must carry their key; a reference is refused.
    #[default]
    Off,
    /// `engine:pkcs11:<pkcs11 URI>` through OpenSSL's pkcs11 engine.
    Engine,
}

/// `dyncert_key_references` as configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyRefConfig {
    pub mode: KeyRefMode,
    /// The PKCS#11 module the engine loads (its `MODULE_PATH` control);
    /// `None`: the engine's default (p11-kit's proxy module).
    pub module: Option<String>,
}

/// The one engine a record may name.
pub const ENGINE_ID: &str = "pkcs11";
/// Prefix of an accepted reference; the PKCS#11 URI follows.
pub const ENGINE_PREFIX: &str = "engine:pkcs11:";
/// Longest accepted PKCS#11 URI (a token and object label, an id and a PIN
/// take a few hundred bytes).
pub const MAX_URI_BYTES: usize = 1024;

/// A validated reference: the PKCS#11 URI handed to the engine.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRef {
    uri: String,
}

impl KeyRef {
    pub fn uri(&self) -> &str {
        &self.uri
    }
}

impl std::fmt::Debug for KeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URI may carry a PIN (`pin-value`).
        f.debug_struct("KeyRef").finish_non_exhaustive()
    }
}

/// Why a key reference is refused before anything is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefError {
    /// `dyncert_key_references off` (the default).
    Disabled,
    /// An engine other than pkcs11, a path, or another scheme.
    NotAllowed,
    /// A provider or `store:` URI: not available in this build.
    Provider,
    /// Longer than [`MAX_URI_BYTES`].
    TooLong,
    /// Not an RFC 7512 URI in the accepted subset, or an attribute that is
    /// not allowed (`module-path`, `pin-source`, ...), or no object named.
    Malformed,
}

impl RefError {
    /// For the log line; never shows the URI (it may carry a PIN).
    pub fn as_str(&self) -> &'static str {
        match self {
            RefError::Disabled => {
                "field \"key\" is a key reference and dyncert_key_references is off"
            }
            RefError::NotAllowed => {
                "field \"key\" is a key reference other than engine:pkcs11:pkcs11:..."
            }
            RefError::Provider => {
                "field \"key\" is a provider key reference, not available in this build \
                 (use engine:pkcs11:pkcs11:...)"
            }
            RefError::TooLong => "field \"key\" holds a key reference longer than 1024 bytes",
            RefError::Malformed => {
                "field \"key\" holds a malformed or disallowed PKCS#11 URI \
                 (allowed: token, object, id and similar path attributes, pin-value)"
            }
        }
    }
}

/// Attributes of the URI's path that select a token, slot or object
/// (RFC 7512 section 2.3).
const PATH_ATTRS: [&str; 13] = [
    "token",
    "manufacturer",
    "serial",
    "model",
    "library-manufacturer",
    "library-description",
    "library-version",
    "object",
    "id",
    "type",
    "slot-id",
    "slot-description",
    "slot-manufacturer",
];
/// Query attributes: the PIN only (`pin-source` reads a file,
/// `module-name`/`module-path` load a library).
const QUERY_ATTRS: [&str; 1] = ["pin-value"];

/// True when a `key` field is meant as a reference rather than key
/// material: one line of printable ASCII that starts with a URI scheme
/// (`engine:`, `pkcs11:`, `file:`, ...) or looks like a path. PEM never
/// does (it starts with `-----BEGIN`), so ordinary keys are unaffected.
pub fn is_reference(key: &[u8]) -> bool {
    let key = key.trim_ascii();
    if key.is_empty() || key.starts_with(b"-----") {
        return false;
    }
    let one_line = key.iter().all(|&b| (0x20..0x7f).contains(&b));
    if !one_line {
        return false;
    }
    if matches!(key[0], b'/' | b'.' | b'~') {
        return true;
    }
    let scheme_len = key
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))
        .unwrap_or(key.len());
    key[0].is_ascii_alphabetic() && key.get(scheme_len) == Some(&b':')
}

/// The reference in a record's `key` field, if it is one and `mode`
/// allows it: `Ok(None)` for key material (parsed as before), `Ok(Some)`
/// for an accepted reference, `Err` for a reference that must not be
/// loaded.
pub fn parse(key: &[u8], mode: KeyRefMode) -> Result<Option<KeyRef>, RefError> {
    if !is_reference(key) {
        return Ok(None);
    }
    if mode == KeyRefMode::Off {
        return Err(RefError::Disabled);
    }
    // Printable ASCII, checked by is_reference.
    let text = std::str::from_utf8(key.trim_ascii()).map_err(|_| RefError::Malformed)?;
    let Some(uri) = text.strip_prefix(ENGINE_PREFIX) else {
        let lower = text.to_ascii_lowercase();
        return Err(
            if ["store:", "pkcs11:", "provider:"]
                .iter()
                .any(|p| lower.starts_with(p))
            {
                RefError::Provider
            } else {
                RefError::NotAllowed
            },
        );
    };
    if uri.len() > MAX_URI_BYTES {
        return Err(RefError::TooLong);
    }
    check_pkcs11_uri(uri)?;
    Ok(Some(KeyRef {
        uri: uri.to_owned(),
    }))
}

/// An RFC 7512 URI in the accepted subset: `pkcs11:` then `;`-separated
/// path attributes from [`PATH_ATTRS`] (at least `object` or `id`), then
/// optionally `?` and `&`-separated [`QUERY_ATTRS`]; each attribute once,
/// each value non-empty, in [`value_ok`]'s characters.
fn check_pkcs11_uri(uri: &str) -> Result<(), RefError> {
    let rest = uri.strip_prefix("pkcs11:").ok_or(RefError::NotAllowed)?;
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let mut attrs: Vec<(&str, &[&str])> = path.split(';').map(|a| (a, &PATH_ATTRS[..])).collect();
    if let Some(q) = query {
        attrs.extend(q.split('&').map(|a| (a, &QUERY_ATTRS[..])));
    }
    let mut seen: Vec<&str> = Vec::new();
    for (attr, allowed) in attrs {
        let (name, value) = attr.split_once('=').ok_or(RefError::Malformed)?;
        if !allowed.contains(&name) || seen.contains(&name) || !value_ok(value) {
            return Err(RefError::Malformed);
        }
        seen.push(name);
    }
    if !seen.iter().any(|n| matches!(*n, "object" | "id")) {
        return Err(RefError::Malformed);
    }
    Ok(())
}

/// A non-empty attribute value of RFC 7512 unreserved characters,
/// percent-encodings and a few harmless sub-delimiters; no separators,
/// quotes, spaces, backslashes or NULs.
fn value_ok(v: &str) -> bool {
    let b = v.as_bytes();
    if b.is_empty() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
                i += 3;
                continue;
            }
            c if c.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' | b':' | b'@' | b'!' | b'$' | b'(' | b')' | b'*' | b'+'
            | b',' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// `dyncert_key_references off | engine [module=/path/to/module.so]`.
/// `provider` is named so the error says why it is not available.
pub fn directive(args: &[&[u8]]) -> Result<KeyRefConfig, (String, Option<String>)> {
    let shown = |a: &[u8]| String::from_utf8_lossy(a).into_owned();
    let (first, rest) = args.split_first().ok_or((String::new(), None))?;
    match *first {
        b"off" => {
            if let Some(a) = rest.first() {
                return Err((shown(a), Some("\"off\" takes no parameters".into())));
            }
            Ok(KeyRefConfig::default())
        }
        b"engine" => {
            let mut module = None;
            for a in rest {
                let Some(path) = a.strip_prefix(b"module=") else {
                    return Err((shown(a), None));
                };
                if module.is_some() {
                    return Err((shown(a), Some("\"module=\" is duplicate".into())));
                }
                let path = std::str::from_utf8(path)
                    .ok()
                    .filter(|p| p.starts_with('/') && !p.contains('\0'))
                    .ok_or_else(|| {
                        (
                            shown(a),
                            Some("the PKCS#11 module must be an absolute path".into()),
                        )
                    })?;
                module = Some(path.to_owned());
            }
            Ok(KeyRefConfig {
                mode: KeyRefMode::Engine,
                module,
            })
        }
        b"provider" => Err((
            shown(first),
            Some(
                "provider key references need OpenSSL 3.5 and pkcs11-provider, \
                 which this build does not support; use \"engine\""
                    .into(),
            ),
        )),
        _ => Err((shown(first), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] = b"engine:pkcs11:pkcs11:token=dyncert;object=k1?pin-value=1234";

    #[test]
    fn pem_and_der_keys_are_not_references() {
        assert!(!is_reference(b"-----BEGIN PRIVATE KEY-----\nMIG...\n"));
        assert!(!is_reference(b"  \n-----BEGIN EC PRIVATE KEY-----\n"));
        assert!(!is_reference(&[0x30, 0x81, 0x87, 0x02, 0x01, 0x00]));
        assert!(!is_reference(b""));
        assert!(!is_reference(b"junk"));
        for mode in [KeyRefMode::Off, KeyRefMode::Engine] {
            assert_eq!(parse(b"-----BEGIN PRIVATE KEY-----\n", mode), Ok(None));
        }
    }

    #[test]
    fn references_and_paths_are_recognised() {
        for r in [
            &b"engine:pkcs11:pkcs11:object=k1"[..],
            b"pkcs11:object=k1",
            b"store:pkcs11:object=k1",
            b"file:/etc/ssl/private/key.pem",
            b"/etc/ssl/private/key.pem",
            b"../key.pem",
            b"engine:dynamic:/tmp/evil.so",
            b"  engine:pkcs11:pkcs11:object=k1\n",
        ] {
            assert!(is_reference(r), "{}", String::from_utf8_lossy(r));
        }
    }

    #[test]
    fn with_references_off_every_reference_is_refused() {
        assert_eq!(parse(OK, KeyRefMode::Off), Err(RefError::Disabled));
        assert_eq!(
            parse(b"/etc/ssl/private/key.pem", KeyRefMode::Off),
            Err(RefError::Disabled)
        );
    }

    #[test]
    fn engine_mode_accepts_a_pkcs11_engine_uri() {
        let r = parse(OK, KeyRefMode::Engine).unwrap().unwrap();
        assert_eq!(r.uri(), "pkcs11:token=dyncert;object=k1?pin-value=1234");
        let r = parse(b"engine:pkcs11:pkcs11:id=%01\n", KeyRefMode::Engine)
            .unwrap()
            .unwrap();
        assert_eq!(r.uri(), "pkcs11:id=%01");
        assert!(
            !format!("{r:?}").contains("pkcs11:"),
            "no URI (PIN) in Debug"
        );
    }

    #[test]
    fn engine_mode_refuses_other_engines_paths_and_schemes() {
        for r in [
            &b"engine:dynamic:/tmp/evil.so"[..],
            b"engine:pkcs11x:pkcs11:object=k1",
            b"engine:PKCS11:pkcs11:object=k1",
            b"engine:/usr/lib/x.so:pkcs11:object=k1",
            b"/etc/ssl/private/key.pem",
            b"file:/etc/ssl/private/key.pem",
            b"./key.pem",
        ] {
            assert_eq!(
                parse(r, KeyRefMode::Engine),
                Err(RefError::NotAllowed),
                "{}",
                String::from_utf8_lossy(r)
            );
        }
        for r in [&b"pkcs11:object=k1"[..], b"store:pkcs11:object=k1"] {
            assert_eq!(parse(r, KeyRefMode::Engine), Err(RefError::Provider));
        }
    }

    #[test]
    fn engine_mode_refuses_malformed_or_dangerous_uris() {
        for r in [
            &b"engine:pkcs11:pkcs11:"[..],
            b"engine:pkcs11:pkcs11:token=dyncert",
            b"engine:pkcs11:pkcs11:object=",
            b"engine:pkcs11:pkcs11:object=k1;object=k2",
            b"engine:pkcs11:pkcs11:object=k 1",
            b"engine:pkcs11:pkcs11:object=k1\"",
            b"engine:pkcs11:pkcs11:object=k1%0",
            b"engine:pkcs11:pkcs11:object=k1%zz",
            b"engine:pkcs11:pkcs11:object=k1;bogus=1",
            b"engine:pkcs11:pkcs11:object=k1?module-path=/tmp/evil.so",
            b"engine:pkcs11:pkcs11:object=k1?module-name=evil",
            b"engine:pkcs11:pkcs11:object=k1?pin-source=file:/etc/shadow",
            b"engine:pkcs11:pkcs11:object=k1?pin-value=1&pin-value=2",
            b"engine:pkcs11:pkcs11:object=k1?object=k2",
            b"engine:pkcs11:pkcs11:object=k1\\",
        ] {
            assert_eq!(
                parse(r, KeyRefMode::Engine),
                Err(RefError::Malformed),
                "{}",
                String::from_utf8_lossy(r)
            );
        }
        // Not a reference at all (control characters): key material that
        // fails to parse as PEM later.
        assert_eq!(
            parse(b"engine:pkcs11:pkcs11:object=k1\x00", KeyRefMode::Engine),
            Ok(None)
        );
        assert_eq!(
            parse(b"engine:pkcs11:pkcs11:object=k1\nx", KeyRefMode::Engine),
            Ok(None)
        );
    }

    #[test]
    fn uri_length_is_bounded() {
        let mut long = b"engine:pkcs11:pkcs11:object=".to_vec();
        long.resize(ENGINE_PREFIX.len() + MAX_URI_BYTES, b'a');
        assert!(parse(&long, KeyRefMode::Engine).unwrap().is_some());
        long.push(b'a');
        assert_eq!(parse(&long, KeyRefMode::Engine), Err(RefError::TooLong));
    }

    #[test]
    fn directive_values() {
        let d = |a: &[&str]| directive(&a.iter().map(|s| s.as_bytes()).collect::<Vec<_>>());
        assert_eq!(d(&["off"]), Ok(KeyRefConfig::default()));
        assert_eq!(
            d(&["engine"]),
            Ok(KeyRefConfig {
                mode: KeyRefMode::Engine,
                module: None
            })
        );
        assert_eq!(
            d(&["engine", "module=/usr/lib/softhsm/libsofthsm2.so"]),
            Ok(KeyRefConfig {
                mode: KeyRefMode::Engine,
                module: Some("/usr/lib/softhsm/libsofthsm2.so".into())
            })
        );
        assert!(d(&["engine", "module=libsofthsm2.so"]).is_err());
        assert!(d(&["engine", "module=/a.so", "module=/b.so"]).is_err());
        assert!(d(&["engine", "pin=1234"]).is_err());
        assert!(d(&["off", "module=/a.so"]).is_err());
        assert!(d(&["on"]).is_err());
        let (shown, reason) = d(&["provider"]).unwrap_err();
        assert_eq!(shown, "provider");
        assert!(reason.unwrap().contains("OpenSSL 3.5"));
    }
}
