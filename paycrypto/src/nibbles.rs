//! Packing and unpacking of 4-bit values, the unit every field of these formats is counted in.

/// Splits `bytes` into nibbles, high nibble first; `out` must hold twice as many values.
pub(crate) fn unpack(bytes: &[u8], out: &mut [u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        if let [hi, lo] = pair {
            *hi = byte >> 4;
            *lo = byte & 0x0F;
        }
    }
}

/// Joins pairs of nibbles (each below 16) into bytes, high nibble first.
pub(crate) fn pack(nibbles: &[u8], out: &mut [u8]) {
    for (byte, pair) in out.iter_mut().zip(nibbles.chunks_exact(2)) {
        if let [hi, lo] = pair {
            *byte = (hi << 4) | (lo & 0x0F);
        }
    }
}

/// XORs `src` into `dst`.
pub(crate) fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// Decimal digits of ASCII text, each as its value 0-9, into `out`; the count, or `None` when
/// the text has a non-digit or does not fit.
pub(crate) fn ascii_digits(text: &str, out: &mut [u8]) -> Option<usize> {
    if text.len() > out.len() {
        return None;
    }
    for (d, c) in out.iter_mut().zip(text.bytes()) {
        if !c.is_ascii_digit() {
            return None;
        }
        *d = c - b'0';
    }
    Some(text.len())
}
