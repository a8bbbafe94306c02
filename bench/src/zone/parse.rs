//! What the module parses for a name, timed in this process (a client
//! CPU, the module's own code, OpenSSL's CPU time per record): a Redis
//! record as a fetch validates it (`validate_shared`: the PEM chain, the
//! PKCS#8 PEM key, the key/leaf match, the intermediate already parsed
//! once, as in a worker that has fetched before), and the same record as a
//! zone load reads it (`Compact::load`). The first is the CPU of a first
//! touch over a hot handshake, the second the CPU of a hot-set miss served
//! from the zone.

use dyncert_core::compact::{Compact, Deadlines};
use dyncert_core::intern::Interner;
use dyncert_core::outcome::CertSource;
use dyncert_core::record::{Form, Record};
use dyncert_core::validate::validate_shared;
use dyncert_testkit::{LeafPem, Pki};

use crate::probe::thread_cpu_us;

/// Microseconds of CPU per record.
pub struct ParseCost {
    pub records: usize,
    /// A fetch's validation of the PEM record.
    pub pem_us: f64,
    /// A zone load: leaf DER, key DER, policy fields.
    pub zone_us: f64,
}

/// Times both over `sites`, each twice, keeping the lower (the machine
/// may be shared).
pub fn measure(pki: &Pki, sites: &[LeafPem]) -> ParseCost {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let records: Vec<(&str, Record)> = sites
        .iter()
        .map(|s| {
            let r = Record {
                form: Form::Pem,
                crt: s.chain_pem(pki).into_bytes(),
                key: s.key_pem.clone().into_bytes(),
                allow: None,
                client_ca: None,
                second: None,
            };
            (s.name.as_str(), r)
        })
        .collect();
    let interner = Interner::default();
    let zone: Vec<_> = records
        .iter()
        .map(|(name, r)| {
            let p = validate_shared(r, name, None, now, &interner).expect("a valid record");
            let (c, ders) = Compact::of(&p, r, CertSource::Redis).unwrap();
            (c.encode(&Deadlines::default()), ders)
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
        for (name, r) in &records {
            drop(validate_shared(r, name, None, now, &interner).unwrap());
        }
    });
    let zone_us = time(&|| {
        for (bytes, ders) in &zone {
            let (c, _) = Compact::decode(bytes).unwrap();
            drop(c.load(&interner, ders, 0).unwrap());
        }
    });
    ParseCost {
        records: sites.len(),
        pem_us,
        zone_us,
    }
}
