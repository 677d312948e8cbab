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
/// of it on every POS answer; `hex::encode_upper` grew its string as it went).
pub fn hex_upper(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for nibble in [b >> 4, b & 0x0F] {
            out.push(
                char::from_digit(u32::from(nibble), 16)
                    .unwrap_or('0')
                    .to_ascii_uppercase(),
            );
        }
    }
    out
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
}
