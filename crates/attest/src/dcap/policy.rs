//! TCB status policy: which of Intel's TCB statuses a verifier accepts.
//!
//! Intel's appraisal of a platform against its TCB info yields one status.
//! Only `UpToDate` means "no known issue"; every other status names work the
//! platform owner has not done (microcode, BIOS configuration, software
//! hardening in the enclave) and comes with advisory ids. The default policy
//! accepts `UpToDate` only; callers may accept more, and every status they
//! accept beyond `UpToDate` is reported in the claims.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A TCB status from Intel's TCB info / QE identity (converged for the quote).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TcbStatus {
    /// The platform is patched against every known issue.
    UpToDate,
    /// Patched, but the enclave/TD software needs mitigations (e.g. LVI).
    SWHardeningNeeded,
    /// Patched, but the platform configuration (BIOS) needs changes.
    ConfigurationNeeded,
    /// Both configuration changes and software hardening are needed.
    ConfigurationAndSWHardeningNeeded,
    /// The platform TCB (microcode, firmware) is out of date.
    OutOfDate,
    /// Out of date and the configuration needs changes.
    OutOfDateConfigurationNeeded,
    /// TDX 1.5: the TD should be relaunched to pick up a module update.
    TDRelaunchAdvised,
    /// TDX 1.5: relaunch advised and configuration changes needed.
    TDRelaunchAdvisedConfigurationNeeded,
    /// The platform's keys are revoked. Never accepted.
    Revoked,
}

impl TcbStatus {
    /// Every status, in Intel's order of severity.
    pub const ALL: [TcbStatus; 9] = [
        TcbStatus::UpToDate,
        TcbStatus::SWHardeningNeeded,
        TcbStatus::ConfigurationNeeded,
        TcbStatus::ConfigurationAndSWHardeningNeeded,
        TcbStatus::OutOfDate,
        TcbStatus::OutOfDateConfigurationNeeded,
        TcbStatus::TDRelaunchAdvised,
        TcbStatus::TDRelaunchAdvisedConfigurationNeeded,
        TcbStatus::Revoked,
    ];

    /// Intel's spelling, as in TCB info JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TcbStatus::UpToDate => "UpToDate",
            TcbStatus::SWHardeningNeeded => "SWHardeningNeeded",
            TcbStatus::ConfigurationNeeded => "ConfigurationNeeded",
            TcbStatus::ConfigurationAndSWHardeningNeeded => "ConfigurationAndSWHardeningNeeded",
            TcbStatus::OutOfDate => "OutOfDate",
            TcbStatus::OutOfDateConfigurationNeeded => "OutOfDateConfigurationNeeded",
            TcbStatus::TDRelaunchAdvised => "TDRelaunchAdvised",
            TcbStatus::TDRelaunchAdvisedConfigurationNeeded => {
                "TDRelaunchAdvisedConfigurationNeeded"
            }
            TcbStatus::Revoked => "Revoked",
        }
    }

    pub(crate) fn from_qvl(s: dcap_qvl::TcbStatus) -> Self {
        use dcap_qvl::TcbStatus as Q;
        match s {
            Q::UpToDate => TcbStatus::UpToDate,
            Q::SWHardeningNeeded => TcbStatus::SWHardeningNeeded,
            Q::ConfigurationNeeded => TcbStatus::ConfigurationNeeded,
            Q::ConfigurationAndSWHardeningNeeded => TcbStatus::ConfigurationAndSWHardeningNeeded,
            Q::OutOfDate => TcbStatus::OutOfDate,
            Q::OutOfDateConfigurationNeeded => TcbStatus::OutOfDateConfigurationNeeded,
            Q::TDRelaunchAdvised => TcbStatus::TDRelaunchAdvised,
            Q::TDRelaunchAdvisedConfigurationNeeded => {
                TcbStatus::TDRelaunchAdvisedConfigurationNeeded
            }
            Q::Revoked => TcbStatus::Revoked,
        }
    }
}

impl fmt::Display for TcbStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TcbStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TcbStatus::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let names: Vec<_> = TcbStatus::ALL.iter().map(|t| t.as_str()).collect();
                format!("unknown TCB status {s:?}; known: {}", names.join(", "))
            })
    }
}

/// Which TCB statuses to accept, and whether a debug enclave/TD is acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcbPolicy {
    /// Accepted statuses (default: `UpToDate` only). `Revoked` is never
    /// accepted, even if listed here; prefer [`TcbPolicy::accept`], which
    /// refuses to add it.
    pub accepted: BTreeSet<TcbStatus>,
    /// Accept an enclave/TD launched in debug mode (its memory is readable by
    /// the host). Off by default.
    pub allow_debug: bool,
}

impl Default for TcbPolicy {
    fn default() -> Self {
        TcbPolicy {
            accepted: BTreeSet::from([TcbStatus::UpToDate]),
            allow_debug: false,
        }
    }
}

impl TcbPolicy {
    /// Accept `UpToDate` only; refuse debug.
    pub fn strict() -> Self {
        Self::default()
    }

    /// Also accept `status`. `Revoked` is refused: a revoked platform's keys
    /// are compromised and its evidence means nothing.
    pub fn accept(mut self, status: TcbStatus) -> Result<Self, String> {
        if status == TcbStatus::Revoked {
            return Err(
                "TCB status Revoked can never be accepted: the platform's keys are revoked".into(),
            );
        }
        self.accepted.insert(status);
        Ok(self)
    }

    /// Accept every status in `statuses` (see [`TcbPolicy::accept`]).
    pub fn accept_all(
        mut self,
        statuses: impl IntoIterator<Item = TcbStatus>,
    ) -> Result<Self, String> {
        for s in statuses {
            self = self.accept(s)?;
        }
        Ok(self)
    }

    /// True if `status` is acceptable.
    pub fn accepts(&self, status: TcbStatus) -> bool {
        status != TcbStatus::Revoked && self.accepted.contains(&status)
    }

    /// The accepted statuses, in order of severity.
    pub fn accepted(&self) -> impl Iterator<Item = TcbStatus> + '_ {
        self.accepted.iter().copied()
    }

    /// Accepted statuses as text: `UpToDate, SWHardeningNeeded`.
    pub fn accepted_list(&self) -> String {
        let v: Vec<_> = self.accepted.iter().map(|s| s.as_str()).collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_accepts_only_up_to_date() {
        let p = TcbPolicy::default();
        assert!(p.accepts(TcbStatus::UpToDate));
        for s in &TcbStatus::ALL[1..] {
            assert!(!p.accepts(*s), "{s}");
        }
    }

    #[test]
    fn revoked_cannot_be_accepted() {
        assert!(TcbPolicy::default().accept(TcbStatus::Revoked).is_err());
    }

    #[test]
    fn parse_names() {
        for s in TcbStatus::ALL {
            assert_eq!(s.as_str().parse::<TcbStatus>().unwrap(), s);
        }
        assert!(
            "Fine"
                .parse::<TcbStatus>()
                .unwrap_err()
                .contains("known: UpToDate")
        );
    }
}
