//! Wire formats shared by every layer: identifiers, times, typed request bodies, and JSON as
//! the API reads it from untrusted clients.

pub mod body;
pub mod fields;
pub mod ids;
pub mod json;
pub mod outbound;
pub mod reply;
pub mod time;
pub mod url;

/// Upper-case hex in one allocation of the exact size (an envelope's ciphertext is a kilobyte
/// of it on every POS answer), two digits per byte from a table.
pub fn hex_upper(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let digit = |n: u8| char::from(DIGITS.get(usize::from(n & 0x0F)).copied().unwrap_or(b'0'));
    let mut out = String::with_capacity(bytes.len() * 2);
    out.extend(bytes.iter().flat_map(|&b| [digit(b >> 4), digit(b)]));
    out
}

/// The value of each hex digit of either case, and `INVALID` for every other byte.
const NIBBLE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut at = 0u8;
    loop {
        let value = match at {
            b'0'..=b'9' => at - b'0',
            b'a'..=b'f' => at - b'a' + 10,
            b'A'..=b'F' => at - b'A' + 10,
            _ => INVALID,
        };
        #[allow(clippy::indexing_slicing, reason = "a u8 indexes 256 entries")]
        {
            table[at as usize] = value;
        }
        if at == u8::MAX {
            break table;
        }
        at += 1;
    }
};

/// Not a hex digit: one bit above every digit's value, so OR-ing a pair's entries flags it.
const INVALID: u8 = 0x10;

/// Hex of either case to bytes; `None` for an odd length or anything but hex digits. One table
/// lookup per digit and one check at the end: `hex::decode` runs a fallible iterator per byte,
/// a few percent of the API's time on the kilobyte ciphertexts every charge carries. Bad input
/// is decoded to its end before it is refused (bounded by the body's size limit).
pub fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    let (pairs, rest) = text.as_chunks::<2>();
    if !rest.is_empty() {
        return None;
    }
    let nibble = |b: u8| NIBBLE.get(usize::from(b)).copied().unwrap_or(INVALID);
    let mut seen = 0u8;
    let bytes = pairs
        .iter()
        .map(|&[hi, lo]| {
            let (hi, lo) = (nibble(hi), nibble(lo));
            seen |= hi | lo;
            (hi << 4) | (lo & 0x0F)
        })
        .collect();
    (seen & INVALID == 0).then_some(bytes)
}

/// [`unhex`] into exactly `N` bytes.
pub fn unhex_array<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    unhex(text)?.try_into().ok()
}

#[cfg(test)]
mod hex_tests {
    #[test]
    fn upper_hex_is_the_hex_crates() {
        let bytes: Vec<u8> = (0..=255).collect();
        let ours = super::hex_upper(&bytes);
        assert_eq!(ours, hex::encode_upper(&bytes));
        assert_eq!(super::hex_upper(&[]), "");
    }

    #[test]
    fn hex_is_read_as_the_hex_crate_reads_it() {
        let bytes: Vec<u8> = (0..=255).collect();
        for text in [hex::encode(&bytes), hex::encode_upper(&bytes)] {
            assert_eq!(super::unhex(text.as_bytes()), Some(bytes.clone()));
        }
        assert_eq!(super::unhex(b""), Some(vec![]));
        assert_eq!(super::unhex_array::<2>(b"0aFF"), Some([10, 255]));
        assert_eq!(super::unhex_array::<2>(b"0aFF00"), None);
        // Every byte that is not a digit, in either place of a pair, and odd lengths.
        for b in 0..=255u8 {
            let ok = b.is_ascii_hexdigit();
            for text in [[b, b'0'], [b'0', b]] {
                assert_eq!(super::unhex(&text).is_some(), ok, "{text:?}");
                assert_eq!(super::unhex(&text).is_some(), hex::decode(text).is_ok());
            }
        }
        assert_eq!(super::unhex(b"abc"), None);
        assert_eq!(super::unhex(b"+F"), None);
    }
}
