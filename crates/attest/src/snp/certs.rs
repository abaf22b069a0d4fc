//! AMD certificates: the pinned ARK/ASK/ASVK per product, VCEK/VLEK
//! parsing (TCB and hwid extensions), and RSA-PSS chain verification.

use std::sync::OnceLock;

use const_oid::ObjectIdentifier;
use der::{Decode, Encode};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use sha2::Sha384;
use x509_cert::Certificate;

use super::report::{Product, TcbVersion};
use crate::error::{Error, Result};

const MILAN_PEM: &[u8] = include_bytes!("roots/milan-ask-ark-asvk.pem");
const GENOA_PEM: &[u8] = include_bytes!("roots/genoa-ask-ark-asvk.pem");
const TURIN_PEM: &[u8] = include_bytes!("roots/turin-ask-ark-asvk.pem");

/// RSASSA-PSS, the signature algorithm of every AMD certificate.
const OID_RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
/// AMD VCEK/VLEK extensions (AMD "Versioned Chip Endorsement Key" spec).
const OID_PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
const OID_BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
const OID_TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
const OID_SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
const OID_UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
const OID_FMC_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
const OID_HWID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");
/// PSS salt length AMD uses (SHA-384 output size).
const PSS_SALT_LEN: usize = 48;

/// AMD's pinned certificates for one product.
pub struct ProductRoots {
    /// The product these roots sign for.
    pub product: Product,
    /// AMD Root Key (self-signed).
    pub ark: Certificate,
    /// AMD SEV Key: signs VCEKs.
    pub ask: Certificate,
    /// AMD SEV VLEK Key: signs VLEKs.
    pub asvk: Certificate,
}

fn load_roots(product: Product, pem: &[u8]) -> ProductRoots {
    // Embedded at build time and checked by tests: a failure here is a
    // build defect, not bad input.
    let certs = Certificate::load_pem_chain(pem).expect("embedded AMD roots are valid PEM");
    let [ask, ark, asvk]: [Certificate; 3] = certs
        .try_into()
        .unwrap_or_else(|_| panic!("embedded {} roots: expected ASK, ARK, ASVK", product.name()));
    ProductRoots {
        product,
        ark,
        ask,
        asvk,
    }
}

/// The pinned roots of a product, parsed once.
pub fn pinned(product: Product) -> &'static ProductRoots {
    static ROOTS: OnceLock<[ProductRoots; 3]> = OnceLock::new();
    let all = ROOTS.get_or_init(|| {
        [
            load_roots(Product::Milan, MILAN_PEM),
            load_roots(Product::Genoa, GENOA_PEM),
            load_roots(Product::Turin, TURIN_PEM),
        ]
    });
    match product {
        Product::Milan => &all[0],
        Product::Genoa => &all[1],
        Product::Turin => &all[2],
    }
}

/// Parse certificates from DER, or from PEM holding one or more certificates.
pub fn parse_certs(bytes: &[u8]) -> Result<Vec<Certificate>> {
    let trimmed = bytes.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN") {
        Certificate::load_pem_chain(trimmed)
            .map_err(|e| Error::malformed("certificate (PEM)", e.to_string()))
    } else {
        Certificate::from_der(bytes)
            .map(|c| vec![c])
            .map_err(|e| Error::malformed("certificate (DER)", e.to_string()))
    }
}

/// The subject common name of a certificate (`SEV-VCEK`, `SEV-Milan`, …).
pub fn subject_cn(cert: &Certificate) -> String {
    name_cn(&cert.tbs_certificate.subject)
}

/// The issuer common name of a certificate.
pub fn issuer_cn(cert: &Certificate) -> String {
    name_cn(&cert.tbs_certificate.issuer)
}

fn name_cn(name: &x509_cert::name::Name) -> String {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == OID_CN)
        .map(|atv| String::from_utf8_lossy(atv.value.value()).into_owned())
        .unwrap_or_default()
}

/// Which product a VCEK/VLEK belongs to, from its issuer CN
/// (`SEV-Milan`, `SEV-VLEK-Genoa`).
pub fn product_of(cert: &Certificate) -> Option<Product> {
    let cn = issuer_cn(cert);
    let name = cn
        .strip_prefix("SEV-VLEK-")
        .or_else(|| cn.strip_prefix("SEV-"))?;
    Product::from_name(name)
}

fn extension<'a>(cert: &'a Certificate, oid: &ObjectIdentifier) -> Option<&'a [u8]> {
    cert.tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| &e.extn_id == oid)
        .map(|e| e.extn_value.as_bytes())
}

fn spl(cert: &Certificate, oid: &ObjectIdentifier, name: &str) -> Result<Option<u8>> {
    let Some(raw) = extension(cert, oid) else {
        return Ok(None);
    };
    let v = u32::from_der(raw).map_err(|e| {
        Error::malformed("VCEK certificate", format!("extension {name} ({oid}): {e}"))
    })?;
    u8::try_from(v).map(Some).map_err(|_| {
        Error::malformed(
            "VCEK certificate",
            format!("extension {name} ({oid}) is {v}, above 255"),
        )
    })
}

/// TCB and identity facts read from a VCEK or VLEK certificate.
#[derive(Debug, Clone)]
pub struct EndorsementKeyInfo {
    /// Product name extension (`Milan-B0`).
    pub product_name: Option<String>,
    /// TCB the key was derived for.
    pub tcb: TcbVersion,
    /// Hardware ID (VCEK only).
    pub hwid: Option<Vec<u8>>,
}

/// Read the AMD extensions of a VCEK/VLEK.
pub fn endorsement_key_info(cert: &Certificate) -> Result<EndorsementKeyInfo> {
    let missing = |n: &str| {
        Error::malformed(
            "VCEK/VLEK certificate",
            format!("missing TCB extension {n}"),
        )
    };
    let product_name = extension(cert, &OID_PRODUCT_NAME).map(|raw| {
        der::asn1::Ia5StringRef::from_der(raw)
            .map(|s| s.to_string())
            .unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned())
    });
    let hwid = extension(cert, &OID_HWID).map(|raw| {
        der::asn1::OctetStringRef::from_der(raw)
            .map(|o| o.as_bytes().to_vec())
            .unwrap_or_else(|_| raw.to_vec())
    });
    Ok(EndorsementKeyInfo {
        product_name,
        tcb: TcbVersion {
            fmc: spl(cert, &OID_FMC_SPL, "fmcSPL")?,
            bootloader: spl(cert, &OID_BL_SPL, "blSPL")?.ok_or_else(|| missing("blSPL"))?,
            tee: spl(cert, &OID_TEE_SPL, "teeSPL")?.ok_or_else(|| missing("teeSPL"))?,
            snp: spl(cert, &OID_SNP_SPL, "snpSPL")?.ok_or_else(|| missing("snpSPL"))?,
            microcode: spl(cert, &OID_UCODE_SPL, "ucodeSPL")?.ok_or_else(|| missing("ucodeSPL"))?,
        },
        hwid,
    })
}

/// Check that `child` is signed by `issuer` (RSASSA-PSS, SHA-384, salt 48),
/// that the names chain, and that `now` is inside `child`'s validity.
pub fn verify_issued_by(child: &Certificate, issuer: &Certificate, now_unix: u64) -> Result<()> {
    let child_name = subject_cn(child);
    let issuer_name = subject_cn(issuer);
    if child.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return Err(Error::mismatch(
            "snp.cert_chain",
            format!("certificate {child_name} is not issued by {issuer_name}"),
            format!("issuer {issuer_name}"),
            format!("issuer {}", issuer_cn(child)),
        ));
    }
    if child.signature_algorithm.oid != OID_RSASSA_PSS {
        return Err(Error::mismatch(
            "snp.cert_chain",
            format!("certificate {child_name} uses an unexpected signature algorithm"),
            "RSASSA-PSS (1.2.840.113549.1.1.10)",
            child.signature_algorithm.oid.to_string(),
        ));
    }
    let spki = issuer
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| Error::malformed("certificate", format!("{issuer_name} public key: {e}")))?;
    let key = rsa::RsaPublicKey::from_public_key_der(&spki).map_err(|e| {
        Error::malformed(
            "certificate",
            format!("{issuer_name} public key is not RSA: {e}"),
        )
    })?;
    let tbs = child
        .tbs_certificate
        .to_der()
        .map_err(|e| Error::malformed("certificate", format!("{child_name}: {e}")))?;
    let sig = rsa::pss::Signature::try_from(child.signature.raw_bytes())
        .map_err(|e| Error::malformed("certificate", format!("{child_name} signature: {e}")))?;
    rsa::pss::VerifyingKey::<Sha384>::new_with_salt_len(key, PSS_SALT_LEN)
        .verify(&tbs, &sig)
        .map_err(|_| {
            Error::refused(
                "snp.cert_chain",
                format!(
                    "signature on certificate {child_name} does not verify with {issuer_name}'s key"
                ),
            )
        })?;
    check_validity(child, now_unix)
}

/// Refuse a certificate used outside its validity period.
pub fn check_validity(cert: &Certificate, now_unix: u64) -> Result<()> {
    let v = &cert.tbs_certificate.validity;
    let nb = v.not_before.to_unix_duration().as_secs();
    let na = v.not_after.to_unix_duration().as_secs();
    if now_unix < nb || now_unix > na {
        return Err(Error::mismatch(
            "snp.cert_validity",
            format!(
                "certificate {} is not valid at the verification time",
                subject_cn(cert)
            ),
            format!("{} .. {}", v.not_before, v.not_after),
            format!("unix time {now_unix}"),
        ));
    }
    Ok(())
}

/// True when two certificates carry the same public key.
pub fn same_key(a: &Certificate, b: &Certificate) -> bool {
    a.tbs_certificate.subject_public_key_info == b.tbs_certificate.subject_public_key_info
}

/// Relative path of a VCEK in an offline cache directory:
/// `vcek/<Product>/<hwid hex>/<tcb>.der`, where `<tcb>` is
/// `bl<BL>_tee<TEE>_snp<SNP>_ucode<UCODE>` (decimal SVNs, with a trailing
/// `_fmc<FMC>` on Turin). The hwid is the VCEK hwid: the 64-byte CHIP_ID,
/// or its first 8 bytes on Turin (as AMD's KDS names it).
pub fn cache_path(product: Product, chip_id: &[u8; 64], tcb: &TcbVersion) -> String {
    let hwid = match product {
        Product::Turin => &chip_id[..8],
        _ => &chip_id[..],
    };
    let mut t = format!(
        "bl{}_tee{}_snp{}_ucode{}",
        tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode
    );
    if let Some(f) = tcb.fmc {
        t.push_str(&format!("_fmc{f}"));
    }
    format!("vcek/{}/{}/{t}.der", product.name(), hex::encode(hwid))
}
