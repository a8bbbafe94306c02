//! The counters of `dyncert run` and their Prometheus text exposition
//! (version 0.0.4). Counters are atomics the issuer's threads bump; the
//! rendering is a pure function of their values.
#![forbid(unsafe_code)]

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// `dyncert_issuer_orders_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Issued,
    Renewed,
    Failed,
}

/// `dyncert_issuer_on_demand_total{result}`: what became of a stream entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDemand {
    Issued,
    /// The ask endpoint said no (or there is none), or the name cannot be
    /// ordered on demand (wildcard, invalid).
    Refused,
    /// Over the ask rate: not asked, not ordered.
    Dropped,
    /// Backoff, a budget or another instance's order lock: later.
    Deferred,
    /// A record is there already.
    Exists,
}

/// `dyncert_issuer_failures_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The ACME order failed.
    Acme,
    /// A Redis command of the issuer failed.
    Redis,
    /// The ask endpoint did not answer in time.
    Ask,
    /// A renew pass had at least one failed renewal.
    Renew,
    /// A name was deferred for a budget.
    Budget,
}

const ORDERS: [(Order, &str); 3] = [
    (Order::Issued, "issued"),
    (Order::Renewed, "renewed"),
    (Order::Failed, "failed"),
];
const ON_DEMAND: [(OnDemand, &str); 5] = [
    (OnDemand::Issued, "issued"),
    (OnDemand::Refused, "refused"),
    (OnDemand::Dropped, "dropped"),
    (OnDemand::Deferred, "deferred"),
    (OnDemand::Exists, "exists"),
];
const FAILURES: [(Failure, &str); 5] = [
    (Failure::Acme, "acme"),
    (Failure::Redis, "redis"),
    (Failure::Ask, "ask"),
    (Failure::Renew, "renew"),
    (Failure::Budget, "budget"),
];

#[derive(Default)]
pub struct Metrics {
    pub active: AtomicU64,
    orders: [AtomicU64; 3],
    on_demand: [AtomicU64; 5],
    failures: [AtomicU64; 5],
    pub takeovers: AtomicU64,
    pub renew_passes: AtomicU64,
    pub ask_calls: AtomicU64,
    /// Earliest notAfter in the index (UNIX secs); `i64::MIN`: unknown.
    pub next_expiry: AtomicI64,
}

fn index<T: PartialEq, const N: usize>(table: &[(T, &str); N], what: T) -> usize {
    table.iter().position(|(t, _)| *t == what).unwrap_or(0)
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics::default();
        m.next_expiry.store(i64::MIN, Ordering::Relaxed);
        m
    }

    pub fn order(&self, o: Order) {
        self.orders[index(&ORDERS, o)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn on_demand(&self, o: OnDemand) {
        self.on_demand[index(&ON_DEMAND, o)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn failure(&self, f: Failure) {
        self.failures[index(&FAILURES, f)].fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition at `now` (UNIX secs, for the time to the next expiry).
    pub fn render(&self, now: i64) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            "dyncert_issuer_active",
            "gauge",
            "1 while this instance holds the issuer lease and may order",
        );
        let _ = writeln!(out, "dyncert_issuer_active {}", get(&self.active));
        let mut labelled = |name: &str, help: &str, label: &str, rows: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (value, n) in rows {
                let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
            }
        };
        labelled(
            "dyncert_issuer_orders_total",
            "ACME orders by result",
            "result",
            &ORDERS.map(|(o, s)| (s, get(&self.orders[index(&ORDERS, o)]))),
        );
        labelled(
            "dyncert_issuer_failures_total",
            "Failures by reason",
            "reason",
            &FAILURES.map(|(f, s)| (s, get(&self.failures[index(&FAILURES, f)]))),
        );
        labelled(
            "dyncert_issuer_on_demand_total",
            "On-demand stream entries by outcome",
            "result",
            &ON_DEMAND.map(|(o, s)| (s, get(&self.on_demand[index(&ON_DEMAND, o)]))),
        );
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            "dyncert_issuer_lease_takeovers_total",
            "Times this instance became the active issuer",
            get(&self.takeovers),
        );
        counter(
            "dyncert_issuer_renew_passes_total",
            "Renew passes run",
            get(&self.renew_passes),
        );
        counter(
            "dyncert_issuer_ask_requests_total",
            "Requests made to the ask endpoint",
            get(&self.ask_calls),
        );
        let next = self.next_expiry.load(Ordering::Relaxed);
        if next != i64::MIN {
            let _ = writeln!(
                out,
                "# HELP dyncert_issuer_next_expiry_seconds Seconds until the earliest notAfter in the expiry index\n# TYPE dyncert_issuer_next_expiry_seconds gauge\ndyncert_issuer_next_expiry_seconds {}",
                next.saturating_sub(now)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_every_family_with_its_labels() {
        let m = Metrics::new();
        m.active.store(1, Ordering::Relaxed);
        m.order(Order::Renewed);
        m.order(Order::Renewed);
        m.on_demand(OnDemand::Dropped);
        m.failure(Failure::Budget);
        m.takeovers.fetch_add(1, Ordering::Relaxed);
        let text = m.render(100);
        for line in [
            "dyncert_issuer_active 1",
            "dyncert_issuer_orders_total{result=\"issued\"} 0",
            "dyncert_issuer_orders_total{result=\"renewed\"} 2",
            "dyncert_issuer_orders_total{result=\"failed\"} 0",
            "dyncert_issuer_on_demand_total{result=\"dropped\"} 1",
            "dyncert_issuer_on_demand_total{result=\"exists\"} 0",
            "dyncert_issuer_failures_total{reason=\"budget\"} 1",
            "dyncert_issuer_lease_takeovers_total 1",
            "# TYPE dyncert_issuer_active gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains("next_expiry"), "unknown: not exported");
        m.next_expiry.store(1_100, Ordering::Relaxed);
        assert!(m
            .render(100)
            .contains("\ndyncert_issuer_next_expiry_seconds 1000\n"));
    }
}
