//! Payment-HSM primitives for keyd (issue #14): the operations behind online PIN and the
//! acquirer link (normative spec: `acquirer-link.md`, sections 12.1, 12.2, 12.5 and 12.7).
//!
//! - ISO 9564-1 PIN blocks: format 0 ([`encode_format0`], [`encipher_format0`]) under a
//!   double-length TDES ZPK, format 4 ([`encipher_format4`], [`decipher_format4`]) under an AES
//!   key, and the translations [`translate_4_to_0`], [`translate_0_to_0`] and
//!   [`translate_4_to_4`].
//! - ISO/IEC 9797-1 MAC algorithm 3 with padding method 1 ([`retail_mac`]), and AES-CMAC
//!   (SP 800-38B; [`aes_cmac`], [`verify_aes_cmac`], whole or truncated to 8 bytes at least)
//!   for zones that use AES.
//! - The Visa PVV ([`pvv`], [`verify_pvv`]).
//! - The legacy TDES key check value ([`kcv`]).
//! - [`self_test`]: known answers to run before serving.
//!
//! ```
//! use paycrypto::{AesKey, Pan, Pin, TdesKey};
//!
//! let tpk = AesKey::new(&[0x11; 32])?;
//! let zpk = TdesKey::new(b"0123456789abcdef")?;
//! let pan = Pan::new("4761739001010119")?;
//! let pin = Pin::new("1234")?;
//! // The terminal's block (the random fill comes from the caller: this crate does no I/O).
//! let from_terminal = paycrypto::encipher_format4(&tpk, &pin, &pan, &[7; 8]);
//! // keyd's translation for the acquirer, and the acquirer reading it.
//! let to_acquirer = paycrypto::translate_4_to_0(&tpk, &from_terminal, &pan, &zpk)?;
//! assert!(paycrypto::decipher_format0(&zpk, &to_acquirer, &pan)? == pin);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! No I/O, no logging, no `unsafe`, no panics on input. The clear PIN ([`Pin`]) and the keys
//! ([`TdesKey`], [`AesKey`]) are wiped on drop, print as redacted, cannot be cloned and compare
//! in constant time; clear PIN blocks are returned in [`zeroize::Zeroizing`] buffers. Every way a
//! PIN block can fail to open is the one value [`PinError`]; inputs the caller chose (a PAN, a
//! PIN, a key, a PVKI) are refused up front with an [`InputError`] that says why.

#![no_std]
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

mod error;
mod kcv;
mod keys;
mod mac;
mod nibbles;
mod pan;
mod pin;
mod pinblock;
pub mod published;
mod pvv;
mod selftest;

pub use error::{InputError, PinError};
pub use kcv::kcv;
pub use keys::{AesKey, TdesKey};
pub use mac::{MIN_CMAC_LEN, aes_cmac, retail_mac, verify_aes_cmac, verify_retail_mac};
pub use pan::Pan;
pub use pin::Pin;
pub use pinblock::{
    decipher_format0, decipher_format4, decode_format0, decode_pin_field_format4, encipher_format0,
    encipher_format4, encode_format0, encode_pin_field_format4, pan_field_format4,
    translate_0_to_0, translate_4_to_0, translate_4_to_4,
};
pub use pvv::{pvv, verify_pvv};
pub use selftest::{SelfTestError, self_test};
pub use zeroize;
