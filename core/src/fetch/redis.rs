//! Redis as a certificate source: the connection, record reads (sizes
//! first, then the values), the write-back of API answers, and the URL
//! checks and redaction the configuration needs.

use std::time::Duration;

use super::conn::{Notes, RedisConn, RedisTarget};
use super::error::{retryable, RedisError};
use crate::outcome::Refusal;
use crate::record::{
    check_lengths, check_policy_lengths, check_second_lengths, chosen_form, decode_record,
    decode_second, Form, Record,
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
/// Hash fields of a record in PEM form, in the order they are read.
const PEM_FIELDS: [&str; 4] = ["crt", "key", "allow", "client_ca"];
/// Hash fields of a record in DER form.
const DER_FIELDS: [&str; 4] = ["crt_der", "key_der", "allow", "client_ca"];
/// Hash fields of a second pair in PEM form, read after the others.
const SECOND_PEM_FIELDS: [&str; 2] = ["crt_rsa", "key_rsa"];
/// Hash fields of a second pair in DER form.
const SECOND_DER_FIELDS: [&str; 2] = ["crt_der_rsa", "key_der_rsa"];

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

async fn read_record_once(conn: &mut RedisConn, key: &str, t: Duration) -> RedisAnswer {
    // Sizes first, so an oversized value is refused without being read,
    // and only one form of a record that carries both is transferred.
    let mut pipe = redis::pipe();
    pipe.cmd("EXISTS").arg(key);
    for field in SIZED {
        pipe.cmd("HSTRLEN").arg(key).arg(field);
    }
    let sizes = pipe.query_async::<Vec<u64>>(conn);
    let sizes = match tokio::time::timeout(t, sizes).await {
        Ok(Ok(v)) if v.len() == SIZED.len() + 1 => v,
        Ok(Ok(_)) => return RedisAnswer::Failed(RedisError::Command("unexpected reply".into())),
        Ok(Err(e)) => return RedisAnswer::failed(&e),
        Err(_) => return RedisAnswer::Failed(RedisError::Timeout),
    };
    let [exists, crt_len, key_len, allow_len, ca_len, crt_der_len, key_der_len, crt_rsa_len, key_rsa_len, crt_der_rsa_len, key_der_rsa_len] =
        sizes[..]
    else {
        return RedisAnswer::Failed(RedisError::Command("unexpected reply".into()));
    };
    let form = chosen_form(crt_der_len, key_der_len);
    let (c_len, k_len, fields) = match form {
        Form::Pem => (crt_len, key_len, PEM_FIELDS),
        Form::Der => (crt_der_len, key_der_len, DER_FIELDS),
    };
    let second = match check_lengths(exists > 0, c_len, k_len)
        .and_then(|e| check_policy_lengths(allow_len, ca_len).map(|()| e))
        .and_then(|e| {
            check_second_lengths(crt_rsa_len, key_rsa_len, crt_der_rsa_len, key_der_rsa_len)
                .map(|s| (e, s))
        }) {
        Ok((false, _)) => return RedisAnswer::Absent,
        Ok((true, second)) => second,
        Err(e) => return RedisAnswer::Refused(e.into()),
    };
    let mut hmget = redis::cmd("HMGET");
    hmget.arg(key).arg(&fields[..]);
    match second {
        Some(Form::Der) => hmget.arg(&SECOND_DER_FIELDS[..]),
        Some(Form::Pem) => hmget.arg(&SECOND_PEM_FIELDS[..]),
        None => &mut hmget,
    };
    let values = hmget.query_async::<Vec<Option<Vec<u8>>>>(conn);
    let mut values = match tokio::time::timeout(t, values).await {
        Ok(Ok(v)) if v.len() == fields.len() + 2 * usize::from(second.is_some()) => v.into_iter(),
        Ok(Ok(_)) => return RedisAnswer::Failed(RedisError::Command("unexpected reply".into())),
        Ok(Err(e)) => return RedisAnswer::failed(&e),
        Err(_) => return RedisAnswer::Failed(RedisError::Timeout),
    };
    let mut next = || values.next().flatten();
    let (crt, pkey, allow, client_ca) = (next(), next(), next(), next());
    if crt.is_none() && pkey.is_none() {
        // Deleted between the two reads.
        return RedisAnswer::Absent;
    }
    let second = match second {
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
