//! Binary WebSocket frames pushed from the server to a device.
//!
//! Layout: `seq: u64 big-endian | kind: u8 | payload`. A device acknowledges with a
//! text frame `{"ack": SEQ}` (or `POST /v1/inbox/ack`).

use crate::api::EntryKind;

/// Bytes before the payload.
pub const HEADER_LEN: usize = 9;

/// Errors decoding a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// Shorter than the header.
    #[error("frame shorter than its header")]
    Truncated,
    /// Unknown kind tag.
    #[error("unknown entry kind {0}")]
    UnknownKind(u8),
    /// Larger than allowed.
    #[error("frame larger than {0} bytes")]
    TooLarge(usize),
}

/// Encode one inbox entry.
pub fn encode(seq: u64, kind: EntryKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&seq.to_be_bytes());
    out.push(kind as u8);
    out.extend_from_slice(payload);
    out
}

/// Decode one inbox entry, refusing frames above `max` bytes.
pub fn decode(frame: &[u8], max: usize) -> Result<(u64, EntryKind, &[u8]), FrameError> {
    if frame.len() > max {
        return Err(FrameError::TooLarge(max));
    }
    if frame.len() < HEADER_LEN {
        return Err(FrameError::Truncated);
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&frame[..8]);
    let kind = EntryKind::from_u8(frame[8]).ok_or(FrameError::UnknownKind(frame[8]))?;
    Ok((u64::from_be_bytes(seq), kind, &frame[HEADER_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes, 1024);
        }

        #[test]
        fn round_trip(seq in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let f = encode(seq, EntryKind::Application, &payload);
            let (s, k, p) = decode(&f, 1 << 20).expect("valid frame");
            prop_assert_eq!(s, seq);
            prop_assert_eq!(k, EntryKind::Application);
            prop_assert_eq!(p, &payload[..]);
        }
    }

    #[test]
    fn oversized_is_refused() {
        assert_eq!(decode(&[0u8; 100], 50), Err(FrameError::TooLarge(50)));
        assert_eq!(decode(&[0u8; 3], 50), Err(FrameError::Truncated));
    }
}
