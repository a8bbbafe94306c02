//! A throwaway PKI shaped like a public CA's: a root, an intermediate that
//! issues every server certificate (EC P-256, a key of its own each, leaf
//! first then the intermediate in a chain, the root left out), the static
//! default certificate nginx serves for unknown names, and client CAs and
//! client certificates for the tenant policy. `leaves_pem` makes them by
//! the hundred thousand on all CPUs for the benchmark.

use std::path::Path;
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{HasPublic, PKey, PKeyRef, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Name, X509};

use crate::process::{unix_now, write_file};

/// CN and only SAN of the static default certificate.
pub const DEFAULT_NAME: &str = "default.invalid";

const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;
const YEAR: i64 = 365 * DAY;

/// A key pair with its certificate, as objects and as PEM.
pub struct Issued {
    pub cert: X509,
    pub key: PKey<Private>,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A server certificate and the chain a server presents with it.
pub struct Leaf {
    pub issued: Issued,
    /// Leaf first, then the intermediate: the `crt` field of a record.
    pub chain_pem: String,
    pub key_pem: String,
    /// Upper-case hex, as `TlsSide::leaf_serial`.
    pub serial_hex: String,
}

/// A server certificate as PEM text only, for names by the thousand (no
/// OpenSSL objects kept; the chain is made when asked for).
pub struct LeafPem {
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl LeafPem {
    /// Leaf then intermediate: the `crt` field of a record.
    pub fn chain_pem(&self, pki: &Pki) -> String {
        let mut s = String::with_capacity(self.cert_pem.len() + pki.intermediate.cert_pem.len());
        s.push_str(&self.cert_pem);
        s.push_str(&pki.intermediate.cert_pem);
        s
    }
}

/// How a leaf differs from a valid 90-day certificate for DNS names.
#[derive(Default, Clone, Copy)]
pub struct LeafOpts<'a> {
    /// Expired yesterday.
    pub expired: bool,
    /// Expires this long from now: the module must stop serving it then,
    /// whatever its cache TTLs say.
    pub expires_in: Option<Duration>,
    /// IP address SANs, for a server the module connects to by address.
    pub ips: &'a [&'a str],
    /// Also for client authentication (a Redis Cluster node presents its
    /// certificate to the other nodes).
    pub client_auth: bool,
}

/// A root CA, an intermediate CA, and the static default certificate
/// (`default.invalid`, self-signed, serial 1) that nginx serves for
/// unknown names.
pub struct Pki {
    pub root: Issued,
    pub intermediate: Issued,
    pub default: Issued,
}

/// What `issue` makes.
enum Kind<'a> {
    Ca {
        path_len: Option<u32>,
    },
    /// A server certificate for DNS names and IP addresses.
    Server {
        dns: &'a [&'a str],
        ips: &'a [&'a str],
        client_auth: bool,
    },
    /// A client certificate: a subject, no names.
    Client,
}

struct Spec<'a> {
    cn: &'a str,
    kind: Kind<'a>,
    /// Random when `None`.
    serial: Option<u64>,
    not_before: i64,
    not_after: i64,
}

/// A fresh ECDSA P-256 key.
pub fn ec_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("EVP_PKEY")
}

fn new_key() -> PKey<Private> {
    ec_key()
}

/// A self-signed leaf for `sans` with `key` (any type: Ed25519 signs
/// without a digest), valid from `from_days` to `to_days` relative to now:
/// for unit tests of validation, which need keys and validity windows of
/// their choosing rather than a chain.
pub fn self_signed(sans: &[&str], key: &PKey<Private>, from_days: i64, to_days: i64) -> X509 {
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    let subject = name(sans.first().unwrap_or(&"x"));
    b.set_subject_name(&subject).unwrap();
    b.set_issuer_name(&subject).unwrap();
    b.set_pubkey(key).unwrap();
    let now = unix_now();
    b.set_not_before(&Asn1Time::from_unix(now + from_days * 86400).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(now + to_days * 86400).unwrap())
        .unwrap();
    if !sans.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for s in sans {
            san.dns(s);
        }
        let ext = san.build(&b.x509v3_context(None, None)).unwrap();
        b.append_extension(ext).unwrap();
    }
    let digest = match key.id() {
        openssl::pkey::Id::ED25519 => MessageDigest::null(),
        _ => MessageDigest::sha256(),
    };
    b.sign(key, digest).unwrap();
    b.build()
}

fn name(cn: &str) -> X509Name {
    let mut n = X509Name::builder().unwrap();
    n.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    n.build()
}

fn pem(cert: &X509) -> String {
    String::from_utf8(cert.to_pem().unwrap()).unwrap()
}

fn key_pem(key: &PKey<Private>) -> String {
    String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap()
}

/// A certificate for a fresh key, signed by `issuer` (self-signed when
/// `None`).
fn issue(spec: Spec<'_>, issuer: Option<&Issued>) -> (X509, PKey<Private>) {
    let key = new_key();
    let cert = issue_for(spec, issuer, &key, &key);
    (cert, key)
}

/// The certificate of `spec` for `public` (a key pair's public half),
/// signed by `issuer`, or by `own` when self-signed.
fn issue_for<T: HasPublic>(
    spec: Spec<'_>,
    issuer: Option<&Issued>,
    public: &PKeyRef<T>,
    own: &PKey<Private>,
) -> X509 {
    let key = own;
    let subject = name(spec.cn);
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let serial = match spec.serial {
        Some(s) => BigNum::from_dec_str(&s.to_string()).unwrap(),
        None => {
            let mut bn = BigNum::new().unwrap();
            bn.rand(63, MsbOption::MAYBE_ZERO, false).unwrap();
            bn
        }
    };
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&subject).unwrap();
    b.set_issuer_name(issuer.map_or(&subject, |i| i.cert.subject_name()))
        .unwrap();
    b.set_pubkey(public).unwrap();
    b.set_not_before(&Asn1Time::from_unix(spec.not_before).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(spec.not_after).unwrap())
        .unwrap();
    let issuer_cert = issuer.map(|i| i.cert.as_ref());
    match spec.kind {
        Kind::Ca { path_len } => {
            let mut bc = BasicConstraints::new();
            bc.critical().ca();
            if let Some(n) = path_len {
                bc.pathlen(n);
            }
            b.append_extension(bc.build().unwrap()).unwrap();
            let ku = KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap();
            b.append_extension(ku).unwrap();
        }
        Kind::Server { .. } | Kind::Client => {
            b.append_extension(BasicConstraints::new().critical().build().unwrap())
                .unwrap();
            let ku = KeyUsage::new()
                .critical()
                .digital_signature()
                .build()
                .unwrap();
            b.append_extension(ku).unwrap();
        }
    }
    if let Kind::Server {
        dns,
        ips,
        client_auth,
    } = spec.kind
    {
        let mut eku = ExtendedKeyUsage::new();
        eku.server_auth();
        if client_auth {
            eku.client_auth();
        }
        b.append_extension(eku.build().unwrap()).unwrap();
        if !dns.is_empty() || !ips.is_empty() {
            let mut san = SubjectAlternativeName::new();
            for d in dns {
                san.dns(d);
            }
            for ip in ips {
                san.ip(ip);
            }
            let san = san.build(&b.x509v3_context(issuer_cert, None)).unwrap();
            b.append_extension(san).unwrap();
        }
    }
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(issuer_cert, None))
        .unwrap();
    b.append_extension(ski).unwrap();
    if let Some(i) = issuer {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(Some(&i.cert), None))
            .unwrap();
        b.append_extension(aki).unwrap();
    }
    b.sign(issuer.map_or(key, |i| &i.key), MessageDigest::sha256())
        .unwrap();
    b.build()
}

fn issued(spec: Spec<'_>, issuer: Option<&Issued>) -> Issued {
    let (cert, key) = issue(spec, issuer);
    Issued {
        cert_pem: pem(&cert),
        key_pem: key_pem(&key),
        cert,
        key,
    }
}

impl Pki {
    pub fn new() -> Pki {
        let now = unix_now();
        let root = issued(
            Spec {
                cn: "dyncert test root CA",
                kind: Kind::Ca { path_len: None },
                serial: None,
                not_before: now - HOUR,
                not_after: now + 10 * YEAR,
            },
            None,
        );
        let intermediate = issued(
            Spec {
                cn: "dyncert test intermediate CA",
                kind: Kind::Ca { path_len: Some(0) },
                serial: None,
                not_before: now - HOUR,
                not_after: now + 5 * YEAR,
            },
            Some(&root),
        );
        let default = issued(
            Spec {
                cn: DEFAULT_NAME,
                kind: Kind::Server {
                    dns: &[DEFAULT_NAME],
                    ips: &[],
                    client_auth: false,
                },
                serial: Some(1),
                not_before: now - HOUR,
                not_after: now + YEAR,
            },
            None,
        );
        Pki {
            root,
            intermediate,
            default,
        }
    }

    /// A valid 90-day leaf for `sans` (the first one is also the CN) with
    /// `serial`, issued by the intermediate.
    pub fn leaf(&self, sans: &[&str], serial: u64) -> Leaf {
        self.leaf_with(sans, serial, LeafOpts::default())
    }

    /// A leaf as `opts` says.
    pub fn leaf_with(&self, sans: &[&str], serial: u64, opts: LeafOpts<'_>) -> Leaf {
        let now = unix_now();
        let (not_before, not_after) = match (opts.expired, opts.expires_in) {
            (true, _) => (now - 30 * DAY, now - DAY),
            (false, Some(life)) => (now - HOUR, now + life.as_secs() as i64),
            (false, None) => (now - HOUR, now + 90 * DAY),
        };
        let issued = issued(
            Spec {
                cn: sans[0],
                kind: Kind::Server {
                    dns: sans,
                    ips: opts.ips,
                    client_auth: opts.client_auth,
                },
                serial: Some(serial),
                not_before,
                not_after,
            },
            Some(&self.intermediate),
        );
        Leaf {
            chain_pem: format!("{}{}", issued.cert_pem, self.intermediate.cert_pem),
            key_pem: issued.key_pem.clone(),
            serial_hex: serial_hex(serial),
            issued,
        }
    }

    /// A valid 90-day leaf for `sans` whose key pair lives elsewhere (an
    /// HSM): the certificate for `public`, issued by the intermediate, and
    /// its chain as PEM. The private key is never seen here.
    pub fn leaf_for_public_key(
        &self,
        sans: &[&str],
        serial: u64,
        public: &PKeyRef<openssl::pkey::Public>,
    ) -> (X509, String) {
        let now = unix_now();
        let cert = issue_for(
            Spec {
                cn: sans[0],
                kind: Kind::Server {
                    dns: sans,
                    ips: &[],
                    client_auth: false,
                },
                serial: Some(serial),
                not_before: now - HOUR,
                not_after: now + 90 * DAY,
            },
            Some(&self.intermediate),
            public,
            &self.intermediate.key,
        );
        let chain = format!("{}{}", pem(&cert), self.intermediate.cert_pem);
        (cert, chain)
    }

    /// A valid 90-day leaf for `name` alone, as PEM.
    pub fn leaf_pem(&self, name: String, serial: u64) -> LeafPem {
        let now = unix_now();
        let (cert, key) = issue(
            Spec {
                cn: &name,
                kind: Kind::Server {
                    dns: &[&name],
                    ips: &[],
                    client_auth: false,
                },
                serial: Some(serial),
                not_before: now - HOUR,
                not_after: now + 90 * DAY,
            },
            Some(&self.intermediate),
        );
        LeafPem {
            cert_pem: pem(&cert),
            key_pem: key_pem(&key),
            name,
        }
    }

    /// `leaf_pem` for each of `names` (serials counting up from
    /// `first_serial`, in order), generated on `threads` threads: key
    /// generation and signing dominate, which is what makes 100,000 names
    /// practical.
    pub fn leaves_pem(
        &self,
        names: Vec<String>,
        first_serial: u64,
        threads: usize,
    ) -> Vec<LeafPem> {
        let per = names.len().div_ceil(threads.max(1)).max(1);
        let mut chunks: Vec<Vec<String>> = Vec::new();
        let mut it = names.into_iter().peekable();
        while it.peek().is_some() {
            chunks.push(it.by_ref().take(per).collect());
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = chunks
                .into_iter()
                .enumerate()
                .map(|(c, chunk)| {
                    s.spawn(move || {
                        let base = first_serial + (c * per) as u64;
                        chunk
                            .into_iter()
                            .zip(base..)
                            .map(|(n, serial)| self.leaf_pem(n, serial))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("certificate generator thread"))
                .collect()
        })
    }

    /// A self-signed CA unrelated to the server PKI: what a tenant puts in
    /// the `client_ca` field of its record.
    pub fn client_ca(&self, cn: &str) -> Issued {
        let now = unix_now();
        issued(
            Spec {
                cn,
                kind: Kind::Ca { path_len: None },
                serial: None,
                not_before: now - HOUR,
                not_after: now + YEAR,
            },
            None,
        )
    }

    /// A client certificate with subject `CN=cn` issued by `ca`.
    pub fn client_cert(&self, ca: &Issued, cn: &str) -> Issued {
        let now = unix_now();
        issued(
            Spec {
                cn,
                kind: Kind::Client,
                serial: None,
                not_before: now - HOUR,
                not_after: now + 30 * DAY,
            },
            Some(ca),
        )
    }

    /// Writes `default.crt` / `default.key` into `dir`.
    pub fn write_default(&self, dir: &Path) {
        write_file(&dir.join("default.crt"), &self.default.cert_pem);
        write_file(&dir.join("default.key"), &self.default.key_pem);
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

/// `serial` in upper-case hex, as OpenSSL prints serial numbers.
pub fn serial_hex(serial: u64) -> String {
    BigNum::from_dec_str(&serial.to_string())
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string()
}

/// The DNS names among `cert`'s subjectAltNames.
pub fn dns_sans(cert: &X509) -> Vec<String> {
    cert.subject_alt_names()
        .map(|s| {
            s.iter()
                .filter_map(|g| g.dnsname().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
