//! Admin authentication: `Authorization: Bearer <JWT>` signed with EdDSA
//! (Ed25519) by one of the configured admin public keys, with a `role`
//! claim of `admin`, an audience naming this KBS, a bounded lifetime, and a
//! `jti` accepted once.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};

/// Clock skew tolerated on `iat` / `nbf` / `exp`.
pub const LEEWAY_SECS: u64 = 60;
/// Default longest admin token lifetime accepted (`exp - iat`).
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 600;
/// Most `jti`s remembered at once; past it, new tokens are refused until
/// remembered ones expire (only correctly signed tokens get here).
pub const MAX_REMEMBERED_JTIS: usize = 100_000;

/// What an admin token must satisfy besides its signature.
#[derive(Debug, Clone)]
pub struct AdminTokenRules {
    /// Required `aud` (a string, or one element of an array).
    pub audience: String,
    /// Longest lifetime (`exp - iat`) accepted.
    pub max_lifetime_secs: u64,
    /// Accept tokens without `jti` (reusable until `exp`).
    pub allow_reusable: bool,
}

/// `jti`s of accepted admin tokens, each kept until its token expires: in
/// memory, or in a shared store so that a token used on one replica is
/// refused on every other.
#[derive(Default)]
pub struct ReplayCache {
    seen: Mutex<HashMap<String, u64>>,
    shared: Option<std::sync::Arc<dyn crate::store::Store>>,
}

impl ReplayCache {
    /// In `store`'s shared table where it has one, else in memory.
    pub fn for_store(store: &std::sync::Arc<dyn crate::store::Store>) -> Self {
        ReplayCache {
            seen: Mutex::default(),
            shared: store.shared_sessions().map(|_| store.clone()),
        }
    }

    /// Record `jti` (valid until `until`); refuses one already recorded.
    fn first_use(&self, jti: &str, until: u64, now: u64) -> Result<(), String> {
        if let Some(t) = self.shared.as_ref().and_then(|s| s.shared_sessions()) {
            return match t.first_use(&format!("admin-jti:{jti}"), until, now) {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!(
                    "admin token jti {:?} was already used (replay, on this or another replica); mint a new token per call",
                    jti.chars().take(64).collect::<String>()
                )),
                Err(e) => Err(format!("recording the admin token's jti: {e}")),
            };
        }
        let mut m = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&t) = m.get(jti) {
            if t > now {
                return Err(format!(
                    "admin token jti {:?} was already used (replay); mint a new token per call",
                    jti.chars().take(64).collect::<String>()
                ));
            }
        }
        if m.len() >= MAX_REMEMBERED_JTIS {
            m.retain(|_, t| *t > now);
            if m.len() >= MAX_REMEMBERED_JTIS {
                return Err(format!(
                    "{MAX_REMEMBERED_JTIS} admin tokens are live; try again when some expire"
                ));
            }
        }
        m.insert(jti.to_string(), until);
        Ok(())
    }
}

fn audience_matches(aud: Option<&serde_json::Value>, want: &str) -> bool {
    match aud {
        Some(serde_json::Value::String(a)) => a == want,
        Some(serde_json::Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(want)),
        _ => false,
    }
}

/// Verify an admin token against the configured keys and `rules`; a `jti`
/// is recorded in `seen` and refused the next time. Returns the subject.
pub fn verify_admin_token(
    token: &str,
    keys: &[VerifyingKey],
    rules: &AdminTokenRules,
    seen: &ReplayCache,
    now: u64,
) -> Result<String, String> {
    if keys.is_empty() {
        return Err("no admin public key is configured (start the KBS with --admin-pubkey)".into());
    }
    if token.len() > 8 * 1024 {
        return Err("admin token larger than 8 KiB".into());
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("admin token is not a compact JWS".into());
    };
    let header: serde_json::Value = B64URL
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("admin token header is not base64url JSON")?;
    let alg = header.get("alg").and_then(|v| v.as_str()).unwrap_or("");
    if alg != "EdDSA" {
        return Err(format!("admin token alg must be EdDSA, got {alg:?}"));
    }
    let sig_bytes = B64URL
        .decode(s)
        .map_err(|_| "admin token signature is not base64url")?;
    let sig =
        Signature::from_slice(&sig_bytes).map_err(|_| "admin token signature is not 64 bytes")?;
    let input = format!("{h}.{p}");
    if !keys
        .iter()
        .any(|k| k.verify(input.as_bytes(), &sig).is_ok())
    {
        return Err(format!(
            "admin token signature does not verify with any of the {} configured admin key(s)",
            keys.len()
        ));
    }
    let claims: serde_json::Value = B64URL
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("admin token payload is not base64url JSON")?;
    let exp = claims
        .get("exp")
        .and_then(|v| v.as_u64())
        .ok_or("admin token has no numeric exp")?;
    let iat = claims
        .get("iat")
        .and_then(|v| v.as_u64())
        .ok_or("admin token has no numeric iat")?;
    if exp + LEEWAY_SECS <= now {
        return Err(format!("admin token expired at {exp}, now is {now}"));
    }
    if iat > now + LEEWAY_SECS {
        return Err(format!(
            "admin token issued in the future (iat {iat}, now {now})"
        ));
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_u64().ok_or("admin token nbf is not a number")?;
        if nbf > now + LEEWAY_SECS {
            return Err(format!("admin token not valid before {nbf}, now is {now}"));
        }
    }
    if exp.saturating_sub(iat) > rules.max_lifetime_secs {
        return Err(format!(
            "admin token lifetime {}s exceeds {}s (admin_max_token_lifetime)",
            exp.saturating_sub(iat),
            rules.max_lifetime_secs
        ));
    }
    if !audience_matches(claims.get("aud"), &rules.audience) {
        return Err(format!(
            "admin token audience must be {:?} (this KBS's admin_audience), got {}",
            rules.audience,
            claims.get("aud").map_or("none".to_string(), |a| a
                .to_string()
                .chars()
                .take(128)
                .collect())
        ));
    }
    let role = claims.get("role").and_then(|v| v.as_str()).unwrap_or("");
    if role != "admin" {
        return Err(format!("admin token role must be \"admin\", got {role:?}"));
    }
    match claims.get("jti") {
        Some(serde_json::Value::String(jti)) if !jti.is_empty() && jti.len() <= 256 => {
            seen.first_use(jti, exp + LEEWAY_SECS, now)?
        }
        Some(_) => return Err("admin token jti must be a string of 1-256 bytes".into()),
        None if rules.allow_reusable => {}
        None => {
            return Err(
                "admin token has no jti: single-use tokens are required (admin_allow_reusable_tokens is off)"
                    .into(),
            );
        }
    }
    Ok(claims
        .get("sub")
        .and_then(|v| v.as_str())
        .unwrap_or("admin")
        .chars()
        .take(64)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer;
    use veil_kbs_client::admin::AdminKey;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn rules() -> AdminTokenRules {
        AdminTokenRules {
            audience: "veil-kbs".into(),
            max_lifetime_secs: DEFAULT_MAX_LIFETIME_SECS,
            allow_reusable: false,
        }
    }

    /// A token with arbitrary claims signed by `key`.
    fn sign(key: &ed25519_dalek::SigningKey, claims: serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            B64URL.encode(r#"{"alg":"EdDSA","typ":"JWT"}"#),
            B64URL.encode(claims.to_string())
        );
        format!(
            "{input}.{}",
            B64URL.encode(key.sign(input.as_bytes()).to_bytes())
        )
    }

    #[test]
    fn accepts_own_keys_only() {
        let k = AdminKey::generate();
        let pk = veil_kbs_client::admin::parse_admin_public_key(&k.public_pem().unwrap()).unwrap();
        let now = now();
        let seen = ReplayCache::default();
        assert_eq!(
            verify_admin_token(&k.token(60), &[pk], &rules(), &seen, now).unwrap(),
            "admin"
        );
        let other = AdminKey::generate();
        assert!(
            verify_admin_token(&other.token(60), &[pk], &rules(), &seen, now)
                .unwrap_err()
                .contains("does not verify")
        );
        assert!(
            verify_admin_token(&k.token(60), &[pk], &rules(), &seen, now + 1000)
                .unwrap_err()
                .contains("expired")
        );
        assert!(verify_admin_token(&k.token(60), &[], &rules(), &seen, now).is_err());
        assert!(verify_admin_token("x.y.z", &[pk], &rules(), &seen, now).is_err());
    }

    #[test]
    fn audience_nbf_lifetime_and_replay_are_enforced() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let pk = sk.verifying_key();
        let now = now();
        let seen = ReplayCache::default();
        let claims = |extra: serde_json::Value| {
            let mut c = serde_json::json!({"role": "admin", "aud": "veil-kbs", "iat": now, "exp": now + 120});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            c
        };
        let check =
            |c: serde_json::Value| verify_admin_token(&sign(&sk, c), &[pk], &rules(), &seen, now);

        // Audience: missing, wrong, another KBS's in a list.
        let e = check(claims(serde_json::json!({"jti": "a1", "aud": null}))).unwrap_err();
        assert!(e.contains("audience must be \"veil-kbs\""), "{e}");
        let e = check(claims(serde_json::json!({"jti": "a2", "aud": "KBS"}))).unwrap_err();
        assert!(e.contains("got \"KBS\""), "{e}");
        assert!(
            check(claims(
                serde_json::json!({"jti": "a3", "aud": ["other", "veil-kbs"]})
            ))
            .is_ok()
        );

        // nbf in the future (beyond the leeway) is refused; within it, accepted.
        let e = check(claims(serde_json::json!({"jti": "n1", "nbf": now + 3600}))).unwrap_err();
        assert!(e.contains("not valid before"), "{e}");
        assert!(check(claims(serde_json::json!({"jti": "n2", "nbf": now + 10}))).is_ok());

        // Lifetime: the default cap is 10 minutes.
        let e = check(claims(serde_json::json!({"jti": "l1", "exp": now + 3600}))).unwrap_err();
        assert!(e.contains("lifetime 3600s exceeds 600s"), "{e}");

        // Replay: the same jti twice.
        let t = sign(&sk, claims(serde_json::json!({"jti": "r1"})));
        assert!(verify_admin_token(&t, &[pk], &rules(), &seen, now).is_ok());
        let e = verify_admin_token(&t, &[pk], &rules(), &seen, now + 5).unwrap_err();
        assert!(e.contains("already used (replay)"), "{e}");

        // No jti: refused unless reusable tokens are allowed.
        let e = check(claims(serde_json::json!({}))).unwrap_err();
        assert!(e.contains("no jti"), "{e}");
        // A long-lived reusable token (as Trustee's setup tooling mints)
        // when the KBS is configured for it.
        let long = AdminTokenRules {
            max_lifetime_secs: 10 * 365 * 24 * 3600,
            allow_reusable: true,
            ..rules()
        };
        let t = sign(
            &sk,
            claims(serde_json::json!({"exp": now + 9 * 365 * 24 * 3600})),
        );
        for _ in 0..2 {
            assert!(verify_admin_token(&t, &[pk], &long, &seen, now).is_ok());
        }
    }
}
