//! Sessions and reloads with `dyncert_tenant_policy on`: the ClientHello
//! callback gives every connection its own session id context, which
//! replaces the one nginx computes for each server block (a hash of its
//! certificates and client CA names). So that a reload still ends the
//! sessions a changed server can no longer vouch for, the module's salt
//! covers every server's certificates, client CA names, verification
//! settings and trusted certificates: a TLS session (TLS 1.2 session id,
//! TLS 1.3 stateful ticket, from the shared cache that survives reloads)
//! made with a client certificate of a CA the reload removed is not
//! resumed, whichever server is the listener's default; a reload that
//! changes nothing keeps sessions resuming.

use dyncert_testkit::*;
use openssl::ssl::{SslSession, SslVersion};

const HTTP: &str = r#"
http {
    access_log off;
    dyncert_redis @REDIS@;
    ssl_session_cache shared:SSL:1m;
    ssl_session_tickets off;
    server {
        listen 127.0.0.1:@PORT@ ssl @DYNCERT_DEFAULT@;
        server_name _;
        ssl_certificate     default.crt;
        ssl_certificate_key default.key;
        dyncert on;
        @TENANT@
        location / { return 200 "dyncert\n"; }
    }
    # A static server block selected by SNI, with client certificates.
    server {
        listen 127.0.0.1:@PORT@ ssl @STATIC_DEFAULT@;
        server_name static.example.net;
        ssl_certificate     @CRT@;
        ssl_certificate_key @KEY@;
        ssl_verify_client on;
        ssl_client_certificate @CA@;
        location / { return 200 "static $ssl_client_verify\n"; }
    }
}
"#;

const STATIC: &str = "static.example.net";
const VERSIONS: [SslVersion; 2] = [SslVersion::TLS1_2, SslVersion::TLS1_3];

/// Which server block is the listener's default (the SSL_CTX a connection
/// starts on, before the server name selects another).
#[derive(Debug, Clone, Copy)]
enum Default {
    Dyncert,
    Static,
}

/// What the reload changes in the static block.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Change {
    /// `ssl_client_certificate` names another file, holding CA B only.
    ClientCa,
    /// `ssl_certificate` names another certificate for the same name.
    Certificate,
    /// Other files with the same contents.
    Nothing,
}

struct Setup {
    pki: Pki,
    _redis: Redis,
    files: TempDir,
    nginx: Nginx,
    template: String,
    leaf: Leaf,
    ca_a: Issued,
    ca_b: Issued,
}

fn start(tenant: bool, default: Default) -> Setup {
    let pki = Pki::new();
    let redis = Redis::start();
    let files = TempDir::new("static-server");
    let leaf = pki.leaf(&[STATIC], 9101);
    let crt = files.path().join("static.crt");
    let key = files.path().join("static.key");
    write_file(&crt, &leaf.chain_pem);
    write_file(&key, &leaf.key_pem);
    let ca_a = pki.client_ca("client CA A");
    let ca_b = pki.client_ca("client CA B");
    let ca = files.path().join("caA.pem");
    write_file(&ca, &ca_a.cert_pem);
    let (dyncert_default, static_default) = match default {
        Default::Dyncert => ("default_server", ""),
        Default::Static => ("", "default_server"),
    };
    let template = HTTP
        .replace(
            "@TENANT@",
            if tenant {
                "dyncert_tenant_policy on;"
            } else {
                ""
            },
        )
        .replace("@DYNCERT_DEFAULT@", dyncert_default)
        .replace("@STATIC_DEFAULT@", static_default);
    let nginx = Nginx::start(
        &pki,
        &template,
        NginxOpts::new()
            .redis(&redis)
            .var("CRT", crt.display())
            .var("KEY", key.display())
            .var("CA", ca.display()),
    );
    Setup {
        pki,
        _redis: redis,
        files,
        nginx,
        template,
        leaf,
        ca_a,
        ca_b,
    }
}

impl Setup {
    /// Rewrites the configuration with `change` made, in new files (nginx
    /// keeps a file's parsed objects across reloads while its inode and
    /// mtime stay), and reloads.
    fn reload_with(&mut self, change: Change, round: u32) {
        let file = |name: &str| self.files.path().join(format!("{round}-{name}"));
        let (ca, crt, key) = (file("ca.pem"), file("static.crt"), file("static.key"));
        let client_ca = match change {
            Change::ClientCa => &self.ca_b,
            _ => &self.ca_a,
        };
        write_file(&ca, &client_ca.cert_pem);
        let renewed;
        let leaf = match change {
            Change::Certificate => {
                renewed = self.pki.leaf(&[STATIC], 9102);
                &renewed
            }
            _ => &self.leaf,
        };
        write_file(&crt, &leaf.chain_pem);
        write_file(&key, &leaf.key_pem);
        let path = |p: &std::path::Path| p.display().to_string();
        self.nginx.write_http(
            &self
                .template
                .replace("@CA@", &path(&ca))
                .replace("@CRT@", &path(&crt))
                .replace("@KEY@", &path(&key)),
        );
        self.nginx.reload();
    }

    fn send(&self, req: Request) -> Exchange {
        req.https(self.nginx.port)
            .unwrap_or_else(|e| panic!("request failed: {e}\n{}", self.nginx.logs()))
    }
}

/// A copy of `session` to offer: this client marks a session it offered
/// as not resumable once the connection closes without close_notify.
fn offer(session: &SslSession) -> SslSession {
    SslSession::from_der(&session.to_der().unwrap()).unwrap()
}

/// For each TLS version: a full handshake with a client certificate of CA
/// A makes a session; it resumes; after a reload with `change`, the same
/// session is offered (without a client certificate, as on resumption the
/// server asks for none). Returns, per version, whether it resumed and the
/// status.
fn after_reload(tenant: bool, default: Default, change: Change) -> Vec<(SslVersion, bool, u16)> {
    let mut s = start(tenant, default);
    let alice = s.pki.client_cert(&s.ca_a, "alice");
    let sessions: Vec<_> = VERSIONS
        .iter()
        .map(|&v| {
            let req = Request::get("/").sni(STATIC).client_cert(&alice).max_tls(v);
            let full = s.send(req.clone());
            assert_eq!(full.status, 200, "{default:?} over {v:?}: {full:?}");
            assert_eq!(full.body, "static SUCCESS\n", "{default:?} over {v:?}");
            let session = full.tls().session.clone().expect("a session");
            let again = s.send(req.resume(&offer(&session)));
            assert!(again.tls().resumed, "control: no resumption over {v:?}");
            assert_eq!(again.status, 200, "control over {v:?}: {again:?}");
            (v, session)
        })
        .collect();
    s.reload_with(change, 1);
    if change == Change::ClientCa {
        // The reload took: a full handshake with CA A's certificate fails.
        let req = Request::get("/").sni(STATIC).client_cert(&alice);
        let full = s.send(req);
        assert_eq!(full.status, 400, "CA A still trusted: {full:?}");
    }
    let out = sessions
        .iter()
        .map(|(v, session)| {
            let req = Request::get("/").sni(STATIC).max_tls(*v);
            let r = s.send(req.resume(&offer(session)));
            (*v, r.tls().resumed, r.status)
        })
        .collect();
    s.nginx.assert_healthy();
    out
}

#[test]
fn a_reload_that_removes_a_static_blocks_client_ca_ends_its_sessions() {
    let mut failures = Vec::new();
    for default in [Default::Dyncert, Default::Static] {
        for (v, resumed, status) in after_reload(true, default, Change::ClientCa) {
            if resumed || status == 200 {
                failures.push(format!(
                    "{default:?} default, {v:?}: resumed {resumed}, status {status}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "a session verified against a removed client CA was still accepted: {failures:#?}"
    );
}

#[test]
fn a_reload_that_replaces_a_static_blocks_certificate_ends_its_sessions() {
    for default in [Default::Dyncert, Default::Static] {
        for (v, resumed, _) in after_reload(true, default, Change::Certificate) {
            assert!(!resumed, "{default:?} default, {v:?}: resumed");
        }
    }
}

#[test]
fn sessions_still_resume_after_a_reload_that_changes_nothing() {
    for default in [Default::Dyncert, Default::Static] {
        for (v, resumed, status) in after_reload(true, default, Change::Nothing) {
            assert!(resumed, "{default:?} default, {v:?}: not resumed");
            assert_eq!(status, 200, "{default:?} default, {v:?}");
        }
    }
}

/// Control, without the tenant policy (nginx's own session id contexts):
/// nginx refuses the session when the static block is the listener's
/// default. (When it is not, OpenSSL looks the session up under the
/// default server's context, before the server name selects the block,
/// and stock nginx resumes it.)
#[test]
fn control_stock_nginx_ends_the_sessions_of_a_default_static_block() {
    for (v, resumed, status) in after_reload(false, Default::Static, Change::ClientCa) {
        assert!(!resumed, "{v:?}: resumed");
        assert_eq!(status, 400, "{v:?}");
    }
}
