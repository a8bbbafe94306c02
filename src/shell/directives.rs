//! The directive handlers of the commands table. Each is a safe function of
//! the configuration being parsed, this module's configuration at the
//! directive's level and the directive's arguments; [`directive!`] gives it
//! the `extern "C"` entry point nginx calls, which converts nginx's
//! pointers once and runs it behind the panic guard. The values are parsed
//! and checked in `dyncert_core::directives`; this file stores them and
//! reports refusals the way nginx reports its own.

use core::ffi::{c_char, c_void};

use dyncert_core::api::check_header;
use dyncert_core::cidr::{self, Cidr};
use dyncert_core::directives::{self, AllowArg, InvalidParameter, MAX_ALLOW};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    ngx_array_t, ngx_conf_full_name, ngx_conf_t, ngx_msec_t, ngx_str_t, ngx_uint_t, NGX_OK,
    NGX_PROCESS_SIGNALLER,
};

use super::boundary::guard;
use super::conf::{emerg, LocConf, MainConf, Refused, SrvConf};

/// Why a directive handler refused its directive.
#[derive(Debug)]
pub enum DirectiveError {
    /// Set twice at one level: nginx says `"NAME" directive is duplicate`.
    Duplicate,
    /// Refused with a message already in the log.
    Refused,
}

impl From<Refused> for DirectiveError {
    fn from(_: Refused) -> Self {
        DirectiveError::Refused
    }
}

pub type DirectiveResult = Result<(), DirectiveError>;

/// A directive handler: the configuration being parsed, this module's
/// configuration of type `C` at the directive's level, and the arguments
/// after the directive's name.
pub type Setter<C> = fn(&mut ngx_conf_t, &mut C, &[ngx_str_t]) -> DirectiveResult;

/// `directive!(ngx_http_dyncert_NAME => set)` defines the `extern "C"`
/// handler the commands table names, for the safe [`Setter`] `set`. The
/// commands table must give it the configuration offset of the type `set`
/// takes (`NGX_HTTP_MAIN_CONF_OFFSET` for [`MainConf`], ...).
macro_rules! directive {
    ($handler:ident => $set:path) => {
        /// A directive handler of the commands table (see
        /// [`crate::shell::directives`]).
        ///
        /// # Safety
        /// Called by nginx while parsing this directive, with `conf` this
        /// module's configuration of the type the handler takes.
        pub unsafe extern "C" fn $handler(
            cf: *mut ::ngx::ffi::ngx_conf_t,
            _cmd: *mut ::ngx::ffi::ngx_command_t,
            conf: *mut ::core::ffi::c_void,
        ) -> *mut ::core::ffi::c_char {
            // SAFETY: this function's own contract is the one run() needs.
            unsafe { $crate::shell::directives::run(cf, conf, $set) }
        }
    };
}
pub(crate) use directive;

/// The body of every directive handler: the pointers become references
/// once, the handler runs behind the panic guard, and its result becomes
/// what nginx expects (`NGX_CONF_OK`, an error string, `NGX_CONF_ERROR`).
///
/// # Safety
/// `cf` is the configuration nginx is parsing, in a directive handler;
/// `conf` is this module's configuration of type `C` (the commands table
/// pairs each handler with the offset of that type).
pub unsafe fn run<C>(cf: *mut ngx_conf_t, conf: *mut c_void, set: Setter<C>) -> *mut c_char {
    guard("parsing a directive", NGX_CONF_ERROR, || {
        // SAFETY: nginx passes the configuration being parsed; nothing else
        // uses it while the handler runs.
        let cf = unsafe { &mut *cf };
        // SAFETY: the words of the directive being parsed live in the
        // configuration's temporary pool, outside *cf, until it moves on.
        let args = unsafe { arguments(cf.args) };
        // SAFETY: the caller's contract: a C allocated by create_*_conf.
        let conf = unsafe { &mut *conf.cast::<C>() };
        match set(cf, conf, args) {
            Ok(()) => NGX_CONF_OK,
            Err(DirectiveError::Duplicate) => c"is duplicate".as_ptr().cast_mut(),
            Err(DirectiveError::Refused) => NGX_CONF_ERROR,
        }
    })
}

/// The directive's arguments after its name.
///
/// # Safety
/// `words` is `cf->args` inside a directive handler.
unsafe fn arguments<'a>(words: *mut ngx_array_t) -> &'a [ngx_str_t] {
    // SAFETY: in a directive handler cf->args is nginx's live array of the
    // directive's words (ngx_conf_read_token)...
    let words = unsafe { &*words };
    // SAFETY: ...of ngx_str_t, the directive's name first.
    let words = unsafe { words.as_slice::<ngx_str_t>() };
    words.get(1..).unwrap_or_default()
}

/// Stores the value of a directive that may appear once per level: a
/// second one is a duplicate, and a value the core refuses is reported the
/// way nginx reports a bad argument (`invalid parameter "..."`).
fn set_once<T>(
    cf: &mut ngx_conf_t,
    slot: &mut Option<T>,
    parse: impl FnOnce() -> Result<T, InvalidParameter>,
) -> DirectiveResult {
    if slot.is_some() {
        return Err(DirectiveError::Duplicate);
    }
    let value = parse().map_err(|e| emerg(cf, format_args!("{e}")))?;
    *slot = Some(value);
    Ok(())
}

fn lossy(s: &ngx_str_t) -> String {
    String::from_utf8_lossy(s.as_bytes()).into_owned()
}

fn words(args: &[ngx_str_t]) -> Vec<&[u8]> {
    args.iter().map(ngx_str_t::as_bytes).collect()
}

fn timeout(v: &ngx_str_t) -> impl FnOnce() -> Result<ngx_msec_t, InvalidParameter> + '_ {
    || directives::timeout(v.as_bytes()).map(|ms| ms as ngx_msec_t)
}

fn flag(v: &ngx_str_t) -> impl FnOnce() -> Result<bool, InvalidParameter> + '_ {
    || directives::flag(v.as_bytes())
}

// ---- http {} level ----

directive!(ngx_http_dyncert_redis => redis);
/// `dyncert_redis URL;`
fn redis(cf: &mut ngx_conf_t, mcf: &mut MainConf, args: &[ngx_str_t]) -> DirectiveResult {
    // The URL may carry the Redis password: the error never echoes it.
    set_once(cf, &mut mcf.redis_url, || {
        directives::redis_url(args[0].as_bytes())
    })
}

directive!(ngx_http_dyncert_redis_prefix => redis_prefix);
/// `dyncert_redis_prefix PREFIX;`
fn redis_prefix(cf: &mut ngx_conf_t, mcf: &mut MainConf, args: &[ngx_str_t]) -> DirectiveResult {
    set_once(cf, &mut mcf.prefix, || {
        directives::key_prefix(args[0].as_bytes())
    })
}

directive!(ngx_http_dyncert_redis_timeout => redis_timeout);
/// `dyncert_redis_timeout TIME;`
fn redis_timeout(cf: &mut ngx_conf_t, mcf: &mut MainConf, args: &[ngx_str_t]) -> DirectiveResult {
    set_once(cf, &mut mcf.redis_timeout, timeout(&args[0]))
}

directive!(ngx_http_dyncert_cache => cache);
/// `dyncert_cache max=N max_size=SIZE valid=T stale=T negative=T
/// negative_max=N;`
fn cache(cf: &mut ngx_conf_t, mcf: &mut MainConf, args: &[ngx_str_t]) -> DirectiveResult {
    set_once(cf, &mut mcf.cache, || directives::cache(&words(args)))
}

directive!(ngx_http_dyncert_shared_zone => shared_zone);
/// `dyncert_shared_zone NAME:SIZE;`: the zone is added to the configuration
/// at once, as nginx's own `*_zone` directives do.
fn shared_zone(cf: &mut ngx_conf_t, mcf: &mut MainConf, args: &[ngx_str_t]) -> DirectiveResult {
    if mcf.shared_zone.is_some() {
        return Err(DirectiveError::Duplicate);
    }
    let (name, size) =
        directives::shared_zone(args[0].as_bytes()).map_err(|e| emerg(cf, format_args!("{e}")))?;
    // The zone's name points into the directive's word, which lives in the
    // configuration's pool as long as the cycle.
    let word = &args[0];
    let name = ngx_str_t {
        len: name.len(),
        data: word.data,
    };
    mcf.shared_zone = Some(super::zone::add(cf, name, size)?);
    Ok(())
}

directive!(ngx_http_dyncert_key_references => key_references);
/// `dyncert_key_references off | engine [module=PATH] [pin_file=PATH];`:
/// the module path must name a file now, so a typo fails `nginx -t`
/// rather than every record later (the engine itself is only loaded in
/// workers); the PIN is read here, by the master, so the file can be
/// readable by root only.
fn key_references(cf: &mut ngx_conf_t, mcf: &mut MainConf, args: &[ngx_str_t]) -> DirectiveResult {
    set_once(cf, &mut mcf.key_refs, || {
        let mut refs = directives::key_references(&words(args))?;
        if let Some(m) = &refs.module {
            if !std::path::Path::new(m).is_file() {
                return Err(InvalidParameter {
                    shown: format!("module={m}"),
                    reason: Some("no such file".into()),
                });
            }
        }
        if let Some(p) = &refs.pin_file {
            let bad = |why: &str| InvalidParameter {
                shown: format!("pin_file={p}"),
                reason: Some(why.into()),
            };
            let contents = std::fs::read(p).map_err(|e| bad(&e.to_string()))?;
            refs.pin = Some(
                dyncert_core::keyref::pin_of(&contents)
                    .ok_or_else(|| bad("not one line of at most 256 printable characters"))?,
            );
        }
        Ok(refs)
    })
}

directive!(ngx_http_dyncert_key_decryption_key => key_decryption_key);
/// `dyncert_key_decryption_key ID FILE;` (repeatable, one per id): the
/// key is read here, by the master, so the file can be readable by root
/// only; a file anyone may read, or that holds no AES-256 key, fails
/// `nginx -t` naming the file and the reason (never its contents).
fn key_decryption_key(
    cf: &mut ngx_conf_t,
    mcf: &mut MainConf,
    args: &[ngx_str_t],
) -> DirectiveResult {
    let id = directives::key_id(args[0].as_bytes()).map_err(|e| emerg(cf, format_args!("{e}")))?;
    // `nginx -s reload` parses the configuration only to find the pid
    // file, perhaps as a user who may not read the key: skip the file.
    if signaller() {
        return Ok(());
    }
    if mcf.key_ring.get(&id).is_some() {
        return Err(emerg(
            cf,
            format_args!("key id \"{id}\" of \"dyncert_key_decryption_key\" is duplicate"),
        )
        .into());
    }
    let path = full_name(cf, &args[1])?;
    let meta = std::fs::metadata(&path)
        .map_err(|e| emerg(cf, format_args!("cannot read key file \"{path}\": {e}")))?;
    let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
    let key = directives::key_file_metadata(meta.is_file(), mode)
        .and_then(|()| read_bounded(&path, directives::MAX_KEY_FILE_BYTES))
        .and_then(|contents| directives::key_file(mode, &contents))
        .map_err(|why| emerg(cf, format_args!("key file \"{path}\" {why}")))?;
    mcf.key_ring.insert(&id, key);
    Ok(())
}

/// At most `max` + 1 bytes of the file at `path` (enough to tell that it
/// is too long).
fn read_bounded(path: &str, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut contents = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_end(&mut contents))
        .map_err(|e| format!("cannot be read: {e}"))?;
    Ok(contents)
}

directive!(ngx_http_dyncert_key_encryption => key_encryption);
/// `dyncert_key_encryption optional|required;`
fn key_encryption(cf: &mut ngx_conf_t, mcf: &mut MainConf, args: &[ngx_str_t]) -> DirectiveResult {
    set_once(cf, &mut mcf.key_encryption, || {
        directives::key_encryption(args[0].as_bytes())
    })
}

directive!(ngx_http_dyncert_fetch_timeout => fetch_timeout);
/// `dyncert_fetch_timeout TIME;`
fn fetch_timeout(cf: &mut ngx_conf_t, mcf: &mut MainConf, args: &[ngx_str_t]) -> DirectiveResult {
    set_once(cf, &mut mcf.fetch_timeout, timeout(&args[0]))
}

directive!(ngx_http_dyncert_rsa_max_bits => rsa_max_bits);
/// `dyncert_rsa_max_bits N;`
fn rsa_max_bits(cf: &mut ngx_conf_t, mcf: &mut MainConf, args: &[ngx_str_t]) -> DirectiveResult {
    set_once(cf, &mut mcf.rsa_max_bits, || {
        directives::rsa_max_bits(args[0].as_bytes())
    })
}

directive!(ngx_http_dyncert_fetch_concurrency => fetch_concurrency);
/// `dyncert_fetch_concurrency N;`
fn fetch_concurrency(
    cf: &mut ngx_conf_t,
    mcf: &mut MainConf,
    args: &[ngx_str_t],
) -> DirectiveResult {
    set_once(cf, &mut mcf.fetch_concurrency, || {
        directives::fetch_concurrency(args[0].as_bytes())
    })
}

directive!(ngx_http_dyncert_api => api);
/// `dyncert_api URL [writeback=TIME] [rate=N];`
fn api(cf: &mut ngx_conf_t, mcf: &mut MainConf, args: &[ngx_str_t]) -> DirectiveResult {
    if mcf.api_template.is_some() {
        return Err(DirectiveError::Duplicate);
    }
    let api = directives::api(&words(args)).map_err(|e| emerg(cf, format_args!("{e}")))?;
    mcf.api_template = Some(api.template);
    if let Some(ms) = api.writeback {
        mcf.api_writeback = Some(ms as ngx_msec_t);
    }
    mcf.api_rate = api.rate;
    Ok(())
}

directive!(ngx_http_dyncert_api_header => api_header);
/// `dyncert_api_header NAME VALUE;` (repeatable).
fn api_header(cf: &mut ngx_conf_t, mcf: &mut MainConf, args: &[ngx_str_t]) -> DirectiveResult {
    let (name, value) = (lossy(&args[0]), lossy(&args[1]));
    // The value may be a secret: the error names the header only.
    check_header(&name, &value).map_err(|e| emerg(cf, format_args!("{e}")))?;
    mcf.api_headers.push((name, value));
    Ok(())
}

directive!(ngx_http_dyncert_api_timeout => api_timeout);
/// `dyncert_api_timeout TIME;`
fn api_timeout(cf: &mut ngx_conf_t, mcf: &mut MainConf, args: &[ngx_str_t]) -> DirectiveResult {
    set_once(cf, &mut mcf.api_timeout, timeout(&args[0]))
}

directive!(ngx_http_dyncert_api_trusted_certificate => api_trusted_certificate);
/// `dyncert_api_trusted_certificate FILE;`
fn api_trusted_certificate(
    cf: &mut ngx_conf_t,
    mcf: &mut MainConf,
    args: &[ngx_str_t],
) -> DirectiveResult {
    if mcf.api_trusted_certificate.is_some() {
        return Err(DirectiveError::Duplicate);
    }
    let (path, pem) = read_file(cf, &args[0])?;
    if !directives::has_pem_certificate(&pem) {
        return Err(emerg(cf, format_args!("no PEM certificate in \"{path}\"")).into());
    }
    mcf.api_trusted_certificate = Some(pem);
    Ok(())
}

/// Reads a file a directive names; relative paths resolve against the
/// configuration prefix, like `ssl_trusted_certificate`. An unreadable
/// file fails `nginx -t`, naming it.
fn read_file(cf: &mut ngx_conf_t, name: &ngx_str_t) -> Result<(String, Vec<u8>), DirectiveError> {
    let path = full_name(cf, name)?;
    let bytes =
        std::fs::read(&path).map_err(|e| emerg(cf, format_args!("cannot read \"{path}\": {e}")))?;
    Ok((path, bytes))
}

/// A file name of a directive, relative ones resolved against the
/// configuration prefix.
fn full_name(cf: &mut ngx_conf_t, name: &ngx_str_t) -> Result<String, DirectiveError> {
    let mut file = *name;
    // SAFETY: cf->cycle is the cycle being loaded; ngx_conf_full_name
    // allocates the full name in its pool.
    if unsafe { ngx_conf_full_name(cf.cycle, &mut file, 1) } != NGX_OK as isize {
        return Err(DirectiveError::Refused);
    }
    Ok(lossy(&file))
}

directive!(ngx_http_dyncert_redis_tls_trusted_certificate => redis_tls_trusted_certificate);
/// `dyncert_redis_tls_trusted_certificate FILE;`: the CA certificates that
/// verify `rediss://` servers (instead of the system's).
fn redis_tls_trusted_certificate(
    cf: &mut ngx_conf_t,
    mcf: &mut MainConf,
    args: &[ngx_str_t],
) -> DirectiveResult {
    if mcf.redis_tls.ca.is_some() {
        return Err(DirectiveError::Duplicate);
    }
    let (path, pem) = read_file(cf, &args[0])?;
    if !directives::has_pem_certificate(&pem) {
        return Err(emerg(cf, format_args!("no PEM certificate in \"{path}\"")).into());
    }
    mcf.redis_tls.ca = Some(pem);
    Ok(())
}

directive!(ngx_http_dyncert_redis_tls_certificate => redis_tls_certificate);
/// `dyncert_redis_tls_certificate CERT KEY;`: the client certificate
/// shown to `rediss://` servers that ask for one.
fn redis_tls_certificate(
    cf: &mut ngx_conf_t,
    mcf: &mut MainConf,
    args: &[ngx_str_t],
) -> DirectiveResult {
    if mcf.redis_tls.client.is_some() {
        return Err(DirectiveError::Duplicate);
    }
    let (cert_path, cert) = read_file(cf, &args[0])?;
    let (key_path, key) = read_file(cf, &args[1])?;
    let identity = directives::redis_client_certificate(&cert, &key).map_err(|e| {
        emerg(
            cf,
            format_args!("invalid client certificate \"{cert_path}\" with key \"{key_path}\": {e}"),
        )
    })?;
    mcf.redis_tls.client = Some(identity);
    Ok(())
}

directive!(ngx_http_dyncert_invalidate_channel => invalidate_channel);
/// `dyncert_invalidate_channel NAME|off;`
fn invalidate_channel(
    cf: &mut ngx_conf_t,
    mcf: &mut MainConf,
    args: &[ngx_str_t],
) -> DirectiveResult {
    set_once(cf, &mut mcf.invalidate_channel, || {
        directives::invalidate_channel(args[0].as_bytes())
    })
}

directive!(ngx_http_dyncert_expiry_index => expiry_index);
/// `dyncert_expiry_index KEY|off;`
fn expiry_index(cf: &mut ngx_conf_t, mcf: &mut MainConf, args: &[ngx_str_t]) -> DirectiveResult {
    set_once(cf, &mut mcf.expiry_index, || {
        directives::expiry_index(args[0].as_bytes())
    })
}

directive!(ngx_http_dyncert_acme_prefix => acme_prefix);
/// `dyncert_acme_prefix PREFIX;`
fn acme_prefix(cf: &mut ngx_conf_t, mcf: &mut MainConf, args: &[ngx_str_t]) -> DirectiveResult {
    set_once(cf, &mut mcf.acme_prefix, || {
        directives::key_prefix(args[0].as_bytes())
    })
}

directive!(ngx_http_dyncert_on_demand_stream => on_demand_stream);
/// `dyncert_on_demand_stream KEY [maxlen=N];`
fn on_demand_stream(
    cf: &mut ngx_conf_t,
    mcf: &mut MainConf,
    args: &[ngx_str_t],
) -> DirectiveResult {
    set_once(cf, &mut mcf.on_demand_stream, || {
        directives::on_demand_stream(&words(args))
    })
}

// ---- server {} level ----

directive!(ngx_http_dyncert => enable);
/// `dyncert on|off;`
fn enable(cf: &mut ngx_conf_t, scf: &mut SrvConf, args: &[ngx_str_t]) -> DirectiveResult {
    set_once(cf, &mut scf.enable, flag(&args[0]))
}

directive!(ngx_http_dyncert_unknown => unknown);
/// `dyncert_unknown default|reject;`
fn unknown(cf: &mut ngx_conf_t, scf: &mut SrvConf, args: &[ngx_str_t]) -> DirectiveResult {
    set_once(cf, &mut scf.reject_unknown, || {
        directives::rejects_unknown(args[0].as_bytes())
    })
}

directive!(ngx_http_dyncert_session_ticket_rotate => session_ticket_rotate);
/// `dyncert_session_ticket_rotate TIME [keep=N];`
fn session_ticket_rotate(
    cf: &mut ngx_conf_t,
    mcf: &mut MainConf,
    args: &[ngx_str_t],
) -> DirectiveResult {
    set_once(cf, &mut mcf.ticket_rotate, || {
        directives::ticket_rotate(&words(args))
    })
}

directive!(ngx_http_dyncert_session_tickets => session_tickets);
/// `dyncert_session_tickets on|off;`
fn session_tickets(cf: &mut ngx_conf_t, scf: &mut SrvConf, args: &[ngx_str_t]) -> DirectiveResult {
    set_once(cf, &mut scf.session_tickets, flag(&args[0]))
}

directive!(ngx_http_dyncert_tenant_policy => tenant_policy);
/// `dyncert_tenant_policy on|off;`
fn tenant_policy(cf: &mut ngx_conf_t, scf: &mut SrvConf, args: &[ngx_str_t]) -> DirectiveResult {
    set_once(cf, &mut scf.tenant_policy, flag(&args[0]))
}

directive!(ngx_http_dyncert_acme_challenge => acme_challenge);
/// `dyncert_acme_challenge on|off;`
fn acme_challenge(cf: &mut ngx_conf_t, scf: &mut SrvConf, args: &[ngx_str_t]) -> DirectiveResult {
    set_once(cf, &mut scf.acme, flag(&args[0]))
}

directive!(ngx_http_dyncert_on_demand => on_demand);
/// `dyncert_on_demand on|off;`
fn on_demand(cf: &mut ngx_conf_t, scf: &mut SrvConf, args: &[ngx_str_t]) -> DirectiveResult {
    set_once(cf, &mut scf.on_demand, flag(&args[0]))
}

// ---- location {} level (also http and server, inherited) ----

directive!(ngx_http_dyncert_allow => allow);
/// `dyncert_allow ADDRESS|CIDR|all|env=VAR ...;`. Several directives in
/// one block add up, like nginx's `allow`.
fn allow(cf: &mut ngx_conf_t, lcf: &mut LocConf, args: &[ngx_str_t]) -> DirectiveResult {
    let list = lcf.allow.get_or_insert_with(Vec::new);
    for a in args {
        let text = lossy(a);
        match directives::allow_arg(&text) {
            Ok(AllowArg::All) => list.extend(AllowArg::all()),
            Ok(AllowArg::Env(var)) => list.extend(env_networks(cf, var)?),
            Ok(AllowArg::Network(c)) => {
                list.push(c);
                if list.len() > MAX_ALLOW {
                    return Err(emerg(cf, format_args!("invalid parameter \"{text}\"")).into());
                }
            }
            Err(e) => return Err(emerg(cf, format_args!("invalid parameter {e}")).into()),
        }
    }
    Ok(())
}

/// The networks listed in the environment variable `var` of a
/// `dyncert_allow env=VAR`.
fn env_networks(cf: &mut ngx_conf_t, var: &str) -> Result<Vec<Cidr>, Refused> {
    // Read once, at configuration time, in the master (whose environment
    // nginx has not cleared). `nginx -s reload` parses the configuration
    // only to find the pid file, often from a shell without the variable:
    // skip it.
    if signaller() {
        return Ok(Vec::new());
    }
    let Ok(value) = std::env::var(var) else {
        return Err(emerg(
            cf,
            format_args!(
                "environment variable \"{var}\" of \"dyncert_allow\" is not set \
                 (and add \"env {var};\" to the main context so workers keep it)"
            ),
        ));
    };
    cidr::parse_list(&value).map_err(|e| {
        emerg(
            cf,
            format_args!("invalid value of environment variable \"{var}\": {e}"),
        )
    })
}

/// This process is `nginx -s SIGNAL`, which reads the configuration only
/// to find the pid file.
fn signaller() -> bool {
    // SAFETY: ngx_process is set by option parsing, before any directive,
    // and only read here.
    let process = unsafe { ngx::ffi::ngx_process };
    process == NGX_PROCESS_SIGNALLER as ngx_uint_t
}

directive!(ngx_http_dyncert_deny_status => deny_status);
/// `dyncert_deny_status CODE;`
fn deny_status(cf: &mut ngx_conf_t, lcf: &mut LocConf, args: &[ngx_str_t]) -> DirectiveResult {
    set_once(cf, &mut lcf.deny_status, || {
        directives::deny_status(args[0].as_bytes()).map(ngx_uint_t::from)
    })
}
