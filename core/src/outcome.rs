//! The vocabulary of outcomes shared by the fetcher, the worker and the
//! metrics: where a certificate came from, which source a lookup asked and
//! how each ask ended, why a record was refused. A leaf module: it imports
//! nothing from the crate, so every other module may use it. `as_str`
//! feeds both log variables and metric labels.

/// Where a certificate came from. `as_str` feeds `$dyncert_source` and
/// metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    Cache,
    /// Loaded from the host-wide tier (another worker fetched it).
    Shared,
    Redis,
    Api,
    Default,
    Rejected,
    /// A resumed TLS session: no certificate was sent, none was chosen.
    Resumed,
}

impl CertSource {
    pub fn as_str(&self) -> &'static str {
        match self {
            CertSource::Cache => "cache",
            CertSource::Shared => "shared",
            CertSource::Redis => "redis",
            CertSource::Api => "api",
            CertSource::Default => "default",
            CertSource::Rejected => "rejected",
            CertSource::Resumed => "resumed",
        }
    }
}

/// Sources a fetch step can ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchSource {
    Redis,
    Api,
}

impl FetchSource {
    pub const ALL: [FetchSource; 2] = [FetchSource::Redis, FetchSource::Api];
    pub fn as_str(&self) -> &'static str {
        match self {
            FetchSource::Redis => "redis",
            FetchSource::Api => "api",
        }
    }
}

/// How one step of a fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    Hit,
    Miss,
    Error,
    Timeout,
    Refused,
}

impl StepOutcome {
    pub const ALL: [StepOutcome; 5] = [
        StepOutcome::Hit,
        StepOutcome::Miss,
        StepOutcome::Error,
        StepOutcome::Timeout,
        StepOutcome::Refused,
    ];
    pub fn as_str(&self) -> &'static str {
        match self {
            StepOutcome::Hit => "hit",
            StepOutcome::Miss => "miss",
            StepOutcome::Error => "error",
            StepOutcome::Timeout => "timeout",
            StepOutcome::Refused => "refused",
        }
    }
}

/// Why a record was refused: a log reason and a counter label. The
/// modules that refuse records (`record`, `validate`) convert their own
/// reasons into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub label: &'static str,
    /// The Redis key of the refused record, when the log line should name
    /// it (an encrypted key is bound to it, and a wildcard record's key is
    /// not the name that asked).
    pub record: Option<std::sync::Arc<str>>,
}
