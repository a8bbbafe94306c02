//! Production Redis deployments: `rediss://` with an ACL user, the
//! server's certificate verified (host name included) against
//! `dyncert_redis_tls_trusted_certificate`, a client certificate from
//! `dyncert_redis_tls_certificate`; `sentinel://` following a failover
//! (fetches and the invalidation channel) and reading from a replica while
//! the primary is down; `cluster://` with records on different slots, the
//! API write-back and invalidations. Connection failures fail closed, are
//! counted and logged with the node's address, never with the password.

use dyncert_testkit::*;
use std::time::Duration;

const CHANNEL: &str = "dyncert:invalidate";
const DEADLINE: Duration = Duration::from_secs(10);

/// `@TLS@` holds the `dyncert_redis_tls_*` lines of a test.
fn http() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;",
        "    @TLS@",
        "    dyncert_cache max=1000 valid=1h stale=1h negative=1s;",
        r#"    server {
        listen 127.0.0.1:@MPORT@;
        dyncert_acme_challenge on;
        location = /metrics { dyncert_metrics; }
    }"#,
        &source_server(" name=$dyncert_name"),
    ])
}

fn start(pki: &Pki, url: &str, tls: &str, workers: u32) -> (Nginx, u16) {
    let mport = free_port();
    let nginx = Nginx::start(
        pki,
        &http(),
        NginxOpts::new()
            .workers(workers)
            .var("REDIS", url)
            .var("TLS", tls)
            .var("MPORT", mport),
    );
    (nginx, mport)
}

fn ca_line(tls: &TlsRedis) -> String {
    format!(
        "dyncert_redis_tls_trusted_certificate {};",
        tls.ca_file.display()
    )
}

/// A TLS Redis with the ACL user `app` holding `shop.example.com`'s leaf
/// `serial`, and an nginx logging in to it as `app` with `password`.
fn acl_redis_and_nginx(pki: &Pki, serial: u64, password: &str) -> (TlsRedis, Leaf, Nginx, u16) {
    let redis = TlsRedis::start(pki, TlsRedisOpts::user("app", "Acl-pw-7f3a"));
    let leaf = pki.leaf(&["shop.example.com"], serial);
    redis.redis.put_leaf("shop.example.com", &leaf);
    let (nginx, mport) = start(
        pki,
        &redis.url(Some(&format!("app:{password}"))),
        &ca_line(&redis),
        1,
    );
    (redis, leaf, nginx, mport)
}

#[test]
fn rediss_with_an_acl_user_serves_the_redis_record() {
    let pki = Pki::new();
    let (_redis, leaf, nginx, _) = acl_redis_and_nginx(&pki, 2001, "Acl-pw-7f3a");
    let r = nginx.get_sni("shop.example.com");
    r.assert_served(&leaf, &pki);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
}

#[test]
fn wrong_acl_password_fails_closed_is_counted_and_never_logged() {
    let pki = Pki::new();
    let (_redis, _leaf, nginx, mport) = acl_redis_and_nginx(&pki, 2002, "Wrong-pw-91c2");
    nginx.get_sni("shop.example.com").assert_default();
    let line = nginx
        .wait_for_log_line(DEADLINE, |l| l.contains("while connecting to redis node"))
        .unwrap_or_else(|| panic!("no connection failure logged:\n{}", nginx.error_log()));
    assert!(line.contains("\"localhost:"), "{line}");
    assert!(scrape_metrics(mport).get("dyncert_redis_connect_errors_total") >= 1.0);
    let log = nginx.error_log();
    assert!(
        !log.contains("Wrong-pw-91c2"),
        "password in the log:\n{log}"
    );
}

#[test]
fn redis_certificate_for_another_host_is_refused() {
    let pki = Pki::new();
    // Signed by the trusted CA, but not for "localhost".
    let redis = TlsRedis::start(
        &pki,
        TlsRedisOpts {
            sans: &["other.example.net"],
            ..TlsRedisOpts::default()
        },
    );
    let leaf = pki.leaf(&["shop.example.com"], 2003);
    redis.redis.put_leaf("shop.example.com", &leaf);
    let (nginx, mport) = start(&pki, &redis.url(None), &ca_line(&redis), 1);
    nginx.get_sni("shop.example.com").assert_default();
    let line = nginx
        .wait_for_log_line(DEADLINE, |l| l.contains("while connecting to redis node"))
        .unwrap_or_else(|| panic!("no connection failure logged:\n{}", nginx.error_log()));
    assert!(
        line.contains(&format!("localhost:{}", redis.tls_port)),
        "{line}"
    );
    assert!(scrape_metrics(mport).get("dyncert_redis_connect_errors_total") >= 1.0);
}

#[test]
fn client_certificate_is_presented_when_redis_requires_one() {
    let pki = Pki::new();
    let redis = TlsRedis::start(
        &pki,
        TlsRedisOpts {
            auth_clients: "yes",
            ..TlsRedisOpts::default()
        },
    );
    let leaf = pki.leaf(&["mtls.example.com"], 2004);
    redis.redis.put_leaf("mtls.example.com", &leaf);
    let tls = format!(
        "{}\n    dyncert_redis_tls_certificate {} {};",
        ca_line(&redis),
        redis.client_cert_file.display(),
        redis.client_key_file.display()
    );
    let (nginx, _) = start(&pki, &redis.url(None), &tls, 1);
    let r = nginx.get_sni("mtls.example.com");
    r.assert_served(&leaf, &pki);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
}

#[test]
fn nginx_t_refuses_unreadable_or_misplaced_redis_tls_files() {
    let pki = Pki::new();
    let t = |url: &str, tls: &str| {
        Nginx::config_test(
            &pki,
            &http(),
            NginxOpts::new()
                .var("REDIS", url)
                .var("TLS", tls)
                .var("MPORT", free_port()),
        )
    };
    let missing = "dyncert_redis_tls_trusted_certificate /nonexistent/redis-ca.pem;";
    let c = t("rediss://localhost:6380/0", missing);
    assert!(!c.ok, "{}", c.output);
    assert!(
        c.output
            .contains("cannot read \"/nonexistent/redis-ca.pem\""),
        "{}",
        c.output
    );
    let dir = TempDir::new("redis-ca");
    let ca = dir.path().join("ca.pem");
    write_file(&ca, &pki.root.cert_pem);
    let ca_line = format!("dyncert_redis_tls_trusted_certificate {};", ca.display());
    let c = t("redis://u:Secret-pw-1@localhost:6379/0", &ca_line);
    assert!(!c.ok, "{}", c.output);
    assert!(
        c.output.contains("is not a \"rediss://\" URL"),
        "{}",
        c.output
    );
    assert!(!c.output.contains("Secret-pw-1"), "{}", c.output);
    let c = t("cluster://u:Secret-pw-1@n1:7000/3", "");
    assert!(!c.ok, "{}", c.output);
    assert!(!c.output.contains("Secret-pw-1"), "{}", c.output);
    assert!(t("rediss://localhost:6380/0", &ca_line).ok);
    assert!(t("sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0", "").ok);
    assert!(t("cluster://127.0.0.1:7000,127.0.0.1:7001", "").ok);
}

#[test]
fn sentinel_failover_is_followed_by_fetches_and_the_invalidation_channel() {
    let pki = Pki::new();
    let mut sentinel = RedisSentinel::start();
    let before = pki.leaf(&["before.example.com"], 2101);
    sentinel.primary.put_leaf("before.example.com", &before);
    let (nginx, mport) = start(&pki, &sentinel.url(None), "", 1);
    let r = nginx.get_sni("before.example.com");
    r.assert_served(&before, &pki);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
    assert!(
        sentinel.primary.wait_subscribers(CHANNEL, 1, DEADLINE),
        "not subscribed on the primary"
    );

    sentinel.failover();
    // A new name, written on the new primary, is fetched from it.
    let after = pki.leaf(&["after.example.com"], 2102);
    sentinel.primary.put_leaf("after.example.com", &after);
    nginx.wait_served(&pki, "after.example.com", &after, DEADLINE);
    // The subscription moved to the new primary: a renewal published
    // there reaches the worker.
    assert!(
        sentinel.primary.wait_subscribers(CHANNEL, 1, DEADLINE),
        "not subscribed again on the new primary:\n{}",
        tail(&nginx.error_log(), 30)
    );
    let renewed = pki.leaf(&["before.example.com"], 2103);
    sentinel.primary.put_leaf("before.example.com", &renewed);
    assert!(sentinel.primary.publish(CHANNEL, "before.example.com") >= 1);
    nginx.wait_served(&pki, "before.example.com", &renewed, DEADLINE);
    let m = scrape_metrics(mport);
    assert!(m.get("dyncert_redis_resubscribes_total") >= 1.0);
}

#[test]
fn sentinel_reads_go_to_a_replica_while_the_primary_is_down() {
    let pki = Pki::new();
    let mut sentinel = RedisSentinel::start();
    let leaf = pki.leaf(&["replica.example.com"], 2201);
    sentinel.primary.put_leaf("replica.example.com", &leaf);
    // Replicated before the primary goes.
    sentinel.primary.cmd(&["WAIT", "1", "2000"]);
    let (nginx, mport) = start(&pki, &sentinel.url(None), "", 1);
    sentinel.primary.stop();
    let r = nginx.wait_served(&pki, "replica.example.com", &leaf, DEADLINE);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
    let m = scrape_metrics(mport);
    assert!(m.get("dyncert_redis_connect_errors_total") >= 1.0);
    // Unless the sentinels were quicker and promoted the replica first.
    if sentinel.primary_port(0) != Some(sentinel.replica.port) {
        assert!(m.get("dyncert_redis_replica_reads_total") >= 1.0);
    }
}

/// Names whose records live on different nodes of `cluster`.
fn names_on_every_node(cluster: &RedisCluster) -> Vec<String> {
    let mut found = Vec::new();
    let mut owners = std::collections::BTreeSet::new();
    for i in 0..200 {
        let name = format!("n{i}.example.com");
        if owners.insert(cluster.owner(&format!("{DEFAULT_PREFIX}{name}"))) {
            found.push(name);
        }
        if owners.len() == cluster.nodes.len() {
            break;
        }
    }
    assert_eq!(owners.len(), cluster.nodes.len(), "no name on some node");
    found
}

#[test]
fn cluster_serves_records_acme_answers_and_invalidations_from_every_node() {
    let pki = Pki::new();
    let cluster = RedisCluster::start();
    let names = names_on_every_node(&cluster);
    let leaves: Vec<Leaf> = names
        .iter()
        .zip(2301..)
        .map(|(n, serial)| pki.leaf(&[n.as_str()], serial))
        .collect();
    for (n, l) in names.iter().zip(&leaves) {
        cluster.put_leaf(n, l);
    }
    let (nginx, mport) = start(&pki, &cluster.url(), "", 1);
    for (n, l) in names.iter().zip(&leaves) {
        let r = nginx.get_sni(n);
        r.assert_served(l, &pki);
        assert_eq!(r.source(), "redis", "body {:?}", r.body);
    }
    // An ACME answer on another shard than the first record.
    let record_owner = cluster.owner(&format!("{DEFAULT_PREFIX}{}", names[0]));
    let token = (0..100)
        .map(|i| format!("tok{i}"))
        .find(|t| cluster.owner(&format!("dyncert:acme:{t}")) != record_owner)
        .expect("a token on another shard");
    let key = format!("dyncert:acme:{token}");
    let answer = format!("{token}.thumbprint");
    cluster.cmd(&key, &["SET", &key, &answer, "EX", "60"]);
    let r = Request::get(&format!("/.well-known/acme-challenge/{token}"))
        .http(mport)
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, answer.as_str()));
    // PUBLISH on every node reaches the subscriber, wherever it is.
    let ok = poll(DEADLINE, Duration::from_millis(20), || {
        (cluster.subscribers(CHANNEL) >= 1).then_some(())
    });
    assert!(ok.is_some(), "not subscribed on any cluster node");
    for (i, node) in cluster.nodes.iter().enumerate() {
        let renewed = pki.leaf(&[names[0].as_str()], 2350 + i as u64);
        cluster.put_leaf(&names[0], &renewed);
        node.publish(CHANNEL, &names[0]);
        nginx.wait_served(&pki, &names[0], &renewed, DEADLINE);
    }
}

#[test]
fn cluster_api_answers_are_written_back_with_their_expiry_index_entry() {
    let pki = Pki::new();
    let cluster = RedisCluster::start();
    let api = CertApi::start();
    let leaf = pki.leaf(&["api.example.com"], 2401);
    api.set_cert("api.example.com", &leaf);
    let api_http = http_block(&[
        "    dyncert_redis @REDIS@;",
        "    dyncert_api @API@;",
        &source_server(" name=$dyncert_name"),
    ]);
    let nginx = Nginx::start(
        &pki,
        &api_http,
        NginxOpts::new().var("REDIS", cluster.url()).api(&api),
    );
    let r = nginx.get_sni("api.example.com");
    r.assert_served(&leaf, &pki);
    assert_eq!(r.source(), "api", "body {:?}", r.body);
    let stored = poll(DEADLINE, Duration::from_millis(20), || {
        cluster.record_field("api.example.com", "crt")
    });
    assert_eq!(stored.as_deref(), Some(leaf.chain_pem.as_str()));
    let index = "dyncert:expiry";
    let score = poll(DEADLINE, Duration::from_millis(20), || {
        match cluster.cmd(index, &["ZSCORE", index, "api.example.com"]) {
            Reply::Bulk(Some(v)) => Some(v),
            _ => None,
        }
    });
    assert!(score.is_some(), "no expiry index entry");
}

/// `clusters://` verifies the nodes with the system's trust store, which
/// OpenSSL reads from `SSL_CERT_FILE` when set (nginx passes it to its
/// workers only with `env SSL_CERT_FILE;`). Without it the nodes' private
/// CA is not trusted: no connection, the default certificate.
#[test]
fn clusters_over_tls_trust_the_system_store_and_fail_closed_without_it() {
    let pki = Pki::new();
    let cluster = RedisCluster::start_tls(&pki);
    let leaf = pki.leaf(&["tls-cluster.example.com"], 2501);
    cluster.put_leaf("tls-cluster.example.com", &leaf);
    let ca = cluster.tls.as_ref().unwrap().ca_file.display().to_string();
    let template = format!("env SSL_CERT_FILE;\n{}", http());
    let opts = || {
        NginxOpts::new()
            .var("REDIS", cluster.tls_url())
            .var("TLS", "")
            .var("MPORT", free_port())
    };
    let trusted = Nginx::start(&pki, &template, opts().env("SSL_CERT_FILE", &ca));
    let r = trusted.get_sni("tls-cluster.example.com");
    r.assert_served(&leaf, &pki);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);

    let untrusted = Nginx::start(&pki, &http(), opts());
    untrusted
        .get_sni("tls-cluster.example.com")
        .assert_default();
    // The refusal is logged as such (on a loaded machine a node's connect
    // may time out first, and be logged so).
    untrusted
        .wait_for_log_line(DEADLINE, |l| {
            l.contains("while connecting to redis node") && l.contains("certificate verify failed")
        })
        .unwrap_or_else(|| panic!("no verify failure logged:\n{}", untrusted.error_log()));
}
