//! A release pin: this server instance releases resources to one workload
//! only. `veil run`'s embedded KBS serves exactly one sandbox; it pins the
//! sandbox's init-data digest and the resources that sandbox names (its
//! secrets and image keys), so that another workload, even one attested by
//! the same sim platform and served by a KBS on the same data dir, gets
//! none of them. Checked before the resource policy, and in addition to it.

use std::collections::BTreeSet;

use subtle::ConstantTimeEq;

/// What one pinned instance may release, and to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasePin {
    /// Who the pin is for, for refusals (e.g. `sandbox 3f2a…`).
    pub label: String,
    /// The init-data digest (hex) a token must carry, as the token's
    /// `annotated-evidence.init_data` spells it.
    pub init_data_hex: String,
    /// Resource paths (`repo/type/tag`) that may be released.
    pub resources: BTreeSet<String>,
}

impl ReleasePin {
    /// Whether `path` may be released to a token whose annotated evidence
    /// is `evidence`; the refusal names the check, expected and actual.
    pub fn check(&self, path: &str, evidence: &serde_json::Value) -> Result<(), String> {
        if !self.resources.contains(path) {
            return Err(format!(
                "{path}: this KBS serves only {} and releases only what its init-data and images name ({}); {path} is not among them",
                self.label,
                if self.resources.is_empty() {
                    "nothing".to_string()
                } else {
                    self.resources
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
        let bound = evidence
            .get("init_data_claims")
            .is_some_and(|c| !c.is_null());
        let got = evidence
            .get("init_data")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let same = got.len() == self.init_data_hex.len()
            && bool::from(got.as_bytes().ct_eq(self.init_data_hex.as_bytes()));
        if !bound || !same {
            return Err(format!(
                "{path}: this KBS releases only to {} (init-data digest {}); the token's init-data is {}{}",
                self.label,
                self.init_data_hex,
                if got.is_empty() { "(none)" } else { got },
                if bound {
                    ""
                } else {
                    " and no init-data document was verified against the evidence"
                }
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin() -> ReleasePin {
        ReleasePin {
            label: "sandbox a".into(),
            init_data_hex: "aa".repeat(48),
            resources: ["default/secret/a".to_string()].into(),
        }
    }

    #[test]
    fn only_the_pinned_digest_and_resources_are_released() {
        let ok = serde_json::json!({"init_data": "aa".repeat(48), "init_data_claims": {}});
        assert!(pin().check("default/secret/a", &ok).is_ok());
        let e = pin().check("default/secret/b", &ok).unwrap_err();
        assert!(e.contains("default/secret/b is not among them"), "{e}");
        let other = serde_json::json!({"init_data": "bb".repeat(48), "init_data_claims": {}});
        let e = pin().check("default/secret/a", &other).unwrap_err();
        assert!(
            e.contains(&"bb".repeat(48)) && e.contains(&"aa".repeat(48)),
            "{e}"
        );
        // The right field, but no init-data document was bound: refused.
        let unbound = serde_json::json!({"init_data": "aa".repeat(48), "init_data_claims": null});
        assert!(pin().check("default/secret/a", &unbound).is_err());
        assert!(
            pin()
                .check("default/secret/a", &serde_json::json!({}))
                .is_err()
        );
    }
}
