//! `issue --encrypt-with` and `renew` of an encrypted record, against
//! pebble and a real nginx answering HTTP-01 from Redis: the issued key is
//! stored encrypted, and a renewal keeps the record encrypted under the id
//! it had (or fails, saying which key it needs, rather than storing the
//! new key in the clear).

#[allow(dead_code)]
mod common_acme;

use std::os::unix::fs::PermissionsExt;

use common_acme::{acme, answer_and_serve, AcmeStack};
use dyncert_core::keywrap::{self, Keyring};
use dyncert_testkit::*;

const NAME: &str = "sealed.acme.test";
const KEK: [u8; 32] = [0x5c; 32];

fn key_field(redis: &Redis) -> Vec<u8> {
    match redis.cmd(&["HGET", &format!("{DEFAULT_PREFIX}{NAME}"), "key"]) {
        Reply::Bulk(Some(v)) => v,
        other => panic!("HGET key: {other:?}"),
    }
}

fn opens(v: &[u8]) -> Vec<u8> {
    let mut ring = Keyring::new();
    ring.insert("acme-k", KEK);
    keywrap::open(v, format!("{DEFAULT_PREFIX}{NAME}").as_bytes(), &ring)
        .expect("the stored key opens under acme-k and the record's key")
}

#[test]
fn issued_keys_are_stored_encrypted_and_renewals_keep_the_id() {
    let AcmeStack {
        nginx,
        pebble,
        redis,
        pki: _pki,
        dns: _dns,
    } = AcmeStack::start(&answer_and_serve());
    let dir = TempDir::new("acme-kek");
    let kek = dir.path().join("acme-k.key");
    std::fs::write(&kek, KEK).unwrap();
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
    let spec = format!("acme-k={}", kek.display());

    let out = acme(
        &redis,
        &pebble,
        &[
            "--key-encryption-key",
            &spec,
            "issue",
            NAME,
            "--encrypt-with",
            "acme-k",
        ],
    );
    out.assert_ok(&nginx.logs());
    let first = key_field(&redis);
    assert!(first.starts_with(b"dyncert:v1:acme-k:"));
    assert!(opens(&first).starts_with(b"-----BEGIN PRIVATE KEY-----"));

    // Without the key, a renewal of the encrypted record fails, and
    // stores nothing.
    let out = acme(
        &redis,
        &pebble,
        &["renew", "--within", "100000d", "--no-jitter"],
    );
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("encrypted under \"acme-k\""),
        "{}",
        out.stdout
    );
    assert_eq!(key_field(&redis), first);

    // With it, the renewed key is encrypted under the same id.
    let out = acme(
        &redis,
        &pebble,
        &[
            "--key-encryption-key",
            &spec,
            "renew",
            "--within",
            "100000d",
            "--no-jitter",
        ],
    );
    out.assert_ok(&nginx.logs());
    let renewed = key_field(&redis);
    assert_ne!(renewed, first);
    assert!(renewed.starts_with(b"dyncert:v1:acme-k:"));
    assert_ne!(opens(&renewed), opens(&first), "a new key");
}
