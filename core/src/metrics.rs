//! The metrics catalogue: where each counter lives in the shared-memory
//! array every worker adds to, and the Prometheus text exposition of it.
//!
//! The glue maps a zone of `u64` slots and increments them atomically; this
//! module only knows indices and formatting, so it is tested without nginx.

use std::fmt::Write;

use crate::on_demand::NotQueued;
use crate::outcome::{CertSource, FetchSource, StepOutcome};
use crate::tenant::Misdirected;

/// Where counters go: the glue implements it over the shared zone; tests
/// and workers without metrics use [`NoSink`].
pub trait MetricSink {
    /// Adds `n` to slot `slot` (see [`Layout`]).
    fn add(&self, slot: usize, n: u64);
    /// Sets this worker's gauge `field` (`W_INFLIGHT`, ...).
    fn set_worker(&self, field: usize, value: u64);
    fn layout(&self) -> Layout;
}

/// A sink that drops everything.
#[derive(Debug, Default)]
pub struct NoSink;

impl MetricSink for NoSink {
    fn add(&self, _slot: usize, _n: u64) {}
    fn set_worker(&self, _field: usize, _value: u64) {}
    fn layout(&self) -> Layout {
        Layout { servers: 0 }
    }
}

/// Upper bounds (milliseconds) of the latency histogram buckets; `+Inf`
/// follows implicitly.
pub const LATENCY_BUCKETS_MS: [u64; 11] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500];
const HIST_SLOTS: usize = LATENCY_BUCKETS_MS.len() + 1 + 2; // buckets, +Inf, sum_us, count

/// Handshake sources that are counted (a resumed session runs no callback).
pub const HANDSHAKE_SOURCES: [CertSource; 6] = [
    CertSource::Cache,
    CertSource::Shared,
    CertSource::Redis,
    CertSource::Api,
    CertSource::Default,
    CertSource::Rejected,
];

/// Labels of refused records (`Refusal::label`), in a fixed order so the
/// shared array has one slot each; anything else counts as `other`.
pub const REJECT_REASONS: [&str; 53] = [
    "crt_not_pem",
    "chain_too_long",
    "key_not_pem",
    "key_mismatch",
    "name_not_covered",
    "expired",
    "not_yet_valid",
    "bad_validity",
    "missing_crt",
    "missing_key",
    "crt_too_large",
    "key_too_large",
    "allow_too_large",
    "client_ca_too_large",
    "allow_invalid",
    "client_ca_not_pem",
    "client_ca_constraints",
    "encrypted_key",
    "key_reference_refused",
    "key_reference_failed",
    "key_reference_timeout",
    "key_decrypt_malformed",
    "key_decrypt_unknown_id",
    "key_decrypt_bad_tag",
    "key_plain_refused",
    "rsa_pair_incomplete",
    "rsa_pair_too_large",
    "rsa_crt_invalid",
    "rsa_key_invalid",
    "rsa_key_mismatch",
    "rsa_name_not_covered",
    "rsa_expired",
    "rsa_not_yet_valid",
    "pair_types",
    "key_too_weak",
    "key_too_slow",
    "key_curve",
    "key_type",
    "rsa_key_too_weak",
    "rsa_key_too_slow",
    "rsa_key_curve",
    "key_exponent",
    "key_inconsistent",
    "rsa_key_exponent",
    "rsa_key_inconsistent",
    "weak_signature",
    "chain_key_too_weak",
    "rsa_weak_signature",
    "rsa_chain_key_too_weak",
    "chain_too_heavy",
    "too_many_names",
    "record_too_heavy",
    "other",
];

/// Status classes counted per server block.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Per-worker gauge slots: pid, fetches in flight, cache entries, bytes.
/// Room for the workers of the largest hosts (`worker_processes auto` on
/// 256+ CPUs) plus the old workers of a reload still finishing their
/// connections; a worker that finds none free is logged at `warn`.
pub const WORKER_SLOTS: usize = 1024;
const WORKER_FIELDS: usize = 4;
pub const W_PID: usize = 0;
pub const W_INFLIGHT: usize = 1;
pub const W_ENTRIES: usize = 2;
pub const W_BYTES: usize = 3;

/// Simple counters, one slot each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simple {
    Parked,
    ParkTimeouts,
    NegativeHits,
    FetchBackoff,
    FetchesRefused,
    Invalidations,
    RedisErrors,
    Resubscribes,
    RedisConnectErrors,
    RedisReplicaReads,
    ResubscribeMarked,
    AllowDenials,
    TenantDenials,
    EarlyDataRefusals,
    ClientCertRejections,
    AcmeServed,
    AcmeMissing,
    AcmeRefused,
    AcmeClientRefused,
    TierLoads,
    TierSyncLoads,
    TierLoadsRefused,
    TierLoadsTimedOut,
    TierStoresRefused,
    KeyRefsResolved,
    OnDemandEnqueued,
    OnDemandErrors,
    TicketKeyLoads,
    TicketKeyRotations,
    TicketKeyErrors,
    TicketsCurrent,
    TicketsPrevious,
    TicketsUnknown,
    ApiRateLimited,
    RedisCommandTimeouts,
    RedisReconnects,
    FetchesLost,
    InstallFailures,
    ZoneLockWaits,
}

const SIMPLE: [(Simple, &str, &str); 39] = [
    (
        Simple::Parked,
        "dyncert_parked_connections_total",
        "Connections parked before the handshake while their name was fetched.",
    ),
    (
        Simple::ParkTimeouts,
        "dyncert_park_timeouts_total",
        "Parked connections released by dyncert_fetch_timeout before their fetch ended.",
    ),
    (
        Simple::NegativeHits,
        "dyncert_negative_cache_hits_total",
        "Handshakes for names remembered as unknown (no lookup made).",
    ),
    (
        Simple::FetchBackoff,
        "dyncert_fetch_backoff_total",
        "Handshakes that got no certificate of their own, and started no lookup, \
         because their name's last lookup failed moments ago (error backoff).",
    ),
    (
        Simple::FetchesRefused,
        "dyncert_fetches_refused_total",
        "Lookups not started because dyncert_fetch_concurrency was reached.",
    ),
    (
        Simple::Invalidations,
        "dyncert_invalidations_total",
        "Invalidation messages applied (per worker).",
    ),
    (
        Simple::RedisErrors,
        "dyncert_redis_errors_total",
        "Redis commands that failed (each I/O failure also triggers a reconnect).",
    ),
    (
        Simple::Resubscribes,
        "dyncert_redis_resubscribes_total",
        "Times the invalidation subscription was re-established after a disconnect.",
    ),
    (
        Simple::RedisConnectErrors,
        "dyncert_redis_connect_errors_total",
        "Failures to connect to (or talk to) a Redis node, sentinel or cluster node \
         (refused, TLS handshake, credentials, dropped connections).",
    ),
    (
        Simple::RedisReplicaReads,
        "dyncert_redis_replica_reads_total",
        "Reads a Sentinel-named replica answered because the primary was unreachable.",
    ),
    (
        Simple::ResubscribeMarked,
        "dyncert_redis_resubscribe_marked_total",
        "Cached certificates marked due for a refresh because the invalidation \
         subscription was re-established (messages may have been lost meanwhile).",
    ),
    (
        Simple::AllowDenials,
        "dyncert_allowlist_denials_total",
        "Requests denied by a dyncert_allow list.",
    ),
    (
        Simple::TenantDenials,
        "dyncert_tenant_denials_total",
        "Requests denied by a tenant's own allow list.",
    ),
    (
        Simple::EarlyDataRefusals,
        "dyncert_early_data_refusals_total",
        "Requests in TLS early data answered 425 Too Early because an allow list \
         would have admitted them by an address not yet proven.",
    ),
    (
        Simple::ClientCertRejections,
        "dyncert_client_cert_rejections_total",
        "Requests rejected for a missing or invalid tenant client certificate.",
    ),
    (
        Simple::AcmeServed,
        "dyncert_acme_challenges_served_total",
        "ACME HTTP-01 challenge answers served from Redis.",
    ),
    (
        Simple::AcmeMissing,
        "dyncert_acme_challenges_missing_total",
        "ACME challenge requests answered 404 (unknown or invalid token).",
    ),
    (
        Simple::AcmeRefused,
        "dyncert_acme_challenges_refused_total",
        "ACME challenge requests answered 503 without a Redis read because the \
         worker's challenge lookups were at their bound.",
    ),
    (
        Simple::AcmeClientRefused,
        "dyncert_acme_challenges_client_refused_total",
        "ACME challenge requests answered 503 without a Redis read because their \
         client address (IPv4 /32, IPv6 /64) held its share of the worker's \
         challenge lookups (also counted in dyncert_acme_challenges_refused_total).",
    ),
    (
        Simple::TierLoads,
        "dyncert_shared_loads_total",
        "Records loaded from the shared zone instead of fetched from a source.",
    ),
    (
        Simple::TierSyncLoads,
        "dyncert_shared_sync_loads_total",
        "Shared-zone records parsed synchronously in the certificate callback (no peek step: QUIC).",
    ),
    (
        Simple::TierLoadsRefused,
        "dyncert_shared_loads_refused_total",
        "Shared-zone records that could not be served (expired or damaged) and were fetched again.",
    ),
    (
        Simple::TierLoadsTimedOut,
        "dyncert_shared_loads_timed_out_total",
        "Shared-zone loads that waited in a busy parse queue past the lookup bound \
         before reading the record, which stays; the name was fetched from a source.",
    ),
    (
        Simple::TierStoresRefused,
        "dyncert_shared_stores_refused_total",
        "Records not stored in the shared zone because another worker applied an \
         invalidation of their name while they were being read.",
    ),
    (
        Simple::KeyRefsResolved,
        "dyncert_key_references_resolved_total",
        "Private keys loaded from a PKCS#11 module through a record's key reference \
         (once per fetched record; handshakes reuse the loaded key).",
    ),
    (
        Simple::OnDemandEnqueued,
        "dyncert_on_demand_enqueued_total",
        "Unknown names added to the on-demand stream (dyncert_on_demand).",
    ),
    (
        Simple::OnDemandErrors,
        "dyncert_on_demand_enqueue_errors_total",
        "Unknown names that could not be added to the on-demand stream \
         (Redis error or timeout, or the worker's enqueue queue full).",
    ),
    (
        Simple::TicketKeyLoads,
        "dyncert_ticket_key_loads_total",
        "New generations of the shared session ticket keys loaded (per worker).",
    ),
    (
        Simple::TicketKeyRotations,
        "dyncert_ticket_key_rotations_total",
        "Rotations of the shared session ticket keys this host performed.",
    ),
    (
        Simple::TicketKeyErrors,
        "dyncert_ticket_key_errors_total",
        "Session ticket key sets refused (malformed, oversized, cannot be opened) \
         or Redis failures while reading or rotating them.",
    ),
    (
        Simple::TicketsCurrent,
        "dyncert_tickets_current_total",
        "Session tickets decrypted with the current shared key.",
    ),
    (
        Simple::TicketsPrevious,
        "dyncert_tickets_previous_total",
        "Session tickets decrypted with a previous shared key (renewed).",
    ),
    (
        Simple::TicketsUnknown,
        "dyncert_tickets_unknown_total",
        "Session tickets offered under an unknown key name (or before the keys \
         were loaded): full handshake.",
    ),
    (
        Simple::ApiRateLimited,
        "dyncert_api_rate_limited_total",
        "Lookups that failed without asking the certificate API because the \
         worker's dyncert_api rate= cap was reached (the name backs off).",
    ),
    (
        Simple::RedisCommandTimeouts,
        "dyncert_redis_command_timeouts_total",
        "Redis commands that got no answer within dyncert_redis_timeout on a \
         connection that was up (not counted as connect errors).",
    ),
    (
        Simple::RedisReconnects,
        "dyncert_redis_reconnects_total",
        "Command connections to a Redis server replaced by a new one because a \
         command timed out on them (a hung server, or a flow a middlebox forgot).",
    ),
    (
        Simple::FetchesLost,
        "dyncert_fetches_lost_total",
        "Lookups that ended in a panic in the fetcher (answered as failed), or \
         whose answer never came within the in-flight deadline (started again \
         by the next connection for their name); see the log lines.",
    ),
    (
        Simple::InstallFailures,
        "dyncert_install_failures_total",
        "Handshakes that failed because OpenSSL refused to install their name's \
         validated certificate (a security level above what validation judges, \
         2; see the warn lines, one per name per 10 s, for OpenSSL's reason).",
    ),
    (
        Simple::ZoneLockWaits,
        "dyncert_shared_zone_lock_waits_total",
        "Shared-zone operations of this worker that waited the full 2 ms for a \
         live holder of the zone's lock (stopped or starved) and gave up; for \
         50 ms after each, the worker's zone operations give up without waiting \
         (all counted in dyncert_shared_zone_busy_total).",
    ),
];

/// Position of a source's counters within a per-source region.
fn source_index(src: FetchSource) -> usize {
    src as usize
}

// Region offsets of the fixed part.
const HANDSHAKES: usize = 0;
const FETCHES: usize = HANDSHAKES + HANDSHAKE_SOURCES.len();
const FETCH_HIST: usize = FETCHES + FetchSource::ALL.len() * StepOutcome::ALL.len();
const PARK_HIST: usize = FETCH_HIST + FetchSource::ALL.len() * HIST_SLOTS;
const SIMPLES: usize = PARK_HIST + HIST_SLOTS;
const REJECTS: usize = SIMPLES + SIMPLE.len();
const MISDIRECTS: usize = REJECTS + REJECT_REASONS.len();
const ON_DEMAND_REFUSED: usize = MISDIRECTS + Misdirected::ALL.len();
const WORKERS: usize = ON_DEMAND_REFUSED + NotQueued::ALL.len();
const SERVERS: usize = WORKERS + WORKER_SLOTS * WORKER_FIELDS;

/// The `server` label of each server block, in configuration order: its
/// first `server_name` (`_` when it has none). Blocks whose first name is
/// the same (a `server_name _;` block beside a health-check block without
/// one, say) would give identical series, of which Prometheus keeps one:
/// the second gets `#2` appended, the third `#3`, and so on.
///
/// Linear in the number of blocks (a generated configuration may have
/// thousands named `_`): each name remembers the last suffix it gave.
pub fn server_labels(first_names: &[&[u8]]) -> Vec<String> {
    use std::collections::{HashMap, HashSet};
    let mut used: HashSet<String> = HashSet::with_capacity(first_names.len());
    let mut next: HashMap<String, usize> = HashMap::new();
    let mut labels = Vec::with_capacity(first_names.len());
    for name in first_names {
        let base = if name.is_empty() {
            "_".to_owned()
        } else {
            String::from_utf8_lossy(name).into_owned()
        };
        let n = next.entry(base.clone()).or_insert(1);
        let mut label = if *n == 1 {
            base.clone()
        } else {
            format!("{base}#{n}")
        };
        while used.contains(&label) {
            *n += 1;
            label = format!("{base}#{n}");
        }
        *n += 1;
        used.insert(label.clone());
        labels.push(label);
    }
    labels
}

/// Most server blocks counted individually (bounded cardinality). The
/// shared array always has room for this many, so its size does not depend
/// on the configuration and nginx keeps the same zone across reloads.
pub const MAX_SERVERS: usize = 1024;

/// Slot indices for a configuration with `servers` server blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub servers: usize,
}

impl Layout {
    /// The layout of a configuration with `servers` server blocks; blocks
    /// past [`MAX_SERVERS`] get no per-server counters.
    pub fn for_servers(servers: usize) -> Layout {
        Layout {
            servers: servers.min(MAX_SERVERS),
        }
    }

    /// Slots of the shared array: the same for every configuration, and
    /// enough for any [`Layout::for_servers`].
    pub fn capacity() -> usize {
        Layout {
            servers: MAX_SERVERS,
        }
        .len()
    }

    /// Number of `u64` slots.
    pub fn len(&self) -> usize {
        SERVERS + self.servers * STATUS_CLASSES.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn handshake(&self, s: CertSource) -> Option<usize> {
        HANDSHAKE_SOURCES
            .iter()
            .position(|&h| h == s)
            .map(|i| HANDSHAKES + i)
    }

    pub fn fetch(&self, src: FetchSource, outcome: StepOutcome) -> usize {
        FETCHES + source_index(src) * StepOutcome::ALL.len() + outcome as usize
    }

    /// Slots to add to for one observation of `ms` milliseconds (bucket,
    /// sum in microseconds, count) in a histogram starting at `base`.
    fn observe(base: usize, micros: u64) -> [(usize, u64); 3] {
        let b = LATENCY_BUCKETS_MS
            .iter()
            .position(|&le| micros <= le * 1000)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        let n = LATENCY_BUCKETS_MS.len();
        [(base + b, 1), (base + n + 1, micros), (base + n + 2, 1)]
    }

    pub fn fetch_latency(&self, src: FetchSource, micros: u64) -> [(usize, u64); 3] {
        Self::observe(FETCH_HIST + source_index(src) * HIST_SLOTS, micros)
    }

    pub fn park_time(&self, micros: u64) -> [(usize, u64); 3] {
        Self::observe(PARK_HIST, micros)
    }

    pub fn simple(&self, s: Simple) -> usize {
        SIMPLES + s as usize
    }

    pub fn rejected(&self, label: &str) -> usize {
        let i = REJECT_REASONS
            .iter()
            .position(|&r| r == label)
            .unwrap_or(REJECT_REASONS.len() - 1);
        REJECTS + i
    }

    /// Requests the tenant policy answered 421, by reason.
    pub fn misdirected(&self, m: Misdirected) -> usize {
        MISDIRECTS + m as usize
    }

    /// Handshakes whose name was not queued for on-demand issuance, by
    /// reason.
    pub fn on_demand_refused(&self, r: NotQueued) -> usize {
        ON_DEMAND_REFUSED + r as usize
    }

    pub fn worker(&self, slot: usize, field: usize) -> Option<usize> {
        // Checked before computing: slot may be usize::MAX ("no slot").
        (slot < WORKER_SLOTS && field < WORKER_FIELDS)
            .then(|| WORKERS + slot * WORKER_FIELDS + field)
    }

    pub fn status(&self, server: usize, status: u64) -> Option<usize> {
        let class = (status / 100).checked_sub(1)? as usize;
        (server < self.servers && class < STATUS_CLASSES.len())
            .then_some(SERVERS + server * STATUS_CLASSES.len() + class)
    }
}

/// The shared zone's figures (`dyncert_shared_zone`), read under its lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZoneFigures {
    /// Bytes of the zone's pages, and of those free.
    pub size: u64,
    pub free: u64,
    pub records: u64,
    pub intermediates: u64,
    pub evictions: u64,
    pub stores: u64,
}

/// The exposition of the shared zone's figures, appended to [`render`]'s.
pub fn render_zone(z: &ZoneFigures) -> String {
    let mut out = String::with_capacity(1024);
    out.push_str(
        "# HELP dyncert_shared_zone_bytes Bytes of the shared zone's pages, in all and free.\n",
    );
    out.push_str("# TYPE dyncert_shared_zone_bytes gauge\n");
    let _ = writeln!(
        out,
        "dyncert_shared_zone_bytes{{state=\"total\"}} {}",
        z.size
    );
    let _ = writeln!(
        out,
        "dyncert_shared_zone_bytes{{state=\"free\"}} {}",
        z.free
    );
    let gauges = [
        (
            "dyncert_shared_zone_records",
            "Records in the shared zone.",
            z.records,
        ),
        (
            "dyncert_shared_zone_intermediates",
            "Distinct intermediates in the shared zone, each stored once.",
            z.intermediates,
        ),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    let counters = [
        (
            "dyncert_shared_zone_evictions_total",
            "Records evicted from the full shared zone (least recently used first).",
            z.evictions,
        ),
        (
            "dyncert_shared_zone_stores_total",
            "Records stored in the shared zone after a fetch.",
            z.stores,
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    out
}

fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn histogram(out: &mut String, name: &str, label: &str, base: usize, get: &dyn Fn(usize) -> u64) {
    let n = LATENCY_BUCKETS_MS.len();
    let sep = if label.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (i, le) in LATENCY_BUCKETS_MS.iter().enumerate() {
        cumulative += get(base + i);
        let le = *le as f64 / 1000.0;
        let _ = writeln!(out, "{name}_bucket{{{label}{sep}le=\"{le}\"}} {cumulative}");
    }
    cumulative += get(base + n);
    let _ = writeln!(out, "{name}_bucket{{{label}{sep}le=\"+Inf\"}} {cumulative}");
    let sum = get(base + n + 1) as f64 / 1_000_000.0;
    let braces = if label.is_empty() {
        String::new()
    } else {
        format!("{{{label}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {sum}");
    let _ = writeln!(out, "{name}_count{braces} {}", get(base + n + 2));
}

/// Prometheus text exposition (format 0.0.4) of the whole array.
/// `servers` names the server blocks in layout order; `alive` says whether
/// a worker slot's pid is a live process.
pub fn render(
    layout: &Layout,
    get: &dyn Fn(usize) -> u64,
    servers: &[String],
    alive: &dyn Fn(u64) -> bool,
) -> String {
    let mut out = String::with_capacity(8192);
    out.push_str("# HELP dyncert_handshakes_total TLS handshakes by certificate source.\n");
    out.push_str("# TYPE dyncert_handshakes_total counter\n");
    for s in HANDSHAKE_SOURCES {
        if let Some(i) = layout.handshake(s) {
            let _ = writeln!(
                out,
                "dyncert_handshakes_total{{source=\"{}\"}} {}",
                s.as_str(),
                get(i)
            );
        }
    }
    out.push_str("# HELP dyncert_fetches_total Lookups by source and outcome.\n");
    out.push_str("# TYPE dyncert_fetches_total counter\n");
    for src in FetchSource::ALL {
        for o in StepOutcome::ALL {
            let _ = writeln!(
                out,
                "dyncert_fetches_total{{source=\"{}\",outcome=\"{}\"}} {}",
                src.as_str(),
                o.as_str(),
                get(layout.fetch(src, o))
            );
        }
    }
    out.push_str("# HELP dyncert_fetch_duration_seconds Duration of lookups by source.\n");
    out.push_str("# TYPE dyncert_fetch_duration_seconds histogram\n");
    for src in FetchSource::ALL {
        let label = format!("source=\"{}\"", src.as_str());
        let base = FETCH_HIST + source_index(src) * HIST_SLOTS;
        histogram(
            &mut out,
            "dyncert_fetch_duration_seconds",
            &label,
            base,
            get,
        );
    }
    out.push_str("# HELP dyncert_park_duration_seconds Time connections spent parked.\n");
    out.push_str("# TYPE dyncert_park_duration_seconds histogram\n");
    histogram(
        &mut out,
        "dyncert_park_duration_seconds",
        "",
        PARK_HIST,
        get,
    );
    for (s, name, help) in SIMPLE {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let _ = writeln!(out, "{name} {}", get(layout.simple(s)));
    }
    out.push_str(
        "# HELP dyncert_records_rejected_total Records refused by validation, by reason.\n",
    );
    out.push_str("# TYPE dyncert_records_rejected_total counter\n");
    for r in REJECT_REASONS {
        let _ = writeln!(
            out,
            "dyncert_records_rejected_total{{reason=\"{r}\"}} {}",
            get(layout.rejected(r))
        );
    }
    out.push_str(
        "# HELP dyncert_tenant_misdirected_total Requests the tenant policy answered \
         421 Misdirected Request, by reason.\n",
    );
    out.push_str("# TYPE dyncert_tenant_misdirected_total counter\n");
    for m in Misdirected::ALL {
        let _ = writeln!(
            out,
            "dyncert_tenant_misdirected_total{{reason=\"{}\"}} {}",
            m.label(),
            get(layout.misdirected(m))
        );
    }
    out.push_str(
        "# HELP dyncert_on_demand_refused_total Names not queued for on-demand issuance, \
         by reason: no CA issues for the name (once per negative-cache period), the \
         client address used its enqueue budget, its network (IPv4 /24, IPv6 /48) used \
         its shared budget, QUIC handshakes (addresses not validated) used their shared \
         budget.\n",
    );
    out.push_str("# TYPE dyncert_on_demand_refused_total counter\n");
    for r in NotQueued::ALL {
        let _ = writeln!(
            out,
            "dyncert_on_demand_refused_total{{reason=\"{}\"}} {}",
            r.label(),
            get(layout.on_demand_refused(r))
        );
    }
    let gauges = [
        (
            W_INFLIGHT,
            "dyncert_fetches_in_flight",
            "Lookups in flight, summed over workers.",
        ),
        (
            W_ENTRIES,
            "dyncert_cache_entries",
            "Cached names (positive and negative), summed over workers.",
        ),
        (
            W_BYTES,
            "dyncert_cache_bytes",
            "Bytes charged to the caches, summed over workers.",
        ),
    ];
    for (field, name, help) in gauges {
        let mut total = 0;
        for slot in 0..WORKER_SLOTS {
            let pid = layout.worker(slot, W_PID).map(get).unwrap_or(0);
            if pid != 0 && alive(pid) {
                total += layout.worker(slot, field).map(get).unwrap_or(0);
            }
        }
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {total}"
        );
    }
    out.push_str(
        "# HELP dyncert_responses_total HTTP responses by server block and status class.\n",
    );
    out.push_str("# TYPE dyncert_responses_total counter\n");
    for (i, server) in servers.iter().enumerate().take(layout.servers) {
        let server = escape_label(server);
        for (c, class) in STATUS_CLASSES.iter().enumerate() {
            let v = get(SERVERS + i * STATUS_CLASSES.len() + c);
            let _ = writeln!(
                out,
                "dyncert_responses_total{{server=\"{server}\",class=\"{class}\"}} {v}"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn store(layout: &Layout) -> RefCell<Vec<u64>> {
        RefCell::new(vec![0; layout.len()])
    }

    #[test]
    fn every_slot_index_is_inside_the_array_and_distinct() {
        let l = Layout { servers: 3 };
        let mut seen = std::collections::HashSet::new();
        let mut add = |i: usize| {
            assert!(i < l.len(), "{i} outside {}", l.len());
            assert!(seen.insert(i), "slot {i} used twice");
        };
        for s in HANDSHAKE_SOURCES {
            add(l.handshake(s).unwrap());
        }
        for src in FetchSource::ALL {
            for o in StepOutcome::ALL {
                add(l.fetch(src, o));
            }
        }
        for (s, _, _) in SIMPLE {
            add(l.simple(s));
        }
        for r in REJECT_REASONS {
            add(l.rejected(r));
        }
        for m in Misdirected::ALL {
            add(l.misdirected(m));
        }
        for r in NotQueued::ALL {
            add(l.on_demand_refused(r));
        }
        for slot in 0..WORKER_SLOTS {
            for f in 0..WORKER_FIELDS {
                add(l.worker(slot, f).unwrap());
            }
        }
        for s in 0..3 {
            for st in [100, 200, 301, 404, 503] {
                add(l.status(s, st).unwrap());
            }
        }
    }

    #[test]
    fn every_configuration_fits_the_fixed_capacity() {
        let cap = Layout::capacity();
        for servers in [
            0,
            1,
            2,
            3,
            MAX_SERVERS - 1,
            MAX_SERVERS,
            MAX_SERVERS + 1,
            100_000,
        ] {
            let l = Layout::for_servers(servers);
            assert!(l.len() <= cap, "{servers} servers: {} > {cap}", l.len());
            if l.servers > 0 {
                assert!(l.status(l.servers - 1, 599).unwrap() < cap);
            }
            assert_eq!(l.status(l.servers, 200), None);
        }
        assert_eq!(Layout::for_servers(MAX_SERVERS + 1).servers, MAX_SERVERS);
        // Under 128 KiB of shared memory, whatever the configuration (a
        // third of it for the workers' gauges).
        assert!(cap * 8 < 128 * 1024, "{cap} slots");
    }

    #[test]
    fn every_validation_refusal_has_its_own_slot() {
        use crate::validate::Invalid;
        let l = Layout { servers: 0 };
        for i in [
            Invalid::CrtNotPem,
            Invalid::ChainTooLong,
            Invalid::KeyNotPem,
            Invalid::KeyMismatch,
            Invalid::NameNotCovered,
            Invalid::Expired,
            Invalid::NotYetValid,
            Invalid::BadValidity,
            Invalid::AllowInvalid,
            Invalid::ClientCaNotPem,
            Invalid::ClientCaConstraints,
            Invalid::KeyEncrypted,
            Invalid::KeyReference(crate::keyref::RefError::Disabled),
            Invalid::KeyReferenceFailed,
            Invalid::KeyReferenceNoEngine,
            Invalid::KeyReferenceTimeout,
            Invalid::KeyReferenceStuck,
            Invalid::RsaCrtNotPem,
            Invalid::RsaKeyNotPem,
            Invalid::RsaKeyMismatch,
            Invalid::RsaNameNotCovered,
            Invalid::RsaExpired,
            Invalid::RsaNotYetValid,
            Invalid::PairTypes,
            Invalid::KeyTooWeak,
            Invalid::KeyTooSlow,
            Invalid::KeyCurve,
            Invalid::KeyType,
            Invalid::RsaKeyTooWeak,
            Invalid::RsaKeyTooSlow,
            Invalid::RsaKeyCurve,
            Invalid::KeyExponent,
            Invalid::KeyInconsistent,
            Invalid::RsaKeyExponent,
            Invalid::RsaKeyInconsistent,
            Invalid::ChainTooHeavy,
            Invalid::TooManyNames,
            Invalid::RecordTooHeavy,
            Invalid::WeakSignature,
            Invalid::ChainKeyTooWeak,
            Invalid::RsaWeakSignature,
            Invalid::RsaChainKeyTooWeak,
        ] {
            assert_ne!(l.rejected(i.label()), l.rejected("other"), "{i:?}");
        }
    }

    #[test]
    fn every_key_decryption_refusal_has_its_own_slot() {
        use crate::keywrap::KeyWrapError;
        let l = Layout { servers: 0 };
        for e in [
            KeyWrapError::Malformed,
            KeyWrapError::UnknownId,
            KeyWrapError::BadTag,
            KeyWrapError::PlainRefused,
        ] {
            assert_ne!(l.rejected(e.label()), l.rejected("other"), "{e:?}");
        }
    }

    #[test]
    fn every_record_refusal_has_its_own_slot() {
        use crate::record::RecordError;
        let l = Layout { servers: 0 };
        for e in [
            RecordError::MissingCrt,
            RecordError::MissingKey,
            RecordError::CrtTooLarge,
            RecordError::KeyTooLarge,
            RecordError::AllowTooLarge,
            RecordError::ClientCaTooLarge,
            RecordError::SecondIncomplete,
            RecordError::SecondTooLarge,
        ] {
            assert_ne!(l.rejected(e.label()), l.rejected("other"), "{e:?}");
        }
    }

    #[test]
    fn zone_figures_are_rendered_as_gauges_and_counters() {
        let text = render_zone(&ZoneFigures {
            size: 1 << 20,
            free: 4096,
            records: 3,
            intermediates: 1,
            evictions: 7,
            stores: 10,
        });
        assert!(text.contains("dyncert_shared_zone_bytes{state=\"total\"} 1048576\n"));
        assert!(text.contains("dyncert_shared_zone_bytes{state=\"free\"} 4096\n"));
        assert!(text.contains("dyncert_shared_zone_records 3\n"));
        assert!(text.contains("# TYPE dyncert_shared_zone_evictions_total counter\n"));
        assert!(text.contains("dyncert_shared_zone_evictions_total 7\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.rsplit(' ').next().unwrap().parse::<f64>().is_ok(),
                "{line}"
            );
        }
    }

    #[test]
    fn latency_lands_in_the_right_bucket_with_sum_and_count() {
        let l = Layout { servers: 0 };
        let [(b, one), (sum, us), (count, c)] = l.fetch_latency(FetchSource::Redis, 1_500);
        assert_eq!((one, us, c), (1, 1_500, 1));
        assert_eq!(b, FETCH_HIST + 1, "1.5 ms goes to le=0.002");
        assert_eq!(sum, FETCH_HIST + LATENCY_BUCKETS_MS.len() + 1);
        assert_eq!(count, FETCH_HIST + LATENCY_BUCKETS_MS.len() + 2);
        let [(b, _), _, _] = l.park_time(10_000_000);
        assert_eq!(b, PARK_HIST + LATENCY_BUCKETS_MS.len(), "10 s is +Inf");
        let [(b, _), _, _] = l.park_time(1_000);
        assert_eq!(b, PARK_HIST, "exactly 1 ms is le=0.001");
    }

    #[test]
    fn unknown_reject_reason_and_odd_statuses_are_bounded() {
        let l = Layout { servers: 1 };
        assert_eq!(l.rejected("no-such-reason"), l.rejected("other"));
        assert_eq!(l.status(0, 99), None);
        assert_eq!(l.status(0, 600), None);
        assert_eq!(l.status(1, 200), None);
        assert_eq!(l.worker(WORKER_SLOTS, 0), None);
        assert_eq!(l.worker(usize::MAX, 1), None, "no slot claimed");
    }

    #[test]
    fn server_blocks_with_the_same_first_name_get_labels_of_their_own() {
        let names: [&[u8]; 6] = [b"_", b"", b"shop.example.com", b"_", b"a#2", b"a"];
        assert_eq!(
            server_labels(&names),
            ["_", "_#2", "shop.example.com", "_#3", "a#2", "a"]
        );
        // A name that already looks like a suffixed one is skipped over.
        let names: [&[u8]; 3] = [b"a", b"a#2", b"a"];
        assert_eq!(server_labels(&names), ["a", "a#2", "a#3"]);
        assert!(server_labels(&[]).is_empty());
        // Thousands of blocks without a name: each its own label, quickly.
        let empty: Vec<&[u8]> = vec![b""; 5000];
        let labels = server_labels(&empty);
        assert_eq!(labels[0], "_");
        assert_eq!(labels[4999], "_#5000");
        let unique: std::collections::HashSet<&String> = labels.iter().collect();
        assert_eq!(unique.len(), 5000);
    }

    #[test]
    fn exposition_has_counters_histograms_gauges_and_server_labels() {
        let l = Layout { servers: 2 };
        let v = store(&l);
        v.borrow_mut()[l.handshake(CertSource::Redis).unwrap()] = 7;
        v.borrow_mut()[l.fetch(FetchSource::Api, StepOutcome::Timeout)] = 2;
        for (i, n) in l.fetch_latency(FetchSource::Redis, 3_000) {
            v.borrow_mut()[i] += n;
        }
        v.borrow_mut()[l.worker(0, W_PID).unwrap()] = 100;
        v.borrow_mut()[l.worker(0, W_ENTRIES).unwrap()] = 5;
        v.borrow_mut()[l.worker(1, W_PID).unwrap()] = 200;
        v.borrow_mut()[l.worker(1, W_ENTRIES).unwrap()] = 6;
        v.borrow_mut()[l.worker(2, W_PID).unwrap()] = 300; // dead
        v.borrow_mut()[l.worker(2, W_ENTRIES).unwrap()] = 1000;
        v.borrow_mut()[l.status(1, 404).unwrap()] = 3;
        v.borrow_mut()[l.misdirected(Misdirected::HostMismatch)] = 4;
        v.borrow_mut()[l.simple(Simple::AcmeRefused)] = 9;
        let get = |i: usize| v.borrow()[i];
        let text = render(&l, &get, &["a.example".into(), "we\"ird".into()], &|pid| {
            pid != 300
        });
        assert!(text.contains("dyncert_handshakes_total{source=\"redis\"} 7\n"));
        assert!(text.contains("dyncert_fetches_total{source=\"api\",outcome=\"timeout\"} 2\n"));
        assert!(text
            .contains("dyncert_fetch_duration_seconds_bucket{source=\"redis\",le=\"0.002\"} 0\n"));
        assert!(text
            .contains("dyncert_fetch_duration_seconds_bucket{source=\"redis\",le=\"0.005\"} 1\n"));
        assert!(text
            .contains("dyncert_fetch_duration_seconds_bucket{source=\"redis\",le=\"+Inf\"} 1\n"));
        assert!(text.contains("dyncert_fetch_duration_seconds_sum{source=\"redis\"} 0.003\n"));
        assert!(text.contains("dyncert_park_duration_seconds_count 0\n"));
        assert!(text.contains("dyncert_tenant_misdirected_total{reason=\"host_mismatch\"} 4\n"));
        assert!(text.contains(
            "# TYPE dyncert_acme_challenges_refused_total counter\n\
             dyncert_acme_challenges_refused_total 9\n"
        ));
        assert!(
            text.contains("dyncert_cache_entries 11\n"),
            "dead worker excluded"
        );
        assert!(text.contains("dyncert_responses_total{server=\"we\\\"ird\",class=\"4xx\"} 3\n"));
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
        }
    }
}
