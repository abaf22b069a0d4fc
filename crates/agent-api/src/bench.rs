//! `bench_volume`: the benchmark-only request of `veil bench volume`
//! (docs/storage.md). The host attaches two blank disks of the same size
//! ([`PLAIN_SERIAL`], [`CRYPT_SERIAL`]) and announces their size in fw_cfg
//! ([`FW_CFG`]); the guest formats the second one exactly as an encrypted
//! volume (LUKS2, dm-crypt + dm-integrity) with a key born in the guest and
//! measures both with the same I/O. Only a policy with
//! `sandbox.bench_volume` (which only `veil bench volume` generates) admits
//! the request.

use serde::{Deserialize, Serialize};

/// The virtio-blk serial of the benchmark's unencrypted disk.
pub const PLAIN_SERIAL: &str = "veil-bench-plain";
/// The virtio-blk serial of the benchmark's disk the guest encrypts.
pub const CRYPT_SERIAL: &str = "veil-bench-crypt";
/// The fw_cfg item announcing the size in bytes (decimal ASCII) of each of
/// the two benchmark disks. Without it the guest uses neither.
pub const FW_CFG: &str = "opt/veil/bench-volume-bytes";
/// Smallest benchmark disk: the LUKS2 header (16 MiB) and dm-integrity's
/// tags and journal leave ~40 MiB to measure.
pub const MIN_BYTES: u64 = 64 << 20;
/// Largest benchmark disk.
pub const MAX_BYTES: u64 = 64 << 30;
/// Longest phase the request may ask for, in seconds.
pub const MAX_SECONDS: u32 = 600;
/// Block size of the sequential phases.
pub const SEQ_BLOCK_BYTES: u32 = 1 << 20;
/// Block size of the random phases (the volumes' sector size).
pub const RAND_BLOCK_BYTES: u32 = 4096;
/// The phases, in the order they run (each on the plain disk, then on
/// the encrypted one).
pub const PHASES: [&str; 4] = ["seq_write", "seq_read", "rand_write", "rand_read"];

/// Measure the announced benchmark disks: each phase runs `seconds` on
/// the plain disk, then `seconds` on the encrypted one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchVolumeRequest {
    /// Seconds per phase and disk (1..=[`MAX_SECONDS`]).
    pub seconds: u32,
    /// Seed of the random phases' offsets (the same offsets on both disks).
    #[serde(default = "default_seed")]
    pub seed: u64,
}

/// The seed `veil bench volume` uses, so runs are comparable.
pub const DEFAULT_SEED: u64 = 0x7665_696c_6265_6e63;

fn default_seed() -> u64 {
    DEFAULT_SEED
}

/// What one phase did on one disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseRun {
    /// I/O requests completed.
    pub ops: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Wall time, including the final flush of a write phase.
    pub micros: u64,
}

impl PhaseRun {
    /// Throughput in MB/s (10^6 bytes per second).
    pub fn mb_per_s(&self) -> f64 {
        if self.micros == 0 {
            return 0.0;
        }
        self.bytes as f64 / self.micros as f64
    }
    /// Requests per second.
    pub fn iops(&self) -> f64 {
        if self.micros == 0 {
            return 0.0;
        }
        self.ops as f64 * 1e6 / self.micros as f64
    }
}

/// One phase on both disks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchPhase {
    /// One of [`PHASES`].
    pub name: String,
    /// Bytes per request.
    pub block_bytes: u32,
    /// The unencrypted disk.
    pub plain: PhaseRun,
    /// The same I/O on the encrypted disk (dm-crypt + dm-integrity).
    pub encrypted: PhaseRun,
}

/// `bench_volume` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchVolumeResult {
    /// Size of each disk as announced (and checked).
    pub disk_bytes: u64,
    /// Bytes of each disk the phases use: the encrypted disk's data area
    /// (what LUKS2 and dm-integrity leave), the same range on both.
    pub area_bytes: u64,
    /// The guest's devices: the plain disk and the opened mapping.
    pub plain_device: String,
    pub encrypted_device: String,
    /// `luksFormat` of the encrypted disk, integrity wipe included.
    pub format_ms: u64,
    /// Writing the plain disk's area once before the phases (so both
    /// disks are allocated on the host, as the wipe allocates the other).
    pub fill_ms: u64,
    /// What the encrypted disk is: cipher, integrity, sector size.
    pub encryption: String,
    pub phases: Vec<BenchPhase>,
}

impl BenchVolumeRequest {
    /// Range-check the request.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_SECONDS).contains(&self.seconds) {
            return Err(format!(
                "{} seconds per phase is not in 1..={MAX_SECONDS}",
                self.seconds
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second_and_zero_time_is_zero() {
        let r = PhaseRun {
            ops: 500,
            bytes: 500 * 4096,
            micros: 250_000,
        };
        assert_eq!(r.iops(), 2000.0);
        assert!((r.mb_per_s() - 8.192).abs() < 1e-9);
        assert_eq!(PhaseRun::default().mb_per_s(), 0.0);
        assert_eq!(PhaseRun::default().iops(), 0.0);
    }

    #[test]
    fn seconds_are_bounded_and_the_seed_defaults() {
        let r: BenchVolumeRequest = serde_json::from_str(r#"{"seconds": 5}"#).unwrap();
        assert_eq!(r.seed, DEFAULT_SEED);
        r.check().unwrap();
        for s in [0, MAX_SECONDS + 1] {
            let e = BenchVolumeRequest {
                seconds: s,
                seed: 1,
            }
            .check()
            .unwrap_err();
            assert!(e.contains("1..=600"), "{e}");
        }
    }
}
