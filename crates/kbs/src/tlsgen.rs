//! `veil kbs tls-keygen`: a private CA and a server (leaf) certificate
//! signed by it, ECDSA P-256. A plain `openssl req -x509` certificate is a CA
//! certificate (basicConstraints CA:TRUE), which rustls/webpki clients refuse
//! as a server certificate (`CaUsedAsEndEntity`); this pair is what a KBS
//! with a private CA should serve (the leaf) and pin (the CA, `--ca`).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use zeroize::Zeroizing;

/// A generated CA and leaf, PEM.
pub struct TlsMaterial {
    /// The CA certificate: what clients pass as `--ca`.
    pub ca_cert: String,
    /// The leaf certificate followed by the CA (the chain `serve --tls-cert` takes).
    pub cert_chain: String,
    /// The leaf's private key (PKCS#8).
    pub key: Zeroizing<String>,
}

/// Make a CA valid `ca_days` and a leaf for `names` (DNS names or IP
/// addresses) valid `leaf_days`.
pub fn generate(names: &[String], ca_days: u32, leaf_days: u32) -> Result<TlsMaterial, String> {
    if names.is_empty() {
        return Err("a server certificate needs at least one name (--san)".into());
    }
    let err = |e: rcgen::Error| format!("certificate generation: {e}");
    let now = time::OffsetDateTime::now_utc();
    let start = now - time::Duration::hours(1);

    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.distinguished_name
        .push(DnType::CommonName, "veil KBS private CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = start;
    ca.not_after = now + time::Duration::days(i64::from(ca_days));
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf_key = KeyPair::generate().map_err(err)?;
    let mut leaf = CertificateParams::new(names.to_vec()).map_err(err)?;
    leaf.distinguished_name
        .push(DnType::CommonName, names[0].as_str());
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = start;
    leaf.not_after = now + time::Duration::days(i64::from(leaf_days));
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(err)?;

    Ok(TlsMaterial {
        ca_cert: ca_cert.pem(),
        cert_chain: format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
        key: Zeroizing::new(leaf_key.serialize_pem()),
    })
}
