//! vCPU models: the CPUID signature (family/model/stepping) QEMU reports for
//! each named model, which SNP measures in every VMSA's RDX.

use crate::error::Error;

/// CPUID Fn0000_0001_EAX signature from family, model and stepping (AMD
/// CPUID specification #25481: extended family above 0xf, extended model).
pub const fn cpuid_signature(family: u32, model: u32, stepping: u32) -> u32 {
    let (family_low, family_ext) = if family > 0xf {
        (0xf, (family - 0xf) & 0xff)
    } else {
        (family, 0)
    };
    (family_ext << 20)
        | (((model >> 4) & 0xf) << 16)
        | (family_low << 8)
        | ((model & 0xf) << 4)
        | (stepping & 0xf)
}

/// A named QEMU vCPU model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuType {
    /// QEMU's name (`-cpu NAME`).
    pub name: &'static str,
    /// CPUID family.
    pub family: u32,
    /// CPUID model.
    pub model: u32,
    /// CPUID stepping.
    pub stepping: u32,
}

const fn t(name: &'static str, family: u32, model: u32, stepping: u32) -> VcpuType {
    VcpuType {
        name,
        family,
        model,
        stepping,
    }
}

/// The AMD EPYC models of QEMU's `builtin_x86_defs` (with their versions).
pub const VCPU_TYPES: &[VcpuType] = &[
    t("EPYC", 23, 1, 2),
    t("EPYC-v1", 23, 1, 2),
    t("EPYC-v2", 23, 1, 2),
    t("EPYC-IBPB", 23, 1, 2),
    t("EPYC-v3", 23, 1, 2),
    t("EPYC-v4", 23, 1, 2),
    t("EPYC-Rome", 23, 49, 0),
    t("EPYC-Rome-v1", 23, 49, 0),
    t("EPYC-Rome-v2", 23, 49, 0),
    t("EPYC-Rome-v3", 23, 49, 0),
    t("EPYC-Milan", 25, 1, 1),
    t("EPYC-Milan-v1", 25, 1, 1),
    t("EPYC-Milan-v2", 25, 1, 1),
    t("EPYC-Genoa", 25, 17, 0),
    t("EPYC-Genoa-v1", 25, 17, 0),
    t("EPYC-Turin", 26, 0, 0),
];

impl VcpuType {
    /// Look a model up by QEMU name (ASCII case-insensitive).
    pub fn from_name(name: &str) -> Result<VcpuType, Error> {
        VCPU_TYPES
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
            .copied()
            .ok_or_else(|| Error::UnknownVcpuType {
                name: name.chars().take(64).collect(),
                known: VCPU_TYPES
                    .iter()
                    .map(|t| t.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The CPUID signature.
    pub const fn signature(&self) -> u32 {
        cpuid_signature(self.family, self.model, self.stepping)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_real_cpus() {
        // Milan 7763: family 0x19 model 0x01 stepping 1 -> 0x00a00f11.
        assert_eq!(
            VcpuType::from_name("EPYC-Milan").unwrap().signature(),
            0x00a0_0f11
        );
        // Naples (EPYC): 0x00800f12; Rome 0x00830f10; Genoa 0x00a10f10.
        assert_eq!(
            VcpuType::from_name("epyc").unwrap().signature(),
            0x0080_0f12
        );
        assert_eq!(
            VcpuType::from_name("EPYC-Rome").unwrap().signature(),
            0x0083_0f10
        );
        assert_eq!(
            VcpuType::from_name("EPYC-Genoa").unwrap().signature(),
            0x00a1_0f10
        );
        assert_eq!(
            VcpuType::from_name("EPYC-Turin").unwrap().signature(),
            0x00b0_0f00
        );
    }

    #[test]
    fn unknown_type_lists_the_known_ones() {
        let e = VcpuType::from_name("Skylake").unwrap_err().to_string();
        assert!(e.contains("\"Skylake\"") && e.contains("EPYC-Milan"), "{e}");
    }
}
