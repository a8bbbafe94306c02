//! Where a certificate is looked for, in order: Redis (the exact name),
//! the certificate API, whose hits are written back to Redis, then Redis's
//! `*.parent` wildcard; and the hand-off of whatever is found to the
//! parse thread, which validates it against the requested name.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::conn::{Notes, RedisConn, RedisTarget};
use super::error::{FetchError, RedisError};
use super::heard::Heard;
use super::redis::{
    connect, read_record, write_back, writeback_ttl_ms, Expiry, RedisAnswer, WriteBack,
};
use super::{FetcherConfig, Outcome, Step, Stored, TierData};
use crate::api::{ApiClient, ApiError, ApiOutcome};
use crate::compact::Compact;
use crate::intern::Interner;
use crate::keyref::KeyRefConfig;
use crate::keywrap::{is_envelope, unwrap_key, KeyWrapConfig, KeyWrapError};
use crate::name::wildcard_parent;
use crate::outcome::{CertSource, FetchSource, Refusal, StepOutcome};
use crate::record::Record;
use crate::tokenbucket::TokenBucket;
use crate::validate::{der_form, second_der_form, validate_with_refs};
use crate::workqueue::WorkQueue;

/// A record validation for the parse thread.
pub(super) type ParseJob = Box<dyn FnOnce() + Send>;

/// What one Redis key said during a lookup.
enum KeyAnswer {
    /// A record (served or refused): the lookup's answer.
    Done(Outcome),
    Absent,
    /// Redis failed: only a certificate from the API answers the lookup.
    Failed(RedisError),
}

/// Whether an API answer may still be written back (see [`Heard`]): noted
/// when its lookup begins, asked just before the write.
#[derive(Clone)]
pub(super) struct WriteGuard {
    heard: Arc<Mutex<Heard>>,
    name: String,
    since: u64,
}

impl WriteGuard {
    fn new(heard: &Arc<Mutex<Heard>>, name: &str) -> WriteGuard {
        WriteGuard {
            heard: heard.clone(),
            name: name.to_owned(),
            since: heard.lock().map_or(u64::MAX, |h| h.generation()),
        }
    }

    /// True while nothing covering the name was invalidated since the
    /// lookup began, and the subscription is up.
    pub(super) fn still_valid(&self) -> bool {
        self.since != u64::MAX
            && self
                .heard
                .lock()
                .is_ok_and(|h| h.may_write_back(&self.name, self.since))
    }
}

/// What the subscription tells the lookups: see [`CommandConn`] and
/// [`WriteGuard`].
pub(super) struct Signals {
    pub heard: Arc<Mutex<Heard>>,
}

/// The command connection the lookups and the session ticket task use,
/// replaced by a new one when `renew` is set (see [`CommandConn::get`]).
/// A single server's connection also replaces itself after a command
/// timed out on it (`conn::SingleConn`).
pub(super) struct CommandConn {
    conn: Mutex<Option<Result<RedisConn, RedisError>>>,
    /// What a new command connection is made from.
    target: Option<(RedisTarget, Notes)>,
    /// Set when the invalidation subscription is back after a loss.
    renew: Arc<AtomicBool>,
}

impl CommandConn {
    pub(super) fn new(
        conn: Option<Result<RedisConn, RedisError>>,
        target: Option<(RedisTarget, Notes)>,
        renew: Arc<AtomicBool>,
    ) -> CommandConn {
        CommandConn {
            conn: Mutex::new(conn),
            target,
            renew,
        }
    }

    /// The command connection for a lookup (or a ticket key check). After
    /// the subscription came back from a loss, a new one: the old
    /// connection may sit behind TCP's retransmission backoff for seconds
    /// after a partition heals (its commands time out, and the manager
    /// only reconnects on I/O errors), while the refreshes the worker
    /// starts now must reach Redis at once. Lookups still holding the old
    /// one finish with it.
    pub(super) fn get(&self) -> Option<Result<RedisConn, RedisError>> {
        let mut redis = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if self.renew.swap(false, Ordering::Relaxed) {
            if let (Some((target, notes)), Some(_)) = (&self.target, &*redis) {
                *redis = Some(connect(target, notes.clone()));
            }
        }
        redis.clone()
    }
}

/// This worker's cap on API requests (`dyncert_api rate=`), read with the
/// monotonic clock: a wall clock stepped back must not stop the refill.
struct ApiRate {
    rate: u32,
    origin: Instant,
    bucket: Mutex<TokenBucket>,
}

impl ApiRate {
    fn new(rate: u32) -> ApiRate {
        ApiRate {
            rate,
            origin: Instant::now(),
            bucket: Mutex::new(TokenBucket::new(rate, std::time::Duration::ZERO)),
        }
    }

    /// Whether the API may be asked now (one token taken if so).
    fn admit(&self) -> bool {
        let now = self.origin.elapsed();
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket.try_take(now)
    }
}

/// Whether Redis's `*.parent` may answer a lookup after the API's answer:
/// only when the API said it has no record of the name. An API that
/// failed, or was not asked because its rate cap was reached, may have
/// one, with its own policy.
fn wildcard_may_answer(api: &Outcome) -> bool {
    matches!(api, Outcome::NotFound)
}

/// Everything a lookup may ask, shared by the lookups in flight.
pub(super) struct Sources {
    cfg: FetcherConfig,
    /// The command connection, shared with the session ticket task.
    redis: Arc<CommandConn>,
    /// What this worker's subscription heard: see [`WriteGuard`].
    heard: Arc<Mutex<Heard>>,
    api: Option<ApiClient>,
    /// `dyncert_api rate=`; `None`: the API is asked whenever a lookup
    /// needs it.
    api_rate: Option<ApiRate>,
    /// Shared parsed intermediates (one object per distinct DER).
    intermediates: Arc<Interner>,
    /// Jobs for the parse thread.
    parse: Arc<WorkQueue<ParseJob>>,
}

impl Sources {
    pub(super) fn new(
        cfg: FetcherConfig,
        redis: Arc<CommandConn>,
        signals: Signals,
        api: Option<ApiClient>,
        parse: Arc<WorkQueue<ParseJob>>,
        intermediates: Arc<Interner>,
    ) -> Sources {
        Sources {
            api_rate: cfg.api_rate.map(ApiRate::new),
            cfg,
            redis,
            heard: signals.heard,
            api,
            intermediates,
            parse,
        }
    }

    /// cache miss → Redis (the exact name) → API → Redis (`*.parent`),
    /// validating whatever is found against the requested name. A
    /// wildcard only stands in for a name that no source has a record of:
    /// the API is asked about the name itself before Redis's wildcard is
    /// (a name whose own record, with its own policy, lives in the API must
    /// not get its parent's). Without an API: the exact name, then the
    /// wildcard. "Not found" only when every source answered: with a Redis
    /// step failed, a lookup the API did not answer with a certificate is
    /// Redis's error.
    pub(super) async fn lookup(&self, name: &str, steps: &mut Vec<Step>) -> Outcome {
        // Before Redis is read: an invalidation heard after this may mean
        // the API's answer is older than what Redis dropped.
        let guard = WriteGuard::new(&self.heard, name);
        let mut redis_error = None;
        let redis = self.redis();
        let mut conn = match &redis {
            Some(Ok(conn)) => Some(conn.clone()),
            Some(Err(e)) => {
                // Counted, and it tells on-demand that Redis was not
                // asked (see crate::on_demand::unknown_everywhere).
                steps.push(Step {
                    source: FetchSource::Redis,
                    outcome: StepOutcome::Error,
                    elapsed: std::time::Duration::ZERO,
                });
                redis_error = Some(e.clone());
                None
            }
            None => None,
        };
        if let Some(c) = &mut conn {
            match self.redis_key(c, name, name, steps).await {
                KeyAnswer::Done(o) => return o,
                KeyAnswer::Absent => {}
                KeyAnswer::Failed(e) => redis_error = Some(e),
            }
        }
        let wildcard = wildcard_parent(name);
        if let Some(api) = &self.api {
            let outcome = self
                .ask_api(api, name, &redis, redis_error.is_some(), &guard, steps)
                .await;
            // A Redis failure is the news when the API was not even asked:
            // a flood must not hide an outage behind rate-cap lines.
            if let (Outcome::Error(FetchError::ApiRateLimited(_)), Some(e)) =
                (&outcome, &redis_error)
            {
                return Outcome::Error(FetchError::Redis(e.clone()));
            }
            if !wildcard_may_answer(&outcome) {
                return outcome;
            }
        }
        if let (Some(c), None, Some(w)) = (&mut conn, &redis_error, wildcard) {
            match self.redis_key(c, &w, name, steps).await {
                KeyAnswer::Done(o) => return o,
                KeyAnswer::Absent => {}
                KeyAnswer::Failed(e) => redis_error = Some(e),
            }
        }
        match redis_error {
            // Only a certificate from the API stands in for Redis: its 404
            // says nothing of the records Redis keeps itself (`put`,
            // `import`, wildcards). "Not found" would evict the cached
            // certificate and negative-cache the name; an error keeps it
            // (stale-if-error) and is logged for the name.
            Some(e) => Outcome::Error(FetchError::Redis(e)),
            None => Outcome::NotFound,
        }
    }

    /// Reads Redis's record under `key` (`name` or its `*.parent`) for
    /// `name`, noting the step.
    async fn redis_key(
        &self,
        conn: &mut RedisConn,
        key: &str,
        name: &str,
        steps: &mut Vec<Step>,
    ) -> KeyAnswer {
        let t0 = Instant::now();
        let (step, answer) = match self.read_redis(conn, key).await {
            RedisAnswer::Record(r) => {
                let wildcard = (key != name).then(|| key.to_owned());
                let o = self.found(r, name, CertSource::Redis, wildcard).await;
                let step = if matches!(o, Outcome::Found { .. }) {
                    StepOutcome::Hit
                } else {
                    StepOutcome::Refused
                };
                (step, KeyAnswer::Done(o))
            }
            RedisAnswer::Refused(r) => (StepOutcome::Refused, KeyAnswer::Done(Outcome::Refused(r))),
            RedisAnswer::Absent => (StepOutcome::Miss, KeyAnswer::Absent),
            // Redis down or hung: the API is asked; only a certificate
            // from it answers the lookup (see `lookup`).
            RedisAnswer::Failed(e) | RedisAnswer::Retry(e) => {
                let step = if e == RedisError::Timeout {
                    StepOutcome::Timeout
                } else {
                    StepOutcome::Error
                };
                (step, KeyAnswer::Failed(e))
            }
        };
        steps.push(Step {
            source: FetchSource::Redis,
            outcome: step,
            elapsed: t0.elapsed(),
        });
        answer
    }

    /// Asks the API about `name` and writes a hit back to Redis (unless
    /// Redis failed during this lookup), noting the step. Past the rate
    /// cap the API is not asked (no step: it was not asked) and the lookup
    /// fails: the name backs off like any failed lookup and is asked again
    /// once the backoff ends.
    async fn ask_api(
        &self,
        api: &ApiClient,
        name: &str,
        redis: &Option<Result<RedisConn, RedisError>>,
        redis_failed: bool,
        guard: &WriteGuard,
        steps: &mut Vec<Step>,
    ) -> Outcome {
        if let Some(cap) = &self.api_rate {
            if !cap.admit() {
                return Outcome::Error(FetchError::ApiRateLimited(cap.rate));
            }
        }
        let t0 = Instant::now();
        let (step, outcome) = match api.lookup(name).await {
            ApiOutcome::Found(record) => {
                let outcome = self
                    .found(record.clone(), name, CertSource::Api, None)
                    .await;
                if let (Outcome::Found { cert, .. }, Some(Ok(conn))) = (&outcome, redis) {
                    if !redis_failed && !self.cfg.writeback.is_zero() {
                        // The answer is stored as it came: a wrapped key
                        // stays wrapped, and gets no (plaintext) DER form.
                        let der = if is_envelope(&record.key) {
                            None
                        } else {
                            der_form(cert, &record)
                        };
                        let second_der = match &record.second {
                            Some(p) if !is_envelope(&p.key) => second_der_form(cert, &record),
                            _ => None,
                        };
                        let index = self.cfg.expiry_index.as_ref().map(|index| Expiry {
                            index: index.clone(),
                            name: name.to_owned(),
                            not_after_secs: cert.not_after_ms / 1000,
                        });
                        let ttl = writeback_ttl_ms(self.cfg.writeback, cert.not_after_ms, now_ms());
                        if let Some(ttl) = ttl {
                            write_back(
                                conn.clone(),
                                WriteBack {
                                    key: format!("{}{}", self.cfg.prefix, name),
                                    record,
                                    der,
                                    second_der,
                                    index,
                                },
                                ttl,
                                self.cfg.redis_timeout,
                                guard.clone(),
                            );
                        }
                    }
                }
                let step = if matches!(outcome, Outcome::Found { .. }) {
                    StepOutcome::Hit
                } else {
                    StepOutcome::Refused
                };
                (step, outcome)
            }
            ApiOutcome::NotFound => (StepOutcome::Miss, Outcome::NotFound),
            ApiOutcome::Refused(e) => (StepOutcome::Refused, Outcome::Refused(e.into())),
            ApiOutcome::Error(e) => {
                let step = match e {
                    ApiError::Timeout(_) => StepOutcome::Timeout,
                    _ => StepOutcome::Error,
                };
                (step, Outcome::Error(FetchError::Api(e)))
            }
        };
        steps.push(Step {
            source: FetchSource::Api,
            outcome: step,
            elapsed: t0.elapsed(),
        });
        outcome
    }

    /// Validates a record for `name` on the parse thread (never on this
    /// I/O thread, whose other lookups and invalidations must not wait
    /// behind CPU work); intermediates are shared with the records already
    /// cached.
    async fn found(
        &self,
        record: Record,
        name: &str,
        source: CertSource,
        wildcard: Option<String>,
    ) -> Outcome {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let interner = self.intermediates.clone();
        let name = name.to_owned();
        let compact = self.cfg.compact;
        let refs = self.cfg.key_refs.clone();
        let wrap = self.cfg.key_wrap.clone();
        // The Redis key the record was read from (a wildcard's own key), or
        // for an API answer the one it is written back to: an encrypted
        // key is bound to it.
        let stored_under = format!(
            "{}{}",
            self.cfg.prefix,
            wildcard.as_deref().unwrap_or(&name)
        );
        let job: ParseJob = Box::new(move || {
            answer_if_awaited(tx, || {
                match open_key(record, stored_under.as_bytes(), &wrap) {
                    Ok(record) => {
                        parse_record(&interner, &record, &name, source, wildcard, compact, &refs)
                    }
                    Err(e) => Outcome::Refused(Refusal {
                        record: Some(stored_under.into()),
                        ..e
                    }),
                }
            });
        });
        if self.parse.push(job).is_err() {
            return Outcome::Error(FetchError::ParseQueueFull);
        }
        rx.await.unwrap_or(Outcome::Error(FetchError::ParseFailed))
    }

    /// The command connection for a lookup: see [`CommandConn::get`].
    fn redis(&self) -> Option<Result<RedisConn, RedisError>> {
        self.redis.get()
    }

    /// Reads the record stored for `name` (a name or `*.parent`).
    async fn read_redis(&self, conn: &mut RedisConn, name: &str) -> RedisAnswer {
        let key = format!("{}{}", self.cfg.prefix, name);
        read_record(conn, &key, self.cfg.redis_timeout).await
    }
}

/// Sends `parse`'s outcome to the lookup that queued it, unless that
/// lookup is gone (cut at its bound while the job waited in the parse
/// queue): then nobody reads the answer, and the record is not parsed.
fn answer_if_awaited(tx: tokio::sync::oneshot::Sender<Outcome>, parse: impl FnOnce() -> Outcome) {
    if tx.is_closed() {
        return;
    }
    let _ = tx.send(parse());
}

/// The record with its key decrypted when the key field holds an
/// envelope (`keywrap`), on the parse thread like the rest of the parse;
/// refused when it does not decrypt under `aad` (the record's Redis key),
/// or is a plain key while encryption is required.
fn open_key(mut record: Record, aad: &[u8], wrap: &KeyWrapConfig) -> Result<Record, Refusal> {
    if let Some(plain) = unwrap_key(&record.key, aad, wrap)? {
        record.key = plain;
    }
    // The second key is bound to the same Redis key, under the same rules;
    // its refusals name its own field.
    if let Some(pair) = &mut record.second {
        let second = |e: KeyWrapError| Refusal {
            reason: e.second_reason(),
            ..e.into()
        };
        if let Some(plain) = unwrap_key(&pair.key, aad, wrap).map_err(second)? {
            pair.key = plain;
        }
    }
    Ok(record)
}

/// Validates `record` for `name` (against the wildcard it was stored
/// under, if any), parsing each distinct intermediate once: the parse
/// thread's job.
///
/// With `compact`, also the record's compact form for the host-wide tier,
/// unless its key is a reference: the zone holds key material only, so a
/// worker that needs such a record fetches it and resolves the reference
/// itself (a key object cannot be shared between processes).
fn parse_record(
    interner: &Interner,
    record: &Record,
    name: &str,
    source: CertSource,
    wildcard: Option<String>,
    compact: bool,
    refs: &KeyRefConfig,
) -> Outcome {
    // A record stored under `*.parent` is cached under that key and served
    // to every name below it: it must carry the wildcard itself.
    match validate_with_refs(
        record,
        name,
        wildcard.as_deref(),
        now_secs(),
        interner,
        refs,
    ) {
        Ok(p) => {
            let storable = compact && !p.key_reference;
            let tier = match storable.then(|| Compact::of(&p, record, source)) {
                Some(Ok((compact, intermediates))) => TierData::Store(Box::new(Stored {
                    compact,
                    intermediates,
                })),
                // Not storable (cannot happen for a record that parsed):
                // served all the same, fetched again by other workers.
                Some(Err(_)) | None => TierData::None,
            };
            Outcome::Found {
                cert: Arc::new(p),
                source,
                wildcard,
                tier,
            }
        }
        Err(i) => Outcome::Refused(i.into()),
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiError;

    #[test]
    fn a_record_is_parsed_only_for_a_lookup_still_waiting() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        answer_if_awaited(tx, || Outcome::NotFound);
        assert!(matches!(rx.blocking_recv(), Ok(Outcome::NotFound)));
        // The lookup was cut at its bound: its receiver is dropped.
        let (tx, rx) = tokio::sync::oneshot::channel::<Outcome>();
        drop(rx);
        let mut parsed = false;
        answer_if_awaited(tx, || {
            parsed = true;
            Outcome::NotFound
        });
        assert!(!parsed, "parsed for nobody");
    }

    #[test]
    fn only_an_api_that_has_no_record_lets_a_redis_wildcard_answer() {
        assert!(wildcard_may_answer(&Outcome::NotFound));
        for not_asked_or_failed in [
            FetchError::ApiRateLimited(5),
            FetchError::Api(ApiError::Status(503)),
        ] {
            assert!(!wildcard_may_answer(&Outcome::Error(not_asked_or_failed)));
        }
    }

    /// After the subscription came back from a loss, every holder of the
    /// command connection (the lookups, the session ticket task) gets the
    /// same new one.
    #[test]
    fn a_renewal_gives_every_holder_of_the_command_connection_a_new_one() {
        use crate::fetch::conn::RedisTls;
        let redis = dyncert_testkit::Redis::start();
        let t = std::time::Duration::from_secs(2);
        let target = RedisTarget::new(&redis.url(), RedisTls::default(), t).unwrap();
        let renew = Arc::new(AtomicBool::new(false));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let command = CommandConn::new(
                Some(connect(&target, Notes::none())),
                Some((target.clone(), Notes::none())),
                renew.clone(),
            );
            let id = |c: Option<Result<RedisConn, RedisError>>| async move {
                let mut c = c.unwrap().unwrap();
                redis::cmd("CLIENT")
                    .arg("ID")
                    .query_async::<i64>(&mut c)
                    .await
                    .unwrap()
            };
            let first = id(command.get()).await;
            assert_eq!(id(command.get()).await, first);
            renew.store(true, Ordering::Relaxed);
            let renewed = id(command.get()).await;
            assert_ne!(renewed, first);
            assert_eq!(id(command.get()).await, renewed, "renewed once");
        });
    }

    #[test]
    fn the_api_cap_admits_its_burst_then_refuses() {
        let cap = ApiRate::new(3);
        // Well under a third of a second passes here: no refill.
        let admitted = (0..50).filter(|_| cap.admit()).count();
        assert_eq!(admitted, 3);
    }
}
