//! The key block header: the 16-character fixed part and the optional blocks that follow it.
//!
//! Every field is a newtype over its wire bytes with named constants for the values the standards
//! define, so proprietary and unknown values survive a parse and re-encode unchanged. Which values
//! are *acceptable* is not decided here but in [`crate::policy`].

use alloc::vec::Vec;
use core::fmt;

use crate::optional_block::{self, BlockId, OptionalBlock};
use crate::{Error, Profile};

/// Length of the fixed part of a header.
pub const FIXED_HEADER_LEN: usize = 16;
/// The largest key block the four-digit length field can describe.
pub const MAX_BLOCK_LEN: usize = 9999;

macro_rules! byte_code {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$cmeta:meta])* $konst:ident = $val:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(u8);

        impl $name {
            $( $(#[$cmeta])* pub const $konst: Self = Self($val); )*

            /// Wraps a raw header byte; any value is representable.
            pub const fn from_byte(byte: u8) -> Self {
                Self(byte)
            }

            /// The header byte.
            pub const fn to_byte(self) -> u8 {
                self.0
            }

            /// The header character.
            pub fn as_char(self) -> char {
                char::from(self.0)
            }

            /// The standard's name for this value, or `None` for proprietary and unknown values.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $val => Some(stringify!($konst)), )*
                    _ => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(n) => write!(f, "{}({:?})", n, char::from(self.0)),
                    None => write!(f, "{}({:?})", stringify!($name), char::from(self.0)),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Write::write_char(f, char::from(self.0))
            }
        }
    };
}

byte_code! {
    /// Key block version ID (header byte 0).
    Version {
        /// TDES key variant binding, TR-31:2005. Deprecated: import only, export behind a switch.
        A = b'A',
        /// TDES key derivation binding.
        B = b'B',
        /// TDES key variant binding, TR-31:2010. Deprecated like `A`.
        C = b'C',
        /// AES key derivation binding, CBC (TR-31:2018, X9.143, ISO 20038).
        D = b'D',
        /// AES key derivation binding, CTR (ISO 20038).
        E = b'E',
    }
}

byte_code! {
    /// Algorithm of the wrapped key (header byte 7).
    Algorithm {
        /// AES.
        AES = b'A',
        /// Single DES (backward compatibility only).
        DES = b'D',
        /// Elliptic curve.
        EC = b'E',
        /// HMAC: with an `HM` block the hash is named there (X9.143); without, HMAC-SHA-1
        /// (ISO 20038).
        HMAC = b'H',
        /// HMAC-SHA-2 (ISO 20038).
        HMAC_SHA2 = b'I',
        /// HMAC-SHA-3 (ISO 20038).
        HMAC_SHA3 = b'J',
        /// RSA.
        RSA = b'R',
        /// DSA.
        DSA = b'S',
        /// Triple DES.
        TDES = b'T',
    }
}

byte_code! {
    /// Mode of use (header byte 8).
    ModeOfUse {
        /// Encrypt/wrap and decrypt/unwrap.
        BOTH_ENCRYPT_DECRYPT = b'B',
        /// Generate and verify.
        GENERATE_VERIFY = b'C',
        /// Decrypt/unwrap only.
        DECRYPT_ONLY = b'D',
        /// Encrypt/wrap only.
        ENCRYPT_ONLY = b'E',
        /// Generate only.
        GENERATE_ONLY = b'G',
        /// No special restrictions.
        NO_RESTRICTIONS = b'N',
        /// Signature only.
        SIGN_ONLY = b'S',
        /// Sign and decrypt (TR-31:2018 only).
        SIGN_DECRYPT = b'T',
        /// Verify only.
        VERIFY_ONLY = b'V',
        /// Derive other keys.
        DERIVE = b'X',
        /// Create key variants.
        VARIANT = b'Y',
    }
}

byte_code! {
    /// Exportability (header byte 11).
    Exportability {
        /// Exportable under a KEK only in a form that meets X9.24 (a key block).
        EXPORTABLE = b'E',
        /// Not exportable.
        NON_EXPORTABLE = b'N',
        /// Sensitive: exportable under a KEK in forms that need not meet X9.24.
        SENSITIVE = b'S',
    }
}

byte_code! {
    /// Key context (header byte 14, X9.143; reserved `0` in TR-31:2018).
    KeyContext {
        /// Determined by the wrapping key.
        ANY = b'0',
        /// Storage context only.
        STORAGE = b'1',
        /// Key exchange context only.
        EXCHANGE = b'2',
    }
}

/// Key usage (header bytes 5-6).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyUsage([u8; 2]);

macro_rules! key_usages {
    ($( $(#[$m:meta])* $konst:ident = $val:literal, )*) => {
        impl KeyUsage {
            $( $(#[$m])* pub const $konst: Self = Self(*$val); )*

            /// Every usage X9.143 defines, in the standard's table order.
            pub const ALL: &'static [Self] = &[$(Self::$konst),*];

            /// The standard's name for this usage, or `None` for proprietary values.
            pub const fn name(self) -> Option<&'static str> {
                match &self.0 {
                    $( $val => Some(stringify!($konst)), )*
                    _ => None,
                }
            }
        }
    };
}

key_usages! {
    /// B0: base derivation key (BDK).
    BDK = b"B0",
    /// B1: initial DUKPT key.
    DUKPT_INITIAL_KEY = b"B1",
    /// B2: base key variant key (deprecated).
    BASE_KEY_VARIANT = b"B2",
    /// B3: key derivation key, non-X9.24.
    KEY_DERIVATION = b"B3",
    /// C0: card verification key.
    CVK = b"C0",
    /// D0: symmetric data-encryption key.
    DATA_ENCRYPTION = b"D0",
    /// D1: asymmetric data-encryption key.
    ASYMMETRIC_DATA_ENCRYPTION = b"D1",
    /// D2: data-encryption key for a decimalization table.
    DECIMALIZATION_TABLE = b"D2",
    /// D3: data-encryption key for sensitive data.
    SENSITIVE_DATA_ENCRYPTION = b"D3",
    /// E0: EMV/chip issuer master key, application cryptograms.
    EMV_MKAC = b"E0",
    /// E1: EMV issuer master key, secure messaging for confidentiality.
    EMV_MKSMC = b"E1",
    /// E2: EMV issuer master key, secure messaging for integrity.
    EMV_MKSMI = b"E2",
    /// E3: EMV issuer master key, data authentication code.
    EMV_MKDAC = b"E3",
    /// E4: EMV issuer master key, dynamic numbers.
    EMV_MKDN = b"E4",
    /// E5: EMV issuer master key, card personalization.
    EMV_PERSONALIZATION = b"E5",
    /// E6: EMV issuer master key, other.
    EMV_OTHER = b"E6",
    /// E7: EMV/chip asymmetric key pair for PIN encryption.
    EMV_PIN_ENCRYPTION = b"E7",
    /// I0: initialization vector.
    IV = b"I0",
    /// K0: key encryption or wrapping key.
    KEK = b"K0",
    /// K1: TR-31 / X9.143 key block protection key.
    KBPK = b"K1",
    /// K2: TR-34 asymmetric key pair.
    TR34 = b"K2",
    /// K3: asymmetric key pair for key wrapping or agreement.
    ASYMMETRIC_KEY_AGREEMENT = b"K3",
    /// K4: ISO 20038 key block protection key.
    ISO20038_KBPK = b"K4",
    /// M0: ISO 16609 MAC algorithm 1 (TDES).
    MAC_ISO16609 = b"M0",
    /// M1: ISO 9797-1 MAC algorithm 1.
    MAC_ALG1 = b"M1",
    /// M2: ISO 9797-1 MAC algorithm 2.
    MAC_ALG2 = b"M2",
    /// M3: ISO 9797-1 MAC algorithm 3 (retail MAC).
    MAC_ALG3 = b"M3",
    /// M4: ISO 9797-1 MAC algorithm 4.
    MAC_ALG4 = b"M4",
    /// M5: ISO 9797-1:1999 MAC algorithm 5.
    MAC_ALG5_1999 = b"M5",
    /// M6: ISO 9797-1:2011 MAC algorithm 5 (CMAC).
    CMAC = b"M6",
    /// M7: HMAC key.
    HMAC = b"M7",
    /// M8: ISO 9797-1:2011 MAC algorithm 6.
    MAC_ALG6 = b"M8",
    /// P0: PIN encryption key.
    PIN_ENCRYPTION = b"P0",
    /// P1: PIN generation key.
    PIN_GENERATION = b"P1",
    /// S0: asymmetric key pair for digital signature.
    SIGNATURE = b"S0",
    /// S1: asymmetric key pair, CA key.
    CA = b"S1",
    /// S2: asymmetric key pair, non-X9.24 use.
    ASYMMETRIC_OTHER = b"S2",
    /// V0: PIN verification key, other algorithm.
    PIN_VERIFICATION_OTHER = b"V0",
    /// V1: PIN verification key, IBM 3624.
    PIN_VERIFICATION_IBM3624 = b"V1",
    /// V2: PIN verification key, Visa PVV.
    PIN_VERIFICATION_VISA_PVV = b"V2",
    /// V3: PIN verification key, X9.132 algorithm 1.
    PIN_VERIFICATION_X9132_1 = b"V3",
    /// V4: PIN verification key, X9.132 algorithm 2.
    PIN_VERIFICATION_X9132_2 = b"V4",
    /// V5: PIN verification key, X9.132 algorithm 3.
    PIN_VERIFICATION_X9132_3 = b"V5",
}

impl KeyUsage {
    /// Wraps the two header bytes; any value is representable.
    pub const fn from_bytes(bytes: [u8; 2]) -> Self {
        Self(bytes)
    }

    /// The two header bytes.
    pub const fn to_bytes(self) -> [u8; 2] {
        self.0
    }

    /// The usage as two characters.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Debug for KeyUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}({:?})", self.as_str()),
            None => write!(f, "KeyUsage({:?})", self.as_str()),
        }
    }
}

impl fmt::Display for KeyUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Key version number (header bytes 9-10): `00` for none, `c` + a character for a key
/// component, anything else a version of the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyVersion([u8; 2]);

impl KeyVersion {
    /// Versioning not used.
    pub const NONE: Self = Self(*b"00");

    /// Wraps the two header bytes.
    pub const fn from_bytes(bytes: [u8; 2]) -> Self {
        Self(bytes)
    }

    /// The two header bytes.
    pub const fn to_bytes(self) -> [u8; 2] {
        self.0
    }

    /// The component identifier if this block carries a key component (`c1`, `c2`, ...).
    pub const fn component(self) -> Option<u8> {
        match self.0 {
            [b'c', id] => Some(id),
            _ => None,
        }
    }

    /// The version as two characters.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Debug for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyVersion({:?})", self.as_str())
    }
}

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key block header: the fixed fields and the optional blocks, without the length field and
/// the block count, which are derived from the rest when the header is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Key block version ID.
    pub version: Version,
    /// Key usage.
    pub key_usage: KeyUsage,
    /// Algorithm of the wrapped key.
    pub algorithm: Algorithm,
    /// Mode of use.
    pub mode_of_use: ModeOfUse,
    /// Key version number.
    pub key_version: KeyVersion,
    /// Exportability.
    pub exportability: Exportability,
    /// Key context (X9.143); `0` in TR-31:2018 blocks.
    pub key_context: KeyContext,
    /// Header byte 15, reserved; `0` in every standard.
    pub reserved: u8,
    /// Optional blocks in header order, including any `PB` padding block.
    pub optional_blocks: Vec<OptionalBlock>,
}

impl Header {
    /// A header with no optional blocks, key version `00`, key context `0`.
    pub const fn new(
        version: Version,
        key_usage: KeyUsage,
        algorithm: Algorithm,
        mode_of_use: ModeOfUse,
        exportability: Exportability,
    ) -> Self {
        Self {
            version,
            key_usage,
            algorithm,
            mode_of_use,
            key_version: KeyVersion::NONE,
            exportability,
            key_context: KeyContext::ANY,
            reserved: b'0',
            optional_blocks: Vec::new(),
        }
    }

    /// Parses a header given on its own, as a person writes it for `wrap`: the fixed part and
    /// exactly the optional blocks it announces, nothing after. The length field is not checked
    /// (it is recomputed when the header is encoded) but must still be four digits.
    ///
    /// # Errors
    /// [`Error::Malformed`] or [`Error::Unsupported`] as for a whole block.
    pub fn parse(text: &str, profile: Profile) -> Result<Self, Error> {
        let parsed = parse(text.as_bytes(), profile)?;
        if parsed.header_len != text.len() {
            return Err(Error::malformed(
                "header",
                "text follows the announced optional blocks",
            ));
        }
        Ok(parsed.header)
    }

    /// The optional block with this id, if present (the first, if a lenient parse let a
    /// duplicate through).
    pub fn optional_block(&self, id: BlockId) -> Option<&OptionalBlock> {
        self.optional_blocks.iter().find(|b| b.id() == id)
    }

    /// Length of the encoded header, optional blocks included.
    pub fn encoded_len(&self) -> usize {
        FIXED_HEADER_LEN
            + self
                .optional_blocks
                .iter()
                .map(OptionalBlock::encoded_len)
                .sum::<usize>()
    }

    /// Appends the encoded header to `out`, with `block_len` in the length field.
    pub(crate) fn encode_into(&self, block_len: usize, out: &mut Vec<u8>) -> Result<(), Error> {
        if block_len > MAX_BLOCK_LEN {
            return Err(Error::InvalidKey(
                "the key block would exceed 9999 characters",
            ));
        }
        let count = self.optional_blocks.len();
        if count > 99 {
            return Err(Error::malformed(
                "optional blocks",
                "more than 99 optional blocks",
            ));
        }
        out.push(self.version.to_byte());
        push_decimal(block_len, 4, out);
        out.extend_from_slice(&self.key_usage.to_bytes());
        out.push(self.algorithm.to_byte());
        out.push(self.mode_of_use.to_byte());
        out.extend_from_slice(&self.key_version.to_bytes());
        out.push(self.exportability.to_byte());
        push_decimal(count, 2, out);
        out.push(self.key_context.to_byte());
        out.push(self.reserved);
        for block in &self.optional_blocks {
            block.encode_into(out)?;
        }
        Ok(())
    }
}

/// A header as found at the start of a key block.
#[derive(Debug)]
pub(crate) struct ParsedHeader {
    pub(crate) header: Header,
    /// Characters the header occupies, optional blocks included.
    pub(crate) header_len: usize,
    /// The value of the length field.
    pub(crate) declared_len: usize,
}

/// Parses the fixed header and the optional blocks at the start of `text`.
pub(crate) fn parse(text: &[u8], profile: Profile) -> Result<ParsedHeader, Error> {
    let Some(fixed) = text.first_chunk::<FIXED_HEADER_LEN>() else {
        return Err(Error::malformed(
            "header",
            "shorter than the 16-character fixed header",
        ));
    };
    let &[
        v,
        l0,
        l1,
        l2,
        l3,
        u0,
        u1,
        alg,
        mode,
        kv0,
        kv1,
        exp,
        n0,
        n1,
        ctx,
        reserved,
    ] = fixed;
    let version = Version::from_byte(v);
    if !matches!(
        version,
        Version::A | Version::B | Version::C | Version::D | Version::E
    ) {
        return Err(if v.is_ascii_digit() {
            Error::Unsupported("proprietary (numeric) key block versions")
        } else {
            Error::malformed("version", "not A, B, C, D or E")
        });
    }
    let declared_len = parse_decimal(&[l0, l1, l2, l3])
        .ok_or(Error::malformed("length", "not four decimal digits"))?;
    let an = |c: u8| c.is_ascii_alphanumeric();
    if !(an(u0) && an(u1)) {
        return Err(Error::malformed(
            "key usage",
            "not two alphanumeric characters",
        ));
    }
    if !an(alg) {
        return Err(Error::malformed(
            "algorithm",
            "not an alphanumeric character",
        ));
    }
    if !an(mode) {
        return Err(Error::malformed(
            "mode of use",
            "not an alphanumeric character",
        ));
    }
    if !(an(kv0) && an(kv1)) {
        return Err(Error::malformed(
            "key version",
            "not two alphanumeric characters",
        ));
    }
    if !an(exp) {
        return Err(Error::malformed(
            "exportability",
            "not an alphanumeric character",
        ));
    }
    let count = parse_decimal(&[n0, n1]).ok_or(Error::malformed(
        "optional block count",
        "not two decimal digits",
    ))?;
    if !ctx.is_ascii_digit() {
        return Err(Error::malformed("key context", "not a decimal digit"));
    }
    if !reserved.is_ascii_digit() {
        return Err(Error::malformed("reserved", "not a decimal digit"));
    }
    let rest = text.get(FIXED_HEADER_LEN..).unwrap_or_default();
    let (optional_blocks, used) = optional_block::parse_all(rest, count, profile)?;
    Ok(ParsedHeader {
        header: Header {
            version,
            key_usage: KeyUsage([u0, u1]),
            algorithm: Algorithm::from_byte(alg),
            mode_of_use: ModeOfUse::from_byte(mode),
            key_version: KeyVersion([kv0, kv1]),
            exportability: Exportability::from_byte(exp),
            key_context: KeyContext::from_byte(ctx),
            reserved,
            optional_blocks,
        },
        header_len: FIXED_HEADER_LEN + used,
        declared_len,
    })
}

fn parse_decimal(digits: &[u8]) -> Option<usize> {
    digits.iter().try_fold(0usize, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + usize::from(c - b'0'))
    })
}

fn push_decimal(value: usize, width: u32, out: &mut Vec<u8>) {
    for i in (0..width).rev() {
        let digit = (value / 10usize.pow(i)) % 10;
        out.push(b'0' + u8::try_from(digit).unwrap_or(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_header_round_trips() {
        let h = Header::parse("D0112P0AE00E0000", Profile::Strict).unwrap();
        assert_eq!(h.version, Version::D);
        assert_eq!(h.key_usage, KeyUsage::PIN_ENCRYPTION);
        assert_eq!(h.algorithm, Algorithm::AES);
        assert_eq!(h.mode_of_use, ModeOfUse::ENCRYPT_ONLY);
        assert_eq!(h.exportability, Exportability::EXPORTABLE);
        let mut out = Vec::new();
        h.encode_into(112, &mut out).unwrap();
        assert_eq!(out, b"D0112P0AE00E0000");
    }

    #[test]
    fn bad_fixed_fields_are_named() {
        let cases: &[(&str, &str)] = &[
            ("D0112P0AE00E000", "header"),
            ("X0112P0AE00E0000", "version"),
            ("D01A2P0AE00E0000", "length"),
            ("D0112P0 E00E0000", "algorithm"),
            ("D0112P0AE00E0A00", "optional block count"),
            ("D0112P0AE00E00X0", "key context"),
        ];
        for (text, field) in cases {
            match Header::parse(text, Profile::Lenient) {
                Err(Error::Malformed { field: f, .. }) => assert_eq!(f, *field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            Header::parse("10112P0AE00E0000", Profile::Lenient),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn names_and_components() {
        assert_eq!(KeyUsage::ALL.len(), 43);
        assert_eq!(KeyUsage::from_bytes(*b"M7").name(), Some("HMAC"));
        assert_eq!(KeyUsage::from_bytes(*b"10").name(), None);
        assert_eq!(KeyVersion::from_bytes(*b"c2").component(), Some(b'2'));
        assert_eq!(KeyVersion::NONE.component(), None);
        assert_eq!(alloc::format!("{:?}", Algorithm::TDES), "TDES('T')");
    }
}
