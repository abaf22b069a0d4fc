//! NVIDIA certificates: the pinned device identity and RIM signing roots,
//! ECDSA P-384 chain verification that names the certificate that failed,
//! and the firmware ID carried by a device leaf.
//!
//! A Hopper chain, leaf first: `GH100 A01 GSP FMC LF` (signs reports) →
//! `GH100 A01 GSP BROM` → `NVIDIA GH100 Provisioner ICA 1` →
//! `NVIDIA GH100 Identity` → `NVIDIA Device Identity CA` (the pinned root).

use std::sync::OnceLock;

use const_oid::ObjectIdentifier;
use der::{Decode, DecodePem, Encode, Reader, SliceReader};
use p384::ecdsa::{Signature, VerifyingKey};
use p384::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::ext::pkix::BasicConstraints;

use crate::dcap::format_time;
use crate::error::{Error, Result};

/// NVIDIA's device identity root, PEM (see `roots/README.md`).
pub const DEVICE_ROOT_PEM: &[u8] = include_bytes!("roots/verifier_device_root.pem");
/// NVIDIA's RIM signing root, PEM (see `roots/README.md`).
pub const RIM_ROOT_PEM: &[u8] = include_bytes!("roots/verifier_RIM_root.pem");

/// Which chain is checked: the check names its refusals carry and the
/// root it must end in.
#[derive(Debug, Clone, Copy)]
pub struct ChainKind {
    /// Check named when a link fails.
    pub chain_check: &'static str,
    /// Check named when a certificate is outside its validity.
    pub validity_check: &'static str,
    /// The root, for messages.
    pub root_label: &'static str,
    root: fn() -> &'static Certificate,
}

/// The GPU's device certificate chain (signs attestation reports).
pub const DEVICE_CHAIN: ChainKind = ChainKind {
    chain_check: "nvidia.cert_chain",
    validity_check: "nvidia.cert_validity",
    root_label: "NVIDIA's pinned device root",
    root: device_root,
};

/// A RIM signer's chain.
pub const RIM_CHAIN: ChainKind = ChainKind {
    chain_check: "nvidia.rim_chain",
    validity_check: "nvidia.rim_cert_validity",
    root_label: "NVIDIA's pinned RIM root",
    root: rim_root,
};

const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const OID_ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
/// The extension NVIDIA puts the firmware ID in (TCG DICE arc 2.23.133.5.4.1,
/// with the RIoT "composite device ID" layout; see [`fwid`]).
pub const OID_DICE_FWID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.5.4.1");
const OID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");

/// The pinned NVIDIA device identity root, parsed once.
pub fn device_root() -> &'static Certificate {
    static ROOT: OnceLock<Certificate> = OnceLock::new();
    // Embedded at build time and checked by tests: a failure here is a
    // build defect, not bad input.
    ROOT.get_or_init(|| {
        Certificate::from_pem(DEVICE_ROOT_PEM).expect("embedded NVIDIA device root is valid PEM")
    })
}

/// The pinned NVIDIA RIM signing root (`NVIDIA CoRIM signing Root CA`),
/// parsed once.
pub fn rim_root() -> &'static Certificate {
    static ROOT: OnceLock<Certificate> = OnceLock::new();
    ROOT.get_or_init(|| {
        Certificate::from_pem(RIM_ROOT_PEM).expect("embedded NVIDIA RIM root is valid PEM")
    })
}

/// Parse a PEM certificate chain (leaf first).
pub fn parse_chain(pem: &[u8]) -> Result<Vec<Certificate>> {
    let certs = Certificate::load_pem_chain(pem.trim_ascii_start())
        .map_err(|e| Error::malformed("NVIDIA certificate chain (PEM)", e.to_string()))?;
    if certs.is_empty() {
        return Err(Error::malformed(
            "NVIDIA certificate chain (PEM)",
            "no certificate",
        ));
    }
    Ok(certs)
}

/// The subject common name of a certificate.
pub fn subject_cn(cert: &Certificate) -> String {
    name_cn(&cert.tbs_certificate.subject)
}

fn name_cn(name: &x509_cert::name::Name) -> String {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == OID_CN)
        .map(|atv| String::from_utf8_lossy(atv.value.value()).into_owned())
        .unwrap_or_else(|| name.to_string())
}

fn extension<'a>(cert: &'a Certificate, oid: &ObjectIdentifier) -> Option<&'a [u8]> {
    cert.tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| &e.extn_id == oid)
        .map(|e| e.extn_value.as_bytes())
}

/// The P-384 public key of a certificate (refused as `check` otherwise).
pub fn p384_key(check: &'static str, cert: &Certificate) -> Result<VerifyingKey> {
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| {
            Error::malformed("NVIDIA certificate", format!("{}: {e}", subject_cn(cert)))
        })?;
    p384::PublicKey::from_public_key_der(&spki)
        .map(VerifyingKey::from)
        .map_err(|e| {
            Error::refused(
                check,
                format!(
                    "certificate {:?} does not hold a P-384 public key: {e}",
                    subject_cn(cert)
                ),
            )
        })
}

/// The validity window of a certificate, Unix seconds.
pub fn validity(cert: &Certificate) -> (u64, u64) {
    let v = &cert.tbs_certificate.validity;
    (
        v.not_before.to_unix_duration().as_secs(),
        v.not_after.to_unix_duration().as_secs(),
    )
}

/// Refuse a certificate used outside its validity period (as `check`).
pub fn check_validity(check: &'static str, cert: &Certificate, now_unix: u64) -> Result<()> {
    let (nb, na) = validity(cert);
    if now_unix < nb || now_unix > na {
        return Err(Error::mismatch(
            check,
            format!(
                "certificate {:?} is not valid at the verification time",
                subject_cn(cert)
            ),
            format!("{} .. {}", format_time(nb), format_time(na)),
            format_time(now_unix),
        ));
    }
    Ok(())
}

fn is_ca(cert: &Certificate) -> bool {
    extension(cert, &OID_BASIC_CONSTRAINTS)
        .and_then(|raw| BasicConstraints::from_der(raw).ok())
        .is_some_and(|bc| bc.ca)
}

/// Check that `child` names `issuer` as its issuer, that `issuer` is a CA,
/// and that `child` carries an ECDSA P-384/SHA-384 signature by its key.
/// Refusals name `check`.
pub fn check_issued_by(
    check: &'static str,
    child: &Certificate,
    issuer: &Certificate,
) -> Result<()> {
    let child_name = subject_cn(child);
    let issuer_name = subject_cn(issuer);
    if child.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return Err(Error::mismatch(
            check,
            format!("certificate {child_name:?} is not issued by the next certificate"),
            format!("issuer {issuer_name:?}"),
            format!("issuer {:?}", name_cn(&child.tbs_certificate.issuer)),
        ));
    }
    if !is_ca(issuer) {
        return Err(Error::refused(
            check,
            format!(
                "certificate {issuer_name:?} issues {child_name:?} but is not a CA (basicConstraints cA)"
            ),
        ));
    }
    if child.signature_algorithm.oid != OID_ECDSA_SHA384 {
        return Err(Error::mismatch(
            check,
            format!("certificate {child_name:?} uses an unexpected signature algorithm"),
            "ecdsa-with-SHA384 (1.2.840.10045.4.3.3)",
            child.signature_algorithm.oid.to_string(),
        ));
    }
    let key = p384_key(check, issuer)?;
    let tbs = child
        .tbs_certificate
        .to_der()
        .map_err(|e| Error::malformed("NVIDIA certificate", format!("{child_name}: {e}")))?;
    let verified = child
        .signature
        .as_bytes()
        .and_then(|der| Signature::from_der(der).ok())
        .is_some_and(|sig| crate::ecdsa::EcdsaKey::p384(&key).verify_p384(&tbs, &sig));
    if !verified {
        return Err(Error::refused(
            check,
            format!(
                "signature on certificate {child_name:?} does not verify with {issuer_name:?}'s key"
            ),
        ));
    }
    Ok(())
}

/// Verify `chain` (leaf first, optionally ending in a copy of the root) up
/// to `kind`'s pinned root at `now_unix`: each link's issuer name, CA flag
/// and signature, and every certificate's validity, the root's included. A
/// chain ending in any other self-issued root is refused.
pub fn verify_chain(kind: ChainKind, chain: &[Certificate], now_unix: u64) -> Result<()> {
    let root = (kind.root)();
    let mut certs: Vec<&Certificate> = chain.iter().collect();
    if let Some(last) = certs.last() {
        if last.tbs_certificate.subject == last.tbs_certificate.issuer {
            if *last != root {
                return Err(Error::mismatch(
                    kind.chain_check,
                    format!("the chain ends in a root that is not {}", kind.root_label),
                    format!("root {:?}", subject_cn(root)),
                    format!(
                        "root {:?} (SHA-256 {})",
                        subject_cn(last),
                        last.to_der()
                            .map(|d| hex::encode(Sha256::digest(d)))
                            .unwrap_or_default()
                    ),
                ));
            }
            certs.pop();
        }
    }
    if certs.is_empty() {
        return Err(Error::refused(
            kind.chain_check,
            "the chain has no certificate below the root",
        ));
    }
    for (i, cert) in certs.iter().enumerate() {
        let issuer = certs.get(i + 1).copied().unwrap_or(root);
        check_issued_by(kind.chain_check, cert, issuer)?;
        check_validity(kind.validity_check, cert, now_unix)?;
    }
    check_validity(kind.validity_check, root, now_unix)
}

/// The firmware ID in a leaf certificate's extension 2.23.133.5.4.1.
///
/// NVIDIA uses the layout of RIoT's composite device ID, not the later
/// TCG `DiceTcbInfo` that shares the OID:
/// `SEQUENCE { version INTEGER, deviceId SubjectPublicKeyInfo,
/// fwid SEQUENCE { hashAlg OBJECT IDENTIFIER, digest OCTET STRING } }`.
/// The digest must be SHA-384.
pub fn fwid(leaf: &Certificate) -> Result<Vec<u8>> {
    let name = subject_cn(leaf);
    let raw = extension(leaf, &OID_DICE_FWID).ok_or_else(|| {
        Error::refused(
            "nvidia.fwid",
            format!("leaf certificate {name:?} has no FWID extension ({OID_DICE_FWID})"),
        )
    })?;
    let malformed = |e: der::Error| {
        Error::malformed(
            "NVIDIA leaf certificate",
            format!("{name}: FWID extension ({OID_DICE_FWID}): {e}"),
        )
    };
    let mut reader = SliceReader::new(raw).map_err(malformed)?;
    let (alg, digest) = reader
        .sequence(|r| {
            let _version: u32 = r.decode()?;
            let _device_id: spki::SubjectPublicKeyInfoRef<'_> = r.decode()?;
            r.sequence(|f| {
                let alg: ObjectIdentifier = f.decode()?;
                let digest: der::asn1::OctetStringRef<'_> = f.decode()?;
                Ok((alg, digest.as_bytes().to_vec()))
            })
        })
        .map_err(malformed)?;
    reader.finish(()).map_err(malformed)?;
    if alg != OID_SHA384 || digest.len() != 48 {
        return Err(Error::mismatch(
            "nvidia.fwid",
            format!("leaf certificate {name:?}: FWID is not a SHA-384 digest"),
            format!("SHA-384 ({OID_SHA384}), 48 bytes"),
            format!("{alg}, {} bytes", digest.len()),
        ));
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_pinned_root_is_self_signed_and_valid() {
        let root = device_root();
        assert_eq!(subject_cn(root), "NVIDIA Device Identity CA");
        check_issued_by("test", root, root).expect("root signs itself");
        // 2021-11-05 .. 9999-12-31
        check_validity("test", root, 1_700_000_000).unwrap();
        assert_eq!(
            check_validity("test", root, 1_600_000_000)
                .unwrap_err()
                .check(),
            Some("test")
        );
        let rim = rim_root();
        assert_eq!(subject_cn(rim), "NVIDIA CoRIM signing Root CA");
        check_issued_by("test", rim, rim).expect("RIM root signs itself");
    }
}
