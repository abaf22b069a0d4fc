//! Progress of long image operations (pull, push, encrypt, decrypt), for a
//! user interface to show. The library only reports; it never prints.

use std::io::Read;

/// Receives progress reports. Every method has a no-op default.
pub trait Progress {
    /// The operation will process about `bytes` bytes in all.
    fn total(&self, _bytes: u64) {}
    /// Work on `what` (e.g. `layer 2/3`) starts.
    fn step(&self, _what: &str) {}
    /// `bytes` more bytes were processed.
    fn advance(&self, _bytes: u64) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// A reader that reports every byte read through it.
pub struct ProgressReader<'p, R> {
    inner: R,
    progress: &'p dyn Progress,
}

impl<'p, R> ProgressReader<'p, R> {
    /// Wrap `inner`.
    pub fn new(inner: R, progress: &'p dyn Progress) -> Self {
        ProgressReader { inner, progress }
    }
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[derive(Default)]
    struct Count(Cell<u64>);
    impl Progress for Count {
        fn advance(&self, b: u64) {
            self.0.set(self.0.get() + b);
        }
    }

    #[test]
    fn reader_reports_every_byte() {
        let c = Count::default();
        let mut r = ProgressReader::new(&[7u8; 10_000][..], &c);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!((out.len(), c.0.get()), (10_000, 10_000));
    }
}
