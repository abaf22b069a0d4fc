//! Intel TDX evidence through configfs-tsm (provider `tdx_guest`).
//!
//! The outblob is a DCAP quote (v4, or v5 with a TD report body); the
//! evidence is the CoCo `tdx` JSON `{"cc_eventlog": null, "quote": "<base64>"}`.
//! MRCONFIGID (the init-data binding) and MRTD are read from the quote's TD
//! report body.

use base64::Engine as _;

use crate::tsm::TsmReport;
use crate::{Attester, Evidence, REPORT_DATA_LEN, TeeError, TeeKind};

/// configfs-tsm provider name.
pub const PROVIDER: &str = "tdx_guest";
/// Quote header size.
pub const HEADER_LEN: usize = 48;
/// TEE type of TDX in the quote header.
pub const TEE_TYPE_TDX: u32 = 0x81;
/// TD report body: MRTD offset and size.
pub const BODY_MRTD: usize = 136;
/// TD report body: MRCONFIGID offset (48 bytes).
pub const BODY_MRCONFIGID: usize = 184;
/// TD report body: REPORTDATA offset (64 bytes).
pub const BODY_REPORT_DATA: usize = 520;
/// TD report body (TDX 1.0) size.
pub const BODY_LEN: usize = 584;

/// Offset of the TD report body in a quote.
pub fn body_offset(quote: &[u8]) -> Result<usize, TeeError> {
    let hdr = quote.get(..HEADER_LEN).ok_or_else(|| {
        TeeError::malformed(
            "TDX quote",
            format!("{} bytes, shorter than its header", quote.len()),
        )
    })?;
    let version = u16::from_le_bytes([hdr[0], hdr[1]]);
    let tee_type = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    if tee_type != TEE_TYPE_TDX {
        return Err(TeeError::Check {
            check: "TDX quote TEE type",
            expected: format!("{TEE_TYPE_TDX:#x}"),
            actual: format!("{tee_type:#x}"),
        });
    }
    let off = match version {
        4 => HEADER_LEN,
        // v5: u16 body type and u32 body size precede the body.
        5 => HEADER_LEN + 6,
        v => {
            return Err(TeeError::Check {
                check: "TDX quote version",
                expected: "4 or 5".into(),
                actual: v.to_string(),
            });
        }
    };
    if quote.len() < off + BODY_LEN {
        return Err(TeeError::malformed(
            "TDX quote",
            format!(
                "{} bytes, too short for a TD report body at offset {off}",
                quote.len()
            ),
        ));
    }
    Ok(off)
}

/// A field of the TD report body.
pub fn body_field(quote: &[u8], at: usize, len: usize) -> Result<&[u8], TeeError> {
    let off = body_offset(quote)?;
    Ok(&quote[off + at..off + at + len])
}

/// TDX attester.
#[derive(Debug)]
pub struct TdxAttester {
    tsm: TsmReport,
}

impl TdxAttester {
    /// An attester over a configfs-tsm generator (provider must be `tdx_guest`).
    pub fn new(tsm: TsmReport) -> Result<Self, TeeError> {
        if tsm.provider() != PROVIDER {
            return Err(TeeError::Check {
                check: "TDX configfs-tsm provider",
                expected: PROVIDER.into(),
                actual: tsm.provider().into(),
            });
        }
        Ok(TdxAttester { tsm })
    }

    fn quote(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
        let q = self.tsm.generate(report_data)?.outblob;
        let echoed = body_field(&q, BODY_REPORT_DATA, 64)?;
        if echoed != report_data.as_slice() {
            return Err(TeeError::Check {
                check: "TDX REPORTDATA echoed in the quote",
                expected: hex::encode(report_data),
                actual: hex::encode(echoed),
            });
        }
        Ok(q)
    }
}

impl Attester for TdxAttester {
    fn tee(&self) -> TeeKind {
        TeeKind::Tdx
    }

    fn evidence(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence, TeeError> {
        let q = self.quote(report_data)?;
        Ok(Evidence {
            tee: TeeKind::Tdx,
            json: serde_json::json!({
                "cc_eventlog": null,
                "quote": base64::engine::general_purpose::STANDARD.encode(&q),
            }),
        })
    }

    fn init_data_binding(&self) -> Result<Vec<u8>, TeeError> {
        let q = self.quote(&[0u8; REPORT_DATA_LEN])?;
        Ok(body_field(&q, BODY_MRCONFIGID, 48)?.to_vec())
    }

    fn measurement(&self) -> Result<Vec<u8>, TeeError> {
        let q = self.quote(&[0u8; REPORT_DATA_LEN])?;
        Ok(body_field(&q, BODY_MRTD, 48)?.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn body_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..800)) {
            let _ = body_field(&bytes, BODY_MRCONFIGID, 48);
        }
    }

    #[test]
    fn refuses_other_tee_types_and_versions() {
        let mut q = vec![0u8; HEADER_LEN + BODY_LEN];
        q[0] = 4;
        q[4] = 0x81;
        assert!(body_offset(&q).is_ok());
        q[4] = 0;
        assert!(
            body_offset(&q)
                .unwrap_err()
                .to_string()
                .contains("TEE type")
        );
        q[4] = 0x81;
        q[0] = 3;
        assert!(body_offset(&q).unwrap_err().to_string().contains("version"));
    }
}
