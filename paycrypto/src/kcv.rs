//! The legacy TDES key check value.

use crate::TdesKey;
use crate::keys::encrypt_in_place;

/// The first 3 bytes of TDES-ECB of 8 zero bytes under `key`: how both sides of a zone compare
/// a ZPK, ZAK or PVK without showing it.
pub fn kcv(key: &TdesKey) -> [u8; 3] {
    let mut block = [0u8; 8];
    encrypt_in_place(&key.tdes(), &mut block);
    let [a, b, c, ..] = block;
    [a, b, c]
}
