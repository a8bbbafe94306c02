//! The ACME account kept in Redis (`dyncert:acme-account:<sha>`), against
//! pebble and a real nginx answering HTTP-01: with a key-encryption key
//! it is stored encrypted (its private key never in clear), an account
//! stored in clear before is re-stored encrypted and kept, one that does
//! not decrypt is an error rather than a new account, and two first runs
//! at once end with one stored account that both use.

#[allow(dead_code)]
mod common_acme;

use std::os::unix::fs::PermissionsExt;

use common_acme::{acme, answer_and_serve, keys, AcmeStack, Out};
use dyncert_core::keywrap::{self, Keyring};
use dyncert_testkit::*;

const KEK: [u8; 32] = [0x3a; 32];

/// A `--key-encryption-key acme-k=FILE` spec, its file in `dir`.
fn kek_spec(dir: &TempDir, key: [u8; 32]) -> String {
    let kek = dir.path().join("acme-k.key");
    std::fs::write(&kek, key).unwrap();
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!("acme-k={}", kek.display())
}

/// The one stored account: its Redis key and value.
fn stored_account(redis: &Redis) -> (String, String) {
    let found = keys(redis, "dyncert:acme-account:*");
    assert_eq!(found.len(), 1, "one stored account: {found:?}");
    let value = match redis.cmd(&["GET", &found[0]]) {
        Reply::Bulk(Some(v)) => String::from_utf8(v).expect("an account value is text"),
        other => panic!("GET {}: {other:?}", found[0]),
    };
    (found[0].clone(), value)
}

/// The credentials JSON in an envelope under acme-k, bound to `key`.
fn opened(key: &str, value: &str) -> serde_json::Value {
    let mut ring = Keyring::new();
    ring.insert("acme-k", KEK);
    let json = keywrap::open(value.as_bytes(), key.as_bytes(), &ring)
        .expect("the account opens under acme-k and its Redis key");
    serde_json::from_slice(&json).expect("instant-acme credentials JSON")
}

/// How many accounts pebble holds (its own log line on each new one).
fn accounts_at_ca(stack: &AcmeStack) -> usize {
    stack
        .pebble
        .log()
        .lines()
        .filter_map(|l| l.split("There are now ").nth(1))
        .filter_map(|rest| rest.strip_suffix(" accounts in memory"))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

fn issue_with(stack: &AcmeStack, spec: Option<&str>, name: &str) -> Out {
    let mut args = Vec::new();
    if let Some(spec) = spec {
        args.extend(["--key-encryption-key", spec]);
    }
    args.extend(["issue", name]);
    acme(&stack.redis, &stack.pebble, &args)
}

#[test]
fn the_account_is_stored_encrypted_and_reused() {
    let stack = AcmeStack::start(&answer_and_serve());
    let dir = TempDir::new("acme-account");
    let spec = kek_spec(&dir, KEK);

    issue_with(&stack, Some(&spec), "one.acme.test").assert_ok(&stack.nginx.logs());
    let (key, value) = stored_account(&stack.redis);
    assert!(value.starts_with("dyncert:v1:acme-k:"), "{value}");
    assert!(serde_json::from_str::<serde_json::Value>(&value).is_err());
    for clear in ["pkcs8", "private", "key_"] {
        assert!(!value.contains(clear), "{clear} in {value}");
    }
    let json = opened(&key, &value);
    let pkcs8 = json["key_pkcs8"]
        .as_str()
        .expect("key_pkcs8 in the credentials");
    assert!(!value.contains(pkcs8));
    assert_eq!(accounts_at_ca(&stack), 1);

    // The next order uses it: no second account, the value untouched.
    issue_with(&stack, Some(&spec), "two.acme.test").assert_ok(&stack.nginx.logs());
    assert_eq!(stored_account(&stack.redis), (key.clone(), value.clone()));
    assert_eq!(accounts_at_ca(&stack), 1);

    // Without the key, or with another key under that id: an error that
    // names the Redis key and the key id, never a new account.
    let other = TempDir::new("acme-account-other");
    let wrong = kek_spec(&other, [0x77; 32]);
    for spec in [None, Some(wrong.as_str())] {
        let out = issue_with(&stack, spec, "three.acme.test");
        let line = out.one_line_failure();
        assert!(line.contains(&key), "{line}");
        assert!(line.contains("\"acme-k\""), "{line}");
        assert_eq!(stored_account(&stack.redis), (key.clone(), value.clone()));
        assert_eq!(accounts_at_ca(&stack), 1);
    }
}

#[test]
fn an_account_stored_in_clear_is_encrypted_and_kept() {
    let stack = AcmeStack::start(&answer_and_serve());
    issue_with(&stack, None, "plain.acme.test").assert_ok(&stack.nginx.logs());
    let (key, clear) = stored_account(&stack.redis);
    let before: serde_json::Value = serde_json::from_str(&clear).expect("stored as JSON");

    let dir = TempDir::new("acme-account");
    let spec = kek_spec(&dir, KEK);
    let out = issue_with(&stack, Some(&spec), "sealed.acme.test");
    out.assert_ok(&stack.nginx.logs());
    assert!(
        out.stderr.contains(&key) && out.stderr.contains("encrypted under \"acme-k\""),
        "{}",
        out.stderr
    );
    let (_, value) = stored_account(&stack.redis);
    assert!(value.starts_with("dyncert:v1:acme-k:"), "{value}");
    assert_eq!(opened(&key, &value), before, "the same account, now sealed");
    assert_eq!(accounts_at_ca(&stack), 1);

    // Read sealed from now on: no further rewrite.
    let out = issue_with(&stack, Some(&spec), "again.acme.test");
    out.assert_ok(&stack.nginx.logs());
    assert_eq!(stored_account(&stack.redis), (key, value));
    assert_eq!(accounts_at_ca(&stack), 1);
}

#[test]
fn two_first_runs_at_once_keep_and_use_one_account() {
    let stack = AcmeStack::start(&answer_and_serve());
    // Both runs must find no account, so both create one at the CA; a
    // try where one run finished storing before the other looked is
    // repeated with the account deleted.
    for attempt in 0..6 {
        let at_ca = accounts_at_ca(&stack);
        let names = [
            format!("a{attempt}.acme.test"),
            format!("b{attempt}.acme.test"),
        ];
        let outs: Vec<Out> = std::thread::scope(|s| {
            let runs: Vec<_> = names
                .iter()
                .map(|n| s.spawn(|| issue_with(&stack, None, n)))
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        for out in &outs {
            out.assert_ok(&stack.nginx.logs());
        }
        let (key, value) = stored_account(&stack.redis);
        if accounts_at_ca(&stack) - at_ca < 2 {
            stack.redis.cmd(&["DEL", &key]);
            continue;
        }
        // Both created one: the first stored is kept, and the other run
        // said so and used it.
        let json: serde_json::Value = serde_json::from_str(&value).expect("stored as JSON");
        let id = json["id"].as_str().expect("the account URL");
        let lost: Vec<&Out> = outs
            .iter()
            .filter(|o| o.stderr.contains("created the ACME account first"))
            .collect();
        assert_eq!(
            lost.len(),
            1,
            "{:?}",
            outs.iter().map(|o| &o.stderr).collect::<Vec<_>>()
        );
        assert!(
            lost[0].stderr.contains(&format!("using {id}")),
            "{}",
            lost[0].stderr
        );
        return;
    }
    panic!("the two runs never both found no account");
}
