//! On-demand enqueues: the consumer of their own queue and the bounded
//! `XADD` of one name to the stream the issuer reads (see
//! [`crate::on_demand`] for when a name is queued and the entry format).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::conn::RedisConn;
use super::error::{retryable, RedisError};
use super::{Event, Shared};
use crate::on_demand::{Stream, FIELD_AT, FIELD_NAME, FIELD_WORKER};

/// Adds the names the event loop queues to the stream, one at a time:
/// each XADD is a command of its own (never pipelined with a lookup's),
/// so its failure changes nothing but its own report, and a slow Redis
/// fills this queue (the event loop then counts the names it could not
/// queue) rather than piling up commands.
pub(super) async fn run(
    mut rx: mpsc::Receiver<String>,
    conn: Option<Result<RedisConn, RedisError>>,
    stream: Stream,
    timeout: Duration,
    shared: Arc<Shared>,
) {
    let worker = std::process::id();
    while let Some(name) = rx.recv().await {
        let result = match &conn {
            Some(Ok(conn)) => {
                let mut conn = conn.clone();
                // Once more after a connection error (see redis::read_record).
                match xadd(&mut conn, &stream, &name, worker, timeout).await {
                    Err(e) if e.1 => xadd(&mut conn, &stream, &name, worker, timeout)
                        .await
                        .map_err(|e| e.0),
                    r => r.map_err(|e| e.0),
                }
            }
            Some(Err(e)) => Err(e.clone()),
            None => Err(RedisError::Client("no dyncert_redis".into())),
        };
        shared.push(Event::OnDemand { name, result });
    }
}

/// `XADD <stream> MAXLEN = <maxlen> * name <name> at <secs> worker <pid>`.
/// Exact trimming: the stream never holds more than `maxlen` entries
/// (`~` trims whole nodes only, so its bound depends on the server's
/// `stream-node-max-entries`); each XADD trims the one entry it adds past
/// the bound. The error says whether a retry on a fresh connection is
/// worth it.
async fn xadd(
    conn: &mut RedisConn,
    stream: &Stream,
    name: &str,
    worker: u32,
    t: Duration,
) -> Result<(), (RedisError, bool)> {
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut cmd = redis::cmd("XADD");
    cmd.arg(&stream.key)
        .arg("MAXLEN")
        .arg("=")
        .arg(stream.maxlen)
        .arg("*")
        .arg(FIELD_NAME)
        .arg(name)
        .arg(FIELD_AT)
        .arg(at)
        .arg(FIELD_WORKER)
        .arg(worker);
    match tokio::time::timeout(t, cmd.query_async::<redis::Value>(conn)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err((RedisError::command(&e), retryable(&e))),
        Err(_) => Err((RedisError::Timeout, false)),
    }
}
