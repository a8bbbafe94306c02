//! The `dyncert` CLI against production Redis deployments: `rediss://`
//! with an ACL user and the server verified against `--redis-ca`, a
//! client certificate from `--redis-cert`/`--redis-key`, and a
//! `cluster://` where a record and the expiry index live on different
//! nodes. A wrong password fails without showing it.

use dyncert_testkit::*;

#[allow(dead_code)]
mod common;
use common::{dyncert_at, put_args};

const INDEX: &str = "dyncert:expiry";

/// `put NAME --cert --key` with `extra` global options, then `get NAME`.
fn put_and_get(url: &str, extra: &[&str], name: &str, leaf: &Leaf) {
    let dir = TempDir::new("cli-redis");
    let (crt, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    write_file(&crt, &leaf.chain_pem);
    write_file(&key, &leaf.key_pem);
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(put_args(name, &crt, &key));
    dyncert_at(url, &args).assert_ok("put");
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["get", name]);
    let out = dyncert_at(url, &args);
    out.assert_ok("get");
    assert!(out.stdout.contains(name), "{}", out.stdout);
}

#[test]
fn put_and_get_over_rediss_with_an_acl_user() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki, TlsRedisOpts::user("ops", "Cli-pw-5d21"));
    let leaf = pki.leaf(&["tls.example.com"], 3001);
    let ca = redis.ca_file.to_str().unwrap();
    let url = redis.url(Some("ops:Cli-pw-5d21"));
    put_and_get(&url, &["--redis-ca", ca], "tls.example.com", &leaf);
    // Written where the module reads it.
    assert_eq!(
        redis
            .redis
            .record_field("tls.example.com", "crt")
            .as_deref(),
        Some(leaf.chain_pem.as_str())
    );

    let wrong = redis.url(Some("ops:Bad-pw-0000"));
    let out = dyncert_at(&wrong, &["--redis-ca", ca, "get", "tls.example.com"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(!out.stderr.contains("Bad-pw-0000"), "{}", out.stderr);
    assert!(out.stderr.contains("ops:***@localhost"), "{}", out.stderr);

    // Without the CA the server's certificate is not trusted.
    let out = dyncert_at(&url, &["get", "tls.example.com"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
}

#[test]
fn put_and_get_with_a_client_certificate() {
    let pki = Pki::new();
    let redis = TlsRedis::start(
        &pki,
        TlsRedisOpts {
            auth_clients: "yes",
            ..TlsRedisOpts::default()
        },
    );
    let leaf = pki.leaf(&["mtls.example.com"], 3002);
    let tls = [
        "--redis-ca",
        redis.ca_file.to_str().unwrap(),
        "--redis-cert",
        redis.client_cert_file.to_str().unwrap(),
        "--redis-key",
        redis.client_key_file.to_str().unwrap(),
    ];
    put_and_get(&redis.url(None), &tls, "mtls.example.com", &leaf);
    // TLS options with a plain URL are a mistake, said before connecting.
    let out = dyncert_at("redis://127.0.0.1:1/0", &[&tls[..2], &["list"]].concat());
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("rediss://"), "{}", out.stderr);
}

#[test]
fn put_get_and_delete_across_cluster_slots() {
    let pki = Pki::new();
    let cluster = RedisCluster::start();
    // A name whose record is on another node than the index.
    let name = (0..100)
        .map(|i| format!("c{i}.example.com"))
        .find(|n| cluster.owner(&format!("{DEFAULT_PREFIX}{n}")) != cluster.owner(INDEX))
        .expect("a name on another node than the index");
    let leaf = pki.leaf(&[name.as_str()], 3003);
    put_and_get(&cluster.url(), &[], &name, &leaf);
    assert_eq!(
        cluster.record_field(&name, "crt").as_deref(),
        Some(leaf.chain_pem.as_str())
    );
    assert!(matches!(
        cluster.cmd(INDEX, &["ZSCORE", INDEX, &name]),
        Reply::Bulk(Some(_))
    ));
    let out = dyncert_at(&cluster.url(), &["list"]);
    out.assert_ok("list");
    assert!(out.stdout.contains(&name), "{}", out.stdout);
    dyncert_at(&cluster.url(), &["delete", &name]).assert_ok("delete");
    assert_eq!(cluster.record_field(&name, "crt"), None);
    assert_eq!(
        cluster.cmd(INDEX, &["ZSCORE", INDEX, &name]),
        Reply::Bulk(None)
    );
    dyncert_at(&cluster.url(), &["invalidate", &name]).assert_ok("invalidate");
}

/// In a Cluster the record and its index entry go in two commands. A
/// delete removes the index entry first: a concurrent put (record, then
/// ZADD) can then leave at worst a stale entry, which renew reports,
/// never a record that no index walk finds.
#[test]
fn cluster_delete_removes_the_index_entry_before_the_record() {
    let pki = Pki::new();
    let cluster = RedisCluster::start();
    // A name whose record is on the index's node: one MONITOR sees both
    // commands in the order the node ran them.
    let index_node = cluster.owner(INDEX);
    let name = (0..200)
        .map(|i| format!("z{i}.example.com"))
        .find(|n| cluster.owner(&format!("{DEFAULT_PREFIX}{n}")) == index_node)
        .expect("a name on the index's node");
    let leaf = pki.leaf(&[name.as_str()], 3004);
    put_and_get(&cluster.url(), &[], &name, &leaf);
    let node = cluster
        .nodes
        .iter()
        .find(|n| n.port == index_node)
        .expect("the index's node");
    let monitor = node.monitor();
    dyncert_at(&cluster.url(), &["delete", &name]).assert_ok("delete");
    monitor.sync();
    let record = format!("{DEFAULT_PREFIX}{name}");
    let order: Vec<String> = monitor
        .observed()
        .iter()
        .filter(|o| {
            (o.command() == "DEL" && o.args.get(1) == Some(&record))
                || (o.command() == "ZREM" && o.args.get(1).map(String::as_str) == Some(INDEX))
        })
        .map(|o| o.command())
        .collect();
    assert_eq!(order, ["ZREM", "DEL"], "{}", monitor.dump());
    assert_eq!(cluster.record_field(&name, "crt"), None);
}

/// In a Cluster a delete is two commands: the index entry's ZREM, then
/// the record's DEL. When the DEL fails (here an ACL refuses it), the
/// entry is put back with its score, so the record, still there, is
/// still renewed and listed; the command fails.
#[test]
fn cluster_delete_puts_the_index_entry_back_when_the_record_is_not_deleted() {
    let pki = Pki::new();
    let cluster = RedisCluster::start();
    let name = "kept.example.com";
    let leaf = pki.leaf(&[name], 3005);
    put_and_get(&cluster.url(), &[], name, &leaf);
    let score = |c: &RedisCluster| match c.cmd(INDEX, &["ZSCORE", INDEX, name]) {
        Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
        _ => None,
    };
    let before = score(&cluster).expect("indexed by put");
    for node in &cluster.nodes {
        node.cmd(&[
            "ACL", "SETUSER", "nodel", "on", ">pw", "~*", "&*", "+@all", "-del",
        ]);
    }
    let url = cluster.url().replace("cluster://", "cluster://nodel:pw@");
    let out = dyncert_at(&url, &["delete", name]);
    assert_ne!(out.code, 0, "stdout {}\nstderr {}", out.stdout, out.stderr);
    assert_eq!(score(&cluster).as_deref(), Some(before.as_str()));
    assert!(cluster.record_field(name, "crt").is_some());
}
