//! Key material as types: zeroized on drop, redacted in `Debug`, no `Clone`, compared in constant
//! time.

use alloc::vec::Vec;
use core::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::header::Algorithm;
use crate::{Error, hex};

/// A key block protection key: 16 or 24 bytes of TDES (versions A, B, C), or 16, 24 or 32 bytes
/// of AES (versions D, E). The version letter of a block, not the length of this key, decides
/// which cipher it is used with.
pub struct Kbpk {
    bytes: [u8; 32],
    len: usize,
}

impl Kbpk {
    /// Takes a copy of `bytes`; the caller should zeroize its own buffer.
    ///
    /// # Errors
    /// [`Error::Kbpk`] unless the key is 16, 24 or 32 bytes long.
    pub fn new(bytes: &[u8]) -> Result<Self, Error> {
        if !matches!(bytes.len(), 16 | 24 | 32) {
            return Err(Error::Kbpk("a KBPK is 16, 24 or 32 bytes long"));
        }
        let mut key = Self {
            bytes: [0; 32],
            len: bytes.len(),
        };
        for (dst, src) in key.bytes.iter_mut().zip(bytes) {
            *dst = *src;
        }
        Ok(key)
    }

    /// Parses the key from hex digits (either case).
    ///
    /// # Errors
    /// [`Error::Kbpk`] if the text is not hex or not a valid KBPK length.
    pub fn from_hex(text: &str) -> Result<Self, Error> {
        let bytes = Zeroizing::new(
            hex::decode(text.trim().as_bytes(), true)
                .ok_or(Error::Kbpk("the KBPK is not an even number of hex digits"))?,
        );
        Self::new(&bytes)
    }

    /// The raw key bytes. Hazmat: whatever the caller does with them is outside this crate's
    /// zeroization.
    pub fn expose_secret(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }

    /// Length of the key in bytes.
    #[allow(clippy::len_without_is_empty, reason = "a KBPK is never empty")]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Constant-time equality of two keys (the lengths are not secret).
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.expose_secret().ct_eq(other.expose_secret()).into()
    }
}

impl Drop for Kbpk {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for Kbpk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kbpk({} bytes, redacted)", self.len)
    }
}

/// A key block protection key held outside this process, typically in an HSM, and reached only
/// through CMAC under it.
///
/// Versions B, D and E derive their block encryption and authentication keys as CMACs under the
/// KBPK (TDES-CMAC for B, AES-CMAC for D and E), so a KBPK that never leaves a PKCS#11 token can
/// still protect key blocks: two to six CMAC calls per block, and the derived keys pass through
/// this process for that one call only. Versions A and C bind with XOR variants of the clear
/// KBPK, which no HSM gives out: they cannot be served this way.
///
/// An AES KBPK (the default, [`ExternalKbpk::algorithm`]) serves versions D and E; a TDES one
/// (double- or triple-length) serves version B.
pub trait ExternalKbpk {
    /// Length of the key in bytes: 16, 24 or 32 for AES, 16 or 24 for TDES.
    fn key_len(&self) -> usize;

    /// The KBPK's cipher: [`Algorithm::AES`] (the default) or [`Algorithm::TDES`].
    fn algorithm(&self) -> Algorithm {
        Algorithm::AES
    }

    /// CMAC of `data` under the KBPK: for AES the 16-byte AES-CMAC; for TDES the 8-byte
    /// TDES-CMAC in the first 8 bytes (the rest is ignored). Called with 8-byte derivation
    /// inputs, and with one zero block of the cipher (16 bytes for AES, 8 for TDES) for a `KP`
    /// check value of the CMAC method.
    ///
    /// # Errors
    /// Whatever the HSM reports, as [`Error::Kbpk`].
    fn cmac(&self, data: &[u8]) -> Result<[u8; 16], Error>;

    /// The legacy check value of a TDES KBPK (TDES-ECB of a zero block, first three bytes), for
    /// `KP` blocks of method `00`. By default there is none: such a `KP` cannot be written
    /// or checked, and a `KP` left empty is filled in with the CMAC method.
    ///
    /// # Errors
    /// [`Error::Kbpk`] when the HSM cannot give it.
    fn legacy_kcv(&self) -> Result<[u8; 3], Error> {
        Err(Error::Kbpk(
            "this HSM-held KBPK gives no legacy check value (use the CMAC method, KP 01)",
        ))
    }
}

/// A KBPK in memory or behind an HSM.
#[derive(Clone, Copy)]
pub(crate) enum KbpkRef<'a> {
    Local(&'a Kbpk),
    External(&'a dyn ExternalKbpk),
}

impl KbpkRef<'_> {
    pub(crate) fn len(self) -> usize {
        match self {
            Self::Local(k) => k.len(),
            Self::External(k) => k.key_len(),
        }
    }

    /// True for a KBPK held outside this process.
    pub(crate) const fn is_external(self) -> bool {
        matches!(self, Self::External(_))
    }
}

/// A clear key: the content of a key block, or the key to put into one.
pub struct Key {
    bytes: Zeroizing<Vec<u8>>,
}

impl Key {
    /// Takes a copy of `bytes`.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] for an empty key.
    pub fn new(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.is_empty() {
            return Err(Error::InvalidKey("the key is empty"));
        }
        Ok(Self {
            bytes: Zeroizing::new(bytes.to_vec()),
        })
    }

    /// Takes ownership of a buffer that already holds only the key.
    pub(crate) fn from_vec(bytes: Zeroizing<Vec<u8>>) -> Self {
        Self { bytes }
    }

    /// Parses the key from hex digits (either case).
    ///
    /// # Errors
    /// [`Error::InvalidKey`] if the text is not hex or is empty.
    pub fn from_hex(text: &str) -> Result<Self, Error> {
        let bytes = hex::decode(text.trim().as_bytes(), true)
            .map(Zeroizing::new)
            .ok_or(Error::InvalidKey(
                "the key is not an even number of hex digits",
            ))?;
        if bytes.is_empty() {
            return Err(Error::InvalidKey("the key is empty"));
        }
        Ok(Self { bytes })
    }

    /// The raw key bytes. Hazmat: whatever the caller does with them is outside this crate's
    /// zeroization.
    pub fn expose_secret(&self) -> &[u8] {
        &self.bytes
    }

    /// Upper-case hex of the key, in a zeroizing buffer. Hazmat, for tools and tests.
    pub fn to_hex(&self) -> Zeroizing<alloc::string::String> {
        let mut out = Zeroizing::new(Vec::with_capacity(self.bytes.len() * 2));
        hex::encode_into(&self.bytes, &mut out);
        Zeroizing::new(out.iter().map(|&b| char::from(b)).collect())
    }

    /// Length of the key in bytes.
    #[allow(clippy::len_without_is_empty, reason = "a key is never empty")]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Constant-time equality of two keys (the lengths are not secret).
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.bytes.as_slice().ct_eq(other.bytes.as_slice()).into()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({} bytes, redacted)", self.bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let k = Key::from_hex("00112233445566778899AABBCCDDEEFF").unwrap();
        let p = Kbpk::from_hex("00112233445566778899aabbccddeeff").unwrap();
        let shown = alloc::format!("{k:?} {p:?}");
        assert!(!shown.contains("0011") && !shown.contains("AABB"));
        assert!(shown.contains("16 bytes"));
    }

    #[test]
    fn lengths_and_equality() {
        assert!(Kbpk::new(&[0; 8]).is_err());
        assert!(Kbpk::new(&[0; 31]).is_err());
        assert!(Key::new(&[]).is_err());
        assert!(Kbpk::from_hex("zz").is_err());
        let a = Key::new(&[1, 2, 3]).unwrap();
        assert!(a.ct_eq(&Key::new(&[1, 2, 3]).unwrap()));
        assert!(!a.ct_eq(&Key::new(&[1, 2, 4]).unwrap()));
        assert!(
            Kbpk::new(&[7; 16])
                .unwrap()
                .ct_eq(&Kbpk::new(&[7; 16]).unwrap())
        );
    }
}
