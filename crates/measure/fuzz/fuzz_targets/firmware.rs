//! The OVMF table, SEV metadata and TDVF metadata parsers and both
//! measurements on arbitrary firmware bytes: errors, never panics or hangs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_measure::Firmware;
use veil_measure::snp::{self, SnpLaunch, VmmType};
use veil_measure::tdx::{self, PageAddOrder};

fuzz_target!(|data: &[u8]| {
    let Ok(fw) = Firmware::parse(data) else {
        return;
    };
    let _ = fw.sev_sections();
    let _ = fw.tdvf_sections();
    for vmm in [VmmType::Qemu, VmmType::Ec2, VmmType::Gce] {
        let launch = SnpLaunch {
            vcpus: 2,
            vcpu_sig: 0x00a0_0f11,
            guest_features: 1,
            vmm,
            kernel_hashes: None,
        };
        let _ = snp::launch_digest(&fw, &launch);
    }
    let _ = tdx::mrtd(&fw, PageAddOrder::SinglePass);
    let _ = tdx::mrtd(&fw, PageAddOrder::TwoPass);
});
