//! The test kit of dyncert, shared by the integration tests (`tests/`) and
//! the benchmark (`bench/`): everything they start is real and local.
//!
//! - [`pki`]: a root, an intermediate, leaves (EC P-256), the static
//!   default certificate, client CAs and certificates; bulk generation on
//!   all CPUs.
//! - [`redis`]: a `redis-server` on a free port (stop, restart, SIGSTOP),
//!   RESP commands and pipelines, records; [`monitor`]: MONITOR;
//!   [`deploy`]: TLS (client certificates, ACL users), Sentinel and
//!   Cluster deployments.
//! - [`nginx`]: the NGINX the module was built against, from an `http {}`
//!   template and one [`NginxOpts`]; `nginx -t`; reloads; log checks;
//!   [`conf`]: the template pieces many tests share; [`stack`]: a PKI, a
//!   Redis, maybe the certificate API, and an nginx in one value.
//! - [`api`]: the certificate API (`dyncert_api`), programmable per name.
//! - [`client`]: the TLS client ([`Request`] / [`Exchange`]), also
//!   handshake-only for the benchmark; [`http`]: response framing,
//!   keep-alive connections, metrics; [`net`]: source addresses, PROXY
//!   protocol, raw ClientHellos.
//! - [`module`]: where the module and nginx are, and the guarantee that
//!   they are built from the current sources before the first nginx
//!   starts.
//! - [`fixture`]: pieces unit and end-to-end tests both build (X.509
//!   names, RSA keys of a chosen size or fault, a record with a second
//!   pair, a process's RSS).
//!
//! Everything started here binds 127.0.0.1, lives in a temp dir, and is
//! killed on Drop (also when a test panics, and with the test process).

pub mod api;
pub mod blackhole;
pub mod blackhole_cluster;
pub mod client;
pub mod conf;
pub mod deploy;
pub mod fixture;
pub mod http;
pub mod module;
pub mod monitor;
pub mod net;
pub mod nginx;
pub mod pki;
pub mod plain;
pub mod process;
pub mod redis;
pub mod softhsm;
pub mod stack;

pub use api::{json_string, ApiReply, ApiRequest, CertApi, API_PATH};
pub use blackhole::BlackholeProxy;
pub use blackhole_cluster::ProxiedCluster;
pub use client::{
    is_unrecognized_name, tls_burst, Exchange, HelloSent, Request, TlsConn, TlsSide, IO_TIMEOUT,
};
pub use conf::{
    http_block, metrics_http, redis_http, source_server, worker_metrics_http, METRICS_SERVER,
    SOURCE_SERVER, WORKER_METRICS_SERVER,
};
pub use deploy::{
    sentinels_naming, ClusterTls, RedisCluster, RedisSentinel, TlsRedis, TlsRedisOpts,
    SENTINEL_SERVICE,
};
pub use module::{ensure_fresh_module, module_path, nginx_and_openssl, nginx_bin, profile_dir};
pub use monitor::{Monitor, Observed};
pub use net::{
    connect_from, has_ipv6_loopback, proxy_v1, proxy_v2, raw_client_hello, send_raw_client_hello,
};
pub use nginx::{index_page, render, ConfigTest, Nginx, NginxOpts};
pub use pki::{dns_sans, serial_hex, Issued, Leaf, LeafOpts, LeafPem, Pki, DEFAULT_NAME};
pub use plain::{scrape_metrics, KeepAlive, Metrics};
pub use process::{
    child_pids, die_with_parent, free_port, poll, signal, tail, write_file, TempDir,
    STARTUP_DEADLINE,
};
pub use redis::{
    encode_command, read_reply, redis_command, redis_command_timeout, Redis, RedisConn, Reply,
    DEFAULT_PREFIX,
};
pub use softhsm::{SoftHsm, ENGINE_SO, SOFTHSM_MODULE, SOFTHSM_PIN};
pub use stack::{ApiStack, Stack};
