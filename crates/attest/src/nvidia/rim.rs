//! NVIDIA reference integrity manifests (RIMs): SWID tags (ISO/IEC
//! 19770-2, TCG RIM information model) that list, per measurement index,
//! the values a genuine driver or VBIOS produces. One RIM describes the
//! driver, one the VBIOS; together they cover the report's measurements.
//!
//! [`Rim::verify`] checks a RIM's XML-DSig signature (see [`super::xmldsig`])
//! and the signer's chain to NVIDIA's pinned RIM root at a given time;
//! [`Rim::parse`] does not, and the resulting [`Rim`] says so
//! (`signed_by: None`): comparing a report with an unverified RIM says
//! whether they agree, not that NVIDIA published the RIM.
//!
//! RIM indices are 0-based; report measurement block indices are 1-based:
//! RIM index `i` describes block `i + 1`.

use roxmltree::{Document, Node, ParsingOptions};

use super::certs;
use super::report::Report;
use crate::error::{Error, Result};

/// Largest RIM accepted (NVIDIA's are about 20 KiB).
pub const MAX_RIM_BYTES: usize = 1 << 20;
/// Most XML nodes a RIM may have (NVIDIA's have a few hundred).
const MAX_NODES: u32 = 20_000;
/// ISO/IEC 19770-2:2015 SWID tag namespace.
const SWID_NS: &str = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd";
/// Namespace of the `HashN` attributes: SHA-384 digests.
const SHA384_NS: &str = "http://www.w3.org/2001/04/xmlenc#sha384";
/// Most alternatives one index may list.
const MAX_ALTERNATIVES: usize = 64;

const WHAT: &str = "NVIDIA RIM";

/// One measurement entry of a RIM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RimMeasurement {
    /// RIM index (0-based; report block `index + 1`).
    pub index: u8,
    /// Only active entries are compared with the report.
    pub active: bool,
    /// Entry name (`HashedMeasurement_1_FSP`).
    pub name: String,
    /// Size of each value, bytes.
    pub size: usize,
    /// Acceptable values; the report's must equal one of them.
    pub alternatives: Vec<Vec<u8>>,
}

/// A parsed (not signature-verified) RIM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rim {
    /// SWID `tagId`.
    pub tag_id: String,
    /// SWID `name`: the product (`GH100`).
    pub name: String,
    /// `Meta/@colloquialVersion`: the driver or VBIOS version it describes.
    pub version: String,
    /// Measurement entries, in document order, indices unique.
    pub measurements: Vec<RimMeasurement>,
    /// Common name of the certificate whose signature was verified up to
    /// NVIDIA's RIM root, or `None` when the RIM was only parsed.
    pub signed_by: Option<String>,
    /// The signer's certificates below NVIDIA's RIM root, leaf first
    /// (empty when the RIM was only parsed).
    pub signer_chain: Vec<x509_cert::Certificate>,
    /// Whether [`Rim::check_revocation`] passed.
    pub revocation_checked: bool,
}

/// A report measurement that matches none of a RIM's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Report block index (1-based).
    pub block_index: u8,
    /// Tag ID of the RIM that set the expectation.
    pub rim_tag_id: String,
    /// Acceptable values, hex.
    pub expected: Vec<String>,
    /// The report's value, hex (empty when the block is missing).
    pub actual: String,
}

fn malformed(reason: String) -> Error {
    Error::malformed(WHAT, reason)
}

fn swid<'a, 'i>(n: Node<'a, 'i>, local: &str) -> bool {
    n.is_element() && n.tag_name().name() == local && n.tag_name().namespace() == Some(SWID_NS)
}

fn attr<'a>(n: Node<'a, '_>, name: &str, what: &str) -> Result<&'a str> {
    n.attribute(name)
        .ok_or_else(|| malformed(format!("{what} has no {name} attribute")))
}

fn document(xml: &[u8]) -> Result<Document<'_>> {
    if xml.len() > MAX_RIM_BYTES {
        return Err(malformed(format!(
            "{} bytes, the limit is {MAX_RIM_BYTES}",
            xml.len()
        )));
    }
    let text = std::str::from_utf8(xml).map_err(|e| malformed(format!("not UTF-8: {e}")))?;
    let opts = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
    };
    Document::parse_with_options(text, opts).map_err(|e| malformed(format!("XML: {e}")))
}

impl Rim {
    /// Parse a RIM and verify its signature and the signer's certificate
    /// chain to NVIDIA's pinned RIM root at `now_unix` (`nvidia.rim_signature`,
    /// `nvidia.rim_chain`, `nvidia.rim_cert_validity`).
    pub fn verify(xml: &[u8], now_unix: u64) -> Result<Self> {
        let doc = document(xml)?;
        let chain = super::xmldsig::verify_enveloped(&doc)?;
        certs::verify_chain(certs::RIM_CHAIN, &chain, now_unix)?;
        let mut rim = Self::from_document(&doc)?;
        rim.signed_by = chain.first().map(certs::subject_cn);
        rim.signer_chain = chain;
        if rim.signer_chain.last() == Some(certs::rim_root()) {
            rim.signer_chain.pop();
        }
        Ok(rim)
    }

    /// Check the signer's certificates against OCSP responses supplied as
    /// files (`nvidia.rim_ocsp`); a merely parsed RIM is refused
    /// (`nvidia.rim_signature`).
    pub fn check_revocation(
        &mut self,
        responses: &[super::ocsp::Response],
        fresh: &super::ocsp::Freshness,
    ) -> Result<()> {
        if self.signed_by.is_none() {
            return Err(Error::refused(
                "nvidia.rim_signature",
                format!(
                    "RIM {} was parsed but its signature was not verified: nothing to check revocation of",
                    self.tag_id
                ),
            ));
        }
        super::ocsp::check_chain(
            "nvidia.rim_ocsp",
            &self.signer_chain,
            certs::rim_root(),
            responses,
            fresh,
        )?;
        self.revocation_checked = true;
        Ok(())
    }

    /// Parse a RIM (UTF-8 XML, no DTD) without verifying its signature.
    pub fn parse(xml: &[u8]) -> Result<Self> {
        Self::from_document(&document(xml)?)
    }

    fn from_document(doc: &Document<'_>) -> Result<Self> {
        let root = doc.root_element();
        if !swid(root, "SoftwareIdentity") {
            return Err(malformed(format!(
                "root element is {:?}, expected SoftwareIdentity in {SWID_NS}",
                root.tag_name().name()
            )));
        }
        let tag_id = attr(root, "tagId", "SoftwareIdentity")?.to_string();
        let name = attr(root, "name", "SoftwareIdentity")?.to_string();
        let mut metas = root.children().filter(|n| swid(*n, "Meta"));
        let meta = metas
            .next()
            .ok_or_else(|| malformed("no Meta element".into()))?;
        if metas.next().is_some() {
            return Err(malformed("more than one Meta element".into()));
        }
        let version = attr(meta, "colloquialVersion", "Meta")?.to_string();
        let mut payloads = root.children().filter(|n| swid(*n, "Payload"));
        let payload = payloads
            .next()
            .ok_or_else(|| malformed("no Payload element".into()))?;
        if payloads.next().is_some() {
            return Err(malformed("more than one Payload element".into()));
        }
        let mut measurements: Vec<RimMeasurement> = Vec::new();
        for res in payload.children().filter(|n| swid(*n, "Resource")) {
            if res.attribute("type") != Some("Measurement") {
                continue;
            }
            let m = parse_measurement(res)?;
            if measurements.iter().any(|o| o.index == m.index) {
                return Err(malformed(format!(
                    "measurement index {} is listed twice",
                    m.index
                )));
            }
            measurements.push(m);
        }
        Ok(Rim {
            tag_id,
            name,
            version,
            measurements,
            signed_by: None,
            signer_chain: Vec::new(),
            revocation_checked: false,
        })
    }

    /// Refuse a RIM that describes another version than `actual`
    /// (`what` is `driver` or `VBIOS`). Versions compare case-insensitively.
    pub fn check_version(&self, what: &str, actual: &str) -> Result<()> {
        if self.version.eq_ignore_ascii_case(actual) {
            return Ok(());
        }
        Err(Error::mismatch(
            "nvidia.rim_version",
            format!(
                "the {what} RIM {} describes another {what} version than the report",
                self.tag_id
            ),
            self.version.clone(),
            actual.to_string(),
        ))
    }
}

fn parse_measurement(res: Node<'_, '_>) -> Result<RimMeasurement> {
    let raw_index = attr(res, "index", "Resource")?;
    let index: u8 = raw_index
        .parse()
        .ok()
        .filter(|i| *i < u8::MAX)
        .ok_or_else(|| malformed(format!("Resource index {raw_index:?} is not 0..=254")))?;
    let what = format!("measurement index {index}");
    let active = match attr(res, "active", &what)? {
        "True" | "true" => true,
        "False" | "false" => false,
        other => return Err(malformed(format!("{what}: active is {other:?}"))),
    };
    let size: usize = attr(res, "size", &what)?
        .parse()
        .map_err(|e| malformed(format!("{what}: size: {e}")))?;
    let count: usize = attr(res, "alternatives", &what)?
        .parse()
        .map_err(|e| malformed(format!("{what}: alternatives: {e}")))?;
    if count == 0 || count > MAX_ALTERNATIVES {
        return Err(malformed(format!(
            "{what}: alternatives is {count}, expected 1..={MAX_ALTERNATIVES}"
        )));
    }
    let mut alternatives = Vec::with_capacity(count);
    for n in 0..count {
        let key = format!("Hash{n}");
        let v = res.attribute((SHA384_NS, key.as_str())).ok_or_else(|| {
            malformed(format!(
                "{what}: {count} alternatives announced, no {key} (SHA-384) attribute"
            ))
        })?;
        let bytes = hex::decode(v).map_err(|e| malformed(format!("{what}: {key}: {e}")))?;
        if bytes.len() != size {
            return Err(malformed(format!(
                "{what}: {key} is {} bytes, size says {size}",
                bytes.len()
            )));
        }
        alternatives.push(bytes);
    }
    Ok(RimMeasurement {
        index,
        active,
        name: res.attribute("name").unwrap_or_default().to_string(),
        size,
        alternatives,
    })
}

/// Compare the report's measurement blocks with the active entries of
/// `rims` (the driver's and the VBIOS's). Returns every mismatch; an index
/// active in two RIMs is refused (`nvidia.rim_measurement`), as NVIDIA's
/// verifier does. Agreement only, like [`check_measurements`].
pub fn compare(report: &Report, rims: &[&Rim]) -> Result<Vec<Mismatch>> {
    let mut seen: Vec<(u8, &str)> = Vec::new();
    let mut mismatches = Vec::new();
    for rim in rims {
        for m in rim.measurements.iter().filter(|m| m.active) {
            if let Some((_, other)) = seen.iter().find(|(i, _)| *i == m.index) {
                return Err(Error::refused(
                    "nvidia.rim_measurement",
                    format!(
                        "RIM index {} is active in both RIM {other} and RIM {}",
                        m.index, rim.tag_id
                    ),
                ));
            }
            seen.push((m.index, &rim.tag_id));
            let block_index = m.index + 1;
            let actual = report
                .measurements
                .iter()
                .find(|b| b.index == block_index)
                .map(|b| b.value.as_slice());
            if actual.is_some_and(|a| m.alternatives.iter().any(|alt| alt == a)) {
                continue;
            }
            mismatches.push(Mismatch {
                block_index,
                rim_tag_id: rim.tag_id.clone(),
                expected: m.alternatives.iter().map(hex::encode).collect(),
                actual: actual.map(hex::encode).unwrap_or_default(),
            });
        }
    }
    Ok(mismatches)
}

/// Refuse the report unless every active RIM entry matches
/// (`nvidia.rim_measurement`, naming the first mismatching index). Checks
/// agreement only: whether the RIMs were verified is [`appraise`]'s job.
pub fn check_measurements(report: &Report, rims: &[&Rim]) -> Result<()> {
    let Some(m) = compare(report, rims)?.into_iter().next() else {
        return Ok(());
    };
    Err(Error::mismatch(
        "nvidia.rim_measurement",
        format!(
            "measurement block {} (RIM index {}) matches none of RIM {}'s values",
            m.block_index,
            m.block_index - 1,
            m.rim_tag_id
        ),
        m.expected.join(" or "),
        if m.actual.is_empty() {
            "no such block".to_string()
        } else {
            m.actual
        },
    ))
}

/// The two RIMs that describe a GPU's report.
#[derive(Debug, Clone, Copy)]
pub struct Rims<'a> {
    /// The RIM for the report's driver version.
    pub driver: &'a Rim,
    /// The RIM for the report's VBIOS version.
    pub vbios: &'a Rim,
}

/// Appraise a report with its RIMs: both must have been verified
/// ([`Rim::verify`]; a merely parsed RIM is refused as
/// `nvidia.rim_signature`), describe the report's driver and VBIOS versions
/// (`nvidia.rim_version`) and agree with every measurement
/// (`nvidia.rim_measurement`).
pub fn appraise(report: &Report, rims: &Rims<'_>) -> Result<()> {
    for (what, rim) in [("driver", rims.driver), ("VBIOS", rims.vbios)] {
        if rim.signed_by.is_none() {
            return Err(Error::refused(
                "nvidia.rim_signature",
                format!(
                    "the {what} RIM {} was parsed but its signature was not verified",
                    rim.tag_id
                ),
            ));
        }
    }
    rims.driver
        .check_version("driver", &report.driver_version()?)?;
    rims.vbios
        .check_version("VBIOS", &report.vbios_version()?)?;
    check_measurements(report, &[rims.driver, rims.vbios])
}
