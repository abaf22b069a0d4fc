//! `bench_volume` (`veil bench volume`, docs/storage.md): the throughput
//! of an encrypted volume against the same kind of disk unencrypted, in
//! the same VM.
//!
//! The host attaches two blank disks of one size (serials
//! [`bench::PLAIN_SERIAL`] and [`bench::CRYPT_SERIAL`]) and announces the
//! size in fw_cfg ([`bench::FW_CFG`]); without the announcement, or with a
//! disk of another size or with content, nothing is touched. The encrypted
//! disk is formatted and opened by the same code, with the same
//! parameters, as a persistent volume ([`storage::format_volume`],
//! [`storage::open_volume`]: LUKS2, aes-xts-plain64 + hmac-sha256 through
//! dm-integrity with its journal, 4096-byte sectors, integrity wipe), under
//! a 64-byte key from `getrandom` that never leaves the guest and is
//! dropped (zeroized) once the disk is open. The plain disk is written
//! once over the same range (so both are allocated on the host, as the
//! wipe allocates the encrypted one). Then each phase runs for the same
//! time on the plain disk and on `/dev/mapper/veil-bench-crypt`, with
//! `O_DIRECT` (no guest page cache) and one request in flight: sequential
//! write and read in 1 MiB blocks, 4 KiB random write and read at the same
//! pseudo-random offsets (fixed seed) on both. Write phases end with a
//! flush, inside the timing. The mapping is closed at the end.
//!
//! Only a policy whose data sets `sandbox.bench_volume` admits the
//! request (the Rego rule, and again here); only `veil bench volume`
//! generates one.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use veil_agent_api::bench::{
    self, BenchPhase, BenchVolumeRequest, BenchVolumeResult, PhaseRun, RAND_BLOCK_BYTES,
    SEQ_BLOCK_BYTES,
};

use crate::storage::{self, AnnouncedDisk};

/// The fw_cfg item with the benchmark disks' size.
pub const FW_CFG_PATH: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/veil/bench-volume-bytes/raw";
/// The device-mapper name of the opened encrypted disk.
pub const MAPPER: &str = "veil-bench-crypt";
/// Bytes of the random passphrase (as the scratch disk's).
const KEY_BYTES: usize = 64;

/// The unencrypted disk, as the set-up announces it.
pub const PLAIN: AnnouncedDisk = AnnouncedDisk {
    what: "bench_volume",
    serial: bench::PLAIN_SERIAL,
    fw_cfg: bench::FW_CFG,
    min_bytes: bench::MIN_BYTES,
    max_bytes: bench::MAX_BYTES,
};
/// The disk the guest encrypts, as the set-up announces it.
pub const CRYPT: AnnouncedDisk = AnnouncedDisk {
    serial: bench::CRYPT_SERIAL,
    ..PLAIN
};

/// One benchmark at a time (the disks are blank only once anyway).
static BUSY: AtomicBool = AtomicBool::new(false);

/// Why the request is refused before anything is touched: not the VM
/// sandbox, or a policy whose data does not set `sandbox.bench_volume`
/// (whatever its rules say).
pub fn gate(in_vm: bool, policy_admits: bool) -> Result<(), String> {
    if !policy_admits {
        return Err("bench_volume: refused by policy: sandbox.bench_volume is false (only the policy `veil bench volume` generates admits it)".into());
    }
    if !in_vm {
        return Err("bench_volume: needs the VM sandbox (veil bench volume boots one): the process sandbox has no disks of its own and gives the host every byte".into());
    }
    Ok(())
}

/// A buffer aligned for `O_DIRECT` (4096 bytes), filled with a
/// non-repeating pattern (xorshift), without `unsafe`.
struct Aligned {
    buf: Vec<u8>,
    at: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize, seed: u64) -> Self {
        let mut buf = vec![0u8; len + 4096];
        let at = buf.as_ptr().align_offset(4096);
        let mut rng = Rng(seed | 1);
        for chunk in buf[at..at + len].chunks_mut(8) {
            let x = rng.next().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
        Aligned { buf, at, len }
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[self.at..self.at + self.len]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.at..self.at + self.len]
    }
}

/// xorshift64*: the random phases' offsets (deterministic per seed, so
/// both disks see the same ones).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The offsets of the random phases: 4 KiB-aligned, within `area`.
pub fn random_offsets(seed: u64, area: u64) -> impl Iterator<Item = u64> {
    let blocks = (area / u64::from(RAND_BLOCK_BYTES)).max(1);
    let mut rng = Rng(seed | 1);
    std::iter::repeat_with(move || (rng.next() % blocks) * u64::from(RAND_BLOCK_BYTES))
}

/// Which phase, and what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    SeqWrite,
    SeqRead,
    RandWrite,
    RandRead,
}

impl Phase {
    const ALL: [Phase; 4] = [
        Phase::SeqWrite,
        Phase::SeqRead,
        Phase::RandWrite,
        Phase::RandRead,
    ];
    fn name(self) -> &'static str {
        bench::PHASES[self as usize]
    }
    fn block(self) -> u32 {
        match self {
            Phase::SeqWrite | Phase::SeqRead => SEQ_BLOCK_BYTES,
            Phase::RandWrite | Phase::RandRead => RAND_BLOCK_BYTES,
        }
    }
    fn writes(self) -> bool {
        matches!(self, Phase::SeqWrite | Phase::RandWrite)
    }
}

/// Run `phase` on `f` for `time`: requests of the phase's block size over
/// `[0, area)` (sequential ones wrap around), one at a time; writes take
/// `pattern`'s first bytes, reads land in `rbuf`.
#[allow(clippy::too_many_arguments)]
fn run_phase(
    f: &File,
    dev: &str,
    phase: Phase,
    area: u64,
    pattern: &Aligned,
    rbuf: &mut Aligned,
    time: Duration,
    seed: u64,
) -> Result<PhaseRun, String> {
    let block = phase.block() as usize;
    let mut offsets = random_offsets(seed, area);
    let mut seq = 0u64;
    let mut ops = 0u64;
    let start = Instant::now();
    while start.elapsed() < time {
        let at = match phase {
            Phase::SeqWrite | Phase::SeqRead => {
                if seq + block as u64 > area {
                    seq = 0;
                }
                let at = seq;
                seq += block as u64;
                at
            }
            Phase::RandWrite | Phase::RandRead => offsets.next().unwrap_or(0),
        };
        let r = if phase.writes() {
            f.write_all_at(&pattern.bytes()[..block], at)
        } else {
            f.read_exact_at(&mut rbuf.bytes_mut()[..block], at)
        };
        r.map_err(|e| {
            format!(
                "bench_volume: {} on {dev} at offset {at}: {e}",
                phase.name()
            )
        })?;
        ops += 1;
    }
    if phase.writes() {
        f.sync_data()
            .map_err(|e| format!("bench_volume: flushing {dev}: {e}"))?;
    }
    Ok(PhaseRun {
        ops,
        bytes: ops * block as u64,
        micros: start.elapsed().as_micros() as u64,
    })
}

fn open_direct(dev: &Path) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .map_err(|e| format!("bench_volume: opening {} (O_DIRECT): {e}", dev.display()))
}

fn size_of(f: &mut File, dev: &Path) -> Result<u64, String> {
    f.seek(SeekFrom::End(0))
        .map_err(|e| format!("bench_volume: size of {}: {e}", dev.display()))
}

/// Write `buf` over `[0, area)` of `f` in 1 MiB blocks, then flush.
fn fill(f: &File, dev: &Path, area: u64, buf: &Aligned) -> Result<(), String> {
    let mut at = 0;
    while at < area {
        f.write_all_at(buf.bytes(), at)
            .map_err(|e| format!("bench_volume: filling {}: {e}", dev.display()))?;
        at += buf.bytes().len() as u64;
    }
    f.sync_data()
        .map_err(|e| format!("bench_volume: flushing {}: {e}", dev.display()))
}

/// The first 4 KiB block of `read` (the disk's first MiB after the
/// phases) that neither write put there: the sequential write wrote
/// `pattern`, the random write `pattern`'s first 4 KiB at some offsets.
fn not_written(read: &[u8], pattern: &[u8]) -> Option<usize> {
    let b = RAND_BLOCK_BYTES as usize;
    read.chunks(b)
        .zip(pattern.chunks(b))
        .position(|(got, seq)| got != seq && got != &pattern[..got.len()])
}

/// Closes the mapping when dropped (an error path); [`Mapping::close`]
/// reports the error on the normal path.
struct Mapping(bool);

impl Mapping {
    fn close(mut self) -> Result<(), String> {
        self.0 = false;
        storage::close_luks(MAPPER).map_err(|e| format!("bench_volume: {e}"))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.0 {
            let _ = storage::close_luks(MAPPER);
        }
    }
}

/// Clears [`BUSY`] when dropped.
struct Busy;

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.store(false, Ordering::SeqCst);
    }
}

/// Check the announced disks, format and open the encrypted one, fill the
/// plain one, run every phase on both, close the mapping.
pub fn run(req: &BenchVolumeRequest, fw_cfg: &Path) -> Result<BenchVolumeResult, String> {
    if BUSY.swap(true, Ordering::SeqCst) {
        return Err("bench_volume: a benchmark is already running in this guest".into());
    }
    let _busy = Busy;
    let expected = PLAIN.announced(fw_cfg)?.ok_or_else(|| {
        format!(
            "bench_volume: no fw_cfg {}: the set-up announced no benchmark disks (veil bench volume attaches them)",
            bench::FW_CFG
        )
    })?;
    let plain_dev = PLAIN.find_checked(expected)?;
    let crypt_dev = CRYPT.find_checked(expected)?;
    let crypt_s = crypt_dev.display().to_string();

    let t = Instant::now();
    let key = storage::random_key(KEY_BYTES).map_err(|e| format!("bench_volume: {e}"))?;
    storage::format_volume(&crypt_s, &key, &["--label", "veil:bench"]).map_err(|m| {
        format!(
            "bench_volume: formatting {crypt_s} ({}): {m}",
            storage::ENCRYPTION
        )
    })?;
    let mapped = storage::open_volume(&crypt_s, MAPPER, &key)
        .map_err(|(_, m)| format!("bench_volume: opening {crypt_s} with cryptsetup: {m}"))?;
    let mapping = Mapping(true);
    drop(key);
    let format_ms = t.elapsed().as_millis() as u64;
    tracing::info!(device = %crypt_s, format_ms, "bench_volume: encrypted disk formatted and opened");

    let mut plain = open_direct(&plain_dev)?;
    let mut crypt = open_direct(&mapped)?;
    let area = size_of(&mut crypt, &mapped)?.min(size_of(&mut plain, &plain_dev)?)
        / u64::from(SEQ_BLOCK_BYTES)
        * u64::from(SEQ_BLOCK_BYTES);
    if area == 0 {
        return Err(format!(
            "bench_volume: {} has no room left after LUKS2 and dm-integrity (disks of {expected} bytes)",
            mapped.display()
        ));
    }
    let pattern = Aligned::new(SEQ_BLOCK_BYTES as usize, req.seed);
    let mut buf = Aligned::new(SEQ_BLOCK_BYTES as usize, 0);
    let t = Instant::now();
    fill(&plain, &plain_dev, area, &pattern)?;
    let fill_ms = t.elapsed().as_millis() as u64;
    tracing::info!(area, fill_ms, "bench_volume: plain disk filled");

    let time = Duration::from_secs(u64::from(req.seconds));
    let (plain_s, mapped_s) = (
        plain_dev.display().to_string(),
        mapped.display().to_string(),
    );
    let mut phases = Vec::new();
    for phase in Phase::ALL {
        let p = run_phase(
            &plain, &plain_s, phase, area, &pattern, &mut buf, time, req.seed,
        )?;
        let e = run_phase(
            &crypt, &mapped_s, phase, area, &pattern, &mut buf, time, req.seed,
        )?;
        tracing::info!(
            phase = phase.name(),
            plain_mb_s = p.mb_per_s(),
            encrypted_mb_s = e.mb_per_s(),
            "bench_volume: phase done"
        );
        phases.push(BenchPhase {
            name: phase.name().into(),
            block_bytes: phase.block(),
            plain: p,
            encrypted: e,
        });
    }
    // What was written reads back through the mapping (a broken mapping
    // would otherwise measure fine).
    crypt
        .read_exact_at(buf.bytes_mut(), 0)
        .map_err(|e| format!("bench_volume: reading back {mapped_s}: {e}"))?;
    if let Some(i) = not_written(buf.bytes(), pattern.bytes()) {
        return Err(format!(
            "bench_volume: reading back the first MiB of {mapped_s}: its 4 KiB block {i} is not what was written"
        ));
    }
    drop((plain, crypt));
    mapping.close()?;
    Ok(BenchVolumeResult {
        disk_bytes: expected,
        area_bytes: area,
        plain_device: plain_s,
        encrypted_device: mapped_s,
        format_ms,
        fill_ms,
        encryption: storage::ENCRYPTION.into(),
        phases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_the_bench_policy_in_a_vm_is_served() {
        let e = gate(true, false).unwrap_err();
        assert!(
            e.starts_with("bench_volume: refused by policy: sandbox.bench_volume is false"),
            "{e}"
        );
        assert!(
            gate(false, false)
                .unwrap_err()
                .contains("refused by policy")
        );
        let e = gate(false, true).unwrap_err();
        assert!(e.contains("needs the VM sandbox"), "{e}");
        gate(true, true).unwrap();
    }

    #[test]
    fn without_an_announcement_nothing_is_touched() {
        let d = tempfile::tempdir().unwrap();
        let req = BenchVolumeRequest {
            seconds: 1,
            seed: bench::DEFAULT_SEED,
        };
        let e = run(&req, &d.path().join("missing")).unwrap_err();
        assert!(e.contains("announced no benchmark disks"), "{e}");
        std::fs::write(d.path().join("raw"), b"1024").unwrap();
        let e = run(&req, &d.path().join("raw")).unwrap_err();
        assert!(e.contains(bench::FW_CFG) && e.contains("got 1024"), "{e}");
        // A refusal leaves the guard free for the next request.
        assert!(!BUSY.load(Ordering::SeqCst));
    }

    #[test]
    fn the_announced_size_and_blank_disks_are_checked_by_name() {
        assert_eq!(PLAIN.parse_size(b"268435456\n").unwrap(), 256 << 20);
        for bad in [&b"64M"[..], b"", b"4096", b"68719476737", b"\xff"] {
            let e = PLAIN.parse_size(bad).unwrap_err();
            assert!(
                e.starts_with("bench_volume: fw_cfg opt/veil/bench-volume-bytes"),
                "{e}"
            );
        }
        let e = CRYPT
            .check("/dev/vdc", 256 << 20, 96 << 20, &[0; 4096])
            .unwrap_err();
        assert!(
            e.contains("check size of disk /dev/vdc (serial veil-bench-crypt)")
                && e.contains("expected 268435456 bytes")
                && e.contains("got 100663296"),
            "{e}"
        );
        let mut head = vec![0u8; 4096];
        head[7] = 1;
        let e = PLAIN
            .check("/dev/vdb", 1 << 30, 1 << 30, &head)
            .unwrap_err();
        assert!(
            e.contains("serial veil-bench-plain") && e.contains("offset 7"),
            "{e}"
        );
    }

    #[test]
    fn random_offsets_are_aligned_in_range_and_the_same_per_seed() {
        let area = 40 << 20;
        let a: Vec<u64> = random_offsets(7, area).take(1000).collect();
        let b: Vec<u64> = random_offsets(7, area).take(1000).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|o| o % 4096 == 0 && o + 4096 <= area));
        let distinct: std::collections::BTreeSet<_> = a.iter().collect();
        assert!(distinct.len() > 900, "{}", distinct.len());
        assert_ne!(a, random_offsets(8, area).take(1000).collect::<Vec<_>>());
    }

    #[test]
    fn phases_measure_a_file_and_read_back_what_they_wrote() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
            .unwrap();
        let area = 4 << 20;
        f.set_len(area).unwrap();
        let pattern = Aligned::new(SEQ_BLOCK_BYTES as usize, 3);
        let mut buf = Aligned::new(SEQ_BLOCK_BYTES as usize, 0);
        assert_eq!(pattern.bytes().as_ptr() as usize % 4096, 0);
        for phase in Phase::ALL {
            let r = run_phase(
                &f,
                "disk",
                phase,
                area,
                &pattern,
                &mut buf,
                Duration::from_millis(50),
                3,
            )
            .unwrap();
            assert!(r.ops > 0 && r.micros >= 50_000, "{phase:?}: {r:?}");
            assert_eq!(r.bytes, r.ops * u64::from(phase.block()));
        }
        let mut first = vec![0u8; 1 << 20];
        f.read_exact_at(&mut first, 0).unwrap();
        assert_eq!(not_written(&first, pattern.bytes()), None);
        first[5000] ^= 1;
        assert_eq!(not_written(&first, pattern.bytes()), Some(1));
    }

    proptest! {
        #[test]
        fn arbitrary_fw_cfg_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(n) = PLAIN.parse_size(&raw) {
                prop_assert!((bench::MIN_BYTES..=bench::MAX_BYTES).contains(&n) && n % 4096 == 0);
            }
        }
    }
}
