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
}
