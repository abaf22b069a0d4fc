//! AMD SEV-SNP: verify an attestation report and its VCEK/VLEK chain up to
//! AMD's pinned roots, then map it to [`Claims`].

pub mod bench;
pub mod certs;
pub mod evidence;
pub mod report;

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use rsa::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};
use x509_cert::Certificate;

pub use self::report::{Product, Report, SigningKey, TcbVersion};
use crate::claims::{Claims, Platform, Tee};
use crate::error::{Error, Result};

/// Looks up a VCEK for a chip and TCB (an offline cache, a KDS client…).
/// Implemented by callers that can do I/O; see [`certs::cache_path`].
pub trait CertSource {
    /// The DER VCEK for `product`, `chip_id` and `tcb`, if known.
    fn vcek(&self, product: Product, chip_id: &[u8; 64], tcb: &TcbVersion) -> Option<Vec<u8>>;
}

/// Remembers endorsement keys whose chain to the pinned roots already
/// verified, so a busy verifier checks each VCEK's RSA chain once.
#[derive(Default)]
pub struct ChainCache {
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl ChainCache {
    fn key(cert_der: &[u8], issuer: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(cert_der);
        h.update(issuer.as_bytes());
        h.finalize().into()
    }
    fn contains(&self, k: &[u8; 32]) -> bool {
        self.verified.lock().map(|s| s.contains(k)).unwrap_or(false)
    }
    fn insert(&self, k: [u8; 32]) {
        if let Ok(mut s) = self.verified.lock() {
            s.insert(k);
        }
    }
}

/// SNP-specific verification options.
#[derive(Default)]
pub struct Options<'a> {
    /// Extra certificates (DER), e.g. from `--cert` files: VCEK, VLEK, ASK…
    pub certs: Vec<Vec<u8>>,
    /// Where to look for a VCEK not found in the evidence or `certs`.
    pub cert_source: Option<&'a dyn CertSource>,
    /// Required VMPL of the requester (None: any). The CLI defaults to 0.
    pub vmpl: Option<u32>,
    /// Accept a guest policy that allows a migration agent.
    pub allow_migration_agent: bool,
    /// Cache of already verified certificate chains.
    pub chain_cache: Option<&'a ChainCache>,
}

/// Verify SNP evidence (raw, hex or CoCo JSON) at time `now_unix`.
/// Expectations (report data, init-data, TCB minimum, debug) are applied by
/// the caller with [`crate::Expectations::check`].
pub fn verify(evidence: &[u8], opts: &Options<'_>, now_unix: u64) -> Result<Claims> {
    let ev = evidence::parse(evidence)?;
    let report = Report::parse(&ev.report)?;
    let mut certs = Vec::new();
    for der in ev.certs.iter().chain(opts.certs.iter()) {
        certs.extend(certs::parse_certs(der)?);
    }
    verify_report(&report, &certs, opts, now_unix)
}

/// Verify a parsed report with the given candidate certificates.
pub fn verify_report(
    report: &Report,
    given: &[Certificate],
    opts: &Options<'_>,
    now_unix: u64,
) -> Result<Claims> {
    if report.signature_algo != report::SIG_ALGO_ECDSA_P384_SHA384 {
        return Err(Error::mismatch(
            "snp.signature_algo",
            "unsupported report signature algorithm",
            "1 (ECDSA P-384 with SHA-384)",
            report.signature_algo.to_string(),
        ));
    }
    let kind = report.signing_key()?;
    let (want_cn, kind_name) = match kind {
        SigningKey::Vcek => ("SEV-VCEK", "VCEK"),
        SigningKey::Vlek => ("SEV-VLEK", "VLEK"),
        SigningKey::None => {
            return Err(Error::mismatch(
                "snp.signing_key",
                "report is not signed (FLAGS.SIGNING_KEY = none)",
                "VCEK or VLEK",
                "none",
            ));
        }
    };
    let cpuid_product = report.product_from_cpuid();

    // The endorsement key: from the evidence / given certificates first,
    // then from the cache.
    let mut ek: Option<Certificate> = given
        .iter()
        .find(|c| certs::subject_cn(c) == want_cn)
        .cloned();
    if ek.is_none() && kind == SigningKey::Vcek {
        if let Some(src) = opts.cert_source {
            let products: Vec<Product> = match cpuid_product {
                Some(p) => vec![p],
                None => Product::ALL.to_vec(),
            };
            for p in products {
                let tcb = report.reported_tcb_for(p);
                if let Some(der) = src.vcek(p, &report.chip_id, &tcb) {
                    ek = certs::parse_certs(&der)?.into_iter().next();
                    break;
                }
            }
        }
    }
    let Some(ek) = ek else {
        let have: Vec<String> = given.iter().map(certs::subject_cn).collect();
        let reason = if kind == SigningKey::Vlek {
            "report is signed by a VLEK but no VLEK certificate was provided (a VCEK cannot verify it; the VLEK must chain to AMD's ASVK)".to_string()
        } else {
            "report is signed by a VCEK but no VCEK certificate was found in the evidence, the given certificates or the cache".to_string()
        };
        return Err(Error::mismatch(
            "snp.endorsement_key",
            reason,
            format!("a {kind_name} certificate"),
            if have.is_empty() {
                "no certificates".into()
            } else {
                have.join(", ")
            },
        ));
    };

    let product = certs::product_of(&ek).ok_or_else(|| {
        Error::mismatch(
            "snp.endorsement_key",
            format!("{kind_name} is not issued by a known AMD product key"),
            "issuer SEV-Milan, SEV-Genoa, SEV-Turin (or SEV-VLEK-…)",
            certs::issuer_cn(&ek),
        )
    })?;
    if let Some(p) = cpuid_product {
        if p != product {
            return Err(Error::mismatch(
                "snp.product",
                "report CPUID and endorsement key disagree on the CPU product",
                p.name(),
                product.name(),
            ));
        }
    }

    verify_chain(&ek, kind, product, given, opts.chain_cache, now_unix)?;

    // The report signature.
    let vk = ek_verifying_key(&ek)?;
    let sig = p384::ecdsa::Signature::from_scalars(report.sig_r, report.sig_s).map_err(|_| {
        Error::refused(
            "snp.signature",
            format!("report signature is not a valid P-384 (r, s) pair for {kind_name}"),
        )
    })?;
    if !crate::ecdsa::EcdsaKey::p384(&vk).verify_p384(report.signed_bytes(), &sig) {
        return Err(Error::refused(
            "snp.signature",
            format!(
                "report signature does not verify with {kind_name} (chip_id {}…)",
                &hex::encode(report.chip_id)[..16]
            ),
        ));
    }

    // The endorsement key was derived for exactly the reported TCB.
    let info = certs::endorsement_key_info(&ek)?;
    let reported = report.reported_tcb_for(product);
    for ((name, want), (_, got)) in info.tcb.components().into_iter().zip(reported.components()) {
        if want != got {
            return Err(Error::mismatch(
                "snp.reported_tcb",
                format!("reported_tcb.{name} differs from the {kind_name}'s TCB extension"),
                want.to_string(),
                got.to_string(),
            ));
        }
    }
    let mut chip_checked = false;
    if kind == SigningKey::Vcek && !report.chip_id_masked() {
        let hwid = info.hwid.as_deref().ok_or_else(|| {
            Error::malformed(
                "VCEK certificate",
                "missing hwid extension (1.3.6.1.4.1.3704.1.4)",
            )
        })?;
        let reported = &report.chip_id[..hwid.len().min(64)];
        if hwid.is_empty() || !crate::expect::ct_eq(hwid, reported) {
            return Err(Error::mismatch(
                "snp.chip_id",
                "report chip_id does not match the VCEK's hwid",
                hex::encode(hwid),
                hex::encode(report.chip_id),
            ));
        }
        chip_checked = true;
    }

    if let Some(vmpl) = opts.vmpl {
        if report.vmpl != vmpl {
            return Err(Error::mismatch(
                "snp.vmpl",
                "report requested from an unexpected VMPL",
                vmpl.to_string(),
                report.vmpl.to_string(),
            ));
        }
    }
    if report.policy & report::policy_bits::MIGRATE_MA != 0 && !opts.allow_migration_agent {
        return Err(Error::mismatch(
            "snp.policy.migrate_ma",
            "guest policy allows a migration agent (it could export the guest's memory)",
            "MIGRATE_MA = 0",
            "MIGRATE_MA = 1",
        ));
    }

    let mut raw = report.to_json(product);
    if let Some(obj) = raw.as_object_mut() {
        obj.insert("product".into(), product.name().into());
        obj.insert("product_name".into(), info.product_name.clone().into());
        obj.insert("chip_id_checked".into(), chip_checked.into());
    }
    let tcb: BTreeMap<String, u64> = reported
        .components()
        .into_iter()
        .map(|(k, v)| (k.to_string(), u64::from(v)))
        .collect();
    Ok(Claims {
        tee: Tee::Snp,
        hardware_backed: true,
        measurement: report.measurement.to_vec(),
        report_data: report.report_data.to_vec(),
        init_data: report.host_data.to_vec(),
        tcb,
        debug: report.policy & report::policy_bits::DEBUG != 0,
        platform: Platform {
            product: product.name().to_string(),
            chip_id: hex::encode(report.chip_id),
            signer: kind_name.to_ascii_lowercase(),
        },
        raw,
    })
}

fn ek_verifying_key(ek: &Certificate) -> Result<p384::ecdsa::VerifyingKey> {
    use der::Encode;
    let spki = ek
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| Error::malformed("VCEK certificate", e.to_string()))?;
    p384::ecdsa::VerifyingKey::from_public_key_der(&spki).map_err(|e| {
        Error::malformed(
            "VCEK certificate",
            format!("public key is not ECDSA P-384: {e}"),
        )
    })
}

/// Verify EK → ASK/ASVK → ARK, with the ARK and the intermediate pinned.
/// An intermediate supplied in the evidence is accepted only if it carries
/// the same key as the pinned one.
fn verify_chain(
    ek: &Certificate,
    kind: SigningKey,
    product: Product,
    given: &[Certificate],
    cache: Option<&ChainCache>,
    now_unix: u64,
) -> Result<()> {
    let roots = certs::pinned(product);
    let (intermediate, inter_name) = match kind {
        SigningKey::Vlek => (&roots.asvk, "ASVK"),
        _ => (&roots.ask, "ASK"),
    };
    let want_issuer = certs::subject_cn(intermediate);
    let got_issuer = certs::issuer_cn(ek);
    if got_issuer != want_issuer {
        return Err(Error::mismatch(
            "snp.cert_chain",
            format!(
                "{} must be issued by AMD's {inter_name} for {}",
                certs::subject_cn(ek),
                product.name()
            ),
            want_issuer,
            got_issuer,
        ));
    }
    for c in given {
        let cn = certs::subject_cn(c);
        for pinned in [&roots.ask, &roots.asvk, &roots.ark] {
            if cn == certs::subject_cn(pinned) && !certs::same_key(c, pinned) {
                return Err(Error::refused(
                    "snp.cert_chain",
                    format!("certificate {cn} in the evidence is not AMD's pinned {cn}"),
                ));
            }
        }
    }
    use der::Encode;
    let ek_der = ek
        .to_der()
        .map_err(|e| Error::malformed("VCEK certificate", e.to_string()))?;
    let key = ChainCache::key(&ek_der, inter_name);
    if let Some(c) = cache {
        if c.contains(&key) {
            return certs::check_validity(ek, now_unix);
        }
    }
    certs::verify_issued_by(ek, intermediate, now_unix)?;
    certs::verify_issued_by(intermediate, &roots.ark, now_unix)?;
    certs::verify_issued_by(&roots.ark, &roots.ark, now_unix)?;
    if let Some(c) = cache {
        c.insert(key);
    }
    Ok(())
}
