//! A TCP proxy that goes silent on demand, as a NAT, conntrack table or
//! load balancer does when it forgets a flow: once frozen, it stops
//! forwarding (both ways) on every connection it accepted before, except
//! those that sent SUBSCRIBE (a subscription's flow stays alive), and
//! keeps them open; connections accepted after the freeze are forwarded
//! as usual. [`BlackholeProxy::hang`] silences every connection, those
//! accepted after it too (a node that hangs). [`BlackholeProxy::start_delayed`]
//! also holds every chunk it forwards for a while (a node farther away
//! than the others).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::client::Request;
use crate::conf::{http_block, source_server, METRICS_SERVER};
use crate::nginx::{Nginx, NginxOpts};
use crate::pki::{Leaf, Pki};
use crate::plain::scrape_metrics;
use crate::process::{free_port, poll, tail};
use crate::redis::Redis;

/// A TCP proxy to a redis-server on 127.0.0.1; see the module's comment.
pub struct BlackholeProxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    freeze: Arc<AtomicBool>,
    hang: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
}

/// Forwards `from` to `to` until the flow is frozen (and not a
/// subscription's) or the proxy hangs, then swallows what arrives and
/// keeps both open.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    [frozen, hang, subscription]: [Arc<AtomicBool>; 3],
    upstream: bool,
    delay: Duration,
) {
    let silent = || {
        hang.load(Ordering::SeqCst)
            || (frozen.load(Ordering::SeqCst) && !subscription.load(Ordering::SeqCst))
    };
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if upstream
            && buf[..n]
                .windows(9)
                .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
        {
            subscription.store(true, Ordering::SeqCst);
        }
        if silent() {
            while from.read(&mut buf).is_ok_and(|n| n > 0) {}
            return;
        }
        if !delay.is_zero() {
            thread::sleep(delay);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl BlackholeProxy {
    /// Listens on a free port and forwards each connection to
    /// 127.0.0.1:`to`.
    pub fn start(to: u16) -> BlackholeProxy {
        BlackholeProxy::start_delayed(to, Duration::ZERO)
    }

    /// [`Self::start`], forwarding each chunk `delay` after it arrived,
    /// both ways.
    pub fn start_delayed(to: u16, delay: Duration) -> BlackholeProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let freeze = Arc::new(AtomicBool::new(false));
        let hang = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (f, h, a) = (freeze.clone(), hang.clone(), accepted.clone());
        thread::spawn(move || {
            for c in l.incoming().flatten() {
                a.fetch_add(1, Ordering::SeqCst);
                let Ok(s) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                // Connections made after the freeze are never frozen.
                let frozen = if f.load(Ordering::SeqCst) {
                    Arc::new(AtomicBool::new(false))
                } else {
                    f.clone()
                };
                let sub = Arc::new(AtomicBool::new(false));
                let (c2, s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
                let up = [frozen.clone(), h.clone(), sub.clone()];
                let down = [frozen, h.clone(), sub];
                thread::spawn(move || pump(c, s, up, true, delay));
                thread::spawn(move || pump(s2, c2, down, false, delay));
            }
        });
        BlackholeProxy {
            port,
            freeze,
            hang,
            accepted,
        }
    }

    /// Silences every connection accepted so far but the subscriptions,
    /// then waits a moment, so that a reply already being forwarded gets
    /// through first.
    pub fn freeze(&self) {
        self.freeze.store(true, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(50));
    }

    /// Silences every connection, subscriptions and those accepted from
    /// now on included: the node hangs (it accepts, and never answers).
    pub fn hang(&self) {
        self.hang.store(true, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(50));
    }

    /// How many connections it has accepted in all.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// nginx (one worker) for the connection-health tests, whose
    /// `dyncert_redis` `url` leads through this proxy to `redis`, with
    /// `dyncert_session_tickets on` when `tickets`; returned with its
    /// metrics port once its invalidation subscription is up on `redis`.
    /// The timeouts are one second, the figure
    /// [`Self::assert_command_timeout_logged`] looks for, and so is the
    /// negative cache: a name that failed during the freeze is asked
    /// again a second later.
    pub fn nginx_behind(&self, pki: &Pki, url: &str, redis: &Redis, tickets: bool) -> (Nginx, u16) {
        let http = http_block(&[
            "    dyncert_redis @REDIS@;",
            "    dyncert_fetch_timeout 1s;",
            "    dyncert_redis_timeout 1s;",
            "    dyncert_cache max=1000 valid=1h stale=1h negative=1s;",
            if tickets {
                "    dyncert_session_tickets on;"
            } else {
                ""
            },
            METRICS_SERVER,
            &source_server(""),
        ]);
        let mport = free_port();
        let opts = NginxOpts::new()
            .workers(1)
            .var("REDIS", url)
            .var("MPORT", mport);
        let nginx = Nginx::start(pki, &http, opts);
        let up = poll(Duration::from_secs(10), Duration::from_millis(100), || {
            let r = redis.cmd(&["PUBSUB", "NUMSUB", "dyncert:invalidate"]);
            format!("{r:?}").contains("Int(1)").then_some(())
        });
        assert!(up.is_some(), "no subscriber:\n{}", nginx.error_log());
        (nginx, mport)
    }

    /// Asserts that `nginx` logged a command timeout on the open
    /// connection through this proxy, then its replacement, not a failure
    /// to connect (the sources audit's finding 5: a timeout on an open
    /// connection read as a failure to connect), and counted both on its
    /// metrics port `mport`. Lines after the replacement may be anything
    /// (on a loaded machine, connecting can take longer than the timeout:
    /// that is a connect failure).
    pub fn assert_command_timeout_logged(&self, nginx: &Nginx, mport: u16) {
        let node = format!("redis node \"127.0.0.1:{}\"", self.port);
        assert_command_timeout_logged_for(nginx, mport, &node);
    }
}

/// How long after now `nginx` first serves `name` with `leaf` (asked
/// every 250 ms, for up to `deadline`), or `None`: the connection-health
/// tests' warm-up, and their wait for a name written after the freeze.
pub fn time_until_served(
    nginx: &Nginx,
    name: &str,
    leaf: &Leaf,
    deadline: Duration,
) -> Option<Duration> {
    let t0 = Instant::now();
    poll(deadline, Duration::from_millis(250), || {
        Request::get("/")
            .sni(name)
            .https(nginx.port)
            .ok()
            .filter(|r| r.tls().leaf_serial == leaf.serial_hex)
            .map(|_| t0.elapsed())
    })
}

/// [`BlackholeProxy::assert_command_timeout_logged`] for the connection
/// `nginx` logs as `node` (`redis node "..."`).
pub(crate) fn assert_command_timeout_logged_for(nginx: &Nginx, mport: u16, node: &str) {
    let log = nginx.error_log();
    let timed_out = log.find(&format!(
        "redis command timed out after 1000 ms on the open connection to {node}"
    ));
    let replaced = log.find(&format!(
        "replacing the command connection to {node} after a command timed out on it"
    ));
    let (Some(timed_out), Some(replaced)) = (timed_out, replaced) else {
        panic!("no command timeout or replacement:\n{}", tail(&log, 20));
    };
    assert!(timed_out < replaced, "{}", tail(&log, 20));
    assert!(
        !log[..replaced].contains("while connecting to redis node"),
        "{}",
        tail(&log, 20)
    );
    let metrics = scrape_metrics(mport);
    assert!(metrics.get("dyncert_redis_command_timeouts_total") >= 1.0);
    assert!(metrics.get("dyncert_redis_reconnects_total") >= 1.0);
}
