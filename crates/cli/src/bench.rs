//! `veil bench …`: throughput figures against a named baseline in the same
//! run. Benchmarks report; they never fail on a number.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

/// Measure veil against named baselines.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Evidence verified per second (SNP, TDX, SGX…) on one core.
    Attest(AttestBench),
    /// KBS handshakes/s (auth + sim attest + resource GET) vs the crypto alone.
    Kbs(KbsBench),
    /// `veil run` to first output line vs `runc run` of the same bundle.
    Run(crate::run::bench::RunBench),
    /// `veil image decrypt` vs `skopeo copy --decryption-key` and `veil
    /// image measure` vs `veritysetup format` on the same data.
    Image(crate::image::BenchArgs),
    /// Redis (redis-benchmark) and nginx (wrk) in the process sandbox vs
    /// the same Debian binaries run natively.
    Service(crate::run::bench_service::ServiceBench),
    /// Sequential and 4 KiB random I/O on an encrypted volume (LUKS2,
    /// dm-crypt + dm-integrity) vs the same disk unencrypted, in one VM.
    Volume(crate::run::bench_volume::VolumeBench),
}

/// Arguments of `veil bench kbs`.
#[derive(Args)]
pub struct KbsBench {
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Handshakes per client.
    #[arg(long, default_value_t = 50)]
    pub handshakes: usize,
    /// Server runtime worker threads.
    #[arg(long, default_value_t = 2)]
    pub server_workers: usize,
    /// TEE key type: ec-p256, ec-p521, rsa2048, rsa3072.
    #[arg(long, default_value = "ec-p256")]
    pub key_type: veil_kbs_client::KeyType,
    /// Load this KBS (veil's or Trustee's) instead of an in-process one:
    /// full handshakes and attested resource GETs at each --client-counts,
    /// with CoCo `sample` evidence.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Evidence for --url: only `sample` (CoCo's development TEE, no
    /// cryptography; the KBS must be started to accept it).
    #[arg(long, default_value = "sample", requires = "url")]
    pub tee: String,
    /// The resource each operation fetches (--url; the KBS must hold it and
    /// release it to sample evidence).
    #[arg(long, default_value = "default/bench/key", requires = "url")]
    pub resource: String,
    /// Client counts (--url), one row each per workload.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,8,32",
        requires = "url"
    )]
    pub client_counts: Vec<usize>,
    /// Seconds per row (--url).
    #[arg(long, default_value_t = 20.0, requires = "url")]
    pub seconds: f64,
    /// The server's PID (--url), for its CPU time per operation.
    #[arg(long, value_name = "PID", requires = "url")]
    pub server_pid: Option<u32>,
    /// CA certificate (PEM) for an https:// --url.
    #[arg(long, value_name = "FILE", requires = "url")]
    pub ca: Option<std::path::PathBuf>,
    /// Allow an http:// --url (loopback development servers).
    #[arg(long, requires = "url")]
    pub insecure_http: bool,
    /// Print JSON rows (--url).
    #[arg(long, requires = "url")]
    pub json: bool,
}

/// Arguments of `veil bench attest`.
#[derive(Args)]
pub struct AttestBench {
    /// Read the evidence from this fixtures folder (laid out as the repo's
    /// shared/fixtures) instead of the copies built into veil.
    #[arg(long, value_name = "DIR")]
    pub fixtures: Option<PathBuf>,
    /// Minimum seconds per measured method.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only this TEE's evidence: `nvidia` measures GPU reports beside
    /// NVIDIA's Python verifier (default: the CPU TEEs).
    #[arg(long, value_name = "TEE")]
    pub tee: Option<String>,
    /// The python of a venv with NVIDIA's `nv-local-gpu-verifier` (default:
    /// the one scripts/install-deps.sh makes under ~/.cache/veil).
    #[arg(long, value_name = "PATH")]
    pub nvidia_python: Option<PathBuf>,
}

/// Run a bench subcommand.
pub fn run(cmd: BenchCommand) -> Result<ExitCode> {
    match cmd {
        BenchCommand::Attest(a) => attest(a),
        BenchCommand::Kbs(a) => kbs(a),
        BenchCommand::Run(a) => crate::run::bench::run(a),
        BenchCommand::Image(a) => crate::image::bench(a),
        BenchCommand::Service(a) => crate::run::bench_service::bench(a),
        BenchCommand::Volume(a) => crate::run::bench_volume::bench(a),
    }
}

fn kbs(a: KbsBench) -> Result<ExitCode> {
    if let Some(url) = &a.url {
        return kbs_load(&a, url);
    }
    let opts = veil_kbs::bench::BenchOptions {
        clients: a.clients,
        handshakes_per_client: a.handshakes,
        server_workers: a.server_workers,
        key_type: a.key_type,
        ..Default::default()
    };
    let report = veil_kbs::bench::run(&opts).map_err(anyhow::Error::msg)?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

/// `veil bench kbs --url`: the load generator against any KBS.
fn kbs_load(a: &KbsBench, url: &str) -> Result<ExitCode> {
    use veil_kbs::loadgen::{self, LoadOptions, Workload};
    if a.tee != "sample" {
        anyhow::bail!(
            "--tee {}: against another KBS the load generator sends only `sample` evidence (hardware evidence cannot be minted at will); use --tee sample",
            a.tee
        );
    }
    if !(a.seconds > 0.0 && a.seconds <= 3600.0) {
        anyhow::bail!("--seconds must be in (0, 3600], got {}", a.seconds);
    }
    if a.client_counts.is_empty() || a.client_counts.iter().any(|&c| c == 0 || c > 1024) {
        anyhow::bail!("--client-counts must list 1 to 1024 clients each");
    }
    let client = crate::kbs::client_config(&crate::kbs::ConnArgs {
        url: url.to_string(),
        ca: a.ca.clone(),
        insecure_http: a.insecure_http,
    })?;
    let o = LoadOptions {
        client,
        resource: veil_kbs_client::ResourcePath::parse(&a.resource)?,
        clients: a.client_counts.clone(),
        duration: Duration::from_secs_f64(a.seconds),
        key_type: a.key_type,
        server_pid: a.server_pid,
        workloads: vec![Workload::Handshake, Workload::Get],
    };
    let rows = loadgen::run(&o).map_err(anyhow::Error::msg)?;
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", loadgen::table(&o, &rows));
    }
    Ok(ExitCode::SUCCESS)
}

/// The real evidence `veil bench attest` measures, built into the binary
/// (from the repo's shared/fixtures) so the command runs anywhere.
const EMBEDDED: &[(&str, &[u8])] = &[
    (
        "snp/milan-vcek-report.bin",
        include_bytes!("../../../../shared/fixtures/snp/milan-vcek-report.bin"),
    ),
    (
        "snp/milan-vcek.der",
        include_bytes!("../../../../shared/fixtures/snp/milan-vcek.der"),
    ),
    (
        "tdx/quote.bin",
        include_bytes!("../../../../shared/fixtures/tdx/quote.bin"),
    ),
    (
        "tdx/collateral.json",
        include_bytes!("../../../../shared/fixtures/tdx/collateral.json"),
    ),
    (
        "sgx/quote.bin",
        include_bytes!("../../../../shared/fixtures/sgx/quote.bin"),
    ),
    (
        "sgx/collateral.json",
        include_bytes!("../../../../shared/fixtures/sgx/collateral.json"),
    ),
    (
        "azure-snp-vtpm/evidence-v2.json",
        include_bytes!("../../../../shared/fixtures/azure-snp-vtpm/evidence-v2.json"),
    ),
    (
        "nvidia/hopperAttestationReport.txt",
        include_bytes!("../../../../shared/fixtures/nvidia/hopperAttestationReport.txt"),
    ),
    (
        "nvidia/hopperCertChain.txt",
        include_bytes!("../../../../shared/fixtures/nvidia/hopperCertChain.txt"),
    ),
];

fn embedded(name: &str) -> Result<Vec<u8>> {
    EMBEDDED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| b.to_vec())
        .with_context(|| format!("{name} is not built into veil; pass --fixtures DIR"))
}

fn attest(a: AttestBench) -> Result<ExitCode> {
    let min = Duration::from_secs_f64(a.seconds);
    let read = |p: &str| -> Result<Vec<u8>> {
        match &a.fixtures {
            Some(dir) => {
                let path = dir.join(p);
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
            }
            None => embedded(p),
        }
    };
    match a.tee.as_deref() {
        None => {}
        Some("nvidia") => return crate::attest_gpu::bench(&a, &read),
        Some(other) => anyhow::bail!(
            "veil bench attest --tee {}: no GPU/TEE benchmark by that name; \
             use --tee nvidia, or no --tee for the CPU TEEs",
            veil_kbs::text::escape_controls(other)
        ),
    }
    // 2025-01-01: inside the fixture certificates' validity.
    let now = 1_735_689_600;
    let snp = veil_attest::snp::bench::measure(
        &read("snp/milan-vcek-report.bin")?,
        &read("snp/milan-vcek.der")?,
        0,
        now,
        min,
    )?;
    // The named baseline: OpenSSL's own P-384 verify rate, same run, one
    // core (`openssl speed` is single-threaded).
    let openssl_p384 = openssl_ecdsa_verify_per_second("ecdsap384", a.seconds);
    let mut out = serde_json::json!({
        "snp": snp,
        "openssl_ecdsap384_verify_per_second": openssl_p384,
        "snp_cached_vs_openssl_p384": openssl_p384.map(|o| snp.cached_chain_per_second / o),
    });

    // TDX and SGX at a time inside their collateral window (2025-07-01).
    let dcap_now = 1_751_328_000;
    let mut dcap = Vec::new();
    for (tee, dir) in [
        (veil_attest::Tee::Tdx, "tdx"),
        (veil_attest::Tee::Sgx, "sgx"),
    ] {
        let quote = read(&format!("{dir}/quote.bin"))?;
        let coll =
            veil_attest::dcap::Collateral::from_json(&read(&format!("{dir}/collateral.json"))?)?;
        use veil_attest::dcap::TcbStatus::*;
        // The SGX fixture's platform needs configuration + SW hardening.
        let policy = veil_attest::dcap::TcbPolicy::strict()
            .accept_all([
                SWHardeningNeeded,
                ConfigurationNeeded,
                ConfigurationAndSWHardeningNeeded,
            ])
            .map_err(anyhow::Error::msg)?;
        dcap.push(veil_attest::dcap::bench::measure(
            tee, &quote, &coll, &policy, dcap_now, min,
        )?);
    }
    out["dcap"] = serde_json::to_value(&dcap)?;

    // Azure SNP vTPM: HCL report + TPM quote + SNP report and VCEK chain.
    let az = read("azure-snp-vtpm/evidence-v2.json")?;
    let az_opts = veil_attest::snp::Options::default();
    let az_now = 1_767_225_600; // 2026-01-01, inside the fixture VCEK's validity
    veil_attest::azure::verify_snp_vtpm(&az, &az_opts, az_now)?;
    let start = std::time::Instant::now();
    let mut n = 0u64;
    while n < 3 || start.elapsed() < min {
        veil_attest::azure::verify_snp_vtpm(&az, &az_opts, az_now)?;
        n += 1;
    }
    let az_rate = n as f64 / start.elapsed().as_secs_f64();
    out["az_snp_vtpm_per_second"] = az_rate.into();

    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("veil bench attest (one core, {:.1}s per method)", a.seconds);
    println!(
        "  snp full verify (chain each time)   {:>10.0} /s",
        snp.full_per_second
    );
    println!(
        "  snp verify, chain cached             {:>10.0} /s",
        snp.cached_chain_per_second
    );
    println!(
        "  bare ECDSA P-384 verify (AWS-LC)     {:>10.0} /s   (cached verify = {:.2}x of it)",
        snp.bare_ecdsa_per_second,
        snp.cached_chain_per_second / snp.bare_ecdsa_per_second
    );
    match openssl_p384 {
        Some(o) => println!(
            "  baseline: openssl speed ecdsap384   {o:>10.0} /s   (cached verify = {:.2}x of OpenSSL)",
            snp.cached_chain_per_second / o
        ),
        None => println!(
            "  baseline: openssl speed ecdsap384   not measured (no `openssl` in PATH, or its output was not understood)"
        ),
    }
    for f in &dcap {
        println!(
            "  {:<36} {:>10.0} /s   baseline {}: {:.0} /s, ratio {:.2}",
            f.name, f.per_second, f.baseline, f.baseline_per_second, f.ratio
        );
    }
    println!(
        "  az-snp-vtpm evidence (HCL+TPM+SNP)    {az_rate:>10.0} /s   (vs snp full verify {:.2}x)",
        az_rate / snp.full_per_second
    );
    Ok(ExitCode::SUCCESS)
}

/// ECDSA verifications per second by `openssl speed ALG` (e.g. `ecdsap384`),
/// or None when openssl is missing or prints something else.
fn openssl_ecdsa_verify_per_second(alg: &str, seconds: f64) -> Option<f64> {
    let secs = (seconds.ceil() as u64).max(1).to_string();
    let out = std::process::Command::new("openssl")
        .args(["speed", "-seconds", &secs, alg])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    parse_openssl_ecdsa(&String::from_utf8_lossy(&out.stdout), alg)
}

/// The verify/s column of `openssl speed ecdsapNNN`'s result line, e.g.
/// ` 384 bits ecdsa (nistp384)   0.0005s   0.0005s   1826.3   2070.2`.
fn parse_openssl_ecdsa(text: &str, alg: &str) -> Option<f64> {
    let curve = alg.strip_prefix("ecdsa")?;
    let line = text
        .lines()
        .find(|l| l.contains(&format!("ecdsa (nist{curve})")))?;
    let v: f64 = line.split_whitespace().last()?.parse().ok()?;
    (v.is_finite() && v > 0.0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::parse_openssl_ecdsa;

    #[test]
    fn reads_the_verify_column_of_openssl_speed() {
        let text = "Doing 384 bits sign ecdsa's for 2s: 3652 384 bits ECDSA signs in 2.00s\n\
                    version: 3.0.19\n                              sign    verify    sign/s verify/s\n \
                    384 bits ecdsa (nistp384)   0.0005s   0.0005s   1826.3   2070.2\n";
        assert_eq!(parse_openssl_ecdsa(text, "ecdsap384"), Some(2070.2));
        assert_eq!(parse_openssl_ecdsa(text, "ecdsap256"), None);
        assert_eq!(parse_openssl_ecdsa("garbage", "ecdsap384"), None);
        assert_eq!(
            parse_openssl_ecdsa(" 384 bits ecdsa (nistp384) 0.1s 0.1s 1 nan\n", "ecdsap384"),
            None
        );
    }
}
