//! Intel TDX: verify a DCAP TD quote (v4 or v5) with its collateral and map
//! it to [`Claims`].
//!
//! `measurement` is MRTD (the TD's initial firmware image), `init_data` is
//! MRCONFIGID (48 bytes, the init-data digest the host set at launch), `tcb`
//! the 16 TEE_TCB_SVN components plus the QE/PCE SVNs, `debug` the TD
//! attributes' DEBUG bit. See [`crate::dcap`] for what is verified.

use std::collections::BTreeMap;

use serde_json::json;

use crate::claims::{Claims, Tee};
use crate::dcap::quote::{TEE_TYPE_TDX, TdReport};
use crate::dcap::{self, Appraisal, Collateral, DcapEvidence, Quote, TcbPolicy};
use crate::error::{Error, Result};

/// Verify a raw TD quote with `collateral` at `now_unix` (Unix seconds).
pub fn verify(
    quote: &[u8],
    collateral: &Collateral,
    policy: &TcbPolicy,
    now_unix: u64,
) -> Result<Claims> {
    let a = dcap::verify_quote(quote, TEE_TYPE_TDX, collateral, policy, now_unix)?;
    claims(&a.quote, Some(&a), None)
}

/// Verify TDX evidence: a raw quote or the CoCo JSON
/// (`{"quote":"<base64>","cc_eventlog":…}`).
pub fn verify_evidence(
    evidence: &[u8],
    collateral: &Collateral,
    policy: &TcbPolicy,
    now_unix: u64,
) -> Result<Claims> {
    let ev = DcapEvidence::parse(evidence)?;
    let a = dcap::verify_quote(&ev.quote, TEE_TYPE_TDX, collateral, policy, now_unix)?;
    claims(&a.quote, Some(&a), Some(&ev))
}

/// Parse a TD quote WITHOUT verifying anything. The claims say so:
/// `hardware_backed` is false, `platform.signer` is `unverified` and
/// `raw.signature_verified` is false.
pub fn inspect(quote: &[u8]) -> Result<Claims> {
    let q = dcap::parse_expecting(quote, TEE_TYPE_TDX)?;
    claims(&q, None, None)
}

/// [`inspect`] for a raw quote or the CoCo JSON evidence.
pub fn inspect_evidence(evidence: &[u8]) -> Result<Claims> {
    let ev = DcapEvidence::parse(evidence)?;
    let q = dcap::parse_expecting(&ev.quote, TEE_TYPE_TDX)?;
    claims(&q, None, Some(&ev))
}

/// TEE_TCB_SVN component names in `Claims::tcb`.
pub fn tcb_component_name(i: usize) -> String {
    format!("tee_tcb_svn_{i:02}")
}

fn claims(q: &Quote, a: Option<&Appraisal>, ev: Option<&DcapEvidence>) -> Result<Claims> {
    // The parser pairs tee_type 0x81 with a TD body; this only guards that.
    let td: &TdReport = q
        .td()
        .ok_or_else(|| Error::malformed("DCAP quote", "TDX quote without a TD report body"))?;
    let mut tcb = BTreeMap::new();
    for (i, svn) in td.tee_tcb_svn.iter().enumerate() {
        tcb.insert(tcb_component_name(i), u64::from(*svn));
    }
    dcap::header_tcb(q, &mut tcb);

    let mut raw = serde_json::Map::new();
    raw.insert("tee_type".into(), json!("TDX"));
    raw.insert("tdx_version".into(), json!(td.tdx_version()));
    dcap::header_raw_fields(q, &mut raw);
    raw.insert("mr_td".into(), json!(hex::encode(td.mr_td)));
    for (i, r) in td.rtmr.iter().enumerate() {
        raw.insert(format!("rtmr{i}"), json!(hex::encode(r)));
    }
    raw.insert("mr_config_id".into(), json!(hex::encode(td.mr_config_id)));
    raw.insert("mr_owner".into(), json!(hex::encode(td.mr_owner)));
    raw.insert(
        "mr_owner_config".into(),
        json!(hex::encode(td.mr_owner_config)),
    );
    raw.insert("mr_seam".into(), json!(hex::encode(td.mr_seam)));
    raw.insert(
        "mr_signer_seam".into(),
        json!(hex::encode(td.mr_signer_seam)),
    );
    raw.insert(
        "seam_attributes".into(),
        json!(hex::encode(td.seam_attributes)),
    );
    raw.insert("td_attributes".into(), json!(hex::encode(td.td_attributes)));
    raw.insert("xfam".into(), json!(hex::encode(td.xfam)));
    raw.insert("tee_tcb_svn".into(), json!(hex::encode(td.tee_tcb_svn)));
    if let Some(svn2) = td.tee_tcb_svn2 {
        raw.insert("tee_tcb_svn2".into(), json!(hex::encode(svn2)));
    }
    if let Some(m) = td.mr_service_td {
        raw.insert("mr_service_td".into(), json!(hex::encode(m)));
    }
    if let Some(ext) = &td.extension {
        raw.insert("td15_extension".into(), json!(hex::encode(ext)));
    }
    raw.insert("report_data".into(), json!(hex::encode(td.report_data)));
    raw.insert("debug".into(), json!(td.debug()));
    dcap::verification_raw_fields(a, &mut raw);
    if let Some(ev) = ev {
        ev.raw_fields(&mut raw);
    }

    Ok(Claims {
        tee: Tee::Tdx,
        hardware_backed: a.is_some(),
        measurement: td.mr_td.to_vec(),
        report_data: td.report_data.to_vec(),
        init_data: td.mr_config_id.to_vec(),
        tcb,
        debug: td.debug(),
        platform: dcap::platform("TDX", a),
        raw: serde_json::Value::Object(raw),
    })
}
