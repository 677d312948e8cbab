//! The crate's one error type. It names the part of the message (the MTI, a bitmap, a data
//! element by number) and the reason, and never a value: DE 2 is a card number and DE 52 a PIN
//! block, and errors end up in logs.

use core::fmt;

/// Why a message, a frame or a helper's input was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The MTI is missing, not four digits, or not one the profile uses.
    Mti,
    /// A bitmap is missing, short, or not 16 upper-case hex characters.
    Bitmap {
        /// `false` for the primary bitmap, `true` for the secondary one.
        secondary: bool,
    },
    /// Bit 1 announces a secondary bitmap, but that bitmap has no field set.
    EmptySecondaryBitmap,
    /// The bitmap has a field the profile does not define.
    UndefinedField {
        /// The data element number (1-128).
        de: u8,
    },
    /// DE 64 carries the MAC while a secondary bitmap is present; the MAC must be the last field
    /// (DE 128 then).
    MacNotLast,
    /// The input ends inside this field (or inside its length prefix).
    Truncated {
        /// The data element number.
        de: u8,
    },
    /// The field's length is wrong: a fixed field of another length, a variable field that is
    /// empty or longer than its maximum, or a length prefix that is not decimal digits.
    Length {
        /// The data element number.
        de: u8,
    },
    /// The field holds characters its format does not allow (a non-digit in a numeric field,
    /// lower-case or non-hex characters in a hex field, a control or non-ASCII byte).
    Content {
        /// The data element number.
        de: u8,
    },
    /// Bytes follow the last field the bitmaps announce.
    TrailingBytes,
    /// The message has no MAC field where one is needed.
    MissingMac,
    /// A field needed to build another one is absent (DE 90 needs the original's DE 7 and 11).
    MissingField {
        /// The data element number.
        de: u8,
    },
    /// A frame's length prefix is zero or over 4,096, or a message to frame is empty or longer.
    FrameLength,
    /// A STAN outside 000001-999999.
    Stan,
    /// An RRN part out of range (day of the year 1-366, hour 0-23).
    Rrn,
    /// A terminal id that is not `TID-` and six digits.
    TerminalId,
    /// A currency code that is not in the profile's ISO 4217 table.
    Currency,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mti => f.write_str("MTI missing, not 4 digits or not one of the profile's"),
            Self::Bitmap { secondary: false } => {
                f.write_str("primary bitmap missing or not 16 upper-case hex characters")
            }
            Self::Bitmap { secondary: true } => {
                f.write_str("secondary bitmap missing or not 16 upper-case hex characters")
            }
            Self::EmptySecondaryBitmap => f.write_str("secondary bitmap present but empty"),
            Self::UndefinedField { de } => write!(f, "DE {de} is not defined by the profile"),
            Self::MacNotLast => f.write_str("DE 64 present with a secondary bitmap"),
            Self::Truncated { de } => write!(f, "DE {de}: input ends inside the field"),
            Self::Length { de } => write!(f, "DE {de}: wrong length"),
            Self::Content { de } => write!(f, "DE {de}: characters not allowed by its format"),
            Self::TrailingBytes => f.write_str("bytes after the last field"),
            Self::MissingMac => f.write_str("no MAC field (DE 64 or DE 128)"),
            Self::MissingField { de } => write!(f, "DE {de} is needed and absent"),
            Self::FrameLength => f.write_str("frame length zero or over 4,096 bytes"),
            Self::Stan => f.write_str("a STAN is 000001 to 999999"),
            Self::Rrn => f.write_str("RRN: day of the year 1-366, hour 0-23"),
            Self::TerminalId => f.write_str("a terminal id is TID- and 6 digits"),
            Self::Currency => f.write_str("currency not in the profile's ISO 4217 table"),
        }
    }
}

impl core::error::Error for Error {}
