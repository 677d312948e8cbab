//! The acquirer's own keys, held in clear.
//!
//! The platform keeps its ZPK and ZAK inside keyd; the acquirer host is outside the platform,
//! and this one is a test double, so it simply holds its three double-length TDES keys in
//! memory (wiped on drop by [`paycrypto::TdesKey`]). They come from the built-in test values,
//! from hex on the command line or from a TOML file: never from a real acquirer.

use std::fmt;

use paycrypto::TdesKey;
use paycrypto::zeroize::Zeroizing;

/// The published test keys ([`paycrypto::published`]): ZPK (KCV `8B913F`), ZAK (`EB7A8D`),
/// PVK (`08D7B4`).
pub use paycrypto::published::{
    PVK_HEX as TEST_PVK_HEX, ZAK_HEX as TEST_ZAK_HEX, ZPK_HEX as TEST_ZPK_HEX,
};

/// Why a key could not be loaded. Never holds the key text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// The text is not 32 hex characters.
    Hex(KeyName),
    /// The two halves are the same DES key (single DES in disguise): refused by paycrypto.
    Weak(KeyName),
}

/// Which of the three keys an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyName {
    /// The zone PIN key.
    Zpk,
    /// The zone MAC key.
    Zak,
    /// The PIN verification key.
    Pvk,
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Zpk => "ZPK",
            Self::Zak => "ZAK",
            Self::Pvk => "PVK",
        })
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hex(k) => write!(f, "{k}: a double-length TDES key is 32 hex characters"),
            Self::Weak(k) => write!(f, "{k}: both halves are the same DES key"),
        }
    }
}

impl std::error::Error for KeyError {}

/// The acquirer's three keys. `Debug` prints nothing of them (each [`TdesKey`] redacts itself).
#[derive(Debug)]
pub struct Keys {
    /// Deciphers DE 52 (ISO 9564-1 format 0, TDES-ECB).
    pub zpk: TdesKey,
    /// Verifies every request's MAC and MACs every response (ISO 9797-1 algorithm 3).
    pub zak: TdesKey,
    /// The issuer's PVK, for the Visa PVV of the PIN in DE 52 (PVKI 1).
    pub pvk: TdesKey,
}

impl Keys {
    /// The built-in test keys ([`TEST_ZPK_HEX`], [`TEST_ZAK_HEX`], [`TEST_PVK_HEX`]).
    pub fn test() -> Self {
        // The constants are valid: a unit test parses them. Should that ever break, failing
        // here would be a panic, so fall back to parsing them the checked way.
        match Self::from_hex(TEST_ZPK_HEX, TEST_ZAK_HEX, TEST_PVK_HEX) {
            Ok(keys) => keys,
            Err(_) => Self {
                zpk: fallback_key(1),
                zak: fallback_key(2),
                pvk: fallback_key(3),
            },
        }
    }

    /// Keys from 32 hex characters each (either case).
    pub fn from_hex(zpk: &str, zak: &str, pvk: &str) -> Result<Self, KeyError> {
        Ok(Self {
            zpk: key_from_hex(zpk, KeyName::Zpk)?,
            zak: key_from_hex(zak, KeyName::Zak)?,
            pvk: key_from_hex(pvk, KeyName::Pvk)?,
        })
    }
}

/// One double-length TDES key from hex; the decoded bytes live in a wiped buffer.
pub fn key_from_hex(text: &str, name: KeyName) -> Result<TdesKey, KeyError> {
    let mut bytes = Zeroizing::new([0u8; 16]);
    hex::decode_to_slice(text.trim(), &mut *bytes).map_err(|_| KeyError::Hex(name))?;
    TdesKey::new(&bytes).map_err(|_| KeyError::Weak(name))
}

/// A key that cannot be reached in practice (see [`Keys::test`]): distinct halves so it is
/// accepted.
fn fallback_key(tag: u8) -> TdesKey {
    let mut bytes = [tag; 16];
    if let Some(b) = bytes.get_mut(15) {
        *b = tag.wrapping_add(0x10);
    }
    match TdesKey::new(&bytes) {
        Ok(k) => k,
        // Halves differ by 0x10 in one byte, which is not a parity bit: never weak.
        Err(_) => fallback_key(tag.wrapping_add(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_keys_parse_and_have_the_documented_check_values() {
        let keys = Keys::from_hex(TEST_ZPK_HEX, TEST_ZAK_HEX, TEST_PVK_HEX).unwrap();
        // Check values computed by psec 1.3.0 (`des.generate_kcv(key, 3)`); the PVK's first two
        // bytes are also psec's docstring example (`paycrypto/tests/vectors.toml`, `[[kcv]]`).
        assert_eq!(hex::encode_upper(paycrypto::kcv(&keys.zpk)), "8B913F");
        assert_eq!(hex::encode_upper(paycrypto::kcv(&keys.zak)), "EB7A8D");
        assert_eq!(hex::encode_upper(paycrypto::kcv(&keys.pvk)), "08D7B4");
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        let e = Keys::from_hex("00", TEST_ZAK_HEX, TEST_PVK_HEX).unwrap_err();
        assert_eq!(e, KeyError::Hex(KeyName::Zpk));
        let weak = "0123456789ABCDEF0123456789ABCDEF";
        let e = Keys::from_hex(TEST_ZPK_HEX, TEST_ZAK_HEX, weak).unwrap_err();
        assert_eq!(e, KeyError::Weak(KeyName::Pvk));
        assert!(!e.to_string().contains("0123"));
        let shown = format!("{:?}", Keys::test());
        assert!(
            !shown.contains("0123") && !shown.contains("89AB"),
            "{shown}"
        );
    }
}
