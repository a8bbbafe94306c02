//! A `rediss://` connection sends the host of the URL as SNI (managed Redis
//! services route and pick their certificate by it) and verifies the
//! server's certificate against the configured CA. The server here is a
//! real TLS listener that records the name the client asked for.

use dyncert_core::fetch::{Notes, RedisTarget, RedisTls};
use dyncert_testkit::Pki;
use openssl::ssl::{NameType, SslAcceptor, SslMethod};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn rediss_sends_the_url_host_as_sni_and_verifies_against_the_ca() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost"], 9101);

    let seen: Arc<Mutex<Option<String>>> = Arc::default();
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    b.set_private_key(&leaf.issued.key).unwrap();
    b.set_certificate(&leaf.issued.cert).unwrap();
    b.add_extra_chain_cert(pki.intermediate.cert.clone())
        .unwrap();
    let record = Arc::clone(&seen);
    b.set_servername_callback(move |ssl, _alert| {
        *record.lock().unwrap() = ssl.servername(NameType::HOST_NAME).map(str::to_owned);
        Ok(())
    });
    let acceptor = b.build();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();

    // One connection: the TLS handshake, then an error reply to whatever
    // the client sends (no Redis behind it).
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut tls = acceptor.accept(tcp).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 256];
        let _ = tls.read(&mut buf);
        let _ = tls.write_all(b"-ERR not a redis server\r\n");
        Ok::<(), String>(())
    });

    let target = RedisTarget::new(
        &format!("rediss://localhost:{port}/0"),
        RedisTls {
            ca: Some(pki.root.cert_pem.clone().into_bytes()),
            client: None,
        },
        Duration::from_secs(2),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The connection handle spawns its driver on the current runtime.
    let _entered = rt.enter();
    let mut conn = target.connect(Notes::none()).unwrap();
    let reply: Result<String, _> = rt.block_on(redis::cmd("PING").query_async(&mut conn));
    assert!(reply.is_err(), "the listener is no Redis: {reply:?}");

    server
        .join()
        .unwrap()
        .expect("the client completed the TLS handshake with the CA given");
    assert_eq!(seen.lock().unwrap().as_deref(), Some("localhost"));
}
