//! The Redis side: records under the module's prefix, the expiry index (a
//! sorted set of names scored by notAfter) and the invalidation channel
//! the module's workers listen on.

use std::collections::HashMap;
use std::time::Duration;

use std::sync::mpsc;

use dyncert_core::fetch::{check_redis_url, redact_redis_url, Notes, RedisTarget, RedisTls};
use dyncert_core::record::Form;
use redis::{FromRedisValue, Value};

use crate::cert::{leaf_of, not_after_of, record_name, Prepared};
use crate::error::CliError;

/// Bound on connecting and on each command: a CLI must not hang on a
/// dead or stopped Redis.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Keys per SCAN step and per index write of `index rebuild`.
const BATCH: usize = 1000;

/// A record read whole: at most this many fields, field names this long,
/// and values as long as [`record_limit`] says.
const RECORD_FIELDS_MAX: usize = 64;
const FIELD_NAME_MAX: usize = 64;
/// Fields with a limit of their own (the module's); others get the
/// default, `record_limit("")`.
const LIMITED_FIELDS: [&str; 10] = [
    "crt",
    "crt_der",
    "crt_rsa",
    "crt_der_rsa",
    "key",
    "key_der",
    "key_rsa",
    "key_der_rsa",
    "allow",
    "client_ca",
];

/// The largest value a record's `field` may hold: the module's limit for
/// the fields it reads (it refuses a record over them), the largest of
/// them for any other field.
pub fn record_limit(field: &str) -> usize {
    use dyncert_core::record::{
        MAX_ALLOW_BYTES, MAX_CLIENT_CA_BYTES, MAX_CRT_BYTES, MAX_KEY_BYTES,
    };
    match field {
        "crt" | "crt_der" | "crt_rsa" | "crt_der_rsa" => MAX_CRT_BYTES,
        "key" | "key_der" | "key_rsa" | "key_der_rsa" => MAX_KEY_BYTES,
        "allow" => MAX_ALLOW_BYTES,
        "client_ca" => MAX_CLIENT_CA_BYTES,
        _ => MAX_CRT_BYTES.max(MAX_CLIENT_CA_BYTES),
    }
}

/// KEYS[1]: a record. ARGV: most fields, longest field name, default
/// value limit, then (field, limit) pairs. `{1, PTTL, HGETALL}` when
/// every size is within its limit, else `{0, what, size, limit}` (what:
/// a field name, `#fields` or `#name`) and nothing of the values.
const BOUNDED_READ_LUA: &str = "local n = redis.call('HLEN', KEYS[1]) \
    if n > tonumber(ARGV[1]) then return {0, '#fields', n, tonumber(ARGV[1])} end \
    local limits = {} \
    for i = 4, #ARGV, 2 do limits[ARGV[i]] = tonumber(ARGV[i + 1]) end \
    for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do \
      if #f > tonumber(ARGV[2]) then return {0, '#name', #f, tonumber(ARGV[2])} end \
      local limit = limits[f] or tonumber(ARGV[3]) \
      local len = redis.call('HSTRLEN', KEYS[1], f) \
      if len > limit then return {0, f, len, limit} end \
    end \
    return {1, redis.call('PTTL', KEYS[1]), redis.call('HGETALL', KEYS[1])}";

/// KEYS[1]: a record. ARGV[1]: the longest certificate. Its `crt_der`
/// and `crt`, each nil when absent or longer than that (`index rebuild`
/// reads only the leaf's notAfter, never an oversized value).
const BOUNDED_CRT_LUA: &str = "local out = {} \
    for i, f in ipairs({'crt_der', 'crt'}) do \
      if redis.call('HSTRLEN', KEYS[1], f) <= tonumber(ARGV[1]) then \
        out[i] = redis.call('HGET', KEYS[1], f) else out[i] = false end \
    end \
    return out";

/// KEYS[1]: a plain string. Sets it to ARGV[2] only while it holds
/// ARGV[1]: 1 set, 0 not.
const SET_IF_LUA: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0";

/// Where records, the index and the channel are (the module's names).
pub struct Keys {
    pub prefix: String,
    /// `None`: `off`, nothing is published.
    pub channel: Option<String>,
    /// `None`: `off`, the index is not kept.
    pub index: Option<String>,
}

/// What a record must still be for [`Store::put_if`] to replace it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// No record (on-demand issuance for a name nobody has).
    Absent,
    /// Exactly these fields (HGETALL), as read before the order
    /// (renewal), and still no expiry: a record with a TTL is the
    /// module's copy of a certificate API answer, which a renewal never
    /// replaces (one written over a deleted record with the same fields
    /// is refused too).
    Unchanged(HashMap<String, Vec<u8>>),
}

pub struct Store {
    conn: Conn,
    keys: Keys,
    /// A record and its index entry can share a MULTI/EXEC (not in a
    /// Cluster, where they are in different hash slots).
    one_transaction: bool,
    cluster: bool,
}

/// A request for the connection thread and where its answer goes.
enum Req {
    Cmd(redis::Cmd),
    Pipe(redis::Pipeline),
}

type Job = (Req, mpsc::Sender<redis::RedisResult<Value>>);

/// The module's own connection handle (one server, Sentinel or Cluster,
/// TLS) on a thread of its own with a one-thread runtime: the store's
/// methods stay synchronous, and may be called from `issue`'s async code
/// (a runtime cannot be entered from inside another).
struct Conn {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Conn {
    fn start(target: RedisTarget) -> Result<Conn, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let mut conn = {
            let _entered = rt.enter();
            target.connect(Notes::none()).map_err(|e| e.to_string())?
        };
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("dyncert-redis".into())
            .spawn(move || {
                while let Ok((req, reply)) = rx.recv() {
                    let answer = rt.block_on(async {
                        let query = async {
                            match &req {
                                Req::Cmd(c) => c.query_async::<Value>(&mut conn).await,
                                Req::Pipe(p) => p.query_async::<Value>(&mut conn).await,
                            }
                        };
                        match tokio::time::timeout(TIMEOUT, query).await {
                            Ok(r) => r,
                            Err(_) => Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "redis command timed out",
                            )
                            .into()),
                        }
                    });
                    let _ = reply.send(answer);
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Conn {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn run(&self, req: Req) -> redis::RedisResult<Value> {
        send(self.tx.as_ref(), req)
    }
}

/// One request through the connection thread, and its answer.
fn send(tx: Option<&mpsc::Sender<Job>>, req: Req) -> redis::RedisResult<Value> {
    let (reply, answer) = mpsc::channel();
    let gone = || -> redis::RedisError {
        std::io::Error::other("the redis connection thread is gone").into()
    };
    tx.ok_or_else(gone)?
        .send((req, reply))
        .map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}

/// A second handle on a [`Store`]'s connection, for another thread while
/// the store's owner goes on using it (the order lock's keeper, while
/// the order runs). Commands of both are sent in turn on the one
/// connection. Drop it before the store: the connection thread ends when
/// every handle is gone.
pub struct Remote {
    tx: mpsc::Sender<Job>,
}

impl Remote {
    /// One command.
    pub fn q<T: FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, CliError> {
        let v = send(Some(&self.tx), Req::Cmd(cmd))?;
        Ok(T::from_redis_value(v).map_err(redis::RedisError::from)?)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What `index rebuild` found.
pub struct Rebuilt {
    pub indexed: usize,
    /// Keys under the prefix without a readable certificate (or not a
    /// record name).
    pub skipped: usize,
}

impl Store {
    /// Connects to `url` (checked as `dyncert_redis` checks it; the
    /// password never reaches a message).
    pub fn connect(url: &str, tls: RedisTls, keys: Keys) -> Result<Store, CliError> {
        let shown = redact_redis_url(url);
        check_redis_url(url)
            .map_err(|e| CliError::Input(format!("invalid Redis URL \"{shown}\": {e}")))?;
        let target = RedisTarget::new(url, tls, TIMEOUT)
            .map_err(|e| CliError::Input(format!("invalid Redis URL \"{shown}\": {e}")))?;
        let one_transaction = target.topology.spans_slots_in_transactions();
        let cluster = !one_transaction;
        let conn =
            Conn::start(target).map_err(|e| CliError::Redis(format!("Redis at {shown}: {e}")))?;
        let store = Store {
            conn,
            keys,
            one_transaction,
            cluster,
        };
        // Connect now, so an unreachable Redis is reported as such.
        store
            .conn
            .run(Req::Cmd(redis::cmd("PING")))
            .map_err(|e| CliError::Redis(format!("Redis at {shown}: {e}")))?;
        Ok(store)
    }

    /// One command.
    pub(crate) fn q<T: FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, CliError> {
        let v = self.conn.run(Req::Cmd(cmd))?;
        Ok(T::from_redis_value(v).map_err(redis::RedisError::from)?)
    }

    /// A handle for another thread on this store's connection.
    pub fn remote(&self) -> Result<Remote, CliError> {
        let tx = self.conn.tx.clone().ok_or_else(|| {
            CliError::Redis("Redis: the redis connection thread is gone".to_owned())
        })?;
        Ok(Remote { tx })
    }

    /// A pipeline (or a MULTI/EXEC transaction).
    fn qp<T: FromRedisValue>(&self, pipe: redis::Pipeline) -> Result<T, CliError> {
        let v = self.conn.run(Req::Pipe(pipe))?;
        Ok(T::from_redis_value(v).map_err(redis::RedisError::from)?)
    }

    /// The record key prefix (an encrypted key is bound to prefix + name).
    pub fn prefix(&self) -> &str {
        &self.keys.prefix
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.keys.prefix)
    }

    /// The index key, or a clear refusal when it is `off`.
    fn index(&self) -> Result<&str, CliError> {
        self.keys
            .index
            .as_deref()
            .ok_or_else(|| CliError::Input("the expiry index is off (--index off)".into()))
    }

    /// Replaces the record and its index entry in one transaction (in a
    /// Cluster: the record's transaction, then the index entry).
    pub fn put(&mut self, p: &Prepared) -> Result<(), CliError> {
        let key = self.key(&p.name);
        let mut pipe = redis::pipe();
        // DEL first: policy fields (and a write-back's TTL) of an older
        // record must not linger.
        pipe.atomic().del(&key).ignore();
        let hset = pipe.cmd("HSET").arg(&key);
        for (field, value) in &p.fields {
            hset.arg(*field).arg(value.as_slice());
        }
        hset.ignore();
        let mut zadd = redis::cmd("ZADD");
        if let Some(index) = &self.keys.index {
            zadd.arg(index).arg(p.not_after).arg(&p.name);
            if self.one_transaction {
                pipe.add_command(zadd.clone()).ignore();
            }
        }
        self.qp::<()>(pipe)?;
        if self.keys.index.is_some() && !self.one_transaction {
            self.q::<()>(zadd)?;
        }
        Ok(())
    }

    /// [`Self::put`] only while the record is as `expect` says (checked
    /// and written in one script, atomic on the record's key, so also in
    /// a Cluster): false, and nothing written, when it changed since it
    /// was read. Issuance takes seconds; an operator's `put` (a new
    /// certificate, a tightened `allow`) made meanwhile must not be
    /// replaced by what was ordered from an older view of the record.
    pub fn put_if(&mut self, p: &Prepared, expect: &Expect) -> Result<bool, CliError> {
        const SCRIPT: &str = "local n = tonumber(ARGV[1]) \
             if n < 0 then \
               if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end \
             elseif redis.call('HLEN', KEYS[1]) ~= n \
               or redis.call('PTTL', KEYS[1]) ~= -1 then return 0 end \
             local i = 2 \
             for _ = 1, math.max(n, 0) do \
               if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then return 0 end \
               i = i + 2 \
             end \
             redis.call('DEL', KEYS[1]) \
             redis.call('HSET', KEYS[1], unpack(ARGV, i + 2)) \
             if #KEYS > 1 then redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i + 1]) end \
             return 1";
        let key = self.key(&p.name);
        let index = self.keys.index.clone();
        let in_script = index.as_ref().filter(|_| self.one_transaction);
        let mut eval = redis::cmd("EVAL");
        eval.arg(SCRIPT)
            .arg(if in_script.is_some() { 2 } else { 1 })
            .arg(&key);
        if let Some(index) = in_script {
            eval.arg(index);
        }
        match expect {
            Expect::Absent => {
                eval.arg(-1);
            }
            Expect::Unchanged(fields) => {
                eval.arg(fields.len());
                for (f, v) in fields {
                    eval.arg(f).arg(v.as_slice());
                }
            }
        }
        eval.arg(p.not_after).arg(&p.name);
        for (field, value) in &p.fields {
            eval.arg(*field).arg(value.as_slice());
        }
        let written: i64 = self.q(eval)?;
        if written == 1 && !self.one_transaction {
            if let Some(index) = &index {
                self.q::<()>(
                    redis::cmd("ZADD")
                        .arg(index)
                        .arg(p.not_after)
                        .arg(&p.name)
                        .clone(),
                )?;
            }
        }
        Ok(written == 1)
    }

    /// True when the stored record holds exactly `p`'s fields and the
    /// index has its notAfter: writing it again would change nothing.
    pub fn is_current(&mut self, p: &Prepared) -> Result<bool, CliError> {
        let stored = self.fields(&p.name)?;
        if !p.same_fields(&stored) {
            return Ok(false);
        }
        match &self.keys.index {
            Some(index) => {
                let score: Option<f64> =
                    self.q(redis::cmd("ZSCORE").arg(index).arg(&p.name).clone())?;
                Ok(score == Some(p.not_after as f64))
            }
            None => Ok(true),
        }
    }

    /// Every field of the record stored for `name` (empty: none) and its
    /// PTTL in ms (-1: no expiry, -2: no record), read in one script (one
    /// key, so also in a Cluster): the TTL is the one of the fields read.
    /// Sizes are checked first, inside the script, as the module checks
    /// them (HSTRLEN before the value): a record with more fields, or a
    /// larger value, than [`record_limit`] allows is
    /// [`CliError::Oversized`], and nothing of it is transferred.
    pub fn fields_and_pttl(
        &mut self,
        name: &str,
    ) -> Result<(HashMap<String, Vec<u8>>, i64), CliError> {
        let key = self.key(name);
        let mut eval = redis::cmd("EVAL");
        eval.arg(BOUNDED_READ_LUA)
            .arg(1)
            .arg(&key)
            .arg(RECORD_FIELDS_MAX)
            .arg(FIELD_NAME_MAX)
            .arg(record_limit(""));
        for field in LIMITED_FIELDS {
            eval.arg(field).arg(record_limit(field));
        }
        match self.q::<Value>(eval)? {
            Value::Array(mut parts) if parts.len() == 3 && parts[0] == Value::Int(1) => {
                let all = parts.pop().unwrap_or(Value::Nil);
                let pttl = i64::from_redis_value(parts.pop().unwrap_or(Value::Nil))
                    .map_err(redis::RedisError::from)?;
                let fields: HashMap<String, Vec<u8>> =
                    FromRedisValue::from_redis_value(all).map_err(redis::RedisError::from)?;
                Ok((fields, pttl))
            }
            Value::Array(parts) if parts.len() == 4 && parts[0] == Value::Int(0) => {
                let text = |v: &Value| match v {
                    Value::BulkString(b) => String::from_utf8_lossy(b).escape_default().to_string(),
                    Value::Int(n) => n.to_string(),
                    _ => String::new(),
                };
                let (what, got, limit) = (text(&parts[1]), text(&parts[2]), text(&parts[3]));
                Err(CliError::Oversized(match what.as_str() {
                    "#fields" => format!(
                        "the record has {got} fields, more than the {limit} a record may have; not read"
                    ),
                    "#name" => format!(
                        "the record has a field name of {got} bytes, over the {limit} allowed; not read"
                    ),
                    field => format!(
                        "its field \"{field}\" holds {got} bytes, over the {limit} it may hold; not read"
                    ),
                }))
            }
            other => Err(CliError::Redis(format!(
                "Redis: unexpected reply to the record read: {other:?}"
            ))),
        }
    }

    /// Every field of the record stored for `name` (empty: none), bounded
    /// as [`Self::fields_and_pttl`] reads it.
    pub fn fields(&mut self, name: &str) -> Result<HashMap<String, Vec<u8>>, CliError> {
        match self.fields_and_pttl(name) {
            Ok((fields, _)) => Ok(fields),
            Err(CliError::Oversized(why)) => Err(CliError::Oversized(format!("\"{name}\": {why}"))),
            Err(e) => Err(e),
        }
    }

    /// Sets each (field, read, new) of `changes` in the record of `name`
    /// if every field still holds the value read, in one script (atomic,
    /// one key: also in a Cluster); false when the record changed since.
    pub fn replace_fields_if(
        &mut self,
        name: &str,
        changes: &[(&str, Vec<u8>, Vec<u8>)],
    ) -> Result<bool, CliError> {
        const SCRIPT: &str = "for i = 1, #ARGV, 3 do \
             if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then return 0 end \
             end \
             for i = 1, #ARGV, 3 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2]) end \
             return 1";
        let mut eval = redis::cmd("EVAL");
        eval.arg(SCRIPT).arg(1).arg(self.key(name));
        for (field, read, new) in changes {
            eval.arg(*field).arg(read.as_slice()).arg(new.as_slice());
        }
        let done: i64 = self.q(eval)?;
        Ok(done == 1)
    }

    /// The names of every record under the prefix (SCAN, never KEYS):
    /// hashes whose key is the prefix and a normalised name.
    pub fn record_names(&mut self) -> Result<Vec<String>, CliError> {
        if self.cluster {
            return Err(CliError::Input(
                "--all is not supported with a cluster:// URL (SCAN walks one node): name the records"
                    .into(),
            ));
        }
        let pattern = format!("{}*", glob_escape(&self.keys.prefix));
        let mut names = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self.q(redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(BATCH)
                .clone())?;
            if !keys.is_empty() {
                let mut types = redis::pipe();
                for k in &keys {
                    types.cmd("TYPE").arg(k);
                }
                let kinds: Vec<String> = self.qp(types)?;
                for (key, kind) in keys.iter().zip(kinds) {
                    let Some(name) = key.strip_prefix(&self.keys.prefix) else {
                        continue;
                    };
                    if kind == "hash" && record_name(name).ok().as_deref() == Some(name) {
                        names.push(name.to_owned());
                    }
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Deletes the record and its index entry; false when neither was
    /// there.
    pub fn delete(&mut self, name: &str) -> Result<bool, CliError> {
        let key = self.key(name);
        let mut zrem = redis::cmd("ZREM");
        if let Some(index) = &self.keys.index {
            zrem.arg(index).arg(name);
        }
        let (deleted, removed): (i64, i64) = if !self.one_transaction {
            // Different hash slots in a Cluster: one command each. The
            // index entry goes first: a concurrent put writes the record,
            // then its ZADD, so every interleaving leaves at worst an
            // entry without a record (renew reports it as stale), never
            // a record that no index walk (renew, run, list) finds.
            // If the DEL then fails (a failover, a timeout), the entry is
            // put back with the score it had: a record left without one
            // would never be renewed, and `index rebuild` does not run in
            // a Cluster.
            let (removed, score) = match &self.keys.index {
                Some(index) => {
                    let score: Option<f64> =
                        self.q(redis::cmd("ZSCORE").arg(index).arg(name).clone())?;
                    (self.q(zrem)?, score)
                }
                None => (0, None),
            };
            let deleted = match self.q(redis::cmd("DEL").arg(&key).clone()) {
                Ok(n) => n,
                Err(e) => {
                    if let (Some(index), Some(score), 1) = (&self.keys.index, score, removed) {
                        let put_back: Result<i64, _> = self.q(redis::cmd("ZADD")
                            .arg(index)
                            .arg("NX")
                            .arg(score)
                            .arg(name)
                            .clone());
                        if put_back.is_err() {
                            eprintln!(
                                "dyncert: delete \"{name}\": the record's expiry index entry was removed but the record was not; run `dyncert put` or `dyncert delete` for it again"
                            );
                        }
                    }
                    return Err(e);
                }
            };
            (deleted, removed)
        } else {
            let mut pipe = redis::pipe();
            pipe.atomic().del(&key);
            if self.keys.index.is_some() {
                pipe.add_command(zrem);
            } else {
                pipe.cmd("ECHO").arg(0);
            }
            self.qp(pipe)?
        };
        Ok(deleted > 0 || removed > 0)
    }

    /// Publishes `target` (a name, `*.parent` or `*`) on the invalidation
    /// channel; the number of listeners that got it, `None` when the
    /// channel is off.
    pub fn invalidate(&mut self, target: &str) -> Result<Option<i64>, CliError> {
        match &self.keys.channel {
            Some(channel) => Ok(Some(
                self.q(redis::cmd("PUBLISH").arg(channel).arg(target).clone())?,
            )),
            None => Ok(None),
        }
    }

    /// A plain string value (`issue`'s ACME account), `None` when absent.
    pub fn get_string(&mut self, key: &str) -> Result<Option<String>, CliError> {
        self.q(redis::cmd("GET").arg(key).clone())
    }

    /// Sets a plain string value without expiry unless `key` exists:
    /// false when it did (and nothing was written).
    pub fn set_string_nx(&mut self, key: &str, value: &str) -> Result<bool, CliError> {
        let set: Option<String> =
            self.q(redis::cmd("SET").arg(key).arg(value).arg("NX").clone())?;
        Ok(set.is_some())
    }

    /// Replaces a plain string value only while it still holds `expect`
    /// (one key: one script, also in a Cluster); false when it did not.
    pub fn set_string_if(
        &mut self,
        key: &str,
        expect: &str,
        value: &str,
    ) -> Result<bool, CliError> {
        let set: i64 = self.q(redis::cmd("EVAL")
            .arg(SET_IF_LUA)
            .arg(1)
            .arg(key)
            .arg(expect)
            .arg(value)
            .clone())?;
        Ok(set == 1)
    }

    /// Sets `key` to `value` for `ttl` seconds (an HTTP-01 answer: it must
    /// not outlive the validation if the cleanup never runs).
    pub fn set_expiring(&mut self, key: &str, value: &str, ttl: u64) -> Result<(), CliError> {
        self.q::<()>(
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("EX")
                .arg(ttl)
                .clone(),
        )?;
        Ok(())
    }

    /// Deletes plain keys (challenge answers).
    pub fn delete_keys(&mut self, keys: &[String]) -> Result<(), CliError> {
        // One DEL each: in a Cluster the keys are in different slots.
        for key in keys {
            self.q::<()>(redis::cmd("DEL").arg(key).clone())?;
        }
        Ok(())
    }

    /// The channel invalidations go to.
    pub fn channel(&self) -> Option<&str> {
        self.keys.channel.as_deref()
    }

    /// Names in the index with their notAfter, soonest first, up to
    /// `until` (UNIX seconds) when given.
    pub fn expiring(&mut self, until: Option<i64>) -> Result<Vec<(String, i64)>, CliError> {
        let index = self.index()?.to_owned();
        let max = match until {
            Some(t) => t.to_string(),
            None => "+inf".to_owned(),
        };
        let entries: Vec<(String, f64)> = self.q(redis::cmd("ZRANGEBYSCORE")
            .arg(&index)
            .arg("-inf")
            .arg(max)
            .arg("WITHSCORES")
            .clone())?;
        Ok(entries.into_iter().map(|(n, s)| (n, s as i64)).collect())
    }

    /// Rebuilds the index from the records under the prefix (SCAN, never
    /// KEYS), into a temporary key renamed over the index at the end, so
    /// readers never see it half built.
    pub fn rebuild_index(&mut self) -> Result<Rebuilt, CliError> {
        let index = self.index()?.to_owned();
        if self.cluster {
            // SCAN walks one node, and the index is written in batches
            // across slots: not done yet.
            return Err(CliError::Input(
                "index rebuild is not supported with a cluster:// URL".into(),
            ));
        }
        let temp = format!("{index}:rebuild:{}", std::process::id());
        let pattern = format!("{}*", glob_escape(&self.keys.prefix));
        self.q::<()>(redis::cmd("DEL").arg(&temp).clone())?;
        let mut done = Rebuilt {
            indexed: 0,
            skipped: 0,
        };
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self.q(redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(BATCH)
                .clone())?;
            let entries = self.expiries(&keys, &temp, &index)?;
            done.skipped += keys.len() - entries.len();
            if !entries.is_empty() {
                let mut zadd = redis::cmd("ZADD");
                zadd.arg(&temp);
                for (name, not_after) in &entries {
                    zadd.arg(*not_after).arg(name);
                }
                self.q::<()>(zadd)?;
                done.indexed += entries.len();
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if done.indexed > 0 {
            self.q::<()>(redis::cmd("RENAME").arg(&temp).arg(&index).clone())?;
        } else {
            self.q::<()>(redis::cmd("DEL").arg(&index).clone())?;
        }
        Ok(done)
    }

    /// The (name, notAfter) of each key that is a record with a readable
    /// leaf (the DER form first, as the module reads it).
    fn expiries(
        &mut self,
        keys: &[String],
        temp: &str,
        index: &str,
    ) -> Result<Vec<(String, i64)>, CliError> {
        let prefix = self.keys.prefix.clone();
        // Only hashes: with an empty prefix the index itself matches, and
        // HMGET on another type fails the whole pipeline.
        let mut types = redis::pipe();
        for k in keys {
            types.cmd("TYPE").arg(k);
        }
        let kinds: Vec<String> = if keys.is_empty() {
            Vec::new()
        } else {
            self.qp(types)?
        };
        let hashes: Vec<&String> = keys
            .iter()
            .zip(&kinds)
            .filter(|(k, t)| t.as_str() == "hash" && k.as_str() != temp && k.as_str() != index)
            .map(|(k, _)| k)
            .collect();
        let mut reads = redis::pipe();
        for k in &hashes {
            reads
                .cmd("EVAL")
                .arg(BOUNDED_CRT_LUA)
                .arg(1)
                .arg(k.as_str())
                .arg(record_limit("crt"));
        }
        let values: Vec<CrtFields> = if hashes.is_empty() {
            Vec::new()
        } else {
            self.qp(reads)?
        };
        let mut out = Vec::new();
        for (key, (der, pem)) in hashes.iter().zip(values) {
            let Some(name) = key.strip_prefix(&prefix) else {
                continue;
            };
            // A key the module never looks up (not a normalised name) is
            // not a record.
            if record_name(name).ok().as_deref() != Some(name) {
                continue;
            }
            let name = name.to_owned();
            let leaf = der
                .filter(|d| !d.is_empty())
                .and_then(|d| leaf_of(&d, Form::Der))
                .or_else(|| pem.and_then(|p| leaf_of(&p, Form::Pem)));
            if let Some(not_after) = leaf.as_ref().and_then(not_after_of) {
                out.push((name, not_after));
            }
        }
        Ok(out)
    }
}

/// A record's `crt_der` and `crt` (`None`: absent or oversized).
type CrtFields = (Option<Vec<u8>>, Option<Vec<u8>>);

/// `prefix` as a SCAN MATCH pattern that matches it literally.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_patterns_match_the_prefix_literally() {
        assert_eq!(glob_escape("dyncert:cert:"), "dyncert:cert:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
