//! One connection handle for every kind of Redis deployment the
//! [`Topology`] names, built on the redis crate's own TLS, Sentinel and
//! Cluster support: a `MultiplexedConnection` for one server, a Cluster
//! connection (MOVED/ASK, slot map refreshes) for a Cluster, and for
//! Sentinel a connection to the primary the sentinels name, found again
//! after a failover. Every connection failure is reported with the node's
//! address ([`RedisNote`]); reads a replica answered because the primary
//! could not are reported too.
//!
//! Connections are made lazily, on first use and again after a failure:
//! nginx starts (and serves defaults) while Redis is down.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::io::tcp::socket2::TcpKeepalive;
use redis::io::tcp::TcpSettings;

use super::health::{
    abandoned, ask_sentinels, install_rechecked, replace_cluster, replace_primary, Admit,
    CommandEnd, ConnHealth, Named, Reconnects, Verdict,
};

use redis::aio::{ConnectionLike, MultiplexedConnection, PubSub};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, Cmd, ConnectionAddr, FromRedisValue,
    IntoConnectionInfo, RedisConnectionInfo, RedisFuture, RedisResult, Role, TlsCertificates,
    TlsMode, Value,
};

use crate::topology::{
    agreed_primary, agreed_replicas, announced_node, healthy_replica, is_read_only, Auth, Node,
    SentinelAnswer, Topology, REPLICAS_MAX,
};

/// TLS material of `rediss://` and `clusters://` connections
/// (`dyncert_redis_tls_trusted_certificate`,
/// `dyncert_redis_tls_certificate`): PEM CA certificates to verify the
/// servers with instead of the system's, and a client certificate with
/// its PKCS#8 key. `Debug` shows neither.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    pub ca: Option<Vec<u8>>,
    /// (certificate chain PEM, PKCS#8 key PEM).
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca.as_ref().map(Vec::len))
            .field("client", &self.client.is_some())
            .finish()
    }
}

impl RedisTls {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.client.is_none()
    }

    fn certificates(&self) -> TlsCertificates {
        TlsCertificates {
            client_tls: self.client.as_ref().map(|(c, k)| ClientTlsConfig {
                client_cert: c.clone(),
                client_key: k.clone(),
            }),
            root_cert: self.ca.clone(),
        }
    }
}

/// Something about the Redis connections the operator should see and the
/// metrics count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisNote {
    /// Connecting to (or talking to) `node` failed. `logged` is false for
    /// repeats within [`NOTE_LOG_INTERVAL`] of the same node's last line:
    /// counted, not logged again.
    ConnectFailed {
        node: String,
        error: String,
        logged: bool,
    },
    /// The primary could not be reached; a replica answered a read.
    ReplicaRead { node: String, logged: bool },
    /// A command got no answer from `node` within `timeout` although the
    /// connection was up (it had answered): a hung server, or a flow a
    /// middlebox forgot. Not a connect failure.
    CommandTimedOut {
        node: String,
        timeout: Duration,
        logged: bool,
    },
    /// The command connection to `node` was replaced by a new one because
    /// a command timed out on it (see [`super::health`]).
    Reconnected { node: String, logged: bool },
    /// The one-step record read (an `EVAL_RO` script) was refused with
    /// `error` (an ACL user without scripts, a Redis before 7): records are
    /// read in two steps for a while. Sent once per switch.
    ScriptReadRefused { error: String },
}

/// Shortest time between two log lines about one node.
pub const NOTE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Where notes go (the fetcher pushes them to the event loop), with the
/// per-node log rate limit.
#[derive(Clone)]
pub struct Notes {
    sink: Arc<dyn Fn(RedisNote) + Send + Sync>,
    last: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Notes {
    pub fn new(sink: impl Fn(RedisNote) + Send + Sync + 'static) -> Notes {
        Notes {
            sink: Arc::new(sink),
            last: Arc::default(),
        }
    }

    /// Notes that go nowhere (the CLI reports its own errors).
    pub fn none() -> Notes {
        Notes::new(|_| {})
    }

    fn should_log(&self, key: &str) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return true;
        };
        let now = Instant::now();
        match last.get(key) {
            Some(t) if now.duration_since(*t) < NOTE_LOG_INTERVAL => false,
            _ => {
                if last.len() > 1024 {
                    last.clear();
                }
                last.insert(key.to_owned(), now);
                true
            }
        }
    }

    fn connect_failed(&self, node: &str, e: &redis::RedisError) {
        let logged = self.should_log(node);
        (self.sink)(RedisNote::ConnectFailed {
            node: node.to_owned(),
            error: super::error::RedisError::command(e).to_string(),
            logged,
        });
    }

    fn command_timed_out(&self, node: &str, timeout: Duration) {
        let logged = self.should_log(&format!("timeout {node}"));
        (self.sink)(RedisNote::CommandTimedOut {
            node: node.to_owned(),
            timeout,
            logged,
        });
    }

    fn reconnected(&self, node: &str) {
        let logged = self.should_log(&format!("reconnect {node}"));
        (self.sink)(RedisNote::Reconnected {
            node: node.to_owned(),
            logged,
        });
    }

    pub(super) fn script_read_refused(&self, e: &redis::RedisError) {
        (self.sink)(RedisNote::ScriptReadRefused {
            error: super::error::RedisError::command(e).to_string(),
        });
    }

    fn replica_read(&self, node: &str) {
        let logged = self.should_log(&format!("replica {node}"));
        (self.sink)(RedisNote::ReplicaRead {
            node: node.to_owned(),
            logged,
        });
    }
}

/// A failure of the connection rather than of the command: the node is
/// down, unreachable, refused the TLS handshake or the credentials, or
/// did not answer in time while a connection was being made (a sentinel:
/// at all). A command's timeout on a single server's, a Sentinel
/// primary's or a Cluster connection is told apart by [`command_end`].
pub fn is_connection_failure(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || e.is_timeout()
        || e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
}

/// How a failed command on a single server's, a Sentinel primary's or a
/// Cluster connection ended (see [`super::health`]): a timeout is not a
/// failure to connect.
fn command_end(e: &redis::RedisError) -> CommandEnd {
    if e.is_timeout() {
        CommandEnd::TimedOut
    } else if is_connection_failure(e) {
        CommandEnd::ConnectionFailed
    } else {
        CommandEnd::Answered
    }
}

/// Idle time before the first TCP keepalive probe: keeps an idle command
/// connection's entry alive in NATs, conntrack tables and load balancers
/// (whose idle timeouts are minutes), and finds a dead flow in about a
/// minute (with [`KEEPALIVE_INTERVAL`] and [`KEEPALIVE_PROBES`]).
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_PROBES: u32 = 3;
/// `TCP_USER_TIMEOUT`: data unacknowledged this long ends the connection
/// (the kernel reports the flow dead instead of retransmitting for a
/// quarter of an hour), so the manager reconnects.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// `base` with keepalive probes and `TCP_USER_TIMEOUT` (see
/// [`KEEPALIVE_IDLE`], [`TCP_USER_TIMEOUT`]); for every TCP connection
/// to a Redis node.
pub fn tcp_settings(base: TcpSettings) -> TcpSettings {
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    #[cfg(target_os = "linux")]
    let keepalive = keepalive.with_retries(KEEPALIVE_PROBES);
    let settings = base.set_keepalive(keepalive);
    #[cfg(target_os = "linux")]
    let settings = settings.set_user_timeout(TCP_USER_TIMEOUT);
    settings
}

/// How to reach a deployment: the topology, TLS material, the bound on
/// connecting and on each command.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    pub topology: Topology,
    pub tls: RedisTls,
    pub timeout: Duration,
}

impl RedisTarget {
    /// Parses `url` (already checked at configuration time).
    pub fn new(url: &str, tls: RedisTls, timeout: Duration) -> Result<RedisTarget, String> {
        let topology = Topology::parse(url).map_err(|e| e.to_string())?;
        Ok(RedisTarget {
            topology,
            tls,
            timeout,
        })
    }

    /// The connection handle (nothing is connected yet).
    pub fn connect(&self, notes: Notes) -> RedisResult<RedisConn> {
        let t = self.timeout;
        match &self.topology {
            Topology::Single { url, .. } => {
                let client = single_client(url, &self.tls)?;
                let node = addr_of(&client);
                Ok(RedisConn::Single {
                    conn: Arc::new(SingleConn {
                        client,
                        config: AsyncConnectionConfig::new()
                            .set_connection_timeout(Some(t))
                            .set_response_timeout(Some(t)),
                        timeout: t,
                        reconnects: Mutex::default(),
                        current: Arc::default(),
                    }),
                    node: Arc::from(node),
                    notes,
                })
            }
            Topology::Cluster { nodes, auth, tls } => {
                // rediss:// for the listed nodes themselves (the TLS mode
                // below is what discovered nodes get).
                let scheme = if *tls { "rediss" } else { "redis" };
                let urls: Vec<String> = nodes.iter().map(|n| format!("{scheme}://{n}")).collect();
                let mut b = ClusterClient::builder(urls)
                    .connection_timeout(t)
                    .response_timeout(t)
                    .retries(2)
                    .tcp_settings(tcp_settings(TcpSettings::default()));
                if let Some(u) = &auth.username {
                    b = b.username(u);
                }
                if let Some(p) = &auth.password {
                    b = b.password(p);
                }
                // The system's trust store only: with native-tls the crate's
                // Cluster support takes no private CA or client certificate
                // (`nginx -t` refuses them with `clusters://`).
                if *tls {
                    b = b.tls(TlsMode::Secure);
                }
                Ok(RedisConn::Cluster(Arc::new(LazyCluster {
                    client: b.build()?,
                    conn: tokio::sync::Mutex::new(None),
                    replacing: tokio::sync::Mutex::new(()),
                    timeout: t,
                    shown: self.topology.shown_nodes(),
                    notes,
                })))
            }
            Topology::Sentinel {
                sentinels,
                service,
                db,
                auth,
                sentinel_auth,
            } => {
                // The sentinels' own credentials, database 0 (a sentinel
                // has no SELECT).
                let sentinels = sentinels
                    .iter()
                    .map(|n| {
                        let info = ConnectionAddr::Tcp(n.host.clone(), n.port)
                            .into_connection_info()?
                            .set_redis_settings(redis_info(sentinel_auth, 0));
                        let settings = tcp_settings(info.tcp_settings().clone());
                        let info = info.set_tcp_settings(settings);
                        Ok(SentinelNode {
                            node: n.clone(),
                            client: Client::open(info)?,
                            conn: Arc::default(),
                        })
                    })
                    .collect::<RedisResult<Vec<_>>>()?;
                Ok(RedisConn::Sentinel(Arc::new(SentinelConn {
                    db: *db,
                    sentinels,
                    service: service.clone(),
                    auth: auth.clone(),
                    primary: Arc::default(),
                    reconnects: Mutex::default(),
                    replica: Arc::default(),
                    replica_reconnects: Mutex::default(),
                    config: AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(t))
                        .set_response_timeout(Some(t)),
                    timeout: t,
                    shown: self.topology.shown_nodes(),
                    notes,
                })))
            }
        }
    }

    /// A pub/sub connection for the invalidation channel, and the node it
    /// is on. One server: that server. Cluster: the first listed node
    /// that answers (a PUBLISH on any node of a Redis 7 cluster reaches
    /// the subscribers of every node). Sentinel: the current primary,
    /// found again after a failover (the sentinels close the demoted
    /// primary's pub/sub clients, which ends the subscription).
    pub async fn pubsub(&self, notes: &Notes) -> RedisResult<(String, PubSub)> {
        let t = self.timeout;
        let timed = |e: tokio::time::error::Elapsed| -> redis::RedisError {
            std::io::Error::new(std::io::ErrorKind::TimedOut, e.to_string()).into()
        };
        match &self.topology {
            Topology::Single { url, .. } => {
                let client = single_client(url, &self.tls)?;
                let node = addr_of(&client);
                match tokio::time::timeout(t, client.get_async_pubsub()).await {
                    Ok(Ok(p)) => Ok((node, p)),
                    Ok(Err(e)) => {
                        notes.connect_failed(&node, &e);
                        Err(e)
                    }
                    Err(e) => {
                        let e = timed(e);
                        notes.connect_failed(&node, &e);
                        Err(e)
                    }
                }
            }
            Topology::Cluster { nodes, auth, tls } => {
                let mut last = None;
                for n in nodes {
                    let client = node_client(n, auth, 0, *tls, &self.tls)?;
                    let r = match tokio::time::timeout(t, client.get_async_pubsub()).await {
                        Ok(r) => r,
                        Err(e) => Err(timed(e)),
                    };
                    match r {
                        Ok(p) => return Ok((n.to_string(), p)),
                        Err(e) => {
                            notes.connect_failed(&n.to_string(), &e);
                            last = Some(e);
                        }
                    }
                }
                Err(last.unwrap_or_else(|| std::io::Error::other("no cluster node").into()))
            }
            Topology::Sentinel { .. } => match self.connect(notes.clone())? {
                RedisConn::Sentinel(s) => s.pubsub().await,
                _ => Err(std::io::Error::other("not a sentinel connection").into()),
            },
        }
    }
}

/// A `redis://` or `rediss://` client, with the configured CA and client
/// certificate for the latter, and keepalive ([`tcp_settings`]).
fn single_client(url: &str, tls: &RedisTls) -> RedisResult<Client> {
    let info = url.into_connection_info()?;
    let settings = tcp_settings(info.tcp_settings().clone());
    let info = info.set_tcp_settings(settings);
    if tls.is_empty() {
        Client::open(info)
    } else {
        Client::build_with_tls(info, tls.certificates())
    }
}

fn redis_info(auth: &Auth, db: i64) -> RedisConnectionInfo {
    let mut info = RedisConnectionInfo::default().set_db(db);
    if let Some(u) = &auth.username {
        info = info.set_username(u);
    }
    if let Some(p) = &auth.password {
        info = info.set_password(p);
    }
    info
}

/// A client of one listed (or sentinel-named) node, with keepalive
/// ([`tcp_settings`]).
fn node_client(n: &Node, auth: &Auth, db: i64, tls: bool, certs: &RedisTls) -> RedisResult<Client> {
    let addr = if tls {
        ConnectionAddr::TcpTls {
            host: n.host.clone(),
            port: n.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(n.host.clone(), n.port)
    };
    let info = addr
        .into_connection_info()?
        .set_redis_settings(redis_info(auth, db));
    let settings = tcp_settings(info.tcp_settings().clone());
    let info = info.set_tcp_settings(settings);
    if tls && !certs.is_empty() {
        Client::build_with_tls(info, certs.certificates())
    } else {
        Client::open(info)
    }
}

fn addr_of(client: &Client) -> String {
    match client.get_connection_info().addr() {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => Node {
            host: h.clone(),
            port: *p,
        }
        .to_string(),
        ConnectionAddr::Unix(p) => p.display().to_string(),
        other => format!("{other:?}"),
    }
}

/// The connection handle of one deployment; cheap to clone (every clone
/// shares the connections).
#[derive(Clone)]
pub enum RedisConn {
    Single {
        conn: Arc<SingleConn>,
        /// The server's `host:port` (or socket path), as log lines show it.
        node: Arc<str>,
        notes: Notes,
    },
    Cluster(Arc<LazyCluster>),
    Sentinel(Arc<SentinelConn>),
}

/// One server's command connection, shared by every clone of the handle
/// (lookups, write-backs, ACME reads, the ticket task): made on first use,
/// and again after it broke, or after a command timed out on it (see
/// [`super::health`]); commands in flight finish on the old one, which
/// closes when the last of them ends. It is made under the slot's lock,
/// so the commands that come meanwhile share that attempt, and how soon
/// after a failure the next one may start is [`Reconnects`]'. (The redis
/// crate's `ConnectionManager` also reconnected by itself right after
/// every failure: two connections per attempt to a server that is down.)
pub struct SingleConn {
    client: Client,
    config: AsyncConnectionConfig,
    timeout: Duration,
    /// Held while a connection is made ([`SingleConn::current`]).
    current: Arc<tokio::sync::Mutex<Option<Current>>>,
    /// When commands may try the server again after it failed to connect.
    reconnects: Mutex<Reconnects>,
}

/// The connection in use and what its commands said of it.
#[derive(Clone)]
struct Current {
    conn: MultiplexedConnection,
    health: Arc<Mutex<ConnHealth>>,
}

impl SingleConn {
    /// The connection for the next command, and the failures counted when
    /// it was taken (see [`Reconnects::failed`]): the one in use, unless it
    /// is suspect or broke ([`ConnHealth`]); otherwise a new one, when
    /// [`Reconnects`] admits an attempt now or within half the command
    /// timeout (the rest is the attempt's). Fails at once when the next
    /// attempt is further off, or with the attempt's error.
    async fn current(self: &Arc<Self>, node: &str, notes: &Notes) -> RedisResult<(Current, u64)> {
        loop {
            let mut slot = Arc::clone(&self.current).lock_owned().await;
            if let Some(cur) = slot.as_ref() {
                let (suspect, broken) = {
                    let h = cur.health.lock().unwrap_or_else(|e| e.into_inner());
                    (h.suspect(), h.broken())
                };
                if !suspect && !broken {
                    return Ok((cur.clone(), self.counted()));
                }
                if suspect {
                    notes.reconnected(node);
                }
                *slot = None;
            }
            let (admit, left) = {
                let r = self.reconnects.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                (r.admit(now, self.timeout / 2), r.wait_left(now))
            };
            match admit {
                Admit::Connect { since } => {
                    // In a task of its own, which keeps the lock until it
                    // is done ([`in_own_task`]).
                    let (me, shown, notes) = (Arc::clone(self), node.to_owned(), notes.clone());
                    let what = format!("connecting to redis node \"{node}\"");
                    let made = in_own_task(&what, async move {
                        match me
                            .client
                            .get_multiplexed_async_connection_with_config(&me.config)
                            .await
                        {
                            Ok(conn) => {
                                // Not yet `answered`: a server that accepts
                                // and closes (or a proxy in front of one
                                // that is down) would reset the waits at
                                // every attempt.
                                let cur = Current {
                                    conn,
                                    health: Arc::default(),
                                };
                                *slot = Some(cur.clone());
                                Ok(cur)
                            }
                            Err(e) => {
                                notes.connect_failed(&shown, &e);
                                me.note_attempt(Verdict::ConnectFailed, since);
                                Err(e)
                            }
                        }
                    });
                    return made.await.map(|cur| (cur, since));
                }
                Admit::WaitUntil(t) => {
                    drop(slot);
                    tokio::time::sleep_until(t.into()).await;
                }
                Admit::Refuse => return Err(not_reconnected(node, left)),
            }
        }
    }

    fn counted(&self) -> u64 {
        let r = self.reconnects.lock().unwrap_or_else(|e| e.into_inner());
        r.counted()
    }

    fn get_db(&self) -> i64 {
        self.client.get_connection_info().redis_settings().db()
    }

    /// What the end of a command taken with `since` says of the server's
    /// reachability.
    fn note_attempt(&self, verdict: Verdict, since: u64) {
        let mut r = self.reconnects.lock().unwrap_or_else(|e| e.into_inner());
        match verdict {
            Verdict::Fine => r.ended(true, since, Instant::now()),
            Verdict::ConnectFailed => r.ended(false, since, Instant::now()),
            Verdict::CommandTimedOut { .. } => {}
        }
    }
}

/// `work` (an attempt to connect, or to find a node, which holds its
/// slot's lock) run in a task of its own, to its end whether or not the
/// caller still waits: a command that stops waiting (its own bound is
/// `dyncert_redis_timeout` too, and often ends first while connecting to a
/// host that drops the packets) neither cancels the attempt nor leaves its
/// failure uncounted, which would make every command a new attempt.
/// `what` names the work in the error of a task that did not finish (a
/// panic, the runtime shutting down).
async fn in_own_task<T: Send + 'static>(
    what: &str,
    work: impl std::future::Future<Output = RedisResult<T>> + Send + 'static,
) -> RedisResult<T> {
    match tokio::spawn(work).await {
        Ok(r) => r,
        Err(e) => Err(std::io::Error::other(format!("{what}: {e}")).into()),
    }
}

/// The error of a command not sent because `node` failed to connect
/// moments ago and the next attempt is `left` away ([`Reconnects`]).
fn not_reconnected(node: &str, left: Duration) -> redis::RedisError {
    std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        format!(
            "redis node \"{node}\" failed to connect moments ago; next attempt in {} ms",
            left.as_millis()
        ),
    )
    .into()
}

/// One command on a single server's, a Sentinel primary's or a Cluster
/// connection:
/// how it ended goes to the connection's health, and what that says to
/// the notes, also when the caller stops waiting (its future is dropped).
struct Watch<'a> {
    health: &'a Mutex<ConnHealth>,
    notes: &'a Notes,
    node: &'a str,
    timeout: Duration,
    started: Instant,
    ended: bool,
}

impl Watch<'_> {
    fn end(&mut self, end: CommandEnd, error: Option<&redis::RedisError>) -> Verdict {
        let node = self.node;
        self.end_at(node, end, error)
    }

    /// [`Self::end`], with the node an error names (a Cluster node that
    /// failed) instead of the watch's.
    fn end_at(
        &mut self,
        node: &str,
        end: CommandEnd,
        error: Option<&redis::RedisError>,
    ) -> Verdict {
        self.ended = true;
        let verdict = self
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(end);
        match verdict {
            Verdict::Fine => {}
            Verdict::ConnectFailed => match error {
                Some(e) => self.notes.connect_failed(node, e),
                None => self.notes.connect_failed(
                    node,
                    &std::io::Error::from(std::io::ErrorKind::TimedOut).into(),
                ),
            },
            Verdict::CommandTimedOut { .. } => self.notes.command_timed_out(node, self.timeout),
        }
        verdict
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if !self.ended {
            if let Some(end) = abandoned(self.started.elapsed(), self.timeout) {
                let _ = self.end(end, None);
            }
        }
    }
}

impl RedisConn {
    /// Whether a record and its index entry can share a MULTI/EXEC (see
    /// [`Topology::spans_slots_in_transactions`]).
    pub fn spans_slots_in_transactions(&self) -> bool {
        !matches!(self, RedisConn::Cluster(_))
    }

    /// Where this connection's notes go.
    pub(super) fn notes(&self) -> &Notes {
        match self {
            RedisConn::Single { notes, .. } => notes,
            RedisConn::Cluster(c) => &c.notes,
            RedisConn::Sentinel(s) => &s.notes,
        }
    }
}

/// A request: one command or a pipeline's slice.
enum Req<'a> {
    Cmd(&'a Cmd),
    Pipe(&'a redis::Pipeline, usize, usize),
}

impl Req<'_> {
    fn read_only(&self) -> bool {
        fn name(c: &Cmd) -> &[u8] {
            match c.args_iter().next() {
                Some(redis::Arg::Simple(n)) => n,
                _ => b"",
            }
        }
        match self {
            Req::Cmd(c) => is_read_only([name(c)]),
            Req::Pipe(p, ..) => is_read_only(p.cmd_iter().map(name)),
        }
    }

    async fn send<C: ConnectionLike>(&self, c: &mut C) -> RedisResult<Vec<Value>> {
        match *self {
            Req::Cmd(cmd) => c.req_packed_command(cmd).await.map(|v| vec![v]),
            Req::Pipe(p, offset, count) => c.req_packed_commands(p, offset, count).await,
        }
    }
}

fn first(mut v: Vec<Value>) -> Value {
    if v.is_empty() {
        Value::Nil
    } else {
        v.swap_remove(0)
    }
}

impl RedisConn {
    async fn run(&mut self, req: Req<'_>) -> RedisResult<Vec<Value>> {
        match self {
            RedisConn::Single { conn, node, notes } => {
                let (cur, since) = conn.current(node, notes).await?;
                let mut watch = Watch {
                    health: &cur.health,
                    notes,
                    node,
                    timeout: conn.timeout,
                    started: Instant::now(),
                    ended: false,
                };
                let r = req.send(&mut cur.conn.clone()).await;
                let verdict = match &r {
                    Ok(_) => watch.end(CommandEnd::Answered, None),
                    Err(e) => watch.end(command_end(e), Some(e)),
                };
                conn.note_attempt(verdict, since);
                r
            }
            RedisConn::Cluster(c) => c.run(req).await,
            RedisConn::Sentinel(s) => s.run(req).await,
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move { self.run(Req::Cmd(cmd)).await.map(first) })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move { self.run(Req::Pipe(pipeline, offset, count)).await })
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single { conn, .. } => conn.get_db(),
            RedisConn::Cluster(_) => 0,
            RedisConn::Sentinel(s) => s.node_info_db(),
        }
    }
}

/// A Cluster connection, made on first use (and again while making it
/// fails), and replaced by a new one after a command timed out on it (see
/// [`super::health`]): every clone of the handle moves to the new one;
/// commands in flight finish on the old one.
pub struct LazyCluster {
    client: ClusterClient,
    conn: tokio::sync::Mutex<Option<ClusterCurrent>>,
    /// Held by the one command that replaces a suspect connection.
    replacing: tokio::sync::Mutex<()>,
    timeout: Duration,
    shown: String,
    notes: Notes,
}

/// The Cluster connection in use, what its commands said of it, and when
/// the last replacement (that made it, or failed and kept it) was tried.
#[derive(Clone)]
struct ClusterCurrent {
    conn: ClusterConnection,
    health: Arc<Mutex<ConnHealth>>,
    replaced: Option<Instant>,
}

impl ClusterCurrent {
    fn suspect(&self) -> bool {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .suspect()
    }
}

impl LazyCluster {
    /// A new connection (the slot map asked of the configured nodes), within
    /// the timeout.
    async fn connect(&self) -> RedisResult<ClusterConnection> {
        match tokio::time::timeout(self.timeout, self.client.get_async_connection()).await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, e.to_string()).into()),
        }
    }

    /// The connection for the next command: a new one when the current one
    /// is suspect ([`replace_cluster`]).
    async fn get(&self) -> RedisResult<ClusterCurrent> {
        let mut slot = self.conn.lock().await;
        let Some(cur) = slot.clone() else {
            // First use: every command waits for the one connection.
            let cur = ClusterCurrent {
                conn: self.connect().await?,
                health: Arc::default(),
                replaced: None,
            };
            *slot = Some(cur.clone());
            return Ok(cur);
        };
        drop(slot);
        if !replace_cluster(cur.suspect(), cur.replaced.map(|t| t.elapsed())) {
            return Ok(cur);
        }
        // One command replaces it; the others keep using it meanwhile: when
        // one node hangs, connecting to it holds the replacement up, and the
        // commands to the other nodes must not wait for that.
        let Ok(_replacing) = self.replacing.try_lock() else {
            return Ok(cur);
        };
        // Another command may have replaced it since it was read.
        if let Some(now) = &*self.conn.lock().await {
            if !Arc::ptr_eq(&now.health, &cur.health) {
                return Ok(now.clone());
            }
        }
        self.notes.reconnected(&self.shown);
        // The attempt counts before it is made: the old connection is kept
        // as a new one (not replaced again until it answered, and not
        // within the interval), so a caller that stops waiting (its own
        // timeout, often equal to the connect's) and drops this future
        // mid-connect does not leave it suspect for the next command to
        // try again at once: a cluster that hangs whole costs one attempt
        // per time it answered, not one per command.
        let kept = ClusterCurrent {
            conn: cur.conn,
            health: Arc::default(),
            replaced: Some(Instant::now()),
        };
        *self.conn.lock().await = Some(kept.clone());
        let next = match self.connect().await {
            Ok(conn) => ClusterCurrent {
                conn,
                health: Arc::default(),
                replaced: Some(Instant::now()),
            },
            Err(e) => {
                self.notes.connect_failed(&self.shown, &e);
                return Ok(kept);
            }
        };
        *self.conn.lock().await = Some(next.clone());
        Ok(next)
    }

    /// The node an error names (a redirection's), or the configured ones.
    fn node_of(&self, e: &redis::RedisError) -> String {
        match e.redirect_node() {
            Some((h, p)) => format!("{h}:{p}"),
            None => self.shown.clone(),
        }
    }

    async fn run(&self, req: Req<'_>) -> RedisResult<Vec<Value>> {
        let cur = match self.get().await {
            Ok(c) => c,
            Err(e) => {
                if is_connection_failure(&e) {
                    self.notes.connect_failed(&self.node_of(&e), &e);
                }
                return Err(e);
            }
        };
        let mut conn = cur.conn.clone();
        // Also notes a command the caller stopped waiting for (its own
        // timeout often ends the wait before the crate's).
        let mut watch = Watch {
            health: &cur.health,
            notes: &self.notes,
            node: &self.shown,
            timeout: self.timeout,
            started: Instant::now(),
            ended: false,
        };
        let r = req.send(&mut conn).await;
        let _ = match &r {
            Ok(_) => watch.end(CommandEnd::Answered, None),
            Err(e) => watch.end_at(&self.node_of(e), command_end(e), Some(e)),
        };
        r
    }
}

/// How often a Sentinel connection asks the sentinels whether the primary
/// it uses is still the primary.
pub const PRIMARY_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A primary's address, its client, and a connection to it that answered
/// `ROLE` as a primary.
type Found = (String, Client, MultiplexedConnection);

/// The primary's address, its client, a connection to it, when the
/// sentinels last named it, and what the connection's commands said of it
/// (a suspect connection is replaced: see [`super::health`]).
#[derive(Clone)]
struct Primary {
    addr: String,
    client: Client,
    conn: MultiplexedConnection,
    checked: Instant,
    health: Arc<Mutex<ConnHealth>>,
}

impl Primary {
    fn suspect(&self) -> bool {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .suspect()
    }
}

/// One listed sentinel, and the connection to it (made on first use, and
/// again after a failure).
struct SentinelNode {
    node: Node,
    client: Client,
    /// Held while the connection is being made ([`SentinelConn::sentinel_conn`]).
    conn: Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>>,
}

/// A replica's connection that answered `ROLE` as a replica, kept for the
/// reads the primary cannot answer, and when a majority of the sentinels
/// last listed it.
struct Replica {
    addr: String,
    conn: MultiplexedConnection,
    listed: Instant,
}

/// The primary of a Sentinel-managed service: asked of the sentinels on
/// first use and again after the primary failed or turned read-only (a
/// failover demoted it). A read the primary cannot answer goes to a
/// replica the sentinels name. Every listed sentinel is asked, and only
/// an address a majority of them name is ever connected to (and sent the
/// credentials): one sentinel that lies decides nothing.
pub struct SentinelConn {
    db: i64,
    sentinels: Vec<SentinelNode>,
    service: String,
    /// The primary's and replicas' credentials.
    auth: Auth,
    /// Held while the primary is found ([`SentinelConn::primary`]).
    primary: Arc<tokio::sync::Mutex<Option<Primary>>>,
    /// When a command may look for the primary again after finding none
    /// that answers ([`Reconnects`]; reads go to a replica meanwhile).
    reconnects: Mutex<Reconnects>,
    /// The replica the reads go to while the primary does not answer;
    /// held while one is found ([`SentinelConn::replica`]).
    replica: Arc<tokio::sync::Mutex<Option<Replica>>>,
    /// When a read may look for a replica again after finding none that
    /// answers, or after the one kept failed ([`Reconnects`]).
    replica_reconnects: Mutex<Reconnects>,
    config: AsyncConnectionConfig,
    timeout: Duration,
    shown: String,
    notes: Notes,
}

impl SentinelConn {
    fn node_info_db(&self) -> i64 {
        self.db
    }

    fn timed_out(what: &str) -> redis::RedisError {
        std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out")).into()
    }

    /// `cmd`'s answer from one sentinel, within the timeout (connecting,
    /// and checking that it is a sentinel, included). A failure is noted
    /// with the sentinel's address and drops its connection.
    async fn ask<T: FromRedisValue>(&self, s: &SentinelNode, cmd: &Cmd) -> RedisResult<T> {
        let asked = async {
            let mut c = self.sentinel_conn(s).await?;
            cmd.query_async(&mut c).await
        };
        let r = match tokio::time::timeout(self.timeout, asked).await {
            Ok(r) => r,
            Err(_) => Err(Self::timed_out("asking the sentinel")),
        };
        if let Err(e) = &r {
            // Unless a new connection is being made meanwhile.
            if let Ok(mut slot) = s.conn.try_lock() {
                *slot = None;
            }
            self.notes.connect_failed(&s.node.to_string(), e);
        }
        r
    }

    /// The connection to the sentinel `s`, made (and checked with `ROLE`)
    /// when there is none, in a task of its own: asking the sentinels ends
    /// as soon as a majority agrees, which drops the question to a slower
    /// one, and a sentinel that must reconnect (TCP, `AUTH`, `ROLE`) is
    /// slower than the others every time. Made in the question's future,
    /// its connection was dropped half-made every time, and made again at
    /// the next question: two new connections a second to that sentinel
    /// for as long as it stayed slower. The task keeps the slot's lock
    /// until it is done, so there is one connection attempt at a time.
    async fn sentinel_conn(&self, s: &SentinelNode) -> RedisResult<MultiplexedConnection> {
        let mut slot = Arc::clone(&s.conn).lock_owned().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let (client, config, timeout) = (s.client.clone(), self.config.clone(), self.timeout);
        in_own_task("connecting to the sentinel", async move {
            let made = tokio::time::timeout(timeout, async {
                let mut c = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                let role: Role = redis::cmd("ROLE").query_async(&mut c).await?;
                if !matches!(role, Role::Sentinel { .. }) {
                    return Err(std::io::Error::other("not a sentinel (ROLE)").into());
                }
                Ok::<_, redis::RedisError>(c)
            })
            .await;
            let c = match made {
                Ok(r) => r?,
                Err(_) => return Err(Self::timed_out("connecting to the sentinel")),
            };
            *slot = Some(c.clone());
            Ok(c)
        })
        .await
    }

    /// The primary's client, and a connection to it: the address a
    /// majority of the listed sentinels name (all asked at once; decided
    /// as soon as a majority agrees, so a sentinel that hangs costs
    /// nothing then), once it calls itself primary ([`Self::connect_primary`]).
    /// Otherwise an error, logged with every sentinel's answer.
    async fn primary_client(&self) -> RedisResult<Found> {
        let node = self.agreed_node().await?;
        self.connect_node(&node).await
    }

    /// The primary's address a majority of the listed sentinels names
    /// (asked as in [`Self::primary_client`]), without connecting to it:
    /// the routine checks ask only this, so that a worker does not open
    /// (and drop) a connection to the primary every second.
    async fn agreed_node(&self) -> RedisResult<Node> {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("GET-MASTER-ADDR-BY-NAME").arg(&self.service);
        let cmd = &cmd;
        // Not answered yet counts as no answer.
        let mut answers: Vec<(Node, SentinelAnswer)> = self
            .sentinels
            .iter()
            .map(|s| (s.node.clone(), SentinelAnswer::Failed))
            .collect();
        let mut asked: FuturesUnordered<_> = self
            .sentinels
            .iter()
            .enumerate()
            .map(|(i, s)| async move {
                let answer = match self.ask::<Option<(String, String)>>(s, cmd).await {
                    Ok(Some((host, port))) => match announced_node(&host, &port) {
                        Some(node) => SentinelAnswer::Primary(node),
                        None => SentinelAnswer::Failed,
                    },
                    Ok(None) => SentinelAnswer::Unknown,
                    Err(_) => SentinelAnswer::Failed,
                };
                (i, answer)
            })
            .collect();
        let mut agreed = agreed_primary(&self.service, &answers);
        while let Some((i, answer)) = asked.next().await {
            answers[i].1 = answer;
            agreed = agreed_primary(&self.service, &answers);
            if agreed.is_ok() {
                break;
            }
        }
        drop(asked);
        agreed.map_err(|no| {
            let e: redis::RedisError = std::io::Error::other(no).into();
            self.notes.connect_failed(&self.shown, &e);
            e
        })
    }

    /// A client of `node`, and a connection to it that answered `ROLE`
    /// with primary ([`Self::connect_primary`]).
    async fn connect_node(&self, node: &Node) -> RedisResult<Found> {
        let addr = node.to_string();
        let client = node_client(node, &self.auth, self.db, false, &RedisTls::default())?;
        let conn = self.connect_primary(&addr, &client).await?;
        Ok((addr, client, conn))
    }

    /// A connection to `addr` that answered `ROLE` with primary, within
    /// the timeout; otherwise an error, noted with `addr`.
    async fn connect_primary(
        &self,
        addr: &str,
        client: &Client,
    ) -> RedisResult<MultiplexedConnection> {
        let role = tokio::time::timeout(self.timeout, async {
            let mut c = client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await?;
            let role = redis::cmd("ROLE").query_async::<Role>(&mut c).await?;
            Ok::<_, redis::RedisError>((role, c))
        })
        .await;
        let e = match role {
            Ok(Ok((Role::Primary { .. }, c))) => return Ok(c),
            Ok(Ok(_)) => std::io::Error::other(
                "the primary the sentinels name does not call itself primary (ROLE)",
            )
            .into(),
            Ok(Err(e)) => e,
            Err(_) => Self::timed_out("checking the primary's ROLE"),
        };
        self.notes.connect_failed(addr, &e);
        Err(e)
    }

    /// The primary's connection for the next command. The sentinels are
    /// asked again at most once per [`PRIMARY_CHECK_INTERVAL`], and at
    /// once when the connection in use is suspect (a command timed out on
    /// it), which is then replaced ([`ask_sentinels`], [`replace_primary`]).
    async fn primary(self: &Arc<Self>) -> RedisResult<Primary> {
        let mut slot = Arc::clone(&self.primary).lock_owned().await;
        if let Some(p) = slot.clone() {
            // The sentinels' word is checked again at most once per
            // interval: after a failover the old primary may still accept
            // reads (and answer "no such record") until the sentinels get
            // round to demoting it.
            let suspect = p.suspect();
            if !ask_sentinels(suspect, p.checked.elapsed(), PRIMARY_CHECK_INTERVAL) {
                return Ok(p);
            }
            if !suspect {
                // A routine re-check of a primary that answers: claimed
                // under the lock (one per interval, whatever the sentinels
                // answer), asked in the background, so that no command
                // waits while a sentinel that does not answer holds the
                // question up for `dyncert_redis_timeout`.
                let mut claimed = p;
                claimed.checked = Instant::now();
                *slot = Some(claimed.clone());
                drop(slot);
                let me = Arc::clone(self);
                let asked = claimed.clone();
                tokio::spawn(async move { me.recheck(asked).await });
                return Ok(claimed);
            }
            // Suspect: replaced below.
        }
        // No primary, or a suspect one to replace. With none, because none
        // answered moments ago, the command fails at once (a read goes to
        // a replica) until the next attempt is due. A primary in use
        // answered, so a suspect one's replacement is always admitted.
        let since = {
            let r = self.reconnects.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            match r.admit(now, Duration::ZERO) {
                Admit::Connect { since } => since,
                Admit::Refuse | Admit::WaitUntil(_) => {
                    return Err(not_reconnected(&self.shown, r.wait_left(now)));
                }
            }
        };
        // In a task of its own, which keeps the lock until it is done
        // ([`in_own_task`]).
        let me = Arc::clone(self);
        in_own_task("finding the primary", async move {
            let found = me.find_primary(&mut slot).await;
            me.attempted(found, since)
        })
        .await
    }

    /// The primary found (`slot` empty) or a suspect one's replacement,
    /// installed in `slot`; otherwise why there is none (`slot` then
    /// empty, and the next command asks the sentinels again).
    async fn find_primary(&self, slot: &mut Option<Primary>) -> RedisResult<Primary> {
        let Some(p) = slot.clone() else {
            let (addr, client, conn) = self.primary_client().await?;
            return Ok(self.install(slot, addr, client, conn, Instant::now()));
        };
        // Suspect: its commands time out, so nothing is lost by asking
        // under the lock, and every command waits for the new connection.
        let (named, found) = self.named(&p, true).await;
        if !replace_primary(true, named) {
            return Ok(p);
        }
        self.notes.reconnected(&p.addr);
        match found {
            Some(Ok((addr, client, conn))) => {
                Ok(self.install(slot, addr, client, conn, Instant::now()))
            }
            // Named, but it does not answer as a primary (yet: a replica
            // being promoted; or it hangs): not the old address instead,
            // which a majority no longer names, or which just failed.
            // The next command asks the sentinels again.
            Some(Err(e)) => {
                *slot = None;
                Err(e)
            }
            // Suspect, and the sentinels name nobody: a new connection to
            // the address a majority named last, if it still calls itself
            // primary.
            None => match self.connect_primary(&p.addr, &p.client).await {
                Ok(conn) => {
                    Ok(self.install(slot, p.addr.clone(), p.client.clone(), conn, p.checked))
                }
                Err(e) => {
                    *slot = None;
                    Err(e)
                }
            },
        }
    }

    /// `found`, an attempt to find and connect to the primary, noted for
    /// the next one ([`Reconnects`]).
    fn attempted<T>(&self, found: RedisResult<T>, since: u64) -> RedisResult<T> {
        let mut r = self.reconnects.lock().unwrap_or_else(|e| e.into_inner());
        r.ended(found.is_ok(), since, Instant::now());
        found
    }

    /// The routine re-check of `asked`, the primary in use: when a
    /// majority of the sentinels names another, that one replaces it,
    /// unless `asked` was replaced meanwhile (a timeout, a failure): that
    /// replacement stands ([`install_rechecked`]).
    async fn recheck(&self, asked: Primary) {
        let (named, found) = self.named(&asked, false).await;
        let Some(Ok((addr, client, conn))) = found else {
            return;
        };
        let mut slot = self.primary.lock().await;
        let still_in_use = slot
            .as_ref()
            .is_some_and(|now| Arc::ptr_eq(&now.health, &asked.health));
        if install_rechecked(named, still_in_use) {
            self.install(&mut slot, addr, client, conn, Instant::now());
        }
    }

    /// What a majority of the sentinels names now, compared with `p`,
    /// and when `p` is to be replaced by it ([`replace_primary`];
    /// `suspect` is `p`'s state), a connection to it that answered `ROLE`
    /// as a primary, or why there is none. A primary named again is not
    /// connected to for a routine check; nothing is connected to when no
    /// majority names one primary (`Named::Nobody`).
    async fn named(&self, p: &Primary, suspect: bool) -> (Named, Option<RedisResult<Found>>) {
        // The sentinels cannot be asked, or no majority of them names one
        // primary.
        let Ok(node) = self.agreed_node().await else {
            return (Named::Nobody, None);
        };
        let named = if node.to_string() == p.addr {
            Named::Same
        } else {
            Named::Other
        };
        if !replace_primary(suspect, named) {
            return (named, None);
        }
        (named, Some(self.connect_node(&node).await))
    }

    /// Makes the connection that answered `ROLE` the primary in use.
    fn install(
        &self,
        slot: &mut Option<Primary>,
        addr: String,
        client: Client,
        conn: MultiplexedConnection,
        checked: Instant,
    ) -> Primary {
        // The connection answered `ROLE`: a timeout on it is a command's,
        // not its connecting's (see `super::health`).
        let mut health = ConnHealth::default();
        health.record(CommandEnd::Answered);
        let p = Primary {
            addr,
            client,
            conn,
            checked,
            health: Arc::new(Mutex::new(health)),
        };
        *slot = Some(p.clone());
        // The reads are the primary's again.
        if let Ok(mut replica) = self.replica.try_lock() {
            *replica = None;
        }
        p
    }

    /// The primary's address as the sentinels name it now (for the
    /// invalidation listener, which must move when the primary does).
    pub async fn primary_addr(&self) -> RedisResult<String> {
        self.agreed_node().await.map(|node| node.to_string())
    }

    /// A pub/sub connection to the primary a majority of the sentinels
    /// names (once it answered `ROLE` as a primary), and its address.
    pub async fn pubsub(&self) -> RedisResult<(String, PubSub)> {
        let (node, client, _) = self.primary_client().await?;
        match tokio::time::timeout(self.timeout, client.get_async_pubsub()).await {
            Ok(Ok(p)) => Ok((node, p)),
            Ok(Err(e)) => {
                self.notes.connect_failed(&node, &e);
                Err(e)
            }
            Err(_) => {
                let e = Self::timed_out("subscribing");
                self.notes.connect_failed(&node, &e);
                Err(e)
            }
        }
    }

    /// Drops the connection `used` (not one that replaced it meanwhile).
    async fn forget(&self, used: &Primary) {
        let mut slot = self.primary.lock().await;
        if slot
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(&p.health, &used.health))
        {
            *slot = None;
        }
    }

    async fn run(self: &Arc<Self>, req: Req<'_>) -> RedisResult<Vec<Value>> {
        let mut last = None;
        // Twice: a connection that broke (or a primary that was demoted)
        // is dropped and the primary asked for again.
        for _ in 0..2 {
            let p = match self.primary().await {
                Ok(p) => p,
                Err(e) => {
                    if req.read_only() {
                        return self.read_replica(&req, e).await;
                    }
                    return Err(e);
                }
            };
            let mut conn = p.conn.clone();
            // Also notes a command the caller stopped waiting for (its own
            // timeout usually ends the wait before the crate's).
            let mut watch = Watch {
                health: &p.health,
                notes: &self.notes,
                node: &p.addr,
                timeout: self.timeout,
                started: Instant::now(),
                ended: false,
            };
            match req.send(&mut conn).await {
                Ok(v) => {
                    watch.end(CommandEnd::Answered, None);
                    return Ok(v);
                }
                // A failover demoted it.
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly) =>
                {
                    watch.end(CommandEnd::Answered, None);
                    self.notes.connect_failed(&p.addr, &e);
                    self.forget(&p).await;
                    last = Some(e);
                }
                Err(e) if is_connection_failure(&e) => {
                    watch.end(command_end(&e), Some(&e));
                    // A suspect connection is replaced by `primary`, which
                    // says so; a broken one is dropped here.
                    if !p.suspect() {
                        self.forget(&p).await;
                    }
                    last = Some(e);
                }
                Err(e) => {
                    watch.end(CommandEnd::Answered, None);
                    return Err(e);
                }
            }
        }
        let e = last.unwrap_or_else(|| Self::timed_out("redis"));
        if req.read_only() {
            return self.read_replica(&req, e).await;
        }
        Err(e)
    }

    /// A read the primary could not answer, asked of a replica; the
    /// primary's error when no replica answers either. The replica's
    /// connection is kept for the next reads ([`Self::replica`]).
    async fn read_replica(
        self: &Arc<Self>,
        req: &Req<'_>,
        primary_error: redis::RedisError,
    ) -> RedisResult<Vec<Value>> {
        let Some((addr, mut conn, since)) = self.replica().await else {
            return Err(primary_error);
        };
        let r = req.send(&mut conn).await;
        let failed = matches!(&r, Err(e) if is_connection_failure(e));
        {
            let mut reconnects = self
                .replica_reconnects
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // Broken, or it hangs: the next read looks for a replica
            // again, after the wait a failure sets.
            if r.is_ok() || failed {
                reconnects.ended(r.is_ok(), since, Instant::now());
            }
        }
        match r {
            Ok(v) => {
                self.notes.replica_read(&addr);
                Ok(v)
            }
            Err(e) => {
                if failed {
                    self.notes.connect_failed(&addr, &e);
                    let mut kept = self.replica.lock().await;
                    if kept.as_ref().is_some_and(|r| r.addr == addr) {
                        *kept = None;
                    }
                }
                Err(e)
            }
        }
    }

    /// The replica the reads go to while the primary does not answer, and
    /// the failures counted when it was taken (see [`Reconnects::failed`]):
    /// the one kept, while a majority of the sentinels listed it less than
    /// [`PRIMARY_CHECK_INTERVAL`] ago (asked again after that, and kept
    /// when they still list it); otherwise the first replica a majority
    /// lists that calls itself one (`ROLE`), when [`Reconnects`] admits an
    /// attempt (a read does not wait for one). Before, every read asked
    /// the sentinels and made a new connection to the replica, dropped
    /// after the read: about two hundred connections a second per worker
    /// at a hundred new names a second, for as long as the primary was
    /// down; and a replica that hangs was connected to again by every read.
    async fn replica(self: &Arc<Self>) -> Option<(String, MultiplexedConnection, u64)> {
        // Held while the sentinels are asked: one question at a time, the
        // other reads wait for its answer.
        let mut kept = Arc::clone(&self.replica).lock_owned().await;
        let since = {
            let r = self
                .replica_reconnects
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(k) = kept.as_ref() {
                if k.listed.elapsed() < PRIMARY_CHECK_INTERVAL {
                    return Some((k.addr.clone(), k.conn.clone(), r.counted()));
                }
                r.counted()
            } else {
                match r.admit(Instant::now(), Duration::ZERO) {
                    Admit::Connect { since } => since,
                    Admit::WaitUntil(_) | Admit::Refuse => return None,
                }
            }
        };
        // In a task of its own, which keeps the lock until it is done
        // ([`in_own_task`]).
        let me = Arc::clone(self);
        in_own_task("finding a replica", async move {
            let found = me.find_replica(&mut kept).await;
            let mut r = me
                .replica_reconnects
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            r.ended(found.is_some(), since, Instant::now());
            Ok(found.map(|(addr, conn)| (addr, conn, r.counted())))
        })
        .await
        .ok()
        .flatten()
    }

    /// [`Self::replica`]'s asking and connecting, `kept` held.
    async fn find_replica(
        &self,
        kept: &mut Option<Replica>,
    ) -> Option<(String, MultiplexedConnection)> {
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("REPLICAS").arg(&self.service);
        let answers = futures_util::future::join_all(self.sentinels.iter().map(|s| async {
            let listed = self
                .ask::<Vec<HashMap<String, String>>>(s, &cmd)
                .await
                .ok()?;
            Some(
                listed
                    .into_iter()
                    .take(REPLICAS_MAX)
                    .filter_map(|r| healthy_replica(&r.into_iter().collect::<Vec<_>>()))
                    .collect::<Vec<_>>(),
            )
        }))
        .await;
        let agreed = agreed_replicas(&answers);
        // Still listed: kept.
        if let Some(r) = kept.as_mut() {
            if agreed.iter().any(|n| n.to_string() == r.addr) {
                r.listed = Instant::now();
                return Some((r.addr.clone(), r.conn.clone()));
            }
        }
        *kept = None;
        // The first agreed replica that calls itself one (`ROLE`).
        for node in agreed {
            let addr = node.to_string();
            let Ok(client) = node_client(&node, &self.auth, self.db, false, &RedisTls::default())
            else {
                continue;
            };
            let connected = tokio::time::timeout(self.timeout, async {
                let mut c = client
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await?;
                let role = redis::cmd("ROLE").query_async::<Role>(&mut c).await?;
                Ok::<_, redis::RedisError>((role, c))
            })
            .await;
            let conn = match connected {
                Ok(Ok((Role::Replica { .. }, c))) => c,
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => {
                    self.notes.connect_failed(&addr, &e);
                    continue;
                }
                Err(_) => {
                    self.notes
                        .connect_failed(&addr, &Self::timed_out("connecting to the replica"));
                    continue;
                }
            };
            *kept = Some(Replica {
                addr: addr.clone(),
                conn: conn.clone(),
                listed: Instant::now(),
            });
            return Some((addr, conn));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_and_acme_reads_may_go_to_a_replica_but_no_write() {
        let mut reads = redis::pipe();
        reads.cmd("EXISTS").arg("k");
        for f in ["crt", "key"] {
            reads.cmd("HSTRLEN").arg("k").arg(f);
        }
        assert!(Req::Pipe(&reads, 0, 3).read_only());
        assert!(Req::Cmd(redis::cmd("HMGET").arg("k").arg("crt")).read_only());
        assert!(Req::Cmd(&redis::cmd("GET")).read_only());
        let mut write = redis::pipe();
        write
            .atomic()
            .cmd("DEL")
            .arg("k")
            .cmd("HSET")
            .arg("k")
            .arg("crt")
            .arg("x");
        assert!(!Req::Pipe(&write, 0, 2).read_only());
        assert!(!Req::Cmd(redis::cmd("ZADD").arg("i").arg(1).arg("n")).read_only());
    }

    #[test]
    fn tls_material_never_reaches_debug_output() {
        let tls = RedisTls {
            ca: Some(b"-----BEGIN CERTIFICATE-----".to_vec()),
            client: Some((b"CERT".to_vec(), b"PRIVATE KEY".to_vec())),
        };
        let shown = format!("{tls:?}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
        assert!(!shown.contains("BEGIN"), "{shown}");
    }

    #[test]
    fn repeated_failures_of_one_node_are_counted_but_logged_once_per_interval() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let notes = Notes::new(move |n| sink.lock().unwrap().push(n));
        let e =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        notes.connect_failed("a:1", &e);
        notes.connect_failed("a:1", &e);
        notes.connect_failed("b:2", &e);
        let logged: Vec<bool> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|n| match n {
                RedisNote::ConnectFailed { logged, .. }
                | RedisNote::ReplicaRead { logged, .. }
                | RedisNote::CommandTimedOut { logged, .. }
                | RedisNote::Reconnected { logged, .. } => *logged,
                RedisNote::ScriptReadRefused { .. } => true,
            })
            .collect();
        assert_eq!(logged, [true, false, true]);
        assert!(is_connection_failure(&e));
    }
}
