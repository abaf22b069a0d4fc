//! Output of a container process, buffered in guest memory until the host
//! reads it: a bounded buffer per stream (the oldest bytes are dropped, and
//! counted, when the host reads too slowly), an end-of-stream flag, and the
//! process's exit code.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Bytes kept per stream before the oldest are dropped.
pub const STREAM_CAPACITY: usize = 4 * 1024 * 1024;

#[derive(Debug, Default)]
struct Inner {
    buf: VecDeque<u8>,
    eof: bool,
    dropped: u64,
    exit_code: Option<i32>,
}

/// One output stream (stdout or stderr) plus the exit code of its process.
#[derive(Debug, Clone, Default)]
pub struct Stream {
    inner: Arc<(Mutex<Inner>, Condvar)>,
}

/// A chunk handed to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub data: Vec<u8>,
    pub eof: bool,
    pub dropped: u64,
    pub exit_code: Option<i32>,
}

impl Stream {
    /// Append output.
    pub fn push(&self, data: &[u8]) {
        let (m, cv) = &*self.inner;
        if let Ok(mut g) = m.lock() {
            g.buf.extend(data);
            let over = g.buf.len().saturating_sub(STREAM_CAPACITY);
            if over > 0 {
                g.buf.drain(..over);
                g.dropped += over as u64;
            }
            cv.notify_all();
        }
    }

    /// The writer closed its end.
    pub fn close(&self) {
        let (m, cv) = &*self.inner;
        if let Ok(mut g) = m.lock() {
            g.eof = true;
            cv.notify_all();
        }
    }

    /// The process exited.
    pub fn set_exit(&self, code: i32) {
        let (m, cv) = &*self.inner;
        if let Ok(mut g) = m.lock() {
            g.exit_code = Some(code);
            cv.notify_all();
        }
    }

    /// The exit code, if the process has exited.
    pub fn exit_code(&self) -> Option<i32> {
        self.inner.0.lock().ok().and_then(|g| g.exit_code)
    }

    /// Take up to `max` bytes, waiting up to `wait` for data, end of stream
    /// or exit. `eof` is true only when the stream is closed, drained and
    /// the exit code is known.
    pub fn read(&self, max: usize, wait: Duration) -> Chunk {
        let (m, cv) = &*self.inner;
        let deadline = Instant::now() + wait;
        let Ok(mut g) = m.lock() else {
            return Chunk {
                data: Vec::new(),
                eof: true,
                dropped: 0,
                exit_code: None,
            };
        };
        loop {
            let done = g.eof && g.buf.is_empty() && g.exit_code.is_some();
            if !g.buf.is_empty() || done {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match cv.wait_timeout(g, deadline - now) {
                Ok((ng, _)) => g = ng,
                Err(_) => {
                    return Chunk {
                        data: Vec::new(),
                        eof: true,
                        dropped: 0,
                        exit_code: None,
                    };
                }
            }
        }
        let n = g.buf.len().min(max);
        let data: Vec<u8> = g.buf.drain(..n).collect();
        let dropped = std::mem::take(&mut g.dropped);
        Chunk {
            eof: g.eof && g.buf.is_empty() && g.exit_code.is_some(),
            data,
            dropped,
            exit_code: g.exit_code,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wait_for_data_and_report_eof_after_exit() {
        let s = Stream::default();
        let w = s.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            w.push(b"hello");
            w.close();
            w.set_exit(3);
        });
        let c = s.read(3, Duration::from_secs(5));
        assert_eq!(c.data, b"hel");
        t.join().unwrap();
        let c = s.read(100, Duration::from_secs(1));
        assert_eq!(c.data, b"lo");
        assert!(c.eof);
        assert_eq!(c.exit_code, Some(3));
    }

    #[test]
    fn slow_readers_lose_the_oldest_bytes_and_are_told() {
        let s = Stream::default();
        s.push(&vec![1u8; STREAM_CAPACITY]);
        s.push(&[2u8; 10]);
        let c = s.read(usize::MAX, Duration::ZERO);
        assert_eq!(c.dropped, 10);
        assert_eq!(c.data.len(), STREAM_CAPACITY);
        assert_eq!(&c.data[c.data.len() - 10..], &[2u8; 10]);
        assert!(!c.eof);
    }
}
