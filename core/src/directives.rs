//! Values of dyncert's directives, checked at configuration time so that a
//! mistake fails `nginx -t`. Times, sizes and numbers follow nginx's own
//! syntax and limits (the rules of `ngx_parse_time`, `ngx_parse_size` and
//! `ngx_atoi` in nginx's src/core/ngx_parse.c and ngx_string.c), so `10m`
//! or `64k` mean here what they mean in every other nginx directive. The
//! shell hands each argument over as bytes, then stores the value or
//! reports the error in nginx's form; whether a directive is a duplicate
//! is the shell's business (it owns the configuration structures).

use std::fmt;

use crate::cache::CachePolicy;
use crate::cidr::Cidr;
use crate::clock::Millis;
use crate::fetch::{check_redis_url, redact_redis_url};
use crate::on_demand::{Stream, MAXLEN_DEFAULT, MAXLEN_MAX};
use crate::template::UrlTemplate;
use crate::tokenbucket::RATE_MAX;

/// A directive argument nginx refuses, shown as `invalid parameter
/// "<argument>"`, followed by the reason when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidParameter {
    /// The argument as the message shows it (a Redis URL has its
    /// password hidden).
    pub shown: String,
    pub reason: Option<String>,
}

impl InvalidParameter {
    fn of(arg: &[u8]) -> InvalidParameter {
        InvalidParameter {
            shown: String::from_utf8_lossy(arg).into_owned(),
            reason: None,
        }
    }

    fn because(shown: String, reason: String) -> InvalidParameter {
        InvalidParameter {
            shown,
            reason: Some(reason),
        }
    }
}

impl fmt::Display for InvalidParameter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid parameter \"{}\"", self.shown)?;
        if let Some(reason) = &self.reason {
            write!(f, ": {reason}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidParameter {}

type Result<T> = std::result::Result<T, InvalidParameter>;

// ---- defaults shared by the module and the `dyncert` CLI ----

/// Default prefix of the Redis key holding a name's record
/// (`dyncert_redis_prefix`).
pub const DEFAULT_PREFIX: &str = "dyncert:cert:";
/// Default pub/sub channel for invalidations (`dyncert_invalidate_channel`).
pub const DEFAULT_INVALIDATE_CHANNEL: &str = "dyncert:invalidate";
/// Default sorted set of names by notAfter (`dyncert_expiry_index`).
pub const DEFAULT_EXPIRY_INDEX: &str = "dyncert:expiry";
/// Default key prefix of ACME HTTP-01 key authorizations
/// (`dyncert_acme_prefix`).
pub const DEFAULT_ACME_PREFIX: &str = "dyncert:acme:";

// ---- nginx's value syntax ----

/// `NGX_MAX_INT_T_VALUE` and `NGX_MAX_SIZE_T_VALUE`: both are the largest
/// signed pointer-sized integer.
const NGX_MAX_INT: isize = isize::MAX;

/// Decimal digits, nothing else (no sign, no spaces), at most
/// `NGX_MAX_INT_T_VALUE`: `ngx_atoi`'s rules (and `ngx_atosz`'s, which
/// has the same bound on the platforms nginx supports).
pub fn parse_number(v: &[u8]) -> Option<usize> {
    if v.is_empty() {
        return None;
    }
    let (cutoff, cutlim) = (NGX_MAX_INT / 10, NGX_MAX_INT % 10);
    let mut value: isize = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        let digit = (b - b'0') as isize;
        if value >= cutoff && (value > cutoff || digit > cutlim) {
            return None;
        }
        value = value * 10 + digit;
    }
    usize::try_from(value).ok()
}

/// A size in bytes: a number, optionally followed by `k`/`K` (KiB) or
/// `m`/`M` (MiB), as `ngx_parse_size` reads it. (nginx's `ngx_parse_size`
/// has no `g` suffix; only `ngx_parse_offset` does.)
pub fn parse_size(v: &[u8]) -> Option<usize> {
    let (digits, scale) = match v.last()? {
        b'k' | b'K' => (&v[..v.len() - 1], 1024),
        b'm' | b'M' => (&v[..v.len() - 1], 1024 * 1024),
        _ => (v, 1),
    };
    let size = parse_number(digits)?;
    if size > NGX_MAX_INT as usize / scale {
        return None;
    }
    Some(size * scale)
}

/// A time in milliseconds, as `ngx_parse_time(v, 0)` reads it: numbers
/// each followed by a unit, largest unit first, each unit at most once
/// (`1h 30m`, `90s`, `500ms`); `w` (weeks), `d`, `h`, `m`, `s`, `ms`; a
/// bare number counts seconds. Millisecond times take no `M` (months) and
/// no `y` (years): nginx refuses them there.
pub fn parse_time_ms(v: &[u8]) -> Option<Millis> {
    // The steps of ngx_parse_time, in order; a unit may only follow a
    // larger one. A millisecond time starts at Month, so `M` and `y` are
    // already out of order.
    #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Step {
        Month,
        Week,
        Day,
        Hour,
        Min,
        Sec,
        Msec,
        Last,
    }
    let mut step = Step::Month;
    let mut valid = false;
    let mut value: isize = 0;
    let mut total: isize = 0;
    let (cutoff, cutlim) = (NGX_MAX_INT / 10, NGX_MAX_INT % 10);
    let mut i = 0;
    while i < v.len() {
        let c = v[i];
        i += 1;
        if c.is_ascii_digit() {
            let digit = (c - b'0') as isize;
            if value >= cutoff && (value > cutoff || digit > cutlim) {
                return None;
            }
            value = value * 10 + digit;
            valid = true;
            continue;
        }
        let (next, seconds): (Step, isize) = match c {
            b'w' => (Step::Week, 60 * 60 * 24 * 7),
            b'd' => (Step::Day, 60 * 60 * 24),
            b'h' => (Step::Hour, 60 * 60),
            b'm' if v.get(i) == Some(&b's') => {
                i += 1;
                (Step::Msec, 0)
            }
            b'm' => (Step::Min, 60),
            b's' => (Step::Sec, 1),
            // A space after a bare number ends it as seconds; only
            // spaces may follow.
            b' ' if step < Step::Sec => (Step::Last, 1),
            _ => return None,
        };
        if next <= step && next != Step::Last {
            return None;
        }
        step = next;
        let (scale, max) = if step == Step::Msec {
            (1, NGX_MAX_INT)
        } else {
            (seconds * 1000, NGX_MAX_INT / seconds / 1000)
        };
        if value > max {
            return None;
        }
        value *= scale;
        if total > NGX_MAX_INT - value {
            return None;
        }
        total += value;
        value = 0;
        while v.get(i) == Some(&b' ') {
            i += 1;
        }
    }
    if !valid {
        return None;
    }
    if value > NGX_MAX_INT / 1000 {
        return None;
    }
    value *= 1000;
    if total > NGX_MAX_INT - value {
        return None;
    }
    Millis::try_from(total + value).ok()
}

// ---- directives ----

/// Smallest `dyncert_cache max_size=` other than 0 (no byte bound): room
/// for the heaviest entry a record makes (two chains of at most
/// [`crate::record::MAX_CRT_BYTES`] of PEM each, whose DER is smaller,
/// plus the entry's overhead). A certificate is only ever served from the
/// worker's cache, so an entry the bound cannot hold would never be served.
pub const MIN_CACHE_BYTES: usize = 256 * 1024;

/// `dyncert_cache max=N max_size=SIZE valid=TIME stale=TIME negative=TIME
/// negative_max=N`: any of them, in any order, each over the default.
/// `max` is at least 1 and `max_size` 0 or at least [`MIN_CACHE_BYTES`]:
/// a handshake gets its certificate out of the cache, so a cache that
/// holds none would serve the default to every name.
pub fn cache(args: &[&[u8]]) -> Result<CachePolicy> {
    /// Bound on `max=` and `negative_max=`: far above any real cache, and
    /// low enough that a typo cannot ask for all the memory there is.
    const MAX_ENTRIES: usize = 10_000_000;
    let mut policy = CachePolicy::default();
    for &arg in args {
        let invalid = || InvalidParameter::of(arg);
        let eq = arg.iter().position(|&b| b == b'=').ok_or_else(invalid)?;
        let (key, value) = (&arg[..eq], &arg[eq + 1..]);
        let entries = || {
            parse_number(value)
                .filter(|&n| n <= MAX_ENTRIES)
                .ok_or_else(invalid)
        };
        let time = || parse_time_ms(value).ok_or_else(invalid);
        let shown = || String::from_utf8_lossy(arg).into_owned();
        match key {
            b"max" => {
                policy.max_entries = entries()?;
                if policy.max_entries == 0 {
                    return Err(InvalidParameter::because(
                        shown(),
                        "a handshake gets its certificate from the worker's cache, so it must \
                         hold at least one (with dyncert_shared_zone a small max is enough)"
                            .into(),
                    ));
                }
            }
            b"negative_max" => policy.negative_max = entries()?,
            b"max_size" => {
                policy.max_bytes = parse_size(value).ok_or_else(invalid)?;
                if (1..MIN_CACHE_BYTES).contains(&policy.max_bytes) {
                    return Err(InvalidParameter::because(
                        shown(),
                        format!(
                            "must be 0 (no byte bound) or at least {}k, the most one \
                             certificate entry can weigh",
                            MIN_CACHE_BYTES / 1024
                        ),
                    ));
                }
            }
            b"valid" => policy.valid = time()?,
            b"stale" => policy.stale = time()?,
            b"negative" => policy.negative = time()?,
            _ => return Err(invalid()),
        }
    }
    Ok(policy)
}

/// `dyncert_fetch_timeout`, `dyncert_redis_timeout`,
/// `dyncert_api_timeout`: a time of at least a millisecond.
pub fn timeout(v: &[u8]) -> Result<Millis> {
    parse_time_ms(v)
        .filter(|&ms| ms >= 1)
        .ok_or_else(|| InvalidParameter::of(v))
}

/// Smallest `dyncert_shared_zone` size: room for the slab allocator's own
/// pages and a useful number of records.
pub const MIN_SHARED_ZONE: usize = 128 * 1024;

/// `dyncert_shared_zone NAME:SIZE`: a zone name (1 to 64 bytes of printable
/// ASCII without `:` or spaces) and its size in nginx's size syntax, at
/// least [`MIN_SHARED_ZONE`].
pub fn shared_zone(v: &[u8]) -> Result<(String, usize)> {
    let bad = || {
        InvalidParameter::because(
            String::from_utf8_lossy(v).into_owned(),
            format!(
                "expected NAME:SIZE with SIZE of at least {}k",
                MIN_SHARED_ZONE / 1024
            ),
        )
    };
    let colon = v.iter().rposition(|&b| b == b':').ok_or_else(bad)?;
    let (name, size) = (&v[..colon], &v[colon + 1..]);
    if name.is_empty()
        || name.len() > 64
        || !name.iter().all(|&b| b.is_ascii_graphic() && b != b':')
    {
        return Err(bad());
    }
    let size = parse_size(size)
        .filter(|&s| s >= MIN_SHARED_ZONE)
        .ok_or_else(bad)?;
    Ok((String::from_utf8_lossy(name).into_owned(), size))
}

/// `dyncert_fetch_concurrency N`: 1 to 100,000 lookups in flight.
pub fn fetch_concurrency(v: &[u8]) -> Result<usize> {
    parse_number(v)
        .filter(|n| (1..=100_000).contains(n))
        .ok_or_else(|| InvalidParameter::of(v))
}

/// `dyncert_rsa_max_bits N`: the most bits of an RSA key a record may
/// hold, 2048 (every RSA key served has at least that many) to 16384
/// (past what the 16 KiB `key` field holds).
pub fn rsa_max_bits(v: &[u8]) -> Result<u32> {
    use crate::validate::{RSA_MAX_BITS_CEILING, RSA_MIN_BITS};
    parse_number(v)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| (RSA_MIN_BITS..=RSA_MAX_BITS_CEILING).contains(n))
        .ok_or_else(|| {
            InvalidParameter::because(
                String::from_utf8_lossy(v).into_owned(),
                format!(
                    "dyncert_rsa_max_bits takes {RSA_MIN_BITS} to {RSA_MAX_BITS_CEILING} \
                     (bits of an RSA modulus)"
                ),
            )
        })
}

/// `dyncert_key_references off | engine [module=PATH]` (see
/// [`crate::keyref::directive`], which also has its tests).
pub fn key_references(args: &[&[u8]]) -> Result<crate::keyref::KeyRefConfig> {
    crate::keyref::directive(args).map_err(|(shown, reason)| InvalidParameter { shown, reason })
}

/// `dyncert_key_encryption optional|required`.
pub fn key_encryption(v: &[u8]) -> Result<crate::keywrap::KeyEncryption> {
    use crate::keywrap::KeyEncryption;
    match v {
        b"optional" => Ok(KeyEncryption::Optional),
        b"required" => Ok(KeyEncryption::Required),
        _ => Err(InvalidParameter::of(v)),
    }
}

/// The id of `dyncert_key_decryption_key ID FILE`: 1 to 64 characters of
/// `[A-Za-z0-9_.-]`, the characters an envelope's id may have.
pub fn key_id(v: &[u8]) -> Result<String> {
    if !crate::keywrap::valid_id(v) {
        return Err(InvalidParameter::because(
            String::from_utf8_lossy(v).into_owned(),
            "a key id is 1 to 64 characters of A-Z a-z 0-9 _ . -".into(),
        ));
    }
    Ok(String::from_utf8_lossy(v).into_owned())
}

/// Most bytes read from a key file: the longest accepted form is 64 hex
/// digits and a CRLF, so anything longer is refused without being read
/// (a key file naming a device must not hang `nginx -t`).
pub const MAX_KEY_FILE_BYTES: u64 = 128;

/// Whether the file of `dyncert_key_decryption_key ID FILE` may be read,
/// from its metadata: a regular file (not a FIFO or device, which could
/// block the read) that not everyone may read.
pub fn key_file_metadata(is_file: bool, mode: u32) -> std::result::Result<(), String> {
    if !is_file {
        return Err("is not a regular file".into());
    }
    if crate::keywrap::world_readable(mode) {
        return Err(format!(
            "is readable by everyone (mode {:o}); chmod o-r it",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// The key of `dyncert_key_decryption_key ID FILE`, given the file's
/// permission bits and (at most [`MAX_KEY_FILE_BYTES`] + 1 bytes of) its
/// contents, read by the shell: refused when anyone may read the file,
/// or it does not hold exactly one AES-256 key
/// ([`crate::keywrap::key_of_file`]). The error is the reason, never the
/// contents.
pub fn key_file(
    mode: u32,
    contents: &[u8],
) -> std::result::Result<[u8; crate::keywrap::KEY_LEN], String> {
    key_file_metadata(true, mode)?;
    crate::keywrap::key_of_file(contents).map_err(str::to_owned)
}

/// `dyncert_redis_prefix`, `dyncert_acme_prefix`: the prefix becomes part
/// of every key, so printable ASCII without spaces, at most 128 bytes.
pub fn key_prefix(v: &[u8]) -> Result<String> {
    if v.len() > 128 || !v.iter().all(u8::is_ascii_graphic) {
        return Err(InvalidParameter::of(v));
    }
    Ok(String::from_utf8_lossy(v).into_owned())
}

/// `dyncert_invalidate_channel NAME|off`: `None` for `off`; a name is 1
/// to 128 bytes of printable ASCII without spaces.
pub fn invalidate_channel(v: &[u8]) -> Result<Option<String>> {
    key_or_off(v)
}

/// `dyncert_expiry_index KEY|off`: `None` for `off`; a key is 1 to 128
/// bytes of printable ASCII without spaces, like a channel name.
pub fn expiry_index(v: &[u8]) -> Result<Option<String>> {
    key_or_off(v)
}

/// A Redis key or channel name, or `off`.
fn key_or_off(v: &[u8]) -> Result<Option<String>> {
    if v == b"off" {
        return Ok(None);
    }
    if v.is_empty() || v.len() > 128 || !v.iter().all(u8::is_ascii_graphic) {
        return Err(InvalidParameter::of(v));
    }
    Ok(Some(String::from_utf8_lossy(v).into_owned()))
}

/// `dyncert_deny_status CODE`: a 4xx or 5xx status.
pub fn deny_status(v: &[u8]) -> Result<u16> {
    parse_number(v)
        .filter(|n| (400..=599).contains(n))
        .map(|n| n as u16)
        .ok_or_else(|| InvalidParameter::of(v))
}

/// `dyncert`, `dyncert_tenant_policy`, `dyncert_acme_challenge`:
/// `on|off`.
/// `dyncert_session_ticket_rotate TIME [keep=N];`: the rotation period
/// (at least 1s) and how many previous keys still decrypt (0 to 8).
pub fn ticket_rotate(args: &[&[u8]]) -> Result<(Millis, usize)> {
    use crate::tickets::{DEFAULT_KEEP, MAX_KEEP, MIN_ROTATE_MS};
    let (&period, rest) = args
        .split_first()
        .ok_or_else(|| InvalidParameter::of(b""))?;
    let ms = parse_time_ms(period)
        .filter(|&ms| ms >= MIN_ROTATE_MS)
        .ok_or_else(|| {
            InvalidParameter::because(
                String::from_utf8_lossy(period).into_owned(),
                "the rotation period is at least 1s".into(),
            )
        })?;
    let mut keep = DEFAULT_KEEP;
    for &arg in rest {
        keep = arg
            .strip_prefix(b"keep=")
            .and_then(parse_number)
            .filter(|&n| n <= MAX_KEEP)
            .ok_or_else(|| {
                InvalidParameter::because(
                    String::from_utf8_lossy(arg).into_owned(),
                    format!("keep= is 0 to {MAX_KEEP}"),
                )
            })?;
    }
    Ok((ms, keep))
}

pub fn flag(v: &[u8]) -> Result<bool> {
    match v {
        b"on" => Ok(true),
        b"off" => Ok(false),
        _ => Err(InvalidParameter::of(v)),
    }
}

/// `dyncert_unknown default|reject`: whether unknown names are rejected.
pub fn rejects_unknown(v: &[u8]) -> Result<bool> {
    match v {
        b"default" => Ok(false),
        b"reject" => Ok(true),
        _ => Err(InvalidParameter::of(v)),
    }
}

/// `dyncert_redis URL`: a URL the Redis client accepts. The error shows
/// the URL with its password hidden.
pub fn redis_url(v: &[u8]) -> Result<String> {
    let url = String::from_utf8_lossy(v).into_owned();
    match check_redis_url(&url) {
        Ok(()) => Ok(url),
        Err(e) => Err(InvalidParameter::because(redact_redis_url(&url), e)),
    }
}

/// `dyncert_redis_tls_certificate CERT KEY`: the client certificate's
/// chain and its key (read by the shell from the files) must parse, the
/// key must be unencrypted and match the leaf. The key comes back as
/// PKCS#8 PEM, the form the TLS client takes (a SEC1 or PKCS#1 key file
/// works too). Errors never show key material.
pub fn redis_client_certificate(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> std::result::Result<(Vec<u8>, Vec<u8>), String> {
    let chain = openssl::x509::X509::stack_from_pem(cert_pem)
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or("no PEM certificate in the certificate file")?;
    let key = openssl::pkey::PKey::private_key_from_pem_callback(key_pem, |_| Ok(0))
        .map_err(|_| "no unencrypted PEM private key in the key file")?;
    let matches = chain[0]
        .public_key()
        .map(|p| p.public_eq(&key))
        .unwrap_or(false);
    if !matches {
        return Err("the key does not match the certificate".to_owned());
    }
    let pkcs8 = key
        .private_key_to_pem_pkcs8()
        .map_err(|_| "the key cannot be converted to PKCS#8")?;
    Ok((cert_pem.to_vec(), pkcs8))
}

/// The cross-directive rule of the `dyncert_redis_tls_*` directives: they
/// need a TLS URL in `dyncert_redis` (`rediss://`), and are refused with
/// `clusters://`, whose nodes the redis crate connects to with the
/// system's trust store only (native-tls).
pub fn check_redis_tls(url: &str, directive: &str) -> std::result::Result<(), String> {
    use crate::topology::Topology;
    match Topology::parse(url) {
        Ok(Topology::Single { tls: true, .. }) => Ok(()),
        Ok(Topology::Cluster { tls: true, .. }) => Err(format!(
            "\"{directive}\" is not supported with a \"clusters://\" URL in \"dyncert_redis\": \
             cluster nodes are verified with the system's trust store"
        )),
        _ => Err(format!(
            "\"{directive}\" is set but \"dyncert_redis\" is not a \"rediss://\" URL"
        )),
    }
}

/// `dyncert_api URL [writeback=TIME] [rate=N]`: the URL template
/// (checked), the write-back TTL if given (`0` turns write-back off), and
/// the most API requests per second each worker makes, if capped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Api {
    pub template: String,
    pub writeback: Option<Millis>,
    /// 1 to [`RATE_MAX`]; `None`: no cap.
    pub rate: Option<u32>,
}

/// Parses the arguments of `dyncert_api` (at least the URL: nginx checks
/// the count).
pub fn api(args: &[&[u8]]) -> Result<Api> {
    let Some((&url, params)) = args.split_first() else {
        return Err(InvalidParameter::of(b""));
    };
    let template = String::from_utf8_lossy(url).into_owned();
    if let Err(e) = UrlTemplate::parse(&template) {
        return Err(InvalidParameter::because(template, e));
    }
    let mut writeback = None;
    let mut rate = None;
    for &p in params {
        if let Some(v) = p.strip_prefix(b"rate=") {
            // No `0` for "off": leaving `rate=` out is.
            match parse_number(v).and_then(|n| u32::try_from(n).ok()) {
                Some(n) if (1..=RATE_MAX).contains(&n) => rate = Some(n),
                _ => {
                    return Err(InvalidParameter::because(
                        String::from_utf8_lossy(p).into_owned(),
                        format!(
                            "expected rate=N with N from 1 to {RATE_MAX} (requests per second)"
                        ),
                    ))
                }
            }
            continue;
        }
        match p.strip_prefix(b"writeback=").and_then(parse_time_ms) {
            Some(ms) => writeback = Some(ms),
            None => return Err(InvalidParameter::of(p)),
        }
    }
    Ok(Api {
        template,
        writeback,
        rate,
    })
}

/// `dyncert_on_demand_stream KEY [maxlen=N]`: the stream's key (1 to 128
/// bytes of printable ASCII without spaces) and its bound, 1 to
/// [`MAXLEN_MAX`] entries ([`MAXLEN_DEFAULT`] when not given).
pub fn on_demand_stream(args: &[&[u8]]) -> Result<Stream> {
    let Some((&key, params)) = args.split_first() else {
        return Err(InvalidParameter::because(
            String::new(),
            "a stream key is required".into(),
        ));
    };
    // No `off` here (the switch is dyncert_on_demand), and no `maxlen=`
    // where the key belongs.
    let key = match key_or_off(key) {
        Ok(Some(k)) if !key.contains(&b'=') => k,
        _ => return Err(InvalidParameter::of(key)),
    };
    let mut maxlen = MAXLEN_DEFAULT;
    for &p in params {
        match p.strip_prefix(b"maxlen=").and_then(parse_number) {
            Some(n) if (1..=MAXLEN_MAX).contains(&n) => maxlen = n,
            _ => {
                return Err(InvalidParameter::because(
                    String::from_utf8_lossy(p).into_owned(),
                    format!("expected maxlen=N with N from 1 to {MAXLEN_MAX}"),
                ))
            }
        }
    }
    Ok(Stream { key, maxlen })
}

/// Most networks one `dyncert_allow` list holds (beyond: the argument
/// that crossed the bound is refused).
pub const MAX_ALLOW: usize = 100_000;

/// One argument of `dyncert_allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowArg<'a> {
    /// `all`: every IPv4 and IPv6 address.
    All,
    /// `env=VAR`: a comma-separated list read from the environment, by
    /// the shell, which knows when the environment may be read.
    Env(&'a str),
    /// An address or a CIDR.
    Network(Cidr),
}

impl AllowArg<'_> {
    /// The networks `all` stands for.
    pub fn all() -> [Cidr; 2] {
        [
            Cidr::parse("0.0.0.0/0").expect("literal"),
            Cidr::parse("::/0").expect("literal"),
        ]
    }
}

/// Reads one `dyncert_allow` argument; the error is the CIDR parser's
/// reason, which names the argument.
pub fn allow_arg(text: &str) -> std::result::Result<AllowArg<'_>, String> {
    if text == "all" {
        return Ok(AllowArg::All);
    }
    if let Some(var) = text.strip_prefix("env=") {
        return Ok(AllowArg::Env(var));
    }
    Cidr::parse(text).map(AllowArg::Network)
}

/// `dyncert_api_trusted_certificate FILE`: whether the file's content
/// holds at least one PEM certificate.
pub fn has_pem_certificate(pem: &[u8]) -> bool {
    openssl::x509::X509::stack_from_pem(pem).is_ok_and(|certs| !certs.is_empty())
}

#[cfg(test)]
mod tests {

    #[test]
    fn shared_zone_is_a_name_and_a_size() {
        assert_eq!(
            shared_zone(b"dyncert:256m").unwrap(),
            ("dyncert".into(), 256 << 20)
        );
        assert_eq!(shared_zone(b"z:128k").unwrap(), ("z".into(), 128 << 10));
        for bad in [
            &b"dyncert"[..],
            b":1m",
            b"z:",
            b"z:64k",
            b"z:1x",
            b"a b:1m",
            b"z:-1m",
        ] {
            let e = shared_zone(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid parameter \""), "{e}");
            assert!(e.contains("NAME:SIZE"), "{e}");
        }
    }

    use super::*;

    const SECOND: Millis = 1_000;
    const MINUTE: Millis = 60 * SECOND;
    const HOUR: Millis = 60 * MINUTE;
    const DAY: Millis = 24 * HOUR;

    #[test]
    fn numbers_are_plain_decimal_digits_within_nginx_bounds() {
        assert_eq!(parse_number(b"0"), Some(0));
        assert_eq!(parse_number(b"0064"), Some(64));
        assert_eq!(
            parse_number(b"9223372036854775807"),
            Some(9_223_372_036_854_775_807)
        );
        for bad in [
            &b""[..],
            b"9223372036854775808",
            b"99999999999999999999",
            b"-1",
            b"+1",
            b" 1",
            b"1 ",
            b"1k",
            b"abc",
            b"1.5",
        ] {
            assert_eq!(
                parse_number(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn sizes_take_k_and_m_in_either_case() {
        assert_eq!(parse_size(b"0"), Some(0));
        assert_eq!(parse_size(b"512"), Some(512));
        assert_eq!(parse_size(b"64k"), Some(64 * 1024));
        assert_eq!(parse_size(b"64K"), Some(64 * 1024));
        assert_eq!(parse_size(b"64m"), Some(64 * 1024 * 1024));
        assert_eq!(parse_size(b"2M"), Some(2 * 1024 * 1024));
        assert_eq!(
            parse_size(b"8796093022207m"),
            Some(8_796_093_022_207 * 1024 * 1024)
        );
        for bad in [
            &b""[..],
            b"k",
            b"m",
            b"1g",
            b"1G",
            b"1kb",
            b"1 k",
            b"lots",
            b"-1",
            b"8796093022208m",
            b"9007199254740992k",
        ] {
            assert_eq!(parse_size(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn times_take_nginx_units_largest_first() {
        let cases: &[(&[u8], Millis)] = &[
            (b"0", 0),
            (b"30", 30 * SECOND),
            (b"30s", 30 * SECOND),
            (b"500ms", 500),
            (b"10m", 10 * MINUTE),
            (b"1h", HOUR),
            (b"2d", 2 * DAY),
            (b"1w", 7 * DAY),
            (b"1h30m", HOUR + 30 * MINUTE),
            (b"1h 30m", HOUR + 30 * MINUTE),
            (b"1h  30m 5s 20ms", HOUR + 30 * MINUTE + 5 * SECOND + 20),
            (
                b"1w2d3h4m5s6ms",
                9 * DAY + 3 * HOUR + 4 * MINUTE + 5 * SECOND + 6,
            ),
            // A unit may follow no number at all.
            (b"1hs", HOUR),
            // A bare number after units counts seconds.
            (b"1m30", MINUTE + 30 * SECOND),
            // A space ends a bare number (as seconds); numbers may still
            // follow, units may not.
            (b"10 ", 10 * SECOND),
            (b"10 5", 15 * SECOND),
        ];
        for &(text, ms) in cases {
            assert_eq!(
                parse_time_ms(text),
                Some(ms),
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn times_out_of_order_or_unknown_are_refused() {
        for bad in [
            &b""[..],
            b"s",
            b"ms",
            b" ",
            b"soon",
            b"never",
            b"forever",
            b"1x",
            b"-1s",
            b"1.5s",
            // Months and years are not millisecond units in nginx.
            b"1M",
            b"1y",
            // Each unit once, largest first.
            b"30m1h",
            b"1s1s",
            b"1ms1s",
            b"5ms5ms",
            b"1m1m",
            b"10 5s",
            b"10 5 ",
        ] {
            assert_eq!(
                parse_time_ms(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Spaces after a unit are skipped.
        assert_eq!(parse_time_ms(b"1s "), Some(SECOND));
        assert_eq!(parse_time_ms(b"1h 30m "), Some(HOUR + 30 * MINUTE));
        assert_eq!(parse_time_ms(b"1s 2"), Some(3 * SECOND));
    }

    #[test]
    fn times_that_overflow_are_refused() {
        // isize::MAX ms is 9223372036854775 s and 807 ms.
        assert_eq!(
            parse_time_ms(b"9223372036854775807ms"),
            Some(9_223_372_036_854_775_807)
        );
        assert_eq!(parse_time_ms(b"9223372036854775808ms"), None);
        assert_eq!(
            parse_time_ms(b"9223372036854775s"),
            Some(9_223_372_036_854_775_000)
        );
        assert_eq!(parse_time_ms(b"9223372036854776s"), None);
        assert_eq!(parse_time_ms(b"9223372036854776"), None);
        assert_eq!(
            parse_time_ms(b"15250284452w"),
            Some(15_250_284_452 * 7 * DAY)
        );
        assert_eq!(parse_time_ms(b"15250284453w"), None);
        assert_eq!(
            parse_time_ms(b"9223372036854775s1ms"),
            Some(9_223_372_036_854_775_001)
        );
        assert_eq!(parse_time_ms(b"9223372036854775s808ms"), None);
    }

    fn text(e: InvalidParameter) -> String {
        e.to_string()
    }

    #[test]
    fn cache_parameters_override_the_defaults() {
        let p = cache(&[
            b"max=100",
            b"max_size=64m",
            b"valid=5m",
            b"stale=2h",
            b"negative=10s",
            b"negative_max=50000",
        ])
        .unwrap();
        assert_eq!(
            p,
            CachePolicy {
                max_entries: 100,
                max_bytes: 64 * 1024 * 1024,
                valid: 5 * MINUTE,
                stale: 2 * HOUR,
                negative: 10 * SECOND,
                negative_max: 50_000,
            }
        );
        assert_eq!(cache(&[]).unwrap(), CachePolicy::default());
        let p = cache(&[b"negative_max=0", b"max=1", b"max_size=0"]).unwrap();
        assert_eq!((p.max_entries, p.negative_max, p.max_bytes), (1, 0, 0));
        // A cache that can hold no certificate would serve none.
        let e = cache(&[b"max=0"]).unwrap_err();
        assert!(e.reason.unwrap().contains("at least one"));
        let e = cache(&[b"max_size=255k"]).unwrap_err();
        assert!(e.reason.unwrap().contains("at least 256k"));
        assert_eq!(
            cache(&[b"max_size=256k"]).unwrap().max_bytes,
            MIN_CACHE_BYTES
        );
        assert_eq!(
            cache(&[b"max=1", b"max=2"]).unwrap().max_entries,
            2,
            "the last one counts"
        );
        assert_eq!(cache(&[b"max=10000000"]).unwrap().max_entries, 10_000_000);
    }

    #[test]
    fn on_demand_stream_is_a_key_and_an_optional_maxlen() {
        let stream = |args: &[&str]| {
            let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
            on_demand_stream(&args)
        };
        assert_eq!(
            stream(&["dyncert:on-demand"]),
            Ok(Stream {
                key: crate::on_demand::STREAM_DEFAULT.into(),
                maxlen: MAXLEN_DEFAULT
            })
        );
        assert_eq!(stream(&["{t}:q", "maxlen=100"]).map(|s| s.maxlen), Ok(100));
        assert_eq!(
            stream(&["q", "maxlen=1000000"]).map(|s| s.maxlen),
            Ok(MAXLEN_MAX)
        );
        for bad in [
            &["q", "maxlen=0"][..],
            &["q", "maxlen=1000001"],
            &["q", "maxlen=99999999999999999999999"],
            &["q", "maxlen="],
            &["q", "maxlen=-1"],
            &["q", "size=10"],
            &["maxlen=10"],
            &["off"],
            &[""],
            &["two words"],
            &[],
        ] {
            assert!(stream(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            text(stream(&["q", "maxlen=0"]).unwrap_err()),
            "invalid parameter \"maxlen=0\": expected maxlen=N with N from 1 to 1000000"
        );
    }

    #[test]
    fn cache_errors_name_the_whole_parameter() {
        for bad in [
            "max=abc",
            "max=",
            "max=-1",
            "max=10000001",
            "negative_max=abc",
            "negative_max=-1",
            "negative_max=",
            "negative_max=10000001",
            "max_size=lots",
            "max_size=1g",
            "valid=soon",
            "stale=",
            "negative=1y",
            "colour=blue",
            "max",
            "=5",
            "Max=5",
        ] {
            assert_eq!(
                text(cache(&[b"max=10", bad.as_bytes()]).unwrap_err()),
                format!("invalid parameter \"{bad}\""),
            );
        }
    }

    #[test]
    fn timeouts_are_positive_times() {
        assert_eq!(timeout(b"2s"), Ok(2 * SECOND));
        assert_eq!(timeout(b"1ms"), Ok(1));
        assert_eq!(text(timeout(b"0").unwrap_err()), "invalid parameter \"0\"");
        assert_eq!(
            text(timeout(b"0ms").unwrap_err()),
            "invalid parameter \"0ms\""
        );
        assert_eq!(
            text(timeout(b"forever").unwrap_err()),
            "invalid parameter \"forever\""
        );
    }

    #[test]
    fn fetch_concurrency_is_one_to_a_hundred_thousand() {
        assert_eq!(fetch_concurrency(b"1"), Ok(1));
        assert_eq!(fetch_concurrency(b"64"), Ok(64));
        assert_eq!(fetch_concurrency(b"100000"), Ok(100_000));
        for bad in ["0", "100001", "many", "", "-5"] {
            assert_eq!(
                text(fetch_concurrency(bad.as_bytes()).unwrap_err()),
                format!("invalid parameter \"{bad}\"")
            );
        }
    }

    #[test]
    fn rsa_max_bits_is_2048_to_16384() {
        assert_eq!(rsa_max_bits(b"2048"), Ok(2048));
        assert_eq!(rsa_max_bits(b"4096"), Ok(4096));
        assert_eq!(rsa_max_bits(b"16384"), Ok(16384));
        for bad in [
            "2047",
            "1024",
            "16385",
            "4k",
            "",
            "-4096",
            "99999999999999999999",
        ] {
            assert_eq!(
                text(rsa_max_bits(bad.as_bytes()).unwrap_err()),
                format!(
                    "invalid parameter \"{bad}\": dyncert_rsa_max_bits takes 2048 to 16384 \
                     (bits of an RSA modulus)"
                )
            );
        }
    }

    #[test]
    fn key_prefixes_are_printable_ascii_without_spaces() {
        assert_eq!(key_prefix(b"dyncert:cert:").as_deref(), Ok("dyncert:cert:"));
        assert_eq!(key_prefix(b"{tenant}:").as_deref(), Ok("{tenant}:"));
        // nginx only passes an empty argument when it is quoted: no prefix.
        assert_eq!(key_prefix(b"").as_deref(), Ok(""));
        assert_eq!(key_prefix(&[b'a'; 128]).map(|p| p.len()), Ok(128));
        for bad in [&b"a b"[..], b"a\tb", b"caf\xc3\xa9:", b"a\nb", &[b'a'; 129]] {
            assert!(
                key_prefix(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            text(key_prefix(b"my prefix").unwrap_err()),
            "invalid parameter \"my prefix\""
        );
    }

    #[test]
    fn invalidate_channel_is_a_name_or_off() {
        assert_eq!(invalidate_channel(b"off"), Ok(None));
        assert_eq!(
            invalidate_channel(b"dyncert:invalidate"),
            Ok(Some("dyncert:invalidate".to_owned()))
        );
        for bad in [&b""[..], b"a b", &[b'c'; 129]] {
            assert!(invalidate_channel(bad).is_err());
        }
        assert_eq!(
            text(invalidate_channel(b"two words").unwrap_err()),
            "invalid parameter \"two words\""
        );
    }

    #[test]
    fn expiry_index_is_a_key_or_off() {
        assert_eq!(expiry_index(b"off"), Ok(None));
        assert_eq!(
            expiry_index(DEFAULT_EXPIRY_INDEX.as_bytes()),
            Ok(Some("dyncert:expiry".to_owned()))
        );
        assert_eq!(
            expiry_index(b"{tenant}:expiry"),
            Ok(Some("{tenant}:expiry".to_owned()))
        );
        for bad in [&b""[..], b"a b", b"caf\xc3\xa9", &[b'c'; 129]] {
            assert!(expiry_index(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            text(expiry_index(b"two words").unwrap_err()),
            "invalid parameter \"two words\""
        );
    }

    #[test]
    fn deny_status_is_a_client_or_server_error() {
        assert_eq!(deny_status(b"403"), Ok(403));
        assert_eq!(deny_status(b"400"), Ok(400));
        assert_eq!(deny_status(b"599"), Ok(599));
        for bad in ["399", "600", "200", "abc", "", "-403"] {
            assert_eq!(
                text(deny_status(bad.as_bytes()).unwrap_err()),
                format!("invalid parameter \"{bad}\"")
            );
        }
    }

    #[test]
    fn flags_and_the_unknown_action_take_their_two_words() {
        assert_eq!(flag(b"on"), Ok(true));
        assert_eq!(flag(b"off"), Ok(false));
        assert_eq!(
            text(flag(b"maybe").unwrap_err()),
            "invalid parameter \"maybe\""
        );
        assert!(flag(b"ON").is_err());
        assert_eq!(rejects_unknown(b"default"), Ok(false));
        assert_eq!(rejects_unknown(b"reject"), Ok(true));
        assert_eq!(
            text(rejects_unknown(b"whatever").unwrap_err()),
            "invalid parameter \"whatever\""
        );
    }

    #[test]
    fn redis_url_errors_never_show_the_password() {
        assert_eq!(
            redis_url(b"redis://127.0.0.1:6379/0").as_deref(),
            Ok("redis://127.0.0.1:6379/0")
        );
        assert_eq!(
            redis_url(b"redis://:s3cret@127.0.0.1:6379/0").as_deref(),
            Ok("redis://:s3cret@127.0.0.1:6379/0")
        );
        let e = redis_url(b"http://:s3cret@127.0.0.1:6379/0").unwrap_err();
        assert_eq!(e.shown, "http://:***@127.0.0.1:6379/0");
        assert!(e.reason.is_some());
        let shown = text(e);
        assert!(
            shown.starts_with("invalid parameter \"http://:***@127.0.0.1:6379/0\": "),
            "{shown}"
        );
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn api_takes_a_template_and_an_optional_writeback() {
        assert_eq!(
            api(&[b"http://127.0.0.1:8080/certs/{name}"]),
            Ok(Api {
                template: "http://127.0.0.1:8080/certs/{name}".into(),
                writeback: None,
                rate: None,
            })
        );
        assert_eq!(
            api(&[b"https://certs.internal/c/{name}", b"writeback=24h"])
                .unwrap()
                .writeback,
            Some(24 * HOUR)
        );
        assert_eq!(
            api(&[b"https://certs.internal/c/{name}", b"writeback=0"])
                .unwrap()
                .writeback,
            Some(0),
            "0 turns write-back off"
        );
    }

    #[test]
    fn api_takes_an_optional_rate_in_either_order_with_writeback() {
        let url: &[u8] = b"https://certs.internal/c/{name}";
        assert_eq!(api(&[url, b"rate=50"]).unwrap().rate, Some(50));
        assert_eq!(
            api(&[url, b"rate=5", b"writeback=1h"]),
            Ok(Api {
                template: "https://certs.internal/c/{name}".into(),
                writeback: Some(HOUR),
                rate: Some(5),
            })
        );
        assert_eq!(
            api(&[url, b"writeback=0", b"rate=1"]).unwrap(),
            Api {
                template: "https://certs.internal/c/{name}".into(),
                writeback: Some(0),
                rate: Some(1),
            }
        );
        assert_eq!(api(&[url, b"rate=100000"]).unwrap().rate, Some(100_000));
    }

    #[test]
    fn api_rate_out_of_range_or_not_a_number_is_refused_with_its_range() {
        for bad in [
            "rate=0",
            "rate=100001",
            "rate=x",
            "rate=",
            "rate=-1",
            "rate=5/s",
            "rate=99999999999999999999999",
        ] {
            assert_eq!(
                text(api(&[b"http://h/{name}", bad.as_bytes()]).unwrap_err()),
                format!(
                    "invalid parameter \"{bad}\": expected rate=N with N from 1 to 100000 \
                     (requests per second)"
                )
            );
        }
        // Not a prefix match on another word.
        assert_eq!(
            text(api(&[b"http://h/{name}", b"rates=5"]).unwrap_err()),
            "invalid parameter \"rates=5\""
        );
    }

    #[test]
    fn api_errors_name_the_url_with_its_reason_or_the_parameter() {
        let e = text(api(&[b"http://127.0.0.1:8080/certs/"]).unwrap_err());
        assert_eq!(
            e,
            "invalid parameter \"http://127.0.0.1:8080/certs/\": has no {name} placeholder"
        );
        let e = text(api(&[b"ftp://127.0.0.1/certs/{name}"]).unwrap_err());
        assert!(
            e.starts_with("invalid parameter \"ftp://127.0.0.1/certs/{name}\": "),
            "{e}"
        );
        for bad in ["writeback=soon", "writeback=", "writeback", "timeout=1s"] {
            assert_eq!(
                text(api(&[b"http://h/{name}", bad.as_bytes()]).unwrap_err()),
                format!("invalid parameter \"{bad}\"")
            );
        }
    }

    #[test]
    fn allow_arguments_are_all_an_environment_variable_or_a_network() {
        assert_eq!(allow_arg("all"), Ok(AllowArg::All));
        assert_eq!(allow_arg("env=ALLOW_IPS"), Ok(AllowArg::Env("ALLOW_IPS")));
        assert_eq!(
            allow_arg("10.0.0.0/8"),
            Ok(AllowArg::Network(Cidr::parse("10.0.0.0/8").unwrap()))
        );
        assert_eq!(
            allow_arg("2001:db8::1"),
            Ok(AllowArg::Network(Cidr::parse("2001:db8::1").unwrap()))
        );
        assert_eq!(
            allow_arg("10.0.0.1/8").unwrap_err(),
            "\"10.0.0.1/8\" has host bits set below /8"
        );
        assert!(allow_arg("ALL").is_err());
        let all = AllowArg::all();
        assert!(crate::cidr::matches(&all, "203.0.113.9".parse().unwrap()));
        assert!(crate::cidr::matches(&all, "2001:db8::9".parse().unwrap()));
    }

    #[test]
    fn redis_client_certificates_need_their_own_unencrypted_key() {
        use crate::validate::testpki;
        let key = testpki::key();
        let cert = testpki::pem(&testpki::leaf(&["client.example"], &key, -1, 30));
        let (c, k) = redis_client_certificate(&cert, &testpki::key_pem(&key)).unwrap();
        assert_eq!(c, cert);
        assert!(k.starts_with(b"-----BEGIN PRIVATE KEY-----"));
        let other = testpki::key();
        assert_eq!(
            redis_client_certificate(&cert, &testpki::key_pem(&other)).unwrap_err(),
            "the key does not match the certificate"
        );
        assert!(redis_client_certificate(b"", &testpki::key_pem(&key)).is_err());
        let encrypted = key
            .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_256_cbc(), b"pw")
            .unwrap();
        assert_eq!(
            redis_client_certificate(&cert, &encrypted).unwrap_err(),
            "no unencrypted PEM private key in the key file"
        );
    }

    #[test]
    fn redis_tls_directives_need_a_rediss_url() {
        let d = "dyncert_redis_tls_trusted_certificate";
        assert_eq!(check_redis_tls("rediss://u:p@h:6380/0", d), Ok(()));
        let e = check_redis_tls("redis://h:6379/0", d).unwrap_err();
        assert!(e.contains(d) && e.contains("dyncert_redis"), "{e}");
        assert!(check_redis_tls("sentinel://s1/m", d).is_err());
        assert!(check_redis_tls("clusters://n1:7000", d)
            .unwrap_err()
            .contains("not supported"));
    }

    #[test]
    fn redis_urls_of_every_topology_are_checked_and_never_echo_passwords() {
        assert!(redis_url(b"sentinel://s1:26379,s2:26379/mymaster/0").is_ok());
        assert!(redis_url(b"cluster://n1:7000,n2:7001").is_ok());
        let e = redis_url(b"cluster://u:s3cret@n1/2").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert!(e.to_string().contains("database 0"), "{e}");
        let e = redis_url(b"sentinel://u:s3cret@s1").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn trusted_certificate_files_must_hold_a_pem_certificate() {
        use crate::validate::testpki;
        let key = testpki::key();
        let cert = testpki::pem(&testpki::leaf(&["ca.example"], &key, -1, 30));
        assert!(has_pem_certificate(&cert));
        assert!(!has_pem_certificate(b""));
        assert!(!has_pem_certificate(b"not a certificate"));
        assert!(!has_pem_certificate(&testpki::key_pem(&key)));
    }

    #[test]
    fn key_encryption_values() {
        use crate::keywrap::KeyEncryption;
        assert_eq!(key_encryption(b"optional"), Ok(KeyEncryption::Optional));
        assert_eq!(key_encryption(b"required"), Ok(KeyEncryption::Required));
        assert!(key_encryption(b"on").is_err());
        assert!(key_encryption(b"Required").is_err());
    }

    #[test]
    fn key_ids_and_key_files() {
        assert_eq!(key_id(b"2026-12.a_1").as_deref(), Ok("2026-12.a_1"));
        for bad in [&b""[..], b"a:b", b"a b", b"k\xc3\xa9", &[b'a'; 65]] {
            assert!(key_id(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let hex = "ab".repeat(32);
        assert_eq!(key_file(0o100600, hex.as_bytes()), Ok([0xab; 32]));
        assert_eq!(key_file(0o640, &[1; 32]), Ok([1; 32]));
        let e = key_file(0o100644, hex.as_bytes()).unwrap_err();
        assert!(
            e.contains("readable by everyone") && e.contains("644"),
            "{e}"
        );
        let e = key_file(0o600, b"short\n").unwrap_err();
        assert!(e.contains("32 bytes"), "{e}");
        assert_eq!(
            key_file_metadata(false, 0o600),
            Err("is not a regular file".into())
        );
        assert_eq!(key_file_metadata(true, 0o100600), Ok(()));
        assert!(!key_file(0o600, b"secret-but-wrong-length")
            .unwrap_err()
            .contains("secret"));
    }

    #[test]
    fn ticket_rotation_takes_a_period_and_a_bounded_keep() {
        assert_eq!(ticket_rotate(&[b"12h"]).unwrap(), (12 * 3600 * 1000, 2));
        assert_eq!(ticket_rotate(&[b"3s", b"keep=1"]).unwrap(), (3000, 1));
        assert_eq!(ticket_rotate(&[b"1s", b"keep=0"]).unwrap(), (1000, 0));
        assert!(ticket_rotate(&[b"500ms"]).is_err());
        assert!(ticket_rotate(&[b"1h", b"keep=9"]).is_err());
        assert!(ticket_rotate(&[b"1h", b"keep="]).is_err());
        assert!(ticket_rotate(&[b"1h", b"max=2"]).is_err());
        assert!(ticket_rotate(&[b"x"]).is_err());
    }
}
