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

/// What a handshake gets when no certificate of its own is cached for it
/// (no valid SNI, or a name without a record): the server's default
/// certificate, or with `dyncert_unknown reject` ([`CertSource::Rejected`])
/// a failed handshake. A ClientHello without SNI always gets the default:
/// it names nothing to refuse.
pub fn without_certificate(reject: bool, sni_sent: bool) -> CertSource {
    if reject && sni_sent {
        CertSource::Rejected
    } else {
        CertSource::Default
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

/// Labels of the refusals that withdraw access (see [`Refusal::withdraws`]).
const WITHDRAWING: [&str; 8] = [
    "allow_invalid",
    "allow_too_large",
    "client_ca_not_pem",
    "client_ca_too_large",
    "client_ca_constraints",
    // Its weight counts the `client_ca` certificates too, so a `client_ca`
    // that fits its field can still make the record too heavy: a tenant
    // adding one to require client certificates must not leave the cached,
    // open record served. No CA issues such a record, so nothing real is
    // taken down by withdrawing it.
    "record_too_heavy",
    "key_plain_refused",
    "key_reference_refused",
];

impl Refusal {
    /// Whether the refused record withdraws what a cached one of the name
    /// grants, so the cached one must not be served while stale: a policy
    /// field (`allow`, `client_ca`) that does not parse, is too large or (a
    /// `client_ca`) carries too many name constraints
    /// (an owner tightening a policy with a typo must not leave it open),
    /// or a key the configuration does not accept. Other refusals (a
    /// certificate or key that does not parse, an expired certificate)
    /// keep a working certificate within `stale`, so that a bad update
    /// never takes a site down.
    pub fn withdraws(&self) -> bool {
        WITHDRAWING.contains(&self.label)
    }
}

#[cfg(test)]
mod withdraw_tests {
    use super::*;

    #[test]
    fn without_a_certificate_the_default_unless_a_named_handshake_is_rejected() {
        assert_eq!(without_certificate(false, true), CertSource::Default);
        assert_eq!(without_certificate(false, false), CertSource::Default);
        assert_eq!(without_certificate(true, true), CertSource::Rejected);
        assert_eq!(without_certificate(true, false), CertSource::Default);
    }

    #[test]
    fn withdrawing_refusals_are_real_labels_of_policy_and_key_rules() {
        for label in WITHDRAWING {
            assert!(
                crate::metrics::REJECT_REASONS.contains(&label),
                "{label} is not a rejection label"
            );
        }
        let allow: Refusal = crate::validate::Invalid::AllowInvalid.into();
        assert!(allow.withdraws());
        // A client_ca refused for its name constraints was meant to narrow
        // the tenant's clients: the cached, wider one must not stay.
        let constraints: Refusal = crate::validate::Invalid::ClientCaConstraints.into();
        assert!(constraints.withdraws());
        // A record made too heavy (its client_ca counts) must not leave the
        // lighter, open one in force either.
        let heavy: Refusal = crate::validate::Invalid::RecordTooHeavy.into();
        assert!(heavy.withdraws());
        let plain: Refusal = crate::keywrap::KeyWrapError::PlainRefused.into();
        assert!(plain.withdraws());
        let crt: Refusal = crate::validate::Invalid::CrtNotPem.into();
        assert!(!crt.withdraws());
        let expired: Refusal = crate::validate::Invalid::Expired.into();
        assert!(!expired.withdraws());
    }
}
