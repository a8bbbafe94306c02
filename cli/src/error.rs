//! What a command can fail with, the one line it prints and the exit
//! status it ends with. No variant carries key material: refusals hold the
//! module's own reason strings, Redis URLs are redacted before they get
//! here.

use std::fmt;

use dyncert_core::outcome::Refusal;

/// Exit status of a refusal or a failure.
pub const EXIT_FAILED: u8 = 1;
/// Exit status when the record asked for is not there (and of usage
/// errors, which clap reports).
pub const EXIT_ABSENT: u8 = 2;

#[derive(Debug)]
pub enum CliError {
    /// The module would refuse this record (or name): its reason and label.
    Refused { what: String, refusal: Refusal },
    /// No record under that name.
    Absent(String),
    /// A bad argument, an unreadable file.
    Input(String),
    /// Redis could not be reached or failed a command.
    Redis(String),
    /// An ACME step failed (`issue`): which name, which step, the CA's
    /// problem detail.
    Acme(String),
    /// The CA did not answer an ACME exchange within its bound
    /// (`--acme-timeout`): which step, and the CA's directory URL.
    Unanswered(String),
    /// Another process holds the name's order lock: an order for it is in
    /// flight elsewhere in the fleet, so none is started here.
    Busy(String),
    /// The record changed while a certificate was ordered for it (an
    /// operator's `put` meanwhile): the new certificate was not stored.
    Changed(String),
    /// The name's order lock expired while its order ran (nobody holds
    /// it): the order stopped before finalizing or storing, since another
    /// may have run meanwhile.
    LockLost(String),
    /// A stored record is larger than a record may be (more fields, or
    /// a longer value, than the module reads): refused before it is read
    /// whole. Which field, its size and its limit.
    Oversized(String),
}

impl CliError {
    pub fn refused(what: &str, refusal: impl Into<Refusal>) -> CliError {
        CliError::Refused {
            what: what.to_owned(),
            refusal: refusal.into(),
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Absent(_) => EXIT_ABSENT,
            _ => EXIT_FAILED,
        }
    }

    /// The line of a refusal without the "dyncert: refused" lead, for
    /// import's per-file report.
    pub fn reason(&self) -> String {
        match self {
            CliError::Refused { refusal, .. } => {
                format!("{} ({})", refusal.reason, refusal.label)
            }
            CliError::Absent(name) => format!("no record for \"{name}\""),
            CliError::Input(m)
            | CliError::Redis(m)
            | CliError::Acme(m)
            | CliError::Unanswered(m)
            | CliError::Busy(m)
            | CliError::Changed(m)
            | CliError::LockLost(m)
            | CliError::Oversized(m) => m.clone(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Refused { what, refusal } => write!(
                f,
                "refused \"{what}\": {} ({})",
                refusal.reason, refusal.label
            ),
            CliError::Absent(name) => write!(f, "no record for \"{name}\""),
            CliError::Input(m)
            | CliError::Redis(m)
            | CliError::Acme(m)
            | CliError::Unanswered(m)
            | CliError::Busy(m)
            | CliError::Changed(m)
            | CliError::LockLost(m)
            | CliError::Oversized(m) => f.write_str(m),
        }
    }
}

impl From<redis::RedisError> for CliError {
    fn from(e: redis::RedisError) -> Self {
        // The client's messages name the command and the server's error,
        // never the URL or its password.
        CliError::Redis(format!("Redis: {e}"))
    }
}
