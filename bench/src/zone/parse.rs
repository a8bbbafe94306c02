//! What the module parses for a name, timed in this process (a client
//! CPU, OpenSSL's CPU time per record): a Redis record as a fetch
//! validates it (the PEM chain, leaf and intermediate, the PKCS#8 PEM key,
//! the key/leaf match), and the same record as a zone load reads it
//! (`Compact::load`: the leaf's DER and the SEC1 DER key; the intermediate
//! is parsed once per worker). The first is the CPU of a first touch over
//! a hot handshake, the second the CPU of a hot-set miss served from the
//! zone.

use dyncert_testkit::{LeafPem, Pki};
use openssl::ec::EcKey;
use openssl::pkey::PKey;
use openssl::x509::X509;

use crate::probe::{thread_cpu_us, touch};

/// Microseconds of CPU per record.
pub struct ParseCost {
    pub records: usize,
    pub pem_us: f64,
    /// The zone's form: the leaf's DER, the SEC1 key.
    pub leaf_us: f64,
    pub key_us: f64,
}

/// Times both forms over `sites`, each twice, keeping the lower (the
/// machine may be shared).
pub fn measure(pki: &Pki, sites: &[LeafPem]) -> ParseCost {
    let pem: Vec<(String, &str)> = sites
        .iter()
        .map(|s| (s.chain_pem(pki), s.key_pem.as_str()))
        .collect();
    let compact: Vec<(Vec<u8>, Vec<u8>)> = sites
        .iter()
        .map(|s| {
            let leaf = X509::from_pem(s.cert_pem.as_bytes()).unwrap();
            let key = EcKey::private_key_from_pem(s.key_pem.as_bytes()).unwrap();
            (leaf.to_der().unwrap(), key.private_key_to_der().unwrap())
        })
        .collect();
    let n = sites.len().max(1) as f64;
    let time = |f: &dyn Fn()| {
        (0..2)
            .map(|_| {
                let t0 = thread_cpu_us();
                f();
                (thread_cpu_us() - t0) / n
            })
            .fold(f64::INFINITY, f64::min)
    };
    let pem_us = time(&|| {
        for (chain, key) in &pem {
            let mut certs = X509::stack_from_pem(chain.as_bytes()).unwrap();
            let leaf = certs.remove(0);
            let key = PKey::private_key_from_pem(key.as_bytes()).unwrap();
            assert!(leaf.public_key().unwrap().public_eq(&key));
            touch(&leaf);
            certs.iter().for_each(touch);
        }
    });
    let leaf_us = time(&|| {
        for (leaf, _) in &compact {
            touch(&X509::from_der(leaf).unwrap());
        }
    });
    let key_us = time(&|| {
        for (_, key) in &compact {
            drop(
                EcKey::private_key_from_der(key)
                    .and_then(PKey::from_ec_key)
                    .unwrap(),
            );
        }
    });
    ParseCost {
        records: sites.len(),
        pem_us,
        leaf_us,
        key_us,
    }
}
