//! Whom the module believes under Sentinel: a primary only when a
//! majority of the listed sentinels name it (one sentinel reconfigured by
//! whoever reaches its port never gets the primary's password, nor
//! becomes the source); sentinels protected by a password or an ACL user
//! (`?sentinel_password=`, `?sentinel_username=`), failing closed with a
//! wrong one; and `nginx -t` refusing a URL fragment (`#insecure` turns
//! off the redis crate's TLS verification).

use dyncert_testkit::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Redis (here: the sentinels) at `@REDIS@`, its TLS directives at
/// `@TLS@`, and the module's server answering `<sni> via <source>`.
fn http() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;",
        "    @TLS@",
        "    dyncert_fetch_timeout 2s;",
        "    dyncert_redis_timeout 1s;",
        "    dyncert_cache max=1000 valid=1h stale=1h negative=1s;",
        &source_server(""),
    ])
}

const PRIMARY_PASSWORD: &str = "S3cretPrimary";
const DEADLINE: Duration = Duration::from_secs(10);

fn start(pki: &Pki, url: &str) -> Nginx {
    Nginx::start(
        pki,
        &http(),
        NginxOpts::new().workers(1).var("REDIS", url).var("TLS", ""),
    )
}

/// One RESP command as a client sends it.
fn read_cmd(r: &mut impl BufRead) -> Option<Vec<String>> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let n: usize = line.trim().strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::new();
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).ok()?;
        let len: usize = line.trim().strip_prefix('$')?.parse().ok()?;
        let mut buf = vec![0; len + 2];
        r.read_exact(&mut buf).ok()?;
        buf.truncate(len);
        args.push(String::from_utf8_lossy(&buf).into_owned());
    }
    Some(args)
}

/// A rogue "primary": accepts anything (AUTH included), calls itself a
/// primary, has no records; records every command it receives.
struct Rogue {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Rogue {
    fn start() -> Rogue {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let all = seen.clone();
        thread::spawn(move || {
            for c in l.incoming().flatten() {
                let all = all.clone();
                thread::spawn(move || serve_rogue(c, all));
            }
        });
        Rogue { port, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve_rogue(mut s: TcpStream, seen: Arc<Mutex<Vec<String>>>) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    while let Some(words) = read_cmd(&mut r) {
        seen.lock().unwrap().push(words.join(" "));
        let reply: &[u8] = match words[0].to_uppercase().as_str() {
            "ROLE" => b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n",
            "PING" => b"+PONG\r\n",
            "EXISTS" | "HSTRLEN" => b":0\r\n",
            _ => b"+OK\r\n",
        };
        if s.write_all(reply).is_err() {
            return;
        }
    }
}

/// A primary and replica with a password, `shop.example.com` stored (and
/// replicated) before, three sentinels that know the password.
fn protected_sentinel_set(pki: &Pki) -> (RedisSentinel, Leaf) {
    let sentinel = RedisSentinel::start();
    let leaf = pki.leaf(&["shop.example.com"], 4101);
    sentinel.primary.put_leaf("shop.example.com", &leaf);
    sentinel.primary.cmd(&["WAIT", "1", "2000"]);
    for s in &sentinel.sentinels {
        s.cmd(&[
            "SENTINEL",
            "SET",
            SENTINEL_SERVICE,
            "auth-pass",
            PRIMARY_PASSWORD,
        ]);
    }
    for r in [&sentinel.primary, &sentinel.replica] {
        r.cmd(&["CONFIG", "SET", "masterauth", PRIMARY_PASSWORD]);
        r.cmd(&["CONFIG", "SET", "requirepass", PRIMARY_PASSWORD]);
    }
    (sentinel, leaf)
}

/// What anyone who reaches sentinel `i`'s port can do without a
/// credential: make it name `rogue` as the primary.
fn subvert(sentinel: &RedisSentinel, i: usize, rogue: &Rogue) {
    let p = sentinel.sentinels[i].port;
    let r = redis_command(p, &["SENTINEL", "REMOVE", SENTINEL_SERVICE]);
    assert!(matches!(r, Ok(Reply::Status(_))), "{r:?}");
    let r = redis_command(
        p,
        &[
            "SENTINEL",
            "MONITOR",
            SENTINEL_SERVICE,
            "127.0.0.1",
            &rogue.port.to_string(),
            "2",
        ],
    );
    assert!(matches!(r, Ok(Reply::Status(_))), "{r:?}");
    assert_eq!(sentinel.primary_port(i), Some(rogue.port));
}

#[test]
fn one_lying_sentinel_of_three_gets_no_password_and_the_honest_primary_is_served() {
    let pki = Pki::new();
    let (sentinel, leaf) = protected_sentinel_set(&pki);
    let rogue = Rogue::start();
    // The first listed sentinel: the one a client that takes the first
    // answer believes.
    subvert(&sentinel, 0, &rogue);
    let url = sentinel.url(Some(&format!(":{PRIMARY_PASSWORD}")));
    let nginx = start(&pki, &url);
    let r = nginx.wait_served(&pki, "shop.example.com", &leaf, DEADLINE);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
    // A second name after the one-second primary re-check.
    thread::sleep(Duration::from_millis(1500));
    let other = pki.leaf(&["blog.example.com"], 4102);
    // Written on the primary with its password (the test kit's helpers
    // speak without AUTH).
    let mut c = sentinel.primary.connect();
    c.cmd(&["AUTH", PRIMARY_PASSWORD]).unwrap();
    c.cmd(&[
        "HSET",
        "dyncert:cert:blog.example.com",
        "crt",
        &other.chain_pem,
        "key",
        &other.key_pem,
    ])
    .unwrap();
    nginx.wait_served(&pki, "blog.example.com", &other, DEADLINE);
    let seen = rogue.seen();
    assert!(
        !seen
            .iter()
            .any(|l| l.contains(PRIMARY_PASSWORD) || l.to_uppercase().starts_with("AUTH")),
        "the rogue primary received: {seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|l| l.starts_with("EXISTS") || l.starts_with("HMGET")),
        "the rogue primary was asked for records: {seen:?}"
    );
}

#[test]
fn sentinels_that_disagree_without_a_majority_fail_closed_with_every_answer_logged() {
    let pki = Pki::new();
    let (mut sentinel, _leaf) = protected_sentinel_set(&pki);
    let rogue = Rogue::start();
    subvert(&sentinel, 0, &rogue);
    // One honest sentinel left: one vote for each address, none of the
    // three listed has a majority (2).
    sentinel.sentinels[2].stop();
    let url = sentinel.url(Some(&format!(":{PRIMARY_PASSWORD}")));
    let nginx = start(&pki, &url);
    let r = nginx.get_sni("shop.example.com");
    assert_eq!(r.source(), "default", "body {:?}", r.body);
    let seen = rogue.seen();
    assert!(
        !seen
            .iter()
            .any(|l| l.contains(PRIMARY_PASSWORD) || l.to_uppercase().starts_with("AUTH")),
        "the rogue primary received: {seen:?}"
    );
    let s = |i: usize| format!("127.0.0.1:{}", sentinel.sentinels[i].port);
    let line = nginx
        .wait_for_log_line(DEADLINE, |l| {
            l.contains("no 2 of the 3 sentinels name one primary of \"mymaster\"")
        })
        .unwrap_or_else(|| panic!("no disagreement line in:\n{}", nginx.error_log()));
    let log = nginx.error_log();
    assert!(line.contains("[warn]"), "{line}");
    assert!(
        line.contains(&format!("127.0.0.1:{} ({})", rogue.port, s(0))),
        "{line}"
    );
    assert!(
        line.contains(&format!("127.0.0.1:{} ({})", sentinel.primary.port, s(1))),
        "{line}"
    );
    assert!(line.contains(&format!("no answer ({})", s(2))), "{line}");
    assert!(!log.contains(PRIMARY_PASSWORD), "{log}");
}

/// A "sentinel" that accepts connections and never answers.
fn silent_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            held.push(c);
        }
    });
    port
}

#[test]
fn a_sentinel_that_never_answers_delays_no_lookup_while_a_majority_agrees() {
    let pki = Pki::new();
    let sentinel = RedisSentinel::start();
    let names = ["a.example.com", "b.example.com", "c.example.com"];
    let leaves: Vec<Leaf> = names
        .iter()
        .zip(4301..)
        .map(|(n, serial)| pki.leaf(&[n], serial))
        .collect();
    for (n, leaf) in names.iter().zip(&leaves) {
        sentinel.primary.put_leaf(n, leaf);
    }
    // Four listed: the three real ones are the majority (3 of 4).
    let url = sentinel.url(None).replacen(
        "/mymaster",
        &format!(",127.0.0.1:{}/mymaster", silent_server()),
        1,
    );
    let http = http()
        .replace("dyncert_redis_timeout 1s", "dyncert_redis_timeout 3s")
        .replace("dyncert_fetch_timeout 2s", "dyncert_fetch_timeout 8s");
    let nginx = Nginx::start(
        &pki,
        &http,
        NginxOpts::new()
            .workers(1)
            .var("REDIS", &url)
            .var("TLS", ""),
    );
    nginx.wait_served(&pki, names[0], &leaves[0], DEADLINE);
    // Each later name comes after the primary's once-a-second re-check
    // is due: the sentinels are asked again, and the silent one is not
    // waited for (3 s).
    for (n, leaf) in names.iter().zip(&leaves).skip(1) {
        thread::sleep(Duration::from_millis(1200));
        let t = Instant::now();
        let r = nginx.get_sni(n);
        let took = t.elapsed();
        assert_eq!(r.tls().leaf_serial, leaf.serial_hex, "{n}: {:?}", r.body);
        assert!(
            took < Duration::from_millis(1500),
            "{n} took {took:?}; log:\n{}",
            nginx.error_log()
        );
    }
}

#[test]
fn the_primary_in_use_keeps_serving_while_no_majority_of_sentinels_answers() {
    let pki = Pki::new();
    let sentinel = RedisSentinel::start();
    let names: Vec<String> = (0..5).map(|i| format!("n{i}.example.com")).collect();
    let leaves: Vec<Leaf> = names
        .iter()
        .zip(4401..)
        .map(|(n, serial)| pki.leaf(&[n.as_str()], serial))
        .collect();
    for (n, leaf) in names.iter().zip(&leaves) {
        sentinel.primary.put_leaf(n, leaf);
    }
    let nginx = start(&pki, &sentinel.url(None));
    nginx.wait_served(&pki, &names[0], &leaves[0], DEADLINE);
    // Two of the three sentinels stop answering (they still accept
    // connections: the kernel does): no majority names any primary now,
    // and asking waits `dyncert_redis_timeout` for them. The primary a
    // majority named keeps being used, and the once-a-second re-check
    // holds up no lookup.
    sentinel.sentinels[1].pause();
    sentinel.sentinels[2].pause();
    for (n, leaf) in names.iter().zip(&leaves).skip(1) {
        thread::sleep(Duration::from_millis(600));
        let t = Instant::now();
        let r = nginx.get_sni(n);
        let took = t.elapsed();
        assert_eq!(
            r.tls().leaf_serial,
            leaf.serial_hex,
            "{n}: {:?} after {took:?}; log:\n{}",
            r.body,
            tail(&nginx.error_log(), 10)
        );
    }
    sentinel.sentinels[1].resume();
    sentinel.sentinels[2].resume();
}

/// Locks every sentinel: the default user gets `password`, and an ACL
/// user `dyncert` with `acl_password` may run every command.
fn lock_sentinels(sentinel: &RedisSentinel, password: &str, acl_password: &str) {
    for s in &sentinel.sentinels {
        let mut c = s.connect();
        let r = c.cmd(&[
            "ACL",
            "SETUSER",
            "dyncert",
            "on",
            &format!(">{acl_password}"),
            "+@all",
        ]);
        assert!(matches!(r, Ok(Reply::Status(_))), "{r:?}");
        let r = c.cmd(&["ACL", "SETUSER", "default", &format!(">{password}")]);
        assert!(matches!(r, Ok(Reply::Status(_))), "{r:?}");
        // Now locked: a command without AUTH is refused.
        let r = redis_command(s.port, &["SENTINEL", "MASTERS"]);
        assert!(
            matches!(&r, Ok(Reply::Error(e)) if e.contains("NOAUTH")),
            "{r:?}"
        );
    }
}

#[test]
fn sentinels_with_a_password_are_asked_with_the_url_credentials_and_a_wrong_one_fails_closed() {
    let pki = Pki::new();
    let sentinel = RedisSentinel::start();
    let leaf = pki.leaf(&["shop.example.com"], 4201);
    sentinel.primary.put_leaf("shop.example.com", &leaf);
    sentinel.primary.cmd(&["WAIT", "1", "2000"]);
    lock_sentinels(&sentinel, "Sentinel-pw-1", "Acl-pw-2");
    let base = sentinel.url(None);

    // requirepass style: the default user's password.
    let nginx = start(&pki, &format!("{base}?sentinel_password=Sentinel-pw-1"));
    let r = nginx.wait_served(&pki, "shop.example.com", &leaf, DEADLINE);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
    drop(nginx);

    // An ACL user.
    let nginx = start(
        &pki,
        &format!("{base}?sentinel_username=dyncert&sentinel_password=Acl-pw-2"),
    );
    let r = nginx.wait_served(&pki, "shop.example.com", &leaf, DEADLINE);
    assert_eq!(r.source(), "redis", "body {:?}", r.body);
    drop(nginx);

    // A wrong password: nothing is served from Redis, each sentinel's
    // refusal (WRONGPASS, which the redis crate words "Password
    // authentication failed") is logged with its address, the password
    // never is.
    let nginx = start(&pki, &format!("{base}?sentinel_password=Wrong-pw-3"));
    let r = nginx.get_sni("shop.example.com");
    assert_eq!(r.source(), "default", "body {:?}", r.body);
    for s in &sentinel.sentinels {
        let node = format!("redis node \"127.0.0.1:{}\"", s.port);
        let line = nginx.wait_for_log_line(DEADLINE, |l| {
            l.contains("[warn]") && l.contains("authentication failed") && l.contains(&node)
        });
        assert!(
            line.is_some(),
            "no authentication failure line for {node} in:\n{}",
            nginx.error_log()
        );
    }
    let log = nginx.error_log();
    assert!(
        log.contains("no 2 of the 3 sentinels name one primary of \"mymaster\""),
        "{log}"
    );
    assert!(!log.contains("Wrong-pw-3"), "{log}");

    // Without any credential the sentinels are not asked either.
    let nginx = start(&pki, &base);
    let r = nginx.get_sni("shop.example.com");
    assert_eq!(r.source(), "default", "body {:?}", r.body);
    assert!(
        nginx
            .wait_for_log_line(DEADLINE, |l| l.contains("NOAUTH"))
            .is_some(),
        "{}",
        nginx.error_log()
    );
}

#[test]
fn nginx_t_refuses_a_url_fragment_and_takes_valkeys_as_tls() {
    let pki = Pki::new();
    let t = |url: &str, tls: &str| {
        Nginx::config_test(
            &pki,
            &http(),
            NginxOpts::new().var("REDIS", url).var("TLS", tls),
        )
    };
    let dir = TempDir::new("redis-ca");
    let ca = dir.path().join("ca.pem");
    write_file(&ca, &pki.root.cert_pem);
    let ca_line = format!("dyncert_redis_tls_trusted_certificate {};", ca.display());
    for (url, tls) in [
        ("rediss://localhost:6379/0#insecure", ""),
        (
            "rediss://u:Secret-pw-1@localhost:6379/0#insecure",
            ca_line.as_str(),
        ),
        ("valkeys://localhost:6379/0#insecure", ""),
        ("sentinel://127.0.0.1:26379/mymaster/0#insecure", ""),
    ] {
        let c = t(url, tls);
        assert!(!c.ok, "{url} passed nginx -t:\n{}", c.output);
        assert!(
            c.output
                .lines()
                .any(|l| l.contains("[emerg]") && l.contains("fragment")),
            "{url}:\n{}",
            c.output
        );
        assert!(!c.output.contains("Secret-pw-1"), "{}", c.output);
    }
    // valkeys:// is TLS, as for the redis crate: the TLS directives apply.
    let c = t("valkeys://localhost:6380/0", &ca_line);
    assert!(c.ok, "{}", c.output);
    let c = t("valkey://localhost:6379/0", &ca_line);
    assert!(!c.ok, "{}", c.output);
    // The sentinels' own credentials are accepted and never shown.
    let c = t(
        "sentinel://127.0.0.1:26379/mymaster/0?sentinel_password=Secret-pw-1&bogus=1",
        "",
    );
    assert!(!c.ok, "{}", c.output);
    assert!(c.output.contains("bogus"), "{}", c.output);
    assert!(!c.output.contains("Secret-pw-1"), "{}", c.output);
    let c = t(
        "sentinel://127.0.0.1:26379/mymaster/0?sentinel_username=u&sentinel_password=Secret-pw-1",
        "",
    );
    assert!(c.ok, "{}", c.output);
}
