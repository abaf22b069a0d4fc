//! The owner's admin client: Ed25519 admin keys, short-lived EdDSA admin
//! tokens, and the admin endpoints of the KBS (resources, policies,
//! reference values, audit log).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::error::{ClientError, Result};
use crate::http::{ClientConfig, Http};
use crate::protocol::ResourcePath;

/// Lifetime of the admin tokens this client mints for each call.
pub const ADMIN_TOKEN_TTL_SECS: u64 = 120;

/// An Ed25519 admin key (`veil kbs admin-keygen`).
pub struct AdminKey(SigningKey);

impl AdminKey {
    /// A fresh key.
    pub fn generate() -> Self {
        AdminKey(SigningKey::generate(&mut OsRng))
    }

    /// Load a PKCS#8 PEM private key.
    pub fn from_pem(pem: &str) -> Result<Self> {
        SigningKey::from_pkcs8_pem(pem).map(AdminKey).map_err(|e| {
            ClientError::Config(format!(
                "admin key is not an Ed25519 PKCS#8 PEM private key: {e}"
            ))
        })
    }

    /// PKCS#8 PEM of the private key.
    pub fn to_pem(&self) -> Result<Zeroizing<String>> {
        self.0
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| ClientError::Config(format!("encoding admin key: {e}")))
    }

    /// SPKI PEM of the public key (what the KBS is configured with).
    pub fn public_pem(&self) -> Result<String> {
        self.0
            .verifying_key()
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| ClientError::Config(format!("encoding admin public key: {e}")))
    }

    /// A signed single-use admin token for veil's default audience
    /// ([`DEFAULT_ADMIN_AUDIENCE`]), valid for `ttl_secs`.
    pub fn token(&self, ttl_secs: u64) -> String {
        self.token_for(DEFAULT_ADMIN_AUDIENCE, ttl_secs)
    }

    /// A signed single-use admin token (fresh `jti`) for the KBS whose
    /// admin audience is `audience`, valid for `ttl_secs`.
    pub fn token_for(&self, audience: &str, ttl_secs: u64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut jti = [0u8; 16];
        OsRng.fill_bytes(&mut jti);
        let header = r#"{"alg":"EdDSA","typ":"JWT"}"#;
        let claims = serde_json::json!({
            "iss": "veil-admin", "sub": "admin", "aud": [audience], "role": "admin",
            "iat": now, "exp": now + ttl_secs, "jti": hex::encode(jti),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self.0.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }
}

/// Parse an admin public key (SPKI PEM).
pub fn parse_admin_public_key(pem: &str) -> Result<VerifyingKey> {
    VerifyingKey::from_public_key_pem(pem).map_err(|e| {
        ClientError::Config(format!("admin public key is not an Ed25519 SPKI PEM: {e}"))
    })
}

/// The admin audience a veil KBS expects unless configured otherwise
/// (`ServerConfig::admin_audience`).
pub const DEFAULT_ADMIN_AUDIENCE: &str = "veil-kbs";

/// Admin API client.
pub struct AdminClient {
    http: Http,
    key: AdminKey,
    audience: String,
}

/// Where veil's KBS lists what it supports beyond the Trustee protocol.
pub const CAPABILITIES_PATH: &str = "/kbs/v0/veil-capabilities";

impl AdminClient {
    /// A client signing its calls with `key`.
    pub fn new(config: &ClientConfig, key: AdminKey) -> Result<Self> {
        Ok(AdminClient {
            http: Http::new(config)?,
            key,
            audience: DEFAULT_ADMIN_AUDIENCE.to_string(),
        })
    }

    /// Address tokens to a KBS configured with another admin audience.
    pub fn with_audience(mut self, audience: &str) -> Self {
        self.audience = audience.to_string();
        self
    }

    fn call(
        &self,
        what: &str,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<Vec<u8>> {
        let auth = format!(
            "Bearer {}",
            self.key.token_for(&self.audience, ADMIN_TOKEN_TTL_SECS)
        );
        let resp = self
            .http
            .send(method, path, &[("authorization", &auth)], body)?
            .ok_or_refused(what)?;
        Ok(resp.body)
    }

    fn call_json(
        &self,
        what: &str,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<serde_json::Value> {
        let bytes = self.call(what, method, path, body)?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            what: what.into(),
            reason: format!("response JSON: {e}"),
        })
    }

    /// Store (or replace) a resource. Returns once the KBS has it durably.
    pub fn put_resource(&self, path: &ResourcePath, value: &[u8]) -> Result<()> {
        self.call(
            &format!("put resource {path}"),
            "POST",
            &format!("/kbs/v0/resource/{path}"),
            Some(("application/octet-stream", value)),
        )
        .map(|_| ())
    }

    /// Delete a resource.
    pub fn delete_resource(&self, path: &ResourcePath) -> Result<()> {
        self.call(
            &format!("delete resource {path}"),
            "DELETE",
            &format!("/kbs/v0/resource/{path}"),
            None,
        )
        .map(|_| ())
    }

    /// Metadata of a resource (never its value: secrets leave the KBS only
    /// encrypted to an attested TEE).
    pub fn resource_info(&self, path: &ResourcePath) -> Result<serde_json::Value> {
        self.call_json(
            &format!("resource info {path}"),
            "GET",
            &format!("/kbs/v0/admin/resource/{path}"),
            None,
        )
    }

    /// All resource paths with metadata.
    pub fn list_resources(&self) -> Result<serde_json::Value> {
        self.call_json("list resources", "GET", "/kbs/v0/admin/resource", None)
    }

    /// Set the resource policy for a scope: `None` = every resource,
    /// `repo`, `repo/type` or `repo/type/tag`.
    pub fn set_resource_policy(&self, scope: Option<&str>, rego: &str) -> Result<()> {
        let mut body = serde_json::json!({"policy": URL_SAFE_NO_PAD.encode(rego)});
        if let Some(s) = scope {
            body["scope"] = s.into();
        }
        self.call(
            "set resource policy",
            "POST",
            "/kbs/v0/resource-policy",
            Some(("application/json", body.to_string().as_bytes())),
        )
        .map(|_| ())
    }

    /// Whether the KBS keeps one resource policy per scope (veil's KBS
    /// says so at `GET /kbs/v0/veil-capabilities`); a KBS without that
    /// endpoint (Trustee's answers 404) has one global resource policy.
    pub fn supports_policy_scopes(&self) -> Result<bool> {
        let resp = self.http.send("GET", CAPABILITIES_PATH, &[], None)?;
        if resp.status == 404 {
            return Ok(false);
        }
        let body = resp.ok_or_refused("capabilities")?.body;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| ClientError::Protocol {
                what: "capabilities".into(),
                reason: format!("response JSON: {e}"),
            })?;
        Ok(v["resource_policy_scopes"] == true)
    }

    /// All resource policies.
    pub fn get_resource_policies(&self) -> Result<serde_json::Value> {
        self.call_json(
            "get resource policies",
            "GET",
            "/kbs/v0/resource-policy",
            None,
        )
    }

    /// Set the attestation (appraisal) policy.
    pub fn set_attestation_policy(&self, rego: &str) -> Result<()> {
        let body = serde_json::json!({"type": "rego", "policy_id": "default_cpu", "policy": URL_SAFE_NO_PAD.encode(rego)});
        self.call(
            "set attestation policy",
            "POST",
            "/kbs/v0/attestation-policy",
            Some(("application/json", body.to_string().as_bytes())),
        )
        .map(|_| ())
    }

    /// The attestation policy in force.
    pub fn get_attestation_policy(&self) -> Result<serde_json::Value> {
        self.call_json(
            "get attestation policy",
            "GET",
            "/kbs/v0/attestation-policy",
            None,
        )
    }

    /// Set the reference values named `name` (RVPS `sample` message).
    pub fn set_reference_value(&self, name: &str, values: &[serde_json::Value]) -> Result<()> {
        let payload = serde_json::json!({ name: values });
        let msg = serde_json::json!({"version": "0.1.0", "type": "sample", "payload": STANDARD.encode(payload.to_string())});
        self.call(
            "set reference value",
            "POST",
            "/kbs/v0/reference-value",
            Some(("application/json", msg.to_string().as_bytes())),
        )
        .map(|_| ())
    }

    /// One reference value set.
    pub fn get_reference_value(&self, name: &str) -> Result<serde_json::Value> {
        self.call_json(
            "get reference value",
            "GET",
            &format!("/kbs/v0/reference-value/{name}"),
            None,
        )
    }

    /// All reference values.
    pub fn list_reference_values(&self) -> Result<serde_json::Value> {
        self.call_json(
            "list reference values",
            "GET",
            "/kbs/v0/reference-value",
            None,
        )
    }

    /// The newest audit records (at most `limit`).
    pub fn audit(&self, limit: u32) -> Result<serde_json::Value> {
        self.call_json(
            "audit",
            "GET",
            &format!("/kbs/v0/audit?limit={limit}"),
            None,
        )
    }
}
