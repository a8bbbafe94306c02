//! Which nginx event methods the ClientHello peek works with.
//!
//! The peek reads with MSG_PEEK and leaves the bytes in the socket while a
//! connection waits for its certificate (or for the rest of a split
//! ClientHello). An edge-triggered method reports such a socket once, when
//! bytes arrive; a level-triggered one (`poll`, `select`, `/dev/poll`)
//! reports it readable on every turn of the event loop, which then spins.

/// nginx event modules (by their `use` name) that report a peeked socket
/// only when new bytes arrive.
pub const EDGE_TRIGGERED: [&str; 3] = ["epoll", "kqueue", "eventport"];

/// Whether `dyncert on` may run with the event method `method` (the name
/// nginx chose after the `events {}` block: `use`, or its default). The
/// error is the `nginx -t` message.
pub fn check_event_method(method: &str) -> Result<(), String> {
    if EDGE_TRIGGERED.contains(&method) {
        return Ok(());
    }
    Err(format!(
        "\"dyncert on\" needs an edge-triggered event method ({}); \
         \"use {method}\" reports a peeked connection as readable forever",
        EDGE_TRIGGERED.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_triggered_methods_pass() {
        for m in ["epoll", "kqueue", "eventport"] {
            assert_eq!(check_event_method(m), Ok(()), "{m}");
        }
    }

    #[test]
    fn level_triggered_methods_are_refused_naming_both_directives() {
        for m in ["poll", "select", "/dev/poll"] {
            let e = check_event_method(m).unwrap_err();
            assert!(e.contains("\"dyncert on\""), "{e}");
            assert!(e.contains(&format!("\"use {m}\"")), "{e}");
            assert!(e.contains("epoll, kqueue, eventport"), "{e}");
        }
        assert_eq!(
            check_event_method("poll").unwrap_err(),
            "\"dyncert on\" needs an edge-triggered event method (epoll, kqueue, eventport); \
             \"use poll\" reports a peeked connection as readable forever"
        );
    }
}
