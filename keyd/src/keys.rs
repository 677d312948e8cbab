//! The kinds of keys keyd keeps for a device, their TR-31 headers, and their ids.

use tr31::optional_block::{BlockId, OptionalBlock};
use tr31::{Algorithm, Exportability, Header, KeyContext, KeyUsage, ModeOfUse, Version};

use zeroize::Zeroizing;

use crate::Error;
use crate::hsm::ZmkAlgorithm;

/// A device key's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// The device identity key: HMAC-SHA-256 secret for attestation, never exported.
    Identity,
    /// Terminal master key, delivered under the zone's ZMK.
    Tmk,
    /// Key-encryption key, delivered under the TMK.
    Kek,
    /// Message security key: MSK envelopes (AES-256-CBC).
    Msk,
    /// PIN encryption key.
    Tpk,
    /// Card-data encryption key.
    Tdk,
    /// Charge signature key: HMAC-SHA-256.
    Mac,
}

impl KeyKind {
    /// The working and transport keys of a key set, in delivery order.
    pub const SET: [Self; 6] = [
        Self::Tmk,
        Self::Kek,
        Self::Msk,
        Self::Tpk,
        Self::Tdk,
        Self::Mac,
    ];

    /// Name on the wire and in key ids.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Identity => "idk",
            Self::Tmk => "tmk",
            Self::Kek => "kek",
            Self::Msk => "msk",
            Self::Tpk => "tpk",
            Self::Tdk => "tdk",
            Self::Mac => "mac",
        }
    }

    /// Parses a name.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Identity,
            Self::Tmk,
            Self::Kek,
            Self::Msk,
            Self::Tpk,
            Self::Tdk,
            Self::Mac,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }

    /// True for HMAC keys (identity and MAC), whose check value is the HMAC form.
    pub const fn is_hmac(self) -> bool {
        matches!(self, Self::Identity | Self::Mac)
    }

    /// Usage, algorithm and mode of use (contract section 6).
    const fn attributes(self) -> (KeyUsage, Algorithm, ModeOfUse) {
        match self {
            Self::Tmk | Self::Kek => (KeyUsage::KBPK, Algorithm::AES, ModeOfUse::DECRYPT_ONLY),
            Self::Msk => (
                KeyUsage::DATA_ENCRYPTION,
                Algorithm::AES,
                ModeOfUse::BOTH_ENCRYPT_DECRYPT,
            ),
            Self::Tpk => (
                KeyUsage::PIN_ENCRYPTION,
                Algorithm::AES,
                ModeOfUse::ENCRYPT_ONLY,
            ),
            Self::Tdk => (
                KeyUsage::DATA_ENCRYPTION,
                Algorithm::AES,
                ModeOfUse::ENCRYPT_ONLY,
            ),
            Self::Identity | Self::Mac => {
                (KeyUsage::HMAC, Algorithm::HMAC, ModeOfUse::GENERATE_VERIFY)
            }
        }
    }

    /// The header a key is delivered under (contract section 6): version D, key version 00,
    /// not exportable by the device, key context 0, `HM0621` for the MAC key.
    pub fn export_header(self) -> Result<Header, Error> {
        let (usage, algorithm, mode) = self.attributes();
        let mut h = Header::new(
            Version::D,
            usage,
            algorithm,
            mode,
            Exportability::NON_EXPORTABLE,
        );
        if self.is_hmac() {
            h.optional_blocks
                .push(OptionalBlock::new(BlockId::HM, "21")?);
        }
        Ok(h)
    }

    /// The header a key is stored under: the same attributes, key context 1 (storage), its
    /// key id in an `LB` block so a stored block cannot be moved to another record, and
    /// exportability E for keys keyd delivers (N for the identity key, which never leaves).
    pub fn storage_header(self, key_id: &str) -> Result<Header, Error> {
        let (usage, algorithm, mode) = self.attributes();
        let export = if self == Self::Identity {
            Exportability::NON_EXPORTABLE
        } else {
            Exportability::EXPORTABLE
        };
        let mut h = Header::new(Version::D, usage, algorithm, mode, export);
        h.key_context = KeyContext::STORAGE;
        if self.is_hmac() {
            h.optional_blocks
                .push(OptionalBlock::new(BlockId::HM, "21")?);
        }
        h.optional_blocks
            .push(OptionalBlock::new(BlockId::LB, key_id)?);
        Ok(h)
    }

    /// What each delivered key is wrapped under.
    pub const fn wrapped_under(self) -> &'static str {
        match self {
            Self::Tmk => "zmk",
            Self::Kek => "tmk",
            Self::Identity => "lmk",
            _ => "kek",
        }
    }
}

/// The header a zone's ZMK is stored under in the key store (sealed under the LMK, so every
/// keyd node on a shared store can load it into its own token): a KBPK for both wrapping
/// and unwrapping, never exported, the zone bound in `LB`, and the ZMK's algorithm (`A` or
/// `T`) in the header's algorithm field, under the block's MAC: what a node that loads the zone
/// makes of it. Zones formed before TDES zones existed have `A` there, as before.
///
/// # Errors
/// [`Error::Tr31`] for a zone name `LB` cannot hold (never for a valid zone).
pub(crate) fn zmk_storage_header(zone: &str, algorithm: ZmkAlgorithm) -> Result<Header, Error> {
    let mut h = Header::new(
        Version::D,
        KeyUsage::KBPK,
        algorithm.tr31_algorithm(),
        ModeOfUse::BOTH_ENCRYPT_DECRYPT,
        Exportability::NON_EXPORTABLE,
    );
    h.key_context = KeyContext::STORAGE;
    h.optional_blocks
        .push(OptionalBlock::new(BlockId::LB, format!("zmk-{zone}"))?);
    Ok(h)
}

/// Length of every key keyd makes for a device (AES-256 and HMAC-SHA-256 keys alike).
pub(crate) const DEVICE_KEY_LEN: usize = 32;

/// A ZMK's clear value as keyd takes it: 32 bytes are an AES-256 key; 16 bytes a
/// double-length TDES key, given odd parity (X9.24; components combined by XOR lose it, and
/// the check value does not change) and refused if its halves are equal (single DES).
///
/// # Errors
/// [`Error::BadRequest`] for any other length or equal TDES halves.
pub(crate) fn zmk_key(raw: &[u8]) -> Result<(ZmkAlgorithm, Zeroizing<Vec<u8>>), Error> {
    let algorithm = ZmkAlgorithm::from_key_len(raw.len()).ok_or_else(|| {
        Error::BadRequest("a ZMK is 32 bytes (AES-256) or 16 bytes (double-length TDES)".into())
    })?;
    let mut key = Zeroizing::new(raw.to_vec());
    if algorithm == ZmkAlgorithm::Tdes {
        odd_parity(&mut key);
        if key.get(..8) == key.get(8..) {
            return Err(Error::BadRequest(
                "the TDES ZMK's two halves are equal (that is single DES)".into(),
            ));
        }
    }
    Ok((algorithm, key))
}

/// Sets each byte's lowest bit so that the byte has odd parity (DES keys' parity bits).
pub fn odd_parity(key: &mut [u8]) {
    for b in key {
        let high = *b & 0xFE;
        *b = high | u8::from(high.count_ones().is_multiple_of(2));
    }
}

/// The header a secret derived from the original LMK is kept under once the LMK was rotated
/// (see `lmk_secret`): 32 opaque bytes, never exported, the derivation's label bound in `LB`.
///
/// # Errors
/// [`Error::Tr31`] for a label `LB` cannot hold (never for keyd's labels).
pub(crate) fn secret_storage_header(label: &str) -> Result<Header, Error> {
    let mut h = Header::new(
        Version::D,
        KeyUsage::DATA_ENCRYPTION,
        Algorithm::AES,
        ModeOfUse::BOTH_ENCRYPT_DECRYPT,
        Exportability::NON_EXPORTABLE,
    );
    h.key_context = KeyContext::STORAGE;
    h.optional_blocks.push(OptionalBlock::new(
        BlockId::LB,
        format!("secret-{}", label.replace(' ', "-")),
    )?);
    Ok(h)
}

/// The three-byte check value the platform shows: AES-CMAC form for AES keys, HMAC form for
/// HMAC keys (contract section 6).
pub(crate) fn kcv(kind: KeyKind, key: &[u8]) -> [u8; 3] {
    let algorithm = if kind.is_hmac() {
        Algorithm::HMAC
    } else {
        Algorithm::AES
    };
    tr31::kcv::for_algorithm(algorithm, key).unwrap_or_default()
}

/// A new id: the prefix, a dash, and 24 characters of `[0-9A-Za-z]` from the HSM's RNG
/// (about 143 bits).
pub(crate) fn new_id(prefix: &str, hsm: &dyn crate::hsm::Hsm) -> Result<String, Error> {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut id = String::with_capacity(prefix.len() + 25);
    id.push_str(prefix);
    id.push('-');
    while id.len() < prefix.len() + 25 {
        let mut bytes = [0u8; 32];
        hsm.random(&mut bytes)?;
        // Rejection sampling keeps every character equally likely.
        for b in bytes.iter().filter(|b| **b < 248) {
            if id.len() < prefix.len() + 25 {
                id.push(char::from(
                    *ALPHABET.get(usize::from(b % 62)).unwrap_or(&b'0'),
                ));
            }
        }
    }
    Ok(id)
}

/// Device ids as the contract fixes them: `POS-` and 8 upper-case hex digits.
pub(crate) fn valid_device_id(id: &str) -> bool {
    id.strip_prefix("POS-").is_some_and(|h| {
        h.len() == 8
            && h.bytes()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
    })
}

/// Zone names: 1-64 characters of `[0-9A-Za-z_.-]`.
pub(crate) fn valid_zone(zone: &str) -> bool {
    (1..=64).contains(&zone.len())
        && zone
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_headers_are_the_contract_table() {
        let mut out = Vec::new();
        for kind in KeyKind::SET {
            let h = kind.export_header().unwrap();
            let key = tr31::Key::new(&[0x11; 32]).unwrap();
            let kbpk = tr31::Kbpk::new(&[0x22; 32]).unwrap();
            let block = tr31::seal(
                &kbpk,
                &h,
                &key,
                &tr31::SealOptions::default(),
                tr31::Padding::Random(&mut tr31::OsRandom),
            )
            .unwrap();
            let len = tr31::KeyBlock::parse(&block, tr31::Profile::Strict)
                .unwrap()
                .header()
                .encoded_len();
            out.push(block[5..len].to_owned());
        }
        assert_eq!(
            out,
            [
                "K1AD00N0000",
                "K1AD00N0000",
                "D0AB00N0000",
                "P0AE00N0000",
                "D0AE00N0000",
                "M7HC00N0200HM0621PB0A000000",
            ]
        );
    }

    #[test]
    fn zmk_keys_by_length_with_tdes_parity_fixed() {
        let (a, key) = zmk_key(&[0x5A; 32]).unwrap();
        assert_eq!((a, key.as_slice()), (ZmkAlgorithm::Aes, &[0x5A; 32][..]));
        // Two odd-parity components combined by XOR: every byte even (note section 7, trap 7).
        let even = hex::decode("2E24C6E4CCED8D630FFADD1DCFDBBD87").unwrap();
        let (t, key) = zmk_key(&even).unwrap();
        assert_eq!(t, ZmkAlgorithm::Tdes);
        assert!(key.iter().all(|b| b.count_ones() % 2 == 1));
        assert!(key.iter().zip(&even).all(|(k, e)| k & 0xFE == e & 0xFE));
        assert_eq!(t.kcv(&key), t.kcv(&even), "parity does not change the KCV");
        // Halves equal but for parity: single DES.
        let single = hex::decode("0123456789ABCDEF0023456789ABCDEF").unwrap();
        assert!(zmk_key(&single).is_err());
        assert!(zmk_key(&[1; 24]).is_err());
        let header = zmk_storage_header("p1", ZmkAlgorithm::Tdes).unwrap();
        assert_eq!(header.algorithm, Algorithm::TDES);
        assert_ne!(header, zmk_storage_header("p1", ZmkAlgorithm::Aes).unwrap());
    }

    #[test]
    fn ids_and_names() {
        let hsm = crate::hsm::SoftwareHsm::new();
        let a = new_id("msk", &hsm).unwrap();
        let b = new_id("msk", &hsm).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("msk-") && a.len() == 28, "{a}");
        assert!(a[4..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert!(valid_device_id("POS-8F3A2C91"));
        assert!(!valid_device_id("POS-8f3a2c91"));
        assert!(!valid_device_id("POS-8F3A2C9"));
        assert!(valid_zone("eu-1"));
        assert!(!valid_zone("a b"));
        assert_eq!(KeyKind::from_name("tdk"), Some(KeyKind::Tdk));
    }
}
