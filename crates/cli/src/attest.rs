//! `veil attest …`: verify evidence offline; produce sim evidence.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use veil_attest::sim::{SimPlatformKey, SimReportBody, SimRootKey, SimTcb};
use veil_attest::snp::{CertSource, Product, TcbVersion};
use veil_attest::{Claims, Context, Error, Expectations, Tee};

use crate::outln;
use crate::output::{self, Access, Existing, read_limited};

/// Attestation evidence: verify it offline, or produce simulated evidence.
#[derive(Subcommand)]
pub enum AttestCommand {
    /// Verify evidence against pinned vendor roots and print the claims.
    ///
    /// Exit status: 0 verified; 1 refused (the message names the failed check
    /// with expected and actual values); 2 malformed input or usage error;
    /// 3 parsed but NOT verified (`--no-collateral`: nothing vouches for the
    /// claims). Only 0 means the evidence is genuine. With `--json`, stdout
    /// carries one JSON object in every case 0-3 except usage errors, with
    /// `"verified"` true only for 0.
    Verify(VerifyArgs),
    /// Create a sim platform key pair (private key + public root).
    SimKeygen(SimKeygenArgs),
    /// Produce a signed sim report for given report data, init-data digest
    /// and measurement.
    SimReport(SimReportArgs),
}

/// Arguments of `veil attest verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// Kind of evidence: snp, sim, tdx, sgx, az-snp-vtpm, az-tdx-vtpm, tpm,
    /// nvidia (a GPU report with `--cert CHAIN.pem`, or Trustee's device
    /// evidence JSON; `--report-data` is its nonce; RIMs and OCSP: `verify-gpu`).
    #[arg(long)]
    pub tee: Tee,
    /// Evidence file (SNP: raw 1184-byte report, hex, or CoCo JSON; sim: raw or JSON).
    #[arg(long)]
    pub evidence: PathBuf,
    /// Certificate file(s), DER or PEM (VCEK/VLEK; ASK/ARK are pinned in veil).
    #[arg(long = "cert", value_name = "FILE")]
    pub certs: Vec<PathBuf>,
    /// Offline VCEK cache: DIR/vcek/<Product>/<hwid>/bl<N>_tee<N>_snp<N>_ucode<N>[_fmc<N>].der
    #[arg(long, value_name = "DIR")]
    pub cert_cache: Option<PathBuf>,
    /// Expected report data (hex or base64; zero-padded to the field, e.g. a 48-byte binding digest).
    #[arg(long, value_name = "HEX|BASE64")]
    pub report_data: Option<String>,
    /// Evidence from veil's agent over caller-supplied data (`veil inspect`,
    /// a workload's `/aa/evidence?runtime_data=TEXT`): check that REPORT_DATA
    /// is SHA-384("veil/user-runtime-data/v1\0" ‖ TEXT) ‖ "VEIL:USERDATA:v1"
    /// (docs/boundary.md).
    #[arg(long, value_name = "TEXT", conflicts_with = "report_data")]
    pub runtime_data: Option<String>,
    /// Expected init-data digest (`sha384:HEX` as veil prints it, or hex; SNP compares it with HOST_DATA).
    #[arg(long, value_name = "DIGEST")]
    pub init_data_digest: Option<String>,
    /// Minimum TCB, e.g. `bootloader=3,tee=0,snp=8,microcode=115`.
    #[arg(long, value_name = "NAME=SVN,...")]
    pub min_tcb: Option<String>,
    /// Accept a TEE launched with debugging enabled.
    #[arg(long)]
    pub allow_debug: bool,
    /// SNP: accept a guest policy that allows a migration agent.
    #[arg(long)]
    pub allow_migration_agent: bool,
    /// SNP: required VMPL of the report requester, or `any`.
    #[arg(long, default_value = "0")]
    pub vmpl: String,
    /// sim: the trusted sim root public key (PEM). Sim evidence is refused without it.
    #[arg(long, value_name = "FILE")]
    pub sim_root: Option<PathBuf>,
    /// Verification time (RFC 3339), default now.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Print the claims as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// TDX/SGX: collateral JSON file, or a directory of raw PCS files.
    #[arg(long, value_name = "FILE|DIR")]
    pub collateral: Option<PathBuf>,
    /// TDX/SGX: also accept this TCB status (repeatable; default UpToDate only).
    /// An accepted non-UpToDate status is shown in the output.
    #[arg(long = "accept-tcb-status", value_name = "STATUS")]
    pub accept_tcb_status: Vec<veil_attest::dcap::TcbStatus>,
    /// TDX/SGX/az-tdx-vtpm: only parse the (TD) quote; its signature chain is
    /// NOT verified: the output says so and the exit status is 3, not 0.
    #[arg(long)]
    pub no_collateral: bool,
    /// tpm: a trusted attestation key (PEM/DER SubjectPublicKeyInfo or TPM2B_PUBLIC); repeatable.
    #[arg(long = "ak", value_name = "FILE")]
    pub aks: Vec<PathBuf>,
}

/// Arguments of `veil attest sim-keygen`.
#[derive(Args)]
pub struct SimKeygenArgs {
    /// Where to write the private platform key (PKCS#8 PEM, mode 0600).
    #[arg(long, default_value = "sim-platform.key")]
    pub key: PathBuf,
    /// Where to write the public root key verifiers trust (SPKI PEM).
    #[arg(long = "root", default_value = "sim-root.pub")]
    pub root: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `veil attest sim-report`.
#[derive(Args)]
pub struct SimReportArgs {
    /// The sim platform private key (from `sim-keygen`).
    #[arg(long)]
    pub key: PathBuf,
    /// Report data (hex or base64, at most 64 bytes; zero-padded).
    #[arg(long, value_name = "HEX|BASE64", default_value = "")]
    pub report_data: String,
    /// Init-data digest recorded at launch (`sha384:HEX` or hex, at most 64 bytes).
    #[arg(long, value_name = "DIGEST", default_value = "")]
    pub init_data_digest: String,
    /// Launch measurement (hex, at most 48 bytes).
    #[arg(long, value_name = "HEX", default_value = "")]
    pub measurement: String,
    /// TCB SVNs, e.g. `bootloader=1,tee=0,snp=2,microcode=3`.
    #[arg(long, value_name = "NAME=SVN,...")]
    pub tcb: Option<String>,
    /// Mark the simulated TEE as launched with debugging enabled.
    #[arg(long)]
    pub debug: bool,
    /// Output file (JSON evidence); default stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Write the raw binary report instead of JSON.
    #[arg(long)]
    pub raw: bool,
}

/// Run an attest subcommand.
pub fn run(cmd: AttestCommand) -> Result<ExitCode> {
    match cmd {
        AttestCommand::Verify(a) => verify(a),
        AttestCommand::SimKeygen(a) => sim_keygen(a),
        AttestCommand::SimReport(a) => sim_report(a),
    }
}

/// Reads VCEKs from an offline cache directory.
struct DirCache(PathBuf);

impl CertSource for DirCache {
    fn vcek(&self, product: Product, chip_id: &[u8; 64], tcb: &TcbVersion) -> Option<Vec<u8>> {
        let rel = veil_attest::snp::certs::cache_path(product, chip_id, tcb);
        fs::read(self.0.join(rel)).ok()
    }
}

/// Parse `--at` or return the current time, as Unix seconds.
pub fn at_time(at: Option<&str>) -> Result<u64> {
    match at {
        Some(s) => {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .with_context(|| format!("--at {s:?} is not an RFC 3339 time"))?;
            u64::try_from(t.unix_timestamp()).context("--at is before 1970")
        }
        None => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)),
    }
}

fn verify(a: VerifyArgs) -> Result<ExitCode> {
    let evidence = read_limited(&a.evidence, "evidence", veil_attest::MAX_EVIDENCE_BYTES)?;
    let mut certs = Vec::new();
    for c in &a.certs {
        certs.push(read_limited(
            c,
            "certificate",
            veil_attest::MAX_EVIDENCE_BYTES,
        )?);
    }
    let mut expectations = Expectations {
        allow_debug: a.allow_debug,
        ..Default::default()
    };
    if let Some(rd) = &a.report_data {
        expectations.report_data = Some(output::parse_bytes("report-data", rd)?);
    }
    if let Some(text) = &a.runtime_data {
        expectations.report_data =
            Some(veil_agent_api::proto::report_data_for(text.as_bytes()).to_vec());
    }
    if let Some(d) = &a.init_data_digest {
        expectations.init_data_digest = Some(output::parse_digest("init-data-digest", d)?);
    }
    // Checked after verification, against the components the evidence
    // reports, so that a misspelt name is a usage error, not a refusal.
    let min_tcb = match &a.min_tcb {
        Some(t) => {
            veil_attest::expect::parse_min_tcb(t).map_err(|e| anyhow::anyhow!("--min-tcb: {e}"))?
        }
        None => BTreeMap::new(),
    };
    if matches!(a.tee, Tee::Tdx | Tee::Sgx) {
        return crate::attest_dcap::verify(crate::attest_dcap::DcapArgs {
            tee: a.tee,
            evidence: &evidence,
            collateral: a.collateral.as_deref(),
            no_collateral: a.no_collateral,
            accept: &a.accept_tcb_status,
            expectations,
            min_tcb,
            now_unix: at_time(a.at.as_deref())?,
            json: a.json,
        });
    }
    let vmpl = match a.vmpl.as_str() {
        "any" => None,
        n => Some(
            n.parse::<u32>()
                .context("--vmpl must be a number or `any`")?,
        ),
    };
    let sim_root = match &a.sim_root {
        Some(p) => {
            let pem = fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Some(SimRootKey::from_pem(&pem)?)
        }
        None => None,
    };
    let (evidence, certs) = if a.tee == Tee::Nvidia {
        (
            crate::attest_gpu::device_evidence(&evidence, &certs)?,
            Vec::new(),
        )
    } else {
        (evidence, certs)
    };
    let cache = a.cert_cache.clone().map(DirCache);
    let ctx = Context {
        now_unix: at_time(a.at.as_deref())?,
        expectations,
        snp: veil_attest::snp::Options {
            certs,
            cert_source: cache.as_ref().map(|c| c as &dyn CertSource),
            vmpl,
            allow_migration_agent: a.allow_migration_agent,
            chain_cache: None,
        },
        sim_root,
        tpm_aks: read_aks(&a.aks)?,
    };
    if a.tee == Tee::Sim {
        eprintln!("veil: WARNING: {}", veil_attest::sim::WARNING);
    }
    let (result, checked) = if a.tee == Tee::AzTdxVtpm {
        (
            az_tdx_vtpm(&a, &evidence, &ctx)?,
            Checked::from_flag(a.no_collateral),
        )
    } else {
        (
            veil_attest::verify(a.tee, &evidence, &ctx),
            Checked::Verified,
        )
    };
    report(result, checked, &min_tcb, a.json, print_summary)
}

/// How far `veil attest verify` checked evidence that was not refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    /// Signatures checked up to a pinned root: exit 0.
    Verified,
    /// Only parsed (`--no-collateral`): nothing vouches for the claims, exit 3.
    ParsedOnly,
}

impl Checked {
    /// `ParsedOnly` when `--no-collateral` was given.
    pub fn from_flag(no_collateral: bool) -> Self {
        if no_collateral {
            Checked::ParsedOnly
        } else {
            Checked::Verified
        }
    }
}

/// Exit status of evidence that parsed but was not verified.
pub const EXIT_NOT_VERIFIED: u8 = 3;

/// The headline of evidence that was only parsed.
pub const NOT_VERIFIED: &str = "NOT VERIFIED (parsed only: --no-collateral)";

/// Print the outcome and return the exit status: claims (as JSON, or with
/// `summary`) and 0 when verified, 3 when only parsed; a refusal exits 1,
/// malformed evidence 2, each with its message on stderr and, with `json`,
/// a JSON object on stdout. `min_tcb` (`--min-tcb`) is checked here: a
/// component the evidence does not report is a usage error (exit 2).
pub fn report(
    result: std::result::Result<Claims, Error>,
    checked: Checked,
    min_tcb: &BTreeMap<String, u64>,
    json: bool,
    summary: fn(&Claims, Checked),
) -> Result<ExitCode> {
    let result = match result {
        Ok(claims) => {
            let unknown: Vec<&str> = min_tcb
                .keys()
                .filter(|k| !claims.tcb.contains_key(*k))
                .map(String::as_str)
                .collect();
            if !unknown.is_empty() {
                let known: Vec<&str> = claims.tcb.keys().map(String::as_str).collect();
                bail!(
                    "--min-tcb: {} evidence has no TCB component {}; it reports: {}",
                    claims.tee,
                    unknown.join(", "),
                    known.join(", ")
                );
            }
            // Debug was already checked with the caller's --allow-debug.
            Expectations {
                min_tcb: min_tcb.clone(),
                allow_debug: true,
                ..Default::default()
            }
            .check(&claims)
            .map(|()| claims)
        }
        e => e,
    };
    match result {
        Ok(claims) => {
            // Fail closed: a verifier that says it verified nothing wins.
            let checked = if claims.platform.signer.eq_ignore_ascii_case("unverified") {
                Checked::ParsedOnly
            } else {
                checked
            };
            let verified = checked == Checked::Verified;
            if json {
                let mut v = claims.to_json();
                if let Some(o) = v.as_object_mut() {
                    o.insert("verified".into(), verified.into());
                    let outcome = if verified { "verified" } else { "parsed-only" };
                    o.insert("outcome".into(), outcome.into());
                }
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                summary(&claims, checked);
            }
            Ok(if verified {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_NOT_VERIFIED)
            })
        }
        Err(e) => {
            let (code, outcome, prefix) = match &e {
                Error::Refused(_) => (1, "refused", "refused: "),
                Error::Malformed { .. } => (2, "malformed", ""),
            };
            eprintln!("veil: {prefix}{e}");
            if json {
                let mut v = serde_json::json!({
                    "verified": false,
                    "outcome": outcome,
                    "error": e.to_string(),
                });
                if let Error::Refused(r) = &e {
                    v["check"] = r.check.into();
                    v["reason"] = r.reason.clone().into();
                    v["expected"] = r.expected.clone().into();
                    v["actual"] = r.actual.clone().into();
                }
                outln!("{}", serde_json::to_string_pretty(&v)?);
            }
            Ok(ExitCode::from(code))
        }
    }
}

fn print_summary(c: &Claims, checked: Checked) {
    if checked == Checked::ParsedOnly {
        outln!(
            "{NOT_VERIFIED}: {} evidence; the TD quote's signature chain was not checked",
            c.tee
        );
    } else {
        let signer = match c.tee {
            Tee::Sim => "sim platform key (NOT hardware)".to_string(),
            _ => format!(
                "{} ({})",
                c.platform.signer.to_uppercase(),
                c.platform.product
            ),
        };
        outln!("verified: {} evidence, signed by {signer}", c.tee);
    }
    let tcb: Vec<String> = c.tcb.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if c.tee == Tee::Nvidia {
        crate::attest_gpu::print_summary(c);
        return;
    }
    output::kv("measurement", &hex::encode(&c.measurement));
    output::kv("report_data", &hex::encode(&c.report_data));
    output::kv("init_data", &hex::encode(&c.init_data));
    output::kv("tcb", &tcb.join(" "));
    output::kv("debug", if c.debug { "ON" } else { "off" });
    output::kv("chip_id", &c.platform.chip_id);
    if !c.hardware_backed {
        output::kv(
            "hardware",
            match c.tee {
                Tee::Tpm => "not established: trust rests on the given attestation key (--ak)",
                Tee::AzTdxVtpm => "NOT VERIFIED (TD quote parsed without collateral)",
                _ => "NO: simulated TEE",
            },
        );
    }
}

/// `--ak` files: trusted TPM attestation keys.
fn read_aks(paths: &[PathBuf]) -> Result<Vec<veil_attest::tpm::AkPublic>> {
    paths
        .iter()
        .map(|p| {
            let bytes = read_limited(p, "attestation key", veil_attest::MAX_EVIDENCE_BYTES)?;
            veil_attest::tpm::AkPublic::from_bytes(&bytes)
                .with_context(|| format!("--ak {}", p.display()))
        })
        .collect()
}

/// `az-tdx-vtpm`: the TD quote needs DCAP collateral (`--collateral`), or
/// `--no-collateral` to check only the vTPM part and parse the quote.
fn az_tdx_vtpm(
    a: &VerifyArgs,
    evidence: &[u8],
    ctx: &Context<'_>,
) -> Result<std::result::Result<Claims, Error>> {
    let claims = if a.no_collateral {
        if a.collateral.is_some() {
            bail!("--no-collateral and --collateral exclude each other");
        }
        eprintln!(
            "veil: WARNING: --no-collateral: the vTPM quote and HCL report are checked, but the TD quote is only parsed; its signature and PCK certificate chain are NOT verified"
        );
        veil_attest::azure::inspect_tdx_vtpm(evidence)
    } else {
        let Some(path) = &a.collateral else {
            bail!(
                "az-tdx-vtpm evidence needs --collateral FILE|DIR for its TD quote; --no-collateral checks only the vTPM part"
            );
        };
        let collateral = crate::attest_dcap::read_collateral(path)?;
        let policy = crate::attest_dcap::tcb_policy(a.allow_debug, &a.accept_tcb_status)?;
        veil_attest::azure::verify_tdx_vtpm(evidence, &collateral, &policy, ctx.now_unix)
    };
    Ok(claims.and_then(|c| ctx.expectations.check(&c).map(|()| c)))
}

fn sim_keygen(a: SimKeygenArgs) -> Result<ExitCode> {
    let key = SimPlatformKey::generate();
    let root = key.root().to_pem()?;
    let existing = if a.force {
        Existing::Replace
    } else {
        Existing::Keep
    };
    // Both staged before either is in place: no key without its root.
    let private = key.to_pem()?;
    let k = output::stage(&a.key, private.as_bytes(), Access::OwnerOnly, existing)?;
    let r = output::stage(&a.root, root.as_bytes(), Access::Public, existing)?;
    k.commit()?;
    r.commit()?;
    eprintln!("veil: WARNING: {}", veil_attest::sim::WARNING);
    outln!("sim platform key: {}", a.key.display());
    outln!("sim root (trust this in verifiers): {}", a.root.display());
    outln!("platform id: {}", hex::encode(key.root().platform_id()));
    Ok(ExitCode::SUCCESS)
}

fn sim_report(a: SimReportArgs) -> Result<ExitCode> {
    let pem = zeroize::Zeroizing::new(
        fs::read_to_string(&a.key).with_context(|| format!("reading {}", a.key.display()))?,
    );
    let key = SimPlatformKey::from_pem(&pem)?;
    let mut body = SimReportBody::new(
        &output::parse_bytes("report-data", &a.report_data)?,
        &output::parse_digest("measurement", &a.measurement)?,
        &output::parse_digest("init-data-digest", &a.init_data_digest)?,
    )?;
    body.debug = a.debug;
    if let Some(t) = &a.tcb {
        let m = veil_attest::expect::parse_min_tcb(t).map_err(|e| anyhow::anyhow!("--tcb: {e}"))?;
        let mut tcb = SimTcb::default();
        for (k, v) in m {
            let v = u8::try_from(v).with_context(|| format!("--tcb {k}={v}: SVN above 255"))?;
            match k.as_str() {
                "bootloader" => tcb.bootloader = v,
                "tee" => tcb.tee = v,
                "snp" => tcb.snp = v,
                "microcode" => tcb.microcode = v,
                other => {
                    bail!("--tcb: unknown component {other:?} (bootloader, tee, snp, microcode)")
                }
            }
        }
        body.tcb = tcb;
    }
    eprintln!("veil: WARNING: {}", veil_attest::sim::WARNING);
    let out = if a.raw {
        key.sign(&body)
    } else {
        let mut j = key.evidence_json(&body).into_bytes();
        j.push(b'\n');
        j
    };
    match &a.output {
        Some(p) => output::write_atomic(p, &out)?,
        None => output::stdout_bytes(&out)?,
    }
    Ok(ExitCode::SUCCESS)
}
