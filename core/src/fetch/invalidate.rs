//! The invalidation listener: names published on a Redis pub/sub
//! channel, validated, become events that drop them from every worker's
//! cache. It re-subscribes with backoff for the life of the worker, and
//! PINGs the subscription so that a silent partition (no FIN, no RST, the
//! packets just vanish) is noticed within [`detection_bound`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::conn::{Notes, RedisConn, RedisTarget, SentinelConn, PRIMARY_CHECK_INTERVAL};
use super::error::RedisError;
use super::{Event, Shared};
use crate::name::normalize_sni;
use crate::topology::Topology;

/// First wait before subscribing again after a loss.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two attempts to subscribe: how late, at most, a
/// worker subscribes again once Redis answers (plus one connect).
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Shortest interval between two PINGs on the subscription.
const HEARTBEAT_MIN: Duration = Duration::from_millis(100);

/// The wait before the next attempt to subscribe: doubling from
/// [`BACKOFF_MIN`] up to [`BACKOFF_MAX`], so a worker retries quickly after
/// a blip and about once a second during a long outage.
pub fn next_backoff(previous: Duration) -> Duration {
    (previous * 2).clamp(BACKOFF_MIN, BACKOFF_MAX)
}

/// How often a subscription is PINGed: every `dyncert_redis_timeout`
/// (at least every 100 ms apart).
pub fn heartbeat_interval(timeout: Duration) -> Duration {
    timeout.max(HEARTBEAT_MIN)
}

/// The longest a dead subscription goes unnoticed: one heartbeat interval
/// until the next PING, plus `timeout` for its answer; twice
/// `dyncert_redis_timeout` (from 100 ms up).
pub fn detection_bound(timeout: Duration) -> Duration {
    heartbeat_interval(timeout) + timeout
}

/// A second channel on the same subscription whose messages only wake a
/// task: the session ticket key rotations (`dyncert:ticket-keys:rotated`).
#[derive(Clone)]
pub(super) struct Wakeup {
    pub channel: String,
    pub notify: Arc<tokio::sync::Notify>,
}

/// Listens on the invalidation channel for the life of the worker,
/// re-subscribing with backoff after any disconnect.
pub(super) async fn subscribe(
    target: RedisTarget,
    channel: String,
    notes: Notes,
    shared: Arc<Shared>,
    wakeup: Option<Wakeup>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut subscribed_before = false;
    let mut last_warn: Option<Instant> = None;
    // Under Sentinel, one set of sentinel connections for the life of the
    // worker, to find the primary to subscribe on and to notice it moved.
    // Before, each subscription made two sets (3 connections each with
    // three sentinels), and dropped the first once subscribed.
    let sentinel = match &target.topology {
        Topology::Sentinel { .. } => match target.connect(notes.clone()) {
            Ok(RedisConn::Sentinel(s)) => Some(s),
            _ => None,
        },
        _ => None,
    };
    loop {
        let mut subscribed = false;
        let source = Source {
            target: &target,
            sentinel: sentinel.as_ref(),
            notes: &notes,
        };
        let err = match listen(
            &source,
            &channel,
            &shared,
            wakeup.as_ref(),
            subscribed_before,
            &mut subscribed,
        )
        .await
        {
            Ok(()) => RedisError::SubscriptionClosed,
            Err(e) => e,
        };
        shared.subscription_lost();
        // One line per outage, then at most one every 30 s.
        if last_warn.is_none_or(|t| subscribed || t.elapsed() > Duration::from_secs(30)) {
            shared.push(Event::Warn(format!(
                "dyncert: {err} while subscribed to \"{channel}\", retrying"
            )));
            last_warn = Some(Instant::now());
        }
        if subscribed {
            subscribed_before = true;
            backoff = BACKOFF_MIN;
        }
        tokio::time::sleep(backoff).await;
        backoff = next_backoff(backoff);
    }
}

/// Where a subscription is made: the deployment, and under Sentinel the
/// worker's sentinel connections.
struct Source<'a> {
    target: &'a RedisTarget,
    sentinel: Option<&'a Arc<SentinelConn>>,
    notes: &'a Notes,
}

async fn listen(
    source: &Source<'_>,
    channel: &str,
    shared: &Shared,
    wakeup: Option<&Wakeup>,
    resubscribed: bool,
    subscribed: &mut bool,
) -> Result<(), RedisError> {
    let Source {
        target,
        sentinel,
        notes,
    } = *source;
    let timeout = target.timeout;
    // The node depends on the deployment (RedisTarget::pubsub); a failure
    // to reach it is already reported with its address.
    let found = async {
        match sentinel {
            Some(s) => s.pubsub().await,
            None => target.pubsub(notes).await,
        }
    };
    let (node, mut pubsub) = tokio::time::timeout(timeout * 3, found)
        .await
        .map_err(|_| RedisError::ConnectTimeout)?
        .map_err(|e| RedisError::command(&e))?;
    tokio::time::timeout(timeout, pubsub.subscribe(channel))
        .await
        .map_err(|_| RedisError::SubscribeTimeout)?
        .map_err(|e| RedisError::command(&e))?;
    if let Some(w) = wakeup {
        tokio::time::timeout(timeout, pubsub.subscribe(&w.channel))
            .await
            .map_err(|_| RedisError::SubscribeTimeout)?
            .map_err(|e| RedisError::command(&e))?;
        // Whatever was published while not subscribed: look now.
        w.notify.notify_one();
    }
    *subscribed = true;
    shared.push(Event::Subscribed { resubscribed });
    // Under Sentinel the subscription follows the primary: a PUBLISH on a
    // new primary never reaches an old one the sentinels have not demoted
    // yet (which would close this subscription).
    let sentinel = sentinel.map(|s| (Arc::clone(s), node));
    watch(pubsub, channel, timeout, shared, wakeup, sentinel).await
}

/// Applies the messages of a live subscription, and PINGs it every
/// [`heartbeat_interval`]: a PING not answered within `timeout` ends it
/// (the caller subscribes again, and the worker then re-checks its cache).
/// Under Sentinel it also ends when the sentinels name another primary
/// than the node subscribed to (asked every [`PRIMARY_CHECK_INTERVAL`]).
/// `Ok` when the server closed it.
async fn watch(
    pubsub: redis::aio::PubSub,
    channel: &str,
    timeout: Duration,
    shared: &Shared,
    wakeup: Option<&Wakeup>,
    sentinel: Option<(Arc<SentinelConn>, String)>,
) -> Result<(), RedisError> {
    let (mut sink, mut stream) = pubsub.split();
    let every = heartbeat_interval(timeout);
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Polled beside the heartbeat, never awaited in a branch: asking
    // unreachable sentinels takes up to 2 x timeout, and must not hold back
    // the PING that notices a partition.
    let mut moved = std::pin::pin!(primary_moved(sentinel));
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return Ok(()) };
                if let Some(w) = wakeup.filter(|w| msg.get_channel_name() == w.channel) {
                    w.notify.notify_one();
                    continue;
                }
                let payload = msg.get_payload_bytes();
                match invalidation_target(payload) {
                    Some(target) => shared.push(Event::Invalidate(target)),
                    None => shared.push(Event::Warn(format!(
                        "dyncert: ignored an invalid name ({} bytes) on \"{channel}\"",
                        payload.len()
                    ))),
                }
            }
            _ = heartbeat.tick() => {
                // Messages that arrive meanwhile wait in the stream's queue.
                match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(RedisError::command(&e)),
                    Err(_) => return Err(RedisError::HeartbeatTimeout),
                }
            }
            () = &mut moved => return Err(RedisError::PrimaryMoved),
        }
    }
}

/// Returns once the sentinels name a primary other than `node` (checked
/// every [`PRIMARY_CHECK_INTERVAL`]); never without Sentinel.
async fn primary_moved(sentinel: Option<(Arc<SentinelConn>, String)>) {
    let Some((s, node)) = sentinel else {
        return std::future::pending().await;
    };
    let mut check = tokio::time::interval(PRIMARY_CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        check.tick().await;
        if s.primary_addr().await.is_ok_and(|a| a != node) {
            return;
        }
    }
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
    fn resubscribing_backs_off_from_100_ms_to_at_most_a_second() {
        let mut wait = BACKOFF_MIN;
        let mut waits = vec![wait];
        for _ in 0..6 {
            wait = next_backoff(wait);
            waits.push(wait);
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(next_backoff(Duration::ZERO), BACKOFF_MIN);
    }

    #[test]
    fn a_dead_subscription_is_noticed_within_twice_the_redis_timeout() {
        let ms = |t: u64| detection_bound(Duration::from_millis(t)).as_millis();
        assert_eq!(ms(1000), 2000);
        assert_eq!(ms(500), 1000);
        // PINGs stay at least 100 ms apart however short the timeout.
        assert_eq!(
            heartbeat_interval(Duration::from_millis(5)).as_millis(),
            100
        );
        assert_eq!(ms(5), 105);
    }

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
