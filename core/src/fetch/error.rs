//! What a failed Redis command means: whether a retry on a fresh
//! connection may help, and a text for the log that carries no record
//! data.

/// A connection error: the manager reconnects, a retry may succeed.
pub(super) fn retryable(e: &redis::RedisError) -> bool {
    // A timeout means Redis hangs: retrying would only double the wait.
    !e.is_timeout() && (e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error())
}

/// Error text without any record data (redis errors carry command names
/// and server messages, never values).
pub(super) fn redis_error(e: &redis::RedisError) -> String {
    let s = e.to_string();
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s
    }
}
