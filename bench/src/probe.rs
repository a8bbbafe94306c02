//! Offline probes that explain the measured figures, run in a child
//! process (a fresh heap, the client's CPU):
//!
//! - where a cached certificate's memory goes: the records parsed the way
//!   the module's validation does, heap bytes (glibc mallinfo2) and RSS
//!   per object kind;
//! - how long parsing and checking one record takes (the CPU part of a
//!   cold miss);
//! - what installing a certificate, key and chain on a connection costs:
//!   dyncert and stock variables do it in every handshake, a static
//!   certificate is set once on the SSL_CTX.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use openssl::ssl::{Ssl, SslContext, SslMethod};

use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::X509;

use dyncert_core::leafkey::{self, Binding};

use crate::host::rss_kib;

/// Heap bytes in use (all arenas, mmapped chunks included).
#[cfg(target_env = "gnu")]
fn heap_bytes() -> u64 {
    // SAFETY: mallinfo2 has no preconditions and returns a plain struct.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as u64
}

/// Without glibc's mallinfo2, resident memory stands in for the heap.
#[cfg(not(target_env = "gnu"))]
fn heap_bytes() -> u64 {
    rss_kib(std::process::id()) * 1024
}

struct Mark(u64, u64);

impl Mark {
    fn now() -> Mark {
        Mark(heap_bytes(), rss_kib(std::process::id()) * 1024)
    }
    /// (heap, rss) bytes per object since the mark.
    fn per(&self, n: usize) -> (f64, f64) {
        let now = Mark::now();
        (
            now.0.saturating_sub(self.0) as f64 / n as f64,
            now.1.saturating_sub(self.1) as f64 / n as f64,
        )
    }
}

/// CPU time of the calling thread, in microseconds.
pub fn thread_cpu_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

/// OpenSSL caches a certificate's decoded extensions on first use (the
/// handshake's security checks do it); do the same before measuring.
pub fn touch(c: &X509) {
    let _ = c.subject_key_id();
}

/// The child's side: `dyncert-bench --probe DIR M`.
pub fn child(dir: &Path, m: usize) {
    let mut records: Vec<(String, String, String)> = Vec::with_capacity(m);
    for e in fs::read_dir(dir).expect("certs dir").flatten() {
        let p = e.path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".crt") else {
            continue;
        };
        if stem.starts_with("static") {
            continue;
        }
        let chain = fs::read_to_string(&p).unwrap();
        let key = fs::read_to_string(dir.join(format!("{stem}.key"))).unwrap();
        let end = "-----END CERTIFICATE-----\n";
        let cut = chain.find(end).expect("PEM") + end.len();
        records.push((chain[..cut].to_owned(), chain[cut..].to_owned(), key));
        if records.len() == m {
            break;
        }
    }
    let n = records.len();
    let leaf_der = X509::from_pem(records[0].0.as_bytes())
        .unwrap()
        .to_der()
        .unwrap()
        .len();
    let inter_der = X509::from_pem(records[0].1.as_bytes())
        .unwrap()
        .to_der()
        .unwrap()
        .len();
    let key_der = PKey::private_key_from_pem(records[0].2.as_bytes())
        .unwrap()
        .private_key_to_der()
        .unwrap()
        .len();
    println!("der {leaf_der} {inter_der} {key_der}");

    // The whole record as the module's validation builds it: the chain
    // parsed in one go, the key, the key/leaf match check.
    let mark = Mark::now();
    let (t0, cpu0) = (Instant::now(), thread_cpu_us());
    let parsed: Vec<(X509, Vec<X509>, PKey<Private>)> = records
        .iter()
        .map(|r| {
            let mut certs = X509::stack_from_pem(format!("{}{}", r.0, r.1).as_bytes()).unwrap();
            let leaf = certs.remove(0);
            let key = PKey::private_key_from_pem(r.2.as_bytes()).unwrap();
            assert!(leaf.public_key().unwrap().public_eq(&key));
            touch(&leaf);
            certs.iter().for_each(touch);
            (leaf, certs, key)
        })
        .collect();
    let parse_us = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
    let parse_cpu_us = (thread_cpu_us() - cpu0) / n as f64;
    let (h, r) = mark.per(n);
    println!("record {h:.0} {r:.0}");
    println!("parse {parse_us:.1} {parse_cpu_us:.1}");
    // The module loads each key into its leaf's own public key object (EC
    // keys), or binds the leaf to its key where that is free
    // (`dyncert_core::leafkey`): heap freed per record against the parsed
    // records above, and how many were bound.
    let mut bound_set: Vec<(X509, Vec<X509>, PKey<Private>)> = Vec::with_capacity(n);
    let mut bound = 0;
    let with_copies = heap_bytes();
    for ((leaf, chain, key), r) in parsed.iter().zip(&records) {
        let mut leaf = X509::from_der(&leaf.to_der().unwrap()).unwrap();
        touch(&leaf);
        let pkcs8 = PKey::private_key_from_pem(r.2.as_bytes())
            .unwrap()
            .private_key_to_pkcs8()
            .unwrap();
        let key2 = dyncert_core::der::KeyDer::parse(&pkcs8)
            .and_then(|k| k.load_for(Some(&mut leaf)).ok())
            .unwrap_or_else(|| key.clone());
        if leafkey::bind(&mut leaf, &key2, false) == Binding::Bound {
            bound += 1;
        }
        bound_set.push((leaf, chain.clone(), key2));
    }
    // The heap those module-loaded leaves and keys added (the chains are
    // shared with the records above).
    let module_record = heap_bytes() as f64 - with_copies as f64;
    println!("bind {:.0} {bound}", module_record / n as f64);
    let (separate, one_call, one_call_bound) = install_us(&parsed, &bound_set);
    println!("install {separate:.2} {one_call:.2} {one_call_bound:.2}");
    drop(bound_set);
    drop(parsed);

    // Then the parts, on the heap the record stage left behind: only the
    // heap figures count from here (RSS stays flat as freed memory is reused).
    let mark = Mark::now();
    let leaves: Vec<X509> = records
        .iter()
        .map(|r| X509::from_pem(r.0.as_bytes()).unwrap())
        .collect();
    leaves.iter().for_each(touch);
    let (h, r) = mark.per(n);
    println!("leaf {h:.0} {r:.0}");

    let mark = Mark::now();
    let inters: Vec<X509> = records
        .iter()
        .map(|r| X509::from_pem(r.1.as_bytes()).unwrap())
        .collect();
    inters.iter().for_each(touch);
    let (h, r) = mark.per(n);
    println!("intermediate {h:.0} {r:.0}");

    let mark = Mark::now();
    let keys: Vec<PKey<Private>> = records
        .iter()
        .map(|r| PKey::private_key_from_pem(r.2.as_bytes()).unwrap())
        .collect();
    let (h, r) = mark.per(n);
    println!("key {h:.0} {r:.0}");

    // The leaf's public key alone, as the X509 holds it decoded.
    let spki: Vec<Vec<u8>> = leaves
        .iter()
        .map(|c| c.public_key().unwrap().public_key_to_der().unwrap())
        .collect();
    let mark = Mark::now();
    let pubs: Vec<PKey<openssl::pkey::Public>> = spki
        .iter()
        .map(|d| PKey::public_key_from_der(d).unwrap())
        .collect();
    let (h, r) = mark.per(n);
    println!("pubkey {h:.0} {r:.0}");
    drop((leaves, inters, keys, pubs));
}

extern "C" {
    // OpenSSL 1.1.1+ (ssl.h); neither openssl-sys nor the openssl crate
    // declares these.
    fn SSL_use_cert_and_key(
        ssl: *mut openssl_sys::SSL,
        x509: *mut openssl_sys::X509,
        privatekey: *mut openssl_sys::EVP_PKEY,
        chain: *mut openssl_sys::stack_st_X509,
        override_: std::ffi::c_int,
    ) -> std::ffi::c_int;
    fn SSL_certs_clear(ssl: *mut openssl_sys::SSL);
}

/// How a certificate is put on a connection.
#[derive(Clone, Copy, PartialEq)]
enum Install {
    /// Only the connection object is made (the baseline).
    Nothing,
    /// `SSL_use_certificate`, `SSL_use_PrivateKey`, one
    /// `SSL_add1_chain_cert` per intermediate: what stock nginx does, and
    /// dyncert did before issue 15.
    Separate,
    /// `SSL_certs_clear` and one `SSL_use_cert_and_key` with a prebuilt
    /// chain stack.
    OneCall,
    /// The same with the leaf bound to its key where that is free: what
    /// the module does.
    OneCallBound,
}

/// Microseconds to install leaf, key and chain on a new connection and
/// encode the leaf as the Certificate message does (twice: its length,
/// then its bytes), over the cost of creating the connection object alone:
/// (separate calls, the single call, the single call with bound leaves),
/// measured in turns in the same process.
fn install_us(
    parsed: &[(X509, Vec<X509>, PKey<Private>)],
    bound: &[(X509, Vec<X509>, PKey<Private>)],
) -> (f64, f64, f64) {
    use foreign_types::ForeignType;
    let ctx = SslContext::builder(SslMethod::tls_server())
        .unwrap()
        .build();
    let stacks: Vec<Stack<X509>> = parsed
        .iter()
        .map(|(_, chain, _)| {
            let mut s = Stack::new().unwrap();
            chain.iter().for_each(|c| s.push(c.clone()).unwrap());
            s
        })
        .collect();
    let rounds = 20_000;
    let time = |how: Install| {
        let t0 = Instant::now();
        for i in 0..rounds {
            let mut ssl = Ssl::new(&ctx).unwrap();
            let set = if how == Install::OneCallBound {
                bound
            } else {
                parsed
            };
            let (leaf, chain, key) = &set[i % set.len()];
            match how {
                Install::Nothing => {}
                Install::Separate => {
                    ssl.set_certificate(leaf).unwrap();
                    ssl.set_private_key(key).unwrap();
                    for c in chain {
                        ssl.add_chain_cert(c.clone()).unwrap();
                    }
                }
                Install::OneCall | Install::OneCallBound => {
                    // SAFETY: ssl is a live connection; SSL_certs_clear(3)
                    // drops its certificates, SSL_use_cert_and_key(3)
                    // takes its own references to leaf, key and chain.
                    let r = unsafe {
                        SSL_certs_clear(ssl.as_ptr());
                        SSL_use_cert_and_key(
                            ssl.as_ptr(),
                            leaf.as_ptr(),
                            key.as_ptr(),
                            stacks[i % parsed.len()].as_ptr(),
                            1,
                        )
                    };
                    assert_eq!(r, 1, "SSL_use_cert_and_key failed");
                }
            }
            if how != Install::Nothing {
                // The Certificate message: i2d_X509 for the length, then
                // for the bytes (ssl_add_cert_to_wpacket).
                let der = leaf.to_der().unwrap();
                std::hint::black_box(der);
            }
            drop(ssl);
        }
        t0.elapsed().as_secs_f64() * 1e6 / rounds as f64
    };
    // Three turns of each, keeping each one's lowest: the machine may be
    // shared, and turns spread its noise over all three.
    let mut best = [f64::MAX; 4];
    for _ in 0..3 {
        for (i, how) in [
            Install::Nothing,
            Install::Separate,
            Install::OneCall,
            Install::OneCallBound,
        ]
        .into_iter()
        .enumerate()
        {
            best[i] = best[i].min(time(how));
        }
    }
    (best[1] - best[0], best[2] - best[0], best[3] - best[0])
}

/// Per-object costs, in bytes: (heap, rss).
#[derive(Default)]
pub struct Breakdown {
    pub records: usize,
    pub leaf: (f64, f64),
    pub intermediate: (f64, f64),
    pub key: (f64, f64),
    /// An EC public key alone (each X509 holds one, decoded).
    pub pubkey: (f64, f64),
    pub record: (f64, f64),
    /// DER sizes of the leaf, the intermediate and the PKCS#8 key.
    pub der: (usize, usize, usize),
    /// Microseconds to parse and check one record: wall clock, and CPU.
    pub parse_us: (f64, f64),
    /// Microseconds to install leaf, key and chain on a connection and
    /// encode the leaf: with separate calls (stock nginx), with a single
    /// call, and with a single call and the leaf bound to its key (the
    /// module).
    pub install_us: (f64, f64, f64),
    /// Heap bytes per record of a leaf and its key loaded as the module
    /// does (the key built into the leaf's own public key object), and how
    /// many of the records were bound that way.
    pub bind: (f64, usize),
}

/// Runs the probes over `m` records of `dir` in a child process.
pub fn run(dir: &Path, m: usize) -> Option<Breakdown> {
    let out = Command::new(std::env::current_exe().ok()?)
        .arg("--probe")
        .arg(dir)
        .arg(m.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut b = Breakdown {
        records: m,
        ..Default::default()
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let pair = (num(1), num(2));
        match f.first().copied() {
            Some("der") => b.der = (num(1) as usize, num(2) as usize, num(3) as usize),
            Some("leaf") => b.leaf = pair,
            Some("intermediate") => b.intermediate = pair,
            Some("key") => b.key = pair,
            Some("pubkey") => b.pubkey = pair,
            Some("record") => b.record = pair,
            Some("parse") => b.parse_us = (num(1), num(2)),
            Some("install") => b.install_us = (num(1), num(2), num(3)),
            Some("bind") => b.bind = (num(1), num(2) as usize),
            _ => {}
        }
    }
    Some(b)
}
