//! `dyncert_allow` lets only listed client networks through, checked in
//! nginx's access phase against the address nginx resolved: the TCP peer,
//! or the PROXY protocol / `X-Real-IP` source when realip trusts the
//! sender, never a forwarding header on its own. Locations serve static
//! files because a `return` answers before the access phase.
//!
//! The test client plays several clients by connecting from different
//! addresses of 127.0.0.0/8.

use dyncert_testkit::conf::dyncert_server;
use dyncert_testkit::*;
use std::net::SocketAddr;

/// The server of the `http {}` block, after Redis and [`METRICS_SERVER`]
/// ([`metrics_http`]).
fn http() -> String {
    dyncert_server(
        r#"
        root html;
        add_header X-Remote-Addr $remote_addr always;

        location / { dyncert_allow 127.0.0.1 127.0.1.0/24; }
        location /hidden/ {
            dyncert_allow 127.0.0.1;
            dyncert_deny_status 404;
        }
        location /open/ { }
"#,
    )
}

/// A stack for `servers` (after [`METRICS_SERVER`]), with the index pages
/// of [`http`]'s locations.
fn start(servers: &str, opts: NginxOpts) -> (Stack, u16) {
    let (s, mport) = Stack::with_metrics(servers, opts);
    s.nginx.write_index_pages(&["", "hidden/", "open/"]);
    (s, mport)
}

fn get(port: u16, from: &str, path: &str) -> Exchange {
    Request::get(path)
        .from(from)
        .https(port)
        .unwrap_or_else(|e| panic!("GET {path} from {from}: {e}"))
}

#[test]
fn listed_clients_pass_and_others_get_403() {
    let (mut s, _) = start(&http(), NginxOpts::new());
    let port = s.nginx.port;

    for from in ["127.0.0.1", "127.0.1.77", "127.0.1.255"] {
        let r = get(port, from, "/");
        assert_eq!(r.status, 200, "{from} is listed: {r:?}");
        assert_eq!(r.body, index_page(""));
        assert_eq!(r.header("X-Remote-Addr"), Some(from));
    }
    for from in ["127.0.0.2", "127.0.2.1", "127.1.1.1"] {
        let r = get(port, from, "/");
        assert_eq!(r.status, 403, "{from} is not listed: {r:?}");
        assert!(r.body.contains("403 Forbidden"), "body {:?}", r.body);
    }
    // A location without a list is open to everyone.
    let r = get(port, "127.0.0.2", "/open/");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, index_page("open/"));

    let line = s
        .nginx
        .wait_for_log_line(STARTUP_DEADLINE, |l| {
            l.contains("dyncert: access forbidden by dyncert_allow") && l.contains("127.0.0.2")
        })
        .unwrap_or_else(|| panic!("no denial logged for 127.0.0.2\n{}", s.nginx.logs()));
    assert!(
        line.contains("[error]"),
        "denials are policy errors: {line}"
    );
    s.nginx.assert_healthy();
}

#[test]
fn deny_status_404_hides_the_location_from_other_clients() {
    let (mut s, _) = start(&http(), NginxOpts::new());
    let port = s.nginx.port;
    // The page exists (the listed client gets it), so the 404 is the
    // configured denial and not a missing file.
    let r = get(port, "127.0.0.1", "/hidden/");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, index_page("hidden/"));
    let r = get(port, "127.0.0.2", "/hidden/");
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("404 Not Found"), "body {:?}", r.body);
    s.nginx.assert_healthy();
}

#[test]
fn denials_are_counted_in_metrics() {
    let (mut s, mport) = start(&http(), NginxOpts::new());
    let port = s.nginx.port;
    let before = scrape_metrics(mport);
    for _ in 0..3 {
        assert_eq!(get(port, "127.0.0.2", "/").status, 403);
    }
    assert_eq!(get(port, "127.0.0.2", "/hidden/").status, 404);
    assert_eq!(get(port, "127.0.0.1", "/").status, 200);
    assert_eq!(get(port, "127.0.0.2", "/open/").status, 200);
    let after = scrape_metrics(mport);
    let delta = |k: &str| after.get(k) - before.get(k);
    assert_eq!(delta("dyncert_allowlist_denials_total"), 4.0);
    assert_eq!(delta("dyncert_tenant_denials_total"), 0.0);
    s.nginx.assert_healthy();
}

fn inherit() -> String {
    let lists = dyncert_server(
        r#"
        root html;
        dyncert_allow 127.0.0.2;
        dyncert_deny_status 404;

        location / { }
        location /override/ { dyncert_allow 127.0.0.3; }
        location /both/ {
            dyncert_allow 127.0.0.3;
            dyncert_allow 127.0.0.4;
        }
        location /public/ { dyncert_allow all; }
"#,
    );
    let without = r#"
    server {
        listen 127.0.0.1:@HPORT@ ssl;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        root html;
        location / { }
    }
"#;
    format!("    dyncert_allow 127.0.0.9;\n{lists}{without}")
}

#[test]
fn location_list_replaces_the_inherited_one_and_several_directives_add_up() {
    let hport = free_port();
    let (mut s, _) = start(&inherit(), NginxOpts::new().var("HPORT", hport));
    s.nginx
        .write_index_pages(&["override/", "both/", "public/"]);
    let port = s.nginx.port;
    let status = |port: u16, from: &str, path: &str| get(port, from, path).status;

    // The server's list, inherited by a location without its own; the
    // server's deny status with it.
    assert_eq!(status(port, "127.0.0.2", "/"), 200);
    assert_eq!(status(port, "127.0.0.3", "/"), 404);
    assert_eq!(status(port, "127.0.0.9", "/"), 404, "http list is replaced");
    // A location list replaces the server's instead of adding to it.
    assert_eq!(status(port, "127.0.0.3", "/override/"), 200);
    assert_eq!(status(port, "127.0.0.2", "/override/"), 404);
    // Two directives in one block add up.
    assert_eq!(status(port, "127.0.0.3", "/both/"), 200);
    assert_eq!(status(port, "127.0.0.4", "/both/"), 200);
    assert_eq!(status(port, "127.0.0.2", "/both/"), 404);
    // `all` opens a location again.
    assert_eq!(status(port, "127.0.0.77", "/public/"), 200);
    // A server without a list of its own gets the http one, and the
    // default 403.
    assert_eq!(status(hport, "127.0.0.9", "/"), 200);
    assert_eq!(status(hport, "127.0.0.2", "/"), 403);
    s.nginx.assert_healthy();
}

fn env() -> String {
    dyncert_server(
        r#"
        root html;
        location / { dyncert_allow 127.0.0.5 env=DYNCERT_TEST_ALLOW_IPS; }
"#,
    )
}

#[test]
fn env_list_is_read_from_the_environment_of_nginx() {
    let mut s = Stack::start_with(
        &format!("env DYNCERT_TEST_ALLOW_IPS;{}", metrics_http(&env())),
        NginxOpts::new().var("MPORT", free_port()).env(
            "DYNCERT_TEST_ALLOW_IPS",
            "10.0.0.0/8, 127.0.0.3 127.0.1.0/24,2001:db8::/32",
        ),
    );
    s.nginx.write_index_pages(&[""]);
    let port = s.nginx.port;
    for from in ["127.0.0.3", "127.0.1.200", "127.0.0.5"] {
        assert_eq!(get(port, from, "/").status, 200, "{from} is in the list");
    }
    for from in ["127.0.0.1", "127.0.0.4", "127.0.2.1"] {
        assert_eq!(get(port, from, "/").status, 403, "{from} is not");
    }
    s.nginx.assert_healthy();
}

#[test]
fn unset_env_variable_fails_the_config_test_naming_it() {
    let pki = Pki::new();
    let conf = |var: &str| {
        format!(
            "env {var};\nhttp {{\n    server {{\n        listen 127.0.0.1:{};\n        \
             location / {{ dyncert_allow env={var}; }}\n    }}\n}}\n",
            free_port()
        )
    };
    let var = "DYNCERT_TEST_UNSET_ALLOW_LIST";
    assert!(std::env::var_os(var).is_none(), "{var} must not be set");
    let t = Nginx::config_test(&pki, &conf(var), NginxOpts::new());
    assert!(!t.ok, "nginx -t passed with {var} unset:\n{}", t.output);
    assert!(
        t.output.contains(var) && t.output.contains("not set"),
        "message must name {var}:\n{}",
        t.output
    );

    // Control: the same configuration passes once the variable is set ...
    let t = Nginx::config_test(&pki, &conf(var), NginxOpts::new().env(var, "10.0.0.0/8"));
    assert!(t.ok, "nginx -t with {var} set:\n{}", t.output);

    // ... and fails, naming it, when its value is not a list of networks.
    for bad in ["10.0.0.1/8", "bogus", "10.0.0.0/8,300.1.1.1"] {
        let t = Nginx::config_test(&pki, &conf(var), NginxOpts::new().env(var, bad));
        assert!(!t.ok, "nginx -t passed with {var}={bad:?}:\n{}", t.output);
        assert!(
            t.output.contains(var),
            "message must name {var}:\n{}",
            t.output
        );
    }
}

fn headers() -> String {
    let direct = dyncert_server(
        r#"
        root html;
        add_header X-Remote-Addr $remote_addr always;
        location / { dyncert_allow 10.1.2.3; }
"#,
    );
    let behind_realip = r#"
    server {
        listen 127.0.0.1:@RPORT@ ssl;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        root html;
        add_header X-Remote-Addr $remote_addr always;
        set_real_ip_from 127.0.0.1;
        real_ip_header X-Real-IP;
        location / { dyncert_allow 10.1.2.3; }
    }
"#;
    direct + behind_realip
}

#[test]
fn spoofed_forwarding_headers_are_ignored_without_realip() {
    let (mut s, _) = start(&headers(), NginxOpts::new().var("RPORT", free_port()));
    let spoofs: [&[(&str, &str)]; 4] = [
        &[("X-Forwarded-For", "10.1.2.3")],
        &[("X-Real-IP", "10.1.2.3")],
        &[("Forwarded", "for=10.1.2.3")],
        &[
            ("X-Forwarded-For", "10.1.2.3, 10.1.2.3"),
            ("X-Real-IP", "10.1.2.3"),
            ("X-Client-IP", "10.1.2.3"),
        ],
    ];
    for headers in spoofs {
        let mut req = Request::get("/");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let r = req.https(s.nginx.port).unwrap();
        assert_eq!(r.status, 403, "headers {headers:?} got a client through");
        assert_eq!(r.header("X-Remote-Addr"), Some("127.0.0.1"));
    }
    s.nginx.assert_healthy();
}

#[test]
fn realip_header_is_honoured_from_a_trusted_sender_only() {
    let rport = free_port();
    let (mut s, _) = start(&headers(), NginxOpts::new().var("RPORT", rport));
    // Control: with `set_real_ip_from` trusting 127.0.0.1, its X-Real-IP is
    // the client address the list sees.
    let r = Request::get("/")
        .header("X-Real-IP", "10.1.2.3")
        .https(rport)
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("X-Remote-Addr"), Some("10.1.2.3"));
    let r = Request::get("/")
        .header("X-Real-IP", "10.9.9.9")
        .https(rport)
        .unwrap();
    assert_eq!(r.status, 403, "{r:?}");
    // Another header than the configured one does not count.
    let r = Request::get("/")
        .header("X-Forwarded-For", "10.1.2.3")
        .https(rport)
        .unwrap();
    assert_eq!(r.status, 403, "{r:?}");
    // A sender realip does not trust cannot set the address.
    let r = Request::get("/")
        .from("127.0.0.2")
        .header("X-Real-IP", "10.1.2.3")
        .https(rport)
        .unwrap();
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.header("X-Remote-Addr"), Some("127.0.0.2"));
    s.nginx.assert_healthy();
}

fn proxy() -> String {
    let direct = dyncert_server(r#"        location / { return 200 "plain\n"; }"#);
    let behind_proxy = r#"
    server {
        listen 127.0.0.1:@PPORT@ ssl proxy_protocol;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        set_real_ip_from 127.0.0.1;
        real_ip_header proxy_protocol;
        root html;
        add_header X-Remote-Addr $remote_addr always;
        add_header X-Dyncert-Source $dyncert_source always;
        location / { dyncert_allow 203.0.113.0/24 2001:db8::/32; }
    }
"#;
    direct + behind_proxy
}

fn proxy_protocol_source_is_honoured(version: u8) {
    let pport = free_port();
    let (mut s, _) = start(&proxy(), NginxOpts::new().var("PPORT", pport));
    s.nginx.write_index_pages(&[""]);
    let leaf = s.pki.leaf(&["shop.example.com"], 4401);
    s.redis.put_leaf("shop.example.com", &leaf);
    let dst: SocketAddr = ([127, 0, 0, 1], pport).into();
    let header = |src: &str| {
        let src: SocketAddr = src.parse().unwrap();
        let dst = if src.is_ipv4() {
            dst
        } else {
            "[2001:db8::443]:443".parse().unwrap()
        };
        match version {
            1 => proxy_v1(src, dst),
            _ => proxy_v2(src, dst),
        }
    };
    let get = |src: &str| {
        Request::get("/")
            .sni("shop.example.com")
            .prefix(header(src))
            .https(pport)
            .unwrap_or_else(|e| panic!("PROXY v{version} from {src}: {e}\n{}", s.nginx.logs()))
    };

    // The first connection finds the name uncached: the module peeks the
    // ClientHello behind the PROXY header and fetches it from Redis.
    let r = get("203.0.113.7:40001");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("X-Remote-Addr"), Some("203.0.113.7"));
    r.assert_served(&leaf, &s.pki);
    assert_eq!(r.header("X-Dyncert-Source"), Some("redis"));

    let r = get("198.51.100.7:40002");
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.header("X-Remote-Addr"), Some("198.51.100.7"));
    r.assert_served(&leaf, &s.pki);

    // The TCP peer is 127.0.0.1 for both; only the PROXY source differs.
    let r = get("[2001:db8::7]:40003");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("X-Remote-Addr"), Some("2001:db8::7"));
    let r = get("[2001:db9::7]:40004");
    assert_eq!(r.status, 403, "{r:?}");
    s.nginx.assert_healthy();
}

#[test]
fn proxy_protocol_v1_source_is_honoured_and_dynamic_certificate_served() {
    proxy_protocol_source_is_honoured(1);
}

#[test]
fn proxy_protocol_v2_source_is_honoured_and_dynamic_certificate_served() {
    proxy_protocol_source_is_honoured(2);
}

const V6: &str = r#"
    server {
        listen 127.0.0.1:@PORT@ ssl;
        listen [::1]:@V6PORT@ ssl;
        listen [::]:@DUALPORT@ ssl ipv6only=off;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        root html;
        add_header X-Remote-Addr $remote_addr always;
        location / { dyncert_allow ::1/128 127.0.0.1; }
        location /doc/ { dyncert_allow 2001:db8::/32; }
    }
"#;

#[test]
fn ipv6_clients_match_ipv6_networks_and_mapped_ipv4_clients_match_ipv4_ones() {
    if !has_ipv6_loopback() {
        eprintln!("skipped: this machine has no ::1");
        return;
    }
    let v6port = free_port();
    let dualport = free_port();
    let (mut s, _) = start(
        V6,
        NginxOpts::new()
            .var("V6PORT", v6port)
            .var("DUALPORT", dualport),
    );
    s.nginx.write_index_pages(&["doc/"]);

    let r = Request::get("/").to("::1").https(v6port).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("X-Remote-Addr"), Some("::1"));
    let r = Request::get("/doc/").to("::1").https(v6port).unwrap();
    assert_eq!(r.status, 403, "::1 is outside 2001:db8::/32: {r:?}");

    // On a dual-stack socket an IPv4 client is ::ffff:127.0.0.x, which
    // IPv4 rules match (as with nginx's allow).
    let r = Request::get("/").from("127.0.0.1").https(dualport).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("X-Remote-Addr"), Some("::ffff:127.0.0.1"));
    let r = Request::get("/").from("127.0.0.2").https(dualport).unwrap();
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.header("X-Remote-Addr"), Some("::ffff:127.0.0.2"));
    s.nginx.assert_healthy();
}
