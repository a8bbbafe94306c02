//! Key references: a record's `key` field naming a private key held by a
//! PKCS#11 module instead of carrying the key itself
//! (`engine:pkcs11:pkcs11:token=dyncert;object=k1`).
//!
//! A record is untrusted input, and a reference makes OpenSSL load code
//! (an engine) and talk to a device, so what a record may name is the
//! operator's choice (`dyncert_key_references`, off by default) and is
//! narrowed further here: the engine is always `pkcs11`, the URI is an
//! RFC 7512 `pkcs11:` URI of bounded length, in a conservative character
//! set, with only the attributes that select a token and an object. No
//! query attributes: `module-path`/`module-name` would make the engine
//! load another library, `pin-source` read a file, and `pin-value` puts a
//! PIN in Redis and, through libp11's messages, in the error log, while it
//! protects nothing (a worker's token login is shared by all its keys).
//! The PIN is the operator's (`dyncert_key_references engine
//! pin_file=...`). This module decides; `ossl_engine` loads.

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
#[derive(Clone, PartialEq, Eq, Default)]
pub struct KeyRefConfig {
    pub mode: KeyRefMode,
    /// The PKCS#11 module the engine loads (its `MODULE_PATH` control);
    /// `None`: the engine's default (p11-kit's proxy module).
    pub module: Option<String>,
    /// `pin_file=`: the file the shell reads the token's user PIN from.
    pub pin_file: Option<String>,
    /// The PIN read from `pin_file` (the engine's `PIN` control). Never
    /// shown by Debug.
    pub pin: Option<String>,
}

impl std::fmt::Debug for KeyRefConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRefConfig")
            .field("mode", &self.mode)
            .field("module", &self.module)
            .field("pin_file", &self.pin_file)
            .field("pin", &self.pin.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Longest PIN read from `pin_file`.
pub const MAX_PIN_BYTES: usize = 256;

/// The PIN in the contents of a `pin_file`: one line of printable ASCII
/// (a trailing newline is dropped), 1 to [`MAX_PIN_BYTES`] bytes.
pub fn pin_of(contents: &[u8]) -> Option<String> {
    let line = contents.strip_suffix(b"\n").unwrap_or(contents);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    (!line.is_empty() && line.len() <= MAX_PIN_BYTES && line.iter().all(u8::is_ascii_graphic))
        .then(|| String::from_utf8_lossy(line).into_owned())
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
                "field \"key\" holds a key reference with a malformed or disallowed PKCS#11 URI \
                 (allowed: token, object, id and similar path attributes; no query such as a PIN)"
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
/// path attributes from [`PATH_ATTRS`] (at least `object` or `id`), no
/// query; each attribute once, each value non-empty, in [`value_ok`]'s
/// characters.
fn check_pkcs11_uri(uri: &str) -> Result<(), RefError> {
    let rest = uri.strip_prefix("pkcs11:").ok_or(RefError::NotAllowed)?;
    let mut seen: Vec<&str> = Vec::new();
    for attr in rest.split(';') {
        let (name, value) = attr.split_once('=').ok_or(RefError::Malformed)?;
        if !PATH_ATTRS.contains(&name) || seen.contains(&name) || !value_ok(value) {
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

/// Longest a record's parse waits for the PKCS#11 module to load the key
/// the record names. The default `dyncert_fetch_timeout`: a load that takes
/// longer serves no connection that waits for it, a healthy token answers
/// in milliseconds (a network HSM's first login and object listing in well
/// under a second), and a record parsed behind a hung load waits this long
/// once, not for as long as the token hangs.
pub const LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// What a key load asked for now may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadAdmission {
    /// Hand it to the loader thread and wait at most [`LOAD_TIMEOUT`].
    Go,
    /// The token has not answered a load for the bound: refuse at once,
    /// so no parse waits behind it again and no loads pile up.
    Stuck,
}

/// The one load the loader thread runs at a time, as the waiting side
/// sees it: when it started, and whether a waiter gave up on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadGate {
    running: Option<Running>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Running {
    since: std::time::Instant,
    given_up: bool,
}

impl LoadGate {
    /// Whether a load may be handed to the loader thread at `now`: not
    /// while the running one has outlived `bound` or a waiter gave up on it
    /// (a load still within the bound is queued behind: a healthy token
    /// answers it soon after).
    pub fn admit(&self, now: std::time::Instant, bound: std::time::Duration) -> LoadAdmission {
        match self.running {
            Some(r) if r.given_up || now.saturating_duration_since(r.since) >= bound => {
                LoadAdmission::Stuck
            }
            _ => LoadAdmission::Go,
        }
    }

    /// The loader thread starts a load.
    pub fn started(&mut self, now: std::time::Instant) {
        self.running = Some(Running {
            since: now,
            given_up: false,
        });
    }

    /// The loader thread's load returned (its result may be discarded):
    /// the token answers again.
    pub fn finished(&mut self) {
        self.running = None;
    }

    /// A waiter stopped waiting after the bound: the load running now (its
    /// own, or one it was queued behind) has not answered for that long.
    pub fn gave_up(&mut self) {
        if let Some(r) = &mut self.running {
            r.given_up = true;
        }
    }
}

/// `dyncert_key_references off | engine [module=/path/to/module.so]
/// [pin_file=/path/to/pin]`.
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
            let mut c = KeyRefConfig {
                mode: KeyRefMode::Engine,
                ..KeyRefConfig::default()
            };
            for a in rest {
                let (slot, path) = if let Some(p) = a.strip_prefix(b"module=") {
                    (&mut c.module, p)
                } else if let Some(p) = a.strip_prefix(b"pin_file=") {
                    (&mut c.pin_file, p)
                } else {
                    return Err((shown(a), None));
                };
                if slot.is_some() {
                    return Err((shown(a), Some("the parameter is duplicate".into())));
                }
                let path = std::str::from_utf8(path)
                    .ok()
                    .filter(|p| p.starts_with('/') && !p.contains('\0'))
                    .ok_or_else(|| (shown(a), Some("must be an absolute path".into())))?;
                *slot = Some(path.to_owned());
            }
            Ok(c)
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

    #[test]
    fn a_load_is_refused_at_once_while_the_token_has_not_answered_for_the_bound() {
        use std::time::{Duration, Instant};
        let b = LOAD_TIMEOUT;
        let t0 = Instant::now();
        let mut gate = LoadGate::default();
        assert_eq!(gate.admit(t0, b), LoadAdmission::Go);
        gate.started(t0);
        // A load within the bound: the next one queues behind it.
        assert_eq!(gate.admit(t0 + b / 2, b), LoadAdmission::Go);
        assert_eq!(gate.admit(t0 + b, b), LoadAdmission::Stuck);
        // A waiter gave up: stuck at once, even a moment before the bound
        // (the waiter began waiting before the load started).
        gate.gave_up();
        assert_eq!(
            gate.admit(t0 + b - Duration::from_millis(1), b),
            LoadAdmission::Stuck
        );
        assert_eq!(gate.admit(t0 + 100 * b, b), LoadAdmission::Stuck);
        // The hung load returned: the token answers again.
        gate.finished();
        assert_eq!(gate.admit(t0 + 100 * b, b), LoadAdmission::Go);
        // Giving up with nothing running (the load just returned) changes
        // nothing; a new load starts with a clean slate.
        gate.gave_up();
        assert_eq!(gate.admit(t0, b), LoadAdmission::Go);
        gate.started(t0 + 200 * b);
        assert_eq!(gate.admit(t0 + 200 * b, b), LoadAdmission::Go);
        // A clock that seems to go back never makes a load look stuck.
        assert_eq!(gate.admit(t0, b), LoadAdmission::Go);
    }

    const OK: &[u8] = b"engine:pkcs11:pkcs11:token=dyncert;object=k1";

    #[test]
    fn the_uris_the_readme_gives_for_cloud_hsms_are_accepted() {
        for uri in [
            // ACM for Nitro Enclaves (AWS's nginx example, without its
            // ?pin-value= query).
            &b"engine:pkcs11:pkcs11:model=p11ne-token;manufacturer=Amazon;token=nginx-acm-token;id=%01;object=acm-key;type=private"[..],
            // AWS CloudHSM, by label.
            b"engine:pkcs11:pkcs11:token=hsm1;object=shop",
        ] {
            assert!(
                matches!(parse(uri, KeyRefMode::Engine), Ok(Some(_))),
                "{}",
                String::from_utf8_lossy(uri)
            );
        }
        // ... and the documented example with its PIN query is refused.
        let with_pin = b"engine:pkcs11:pkcs11:token=nginx-acm-token;object=acm-key?pin-value=1234";
        assert!(parse(with_pin, KeyRefMode::Engine).is_err());
    }

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
        assert_eq!(r.uri(), "pkcs11:token=dyncert;object=k1");
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
            b"engine:pkcs11:pkcs11:object=k1?pin-value=1234",
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
    fn pin_files_hold_one_line_and_debug_hides_the_pin() {
        assert_eq!(pin_of(b"1234\n").as_deref(), Some("1234"));
        assert_eq!(pin_of(b"1234\r\n").as_deref(), Some("1234"));
        assert_eq!(pin_of(b"12 34"), None);
        assert_eq!(pin_of(b"1234\n5678\n"), None);
        assert_eq!(pin_of(b""), None);
        assert_eq!(pin_of(&[b'1'; MAX_PIN_BYTES + 1]), None);
        let c = KeyRefConfig {
            pin: Some("1234".into()),
            ..KeyRefConfig::default()
        };
        assert!(!format!("{c:?}").contains("1234"));
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
        let engine = KeyRefConfig {
            mode: KeyRefMode::Engine,
            ..KeyRefConfig::default()
        };
        assert_eq!(d(&["engine"]), Ok(engine.clone()));
        assert_eq!(
            d(&[
                "engine",
                "pin_file=/etc/nginx/hsm.pin",
                "module=/usr/lib/softhsm/libsofthsm2.so"
            ]),
            Ok(KeyRefConfig {
                module: Some("/usr/lib/softhsm/libsofthsm2.so".into()),
                pin_file: Some("/etc/nginx/hsm.pin".into()),
                ..engine
            })
        );
        assert!(d(&["engine", "pin_file=hsm.pin"]).is_err());
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
