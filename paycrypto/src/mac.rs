//! ISO/IEC 9797-1 MAC algorithm 3 (the "retail MAC", ANSI X9.19) with padding method 1, and
//! AES-CMAC (NIST SP 800-38B, ISO/IEC 9797-1:2011 MAC algorithm 5) for zones that use AES.
//!
//! The message is padded with zero bytes to a multiple of 8 (nothing is added when it is
//! already a multiple). Padding method 1 asks for a *positive* multiple of the block length, so
//! an empty message becomes one block of zeros rather than no block at all; that is also what
//! psec and the usual HSMs compute, and it means every message, empty or not, has a MAC.
//! Note that method 1 cannot tell apart messages that differ only in trailing zero bytes; the
//! ISO 8583 profile MACs messages whose own length fields fix their extent.
//!
//! The blocks are chained with single DES under the key's left half K1 (CBC, zero IV); the last
//! chained block is then deciphered under the right half K2 and enciphered under K1 again.

use aes::{Aes128, Aes192, Aes256};
use cmac::{Cmac, KeyInit, Mac};
use subtle::ConstantTimeEq;

use crate::keys::{decrypt_in_place, encrypt_in_place};
use crate::nibbles::xor_into;
use crate::{AesKey, TdesKey};

/// The 8-byte retail MAC of `message` under the double-length `key` (ZAK).
pub fn retail_mac(key: &TdesKey, message: &[u8]) -> [u8; 8] {
    let k1 = key.left();
    let mut state = [0u8; 8];
    if message.is_empty() {
        // One block of zeros: XOR with it leaves the zero IV as it is.
        encrypt_in_place(&k1, &mut state);
    }
    for chunk in message.chunks(8) {
        // A short last chunk XORs as if zero-padded: the missing bytes leave the state alone.
        xor_into(&mut state, chunk);
        encrypt_in_place(&k1, &mut state);
    }
    decrypt_in_place(&key.right(), &mut state);
    encrypt_in_place(&k1, &mut state);
    state
}

/// Whether `mac` is the retail MAC of `message` under `key`, compared in constant time.
pub fn verify_retail_mac(key: &TdesKey, message: &[u8], mac: &[u8; 8]) -> bool {
    retail_mac(key, message).ct_eq(mac).into()
}

/// The shortest AES-CMAC accepted for verification: 64 bits, SP 800-38B appendix A's floor
/// for a truncated MAC without a limit on verification attempts.
pub const MIN_CMAC_LEN: usize = 8;

/// The 16-byte AES-CMAC (SP 800-38B) of `message` under `key` (AES-128, -192 or -256). The
/// `cmac` crate (RustCrypto) computes it; a caller that sends fewer bytes sends the leftmost.
pub fn aes_cmac(key: &AesKey, message: &[u8]) -> [u8; 16] {
    fn with<M: Mac + KeyInit>(key: &[u8], message: &[u8]) -> [u8; 16] {
        let mut out = [0u8; 16];
        // The key length was checked by `AesKey::new`; a mismatch leaves a MAC of zeros,
        // which no verification accepts by accident any more than another value.
        if let Ok(mut mac) = <M as KeyInit>::new_from_slice(key) {
            mac.update(message);
            for (dst, src) in out.iter_mut().zip(mac.finalize().into_bytes()) {
                *dst = src;
            }
        }
        out
    }
    let bytes = key.bytes();
    match key.len() {
        16 => with::<Cmac<Aes128>>(bytes, message),
        24 => with::<Cmac<Aes192>>(bytes, message),
        _ => with::<Cmac<Aes256>>(bytes, message),
    }
}

/// Whether `mac` is the AES-CMAC of `message` under `key`, whole (16 bytes) or truncated to
/// its leftmost [`MIN_CMAC_LEN`] to 16 bytes, compared in constant time. Any other length is
/// refused like a wrong MAC.
pub fn verify_aes_cmac(key: &AesKey, message: &[u8], mac: &[u8]) -> bool {
    if !(MIN_CMAC_LEN..=16).contains(&mac.len()) {
        return false;
    }
    let full = aes_cmac(key, message);
    full.get(..mac.len())
        .is_some_and(|prefix| prefix.ct_eq(mac).into())
}
