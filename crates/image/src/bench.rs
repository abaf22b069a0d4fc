//! Throughput of the primitives veil's image paths are built on, for
//! `veil bench image`: SHA-256 (digests, dm-verity), AES-256-CTR and
//! HMAC-SHA256 (ocicrypt layers), each on one core with the same crates
//! and types the real code uses.

use std::time::{Duration, Instant};

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

/// One-core throughput of each primitive, in MiB/s.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Primitives {
    /// SHA-256 over 1 MiB buffers.
    pub sha256_mib_s: f64,
    /// SHA-256 of salt ‖ 4 KiB block, as dm-verity hashes data blocks.
    pub sha256_4k_blocks_mib_s: f64,
    /// AES-256-CTR keystream applied in place.
    pub aes256_ctr_mib_s: f64,
    /// HMAC-SHA256 over 1 MiB buffers.
    pub hmac_sha256_mib_s: f64,
}

/// Run `f` on a 1 MiB buffer until `min` has passed; MiB/s.
fn rate(min: Duration, mut f: impl FnMut(&mut [u8])) -> f64 {
    let mut buf = vec![0x5au8; 1 << 20];
    f(&mut buf); // warm up
    let start = Instant::now();
    let mut n = 0u64;
    while n < 4 || start.elapsed() < min {
        f(&mut buf);
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Measure every primitive for at least `min` each.
pub fn primitives(min: Duration) -> Primitives {
    let mut sink = 0u8;
    let sha256_mib_s = rate(min, |b| sink ^= Sha256::digest(&*b)[0]);
    let salt = [7u8; 32];
    let sha256_4k_blocks_mib_s = rate(min, |b| {
        for block in b.chunks(4096) {
            let mut h = Sha256::new();
            h.update(salt);
            h.update(block);
            sink ^= h.finalize()[0];
        }
    });
    let mut cipher = ctr::Ctr128BE::<aes::Aes256>::new(&[1u8; 32].into(), &[2u8; 16].into());
    let aes256_ctr_mib_s = rate(min, |b| cipher.apply_keystream(b));
    let hmac_sha256_mib_s = rate(min, |b| {
        if let Ok(mut m) = <Hmac<Sha256> as Mac>::new_from_slice(&[3u8; 32]) {
            m.update(b);
            sink ^= m.finalize().into_bytes()[0];
        }
    });
    std::hint::black_box(sink);
    Primitives {
        sha256_mib_s,
        sha256_4k_blocks_mib_s,
        aes256_ctr_mib_s,
        hmac_sha256_mib_s,
    }
}
