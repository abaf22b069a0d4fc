//! Verification errors: malformed input versus a refused check.

use std::fmt;

/// Why evidence was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input could not be parsed. Names the field or offset.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being parsed (`SNP report`, `certificate`, …).
        what: String,
        /// Where and why parsing failed.
        reason: String,
    },
    /// The input parsed but a check failed.
    #[error("{0}")]
    Refused(Refusal),
}

impl Error {
    /// Malformed input.
    pub fn malformed(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Malformed {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// A failed check without expected/actual values.
    pub fn refused(check: &'static str, reason: impl Into<String>) -> Self {
        Error::Refused(Refusal {
            check,
            reason: reason.into(),
            expected: None,
            actual: None,
        })
    }

    /// A failed comparison: `"{reason}: expected {expected}, got {actual}"`.
    pub fn mismatch(
        check: &'static str,
        reason: impl Into<String>,
        expected: impl Into<String>,
        actual: impl Into<String>,
    ) -> Self {
        Error::Refused(Refusal {
            check,
            reason: reason.into(),
            expected: Some(expected.into()),
            actual: Some(actual.into()),
        })
    }

    /// The check that failed, if this is a refusal.
    pub fn check(&self) -> Option<&'static str> {
        match self {
            Error::Refused(r) => Some(r.check),
            Error::Malformed { .. } => None,
        }
    }

    /// True for parse errors (CLI exit code 2), false for refusals (exit 1).
    pub fn is_malformed(&self) -> bool {
        matches!(self, Error::Malformed { .. })
    }
}

/// A failed verification check, with the expected and the actual value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable identifier of the check, e.g. `snp.host_data`.
    pub check: &'static str,
    /// One line for a human.
    pub reason: String,
    /// What the verifier wanted.
    pub expected: Option<String>,
    /// What the evidence said.
    pub actual: Option<String>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)?;
        match (&self.expected, &self.actual) {
            (Some(e), Some(a)) => write!(f, ": expected {e}, got {a}"),
            (Some(e), None) => write!(f, ": expected {e}"),
            (None, Some(a)) => write!(f, ": got {a}"),
            (None, None) => Ok(()),
        }
    }
}

/// Shorthand result.
pub type Result<T> = std::result::Result<T, Error>;
