//! Metrics in a shared-memory zone: every worker adds to the same array of
//! atomic counters, so the numbers do not depend on which worker answers
//! `dyncert_metrics`. The catalogue and the text format live in
//! `dyncert_core::metrics`; this file maps the zone, counts responses in the
//! log phase and serves the exposition.
//!
//! The zone has the same size in every configuration, so nginx hands the
//! same memory to each new cycle and the counters survive reloads. A
//! process learns where the array is only in `init_module` ([`publish`]),
//! which a reload that fails (after the zone was set up, e.g. at `bind()`)
//! never reaches: the master keeps pointing at the zone of the cycle it
//! still runs, and the workers it forks later inherit that.

use core::ffi::c_void;
use core::ptr::{self, NonNull};
use core::slice;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use dyncert_core::metrics::{
    render, render_zone, server_labels, Layout, MetricSink, WORKER_SLOTS, W_PID,
};
use dyncert_core::outcome::CertSource;
use ngx::core::Status;
use ngx::ffi::{
    ngx_conf_t, ngx_http_request_t, ngx_int_t, ngx_pagesize, ngx_shared_memory_add, ngx_shm_zone_t,
    ngx_shmtx_lock, ngx_shmtx_unlock, ngx_slab_alloc_locked, ngx_slab_free_locked, ngx_slab_pool_t,
    ngx_str_t, ngx_uint_t, NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_HTTP_NOT_ALLOWED, NGX_OK,
};
use ngx::ffi::{ngx_http_core_srv_conf_t, ngx_http_phases_NGX_HTTP_LOG_PHASE};
use ngx::http::{
    HttpModule, HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf, NgxHttpCoreModule,
};
use ngx::ngx_string;

use super::boundary::guard;
use super::conf::{add_phase_handler, emerg, LocConf, MainConf, Module, Refused};
use super::directives::{directive, DirectiveError, DirectiveResult};
use super::response::send_body;

/// First slot of the zone's array: a marker that the array is ours; the
/// second holds how many counters follow.
const MAGIC: u64 = 0x6479_6e63_6572_7431; // "dyncert1"
/// Slots before the counters: MAGIC and the count.
const HEADER: usize = 2;

// The zone of the cycle this process runs, set only by `publish` (from
// init_module, in the master before it forks workers).
static COUNTERS: AtomicPtr<AtomicU64> = AtomicPtr::new(ptr::null_mut());
static COUNTERS_LEN: AtomicUsize = AtomicUsize::new(0);
static SERVERS: AtomicUsize = AtomicUsize::new(0);
/// This worker's gauge slot (usize::MAX: none).
static WORKER_SLOT: AtomicUsize = AtomicUsize::new(usize::MAX);

fn counters() -> &'static [AtomicU64] {
    let p = COUNTERS.load(Ordering::Acquire);
    if p.is_null() {
        return &[];
    }
    // SAFETY: `publish` set these from init_module of the cycle in use, to
    // the COUNTERS_LEN atomics of its zone; nginx unmaps a zone only when a
    // later cycle without it succeeds, whose init_module publishes again,
    // and a worker keeps the mapping it was forked with until it exits.
    unsafe { slice::from_raw_parts(p, COUNTERS_LEN.load(Ordering::Acquire)) }
}

pub fn layout() -> Layout {
    Layout {
        servers: SERVERS.load(Ordering::Relaxed),
    }
}

pub fn add(slot: usize, n: u64) {
    if let Some(c) = counters().get(slot) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

pub fn count_handshake(s: CertSource) {
    if let Some(i) = layout().handshake(s) {
        add(i, 1);
    }
}

pub fn observe_park(micros: u64) {
    for (slot, n) in layout().park_time(micros) {
        add(slot, n);
    }
}

/// The worker's view of the zone.
pub struct ShmSink;

impl MetricSink for ShmSink {
    fn add(&self, slot: usize, n: u64) {
        add(slot, n);
    }
    fn set_worker(&self, field: usize, value: u64) {
        let slot = WORKER_SLOT.load(Ordering::Relaxed);
        if let Some(i) = layout().worker(slot, field) {
            if let Some(c) = counters().get(i) {
                c.store(value, Ordering::Relaxed);
            }
        }
    }
    fn layout(&self) -> Layout {
        layout()
    }
}

/// Whether the worker `pid` of a gauge slot lives: the zone's probe (one
/// rule for `kill(pid, 0)`); a word no process can have (0, or not a
/// positive `pid_t`) is no process.
fn pid_alive(pid: u64) -> bool {
    i64::try_from(pid)
        .ok()
        .and_then(dyncert_core::zonelock::signalable)
        .is_some_and(super::zone::process_exists)
}

/// Claims a gauge slot for this worker (init_process): a free one, or one
/// left behind by a worker that died without releasing it. `false` when
/// every slot is held by a live process: the worker's gauges are then not
/// counted.
pub fn claim_worker_slot() -> bool {
    let me = std::process::id() as u64;
    let l = layout();
    let c = counters();
    for slot in 0..WORKER_SLOTS {
        let Some(pid) = l.worker(slot, W_PID).and_then(|i| c.get(i)) else {
            // No metrics zone: nothing to count.
            return true;
        };
        let cur = pid.load(Ordering::Relaxed);
        if (cur == 0 || !pid_alive(cur))
            && pid
                .compare_exchange(cur, me, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            WORKER_SLOT.store(slot, Ordering::Relaxed);
            let sink = ShmSink;
            for f in 1..4 {
                sink.set_worker(f, 0);
            }
            return true;
        }
    }
    false
}

/// Releases the slot (exit_process).
pub fn release_worker_slot() {
    let slot = WORKER_SLOT.swap(usize::MAX, Ordering::Relaxed);
    let l = layout();
    let c = counters();
    for f in 1..4 {
        if let Some(x) = l.worker(slot, f).and_then(|i| c.get(i)) {
            x.store(0, Ordering::Relaxed);
        }
    }
    if let Some(pid) = l.worker(slot, W_PID).and_then(|i| c.get(i)) {
        pid.store(0, Ordering::Relaxed);
    }
}

/// Gives each server block its position among the http block's servers
/// (its per-block counters) and its label, its first `server_name` made
/// unique ([`server_labels`]) (postconfiguration).
pub fn label_servers(mcf: &mut MainConf, servers: &[&ngx_http_core_srv_conf_t]) {
    let names: Vec<&[u8]> = servers.iter().map(|c| c.server_name.as_bytes()).collect();
    mcf.server_names = server_labels(&names);
    for (i, &cscf) in servers.iter().enumerate() {
        if let Some(scf) = Module::server_conf_mut(cscf) {
            scf.server_index = i;
        }
    }
}

/// Adds the zone and counts responses in the log phase when some server
/// has `dyncert on` or some location `dyncert_metrics` (postconfiguration).
pub fn postconfiguration(
    cf: &mut ngx_conf_t,
    mcf: &mut MainConf,
    dyncert: bool,
) -> Result<(), Refused> {
    mcf.metrics_zone = None;
    if !dyncert && !mcf.metrics_used {
        return Ok(());
    }
    let zone = add_zone(cf)?;
    mcf.metrics_zone = Some(zone);
    add_phase_handler(
        cf,
        ngx_http_phases_NGX_HTTP_LOG_PHASE,
        ngx_http_dyncert_log_handler,
    )
}

/// Adds the zone (postconfiguration). Its size is fixed (room for
/// `MAX_SERVERS` server blocks), so nginx reuses it on every reload, which
/// keeps the counters whatever the new configuration's server blocks.
fn add_zone(cf: &mut ngx_conf_t) -> Result<NonNull<ngx_shm_zone_t>, Refused> {
    let bytes = (HEADER + Layout::capacity()) * 8;
    // SAFETY: nginx sets ngx_pagesize at startup, before any configuration,
    // and never changes it.
    let page = unsafe { ngx_pagesize };
    // Room for the slab allocator's own pages plus the array, page-rounded.
    let size = (8 * page + bytes).div_ceil(page) * page;
    let mut name: ngx_str_t = ngx_string!("dyncert_metrics");
    let tag = ptr::from_ref(Module::module()).cast_mut().cast::<c_void>();
    // SAFETY: cf is the configuration being loaded; the tag (our module's
    // address) is unique to this module; nginx owns the returned zone.
    let zone = unsafe { ngx_shared_memory_add(cf, &mut name, size, tag) };
    let zone = NonNull::new(zone).ok_or(Refused)?;
    // SAFETY: zone is nginx's zone entry for this configuration, in its
    // pool; nothing else refers to it while the configuration is loaded.
    unsafe { (*zone.as_ptr()).init = Some(ngx_http_dyncert_metrics_init_zone) };
    Ok(zone)
}

/// Whether `p` is an array this module set up with the current layout.
///
/// # Safety
/// `p` must point to at least `HEADER` readable `u64` slots.
unsafe fn is_current(p: *const u64) -> bool {
    // SAFETY: the caller guarantees HEADER readable slots.
    let [magic, len] = unsafe { p.cast::<[u64; HEADER]>().read() };
    magic == MAGIC && len == Layout::capacity() as u64
}

/// Points this process at the counters of the cycle now in use, or at
/// nothing when it has no metrics zone. Called from init_module only: the
/// zone's init callback also runs for a reload that fails afterwards, and
/// nginx then frees that cycle's zones.
///
/// # Safety
/// `zone` must be the metrics zone of the cycle being initialised, after
/// nginx ran its init callback (as it has by init_module).
pub unsafe fn publish(zone: Option<NonNull<ngx_shm_zone_t>>, servers: usize) {
    let unpublish = || {
        COUNTERS.store(ptr::null_mut(), Ordering::Release);
        COUNTERS_LEN.store(0, Ordering::Release);
        SERVERS.store(0, Ordering::Relaxed);
    };
    let Some(zone) = zone else {
        return unpublish();
    };
    // SAFETY: the zone belongs to the cycle being initialised; its init
    // callback succeeded (else the cycle was dropped), so data is our array.
    let base = unsafe { (*zone.as_ptr()).data }.cast::<u64>();
    // SAFETY: a non-NULL data is an array of HEADER + capacity slots.
    if base.is_null() || !unsafe { is_current(base) } {
        return unpublish();
    }
    // The counters follow the header inside the same allocation.
    let counters = base.wrapping_add(HEADER).cast::<AtomicU64>();
    COUNTERS.store(counters, Ordering::Release);
    COUNTERS_LEN.store(Layout::capacity(), Ordering::Release);
    SERVERS.store(Layout::for_servers(servers).servers, Ordering::Relaxed);
}

/// Zone init: reuse the previous cycle's array when it has the current
/// layout (counters survive reloads), else free it and allocate a zeroed
/// one. Touches only the zone, never this process's statics: the cycle
/// may still fail (see [`publish`]).
///
/// # Safety
/// Called by nginx with our zone, its slab pool set up, and `data` NULL or
/// the `data` of the previous cycle's zone of that name.
unsafe extern "C" fn ngx_http_dyncert_metrics_init_zone(
    zone: *mut ngx_shm_zone_t,
    data: *mut c_void,
) -> ngx_int_t {
    guard(
        "initialising the metrics zone",
        Status::NGX_ERROR.into(),
        // SAFETY: this function's own contract is the one init_zone needs.
        || unsafe { init_zone(zone, data) },
    )
}

/// # Safety
/// As for a zone init callback: `zone` is ours with its slab pool set up,
/// `data` is NULL or the `data` of the previous cycle's zone of that name.
unsafe fn init_zone(zone: *mut ngx_shm_zone_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx passes our live zone, which nothing else uses while its
    // init runs (in the master, loading the configuration).
    let zone = unsafe { &mut *zone };
    let (addr, size) = (zone.shm.addr, zone.shm.size);
    let shpool = addr.cast::<ngx_slab_pool_t>();
    let old = data.cast::<u64>();
    // nginx passes the old data only when it reuses the old memory for
    // this zone (same name, tag and size), so the old array is in this
    // pool; checked anyway before reading or freeing it.
    let old_in_pool = !old.is_null() && {
        let (start, p) = (addr as usize, old as usize);
        p >= start && p + HEADER * 8 <= start + size
    };
    // SAFETY: old is inside the zone, at least HEADER slots long (every
    // version of this module allocated a header).
    let base = if old_in_pool && unsafe { is_current(old) } {
        old
    } else {
        // SAFETY: shpool is the zone's slab pool; old, when in the pool,
        // came from it.
        match unsafe { new_array(shpool, old_in_pool.then_some(old)) } {
            Some(p) => p,
            None => return Status::NGX_ERROR.into(),
        }
    };
    // SAFETY: shpool is the zone's slab pool, whose data slot is the zone
    // owner's to set during init.
    unsafe { (*shpool).data = base.cast::<c_void>() };
    zone.data = base.cast::<c_void>();
    Status::NGX_OK.into()
}

/// Allocates a zeroed counter array with the current layout in the zone's
/// slab pool, freeing `old` first when there is one.
///
/// # Safety
/// `shpool` must be a zone's live slab pool; `old` must come from it.
unsafe fn new_array(shpool: *mut ngx_slab_pool_t, old: Option<*mut u64>) -> Option<*mut u64> {
    let len = HEADER + Layout::capacity();
    // SAFETY: shpool is live (the caller's contract).
    let mutex = unsafe { &raw mut (*shpool).mutex };
    // SAFETY: the pool's mutex serialises slab use with every process that
    // shares the zone.
    unsafe { ngx_shmtx_lock(mutex) };
    if let Some(old) = old {
        // Not laid out by this code. nginx reuses memory only for the same
        // name, tag (our module's address) and size, so this is not
        // expected; but never leak the pages if it happens.
        // SAFETY: old came from this pool (the caller's contract); locked.
        unsafe { ngx_slab_free_locked(shpool, old.cast::<c_void>()) };
    }
    // SAFETY: locked; add_zone sized the zone for this allocation.
    let p = unsafe { ngx_slab_alloc_locked(shpool, len * 8) }.cast::<u64>();
    // SAFETY: locked above.
    unsafe { ngx_shmtx_unlock(mutex) };
    if p.is_null() {
        return None;
    }
    // SAFETY: p points to len u64 slots just allocated, ours alone until
    // the zone is published.
    unsafe { ptr::write_bytes(p, 0, len) };
    // SAFETY: as above, now initialised.
    let slots = unsafe { slice::from_raw_parts_mut(p, len) };
    slots[0] = MAGIC;
    slots[1] = Layout::capacity() as u64;
    Some(p)
}

/// # Safety
/// Called by nginx with a live request, in the log phase.
unsafe extern "C" fn ngx_http_dyncert_log_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    guard("counting a response", NGX_OK as ngx_int_t, || {
        // SAFETY: nginx passes a live request to log handlers.
        let r = unsafe { &*r };
        if let Some(scf) = Module::server_conf(r) {
            if let Some(i) = layout().status(scf.server_index, r.headers_out.status as u64) {
                add(i, 1);
            }
        }
        NGX_OK as ngx_int_t
    })
}

directive!(ngx_http_dyncert_metrics => serve_here);
/// `dyncert_metrics;` in a location: this module answers its requests.
fn serve_here(cf: &mut ngx_conf_t, _lcf: &mut LocConf, _args: &[ngx_str_t]) -> DirectiveResult {
    let clcf = NgxHttpCoreModule::location_conf_mut(cf).ok_or(DirectiveError::Refused)?;
    if clcf.handler.is_some() {
        return Err(emerg(
            cf,
            format_args!(
                "\"dyncert_metrics\" conflicts with another content handler in this location"
            ),
        )
        .into());
    }
    clcf.handler = Some(ngx_http_dyncert_metrics_handler);
    if let Some(mcf) = Module::main_conf_mut(cf) {
        mcf.metrics_used = true;
    }
    Ok(())
}

/// Content handler of `dyncert_metrics`: Prometheus text format 0.0.4.
///
/// # Safety
/// Called by nginx with a live request, in the content phase.
unsafe extern "C" fn ngx_http_dyncert_metrics_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    guard("serving metrics", Status::NGX_ERROR.into(), || {
        // SAFETY: nginx passes a live request whose response has not
        // started to content handlers.
        unsafe { serve_metrics(r) }
    })
}

/// # Safety
/// `r` must be a live request whose response has not started.
unsafe fn serve_metrics(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: the caller's contract; the reference ends before r is used
    // again.
    let req = unsafe { &*r };
    if req.method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as ngx_uint_t == 0 {
        return NGX_HTTP_NOT_ALLOWED as ngx_int_t;
    }
    let mcf = Module::main_conf(req);
    let names: Vec<String> = mcf.map(|m| m.server_names.clone()).unwrap_or_default();
    let c = counters();
    let get = |i: usize| c.get(i).map(|v| v.load(Ordering::Relaxed)).unwrap_or(0);
    let mut body = render(&layout(), &get, &names, &pid_alive);
    let zone = mcf.and_then(|m| m.shared_zone).and_then(|z| {
        // SAFETY: the zone of the configuration this request runs under,
        // initialised before any worker started.
        unsafe { super::zone::Zone::of(z.as_ptr()) }
    });
    if let Some(zone) = zone {
        body.push_str(&render_zone(&zone.figures()));
        body.push_str(&dyncert_core::zonelock::render(&zone.recoveries()));
    }
    // SAFETY: the caller's contract.
    unsafe {
        send_body(
            r,
            b"text/plain; version=0.0.4; charset=utf-8",
            body.as_bytes(),
        )
    }
}
