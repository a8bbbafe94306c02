//! `dyncert-bench formats`: what loading one record costs, by the form it
//! is stored in, with the OpenSSL the module is linked against.
//!
//! Each row validates (or, for the shared zone's compact form, loads) the
//! same ECDSA P-256 record (leaf + intermediate + key) many times through
//! the module's own code (`dyncert_core::validate`, `compact`), with a fresh
//! intermediate cache each time unless said otherwise: the CPU a fetch (or
//! a zone load) spends before a handshake can use the record.

use std::time::Instant;

use dyncert_core::compact::{Compact, Deadlines};
use dyncert_core::intern::Interner;
use dyncert_core::outcome::CertSource;
use dyncert_core::record::{Form, Record};
use dyncert_core::validate::{validate, validate_shared};
use dyncert_testkit::Pki;

fn median_us(mut f: impl FnMut(), n: usize) -> f64 {
    for _ in 0..n / 10 {
        f();
    }
    let mut samples: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[n / 2]
}

pub fn run(quick: bool) -> i32 {
    let n = if quick { 200 } else { 2000 };
    let pki = Pki::new();
    let leaf = pki.leaf(&["formats.example.com"], 1);
    let name = "formats.example.com";
    let sec1 = leaf.issued.key.ec_key().unwrap();
    let pem = |key: Vec<u8>| Record {
        form: Form::Pem,
        crt: leaf.chain_pem.as_bytes().to_vec(),
        key,
        allow: None,
        client_ca: None,
        second: None,
    };
    let chain_der = [
        leaf.issued.cert.to_der().unwrap(),
        pki.intermediate.cert.to_der().unwrap(),
    ]
    .concat();
    let der = |key: Vec<u8>| Record {
        form: Form::Der,
        crt: chain_der.clone(),
        key,
        allow: None,
        client_ca: None,
        second: None,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let rows: Vec<(&str, Record)> = vec![
        (
            "PEM, PKCS#8 key (what certbot writes)",
            pem(leaf.key_pem.as_bytes().to_vec()),
        ),
        (
            "PEM, traditional EC key",
            pem(sec1.private_key_to_pem().unwrap()),
        ),
        (
            "DER, PKCS#8 key",
            der(leaf.issued.key.private_key_to_pkcs8().unwrap()),
        ),
        (
            "DER, SEC1 key (what write-back stores)",
            der(sec1.private_key_to_der().unwrap()),
        ),
    ];
    println!("\n## Loading one record, by form (dyncert-bench formats)\n");
    println!(
        "{}; ECDSA P-256 leaf + intermediate; median of {n}\n",
        openssl::version::version()
    );
    println!("| form | validate, cold intermediate | validate, intermediate already parsed |");
    println!("| --- | --- | --- |");
    let mut problems = 0;
    for (label, r) in &rows {
        if validate(r, name, now).is_err() {
            println!("problem: {label} does not validate");
            problems += 1;
            continue;
        }
        let cold = median_us(|| drop(validate(r, name, now)), n);
        let interner = Interner::default();
        let warm = median_us(|| drop(validate_shared(r, name, None, now, &interner)), n);
        println!("| {label} | {cold:.0} µs | {warm:.0} µs |");
    }
    // The shared zone's compact form, as another worker loads it.
    let interner = Interner::default();
    let parsed = validate_shared(&rows[0].1, name, None, now, &interner).unwrap();
    let (compact, ders) = Compact::of(&parsed, &rows[0].1, CertSource::Redis).unwrap();
    let bytes = compact.encode(&Deadlines::default());
    let load = median_us(
        || {
            let (c, _) = Compact::decode(&bytes).unwrap();
            drop(c.load(&interner, &ders, 0));
        },
        n,
    );
    println!(
        "| shared zone record ({} bytes), intermediate already parsed | — | {load:.0} µs |",
        bytes.len()
    );
    i32::from(problems > 0)
}
