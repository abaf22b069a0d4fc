//! The SEV-SNP ATTESTATION_REPORT structure (SEV-SNP ABI spec, table
//! "ATTESTATION_REPORT Structure"), versions 2, 3 and 5. Little-endian.

use std::ops::Range;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::fields::{arr, u32_at, u64_at};

/// Size of every report version this module understands.
pub const REPORT_LEN: usize = 0x4A0;
/// The ECDSA signature covers bytes `0x000..0x2A0`.
pub const SIGNED_RANGE: Range<usize> = 0x000..0x2A0;

const VERSION: Range<usize> = 0x000..0x004;
const GUEST_SVN: Range<usize> = 0x004..0x008;
const POLICY: Range<usize> = 0x008..0x010;
const FAMILY_ID: Range<usize> = 0x010..0x020;
const IMAGE_ID: Range<usize> = 0x020..0x030;
const VMPL: Range<usize> = 0x030..0x034;
const SIGNATURE_ALGO: Range<usize> = 0x034..0x038;
const CURRENT_TCB: Range<usize> = 0x038..0x040;
const PLATFORM_INFO: Range<usize> = 0x040..0x048;
const FLAGS: Range<usize> = 0x048..0x04C;
const REPORT_DATA: Range<usize> = 0x050..0x090;
const MEASUREMENT: Range<usize> = 0x090..0x0C0;
const HOST_DATA: Range<usize> = 0x0C0..0x0E0;
const ID_KEY_DIGEST: Range<usize> = 0x0E0..0x110;
const AUTHOR_KEY_DIGEST: Range<usize> = 0x110..0x140;
const REPORT_ID: Range<usize> = 0x140..0x160;
const REPORT_ID_MA: Range<usize> = 0x160..0x180;
const REPORTED_TCB: Range<usize> = 0x180..0x188;
/// CPUID family / model / stepping: version 3 and later.
const CPUID_FAM_ID: usize = 0x188;
const CPUID_MOD_ID: usize = 0x189;
const CPUID_STEP: usize = 0x18A;
const CHIP_ID: Range<usize> = 0x1A0..0x1E0;
const COMMITTED_TCB: Range<usize> = 0x1E0..0x1E8;
const CURRENT_VERSION: Range<usize> = 0x1E8..0x1EB;
const COMMITTED_VERSION: Range<usize> = 0x1EC..0x1EF;
const LAUNCH_TCB: Range<usize> = 0x1F0..0x1F8;
/// Mitigation vectors: version 5 and later.
const LAUNCH_MIT_VECTOR: Range<usize> = 0x1F8..0x200;
const CURRENT_MIT_VECTOR: Range<usize> = 0x200..0x208;
const SIG_R: Range<usize> = 0x2A0..0x2E8;
const SIG_S: Range<usize> = 0x2E8..0x330;

/// SIGNATURE_ALGO value for ECDSA P-384 with SHA-384.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// Guest policy bits (ABI spec, "GUEST_POLICY").
pub mod policy_bits {
    /// Simultaneous multithreading may be enabled.
    pub const SMT: u64 = 1 << 16;
    /// Reserved, must be one.
    pub const RESERVED_MBO: u64 = 1 << 17;
    /// Association with a migration agent is allowed.
    pub const MIGRATE_MA: u64 = 1 << 18;
    /// Debugging is allowed.
    pub const DEBUG: u64 = 1 << 19;
    /// Guest may run on only one socket.
    pub const SINGLE_SOCKET: u64 = 1 << 20;
    /// CXL may be populated with devices or memory.
    pub const CXL_ALLOW: u64 = 1 << 21;
    /// AES-256-XTS memory encryption required.
    pub const MEM_AES_256_XTS: u64 = 1 << 22;
    /// Running Average Power Limit must be disabled.
    pub const RAPL_DIS: u64 = 1 << 23;
    /// Ciphertext hiding must be enabled.
    pub const CIPHERTEXT_HIDING: u64 = 1 << 24;
    /// Guest support for page swap disabled.
    pub const PAGE_SWAP_DISABLE: u64 = 1 << 25;
}

/// Which key signed the report (FLAGS bits 4:2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SigningKey {
    /// Versioned Chip Endorsement Key (per chip, per TCB).
    Vcek,
    /// Versioned Loaded Endorsement Key (per cloud provider).
    Vlek,
    /// Report not signed.
    None,
}

/// AMD EPYC product generations with pinned roots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Product {
    /// EPYC 7003 (Zen 3).
    Milan,
    /// EPYC 9004 (Zen 4).
    Genoa,
    /// EPYC 9005 (Zen 5).
    Turin,
}

impl Product {
    /// All products, in release order.
    pub const ALL: [Product; 3] = [Product::Milan, Product::Genoa, Product::Turin];

    /// The name used by AMD (certificate CNs, KDS paths).
    pub fn name(self) -> &'static str {
        match self {
            Product::Milan => "Milan",
            Product::Genoa => "Genoa",
            Product::Turin => "Turin",
        }
    }

    /// Parse a product name, case-insensitively.
    pub fn from_name(s: &str) -> Option<Self> {
        Product::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
    }

    /// From CPUID family and model (reported from report version 3 on).
    pub fn from_cpuid(family: u8, model: u8) -> Option<Self> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Product::Milan),
            (0x19, 0x10..=0x1F) | (0x19, 0xA0..=0xAF) => Some(Product::Genoa),
            (0x1A, 0x00..=0x11) => Some(Product::Turin),
            _ => None,
        }
    }
}

/// A TCB_VERSION: security version numbers of the firmware components.
/// The byte layout differs between Milan/Genoa and Turin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TcbVersion {
    /// Turin and later: firmware for the ASP boot (FMC).
    pub fmc: Option<u8>,
    /// SVN of the PSP bootloader.
    pub bootloader: u8,
    /// SVN of the PSP operating system.
    pub tee: u8,
    /// SVN of the SNP firmware.
    pub snp: u8,
    /// Lowest microcode patch level of all cores.
    pub microcode: u8,
}

impl TcbVersion {
    /// Decode the 8-byte little-endian TCB_VERSION for a product.
    pub fn decode(raw: u64, turin_layout: bool) -> Self {
        let b = raw.to_le_bytes();
        if turin_layout {
            TcbVersion {
                fmc: Some(b[0]),
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            }
        } else {
            TcbVersion {
                fmc: None,
                bootloader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
            }
        }
    }

    /// Components as (name, svn), in the order KDS names them.
    pub fn components(&self) -> Vec<(&'static str, u8)> {
        let mut v = vec![
            ("bootloader", self.bootloader),
            ("tee", self.tee),
            ("snp", self.snp),
            ("microcode", self.microcode),
        ];
        if let Some(f) = self.fmc {
            v.push(("fmc", f));
        }
        v
    }
}

/// A parsed SNP attestation report. Borrowed fields are copied out; the raw
/// bytes are kept for signature verification.
#[derive(Debug, Clone)]
pub struct Report {
    raw: Vec<u8>,
    /// Report format version (2, 3 or 5).
    pub version: u32,
    /// Guest SVN chosen by the guest owner.
    pub guest_svn: u32,
    /// Guest policy (see [`policy_bits`]).
    pub policy: u64,
    /// Family ID from the ID block.
    pub family_id: [u8; 16],
    /// Image ID from the ID block.
    pub image_id: [u8; 16],
    /// VM permission level that requested the report.
    pub vmpl: u32,
    /// Signature algorithm (1 = ECDSA P-384 with SHA-384).
    pub signature_algo: u32,
    /// Current TCB of the platform.
    pub current_tcb: u64,
    /// Platform information flags (SMT, TSME, …).
    pub platform_info: u64,
    /// Raw FLAGS word.
    pub flags: u32,
    /// Guest-provided data (binding digest).
    pub report_data: [u8; 64],
    /// Launch measurement.
    pub measurement: [u8; 48],
    /// Host-provided data at launch (init-data digest).
    pub host_data: [u8; 32],
    /// SHA-384 of the ID key that signed the ID block.
    pub id_key_digest: [u8; 48],
    /// SHA-384 of the author key.
    pub author_key_digest: [u8; 48],
    /// Report ID of this guest.
    pub report_id: [u8; 32],
    /// Report ID of the migration agent.
    pub report_id_ma: [u8; 32],
    /// TCB used to derive the signing VCEK.
    pub reported_tcb: u64,
    /// CPUID family, model, stepping (version 3+).
    pub cpuid: Option<(u8, u8, u8)>,
    /// Chip identifier (zero if masked).
    pub chip_id: [u8; 64],
    /// Committed TCB.
    pub committed_tcb: u64,
    /// Current firmware version (build, minor, major).
    pub current_version: [u8; 3],
    /// Committed firmware version (build, minor, major).
    pub committed_version: [u8; 3],
    /// TCB at launch.
    pub launch_tcb: u64,
    /// Mitigation vectors at launch and now (version 5+).
    pub mit_vectors: Option<(u64, u64)>,
    /// Signature component r, big-endian, 48 bytes.
    pub sig_r: [u8; 48],
    /// Signature component s, big-endian, 48 bytes.
    pub sig_s: [u8; 48],
}

/// Convert a 72-byte little-endian signature component to 48 bytes big-endian.
/// The upper 24 bytes must be zero for a P-384 scalar.
fn sig_component(b: &[u8], r: Range<usize>, name: &str) -> Result<[u8; 48]> {
    let start = r.start;
    let field = &b[r];
    if field[48..].iter().any(|&x| x != 0) {
        return Err(Error::malformed(
            "SNP report",
            format!("signature {name} at offset {start:#x}: bytes 48..72 must be zero for P-384"),
        ));
    }
    let mut out = [0u8; 48];
    for (i, v) in field[..48].iter().enumerate() {
        out[47 - i] = *v;
    }
    Ok(out)
}

impl Report {
    /// Parse a raw report. Rejects anything that is not exactly
    /// [`REPORT_LEN`] bytes of a known version.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != REPORT_LEN {
            return Err(Error::malformed(
                "SNP report",
                format!(
                    "length is {} bytes, an attestation report is {REPORT_LEN} (0x4a0)",
                    bytes.len()
                ),
            ));
        }
        let version = u32_at(bytes, VERSION);
        if !matches!(version, 2..=5) {
            return Err(Error::malformed(
                "SNP report",
                format!("version at offset 0x0 is {version}; supported: 2, 3, 4, 5"),
            ));
        }
        let cpuid =
            (version >= 3).then(|| (bytes[CPUID_FAM_ID], bytes[CPUID_MOD_ID], bytes[CPUID_STEP]));
        let mit_vectors = (version >= 5).then(|| {
            (
                u64_at(bytes, LAUNCH_MIT_VECTOR),
                u64_at(bytes, CURRENT_MIT_VECTOR),
            )
        });
        Ok(Report {
            version,
            guest_svn: u32_at(bytes, GUEST_SVN),
            policy: u64_at(bytes, POLICY),
            family_id: arr(bytes, FAMILY_ID),
            image_id: arr(bytes, IMAGE_ID),
            vmpl: u32_at(bytes, VMPL),
            signature_algo: u32_at(bytes, SIGNATURE_ALGO),
            current_tcb: u64_at(bytes, CURRENT_TCB),
            platform_info: u64_at(bytes, PLATFORM_INFO),
            flags: u32_at(bytes, FLAGS),
            report_data: arr(bytes, REPORT_DATA),
            measurement: arr(bytes, MEASUREMENT),
            host_data: arr(bytes, HOST_DATA),
            id_key_digest: arr(bytes, ID_KEY_DIGEST),
            author_key_digest: arr(bytes, AUTHOR_KEY_DIGEST),
            report_id: arr(bytes, REPORT_ID),
            report_id_ma: arr(bytes, REPORT_ID_MA),
            reported_tcb: u64_at(bytes, REPORTED_TCB),
            cpuid,
            chip_id: arr(bytes, CHIP_ID),
            committed_tcb: u64_at(bytes, COMMITTED_TCB),
            current_version: arr(bytes, CURRENT_VERSION),
            committed_version: arr(bytes, COMMITTED_VERSION),
            launch_tcb: u64_at(bytes, LAUNCH_TCB),
            mit_vectors,
            sig_r: sig_component(bytes, SIG_R, "r")?,
            sig_s: sig_component(bytes, SIG_S, "s")?,
            raw: bytes.to_vec(),
        })
    }

    /// The bytes covered by the signature.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[SIGNED_RANGE]
    }

    /// The whole raw report.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// Which key signed the report.
    pub fn signing_key(&self) -> Result<SigningKey> {
        match (self.flags >> 2) & 0b111 {
            0 => Ok(SigningKey::Vcek),
            1 => Ok(SigningKey::Vlek),
            7 => Ok(SigningKey::None),
            other => Err(Error::malformed(
                "SNP report",
                format!(
                    "FLAGS.SIGNING_KEY at offset 0x48 is {other}; known: 0 (VCEK), 1 (VLEK), 7 (none)"
                ),
            )),
        }
    }

    /// True when MASK_CHIP_ID was set (chip_id reported as zeros).
    pub fn chip_id_masked(&self) -> bool {
        self.flags & 0b10 != 0
    }

    /// Product from CPUID, when the report carries it.
    pub fn product_from_cpuid(&self) -> Option<Product> {
        self.cpuid.and_then(|(f, m, _)| Product::from_cpuid(f, m))
    }

    /// Reported TCB, decoded with the layout of `product`.
    pub fn reported_tcb_for(&self, product: Product) -> TcbVersion {
        TcbVersion::decode(self.reported_tcb, product == Product::Turin)
    }

    /// All fields as JSON (the `raw` part of the claims).
    pub fn to_json(&self, product: Product) -> serde_json::Value {
        let turin = product == Product::Turin;
        let p = self.policy;
        let pi = self.platform_info;
        serde_json::json!({
            "version": self.version,
            "guest_svn": self.guest_svn,
            "policy": format!("{p:#x}"),
            "policy_abi_major": (p >> 8) & 0xff,
            "policy_abi_minor": p & 0xff,
            "policy_smt_allowed": p & policy_bits::SMT != 0,
            "policy_migrate_ma": p & policy_bits::MIGRATE_MA != 0,
            "policy_debug_allowed": p & policy_bits::DEBUG != 0,
            "policy_single_socket": p & policy_bits::SINGLE_SOCKET != 0,
            "policy_cxl_allowed": p & policy_bits::CXL_ALLOW != 0,
            "policy_mem_aes_256_xts": p & policy_bits::MEM_AES_256_XTS != 0,
            "policy_rapl_dis": p & policy_bits::RAPL_DIS != 0,
            "policy_ciphertext_hiding": p & policy_bits::CIPHERTEXT_HIDING != 0,
            "policy_page_swap_disable": p & policy_bits::PAGE_SWAP_DISABLE != 0,
            "family_id": hex::encode(self.family_id),
            "image_id": hex::encode(self.image_id),
            "vmpl": self.vmpl,
            "signature_algo": self.signature_algo,
            "current_tcb": TcbVersion::decode(self.current_tcb, turin),
            "platform_info": format!("{pi:#x}"),
            "platform_smt_enabled": pi & 1 != 0,
            "platform_tsme_enabled": pi & 2 != 0,
            "platform_ecc_enabled": pi & 4 != 0,
            "platform_rapl_disabled": pi & 8 != 0,
            "platform_ciphertext_hiding_enabled": pi & 16 != 0,
            "flags": format!("{:#x}", self.flags),
            "author_key_en": self.flags & 1 != 0,
            "mask_chip_id": self.chip_id_masked(),
            "signing_key": self.signing_key().ok(),
            "report_data": hex::encode(self.report_data),
            "measurement": hex::encode(self.measurement),
            "host_data": hex::encode(self.host_data),
            "id_key_digest": hex::encode(self.id_key_digest),
            "author_key_digest": hex::encode(self.author_key_digest),
            "report_id": hex::encode(self.report_id),
            "report_id_ma": hex::encode(self.report_id_ma),
            "reported_tcb": TcbVersion::decode(self.reported_tcb, turin),
            "cpuid_fam_id": self.cpuid.map(|c| c.0),
            "cpuid_mod_id": self.cpuid.map(|c| c.1),
            "cpuid_step": self.cpuid.map(|c| c.2),
            "chip_id": hex::encode(self.chip_id),
            "committed_tcb": TcbVersion::decode(self.committed_tcb, turin),
            "current_version": format!("{}.{}.{}", self.current_version[2], self.current_version[1], self.current_version[0]),
            "committed_version": format!("{}.{}.{}", self.committed_version[2], self.committed_version[1], self.committed_version[0]),
            "launch_tcb": TcbVersion::decode(self.launch_tcb, turin),
            "launch_mit_vector": self.mit_vectors.map(|m| format!("{:#x}", m.0)),
            "current_mit_vector": self.mit_vectors.map(|m| format!("{:#x}", m.1)),
        })
    }
}
