//! `dyncert put --encrypt-with`, `import --encrypt-with` and `rewrap`
//! against a real redis-server (and a real nginx with the module): the
//! stored keys are envelopes bound to their record, a terminator with the
//! key serves them, `rewrap` moves records from one key id to another,
//! and the key files are checked as the module checks them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use dyncert_core::keywrap::{self, Keyring};
use dyncert_testkit::*;

#[allow(dead_code)]
mod common;
use common::dyncert;

const OLD: [u8; 32] = [0x0a; 32];
const NEW: [u8; 32] = [0x0b; 32];

/// A key file as `openssl rand -hex 32` writes it, mode 0600.
fn key_file(dir: &Path, stem: &str, key: &[u8; 32]) -> PathBuf {
    let path = dir.join(format!("{stem}.kek"));
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, format!("{hex}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn ring() -> Keyring {
    let mut r = Keyring::new();
    r.insert("old", OLD);
    r.insert("new", NEW);
    r
}

fn field(redis: &Redis, name: &str, f: &str) -> Vec<u8> {
    match redis.cmd(&["HGET", &format!("{DEFAULT_PREFIX}{name}"), f]) {
        Reply::Bulk(Some(v)) => v,
        other => panic!("HGET {name} {f}: {other:?}"),
    }
}

fn files(dir: &Path, stem: &str, leaf: &Leaf) -> (String, String) {
    let crt = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    write_file(&crt, &leaf.chain_pem);
    write_file(&key, &leaf.key_pem);
    (
        crt.to_str().unwrap().to_owned(),
        key.to_str().unwrap().to_owned(),
    )
}

fn http() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;
    dyncert_key_decryption_key old @OLD@;
    dyncert_key_decryption_key new @NEW@;
    dyncert_key_encryption required;
    dyncert_cache max=100 valid=1h;",
        &source_server(""),
    ])
}

#[test]
fn put_encrypt_with_stores_envelopes_that_nginx_serves() {
    let dir = TempDir::new("cli-keyenc");
    let old = key_file(dir.path(), "old", &OLD);
    let new = key_file(dir.path(), "new", &NEW);
    let pki = Pki::new();
    let redis = Redis::start();
    let mut nginx = Nginx::start(
        &pki,
        &http(),
        NginxOpts::new()
            .redis(&redis)
            .var("OLD", old.display())
            .var("NEW", new.display()),
    );
    let leaf = pki.leaf(&["sealed.example.com"], 701);
    let (crt, key) = files(dir.path(), "sealed", &leaf);
    let kek = format!("old={}", old.display());
    dyncert(
        &redis,
        &[
            "put",
            "sealed.example.com",
            "--cert",
            &crt,
            "--key",
            &key,
            "--key-encryption-key",
            &kek,
            "--encrypt-with",
            "old",
        ],
    )
    .assert_ok("put --encrypt-with");

    // Both key fields are envelopes under "old", bound to the record.
    let aad = format!("{DEFAULT_PREFIX}sealed.example.com");
    for f in ["key", "key_der"] {
        let v = field(&redis, "sealed.example.com", f);
        assert!(v.starts_with(b"dyncert:v1:old:"), "{f} not sealed");
        assert!(keywrap::open(&v, aad.as_bytes(), &ring()).is_ok(), "{f}");
    }
    assert_eq!(
        keywrap::open(
            &field(&redis, "sealed.example.com", "key"),
            aad.as_bytes(),
            &ring()
        )
        .unwrap(),
        leaf.key_pem.as_bytes()
    );

    // `get` checks it with the key, as a terminator would.
    let out = dyncert(
        &redis,
        &["--key-encryption-key", &kek, "get", "sealed.example.com"],
    );
    out.assert_ok("get");
    assert!(out.stdout.contains("status:     valid"), "{}", out.stdout);
    let out = dyncert(&redis, &["get", "sealed.example.com"]);
    assert!(
        out.stdout.contains("key_decrypt_unknown_id"),
        "{}",
        out.stdout
    );

    let r = Request::default()
        .sni("sealed.example.com")
        .https(nginx.port)
        .expect("TLS request");
    r.assert_served(&leaf, &pki);
    nginx.assert_healthy();
}

#[test]
fn rewrap_moves_plain_and_old_keys_to_the_new_id() {
    let dir = TempDir::new("cli-rewrap");
    let old = format!("old={}", key_file(dir.path(), "old", &OLD).display());
    let new = format!("new={}", key_file(dir.path(), "new", &NEW).display());
    let pki = Pki::new();
    let redis = Redis::start();
    let a = pki.leaf(&["a.example.com"], 702);
    let b = pki.leaf(&["b.example.com"], 703);
    let (crt, key) = files(dir.path(), "a", &a);
    dyncert(
        &redis,
        &[
            "--key-encryption-key",
            &old,
            "put",
            "a.example.com",
            "--cert",
            &crt,
            "--key",
            &key,
            "--encrypt-with",
            "old",
        ],
    )
    .assert_ok("put a");
    let (crt, key) = files(dir.path(), "b", &b);
    dyncert(
        &redis,
        &["put", "b.example.com", "--cert", &crt, "--key", &key],
    )
    .assert_ok("put b (plain)");
    let crt_before = field(&redis, "a.example.com", "crt");

    // Without the old key, a's key cannot be read: refused, b done.
    let out = dyncert(
        &redis,
        &[
            "--key-encryption-key",
            &new,
            "rewrap",
            "--to",
            "new",
            "--all",
        ],
    );
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("a.example.com: refused"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("BEGIN"), "{}", out.stderr);
    assert!(field(&redis, "b.example.com", "key").starts_with(b"dyncert:v1:new:"));

    // With both keys: a moves to new; b is already there.
    let out = dyncert(
        &redis,
        &[
            "--key-encryption-key",
            &format!("{old},{new}"),
            "rewrap",
            "--to",
            "new",
            "--all",
        ],
    );
    out.assert_ok("rewrap --all");
    assert!(
        out.stdout
            .contains("rewrapped 1, already under \"new\" 1, refused 0"),
        "{}",
        out.stdout
    );
    for name in ["a.example.com", "b.example.com"] {
        let aad = format!("{DEFAULT_PREFIX}{name}");
        for f in ["key", "key_der"] {
            let v = field(&redis, name, f);
            assert!(v.starts_with(b"dyncert:v1:new:"), "{name} {f}");
            assert!(keywrap::open(&v, aad.as_bytes(), &ring()).is_ok());
        }
    }
    assert_eq!(field(&redis, "a.example.com", "crt"), crt_before);
    assert_eq!(
        keywrap::open(
            &field(&redis, "a.example.com", "key"),
            format!("{DEFAULT_PREFIX}a.example.com").as_bytes(),
            &ring()
        )
        .unwrap(),
        a.key_pem.as_bytes()
    );

    // A named record that does not exist: exit 1 with its name.
    let out = dyncert(
        &redis,
        &[
            "--key-encryption-key",
            &new,
            "rewrap",
            "--to",
            "new",
            "none.example.com",
        ],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("none.example.com"), "{}", out.stderr);
}

#[test]
fn key_files_are_checked_as_the_module_checks_them() {
    let dir = TempDir::new("cli-kek");
    let redis = Redis::start();
    let pki = Pki::new();
    let leaf = pki.leaf(&["x.example.com"], 704);
    let (crt, key) = files(dir.path(), "x", &leaf);
    let open = key_file(dir.path(), "open", &OLD);
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let spec = format!("old={}", open.display());
    let put = |extra: &[&str]| {
        let mut args = vec!["put", "x.example.com", "--cert", &crt, "--key", &key];
        args.extend_from_slice(extra);
        dyncert(&redis, &args)
    };
    let out = put(&["--key-encryption-key", &spec, "--encrypt-with", "old"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("readable by everyone"),
        "{}",
        out.stderr
    );
    // An id without its key is a usage mistake, caught before Redis.
    let out = put(&["--encrypt-with", "old"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("no --key-encryption-key old=FILE"),
        "{}",
        out.stderr
    );
    let short = dir.path().join("short.kek");
    std::fs::write(&short, [1u8; 16]).unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    let spec = format!("old={}", short.display());
    let out = put(&["--key-encryption-key", &spec, "--encrypt-with", "old"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("32 bytes"), "{}", out.stderr);
    assert_eq!(
        redis.cmd(&["EXISTS", &format!("{DEFAULT_PREFIX}x.example.com")]),
        Reply::Int(0),
        "nothing written"
    );
}
