//! ACME HTTP-01 challenge reads: the consumer of their own queue and the
//! bounded `GET` of a key authorization.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::conn::RedisConn;
use super::error::{retryable, AcmeError, RedisError};
use super::{AcmeAnswer, Event, Shared, MAX_ACME_VALUE};

/// Reads ACME key authorizations as the event loop asks for them. How
/// many run at once is bounded by the event loop (`crate::acme::AcmeGate`), and
/// they never wait behind certificate lookups in a queue, nor these behind
/// them.
pub(super) async fn answer(
    mut rx: mpsc::Receiver<String>,
    reader: AcmeReader,
    shared: Arc<Shared>,
) {
    let reader = Arc::new(reader);
    while let Some(token) = rx.recv().await {
        let (reader, shared) = (reader.clone(), shared.clone());
        tokio::spawn(async move {
            // A panic would leave the token's requests waiting for an
            // answer that never comes (the event loop keeps the read in
            // flight): they get a 503 instead.
            let answer = super::answer_or(
                reader.read(&token),
                AcmeAnswer::Error(AcmeError::ReadPanicked),
            )
            .await;
            shared.push(Event::Acme { token, answer });
        });
    }
}

/// Reads key authorizations from the certificates' Redis.
pub(super) struct AcmeReader {
    /// `None` without Redis (or with a Redis URL the client refused).
    conn: Option<RedisConn>,
    prefix: String,
    timeout: Duration,
}

impl AcmeReader {
    pub(super) fn new(
        redis: &Option<Result<RedisConn, RedisError>>,
        prefix: &str,
        timeout: Duration,
    ) -> AcmeReader {
        AcmeReader {
            conn: redis.as_ref().and_then(|r| r.as_ref().ok()).cloned(),
            prefix: prefix.to_owned(),
            timeout,
        }
    }

    /// `GET <acme_prefix><token>`: the key authorization an issuer stored.
    async fn read(&self, token: &str) -> AcmeAnswer {
        let Some(conn) = &self.conn else {
            return AcmeAnswer::Error(AcmeError::NoRedis);
        };
        let mut conn = conn.clone();
        // Once more after a connection error (see redis::read_record).
        match self.read_once(&mut conn, token).await {
            Err(_) => match self.read_once(&mut conn, token).await {
                Ok(a) => a,
                Err(e) => AcmeAnswer::Error(AcmeError::Redis(e)),
            },
            Ok(a) => a,
        }
    }

    /// `Err` only for a connection error worth a retry.
    async fn read_once(&self, conn: &mut RedisConn, token: &str) -> Result<AcmeAnswer, RedisError> {
        let key = format!("{}{}", self.prefix, token);
        // STRLEN first: the answer is bounded like every other input.
        let mut pipe = redis::pipe();
        pipe.cmd("STRLEN").arg(&key);
        let t = self.timeout;
        let len = match tokio::time::timeout(t, pipe.query_async::<(u64,)>(conn)).await {
            Ok(Ok((n,))) => n,
            Ok(Err(e)) if retryable(&e) => return Err(RedisError::command(&e)),
            Ok(Err(e)) => return Ok(redis_failed(RedisError::command(&e))),
            Err(_) => return Ok(redis_failed(RedisError::Timeout)),
        };
        if len == 0 {
            return Ok(AcmeAnswer::Absent);
        }
        if len > MAX_ACME_VALUE as u64 {
            return Ok(AcmeAnswer::Error(AcmeError::TooLong));
        }
        let mut get = redis::cmd("GET");
        get.arg(&key);
        Ok(
            match tokio::time::timeout(t, get.query_async::<Option<Vec<u8>>>(conn)).await {
                // Only a key authorization for this token is an answer (see
                // crate::acme::is_key_authorization).
                Ok(Ok(Some(v)))
                    if v.len() <= MAX_ACME_VALUE
                        && crate::acme::is_key_authorization(token.as_bytes(), &v) =>
                {
                    AcmeAnswer::Value(v)
                }
                Ok(Ok(_)) => AcmeAnswer::Absent,
                Ok(Err(e)) if retryable(&e) => return Err(RedisError::command(&e)),
                Ok(Err(e)) => redis_failed(RedisError::command(&e)),
                Err(_) => redis_failed(RedisError::Timeout),
            },
        )
    }
}

fn redis_failed(e: RedisError) -> AcmeAnswer {
    AcmeAnswer::Error(AcmeError::Redis(e))
}
