//! Keeps the worker's session ticket keys current (`dyncert_session_tickets`):
//! every [`CHECK_INTERVAL`] it reads the shared key set from Redis, hands a
//! new generation to the event loop's [`TicketStore`], and when the set is
//! missing or its rotation is due, rotates it under a Redis lock that only
//! one terminator of the fleet gets.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::conn::RedisConn;
use super::sources::CommandConn;
use super::{Event, Shared};
use crate::tickets::{
    due, expired, KeySet, Storage, TicketKey, TicketKeysError, KEY_BYTES, MAX_STORED,
};

/// How often each worker reads the key set: the longest a worker keeps
/// using a set after another terminator rotated it.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Lifetime of the rotation lock: a terminator that dies while holding
/// it delays the next rotation by at most this.
const LOCK_TTL_MS: u64 = 5000;

/// What `dyncert_session_tickets` needs on the fetcher side.
#[derive(Clone)]
pub struct TicketConfig {
    /// The Redis key of the set (`dyncert:ticket-keys`).
    pub key: String,
    pub period: Duration,
    /// Previous keys that still decrypt.
    pub keep: usize,
    pub storage: Storage,
    /// Where the event loop finds the keys.
    pub store: &'static TicketStore,
}

/// The key set the ticket callback uses, shared between the fetcher
/// thread (writes) and the event loop (reads).
pub struct TicketStore {
    set: Mutex<Option<Arc<KeySet>>>,
}

impl TicketStore {
    pub const fn new() -> TicketStore {
        TicketStore {
            set: Mutex::new(None),
        }
    }

    /// The current set; `None` before the first one is loaded.
    pub fn get(&self) -> Option<Arc<KeySet>> {
        self.set.lock().ok()?.clone()
    }

    fn put(&self, set: KeySet) {
        if let Ok(mut s) = self.set.lock() {
            *s = Some(Arc::new(set));
        }
    }

    /// Drops the set when [`expired`]; whether it did.
    fn expire(&self, now_ms: u64, period_ms: u64, keep: usize) -> bool {
        let Ok(mut s) = self.set.lock() else {
            return false;
        };
        match &*s {
            Some(set) if expired(now_ms, set.created_ms, period_ms, keep) => {
                *s = None;
                true
            }
            _ => false,
        }
    }

    fn generation(&self) -> Option<u64> {
        self.get().map(|s| s.generation)
    }
}

impl Default for TicketStore {
    fn default() -> Self {
        TicketStore::new()
    }
}

/// What the ticket key task reports to the event loop (logged, counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketNote {
    /// A new generation was loaded.
    Loaded { generation: u64, keys: usize },
    /// This worker rotated the fleet's set.
    Rotated { generation: u64 },
    /// The stored set is refused; the keys loaded before stay in use.
    Refused(TicketKeysError),
    /// Redis could not be read or written.
    Failed(String),
    /// The loaded set is `keep + 1` periods old and no newer one could be
    /// read: no tickets are issued or accepted until one is.
    Expired { generation: u64 },
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs for the life of the worker, on the lookups' command connection
/// (so it moves to a new one with them).
pub(super) async fn maintain(
    redis: Arc<CommandConn>,
    cfg: TicketConfig,
    timeout: Duration,
    rotated: Arc<tokio::sync::Notify>,
    shared: Arc<Shared>,
) {
    // A refusal or failure is reported when it starts (or changes), not
    // every second.
    let mut last: Option<TicketNote> = None;
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Every CHECK_INTERVAL, and at once when a rotation is announced.
        tokio::select! {
            _ = tick.tick() => {}
            () = rotated.notified() => {}
        }
        let note = match redis.get() {
            Some(Ok(mut conn)) => step(&mut conn, &cfg, timeout).await,
            Some(Err(e)) => Some(TicketNote::Failed(e.to_string())),
            // Not started without Redis.
            None => None,
        };
        let generation = cfg.store.generation();
        if cfg
            .store
            .expire(now_ms(), cfg.period.as_millis() as u64, cfg.keep)
        {
            shared.push(Event::Tickets(TicketNote::Expired {
                generation: generation.unwrap_or(0),
            }));
        }
        match note {
            Some(n @ (TicketNote::Refused(_) | TicketNote::Failed(_))) => {
                if last.as_ref() != Some(&n) {
                    shared.push(Event::Tickets(n.clone()));
                    last = Some(n);
                }
            }
            Some(n) => {
                last = None;
                shared.push(Event::Tickets(n));
            }
            None => last = None,
        }
    }
}

async fn step(conn: &mut RedisConn, cfg: &TicketConfig, t: Duration) -> Option<TicketNote> {
    let prev = match read(conn, cfg, t).await {
        Err(e) => return Some(e),
        Ok(Some(Stored { set, .. })) => {
            if !due(now_ms(), set.created_ms, cfg.period.as_millis() as u64) {
                return load(cfg, set);
            }
            Some(set)
        }
        Ok(None) => None,
    };
    match rotate(conn, cfg, prev, t).await {
        Ok(note) => note,
        Err(e) => Some(TicketNote::Failed(e)),
    }
}

fn load(cfg: &TicketConfig, set: KeySet) -> Option<TicketNote> {
    // The whole set, not its generation: a set made again after the key
    // was deleted starts at generation 1 again.
    if cfg.store.get().is_some_and(|s| *s == set) {
        return None;
    }
    let note = TicketNote::Loaded {
        generation: set.generation,
        keys: set.keys.len(),
    };
    cfg.store.put(set);
    Some(note)
}

/// A key set as it was read, with the bytes it was read from: what a
/// rotation replaces, and only while Redis still holds exactly them.
struct Stored {
    set: KeySet,
    raw: Vec<u8>,
}

/// The stored set: sized first, so an oversized value is never read.
async fn read(
    conn: &mut RedisConn,
    cfg: &TicketConfig,
    t: Duration,
) -> Result<Option<Stored>, TicketNote> {
    let failed = |e: String| TicketNote::Failed(e);
    let len: u64 = tokio::time::timeout(t, redis::cmd("STRLEN").arg(&cfg.key).query_async(conn))
        .await
        .map_err(|_| failed("timeout".into()))?
        .map_err(|e| failed(e.to_string()))?;
    if len == 0 {
        return Ok(None);
    }
    if len > MAX_STORED as u64 {
        return Err(TicketNote::Refused(TicketKeysError::Oversized));
    }
    let value: Option<Vec<u8>> =
        tokio::time::timeout(t, redis::cmd("GET").arg(&cfg.key).query_async(conn))
            .await
            .map_err(|_| failed("timeout".into()))?
            .map_err(|e| failed(e.to_string()))?;
    let Some(raw) = value else { return Ok(None) };
    // `load` refuses a value grown past MAX_STORED since the STRLEN, so
    // the bytes kept are bounded too.
    let set = cfg
        .storage
        .load(&raw, &cfg.key)
        .map_err(TicketNote::Refused)?;
    Ok(Some(Stored { set, raw }))
}

/// Rotates under the fleet's lock; `Ok(None)` when another terminator
/// holds it (its new set is read on the next check).
async fn rotate(
    conn: &mut RedisConn,
    cfg: &TicketConfig,
    prev: Option<KeySet>,
    t: Duration,
) -> Result<Option<TicketNote>, String> {
    let lock = format!("{}{}", cfg.key, crate::tickets::LOCK_SUFFIX);
    let mut token = [0u8; 16];
    openssl::rand::rand_bytes(&mut token).map_err(|e| e.to_string())?;
    let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
    let got: Option<String> = tokio::time::timeout(
        t,
        redis::cmd("SET")
            .arg(&lock)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(LOCK_TTL_MS)
            .query_async(conn),
    )
    .await
    .map_err(|_| "timeout".to_owned())?
    .map_err(|e| e.to_string())?;
    if got.is_none() {
        return Ok(prev.and_then(|p| load(cfg, p)));
    }
    let result = rotate_locked(conn, cfg, t).await;
    // Released only while it is still ours (it may have expired).
    let release = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                   return redis.call('DEL', KEYS[1]) end return 0";
    let _ = tokio::time::timeout(
        t,
        redis::cmd("EVAL")
            .arg(release)
            .arg(1)
            .arg(&lock)
            .arg(&token)
            .query_async::<i64>(conn),
    )
    .await;
    result
}

/// Rotates the set as it is now (read again under the lock).
async fn rotate_locked(
    conn: &mut RedisConn,
    cfg: &TicketConfig,
    t: Duration,
) -> Result<Option<TicketNote>, String> {
    // Another terminator may have rotated, or the operator deleted the
    // set, between the first read and the lock.
    let prev = match read(conn, cfg, t).await {
        Ok(Some(s)) if !due(now_ms(), s.set.created_ms, cfg.period.as_millis() as u64) => {
            return Ok(load(cfg, s.set));
        }
        Ok(current) => current,
        Err(TicketNote::Failed(e)) => return Err(e),
        // Refused: never overwritten here (see the README).
        Err(n) => return Ok(Some(n)),
    };
    replace(conn, cfg, prev, t).await
}

/// Replaces the set only while Redis still holds the bytes read (an
/// absent key reads as ""), in one script on one key (so in one hash slot
/// of a Cluster). The lock alone cannot promise that: it may expire while
/// a slow Redis answers, and another terminator's newer set would be
/// overwritten, so the tickets it issued would not decrypt elsewhere.
/// A key deleted since the read stays deleted: an operator deletes it to
/// drop every key at once (after a leak), and what was read before must
/// never bring the old keys back as previous ones.
const REPLACE_LUA: &str = "\
    if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end \
    redis.call('SET', KEYS[1], ARGV[2]) \
    return 1";

/// Writes the set after `prev` (what was read), publishes and installs it.
/// When Redis no longer holds what was read, nothing is written and the
/// set there now is loaded instead.
async fn replace(
    conn: &mut RedisConn,
    cfg: &TicketConfig,
    prev: Option<Stored>,
    t: Duration,
) -> Result<Option<TicketNote>, String> {
    let mut bytes = [0u8; KEY_BYTES];
    openssl::rand::rand_bytes(&mut bytes).map_err(|e| e.to_string())?;
    let fresh = TicketKey::from_bytes(bytes);
    bytes.fill(0);
    let set = KeySet::rotate(prev.as_ref().map(|p| &p.set), fresh, now_ms(), cfg.keep);
    let value = cfg
        .storage
        .store(&set, &cfg.key)
        .ok_or_else(|| "cannot seal the ticket key set".to_owned())?;
    let was: &[u8] = prev.as_ref().map_or(&[], |p| &p.raw);
    let written = tokio::time::timeout(
        t,
        redis::cmd("EVAL")
            .arg(REPLACE_LUA)
            .arg(1)
            .arg(&cfg.key)
            .arg(was)
            .arg(&value)
            .query_async::<i64>(conn),
    )
    .await
    .map_err(|_| "timeout".to_owned())?;
    let written = match written {
        Ok(w) => w == 1,
        // EVAL is optional for the ticket keys (see the README): without
        // it the set is replaced while the key exists, as before the
        // script, and a rotation whose lock expired can still overwrite
        // a newer set.
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) => {
            let mut set_cmd = redis::cmd("SET");
            set_cmd.arg(&cfg.key).arg(&value);
            if prev.is_some() {
                set_cmd.arg("XX");
            }
            tokio::time::timeout(t, set_cmd.query_async::<Option<String>>(conn))
                .await
                .map_err(|_| "timeout".to_owned())?
                .map_err(|e| e.to_string())?
                .is_some()
        }
        Err(e) => return Err(e.to_string()),
    };
    if !written {
        // Rotated by another terminator, or deleted (the next check makes
        // a new set): what is there now is the fleet's set.
        return match read(conn, cfg, t).await {
            Ok(Some(s)) => Ok(load(cfg, s.set)),
            Ok(None) => Ok(None),
            Err(TicketNote::Failed(e)) => Err(e),
            Err(n) => Ok(Some(n)),
        };
    }
    let channel = format!("{}{}", cfg.key, crate::tickets::ROTATED_SUFFIX);
    let _ = tokio::time::timeout(
        t,
        redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(set.generation)
            .query_async::<i64>(conn),
    )
    .await;
    let generation = set.generation;
    cfg.store.put(set);
    Ok(Some(TicketNote::Rotated { generation }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::{Notes, RedisTarget, RedisTls};
    use dyncert_testkit::{BlackholeProxy, Redis};

    const KEY: &str = "dyncert:ticket-keys";

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn config() -> TicketConfig {
        TicketConfig {
            key: KEY.to_owned(),
            period: Duration::from_secs(3600),
            keep: 2,
            storage: Storage::default(),
            store: Box::leak(Box::new(TicketStore::new())),
        }
    }

    fn stored(redis: &Redis) -> KeySet {
        match redis.cmd(&["GET", KEY]) {
            dyncert_testkit::Reply::Bulk(Some(v)) => KeySet::decode(&v).unwrap(),
            r => panic!("no key set: {r:?}"),
        }
    }

    const T: Duration = Duration::from_secs(2);

    /// A key whose parts vary (one repeated byte is refused), named by `b`.
    fn test_key(b: u8) -> TicketKey {
        TicketKey::from_bytes(std::array::from_fn(|i| b ^ i as u8))
    }

    /// A redis-server holding a set made at the epoch (so its rotation is
    /// due) whose one key is `test_key(7)`, and what reaches it.
    struct DueSet {
        redis: Redis,
        target: RedisTarget,
        cfg: TicketConfig,
        rt: tokio::runtime::Runtime,
    }

    fn due_set() -> DueSet {
        due_set_stored(Storage::default())
    }

    fn due_set_stored(storage: Storage) -> DueSet {
        let redis = Redis::start();
        let target = RedisTarget::new(&redis.url(), RedisTls::default(), T).unwrap();
        let cfg = TicketConfig {
            storage,
            ..config()
        };
        let rt = rt();
        rt.block_on(async {
            let mut conn = target.connect(Notes::none()).unwrap();
            let old = KeySet::rotate(None, test_key(7), 0, 2);
            let value = cfg.storage.store(&old, KEY).unwrap();
            redis::cmd("SET")
                .arg(KEY)
                .arg(value)
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
        });
        DueSet {
            redis,
            target,
            cfg,
            rt,
        }
    }

    #[test]
    fn a_set_deleted_after_it_was_read_is_not_brought_back_by_the_rotation() {
        let DueSet {
            redis,
            target,
            cfg,
            rt,
        } = due_set();
        rt.block_on(async {
            let mut conn = target.connect(Notes::none()).unwrap();
            // The due set is read ...
            let read = read(&mut conn, &cfg, T).await.unwrap().unwrap().set;
            assert!(due(now_ms(), read.created_ms, 3_600_000));
            // ... and deleted by the operator (its keys leaked) before
            // this terminator takes the lock and rotates.
            redis::cmd("DEL")
                .arg(KEY)
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
            let note = rotate(&mut conn, &cfg, Some(read), T).await.unwrap();
            assert_eq!(note, Some(TicketNote::Rotated { generation: 1 }));
        });
        let set = stored(&redis);
        assert_eq!(set.generation, 1);
        assert_eq!(set.keys.len(), 1, "no previous keys after a delete");
        assert!(
            set.find(test_key(7).name()).is_none(),
            "the leaked key is back"
        );
    }

    #[test]
    fn a_due_set_is_rotated_keeping_its_keys_as_previous_ones() {
        let DueSet {
            redis,
            target,
            cfg,
            rt,
        } = due_set();
        rt.block_on(async {
            let mut conn = target.connect(Notes::none()).unwrap();
            let note = step(&mut conn, &cfg, T).await;
            assert_eq!(note, Some(TicketNote::Rotated { generation: 2 }));
        });
        let set = stored(&redis);
        assert_eq!(set.generation, 2);
        assert_eq!(set.keys.len(), 2);
        assert!(set.find(test_key(7).name()).is_some());
    }

    /// Worker A read generation 1 under a lock that then expired; worker B
    /// took the lock, rotated to generation 2 and installed it. A's write
    /// must not replace B's set (tickets B issued would no longer decrypt
    /// on the other terminators): A loads B's set instead.
    #[test]
    fn a_rotation_whose_lock_expired_does_not_overwrite_the_newer_set() {
        let DueSet {
            redis,
            target,
            cfg,
            rt,
        } = due_set();
        let winner = rt.block_on(async {
            let mut a = target.connect(Notes::none()).unwrap();
            let mut b = target.connect(Notes::none()).unwrap();
            let read_by_a = read(&mut a, &cfg, T).await.unwrap().unwrap();
            assert_eq!(read_by_a.set.generation, 1);
            let winner = KeySet::rotate(Some(&read_by_a.set), test_key(9), now_ms(), 2);
            redis::cmd("SET")
                .arg(KEY)
                .arg(cfg.storage.store(&winner, KEY).unwrap())
                .query_async::<()>(&mut b)
                .await
                .unwrap();
            let note = replace(&mut a, &cfg, Some(read_by_a), T).await.unwrap();
            assert_eq!(
                note,
                Some(TicketNote::Loaded {
                    generation: 2,
                    keys: 2
                }),
                "A reports it lost and loads what B wrote"
            );
            winner
        });
        assert_eq!(stored(&redis), winner, "B's set was overwritten");
        assert_eq!(cfg.store.get().as_deref(), Some(&winner));
    }

    /// A sealed value is never sealed the same way twice, so the write
    /// must compare the bytes read, not the set they hold.
    #[test]
    fn a_due_sealed_set_is_rotated() {
        let mut ring = crate::keywrap::Keyring::new();
        ring.insert("k1", [3; 32]);
        let DueSet {
            redis,
            target,
            cfg,
            rt,
        } = due_set_stored(Storage {
            ring,
            seal_id: Some("k1".into()),
            require_sealed: true,
        });
        rt.block_on(async {
            let mut conn = target.connect(Notes::none()).unwrap();
            let note = step(&mut conn, &cfg, T).await;
            assert_eq!(note, Some(TicketNote::Rotated { generation: 2 }));
        });
        let dyncert_testkit::Reply::Bulk(Some(v)) = redis.cmd(&["GET", KEY]) else {
            panic!("no key set");
        };
        let set = cfg.storage.load(&v, KEY).unwrap();
        assert_eq!(set.generation, 2);
        assert!(set.find(test_key(7).name()).is_some());
    }

    /// The same race when there was no set yet: the first one written
    /// stays.
    #[test]
    fn a_first_set_is_not_overwritten_by_a_rotation_that_read_none() {
        let redis = Redis::start();
        let target = RedisTarget::new(&redis.url(), RedisTls::default(), T).unwrap();
        let cfg = config();
        let winner = KeySet::rotate(None, test_key(9), now_ms(), 2);
        rt().block_on(async {
            let mut a = target.connect(Notes::none()).unwrap();
            let mut b = target.connect(Notes::none()).unwrap();
            assert!(read(&mut a, &cfg, T).await.unwrap().is_none());
            redis::cmd("SET")
                .arg(KEY)
                .arg(winner.encode())
                .query_async::<()>(&mut b)
                .await
                .unwrap();
            let note = replace(&mut a, &cfg, None, T).await.unwrap();
            assert_eq!(
                note,
                Some(TicketNote::Loaded {
                    generation: 1,
                    keys: 1
                })
            );
        });
        assert_eq!(stored(&redis), winner);
    }

    /// The ticket task shares the lookups' connection handle: when its
    /// connection goes silent (a middlebox forgot the flow), a check times
    /// out once and the next one runs on a new connection.
    #[test]
    fn a_ticket_check_after_a_timeout_runs_on_a_new_connection() {
        let redis = Redis::start();
        let proxy = BlackholeProxy::start(redis.port);
        let t = Duration::from_millis(300);
        let url = format!("redis://127.0.0.1:{}/0", proxy.port);
        let target = RedisTarget::new(&url, RedisTls::default(), t).unwrap();
        let cfg = config();
        rt().block_on(async {
            let mut conn = target.connect(Notes::none()).unwrap();
            let note = step(&mut conn, &cfg, t).await;
            assert_eq!(note, Some(TicketNote::Rotated { generation: 1 }));
            proxy.freeze();
            let note = step(&mut conn, &cfg, t).await;
            assert!(matches!(note, Some(TicketNote::Failed(_))), "{note:?}");
            // Read again (the set it holds: nothing new to load).
            assert_eq!(step(&mut conn, &cfg, t).await, None);
        });
        assert_eq!(proxy.accepted(), 2);
        assert_eq!(cfg.store.get().map(|s| s.generation), Some(1));
    }

    /// EVAL stays optional for the ticket keys: a user whose ACL refuses
    /// it still rotates.
    #[test]
    fn a_user_without_eval_still_rotates() {
        let DueSet { redis, cfg, rt, .. } = due_set();
        let acl = [
            "ACL", "SETUSER", "tickets", "on", ">pw", "~*", "&*", "+@all", "-eval",
        ];
        assert!(matches!(redis.cmd(&acl), dyncert_testkit::Reply::Status(_)));
        let url = redis.url().replacen("redis://", "redis://tickets:pw@", 1);
        let target = RedisTarget::new(&url, RedisTls::default(), T).unwrap();
        rt.block_on(async {
            let mut conn = target.connect(Notes::none()).unwrap();
            let note = step(&mut conn, &cfg, T).await;
            assert_eq!(note, Some(TicketNote::Rotated { generation: 2 }));
        });
        assert_eq!(stored(&redis).generation, 2);
    }
}
