//! The test kit itself, against plain NGINX (no module) and a bare Redis, so
//! a failure in the feature tests can be told apart from a broken kit.

use dyncert_testkit::*;
use std::time::Duration;

const PLAIN: &str = r#"
http {
    access_log off;
    server {
        listen 127.0.0.1:@PORT@ ssl;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        location / { return 200 "sni=$ssl_server_name\n"; }
    }
}
"#;

#[test]
fn plain_nginx_serves_static_certificate_to_the_test_client() {
    let pki = Pki::new();
    let mut nginx = Nginx::start(&pki, PLAIN, NginxOpts::new().workers(2).without_module());
    let port = nginx.port;
    assert_eq!(nginx.worker_pids().len(), 2);

    let r = Request::get("/")
        .sni("shop.example.com")
        .https(port)
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "sni=shop.example.com\n");
    r.assert_default();
    assert_eq!(r.tls().leaf_serial, serial_hex(1));

    let r = Request::get("/").https(port).unwrap();
    assert_eq!(r.body, "sni=\n");
    r.assert_default();

    // A raw ClientHello with a valid name gets a ServerHello (0x16).
    let answer = send_raw_client_hello(port, b"raw.example.com").unwrap();
    assert_eq!(answer.first(), Some(&0x16), "answer {answer:02x?}");

    nginx.reload();
    let r = Request::get("/")
        .sni("after.example.com")
        .https(port)
        .unwrap();
    assert_eq!(r.body, "sni=after.example.com\n");
    nginx.assert_healthy();
}

#[test]
fn plain_nginx_config_test_reports_errors() {
    let pki = Pki::new();
    let opts = || NginxOpts::new().without_module().port(1);
    let t = Nginx::config_test(&pki, PLAIN, opts());
    assert!(t.ok, "{}", t.output);
    let bad = PLAIN.replace("server_name _;", "server_name _; no_such_directive on;");
    let t = Nginx::config_test(&pki, &bad, opts());
    assert!(!t.ok);
    assert!(t.output.contains("no_such_directive"), "{}", t.output);
}

#[test]
fn redis_harness_pauses_restarts_and_monitors() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["shop.example.com"], 42);
    let mut redis = Redis::start();
    let monitor = redis.monitor();
    redis.put_leaf("shop.example.com", &leaf);
    redis_command(redis.port, &["HGETALL", "dyncert:cert:shop.example.com"]).unwrap();
    redis_command(
        redis.port,
        &["HMGET", "dyncert:cert:shop.example.com", "crt", "key"],
    )
    .unwrap();
    redis_command(
        redis.port,
        &["HGET", "dyncert:cert:shop.example.com", "key"],
    )
    .unwrap();
    monitor.sync();
    assert_eq!(
        monitor.fetches_of("shop.example.com"),
        2,
        "{}",
        monitor.dump()
    );
    assert_eq!(
        monitor.commands_about("shop.example.com"),
        3,
        "{}",
        monitor.dump()
    );
    let hset = monitor
        .observed()
        .into_iter()
        .find(|o| o.command() == "HSET")
        .expect("HSET captured");
    // The PEM survives MONITOR's escaping, so arguments are parsed right.
    assert_eq!(hset.args[3], leaf.chain_pem);

    redis.pause();
    let r = redis_command_timeout(redis.port, &["PING"], Duration::from_millis(300));
    assert!(r.is_err(), "a stopped Redis answered {r:?}");
    redis.resume();
    assert_eq!(redis.cmd(&["PING"]), Reply::Status("PONG".into()));

    redis.stop();
    assert!(redis_command(redis.port, &["PING"]).is_err());
    redis.start_server();
    assert_eq!(
        redis.cmd(&["EXISTS", "dyncert:cert:shop.example.com"]),
        Reply::Int(0),
        "a restarted Redis starts empty"
    );
}

#[test]
fn crashed_worker_fails_the_test_even_though_nginx_respawns_it() {
    let pki = Pki::new();
    let nginx = Nginx::start(&pki, PLAIN, NginxOpts::new().without_module());
    let port = nginx.port;
    let worker = *nginx.worker_pids().first().unwrap();
    assert!(signal(worker, libc::SIGSEGV));
    let respawned = poll(STARTUP_DEADLINE, Duration::from_millis(20), || {
        let w = nginx.worker_pids();
        (w.len() == 1 && !w.contains(&worker)).then_some(())
    });
    assert!(respawned.is_some(), "{}", nginx.logs());
    // Requests still work, which is why Drop checks the log.
    Request::get("/")
        .sni("x.example.com")
        .https(port)
        .unwrap()
        .assert_default();

    let prefix = nginx.prefix().to_path_buf();
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(nginx)));
    // The prefix is kept for post-mortems when Drop fails; not this time.
    let _ = std::fs::remove_dir_all(&prefix);
    let err = dropped.expect_err("Drop did not fail the test");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("exited on signal"), "{msg}");
}
