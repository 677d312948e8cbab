//! The keys, as types that refuse what they should refuse, wipe themselves and never print.

use core::fmt;

use aes::cipher::{Block, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes::{Aes128, Aes192, Aes256};
use des::{Des, TdesEde2};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::InputError;

/// A double-length TDES key (K1 ‖ K2, 2-key EDE): ZPK, ZAK or PVK.
///
/// Refused when both halves are the same DES key, parity bits aside: such a key is single DES
/// under a TDES name.
pub struct TdesKey {
    bytes: [u8; 16],
}

impl TdesKey {
    /// Takes a copy of the 16 key bytes; the caller should wipe its own.
    ///
    /// # Errors
    /// [`InputError::WeakKey`] if the two halves are equal once parity bits are ignored.
    pub fn new(bytes: &[u8; 16]) -> Result<Self, InputError> {
        let key = Self { bytes: *bytes };
        let (left, right) = key.bytes.split_at(8);
        let mut same = 0u8;
        for (l, r) in left.iter().zip(right) {
            // The low bit of each DES key byte is parity: it does not take part in the cipher.
            same |= (l ^ r) & 0xFE;
        }
        if bool::from(same.ct_eq(&0)) {
            return Err(InputError::WeakKey);
        }
        Ok(key)
    }

    /// As [`TdesKey::new`], from a slice.
    ///
    /// # Errors
    /// [`InputError::KeyLength`] unless 16 bytes; [`InputError::WeakKey`] as for `new`.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, InputError> {
        let bytes: &[u8; 16] = bytes.try_into().map_err(|_| InputError::KeyLength)?;
        Self::new(bytes)
    }

    /// The whole key as 2-key TDES-EDE.
    pub(crate) fn tdes(&self) -> TdesEde2 {
        TdesEde2::new(&self.bytes.into())
    }

    /// The left half (K1) as single DES.
    pub(crate) fn left(&self) -> Des {
        Des::new_from_slice(self.bytes.get(..8).unwrap_or_default()).unwrap_or_else(|_| {
            // Unreachable: the slice is 8 bytes. A zero key keeps this free of panics.
            Des::new(&[0u8; 8].into())
        })
    }

    /// The right half (K2) as single DES.
    pub(crate) fn right(&self) -> Des {
        Des::new_from_slice(self.bytes.get(8..).unwrap_or_default())
            .unwrap_or_else(|_| Des::new(&[0u8; 8].into()))
    }
}

impl Drop for TdesKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for TdesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TdesKey(redacted)")
    }
}

/// An AES key (16, 24 or 32 bytes) for ISO 9564-1 format 4: the TPK is AES-256.
pub struct AesKey {
    bytes: [u8; 32],
    len: usize,
}

impl AesKey {
    /// Takes a copy of the key bytes; the caller should wipe its own.
    ///
    /// # Errors
    /// [`InputError::KeyLength`] unless 16, 24 or 32 bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, InputError> {
        if !matches!(bytes.len(), 16 | 24 | 32) {
            return Err(InputError::KeyLength);
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

    /// The key length in bytes (16, 24 or 32).
    #[allow(clippy::len_without_is_empty, reason = "a key is never empty")]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// The key bytes (its length's worth).
    pub(crate) fn bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }

    /// The cipher for this key length.
    pub(crate) fn cipher(&self) -> AesCipher {
        let key = self.bytes.get(..self.len).unwrap_or_default();
        // The lengths were checked in `new`, so the first arm that fits is the right one.
        if let Ok(c) = Aes128::new_from_slice(key) {
            AesCipher::A128(c)
        } else if let Ok(c) = Aes192::new_from_slice(key) {
            AesCipher::A192(c)
        } else {
            AesCipher::A256(Aes256::new_from_slice(key).unwrap_or_else(|_| {
                // Unreachable (see above); an all-zero key keeps this free of panics.
                Aes256::new(&[0u8; 32].into())
            }))
        }
    }
}

impl Drop for AesKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AesKey({} bytes, redacted)", self.len)
    }
}

/// AES of any of the three key lengths, one block at a time.
pub(crate) enum AesCipher {
    A128(Aes128),
    A192(Aes192),
    A256(Aes256),
}

impl AesCipher {
    /// Enciphers one 16-byte block in place.
    pub(crate) fn encrypt(&self, block: &mut [u8; 16]) {
        match self {
            Self::A128(c) => encrypt_in_place(c, block),
            Self::A192(c) => encrypt_in_place(c, block),
            Self::A256(c) => encrypt_in_place(c, block),
        }
    }

    /// Deciphers one 16-byte block in place.
    pub(crate) fn decrypt(&self, block: &mut [u8; 16]) {
        match self {
            Self::A128(c) => decrypt_in_place(c, block),
            Self::A192(c) => decrypt_in_place(c, block),
            Self::A256(c) => decrypt_in_place(c, block),
        }
    }
}

/// Enciphers every whole block of `data` in place (ECB); a partial tail is left alone.
pub(crate) fn encrypt_in_place<C: BlockCipherEncrypt>(cipher: &C, data: &mut [u8]) {
    let (blocks, _) = Block::<C>::slice_as_chunks_mut(data);
    for block in blocks {
        cipher.encrypt_block(block);
    }
}

/// Deciphers every whole block of `data` in place (ECB); a partial tail is left alone.
pub(crate) fn decrypt_in_place<C: BlockCipherDecrypt>(cipher: &C, data: &mut [u8]) {
    let (blocks, _) = Block::<C>::slice_as_chunks_mut(data);
    for block in blocks {
        cipher.decrypt_block(block);
    }
}
