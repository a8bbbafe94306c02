//! `nginx -t` accepts the whole API, cache and invalidation interface as
//! documented, and refuses malformed values with a message naming them.

use dyncert_testkit::*;

fn conf(http_extra: &str) -> String {
    format!(
        r#"
http {{
    {http_extra}
    server {{
        listen 127.0.0.1:8443 ssl;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        location / {{ return 200 "$ssl_server_name via $dyncert_source\n"; }}
    }}
}}
"#
    )
}

fn check(http_extra: &str) -> ConfigTest {
    let pki = Pki::new();
    Nginx::config_test(&pki, &conf(http_extra), NginxOpts::new())
}

#[test]
fn full_api_cache_and_invalidation_configuration_passes_config_test() {
    let pki = Pki::new();
    let dir = TempDir::new("ca");
    let ca = dir.path().join("ca.pem");
    write_file(&ca, &pki.root.cert_pem);
    let extra = format!(
        r#"
    dyncert_redis  redis://127.0.0.1:6379/0;
    dyncert_api    "https://certs.internal:8443/certs/{{name}}" writeback=24h rate=50;
    dyncert_api_header  Authorization "Bearer s3cret";
    dyncert_api_header  X-Terminator edge-1;
    dyncert_api_timeout 3s;
    dyncert_api_trusted_certificate {ca};
    dyncert_cache  max=10000 max_size=64m valid=10m stale=1h negative=30s;
    dyncert_fetch_concurrency 64;
    dyncert_fetch_timeout 2s;
    dyncert_invalidate_channel dyncert:invalidate;
"#,
        ca = ca.display()
    );
    let t = Nginx::config_test(&pki, &conf(&extra), NginxOpts::new());
    assert!(t.ok, "{}", t.output);
}

#[test]
fn api_without_redis_passes_config_test() {
    let t = check(r#"dyncert_api "http://127.0.0.1:8080/certs/{name}";"#);
    assert!(t.ok, "{}", t.output);
}

#[test]
fn malformed_api_and_cache_values_fail_config_test() {
    let cases: &[(&str, &[&str])] = &[
        // No place for the name: every name would fetch the same URL.
        (
            r#"dyncert_api "http://127.0.0.1:8080/certs/";"#,
            &["http://127.0.0.1:8080/certs/"],
        ),
        (
            r#"dyncert_api "ftp://127.0.0.1/certs/{name}";"#,
            &["ftp://127.0.0.1/certs/{name}"],
        ),
        (
            r#"dyncert_api "http://127.0.0.1:8080/certs/{name}" writeback=soon;"#,
            &["writeback=soon"],
        ),
        (
            r#"dyncert_api "http://127.0.0.1:8080/certs/{name}" rate=0;"#,
            &["rate=0", "from 1 to 100000"],
        ),
        (
            r#"dyncert_api "http://127.0.0.1:8080/certs/{name}" writeback=1h rate=x;"#,
            &["rate=x", "from 1 to 100000"],
        ),
        (
            r#"dyncert_api "http://127.0.0.1:8080/certs/{name}" rate=100001;"#,
            &["rate=100001"],
        ),
        (
            r#"dyncert_api "http://127.0.0.1:8080/certs/{name}"; dyncert_api_timeout never;"#,
            &["never"],
        ),
        (
            "dyncert_redis redis://127.0.0.1:6379/0; dyncert_cache max_size=lots;",
            &["max_size=lots"],
        ),
        (
            "dyncert_redis redis://127.0.0.1:6379/0; dyncert_fetch_concurrency many;",
            &["many"],
        ),
        (
            r#"dyncert_api "http://127.0.0.1:8080/certs/{name}"; dyncert_api "http://127.0.0.1:8081/certs/{name}";"#,
            &["is duplicate"],
        ),
        (
            r#"dyncert_api "http://127.0.0.1:8080/certs/{name}"; dyncert_api_trusted_certificate /nonexistent/ca.pem;"#,
            &["/nonexistent/ca.pem"],
        ),
    ];
    for (extra, expected) in cases {
        let t = check(extra);
        assert!(!t.ok, "accepted: {extra}\n{}", t.output);
        for e in *expected {
            assert!(
                t.output.contains(e),
                "error for {extra:?} does not name {e:?}:\n{}",
                t.output
            );
        }
    }
}
