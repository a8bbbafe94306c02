//! `dyncert issue` end to end: the real ACME test CA (`pebble`, installed
//! by scripts/acme-deps.sh) validates HTTP-01 against a real nginx whose
//! plain-HTTP server answers from Redis (`dyncert_acme_challenge on;`),
//! the CLI stores what was issued as `put` does, and the TLS server serves
//! it. pebble and the DNS stub that points every name at 127.0.0.1 are
//! tests/acme's harness, shared as is.

#[allow(dead_code)]
mod common_acme;

use std::time::Duration;

use common_acme::harness::{self, assert_chain_verifies, assert_pebble_issued, pending_challenges};
use common_acme::{answer_and_serve, dyncert, dyncert_bounded, issue, keys, AcmeStack, SilentCa};

use dyncert_testkit::*;

const NAME: &str = "shop.acme.test";

/// The same without `dyncert_acme_challenge`: no challenge can be answered.
fn serve_only() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;
    server {
        listen 127.0.0.1:@HTTP_PORT@;
        server_name _;
        location / { return 404; }
    }",
        &source_server(""),
    ])
}

#[test]
fn issue_gets_a_certificate_over_http01_from_nginx_and_stores_it_for_serving() {
    let AcmeStack {
        mut nginx,
        pebble,
        redis,
        dns,
        pki: _pki,
    } = AcmeStack::start(&answer_and_serve());
    let monitor = redis.monitor();

    let out = issue(&redis, &pebble, NAME);
    assert_eq!(
        out.code,
        0,
        "issue: stdout {}\nstderr {}\n{}",
        out.stdout,
        out.stderr,
        nginx.logs()
    );
    assert!(
        out.stdout.contains(&format!("\"{NAME}\"")),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("PRIVATE KEY") && !out.stderr.contains("PRIVATE KEY"),
        "never prints keys"
    );
    assert!(
        dns.resolved(NAME),
        "pebble resolved {NAME} through the stub"
    );

    // The challenge went through Redis with a TTL and is gone.
    monitor.sync();
    let set: Vec<_> = monitor
        .observed()
        .into_iter()
        .filter(|o| o.command() == "SETEX" || o.command() == "SET")
        .filter(|o| {
            o.args
                .get(1)
                .is_some_and(|k| k.starts_with(harness::ACME_PREFIX))
        })
        .collect();
    assert_eq!(set.len(), 1, "one HTTP-01 answer written: {set:?}");
    assert_eq!(pending_challenges(redis.port), Vec::<String>::new());
    assert_eq!(
        keys(&redis, "dyncert:acme-account:*").len(),
        1,
        "the account is kept in Redis for the next run"
    );

    // Stored as put stores it: both forms, the index, a pebble chain.
    let record = redis.record(NAME);
    let field = |f: &str| {
        record
            .iter()
            .find(|(k, _)| k == f)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("field {f} missing"))
    };
    for f in ["crt", "key", "crt_der", "key_der"] {
        field(f);
    }
    assert!(matches!(
        redis.cmd(&["ZSCORE", "dyncert:expiry", NAME]),
        Reply::Bulk(Some(_))
    ));
    let root_pem = pebble.issuer_root_pem();
    let chain = assert_pebble_issued(&field("crt"), &field("key"), NAME, &root_pem);

    let get = dyncert(&redis, &["get", NAME]);
    assert_eq!(get.code, 0, "{}", get.stderr);
    assert!(get.stdout.contains("Pebble Intermediate"), "{}", get.stdout);

    // nginx serves it for the name.
    let r = Request::get("/")
        .sni(NAME)
        .https(nginx.port)
        .unwrap_or_else(|e| panic!("TLS {NAME}: {e}\n{}", nginx.logs()));
    assert_eq!(r.status, 200, "body {:?}", r.body);
    assert_eq!(
        r.tls().chain[0].to_der().unwrap(),
        chain[0].to_der().unwrap(),
        "nginx served another leaf"
    );
    assert_eq!(r.tls().leaf_sans, [NAME]);
    let root = openssl::x509::X509::from_pem(root_pem.as_bytes()).unwrap();
    assert_chain_verifies(&r.tls().chain, &root);

    // The stored account is reused: a second issuance makes no new one.
    let again = issue(&redis, &pebble, NAME);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(keys(&redis, "dyncert:acme-account:*").len(), 1);
    nginx.assert_healthy();
}

#[test]
fn issue_fails_clearly_and_cleans_up_when_the_challenge_is_not_answered() {
    let AcmeStack {
        nginx: _nginx,
        pebble,
        redis,
        pki: _pki,
        dns: _dns,
    } = AcmeStack::start(&serve_only());
    let monitor = redis.monitor();

    let out = issue(&redis, &pebble, NAME);
    let line = out.one_line_failure();
    assert!(
        line.starts_with(&format!("dyncert: issue \"{NAME}\": ")) && line.contains("validation"),
        "names the name and the step: {line}"
    );
    assert!(line.contains("404"), "carries the CA's detail: {line}");

    monitor.sync();
    assert!(
        monitor.observed().iter().any(|o| o
            .args
            .get(1)
            .is_some_and(|k| k.starts_with(harness::ACME_PREFIX))),
        "an answer was written before the CA was asked"
    );
    assert_eq!(pending_challenges(redis.port), Vec::<String>::new());
    assert!(redis.record(NAME).is_empty(), "nothing stored");
}

/// Never two orders for a name in flight at once, fleet-wide: while another
/// process holds the name's order lock, `issue` orders nothing and says
/// so, and `renew` skips the name; once the lock is gone both proceed, and
/// each leaves no lock behind.
#[test]
fn an_order_lock_held_elsewhere_stops_issue_and_renew_for_that_name() {
    let AcmeStack {
        nginx: _nginx,
        pebble,
        redis,
        dns,
        pki: _pki,
    } = AcmeStack::start(&answer_and_serve());
    let lock = format!("dyncert:order-lock:{NAME}");
    let held = redis.cmd(&["SET", &lock, "another-issuer", "EX", "60"]);
    assert!(matches!(held, Reply::Status(_)), "SET: {held:?}");

    let out = issue(&redis, &pebble, NAME);
    assert_eq!(out.code, 1, "stdout {}\nstderr {}", out.stdout, out.stderr);
    assert_eq!(
        out.stderr.trim(),
        format!(
            "dyncert: issue \"{NAME}\": an order for it is in flight elsewhere ({lock} is held)"
        )
    );
    assert!(!dns.resolved(NAME), "no order reached the CA");
    assert!(redis.record(NAME).is_empty());
    // The other holder's lock is left alone.
    assert_eq!(
        redis.cmd(&["GET", &lock]),
        Reply::Bulk(Some(b"another-issuer".to_vec()))
    );

    redis.cmd(&["DEL", &lock]);
    let out = issue(&redis, &pebble, NAME);
    assert_eq!(out.code, 0, "stdout {}\nstderr {}", out.stdout, out.stderr);
    let first = common_acme::serial(&common_acme::stored_leaf(&redis, NAME));
    assert_eq!(
        redis.cmd(&["EXISTS", &lock]),
        Reply::Int(0),
        "released after the order"
    );

    // A renewal of the name while the lock is held elsewhere: skipped.
    redis.cmd(&["SET", &lock, "another-issuer", "EX", "60"]);
    let out = common_acme::acme(&redis, &pebble, &["renew", "--within", "100000d"]);
    assert_eq!(out.code, 0, "stdout {}\nstderr {}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!(
            "skipped \"{NAME}\": issue \"{NAME}\": an order for it is in flight elsewhere"
        )),
        "{}",
        out.stdout
    );
    assert_eq!(
        common_acme::serial(&common_acme::stored_leaf(&redis, NAME)),
        first,
        "not renewed"
    );
}

/// `--rsa` orders an RSA 2048 key (served as such), and `--account-key`
/// keeps the ACME account in a file readable by its owner only, reused by
/// the next order, instead of in Redis.
#[test]
fn rsa_keys_on_request_and_an_account_kept_in_a_file() {
    use std::os::unix::fs::PermissionsExt;
    let AcmeStack {
        nginx,
        pebble,
        redis,
        dns: _dns,
        pki: _pki,
    } = AcmeStack::start(&answer_and_serve());
    let dir = TempDir::new("acme-account");
    let file = dir.path().join("account.json");
    let file_arg = file.to_str().unwrap();
    let args = [
        "issue",
        NAME,
        "--rsa",
        "--account-key",
        file_arg,
        "--email",
        "ops@acme.test",
    ];
    let out = common_acme::acme(&redis, &pebble, &args);
    assert_eq!(out.code, 0, "stdout {}\nstderr {}", out.stdout, out.stderr);

    let leaf = common_acme::stored_leaf(&redis, NAME);
    let key = leaf.public_key().unwrap();
    assert_eq!(key.id(), openssl::pkey::Id::RSA);
    assert_eq!(key.bits(), 2048);
    let r = common_acme::served_serial(&nginx, NAME, &common_acme::serial(&leaf));
    assert_eq!(r.public_key().unwrap().id(), openssl::pkey::Id::RSA);

    let meta = std::fs::metadata(&file).expect("account file written");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let first = std::fs::read_to_string(&file).unwrap();
    let json: serde_json::Value = serde_json::from_str(&first).expect("JSON credentials");
    assert!(json.get("id").is_some(), "{json}");
    assert!(
        keys(&redis, "dyncert:acme-account:*").is_empty(),
        "no account in Redis"
    );

    // The next order uses the same account: the file is not rewritten.
    let out = common_acme::acme(&redis, &pebble, &args);
    assert_eq!(out.code, 0, "stdout {}\nstderr {}", out.stdout, out.stderr);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), first);
    assert_ne!(
        common_acme::serial(&common_acme::stored_leaf(&redis, NAME)),
        common_acme::serial(&leaf)
    );
}

/// A CA that accepts the connection and never answers (a hung CA, a
/// middlebox): `issue` fails at the first step within `--acme-timeout`
/// (here from the environment), in one line naming the step and the CA,
/// and leaves no order lock behind.
#[test]
fn issue_fails_within_the_acme_timeout_when_the_ca_never_answers() {
    let redis = Redis::start();
    let ca = SilentCa::start();
    let url = ca.url();
    let (out, took) = dyncert_bounded(
        &redis,
        &[("DYNCERT_ACME_TIMEOUT", "1s")],
        &["issue", NAME, "--acme-url", &url],
        Duration::from_secs(30),
    );
    assert_ne!(out.code, -1, "still running after {took:?}: killed");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(
        out.one_line_failure(),
        format!(
            "dyncert: issue \"{NAME}\": account: no answer from the CA at {url} within 1 s \
             (--acme-timeout)"
        )
    );
    assert!(ca.accepted() >= 1, "the connection was accepted");
    assert_eq!(keys(&redis, "dyncert:order-lock:*"), Vec::<String>::new());
    assert!(redis.record(NAME).is_empty(), "nothing stored");
}

/// `dyncert ARGS... --acme-url <pebble> --acme-ca ...` against `redis`
/// as an ACL user (`user`, password `pw`).
fn acme_as(redis: &Redis, pebble: &harness::Pebble, user: &str, args: &[&str]) -> common_acme::Out {
    let url = format!("redis://{user}:pw@127.0.0.1:{}/0", redis.port);
    let (directory, ca) = (pebble.directory_url(), pebble.ca_file());
    let mut all = args.to_vec();
    all.extend_from_slice(&["--acme-url", &directory, "--acme-ca", ca.to_str().unwrap()]);
    common_acme::dyncert_at(&url, &all)
}

/// A Redis error after the certificate is stored does not undo its
/// report: an order lock that cannot be released is a warning (it expires
/// by itself), and the invalidation is still published, exit 0; an
/// invalidation that cannot be published leaves the "issued and stored"
/// line, with a warning saying how to send it, and exit status 1. Redis
/// ACLs make exactly those commands fail.
#[test]
fn a_redis_error_after_the_store_is_a_warning_and_the_certificate_stays_issued() {
    let AcmeStack {
        nginx: _nginx,
        pebble,
        redis,
        dns: _dns,
        pki: _pki,
    } = AcmeStack::start(&answer_and_serve());
    // DEL only on records and HTTP-01 answers: the lock's release fails.
    redis.cmd(&[
        "ACL",
        "SETUSER",
        "nodel",
        "on",
        ">pw",
        "~*",
        "&*",
        "+@all",
        "-del",
        "(~dyncert:cert:* ~dyncert:acme:* +del)",
    ]);
    redis.cmd(&[
        "ACL", "SETUSER", "nopub", "on", ">pw", "~*", "&*", "+@all", "-publish",
    ]);

    let out = acme_as(&redis, &pebble, "nodel", &["issue", NAME]);
    assert_eq!(out.code, 0, "stdout {}\nstderr {}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .starts_with(&format!("issued and stored \"{NAME}\""))
            && out
                .stdout
                .contains("; invalidation published on \"dyncert:invalidate\""),
        "{}",
        out.stdout
    );
    let lock = format!("dyncert:order-lock:{NAME}");
    let warning = out.stderr.trim_end();
    assert_eq!(warning.lines().count(), 1, "{warning}");
    assert!(
        warning.starts_with(&format!(
            "dyncert: warning: issue \"{NAME}\": the order lock ({lock}) was not released (Redis: "
        )) && warning.ends_with("; it expires within 300 s"),
        "{warning}"
    );
    assert!(redis.record_field(NAME, "crt").is_some());
    assert_eq!(
        redis.cmd(&["EXISTS", &lock]),
        Reply::Int(1),
        "left to expire"
    );

    const OTHER: &str = "www.acme.test";
    let out = acme_as(&redis, &pebble, "nopub", &["issue", OTHER]);
    assert_eq!(out.code, 1, "stdout {}\nstderr {}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .starts_with(&format!("issued and stored \"{OTHER}\""))
            && out
                .stdout
                .trim_end()
                .ends_with("; invalidation not published"),
        "{}",
        out.stdout
    );
    let warning = out.stderr.trim_end();
    assert_eq!(warning.lines().count(), 1, "{warning}");
    assert!(
        warning.starts_with(&format!(
            "dyncert: warning: \"{OTHER}\": the invalidation was not published (Redis: "
        )) && warning.ends_with(&format!(
            "); terminators keep what they cached until it expires: run dyncert invalidate \
             '{OTHER}'"
        )),
        "{warning}"
    );
    assert!(redis.record_field(OTHER, "crt").is_some());
    assert_eq!(
        keys(&redis, "dyncert:order-lock:*"),
        vec![lock.clone()],
        "released"
    );

    // renew: each record renewed (and counted so), each line saying its
    // invalidation is missing, a warning each, and exit status 1.
    redis.cmd(&["DEL", &lock]);
    let serials =
        |r: &Redis| [NAME, OTHER].map(|n| common_acme::serial(&common_acme::stored_leaf(r, n)));
    let before = serials(&redis);
    let renew = ["renew", "--within", "100000d", "--no-jitter"];
    let out = acme_as(&redis, &pebble, "nopub", &renew);
    assert_eq!(out.code, 1, "stdout {}\nstderr {}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    for line in &lines[..2] {
        assert!(
            line.starts_with("renewed \"") && line.ends_with("; invalidation not published"),
            "{line}"
        );
    }
    assert_eq!(lines[2], "renewed 2, not due 0, skipped 0, failed 0");
    assert_eq!(out.stderr.lines().count(), 2, "{}", out.stderr);
    let after = serials(&redis);
    assert!(before[0] != after[0] && before[1] != after[1], "renewed");
}

/// An HTTPS "CA" that answers every request with a 200 and a body that
/// does not end (up to 64 MiB): the ACME client reads at most 1 MiB of
/// it, and `issue` fails at once with one line instead of holding the
/// whole body. Counts the bytes it managed to send.
#[test]
fn an_acme_answer_with_an_endless_body_is_cut_off() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let pki = Pki::new();
    let redis = Redis::start();
    let leaf = pki.leaf_with(
        &["localhost"],
        9,
        LeafOpts {
            ips: &["127.0.0.1"],
            ..Default::default()
        },
    );
    let mut tls =
        openssl::ssl::SslAcceptor::mozilla_intermediate_v5(openssl::ssl::SslMethod::tls()).unwrap();
    tls.set_certificate(&leaf.issued.cert).unwrap();
    tls.add_extra_chain_cert(pki.intermediate.cert.clone())
        .unwrap();
    tls.set_private_key(&leaf.issued.key).unwrap();
    let tls = Arc::new(tls.build());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&sent);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (tls, counted) = (Arc::clone(&tls), Arc::clone(&counted));
            std::thread::spawn(move || {
                let Ok(mut s) = tls.accept(conn) else { return };
                let mut head = [0u8; 4096];
                let _ = s.read(&mut head);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
                );
                let chunk = [b' '; 64 * 1024];
                for _ in 0..1024 {
                    if s.write_all(&chunk).is_err() {
                        return;
                    }
                    counted.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
            });
        }
    });
    let dir = TempDir::new("acme-endless");
    let ca = dir.path().join("ca.pem");
    write_file(&ca, &pki.root.cert_pem);
    let url = format!("https://127.0.0.1:{port}/dir");
    let (out, took) = dyncert_bounded(
        &redis,
        &[],
        &[
            "issue",
            NAME,
            "--acme-url",
            &url,
            "--acme-ca",
            ca.to_str().unwrap(),
            "--acme-timeout",
            "20s",
        ],
        Duration::from_secs(60),
    );
    let all = format!("{}{}", out.stdout, out.stderr);
    let sent = sent.load(Ordering::SeqCst);
    assert!(
        sent < 16 * 1024 * 1024,
        "the CA sent {sent} bytes: the body was read past the cap\n{all}"
    );
    assert_eq!(out.code, 1, "{all}");
    assert!(
        out.stderr
            .starts_with(&format!("dyncert: issue \"{NAME}\": account: ")),
        "{all}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}\n{all}");
    assert!(keys(&redis, "dyncert:cert:*").is_empty());
}
