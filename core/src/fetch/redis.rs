//! Redis as a certificate source: the connection, record reads (sizes
//! first, then the values), the write-back of API answers, and the URL
//! checks and redaction the configuration needs.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::error::{retryable, RedisError};
use crate::outcome::Refusal;
use crate::record::{
    check_lengths, check_policy_lengths, chosen_form, decode_record, Form, Record,
};

/// Hash fields whose sizes are read first.
const SIZED: [&str; 6] = ["crt", "key", "allow", "client_ca", "crt_der", "key_der"];
/// Hash fields of a record in PEM form, in the order they are read.
const PEM_FIELDS: [&str; 4] = ["crt", "key", "allow", "client_ca"];
/// Hash fields of a record in DER form.
const DER_FIELDS: [&str; 4] = ["crt_der", "key_der", "allow", "client_ca"];

/// A Redis URL fit for a log line or an `nginx -t` error: the user info's
/// password (or a user info that is only a password) becomes `***`. Also
/// for URLs that do not parse: whatever precedes the host's `@` is hidden.
pub fn redact_redis_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None if userinfo.is_empty() => String::new(),
        None => "***".to_owned(),
    };
    format!("{scheme}{shown}{}", &rest[at..])
}

/// Checks a Redis URL at configuration time so a typo fails `nginx -t`.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Creates the connection lazily: nginx must start (and serve defaults)
/// while Redis is down; the manager reconnects with backoff by itself.
pub(super) fn connect(url: &str, timeout: Duration) -> Result<ConnectionManager, RedisError> {
    let client = redis::Client::open(url).map_err(|e| RedisError::Client(e.to_string()))?;
    let mcfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_lazy_with_config(client, mcfg)
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
pub(super) async fn read_record(
    conn: &mut ConnectionManager,
    key: &str,
    timeout: Duration,
) -> RedisAnswer {
    match read_record_once(conn, key, timeout).await {
        RedisAnswer::Retry(_) => match read_record_once(conn, key, timeout).await {
            RedisAnswer::Retry(e) => RedisAnswer::Failed(e),
            other => other,
        },
        other => other,
    }
}

async fn read_record_once(conn: &mut ConnectionManager, key: &str, t: Duration) -> RedisAnswer {
    // Sizes first, so an oversized value is refused without being read,
    // and only one form of a record that carries both is transferred.
    let mut pipe = redis::pipe();
    pipe.cmd("EXISTS").arg(key);
    for field in SIZED {
        pipe.cmd("HSTRLEN").arg(key).arg(field);
    }
    let sizes = pipe.query_async::<(u64, u64, u64, u64, u64, u64, u64)>(conn);
    let (exists, crt_len, key_len, allow_len, ca_len, crt_der_len, key_der_len) =
        match tokio::time::timeout(t, sizes).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return RedisAnswer::failed(&e),
            Err(_) => return RedisAnswer::Failed(RedisError::Timeout),
        };
    let form = chosen_form(crt_der_len, key_der_len);
    let (c_len, k_len, fields) = match form {
        Form::Pem => (crt_len, key_len, PEM_FIELDS),
        Form::Der => (crt_der_len, key_der_len, DER_FIELDS),
    };
    match check_lengths(exists > 0, c_len, k_len)
        .and_then(|e| check_policy_lengths(allow_len, ca_len).map(|()| e))
    {
        Ok(false) => return RedisAnswer::Absent,
        Ok(true) => {}
        Err(e) => return RedisAnswer::Refused(e.into()),
    }
    let mut hmget = redis::cmd("HMGET");
    hmget.arg(key).arg(&fields[..]);
    type Fields = (
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
    );
    let values = hmget.query_async::<Fields>(conn);
    let (crt, pkey, allow, client_ca) = match tokio::time::timeout(t, values).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return RedisAnswer::failed(&e),
        Err(_) => return RedisAnswer::Failed(RedisError::Timeout),
    };
    if crt.is_none() && pkey.is_none() {
        // Deleted between the two reads.
        return RedisAnswer::Absent;
    }
    match decode_record(crt, pkey, allow, client_ca) {
        Ok(mut r) => {
            r.form = form;
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
    /// The expiry index entry of the name, when the index is kept.
    pub index: Option<Expiry>,
}

/// A name's entry in the expiry index (a sorted set scored by notAfter).
pub(super) struct Expiry {
    pub index: String,
    pub name: String,
    pub not_after_secs: u64,
}

/// Stores an API answer in Redis (DEL, HSET, EXPIRE and the expiry
/// index's ZADD, atomically) so the next terminator finds it there. Best
/// effort, off the lookup's path.
pub(super) fn write_back(mut conn: ConnectionManager, w: WriteBack, ttl: Duration, t: Duration) {
    let ttl = ttl.as_secs().max(1);
    tokio::spawn(async move {
        let WriteBack {
            key,
            record,
            der,
            index,
        } = w;
        let mut pipe = redis::pipe();
        // DEL first: policy fields the API no longer sends must not
        // linger from an older record.
        pipe.atomic().cmd("DEL").arg(&key).ignore();
        let hset = pipe
            .cmd("HSET")
            .arg(&key)
            .arg("crt")
            .arg(record.crt.as_slice())
            .arg("key")
            .arg(record.key.as_slice());
        if let Some(a) = &record.allow {
            hset.arg("allow").arg(a.as_slice());
        }
        if let Some(c) = &record.client_ca {
            hset.arg("client_ca").arg(c.as_slice());
        }
        // The fast form beside the PEM one (which terminators that only
        // know PEM still read): what the next terminator loads.
        if let Some((crt_der, key_der)) = &der {
            hset.arg("crt_der")
                .arg(crt_der.as_slice())
                .arg("key_der")
                .arg(key_der.as_slice());
        }
        hset.ignore().cmd("EXPIRE").arg(&key).arg(ttl).ignore();
        // In the same transaction, so the index never names a record
        // that was not written (or misses one that was).
        if let Some(e) = &index {
            pipe.cmd("ZADD")
                .arg(&e.index)
                .arg(e.not_after_secs)
                .arg(&e.name)
                .ignore();
        }
        let _ = tokio::time::timeout(t, pipe.query_async::<()>(&mut conn)).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_url_passwords_never_reach_messages() {
        assert_eq!(
            redact_redis_url("redis://:s3cret@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_redis_url("rediss://app:s3cret@redis.internal/2?protocol=resp3"),
            "rediss://app:***@redis.internal/2?protocol=resp3"
        );
        assert_eq!(redact_redis_url("redis://s3cret@host"), "redis://***@host");
        // A '@' in the password itself: everything up to the host's '@'.
        assert_eq!(
            redact_redis_url("redis://u:a@b@host/0"),
            "redis://u:***@host/0"
        );
        assert_eq!(redact_redis_url("not a url :s3cret@x"), "not a url :***@x");
        assert_eq!(
            redact_redis_url("redis://127.0.0.1/0"),
            "redis://127.0.0.1/0"
        );
        assert_eq!(redact_redis_url("redis://h/p@th"), "redis://h/p@th");
        for url in ["redis://:s3cret@h", "redis://u:s3cret@h:1/0", "s3cret@h"] {
            assert!(!redact_redis_url(url).contains("s3cret"), "{url}");
        }
    }
}
