//! The setup the ACME test files share: tests/acme's harness (pebble and
//! the DNS stub that points every name at 127.0.0.1), the terminator that
//! answers HTTP-01 from Redis and serves records, and the CLI runner.

#[path = "../../../tests/acme/harness.rs"]
pub mod harness;

use std::process::Command;

use dyncert_testkit::*;
use harness::{DnsStub, Pebble};

/// The terminator: port 80's role answers challenges from Redis, the TLS
/// server serves records.
pub const ANSWER_AND_SERVE: &str = r#"
http {
    access_log off;
    dyncert_redis @REDIS@;
    server {
        listen 127.0.0.1:@HTTP_PORT@;
        server_name _;
        dyncert_acme_challenge on;
        location / { return 404; }
    }
    server {
        listen 127.0.0.1:@PORT@ ssl;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        location / { return 200 "$ssl_server_name via $dyncert_source name=$dyncert_name\n"; }
    }
}
"#;

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn dyncert(redis: &Redis, args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_dyncert"))
        .arg("--redis")
        .arg(redis.url())
        .args(args)
        .output()
        .expect("run dyncert");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn issue(redis: &Redis, pebble: &Pebble, name: &str) -> Out {
    let url = pebble.directory_url();
    let ca = pebble.ca_file();
    dyncert(
        redis,
        &[
            "issue",
            name,
            "--acme-url",
            &url,
            "--acme-ca",
            ca.to_str().unwrap(),
        ],
    )
}

/// Keys under `pattern` (KEYS is fine on a test server).
pub fn keys(redis: &Redis, pattern: &str) -> Vec<String> {
    match redis.cmd(&["KEYS", pattern]) {
        Reply::Array(Some(items)) => items
            .into_iter()
            .filter_map(|r| match r {
                Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
                _ => None,
            })
            .collect(),
        other => panic!("KEYS {pattern}: {other:?}"),
    }
}

/// A CA, a terminator with `config` (its plain-HTTP port as `@HTTP_PORT@`,
/// where pebble validates) and their Redis: what every issuance test runs.
/// Bind every field when destructuring (`nginx: _nginx`, not `..`): a
/// field left to `..` is dropped, and its process killed, at once.
pub struct AcmeStack {
    pub nginx: Nginx,
    pub pebble: Pebble,
    pub redis: Redis,
    pub pki: Pki,
    pub dns: DnsStub,
}

impl AcmeStack {
    pub fn start(config: &str) -> AcmeStack {
        let pki = Pki::new();
        let redis = Redis::start();
        let dns = DnsStub::start();
        let http_port = free_port();
        let pebble = Pebble::start(http_port, &dns);
        let nginx = Nginx::start(
            &pki,
            config,
            NginxOpts::new().redis(&redis).var("HTTP_PORT", http_port),
        );
        AcmeStack {
            nginx,
            pebble,
            redis,
            pki,
            dns,
        }
    }
}

/// A certificate's serial number in hex, to tell two issuances apart.
pub fn serial(leaf: &openssl::x509::X509Ref) -> String {
    leaf.serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string()
}

/// Now, in UNIX seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
