//! Hexadecimal as the standards use it: format H is `0-9A-F`, upper case only.

use alloc::vec::Vec;

/// The upper-case hex digit of a value below 16, without a branch or a table lookup.
#[inline]
const fn nibble(v: u8) -> u8 {
    // 9 - v wraps past 0x80 exactly when v > 9; letters sit 7 above the digit after '9'.
    let above_nine = 9u8.wrapping_sub(v) >> 7;
    b'0' + v + above_nine * 7
}

/// Value of one hex digit, or `None`. Lower case is accepted only when `lenient`.
#[inline]
pub(crate) const fn digit(c: u8, lenient: bool) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        b'a'..=b'f' if lenient => Some(c - b'a' + 10),
        _ => None,
    }
}

/// True if every byte is an upper-case hex digit (format H).
pub(crate) fn is_upper_hex(s: &[u8]) -> bool {
    s.iter().all(|&c| digit(c, false).is_some())
}

/// Digit values by byte, `0xFF` for "not a digit": one table for format H (upper case only),
/// one that also takes lower case.
#[allow(
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    reason = "i < 256 by the loop condition; const fn cannot use iterators"
)]
const fn table(lenient: bool) -> [u8; 256] {
    let mut t = [0xFFu8; 256];
    let mut i = 0;
    while i < 256 {
        if let Some(v) = digit(i as u8, lenient) {
            t[i] = v;
        }
        i += 1;
    }
    t
}

static STRICT: [u8; 256] = table(false);
static LENIENT: [u8; 256] = table(true);

/// Decodes `src` (even length) into `dst` (half its length). Returns `false` on a bad digit.
/// Branch-free per byte: invalid digits are collected in one accumulator checked at the end.
#[allow(
    clippy::indexing_slicing,
    reason = "a u8 index into a 256-entry table cannot be out of range"
)]
pub(crate) fn decode_into(src: &[u8], dst: &mut [u8], lenient: bool) -> bool {
    if src.len() != dst.len() * 2 {
        return false;
    }
    let t = if lenient { &LENIENT } else { &STRICT };
    let mut bad = 0u8;
    for (pair, out) in src.chunks_exact(2).zip(dst.iter_mut()) {
        if let &[hi, lo] = pair {
            let (hi, lo) = (t[usize::from(hi)], t[usize::from(lo)]);
            bad |= hi | lo;
            *out = (hi << 4) | (lo & 0x0F);
        }
    }
    bad & 0xF0 == 0
}

/// Decodes an even-length hex string into a new vector. The result may be a key, so a buffer
/// abandoned half-way is wiped before it is freed.
pub(crate) fn decode(src: &[u8], lenient: bool) -> Option<Vec<u8>> {
    if !src.len().is_multiple_of(2) {
        return None;
    }
    let mut out = alloc::vec![0u8; src.len() / 2];
    if decode_into(src, &mut out, lenient) {
        Some(out)
    } else {
        zeroize::Zeroize::zeroize(&mut out);
        None
    }
}

/// Appends the upper-case hex of `bytes` to `out`.
pub(crate) fn encode_into(bytes: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + bytes.len() * 2, 0);
    let dst = out.get_mut(start..).unwrap_or_default();
    for (pair, b) in dst.chunks_exact_mut(2).zip(bytes) {
        if let [hi, lo] = pair {
            *hi = nibble(b >> 4);
            *lo = nibble(b & 0x0F);
        }
    }
}

/// Parses a fixed-width upper-case hex number (at most 8 digits).
pub(crate) fn parse_number(s: &[u8], lenient: bool) -> Option<usize> {
    if s.is_empty() || s.len() > 8 {
        return None;
    }
    s.iter().try_fold(0usize, |acc, &c| {
        Some(acc * 16 + usize::from(digit(c, lenient)?))
    })
}

/// Writes `value` as exactly `width` upper-case hex digits; `None` if it does not fit.
pub(crate) fn push_number(value: usize, width: usize, out: &mut Vec<u8>) -> Option<()> {
    if width < size_of::<usize>() * 2 && value >> (4 * width) != 0 {
        return None;
    }
    for i in (0..width).rev() {
        out.push(nibble(u8::try_from((value >> (4 * i)) & 0x0F).unwrap_or(0)));
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_case_rules() {
        let mut s = Vec::new();
        encode_into(&[0x00, 0xAB, 0x7F], &mut s);
        assert_eq!(s, b"00AB7F");
        let all: Vec<u8> = (0..=255u8).collect();
        let mut s = b"x".to_vec();
        encode_into(&all, &mut s);
        assert_eq!(decode(&s[1..], false).unwrap(), all);
        assert!(
            s[1..]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
        );
        assert_eq!(
            decode(b"00AB7F", false),
            Some(alloc::vec![0x00, 0xAB, 0x7F])
        );
        assert_eq!(decode(b"00ab7f", false), None);
        assert_eq!(decode(b"00ab7f", true), Some(alloc::vec![0x00, 0xAB, 0x7F]));
        assert_eq!(decode(b"0G", true), None);
        assert_eq!(decode(b"ABC", true), None);
        assert_eq!(parse_number(b"1F", false), Some(31));
        assert_eq!(parse_number(b"1f", false), None);
        let mut n = Vec::new();
        assert_eq!(push_number(0x500, 4, &mut n), Some(()));
        assert_eq!(n, b"0500");
        assert_eq!(push_number(0x100, 2, &mut n), None);
    }
}
