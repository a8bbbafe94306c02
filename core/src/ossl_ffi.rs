//! The OpenSSL calls the `openssl` crate does not wrap for OpenSSL 3.0,
//! the only `unsafe` code in core (with `ossl_engine`):
//!
//! - building an EC private key directly in the provider's form
//!   (`EVP_PKEY_fromdata`);
//! - building it into a certificate's own public key object
//!   ([`ec_key_into_leaf`]), and replacing a certificate's key object
//!   ([`set_leaf_key`]), which `crate::leafkey` decides on.
//!
//! Why the provider's form: `d2i_ECPrivateKey` (fast to decode) gives a
//! *legacy* `EC_KEY`. OpenSSL 3.0 signs with provider keys, so the first
//! handshake that uses such a key exports it into a second, provider-side
//! copy, on the event loop, and keeps both: about 2 KiB more per cached
//! name and tens of microseconds on the first handshake. Built here from
//! the same parts (curve name, private scalar, public point), the key
//! exists once, in the form OpenSSL signs with, and the work happens where
//! the key is loaded (the parse thread).
//!
//! References: `EVP_PKEY_fromdata(3)`, `OSSL_PARAM_BLD(3)`,
//! `EVP_PKEY-EC(7)` (the "group", "priv" and "pub" parameters)
//! (<https://docs.openssl.org/3.0/man3/EVP_PKEY_fromdata/>),
//! `X509_get0_pubkey(3)`, `X509_set_pubkey(3)`.

use std::ffi::{c_int, CStr};
use std::ptr;

use foreign_types::{ForeignType, ForeignTypeRef};
use openssl::bn::BigNum;
use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};
use openssl_sys as ffi;

extern "C" {
    // In every libcrypto 3.x; not declared by openssl-sys.
    fn OPENSSL_cleanse(ptr: *mut std::ffi::c_void, len: usize);
    fn X509_get0_pubkey(x: *const ffi::X509) -> *mut ffi::EVP_PKEY;
    fn X509_get0_pubkey_bitstr(x: *const ffi::X509) -> *mut ffi::ASN1_BIT_STRING;
    fn EVP_PKEY_get_group_name(
        pkey: *const ffi::EVP_PKEY,
        name: *mut std::ffi::c_char,
        size: usize,
        len: *mut usize,
    ) -> c_int;
    fn EVP_PKEY_get_utf8_string_param(
        pkey: *const ffi::EVP_PKEY,
        key_name: *const std::ffi::c_char,
        out: *mut std::ffi::c_char,
        size: usize,
        len: *mut usize,
    ) -> c_int;
    fn BN_mod_exp_mont_consttime(
        rr: *mut ffi::BIGNUM,
        a: *const ffi::BIGNUM,
        p: *const ffi::BIGNUM,
        m: *const ffi::BIGNUM,
        ctx: *mut ffi::BN_CTX,
        in_mont: *mut std::ffi::c_void,
    ) -> c_int;
}

/// a^p mod m for a secret exponent p, in constant time
/// (`BN_mod_exp_mont_consttime(3)`, what OpenSSL's own RSA signing uses
/// for the CRT exponents): an error for an even or non-positive m.
pub fn mod_exp_consttime(
    a: &openssl::bn::BigNumRef,
    p: &openssl::bn::BigNumRef,
    m: &openssl::bn::BigNumRef,
    ctx: &mut openssl::bn::BigNumContextRef,
) -> Result<BigNum, ErrorStack> {
    let r = BigNum::new()?;
    // SAFETY: every BIGNUM and the context are live (the references
    // guarantee it); r is ours and distinct from a, p and m; a null
    // BN_MONT_CTX makes OpenSSL set one up and free it itself.
    let ok = unsafe {
        BN_mod_exp_mont_consttime(
            r.as_ptr(),
            a.as_ptr(),
            p.as_ptr(),
            m.as_ptr(),
            ctx.as_ptr(),
            ptr::null_mut(),
        )
    };
    if ok == 1 {
        Ok(r)
    } else {
        Err(ErrorStack::get())
    }
}

/// A key's UTF-8 string parameter `name` (`EVP_PKEY_get_utf8_string_param(3)`;
/// for EC keys `"group"` and `"encoding"`, see `EVP_PKEY-EC(7)`), or
/// None when the key has none or it is longer than 63 bytes.
pub fn key_string_param<T>(key: &openssl::pkey::PKeyRef<T>, name: &CStr) -> Option<String> {
    let mut out = [0 as std::ffi::c_char; 64];
    let mut len = 0usize;
    // SAFETY: key is a live EVP_PKEY (the reference guarantees it); name
    // is NUL-terminated; the output buffer is ours, of the size given, and
    // OpenSSL NUL-terminates within it on success.
    let ok = unsafe {
        EVP_PKEY_get_utf8_string_param(
            key.as_ptr(),
            name.as_ptr(),
            out.as_mut_ptr(),
            out.len(),
            &mut len,
        )
    };
    if ok != 1 {
        return None;
    }
    // SAFETY: on success out holds a NUL-terminated string.
    let s = unsafe { CStr::from_ptr(out.as_ptr()) };
    s.to_str().ok().map(str::to_owned)
}

/// A key's BIGNUM parameter `name` (`EVP_PKEY_get_bn_param(3)`; for RSA
/// keys "n", "e", "d", "rsa-factor1", "rsa-exponent1", "rsa-coefficient1"
/// ..., see `EVP_PKEY-RSA(7)`), a copy, or None when the key has none. A
/// legacy key answers through its type's ctrl translation, a provider key
/// through its key manager: neither makes a second copy of the key (as
/// `EVP_PKEY_get1_RSA` of a provider key would, kept with it).
pub fn key_bn_param<T>(key: &openssl::pkey::PKeyRef<T>, name: &CStr) -> Option<BigNum> {
    let mut bn: *mut ffi::BIGNUM = ptr::null_mut();
    // SAFETY: key is a live EVP_PKEY (the reference guarantees it); name
    // is NUL-terminated; on success OpenSSL stores a BIGNUM it allocated
    // for the caller in bn, which the BigNum below then owns.
    let ok = unsafe { ffi::EVP_PKEY_get_bn_param(key.as_ptr(), name.as_ptr(), &mut bn) };
    if bn.is_null() {
        return None;
    }
    // SAFETY: bn is a BIGNUM allocated for us and owned by nobody else.
    let bn = unsafe { BigNum::from_ptr(bn) };
    (ok == 1).then_some(bn)
}

/// Frees what it holds on every path.
struct Owned {
    bld: *mut ffi::OSSL_PARAM_BLD,
    params: *mut ffi::OSSL_PARAM,
    ctx: *mut ffi::EVP_PKEY_CTX,
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: each pointer is null or owned by this struct alone (made
        // by the matching *_new call below and not freed elsewhere); the
        // free functions accept null. The copy of the private scalar in
        // the parameter array is wiped first (OpenSSL 3.0 has no
        // OSSL_PARAM_clear_free).
        unsafe {
            if !self.params.is_null() {
                let p = ffi::OSSL_PARAM_locate(self.params, c"priv".as_ptr());
                if !p.is_null() && !(*p).data.is_null() {
                    OPENSSL_cleanse((*p).data, (*p).data_size);
                }
            }
            ffi::OSSL_PARAM_free(self.params);
            ffi::OSSL_PARAM_BLD_free(self.bld);
            ffi::EVP_PKEY_CTX_free(self.ctx);
        }
    }
}

fn check(ok: c_int) -> Result<(), ErrorStack> {
    if ok > 0 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

fn non_null<T>(p: *mut T) -> Result<*mut T, ErrorStack> {
    if p.is_null() {
        Err(ErrorStack::get())
    } else {
        Ok(p)
    }
}

/// A provider-native EC key pair on the named curve `group` (OpenSSL's
/// short name, e.g. "prime256v1") from its private scalar (big-endian) and
/// its public point (SEC1 octets). OpenSSL checks that the point is on the
/// curve; that it belongs to the scalar is the caller's business (the
/// record's leaf must carry the same point).
pub fn ec_key_from_parts(
    group: &CStr,
    private: &[u8],
    public: &[u8],
) -> Result<PKey<Private>, ErrorStack> {
    openssl::init();
    let mut scalar = BigNum::from_slice(private)?;
    let mut o = Owned {
        bld: ptr::null_mut(),
        params: ptr::null_mut(),
        ctx: ptr::null_mut(),
    };
    let key = build(&mut o, group, &scalar, public, ptr::null_mut());
    scalar.clear();
    key
}

/// Where a key built into a leaf's own public key object stands.
pub enum IntoLeaf {
    /// Built: the leaf's public key object now holds the key pair, and
    /// this is a new reference to it.
    Built(PKey<Private>),
    /// Not attempted: the leaf's key is not this EC point on this curve in
    /// the same encoding (the caller builds the key on its own, and
    /// checks the pair as usual). The leaf is untouched.
    NotSame,
    /// OpenSSL failed while replacing the leaf's key data: the leaf's
    /// public key object may be empty, so the caller parses the leaf
    /// again from its DER.
    Failed,
}

/// Builds the EC key pair (`group`, `private`, `public`) into `leaf`'s own
/// public key object, when the leaf's subjectPublicKeyInfo carries exactly
/// the point `public` on the curve `group`: `EVP_PKEY_fromdata` given an
/// existing `EVP_PKEY` replaces its key data in place (its address, which
/// the certificate holds, stays the same). The certificate's saved
/// encoding is not touched: clients receive the same bytes.
///
/// The key is built once either way; this way the leaf's decoded public
/// key is replaced rather than kept beside a second object, and the key
/// OpenSSL checks against the certificate on every install is the
/// certificate's own (`EVP_PKEY_eq` returns at once for the same object).
///
/// `leaf` is borrowed exclusively: it must not be shared with another
/// thread or connection yet (the parse thread's fresh leaf).
pub fn ec_key_into_leaf(
    leaf: &mut openssl::x509::X509,
    group: &CStr,
    private: &[u8],
    public: &[u8],
) -> IntoLeaf {
    openssl::init();
    // SAFETY: leaf is a live certificate borrowed exclusively for the
    // call; the returned pointers are its internal objects (not owned
    // here, valid while leaf is), read here and written only by
    // EVP_PKEY_fromdata below.
    let (target, bits) = unsafe {
        (
            X509_get0_pubkey(leaf.as_ptr()),
            X509_get0_pubkey_bitstr(leaf.as_ptr()),
        )
    };
    if target.is_null() || bits.is_null() {
        return IntoLeaf::NotSame;
    }
    // SAFETY: bits is the leaf's live BIT STRING; its data holds length
    // bytes (ASN1_STRING_get0_data, ASN1_STRING_length).
    let point = unsafe {
        let len = usize::try_from(ffi::ASN1_STRING_length(bits.cast())).unwrap_or(0);
        let data = ffi::ASN1_STRING_get0_data(bits.cast());
        if data.is_null() {
            &[][..]
        } else {
            std::slice::from_raw_parts(data, len)
        }
    };
    let mut name = [0 as std::ffi::c_char; 64];
    let mut len = 0usize;
    // SAFETY: target is the leaf's live key; the name buffer is ours, of
    // the size given (EVP_PKEY_get_group_name NUL-terminates within it).
    let named = unsafe { EVP_PKEY_get_group_name(target, name.as_mut_ptr(), name.len(), &mut len) };
    // SAFETY: on success name holds a NUL-terminated string.
    let same_curve = named == 1 && unsafe { CStr::from_ptr(name.as_ptr()) } == group;
    if !same_curve || point != public {
        return IntoLeaf::NotSame;
    }
    let Ok(mut scalar) = BigNum::from_slice(private) else {
        return IntoLeaf::NotSame;
    };
    let mut o = Owned {
        bld: ptr::null_mut(),
        params: ptr::null_mut(),
        ctx: ptr::null_mut(),
    };
    let built = build(&mut o, group, &scalar, public, target);
    scalar.clear();
    match built {
        Ok(key) => IntoLeaf::Built(key),
        Err(_) => IntoLeaf::Failed,
    }
}

/// `target`: null for a new key, or an existing key whose data is replaced
/// (see [`ec_key_into_leaf`]); the result is then a new reference to it.
fn build(
    o: &mut Owned,
    group: &CStr,
    scalar: &BigNum,
    public: &[u8],
    target: *mut ffi::EVP_PKEY,
) -> Result<PKey<Private>, ErrorStack> {
    // SAFETY: plain libcrypto 3.0 calls on pointers this function owns
    // (`o`) or borrows for the call: `group`, `public` and `scalar` outlive
    // `OSSL_PARAM_BLD_to_param`, which copies what the builder refers to;
    // `pkey` is handed to `PKey` only when `EVP_PKEY_fromdata` set it.
    unsafe {
        o.bld = non_null(ffi::OSSL_PARAM_BLD_new())?;
        check(ffi::OSSL_PARAM_BLD_push_utf8_string(
            o.bld,
            c"group".as_ptr(),
            group.as_ptr(),
            0,
        ))?;
        check(ffi::OSSL_PARAM_BLD_push_BN(
            o.bld,
            c"priv".as_ptr(),
            scalar.as_ptr(),
        ))?;
        check(ffi::OSSL_PARAM_BLD_push_octet_string(
            o.bld,
            c"pub".as_ptr(),
            public.as_ptr().cast(),
            public.len(),
        ))?;
        o.params = non_null(ffi::OSSL_PARAM_BLD_to_param(o.bld))?;
        o.ctx = non_null(ffi::EVP_PKEY_CTX_new_from_name(
            ptr::null_mut(),
            c"EC".as_ptr(),
            ptr::null(),
        ))?;
        check(ffi::EVP_PKEY_fromdata_init(o.ctx))?;
        let mut pkey: *mut ffi::EVP_PKEY = target;
        check(ffi::EVP_PKEY_fromdata(
            o.ctx,
            &mut pkey,
            ffi::EVP_PKEY_KEYPAIR,
            o.params,
        ))?;
        if target.is_null() {
            return Ok(PKey::from_ptr(non_null(pkey)?));
        }
        // The same object, filled in place (never a new one: that would
        // leave the leaf's old key and hand out a key it does not hold).
        if pkey != target {
            return Err(ErrorStack::get());
        }
        check(ffi::EVP_PKEY_up_ref(target))?;
        Ok(PKey::from_ptr(target))
    }
}

/// Makes `key` the public key object of `leaf` (`X509_set_pubkey`: the
/// certificate's decoded public key is freed and `leaf` holds a reference
/// to `key`). What the library then does with the certificate's saved
/// encoding depends on its version; see [`crate::leafkey`], which decides
/// when this is done.
pub fn set_leaf_key(leaf: &mut openssl::x509::X509, key: &PKey<Private>) -> Result<(), ErrorStack> {
    // SAFETY: both pointers are live objects owned by the callers'
    // wrappers; `leaf` is borrowed exclusively (not shared with another
    // thread or connection yet); X509_set_pubkey takes its own reference
    // to `key` and frees the X509_PUBKEY it replaces, which only `leaf`
    // held.
    check(unsafe { ffi::X509_set_pubkey(leaf.as_ptr(), key.as_ptr()) })
}
