//! The hot-path primitives in software (`memory` placement, and the software HSM twin).

use aes::Aes256;
use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::Error;

/// Largest envelope or card ciphertext accepted (the API's own limits are lower).
pub(crate) const MAX_CIPHERTEXT: usize = 64 * 1024;

/// HMAC-SHA-256 verification in constant time.
pub(crate) fn verify_hmac(key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), Error> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).map_err(|_| Error::Auth)?;
    mac.update(message);
    let expected = mac.finalize().into_bytes();
    if bool::from(expected.as_slice().ct_eq(signature)) {
        Ok(())
    } else {
        Err(Error::Auth)
    }
}

/// PBKDF2-HMAC-SHA-256 (RFC 8018) with one output block: 32 bytes. Officer credentials are
/// hashed with it; the iteration count is stored with each hash.
pub(crate) fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(keyed) = <Hmac<Sha256> as KeyInit>::new_from_slice(password) else {
        return out;
    };
    let mut mac = keyed.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u = Zeroizing::new(<[u8; 32]>::from(mac.finalize().into_bytes()));
    *out = *u;
    for _ in 1..iterations {
        let mut mac = keyed.clone();
        mac.update(&u[..]);
        *u = mac.finalize().into_bytes().into();
        for (o, b) in out.iter_mut().zip(u.iter()) {
            *o ^= b;
        }
    }
    out
}

/// HMAC-SHA-256.
pub(crate) fn hmac(key: &[u8], message: &[u8]) -> Result<[u8; 32], Error> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).map_err(|_| Error::Auth)?;
    mac.update(message);
    Ok(mac.finalize().into_bytes().into())
}

/// AES-256-CBC decryption with PKCS#7; every failure is [`Error::Auth`].
pub(crate) fn cbc_decrypt(
    key: &[u8],
    iv: &[u8; 16],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Error> {
    check_ciphertext(ciphertext)?;
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let len = cbc::Decryptor::<Aes256>::new_from_slices(key, iv)
        .map_err(|_| Error::Auth)?
        .decrypt_padded::<Pkcs7>(&mut buf)
        .map_err(|_| Error::Auth)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// AES-256-CBC encryption with PKCS#7.
pub(crate) fn cbc_encrypt(key: &[u8], iv: &[u8; 16], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
    if plaintext.len() > MAX_CIPHERTEXT {
        return Err(Error::BadRequest("plaintext too large".into()));
    }
    let mut out = vec![0u8; (plaintext.len() / 16 + 1) * 16];
    let len = cbc::Encryptor::<Aes256>::new_from_slices(key, iv)
        .map_err(|_| Error::Auth)?
        .encrypt_padded_b2b::<Pkcs7>(plaintext, &mut out)
        .map_err(|_| Error::BadRequest("plaintext too large".into()))?
        .len();
    out.truncate(len);
    Ok(out)
}

/// Ciphertexts are whole AES blocks, at least one, within the size limit.
pub(crate) fn check_ciphertext(ciphertext: &[u8]) -> Result<(), Error> {
    if ciphertext.is_empty()
        || !ciphertext.len().is_multiple_of(16)
        || ciphertext.len() > MAX_CIPHERTEXT
    {
        return Err(Error::Auth);
    }
    Ok(())
}

/// TDES-CMAC (NIST SP 800-38B with the 64-bit block: `Rb` = 0x1B) of `data`, built on a TDES
/// CBC encryption with a zero IV under the key that someone else runs: `cbc(blocks)` returns
/// the CBC ciphertext of whole 8-byte blocks. This is how keyd computes the CMAC under a TDES
/// ZMK held in the token: PKCS#11 has `CKM_DES3_CMAC`, but the `cryptoki` crate (0.12) cannot
/// name it, so the token runs TDES-CBC (the key's only allowed mechanism) and keyd does the
/// subkey arithmetic. Two calls: `L` = CIPH(0^64), then the message with its last block
/// masked by `K1` (whole) or padded with `10…0` and masked by `K2`.
///
/// # Errors
/// Whatever `cbc` reports; [`Error::Hsm`] if it answers with the wrong length.
pub(crate) fn tdes_cmac_via_cbc(
    mut cbc: impl FnMut(&[u8]) -> Result<Zeroizing<Vec<u8>>, Error>,
    data: &[u8],
) -> Result<[u8; 8], Error> {
    let last_block = |out: &[u8], len: usize| -> Result<[u8; 8], Error> {
        out.len()
            .checked_sub(8)
            .filter(|_| out.len() == len)
            .and_then(|at| out.get(at..))
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .ok_or_else(|| Error::Hsm("TDES-CBC answered with the wrong length".into()))
    };
    let l = Zeroizing::new(last_block(&cbc(&[0u8; 8])?, 8)?);
    let k1 = Zeroizing::new(dbl64(&l));
    let k2 = Zeroizing::new(dbl64(&k1));
    let whole = !data.is_empty() && data.len().is_multiple_of(8);
    let len = if whole {
        data.len()
    } else {
        (data.len() / 8 + 1) * 8
    };
    let mut message = Zeroizing::new(Vec::with_capacity(len));
    message.extend_from_slice(data);
    if !whole {
        message.push(0x80);
        message.resize(len, 0);
    }
    let mask: &[u8; 8] = if whole { &k1 } else { &k2 };
    if let Some(tail) = message.get_mut(len - 8..) {
        for (m, k) in tail.iter_mut().zip(mask) {
            *m ^= k;
        }
    }
    last_block(&cbc(&message)?, len)
}

/// Doubling in GF(2^64) as CMAC defines it.
fn dbl64(block: &[u8; 8]) -> [u8; 8] {
    let value = u64::from_be_bytes(*block);
    let shifted = (value << 1) ^ if value >> 63 == 1 { 0x1B } else { 0 };
    shifted.to_be_bytes()
}

/// TDES-CBC encryption with a zero IV of whole 8-byte blocks under a double- or triple-length
/// key, in software: the software HSM's stand-in for the token's `CKM_DES3_CBC`, and the
/// self-test's.
///
/// # Errors
/// [`Error::Hsm`] for a key of another length or data that is not whole blocks.
pub(crate) fn tdes_cbc_zero_iv(key: &[u8], data: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    use aes::cipher::block_padding::NoPadding;
    if !data.len().is_multiple_of(8) {
        return Err(Error::Hsm("TDES-CBC needs whole blocks".into()));
    }
    let mut out = Zeroizing::new(data.to_vec());
    let bad_key = |_| Error::Hsm("a TDES key is 16 or 24 bytes".into());
    let done = match key.len() {
        16 => cbc::Encryptor::<des::TdesEde2>::new_from_slices(key, &[0; 8])
            .map_err(bad_key)?
            .encrypt_padded::<NoPadding>(&mut out, data.len())
            .is_ok(),
        24 => cbc::Encryptor::<des::TdesEde3>::new_from_slices(key, &[0; 8])
            .map_err(bad_key)?
            .encrypt_padded::<NoPadding>(&mut out, data.len())
            .is_ok(),
        _ => return Err(Error::Hsm("a TDES key is 16 or 24 bytes".into())),
    };
    if !done {
        return Err(Error::Hsm("TDES-CBC needs whole blocks".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_matches_rfc_7914_and_rfc_6070_style_vectors() {
        // RFC 7914 section 11 (first 32 bytes of each 64-byte output).
        let cases: [(&[u8], &[u8], u32, &str); 3] = [
            (
                b"passwd",
                b"salt",
                1,
                "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc",
            ),
            (
                b"Password",
                b"NaCl",
                80_000,
                "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56",
            ),
            // The RFC 6070 inputs with SHA-256 (as published in many implementations' tests).
            (
                b"password",
                b"salt",
                4096,
                "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a",
            ),
        ];
        for (password, salt, iterations, want) in cases {
            let got: String = pbkdf2_sha256(password, salt, iterations)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(got, want, "{iterations}");
        }
    }

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// NIST SP 800-38B (2005) appendix D, TDEA examples, with the published errata applied
    /// (the original D.5 examples 2 and 3 and D.4 example 3 printed wrong tags). Data file:
    /// `tests/vectors/tdes_cmac.toml`.
    #[test]
    fn tdes_cmac_matches_sp_800_38b() {
        #[derive(serde::Deserialize)]
        struct File {
            case: Vec<Case>,
        }
        #[derive(serde::Deserialize)]
        struct Case {
            source: String,
            key: String,
            message: String,
            tag: String,
        }
        let file: File = toml::from_str(include_str!("../tests/vectors/tdes_cmac.toml")).unwrap();
        assert_eq!(file.case.len(), 8);
        for c in &file.case {
            let key = unhex(&c.key);
            let tag = tdes_cmac_via_cbc(|b| tdes_cbc_zero_iv(&key, b), &unhex(&c.message)).unwrap();
            assert_eq!(hex::encode(tag), c.tag.to_lowercase(), "{}", c.source);
        }
    }

    #[test]
    fn cbc_needs_whole_blocks_and_a_tdes_key() {
        assert!(tdes_cbc_zero_iv(&[1; 16], &[0; 7]).is_err());
        assert!(tdes_cbc_zero_iv(&[1; 32], &[0; 8]).is_err());
        // A CBC that answers short is an HSM fault, not a MAC.
        assert!(tdes_cmac_via_cbc(|_| Ok(Zeroizing::new(vec![0; 4])), b"x").is_err());
    }
}
