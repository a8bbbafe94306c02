//! ModSecurity v3 with the OWASP Core Rule Set next to dyncert: the
//! connector built by scripts/build-modsecurity.sh loaded into the same
//! NGINX, the rules of nginx-conf/waf/modsecurity.conf, tenants' records in
//! Redis. Normal requests pass, a SQL injection gets ModSecurity's 403, and
//! the two kinds of denial are told apart by their log lines and dyncert's
//! counters. The order of the checks is nginx's phases: ModSecurity's
//! blocking decision (CRS phase 2) runs in the pre-access phase after
//! dyncert's tenant policy and before the access phase's `dyncert_allow`,
//! whichever `load_module` comes first.
//!
//! Skipped when the connector is not built, unless `DYNCERT_REQUIRE_WAF` is
//! set (CI sets it): then it fails instead.

use std::fs;
use std::path::{Path, PathBuf};

use dyncert_testkit::module::workspace_dir;
use dyncert_testkit::*;

/// Debian's modsecurity-crs, which nginx-conf/waf/modsecurity.conf includes.
const CRS_SETUP: &str = "/etc/modsecurity/crs/crs-setup.conf";
const CRS_RULES: &str = "/usr/share/modsecurity-crs/rules";
/// Where the example's rules write the audit log (the test's prefix here).
const EXAMPLE_AUDIT_LOG: &str = "/var/log/nginx/modsec_audit.log";
const EXAMPLE_RULES_FILE: &str = "/etc/nginx/modsecurity/modsecurity.conf";

const HTTP: &str = r#"
http {
    log_format waf '$remote_addr "$request" $status sni=$dyncert_name';
    access_log logs/access.log waf;
    dyncert_redis @REDIS@;
    server {
        listen 127.0.0.1:@MPORT@;
        location = /metrics { dyncert_metrics; }
    }
    server {
        listen 127.0.0.1:@PORT@ ssl;
        server_name waf-tenants;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        dyncert_tenant_policy on;
        root html;
        modsecurity on;
        modsecurity_rules_file @RULES@;

        location / { }
        location /staff/ {
            dyncert_allow 127.0.0.1;
            dyncert_deny_status 404;
        }
    }
}
"#;

/// `1' OR '1'='1` in a query string: CRS 942100 (libinjection), a critical
/// anomaly that 949110 blocks at paranoia level 1.
const SQLI: &str = "?id=1%27%20OR%20%271%27%3D%271";
const TENANT_4XX: &str = r#"dyncert_responses_total{server="waf-tenants",class="4xx"}"#;
const MODSEC_DENIED: &str = "ModSecurity: Access denied with code 403";

/// The connector module, or None when the test is to be skipped: built by
/// scripts/build-modsecurity.sh (or named by `DYNCERT_MODSECURITY_MODULE`,
/// with its `nginx-V.txt` beside it) for an NGINX like the one under test.
fn connector() -> Option<PathBuf> {
    let module = std::env::var_os("DYNCERT_MODSECURITY_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_dir().join("target/modsecurity/ngx_http_modsecurity_module.so")
        });
    let built_for = fs::read_to_string(module.with_file_name("nginx-V.txt")).unwrap_or_default();
    let missing = if !module.is_file() {
        format!("no ModSecurity connector at {}", module.display())
    } else if built_for.trim() != nginx_v().trim() {
        // Another flavour's NGINX (OpenSSL 3.5 in target/ossl35): the
        // connector and libmodsecurity were built and checked for another.
        format!(
            "the connector was built for another NGINX:\n{built_for}\nnot\n{}",
            nginx_v()
        )
    } else if !Path::new(CRS_SETUP).is_file() || !Path::new(CRS_RULES).is_dir() {
        format!("no OWASP CRS at {CRS_SETUP} and {CRS_RULES}")
    } else {
        return Some(module);
    };
    let hint = "run scripts/build-modsecurity.sh (it installs the CRS with scripts/deps.sh --waf)";
    if std::env::var_os("DYNCERT_REQUIRE_WAF").is_some() {
        panic!("DYNCERT_REQUIRE_WAF is set but {missing}: {hint}");
    }
    eprintln!("skipping: {missing}; {hint} (DYNCERT_REQUIRE_WAF=1 makes this a failure)");
    None
}

/// `nginx -V` of the NGINX under test, without its build directory (as
/// scripts/build-modsecurity.sh records it in nginx-V.txt).
fn nginx_v() -> String {
    let out = std::process::Command::new(nginx_bin())
        .arg("-V")
        .output()
        .expect("run nginx -V");
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| match l.split_once(" --builddir=") {
            Some((head, tail)) => {
                let rest = tail.split_once(' ').map_or("", |(_, r)| r);
                if rest.is_empty() {
                    head.to_string()
                } else {
                    format!("{head} {rest}")
                }
            }
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The example's rules with the audit log moved into `prefix`.
fn write_rules(prefix: &Path) -> PathBuf {
    let example = workspace_dir().join("nginx-conf/waf/modsecurity.conf");
    let rules =
        fs::read_to_string(&example).unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    assert!(rules.contains(EXAMPLE_AUDIT_LOG), "{rules}");
    let audit = prefix.join("logs/modsec_audit.log");
    let path = prefix.join("conf/modsecurity.conf");
    write_file(
        &path,
        rules.replace(EXAMPLE_AUDIT_LOG, &audit.display().to_string()),
    );
    path
}

struct Waf {
    s: Stack,
    mport: u16,
    /// The prefix nginx runs in (kept by `NginxOpts::prefix`, removed here).
    _dir: TempDir,
}

fn start(module: &Path, first: bool) -> Waf {
    let dir = TempDir::new("waf");
    let rules = write_rules(dir.path());
    let pki = Pki::new();
    let redis = Redis::start();
    let mport = free_port();
    let nginx = Nginx::start(
        &pki,
        HTTP,
        NginxOpts::new()
            .prefix(dir.path())
            .other_module(module, first)
            .redis(&redis)
            .var("MPORT", mport)
            .var("RULES", rules.display()),
    );
    nginx.write_index_pages(&["", "staff/"]);
    Waf {
        s: Stack { pki, redis, nginx },
        mport,
        _dir: dir,
    }
}

impl Waf {
    fn send(&self, req: Request) -> Exchange {
        req.https(self.s.nginx.port)
            .unwrap_or_else(|e| panic!("request failed: {e}\n{}", self.s.nginx.logs()))
    }

    fn tenant(&self, name: &str, serial: u64, fields: &[(&str, &str)]) -> Leaf {
        let leaf = self.s.pki.leaf(&[name], serial);
        self.s.redis.put_leaf_with(name, &leaf, fields);
        leaf
    }

    fn denials_logged(&self) -> usize {
        self.s
            .nginx
            .error_log()
            .lines()
            .filter(|l| l.contains(MODSEC_DENIED))
            .count()
    }

    fn audit_log(&self) -> String {
        fs::read_to_string(self.s.nginx.prefix().join("logs/modsec_audit.log")).unwrap_or_default()
    }
}

#[test]
fn normal_requests_to_a_redis_tenant_pass_the_waf() {
    let Some(module) = connector() else { return };
    let mut w = start(&module, false);
    let leaf = w.tenant("shop.example.com", 7001, &[]);
    for path in ["/", "/?q=blue+shoes&page=2", "/index.html"] {
        let r = w.send(Request::get(path).sni("shop.example.com"));
        assert_eq!(r.status, 200, "{path}: {r:?}\n{}", w.s.nginx.logs());
        assert_eq!(r.body, index_page(""));
        r.assert_served(&leaf, &w.s.pki);
    }
    assert_eq!(w.denials_logged(), 0, "{}", w.s.nginx.logs());
    w.s.nginx.assert_healthy();
}

#[test]
fn sql_injection_gets_403_from_modsecurity_and_is_logged() {
    let Some(module) = connector() else { return };
    let mut w = start(&module, false);
    let leaf = w.tenant("shop.example.com", 7002, &[]);
    let before = scrape_metrics(w.mport);

    let r = w.send(Request::get(&format!("/{SQLI}")).sni("shop.example.com"));
    assert_eq!(r.status, 403, "{r:?}\n{}", w.s.nginx.logs());
    assert!(r.body.contains("403 Forbidden"), "{:?}", r.body);
    r.assert_served(&leaf, &w.s.pki);

    // One error line with the CRS rule that blocked and the one that
    // matched, the client and the tenant's name.
    let line =
        w.s.nginx
            .wait_for_log_line(STARTUP_DEADLINE, |l| l.contains(MODSEC_DENIED))
            .unwrap_or_else(|| panic!("no ModSecurity denial logged\n{}", w.s.nginx.logs()));
    assert!(line.contains("[error]"), "{line}");
    assert!(line.contains("(phase 2)"), "{line}");
    assert!(line.contains(r#"[id "949110"]"#), "{line}");
    assert!(line.contains("client: 127.0.0.1"), "{line}");
    assert!(line.contains(r#"host: "shop.example.com""#), "{line}");
    assert!(
        w.s.nginx.error_log().contains(r#"[id "942100"]"#),
        "the SQL injection rule's match is logged too\n{}",
        w.s.nginx.logs()
    );
    // The audit log has the transaction, with the same rule.
    let audit = poll(
        STARTUP_DEADLINE,
        std::time::Duration::from_millis(20),
        || {
            let a = w.audit_log();
            a.contains("949110").then_some(a)
        },
    )
    .unwrap_or_else(|| panic!("no audit log entry: {:?}", w.audit_log()));
    assert!(audit.contains("\"http_code\":403"), "{audit}");

    // dyncert counts the response, not a denial of its own.
    let after = scrape_metrics(w.mport);
    let delta = |k: &str| after.get(k) - before.get(k);
    assert_eq!(delta(TENANT_4XX), 1.0);
    assert_eq!(delta("dyncert_allowlist_denials_total"), 0.0);
    assert_eq!(delta("dyncert_tenant_denials_total"), 0.0);
    w.s.nginx.assert_healthy();
}

#[test]
fn dyncert_and_modsecurity_denials_are_told_apart_in_logs_and_metrics() {
    let Some(module) = connector() else { return };
    let mut w = start(&module, false);
    w.tenant("shop.example.com", 7003, &[]);
    w.tenant("intranet.example.com", 7004, &[("allow", "127.0.0.1")]);
    let before = scrape_metrics(w.mport);

    // dyncert_allow: its deny status, its line, its counter.
    let r = w.send(
        Request::get("/staff/")
            .from("127.0.0.2")
            .sni("shop.example.com"),
    );
    assert_eq!(r.status, 404, "{r:?}");
    // The tenant's own allow list: 403, its line, its counter.
    let r = w.send(
        Request::get("/")
            .from("127.0.0.2")
            .sni("intranet.example.com"),
    );
    assert_eq!(r.status, 403, "{r:?}");
    // The WAF: 403, ModSecurity's line, no dyncert counter.
    let r = w.send(Request::get(&format!("/{SQLI}")).sni("shop.example.com"));
    assert_eq!(r.status, 403, "{r:?}");

    let after = scrape_metrics(w.mport);
    let delta = |k: &str| after.get(k) - before.get(k);
    assert_eq!(delta("dyncert_allowlist_denials_total"), 1.0);
    assert_eq!(delta("dyncert_tenant_denials_total"), 1.0);
    assert_eq!(delta(TENANT_4XX), 3.0, "all three are 4xx responses");

    let log = w.s.nginx.error_log();
    let lines = |part: &str| log.lines().filter(|l| l.contains(part)).count();
    assert_eq!(
        lines("dyncert: access forbidden by dyncert_allow"),
        1,
        "{log}"
    );
    assert_eq!(
        lines("dyncert: access forbidden by the tenant's allow list"),
        1,
        "{log}"
    );
    assert_eq!(lines(MODSEC_DENIED), 1, "{log}");
    w.s.nginx.assert_healthy();
}

/// The phase order, by experiment, with the connector loaded after dyncert
/// and before it: the CRS blocks an attack first (its blocking decision
/// runs early in the pre-access phase), then the tenant policy answers
/// (last in pre-access, after realip), then `dyncert_allow` (access).
#[test]
fn the_waf_blocks_attacks_first_then_the_tenant_policy_then_dyncert_allow() {
    let Some(module) = connector() else { return };
    for first in [false, true] {
        let order = if first {
            "connector loaded first"
        } else {
            "dyncert loaded first"
        };
        let mut w = start(&module, first);
        w.tenant("shop.example.com", 7005, &[]);
        w.tenant("intranet.example.com", 7006, &[("allow", "127.0.0.1")]);
        let attack = |path: &str| format!("{path}{SQLI}");
        let before = scrape_metrics(w.mport);

        // A Host other than the SNI: an attack gets the WAF's 403, a plain
        // request the tenant policy's 421.
        let misdirected = |path: &str| {
            Request::get(path)
                .sni("shop.example.com")
                .host("intranet.example.com")
        };
        let r = w.send(misdirected(&attack("/")));
        assert_eq!(r.status, 403, "{order}: {r:?}");
        assert_eq!(w.denials_logged(), 1, "{order}: {}", w.s.nginx.logs());
        let r = w.send(misdirected("/"));
        assert_eq!(r.status, 421, "{order}: {r:?}");
        // A client the tenant's allow list refuses: the WAF's 403 for an
        // attack, dyncert's 403 (counted as a tenant denial) otherwise.
        let refused = |path: &str| {
            Request::get(path)
                .from("127.0.0.2")
                .sni("intranet.example.com")
        };
        let r = w.send(refused(&attack("/")));
        assert_eq!(r.status, 403, "{order}: {r:?}");
        assert_eq!(w.denials_logged(), 2, "{order}: {}", w.s.nginx.logs());
        let r = w.send(refused("/"));
        assert_eq!(r.status, 403, "{order}: {r:?}");
        assert_eq!(w.denials_logged(), 2, "{order}: {}", w.s.nginx.logs());
        let mid = scrape_metrics(w.mport);
        assert_eq!(
            mid.get("dyncert_tenant_denials_total") - before.get("dyncert_tenant_denials_total"),
            1.0,
            "{order}"
        );

        // A client outside dyncert_allow (whose deny status is 404): the
        // WAF's 403 comes first, dyncert_allow never sees the request.
        let r = w.send(
            Request::get(&attack("/staff/"))
                .from("127.0.0.2")
                .sni("shop.example.com"),
        );
        assert_eq!(r.status, 403, "{order}: {r:?}");
        assert_eq!(w.denials_logged(), 3, "{order}: {}", w.s.nginx.logs());
        let after = scrape_metrics(w.mport);
        assert_eq!(
            after.get("dyncert_allowlist_denials_total")
                - before.get("dyncert_allowlist_denials_total"),
            0.0,
            "{order}"
        );
        // Without the attack, the same client gets dyncert_allow's 404.
        let r = w.send(
            Request::get("/staff/")
                .from("127.0.0.2")
                .sni("shop.example.com"),
        );
        assert_eq!(r.status, 404, "{order}: {r:?}");
        w.s.nginx.assert_healthy();
    }
}

#[test]
fn waf_example_passes_config_test() {
    let Some(module) = connector() else { return };
    let dir = workspace_dir().join("nginx-conf/waf");
    let example = fs::read_to_string(dir.join("behind-l4-load-balancer.conf")).unwrap();
    assert!(example.contains(EXAMPLE_RULES_FILE), "{example}");

    let pki = Pki::new();
    let prefix = TempDir::new("waf-example");
    let p = prefix.path();
    // The layout the examples assume (see config_checks.rs), with the rules
    // file where the example names it moved into the prefix.
    fs::create_dir_all(p.join("conf/certs")).unwrap();
    fs::create_dir_all(p.join("modules")).unwrap();
    fs::create_dir_all(p.join("logs")).unwrap();
    let rules = write_rules(p);
    write_file(
        &p.join("conf/nginx.conf"),
        example.replace(EXAMPLE_RULES_FILE, &rules.display().to_string()),
    );
    pki.write_default(&p.join("conf/certs"));
    std::os::unix::fs::symlink(module_path(), p.join("modules/ngx_http_dyncert_module.so"))
        .unwrap();
    std::os::unix::fs::symlink(&module, p.join("modules/ngx_http_modsecurity_module.so")).unwrap();

    let t = Nginx::config_test_prefix(p);
    assert!(t.ok, "the WAF example fails nginx -t:\n{}", t.output);
    assert!(
        t.output.contains("ModSecurity-nginx v1.0")
            && !t.output.contains("rules loaded inline/local/remote: 0/0/0"),
        "the CRS was not loaded:\n{}",
        t.output
    );
}
