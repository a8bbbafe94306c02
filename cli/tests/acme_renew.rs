//! `dyncert renew` end to end, with the setup of acme_issue.rs: pebble
//! validates HTTP-01 against a real nginx answering from Redis, and the
//! TLS server serves what renew stored. Candidates come from the expiry
//! index only.

#[allow(dead_code)]
mod common_acme;

use std::path::Path;
use std::time::Duration;

use common_acme::harness::{assert_pebble_issued, ChallengeStandin, DnsStub, Pebble};
use common_acme::{
    acme, answer_and_serve, dyncert, issue, put_pem, serial, served_serial, sorted_record,
    stored_leaf, AcmeStack, Out,
};
use dyncert_testkit::*;

const NAME: &str = "shop.acme.test";
const INDEX: &str = "dyncert:expiry";

fn renew(redis: &Redis, pebble: &Pebble, extra: &[&str]) -> Out {
    let mut args = vec!["renew"];
    args.extend_from_slice(extra);
    acme(redis, pebble, &args)
}

fn unix(t: &openssl::asn1::Asn1TimeRef) -> i64 {
    let d = openssl::asn1::Asn1Time::from_unix(0)
        .unwrap()
        .diff(t)
        .unwrap();
    i64::from(d.days) * 86_400 + i64::from(d.secs)
}

fn zscore(redis: &Redis, name: &str) -> Option<i64> {
    match redis.cmd(&["ZSCORE", INDEX, name]) {
        Reply::Bulk(Some(v)) => Some(String::from_utf8(v).unwrap().parse::<f64>().unwrap() as i64),
        Reply::Bulk(None) => None,
        other => panic!("ZSCORE: {other:?}"),
    }
}

fn put_leaf(redis: &Redis, dir: &Path, name: &str, leaf: &Leaf, extra: &[&str]) {
    let out = put_pem(redis, dir, name, &leaf.chain_pem, &leaf.key_pem, extra);
    assert_eq!(out.code, 0, "put {name}: {}", out.stderr);
}

#[test]
fn renew_leaves_long_lived_certificates_alone_and_renews_within_the_window_for_serving() {
    let AcmeStack {
        mut nginx,
        pebble,
        redis,
        pki: _pki,
        dns: _dns,
    } = AcmeStack::start(&answer_and_serve());
    let out = issue(&redis, &pebble, NAME);
    assert_eq!(out.code, 0, "issue: {}\n{}", out.stderr, nginx.logs());
    let old = stored_leaf(&redis, NAME);
    let old_serial = serial(&old);
    assert_eq!(
        serial(&served_serial(&nginx, NAME, &old_serial)),
        old_serial
    );

    // pebble's certificates live for years: not in their last third.
    let dry = renew(&redis, &pebble, &["--dry-run"]);
    assert_eq!(dry.code, 0, "{}{}", dry.stdout, dry.stderr);
    assert!(
        dry.stdout.contains(&format!("not due \"{NAME}\"")),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout
            .contains("dry run: due 0, not due 1, skipped 0, failed 0"),
        "{}",
        dry.stdout
    );
    let dry = renew(&redis, &pebble, &["--dry-run", "--within", "100000d"]);
    assert!(
        dry.stdout.contains(&format!("due \"{NAME}\": notAfter"))
            && dry.stdout.contains("dry run: due 1, not due 0"),
        "{}",
        dry.stdout
    );
    assert_eq!(
        serial(&stored_leaf(&redis, NAME)),
        old_serial,
        "dry run orders nothing"
    );

    let out = renew(&redis, &pebble, &["--within", "100000d", "--no-jitter"]);
    assert_eq!(
        out.code,
        0,
        "{}{}\n{}",
        out.stdout,
        out.stderr,
        nginx.logs()
    );
    assert!(
        out.stdout
            .contains(&format!("renewed \"{NAME}\": {NAME}: notAfter")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("renewed 1, not due 0, skipped 0, failed 0"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("PRIVATE KEY"));

    let new = stored_leaf(&redis, NAME);
    let new_serial = serial(&new);
    assert_ne!(new_serial, old_serial, "a new certificate is stored");
    assert_eq!(
        zscore(&redis, NAME),
        Some(unix(new.not_after())),
        "index follows"
    );
    let crt = redis.record_field(NAME, "crt").unwrap();
    let key = redis.record_field(NAME, "key").unwrap();
    assert_pebble_issued(&crt, &key, NAME, &pebble.issuer_root_pem());

    let served = served_serial(&nginx, NAME, &new_serial);
    assert_eq!(
        served.to_der().unwrap(),
        new.to_der().unwrap(),
        "nginx serves the renewed leaf"
    );
    nginx.assert_healthy();
}

#[test]
fn renew_never_touches_records_missing_from_the_index() {
    let pki = Pki::new();
    let redis = Redis::start();
    let dir = TempDir::new("renew");
    // Due by any rule, but not in the index.
    let leaf = pki.leaf_with(
        &["hidden.acme.test"],
        7,
        LeafOpts {
            expires_in: Some(Duration::from_secs(600)),
            ..Default::default()
        },
    );
    put_leaf(&redis, dir.path(), "hidden.acme.test", &leaf, &[]);
    redis.cmd(&["ZREM", INDEX, "hidden.acme.test"]);
    let before = sorted_record(&redis, "hidden.acme.test");
    let monitor = redis.monitor();

    // No CA is reached: nothing is a candidate.
    let out = dyncert(
        &redis,
        &[
            "renew",
            "--acme-url",
            "https://127.0.0.1:1/dir",
            "--within",
            "100000d",
        ],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stdout.trim_end(),
        "renewed 0, not due 0, skipped 0, failed 0"
    );
    monitor.sync();
    let commands: Vec<String> = monitor.observed().iter().map(|o| o.command()).collect();
    assert_eq!(sorted_record(&redis, "hidden.acme.test"), before);
    assert!(
        commands.iter().any(|c| c == "ZRANGEBYSCORE"),
        "{commands:?}"
    );
    for never in ["SCAN", "KEYS", "HGETALL", "HSET", "DEL"] {
        assert!(
            !commands.iter().any(|c| c == never),
            "{never}: {commands:?}"
        );
    }
}

#[test]
fn renew_moves_due_records_of_another_ca_to_the_acme_ca_and_goes_on_past_failures() {
    let AcmeStack {
        nginx,
        pebble,
        redis,
        pki,
        dns: _dns,
    } = AcmeStack::start(&answer_and_serve());
    let dir = TempDir::new("renew");
    // 80 minutes of life, 20 left: in its last third, due by the default
    // rule (jitter only makes it due earlier).
    let legacy = "legacy.acme.test";
    let leaf = pki.leaf_with(
        &[legacy, "www.legacy.acme.test"],
        11,
        LeafOpts {
            expires_in: Some(Duration::from_secs(20 * 60)),
            ..Default::default()
        },
    );
    put_leaf(
        &redis,
        dir.path(),
        legacy,
        &leaf,
        &["--allow", "127.0.0.1/32"],
    );
    let wild = pki.leaf_with(
        &["*.wild.acme.test"],
        12,
        LeafOpts {
            expires_in: Some(Duration::from_secs(20 * 60)),
            ..Default::default()
        },
    );
    put_leaf(&redis, dir.path(), "*.wild.acme.test", &wild, &[]);
    // An index entry whose record has no readable certificate: it fails,
    // and the others still run.
    redis.cmd(&[
        "HSET",
        "dyncert:cert:broken.acme.test",
        "crt",
        "garbage",
        "key",
        "x",
    ]);
    redis.cmd(&["ZADD", INDEX, "0", "broken.acme.test"]);

    let out = renew(&redis, &pebble, &[]);
    assert_eq!(
        out.code,
        1,
        "{}{}\n{}",
        out.stdout,
        out.stderr,
        nginx.logs()
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert!(
        lines[0].starts_with("failed \"broken.acme.test\": no readable certificate"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "renewed \"{legacy}\": {legacy}, www.legacy.acme.test: notAfter"
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("skipped \"*.wild.acme.test\": wildcard")
            && out.stdout.contains("DNS-01"),
        "{}",
        out.stdout
    );
    assert_eq!(lines[3], "renewed 1, not due 0, skipped 1, failed 1");

    let new = stored_leaf(&redis, legacy);
    assert!(
        format!("{:?}", new.issuer_name()).contains("Pebble"),
        "issued by the ACME CA now: {:?}",
        new.issuer_name()
    );
    assert_eq!(
        dns_sans(&new),
        [legacy, "www.legacy.acme.test"],
        "the same names, the record's first"
    );
    assert_eq!(
        redis.record_field(legacy, "allow").as_deref(),
        Some("127.0.0.1/32"),
        "the policy fields are kept"
    );
    assert_eq!(zscore(&redis, legacy), Some(unix(new.not_after())));
    assert_eq!(
        redis.record_field("*.wild.acme.test", "crt").as_deref(),
        Some(wild.chain_pem.as_str()),
        "the skipped record is left as it was"
    );
    let served = served_serial(&nginx, legacy, &serial(&new));
    assert_eq!(served.to_der().unwrap(), new.to_der().unwrap());
}

#[test]
fn renew_fails_a_due_record_with_a_second_certificate_instead_of_dropping_it() {
    let pki = Pki::new();
    let redis = Redis::start();
    let dir = TempDir::new("renew-dual");
    let name = "dual.acme.test";
    let leaf = pki.leaf_with(
        &[name],
        8,
        LeafOpts {
            expires_in: Some(Duration::from_secs(600)),
            ..Default::default()
        },
    );
    put_leaf(&redis, dir.path(), name, &leaf, &[]);
    // Renew only looks at whether a second pair is there.
    let key = format!("dyncert:cert:{name}");
    redis.cmd(&["HSET", &key, "crt_rsa", &leaf.chain_pem]);
    let before = sorted_record(&redis, name);

    // Due (10 minutes left), yet no CA is asked: it would be unreachable.
    let out = dyncert(
        &redis,
        &[
            "renew",
            "--acme-url",
            "https://127.0.0.1:1/dir",
            "--within",
            "30d",
        ],
    );
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("second certificate (crt_rsa)") && all.contains(name),
        "{all}"
    );
    assert!(all.contains("failed 1"), "{all}");
    assert_eq!(
        sorted_record(&redis, name),
        before,
        "the record is left as it was"
    );
}

/// pebble validating HTTP-01 against the challenge stand-in (answers from
/// Redis, no nginx): enough for renew, which only orders and stores.
struct BareCa {
    pebble: Pebble,
    _dns: DnsStub,
    _standin: ChallengeStandin,
}

impl BareCa {
    fn start(redis: &Redis) -> BareCa {
        let standin = ChallengeStandin::start(redis.port);
        let dns = DnsStub::start();
        let pebble = Pebble::start(standin.port, &dns);
        BareCa {
            pebble,
            _dns: dns,
            _standin: standin,
        }
    }
}

/// What the renewal-policy tests start from: a PKI, a Redis, [`BareCa`]
/// and a temp dir named `tag`.
fn bare(tag: &str) -> (Pki, Redis, BareCa, TempDir) {
    let pki = Pki::new();
    let redis = Redis::start();
    let ca = BareCa::start(&redis);
    (pki, redis, ca, TempDir::new(tag))
}

#[test]
fn renew_skips_a_record_whose_key_is_held_by_an_hsm_and_renews_the_others() {
    let (pki, redis, ca, dir) = bare("renew-hsm");
    let plain = "plain.acme.test";
    put_leaf(&redis, dir.path(), plain, &pki.leaf(&[plain], 7), &[]);
    // As the README's HSM section writes such a record, then indexed.
    let hsm = "hsm.acme.test";
    let reference = "engine:pkcs11:pkcs11:token=dyncert;object=shop";
    let leaf = pki.leaf(&[hsm], 8);
    redis.cmd(&[
        "HSET",
        &format!("dyncert:cert:{hsm}"),
        "crt",
        &leaf.chain_pem,
        "key",
        reference,
    ]);
    let out = dyncert(&redis, &["index", "rebuild"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(zscore(&redis, hsm).is_some(), "indexed");
    let before = sorted_record(&redis, hsm);
    let plain_serial = serial(&stored_leaf(&redis, plain));

    let out = renew(&redis, &ca.pebble, &["--within", "100000d", "--no-jitter"]);
    let all = format!("{}{}\n{}", out.stdout, out.stderr, ca.pebble.log());
    assert_eq!(out.code, 0, "{all}");
    assert!(
        out.stdout.contains(&format!(
            "skipped \"{hsm}\": notAfter {}",
            dyncert_core::timefmt::rfc3339(unix(leaf.issued.cert.not_after()) as u64)
        )) && out.stdout.contains(
            "its key is held by an HSM (key reference in \"key\"); renew it with the HSM's tooling"
        ),
        "{all}"
    );
    assert!(
        out.stdout.contains(&format!("renewed \"{plain}\"")),
        "{all}"
    );
    assert!(
        out.stdout
            .contains("renewed 1, not due 0, skipped 1, failed 0"),
        "{all}"
    );
    assert_eq!(
        sorted_record(&redis, hsm),
        before,
        "the reference stays, and no software key takes its place"
    );
    assert_ne!(serial(&stored_leaf(&redis, plain)), plain_serial);
}

#[test]
fn renew_skips_the_modules_write_back_of_a_certificate_api_answer_and_keeps_its_ttl() {
    let (pki, redis, ca, dir) = bare("renew-writeback");
    let plain = "plain.acme.test";
    put_leaf(&redis, dir.path(), plain, &pki.leaf(&[plain], 7), &[]);
    // What the module's write-back does: the record, a TTL (writeback=24h)
    // and its index entry.
    let copy = "api.acme.test";
    let leaf = pki.leaf(&[copy], 8);
    let key = format!("dyncert:cert:{copy}");
    redis.cmd(&["HSET", &key, "crt", &leaf.chain_pem, "key", &leaf.key_pem]);
    redis.cmd(&["EXPIRE", &key, "86400"]);
    redis.cmd(&[
        "ZADD",
        INDEX,
        &unix(leaf.issued.cert.not_after()).to_string(),
        copy,
    ]);
    let before = sorted_record(&redis, copy);

    let out = renew(&redis, &ca.pebble, &["--within", "100000d", "--no-jitter"]);
    let all = format!("{}{}\n{}", out.stdout, out.stderr, ca.pebble.log());
    assert_eq!(out.code, 0, "{all}");
    assert!(
        out.stdout.contains(&format!(
            "skipped \"{copy}\": a copy of the certificate API's answer that expires in 23h 59m; \
             the API is its source"
        )) || out.stdout.contains(&format!(
            "skipped \"{copy}\": a copy of the certificate API's answer that expires in 24h 0m; \
             the API is its source"
        )),
        "{all}"
    );
    assert!(
        out.stdout
            .contains("renewed 1, not due 0, skipped 1, failed 0"),
        "{all}"
    );
    assert_eq!(
        sorted_record(&redis, copy),
        before,
        "the copy is left as it was"
    );
    let ttl = redis.ttl(copy);
    assert!(ttl > 86_000, "and still expires: TTL {ttl}");
}

/// A record with a value larger than a record may hold (a 4 MB
/// `client_ca` here) fails its renewal with a line naming the field, and
/// is not read whole: the bytes Redis sent stay far below its size. The
/// other records are renewed.
#[test]
fn renew_fails_a_record_with_an_oversized_field_without_reading_it() {
    let (pki, redis, ca, dir) = bare("renew-oversized");
    let plain = "plain.acme.test";
    put_leaf(&redis, dir.path(), plain, &pki.leaf(&[plain], 7), &[]);
    let big = "big.acme.test";
    put_leaf(&redis, dir.path(), big, &pki.leaf(&[big], 8), &[]);
    let size = 4_000_000;
    redis.cmd(&[
        "EVAL",
        "redis.call('HSET', KEYS[1], 'client_ca', string.rep('A', tonumber(ARGV[1])))",
        "1",
        &format!("dyncert:cert:{big}"),
        &size.to_string(),
    ]);
    let sent = |redis: &Redis| -> u64 {
        let Reply::Bulk(Some(info)) = redis.cmd(&["INFO", "stats"]) else {
            panic!("INFO")
        };
        String::from_utf8(info)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = sent(&redis);
    let out = renew(&redis, &ca.pebble, &["--within", "100000d", "--no-jitter"]);
    let output = sent(&redis) - before;
    let all = format!("{}{}\n{}", out.stdout, out.stderr, ca.pebble.log());
    assert!(
        output < 1_000_000,
        "Redis sent {output} bytes to renew: the oversized value was read\n{all}"
    );
    assert_eq!(out.code, 1, "{all}");
    assert!(
        out.stdout.contains(&format!(
            "failed \"{big}\": its field \"client_ca\" holds {size} bytes, over the 65536 it may \
             hold; not read"
        )),
        "{all}"
    );
    assert!(
        out.stdout.contains(&format!("renewed \"{plain}\"")),
        "{all}"
    );
    assert!(
        out.stdout
            .contains("renewed 1, not due 0, skipped 0, failed 1"),
        "{all}"
    );

    let out = dyncert(&redis, &["get", big]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr.contains(&format!(
            "\"{big}\": its field \"client_ca\" holds {size} bytes"
        )),
        "{}",
        out.stderr
    );
}

/// An RSA leaf (chain PEM) and its key (PKCS#8 PEM), signed by the test
/// PKI.
fn rsa_leaf(pki: &Pki, name: &str, serial: u64) -> (String, String) {
    let key = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let public =
        openssl::pkey::PKey::public_key_from_der(&key.public_key_to_der().unwrap()).unwrap();
    let (_, chain) = pki.leaf_for_public_key(&[name], serial, &public);
    (
        chain,
        String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
    )
}

fn key_id(redis: &Redis, name: &str) -> openssl::pkey::Id {
    stored_leaf(redis, name).public_key().unwrap().id()
}

/// Renewal keeps each record's key type: an RSA record (kept for clients
/// without ECDSA) is renewed as RSA and an ECDSA one as ECDSA, unless the
/// operator chooses one type for the run (--ecdsa here).
#[test]
fn renew_keeps_each_records_key_type_unless_one_is_chosen() {
    let (pki, redis, ca, dir) = bare("renew-key-type");
    let (rsa, ec) = ("rsa.acme.test", "ec.acme.test");
    let (chain, key) = rsa_leaf(&pki, rsa, 7);
    let out = put_pem(&redis, dir.path(), rsa, &chain, &key, &[]);
    assert_eq!(out.code, 0, "put {rsa}: {}", out.stderr);
    put_leaf(&redis, dir.path(), ec, &pki.leaf(&[ec], 8), &[]);
    assert_eq!(key_id(&redis, rsa), openssl::pkey::Id::RSA);
    assert_eq!(key_id(&redis, ec), openssl::pkey::Id::EC);

    let out = renew(&redis, &ca.pebble, &["--within", "100000d", "--no-jitter"]);
    let all = format!("{}{}\n{}", out.stdout, out.stderr, ca.pebble.log());
    assert_eq!(out.code, 0, "{all}");
    assert_eq!(key_id(&redis, rsa), openssl::pkey::Id::RSA, "{all}");
    assert_eq!(key_id(&redis, ec), openssl::pkey::Id::EC, "{all}");
    for (name, kind) in [(rsa, "RSA 2048"), (ec, "ECDSA P-256")] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("renewed \"{name}\"")))
            .unwrap_or_else(|| panic!("{all}"));
        assert!(
            line.contains(&format!(", {kind} key as before; ")),
            "{line}"
        );
    }

    // Chosen for the run: every record gets it, and the line says so.
    let out = renew(
        &redis,
        &ca.pebble,
        &["--within", "100000d", "--no-jitter", "--ecdsa"],
    );
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 0, "{all}");
    assert_eq!(key_id(&redis, rsa), openssl::pkey::Id::EC, "{all}");
    assert!(
        out.stdout.contains("ECDSA P-256 key (was RSA: --ecdsa); "),
        "{all}"
    );
}

/// A pass asks the CA for renewal windows (ARI) only for certificates
/// half through their lifetime or more: a young record is "not due"
/// without a request (the CA here never answers, so a request would show
/// as a connection and a timeout warning); an older one is asked about.
#[test]
fn renew_asks_ari_only_from_half_a_certificates_lifetime() {
    let pki = Pki::new();
    let redis = Redis::start();
    let ca = common_acme::SilentCa::start();
    let dir = TempDir::new("renew-ari-half");
    let young = "young.acme.test";
    put_leaf(&redis, dir.path(), young, &pki.leaf(&[young], 7), &[]);
    let args = [
        "renew",
        "--acme-url",
        &ca.url(),
        "--acme-timeout",
        "1s",
        "--no-jitter",
    ];
    let out = dyncert(&redis, &args);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 0, "{all}");
    assert!(
        out.stdout
            .contains("renewed 0, not due 1, skipped 0, failed 0"),
        "{all}"
    );
    assert_eq!(ca.accepted(), 0, "no request for a young record\n{all}");
    assert!(!all.contains("renewal information"), "{all}");

    // One hour old, 50 minutes left: past half its life, not yet due.
    let older = "older.acme.test";
    let leaf = pki.leaf_with(
        &[older],
        8,
        LeafOpts {
            expires_in: Some(Duration::from_secs(50 * 60)),
            ..Default::default()
        },
    );
    put_leaf(&redis, dir.path(), older, &leaf, &[]);
    let out = dyncert(&redis, &args);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("renewed 0, not due 2, skipped 0, failed 0"),
        "{all}"
    );
    assert!(ca.accepted() >= 1, "asked about the older record\n{all}");
    assert!(
        out.stderr
            .contains("renewal information: account: no answer from the CA"),
        "{all}"
    );
}
