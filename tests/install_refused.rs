//! A record OpenSSL will not install must be refused when it is validated,
//! not fail every handshake for its name. `SSL_use_cert_and_key` judges the
//! leaf and every intermediate at the server's security level (level 2
//! here: 112 bits): the strength of each signature (SHA-1 ~63 bits, MD5
//! ~39), and each certificate's key. A tenant whose leaf is signed with
//! SHA-1 or MD5, or whose chain carries an RSA-512 or RSA-1024
//! intermediate, had its record cached like a good one, and then every
//! handshake with the name failed with an `internal_error` alert and an
//! unthrottled `[alert]` line, counted nowhere (tenant audit T2).
//!
//! Such records are refused with a `warn` line and their own reason
//! (`weak_signature`, `chain_key_too_weak`; `rsa_` for a second pair): the
//! name gets the default certificate. What the rule still misses (here: a
//! server that raises its level with `@SECLEVEL=3`, which refuses an
//! RSA-2048 leaf) fails its handshakes as before, but with one `warn` line
//! per name per 10 s carrying OpenSSL's reason, and each failure counted in
//! `dyncert_install_failures_total`.

use dyncert_testkit::conf::{dyncert_server, SOURCE_SERVER};
use dyncert_testkit::fixture::{cert_builder, put_with_second_pair, rsa, xname};
use dyncert_testkit::*;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509NameRef, X509};
use std::time::Duration;

/// A certificate named `cn` for `key`, issued by `issuer` (name) and
/// signed with `signer` and `digest`; a CA when `sans` is empty.
fn cert(
    cn: &str,
    key: &PKey<Private>,
    issuer: &X509NameRef,
    signer: &PKey<Private>,
    sans: &[&str],
    digest: MessageDigest,
) -> X509 {
    let mut b = cert_builder(cn, issuer, key);
    if sans.is_empty() {
        let bc = BasicConstraints::new().critical().ca().build().unwrap();
        b.append_extension(bc).unwrap();
    } else {
        let mut san = SubjectAlternativeName::new();
        for s in sans {
            san.dns(s);
        }
        let ext = san.build(&b.x509v3_context(None, None)).unwrap();
        b.append_extension(ext).unwrap();
    }
    b.sign(signer, digest).unwrap();
    b.build()
}

fn pem(c: &X509) -> String {
    String::from_utf8(c.to_pem().unwrap()).unwrap()
}

fn key_pem(k: &PKey<Private>) -> String {
    String::from_utf8(k.private_key_to_pem_pkcs8().unwrap()).unwrap()
}

/// A self-signed intermediate ("CA") with `key`, and a leaf for `name`
/// under it signed with `digest`, as the record's (crt, key) PEM.
fn under_own_ca(name: &str, ca_key: &PKey<Private>, digest: MessageDigest) -> (String, String) {
    let ca_name = xname(&format!("{name} CA"));
    let ca = cert(
        &format!("{name} CA"),
        ca_key,
        &ca_name,
        ca_key,
        &[],
        MessageDigest::sha256(),
    );
    let k = rsa(2048);
    let leaf = cert(name, &k, &ca_name, ca_key, &[name], digest);
    (format!("{}{}", pem(&leaf), pem(&ca)), key_pem(&k))
}

fn rejected(mport: u16, reason: &str) -> f64 {
    let key = format!("dyncert_records_rejected_total{{reason=\"{reason}\"}}");
    scrape_metrics(mport).0.get(&key).copied().unwrap_or(0.0)
}

fn alert_lines(s: &Stack) -> usize {
    s.nginx
        .error_log()
        .lines()
        .filter(|l| l.contains("[alert]"))
        .count()
}

#[test]
fn weak_signatures_and_weak_chain_keys_are_refused_at_validation() {
    let (mut s, mport) = Stack::with_metrics(SOURCE_SERVER, NginxOpts::new().workers(1));
    let int = &s.pki.intermediate;

    // A SHA-1-signed leaf under the kit's intermediate.
    let k = rsa(2048);
    let sha1 = cert(
        "sha1.example",
        &k,
        int.cert.subject_name(),
        &int.key,
        &["sha1.example"],
        MessageDigest::sha1(),
    );
    s.redis.hset_cert(
        "sha1.example",
        &format!("{}{}", pem(&sha1), int.cert_pem),
        &key_pem(&k),
    );
    // An MD5-signed leaf (RSA: there is no ECDSA with MD5).
    let md5 = under_own_ca("md5.example", &rsa(2048), MessageDigest::md5());
    s.redis.hset_cert("md5.example", &md5.0, &md5.1);
    // An intermediate of the kit's root signed with SHA-1, and a good leaf
    // under it: the intermediate's own signature is judged too.
    let root = &s.pki.root;
    let ik = rsa(2048);
    let sha1_int = cert(
        "sha1 int",
        &ik,
        root.cert.subject_name(),
        &root.key,
        &[],
        MessageDigest::sha1(),
    );
    let k = rsa(2048);
    let leaf = cert(
        "sha1int.example",
        &k,
        &xname("sha1 int"),
        &ik,
        &["sha1int.example"],
        MessageDigest::sha256(),
    );
    s.redis.hset_cert(
        "sha1int.example",
        &format!("{}{}", pem(&leaf), pem(&sha1_int)),
        &key_pem(&k),
    );
    // Intermediates with RSA-512 and RSA-1024 keys, good SHA-256 leaves.
    let rsa512 = under_own_ca("rsa512int.example", &rsa(512), MessageDigest::sha256());
    s.redis.hset_cert("rsa512int.example", &rsa512.0, &rsa512.1);
    let rsa1024 = under_own_ca("rsa1024int.example", &rsa(1024), MessageDigest::sha256());
    s.redis
        .hset_cert("rsa1024int.example", &rsa1024.0, &rsa1024.1);
    // A second pair whose RSA leaf is SHA-1-signed, beside a good ECDSA one.
    let ecdsa = s.pki.leaf(&["dual.example"], 11);
    let (crt_rsa, key_rsa) = under_own_ca("dual.example", &rsa(2048), MessageDigest::sha1());
    put_with_second_pair(&s.redis, "dual.example", &ecdsa, (&crt_rsa, &key_rsa));
    // Still served: an RSA-2048 intermediate and a SHA-256 leaf; a
    // self-signed SHA-1 leaf (nothing vouches for it either way, and
    // OpenSSL does not judge a self-signed certificate's signature).
    let good = under_own_ca("good.example", &rsa(2048), MessageDigest::sha256());
    s.redis.hset_cert("good.example", &good.0, &good.1);
    let sk = rsa(2048);
    let selfsigned = cert(
        "selfsha1.example",
        &sk,
        &xname("selfsha1.example"),
        &sk,
        &["selfsha1.example"],
        MessageDigest::sha1(),
    );
    s.redis
        .hset_cert("selfsha1.example", &pem(&selfsigned), &key_pem(&sk));

    for (name, reason) in [
        ("sha1.example", "weak_signature"),
        ("md5.example", "weak_signature"),
        ("sha1int.example", "weak_signature"),
        ("rsa512int.example", "chain_key_too_weak"),
        ("rsa1024int.example", "chain_key_too_weak"),
        ("dual.example", "rsa_weak_signature"),
    ] {
        let before = rejected(mport, reason);
        for _ in 0..5 {
            s.get(Some(name)).assert_default();
        }
        assert_eq!(
            rejected(mport, reason) - before,
            1.0,
            "{name}: {reason}\n{}",
            s.nginx.logs()
        );
        let line = s
            .nginx
            .wait_for_log_line(Duration::from_secs(2), |l| {
                l.contains("[warn]") && l.contains(&format!("name: \"{name}\""))
            })
            .unwrap_or_else(|| panic!("no warn line for {name}\n{}", s.nginx.logs()));
        println!("{line}");
        assert_eq!(alert_lines(&s), 0, "{}", s.nginx.logs());
    }
    for name in ["good.example", "selfsha1.example"] {
        let e = s.get(Some(name));
        assert!(!e.is_default(), "{name} is served\n{}", s.nginx.logs());
    }
    let m = scrape_metrics(mport);
    assert_eq!(m.sum("dyncert_install_failures_total"), 0.0);
    s.nginx.assert_healthy();
}

/// What the rule misses still fails closed, now with one `warn` line per
/// name per 10 s carrying OpenSSL's reason, and a count of every failure.
#[test]
fn an_install_failure_is_a_counted_warning_once_per_name_per_10_s() {
    // Security level 3 (128 bits) refuses an RSA-2048 leaf (112 bits),
    // which validation (judging at level 2) admits.
    let server = dyncert_server(
        "        ssl_ciphers DEFAULT:@SECLEVEL=3;\n        \
         location / { return 200 \"$ssl_server_name\\n\"; }\n",
    );
    let (mut s, mport) = Stack::with_metrics(&server, NginxOpts::new().workers(1));
    let int = &s.pki.intermediate;
    let name = "rsa2048.example";
    let k = rsa(2048);
    let leaf = cert(
        name,
        &k,
        int.cert.subject_name(),
        &int.key,
        &[name],
        MessageDigest::sha256(),
    );
    s.redis.hset_cert(
        name,
        &format!("{}{}", pem(&leaf), int.cert_pem),
        &key_pem(&k),
    );
    let ok = s.pki.leaf(&["ok.example"], 12);
    s.redis.put_leaf("ok.example", &ok);

    let failures = || scrape_metrics(mport).sum("dyncert_install_failures_total");
    let before = failures();
    for _ in 0..10 {
        let r = Request::default().sni(name).https(s.nginx.port);
        assert!(r.is_err(), "{name} was served at level 3");
    }
    assert_eq!(failures() - before, 10.0, "{}", s.nginx.logs());
    let log = s.nginx.error_log();
    let warns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("[warn]") && l.contains(&format!("name: \"{name}\"")))
        .collect();
    assert_eq!(warns.len(), 1, "one line per 10 s:\n{log}");
    println!("{}", warns[0]);
    assert!(
        warns[0].contains("too small"),
        "OpenSSL's reason: {}",
        warns[0]
    );
    assert_eq!(alert_lines(&s), 0, "{log}");
    // The neighbour is served.
    let e = s.get(Some("ok.example"));
    assert!(!e.is_default(), "{}", s.nginx.logs());
    s.nginx.assert_healthy();
}
