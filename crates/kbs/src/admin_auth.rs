//! Admin authentication: `Authorization: Bearer <JWT>` signed with EdDSA
//! (Ed25519) by one of the configured admin public keys, with a `role`
//! claim of `admin` and a bounded lifetime.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};

/// Clock skew tolerated on `iat` / `exp`.
pub const LEEWAY_SECS: u64 = 60;
/// Longest admin token lifetime accepted (`exp - iat`).
pub const MAX_LIFETIME_SECS: u64 = 24 * 3600;

/// Verify an admin token against the configured keys. Returns the subject.
pub fn verify_admin_token(token: &str, keys: &[VerifyingKey], now: u64) -> Result<String, String> {
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
    if exp.saturating_sub(iat) > MAX_LIFETIME_SECS {
        return Err(format!(
            "admin token lifetime {}s exceeds {MAX_LIFETIME_SECS}s",
            exp.saturating_sub(iat)
        ));
    }
    let role = claims.get("role").and_then(|v| v.as_str()).unwrap_or("");
    if role != "admin" {
        return Err(format!("admin token role must be \"admin\", got {role:?}"));
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
    use veil_kbs_client::admin::AdminKey;

    #[test]
    fn accepts_own_keys_only() {
        let k = AdminKey::generate();
        let pk = veil_kbs_client::admin::parse_admin_public_key(&k.public_pem().unwrap()).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(
            verify_admin_token(&k.token(60), &[pk], now).unwrap(),
            "admin"
        );
        let other = AdminKey::generate();
        assert!(
            verify_admin_token(&other.token(60), &[pk], now)
                .unwrap_err()
                .contains("does not verify")
        );
        assert!(
            verify_admin_token(&k.token(60), &[pk], now + 1000)
                .unwrap_err()
                .contains("expired")
        );
        assert!(verify_admin_token(&k.token(60), &[], now).is_err());
        assert!(verify_admin_token("x.y.z", &[pk], now).is_err());
    }
}
