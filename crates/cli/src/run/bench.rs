//! `veil bench run`: time from `veil run` to the workload's first output
//! line, against `runc run` of the same unpacked bundle, in one run; with
//! the phases of veil's time (KBS start, policy generation, sandbox launch
//! and attestation, pull/decrypt/unpack, container start). Reports; never
//! fails on a number.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use veil_image::OciLayout;
use veil_image::builder::ImageBuilder;
use veil_image::spec::{Compression, ContainerConfig, Platform};
use veil_image::unpack::{UnpackLimits, unpack_image};

/// Arguments of `veil bench run`.
#[derive(Args, Debug)]
pub struct RunBench {
    /// Runs of each side (the median is reported; one warm-up run each is not counted).
    #[arg(long, default_value_t = 5)]
    pub iterations: usize,
    /// The runc binary (the baseline).
    #[arg(long, default_value = "runc")]
    pub runc: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// `process` (vs runc) or `vm` (`veil run --sandbox vm` vs the process sandbox).
    #[arg(long, default_value = "process", value_parser = ["process", "vm"])]
    pub sandbox: String,
}

const LINE: &str = "veil-bench-first-line";

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Spawn `cmd`; (ms to the first stdout line, stderr).
pub(crate) fn first_line(mut cmd: Command) -> Result<(f64, String)> {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{cmd:?}"))?;
    let mut lines =
        BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?).lines();
    let line = lines.next().transpose()?.unwrap_or_default();
    let t = start.elapsed().as_secs_f64() * 1000.0;
    drop(lines);
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if line != LINE || !out.status.success() {
        bail!(
            "{cmd:?}: first line {line:?}, status {}:\n{stderr}",
            out.status
        );
    }
    Ok((t, stderr))
}

pub(crate) fn busybox_image(dir: &Path) -> Result<OciLayout> {
    let root = dir.join("src");
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying /bin/busybox (install busybox-static)")?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh"))?;
    std::os::unix::fs::symlink("busybox", root.join("bin/echo"))?;
    let layout = OciLayout::create(dir.join("layout")).map_err(|e| anyhow!("{e}"))?;
    let mut b = ImageBuilder::new(&layout);
    b.config(ContainerConfig {
        entrypoint: Some(vec!["/bin/echo".into(), LINE.into()]),
        env: Some(vec!["PATH=/bin".into()]),
        working_dir: Some("/".into()),
        ..Default::default()
    });
    b.add_layer_dir(&root, Compression::Gzip)
        .map_err(|e| anyhow!("{e}"))?;
    b.finish("bench:1").map_err(|e| anyhow!("{e}"))?;
    Ok(layout)
}

fn runc_bundle(dir: &Path, layout: &OciLayout, runc: &str) -> Result<PathBuf> {
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle)?;
    let img = layout
        .resolve(Some("bench:1"), &Platform::linux_amd64())
        .map_err(|e| anyhow!("{e}"))?;
    unpack_image(
        layout,
        &img,
        &bundle.join("rootfs"),
        &[],
        &UnpackLimits::default(),
    )
    .map_err(|e| anyhow!("{e}"))?;
    let st = Command::new(runc)
        .args(["spec", "-b"])
        .arg(&bundle)
        .status()
        .with_context(|| format!("running {runc} spec (install runc: scripts/install-deps.sh)"))?;
    if !st.success() {
        bail!("{runc} spec failed");
    }
    let p = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&p)?)?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/echo", LINE]);
    std::fs::write(&p, serde_json::to_vec_pretty(&spec)?)?;
    Ok(bundle)
}

/// Run the benchmark.
pub fn run(a: RunBench) -> Result<ExitCode> {
    if a.sandbox == "vm" {
        return super::vm::bench(a.iterations, a.json, busybox_image, first_line);
    }
    let tmp = tempfile::tempdir()?;
    let layout = busybox_image(tmp.path())?;
    let bundle = runc_bundle(tmp.path(), &layout, &a.runc)?;
    let data = tmp.path().join("data");
    let exe = std::env::current_exe()?;
    let image = format!("oci:{}:bench:1", layout.root().display());
    let (mut veil_ms, mut runc_ms) = (Vec::new(), Vec::new());
    let mut phases: Vec<serde_json::Map<String, serde_json::Value>> = Vec::new();
    for i in 0..=a.iterations {
        let mut cmd = Command::new(&exe);
        cmd.args(["run", "--rm", "--timings", &image])
            .env("VEIL_DATA_DIR", &data);
        let (t, stderr) = first_line(cmd)?;
        let mut r = Command::new(&a.runc);
        r.args(["run", "-b"])
            .arg(&bundle)
            .arg(format!("veil-bench-{}-{i}", std::process::id()));
        let (tr, _) = first_line(r)?;
        if i == 0 {
            continue; // warm-up: page cache, sim key and embedded KBS creation
        }
        veil_ms.push(t);
        runc_ms.push(tr);
        if let Some(j) = stderr
            .lines()
            .find_map(|l| l.strip_prefix("veil: timings "))
        {
            if let Ok(serde_json::Value::Object(m)) = serde_json::from_str(j) {
                phases.push(m);
            }
        }
    }
    let v = median(&mut veil_ms);
    let r = median(&mut runc_ms);
    let mut phase_medians = serde_json::Map::new();
    if let Some(first) = phases.first() {
        for k in first.keys() {
            let mut xs: Vec<f64> = phases
                .iter()
                .filter_map(|p| p.get(k).and_then(|x| x.as_f64()))
                .collect();
            phase_medians.insert(k.clone(), median(&mut xs).into());
        }
    }
    let goal = 2.0 * r + 100.0;
    let report = serde_json::json!({
        "benchmark": "time from start to the workload's first output line (busybox echo, one gzip layer)",
        "baseline": "runc run of the same unpacked bundle",
        "iterations": a.iterations,
        "veil_run_ms": v,
        "runc_run_ms": r,
        "ratio": v / r,
        "goal_ms": goal,
        "within_goal": v <= goal,
        "veil_phases_ms": phase_medians,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "veil run vs runc run, time to the first output line (median of {}):",
            a.iterations
        );
        println!("  veil run   {v:8.1} ms");
        println!("  runc run   {r:8.1} ms");
        println!(
            "  ratio      {:8.2}x   (goal: under 2x runc + 100 ms = {goal:.1} ms: {})",
            v / r,
            if v <= goal { "met" } else { "not met" }
        );
        println!("  where veil's time goes (median ms; phases overlap the total):");
        for (k, x) in &phase_medians {
            println!("    {k:<24} {x}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
