//! The `dyncert` CLI against a real redis-server (and, for the end-to-end
//! test, a real nginx with the module): records it writes are the module's
//! records, its refusals are the module's, the expiry index follows every
//! change, and a `put` reaches running workers through the invalidation
//! channel.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dyncert_testkit::*;

#[allow(dead_code)]
mod common;
use common::{dyncert, dyncert_at, put, put_args, Out};
use openssl::asn1::Asn1Time;
use openssl::symm::Cipher;

const INDEX: &str = "dyncert:expiry";
const CHANNEL: &str = "dyncert:invalidate";

/// Writes `leaf`'s chain and key as NAME.crt / NAME.key in `dir`.
fn files(dir: &Path, stem: &str, chain: &str, key: &str) -> (PathBuf, PathBuf) {
    let crt = dir.join(format!("{stem}.crt"));
    let k = dir.join(format!("{stem}.key"));
    write_file(&crt, chain);
    write_file(&k, key);
    (crt, k)
}

fn put_leaf(redis: &Redis, dir: &Path, name: &str, leaf: &Leaf) -> Out {
    let (crt, key) = files(dir, name, &leaf.chain_pem, &leaf.key_pem);
    put(redis, name, &crt, &key, &[])
}

fn not_after(leaf: &Leaf) -> i64 {
    let diff = Asn1Time::from_unix(0)
        .unwrap()
        .diff(leaf.issued.cert.not_after())
        .unwrap();
    i64::from(diff.days) * 86_400 + i64::from(diff.secs)
}

fn zscore(redis: &Redis, name: &str) -> Option<i64> {
    match redis.cmd(&["ZSCORE", INDEX, name]) {
        Reply::Bulk(Some(v)) => Some(String::from_utf8(v).unwrap().parse::<f64>().unwrap() as i64),
        Reply::Bulk(None) => None,
        other => panic!("ZSCORE: {other:?}"),
    }
}

fn exists(redis: &Redis, name: &str) -> bool {
    redis.cmd(&["EXISTS", &format!("{DEFAULT_PREFIX}{name}")]) == Reply::Int(1)
}

#[test]
fn put_get_list_and_delete_round_trip_through_redis_and_the_index() {
    let redis = Redis::start();
    let pki = Pki::new();
    let dir = TempDir::new("cli-roundtrip");
    let shop = pki.leaf(&["shop.example.com", "www.shop.example.com"], 101);
    let soon = pki.leaf_with(
        &["soon.example.com"],
        102,
        LeafOpts {
            expires_in: Some(Duration::from_secs(10 * 86_400)),
            ..LeafOpts::default()
        },
    );
    let ca = pki.client_ca("tenant CA");
    let ca_file = dir.path().join("tenant-ca.pem");
    write_file(&ca_file, &ca.cert_pem);

    let (crt, key) = files(dir.path(), "shop", &shop.chain_pem, &shop.key_pem);
    let out = put(
        &redis,
        "Shop.Example.com.",
        &crt,
        &key,
        &[
            "--allow",
            "10.0.0.0/8,2001:db8::/32",
            "--client-ca",
            ca_file.to_str().unwrap(),
        ],
    );
    out.assert_ok("put shop");
    assert!(
        out.stdout.contains("stored \"shop.example.com\""),
        "{}",
        out.stdout
    );
    put_leaf(&redis, dir.path(), "soon.example.com", &soon).assert_ok("put soon");

    // The module's fields, both forms, the policy, and the index entry.
    let fields: Vec<String> = redis
        .record("shop.example.com")
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    for f in ["crt", "key", "crt_der", "key_der", "allow", "client_ca"] {
        assert!(fields.iter().any(|x| x == f), "no {f} in {fields:?}");
    }
    assert_eq!(
        redis.record_field("shop.example.com", "crt").as_deref(),
        Some(shop.chain_pem.as_str()),
        "crt is stored as given"
    );
    assert_eq!(zscore(&redis, "shop.example.com"), Some(not_after(&shop)));
    assert_eq!(zscore(&redis, "soon.example.com"), Some(not_after(&soon)));

    // get: names, issuer, dates, fingerprint, policy, forms; never the key.
    let out = dyncert(&redis, &["get", "shop.example.com"]);
    out.assert_ok("get");
    let fp = shop
        .issued
        .cert
        .digest(openssl::hash::MessageDigest::sha256())
        .unwrap()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    for part in [
        "shop.example.com, www.shop.example.com",
        "CN=dyncert test intermediate CA",
        fp.as_str(),
        "10.0.0.0/8,2001:db8::/32",
        "client_ca:  set",
        "pem, der",
        "status:     valid",
    ] {
        assert!(out.stdout.contains(part), "no {part:?} in\n{}", out.stdout);
    }
    assert!(!out.stdout.contains("PRIVATE") && !out.stdout.contains("BEGIN"));
    let out = dyncert(&redis, &["get", "shop.example.com", "--json"]);
    out.assert_ok("get --json");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["sha256"], fp.as_str());
    assert_eq!(v["client_ca"], true);
    assert_eq!(v["valid"], true);
    let days = v["days_left"].as_i64().unwrap();
    assert!((88..=90).contains(&days), "days_left {days}");

    // list: the index, soonest first; --expiring keeps the near ones.
    let out = dyncert(&redis, &["list", "--json"]);
    out.assert_ok("list");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["soon.example.com", "shop.example.com"]);
    let out = dyncert(&redis, &["list", "--expiring", "30d"]);
    out.assert_ok("list --expiring");
    assert!(out.stdout.contains("soon.example.com"), "{}", out.stdout);
    assert!(!out.stdout.contains("shop.example.com"), "{}", out.stdout);
    let out = dyncert(&redis, &["list", "--expiring", "soon"]);
    assert_eq!(out.code, 2, "a bad time is a usage error: {}", out.stderr);

    // delete: record and index entry gone; then it is absent (exit 2).
    let out = dyncert(&redis, &["delete", "shop.example.com"]);
    out.assert_ok("delete");
    assert!(!exists(&redis, "shop.example.com"));
    assert_eq!(zscore(&redis, "shop.example.com"), None);
    let out = dyncert(&redis, &["get", "shop.example.com"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("no record"), "{}", out.stderr);
    assert_eq!(dyncert(&redis, &["delete", "shop.example.com"]).code, 2);
}

#[test]
fn bad_records_are_refused_with_the_modules_reason_and_nothing_is_written() {
    let redis = Redis::start();
    let pki = Pki::new();
    let dir = TempDir::new("cli-refusals");
    let good = pki.leaf(&["shop.example.com"], 201);
    let other = pki.leaf(&["other.example.com"], 202);
    let expired = pki.leaf_with(
        &["shop.example.com"],
        203,
        LeafOpts {
            expired: true,
            ..LeafOpts::default()
        },
    );
    let encrypted = String::from_utf8(
        good.issued
            .key
            .private_key_to_pem_pkcs8_passphrase(Cipher::aes_256_cbc(), b"secret")
            .unwrap(),
    )
    .unwrap();
    let cases: [(&str, &str, &str, &str); 4] = [
        ("mismatch", &good.chain_pem, &other.key_pem, "key_mismatch"),
        (
            "uncovered",
            &other.chain_pem,
            &other.key_pem,
            "name_not_covered",
        ),
        ("expired", &expired.chain_pem, &expired.key_pem, "expired"),
        ("encrypted", &good.chain_pem, &encrypted, "encrypted_key"),
    ];
    for (stem, chain, key, label) in cases {
        let (crt, key) = files(dir.path(), stem, chain, key);
        let out = put(&redis, "shop.example.com", &crt, &key, &[]);
        assert_eq!(out.code, 1, "{stem}: {}{}", out.stdout, out.stderr);
        assert_eq!(
            out.stderr.lines().count(),
            1,
            "{stem}: one line: {}",
            out.stderr
        );
        assert!(
            out.stderr
                .starts_with("dyncert: refused \"shop.example.com\": ")
                && out.stderr.contains(&format!("({label})")),
            "{stem}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("BEGIN"), "{stem}: {}", out.stderr);
        assert!(!exists(&redis, "shop.example.com"), "{stem} was written");
        assert_eq!(zscore(&redis, "shop.example.com"), None);
    }
    // Names follow the module's rules; a wildcard record needs its SAN.
    let (crt, key) = files(dir.path(), "good", &good.chain_pem, &good.key_pem);
    let out = put(&redis, "shop_example.com", &crt, &key, &[]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("invalid name"), "{}", out.stderr);
    let out = put(&redis, "*.example.com", &crt, &key, &[]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("(name_not_covered)"), "{}", out.stderr);
    let wild = pki.leaf(&["*.example.com"], 204);
    let (crt, key) = files(dir.path(), "wild", &wild.chain_pem, &wild.key_pem);
    put(&redis, "*.Example.com", &crt, &key, &[]).assert_ok("wildcard");
    assert!(exists(&redis, "*.example.com"));
    // A password in the URL never shows.
    let out = Command::new(env!("CARGO_BIN_EXE_dyncert"))
        .args([
            "--redis",
            "redis://:s3cret@127.0.0.1:1/0",
            "get",
            "x.example.com",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        !stderr.contains("s3cret") && stderr.contains(":***@"),
        "{stderr}"
    );
}

#[test]
fn import_is_idempotent_and_reports_each_refusal() {
    let redis = Redis::start();
    let pki = Pki::new();
    let dir = TempDir::new("cli-import");
    let names = ["a.example.com", "b.example.com", "c.example.com"];
    for (i, name) in names.iter().enumerate() {
        let leaf = pki.leaf(&[name], 300 + i as u64);
        files(dir.path(), name, &leaf.chain_pem, &leaf.key_pem);
    }
    let bad = pki.leaf(&["bad.example.com"], 310);
    files(
        dir.path(),
        "bad.example.com",
        &bad.chain_pem,
        &pki.leaf(&["x.example.com"], 311).key_pem,
    );
    let d = dir.path().to_str().unwrap();

    let out = dyncert(&redis, &["import", d, "--dry-run"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("would have imported 3, unchanged 0, refused 1"),
        "{}",
        out.stdout
    );
    assert!(!exists(&redis, "a.example.com"), "dry run wrote");

    let out = dyncert(&redis, &["import", d]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("imported 3, unchanged 0, refused 1"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("bad.example.com.crt: refused: private key does not match"),
        "{}",
        out.stderr
    );
    for name in names {
        assert!(exists(&redis, name), "{name}");
        assert!(zscore(&redis, name).is_some(), "{name}");
    }

    // Again: nothing written, nothing published.
    let monitor = redis.monitor();
    let out = dyncert(&redis, &["import", d]);
    assert!(
        out.stdout.contains("imported 0, unchanged 3, refused 1"),
        "{}",
        out.stdout
    );
    monitor.sync();
    assert!(
        monitor.observed().iter().any(|o| o.command() == "HGETALL"),
        "the second import read nothing:\n{}",
        monitor.dump()
    );
    let writes: Vec<String> = monitor
        .observed()
        .iter()
        .map(|o| o.command())
        .filter(|c| ["PUBLISH", "HSET", "DEL", "ZADD", "MULTI"].contains(&c.as_str()))
        .collect();
    assert!(
        writes.is_empty(),
        "second import wrote: {writes:?}\n{}",
        monitor.dump()
    );
}

#[test]
fn index_rebuild_restores_a_deleted_index() {
    let redis = Redis::start();
    let pki = Pki::new();
    let dir = TempDir::new("cli-index");
    let a = pki.leaf(&["a.example.com"], 401);
    let b = pki.leaf_with(
        &["b.example.com"],
        402,
        LeafOpts {
            expires_in: Some(Duration::from_secs(5 * 86_400)),
            ..LeafOpts::default()
        },
    );
    put_leaf(&redis, dir.path(), "a.example.com", &a).assert_ok("put a");
    put_leaf(&redis, dir.path(), "b.example.com", &b).assert_ok("put b");
    // A record written by hand (PEM only), and junk under the prefix.
    let c = pki.leaf(&["c.example.com"], 403);
    redis.put_leaf("c.example.com", &c);
    redis.cmd(&["SET", &format!("{DEFAULT_PREFIX}junk.example.com"), "x"]);
    redis.cmd(&["DEL", INDEX]);

    let out = dyncert(&redis, &["index", "rebuild"]);
    out.assert_ok("index rebuild");
    assert!(
        out.stdout.contains("3 names indexed, 1 keys skipped"),
        "{}",
        out.stdout
    );
    assert_eq!(zscore(&redis, "a.example.com"), Some(not_after(&a)));
    assert_eq!(zscore(&redis, "b.example.com"), Some(not_after(&b)));
    assert_eq!(zscore(&redis, "c.example.com"), Some(not_after(&c)));
    let out = dyncert(&redis, &["list", "--expiring", "7d"]);
    assert!(out.stdout.contains("b.example.com") && !out.stdout.contains("a.example.com"));
}

fn http() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;\n    dyncert_cache max=1000 valid=1h stale=1h negative=1s;",
        &source_server(""),
    ])
}

#[test]
fn put_record_is_served_and_a_replacement_reaches_the_worker_at_once() {
    let s = Stack::start(1, &http());
    let dir = TempDir::new("cli-e2e");
    assert!(
        s.redis
            .wait_subscribers(CHANNEL, 1, Duration::from_secs(10)),
        "the worker never subscribed"
    );
    let first = s.pki.leaf(&["shop.example.com"], 501);
    put_leaf(&s.redis, dir.path(), "shop.example.com", &first).assert_ok("put");
    let r = s.get(Some("shop.example.com"));
    r.assert_served(&first, &s.pki);
    assert!(r.tls().leaf_sans.iter().any(|n| n == "shop.example.com"));

    // valid=1h: only the invalidation can make the worker fetch again.
    let second = s.pki.leaf(&["shop.example.com"], 502);
    let out = put_leaf(&s.redis, dir.path(), "shop.example.com", &second);
    out.assert_ok("put replacement");
    assert!(out.stdout.contains("(1 listeners)"), "{}", out.stdout);
    let served = poll(Duration::from_secs(5), Duration::from_millis(50), || {
        let r = s.get(Some("shop.example.com"));
        (r.tls().leaf_serial == second.serial_hex).then_some(r)
    });
    served
        .unwrap_or_else(|| panic!("the replacement was never served\n{}", s.nginx.logs()))
        .assert_served(&second, &s.pki);

    // delete: the worker drops it too.
    dyncert(&s.redis, &["delete", "shop.example.com"]).assert_ok("delete");
    let gone = poll(Duration::from_secs(5), Duration::from_millis(50), || {
        s.get(Some("shop.example.com")).is_default().then_some(())
    });
    assert!(gone.is_some(), "a deleted record is still served");
}

/// An RSA chain for `sans` issued by the test intermediate, and its key.
fn rsa_leaf(pki: &Pki, sans: &[&str], serial: u64) -> (String, String) {
    let key = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let public =
        openssl::pkey::PKey::public_key_from_der(&key.public_key_to_der().unwrap()).unwrap();
    let (_, chain) = pki.leaf_for_public_key(sans, serial, &public);
    let key = String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    (chain, key)
}

#[test]
fn put_stores_a_second_certificate_of_the_other_type_or_refuses_it() {
    let redis = Redis::start();
    let pki = Pki::new();
    let dir = TempDir::new("cli-dual");
    let ec = pki.leaf(&["dual.example.com"], 301);
    let (ec_crt, ec_key) = files(dir.path(), "ec", &ec.chain_pem, &ec.key_pem);
    let (rsa_chain, rsa_key) = rsa_leaf(&pki, &["dual.example.com"], 302);
    let (rsa_crt, rsa_key_file) = files(dir.path(), "rsa", &rsa_chain, &rsa_key);
    let second = [
        "--cert-rsa",
        rsa_crt.to_str().unwrap(),
        "--key-rsa",
        rsa_key_file.to_str().unwrap(),
    ];
    let out = put(&redis, "dual.example.com", &ec_crt, &ec_key, &second);
    out.assert_ok("put with a second pair");
    assert_eq!(
        redis.record_field("dual.example.com", "crt_rsa").as_deref(),
        Some(rsa_chain.as_str())
    );
    assert_eq!(
        redis.record_field("dual.example.com", "key_rsa").as_deref(),
        Some(rsa_key.as_str())
    );
    for f in ["crt_der_rsa", "key_der_rsa", "crt_der", "key_der"] {
        assert!(redis.record_field("dual.example.com", f).is_some(), "{f}");
    }
    let got = dyncert(&redis, &["get", "dual.example.com", "--json"]);
    got.assert_ok("get");
    assert!(got.stdout.contains("\"valid\": true"), "{}", got.stdout);
    assert!(got.stdout.contains("pem_rsa") && got.stdout.contains("der_rsa"));

    // Refusals: nothing is written.
    let refused = pki.leaf(&["refused.example.com"], 305);
    let (ec_crt, ec_key) = files(dir.path(), "r", &refused.chain_pem, &refused.key_pem);
    let (rsa_chain, _) = rsa_leaf(&pki, &["refused.example.com"], 306);
    let (rsa_crt, _) = files(dir.path(), "rsa2", &rsa_chain, "");
    let (_, other_key) = rsa_leaf(&pki, &["refused.example.com"], 303);
    let (_, other_key_file) = files(dir.path(), "other", "", &other_key);
    let ec2 = pki.leaf(&["refused.example.com"], 304);
    let (ec2_crt, ec2_key) = files(dir.path(), "ec2", &ec2.chain_pem, &ec2.key_pem);
    for (crt, key, label) in [
        (&rsa_crt, &other_key_file, "rsa_key_mismatch"),
        (&ec2_crt, &ec2_key, "pair_types"),
    ] {
        let out = put(
            &redis,
            "refused.example.com",
            &ec_crt,
            &ec_key,
            &[
                "--cert-rsa",
                crt.to_str().unwrap(),
                "--key-rsa",
                key.to_str().unwrap(),
            ],
        );
        assert_eq!(out.code, 1, "{label}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(&format!("({label})")), "{}", out.stderr);
        assert!(!exists(&redis, "refused.example.com"), "{label}");
    }
    // Half a pair is a usage error.
    let out = put(
        &redis,
        "refused.example.com",
        &ec_crt,
        &ec_key,
        &["--cert-rsa", rsa_crt.to_str().unwrap()],
    );
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(!exists(&redis, "refused.example.com"));
}

/// A key with the leaf's public half and another private half (a bit flip
/// in the private part, a crafted file) passes a comparison of public
/// halves, and would be served to fail every handshake: `put` signs with
/// it and verifies with the leaf, and refuses it as the module's key
/// mismatch (EC: the leaf's point with another scalar; RSA, as a second
/// pair: the leaf's modulus and exponent with another key's private
/// parts).
#[test]
fn put_refuses_a_key_whose_private_half_does_not_belong_to_the_leaf() {
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::rsa::Rsa;

    let redis = Redis::start();
    let pki = Pki::new();
    let dir = TempDir::new("cli-forged");
    let name = "forged.example.com";
    let leaf = pki.leaf(&[name], 401);
    let real = leaf.issued.key.ec_key().unwrap();
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let other = EcKey::generate(&group).unwrap();
    let forged =
        EcKey::from_private_components(&group, other.private_key(), real.public_key()).unwrap();
    let forged = String::from_utf8(forged.private_key_to_pem().unwrap()).unwrap();
    let (crt, key) = files(dir.path(), "ec", &leaf.chain_pem, &forged);
    let out = put(&redis, name, &crt, &key, &[]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stderr.trim_end(),
        format!(
            "dyncert: refused \"{name}\": private key does not match the certificate (key_mismatch)"
        )
    );
    assert!(!exists(&redis, name));

    // The real EC key, and an RSA second pair whose private parts are
    // another key's.
    let (ec_crt, ec_key) = files(dir.path(), "ec-real", &leaf.chain_pem, &leaf.key_pem);
    let (rsa_chain, rsa_key) = rsa_leaf(&pki, &[name], 402);
    let real = Rsa::private_key_from_pem(rsa_key.as_bytes()).unwrap();
    let other = Rsa::generate(2048).unwrap();
    let copy = |b: Option<&openssl::bn::BigNumRef>| BigNum::from_slice(&b.unwrap().to_vec());
    let forged = Rsa::from_private_components(
        BigNum::from_slice(&real.n().to_vec()).unwrap(),
        BigNum::from_slice(&real.e().to_vec()).unwrap(),
        BigNum::from_slice(&other.d().to_vec()).unwrap(),
        copy(other.p()).unwrap(),
        copy(other.q()).unwrap(),
        copy(other.dmp1()).unwrap(),
        copy(other.dmq1()).unwrap(),
        copy(other.iqmp()).unwrap(),
    )
    .unwrap();
    let forged = String::from_utf8(forged.private_key_to_pem().unwrap()).unwrap();
    let (rsa_crt, rsa_key_file) = files(dir.path(), "rsa", &rsa_chain, &forged);
    let second = [
        "--cert-rsa",
        rsa_crt.to_str().unwrap(),
        "--key-rsa",
        rsa_key_file.to_str().unwrap(),
    ];
    let out = put(&redis, name, &ec_crt, &ec_key, &second);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("(rsa_key_mismatch)"), "{}", out.stderr);
    assert!(!exists(&redis, name));

    // The genuine pairs are stored.
    let (_, rsa_key_file) = files(dir.path(), "rsa-real", "", &rsa_key);
    let second = [
        "--cert-rsa",
        rsa_crt.to_str().unwrap(),
        "--key-rsa",
        rsa_key_file.to_str().unwrap(),
    ];
    put(&redis, name, &ec_crt, &ec_key, &second).assert_ok("genuine pairs");
}

/// A write that is done stays reported as done when its invalidation
/// cannot be published (PUBLISH refused by an ACL here): `put`, `import`
/// and `delete` print their usual line (ending `invalidation not
/// published`) or summary, a warning saying how to send the invalidation,
/// and exit 1.
#[test]
fn a_write_whose_invalidation_cannot_be_published_is_reported_done_with_a_warning() {
    let redis = Redis::start();
    let pki = Pki::new();
    let dir = TempDir::new("cli-nopub");
    redis.cmd(&[
        "ACL", "SETUSER", "nopub", "on", ">pw", "~*", "&*", "+@all", "-publish",
    ]);
    let url = format!("redis://nopub:pw@127.0.0.1:{}/0", redis.port);
    let as_nopub = |args: &[&str]| dyncert_at(&url, args);
    let warning = |name: &str, stderr: &str| {
        let line = stderr.trim_end();
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.starts_with(&format!(
                "dyncert: warning: \"{name}\": the invalidation was not published (Redis: "
            )) && line.ends_with(&format!("run dyncert invalidate '{name}'")),
            "{line}"
        );
    };

    let name = "nopub.example.com";
    let leaf = pki.leaf(&[name], 501);
    let (crt, key) = files(dir.path(), name, &leaf.chain_pem, &leaf.key_pem);
    let out = as_nopub(&put_args(name, &crt, &key));
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .starts_with(&format!("stored \"{name}\": notAfter "))
            && out
                .stdout
                .trim_end()
                .ends_with("; invalidation not published"),
        "{}",
        out.stdout
    );
    warning(name, &out.stderr);
    assert!(exists(&redis, name));
    assert_eq!(zscore(&redis, name), Some(not_after(&leaf)));

    let out = as_nopub(&["delete", name]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stdout.trim_end(),
        format!("deleted \"{name}\"; invalidation not published")
    );
    warning(name, &out.stderr);
    assert!(!exists(&redis, name));

    let import_dir = TempDir::new("cli-nopub-import");
    files(import_dir.path(), name, &leaf.chain_pem, &leaf.key_pem);
    let out = as_nopub(&["import", import_dir.path().to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stdout.trim_end(), "imported 1, unchanged 0, refused 0");
    let (warn, progress) = out.stderr.trim_end().split_once('\n').unwrap();
    warning(name, warn);
    assert_eq!(progress, format!("[1/1] {name}: imported"));
    assert!(exists(&redis, name));
}

/// `put` holds keys to the module's bounds: an RSA key over
/// `--rsa-max-bits` (the module's `dyncert_rsa_max_bits`, default 4096)
/// or under 2048 bits is refused with the module's reason; the same key
/// under a raised limit is stored.
#[test]
fn put_refuses_rsa_keys_the_module_would_refuse() {
    use dyncert_testkit::pki::self_signed;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;

    let redis = Redis::start();
    let dir = TempDir::new("cli-key-strength");
    let name = "slow.example.com";
    let big = include_str!("../../tests/fixtures/rsa8192.key");
    let big_key = PKey::private_key_from_pem(big.as_bytes()).unwrap();
    let crt = String::from_utf8(self_signed(&[name], &big_key, -1, 30).to_pem().unwrap()).unwrap();
    let (crt, key) = files(dir.path(), "big", &crt, big);
    let out = put(&redis, name, &crt, &key, &[]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("dyncert_rsa_max_bits") && out.stderr.ends_with("(key_too_slow)\n"),
        "{}",
        out.stderr
    );
    assert!(!exists(&redis, name));
    put(&redis, name, &crt, &key, &["--rsa-max-bits", "8192"]).assert_ok("put RSA-8192");
    assert!(exists(&redis, name));

    let out = put(&redis, name, &crt, &key, &["--rsa-max-bits", "1024"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("--rsa-max-bits"), "{}", out.stderr);

    let weak = PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap();
    let weak_crt = self_signed(&["weak.example.com"], &weak, -1, 30);
    let (crt, key) = files(
        dir.path(),
        "weak",
        &String::from_utf8(weak_crt.to_pem().unwrap()).unwrap(),
        &String::from_utf8(weak.private_key_to_pem_pkcs8().unwrap()).unwrap(),
    );
    let out = put(&redis, "weak.example.com", &crt, &key, &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.ends_with("(key_too_weak)\n"), "{}", out.stderr);
}
