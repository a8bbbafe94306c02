//! A record is read with its size checks in one step (an `EVAL_RO`
//! script): a field that grows between the check and the read (a writer's
//! `HSET` landing between two round trips) is never transferred, so one
//! write cannot make every worker of a fleet read hundreds of MiB. An ACL
//! user without scripts, or a Redis before 7, gets the two-step read, with
//! one `warn` line.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use dyncert_testkit::*;

/// Redis at `@REDIS@` and the module's server answering
/// `<sni> via <source>`.
fn http() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;",
        "    dyncert_fetch_timeout 3s;",
        "    dyncert_redis_timeout 2s;",
        "    dyncert_invalidate_channel off;",
        &source_server(""),
    ])
}

const NAME: &str = "race.example.com";
const KEY: &str = "dyncert:cert:race.example.com";
/// What the writer stores while the module reads: far over the 64 KiB a
/// `crt` may hold.
const GROWN: usize = 48 << 20;

/// Relays the module's commands to Redis; right before the first command
/// that reads the record's values (the two-step read's `HMGET`, or the
/// script), stores a `GROWN`-byte `crt` through a connection of its own.
fn relay_up(mut from: TcpStream, mut to: TcpStream, redis: u16) {
    let mut buf = vec![0u8; 65536];
    let mut grown = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let reads_values = buf[..n]
            .windows(7)
            .any(|w| w == b"EVAL_RO" || w.starts_with(b"HMGET"));
        if !grown && reads_values {
            grown = true;
            let big = "A".repeat(GROWN);
            redis_command_timeout(redis, &["HSET", KEY, "crt", &big], Duration::from_secs(60))
                .expect("HSET of the grown field");
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn relay_down(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

/// A proxy in front of Redis that grows the record during the read.
fn growing_proxy(redis: u16) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            let s = TcpStream::connect(("127.0.0.1", redis)).unwrap();
            let (c2, s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
            thread::spawn(move || relay_up(c, s, redis));
            thread::spawn(move || relay_down(s2, c2));
        }
    });
    port
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[test]
fn a_field_grown_during_the_read_is_not_transferred() {
    let pki = Pki::new();
    let redis = Redis::start();
    let leaf = pki.leaf(&[NAME], 5001);
    redis.put_leaf(NAME, &leaf);
    let proxy = growing_proxy(redis.port);
    let nginx = Nginx::start(
        &pki,
        &http(),
        NginxOpts::new()
            .workers(1)
            .var("REDIS", format!("redis://127.0.0.1:{proxy}/0")),
    );
    let worker = nginx.worker_pid();
    let before = status_kib(worker, "VmHWM:");
    let r = Request::get("/").sni(NAME).https(nginx.port).unwrap();
    // The record as read is oversized: refused, never its certificate.
    assert_eq!(r.body.trim(), format!("{NAME} via default"), "{r:?}");
    let log = nginx.error_log();
    let refusal = log
        .lines()
        .any(|l| l.contains("field \"crt\" is larger than 64 KiB") && l.contains(NAME));
    assert!(refusal, "no refusal logged:\n{}", tail(&log, 10));
    // Let a read that was under way finish before measuring.
    thread::sleep(Duration::from_millis(500));
    let grew = status_kib(worker, "VmHWM:").saturating_sub(before);
    assert!(
        grew < 16 * 1024,
        "the worker's peak memory grew by {} MiB: the {} MiB field was read",
        grew / 1024,
        GROWN >> 20
    );
    assert!(
        redis.calls("eval_ro") >= 1,
        "the scripted read was not used"
    );
    assert_eq!(redis.calls("hmget"), 0);
}

#[test]
fn a_user_without_scripts_gets_the_two_step_read_and_a_warning() {
    let pki = Pki::new();
    let redis = Redis::start();
    let leaf = pki.leaf(&["plain.example.com"], 5002);
    redis.put_leaf("plain.example.com", &leaf);
    let created = redis.cmd(&[
        "ACL",
        "SETUSER",
        "noscripts",
        "on",
        ">pw",
        "~*",
        "&*",
        "+@all",
        "-@scripting",
    ]);
    assert_eq!(created, Reply::Status("OK".into()));
    let mut nginx = Nginx::start(
        &pki,
        &http(),
        NginxOpts::new().workers(1).var(
            "REDIS",
            format!("redis://noscripts:pw@127.0.0.1:{}/0", redis.port),
        ),
    );
    let r = Request::get("/")
        .sni("plain.example.com")
        .https(nginx.port)
        .unwrap();
    r.assert_served(&leaf, &pki);
    assert!(redis.calls("hmget") >= 1, "the two-step read was not used");
    let log = nginx.error_log();
    assert_eq!(
        log.matches("records are read in two steps").count(),
        1,
        "{}",
        tail(&log, 10)
    );
    nginx.assert_healthy();
}
