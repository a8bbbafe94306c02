//! A record with two certificates for one name, one ECDSA and one RSA
//! (`crt`/`key` beside `crt_rsa`/`key_rsa`): both are installed on the
//! connection and OpenSSL serves the one the client's signature algorithms
//! and ciphers allow, as with two `ssl_certificate` lines; clients that can
//! only do RSA get the RSA one over TLS 1.2 and 1.3, the others ECDSA, and
//! `$dyncert_cert_type` says which. A bad second pair refuses the whole
//! record with its own reason. The pair comes from Redis, from the API
//! (and is written back), through the shared zone, and with an encrypted
//! `key_rsa`.

use dyncert_core::keywrap::{seal, Keyring};
use dyncert_testkit::conf::dyncert_server;
use dyncert_testkit::pki::self_signed;
use dyncert_testkit::*;
use openssl::pkey::{Id, PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::X509;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

fn http() -> String {
    http_block(&[
        "    dyncert_redis @REDIS@;\n    @EXTRA@",
        METRICS_SERVER,
        &dyncert_server(
            r#"
        location / { return 200 "type=$dyncert_cert_type source=$dyncert_source pid=$pid\n"; }
"#,
        ),
    ])
}

/// TLS 1.2, RSA signatures and an RSA-only cipher suite.
const RSA_TLS12: &[&str] = &[
    "-tls1_2",
    "-sigalgs",
    "RSA+SHA256:rsa_pss_rsae_sha256",
    "-cipher",
    "ECDHE-RSA-AES128-GCM-SHA256",
];
/// TLS 1.3, RSA-PSS signatures only.
const RSA_TLS13: &[&str] = &["-tls1_3", "-sigalgs", "rsa_pss_rsae_sha256"];
/// TLS 1.2, ECDSA cipher suite only.
const ECDSA_TLS12: &[&str] = &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"];
/// TLS 1.3, ECDSA signatures only.
const ECDSA_TLS13: &[&str] = &["-tls1_3", "-sigalgs", "ecdsa_secp256r1_sha256"];

struct Env {
    pki: Pki,
    redis: Redis,
    nginx: Nginx,
    mport: u16,
    api: Option<CertApi>,
}

impl Env {
    fn start(workers: u32, extra: &str, api: bool) -> Env {
        let pki = Pki::new();
        let redis = Redis::start();
        let mport = free_port();
        let api = api.then(CertApi::start);
        let mut opts = NginxOpts::new()
            .workers(workers)
            .redis(&redis)
            .var("MPORT", mport)
            .var("EXTRA", extra);
        if let Some(a) = &api {
            opts = opts.api(a);
        }
        let nginx = Nginx::start(&pki, &http(), opts);
        Env {
            pki,
            redis,
            nginx,
            mport,
            api,
        }
    }

    fn metric(&self, key: &str) -> f64 {
        scrape_metrics(self.mport).get(key)
    }

    fn rejected(&self, reason: &str) -> f64 {
        self.metric(&format!(
            "dyncert_records_rejected_total{{reason=\"{reason}\"}}"
        ))
    }

    /// An RSA leaf for `name` issued by the test intermediate, its chain
    /// (leaf, intermediate) and its key as PEM.
    fn rsa_leaf(&self, name: &str, serial: u64) -> (X509, String, String) {
        let key = rsa_key();
        let public = PKey::public_key_from_der(&key.public_key_to_der().unwrap()).unwrap();
        let (cert, chain) = self.pki.leaf_for_public_key(&[name], serial, &public);
        (cert, chain, key_pem(&key))
    }

    /// Stores a record for `name` with `fields`, replacing any earlier one.
    fn put(&self, name: &str, fields: &[(&str, &str)]) {
        let key = format!("dyncert:cert:{name}");
        self.redis.cmd(&["DEL", &key]);
        let mut args = vec!["HSET", key.as_str()];
        for (k, v) in fields {
            args.push(k);
            args.push(v);
        }
        self.redis.cmd(&args);
    }

    fn connect(&self, sni: &str, args: &[&str]) -> Served {
        s_client(self.nginx.port, sni, args)
    }
}

fn rsa_key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
}

fn key_pem(key: &PKey<Private>) -> String {
    String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap()
}

/// What one `openssl s_client` connection was served.
#[derive(Debug)]
struct Served {
    /// The leaf's serial (upper-case hex) and key type.
    serial: String,
    key: Id,
    /// The response body's `type=`, `source=` and `pid=` values.
    cert_type: String,
    source: String,
    pid: String,
}

/// Connects with the `openssl` binary restricted by `args`, sends one
/// request for `/` and reads the leaf the server sent and the body.
fn s_client(port: u16, sni: &str, args: &[&str]) -> Served {
    try_s_client(port, sni, args)
        .unwrap_or_else(|| panic!("no certificate from {sni} with {args:?}"))
}

/// [`s_client`]; None when the handshake failed.
fn try_s_client(port: u16, sni: &str, args: &[&str]) -> Option<Served> {
    let mut child = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", sni, "-ign_eof", "-no_ticket"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("GET / HTTP/1.0\r\nHost: {sni}\r\n\r\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (Some(begin), Some(end)) = (
        text.find("-----BEGIN CERTIFICATE-----"),
        text.find("-----END CERTIFICATE-----"),
    ) else {
        return None;
    };
    let leaf = X509::from_pem(&text.as_bytes()[begin..end + 25]).unwrap();
    let value = |k: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in the response:\n{text}"))
            .to_owned()
    };
    Some(Served {
        serial: serial_hex_of(&leaf),
        key: leaf.public_key().unwrap().id(),
        cert_type: value("type="),
        source: value("source="),
        pid: value("pid="),
    })
}

fn serial_hex_of(cert: &X509) -> String {
    cert.serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string()
}

/// Checks that RSA-only clients (TLS 1.2 and 1.3) get `rsa` and
/// ECDSA-only clients get `ecdsa`, from a cached record.
fn assert_both_types_served(e: &Env, name: &str, ecdsa_serial: &str, rsa_serial: &str) {
    for args in [RSA_TLS12, RSA_TLS13] {
        let s = e.connect(name, args);
        assert_eq!(
            (s.key, s.cert_type.as_str(), s.serial.as_str()),
            (Id::RSA, "rsa", rsa_serial),
            "{args:?}: {s:?}"
        );
    }
    for args in [ECDSA_TLS12, ECDSA_TLS13] {
        let s = e.connect(name, args);
        assert_eq!(
            (s.key, s.cert_type.as_str(), s.serial.as_str()),
            (Id::EC, "ecdsa", ecdsa_serial),
            "{args:?}: {s:?}"
        );
    }
}

#[test]
fn ecdsa_primary_and_rsa_second_are_served_by_the_clients_signature_algorithms() {
    let mut e = Env::start(1, "", false);
    let ec = e.pki.leaf(&["dual.example.com"], 7001);
    let (rsa, rsa_chain, rsa_key) = e.rsa_leaf("dual.example.com", 7002);
    e.put(
        "dual.example.com",
        &[
            ("crt", &ec.chain_pem),
            ("key", &ec.key_pem),
            ("crt_rsa", &rsa_chain),
            ("key_rsa", &rsa_key),
        ],
    );
    // The first connection fetches it: an RSA-only client.
    let first = e.connect("dual.example.com", RSA_TLS13);
    assert_eq!(
        (first.key, first.cert_type.as_str(), first.source.as_str()),
        (Id::RSA, "rsa", "redis"),
        "{first:?}"
    );
    assert_both_types_served(&e, "dual.example.com", &ec.serial_hex, &serial_hex_of(&rsa));
    // A client that can do both (the kit's) gets ECDSA, with its chain.
    let r = Request::default()
        .sni("dual.example.com")
        .https(e.nginx.port)
        .unwrap();
    r.assert_served(&ec, &e.pki);
    assert!(r.body.contains("type=ecdsa source=cache"), "{:?}", r.body);
    // The default certificate has no type.
    let d = Request::default()
        .sni("unknown.example.com")
        .https(e.nginx.port)
        .unwrap();
    d.assert_default();
    assert!(d.body.starts_with("type= source=default"), "{:?}", d.body);
    e.nginx.assert_healthy();
}

#[test]
fn rsa_primary_and_ecdsa_second_are_served_the_same_way() {
    let mut e = Env::start(1, "", false);
    let ec = e.pki.leaf(&["swap.example.com"], 7011);
    let (rsa, rsa_chain, rsa_key) = e.rsa_leaf("swap.example.com", 7012);
    e.put(
        "swap.example.com",
        &[
            ("crt", &rsa_chain),
            ("key", &rsa_key),
            ("crt_rsa", &ec.chain_pem),
            ("key_rsa", &ec.key_pem),
        ],
    );
    let first = e.connect("swap.example.com", ECDSA_TLS13);
    assert_eq!(
        (first.key, first.source.as_str()),
        (Id::EC, "redis"),
        "{first:?}"
    );
    assert_both_types_served(&e, "swap.example.com", &ec.serial_hex, &serial_hex_of(&rsa));
    e.nginx.assert_healthy();
}

#[test]
fn a_bad_second_pair_refuses_the_record_with_its_reason() {
    let mut e = Env::start(1, "", false);
    let reasons = [
        "rsa_pair_incomplete",
        "rsa_key_mismatch",
        "pair_types",
        "rsa_name_not_covered",
        "rsa_expired",
    ];
    for (i, reason) in reasons.into_iter().enumerate() {
        // A name of its own per case, so no cache or negative entry of an
        // earlier case is in the way.
        let name = format!("bad{i}.example.com");
        let name = name.as_str();
        let ec = e.pki.leaf(&[name], 7020 + i as u64);
        let (_, rsa_chain, _) = e.rsa_leaf(name, 7030 + i as u64);
        let (crt_rsa, key_rsa) = match reason {
            "rsa_pair_incomplete" => (Some(rsa_chain), None),
            "rsa_key_mismatch" => (Some(rsa_chain), Some(key_pem(&rsa_key()))),
            "pair_types" => {
                let ec2 = e.pki.leaf(&[name], 7040 + i as u64);
                (Some(ec2.chain_pem), Some(ec2.key_pem))
            }
            "rsa_name_not_covered" => {
                let (_, c, k) = e.rsa_leaf("elsewhere.example.com", 7050 + i as u64);
                (Some(c), Some(k))
            }
            _ => {
                let k = rsa_key();
                let old = self_signed(&[name], &k, -30, -1).to_pem().unwrap();
                (Some(String::from_utf8(old).unwrap()), Some(key_pem(&k)))
            }
        };
        let mut fields = vec![("crt", ec.chain_pem.as_str()), ("key", &ec.key_pem)];
        if let Some(c) = &crt_rsa {
            fields.push(("crt_rsa", c));
        }
        if let Some(k) = &key_rsa {
            fields.push(("key_rsa", k));
        }
        e.put(name, &fields);
        let before = e.rejected(reason);
        // Neither certificate of the record is served: an ECDSA client
        // gets the default certificate, an RSA-only one the default too
        // or (the default being ECDSA) no handshake at all.
        let s = e.connect(name, ECDSA_TLS13);
        assert_eq!(
            (s.serial.as_str(), s.cert_type.as_str(), s.source.as_str()),
            (serial_hex(1).as_str(), "", "default"),
            "{reason}: {s:?}"
        );
        if let Some(s) = try_s_client(e.nginx.port, name, RSA_TLS13) {
            assert_eq!(s.serial, serial_hex(1), "{reason}: {s:?}");
        }
        let counted = poll(Duration::from_secs(3), Duration::from_millis(20), || {
            (e.rejected(reason) > before).then_some(())
        });
        assert!(counted.is_some(), "{reason} not counted");
        let line = e
            .nginx
            .wait_for_log_line(Duration::from_secs(3), |l| {
                l.contains("dyncert:") && l.contains(&format!("name: \"{name}\""))
            })
            .unwrap_or_else(|| panic!("no log line for {name}\n{}", e.nginx.logs()));
        assert!(line.contains("[warn]"), "{line}");
        assert!(!line.contains("BEGIN"), "PEM in the log: {line}");
    }
    e.nginx.assert_healthy();
}

#[test]
fn an_api_answer_with_both_pairs_is_served_and_written_back_with_both() {
    let e = Env::start(
        1,
        "dyncert_api @API@ writeback=1h; dyncert_api_timeout 2s;",
        true,
    );
    let name = "fromapi.example.com";
    let ec = e.pki.leaf(&[name], 7031);
    let (rsa, rsa_chain, rsa_key) = e.rsa_leaf(name, 7032);
    let body = format!(
        "{{\"crt\": {:?}, \"key\": {:?}, \"crt_rsa\": {:?}, \"key_rsa\": {:?}}}",
        ec.chain_pem, ec.key_pem, rsa_chain, rsa_key
    );
    e.api
        .as_ref()
        .unwrap()
        .set(name, ApiReply::json(200, &body));
    let first = e.connect(name, RSA_TLS12);
    assert_eq!(
        (
            first.serial,
            first.cert_type.as_str(),
            first.source.as_str()
        ),
        (serial_hex_of(&rsa), "rsa", "api")
    );
    assert_both_types_served(&e, name, &ec.serial_hex, &serial_hex_of(&rsa));
    let written = poll(Duration::from_secs(3), Duration::from_millis(20), || {
        e.redis.record_field(name, "key_der_rsa").map(|_| ())
    });
    assert!(written.is_some(), "{:?}", e.redis.record(name));
    assert_eq!(
        e.redis.record_field(name, "crt_rsa").as_deref(),
        Some(rsa_chain.as_str())
    );
    assert_eq!(
        e.redis.record_field(name, "key_rsa").as_deref(),
        Some(rsa_key.as_str())
    );
    assert!(e.redis.record_field(name, "crt_der_rsa").is_some());
    // What was written back serves both types on its own (a restarted
    // terminator reads it from Redis, in its DER form).
    drop(e.nginx);
    let nginx = Nginx::start(
        &e.pki,
        &http(),
        NginxOpts::new()
            .redis(&e.redis)
            .var("MPORT", e.mport)
            .var("EXTRA", ""),
    );
    let again = Env {
        nginx,
        api: None,
        ..e
    };
    let s = again.connect(name, RSA_TLS13);
    assert_eq!((s.cert_type.as_str(), s.source.as_str()), ("rsa", "redis"));
    assert_both_types_served(&again, name, &ec.serial_hex, &serial_hex_of(&rsa));
}

#[test]
fn the_other_worker_serves_both_types_from_the_shared_zone() {
    let mut e = Env::start(2, "dyncert_shared_zone dyncert:4m;", false);
    let name = "zoned.example.com";
    let ec = e.pki.leaf(&[name], 7041);
    let (rsa, rsa_chain, rsa_key) = e.rsa_leaf(name, 7042);
    e.put(
        name,
        &[
            ("crt", &ec.chain_pem),
            ("key", &ec.key_pem),
            ("crt_rsa", &rsa_chain),
            ("key_rsa", &rsa_key),
        ],
    );
    let first = e.connect(name, ECDSA_TLS13);
    assert_eq!((first.key, first.source.as_str()), (Id::EC, "redis"));
    // RSA-only clients until one reaches the other worker: its first
    // handshake for the name loads the record from the zone.
    let mut other = None;
    for _ in 0..200 {
        let s = e.connect(name, RSA_TLS12);
        assert_eq!(
            (s.cert_type.as_str(), s.serial.as_str()),
            ("rsa", serial_hex_of(&rsa).as_str()),
            "{s:?}"
        );
        if s.pid != first.pid {
            other = Some(s);
            break;
        }
    }
    let other = other.expect("a connection reaches the other worker");
    assert_eq!(other.source, "shared", "{other:?}");
    assert_eq!(e.metric("dyncert_shared_loads_total"), 1.0);
    e.nginx.assert_healthy();
}

#[test]
fn an_encrypted_key_rsa_is_decrypted_and_served() {
    const K: [u8; 32] = [0x33; 32];
    let dir = TempDir::new("dualkeys");
    let path = dir.path().join("k.key");
    let hex: String = K.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, format!("{hex}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut e = Env::start(
        1,
        &format!("dyncert_key_decryption_key k {};", path.display()),
        false,
    );
    let mut ring = Keyring::new();
    ring.insert("k", K);
    let wrap = |plain: &str, name: &str| {
        let aad = format!("dyncert:cert:{name}");
        String::from_utf8(seal(plain.as_bytes(), aad.as_bytes(), "k", &ring).unwrap()).unwrap()
    };
    let name = "sealed.example.com";
    let ec = e.pki.leaf(&[name], 7051);
    let (rsa, rsa_chain, rsa_key) = e.rsa_leaf(name, 7052);
    e.put(
        name,
        &[
            ("crt", &ec.chain_pem),
            ("key", &wrap(&ec.key_pem, name)),
            ("crt_rsa", &rsa_chain),
            ("key_rsa", &wrap(&rsa_key, name)),
        ],
    );
    assert_both_types_served(&e, name, &ec.serial_hex, &serial_hex_of(&rsa));
    // A key_rsa sealed for another record is refused with the record.
    let thief = "thief.example.com";
    let ec2 = e.pki.leaf(&[thief], 7053);
    let (_, chain2, key2) = e.rsa_leaf(thief, 7054);
    e.put(
        thief,
        &[
            ("crt", &ec2.chain_pem),
            ("key", &ec2.key_pem),
            ("crt_rsa", &chain2),
            ("key_rsa", &wrap(&key2, name)),
        ],
    );
    let s = e.connect(thief, ECDSA_TLS13);
    assert_eq!(
        (s.source.as_str(), s.serial.as_str()),
        ("default", serial_hex(1).as_str())
    );
    // An RSA-only client gets no certificate at all (the default is ECDSA),
    // and never the record's RSA one.
    assert!(try_s_client(e.nginx.port, thief, RSA_TLS13).is_none());
    let counted = poll(Duration::from_secs(3), Duration::from_millis(20), || {
        (e.rejected("key_decrypt_bad_tag") >= 1.0).then_some(())
    });
    assert!(counted.is_some(), "{}", e.nginx.logs());
    let line = e
        .nginx
        .wait_for_log_line(Duration::from_secs(3), |l| {
            l.contains("dyncert:") && l.contains("name: \"thief.example.com\"")
        })
        .unwrap_or_else(|| panic!("no log line for the thief\n{}", e.nginx.logs()));
    assert!(
        line.contains("field \"key_rsa\" could not be decrypted"),
        "{line}"
    );
    assert!(
        !line.contains("BEGIN") && !line.contains("dyncert:v1:"),
        "{line}"
    );
    e.nginx.assert_healthy();
}
