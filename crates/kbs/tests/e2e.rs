//! End to end over real HTTPS on 127.0.0.1: sim evidence → EAR token →
//! resource decrypted, for EC and RSA TEE keys, checked with an independent
//! JOSE implementation (josekit); and every refusal the protocol defines.

mod common;

use std::time::Duration;

use common::{Options, assert_refused, start};
use veil_kbs::policy::templates;
use veil_kbs::simguest::SimGuest;
use veil_kbs_client::protocol::TeePubKey;
use veil_kbs_client::{KeyType, ResourcePath, TeeKeyPair};

fn path(s: &str) -> ResourcePath {
    ResourcePath::parse(s).unwrap()
}

fn attestation_body(
    guest: &SimGuest,
    sent_key: &TeePubKey,
    sent_nonce: &str,
    bound_key: &TeePubKey,
    bound_nonce: &str,
) -> String {
    let rd = veil_kbs_client::binding::report_data(bound_nonce, bound_key, "");
    let mut att = serde_json::json!({
        "runtime-data": {"nonce": sent_nonce, "tee-pubkey": sent_key},
        "tee-evidence": {"primary_evidence": guest.evidence_for(&rd).unwrap(), "additional_evidence": ""},
    });
    if let Some(body) = &guest.init_data {
        att["init-data"] = serde_json::json!({"format": "toml", "body": body});
    }
    att.to_string()
}

/// Decrypt a JWE with josekit (OpenSSL-backed, not our code).
fn josekit_decrypt(jwe_json: &str, kp: &TeeKeyPair, key: KeyType) -> Vec<u8> {
    let pem = kp.to_pkcs8_pem().unwrap();
    let (payload, header) = match key {
        KeyType::EcP256 | KeyType::EcP521 => {
            let d = josekit::jwe::ECDH_ES_A256KW
                .decrypter_from_pem(pem.as_bytes())
                .unwrap();
            josekit::jwe::deserialize_json(jwe_json, &d).unwrap()
        }
        _ => {
            let d = josekit::jwe::RSA_OAEP_256
                .decrypter_from_pem(pem.as_bytes())
                .unwrap();
            josekit::jwe::deserialize_json(jwe_json, &d).unwrap()
        }
    };
    assert_eq!(header.content_encryption(), Some("A256GCM"));
    payload
}

fn full_flow(key: KeyType) {
    let f = start(Options::default());
    let secret = format!("secret for {key:?}: {}", hex::encode(rand_bytes()));
    f.admin
        .put_resource(&path("app/key/one"), secret.as_bytes())
        .unwrap();
    f.admin
        .set_resource_policy(Some("app"), templates::ALLOW_ALL)
        .unwrap();

    // Our client: attest, fetch, decrypt.
    let mut client = f.client(key);
    assert_eq!(
        client
            .get_resource(&path("app/key/one"))
            .unwrap()
            .as_slice(),
        secret.as_bytes()
    );

    // Independent decryption of the same kind of response with josekit.
    let token = client.token().unwrap().token;
    let auth = format!("Bearer {token}");
    let r = f.get("/kbs/v0/resource/app/key/one", &[("authorization", &auth)]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let jwe = String::from_utf8(r.body).unwrap();
    assert_eq!(josekit_decrypt(&jwe, client.key(), key), secret.as_bytes());

    // The token verifies with josekit against the published JWKS.
    let jwks: serde_json::Value = serde_json::from_slice(&f.get("/kbs/v0/jwks", &[]).body).unwrap();
    let jwk = josekit::jwk::Jwk::from_map(jwks["keys"][0].as_object().unwrap().clone()).unwrap();
    let verifier = josekit::jws::ES256.verifier_from_jwk(&jwk).unwrap();
    let (claims, _) = josekit::jwt::decode_with_verifier(&token, &verifier).unwrap();
    let ae = &claims.claim("submods").unwrap()["cpu0"]["ear.veraison.annotated-evidence"];
    assert_eq!(ae["tee"], "sim");
    assert_eq!(ae["sim"]["hardware_backed"], false);
    assert_eq!(ae["sim"]["measurement"], hex::encode(common::MEASUREMENT));
    assert_eq!(
        serde_json::to_value(client.key().public_jwk()).unwrap(),
        ae["runtime_data_claims"]["tee-pubkey"]
    );
    // Sim is not hardware: the default appraisal marks it contraindicated.
    assert_eq!(
        claims.claim("submods").unwrap()["cpu0"]["ear.status"],
        "contraindicated"
    );
}

fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    b
}

#[test]
fn sim_to_token_to_resource_ec_p256() {
    full_flow(KeyType::EcP256);
}

#[test]
fn sim_to_token_to_resource_ec_p521() {
    full_flow(KeyType::EcP521);
}

#[test]
fn sim_to_token_to_resource_rsa() {
    full_flow(KeyType::Rsa2048);
}

/// The claims of a token (not verified: the server checks them).
fn token_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn token_of(r: &veil_kbs_client::http::HttpResponse) -> String {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["token"].as_str().unwrap().to_string()
}

#[test]
fn cookie_path_and_reattest_issues_a_fresh_token() {
    let f = start(Options {
        token_ttl: Duration::from_secs(2),
        ..Options::default()
    });
    f.admin
        .put_resource(&path("r/t/x"), b"cookie secret")
        .unwrap();
    f.admin
        .set_resource_policy(None, templates::ALLOW_ALL)
        .unwrap();
    let guest = f.guest();
    let kp = TeeKeyPair::generate(KeyType::EcP256).unwrap();
    let jwk = kp.public_jwk();
    let (cookie, nonce) = f.auth("sim");
    let body = attestation_body(&guest, &jwk, &nonce, &jwk, &nonce);
    let r1 = f.post_json("/kbs/v0/attest", Some(&cookie), &body);
    let t1 = token_of(&r1);
    assert!(r1.set_cookies[0].starts_with(&format!("kbs-session-id={cookie}; Expires=")));
    let c = format!("kbs-session-id={cookie}");
    let r = f.get("/kbs/v0/resource/r/t/x", &[("cookie", &c)]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let jwe: veil_kbs_client::protocol::FlattenedJwe = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(kp.decrypt(&jwe).unwrap().as_slice(), b"cookie secret");

    // The token expires; the session (5 minutes) does not.
    std::thread::sleep(Duration::from_millis(2100));
    let old = format!("Bearer {t1}");
    assert_refused(
        &f.get("/kbs/v0/resource/r/t/x", &[("authorization", &old)]),
        401,
        "TokenVerifierError",
        "expired",
    );
    assert_refused(
        &f.get("/kbs/v0/resource/r/t/x", &[("cookie", &c)]),
        401,
        "TokenVerifierError",
        "expired",
    );

    // Re-attesting on the same cookie, against the same challenge, gives a
    // fresh token: new jti, later iat and exp, and it verifies.
    let r2 = f.post_json("/kbs/v0/attest", Some(&cookie), &body);
    let t2 = token_of(&r2);
    assert_ne!(t1, t2, "a re-attestation returns a fresh token");
    let (c1, c2) = (token_claims(&t1), token_claims(&t2));
    assert_ne!(c1["jti"], c2["jti"]);
    assert!(c2["iat"].as_u64() > c1["iat"].as_u64());
    assert!(c2["exp"].as_u64() > c1["exp"].as_u64());
    let new = format!("Bearer {t2}");
    assert_eq!(
        f.get("/kbs/v0/resource/r/t/x", &[("authorization", &new)])
            .status,
        200
    );
    // The session now carries the fresh token.
    assert_eq!(
        f.get("/kbs/v0/resource/r/t/x", &[("cookie", &c)]).status,
        200
    );

    // A re-attestation whose evidence does not bind the session's nonce is
    // refused and leaves the session's token in place.
    let foreign = attestation_body(&guest, &jwk, &nonce, &jwk, "b3RoZXIgbm9uY2U=");
    assert_refused(
        &f.post_json("/kbs/v0/attest", Some(&cookie), &foreign),
        401,
        "AttestationError",
        "report_data mismatch",
    );
    let (_, other_nonce) = f.auth("sim");
    assert_refused(
        &f.post_json(
            "/kbs/v0/attest",
            Some(&cookie),
            &attestation_body(&guest, &jwk, &other_nonce, &jwk, &other_nonce),
        ),
        401,
        "AttestationError",
        "replayed or foreign nonce",
    );
    assert_eq!(
        f.get("/kbs/v0/resource/r/t/x", &[("cookie", &c)]).status,
        200
    );

    let audit = f.admin.audit(100).unwrap();
    let reasons: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "attest")
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("re-attested, token issued")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("re-attestation refused, the session keeps its earlier token")),
        "{reasons:?}"
    );
}

#[test]
fn init_data_binding() {
    let f = start(Options::default());
    f.admin.put_resource(&path("r/t/x"), b"v").unwrap();
    let toml = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"policy.rego\" = \"package agent_policy\"\n";
    let digest = hex::encode(veil_kbs::simguest::init_data_digest(toml).unwrap());
    f.admin
        .set_resource_policy(None, &templates::init_data_digest(&digest).unwrap())
        .unwrap();
    // Matching init-data: released (policy checks the digest).
    let mut g = f.guest();
    g.init_data = Some(toml.to_string());
    assert_eq!(
        f.client_with(g)
            .get_resource(&path("r/t/x"))
            .unwrap()
            .as_slice(),
        b"v"
    );
    // The platform recorded another digest than the init-data sent: refused.
    let mut g = f.guest();
    g.init_data = Some(toml.to_string());
    g.launch_init_data_digest = Some(vec![0x55; 48]);
    let kp = TeeKeyPair::generate(KeyType::EcP256).unwrap();
    let (cookie, nonce) = f.auth("sim");
    let body = attestation_body(&g, &kp.public_jwk(), &nonce, &kp.public_jwk(), &nonce);
    let r = f.post_json("/kbs/v0/attest", Some(&cookie), &body);
    assert_refused(
        &r,
        401,
        "AttestationError",
        "init_data mismatch (init-data digest)",
    );
    // No init-data at all: the policy (digest template) denies.
    let e = f
        .client(KeyType::EcP256)
        .get_resource(&path("r/t/x"))
        .unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert!(e.to_string().contains("does not allow release"), "{e}");
}

#[test]
fn handshake_refusals() {
    let f = start(Options {
        session_timeout: Duration::from_secs(1),
        ..Options::default()
    });
    let guest = f.guest();
    let kp = TeeKeyPair::generate(KeyType::EcP256).unwrap();
    let jwk = kp.public_jwk();

    // Wrong protocol version.
    let r = f.post_json(
        "/kbs/v0/auth",
        None,
        r#"{"version":"0.3.0","tee":"sim","extra-params":""}"#,
    );
    assert_refused(
        &r,
        401,
        "AttestationError",
        "KBS Client Protocol Version Mismatch: expect =0.4.0",
    );
    // Unknown TEE, and a known one this KBS cannot verify.
    let r = f.post_json(
        "/kbs/v0/auth",
        None,
        r#"{"version":"0.4.0","tee":"quantum","extra-params":""}"#,
    );
    assert_refused(&r, 401, "AttestationError", "unknown TEE \"quantum\"");
    let r = f.post_json(
        "/kbs/v0/auth",
        None,
        r#"{"version":"0.4.0","tee":"cca","extra-params":""}"#,
    );
    assert_refused(&r, 401, "AttestationError", "not supported");
    // Sample evidence without --insecure-allow-sample.
    let r = f.post_json(
        "/kbs/v0/auth",
        None,
        r#"{"version":"0.4.0","tee":"sample","extra-params":""}"#,
    );
    assert_refused(&r, 401, "AttestationError", "--insecure-allow-sample");
    // Malformed JSON.
    let r = f.post_json("/kbs/v0/auth", None, r#"{"version":"0.4.0","tee":"#);
    assert_refused(&r, 401, "SerdeError", "not valid JSON");
    let r = f.post_json(
        "/kbs/v0/auth",
        None,
        &format!("{}1{}", "[".repeat(100), "]".repeat(100)),
    );
    assert_refused(&r, 401, "SerdeError", "nested deeper");

    // Missing and bad cookie.
    let (_, nonce) = f.auth("sim");
    let body = attestation_body(&guest, &jwk, &nonce, &jwk, &nonce);
    assert_refused(
        &f.post_json("/kbs/v0/attest", None, &body),
        401,
        "AttestationError",
        "no kbs-session-id cookie",
    );
    assert_refused(
        &f.post_json(
            "/kbs/v0/attest",
            Some("00000000000000000000000000000000"),
            &body,
        ),
        401,
        "AttestationError",
        "unknown kbs-session-id",
    );

    // Malformed attestation body consumes the session (single-use nonce).
    let (cookie, _) = f.auth("sim");
    assert_refused(
        &f.post_json("/kbs/v0/attest", Some(&cookie), "{\"runtime-data\": 5}"),
        401,
        "SerdeError",
        "attestation",
    );
    assert_refused(
        &f.post_json("/kbs/v0/attest", Some(&cookie), &body),
        401,
        "AttestationError",
        "already used",
    );

    // report_data bound to another key than the one sent.
    let other = TeeKeyPair::generate(KeyType::EcP256).unwrap().public_jwk();
    let (cookie, nonce) = f.auth("sim");
    let r = f.post_json(
        "/kbs/v0/attest",
        Some(&cookie),
        &attestation_body(&guest, &jwk, &nonce, &other, &nonce),
    );
    assert_refused(&r, 401, "AttestationError", "report_data mismatch");
    // report_data bound to another nonce.
    let (cookie, nonce) = f.auth("sim");
    let r = f.post_json(
        "/kbs/v0/attest",
        Some(&cookie),
        &attestation_body(&guest, &jwk, &nonce, &jwk, "b3RoZXIgbm9uY2U="),
    );
    assert_refused(&r, 401, "AttestationError", "report_data mismatch");

    // Replayed nonce: a complete, valid attestation from session A sent on session B.
    let (cookie_a, nonce_a) = f.auth("sim");
    let body_a = attestation_body(&guest, &jwk, &nonce_a, &jwk, &nonce_a);
    assert_eq!(
        f.post_json("/kbs/v0/attest", Some(&cookie_a), &body_a)
            .status,
        200
    );
    let (cookie_b, _) = f.auth("sim");
    let r = f.post_json("/kbs/v0/attest", Some(&cookie_b), &body_a);
    assert_refused(&r, 401, "AttestationError", "replayed or foreign nonce");

    // Expired session.
    let (cookie, nonce) = f.auth("sim");
    std::thread::sleep(Duration::from_millis(2100));
    let r = f.post_json(
        "/kbs/v0/attest",
        Some(&cookie),
        &attestation_body(&guest, &jwk, &nonce, &jwk, &nonce),
    );
    assert_refused(&r, 401, "AttestationError", "expired");

    // The audit log recorded the refusals with their reasons.
    let audit = f.admin.audit(100).unwrap();
    let reasons: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "attest" && r["decision"] == "deny")
        .map(|r| r["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("report_data mismatch")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("replayed")),
        "{reasons:?}"
    );
}

#[test]
fn sim_refused_without_sim_root_and_without_dev() {
    let f = start(Options {
        sim_root: false,
        ..Options::default()
    });
    let r = f.post_json(
        "/kbs/v0/auth",
        None,
        r#"{"version":"0.4.0","tee":"sim","extra-params":""}"#,
    );
    assert_refused(&r, 401, "AttestationError", "without --sim-root");

    let f = start(Options {
        dev: false,
        ..Options::default()
    });
    f.admin.put_resource(&path("r/t/x"), b"v").unwrap();
    f.admin
        .set_resource_policy(None, templates::ALLOW_ALL)
        .unwrap();
    let e = f
        .client(KeyType::EcP256)
        .get_resource(&path("r/t/x"))
        .unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert!(
        e.to_string().contains("PolicyDeny") && e.to_string().contains("--dev"),
        "{e}"
    );
}

#[test]
fn sample_evidence_with_flag() {
    let f = start(Options {
        allow_sample: true,
        ..Options::default()
    });
    let kp = TeeKeyPair::generate(KeyType::EcP256).unwrap();
    let jwk = kp.public_jwk();
    let (cookie, nonce) = f.auth("sample");
    let digest = veil_kbs_client::binding::binding_digest(&nonce, &jwk, "");
    use base64::Engine;
    let att = serde_json::json!({
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {"primary_evidence": {"svn": "1", "report_data": base64::engine::general_purpose::STANDARD.encode(digest)}, "additional_evidence": ""},
    });
    let r = f.post_json("/kbs/v0/attest", Some(&cookie), &att.to_string());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Wrong digest: refused.
    let (cookie, nonce2) = f.auth("sample");
    let att = serde_json::json!({
        "runtime-data": {"nonce": nonce2, "tee-pubkey": jwk},
        "tee-evidence": {"primary_evidence": {"svn": "1", "report_data": base64::engine::general_purpose::STANDARD.encode(digest)}, "additional_evidence": ""},
    });
    assert_refused(
        &f.post_json("/kbs/v0/attest", Some(&cookie), &att.to_string()),
        401,
        "AttestationError",
        "report_data mismatch",
    );
}

#[test]
fn resource_refusals() {
    let f = start(Options::default());
    f.admin.put_resource(&path("r/t/x"), b"v").unwrap();
    let mut client = f.client(KeyType::EcP256);

    // Default: no policy → deny.
    let e = client.get_resource(&path("r/t/x")).unwrap_err();
    assert!(
        e.to_string().contains("PolicyDeny") && e.to_string().contains("default is to deny"),
        "{e}"
    );
    // A scoped deny overrides a global allow.
    f.admin
        .set_resource_policy(None, templates::ALLOW_ALL)
        .unwrap();
    f.admin
        .set_resource_policy(Some("r/t"), templates::DENY_ALL)
        .unwrap();
    let e = client.get_resource(&path("r/t/x")).unwrap_err();
    assert!(
        e.to_string().contains("scope \"r/t\" does not allow"),
        "{e}"
    );
    f.admin
        .set_resource_policy(Some("r/t"), templates::ALLOW_ALL)
        .unwrap();
    assert_eq!(
        client.get_resource(&path("r/t/x")).unwrap().as_slice(),
        b"v"
    );

    // Missing resource: 401 like Trustee.
    let token = client.token().unwrap().token;
    let auth = format!("Bearer {token}");
    assert_refused(
        &f.get("/kbs/v0/resource/r/t/missing", &[("authorization", &auth)]),
        401,
        "PluginInternalError",
        "not found",
    );
    // No token, bad token.
    assert_refused(
        &f.get("/kbs/v0/resource/r/t/x", &[]),
        401,
        "TokenNotFound",
        "Bearer",
    );
    let bad = format!("Bearer {}x", token);
    assert_refused(
        &f.get("/kbs/v0/resource/r/t/x", &[("authorization", &bad)]),
        401,
        "TokenVerifierError",
        "signature",
    );

    // Invalid paths: 404.
    for p in [
        "/kbs/v0/resource/r/../x",
        "/kbs/v0/resource/r/t/x/y",
        "/kbs/v0/resource/r/t",
        "/kbs/v0/resource/%2e%2e/t/x",
    ] {
        assert_refused(
            &f.get(p, &[("authorization", &auth)]),
            404,
            "InvalidRequestPath",
            "invalid resource path",
        );
    }
    assert_refused(
        &f.get("/kbs/v0/nosuchplugin/a", &[]),
        404,
        "PluginNotFound",
        "nosuchplugin",
    );
    assert_refused(
        &f.get("/elsewhere", &[]),
        404,
        "InvalidRequestPath",
        "/kbs/v0/",
    );
}

#[test]
fn admin_refusals_store_nothing() {
    let f = start(Options {
        max_body: 1024,
        ..Options::default()
    });
    // Unauthenticated and wrongly-signed admin calls.
    let r = f
        .http
        .send(
            "POST",
            "/kbs/v0/resource/a/b/c",
            &[],
            Some(("application/octet-stream", b"x")),
        )
        .unwrap();
    assert_refused(&r, 401, "AdminAuthAccess", "no `Authorization: Bearer");
    let stranger = veil_kbs_client::admin::AdminKey::generate();
    let auth = format!("Bearer {}", stranger.token(60));
    let r = f
        .http
        .send(
            "POST",
            "/kbs/v0/resource/a/b/c",
            &[("authorization", &auth)],
            Some(("application/octet-stream", b"x")),
        )
        .unwrap();
    assert_refused(&r, 401, "AdminAuthAccess", "does not verify");
    let r = f
        .http
        .send(
            "POST",
            "/kbs/v0/resource-policy",
            &[("authorization", &auth)],
            Some(("application/json", b"{}")),
        )
        .unwrap();
    assert_refused(&r, 401, "AdminAuthAccess", "does not verify");
    // Oversized body, bad paths and bad policies, with valid credentials.
    let e = f
        .admin
        .put_resource(&path("a/b/c"), &vec![7u8; 4096])
        .unwrap_err();
    assert_eq!(e.status(), Some(413), "{e}");
    let e = f
        .admin
        .set_resource_policy(None, "package policy\nallow { true }")
        .unwrap_err();
    assert!(e.to_string().contains("PolicyEngineError"), "{e}");
    let e = f
        .admin
        .set_resource_policy(Some("a/../b"), templates::ALLOW_ALL)
        .unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert_eq!(f.admin.list_resources().unwrap(), serde_json::json!([]));
    assert_eq!(
        f.admin.get_resource_policies().unwrap(),
        serde_json::json!([])
    );
    // Oversized /auth body.
    let r = f.post_json("/kbs/v0/auth", None, &" ".repeat(2048));
    assert_refused(&r, 413, "PayloadTooLarge", "limit");
}

#[test]
fn secrets_are_sealed_on_disk_and_survive_restart() {
    let mut f = start(Options::default());
    let marker = format!("PLAINTEXT-MARKER-{}", hex::encode(rand_bytes()));
    f.admin
        .put_resource(&path("r/t/x"), marker.as_bytes())
        .unwrap();
    f.admin
        .set_resource_policy(None, templates::ALLOW_ALL)
        .unwrap();
    let data_dir = f.dir.path().join("data");
    let mut found = Vec::new();
    for e in std::fs::read_dir(&data_dir).unwrap() {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        if bytes.windows(marker.len()).any(|w| w == marker.as_bytes()) {
            found.push(p);
        }
    }
    assert!(found.is_empty(), "plaintext found in {found:?}");
    // Restart on the same data dir: the resource and the token key persist.
    let kid = f.server.as_ref().unwrap().state.signer.kid().to_string();
    f.server.take().unwrap().stop();
    let mut cfg = veil_kbs::ServerConfig::new(
        data_dir.clone(),
        veil_kbs::Kek::from_bytes(f.kek_hex.as_bytes()).unwrap(),
    );
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.sim_root = Some(
        veil_attest::sim::SimPlatformKey::from_pem(&f.platform_pem)
            .unwrap()
            .root(),
    );
    cfg.dev = true;
    let s = veil_kbs::spawn(cfg, 1).unwrap();
    assert_eq!(s.state.signer.kid(), kid);
    let mut ccfg = veil_kbs_client::ClientConfig::new(s.url());
    ccfg.allow_http = true;
    let mut c = veil_kbs_client::KbsClient::new(
        &ccfg,
        f.guest(),
        TeeKeyPair::generate(KeyType::EcP256).unwrap(),
    )
    .unwrap();
    assert_eq!(
        c.get_resource(&path("r/t/x")).unwrap().as_slice(),
        marker.as_bytes()
    );
    s.stop();
    // A wrong KEK refuses to start, naming both key ids.
    let mut cfg =
        veil_kbs::ServerConfig::new(data_dir, veil_kbs::Kek::from_bytes(&[9u8; 32]).unwrap());
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    let e = veil_kbs::spawn(cfg, 1).err().unwrap().to_string();
    assert!(e.contains("sealed under KEK id"), "{e}");
}

#[test]
fn metrics_healthz_and_reference_values() {
    let f = start(Options::default());
    assert_eq!(f.get("/healthz", &[]).status, 200);
    f.admin
        .set_reference_value(
            "measurement",
            &[serde_json::json!(hex::encode(common::MEASUREMENT))],
        )
        .unwrap();
    assert_eq!(
        f.admin.get_reference_value("measurement").unwrap(),
        serde_json::json!([hex::encode(common::MEASUREMENT)])
    );
    let tok = f.client(KeyType::EcP256).attest().unwrap();
    let claims = veil_kbs_client::token_claims(&tok.token).unwrap();
    assert_eq!(
        claims["submods"]["cpu0"]["ear.trustworthiness-vector"]["executables"],
        2
    );
    let m = String::from_utf8(f.get("/metrics", &[]).body).unwrap();
    assert!(m.contains("veil_kbs_attest_total{result=\"ok\"} 1"), "{m}");
}

/// Client text with control characters cannot forge audit lines or drive
/// the terminal of `veil kbs audit`: every free-text field of the stored
/// row shows the characters escaped.
#[test]
fn attest_body_cannot_forge_audit_lines() {
    const EVIL: &str = "\n2026-01-01 ALLOW forged\x1b[2J\u{202e}";
    let f = start(Options::default());
    let guest = f.guest();
    let jwk = TeeKeyPair::generate(KeyType::EcP256).unwrap().public_jwk();
    // A foreign nonce, echoed in the refusal.
    let (cookie, nonce) = f.auth("sim");
    let mut body: serde_json::Value =
        serde_json::from_str(&attestation_body(&guest, &jwk, &nonce, &jwk, &nonce)).unwrap();
    body["runtime-data"]["nonce"] = EVIL.into();
    assert_refused(
        &f.post_json("/kbs/v0/attest", Some(&cookie), &body.to_string()),
        401,
        "AttestationError",
        "foreign nonce",
    );
    // A key type the parser quotes verbatim in its error.
    let (cookie, nonce) = f.auth("sim");
    let mut body: serde_json::Value =
        serde_json::from_str(&attestation_body(&guest, &jwk, &nonce, &jwk, &nonce)).unwrap();
    body["runtime-data"]["tee-pubkey"] = serde_json::json!({"kty": EVIL});
    assert_refused(
        &f.post_json("/kbs/v0/attest", Some(&cookie), &body.to_string()),
        401,
        "SerdeError",
        "attestation",
    );

    let audit = f.admin.audit(100).unwrap();
    let denials: Vec<&serde_json::Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "attest" && r["decision"] == "deny")
        .collect();
    assert_eq!(denials.len(), 2, "{denials:?}");
    for row in denials {
        let text = row.to_string();
        let reason = row["reason"].as_str().unwrap();
        assert!(
            !reason.chars().any(veil_kbs::text::is_unsafe_char),
            "raw control character in {reason:?}"
        );
        assert!(
            !text.chars().any(veil_kbs::text::is_unsafe_char),
            "raw control character in {text}"
        );
        assert!(reason.contains("2026-01-01 ALLOW forged"), "{reason:?}");
        assert!(
            reason.contains("\\n2026-01-01 ALLOW forged\\x1b[2J\\u{202e}")
                || reason.contains("\\n2026-01-01 ALLOW forged\\u{1b}[2J\\u{202e}"),
            "the escapes are shown: {reason:?}"
        );
    }
}

/// Admin tokens are bound to this KBS's audience and single-use.
#[test]
fn admin_token_replay_and_foreign_audience_refused() {
    let f = start(Options::default());
    let key = veil_kbs_client::admin::AdminKey::from_pem(&f.admin_key_pem).unwrap();
    let auth = format!("Bearer {}", key.token(60));
    let list = |auth: &str| f.get("/kbs/v0/admin/resource", &[("authorization", auth)]);
    assert_eq!(list(&auth).status, 200);
    assert_refused(
        &list(&auth),
        401,
        "AdminAuthAccess",
        "already used (replay)",
    );
    let other = format!("Bearer {}", key.token_for("another-kbs", 60));
    assert_refused(
        &list(&other),
        401,
        "AdminAuthAccess",
        "audience must be \"veil-kbs\"",
    );
    let long = format!("Bearer {}", key.token(3600));
    assert_refused(&list(&long), 401, "AdminAuthAccess", "exceeds 600s");
    let foreign = veil_kbs_client::admin::AdminClient::new(&f.client_cfg, key)
        .unwrap()
        .with_audience("another-kbs");
    let e = foreign.list_resources().unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    // The default client sends the default audience.
    assert!(f.admin.list_resources().is_ok());
}
