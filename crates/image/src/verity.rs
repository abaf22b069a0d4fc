//! dm-verity hash trees, bit-identical to `veritysetup format`.
//!
//! The layout follows cryptsetup's `lib/verity/verity_hash.c`: the data
//! device is split into `data_block_size` blocks (a trailing partial block
//! is not covered, as in veritysetup); each level hashes the blocks of the
//! level below into hash blocks of `hash_block_size`; levels are stored
//! root-most first. Format 1 hashes `salt ‖ block` and pads each digest to a
//! power of two; format 0 (Chrome OS) hashes `block ‖ salt` unpadded. With a
//! superblock, a 512-byte header comes first and the tree starts at the
//! next hash block.
//!
//! Hashing is spread over all available cores: each level is cut into
//! ranges of output hash blocks, each worker reads its input with
//! positioned reads and writes its hash blocks in place, so memory stays
//! bounded by `threads × hashes-per-block × block size`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Most tree levels veritysetup allows.
pub const MAX_LEVELS: usize = 63;
/// Size of the on-disk superblock.
pub const SUPERBLOCK_SIZE: usize = 512;
/// Largest salt the superblock can hold.
pub const MAX_SALT: usize = 256;

/// Hash algorithm of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerityHash {
    /// SHA-1 (legacy).
    Sha1,
    /// SHA-256 (veritysetup's default).
    Sha256,
    /// SHA-512.
    Sha512,
}

impl VerityHash {
    /// Name as written in the superblock and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            VerityHash::Sha1 => "sha1",
            VerityHash::Sha256 => "sha256",
            VerityHash::Sha512 => "sha512",
        }
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            VerityHash::Sha1 => 20,
            VerityHash::Sha256 => 32,
            VerityHash::Sha512 => 64,
        }
    }

    /// Parse `sha1` / `sha256` / `sha512`.
    pub fn parse(name: &str) -> Result<Self, VerityError> {
        match name {
            "sha1" => Ok(VerityHash::Sha1),
            "sha256" => Ok(VerityHash::Sha256),
            "sha512" => Ok(VerityHash::Sha512),
            other => Err(VerityError::InvalidParams(format!(
                "hash algorithm {other:?} (expected sha1, sha256 or sha512)"
            ))),
        }
    }

    fn hash_into(self, format: u32, salt: &[u8], block: &[u8], out: &mut [u8]) {
        fn run<D: sha2::Digest>(format: u32, salt: &[u8], block: &[u8], out: &mut [u8]) {
            let mut h = D::new();
            if format == 0 {
                h.update(block);
                h.update(salt);
            } else {
                h.update(salt);
                h.update(block);
            }
            out.copy_from_slice(&h.finalize());
        }
        match self {
            VerityHash::Sha1 => run::<sha1::Sha1>(format, salt, block, out),
            VerityHash::Sha256 => run::<sha2::Sha256>(format, salt, block, out),
            VerityHash::Sha512 => run::<sha2::Sha512>(format, salt, block, out),
        }
    }
}

/// Why a tree could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    /// Parameters veritysetup would refuse too.
    #[error("invalid dm-verity parameters: {0}")]
    InvalidParams(String),
    /// The data device is too small for even one block.
    #[error("data device holds {size} bytes, less than one {block_size}-byte data block")]
    TooSmall {
        /// Device size.
        size: u64,
        /// Data block size.
        block_size: u32,
    },
    /// A read or write failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> VerityError {
    let context = context.into();
    move |source| VerityError::Io { context, source }
}

/// `veritysetup format` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    /// Hash algorithm (`--hash`).
    pub hash: VerityHash,
    /// Data block size (`--data-block-size`).
    pub data_block_size: u32,
    /// Hash block size (`--hash-block-size`).
    pub hash_block_size: u32,
    /// Salt (`--salt`; empty for `--salt=-`).
    pub salt: Vec<u8>,
    /// Format type, 1 normal or 0 Chrome OS (`--format`).
    pub format: u32,
    /// Number of data blocks to cover (`--data-blocks`); all whole blocks of
    /// the device when `None`.
    pub data_blocks: Option<u64>,
    /// Write a superblock (`--no-superblock` turns it off).
    pub superblock: bool,
    /// UUID written in the superblock (`--uuid`).
    pub uuid: [u8; 16],
}

impl VerityParams {
    /// veritysetup's defaults (sha256, 4096/4096, format 1, superblock) with
    /// the given salt and UUID.
    pub fn new(salt: Vec<u8>, uuid: [u8; 16]) -> Self {
        VerityParams {
            hash: VerityHash::Sha256,
            data_block_size: 4096,
            hash_block_size: 4096,
            salt,
            format: 1,
            data_blocks: None,
            superblock: true,
            uuid,
        }
    }

    fn validate(&self) -> Result<(), VerityError> {
        let bad = |m: String| Err(VerityError::InvalidParams(m));
        for (name, v) in [
            ("data block size", self.data_block_size),
            ("hash block size", self.hash_block_size),
        ] {
            if !v.is_power_of_two() || !(512..=(1 << 20)).contains(&v) {
                return bad(format!(
                    "{name} {v} (expected a power of two from 512 to 1048576)"
                ));
            }
        }
        if self.format > 1 {
            return bad(format!("format {} (expected 0 or 1)", self.format));
        }
        if self.salt.len() > MAX_SALT {
            return bad(format!(
                "salt of {} bytes (at most {MAX_SALT})",
                self.salt.len()
            ));
        }
        if self.data_blocks == Some(0) {
            return bad("data blocks 0".into());
        }
        Ok(())
    }

    /// Bytes each digest occupies in a hash block.
    fn digest_slot(&self) -> usize {
        let d = self.hash.digest_len();
        if self.format == 0 {
            d
        } else {
            d.next_power_of_two()
        }
    }

    /// log2 of the digests per hash block (`get_bits_down`).
    fn hash_per_block_bits(&self) -> u32 {
        let per = self.hash_block_size as usize / self.hash.digest_len();
        per.ilog2()
    }

    /// The 512-byte superblock (`struct verity_sb`, little-endian).
    pub fn superblock_bytes(&self, data_blocks: u64) -> [u8; SUPERBLOCK_SIZE] {
        let mut sb = [0u8; SUPERBLOCK_SIZE];
        sb[0..8].copy_from_slice(b"verity\0\0");
        sb[8..12].copy_from_slice(&1u32.to_le_bytes());
        sb[12..16].copy_from_slice(&self.format.to_le_bytes());
        sb[16..32].copy_from_slice(&self.uuid);
        let name = self.hash.name().as_bytes();
        sb[32..32 + name.len()].copy_from_slice(name);
        sb[64..68].copy_from_slice(&self.data_block_size.to_le_bytes());
        sb[68..72].copy_from_slice(&self.hash_block_size.to_le_bytes());
        sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
        // salt.len() <= 256 is checked by validate().
        sb[80..82].copy_from_slice(&(self.salt.len() as u16).to_le_bytes());
        sb[88..88 + self.salt.len()].copy_from_slice(&self.salt);
        sb
    }
}

/// The result of `format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityTree {
    /// The root hash.
    pub root_hash: Vec<u8>,
    /// Data blocks covered.
    pub data_blocks: u64,
    /// Hash blocks written (excluding the superblock).
    pub hash_blocks: u64,
    /// Size the hash device needs, in bytes.
    pub hash_device_size: u64,
}

/// Tree geometry: where each level starts (in hash blocks from the start
/// of the hash device) and how many blocks it has; index 0 hashes the data.
#[derive(Debug, Clone)]
struct Geometry {
    level_start: Vec<u64>,
    level_size: Vec<u64>,
    end: u64,
}

fn geometry(
    params: &VerityParams,
    data_blocks: u64,
    first_block: u64,
) -> Result<Geometry, VerityError> {
    let bits = params.hash_per_block_bits();
    if bits == 0 {
        return Err(VerityError::InvalidParams(format!(
            "hash block size {} holds fewer than two {} digests",
            params.hash_block_size,
            params.hash.name()
        )));
    }
    let bits = u64::from(bits);
    let mut levels = 0u64;
    while bits * levels < 64 && (data_blocks - 1) >> (bits * levels) != 0 {
        levels += 1;
    }
    if levels as usize > MAX_LEVELS {
        return Err(VerityError::InvalidParams(format!("{levels} tree levels")));
    }
    let n = levels as usize;
    let mut level_start = vec![0; n];
    let mut level_size = vec![0; n];
    let mut pos = first_block;
    for i in (0..n).rev() {
        level_start[i] = pos;
        let shift = (i as u64 + 1) * bits;
        if shift > 63 {
            return Err(VerityError::InvalidParams("tree too deep".into()));
        }
        let s = data_blocks.div_ceil(1u64 << shift);
        level_size[i] = s;
        pos = pos
            .checked_add(s)
            .ok_or_else(|| VerityError::InvalidParams("hash device too large".into()))?;
    }
    Ok(Geometry {
        level_start,
        level_size,
        end: pos,
    })
}

/// Compute the tree for `data` and write it (and the superblock when
/// enabled) to `hash_dev` from offset 0, exactly as `veritysetup format
/// DATA HASH` does.
pub fn format(
    data: &File,
    hash_dev: &File,
    params: &VerityParams,
) -> Result<VerityTree, VerityError> {
    format_with_threads(data, hash_dev, params, default_threads())
}

/// Compute only the root hash; the tree goes to an anonymous temporary file.
pub fn root_hash(data: &File, params: &VerityParams) -> Result<VerityTree, VerityError> {
    let tmp = tempfile::tempfile().map_err(io_err("creating a temporary hash file"))?;
    format(data, &tmp, params)
}

/// Number of worker threads used by [`format`].
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// [`format`] with an explicit worker count.
pub fn format_with_threads(
    data: &File,
    hash_dev: &File,
    params: &VerityParams,
    threads: usize,
) -> Result<VerityTree, VerityError> {
    params.validate()?;
    let dbs = u64::from(params.data_block_size);
    let hbs = u64::from(params.hash_block_size);
    let size = data.metadata().map_err(io_err("stat data device"))?.len();
    let size = if size == 0 {
        block_device_size(data)?
    } else {
        size
    };
    let data_blocks = match params.data_blocks {
        Some(n) => {
            if n.checked_mul(dbs).is_none_or(|need| need > size) {
                return Err(VerityError::InvalidParams(format!(
                    "{n} data blocks of {dbs} bytes do not fit in a {size}-byte device"
                )));
            }
            n
        }
        None => size / dbs,
    };
    if data_blocks == 0 {
        return Err(VerityError::TooSmall {
            size,
            block_size: params.data_block_size,
        });
    }
    let first_block = if params.superblock {
        (SUPERBLOCK_SIZE as u64).div_ceil(hbs)
    } else {
        0
    };
    let geo = geometry(params, data_blocks, first_block)?;
    let threads = threads.max(1);

    for level in 0..geo.level_start.len() {
        let (input, in_off, in_bs, in_blocks): (&File, u64, u64, u64) = if level == 0 {
            (data, 0, dbs, data_blocks)
        } else {
            (
                hash_dev,
                geo.level_start[level - 1] * hbs,
                hbs,
                geo.level_size[level - 1],
            )
        };
        hash_level(
            params,
            Input {
                file: input,
                offset: in_off,
                block_size: in_bs as usize,
                blocks: in_blocks,
            },
            hash_dev,
            geo.level_start[level] * hbs,
            geo.level_size[level],
            threads,
        )?;
    }

    // The root hashes the single top block (or the single data block when
    // there are no levels).
    let mut root = vec![0u8; params.hash.digest_len()];
    let (src, off, bs) = match geo.level_start.last() {
        Some(&top) => (hash_dev, top * hbs, hbs as usize),
        None => (data, 0, dbs as usize),
    };
    let mut block = vec![0u8; bs];
    src.read_exact_at(&mut block, off)
        .map_err(io_err("reading the top hash block"))?;
    params
        .hash
        .hash_into(params.format, &params.salt, &block, &mut root);

    if params.superblock {
        hash_dev
            .write_all_at(&params.superblock_bytes(data_blocks), 0)
            .map_err(io_err("writing the superblock"))?;
    }
    let hash_device_size = geo.end * hbs;
    let current = hash_dev
        .metadata()
        .map_err(io_err("stat hash device"))?
        .len();
    if current < hash_device_size && hash_dev.metadata().is_ok_and(|m| m.is_file()) {
        hash_dev
            .set_len(hash_device_size)
            .map_err(io_err("extending the hash device"))?;
    }
    Ok(VerityTree {
        root_hash: root,
        data_blocks,
        hash_blocks: geo.end - first_block,
        hash_device_size,
    })
}

struct Input<'a> {
    file: &'a File,
    offset: u64,
    block_size: usize,
    blocks: u64,
}

/// Hash `input` into `out_blocks` hash blocks written at `out_off`.
fn hash_level(
    params: &VerityParams,
    input: Input<'_>,
    out: &File,
    out_off: u64,
    out_blocks: u64,
    threads: usize,
) -> Result<(), VerityError> {
    let per_block = 1u64 << params.hash_per_block_bits();
    let threads = (threads as u64).min(out_blocks).max(1);
    let chunk = out_blocks.div_ceil(threads);
    let input = &input;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let first = t * chunk;
                let last = ((t + 1) * chunk).min(out_blocks);
                s.spawn(move || hash_range(params, input, out, out_off, first..last, per_block))
            })
            .collect();
        let mut result = Ok(());
        for w in workers {
            let r = w.join().unwrap_or_else(|_| {
                Err(VerityError::Io {
                    context: "hashing worker".into(),
                    source: io::Error::other("worker thread panicked"),
                })
            });
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

fn hash_range(
    params: &VerityParams,
    input: &Input<'_>,
    out: &File,
    out_off: u64,
    range: std::ops::Range<u64>,
    per_block: u64,
) -> Result<(), VerityError> {
    let hbs = params.hash_block_size as usize;
    let slot = params.digest_slot();
    let dlen = params.hash.digest_len();
    // Write several hash blocks per syscall.
    const OUT_BATCH: u64 = 16;
    let mut inbuf = vec![0u8; per_block as usize * input.block_size];
    let mut outbuf = vec![0u8; hbs * OUT_BATCH as usize];
    let mut b = range.start;
    while b < range.end {
        let batch = (range.end - b).min(OUT_BATCH);
        outbuf.fill(0);
        for k in 0..batch {
            let first_in = (b + k) * per_block;
            let n_in = (input.blocks - first_in).min(per_block);
            let bytes = n_in as usize * input.block_size;
            input
                .file
                .read_exact_at(
                    &mut inbuf[..bytes],
                    input.offset + first_in * input.block_size as u64,
                )
                .map_err(io_err(format!(
                    "reading block {first_in} of the level below"
                )))?;
            let hb = &mut outbuf[k as usize * hbs..(k as usize + 1) * hbs];
            for (j, blk) in inbuf[..bytes].chunks_exact(input.block_size).enumerate() {
                params.hash.hash_into(
                    params.format,
                    &params.salt,
                    blk,
                    &mut hb[j * slot..j * slot + dlen],
                );
            }
        }
        out.write_all_at(&outbuf[..batch as usize * hbs], out_off + b * hbs as u64)
            .map_err(io_err("writing hash blocks"))?;
        b += batch;
    }
    Ok(())
}

/// Size of a block device (metadata().len() is 0 for those).
fn block_device_size(f: &File) -> Result<u64, VerityError> {
    use std::io::{Seek, SeekFrom};
    let mut f = f;
    let end = f
        .seek(SeekFrom::End(0))
        .map_err(io_err("measuring data device"))?;
    f.seek(SeekFrom::Start(0))
        .map_err(io_err("measuring data device"))?;
    Ok(end)
}

/// Parse a UUID `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn parse_uuid(s: &str) -> Result<[u8; 16], VerityError> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let groups: Vec<usize> = s.split('-').map(str::len).collect();
    let mut out = [0u8; 16];
    if groups != [8, 4, 4, 4, 12] || hex::decode_to_slice(&hex, &mut out).is_err() {
        return Err(VerityError::InvalidParams(format!(
            "UUID {s:?} (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
        )));
    }
    Ok(out)
}

/// Format a UUID the way veritysetup prints it.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A random version-4 UUID, as veritysetup generates by default.
pub fn random_uuid() -> Result<[u8; 16], VerityError> {
    let mut u = [0u8; 16];
    rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut u).map_err(|e| {
        VerityError::Io {
            context: "generating a UUID".into(),
            source: io::Error::other(e.to_string()),
        }
    })?;
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> VerityParams {
        VerityParams::new(vec![], [0; 16])
    }

    #[test]
    fn geometry_matches_veritysetup_layout() {
        // 2 data blocks: one level with one hash block.
        let g = geometry(&params(), 2, 1).unwrap();
        assert_eq!(
            (g.level_start.clone(), g.level_size.clone(), g.end),
            (vec![1], vec![1], 2)
        );
        // 1 data block: no levels, the root hashes the data block itself.
        let g = geometry(&params(), 1, 0).unwrap();
        assert!(g.level_start.is_empty());
        // 129 blocks: two levels, top first.
        let g = geometry(&params(), 129, 0).unwrap();
        assert_eq!(g.level_size, vec![2, 1]);
        assert_eq!(g.level_start, vec![1, 0]);
    }

    #[test]
    fn uuid_round_trip() {
        let u = random_uuid().unwrap();
        assert_eq!(parse_uuid(&format_uuid(&u)).unwrap(), u);
        assert!(parse_uuid("not-a-uuid").is_err());
    }

    #[test]
    fn refuses_bad_params() {
        let mut p = params();
        p.data_block_size = 1000;
        assert!(p.validate().is_err());
        let mut p = params();
        p.salt = vec![0; 300];
        assert!(p.validate().is_err());
        let mut p = params();
        p.hash = VerityHash::Sha512;
        p.hash_block_size = 512;
        assert!(p.validate().is_ok());
    }
}
