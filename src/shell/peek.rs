//! Pre-handshake step on `ssl` listeners of dyncert servers: peek the
//! ClientHello (MSG_PEEK, nothing consumed), read its SNI, and if the name
//! is not cached park the connection until the fetcher answers or
//! `dyncert_fetch_timeout` passes; then hand it to nginx's own
//! `ngx_http_init_connection` exactly as if dyncert were not there.
//! Postconfiguration checks the event method and finds the listeners that
//! lead to dyncert servers; init_module wraps their accept handler.
//!
//! This is an optimisation: whatever happens here (garbage, split
//! ClientHello, timeouts), the connection ends up in nginx's handler and
//! the certificate callback decides.

use core::ffi::c_void;
use core::mem::size_of;
use core::ptr;
use std::cell::RefCell;
use std::collections::HashMap;

use dyncert_core::clienthello::{peek_client_hello, Peek, PEEK_LIMIT};
use dyncert_core::clock::{Clock, SystemClock};
use dyncert_core::event_method::check_event_method as check_event_method_name;
use dyncert_core::metrics::Simple;
use dyncert_core::name::{normalize_sni_inline, InlineName};
use dyncert_core::worker::PreHandshake;
use ngx::ffi::{
    ngx_add_timer, ngx_atomic_uint_t, ngx_conf_t, ngx_connection_t, ngx_cycle_t, ngx_del_timer,
    ngx_event_conf_t, ngx_event_core_module, ngx_event_t, ngx_events_module, ngx_handle_read_event,
    ngx_http_conf_addr_t, ngx_http_conf_port_t, ngx_http_core_srv_conf_t, ngx_http_init_connection,
    ngx_inet_get_port, ngx_int_t, ngx_listening_t, ngx_pcalloc, NGX_OK,
};
use ngx::http::{HttpModuleMainConf, HttpModuleServerConf, NgxHttpCoreModule};

use super::boundary::guard;
use super::conf::{emerg, Module, Refused};
use super::log::{debug, Log};
use super::metrics;
use super::state::{fetch_timeout, with_worker, Parked};

/// `dyncert on` needs an edge-triggered event method (postconfiguration):
/// the peek leaves the ClientHello in the socket, which a level-triggered
/// method would report readable forever (a busy loop).
pub fn check_event_method(cf: &mut ngx_conf_t) -> Result<(), Refused> {
    // SAFETY: cf->cycle is the cycle being loaded, alive with cf.
    let method = unsafe { event_method(cf.cycle) };
    match method.as_deref().map(check_event_method_name) {
        Some(Err(e)) => Err(emerg(cf, format_args!("{e}"))),
        _ => Ok(()),
    }
}

/// The event method of the cycle being loaded (`use`, or nginx's default),
/// as `ngx_event_core_module` settled it at the end of the `events {}`
/// block; `None` while that block has not been parsed (it comes after
/// `http {}` in the file).
///
/// # Safety
/// `cycle` must be the cycle whose configuration is being loaded.
unsafe fn event_method(cycle: *mut ngx_cycle_t) -> Option<String> {
    // SAFETY: nginx sets the module indices before parsing configuration.
    let (index, ctx_index) = unsafe { (ngx_events_module.index, ngx_event_core_module.ctx_index) };
    // SAFETY: conf_ctx has one slot per module, NULL until its block is read.
    let events: *mut *mut *mut c_void = unsafe { *(*cycle).conf_ctx.add(index) };
    if events.is_null() {
        return None;
    }
    // SAFETY: an events slot points to the array of event module confs
    // (ngx_event_get_conf in ngx_event.h).
    let ecf = unsafe { *(*events).add(ctx_index) } as *const ngx_event_conf_t;
    if ecf.is_null() {
        return None;
    }
    // SAFETY: ecf is the event core conf allocated for this cycle.
    let name = unsafe { (*ecf).name };
    // NGX_CONF_UNSET until ngx_event_core_init_conf has run.
    if name.is_null() || name as isize == -1 {
        return None;
    }
    // SAFETY: the name of an event module: a static NUL-terminated string.
    let name = unsafe { core::ffi::CStr::from_ptr(name as *const core::ffi::c_char) };
    Some(name.to_string_lossy().into_owned())
}

/// The (family, port) of each `ssl` listener that leads to a server with
/// `dyncert on` (postconfiguration): init_module wraps their handler.
pub fn ports(cf: &ngx_conf_t) -> Vec<(i32, u16)> {
    let mut ports = Vec::new();
    let Some(cmcf) = NgxHttpCoreModule::main_conf(cf) else {
        return ports;
    };
    // SAFETY: cmcf->ports is NULL or the array of ngx_http_conf_port_t that
    // the `listen` directives built, alive with the configuration.
    let Some(all) = (unsafe { cmcf.ports.as_ref() }) else {
        return ports;
    };
    // SAFETY: as above, an array of ngx_http_conf_port_t.
    for port in unsafe { all.as_slice::<ngx_http_conf_port_t>() } {
        // SAFETY: a port's addrs is an array of ngx_http_conf_addr_t.
        for addr in unsafe { port.addrs.as_slice::<ngx_http_conf_addr_t>() } {
            let key = (port.family as i32, port.port);
            if addr.opt.ssl() != 0 && leads_to_dyncert(addr) && !ports.contains(&key) {
                ports.push(key);
            }
        }
    }
    ports
}

/// Whether some server listening on `addr` has `dyncert on`.
fn leads_to_dyncert(addr: &ngx_http_conf_addr_t) -> bool {
    // SAFETY: an address's servers is an array of pointers to the core
    // configurations of the servers listening on it.
    let servers = unsafe { addr.servers.as_slice::<*mut ngx_http_core_srv_conf_t>() };
    servers.iter().any(|&s| {
        // SAFETY: as above: live, non-NULL server configurations.
        let cscf = unsafe { s.as_ref() };
        cscf.and_then(Module::server_conf)
            .is_some_and(|c| c.enabled())
    })
}

type ConnectionHandler = unsafe extern "C" fn(*mut ngx_connection_t);
type EventHandler = unsafe extern "C" fn(*mut ngx_event_t);

/// Longest normalised name (RFC 1035: 253 octets).
const NAME_MAX: usize = 253;

/// Lives in `c->data` (allocated from the connection pool) between accept
/// and the hand-off to nginx.
#[repr(C)]
struct PeekCtx {
    parked: bool,
    /// How many bytes the socket must hold before the ClientHello can be
    /// complete (the parser's bound; 0 before the first parse): fewer are
    /// not read or parsed again.
    wait_for: usize,
    /// Monotonic microseconds when the connection was parked.
    parked_at: u64,
    name_len: usize,
    name: [u8; NAME_MAX],
}

impl PeekCtx {
    /// The name the connection is parked for.
    fn name(&self) -> String {
        String::from_utf8_lossy(&self.name[..self.name_len]).into_owned()
    }
}

thread_local! {
    // One scratch buffer per worker: the event loop peeks one socket at a time.
    static PEEK_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; PEEK_LIMIT]);
    // Park time of connections handed to nginx, by connection number, until
    // their certificate callback reads it for `$dyncert_fetch_time`.
    static WAITS: RefCell<HashMap<ngx_atomic_uint_t, u64>> = RefCell::new(HashMap::new());
}

/// Bound on remembered park times (connections that never reach the
/// certificate callback would otherwise accumulate).
const WAITS_MAX: usize = 4096;

fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// How long connection `number` was parked (0 if it was not), forgetting it.
pub fn take_wait_time(number: ngx_atomic_uint_t) -> u64 {
    WAITS
        .with(|w| w.try_borrow_mut().ok().and_then(|mut w| w.remove(&number)))
        .unwrap_or(0)
}

fn record_wait(number: ngx_atomic_uint_t, micros: u64) {
    metrics::observe_park(micros);
    WAITS.with(|w| {
        if let Ok(mut w) = w.try_borrow_mut() {
            if w.len() >= WAITS_MAX {
                w.clear();
            }
            w.insert(number, micros);
        }
    });
}

/// Replaces `ngx_http_init_connection` on the TCP listeners whose port has a
/// dyncert server behind `ssl` (init_module: runs again on every reload with
/// the new cycle's listeners).
///
pub fn wrap_listeners(cycle: &mut ngx_cycle_t, ports: &[(i32, u16)]) -> usize {
    let mut wrapped = 0;
    // SAFETY: cycle->listening is an array of ngx_listening_t owned by it.
    let ls = unsafe { cycle.listening.as_slice_mut::<ngx_listening_t>() };
    for l in ls {
        let is_http = l.handler.is_some_and(|h| {
            core::ptr::fn_addr_eq(h, ngx_http_init_connection as ConnectionHandler)
        });
        if !is_http || l.type_ != libc::SOCK_STREAM || l.sockaddr.is_null() {
            continue;
        }
        // SAFETY: l.sockaddr is non-NULL: the listener's address, of
        // l.socklen bytes.
        let family = i32::from(unsafe { (*l.sockaddr).sa_family });
        // SAFETY: as above; ngx_inet_get_port reads the port of any
        // address family nginx listens on.
        let port = unsafe { ngx_inet_get_port(l.sockaddr) };
        if ports.iter().any(|&(f, p)| f == family && p == port) {
            l.handler = Some(ngx_http_dyncert_init_connection);
            wrapped += 1;
        }
    }
    wrapped
}

/// Accept handler of wrapped listeners.
///
/// # Safety
/// Called by nginx with a freshly accepted connection.
unsafe extern "C" fn ngx_http_dyncert_init_connection(c: *mut ngx_connection_t) {
    // SAFETY: nginx passes a live connection, just accepted.
    let ok = guard("accepting a connection", false, || unsafe { start_peek(c) });
    if !ok {
        // SAFETY: c is live and still dyncert's (untouched, or set up for
        // a peek that hand_off undoes): nginx's usual path.
        unsafe { hand_off(c) };
    }
}

/// Sets up the peek; false means "hand off now".
///
/// # Safety
/// `c` must be a live connection, just accepted.
unsafe fn start_peek(c: *mut ngx_connection_t) -> bool {
    let Some(timeout) = fetch_timeout() else {
        return false; // dyncert does not run in this worker
    };
    // SAFETY: the caller's contract: c is live.
    let (pool, rev) = unsafe { ((*c).pool, (*c).read) };
    // SAFETY: pool is c's live pool; ngx_pcalloc returns zeroed, aligned
    // memory from it (NULL when out of memory), and all zeroes is a
    // PeekCtx's initial state.
    let ctx = unsafe { ngx_pcalloc(pool, size_of::<PeekCtx>()) };
    if ctx.is_null() {
        return false;
    }
    // SAFETY: c is live, and its data is dyncert's until the hand-off.
    unsafe { (*c).data = ctx };
    // SAFETY: rev is c's live read event, whose handler is dyncert's until
    // the hand-off.
    unsafe { (*rev).handler = Some(ngx_http_dyncert_peek_handler) };
    // SAFETY: as above.
    unsafe { ngx_add_timer(rev, timeout) };
    // SAFETY: as above.
    if unsafe { (*rev).ready() } != 0 {
        // Deferred accept: the ClientHello is already there.
        // SAFETY: rev is set up as when nginx calls its handler.
        unsafe { ngx_http_dyncert_peek_handler(rev) };
        return true;
    }
    // SAFETY: as above.
    unsafe { ngx_handle_read_event(rev, 0) == NGX_OK as ngx_int_t }
}

/// Read/timer handler while peeking or parked.
///
/// # Safety
/// Called by nginx with the read event of a connection being peeked or
/// parked.
unsafe extern "C" fn ngx_http_dyncert_peek_handler(rev: *mut ngx_event_t) {
    // SAFETY: nginx passes the live read event; the data of a connection's
    // read event is the connection.
    let c = unsafe { (*rev).data }.cast::<ngx_connection_t>();
    // SAFETY: c is live, being peeked or parked; rev is its read event.
    let done = guard("reading a ClientHello", true, || unsafe {
        on_event(c, rev)
    });
    if done {
        // SAFETY: c is live and still dyncert's.
        unsafe { hand_off(c) };
    }
}

/// Returns true when the connection must go to nginx now.
///
/// # Safety
/// `c` must be a live connection being peeked or parked (its data is a
/// PeekCtx), `rev` its read event.
unsafe fn on_event(c: *mut ngx_connection_t, rev: *mut ngx_event_t) -> bool {
    // SAFETY: the caller's contract: c->data is our PeekCtx, in c's pool,
    // and nothing else refers to it while the handler runs.
    let ctx = unsafe { &mut *(*c).data.cast::<PeekCtx>() };
    // SAFETY: the caller's contract: c is live.
    let (fd, number) = unsafe { ((*c).fd, (*c).number) };
    // SAFETY: as above; the reference ends at once.
    let log = Log::of(unsafe { &*c });
    // SAFETY: rev is c's live read event.
    if unsafe { (*rev).timedout() } != 0 {
        if ctx.parked {
            let name = ctx.name();
            debug!(log, "*{number} dyncert: park timed out, name: \"{name}\"");
            with_worker(|w| w.abandon(&name, |p| p.c == c && p.number == number));
            metrics::add(metrics::layout().simple(Simple::ParkTimeouts), 1);
        } else {
            debug!(
                log,
                "*{number} dyncert: no complete ClientHello before the timeout"
            );
        }
        return true;
    }
    if ctx.parked {
        // More bytes or a close while waiting: dealt with after hand-off
        // (edge-triggered epoll re-reports nothing we need now).
        return false;
    }
    match peek(fd, ctx.wait_for) {
        Peeked::Wait(wait_for) => {
            ctx.wait_for = wait_for;
            debug!(
                log,
                "*{number} dyncert: ClientHello incomplete, waiting for more bytes"
            );
            // SAFETY: rev is c's live read event: not ready until the
            // event method reports more bytes.
            unsafe { (*rev).set_ready(0) };
            // After a deferred accept (and a PROXY protocol header read by
            // nginx) the socket is not in the event method yet: without
            // this, the rest of the ClientHello would raise no event and
            // only the timer would wake the connection. A no-op when it
            // is registered already.
            // SAFETY: as above.
            unsafe { ngx_handle_read_event(rev, 0) != NGX_OK as ngx_int_t }
        }
        Peeked::HandOff(reason) => {
            debug!(
                log,
                "*{number} dyncert: ClientHello peek: {reason}, no wait"
            );
            true
        }
        Peeked::Name(name) => {
            if !park(ctx, Parked { c, number }, &name) {
                debug!(
                    log,
                    "*{number} dyncert: no wait (cached, or no fetch), name: \"{name}\""
                );
                return true;
            }
            debug!(
                log,
                "*{number} dyncert: parked until the name is fetched, name: \"{name}\""
            );
            if let Some(t) = fetch_timeout() {
                // The park gets the full fetch timeout.
                // SAFETY: rev is c's live read event.
                unsafe { ngx_add_timer(rev, t) };
            }
            false
        }
    }
}

/// What the bytes at the start of a connection say, so far.
// The name is held inline on purpose: boxing it would bring back the
// per-connection allocation the inline form removes.
#[allow(clippy::large_enum_variant)]
enum Peeked {
    /// Not enough of them yet: no complete ClientHello before the socket
    /// holds this many bytes.
    Wait(usize),
    /// Nothing worth waiting for (EOF, an error, not a ClientHello, no or
    /// an invalid SNI, said for the debug log): nginx takes the connection
    /// now.
    HandOff(&'static str),
    /// The ClientHello's server name, normalised.
    Name(InlineName),
}

/// Reads (MSG_PEEK: leaving them in the socket for nginx's TLS stack) and
/// parses the bytes at the start of the connection on `fd`, unless fewer
/// than `wait_for` are there: a ClientHello dribbled in tiny records is
/// then read and parsed a few dozen times, not once per record.
fn peek(fd: libc::c_int, wait_for: usize) -> Peeked {
    if wait_for > 0 {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int, the bytes queued for reading.
        let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) };
        // None queued: an EOF or an error, which recv() below reports.
        if rc == 0 && queued > 0 && usize::try_from(queued).is_ok_and(|q| q < wait_for) {
            return Peeked::Wait(wait_for);
        }
    }
    PEEK_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        // SAFETY: buf has PEEK_LIMIT writable bytes; recv(2) writes at most
        // that many.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK) };
        let n = match usize::try_from(n) {
            // nginx closes it.
            Ok(0) => return Peeked::HandOff("the client closed the connection"),
            Ok(n) => n,
            Err(_) => {
                let err = std::io::Error::last_os_error().raw_os_error();
                if err == Some(libc::EAGAIN) || err == Some(libc::EINTR) {
                    return Peeked::Wait(wait_for);
                }
                // nginx will see the same error and close.
                return Peeked::HandOff("recv() failed");
            }
        };
        let data = &buf[..n];
        // A TLS record starts with 0x16; anything else that parses is a
        // PROXY protocol header in front of it.
        let proxy = data.first() != Some(&0x16);
        match peek_client_hello(data, proxy) {
            Peek::NeedMore { .. } if n >= PEEK_LIMIT => {
                Peeked::HandOff("ClientHello over the peek limit")
            }
            Peek::NeedMore { at_least } => Peeked::Wait(at_least),
            Peek::Unparseable(reason) => Peeked::HandOff(reason),
            Peek::Hello { sni: None } => Peeked::HandOff("no SNI"),
            // Invalid names never cause I/O.
            Peek::Hello { sni: Some(raw) } => match normalize_sni_inline(&raw) {
                Ok(name) => Peeked::Name(name),
                Err(_) => Peeked::HandOff("invalid SNI"),
            },
        }
    })
}

/// Parks the connection behind the fetch of `name` when the core says so;
/// false: it goes on to nginx now (cached, or the fetch was refused).
fn park(ctx: &mut PeekCtx, waiter: Parked, name: &str) -> bool {
    let now = SystemClock.now();
    if with_worker(|w| w.pre_handshake(name, waiter, now)) != Some(PreHandshake::Park) {
        return false;
    }
    let len = name.len().min(NAME_MAX);
    ctx.name[..len].copy_from_slice(&name.as_bytes()[..len]);
    ctx.name_len = len;
    ctx.parked = true;
    ctx.parked_at = monotonic_us();
    true
}

/// Resumes a parked connection whose fetch finished.
///
/// # Safety
/// `p` must come from the in-flight queue.
pub unsafe fn resume(p: Parked) {
    let c = p.c;
    // SAFETY: c points into nginx's connection array, memory that stays
    // valid; a parked connection is only closed through hand_off, which
    // removes it from the queue first. The number, the data and the
    // handler tell whether c still holds the connection that was parked.
    let (number, data, rev) = unsafe { ((*c).number, (*c).data, (*c).read) };
    // SAFETY: rev is c's read event, from nginx's array of read events.
    let handler = unsafe { (*rev).handler };
    let still_parked = number == p.number
        && !data.is_null()
        && handler
            .is_some_and(|h| ptr::fn_addr_eq(h, ngx_http_dyncert_peek_handler as EventHandler));
    if still_parked {
        debug!(
            // SAFETY: c is live and still dyncert's; the reference ends at
            // once.
            Log::of(unsafe { &*c }),
            "*{number} dyncert: fetch done, resuming a parked connection"
        );
        // SAFETY: c is live and still dyncert's.
        unsafe { hand_off(c) };
    }
}

/// Gives the connection to nginx's own handler as if it had just been
/// accepted with the ClientHello already readable.
///
/// # Safety
/// `c` must be a live connection that dyncert holds: accepted, or being
/// peeked or parked.
unsafe fn hand_off(c: *mut ngx_connection_t) {
    // SAFETY: the caller's contract: c is live.
    let (rev, data, number) = unsafe { ((*c).read, (*c).data, (*c).number) };
    // SAFETY: c->data is NULL (not peeked) or our PeekCtx in c's pool.
    if let Some(ctx) = unsafe { data.cast::<PeekCtx>().as_ref() } {
        if ctx.parked {
            let waited = monotonic_us().saturating_sub(ctx.parked_at);
            debug!(
                // SAFETY: c is live; the reference ends at once.
                Log::of(unsafe { &*c }),
                "*{number} dyncert: parked for {waited} us"
            );
            record_wait(number, waited);
        }
    }
    // SAFETY: rev is c's live read event; the reference ends before nginx
    // gets the connection.
    let ev = unsafe { &mut *rev };
    if ev.timer_set() != 0 {
        // SAFETY: ev's timer is in nginx's timer tree.
        unsafe { ngx_del_timer(ev) };
    }
    ev.set_timedout(0);
    ev.set_ready(1);
    // SAFETY: c is live; its data goes back to nginx.
    unsafe { (*c).data = ptr::null_mut() };
    // SAFETY: c is live, set up as nginx's accept leaves a connection with
    // bytes to read: nginx's own handler takes it from here.
    unsafe { ngx_http_init_connection(c) };
}
