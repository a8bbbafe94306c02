//! `issue`: an ACME order over HTTP-01 whose challenges are answered by
//! the terminators themselves (`dyncert_acme_challenge on;` reads
//! `<acme-prefix><token>` from Redis), or over DNS-01 through a hook
//! program that sets the TXT record; then the certificate is stored
//! exactly as `put` stores it.
//!
//! The order of steps matters: an answer is written to Redis (or the hook's
//! `present` has returned) before the CA is told the challenge is ready (a
//! CA validates at once, and a 404 is remembered by the module for 2 s),
//! and every answer written is deleted again (every `present` is followed
//! by its `cleanup`) whatever happened after it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    ExternalAccountKey, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::{hash, MessageDigest};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::stack::Stack;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509NameBuilder, X509ReqBuilder};

use crate::cert::{now_secs, prepare_bytes, Prepared};
use crate::dns01::{challenge_fqdn, wildcard_refusal};
use crate::due::already_replaced;
use crate::error::CliError;
use crate::hook::DnsHook;
use crate::store::{Expect, Remote, Store};
use dyncert_core::keywrap::{self, Keyring};

/// Key prefix of HTTP-01 answers: the module's `dyncert_acme_prefix`
/// default.
pub use dyncert_core::directives::DEFAULT_ACME_PREFIX;
/// Where an account is kept when no `--account-key` is given; the
/// directory URL's SHA-256 follows, so each CA has its own.
const ACCOUNT_PREFIX: &str = "dyncert:acme-account:";
/// Lifetime of an answer in Redis: longer than any validation, short
/// enough that one left behind by a killed run goes away by itself.
const CHALLENGE_TTL: u64 = 600;
/// How long the CA may take to validate every name, and then to issue.
const DEADLINE: Duration = Duration::from_secs(90);
/// `--acme-timeout`'s default: the longest wait for the CA's answer in
/// one exchange.
const DEFAULT_ACME_TIMEOUT: Duration = Duration::from_secs(30);

/// What `dyncert issue` was asked for (and what `renew` asks for each
/// due record). `Default` is HTTP-01 with the default prefix and no
/// names or URL: set those, and whatever else differs.
#[derive(Clone)]
pub struct Request {
    /// Normalised host names; the first is the record's name.
    pub names: Vec<String>,
    pub directory_url: String,
    pub acme_ca: Option<PathBuf>,
    pub account_key: Option<PathBuf>,
    pub email: Option<String>,
    pub rsa: bool,
    /// `rsa` was asked for (--rsa or --ecdsa): `renew` then uses it for
    /// every record, instead of the key type each record has.
    pub key_type_chosen: bool,
    pub acme_prefix: String,
    /// The record's `allow` and `client_ca` fields, stored with the new
    /// certificate (`renew` keeps the renewed record's policy).
    pub allow: Option<Vec<u8>>,
    pub client_ca: Option<Vec<u8>>,
    /// DNS-01 through this hook instead of HTTP-01 (and wildcards allowed).
    pub dns: Option<DnsHook>,
    /// External account binding of a new account: key id and raw MAC key.
    pub eab: Option<(String, Vec<u8>)>,
    /// The certificate this order replaces (ARI, RFC 9773 section 5), set
    /// by `renew` when the CA gave a renewal window for it.
    pub replaces: Option<CertificateIdentifier<'static>>,
    /// Store the new key encrypted under this key id (of `key_ring`).
    pub encrypt_with: Option<String>,
    /// The keys of `--key-encryption-key`: for `encrypt_with`, and for
    /// `renew` to keep a record encrypted under the id it had.
    pub key_ring: Keyring,
    /// Store the new certificate only while the record is still as it
    /// was when the order was decided (`None`: replace whatever is there,
    /// as `dyncert issue` does); otherwise [`CliError::Changed`].
    pub expect: Option<Expect>,
    /// Bound on each exchange with the CA (`--acme-timeout`).
    pub acme_timeout: Duration,
    /// Lifetime of the name's order lock, extended while the order runs
    /// (`--order-lock-ttl`, hidden: tests shorten it).
    pub order_lock_ttl: Duration,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            names: Vec::new(),
            directory_url: String::new(),
            acme_ca: None,
            account_key: None,
            email: None,
            rsa: false,
            key_type_chosen: false,
            acme_prefix: DEFAULT_ACME_PREFIX.to_owned(),
            allow: None,
            client_ca: None,
            dns: None,
            eab: None,
            replaces: None,
            encrypt_with: None,
            key_ring: Keyring::new(),
            expect: None,
            acme_timeout: DEFAULT_ACME_TIMEOUT,
            order_lock_ttl: ORDER_LOCK_TTL,
        }
    }
}

/// What the challenges of one order left behind, to undo.
#[derive(Default)]
struct Answers {
    /// HTTP-01: Redis keys set.
    keys: Vec<String>,
    /// DNS-01: (identifier, FQDN, value) of every `present` run.
    txt: Vec<(String, String, String)>,
}

/// Keys `dyncert:order-lock:<record name>`: held while an order for the
/// name runs, by whichever process runs it (`issue`, `renew`, `run`).
pub const ORDER_LOCK_PREFIX: &str = "dyncert:order-lock:";
/// An order lock's lifetime: a process that dies holding one delays the
/// name at most this. A live holder extends it every third of it for as
/// long as its order runs (an order may take far longer: DNS hooks and a
/// propagation wait of up to an hour each, `--acme-timeout` per step).
pub const ORDER_LOCK_TTL: Duration = Duration::from_secs(300);
/// Deletes KEYS[1] only while it still holds ARGV[1] (a lock or lease
/// released by its holder only).
pub const RELEASE_LUA: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('DEL', KEYS[1]) else return 0 end";
/// Extends KEYS[1] to ARGV[2] ms only while it still holds ARGV[1]: 1
/// extended, 0 another holder's, -1 gone (expired).
const EXTEND_LUA: &str = "local v = redis.call('GET', KEYS[1]) \
    if v == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end \
    if v then return 0 end return -1";

/// The fleet-wide lock on ordering one name: never two orders for a name
/// in flight at once, whoever starts them.
pub struct OrderLock {
    key: String,
    token: String,
    ttl: Duration,
}

/// Whose an order lock is, as [`EXTEND_LUA`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    /// Still ours: extended by its ttl from now.
    Us,
    /// Another process's (ours expired, and it took the name).
    Another,
    /// Nobody's: ours expired.
    Nobody,
}

impl OrderLock {
    /// Takes the lock on `name` for `ttl`; `None` when another process
    /// holds it.
    pub fn acquire(
        store: &mut Store,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<OrderLock>, CliError> {
        let mut b = [0u8; 12];
        openssl::rand::rand_bytes(&mut b)
            .map_err(|e| CliError::Acme(format!("random lock token: {e}")))?;
        let token: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let key = format!("{ORDER_LOCK_PREFIX}{name}");
        let got: Option<String> = store.q(redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .clone())?;
        Ok(got.map(|_| OrderLock { key, token, ttl }))
    }

    /// Releases the lock if it is still this holder's.
    pub fn release(self, store: &mut Store) -> Result<(), CliError> {
        let _: i64 = store.q(redis::cmd("EVAL")
            .arg(RELEASE_LUA)
            .arg(1)
            .arg(&self.key)
            .arg(&self.token)
            .clone())?;
        Ok(())
    }

    fn extend_cmd(&self) -> redis::Cmd {
        redis::cmd("EVAL")
            .arg(EXTEND_LUA)
            .arg(1)
            .arg(&self.key)
            .arg(&self.token)
            .arg(self.ttl.as_millis() as u64)
            .clone()
    }

    fn holder(answer: i64) -> Holder {
        match answer {
            1 => Holder::Us,
            0 => Holder::Another,
            _ => Holder::Nobody,
        }
    }

    /// Extends the lock by its ttl if it is still ours, else says what
    /// became of it: [`CliError::Busy`] when another process took the name
    /// (it orders the name now), [`CliError::LockLost`] when it expired.
    /// Called before each step that must happen once per name (finalize,
    /// the store): right after it, the lock is ours for a whole ttl.
    fn still_ours(&self, store: &Store, first: &str, doing: &str) -> Result<(), CliError> {
        match Self::holder(store.q(self.extend_cmd())?) {
            Holder::Us => Ok(()),
            Holder::Another => Err(CliError::Busy(format!(
                "issue \"{first}\": an order for it is in flight elsewhere: the order lock \
                 ({}) passed to another process during this order, so it stops before {doing}",
                self.key
            ))),
            Holder::Nobody => Err(CliError::LockLost(format!(
                "issue \"{first}\": the order lock ({}) expired during this order (Redis \
                 unreachable for longer than {} s?), so it stops before {doing}",
                self.key,
                self.ttl.as_secs()
            ))),
        }
    }

    /// Extends the lock every third of its ttl until `stop` says the order
    /// ended (or is dropped), through a handle of its own: the order's
    /// thread blocks for minutes in DNS hooks, propagation waits and CA
    /// exchanges. Stops extending once the lock is not ours; a Redis error
    /// is tried again at the next tick (the lock outlives two misses).
    fn keep(&self, remote: &Remote, stop: &mpsc::Receiver<()>) {
        let every = (self.ttl / 3).max(Duration::from_millis(100));
        while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
            match remote.q::<i64>(self.extend_cmd()).map(Self::holder) {
                Ok(Holder::Us) | Err(_) => {}
                Ok(Holder::Another | Holder::Nobody) => return,
            }
        }
    }
}

/// Runs the whole order and returns the validated record, already stored.
/// The one issuance path: `issue`, `renew` and `run` all come here. It
/// holds the name's [`OrderLock`] throughout; when another process holds
/// it, nothing is ordered and the answer is [`CliError::Busy`]. The lock
/// not released (a Redis error once the order is over) is a warning: it
/// expires by itself, and a stored certificate stays stored.
pub fn issue(store: &mut Store, req: &Request) -> Result<Prepared, CliError> {
    let first = req.names.first().cloned().unwrap_or_default();
    let Some(lock) = OrderLock::acquire(store, &first, req.order_lock_ttl)? else {
        return Err(CliError::Busy(format!(
            "issue \"{first}\": an order for it is in flight elsewhere ({ORDER_LOCK_PREFIX}{first} is held)"
        )));
    };
    let ttl = lock.ttl;
    let outcome = issue_locked(store, req, &lock);
    if let Err(e) = lock.release(store) {
        eprintln!("{}", unreleased_warning(&first, ttl, &e));
    }
    outcome
}

/// The warning line for an order lock left behind by a Redis error.
pub fn unreleased_warning(first: &str, ttl: Duration, e: &CliError) -> String {
    format!(
        "dyncert: warning: issue \"{first}\": the order lock ({ORDER_LOCK_PREFIX}{first}) was \
         not released ({e}); it expires within {} s",
        ttl.as_secs()
    )
}

/// [`issue`] for a caller that holds the name's lock already.
/// A thread keeps the lock extended while the order runs, and the order
/// checks that it is still ours before it finalizes and before it stores:
/// an order that lost its lock (its process stalled, Redis was away for
/// most of a ttl) stops, so two orders for one name never both finish.
pub fn issue_locked(
    store: &mut Store,
    req: &Request,
    lock: &OrderLock,
) -> Result<Prepared, CliError> {
    let rt = runtime()?;
    let remote = store.remote()?;
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(move || lock.keep(&remote, &stopped));
        let outcome = rt.block_on(issue_async(store, req, lock));
        drop(stop);
        outcome
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Acme(format!("cannot start the ACME client: {e}")))
}

/// The CA's suggested renewal window for the certificate `id` (ARI, RFC
/// 9773), as UNIX seconds (start, end); `None` when the CA's directory
/// offers no `renewalInfo`.
pub fn renewal_window(
    store: &mut Store,
    req: &Request,
    id: &CertificateIdentifier<'_>,
) -> Result<Option<(i64, i64)>, CliError> {
    let t = req.acme_timeout;
    runtime()?.block_on(async {
        let account = bounded(req, "renewal information: account", t, account(store, req))
            .await?
            .map_err(|e| match e {
                AccountError::Acme(e) => CliError::Acme(format!("account: {}", describe(&e))),
                AccountError::Cli(e) => e,
            })?;
        match bounded(req, "renewal information", t, account.renewal_info(id)).await? {
            Ok((info, _)) => Ok(Some((
                info.suggested_window.start.unix_timestamp(),
                info.suggested_window.end.unix_timestamp(),
            ))),
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(CliError::Acme(format!(
                "renewal information: {}",
                describe(&e)
            ))),
        }
    })
}

async fn issue_async(
    store: &mut Store,
    req: &Request,
    lock: &OrderLock,
) -> Result<Prepared, CliError> {
    let Some(first) = req.names.first().map(String::as_str) else {
        return Err(CliError::Input("issue: no name given".to_owned()));
    };
    if let Some(why) = wildcard_refusal(&req.names, req.dns.is_some()) {
        return Err(CliError::Input(why));
    }
    let fail = |step: &str, e: instant_acme::Error| {
        CliError::Acme(format!("issue \"{first}\": {step}: {}", describe(&e)))
    };
    let what = |step: &str| format!("issue \"{first}\": {step}");
    let t = req.acme_timeout;
    let account = bounded(req, &what("account"), t, account(store, req))
        .await?
        .map_err(|e| match e {
            AccountError::Acme(e) => fail("account", e),
            AccountError::Cli(e) => e,
        })?;

    let identifiers: Vec<Identifier> = req
        .names
        .iter()
        .map(|n| Identifier::Dns(n.clone()))
        .collect();
    let mut new_order = NewOrder::new(&identifiers);
    if let Some(old) = &req.replaces {
        new_order = new_order.replaces(old.clone());
    }
    let placed = bounded(req, &what("new order"), t, account.new_order(&new_order)).await?;
    let mut order = match placed {
        // The old certificate was replaced already (an earlier run that
        // failed later): order afresh, as RFC 9773 section 5 allows.
        Err(instant_acme::Error::Api(p))
            if req.replaces.is_some() && already_replaced(p.r#type.as_deref()) =>
        {
            let afresh = NewOrder::new(&identifiers);
            bounded(req, &what("new order"), t, account.new_order(&afresh)).await?
        }
        other => other,
    }
    .map_err(|e| fail("new order", e))?;

    let mut answers = Answers::default();
    let validated = answer_challenges(store, &mut order, req, &mut answers).await;
    // Answers go whatever happened: a stale one must not linger for the
    // next order's CA to find (nor a token be guessable from Redis).
    let cleaned = store.delete_keys(&answers.keys);
    if let Some(hook) = &req.dns {
        for (name, fqdn, value) in &answers.txt {
            // The certificate is worth more than a stale TXT record: a
            // failed cleanup is said, not fatal.
            if let Err(why) = hook.run("cleanup", name, fqdn, value) {
                eprintln!("dyncert: warning: issue \"{first}\": {why}");
            }
        }
    }
    validated?;
    cleaned?;

    let key = new_key(req.rsa)
        .map_err(|e| CliError::Acme(format!("issue \"{first}\": key generation: {e}")))?;
    let csr = csr(&key, &req.names)
        .map_err(|e| CliError::Acme(format!("issue \"{first}\": CSR: {e}")))?;
    // A certificate is issued at most once per order lock: one that
    // passed to another process means that process orders the name.
    lock.still_ours(store, first, "finalize")?;
    bounded(req, &what("finalize"), t, order.finalize_csr(&csr))
        .await?
        .map_err(|e| fail("finalize", e))?;
    let retries = retry_policy();
    let polled = order.poll_certificate(&retries);
    let chain = bounded(req, &what("certificate download"), poll_bound(t), polled)
        .await?
        .map_err(|e| fail("certificate download", e))?;
    let key_pem = key
        .private_key_to_pem_pkcs8()
        .map_err(|e| CliError::Acme(format!("issue \"{first}\": key encoding: {e}")))?;

    let mut prepared = prepare_bytes(
        first,
        chain.into_bytes(),
        key_pem,
        req.allow.clone(),
        req.client_ca.clone(),
        now_secs(),
    )?;
    if let Some(id) = &req.encrypt_with {
        let prefix = store.prefix().to_owned();
        crate::keys::seal_prepared(&mut prepared, &prefix, id, &req.key_ring)?;
    }
    // Checked (and extended by a whole ttl) right before the write: the
    // record and the lock are in different hash slots in a Cluster, so
    // not in one script, but nothing else is done between the two.
    lock.still_ours(store, first, "storing the certificate")?;
    match &req.expect {
        None => store.put(&prepared)?,
        Some(expect) => {
            if !store.put_if(&prepared, expect)? {
                return Err(CliError::Changed(
                    "the record changed while the certificate was ordered; it is kept \
                     and the new certificate is not stored"
                        .to_owned(),
                ));
            }
        }
    }
    Ok(prepared)
}

/// Writes each pending HTTP-01 answer (or runs the DNS hook's
/// `present`), tells the CA, and waits for the order to be ready.
/// `answers` collects what to undo. With a DNS propagation wait, the CA
/// is told only after the wait, in a second pass over the authorizations.
async fn answer_challenges(
    store: &mut Store,
    order: &mut instant_acme::Order,
    req: &Request,
    answers: &mut Answers,
) -> Result<(), CliError> {
    let first = req.names[0].as_str();
    let fail = |step: &str, e: instant_acme::Error| {
        CliError::Acme(format!("issue \"{first}\": {step}: {}", describe(&e)))
    };
    let what = |step: &str| format!("issue \"{first}\": {step}");
    let t = req.acme_timeout;
    let (kind, kind_name) = match req.dns {
        Some(_) => (ChallengeType::Dns01, "dns-01"),
        None => (ChallengeType::Http01, "http-01"),
    };
    let wait = req
        .dns
        .as_ref()
        .map_or(Duration::ZERO, |h| h.propagation_wait);
    let mut authorizations = order.authorizations();
    while let Some(authz) = bounded(req, &what("authorization"), t, authorizations.next()).await? {
        let mut authz = authz.map_err(|e| fail("authorization", e))?;
        let name = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                let why = format!("authorization of \"{name}\" is {other:?}");
                return Err(CliError::Acme(format!("issue \"{first}\": {why}")));
            }
        }
        let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
            CliError::Acme(format!(
                "issue \"{first}\": the CA offers no {kind_name} challenge for \"{name}\""
            ))
        })?;
        let answer = challenge.key_authorization();
        match &req.dns {
            None => {
                let key = format!("{}{}", req.acme_prefix, challenge.token);
                store.set_expiring(&key, answer.as_str(), CHALLENGE_TTL)?;
                answers.keys.push(key);
            }
            Some(hook) => {
                let (fqdn, value) = (challenge_fqdn(&name), answer.dns_value());
                // Cleanup follows even a failed present: it may have set
                // part of what it was asked for.
                answers
                    .txt
                    .push((name.clone(), fqdn.clone(), value.clone()));
                hook.run("present", &name, &fqdn, &value)
                    .map_err(|why| CliError::Acme(format!("issue \"{first}\": {why}")))?;
            }
        }
        if wait.is_zero() {
            let step = format!("challenge ready for \"{name}\"");
            bounded(req, &what(&step), t, challenge.set_ready())
                .await?
                .map_err(|e| fail(&step, e))?;
        }
    }
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
        let mut authorizations = order.authorizations();
        while let Some(authz) =
            bounded(req, &what("authorization"), t, authorizations.next()).await?
        {
            let mut authz = authz.map_err(|e| fail("authorization", e))?;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            let name = authz.identifier().to_string();
            if let Some(mut challenge) = authz.challenge(kind.clone()) {
                let step = format!("challenge ready for \"{name}\"");
                bounded(req, &what(&step), t, challenge.set_ready())
                    .await?
                    .map_err(|e| fail(&step, e))?;
            }
        }
    }

    let retries = retry_policy();
    let polled = order.poll_ready(&retries);
    let status = bounded(req, &what("validation"), poll_bound(t), polled)
        .await?
        .map_err(|e| fail("validation", e))?;
    if status == OrderStatus::Ready {
        return Ok(());
    }
    // Which name failed, and the CA's words for it.
    let mut reasons = Vec::new();
    // Best effort: a CA that stops answering here leaves the reasons out.
    let mut authorizations = order.authorizations();
    while let Ok(Some(Ok(mut authz))) =
        bounded(req, &what("authorization"), t, authorizations.next()).await
    {
        let Ok(Ok(state)) = bounded(req, &what("authorization"), t, authz.refresh()).await else {
            continue;
        };
        if state.status == AuthorizationStatus::Valid {
            continue;
        }
        let name = state.identifier().to_string();
        let detail = state
            .challenges
            .iter()
            .find_map(|c| c.error.as_ref())
            .map(problem)
            .unwrap_or_else(|| format!("authorization {:?}", state.status));
        reasons.push(format!("\"{name}\": {detail}"));
    }
    Err(CliError::Acme(format!(
        "issue \"{first}\": {kind_name} validation failed (order {status:?}): {}",
        if reasons.is_empty() {
            "the CA gave no reason".to_owned()
        } else {
            reasons.join("; ")
        }
    )))
}

/// One exchange with the CA (or a poll, or the account's set-up),
/// bounded by `limit`. instant-acme's HTTP client has no connect, TLS or
/// request timeout, and its retry deadline is checked only between polls:
/// a CA (or a middlebox) that accepts the connection and never answers
/// would hold the order, its lock and `run`'s worker forever. `what`
/// names the command and the step; the answer names the CA.
async fn bounded<F: Future>(
    req: &Request,
    what: &str,
    limit: Duration,
    exchange: F,
) -> Result<F::Output, CliError> {
    tokio::time::timeout(limit, exchange).await.map_err(|_| {
        CliError::Unanswered(format!(
            "{what}: no answer from the CA at {} within {} (--acme-timeout)",
            req.directory_url,
            time_text(limit)
        ))
    })
}

/// A poll's bound: its retry deadline, checked between requests, plus the
/// last request and the download that may follow it.
fn poll_bound(exchange: Duration) -> Duration {
    DEADLINE + 2 * exchange
}

/// `30 s`, `1500 ms`.
fn time_text(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Poll with backoff up to the deadline: 250 ms, then 1.5 times longer.
fn retry_policy() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(DEADLINE)
}

enum AccountError {
    Acme(instant_acme::Error),
    Cli(CliError),
}

impl From<CliError> for AccountError {
    fn from(e: CliError) -> Self {
        AccountError::Cli(e)
    }
}

impl From<instant_acme::Error> for AccountError {
    fn from(e: instant_acme::Error) -> Self {
        AccountError::Acme(e)
    }
}

/// The stored account for this CA, or a new one (then stored).
async fn account(store: &mut Store, req: &Request) -> Result<Account, AccountError> {
    // Our own client, with every answer's body capped (crate::http).
    let builder = || {
        let client = match &req.acme_ca {
            Some(ca) => crate::http::CappedClient::with_root(ca)
                .map_err(|e| CliError::Input(format!("--acme-ca {}: {e}", ca.display())))?,
            None => crate::http::CappedClient::system()
                .map_err(|e| CliError::Acme(format!("the system's trust store: {e}")))?,
        };
        Ok::<_, CliError>(Account::builder_with_http(Box::new(client)))
    };
    let redis_key = format!(
        "{ACCOUNT_PREFIX}{}",
        hex(&hash(MessageDigest::sha256(), req.directory_url.as_bytes())
            .map_err(|e| CliError::Acme(format!("SHA-256: {e}")))?)
    );
    let stored = match &req.account_key {
        Some(path) => read_optional(path)?,
        None => match store.get_string(&redis_key)? {
            Some(value) => Some(stored_account(store, req, &redis_key, value)?),
            None => None,
        },
    };
    if let Some(json) = stored {
        let credentials = parse_credentials(req, &redis_key, &json)?;
        return Ok(builder()?.from_credentials(credentials).await?);
    }
    let contact = req.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = req
        .eab
        .as_ref()
        .map(|(kid, key)| ExternalAccountKey::new(kid.clone(), key));
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            req.directory_url.clone(),
            eab.as_ref(),
        )
        .await?;
    let json = serde_json::to_string(&credentials)
        .map_err(|e| CliError::Acme(format!("cannot serialise the ACME account: {e}")))?;
    let value = match account_kek(req) {
        Some(id) => seal_account(req, &redis_key, &json, id)?,
        None => json,
    };
    match &req.account_key {
        Some(path) => write_private(path, &value)?,
        // NX: two first runs at once (`run` and a cron `renew`) both
        // create an account; the first stored is the fleet's, and the
        // other run uses it too rather than overwriting it.
        None if !store.set_string_nx(&redis_key, &value)? => {
            let Some(stored) = store.get_string(&redis_key)? else {
                return Err(CliError::Redis(format!(
                    "the ACME account ({redis_key}) was stored by another process and is gone again"
                ))
                .into());
            };
            let json = stored_account(store, req, &redis_key, stored)?;
            let credentials = parse_credentials(req, &redis_key, &json)?;
            let theirs = builder()?.from_credentials(credentials).await?;
            eprintln!(
                "dyncert: another process created the ACME account first ({redis_key}); \
                 using {}, not the account just created ({})",
                theirs.id(),
                account.id()
            );
            return Ok(theirs);
        }
        None => {}
    }
    Ok(account)
}

/// The key id an account kept in Redis is encrypted under:
/// `--encrypt-with`, else the first `--key-encryption-key`; `None` (kept
/// in clear) when no key is given. An `--account-key` file is the
/// operator's own secret (created 0600) and is kept as it is.
fn account_kek(req: &Request) -> Option<&str> {
    if req.account_key.is_some() {
        return None;
    }
    req.encrypt_with
        .as_deref()
        .or_else(|| req.key_ring.ids().next())
}

/// The credentials JSON sealed as a record's key is (keywrap, bound to
/// the Redis key it is stored under).
fn seal_account(req: &Request, redis_key: &str, json: &str, id: &str) -> Result<String, CliError> {
    keywrap::seal(json.as_bytes(), redis_key.as_bytes(), id, &req.key_ring)
        .and_then(|v| String::from_utf8(v).ok())
        .ok_or_else(|| {
            CliError::Input(format!(
                "cannot encrypt the ACME account ({redis_key}) under \"{id}\""
            ))
        })
}

/// The credentials JSON of the account stored under `redis_key`: opened
/// when sealed (one that does not open is an error, never a reason to
/// create another account); when stored in clear and a key is given,
/// re-stored sealed, only if nobody changed it meanwhile.
fn stored_account(
    store: &mut Store,
    req: &Request,
    redis_key: &str,
    value: String,
) -> Result<String, CliError> {
    if keywrap::is_envelope(value.as_bytes()) {
        let id = keywrap::parse(value.as_bytes())
            .map(|e| e.id.to_owned())
            .unwrap_or_else(|_| "?".to_owned());
        return keywrap::open(value.as_bytes(), redis_key.as_bytes(), &req.key_ring)
            .ok()
            .and_then(|json| String::from_utf8(json).ok())
            .ok_or_else(|| {
                CliError::Input(format!(
                    "the ACME account ({redis_key}) is encrypted under \"{id}\" and does not \
                     decrypt with the keys given: give --key-encryption-key {id}=FILE with the \
                     key it was stored with"
                ))
            });
    }
    if let Some(id) = account_kek(req) {
        // The account as stored works either way: a failure to re-store
        // it sealed is a warning, not a failed order.
        let sealed = seal_account(req, redis_key, &value, id)?;
        match store.set_string_if(redis_key, &value, &sealed) {
            Ok(true) => eprintln!(
                "dyncert: the ACME account ({redis_key}) was stored in clear; \
                 now encrypted under \"{id}\""
            ),
            Ok(false) => {}
            Err(e) => eprintln!(
                "dyncert: warning: the ACME account ({redis_key}) is stored in clear and \
                 could not be re-stored encrypted under \"{id}\" ({e}); it is used as it is"
            ),
        }
    }
    Ok(value)
}

fn parse_credentials(
    req: &Request,
    redis_key: &str,
    json: &str,
) -> Result<AccountCredentials, CliError> {
    serde_json::from_str(json).map_err(|e| {
        CliError::Input(format!(
            "the stored ACME account ({}) is not instant-acme credentials: {e}",
            where_kept(req, redis_key)
        ))
    })
}

fn where_kept(req: &Request, redis_key: &str) -> String {
    match &req.account_key {
        Some(p) => p.display().to_string(),
        None => format!("Redis key {redis_key}"),
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, CliError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::Input(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// The account key file is a secret: created readable by its owner only.
fn write_private(path: &Path, data: &str) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| CliError::Input(format!("cannot write {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    f.write_all(data.as_bytes()).map_err(fail)
}

/// A fresh certificate key: ECDSA P-256, or RSA 2048.
fn new_key(rsa: bool) -> Result<PKey<Private>, openssl::error::ErrorStack> {
    if rsa {
        PKey::from_rsa(Rsa::generate(2048)?)
    } else {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        PKey::from_ec_key(EcKey::generate(&group)?)
    }
}

/// A DER CSR for `names` (all in the subjectAltName; the first also as
/// the CN, as CAs expect).
fn csr(key: &PKey<Private>, names: &[String]) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    let mut req = X509ReqBuilder::new()?;
    req.set_pubkey(key)?;
    let mut subject = X509NameBuilder::new()?;
    subject.append_entry_by_nid(Nid::COMMONNAME, &names[0])?;
    req.set_subject_name(&subject.build())?;
    let mut san = SubjectAlternativeName::new();
    for n in names {
        san.dns(n);
    }
    let mut extensions = Stack::new()?;
    extensions.push(san.build(&req.x509v3_context(None))?)?;
    req.add_extensions(&extensions)?;
    req.sign(key, MessageDigest::sha256())?;
    req.build().to_der()
}

/// An ACME error in one line: the CA's problem document (detail, type,
/// subproblems) when there is one.
fn describe(e: &instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => problem(p),
        instant_acme::Error::Timeout(_) => {
            format!("no answer from the CA within {} s", DEADLINE.as_secs())
        }
        instant_acme::Error::Other(e) if e.is::<http_body_util::LengthLimitError>() => format!(
            "the CA's answer is longer than {} KiB; not read further",
            crate::http::BODY_MAX / 1024
        ),
        other => other.to_string().replace('\n', " "),
    }
}

fn problem(p: &instant_acme::Problem) -> String {
    let mut out = p.detail.clone().unwrap_or_else(|| "no detail".to_owned());
    if let Some(t) = &p.r#type {
        out.push_str(&format!(" ({t})"));
    }
    for s in &p.subproblems {
        out.push_str(&format!("; {s}"));
    }
    out.replace('\n', " ")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
