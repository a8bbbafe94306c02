//! Private keys held by a PKCS#11 module (SoftHSM2 here): a record's `key`
//! field may be `engine:pkcs11:<pkcs11 URI>` when the operator allows it
//! (`dyncert_key_references engine`). The key is loaded once per fetched
//! record through OpenSSL's pkcs11 engine and reused by every handshake;
//! by default, and for any other engine, path or dangerous URI, the record
//! is refused with a log line and a counter.
//!
//! Needs softhsm2, opensc (pkcs11-tool) and libengine-pkcs11-openssl
//! (`scripts/deps.sh --pkcs11`). Without them the tests skip, unless
//! `DYNCERT_REQUIRE_PKCS11` is set (as test.sh does): then they fail.

use dyncert_testkit::*;
use std::time::Duration;

fn http() -> String {
    let http = http_block(&[
        "    dyncert_redis @REDIS@;\n    @KEYREFS@\n    @ZONE@",
        METRICS_SERVER,
        SOURCE_SERVER,
    ]);
    format!("\nenv SOFTHSM2_CONF;{http}")
}

/// The PIN file sits in the token's temp dir (see `SoftHsm::start`).
const ENGINE: &str =
    "dyncert_key_references engine module=/usr/lib/softhsm/libsofthsm2.so pin_file=@PIN_FILE@;";

/// A fresh SoftHSM2 token of its own labelled "dyncert" (user PIN 1234),
/// or `None` when the tools are missing and the tests may skip.
fn token() -> Option<SoftHsm> {
    let hsm = SoftHsm::start("softhsm", &[], &[])?;
    hsm.hand_to_workers();
    hsm.init_token();
    Some(hsm)
}

struct Host {
    s: Stack,
    mport: u16,
}

fn start(hsm: &SoftHsm, workers: u32, keyrefs: &str, zone: &str) -> Host {
    let mport = free_port();
    let s = Stack::start_with(
        &http(),
        NginxOpts::new()
            .workers(workers)
            .var("MPORT", mport)
            .var("KEYREFS", keyrefs)
            .var("ZONE", zone)
            .var("PIN_FILE", hsm.dir.path().join("pin").display())
            .env("SOFTHSM2_CONF", hsm.conf().to_str().unwrap()),
    );
    Host { s, mport }
}

impl Host {
    /// `name`'s leaf `serial`, its key imported into the token as
    /// `id`/`label` and its record in Redis referring to it.
    fn put_on_token(&self, hsm: &SoftHsm, name: &str, serial: u64, id: &str, label: &str) -> Leaf {
        let leaf = self.s.pki.leaf(&[name], serial);
        hsm.import(&leaf, id, label);
        self.s
            .redis
            .hset_cert(name, &leaf.chain_pem, &reference(label));
        leaf
    }

    fn metrics(&self) -> Metrics {
        scrape_metrics(self.mport)
    }

    fn rejected(&self, reason: &str) -> f64 {
        self.metrics().get(&format!(
            "dyncert_records_rejected_total{{reason=\"{reason}\"}}"
        ))
    }

    fn resolved(&self) -> f64 {
        self.metrics().get("dyncert_key_references_resolved_total")
    }

    /// The log line about `name`'s record, which must name the reason and
    /// never the PIN.
    fn refusal_line(&self, name: &str, reason: &str) -> String {
        let line = self
            .s
            .nginx
            .wait_for_log_line(Duration::from_secs(5), |l| {
                l.contains("dyncert:") && l.contains(&format!("name: \"{name}\""))
            })
            .unwrap_or_else(|| panic!("no log line for {name}\n{}", self.s.nginx.logs()));
        assert!(line.contains(reason), "{reason:?} not in: {line}");
        assert!(!line.contains("pin-value"), "PIN in the log: {line}");
        line
    }
}

fn reference(object: &str) -> String {
    format!("engine:pkcs11:pkcs11:token=dyncert;object={object}")
}

#[test]
fn engine_mode_serves_a_softhsm_key_and_resolves_it_once() {
    let Some(hsm) = token() else { return };
    let h = start(&hsm, 1, ENGINE, "");
    let leaf = h.put_on_token(&hsm, "hsm.example.com", 16001, "01", "k1");

    for i in 0..20 {
        let r = h.s.get(Some("hsm.example.com"));
        assert_eq!(r.status, 200);
        r.assert_served(&leaf, &h.s.pki);
        let want = if i == 0 { "redis" } else { "cache" };
        assert_eq!(r.source(), want, "{:?}", r.body);
    }
    assert_eq!(h.resolved(), 1.0, "one resolution for 20 handshakes");

    // The private key is nowhere in Redis: only the reference is.
    let key_b64 = leaf.key_pem.lines().nth(1).unwrap();
    let record = h.s.redis.record("hsm.example.com");
    for (field, value) in &record {
        assert!(!value.contains("PRIVATE KEY"), "{field} holds a key");
        assert!(!value.contains(key_b64), "{field} holds the key's base64");
    }
    assert!(record
        .iter()
        .any(|(f, v)| f == "key" && *v == reference("k1")));
}

#[test]
fn a_key_generated_on_the_token_signs_the_handshake_and_a_wrong_pin_refuses_it() {
    let Some(hsm) = token() else { return };
    // The key pair is made by the token and its private half never leaves
    // it; only the public half is read out, to certify it.
    hsm.run(
        "pkcs11-tool",
        &[
            "--module",
            SOFTHSM_MODULE,
            "--login",
            "--pin",
            SOFTHSM_PIN,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--id",
            "07",
            "--label",
            "gen",
        ],
    );
    let pub_der = hsm.dir.path().join("gen.pub.der");
    hsm.run(
        "pkcs11-tool",
        &[
            "--module",
            SOFTHSM_MODULE,
            "--read-object",
            "--type",
            "pubkey",
            "--label",
            "gen",
            "--output-file",
            pub_der.to_str().unwrap(),
        ],
    );
    hsm.hand_to_workers();
    let public = openssl::pkey::PKey::public_key_from_der(&std::fs::read(&pub_der).unwrap())
        .expect("pkcs11-tool's public key as SubjectPublicKeyInfo DER");

    let h = start(&hsm, 1, ENGINE, "");
    let (cert, chain) =
        h.s.pki
            .leaf_for_public_key(&["gen.example.com"], 16010, &public);
    h.s.redis
        .hset_cert("gen.example.com", &chain, &reference("gen"));
    // A TLS 1.3 handshake completes only when the CertificateVerify
    // signature checks out against the served certificate's public key:
    // the token's key signed it.
    let r = h.s.get(Some("gen.example.com"));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.source(), "redis");
    assert_eq!(
        r.tls().chain[0].to_der().unwrap(),
        cert.to_der().unwrap(),
        "not the certificate of the token's key"
    );
    assert_eq!(h.resolved(), 1.0);

    // The same record on a server whose operator PIN is wrong: refused,
    // the name gets the default certificate, the PIN is in no log line.
    let wrong = hsm.dir.path().join("wrong-pin");
    write_file(&wrong, "987654\n");
    hsm.hand_to_workers();
    let bad = format!(
        "dyncert_key_references engine module={SOFTHSM_MODULE} pin_file={};",
        wrong.display()
    );
    let h2 = start(&hsm, 1, &bad, "");
    h2.s.redis
        .hset_cert("gen.example.com", &chain, &reference("gen"));
    let r = h2.s.get(Some("gen.example.com"));
    r.assert_default();
    h2.refusal_line("gen.example.com", "could not load");
    assert_eq!(h2.rejected("key_reference_failed"), 1.0);
    assert_eq!(h2.resolved(), 0.0);
    assert!(
        !h2.s.nginx.logs().contains("987654"),
        "the PIN reached a log"
    );
}

#[test]
fn references_are_refused_by_default() {
    let Some(hsm) = token() else { return };
    let h = start(&hsm, 1, "", "");
    h.put_on_token(&hsm, "off.example.com", 16002, "02", "k2");

    let r = h.s.get(Some("off.example.com"));
    r.assert_default();
    assert_eq!(r.source(), "default", "{:?}", r.body);
    h.refusal_line("off.example.com", "dyncert_key_references is off");
    assert_eq!(h.rejected("key_reference_refused"), 1.0);
    assert_eq!(h.resolved(), 0.0);
}

#[test]
fn a_reference_to_a_missing_object_is_refused_and_nothing_breaks() {
    let Some(hsm) = token() else { return };
    let h = start(&hsm, 1, ENGINE, "");
    // Imported before the worker first asks the token: libp11 reads a
    // token's objects once per worker (see the README).
    let good = h.s.pki.leaf(&["good.example.com"], 16005);
    hsm.import(&good, "05", "k5");
    let ghost = h.s.pki.leaf(&["ghost.example.com"], 16003);
    h.s.redis
        .hset_cert("ghost.example.com", &ghost.chain_pem, &reference("nope"));
    let r = h.s.get(Some("ghost.example.com"));
    r.assert_default();
    h.refusal_line("ghost.example.com", "could not load");
    assert_eq!(h.rejected("key_reference_failed"), 1.0);

    // A record that brings its own PIN is refused before the engine sees
    // it: the PIN is the operator's, and libp11 prints failed URIs.
    let leaf = h.s.pki.leaf(&["pin.example.com"], 16004);
    h.s.redis.hset_cert(
        "pin.example.com",
        &leaf.chain_pem,
        "engine:pkcs11:pkcs11:token=dyncert;object=k5?pin-value=1234",
    );
    h.s.get(Some("pin.example.com")).assert_default();
    h.refusal_line("pin.example.com", "no query such as a PIN");
    assert_eq!(h.rejected("key_reference_refused"), 1.0);

    // The worker is fine: a good reference is served afterwards.
    h.s.redis
        .hset_cert("good.example.com", &good.chain_pem, &reference("k5"));
    h.s.get(Some("good.example.com"))
        .assert_served(&good, &h.s.pki);
}

#[test]
fn other_engines_paths_and_dangerous_uris_are_refused() {
    let Some(hsm) = token() else { return };
    let h = start(&hsm, 1, ENGINE, "");
    let leaf = h.s.pki.leaf(&["evil.example.com"], 16006);
    hsm.import(&leaf, "06", "k6");
    let keys = [
        "engine:dynamic:/tmp/evil.so".to_owned(),
        "engine:afalg:pkcs11:object=k6".to_owned(),
        "/etc/ssl/private/ssl-cert-snakeoil.key".to_owned(),
        "file:/etc/ssl/private/ssl-cert-snakeoil.key".to_owned(),
        format!("{}&module-path=/tmp/evil.so", reference("k6")),
        "engine:pkcs11:pkcs11:object=k6?pin-source=file:/etc/shadow".to_owned(),
    ];
    for (i, key) in keys.iter().enumerate() {
        let name = format!("evil{i}.example.com");
        h.s.redis.hset_cert(&name, &leaf.chain_pem, key);
        h.s.get(Some(&name)).assert_default();
        h.refusal_line(&name, "key reference");
    }
    assert_eq!(h.rejected("key_reference_refused"), keys.len() as f64);
    assert_eq!(h.resolved(), 0.0);
}

#[test]
fn references_are_not_shared_each_worker_resolves_its_own() {
    let Some(hsm) = token() else { return };
    // A generous fetch timeout: two workers open the token at once.
    let h = start(&hsm, 2, ENGINE, "dyncert_shared_zone dyncert:4m;");
    let leaf = h.put_on_token(&hsm, "zone.example.com", 16007, "07", "k7");

    // One worker first, then the others, which find nothing in the zone
    // and resolve it themselves. (Not both at the same moment: SoftHSM's
    // file token, opened by two processes at once, sometimes shows one of
    // them no objects; see the README.)
    h.s.get(Some("zone.example.com"))
        .assert_served(&leaf, &h.s.pki);
    let seen =
        h.s.nginx
            .hit_every_worker("zone.example.com", STARTUP_DEADLINE);
    for r in &seen {
        r.assert_served(&leaf, &h.s.pki);
        assert_ne!(r.source(), "shared", "{:?}", r.body);
    }
    let m = h.metrics();
    assert_eq!(
        m.get("dyncert_shared_zone_records"),
        0.0,
        "kept out of the zone"
    );
    assert_eq!(
        m.get("dyncert_key_references_resolved_total"),
        2.0,
        "one per worker"
    );
}

/// `nginx -t` of the template with `keyrefs` and no shared zone.
fn config_test(pki: &Pki, redis: &Redis, keyrefs: &str) -> ConfigTest {
    Nginx::config_test(
        pki,
        &http(),
        NginxOpts::new()
            .redis(redis)
            .var("MPORT", free_port())
            .var("ZONE", "")
            .var("KEYREFS", keyrefs),
    )
}

#[test]
fn bad_key_references_values_fail_config_test() {
    let pki = Pki::new();
    let redis = Redis::reserve();
    for (value, why) in [
        ("on", "invalid parameter \"on\""),
        ("engine pin=1234", "invalid parameter \"pin=1234\""),
        ("engine module=libsofthsm2.so", "absolute path"),
        (
            "engine pin_file=/nonexistent/pin",
            "pin_file=/nonexistent/pin",
        ),
        ("engine module=/nonexistent/libpkcs11.so", "no such file"),
        ("off module=/usr/lib/x.so", "takes no parameters"),
        ("provider", "OpenSSL 3.5"),
    ] {
        let t = config_test(&pki, &redis, &format!("dyncert_key_references {value};"));
        assert!(!t.ok, "{value} passed nginx -t");
        assert!(
            t.output.contains(why),
            "{value}: {why:?} not in\n{}",
            t.output
        );
    }
    let twice = "dyncert_key_references off; dyncert_key_references off;";
    let t = config_test(&pki, &redis, twice);
    assert!(!t.ok && t.output.contains("is duplicate"), "{}", t.output);
    let t = config_test(&pki, &redis, "dyncert_key_references engine;");
    assert!(t.ok, "{}", t.output);
}
