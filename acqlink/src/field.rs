//! The profile's data elements and their formats (spec 12.4). The table is closed: a data
//! element that is not here is refused on decoding and cannot be set.

use crate::Error;

/// A data element the profile defines, other than the MAC (DE 64 / DE 128), which is not a
/// field a caller sets: it follows from the encoding (see [`crate::Message::encode_for_mac`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum De {
    /// DE 2, primary account number: LLVAR n..19.
    Pan,
    /// DE 3, processing code: n6 (`000000` purchase, `200000` refund).
    ProcessingCode,
    /// DE 4, amount in minor units: n12.
    Amount,
    /// DE 7, transmission date and time `MMDDhhmmss` (UTC): n10.
    TransmissionDateTime,
    /// DE 11, system trace audit number: n6.
    Stan,
    /// DE 12, local time `hhmmss` (UTC): n6.
    LocalTime,
    /// DE 13, local date `MMDD` (UTC): n4.
    LocalDate,
    /// DE 14, expiry `YYMM`: n4.
    Expiry,
    /// DE 22, POS entry mode: n3.
    PosEntryMode,
    /// DE 25, POS condition code: n2.
    PosConditionCode,
    /// DE 37, retrieval reference number: an12.
    Rrn,
    /// DE 38, authorization id: an6.
    AuthorizationId,
    /// DE 39, response code: an2.
    ResponseCode,
    /// DE 41, card acceptor terminal id: ans8.
    TerminalId,
    /// DE 42, card acceptor id: ans15.
    CardAcceptorId,
    /// DE 49, currency (ISO 4217 numeric): n3.
    Currency,
    /// DE 52, PIN block: 16 upper-case hex characters.
    PinBlock,
    /// DE 55, ICC data: LLLVAR ..510, upper-case hex.
    IccData,
    /// DE 70, network management information code: n3.
    NetworkCode,
    /// DE 90, original data elements: n42.
    OriginalData,
}

/// What characters a field may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Charset {
    /// `n`: decimal digits.
    Numeric,
    /// `an`: letters, digits and the space that pads them.
    Alnum,
    /// `ans`: printable ASCII (space to `~`).
    Text,
    /// Binary written as upper-case hex, an even number of characters.
    Hex,
}

/// How a field's extent is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Length {
    /// Exactly this many characters.
    Fixed(usize),
    /// A 2-digit length, then 1 to this many characters.
    Ll(usize),
    /// A 3-digit length, then 1 to this many characters.
    Lll(usize),
}

/// Every data element, in ascending order (the encoding order).
pub(crate) const ALL: [De; 20] = [
    De::Pan,
    De::ProcessingCode,
    De::Amount,
    De::TransmissionDateTime,
    De::Stan,
    De::LocalTime,
    De::LocalDate,
    De::Expiry,
    De::PosEntryMode,
    De::PosConditionCode,
    De::Rrn,
    De::AuthorizationId,
    De::ResponseCode,
    De::TerminalId,
    De::CardAcceptorId,
    De::Currency,
    De::PinBlock,
    De::IccData,
    De::NetworkCode,
    De::OriginalData,
];

impl De {
    /// The ISO 8583 field number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Pan => 2,
            Self::ProcessingCode => 3,
            Self::Amount => 4,
            Self::TransmissionDateTime => 7,
            Self::Stan => 11,
            Self::LocalTime => 12,
            Self::LocalDate => 13,
            Self::Expiry => 14,
            Self::PosEntryMode => 22,
            Self::PosConditionCode => 25,
            Self::Rrn => 37,
            Self::AuthorizationId => 38,
            Self::ResponseCode => 39,
            Self::TerminalId => 41,
            Self::CardAcceptorId => 42,
            Self::Currency => 49,
            Self::PinBlock => 52,
            Self::IccData => 55,
            Self::NetworkCode => 70,
            Self::OriginalData => 90,
        }
    }

    /// The data element with this number, if the profile defines it (the MAC fields 64 and 128
    /// are not data elements a caller sets, so they are `None` here too).
    pub fn from_number(n: u8) -> Option<Self> {
        ALL.into_iter().find(|de| de.number() == n)
    }

    /// Every data element of the profile, in ascending order.
    pub fn all() -> impl Iterator<Item = Self> {
        ALL.into_iter()
    }

    pub(crate) const fn format(self) -> (Length, Charset) {
        use Charset::{Alnum, Hex, Numeric, Text};
        use Length::{Fixed, Ll, Lll};
        match self {
            Self::Pan => (Ll(19), Numeric),
            Self::ProcessingCode | Self::Stan | Self::LocalTime => (Fixed(6), Numeric),
            Self::Amount => (Fixed(12), Numeric),
            Self::TransmissionDateTime => (Fixed(10), Numeric),
            Self::LocalDate | Self::Expiry => (Fixed(4), Numeric),
            Self::PosEntryMode | Self::Currency | Self::NetworkCode => (Fixed(3), Numeric),
            Self::PosConditionCode => (Fixed(2), Numeric),
            Self::Rrn => (Fixed(12), Alnum),
            Self::AuthorizationId => (Fixed(6), Alnum),
            Self::ResponseCode => (Fixed(2), Alnum),
            Self::TerminalId => (Fixed(8), Text),
            Self::CardAcceptorId => (Fixed(15), Text),
            Self::PinBlock => (Fixed(16), Hex),
            Self::IccData => (Lll(510), Hex),
            Self::OriginalData => (Fixed(42), Numeric),
        }
    }

    /// Whether the field sits in the secondary bitmap (65-128).
    pub(crate) const fn is_secondary(self) -> bool {
        self.number() > 64
    }

    /// Checks a value read off the wire: exact length for fixed fields, 1..=max for variable
    /// ones, and the charset.
    pub(crate) fn check(self, value: &[u8]) -> Result<(), Error> {
        let de = self.number();
        let (length, charset) = self.format();
        let ok_len = match length {
            Length::Fixed(n) => value.len() == n,
            Length::Ll(max) | Length::Lll(max) => (1..=max).contains(&value.len()),
        };
        if !ok_len {
            return Err(Error::Length { de });
        }
        let ok = match charset {
            Charset::Numeric => value.iter().all(u8::is_ascii_digit),
            Charset::Alnum => value
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b' '),
            Charset::Text => value.iter().all(|b| (b' '..=b'~').contains(b)),
            Charset::Hex => value.len().is_multiple_of(2) && value.iter().all(|b| is_upper_hex(*b)),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Content { de })
        }
    }

    /// Makes a caller's value the field's value: fixed numeric fields are zero-padded on the
    /// left and fixed alphanumeric ones space-padded on the right up to their length (so that
    /// `Amount` may be given as `"1250"`); hex fields are never padded. The result is checked as
    /// [`Self::check`] would check it off the wire, so whatever is set encodes and decodes back
    /// to the same text.
    pub(crate) fn normalize(self, value: &str) -> Result<String, Error> {
        let (length, charset) = self.format();
        let mut out = String::with_capacity(value.len());
        if let Length::Fixed(n) = length {
            let missing = n.saturating_sub(value.len());
            match charset {
                Charset::Numeric => {
                    out.extend(core::iter::repeat_n('0', missing));
                    out.push_str(value);
                }
                Charset::Alnum | Charset::Text => {
                    out.push_str(value);
                    out.extend(core::iter::repeat_n(' ', missing));
                }
                Charset::Hex => out.push_str(value),
            }
        } else {
            out.push_str(value);
        }
        self.check(out.as_bytes())?;
        Ok(out)
    }
}

pub(crate) const fn is_upper_hex(b: u8) -> bool {
    b.is_ascii_digit() || matches!(b, b'A'..=b'F')
}
