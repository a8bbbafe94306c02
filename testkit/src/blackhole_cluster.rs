//! A Redis Cluster reached through [`BlackholeProxy`] instances, one per
//! node, as through a NAT or a load balancer: every node announces its
//! proxy's address (`cluster-announce-port`, the real bus port kept), so
//! CLUSTER SLOTS and MOVED name the proxies and every connection a client
//! makes to a node goes through one. Freezing the proxies silences every
//! flow made before, as a middlebox that forgot them does.

use std::time::Duration;

use crate::blackhole::{assert_command_timeout_logged_for, BlackholeProxy};
use crate::deploy::RedisCluster;
use crate::nginx::Nginx;
use crate::pki::Pki;
use crate::process::poll;
use crate::redis::{redis_command, Reply};

/// Three primaries (no replicas), each behind its own proxy.
pub struct ProxiedCluster {
    pub cluster: RedisCluster,
    /// `proxies[i]` forwards to `cluster.nodes[i]`.
    pub proxies: Vec<BlackholeProxy>,
}

/// The ports a node's CLUSTER SLOTS answer names.
fn slot_ports(port: u16) -> Vec<u16> {
    fn ports(r: &Reply, out: &mut Vec<u16>) {
        if let Reply::Array(Some(items)) = r {
            // [start, end, [host, port, id, ...], ...] per range.
            for range in items {
                if let Reply::Array(Some(parts)) = range {
                    for node in parts.iter().skip(2) {
                        if let Reply::Array(Some(n)) = node {
                            if let Some(Reply::Int(p)) = n.get(1) {
                                out.push(*p as u16);
                            }
                        }
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    if let Ok(r) = redis_command(port, &["CLUSTER", "SLOTS"]) {
        ports(&r, &mut out);
    }
    out
}

impl ProxiedCluster {
    /// Starts the cluster and its proxies, and waits until every node
    /// names only the proxies (gossip spreads each node's new address
    /// within a few seconds).
    pub fn start() -> ProxiedCluster {
        let cluster = RedisCluster::start();
        let proxies: Vec<BlackholeProxy> = cluster
            .nodes
            .iter()
            .map(|n| BlackholeProxy::start(n.port))
            .collect();
        for (n, p) in cluster.nodes.iter().zip(&proxies) {
            // The bus stays direct: only clients go through the proxies.
            let bus = (n.port + 10000).to_string();
            n.cmd(&["CONFIG", "SET", "cluster-announce-ip", "127.0.0.1"]);
            n.cmd(&["CONFIG", "SET", "cluster-announce-bus-port", &bus]);
            n.cmd(&[
                "CONFIG",
                "SET",
                "cluster-announce-port",
                &p.port.to_string(),
            ]);
        }
        let mut wanted: Vec<u16> = proxies.iter().map(|p| p.port).collect();
        wanted.sort_unstable();
        let announced = poll(Duration::from_secs(20), Duration::from_millis(100), || {
            cluster
                .nodes
                .iter()
                .all(|n| {
                    let mut ports = slot_ports(n.port);
                    ports.sort_unstable();
                    ports.dedup();
                    ports == wanted
                })
                .then_some(())
        });
        assert!(
            announced.is_some(),
            "the nodes do not announce the proxies: {:?} (wanted {wanted:?})",
            cluster
                .nodes
                .iter()
                .map(|n| slot_ports(n.port))
                .collect::<Vec<_>>()
        );
        ProxiedCluster { cluster, proxies }
    }

    /// `cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`, the proxies.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self.nodes_shown();
        format!("cluster://{}", nodes.join(","))
    }

    fn nodes_shown(&self) -> Vec<String> {
        self.proxies
            .iter()
            .map(|p| format!("127.0.0.1:{}", p.port))
            .collect()
    }

    /// Silences every flow the proxies accepted so far (but the
    /// subscriptions').
    pub fn freeze(&self) {
        for p in &self.proxies {
            p.freeze();
        }
    }

    /// Connections the proxies accepted in all.
    pub fn accepted(&self) -> u64 {
        self.proxies.iter().map(BlackholeProxy::accepted).sum()
    }

    /// nginx (one worker) whose `dyncert_redis` is [`Self::url`], as
    /// [`BlackholeProxy::nginx_behind`] starts it: its invalidation
    /// subscription is on the first listed node.
    pub fn nginx_behind(&self, pki: &Pki, tickets: bool) -> (Nginx, u16) {
        self.proxies[0].nginx_behind(pki, &self.url(), &self.cluster.nodes[0], tickets)
    }

    /// Asserts that `nginx` logged a command timeout on the open Cluster
    /// connection, then its replacement, not a failure to connect before
    /// it, and counted both on its metrics port `mport`.
    pub fn assert_command_timeout_logged(&self, nginx: &Nginx, mport: u16) {
        let node = format!("redis node \"cluster {}\"", self.nodes_shown().join(","));
        assert_command_timeout_logged_for(nginx, mport, &node);
    }
}
