//! Encrypted persistent volumes end to end under QEMU's TCG: `veil volume
//! create` with the key in a `veil kbs serve`, `veil run --sandbox vm -v
//! NAME:/path` formatting it on first use and opening it again, the KBS's
//! init-data binding of the key, ciphertext on the host, tampering read as
//! an I/O error, and the owner opening the volume offline with Debian's
//! stock cryptsetup (in a test VM: this host has no device-mapper).
//! Needs root and scripts/install-deps.sh (qemu-system-x86,
//! linux-image-amd64, cryptsetup-bin, busybox-static).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod common;
use common::*;

const MARKER: &str = "veil-marker-7f3a9c";

/// One guest image for this test process (its own dir: test binaries run
/// in parallel).
fn guest() -> &'static serde_json::Value {
    static G: OnceLock<serde_json::Value> = OnceLock::new();
    G.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-guest-volume");
        let out = veil_testkit::run_ok(
            Command::new(env!("CARGO_BIN_EXE_veil"))
                .args(["guest", "build", "--json", "-o"])
                .arg(&dir)
                .env("VEIL_AGENT", agent()),
        );
        serde_json::from_slice(&out.stdout).unwrap()
    })
}

fn guest_kernel() -> PathBuf {
    PathBuf::from(guest()["boot_kernel"].as_str().unwrap())
}

/// A busybox image running `cmd` (with the applets these tests use).
fn vm_image(env: &Env, tag: &str, cmd: &str) -> String {
    let layout = env.layout();
    image(env, &layout, tag, cmd);
    format!("oci:{}:{tag}", layout.root().display())
}

/// `veil run --rm --sandbox vm --tee sim --accel tcg` with the test guest.
fn run_vm(env: &Env) -> Command {
    let mut c = env.veil();
    c.args([
        "run",
        "--rm",
        "--sandbox",
        "vm",
        "--tee",
        "sim",
        "--accel",
        "tcg",
    ])
    .arg("--kernel")
    .arg(guest_kernel())
    .arg("--initrd")
    .arg(guest()["initrd"].as_str().unwrap());
    c
}

/// `veil volume inspect db --json`.
fn inspect(env: &Env) -> serde_json::Value {
    let out = ok(env
        .veil()
        .args(["volume", "inspect", "db", "--json"])
        .output()
        .unwrap());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The init-data digest a run's summary names.
fn init_data_digest(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("init-data")?
                .split_whitespace()
                .next()
        })
        .unwrap_or_else(|| panic!("no init-data line in:\n{stderr}"))
        .to_string()
}

/// Must-holds 1–4 of issue 16 in one volume's life (boots are expensive).
#[test]
fn encrypted_volume_persists_is_bound_to_its_workload_and_opens_with_cryptsetup() {
    let env = Env::new();
    let kbs = kbs_for_sim_of(&env);
    let kdir = env.dir.path().join("kbs");
    kbs_admin(
        &kbs,
        &[
            "policy",
            "set",
            "--scope",
            "veil-volume",
            "--template",
            "allow-all",
        ],
        None,
    );
    let out = ok(kbs
        .client()
        .args([
            "volume",
            "create",
            "db",
            "--size",
            "96M",
            "--insecure-http",
            "--kbs",
        ])
        .arg(kbs.url())
        .env("VEIL_DATA_DIR", env.data())
        .output()
        .unwrap());
    let created = text(&out.stderr);
    assert!(created.contains("volume db created"), "{created}");
    let rec = inspect(&env);
    assert_eq!(rec["formatted"], false, "{rec}");
    let uuid = rec["volume"]["uuid"].as_str().unwrap().to_string();
    let file = PathBuf::from(rec["volume"]["file"].as_str().unwrap());

    // The process sandbox refuses the volume before anything starts.
    let app = vm_image(
        &env,
        "app:1",
        &format!(
            // ~20 MB of marker lines (2^20), made without pipes.
            "if [ -f /data/log ]; then echo found; cat /data/log; fi; echo {MARKER} >> /data/log; if [ ! -f /data/big ]; then echo {MARKER} > /data/big; for i in $(seq 20); do cat /data/big /data/big > /data/t; mv /data/t /data/big; done; fi; echo wrote"
        ),
    );
    let out = env
        .veil()
        .args(["run", "--rm", "--kbs", &kbs.url(), "-v", "db:/data", &app])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(e.contains("encrypted volumes need the VM sandbox"), "{e}");

    // Run 1 formats the blank volume and writes the marker.
    // A fixed --name: the pod name is part of the policy, so the same
    // workload has the same init-data digest on every run.
    let run_on = |name: &str, volume: &str, img: &str| -> Output {
        let t = Instant::now();
        let out = run_vm(&env)
            .args(["--name", name, "--memory", "512M", "--kbs", &kbs.url()])
            .args(["-v", &format!("{volume}:/data"), img])
            .output()
            .unwrap();
        eprintln!(
            "run took {:?}\nstdout: {}\nstderr: {}",
            t.elapsed(),
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    };
    let run = |name: &str, img: &str| run_on(name, "db", img);
    let out = run("db-app", &app);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("wrote") && !stdout.contains("found"),
        "{stdout}"
    );
    let digest = init_data_digest(&text(&out.stderr));

    // Must-hold 2: the host file holds ciphertext only.
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        !contains(&bytes, MARKER.as_bytes()),
        "plaintext marker on the host"
    );
    let rec = inspect(&env);
    assert_eq!(rec["header"]["uuid"], uuid.as_str(), "{rec}");
    assert_eq!(rec["header"]["integrity"], "hmac(sha256)", "{rec}");
    assert_eq!(rec["header"]["cipher"], "aes-xts-plain64", "{rec}");

    // Must-hold 1: the key is bound to this workload's init-data; the same
    // workload finds its file again.
    kbs_admin(
        &kbs,
        &[
            "policy",
            "set",
            "--scope",
            "veil-volume/key/db",
            "--template",
            "init-data-digest",
            "--digest",
            &digest,
        ],
        None,
    );
    let out = run("db-app", &app);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("found\n{MARKER}\n")), "{stdout}");
    assert!(!contains(&std::fs::read(&file).unwrap(), MARKER.as_bytes()));

    // Another workload (another init-data digest) is refused the key and
    // never mounts the volume: no container runs.
    let thief = vm_image(&env, "thief:1", "echo thief-ran; cat /data/log");
    let out = run("thief", &thief);
    assert!(!out.status.success());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        !stdout.contains("thief-ran") && !stdout.contains(MARKER),
        "{stdout}"
    );
    assert!(
        stderr.contains("volume db: fetch its key kbs:///veil-volume/key/db from the KBS"),
        "{stderr}"
    );

    // Must-hold 4: the owner opens the volume offline with stock cryptsetup.
    let key = env.dir.path().join("db.key");
    let out = ok(env
        .veil()
        .args(["volume", "key", "db", "--out"])
        .arg(&key)
        .arg("--kbs-data-dir")
        .arg(kdir.join("data"))
        .arg("--kek-file")
        .arg(kdir.join("kek.hex"))
        .output()
        .unwrap());
    assert!(text(&out.stderr).contains("cryptsetup open --key-file"));
    let recovered = offline_open(&env, &file, &key);
    assert!(
        recovered.contains(&format!("RECOVERED\n{MARKER}\n{MARKER}\n")),
        "{recovered}"
    );

    // Must-hold 3: bytes flipped in the data area read as an I/O error,
    // never as other data.
    let reader = vm_image(
        &env,
        "reader:1",
        &format!("sha256sum /data/big; echo sum-exit=$?; grep -v -x {MARKER} /data/big"),
    );
    kbs_admin(
        &kbs,
        &[
            "policy",
            "set",
            "--scope",
            "veil-volume/key/db",
            "--template",
            "allow-all",
        ],
        None,
    );
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
            .unwrap();
        let len = f.metadata().unwrap().len();
        // Past the LUKS2 header, dm-integrity's journal and ext4's first
        // metadata, through the region the 20 MB file was written to.
        let mut off = len * 30 / 100;
        while off < len * 95 / 100 {
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, off).unwrap();
            b[0] ^= 0x5a;
            f.write_all_at(&b, off).unwrap();
            off += 64 << 10;
        }
        f.sync_all().unwrap();
    }
    let out = run("reader", &reader);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    // Either the file's read fails (an I/O error the workload sees: the
    // guest kernel logs "INTEGRITY AEAD ERROR"), or, when a flipped sector
    // holds file-system metadata, the mount does, before any container
    // runs: both name the error.
    let read_failed = stdout.contains("sum-exit=1") && stderr.contains("Input/output error");
    let mount_failed =
        !out.status.success() && stderr.contains("volume db: mounting its ext4 file system");
    assert!(read_failed || mount_failed, "{stdout}\n{stderr}");
    // Nothing altered came back: every line grep saw that is not the marker
    // is the marker cut short where the failed sector begins.
    for l in stdout.lines().filter(|l| !l.starts_with("sum-exit=")) {
        assert!(MARKER.starts_with(l), "altered data returned: {l:?}");
    }

    // A header the host wrote itself (with stock cryptsetup and a key of
    // its own): with another volume's UUID, then with the pinned UUID but
    // without integrity. Both are refused, by name, before any container.
    for (fake_uuid, check) in [
        ("11111111-2222-4333-8444-555555555555", "check LUKS2 UUID"),
        (uuid.as_str(), "check LUKS2 integrity"),
    ] {
        let header = host_made_header(&env, fake_uuid);
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
            f.write_all_at(&header, 0).unwrap();
            f.sync_all().unwrap();
        }
        let out = run("db-app", &app);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(!out.status.success(), "{stdout}");
        assert!(
            !stdout.contains("wrote") && !stdout.contains(MARKER),
            "{stdout}"
        );
        assert!(
            stderr.contains(&format!("volume db: {check} of disk")),
            "{stderr}"
        );
    }

    // A whole disk the host formatted (in a VM of its own) with the pinned
    // UUID and integrity, under a key of its own: the KBS key opens no
    // keyslot. Made here as the host would: a volume "evil" whose record
    // the host edits to carry db's UUID, formatted by a run, then swapped
    // in as db's file.
    ok(kbs
        .client()
        .args([
            "volume",
            "create",
            "evil",
            "--size",
            "96M",
            "--insecure-http",
            "--kbs",
        ])
        .arg(kbs.url())
        .env("VEIL_DATA_DIR", env.data())
        .output()
        .unwrap());
    let records = env.data().join("volumes");
    let edit = |name: &str, key: &str, value: &str| {
        let p = records.join(format!("{name}.json"));
        let mut r: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        r[key] = value.into();
        std::fs::write(&p, serde_json::to_vec(&r).unwrap()).unwrap();
    };
    edit("evil", "uuid", &uuid);
    let out = run_on("evil", "evil", &app);
    assert!(out.status.success(), "{}", text(&out.stderr));
    edit(
        "db",
        "file",
        &records.join("evil.img").display().to_string(),
    );
    let out = run("db-app", &app);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{stdout}");
    assert!(!stdout.contains("wrote"), "{stdout}");
    assert!(
        stderr.contains("volume db: check key of disk")
            && stderr.contains("opens no LUKS2 keyslot"),
        "{stderr}"
    );
}

/// `veil bench volume` (one TCG boot, 64 MiB disks, 1 s per phase): every
/// phase is reported for the plain disk and the encrypted one with their
/// ratio, the TCG caveat is printed, and the two disk files (and the
/// sandbox's record) are gone once it returns.
#[test]
fn bench_volume_reports_every_phase_against_the_plain_disk_and_leaves_no_disk() {
    let env = Env::new();
    let t = Instant::now();
    let out = ok(env
        .veil()
        .args([
            "bench",
            "volume",
            "--size",
            "64M",
            "--seconds",
            "1",
            "--accel",
            "tcg",
        ])
        .arg("--kernel")
        .arg(guest_kernel())
        .arg("--initrd")
        .arg(guest()["initrd"].as_str().unwrap())
        .output()
        .unwrap());
    eprintln!("veil bench volume took {:?}", t.elapsed());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("plain MB/s")
            && stdout.contains("encrypted MB/s")
            && stdout.contains("encrypted/plain"),
        "{stdout}"
    );
    assert!(stdout.contains("dm-integrity hmac-sha256"), "{stdout}");
    for (phase, block) in [
        ("seq_write", "1M"),
        ("seq_read", "1M"),
        ("rand_write", "4K"),
        ("rand_read", "4K"),
    ] {
        let row: Vec<&str> = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(phase))
            .unwrap_or_else(|| panic!("no {phase} row in {stdout}"))
            .split_whitespace()
            .collect();
        // phase, block, plain MB/s, plain IOPS, encrypted MB/s, encrypted IOPS, ratio
        assert_eq!(row.len(), 7, "{row:?}");
        assert_eq!(row[1], block, "{row:?}");
        for (i, what) in [(2, "plain MB/s"), (4, "encrypted MB/s")] {
            let v: f64 = row[i].parse().unwrap();
            assert!(v > 0.0, "{phase}: {what} {v}: {stdout}");
        }
        let ratio: f64 = row[6].strip_suffix('x').unwrap().parse().unwrap();
        assert!(ratio > 0.0, "{phase}: {stdout}");
    }
    assert!(
        stdout.contains("NOTE: accelerator tcg") && stdout.contains("indicative only"),
        "{stdout}"
    );
    // Nothing left: no disk file, no record.
    let run = env.data().join("run");
    let left: Vec<_> = std::fs::read_dir(&run)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The first 16 MiB (header and keyslots) of a LUKS2 volume the host makes
/// with stock cryptsetup, a key of its own and UUID `uuid`.
fn host_made_header(env: &Env, uuid: &str) -> Vec<u8> {
    let f = env.dir.path().join("host-made.img");
    let _ = std::fs::remove_file(&f);
    std::fs::File::create(&f)
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    let key = env.dir.path().join("host.key");
    std::fs::write(&key, [7u8; 64]).unwrap();
    ok(Command::new("cryptsetup")
        .args([
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks2",
            "--disable-locks",
        ])
        .args([
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--uuid",
            uuid,
        ])
        .arg("--key-file")
        .arg(&key)
        .arg(&f)
        .output()
        .unwrap());
    let mut b = std::fs::read(&f).unwrap();
    b.truncate(16 << 20);
    b
}

/// Boot the guest kernel with an initrd of Debian's busybox and stock
/// cryptsetup (with its libraries and the dm modules veil's guest has),
/// which opens a copy of `volume` with `key` and prints the volume's log.
fn offline_open(env: &Env, volume: &Path, key: &Path) -> String {
    use veil_runtime::vm::cpio::{Archive, Node};
    let g = guest();
    let version = g["kernel_version"].as_str().unwrap();
    let mut a = Archive::new();
    let file = |p: &Path| Node::File {
        mode: 0o755,
        data: std::fs::read(p).unwrap(),
    };
    a.add("bin/busybox", file(Path::new("/bin/busybox")))
        .unwrap();
    a.add(
        "usr/sbin/cryptsetup",
        file(Path::new("/usr/sbin/cryptsetup")),
    )
    .unwrap();
    let ldd = Command::new("ldd")
        .arg("/usr/sbin/cryptsetup")
        .output()
        .unwrap();
    for line in text(&ldd.stdout).lines() {
        let p = match line.split_once("=>") {
            Some((_, r)) => r.trim().split(' ').next().unwrap_or(""),
            None => line.trim().split(' ').next().unwrap_or(""),
        };
        if p.starts_with('/') {
            a.add(p.trim_start_matches('/'), file(Path::new(p)))
                .unwrap();
        }
    }
    let mut mods = String::new();
    for m in g["modules"].as_array().unwrap() {
        let rel = m.as_str().unwrap();
        let host = Path::new("/lib/modules").join(version).join(rel);
        let inside = format!("lib/modules/{version}/{rel}");
        a.add(&inside, file(&host)).unwrap();
        mods.push_str(&format!("/{inside}\n"));
    }
    a.add(
        "modules",
        Node::File {
            mode: 0o644,
            data: mods.into_bytes(),
        },
    )
    .unwrap();
    a.add("key", file(key)).unwrap();
    let init = "#!/bin/busybox sh\n\
        /bin/busybox --install -s /bin\n\
        mkdir -p /proc /sys /dev /mnt /run/cryptsetup\n\
        mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev\n\
        for m in $(cat /modules); do insmod $m 2>/dev/null; done\n\
        if DM_DISABLE_UDEV=1 /usr/sbin/cryptsetup open --key-file /key /dev/vda vol && mount -t ext4 -o ro /dev/mapper/vol /mnt; then echo RECOVERED; cat /mnt/log; else echo OPEN-FAILED; fi\n\
        poweroff -f\n";
    a.add(
        "init",
        Node::File {
            mode: 0o755,
            data: init.as_bytes().to_vec(),
        },
    )
    .unwrap();
    let initrd = env.dir.path().join("recovery-initrd.img");
    std::fs::write(&initrd, a.write()).unwrap();
    let copy = env.dir.path().join("volume-copy.img");
    ok(Command::new("cp")
        .arg("--sparse=always")
        .arg(volume)
        .arg(&copy)
        .output()
        .unwrap());
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "512",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(guest_kernel())
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", copy.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    let s = text(&out.stdout).replace('\r', "");
    eprintln!("recovery VM:\n{s}\n{}", text(&out.stderr));
    s
}
