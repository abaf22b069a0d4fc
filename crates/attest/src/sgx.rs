//! Intel SGX: verify a DCAP enclave quote (v3) with its collateral and map it
//! to [`Claims`].
//!
//! `measurement` is MRENCLAVE, `init_data` is CONFIGID (64 bytes, set by the
//! launcher with KSS), `tcb` the enclave's ISVSVN and CONFIGSVN, the QE/PCE
//! SVNs and the 16 CPUSVN components, `debug` the ATTRIBUTES DEBUG bit. See
//! [`crate::dcap`] for what is verified.

use std::collections::BTreeMap;

use serde_json::json;

use crate::claims::{Claims, Tee};
use crate::dcap::quote::{EnclaveReport, TEE_TYPE_SGX};
use crate::dcap::{self, Appraisal, Collateral, DcapEvidence, Quote, TcbPolicy};
use crate::error::{Error, Result};

/// Verify a raw SGX quote with `collateral` at `now_unix` (Unix seconds).
pub fn verify(
    quote: &[u8],
    collateral: &Collateral,
    policy: &TcbPolicy,
    now_unix: u64,
) -> Result<Claims> {
    let a = dcap::verify_quote(quote, TEE_TYPE_SGX, collateral, policy, now_unix)?;
    claims(&a.quote, Some(&a))
}

/// Verify SGX evidence: a raw quote or the CoCo JSON (`{"quote":"<base64>"}`).
pub fn verify_evidence(
    evidence: &[u8],
    collateral: &Collateral,
    policy: &TcbPolicy,
    now_unix: u64,
) -> Result<Claims> {
    let ev = DcapEvidence::parse(evidence)?;
    verify(&ev.quote, collateral, policy, now_unix)
}

/// Parse an SGX quote WITHOUT verifying anything. The claims say so:
/// `hardware_backed` is false, `platform.signer` is `unverified` and
/// `raw.signature_verified` is false.
pub fn inspect(quote: &[u8]) -> Result<Claims> {
    let q = dcap::parse_expecting(quote, TEE_TYPE_SGX)?;
    claims(&q, None)
}

/// [`inspect`] for a raw quote or the CoCo JSON evidence.
pub fn inspect_evidence(evidence: &[u8]) -> Result<Claims> {
    let ev = DcapEvidence::parse(evidence)?;
    inspect(&ev.quote)
}

fn claims(q: &Quote, a: Option<&Appraisal>) -> Result<Claims> {
    // The parser pairs tee_type 0 with an enclave report; this only guards that.
    let r: &EnclaveReport = q.sgx().ok_or_else(|| {
        Error::malformed("DCAP quote", "SGX quote without an enclave report body")
    })?;
    let mut tcb = BTreeMap::new();
    tcb.insert("isv_svn".into(), u64::from(r.isv_svn));
    tcb.insert("config_svn".into(), u64::from(r.config_svn));
    dcap::header_tcb(q, &mut tcb);
    for (i, svn) in r.cpu_svn.iter().enumerate() {
        tcb.insert(format!("cpu_svn_{i:02}"), u64::from(*svn));
    }

    let mut raw = serde_json::Map::new();
    raw.insert("tee_type".into(), json!("SGX"));
    dcap::header_raw_fields(q, &mut raw);
    raw.insert("mr_enclave".into(), json!(hex::encode(r.mr_enclave)));
    raw.insert("mr_signer".into(), json!(hex::encode(r.mr_signer)));
    raw.insert("isv_prod_id".into(), json!(r.isv_prod_id));
    raw.insert("isv_svn".into(), json!(r.isv_svn));
    raw.insert("attributes".into(), json!(hex::encode(r.attributes)));
    raw.insert(
        "misc_select".into(),
        json!(format!("{:08x}", r.misc_select)),
    );
    raw.insert("config_id".into(), json!(hex::encode(r.config_id)));
    raw.insert("config_svn".into(), json!(r.config_svn));
    raw.insert(
        "isv_ext_prod_id".into(),
        json!(hex::encode(r.isv_ext_prod_id)),
    );
    raw.insert("isv_family_id".into(), json!(hex::encode(r.isv_family_id)));
    raw.insert("cpu_svn".into(), json!(hex::encode(r.cpu_svn)));
    raw.insert("report_data".into(), json!(hex::encode(r.report_data)));
    raw.insert("debug".into(), json!(r.debug()));
    dcap::verification_raw_fields(a, &mut raw);

    Ok(Claims {
        tee: Tee::Sgx,
        hardware_backed: a.is_some(),
        measurement: r.mr_enclave.to_vec(),
        report_data: r.report_data.to_vec(),
        init_data: r.config_id.to_vec(),
        tcb,
        debug: r.debug(),
        platform: dcap::platform("SGX", a),
        raw: serde_json::Value::Object(raw),
    })
}
