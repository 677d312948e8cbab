//! Optional blocks: their encoding (short and X9.143 extended length), and a typed view of the
//! contents of every block the standards define.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::header::{Algorithm, Exportability, KeyUsage, ModeOfUse};
use crate::{Error, Profile, hex};

/// Two-character optional block identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId([u8; 2]);

impl BlockId {
    /// Asymmetric key life.
    pub const AL: Self = Self(*b"AL");
    /// BDK identifier (DUKPT).
    pub const BI: Self = Self(*b"BI");
    /// Public-key certificate or chain.
    pub const CT: Self = Self(*b"CT");
    /// Derivations allowed (with usage `B3`).
    pub const DA: Self = Self(*b"DA");
    /// Flags.
    pub const FL: Self = Self(*b"FL");
    /// Hash algorithm of an HMAC key.
    pub const HM: Self = Self(*b"HM");
    /// Initial key identifier (AES DUKPT).
    pub const IK: Self = Self(*b"IK");
    /// Check value of the wrapped key.
    pub const KC: Self = Self(*b"KC");
    /// Check value of the KBPK.
    pub const KP: Self = Self(*b"KP");
    /// Key set identifier / initial key serial number (TDES DUKPT).
    pub const KS: Self = Self(*b"KS");
    /// Key block values (deprecated).
    pub const KV: Self = Self(*b"KV");
    /// Label.
    pub const LB: Self = Self(*b"LB");
    /// Padding block; always last.
    pub const PB: Self = Self(*b"PB");
    /// Check value of the export protection key.
    pub const PK: Self = Self(*b"PK");
    /// Time the key was created.
    pub const TC: Self = Self(*b"TC");
    /// Time the key block was formed.
    pub const TS: Self = Self(*b"TS");
    /// Wrapping pedigree.
    pub const WP: Self = Self(*b"WP");

    /// Wraps two characters; they must be alphanumeric.
    ///
    /// # Errors
    /// [`Error::Malformed`] for any other character.
    pub fn new(id: [u8; 2]) -> Result<Self, Error> {
        if id.iter().all(u8::is_ascii_alphanumeric) {
            Ok(Self(id))
        } else {
            Err(Error::malformed(
                "optional block id",
                "not two alphanumeric characters",
            ))
        }
    }

    /// The two characters.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockId({:?})", self.as_str())
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the length of an optional block is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthForm {
    /// Chosen when encoding: short when the block fits in 255 characters, otherwise extended
    /// with a four-digit length.
    Auto,
    /// Two hex digits giving the whole block's length.
    Short,
    /// X9.143 extended form: `00`, then two hex digits giving the number of digits of the length,
    /// then the length.
    Extended {
        /// Number of hex digits of the length field (`4` in every published example).
        digits: u8,
    },
}

/// One optional block: an id and printable-ASCII data, kept byte for byte.
///
/// Two blocks are equal when they encode to the same characters.
#[derive(Clone)]
pub struct OptionalBlock {
    id: BlockId,
    data: String,
    form: LengthForm,
}

impl OptionalBlock {
    /// A block with the given id and data; the length form is chosen when encoding.
    ///
    /// # Errors
    /// [`Error::Malformed`] if the data is not printable ASCII.
    pub fn new(id: BlockId, data: impl Into<String>) -> Result<Self, Error> {
        let data = data.into();
        if !is_printable(data.as_bytes()) {
            return Err(Error::malformed(
                "optional block data",
                "not printable ASCII",
            ));
        }
        if data.len() > crate::header::MAX_BLOCK_LEN {
            return Err(Error::malformed(
                "optional block data",
                "longer than a key block",
            ));
        }
        Ok(Self {
            id,
            data,
            form: LengthForm::Auto,
        })
    }

    /// The block's id.
    pub const fn id(&self) -> BlockId {
        self.id
    }

    /// The block's data (printable ASCII).
    pub fn data(&self) -> &str {
        &self.data
    }

    /// How the block's length was (or will be) written.
    pub const fn length_form(&self) -> LengthForm {
        self.form
    }

    /// The form the block is written in: [`LengthForm::Auto`] resolved.
    fn resolved_form(&self) -> LengthForm {
        match self.form {
            LengthForm::Auto if 4 + self.data.len() <= 0xFF => LengthForm::Short,
            LengthForm::Auto => LengthForm::Extended { digits: 4 },
            form => form,
        }
    }

    /// Characters the encoded block occupies.
    pub fn encoded_len(&self) -> usize {
        match self.resolved_form() {
            LengthForm::Extended { digits } => 6 + usize::from(digits) + self.data.len(),
            _ => 4 + self.data.len(),
        }
    }

    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let total = self.encoded_len();
        out.extend_from_slice(&self.id.0);
        let too_long = Error::malformed("optional block", "too long for its length field");
        match self.resolved_form() {
            LengthForm::Short | LengthForm::Auto => {
                hex::push_number(total, 2, out).ok_or(too_long)?;
            }
            LengthForm::Extended { digits } => {
                out.extend_from_slice(b"00");
                hex::push_number(usize::from(digits), 2, out).ok_or(too_long)?;
                hex::push_number(total, usize::from(digits), out).ok_or(too_long)?;
            }
        }
        out.extend_from_slice(self.data.as_bytes());
        Ok(())
    }

    /// The block's content as the standards define it for its id. This is the strict reading:
    /// a `KS` that is not hex, a time stamp that is not one of the four ISO 8601 forms, and so on,
    /// are errors. Unknown and proprietary ids give [`BlockContent::Other`].
    ///
    /// # Errors
    /// [`Error::Malformed`] naming the block when its content breaks the rules for its id.
    pub fn content(&self) -> Result<BlockContent<'_>, Error> {
        let d = self.data.as_str();
        let b = d.as_bytes();
        let bad = |reason| Error::malformed(id_field(self.id), reason);
        Ok(match self.id {
            BlockId::AL => match b {
                b"0100" => BlockContent::AsymmetricKeyLife(KeyLife::Ephemeral),
                b"0101" => BlockContent::AsymmetricKeyLife(KeyLife::Static),
                _ => return Err(bad("not version 01 with 00 (ephemeral) or 01 (static)")),
            },
            BlockId::BI => match (b.split_at_checked(2), b.len()) {
                (Some((b"00", rest)), 12) if hex::is_upper_hex(rest) => {
                    BlockContent::BdkId(BdkId::TdesKeySetId(&d[2..]))
                }
                (Some((b"01", rest)), 10) if hex::is_upper_hex(rest) => {
                    BlockContent::BdkId(BdkId::AesBdkId(&d[2..]))
                }
                _ => return Err(bad("not 00 + 10 hex digits or 01 + 8 hex digits")),
            },
            BlockId::CT => BlockContent::Certificates(parse_certificates(d).ok_or(bad(
                "not 00/01 + a certificate or 02 + a chain of format, length, certificate",
            ))?),
            BlockId::DA => {
                let rest = b.strip_prefix(b"01").ok_or(bad("version is not 01"))?;
                if rest.is_empty() || rest.len() % 5 != 0 {
                    return Err(bad("not a whole number of 5-character derivation sets"));
                }
                let mut sets = Vec::with_capacity(rest.len() / 5);
                for set in rest.chunks_exact(5) {
                    let &[u0, u1, a, m, e] = set else { continue };
                    if !set.iter().all(u8::is_ascii_alphanumeric) {
                        return Err(bad("a derivation set is not alphanumeric"));
                    }
                    sets.push(DerivationAllowed {
                        key_usage: KeyUsage::from_bytes([u0, u1]),
                        algorithm: Algorithm::from_byte(a),
                        mode_of_use: ModeOfUse::from_byte(m),
                        exportability: Exportability::from_byte(e),
                    });
                }
                BlockContent::DerivationsAllowed(sets)
            }
            BlockId::FL => BlockContent::Flags(d),
            BlockId::HM => {
                let code = match b {
                    [_, _] => hex::parse_number(b, false),
                    _ => None,
                };
                match code.and_then(|c| u8::try_from(c).ok()).map(HashAlgorithm) {
                    Some(h) if h.name().is_some() => BlockContent::HashAlgorithm(h),
                    _ => return Err(bad("not one of the defined two-digit hash codes")),
                }
            }
            BlockId::IK => {
                if b.len() != 16 || !hex::is_upper_hex(b) {
                    return Err(bad("not 16 hex digits"));
                }
                BlockContent::InitialKeyId(d)
            }
            BlockId::KC => BlockContent::KeyCheckValue(parse_check_value(d).ok_or(bad(KCV_RULE))?),
            BlockId::KP => BlockContent::KbpkCheckValue(parse_check_value(d).ok_or(bad(KCV_RULE))?),
            BlockId::PK => {
                BlockContent::ExportKeyCheckValue(parse_check_value(d).ok_or(bad(KCV_RULE))?)
            }
            BlockId::KS => {
                if !matches!(b.len(), 16 | 20) || !hex::is_upper_hex(b) {
                    return Err(bad("not a 16- or 20-hex-digit key serial number"));
                }
                BlockContent::KeySetId(d)
            }
            BlockId::KV => {
                if b.len() != 4 || !b.iter().all(u8::is_ascii_alphanumeric) {
                    return Err(bad("not 4 alphanumeric characters"));
                }
                BlockContent::KeyBlockValues(d)
            }
            BlockId::LB => BlockContent::Label(d),
            BlockId::PB => BlockContent::Padding(d),
            BlockId::TC => BlockContent::CreationTime(Timestamp::parse(b).ok_or(bad(TIME_RULE))?),
            BlockId::TS => BlockContent::TimeStamp(Timestamp::parse(b).ok_or(bad(TIME_RULE))?),
            BlockId::WP => match b {
                [b'0', b'0', p @ b'0'..=b'3'] => BlockContent::WrappingPedigree(p - b'0'),
                _ => return Err(bad("not version 00 and a pedigree 0-3")),
            },
            _ => BlockContent::Other(d),
        })
    }
}

impl PartialEq for OptionalBlock {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.data == other.data
            && self.resolved_form() == other.resolved_form()
    }
}

impl Eq for OptionalBlock {}

const KCV_RULE: &str = "not 00 + up to 6 hex digits (legacy) or 01 + up to 10 hex digits (CMAC)";
const TIME_RULE: &str = "not an ISO 8601 UTC time in one of the four X9.143 forms";

impl fmt::Debug for OptionalBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:?}", self.id.as_str(), self.data)
    }
}

/// The content of an optional block, by id.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockContent<'a> {
    /// `AL`: the life of an asymmetric key.
    AsymmetricKeyLife(KeyLife),
    /// `BI`: which BDK a DUKPT key belongs to.
    BdkId(BdkId<'a>),
    /// `CT`: one certificate or a chain.
    Certificates(Certificates<'a>),
    /// `DA`: the derivations a `B3` key may make.
    DerivationsAllowed(Vec<DerivationAllowed>),
    /// `FL`: flags (content not defined by any public source).
    Flags(&'a str),
    /// `HM`: the hash of an HMAC key.
    HashAlgorithm(HashAlgorithm),
    /// `IK`: AES DUKPT initial key id (16 hex digits).
    InitialKeyId(&'a str),
    /// `KC`: check value of the wrapped key.
    KeyCheckValue(CheckValue<'a>),
    /// `KP`: check value of the KBPK.
    KbpkCheckValue(CheckValue<'a>),
    /// `KS`: key set identifier / TDES DUKPT initial key serial number (hex).
    KeySetId(&'a str),
    /// `KV`: key block values (deprecated).
    KeyBlockValues(&'a str),
    /// `LB`: a label.
    Label(&'a str),
    /// `PB`: padding.
    Padding(&'a str),
    /// `PK`: check value of the export protection key.
    ExportKeyCheckValue(CheckValue<'a>),
    /// `TC`: when the key was created.
    CreationTime(Timestamp),
    /// `TS`: when the block was formed.
    TimeStamp(Timestamp),
    /// `WP`: wrapping pedigree (0 = KBPK at least as strong as the key, 1 = weaker, 2 =
    /// asymmetric key at quantum risk, 3 = both).
    WrappingPedigree(u8),
    /// A proprietary or unknown block.
    Other(&'a str),
}

/// `AL` key life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLife {
    /// `00`.
    Ephemeral,
    /// `01`.
    Static,
}

/// `BI` content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BdkId<'a> {
    /// `00`: TDES DUKPT key set id, 10 hex digits.
    TdesKeySetId(&'a str),
    /// `01`: AES DUKPT BDK id, 8 hex digits.
    AesBdkId(&'a str),
}

/// `CT` content: the format code and the certificates (one, unless the format is `02`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificates<'a> {
    /// `00` X.509, `01` EMV, `02` chain.
    pub format: u8,
    /// Each certificate's own format code and its text.
    pub certificates: Vec<(u8, &'a str)>,
}

/// One `DA` derivation set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DerivationAllowed {
    /// Usage of the derived key.
    pub key_usage: KeyUsage,
    /// Algorithm of the derived key.
    pub algorithm: Algorithm,
    /// Mode of use of the derived key.
    pub mode_of_use: ModeOfUse,
    /// Exportability of the derived key.
    pub exportability: Exportability,
}

/// `HM` hash algorithm code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HashAlgorithm(pub u8);

impl HashAlgorithm {
    /// SHA-1.
    pub const SHA1: Self = Self(0x10);
    /// SHA-224.
    pub const SHA224: Self = Self(0x20);
    /// SHA-256.
    pub const SHA256: Self = Self(0x21);
    /// SHA-384.
    pub const SHA384: Self = Self(0x22);
    /// SHA-512.
    pub const SHA512: Self = Self(0x23);
    /// SHA-512/224.
    pub const SHA512_224: Self = Self(0x24);
    /// SHA-512/256.
    pub const SHA512_256: Self = Self(0x25);
    /// SHA3-224.
    pub const SHA3_224: Self = Self(0x30);
    /// SHA3-256.
    pub const SHA3_256: Self = Self(0x31);
    /// SHA3-384.
    pub const SHA3_384: Self = Self(0x32);
    /// SHA3-512.
    pub const SHA3_512: Self = Self(0x33);
    /// SHAKE128.
    pub const SHAKE128: Self = Self(0x40);
    /// SHAKE256.
    pub const SHAKE256: Self = Self(0x41);

    /// The hash's name, or `None` for an undefined code.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x10 => "SHA-1",
            0x20 => "SHA-224",
            0x21 => "SHA-256",
            0x22 => "SHA-384",
            0x23 => "SHA-512",
            0x24 => "SHA-512/224",
            0x25 => "SHA-512/256",
            0x30 => "SHA3-224",
            0x31 => "SHA3-256",
            0x32 => "SHA3-384",
            0x33 => "SHA3-512",
            0x40 => "SHAKE128",
            0x41 => "SHAKE256",
            _ => return None,
        })
    }
}

impl fmt::Debug for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HashAlgorithm({:02X}, {})",
            self.0,
            self.name().unwrap_or("unknown")
        )
    }
}

/// How a check value was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KcvMethod {
    /// `00`: X9.24-1 legacy, TDES-ECB of zeros, up to 3 bytes.
    Legacy,
    /// `01`: X9.24-1 CMAC of a zero block, up to 5 bytes.
    Cmac,
}

/// A check value carried in `KC`, `KP` or `PK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckValue<'a> {
    /// How it was computed.
    pub method: KcvMethod,
    /// The value, upper-case hex.
    pub value: &'a str,
}

/// A `TC` / `TS` time (always UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    /// Year.
    pub year: u16,
    /// Month, 1-12.
    pub month: u8,
    /// Day of the month.
    pub day: u8,
    /// Hour, 0-23.
    pub hour: u8,
    /// Minute, 0-59.
    pub minute: u8,
    /// Second, 0-60 (60 for a leap second).
    pub second: u8,
    /// Hundredths of a second, when the form carries them.
    pub centiseconds: Option<u8>,
}

impl Timestamp {
    /// Parses one of the four forms X9.143 allows: `YYYYMMDDhhmmssZ`, `YYYYMMDDhhmmssffZ`,
    /// `YYYY-MM-DDThh:mm:ssZ`, `YYYY-MM-DDThh:mm:ss.ffZ`, and checks the calendar.
    pub fn parse(text: &[u8]) -> Option<Self> {
        let num = |s: &[u8]| -> Option<u16> {
            s.iter().try_fold(0u16, |acc, &c| {
                c.is_ascii_digit().then(|| acc * 10 + u16::from(c - b'0'))
            })
        };
        let small = |s: &[u8]| num(s).and_then(|v| u8::try_from(v).ok());
        let (date, time, frac) = match text {
            [date @ .., b'Z'] if date.len() == 14 => (date.get(..8)?, date.get(8..14)?, None),
            [date @ .., b'Z'] if date.len() == 16 => {
                (date.get(..8)?, date.get(8..14)?, Some(date.get(14..16)?))
            }
            [y @ .., b'Z'] if y.len() == 19 || y.len() == 22 => {
                let sep = |i: usize, c: u8| y.get(i) == Some(&c);
                if !(sep(4, b'-')
                    && sep(7, b'-')
                    && sep(10, b'T')
                    && sep(13, b':')
                    && sep(16, b':'))
                {
                    return None;
                }
                if y.len() == 22 && !sep(19, b'.') {
                    return None;
                }
                let d = [y.get(0..4)?, y.get(5..7)?, y.get(8..10)?].concat();
                let t = [y.get(11..13)?, y.get(14..16)?, y.get(17..19)?].concat();
                return Self::build(
                    &d,
                    &t,
                    if y.len() == 22 { y.get(20..22) } else { None },
                    num,
                    small,
                );
            }
            _ => return None,
        };
        Self::build(date, time, frac, num, small)
    }

    fn build(
        date: &[u8],
        time: &[u8],
        frac: Option<&[u8]>,
        num: impl Fn(&[u8]) -> Option<u16>,
        small: impl Fn(&[u8]) -> Option<u8>,
    ) -> Option<Self> {
        let ts = Self {
            year: num(date.get(..4)?)?,
            month: small(date.get(4..6)?)?,
            day: small(date.get(6..8)?)?,
            hour: small(time.get(..2)?)?,
            minute: small(time.get(2..4)?)?,
            second: small(time.get(4..6)?)?,
            centiseconds: match frac {
                Some(f) => Some(small(f)?),
                None => None,
            },
        };
        let leap = ts.year.is_multiple_of(4)
            && (!ts.year.is_multiple_of(100) || ts.year.is_multiple_of(400));
        let days = match ts.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return None,
        };
        (ts.day >= 1 && ts.day <= days && ts.hour < 24 && ts.minute < 60 && ts.second <= 60)
            .then_some(ts)
    }
}

fn parse_check_value(d: &str) -> Option<CheckValue<'_>> {
    let (method, value) = d.split_at_checked(2)?;
    let (method, max) = match method {
        "00" => (KcvMethod::Legacy, 6),
        "01" => (KcvMethod::Cmac, 10),
        _ => return None,
    };
    let ok = value.len() >= 2 && value.len() <= max && value.len() % 2 == 0;
    (ok && hex::is_upper_hex(value.as_bytes())).then_some(CheckValue { method, value })
}

fn parse_certificates(d: &str) -> Option<Certificates<'_>> {
    let (format, rest) = d.split_at_checked(2)?;
    match format {
        "00" | "01" if !rest.is_empty() => Some(Certificates {
            format: if format == "00" { 0 } else { 1 },
            certificates: alloc::vec![(if format == "00" { 0 } else { 1 }, rest)],
        }),
        "02" => {
            let mut certificates = Vec::new();
            let mut rest = rest;
            while !rest.is_empty() {
                let (fmt_code, after) = rest.split_at_checked(2)?;
                let code = match fmt_code {
                    "00" => 0,
                    "01" => 1,
                    _ => return None,
                };
                let (len, after) = after.split_at_checked(4)?;
                let len = hex::parse_number(len.as_bytes(), false)?;
                if len == 0 {
                    return None;
                }
                let (cert, after) = after.split_at_checked(len)?;
                certificates.push((code, cert));
                rest = after;
            }
            (!certificates.is_empty()).then_some(Certificates {
                format: 2,
                certificates,
            })
        }
        _ => None,
    }
}

fn id_field(id: BlockId) -> &'static str {
    match id {
        BlockId::AL => "optional block AL",
        BlockId::BI => "optional block BI",
        BlockId::CT => "optional block CT",
        BlockId::DA => "optional block DA",
        BlockId::HM => "optional block HM",
        BlockId::IK => "optional block IK",
        BlockId::KC => "optional block KC",
        BlockId::KP => "optional block KP",
        BlockId::KS => "optional block KS",
        BlockId::KV => "optional block KV",
        BlockId::PK => "optional block PK",
        BlockId::TC => "optional block TC",
        BlockId::TS => "optional block TS",
        BlockId::WP => "optional block WP",
        _ => "optional block",
    }
}

/// True for printable ASCII (format PA, 0x20-0x7E).
pub(crate) fn is_printable(bytes: &[u8]) -> bool {
    // A fold rather than `all` so the loop has no early exit and vectorises.
    bytes
        .iter()
        .fold(true, |ok, &c| ok & (c.wrapping_sub(0x20) < 0x5F))
}

/// Parses `count` optional blocks from the start of `text`. Returns them and the number of
/// characters they take.
pub(crate) fn parse_all(
    text: &[u8],
    count: usize,
    profile: Profile,
) -> Result<(Vec<OptionalBlock>, usize), Error> {
    let lenient = profile == Profile::Lenient;
    let mut blocks = Vec::with_capacity(count);
    let mut pos = 0;
    for _ in 0..count {
        let rest = text.get(pos..).unwrap_or_default();
        let Some(&[i0, i1, l0, l1]) = rest.first_chunk::<4>() else {
            return Err(Error::malformed(
                "optional blocks",
                "fewer blocks than the header announces",
            ));
        };
        let id = BlockId::new([i0, i1])?;
        let bad_len = Error::malformed("optional block length", "not valid hex or too short");
        let short = hex::parse_number(&[l0, l1], lenient).ok_or(bad_len)?;
        let (total, form, data_start) = if short == 0 {
            let digits = rest
                .get(4..6)
                .and_then(|d| hex::parse_number(d, lenient))
                .filter(|&d| (1..=8).contains(&d))
                .ok_or(bad_len)?;
            let total = rest
                .get(6..6 + digits)
                .and_then(|d| hex::parse_number(d, lenient))
                .ok_or(bad_len)?;
            let form = LengthForm::Extended {
                digits: u8::try_from(digits).map_err(|_| bad_len)?,
            };
            (total, form, 6 + digits)
        } else {
            (short, LengthForm::Short, 4)
        };
        if total < data_start {
            return Err(bad_len);
        }
        let data = rest.get(data_start..total).ok_or(Error::malformed(
            "optional blocks",
            "a block runs past the end of the text",
        ))?;
        if !is_printable(data) {
            return Err(Error::malformed(
                "optional block data",
                "not printable ASCII",
            ));
        }
        let data = String::from_utf8(data.to_vec())
            .map_err(|_| Error::malformed("optional block data", "not printable ASCII"))?;
        blocks.push(OptionalBlock { id, data, form });
        pos += total;
    }
    Ok((blocks, pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(id: &[u8; 2], data: &str) -> OptionalBlock {
        OptionalBlock::new(BlockId::new(*id).unwrap(), data).unwrap()
    }

    #[test]
    fn short_and_extended_forms() {
        let (blocks, used) =
            parse_all(b"KS1800604B120F9292800000PB04xyz", 2, Profile::Strict).unwrap();
        assert_eq!(used, 28);
        assert_eq!(blocks[0].data(), "00604B120F9292800000");
        assert_eq!(blocks[1].data(), "");
        // Extended: total 0x0010 = 16 characters: 10 of id and length, 6 of data.
        let (blocks, used) = parse_all(b"LB00040010abcdef", 1, Profile::Strict).unwrap();
        assert_eq!(used, 16);
        assert_eq!(blocks[0].length_form(), LengthForm::Extended { digits: 4 });
        let mut out = Vec::new();
        blocks[0].encode_into(&mut out).unwrap();
        assert_eq!(out, b"LB00040010abcdef");
        // Auto picks the extended form only past 255 characters.
        let long = block(b"LB", &"x".repeat(300));
        assert_eq!(long.encoded_len(), 310);
        let mut out = Vec::new();
        long.encode_into(&mut out).unwrap();
        assert!(out.starts_with(b"LB00040136xxx"));
    }

    #[test]
    fn length_errors() {
        for text in [
            &b"KS03"[..],
            b"KS",
            b"KSZZ",
            b"KS0005",
            b"KS000400",
            b"KS0F0123",
        ] {
            assert!(parse_all(text, 1, Profile::Strict).is_err(), "{text:?}");
        }
        assert!(parse_all(b"K!05x", 1, Profile::Lenient).is_err());
        assert!(parse_all(b"KS05\x01", 1, Profile::Lenient).is_err());
        assert!(parse_all(b"KS0a012345", 1, Profile::Strict).is_err());
        assert!(parse_all(b"KS0a012345", 1, Profile::Lenient).is_ok());
    }

    #[test]
    fn typed_contents() {
        assert_eq!(
            block(b"KC", "0057C409").content().unwrap(),
            BlockContent::KeyCheckValue(CheckValue {
                method: KcvMethod::Legacy,
                value: "57C409"
            })
        );
        assert!(block(b"KC", "0257C409").content().is_err());
        assert!(block(b"KP", "012331550BC9FF").content().is_err());
        assert_eq!(
            block(b"HM", "21").content().unwrap(),
            BlockContent::HashAlgorithm(HashAlgorithm::SHA256)
        );
        assert!(block(b"HM", "22X").content().is_err());
        assert!(block(b"HM", "99").content().is_err());
        assert!(block(b"KS", "VM9A").content().is_err());
        assert!(block(b"KS", "00604B120F9292800000").content().is_ok());
        assert!(block(b"IK", "0123456789ABCDEF").content().is_ok());
        assert_eq!(
            block(b"WP", "001").content().unwrap(),
            BlockContent::WrappingPedigree(1)
        );
        assert!(block(b"WP", "004").content().is_err());
        assert!(block(b"AL", "0101").content().is_ok());
        assert!(block(b"BI", "00FFFF00A020").content().is_ok());
        assert!(block(b"BI", "0112345678").content().is_ok());
        assert!(block(b"BI", "0212345678").content().is_err());
        let da = block(b"DA", "01P0TEEK0AEN");
        let da = da.content().unwrap();
        assert!(matches!(da, BlockContent::DerivationsAllowed(v) if v.len() == 2));
        assert!(block(b"DA", "01P0TE").content().is_err());
        let ct = block(b"CT", "02000003abc010002de");
        let ct = ct.content().unwrap();
        match ct {
            BlockContent::Certificates(c) => {
                assert_eq!(c.certificates, alloc::vec![(0, "abc"), (1, "de")]);
            }
            other => panic!("{other:?}"),
        }
        assert!(block(b"CT", "02000009abc").content().is_err());
        assert!(block(b"ZZ", "anything").content().is_ok());
    }

    #[test]
    fn timestamps() {
        for ok in [
            "20200818221218Z",
            "2020081822121899Z",
            "2018-06-18T20:42:39Z",
            "2018-06-18T20:42:39.22Z",
            "20240229000000Z",
        ] {
            assert!(Timestamp::parse(ok.as_bytes()).is_some(), "{ok}");
        }
        for bad in [
            "2018-06-18T20:42:39.22",
            "20230229000000Z",
            "20201318221218Z",
            "20200818241218Z",
            "2018-06-18 20:42:39Z",
            "2020081822121Z",
        ] {
            assert!(Timestamp::parse(bad.as_bytes()).is_none(), "{bad}");
        }
        let t = Timestamp::parse(b"2018-06-18T20:42:39.22Z").unwrap();
        assert_eq!(
            (t.year, t.month, t.day, t.second, t.centiseconds),
            (2018, 6, 18, 39, Some(22))
        );
    }
}
