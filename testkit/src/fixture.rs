//! Small pieces that unit tests (`core/`) and end-to-end tests (`tests/`)
//! both build: X.509 names, the start of a test certificate, RSA keys of
//! a chosen size or fault, a record with a second pair, a process's
//! resident memory.

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, BigNumContext, MsbOption};
use openssl::nid::Nid;
use openssl::pkey::{HasPublic, PKey, PKeyRef, Private};
use openssl::rsa::Rsa;
use openssl::x509::{X509Builder, X509Name, X509NameRef};

use crate::pki::Leaf;
use crate::redis::Redis;

/// The name `CN=cn`.
pub fn xname(cn: &str) -> X509Name {
    let mut n = X509Name::builder().unwrap();
    n.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    n.build()
}

/// A v3 certificate being built: subject `CN=cn`, `issuer`, `public`, a
/// random serial, valid from now for 30 days; the caller adds extensions
/// and signs.
pub fn cert_builder<T: HasPublic>(
    cn: &str,
    issuer: &X509NameRef,
    public: &PKeyRef<T>,
) -> X509Builder {
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(63, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&xname(cn)).unwrap();
    b.set_issuer_name(issuer).unwrap();
    b.set_pubkey(public).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    b
}

/// A fresh RSA key of `bits` bits.
pub fn rsa(bits: u32) -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(bits).unwrap()).unwrap()
}

/// An RSA key of `bits` bits whose first "prime" is the product of two
/// primes, with e = 65537 and every other number consistent: what
/// validation's checks (microseconds, no primality test) do not see. Its
/// CRT signatures fail OpenSSL's check for almost every message and are
/// made again without CRT.
pub fn rsa_with_a_composite_factor(bits: i32) -> PKey<Private> {
    let mut ctx = BigNumContext::new().unwrap();
    let one = BigNum::from_u32(1).unwrap();
    let e = BigNum::from_u32(65537).unwrap();
    let prime = |bits: i32| {
        let mut p = BigNum::new().unwrap();
        p.generate_prime(bits, false, None, None).unwrap();
        p
    };
    let new = || BigNum::new().unwrap();
    loop {
        let (p1, p2, q) = (prime(bits / 4), prime(bits / 4), prime(bits / 2));
        let (mut p, mut n, mut pm, mut qm) = (new(), new(), new(), new());
        p.checked_mul(&p1, &p2, &mut ctx).unwrap();
        n.checked_mul(&p, &q, &mut ctx).unwrap();
        pm.checked_sub(&p, &one).unwrap();
        qm.checked_sub(&q, &one).unwrap();
        // d = e^-1 mod lcm(p-1, q-1).
        let (mut g, mut prod, mut lcm, mut d) = (new(), new(), new(), new());
        g.gcd(&pm, &qm, &mut ctx).unwrap();
        prod.checked_mul(&pm, &qm, &mut ctx).unwrap();
        lcm.checked_div(&prod, &g, &mut ctx).unwrap();
        let (mut dp, mut dq, mut qinv) = (new(), new(), new());
        if n.num_bits() != bits
            || d.mod_inverse(&e, &lcm, &mut ctx).is_err()
            || qinv.mod_inverse(&q, &p, &mut ctx).is_err()
        {
            continue;
        }
        dp.nnmod(&d, &pm, &mut ctx).unwrap();
        dq.nnmod(&d, &qm, &mut ctx).unwrap();
        let e = e.to_owned().unwrap();
        let rsa = Rsa::from_private_components(n, e, d, p, q, dp, dq, qinv).unwrap();
        break PKey::from_rsa(rsa).unwrap();
    }
}

/// `name`'s record in `redis`: `ecdsa` as its pair, and the second pair
/// (`crt_rsa`, `key_rsa`) beside it.
pub fn put_with_second_pair(
    redis: &Redis,
    name: &str,
    ecdsa: &Leaf,
    (crt_rsa, key_rsa): (&str, &str),
) {
    redis.cmd(&[
        "HSET",
        &format!("{}{name}", crate::redis::DEFAULT_PREFIX),
        "crt",
        &ecdsa.chain_pem,
        "key",
        &ecdsa.key_pem,
        "crt_rsa",
        crt_rsa,
        "key_rsa",
        key_rsa,
    ]);
}

/// The resident memory of process `pid`, in KiB (Linux).
pub fn rss_kib(pid: u32) -> i64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}
