//! Private keys encrypted at rest (`dyncert_key_decryption_key`,
//! `dyncert_key_encryption`): a record whose `key` (or `key_der`) is an
//! AES-256-GCM envelope bound to its Redis key name is served with its own
//! certificate; the same ciphertext under another name, an unknown key id
//! or a tampered byte is refused with a log line (never key bytes) and a
//! counter; `required` refuses plain keys; two ids serve side by side
//! (rotation); a key file anyone may read, or of the wrong length, fails
//! `nginx -t` naming it.

use dyncert_core::keywrap::{seal, Keyring};
use dyncert_testkit::conf::dyncert_server;
use dyncert_testkit::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const K1: [u8; 32] = [0x11; 32];
const K2: [u8; 32] = [0x22; 32];

/// Both key ids, a test's `@EXTRA@` directives, [`METRICS_SERVER`] and the
/// module's server with a test's `@UNKNOWN@` line.
fn http() -> String {
    let server = dyncert_server(
        r#"
        @UNKNOWN@
        location / { return 200 "$ssl_server_name via $dyncert_source name=$dyncert_name pid=$pid\n"; }
"#,
    );
    http_block(&[
        "    dyncert_redis @REDIS@;",
        "    dyncert_key_decryption_key k1 @K1@;",
        "    dyncert_key_decryption_key 2026-k2 @K2@;",
        "    @EXTRA@",
        METRICS_SERVER,
        &server,
    ])
}

fn ring() -> Keyring {
    let mut r = Keyring::new();
    r.insert("k1", K1);
    r.insert("2026-k2", K2);
    r
}

/// `plain` sealed under `id` for the record of `name` (default prefix).
fn wrap(plain: &[u8], name: &str, id: &str) -> String {
    let aad = format!("dyncert:cert:{name}");
    String::from_utf8(seal(plain, aad.as_bytes(), id, &ring()).expect("seal")).unwrap()
}

/// Writes a key file (hex, as `openssl rand -hex 32` does) with `mode`.
fn key_file(dir: &Path, name: &str, key: &[u8], mode: u32) -> PathBuf {
    let path = dir.join(name);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, format!("{hex}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

struct Env {
    pki: Pki,
    redis: Redis,
    nginx: Nginx,
    mport: u16,
    _keys: TempDir,
}

impl Env {
    fn start(extra: &str, unknown: &str) -> Env {
        Env::start_with(1, extra, unknown)
    }

    fn start_with(workers: u32, extra: &str, unknown: &str) -> Env {
        let keys = TempDir::new("keyenc");
        let k1 = key_file(keys.path(), "k1.key", &K1, 0o600);
        let k2 = key_file(keys.path(), "k2.key", &K2, 0o640);
        let pki = Pki::new();
        let redis = Redis::start();
        let mport = free_port();
        let nginx = Nginx::start(
            &pki,
            &http(),
            NginxOpts::new()
                .workers(workers)
                .redis(&redis)
                .var("MPORT", mport)
                .var("K1", k1.display())
                .var("K2", k2.display())
                .var("EXTRA", extra)
                .var("UNKNOWN", unknown),
        );
        Env {
            pki,
            redis,
            nginx,
            mport,
            _keys: keys,
        }
    }

    fn get(&self, sni: &str) -> Exchange {
        Request::default()
            .sni(sni)
            .https(self.nginx.port)
            .unwrap_or_else(|e| panic!("TLS request with SNI {sni} failed: {e}"))
    }

    fn rejected(&self, reason: &str) -> f64 {
        scrape_metrics(self.mport).get(&format!(
            "dyncert_records_rejected_total{{reason=\"{reason}\"}}"
        ))
    }

    /// Waits for the refusal log line of `name` and checks it names the
    /// reason and carries no key material.
    fn refusal_line(&self, name: &str, reason: &str) -> String {
        let line = self
            .nginx
            .wait_for_log_line(Duration::from_secs(3), |l| {
                l.contains("dyncert:") && l.contains(&format!("name: \"{name}\""))
            })
            .unwrap_or_else(|| panic!("no log line for {name}\n{}", self.nginx.logs()));
        assert!(line.contains(reason), "no reason \"{reason}\" in: {line}");
        assert!(
            !line.contains("BEGIN") && !line.contains("dyncert:v1:"),
            "key material in the log: {line}"
        );
        line
    }
}

#[test]
fn encrypted_record_is_served_with_its_own_certificate() {
    let mut s = Env::start("", "");
    let leaf = s.pki.leaf(&["sealed.example.com"], 9101);
    let key = wrap(leaf.key_pem.as_bytes(), "sealed.example.com", "k1");
    s.redis
        .hset_cert("sealed.example.com", &leaf.chain_pem, &key);
    let r = s.get("sealed.example.com");
    r.assert_served(&leaf, &s.pki);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);

    // The DER form too: key_der sealed, its plaintext the DER key.
    let leaf = s.pki.leaf(&["der.example.com"], 9102);
    let chain = [
        leaf.issued.cert.to_der().unwrap(),
        s.pki.intermediate.cert.to_der().unwrap(),
    ]
    .concat();
    let der = leaf
        .issued
        .key
        .ec_key()
        .unwrap()
        .private_key_to_der()
        .unwrap();
    let key = wrap(&der, "der.example.com", "k1");
    let mut conn = s.redis.connect();
    let hset: [&[u8]; 6] = [
        b"HSET",
        b"dyncert:cert:der.example.com",
        b"crt_der",
        &chain,
        b"key_der",
        key.as_bytes(),
    ];
    conn.cmd(&hset).unwrap();
    s.get("der.example.com").assert_served(&leaf, &s.pki);
    s.nginx.assert_healthy();
}

#[test]
fn ciphertext_copied_to_another_name_is_refused_and_counted() {
    let s = Env::start("", "");
    // One certificate for both names: only the binding to the record's
    // key name can tell the copy from the original.
    let leaf = s
        .pki
        .leaf(&["victim.example.com", "thief.example.com"], 9103);
    let key = wrap(leaf.key_pem.as_bytes(), "victim.example.com", "k1");
    s.redis
        .hset_cert("victim.example.com", &leaf.chain_pem, &key);
    s.redis
        .hset_cert("thief.example.com", &leaf.chain_pem, &key);

    s.get("victim.example.com").assert_served(&leaf, &s.pki);
    let r = s.get("thief.example.com");
    r.assert_default();
    assert_eq!(r.source(), "default", "body {:?}", r.body);
    let line = s.refusal_line("thief.example.com", "authentication failed");
    assert!(
        line.contains(r#"record: "dyncert:cert:thief.example.com""#),
        "the log line names the record key: {line}"
    );
    let n = poll(Duration::from_secs(3), Duration::from_millis(50), || {
        (s.rejected("key_decrypt_bad_tag") >= 1.0).then_some(())
    });
    assert!(n.is_some(), "bad_tag refusal not counted");
}

#[test]
fn unknown_id_and_tampered_ciphertext_are_rejected_per_dyncert_unknown() {
    let mut s = Env::start("", "dyncert_unknown reject;");
    let leaf = s.pki.leaf(&["unknown-id.example.com"], 9104);
    let key = wrap(leaf.key_pem.as_bytes(), "unknown-id.example.com", "k1");
    // Relabelled under an id this server does not have.
    let key = key.replacen("dyncert:v1:k1:", "dyncert:v1:k9:", 1);
    s.redis
        .hset_cert("unknown-id.example.com", &leaf.chain_pem, &key);
    let err = Request::get("/")
        .sni("unknown-id.example.com")
        .handshake(s.nginx.port)
        .expect_err("a key under an unknown id was served");
    assert!(is_unrecognized_name(&err), "wrong failure: {err}");
    s.refusal_line("unknown-id.example.com", "key id");

    let leaf = s.pki.leaf(&["tampered.example.com"], 9105);
    let key = wrap(leaf.key_pem.as_bytes(), "tampered.example.com", "k1");
    // One base64 character of the ciphertext changed.
    let mut bytes = key.into_bytes();
    let i = "dyncert:v1:k1:".len() + 30;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let key = String::from_utf8(bytes).unwrap();
    s.redis
        .hset_cert("tampered.example.com", &leaf.chain_pem, &key);
    let err = Request::get("/")
        .sni("tampered.example.com")
        .handshake(s.nginx.port)
        .expect_err("a tampered key was served");
    assert!(is_unrecognized_name(&err), "wrong failure: {err}");
    s.refusal_line("tampered.example.com", "authentication failed");
    let counted = poll(Duration::from_secs(3), Duration::from_millis(50), || {
        (s.rejected("key_decrypt_unknown_id") >= 1.0 && s.rejected("key_decrypt_bad_tag") >= 1.0)
            .then_some(())
    });
    assert!(counted.is_some(), "refusals not counted");
    s.nginx.assert_healthy();
}

#[test]
fn required_refuses_a_plain_key_and_serves_an_encrypted_one() {
    let s = Env::start("dyncert_key_encryption required;", "");
    let plain = s.pki.leaf(&["plain.example.com"], 9106);
    s.redis.put_leaf("plain.example.com", &plain);
    let r = s.get("plain.example.com");
    r.assert_default();
    s.refusal_line("plain.example.com", "dyncert_key_encryption is required");
    let counted = poll(Duration::from_secs(3), Duration::from_millis(50), || {
        (s.rejected("key_plain_refused") >= 1.0).then_some(())
    });
    assert!(counted.is_some(), "plain_refused not counted");

    let leaf = s.pki.leaf(&["wrapped.example.com"], 9107);
    let key = wrap(leaf.key_pem.as_bytes(), "wrapped.example.com", "2026-k2");
    s.redis
        .hset_cert("wrapped.example.com", &leaf.chain_pem, &key);
    s.get("wrapped.example.com").assert_served(&leaf, &s.pki);
}

#[test]
fn records_under_two_key_ids_are_both_served() {
    let s = Env::start("", "");
    let old = s.pki.leaf(&["old.example.com"], 9108);
    let new = s.pki.leaf(&["new.example.com"], 9109);
    let k_old = wrap(old.key_pem.as_bytes(), "old.example.com", "k1");
    let k_new = wrap(new.key_pem.as_bytes(), "new.example.com", "2026-k2");
    s.redis.hset_cert("old.example.com", &old.chain_pem, &k_old);
    s.redis.hset_cert("new.example.com", &new.chain_pem, &k_new);
    s.get("old.example.com").assert_served(&old, &s.pki);
    s.get("new.example.com").assert_served(&new, &s.pki);
}

#[test]
fn a_decrypted_key_reaches_the_other_workers_through_the_shared_zone() {
    // The zone holds the parsed record (the host's memory is trusted):
    // another worker serves it without fetching or decrypting it.
    let s = Env::start_with(
        2,
        "dyncert_shared_zone dyncert:1m; dyncert_key_encryption required;",
        "",
    );
    let leaf = s.pki.leaf(&["zone.example.com"], 9112);
    let key = wrap(leaf.key_pem.as_bytes(), "zone.example.com", "k1");
    s.redis.hset_cert("zone.example.com", &leaf.chain_pem, &key);
    let first = s.get("zone.example.com");
    first.assert_served(&leaf, &s.pki);
    assert_eq!(first.source(), "redis", "body {:?}", first.body);
    let all = s
        .nginx
        .hit_every_worker("zone.example.com", STARTUP_DEADLINE);
    for r in &all {
        r.assert_served(&leaf, &s.pki);
    }
    assert!(
        all.iter().any(|r| r.source() == "shared"),
        "the other worker did not load it from the zone: {:?}",
        all.iter()
            .map(|r| (r.pid(), r.source()))
            .collect::<Vec<_>>()
    );
}

#[test]
fn encrypted_wildcard_record_is_bound_to_the_wildcard_key() {
    let s = Env::start("", "");
    let leaf = s.pki.leaf(&["*.wild.example.com"], 9111);
    let key = wrap(leaf.key_pem.as_bytes(), "*.wild.example.com", "k1");
    s.redis
        .hset_cert("*.wild.example.com", &leaf.chain_pem, &key);
    let r = s.get("shop.wild.example.com");
    r.assert_served(&leaf, &s.pki);
}

fn api_http() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;",
        "    dyncert_api @API@ writeback=1h;",
        "    dyncert_key_decryption_key k1 @K1@;",
        &source_server(""),
    ])
}

#[test]
fn encrypted_api_answer_is_served_and_written_back_still_encrypted() {
    let keys = TempDir::new("keyenc");
    let k1 = key_file(keys.path(), "k1.key", &K1, 0o600);
    let pki = Pki::new();
    let redis = Redis::start();
    let api = CertApi::start();
    let mut nginx = Nginx::start(
        &pki,
        &api_http(),
        NginxOpts::new()
            .redis(&redis)
            .api(&api)
            .var("K1", k1.display()),
    );
    let leaf = pki.leaf(&["api-sealed.example.com"], 9110);
    let key = wrap(leaf.key_pem.as_bytes(), "api-sealed.example.com", "k1");
    api.set(
        "api-sealed.example.com",
        ApiReply::cert_pem(&leaf.chain_pem, &key),
    );
    let r = Request::default()
        .sni("api-sealed.example.com")
        .https(nginx.port)
        .expect("TLS request");
    r.assert_served(&leaf, &pki);
    let stored = poll(Duration::from_secs(5), Duration::from_millis(20), || {
        redis.record_field("api-sealed.example.com", "key")
    })
    .expect("written back");
    assert_eq!(stored, key, "the write-back must keep the key encrypted");
    assert_eq!(
        redis.record_field("api-sealed.example.com", "key_der"),
        None,
        "no plaintext DER form beside an encrypted key"
    );
    nginx.assert_healthy();
}

fn config_test(k1_mode: u32, k1_bytes: &[u8], extra: &str) -> (ConfigTest, PathBuf, TempDir) {
    config_test_with(
        |k1| {
            std::fs::write(k1, k1_bytes).unwrap();
            std::fs::set_permissions(k1, std::fs::Permissions::from_mode(k1_mode)).unwrap();
        },
        extra,
    )
}

/// `nginx -t` of the test's configuration, with the file of key id k1
/// made by `make_k1`.
fn config_test_with(make_k1: impl FnOnce(&Path), extra: &str) -> (ConfigTest, PathBuf, TempDir) {
    let keys = TempDir::new("keyenc-t");
    let k1 = keys.path().join("k1.key");
    make_k1(&k1);
    let k2 = key_file(keys.path(), "k2.key", &K2, 0o600);
    let pki = Pki::new();
    let t = Nginx::config_test(
        &pki,
        &http(),
        NginxOpts::new()
            .var("REDIS", "redis://127.0.0.1:1")
            .var("MPORT", free_port())
            .var("K1", k1.display())
            .var("K2", k2.display())
            .var("EXTRA", extra)
            .var("UNKNOWN", ""),
    );
    (t, k1, keys)
}

#[test]
fn config_test_accepts_key_files_readable_by_owner_and_group() {
    let (t, _, _keys) = config_test(0o640, &[7; 32], "dyncert_key_encryption required;");
    assert!(t.ok, "{}", t.output);
}

#[test]
fn world_readable_key_file_fails_the_config_test_naming_it() {
    let (t, k1, _keys) = config_test(0o644, &[7; 32], "");
    assert!(
        !t.ok,
        "a world-readable key file was accepted:\n{}",
        t.output
    );
    assert!(
        t.output.contains(&format!("key file \"{}\"", k1.display()))
            && t.output.contains("readable by everyone"),
        "{}",
        t.output
    );
}

#[test]
fn wrong_length_key_file_fails_the_config_test_naming_it() {
    let (t, k1, _keys) = config_test(0o600, &[7; 31], "");
    assert!(!t.ok, "a 31-byte key was accepted:\n{}", t.output);
    assert!(
        t.output.contains(&format!("key file \"{}\"", k1.display()))
            && t.output.contains("32 bytes"),
        "{}",
        t.output
    );
}

#[test]
fn a_fifo_or_a_huge_file_as_key_file_fails_the_config_test_without_hanging() {
    // A FIFO nobody writes to would block a read forever.
    let (t, k1, _keys) = config_test_with(
        |k1| {
            let made = std::process::Command::new("mkfifo")
                .args(["-m", "600"])
                .arg(k1)
                .status()
                .expect("mkfifo");
            assert!(made.success());
        },
        "",
    );
    assert!(!t.ok, "{}", t.output);
    assert!(
        t.output.contains(&format!(
            "key file \"{}\" is not a regular file",
            k1.display()
        )),
        "{}",
        t.output
    );
    let (t, k1, _keys) = config_test(0o600, &vec![b'a'; 1 << 20], "");
    assert!(!t.ok, "{}", t.output);
    assert!(
        t.output.contains(&format!("key file \"{}\"", k1.display()))
            && t.output.contains("32 bytes"),
        "{}",
        t.output
    );
}

#[test]
fn duplicate_key_id_or_bad_mode_fail_the_config_test() {
    let (t, _, _keys) = config_test(0o600, &[7; 32], "dyncert_key_decryption_key k1 /dev/null;");
    assert!(!t.ok, "{}", t.output);
    assert!(
        t.output.contains("key id \"k1\"") && t.output.contains("duplicate"),
        "{}",
        t.output
    );
    let (t, _, _keys) = config_test(0o600, &[7; 32], "dyncert_key_encryption sometimes;");
    assert!(!t.ok, "{}", t.output);
    assert!(
        t.output.contains("invalid parameter \"sometimes\""),
        "{}",
        t.output
    );
}

#[test]
fn required_without_any_key_fails_the_config_test_naming_both() {
    let http = r#"
http {
    dyncert_redis redis://127.0.0.1:1;
    dyncert_key_encryption required;
    server {
        listen 127.0.0.1:@PORT@ ssl;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
    }
}
"#;
    let t = Nginx::config_test(&Pki::new(), http, NginxOpts::new());
    assert!(!t.ok, "{}", t.output);
    assert!(
        t.output.contains("dyncert_key_encryption required")
            && t.output.contains("dyncert_key_decryption_key"),
        "{}",
        t.output
    );
}
