//! Metrics in a shared-memory zone: every worker adds to the same array of
//! atomic counters, so the numbers do not depend on which worker answers
//! `dyncert_metrics`. The catalogue and the text format live in
//! `dyncert_core::metrics`; this file maps the zone, counts responses in the
//! log phase and serves the exposition.

use core::ffi::{c_char, c_void};
use core::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use dyncert_core::fetch::CertSource;
use dyncert_core::metrics::{render, Layout, MetricSink, WORKER_SLOTS, W_PID};
use ngx::core::{Status, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_http_request_t, ngx_int_t, ngx_pagesize, ngx_shared_memory_add,
    ngx_shm_zone_t, ngx_slab_alloc, ngx_slab_pool_t, ngx_str_t, ngx_uint_t, NGX_HTTP_GET,
    NGX_HTTP_HEAD, NGX_HTTP_NOT_ALLOWED, NGX_LOG_EMERG, NGX_OK,
};
use ngx::http::{
    HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf, NgxHttpCoreModule,
};
use ngx::{ngx_conf_log_error, ngx_string};

use crate::boundary_ffi::guard;
use crate::response_ffi::send_body;
use crate::Module;

/// Most server blocks counted individually (bounded cardinality).
pub const MAX_SERVERS: usize = 1024;

/// First slot of the zone's array: a marker that the array is ours and
/// how many counters follow.
const MAGIC: u64 = 0x6479_6e63_6572_7431; // "dyncert1"

static COUNTERS: AtomicPtr<AtomicU64> = AtomicPtr::new(ptr::null_mut());
static COUNTERS_LEN: AtomicUsize = AtomicUsize::new(0);
static SERVERS: AtomicUsize = AtomicUsize::new(0);
/// Layout length wanted by the configuration being loaded (read by the
/// zone's init callback, which runs later in the same master).
static PENDING_SERVERS: AtomicUsize = AtomicUsize::new(0);
/// This worker's gauge slot (usize::MAX: none).
static WORKER_SLOT: AtomicUsize = AtomicUsize::new(usize::MAX);

fn counters() -> &'static [AtomicU64] {
    let p = COUNTERS.load(Ordering::Acquire);
    if p.is_null() {
        return &[];
    }
    // SAFETY: set by the zone init callback to an array of COUNTERS_LEN
    // atomics in shared memory that lives as long as the cycle's zone,
    // which outlives every worker forked with it.
    unsafe { core::slice::from_raw_parts(p, COUNTERS_LEN.load(Ordering::Acquire)) }
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

fn pid_alive(pid: u64) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Claims a gauge slot for this worker (init_process): a free one, or one
/// left behind by a worker that died without releasing it.
pub fn claim_worker_slot() {
    let me = std::process::id() as u64;
    let l = layout();
    let c = counters();
    for slot in 0..WORKER_SLOTS {
        let Some(pid) = l.worker(slot, W_PID).and_then(|i| c.get(i)) else {
            return;
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
            return;
        }
    }
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

/// Adds the zone (postconfiguration): its size follows the number of
/// server blocks, so a reload with the same servers keeps the counters.
///
/// # Safety
/// `cf` must be the configuration being loaded.
pub unsafe fn add_zone(cf: *mut ngx_conf_t, servers: usize) -> Result<NonNull<ngx_shm_zone_t>, ()> {
    let servers = servers.min(MAX_SERVERS);
    PENDING_SERVERS.store(servers, Ordering::Relaxed);
    let bytes = (Layout { servers }.len() + 2) * 8;
    // SAFETY: ngx_pagesize is set at startup before configuration.
    let page = unsafe { ngx_pagesize };
    // Room for the slab allocator's own pages plus the array, page-rounded.
    let size = (8 * page + bytes).div_ceil(page) * page;
    let mut name: ngx_str_t = ngx_string!("dyncert_metrics");
    // SAFETY: the tag is our module, unique; nginx owns the returned zone.
    let zone = unsafe {
        ngx_shared_memory_add(
            cf,
            &mut name,
            size,
            ptr::addr_of_mut!(crate::ngx_http_dyncert_module) as *mut c_void,
        )
    };
    let zone = NonNull::new(zone).ok_or(())?;
    // SAFETY: zone was just returned by nginx.
    unsafe { (*zone.as_ptr()).init = Some(ngx_http_dyncert_metrics_init_zone) };
    Ok(zone)
}

/// Zone init: reuse the previous cycle's array when it has the same
/// layout (counters survive reloads), else allocate a zeroed one.
unsafe extern "C" fn ngx_http_dyncert_metrics_init_zone(
    zone: *mut ngx_shm_zone_t,
    data: *mut c_void,
) -> ngx_int_t {
    guard(
        "initialising the metrics zone",
        Status::NGX_ERROR.into(),
        || {
            let servers = PENDING_SERVERS.load(Ordering::Relaxed);
            let len = Layout { servers }.len();
            // SAFETY: nginx initialised a slab pool at the start of the zone.
            let shpool = unsafe { (*zone).shm.addr } as *mut ngx_slab_pool_t;
            let reuse = !data.is_null() && {
                // SAFETY: data is the array this callback set up last cycle.
                let hdr = data as *const u64;
                unsafe { *hdr == MAGIC && *hdr.add(1) == len as u64 }
            };
            let base = if reuse {
                data as *mut u64
            } else {
                // SAFETY: shpool is the zone's slab pool; the size fits by
                // construction in add_zone.
                let p = unsafe { ngx_slab_alloc(shpool, (len + 2) * 8) } as *mut u64;
                if p.is_null() {
                    return Status::NGX_ERROR.into();
                }
                // SAFETY: p points to (len + 2) u64 slots just allocated.
                unsafe {
                    ptr::write_bytes(p, 0, len + 2);
                    *p = MAGIC;
                    *p.add(1) = len as u64;
                }
                p
            };
            // SAFETY: zone and shpool are live; base is inside the zone.
            unsafe {
                (*shpool).data = base as *mut c_void;
                (*zone).data = base as *mut c_void;
            }
            COUNTERS.store(unsafe { base.add(2) } as *mut AtomicU64, Ordering::Release);
            COUNTERS_LEN.store(len, Ordering::Release);
            SERVERS.store(servers, Ordering::Relaxed);
            Status::NGX_OK.into()
        },
    )
}

pub unsafe extern "C" fn ngx_http_dyncert_log_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
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

/// # Safety
/// Called by nginx for `dyncert_metrics;` in a location.
pub unsafe extern "C" fn ngx_http_dyncert_metrics(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    let cf_ref = unsafe { &*cf };
    let Some(clcf) = NgxHttpCoreModule::location_conf_mut(cf_ref) else {
        return NGX_CONF_ERROR;
    };
    if clcf.handler.is_some() {
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "\"dyncert_metrics\" conflicts with another content handler in this location"
        );
        return NGX_CONF_ERROR;
    }
    clcf.handler = Some(ngx_http_dyncert_metrics_handler);
    if let Some(mcf) = Module::main_conf_mut(cf_ref) {
        mcf.metrics_used = true;
    }
    NGX_CONF_OK
}

/// Content handler of `dyncert_metrics`: Prometheus text format 0.0.4.
unsafe extern "C" fn ngx_http_dyncert_metrics_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    guard("serving metrics", Status::NGX_ERROR.into(), || unsafe {
        serve_metrics(r)
    })
}

unsafe fn serve_metrics(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request to content handlers.
    let req = unsafe { &mut *r };
    if req.method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as ngx_uint_t == 0 {
        return NGX_HTTP_NOT_ALLOWED as ngx_int_t;
    }
    let names: Vec<String> = Module::main_conf(req)
        .map(|m| m.server_names.clone())
        .unwrap_or_default();
    let c = counters();
    let get = |i: usize| c.get(i).map(|v| v.load(Ordering::Relaxed)).unwrap_or(0);
    let body = render(&layout(), &get, &names, &pid_alive);

    // SAFETY: r is live and its response not started.
    unsafe {
        send_body(
            r,
            b"text/plain; version=0.0.4; charset=utf-8",
            body.as_bytes(),
        )
    }
}
