//! Configuration: the module type ngx-rust knows this module by, the
//! main/server/location configuration structures with their defaults and
//! merges, and what postconfiguration reads from nginx's own http
//! configuration (its server blocks, its phases). The directives that fill
//! these structures are in `directives.rs`.

use core::ffi::{c_char, CStr};
use core::fmt;
use core::ptr::{self, NonNull};
use std::time::Duration;

use dyncert_core::acme;
use dyncert_core::api::{ApiConfig, MAX_BODY};
use dyncert_core::cache::CachePolicy;
use dyncert_core::cidr::Cidr;
use dyncert_core::directives::check_redis_tls;
use dyncert_core::fetch::{FetcherConfig, RedisTls, TicketConfig};
use dyncert_core::keyref::KeyRefConfig;
use dyncert_core::keywrap::{KeyEncryption, KeyWrapConfig, Keyring};
use dyncert_core::on_demand::Stream;
use dyncert_core::template::UrlTemplate;
use dyncert_core::tickets::{self, Storage};
use dyncert_core::tier::config_fingerprint;
use dyncert_core::validate::{KeyLimits, DEFAULT_RSA_MAX_BITS};
use ngx::ffi::{
    ngx_array_push, ngx_conf_t, ngx_http_core_srv_conf_t, ngx_http_handler_pt, ngx_http_phases,
    ngx_http_request_t, ngx_int_t, ngx_module_t, ngx_msec_t, ngx_shm_zone_t, ngx_uint_t,
    NGX_LOG_EMERG,
};
use ngx::http::{
    HttpModule, HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf, Merge,
    MergeConfigError, NgxHttpCoreModule,
};
use ngx::ngx_conf_log_error;

/// The module as ngx-rust's traits know it: they give the typed
/// configurations of a request, a connection or a configuration being
/// loaded, and the default create/merge callbacks of the module context.
pub struct Module;

impl HttpModule for Module {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the module static is initialised at load time and only
        // mutated by nginx while loading configuration (single-threaded).
        unsafe { &*ptr::addr_of!(crate::ngx_http_dyncert_module) }
    }
}

/// Tells ngx-rust that this module's main configuration is a [`MainConf`],
/// so that `Module::main_conf` hands out typed references to it.
// SAFETY: the context's create_main_conf (HttpModule's default) allocates
// exactly this type.
unsafe impl HttpModuleMainConf for Module {
    type MainConf = MainConf;
}

/// Tells ngx-rust that this module's server configuration is a
/// [`SrvConf`], so that `Module::server_conf` hands out typed references.
// SAFETY: the context's create_srv_conf allocates exactly this type.
unsafe impl HttpModuleServerConf for Module {
    type ServerConf = SrvConf;
}

/// Tells ngx-rust that this module's location configuration is a
/// [`LocConf`], so that `Module::location_conf` hands out typed references.
// SAFETY: the context's create_loc_conf allocates exactly this type.
unsafe impl HttpModuleLocationConf for Module {
    type LocationConf = LocConf;
}

// Shared with the `dyncert` CLI, which must find what the module reads.
use dyncert_core::directives::{
    DEFAULT_ACME_PREFIX, DEFAULT_EXPIRY_INDEX, DEFAULT_INVALIDATE_CHANNEL, DEFAULT_PREFIX,
};
const DEFAULT_FETCH_TIMEOUT_MS: ngx_msec_t = 2000;
const DEFAULT_REDIS_TIMEOUT_MS: ngx_msec_t = 1000;
const DEFAULT_FETCH_CONCURRENCY: usize = 64;
const DEFAULT_API_TIMEOUT_MS: ngx_msec_t = 3000;
const DEFAULT_WRITEBACK_MS: ngx_msec_t = 24 * 3600 * 1000;

/// `http {}` level settings; `None` means "not set" until `init_main_conf`.
#[derive(Debug, Default)]
pub struct MainConf {
    pub redis_url: Option<String>,
    /// `dyncert_redis_tls_trusted_certificate`, `dyncert_redis_tls_certificate`.
    pub redis_tls: RedisTls,
    pub prefix: Option<String>,
    pub cache: Option<CachePolicy>,
    pub fetch_timeout: Option<ngx_msec_t>,
    pub redis_timeout: Option<ngx_msec_t>,
    pub fetch_concurrency: Option<usize>,
    /// `dyncert_api` URL template (validated) and its write-back TTL.
    pub api_template: Option<String>,
    pub api_writeback: Option<ngx_msec_t>,
    /// `dyncert_api rate=`: API requests per second per worker; unset:
    /// no cap.
    pub api_rate: Option<u32>,
    pub api_headers: Vec<(String, String)>,
    pub api_timeout: Option<ngx_msec_t>,
    /// PEM bundle read from `dyncert_api_trusted_certificate`.
    pub api_trusted_certificate: Option<Vec<u8>>,
    /// `Some(None)`: `dyncert_invalidate_channel off`.
    pub invalidate_channel: Option<Option<String>>,
    /// `Some(None)`: `dyncert_expiry_index off`.
    pub expiry_index: Option<Option<String>>,
    pub acme_prefix: Option<String>,
    /// `dyncert_on_demand_stream`.
    pub on_demand_stream: Option<Stream>,
    /// Filled in postconfiguration: some server with `dyncert on` has
    /// `dyncert_on_demand on`.
    pub on_demand: bool,
    /// Filled in postconfiguration: some server has `dyncert on`.
    pub enabled: bool,
    /// Some location has `dyncert_metrics`.
    pub metrics_used: bool,
    /// Filled in postconfiguration: this cycle's metrics zone, published to
    /// the process by init_module once the cycle is certain to be used.
    pub metrics_zone: Option<NonNull<ngx_shm_zone_t>>,
    /// `dyncert_shared_zone`: the host-wide tier's zone (added when the
    /// directive is read).
    pub shared_zone: Option<NonNull<ngx_shm_zone_t>>,
    /// `dyncert_key_references`; unset: off.
    pub key_refs: Option<KeyRefConfig>,
    /// `dyncert_key_decryption_key ID FILE` (repeatable): the keys, read
    /// when the directive is parsed.
    pub key_ring: Keyring,
    /// `dyncert_key_encryption`; unset: optional.
    pub key_encryption: Option<KeyEncryption>,
    /// `dyncert_rsa_max_bits`; unset: [`DEFAULT_RSA_MAX_BITS`].
    pub rsa_max_bits: Option<u32>,
    /// Filled in postconfiguration: first server_name of each server block,
    /// in the order of `SrvConf::server_index` (metric labels).
    pub server_names: Vec<String>,
    /// Filled in postconfiguration: (family, port) of `ssl` listeners that
    /// lead to a server with `dyncert on`; their connections are peeked.
    pub ports: Vec<(i32, u16)>,
    /// `dyncert_session_ticket_rotate`: period (ms) and previous keys kept.
    pub ticket_rotate: Option<(u64, usize)>,
    /// Filled in postconfiguration: some ssl server has
    /// `dyncert_session_tickets on`.
    pub session_tickets: bool,
    /// Filled in postconfiguration: [`Self::tier_fingerprint`], which the
    /// shared zone's init callback reads (through the zone's `data`).
    pub tier_config: u64,
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

    /// The shared zone's [`config_fingerprint`]: sources, record checks
    /// and deadlines.
    pub fn tier_fingerprint(&self) -> u64 {
        let policy = self.cache();
        let key_refs = &self.key_refs.clone().unwrap_or_default();
        let key_refs = format!("{:?} {:?}", key_refs.mode, key_refs.module);
        let encryption = format!("{:?}", self.key_encryption.unwrap_or_default());
        let key_ids = self.key_ring.ids().collect::<Vec<_>>().join(" ");
        let valid = policy.valid.to_string();
        let stale = policy.stale.to_string();
        let mut parts: Vec<&[u8]> = vec![
            self.redis_url.as_deref().unwrap_or("").as_bytes(),
            self.prefix().as_bytes(),
            self.api_template.as_deref().unwrap_or("").as_bytes(),
            valid.as_bytes(),
            stale.as_bytes(),
            key_refs.as_bytes(),
            encryption.as_bytes(),
            key_ids.as_bytes(),
        ];
        // Only when set, so a zone kept over the upgrade keeps its records.
        let rsa_max_bits = self.rsa_max_bits.map(|b| b.to_string());
        if let Some(b) = &rsa_max_bits {
            parts.push(b"rsa_max_bits");
            parts.push(b.as_bytes());
        }
        for (name, value) in &self.api_headers {
            parts.push(name.as_bytes());
            parts.push(value.as_bytes());
        }
        config_fingerprint(parts)
    }
    pub fn fetch_concurrency(&self) -> usize {
        self.fetch_concurrency.unwrap_or(DEFAULT_FETCH_CONCURRENCY)
    }

    /// `dyncert_rsa_max_bits` and the fixed bounds of record keys.
    pub fn key_limits(&self) -> KeyLimits {
        KeyLimits {
            rsa_max_bits: self.rsa_max_bits.unwrap_or(DEFAULT_RSA_MAX_BITS),
        }
    }

    /// What the worker's fetcher needs (built in each worker). The key
    /// limits every validation applies are the process's
    /// ([`KeyLimits::install`]): `start_fetcher` installs them before the
    /// fetcher that validates records and loads shared zone entries starts.
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
            redis_tls: self.redis_tls.clone(),
            prefix: self.prefix().to_owned(),
            redis_timeout: self.redis_timeout(),
            api,
            writeback: Duration::from_millis(
                self.api_writeback.unwrap_or(DEFAULT_WRITEBACK_MS) as u64
            ),
            api_rate: self.api_rate,
            invalidate_channel: channel,
            expiry_index: match &self.expiry_index {
                Some(i) => i.clone(),
                None => Some(DEFAULT_EXPIRY_INDEX.to_owned()),
            },
            acme_prefix: self
                .acme_prefix
                .clone()
                .unwrap_or_else(|| DEFAULT_ACME_PREFIX.to_owned()),
            queue_cap: self.fetch_concurrency(),
            // The gate in shell::acme admits at most this many reads at once.
            acme_queue_cap: acme::Limits::default().max_reads,
            // Found records come back in compact form for the shared zone.
            compact: self.shared_zone.is_some(),
            key_refs: self.key_refs.clone().unwrap_or_default(),
            key_wrap: std::sync::Arc::new(KeyWrapConfig {
                ring: self.key_ring.clone(),
                mode: self.key_encryption.unwrap_or_default(),
            }),
            on_demand: self
                .on_demand
                .then(|| self.on_demand_stream.clone().unwrap_or_default()),
            tickets: self.session_tickets.then(|| self.ticket_config()),
        })
    }

    /// The shared session ticket keys' settings: sealed under the first
    /// `dyncert_key_decryption_key` when there is one.
    fn ticket_config(&self) -> TicketConfig {
        let (period, keep) = self
            .ticket_rotate
            .unwrap_or((tickets::DEFAULT_ROTATE_MS, tickets::DEFAULT_KEEP));
        TicketConfig {
            key: tickets::DEFAULT_KEY.to_owned(),
            period: Duration::from_millis(period),
            keep,
            storage: Storage {
                ring: self.key_ring.clone(),
                seal_id: self.key_ring.ids().next().map(str::to_owned),
                require_sealed: self.key_encryption == Some(KeyEncryption::Required),
            },
            store: &super::tickets::KEYS,
        }
    }
}

/// `server {}` level settings.
#[derive(Debug, Default)]
pub struct SrvConf {
    pub enable: Option<bool>,
    pub reject_unknown: Option<bool>,
    pub tenant_policy: Option<bool>,
    pub acme: Option<bool>,
    pub on_demand: Option<bool>,
    /// `dyncert_session_tickets`.
    pub session_tickets: Option<bool>,
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
    /// `dyncert_on_demand on`, on a server with `dyncert on`.
    pub fn on_demand(&self) -> bool {
        self.enabled() && self.on_demand.unwrap_or(false)
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
        self.on_demand = self.on_demand.or(prev.on_demand).or(Some(false));
        self.session_tickets = self
            .session_tickets
            .or(prev.session_tickets)
            .or(Some(false));
        Ok(())
    }
}

// ---- what postconfiguration reads from nginx's http configuration ----

/// The configuration is refused; the error log already says why (nginx
/// itself reports the allocation failures that end up here).
#[derive(Debug)]
pub struct Refused;

/// Reports a configuration error the way nginx does (`nginx -t` prints it
/// with the file and line being parsed) and refuses the configuration.
pub fn emerg(cf: &mut ngx_conf_t, args: fmt::Arguments<'_>) -> Refused {
    let cf: *mut ngx_conf_t = cf;
    ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", args);
    Refused
}

/// The server blocks of the http block being loaded.
pub fn servers(cf: &ngx_conf_t) -> Result<Vec<&'static ngx_http_core_srv_conf_t>, Refused> {
    let cmcf = NgxHttpCoreModule::main_conf(cf).ok_or(Refused)?;
    // SAFETY: cmcf->servers is an array of pointers to the server blocks'
    // core configurations (ngx_http_core_server), which live as long as
    // the configuration.
    let servers = unsafe { cmcf.servers.as_slice::<*mut ngx_http_core_srv_conf_t>() };
    // SAFETY: as above: live, non-NULL server configurations.
    Ok(servers
        .iter()
        .filter_map(|&s| unsafe { s.as_ref() })
        .collect())
}

/// Where a server block was defined, for error messages.
pub fn server_location(cscf: &ngx_http_core_srv_conf_t) -> String {
    if cscf.file_name.is_null() {
        return "a server block".into();
    }
    // SAFETY: nginx stores the NUL-terminated file name of the block.
    let f = unsafe { CStr::from_ptr(cscf.file_name as *const c_char) };
    format!("the server block at {}:{}", f.to_string_lossy(), cscf.line)
}

/// Appends `handler` to an http phase (postconfiguration).
pub fn add_phase_handler(
    cf: &ngx_conf_t,
    phase: ngx_http_phases,
    handler: unsafe extern "C" fn(*mut ngx_http_request_t) -> ngx_int_t,
) -> Result<(), Refused> {
    let cmcf = NgxHttpCoreModule::main_conf_mut(cf).ok_or(Refused)?;
    let handlers = &mut cmcf.phases[phase as usize].handlers;
    // SAFETY: a phase's handlers are an ngx_array_t of handler pointers in
    // the configuration pool; ngx_array_push(3) returns a fresh element.
    let h = unsafe { ngx_array_push(handlers) }.cast::<ngx_http_handler_pt>();
    if h.is_null() {
        return Err(Refused);
    }
    // SAFETY: h points to that fresh, uninitialised element.
    unsafe { h.write(Some(handler)) };
    Ok(())
}

/// What the server blocks of an http block use.
#[derive(Debug, Default, Clone, Copy)]
pub struct Uses {
    /// Some server has `dyncert on`.
    pub dyncert: bool,
    /// Some server with `dyncert on` has `dyncert_unknown reject`.
    pub reject: bool,
    /// Some server with `dyncert on` has `dyncert_tenant_policy on`.
    pub tenant: bool,
    /// Some server has `dyncert_acme_challenge on`.
    pub acme: bool,
    /// Some server with `dyncert on` has `dyncert_on_demand on`.
    pub on_demand: bool,
}

impl Uses {
    pub fn of(servers: &[&ngx_http_core_srv_conf_t]) -> Uses {
        let mut uses = Uses::default();
        for scf in servers.iter().filter_map(|&s| Module::server_conf(s)) {
            uses.acme |= scf.acme();
            if scf.enabled() {
                uses.dyncert = true;
                uses.reject |= scf.rejects_unknown();
                uses.tenant |= scf.tenant_policy();
                uses.on_demand |= scf.on_demand();
            }
        }
        uses
    }
}

/// The `dyncert_redis_tls_*` directives need a `rediss://` URL.
pub fn check_redis_tls_use(cf: &mut ngx_conf_t, mcf: &MainConf) -> Result<(), Refused> {
    let set = [
        (
            mcf.redis_tls.ca.is_some(),
            "dyncert_redis_tls_trusted_certificate",
        ),
        (
            mcf.redis_tls.client.is_some(),
            "dyncert_redis_tls_certificate",
        ),
    ];
    for (_, directive) in set.iter().filter(|(on, _)| *on) {
        let url = mcf.redis_url.as_deref().unwrap_or("");
        check_redis_tls(url, directive).map_err(|e| emerg(cf, format_args!("{e}")))?;
    }
    Ok(())
}

/// `dyncert_on_demand on` queues names in Redis.
pub fn check_on_demand(cf: &mut ngx_conf_t, mcf: &MainConf) -> Result<(), Refused> {
    if mcf.on_demand && mcf.redis_url.is_none() {
        return Err(emerg(
            cf,
            format_args!(
                "\"dyncert_on_demand on\" is set but \"dyncert_redis\" is not: \
                 names are queued in a Redis stream"
            ),
        ));
    }
    Ok(())
}

/// `dyncert on` needs somewhere to read certificates from.
pub fn check_sources(cf: &mut ngx_conf_t, mcf: &MainConf) -> Result<(), Refused> {
    if mcf.redis_url.is_none() && mcf.api_template.is_none() {
        return Err(emerg(
            cf,
            format_args!(
                "\"dyncert on\" is set but neither \"dyncert_redis\" nor \"dyncert_api\" is: \
                 dyncert has no certificate source"
            ),
        ));
    }
    Ok(())
}

/// `dyncert_key_encryption required` with no key to decrypt with would
/// refuse every record.
pub fn check_key_encryption(cf: &mut ngx_conf_t, mcf: &MainConf) -> Result<(), Refused> {
    if mcf.key_encryption == Some(KeyEncryption::Required) && mcf.key_ring.is_empty() {
        return Err(emerg(
            cf,
            format_args!(
                "\"dyncert_key_encryption required\" is set but no \"dyncert_key_decryption_key\" is: \
                 no record could be served"
            ),
        ));
    }
    Ok(())
}
