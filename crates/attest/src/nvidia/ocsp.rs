//! Revocation of NVIDIA device and RIM signing certificates from OCSP
//! responses supplied as files (RFC 6960 basic responses; nothing here talks
//! to a responder).
//!
//! For each certificate below the root, one response must carry a
//! `SingleResponse` whose `CertID` names it (issuer name and key hashes with
//! SHA-1, SHA-256 or SHA-384, serial number); that response must be signed
//! (ECDSA P-384/SHA-384, as NVIDIA's responders sign) by the certificate's
//! issuer or by a responder certificate the issuer issued for
//! `id-kp-OCSPSigning`; it must be fresh at the verification time
//! (`thisUpdate` not in the future, `nextUpdate` not passed, or without
//! `nextUpdate` at most `max_age` old) and carry the expected nonce when one
//! is given; and the status must be `good`.

use const_oid::ObjectIdentifier;
use der::{Decode, Encode};
use p384::ecdsa::{Signature, VerifyingKey};
use sha2::{Digest, Sha256, Sha384};
use x509_cert::Certificate;
use x509_ocsp::{BasicOcspResponse, CertStatus, OcspResponse, OcspResponseStatus, ResponderId};

use super::certs;
use crate::dcap::format_time;
use crate::error::{Error, Result};

/// Largest OCSP response accepted (NVIDIA's are about 2 KiB).
pub const MAX_OCSP_BYTES: usize = 64 * 1024;
/// Clock skew tolerated on `thisUpdate`, seconds.
pub const SKEW_SECS: u64 = 300;

const OID_OCSP_BASIC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
const OID_KP_OCSP_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.9");
const OID_EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const OID_ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const OID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const OID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");

const WHAT: &str = "OCSP response";

/// When a response counts as fresh.
#[derive(Debug, Clone)]
pub struct Freshness {
    /// Verification time, Unix seconds.
    pub now_unix: u64,
    /// Oldest `thisUpdate` accepted for a response without `nextUpdate`, seconds.
    pub max_age_secs: u64,
    /// The nonce the OCSP request carried, when the caller sent one: the
    /// response must echo it.
    pub nonce: Option<Vec<u8>>,
}

/// A parsed OCSP basic response (signature not yet checked).
#[derive(Debug, Clone)]
pub struct Response {
    basic: BasicOcspResponse,
    /// Where it came from (file name), for messages.
    pub source: String,
}

impl Response {
    /// Parse a DER `OCSPResponse`: status `successful`, type
    /// `id-pkix-ocsp-basic`, at most [`MAX_OCSP_BYTES`].
    pub fn parse(der: &[u8], source: &str) -> Result<Self> {
        let malformed = |reason: String| Error::malformed(WHAT, format!("{source}: {reason}"));
        if der.len() > MAX_OCSP_BYTES {
            return Err(malformed(format!(
                "{} bytes, the limit is {MAX_OCSP_BYTES}",
                der.len()
            )));
        }
        let resp = OcspResponse::from_der(der).map_err(|e| malformed(e.to_string()))?;
        if resp.response_status != OcspResponseStatus::Successful {
            return Err(Error::mismatch(
                "nvidia.ocsp",
                format!("OCSP response {source} is not a successful response"),
                "successful",
                format!("{:?}", resp.response_status),
            ));
        }
        let bytes = resp
            .response_bytes
            .ok_or_else(|| malformed("successful but without responseBytes".into()))?;
        if bytes.response_type != OID_OCSP_BASIC {
            return Err(malformed(format!(
                "response type {} is not id-pkix-ocsp-basic",
                bytes.response_type
            )));
        }
        let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
            .map_err(|e| malformed(format!("BasicOCSPResponse: {e}")))?;
        Ok(Response {
            basic,
            source: source.to_string(),
        })
    }
}

fn hash_with(alg: &ObjectIdentifier, data: &[u8]) -> Option<Vec<u8>> {
    Some(match *alg {
        OID_SHA1 => sha1_digest(data),
        OID_SHA256 => Sha256::digest(data).to_vec(),
        OID_SHA384 => Sha384::digest(data).to_vec(),
        _ => return None,
    })
}

/// SHA-1 only identifies (CertID, ResponderID byKey), as RFC 6960 uses it;
/// it is never relied on for a signature.
fn sha1_digest(data: &[u8]) -> Vec<u8> {
    use sha1::Sha1;
    Sha1::digest(data).to_vec()
}

fn names_cert(id: &x509_ocsp::CertId, cert: &Certificate, issuer: &Certificate) -> Result<bool> {
    if id.serial_number != cert.tbs_certificate.serial_number {
        return Ok(false);
    }
    let name = issuer
        .tbs_certificate
        .subject
        .to_der()
        .map_err(|e| Error::malformed("NVIDIA certificate", e.to_string()))?;
    let key = issuer
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    let alg = &id.hash_algorithm.oid;
    Ok(
        hash_with(alg, &name).is_some_and(|h| h == id.issuer_name_hash.as_bytes())
            && hash_with(alg, key).is_some_and(|h| h == id.issuer_key_hash.as_bytes()),
    )
}

fn responder_is(id: &ResponderId, cert: &Certificate) -> bool {
    match id {
        ResponderId::ByName(name) => *name == cert.tbs_certificate.subject,
        ResponderId::ByKey(hash) => {
            let key = cert
                .tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes();
            sha1_digest(key) == hash.as_bytes()
        }
    }
}

fn has_ocsp_signing(cert: &Certificate) -> bool {
    cert.tbs_certificate
        .extensions
        .as_ref()
        .and_then(|exts| exts.iter().find(|e| e.extn_id == OID_EXT_KEY_USAGE))
        .and_then(|e| {
            x509_cert::ext::pkix::ExtendedKeyUsage::from_der(e.extn_value.as_bytes()).ok()
        })
        .is_some_and(|eku| eku.0.contains(&OID_KP_OCSP_SIGNING))
}

/// The key that must have signed `resp` about a certificate `issuer` issued:
/// the issuer's own, or a delegated responder's (issued by `issuer`, with
/// `id-kp-OCSPSigning`, valid now).
fn signer_key(
    check: &'static str,
    resp: &Response,
    issuer: &Certificate,
    now_unix: u64,
) -> Result<VerifyingKey> {
    let id = &resp.basic.tbs_response_data.responder_id;
    if responder_is(id, issuer) {
        return certs::p384_key(check, issuer);
    }
    let issuer_name = certs::subject_cn(issuer);
    let delegate = resp
        .basic
        .certs
        .iter()
        .flatten()
        .find(|c| responder_is(id, c))
        .ok_or_else(|| {
            Error::refused(
                check,
                format!(
                    "OCSP response {} is signed by neither {issuer_name:?} nor a responder certificate it carries",
                    resp.source
                ),
            )
        })?;
    certs::check_issued_by(check, delegate, issuer)?;
    certs::check_validity(check, delegate, now_unix)?;
    if !has_ocsp_signing(delegate) {
        return Err(Error::refused(
            check,
            format!(
                "OCSP responder certificate {:?} in {} lacks extended key usage id-kp-OCSPSigning",
                certs::subject_cn(delegate),
                resp.source
            ),
        ));
    }
    certs::p384_key(check, delegate)
}

fn check_signature(check: &'static str, resp: &Response, key: &VerifyingKey) -> Result<()> {
    if resp.basic.signature_algorithm.oid != OID_ECDSA_SHA384 {
        return Err(Error::mismatch(
            check,
            format!(
                "OCSP response {} uses an unsupported signature algorithm",
                resp.source
            ),
            "ecdsa-with-SHA384 (1.2.840.10045.4.3.3)",
            resp.basic.signature_algorithm.oid.to_string(),
        ));
    }
    let tbs = resp
        .basic
        .tbs_response_data
        .to_der()
        .map_err(|e| Error::malformed(WHAT, format!("{}: {e}", resp.source)))?;
    let ok = resp
        .basic
        .signature
        .as_bytes()
        .and_then(|der| Signature::from_der(der).ok())
        .is_some_and(|sig| crate::ecdsa::EcdsaKey::p384(key).verify_p384(&tbs, &sig));
    if !ok {
        return Err(Error::refused(
            check,
            format!(
                "the signature of OCSP response {} does not verify",
                resp.source
            ),
        ));
    }
    Ok(())
}

fn unix(t: &x509_ocsp::OcspGeneralizedTime) -> u64 {
    t.0.to_unix_duration().as_secs()
}

/// Check that `cert` (issued by `issuer`) is not revoked, with one of
/// `responses`. Refusals name `check`.
pub fn check_cert(
    check: &'static str,
    cert: &Certificate,
    issuer: &Certificate,
    responses: &[Response],
    fresh: &Freshness,
) -> Result<()> {
    let name = certs::subject_cn(cert);
    let serial = hex::encode(cert.tbs_certificate.serial_number.as_bytes());
    let mut found = None;
    for resp in responses {
        for single in &resp.basic.tbs_response_data.responses {
            if names_cert(&single.cert_id, cert, issuer)? {
                found = Some((resp, single));
                break;
            }
        }
        if found.is_some() {
            break;
        }
    }
    let Some((resp, single)) = found else {
        return Err(Error::refused(
            check,
            format!(
                "no OCSP response about certificate {name:?} (serial {serial}) among the {} given; \
                 fetch one from the responder in its authorityInfoAccess and pass it",
                responses.len()
            ),
        ));
    };
    let key = signer_key(check, resp, issuer, fresh.now_unix)?;
    check_signature(check, resp, &key)?;
    if let Some(want) = &fresh.nonce {
        let got = resp.basic.nonce().map(|n| n.0.as_bytes().to_vec());
        if got.as_deref() != Some(want.as_slice()) {
            return Err(Error::mismatch(
                check,
                format!(
                    "OCSP response {} does not carry the request's nonce",
                    resp.source
                ),
                hex::encode(want),
                got.map(hex::encode).unwrap_or_else(|| "no nonce".into()),
            ));
        }
    }
    let this_update = unix(&single.this_update);
    let now = fresh.now_unix;
    if this_update > now.saturating_add(SKEW_SECS) {
        return Err(Error::mismatch(
            check,
            format!(
                "OCSP response {} about {name:?} is from the future",
                resp.source
            ),
            format!("thisUpdate <= {}", format_time(now)),
            format_time(this_update),
        ));
    }
    match &single.next_update {
        Some(next) if now > unix(next) => {
            return Err(Error::mismatch(
                check,
                format!(
                    "OCSP response {} about {name:?} is stale (nextUpdate passed)",
                    resp.source
                ),
                format!("nextUpdate >= {}", format_time(now)),
                format_time(unix(next)),
            ));
        }
        None if now.saturating_sub(this_update) > fresh.max_age_secs => {
            return Err(Error::mismatch(
                check,
                format!(
                    "OCSP response {} about {name:?} has no nextUpdate and is older than {} s",
                    resp.source, fresh.max_age_secs
                ),
                format!(
                    "thisUpdate >= {}",
                    format_time(now.saturating_sub(fresh.max_age_secs))
                ),
                format_time(this_update),
            ));
        }
        _ => {}
    }
    match &single.cert_status {
        CertStatus::Good(_) => Ok(()),
        CertStatus::Revoked(info) => Err(Error::mismatch(
            check,
            format!(
                "certificate {name:?} (serial {serial}) is revoked{}",
                info.revocation_reason
                    .map(|r| format!(" ({r:?})"))
                    .unwrap_or_default()
            ),
            "good",
            format!("revoked at {}", format_time(unix(&info.revocation_time))),
        )),
        CertStatus::Unknown(_) => Err(Error::mismatch(
            check,
            format!("the OCSP responder does not know certificate {name:?} (serial {serial})"),
            "good",
            "unknown",
        )),
    }
}

/// Check every certificate of `chain` (leaf first, root excluded), each
/// issued by the next and the last by `root`.
pub fn check_chain(
    check: &'static str,
    chain: &[Certificate],
    root: &Certificate,
    responses: &[Response],
    fresh: &Freshness,
) -> Result<()> {
    for (i, cert) in chain.iter().enumerate() {
        let issuer = chain.get(i + 1).unwrap_or(root);
        check_cert(check, cert, issuer, responses, fresh)?;
    }
    Ok(())
}
