//! The Visa PIN verification value (PVV).
//!
//! The transformed security parameter (TSP) is 16 digits: the 11 rightmost PAN digits without the
//! check digit, the PIN verification key index (PVKI) and the 4 leftmost PIN digits. It is
//! enciphered as one block with 2-key TDES under the PVK, and the 16 nibbles of the result are
//! decimalised: the decimal nibbles first, left to right; if fewer than 4, then the nibbles A-F,
//! left to right, each less 10. The first 4 digits so found are the PVV.

use subtle::{ConditionallySelectable, ConstantTimeEq, ConstantTimeGreater, ConstantTimeLess};
use zeroize::Zeroizing;

use crate::keys::encrypt_in_place;
use crate::nibbles::{pack, unpack};
use crate::{InputError, Pan, Pin, TdesKey};

/// The 4-digit PVV (ASCII digits, e.g. `*b"8523"`) of `pin` on the card `pan`.
///
/// # Errors
/// [`InputError::Pvki`] unless `pvki` is 1 to 6.
pub fn pvv(pvk: &TdesKey, pan: &Pan, pvki: u8, pin: &Pin) -> Result<[u8; 4], InputError> {
    if !(1..=6).contains(&pvki) {
        return Err(InputError::Pvki);
    }
    let mut tsp = Zeroizing::new([0u8; 16]);
    let (account, rest) = tsp.split_at_mut(11);
    account.copy_from_slice(&pan.pvv_digits());
    let mut rest = rest.iter_mut();
    if let Some(index) = rest.next() {
        *index = pvki;
    }
    for (dst, src) in rest.zip(pin.expose_digits()) {
        *dst = *src;
    }

    let mut block = Zeroizing::new([0u8; 8]);
    pack(&*tsp, &mut *block);
    encrypt_in_place(&pvk.tdes(), &mut *block);
    let mut nibbles = Zeroizing::new([0u8; 16]);
    unpack(&*block, &mut *nibbles);

    // Decimalisation without branches on the enciphered value (it is derived from the PIN).
    let mut out = [b'0'; 4];
    let mut found = 0u8;
    for letters in [false, true] {
        for nibble in nibbles.iter() {
            let is_letter = nibble.ct_gt(&9);
            let take = if letters { is_letter } else { !is_letter } & found.ct_lt(&4);
            let value = if letters {
                nibble.wrapping_sub(10)
            } else {
                *nibble
            };
            let mut slot_index = 0u8;
            for slot in &mut out {
                let here = take & found.ct_eq(&slot_index);
                slot.conditional_assign(&(b'0' + (value & 0x0F)), here);
                slot_index = slot_index.wrapping_add(1);
            }
            found = found.wrapping_add(u8::conditional_select(&0, &1, take));
        }
    }
    Ok(out)
}

/// Whether `expected` (4 ASCII digits) is the PVV of `pin` on `pan`, compared in constant time.
///
/// # Errors
/// [`InputError::Pvki`] unless `pvki` is 1 to 6.
pub fn verify_pvv(
    pvk: &TdesKey,
    pan: &Pan,
    pvki: u8,
    pin: &Pin,
    expected: &[u8; 4],
) -> Result<bool, InputError> {
    Ok(pvv(pvk, pan, pvki, pin)?.ct_eq(expected).into())
}
