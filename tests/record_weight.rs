//! A record's certificates are a tenant's input, and what they cost a
//! worker's memory must stay within what the operator allowed
//! (`dyncert_cache max=`/`max_size=`), and go when the record goes:
//!
//! - intermediates are shared between the records that send the same one,
//!   but only while a cached record uses them: a tenant sending a few
//!   hundred records of distinct intermediates used to pin them all in the
//!   worker for its life (audit T3: +140 MiB per worker from 600 records,
//!   still there after the records were deleted);
//! - `max_size` counts a certificate's parsed size (DER, plus what OpenSSL
//!   decodes its names into), not its DER, which a name-heavy certificate
//!   exceeds 6x;
//! - certificates no CA issues (an intermediate of over 8 KB or 100 names,
//!   a leaf of over 1,000 names) are refused, with their own reasons.
//!
//! One worker, RSS read from /proc.

use dyncert_testkit::conf::dyncert_server;
use dyncert_testkit::fixture::rss_kib;
use dyncert_testkit::pki::{ec_key, self_signed};
use dyncert_testkit::*;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use std::time::Duration;

fn pem(c: &X509) -> String {
    String::from_utf8(c.to_pem().unwrap()).unwrap()
}

fn key_pem(k: &PKey<Private>) -> String {
    String::from_utf8(k.private_key_to_pem_pkcs8().unwrap()).unwrap()
}

/// `n` names under `tag`, ~30 bytes each.
fn pad(tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("p{i:04}-{tag}.pad.example"))
        .collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// One worker with `cache` (a `dyncert_cache` line), its worker's pid and
/// the metrics port.
fn start(cache: &str) -> (Stack, u32, u16) {
    let (s, mport) = Stack::with_metrics(
        &format!(
            "    {cache}\n{}",
            dyncert_server("        root html;\n        location / { }\n")
        ),
        NginxOpts::new().workers(1),
    );
    s.nginx.write_index_pages(&[""]);
    let pid = *s.nginx.worker_pids().iter().next().unwrap();
    // A first record served, so that the baseline has the fetcher's
    // threads and buffers.
    let w = s.pki.leaf(&["warm.example"], 7100);
    s.redis.put_leaf("warm.example", &w);
    assert!(!s.get(Some("warm.example")).is_default());
    (s, pid, mport)
}

/// Handshakes once with each of `names`; how many got their own
/// certificate.
fn touch(s: &Stack, names: &[String]) -> usize {
    names
        .iter()
        .filter(|n| {
            Request::default()
                .sni(n)
                .https(s.nginx.port)
                .is_ok_and(|e| !e.is_default())
        })
        .count()
}

fn rejected(mport: u16, reason: &str) -> f64 {
    scrape_metrics(mport)
        .0
        .get(&format!(
            "dyncert_records_rejected_total{{reason=\"{reason}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
}

/// 200 records, each a leaf and 7 intermediates of its own (90 names,
/// ~3 KB DER each: within the bounds), through a hot set of 16 entries /
/// 256 KiB. Before: the interner kept all 1,400 intermediates, +24 MiB,
/// and kept them after the records were deleted. Now an intermediate goes
/// with the last cached record that sent it.
#[test]
fn distinct_intermediates_go_with_their_records() {
    let (s, pid, _) = start("dyncert_cache max=16 max_size=256k;");
    let ik = ec_key();
    let mut names = Vec::new();
    for i in 0..200 {
        let name = format!("r{i}.tenant.example");
        let k = ec_key();
        let mut crt = pem(&self_signed(&[&name], &k, -1, 30));
        for j in 0..7 {
            crt.push_str(&pem(&self_signed(
                &refs(&pad(&format!("{i}x{j}"), 90)),
                &ik,
                -1,
                30,
            )));
        }
        s.redis.hset_cert(&name, &crt, &key_pem(&k));
        names.push(name);
    }
    let before = rss_kib(pid);
    assert_eq!(touch(&s, &names), names.len(), "every record is served");
    let after = rss_kib(pid);
    eprintln!(
        "200 records of 7 distinct intermediates: worker RSS {before} -> {after} KiB (+{})",
        after - before
    );
    for n in &names {
        s.redis.cmd(&["DEL", &format!("dyncert:cert:{n}")]);
    }
    s.redis.publish("dyncert:invalidate", "*");
    std::thread::sleep(Duration::from_millis(300));
    let end = rss_kib(pid);
    eprintln!(
        "   after DEL + invalidate '*': {end} KiB (+{})",
        end - before
    );
    assert!(
        after - before < 8 * 1024,
        "intermediates of records no longer cached are kept: +{} KiB",
        after - before
    );
    assert!(end - before < 8 * 1024, "+{} KiB at the end", end - before);
}

/// 150 records whose leaf carries 900 names (27 KB DER, ~140 KiB parsed),
/// with `max_size=4m`. Before, each was charged its DER (+2 KiB): the
/// cache held ~140 of them, ~21 MiB. Now the cache's byte count is what
/// they hold, give or take the allocator.
#[test]
fn max_size_counts_what_certificates_hold() {
    let (s, pid, mport) = start("dyncert_cache max=10000 max_size=4m;");
    let mut names = Vec::new();
    for i in 0..150 {
        let name = format!("h{i}.tenant.example");
        let mut sans = vec![name.clone()];
        sans.extend(pad(&format!("h{i}"), 899));
        let k = ec_key();
        s.redis.hset_cert(
            &name,
            &pem(&self_signed(&refs(&sans), &k, -1, 30)),
            &key_pem(&k),
        );
        names.push(name);
    }
    let before = rss_kib(pid);
    assert_eq!(touch(&s, &names), names.len(), "every record is served");
    let after = rss_kib(pid);
    let counted = scrape_metrics(mport).sum("dyncert_cache_bytes") as i64 / 1024;
    eprintln!(
        "150 leaves of 900 names, max_size=4m: worker RSS {before} -> {after} KiB (+{}), \
         dyncert_cache_bytes {counted} KiB",
        after - before
    );
    assert!(counted <= 4096, "{counted} KiB counted");
    assert!(
        after - before < counted * 3 / 2 + 2048,
        "the cache holds +{} KiB while counting {counted} KiB",
        after - before
    );
}

/// Certificates no CA issues are refused with their own reasons; a leaf
/// of 100 names and an ordinary chain are served.
#[test]
fn absurd_certificates_are_refused() {
    let (s, _pid, mport) = start("dyncert_cache max=100;");
    let put = |name: &str, leaf_names: usize, chain: &[X509]| {
        let k = ec_key();
        let mut sans = vec![name.to_owned()];
        sans.extend(pad(name, leaf_names - 1));
        let mut crt = pem(&self_signed(&refs(&sans), &k, -1, 30));
        for c in chain {
            crt.push_str(&pem(c));
        }
        s.redis.hset_cert(name, &crt, &key_pem(&k));
    };
    let ik = ec_key();
    let named_int = self_signed(&refs(&pad("int", 101)), &ik, -1, 30);
    // The first name is the subject's CN, at most 64 characters.
    let long: Vec<String> = std::iter::once("big.int.example".to_owned())
        .chain((0..60).map(|i| format!("{i:03}-{}.example", "x".repeat(150))))
        .collect();
    let big_int = self_signed(&refs(&long), &ik, -1, 30);
    assert!(big_int.to_der().unwrap().len() > 8 * 1024);
    let plain_int = self_signed(&["int.example"], &ik, -1, 3650);

    put("names.example", 1001, &[]);
    put("named-int.example", 1, &[plain_int.clone(), named_int]);
    put("big-int.example", 1, &[big_int]);
    put("hundred.example", 100, std::slice::from_ref(&plain_int));
    put("thousand.example", 1000, &[plain_int]);

    for n in ["names.example", "named-int.example", "big-int.example"] {
        assert!(s.get(Some(n)).is_default(), "{n} must be refused");
    }
    for n in ["hundred.example", "thousand.example"] {
        assert!(!s.get(Some(n)).is_default(), "{n} must be served");
    }
    assert_eq!(rejected(mport, "too_many_names"), 1.0);
    assert_eq!(rejected(mport, "chain_too_heavy"), 2.0);
    let log = s.nginx.error_log();
    assert!(
        log.contains("more than 1000 subjectAltNames") && log.contains("names.example"),
        "{log}"
    );
}
