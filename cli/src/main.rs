//! `dyncert`: the operator's command line for the certificate records the
//! module serves. Every record is checked with the module's own code
//! (dyncert-core) before it is written, so what `put` accepts a terminator
//! serves, and what it refuses is refused with the module's reason.
//!
//! Exit status: 0 done; 1 refused or failed (one line on stderr says
//! why); 2 no such record, or a usage error.

mod acme;
mod ask;
mod budget;
mod cert;
mod dns01;
mod due;
mod error;
mod hook;
mod http;
mod keys;
mod lease;
mod metrics;
mod renew;
mod run;
mod schedule;
mod store;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use dyncert_core::directives::{
    self, parse_time_ms, DEFAULT_EXPIRY_INDEX, DEFAULT_INVALIDATE_CHANNEL, DEFAULT_PREFIX,
};
use dyncert_core::fetch::{invalidation_target, RedisTls};
use dyncert_core::validate::KeyLimits;
use serde_json::json;

use cert::{days_left, now_secs, prepare, record_name, show, Input};
use due::Window;
use error::CliError;
use store::{Keys, Store};

#[derive(Parser)]
#[command(
    name = "dyncert",
    version,
    about = "Manage the certificate records dyncert terminators serve from Redis",
    after_help = "Exit status: 0 done, 1 refused or failed, 2 no such record (or a usage error)."
)]
struct Cli {
    /// Redis URL: redis://[user:pass@]host:port[/db], rediss://... (TLS),
    /// unix:/path, sentinel://[user:pass@]s1:26379,s2:26379/SERVICE[/db],
    /// cluster://[user:pass@]n1:7000,n2:7001 (clusters:// over TLS)
    #[arg(
        long,
        global = true,
        env = "DYNCERT_REDIS",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    redis: String,
    /// PEM CA certificates that verify a rediss:// server (instead of the
    /// system's trust store)
    #[arg(long, global = true, env = "DYNCERT_REDIS_CA", value_name = "FILE")]
    redis_ca: Option<PathBuf>,
    /// PEM client certificate for a rediss:// server that asks for one
    #[arg(
        long,
        global = true,
        env = "DYNCERT_REDIS_CERT",
        value_name = "FILE",
        requires = "redis_key"
    )]
    redis_cert: Option<PathBuf>,
    /// PEM private key of --redis-cert (unencrypted)
    #[arg(
        long,
        global = true,
        env = "DYNCERT_REDIS_KEY",
        value_name = "FILE",
        requires = "redis_cert"
    )]
    redis_key: Option<PathBuf>,
    /// Record key prefix (dyncert_redis_prefix)
    #[arg(long, global = true, default_value = DEFAULT_PREFIX)]
    prefix: String,
    /// Most bits of an RSA key a record may hold (dyncert_rsa_max_bits,
    /// 2048 to 16384)
    #[arg(long, global = true, default_value = "4096", value_name = "BITS")]
    rsa_max_bits: String,
    /// Invalidation channel (dyncert_invalidate_channel), or off
    #[arg(long, global = true, default_value = DEFAULT_INVALIDATE_CHANNEL)]
    channel: String,
    /// Expiry index key (dyncert_expiry_index), or off
    #[arg(long, global = true, default_value = DEFAULT_EXPIRY_INDEX)]
    index: String,
    /// A key-encryption key, as dyncert_key_decryption_key ID FILE takes it
    /// (the file: 32 bytes, 64 hex digits or base64 of 32 bytes, not
    /// readable by everyone); repeatable, or comma-separated in the
    /// environment
    #[arg(
        long = "key-encryption-key",
        global = true,
        env = "DYNCERT_KEY_ENCRYPTION_KEYS",
        value_name = "ID=FILE",
        value_delimiter = ','
    )]
    key_encryption_keys: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a certificate and key as the module does, store them,
    /// index the expiry and tell every terminator
    Put {
        /// Host name, or *.parent for a wildcard record
        name: String,
        /// PEM chain, leaf first
        #[arg(long)]
        cert: PathBuf,
        /// PEM private key (unencrypted)
        #[arg(long)]
        key: PathBuf,
        /// Client addresses and CIDRs allowed (the record's allow field)
        #[arg(long, value_name = "CIDRS")]
        allow: Option<String>,
        /// PEM CA certificates client certificates must chain to
        #[arg(long, value_name = "FILE")]
        client_ca: Option<PathBuf>,
        /// A second PEM chain for the name, of the other key type (RSA
        /// beside ECDSA, or ECDSA beside RSA): the record's crt_rsa field
        #[arg(long, value_name = "FILE", requires = "key_rsa")]
        cert_rsa: Option<PathBuf>,
        /// Its PEM private key (unencrypted): the record's key_rsa field
        #[arg(long, value_name = "FILE", requires = "cert_rsa")]
        key_rsa: Option<PathBuf>,
        /// Store the key encrypted under this key id (its key given with
        /// --key-encryption-key), bound to the record's Redis key
        #[arg(long, value_name = "ID")]
        encrypt_with: Option<String>,
    },
    /// Show a record: names, issuer, expiry, fingerprint, policy (never the key)
    Get {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Names from the expiry index, soonest expiry first
    List {
        /// Only those expiring within this time (nginx syntax: 30d, 12h)
        #[arg(long, value_name = "TIME", value_parser = parse_within)]
        expiring: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Delete a record and its index entry, and tell every terminator
    Delete { name: String },
    /// Tell every terminator to drop a name ('*.parent', or '*' for all)
    Invalidate { target: String },
    /// Put every NAME.crt + NAME.key pair of a directory
    Import {
        dir: PathBuf,
        /// Validate and compare only; write nothing
        #[arg(long)]
        dry_run: bool,
        /// Store the keys encrypted under this key id (as put does); every
        /// record is then written again, never "unchanged"
        #[arg(long, value_name = "ID")]
        encrypt_with: Option<String>,
    },
    /// Re-encrypt stored private keys (plain, or under another id given
    /// with --key-encryption-key) under key id --to; a record changed
    /// meanwhile by a put is read again, never overwritten
    Rewrap {
        /// The key id to encrypt under
        #[arg(long, value_name = "ID")]
        to: String,
        /// Records to rewrap
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        names: Vec<String>,
        /// Every record under the prefix
        #[arg(long)]
        all: bool,
    },
    /// Get a certificate from an ACME CA over HTTP-01 (answered by the
    /// terminators from Redis) or DNS-01 (through --dns-hook) and store it
    /// as put does
    Issue {
        /// Host names (*.parent with --dns-01); the first is the record's name
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        acme: AcmeOpts,
    },
    /// Issue again, as issue does, every record of the expiry index that
    /// is due: less than a third of its lifetime left, or notAfter within
    /// --within
    Renew {
        /// Due when notAfter is within this time (nginx syntax: 30d, 12h)
        /// instead of when less than a third of the lifetime is left
        #[arg(long, value_name = "TIME", value_parser = parse_within)]
        within: Option<u64>,
        /// List what is due; order nothing
        #[arg(long)]
        dry_run: bool,
        /// No random jitter (tests)
        #[arg(long, hide = true)]
        no_jitter: bool,
        #[command(flatten)]
        acme: AcmeOpts,
    },
    /// Run as the fleet's issuer: hold a lease in Redis so one instance
    /// is active, renew what is due every --renew-every, and issue for the
    /// names terminators put on the on-demand stream when --ask allows
    Run(Box<RunOpts>),
    /// The expiry index
    Index {
        #[command(subcommand)]
        action: IndexAction,
    },
}

/// The ACME options `issue` and `renew` share.
#[derive(Args)]
struct AcmeOpts {
    /// ACME directory URL
    #[arg(long, value_name = "URL")]
    acme_url: String,
    /// PEM root trusted for the directory's HTTPS (else the system's)
    #[arg(long, value_name = "FILE")]
    acme_ca: Option<PathBuf>,
    /// File keeping the ACME account (else Redis, per directory URL)
    #[arg(long, value_name = "FILE")]
    account_key: Option<PathBuf>,
    /// Contact address of a new account
    #[arg(long, value_name = "E")]
    email: Option<String>,
    /// RSA 2048 certificate key instead of ECDSA P-256 (renew and run:
    /// for every record; without it or --ecdsa, each keeps its key type)
    #[arg(long, conflicts_with = "ecdsa")]
    rsa: bool,
    /// ECDSA P-256 certificate key (issue's default; renew and run: for
    /// every record, RSA ones too)
    #[arg(long)]
    ecdsa: bool,
    /// Key prefix of HTTP-01 answers (dyncert_acme_prefix)
    #[arg(long, default_value = acme::DEFAULT_ACME_PREFIX)]
    acme_prefix: String,
    /// Answer DNS-01 challenges (needed for *.parent) through --dns-hook
    #[arg(long = "dns-01", requires = "dns_hook")]
    dns_01: bool,
    /// Program run as `CMD present FQDN VALUE` and `CMD cleanup FQDN VALUE`
    /// (lego's exec provider interface); implies --dns-01
    #[arg(long, value_name = "CMD")]
    dns_hook: Option<PathBuf>,
    /// A hook run still going after this is killed (nginx syntax: 60s, 2m)
    #[arg(long, value_name = "TIME", default_value = "60s", value_parser = parse_hook_timeout)]
    dns_hook_timeout: u64,
    /// Wait after the last present before the CA validates (real DNS
    /// needs time to reach the authoritative servers)
    #[arg(long, value_name = "TIME", default_value = "0s", value_parser = parse_hook_time)]
    dns_propagation_wait: u64,
    /// Store the new key encrypted under this key id (its key given with
    /// --key-encryption-key); renew keeps an encrypted record's id without it
    #[arg(long, value_name = "ID")]
    encrypt_with: Option<String>,
    /// Longest wait for the CA in each ACME exchange (directory and
    /// account, new order, each authorization and challenge, finalize;
    /// the 90 s polls get twice this on top): a CA that never answers
    /// fails the step (nginx syntax, 1s to 1h)
    #[arg(
        long,
        env = "DYNCERT_ACME_TIMEOUT",
        value_name = "TIME",
        default_value = "30s",
        value_parser = parse_time
    )]
    acme_timeout: u64,
    /// External account binding key id, for a CA that requires EAB
    #[arg(
        long,
        env = "DYNCERT_EAB_KID",
        value_name = "KID",
        requires = "eab_hmac_key"
    )]
    eab_kid: Option<String>,
    /// External account binding MAC key, base64url as the CA gives it
    /// (the environment keeps it out of the process list)
    #[arg(
        long,
        env = "DYNCERT_EAB_HMAC_KEY",
        value_name = "B64URL",
        requires = "eab_kid",
        hide_env_values = true
    )]
    eab_hmac_key: Option<String>,
    /// Lifetime of a name's order lock, extended every third of it while
    /// the order runs (tests shorten it)
    #[arg(
        long,
        hide = true,
        value_name = "TIME",
        default_value = "300s",
        value_parser = parse_time
    )]
    order_lock_ttl: u64,
}

impl AcmeOpts {
    /// An ACME request for `names`, without policy fields.
    /// The option values checked, before Redis is reached.
    fn check(&self) -> Result<(), CliError> {
        directives::key_prefix(self.acme_prefix.as_bytes())
            .map_err(|e| CliError::Input(format!("--acme-prefix: {e}")))?;
        if let (Some(kid), Some(key)) = (&self.eab_kid, &self.eab_hmac_key) {
            dns01::eab_key(kid, key).map_err(CliError::Input)?;
        }
        Ok(())
    }

    fn request(self, names: Vec<String>) -> Result<acme::Request, CliError> {
        let acme_prefix = directives::key_prefix(self.acme_prefix.as_bytes())
            .map_err(|e| CliError::Input(format!("--acme-prefix: {e}")))?;
        let eab = match (&self.eab_kid, &self.eab_hmac_key) {
            (Some(kid), Some(key)) => Some((
                kid.clone(),
                dns01::eab_key(kid, key).map_err(CliError::Input)?,
            )),
            _ => None,
        };
        let dns = self.dns_hook.map(|command| hook::DnsHook {
            command,
            timeout: Duration::from_secs(self.dns_hook_timeout),
            propagation_wait: Duration::from_secs(self.dns_propagation_wait),
        });
        Ok(acme::Request {
            names,
            directory_url: self.acme_url,
            acme_ca: self.acme_ca,
            account_key: self.account_key,
            email: self.email,
            rsa: self.rsa,
            key_type_chosen: self.rsa || self.ecdsa,
            acme_prefix,
            dns,
            eab,
            encrypt_with: self.encrypt_with,
            acme_timeout: Duration::from_millis(self.acme_timeout),
            order_lock_ttl: Duration::from_millis(self.order_lock_ttl),
            ..acme::Request::default()
        })
    }
}

/// `dyncert run`'s options.
#[derive(Args)]
struct RunOpts {
    /// Time between renew passes (nginx syntax: 1h, 30m)
    #[arg(long, value_name = "TIME", default_value = "1h", value_parser = parse_within)]
    renew_every: u64,
    /// Due when notAfter is within this time, as renew --within
    #[arg(long, value_name = "TIME", value_parser = parse_within)]
    within: Option<u64>,
    /// Key of the issuer lease
    #[arg(long, value_name = "KEY", default_value = run::LEASE_KEY_DEFAULT)]
    lease_key: String,
    /// Lifetime of the lease in Redis; renewed every third of it
    #[arg(long, value_name = "TIME", default_value = "15s", value_parser = parse_time)]
    lease_ttl: u64,
    /// Permission endpoint: GET URL?domain=NAME, 2xx allows (http:// only).
    /// Without it every on-demand name is refused
    #[arg(long, value_name = "URL")]
    ask: Option<String>,
    /// Most ask requests per second; names beyond are dropped
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    ask_rate: u32,
    /// Stream terminators add unknown names to
    #[arg(long, value_name = "KEY", default_value = run::ON_DEMAND_STREAM_DEFAULT)]
    on_demand_stream: String,
    /// Serve Prometheus metrics at http://ADDR/metrics
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// New orders per registered domain
    #[arg(long, value_name = "N/PERIOD", default_value = "50/7d", value_parser = budget::parse_limit)]
    max_orders_per_domain: budget::Limit,
    /// New orders per ACME account
    #[arg(long, value_name = "N/PERIOD", default_value = "300/3h", value_parser = budget::parse_limit)]
    max_orders_per_account: budget::Limit,
    #[command(flatten)]
    acme: AcmeOpts,
}

/// A time in milliseconds (nginx syntax), from 1 s to 1 h.
fn parse_time(v: &str) -> Result<u64, String> {
    parse_time_ms(v.as_bytes())
        .filter(|ms| (1000..=3_600_000).contains(ms))
        .ok_or_else(|| format!("invalid time \"{v}\" (nginx syntax, 1s to 1h: 15s, 1m)"))
}

/// `dyncert run`: its options checked, two connections (the lease's and
/// the worker's), then the issuer until a signal.
fn run_issuer(cli: Cli) -> Result<u8, CliError> {
    let Command::Run(opts) = &cli.command else {
        return Ok(0);
    };
    let keys_of = || keys(&cli);
    if keys_of()?.index.is_none() {
        return Err(CliError::Input(
            "dyncert run needs the expiry index (--index off)".into(),
        ));
    }
    let ask = opts
        .ask
        .as_deref()
        .map(ask::AskUrl::parse)
        .transpose()
        .map_err(CliError::Input)?;
    for (opt, key) in [
        ("lease-key", &opts.lease_key),
        ("on-demand-stream", &opts.on_demand_stream),
    ] {
        if key.is_empty() || key.len() > 256 || key.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(CliError::Input(format!(
                "--{opt}: a Redis key of printable characters"
            )));
        }
    }
    if opts.renew_every == 0 {
        return Err(CliError::Input("--renew-every: at least 1s".into()));
    }
    let tls = redis_tls(&cli)?;
    let lease_store = Store::connect(&cli.redis, tls.clone(), keys_of()?)?;
    let work_store = Store::connect(&cli.redis, tls, keys_of()?)?;
    let prefix = keys_of()?.prefix;
    let ring = keys::keyring(&cli.key_encryption_keys)?;
    if let Some(id) = &opts.acme.encrypt_with {
        keys::check_id(&ring, id, "--encrypt-with")?;
    }
    let Command::Run(opts) = cli.command else {
        return Ok(0);
    };
    let cfg = run::Config {
        window: opts.within.map_or(Window::LastThird, Window::Within),
        renew_every: std::time::Duration::from_secs(opts.renew_every),
        lease_key: opts.lease_key,
        lease_ttl_ms: opts.lease_ttl,
        ask,
        ask_rate: opts.ask_rate,
        stream: opts.on_demand_stream,
        metrics: opts.metrics,
        domain_limit: opts.max_orders_per_domain,
        account_limit: opts.max_orders_per_account,
        prefix,
        template: acme::Request {
            key_ring: ring,
            ..opts.acme.request(Vec::new())?
        },
    };
    run::run(lease_store, work_store, cfg)
}

/// Longest `--dns-hook-timeout` and `--dns-propagation-wait`: an hour.
const MAX_HOOK_TIME: u64 = 3600;

/// `--dns-hook-timeout`, `--dns-propagation-wait`: seconds, at most an hour.
fn parse_hook_time(v: &str) -> Result<u64, String> {
    let secs = parse_within(v)?;
    if secs > MAX_HOOK_TIME {
        return Err(format!("\"{v}\" is over the limit of 1h"));
    }
    Ok(secs)
}

/// `--dns-hook-timeout`: as [`parse_hook_time`], and at least a second.
fn parse_hook_timeout(v: &str) -> Result<u64, String> {
    match parse_hook_time(v)? {
        0 => Err(format!("\"{v}\" is under the minimum of 1s")),
        secs => Ok(secs),
    }
}

#[derive(Subcommand)]
enum IndexAction {
    /// Rebuild the index from the records under the prefix
    Rebuild,
}

/// `--expiring`: seconds, from an nginx time (`30d`, `12h`, `1h 30m`).
fn parse_within(v: &str) -> Result<u64, String> {
    parse_time_ms(v.as_bytes())
        .map(|ms| ms / 1000)
        .ok_or_else(|| format!("invalid time \"{v}\" (nginx syntax: 30d, 12h, 90m)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("dyncert: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The option values, checked by the module's directive parsers.
fn keys(cli: &Cli) -> Result<Keys, CliError> {
    let bad = |opt: &str, e: directives::InvalidParameter| CliError::Input(format!("--{opt}: {e}"));
    Ok(Keys {
        prefix: directives::key_prefix(cli.prefix.as_bytes()).map_err(|e| bad("prefix", e))?,
        channel: directives::invalidate_channel(cli.channel.as_bytes())
            .map_err(|e| bad("channel", e))?,
        index: directives::expiry_index(cli.index.as_bytes()).map_err(|e| bad("index", e))?,
    })
}

/// `--redis-ca`, `--redis-cert` and `--redis-key`, checked as the
/// module's `dyncert_redis_tls_*` directives check them.
fn redis_tls(cli: &Cli) -> Result<RedisTls, CliError> {
    let read = |opt: &str, p: &Path| {
        std::fs::read(p)
            .map_err(|e| CliError::Input(format!("--{opt}: cannot read \"{}\": {e}", p.display())))
    };
    let mut tls = RedisTls::default();
    if let Some(ca) = &cli.redis_ca {
        let pem = read("redis-ca", ca)?;
        if !directives::has_pem_certificate(&pem) {
            return Err(CliError::Input(format!(
                "--redis-ca: no PEM certificate in \"{}\"",
                ca.display()
            )));
        }
        tls.ca = Some(pem);
    }
    if let (Some(cert), Some(key)) = (&cli.redis_cert, &cli.redis_key) {
        let (c, k) = (read("redis-cert", cert)?, read("redis-key", key)?);
        tls.client = Some(
            directives::redis_client_certificate(&c, &k)
                .map_err(|e| CliError::Input(format!("--redis-cert/--redis-key: {e}")))?,
        );
    }
    if !tls.is_empty() {
        let opt = if tls.ca.is_some() {
            "--redis-ca"
        } else {
            "--redis-cert"
        };
        directives::check_redis_tls(&cli.redis, opt)
            .map_err(|e| CliError::Input(e.replace("\"dyncert_redis\"", "--redis")))?;
    }
    Ok(tls)
}

fn run(cli: Cli) -> Result<u8, CliError> {
    // Every record the CLI validates (put, import, issue, renew, run) is
    // held to the module's key bounds.
    KeyLimits {
        rsa_max_bits: directives::rsa_max_bits(cli.rsa_max_bits.as_bytes())
            .map_err(|e| CliError::Input(format!("--rsa-max-bits: {e}")))?,
    }
    .install();
    if matches!(cli.command, Command::Run(_)) {
        return run_issuer(cli);
    }
    let keys = keys(&cli)?;
    // Arguments are checked before Redis is reached.
    match &cli.command {
        Command::Put { name, .. } | Command::Get { name, .. } | Command::Delete { name } => {
            record_name(name)?;
        }
        Command::Invalidate { target } => {
            invalidation_target(target.as_bytes()).ok_or_else(|| {
                CliError::Input(format!(
                    "invalid target \"{}\": a host name, *.parent or *",
                    target.escape_default()
                ))
            })?;
        }
        Command::Issue { names, acme } => {
            let names = issue_names(names)?;
            if let Some(why) = dns01::wildcard_refusal(&names, acme.dns_hook.is_some()) {
                return Err(CliError::Input(why));
            }
            acme.check()?;
        }
        Command::Renew { acme, .. } => acme.check()?,
        Command::Rewrap { names, .. } => {
            for n in names {
                record_name(n)?;
            }
        }
        _ => {}
    }
    let ring = keys::keyring(&cli.key_encryption_keys)?;
    match &cli.command {
        Command::Put {
            encrypt_with: Some(id),
            ..
        }
        | Command::Import {
            encrypt_with: Some(id),
            ..
        } => keys::check_id(&ring, id, "--encrypt-with")?,
        Command::Rewrap { to, .. } => keys::check_id(&ring, to, "--to")?,
        Command::Issue { acme, .. } | Command::Renew { acme, .. } => {
            if let Some(id) = &acme.encrypt_with {
                keys::check_id(&ring, id, "--encrypt-with")?;
            }
        }
        _ => {}
    }
    let prefix = keys.prefix.clone();
    let tls = redis_tls(&cli)?;
    let mut store = Store::connect(&cli.redis, tls, keys)?;
    match cli.command {
        Command::Put {
            name,
            cert,
            key,
            allow,
            cert_rsa,
            key_rsa,
            client_ca,
            encrypt_with,
        } => {
            let name = record_name(&name)?;
            let input = Input {
                crt: &cert,
                key: &key,
                allow: allow.as_deref(),
                client_ca: client_ca.as_deref(),
                second: cert_rsa.as_deref().zip(key_rsa.as_deref()),
            };
            let mut p = prepare(&name, &input, now_secs())?;
            if let Some(id) = &encrypt_with {
                keys::seal_prepared(&mut p, &prefix, id, &ring)?;
            }
            store.put(&p)?;
            let (said, failed) = publish(&mut store, &name);
            println!(
                "stored \"{name}\": notAfter {} ({} days left); {said}",
                dyncert_core::timefmt::rfc3339(p.not_after.max(0) as u64),
                days_left(p.not_after, now_secs()),
            );
            Ok(after_publish(&name, failed))
        }
        Command::Get { name, json } => {
            let name = record_name(&name)?;
            get(&mut store, &name, json, &keys::aad(&prefix, &name), &ring)
        }
        Command::List { expiring, json } => list(&mut store, expiring, json),
        Command::Delete { name } => {
            let name = record_name(&name)?;
            if !store.delete(&name)? {
                return Err(CliError::Absent(name));
            }
            let (said, failed) = publish(&mut store, &name);
            println!("deleted \"{name}\"; {said}");
            Ok(after_publish(&name, failed))
        }
        Command::Invalidate { target } => {
            let target = invalidation_target(target.as_bytes()).unwrap_or_default();
            match store.invalidate(&target)? {
                Some(n) => {
                    println!("invalidated \"{target}\"; {}", published(&store, Some(n)));
                    Ok(0)
                }
                None => Err(CliError::Input(
                    "the invalidation channel is off (--channel off): nothing to publish on".into(),
                )),
            }
        }
        Command::Import {
            dir,
            dry_run,
            encrypt_with,
        } => {
            let seal = encrypt_with
                .as_deref()
                .map(|id| (prefix.as_str(), id, &ring));
            import(&mut store, &dir, dry_run, seal)
        }
        Command::Rewrap { to, names, all } => {
            let names = if all {
                store.record_names()?
            } else {
                names
                    .iter()
                    .map(|n| record_name(n))
                    .collect::<Result<_, _>>()?
            };
            rewrap(&mut store, &prefix, &names, &to, &ring)
        }
        Command::Issue { names, acme } => {
            let req = acme::Request {
                key_ring: ring.clone(),
                ..acme.request(issue_names(&names)?)?
            };
            let p = acme::issue(&mut store, &req)?;
            let (said, failed) = publish(&mut store, &p.name);
            println!(
                "issued and stored \"{}\" ({}): notAfter {} ({} days left); {said}",
                p.name,
                req.names.join(", "),
                dyncert_core::timefmt::rfc3339(p.not_after.max(0) as u64),
                days_left(p.not_after, now_secs()),
            );
            Ok(after_publish(&p.name, failed))
        }
        Command::Renew {
            within,
            dry_run,
            no_jitter,
            acme,
        } => {
            let opts = renew::Options {
                window: within.map_or(Window::LastThird, Window::Within),
                dry_run,
                jitter: !no_jitter,
            };
            let template = acme::Request {
                key_ring: ring.clone(),
                ..acme.request(Vec::new())?
            };
            renew::renew(&mut store, &opts, &template)
        }
        Command::Run(_) => Ok(0),
        Command::Index {
            action: IndexAction::Rebuild,
        } => {
            let r = store.rebuild_index()?;
            println!(
                "index rebuilt: {} names indexed, {} keys skipped (no readable certificate)",
                r.indexed, r.skipped
            );
            Ok(0)
        }
    }
}

/// The names of `issue`, normalised as the module normalises an SNI
/// (`*.parent` as `put` takes it), without repeats. Whether a wildcard
/// may be ordered is the challenge's business (`acme::issue` refuses it
/// without DNS-01).
fn issue_names(raw: &[String]) -> Result<Vec<String>, CliError> {
    let mut names: Vec<String> = Vec::new();
    for n in raw {
        let name = record_name(n)?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Publishes `name` after a write that is done: the fragment for the
/// command's line, and the Redis error when the publish failed. The write
/// stands and is reported as done whatever the publish does; the caller
/// warns (see [`unpublished_warning`]) and exits 1, since terminators keep
/// what they cached.
pub(crate) fn publish(store: &mut Store, name: &str) -> (String, Option<CliError>) {
    match store.invalidate(name) {
        Ok(sent) => (published(store, sent), None),
        Err(e) => ("invalidation not published".to_owned(), Some(e)),
    }
}

/// The warning line of a write whose invalidation was not published.
pub(crate) fn unpublished_warning(name: &str, e: &CliError) -> String {
    format!(
        "dyncert: warning: \"{name}\": the invalidation was not published ({e}); terminators \
         keep what they cached until it expires: run dyncert invalidate '{name}'"
    )
}

/// Exit status after a write: 0, or 1 with the warning when its
/// invalidation was not published.
fn after_publish(name: &str, failed: Option<CliError>) -> u8 {
    match failed {
        None => 0,
        Some(e) => {
            eprintln!("{}", unpublished_warning(name, &e));
            error::EXIT_FAILED
        }
    }
}

fn published(store: &Store, listeners: Option<i64>) -> String {
    match (store.channel(), listeners) {
        (Some(c), Some(n)) => format!("invalidation published on \"{c}\" ({n} listeners)"),
        _ => "no invalidation published (--channel off)".to_owned(),
    }
}

fn get(
    store: &mut Store,
    name: &str,
    as_json: bool,
    aad: &str,
    ring: &dyncert_core::keywrap::Keyring,
) -> Result<u8, CliError> {
    let mut fields = store.fields(name)?;
    if fields.is_empty() {
        return Err(CliError::Absent(name.to_owned()));
    }
    // An encrypted key is checked with the keys given, as a terminator
    // with those keys would; without them, the refusal says so.
    let mut key_refusal = None;
    for field in keys::KEY_FIELDS {
        if let Some(v) = fields.get_mut(field) {
            if dyncert_core::keywrap::is_envelope(v) {
                match dyncert_core::keywrap::open(v, aad.as_bytes(), ring) {
                    Ok(plain) => *v = plain,
                    Err(e) => key_refusal = Some(format!("{} ({})", e.reason(), e.label())),
                }
            }
        }
    }
    let now = now_secs();
    let mut s = show(name, &fields, now);
    if key_refusal.is_some() {
        s.refused = key_refusal;
    }
    if as_json {
        let leaf = s.leaf.as_ref();
        let v = json!({
            "name": name,
            "subject": leaf.map(|l| l.subject.clone()),
            "sans": leaf.map(|l| l.sans.clone()),
            "issuer": leaf.map(|l| l.issuer.clone()),
            "not_after": leaf.map(|l| l.not_after_rfc3339()),
            "days_left": leaf.map(|l| days_left(l.not_after, now)),
            "sha256": leaf.map(|l| l.sha256.clone()),
            "allow": s.allow,
            "client_ca": s.client_ca,
            "forms": s.forms,
            "valid": s.refused.is_none(),
            "refused": s.refused,
        });
        println!("{v:#}");
        return Ok(0);
    }
    println!("name:       {name}");
    match &s.leaf {
        Some(l) => {
            println!("subject:    {}", l.subject);
            println!("sans:       {}", l.sans.join(", "));
            println!("issuer:     {}", l.issuer);
            println!("not_after:  {}", l.not_after_rfc3339());
            println!("days_left:  {}", days_left(l.not_after, now));
            println!("sha256:     {}", l.sha256);
        }
        None => println!("leaf:       unreadable"),
    }
    println!("allow:      {}", s.allow.as_deref().unwrap_or("-"));
    println!(
        "client_ca:  {}",
        if s.client_ca { "set" } else { "not set" }
    );
    println!("forms:      {}", s.forms.join(", "));
    match &s.refused {
        None => println!("status:     valid"),
        Some(why) => println!("status:     refused: {why}"),
    }
    Ok(0)
}

fn list(store: &mut Store, within: Option<u64>, as_json: bool) -> Result<u8, CliError> {
    let now = now_secs();
    let until = within.map(|w| now.saturating_add(w.min(i64::MAX as u64) as i64));
    let entries = store.expiring(until)?;
    if as_json {
        let v: Vec<_> = entries
            .iter()
            .map(|(name, t)| {
                json!({
                    "name": name,
                    "not_after": dyncert_core::timefmt::rfc3339((*t).max(0) as u64),
                    "days_left": days_left(*t, now),
                })
            })
            .collect();
        println!("{:#}", serde_json::Value::Array(v));
        return Ok(0);
    }
    let width = entries
        .iter()
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!("{:width$}  {:20}  DAYS_LEFT", "NAME", "NOT_AFTER");
    for (name, t) in &entries {
        println!(
            "{name:width$}  {:20}  {}",
            dyncert_core::timefmt::rfc3339((*t).max(0) as u64),
            days_left(*t, now)
        );
    }
    Ok(0)
}

/// `rewrap --to ID`: each record in turn; one line each, the refusals on
/// stderr (the key bytes never), exit 1 when any was refused.
fn rewrap(
    store: &mut Store,
    prefix: &str,
    names: &[String],
    to: &str,
    ring: &dyncert_core::keywrap::Keyring,
) -> Result<u8, CliError> {
    let (mut done, mut already, mut failed) = (0, 0, 0);
    for name in names {
        match keys::rewrap(store, prefix, name, to, ring) {
            Ok(keys::Rewrapped::Done(fields)) => {
                done += 1;
                eprintln!("{name}: rewrapped {} under \"{to}\"", fields.join(", "));
            }
            Ok(keys::Rewrapped::Already) => {
                already += 1;
                eprintln!("{name}: already under \"{to}\"");
            }
            Err(e @ CliError::Redis(_)) => return Err(e),
            Err(e) => {
                failed += 1;
                eprintln!("{name}: refused: {}", e.reason());
            }
        }
    }
    println!("rewrapped {done}, already under \"{to}\" {already}, refused {failed}");
    Ok(if failed > 0 { 1 } else { 0 })
}

/// How `import --encrypt-with` seals: the record prefix, the id, the keys.
type Seal<'a> = Option<(&'a str, &'a str, &'a dyncert_core::keywrap::Keyring)>;

/// `import DIR`: each `NAME.crt` with its `NAME.key`, in name order.
fn import(store: &mut Store, dir: &Path, dry_run: bool, seal: Seal<'_>) -> Result<u8, CliError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| CliError::Input(format!("cannot read {}: {e}", dir.display())))?;
    let mut stems: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            let stem = file.strip_suffix(".crt")?;
            (!stem.is_empty()).then(|| stem.to_owned())
        })
        .collect();
    stems.sort();
    let (mut imported, mut unchanged, mut refused) = (0, 0, 0);
    // Imported records whose invalidation was not published: a run again
    // would find them unchanged and never publish them.
    let mut unpublished = 0;
    let total = stems.len();
    for (i, stem) in stems.iter().enumerate() {
        let crt = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        let outcome = import_one(store, stem, &crt, &key, dry_run, seal, &mut unpublished);
        let what = match outcome {
            Ok(true) => {
                imported += 1;
                if dry_run {
                    "would import"
                } else {
                    "imported"
                }
            }
            Ok(false) => {
                unchanged += 1;
                "unchanged"
            }
            // Redis trouble stops the import: the rest would fail alike.
            Err(e @ CliError::Redis(_)) => return Err(e),
            Err(e) => {
                refused += 1;
                eprintln!("[{}/{total}] {stem}.crt: refused: {}", i + 1, e.reason());
                continue;
            }
        };
        eprintln!("[{}/{total}] {stem}: {what}", i + 1);
    }
    println!(
        "{}imported {imported}, unchanged {unchanged}, refused {refused}",
        if dry_run { "dry run: would have " } else { "" }
    );
    Ok(if refused > 0 || unpublished > 0 { 1 } else { 0 })
}

/// Ok(true): written (or would be); Ok(false): already identical, not
/// written and not published. Written but not published is Ok(true), a
/// warning, and one more `unpublished`.
fn import_one(
    store: &mut Store,
    stem: &str,
    crt: &Path,
    key: &Path,
    dry_run: bool,
    seal: Seal<'_>,
    unpublished: &mut usize,
) -> Result<bool, CliError> {
    let name = record_name(stem)?;
    if !key.is_file() {
        return Err(CliError::Input(format!("no {stem}.key beside {stem}.crt")));
    }
    let input = Input {
        crt,
        key,
        allow: None,
        client_ca: None,
        second: None,
    };
    let mut p = prepare(&name, &input, now_secs())?;
    if let Some((prefix, id, ring)) = seal {
        keys::seal_prepared(&mut p, prefix, id, ring)?;
    }
    if store.is_current(&p)? {
        return Ok(false);
    }
    if !dry_run {
        store.put(&p)?;
        if let (_, Some(e)) = publish(store, &name) {
            eprintln!("{}", unpublished_warning(&name, &e));
            *unpublished += 1;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `--rsa-max-bits` defaults to the module's own default, which the
    /// attribute can only spell as a literal.
    #[test]
    fn the_rsa_max_bits_default_is_the_modules() {
        let default = Cli::command()
            .get_arguments()
            .find(|a| a.get_id() == "rsa_max_bits")
            .and_then(|a| a.get_default_values().first().cloned())
            .expect("--rsa-max-bits has a default");
        assert_eq!(
            default.to_str(),
            Some(
                dyncert_core::validate::DEFAULT_RSA_MAX_BITS
                    .to_string()
                    .as_str()
            )
        );
    }

    /// Every variable an option is read from is kept from the DNS hook: a
    /// new one (a secret, say) cannot be forgotten there.
    #[test]
    fn the_dns_hook_gets_none_of_the_variables_dyncert_reads() {
        fn walk(cmd: &clap::Command, found: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if let Some(var) = arg.get_env() {
                    found.push(var.to_string_lossy().into_owned());
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, found);
            }
        }
        let mut found = Vec::new();
        walk(&Cli::command(), &mut found);
        found.sort();
        found.dedup();
        let mut cleared = hook::CLEARED_ENV.map(str::to_owned).to_vec();
        cleared.sort();
        assert_eq!(found, cleared);
    }
}
