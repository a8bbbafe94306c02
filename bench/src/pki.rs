//! The benchmark's PKI: a root, one intermediate, and one ECDSA P-256 leaf
//! with its own key per name, shaped like a public CA's (leaf first, then
//! the intermediate; the root is left out of the chain).

use std::fmt::Write as _;

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509NameBuilder, X509};

/// The issuing side, shared by every generator thread.
pub struct Pki {
    inter: X509,
    inter_key: PKey<Private>,
    /// PEM of the intermediate, appended to every chain.
    pub inter_pem: String,
}

/// One name's record, in the form Redis, the API and the files take it.
pub struct Site {
    pub name: String,
    pub leaf_pem: String,
    pub key_pem: String,
}

impl Site {
    pub fn chain_pem(&self, pki: &Pki) -> String {
        let mut s = String::with_capacity(self.leaf_pem.len() + pki.inter_pem.len());
        s.push_str(&self.leaf_pem);
        s.push_str(&pki.inter_pem);
        s
    }

    /// The certificate API's answer: `{"crt": PEM chain, "key": PEM key}`.
    pub fn api_json(&self, pki: &Pki) -> String {
        let mut s = String::from("{\"crt\":\"");
        json_escape(&mut s, &self.chain_pem(pki));
        s.push_str("\",\"key\":\"");
        json_escape(&mut s, &self.key_pem);
        s.push_str("\"}");
        s
    }
}

fn json_escape(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

pub fn ec_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("EVP_PKEY")
}

/// Which kind of certificate `issue` makes.
enum Kind<'a> {
    Ca { path_len: Option<u32> },
    Leaf { dns: &'a str },
}

fn issue(
    cn: &str,
    kind: Kind<'_>,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    serial: u32,
) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(serial).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map(|(c, _)| c.subject_name()).unwrap_or(&name))
        .unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(90).unwrap())
        .unwrap();
    let exts = match kind {
        Kind::Ca { path_len } => {
            let mut bc = BasicConstraints::new();
            bc.critical().ca();
            if let Some(n) = path_len {
                bc.pathlen(n);
            }
            vec![
                bc.build().unwrap(),
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .unwrap(),
            ]
        }
        Kind::Leaf { dns } => vec![
            BasicConstraints::new().critical().build().unwrap(),
            KeyUsage::new()
                .critical()
                .digital_signature()
                .build()
                .unwrap(),
            ExtendedKeyUsage::new().server_auth().build().unwrap(),
            SubjectAlternativeName::new()
                .dns(dns)
                .build(&b.x509v3_context(issuer.map(|(c, _)| &**c), None))
                .unwrap(),
        ],
    };
    for e in exts {
        b.append_extension(e).unwrap();
    }
    let skid = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(issuer.map(|(c, _)| &**c), None))
        .unwrap();
    b.append_extension(skid).unwrap();
    if let Some((ca, _)) = issuer {
        let akid = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(Some(ca), None))
            .unwrap();
        b.append_extension(akid).unwrap();
    }
    b.sign(
        issuer.map(|(_, k)| k).unwrap_or(key),
        MessageDigest::sha256(),
    )
    .unwrap();
    b.build()
}

fn pem(c: &X509) -> String {
    String::from_utf8(c.to_pem().unwrap()).unwrap()
}

impl Pki {
    pub fn new() -> Pki {
        let root_key = ec_key();
        let root = issue(
            "dyncert bench root",
            Kind::Ca { path_len: None },
            &root_key,
            None,
            1,
        );
        let inter_key = ec_key();
        let inter = issue(
            "dyncert bench intermediate",
            Kind::Ca { path_len: Some(0) },
            &inter_key,
            Some((&root, &root_key)),
            2,
        );
        Pki {
            inter_pem: pem(&inter),
            inter,
            inter_key,
        }
    }

    /// A leaf for `name` with a fresh key, signed by the intermediate.
    pub fn site(&self, name: String, serial: u32) -> Site {
        let key = ec_key();
        let leaf = issue(
            &name,
            Kind::Leaf { dns: &name },
            &key,
            Some((&self.inter, &self.inter_key)),
            serial,
        );
        Site {
            leaf_pem: pem(&leaf),
            key_pem: String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
            name,
        }
    }

    /// Sites for `names`, generated on `threads` threads (key generation
    /// and signing dominate: this is what makes 100,000 names practical).
    pub fn sites(&self, names: Vec<String>, first_serial: u32, threads: usize) -> Vec<Site> {
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
                        let base = first_serial + (c * per) as u32;
                        chunk
                            .into_iter()
                            .enumerate()
                            .map(|(i, n)| self.site(n, base + i as u32))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("generator thread"))
                .collect()
        })
    }
}
