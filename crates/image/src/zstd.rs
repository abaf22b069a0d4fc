//! Streaming zstd decompression for `tar+zstd` layers (pure-Rust
//! `ruzstd`), across concatenated and skippable frames as written by
//! `zstd:chunked` and other multi-frame encoders. The window size is
//! bounded by `ruzstd` (100 MiB), so memory stays bounded whatever the
//! input claims.

use std::io::{self, BufRead, BufReader, Read};

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

/// Decompresses every frame of a zstd stream in turn.
pub struct ZstdReader<R: Read> {
    src: BufReader<R>,
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<R: Read> ZstdReader<R> {
    /// Read zstd data from `src`.
    pub fn new(src: R) -> Self {
        ZstdReader {
            src: BufReader::with_capacity(1 << 16, src),
            decoder: FrameDecoder::new(),
            in_frame: false,
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
}

impl<R: Read> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                let d = &mut self.decoder;
                while d.can_collect() < buf.len() && !d.is_finished() {
                    let need = buf.len() - d.can_collect();
                    d.decode_blocks(&mut self.src, BlockDecodingStrategy::UptoBytes(need))
                        .map_err(invalid)?;
                }
                let n = d.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                self.in_frame = false;
            }
            // The next frame, if any input is left.
            if self.src.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.decoder.reset(&mut self.src) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let skipped = io::copy(
                        &mut (&mut self.src).take(u64::from(length)),
                        &mut io::sink(),
                    )?;
                    if skipped != u64::from(length) {
                        return Err(invalid("truncated skippable frame"));
                    }
                }
                Err(e) => return Err(invalid(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn zstd_cli(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut child = std::process::Command::new("zstd")
            .args(["-q", "-c", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("zstd (Debian package zstd)");
        let mut stdin = child.stdin.take().unwrap();
        let input = data.to_vec();
        let t = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        t.join().unwrap().unwrap();
        out.stdout
    }

    #[test]
    fn decodes_concatenated_and_skippable_frames() {
        let a: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let b = b"second frame".to_vec();
        let mut stream = zstd_cli(&a);
        // A skippable frame between the two (magic 0x184D2A50, LE length).
        stream.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        stream.extend_from_slice(&3u32.to_le_bytes());
        stream.extend_from_slice(b"xyz");
        stream.extend(zstd_cli(&b));
        let mut out = Vec::new();
        ZstdReader::new(&stream[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, [a, b].concat());
        // Truncated input is an error, not a short success.
        let cut = &stream[..stream.len() - 5];
        assert!(ZstdReader::new(cut).read_to_end(&mut Vec::new()).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let mut out = Vec::new();
            let _ = ZstdReader::new(&b[..]).take(1 << 20).read_to_end(&mut out);
        }
    }
}
