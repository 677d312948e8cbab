//! ISO 9564-1 PIN blocks: format 0 (8 bytes, enciphered with TDES) and format 4 (16 bytes,
//! enciphered with AES), and the translations keyd performs between them.
//!
//! Format 0: the PIN field is the nibbles `0 L P P P P P/F … F` (control 0, the PIN length,
//! the digits, fill nibbles F to 16 nibbles); the account field is four zero nibbles and the 12
//! rightmost PAN digits without the check digit. The clear block is their XOR, and it is
//! enciphered as one TDES-ECB block.
//!
//! Format 4 (ISO 9564-1:2017): the PIN field is 16 bytes. Its first 16 nibbles are control 4,
//! the PIN length, the digits and fill nibbles A; its last 8 bytes are random. The account field
//! is a nibble `M` (PAN length − 12), the whole PAN and zero nibbles to 16 bytes. The two are
//! tied by the cipher rather than by a plain XOR: the block is `E(K, E(K, PIN field) ⊕ PAN
//! field)`, so neither field can be recovered without the key.

use subtle::{ConditionallySelectable, ConstantTimeEq, ConstantTimeGreater, ConstantTimeLess};
use zeroize::Zeroizing;

use crate::keys::{AesKey, TdesKey, decrypt_in_place, encrypt_in_place};
use crate::nibbles::{pack, unpack, xor_into};
use crate::{Pan, Pin, PinError};

/// Fill nibble of format 0.
const FILL_0: u8 = 0xF;
/// Fill nibble of format 4.
const FILL_4: u8 = 0xA;

/// The first 16 nibbles of a PIN field: control, length, digits, then `fill`.
fn pin_nibbles(pin: &Pin, control: u8, fill: u8) -> Zeroizing<[u8; 16]> {
    let mut nibbles = Zeroizing::new([fill; 16]);
    let mut it = nibbles.iter_mut();
    if let (Some(c), Some(l)) = (it.next(), it.next()) {
        *c = control;
        // 4 to 12: `Pin` holds no other length.
        *l = u8::try_from(pin.len()).unwrap_or(0);
    }
    for (dst, src) in it.zip(pin.expose_digits()) {
        *dst = *src;
    }
    nibbles
}

/// Reads a PIN out of the first 16 nibbles of a PIN field, checking the control nibble, the
/// length (4 to 12), the digits (0-9) and the fill nibbles. Every check runs whatever the
/// others found, and every failure is the same [`PinError`].
fn parse_pin_nibbles(nibbles: &[u8; 16], control: u8, fill: u8) -> Result<Pin, PinError> {
    let [c, len, rest @ ..] = nibbles;
    let mut ok = c.ct_eq(&control) & !len.ct_lt(&4) & !len.ct_gt(&12);
    let mut digits = Zeroizing::new([0u8; 12]);
    let mut slots = digits.iter_mut();
    let mut position = 0u8;
    for nibble in rest {
        let in_pin = position.ct_lt(len);
        let is_digit = !nibble.ct_gt(&9);
        let is_fill = nibble.ct_eq(&fill);
        ok &= (in_pin & is_digit) | (!in_pin & is_fill);
        if let Some(slot) = slots.next() {
            *slot = u8::conditional_select(&0, nibble, in_pin);
        }
        position = position.wrapping_add(1);
    }
    if bool::from(ok) {
        Ok(Pin::from_checked(*digits, *len))
    } else {
        Err(PinError)
    }
}

/// The clear format 0 PIN block of `pin` for `pan`.
pub fn encode_format0(pin: &Pin, pan: &Pan) -> Zeroizing<[u8; 8]> {
    let nibbles = pin_nibbles(pin, 0, FILL_0);
    let mut block = Zeroizing::new([0u8; 8]);
    pack(&*nibbles, &mut *block);
    xor_into(&mut *block, &pan.format0_field());
    block
}

/// The PIN in a clear format 0 PIN block for `pan`.
///
/// # Errors
/// [`PinError`] for any block that is not a valid format 0 block.
pub fn decode_format0(block: &[u8; 8], pan: &Pan) -> Result<Pin, PinError> {
    let mut field = Zeroizing::new(*block);
    xor_into(&mut *field, &pan.format0_field());
    let mut nibbles = Zeroizing::new([0u8; 16]);
    unpack(&*field, &mut *nibbles);
    parse_pin_nibbles(&nibbles, 0, FILL_0)
}

/// `pin` for `pan` as a format 0 block enciphered TDES-ECB under `zpk`.
pub fn encipher_format0(zpk: &TdesKey, pin: &Pin, pan: &Pan) -> [u8; 8] {
    let mut block = encode_format0(pin, pan);
    encrypt_in_place(&zpk.tdes(), &mut *block);
    *block
}

/// The PIN in a format 0 block enciphered under `zpk`, bound to `pan`.
///
/// # Errors
/// [`PinError`] for any block that does not decipher to a valid format 0 block for this PAN.
pub fn decipher_format0(zpk: &TdesKey, block: &[u8; 8], pan: &Pan) -> Result<Pin, PinError> {
    let mut clear = Zeroizing::new(*block);
    decrypt_in_place(&zpk.tdes(), &mut *clear);
    decode_format0(&clear, pan)
}

/// The clear format 4 PIN field of `pin`, with `random` as its last 8 bytes (the caller draws
/// them from a cryptographic source; this crate does no I/O).
pub fn encode_pin_field_format4(pin: &Pin, random: &[u8; 8]) -> Zeroizing<[u8; 16]> {
    let nibbles = pin_nibbles(pin, 4, FILL_4);
    let mut field = Zeroizing::new([0u8; 16]);
    let (head, tail) = field.split_at_mut(8);
    pack(&*nibbles, head);
    tail.copy_from_slice(random);
    field
}

/// The PIN in a clear format 4 PIN field. The random half is not checked (it has no rule).
///
/// # Errors
/// [`PinError`] for any field that is not a valid format 4 PIN field.
pub fn decode_pin_field_format4(field: &[u8; 16]) -> Result<Pin, PinError> {
    let mut nibbles = Zeroizing::new([0u8; 16]);
    unpack(field.get(..8).unwrap_or_default(), &mut *nibbles);
    parse_pin_nibbles(&nibbles, 4, FILL_4)
}

/// The clear format 4 account field of `pan`.
pub fn pan_field_format4(pan: &Pan) -> [u8; 16] {
    pan.format4_field()
}

/// `pin` for `pan` as a format 4 block under the AES key `key`: `E(K, E(K, PIN field) ⊕ PAN
/// field)`. `random` fills the last 8 bytes of the PIN field and must be fresh for every block.
pub fn encipher_format4(key: &AesKey, pin: &Pin, pan: &Pan, random: &[u8; 8]) -> [u8; 16] {
    let cipher = key.cipher();
    let mut block = encode_pin_field_format4(pin, random);
    cipher.encrypt(&mut block);
    xor_into(&mut *block, &pan.format4_field());
    cipher.encrypt(&mut block);
    *block
}

/// The PIN in a format 4 block under `key`, bound to `pan`: the block is deciphered, the account
/// field added, the result deciphered again and read as a PIN field.
///
/// # Errors
/// [`PinError`] for any block that does not decipher to a valid format 4 PIN field for this PAN
/// (another card's PAN or another key give a field that fails the checks, but for a chance
/// below one in a million).
pub fn decipher_format4(key: &AesKey, block: &[u8; 16], pan: &Pan) -> Result<Pin, PinError> {
    let cipher = key.cipher();
    let mut field = Zeroizing::new(*block);
    cipher.decrypt(&mut field);
    xor_into(&mut *field, &pan.format4_field());
    cipher.decrypt(&mut field);
    decode_pin_field_format4(&field)
}

/// Translates a format 4 block under the AES `tpk` into a format 0 block under the TDES `zpk`,
/// for the same PAN. The clear PIN exists only inside this call.
///
/// # Errors
/// [`PinError`] if the format 4 block is not valid for this PAN under `tpk`.
pub fn translate_4_to_0(
    tpk: &AesKey,
    block: &[u8; 16],
    pan: &Pan,
    zpk: &TdesKey,
) -> Result<[u8; 8], PinError> {
    let pin = decipher_format4(tpk, block, pan)?;
    Ok(encipher_format0(zpk, &pin, pan))
}

/// Translates a format 0 block from one TDES key to another, for the same PAN.
///
/// # Errors
/// [`PinError`] if the block is not a valid format 0 block for this PAN under `from`.
pub fn translate_0_to_0(
    from: &TdesKey,
    block: &[u8; 8],
    pan: &Pan,
    to: &TdesKey,
) -> Result<[u8; 8], PinError> {
    let pin = decipher_format0(from, block, pan)?;
    Ok(encipher_format0(to, &pin, pan))
}

/// Translates a format 4 block from one AES key to another, for the same PAN, with fresh
/// `random` fill in the new block.
///
/// # Errors
/// [`PinError`] if the block is not a valid format 4 block for this PAN under `from`.
pub fn translate_4_to_4(
    from: &AesKey,
    block: &[u8; 16],
    pan: &Pan,
    to: &AesKey,
    random: &[u8; 8],
) -> Result<[u8; 16], PinError> {
    let pin = decipher_format4(from, block, pan)?;
    Ok(encipher_format4(to, &pin, pan, random))
}
