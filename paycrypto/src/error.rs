//! The two kinds of failure: a caller's input that is not acceptable (said plainly), and a PIN
//! block that does not open (said as little as possible).

use core::fmt;

/// A PIN block that does not decipher to a valid PIN field bound to the given PAN.
///
/// Every reason (wrong control nibble, PIN length out of range, a non-digit, a wrong fill nibble,
/// another card's PAN, another key) is this one value: a caller that could tell them apart
/// would have an oracle on the clear block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinError;

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the PIN block is not valid for this card")
    }
}

impl core::error::Error for PinError {}

/// An input refused before any cryptography runs. These say what is wrong: they are about values
/// the caller chose, not about the content of an enciphered block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InputError {
    /// A PAN is 12 to 19 decimal digits.
    Pan,
    /// A PIN is 4 to 12 decimal digits.
    Pin,
    /// The key has the wrong length for its use (TDES: 16 bytes; AES: 16, 24 or 32).
    KeyLength,
    /// A double-length TDES key whose two halves are the same DES key (parity bits aside): it is
    /// single DES in disguise.
    WeakKey,
    /// A PIN verification key index is 1 to 6.
    Pvki,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pan => "a PAN is 12 to 19 decimal digits",
            Self::Pin => "a PIN is 4 to 12 decimal digits",
            Self::KeyLength => "wrong key length (TDES: 16 bytes; AES: 16, 24 or 32 bytes)",
            Self::WeakKey => "the two halves of this TDES key are equal (single DES); refused",
            Self::Pvki => "a PVKI is 1 to 6",
        })
    }
}

impl core::error::Error for InputError {}
