//! Intel PKI certificate chains (ECDSA P-256 / SHA-256 throughout): a check
//! that names which chain and which certificate failed and why.
//!
//! dcap-qvl is the authority for accepting a quote; it reports a chain
//! failure without saying which of the four chains failed. When it refuses,
//! [`super`] runs these checks to explain the refusal to the operator.

use p256::ecdsa::{Signature, VerifyingKey};
use x509_cert::Certificate;
use x509_cert::crl::CertificateList;
use x509_cert::der::Encode;
use x509_cert::der::asn1::ObjectIdentifier;

use super::{format_time, pinned_root};
use crate::error::{Error, Result};

const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// The subject common name of a certificate (or the whole subject).
pub fn subject_cn(c: &Certificate) -> String {
    name_cn(&c.tbs_certificate.subject)
}

fn name_cn(name: &x509_cert::name::Name) -> String {
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == OID_CN {
                if let Ok(s) = x509_cert::der::asn1::Utf8StringRef::try_from(&atv.value) {
                    return s.as_str().to_string();
                }
                if let Ok(s) = x509_cert::der::asn1::PrintableStringRef::try_from(&atv.value) {
                    return s.as_str().to_string();
                }
            }
        }
    }
    name.to_string()
}

fn verify_signed(der: &[u8], sig_der: &[u8], alg: &ObjectIdentifier, issuer: &Certificate) -> bool {
    if *alg != OID_ECDSA_SHA256 {
        return false;
    }
    let spki = &issuer.tbs_certificate.subject_public_key_info;
    let Some(key_bytes) = spki.subject_public_key.as_bytes() else {
        return false;
    };
    let (Ok(key), Ok(sig)) = (
        VerifyingKey::from_sec1_bytes(key_bytes),
        Signature::from_der(sig_der),
    ) else {
        return false;
    };
    crate::ecdsa::EcdsaKey::p256(&key).verify_p256(der, &sig)
}

/// True if `child` carries a valid signature by `issuer`'s key.
pub fn signed_by(child: &Certificate, issuer: &Certificate) -> bool {
    let Ok(tbs) = child.tbs_certificate.to_der() else {
        return false;
    };
    let Some(sig) = child.signature.as_bytes() else {
        return false;
    };
    verify_signed(&tbs, sig, &child.signature_algorithm.oid, issuer)
}

/// True if `crl` carries a valid signature by `issuer`'s key.
pub fn crl_signed_by(crl: &CertificateList, issuer: &Certificate) -> bool {
    let Ok(tbs) = crl.tbs_cert_list.to_der() else {
        return false;
    };
    let Some(sig) = crl.signature.as_bytes() else {
        return false;
    };
    verify_signed(&tbs, sig, &crl.signature_algorithm.oid, issuer)
}

fn revoked_in(c: &Certificate, crl: &CertificateList) -> bool {
    crl.tbs_cert_list
        .revoked_certificates
        .as_ref()
        .is_some_and(|list| {
            list.iter()
                .any(|r| r.serial_number == c.tbs_certificate.serial_number)
        })
}

/// Check `chain` (leaf first; a trailing root copy is allowed) up to the
/// pinned Intel SGX Root CA at `now`: signatures, validity, and revocation
/// in `crls` (each CRL is consulted only for certificates of its issuer).
pub fn check_chain(
    check: &'static str,
    role: &str,
    chain: &[Certificate],
    crls: &[&CertificateList],
    now: u64,
) -> Result<()> {
    let root = pinned_root();
    let root_der = super::INTEL_SGX_ROOT_CA_DER;
    // Drop a trailing copy of the root; a different self-signed root is refused.
    let mut certs: Vec<&Certificate> = chain.iter().collect();
    if let Some(last) = certs.last() {
        if last.tbs_certificate.subject == last.tbs_certificate.issuer {
            let same = last.to_der().map(|d| d == root_der).unwrap_or(false);
            if !same {
                return Err(Error::mismatch(
                    check,
                    format!("{role} ends in a root that is not the pinned Intel SGX Root CA"),
                    format!(
                        "root {:?} (SHA-256 {})",
                        subject_cn(root),
                        super::INTEL_SGX_ROOT_CA_SHA256
                    ),
                    format!("root {:?}", subject_cn(last)),
                ));
            }
            certs.pop();
        }
    }
    if certs.is_empty() {
        return Err(Error::refused(
            check,
            format!("{role} has no certificate below the root"),
        ));
    }
    for (i, c) in certs.iter().enumerate() {
        let issuer = certs.get(i + 1).copied().unwrap_or(root);
        let name = subject_cn(c);
        if c.tbs_certificate.issuer != issuer.tbs_certificate.subject {
            return Err(Error::mismatch(
                check,
                format!("{role}: certificate {name:?} is not issued by the next certificate"),
                format!("issuer {:?}", subject_cn(issuer)),
                format!("issuer {:?}", name_cn(&c.tbs_certificate.issuer)),
            ));
        }
        if !signed_by(c, issuer) {
            return Err(Error::refused(
                check,
                format!(
                    "{role}: signature on certificate {name:?} does not verify with {:?}'s key",
                    subject_cn(issuer)
                ),
            ));
        }
        let v = &c.tbs_certificate.validity;
        let (nb, na) = (
            v.not_before.to_unix_duration().as_secs(),
            v.not_after.to_unix_duration().as_secs(),
        );
        if now < nb || now > na {
            return Err(Error::mismatch(
                check,
                format!("{role}: certificate {name:?} is not valid at the verification time"),
                format!("{} .. {}", format_time(nb), format_time(na)),
                format_time(now),
            ));
        }
        for crl in crls {
            if crl.tbs_cert_list.issuer == c.tbs_certificate.issuer && revoked_in(c, crl) {
                return Err(Error::refused(
                    check,
                    format!(
                        "{role}: certificate {name:?} (serial {}) is revoked by the CRL of {:?}",
                        hex::encode(c.tbs_certificate.serial_number.as_bytes()),
                        name_cn(&crl.tbs_cert_list.issuer)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Check that `crl` is signed by the last-but-root certificate of `chain` or
/// by the pinned root.
pub fn check_crl(
    check: &'static str,
    what: &str,
    crl: &CertificateList,
    issuers: &[Certificate],
) -> Result<()> {
    let root = pinned_root();
    let ok = issuers
        .iter()
        .chain(std::iter::once(root))
        .filter(|c| c.tbs_certificate.subject == crl.tbs_cert_list.issuer)
        .any(|c| crl_signed_by(crl, c));
    if ok {
        Ok(())
    } else {
        Err(Error::refused(
            check,
            format!(
                "{what} signature does not verify with its issuer {:?} (chained to the pinned Intel SGX Root CA)",
                name_cn(&crl.tbs_cert_list.issuer)
            ),
        ))
    }
}
