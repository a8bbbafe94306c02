//! `dyncert_shared_zone`: the host-wide tier in an nginx shared-memory
//! zone. Every worker of the host (and its successors after a crash or a
//! reload that keeps the zone) sees the same records, in compact form
//! (`dyncert_core::compact`), with each distinct intermediate stored once
//! and reference-counted.
//!
//! Layout, all in the zone's slab pool and guarded by its mutex (every
//! operation is a lookup and a copy, never I/O):
//! - a red-black tree of records keyed by a hash of the name
//!   (`ngx_str_rbtree_*`, as nginx's own zones do), plus an LRU queue;
//! - a red-black tree of intermediates keyed by their digest.
//!
//! A full zone evicts its least recently used records until the new one
//! fits; a record that cannot fit even in an empty zone is not stored and
//! evicts nothing.
//! Only the event loop thread of a worker calls into it.
//!
//! The lock is never slept on without bound (`dyncert_core::zonelock`): a
//! holder that died is unlocked by force, every operation of a worker
//! gives up on a slow live one (an invalidation is held back, see
//! `zonelock::Pending`, and noted under the next lock this worker gets;
//! after such a give-up the worker's operations only spin and look at the
//! holder once for a while,
//! `zonelock::GiveUps`),
//! and a zone a process died updating (its `dirty` word set) is emptied by
//! the next process that takes the lock.

use core::cell::{Cell, RefCell};
use core::ffi::c_void;
use core::mem::{offset_of, size_of};
use core::ptr::{self, NonNull};
use core::sync::atomic::{compiler_fence, AtomicI64, AtomicU64, Ordering};
use std::rc::Rc;
use std::time::Instant;

use dyncert_core::clock::Millis;
use dyncert_core::compact::IntermediateDers;
use dyncert_core::intern::CertDigest;
use dyncert_core::metrics::{Simple, ZoneFigures};
use dyncert_core::tier::{fnv1a, page_need, Invalidations, PageNeed, SharedTier, TierHit};
use dyncert_core::zonelock::{
    after_lock, covers, exists_after_probe, header_alloc_size, holder, reset_plan, AfterLock,
    GiveUps, Holder, Need, Pending, Recoveries, Reset, Step, RETRY_EVERY,
};
use ngx::http::HttpModule;

use super::conf::{emerg, Module, Refused};
use ngx::ffi::{
    ngx_add_timer, ngx_conf_t, ngx_connection_t, ngx_event_t, ngx_int_t, ngx_queue_t,
    ngx_rbtree_insert, ngx_rbtree_insert_value, ngx_rbtree_node_t, ngx_rbtree_t,
    ngx_shared_memory_add, ngx_shm_zone_t, ngx_shmtx_force_unlock, ngx_shmtx_lock, ngx_shmtx_t,
    ngx_shmtx_trylock, ngx_shmtx_unlock, ngx_slab_alloc_locked, ngx_slab_free_locked,
    ngx_slab_init, ngx_slab_pool_t, ngx_str_node_t, ngx_str_rbtree_insert_value,
    ngx_str_rbtree_lookup, ngx_str_t,
};

/// Marks a zone whose header is ours (and of this layout).
const MAGIC: u64 = 0x6479_6e63_7a6f_6e34; // "dynczon4"

/// Most records evicted to make room for one.
const MAX_EVICTIONS_PER_STORE: usize = 64;

/// The zone's header, in its slab pool.
#[repr(C)]
struct Header {
    magic: u64,
    /// The pid of a process in the middle of an update, else 0: found set
    /// by whoever takes the lock next, the holder died mid-update.
    dirty: u64,
    records: ngx_rbtree_t,
    records_sentinel: ngx_rbtree_node_t,
    /// Most recently used first.
    lru: ngx_queue_t,
    intermediates: ngx_rbtree_t,
    intermediates_sentinel: ngx_rbtree_node_t,
    stats: ZoneStats,
    /// The invalidations applied so far, which a store checks.
    invalidations: Invalidations,
    /// The configuration's fingerprint (`MainConf::tier_fingerprint`): a
    /// reload that changes it empties the zone.
    config: u64,
}

/// What the zone reports to the metrics.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct ZoneStats {
    pub records: u64,
    pub intermediates: u64,
    pub evictions: u64,
    pub stores: u64,
    /// Bytes of the zone's pages and of its free pages.
    pub size: u64,
    pub free: u64,
    /// Locks taken back from a dead holder; times the zone was emptied
    /// because a process died in the middle of an update.
    pub lock_recovered: u64,
    pub resets: u64,
    /// Operations that gave up on a slow holder; counted without the lock
    /// (atomically), as they never had it. The last field: a reset
    /// rewrites the header around it (`init_header`).
    pub busy: u64,
}

const _: () = assert!(offset_of!(ZoneStats, busy) + size_of::<u64>() == size_of::<ZoneStats>());

/// One record: the name's node, its place in the LRU queue, then the name,
/// the compact bytes and the intermediates' digests, in one allocation.
#[repr(C)]
struct Record {
    sn: ngx_str_node_t,
    lru: ngx_queue_t,
    blob_len: usize,
    n_inter: usize,
}

/// One intermediate: its node (key: the digest's first bytes), its
/// reference count, its digest, then its DER.
#[repr(C)]
struct Intermediate {
    node: ngx_rbtree_node_t,
    refs: usize,
    digest: CertDigest,
    len: usize,
}

fn digest_key(d: &CertDigest) -> usize {
    let mut k = [0u8; size_of::<usize>()];
    k.copy_from_slice(&d[..size_of::<usize>()]);
    usize::from_ne_bytes(k)
}

/// `ngx_rbtree_init`.
///
/// # Safety
/// `tree` and `sentinel` must be writable and outlive the tree.
unsafe fn rbtree_init(
    tree: *mut ngx_rbtree_t,
    sentinel: *mut ngx_rbtree_node_t,
    insert: unsafe extern "C" fn(
        *mut ngx_rbtree_node_t,
        *mut ngx_rbtree_node_t,
        *mut ngx_rbtree_node_t,
    ),
) {
    // SAFETY: the caller's guarantee; color 0 is black (ngx_rbt_black).
    unsafe {
        (*sentinel).color = 0;
        (*tree).root = sentinel;
        (*tree).sentinel = sentinel;
        (*tree).insert = Some(insert);
    }
}

/// `ngx_queue_init`.
///
/// # Safety
/// `q` must be writable.
unsafe fn queue_init(q: *mut ngx_queue_t) {
    // SAFETY: the caller's guarantee.
    unsafe {
        (*q).prev = q;
        (*q).next = q;
    }
}

/// `ngx_queue_insert_head`.
///
/// # Safety
/// `h` is an initialised queue, `x` an element not in any queue.
unsafe fn queue_insert_head(h: *mut ngx_queue_t, x: *mut ngx_queue_t) {
    // SAFETY: the caller's guarantee: plain doubly linked list surgery.
    unsafe {
        (*x).next = (*h).next;
        (*(*x).next).prev = x;
        (*x).prev = h;
        (*h).next = x;
    }
}

/// `ngx_queue_remove`.
///
/// # Safety
/// `x` must be in a queue.
unsafe fn queue_remove(x: *mut ngx_queue_t) {
    // SAFETY: the caller's guarantee.
    unsafe {
        (*(*x).next).prev = (*x).prev;
        (*(*x).prev).next = (*x).next;
        (*x).prev = ptr::null_mut();
        (*x).next = ptr::null_mut();
    }
}

/// Record from its LRU link (`ngx_queue_data`).
///
/// # Safety
/// `q` must be the `lru` field of a Record.
unsafe fn record_of(q: *mut ngx_queue_t) -> *mut Record {
    // SAFETY: the caller's guarantee; lru sits at a fixed offset.
    unsafe { (q as *mut u8).sub(offset_of!(Record, lru)) as *mut Record }
}

/// The zone of one configuration, as a worker uses it.
pub struct Zone {
    pool: NonNull<ngx_slab_pool_t>,
    header: NonNull<Header>,
    /// The configuration fingerprint the zone had when this process
    /// attached: an old worker still finishing lookups after a reload that
    /// changed it does not store what its configuration admitted.
    config: u64,
    /// What this worker keeps of the zone between locks, shared with its
    /// retry timer.
    local: Rc<Local>,
}

/// A worker's own state of the zone.
#[derive(Default)]
struct Local {
    /// What this process last read under the lock, for when a lookup or
    /// a store gives up on it (`Seen`).
    seen: Cell<Seen>,
    /// Invalidations and a floor this worker could not note yet: noted
    /// first under the next lock it gets.
    pending: RefCell<Pending>,
    /// Its last give-up on a live holder: how long the next operations
    /// wait.
    give_ups: Cell<GiveUps>,
}

/// `at` on a monotonic clock that starts with the process's first call.
fn monotonic(at: Instant) -> core::time::Duration {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    at.saturating_duration_since(*ORIGIN.get_or_init(Instant::now))
}

/// The invalidation generation and fetched floor this process last read
/// in the zone. Both only ever grow, so an older reading errs safely: a
/// store checked against an older generation counts more invalidations
/// as after its read (refused more often), and the floor a lookup just
/// read with its record is the one that record was judged by.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    generation: u64,
    floor: Millis,
}

/// The zone's mutex, held while alive.
///
/// A guard of an update (`writes`) marks the zone clean when it drops, but
/// not while a panic unwinds through it: whatever the update had changed
/// so far stays marked dirty, and the next process that takes the lock
/// (this one too) empties the zone rather than walk a torn tree.
struct Locked<'a> {
    zone: &'a Zone,
    /// The zone is marked dirty until this guard drops.
    writes: bool,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if self.writes && !std::thread::panicking() {
            compiler_fence(Ordering::SeqCst);
            // SAFETY: the header is live; the mutex is still held.
            unsafe {
                ptr::write_volatile(ptr::addr_of_mut!((*self.zone.header.as_ptr()).dirty), 0)
            };
            compiler_fence(Ordering::SeqCst);
        }
        // SAFETY: taken in Zone::lock by this process.
        unsafe { ngx_shmtx_unlock(&mut (*self.zone.pool.as_ptr()).mutex) };
    }
}

/// Whether the system still knows process `pid` (a zombie the master has
/// not reaped yet counts): `kill(pid, 0)` judged by
/// `zonelock::exists_after_probe`. The one probe of the module (the
/// metrics' worker slots use it too).
///
/// A pid that is not positive is no process (never a process group).
pub fn process_exists(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks; pid > 0, so never a process group.
    let r = unsafe { libc::kill(pid, 0) };
    let error = (r != 0).then(|| {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or_default()
    });
    exists_after_probe(error, libc::ESRCH)
}

thread_local! {
    /// The worker's retry timer for held-back invalidations, and the zone
    /// it retries (the worker's own, sharing its `Local`).
    static RETRY: RefCell<Option<(*mut ngx_event_t, Zone)>> = const { RefCell::new(None) };
    /// The worker's own zone ([`Zone::make_own`]), which [`Zone::of`]
    /// shares with the worker's other users (a metrics scrape), so they
    /// keep to its quiet period and see what it holds back.
    static OWN: RefCell<Option<Zone>> = const { RefCell::new(None) };
}

/// # Safety
/// Called by nginx when the retry timer fires.
unsafe extern "C" fn ngx_http_dyncert_zone_retry_handler(_ev: *mut ngx_event_t) {
    super::boundary::guard("noting invalidations in the shared zone", (), || {
        let zone = RETRY.with(|r| r.borrow().as_ref().map(|(_, z)| z.share()));
        let Some(zone) = zone else {
            return;
        };
        if zone.local.pending.borrow().is_empty() {
            // A zone operation since noted it all.
            return;
        }
        // Taking the lock notes what is held back (or gives up, after the
        // full wait: this is the period's one).
        let mut g = zone.local.give_ups.get();
        g.retry_due();
        zone.local.give_ups.set(g);
        drop(zone.lock(Need::Optional, false));
        if !zone.local.pending.borrow().is_empty() {
            zone.arm_retry();
        }
    });
}

impl Zone {
    /// The zone nginx made for `shm`, once its init callback ran.
    ///
    /// # Safety
    /// `shm` must be an initialised zone of this module's `init`.
    pub unsafe fn of(shm: *mut ngx_shm_zone_t) -> Option<Zone> {
        // SAFETY: the caller's guarantee: addr is the slab pool, data the
        // header set by ngx_http_dyncert_zone_init.
        unsafe {
            let pool = NonNull::new((*shm).shm.addr as *mut ngx_slab_pool_t)?;
            let header = NonNull::new((*shm).data as *mut Header)?;
            let config = header.as_ref().config;
            if header.as_ref().magic != MAGIC {
                return None;
            }
            let own = OWN.with(|o| {
                o.borrow()
                    .as_ref()
                    .filter(|own| own.pool == pool)
                    .map(Zone::share)
            });
            Some(own.unwrap_or(Zone {
                pool,
                header,
                config,
                local: Rc::default(),
            }))
        }
    }

    /// Makes this the worker's own handle on the zone (at worker start),
    /// which [`Zone::of`] returns (shared) from then on.
    pub fn make_own(&self) {
        OWN.with(|o| *o.borrow_mut() = Some(self.share()));
    }

    /// Takes the zone's lock (waiting as `need` allows; None when an
    /// operation gives up on a slow holder), then empties the zone if a
    /// process died updating it, then notes what this worker held back
    /// (`Local::pending`), so the caller's operation sees the zone after
    /// every invalidation this worker received. `writes`: the caller
    /// changes the trees or the queue, so the zone is marked dirty until
    /// it is done.
    fn lock(&self, need: Need, writes: bool) -> Option<Locked<'_>> {
        // The lock word names a process, not a thread: a word holding our
        // own pid is read as left by a dead predecessor (`Holder::Stale`)
        // and unlocked by force, which is right only while one thread of
        // the process (nginx's, the event loop) ever takes it.
        // SAFETY: plain system calls.
        debug_assert_eq!(unsafe { libc::gettid() }, unsafe { libc::getpid() });
        // SAFETY: the pool's mutex is initialised by nginx for every zone.
        let mtx = unsafe { ptr::addr_of_mut!((*self.pool.as_ptr()).mutex) };
        let mut recovered = None;
        // SAFETY: as above.
        if unsafe { ngx_shmtx_trylock(mtx) } == 0 && !self.wait(mtx, need, &mut recovered) {
            self.busy().fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut g = self.local.give_ups.get();
        g.got_lock();
        self.local.give_ups.set(g);
        let mut lock = Locked {
            zone: self,
            writes: false,
        };
        let h = self.hdr(&lock);
        // SAFETY: the header is live; the mutex is held.
        unsafe {
            if (*h).magic != MAGIC {
                // Only after a reset that could not keep the header
                // (`reset`): the zone is out of use.
                return None;
            }
            if let Some(pid) = recovered {
                (*h).stats.lock_recovered += 1;
                super::log::Log::cycle().warn(format_args!(
                    "dyncert: the shared zone's lock was held by process {pid}, which no \
                     longer exists; taken back"
                ));
            }
            let dirty = ptr::read_volatile(ptr::addr_of!((*h).dirty));
            if let AfterLock::Reset { left_by } = after_lock(dirty) {
                self.reset(&lock, left_by);
                if (*h).magic != MAGIC {
                    return None;
                }
            }
            let flush = !self.local.pending.borrow().is_empty();
            if writes || flush {
                compiler_fence(Ordering::SeqCst);
                ptr::write_volatile(ptr::addr_of_mut!((*h).dirty), ngx::ffi::ngx_pid as u64);
                compiler_fence(Ordering::SeqCst);
                lock.writes = true;
            }
            if flush {
                // What this worker held back comes first, in order: the
                // operation that took the lock sees the zone after it.
                let (targets, floor) = self.local.pending.borrow_mut().take();
                for t in &targets {
                    self.apply(&lock, t);
                }
                if let Some(at) = floor {
                    (*h).invalidations.note_resubscribed(at);
                }
            }
            self.local.seen.set(Seen {
                generation: (*h).invalidations.generation(),
                floor: (*h).invalidations.fetched_floor(),
            });
        }
        Some(lock)
    }

    /// Another handle on this worker's zone, sharing what it holds back.
    fn share(&self) -> Zone {
        Zone {
            pool: self.pool,
            header: self.header,
            config: self.config,
            local: Rc::clone(&self.local),
        }
    }

    /// Notes the invalidation of `target` (a name, `*.parent` or `*`) and
    /// drops what it covers, under the lock.
    fn apply(&self, lock: &Locked<'_>, target: &str) {
        // SAFETY: the header is live; the mutex is held.
        unsafe { (*self.hdr(lock)).invalidations.note(target) };
        match target {
            // Every record is looked at under the lock every worker's
            // handshakes wait on: a byte comparison, no allocation.
            t if t == "*" || t.starts_with("*.") => self.remove_where(lock, |name| covers(t, name)),
            t => {
                if let Some(r) = self.find(lock, t.as_bytes()) {
                    self.remove_record(lock, r);
                }
            }
        }
    }

    /// Applies the invalidation of `target`, or, when the lock is not to
    /// be had within `need`'s wait, holds it back until this worker's next
    /// zone operation or its retry timer: meanwhile nothing it covers is
    /// loaded from the zone or stored there (`Pending::skips`).
    fn invalidate(&self, target: &str, need: Need) {
        self.local.pending.borrow_mut().hold(target);
        if self.lock(need, true).is_none() && need == Need::Optional {
            self.arm_retry();
        }
    }

    /// Sets the retry timer (`RETRY_EVERY`) if it is not set.
    fn arm_retry(&self) {
        let ev = RETRY.with(|r| {
            let mut r = r.borrow_mut();
            if let Some((ev, _)) = r.as_ref() {
                return *ev;
            }
            // SAFETY: ngx_connection_t is plain C data; all zeroes is a
            // valid, unused connection.
            let mut dummy: Box<ngx_connection_t> = Box::new(unsafe { core::mem::zeroed() });
            // nginx's debug lines about timers name the event's
            // connection's fd.
            dummy.fd = -1;
            // SAFETY: ngx_event_t is plain C data; all zeroes is an event
            // with no timer set and nothing posted.
            let mut timer: Box<ngx_event_t> = Box::new(unsafe { core::mem::zeroed() });
            timer.data = Box::into_raw(dummy).cast::<c_void>();
            timer.handler = Some(ngx_http_dyncert_zone_retry_handler);
            timer.log = super::log::Log::cycle().as_ptr();
            // A worker quitting does not wait for it: the zone's other
            // users apply the same invalidations themselves.
            timer.set_cancelable(1);
            let ev = Box::into_raw(timer);
            *r = Some((ev, self.share()));
            ev
        });
        // SAFETY: ev is this worker's retry event, used on this thread
        // only; nginx's timer tree lives as long as the worker.
        unsafe {
            if (*ev).timer_set() == 0 {
                ngx_add_timer(ev, RETRY_EVERY.as_millis() as ngx::ffi::ngx_msec_t);
            }
        }
    }

    /// Waits for the lock after a failed try (`zonelock::Wait`), taking it
    /// back from a holder that no longer exists. False: gave up.
    fn wait(&self, mtx: *mut ngx_shmtx_t, need: Need, recovered: &mut Option<i64>) -> bool {
        let start = Instant::now();
        // SAFETY: set by nginx before any zone exists.
        let smp = unsafe { ngx::ffi::ngx_ncpu } > 1;
        // SAFETY: the lock word is nginx's, in the zone.
        let word = || unsafe { ptr::read_volatile((*mtx).lock) } as i64;
        let mut give_ups = self.local.give_ups.get();
        let mut wait = give_ups.wait(need, smp, monotonic(start), word());
        loop {
            match wait.next(start.elapsed()) {
                Step::Spin(n) => (0..n).for_each(|_| core::hint::spin_loop()),
                Step::GiveUp => {
                    if give_ups.gave_up(&wait, monotonic(Instant::now()), word()) {
                        let layout = super::metrics::layout();
                        super::metrics::add(layout.simple(Simple::ZoneLockWaits), 1);
                    }
                    self.local.give_ups.set(give_ups);
                    return false;
                }
                step => {
                    // SAFETY: set by nginx at process start.
                    let who = holder(word(), unsafe { ngx::ffi::ngx_pid });
                    let alive = match who {
                        Holder::Process(pid) => process_exists(pid),
                        _ => true,
                    };
                    if let Some(dead) = who.recover(alive) {
                        if force_unlock(mtx, dead) {
                            *recovered = Some(dead);
                        }
                    } else if who != Holder::Nobody {
                        match step {
                            Step::Sleep(d) => std::thread::sleep(d),
                            // SAFETY: plain system call.
                            _ => unsafe {
                                libc::sched_yield();
                            },
                        }
                    }
                }
            }
            // SAFETY: the pool's mutex is initialised.
            if unsafe { ngx_shmtx_trylock(mtx) } != 0 {
                return true;
            }
        }
    }

    /// Empties the zone, which a process (`left_by`) died updating: its
    /// trees, queue and perhaps the slab pool's own lists may be torn.
    /// What the header counts and the invalidations stay; a `*` is noted,
    /// so no lookup started before stores what it read.
    fn reset(&self, lock: &Locked<'_>, left_by: u64) {
        let h = self.hdr(lock);
        let pool = self.pool.as_ptr();
        let page = self.page_size();
        // SAFETY: the mutex is held; the header is plain data at a fixed
        // place (see Reset::Pool) that nobody else touches meanwhile.
        unsafe {
            let invalidations = (*h).invalidations;
            let config = (*h).config;
            let mut stats = (*h).stats;
            let records = stats.records;
            let plan = reset_plan(h as *mut u8 == (*pool).start);
            if plan == Reset::Pool {
                ngx_slab_init(pool);
                (*pool).set_log_nomem(0);
                let again =
                    ngx_slab_alloc_locked(pool, header_alloc_size(size_of::<Header>(), page));
                if again as *mut Header != h {
                    // A fresh pool gives its first pages first: not seen.
                    (*h).magic = 0;
                    super::log::Log::cycle().alert(format_args!(
                        "dyncert: the shared zone's header moved while emptying it; the \
                         zone is out of use until nginx restarts"
                    ));
                    return;
                }
            }
            init_header(h, config);
            (*h).invalidations = invalidations;
            (*h).invalidations.note("*");
            stats.records = 0;
            stats.intermediates = 0;
            stats.resets += 1;
            // Every figure but `busy`, which other processes count
            // without the lock meanwhile (it is the last one).
            ptr::copy_nonoverlapping(
                ptr::addr_of!(stats).cast::<u8>(),
                ptr::addr_of_mut!((*h).stats).cast::<u8>(),
                offset_of!(ZoneStats, busy),
            );
            super::log::Log::cycle().warn(format_args!(
                "dyncert: process {left_by} died while updating the shared zone; emptied \
                 it ({records} records{})",
                if plan == Reset::Pool {
                    ""
                } else {
                    ", their memory kept until the zone is made anew"
                }
            ));
        }
    }

    /// The count of operations that gave up on the lock.
    fn busy(&self) -> &AtomicU64 {
        // SAFETY: an aligned u64 of the live header, only ever accessed
        // atomically: a reset rewrites the header around it
        // (`init_header`), and a new header is zeroed before any other
        // process sees it.
        unsafe { AtomicU64::from_ptr(ptr::addr_of_mut!((*self.header.as_ptr()).stats.busy)) }
    }

    fn hdr(&self, _lock: &Locked<'_>) -> *mut Header {
        self.header.as_ptr()
    }

    /// Allocates `size` bytes, evicting least recently used records until
    /// it fits (at most [`MAX_EVICTIONS_PER_STORE`]).
    fn alloc(&self, lock: &Locked<'_>, size: usize) -> Option<NonNull<u8>> {
        for _ in 0..=MAX_EVICTIONS_PER_STORE {
            // SAFETY: the pool's mutex is held (lock).
            let p = unsafe { ngx_slab_alloc_locked(self.pool.as_ptr(), size) };
            if let Some(p) = NonNull::new(p as *mut u8) {
                return Some(p);
            }
            if !self.evict_one(lock) {
                return None;
            }
        }
        None
    }

    fn page_size(&self) -> usize {
        // SAFETY: set by nginx (ngx_os_init) before any zone exists and
        // never changed.
        unsafe { ngx::ffi::ngx_pagesize }
    }

    /// What allocations of `sizes` need of the zone's pages, against what
    /// an empty zone (its header alone) has.
    fn page_need(&self, _lock: &Locked<'_>, sizes: impl IntoIterator<Item = usize>) -> PageNeed {
        let pool = self.pool.as_ptr();
        // SAFETY: the pool is live; ngx_slab_init set start and end once.
        let span = unsafe { ((*pool).end as usize).saturating_sub((*pool).start as usize) };
        page_need(
            sizes,
            self.page_size(),
            span,
            header_alloc_size(size_of::<Header>(), self.page_size()),
        )
    }

    fn free(&self, _lock: &Locked<'_>, p: *mut c_void) {
        // SAFETY: p came from ngx_slab_alloc_locked of this pool; the mutex
        // is held.
        unsafe { ngx_slab_free_locked(self.pool.as_ptr(), p) };
    }

    /// Drops the least recently used record; false when there is none.
    fn evict_one(&self, lock: &Locked<'_>) -> bool {
        let h = self.hdr(lock);
        // SAFETY: the queue is initialised; its tail is a Record's lru.
        unsafe {
            let sentinel = ptr::addr_of_mut!((*h).lru);
            let last = (*sentinel).prev;
            if last == sentinel {
                return false;
            }
            self.remove_record(lock, record_of(last));
            (*h).stats.evictions += 1;
        }
        true
    }

    /// Finds the record of `name`.
    fn find(&self, lock: &Locked<'_>, name: &[u8]) -> Option<*mut Record> {
        let h = self.hdr(lock);
        let mut key = ngx_str_t {
            len: name.len(),
            data: name.as_ptr() as *mut u8,
        };
        // SAFETY: the tree is initialised; lookup only reads the key.
        let sn = unsafe {
            ngx_str_rbtree_lookup(ptr::addr_of_mut!((*h).records), &mut key, fnv1a(name))
        };
        // SAFETY: sn is the first field of a Record (repr(C)).
        (!sn.is_null()).then_some(sn as *mut Record)
    }

    /// The name, blob and digests of a record.
    ///
    /// # Safety
    /// `r` must be a live record of this zone.
    unsafe fn parts<'a>(r: *mut Record) -> (&'a [u8], &'a [u8], &'a [CertDigest]) {
        // SAFETY: the caller's guarantee; the allocation holds the name,
        // the blob and n_inter digests after the header.
        unsafe {
            let name = core::slice::from_raw_parts((*r).sn.str_.data, (*r).sn.str_.len);
            let blob_ptr = (*r).sn.str_.data.add((*r).sn.str_.len);
            let blob = core::slice::from_raw_parts(blob_ptr, (*r).blob_len);
            let digests = core::slice::from_raw_parts(
                blob_ptr.add((*r).blob_len) as *const CertDigest,
                (*r).n_inter,
            );
            (name, blob, digests)
        }
    }

    fn remove_record(&self, lock: &Locked<'_>, r: *mut Record) {
        let h = self.hdr(lock);
        // SAFETY: r is a live record: in the tree and the queue.
        unsafe {
            let (_, _, digests) = Self::parts(r);
            // The digests are read before the record is freed (below).
            for d in digests {
                self.unref_intermediate(lock, d);
            }
            ngx::ffi::ngx_rbtree_delete(
                ptr::addr_of_mut!((*h).records),
                ptr::addr_of_mut!((*r).sn.node),
            );
            queue_remove(ptr::addr_of_mut!((*r).lru));
            (*h).stats.records -= 1;
        }
        self.free(lock, r as *mut c_void);
    }

    fn find_intermediate(&self, lock: &Locked<'_>, d: &CertDigest) -> Option<*mut Intermediate> {
        let h = self.hdr(lock);
        // SAFETY: the tree is initialised; nodes are Intermediates.
        unsafe {
            let tree = ptr::addr_of!((*h).intermediates);
            find_digest((*tree).root, (*tree).sentinel, digest_key(d), d)
        }
    }

    /// Adds a reference to the intermediate `d`, storing `der` if it is new.
    fn ref_intermediate(&self, lock: &Locked<'_>, d: &CertDigest, der: &[u8]) -> bool {
        if let Some(i) = self.find_intermediate(lock, d) {
            // SAFETY: i is a live intermediate of this zone.
            unsafe { (*i).refs += 1 };
            return true;
        }
        let Some(p) = self.alloc(lock, size_of::<Intermediate>() + der.len()) else {
            return false;
        };
        let i = p.as_ptr() as *mut Intermediate;
        let h = self.hdr(lock);
        // SAFETY: p is a fresh allocation of the right size.
        unsafe {
            ptr::write_bytes(i, 0, 1);
            (*i).node.key = digest_key(d);
            (*i).refs = 1;
            (*i).digest = *d;
            (*i).len = der.len();
            ptr::copy_nonoverlapping(
                der.as_ptr(),
                (i as *mut u8).add(size_of::<Intermediate>()),
                der.len(),
            );
            ngx_rbtree_insert(
                ptr::addr_of_mut!((*h).intermediates),
                ptr::addr_of_mut!((*i).node),
            );
            (*h).stats.intermediates += 1;
        }
        true
    }

    fn unref_intermediate(&self, lock: &Locked<'_>, d: &CertDigest) {
        let Some(i) = self.find_intermediate(lock, d) else {
            return;
        };
        let h = self.hdr(lock);
        // SAFETY: i is a live intermediate of this zone.
        unsafe {
            (*i).refs -= 1;
            if (*i).refs > 0 {
                return;
            }
            ngx::ffi::ngx_rbtree_delete(
                ptr::addr_of_mut!((*h).intermediates),
                ptr::addr_of_mut!((*i).node),
            );
            (*h).stats.intermediates -= 1;
        }
        self.free(lock, i as *mut c_void);
    }

    fn intermediate_der(i: *mut Intermediate) -> Vec<u8> {
        // SAFETY: the DER follows the header in the same allocation.
        unsafe {
            core::slice::from_raw_parts((i as *const u8).add(size_of::<Intermediate>()), (*i).len)
                .to_vec()
        }
    }

    /// The zone's counters, with the pool's page figures.
    pub fn figures(&self) -> ZoneFigures {
        let s = self.stats();
        ZoneFigures {
            size: s.size,
            free: s.free,
            records: s.records,
            intermediates: s.intermediates,
            evictions: s.evictions,
            stores: s.stores,
        }
    }

    /// The zone's recovery counters (`zonelock::render`).
    pub fn recoveries(&self) -> Recoveries {
        let s = self.stats();
        Recoveries {
            lock_recovered: s.lock_recovered,
            resets: s.resets,
            busy: s.busy,
        }
    }

    /// The counters, read under the lock; when it is not to be had
    /// within `OPTIONAL_BUDGET` (a scrape runs on the event loop every
    /// handshake of the worker waits on), read without it: each figure is
    /// one the holder wrote whole, the set may be a little stale or not
    /// consistent with itself (records counted before their pages).
    fn stats(&self) -> ZoneStats {
        let lock = self.lock(Need::Optional, false);
        let h = self.header.as_ptr();
        let pool = self.pool.as_ptr();
        let load = |v: *mut u64| {
            // SAFETY: an aligned u64 of the live header; read atomically,
            // as a holder may be writing it.
            unsafe { AtomicU64::from_ptr(v) }.load(Ordering::Relaxed)
        };
        // SAFETY: header and pool are live; with the lock held (or read
        // atomically, field by field, without it).
        unsafe {
            let mut s = match &lock {
                Some(_) => (*h).stats,
                None => {
                    let st = ptr::addr_of_mut!((*h).stats);
                    ZoneStats {
                        records: load(ptr::addr_of_mut!((*st).records)),
                        intermediates: load(ptr::addr_of_mut!((*st).intermediates)),
                        evictions: load(ptr::addr_of_mut!((*st).evictions)),
                        stores: load(ptr::addr_of_mut!((*st).stores)),
                        lock_recovered: load(ptr::addr_of_mut!((*st).lock_recovered)),
                        resets: load(ptr::addr_of_mut!((*st).resets)),
                        ..ZoneStats::default()
                    }
                }
            };
            let page = ngx::ffi::ngx_pagesize as u64;
            let pfree = ptr::read_volatile(ptr::addr_of!((*pool).pfree));
            s.busy = self.busy().load(Ordering::Relaxed);
            s.size = ((*pool).end as u64).saturating_sub((*pool).start as u64);
            s.free = pfree as u64 * page;
            s
        }
    }

    fn remove_where(&self, lock: &Locked<'_>, mut doomed: impl FnMut(&[u8]) -> bool) {
        let h = self.hdr(lock);
        // SAFETY: walking the queue; the next element is read before a
        // record is removed.
        unsafe {
            let sentinel = ptr::addr_of_mut!((*h).lru);
            let mut q = (*sentinel).next;
            while q != sentinel {
                let next = (*q).next;
                let r = record_of(q);
                let (name, _, _) = Self::parts(r);
                if doomed(name) {
                    self.remove_record(lock, r);
                }
                q = next;
            }
        }
    }
}

impl SharedTier for Zone {
    fn lookup(&self, name: &str) -> Option<TierHit> {
        let lock = self.lock(Need::Optional, true)?;
        if self.local.pending.borrow().skips(name) {
            // Not reached while the lock notes everything held back first;
            // kept so that a bounded flush could not serve what an
            // invalidation removes.
            return None;
        }
        let r = self.find(&lock, name.as_bytes())?;
        let h = self.hdr(&lock);
        // SAFETY: r is a live record; the mutex is held.
        unsafe {
            queue_remove(ptr::addr_of_mut!((*r).lru));
            queue_insert_head(ptr::addr_of_mut!((*h).lru), ptr::addr_of_mut!((*r).lru));
            let (_, blob, digests) = Self::parts(r);
            let mut intermediates = Vec::with_capacity(digests.len());
            for d in digests {
                let i = self.find_intermediate(&lock, d)?;
                intermediates.push((*d, Self::intermediate_der(i)));
            }
            Some(TierHit {
                bytes: blob.to_vec(),
                intermediates,
            })
        }
    }

    fn generation(&self) -> u64 {
        let Some(lock) = self.lock(Need::Optional, false) else {
            // An older generation only makes the store more cautious.
            return self.local.seen.get().generation;
        };
        let h = self.hdr(&lock);
        // SAFETY: the header is live; the mutex is held.
        unsafe { (*h).invalidations.generation() }
    }

    fn store(
        &self,
        name: &str,
        bytes: &[u8],
        intermediates: &IntermediateDers,
        since: u64,
    ) -> bool {
        let Some(lock) = self.lock(Need::Optional, true) else {
            // Not stored: the name is fetched again on a later miss.
            return true;
        };
        if self.local.pending.borrow().skips(name) {
            // As in lookup: an invalidation not noted yet covers it.
            return true;
        }
        let h = self.hdr(&lock);
        // SAFETY: the header is live; the mutex is held, so no invalidation
        // is noted between this check and the insert below.
        if unsafe { (*h).invalidations.covers_since(name, since) } {
            return false;
        }
        // SAFETY: as above.
        if unsafe { (*h).config } != self.config {
            // A reload changed the configuration since this (old) worker
            // attached: what its own configuration admitted stays out.
            return true;
        }
        if let Some(old) = self.find(&lock, name.as_bytes()) {
            self.remove_record(&lock, old);
        }
        let size = size_of::<Record>() + name.len() + bytes.len() + 32 * intermediates.len();
        let need = self.page_need(
            &lock,
            intermediates
                .iter()
                .map(|(_, der)| size_of::<Intermediate>() + der.len())
                .chain([size]),
        );
        if !need.may_fit() {
            // Evicting every record would not make room: evict none. The
            // name's old record is gone all the same (it is not current).
            drop(lock);
            let page = self.page_size();
            super::log::Log::cycle().warn(format_args!(
                "dyncert: record too big for the shared zone (it needs {} bytes of pages, \
                 an empty zone has {}), not stored while storing a fetched record, \
                 name: \"{name}\"",
                need.needed.saturating_mul(page),
                need.available.saturating_mul(page),
            ));
            return true;
        }
        let mut referenced = Vec::with_capacity(intermediates.len());
        for (d, der) in intermediates {
            if !self.ref_intermediate(&lock, d, der) {
                for d in &referenced {
                    self.unref_intermediate(&lock, d);
                }
                return true;
            }
            referenced.push(*d);
        }
        let Some(p) = self.alloc(&lock, size) else {
            for d in &referenced {
                self.unref_intermediate(&lock, d);
            }
            return true;
        };
        let r = p.as_ptr() as *mut Record;
        let h = self.hdr(&lock);
        // SAFETY: p is a fresh allocation of `size` bytes; the name, blob
        // and digests are copied right after the header.
        unsafe {
            ptr::write_bytes(r, 0, 1);
            let data = (r as *mut u8).add(size_of::<Record>());
            ptr::copy_nonoverlapping(name.as_ptr(), data, name.len());
            ptr::copy_nonoverlapping(bytes.as_ptr(), data.add(name.len()), bytes.len());
            let mut at = data.add(name.len() + bytes.len());
            for d in &referenced {
                ptr::copy_nonoverlapping(d.as_ptr(), at, 32);
                at = at.add(32);
            }
            (*r).sn.str_ = ngx_str_t {
                len: name.len(),
                data,
            };
            (*r).sn.node.key = fnv1a(name.as_bytes()) as usize;
            (*r).blob_len = bytes.len();
            (*r).n_inter = referenced.len();
            ngx_rbtree_insert(
                ptr::addr_of_mut!((*h).records),
                ptr::addr_of_mut!((*r).sn.node),
            );
            queue_insert_head(ptr::addr_of_mut!((*h).lru), ptr::addr_of_mut!((*r).lru));
            (*h).stats.records += 1;
            (*h).stats.stores += 1;
        }
        true
    }

    // An invalidation runs on the event loop every handshake of the
    // worker waits on: it gives up as a lookup does, and is held back
    // (`Zone::invalidate`).
    fn remove(&self, name: &str) {
        self.invalidate(name, Need::Optional);
    }

    fn remove_wildcard(&self, wildcard: &str) {
        self.invalidate(wildcard, Need::Optional);
    }

    fn clear(&self) {
        self.invalidate("*", Need::Optional);
    }

    fn note_resubscribed(&self, at: Millis) {
        self.local.pending.borrow_mut().hold_floor(at);
        if self.lock(Need::Optional, false).is_none() {
            self.arm_retry();
        }
    }

    fn fetched_floor(&self) -> Millis {
        let Some(lock) = self.lock(Need::Optional, false) else {
            // As read with the record a lookup just loaded, if any.
            return self.local.seen.get().floor;
        };
        // SAFETY: the header is live; the mutex is held.
        unsafe { (*self.hdr(&lock)).invalidations.fetched_floor() }
    }
}

/// Keeps a previous cycle's zone for a configuration with fingerprint
/// `config`: its records stay when the fingerprint is the same, else they
/// go (counted as a `*` invalidation, so no lookup an old worker started
/// before stores its record afterwards), and a notice says so. Err: the
/// zone is to be emptied but a live process held its lock for
/// `REQUIRED_BUDGET` (stopped: a debugger, SIGSTOP); its pid, and the
/// configuration is not to be applied.
///
/// # Safety
/// `pool` and `header` must be a live zone of this module, in the master
/// while it initialises the cycle (no worker of the new cycle yet).
unsafe fn adopt(pool: *mut ngx_slab_pool_t, header: *mut Header, config: u64) -> Result<(), i64> {
    // SAFETY: the caller's guarantee.
    unsafe {
        if (*header).config == config {
            return Ok(());
        }
        let (Some(pool), Some(header)) = (NonNull::new(pool), NonNull::new(header)) else {
            return Ok(());
        };
        let zone = Zone {
            pool,
            header,
            config,
            local: Rc::default(),
        };
        let records = zone.stats().records;
        // Noted and applied under the lock (`Zone::lock`).
        zone.local.pending.borrow_mut().hold("*");
        let Some(lock) = zone.lock(Need::Required, true) else {
            return Err(ptr::read_volatile((*pool.as_ptr()).mutex.lock) as i64);
        };
        (*zone.hdr(&lock)).config = config;
        drop(lock);
        super::log::Log::cycle().notice(format_args!(
            "dyncert: the shared zone's {records} records were fetched under another \
             configuration (sources, key rules or cache deadlines changed); emptied"
        ));
        Ok(())
    }
}

/// Logs why the zone `shm` could not be adopted ([`adopt`]); the answer
/// for nginx, which then refuses the configuration.
///
/// # Safety
/// `shm` must be the zone being initialised.
unsafe fn refuse_adoption(shm: *mut ngx_shm_zone_t, holder: i64) -> ngx_int_t {
    // SAFETY: the caller's guarantee; nginx's name of the zone.
    let name = String::from_utf8_lossy(unsafe { (*shm).shm.name.as_bytes() });
    super::log::Log::cycle().emerg(format_args!(
        "dyncert: the shared zone \"{name}\" must be emptied for the changed configuration, \
         but process {holder} has held its lock for {} s without letting go (stopped by a \
         debugger or SIGSTOP?); the new configuration is not applied: resume or kill that \
         process, then reload again",
        dyncert_core::zonelock::REQUIRED_BUDGET.as_secs()
    ));
    ngx::ffi::NGX_ERROR as ngx_int_t
}

/// Lays out an empty header (no records, no invalidations, no figures) at
/// `h`, but for its `busy` count, which other processes increment without
/// the lock: left as it is, so that none of their increments is lost (a
/// new header is zeroed first).
///
/// # Safety
/// `h` must be writable and stay at its place for the zone's life.
unsafe fn init_header(h: *mut Header, config: u64) {
    let busy = offset_of!(Header, stats) + offset_of!(ZoneStats, busy);
    let after = busy + size_of::<u64>();
    // SAFETY: the caller's guarantee.
    unsafe {
        let base = h.cast::<u8>();
        ptr::write_bytes(base, 0, busy);
        ptr::write_bytes(base.add(after), 0, size_of::<Header>() - after);
        rbtree_init(
            ptr::addr_of_mut!((*h).records),
            ptr::addr_of_mut!((*h).records_sentinel),
            ngx_str_rbtree_insert_value,
        );
        rbtree_init(
            ptr::addr_of_mut!((*h).intermediates),
            ptr::addr_of_mut!((*h).intermediates_sentinel),
            ngx_rbtree_insert_value,
        );
        queue_init(ptr::addr_of_mut!((*h).lru));
        (*h).magic = MAGIC;
        (*h).config = config;
    }
}

/// Unlocks by force a lock whose holder (`word`) no longer exists; false
/// when the word changed meanwhile.
fn force_unlock(mtx: *mut ngx_shmtx_t, word: i64) -> bool {
    match ngx::ffi::ngx_pid_t::try_from(word) {
        // SAFETY: the mutex is initialised; nginx clears the word only if
        // it still names `pid`, and wakes its sleepers.
        Ok(pid) => unsafe { ngx_shmtx_force_unlock(mtx, pid) != 0 },
        Err(_) => {
            // No pid at all (no nginx process sleeps on such a word).
            // SAFETY: the lock word is an aligned atomic of the zone.
            let a = unsafe { AtomicI64::from_ptr((*mtx).lock as *mut i64) };
            a.compare_exchange(word, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        }
    }
}

/// The intermediate of digest `d` (key `key`) in the subtree at `node`.
/// `ngx_rbtree_insert_value` sends equal keys right, but rotations may move
/// them to either side, so on an equal key with another digest (two
/// digests sharing their first bytes, which an attacker who signs his own
/// intermediates can make) both subtrees are searched. Not unit-tested:
/// the tree is nginx's; the e2e tests store and free intermediates.
///
/// # Safety
/// `node` and `sentinel` belong to the zone's intermediates tree, under
/// its lock.
unsafe fn find_digest(
    node: *mut ngx_rbtree_node_t,
    sentinel: *mut ngx_rbtree_node_t,
    key: usize,
    d: &CertDigest,
) -> Option<*mut Intermediate> {
    let mut node = node;
    // SAFETY: the caller's guarantee; every node is an Intermediate.
    unsafe {
        while node != sentinel {
            if key < (*node).key {
                node = (*node).left;
            } else if key > (*node).key {
                node = (*node).right;
            } else {
                let i = node as *mut Intermediate;
                if (*i).digest == *d {
                    return Some(i);
                }
                if let Some(i) = find_digest((*node).left, sentinel, key, d) {
                    return Some(i);
                }
                node = (*node).right;
            }
        }
    }
    None
}

type ZoneInit = unsafe extern "C" fn(*mut ngx_shm_zone_t, *mut c_void) -> ngx_int_t;

/// Adds the zone `name` of `size` bytes to the configuration being loaded
/// (`dyncert_shared_zone`).
pub fn add(
    cf: &mut ngx_conf_t,
    mut name: ngx_str_t,
    size: usize,
) -> Result<NonNull<ngx_shm_zone_t>, Refused> {
    let tag = ptr::from_ref(Module::module()).cast_mut().cast::<c_void>();
    // SAFETY: cf is the configuration being loaded; the tag (this module's
    // address) is unique to it; nginx owns the returned zone.
    let zone = unsafe { ngx_shared_memory_add(cf, &mut name, size, tag) };
    let zone = NonNull::new(zone).ok_or(Refused)?;
    // SAFETY: zone is nginx's entry for this configuration, in its pool.
    unsafe {
        let ours = ngx_http_dyncert_zone_init as ZoneInit;
        if (*zone.as_ptr())
            .init
            .is_some_and(|f| !core::ptr::fn_addr_eq(f, ours))
        {
            return Err(emerg(
                cf,
                format_args!(
                    "dyncert_shared_zone \"{}\" is already used by another part of dyncert",
                    String::from_utf8_lossy(name.as_bytes())
                ),
            ));
        }
        (*zone.as_ptr()).init = Some(ngx_http_dyncert_zone_init);
    }
    Ok(zone)
}

/// The zone's init callback: keeps the records of the previous cycle's
/// zone (a reload that keeps `dyncert_shared_zone` keeps every record), or
/// lays out an empty one.
///
/// # Safety
/// Called by nginx with a zone of this module.
pub unsafe extern "C" fn ngx_http_dyncert_zone_init(
    shm: *mut ngx_shm_zone_t,
    data: *mut c_void,
) -> ngx_int_t {
    super::boundary::guard(
        "initialising the shared zone",
        ngx::ffi::NGX_ERROR as ngx_int_t,
        || {
            // SAFETY: nginx initialised the slab pool at the start of the zone;
            // the zone's data is the configuration's fingerprint until the
            // header replaces it (set in postconfiguration, see `configure`).
            unsafe {
                let pool = (*shm).shm.addr as *mut ngx_slab_pool_t;
                let config = match ((*shm).data as *const u64).as_ref() {
                    Some(c) => *c,
                    None => 0,
                };
                if !data.is_null() && (*(data as *const Header)).magic == MAGIC {
                    if let Err(holder) = adopt(pool, data as *mut Header, config) {
                        return refuse_adoption(shm, holder);
                    }
                    (*shm).data = data;
                    return ngx::ffi::NGX_OK as ngx_int_t;
                }
                if (*shm).shm.exists != 0 {
                    // A zone inherited from a binary upgrade: its header is
                    // the pool's data.
                    let old = (*pool).data as *mut Header;
                    if !old.is_null() && (*old).magic == MAGIC {
                        if let Err(holder) = adopt(pool, old, config) {
                            return refuse_adoption(shm, holder);
                        }
                        (*shm).data = old as *mut c_void;
                        return ngx::ffi::NGX_OK as ngx_int_t;
                    }
                }
                // The header first, in whole pages: the first ones of the
                // pool, where a reset finds them again (Reset::Pool).
                let size = header_alloc_size(size_of::<Header>(), ngx::ffi::ngx_pagesize);
                ngx_shmtx_lock(&mut (*pool).mutex);
                let h = ngx_slab_alloc_locked(pool, size) as *mut Header;
                ngx_shmtx_unlock(&mut (*pool).mutex);
                if h.is_null() {
                    return ngx::ffi::NGX_ERROR as ngx_int_t;
                }
                ptr::write_bytes(h, 0, 1);
                init_header(h, config);
                // Evictions make room; a failed allocation is not news.
                (*pool).set_log_nomem(0);
                (*pool).data = h as *mut c_void;
                (*shm).data = h as *mut c_void;
                ngx::ffi::NGX_OK as ngx_int_t
            }
        },
    )
}
