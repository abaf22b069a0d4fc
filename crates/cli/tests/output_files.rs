//! Files the CLI writes, attacked: an unprivileged user racing the writes of
//! keys and KEKs never reads a byte of them; writing to a device node, a
//! FIFO or stdout writes in place and never replaces the node; symbolic
//! links and other users' FIFOs are refused for secrets. Runs as root (as
//! CI does): the attacker is `nobody`.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use nix::unistd::{Gid, Uid, mkfifo};

const VEIL: &str = env!("CARGO_BIN_EXE_veil");
const NOBODY: u32 = 65534;
/// Set in the environment of the snooping child: the directory to snoop on.
const SNOOP_DIR: &str = "VEIL_TEST_SNOOP_DIR";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures");

fn veil() -> Command {
    Command::new(VEIL)
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o777
}

/// A temporary directory every user can enter and list (0755).
fn open_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("veil-out-")
        .tempdir_in(std::env::temp_dir())
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests race an unprivileged user and make device nodes: run them as root (CI does)"
    );
}

/// The snooping child (a no-op unless started by [`snoop_as_nobody`]): as
/// `nobody`, list the directory and read every file in it (temporary names
/// included) over and over until `STOP` appears; print each file it read
/// bytes from, and how many rounds it made.
#[test]
fn snoop_child() {
    let Some(dir) = std::env::var_os(SNOOP_DIR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    assert_eq!(nix::unistd::geteuid().as_raw(), NOBODY);
    let mut rounds = 0u64;
    let mut read = std::collections::BTreeSet::new();
    let mut buf = [0u8; 4096];
    while !dir.join("STOP").exists() {
        rounds += 1;
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
                .open(e.path());
            if f.is_ok_and(|mut f| matches!(f.read(&mut buf), Ok(n) if n > 0)) {
                read.insert(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    for name in read {
        println!("READ {name}");
    }
    println!("ROUNDS {rounds}");
}

/// Start [`snoop_child`] in this test binary as `nobody` on `dir`; also
/// returns the copy of the binary made for nobody, if one was needed.
fn snoop_as_nobody(dir: &Path) -> (std::process::Child, Option<tempfile::TempDir>) {
    let exe = std::env::current_exe().unwrap();
    // nobody must be able to run the test binary: copy it where it can.
    let runnable = exe.ancestors().skip(1).all(|a| mode(a) & 0o001 != 0) && mode(&exe) & 0o001 != 0;
    let mut copy_dir = None;
    let exe = if runnable {
        exe
    } else {
        let d = open_dir();
        let copy = d.path().join("snoop");
        std::fs::copy(&exe, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy_dir = Some(d);
        copy
    };
    let mut c = Command::new(&exe);
    c.args(["--exact", "snoop_child", "--nocapture", "--test-threads=1"])
        .env(SNOOP_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            nix::unistd::setgroups(&[])?;
            nix::unistd::setgid(Gid::from_raw(NOBODY))?;
            nix::unistd::setuid(Uid::from_raw(NOBODY))?;
            Ok(())
        });
    }
    (c.spawn().unwrap(), copy_dir)
}

#[test]
fn nobody_never_reads_a_key_or_kek_being_written() {
    require_root();
    let d = open_dir();
    let dir = d.path();
    let (key, public, kek) = (
        dir.join("kbs-admin.key"),
        dir.join("kbs-admin.pub"),
        dir.join("kbs.kek"),
    );
    let (snoop, _copy) = snoop_as_nobody(dir);
    let start = Instant::now();
    let mut runs = 0;
    while runs < 150 || start.elapsed() < Duration::from_secs(3) {
        ok(veil()
            .args(["kbs", "admin-keygen", "--key"])
            .arg(&key)
            .arg("--pub")
            .arg(&public)
            .output()
            .unwrap());
        ok(veil()
            .args(["kbs", "kek-generate", "--out"])
            .arg(&kek)
            .output()
            .unwrap());
        runs += 1;
        if start.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    std::fs::write(dir.join("STOP"), "").unwrap();
    let out = snoop.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rounds: u64 = report
        .lines()
        .find_map(|l| l.strip_prefix("ROUNDS "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no snoop report: {report}"));
    let read: Vec<&str> = report
        .lines()
        .filter_map(|l| l.strip_prefix("READ "))
        .collect();
    // The snoop works: it read the public key (the positive control).
    assert!(
        read.contains(&"kbs-admin.pub"),
        "{runs} runs, {rounds} rounds: {read:?}"
    );
    let leaked: Vec<&&str> = read
        .iter()
        .filter(|n| n.contains("kbs-admin.key") || n.contains("kbs.kek"))
        .collect();
    assert!(
        leaked.is_empty(),
        "in {runs} runs nobody read {} secret files, e.g. {:?}",
        leaked.len(),
        &leaked[..leaked.len().min(4)]
    );
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&kek), 0o600);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["STOP", "kbs-admin.key", "kbs-admin.pub", "kbs.kek"],
        "no temporary files left"
    );
}

#[test]
fn secrets_refuse_symlinks_and_other_users_fifos() {
    require_root();
    let d = open_dir();
    let dir = d.path();
    // A link to a file nobody can read: following it would put the KEK there.
    let planted = dir.join("planted");
    std::fs::write(&planted, "").unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o666)).unwrap();
    let link = dir.join("kek.hex");
    std::os::unix::fs::symlink(&planted, &link).unwrap();
    let out = veil()
        .args(["kbs", "kek-generate", "--out"])
        .arg(&link)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("symbolic link"));
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&planted).unwrap(), b"");

    // A FIFO of nobody's where the admin key goes.
    let fifo = dir.join("admin.key");
    mkfifo(&fifo, Mode::from_bits_truncate(0o666)).unwrap();
    nix::unistd::chown(&fifo, Some(Uid::from_raw(NOBODY)), None).unwrap();
    let out = veil()
        .args(["kbs", "admin-keygen", "--key"])
        .arg(&fifo)
        .arg("--pub")
        .arg(dir.join("admin.pub"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("owned by uid 65534"));
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(!dir.join("admin.pub").exists(), "nothing written");
}

/// A copy of /dev/null (char 1:3) in `dir`.
fn null_node(dir: &Path) -> PathBuf {
    let p = dir.join("null");
    mknod(
        &p,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(1, 3),
    )
    .unwrap();
    p
}

fn assert_null_node(p: &Path) {
    let m = std::fs::symlink_metadata(p).unwrap();
    assert!(
        m.file_type().is_char_device(),
        "{} was replaced",
        p.display()
    );
    assert_eq!(m.rdev(), makedev(1, 3));
}

/// Run `cmd` writing to a new FIFO at `fifo` and return what a reader got.
fn through_fifo(fifo: &Path, cmd: &mut Command) -> Vec<u8> {
    mkfifo(fifo, Mode::from_bits_truncate(0o600)).unwrap();
    // Held open for writing until the command is done, so that the reader
    // sees end-of-file then, even if the command never opened the FIFO.
    let keeper = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fifo)
        .unwrap();
    let mut r = std::fs::File::open(fifo).unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        got
    });
    let out = cmd.output().unwrap();
    drop(keeper);
    let got = reader.join().unwrap();
    ok(out);
    assert!(
        std::fs::symlink_metadata(fifo)
            .unwrap()
            .file_type()
            .is_fifo(),
        "{} was replaced",
        fifo.display()
    );
    got
}

fn sim_key(dir: &Path) -> PathBuf {
    let key = dir.join("sim.key");
    ok(veil()
        .args(["attest", "sim-keygen", "--key"])
        .arg(&key)
        .arg("--root")
        .arg(dir.join("sim.pub"))
        .output()
        .unwrap());
    key
}

fn sim_report(key: &Path, out: &Path) -> Command {
    let mut c = veil();
    c.args(["attest", "sim-report", "--report-data", "ab", "--key"])
        .arg(key)
        .arg("-o")
        .arg(out);
    c
}

fn measure_snp(out: &Path) -> Command {
    let mut c = veil();
    c.args([
        "measure",
        "snp",
        "--vcpus",
        "1",
        "--vcpu-type",
        "EPYC-Milan",
    ])
    .arg("--firmware")
    .arg(format!("{FIXTURES}/snp-measure/ovmf_AmdSev_suffix.bin"))
    .arg("--out-file")
    .arg(out);
    c
}

#[test]
fn device_nodes_are_written_in_place_not_replaced() {
    require_root();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let key = sim_key(dir);
    let null = null_node(dir);
    ok(sim_report(&key, &null).output().unwrap());
    assert_null_node(&null);
    ok(measure_snp(&null).output().unwrap());
    assert_null_node(&null);
    // A secret may go to root's device.
    ok(veil()
        .args(["kbs", "kek-generate", "--out"])
        .arg(&null)
        .output()
        .unwrap());
    assert_null_node(&null);
    let names: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
    assert_eq!(names.len(), 3, "no temporary files left: {names:?}");
}

#[test]
fn fifos_get_the_bytes_and_stay_fifos() {
    require_root();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let key = sim_key(dir);
    let got = through_fifo(
        &dir.join("ev.fifo"),
        &mut sim_report(&key, &dir.join("ev.fifo")),
    );
    let ev: serde_json::Value = serde_json::from_slice(&got).unwrap();
    assert!(ev.is_object(), "{ev}");

    let got = through_fifo(&dir.join("m.fifo"), &mut measure_snp(&dir.join("m.fifo")));
    let m: serde_json::Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(m["tee"], "snp");

    let got = through_fifo(
        &dir.join("kek.fifo"),
        veil()
            .args(["kbs", "kek-generate", "--out"])
            .arg(dir.join("kek.fifo")),
    );
    assert_eq!(got.len(), 64, "{}", String::from_utf8_lossy(&got));

    // policy generate: YAML into a FIFO, init-data into a file.
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/tests/data");
    let yaml = dir.join("pod.fifo");
    let got = through_fifo(
        &yaml,
        veil()
            .args(["policy", "generate"])
            .arg(data.join("manifests/pod-multi.yaml"))
            .arg("-o")
            .arg(&yaml)
            .arg("--init-data")
            .arg(dir.join("init.toml"))
            .arg("--image-dir")
            .arg(data.join("layout")),
    );
    assert!(String::from_utf8_lossy(&got).contains("cc_init_data"));
    assert!(dir.join("init.toml").is_file());
}

#[test]
fn stdout_aliases_write_to_stdout() {
    let d = tempfile::tempdir().unwrap();
    let key = sim_key(d.path());
    for alias in ["-", "/dev/stdout", "/proc/self/fd/1"] {
        let out = ok(sim_report(&key, Path::new(alias))
            .current_dir(d.path())
            .output()
            .unwrap());
        let ev: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{alias}: {e}"));
        assert!(ev.is_object());
    }
    assert!(!d.path().join("-").exists());
}
