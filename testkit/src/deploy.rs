//! Production Redis deployments, real and local: a server with TLS (its
//! certificate from the kit's PKI, optional client certificates, an ACL
//! user), a Sentinel-managed primary with a replica and three sentinels,
//! and a three-node Cluster. The kit seeds and inspects them over their
//! plain ports; the module and the CLI under test use the TLS port or the
//! sentinel/cluster URL.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::pki::{Leaf, Pki};
use crate::process::{free_port, poll, write_file};
use crate::redis::{redis_command, Redis, Reply, DEFAULT_PREFIX};

const DEADLINE: Duration = Duration::from_secs(20);

/// What a TLS server asks of its clients.
pub struct TlsRedisOpts<'a> {
    /// Names in the server certificate (the URL's host is `localhost`).
    pub sans: &'a [&'a str],
    /// `--tls-auth-clients`: `no`, `optional` or `yes`.
    pub auth_clients: &'a str,
    /// An ACL user with every right: (name, password).
    pub user: Option<(&'a str, &'a str)>,
}

impl Default for TlsRedisOpts<'_> {
    fn default() -> Self {
        TlsRedisOpts {
            sans: &["localhost"],
            auth_clients: "no",
            user: None,
        }
    }
}

impl<'a> TlsRedisOpts<'a> {
    /// The defaults with the ACL user `name`, password `password`.
    pub fn user(name: &'a str, password: &'a str) -> Self {
        TlsRedisOpts {
            user: Some((name, password)),
            ..TlsRedisOpts::default()
        }
    }
}

/// A `redis-server` with a TLS port beside its plain one (which only the
/// kit uses, to seed records).
pub struct TlsRedis {
    pub redis: Redis,
    pub tls_port: u16,
    /// The PKI's root: what a client trusts the server with.
    pub ca_file: PathBuf,
    /// A client certificate (and key) the server accepts.
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
    _files: crate::process::TempDir,
}

impl TlsRedis {
    pub fn start(pki: &Pki, opts: TlsRedisOpts<'_>) -> TlsRedis {
        let server = pki.leaf(opts.sans, 7001);
        let clients = pki.client_ca("redis clients");
        let client = pki.client_cert(&clients, "dyncert");
        let tls_port = free_port();
        let files = crate::process::TempDir::new("redis-tls");
        let dir = files.path().to_owned();
        let path = |n: &str| dir.join(n);
        write_file(&path("server.crt"), &server.chain_pem);
        write_file(&path("server.key"), &server.key_pem);
        write_file(&path("clients-ca.crt"), &clients.cert_pem);
        write_file(&path("ca.crt"), pki.root.cert_pem.as_bytes());
        write_file(&path("client.crt"), &client.cert_pem);
        write_file(&path("client.key"), &client.key_pem);
        let mut args: Vec<String> = vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path("server.crt").display().to_string(),
            "--tls-key-file".into(),
            path("server.key").display().to_string(),
            "--tls-ca-cert-file".into(),
            path("clients-ca.crt").display().to_string(),
            "--tls-auth-clients".into(),
            opts.auth_clients.into(),
        ];
        if let Some((name, password)) = opts.user {
            args.extend(
                [
                    "--user",
                    name,
                    "on",
                    &format!(">{password}"),
                    "~*",
                    "&*",
                    "+@all",
                ]
                .map(String::from),
            );
        }
        TlsRedis {
            redis: Redis::start_with(&args),
            tls_port,
            ca_file: path("ca.crt"),
            client_cert_file: path("client.crt"),
            client_key_file: path("client.key"),
            _files: files,
        }
    }

    /// `rediss://[USERINFO@]localhost:TLS_PORT/0`.
    pub fn url(&self, userinfo: Option<&str>) -> String {
        match userinfo {
            Some(u) => format!("rediss://{u}@localhost:{}/0", self.tls_port),
            None => format!("rediss://localhost:{}/0", self.tls_port),
        }
    }
}

/// Three primaries sharing the 16384 slots, no replicas.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
    /// With TLS (`start_tls`): the nodes' TLS ports, and the CA file that
    /// verifies them. The kit keeps using the plain ports (Redis 7 answers
    /// a plain client's MOVED with plain ports, a TLS client's with TLS
    /// ones).
    pub tls: Option<ClusterTls>,
}

/// The TLS side of a [`RedisCluster`].
pub struct ClusterTls {
    pub ports: Vec<u16>,
    pub ca_file: PathBuf,
    _files: crate::process::TempDir,
}

fn text(r: &Reply) -> String {
    match r {
        Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
        Reply::Status(s) | Reply::Error(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        RedisCluster::start_with(None)
    }

    /// The cluster over TLS (`--tls-cluster yes`): node certificates from
    /// `pki` for 127.0.0.1 (what CLUSTER SLOTS names), no client
    /// certificates.
    pub fn start_tls(pki: &Pki) -> RedisCluster {
        RedisCluster::start_with(Some(pki))
    }

    fn start_with(pki: Option<&Pki>) -> RedisCluster {
        let tls = pki.map(|pki| {
            let files = crate::process::TempDir::new("cluster-tls");
            let leaf = pki.leaf_with(
                &["localhost"],
                7101,
                crate::pki::LeafOpts {
                    ips: &["127.0.0.1"],
                    client_auth: true,
                    ..Default::default()
                },
            );
            let path = |n: &str| files.path().join(n);
            write_file(&path("node.crt"), &leaf.chain_pem);
            write_file(&path("node.key"), &leaf.key_pem);
            write_file(&path("ca.crt"), pki.root.cert_pem.as_bytes());
            ClusterTls {
                ports: (0..3).map(|_| free_port()).collect(),
                ca_file: path("ca.crt"),
                _files: files,
            }
        });
        let nodes: Vec<Redis> = (0..3)
            .map(|i| {
                let mut args: Vec<String> = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ]
                .map(String::from)
                .to_vec();
                if let Some(t) = &tls {
                    let dir = t.ca_file.parent().unwrap();
                    args.extend([
                        "--tls-port".to_owned(),
                        t.ports[i].to_string(),
                        "--tls-cluster".to_owned(),
                        "yes".to_owned(),
                        "--tls-cert-file".to_owned(),
                        dir.join("node.crt").display().to_string(),
                        "--tls-key-file".to_owned(),
                        dir.join("node.key").display().to_string(),
                        "--tls-ca-cert-file".to_owned(),
                        t.ca_file.display().to_string(),
                        "--tls-auth-clients".to_owned(),
                        "no".to_owned(),
                    ]);
                }
                Redis::start_with(&args)
            })
            .collect();
        // Bounded: a cluster whose nodes cannot meet must fail the test,
        // not hang it ("Waiting for the cluster to join" forever).
        let mut create = Command::new("timeout");
        create.arg("30").arg("redis-cli");
        match &tls {
            // The cluster bus port follows the TLS port: create over TLS.
            Some(t) => {
                create.arg("--tls").arg("--cacert").arg(&t.ca_file);
                create.arg("--cluster").arg("create");
                for p in &t.ports {
                    create.arg(format!("127.0.0.1:{p}"));
                }
            }
            None => {
                create.arg("--cluster").arg("create");
                for n in &nodes {
                    create.arg(format!("127.0.0.1:{}", n.port));
                }
            }
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = RedisCluster { nodes, tls };
        let ok = poll(DEADLINE, Duration::from_millis(50), || {
            c.nodes
                .iter()
                .all(|n| {
                    redis_command(n.port, &["CLUSTER", "INFO"])
                        .map(|r| text(&r).contains("cluster_state:ok"))
                        .unwrap_or(false)
                })
                .then_some(())
        });
        assert!(ok.is_some(), "the cluster did not reach cluster_state:ok");
        c
    }

    /// `clusters://127.0.0.1:T1,127.0.0.1:T2,127.0.0.1:T3` (`start_tls`).
    pub fn tls_url(&self) -> String {
        let t = self.tls.as_ref().expect("a cluster started with start_tls");
        let nodes: Vec<String> = t.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("clusters://{}", nodes.join(","))
    }

    /// `cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("cluster://{}", nodes.join(","))
    }

    /// The port of the node that owns `key`'s slot.
    pub fn owner(&self, key: &str) -> u16 {
        let mut port = self.nodes[0].port;
        for _ in 0..3 {
            match redis_command(port, &["EXISTS", key]) {
                Ok(Reply::Error(e)) if e.starts_with("MOVED") => {
                    port = e
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .unwrap_or_else(|| panic!("MOVED reply {e}"));
                }
                Ok(_) => return port,
                Err(e) => panic!("EXISTS {key}: {e}"),
            }
        }
        panic!("no owner found for {key}");
    }

    /// One command on the node owning `key` (the command's first key).
    pub fn cmd(&self, key: &str, args: &[&str]) -> Reply {
        match redis_command(self.owner(key), args) {
            Ok(Reply::Error(e)) => panic!("redis {args:?}: {e}"),
            Ok(r) => r,
            Err(e) => panic!("redis {args:?}: {e}"),
        }
    }

    pub fn put_leaf(&self, name: &str, leaf: &Leaf) {
        let key = format!("{DEFAULT_PREFIX}{name}");
        self.cmd(
            &key,
            &["HSET", &key, "crt", &leaf.chain_pem, "key", &leaf.key_pem],
        );
    }

    pub fn record_field(&self, name: &str, field: &str) -> Option<String> {
        let key = format!("{DEFAULT_PREFIX}{name}");
        match self.cmd(&key, &["HGET", &key, field]) {
            Reply::Bulk(None) => None,
            r => Some(text(&r)),
        }
    }

    /// Subscribers of `channel` on all nodes together.
    pub fn subscribers(&self, channel: &str) -> i64 {
        self.nodes.iter().map(|n| n.subscribers(channel)).sum()
    }
}

/// The service name the sentinels monitor.
pub const SENTINEL_SERVICE: &str = "mymaster";

/// Three sentinels (quorum 2) monitoring a primary at 127.0.0.1:`port`
/// (a proxy's, say) that never fail it over in a test's time, once each
/// of them names 127.0.0.1:`port` as the primary; panics when they do not
/// within 10 s.
pub fn sentinels_naming(port: u16) -> Vec<Redis> {
    let conf = format!(
        "port @PORT@\n\
         bind 127.0.0.1\n\
         sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {port} 2\n\
         sentinel down-after-milliseconds {SENTINEL_SERVICE} 60000\n\
         sentinel failover-timeout {SENTINEL_SERVICE} 120000\n"
    );
    let sentinels: Vec<Redis> = (0..3).map(|_| Redis::start_sentinel(&conf)).collect();
    let named = poll(Duration::from_secs(10), Duration::from_millis(50), || {
        sentinels
            .iter()
            .all(|s| {
                let r = redis_command(
                    s.port,
                    &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE],
                );
                matches!(r, Ok(Reply::Array(Some(v)))
                    if matches!(v.get(1), Some(Reply::Bulk(Some(p)))
                        if *p == port.to_string().into_bytes()))
            })
            .then_some(())
    });
    assert!(
        named.is_some(),
        "the sentinels do not name 127.0.0.1:{port}"
    );
    sentinels
}

/// A primary, one replica and three sentinels (quorum 2) watching them.
pub struct RedisSentinel {
    pub primary: Redis,
    pub replica: Redis,
    pub sentinels: Vec<Redis>,
}

impl RedisSentinel {
    pub fn start() -> RedisSentinel {
        // No diskless-sync delay: replicas sync at once, here and after
        // the failover (the default waits 5 s for more replicas).
        let primary = Redis::start_with(&["--repl-diskless-sync-delay", "0"]);
        let replica = Redis::start_with(&[
            "--repl-diskless-sync-delay",
            "0",
            "--replicaof",
            "127.0.0.1",
            &primary.port.to_string(),
        ]);
        let linked = poll(DEADLINE, Duration::from_millis(50), || {
            redis_command(replica.port, &["INFO", "replication"])
                .ok()
                .filter(|r| text(r).contains("master_link_status:up"))
        });
        assert!(linked.is_some(), "the replica did not sync");
        let conf = format!(
            "port @PORT@\n\
             bind 127.0.0.1\n\
             sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {} 2\n\
             sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
             sentinel failover-timeout {SENTINEL_SERVICE} 5000\n\
             sentinel parallel-syncs {SENTINEL_SERVICE} 1\n",
            primary.port
        );
        let sentinels: Vec<Redis> = (0..3).map(|_| Redis::start_sentinel(&conf)).collect();
        let s = RedisSentinel {
            primary,
            replica,
            sentinels,
        };
        // Each sentinel must know the replica (to fail over to it) and
        // the other sentinels (to agree on a failover).
        let ready = poll(DEADLINE, Duration::from_millis(100), || {
            s.sentinels
                .iter()
                .all(|x| {
                    let count = |what: &str| match redis_command(
                        x.port,
                        &["SENTINEL", what, SENTINEL_SERVICE],
                    ) {
                        Ok(Reply::Array(Some(v))) => v.len(),
                        _ => 0,
                    };
                    count("REPLICAS") >= 1 && count("SENTINELS") >= 2
                })
                .then_some(())
        });
        assert!(ready.is_some(), "the sentinels did not discover each other");
        s
    }

    /// `sentinel://[USERINFO@]127.0.0.1:S1,...,127.0.0.1:S3/mymaster/0`.
    pub fn url(&self, userinfo: Option<&str>) -> String {
        let nodes: Vec<String> = self
            .sentinels
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let auth = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        format!("sentinel://{auth}{}/{SENTINEL_SERVICE}/0", nodes.join(","))
    }

    /// The port of the primary as the sentinel `i` names it.
    pub fn primary_port(&self, i: usize) -> Option<u16> {
        match redis_command(
            self.sentinels[i].port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE],
        ) {
            Ok(Reply::Array(Some(v))) if v.len() == 2 => text(&v[1]).parse().ok(),
            _ => None,
        }
    }

    /// `SENTINEL FAILOVER`, then waits until every sentinel names the
    /// replica as primary and it accepts writes. The old primary becomes
    /// its replica.
    pub fn failover(&mut self) {
        let r = redis_command(
            self.sentinels[0].port,
            &["SENTINEL", "FAILOVER", SENTINEL_SERVICE],
        );
        assert!(
            matches!(&r, Ok(Reply::Status(s)) if s == "OK"),
            "SENTINEL FAILOVER: {r:?}"
        );
        let new = self.replica.port;
        let done = poll(DEADLINE, Duration::from_millis(100), || {
            let named = (0..self.sentinels.len()).all(|i| self.primary_port(i) == Some(new));
            let writable = redis_command(new, &["ROLE"])
                .map(|r| matches!(r, Reply::Array(Some(ref v)) if text(&v[0]) == "master"))
                .unwrap_or(false);
            (named && writable).then_some(())
        });
        assert!(done.is_some(), "the failover did not complete");
        std::mem::swap(&mut self.primary, &mut self.replica);
    }
}
