//! The clear PIN.

use core::fmt;

use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroize;

use crate::InputError;
use crate::nibbles::ascii_digits;

/// A clear PIN of 4 to 12 decimal digits.
///
/// It is wiped when dropped, prints as redacted, cannot be cloned (a copy is a second thing to
/// wipe) and compares in constant time.
pub struct Pin {
    /// Digit values 0-9; the places past `len` are always zero, so equal PINs are equal arrays.
    digits: [u8; 12],
    len: u8,
}

impl Pin {
    /// Parses ASCII decimal digits.
    ///
    /// # Errors
    /// [`InputError::Pin`] unless the text is 4 to 12 digits.
    pub fn new(text: &str) -> Result<Self, InputError> {
        let mut digits = [0u8; 12];
        let parsed = ascii_digits(text, &mut digits);
        let pin = match parsed.map(u8::try_from) {
            Some(Ok(len @ 4..=12)) => Ok(Self { digits, len }),
            _ => Err(InputError::Pin),
        };
        digits.zeroize();
        pin
    }

    /// Takes digit values (each 0-9, not ASCII).
    ///
    /// # Errors
    /// [`InputError::Pin`] unless there are 4 to 12 values, each 0-9.
    pub fn from_digits(values: &[u8]) -> Result<Self, InputError> {
        let len = match u8::try_from(values.len()) {
            Ok(len @ 4..=12) if values.iter().all(|d| *d <= 9) => len,
            _ => return Err(InputError::Pin),
        };
        let mut digits = [0u8; 12];
        for (dst, src) in digits.iter_mut().zip(values) {
            *dst = *src;
        }
        Ok(Self { digits, len })
    }

    /// Built by the block decoders, which have checked both parts (in constant time).
    pub(crate) const fn from_checked(digits: [u8; 12], len: u8) -> Self {
        Self { digits, len }
    }

    /// The number of digits, 4 to 12.
    #[allow(clippy::len_without_is_empty, reason = "a PIN is never empty")]
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// The digit values (0-9, not ASCII). Hazmat: whatever the caller does with them is outside
    /// this type's wiping.
    pub fn expose_digits(&self) -> &[u8] {
        self.digits.get(..self.len()).unwrap_or_default()
    }
}

impl ConstantTimeEq for Pin {
    fn ct_eq(&self, other: &Self) -> Choice {
        self.digits.ct_eq(&other.digits) & self.len.ct_eq(&other.len)
    }
}

impl PartialEq for Pin {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for Pin {}

impl Drop for Pin {
    fn drop(&mut self) {
        self.digits.zeroize();
        self.len.zeroize();
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(redacted)")
    }
}
