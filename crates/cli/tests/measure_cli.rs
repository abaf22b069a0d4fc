//! `veil measure` through the binary: SNP launch digests equal the reference
//! tool `sev-snp-measure` (installed by scripts/install-deps.sh) on Debian's
//! OVMF and on the firmware suffixes in shared/fixtures/snp-measure, across
//! vCPU counts, vCPU types, guest features, VMMs and with/without kernel
//! hashes; bad input is refused with exit code 2 and a message naming the
//! problem; TDX MRTD on Debian's OVMF; and a KBS loaded with `--from-measure`
//! admits exactly the measured guest.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use veil_testkit::kbs::{DevKbs, make_keys};
use veil_testkit::run_ok;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/snp-measure"
);
/// Debian's `ovmf` package (installed by scripts/install-deps.sh).
const DEBIAN_OVMF: &str = "/usr/share/ovmf/OVMF.fd";
const DEBIAN_OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
const DEBIAN_OVMF_CODE_4M: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";

const VEIL: &str = env!("CARGO_BIN_EXE_veil");

fn veil() -> Command {
    Command::new(VEIL)
}

/// The reference tool, where scripts/install-deps.sh puts it. Missing is a
/// failure, not a skip.
fn sev_snp_measure() -> PathBuf {
    let p = match std::env::var_os("VEIL_SEV_SNP_MEASURE") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
            cache.join("veil/sev-snp-measure-0.0.13/bin/sev-snp-measure")
        }
    };
    assert!(
        p.is_file(),
        "sev-snp-measure not found at {}: run scripts/install-deps.sh",
        p.display()
    );
    p
}

fn debian_file(p: &str) -> &str {
    assert!(
        Path::new(p).is_file(),
        "{p} missing: Debian's ovmf package is installed by scripts/install-deps.sh"
    );
    p
}

fn out_text(o: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One launch configuration, run through both tools.
struct Case<'a> {
    firmware: &'a str,
    vcpus: u32,
    vcpu_type: &'a str,
    features: &'a str,
    vmm: &'a str,
    kernel: Option<(&'a Path, Option<&'a Path>, Option<&'a str>)>,
}

impl Case<'_> {
    fn veil(&self) -> Output {
        let mut c = veil();
        c.args(["measure", "snp", "--output", "hex", "--firmware"])
            .arg(self.firmware)
            .args(["--vcpus", &self.vcpus.to_string()])
            .args(["--vcpu-type", self.vcpu_type])
            .args(["--guest-features", self.features])
            .args(["--vmm-type", self.vmm]);
        self.kernel_args(&mut c);
        c.output().unwrap()
    }

    fn reference(&self) -> Output {
        let mut c = Command::new(sev_snp_measure());
        c.args(["--mode", "snp", "--ovmf"])
            .arg(self.firmware)
            .args(["--vcpus", &self.vcpus.to_string()])
            .args(["--vcpu-type", self.vcpu_type])
            .args(["--guest-features", self.features])
            .args([
                "--vmm-type",
                match self.vmm {
                    "qemu" => "QEMU",
                    other => other,
                },
            ]);
        self.kernel_args(&mut c);
        c.output().unwrap()
    }

    fn kernel_args(&self, c: &mut Command) {
        if let Some((k, i, a)) = self.kernel {
            c.arg("--kernel").arg(k);
            if let Some(i) = i {
                c.arg("--initrd").arg(i);
            }
            if let Some(a) = a {
                c.arg(format!("--append={a}"));
            }
        }
    }

    fn assert_equal(&self) -> String {
        let ours = self.veil();
        let theirs = self.reference();
        assert!(
            ours.status.success(),
            "veil failed on {}: {}",
            self.describe(),
            out_text(&ours)
        );
        assert!(
            theirs.status.success(),
            "sev-snp-measure failed on {}: {}",
            self.describe(),
            out_text(&theirs)
        );
        let a = String::from_utf8(ours.stdout).unwrap().trim().to_string();
        let b = String::from_utf8(theirs.stdout).unwrap().trim().to_string();
        assert_eq!(a.len(), 96, "{a}");
        assert_eq!(a, b, "launch digests differ on {}", self.describe());
        a
    }

    fn describe(&self) -> String {
        format!(
            "{} vcpus={} type={} features={} vmm={} kernel={:?}",
            self.firmware, self.vcpus, self.vcpu_type, self.features, self.vmm, self.kernel
        )
    }
}

struct Boot {
    _dir: tempfile::TempDir,
    kernel: PathBuf,
    initrd: PathBuf,
}

/// Tiny synthetic kernel and initrd: only their SHA-256 enters the digest.
fn boot_files() -> Boot {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinuz");
    let initrd = dir.path().join("initrd.img");
    std::fs::write(
        &kernel,
        b"MZ not really a kernel, but hashed all the same\n",
    )
    .unwrap();
    std::fs::write(&initrd, (0..5000u32).map(|i| i as u8).collect::<Vec<_>>()).unwrap();
    Boot {
        _dir: dir,
        kernel,
        initrd,
    }
}

const TYPES: [&str; 8] = [
    "EPYC",
    "EPYC-v1",
    "EPYC-v4",
    "EPYC-Rome",
    "EPYC-Rome-v3",
    "EPYC-Milan",
    "EPYC-Milan-v2",
    "EPYC-Genoa",
];

#[test]
fn snp_equals_sev_snp_measure_on_fixture_suffixes() {
    let amd = format!("{FIXTURES}/ovmf_AmdSev_suffix.bin");
    let x64 = format!("{FIXTURES}/ovmf_OvmfX64_suffix.bin");
    let b = boot_files();
    let mut seen = std::collections::HashSet::new();
    let mut cases = 0;
    // AmdSev (has SNP_KERNEL_HASHES): every listed type, several vCPU counts,
    // with and without kernel hashes (kernel alone, + initrd, + cmdline).
    for (i, t) in TYPES.iter().enumerate() {
        let vcpus = [1, 2, 4, 16][i % 4];
        let kernels = [
            None,
            Some((b.kernel.as_path(), None, None)),
            Some((b.kernel.as_path(), Some(b.initrd.as_path()), None)),
            Some((
                b.kernel.as_path(),
                Some(b.initrd.as_path()),
                Some("console=ttyS0 root=/dev/vda1 -- init=/sbin/veil-agent"),
            )),
        ];
        for (j, kernel) in kernels.into_iter().enumerate() {
            let features = if (i + j) % 2 == 0 { "0x1" } else { "0x21" };
            let d = Case {
                firmware: &amd,
                vcpus,
                vcpu_type: t,
                features,
                vmm: "qemu",
                kernel,
            }
            .assert_equal();
            seen.insert(d);
            cases += 1;
        }
    }
    // OvmfX64 (no kernel hashes section).
    for (i, vcpus) in [1, 2, 3, 8].into_iter().enumerate() {
        let d = Case {
            firmware: &x64,
            vcpus,
            vcpu_type: TYPES[(i * 3) % TYPES.len()],
            features: "0x1",
            vmm: "qemu",
            kernel: None,
        }
        .assert_equal();
        seen.insert(d);
        cases += 1;
    }
    // EC2 and GCE initial VMSA state.
    for vmm in ["ec2", "gce"] {
        for vcpus in [1, 4] {
            let d = Case {
                firmware: &amd,
                vcpus,
                vcpu_type: "EPYC-Milan",
                features: "0x1",
                vmm,
                kernel: Some((b.kernel.as_path(), Some(b.initrd.as_path()), Some("quiet"))),
            }
            .assert_equal();
            seen.insert(d);
            cases += 1;
        }
    }
    // Every configuration gave its own digest (the comparison is not vacuous).
    assert_eq!(seen.len(), cases);
    assert_eq!(cases, 40);
}

#[test]
fn snp_equals_sev_snp_measure_on_debian_ovmf() {
    let b = boot_files();
    for (f, fw) in [debian_file(DEBIAN_OVMF), debian_file(DEBIAN_OVMF_CODE)]
        .into_iter()
        .enumerate()
    {
        for (i, vcpus) in [1, 2, 4, 64].into_iter().enumerate() {
            Case {
                firmware: fw,
                vcpus,
                vcpu_type: TYPES[(i + 5 * f) % TYPES.len()],
                features: if i % 2 == 0 { "0x1" } else { "0x21" },
                vmm: "qemu",
                kernel: None,
            }
            .assert_equal();
        }
        // Debian's OVMF has no SNP_KERNEL_HASHES section: both tools refuse a
        // kernel (veil with exit 2 and the reason).
        let case = Case {
            firmware: fw,
            vcpus: 2,
            vcpu_type: "EPYC-Milan",
            features: "0x1",
            vmm: "qemu",
            kernel: Some((b.kernel.as_path(), None, None)),
        };
        let ours = case.veil();
        assert_eq!(ours.status.code(), Some(2), "{}", out_text(&ours));
        assert!(
            String::from_utf8_lossy(&ours.stderr).contains("no SNP_KERNEL_HASHES"),
            "{}",
            out_text(&ours)
        );
        let theirs = case.reference();
        assert!(!theirs.status.success(), "{}", out_text(&theirs));
    }
}

#[test]
fn snp_json_is_a_reference_value_document() {
    let b = boot_files();
    let amd = format!("{FIXTURES}/ovmf_AmdSev_suffix.bin");
    let args = |out: &str| {
        let mut c = veil();
        c.args(["measure", "snp", "--firmware", &amd, "--vcpus", "2"])
            .args(["--vcpu-type", "EPYC-Genoa", "--output", out, "--kernel"])
            .arg(&b.kernel)
            .arg("--append=console=hvc0");
        c
    };
    let json = run_ok(&mut args("json"));
    let hex = run_ok(&mut args("hex"));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let digest = String::from_utf8(hex.stdout).unwrap().trim().to_string();
    assert_eq!(v["format"], "veil-measure/v1");
    assert_eq!(v["tee"], "snp");
    assert_eq!(v["measurement"], digest.as_str());
    assert_eq!(v["reference_values"]["measurement"][0], digest.as_str());
    assert_eq!(v["details"]["vcpu_sig"], "0x00a10f10");
    assert_eq!(v["details"]["kernel_hashes"], true);
    assert_eq!(v["details"]["append"], "console=hvc0");
    // The firmware-only digest equals `sev-snp-measure --mode snp:ovmf-hash`.
    let oh = run_ok(
        Command::new(sev_snp_measure())
            .args(["--mode", "snp:ovmf-hash", "--ovmf"])
            .arg(&amd),
    );
    assert_eq!(
        v["details"]["firmware_digest"],
        String::from_utf8(oh.stdout).unwrap().trim()
    );
}

/// Run `veil measure snp` expecting exit 2 and `needle` in stderr; with
/// --out-file, nothing is written.
fn refused(args: &[&str], needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("measure.json");
    let out = veil()
        .args(["measure"])
        .args(args)
        .arg("--out-file")
        .arg(&out_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out_text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err}"
    );
    assert!(out.stdout.is_empty(), "{}", out_text(&out));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "a file was written"
    );
}

/// [`refused`] for `veil measure snp --firmware FIRMWARE --vcpus VCPUS
/// --vcpu-type VCPU_TYPE EXTRA…`.
fn refused_snp(firmware: &str, vcpus: &str, vcpu_type: &str, extra: &[&str], needle: &str) {
    let mut args = vec![
        "snp",
        "--firmware",
        firmware,
        "--vcpus",
        vcpus,
        "--vcpu-type",
        vcpu_type,
    ];
    args.extend_from_slice(extra);
    refused(&args, needle);
}

#[test]
fn bad_input_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let amd = format!("{FIXTURES}/ovmf_AmdSev_suffix.bin");
    let x64 = format!("{FIXTURES}/ovmf_OvmfX64_suffix.bin");
    let b = boot_files();
    let kernel = b.kernel.to_str().unwrap();

    // Not an OVMF image.
    let junk = dir.path().join("junk.fd");
    std::fs::write(&junk, vec![0x5au8; 8192]).unwrap();
    let junk = junk.to_str().unwrap();
    refused_snp(junk, "1", "EPYC", &[], "not an OVMF image");
    refused(&["tdx", "--firmware", junk], "not an OVMF image");

    // Truncated footer table: the last 128 bytes of a real image.
    let full = std::fs::read(&amd).unwrap();
    let tail = dir.path().join("tail.fd");
    std::fs::write(&tail, &full[full.len() - 128..]).unwrap();
    refused_snp(tail.to_str().unwrap(), "1", "EPYC", &[], "truncated table");
    // A table entry whose size overruns the table.
    let mut bad = full.clone();
    let at = bad.len() - 32 - 18 - 18; // the entry header nearest the footer
    bad[at..at + 2].copy_from_slice(&0x7000u16.to_le_bytes());
    let bad_path = dir.path().join("bad-entry.fd");
    std::fs::write(&bad_path, &bad).unwrap();
    refused_snp(
        bad_path.to_str().unwrap(),
        "1",
        "EPYC",
        &[],
        "truncated table",
    );
    // A firmware smaller than the trailer.
    let tiny = dir.path().join("tiny.fd");
    std::fs::write(&tiny, [0u8; 20]).unwrap();
    refused_snp(tiny.to_str().unwrap(), "1", "EPYC", &[], "too small");

    // Unknown vCPU type: named, with the known ones listed.
    refused_snp(
        &amd,
        "1",
        "Skylake-Server",
        &[],
        "unknown vCPU type \"Skylake-Server\"",
    );
    // vCPU count out of range.
    refused_snp(&amd, "0", "EPYC", &[], "vCPU count 0");
    // Kernel hashes requested with a firmware without the section.
    refused_snp(
        &x64,
        "1",
        "EPYC",
        &["--kernel", kernel],
        "no SNP_KERNEL_HASHES",
    );
    // A firmware without SEV metadata (sev-snp-measure would measure it as if
    // it could boot under SNP; it cannot).
    refused_snp(
        debian_file(DEBIAN_OVMF_CODE_4M),
        "1",
        "EPYC",
        &[],
        "no SEV metadata",
    );
    // A missing kernel file.
    refused_snp(
        &amd,
        "1",
        "EPYC",
        &["--kernel", "/nonexistent/vmlinuz"],
        "opening kernel /nonexistent/vmlinuz",
    );
    // TDX: OVMF_CODE.fd lacks the CFV its TDVF metadata describes.
    refused(
        &["tdx", "--firmware", debian_file(DEBIAN_OVMF_CODE)],
        "outside the 1966080-byte image",
    );
    // TDX: a direct-boot kernel is not silently dropped from the measurement.
    refused(
        &[
            "tdx",
            "--firmware",
            debian_file(DEBIAN_OVMF),
            "--kernel",
            kernel,
        ],
        "RTMR[1]/RTMR[2]",
    );
}

#[test]
fn tdx_mrtd_of_debian_ovmf() {
    let dir = tempfile::tempdir().unwrap();
    let mrtd = |fw: &Path, order: &str| -> serde_json::Value {
        let out = run_ok(
            veil()
                .args(["measure", "tdx", "--page-add-order", order, "--firmware"])
                .arg(fw),
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let fw = Path::new(debian_file(DEBIAN_OVMF));
    let v = mrtd(fw, "single-pass");
    assert_eq!(v["tee"], "tdx");
    let m = v["measurement"].as_str().unwrap().to_string();
    assert_eq!(m.len(), 96);
    assert_eq!(v["details"]["mrtd"], m.as_str());
    assert_eq!(v["reference_values"]["measurement"][0], m.as_str());
    assert_eq!(v["details"]["tdvf_sections"].as_array().unwrap().len(), 6);
    assert!(v["details"]["not_computed"]["rtmr1"].is_string());
    // Deterministic, and the two page-add orders differ.
    assert_eq!(mrtd(fw, "single-pass")["measurement"], m.as_str());
    assert_ne!(mrtd(fw, "two-pass")["measurement"], m.as_str());

    // A byte of the BFV (code, MR_EXTEND) changes MRTD; a byte of the CFV
    // (variables: added, not extended) does not.
    let data = std::fs::read(fw).unwrap();
    let mut code = data.clone();
    code[0x100000] ^= 1;
    let p = dir.path().join("code.fd");
    std::fs::write(&p, &code).unwrap();
    assert_ne!(mrtd(&p, "single-pass")["measurement"], m.as_str());
    let mut vars = data;
    vars[0x1000] ^= 1;
    let p = dir.path().join("vars.fd");
    std::fs::write(&p, &vars).unwrap();
    assert_eq!(mrtd(&p, "single-pass")["measurement"], m.as_str());
}

// ---- the KBS admits exactly the measured guest ---------------------------

#[test]
fn kbs_loaded_from_measure_admits_exactly_that_measurement() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(Path::new(VEIL), d);
    // The expected SNP measurement of a guest image, as a document.
    let b = boot_files();
    let doc = d.join("guest.measure.json");
    let measure_guest = |vcpus: &str| {
        let mut c = veil();
        c.args([
            "measure",
            "snp",
            "--vcpus",
            vcpus,
            "--vcpu-type",
            "EPYC-Milan",
        ])
        .arg("--firmware")
        .arg(format!("{FIXTURES}/ovmf_AmdSev_suffix.bin"))
        .arg("--kernel")
        .arg(&b.kernel)
        .arg("--initrd")
        .arg(&b.initrd)
        .arg("--append=console=hvc0");
        c
    };
    run_ok(measure_guest("4").arg("--out-file").arg(&doc));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&doc).unwrap()).unwrap();
    let good = v["measurement"].as_str().unwrap().to_string();
    // The same image with one more vCPU: a different, unlisted measurement.
    let other = String::from_utf8(run_ok(measure_guest("5").args(["--output", "hex"])).stdout)
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(good, other);

    let kbs = DevKbs::serve(Path::new(VEIL), d);

    // A malformed document is refused and sets nothing.
    std::fs::write(d.join("bad.json"), br#"{"format":"veil-measure/v1"}"#).unwrap();
    let set_from = |doc: &Path| {
        let mut c = kbs.client();
        c.args(["kbs", "reference-value", "set", "--insecure-http"])
            .arg("--from-measure")
            .arg(doc);
        c
    };
    let out = set_from(&d.join("bad.json")).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", out_text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a veil measure document"));

    let out = run_ok(&mut set_from(&doc));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reference value measurement set (1 values)")
    );
    let out = run_ok(kbs.client().args([
        "kbs",
        "reference-value",
        "get",
        "--insecure-http",
        "measurement",
    ]));
    let stored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stored, serde_json::json!([good]));

    // Release only when the appraisal found the measurement among the
    // reference values (AR4SI executables = 2, "affirming").
    std::fs::write(
        d.join("policy.rego"),
        "package policy\nimport rego.v1\n\ndefault allow := false\n\nallow if {\n\tinput.submods.cpu0[\"ear.trustworthiness-vector\"].executables == 2\n}\n",
    )
    .unwrap();
    run_ok(
        kbs.client()
            .args([
                "kbs",
                "policy",
                "set",
                "--insecure-http",
                "--scope",
                "repo",
                "--file",
            ])
            .arg(d.join("policy.rego")),
    );
    std::fs::write(d.join("secret.bin"), b"measured-guest-secret").unwrap();
    run_ok(
        kbs.client()
            .args(["kbs", "resource", "put", "--insecure-http", "repo/key/disk"])
            .arg(d.join("secret.bin")),
    );
    let fetch = |measurement: &str| {
        kbs.sim_guest()
            .args(["--tee", "sim", "--measurement", measurement])
            .arg("--out")
            .arg(d.join(format!("got-{}.bin", &measurement[..8])))
            .arg("repo/key/disk")
            .output()
            .unwrap()
    };
    let ok = fetch(&good);
    assert!(ok.status.success(), "{}", out_text(&ok));
    assert_eq!(
        std::fs::read(d.join(format!("got-{}.bin", &good[..8]))).unwrap(),
        b"measured-guest-secret"
    );
    let refused = fetch(&other);
    assert_eq!(refused.status.code(), Some(1), "{}", out_text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("PolicyDeny"),
        "{}",
        out_text(&refused)
    );
    assert!(!d.join(format!("got-{}.bin", &other[..8])).exists());
    drop(kbs);
}
