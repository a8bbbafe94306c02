//! A `redis-server` of our own on a free port, and RESP spoken to it
//! directly: one command per connection (the server may be restarted
//! between two), a connection of one's own for timing, and pipelines for
//! bulk loads.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::client::IO_TIMEOUT;
use crate::pki::{Leaf, LeafPem, Pki};
use crate::process::{die_with_parent, free_port, poll, signal, TempDir, STARTUP_DEADLINE};

/// Key prefix of certificate records (the `dyncert_redis_prefix` default).
pub const DEFAULT_PREFIX: &str = "dyncert:cert:";

/// A RESP reply, as far as the kit needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// Reads one reply.
pub fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches("\r\n");
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, line.to_string());
    if line.is_empty() {
        return Err(bad());
    }
    let (kind, rest) = line.split_at(1);
    Ok(match kind {
        "+" => Reply::Status(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Reply::Bulk(Some(buf))
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Reply::Array(None)
            } else {
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(read_reply(r)?);
                }
                Reply::Array(Some(items))
            }
        }
        _ => return Err(bad()),
    })
}

/// One command in RESP, ready to send (or to queue in a pipeline).
pub fn encode_command<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn connect(port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// One command on a fresh connection (the server may have been restarted
/// between calls).
pub fn redis_command(port: u16, args: &[&str]) -> Result<Reply, String> {
    redis_command_timeout(port, args, IO_TIMEOUT)
}

/// `redis_command` with a timeout of its own (for a server that may hang).
pub fn redis_command_timeout(port: u16, args: &[&str], timeout: Duration) -> Result<Reply, String> {
    let mut s = connect(port, timeout).map_err(|e| e.to_string())?;
    s.write_all(&encode_command(args))
        .map_err(|e| e.to_string())?;
    read_reply(&mut BufReader::new(s)).map_err(|e| e.to_string())
}

/// A connection kept open for many commands, one at a time.
pub struct RedisConn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl RedisConn {
    /// One command and its reply.
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Reply, String> {
        self.writer
            .write_all(&encode_command(args))
            .map_err(|e| format!("write: {e}"))?;
        read_reply(&mut self.reader).map_err(|e| format!("read: {e}"))
    }
}

/// A `redis-server` of our own on a free port, killed on Drop.
pub struct Redis {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
    starts: u32,
    /// Extra `redis-server` arguments (TLS, ACL users, cluster mode).
    args: Vec<String>,
    /// A configuration file to start from (Sentinel needs one it can
    /// rewrite), written into the server's directory.
    conf: Option<String>,
}

impl Redis {
    /// Starts a server and waits until it answers PING.
    pub fn start() -> Redis {
        let mut r = Redis::reserve();
        r.start_server();
        r
    }

    /// A free port for a server that is not running yet (`start_server`
    /// starts it): "Redis down when nginx starts".
    pub fn reserve() -> Redis {
        Redis {
            port: free_port(),
            dir: TempDir::new("redis"),
            child: None,
            starts: 0,
            args: Vec::new(),
            conf: None,
        }
    }

    /// Starts a server with extra `redis-server` arguments (they come
    /// after the kit's own, so they may override them).
    pub fn start_with<S: AsRef<str>>(args: &[S]) -> Redis {
        let mut r = Redis::reserve();
        r.args = args.iter().map(|a| a.as_ref().to_owned()).collect();
        r.start_server();
        r
    }

    /// Starts `redis-server CONF --sentinel` (`conf` may use `@PORT@`).
    pub fn start_sentinel(conf: &str) -> Redis {
        let mut r = Redis::reserve();
        r.conf = Some(conf.replace("@PORT@", &r.port.to_string()));
        r.args = vec!["--sentinel".into()];
        r.start_server();
        r
    }

    /// The server's own directory (certificates, logs, configuration).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The server's log so far (for a test's failure message).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The `dyncert_redis` URL of this server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join(format!("redis-{}.log", self.starts))
    }

    /// Starts (or restarts) the server on the same port, with an empty
    /// dataset (no persistence).
    pub fn start_server(&mut self) {
        assert!(self.child.is_none(), "redis already running");
        self.starts += 1;
        let log = fs::File::create(self.log_path()).expect("redis log file");
        let mut cmd = Command::new("redis-server");
        if let Some(conf) = &self.conf {
            let path = self.dir.path().join("redis.conf");
            fs::write(&path, conf).expect("redis.conf");
            cmd.arg(path);
        }
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .expect("spawn redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let port = self.port;
        let up = poll(STARTUP_DEADLINE, Duration::from_millis(20), || {
            matches!(redis_command(port, &["PING"]), Ok(Reply::Status(ref s)) if s == "PONG")
                .then_some(())
        });
        if up.is_none() {
            let log = fs::read_to_string(self.log_path()).unwrap_or_default();
            panic!("redis-server on port {port} did not answer PING:\n{log}");
        }
    }

    /// Stops the server (SIGKILL, as a crash) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis is not running").id()
    }

    /// SIGSTOP: the server keeps its sockets but answers nothing, which is
    /// what a hung Redis looks like to a client.
    pub fn pause(&self) {
        assert!(signal(self.pid(), libc::SIGSTOP), "SIGSTOP redis");
    }

    pub fn resume(&self) {
        assert!(signal(self.pid(), libc::SIGCONT), "SIGCONT redis");
    }

    /// One command; panics on an error reply or a connection failure.
    pub fn cmd(&self, args: &[&str]) -> Reply {
        match redis_command(self.port, args) {
            Ok(Reply::Error(e)) => panic!("redis {args:?}: {e}"),
            Ok(r) => r,
            Err(e) => panic!("redis {args:?}: {e}"),
        }
    }

    /// Calls of `command` (lower case) in its `INFO commandstats`.
    pub fn calls(&self, command: &str) -> u64 {
        let Reply::Bulk(Some(info)) = self.cmd(&["INFO", "commandstats"]) else {
            panic!("INFO commandstats");
        };
        let info = String::from_utf8_lossy(&info).into_owned();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    /// Connections the server (or sentinel) has accepted in all, less the
    /// one this question takes (`INFO stats`, `total_connections_received`).
    /// Between two counts, the first count's own connection is included.
    pub fn connections_received(&self) -> u64 {
        let Reply::Bulk(Some(info)) = self.cmd(&["INFO", "stats"]) else {
            panic!("INFO stats");
        };
        let info = String::from_utf8_lossy(&info).into_owned();
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .map(|n| n.trim().parse::<u64>().expect("total_connections_received"))
            .expect("total_connections_received")
            - 1
    }

    /// A connection of its own (for commands timed one by one).
    pub fn connect(&self) -> RedisConn {
        let writer = connect(self.port, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to redis on {}: {e}", self.port));
        let reader = BufReader::new(writer.try_clone().unwrap());
        RedisConn { writer, reader }
    }

    /// Sends `commands` (from `encode_command`) pipelined on one connection
    /// while a second thread reads the replies, and returns them in order;
    /// panics on an error reply. For bulk loads: 100,000 records take a
    /// round trip, not 100,000.
    pub fn pipeline<I>(&self, commands: I) -> Vec<Reply>
    where
        I: IntoIterator<Item = Vec<u8>>,
    {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        // The reply to this marks the end (replies come in order).
        let end = format!(
            "dyncert-pipeline-end-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut s = connect(self.port, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to redis on {}: {e}", self.port));
        // A large load keeps the server busy longer than one I/O timeout.
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let reader_stream = s.try_clone().unwrap();
        let end_reply = Reply::Bulk(Some(end.clone().into_bytes()));
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(reader_stream);
            let mut replies = Vec::new();
            loop {
                match read_reply(&mut r) {
                    Ok(reply) if reply == end_reply => return replies,
                    Ok(Reply::Error(e)) => panic!("redis pipeline: error reply {e}"),
                    Ok(reply) => replies.push(reply),
                    Err(e) => panic!("redis pipeline: {e}"),
                }
            }
        });
        let mut buf = Vec::with_capacity(1 << 20);
        for c in commands {
            buf.extend_from_slice(&c);
            if buf.len() > 1 << 20 {
                s.write_all(&buf).expect("redis pipeline write");
                buf.clear();
            }
        }
        buf.extend(encode_command(&["ECHO", &end]));
        s.write_all(&buf).expect("redis pipeline write");
        reader.join().expect("redis pipeline reader")
    }

    /// Stores a certificate record the way an issuer would.
    pub fn hset_cert(&self, name: &str, crt: &str, key: &str) {
        self.hset_cert_key(&format!("{DEFAULT_PREFIX}{name}"), crt, key);
    }

    /// Stores a certificate record under a full key (custom prefixes).
    pub fn hset_cert_key(&self, key_name: &str, crt: &str, key: &str) {
        self.cmd(&["HSET", key_name, "crt", crt, "key", key]);
    }

    pub fn put_leaf(&self, name: &str, leaf: &Leaf) {
        self.hset_cert(name, &leaf.chain_pem, &leaf.key_pem);
    }

    /// Stores `leaf` for `name` with extra record fields (per-tenant
    /// policy: `allow`, `client_ca`), replacing any previous record so no
    /// field of an earlier test step lingers.
    pub fn put_leaf_with(&self, name: &str, leaf: &Leaf, fields: &[(&str, &str)]) {
        let key = format!("{DEFAULT_PREFIX}{name}");
        self.cmd(&["DEL", &key]);
        let mut args = vec![
            "HSET",
            key.as_str(),
            "crt",
            &leaf.chain_pem,
            "key",
            &leaf.key_pem,
        ];
        for (k, v) in fields {
            args.push(k);
            args.push(v);
        }
        self.cmd(&args);
    }

    /// Stores each leaf's record under its name, in one pipeline.
    pub fn put_leaves_pem(&self, pki: &Pki, leaves: &[LeafPem]) {
        self.pipeline(leaves.iter().map(|l| {
            let key = format!("{DEFAULT_PREFIX}{}", l.name);
            encode_command(&["HSET", &key, "crt", &l.chain_pem(pki), "key", &l.key_pem])
        }));
    }

    /// The fields of `name`'s record (empty when there is none). A MONITOR
    /// sees this HGETALL like one of the module's: read records after the
    /// counting is done.
    pub fn record(&self, name: &str) -> Vec<(String, String)> {
        let key = format!("{DEFAULT_PREFIX}{name}");
        let Reply::Array(Some(items)) = self.cmd(&["HGETALL", &key]) else {
            panic!("HGETALL {key}: not an array");
        };
        let text = |r: &Reply| match r {
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("HGETALL {key}: unexpected item {other:?}"),
        };
        items
            .chunks(2)
            .map(|kv| (text(&kv[0]), text(&kv[1])))
            .collect()
    }

    /// The entries of the stream `key` (`XRANGE key - +`), oldest first,
    /// each as its fields (empty when there is no such stream).
    pub fn stream_entries(&self, key: &str) -> Vec<std::collections::BTreeMap<String, String>> {
        let text = |r: &Reply| match r {
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("XRANGE {key}: unexpected item {other:?}"),
        };
        let Reply::Array(Some(items)) = self.cmd(&["XRANGE", key, "-", "+"]) else {
            panic!("XRANGE {key}: not an array");
        };
        items
            .iter()
            .map(|item| match item {
                Reply::Array(Some(parts)) => match parts.get(1) {
                    Some(Reply::Array(Some(fields))) => fields
                        .chunks(2)
                        .map(|kv| (text(&kv[0]), text(&kv[1])))
                        .collect(),
                    other => panic!("XRANGE {key}: entry fields {other:?}"),
                },
                other => panic!("XRANGE {key}: entry {other:?}"),
            })
            .collect()
    }

    /// One field of `name`'s record.
    pub fn record_field(&self, name: &str, field: &str) -> Option<String> {
        self.record(name)
            .into_iter()
            .find(|(k, _)| k == field)
            .map(|(_, v)| v)
    }

    /// `TTL` of `name`'s record in seconds: -2 when absent, -1 when it
    /// never expires.
    pub fn ttl(&self, name: &str) -> i64 {
        match self.cmd(&["TTL", &format!("{DEFAULT_PREFIX}{name}")]) {
            Reply::Int(n) => n,
            other => panic!("TTL: {other:?}"),
        }
    }

    /// `PUBLISH`; returns how many subscribers received the message.
    pub fn publish(&self, channel: &str, message: &str) -> i64 {
        match self.cmd(&["PUBLISH", channel, message]) {
            Reply::Int(n) => n,
            other => panic!("PUBLISH: {other:?}"),
        }
    }

    /// Subscribers of `channel` (`PUBSUB NUMSUB`).
    pub fn subscribers(&self, channel: &str) -> i64 {
        match self.cmd(&["PUBSUB", "NUMSUB", channel]) {
            Reply::Array(Some(items)) => match items.get(1) {
                Some(Reply::Int(n)) => *n,
                other => panic!("PUBSUB NUMSUB: {other:?}"),
            },
            other => panic!("PUBSUB NUMSUB: {other:?}"),
        }
    }

    /// Waits until `channel` has at least `n` subscribers; false on timeout.
    pub fn wait_subscribers(&self, channel: &str, n: i64, deadline: Duration) -> bool {
        poll(deadline, Duration::from_millis(20), || {
            (self.subscribers(channel) >= n).then_some(())
        })
        .is_some()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped process still dies of SIGKILL, but let it run so the
            // kernel tears its sockets down promptly.
            signal(child.id(), libc::SIGCONT);
        }
        self.stop();
    }
}
