//! Redis as a certificate source: the connection, record reads (sizes
//! first, then the values), the write-back of API answers, and the URL
//! checks and redaction the configuration needs.

use std::time::Duration;

use super::conn::{Notes, RedisConn, RedisTarget};
use super::error::{retryable, RedisError};
use crate::clock::monotonic_ms;
use crate::outcome::Refusal;
use crate::record::{
    check_lengths, check_policy_lengths, check_second_lengths, chosen_form, decode_record,
    decode_second, Form, Record, MAX_ALLOW_BYTES, MAX_CLIENT_CA_BYTES, MAX_CRT_BYTES,
    MAX_KEY_BYTES,
};
use crate::topology::Topology;

/// Hash fields whose sizes are read first.
const SIZED: [&str; 10] = [
    "crt",
    "key",
    "allow",
    "client_ca",
    "crt_der",
    "key_der",
    "crt_rsa",
    "key_rsa",
    "crt_der_rsa",
    "key_der_rsa",
];

/// Checks a Redis URL at configuration time so a typo fails `nginx -t`:
/// the multi-node forms by [`Topology::parse`], the others by the redis
/// crate (as before those forms existed).
pub fn check_redis_url(url: &str) -> Result<(), String> {
    match Topology::parse(url).map_err(|e| e.to_string())? {
        Topology::Single { url, .. } => redis::Client::open(url.as_str())
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Topology::Sentinel { .. } | Topology::Cluster { .. } => Ok(()),
    }
}

/// Creates the connection handle; it connects lazily: nginx must start
/// (and serve defaults) while Redis is down, and reconnects with backoff.
pub(super) fn connect(target: &RedisTarget, notes: Notes) -> Result<RedisConn, RedisError> {
    target
        .connect(notes)
        .map_err(|e| RedisError::Client(e.to_string()))
}

/// One Redis read of one key.
pub(super) enum RedisAnswer {
    Record(Record),
    Absent,
    Refused(Refusal),
    /// Redis failed (down, hung: [`RedisError::Timeout`], protocol error).
    Failed(RedisError),
    /// A connection error worth one retry on a fresh connection.
    Retry(RedisError),
}

impl RedisAnswer {
    fn failed(e: &redis::RedisError) -> RedisAnswer {
        if retryable(e) {
            RedisAnswer::Retry(RedisError::command(e))
        } else if e.is_timeout() {
            RedisAnswer::Failed(RedisError::Timeout)
        } else {
            RedisAnswer::Failed(RedisError::command(e))
        }
    }
}

/// Reads a record, once more on a connection error: after a Redis
/// restart the first command fails on the dead connection while the
/// manager reconnects, and the retry waits for the new one.
pub(super) async fn read_record(conn: &mut RedisConn, key: &str, timeout: Duration) -> RedisAnswer {
    match read_record_once(conn, key, timeout).await {
        RedisAnswer::Retry(_) => match read_record_once(conn, key, timeout).await {
            RedisAnswer::Retry(e) => RedisAnswer::Failed(e),
            other => other,
        },
        other => other,
    }
}

/// The most bytes each of [`SIZED`]'s fields may hold (in that order):
/// what [`check_lengths`], [`check_policy_lengths`] and
/// [`check_second_lengths`] let through.
const FIELD_CAPS: [usize; 10] = [
    MAX_CRT_BYTES,
    MAX_KEY_BYTES,
    MAX_ALLOW_BYTES,
    MAX_CLIENT_CA_BYTES,
    MAX_CRT_BYTES,
    MAX_KEY_BYTES,
    MAX_CRT_BYTES,
    MAX_KEY_BYTES,
    MAX_CRT_BYTES,
    MAX_KEY_BYTES,
];

/// Reads a record's sizes and values in one step, so that a value that
/// grows between the size check and the read is never transferred: `KEYS[1]`
/// the record, `ARGV` the field/cap pairs of [`SIZED`] and [`FIELD_CAPS`].
/// Returns `EXISTS`, the 10 `HSTRLEN`s, then the 10 values: a value is
/// read only when it is within its cap, and not for a PEM pair when the
/// record has the DER form of it ([`chosen_form`]), as the two-step read
/// does; nil for one not read or absent (`HGET` tells an empty field
/// from an absent one, which `HSTRLEN` does not). Read-only: `EVAL_RO`
/// runs on replicas too.
const READ_RECORD_LUA: &str = "local n = #ARGV / 2 \
    local out = {redis.call('EXISTS', KEYS[1])} \
    local sizes = {} \
    for i = 1, n do sizes[i] = redis.call('HSTRLEN', KEYS[1], ARGV[2 * i - 1]) out[i + 1] = sizes[i] end \
    local skip = {} \
    if sizes[5] > 0 and sizes[6] > 0 then skip[1] = true skip[2] = true end \
    if sizes[9] > 0 and sizes[10] > 0 then skip[7] = true skip[8] = true end \
    for i = 1, n do \
        local v = false \
        if not skip[i] and sizes[i] <= tonumber(ARGV[2 * i]) then v = redis.call('HGET', KEYS[1], ARGV[2 * i - 1]) end \
        out[n + 1 + i] = v \
    end \
    return out";

/// When the scripted read is refused (no `EVAL_RO` before Redis 7, or an
/// ACL user without it), records are read in two steps for this long
/// before the script is tried again.
const SCRIPT_RETRY_MS: u64 = 5 * 60 * 1000;

/// The [`monotonic_ms`] until which this process reads records in two
/// steps (0: the script is used).
static TWO_STEPS_UNTIL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn read_record_once(conn: &mut RedisConn, key: &str, t: Duration) -> RedisAnswer {
    let now = monotonic_ms();
    if TWO_STEPS_UNTIL.load(std::sync::atomic::Ordering::Relaxed) > now {
        return read_in_two_steps(conn, key, t).await;
    }
    let mut eval = redis::cmd("EVAL_RO");
    eval.arg(READ_RECORD_LUA).arg(1).arg(key);
    for (field, cap) in SIZED.iter().zip(FIELD_CAPS) {
        eval.arg(*field).arg(cap);
    }
    let reply = eval.query_async::<redis::Value>(conn);
    match tokio::time::timeout(t, reply).await {
        Ok(Ok(v)) => match scripted_reply(v) {
            Some((sizes, mut values)) => {
                assemble(sizes, |i| values.get_mut(i).and_then(Option::take))
            }
            None => RedisAnswer::Failed(RedisError::Command("unexpected reply".into())),
        },
        // The server refused the script itself (NOPERM, an unknown
        // command before Redis 7): the two steps do what it refused, and
        // the script is tried again later. Any other error (LOADING, BUSY,
        // MASTERDOWN...) fails this read only, as it would the two steps.
        Ok(Err(e)) if script_read_refused(e.code(), e.detail()) => {
            let until = now.saturating_add(SCRIPT_RETRY_MS);
            let first = TWO_STEPS_UNTIL.swap(until, std::sync::atomic::Ordering::Relaxed) <= now;
            if first {
                conn.notes().script_read_refused(&e);
            }
            read_in_two_steps(conn, key, t).await
        }
        Ok(Err(e)) => RedisAnswer::failed(&e),
        Err(_) => RedisAnswer::Failed(RedisError::Timeout),
    }
}

/// Whether a server error answering the scripted read means that this
/// server or user cannot run it at all: the ACL refuses `EVAL_RO`
/// (`NOPERM`), or the server does not know it (before Redis 7) or has
/// scripting off. Transient errors (`LOADING` after a restart, `BUSY`,
/// `MASTERDOWN`, `TRYAGAIN`) are not: they would fail the two-step read
/// too, and must not turn the one-step read off for minutes.
fn script_read_refused(code: Option<&str>, detail: Option<&str>) -> bool {
    match code {
        Some("NOPERM") => true,
        Some("ERR") => detail.is_some_and(|d| {
            let d = d.to_ascii_lowercase();
            d.contains("unknown command") || d.contains("unknown or disabled command")
        }),
        _ => false,
    }
}

/// The sizes and values of [`READ_RECORD_LUA`]'s reply.
type Scripted = ([u64; 11], Vec<Option<Vec<u8>>>);

fn scripted_reply(v: redis::Value) -> Option<Scripted> {
    let redis::Value::Array(items) = v else {
        return None;
    };
    if items.len() != 1 + 2 * SIZED.len() {
        return None;
    }
    let mut items = items.into_iter();
    let mut sizes = [0u64; 11];
    for size in sizes.iter_mut() {
        *size = match items.next()? {
            redis::Value::Int(n) => u64::try_from(n).ok()?,
            _ => return None,
        };
    }
    let values = items
        .map(|v| match v {
            redis::Value::BulkString(b) => Some(Some(b)),
            redis::Value::Nil => Some(None),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some((sizes, values))
}

/// The two-step read: sizes first, so an oversized value is refused
/// without being read, and only one form of a record that carries both
/// is transferred; then the values. A value written between the two is
/// read whole (see the README's Limitations), which the scripted read
/// rules out.
async fn read_in_two_steps(conn: &mut RedisConn, key: &str, t: Duration) -> RedisAnswer {
    let mut pipe = redis::pipe();
    pipe.cmd("EXISTS").arg(key);
    for field in SIZED {
        pipe.cmd("HSTRLEN").arg(key).arg(field);
    }
    let sizes = pipe.query_async::<Vec<u64>>(conn);
    let sizes: [u64; 11] = match tokio::time::timeout(t, sizes).await {
        Ok(Ok(v)) => match v.try_into() {
            Ok(s) => s,
            Err(_) => return RedisAnswer::Failed(RedisError::Command("unexpected reply".into())),
        },
        Ok(Err(e)) => return RedisAnswer::failed(&e),
        Err(_) => return RedisAnswer::Failed(RedisError::Timeout),
    };
    let fields = match wanted_fields(&sizes) {
        Ok(Some(fields)) => fields,
        Ok(None) => return RedisAnswer::Absent,
        Err(e) => return RedisAnswer::Refused(e.into()),
    };
    let mut hmget = redis::cmd("HMGET");
    hmget.arg(key);
    for &i in &fields {
        hmget.arg(SIZED[i]);
    }
    let values = hmget.query_async::<Vec<Option<Vec<u8>>>>(conn);
    let values = match tokio::time::timeout(t, values).await {
        Ok(Ok(v)) if v.len() == fields.len() => v,
        Ok(Ok(_)) => return RedisAnswer::Failed(RedisError::Command("unexpected reply".into())),
        Ok(Err(e)) => return RedisAnswer::failed(&e),
        Err(_) => return RedisAnswer::Failed(RedisError::Timeout),
    };
    let mut by_field: Vec<Option<Vec<u8>>> = vec![None; SIZED.len()];
    for (i, v) in fields.into_iter().zip(values) {
        by_field[i] = v;
    }
    assemble(sizes, |i| by_field.get_mut(i).and_then(Option::take))
}

/// Which of [`SIZED`]'s fields (by index) a record of these sizes (`EXISTS`
/// first) is read from, in the order [`assemble`] takes them: `None`
/// when there is no record, an error when the sizes refuse it.
fn wanted_fields(sizes: &[u64; 11]) -> Result<Option<Vec<usize>>, crate::record::RecordError> {
    let [exists, crt, key, allow, ca, crt_der, key_der, crt_rsa, key_rsa, crt_der_rsa, key_der_rsa] =
        *sizes;
    let (c_len, k_len, mut fields) = match chosen_form(crt_der, key_der) {
        Form::Pem => (crt, key, vec![0, 1, 2, 3]),
        Form::Der => (crt_der, key_der, vec![4, 5, 2, 3]),
    };
    if !check_lengths(exists > 0, c_len, k_len)? {
        return Ok(None);
    }
    check_policy_lengths(allow, ca)?;
    match check_second_lengths(crt_rsa, key_rsa, crt_der_rsa, key_der_rsa)? {
        Some(Form::Der) => fields.extend([8, 9]),
        Some(Form::Pem) => fields.extend([6, 7]),
        None => {}
    }
    Ok(Some(fields))
}

/// The record from its sizes and its values, `value(i)` giving the value
/// of [`SIZED`]`[i]` (None when absent or not read).
fn assemble(sizes: [u64; 11], mut value: impl FnMut(usize) -> Option<Vec<u8>>) -> RedisAnswer {
    let fields = match wanted_fields(&sizes) {
        Ok(Some(fields)) => fields,
        Ok(None) => return RedisAnswer::Absent,
        Err(e) => return RedisAnswer::Refused(e.into()),
    };
    let form = chosen_form(sizes[5], sizes[6]);
    let mut next = fields.into_iter().map(&mut value);
    let mut next = || next.next().flatten();
    let (crt, pkey, allow, client_ca) = (next(), next(), next(), next());
    if crt.is_none() && pkey.is_none() {
        // Deleted between the two reads.
        return RedisAnswer::Absent;
    }
    let second_form = check_second_lengths(sizes[7], sizes[8], sizes[9], sizes[10])
        .ok()
        .flatten();
    let second = match second_form {
        Some(form) => decode_second(next(), next(), form),
        None => Ok(None),
    };
    match decode_record(crt, pkey, allow, client_ca).and_then(|r| second.map(|s| (r, s))) {
        Ok((mut r, second)) => {
            r.form = form;
            r.second = second;
            RedisAnswer::Record(r)
        }
        Err(e) => RedisAnswer::Refused(e.into()),
    }
}

/// An API answer to store in Redis.
pub(super) struct WriteBack {
    pub key: String,
    pub record: Record,
    /// `crt_der` and `key_der`, when the record has a DER form.
    pub der: Option<(Vec<u8>, Vec<u8>)>,
    /// `crt_der_rsa` and `key_der_rsa`, when the second pair has one.
    pub second_der: Option<(Vec<u8>, Vec<u8>)>,
    /// The expiry index entry of the name, when the index is kept.
    pub index: Option<Expiry>,
}

/// A name's entry in the expiry index (a sorted set scored by notAfter).
pub(super) struct Expiry {
    pub index: String,
    pub name: String,
    pub not_after_secs: u64,
}

/// Writes an API answer back only while its record is still absent:
/// `KEYS[1]` the record, `KEYS[2]` (optional) the expiry index; `ARGV[1]`
/// the TTL in milliseconds, `ARGV[2]` and `ARGV[3]` the index score and
/// member, then the record's field/value pairs. 1 when written, 0 when a
/// record appeared meanwhile.
const WRITE_BACK_LUA: &str = "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end \
    redis.call('HSET', KEYS[1], unpack(ARGV, 4)) \
    redis.call('PEXPIRE', KEYS[1], ARGV[1]) \
    if #KEYS > 1 then redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3]) end \
    return 1";

/// How long a write-back copy lives, in milliseconds: `writeback`, but
/// never past the certificate's notAfter; `None` (no write-back) once it
/// has expired. A copy that outlived its certificate would be refused as
/// expired, and a refused Redis record ends a lookup before the API (which
/// may hold the renewal) is asked: every terminator would serve the
/// default certificate until the copy's TTL ran out.
pub(super) fn writeback_ttl_ms(writeback: Duration, not_after_ms: u64, now_ms: u64) -> Option<u64> {
    let left = not_after_ms.checked_sub(now_ms).filter(|&ms| ms > 0)?;
    let writeback = u64::try_from(writeback.as_millis()).unwrap_or(u64::MAX);
    Some(writeback.min(left).max(1))
}

/// Stores an API answer in Redis (HSET, PEXPIRE and the expiry index's
/// ZADD, atomically, in one script) so the next terminator finds it there.
/// Only while the name still has no record: the API was asked because
/// Redis had none, and one written since (a renewal stored by the
/// operator while the API answered) is newer than the answer, so it is
/// never replaced. Best effort, off the lookup's path. In a Cluster the
/// record and the index are in different hash slots, which one script
/// cannot span: the record is written, then the index entry (see
/// `Topology::spans_slots_in_transactions`).
/// `ttl_ms` comes from [`writeback_ttl_ms`]. Nothing is written once an
/// invalidation was heard since the lookup began (`guard`).
pub(super) fn write_back(
    mut conn: RedisConn,
    w: WriteBack,
    ttl_ms: u64,
    t: Duration,
    guard: super::sources::WriteGuard,
) {
    if !guard.still_valid() {
        return;
    }
    tokio::spawn(async move {
        if !guard.still_valid() {
            return;
        }
        let WriteBack {
            key,
            record,
            der,
            second_der,
            index,
        } = w;
        let one_transaction = conn.spans_slots_in_transactions();
        let in_script = index.as_ref().filter(|_| one_transaction);
        let mut eval = redis::cmd("EVAL");
        eval.arg(WRITE_BACK_LUA)
            .arg(if in_script.is_some() { 2 } else { 1 })
            .arg(&key);
        match in_script {
            Some(e) => eval
                .arg(&e.index)
                .arg(ttl_ms)
                .arg(e.not_after_secs)
                .arg(&e.name),
            None => eval.arg(ttl_ms).arg(0).arg(""),
        };
        eval.arg("crt")
            .arg(record.crt.as_slice())
            .arg("key")
            .arg(record.key.as_slice());
        if let Some(a) = &record.allow {
            eval.arg("allow").arg(a.as_slice());
        }
        if let Some(c) = &record.client_ca {
            eval.arg("client_ca").arg(c.as_slice());
        }
        // The fast form beside the PEM one (which terminators that only
        // know PEM still read): what the next terminator loads.
        if let Some((crt_der, key_der)) = &der {
            eval.arg("crt_der")
                .arg(crt_der.as_slice())
                .arg("key_der")
                .arg(key_der.as_slice());
        }
        // The second pair as it came (its key wrapped if it was), with
        // its fast form.
        if let Some(p) = &record.second {
            eval.arg("crt_rsa")
                .arg(p.crt.as_slice())
                .arg("key_rsa")
                .arg(p.key.as_slice());
        }
        if let Some((crt_der, key_der)) = &second_der {
            eval.arg("crt_der_rsa")
                .arg(crt_der.as_slice())
                .arg("key_der_rsa")
                .arg(key_der.as_slice());
        }
        let written = tokio::time::timeout(t, eval.query_async::<i64>(&mut conn)).await;
        // In a Cluster, the index entry right after the record it names.
        if let (Some(e), false, Ok(Ok(1))) = (&index, one_transaction, &written) {
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(&e.index).arg(e.not_after_secs).arg(&e.name);
            let _ = tokio::time::timeout(t, zadd.query_async::<()>(&mut conn)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u64 = 3_600_000;
    const NOW: u64 = 1_700_000_000_000;

    /// `EXISTS` then the sizes of [`SIZED`]'s fields.
    fn sizes(fields: &[(usize, u64)]) -> [u64; 11] {
        let mut s = [0; 11];
        s[0] = 1;
        for &(i, n) in fields {
            s[i + 1] = n;
        }
        s
    }

    #[test]
    fn the_fields_read_are_those_of_the_form_the_sizes_choose() {
        // PEM only, with a policy.
        let pem = sizes(&[(0, 900), (1, 200), (2, 10)]);
        assert_eq!(wanted_fields(&pem), Ok(Some(vec![0, 1, 2, 3])));
        // Both forms: the DER one, as the script does.
        let both = sizes(&[(0, 900), (1, 200), (4, 600), (5, 120)]);
        assert_eq!(wanted_fields(&both), Ok(Some(vec![4, 5, 2, 3])));
        // A second pair, in DER.
        let second = sizes(&[(4, 600), (5, 120), (8, 800), (9, 1200)]);
        assert_eq!(wanted_fields(&second), Ok(Some(vec![4, 5, 2, 3, 8, 9])));
        // No record; an oversized crt is refused before anything is read.
        assert_eq!(wanted_fields(&[0; 11]), Ok(None));
        let big = sizes(&[(0, FIELD_CAPS[0] as u64 + 1), (1, 200)]);
        assert!(wanted_fields(&big).is_err());
    }

    #[test]
    fn the_caps_are_what_the_size_checks_let_through() {
        for (i, cap) in FIELD_CAPS.iter().enumerate() {
            let cap = *cap as u64;
            // A record that reads field i: its pair (or the PEM pair) set.
            let pair = match i {
                4 | 5 => [4, 5],
                6 | 7 => [6, 7],
                8 | 9 => [8, 9],
                _ => [0, 1],
            };
            let mut with = vec![(pair[0], 100), (pair[1], 100)];
            if pair[0] >= 6 {
                with.extend([(0, 100), (1, 100)]);
            }
            let mut at = sizes(&with);
            at[i + 1] = cap;
            assert!(wanted_fields(&at).is_ok(), "{} at {cap}", SIZED[i]);
            at[i + 1] = cap + 1;
            assert!(wanted_fields(&at).is_err(), "{} at {}", SIZED[i], cap + 1);
        }
    }

    #[test]
    fn only_a_refusal_of_the_script_itself_turns_to_the_two_step_read() {
        let refused = |code: &str, detail: &str| script_read_refused(Some(code), Some(detail));
        assert!(refused(
            "NOPERM",
            "this user has no permissions to run the 'eval_ro' command"
        ));
        assert!(refused(
            "ERR",
            "unknown command 'EVAL_RO', with args beginning with: "
        ));
        assert!(refused("ERR", "Unknown or disabled command 'EVAL_RO'"));
        for (code, detail) in [
            ("LOADING", "Redis is loading the dataset in memory"),
            ("BUSY", "Redis is busy running a script."),
            ("MASTERDOWN", "Link with MASTER is down"),
            ("TRYAGAIN", "Multiple keys request during rehashing of slot"),
            ("ERR", "Error running script, @user_script:1"),
            (
                "WRONGTYPE",
                "Operation against a key holding the wrong kind of value",
            ),
        ] {
            assert!(!refused(code, detail), "{code} {detail}");
        }
        assert!(!script_read_refused(None, None));
    }

    #[test]
    fn a_scripted_reply_gives_sizes_and_values_or_nothing() {
        use redis::Value;
        let mut items: Vec<Value> = (0..11).map(Value::Int).collect();
        items.extend((0..10).map(|i| {
            if i == 0 {
                Value::BulkString(b"crt".to_vec())
            } else {
                Value::Nil
            }
        }));
        let (s, v) = scripted_reply(Value::Array(items.clone())).unwrap();
        assert_eq!(s, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(v[0].as_deref(), Some(&b"crt"[..]));
        assert!(v[1..].iter().all(Option::is_none));
        // Short, negative sizes, other types: not a reply of the script.
        assert!(scripted_reply(Value::Array(items[..20].to_vec())).is_none());
        let mut negative = items.clone();
        negative[3] = Value::Int(-1);
        assert!(scripted_reply(Value::Array(negative)).is_none());
        let mut odd = items;
        odd[15] = Value::Int(1);
        assert!(scripted_reply(Value::Array(odd)).is_none());
        assert!(scripted_reply(Value::Nil).is_none());
    }

    #[test]
    fn a_long_lived_certificate_gets_the_writeback_ttl() {
        let ninety_days = NOW + 90 * 24 * HOUR_MS;
        assert_eq!(
            writeback_ttl_ms(Duration::from_secs(86_400), ninety_days, NOW),
            Some(24 * HOUR_MS)
        );
    }

    #[test]
    fn a_copy_never_outlives_its_certificate() {
        assert_eq!(
            writeback_ttl_ms(Duration::from_secs(3_600), NOW + 4_000, NOW),
            Some(4_000)
        );
        assert_eq!(
            writeback_ttl_ms(Duration::from_secs(3_600), NOW + 1, NOW),
            Some(1)
        );
    }

    #[test]
    fn an_expired_certificate_is_not_written_back() {
        assert_eq!(writeback_ttl_ms(Duration::from_secs(3_600), NOW, NOW), None);
        assert_eq!(
            writeback_ttl_ms(Duration::from_secs(3_600), NOW - 1_000, NOW),
            None
        );
    }

    #[test]
    fn a_huge_writeback_is_capped_by_the_certificate() {
        assert_eq!(
            writeback_ttl_ms(Duration::MAX, NOW + HOUR_MS, NOW),
            Some(HOUR_MS)
        );
    }
}
