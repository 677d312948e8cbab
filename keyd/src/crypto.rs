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
