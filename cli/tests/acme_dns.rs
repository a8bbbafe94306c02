//! `dyncert issue --dns-01 --dns-hook` and `renew --dns-hook` end to end:
//! the real ACME test CA (`pebble`) validates DNS-01 by asking
//! `pebble-challtestsrv` for the TXT record, which a hook script (lego's
//! exec interface) sets and clears through challtestsrv's management API;
//! the wildcard certificate is stored as `put` stores it and a real nginx
//! serves it for a name below it. Also: a failing hook, wildcards without
//! DNS-01, external account binding (pebble requiring EAB), and what
//! `renew` does with pebble's directory, which has no ARI.

#[allow(dead_code)]
mod common_acme;

use std::time::Duration;

use common_acme::harness::{assert_chain_verifies, assert_pebble_issued, pending_challenges};
use common_acme::{
    acme, dyncert, dyncert_at, dyncert_bounded, keys, serial, served_serial, stored_leaf,
    DnsHookScript, DnsStack, Present,
};
use dyncert_testkit::*;

const WILDCARD: &str = "*.tenant.test";
const BELOW: &str = "a.tenant.test";
const FQDN: &str = "_acme-challenge.tenant.test.";
/// pebble's example EAB key (docs/pebble-config-external-account-bindings.json).
const EAB_KID: &str = "kid-1";
const EAB_KEY: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";

fn hook_args(hook: &DnsHookScript) -> [String; 3] {
    [
        "--dns-01".to_owned(),
        "--dns-hook".to_owned(),
        hook.path.to_str().unwrap().to_owned(),
    ]
}

fn issue_dns(
    stack: &DnsStack,
    hook: &DnsHookScript,
    name: &str,
    extra: &[&str],
) -> common_acme::Out {
    let h = hook_args(hook);
    let mut args = vec!["issue", name, &h[0], &h[1], &h[2]];
    args.extend_from_slice(extra);
    acme(&stack.redis, &stack.pebble, &args)
}

/// Asserts the hook was called present then cleanup, for `FQDN`, with
/// one digest; returns it.
fn assert_present_then_cleanup(calls: &[Vec<String>]) -> String {
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0][0], "present", "{calls:?}");
    assert_eq!(calls[1][0], "cleanup", "{calls:?}");
    assert_eq!(calls[0][1..], calls[1][1..], "same FQDN and value");
    assert_eq!(calls[0][1], FQDN);
    let value = calls[0][2].clone();
    // base64url of a SHA-256 digest, unpadded.
    assert_eq!(value.len(), 43, "{value}");
    assert!(
        value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{value}"
    );
    value
}

#[test]
fn issue_gets_a_wildcard_over_dns01_through_the_hook_and_nginx_serves_it_below() {
    let stack = DnsStack::start(None);
    let hook = DnsHookScript::new(&stack.chall, Present::Sets);

    let out = issue_dns(&stack, &hook, WILDCARD, &[]);
    out.assert_ok(&stack.pebble.log());
    assert!(
        out.stdout
            .contains(&format!("issued and stored \"{WILDCARD}\"")),
        "{}",
        out.stdout
    );
    assert_present_then_cleanup(&hook.calls());
    assert_eq!(
        pending_challenges(stack.redis.port),
        Vec::<String>::new(),
        "no HTTP-01 answer written"
    );

    // Stored under the wildcard's own name, as put stores it.
    let crt = stack.redis.record_field(WILDCARD, "crt").expect("crt");
    let key = stack.redis.record_field(WILDCARD, "key").expect("key");
    assert!(stack.redis.record_field(WILDCARD, "crt_der").is_some());
    let root_pem = stack.pebble.issuer_root_pem();
    let chain = assert_pebble_issued(&crt, &key, WILDCARD, &root_pem);

    // nginx serves it for a name below the wildcard.
    let r = Request::get("/")
        .sni(BELOW)
        .https(stack.nginx.port)
        .unwrap_or_else(|e| panic!("TLS {BELOW}: {e}\n{}", stack.nginx.logs()));
    assert_eq!(r.status, 200, "body {:?}", r.body);
    assert_eq!(
        r.tls().chain[0].to_der().unwrap(),
        chain[0].to_der().unwrap(),
        "nginx served another leaf"
    );
    assert_eq!(r.tls().leaf_sans, [WILDCARD]);
    let root = openssl::x509::X509::from_pem(root_pem.as_bytes()).unwrap();
    assert_chain_verifies(&r.tls().chain, &root);
}

#[test]
fn a_failing_present_hook_abandons_the_order_in_one_line_and_still_cleans_up() {
    let stack = DnsStack::start(None);
    let hook = DnsHookScript::new(&stack.chall, Present::Fails);

    let out = issue_dns(&stack, &hook, WILDCARD, &[]);
    let line = out.one_line_failure();
    assert_eq!(
        line,
        format!(
            "dyncert: issue \"{WILDCARD}\": DNS hook present for \"{WILDCARD}\": exit status 1: zone for {FQDN} not found"
        )
    );
    assert_present_then_cleanup(&hook.calls());
    assert!(stack.redis.record(WILDCARD).is_empty(), "nothing stored");
}

#[test]
fn a_hook_past_its_timeout_is_killed_and_cleanup_still_runs() {
    let stack = DnsStack::start(None);
    let hook = DnsHookScript::new(&stack.chall, Present::Sets);
    // A hook that hangs on present: a wrapper around the working one.
    let dir = TempDir::new("slow-hook");
    let slow = dir.path().join("slow.sh");
    write_file(
        &slow,
        format!(
            "#!/bin/sh\n[ \"$1\" = present ] && sleep 30\nexec '{}' \"$@\"\n",
            hook.path.display()
        ),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let started = std::time::Instant::now();
    let out = acme(
        &stack.redis,
        &stack.pebble,
        &[
            "issue",
            WILDCARD,
            "--dns-hook",
            slow.to_str().unwrap(),
            "--dns-hook-timeout",
            "1s",
        ],
    );
    assert_eq!(out.code, 1, "stdout {}\nstderr {}", out.stdout, out.stderr);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "killed at its timeout, not waited for: {:?}",
        started.elapsed()
    );
    assert!(
        out.stderr
            .contains("DNS hook present for \"*.tenant.test\": no exit within 1 s (killed)"),
        "{}",
        out.stderr
    );
    // Only cleanup reached the inner hook: present was killed in its sleep.
    let calls = hook.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0][..2], ["cleanup", FQDN]);
}

#[test]
fn wildcards_are_refused_without_dns01_and_dns01_needs_a_hook() {
    let redis = Redis::start();
    let out = dyncert(
        &redis,
        &[
            "issue",
            "*.acme.test",
            "--acme-url",
            "https://127.0.0.1:1/dir",
        ],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(
        out.stderr.trim_end(),
        "dyncert: cannot issue \"*.acme.test\": a wildcard needs the DNS-01 challenge (--dns-01 --dns-hook CMD)"
    );
    let out = dyncert(
        &redis,
        &[
            "issue",
            "*.acme.test",
            "--dns-01",
            "--acme-url",
            "https://127.0.0.1:1/dir",
        ],
    );
    assert_eq!(out.code, 2, "a usage error: {}", out.stderr);
    assert!(out.stderr.contains("--dns-hook"), "{}", out.stderr);
}

#[test]
fn renew_reissues_a_wildcard_record_over_dns01_with_the_hook() {
    let stack = DnsStack::start(None);
    let hook = DnsHookScript::new(&stack.chall, Present::Sets);
    let out = issue_dns(&stack, &hook, WILDCARD, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let old_serial = serial(&stored_leaf(&stack.redis, WILDCARD));

    // pebble 2.4's directory has no renewalInfo: the lifetime rule decides
    // and no order says what it replaces.
    let (status, dir) = stack.pebble.https_get(stack.pebble.port, "/dir").unwrap();
    assert_eq!(status, 200);
    assert!(!dir.contains("renewalInfo"), "{dir}");

    // Without the hook the wildcard is skipped, as before.
    let out = acme(
        &stack.redis,
        &stack.pebble,
        &["renew", "--within", "100000d", "--no-jitter"],
    );
    assert!(
        out.stdout
            .contains(&format!("skipped \"{WILDCARD}\": wildcard")),
        "{}",
        out.stdout
    );

    let h = hook_args(&hook);
    let out = acme(
        &stack.redis,
        &stack.pebble,
        &["renew", "--within", "100000d", "--no-jitter", &h[1], &h[2]],
    );
    out.assert_ok(&stack.pebble.log());
    assert!(
        out.stdout
            .contains(&format!("renewed \"{WILDCARD}\": {WILDCARD}: notAfter")),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("renewal window from the CA") && !out.stdout.contains("ARI"),
        "{}",
        out.stdout
    );
    let new = stored_leaf(&stack.redis, WILDCARD);
    let new_serial = serial(&new);
    assert_ne!(new_serial, old_serial, "a new certificate is stored");
    let calls = hook.calls();
    assert_eq!(calls.len(), 4, "issue's two calls, then renew's: {calls:?}");
    assert_present_then_cleanup(&calls[2..]);
    let served = served_serial(&stack.nginx, BELOW, &new_serial);
    assert_eq!(served.to_der().unwrap(), new.to_der().unwrap());
}

#[test]
fn renew_keeps_a_record_the_operator_changed_while_its_certificate_was_ordered() {
    let stack = DnsStack::start(None);
    let hook = DnsHookScript::new(&stack.chall, Present::Sets);
    let out = issue_dns(&stack, &hook, WILDCARD, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let old_serial = serial(&stored_leaf(&stack.redis, WILDCARD));

    // Midway through the renewal's order (its DNS-01 present step), the
    // operator tightens the record's allowlist.
    let key = format!("dyncert:cert:{WILDCARD}");
    let busy = DnsHookScript::with_extra(
        &stack.chall,
        Present::Sets,
        &format!(
            "[ \"$1\" = present ] && redis-cli -p {} HSET '{key}' allow 10.0.0.0/8 >/dev/null",
            stack.redis.port
        ),
    );
    let h = hook_args(&busy);
    let renew = ["renew", "--within", "100000d", "--no-jitter", &h[1], &h[2]];
    let out = acme(&stack.redis, &stack.pebble, &renew);
    assert!(
        out.stdout.contains(&format!(
            "skipped \"{WILDCARD}\": the record changed while the certificate was ordered"
        )),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(busy.calls().len(), 2, "the order ran: {:?}", busy.calls());
    // The operator's record stands: its allowlist and its certificate.
    assert_eq!(
        stack.redis.record_field(WILDCARD, "allow").as_deref(),
        Some("10.0.0.0/8")
    );
    assert_eq!(serial(&stored_leaf(&stack.redis, WILDCARD)), old_serial);

    // The next renewal, with nothing changing under it, renews and keeps
    // the allowlist.
    let h = hook_args(&hook);
    let renew = ["renew", "--within", "100000d", "--no-jitter", &h[1], &h[2]];
    let out = acme(&stack.redis, &stack.pebble, &renew);
    out.assert_ok(&stack.pebble.log());
    assert!(
        out.stdout.contains(&format!("renewed \"{WILDCARD}\"")),
        "{}",
        out.stdout
    );
    assert_ne!(serial(&stored_leaf(&stack.redis, WILDCARD)), old_serial);
    assert_eq!(
        stack.redis.record_field(WILDCARD, "allow").as_deref(),
        Some("10.0.0.0/8")
    );
}

/// The order lock outlives a slow order: with a 2 s lock, a `present`
/// that takes 4 s still finds the lock held (extended meanwhile), and the
/// certificate is stored and the lock released.
#[test]
fn the_order_lock_is_extended_while_a_slow_hook_runs() {
    let stack = DnsStack::start(None);
    let lock = format!("dyncert:order-lock:{WILDCARD}");
    let seen = TempDir::new("lock-seen");
    let seen_file = seen.path().join("lock");
    let slow = DnsHookScript::with_extra(
        &stack.chall,
        Present::Sets,
        &format!(
            "[ \"$1\" = present ] && {{ sleep 4; redis-cli -p {} GET '{lock}' > '{}'; }}",
            stack.redis.port,
            seen_file.display()
        ),
    );
    let out = issue_dns(&stack, &slow, WILDCARD, &["--order-lock-ttl", "2s"]);
    out.assert_ok(&stack.pebble.log());
    let token = std::fs::read_to_string(&seen_file).expect("the hook ran");
    assert_eq!(token.trim().len(), 24, "still held after 4 s: {token:?}");
    assert!(stack.redis.record_field(WILDCARD, "crt").is_some());
    assert_eq!(
        stack.redis.cmd(&["EXISTS", &lock]),
        Reply::Int(0),
        "released"
    );
}

/// An order whose lock passed to another process while it ran (the lock
/// expired, say, while the process was stalled, and another issuer took
/// the name) stops before it finalizes: nothing is stored over what the
/// new holder orders, and the new holder's lock is left alone.
#[test]
fn an_order_that_lost_its_lock_midway_finalizes_and_stores_nothing() {
    let stack = DnsStack::start(None);
    let lock = format!("dyncert:order-lock:{WILDCARD}");
    let taken = DnsHookScript::with_extra(
        &stack.chall,
        Present::Sets,
        &format!(
            "[ \"$1\" = present ] && redis-cli -p {} SET '{lock}' another-issuer >/dev/null",
            stack.redis.port
        ),
    );
    let out = issue_dns(&stack, &taken, WILDCARD, &[]);
    assert_eq!(
        out.one_line_failure(),
        format!(
            "dyncert: issue \"{WILDCARD}\": an order for it is in flight elsewhere: the order \
             lock ({lock}) passed to another process during this order, so it stops before \
             finalize"
        )
    );
    assert_present_then_cleanup(&taken.calls());
    assert!(stack.redis.record(WILDCARD).is_empty(), "nothing stored");
    assert_eq!(
        stack.redis.cmd(&["GET", &lock]),
        Reply::Bulk(Some(b"another-issuer".to_vec()))
    );
}

/// The hook runs with dyncert's environment less dyncert's own variables:
/// a provider's token gets through, the Redis URL (and its password) and
/// the EAB key, which dyncert itself used, do not.
#[test]
fn the_dns_hook_gets_the_environment_without_dyncerts_secrets() {
    let stack = DnsStack::start(Some((EAB_KID, EAB_KEY)));
    let seen = TempDir::new("hook-env");
    let env_file = seen.path().join("env");
    let hook = DnsHookScript::with_extra(
        &stack.chall,
        Present::Sets,
        &format!("[ \"$1\" = present ] && env > '{}'", env_file.display()),
    );
    let (url, ca) = (stack.pebble.directory_url(), stack.pebble.ca_file());
    let h = hook_args(&hook);
    let (out, _) = dyncert_bounded(
        &stack.redis,
        &[
            ("DYNCERT_REDIS", "redis://:hunter2@127.0.0.1:1/0"),
            ("DYNCERT_EAB_KID", EAB_KID),
            ("DYNCERT_EAB_HMAC_KEY", EAB_KEY),
            ("DYNCERT_ACME_TIMEOUT", "20s"),
            ("CF_API_TOKEN", "provider-token"),
        ],
        &[
            "issue",
            WILDCARD,
            &h[0],
            &h[1],
            &h[2],
            "--acme-url",
            &url,
            "--acme-ca",
            ca.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    out.assert_ok(&stack.pebble.log());
    let env = std::fs::read_to_string(&env_file).expect("the hook ran");
    assert!(
        env.lines().any(|l| l == "CF_API_TOKEN=provider-token"),
        "{env}"
    );
    assert!(!env.contains("hunter2") && !env.contains(EAB_KEY), "{env}");
    // dyncert's own variables are gone; others (a test harness's
    // DYNCERT_REQUIRE_* among them) are not dyncert's to remove.
    for var in [
        "DYNCERT_REDIS",
        "DYNCERT_EAB_KID",
        "DYNCERT_EAB_HMAC_KEY",
        "DYNCERT_ACME_TIMEOUT",
    ] {
        assert!(
            !env.lines().any(|l| l.starts_with(&format!("{var}="))),
            "{var} reached the hook:\n{env}"
        );
    }
}

#[test]
fn a_ca_requiring_eab_refuses_an_unbound_account_and_accepts_a_bound_one() {
    let stack = DnsStack::start(Some((EAB_KID, EAB_KEY)));
    let hook = DnsHookScript::new(&stack.chall, Present::Sets);

    let out = issue_dns(&stack, &hook, WILDCARD, &[]);
    let line = out.one_line_failure();
    assert!(
        line.starts_with(&format!("dyncert: issue \"{WILDCARD}\": account: "))
            && line.contains("externalAccountRequired"),
        "{line}"
    );
    assert!(hook.calls().is_empty(), "no order without an account");
    assert!(keys(&stack.redis, "dyncert:acme-account:*").is_empty());

    // A wrong MAC key is refused by the CA.
    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let out = issue_dns(
        &stack,
        &hook,
        WILDCARD,
        &["--eab-kid", EAB_KID, "--eab-hmac-key", wrong],
    );
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("account: "), "{}", out.stderr);

    let out = issue_dns(
        &stack,
        &hook,
        WILDCARD,
        &["--eab-kid", EAB_KID, "--eab-hmac-key", EAB_KEY],
    );
    out.assert_ok(&stack.pebble.log());
    assert_eq!(keys(&stack.redis, "dyncert:acme-account:*").len(), 1);
    assert!(stack.redis.record_field(WILDCARD, "crt").is_some());

    // Bad arguments are refused before any CA is reached.
    let out = issue_dns(
        &stack,
        &hook,
        WILDCARD,
        &["--eab-kid", EAB_KID, "--eab-hmac-key", "not base64!"],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(
        out.stderr.trim_end(),
        "dyncert: --eab-hmac-key: not base64url (A-Z a-z 0-9 - _)"
    );
    let out = issue_dns(&stack, &hook, WILDCARD, &["--eab-kid", EAB_KID]);
    assert_eq!(out.code, 2, "--eab-kid alone: {}", out.stderr);
}

#[test]
fn a_name_and_its_wildcard_get_two_values_on_one_txt_name_told_after_the_wait() {
    let stack = DnsStack::start(None);
    let hook = DnsHookScript::new(&stack.chall, Present::Sets);
    let started = std::time::Instant::now();
    let out = issue_dns(
        &stack,
        &hook,
        "tenant.test",
        &[WILDCARD, "--dns-propagation-wait", "2s"],
    );
    out.assert_ok(&stack.pebble.log());
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(2),
        "the propagation wait was slept"
    );
    let calls = hook.calls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    let actions: Vec<&str> = calls.iter().map(|c| c[0].as_str()).collect();
    assert_eq!(actions, ["present", "present", "cleanup", "cleanup"]);
    assert!(calls.iter().all(|c| c[1] == FQDN), "{calls:?}");
    assert_ne!(calls[0][2], calls[1][2], "one value per authorization");
    assert_eq!(calls[0][1..], calls[2][1..]);
    assert_eq!(calls[1][1..], calls[3][1..]);

    let leaf = stored_leaf(&stack.redis, "tenant.test");
    let sans: Vec<String> = leaf
        .subject_alt_names()
        .unwrap()
        .iter()
        .filter_map(|n| n.dnsname().map(str::to_owned))
        .collect();
    assert_eq!(sans.len(), 2, "{sans:?}");
    assert!(sans.iter().any(|s| s == WILDCARD) && sans.iter().any(|s| s == "tenant.test"));
}

#[test]
fn a_record_set_late_fails_validation_unless_the_propagation_wait_covers_it() {
    let stack = DnsStack::start(None);
    let hook = DnsHookScript::new(&stack.chall, Present::SetsLate);

    // pebble validates the moment it is told: the record is not there yet.
    let out = issue_dns(&stack, &hook, WILDCARD, &[]);
    let line = out.one_line_failure();
    assert!(
        line.starts_with(&format!("dyncert: issue \"{WILDCARD}\": validation: "))
            && line.contains("No TXT records"),
        "the CA's words: {line}"
    );
    assert!(stack.redis.record(WILDCARD).is_empty());

    // Told after the wait, it finds the record.
    let out = issue_dns(&stack, &hook, WILDCARD, &["--dns-propagation-wait", "3s"]);
    out.assert_ok(&stack.pebble.log());
    assert!(stack.redis.record_field(WILDCARD, "crt").is_some());
    let actions: Vec<String> = hook.calls().into_iter().map(|c| c[0].clone()).collect();
    assert_eq!(actions, ["present", "cleanup", "present", "cleanup"]);
}

#[test]
fn bad_dns01_and_eab_arguments_are_refused_before_redis_is_reached() {
    // Nothing listens there: an answer about Redis would mean it was tried.
    let nowhere = format!("redis://127.0.0.1:{}", free_port());
    let url = "https://127.0.0.1:1/dir";
    let cases: [(&[&str], i32, &str); 5] = [
        (
            &[
                "issue",
                "a.test",
                "--dns-hook",
                "/bin/true",
                "--dns-hook-timeout",
                "0s",
            ],
            2,
            "under the minimum of 1s",
        ),
        (
            &[
                "issue",
                "a.test",
                "--dns-hook",
                "/bin/true",
                "--dns-propagation-wait",
                "2h",
            ],
            2,
            "over the limit of 1h",
        ),
        (
            &[
                "issue",
                "a.test",
                "--eab-kid",
                "k",
                "--eab-hmac-key",
                "a+b/",
            ],
            1,
            "dyncert: --eab-hmac-key: not base64url",
        ),
        (
            &["renew", "--eab-kid", "a kid", "--eab-hmac-key", "AAAA"],
            1,
            "dyncert: --eab-kid: expected 1 to 256 printable ASCII characters",
        ),
        (&["issue", "*.a.test"], 1, "needs the DNS-01 challenge"),
    ];
    for (args, code, says) in cases {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--acme-url", url]);
        let out = dyncert_at(&nowhere, &all);
        assert_eq!(out.code, code, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
        assert!(!out.stderr.contains("Redis"), "{args:?}: {}", out.stderr);
    }
}
