//! Loading a private key held by a PKCS#11 module through OpenSSL 3.0's
//! `pkcs11` engine (libp11, Debian's `libengine-pkcs11-openssl`): the
//! ENGINE calls openssl-sys does not declare, and the only `unsafe` code
//! for key references. What a record may name is decided in `keyref`;
//! this file only loads what was accepted there.
//!
//! The engine is looked up and initialised lazily, by the first reference
//! a worker resolves (never in the master, which forks workers: a PKCS#11
//! session does not survive `fork`), then kept for the worker's life,
//! since every key it loaded points into it. A failed initialisation is
//! retried with the next reference.
//!
//! Loads run on a thread of their own, started with the worker
//! ([`start_loader`], from `init_process` when `dyncert_key_references
//! engine` is configured), and started again by the next load only when it
//! is gone (or could not start then). A token that stops answering (a partitioned network HSM, a wedged card daemon)
//! blocks that thread, not the parse thread, which waits at most
//! [`LOAD_TIMEOUT`] and refuses the record; a load that returns later is
//! dropped. While a load has not answered within the bound, further loads
//! are refused at once ([`LoadGate`]), so at most one call is ever stuck in
//! the token and no thread or queue grows behind it.
//!
//! References: `ENGINE_by_id(3)`, `ENGINE_ctrl_cmd_string(3)`,
//! `ENGINE_init(3)`, `ENGINE_load_private_key(3)`
//! (<https://docs.openssl.org/3.0/man3/ENGINE_add/>), `UI_null(3)`
//! (<https://docs.openssl.org/3.0/man3/UI_create_method/>), libp11's
//! engine controls (`MODULE_PATH`; <https://github.com/OpenSC/libp11>).

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foreign_types::ForeignType;
use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};
use openssl_sys as ffi;

use crate::keyref::{KeyRef, LoadAdmission, LoadGate, ENGINE_ID, LOAD_TIMEOUT};

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
    /// The module did not answer within [`LOAD_TIMEOUT`]; the load goes
    /// on in the background and its result is dropped.
    Timeout,
    /// An earlier load has not answered within the bound: not asked.
    Stuck,
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

/// One load for the loader thread.
struct Job {
    uri: CString,
    module: Option<String>,
    pin: Option<String>,
    /// When its waiter stops waiting: a job still queued then is skipped.
    deadline: Instant,
    reply: SyncSender<Result<PKey<Private>, EngineError>>,
}

/// The worker's loader thread: where jobs go, and what it runs now.
struct Loader {
    jobs: SyncSender<Job>,
    gate: Arc<Mutex<LoadGate>>,
}

/// Loads queued behind the running one. The gate refuses loads once the
/// running one has not answered for the bound, and each waiter waits at
/// most that long, so only a few ever queue.
const QUEUED_LOADS: usize = 4;

static LOADER: Mutex<Option<Loader>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Loader {
    fn start() -> std::io::Result<Loader> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUED_LOADS);
        let gate = Arc::new(Mutex::new(LoadGate::default()));
        let thread_gate = gate.clone();
        std::thread::Builder::new()
            .name("dyncert-pkcs11".into())
            .spawn(move || {
                for job in queue {
                    if Instant::now() >= job.deadline {
                        continue;
                    }
                    lock(&thread_gate).started(Instant::now());
                    // A panic fails this load (its reply is dropped: the
                    // waiter sees the engine as unavailable), never the
                    // thread.
                    let loaded = std::panic::catch_unwind(|| {
                        load_now(&job.uri, job.module.as_deref(), job.pin.as_deref())
                    });
                    lock(&thread_gate).finished();
                    if let Ok(result) = loaded {
                        // Nobody waits any more after a timeout: the key
                        // is dropped here.
                        let _ = job.reply.try_send(result);
                    }
                }
            })?;
        Ok(Loader { jobs, gate })
    }
}

/// Starts the worker's loader thread unless it runs: from the worker's
/// `init_process` (never the master, which forks), with every signal
/// blocked, so that a thread that cannot start is reported then and the
/// thread lives as long as the worker.
pub(crate) fn start_loader() -> std::io::Result<()> {
    let mut loader = lock(&LOADER);
    if loader.is_none() {
        *loader = Some(Loader::start()?);
    }
    Ok(())
}

/// Loads the private key `r` names, through the worker's pkcs11 engine
/// (initialised now if it is not yet), on the loader thread; waits at most
/// [`LOAD_TIMEOUT`]. Called by the parse thread.
pub(crate) fn load_private_key(
    r: &KeyRef,
    module: Option<&str>,
    pin: Option<&str>,
) -> Result<PKey<Private>, EngineError> {
    load_within(r, module, pin, LOAD_TIMEOUT)
}

fn load_within(
    r: &KeyRef,
    module: Option<&str>,
    pin: Option<&str>,
    bound: Duration,
) -> Result<PKey<Private>, EngineError> {
    // keyref only accepts printable ASCII: no NUL inside.
    let uri = CString::new(r.uri()).map_err(|_| EngineError::Load)?;
    let (reply, answer) = mpsc::sync_channel(1);
    let job = Job {
        uri,
        module: module.map(str::to_owned),
        pin: pin.map(str::to_owned),
        deadline: Instant::now() + bound,
        reply,
    };
    let gate = {
        let mut loader = lock(&LOADER);
        // Started with the worker; started here only when it is gone (its
        // queue was found disconnected) or could not start then.
        if loader.is_none() {
            *loader = Some(Loader::start().map_err(|_| EngineError::Unavailable)?);
        }
        let Some(l) = loader.as_ref() else {
            return Err(EngineError::Unavailable);
        };
        if lock(&l.gate).admit(Instant::now(), bound) == LoadAdmission::Stuck {
            return Err(EngineError::Stuck);
        }
        match l.jobs.try_send(job) {
            Ok(()) => l.gate.clone(),
            Err(TrySendError::Full(_)) => return Err(EngineError::Stuck),
            Err(TrySendError::Disconnected(_)) => {
                // The thread is gone; the next load starts another.
                *loader = None;
                return Err(EngineError::Unavailable);
            }
        }
    };
    match answer.recv_timeout(bound) {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout) => {
            lock(&gate).gave_up();
            Err(EngineError::Timeout)
        }
        Err(RecvTimeoutError::Disconnected) => Err(EngineError::Unavailable),
    }
}

/// The load itself, on the loader thread.
fn load_now(
    uri: &CString,
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

    /// Threads of this process named as the loader.
    fn loader_threads() -> usize {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return 0;
        };
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == "dyncert-pkcs11")
            .count()
    }

    /// Started once, with the worker; loads then use that thread, and
    /// starting again (another reload of the same process) adds none.
    #[test]
    fn the_loader_starts_once_and_loads_use_it() {
        start_loader().expect("the loader thread starts");
        assert!(lock(&LOADER).is_some());
        assert_eq!(loader_threads(), 1);
        start_loader().expect("already running");
        let r = parse(
            b"engine:pkcs11:pkcs11:token=no-such-token;object=none",
            KeyRefMode::Engine,
        )
        .unwrap()
        .unwrap();
        assert!(load_private_key(&r, Some("/nonexistent/libpkcs11.so"), Some("0")).is_err());
        assert_eq!(loader_threads(), 1);
    }
}
