//! The invalidation listener: names published on a Redis pub/sub
//! channel, validated, become events that drop them from every worker's
//! cache. It re-subscribes with backoff for the life of the worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::conn::{Notes, RedisConn, RedisTarget, PRIMARY_CHECK_INTERVAL};
use super::error::RedisError;
use super::{Event, Shared};
use crate::name::normalize_sni;
use crate::topology::Topology;

/// Listens on the invalidation channel for the life of the worker,
/// re-subscribing with backoff after any disconnect.
pub(super) async fn subscribe(
    target: RedisTarget,
    channel: String,
    notes: Notes,
    shared: Arc<Shared>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut subscribed_before = false;
    let mut last_warn: Option<Instant> = None;
    loop {
        let mut subscribed = false;
        let err = match listen(
            &target,
            &channel,
            &notes,
            &shared,
            subscribed_before,
            &mut subscribed,
        )
        .await
        {
            Ok(()) => RedisError::SubscriptionClosed,
            Err(e) => e,
        };
        // One line per outage, then at most one every 30 s.
        if last_warn.is_none_or(|t| subscribed || t.elapsed() > Duration::from_secs(30)) {
            shared.push(Event::Warn(format!(
                "dyncert: {err} while subscribed to \"{channel}\", retrying"
            )));
            last_warn = Some(Instant::now());
        }
        if subscribed {
            subscribed_before = true;
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn listen(
    target: &RedisTarget,
    channel: &str,
    notes: &Notes,
    shared: &Shared,
    resubscribed: bool,
    subscribed: &mut bool,
) -> Result<(), RedisError> {
    let timeout = target.timeout;
    // The node depends on the deployment (RedisTarget::pubsub); a failure
    // to reach it is already reported with its address.
    let (node, mut pubsub) = tokio::time::timeout(timeout * 3, target.pubsub(notes))
        .await
        .map_err(|_| RedisError::ConnectTimeout)?
        .map_err(|e| RedisError::command(&e))?;
    tokio::time::timeout(timeout, pubsub.subscribe(channel))
        .await
        .map_err(|_| RedisError::SubscribeTimeout)?
        .map_err(|e| RedisError::command(&e))?;
    *subscribed = true;
    shared.push(Event::Subscribed { resubscribed });
    // Under Sentinel the subscription follows the primary: a PUBLISH on a
    // new primary never reaches an old one the sentinels have not demoted
    // yet (which would close this subscription).
    let sentinel = match &target.topology {
        Topology::Sentinel { .. } => match target.connect(notes.clone()) {
            Ok(RedisConn::Sentinel(s)) => Some(s),
            _ => None,
        },
        _ => None,
    };
    let mut check = tokio::time::interval(PRIMARY_CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stream = pubsub.on_message();
    loop {
        let msg = tokio::select! {
            m = stream.next() => match m {
                Some(m) => m,
                None => break,
            },
            _ = check.tick(), if sentinel.is_some() => {
                if let Some(s) = &sentinel {
                    if s.primary_addr().await.is_ok_and(|a| a != node) {
                        return Err(RedisError::PrimaryMoved);
                    }
                }
                continue;
            }
        };
        let payload = msg.get_payload_bytes();
        match invalidation_target(payload) {
            Some(target) => shared.push(Event::Invalidate(target)),
            None => shared.push(Event::Warn(format!(
                "dyncert: ignored an invalid name ({} bytes) on \"{channel}\"",
                payload.len()
            ))),
        }
    }
    Ok(())
}

/// Validates an invalidation message: `*`, `*.<name>` or a host name.
pub fn invalidation_target(payload: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?.trim();
    if text == "*" {
        return Some("*".to_owned());
    }
    if let Some(rest) = text.strip_prefix("*.") {
        let parent = normalize_sni(rest.as_bytes()).ok()?;
        return Some(format!("*.{parent}"));
    }
    normalize_sni(text.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidation_messages_are_validated() {
        assert_eq!(invalidation_target(b"*").as_deref(), Some("*"));
        assert_eq!(
            invalidation_target(b"Shop.Example.com.").as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(
            invalidation_target(b"*.Example.com").as_deref(),
            Some("*.example.com")
        );
        assert_eq!(invalidation_target(b"a..b"), None);
        assert_eq!(invalidation_target(b"*.*.x"), None);
        assert_eq!(invalidation_target(b"\xff"), None);
        assert_eq!(invalidation_target(b""), None);
    }
}
