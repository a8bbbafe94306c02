//! Loading a private key held by a PKCS#11 module through OpenSSL 3.0's
//! `pkcs11` engine (libp11, Debian's `libengine-pkcs11-openssl`): the
//! ENGINE calls openssl-sys does not declare, and the only `unsafe` code
//! for key references. What a record may name is decided in `keyref`;
//! this file only loads what was accepted there.
//!
//! The engine is looked up and initialised lazily, by the first reference
//! a worker's parse thread resolves (never in the master, which forks
//! workers: a PKCS#11 session does not survive `fork`), then kept for the
//! worker's life, since every key it loaded points into it. A failed
//! initialisation is retried with the next reference.
//!
//! References: `ENGINE_by_id(3)`, `ENGINE_ctrl_cmd_string(3)`,
//! `ENGINE_init(3)`, `ENGINE_load_private_key(3)`
//! (<https://docs.openssl.org/3.0/man3/ENGINE_add/>), `UI_null(3)`
//! (<https://docs.openssl.org/3.0/man3/UI_create_method/>), libp11's
//! engine controls (`MODULE_PATH`; <https://github.com/OpenSC/libp11>).

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::Mutex;

use foreign_types::ForeignType;
use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};
use openssl_sys as ffi;

use crate::keyref::{KeyRef, ENGINE_ID};

extern "C" {
    // libcrypto's ENGINE API (deprecated in 3.0, present in every 3.x
    // build without no-engine); not declared by openssl-sys.
    fn ENGINE_by_id(id: *const c_char) -> *mut ffi::ENGINE;
    fn ENGINE_init(e: *mut ffi::ENGINE) -> c_int;
    fn ENGINE_free(e: *mut ffi::ENGINE) -> c_int;
    fn ENGINE_ctrl_cmd_string(
        e: *mut ffi::ENGINE,
        cmd: *const c_char,
        arg: *const c_char,
        optional: c_int,
    ) -> c_int;
    fn ENGINE_load_private_key(
        e: *mut ffi::ENGINE,
        key_id: *const c_char,
        ui_method: *const c_void,
        callback_data: *mut c_void,
    ) -> *mut ffi::EVP_PKEY;
    // A UI method that never prompts (OpenSSL 3.0+): a key that needs a
    // PIN the URI does not give fails instead of reading a terminal.
    fn UI_null() -> *const c_void;
}

/// An initialised (functional) engine reference, kept for the worker's
/// life: keys loaded through it use it at every signature.
struct Engine(*mut ffi::ENGINE);

// SAFETY: an ENGINE is reference-counted and locked by libcrypto; libp11
// serialises its PKCS#11 calls itself. The pointer is only used under the
// `ENGINE` mutex below, and never freed once initialised.
unsafe impl Send for Engine {}

static ENGINE: Mutex<Option<Engine>> = Mutex::new(None);

/// Why a reference could not be resolved. OpenSSL's error queue is
/// drained either way (its text may name the URI, and with it a PIN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineError {
    /// The pkcs11 engine is not installed or did not initialise.
    Unavailable,
    /// The engine is there, the key is not (no such object, wrong PIN,
    /// token or module missing).
    Load,
}

fn check(ok: c_int) -> Result<(), ErrorStack> {
    if ok == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

/// `ENGINE_by_id("pkcs11")`, its `MODULE_PATH` and `PIN` set when
/// configured, then `ENGINE_init`.
fn init(module: Option<&str>, pin: Option<&str>) -> Result<Engine, ErrorStack> {
    let id = CString::new(ENGINE_ID).map_err(|_| ErrorStack::get())?;
    // SAFETY: `id` is a NUL-terminated string that outlives the call;
    // ENGINE_by_id returns a new structural reference or null.
    let e = unsafe { ENGINE_by_id(id.as_ptr()) };
    if e.is_null() {
        return Err(ErrorStack::get());
    }
    let configured = (|| {
        if let Some(path) = module {
            let path = CString::new(path).map_err(|_| ErrorStack::get())?;
            // SAFETY: `e` is the live reference from above; both strings
            // are NUL-terminated and outlive the call; libp11 copies the
            // path.
            check(unsafe { ENGINE_ctrl_cmd_string(e, c"MODULE_PATH".as_ptr(), path.as_ptr(), 0) })?;
        }
        if let Some(pin) = pin {
            let pin = CString::new(pin).map_err(|_| ErrorStack::get())?;
            // SAFETY: as above; libp11 copies the PIN.
            check(unsafe { ENGINE_ctrl_cmd_string(e, c"PIN".as_ptr(), pin.as_ptr(), 0) })?;
        }
        // SAFETY: `e` is the live structural reference from above.
        check(unsafe { ENGINE_init(e) })
    })();
    // SAFETY: drops the structural reference from ENGINE_by_id; on success
    // ENGINE_init took a functional one, which keeps the engine alive.
    unsafe { ENGINE_free(e) };
    configured.map(|()| Engine(e))
}

/// Loads the private key `r` names, through the worker's pkcs11 engine
/// (initialised now if it is not yet). Runs on the parse thread.
pub(crate) fn load_private_key(
    r: &KeyRef,
    module: Option<&str>,
    pin: Option<&str>,
) -> Result<PKey<Private>, EngineError> {
    let mut engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    if engine.is_none() {
        *engine = Some(init(module, pin).map_err(|_| EngineError::Unavailable)?);
    }
    let Some(Engine(e)) = engine.as_ref() else {
        return Err(EngineError::Unavailable);
    };
    // keyref only accepts printable ASCII: no NUL inside.
    let uri = CString::new(r.uri()).map_err(|_| EngineError::Load)?;
    // SAFETY: `e` is a functional reference kept for the process's life;
    // `uri` is NUL-terminated and outlives the call; UI_null is a static
    // method table; the result is a new EVP_PKEY owned by the caller, or
    // null.
    let key = unsafe { ENGINE_load_private_key(*e, uri.as_ptr(), UI_null(), std::ptr::null_mut()) };
    if key.is_null() {
        drop(ErrorStack::get());
        return Err(EngineError::Load);
    }
    // SAFETY: `key` is a non-null EVP_PKEY whose one reference is ours.
    Ok(unsafe { PKey::from_ptr(key) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyref::{parse, KeyRefMode};

    /// With no such object (or no engine installed at all), loading fails
    /// with an error and leaves nothing on OpenSSL's error queue behind.
    #[test]
    fn a_missing_key_is_an_error_not_a_crash() {
        let r = parse(
            b"engine:pkcs11:pkcs11:token=no-such-token;object=none",
            KeyRefMode::Engine,
        )
        .unwrap()
        .unwrap();
        assert!(load_private_key(&r, Some("/nonexistent/libpkcs11.so"), Some("0")).is_err());
        assert!(ErrorStack::get().errors().is_empty());
    }
}
