//! Frames: a fixed 20-byte header and a body.
//!
//! ```text
//! offset  size  field
//!      0     2  magic "KD"
//!      2     1  protocol version (1)
//!      3     1  kind: 0 request, 1 response
//!      4     2  opcode (big-endian)
//!      6     2  status (big-endian; 0 in requests)
//!      8     8  request id (big-endian), echoed in the response
//!     16     4  body length (big-endian)
//!     20     n  body
//! ```
//!
//! The decoder is sans-IO: it looks at bytes already read and says "need more", "here is a
//! frame", or "this connection is broken". The body length is checked against the limit before
//! anything is allocated.

use alloc::vec::Vec;
use core::fmt;

use crate::{Opcode, Status};

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"KD";
/// Protocol version carried in every frame.
pub const VERSION: u8 = 1;
/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 20;
/// Largest body the protocol allows; a deployment may set a lower limit.
pub const MAX_BODY: usize = 1 << 20;

/// Request or response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Client to keyd.
    Request,
    /// keyd to client.
    Response,
}

/// The fixed part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Request or response.
    pub kind: Kind,
    /// The operation.
    pub opcode: Opcode,
    /// The outcome (responses only).
    pub status: Status,
    /// Chosen by the client; a response carries its request's id, so many requests can be in
    /// flight on one connection.
    pub request_id: u64,
    /// Length of the body that follows.
    pub body_len: u32,
}

/// A frame borrowed from a read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The header.
    pub header: FrameHeader,
    /// The body.
    pub body: &'a [u8],
}

/// Why a byte stream cannot be read as frames. Any of these closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The first bytes are not `KD`.
    BadMagic,
    /// A protocol version this side does not speak.
    UnsupportedVersion(u8),
    /// The kind byte is neither 0 nor 1.
    BadKind(u8),
    /// The body is longer than the limit.
    TooLarge(u32),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic => f.write_str("not a keyd frame (bad magic)"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            Self::BadKind(k) => write!(f, "bad frame kind {k}"),
            Self::TooLarge(n) => write!(f, "frame body of {n} bytes exceeds the limit"),
        }
    }
}

impl core::error::Error for FrameError {}

impl FrameHeader {
    /// Parses the fixed header and checks the body length against `max_body`.
    ///
    /// # Errors
    /// [`FrameError`] for anything but a well-formed header within the limit.
    pub fn decode(bytes: &[u8; HEADER_LEN], max_body: usize) -> Result<Self, FrameError> {
        let [
            m0,
            m1,
            version,
            kind,
            o0,
            o1,
            s0,
            s1,
            r0,
            r1,
            r2,
            r3,
            r4,
            r5,
            r6,
            r7,
            l0,
            l1,
            l2,
            l3,
        ] = *bytes;
        if [m0, m1] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        let kind = match kind {
            0 => Kind::Request,
            1 => Kind::Response,
            other => return Err(FrameError::BadKind(other)),
        };
        let body_len = u32::from_be_bytes([l0, l1, l2, l3]);
        if usize::try_from(body_len).map_or(true, |n| n > max_body) {
            return Err(FrameError::TooLarge(body_len));
        }
        Ok(Self {
            kind,
            opcode: Opcode(u16::from_be_bytes([o0, o1])),
            status: Status(u16::from_be_bytes([s0, s1])),
            request_id: u64::from_be_bytes([r0, r1, r2, r3, r4, r5, r6, r7]),
            body_len,
        })
    }

    /// The 20 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let kind = match self.kind {
            Kind::Request => 0,
            Kind::Response => 1,
        };
        let parts: [&[u8]; 7] = [
            &MAGIC,
            &[VERSION, kind],
            &self.opcode.0.to_be_bytes(),
            &self.status.0.to_be_bytes(),
            &self.request_id.to_be_bytes(),
            &self.body_len.to_be_bytes(),
            &[],
        ];
        let mut pos = 0;
        for part in parts {
            if let Some(dst) = out.get_mut(pos..pos + part.len()) {
                dst.copy_from_slice(part);
            }
            pos += part.len();
        }
        out
    }
}

/// Reads one frame from the start of `buf`: `Ok(None)` if more bytes are needed, otherwise the
/// frame and the number of bytes it used.
///
/// # Errors
/// [`FrameError`] if the stream is not a valid frame sequence.
pub fn decode(buf: &[u8], max_body: usize) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = FrameHeader::decode(head, max_body)?;
    let end = HEADER_LEN + header.body_len as usize;
    Ok(buf
        .get(HEADER_LEN..end)
        .map(|body| (Frame { header, body }, end)))
}

/// Appends a whole frame to `out`.
///
/// # Panics
/// Never: a body longer than `u32::MAX` is cut off at the length field's limit by the caller's
/// own [`MAX_BODY`] check; this function saturates rather than panics.
pub fn encode(
    kind: Kind,
    opcode: Opcode,
    status: Status,
    request_id: u64,
    body: &[u8],
    out: &mut Vec<u8>,
) {
    let header = FrameHeader {
        kind,
        opcode,
        status,
        request_id,
        body_len: u32::try_from(body.len()).unwrap_or(u32::MAX),
    };
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(body);
}

/// Appends a frame whose body is written by `body` straight after the header, then fills in
/// the header: one buffer, no copy of the body.
pub fn encode_with(
    kind: Kind,
    opcode: Opcode,
    request_id: u64,
    out: &mut Vec<u8>,
    body: impl FnOnce(&mut Vec<u8>) -> Status,
) {
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    let status = body(out);
    let body_len = u32::try_from(out.len() - start - HEADER_LEN).unwrap_or(u32::MAX);
    let header = FrameHeader {
        kind,
        opcode,
        status,
        request_id,
        body_len,
    }
    .encode();
    if let Some(slot) = out.get_mut(start..start + HEADER_LEN) {
        slot.copy_from_slice(&header);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_frame() {
        let mut out = Vec::new();
        encode(
            Kind::Response,
            Opcode(0x0203),
            Status(1),
            0x0102030405060708,
            b"xy",
            &mut out,
        );
        assert_eq!(
            out,
            b"KD\x01\x01\x02\x03\x00\x01\x01\x02\x03\x04\x05\x06\x07\x08\x00\x00\x00\x02xy"
        );
        let (frame, used) = decode(&out, MAX_BODY).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(frame.body, b"xy");
        assert_eq!(frame.header.request_id, 0x0102030405060708);
        assert_eq!(frame.header.status, Status(1));
    }

    #[test]
    fn encode_with_matches_encode() {
        let mut a = Vec::new();
        encode(Kind::Request, Opcode(9), Status(3), 77, b"body!", &mut a);
        let mut b = b"prefix".to_vec();
        encode_with(Kind::Request, Opcode(9), 77, &mut b, |out| {
            out.extend_from_slice(b"body!");
            Status(3)
        });
        assert_eq!(&b[6..], &a[..]);
    }

    #[test]
    fn partial_and_bad_frames() {
        let mut out = Vec::new();
        encode(Kind::Request, Opcode(1), Status(0), 7, b"hello", &mut out);
        for cut in 0..out.len() {
            assert_eq!(decode(&out[..cut], MAX_BODY), Ok(None), "cut {cut}");
        }
        let mut bad = out.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad, MAX_BODY), Err(FrameError::BadMagic));
        let mut bad = out.clone();
        bad[2] = 9;
        assert_eq!(
            decode(&bad, MAX_BODY),
            Err(FrameError::UnsupportedVersion(9))
        );
        let mut bad = out.clone();
        bad[3] = 7;
        assert_eq!(decode(&bad, MAX_BODY), Err(FrameError::BadKind(7)));
        assert_eq!(decode(&out, 4), Err(FrameError::TooLarge(5)));
        // Only the header is needed to refuse an oversized body: nothing is allocated for it.
        let mut huge = out[..HEADER_LEN].to_vec();
        huge[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&huge, MAX_BODY), Err(FrameError::TooLarge(u32::MAX)));
    }
}
