//! Key check values (X9.24-1:2017 annex A, and the platform contract's HMAC form).
//!
//! A check value identifies a key without revealing it: operators compare them during key
//! ceremonies and `KC`/`KP` optional blocks carry them.

use aes::cipher::{BlockCipherEncrypt, KeyInit};
use aes::{Aes128, Aes192, Aes256};
use des::{TdesEde2, TdesEde3};
use hmac::Mac;
use zeroize::Zeroizing;

use crate::Error;
use crate::header::Algorithm;
use crate::modes::Cmac;
use crate::optional_block::KcvMethod;

/// The X9.24-1 legacy check value of a DES or TDES key: TDES-ECB of eight zero bytes, first three
/// bytes. An 8-byte key is single DES (run as TDES with three equal halves).
///
/// # Errors
/// [`Error::InvalidKey`] unless the key is 8, 16 or 24 bytes.
pub fn legacy(key: &[u8]) -> Result<[u8; 3], Error> {
    let mut block = [0u8; 8];
    match key.len() {
        8 => {
            let mut k = Zeroizing::new([0u8; 24]);
            for chunk in k.chunks_exact_mut(8) {
                chunk.copy_from_slice(key);
            }
            encrypt::<TdesEde3>(&k[..], &mut block)?;
        }
        16 => encrypt::<TdesEde2>(key, &mut block)?,
        24 => encrypt::<TdesEde3>(key, &mut block)?,
        _ => return Err(Error::InvalidKey("a DES or TDES key is 8, 16 or 24 bytes")),
    }
    Ok(first(&block))
}

/// The X9.24-1 CMAC check value of an AES key: AES-CMAC of one zero block, first five bytes.
/// The platform shows the first three of them.
///
/// # Errors
/// [`Error::InvalidKey`] unless the key is 16, 24 or 32 bytes.
pub fn cmac_aes(key: &[u8]) -> Result<[u8; 5], Error> {
    Ok(match key.len() {
        16 => cmac_zero::<Aes128>(key)?,
        24 => cmac_zero::<Aes192>(key)?,
        32 => cmac_zero::<Aes256>(key)?,
        _ => return Err(Error::InvalidKey("an AES key is 16, 24 or 32 bytes")),
    })
}

/// The X9.24-1 CMAC check value of a TDES key: TDES-CMAC of one zero block, first five bytes.
///
/// # Errors
/// [`Error::InvalidKey`] unless the key is 16 or 24 bytes.
pub fn cmac_tdes(key: &[u8]) -> Result<[u8; 5], Error> {
    Ok(match key.len() {
        16 => cmac_zero::<TdesEde2>(key)?,
        24 => cmac_zero::<TdesEde3>(key)?,
        _ => return Err(Error::InvalidKey("a TDES key is 16 or 24 bytes")),
    })
}

/// The check value of an HMAC key as the platform contract defines it: HMAC-SHA-256 of sixteen
/// zero bytes under the key, first three bytes.
pub fn hmac_sha256(key: &[u8]) -> [u8; 3] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).map(|mut m| {
        m.update(&[0u8; 16]);
        m.finalize().into_bytes()
    });
    mac.map(|m| first(&m)).unwrap_or_default()
}

/// The three-byte check value the platform shows for a key of this algorithm: legacy for DES
/// and TDES, CMAC for AES, HMAC-SHA-256 for HMAC keys. `None` for asymmetric keys, which have no
/// such check value.
pub fn for_algorithm(algorithm: Algorithm, key: &[u8]) -> Option<[u8; 3]> {
    match algorithm {
        Algorithm::TDES | Algorithm::DES => legacy(key).ok(),
        Algorithm::AES => cmac_aes(key).ok().map(|v| first(&v)),
        Algorithm::HMAC | Algorithm::HMAC_SHA2 | Algorithm::HMAC_SHA3 => Some(hmac_sha256(key)),
        _ => None,
    }
}

/// Check value by method for a key of the given family, as `KC`/`KP` blocks carry it; the
/// caller compares a prefix. `aes` selects the cipher for the CMAC method.
pub(crate) fn by_method(method: KcvMethod, aes: bool, key: &[u8]) -> Result<[u8; 5], Error> {
    match (method, aes) {
        (KcvMethod::Legacy, false) => legacy(key).map(|v| [v[0], v[1], v[2], 0, 0]),
        (KcvMethod::Legacy, true) => Err(Error::InvalidKey("AES keys have no legacy check value")),
        (KcvMethod::Cmac, true) => cmac_aes(key),
        (KcvMethod::Cmac, false) => cmac_tdes(key),
    }
}

fn encrypt<C: BlockCipherEncrypt + KeyInit>(key: &[u8], block: &mut [u8]) -> Result<(), Error> {
    let cipher = C::new_from_slice(key).map_err(|_| Error::InvalidKey("wrong key length"))?;
    let (blocks, _) = aes::cipher::Block::<C>::slice_as_chunks_mut(block);
    cipher.encrypt_blocks(blocks);
    Ok(())
}

fn cmac_zero<C: BlockCipherEncrypt + KeyInit>(key: &[u8]) -> Result<[u8; 5], Error> {
    let cipher = C::new_from_slice(key).map_err(|_| Error::InvalidKey("wrong key length"))?;
    let zero = aes::cipher::Block::<C>::default();
    Ok(first(&Cmac::new(&cipher).mac(&[&zero])))
}

fn first<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.first_chunk::<N>().copied().unwrap_or([0; N])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> alloc::vec::Vec<u8> {
        crate::hex::decode(s.as_bytes(), true).unwrap()
    }

    /// Values from the implementer's note, section 5 (openemv's KCV tests, recomputed there).
    #[test]
    fn published_check_values() {
        assert_eq!(
            legacy(&h("3F419E1CB7079442AA37474C2EFBF8B8")).unwrap(),
            [0x57, 0xC4, 0x09]
        );
        assert_eq!(
            cmac_aes(&h("3F419E1CB7079442AA37474C2EFBF8B8")).unwrap(),
            [0x08, 0x79, 0x3E, 0x25, 0xAB]
        );
        assert_eq!(
            cmac_tdes(&h("3F419E1CB7079442AA37474C2EFBF8B8")).unwrap(),
            [0xC6, 0x63, 0x63, 0xF7, 0x2B]
        );
        assert_eq!(
            cmac_aes(&h(
                "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6"
            ))
            .unwrap(),
            [0x23, 0x31, 0x55, 0x0B, 0xC9]
        );
        assert_eq!(
            cmac_aes(&h("FA36E44278DB3AB5F298F9F7DA8F1F88")).unwrap(),
            [0xD7, 0x7F, 0x00, 0x77, 0x24]
        );
        assert_eq!(
            legacy(&h("BF82DAC6A33DF92CE66E15B70E5DCEB6")).unwrap(),
            [0x01, 0x69, 0xE3]
        );
        assert_eq!(
            legacy(&h("AB2E09DB3EF0BA71E0CE6CD755C23A3B")).unwrap(),
            [0xEC, 0xAD, 0x62]
        );
        // ISO 20038 B.3: parity-adjusted and unadjusted forms share a KCV.
        assert_eq!(
            legacy(&h("767261707065642033444553206B6579")).unwrap(),
            [0xB2, 0x9D, 0x42]
        );
        assert_eq!(
            legacy(&h("767361707064642032454552206B6479")).unwrap(),
            [0xB2, 0x9D, 0x42]
        );
        // Component XOR of three odd-parity components (note section 7, trap 7).
        assert_eq!(
            legacy(&h("B064DF497AB338DF31AD7C138CBA8592")).unwrap(),
            [0x8A, 0x69, 0x0F]
        );
    }

    /// Contract section 6: HMAC-SHA-256 of 16 zero bytes, first 3 bytes. Expected values computed
    /// independently with Python's `hmac` module.
    #[test]
    fn hmac_check_values() {
        assert_eq!(
            hmac_sha256(&h(
                "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F"
            )),
            [0xFF, 0x92, 0x12]
        );
        assert_eq!(hmac_sha256(&[0xAB; 32]), [0x6E, 0x0B, 0x6D]);
        assert_eq!(
            for_algorithm(Algorithm::HMAC, &[0xAB; 32]),
            Some([0x6E, 0x0B, 0x6D])
        );
    }

    #[test]
    fn wrong_lengths_and_algorithms() {
        assert!(legacy(&[0; 15]).is_err());
        assert!(cmac_aes(&[0; 8]).is_err());
        assert!(cmac_tdes(&[0; 32]).is_err());
        assert_eq!(for_algorithm(Algorithm::RSA, &[0; 16]), None);
        assert!(for_algorithm(Algorithm::HMAC, &[0; 32]).is_some());
        assert_eq!(legacy(&[0x01; 8]).unwrap(), legacy(&[0x01; 16]).unwrap());
    }
}
