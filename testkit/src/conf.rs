//! The pieces of `http {}` templates that many feature tests share, so that
//! a test's template spells out only what its feature needs: the
//! directives and servers under test stay inline in the test file, next to
//! the assertions. Placeholders are the kit's (`@PORT@`, `@REDIS@`,
//! `@MPORT@`, ...), filled by [`NginxOpts`](crate::NginxOpts).

/// `dyncert_metrics` on `@MPORT@`.
pub const METRICS_SERVER: &str = r#"
    server {
        listen 127.0.0.1:@MPORT@;
        location = /metrics { dyncert_metrics; }
    }
"#;

/// `dyncert_metrics` on `@MPORT@` as `metrics.internal`, naming the worker
/// that answered in `X-Worker` (for tests that scrape every worker).
pub const WORKER_METRICS_SERVER: &str = r#"
    server {
        listen 127.0.0.1:@MPORT@;
        server_name metrics.internal;
        location = /metrics {
            add_header X-Worker $pid;
            dyncert_metrics;
        }
    }
"#;

/// The opening of the module's TLS server ([`SOURCE_SERVER`],
/// [`dyncert_server`]): on `@PORT@`, `server_name _`, the default
/// certificate, the module on. A macro so that the constant can be
/// `concat!`ed from it.
macro_rules! dyncert_server_head {
    () => {
        r#"
    server {
        listen 127.0.0.1:@PORT@ ssl;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
"#
    };
}

/// The TLS server of the certificate-source tests, on `@PORT@`: the default
/// certificate, the module on, and `/` answering
/// `<sni> via <source> name=<name> pid=<pid>`, which
/// [`Exchange::source`](crate::Exchange::source) and
/// [`Exchange::pid`](crate::Exchange::pid) read.
pub const SOURCE_SERVER: &str = concat!(
    dyncert_server_head!(),
    r#"        location / { return 200 "$ssl_server_name via $dyncert_source name=$dyncert_name pid=$pid\n"; }
    }
"#
);

/// The module's TLS server as in [`SOURCE_SERVER`] (on `@PORT@`,
/// `server_name _`, the default certificate, `dyncert on`) holding `body`:
/// the test's own directives and locations, written inline in the test.
pub fn dyncert_server(body: &str) -> String {
    let mut t = String::from(dyncert_server_head!());
    t.push_str(body.trim_start_matches('\n'));
    if !t.ends_with('\n') {
        t.push('\n');
    }
    t.push_str("    }\n");
    t
}

/// [`SOURCE_SERVER`] answering `<sni> via <source>` and then `tail`
/// instead of ` name=<name> pid=<pid>`, for tests that read less.
pub fn source_server(tail: &str) -> String {
    SOURCE_SERVER.replace(" name=$dyncert_name pid=$pid", tail)
}

/// An `http {}` template: the access log off, then `parts` (directives and
/// servers) in order.
pub fn http_block(parts: &[&str]) -> String {
    let mut t = String::from("\nhttp {\n    access_log off;\n");
    for part in parts {
        t.push_str(part);
        if !part.ends_with('\n') {
            t.push('\n');
        }
    }
    t.push_str("}\n");
    t
}

/// An `http {}` template with Redis at `@REDIS@` and [`METRICS_SERVER`],
/// then `rest`: the test's own directives and servers.
pub fn metrics_http(rest: &str) -> String {
    http_block(&["    dyncert_redis @REDIS@;", METRICS_SERVER, rest])
}

/// An `http {}` template with Redis at `@REDIS@` and
/// [`WORKER_METRICS_SERVER`], then `rest`.
pub fn worker_metrics_http(rest: &str) -> String {
    http_block(&["    dyncert_redis @REDIS@;", WORKER_METRICS_SERVER, rest])
}

/// The plainest template: Redis at `@REDIS@` and [`SOURCE_SERVER`].
pub fn redis_http() -> String {
    http_block(&["    dyncert_redis @REDIS@;", SOURCE_SERVER])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_stand_inside_one_http_block_in_order() {
        let t = http_block(&["    a;", "    b;\n"]);
        assert_eq!(t, "\nhttp {\n    access_log off;\n    a;\n    b;\n}\n");
        let m = metrics_http("    server { }\n");
        assert!(m.starts_with("\nhttp {\n    access_log off;\n    dyncert_redis @REDIS@;\n"));
        assert!(
            m.ends_with("dyncert_metrics; }\n    }\n    server { }\n}\n"),
            "{m}"
        );
    }

    #[test]
    fn the_dyncert_server_holds_the_body_where_the_source_server_has_its_location() {
        let location = r#"        location / { return 200 "$ssl_server_name via $dyncert_source name=$dyncert_name pid=$pid\n"; }"#;
        assert_eq!(dyncert_server(location), SOURCE_SERVER);
        assert_eq!(dyncert_server(&format!("\n{location}\n")), SOURCE_SERVER);
        assert!(
            source_server("").contains(r#"return 200 "$ssl_server_name via $dyncert_source\n";"#)
        );
    }
}
