//! Where the random padding of a sealed block comes from.

use crate::Error;

/// A source of random bytes for padding. Padding hides the key length and is encrypted with the
/// key, so it must be unpredictable: use [`OsRandom`] (or an HSM's RNG) in production.
pub trait PaddingSource {
    /// Fills `dest` with random bytes.
    ///
    /// # Errors
    /// [`Error::Random`] if no bytes can be had.
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), Error>;
}

/// The operating system's CSPRNG (`getrandom`). No state, nothing to seed: one system call per
/// sealed block.
#[cfg(feature = "getrandom")]
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRandom;

#[cfg(feature = "getrandom")]
impl PaddingSource for OsRandom {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        getrandom::fill(dest).map_err(|_| Error::Random)
    }
}

/// The operating system's CSPRNG read 4 KiB at a time, for callers that seal many blocks: one
/// system call serves about a hundred blocks instead of one. Bytes are handed out once and wiped
/// from the buffer as they are used, and the buffer is wiped on drop.
///
/// Keep one per thread. Do not carry one across `fork`: parent and child would hand out the same
/// bytes.
#[cfg(feature = "getrandom")]
pub struct BufferedOsRandom {
    buffer: zeroize::Zeroizing<[u8; 4096]>,
    used: usize,
}

#[cfg(feature = "getrandom")]
impl BufferedOsRandom {
    /// An empty buffer; the first use fills it.
    pub fn new() -> Self {
        Self {
            buffer: zeroize::Zeroizing::new([0; 4096]),
            used: 4096,
        }
    }
}

#[cfg(feature = "getrandom")]
impl Default for BufferedOsRandom {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "getrandom")]
impl core::fmt::Debug for BufferedOsRandom {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "BufferedOsRandom({} bytes left)",
            self.buffer.len() - self.used
        )
    }
}

#[cfg(feature = "getrandom")]
impl PaddingSource for BufferedOsRandom {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        use zeroize::Zeroize;
        for chunk in dest.chunks_mut(self.buffer.len()) {
            if self.buffer.len() - self.used < chunk.len() {
                getrandom::fill(&mut self.buffer[..]).map_err(|_| Error::Random)?;
                self.used = 0;
            }
            let Some(src) = self.buffer.get_mut(self.used..self.used + chunk.len()) else {
                return Err(Error::Random);
            };
            chunk.copy_from_slice(src);
            src.zeroize();
            self.used += chunk.len();
        }
        Ok(())
    }
}

/// How a sealed block is padded.
pub enum Padding<'a> {
    /// Random bytes, as many as key-length obfuscation and block alignment call for.
    Random(&'a mut dyn PaddingSource),
    /// Exactly these bytes. Their number fixes how far the key field is padded, which is how a
    /// published block is reproduced byte for byte; it must complete the last cipher block (for
    /// versions A to D).
    Exact(&'a [u8]),
}

impl core::fmt::Debug for Padding<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Random(_) => f.write_str("Padding::Random"),
            Self::Exact(bytes) => write!(f, "Padding::Exact({} bytes)", bytes.len()),
        }
    }
}

#[cfg(all(test, feature = "getrandom"))]
mod tests {
    use super::*;

    #[test]
    fn buffered_random_never_repeats_and_refills() {
        let mut r = BufferedOsRandom::new();
        let mut seen = alloc::vec::Vec::new();
        for _ in 0..300 {
            let mut a = [0u8; 30];
            r.fill(&mut a).unwrap();
            assert!(!seen.contains(&a));
            seen.push(a);
        }
        let mut big = [0u8; 9000];
        r.fill(&mut big).unwrap();
        assert!(big.iter().filter(|&&b| b == 0).count() < 200);
    }
}
