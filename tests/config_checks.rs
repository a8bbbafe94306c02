//! Configuration mistakes fail `nginx -t` with a message that names them,
//! and every shipped example configuration passes it.

use dyncert_testkit::*;
use std::fs;
use std::path::Path;

const HTTP: &str = r#"
http {
    access_log off;
    dyncert_redis redis://127.0.0.1:6379/0;
    @HTTP_EXTRA@
    server {
        listen 127.0.0.1:@PORT@ ssl;
        server_name _;
        @SERVER@
        location / { return 200 "$ssl_server_name via $dyncert_source\n"; }
    }
}
"#;

const STATIC_CERT: &str = "ssl_certificate default.crt; ssl_certificate_key default.key;";

fn opts(http_extra: &str, server: &str) -> NginxOpts {
    NginxOpts::new()
        .var("HTTP_EXTRA", http_extra)
        .var("SERVER", server)
}

fn check(pki: &Pki, http_extra: &str, server: &str) -> ConfigTest {
    Nginx::config_test(pki, HTTP, opts(http_extra, server))
}

#[test]
fn dyncert_with_variable_ssl_certificate_fails_config_test() {
    let pki = Pki::new();
    let variable =
        "ssl_certificate $ssl_server_name.crt; ssl_certificate_key $ssl_server_name.key;";

    // Without dyncert the variable certificate is a valid nginx config, so
    // the failure below is about the combination.
    let t = check(&pki, "", &format!("{variable} dyncert off;"));
    assert!(
        t.ok,
        "variable ssl_certificate alone must pass:\n{}",
        t.output
    );
    let t = check(&pki, "", &format!("{STATIC_CERT} dyncert on;"));
    assert!(t.ok, "the base dyncert config must pass:\n{}", t.output);

    for server in [
        format!("{variable} dyncert on;"),
        format!("dyncert on; {variable}"),
    ] {
        let t = check(&pki, "", &server);
        assert!(!t.ok, "`{server}` passed nginx -t:\n{}", t.output);
        let named_both = t.output.lines().any(|l| {
            l.contains("[emerg]") && l.contains("dyncert") && l.contains("ssl_certificate")
        });
        assert!(
            named_both,
            "the error must name dyncert and ssl_certificate:\n{}",
            t.output
        );
    }
}

#[test]
fn unknown_directive_value_fails_config_test() {
    let pki = Pki::new();
    let t = check(
        &pki,
        "",
        &format!("{STATIC_CERT} dyncert on; dyncert_unknown default;"),
    );
    assert!(t.ok, "the base config must pass:\n{}", t.output);

    // (http extra, server extra, words of which the error must contain one:
    // the bad value, or the directive where nginx's own parsers omit it)
    for ok in [
        "dyncert_expiry_index off;",
        "dyncert_expiry_index tenants:expiry;",
    ] {
        let t = check(&pki, ok, &format!("{STATIC_CERT} dyncert on;"));
        assert!(t.ok, "`{ok}` must pass:\n{}", t.output);
    }
    let cases: [(&str, &str, &[&str]); 12] = [
        ("", "dyncert maybe;", &["maybe"]),
        ("", "dyncert_unknown whatever;", &["whatever"]),
        ("dyncert_cache max=abc;", "dyncert on;", &["abc"]),
        // A cache that can hold no certificate would serve none.
        (
            "dyncert_cache max=0;",
            "dyncert on;",
            &["max=0", "at least one"],
        ),
        (
            "dyncert_cache max_size=64k;",
            "dyncert on;",
            &["max_size=64k", "at least 256k"],
        ),
        (
            "dyncert_cache max=10 colour=blue;",
            "dyncert on;",
            &["colour"],
        ),
        ("dyncert_cache valid=soon;", "dyncert on;", &["soon"]),
        (
            "dyncert_fetch_timeout forever;",
            "dyncert on;",
            &["forever", "dyncert_fetch_timeout"],
        ),
        (
            "dyncert_redis_timeout never;",
            "dyncert on;",
            &["never", "dyncert_redis_timeout"],
        ),
        (
            "dyncert_redis redis://127.0.0.1:6380/0;",
            "dyncert on;",
            &["is duplicate"],
        ),
        (
            "dyncert_expiry_index \"two words\";",
            "dyncert on;",
            &["two words"],
        ),
        (
            "dyncert_expiry_index a; dyncert_expiry_index b;",
            "dyncert on;",
            &["is duplicate"],
        ),
    ];
    for (http_extra, server, expect) in cases {
        let t = check(&pki, http_extra, &format!("{STATIC_CERT} {server}"));
        assert!(
            !t.ok,
            "`{http_extra} {server}` passed nginx -t:\n{}",
            t.output
        );
        assert!(
            expect.iter().any(|e| t.output.contains(e)),
            "`{http_extra} {server}`: the error mentions none of {expect:?}:\n{}",
            t.output
        );
    }
}

#[test]
fn every_example_in_nginx_conf_passes_config_test() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx-conf");
    let mut examples: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    examples.sort();
    assert!(!examples.is_empty(), "no *.conf in {}", dir.display());

    let pki = Pki::new();
    let module = module_path();
    for example in &examples {
        let prefix = TempDir::new("example");
        let p = prefix.path();
        // The layout the examples assume: a prefix like /etc/nginx with the
        // module under modules/ and the default certificate under certs/.
        fs::create_dir_all(p.join("conf/certs")).unwrap();
        fs::create_dir_all(p.join("modules")).unwrap();
        fs::create_dir_all(p.join("logs")).unwrap();
        fs::copy(example, p.join("conf/nginx.conf")).unwrap();
        pki.write_default(&p.join("conf/certs"));
        std::os::unix::fs::symlink(&module, p.join("modules/ngx_http_dyncert_module.so")).unwrap();

        let t = Nginx::config_test_prefix(p);
        assert!(t.ok, "{} fails nginx -t:\n{}", example.display(), t.output);
    }
}

#[test]
fn level_triggered_event_methods_are_refused_with_dyncert_on() {
    let pki = Pki::new();
    let with = |method: &str, server: &str| {
        Nginx::config_test(&pki, HTTP, opts("", server).event_method(method))
    };
    let dyncert_on = format!("{STATIC_CERT} dyncert on;");

    for method in ["poll", "select"] {
        if !has_event_module(method) {
            eprintln!(
                "skipping \"use {method}\": {} was built without --with-{method}_module \
                 (NGX_CONFIGURE_ARGS, see .cargo/config.toml)",
                nginx_bin().display()
            );
            continue;
        }
        let t = with(method, &dyncert_on);
        assert!(
            !t.ok,
            "`use {method};` with dyncert on passed:\n{}",
            t.output
        );
        let expected = format!(
            "\"dyncert on\" needs an edge-triggered event method (epoll, kqueue, eventport); \
             \"use {method}\" reports a peeked connection as readable forever"
        );
        assert!(
            t.output
                .lines()
                .any(|l| l.contains("[emerg]") && l.contains(&expected)),
            "`use {method};`: no [emerg] with {expected:?}:\n{}",
            t.output
        );

        // The peek is dyncert's: without `dyncert on` nginx runs as usual.
        let t = with(method, &format!("{STATIC_CERT} dyncert off;"));
        assert!(
            t.ok,
            "`use {method};` without dyncert failed:\n{}",
            t.output
        );
    }

    let t = with("epoll", &dyncert_on);
    assert!(t.ok, "`use epoll;` with dyncert on failed:\n{}", t.output);
}

/// Whether the nginx under test has the event module `method`: configure
/// leaves poll and select out where epoll exists, and .cargo/config.toml
/// adds them back for the test above.
fn has_event_module(method: &str) -> bool {
    let out = std::process::Command::new(nginx_bin())
        .arg("-V")
        .output()
        .expect("run nginx -V");
    String::from_utf8_lossy(&out.stderr).contains(&format!("--with-{method}_module"))
}
