//! The one error type of the crate.

use core::fmt;

/// Everything that can go wrong while parsing, opening or sealing a key block.
///
/// Variants that describe the *structure* of a block carry a static description that is safe to
/// show to anyone: it never contains key material. Every failure that depends on a secret (MAC
/// mismatch, wrong KBPK, bad padding, impossible key length inside the encrypted payload) is the
/// single detail-free [`Error::Authentication`], so the error cannot be used as an oracle.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The text is not a well-formed key block or header. `field` names the part, `reason` says
    /// what is wrong with it.
    Malformed {
        /// The header field or part of the block that is wrong.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The block is well formed, but the strict profile does not allow what it says (for example
    /// a key usage with a mode of use the standard does not pair it with).
    Policy(&'static str),
    /// The block could not be authenticated or decrypted under the given KBPK. Deliberately
    /// carries no detail: a wrong KBPK, a flipped bit, a bad padding and a bad key length inside
    /// the payload all look the same.
    Authentication,
    /// The KBPK cannot protect this version of block (for example an AES-256 key for a version B
    /// block, which is TDES-only).
    Kbpk(&'static str),
    /// A key check value carried in a `KC`, `KP` or `PK` block does not match the key, after the
    /// MAC was verified (the sender built an inconsistent block).
    CheckValueMismatch(&'static str),
    /// The request is valid but asks for something outside this library's export rules (such as
    /// exporting a legacy version A or C block without the legacy switch).
    Unsupported(&'static str),
    /// The key given for sealing cannot go into this block (length, algorithm).
    InvalidKey(&'static str),
    /// The padding source failed to produce bytes.
    Random,
}

impl Error {
    pub(crate) const fn malformed(field: &'static str, reason: &'static str) -> Self {
        Self::Malformed { field, reason }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed { field, reason } => {
                write!(f, "malformed key block: {field}: {reason}")
            }
            Self::Policy(why) => write!(f, "key block refused by the strict profile: {why}"),
            Self::Authentication => f.write_str(
                "key block authentication failed (wrong KBPK, or the block was altered)",
            ),
            Self::Kbpk(why) => write!(f, "unusable key block protection key: {why}"),
            Self::CheckValueMismatch(which) => {
                write!(f, "the {which} check value does not match the key")
            }
            Self::Unsupported(why) => write!(f, "not supported: {why}"),
            Self::InvalidKey(why) => write!(f, "invalid key: {why}"),
            Self::Random => f.write_str("the random padding source failed"),
        }
    }
}

impl core::error::Error for Error {}
