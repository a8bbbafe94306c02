//! Configuration: the directive parsers, the main/server configuration
//! structures and their defaults and merges (unsafe: raw `ngx_conf_t`).

use core::ffi::{c_char, c_void};
use core::ptr::NonNull;
use std::time::Duration;

use dyncert_core::acme;
use dyncert_core::api::{check_header, ApiConfig, MAX_BODY};
use dyncert_core::cache::CachePolicy;
use dyncert_core::cidr::{self, Cidr};
use dyncert_core::fetch::{check_redis_url, redact_redis_url, FetcherConfig};
use dyncert_core::template::UrlTemplate;
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    ngx_atoi, ngx_command_t, ngx_conf_full_name, ngx_conf_t, ngx_msec_t, ngx_parse_size,
    ngx_parse_time, ngx_shm_zone_t, ngx_str_t, ngx_uint_t, NGX_ERROR, NGX_LOG_EMERG, NGX_OK,
};
use ngx::http::{Merge, MergeConfigError};
use ngx::ngx_conf_log_error;

/// Default prefix of the Redis key holding a name's record.
pub const DEFAULT_PREFIX: &str = "dyncert:cert:";
const DEFAULT_FETCH_TIMEOUT_MS: ngx_msec_t = 2000;
const DEFAULT_REDIS_TIMEOUT_MS: ngx_msec_t = 1000;
const DEFAULT_FETCH_CONCURRENCY: usize = 64;
const DEFAULT_API_TIMEOUT_MS: ngx_msec_t = 3000;
const DEFAULT_WRITEBACK_MS: ngx_msec_t = 24 * 3600 * 1000;
/// Default key prefix of ACME HTTP-01 key authorizations.
pub const DEFAULT_ACME_PREFIX: &str = "dyncert:acme:";
/// Default pub/sub channel for invalidations.
pub const DEFAULT_INVALIDATE_CHANNEL: &str = "dyncert:invalidate";

/// `http {}` level settings; `None` means "not set" until `init_main_conf`.
#[derive(Debug, Default)]
pub struct MainConf {
    pub redis_url: Option<String>,
    pub prefix: Option<String>,
    pub cache: Option<CachePolicy>,
    pub fetch_timeout: Option<ngx_msec_t>,
    pub redis_timeout: Option<ngx_msec_t>,
    pub fetch_concurrency: Option<usize>,
    /// `dyncert_api` URL template (validated) and its write-back TTL.
    pub api_template: Option<String>,
    pub api_writeback: Option<ngx_msec_t>,
    pub api_headers: Vec<(String, String)>,
    pub api_timeout: Option<ngx_msec_t>,
    /// PEM bundle read from `dyncert_api_trusted_certificate`.
    pub api_trusted_certificate: Option<Vec<u8>>,
    /// `Some(None)`: `dyncert_invalidate_channel off`.
    pub invalidate_channel: Option<Option<String>>,
    pub acme_prefix: Option<String>,
    /// Filled in postconfiguration: some server has `dyncert on`.
    pub enabled: bool,
    /// Some location has `dyncert_metrics`.
    pub metrics_used: bool,
    /// Filled in postconfiguration: this cycle's metrics zone, published to
    /// the process by init_module once the cycle is certain to be used.
    pub metrics_zone: Option<NonNull<ngx_shm_zone_t>>,
    /// Filled in postconfiguration: first server_name of each server block,
    /// in the order of `SrvConf::server_index` (metric labels).
    pub server_names: Vec<String>,
    /// Filled in postconfiguration: (family, port) of `ssl` listeners that
    /// lead to a server with `dyncert on`; their connections are peeked.
    pub ports: Vec<(i32, u16)>,
}

impl MainConf {
    pub fn fetch_timeout(&self) -> ngx_msec_t {
        self.fetch_timeout.unwrap_or(DEFAULT_FETCH_TIMEOUT_MS)
    }
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout.unwrap_or(DEFAULT_REDIS_TIMEOUT_MS) as u64)
    }
    pub fn prefix(&self) -> &str {
        self.prefix.as_deref().unwrap_or(DEFAULT_PREFIX)
    }
    pub fn cache(&self) -> CachePolicy {
        self.cache.unwrap_or_default()
    }
    pub fn fetch_concurrency(&self) -> usize {
        self.fetch_concurrency.unwrap_or(DEFAULT_FETCH_CONCURRENCY)
    }

    /// What the worker's fetcher needs (built in each worker).
    pub fn fetcher_config(&self) -> Result<FetcherConfig, String> {
        let api = match &self.api_template {
            Some(t) => Some(ApiConfig {
                template: UrlTemplate::parse(t)?,
                headers: self.api_headers.clone(),
                timeout: Duration::from_millis(
                    self.api_timeout.unwrap_or(DEFAULT_API_TIMEOUT_MS) as u64
                ),
                trusted_certificate: self.api_trusted_certificate.clone(),
                max_body: MAX_BODY,
            }),
            None => None,
        };
        let channel = match &self.invalidate_channel {
            Some(c) => c.clone(),
            None => Some(DEFAULT_INVALIDATE_CHANNEL.to_owned()),
        };
        Ok(FetcherConfig {
            redis_url: self.redis_url.clone(),
            prefix: self.prefix().to_owned(),
            redis_timeout: self.redis_timeout(),
            api,
            writeback: Duration::from_millis(
                self.api_writeback.unwrap_or(DEFAULT_WRITEBACK_MS) as u64
            ),
            invalidate_channel: channel,
            acme_prefix: self
                .acme_prefix
                .clone()
                .unwrap_or_else(|| DEFAULT_ACME_PREFIX.to_owned()),
            queue_cap: self.fetch_concurrency(),
            // The gate in acme_ffi admits at most this many reads at once.
            acme_queue_cap: acme::Limits::default().max_reads,
        })
    }
}

/// `server {}` level settings.
#[derive(Debug, Default)]
pub struct SrvConf {
    pub enable: Option<bool>,
    pub reject_unknown: Option<bool>,
    pub tenant_policy: Option<bool>,
    pub acme: Option<bool>,
    /// Position among the http block's servers (metrics), set in
    /// postconfiguration.
    pub server_index: usize,
    /// Mixed into the TLS session id context of connections that start on
    /// this server's SSL_CTX (tenant policy), set in postconfiguration.
    pub session_salt: [u8; 32],
}

impl SrvConf {
    pub fn enabled(&self) -> bool {
        self.enable.unwrap_or(false)
    }
    pub fn rejects_unknown(&self) -> bool {
        self.reject_unknown.unwrap_or(false)
    }
    pub fn tenant_policy(&self) -> bool {
        self.tenant_policy.unwrap_or(false)
    }
    pub fn acme(&self) -> bool {
        self.acme.unwrap_or(false)
    }
}

/// `location {}` level settings (also set at http/server level and
/// inherited, like nginx's `allow`).
#[derive(Debug, Default)]
pub struct LocConf {
    /// `dyncert_allow`: when set, only these client networks get through.
    pub allow: Option<Vec<Cidr>>,
    pub deny_status: Option<ngx_uint_t>,
}

impl LocConf {
    pub fn deny_status(&self) -> ngx_uint_t {
        self.deny_status.unwrap_or(403)
    }
}

impl Merge for LocConf {
    fn merge(&mut self, prev: &LocConf) -> Result<(), MergeConfigError> {
        // A level with its own dyncert_allow replaces the inherited list.
        if self.allow.is_none() {
            self.allow = prev.allow.clone();
        }
        self.deny_status = self.deny_status.or(prev.deny_status);
        Ok(())
    }
}

impl Merge for SrvConf {
    fn merge(&mut self, prev: &SrvConf) -> Result<(), MergeConfigError> {
        self.enable = self.enable.or(prev.enable).or(Some(false));
        self.reject_unknown = self.reject_unknown.or(prev.reject_unknown).or(Some(false));
        self.tenant_policy = self.tenant_policy.or(prev.tenant_policy).or(Some(false));
        self.acme = self.acme.or(prev.acme).or(Some(false));
        Ok(())
    }
}

/// The directive's arguments after its name.
///
/// # Safety
/// `cf` must be the `ngx_conf_t` nginx passed to a directive handler.
unsafe fn args<'a>(cf: *mut ngx_conf_t) -> &'a [ngx_str_t] {
    // SAFETY: during a directive handler cf->args is a non-empty array of
    // ngx_str_t (the directive name first) owned by the configuration pool.
    let a = unsafe { &*(*cf).args };
    let all = unsafe { core::slice::from_raw_parts(a.elts as *const ngx_str_t, a.nelts) };
    &all[1..]
}

fn as_bytes(s: &ngx_str_t) -> &[u8] {
    if s.len == 0 || s.data.is_null() {
        return &[];
    }
    // SAFETY: ngx_str_t from the configuration parser points to len bytes.
    unsafe { core::slice::from_raw_parts(s.data, s.len) }
}

fn as_str(s: &ngx_str_t) -> String {
    String::from_utf8_lossy(as_bytes(s)).into_owned()
}

fn parse_msec(v: &[u8]) -> Option<ngx_msec_t> {
    let mut s = ngx_str_t {
        len: v.len(),
        data: v.as_ptr() as *mut u8,
    };
    // SAFETY: ngx_parse_time only reads s.len bytes from s.data.
    let r = unsafe { ngx_parse_time(&mut s, 0) };
    if r == NGX_ERROR as isize {
        None
    } else {
        Some(r as ngx_msec_t)
    }
}

fn parse_bytes(v: &[u8]) -> Option<usize> {
    let mut s = ngx_str_t {
        len: v.len(),
        data: v.as_ptr() as *mut u8,
    };
    // SAFETY: ngx_parse_size only reads s.len bytes from s.data.
    let r = unsafe { ngx_parse_size(&mut s) };
    if r < 0 {
        None
    } else {
        Some(r as usize)
    }
}

fn parse_number(v: &[u8]) -> Option<usize> {
    // SAFETY: ngx_atoi only reads v.len() bytes.
    let r = unsafe { ngx_atoi(v.as_ptr() as *mut u8, v.len()) };
    if r < 0 {
        None
    } else {
        Some(r as usize)
    }
}

const DUPLICATE: *mut c_char = c"is duplicate".as_ptr() as *mut c_char;

macro_rules! invalid {
    ($cf:expr, $v:expr) => {{
        ngx_conf_log_error!(NGX_LOG_EMERG, $cf, "invalid parameter \"{}\"", $v);
        return NGX_CONF_ERROR;
    }};
}

/// Gets the main configuration that a main-level directive writes to.
///
/// # Safety
/// `conf` must be the pointer nginx passes for a NGX_HTTP_MAIN_CONF_OFFSET
/// directive of this module.
unsafe fn main_conf<'a>(conf: *mut c_void) -> &'a mut MainConf {
    // SAFETY: create_main_conf allocated a MainConf at this address.
    unsafe { &mut *(conf as *mut MainConf) }
}

/// # Safety
/// Called by nginx for `dyncert_redis URL;`.
pub unsafe extern "C" fn ngx_http_dyncert_redis(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let mcf = unsafe { main_conf(conf) };
    if mcf.redis_url.is_some() {
        return DUPLICATE;
    }
    let url = as_str(&unsafe { args(cf) }[0]);
    if let Err(e) = check_redis_url(&url) {
        // The URL may carry the Redis password: never echo it.
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "invalid parameter \"{}\": {}",
            redact_redis_url(&url),
            e
        );
        return NGX_CONF_ERROR;
    }
    mcf.redis_url = Some(url);
    NGX_CONF_OK
}

/// # Safety
/// Called by nginx for `dyncert_redis_prefix PREFIX;`.
pub unsafe extern "C" fn ngx_http_dyncert_redis_prefix(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let mcf = unsafe { main_conf(conf) };
    if mcf.prefix.is_some() {
        return DUPLICATE;
    }
    let v = as_bytes(&unsafe { args(cf) }[0]);
    // The prefix becomes part of every key: printable ASCII, no spaces.
    if v.len() > 128 || !v.iter().all(|b| b.is_ascii_graphic()) {
        invalid!(cf, String::from_utf8_lossy(v));
    }
    mcf.prefix = Some(String::from_utf8_lossy(v).into_owned());
    NGX_CONF_OK
}

/// # Safety
/// Called by nginx for `dyncert_cache max=N max_size=SIZE valid=T stale=T
/// negative=T negative_max=N;`.
pub unsafe extern "C" fn ngx_http_dyncert_cache(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let mcf = unsafe { main_conf(conf) };
    if mcf.cache.is_some() {
        return DUPLICATE;
    }
    let mut policy = CachePolicy::default();
    for a in unsafe { args(cf) } {
        let v = as_bytes(a);
        let text = String::from_utf8_lossy(v);
        let Some(eq) = v.iter().position(|&b| b == b'=') else {
            invalid!(cf, text);
        };
        let (k, val) = (&v[..eq], &v[eq + 1..]);
        match k {
            b"max" => match parse_number(val) {
                Some(n) if n <= 10_000_000 => policy.max_entries = n,
                _ => invalid!(cf, text),
            },
            b"negative_max" => match parse_number(val) {
                Some(n) if n <= 10_000_000 => policy.negative_max = n,
                _ => invalid!(cf, text),
            },
            b"max_size" => match parse_bytes(val) {
                Some(n) => policy.max_bytes = n,
                None => invalid!(cf, text),
            },
            b"valid" | b"stale" | b"negative" => {
                let Some(ms) = parse_msec(val) else {
                    invalid!(cf, text);
                };
                match k {
                    b"valid" => policy.valid = ms as u64,
                    b"stale" => policy.stale = ms as u64,
                    _ => policy.negative = ms as u64,
                }
            }
            _ => invalid!(cf, text),
        }
    }
    mcf.cache = Some(policy);
    NGX_CONF_OK
}

/// Shared parser for the time-valued main directives.
unsafe fn set_msec(
    cf: *mut ngx_conf_t,
    slot: &mut Option<ngx_msec_t>,
    min: ngx_msec_t,
) -> *mut c_char {
    if slot.is_some() {
        return DUPLICATE;
    }
    let a = &unsafe { args(cf) }[0];
    match parse_msec(as_bytes(a)) {
        Some(ms) if ms >= min => {
            *slot = Some(ms);
            NGX_CONF_OK
        }
        _ => invalid!(cf, as_str(a)),
    }
}

/// # Safety
/// Called by nginx for `dyncert_fetch_timeout TIME;`.
pub unsafe extern "C" fn ngx_http_dyncert_fetch_timeout(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let mcf = unsafe { main_conf(conf) };
    unsafe { set_msec(cf, &mut mcf.fetch_timeout, 1) }
}

/// # Safety
/// Called by nginx for `dyncert_redis_timeout TIME;`.
pub unsafe extern "C" fn ngx_http_dyncert_redis_timeout(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let mcf = unsafe { main_conf(conf) };
    unsafe { set_msec(cf, &mut mcf.redis_timeout, 1) }
}

/// # Safety
/// Called by nginx for `dyncert_fetch_concurrency N;`.
pub unsafe extern "C" fn ngx_http_dyncert_fetch_concurrency(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let mcf = unsafe { main_conf(conf) };
    if mcf.fetch_concurrency.is_some() {
        return DUPLICATE;
    }
    let a = &unsafe { args(cf) }[0];
    match parse_number(as_bytes(a)) {
        Some(n) if (1..=100_000).contains(&n) => {
            mcf.fetch_concurrency = Some(n);
            NGX_CONF_OK
        }
        _ => invalid!(cf, as_str(a)),
    }
}

/// # Safety
/// `conf` must be the SrvConf pointer nginx passes for a
/// NGX_HTTP_SRV_CONF_OFFSET directive of this module.
unsafe fn srv_conf<'a>(conf: *mut c_void) -> &'a mut SrvConf {
    // SAFETY: create_srv_conf allocated a SrvConf at this address.
    unsafe { &mut *(conf as *mut SrvConf) }
}

/// # Safety
/// Called by nginx for `dyncert on|off;`.
pub unsafe extern "C" fn ngx_http_dyncert(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let scf = unsafe { srv_conf(conf) };
    unsafe { set_srv_flag(cf, &mut scf.enable) }
}

/// # Safety
/// Called by nginx for `dyncert_unknown default|reject;`.
pub unsafe extern "C" fn ngx_http_dyncert_unknown(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let scf = unsafe { srv_conf(conf) };
    if scf.reject_unknown.is_some() {
        return DUPLICATE;
    }
    let a = &unsafe { args(cf) }[0];
    scf.reject_unknown = match as_bytes(a) {
        b"default" => Some(false),
        b"reject" => Some(true),
        _ => invalid!(cf, as_str(a)),
    };
    NGX_CONF_OK
}

/// # Safety
/// Called by nginx for `dyncert_api URL [writeback=TIME];`.
pub unsafe extern "C" fn ngx_http_dyncert_api(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let mcf = unsafe { main_conf(conf) };
    if mcf.api_template.is_some() {
        return DUPLICATE;
    }
    let a = unsafe { args(cf) };
    let url = as_str(&a[0]);
    if let Err(e) = UrlTemplate::parse(&url) {
        ngx_conf_log_error!(NGX_LOG_EMERG, cf, "invalid parameter \"{}\": {}", url, e);
        return NGX_CONF_ERROR;
    }
    for p in &a[1..] {
        let v = as_bytes(p);
        match v.strip_prefix(b"writeback=").map(parse_msec) {
            Some(Some(ms)) => mcf.api_writeback = Some(ms),
            _ => invalid!(cf, as_str(p)),
        }
    }
    mcf.api_template = Some(url);
    NGX_CONF_OK
}

/// # Safety
/// Called by nginx for `dyncert_api_header NAME VALUE;` (repeatable).
pub unsafe extern "C" fn ngx_http_dyncert_api_header(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let mcf = unsafe { main_conf(conf) };
    let a = unsafe { args(cf) };
    let (name, value) = (as_str(&a[0]), as_str(&a[1]));
    if let Err(e) = check_header(&name, &value) {
        // The value may be a secret: name the header only.
        ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", e);
        return NGX_CONF_ERROR;
    }
    mcf.api_headers.push((name, value));
    NGX_CONF_OK
}

/// # Safety
/// Called by nginx for `dyncert_api_timeout TIME;`.
pub unsafe extern "C" fn ngx_http_dyncert_api_timeout(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let mcf = unsafe { main_conf(conf) };
    unsafe { set_msec(cf, &mut mcf.api_timeout, 1) }
}

/// # Safety
/// Called by nginx for `dyncert_api_trusted_certificate FILE;`.
pub unsafe extern "C" fn ngx_http_dyncert_api_trusted_certificate(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let mcf = unsafe { main_conf(conf) };
    if mcf.api_trusted_certificate.is_some() {
        return DUPLICATE;
    }
    let mut file = unsafe { args(cf) }[0];
    // Relative paths resolve against the configuration prefix, like
    // ssl_trusted_certificate.
    // SAFETY: cf->cycle is live; nginx allocates the full name in its pool.
    if unsafe { ngx_conf_full_name((*cf).cycle, &mut file, 1) } != NGX_OK as isize {
        return NGX_CONF_ERROR;
    }
    let path = as_str(&file);
    let pem = match std::fs::read(&path) {
        Ok(p) => p,
        Err(e) => {
            ngx_conf_log_error!(NGX_LOG_EMERG, cf, "cannot read \"{}\": {}", path, e);
            return NGX_CONF_ERROR;
        }
    };
    match openssl::x509::X509::stack_from_pem(&pem) {
        Ok(certs) if !certs.is_empty() => {}
        _ => {
            ngx_conf_log_error!(NGX_LOG_EMERG, cf, "no PEM certificate in \"{}\"", path);
            return NGX_CONF_ERROR;
        }
    }
    mcf.api_trusted_certificate = Some(pem);
    NGX_CONF_OK
}

/// # Safety
/// Called by nginx for `dyncert_invalidate_channel NAME|off;`.
pub unsafe extern "C" fn ngx_http_dyncert_invalidate_channel(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let mcf = unsafe { main_conf(conf) };
    if mcf.invalidate_channel.is_some() {
        return DUPLICATE;
    }
    let a = &unsafe { args(cf) }[0];
    let v = as_bytes(a);
    if v == b"off" {
        mcf.invalidate_channel = Some(None);
        return NGX_CONF_OK;
    }
    if v.is_empty() || v.len() > 128 || !v.iter().all(|b| b.is_ascii_graphic()) {
        invalid!(cf, as_str(a));
    }
    mcf.invalidate_channel = Some(Some(as_str(a)));
    NGX_CONF_OK
}

/// `dyncert on|off`-style flags of the server configuration.
unsafe fn set_srv_flag(cf: *mut ngx_conf_t, slot: &mut Option<bool>) -> *mut c_char {
    if slot.is_some() {
        return DUPLICATE;
    }
    let a = &unsafe { args(cf) }[0];
    *slot = match as_bytes(a) {
        b"on" => Some(true),
        b"off" => Some(false),
        _ => invalid!(cf, as_str(a)),
    };
    NGX_CONF_OK
}

/// # Safety
/// Called by nginx for `dyncert_tenant_policy on|off;`.
pub unsafe extern "C" fn ngx_http_dyncert_tenant_policy(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let scf = unsafe { srv_conf(conf) };
    unsafe { set_srv_flag(cf, &mut scf.tenant_policy) }
}

/// # Safety
/// Called by nginx for `dyncert_acme_challenge on|off;`.
pub unsafe extern "C" fn ngx_http_dyncert_acme_challenge(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let scf = unsafe { srv_conf(conf) };
    unsafe { set_srv_flag(cf, &mut scf.acme) }
}

/// # Safety
/// Called by nginx for `dyncert_acme_prefix PREFIX;`.
pub unsafe extern "C" fn ngx_http_dyncert_acme_prefix(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let mcf = unsafe { main_conf(conf) };
    if mcf.acme_prefix.is_some() {
        return DUPLICATE;
    }
    let v = as_bytes(&unsafe { args(cf) }[0]);
    if v.len() > 128 || !v.iter().all(|b| b.is_ascii_graphic()) {
        invalid!(cf, String::from_utf8_lossy(v));
    }
    mcf.acme_prefix = Some(String::from_utf8_lossy(v).into_owned());
    NGX_CONF_OK
}

/// # Safety
/// `conf` must be the LocConf pointer nginx passes for a
/// NGX_HTTP_LOC_CONF_OFFSET directive of this module.
unsafe fn loc_conf<'a>(conf: *mut c_void) -> &'a mut LocConf {
    // SAFETY: create_loc_conf allocated a LocConf at this address.
    unsafe { &mut *(conf as *mut LocConf) }
}

/// # Safety
/// Called by nginx for `dyncert_allow ADDRESS|CIDR|all|env=VAR ...;`.
/// Several directives in one block add up, like nginx's `allow`.
pub unsafe extern "C" fn ngx_http_dyncert_allow(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let lcf = unsafe { loc_conf(conf) };
    let list = lcf.allow.get_or_insert_with(Vec::new);
    for a in unsafe { args(cf) } {
        let text = as_str(a);
        if text == "all" {
            list.push(Cidr::parse("0.0.0.0/0").expect("literal"));
            list.push(Cidr::parse("::/0").expect("literal"));
            continue;
        }
        if let Some(var) = text.strip_prefix("env=") {
            // Read once, at configuration time, in the master (whose
            // environment nginx has not cleared).
            // `nginx -s reload` parses the configuration only to find the
            // pid file, often from a shell without the variable: skip it.
            // SAFETY: ngx_process is set by option parsing, before this.
            if unsafe { ngx::ffi::ngx_process } == ngx::ffi::NGX_PROCESS_SIGNALLER as ngx_uint_t {
                continue;
            }
            let Ok(value) = std::env::var(var) else {
                ngx_conf_log_error!(
                    NGX_LOG_EMERG,
                    cf,
                    "environment variable \"{}\" of \"dyncert_allow\" is not set \
                     (and add \"env {};\" to the main context so workers keep it)",
                    var,
                    var
                );
                return NGX_CONF_ERROR;
            };
            match cidr::parse_list(&value) {
                Ok(l) => list.extend(l),
                Err(e) => {
                    ngx_conf_log_error!(
                        NGX_LOG_EMERG,
                        cf,
                        "invalid value of environment variable \"{}\": {}",
                        var,
                        e
                    );
                    return NGX_CONF_ERROR;
                }
            }
            continue;
        }
        match Cidr::parse(&text) {
            Ok(c) => list.push(c),
            Err(e) => {
                ngx_conf_log_error!(NGX_LOG_EMERG, cf, "invalid parameter {}", e);
                return NGX_CONF_ERROR;
            }
        }
        if list.len() > 100_000 {
            invalid!(cf, text);
        }
    }
    NGX_CONF_OK
}

/// # Safety
/// Called by nginx for `dyncert_deny_status CODE;`.
pub unsafe extern "C" fn ngx_http_dyncert_deny_status(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let lcf = unsafe { loc_conf(conf) };
    if lcf.deny_status.is_some() {
        return DUPLICATE;
    }
    let a = &unsafe { args(cf) }[0];
    match parse_number(as_bytes(a)) {
        Some(n) if (400..=599).contains(&n) => {
            lcf.deny_status = Some(n as ngx_uint_t);
            NGX_CONF_OK
        }
        _ => invalid!(cf, as_str(a)),
    }
}
