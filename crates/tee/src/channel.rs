//! Length-prefixed frames over a byte stream: a 4-byte big-endian length,
//! then that many bytes (JSON by convention). Used by the sim platform
//! channel and by the agent API, so one reader enforces the size limits.

use std::io::{self, Read, Write};

/// Frame errors.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("frame of {actual} bytes is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize, actual: usize },
    #[error("channel closed in the middle of a frame")]
    Truncated,
    #[error("channel I/O: {0}")]
    Io(#[from] io::Error),
    #[error("frame is not valid JSON for this channel: {0}")]
    Json(String),
}

/// Write one frame.
pub fn write_frame(w: &mut impl Write, payload: &[u8]) -> Result<(), ChannelError> {
    let len = u32::try_from(payload.len()).map_err(|_| ChannelError::TooLarge {
        limit: u32::MAX as usize,
        actual: payload.len(),
    })?;
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Read one frame of at most `max` bytes. `Ok(None)` on a clean end of
/// stream before a frame starts.
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Option<Vec<u8>>, ChannelError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(ChannelError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(ChannelError::TooLarge {
            limit: max,
            actual: len,
        });
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ChannelError::Truncated
        } else {
            ChannelError::Io(e)
        }
    })?;
    Ok(Some(buf))
}

/// Write a value as one JSON frame.
pub fn send_json<T: serde::Serialize>(w: &mut impl Write, value: &T) -> Result<(), ChannelError> {
    let bytes = serde_json::to_vec(value).map_err(|e| ChannelError::Json(e.to_string()))?;
    write_frame(w, &bytes)
}

/// Read one JSON frame of at most `max` bytes; `Ok(None)` at end of stream.
pub fn recv_json<T: serde::de::DeserializeOwned>(
    r: &mut impl Read,
    max: usize,
) -> Result<Option<T>, ChannelError> {
    match read_frame(r, max)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ChannelError::Json(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_clean_eof() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").unwrap();
        write_frame(&mut buf, b"").unwrap();
        let mut r = buf.as_slice();
        assert_eq!(read_frame(&mut r, 16).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, 16).unwrap().unwrap(), b"");
        assert!(read_frame(&mut r, 16).unwrap().is_none());
    }

    #[test]
    fn oversized_and_truncated_frames_are_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &[7u8; 32]).unwrap();
        let e = read_frame(&mut buf.as_slice(), 16).unwrap_err();
        assert!(
            matches!(
                e,
                ChannelError::TooLarge {
                    limit: 16,
                    actual: 32
                }
            ),
            "{e}"
        );
        let e = read_frame(&mut &buf[..10], 64).unwrap_err();
        assert!(matches!(e, ChannelError::Truncated), "{e}");
        let e = read_frame(&mut &buf[..2], 64).unwrap_err();
        assert!(matches!(e, ChannelError::Truncated), "{e}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut r = bytes.as_slice();
            while let Ok(Some(_)) = read_frame(&mut r, 64) {}
            let _ = recv_json::<serde_json::Value>(&mut bytes.as_slice(), 64);
        }
    }
}
