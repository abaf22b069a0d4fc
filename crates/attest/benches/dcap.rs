//! `cargo bench -p veil-attest --bench dcap`: TDX and SGX quotes verified per
//! second with collateral already parsed, beside the baseline (dcap-qvl's own
//! verifier on the same inputs), on the shared fixtures.

use std::time::Duration;

use veil_attest::Tee;
use veil_attest::dcap::bench::measure;
use veil_attest::dcap::{Collateral, TcbPolicy, TcbStatus, parse_rfc3339};

fn fixture(p: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../../shared/fixtures/{p}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn main() {
    let now = parse_rfc3339("2025-07-01T00:00:00Z").expect("time");
    let min = Duration::from_secs(3);
    let policy = TcbPolicy::default()
        .accept(TcbStatus::ConfigurationAndSWHardeningNeeded)
        .expect("policy");
    for (tee, dir) in [(Tee::Tdx, "tdx"), (Tee::Sgx, "sgx")] {
        let quote = fixture(&format!("{dir}/quote.bin"));
        let coll =
            Collateral::from_json(&fixture(&format!("{dir}/collateral.json"))).expect("collateral");
        let f = measure(tee, &quote, &coll, &policy, now, min).expect("bench");
        println!(
            "{:<36} {:>9.0}/s   baseline {}: {:>9.0}/s   ratio {:.2}",
            f.name, f.per_second, f.baseline, f.baseline_per_second, f.ratio
        );
    }
}
