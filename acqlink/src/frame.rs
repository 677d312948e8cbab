//! The transport framing (spec 12.3): each message is preceded by its length as 2 bytes,
//! unsigned big-endian, not counting those 2 bytes; no message is longer than 4,096 bytes.
//!
//! Sans-IO: the caller reads from its socket and pushes what it read into a [`Deframer`], which
//! hands back whole messages; nothing here waits or reads.

use crate::Error;

/// The largest message the link carries.
pub const MAX_MESSAGE: usize = 4096;

/// The message with its 2-byte length in front. Refuses an empty message or one over
/// [`MAX_MESSAGE`] (an encoded [`crate::Message`] of the profile is far below it).
pub fn frame(message: &[u8]) -> Result<Vec<u8>, Error> {
    if message.is_empty() || message.len() > MAX_MESSAGE {
        return Err(Error::FrameLength);
    }
    let len = u16::try_from(message.len()).map_err(|_| Error::FrameLength)?;
    let mut out = Vec::with_capacity(2 + message.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    Ok(out)
}

/// Cuts a byte stream into messages.
///
/// A length prefix of zero or over [`MAX_MESSAGE`] cannot be resynchronised from (where the
/// next message starts is unknown), so it poisons the deframer: every later [`Self::pop`]
/// returns the same error and the connection should be closed.
#[derive(Debug, Default)]
pub struct Deframer {
    buffer: Vec<u8>,
    /// Bytes of `buffer` already handed out; compacted lazily.
    start: usize,
    poisoned: bool,
}

impl Deframer {
    /// An empty deframer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.poisoned {
            return;
        }
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` while more bytes are needed, or
    /// [`Error::FrameLength`] for a prefix of zero or over [`MAX_MESSAGE`]. Nothing is allocated
    /// for a message until all its bytes are there.
    pub fn pop(&mut self) -> Result<Option<Vec<u8>>, Error> {
        if self.poisoned {
            return Err(Error::FrameLength);
        }
        let rest = self.buffer.get(self.start..).unwrap_or_default();
        let Some((prefix, body)) = rest.split_first_chunk::<2>() else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes(*prefix));
        if len == 0 || len > MAX_MESSAGE {
            self.poisoned = true;
            self.buffer = Vec::new();
            self.start = 0;
            return Err(Error::FrameLength);
        }
        let Some(message) = body.get(..len) else {
            return Ok(None);
        };
        let message = message.to_vec();
        self.start += 2 + len;
        Ok(Some(message))
    }

    /// Bytes received but not yet handed out as a message.
    pub fn buffered(&self) -> usize {
        self.buffer.len().saturating_sub(self.start)
    }
}
