//! ISO/IEC 9797-1 MAC algorithm 3 (the "retail MAC", ANSI X9.19) with padding method 1.
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

use subtle::ConstantTimeEq;

use crate::TdesKey;
use crate::keys::{decrypt_in_place, encrypt_in_place};
use crate::nibbles::xor_into;

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
