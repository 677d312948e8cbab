//! The message: MTI, bitmaps, fields (spec 12.4), and the MAC as the last field (12.5).

use std::collections::BTreeMap;
use std::fmt;

use crate::Error;
use crate::field::{De, Length, is_upper_hex};

/// The message types the profile uses; any other MTI is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mti {
    /// `0200`: a purchase or a refund.
    FinancialRequest,
    /// `0210`: the answer to a `0200`.
    FinancialResponse,
    /// `0400`: a reversal.
    ReversalRequest,
    /// `0401`: the same reversal, repeated.
    ReversalRepeat,
    /// `0410`: the answer to a `0400` or `0401`.
    ReversalResponse,
    /// `0800`: an echo test.
    NetworkRequest,
    /// `0810`: the answer to a `0800`.
    NetworkResponse,
}

impl Mti {
    /// Every MTI of the profile.
    pub const ALL: [Self; 7] = [
        Self::FinancialRequest,
        Self::FinancialResponse,
        Self::ReversalRequest,
        Self::ReversalRepeat,
        Self::ReversalResponse,
        Self::NetworkRequest,
        Self::NetworkResponse,
    ];

    /// The four ASCII digits.
    pub const fn code(self) -> &'static str {
        match self {
            Self::FinancialRequest => "0200",
            Self::FinancialResponse => "0210",
            Self::ReversalRequest => "0400",
            Self::ReversalRepeat => "0401",
            Self::ReversalResponse => "0410",
            Self::NetworkRequest => "0800",
            Self::NetworkResponse => "0810",
        }
    }

    /// The MTI these four bytes spell, if the profile uses it.
    pub fn from_code(code: &[u8]) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|m| m.code().as_bytes() == code)
            .ok_or(Error::Mti)
    }

    /// The response MTI to this request (`None` for a response).
    pub const fn response(self) -> Option<Self> {
        match self {
            Self::FinancialRequest => Some(Self::FinancialResponse),
            Self::ReversalRequest | Self::ReversalRepeat => Some(Self::ReversalResponse),
            Self::NetworkRequest => Some(Self::NetworkResponse),
            Self::FinancialResponse | Self::ReversalResponse | Self::NetworkResponse => None,
        }
    }
}

impl fmt::Display for Mti {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A message's MAC: the 8 bytes of the retail MAC (written as 16 upper-case hex characters in
/// DE 64 or DE 128). Computed and checked by keyd, never here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 8]);

/// Field 64 (primary MAC) and 128 (secondary MAC).
const MAC_PRIMARY: u8 = 64;
const MAC_SECONDARY: u8 = 128;
/// Characters in a MAC field.
const MAC_LEN: usize = 16;

/// One ISO 8583 message of the profile: an MTI, data elements, and a MAC or none.
///
/// Every value held is exactly what goes on the wire (fixed fields padded, formats checked when
/// set), so a message always encodes, and what [`Self::decode`] reads encodes back to the same
/// bytes. `Debug` shows the MTI and which fields are present, never their values.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    mti: Mti,
    fields: BTreeMap<De, String>,
    mac: Option<Mac>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("mti", &self.mti)
            .field(
                "fields",
                &self.fields.keys().map(|de| de.number()).collect::<Vec<_>>(),
            )
            .field("mac", &self.mac.is_some())
            .finish()
    }
}

impl Message {
    /// An empty message of this type.
    pub fn new(mti: Mti) -> Self {
        Self {
            mti,
            fields: BTreeMap::new(),
            mac: None,
        }
    }

    /// The message type.
    pub fn mti(&self) -> Mti {
        self.mti
    }

    /// Sets a data element. Fixed numeric values shorter than the field are zero-padded on the
    /// left, fixed alphanumeric ones space-padded on the right; anything the format does not
    /// allow (too long, empty variable field, a non-digit, lower-case hex) is refused.
    pub fn set(&mut self, de: De, value: &str) -> Result<&mut Self, Error> {
        let value = de.normalize(value)?;
        self.fields.insert(de, value);
        Ok(self)
    }

    /// [`Self::set`] for building a message in one expression.
    pub fn with(mut self, de: De, value: &str) -> Result<Self, Error> {
        self.set(de, value)?;
        Ok(self)
    }

    /// The value of a data element, as on the wire (padding included).
    pub fn get(&self, de: De) -> Option<&str> {
        self.fields.get(&de).map(String::as_str)
    }

    /// Removes a data element, returning its value.
    pub fn remove(&mut self, de: De) -> Option<String> {
        self.fields.remove(&de)
    }

    /// The present data elements in ascending order.
    pub fn fields(&self) -> impl Iterator<Item = (De, &str)> {
        self.fields.iter().map(|(de, v)| (*de, v.as_str()))
    }

    /// The MAC, when the message carries one.
    pub fn mac(&self) -> Option<Mac> {
        self.mac
    }

    /// Sets or clears the MAC. Prefer [`Self::encode_for_mac`], which gives the bytes to MAC and
    /// takes the MAC in one flow.
    pub fn set_mac(&mut self, mac: Option<Mac>) {
        self.mac = mac;
    }

    /// Where the MAC goes: DE 128 when the secondary bitmap is present, else DE 64.
    pub fn mac_field(&self) -> u8 {
        if self.has_secondary() {
            MAC_SECONDARY
        } else {
            MAC_PRIMARY
        }
    }

    fn has_secondary(&self) -> bool {
        self.fields.keys().any(|de| de.is_secondary())
    }

    /// The whole message: MTI, bitmaps, fields, and the MAC field if [`Self::mac`] is set.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.encode_prefix(self.mac.is_some());
        if let Some(mac) = self.mac {
            push_hex(&mut out, &mac.0);
        }
        out
    }

    /// The message "with the MAC still to fill": encoded with the MAC field's bit set in the
    /// bitmap and everything up to the MAC field written, which is exactly what the MAC covers
    /// (spec 12.5). Ask keyd for the retail MAC over [`Unsigned::mac_input`], then
    /// [`Unsigned::with_mac`] gives the bytes to send. Any MAC already on `self` is ignored.
    pub fn encode_for_mac(&self) -> Unsigned {
        Unsigned {
            bytes: self.encode_prefix(true),
        }
    }

    fn encode_prefix(&self, with_mac: bool) -> Vec<u8> {
        let secondary = self.has_secondary();
        let mut bitmap: u128 = 0;
        for de in self.fields.keys() {
            bitmap |= bit(de.number());
        }
        if with_mac {
            bitmap |= bit(self.mac_field());
        }
        if secondary {
            bitmap |= bit(1);
        }
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        out.extend_from_slice(self.mti.code().as_bytes());
        let primary = u64::try_from(bitmap >> 64).unwrap_or_default();
        push_hex(&mut out, &primary.to_be_bytes());
        if secondary {
            let low = u64::try_from(bitmap & u128::from(u64::MAX)).unwrap_or_default();
            push_hex(&mut out, &low.to_be_bytes());
        }
        for (de, value) in &self.fields {
            match de.format().0 {
                Length::Fixed(_) => {}
                Length::Ll(_) => push_decimal(&mut out, value.len(), 2),
                Length::Lll(_) => push_decimal(&mut out, value.len(), 3),
            }
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    fn encoded_len_hint(&self) -> usize {
        4 + 32 + 3 + MAC_LEN + self.fields.values().map(|v| v.len() + 3).sum::<usize>()
    }

    /// Reads a whole message, strictly: a profile MTI, upper-case hex bitmaps whose bit 1 agrees
    /// with the presence of fields 65-128, only fields the profile defines, each of its exact
    /// format, the MAC (if any) as the last field, and no byte after it.
    ///
    /// A response must not be trusted on this alone: see [`MacProtected`].
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader { bytes, pos: 0 };
        let mti = Mti::from_code(r.take(4).ok_or(Error::Mti)?)?;
        let primary = read_bitmap(&mut r, false)?;
        let mut bitmap = u128::from(primary) << 64;
        if bitmap & bit(1) != 0 {
            let secondary = read_bitmap(&mut r, true)?;
            if secondary == 0 {
                return Err(Error::EmptySecondaryBitmap);
            }
            bitmap |= u128::from(secondary);
        }
        let has_secondary = bitmap & bit(1) != 0;
        let mut message = Self::new(mti);
        for n in 2..=128u8 {
            if bitmap & bit(n) == 0 {
                continue;
            }
            if n == MAC_PRIMARY || n == MAC_SECONDARY {
                if n == MAC_PRIMARY && has_secondary {
                    return Err(Error::MacNotLast);
                }
                let text = r.take(MAC_LEN).ok_or(Error::Truncated { de: n })?;
                message.mac = Some(Mac(parse_hex8(text).ok_or(Error::Content { de: n })?));
                continue;
            }
            let de = De::from_number(n).ok_or(Error::UndefinedField { de: n })?;
            let len = match de.format().0 {
                Length::Fixed(len) => len,
                Length::Ll(_) => read_length(&mut r, 2, n)?,
                Length::Lll(_) => read_length(&mut r, 3, n)?,
            };
            let value = r.take(len).ok_or(Error::Truncated { de: n })?;
            de.check(value)?;
            // Checked as ASCII just above, so this never fails.
            let text = std::str::from_utf8(value).map_err(|_| Error::Content { de: n })?;
            message.fields.insert(de, text.to_owned());
        }
        if r.pos != bytes.len() {
            return Err(Error::TrailingBytes);
        }
        Ok(message)
    }
}

/// An encoded message whose MAC field is announced in the bitmap but not yet written (from
/// [`Message::encode_for_mac`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsigned {
    bytes: Vec<u8>,
}

impl Unsigned {
    /// The bytes the MAC covers: MTI, bitmaps and every field before the MAC field (not the
    /// 2-byte frame length).
    pub fn mac_input(&self) -> &[u8] {
        &self.bytes
    }

    /// The complete message, with `mac` written as the last field.
    pub fn with_mac(mut self, mac: Mac) -> Vec<u8> {
        push_hex(&mut self.bytes, &mac.0);
        self.bytes
    }
}

/// A received message that carries a MAC, decoded but not yet trusted.
///
/// Only the MTI, the MAC and the bytes it covers are reachable until the caller has had the MAC
/// verified (by keyd, over [`Self::mac_input`]) and says so with [`Self::into_verified`]: the
/// fields of a response whose MAC fails are never looked at (spec 12.4: "treated as no
/// response").
#[derive(Debug, Clone)]
pub struct MacProtected<'a> {
    bytes: &'a [u8],
    message: Message,
    mac: Mac,
}

impl<'a> MacProtected<'a> {
    /// Decodes `bytes` strictly ([`Message::decode`]) and requires a MAC field.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, Error> {
        let message = Message::decode(bytes)?;
        let mac = message.mac.ok_or(Error::MissingMac)?;
        Ok(Self {
            bytes,
            message,
            mac,
        })
    }

    /// The message type (to route the message before its MAC is checked).
    pub fn mti(&self) -> Mti {
        self.message.mti
    }

    /// The MAC the sender wrote.
    pub fn mac(&self) -> Mac {
        self.mac
    }

    /// The bytes the MAC covers: everything before the MAC field.
    pub fn mac_input(&self) -> &'a [u8] {
        let end = self.bytes.len().saturating_sub(MAC_LEN);
        self.bytes.get(..end).unwrap_or_default()
    }

    /// The message, once keyd has verified [`Self::mac`] over [`Self::mac_input`] under the
    /// link's ZAK. Calling this without that check defeats the MAC.
    pub fn into_verified(self) -> Message {
        self.message
    }
}

/// The bytes the MAC of an encoded message covers: everything before its MAC field (the last
/// field: DE 64, or DE 128 when a secondary bitmap is present). The message is decoded strictly
/// first, so that the split is the one the bitmaps define; a message without a MAC field is
/// [`Error::MissingMac`].
pub fn mac_input(encoded: &[u8]) -> Result<&[u8], Error> {
    Ok(MacProtected::decode(encoded)?.mac_input())
}

/// The bitmap bit of field `n` (1-128), field 1 being the most significant bit.
fn bit(n: u8) -> u128 {
    1u128 << (128 - u32::from(n))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }
}

fn read_bitmap(r: &mut Reader<'_>, secondary: bool) -> Result<u64, Error> {
    let text = r.take(16).ok_or(Error::Bitmap { secondary })?;
    parse_hex8(text)
        .map(u64::from_be_bytes)
        .ok_or(Error::Bitmap { secondary })
}

fn read_length(r: &mut Reader<'_>, digits: usize, de: u8) -> Result<usize, Error> {
    let text = r.take(digits).ok_or(Error::Truncated { de })?;
    let mut n = 0usize;
    for b in text {
        if !b.is_ascii_digit() {
            return Err(Error::Length { de });
        }
        n = n * 10 + usize::from(b - b'0');
    }
    // Bounded before any byte of the value is read, so a large prefix never drives a read.
    let max = match De::from_number(de).map(|d| d.format().0) {
        Some(Length::Ll(max) | Length::Lll(max)) => max,
        _ => 0,
    };
    if n == 0 || n > max {
        return Err(Error::Length { de });
    }
    Ok(n)
}

/// 16 upper-case hex characters as 8 bytes.
fn parse_hex8(text: &[u8]) -> Option<[u8; 8]> {
    if text.len() != 16 || !text.iter().all(|b| is_upper_hex(*b)) {
        return None;
    }
    let mut out = [0u8; 8];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let [hi, lo] = pair else { return None };
        *byte = (nibble(*hi)? << 4) | nibble(*lo)?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for b in bytes {
        for n in [b >> 4, b & 0x0F] {
            out.push(DIGITS.get(usize::from(n)).copied().unwrap_or(b'0'));
        }
    }
}

fn push_decimal(out: &mut Vec<u8>, n: usize, digits: u32) {
    for i in (0..digits).rev() {
        let d = (n / 10usize.pow(i)) % 10;
        out.push(b'0' + u8::try_from(d).unwrap_or(0));
    }
}
