//! Per-tenant policy carried by a certificate record: an `allow` list that
//! applies to the tenant's name on top of the location's `dyncert_allow`,
//! and a `client_ca` that makes the handshake for that name ask for a
//! client certificate verified against that CA only (answered like nginx's
//! `ssl_verify_client`: 400 with the 496 or 495 page). Names without
//! `client_ca` are never asked; with `dyncert_tenant_policy off` the fields
//! are ignored; unparsable fields make the record unusable.

use dyncert_testkit::conf::dyncert_server;
use dyncert_testkit::*;
use openssl::ssl::SslVersion;

/// The servers of the `http {}` block, after Redis and [`METRICS_SERVER`]
/// ([`metrics_http`]): the module's server with the policy on, and on
/// `@OFFPORT@` one with it off.
fn http() -> String {
    let policy = dyncert_server(
        r#"
        dyncert_tenant_policy on;
        root html;
        add_header X-Client-Verify $ssl_client_verify always;
        add_header X-Client-S-DN $ssl_client_s_dn always;
        add_header X-Dyncert-Source $dyncert_source always;

        location / { }
        location /staff/ { dyncert_allow 127.0.0.0/30; }
        location /quiet/ { dyncert_deny_status 404; }
"#,
    );
    let off = r#"
    server {
        listen 127.0.0.1:@OFFPORT@ ssl;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        root html;
        add_header X-Client-Verify $ssl_client_verify always;
        location / { }
    }
"#;
    format!("{policy}{off}")
}

struct Tenants {
    s: Stack,
    mport: u16,
    offport: u16,
}

fn start() -> Tenants {
    let offport = free_port();
    let (s, mport) = Stack::with_metrics(&http(), NginxOpts::new().var("OFFPORT", offport));
    s.nginx.write_index_pages(&["", "staff/", "quiet/"]);
    Tenants { s, mport, offport }
}

impl Tenants {
    fn port(&self) -> u16 {
        self.s.nginx.port
    }

    fn send(&self, req: Request, port: u16) -> Exchange {
        req.https(port)
            .unwrap_or_else(|e| panic!("request failed: {e}\n{}", self.s.nginx.logs()))
    }
}

#[test]
fn tenant_allow_list_admits_only_its_networks() {
    let mut t = start();
    let a = t.s.pki.leaf(&["a.example.com"], 5001);
    let b = t.s.pki.leaf(&["b.example.com"], 5002);
    t.s.redis
        .put_leaf_with("a.example.com", &a, &[("allow", "127.0.0.2, 10.0.0.0/8")]);
    t.s.redis.put_leaf("b.example.com", &b);
    let before = scrape_metrics(t.mport);

    let get = |from: &str, sni: &str| t.send(Request::get("/").from(from).sni(sni), t.port());
    let r = get("127.0.0.2", "a.example.com");
    assert_eq!(r.status, 200, "{r:?}");
    r.assert_served(&a, &t.s.pki);
    let r = get("127.0.0.1", "a.example.com");
    assert_eq!(r.status, 403, "{r:?}");
    r.assert_served(&a, &t.s.pki);
    // The list belongs to a.example.com only.
    let r = get("127.0.0.1", "b.example.com");
    assert_eq!(r.status, 200, "{r:?}");
    r.assert_served(&b, &t.s.pki);
    // The location's deny status applies to tenant denials too.
    let r = t.send(
        Request::get("/quiet/")
            .from("127.0.0.1")
            .sni("a.example.com"),
        t.port(),
    );
    assert_eq!(r.status, 404, "{r:?}");

    let after = scrape_metrics(t.mport);
    let delta = |k: &str| after.get(k) - before.get(k);
    assert_eq!(delta("dyncert_tenant_denials_total"), 2.0);
    assert_eq!(delta("dyncert_allowlist_denials_total"), 0.0);
    let line =
        t.s.nginx
            .wait_for_log_line(STARTUP_DEADLINE, |l| {
                l.contains("dyncert: access forbidden by the tenant's allow list")
            })
            .unwrap_or_else(|| panic!("tenant denial not logged\n{}", t.s.nginx.logs()));
    assert!(line.contains("[error]"), "{line}");
    assert!(line.contains("client: 127.0.0.1"), "{line}");
    t.s.nginx.assert_healthy();
}

#[test]
fn tenant_and_location_lists_must_both_pass() {
    let mut t = start();
    let a = t.s.pki.leaf(&["a.example.com"], 5003);
    // /staff/ admits 127.0.0.0-3; the tenant admits .2 and .5.
    t.s.redis
        .put_leaf_with("a.example.com", &a, &[("allow", "127.0.0.2,127.0.0.5")]);
    let before = scrape_metrics(t.mport);
    let status = |from: &str| {
        t.send(
            Request::get("/staff/").from(from).sni("a.example.com"),
            t.port(),
        )
        .status
    };
    assert_eq!(status("127.0.0.2"), 200, "in both lists");
    assert_eq!(status("127.0.0.5"), 403, "tenant yes, location no");
    assert_eq!(status("127.0.0.1"), 403, "location yes, tenant no");
    let after = scrape_metrics(t.mport);
    let delta = |k: &str| after.get(k) - before.get(k);
    assert_eq!(delta("dyncert_allowlist_denials_total"), 1.0);
    assert_eq!(delta("dyncert_tenant_denials_total"), 1.0);
    t.s.nginx.assert_healthy();
}

/// A client of a tenant's own CA, and a client of some other CA (with the
/// same subject).
struct Mtls {
    alice: Issued,
    mallory: Issued,
}

fn mtls_tenant(t: &Tenants, name: &str, serial: u64) -> (Leaf, Mtls) {
    let ca = t.s.pki.client_ca(&format!("{name} client CA"));
    let alice = t.s.pki.client_cert(&ca, "alice");
    let other = t.s.pki.client_ca("some other CA");
    let mallory = t.s.pki.client_cert(&other, "alice");
    let leaf = t.s.pki.leaf(&[name], serial);
    t.s.redis
        .put_leaf_with(name, &leaf, &[("client_ca", &ca.cert_pem)]);
    (leaf, Mtls { alice, mallory })
}

#[test]
fn client_ca_tenant_asks_for_a_certificate_and_refuses_clients_without_one() {
    let mut t = start();
    let (leaf, _m) = mtls_tenant(&t, "mtls.example.com", 5010);
    let before = scrape_metrics(t.mport);
    for v in VERSIONS {
        let r = t.send(
            Request::get("/").sni("mtls.example.com").max_tls(v),
            t.port(),
        );
        r.assert_served(&leaf, &t.s.pki);
        assert!(r.tls().cert_requested, "no CertificateRequest: {r:?}");
        assert_eq!(
            r.tls().requested_cas,
            ["mtls.example.com client CA"],
            "the request must name the tenant's CA only"
        );
        assert_eq!(r.status, 400, "{r:?}");
        assert!(
            r.body.contains("No required SSL certificate was sent"),
            "expected nginx's 496 page, got {:?}",
            r.body
        );
    }
    let after = scrape_metrics(t.mport);
    assert_eq!(
        after.get("dyncert_client_cert_rejections_total")
            - before.get("dyncert_client_cert_rejections_total"),
        2.0
    );
    t.s.nginx.assert_healthy();
}

#[test]
fn client_ca_tenant_refuses_certificates_of_another_ca() {
    let mut t = start();
    let (leaf, m) = mtls_tenant(&t, "mtls.example.com", 5011);
    // A certificate of the server PKI is no better than any other CA's.
    let server_side = t.s.pki.leaf(&["alice"], 5012);
    let intermediate_client = Issued {
        cert: server_side.issued.cert.clone(),
        key: server_side.issued.key.clone(),
        cert_pem: String::new(),
        key_pem: String::new(),
    };
    for (who, cert) in [
        ("other CA", &m.mallory),
        ("server PKI", &intermediate_client),
    ] {
        for v in VERSIONS {
            let r = t.send(
                Request::get("/")
                    .sni("mtls.example.com")
                    .client_cert(cert)
                    .max_tls(v),
                t.port(),
            );
            r.assert_served(&leaf, &t.s.pki);
            assert_eq!(r.status, 400, "{who} over {v:?}: {r:?}");
            assert!(
                r.body.contains("The SSL certificate error"),
                "{who}: expected nginx's 495 page, got {:?}",
                r.body
            );
        }
    }
    t.s.nginx.assert_healthy();
}

#[test]
fn client_ca_tenant_admits_its_clients_with_verify_success_and_subject() {
    let mut t = start();
    let (leaf, m) = mtls_tenant(&t, "mtls.example.com", 5013);
    for v in VERSIONS {
        let r = t.send(
            Request::get("/")
                .sni("mtls.example.com")
                .client_cert(&m.alice)
                .max_tls(v),
            t.port(),
        );
        r.assert_served(&leaf, &t.s.pki);
        assert!(r.tls().cert_requested);
        assert_eq!(r.status, 200, "over {v:?}: {r:?}\n{}", t.s.nginx.logs());
        assert_eq!(r.body, index_page(""));
        assert_eq!(r.header("X-Client-Verify"), Some("SUCCESS"));
        assert_eq!(r.header("X-Client-S-DN"), Some("CN=alice"));
    }
    t.s.nginx.assert_healthy();
}

#[test]
fn names_without_client_ca_are_never_asked_for_a_certificate() {
    let mut t = start();
    let (_, m) = mtls_tenant(&t, "mtls.example.com", 5020);
    let plain = t.s.pki.leaf(&["plain.example.com"], 5021);
    let fenced = t.s.pki.leaf(&["fenced.example.com"], 5022);
    t.s.redis.put_leaf("plain.example.com", &plain);
    t.s.redis
        .put_leaf_with("fenced.example.com", &fenced, &[("allow", "127.0.0.0/8")]);
    // A connection of the mTLS tenant first, so that anything it set on
    // shared state would show in the ones after it.
    let r = t.send(
        Request::get("/")
            .sni("mtls.example.com")
            .client_cert(&m.alice),
        t.port(),
    );
    assert_eq!(r.status, 200, "{r:?}");

    for v in VERSIONS {
        for sni in [
            Some("plain.example.com"),
            Some("fenced.example.com"),
            Some("unknown.example.com"),
            None,
        ] {
            let mut req = Request::get("/").max_tls(v).client_cert(&m.alice);
            if let Some(sni) = sni {
                req = req.sni(sni);
            }
            let r = t.send(req, t.port());
            assert!(
                !r.tls().cert_requested && r.tls().requested_cas.is_empty(),
                "{sni:?} over {v:?} asked for a client certificate: {r:?}"
            );
            // Names without a record (and clients without SNI) are not
            // served on a tenant-policy server: 421.
            let known = matches!(sni, Some("plain.example.com" | "fenced.example.com"));
            assert_eq!(r.status, if known { 200 } else { 421 }, "{sni:?}: {r:?}");
            assert_eq!(r.header("X-Client-Verify"), Some("NONE"));
        }
    }
    t.s.nginx.assert_healthy();
}

#[test]
fn policy_fields_are_ignored_with_tenant_policy_off() {
    let mut t = start();
    let ca = t.s.pki.client_ca("tenant client CA");
    let leaf = t.s.pki.leaf(&["strict.example.com"], 5030);
    t.s.redis.put_leaf_with(
        "strict.example.com",
        &leaf,
        &[("allow", "10.0.0.0/8"), ("client_ca", &ca.cert_pem)],
    );
    let r = t.send(Request::get("/").sni("strict.example.com"), t.offport);
    r.assert_served(&leaf, &t.s.pki);
    assert!(!r.tls().cert_requested, "{r:?}");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("X-Client-Verify"), Some("NONE"));

    // Control: the same record, cached now, on the server with the policy
    // (whose allow list, checked first, turns this client away).
    let r = t.send(Request::get("/").sni("strict.example.com"), t.port());
    r.assert_served(&leaf, &t.s.pki);
    assert!(r.tls().cert_requested, "{r:?}");
    assert_eq!(r.status, 403, "{r:?}");
    t.s.nginx.assert_healthy();
}

#[test]
fn records_with_invalid_policy_fields_are_refused() {
    let mut t = start();
    let good = t.s.pki.leaf(&["good.example.com"], 5040);
    t.s.redis
        .put_leaf_with("good.example.com", &good, &[("allow", "127.0.0.0/8")]);
    let cases = [
        ("hostbits.example.com", "allow", "10.0.0.1/8"),
        ("bogus.example.com", "allow", "127.0.0.1, bogus"),
        ("notpem.example.com", "client_ca", "not a certificate"),
        // Present but empty: no CA, not "no client certificate needed".
        ("emptyca.example.com", "client_ca", ""),
    ];
    for (i, (name, field, value)) in cases.iter().enumerate() {
        let leaf = t.s.pki.leaf(&[name], 5041 + i as u64);
        t.s.redis.put_leaf_with(name, &leaf, &[(field, value)]);
    }
    for (name, field, _) in cases {
        let r = t.send(Request::get("/").sni(name), t.port());
        r.assert_default();
        let line =
            t.s.nginx
                .wait_for_log_line(STARTUP_DEADLINE, |l| {
                    l.contains("invalid certificate record") && l.contains(name)
                })
                .unwrap_or_else(|| panic!("no warning for {name}\n{}", t.s.nginx.logs()));
        assert!(line.contains("[warn]"), "{line}");
        assert!(
            line.contains(field),
            "the warning should name {field}: {line}"
        );
    }
    // Control: a valid policy field does not make a record unusable.
    let r = t.send(Request::get("/").sni("good.example.com"), t.port());
    r.assert_served(&good, &t.s.pki);
    assert_eq!(r.status, 200);
    t.s.nginx.assert_healthy();
}

#[test]
fn an_allow_list_naming_no_address_admits_no_one() {
    let mut t = start();
    // Tooling that writes a tenant's networks writes "" for a tenant that
    // has none: that closes the name, as "," always did; it never opens it.
    let cases = [
        ("empty.example.com", ""),
        ("blank.example.com", " "),
        ("comma.example.com", ","),
    ];
    let mut leaves = Vec::new();
    for (i, (name, allow)) in cases.iter().enumerate() {
        let leaf = t.s.pki.leaf(&[name], 5070 + i as u64);
        t.s.redis.put_leaf_with(name, &leaf, &[("allow", allow)]);
        leaves.push(leaf);
    }
    let open = t.s.pki.leaf(&["open.example.com"], 5079);
    t.s.redis.put_leaf("open.example.com", &open);
    let before = scrape_metrics(t.mport);
    for ((name, allow), leaf) in cases.iter().zip(&leaves) {
        for from in ["127.0.0.1", "127.0.0.2"] {
            let r = t.send(Request::get("/").from(from).sni(name), t.port());
            r.assert_served(leaf, &t.s.pki);
            assert_eq!(r.status, 403, "allow {allow:?} from {from}: {r:?}");
        }
    }
    // Control: a record without the field is open.
    let r = t.send(Request::get("/").sni("open.example.com"), t.port());
    r.assert_served(&open, &t.s.pki);
    assert_eq!(r.status, 200, "{r:?}");
    let after = scrape_metrics(t.mport);
    assert_eq!(
        after.get("dyncert_tenant_denials_total") - before.get("dyncert_tenant_denials_total"),
        6.0
    );
    t.s.nginx.assert_healthy();
}

/// Gets a session from `donor`, then sends `req` (which the tenant policy
/// refuses with `denied` in a full handshake) resuming it; returns what
/// went wrong.
fn refused_when_resuming(t: &Tenants, donor: Request, req: Request, denied: u16) -> Option<String> {
    let full = t.send(req.clone(), t.port());
    assert_eq!(full.status, denied, "control, full handshake: {full:?}");
    let first = t.send(donor, t.port());
    let session = first.tls().session.as_ref()?;
    // A session made for another name is declined (a full handshake
    // follows, tests/tenant_attacks.rs); any handshake failure is a test
    // failure.
    let again = match req.resume(session).https(t.port()) {
        Ok(x) => x,
        Err(e) => panic!("request failed: {e}\n{}", t.s.nginx.logs()),
    };
    // 421: the request's host is not the session's TLS server name (a
    // TLS 1.2 session keeps the name of its first handshake).
    (again.status != denied && again.status != 421).then(|| {
        format!(
            "{} {} over {} with a session of {:?} (resumed: {})",
            again.status,
            again.body.lines().next().unwrap_or(""),
            again.tls().version,
            first.tls().leaf_sans,
            again.tls().resumed
        )
    })
}

const VERSIONS: [SslVersion; 2] = [SslVersion::TLS1_3, SslVersion::TLS1_2];

/// Records for these tests; the client can resume sessions at all
/// (otherwise they would prove nothing).
fn resumption_setup(t: &Tenants) {
    let plain = t.s.pki.leaf(&["plain.example.com"], 5059);
    t.s.redis.put_leaf("plain.example.com", &plain);
    for v in VERSIONS {
        let req = Request::get("/").sni("plain.example.com").max_tls(v);
        let first = t.send(req.clone(), t.port());
        let session = first.tls().session.as_ref().expect("a session");
        let again = t.send(req.resume(session), t.port());
        assert!(again.tls().resumed, "control: no resumption over {v:?}");
    }
}

#[test]
fn resumed_sessions_still_need_the_tenants_client_certificate() {
    let mut t = start();
    resumption_setup(&t);
    mtls_tenant(&t, "mtls.example.com", 5050);
    let mut failures = Vec::new();
    for v in VERSIONS {
        let req = Request::get("/").sni("mtls.example.com").max_tls(v);
        // The session of a refused attempt: without a client certificate
        // the handshake still completes (and the 400 comes later) ...
        failures.extend(refused_when_resuming(&t, req.clone(), req.clone(), 400));
        // ... or of a name that never asks for one.
        let donor = Request::get("/").sni("plain.example.com").max_tls(v);
        failures.extend(refused_when_resuming(&t, donor, req, 400));
    }
    assert!(
        failures.is_empty(),
        "a client without a certificate got through by resuming a session: {failures:#?}"
    );
    t.s.nginx.assert_healthy();
}

#[test]
fn resumed_sessions_are_still_held_to_the_tenants_allow_list() {
    let mut t = start();
    resumption_setup(&t);
    let fenced = t.s.pki.leaf(&["fenced.example.com"], 5051);
    t.s.redis
        .put_leaf_with("fenced.example.com", &fenced, &[("allow", "127.0.0.2")]);
    let mut failures = Vec::new();
    for v in VERSIONS {
        let req = Request::get("/")
            .from("127.0.0.1")
            .sni("fenced.example.com")
            .max_tls(v);
        failures.extend(refused_when_resuming(&t, req.clone(), req.clone(), 403));
        let donor = Request::get("/")
            .from("127.0.0.1")
            .sni("plain.example.com")
            .max_tls(v);
        failures.extend(refused_when_resuming(&t, donor, req, 403));
    }
    assert!(
        failures.is_empty(),
        "a client outside the tenant's allow list got through by resuming a session: {failures:#?}"
    );
    t.s.nginx.assert_healthy();
}

/// A certificate of `ca` for servers only (extended key usage serverAuth):
/// one of the tenant's own server certificates, say. OpenSSL's verification
/// of a client (purpose "SSL client") refuses it.
fn server_only_certificate(ca: &Issued) -> Issued {
    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
    use openssl::x509::{X509Name, X509};
    let key = dyncert_testkit::pki::ec_key();
    let mut name = X509Name::builder().unwrap();
    name.append_entry_by_text("CN", "www.tenant.internal")
        .unwrap();
    let name = name.build();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(ca.cert.subject_name()).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(now - 3600).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(now + 86400).unwrap())
        .unwrap();
    b.append_extension(BasicConstraints::new().critical().build().unwrap())
        .unwrap();
    b.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .build()
            .unwrap(),
    )
    .unwrap();
    b.append_extension(ExtendedKeyUsage::new().server_auth().build().unwrap())
        .unwrap();
    b.sign(&ca.key, MessageDigest::sha256()).unwrap();
    let cert = b.build();
    Issued {
        cert_pem: String::from_utf8(cert.to_pem().unwrap()).unwrap(),
        key_pem: String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
        cert,
        key,
    }
}

#[test]
fn resumed_sessions_refuse_a_client_certificate_the_full_handshake_refused() {
    let mut t = start();
    resumption_setup(&t);
    let ca = t.s.pki.client_ca("tenant CA");
    let leaf = t.s.pki.leaf(&["mtls.example.com"], 5052);
    t.s.redis
        .put_leaf_with("mtls.example.com", &leaf, &[("client_ca", &ca.cert_pem)]);
    let alice = t.s.pki.client_cert(&ca, "alice");
    let server_cert = server_only_certificate(&ca);
    let mut failures = Vec::new();
    for v in VERSIONS {
        // Control: a client certificate of the CA passes, resumed too.
        let req = Request::get("/")
            .sni("mtls.example.com")
            .client_cert(&alice)
            .max_tls(v);
        let full = t.send(req.clone(), t.port());
        assert_eq!(full.status, 200, "control over {v:?}: {full:?}");
        let session = full.tls().session.clone().expect("a session");
        let again = t.send(req.resume(&session), t.port());
        assert!(again.tls().resumed, "control: no resumption over {v:?}");
        assert_eq!(again.status, 200, "control, resumed over {v:?}: {again:?}");

        let req = Request::get("/")
            .sni("mtls.example.com")
            .client_cert(&server_cert)
            .max_tls(v);
        let full = t.send(req.clone(), t.port());
        full.assert_served(&leaf, &t.s.pki);
        assert_eq!(full.status, 400, "full handshake over {v:?}: {full:?}");
        assert!(
            full.body.contains("The SSL certificate error"),
            "expected nginx's 495 page, got {:?}",
            full.body
        );
        let session = full.tls().session.clone().expect("a session");
        let again = t.send(req.resume(&session), t.port());
        assert!(again.tls().resumed, "the session did not resume over {v:?}");
        if again.status != 400 || !again.body.contains("The SSL certificate error") {
            failures.push(format!(
                "{v:?}: {} {}",
                again.status,
                again.body.lines().next().unwrap_or("")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "a certificate refused in a full handshake was accepted on resumption: {failures:#?}"
    );
    let log = t.s.nginx.error_log();
    assert!(
        log.contains("client SSL certificate verify error: (26)"),
        "the refusal should say invalid purpose (26):\n{log}"
    );
    t.s.nginx.assert_healthy();
}
