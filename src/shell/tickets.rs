//! Session tickets under the fleet's shared keys (`dyncert_session_tickets`):
//! the ticket key callback of OpenSSL on every ssl server that enables it,
//! with the keys the fetcher thread keeps current in [`KEYS`]. The key set
//! and its lookup are `dyncert_core::tickets`; this file only does the
//! OpenSSL calls, as nginx's own `ngx_ssl_ticket_key_callback` does them
//! (HMAC-SHA256, AES-256-CBC, nginx's 80-byte key layout).

use core::ffi::{c_int, c_uchar};
use core::ptr;

use dyncert_core::fetch::TicketStore;
use dyncert_core::metrics::Simple;
use dyncert_core::tickets::{Lookup, NAME_BYTES};
use ngx::ffi::{
    ngx_conf_t, ngx_http_core_srv_conf_t, EVP_DecryptInit_ex, EVP_EncryptInit_ex, EVP_MAC_init,
    EVP_aes_256_cbc, OSSL_PARAM_construct_end, OSSL_PARAM_construct_utf8_string, RAND_bytes,
    SSL_CTX_get_options, SSL_CTX_set_tlsext_ticket_key_evp_cb, EVP_CIPHER_CTX, EVP_MAC_CTX,
    EVP_MAX_IV_LENGTH, OSSL_PARAM, SSL, SSL_CTX,
};
use ngx::http::{HttpModuleServerConf, NgxHttpSslModule};

use super::boundary::guard;
use super::conf::{emerg, server_location, MainConf, Module, Refused};
use super::metrics;

/// The worker's current key set, written by the fetcher thread.
pub static KEYS: TicketStore = TicketStore::new();

/// AES-256-CBC's IV length (also OpenSSL's `EVP_MAX_IV_LENGTH`).
const IV_BYTES: usize = EVP_MAX_IV_LENGTH as usize;

/// Postconfiguration: checks the servers with `dyncert_session_tickets on`
/// and installs the callback on their SSL_CTX; records in `mcf` whether
/// the fetcher has keys to keep.
pub fn postconfiguration(
    cf: &mut ngx_conf_t,
    mcf: &mut MainConf,
    servers: &[&ngx_http_core_srv_conf_t],
) -> Result<(), Refused> {
    mcf.session_tickets = false;
    for &cscf in servers {
        let (Some(scf), Some(sscf)) = (
            Module::server_conf(cscf),
            NgxHttpSslModule::server_conf(cscf),
        ) else {
            continue;
        };
        // Servers without TLS inherit the http-level flag harmlessly.
        if !scf.session_tickets.unwrap_or(false) || sscf.ssl.ctx.is_null() {
            continue;
        }
        if mcf.redis_url.is_none() {
            return Err(emerg(
                cf,
                format_args!(
                    "\"dyncert_session_tickets on\" needs \"dyncert_redis\" (the keys are \
                     shared through it) in {}",
                    server_location(cscf)
                ),
            ));
        }
        // SAFETY: the ctx is the server's live SSL_CTX.
        let options = unsafe { SSL_CTX_get_options(sscf.ssl.ctx) };
        if options & openssl_sys::SSL_OP_NO_TICKET != 0 {
            return Err(emerg(
                cf,
                format_args!(
                    "\"dyncert_session_tickets on\" contradicts \"ssl_session_tickets off\" in {}",
                    server_location(cscf)
                ),
            ));
        }
        // SAFETY: the ctx is the server's live SSL_CTX; the callback uses
        // only the process-wide KEYS, no per-context argument.
        unsafe { install(sscf.ssl.ctx) };
        mcf.session_tickets = true;
    }
    Ok(())
}

/// # Safety
/// `ctx` is a live SSL_CTX.
unsafe fn install(ctx: *mut SSL_CTX) {
    // SAFETY: ctx is live (the caller's contract). This replaces nginx's
    // own ticket callback (`ssl_session_ticket_key`): OpenSSL calls the
    // EVP one when both are set.
    unsafe { SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, Some(ngx_http_dyncert_ticket_key)) };
}

fn count(what: Simple) {
    metrics::add(metrics::layout().simple(what), 1);
}

/// SSL_CTX_set_tlsext_ticket_key_evp_cb(3) callback. Returns 1 (key set
/// up), 2 (decrypted with a previous key: a new ticket is issued), 0 (no
/// ticket issued, or the ticket is not ours: full handshake), -1 (error).
///
/// # Safety
/// Called by OpenSSL with `name` 16 bytes, `iv` `EVP_MAX_IV_LENGTH`
/// bytes, and live cipher and MAC contexts.
unsafe extern "C" fn ngx_http_dyncert_ticket_key(
    _ssl: *mut SSL,
    name: *mut c_uchar,
    iv: *mut c_uchar,
    ectx: *mut EVP_CIPHER_CTX,
    hctx: *mut EVP_MAC_CTX,
    enc: c_int,
) -> c_int {
    guard("handling a session ticket", -1, || {
        // SAFETY: OpenSSL's contract: name is 16 bytes it owns for the call.
        let name = unsafe { core::slice::from_raw_parts_mut(name, NAME_BYTES) };
        // SAFETY: as above, iv is EVP_MAX_IV_LENGTH bytes.
        let iv = unsafe { core::slice::from_raw_parts_mut(iv, IV_BYTES) };
        let Some(set) = KEYS.get() else {
            // No shared key yet (Redis down at start): no ticket issued,
            // none accepted; handshakes are full ones.
            if enc != 1 {
                count(Simple::TicketsUnknown);
            }
            return 0;
        };
        if enc == 1 {
            let key = set.current();
            // SAFETY: iv is IV_BYTES writable bytes.
            if unsafe { RAND_bytes(iv.as_mut_ptr(), IV_BYTES as c_int) } != 1 {
                return -1;
            }
            // SAFETY: ectx is live; the key is 32 bytes, iv 16: AES-256-CBC's.
            let r = unsafe {
                EVP_EncryptInit_ex(
                    ectx,
                    EVP_aes_256_cbc(),
                    ptr::null_mut(),
                    key.aes_key().as_ptr(),
                    iv.as_ptr(),
                )
            };
            // SAFETY: hctx is live; the HMAC key is 32 bytes.
            if r != 1 || unsafe { mac_init(hctx, key.hmac_key()) } != 1 {
                return -1;
            }
            name.copy_from_slice(key.name());
            return 1;
        }
        let Some((key, lookup)) = set.find(name) else {
            count(Simple::TicketsUnknown);
            return 0;
        };
        // SAFETY: hctx is live; the HMAC key is 32 bytes.
        if unsafe { mac_init(hctx, key.hmac_key()) } != 1 {
            return -1;
        }
        // SAFETY: ectx is live; the key is 32 bytes, iv the ticket's 16.
        let r = unsafe {
            EVP_DecryptInit_ex(
                ectx,
                EVP_aes_256_cbc(),
                ptr::null_mut(),
                key.aes_key().as_ptr(),
                iv.as_ptr(),
            )
        };
        if r != 1 {
            return -1;
        }
        match lookup {
            Lookup::Current => {
                count(Simple::TicketsCurrent);
                1
            }
            Lookup::Previous => {
                count(Simple::TicketsPrevious);
                2
            }
        }
    })
}

/// Sets up HMAC-SHA256 under `key` on the ticket's MAC context.
///
/// # Safety
/// `hctx` is the live EVP_MAC_CTX OpenSSL gave the ticket callback.
unsafe fn mac_init(hctx: *mut EVP_MAC_CTX, key: &[u8; 32]) -> c_int {
    // SAFETY: both strings are NUL-terminated statics; OpenSSL only reads
    // the digest name (bsize 0: its length is taken from the string).
    let digest = unsafe {
        OSSL_PARAM_construct_utf8_string(c"digest".as_ptr(), c"SHA256".as_ptr().cast_mut(), 0)
    };
    // SAFETY: constructs a value, no pointers.
    let params: [OSSL_PARAM; 2] = [digest, unsafe { OSSL_PARAM_construct_end() }];
    // SAFETY: hctx is live (the caller's contract); key and params outlive
    // the call.
    unsafe { EVP_MAC_init(hctx, key.as_ptr(), key.len(), params.as_ptr()) }
}
