//! The primary account number, as far as PIN blocks and PVVs use it.

use core::fmt;

use zeroize::Zeroize;

use crate::InputError;
use crate::nibbles::{ascii_digits, pack};

/// A PAN of 12 to 19 decimal digits. The check digit (the last one) is never checked here: the
/// formats use the digits as they are, and a card's Luhn check belongs to whoever reads the card.
///
/// Wiped on drop and shown only by its length in `Debug`.
pub struct Pan {
    digits: [u8; 19],
    len: usize,
}

impl Pan {
    /// Parses ASCII decimal digits.
    ///
    /// # Errors
    /// [`InputError::Pan`] unless the text is 12 to 19 digits.
    pub fn new(text: &str) -> Result<Self, InputError> {
        let mut pan = Self {
            digits: [0; 19],
            len: 0,
        };
        match ascii_digits(text, &mut pan.digits) {
            Some(len @ 12..=19) => {
                pan.len = len;
                Ok(pan)
            }
            _ => Err(InputError::Pan),
        }
    }

    /// The number of digits, 12 to 19.
    #[allow(clippy::len_without_is_empty, reason = "a PAN is never empty")]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// The digits (values 0-9), check digit included.
    fn digits(&self) -> &[u8] {
        self.digits.get(..self.len).unwrap_or_default()
    }

    /// The digits without the check digit.
    fn body(&self) -> &[u8] {
        self.digits
            .get(..self.len.saturating_sub(1))
            .unwrap_or_default()
    }

    /// The format 0 account field: four zero nibbles, then the 12 rightmost digits of the PAN
    /// without its check digit (right-aligned over zeros when the PAN has only 11 of them).
    pub(crate) fn format0_field(&self) -> [u8; 8] {
        let mut nibbles = [0u8; 16];
        for (dst, src) in nibbles
            .iter_mut()
            .rev()
            .zip(self.body().iter().rev().take(12))
        {
            *dst = *src;
        }
        let mut field = [0u8; 8];
        pack(&nibbles, &mut field);
        field
    }

    /// The format 4 account field: a nibble for the length beyond 12 (0 to 7), the whole PAN
    /// check digit included, then zero nibbles to 16 bytes.
    pub(crate) fn format4_field(&self) -> [u8; 16] {
        let mut nibbles = [0u8; 32];
        let extra = self.len.saturating_sub(12);
        let mut it = nibbles.iter_mut();
        if let (Some(first), Ok(extra)) = (it.next(), u8::try_from(extra)) {
            *first = extra;
        }
        for (dst, src) in it.zip(self.digits()) {
            *dst = *src;
        }
        let mut field = [0u8; 16];
        pack(&nibbles, &mut field);
        field
    }

    /// The 11 rightmost digits without the check digit, as the Visa PVV takes them.
    pub(crate) fn pvv_digits(&self) -> [u8; 11] {
        let mut out = [0u8; 11];
        for (dst, src) in out.iter_mut().rev().zip(self.body().iter().rev()) {
            *dst = *src;
        }
        out
    }
}

impl Drop for Pan {
    fn drop(&mut self) {
        self.digits.zeroize();
    }
}

impl fmt::Debug for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pan({} digits, redacted)", self.len)
    }
}
