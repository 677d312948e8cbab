//! Body encoding: big-endian integers, length-prefixed byte strings, nothing implicit.
//!
//! Every message is a fixed sequence of fields; the decoder reads exactly those fields and
//! refuses leftovers, so a body has one valid reading. Lengths are checked against what is left
//! before anything is allocated.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use zeroize::Zeroizing;

/// Why a body cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The body ends inside a field.
    Truncated,
    /// Bytes are left after the last field.
    Trailing,
    /// A string is not UTF-8, a flag is not 0 or 1, or a value is out of range.
    Invalid(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("message body is truncated"),
            Self::Trailing => f.write_str("message body has trailing bytes"),
            Self::Invalid(what) => write!(f, "invalid field: {what}"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// Appends fields to a body.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends to an existing buffer (for example one that already holds a frame header).
    pub const fn from_vec(buf: Vec<u8>) -> Self {
        Self { buf }
    }

    /// The encoded body.
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }

    /// The body so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    fn raw(&mut self, bytes: &[u8]) {
        // The buffer may be a connection's outbox, holding other callers' frames: when it has
        // to grow, the old allocation is wiped, not freed as it is.
        crate::buffer::reserve(&mut self.buf, bytes.len());
        self.buf.extend_from_slice(bytes);
    }
}

/// Reads fields from a body.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from `buf`.
    pub const fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let (head, rest) = self.buf.split_at_checked(n).ok_or(DecodeError::Truncated)?;
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N)?;
        bytes.try_into().map_err(|_| DecodeError::Truncated)
    }

    /// Fails unless every byte was read.
    ///
    /// # Errors
    /// [`DecodeError::Trailing`].
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing)
        }
    }
}

/// A value that can be a field of a message.
pub trait Field: Sized {
    /// The fewest bytes an encoded value takes. Lets a list refuse a count its remaining bytes
    /// cannot hold before it reserves memory for it, so a decoder never allocates more than a
    /// small multiple of the frame it reads.
    const MIN_WIRE: usize;
    /// Appends the value.
    fn put(&self, w: &mut Writer);
    /// Reads the value.
    ///
    /// # Errors
    /// [`DecodeError`] if the bytes are not a valid value.
    fn get(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl Field for $t {
            const MIN_WIRE: usize = core::mem::size_of::<$t>();
            fn put(&self, w: &mut Writer) {
                w.raw(&self.to_be_bytes());
            }
            fn get(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                Ok(<$t>::from_be_bytes(r.array()?))
            }
        }
    )*};
}

int_field!(u8, u16, u32, u64);

impl Field for bool {
    const MIN_WIRE: usize = 1;
    fn put(&self, w: &mut Writer) {
        w.raw(&[u8::from(*self)]);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.array::<1>()? {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err(DecodeError::Invalid("a flag is not 0 or 1")),
        }
    }
}

impl<const N: usize> Field for [u8; N] {
    const MIN_WIRE: usize = N;
    fn put(&self, w: &mut Writer) {
        w.raw(self);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.array()
    }
}

/// A field read in place: byte strings and strings borrow from the body, small fixed-size
/// values are copied. The hot operations' requests are decoded this way on keyd's PKCS#11
/// thread (`message::ChargeOpenView`), where copying each envelope out of its frame, and
/// freeing the copy, was a measurable share of the thread. Each impl reads exactly what its
/// owned [`Field`] reads and refuses exactly what it refuses.
pub trait View<'a>: Sized {
    /// Reads the value.
    ///
    /// # Errors
    /// [`DecodeError`] as the owned field's [`Field::get`].
    fn view(r: &mut Reader<'a>) -> Result<Self, DecodeError>;
}

impl<'a> View<'a> for &'a [u8] {
    fn view(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let n = get_len(r)?;
        r.take(n)
    }
}

impl<'a> View<'a> for &'a str {
    fn view(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let n = get_len(r)?;
        core::str::from_utf8(r.take(n)?).map_err(|_| NOT_UTF8)
    }
}

impl<'a, const N: usize> View<'a> for [u8; N] {
    fn view(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        r.array()
    }
}

impl<'a> View<'a> for bool {
    fn view(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Self::get(r)
    }
}

/// An owned field lent as its [`View`]: what lets code written for a view serve an owned
/// message too.
pub trait Lend<'a, V> {
    /// The field as its view.
    fn lend(&'a self) -> V;
}

impl<'a> Lend<'a, &'a [u8]> for Vec<u8> {
    fn lend(&'a self) -> &'a [u8] {
        self
    }
}

impl<'a> Lend<'a, &'a str> for String {
    fn lend(&'a self) -> &'a str {
        self
    }
}

impl<const N: usize> Lend<'_, Self> for [u8; N] {
    fn lend(&self) -> Self {
        *self
    }
}

impl Lend<'_, Self> for bool {
    fn lend(&self) -> Self {
        *self
    }
}

const NOT_UTF8: DecodeError = DecodeError::Invalid("a string is not UTF-8");

/// Byte strings carry a 4-byte length.
impl Field for Vec<u8> {
    const MIN_WIRE: usize = 4;
    fn put(&self, w: &mut Writer) {
        put_len(w, self.len());
        w.raw(self);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = get_len(r)?;
        Ok(r.take(n)?.to_vec())
    }
}

/// Strings carry a 4-byte length and must be UTF-8.
impl Field for String {
    const MIN_WIRE: usize = 4;
    fn put(&self, w: &mut Writer) {
        put_len(w, self.len());
        w.raw(self.as_bytes());
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = get_len(r)?;
        let bytes = r.take(n)?;
        core::str::from_utf8(bytes)
            .map(Self::from)
            .map_err(|_| NOT_UTF8)
    }
}

/// A type that may be an element of a list. Bytes are not (a `Vec<u8>` is a byte string).
pub trait Element: Field {}

impl Element for String {}
impl Element for bool {}
impl Element for Secret {}
/// Fixed-size values (salts, MACs) in a list are their bytes one after another.
impl<const N: usize> Element for [u8; N] {}

/// Lists carry a 4-byte count; each element is checked to fit before it is read.
impl<T: Element> Field for Vec<T> {
    const MIN_WIRE: usize = 4;
    fn put(&self, w: &mut Writer) {
        put_len(w, self.len());
        for item in self {
            item.put(w);
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = get_len(r)?;
        // Every element takes at least `MIN_WIRE` bytes (one, for elements that can be empty),
        // so a count the remaining bytes cannot hold is a lie; refusing it first bounds the
        // allocation by the body size times the ratio of an element's size in memory to its
        // smallest encoding.
        if n > r.buf.len() / T::MIN_WIRE.max(1) {
            return Err(DecodeError::Truncated);
        }
        let mut out = Self::with_capacity(n);
        for _ in 0..n {
            out.push(T::get(r)?);
        }
        Ok(out)
    }
}

impl<T: Field> Field for Option<T> {
    const MIN_WIRE: usize = 1;
    fn put(&self, w: &mut Writer) {
        match self {
            None => false.put(w),
            Some(v) => {
                true.put(w);
                v.put(w);
            }
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        if bool::get(r)? {
            Ok(Some(T::get(r)?))
        } else {
            Ok(None)
        }
    }
}

/// Secret bytes on the wire (keys, plaintexts, identity secrets): zeroized on drop, redacted in
/// `Debug`, no `Clone`.
pub struct Secret(pub Zeroizing<Vec<u8>>);

impl Secret {
    /// Copies `bytes` into a new secret.
    pub fn new(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// `Zeroizing<Vec<u8>>` alone would wipe the bytes in use one volatile store at a time (zeroize
/// 1.9 bulk-writes a slice and a `Vec`'s spare capacity, not a `Vec`'s elements): about a
/// cycle per byte, a measurable share of keyd's PKCS#11 thread for 1 KiB plaintexts. Wiped
/// here with one `memset` and emptied, the `Vec` is then all spare capacity to `Zeroizing`,
/// which clears the whole allocation with one more bulk write.
impl Drop for Secret {
    fn drop(&mut self) {
        crate::buffer::wipe(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        use subtle_free_eq::ct_eq;
        ct_eq(&self.0, &other.0)
    }
}

impl Field for Secret {
    const MIN_WIRE: usize = 4;
    fn put(&self, w: &mut Writer) {
        put_len(w, self.0.len());
        w.raw(&self.0);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = get_len(r)?;
        Ok(Self::new(r.take(n)?))
    }
}

/// Constant-time equality without another dependency: the protocol crate compares secrets only
/// in tests and in the client's own checks.
mod subtle_free_eq {
    pub(super) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
        core::hint::black_box(diff) == 0
    }
}

fn put_len(w: &mut Writer, n: usize) {
    u32::try_from(n).unwrap_or(u32::MAX).put(w);
}

fn get_len(r: &mut Reader<'_>) -> Result<usize, DecodeError> {
    usize::try_from(u32::get(r)?).map_err(|_| DecodeError::Invalid("length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_refuse_garbage() {
        let mut w = Writer::new();
        7u8.put(&mut w);
        true.put(&mut w);
        String::from("POS-0000ABCD").put(&mut w);
        vec![1u8, 2, 3].put(&mut w);
        vec![String::from("a"), String::from("bc")].put(&mut w);
        Some(5u64).put(&mut w);
        [9u8; 3].put(&mut w);
        let bytes = w.into_inner();
        let mut r = Reader::new(&bytes);
        assert_eq!(u8::get(&mut r), Ok(7));
        assert_eq!(bool::get(&mut r), Ok(true));
        assert_eq!(String::get(&mut r).unwrap(), "POS-0000ABCD");
        assert_eq!(Vec::<u8>::get(&mut r).unwrap(), vec![1, 2, 3]);
        assert_eq!(Vec::<String>::get(&mut r).unwrap(), vec!["a", "bc"]);
        assert_eq!(Option::<u64>::get(&mut r), Ok(Some(5)));
        assert_eq!(<[u8; 3]>::get(&mut r), Ok([9; 3]));
        assert_eq!(r.finish(), Ok(()));

        for cut in 0..bytes.len() {
            let mut r = Reader::new(&bytes[..cut]);
            let ok = u8::get(&mut r).is_ok()
                && bool::get(&mut r).is_ok()
                && String::get(&mut r).is_ok()
                && Vec::<u8>::get(&mut r).is_ok()
                && Vec::<String>::get(&mut r).is_ok()
                && Option::<u64>::get(&mut r).is_ok()
                && <[u8; 3]>::get(&mut r).is_ok();
            assert!(!ok, "cut {cut} decoded");
        }
        assert_eq!(
            bool::get(&mut Reader::new(&[2])),
            Err(DecodeError::Invalid("a flag is not 0 or 1"))
        );
        assert_eq!(
            String::get(&mut Reader::new(&[0, 0, 0, 1, 0xFF])),
            Err(DecodeError::Invalid("a string is not UTF-8"))
        );
        // A huge count is refused before allocating.
        assert_eq!(
            Vec::<String>::get(&mut Reader::new(&[0xFF, 0xFF, 0xFF, 0xFF, 0])),
            Err(DecodeError::Truncated)
        );
        assert_eq!(Reader::new(&[1]).finish(), Err(DecodeError::Trailing));
    }

    #[test]
    fn lists_of_fixed_arrays_are_a_count_and_the_bytes() {
        let salts = vec![[1u8; 4], [2; 4]];
        let mut w = Writer::new();
        salts.put(&mut w);
        let bytes = w.into_inner();
        assert_eq!(bytes, [0, 0, 0, 2, 1, 1, 1, 1, 2, 2, 2, 2]);
        let mut r = Reader::new(&bytes);
        assert_eq!(Vec::<[u8; 4]>::get(&mut r), Ok(salts));
        assert_eq!(r.finish(), Ok(()));
        // An element cut short, and a count the bytes cannot hold (refused before allocating).
        assert_eq!(
            Vec::<[u8; 4]>::get(&mut Reader::new(&bytes[..bytes.len() - 1])),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            Vec::<[u8; 4]>::get(&mut Reader::new(&[0, 0, 0, 3, 1, 1, 1, 1, 2, 2, 2, 2])),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            Vec::<[u8; 32]>::get(&mut Reader::new(&[0xFF, 0xFF, 0xFF, 0xFF, 0])),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let s = Secret::new(b"super secret");
        assert_eq!(format!("{s:?}"), "Secret(12 bytes)");
        assert_eq!(s, Secret::new(b"super secret"));
        assert_ne!(s, Secret::new(b"super secreT"));
    }
}
